/* What the resources of a project share: list and get from one descriptor
 * per kind, the SQL of the normalised spec columns, and the writes of the
 * kinds kept with revisions. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "config.h"
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

PGresult *api_find(struct loom_db *db, const struct api_project *p, const char *sql,
                   const char *what, const char *name, struct loom_err *err)
{
    PGresult *res = loom_db_query(db, err, sql, p->id_str, name);
    if (res && PQntuples(res) == 0) {
        PQclear(res);
        loom_err_set(err, LOOM_ENOTFOUND, "%s \"%s\" not found", what, name);
        return NULL;
    }
    return res;
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

int api_log_limit(struct loom_http_req *req, char ret[24], struct loom_err *err)
{
    const char *s = loom_http_query(req, "limit");
    int64_t limit = 1000;
    if (s && loom_parse_int(s, 1, 10000, &limit) < 0)
        return loom_err_set(err, LOOM_EINVAL, "query parameter \"limit\": must be 1 to 10000");
    snprintf(ret, 24, "%lld", (long long)limit);
    return 0;
}

int api_log_cursor_parse(const char *after, struct api_log_cursor *ret, struct loom_err *err)
{
    *ret = (struct api_log_cursor){0};
    if (!after || !*after)
        return 0;
    char *save = NULL;
    if (api_page_token_decode(after, ret->buf, sizeof(ret->buf)) < 0 ||
        !(ret->ts = strtok_r(ret->buf, "|", &save)) || !(ret->src = strtok_r(NULL, "|", &save)) ||
        !(ret->seq = strtok_r(NULL, "|", &save)))
        return loom_err_set(err, LOOM_EINVAL,
                            "query parameter \"after\": not a cursor from \"next\"");
    return 0;
}

void api_log_cursor_next(json_t *out, PGresult *res, int col, const char *after)
{
    int n = PQntuples(res);
    if (n == 0) {
        json_object_set_new(out, "next", json_string(after ? after : ""));
        return;
    }
    char c[160];
    snprintf(c, sizeof(c), "%s|%s|%s", PQgetvalue(res, n - 1, col), PQgetvalue(res, n - 1, col + 1),
             PQgetvalue(res, n - 1, col + 2));
    _cleanup_free_ char *tok = api_page_token(c);
    json_object_set_new(out, "next", json_string(tok));
}

static size_t count(const char *const *v)
{
    size_t n = 0;
    while (v[n])
        n++;
    return n;
}

/* ", a, b" of names; ", $first, $first+1" into params (sets: ", a = $first"). */
static void fixed_sql(const char *const *names, int first, struct strbuf *cols,
                      struct strbuf *params, struct strbuf *sets)
{
    for (size_t i = 0; names[i]; i++) {
        if (cols)
            strbuf_addf(cols, ", %s", names[i]);
        if (params)
            strbuf_addf(params, ", $%d", first + (int)i);
        if (sets)
            strbuf_addf(sets, ", %s = $%d", names[i], first + (int)i);
    }
}

static pthread_mutex_t rev_lock = PTHREAD_MUTEX_INITIALIZER;

static void rev_build(struct api_revisioned *r)
{
    pthread_mutex_lock(&rev_lock);
    if (r->sql_insert) {
        pthread_mutex_unlock(&rev_lock);
        return;
    }
    int n_only = (int)count(r->insert_only), n_shared = (int)count(r->shared);
    struct strbuf sql = STRBUF_INIT, cols = STRBUF_INIT, params = STRBUF_INIT, sets = STRBUF_INIT;

    /* INSERT: $1 project, $2 name, insert_only, shared, spec, the columns */
    int spec_at = 3 + n_only + n_shared;
    fixed_sql(r->insert_only, 3, &cols, &params, NULL);
    fixed_sql(r->shared, 3 + n_only, &cols, &params, NULL);
    strbuf_addstr(&cols, ", spec");
    strbuf_addf(&params, ", $%d::jsonb", spec_at);
    api_columns_sql(r->kind, spec_at + 1, &cols, &params, NULL);
    strbuf_addf(&sql, "INSERT INTO %s (project_id, name%s) VALUES ($1, $2%s) RETURNING id",
                r->table, cols.buf, params.buf);
    r->sql_insert = strbuf_detach(&sql, NULL);

    /* UPDATE: $1 id, shared, spec, the columns */
    spec_at = 2 + n_shared;
    fixed_sql(r->shared, 2, NULL, NULL, &sets);
    strbuf_addf(&sets, ", spec = $%d::jsonb", spec_at);
    api_columns_sql(r->kind, spec_at + 1, NULL, NULL, &sets);
    strbuf_addf(&sql,
                "UPDATE %s SET generation = generation + 1, updated_at = now()%s WHERE id = $1 "
                "RETURNING generation",
                r->table, sets.buf);
    r->sql_update = strbuf_detach(&sql, NULL);

    /* revision: $1 id, $2 generation, shared, spec, the columns */
    strbuf_reset(&cols);
    strbuf_reset(&params);
    spec_at = 3 + n_shared;
    fixed_sql(r->shared, 3, &cols, &params, NULL);
    strbuf_addstr(&cols, ", spec");
    strbuf_addf(&params, ", $%d::jsonb", spec_at);
    api_columns_sql(r->kind, spec_at + 1, &cols, &params, NULL);
    strbuf_addf(&sql, "INSERT INTO %s (%s, generation%s) VALUES ($1, $2%s)", r->rev_table,
                r->owner_col, cols.buf, params.buf);
    r->sql_revision = strbuf_detach(&sql, NULL);
    strbuf_release(&cols);
    strbuf_release(&params);
    strbuf_release(&sets);
    pthread_mutex_unlock(&rev_lock);
}

/* Runs one of r's statements: the fixed values a then b, then spec. */
static PGresult *rev_exec(struct api_ctx *ctx, struct api_revisioned *r, const char *sql,
                          const char *const *a, size_t n_a, const char *const *b, size_t n_b,
                          json_t *spec, struct loom_err *err)
{
    const char *fixed[API_SPEC_MAX_FIXED];
    if (n_a + n_b > API_SPEC_MAX_FIXED) {
        loom_err_set(err, LOOM_EINTERNAL, "%zu fixed values are too many", n_a + n_b);
        return NULL;
    }
    memcpy(fixed, a, n_a * sizeof(*a));
    if (n_b)
        memcpy(fixed + n_a, b, n_b * sizeof(*b));
    _cleanup_spec_params_ struct api_spec_params sp = {0};
    int n = api_spec_params(r->kind, spec, fixed, n_a + n_b, &sp, err);
    if (n < 0)
        return NULL;
    return loom_db_exec(ctx->db, sql, n, sp.params, err);
}

static int rev_record(struct api_ctx *ctx, struct api_revisioned *r, const char *id,
                      const char *gen, const char *const *shared, json_t *spec,
                      struct loom_err *err)
{
    const char *head[] = {id, gen};
    _cleanup_pgres_ PGresult *res =
        rev_exec(ctx, r, r->sql_revision, head, 2, shared, count(r->shared), spec, err);
    return res ? 0 : -1;
}

int api_rev_insert(struct api_ctx *ctx, struct api_revisioned *r, const char *what,
                   const char *name, const char *const *insert_only, const char *const *shared,
                   json_t *spec, char ret_id[24], struct loom_err *err)
{
    rev_build(r);
    size_t n_only = count(r->insert_only);
    const char *head[2 + API_REV_MAX_FIXED] = {ctx->project.id_str, name};
    if (n_only)
        memcpy(head + 2, insert_only, n_only * sizeof(*insert_only));
    _cleanup_pgres_ PGresult *ins =
        rev_exec(ctx, r, r->sql_insert, head, 2 + n_only, shared, count(r->shared), spec, err);
    if (!ins) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "%s \"%s\" already exists", what, name);
        return -1;
    }
    snprintf(ret_id, 24, "%s", PQgetvalue(ins, 0, 0));
    return rev_record(ctx, r, ret_id, "1", shared, spec, err);
}

int api_rev_update(struct api_ctx *ctx, struct api_revisioned *r, const char *id,
                   const char *const *shared, json_t *spec, struct loom_err *err)
{
    rev_build(r);
    _cleanup_pgres_ PGresult *upd =
        rev_exec(ctx, r, r->sql_update, &id, 1, shared, count(r->shared), spec, err);
    if (!upd)
        return -1;
    return rev_record(ctx, r, id, PQgetvalue(upd, 0, 0), shared, spec, err);
}

int api_saved_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                   PGresult *res, int r, bool details, json_t **ret, struct loom_err *err)
{
    (void)db, (void)details;
    enum { C_ID, C_NAME, C_GEN, C_SPEC, C_CREATED, C_UPDATED };
    _cleanup_json_ json_t *o = json_object();
    const char *name = PQgetvalue(res, r, C_NAME);
    api_json_set_str(o, "name", name);
    api_json_set_int(o, "id", PQgetvalue(res, r, C_ID));
    api_json_set_str(o, "project", p->name);
    api_json_set_int(o, "generation", PQgetvalue(res, r, C_GEN));
    api_json_set_str(o, "entity_tag", PQgetvalue(res, r, C_GEN));
    api_json_set_str(o, "created_at", PQgetvalue(res, r, C_CREATED));
    api_json_set_str(o, "updated_at", PQgetvalue(res, r, C_UPDATED));
    const char *text = PQgetvalue(res, r, C_SPEC);
    _cleanup_json_ json_t *spec = loom_json_parse_object(text, strlen(text), err);
    if (!spec)
        return loom_err_wrap(err, "stored spec of %s %s", k->what, name);
    json_object_update(o, spec);
    *ret = TAKE_PTR(o);
    return 0;
}

int api_saved_create(struct api_ctx *ctx, const struct api_saved *k, int *ret_status,
                     json_t **ret_body, struct loom_err *err)
{
    const char *name, *what = loom_kind_what(k->kind);
    _cleanup_json_ json_t *spec = NULL;
    if (api_body_name(ctx->body, &name, err) < 0 ||
        loom_spec_validate(k->kind, ctx->body, false, &spec, err) < 0 ||
        (k->check && k->check(ctx, spec, err) < 0))
        return -1;
    _cleanup_free_ char *text = loom_json_dumps(spec);
    char sql[160];
    snprintf(sql, sizeof(sql), "INSERT INTO %s (project_id, name, spec) VALUES ($1, $2, $3::jsonb)",
             k->table);
    _cleanup_pgres_ PGresult *ins =
        loom_db_query(ctx->db, err, sql, ctx->project.id_str, name, text);
    if (!ins) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "%s \"%s\" already exists", what, name);
        return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(k->resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, k->event, "created", name, out, err) < 0)
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

int api_saved_update(struct api_ctx *ctx, const struct api_saved *k, int *ret_status,
                     json_t **ret_body, struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT id, generation, spec::text FROM %s WHERE project_id = $1 AND name = $2 "
             "FOR UPDATE",
             k->table);
    _cleanup_api_patch_ struct api_patch p = {0};
    if (api_patch_spec(ctx, k->kind, sql, &p, err) < 0 ||
        (k->check && k->check(ctx, p.spec, err) < 0))
        return -1;
    if (p.changed) {
        _cleanup_free_ char *text = loom_json_dumps(p.spec);
        snprintf(sql, sizeof(sql),
                 "UPDATE %s SET generation = generation + 1, spec = $2::jsonb, "
                 "updated_at = now() WHERE id = $1",
                 k->table);
        _cleanup_pgres_ PGresult *upd =
            loom_db_query(ctx->db, err, sql, PQgetvalue(p.row, 0, 0), text);
        if (!upd)
            return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(k->resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        (p.changed && api_event(ctx, k->event, "updated", name, out, err) < 0))
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

int api_saved_delete(struct api_ctx *ctx, const struct api_saved *k, int *ret_status,
                     struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    char sql[160];
    snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE project_id = $1 AND name = $2 RETURNING id",
             k->table);
    _cleanup_pgres_ PGresult *del = loom_db_query(ctx->db, err, sql, ctx->project.id_str, name);
    if (!del)
        return -1;
    if (PQntuples(del) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "%s \"%s\" not found", loom_kind_what(k->kind),
                            name);
    if (api_event(ctx, k->event, "deleted", name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}
