/* Instance reports (any replica): one transaction per report writes the
 * instance's state and, for a job instance that ended, its index and run
 * bookkeeping; the Ack goes out only after COMMIT, so an agent that gets no
 * Ack resends and nothing is lost. A report is applied once: only a seq
 * above the stored report_seq changes anything. */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "loom/v1/instance.pb-c.h"
#include "spec.h"
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

struct report_effect {
    bool freed;       /* capacity came free or an index went back to pending */
    bool app_changed; /* the app's set of ready instances changed */
    bool stem_ready;  /* a free stem cell of runtime is running now */
    char runtime[64];
    char project[128];
    char app[128];
};

/* The index and run bookkeeping for a job instance that ended. Only the
 * instance that holds the index (instance_id, state running) settles it, so
 * a late report of an instance declared lost changes nothing. */
int sched_run_finish_if_settled(struct loom_db *db, const char *run_id, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *done = loom_db_query(
        db, err,
        "UPDATE job_runs SET state = CASE WHEN n_failed = 0 THEN 'completed' ELSE 'failed' END, "
        "  finished_at = now(), updated_at = now(), waiting_reason = NULL "
        "WHERE id = $1::bigint AND state IN ('pending', 'running') "
        "  AND n_succeeded + n_failed >= array_size",
        run_id);
    return done ? 0 : -1;
}

static int settle_index(struct loom_db *db, int64_t backoff_ms, const char *run_id, const char *idx,
                        const char *instance_id, const char *state, bool permanent,
                        const char *exit_code, const char *reason, struct loom_err *err)
{
    /* outcome: succeeded; retry (failed, a retry is allowed if any are left);
     * requeue (stopped while the run is active: the index did not fail) */
    const char *outcome = strcmp(state, "succeeded") == 0 ? "succeeded"
                          : strcmp(state, "stopped") == 0 ? "requeue"
                          : permanent                     ? "failed"
                                                          : "retry";
    /* A daemon run retries without limit (Code Engine: restarted forever;
     * exit 0 ends the index). A retry waits backoff_ms * 2^retries (at most
     * SCHED_BACKOFF_MAX_MS) in retry_at before it is pending again; a requeue
     * (the work did not fail) is pending at once. */
    char backoff[32];
    snprintf(backoff, sizeof(backoff), "%lld", (long long)backoff_ms);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "WITH ji AS ("
        "  UPDATE job_run_indices j SET "
        "    state = CASE WHEN $4 = 'succeeded' THEN 'succeeded' "
        "                 WHEN r.state IN ('pending', 'running') AND "
        "                   ($4 = 'requeue' OR ($4 = 'retry' AND (j.retries < r.retry_limit "
        "                     OR r.spec->>'run_mode' = 'daemon'))) "
        "                 THEN 'pending' ELSE 'failed' END, "
        "    retries = CASE WHEN $4 = 'retry' AND r.state IN ('pending', 'running') "
        "                     AND (j.retries < r.retry_limit OR r.spec->>'run_mode' = 'daemon') "
        "                   THEN j.retries + 1 ELSE j.retries END, "
        "    retry_at = CASE WHEN $4 = 'retry' AND $7::bigint > 0 THEN now() + "
        "      make_interval(secs => least($7::bigint * power(2, least(j.retries, 20)), "
        "        " SCHED_BACKOFF_MAX_MS_STR ") / 1000.0) ELSE NULL END, "
        "    finished_at = now(), exit_code = $5::integer, reason = nullif($6, '') "
        "  FROM job_runs r "
        "  WHERE r.id = j.run_id AND j.run_id = $1::bigint AND j.idx = $2::integer "
        "    AND j.instance_id = $3::uuid AND j.state = 'running' "
        "  RETURNING j.state, j.retry_at) "
        "UPDATE job_runs SET n_running = n_running - 1, "
        "  n_succeeded = n_succeeded + (SELECT count(*) FROM ji WHERE state = 'succeeded'), "
        "  n_failed = n_failed + (SELECT count(*) FROM ji WHERE state = 'failed'), "
        "  pending = CASE WHEN (SELECT state = 'pending' AND retry_at IS NULL FROM ji) "
        "    THEN pending + int4multirange(int4range($2::integer, $2::integer + 1)) "
        "    ELSE pending END, "
        "  updated_at = now() "
        "WHERE id = $1::bigint AND EXISTS (SELECT 1 FROM ji) RETURNING id",
        run_id, idx, instance_id, outcome, exit_code, reason, backoff);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return 0;
    return sched_run_finish_if_settled(db, run_id, err);
}

/* The index bookkeeping for a job instance that ended (row 0 of cur is the
 * instance, see apply_report). A gang member (cur's gang set) settles its
 * index for the whole gang: the last member to succeed settles it succeeded;
 * the first to fail or stop settles it (one retry for the gang) and the
 * other members are to stop, so that the gang restarts as a whole. */
static int settle_job(struct loom_db *db, int64_t backoff_ms, PGresult *cur,
                      const Loom__V1__InstanceReport *m, const char *reported, const char *code,
                      const char *reason, struct loom_err *err)
{
    const char *run_id = PQgetvalue(cur, 0, 3), *idx = PQgetvalue(cur, 0, 4);
    const char *gang = loom_db_val(cur, 0, 9);
    if (!gang)
        return settle_index(db, backoff_ms, run_id, idx, m->instance_id, reported, m->permanent,
                            code, reason, err);
    /* members of one gang report in their own transactions: the index row's
     * lock orders them, and each statement after it sees the others' */
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
    return settle_index(db, backoff_ms, run_id, idx, gang, reported, m->permanent, code, reason,
                        err);
}

/* Applies m; on success fills *fx. A refusal of the input is LOOM_EINVAL. */
static int apply_report(struct loom_db *db, int64_t backoff_ms, const Loom__V1__InstanceReport *m,
                        struct report_effect *fx, struct loom_err *err)
{
    const char *reported = state_name(m->state);
    if (!reported)
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

    _cleanup_pgres_ PGresult *cur = NULL, *upd = NULL;
    if (loom_db_begin(db, err) < 0)
        return -1;
    cur = loom_db_query(
        db, err,
        "SELECT i.state, i.report_seq, i.kind, i.job_run_id, i.array_index, i.node_name, "
        "  coalesce(p.name, ''), a.name, i.desired, i.gang, coalesce(i.runtime, ''), "
        "  i.claimed_at IS NULL "
        "FROM instances i LEFT JOIN projects p ON p.id = i.project_id "
        "LEFT JOIN apps a ON a.id = i.app_id WHERE i.id = $1::uuid FOR UPDATE OF i",
        m->instance_id);
    if (!cur)
        goto fail;
    if (PQntuples(cur) == 0) {
        /* deleted with its app or run: nothing to record, do not ask again */
        loom_db_rollback(db);
        return 0;
    }
    if (m->node[0] && strcmp(m->node, PQgetvalue(cur, 0, 5)) != 0) {
        loom_db_rollback(db);
        return loom_err_set(err, LOOM_EINVAL, "instance %s is not on node \"%s\"", m->instance_id,
                            m->node);
    }
    const char *state = PQgetvalue(cur, 0, 0);
    unsigned long long seen = strtoull(PQgetvalue(cur, 0, 1), NULL, 10);
    if (m->seq <= seen) {
        loom_db_rollback(db);
        return 0; /* a resend of something already applied */
    }
    bool job = strcmp(PQgetvalue(cur, 0, 2), "job") == 0;
    const char *desired = PQgetvalue(cur, 0, 8);
    const char *next = reported;
    bool terminal_now = is_terminal(reported);
    if (is_terminal(state))
        next = state; /* finished is final; only the seq moves */
    else if (strcmp(state, "lost") == 0 && !terminal_now) {
        next = "lost"; /* replaced already: it must go */
        desired = "stop";
    }
    bool ended = terminal_now && !is_terminal(state);

    char reason_buf[4200];
    const char *reason = m->reason;
    if (ended && !reason[0] && m->oom_killed)
        reason = "out of memory (OOM killed)";
    else if (ended && !reason[0] && m->timed_out)
        reason = "timed out (max execution time reached)";
    else if (ended && m->oom_killed && !strstr(reason, "memory")) {
        snprintf(reason_buf, sizeof(reason_buf), "%s (OOM killed)", reason);
        reason = reason_buf;
    }
    char seq[32], code[32], size[32];
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)m->seq);
    snprintf(size, sizeof(size), "%lld", (long long)m->output_size);
    snprintf(code, sizeof(code), "%d", m->exit_code);
    upd = loom_db_query(
        db, err,
        "UPDATE instances SET state = $2, report_seq = $3::bigint, acked = true, desired = $4, "
        "  address = coalesce(nullif($5, ''), address), "
        "  exit_code = CASE WHEN $6::boolean THEN $7::integer ELSE exit_code END, "
        "  reason = CASE WHEN $6::boolean THEN coalesce(nullif($8, ''), reason) "
        "                ELSE reason END, "
        "  started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now()) "
        "                    ELSE started_at END, "
        "  finished_at = CASE WHEN $6::boolean THEN coalesce(finished_at, now()) "
        "                     ELSE finished_at END, "
        "  output = CASE WHEN $6::boolean AND $9::text <> '' THEN jsonb_build_object('digest', "
        "$9::text, "
        "    'diff_id', $10::text, 'size', $11::bigint) ELSE output END, "
        "  updated_at = now() "
        "WHERE id = $1::uuid",
        m->instance_id, next, seq, desired, m->address, ended ? "true" : "false", code, reason,
        m->output_digest, m->output_diff_id, size);
    if (!upd)
        goto fail;
    if (job && ended && settle_job(db, backoff_ms, cur, m, reported, code, reason, err) < 0)
        goto fail;
    if (loom_db_commit(db, err) < 0)
        return -1;

    fx->freed = ended;
    fx->app_changed = strcmp(PQgetvalue(cur, 0, 2), "app") == 0 && strcmp(next, state) != 0 &&
                      (ended || strcmp(next, "running") == 0 || strcmp(state, "running") == 0);
    fx->stem_ready = strcmp(PQgetvalue(cur, 0, 2), "function") == 0 &&
                     *PQgetvalue(cur, 0, 11) == 't' && strcmp(next, "running") == 0 &&
                     strcmp(state, "running") != 0 && strcmp(desired, "run") == 0;
    snprintf(fx->runtime, sizeof(fx->runtime), "%s", PQgetvalue(cur, 0, 10));
    snprintf(fx->project, sizeof(fx->project), "%s", PQgetvalue(cur, 0, 6));
    snprintf(fx->app, sizeof(fx->app), "%s", PQgetvalue(cur, 0, 7));
    return 0;
fail:
    loom_db_rollback(db);
    return -1;
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
    struct loom_db *db = loom_service_thread_db(&err);
    int r = -1;
    for (int attempt = 0; db && attempt < 3; attempt++) {
        r = apply_report(db, s->retry_backoff_ms, m, &fx, &err);
        if (r == 0 || err.code != LOOM_ERETRY)
            break;
    }
    if (r < 0) {
        if (err.code != LOOM_EINVAL)
            log_warn("could not record report of instance %s: %s", m->instance_id, err.msg);
        loom_bus_ack(bus, msg, err.msg, false);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        return;
    }
    loom_bus_ack(bus, msg, NULL, false);
    loom_metric_add(s->m_reports, 1);
    if (fx.freed)
        sched_wake_leader(s);
    if (fx.stem_ready) {
        /* the activators' calls waiting for one look now, not at their next try */
        char subj[128];
        snprintf(subj, sizeof(subj), LOOM_SUBJ_STEM_READY_PREFIX "%s", fx.runtime);
        loom_bus_publish_raw(bus, subj, "", 0, NULL);
    }
    if (fx.app_changed) {
        char subj[300];
        snprintf(subj, sizeof(subj), LOOM_SUBJ_APP_CHANGED_FMT, fx.project, fx.app);
        loom_bus_publish_raw(bus, subj, "", 0, NULL);
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
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
    return loom_bus_subscribe(s->svc->bus, LOOM_SUBJ_INSTANCE_REPORT, LOOM_QUEUE_SCHEDULER,
                              on_report, s, err);
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
    struct report_effect fx = {0};
    if (apply_report(db, s->retry_backoff_ms, &m, &fx, err) < 0)
        return -1;
    if (fx.freed)
        sched_wake_leader(s);
    if (fx.app_changed) {
        char subj[300];
        snprintf(subj, sizeof(subj), LOOM_SUBJ_APP_CHANGED_FMT, fx.project, fx.app);
        loom_bus_publish_raw(s->svc->bus, subj, "", 0, NULL);
    }
    return 0;
}
