/* Job runs (leader): hand out the lowest pending indices up to each run's
 * parallelism, onto nodes that fit, many indices per transaction. */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arrayspec.h"
#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "util.h"

/* The resources one instance of a spec asks for; NULL columns take the
 * defaults (1 vCPU, 4G as in Code Engine's default profile). */
int sched_request_from_columns(const char *cpu, const char *mem, const char *gpus,
                               const char *gpu_model, struct sched_request *ret, char *why,
                               size_t why_len)
{
    struct sched_request r = {1000, 4000000000LL, 0, gpu_model};
    if (cpu && sched_parse_cpu(cpu, &r.cpu_millis) < 0) {
        snprintf(why, why_len, "invalid scale_cpu_limit \"%.64s\"", cpu);
        return -1;
    }
    if (mem && sched_parse_memory(mem, &r.memory_bytes) < 0) {
        snprintf(why, why_len, "invalid scale_memory_limit \"%.64s\"", mem);
        return -1;
    }
    if (gpus) {
        char *end;
        long g = strtol(gpus, &end, 10);
        if (*end || g < 0 || g > 64) {
            snprintf(why, why_len, "invalid scale_gpus \"%.64s\"", gpus);
            return -1;
        }
        r.gpus = (int32_t)g;
    }
    *ret = r;
    return 0;
}

/* Places up to budget indices of one locked run (row r of runs). Appends the
 * new instance ids to ids. */
static int place_run(struct sched *s, struct loom_db *db, int64_t epoch, PGresult *runs, int r,
                     struct sched_node *nodes, size_t nnodes, size_t budget, struct strbuf *ids,
                     size_t *ret_placed, struct loom_err *err)
{
    const char *run_id = PQgetvalue(runs, r, 0);
    const char *project_id = PQgetvalue(runs, r, 1);
    int64_t parallelism = strtoll(PQgetvalue(runs, r, 3), NULL, 10);
    int64_t n_running = strtoll(PQgetvalue(runs, r, 4), NULL, 10);
    const char *old_reason = loom_db_val(runs, r, 9);
    char why[256] = "";
    size_t want = budget;
    if (parallelism > 0) {
        int64_t room = parallelism - n_running;
        if (room <= 0)
            return 0;
        if ((size_t)room < want)
            want = (size_t)room;
    }
    struct sched_request req;
    struct loom_arrayspec pending = {0};
    _cleanup_free_ int32_t *idx = NULL;
    _cleanup_free_ long *chosen = NULL;
    size_t got = 0, placed = 0;
    if (sched_request_from_columns(loom_db_val(runs, r, 5), loom_db_val(runs, r, 6),
                                   loom_db_val(runs, r, 7), loom_db_val(runs, r, 8), &req, why,
                                   sizeof(why)) < 0)
        goto reason;
    if (loom_arrayspec_from_multirange(PQgetvalue(runs, r, 2), &pending, err) < 0)
        return -1;
    if ((int64_t)want > pending.count)
        want = (size_t)pending.count;
    idx = calloc(want ? want : 1, sizeof(*idx));
    chosen = calloc(want ? want : 1, sizeof(*chosen));
    if (!idx || !chosen)
        abort();
    got = sched_take_indices(&pending, want, idx);
    loom_arrayspec_release(&pending);
    size_t sample = sched_sample_size(nnodes);
    for (; placed < got; placed++) {
        long n = sched_choose_node(nodes, nnodes, &req, sample, &s->rng);
        if (n < 0) {
            sched_describe_request(&req, why, sizeof(why));
            s->pool.ran_short = true;
            break;
        }
        chosen[placed] = n;
        nodes[n].cpu_used += req.cpu_millis;
        nodes[n].mem_used += req.memory_bytes;
        nodes[n].gpus_used += req.gpus;
    }
    if (placed > 0) {
        struct strbuf a_idx = STRBUF_INIT, a_id = STRBUF_INIT, taken = STRBUF_INIT;
        for (size_t i = 0; i < placed; i++) {
            char num[16], uuid[37];
            snprintf(num, sizeof(num), "%d", idx[i]);
            loom_uuid4(uuid);
            sched_pg_array_add(&a_idx, num);
            sched_pg_array_add(&a_id, uuid);
        }
        sched_pg_array_end(&a_idx);
        sched_pg_array_end(&a_id);
        sched_indices_multirange(idx, placed, &taken);
        char ep[32], cpu[32], mem[32], gpus[16];
        snprintf(ep, sizeof(ep), "%lld", (long long)epoch);
        snprintf(cpu, sizeof(cpu), "%lld", (long long)req.cpu_millis);
        snprintf(mem, sizeof(mem), "%lld", (long long)req.memory_bytes);
        snprintf(gpus, sizeof(gpus), "%d", req.gpus);
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
        strbuf_release(&a_idx);
        strbuf_release(&a_id);
        if (!up) {
            strbuf_release(&taken);
            return -1;
        }
        /* the rows that came back, with their nodes (idx is ascending, so a
         * binary search finds each one's place) */
        struct strbuf b_id = STRBUF_INIT, b_idx = STRBUF_INIT, b_retry = STRBUF_INIT,
                      b_node = STRBUF_INIT;
        for (int i = 0; i < PQntuples(up); i++) {
            int32_t x = (int32_t)strtol(PQgetvalue(up, i, 1), NULL, 10);
            size_t lo = 0, hi = placed;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (idx[mid] < x)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo >= placed || idx[lo] != x)
                continue;
            sched_pg_array_add(&b_id, PQgetvalue(up, i, 0));
            sched_pg_array_add(&b_idx, PQgetvalue(up, i, 1));
            sched_pg_array_add(&b_retry, PQgetvalue(up, i, 2));
            sched_pg_array_add(&b_node, nodes[chosen[lo]].name);
        }
        sched_pg_array_end(&b_id);
        sched_pg_array_end(&b_idx);
        sched_pg_array_end(&b_retry);
        sched_pg_array_end(&b_node);
        _cleanup_pgres_ PGresult *ins = loom_db_query(
            db, err,
            "INSERT INTO instances (id, project_id, kind, job_run_id, array_index, retry, "
            "  node_name, epoch, cpu_millis, memory_bytes, gpus) "
            "SELECT x.id, $2::bigint, 'job', $1::bigint, x.idx, x.retry, x.node, $3::bigint, "
            "  $4::bigint, $5::bigint, $6::integer "
            "FROM unnest($7::uuid[], $8::int[], $9::int[], $10::text[]) "
            "  AS x(id, idx, retry, node) RETURNING id",
            run_id, project_id, ep, cpu, mem, gpus, b_id.buf, b_idx.buf, b_retry.buf, b_node.buf);
        strbuf_release(&b_id);
        strbuf_release(&b_idx);
        strbuf_release(&b_retry);
        strbuf_release(&b_node);
        if (!ins) {
            strbuf_release(&taken);
            return -1;
        }
        char n_ins[16];
        snprintf(n_ins, sizeof(n_ins), "%d", PQntuples(ins));
        for (int i = 0; i < PQntuples(ins); i++)
            sched_pg_array_add(ids, PQgetvalue(ins, i, 0));
        _cleanup_pgres_ PGresult *upd = loom_db_query(
            db, err,
            "UPDATE job_runs SET pending = pending - $2::int4multirange, "
            "  n_running = n_running + $3::integer, state = 'running', "
            "  waiting_reason = nullif($4, ''), updated_at = now() WHERE id = $1::bigint",
            run_id, taken.buf, n_ins, placed < got ? why : "");
        strbuf_release(&taken);
        if (!upd)
            return -1;
        *ret_placed += (size_t)PQntuples(ins);
        return 0;
    }
reason:
    if (why[0] && (!old_reason || strcmp(old_reason, why) != 0)) {
        _cleanup_pgres_ PGresult *w = loom_db_query(
            db, err, "UPDATE job_runs SET waiting_reason = $2 WHERE id = $1::bigint", run_id, why);
        if (!w)
            return -1;
    }
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
    _cleanup_pgres_ PGresult *runs = NULL;
    if (loom_db_begin(db, err) < 0)
        return -1;
    if (sched_lease_check_tx(s, db, epoch, err) < 0)
        goto fail;
    /* oldest runs first; the row locks keep reports of these runs waiting
     * until we commit, so pending and n_running cannot move under us */
    runs = loom_db_exec(
        db,
        "SELECT id, project_id, pending::text, parallelism, n_running, "
        "  spec->>'scale_cpu_limit', spec->>'scale_memory_limit', spec->>'scale_gpus', "
        "  spec->>'scale_gpu_model', waiting_reason "
        "FROM job_runs WHERE state IN ('pending', 'running') AND NOT isempty(pending) "
        "  AND (parallelism = 0 OR n_running < parallelism) "
        "ORDER BY id LIMIT 200 FOR UPDATE",
        0, NULL, err);
    if (!runs)
        goto fail;
    for (int r = 0; r < PQntuples(runs) && placed < (size_t)s->batch_max; r++)
        if (place_run(s, db, epoch, runs, r, pool->nodes, pool->n, (size_t)s->batch_max - placed,
                      &ids, &placed, err) < 0)
            goto fail;
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
                     "  AND i.state IN " SCHED_LIVE_STATES " RETURNING i.id, i.node_name",
                     0, NULL, err);
    if (!res)
        goto fail;
    if (loom_db_commit(db, err) < 0)
        return -1;
    for (int r = 0; r < PQntuples(res); r++)
        sched_send_stop(s, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), epoch,
                        "job run cancelled");
    return 0;
fail:
    loom_db_rollback(db);
    return -1;
}
