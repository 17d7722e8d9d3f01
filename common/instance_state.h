/* Instance states as PostgreSQL stores them (instances.state, see
 * migrations/0001_core.sql), for the queries of every service and tool. */
#ifndef LOOM_INSTANCE_STATE_H
#define LOOM_INSTANCE_STATE_H

/* The states of an instance that holds capacity on its node and may still
 * run: a parenthesised SQL list, as in "AND state IN " LOOM_LIVE_STATES_SQL. */
#define LOOM_LIVE_STATES_SQL "('assigned', 'pulling', 'starting', 'running')"

#endif
