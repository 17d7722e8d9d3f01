/* /v1/projects/{project}/jobs: job definitions that runs refer to by
 * job_name (a run copies the job's spec when it is submitted). */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"

#define JOB_COLS "id, name, generation, spec::text, " API_TS("created_at") ", " API_TS("updated_at")

static int job_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                    PGresult *res, int r, bool details, json_t **ret, struct loom_err *err)
{
    (void)k, (void)db, (void)details;
    const char *project = p->name;
    _cleanup_json_ json_t *o = json_object();
    const char *name = PQgetvalue(res, r, 1);
    api_json_set_str(o, "name", name);
    api_json_set_int(o, "id", PQgetvalue(res, r, 0));
    api_json_set_str(o, "project", project);
    api_json_set_int(o, "generation", PQgetvalue(res, r, 2));
    api_json_set_str(o, "entity_tag", PQgetvalue(res, r, 2));
    api_json_set_str(o, "created_at", PQgetvalue(res, r, 4));
    api_json_set_str(o, "updated_at", PQgetvalue(res, r, 5));
    _cleanup_json_ json_t *spec =
        loom_json_parse_object(PQgetvalue(res, r, 3), strlen(PQgetvalue(res, r, 3)), err);
    if (!spec)
        return loom_err_wrap(err, "stored spec of job %s", name);
    json_object_update(o, spec);
    *ret = TAKE_PTR(o);
    return 0;
}

static const struct api_resource job_resource = {
    .what = "job",
    .list_key = "jobs",
    .sql_get = "SELECT " JOB_COLS " FROM jobs WHERE project_id = $1 AND name = $2",
    .sql_list = "SELECT " JOB_COLS " FROM jobs WHERE project_id = $1 AND name > $2 "
                "ORDER BY name LIMIT $3",
    .name_col = 1,
    .etag = true,
    .to_json = job_json,
};

static int job_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name;
    _cleanup_json_ json_t *spec = NULL;
    if (api_body_name(ctx->body, &name, err) < 0 ||
        loom_spec_validate(LOOM_KIND_JOB, ctx->body, false, &spec, err) < 0)
        return -1;
    _cleanup_free_ char *text = loom_json_dumps(spec);
    _cleanup_pgres_ PGresult *ins = loom_db_query(
        ctx->db, err, "INSERT INTO jobs (project_id, name, spec) VALUES ($1, $2, $3::jsonb)",
        ctx->project.id_str, name, text);
    if (!ins) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "job \"%s\" already exists", name);
        return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&job_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, "job", "created", name, out, err) < 0)
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 201;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_jobs_create(struct loom_http_req *req)
{
    api_write(req, true, job_create);
}

void api_jobs_list(struct loom_http_req *req)
{
    api_resource_list(req, &job_resource);
}

void api_jobs_get(struct loom_http_req *req)
{
    api_resource_get(req, &job_resource);
}

static int job_update(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_api_patch_ struct api_patch p = {0};
    if (api_patch_spec(ctx, LOOM_KIND_JOB,
                       "SELECT id, generation, spec::text FROM jobs WHERE project_id = $1 AND "
                       "name = $2 FOR UPDATE",
                       &p, err) < 0)
        return -1;
    json_t *spec = p.spec;
    PGresult *cur = p.row;
    bool changed = p.changed;
    if (changed) {
        _cleanup_free_ char *text = loom_json_dumps(spec);
        _cleanup_pgres_ PGresult *upd =
            loom_db_query(ctx->db, err,
                          "UPDATE jobs SET generation = generation + 1, spec = $2::jsonb, "
                          "updated_at = now() WHERE id = $1",
                          PQgetvalue(cur, 0, 0), text);
        if (!upd)
            return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&job_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        (changed && api_event(ctx, "job", "updated", name, out, err) < 0))
        return -1;
    api_set_etag(ctx->req, out);
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_jobs_update(struct loom_http_req *req)
{
    api_write(req, true, job_update);
}

/* Runs keep their own copy of the spec, so a job can go while runs remain
 * (their job_id becomes NULL). */
static int job_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    (void)ret_body;
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *del = loom_db_query(
        ctx->db, err, "DELETE FROM jobs WHERE project_id = $1 AND name = $2 RETURNING id",
        ctx->project.id_str, name);
    if (!del)
        return -1;
    if (PQntuples(del) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "job \"%s\" not found", name);
    if (api_event(ctx, "job", "deleted", name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}

void api_jobs_delete(struct loom_http_req *req)
{
    api_write(req, true, job_delete);
}
