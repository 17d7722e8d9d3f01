/* /v1/projects/{project}/secrets and /config_maps: named maps of strings,
 * replaced whole with PUT (as in Code Engine). Secret values are encrypted
 * with AES-256-GCM under the operator's key before they reach PostgreSQL
 * and no answer of the API ever holds them: reads show the keys (the
 * data_keys column, kept in the clear for that) and the metadata. Only the
 * scheduler opens them, to hand them to containers. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"
#include "secretbox.h"
#include "strbuf.h"
#include "util.h"

/* ---- shared by secrets and config maps -------------------------------- */

struct kv_kind {
    const char *what;     /* "secret" */
    const char *list_key; /* "secrets" */
    bool secret;
    const char *sql_select; /* $1 project, $2 name */
    const char *sql_insert; /* $1 project, $2 name, $3 format, $4 keys, $5 payload */
    const char *sql_update; /* $1 id, $2 format, $3 keys, $4 payload */
    const char *sql_delete; /* $1 project, $2 name */
};

/* columns: id, name, format, generation, created, updated, payload (keys or json) */
#define SECRET_SELECT                                                                              \
    "SELECT id, name, format, generation, " API_TS("created_at") ", " API_TS(                      \
        "updated_at") ", array_to_json(data_keys)::text FROM secrets WHERE project_id = $1 AND "
#define CONFIGMAP_SELECT                                                                           \
    "SELECT id, name, 'generic', generation, " API_TS("created_at") ", " API_TS(                   \
        "updated_at") ", data::text FROM config_maps WHERE project_id = $1 AND "

static const struct kv_kind secret_kind = {
    "secret",
    "secrets",
    true,
    SECRET_SELECT "name = $2",
    "INSERT INTO secrets (project_id, name, format, data_keys, data_enc) "
    "VALUES ($1, $2, $3, $4::text[], decode($5, 'hex'))",
    "UPDATE secrets SET format = $2, data_keys = $3::text[], data_enc = decode($4, 'hex'), "
    "generation = generation + 1, updated_at = now() WHERE id = $1",
    "DELETE FROM secrets WHERE project_id = $1 AND name = $2 RETURNING id",
};

static const struct kv_kind configmap_kind = {
    "config map",
    "config_maps",
    false,
    CONFIGMAP_SELECT "name = $2",
    "INSERT INTO config_maps (project_id, name, data) "
    "SELECT $1, $2, $5::jsonb WHERE $3::text IS NOT NULL AND $4::text IS NOT NULL",
    "UPDATE config_maps SET data = $4::jsonb, generation = generation + 1, updated_at = now() "
    "WHERE id = $1 AND $2::text IS NOT NULL AND $3::text IS NOT NULL",
    "DELETE FROM config_maps WHERE project_id = $1 AND name = $2 RETURNING id",
};

static const char *kind_event(const struct kv_kind *k)
{
    return k->secret ? "secret" : "config_map";
}

/* {"K":"V"} -> a PostgreSQL text[] literal of the keys: {"K1","K2"}. */
static char *keys_literal(json_t *data)
{
    struct strbuf sb = STRBUF_INIT;
    strbuf_addch(&sb, '{');
    const char *k;
    json_t *v;
    bool first = true;
    json_object_foreach(data, k, v)
    {
        (void)v;
        strbuf_addf(&sb, "%s\"%s\"", first ? "" : ",", k); /* keys are [-._a-zA-Z0-9] */
        first = false;
    }
    strbuf_addch(&sb, '}');
    return strbuf_detach(&sb, NULL);
}

/* Builds the JSON for one row: for a secret its keys, never its values. */
static int kv_json(const struct kv_kind *k, const struct api_project *p, PGresult *res, int r,
                   json_t **ret, struct loom_err *err)
{
    _cleanup_json_ json_t *o = json_object();
    const char *name = PQgetvalue(res, r, 1);
    api_json_set_str(o, "name", name);
    api_json_set_int(o, "id", PQgetvalue(res, r, 0));
    api_json_set_str(o, "project", p->name);
    if (k->secret)
        api_json_set_str(o, "format", PQgetvalue(res, r, 2));
    api_json_set_int(o, "generation", PQgetvalue(res, r, 3));
    api_json_set_str(o, "entity_tag", PQgetvalue(res, r, 3));
    api_json_set_str(o, "created_at", PQgetvalue(res, r, 4));
    api_json_set_str(o, "updated_at", PQgetvalue(res, r, 5));
    const char *payload = PQgetvalue(res, r, 6);
    if (k->secret) {
        json_t *keys = json_loads(payload, 0, NULL);
        json_object_set_new(o, "data_keys", json_is_array(keys) ? keys : json_array());
        if (keys && !json_is_array(keys))
            json_decref(keys);
        *ret = TAKE_PTR(o);
        return 0;
    }
    _cleanup_json_ json_t *data = loom_json_parse_object(payload, strlen(payload), err);
    if (!data)
        return loom_err_wrap(err, "stored config map %s", name);
    json_t *keys = json_array();
    const char *key;
    json_t *v;
    json_object_foreach(data, key, v)
    {
        (void)v;
        json_array_append_new(keys, json_string(key));
    }
    json_object_set_new(o, "data_keys", keys);
    json_object_set(o, "data", data);
    *ret = TAKE_PTR(o);
    return 0;
}

static int kv_row_json(const struct api_resource *res_kind, struct loom_db *db,
                       const struct api_project *p, PGresult *res, int r, bool details,
                       json_t **ret, struct loom_err *err)
{
    (void)db, (void)details;
    return kv_json(res_kind->arg, p, res, r, ret, err);
}

static const struct api_resource secret_resource = {
    .what = "secret",
    .list_key = "secrets",
    .sql_get = SECRET_SELECT "name = $2",
    .sql_list = SECRET_SELECT "name > $2 ORDER BY name LIMIT $3",
    .name_col = 1,
    .etag = true,
    .to_json = kv_row_json,
    .arg = &secret_kind,
};

static const struct api_resource configmap_resource = {
    .what = "config map",
    .list_key = "config_maps",
    .sql_get = CONFIGMAP_SELECT "name = $2",
    .sql_list = CONFIGMAP_SELECT "name > $2 ORDER BY name LIMIT $3",
    .name_col = 1,
    .etag = true,
    .to_json = kv_row_json,
    .arg = &configmap_kind,
};

static int kv_load(const struct kv_kind *k, struct loom_db *db, const struct api_project *p,
                   const char *name, json_t **ret, struct loom_err *err)
{
    return api_resource_load(k->secret ? &secret_resource : &configmap_resource, db, p, name, ret,
                             err);
}

/* Validates a create (name required) or replace body into format and the
 * payload to store (hex ciphertext or JSON text). */
static int kv_body(const struct kv_kind *k, struct api_ctx *ctx, const char *name,
                   const char *default_format, const char **ret_format, char **ret_keys,
                   char **ret_payload, struct loom_err *err)
{
    static const char *const secret_fields[] = {"name", "format", "data", NULL};
    static const char *const cm_fields[] = {"name", "data", NULL};
    if (loom_json_check_fields(ctx->body, k->secret ? secret_fields : cm_fields, err) < 0)
        return -1;
    const char *format = default_format;
    if (k->secret && loom_json_get_string(ctx->body, "format", false, 16, &format, err) < 0)
        return -1;
    _cleanup_json_ json_t *data = NULL;
    if (api_data_map(ctx->body, &data, err) < 0 ||
        (k->secret && api_secret_data(format, data, err) < 0))
        return -1;
    _cleanup_free_ char *text = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text)
        return loom_err_set(err, LOOM_EINTERNAL, "could not encode data");
    _cleanup_free_ char *keys = keys_literal(data);
    if (k->secret) {
        char aad[160];
        loom_secretbox_aad(ctx->project.id_str, name, aad, sizeof(aad));
        _cleanup_free_ unsigned char *sealed = NULL;
        size_t n;
        int rc = loom_secretbox_seal(text, strlen(text), aad, &sealed, &n, err);
        explicit_bzero(text, strlen(text));
        if (rc < 0)
            return -1;
        char *hex = malloc(2 * n + 1);
        if (!hex)
            return loom_err_set(err, LOOM_EINTERNAL, "out of memory");
        loom_hex(sealed, n, hex);
        *ret_payload = hex;
    } else {
        *ret_payload = TAKE_PTR(text);
    }
    *ret_format = format;
    *ret_keys = TAKE_PTR(keys);
    return 0;
}

static int kv_create(const struct kv_kind *k, struct api_ctx *ctx, int *ret_status,
                     json_t **ret_body, struct loom_err *err)
{
    const char *name, *format;
    _cleanup_free_ char *keys = NULL, *payload = NULL;
    if (api_body_name(ctx->body, &name, err) < 0 ||
        kv_body(k, ctx, name, "generic", &format, &keys, &payload, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *ins = loom_db_query(ctx->db, err, k->sql_insert, ctx->project.id_str,
                                                  name, format, keys, payload);
    if (!ins) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "%s \"%s\" already exists", k->what, name);
        return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (kv_load(k, ctx->db, &ctx->project, name, &out, err) < 0)
        return -1;
    _cleanup_json_ json_t *ev =
        json_pack("{s:s,s:O}", "name", name, "data_keys", json_object_get(out, "data_keys"));
    if (api_event(ctx, kind_event(k), "created", name, ev, err) < 0)
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

static int kv_replace(const struct kv_kind *k, struct api_ctx *ctx, int *ret_status,
                      json_t **ret_body, struct loom_err *err)
{
    const char *name = ctx->req->params[1], *given = NULL;
    if (loom_json_get_string(ctx->body, "name", false, 63, &given, err) < 0)
        return -1;
    if (given && strcmp(given, name) != 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"name\": does not match the path");
    _cleanup_pgres_ PGresult *cur =
        loom_db_query(ctx->db, err, k->sql_select, ctx->project.id_str, name);
    if (!cur)
        return -1;
    if (PQntuples(cur) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "%s \"%s\" not found", k->what, name);
    if (api_check_if_match(ctx->req, k->what, name, PQgetvalue(cur, 0, 3), err) < 0)
        return -1;
    const char *format;
    _cleanup_free_ char *keys = NULL, *payload = NULL;
    /* PUT without "format" keeps the secret's format */
    if (kv_body(k, ctx, name, PQgetvalue(cur, 0, 2), &format, &keys, &payload, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *upd =
        loom_db_query(ctx->db, err, k->sql_update, PQgetvalue(cur, 0, 0), format, keys, payload);
    if (!upd)
        return -1;
    _cleanup_json_ json_t *out = NULL;
    if (kv_load(k, ctx->db, &ctx->project, name, &out, err) < 0)
        return -1;
    _cleanup_json_ json_t *ev =
        json_pack("{s:s,s:O}", "name", name, "data_keys", json_object_get(out, "data_keys"));
    if (api_event(ctx, kind_event(k), "updated", name, ev, err) < 0)
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

static int kv_delete(const struct kv_kind *k, struct api_ctx *ctx, int *ret_status,
                     struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *del =
        loom_db_query(ctx->db, err, k->sql_delete, ctx->project.id_str, name);
    if (!del)
        return -1;
    if (PQntuples(del) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "%s \"%s\" not found", k->what, name);
    if (api_event(ctx, kind_event(k), "deleted", name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}

/* ---- the routes ---------------------------------------------------------- */

static int secret_create(struct api_ctx *ctx, int *st, json_t **body, struct loom_err *err)
{
    return kv_create(&secret_kind, ctx, st, body, err);
}
static int secret_replace(struct api_ctx *ctx, int *st, json_t **body, struct loom_err *err)
{
    return kv_replace(&secret_kind, ctx, st, body, err);
}
static int secret_delete(struct api_ctx *ctx, int *st, json_t **body, struct loom_err *err)
{
    (void)body;
    return kv_delete(&secret_kind, ctx, st, err);
}
static int cm_create(struct api_ctx *ctx, int *st, json_t **body, struct loom_err *err)
{
    return kv_create(&configmap_kind, ctx, st, body, err);
}
static int cm_replace(struct api_ctx *ctx, int *st, json_t **body, struct loom_err *err)
{
    return kv_replace(&configmap_kind, ctx, st, body, err);
}
static int cm_delete(struct api_ctx *ctx, int *st, json_t **body, struct loom_err *err)
{
    (void)body;
    return kv_delete(&configmap_kind, ctx, st, err);
}

void api_secrets_create(struct loom_http_req *req)
{
    api_write(req, true, secret_create);
}
void api_secrets_replace(struct loom_http_req *req)
{
    api_write(req, true, secret_replace);
}
void api_secrets_delete(struct loom_http_req *req)
{
    api_write(req, true, secret_delete);
}
void api_secrets_list(struct loom_http_req *req)
{
    api_resource_list(req, &secret_resource);
}
void api_secrets_get(struct loom_http_req *req)
{
    api_resource_get(req, &secret_resource);
}
void api_configmaps_create(struct loom_http_req *req)
{
    api_write(req, true, cm_create);
}
void api_configmaps_replace(struct loom_http_req *req)
{
    api_write(req, true, cm_replace);
}
void api_configmaps_delete(struct loom_http_req *req)
{
    api_write(req, true, cm_delete);
}
void api_configmaps_list(struct loom_http_req *req)
{
    api_resource_list(req, &configmap_resource);
}
void api_configmaps_get(struct loom_http_req *req)
{
    api_resource_get(req, &configmap_resource);
}
