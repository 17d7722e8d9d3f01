/* Request validation as the API does it (the name, then common/spec.c's
 * model): defaults, canonical forms, and that every bad field is refused
 * with a message that names it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "arrayspec.h"
#include "services/api/api.h"
#include "spec.h"

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    assert_non_null(j);
    return j;
}

/* As the API creates a run: its name, then the model; the run's indices
 * are put back in canonical form as "scale_array_spec" for the checks. */
static int jobrun_spec(json_t *body, const json_t *job, json_t **ret, struct loom_err *err)
{
    const char *name;
    struct loom_arrayspec as = {0};
    json_t *spec = NULL;
    if (api_body_name(body, &name, err) < 0 || loom_spec_jobrun(job, body, &spec, &as, err) < 0)
        return -1;
    char *canon = loom_arrayspec_format(&as);
    json_object_set_new(spec, "scale_array_spec", json_string(canon));
    free(canon);
    loom_arrayspec_release(&as);
    *ret = spec;
    return 0;
}

/* As the API validates a create (with its name) or a patch. */
static int kind_spec(enum loom_kind k, json_t *body, bool partial, json_t **ret,
                     struct loom_err *err)
{
    const char *name;
    if (!partial && api_body_name(body, &name, err) < 0)
        return -1;
    return loom_spec_validate(k, body, partial, ret, err);
}
#define app_spec(b, partial, ret, err) kind_spec(LOOM_KIND_APP, (b), (partial), (ret), (err))
#define job_spec(b, partial, ret, err) kind_spec(LOOM_KIND_JOB, (b), (partial), (ret), (err))

/* Runs the job run validator and expects failure with msg containing want. */
static void jobrun_refused(const char *body, const char *want)
{
    json_t *b = parse(body), *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    int rc = jobrun_spec(b, NULL, &spec, &err);
    if (rc == 0 || !strstr(err.msg, want))
        fail_msg("body %s: rc %d, message \"%s\", wanted \"%s\"", body, rc, err.msg, want);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_null(spec);
    json_decref(b);
}

static void app_refused(const char *body, const char *want)
{
    json_t *b = parse(body), *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    int rc = app_spec(b, false, &spec, &err);
    if (rc == 0 || !strstr(err.msg, want))
        fail_msg("body %s: rc %d, message \"%s\", wanted \"%s\"", body, rc, err.msg, want);
    assert_null(spec);
    json_decref(b);
}

static void test_jobrun_defaults(void **state)
{
    (void)state;
    json_t *b = parse("{\"name\":\"r1\",\"image_reference\":\"127.0.0.1:5000/busybox:1\"}");
    json_t *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(jobrun_spec(b, NULL, &spec, &err), 0);
    assert_string_equal(json_string_value(json_object_get(spec, "scale_array_spec")), "0");
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_retry_limit")), 3);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_max_execution_time")), 7200);
    assert_int_equal(json_integer_value(json_object_get(spec, "parallelism")), 0);
    assert_string_equal(json_string_value(json_object_get(spec, "run_mode")), "task");
    assert_true(json_is_array(json_object_get(spec, "run_commands")));
    assert_null(json_object_get(spec, "name"));
    json_decref(spec);
    json_decref(b);
}

static void test_jobrun_full(void **state)
{
    (void)state;
    json_t *b = parse("{\"name\":\"r1\",\"image_reference\":\"localhost:5000/a/b@sha256:"
                      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\","
                      "\"run_commands\":[\"/bin/sh\",\"-c\",\"echo $JOB_INDEX\"],"
                      "\"run_arguments\":[\"x\"],"
                      "\"run_env_variables\":[{\"type\":\"literal\",\"name\":\"A_1\","
                      "\"value\":\"v=1\"},{\"name\":\"B\",\"value\":\"\"}],"
                      "\"scale_array_spec\":\"5,0-3,2,4\",\"scale_retry_limit\":0,"
                      "\"scale_max_execution_time\":60,\"scale_cpu_limit\":\"0.25\","
                      "\"scale_memory_limit\":\"512M\",\"parallelism\":2,\"run_mode\":\"task\","
                      "\"scale_gpus\":1,\"scale_gpu_model\":\"nvidia-h100\"}");
    json_t *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(jobrun_spec(b, NULL, &spec, &err), 0);
    assert_string_equal(json_string_value(json_object_get(spec, "scale_array_spec")), "0-5");
    json_t *env = json_object_get(spec, "run_env_variables");
    assert_int_equal(json_array_size(env), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(env, 1), "type")),
                        "literal");
    json_decref(spec);
    json_decref(b);
}

static void test_jobrun_from_job(void **state)
{
    (void)state;
    json_t *job = parse("{\"image_reference\":\"127.0.0.1:5000/j:1\",\"scale_array_spec\":\"0-9\","
                        "\"scale_retry_limit\":1}");
    json_t *b = parse("{\"name\":\"r2\",\"job_name\":\"j\",\"scale_array_spec\":\"3\"}");
    json_t *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(jobrun_spec(b, job, &spec, &err), 0);
    assert_string_equal(json_string_value(json_object_get(spec, "image_reference")),
                        "127.0.0.1:5000/j:1");
    assert_string_equal(json_string_value(json_object_get(spec, "scale_array_spec")), "3");
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_retry_limit")), 1);
    json_decref(spec);
    json_decref(b);
    json_decref(job);
}

static void test_jobrun_refusals(void **state)
{
    (void)state;
    jobrun_refused("{\"image_reference\":\"a:1\"}", "\"name\"");
    jobrun_refused("{\"name\":\"Bad_Name\",\"image_reference\":\"a:1\"}", "\"name\"");
    jobrun_refused("{\"name\":\"r\"}", "\"image_reference\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a b\"}", "\"image_reference\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a@sha256:12\"}", "\"image_reference\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"bogus\":1}", "\"bogus\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_array_spec\":\"5-2\"}",
                   "\"scale_array_spec\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_array_spec\":\"\"}",
                   "\"scale_array_spec\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_retry_limit\":6}",
                   "\"scale_retry_limit\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_max_execution_time\":0}",
                   "\"scale_max_execution_time\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_cpu_limit\":\"abc\"}",
                   "\"scale_cpu_limit\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_cpu_limit\":\"0\"}",
                   "\"scale_cpu_limit\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_memory_limit\":\"1K\"}",
                   "\"scale_memory_limit\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_mode\":\"forever\"}",
                   "\"run_mode\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_commands\":\"ls\"}",
                   "\"run_commands\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_commands\":[1]}",
                   "\"run_commands\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_env_variables\":"
                   "[{\"name\":\"1X\",\"value\":\"v\"}]}",
                   "run_env_variables[0].name");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_env_variables\":"
                   "[{\"type\":\"secret_full_reference\",\"name\":\"X\",\"value\":\"v\"}]}",
                   "run_env_variables[0].name");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_env_variables\":"
                   "[{\"name\":\"X\",\"value\":\"v\",\"extra\":1}]}",
                   "run_env_variables[0]");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_gpus\":65}",
                   "\"scale_gpus\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_gpu_model\":\"a b\"}",
                   "\"scale_gpu_model\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"scale_memory_limit\":"
                   "\"100000000B\"}",
                   "\"scale_memory_limit\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"parallelism\":-1}",
                   "\"parallelism\"");
    jobrun_refused("{\"name\":\"r\",\"image_reference\":\"a:1\",\"run_mode\":\"daemon\","
                   "\"scale_retry_limit\":2}",
                   "\"run_mode\"");
}

static void test_app(void **state)
{
    (void)state;
    json_t *b = parse("{\"name\":\"web\",\"image_reference\":\"127.0.0.1:5000/web:1\"}");
    json_t *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(app_spec(b, false, &spec, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(spec, "image_port")), 8080);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_min_instances")), 0);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_max_instances")), 10);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_concurrency")), 100);
    assert_string_equal(json_string_value(json_object_get(spec, "scale_cpu_limit")), "1");
    assert_string_equal(json_string_value(json_object_get(spec, "scale_memory_limit")), "4G");
    json_decref(spec);
    json_decref(b);

    app_refused("{\"name\":\"web\"}", "\"image_reference\"");
    app_refused("{\"name\":\"web\",\"image_reference\":\"a:1\",\"image_port\":0}",
                "\"image_port\"");
    app_refused("{\"name\":\"web\",\"image_reference\":\"a:1\",\"image_port\":\"80\"}",
                "\"image_port\"");
    app_refused("{\"name\":\"web\",\"image_reference\":\"a:1\",\"scale_min_instances\":5,"
                "\"scale_max_instances\":2}",
                "\"scale_min_instances\"");
    app_refused("{\"name\":\"web\",\"image_reference\":\"a:1\",\"scale_array_spec\":\"0\"}",
                "\"scale_array_spec\"");
}

static void test_multirange(void **state)
{
    (void)state;
    char *back = api_multirange_to_spec("{[0,10),[20,21),[30,40)}");
    assert_string_equal(back, "0-9,20,30-39");
    free(back);
    back = api_multirange_to_spec("{}");
    assert_string_equal(back, "");
    free(back);
}

static void test_key_parse(void **state)
{
    (void)state;
    char id[13];
    const char *secret;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(api_key_parse("loom_0123456789ab_ehiWva8B8dcFi7TGy-xTUckkIBs1_0OgmM-c5f0q3I4",
                                   id, &secret, &err),
                     0);
    assert_string_equal(id, "0123456789ab");
    assert_string_equal(secret, "ehiWva8B8dcFi7TGy-xTUckkIBs1_0OgmM-c5f0q3I4");
    assert_int_equal(api_key_parse("loom_0123456789ab_short", id, &secret, &err), -1);
    assert_int_equal(err.code, LOOM_EUNAUTH);
    assert_int_equal(api_key_parse("loom_0123456789AB_ehiWva8B8dcFi7TGy-xTUckkIBs1_0OgmM-c5f0q3I4",
                                   id, &secret, &err),
                     -1);
    assert_int_equal(api_key_parse("loom_0123456789ab_ehiWva8B8dcFi7TGy+xTUckkIBs1_0OgmM-c5f0q3I4",
                                   id, &secret, &err),
                     -1);
}

static void test_page_token(void **state)
{
    (void)state;
    char *t = api_page_token("my-app");
    char out[128];
    assert_int_equal(api_page_token_decode(t, out, sizeof(out)), 0);
    assert_string_equal(out, "my-app");
    free(t);
    assert_int_equal(api_page_token_decode("x00", out, sizeof(out)), -1);
    assert_int_equal(api_page_token_decode("n0", out, sizeof(out)), -1);
    assert_int_equal(api_page_token_decode("n00", out, sizeof(out)), -1);
    assert_int_equal(api_page_token_decode("nzz", out, sizeof(out)), -1);
}

static json_t *jobrun_ok(const char *body)
{
    json_t *b = parse(body), *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (jobrun_spec(b, NULL, &spec, &err) < 0)
        fail_msg("body %s refused: %s", body, err.msg);
    json_decref(b);
    return spec;
}

static json_t *app_ok(const char *body)
{
    json_t *b = parse(body), *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (app_spec(b, false, &spec, &err) < 0)
        fail_msg("body %s refused: %s", body, err.msg);
    json_decref(b);
    return spec;
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    assert_non_null(s);
    return s;
}

#define RUN "{\"name\":\"r\",\"image_reference\":\"a:1\","

static void test_cpu_memory_combinations(void **state)
{
    (void)state;
    static const char *const good[][2] = {
        {"0.125", "256M"}, {"0.125", "250M"}, {"0.125", "0.25G"}, {"0.125", "256Mi"},
        {"0.125", "1G"},   {"0.25", "0.5G"},  {"0.25", "2G"},     {"0.5", "1Gi"},
        {"1", "4G"},       {"1", "2G"},       {"1", "8G"},        {"2", "8G"},
        {"4", "32G"},      {"6", "48G"},      {"12", "48G"},      {"12", "24G"},
        {"10", "40G"},     {"125m", "0.5G"},  {"8", "16G"},       {".5", "2G"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body),
                 RUN "\"scale_cpu_limit\":\"%s\",\"scale_memory_limit\":\"%s\"}", good[i][0],
                 good[i][1]);
        json_t *spec = jobrun_ok(body);
        assert_string_equal(str(spec, "scale_memory_limit"), good[i][1]);
        json_decref(spec);
    }
    /* canonical vCPU text */
    json_t *spec = jobrun_ok(RUN "\"scale_cpu_limit\":\"125m\",\"scale_memory_limit\":\"256M\"}");
    assert_string_equal(str(spec, "scale_cpu_limit"), "0.125");
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_cpu_limit\":\".5\",\"scale_memory_limit\":\"2G\"}");
    assert_string_equal(str(spec, "scale_cpu_limit"), "0.5");
    json_decref(spec);
    static const char *const bad[][3] = {
        {"1", "16G", "\"scale_memory_limit\""},    {"0.125", "4G", "\"scale_memory_limit\""},
        {"12", "96G", "\"scale_memory_limit\""},   {"0.3", "1G", "\"scale_cpu_limit\""},
        {"16", "64G", "\"scale_cpu_limit\""},      {"1", "1T", "\"scale_memory_limit\""},
        {"1", "4GB", "\"scale_memory_limit\""},    {"1", "4096", "\"scale_memory_limit\""},
        {"0.5", "300M", "\"scale_memory_limit\""}, {"1", "4.0001G", "\"scale_memory_limit\""},
        {"0.001", "4G", "\"scale_cpu_limit\""},    {"1", "G", "\"scale_memory_limit\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body),
                 RUN "\"scale_cpu_limit\":\"%s\",\"scale_memory_limit\":\"%s\"}", bad[i][0],
                 bad[i][1]);
        jobrun_refused(body, bad[i][2]);
    }
    /* one given alone: the other is its 1:4 partner (or memory's nearest) */
    spec = jobrun_ok(RUN "\"scale_cpu_limit\":\"2\"}");
    assert_string_equal(str(spec, "scale_memory_limit"), "8G");
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_cpu_limit\":\"0.125\"}");
    assert_string_equal(str(spec, "scale_memory_limit"), "500M");
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_cpu_limit\":\".25\"}");
    assert_string_equal(str(spec, "scale_cpu_limit"), "0.25");
    assert_string_equal(str(spec, "scale_memory_limit"), "1G");
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_memory_limit\":\"512M\"}");
    assert_string_equal(str(spec, "scale_cpu_limit"), "0.125");
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_memory_limit\":\"48G\"}");
    assert_string_equal(str(spec, "scale_cpu_limit"), "12");
    json_decref(spec);
    jobrun_refused(RUN "\"scale_memory_limit\":\"3G\"}", "\"scale_memory_limit\"");
    /* a run from a job that overrides only cpu gets memory to match */
    json_t *job = parse("{\"image_reference\":\"a:1\",\"scale_cpu_limit\":\"1\","
                        "\"scale_memory_limit\":\"4G\"}");
    json_t *b = parse("{\"name\":\"r\",\"job_name\":\"j\",\"scale_cpu_limit\":\"0.25\"}");
    struct loom_err err = LOOM_ERR_INIT;
    spec = NULL;
    assert_int_equal(jobrun_spec(b, job, &spec, &err), 0);
    assert_string_equal(str(spec, "scale_memory_limit"), "1G");
    json_decref(spec);
    json_decref(b);
    json_decref(job);
}

static void test_env_references(void **state)
{
    (void)state;
    json_t *spec = jobrun_ok(
        RUN "\"run_env_variables\":[{\"type\":\"secret_full_reference\",\"reference\":\"db\","
            "\"prefix\":\"DB_\"},{\"type\":\"secret_key_reference\",\"reference\":\"db\","
            "\"key\":\"pass.word\",\"name\":\"PW\"},{\"type\":\"config_map_full_reference\","
            "\"reference\":\"cfg\"},{\"type\":\"config_map_key_reference\",\"reference\":\"cfg\","
            "\"key\":\"k\",\"name\":\"K\"},{\"name\":\"L\",\"value\":\"v\"}]}");
    json_t *env = json_object_get(spec, "run_env_variables");
    assert_int_equal(json_array_size(env), 5);
    assert_string_equal(str(json_array_get(env, 0), "prefix"), "DB_");
    assert_string_equal(str(json_array_get(env, 1), "key"), "pass.word");
    assert_null(json_object_get(json_array_get(env, 2), "prefix"));
    assert_string_equal(str(json_array_get(env, 4), "type"), "literal");
    json_decref(spec);

    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"secret_full_reference\"}]}",
                   "run_env_variables[0].reference");
    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"secret_full_reference\","
                       "\"reference\":\"Bad_Name\"}]}",
                   "run_env_variables[0].reference");
    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"secret_full_reference\","
                       "\"reference\":\"s\",\"prefix\":\"1X\"}]}",
                   "run_env_variables[0].prefix");
    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"secret_full_reference\","
                       "\"reference\":\"s\",\"value\":\"v\"}]}",
                   "run_env_variables[0].value");
    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"config_map_key_reference\","
                       "\"reference\":\"c\",\"name\":\"N\"}]}",
                   "run_env_variables[0].key");
    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"config_map_key_reference\","
                       "\"reference\":\"c\",\"key\":\"a b\",\"name\":\"N\"}]}",
                   "run_env_variables[0].key");
    jobrun_refused(RUN "\"run_env_variables\":[{\"type\":\"config_map_key_reference\","
                       "\"reference\":\"c\",\"key\":\"k\"}]}",
                   "run_env_variables[0].name");
    jobrun_refused(RUN "\"run_env_variables\":[{\"name\":\"A\",\"value\":\"v\"},"
                       "{\"type\":\"vault\",\"name\":\"X\"}]}",
                   "run_env_variables[1].type");
    jobrun_refused(RUN "\"run_env_variables\":[{\"name\":\"A\",\"value\":1}]}",
                   "run_env_variables[0].value");
    jobrun_refused(RUN "\"run_env_variables\":[\"A=1\"]}", "run_env_variables[0]");
    jobrun_refused(RUN "\"run_env_variables\":{}}", "\"run_env_variables\"");
    jobrun_refused(RUN "\"run_env_variables\":[{\"name\":\"A\",\"value\":\"1\"},"
                       "{\"type\":\"secret_key_reference\",\"reference\":\"s\",\"key\":\"k\","
                       "\"name\":\"A\"}]}",
                   "run_env_variables[1].name");
}

static void test_mounts_and_storage(void **state)
{
    (void)state;
    json_t *spec =
        jobrun_ok(RUN "\"run_volume_mounts\":[{\"type\":\"secret\",\"reference\":\"tls\","
                      "\"mount_path\":\"/etc/tls\"},{\"type\":\"config_map\",\"reference\":\"cfg\","
                      "\"mount_path\":\"/etc/cfg\",\"name\":\"m1\"}],\"image_secret\":\"pull\","
                      "\"scale_ephemeral_storage_limit\":\"2G\"}");
    assert_int_equal(json_array_size(json_object_get(spec, "run_volume_mounts")), 2);
    assert_string_equal(str(spec, "image_secret"), "pull");
    assert_string_equal(str(spec, "scale_ephemeral_storage_limit"), "2G");
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_cpu_limit\":\"0.125\"}");
    assert_string_equal(str(spec, "scale_ephemeral_storage_limit"), "400M");
    assert_int_equal(json_array_size(json_object_get(spec, "run_volume_mounts")), 0);
    json_decref(spec);

    static const char *const bad_paths[] = {"etc",     "/",    "/a/",  "/a/../b", "/a//b",
                                            "/proc/x", "/sys", "/dev", "/a b",    "/./a"};
    for (size_t i = 0; i < sizeof(bad_paths) / sizeof(bad_paths[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body),
                 RUN "\"run_volume_mounts\":[{\"type\":\"secret\",\"reference\":\"s\","
                     "\"mount_path\":\"%s\"}]}",
                 bad_paths[i]);
        jobrun_refused(body, "run_volume_mounts[0].mount_path");
    }
    jobrun_refused(RUN "\"run_volume_mounts\":[{\"type\":\"secret\",\"reference\":\"s\","
                       "\"mount_path\":\"/a\"},{\"type\":\"config_map\",\"reference\":\"c\","
                       "\"mount_path\":\"/a\"}]}",
                   "run_volume_mounts[1].mount_path");
    jobrun_refused(RUN "\"run_volume_mounts\":[{\"type\":\"pvc\",\"reference\":\"s\","
                       "\"mount_path\":\"/a\"}]}",
                   "run_volume_mounts[0].type");
    jobrun_refused(RUN "\"run_volume_mounts\":[{\"type\":\"secret\",\"mount_path\":\"/a\"}]}",
                   "run_volume_mounts[0].reference");
    jobrun_refused(RUN "\"run_volume_mounts\":[{\"type\":\"secret\",\"reference\":\"s\","
                       "\"mount_path\":\"/a\",\"read_only\":true}]}",
                   "run_volume_mounts[0].read_only");
    jobrun_refused(RUN "\"run_volume_mounts\":\"/a\"}", "\"run_volume_mounts\"");
    jobrun_refused(RUN "\"image_secret\":\"Not_A_Name\"}", "\"image_secret\"");
    jobrun_refused(RUN "\"image_secret\":5}", "\"image_secret\"");
    jobrun_refused(RUN "\"scale_ephemeral_storage_limit\":\"49G\"}",
                   "\"scale_ephemeral_storage_limit\"");
    jobrun_refused(RUN "\"scale_ephemeral_storage_limit\":\"lots\"}",
                   "\"scale_ephemeral_storage_limit\"");
}

static void test_job_fields(void **state)
{
    (void)state;
    json_t *spec = jobrun_ok(RUN "\"node_selector\":{\"zone\":\"a\",\"loom.dev/gpu\":\"h100\"},"
                                 "\"placement\":\"spread\",\"gang_timeout\":60}");
    assert_string_equal(str(json_object_get(spec, "node_selector"), "zone"), "a");
    assert_string_equal(str(spec, "placement"), "spread");
    assert_int_equal(json_integer_value(json_object_get(spec, "gang_timeout")), 60);
    json_decref(spec);
    spec = jobrun_ok(RUN "\"scale_nodes\":2}");
    assert_string_equal(str(spec, "placement"), "binpack");
    assert_int_equal(json_integer_value(json_object_get(spec, "gang_timeout")), 300);
    assert_int_equal(json_object_size(json_object_get(spec, "node_selector")), 0);
    json_decref(spec);
    jobrun_refused(RUN "\"node_selector\":[\"a\"]}", "\"node_selector\"");
    jobrun_refused(RUN "\"node_selector\":{\"zone\":1}}", "node_selector.zone");
    jobrun_refused(RUN "\"node_selector\":{\"zone\":\"a b\"}}", "node_selector.zone");
    jobrun_refused(RUN "\"node_selector\":{\"-x\":\"a\"}}", "\"node_selector\"");
    jobrun_refused(RUN "\"placement\":\"random\"}", "\"placement\"");
    jobrun_refused(RUN "\"gang_timeout\":0}", "\"gang_timeout\"");
    jobrun_refused(RUN "\"gang_timeout\":\"5\"}", "\"gang_timeout\"");
    jobrun_refused(RUN "\"scale_nodes\":0}", "\"scale_nodes\"");
    jobrun_refused(RUN "\"priority\":101}", "\"priority\"");
}

#define APP "{\"name\":\"web\",\"image_reference\":\"a:1\","

static void test_app_fields(void **state)
{
    (void)state;
    json_t *spec = app_ok("{\"name\":\"web\",\"image_reference\":\"a:1\"}");
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_initial_instances")), 0);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_concurrency_target")), 100);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_down_delay")), 0);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_request_timeout")), 300);
    assert_string_equal(str(spec, "visibility"), "public");
    assert_string_equal(str(spec, "scale_ephemeral_storage_limit"), "400M");
    assert_null(json_object_get(spec, "probe_readiness"));
    json_decref(spec);
    spec = app_ok(APP "\"scale_min_instances\":2,\"scale_concurrency\":10,"
                      "\"scale_concurrency_target\":7,\"scale_down_delay\":60,"
                      "\"scale_request_timeout\":30,\"visibility\":\"project\","
                      "\"probe_readiness\":{\"type\":\"http\",\"path\":\"/healthz\","
                      "\"port\":8081,\"interval\":5},\"probe_liveness\":{}}");
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_initial_instances")), 2);
    json_t *p = json_object_get(spec, "probe_readiness");
    assert_string_equal(str(p, "path"), "/healthz");
    assert_int_equal(json_integer_value(json_object_get(p, "failure_threshold")), 3);
    assert_int_equal(json_integer_value(json_object_get(p, "interval")), 5);
    p = json_object_get(spec, "probe_liveness");
    assert_string_equal(str(p, "type"), "tcp");
    assert_null(json_object_get(p, "path"));
    json_decref(spec);

    app_refused(APP "\"scale_concurrency\":10,\"scale_concurrency_target\":11}",
                "\"scale_concurrency_target\"");
    app_refused(APP "\"scale_concurrency\":1001}", "\"scale_concurrency\"");
    app_refused(APP "\"scale_initial_instances\":11}", "\"scale_initial_instances\"");
    app_refused(APP "\"scale_down_delay\":3601}", "\"scale_down_delay\"");
    app_refused(APP "\"scale_request_timeout\":0}", "\"scale_request_timeout\"");
    app_refused(APP "\"scale_request_timeout\":601}", "\"scale_request_timeout\"");
    app_refused(APP "\"visibility\":\"secret\"}", "\"visibility\"");
    app_refused(APP "\"probe_readiness\":\"tcp\"}", "\"probe_readiness\"");
    app_refused(APP "\"probe_readiness\":{\"type\":\"exec\"}}", "probe_readiness.type");
    app_refused(APP "\"probe_readiness\":{\"port\":0}}", "probe_readiness.port");
    app_refused(APP "\"probe_liveness\":{\"type\":\"tcp\",\"path\":\"/\"}}", "probe_liveness.path");
    app_refused(APP "\"probe_liveness\":{\"type\":\"http\",\"path\":\"x y\"}}",
                "probe_liveness.path");
    app_refused(APP "\"probe_liveness\":{\"failure_threshold\":11}}",
                "probe_liveness.failure_threshold");
    app_refused(APP "\"probe_liveness\":{\"command\":[\"true\"]}}", "probe_liveness.command");
    app_refused(APP "\"node_selector\":{}}", "\"node_selector\"");
}

static void test_spec_merge(void **state)
{
    (void)state;
    json_t *old = app_ok(APP "\"scale_min_instances\":1}");
    json_t *patch = parse("{\"scale_concurrency\":10,\"scale_min_instances\":3}");
    json_t *merged = loom_spec_merge(old, patch, patch);
    json_object_set_new(merged, "name", json_string("web"));
    json_t *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(app_spec(merged, false, &spec, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_concurrency_target")), 10);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_initial_instances")), 3);
    json_decref(spec);
    json_decref(merged);
    json_decref(patch);
    /* a target set on purpose stays, and a lower concurrency is then refused */
    json_decref(old);
    old = app_ok(APP "\"scale_concurrency_target\":50}");
    patch = parse("{\"scale_concurrency\":10}");
    merged = loom_spec_merge(old, patch, patch);
    json_object_set_new(merged, "name", json_string("web"));
    spec = NULL;
    assert_int_equal(app_spec(merged, false, &spec, &err), -1);
    assert_non_null(strstr(err.msg, "scale_concurrency_target"));
    json_decref(merged);
    json_decref(patch);
    /* cpu alone takes memory along */
    patch = parse("{\"scale_cpu_limit\":\"2\"}");
    merged = loom_spec_merge(old, patch, patch);
    json_object_set_new(merged, "name", json_string("web"));
    assert_int_equal(app_spec(merged, false, &spec, &err), 0);
    assert_string_equal(str(spec, "scale_memory_limit"), "8G");
    json_decref(spec);
    json_decref(merged);
    json_decref(patch);
    /* null in a merge patch takes a field back to its default, or away */
    json_decref(old);
    old = app_ok(APP "\"scale_down_delay\":30,\"probe_liveness\":{},\"image_secret\":\"s\"}");
    json_t *raw =
        parse("{\"scale_down_delay\":null,\"probe_liveness\":null,\"image_secret\":null}");
    patch = NULL;
    assert_int_equal(app_spec(raw, true, &patch, &err), 0);
    merged = loom_spec_merge(old, patch, raw);
    json_object_set_new(merged, "name", json_string("web"));
    assert_int_equal(app_spec(merged, false, &spec, &err), 0);
    assert_int_equal(json_integer_value(json_object_get(spec, "scale_down_delay")), 0);
    assert_null(json_object_get(spec, "probe_liveness"));
    assert_null(json_object_get(spec, "image_secret"));
    json_decref(spec);
    json_decref(merged);
    json_decref(patch);
    json_decref(raw);
    json_decref(old);
}

#define CERT                                                                                       \
    "-----BEGIN CERTIFICATE-----\\nMIIBszCCAVmgAwIBAgIU\\nZm9vYmFy\\n-----END CERTIFICATE-----\\n"
#define KEY "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49\\n-----END PRIVATE KEY-----\\n"

static void secret_check(const char *format, const char *data, const char *want)
{
    json_t *d = parse(data);
    struct loom_err err = LOOM_ERR_INIT;
    int rc = api_secret_data(format, d, &err);
    if (want == NULL && rc != 0)
        fail_msg("%s %s refused: %s", format, data, err.msg);
    if (want && (rc == 0 || !strstr(err.msg, want)))
        fail_msg("%s %s: rc %d, message \"%s\", wanted \"%s\"", format, data, rc, err.msg, want);
    json_decref(d);
}

static void test_secret_formats(void **state)
{
    (void)state;
    secret_check("generic", "{\"anything\":\"x\"}", NULL);
    secret_check("registry",
                 "{\"server\":\"127.0.0.1:5000\",\"username\":\"u\",\"password\":\"p\"}", NULL);
    secret_check("registry",
                 "{\"server\":\"icr.io\",\"username\":\"u\",\"password\":\"p\",\"email\":\"e\"}",
                 NULL);
    secret_check("registry", "{\"server\":\"icr.io\",\"username\":\"u\"}", "data.password");
    secret_check("registry", "{\"server\":\"icr.io\",\"username\":\"\",\"password\":\"p\"}",
                 "data.username");
    secret_check("registry",
                 "{\"server\":\"https://icr.io/v2\",\"username\":\"u\",\"password\":\"p\"}",
                 "data.server");
    secret_check("registry",
                 "{\"server\":\"icr.io\",\"username\":\"u\",\"password\":\"p\",\"token\":\"t\"}",
                 "data.token");
    secret_check("registry", "{\"server\":\"icr.io\",\"username\":\"u:v\",\"password\":\"p\"}",
                 "data.username");
    secret_check("tls", "{\"tls_cert\":\"" CERT "\",\"tls_key\":\"" KEY "\"}", NULL);
    secret_check("tls", "{\"tls_cert\":\"" CERT CERT "\",\"tls_key\":\"" KEY "\"}", NULL);
    secret_check("tls", "{\"tls_cert\":\"" CERT "\"}", "data.tls_key");
    secret_check("tls", "{\"tls_cert\":\"hello\",\"tls_key\":\"" KEY "\"}", "data.tls_cert");
    secret_check("tls", "{\"tls_cert\":\"" KEY "\",\"tls_key\":\"" KEY "\"}", "data.tls_cert");
    secret_check("tls", "{\"tls_cert\":\"" CERT "\",\"tls_key\":\"" CERT "\"}", "data.tls_key");
    secret_check("tls",
                 "{\"tls_cert\":\"-----BEGIN CERTIFICATE-----\\nab$%\\n-----END "
                 "CERTIFICATE-----\",\"tls_key\":\"" KEY "\"}",
                 "data.tls_cert");
    secret_check("tls",
                 "{\"tls_cert\":\"-----BEGIN CERTIFICATE-----\\nabc\\n\",\"tls_key\":\"" KEY "\"}",
                 "data.tls_cert");
    secret_check("tls", "{\"tls_cert\":\"" CERT "\",\"tls_key\":\"" KEY "\",\"ca\":\"x\"}",
                 "data.ca");
    secret_check("ssh", "{}", "\"format\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobrun_defaults),
        cmocka_unit_test(test_jobrun_full),
        cmocka_unit_test(test_jobrun_from_job),
        cmocka_unit_test(test_jobrun_refusals),
        cmocka_unit_test(test_app),

        cmocka_unit_test(test_multirange),
        cmocka_unit_test(test_key_parse),
        cmocka_unit_test(test_page_token),
        cmocka_unit_test(test_cpu_memory_combinations),
        cmocka_unit_test(test_env_references),
        cmocka_unit_test(test_mounts_and_storage),
        cmocka_unit_test(test_job_fields),
        cmocka_unit_test(test_app_fields),
        cmocka_unit_test(test_spec_merge),
        cmocka_unit_test(test_secret_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
