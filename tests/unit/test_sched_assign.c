/* The scheduler's InstanceAssign, built from a row, a decoded spec and the
 * resolved references without any I/O: every variable the user gave (no cap),
 * then Loom's; limits, probes and mounts as the agent needs them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "loom/v1/instance.pb-c.h"
#include "services/scheduler/sched.h"
#include "spec.h"

static const char *env_of(const Loom__V1__InstanceAssign *a, const char *name)
{
    const char *v = NULL;
    for (size_t i = 0; i < a->n_env; i++)
        if (strcmp(a->env[i]->name, name) == 0)
            v = a->env[i]->value; /* the last one wins, as in the container */
    return v;
}

static void decode(enum loom_kind k, const char *text, struct loom_spec *s)
{
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_spec_decode_text(k, text, s, &err) < 0)
        fail_msg("%s", err.msg);
}

static void test_job_index(void **state)
{
    (void)state;
    struct loom_spec spec;
    decode(LOOM_KIND_JOBRUN,
           "{\"image_reference\":\"r/x:1\",\"run_commands\":[\"/bin/sh\",\"-c\",\"env\"],"
           "\"run_arguments\":[\"a\"],\"scale_max_execution_time\":60}",
           &spec);
    /* more variables than any fixed table would hold, and one that
     * collides with Loom's */
    struct sched_assign_refs refs = {.env = json_array(), .mounts = json_array()};
    for (int i = 0; i < 150; i++) {
        char name[16];
        snprintf(name, sizeof(name), "V%d", i);
        json_array_append_new(refs.env, json_pack("[ss]", name, "x"));
    }
    json_array_append_new(refs.env, json_pack("[ss]", "JOB_INDEX", "mine"));
    json_array_append_new(refs.mounts,
                          json_pack("{s:s,s:{s:s,s:s},s:b}", "path", "/etc/db", "files", "user",
                                    "ada", "password", "hunter2", "secret", 1));
    refs.auth = strdup("u:p");
    struct sched_assign_row row = {
        .id = "6f1e4c2a-1111-4222-8333-444455556666",
        .node = "n1",
        .project = "p",
        .job = true,
        .cpu_millis = 500,
        .memory_bytes = 2000000000,
        .ephemeral_bytes = 400000000,
        .gpus = 1,
        .retry = 2,
        .job_run = "run-1",
        .array_index = 7,
        .array_size = 10,
        .retry_limit = 3,
    };
    struct sched_assign as;
    sched_assign_build(&row, &spec, &refs, 42, &as);
    const Loom__V1__InstanceAssign *a = as.msg;
    assert_string_equal(a->instance_id, row.id);
    assert_int_equal(a->epoch, 42);
    assert_int_equal(a->kind, LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_JOB);
    assert_string_equal(a->image, "r/x:1");
    assert_int_equal(a->n_command, 3);
    assert_string_equal(a->command[2], "env");
    assert_int_equal(a->n_args, 1);
    assert_int_equal(a->cpu_millis, 500);
    assert_int_equal(a->memory_bytes, 2000000000);
    assert_int_equal(a->ephemeral_bytes, 400000000);
    assert_int_equal(a->gpus, 1);
    assert_int_equal(a->max_execution_seconds, 60);
    assert_string_equal(a->registry_auth, "u:p");
    /* all 151 of the user's, then Loom's */
    assert_int_equal(a->n_env, 151 + 7);
    assert_string_equal(a->env[0]->name, "V0");
    assert_string_equal(env_of(a, "V149"), "x");
    assert_string_equal(env_of(a, "JOB_INDEX"), "7");
    assert_string_equal(env_of(a, "JOB_ARRAY_SIZE"), "10");
    assert_string_equal(env_of(a, "JOB_INDEX_RETRY_COUNT"), "2");
    assert_string_equal(env_of(a, "JOB_RETRY_LIMIT"), "3");
    assert_string_equal(env_of(a, "JOB_MODE"), "task");
    assert_string_equal(env_of(a, "LOOM_JOBRUN"), "run-1");
    assert_string_equal(a->env[a->n_env - 1]->name, "LOOM_PROJECT");
    assert_null(env_of(a, "RANK"));
    assert_null(env_of(a, "PORT"));
    assert_int_equal(a->n_mounts, 1);
    assert_string_equal(a->mounts[0]->path, "/etc/db");
    assert_true(a->mounts[0]->secret);
    assert_int_equal(a->mounts[0]->n_files, 2);
    /* it packs, and unpacks to the same */
    size_t len = protobuf_c_message_get_packed_size(&a->base);
    uint8_t *buf = malloc(len);
    protobuf_c_message_pack(&a->base, buf);
    Loom__V1__InstanceAssign *back = loom__v1__instance_assign__unpack(NULL, len, buf);
    assert_non_null(back);
    assert_int_equal(back->n_env, a->n_env);
    loom__v1__instance_assign__free_unpacked(back, NULL);
    free(buf);
    sched_assign_release(&as);
    sched_assign_refs_release(&refs);
    loom_spec_release(&spec);
}

static void test_gang_and_daemon(void **state)
{
    (void)state;
    struct loom_spec spec;
    decode(LOOM_KIND_JOBRUN,
           "{\"image_reference\":\"r/x:1\",\"scale_nodes\":4,\"run_mode\":\"daemon\"}", &spec);
    struct sched_assign_refs refs = {.env = json_array(), .mounts = json_array()};
    struct sched_assign_row row = {
        .id = "i",
        .node = "n",
        .project = "p",
        .job = true,
        .job_run = "g",
        .rank = "2",
        .master = "10.0.0.5",
    };
    struct sched_assign as;
    sched_assign_build(&row, &spec, &refs, 1, &as);
    assert_int_equal(as.msg->max_execution_seconds, 0); /* a daemon has no limit */
    assert_string_equal(env_of(as.msg, "JOB_MODE"), "daemon");
    assert_string_equal(env_of(as.msg, "RANK"), "2");
    assert_string_equal(env_of(as.msg, "LOOM_RANK"), "2");
    assert_string_equal(env_of(as.msg, "WORLD_SIZE"), "4");
    assert_string_equal(env_of(as.msg, "MASTER_ADDR"), "10.0.0.5");
    assert_string_equal(env_of(as.msg, "MASTER_PORT"), "29500");
    assert_string_equal(as.msg->registry_auth, "");
    sched_assign_release(&as);
    sched_assign_refs_release(&refs);
    loom_spec_release(&spec);
}

static void test_app_instance(void **state)
{
    (void)state;
    struct loom_spec spec;
    decode(LOOM_KIND_APP,
           "{\"image_reference\":\"r/web:1\",\"image_port\":9000,\"probe_readiness\":{"
           "\"type\":\"http\",\"path\":\"/ready\",\"interval\":5,\"initial_delay\":0,"
           "\"timeout\":1,\"failure_threshold\":3},\"probe_liveness\":{\"type\":\"tcp\","
           "\"port\":9001,\"interval\":10,\"initial_delay\":2,\"timeout\":1,"
           "\"failure_threshold\":3}}",
           &spec);
    struct sched_assign_refs refs = {.env = json_array(), .mounts = json_array()};
    json_array_append_new(refs.env, json_pack("[ss]", "PORT", "1"));
    struct sched_assign_row row = {
        .id = "i",
        .node = "n",
        .project = "p",
        .app = "web",
        .generation = 3,
    };
    struct sched_assign as;
    sched_assign_build(&row, &spec, &refs, 1, &as);
    const Loom__V1__InstanceAssign *a = as.msg;
    assert_int_equal(a->kind, LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_APP);
    assert_int_equal(a->port, 9000);
    assert_string_equal(env_of(a, "PORT"), "9000"); /* Loom's wins */
    assert_string_equal(env_of(a, "K_SERVICE"), "web");
    assert_string_equal(env_of(a, "K_REVISION"), "web-00003");
    assert_null(env_of(a, "JOB_INDEX"));
    assert_non_null(a->readiness);
    assert_string_equal(a->readiness->type, "http");
    assert_string_equal(a->readiness->path, "/ready");
    assert_int_equal(a->readiness->period_seconds, 5);
    assert_int_equal(a->readiness->port, 0);
    assert_non_null(a->liveness);
    assert_string_equal(a->liveness->type, "tcp");
    assert_int_equal(a->liveness->port, 9001);
    assert_int_equal(a->liveness->initial_delay_seconds, 2);
    sched_assign_release(&as);
    loom_spec_release(&spec);
    /* no probes: none sent */
    decode(LOOM_KIND_APP, "{\"image_reference\":\"r/web:1\"}", &spec);
    sched_assign_build(&row, &spec, &refs, 1, &as);
    assert_null(as.msg->readiness);
    assert_null(as.msg->liveness);
    assert_int_equal(as.msg->port, 8080);
    sched_assign_release(&as);
    sched_assign_refs_release(&refs);
    loom_spec_release(&spec);
}

/* A stem cell: no spec, its runtime's image and proxy port, a readiness
 * probe on /health, no project yet. */
static void test_stem_cell(void **state)
{
    (void)state;
    struct sched_assign_refs none = {0};
    struct sched_assign_row row = {
        .id = "i",
        .node = "n",
        .project = "",
        .cpu_millis = 125,
        .memory_bytes = 500000000,
        .function = true,
        .runtime = "python-3.11",
        .runtime_image = "r/loom/runtime-python-3.11:1",
    };
    struct sched_assign as;
    sched_assign_build(&row, NULL, &none, 7, &as);
    const Loom__V1__InstanceAssign *a = as.msg;
    assert_int_equal(a->kind, LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_FUNCTION);
    assert_string_equal(a->image, "r/loom/runtime-python-3.11:1");
    assert_int_equal(a->port, 8080);
    assert_int_equal(a->n_command, 0);
    assert_string_equal(a->project, "");
    assert_non_null(a->readiness);
    assert_string_equal(a->readiness->type, "http");
    assert_string_equal(a->readiness->path, "/health");
    assert_string_equal(env_of(a, "PORT"), "8080");
    assert_string_equal(env_of(a, "LOOM_RUNTIME"), "python-3.11");
    assert_null(env_of(a, "K_SERVICE"));
    sched_assign_release(&as);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_index),
        cmocka_unit_test(test_gang_and_daemon),
        cmocka_unit_test(test_app_instance),
        cmocka_unit_test(test_stem_cell),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
