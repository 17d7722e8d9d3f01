/* /v1/projects/{project}/functions: a function row holds the current spec
 * and generation, function_revisions every generation, and its code is
 * stored once per content in function_code (the spec keeps
 * "sha256:<hex>"). Calls go to the activator; the instances that serve them
 * are claimed from the agents' stem cells. /v1/function_runtimes lists what
 * an operator installed. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "instance_state.h"
#include "json.h"
#include "strbuf.h"
#include "tarball.h"
#include "util.h"

/* A bundle may unpack to this much, in this many entries. */
static const struct loom_tarball_limits bundle_limits = {64LL << 20, 10000, false};

#define FN_COLS                                                                                    \
    "f.id, f.name, f.generation, f.spec::text, " API_TS("f.created_at") ", " API_TS(               \
        "f.updated_at") ", (SELECT count(*) FROM instances i WHERE i.function_id = f.id "          \
                        "AND i.state = 'running' AND i.desired = 'run')"

enum { C_ID, C_NAME, C_GEN, C_SPEC, C_CREATED, C_UPDATED, C_RUNNING };

static int fn_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                   PGresult *res, int r, bool details, json_t **ret, struct loom_err *err)
{
    _cleanup_json_ json_t *o = NULL;
    if (api_saved_json(k, db, p, res, r, details, &o, err) < 0)
        return -1;
    const char *name = PQgetvalue(res, r, C_NAME);
    char url[1024];
    snprintf(url, sizeof(url), "%s/fns/%s/%s", api_cfg.activator_url ? api_cfg.activator_url : "",
             p->name, name);
    json_object_set_new(o, "endpoint", json_string(url));
    /* a function is ready once stored: its first call starts an instance */
    json_object_set_new(o, "status", json_string("ready"));
    json_object_set_new(o, "status_details",
                        json_pack("{s:I}", "instances_running",
                                  (json_int_t)strtoll(PQgetvalue(res, r, C_RUNNING), NULL, 10)));
    *ret = TAKE_PTR(o);
    return 0;
}

static const struct api_resource fn_resource = {
    .what = "function",
    .list_key = "functions",
    .sql_get = "SELECT " FN_COLS " FROM functions f WHERE f.project_id = $1 AND f.name = $2",
    .sql_list = "SELECT " FN_COLS " FROM functions f WHERE f.project_id = $1 AND f.name > $2 "
                "ORDER BY f.name LIMIT $3",
    .name_col = C_NAME,
    .etag = true,
    .to_json = fn_json,
};

static struct api_revisioned fn_rev = {
    .kind = LOOM_KIND_FUNCTION,
    .table = "functions",
    .rev_table = "function_revisions",
    .owner_col = "function_id",
    .shared = {"runtime", "code_sha256"},
};

/* The runtime must be installed; a deprecated one is refused for new code. */
static int check_runtime(struct api_ctx *ctx, const char *runtime, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res =
        loom_db_query(ctx->db, err,
                      "SELECT (SELECT deprecated FROM function_runtimes WHERE name = $1), "
                      "  (SELECT string_agg(name, ', ' ORDER BY name) FROM function_runtimes "
                      "   WHERE NOT deprecated)",
                      runtime);
    if (!res)
        return -1;
    if (PQgetisnull(res, 0, 0))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"runtime\": \"%s\" is not installed (installed: %s)", runtime,
                            PQgetisnull(res, 0, 1) ? "none" : PQgetvalue(res, 0, 1));
    if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"runtime\": \"%s\" is deprecated (use one of %s)", runtime,
                            PQgetisnull(res, 0, 1) ? "none" : PQgetvalue(res, 0, 1));
    return 0;
}

/* A bundle a build run made runs on a runtime of the language it was
 * detected as ("nodejs: ..."): node_modules mean nothing to Python. */
static int check_built_for(struct api_ctx *ctx, json_t *spec, const char *ref, struct loom_err *err)
{
    const char *runtime = json_string_value(json_object_get(spec, "runtime"));
    _cleanup_pgres_ PGresult *res = loom_db_query(
        ctx->db, err,
        "SELECT split_part(b.strategy, ':', 1), (SELECT language FROM function_runtimes "
        "  WHERE name = $3) FROM build_runs b WHERE b.project_id = $1 AND b.state = 'succeeded' "
        "AND b.spec->>'output_type' = 'bundle' AND b.output_digest = $2 LIMIT 1",
        ctx->project.id_str, ref, runtime);
    if (!res)
        return -1;
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 1))
        return 0; /* not a build's, or no such runtime (check_runtime says so) */
    const char *built = PQgetvalue(res, 0, 0), *language = PQgetvalue(res, 0, 1);
    if (strcmp(built, language) != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"code_reference\": the bundle was built from %s source, and "
                            "runtime \"%s\" runs %s",
                            built, runtime, language);
    return 0;
}

/* Stores the code of spec's code_reference and replaces it with the content
 * it was stored under ("sha256:<hex>"), with code_binary saying whether it
 * is a bundle. A reference already in that form must be code this project's
 * functions use, or the bundle a build run of this project made. *ret_sha
 * is its hex. */
static int store_code(struct api_ctx *ctx, json_t *spec, char ret_sha[65], struct loom_err *err)
{
    const char *ref = json_string_value(json_object_get(spec, "code_reference"));
    if (strncmp(ref, "sha256:", 7) == 0) {
        _cleanup_pgres_ PGresult *own = loom_db_query(
            ctx->db, err,
            "SELECT c.is_bundle FROM function_code c WHERE c.sha256 = $2 AND (EXISTS ("
            "  SELECT 1 FROM function_revisions r JOIN functions f ON f.id = r.function_id "
            "  WHERE f.project_id = $1 AND r.code_sha256 = c.sha256) OR EXISTS ("
            "  SELECT 1 FROM build_runs b WHERE b.project_id = $1 AND b.state = 'succeeded' "
            "  AND b.spec->>'output_type' = 'bundle' AND b.output_digest = 'sha256:' || "
            "  c.sha256))",
            ctx->project.id_str, ref + 7);
        if (!own)
            return -1;
        if (PQntuples(own) == 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"code_reference\": \"%.80s\" is neither code of this "
                                "project's functions nor a bundle one of its build runs made "
                                "(give the code as a data: URL)",
                                ref);
        if (check_built_for(ctx, spec, ref, err) < 0)
            return -1;
        snprintf(ret_sha, 65, "%s", ref + 7);
        json_object_set_new(spec, "code_binary", json_boolean(*PQgetvalue(own, 0, 0) == 't'));
        return 0;
    }
    _cleanup_free_ uint8_t *code = NULL;
    size_t len;
    bool binary;
    if (loom_spec_code_decode(ref, &code, &len, &binary, err) < 0)
        return loom_err_wrap(err, "field \"code_reference\"");
    if (binary && loom_tarball_check(code, len, &bundle_limits, NULL, err) < 0)
        return loom_err_wrap(err, "field \"code_reference\": the bundle");
    /* one file is source text: the runtime gets it as a JSON string */
    _cleanup_json_ json_t *text = binary ? NULL : json_stringn((const char *)code, len);
    if (!binary && (!text || memchr(code, 0, len)))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"code_reference\": the code is not UTF-8 text (give a "
                            "bundle as application/gzip)");
    loom_sha256_hex(code, len, ret_sha);
    _cleanup_free_ char *hex = loom_hex_alloc(code, len);
    _cleanup_pgres_ PGresult *ins =
        loom_db_query(ctx->db, err,
                      "INSERT INTO function_code (sha256, is_bundle, data) "
                      "VALUES ($1, $2, decode($3, 'hex')) ON CONFLICT (sha256) DO NOTHING",
                      ret_sha, binary ? "t" : "f", hex);
    if (!ins)
        return -1;
    char stored[72];
    snprintf(stored, sizeof(stored), "sha256:%s", ret_sha);
    json_object_set_new(spec, "code_reference", json_string(stored));
    json_object_set_new(spec, "code_binary", json_boolean(binary));
    return 0;
}

static int fn_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name;
    _cleanup_json_ json_t *spec = NULL;
    char sha[65];
    if (api_body_name(ctx->body, &name, err) < 0 ||
        loom_spec_validate(LOOM_KIND_FUNCTION, ctx->body, false, &spec, err) < 0 ||
        check_runtime(ctx, json_string_value(json_object_get(spec, "runtime")), err) < 0 ||
        store_code(ctx, spec, sha, err) < 0)
        return -1;
    const char *shared[] = {json_string_value(json_object_get(spec, "runtime")), sha};
    char id[24];
    _cleanup_json_ json_t *out = NULL;
    if (api_rev_insert(ctx, &fn_rev, "function", name, NULL, shared, spec, id, err) < 0 ||
        api_resource_load(&fn_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, "function", "created", name, out, err) < 0)
        return -1;
    loom_http_set_header(ctx->req, "ETag", "\"1\"");
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_functions_create(struct loom_http_req *req)
{
    api_write(req, true, fn_create);
}

/* PATCH .../functions/{name}: a change makes a new generation; calls in
 * flight finish on the instances of theirs. */
static int fn_update(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_api_patch_ struct api_patch p = {0};
    char sha[65];
    if (api_patch_spec(ctx, LOOM_KIND_FUNCTION,
                       "SELECT id, generation, spec::text FROM functions WHERE project_id = $1 "
                       "AND name = $2 FOR UPDATE",
                       &p, err) < 0 ||
        check_runtime(ctx, json_string_value(json_object_get(p.spec, "runtime")), err) < 0 ||
        store_code(ctx, p.spec, sha, err) < 0)
        return -1;
    /* new code under an old reference is no change: compare after storing */
    const char *text = PQgetvalue(p.row, 0, 2);
    _cleanup_json_ json_t *old = loom_json_parse_object(text, strlen(text), err);
    if (!old)
        return -1;
    if (!json_equal(old, p.spec)) {
        const char *shared[] = {json_string_value(json_object_get(p.spec, "runtime")), sha};
        if (api_rev_update(ctx, &fn_rev, PQgetvalue(p.row, 0, 0), shared, p.spec, err) < 0)
            return -1;
        ctx->wake_scheduler = true;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&fn_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        (ctx->wake_scheduler && api_event(ctx, "function", "updated", name, out, err) < 0))
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_functions_update(struct loom_http_req *req)
{
    api_write(req, true, fn_update);
}

void api_functions_list(struct loom_http_req *req)
{
    api_resource_list(req, &fn_resource);
}

void api_functions_get(struct loom_http_req *req)
{
    api_resource_get(req, &fn_resource);
}

/* The function goes at once; its instances are told to stop (they keep
 * their claim, so that no other function ever gets them). */
static int fn_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    (void)ret_body;
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *fn = loom_db_query(
        ctx->db, err, "SELECT id FROM functions WHERE project_id = $1 AND name = $2 FOR UPDATE",
        ctx->project.id_str, name);
    if (!fn)
        return -1;
    if (PQntuples(fn) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "function \"%s\" not found", name);
    _cleanup_pgres_ PGresult *stop = loom_db_query(
        ctx->db, err,
        "UPDATE instances SET desired = 'stop', reason = 'function deleted', updated_at = now() "
        "WHERE function_id = $1 AND desired = 'run' AND state IN " LOOM_LIVE_STATES_SQL,
        PQgetvalue(fn, 0, 0));
    _cleanup_pgres_ PGresult *del =
        stop ? loom_db_query(ctx->db, err, "DELETE FROM functions WHERE id = $1",
                             PQgetvalue(fn, 0, 0))
             : NULL;
    if (!del || api_event(ctx, "function", "deleted", name, NULL, err) < 0)
        return -1;
    ctx->wake_scheduler = PQntuples(stop) > 0;
    *ret_status = 204;
    return 0;
}

void api_functions_delete(struct loom_http_req *req)
{
    api_write(req, true, fn_delete);
}

/* GET .../functions/{name}/activations: newest first, ?limit= (100) and
 * ?before=<started_at of the last one seen>. */
void api_functions_activations(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    struct api_page page;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0 || api_page_parse(req, &page, &err) < 0)
        API_FAIL(req, &err);
    const char *name = req->params[1];
    char limit[24];
    snprintf(limit, sizeof(limit), "%lld", (long long)page.limit);
    /* the page token is the last activation's id */
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT a.id, a.generation, a.instance_id, " API_TS(
            "a.started_at") ", a.duration_us, a.billed_ms, a.memory_bytes, a.status, "
                            "a.http_status, a.cold, f.id "
                            "FROM functions f LEFT JOIN function_activations a ON "
                            "a.function_id = f.id AND ($3 = '' OR (a.started_at, a.id) < "
                            "(SELECT started_at, id FROM function_activations WHERE id::text = "
                            "$3)) "
                            "WHERE f.project_id = $1 AND f.name = $2 "
                            "ORDER BY a.started_at DESC, a.id DESC LIMIT $4",
        proj.id_str, name, page.after, limit);
    if (!res)
        API_FAIL(req, &err);
    if (PQntuples(res) == 0) {
        loom_err_set(&err, LOOM_ENOTFOUND, "function \"%s\" not found", name);
        API_FAIL(req, &err);
    }
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, "activations", items);
    int n = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        if (PQgetisnull(res, r, 0))
            continue; /* the function has none (left join) */
        json_t *o = json_object();
        api_json_set_str(o, "id", loom_db_val(res, r, 0));
        api_json_set_str(o, "function_name", name);
        api_json_set_int(o, "generation", loom_db_val(res, r, 1));
        api_json_set_str(o, "instance_id", loom_db_val(res, r, 2));
        api_json_set_str(o, "started_at", loom_db_val(res, r, 3));
        json_object_set_new(o, "duration_ms",
                            json_real((double)strtoll(PQgetvalue(res, r, 4), NULL, 10) / 1000.0));
        api_json_set_int(o, "billed_duration_ms", loom_db_val(res, r, 5));
        api_json_set_int(o, "memory_bytes", loom_db_val(res, r, 6));
        api_json_set_str(o, "status", loom_db_val(res, r, 7));
        api_json_set_int(o, "http_status", loom_db_val(res, r, 8));
        json_object_set_new(o, "cold", json_boolean(*PQgetvalue(res, r, 9) == 't'));
        json_array_append_new(items, o);
        n++;
    }
    api_page_finish(out, &page, (size_t)n, n ? PQgetvalue(res, PQntuples(res) - 1, 0) : NULL);
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

/* GET /v1/function_runtimes: what an operator installed, for any key. */
void api_function_runtimes(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    if (api_begin(req, false, &db, &caller, NULL, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_pgres_ PGresult *res = loom_db_exec(
        db, "SELECT name, language, is_default, deprecated FROM function_runtimes ORDER BY name", 0,
        NULL, &err);
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, "function_runtimes", items);
    for (int r = 0; r < PQntuples(res); r++)
        json_array_append_new(items, json_pack("{s:s,s:s,s:b,s:b}", "name", PQgetvalue(res, r, 0),
                                               "family", PQgetvalue(res, r, 1), "default",
                                               *PQgetvalue(res, r, 2) == 't', "deprecated",
                                               *PQgetvalue(res, r, 3) == 't'));
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}
