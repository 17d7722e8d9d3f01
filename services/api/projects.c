/* /v1/projects */
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "instance_state.h"
#include "json.h"

#define PROJECT_COLS "id, name, " API_TS("created_at")

static json_t *project_json(PGresult *res, int r)
{
    json_t *o = json_object();
    api_json_set_int(o, "id", loom_db_val(res, r, 0));
    api_json_set_str(o, "name", loom_db_val(res, r, 1));
    api_json_set_str(o, "created_at", loom_db_val(res, r, 2));
    json_object_set_new(o, "status", json_string("active"));
    return o;
}

void api_projects_list(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_page page;
    if (api_begin(req, false, &db, &caller, NULL, &err) < 0 || api_page_parse(req, &page, &err) < 0)
        API_FAIL(req, &err);
    char limit[24], pid[24];
    snprintf(limit, sizeof(limit), "%lld", (long long)page.limit);
    snprintf(pid, sizeof(pid), "%lld", (long long)caller.project_id);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT " PROJECT_COLS " FROM projects WHERE name > $1 AND ($2::bigint = 0 OR id = $2) "
        "ORDER BY name LIMIT $3",
        page.after, pid, limit);
    if (!res)
        API_FAIL(req, &err);
    json_t *out = json_object(), *items = json_array();
    int n = PQntuples(res);
    for (int r = 0; r < n; r++)
        json_array_append_new(items, project_json(res, r));
    json_object_set_new(out, "projects", items);
    api_page_finish(out, &page, (size_t)n, n ? PQgetvalue(res, n - 1, 1) : NULL);
    loom_http_reply_json(req, 200, out);
}

static int project_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                          struct loom_err *err)
{
    if (ctx->caller.role != API_ROLE_ADMIN)
        return loom_err_set(err, LOOM_EPERM, "only an admin key can create projects");
    static const char *const allowed[] = {"name", NULL};
    const char *name;
    if (loom_json_check_fields(ctx->body, allowed, err) < 0 ||
        api_body_name(ctx->body, &name, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        ctx->db, err, "INSERT INTO projects (name) VALUES ($1) RETURNING " PROJECT_COLS, name);
    if (!res) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "project \"%s\" already exists", name);
        return -1;
    }
    _cleanup_json_ json_t *out = project_json(res, 0);
    snprintf(ctx->project.name, sizeof(ctx->project.name), "%s", name);
    if (api_event(ctx, "project", "created", name, out, err) < 0)
        return -1;
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_projects_create(struct loom_http_req *req)
{
    api_write(req, false, project_create);
}

/* A project goes with everything in it, but only once nothing runs. */
static int project_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                          struct loom_err *err)
{
    (void)ret_body;
    if (ctx->caller.role != API_ROLE_ADMIN)
        return loom_err_set(err, LOOM_EPERM, "only an admin key can delete projects");
    _cleanup_pgres_ PGresult *lock = loom_db_query(
        ctx->db, err, "SELECT id FROM projects WHERE id = $1 FOR UPDATE", ctx->project.id_str);
    _cleanup_pgres_ PGresult *live =
        lock ? loom_db_query(ctx->db, err,
                             "SELECT count(*) FROM instances WHERE project_id = $1 "
                             "AND state IN " LOOM_LIVE_STATES_SQL,
                             ctx->project.id_str)
             : NULL;
    if (!live)
        return -1;
    if (atoi(PQgetvalue(live, 0, 0)) > 0)
        return loom_err_set(err, LOOM_ECONFLICT,
                            "project \"%s\" still has %s running instances: delete its apps "
                            "and job runs first",
                            ctx->project.name, PQgetvalue(live, 0, 0));
    _cleanup_pgres_ PGresult *del =
        loom_db_query(ctx->db, err, "DELETE FROM projects WHERE id = $1", ctx->project.id_str);
    if (!del || api_event(ctx, "project", "deleted", ctx->project.name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}

void api_projects_delete(struct loom_http_req *req)
{
    api_write(req, true, project_delete);
}

void api_projects_get(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, &err, "SELECT " PROJECT_COLS " FROM projects WHERE id = $1", proj.id_str);
    if (!res)
        API_FAIL(req, &err);
    if (PQntuples(res) == 0) {
        loom_err_set(&err, LOOM_ENOTFOUND, "project \"%s\" not found", proj.name);
        API_FAIL(req, &err);
    }
    loom_http_reply_json(req, 200, project_json(res, 0));
}
