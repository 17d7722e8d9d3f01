/* Functions (leader): every ready node keeps stem_cells idle instances of
 * each installed runtime, pre-started and unclaimed, for the activator to
 * claim at a function's first call; claimed instances are the function's
 * for good. Instances an activator or the API marked to stop are told to at
 * once (the resend timer repeats it). */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "instance_state.h"
#include "log.h"
#include "util.h"

/* What an idle stem cell holds on its node: the smallest function shape. A
 * claim sets the instance's row to its function's shape. */
#define STEM_CPU_MILLIS 125
#define STEM_MEMORY_BYTES 500000000LL
#define STEM_EPHEMERAL_BYTES 400000000LL

enum { W_NODE, W_RUNTIME, W_MISSING };

/* Ready nodes, by runtime, short of idle stem cells: node, runtime, how
 * many are missing. $1: how many each should have. */
#define SQL_STEMS_WANTED                                                                           \
    "SELECT n.name, r.name, $1::integer - count(i.id) "                                            \
    "FROM nodes n CROSS JOIN function_runtimes r "                                                 \
    "LEFT JOIN instances i ON i.node_name = n.name AND i.runtime = r.name "                        \
    "  AND i.kind = 'function' AND i.claimed_at IS NULL AND i.desired = 'run' "                    \
    "  AND i.state IN " LOOM_LIVE_STATES_SQL " "                                                   \
    "WHERE n.state = 'ready' AND NOT r.deprecated AND NOT n.simulated "                            \
    "GROUP BY n.name, r.name HAVING count(i.id) < $1::integer"

/* Runtimes whose waiting calls outnumber the free stem cells (placed or on
 * their way) and those claimed since the counts were written (a call that
 * got one is still counted until its activator writes again): runtime,
 * how many more. Demand rows over 5 s old are stale. */
#define SQL_STEMS_DEMANDED                                                                         \
    "SELECT d.runtime, d.waiting - (SELECT count(*) FROM instances i "                             \
    "  WHERE i.kind = 'function' AND i.runtime = d.runtime AND i.desired = 'run' "                 \
    "  AND ((i.claimed_at IS NULL AND i.state IN " LOOM_LIVE_STATES_SQL ") "                       \
    "    OR i.claimed_at >= d.since)) "                                                            \
    "FROM (SELECT runtime, sum(waiting) AS waiting, min(updated_at) AS since "                     \
    "  FROM function_stem_demand "                                                                 \
    "  WHERE waiting > 0 AND updated_at > now() - interval '5 seconds' GROUP BY runtime) d "       \
    "JOIN function_runtimes r ON r.name = d.runtime AND NOT r.deprecated"
#define DEMAND_MAX_PER_PASS 32

/* Free stem cells beyond a node's pool (demand placed them) that stayed
 * unclaimed for a minute while no call of their runtime waits: told to
 * stop, the newest of each node's kept. $1: the pool size. */
#define SQL_STEMS_SURPLUS                                                                          \
    "UPDATE instances SET desired = 'stop', reason = 'a stem cell beyond the pool, unused', "      \
    "  updated_at = now() WHERE id IN (SELECT id FROM (SELECT i.id, i.created_at, i.runtime, "     \
    "    row_number() OVER (PARTITION BY i.node_name, i.runtime ORDER BY i.created_at DESC) AS k " \
    "    FROM instances i WHERE i.kind = 'function' AND i.claimed_at IS NULL "                     \
    "    AND i.desired = 'run' AND i.state IN " LOOM_LIVE_STATES_SQL ") x "                        \
    "  WHERE x.k > $1::integer AND x.created_at < now() - interval '60 seconds' "                  \
    "  AND NOT EXISTS (SELECT 1 FROM function_stem_demand d WHERE d.runtime = x.runtime "          \
    "    AND d.waiting > 0 AND d.updated_at > now() - interval '5 seconds')) "                     \
    "RETURNING id"

/* Function instances marked to stop whose stop was not sent yet. */
#define SQL_STOPS_UNSENT                                                                           \
    "kind = 'function' AND desired = 'stop' AND NOT stop_sent AND state IN " LOOM_LIVE_STATES_SQL

static const struct sched_request stem_req = {.cpu_millis = STEM_CPU_MILLIS,
                                              .memory_bytes = STEM_MEMORY_BYTES,
                                              .ephemeral_bytes = STEM_EPHEMERAL_BYTES};

/* Stem cells to insert: three PostgreSQL arrays, and how many. */
struct stems {
    struct strbuf id, node, runtime;
    size_t n;
};

static void stems_add(struct stems *st, struct sched_node *node, const char *runtime)
{
    node->cpu_used += stem_req.cpu_millis;
    node->mem_used += stem_req.memory_bytes;
    node->disk_used += stem_req.ephemeral_bytes;
    char uuid[37];
    loom_uuid4(uuid);
    sched_pg_array_add(&st->id, uuid);
    sched_pg_array_add(&st->node, node->name);
    sched_pg_array_add(&st->runtime, runtime);
    st->n++;
}

/* Inserts them (the caller's transaction); their ids go into ids. */
static int stems_insert(struct stems *st, struct loom_db *db, int64_t epoch, struct strbuf *ids,
                        size_t *ret_placed, struct loom_err *err)
{
    if (st->n == 0)
        return 0;
    sched_pg_array_end(&st->id);
    sched_pg_array_end(&st->node);
    sched_pg_array_end(&st->runtime);
    char ep[24], cpu[24], mem[24], eph[24];
    snprintf(ep, sizeof(ep), "%lld", (long long)epoch);
    snprintf(cpu, sizeof(cpu), "%d", STEM_CPU_MILLIS);
    snprintf(mem, sizeof(mem), "%lld", STEM_MEMORY_BYTES);
    snprintf(eph, sizeof(eph), "%lld", STEM_EPHEMERAL_BYTES);
    _cleanup_pgres_ PGresult *ins = loom_db_query(
        db, err,
        "INSERT INTO instances (id, kind, runtime, node_name, epoch, cpu_millis, memory_bytes, "
        "  ephemeral_bytes) "
        "SELECT x.id, 'function', x.rt, x.node, $1::bigint, $2::bigint, $3::bigint, $4::bigint "
        "FROM unnest($5::uuid[], $6::text[], $7::text[]) AS x(id, node, rt) RETURNING id",
        ep, cpu, mem, eph, st->id.buf, st->node.buf, st->runtime.buf);
    if (!ins)
        return -1;
    for (int i = 0; i < PQntuples(ins); i++)
        sched_pg_array_add(ids, PQgetvalue(ins, i, 0));
    *ret_placed += (size_t)PQntuples(ins);
    return 0;
}

static void stems_release(struct stems *st)
{
    strbuf_release(&st->id);
    strbuf_release(&st->node);
    strbuf_release(&st->runtime);
}

/* Places the missing stem cells of the pools, node by node, where they fit. */
static int refill(struct sched *s, struct loom_db *db, int64_t epoch, struct sched_pool *pool,
                  struct strbuf *ids, size_t *ret_placed, struct loom_err *err)
{
    char per_node[24];
    snprintf(per_node, sizeof(per_node), "%lld", (long long)s->stem_cells);
    _cleanup_pgres_ PGresult *want =
        loom_db_query(db, err, SQL_STEMS_WANTED " ORDER BY n.name, r.name", per_node);
    if (!want)
        return -1;
    _cleanup_(stems_release) struct stems st = {STRBUF_INIT, STRBUF_INIT, STRBUF_INIT, 0};
    for (int r = 0; r < PQntuples(want); r++) {
        struct sched_node *node = NULL;
        for (size_t k = 0; k < pool->n && !node; k++)
            if (strcmp(pool->nodes[k].name, PQgetvalue(want, r, W_NODE)) == 0)
                node = &pool->nodes[k];
        for (long m = strtol(PQgetvalue(want, r, W_MISSING), NULL, 10);
             node && m > 0 && sched_node_fits(node, &stem_req); m--)
            stems_add(&st, node, PQgetvalue(want, r, W_RUNTIME));
    }
    return stems_insert(&st, db, epoch, ids, ret_placed, err);
}

/* Stem cells for the calls waiting beyond what the pools hold (after
 * refill, in the same transaction, so its stem cells count), each on the
 * ready node with the most room. */
static int demand(struct loom_db *db, int64_t epoch, struct sched_pool *pool, struct strbuf *ids,
                  size_t *ret_placed, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *d = loom_db_exec(db, SQL_STEMS_DEMANDED, 0, NULL, err);
    if (!d)
        return -1;
    if (PQntuples(d) == 0 || pool->n == 0)
        return 0;
    /* only ready agents that run containers take stem cells */
    _cleanup_pgres_ PGresult *ok = loom_db_exec(
        db, "SELECT name FROM nodes WHERE state = 'ready' AND NOT simulated", 0, NULL, err);
    if (!ok)
        return -1;
    _cleanup_free_ uint8_t *exclude = malloc(pool->n);
    if (!exclude)
        abort();
    for (size_t k = 0; k < pool->n; k++) {
        exclude[k] = 1;
        for (int r = 0; r < PQntuples(ok); r++)
            if (strcmp(pool->nodes[k].name, PQgetvalue(ok, r, 0)) == 0)
                exclude[k] = 0;
    }
    struct sched_request r = stem_req;
    r.exclude = exclude;
    r.spread = true;
    uint64_t rng = (uint64_t)loom_mono_ms() | 1;
    _cleanup_(stems_release) struct stems st = {STRBUF_INIT, STRBUF_INIT, STRBUF_INIT, 0};
    for (int row = 0; row < PQntuples(d); row++)
        for (long m = strtol(PQgetvalue(d, row, 1), NULL, 10); m > 0 && st.n < DEMAND_MAX_PER_PASS;
             m--) {
            long k = sched_choose_node(pool->nodes, pool->n, &r, pool->n, &rng);
            if (k < 0)
                break;
            stems_add(&st, &pool->nodes[k], PQgetvalue(d, row, 0));
        }
    return stems_insert(&st, db, epoch, ids, ret_placed, err);
}

int sched_functions_reconcile(struct sched *s, struct loom_db *db, int64_t epoch,
                              struct sched_pool *pool, struct loom_err *err)
{
    /* a cheap look first: most passes have nothing to do */
    char per_node[24];
    snprintf(per_node, sizeof(per_node), "%lld", (long long)s->stem_cells);
    _cleanup_pgres_ PGresult *look =
        loom_db_query(db, err,
                      "SELECT EXISTS (SELECT 1 FROM instances WHERE " SQL_STOPS_UNSENT ") "
                      "  OR ($1::integer > 0 AND EXISTS (" SQL_STEMS_WANTED ")) "
                      "  OR EXISTS (SELECT 1 FROM function_stem_demand WHERE waiting > 0 "
                      "    AND updated_at > now() - interval '5 seconds') "
                      "  OR EXISTS (SELECT 1 FROM instances WHERE kind = 'function' "
                      "    AND claimed_at IS NULL AND desired = 'run' "
                      "    AND state IN " LOOM_LIVE_STATES_SQL " "
                      "    AND created_at < now() - interval '60 seconds' "
                      "    GROUP BY node_name, runtime HAVING count(*) > $1::integer)",
                      per_node);
    if (!look)
        return -1;
    if (strcmp(PQgetvalue(look, 0, 0), "t") != 0)
        return 0;
    if (sched_pool_get(s, db, pool, err) < 0)
        return -1;
    _cleanup_strbuf_ struct strbuf ids = STRBUF_INIT;
    size_t placed = 0;
    _cleanup_pgres_ PGresult *stops = NULL, *surplus = NULL;
    if (loom_db_begin(db, err) < 0)
        return -1;
    if (sched_lease_check_tx(s, db, epoch, err) < 0)
        goto fail;
    if ((s->stem_cells > 0 && refill(s, db, epoch, pool, &ids, &placed, err) < 0) ||
        demand(db, epoch, pool, &ids, &placed, err) < 0)
        goto fail;
    surplus = loom_db_query(db, err, SQL_STEMS_SURPLUS, per_node);
    if (!surplus)
        goto fail;
    stops = loom_db_exec(db,
                         "UPDATE instances SET stop_sent = true, updated_at = now() "
                         "WHERE " SQL_STOPS_UNSENT " RETURNING id, node_name, reason",
                         0, NULL, err);
    if (!stops)
        goto fail;
    if (loom_db_commit(db, err) < 0)
        return -1;
    if (placed > 0) {
        sched_pg_array_end(&ids);
        loom_metric_add(s->m_placements, (double)placed);
        sched_send_assigns(s, db, epoch, ids.buf);
        log_debug("placed %zu stem cells", placed);
    }
    for (int r = 0; r < PQntuples(stops); r++)
        sched_send_stop(s, PQgetvalue(stops, r, 1), PQgetvalue(stops, r, 0), epoch,
                        loom_db_val(stops, r, 2), SCHED_FUNCTION_STOP_GRACE_S);
    return 0;
fail:
    loom_db_rollback(db);
    return -1;
}
