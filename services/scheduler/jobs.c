/* Job runs (leader): hand out the lowest pending indices up to each run's
 * parallelism, onto nodes that fit, many indices per transaction. */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arrayspec.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "spec.h"
#include "log.h"
#include "util.h"

size_t sched_quota_room(const struct sched_quota *q, const struct sched_request *req, char *why,
                        size_t why_len)
{
    int64_t room = INT64_MAX;
    const char *what = NULL;
    struct {
        int64_t limit, used, per;
        const char *name;
    } r[] = {
        {q->inst, q->inst_used, 1, "instances"},
        {q->cpu, q->cpu_used, req->cpu_millis, "cpu"},
        {q->mem, q->mem_used, req->memory_bytes, "memory"},
        {q->gpus, q->gpus_used, req->gpus, "gpus"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(r); i++) {
        if (r[i].limit < 0 || r[i].per <= 0)
            continue;
        int64_t k = r[i].limit > r[i].used ? (r[i].limit - r[i].used) / r[i].per : 0;
        if (k < room) {
            room = k;
            what = r[i].name;
        }
    }
    if (room == 0)
        snprintf(why, why_len, "quota: the project's %s limit is reached", what);
    return (size_t)room;
}

/* A project's quota (-1: no limit) and what its live instances hold, in the
 * order quota_from_row reads; the caller adds WHERE and GROUP BY
 * q.project_id. */
#define QUOTA_USAGE_SQL                                                                            \
    "SELECT q.project_id, coalesce(q.cpu_millis, -1), coalesce(q.memory_bytes, -1), "              \
    "  coalesce(q.gpus, -1), coalesce(q.instances, -1), "                                          \
    "  coalesce(sum(i.cpu_millis), 0), coalesce(sum(i.memory_bytes), 0), "                         \
    "  coalesce(sum(i.gpus), 0), count(i.id) "                                                     \
    "FROM project_quotas q LEFT JOIN instances i ON i.project_id = q.project_id "                  \
    "  AND i.state IN " LOOM_LIVE_STATES_SQL " "

static void quota_from_row(PGresult *res, int row, struct sched_quota *ret)
{
    int64_t *f[] = {&ret->project_id, &ret->cpu,      &ret->mem,       &ret->gpus,     &ret->inst,
                    &ret->cpu_used,   &ret->mem_used, &ret->gpus_used, &ret->inst_used};
    for (int c = 0; c < 9; c++)
        *f[c] = strtoll(PQgetvalue(res, row, c), NULL, 10);
}

int sched_quota_load(struct loom_db *db, const char *project_id, struct sched_quota *ret,
                     bool *ret_found, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err, QUOTA_USAGE_SQL "WHERE q.project_id = $1::bigint GROUP BY q.project_id",
        project_id);
    if (!res)
        return -1;
    *ret_found = PQntuples(res) > 0;
    if (!*ret_found)
        return 0;
    quota_from_row(res, 0, ret);
    return 0;
}

/* A gang index that could not be placed within the run's gang_timeout:
 * it fails (no retry) with a reason that says so, and the next index starts
 * its own wait. */
static int fail_gang_index(struct loom_db *db, const char *run_id, int32_t idx, const char *timeout,
                           const char *why, struct loom_err *err)
{
    char reason[512], num[16];
    snprintf(reason, sizeof(reason), "gang not placed within gang_timeout (%ss): %s", timeout,
             why[0] ? why : "no room");
    snprintf(num, sizeof(num), "%d", idx);
    _cleanup_pgres_ PGresult *ji = loom_db_query(
        db, err,
        "INSERT INTO job_run_indices AS j (run_id, idx, state, retries, reason, finished_at) "
        "VALUES ($1::bigint, $2::integer, 'failed', 0, $3, now()) "
        "ON CONFLICT (run_id, idx) DO UPDATE SET state = 'failed', reason = $3, "
        "  finished_at = now(), instance_id = NULL WHERE j.state = 'pending'",
        run_id, num, reason);
    if (!ji)
        return -1;
    _cleanup_pgres_ PGresult *run = loom_db_query(
        db, err,
        "UPDATE job_runs SET pending = pending - int4multirange(int4range($2::integer, "
        "  $2::integer + 1)), n_failed = n_failed + 1, gang_waiting_since = NULL, "
        "  waiting_reason = $3, updated_at = now() WHERE id = $1::bigint",
        run_id, num, reason);
    if (!run)
        return -1;
    return sched_run_finish_if_settled(db, run_id, err);
}

/* The columns of the placer's query (sched_jobs_place). */
enum {
    RUN_ID,
    RUN_PROJECT,
    RUN_PENDING,
    RUN_PARALLELISM,
    RUN_N_RUNNING,
    RUN_WAITING,
    RUN_CPU,
    RUN_MEMORY,
    RUN_EPHEMERAL,
    RUN_GPUS,
    RUN_GANG_WAITED, /* seconds since gang_waiting_since, or NULL */
    RUN_SPEC,
};

/* Reads one run's row; a spec that does not decode fills why (the run waits
 * with that reason) and returns 1. */
static int read_run(PGresult *runs, int r, struct sched_run *ret, struct loom_spec *spec, char *why,
                    size_t why_len, struct loom_err *err)
{
    struct loom_err serr = LOOM_ERR_INIT;
    if (loom_spec_decode_text(LOOM_KIND_JOBRUN, PQgetvalue(runs, r, RUN_SPEC), spec, &serr) < 0) {
        snprintf(why, why_len, "%.255s", serr.msg);
        return 1;
    }
    struct sched_run run = {
        .parallelism = strtoll(PQgetvalue(runs, r, RUN_PARALLELISM), NULL, 10),
        .n_running = strtoll(PQgetvalue(runs, r, RUN_N_RUNNING), NULL, 10),
        .members = spec->nodes,
    };
    sched_request_init(&run.req, spec, strtoll(PQgetvalue(runs, r, RUN_CPU), NULL, 10),
                       strtoll(PQgetvalue(runs, r, RUN_MEMORY), NULL, 10),
                       strtoll(PQgetvalue(runs, r, RUN_EPHEMERAL), NULL, 10),
                       strtoll(PQgetvalue(runs, r, RUN_GPUS), NULL, 10));
    const char *waited = loom_db_val(runs, r, RUN_GANG_WAITED);
    run.gang_expired = waited && strtod(waited, NULL) > (double)spec->gang_timeout;
    if (loom_arrayspec_from_multirange(PQgetvalue(runs, r, RUN_PENDING), &run.pending, err) < 0)
        return -1;
    *ret = run;
    return 0;
}

/* Writes a plan of the locked run r: its index rows, instances and counts,
 * or why it waits. Appends the new instance ids to ids; *ret_placed counts
 * them; q (the run's project quota, or NULL) takes what they hold. */
static int apply_run(struct sched *s, struct loom_db *db, int64_t epoch, PGresult *runs, int r,
                     const struct sched_run *run, const struct sched_run_plan *plan,
                     struct sched_node *nodes, struct sched_quota *q, struct strbuf *ids,
                     size_t *ret_placed, struct loom_err *err)
{
    const char *run_id = PQgetvalue(runs, r, RUN_ID);
    const char *old_reason = loom_db_val(runs, r, RUN_WAITING);
    size_t members = (size_t)run->members;
    if (plan->n < plan->wanted)
        s->pool.ran_short = true;
    if (plan->n == 0) {
        if (plan->gang_failed) {
            char timeout[24];
            snprintf(timeout, sizeof(timeout), "%lld", (long long)run->gang_timeout_s);
            return fail_gang_index(db, run_id, plan->idx[0], timeout, plan->why, err);
        }
        if (!plan->why[0] || (old_reason && strcmp(old_reason, plan->why) == 0 && members == 1))
            return 0;
        /* a gang that waits starts its gang_timeout clock here */
        _cleanup_pgres_ PGresult *w =
            loom_db_query(db, err,
                          "UPDATE job_runs SET waiting_reason = $2, gang_waiting_since = CASE "
                          "  WHEN $3::integer > 1 THEN coalesce(gang_waiting_since, now()) END "
                          "WHERE id = $1::bigint",
                          run_id, plan->why, members > 1 ? "2" : "1");
        return w ? 0 : -1;
    }
    _cleanup_strbuf_ struct strbuf a_idx = STRBUF_INIT, a_id = STRBUF_INIT, taken = STRBUF_INIT;
    for (size_t i = 0; i < plan->n; i++) {
        char num[16], uuid[37];
        snprintf(num, sizeof(num), "%d", plan->idx[i]);
        loom_uuid4(uuid);
        sched_pg_array_add(&a_idx, num);
        sched_pg_array_add(&a_id, uuid);
    }
    sched_pg_array_end(&a_idx);
    sched_pg_array_end(&a_id);
    sched_indices_multirange(plan->idx, plan->n, &taken);
    /* index rows first: they keep their retry count, which the instance
     * carries; an index that is somehow not pending is skipped */
    _cleanup_pgres_ PGresult *up = loom_db_query(
        db, err,
        "INSERT INTO job_run_indices AS j (run_id, idx, state, retries, instance_id, "
        "  started_at) "
        "SELECT $1::bigint, x.idx, 'running', 0, x.id, now() "
        "FROM unnest($2::int[], $3::uuid[]) AS x(idx, id) "
        "ON CONFLICT (run_id, idx) DO UPDATE SET state = 'running', "
        "  instance_id = EXCLUDED.instance_id, started_at = now(), finished_at = NULL, "
        "  exit_code = NULL, reason = NULL "
        "WHERE j.state = 'pending' RETURNING instance_id, idx, retries",
        run_id, a_idx.buf, a_id.buf);
    if (!up)
        return -1;
    /* the rows that came back, with their nodes (idx is ascending, so a
     * binary search finds each one's place) */
    _cleanup_strbuf_ struct strbuf b_id = STRBUF_INIT, b_idx = STRBUF_INIT, b_retry = STRBUF_INIT,
                                   b_node = STRBUF_INIT, b_rank = STRBUF_INIT, b_gang = STRBUF_INIT;
    int n_idx = 0;
    for (int i = 0; i < PQntuples(up); i++) {
        int32_t x = (int32_t)strtol(PQgetvalue(up, i, 1), NULL, 10);
        size_t lo = 0, hi = plan->n;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (plan->idx[mid] < x)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo >= plan->n || plan->idx[lo] != x)
            continue;
        n_idx++;
        for (size_t m = 0; m < members; m++) {
            char uuid[37], rank[24];
            if (m == 0)
                snprintf(uuid, sizeof(uuid), "%s", PQgetvalue(up, i, 0));
            else
                loom_uuid4(uuid);
            snprintf(rank, sizeof(rank), "%zu", m);
            sched_pg_array_add(&b_id, uuid);
            sched_pg_array_add(&b_idx, PQgetvalue(up, i, 1));
            sched_pg_array_add(&b_retry, PQgetvalue(up, i, 2));
            sched_pg_array_add(&b_node, nodes[plan->nodes[lo * members + m]].name);
            if (members > 1) {
                sched_pg_array_add(&b_rank, rank);
                sched_pg_array_add(&b_gang, PQgetvalue(up, i, 0));
            } else {
                sched_pg_array_add_null(&b_rank);
                sched_pg_array_add_null(&b_gang);
            }
        }
    }
    sched_pg_array_end(&b_id);
    sched_pg_array_end(&b_idx);
    sched_pg_array_end(&b_retry);
    sched_pg_array_end(&b_node);
    sched_pg_array_end(&b_rank);
    sched_pg_array_end(&b_gang);
    const struct sched_request *req = &run->req;
    char ep[32], cpu[32], mem[32], gpus[16], ephb[32];
    snprintf(ep, sizeof(ep), "%lld", (long long)epoch);
    snprintf(ephb, sizeof(ephb), "%lld", (long long)req->ephemeral_bytes);
    snprintf(cpu, sizeof(cpu), "%lld", (long long)req->cpu_millis);
    snprintf(mem, sizeof(mem), "%lld", (long long)req->memory_bytes);
    snprintf(gpus, sizeof(gpus), "%d", req->gpus);
    _cleanup_pgres_ PGresult *ins = loom_db_query(
        db, err,
        "INSERT INTO instances (id, project_id, kind, job_run_id, array_index, retry, "
        "  node_name, epoch, cpu_millis, memory_bytes, gpus, rank, gang, ephemeral_bytes) "
        "SELECT x.id, $2::bigint, 'job', $1::bigint, x.idx, x.retry, x.node, $3::bigint, "
        "  $4::bigint, $5::bigint, $6::integer, x.rank, x.gang, $13::bigint "
        "FROM unnest($7::uuid[], $8::int[], $9::int[], $10::text[], $11::int[], $12::uuid[]) "
        "  AS x(id, idx, retry, node, rank, gang) RETURNING id",
        run_id, PQgetvalue(runs, r, RUN_PROJECT), ep, cpu, mem, gpus, b_id.buf, b_idx.buf,
        b_retry.buf, b_node.buf, b_rank.buf, b_gang.buf, ephb);
    if (!ins)
        return -1;
    char n_ins[16];
    snprintf(n_ins, sizeof(n_ins), "%d", n_idx); /* indices: a gang counts once */
    for (int i = 0; i < PQntuples(ins); i++)
        sched_pg_array_add(ids, PQgetvalue(ins, i, 0));
    bool short_of = plan->n < plan->wanted;
    _cleanup_pgres_ PGresult *upd =
        loom_db_query(db, err,
                      "UPDATE job_runs SET pending = pending - $2::int4multirange, "
                      "  n_running = n_running + $3::integer, state = 'running', "
                      "  waiting_reason = nullif($4, ''), updated_at = now(), "
                      "  gang_waiting_since = CASE WHEN $5::boolean "
                      "    THEN coalesce(gang_waiting_since, now()) END WHERE id = $1::bigint",
                      run_id, taken.buf, n_ins,
                      short_of       ? plan->why
                      : plan->capped ? "parallelism"
                                     : "",
                      members > 1 && short_of ? "true" : "false");
    if (!upd)
        return -1;
    *ret_placed += (size_t)PQntuples(ins);
    if (q) {
        int64_t k = PQntuples(ins);
        q->inst_used += k;
        q->cpu_used += k * req->cpu_millis;
        q->mem_used += k * req->memory_bytes;
        q->gpus_used += k * req->gpus;
    }
    return 0;
}

/* Plans and writes one locked run (row r of runs). */
static int place_run(struct sched *s, struct loom_db *db, int64_t epoch, PGresult *runs, int r,
                     struct sched_pool *pool, size_t budget, struct sched_quota *q,
                     struct strbuf *ids, size_t *ret_placed, struct loom_err *err)
{
    _cleanup_spec_ struct loom_spec spec = {0};
    struct sched_run run = {0};
    struct sched_run_plan plan = {0};
    int rc = read_run(runs, r, &run, &spec, plan.why, sizeof(plan.why), err);
    if (rc == 0) {
        run.gang_timeout_s = spec.gang_timeout;
        sched_plan_run(&run, pool->nodes, pool->n, budget, q, &s->rng, &plan);
        rc = apply_run(s, db, epoch, runs, r, &run, &plan, pool->nodes, q, ids, ret_placed, err);
    } else if (rc > 0) {
        rc = apply_run(s, db, epoch, runs, r, &run, &plan, pool->nodes, q, ids, ret_placed, err);
    }
    loom_arrayspec_release(&run.pending);
    sched_run_plan_release(&plan);
    return rc;
}

int sched_jobs_promote_backoffs(struct loom_db *db, size_t *ret_moved, struct loom_err *err)
{
    /* one statement: the indices and their runs' pending move together */
    _cleanup_pgres_ PGresult *res = loom_db_exec(
        db,
        "WITH due AS ("
        "  UPDATE job_run_indices SET retry_at = NULL "
        "  WHERE retry_at IS NOT NULL AND retry_at <= now() AND state = 'pending' "
        "  RETURNING run_id, idx), "
        "runs AS ("
        "  UPDATE job_runs r SET pending = r.pending + g.m, updated_at = now() "
        "  FROM (SELECT run_id, range_agg(int4range(idx, idx + 1)) AS m FROM due "
        "        GROUP BY run_id) g "
        "  WHERE r.id = g.run_id AND r.state IN ('pending', 'running') RETURNING r.id) "
        "SELECT count(*) FROM due",
        0, NULL, err);
    if (!res)
        return -1;
    *ret_moved = (size_t)strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    return 0;
}

int sched_jobs_have_work(struct loom_db *db, bool *ret, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_exec(
        db,
        "SELECT 1 FROM job_runs WHERE state IN ('pending', 'running') AND NOT isempty(pending) "
        "AND (parallelism = 0 OR n_running < parallelism) LIMIT 1",
        0, NULL, err);
    if (!res)
        return -1;
    *ret = PQntuples(res) > 0;
    return 0;
}

int sched_jobs_place(struct sched *s, struct loom_db *db, int64_t epoch, struct sched_pool *pool,
                     size_t *ret_placed, struct loom_err *err)
{
    if (sched_pool_get(s, db, pool, err) < 0)
        return -1;
    size_t placed = 0;
    struct strbuf ids = STRBUF_INIT;
    int64_t t0 = loom_now_ns();
    _cleanup_pgres_ PGresult *runs = NULL, *quotas = NULL;
    _cleanup_free_ struct sched_quota *qs = NULL;
    size_t nq = 0;
    if (loom_db_begin(db, err) < 0)
        return -1;
    if (sched_lease_check_tx(s, db, epoch, err) < 0)
        goto fail;
    /* oldest runs first; the row locks keep reports of these runs waiting
     * until we commit, so pending and n_running cannot move under us */
    runs = loom_db_exec(
        db,
        "SELECT id, project_id, pending::text, parallelism, n_running, waiting_reason, "
        "  cpu_millis, memory_bytes, ephemeral_bytes, gpus, "
        "  extract(epoch FROM now() - gang_waiting_since), spec::text "
        "FROM job_runs WHERE state IN ('pending', 'running') AND NOT isempty(pending) "
        "  AND (parallelism = 0 OR n_running < parallelism) "
        "ORDER BY priority DESC, id LIMIT 200 FOR UPDATE",
        0, NULL, err);
    if (!runs)
        goto fail;
    /* quotas of the projects with runs to place, and what they hold now */
    quotas = loom_db_exec(db,
                          QUOTA_USAGE_SQL
                          "WHERE q.project_id IN (SELECT project_id FROM job_runs "
                          "  WHERE state IN ('pending', 'running') AND NOT isempty(pending)) "
                          "GROUP BY q.project_id",
                          0, NULL, err);
    if (!quotas)
        goto fail;
    nq = (size_t)PQntuples(quotas);
    qs = calloc(nq ? nq : 1, sizeof(*qs));
    if (!qs)
        abort();
    for (size_t k = 0; k < nq; k++)
        quota_from_row(quotas, (int)k, &qs[k]);
    for (int r = 0; r < PQntuples(runs) && placed < (size_t)s->batch_max; r++) {
        int64_t project = strtoll(PQgetvalue(runs, r, RUN_PROJECT), NULL, 10);
        struct sched_quota *q = NULL;
        for (size_t k = 0; k < nq && !q; k++)
            if (qs[k].project_id == project)
                q = &qs[k];
        if (place_run(s, db, epoch, runs, r, pool, (size_t)s->batch_max - placed, q, &ids, &placed,
                      err) < 0)
            goto fail;
    }
    if (loom_db_commit(db, err) < 0) {
        strbuf_release(&ids);
        return -1;
    }
    if (placed > 0) {
        int64_t t1 = loom_now_ns();
        sched_pg_array_end(&ids);
        loom_metric_add(s->m_placements, (double)placed);
        loom_metric_observe(s->m_batch_latency, (double)(t1 - t0) / 1e9);
        sched_send_assigns(s, db, epoch, ids.buf);
        log_debug("placed %zu job indices: %.1f ms to commit, %.1f ms to send", placed,
                  (double)(t1 - t0) / 1e6, (double)(loom_now_ns() - t1) / 1e6);
    }
    strbuf_release(&ids);
    *ret_placed = placed;
    return 0;
fail:
    loom_db_rollback(db);
    strbuf_release(&ids);
    return -1;
}

int sched_jobs_stop_cancelled(struct sched *s, struct loom_db *db, int64_t epoch,
                              struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = NULL;
    if (loom_db_begin(db, err) < 0)
        return -1;
    if (sched_lease_check_tx(s, db, epoch, err) < 0)
        goto fail;
    res =
        loom_db_exec(db,
                     "UPDATE instances i SET desired = 'stop', updated_at = now() FROM job_runs r "
                     "WHERE r.id = i.job_run_id AND r.state = 'cancelled' AND i.desired = 'run' "
                     "  AND i.state IN " LOOM_LIVE_STATES_SQL " RETURNING i.id, i.node_name",
                     0, NULL, err);
    if (!res)
        goto fail;
    if (loom_db_commit(db, err) < 0)
        return -1;
    for (int r = 0; r < PQntuples(res); r++)
        sched_send_stop(s, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), epoch, "job run cancelled",
                        SCHED_STOP_GRACE_S);
    return 0;
fail:
    loom_db_rollback(db);
    return -1;
}
