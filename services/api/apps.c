/* /v1/projects/{project}/apps: an app row holds the current spec and
 * generation; app_revisions keeps every generation. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "config.h"
#include "instance_state.h"
#include "json.h"
#include "strbuf.h"

#define APP_COLS                                                                                   \
    "a.id, a.name, a.generation, a.spec::text, a.min_instances, a.max_instances, "                 \
    "a.desired_instances, " API_TS("a.created_at") ", " API_TS(                                    \
        "a.updated_at") ", (SELECT count(*) FROM instances i WHERE i.app_id = a.id "               \
                        "AND i.state = 'running' AND i.desired = 'run'), a.waiting_reason"

enum {
    C_ID,
    C_NAME,
    C_GEN,
    C_SPEC,
    C_MIN,
    C_MAX,
    C_DESIRED,
    C_CREATED,
    C_UPDATED,
    C_RUNNING,
    C_WAITING
};

static int64_t ival(PGresult *res, int r, int c)
{
    return strtoll(PQgetvalue(res, r, c), NULL, 10);
}

static int app_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                    PGresult *res, int r, bool details, json_t **ret, struct loom_err *err)
{
    (void)k, (void)db, (void)details;
    const char *project = p->name;
    _cleanup_json_ json_t *o = json_object();
    const char *name = PQgetvalue(res, r, C_NAME);
    api_json_set_str(o, "name", name);
    api_json_set_int(o, "id", PQgetvalue(res, r, C_ID));
    api_json_set_str(o, "project", project);
    api_json_set_int(o, "generation", PQgetvalue(res, r, C_GEN));
    api_json_set_str(o, "entity_tag", PQgetvalue(res, r, C_GEN));
    api_json_set_str(o, "created_at", PQgetvalue(res, r, C_CREATED));
    api_json_set_str(o, "updated_at", PQgetvalue(res, r, C_UPDATED));
    _cleanup_json_ json_t *spec =
        loom_json_parse_object(PQgetvalue(res, r, C_SPEC), strlen(PQgetvalue(res, r, C_SPEC)), err);
    if (!spec)
        return loom_err_wrap(err, "stored spec of app %s", name);
    json_object_update(o, spec);
    char url[1024];
    snprintf(url, sizeof(url), "%s/apps/%s/%s/", api_cfg.activator_url ? api_cfg.activator_url : "",
             project, name);
    json_object_set_new(o, "endpoint", json_string(url));
    json_object_set_new(o, "url", json_string(url));
    int64_t mn = ival(res, r, C_MIN), mx = ival(res, r, C_MAX), want = ival(res, r, C_DESIRED);
    int64_t running = ival(res, r, C_RUNNING);
    if (want < mn)
        want = mn;
    if (want > mx)
        want = mx;
    /* ready once one instance runs, or at once for an app that scales from zero */
    int64_t need = mn < 1 ? mn : 1;
    json_object_set_new(o, "status", json_string(running >= need ? "ready" : "deploying"));
    json_object_set_new(o, "status_details",
                        json_pack("{s:I,s:I}", "instances_running", (json_int_t)running,
                                  "instances_desired", (json_int_t)want));
    api_json_set_str(json_object_get(o, "status_details"), "waiting_reason",
                     loom_db_val(res, r, C_WAITING));
    *ret = TAKE_PTR(o);
    return 0;
}

static const struct api_resource app_resource = {
    .what = "app",
    .list_key = "apps",
    .sql_get = "SELECT " APP_COLS " FROM apps a WHERE a.project_id = $1 AND a.name = $2",
    .sql_list = "SELECT " APP_COLS " FROM apps a WHERE a.project_id = $1 AND a.name > $2 "
                "ORDER BY a.name LIMIT $3",
    .name_col = C_NAME,
    .etag = true,
    .to_json = app_json,
};

static struct api_revisioned app_rev = {
    .kind = LOOM_KIND_APP,
    .table = "apps",
    .rev_table = "app_revisions",
    .owner_col = "app_id",
    .insert_only = {"desired_instances"},
};

static int app_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name;
    _cleanup_json_ json_t *spec = NULL;
    if (api_body_name(ctx->body, &name, err) < 0 ||
        loom_spec_validate(LOOM_KIND_APP, ctx->body, false, &spec, err) < 0)
        return -1;
    char desired[24], id[24];
    snprintf(desired, sizeof(desired), "%lld",
             (long long)json_integer_value(json_object_get(spec, "scale_min_instances")));
    const char *only[] = {desired};
    _cleanup_json_ json_t *out = NULL;
    if (api_rev_insert(ctx, &app_rev, "app", name, only, NULL, spec, id, err) < 0 ||
        api_resource_load(&app_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, "app", "created", name, out, err) < 0)
        return -1;
    ctx->wake_scheduler = true;
    loom_http_set_header(ctx->req, "ETag", "\"1\"");
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_apps_create(struct loom_http_req *req)
{
    api_write(req, true, app_create);
}

/* PATCH .../apps/{name}: the given fields replace the current ones; a real
 * change makes a new generation (and revision). */
static int app_update(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_api_patch_ struct api_patch p = {0};
    if (api_patch_spec(ctx, LOOM_KIND_APP,
                       "SELECT id, generation, spec::text FROM apps WHERE project_id = $1 AND "
                       "name = $2 FOR UPDATE",
                       &p, err) < 0)
        return -1;
    if (p.changed) {
        if (api_rev_update(ctx, &app_rev, PQgetvalue(p.row, 0, 0), NULL, p.spec, err) < 0)
            return -1;
        ctx->wake_scheduler = true;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&app_resource, ctx->db, &ctx->project, name, &out, err) < 0)
        return -1;
    if (ctx->wake_scheduler && api_event(ctx, "app", "updated", name, out, err) < 0)
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_apps_update(struct loom_http_req *req)
{
    api_write(req, true, app_update);
}

void api_apps_revisions(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    const char *name = req->params[1];
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, &err,
                      "SELECT a.id, r.generation, r.spec::text, " API_TS(
                          "r.created_at") " FROM apps a "
                                          "LEFT JOIN app_revisions r ON r.app_id = a.id WHERE "
                                          "a.project_id = $1 AND a.name = $2 "
                                          "ORDER BY r.generation DESC",
                      proj.id_str, name);
    if (!res)
        API_FAIL(req, &err);
    if (PQntuples(res) == 0) {
        loom_err_set(&err, LOOM_ENOTFOUND, "app \"%s\" not found", name);
        API_FAIL(req, &err);
    }
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, "revisions", items);
    for (int r = 0; r < PQntuples(res); r++) {
        if (PQgetisnull(res, r, 1))
            continue;
        json_t *spec = json_loads(PQgetvalue(res, r, 2), 0, NULL);
        json_t *o = json_is_object(spec) ? spec : json_object();
        if (o != spec && spec)
            json_decref(spec);
        char rname[96];
        snprintf(rname, sizeof(rname), "%s-%05d", name, atoi(PQgetvalue(res, r, 1)));
        json_object_set_new(o, "name", json_string(rname));
        json_object_set_new(o, "app_name", json_string(name));
        api_json_set_int(o, "generation", PQgetvalue(res, r, 1));
        api_json_set_str(o, "created_at", PQgetvalue(res, r, 3));
        json_array_append_new(items, o);
    }
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

void api_apps_list(struct loom_http_req *req)
{
    api_resource_list(req, &app_resource);
}

void api_apps_get(struct loom_http_req *req)
{
    api_resource_get(req, &app_resource);
}

/* Like a job run: live instances keep the row (scaled to 0/0) until they are
 * stopped; the answer is then 202 and a later DELETE removes it. */
static int app_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *app = loom_db_query(
        ctx->db, err, "SELECT id FROM apps WHERE project_id = $1 AND name = $2 FOR UPDATE",
        ctx->project.id_str, name);
    if (!app)
        return -1;
    if (PQntuples(app) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "app \"%s\" not found", name);
    const char *id = PQgetvalue(app, 0, 0);
    _cleanup_pgres_ PGresult *live = loom_db_query(
        ctx->db, err,
        "UPDATE instances SET desired = 'stop', updated_at = CASE desired WHEN 'stop' "
        "THEN updated_at ELSE now() END WHERE app_id = $1 "
        "AND state IN " LOOM_LIVE_STATES_SQL " RETURNING id",
        id);
    if (!live)
        return -1;
    int nlive = PQntuples(live);
    _cleanup_pgres_ PGresult *done = NULL;
    if (nlive > 0)
        done = loom_db_query(ctx->db, err,
                             "UPDATE apps SET min_instances = 0, max_instances = 0, "
                             "desired_instances = 0, updated_at = now() WHERE id = $1",
                             id);
    else
        done = loom_db_query(ctx->db, err, "DELETE FROM apps WHERE id = $1", id);
    if (!done)
        return -1;
    if (nlive > 0) {
        ctx->wake_scheduler = true;
        *ret_status = 202;
        *ret_body = json_pack("{s:s,s:s,s:i}", "name", name, "status", "deleting",
                              "instances_stopping", nlive);
        return 0;
    }
    if (api_event(ctx, "app", "deleted", name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}

void api_apps_delete(struct loom_http_req *req)
{
    api_write(req, true, app_delete);
}

void api_apps_instances(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    const char *name = req->params[1];
    _cleanup_pgres_ PGresult *app = loom_db_query(
        db, &err, "SELECT id FROM apps WHERE project_id = $1 AND name = $2", proj.id_str, name);
    if (!app)
        API_FAIL(req, &err);
    if (PQntuples(app) == 0) {
        loom_err_set(&err, LOOM_ENOTFOUND, "app \"%s\" not found", name);
        API_FAIL(req, &err);
    }
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT id, state, desired, node_name, address, app_generation, " API_TS(
            "created_at") ", " API_TS("started_at") ", exit_code, reason "
                                                    "FROM instances WHERE app_id = $1 "
                                                    "AND (state NOT IN ('succeeded', 'failed', "
                                                    "'stopped', 'lost') OR finished_at > now() - "
                                                    "interval '10 minutes') ORDER BY created_at",
        PQgetvalue(app, 0, 0));
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, "instances", items);
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = json_object();
        api_json_set_str(o, "id", loom_db_val(res, r, 0));
        api_json_set_str(o, "app_name", name);
        api_json_set_str(o, "status", loom_db_val(res, r, 1));
        api_json_set_str(o, "desired", loom_db_val(res, r, 2));
        api_json_set_str(o, "node", loom_db_val(res, r, 3));
        api_json_set_str(o, "address", loom_db_val(res, r, 4));
        api_json_set_int(o, "generation", loom_db_val(res, r, 5));
        api_json_set_str(o, "created_at", loom_db_val(res, r, 6));
        api_json_set_str(o, "started_at", loom_db_val(res, r, 7));
        api_json_set_int(o, "exit_code", loom_db_val(res, r, 8));
        api_json_set_str(o, "reason", loom_db_val(res, r, 9));
        json_array_append_new(items, o);
    }
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}
