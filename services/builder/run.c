/* The builder's workers: claiming runs, holding them with a heartbeat,
 * taking back those whose builder went silent, recording steps and logs,
 * and ending runs. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "secretbox.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

struct builder builder;

/* ---- records ------------------------------------------------------------------------ */

void brun_log(struct brun *r, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    char seq[16];
    snprintf(seq, sizeof(seq), "%d", ++r->log_seq);
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        r->db, &err, "INSERT INTO build_run_logs (build_run_id, seq, line) VALUES ($1, $2, $3)",
        r->id, seq, line);
    if (!res)
        log_warn("build run %s: could not log \"%s\": %s", r->name, line, err.msg);
}

static void save_steps(struct brun *r)
{
    _cleanup_free_ char *text = loom_json_dumps(r->steps);
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *res =
        loom_db_query(r->db, &err,
                      "UPDATE build_runs SET steps = $2::jsonb, updated_at = now() WHERE id = $1 "
                      "AND builder = $3",
                      r->id, text, r->b->holder);
    if (!res)
        log_warn("build run %s: could not record its steps: %s", r->name, err.msg);
}

static char *now_text(void)
{
    char buf[40];
    int64_t ms = loom_now_ms();
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof(buf) - n, ".%03dZ", (int)(ms % 1000));
    return strdup(buf);
}

void brun_step(struct brun *r, const char *name, const char *detail)
{
    _cleanup_free_ char *at = now_text();
    json_array_append_new(r->steps,
                          json_pack("{s:s,s:s,s:s,s:s,s:I}", "name", name, "status", "running",
                                    "started_at", at, "detail", detail ? detail : "", "started_ms",
                                    (json_int_t)loom_mono_ms()));
    brun_log(r, "step %s%s%s", name, detail && *detail ? ": " : "", detail ? detail : "");
    save_steps(r);
}

void brun_step_end(struct brun *r, const char *status, const char *fmt, ...)
{
    json_t *s = json_array_get(r->steps, json_array_size(r->steps) - 1);
    if (!s)
        return;
    char detail[1024] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
    }
    int64_t started = json_integer_value(json_object_get(s, "started_ms"));
    json_object_del(s, "started_ms");
    json_object_set_new(s, "status", json_string(status));
    json_object_set_new(s, "duration_ms", json_integer(loom_mono_ms() - started));
    if (fmt)
        json_object_set_new(s, "detail", json_string(detail));
    brun_log(r, "step %s %s (%lld ms)%s%s", json_string_value(json_object_get(s, "name")), status,
             (long long)(loom_mono_ms() - started), fmt ? ": " : "", detail);
    save_steps(r);
}

int brun_check(struct brun *r, struct loom_err *err)
{
    pthread_mutex_lock(&r->b->mu);
    bool stopping = r->b->stopping;
    pthread_mutex_unlock(&r->b->mu);
    if (stopping) {
        r->stop = STOP_BUILDER;
        return loom_err_set(err, LOOM_EUNAVAIL, "the builder is stopping");
    }
    if (loom_now_ms() > r->deadline_ms)
        return loom_err_set(err, LOOM_ETIMEOUT,
                            "timed out: the build took longer than its timeout (%lld s)",
                            (long long)r->spec.build_timeout);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        r->db, err, "SELECT cancel_requested, builder = $2 FROM build_runs WHERE id = $1", r->id,
        r->b->holder);
    if (!res)
        return -1;
    if (PQntuples(res) == 0 || *PQgetvalue(res, 0, 1) != 't') {
        r->stop = STOP_LOST;
        return loom_err_set(err, LOOM_ECONFLICT, "the run is no longer held by this builder");
    }
    if (*PQgetvalue(res, 0, 0) == 't') {
        r->stop = STOP_CANCEL;
        return loom_err_set(err, LOOM_ECONFLICT, "cancelled");
    }
    return 0;
}

/* ---- a run ------------------------------------------------------------------------- */

/* The tail of the steps' output and the last step's name: a failure's
 * context, in the run's reason. */
static void finish(struct brun *r, const char *state, const char *reason, const char *digest)
{
    /* a step that was running when the run ended ended with it */
    json_t *last = json_array_get(r->steps, json_array_size(r->steps) - 1);
    if (last && strcmp(json_string_value(json_object_get(last, "status")), "running") == 0)
        brun_step_end(r, strcmp(state, "cancelled") == 0 ? "cancelled" : "failed", NULL);
    struct loom_err err = LOOM_ERR_INIT;
    if (strcmp(state, "succeeded") != 0 && steps_cancel(r->db, r->id, &err) < 0)
        log_warn("build run %s: could not stop its steps: %s", r->name, err.msg);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        r->db, &err,
        "UPDATE build_runs SET state = $2, reason = nullif($3, ''), output_digest = $4, "
        "  finished_at = now(), updated_at = now(), builder = NULL, heartbeat_at = NULL "
        "WHERE id = $1 AND builder = $5",
        r->id, state, reason ? reason : "", digest, r->b->holder);
    if (!res)
        log_warn("build run %s: could not record its end (%s): %s", r->name, state, err.msg);
    brun_log(r, "build run %s%s%s", state, reason && *reason ? ": " : "", reason ? reason : "");
    log_info("build run %s/%s %s%s%s", r->project, r->name, state, reason ? ": " : "",
             reason ? reason : "");
}

/* Gives a run back to pending (the builder is stopping): another takes it
 * from the start, without spending an attempt. */
static void release(struct brun *r)
{
    struct loom_err err = LOOM_ERR_INIT;
    if (steps_cancel(r->db, r->id, &err) < 0)
        log_warn("build run %s: could not stop its steps: %s", r->name, err.msg);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        r->db, &err,
        "UPDATE build_runs SET state = 'pending', attempts = attempts - 1, builder = NULL, "
        "  heartbeat_at = NULL, steps = '[]', updated_at = now() WHERE id = $1 AND builder = $2",
        r->id, r->b->holder);
    if (!res)
        log_warn("build run %s: could not give it back: %s", r->name, err.msg);
    brun_log(r, "the builder stopped: the run goes back to pending");
}

static void execute(struct brun *r)
{
    struct loom_err err = LOOM_ERR_INIT;
    char source[4200];
    int64_t t0 = loom_mono_ms();
    int rc = loom_mkdir_p(r->dir, 0700, &err);
    if (rc == 0) {
        _cleanup_free_ char *cache = NULL;
        if (asprintf(&cache, "%s/loom-cache", r->project) < 0)
            abort();
        snprintf(r->cache_repo, sizeof(r->cache_repo), "%s", cache);
        rc = reg_client(cache, &r->cache, &err);
    }
    if (rc == 0)
        rc = source_fetch(r, source, &err);
    if (rc == 0) {
        rc = r->spec.output_type == LOOM_OUTPUT_BUNDLE           ? bundle_run(r, source, &err)
             : r->spec.strategy_type == LOOM_STRATEGY_BUILDPACKS ? buildpacks_run(r, source, &err)
                                                                 : dockerfile_run(r, source, &err);
    }
    if (rc == 0) {
        /* repo@digest for an image, the digest alone for a bundle */
        const char *at = strchr(r->output_ref, '@');
        finish(r, "succeeded", NULL, at ? at + 1 : r->output_ref);
        loom_metric_add(r->b->m_succeeded, 1);
        loom_metric_observe(r->b->m_seconds, (double)(loom_mono_ms() - t0) / 1000.0);
    } else if (r->stop == STOP_BUILDER) {
        release(r);
    } else if (r->stop == STOP_CANCEL) {
        finish(r, "cancelled", "cancelled", NULL);
    } else if (r->stop == STOP_LOST) {
        log_warn("build run %s/%s: %s", r->project, r->name, err.msg);
    } else {
        finish(r, "failed", err.msg, NULL);
        loom_metric_add(r->b->m_failed, 1);
    }
    loom_rm_rf(r->dir, NULL);
}

enum { C_ID, C_PROJECT_ID, C_PROJECT, C_NAME, C_SPEC, C_ATTEMPTS, C_DEADLINE, C_CANCEL, C_LOGSEQ };

/* Claims the oldest pending run; 0 when there was none. */
static int claim(struct builder *b, struct loom_db *db, struct brun *r, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "UPDATE build_runs b SET state = 'running', builder = $1, heartbeat_at = now(), "
        "  attempts = b.attempts + 1, started_at = coalesce(b.started_at, now()), steps = '[]', "
        "  updated_at = now() "
        "FROM (SELECT id FROM build_runs WHERE state = 'pending' ORDER BY id "
        "  FOR UPDATE SKIP LOCKED LIMIT 1) c WHERE b.id = c.id "
        "RETURNING b.id, b.project_id, (SELECT name FROM projects p WHERE p.id = b.project_id), "
        "  b.name, b.spec::text, b.attempts, "
        "  (extract(epoch FROM b.started_at) * 1000)::bigint + (b.spec->>'timeout')::bigint * "
        "  1000, b.cancel_requested, "
        "  (SELECT coalesce(max(seq), 0) FROM build_run_logs l WHERE l.build_run_id = b.id)",
        b->holder);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return 0;
    *r = (struct brun){.b = b, .db = db, .steps = json_array()};
    snprintf(r->id, sizeof(r->id), "%s", PQgetvalue(res, 0, C_ID));
    snprintf(r->project_id, sizeof(r->project_id), "%s", PQgetvalue(res, 0, C_PROJECT_ID));
    snprintf(r->project, sizeof(r->project), "%s", PQgetvalue(res, 0, C_PROJECT));
    snprintf(r->name, sizeof(r->name), "%s", PQgetvalue(res, 0, C_NAME));
    r->attempt = atoi(PQgetvalue(res, 0, C_ATTEMPTS));
    r->deadline_ms = strtoll(PQgetvalue(res, 0, C_DEADLINE), NULL, 10);
    r->log_seq = atoi(PQgetvalue(res, 0, C_LOGSEQ));
    snprintf(r->dir, sizeof(r->dir), "%s/loom-build-%s-%s", b->work_dir, r->id, b->holder);
    r->spec_json = json_loads(PQgetvalue(res, 0, C_SPEC), 0, NULL);
    struct loom_err serr = LOOM_ERR_INIT;
    if (!r->spec_json || loom_spec_decode(LOOM_KIND_BUILDRUN, r->spec_json, &r->spec, &serr) < 0) {
        finish(r, "failed", serr.msg[0] ? serr.msg : "its spec is not JSON", NULL);
        return 2;
    }
    if (*PQgetvalue(res, 0, C_CANCEL) == 't') {
        finish(r, "cancelled", "cancelled", NULL);
        return 2;
    }
    brun_log(r, "taken by builder %s (attempt %d)", b->holder, r->attempt);
    /* steps a previous attempt left behind do not run on beside this one */
    if (r->attempt > 1 && steps_cancel(db, r->id, err) < 0)
        return -1;
    return 1;
}

static void brun_release(struct brun *r)
{
    loom_spec_release(&r->spec);
    json_decref(r->spec_json);
    json_decref(r->steps);
    loom_registry_client_free(r->cache);
}

static void *worker_main(void *arg)
{
    struct builder *b = arg;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        bool stopping = b->stopping;
        pthread_mutex_unlock(&b->mu);
        if (stopping)
            break;
        struct loom_err err = LOOM_ERR_INIT;
        struct loom_db *db = loom_service_thread_db(&err);
        struct brun r = {0};
        int got = db ? claim(b, db, &r, &err) : -1;
        if (got < 0)
            log_warn("could not claim a build run: %s", err.msg);
        if (got == 1)
            execute(&r);
        if (got > 0) {
            brun_release(&r);
            continue; /* there may be more */
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_mutex_lock(&b->mu);
        if (!b->stopping)
            pthread_cond_timedwait(&b->wake, &b->mu, &ts);
        pthread_mutex_unlock(&b->mu);
    }
    return NULL;
}

/* ---- the service ------------------------------------------------------------------- */

static void on_wake(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus, (void)msg;
    struct builder *b = arg;
    pthread_mutex_lock(&b->mu);
    pthread_cond_broadcast(&b->wake);
    pthread_mutex_unlock(&b->mu);
}

int builder_start(struct loom_service *svc, struct loom_err *err)
{
    struct builder *b = &builder;
    b->svc = svc;
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(b->holder, sizeof(b->holder), "%.60s-%d", host, (int)getpid());
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->wake, NULL);
    b->m_succeeded = loom_metric_counter("loom_builder_runs_total", "result=\"succeeded\"",
                                         "build runs carried out, by result");
    b->m_failed = loom_metric_counter("loom_builder_runs_total", "result=\"failed\"",
                                      "build runs carried out, by result");
    static const double secs[] = {0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600};
    b->m_seconds = loom_metric_histogram("loom_builder_run_seconds", NULL,
                                         "time from claim to push of a successful run", secs,
                                         LOOM_ARRAY_SIZE(secs));
    b->m_cached = loom_metric_counter("loom_builder_cached_layers_total", NULL,
                                      "dependency layers taken from the cache");
    b->m_uploaded = loom_metric_counter("loom_builder_uploaded_bytes_total", NULL,
                                        "bytes pushed to the registry");
    if (!b->registry || !*b->registry)
        return loom_err_set(err, LOOM_EINVAL,
                            "the builder needs the platform registry (LOOM_REGISTRY)");
    if (loom_mkdir_p(b->work_dir, 0700, err) < 0)
        return -1;
    if (loom_secretbox_set_key(b->secrets_key, err) < 0)
        return loom_err_wrap(err, "LOOM_SECRETS_KEY");
    if (loom_bus_subscribe(svc->bus, LOOM_SUBJ_BUILD_WAKE, NULL, on_wake, b, err) < 0)
        return loom_err_wrap(err, "subscribing to %s", LOOM_SUBJ_BUILD_WAKE);
    b->threads = calloc((size_t)b->workers, sizeof(pthread_t));
    if (!b->threads)
        abort();
    for (int64_t i = 0; i < b->workers; i++) {
        if (pthread_create(&b->threads[i], NULL, worker_main, b) != 0)
            return loom_err_sys(err, errno, "could not start a build worker");
        b->nthreads++;
    }
    log_info("builder %s: %lld workers, registry %s", b->holder, (long long)b->workers,
             b->registry);
    return 0;
}

/* Runs whose builder went silent: taken again, or failed after their
 * attempts; their steps are stopped. */
static void recover(struct builder *b, struct loom_db *db)
{
    struct loom_err err = LOOM_ERR_INIT;
    char stale[24], attempts[24];
    snprintf(stale, sizeof(stale), "%lld", (long long)b->stale_ms);
    snprintf(attempts, sizeof(attempts), "%lld", (long long)b->max_attempts);
    /* the log line goes in the same statement: a worker that takes the run
     * again logs after it */
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "WITH s AS (SELECT id FROM build_runs WHERE state = 'running' AND heartbeat_at < now() - "
        "  make_interval(secs => $1::bigint / 1000.0) FOR UPDATE SKIP LOCKED), "
        "u AS (UPDATE build_runs b SET "
        "  state = CASE WHEN b.attempts < $2::integer AND NOT b.cancel_requested THEN 'pending' "
        "    WHEN b.cancel_requested THEN 'cancelled' ELSE 'failed' END, "
        "  reason = CASE WHEN b.attempts < $2::integer AND NOT b.cancel_requested THEN NULL "
        "    WHEN b.cancel_requested THEN 'cancelled' "
        "    ELSE 'the builder carrying it out stopped (attempt ' || b.attempts || ' of ' || "
        "    $2 || ')' END, "
        "  finished_at = CASE WHEN b.attempts >= $2::integer OR b.cancel_requested THEN now() "
        "    END, builder = NULL, heartbeat_at = NULL, updated_at = now() "
        "FROM s WHERE b.id = s.id RETURNING b.id, b.name, b.state), "
        "l AS (INSERT INTO build_run_logs (build_run_id, seq, line) "
        "  SELECT u.id, coalesce((SELECT max(seq) FROM build_run_logs x WHERE x.build_run_id = "
        "    u.id), 0) + 1, 'the builder carrying it out went silent: the run ' || "
        "    CASE WHEN u.state = 'pending' THEN 'goes back to pending' ELSE 'ends' END FROM u) "
        "SELECT id, name, state FROM u",
        stale, attempts);
    if (!res) {
        log_warn("could not look for build runs whose builder stopped: %s", err.msg);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        log_warn("build run %s: its builder went silent; now %s", PQgetvalue(res, i, 1),
                 PQgetvalue(res, i, 2));
        if (steps_cancel(db, PQgetvalue(res, i, 0), &err) < 0)
            log_warn("build run %s: could not stop its steps: %s", PQgetvalue(res, i, 1), err.msg);
    }
    if (PQntuples(res) > 0)
        on_wake(NULL, NULL, b);
}

void builder_tick(struct loom_service *svc)
{
    struct builder *b = &builder;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *hb = loom_db_query(
        svc->db, &err,
        "UPDATE build_runs SET heartbeat_at = now() WHERE builder = $1 AND state = 'running'",
        b->holder);
    if (!hb)
        log_warn("could not renew the heartbeat of this builder's runs: %s", err.msg);
    if (loom_mono_ms() - b->last_recover_ms >= 2000) {
        b->last_recover_ms = loom_mono_ms();
        recover(b, svc->db);
    }
    on_wake(NULL, NULL, b); /* a run missed by a lost wake is claimed within a tick */
}

void builder_stop(struct loom_service *svc)
{
    (void)svc;
    struct builder *b = &builder;
    pthread_mutex_lock(&b->mu);
    b->stopping = true;
    pthread_cond_broadcast(&b->wake);
    pthread_mutex_unlock(&b->mu);
    for (size_t i = 0; i < b->nthreads; i++)
        pthread_join(b->threads[i], NULL);
    free(b->threads);
    b->threads = NULL;
    b->nthreads = 0;
}
