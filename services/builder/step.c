/* Steps that run user code (npm, pip, go build, buildah): a job run of the
 * build run's project, so that they wait in the same queues and quotas as
 * jobs and run as its containers do (its user namespace, no extra
 * capabilities, the build size's limits). The step's image is its stack
 * with the source it needs under /app; the agent pushes the step's output
 * directory as a layer once the step exits 0, and reports its digest. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arrayspec.h"
#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "instance_state.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "strbuf.h"
#include "subjects.h"
#include "util.h"

#define POLL_MS 150
/* how long a failed step's output may take to reach log_lines */
#define LOG_SETTLE_MS 3000

/* What a step that fetches dependencies needs of the host: its DNS
 * (/etc/resolv.conf) and, when the operator gives one, the bundle of
 * certificate authorities to trust (a proxy's). */
#define CA_BUNDLE "etc/ssl/certs/ca-certificates.crt"

static int host_layer(struct brun *r, struct loom_layer **ret_l, struct loom_layer_info *ret,
                      struct loom_err *err)
{
    _cleanup_free_ char *resolv = NULL, *ca = NULL;
    size_t rlen = 0, clen = 0;
    struct loom_err e = LOOM_ERR_INIT;
    if (loom_read_file("/etc/resolv.conf", &resolv, &rlen, &e) < 0)
        rlen = 0;
    if (builder.ca_file && loom_read_file(builder.ca_file, &ca, &clen, err) < 0)
        return loom_err_wrap(err, "LOOM_BUILDER_CA_FILE");
    struct loom_layer *l = NULL;
    int rc = loom_layer_open(r->dir, &l, err) < 0 || loom_layer_add_dir(l, "etc", 0755, err) < 0 ||
                     loom_layer_add_file(l, "etc/resolv.conf", 0644, resolv ? resolv : "", rlen,
                                         err) < 0 ||
                     (ca && (loom_layer_add_dir(l, "etc/ssl", 0755, err) < 0 ||
                             loom_layer_add_dir(l, "etc/ssl/certs", 0755, err) < 0 ||
                             loom_layer_add_file(l, CA_BUNDLE, 0644, ca, clen, err) < 0)) ||
                     loom_layer_finish(l, ret, err) < 0
                 ? -1
                 : 0;
    if (rc < 0) {
        loom_layer_free(l);
        return -1;
    }
    *ret_l = l;
    return 0;
}

/* The step's image in the project's cache repository: its reference. */
static int step_image(struct brun *r, const struct step_req *s, char ret_ref[700],
                      struct loom_err *err)
{
    struct loom_layer *rl = NULL;
    struct loom_layer_info resolv;
    if (host_layer(r, &rl, &resolv, err) < 0)
        return -1;
    _cleanup_json_ json_t *env = json_pack("[s]", "HOME=/tmp/home");
    if (builder.ca_file) {
        /* each tool finds the bundle its own way */
        static const char *const vars[] = {"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS",
                                           "REQUESTS_CA_BUNDLE", "PIP_CERT"};
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(vars); i++)
            json_array_append_new(env, json_sprintf("%s=/%s", vars[i], CA_BUNDLE));
    }
    struct img img = {.config = img_config(s->stack, env, NULL, "/app")};
    img_add_stack(&img, s->stack);
    struct img_layer *l = &img.layers[img.n++];
    *l = (struct img_layer){.size = resolv.size, .file = resolv.path};
    snprintf(l->digest, sizeof(l->digest), "%s", resolv.digest);
    snprintf(l->diff_id, sizeof(l->diff_id), "%s", resolv.diff_id);
    for (size_t i = 0; i < s->nextra && img.n < LOOM_ARRAY_SIZE(img.layers) - 1; i++)
        img.layers[img.n++] = s->extra[i];
    if (s->input) {
        l = &img.layers[img.n++];
        *l = (struct img_layer){.size = s->input->size, .file = s->input->path};
        snprintf(l->digest, sizeof(l->digest), "%s", s->input->digest);
        snprintf(l->diff_id, sizeof(l->diff_id), "%s", s->input->diff_id);
    }
    /* by digest alone: the step's image is no one's tag */
    struct out_target t = {.platform = true, .c = r->cache};
    snprintf(t.host, sizeof(t.host), "%s", builder.registry);
    snprintf(t.repo, sizeof(t.repo), "%s", r->cache_repo);
    char digest[72];
    int rc = img_push(r, &img, &t, digest, err);
    json_decref(img.config);
    loom_layer_free(rl);
    if (rc < 0)
        return -1;
    snprintf(ret_ref, 700, "%s/%s@%s", builder.registry, r->cache_repo, digest);
    return 0;
}

static char *insert_sql;
static pthread_once_t insert_once = PTHREAD_ONCE_INIT;

static void build_insert_sql(void)
{
    struct strbuf sb = STRBUF_INIT, names = STRBUF_INIT, params = STRBUF_INIT;
    const char *cols[LOOM_SPEC_MAX_COLUMNS];
    char unused[LOOM_SPEC_MAX_COLUMNS][24];
    size_t n = loom_spec_columns(LOOM_KIND_JOBRUN, NULL, cols, unused);
    for (size_t i = 0; i < n; i++) {
        strbuf_addf(&names, ", %s", cols[i]);
        strbuf_addf(&params, ", $%zu::bigint", 7 + i);
    }
    /* $1 project, $2 name, $3 max seconds, $4 spec, $5 build run, $6 output */
    strbuf_addf(&sb,
                "INSERT INTO job_runs (project_id, name, array_spec, array_size, pending, "
                "parallelism, retry_limit, max_execution_seconds, spec, build_run_id, "
                "build_output%s) VALUES ($1, $2, '0', 1, '{[0,1)}', 0, 0, $3, $4::jsonb, $5, "
                "$6::jsonb%s) RETURNING id",
                names.buf, params.buf);
    insert_sql = strbuf_detach(&sb, NULL);
    strbuf_release(&names);
    strbuf_release(&params);
}

/* The job run of a step; its id into ret_id. */
static int insert_run(struct brun *r, const struct step_req *s, const char *image, char ret_id[24],
                      struct loom_err *err)
{
    const struct loom_build_resources *res = loom_build_size_resources(r->spec.strategy_size);
    char cpu[24], mem[24], eph[24], name[160];
    int64_t left = (r->deadline_ms - loom_now_ms()) / 1000;
    snprintf(cpu, sizeof(cpu), "%lld.%03lld", (long long)(res->cpu_millis / 1000),
             (long long)(res->cpu_millis % 1000));
    snprintf(mem, sizeof(mem), "%lldM", (long long)(res->memory_bytes / 1000000));
    snprintf(eph, sizeof(eph), "%lldM", (long long)(res->ephemeral_bytes / 1000000));
    snprintf(name, sizeof(name), "%s.%d.%s", r->name, r->attempt, s->label);
    _cleanup_json_ json_t *body = json_pack(
        "{s:s,s:s,s:[s,s,s],s:s,s:s,s:s,s:i,s:I}", "name", name, "image_reference", image,
        "run_commands", "/bin/sh", "-c", s->script, "scale_cpu_limit", cpu, "scale_memory_limit",
        mem, "scale_ephemeral_storage_limit", eph, "scale_retry_limit", 0,
        "scale_max_execution_time", (json_int_t)(left > 1 ? left : 1));
    _cleanup_json_ json_t *spec = NULL;
    struct loom_arrayspec idx = {0};
    if (loom_spec_jobrun(NULL, body, &spec, &idx, err) < 0)
        return loom_err_wrap(err, "the %s step's job run", s->label);
    loom_arrayspec_release(&idx);
    _cleanup_spec_ struct loom_spec decoded = {0};
    if (loom_spec_decode(LOOM_KIND_JOBRUN, spec, &decoded, err) < 0)
        return -1;
    pthread_once(&insert_once, build_insert_sql);
    const char *cols[LOOM_SPEC_MAX_COLUMNS];
    char values[LOOM_SPEC_MAX_COLUMNS][24];
    size_t n = loom_spec_columns(LOOM_KIND_JOBRUN, &decoded, cols, values);
    _cleanup_free_ char *text = loom_json_dumps(spec);
    _cleanup_free_ char *output = NULL, *repo = NULL;
    if (asprintf(&repo, "%s/%s", builder.registry, r->cache_repo) < 0)
        abort();
    json_t *o = json_pack("{s:s,s:s,s:b}", "path", s->output, "repository", repo, "nested",
                          s->kind == STEP_BUILDAH);
    output = loom_json_dumps(o);
    json_decref(o);
    char secs[24];
    snprintf(secs, sizeof(secs), "%lld", (long long)decoded.max_execution_time);
    const char *params[6 + LOOM_SPEC_MAX_COLUMNS] = {r->project_id, name,  secs,
                                                     text,          r->id, output};
    for (size_t i = 0; i < n; i++)
        params[6 + i] = values[i];
    _cleanup_pgres_ PGresult *ins = loom_db_exec(r->db, insert_sql, (int)(6 + n), params, err);
    if (!ins)
        return -1;
    snprintf(ret_id, 24, "%s", PQgetvalue(ins, 0, 0));
    struct loom_err werr = LOOM_ERR_INIT;
    if (loom_bus_publish_raw(builder.svc->bus, LOOM_SUBJ_SCHED_WAKE, "", 0, &werr) < 0)
        log_warn("could not wake the scheduler: %s", werr.msg);
    return 0;
}

int steps_cancel(struct loom_db *db, const char *build_run_id, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *runs = loom_db_query(
        db, err,
        "UPDATE job_runs SET state = 'cancelled', pending = '{}', finished_at = now(), "
        "  updated_at = now() WHERE build_run_id = $1 AND state IN ('pending', 'running') "
        "RETURNING id",
        build_run_id);
    if (!runs)
        return -1;
    /* updated_at in the past: the scheduler's resend pass sends the stops at once */
    _cleanup_pgres_ PGresult *stop =
        loom_db_query(db, err,
                      "UPDATE instances SET desired = 'stop', reason = 'build step cancelled', "
                      "  updated_at = now() - interval '1 hour' "
                      "WHERE job_run_id IN (SELECT id FROM job_runs WHERE build_run_id = $1) "
                      "  AND desired = 'run' AND state IN " LOOM_LIVE_STATES_SQL,
                      build_run_id);
    if (!stop)
        return -1;
    if (PQntuples(runs) > 0 && builder.svc)
        loom_bus_publish_raw(builder.svc->bus, LOOM_SUBJ_SCHED_WAKE, "", 0, NULL);
    return 0;
}

/* The output lines of a step's instance, once the logshipper has them all
 * (they stop growing), at most the last 200. */
static json_t *step_lines(struct brun *r, const char *instance)
{
    json_t *lines = json_array();
    int64_t until = loom_mono_ms() + LOG_SETTLE_MS;
    long prev = -1;
    for (;;) {
        struct loom_err err = LOOM_ERR_INIT;
        _cleanup_pgres_ PGresult *res = loom_db_query(
            r->db, &err,
            "SELECT line FROM (SELECT line, \"offset\" FROM log_lines WHERE instance_id = $1 "
            "ORDER BY \"offset\" DESC LIMIT 200) l ORDER BY \"offset\"",
            instance);
        long n = res ? PQntuples(res) : 0;
        if (res && n == prev && n > 0) {
            for (long i = 0; i < n; i++)
                json_array_append_new(lines, json_string(PQgetvalue(res, (int)i, 0)));
            return lines;
        }
        if (loom_mono_ms() > until) {
            for (long i = 0; res && i < n; i++)
                json_array_append_new(lines, json_string(PQgetvalue(res, (int)i, 0)));
            return lines;
        }
        prev = n;
        struct timespec ts = {0, 300 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

enum { W_STATE, W_INDEX_STATE, W_REASON, W_EXIT, W_OUTPUT, W_INSTANCE, W_WAITING };

int step_run(struct brun *r, const struct step_req *s, struct step_out *ret, struct loom_err *err)
{
    char image[700], run_id[24];
    if (step_image(r, s, image, err) < 0 || insert_run(r, s, image, run_id, err) < 0)
        return -1;
    brun_log(r, "step %s: job run %s.%d.%s on %s", s->label, r->name, r->attempt, s->label, image);
    char shown[300] = "";
    for (;;) {
        if (brun_check(r, err) < 0) {
            if (shown[0]) {
                char msg[sizeof(err->msg)];
                snprintf(msg, sizeof(msg), "%s", err->msg);
                loom_err_set(err, err->code, "%.400s, while step %s waited: %s", msg, s->label,
                             shown);
            }
            return -1;
        }
        _cleanup_pgres_ PGresult *res = loom_db_query(
            r->db, err,
            "SELECT j.state, ji.state, ji.reason, ji.exit_code, i.output::text, i.id, "
            "  j.waiting_reason "
            "FROM job_runs j LEFT JOIN job_run_indices ji ON ji.run_id = j.id AND ji.idx = 0 "
            "LEFT JOIN instances i ON i.id = ji.instance_id WHERE j.id = $1",
            run_id);
        if (!res)
            return -1;
        const char *state = PQgetvalue(res, 0, W_STATE);
        const char *waiting = loom_db_val(res, 0, W_WAITING);
        if (!waiting)
            shown[0] = '\0';
        else if (strcmp(shown, waiting) != 0) {
            snprintf(shown, sizeof(shown), "%s", waiting);
            brun_log(r, "step %s waits: %s", s->label, waiting);
        }
        if (strcmp(state, "completed") == 0) {
            const char *out = loom_db_val(res, 0, W_OUTPUT);
            _cleanup_json_ json_t *o = out ? json_loads(out, 0, NULL) : NULL;
            const char *d = json_string_value(json_object_get(o, "digest"));
            const char *id = json_string_value(json_object_get(o, "diff_id"));
            if (!d || !id || !loom_registry_digest_valid(d) || !loom_registry_digest_valid(id))
                return loom_err_set(err, LOOM_EINTERNAL,
                                    "step %s ended without its output layer (%s)", s->label,
                                    s->output);
            snprintf(ret->digest, sizeof(ret->digest), "%s", d);
            snprintf(ret->diff_id, sizeof(ret->diff_id), "%s", id);
            ret->size = json_integer_value(json_object_get(o, "size"));
            return 0;
        }
        if (strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0) {
            const char *why = loom_db_val(res, 0, W_REASON);
            const char *inst = loom_db_val(res, 0, W_INSTANCE);
            _cleanup_json_ json_t *lines = inst ? step_lines(r, inst) : json_array();
            const char *line = step_failure_line(s->kind, lines);
            return loom_err_set(err, LOOM_EINVAL, "step %s failed (%s)%s%.600s", s->label,
                                why ? why : state, line ? ": " : "", line ? line : "");
        }
        struct timespec ts = {0, POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}
