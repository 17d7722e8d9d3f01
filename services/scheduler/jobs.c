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
#include "log.h"
#include "util.h"

/* The resources one instance of a spec asks for; NULL columns take the
 * defaults (1 vCPU, 4G as in Code Engine's default profile). */
int sched_request_from_columns(const char *cpu, const char *mem, const char *gpus,
                               const char *gpu_model, struct sched_request *ret, char *why,
                               size_t why_len)
{
    struct sched_request r = {
        .cpu_millis = 1000, .memory_bytes = 4000000000LL, .gpu_model = gpu_model};
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

/* Places up to budget indices of one locked run (row r of runs). Appends the
 * new instance ids to ids. q is the run's project quota, or NULL. */
static int place_run(struct sched *s, struct loom_db *db, int64_t epoch, PGresult *runs, int r,
                     struct sched_node *nodes, size_t nnodes, size_t budget, struct sched_quota *q,
                     struct strbuf *ids, size_t *ret_placed, struct loom_err *err)
{
    const char *run_id = PQgetvalue(runs, r, 0);
    const char *project_id = PQgetvalue(runs, r, 1);
    int64_t parallelism = strtoll(PQgetvalue(runs, r, 3), NULL, 10);
    int64_t n_running = strtoll(PQgetvalue(runs, r, 4), NULL, 10);
    const char *old_reason = loom_db_val(runs, r, 9);
    /* a gang run places each index as `members` instances on distinct nodes */
    long members = loom_db_val(runs, r, 10) ? strtol(PQgetvalue(runs, r, 10), NULL, 10) : 1;
    if (members < 1 || members > SCHED_GANG_MAX)
        members = 1;
    char why[256] = "";
    size_t want = budget / (size_t)members;
    if (want == 0)
        want = 1; /* one gang may exceed a batch */
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
    _cleanup_json_ json_t *selector = NULL;
    if (sched_request_from_columns(loom_db_val(runs, r, 5), loom_db_val(runs, r, 6),
                                   loom_db_val(runs, r, 7), loom_db_val(runs, r, 8), &req, why,
                                   sizeof(why)) < 0)
        goto reason;
    const char *eph = loom_db_val(runs, r, 11);
    req.ephemeral_bytes = SCHED_EPHEMERAL_DEFAULT;
    if (eph && sched_parse_memory(eph, &req.ephemeral_bytes) < 0) {
        snprintf(why, sizeof(why), "invalid scale_ephemeral_storage_limit \"%.64s\"", eph);
        goto reason;
    }
    const char *sel = loom_db_val(runs, r, 12);
    if (sel) {
        selector = loom_json_parse_object(sel, strlen(sel), NULL);
        req.selector = selector;
    }
    const char *placement = loom_db_val(runs, r, 13);
    req.spread = placement && strcmp(placement, "spread") == 0;
    bool gang_expired = strcmp(PQgetvalue(runs, r, 15), "t") == 0;
    if (q) {
        size_t room = sched_quota_room(q, &req, why, sizeof(why)) / (size_t)members;
        if (room == 0) {
            if (!why[0])
                snprintf(why, sizeof(why), "quota: no room for all %ld members of a gang", members);
            goto reason;
        }
        if (room < want)
            want = room;
    }
    if (loom_arrayspec_from_multirange(PQgetvalue(runs, r, 2), &pending, err) < 0)
        return -1;
    int64_t pending_count = pending.count;
    if ((int64_t)want > pending.count)
        want = (size_t)pending.count;
    idx = calloc(want ? want : 1, sizeof(*idx));
    chosen = calloc((want ? want : 1) * (size_t)members, sizeof(*chosen));
    if (!idx || !chosen)
        abort();
    got = sched_take_indices(&pending, want, idx);
    loom_arrayspec_release(&pending);
    size_t sample = sched_sample_size(nnodes);
    for (; placed < got; placed++) {
        long *mine = &chosen[placed * (size_t)members];
        long m = 0;
        for (; m < members; m++) {
            long n = sched_choose_node(nodes, nnodes, &req, sample, &s->rng);
            if (n < 0)
                break;
            mine[m] = n;
            nodes[n].cpu_used += req.cpu_millis;
            nodes[n].mem_used += req.memory_bytes;
            nodes[n].gpus_used += req.gpus;
            nodes[n].disk_used += req.ephemeral_bytes;
            /* distinct nodes: a chosen node takes no second member (its
             * total is hidden until the gang is decided) */
            if (members > 1) {
                int64_t t = nodes[n].cpu_total;
                nodes[n].cpu_total = -1 - t;
            }
        }
        if (members > 1)
            for (long k = 0; k < m; k++)
                nodes[mine[k]].cpu_total = -1 - nodes[mine[k]].cpu_total;
        if (m < members) {
            /* all or none: give back what this gang took */
            for (long k = 0; k < m; k++) {
                nodes[mine[k]].cpu_used -= req.cpu_millis;
                nodes[mine[k]].mem_used -= req.memory_bytes;
                nodes[mine[k]].gpus_used -= req.gpus;
                nodes[mine[k]].disk_used -= req.ephemeral_bytes;
            }
            sched_describe_request(&req, why, sizeof(why));
            if (members > 1) {
                size_t l = strlen(why);
                snprintf(why + l, sizeof(why) - l, " for all %ld members of a gang", members);
            }
            s->pool.ran_short = true;
            break;
        }
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
        /* indices still pending wait for running ones to end */
        bool capped = parallelism > 0 && n_running + (int64_t)placed >= parallelism &&
                      pending_count > (int64_t)placed;
        char ep[32], cpu[32], mem[32], gpus[16], ephb[32];
        snprintf(ep, sizeof(ep), "%lld", (long long)epoch);
        snprintf(ephb, sizeof(ephb), "%lld", (long long)req.ephemeral_bytes);
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
                      b_node = STRBUF_INIT, b_rank = STRBUF_INIT, b_gang = STRBUF_INIT;
        int n_idx = 0;
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
            n_idx++;
            for (long m = 0; m < members; m++) {
                char uuid[37], rank[16];
                if (m == 0)
                    snprintf(uuid, sizeof(uuid), "%s", PQgetvalue(up, i, 0));
                else
                    loom_uuid4(uuid);
                snprintf(rank, sizeof(rank), "%ld", m);
                sched_pg_array_add(&b_id, uuid);
                sched_pg_array_add(&b_idx, PQgetvalue(up, i, 1));
                sched_pg_array_add(&b_retry, PQgetvalue(up, i, 2));
                sched_pg_array_add(&b_node, nodes[chosen[lo * (size_t)members + (size_t)m]].name);
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
        _cleanup_pgres_ PGresult *ins = loom_db_query(
            db, err,
            "INSERT INTO instances (id, project_id, kind, job_run_id, array_index, retry, "
            "  node_name, epoch, cpu_millis, memory_bytes, gpus, rank, gang, ephemeral_bytes) "
            "SELECT x.id, $2::bigint, 'job', $1::bigint, x.idx, x.retry, x.node, $3::bigint, "
            "  $4::bigint, $5::bigint, $6::integer, x.rank, x.gang, $13::bigint "
            "FROM unnest($7::uuid[], $8::int[], $9::int[], $10::text[], $11::int[], $12::uuid[]) "
            "  AS x(id, idx, retry, node, rank, gang) RETURNING id",
            run_id, project_id, ep, cpu, mem, gpus, b_id.buf, b_idx.buf, b_retry.buf, b_node.buf,
            b_rank.buf, b_gang.buf, ephb);
        strbuf_release(&b_id);
        strbuf_release(&b_idx);
        strbuf_release(&b_retry);
        strbuf_release(&b_node);
        strbuf_release(&b_rank);
        strbuf_release(&b_gang);
        if (!ins) {
            strbuf_release(&taken);
            return -1;
        }
        char n_ins[16];
        snprintf(n_ins, sizeof(n_ins), "%d", n_idx); /* indices: a gang counts once */
        for (int i = 0; i < PQntuples(ins); i++)
            sched_pg_array_add(ids, PQgetvalue(ins, i, 0));
        _cleanup_pgres_ PGresult *upd =
            loom_db_query(db, err,
                          "UPDATE job_runs SET pending = pending - $2::int4multirange, "
                          "  n_running = n_running + $3::integer, state = 'running', "
                          "  waiting_reason = nullif($4, ''), updated_at = now(), "
                          "  gang_waiting_since = CASE WHEN $5::boolean "
                          "    THEN coalesce(gang_waiting_since, now()) END WHERE id = $1::bigint",
                          run_id, taken.buf, n_ins,
                          placed < got ? why
                          : capped     ? "parallelism"
                                       : "",
                          members > 1 && placed < got ? "true" : "false");
        strbuf_release(&taken);
        if (!upd)
            return -1;
        *ret_placed += (size_t)PQntuples(ins);
        if (q) {
            int64_t k = PQntuples(ins);
            q->inst_used += k;
            q->cpu_used += k * req.cpu_millis;
            q->mem_used += k * req.memory_bytes;
            q->gpus_used += k * req.gpus;
        }
        return 0;
    }
    if (members > 1 && got > 0 && gang_expired)
        return fail_gang_index(db, run_id, idx[0], PQgetvalue(runs, r, 14), why, err);
reason:
    if (why[0] && (!old_reason || strcmp(old_reason, why) != 0 || members > 1)) {
        /* a gang that waits starts its gang_timeout clock here */
        _cleanup_pgres_ PGresult *w =
            loom_db_query(db, err,
                          "UPDATE job_runs SET waiting_reason = $2, gang_waiting_since = CASE "
                          "  WHEN $3::integer > 1 THEN coalesce(gang_waiting_since, now()) END "
                          "WHERE id = $1::bigint",
                          run_id, why, members > 1 ? "2" : "1");
        if (!w)
            return -1;
    }
    return 0;
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
        "SELECT id, project_id, pending::text, parallelism, n_running, "
        "  spec->>'scale_cpu_limit', spec->>'scale_memory_limit', spec->>'scale_gpus', "
        "  spec->>'scale_gpu_model', waiting_reason, spec->>'scale_nodes', "
        "  spec->>'scale_ephemeral_storage_limit', nullif(spec->'node_selector', '{}')::text, "
        "  spec->>'placement', "
        "  CASE WHEN jsonb_typeof(spec->'gang_timeout') = 'number' "
        "    THEN (spec->>'gang_timeout')::numeric ELSE 300 END, "
        "  coalesce(gang_waiting_since < now() - make_interval(secs => "
        "    CASE WHEN jsonb_typeof(spec->'gang_timeout') = 'number' "
        "      THEN (spec->>'gang_timeout')::float8 ELSE 300 END), false) "
        "FROM job_runs WHERE state IN ('pending', 'running') AND NOT isempty(pending) "
        "  AND (parallelism = 0 OR n_running < parallelism) "
        "ORDER BY coalesce((spec->>'priority')::integer, 50) DESC, id LIMIT 200 FOR UPDATE",
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
        int64_t project = strtoll(PQgetvalue(runs, r, 1), NULL, 10);
        struct sched_quota *q = NULL;
        for (size_t k = 0; k < nq && !q; k++)
            if (qs[k].project_id == project)
                q = &qs[k];
        if (place_run(s, db, epoch, runs, r, pool->nodes, pool->n, (size_t)s->batch_max - placed, q,
                      &ids, &placed, err) < 0)
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
        sched_send_stop(s, PQgetvalue(res, r, 1), PQgetvalue(res, r, 0), epoch,
                        "job run cancelled");
    return 0;
fail:
    loom_db_rollback(db);
    return -1;
}
