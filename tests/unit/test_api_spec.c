/* loom-api request validation: defaults, canonical forms, and that every
 * bad field is refused with a message that names it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "services/api/api.h"

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    assert_non_null(j);
    return j;
}

/* Runs the job run validator and expects failure with msg containing want. */
static void jobrun_refused(const char *body, const char *want)
{
    json_t *b = parse(body), *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    int rc = api_jobrun_spec(b, NULL, &spec, &err);
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
    int rc = api_app_spec(b, false, &spec, &err);
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
    assert_int_equal(api_jobrun_spec(b, NULL, &spec, &err), 0);
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
    assert_int_equal(api_jobrun_spec(b, NULL, &spec, &err), 0);
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
    assert_int_equal(api_jobrun_spec(b, job, &spec, &err), 0);
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
                   "run_env_variables[0].type");
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
    assert_int_equal(api_app_spec(b, false, &spec, &err), 0);
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

static void test_cpu(void **state)
{
    (void)state;
    int64_t m = 0;
    assert_int_equal(api_parse_cpu("0.5", &m), 0);
    assert_int_equal(m, 500);
    assert_int_equal(api_parse_cpu("2", &m), 0);
    assert_int_equal(m, 2000);
    assert_int_equal(api_parse_cpu(".125", &m), 0);
    assert_int_equal(m, 125);
    assert_int_equal(api_parse_cpu("64", &m), 0);
    assert_int_equal(api_parse_cpu("64.001", &m), -1);
    assert_int_equal(api_parse_cpu("0.0001", &m), -1);
    assert_int_equal(api_parse_cpu("1.", &m), -1);
    assert_int_equal(api_parse_cpu("", &m), -1);
    assert_int_equal(api_parse_cpu("-1", &m), -1);
    assert_int_equal(api_parse_cpu("250m", &m), 0);
    assert_int_equal(m, 250);
    assert_int_equal(api_parse_cpu("0m", &m), -1);
    assert_int_equal(api_parse_cpu("m", &m), -1);
    assert_int_equal(api_parse_cpu("64001m", &m), -1);
}

static void test_array_and_multirange(void **state)
{
    (void)state;
    char *canon = NULL, *mr = NULL;
    int64_t n = 0;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(api_array_spec("0-9,20,30-39", &canon, &mr, &n, &err), 0);
    assert_string_equal(canon, "0-9,20,30-39");
    assert_string_equal(mr, "{[0,10),[20,21),[30,40)}");
    assert_int_equal(n, 21);
    char *back = api_multirange_to_spec(mr);
    assert_string_equal(back, "0-9,20,30-39");
    free(back);
    back = api_multirange_to_spec("{}");
    assert_string_equal(back, "");
    free(back);
    free(canon);
    free(mr);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobrun_defaults),
        cmocka_unit_test(test_jobrun_full),
        cmocka_unit_test(test_jobrun_from_job),
        cmocka_unit_test(test_jobrun_refusals),
        cmocka_unit_test(test_app),
        cmocka_unit_test(test_cpu),
        cmocka_unit_test(test_array_and_multirange),
        cmocka_unit_test(test_key_parse),
        cmocka_unit_test(test_page_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
