/* The operator's node actions, shared by the API and loom-admin: $1 is the
 * node's name; no row changes when the node is not there (or is lost, or for
 * uncordon, is in service already). A node an operator took out of service
 * stays out until an operator puts it back; one its health checks took out
 * returns by itself once healthy (see the scheduler's nodes.c). */
#ifndef LOOM_NODES_SQL_H
#define LOOM_NODES_SQL_H

#define LOOM_NODE_CORDON_SQL                                                                       \
    "UPDATE nodes SET state = 'cordoned', cordoned_by = 'operator' "                               \
    "WHERE name = $1 AND state <> 'lost' RETURNING state"
#define LOOM_NODE_DRAIN_SQL                                                                        \
    "UPDATE nodes SET state = 'draining', cordoned_by = 'operator' "                               \
    "WHERE name = $1 AND state <> 'lost' RETURNING state"
#define LOOM_NODE_UNCORDON_SQL                                                                     \
    "UPDATE nodes SET state = 'ready', cordoned_by = NULL "                                        \
    "WHERE name = $1 AND state IN ('cordoned', 'draining') RETURNING state"

#endif
