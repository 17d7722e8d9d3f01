/* What the resources of a project share: list and get from one descriptor
 * per kind, and the SQL of the normalised spec columns. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"

void api_set_etag(struct loom_http_req *req, json_t *item)
{
    char etag[40];
    snprintf(etag, sizeof(etag), "\"%lld\"",
             (long long)json_integer_value(json_object_get(item, "generation")));
    loom_http_set_header(req, "ETag", etag);
}

int api_resource_load(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                      const char *name, json_t **ret, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(db, err, k->sql_get, p->id_str, name);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "%s \"%s\" not found", k->what, name);
    return k->to_json(k, db, p, res, 0, true, ret, err);
}

void api_resource_list(struct loom_http_req *req, const struct api_resource *k)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    struct api_page page;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0 || api_page_parse(req, &page, &err) < 0)
        API_FAIL(req, &err);
    char limit[24];
    snprintf(limit, sizeof(limit), "%lld", (long long)page.limit);
    const char *filter = k->filter ? loom_http_query(req, k->filter) : NULL;
    const char *params[] = {proj.id_str, page.after, limit, filter};
    _cleanup_pgres_ PGresult *res = loom_db_exec(db, k->sql_list, k->filter ? 4 : 3, params, &err);
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_t *items = json_array();
    json_object_set_new(out, k->list_key, items);
    int n = PQntuples(res);
    for (int r = 0; r < n; r++) {
        json_t *o;
        if (k->to_json(k, db, &proj, res, r, false, &o, &err) < 0)
            API_FAIL(req, &err);
        json_array_append_new(items, o);
    }
    api_page_finish(out, &page, (size_t)n, n ? PQgetvalue(res, n - 1, k->name_col) : NULL);
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

void api_resource_get(struct loom_http_req *req, const struct api_resource *k)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    json_t *out = NULL;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0 ||
        api_resource_load(k, db, &proj, req->params[1], &out, &err) < 0)
        API_FAIL(req, &err);
    if (k->etag)
        api_set_etag(req, out);
    loom_http_reply_json(req, 200, out);
}

size_t api_columns_sql(enum loom_kind k, int first, struct strbuf *names, struct strbuf *params,
                       struct strbuf *sets)
{
    const char *cols[LOOM_SPEC_MAX_COLUMNS];
    char unused[LOOM_SPEC_MAX_COLUMNS][24];
    size_t n = loom_spec_columns(k, NULL, cols, unused);
    for (size_t i = 0; i < n; i++) {
        int p = first + (int)i;
        if (names)
            strbuf_addf(names, ", %s", cols[i]);
        if (params)
            strbuf_addf(params, ", $%d::bigint", p);
        if (sets)
            strbuf_addf(sets, ", %s = $%d::bigint", cols[i], p);
    }
    return n;
}

int api_spec_params(enum loom_kind k, json_t *spec, const char *const *fixed, size_t n_fixed,
                    struct api_spec_params *ret, struct loom_err *err)
{
    _cleanup_spec_ struct loom_spec s = {0};
    if (n_fixed > API_SPEC_MAX_FIXED)
        return loom_err_set(err, LOOM_EINTERNAL, "%zu fixed parameters are too many", n_fixed);
    if (loom_spec_decode(k, spec, &s, err) < 0)
        return -1;
    struct api_spec_params p = {.text = loom_json_dumps(spec)};
    const char *cols[LOOM_SPEC_MAX_COLUMNS];
    size_t n = loom_spec_columns(k, &s, cols, p.values);
    for (size_t i = 0; i < n_fixed; i++)
        p.params[i] = fixed[i];
    p.params[n_fixed] = p.text;
    *ret = p;
    for (size_t i = 0; i < n; i++)
        ret->params[n_fixed + 1 + i] = ret->values[i];
    return (int)(n_fixed + 1 + n);
}

void api_spec_params_release(struct api_spec_params *p)
{
    free(p->text);
    p->text = NULL;
}
