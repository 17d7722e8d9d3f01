/* /v1/projects/{project}/job_runs: a run is one row whatever its array size;
 * the scheduler places its pending indices. The steps of build runs are job
 * runs too (build_run_id set): the builder's, never listed or touched here. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "arrayspec.h"
#include "cleanup.h"
#include "config.h"
#include "instance_state.h"
#include "json.h"
#include "util.h"

#define MAX_INDEX_DETAILS 1000

#define RUN_COLS                                                                                   \
    "r.id, r.name, r.spec::text, r.array_spec, r.array_size, r.pending::text, r.state, "           \
    "r.n_running, r.n_succeeded, r.n_failed, " API_TS("r.created_at") ", " API_TS(                 \
        "r.finished_at") ", j.name, r.waiting_reason"
#define RUN_FROM                                                                                   \
    " FROM job_runs r LEFT JOIN jobs j ON j.id = r.job_id WHERE r.build_run_id IS NULL AND "

enum {
    C_ID,
    C_NAME,
    C_SPEC,
    C_ARRAY,
    C_SIZE,
    C_PENDING,
    C_STATE,
    C_RUN,
    C_OK,
    C_FAIL,
    C_CREATED,
    C_FINISHED,
    C_JOB,
    C_WAITING
};

static int64_t ival(PGresult *res, int r, int c)
{
    return strtoll(PQgetvalue(res, r, c), NULL, 10);
}

/* Adds the per-state index lists and per-index details. */
static int add_index_details(struct loom_db *db, const char *run_id, json_t *details,
                             struct loom_err *err)
{
    static const char *const states[] = {"running", "succeeded", "failed"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(states); i++) {
        char key[32];
        snprintf(key, sizeof(key), "%s_indices", states[i]);
        json_object_set_new(details, key, json_string(""));
    }
    _cleanup_pgres_ PGresult *agg =
        loom_db_query(db, err,
                      "SELECT state, range_agg(int4range(idx, idx + 1))::text "
                      "FROM job_run_indices WHERE run_id = $1 AND state <> 'pending' "
                      "GROUP BY state",
                      run_id);
    if (!agg)
        return -1;
    for (int r = 0; r < PQntuples(agg); r++) {
        char key[32];
        snprintf(key, sizeof(key), "%s_indices", PQgetvalue(agg, r, 0));
        _cleanup_free_ char *spec = api_multirange_to_spec(PQgetvalue(agg, r, 1));
        json_object_set_new(details, key, json_string(spec));
    }
    char lim[16];
    snprintf(lim, sizeof(lim), "%d", MAX_INDEX_DETAILS + 1);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "SELECT idx, state, retries, " API_TS("started_at") ", " API_TS(
            "finished_at") ", exit_code, reason "
                           "FROM job_run_indices WHERE run_id = $1 ORDER BY idx LIMIT $2",
        run_id, lim);
    if (!res)
        return -1;
    json_t *arr = json_array();
    int n = PQntuples(res);
    for (int r = 0; r < n && r < MAX_INDEX_DETAILS; r++) {
        json_t *o = json_object();
        api_json_set_int(o, "index", loom_db_val(res, r, 0));
        api_json_set_str(o, "status", loom_db_val(res, r, 1));
        api_json_set_int(o, "retries", loom_db_val(res, r, 2));
        api_json_set_str(o, "started_at", loom_db_val(res, r, 3));
        api_json_set_str(o, "finished_at", loom_db_val(res, r, 4));
        api_json_set_int(o, "exit_code", loom_db_val(res, r, 5));
        api_json_set_str(o, "last_failure_reason", loom_db_val(res, r, 6));
        json_array_append_new(arr, o);
    }
    json_object_set_new(details, "indices_details", arr);
    if (n > MAX_INDEX_DETAILS)
        json_object_set_new(details, "indices_details_truncated", json_true());
    return 0;
}

static int run_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                    PGresult *res, int r, bool details, json_t **ret, struct loom_err *err)
{
    (void)k;
    const char *project = p->name;
    _cleanup_json_ json_t *o = json_object();
    api_json_set_str(o, "name", PQgetvalue(res, r, C_NAME));
    api_json_set_int(o, "id", PQgetvalue(res, r, C_ID));
    api_json_set_str(o, "project", project);
    api_json_set_str(o, "job_name", loom_db_val(res, r, C_JOB));
    api_json_set_str(o, "created_at", loom_db_val(res, r, C_CREATED));
    api_json_set_str(o, "finished_at", loom_db_val(res, r, C_FINISHED));
    _cleanup_json_ json_t *spec =
        loom_json_parse_object(PQgetvalue(res, r, C_SPEC), strlen(PQgetvalue(res, r, C_SPEC)), err);
    if (!spec)
        return loom_err_wrap(err, "stored spec of job run %s", PQgetvalue(res, r, C_NAME));
    json_object_update(o, spec);
    api_json_set_str(o, "scale_array_spec", PQgetvalue(res, r, C_ARRAY));
    api_json_set_str(o, "status", PQgetvalue(res, r, C_STATE));
    int64_t size = ival(res, r, C_SIZE), running = ival(res, r, C_RUN), ok = ival(res, r, C_OK),
            failed = ival(res, r, C_FAIL);
    json_t *d = json_object();
    json_object_set_new(o, "status_details", d);
    json_object_set_new(d, "requested", json_integer(size));
    json_object_set_new(d, "pending", json_integer(size - running - ok - failed));
    json_object_set_new(d, "running", json_integer(running));
    json_object_set_new(d, "succeeded", json_integer(ok));
    json_object_set_new(d, "failed", json_integer(failed));
    _cleanup_free_ char *pend = api_multirange_to_spec(PQgetvalue(res, r, C_PENDING));
    json_object_set_new(d, "pending_indices", json_string(pend));
    /* why pending indices are not placed (set by the scheduler), or null */
    api_json_set_str(d, "waiting_reason", loom_db_val(res, r, C_WAITING));
    if (details && add_index_details(db, PQgetvalue(res, r, C_ID), d, err) < 0)
        return -1;
    *ret = TAKE_PTR(o);
    return 0;
}

static const struct api_resource run_resource = {
    .what = "job run",
    .list_key = "job_runs",
    .sql_get = "SELECT " RUN_COLS RUN_FROM "r.project_id = $1 AND r.name = $2",
    .sql_list = "SELECT " RUN_COLS RUN_FROM "r.project_id = $1 AND r.name > $2 "
                "AND ($4::text IS NULL OR j.name = $4) ORDER BY r.name LIMIT $3",
    .filter = "job_name",
    .name_col = C_NAME,
    .to_json = run_json,
};

static char *sql_insert;
static pthread_once_t sql_once = PTHREAD_ONCE_INIT;

static void build_sql(void)
{
    struct strbuf sb = STRBUF_INIT, names = STRBUF_INIT, params = STRBUF_INIT;
    /* $1-$9 as below, $10 the spec, then the spec's columns */
    api_columns_sql(LOOM_KIND_JOBRUN, 11, &names, &params, NULL);
    strbuf_addf(&sb,
                "INSERT INTO job_runs (project_id, name, job_id, array_spec, array_size, pending, "
                "parallelism, retry_limit, max_execution_seconds, spec%s) "
                "VALUES ($1, $2, $3, $4, $5, $6::int4multirange, $7, $8, $9, $10::jsonb%s) "
                "RETURNING id",
                names.buf, params.buf);
    sql_insert = strbuf_detach(&sb, NULL);
    strbuf_release(&names);
    strbuf_release(&params);
}

/* Inserts a run with a complete spec over indices and returns its JSON. */
static int insert_run(struct api_ctx *ctx, const char *name, const char *job_id, json_t *spec,
                      const struct loom_arrayspec *indices, json_t **ret, struct loom_err *err)
{
    pthread_once(&sql_once, build_sql);
    _cleanup_free_ char *canon = loom_arrayspec_format(indices);
    _cleanup_free_ char *multirange = loom_arrayspec_to_multirange(indices);
    if (!canon || !multirange)
        return loom_err_set(err, LOOM_EINTERNAL, "could not format the array spec");
    /* the indices live in their columns; the spec says how each one runs */
    json_object_del(spec, "scale_array_spec");
    char size[24], par[24], retry[24], maxexec[24];
    snprintf(size, sizeof(size), "%lld", (long long)indices->count);
    snprintf(par, sizeof(par), "%lld",
             (long long)json_integer_value(json_object_get(spec, "parallelism")));
    snprintf(retry, sizeof(retry), "%lld",
             (long long)json_integer_value(json_object_get(spec, "scale_retry_limit")));
    snprintf(maxexec, sizeof(maxexec), "%lld",
             (long long)json_integer_value(json_object_get(spec, "scale_max_execution_time")));
    const char *fixed[] = {ctx->project.id_str, name, job_id, canon,  size,
                           multirange,          par,  retry,  maxexec};
    _cleanup_spec_params_ struct api_spec_params sp = {0};
    int n = api_spec_params(LOOM_KIND_JOBRUN, spec, fixed, LOOM_ARRAY_SIZE(fixed), &sp, err);
    if (n < 0)
        return -1;
    _cleanup_pgres_ PGresult *ins = loom_db_exec(ctx->db, sql_insert, n, sp.params, err);
    if (!ins) {
        if (err->code == LOOM_ECONFLICT)
            loom_err_set(err, LOOM_ECONFLICT, "job run \"%s\" already exists", name);
        return -1;
    }
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&run_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, "job_run", "created", name, out, err) < 0)
        return -1;
    ctx->wake_scheduler = true;
    *ret = TAKE_PTR(out);
    return 0;
}

static int jobrun_create(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                         struct loom_err *err)
{
    const char *name;
    if (api_body_name(ctx->body, &name, err) < 0)
        return -1;
    const char *job_name = NULL;
    if (loom_json_get_string(ctx->body, "job_name", false, 63, &job_name, err) < 0)
        return -1;
    _cleanup_json_ json_t *job_spec = NULL;
    const char *job_id = NULL;
    _cleanup_pgres_ PGresult *job = NULL;
    if (job_name) {
        job = loom_db_query(ctx->db, err,
                            "SELECT id, spec::text FROM jobs WHERE project_id = $1 AND name = $2",
                            ctx->project.id_str, job_name);
        if (!job)
            return -1;
        if (PQntuples(job) == 0)
            return loom_err_set(err, LOOM_ENOTFOUND, "field \"job_name\": job \"%s\" not found",
                                job_name);
        job_id = PQgetvalue(job, 0, 0);
        job_spec =
            loom_json_parse_object(PQgetvalue(job, 0, 1), strlen(PQgetvalue(job, 0, 1)), err);
        if (!job_spec)
            return -1;
    }
    _cleanup_json_ json_t *spec = NULL;
    _cleanup_arrayspec_ struct loom_arrayspec indices = {0};
    if (loom_spec_jobrun(job_spec, ctx->body, &spec, &indices, err) < 0 ||
        insert_run(ctx, name, job_id, spec, &indices, ret_body, err) < 0)
        return -1;
    *ret_status = 201;
    return 0;
}

void api_jobruns_create(struct loom_http_req *req)
{
    api_write(req, true, jobrun_create);
}

/* POST .../job_runs/{name}/resubmit {"name"?, "scale_array_spec"?}: a new
 * run with the old one's spec, over the given indices or else the old run's
 * failed ones. */
static int jobrun_resubmit(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                           struct loom_err *err)
{
    static const char *const allowed[] = {"name", "scale_array_spec", NULL};
    const char *old = ctx->req->params[1], *name = NULL, *indices = NULL;
    if (loom_json_check_fields(ctx->body, allowed, err) < 0 ||
        loom_json_get_string(ctx->body, "scale_array_spec", false, 65536, &indices, err) < 0)
        return -1;
    if (json_object_get(ctx->body, "name") && api_body_name(ctx->body, &name, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *run = loom_db_query(
        ctx->db, err,
        "SELECT r.spec::text, r.job_id, (SELECT range_agg(int4range(idx, idx + 1))::text "
        "FROM job_run_indices WHERE run_id = r.id AND state = 'failed') "
        "FROM job_runs r WHERE r.project_id = $1 AND r.name = $2 AND r.build_run_id IS NULL",
        ctx->project.id_str, old);
    if (!run)
        return -1;
    if (PQntuples(run) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "job run \"%s\" not found", old);
    _cleanup_free_ char *failed = api_multirange_to_spec(loom_db_val(run, 0, 2));
    if (!indices && !*failed)
        return loom_err_set(err, LOOM_ECONFLICT,
                            "job run \"%s\" has no failed indices to resubmit (give "
                            "scale_array_spec to choose indices)",
                            old);
    _cleanup_json_ json_t *spec =
        loom_json_parse_object(PQgetvalue(run, 0, 0), strlen(PQgetvalue(run, 0, 0)), err);
    if (!spec)
        return -1;
    _cleanup_arrayspec_ struct loom_arrayspec as = {0};
    if (loom_arrayspec_parse(indices ? indices : failed, LOOM_ARRAY_MAX_COUNT, &as, err) < 0)
        return loom_err_wrap(err, "field \"scale_array_spec\"");
    char gen[64];
    if (!name) {
        unsigned char rnd[3];
        char hex[7];
        if (loom_random_bytes(rnd, sizeof(rnd), err) < 0)
            return -1;
        loom_hex(rnd, sizeof(rnd), hex);
        snprintf(gen, sizeof(gen), "%.48s-%s", old, hex);
        name = gen;
    }
    if (insert_run(ctx, name, loom_db_val(run, 0, 1), spec, &as, ret_body, err) < 0)
        return -1;
    *ret_status = 201;
    return 0;
}

void api_jobruns_resubmit(struct loom_http_req *req)
{
    api_write(req, true, jobrun_resubmit);
}

/* Tells a run's live instances to stop; returns how many. */
static int stop_run_instances(struct api_ctx *ctx, const char *run_id, int *ret_n,
                              struct loom_err *err)
{
    _cleanup_pgres_ PGresult *live = loom_db_query(
        ctx->db, err,
        "UPDATE instances SET desired = 'stop', updated_at = now() WHERE job_run_id = $1 "
        "AND state IN " LOOM_LIVE_STATES_SQL " RETURNING id",
        run_id);
    if (!live)
        return -1;
    *ret_n = PQntuples(live);
    if (*ret_n > 0)
        ctx->wake_scheduler = true;
    return 0;
}

static int lock_run(struct api_ctx *ctx, const char *name, PGresult **ret, struct loom_err *err)
{
    PGresult *run =
        loom_db_query(ctx->db, err,
                      "SELECT id, state FROM job_runs WHERE project_id = $1 AND name = $2 "
                      "AND build_run_id IS NULL FOR UPDATE",
                      ctx->project.id_str, name);
    if (!run)
        return -1;
    if (PQntuples(run) == 0) {
        PQclear(run);
        return loom_err_set(err, LOOM_ENOTFOUND, "job run \"%s\" not found", name);
    }
    *ret = run;
    return 0;
}

static int jobrun_cancel(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                         struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *run = NULL;
    if (lock_run(ctx, name, &run, err) < 0)
        return -1;
    const char *state = PQgetvalue(run, 0, 1);
    if (strcmp(state, "pending") != 0 && strcmp(state, "running") != 0)
        return loom_err_set(err, LOOM_ECONFLICT, "job run \"%s\" is already %s", name, state);
    int n;
    if (stop_run_instances(ctx, PQgetvalue(run, 0, 0), &n, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *upd = loom_db_query(
        ctx->db, err,
        "UPDATE job_runs SET state = 'cancelled', pending = '{}', updated_at = now(), "
        "finished_at = now() WHERE id = $1",
        PQgetvalue(run, 0, 0));
    if (!upd)
        return -1;
    _cleanup_json_ json_t *out = NULL;
    if (api_resource_load(&run_resource, ctx->db, &ctx->project, name, &out, err) < 0 ||
        api_event(ctx, "job_run", "cancelled", name, NULL, err) < 0)
        return -1;
    *ret_status = 200;
    *ret_body = TAKE_PTR(out);
    return 0;
}

void api_jobruns_cancel(struct loom_http_req *req)
{
    api_write(req, true, jobrun_cancel);
}

void api_jobruns_list(struct loom_http_req *req)
{
    api_resource_list(req, &run_resource);
}

void api_jobruns_get(struct loom_http_req *req)
{
    api_resource_get(req, &run_resource);
}

/* A run whose instances still live cannot lose its row yet (the scheduler
 * must be able to stop them): it is cancelled, its instances are told to
 * stop, and the answer is 202; a later DELETE removes it (the CLI retries). */
static int jobrun_delete(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                         struct loom_err *err)
{
    const char *name = ctx->req->params[1];
    _cleanup_pgres_ PGresult *run = NULL;
    if (lock_run(ctx, name, &run, err) < 0)
        return -1;
    const char *id = PQgetvalue(run, 0, 0);
    int nlive;
    if (stop_run_instances(ctx, id, &nlive, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *done = NULL;
    if (nlive > 0)
        done = loom_db_query(ctx->db, err,
                             "UPDATE job_runs SET state = CASE WHEN state IN ('pending', "
                             "'running') THEN 'cancelled' ELSE state END, "
                             "pending = '{}', updated_at = now(), "
                             "finished_at = coalesce(finished_at, now()) WHERE id = $1",
                             id);
    else
        done = loom_db_query(ctx->db, err, "DELETE FROM job_runs WHERE id = $1", id);
    if (!done)
        return -1;
    if (nlive > 0) {
        *ret_status = 202;
        *ret_body = json_pack("{s:s,s:s,s:i}", "name", name, "status", "cancelled",
                              "instances_stopping", nlive);
        return 0;
    }
    if (api_event(ctx, "job_run", "deleted", name, NULL, err) < 0)
        return -1;
    *ret_status = 204;
    return 0;
}

void api_jobruns_delete(struct loom_http_req *req)
{
    api_write(req, true, jobrun_delete);
}
