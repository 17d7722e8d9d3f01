/* Instance reports (any replica), one at a time (loom.instance.report) or
 * many at once (loom.instance.reports): one transaction per message writes
 * the instances' states and, for job instances that ended, their indices'
 * and runs' bookkeeping, a statement for all of them rather than one each;
 * the Acks go out only after COMMIT, so an agent that gets no Ack resends
 * and nothing is lost. A report is applied once: only a seq above the stored
 * report_seq changes anything. */
#include "sched.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "loom/v1/instance.pb-c.h"
#include "spec.h"
#include "strbuf.h"
#include "subjects.h"
#include "util.h"

static const char *state_name(Loom__V1__InstanceState st)
{
    switch (st) {
    case LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_PULLING:
        return "pulling";
    case LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_STARTING:
        return "starting";
    case LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_RUNNING:
        return "running";
    case LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_SUCCEEDED:
        return "succeeded";
    case LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_FAILED:
        return "failed";
    case LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_STOPPED:
        return "stopped";
    default:
        return NULL;
    }
}

static bool is_terminal(const char *state)
{
    return strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
           strcmp(state, "stopped") == 0;
}

/* What a batch did beyond its rows: capacity came free or an index went
 * back to pending; apps whose set of ready instances changed; free stem
 * cells now running. */
struct report_effect {
    bool freed;
    struct strbuf apps;  /* "project\napp\n" per change */
    struct strbuf stems; /* "runtime\n" per free stem cell running now */
};

/* Ends the runs of runs (a bigint[] literal) that have settled every index
 * (completed, or failed when an index failed); in the caller's transaction. */
static int finish_runs(struct loom_db *db, const char *runs, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *done = loom_db_query(
        db, err,
        "UPDATE job_runs SET state = CASE WHEN n_failed = 0 THEN 'completed' ELSE 'failed' END, "
        "  finished_at = now(), updated_at = now(), waiting_reason = NULL "
        "WHERE id = ANY($1::bigint[]) AND state IN ('pending', 'running') "
        "  AND n_succeeded + n_failed >= array_size",
        runs);
    return done ? 0 : -1;
}

int sched_run_finish_if_settled(struct loom_db *db, const char *run_id, struct loom_err *err)
{
    struct strbuf one = STRBUF_INIT;
    sched_pg_array_add(&one, run_id);
    sched_pg_array_end(&one);
    int rc = finish_runs(db, one.buf, err);
    strbuf_release(&one);
    return rc;
}

/* Job indices to settle (PostgreSQL array literals, one element each). */
struct settle_set {
    struct strbuf run, idx, instance, outcome, code, reason;
    size_t n;
};

static void settle_add(struct settle_set *ss, const char *run_id, const char *idx,
                       const char *instance_id, const char *state, bool permanent,
                       const char *exit_code, const char *reason)
{
    /* outcome: succeeded; retry (failed, a retry is allowed if any are left);
     * requeue (stopped while the run is active: the index did not fail) */
    const char *outcome = strcmp(state, "succeeded") == 0 ? "succeeded"
                          : strcmp(state, "stopped") == 0 ? "requeue"
                          : permanent                     ? "failed"
                                                          : "retry";
    sched_pg_array_add(&ss->run, run_id);
    sched_pg_array_add(&ss->idx, idx);
    sched_pg_array_add(&ss->instance, instance_id);
    sched_pg_array_add(&ss->outcome, outcome);
    sched_pg_array_add(&ss->code, exit_code);
    sched_pg_array_add(&ss->reason, reason);
    ss->n++;
}

static void settle_release(struct settle_set *ss)
{
    strbuf_release(&ss->run);
    strbuf_release(&ss->idx);
    strbuf_release(&ss->instance);
    strbuf_release(&ss->outcome);
    strbuf_release(&ss->code);
    strbuf_release(&ss->reason);
}

/* Settles the indices of ss that their instance still holds (state running
 * and instance_id: a late report of an instance declared lost changes
 * nothing), then ends the runs that have settled every index. */
static int settle_apply(struct loom_db *db, int64_t backoff_ms, struct settle_set *ss,
                        struct loom_err *err)
{
    if (ss->n == 0)
        return 0;
    sched_pg_array_end(&ss->run);
    sched_pg_array_end(&ss->idx);
    sched_pg_array_end(&ss->instance);
    sched_pg_array_end(&ss->outcome);
    sched_pg_array_end(&ss->code);
    sched_pg_array_end(&ss->reason);
    /* A daemon run retries without limit (Code Engine: restarted forever;
     * exit 0 ends the index). A retry waits backoff_ms * 2^retries (at most
     * SCHED_BACKOFF_MAX_MS) in retry_at before it is pending again; a requeue
     * (the work did not fail) is pending at once. */
    char backoff[32];
    snprintf(backoff, sizeof(backoff), "%lld", (long long)backoff_ms);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::integer[], $3::uuid[], $4::text[], "
        "      $5::integer[], $6::text[]) AS u(run_id, idx, instance_id, outcome, exit_code, "
        "      reason)), "
        "ji AS ("
        "  UPDATE job_run_indices j SET "
        "    state = CASE WHEN u.outcome = 'succeeded' THEN 'succeeded' "
        "                 WHEN r.state IN ('pending', 'running') AND "
        "                   (u.outcome = 'requeue' OR (u.outcome = 'retry' AND "
        "                     (j.retries < r.retry_limit OR r.spec->>'run_mode' = 'daemon'))) "
        "                 THEN 'pending' ELSE 'failed' END, "
        "    retries = CASE WHEN u.outcome = 'retry' AND r.state IN ('pending', 'running') "
        "                     AND (j.retries < r.retry_limit OR r.spec->>'run_mode' = 'daemon') "
        "                   THEN j.retries + 1 ELSE j.retries END, "
        "    retry_at = CASE WHEN u.outcome = 'retry' AND $7::bigint > 0 THEN now() + "
        "      make_interval(secs => least($7::bigint * power(2, least(j.retries, 20)), "
        "        " SCHED_BACKOFF_MAX_MS_STR ") / 1000.0) ELSE NULL END, "
        "    finished_at = now(), exit_code = u.exit_code, reason = nullif(u.reason, '') "
        "  FROM u, job_runs r "
        "  WHERE r.id = j.run_id AND j.run_id = u.run_id AND j.idx = u.idx "
        "    AND j.instance_id = u.instance_id AND j.state = 'running' "
        "  RETURNING j.run_id, j.idx, j.state, j.retry_at), "
        "agg AS (SELECT run_id, count(*) AS n, "
        "    count(*) FILTER (WHERE state = 'succeeded') AS succeeded, "
        "    count(*) FILTER (WHERE state = 'failed') AS failed, "
        "    range_agg(int4range(idx, idx + 1)) FILTER (WHERE state = 'pending' "
        "      AND retry_at IS NULL) AS back "
        "  FROM ji GROUP BY run_id) "
        "UPDATE job_runs SET n_running = n_running - agg.n, "
        "  n_succeeded = n_succeeded + agg.succeeded, n_failed = n_failed + agg.failed, "
        "  pending = CASE WHEN agg.back IS NULL THEN pending ELSE pending + agg.back END, "
        "  updated_at = now() "
        "FROM agg WHERE job_runs.id = agg.run_id RETURNING job_runs.id",
        ss->run.buf, ss->idx.buf, ss->instance.buf, ss->outcome.buf, ss->code.buf, ss->reason.buf,
        backoff);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return 0;
    struct strbuf runs = STRBUF_INIT;
    for (int r = 0; r < PQntuples(res); r++)
        sched_pg_array_add(&runs, PQgetvalue(res, r, 0));
    sched_pg_array_end(&runs);
    int rc = finish_runs(db, runs.buf, err);
    strbuf_release(&runs);
    return rc;
}

/* The instance rows a round reads, FOR UPDATE, in id order. */
enum {
    COL_ID,
    COL_STATE,
    COL_SEQ,
    COL_KIND,
    COL_RUN,
    COL_INDEX,
    COL_NODE,
    COL_PROJECT,
    COL_APP,
    COL_DESIRED,
    COL_GANG,
    COL_RUNTIME,
    COL_UNCLAIMED,
};

/* The index bookkeeping for a gang member that ended (row r of cur): the
 * last member to succeed settles the index succeeded; the first to fail or
 * stop settles it (one retry for the gang) and the other members are to
 * stop, so that the gang restarts as a whole. Members of one gang report in
 * their own transactions, or one after another in this one: the index row's
 * lock orders them, and each statement after it sees the others'. */
static int settle_gang(struct loom_db *db, int64_t backoff_ms, PGresult *cur, int r,
                       const Loom__V1__InstanceReport *m, const char *reported, const char *code,
                       const char *reason, struct loom_err *err)
{
    const char *run_id = PQgetvalue(cur, r, COL_RUN), *idx = PQgetvalue(cur, r, COL_INDEX);
    const char *gang = PQgetvalue(cur, r, COL_GANG);
    _cleanup_pgres_ PGresult *lk = loom_db_query(
        db, err,
        "SELECT 1 FROM job_run_indices WHERE run_id = $1::bigint AND idx = $2::integer "
        "  AND instance_id = $3::uuid AND state = 'running' FOR UPDATE",
        run_id, idx, gang);
    if (!lk)
        return -1;
    if (PQntuples(lk) == 0)
        return 0; /* settled already by another member */
    if (strcmp(reported, "succeeded") == 0) {
        _cleanup_pgres_ PGresult *left = loom_db_query(
            db, err,
            "SELECT count(*) FROM instances WHERE gang = $1::uuid AND state <> 'succeeded'", gang);
        if (!left)
            return -1;
        if (strcmp(PQgetvalue(left, 0, 0), "0") != 0)
            return 0; /* members still running */
    } else {
        /* updated_at in the past: the leader's resend pass sends the stops
         * on its next second */
        _cleanup_pgres_ PGresult *st = loom_db_query(
            db, err,
            "UPDATE instances SET desired = 'stop', reason = 'gang member ' || $2 || ' ended', "
            "  updated_at = now() - interval '1 hour' "
            "WHERE gang = $1::uuid AND id <> $2::uuid AND desired = 'run' "
            "  AND state IN " LOOM_LIVE_STATES_SQL,
            gang, m->instance_id);
        if (!st)
            return -1;
    }
    struct settle_set one = {0};
    settle_add(&one, run_id, idx, gang, reported, m->permanent, code, reason);
    int rc = settle_apply(db, backoff_ms, &one, err);
    settle_release(&one);
    return rc;
}

/* A report's own checks, before any row is read. */
static int report_check(const Loom__V1__InstanceReport *m, struct loom_err *err)
{
    if (!state_name(m->state))
        return loom_err_set(err, LOOM_EINVAL, "invalid instance state %d", (int)m->state);
    if (!loom_is_uuid(m->instance_id))
        return loom_err_set(err, LOOM_EINVAL, "invalid instance id");
    if (strlen(m->reason) > 4096 || strlen(m->address) > 255)
        return loom_err_set(err, LOOM_EINVAL, "reason or address too long");
    if (m->seq == 0 || m->seq > (uint64_t)INT64_MAX)
        return loom_err_set(err, LOOM_EINVAL, "invalid report seq");
    if (m->output_digest[0] && (!loom_spec_is_digest(m->output_digest) ||
                                !loom_spec_is_digest(m->output_diff_id) || m->output_size < 0))
        return loom_err_set(err, LOOM_EINVAL, "invalid build output");
    return 0;
}

/* One report's fate in a batch: 0 done (applied, or nothing to do), or
 * refused with msg. */
struct report_result {
    int code;
    char msg[sizeof(((struct loom_err *)0)->msg)];
};

/* The row of cur for id (sorted by id), or -1. */
static int row_of(PGresult *cur, const char *id)
{
    int lo = 0, hi = PQntuples(cur) - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcasecmp(PQgetvalue(cur, mid, COL_ID), id);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* The instance rows' UPDATE for one round (array literals, an element per
 * report applied). */
struct inst_set {
    struct strbuf id, next, seq, desired, address, ended, code, reason, digest, diff_id, size;
    size_t n;
};

static void inst_release(struct inst_set *is)
{
    struct strbuf *all[] = {&is->id,      &is->next,    &is->seq,  &is->desired,
                            &is->address, &is->ended,   &is->code, &is->reason,
                            &is->digest,  &is->diff_id, &is->size};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(all); i++)
        strbuf_release(all[i]);
}

static int inst_apply(struct loom_db *db, struct inst_set *is, struct loom_err *err)
{
    if (is->n == 0)
        return 0;
    struct strbuf *all[] = {&is->id,      &is->next,    &is->seq,  &is->desired,
                            &is->address, &is->ended,   &is->code, &is->reason,
                            &is->digest,  &is->diff_id, &is->size};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(all); i++)
        sched_pg_array_end(all[i]);
    _cleanup_pgres_ PGresult *upd = loom_db_query(
        db, err,
        "UPDATE instances i SET state = u.next, report_seq = u.seq, acked = true, "
        "  desired = u.desired, address = coalesce(nullif(u.address, ''), i.address), "
        "  exit_code = CASE WHEN u.ended THEN u.code ELSE i.exit_code END, "
        "  reason = CASE WHEN u.ended THEN coalesce(nullif(u.reason, ''), i.reason) "
        "                ELSE i.reason END, "
        "  started_at = CASE WHEN u.next = 'running' THEN coalesce(i.started_at, now()) "
        "                    ELSE i.started_at END, "
        "  finished_at = CASE WHEN u.ended THEN coalesce(i.finished_at, now()) "
        "                     ELSE i.finished_at END, "
        "  output = CASE WHEN u.ended AND u.digest <> '' THEN jsonb_build_object('digest', "
        "    u.digest, 'diff_id', u.diff_id, 'size', u.size) ELSE i.output END, "
        "  updated_at = now() "
        "FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], "
        "  $6::boolean[], $7::integer[], $8::text[], $9::text[], $10::text[], $11::bigint[]) "
        "  AS u(id, next, seq, desired, address, ended, code, reason, digest, diff_id, size) "
        "WHERE i.id = u.id",
        is->id.buf, is->next.buf, is->seq.buf, is->desired.buf, is->address.buf, is->ended.buf,
        is->code.buf, is->reason.buf, is->digest.buf, is->diff_id.buf, is->size.buf);
    return upd ? 0 : -1;
}

/* Applies the reports of one round (no instance twice) in the open
 * transaction: which ones is round[0..n). */
static int apply_round(struct loom_db *db, int64_t backoff_ms, Loom__V1__InstanceReport **ms,
                       bool trusted, const size_t *round, size_t n, struct report_result *res,
                       struct report_effect *fx, struct loom_err *err)
{
    struct strbuf ids = STRBUF_INIT;
    for (size_t k = 0; k < n; k++)
        sched_pg_array_add(&ids, ms[round[k]]->instance_id);
    sched_pg_array_end(&ids);
    /* locked in id order: replicas applying overlapping batches do not
     * deadlock */
    _cleanup_pgres_ PGresult *cur = loom_db_query(
        db, err,
        "SELECT i.id, i.state, i.report_seq, i.kind, i.job_run_id, i.array_index, i.node_name, "
        "  coalesce(p.name, ''), a.name, i.desired, i.gang, coalesce(i.runtime, ''), "
        "  i.claimed_at IS NULL "
        "FROM instances i LEFT JOIN projects p ON p.id = i.project_id "
        "LEFT JOIN apps a ON a.id = i.app_id WHERE i.id = ANY($1::uuid[]) "
        "ORDER BY i.id FOR UPDATE OF i",
        ids.buf);
    strbuf_release(&ids);
    if (!cur)
        return -1;
    struct inst_set is = {0};
    struct settle_set ss = {0};
    /* gang members settle one by one, after every row of the round is written */
    size_t *gangs = calloc(n + 1, sizeof(size_t)), ngangs = 0;
    int *rows = calloc(n + 1, sizeof(int));
    char(*codes)[16] = calloc(n + 1, sizeof(*codes));
    const char **reasons = calloc(n + 1, sizeof(char *));
    char **made = calloc(n + 1, sizeof(char *)); /* reasons made here, freed at the end */
    if (!gangs || !rows || !codes || !reasons || !made)
        abort();
    int rc = 0;
    for (size_t k = 0; k < n; k++) {
        const Loom__V1__InstanceReport *m = ms[round[k]];
        struct report_result *out = &res[round[k]];
        int r = rows[k] = row_of(cur, m->instance_id);
        if (r < 0)
            continue; /* deleted with its app or run: nothing to record, do not ask again */
        /* only the node an instance was placed on speaks for it (an empty
         * node is the scheduler's own word, never a message's) */
        if ((m->node[0] || !trusted) && strcmp(m->node, PQgetvalue(cur, r, COL_NODE)) != 0) {
            out->code = LOOM_EINVAL;
            snprintf(out->msg, sizeof(out->msg), "instance %s is not on node \"%s\"",
                     m->instance_id, m->node);
            rows[k] = -1;
            continue;
        }
        const char *state = PQgetvalue(cur, r, COL_STATE);
        if (m->seq <= strtoull(PQgetvalue(cur, r, COL_SEQ), NULL, 10)) {
            rows[k] = -1; /* a resend of something already applied */
            continue;
        }
        const char *reported = state_name(m->state);
        bool job = strcmp(PQgetvalue(cur, r, COL_KIND), "job") == 0;
        const char *desired = PQgetvalue(cur, r, COL_DESIRED);
        const char *next = reported;
        bool terminal_now = is_terminal(reported);
        if (is_terminal(state))
            next = state; /* finished is final; only the seq moves */
        else if (strcmp(state, "lost") == 0 && !terminal_now) {
            next = "lost"; /* replaced already: it must go */
            desired = "stop";
        }
        bool ended = terminal_now && !is_terminal(state);
        const char *reason = m->reason;
        if (ended && !reason[0] && m->oom_killed)
            reason = "out of memory (OOM killed)";
        else if (ended && !reason[0] && m->timed_out)
            reason = "timed out (max execution time reached)";
        else if (ended && m->oom_killed && !strstr(reason, "memory")) {
            if (asprintf(&made[k], "%s (OOM killed)", reason) < 0)
                abort();
            reason = made[k];
        }
        reasons[k] = reason;
        char seq[32], size[32];
        snprintf(seq, sizeof(seq), "%llu", (unsigned long long)m->seq);
        snprintf(size, sizeof(size), "%lld", (long long)m->output_size);
        snprintf(codes[k], sizeof(codes[k]), "%d", m->exit_code);
        sched_pg_array_add(&is.id, m->instance_id);
        sched_pg_array_add(&is.next, next);
        sched_pg_array_add(&is.seq, seq);
        sched_pg_array_add(&is.desired, desired);
        sched_pg_array_add(&is.address, m->address);
        sched_pg_array_add(&is.ended, ended ? "t" : "f");
        sched_pg_array_add(&is.code, codes[k]);
        sched_pg_array_add(&is.reason, reason);
        sched_pg_array_add(&is.digest, m->output_digest);
        sched_pg_array_add(&is.diff_id, m->output_diff_id);
        sched_pg_array_add(&is.size, size);
        is.n++;
        if (job && ended && !PQgetisnull(cur, r, COL_GANG))
            gangs[ngangs++] = k;
        else if (job && ended)
            settle_add(&ss, PQgetvalue(cur, r, COL_RUN), PQgetvalue(cur, r, COL_INDEX),
                       m->instance_id, reported, m->permanent, codes[k], reason);
        fx->freed |= ended;
        if (strcmp(PQgetvalue(cur, r, COL_KIND), "app") == 0 && strcmp(next, state) != 0 &&
            (ended || strcmp(next, "running") == 0 || strcmp(state, "running") == 0))
            strbuf_addf(&fx->apps, "%s\n%s\n", PQgetvalue(cur, r, COL_PROJECT),
                        PQgetvalue(cur, r, COL_APP));
        if (strcmp(PQgetvalue(cur, r, COL_KIND), "function") == 0 &&
            *PQgetvalue(cur, r, COL_UNCLAIMED) == 't' && strcmp(next, "running") == 0 &&
            strcmp(state, "running") != 0 && strcmp(desired, "run") == 0)
            strbuf_addf(&fx->stems, "%s\n", PQgetvalue(cur, r, COL_RUNTIME));
    }
    if (inst_apply(db, &is, err) < 0 || settle_apply(db, backoff_ms, &ss, err) < 0)
        rc = -1;
    for (size_t g = 0; rc == 0 && g < ngangs; g++) {
        size_t k = gangs[g];
        const Loom__V1__InstanceReport *m = ms[round[k]];
        if (settle_gang(db, backoff_ms, cur, rows[k], m, state_name(m->state), codes[k], reasons[k],
                        err) < 0)
            rc = -1;
    }
    inst_release(&is);
    settle_release(&ss);
    free(gangs);
    free(rows);
    free(codes);
    free(reasons);
    for (size_t k = 0; k < n; k++)
        free(made[k]);
    free(made);
    return rc;
}

/* A batch's reports in instance id order, then in their place in the batch:
 * the k-th report of an instance goes in round k. */
struct placed {
    const char *id;
    size_t pos;
};

static int by_id_then_place(const void *x, const void *y)
{
    const struct placed *a = x, *b = y;
    int c = strcasecmp(a->id, b->id);
    if (c)
        return c;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

/* Applies ms[0..n) in one transaction; res[i] says what became of each. A
 * failure of the transaction (-1) leaves nothing applied. trusted: the
 * scheduler's own reports (they name no node). */
static int apply_reports(struct loom_db *db, int64_t backoff_ms, Loom__V1__InstanceReport **ms,
                         size_t n, bool trusted, struct report_result *res,
                         struct report_effect *fx, struct loom_err *err)
{
    struct placed *order = calloc(n + 1, sizeof(*order));
    size_t *round = calloc(n + 1, sizeof(size_t)), *occ = calloc(n + 1, sizeof(size_t));
    if (!order || !round || !occ)
        abort();
    size_t valid = 0, rounds = 0;
    for (size_t i = 0; i < n; i++) {
        struct loom_err e = LOOM_ERR_INIT;
        res[i].code = 0;
        res[i].msg[0] = 0;
        if (report_check(ms[i], &e) < 0) {
            res[i].code = e.code;
            snprintf(res[i].msg, sizeof(res[i].msg), "%s", e.msg);
        } else {
            order[valid++] = (struct placed){ms[i]->instance_id, i};
        }
    }
    qsort(order, valid, sizeof(*order), by_id_then_place);
    for (size_t k = 0; k < valid; k++) {
        bool same = k > 0 && strcasecmp(order[k].id, order[k - 1].id) == 0;
        occ[k] = same ? occ[k - 1] + 1 : 0;
        if (occ[k] + 1 > rounds)
            rounds = occ[k] + 1;
    }
    int rc = valid ? loom_db_begin(db, err) : 0;
    for (size_t r = 0; rc == 0 && r < rounds; r++) {
        size_t nr = 0;
        for (size_t k = 0; k < valid; k++)
            if (occ[k] == r)
                round[nr++] = order[k].pos;
        if (apply_round(db, backoff_ms, ms, trusted, round, nr, res, fx, err) < 0)
            rc = -1;
    }
    if (valid && rc == 0)
        rc = loom_db_commit(db, err);
    else if (valid)
        loom_db_rollback(db);
    free(order);
    free(round);
    free(occ);
    return rc;
}

static void effect_release(struct report_effect *fx)
{
    strbuf_release(&fx->apps);
    strbuf_release(&fx->stems);
}

/* The effects of applied reports: the leader woken for freed capacity, a
 * change notice per app, and a notice per stem cell that came free. */
static void report_effects(struct sched *s, struct report_effect *fx)
{
    if (fx->freed)
        sched_wake_leader(s);
    /* the activators' calls waiting for a stem cell look now, not at their
     * next try */
    for (char *p = fx->stems.buf, *nl; p && (nl = strchr(p, '\n')); p = nl + 1) {
        *nl = 0;
        char subj[128];
        snprintf(subj, sizeof(subj), LOOM_SUBJ_STEM_READY_PREFIX "%s", p);
        loom_bus_publish_raw(s->svc->bus, subj, "", 0, NULL);
    }
    char *p = fx->apps.buf;
    while (p && *p) {
        char *project = p, *app = strchr(p, '\n');
        if (!app)
            break;
        *app++ = 0;
        char *end = strchr(app, '\n');
        if (!end)
            break;
        *end = 0;
        p = end + 1;
        char subj[300];
        snprintf(subj, sizeof(subj), LOOM_SUBJ_APP_CHANGED_FMT, project, app);
        loom_bus_publish_raw(s->svc->bus, subj, "", 0, NULL);
    }
    effect_release(fx);
}

/* Applies ms with up to three tries of a transaction that conflicted. */
static int apply_with_retries(struct sched *s, struct loom_db *db, Loom__V1__InstanceReport **ms,
                              size_t n, struct report_result *res, struct report_effect *fx,
                              struct loom_err *err)
{
    int r = -1;
    for (int attempt = 0; db && attempt < 3; attempt++) {
        loom_err_clear(err);
        effect_release(fx);
        fx->freed = false;
        r = apply_reports(db, s->retry_backoff_ms, ms, n, false, res, fx, err);
        if (r == 0 || err->code != LOOM_ERETRY)
            break;
    }
    return r;
}

static void on_report(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceReport *m = (Loom__V1__InstanceReport *)loom_bus_unpack(
        msg, &loom__v1__instance_report__descriptor, &err);
    if (!m) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    struct report_effect fx = {0};
    struct report_result res = {0};
    struct loom_db *db = loom_service_thread_db(&err);
    if (apply_with_retries(s, db, &m, 1, &res, &fx, &err) < 0) {
        log_warn("could not record report of instance %s: %s", m->instance_id, err.msg);
        loom_bus_ack(bus, msg, err.msg, false);
    } else if (res.code) {
        loom_bus_ack(bus, msg, res.msg, false);
    } else {
        loom_bus_ack(bus, msg, NULL, false);
        loom_metric_add(s->m_reports, 1);
        report_effects(s, &fx);
    }
    effect_release(&fx);
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* Many reports at once (an agent's outbox heads, a simulator's queue): one
 * transaction, an Ack each in the answer, in their order. */
static void on_reports(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceReports *b = (Loom__V1__InstanceReports *)loom_bus_unpack(
        msg, &loom__v1__instance_reports__descriptor, &err);
    if (!b || b->n_reports == 0 || b->n_reports > SCHED_REPORTS_MAX) {
        if (b)
            loom_err_set(&err, LOOM_EINVAL, "a batch holds 1 to %d reports, not %zu",
                         SCHED_REPORTS_MAX, b->n_reports);
        loom_bus_ack(bus, msg, err.msg, false);
        if (b)
            protobuf_c_message_free_unpacked(&b->base, NULL);
        return;
    }
    size_t n = b->n_reports;
    struct report_effect fx = {0};
    struct report_result *res = calloc(n, sizeof(*res));
    Loom__V1__Ack *acks = calloc(n, sizeof(*acks));
    Loom__V1__Ack **ackp = calloc(n, sizeof(*ackp));
    if (!res || !acks || !ackp)
        abort();
    struct loom_db *db = loom_service_thread_db(&err);
    int r = apply_with_retries(s, db, b->reports, n, res, &fx, &err);
    if (r < 0 && n > 1 && err.code != LOOM_ERETRY) {
        /* one report PostgreSQL refuses (text it cannot store) must not
         * hold the others back on every resend: each alone, in order */
        log_warn("could not record %zu reports at once (%s): one by one", n, err.msg);
        effect_release(&fx);
        fx.freed = false;
        for (size_t i = 0; i < n; i++) {
            struct report_effect one = {0};
            struct loom_err e1 = LOOM_ERR_INIT;
            if (apply_with_retries(s, db, &b->reports[i], 1, &res[i], &one, &e1) < 0) {
                res[i].code = e1.code ? e1.code : LOOM_EINTERNAL;
                snprintf(res[i].msg, sizeof(res[i].msg), "%s", e1.msg);
            } else {
                report_effects(s, &one);
            }
            effect_release(&one);
        }
        r = 0;
    } else if (r < 0) {
        log_warn("could not record %zu reports: %s", n, err.msg);
    }
    size_t applied = 0;
    for (size_t i = 0; i < n; i++) {
        loom__v1__ack__init(&acks[i]);
        const char *why = r < 0 ? err.msg : res[i].code ? res[i].msg : NULL;
        acks[i].ok = !why;
        acks[i].error = (char *)(why ? why : "");
        ackp[i] = &acks[i];
        applied += !why;
    }
    Loom__V1__Acks out = LOOM__V1__ACKS__INIT;
    out.n_acks = n;
    out.acks = ackp;
    struct loom_err rerr = LOOM_ERR_INIT;
    if (loom_bus_respond(bus, msg, &out.base, &rerr) < 0)
        log_debug("could not answer %zu reports: %s", n, rerr.msg);
    loom_metric_add(s->m_reports, (int64_t)applied);
    if (r == 0)
        report_effects(s, &fx);
    effect_release(&fx);
    free(res);
    free(acks);
    free(ackp);
    protobuf_c_message_free_unpacked(&b->base, NULL);
}

void sched_wake_leader(struct sched *s)
{
    atomic_store(&s->capacity_freed, true);
    if (sched_lease_current(s, NULL))
        loom_service_wake(s->svc);
    else
        loom_bus_publish_raw(s->svc->bus, LOOM_SUBJ_SCHED_WAKE, "", 0, NULL);
}

int sched_reports_subscribe(struct sched *s, struct loom_err *err)
{
    if (loom_bus_subscribe(s->svc->bus, LOOM_SUBJ_INSTANCE_REPORT, LOOM_QUEUE_SCHEDULER, on_report,
                           s, err) < 0)
        return -1;
    return loom_bus_subscribe(s->svc->bus, LOOM_SUBJ_INSTANCE_REPORTS, LOOM_QUEUE_SCHEDULER,
                              on_reports, s, err);
}

int sched_fail_instance(struct sched *s, struct loom_db *db, const char *instance_id,
                        const char *reason, struct loom_err *err)
{
    Loom__V1__InstanceReport m;
    loom__v1__instance_report__init(&m);
    m.instance_id = (char *)instance_id;
    m.state = LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_FAILED;
    m.permanent = true;
    m.exit_code = -1;
    m.reason = (char *)reason;
    /* above any seq an agent will send: this end is final */
    m.seq = (uint64_t)1 << 62;
    Loom__V1__InstanceReport *mp = &m;
    struct report_effect fx = {0};
    struct report_result res = {0};
    if (apply_reports(db, s->retry_backoff_ms, &mp, 1, true, &res, &fx, err) < 0) {
        effect_release(&fx);
        return -1;
    }
    if (res.code) {
        effect_release(&fx);
        return loom_err_set(err, res.code, "%s", res.msg);
    }
    report_effects(s, &fx);
    return 0;
}
