/* common/spec: the field table is consistent with itself, a stored spec
 * decodes into typed fields with the table's defaults, a bad stored value
 * is an error naming its field, and the columns and schemas come from the
 * same table. (The validation messages are checked in test_api_spec.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "arrayspec.h"
#include "spec.h"

static json_t *parse(const char *text)
{
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    return j;
}

/* Every default is a value its own field accepts; a field that follows
 * another follows an integer field of every kind it is in, checked before
 * it; flags are unique within a kind; every field says what it is for. */
static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        assert_non_null(f->help);
        assert_non_null(f->flag);
        for (int k = 0; k < LOOM_KIND_COUNT; k++) {
            if (!loom_field_in(f, (enum loom_kind)k))
                continue;
            assert_ptr_equal(loom_spec_field((enum loom_kind)k, f->name), f);
            for (size_t j = 0; j < loom_spec_table_len; j++)
                if (j != i && loom_field_in(&loom_spec_table[j], (enum loom_kind)k))
                    assert_string_not_equal(loom_spec_table[j].flag, f->flag);
        }
        if (f->def_kind == LOOM_DEF_FOLLOWS) {
            const struct loom_field *src = NULL;
            for (size_t j = 0; j < i; j++)
                if (strcmp(loom_spec_table[j].name, f->def) == 0)
                    src = &loom_spec_table[j];
            assert_non_null(src);
            assert_int_equal(src->type, LOOM_FT_INT);
            assert_int_equal(f->type, LOOM_FT_INT);
            assert_int_equal(src->kinds & f->kinds, f->kinds);
        }
        if (f->def_kind == LOOM_DEF_VALUE || f->def_kind == LOOM_DEF_IMPLIED) {
            json_t *def = json_loads(f->def, JSON_DECODE_ANY, NULL);
            assert_non_null(def);
            for (int k = 0; k < LOOM_KIND_COUNT; k++) {
                if (!loom_field_in(f, (enum loom_kind)k))
                    continue;
                json_t *body = json_pack("{s:O}", f->name, def), *out = NULL;
                struct loom_err err = LOOM_ERR_INIT;
                if (loom_spec_validate((enum loom_kind)k, body, true, &out, &err) < 0)
                    fail_msg("the default of %s is refused: %s", f->name, err.msg);
                json_decref(out);
                json_decref(body);
            }
            json_decref(def);
        }
    }
    /* the body members: the name, a run's job_name, then the fields */
    const char *const *names = loom_spec_field_names(LOOM_KIND_JOBRUN);
    assert_string_equal(names[0], "name");
    assert_string_equal(names[1], "job_name");
    assert_string_equal(names[2], "image_reference");
    size_t n = 0;
    for (const char *const *p = loom_spec_field_names(LOOM_KIND_APP); *p; p++)
        n++;
    size_t in_app = 0;
    for (size_t i = 0; i < loom_spec_table_len; i++)
        in_app += loom_field_in(&loom_spec_table[i], LOOM_KIND_APP);
    assert_int_equal(n, in_app + 1);
}

/* An app with nothing but its image: every default, typed. */
static void test_decode_defaults(void **state)
{
    (void)state;
    json_t *j = parse("{\"image_reference\":\"r/x:1\"}");
    struct loom_spec s;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_spec_decode(LOOM_KIND_APP, j, &s, &err), 0);
    assert_string_equal(s.image, "r/x:1");
    assert_null(s.image_secret);
    assert_int_equal(s.cpu_millis, 1000);
    assert_int_equal(s.memory_bytes, 4000000000LL);
    assert_int_equal(s.ephemeral_bytes, 400000000LL);
    assert_int_equal(s.gpus, 0);
    assert_int_equal(s.port, 8080);
    assert_int_equal(s.min_instances, 0);
    assert_int_equal(s.max_instances, 10);
    assert_int_equal(s.initial_instances, 0);
    assert_int_equal(s.concurrency, 100);
    assert_int_equal(s.concurrency_target, 100);
    assert_int_equal(s.scale_down_delay, 0);
    assert_int_equal(s.request_timeout, 300);
    assert_int_equal(s.visibility, LOOM_VIS_PUBLIC);
    assert_false(s.readiness.set);
    assert_int_equal(json_array_size(s.env), 0);
    assert_int_equal(json_array_size(s.commands), 0);
    /* fields of other kinds stay zero */
    assert_int_equal(s.retry_limit, 0);
    assert_null(s.node_selector);
    loom_spec_release(&s);
    json_decref(j);

    j = parse("{\"image_reference\":\"r/x:1\"}");
    assert_int_equal(loom_spec_decode(LOOM_KIND_JOBRUN, j, &s, &err), 0);
    assert_int_equal(s.retry_limit, 3);
    assert_int_equal(s.max_execution_time, 7200);
    assert_int_equal(s.nodes, 1);
    assert_int_equal(s.priority, 50);
    assert_int_equal(s.gang_timeout, 300);
    assert_int_equal(s.run_mode, LOOM_RUN_TASK);
    assert_int_equal(s.placement, LOOM_PLACE_BINPACK);
    assert_int_equal(json_object_size(s.node_selector), 0);
    assert_null(s.array_spec); /* a run's indices are its ranges */
    assert_int_equal(s.port, 0);
    loom_spec_release(&s);
    json_decref(j);
}

/* What the API stores decodes to what the user asked for. */
static void test_decode_values(void **state)
{
    (void)state;
    json_t *body = parse("{\"name\":\"web\",\"image_reference\":\"r/x:1\",\"scale_cpu_limit\":"
                         "\".25\",\"scale_memory_limit\":\"512Mi\",\"scale_concurrency\":10,"
                         "\"scale_min_instances\":2,\"visibility\":\"project\","
                         "\"scale_ephemeral_storage_limit\":\"2Gi\",\"probe_readiness\":{"
                         "\"type\":\"http\",\"path\":\"/ready\",\"interval\":5}}");
    json_t *spec = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_spec_validate(LOOM_KIND_APP, body, false, &spec, &err), 0);
    struct loom_spec s;
    assert_int_equal(loom_spec_decode(LOOM_KIND_APP, spec, &s, &err), 0);
    assert_int_equal(s.cpu_millis, 250);
    assert_int_equal(s.memory_bytes, 512LL << 20);
    assert_int_equal(s.ephemeral_bytes, 2LL << 30);
    assert_int_equal(s.concurrency, 10);
    assert_int_equal(s.concurrency_target, 10); /* it followed */
    assert_int_equal(s.initial_instances, 2);
    assert_int_equal(s.visibility, LOOM_VIS_PROJECT);
    assert_true(s.readiness.set);
    assert_true(s.readiness.http);
    assert_string_equal(s.readiness.path, "/ready");
    assert_int_equal(s.readiness.interval, 5);
    assert_int_equal(s.readiness.timeout, 1);
    assert_int_equal(s.readiness.failure_threshold, 3);
    assert_int_equal(s.readiness.port, 0);
    assert_false(s.liveness.set);

    /* its columns, from the same decode */
    const char *names[LOOM_SPEC_MAX_COLUMNS];
    char values[LOOM_SPEC_MAX_COLUMNS][24];
    size_t n = loom_spec_columns(LOOM_KIND_APP, &s, names, values);
    char joined[512] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(joined + strlen(joined), sizeof(joined) - strlen(joined), "%s=%s ", names[i],
                 values[i]);
    assert_string_equal(joined, "cpu_millis=250 memory_bytes=536870912 "
                                "ephemeral_bytes=2147483648 gpus=0 port=8080 min_instances=2 "
                                "max_instances=10 concurrency=10 target=10 ");
    assert_int_equal(loom_spec_columns(LOOM_KIND_JOB, &s, names, values), 0);
    loom_spec_release(&s);
    json_decref(spec);
    json_decref(body);
}

/* A stored value the model does not accept is an error that names it. */
static void test_decode_refuses(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"{\"scale_cpu_limit\":\"lots\"}", "scale_cpu_limit"},
        {"{\"scale_memory_limit\":\"4X\"}", "scale_memory_limit"},
        {"{\"image_port\":70000}", "image_port"},
        {"{\"image_port\":\"80\"}", "image_port"},
        {"{\"visibility\":\"everyone\"}", "visibility"},
        {"{\"image_reference\":5}", "image_reference"},
        {"{\"run_commands\":\"ls\"}", "run_commands"},
        {"{\"probe_liveness\":{\"interval\":0}}", "probe_liveness"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = parse(bad[i][0]);
        struct loom_spec s;
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_spec_decode(LOOM_KIND_APP, j, &s, &err) == 0)
            fail_msg("%s decoded", bad[i][0]);
        assert_non_null(strstr(err.msg, bad[i][1]));
        json_decref(j);
    }
    struct loom_spec s;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_spec_decode_text(LOOM_KIND_APP, "[1]", &s, &err), -1);
    assert_int_equal(loom_spec_decode_text(LOOM_KIND_APP, "{", &s, &err), -1);
}

/* A run over a job: the job's fields, the run's on top, the indices apart. */
static void test_jobrun(void **state)
{
    (void)state;
    json_t *job_body = parse("{\"image_reference\":\"r/j:1\",\"scale_array_spec\":\"9,0-3\","
                             "\"scale_cpu_limit\":\"2\",\"priority\":70}");
    json_t *job = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_spec_validate(LOOM_KIND_JOB, job_body, false, &job, &err), 0);
    assert_string_equal(json_string_value(json_object_get(job, "scale_array_spec")), "0-3,9");
    assert_string_equal(json_string_value(json_object_get(job, "scale_memory_limit")), "8G");
    json_t *body = parse("{\"name\":\"r\",\"job_name\":\"j\",\"scale_memory_limit\":\"4G\"}");
    json_t *spec = NULL;
    struct loom_arrayspec idx = {0};
    assert_int_equal(loom_spec_jobrun(job, body, &spec, &idx, &err), 0);
    assert_int_equal(idx.count, 5); /* the job's */
    assert_null(json_object_get(spec, "scale_array_spec"));
    /* memory given alone takes its cpu partner anew, not the job's */
    assert_string_equal(json_string_value(json_object_get(spec, "scale_cpu_limit")), "1");
    struct loom_spec s;
    assert_int_equal(loom_spec_decode(LOOM_KIND_JOBRUN, spec, &s, &err), 0);
    assert_int_equal(s.priority, 70);
    assert_int_equal(s.cpu_millis, 1000);
    loom_spec_release(&s);
    loom_arrayspec_release(&idx);
    json_decref(spec);
    json_decref(body);
    /* the run's own indices, refused by name */
    body = parse("{\"name\":\"r\",\"image_reference\":\"r/x:1\",\"scale_array_spec\":\"5-1\"}");
    spec = NULL;
    assert_int_equal(loom_spec_jobrun(NULL, body, &spec, &idx, &err), -1);
    assert_null(spec);
    assert_non_null(strstr(err.msg, "scale_array_spec"));
    json_decref(body);
    json_decref(job);
    json_decref(job_body);
}

/* Builds: the source's type follows from what is given; a run of a build
 * takes the build's fields and may bring its own source; bad values are
 * refused by name. */
static void test_builds(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    json_t *body = parse("{\"name\":\"b\",\"source_url\":\"https://git.example/a.git\","
                         "\"source_revision\":\"v1.2\",\"output_image\":\"web\"}");
    json_t *build = NULL;
    assert_int_equal(loom_spec_validate(LOOM_KIND_BUILD, body, false, &build, &err), 0);
    assert_string_equal(json_string_value(json_object_get(build, "source_type")), "git");
    assert_string_equal(json_string_value(json_object_get(build, "strategy_type")), "buildpacks");
    assert_string_equal(json_string_value(json_object_get(build, "strategy_size")), "medium");
    assert_int_equal(json_integer_value(json_object_get(build, "timeout")), 600);
    json_decref(body);

    /* a run of it: the build's source and revision, its own size */
    body = parse("{\"name\":\"r\",\"build_name\":\"b\",\"strategy_size\":\"small\"}");
    json_t *spec = NULL;
    assert_int_equal(loom_spec_buildrun(build, body, &spec, &err), 0);
    struct loom_spec s;
    assert_int_equal(loom_spec_decode(LOOM_KIND_BUILDRUN, spec, &s, &err), 0);
    assert_int_equal(s.source_type, LOOM_SOURCE_GIT);
    assert_string_equal(s.source_url, "https://git.example/a.git");
    assert_string_equal(s.source_revision, "v1.2");
    assert_int_equal(s.strategy_size, LOOM_SIZE_SMALL);
    assert_int_equal(s.strategy_type, LOOM_STRATEGY_BUILDPACKS);
    assert_string_equal(s.strategy_spec_file, "Dockerfile");
    assert_int_equal(s.build_timeout, 600);
    assert_int_equal(loom_build_size_resources(s.strategy_size)->cpu_millis, 500);
    loom_spec_release(&s);
    json_decref(spec);
    json_decref(body);

    /* a run that brings an upload drops the build's git source with its revision */
    const char *up = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    body = json_pack("{s:s,s:s,s:s}", "name", "r", "build_name", "b", "source_upload", up);
    spec = NULL;
    assert_int_equal(loom_spec_buildrun(build, body, &spec, &err), 0);
    assert_int_equal(loom_spec_decode(LOOM_KIND_BUILDRUN, spec, &s, &err), 0);
    assert_int_equal(s.source_type, LOOM_SOURCE_LOCAL);
    assert_string_equal(s.source_upload, up);
    assert_null(s.source_url);
    assert_null(s.source_revision);
    loom_spec_release(&s);
    json_decref(spec);
    json_decref(body);
    json_decref(build);

    /* a standalone run needs its source whole */
    body = parse("{\"name\":\"r\",\"strategy_type\":\"dockerfile\"}");
    spec = NULL;
    assert_int_equal(loom_spec_buildrun(NULL, body, &spec, &err), -1);
    assert_non_null(strstr(err.msg, "source_upload"));
    json_decref(body);

    static const char *const bad[][2] = {
        {"{\"source_url\":\"ext::x@y:z\"}", "source_url"},
        {"{\"source_url\":\"-uhttps://x\"}", "source_url"},
        {"{\"source_url\":\"https://x\",\"source_revision\":\"--upload-pack=x\"}",
         "source_revision"},
        {"{\"source_url\":\"https://x\",\"source_revision\":\"a..b\"}", "source_revision"},
        {"{\"source_context_dir\":\"../up\"}", "source_context_dir"},
        {"{\"source_context_dir\":\"/abs\"}", "source_context_dir"},
        {"{\"strategy_spec_file\":\"a/./Dockerfile\"}", "strategy_spec_file"},
        {"{\"source_upload\":\"sha256:12\"}", "source_upload"},
        {"{\"strategy_type\":\"magic\"}", "strategy_type"},
        {"{\"strategy_size\":\"huge\"}", "strategy_size"},
        {"{\"output_image\":\"r/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef01234567"
         "89abcdef\"}",
         "output_image"},
        {"{\"output_image\":\"Web\"}", "output_image"},
        {"{\"timeout\":0}", "timeout"},
        {"{\"source_url\":\"https://x\",\"source_type\":\"local\"}", "source_url"},
        {"{\"source_type\":\"git\"}", "source_url"},
        {"{\"source_secret\":\"creds\"}", "source_secret"},
        {"{\"output_type\":\"tarball\"}", "output_type"},
        {"{\"output_type\":\"bundle\",\"strategy_type\":\"dockerfile\"}", "strategy_type"},
        {"{\"output_type\":\"bundle\",\"output_image\":\"x\"}", "output_image"},
        {"{\"output_type\":\"bundle\",\"output_secret\":\"reg\"}", "output_secret"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = parse(bad[i][0]), *out = NULL;
        if (loom_spec_validate(LOOM_KIND_BUILD, j, false, &out, &err) == 0)
            fail_msg("%s was accepted", bad[i][0]);
        if (!strstr(err.msg, bad[i][1]))
            fail_msg("%s: \"%s\" does not name %s", bad[i][0], err.msg, bad[i][1]);
        json_decref(j);
    }
    /* an scp-like URL, a tagged output in another registry, a nested context */
    body = parse("{\"source_url\":\"git@git.example:team/a.git\",\"output_image\":"
                 "\"reg.example:5000/Team/web:V1\",\"source_context_dir\":\"svc/web\"}");
    assert_int_equal(loom_spec_validate(LOOM_KIND_BUILD, body, false, &build, &err), -1);
    assert_non_null(strstr(err.msg, "lowercase"));
    json_object_set_new(body, "output_image", json_string("reg.example:5000/team/web:V1"));
    build = NULL;
    assert_int_equal(loom_spec_validate(LOOM_KIND_BUILD, body, false, &build, &err), 0);
    json_decref(build);
    json_decref(body);
}

/* The OpenAPI schema of a kind's fields is the table's. */
static void test_schema(void **state)
{
    (void)state;
    json_t *app = loom_spec_schema(LOOM_K_APP, LOOM_K_JOBS);
    json_t *props = json_object_get(app, "properties");
    json_t *port = json_object_get(props, "image_port");
    assert_int_equal(json_integer_value(json_object_get(port, "minimum")), 1);
    assert_int_equal(json_integer_value(json_object_get(port, "maximum")), 65535);
    assert_int_equal(json_integer_value(json_object_get(port, "default")), 8080);
    assert_non_null(json_object_get(port, "description"));
    assert_int_equal(json_array_size(json_object_get(json_object_get(props, "visibility"), "enum")),
                     3);
    assert_null(json_object_get(props, "image_reference")); /* a run field, shared */
    assert_null(json_object_get(props, "scale_retry_limit"));
    json_decref(app);
    json_t *run = loom_spec_schema(LOOM_K_RUNS, 0);
    props = json_object_get(run, "properties");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(props, "scale_cpu_limit"), "default")),
        "1");
    assert_null(json_object_get(props, "image_port"));
    json_decref(run);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),         cmocka_unit_test(test_decode_defaults),
        cmocka_unit_test(test_decode_values), cmocka_unit_test(test_decode_refuses),
        cmocka_unit_test(test_jobrun),        cmocka_unit_test(test_schema),
        cmocka_unit_test(test_builds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
