/* /v1/projects/{project}/builds and build_runs: a build is a saved
 * configuration (source, strategy, output image); a build run copies a
 * build's spec, or stands alone, and is carried out by the builder service,
 * which claims pending runs. A run's output image is made whole when it is
 * created (the platform registry under the project when none is named), so
 * that what it pushed is what it says. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "instance_state.h"
#include "json.h"
#include "subjects.h"
#include "util.h"

/* ---- builds -------------------------------------------------------------------- */

static const struct api_resource build_resource = {
    .what = "build",
    .list_key = "builds",
    .sql_get = "SELECT " API_SAVED_COLS " FROM builds WHERE project_id = $1 AND name = $2",
    .sql_list = "SELECT " API_SAVED_COLS " FROM builds WHERE project_id = $1 AND name > $2 "
                "ORDER BY name LIMIT $3",
    .name_col = 1, /* API_SAVED_COLS */
    .etag = true,
    .to_json = api_saved_json,
};

/* An upload named by spec must be this project's. */
static int check_upload(struct api_ctx *ctx, json_t *spec, struct loom_err *err)
{
    const char *up = json_string_value(json_object_get(spec, "source_upload"));
    if (!up)
        return 0;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        ctx->db, err, "SELECT 1 FROM build_sources WHERE project_id = $1 AND digest = $2",
        ctx->project.id_str, up);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_upload\": \"%s\" is not an upload of this project "
                            "(POST .../uploads first)",
                            up);
    return 0;
}

static const struct api_saved build_saved = {LOOM_KIND_BUILD, "builds", "build", &build_resource,
                                             check_upload};

static int build_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                        struct loom_err *err)
{
    return api_saved_create(ctx, &build_saved, ret_status, ret_body, err);
}

void api_builds_create(struct loom_http_req *req)
{
    api_write(req, true, build_create);
}

void api_builds_list(struct loom_http_req *req)
{
    api_resource_list(req, &build_resource);
}

void api_builds_get(struct loom_http_req *req)
{
    api_resource_get(req, &build_resource);
}

static int build_update(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                        struct loom_err *err)
{
    return api_saved_update(ctx, &build_saved, ret_status, ret_body, err);
}

void api_builds_update(struct loom_http_req *req)
{
    api_write(req, true, build_update);
}

/* Runs keep their own copy of the spec: a build can go while runs remain. */
static int build_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                        struct loom_err *err)
{
    (void)ret_body;
    return api_saved_delete(ctx, &build_saved, ret_status, err);
}

void api_builds_delete(struct loom_http_req *req)
{
    api_write(req, true, build_delete);
}

/* ---- build runs ------------------------------------------------------------------ */

#define RUN_COLS                                                                                   \
    "r.id, r.name, r.spec::text, r.state, b.name, " API_TS("r.created_at") ", " API_TS(            \
        "r.started_at") ", " API_TS("r.finished_at") ", r.strategy, r.output_image, "              \
                                                     "r.output_digest, r.steps::text, r.reason, "  \
                                                     "r.attempts, r.cancel_requested"
#define RUN_FROM " FROM build_runs r LEFT JOIN builds b ON b.id = r.build_id "

enum {
    R_ID,
    R_NAME,
    R_SPEC,
    R_STATE,
    R_BUILD,
    R_CREATED,
    R_STARTED,
    R_FINISHED,
    R_STRATEGY,
    R_IMAGE,
    R_DIGEST,
    R_STEPS,
    R_REASON,
    R_ATTEMPTS,
    R_CANCEL,
};

static int run_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                    PGresult *res, int r, bool details, json_t **ret, struct loom_err *err)
{
    (void)k, (void)db, (void)details;
    _cleanup_json_ json_t *o = json_object();
    const char *name = PQgetvalue(res, r, R_NAME);
    api_json_set_str(o, "name", name);
    api_json_set_int(o, "id", PQgetvalue(res, r, R_ID));
    api_json_set_str(o, "project", p->name);
    api_json_set_str(o, "build_name", loom_db_val(res, r, R_BUILD));
    api_json_set_str(o, "created_at", loom_db_val(res, r, R_CREATED));
    api_json_set_str(o, "started_at", loom_db_val(res, r, R_STARTED));
    api_json_set_str(o, "finished_at", loom_db_val(res, r, R_FINISHED));
    const char *text = PQgetvalue(res, r, R_SPEC);
    _cleanup_json_ json_t *spec = loom_json_parse_object(text, strlen(text), err);
    if (!spec)
        return loom_err_wrap(err, "stored spec of build run %s", name);
    json_object_update(o, spec);
    api_json_set_str(o, "status", PQgetvalue(res, r, R_STATE));
    json_t *d = json_object();
    json_object_set_new(o, "status_details", d);
    api_json_set_str(d, "reason", loom_db_val(res, r, R_REASON));
    api_json_set_str(d, "strategy", loom_db_val(res, r, R_STRATEGY));
    api_json_set_str(d, "output_digest", loom_db_val(res, r, R_DIGEST));
    const char *image = loom_db_val(res, r, R_IMAGE), *digest = loom_db_val(res, r, R_DIGEST);
    if (image && digest) {
        /* what a deploy uses: the repository at the digest, never the tag */
        const char *slash = strrchr(image, '/'), *tag = strchr(slash ? slash : image, ':');
        size_t n = tag ? (size_t)(tag - image) : strlen(image);
        _cleanup_free_ char *ref = NULL;
        if (asprintf(&ref, "%.*s@%s", (int)n, image, digest) < 0)
            abort();
        json_object_set_new(d, "output_image_digest", json_string(ref));
    }
    json_t *steps = json_loads(PQgetvalue(res, r, R_STEPS), 0, NULL);
    json_object_set_new(d, "steps", json_is_array(steps) ? steps : json_array());
    if (steps && !json_is_array(steps))
        json_decref(steps);
    api_json_set_int(d, "attempts", PQgetvalue(res, r, R_ATTEMPTS));
    json_object_set_new(d, "cancel_requested", json_boolean(*PQgetvalue(res, r, R_CANCEL) == 't'));
    *ret = TAKE_PTR(o);
    return 0;
}

static const struct api_resource run_resource = {
    .what = "build run",
    .list_key = "build_runs",
    .sql_get = "SELECT " RUN_COLS RUN_FROM "WHERE r.project_id = $1 AND r.name = $2",
    .sql_list = "SELECT " RUN_COLS RUN_FROM "WHERE r.project_id = $1 AND r.name > $2 "
                "AND ($4::text IS NULL OR b.name = $4) ORDER BY r.name LIMIT $3",
    .filter = "build_name",
    .name_col = R_NAME,
    .to_json = run_json,
};

/* True when the first component of ref names a registry host. */
static bool has_registry(const char *ref)
{
    size_t n = strcspn(ref, "/");
    if (!ref[n])
        return false;
    return memchr(ref, '.', n) || memchr(ref, ':', n) || (n == 9 && !strncmp(ref, "localhost", 9));
}

int api_output_image(const char *project, const char *name, const char *given, char **ret,
                     struct loom_err *err)
{
    const char *slash = given ? strrchr(given, '/') : NULL;
    bool tagged = given && strchr(slash ? slash : given, ':');
    char *out = NULL;
    int rc;
    if (given && has_registry(given)) {
        rc = asprintf(&out, "%s%s", given, tagged ? "" : ":latest");
    } else {
        if (!api_cfg.registry || !*api_cfg.registry)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"output_image\": this platform has no registry of its "
                                "own (LOOM_REGISTRY): name the image's registry");
        rc = asprintf(&out, "%s/%s/%s%s", api_cfg.registry, project, given ? given : name,
                      tagged ? "" : ":latest");
    }
    if (rc < 0)
        abort();
    *ret = out;
    return 0;
}

/* The platform registry takes the builder's pushes without credentials: a
 * secret for it says something the run would not do. */
static int check_output_secret(const char *image, const char *secret, struct loom_err *err)
{
    size_t n = strcspn(image, "/");
    if (secret && api_cfg.registry && strlen(api_cfg.registry) == n &&
        strncmp(image, api_cfg.registry, n) == 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"output_secret\": the platform registry %s needs none (a "
                            "registry secret is for an output_image in another registry)",
                            api_cfg.registry);
    return 0;
}

static int buildrun_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                           struct loom_err *err)
{
    const char *name, *build_name = NULL;
    if (api_body_name(ctx->body, &name, err) < 0 ||
        loom_json_get_string(ctx->body, "build_name", false, 63, &build_name, err) < 0)
        return -1;
    _cleanup_json_ json_t *build_spec = NULL;
    _cleanup_pgres_ PGresult *build = NULL;
    const char *build_id = NULL;
    if (build_name) {
        build = loom_db_query(
            ctx->db, err, "SELECT id, spec::text FROM builds WHERE project_id = $1 AND name = $2",
            ctx->project.id_str, build_name);
        if (!build)
            return -1;
        if (PQntuples(build) == 0)
            return loom_err_set(err, LOOM_ENOTFOUND, "field \"build_name\": build \"%s\" not found",
                                build_name);
        build_id = PQgetvalue(build, 0, 0);
        const char *text = PQgetvalue(build, 0, 1);
        if (!(build_spec = loom_json_parse_object(text, strlen(text), err)))
            return -1;
    }
    _cleanup_json_ json_t *spec = NULL;
    _cleanup_free_ char *image = NULL;
    if (loom_spec_buildrun(build_spec, ctx->body, &spec, err) < 0 ||
        check_upload(ctx, spec, err) < 0)
        return -1;
    /* a function's bundle goes to function_code, an image to a registry */
    const char *type = json_string_value(json_object_get(spec, "output_type"));
    bool bundle = type && strcmp(type, "bundle") == 0;
    if (!bundle) {
        if (api_output_image(ctx->project.name, build_name ? build_name : name,
                             json_string_value(json_object_get(spec, "output_image")), &image,
                             err) < 0 ||
            check_output_secret(image, json_string_value(json_object_get(spec, "output_secret")),
                                err) < 0)
            return -1;
        json_object_set_new(spec, "output_image", json_string(image));
    }
    _cleanup_free_ char *text = loom_json_dumps(spec);
    _cleanup_pgres_ PGresult *ins =
        loom_db_query(ctx->db, err,
                      "INSERT INTO build_runs (project_id, name, build_id, spec, output_image) "
                      "VALUES ($1, $2, $3, $4::jsonb, $5)",
                      ctx->project.id_str, name, build_id, text, image);
    if (!ins) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "build run \"%s\" already exists", name);
        return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&run_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, "build_run", "created", name, out, err) < 0)
        return -1;
    ctx->wake_builder = true;
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_buildruns_create(struct loom_http_req *req)
{
    api_write(req, true, buildrun_create);
}

void api_buildruns_list(struct loom_http_req *req)
{
    api_resource_list(req, &run_resource);
}

void api_buildruns_get(struct loom_http_req *req)
{
    api_resource_get(req, &run_resource);
}

/* A pending run ends at once; a running one is ended by the builder that
 * holds it (its steps stopped, nothing pushed under its tag). */
static int buildrun_cancel(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                           struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *upd = loom_db_query(
        ctx->db, err,
        "WITH r AS (SELECT id, state FROM build_runs WHERE project_id = $1 AND name = $2 "
        "  FOR UPDATE) "
        "UPDATE build_runs b SET "
        "  state = CASE WHEN r.state = 'pending' THEN 'cancelled' ELSE b.state END, "
        "  finished_at = CASE WHEN r.state = 'pending' THEN now() END, "
        "  reason = CASE WHEN r.state = 'pending' THEN 'cancelled' ELSE b.reason END, "
        "  cancel_requested = r.state = 'running', updated_at = now() "
        "FROM r WHERE b.id = r.id AND r.state IN ('pending', 'running') RETURNING r.state",
        ctx->project.id_str, name);
    if (!upd)
        return -1;
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&run_resource, ctx->db, &ctx->project, name, &out, err) < 0)
        return -1;
    if (PQntuples(upd) == 0)
        return loom_err_set(err, LOOM_ECONFLICT, "build run \"%s\" is already %s", name,
                            json_string_value(json_object_get(out, "status")));
    if (api_event(ctx, "build_run", "cancelled", name, NULL, err) < 0)
        return -1;
    ctx->wake_builder = true;
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_buildruns_cancel(struct loom_http_req *req)
{
    api_write(req, true, buildrun_cancel);
}

/* A running run is cancelled first (202; the CLI deletes again once it has
 * ended), so that no step of it runs on without its row. */
static int buildrun_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                           struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *run = loom_db_query(
        ctx->db, err,
        "SELECT id, state FROM build_runs WHERE project_id = $1 AND name = $2 FOR UPDATE",
        ctx->project.id_str, name);
    if (!run)
        return -1;
    if (PQntuples(run) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "build run \"%s\" not found", name);
    const char *id = PQgetvalue(run, 0, 0);
    if (strcmp(PQgetvalue(run, 0, 1), "running") == 0) {
        _cleanup_pgres_ PGresult *c = loom_db_query(
            ctx->db, err,
            "UPDATE build_runs SET cancel_requested = true, updated_at = now() WHERE id = $1", id);
        if (!c)
            return -1;
        ctx->wake_builder = true;
        *ret_status = 202;
        *ret_body = json_pack("{s:s,s:s}", "name", name, "status", "cancelling");
        return 0;
    }
    /* a step the scheduler still holds (a run ended while its step stops)
     * keeps the row until the step is gone */
    _cleanup_pgres_ PGresult *live =
        loom_db_query(ctx->db, err,
                      "SELECT count(*) FROM instances i JOIN job_runs j ON j.id = i.job_run_id "
                      "WHERE j.build_run_id = $1 AND i.state IN " LOOM_LIVE_STATES_SQL,
                      id);
    if (!live)
        return -1;
    if (strcmp(PQgetvalue(live, 0, 0), "0") != 0) {
        *ret_status = 202;
        *ret_body = json_pack("{s:s,s:s}", "name", name, "status", "stopping");
        return 0;
    }
    _cleanup_pgres_ PGresult *del =
        loom_db_query(ctx->db, err, "DELETE FROM build_runs WHERE id = $1", id);
    if (!del || api_event(ctx, "build_run", "deleted", name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}

void api_buildruns_delete(struct loom_http_req *req)
{
    api_write(req, true, buildrun_delete);
}

/* GET .../build_runs/{name}/logs[?limit=N][&after=CURSOR]: what the builder said and
 * what its steps printed, in time order. The cursor is the last line's time
 * and identity; "next" is always set, so that a follower polls with it. */
void api_buildruns_logs(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    const char *name = req->params[1], *after = loom_http_query(req, "after");
    struct api_log_cursor cur;
    _cleanup_pgres_ PGresult *run = NULL;
    char limit[24];
    if (api_log_limit(req, limit, &err) < 0 || api_log_cursor_parse(after, &cur, &err) < 0 ||
        !(run = api_find(db, &proj,
                         "SELECT id, state FROM build_runs WHERE project_id = $1 AND name = $2",
                         "build run", name, &err)))
        API_FAIL(req, &err);
    /* source: the builder ('00000000-...') or a step's instance; seq: the
     * builder's line number or the step's log offset */
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "WITH lines AS ("
        "  SELECT l.ts, '00000000-0000-0000-0000-000000000000'::uuid AS src, l.seq::bigint AS "
        "    seq, 'builder' AS step, 'stdout' AS stream, l.line FROM build_run_logs l "
        "  WHERE l.build_run_id = $1 "
        "  UNION ALL "
        "  SELECT l.ts, l.instance_id, l.\"offset\", substring(j.name FROM '[^.]*$'), l.stream, "
        "    l.line FROM job_runs j JOIN instances i ON i.job_run_id = j.id "
        "  JOIN log_lines l ON l.instance_id = i.id WHERE j.build_run_id = $1) "
        "SELECT " API_TS("ts") ", step, stream, line, "
                               "  (extract(epoch FROM ts) * 1000000)::bigint, src, seq FROM lines "
                               "WHERE $2::bigint IS NULL OR (ts, src, seq) > (timestamptz 'epoch' "
                               "+ $2::bigint * "
                               "  interval '1 microsecond', $3::uuid, $4::bigint) "
                               "ORDER BY ts, src, seq LIMIT $5",
        PQgetvalue(run, 0, 0), cur.ts, cur.src, cur.seq, limit);
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_t *lines = json_array();
    json_object_set_new(out, "lines", lines);
    int n = PQntuples(res);
    for (int r = 0; r < n; r++)
        json_array_append_new(lines,
                              json_pack("{s:s,s:s,s:s,s:s}", "ts", PQgetvalue(res, r, 0), "step",
                                        PQgetvalue(res, r, 1), "stream", PQgetvalue(res, r, 2),
                                        "line", PQgetvalue(res, r, 3)));
    api_log_cursor_next(out, res, 4, after);
    const char *state = PQgetvalue(run, 0, 1);
    json_object_set_new(
        out, "finished",
        json_boolean(strcmp(state, "pending") != 0 && strcmp(state, "running") != 0));
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}
