/* /v1/admin: operator endpoints (admin keys only): nodes and API keys. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "apikey.h"
#include "cleanup.h"
#include "instance_state.h"
#include "json.h"
#include "nodes_sql.h"
#include "util.h"

static int need_admin(const struct api_caller *c, struct loom_err *err)
{
    if (c->role != API_ROLE_ADMIN)
        return loom_err_set(err, LOOM_EPERM, "/v1/admin needs an admin key");
    return 0;
}

int api_admin_begin(struct loom_http_req *req, struct loom_db **ret_db, struct loom_err *err)
{
    struct api_caller caller;
    if (api_begin(req, false, ret_db, &caller, NULL, err) < 0 || need_admin(&caller, err) < 0)
        return -1;
    return 0;
}

void api_admin_nodes_list(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    if (api_admin_begin(req, &db, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT n.name, n.state, n.address, n.cpu_millis, n.memory_bytes, n.labels::text, "
        "n.gpus::text, n.simulated, " API_TS("n.last_heartbeat") ", " API_TS(
            "n.registered_at") ", (SELECT count(*) FROM instances i WHERE i.node_name = n.name "
                               "AND i.state IN " LOOM_LIVE_STATES_SQL
                               "), n.health_problem, n.cordoned_by "
                               "FROM nodes n WHERE n.name > $1 ORDER BY n.name",
        "");
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, "nodes", items);
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = json_object();
        api_json_set_str(o, "name", PQgetvalue(res, r, 0));
        api_json_set_str(o, "state", PQgetvalue(res, r, 1));
        api_json_set_str(o, "address", PQgetvalue(res, r, 2));
        api_json_set_int(o, "cpu_millis", PQgetvalue(res, r, 3));
        api_json_set_int(o, "memory_bytes", PQgetvalue(res, r, 4));
        json_t *labels = json_loads(PQgetvalue(res, r, 5), 0, NULL);
        json_object_set_new(o, "labels", labels ? labels : json_object());
        json_t *gpus = json_loads(PQgetvalue(res, r, 6), 0, NULL);
        json_object_set_new(o, "gpus", gpus ? gpus : json_array());
        json_object_set_new(o, "simulated", json_boolean(PQgetvalue(res, r, 7)[0] == 't'));
        api_json_set_str(o, "last_heartbeat", PQgetvalue(res, r, 8));
        api_json_set_str(o, "registered_at", PQgetvalue(res, r, 9));
        api_json_set_int(o, "instances", PQgetvalue(res, r, 10));
        json_object_set_new(o, "health_problem",
                            PQgetisnull(res, r, 11) ? json_null()
                                                    : json_string(PQgetvalue(res, r, 11)));
        json_object_set_new(o, "cordoned_by",
                            PQgetisnull(res, r, 12) ? json_null()
                                                    : json_string(PQgetvalue(res, r, 12)));
        json_array_append_new(items, o);
    }
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

/* POST /v1/admin/nodes/{name}/{cordon|uncordon|drain} */
static int node_action(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                       struct loom_err *err)
{
    if (need_admin(&ctx->caller, err) < 0)
        return -1;
    const char *name = ctx->req->params[0], *action = ctx->req->params[1];
    const char *sql;
    if (strcmp(action, "cordon") == 0)
        sql = LOOM_NODE_CORDON_SQL;
    else if (strcmp(action, "drain") == 0)
        sql = LOOM_NODE_DRAIN_SQL;
    else if (strcmp(action, "uncordon") == 0)
        sql = LOOM_NODE_UNCORDON_SQL;
    else
        return loom_err_set(err, LOOM_ENOTFOUND,
                            "no node action \"%s\" (cordon, uncordon or drain)", action);
    _cleanup_pgres_ PGresult *res = loom_db_query(ctx->db, err, sql, name);
    if (!res)
        return -1;
    if (PQntuples(res) == 0) {
        _cleanup_pgres_ PGresult *st =
            loom_db_query(ctx->db, err, "SELECT state FROM nodes WHERE name = $1", name);
        if (!st)
            return -1;
        if (PQntuples(st) == 0)
            return loom_err_set(err, LOOM_ENOTFOUND, "node \"%s\" not found", name);
        return loom_err_set(err, LOOM_ECONFLICT, "node \"%s\" is %s: cannot %s it", name,
                            PQgetvalue(st, 0, 0), action);
    }
    ctx->wake_scheduler = true;
    *ret_status = 200;
    *ret_body = json_pack("{s:s,s:s}", "name", name, "state", PQgetvalue(res, 0, 0));
    return 0;
}

void api_admin_nodes_action(struct loom_http_req *req)
{
    api_write(req, false, node_action);
}

void api_admin_keys_list(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    if (api_admin_begin(req, &db, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT k.key_id, k.role, p.name, k.description, " API_TS("k.created_at") ", " API_TS(
            "k.revoked_at") " FROM api_keys k LEFT JOIN projects p ON p.id = k.project_id "
                            "WHERE k.key_id > $1 ORDER BY k.id",
        "");
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, "keys", items);
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = json_object();
        api_json_set_str(o, "key_id", loom_db_val(res, r, 0));
        api_json_set_str(o, "role", loom_db_val(res, r, 1));
        api_json_set_str(o, "project", loom_db_val(res, r, 2));
        api_json_set_str(o, "description", loom_db_val(res, r, 3));
        api_json_set_str(o, "created_at", loom_db_val(res, r, 4));
        api_json_set_str(o, "revoked_at", loom_db_val(res, r, 5));
        json_array_append_new(items, o);
    }
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

/* POST /v1/admin/keys {"role":"admin"|"read"|"write","project"?,"description"?}:
 * the reply carries the key, the only time it is shown. */
static int key_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    if (need_admin(&ctx->caller, err) < 0)
        return -1;
    static const char *const allowed[] = {"role", "project", "description", NULL};
    const char *role = NULL, *project = NULL, *desc = "";
    if (loom_json_check_fields(ctx->body, allowed, err) < 0 ||
        loom_json_get_string(ctx->body, "role", true, 8, &role, err) < 0 ||
        loom_json_get_string(ctx->body, "project", false, 63, &project, err) < 0 ||
        loom_json_get_string(ctx->body, "description", false, 200, &desc, err) < 0)
        return -1;
    bool admin = strcmp(role, "admin") == 0;
    if (!admin && strcmp(role, "read") != 0 && strcmp(role, "write") != 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"role\": must be admin, read or write");
    if (admin == (project != NULL))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"project\": required for read and write keys, refused for "
                            "admin keys");
    _cleanup_(loom_apikey_release) struct loom_apikey k = {0};
    if (loom_apikey_mint(&k, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *res =
        loom_db_query(ctx->db, err, LOOM_APIKEY_INSERT_SQL " RETURNING " API_TS("created_at"),
                      k.key_id, k.secret_sha256_hex, project, role, desc);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"project\": project \"%s\" not found",
                            project);
    *ret_body =
        json_pack("{s:s,s:s,s:s?,s:s,s:s,s:s}", "key_id", k.key_id, "role", role, "project",
                  project, "description", desc, "created_at", PQgetvalue(res, 0, 0), "key", k.key);
    ctx->redact = "key";
    *ret_status = 201;
    return 0;
}

void api_admin_keys_create(struct loom_http_req *req)
{
    api_write(req, false, key_create);
}

static int key_revoke(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    (void)ret_body;
    if (need_admin(&ctx->caller, err) < 0)
        return -1;
    const char *id = ctx->req->params[0];
    if (strcmp(id, ctx->caller.key_id) == 0)
        return loom_err_set(err, LOOM_ECONFLICT, "a key cannot revoke itself");
    _cleanup_pgres_ PGresult *res = loom_db_query(
        ctx->db, err,
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 "
        "RETURNING 1",
        id);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "key \"%s\" not found", id);
    *ret_status = 204;
    return 0;
}

void api_admin_keys_revoke(struct loom_http_req *req)
{
    api_write(req, false, key_revoke);
}

/* The quota reply: the project's row, or nulls (no limit) when it has none. */
static int quota_reply(struct loom_db *db, const struct api_project *p, json_t **ret,
                       struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "SELECT q.cpu_millis, q.memory_bytes, q.gpus, q.instances, " API_TS(
            "q.updated_at") " FROM (SELECT 1) z LEFT JOIN project_quotas q ON q.project_id = $1",
        p->id_str);
    if (!res)
        return -1;
    json_t *o = json_object();
    api_json_set_str(o, "project", p->name);
    api_json_set_int(o, "cpu_millis", loom_db_val(res, 0, 0));
    api_json_set_int(o, "memory_bytes", loom_db_val(res, 0, 1));
    api_json_set_int(o, "gpus", loom_db_val(res, 0, 2));
    api_json_set_int(o, "instances", loom_db_val(res, 0, 3));
    api_json_set_str(o, "updated_at", loom_db_val(res, 0, 4));
    *ret = o;
    return 0;
}

/* GET /v1/admin/projects/{project}/quota */
void api_admin_quota_get(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project project;
    if (api_begin(req, true, &db, &caller, &project, &err) < 0 || need_admin(&caller, &err) < 0)
        API_FAIL(req, &err);
    json_t *out;
    if (quota_reply(db, &project, &out, &err) < 0)
        API_FAIL(req, &err);
    loom_http_reply_json(req, 200, out);
}

/* One quota member: absent or null means no limit; otherwise an integer >= 0
 * written as decimal text for the query (NULL stays NULL). */
static int quota_field(json_t *body, const char *key, long long max, char buf[24], const char **ret,
                       struct loom_err *err)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) {
        *ret = NULL;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be null or an integer from 0 to %lld", key, max);
    snprintf(buf, 24, "%lld", (long long)json_integer_value(v));
    *ret = buf;
    return 0;
}

/* PUT /v1/admin/projects/{project}/quota {"cpu_millis","memory_bytes","gpus","instances"}:
 * replaces the whole quota; a member absent or null is no limit. */
static int quota_put(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    if (need_admin(&ctx->caller, err) < 0)
        return -1;
    /* project and updated_at are read-only: allowed so that a GET reply can be PUT back */
    static const char *const allowed[] = {"cpu_millis", "memory_bytes", "gpus", "instances",
                                          "project",    "updated_at",   NULL};
    char b[4][24];
    const char *cpu, *mem, *gpus, *inst;
    if (loom_json_check_fields(ctx->body, allowed, err) < 0 ||
        quota_field(ctx->body, "cpu_millis", INT64_MAX, b[0], &cpu, err) < 0 ||
        quota_field(ctx->body, "memory_bytes", INT64_MAX, b[1], &mem, err) < 0 ||
        quota_field(ctx->body, "gpus", INT32_MAX, b[2], &gpus, err) < 0 ||
        quota_field(ctx->body, "instances", INT32_MAX, b[3], &inst, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        ctx->db, err,
        "INSERT INTO project_quotas (project_id, cpu_millis, memory_bytes, gpus, instances) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project_id) DO UPDATE SET "
        "cpu_millis = EXCLUDED.cpu_millis, memory_bytes = EXCLUDED.memory_bytes, "
        "gpus = EXCLUDED.gpus, instances = EXCLUDED.instances, updated_at = now()",
        ctx->project.id_str, cpu, mem, gpus, inst);
    if (!res)
        return -1;
    /* A raised quota may let waiting work run now. */
    ctx->wake_scheduler = true;
    *ret_status = 200;
    return quota_reply(ctx->db, &ctx->project, ret_body, err);
}

void api_admin_quota_put(struct loom_http_req *req)
{
    api_write(req, true, quota_put);
}
