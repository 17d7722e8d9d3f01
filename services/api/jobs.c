/* /v1/projects/{project}/jobs: job definitions that runs refer to by
 * job_name (a run copies the job's spec when it is submitted). */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"

static const struct api_resource job_resource = {
    .what = "job",
    .list_key = "jobs",
    .sql_get = "SELECT " API_SAVED_COLS " FROM jobs WHERE project_id = $1 AND name = $2",
    .sql_list = "SELECT " API_SAVED_COLS " FROM jobs WHERE project_id = $1 AND name > $2 "
                "ORDER BY name LIMIT $3",
    .name_col = 1, /* API_SAVED_COLS */
    .etag = true,
    .to_json = api_saved_json,
};

static const struct api_saved job_saved = {LOOM_KIND_JOB, "jobs", "job", &job_resource, NULL};

static int job_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body, struct loom_err *err)
{
    return api_saved_create(ctx, &job_saved, ret_status, ret_body, err);
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
    return api_saved_update(ctx, &job_saved, ret_status, ret_body, err);
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
    return api_saved_delete(ctx, &job_saved, ret_status, err);
}

void api_jobs_delete(struct loom_http_req *req)
{
    api_write(req, true, job_delete);
}
