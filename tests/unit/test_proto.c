#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bus.h"
#include "loom/v1/common.pb-c.h"
#include "loom/v1/instance.pb-c.h"
#include "loom/v1/log.pb-c.h"
#include "loom/v1/node.pb-c.h"
#include "loom/v1/scale.pb-c.h"
#include "loom/v1/usage.pb-c.h"

static natsMsg *make_msg(const void *data, size_t len)
{
    natsMsg *m = NULL;
    assert_int_equal(natsMsg_Create(&m, "loom.test", NULL, data, (int)len), NATS_OK);
    return m;
}

/* Packs msg, unpacks it through loom_bus_unpack and checks that it packs to
 * the same bytes. Returns the unpacked copy for field checks. */
static ProtobufCMessage *round_trip(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len + 1);
    protobuf_c_message_pack(msg, buf);
    natsMsg *m = make_msg(buf, len);
    struct loom_err err = LOOM_ERR_INIT;
    ProtobufCMessage *back = loom_bus_unpack(m, msg->descriptor, &err);
    natsMsg_Destroy(m);
    if (!back)
        fail_msg("%s: %s", msg->descriptor->name, err.msg);
    assert_ptr_equal(back->descriptor, msg->descriptor);
    size_t len2 = protobuf_c_message_get_packed_size(back);
    assert_int_equal(len2, len);
    uint8_t *buf2 = malloc(len2 + 1);
    protobuf_c_message_pack(back, buf2);
    assert_memory_equal(buf, buf2, len);
    free(buf);
    free(buf2);
    return back;
}

static void test_ack_envvar(void **state)
{
    (void)state;
    Loom__V1__Ack ack = LOOM__V1__ACK__INIT;
    ack.ok = false;
    ack.error = (char *)"stale epoch 3 < 4";
    ack.stale_epoch = true;
    Loom__V1__Ack *a = (Loom__V1__Ack *)round_trip(&ack.base);
    assert_false(a->ok);
    assert_true(a->stale_epoch);
    assert_string_equal(a->error, "stale epoch 3 < 4");
    protobuf_c_message_free_unpacked(&a->base, NULL);

    Loom__V1__EnvVar ev = LOOM__V1__ENV_VAR__INIT;
    ev.name = (char *)"JOB_INDEX";
    ev.value = (char *)"7";
    Loom__V1__EnvVar *e = (Loom__V1__EnvVar *)round_trip(&ev.base);
    assert_string_equal(e->name, "JOB_INDEX");
    assert_string_equal(e->value, "7");
    protobuf_c_message_free_unpacked(&e->base, NULL);
}

static void test_instance_messages(void **state)
{
    (void)state;
    Loom__V1__EnvVar e1 = LOOM__V1__ENV_VAR__INIT, e2 = LOOM__V1__ENV_VAR__INIT;
    e1.name = (char *)"A";
    e1.value = (char *)"1";
    e2.name = (char *)"B";
    e2.value = (char *)"";
    Loom__V1__EnvVar *env[] = {&e1, &e2};
    char *cmd[] = {(char *)"/bin/sh", (char *)"-c", (char *)"echo hi"};
    Loom__V1__InstanceAssign as = LOOM__V1__INSTANCE_ASSIGN__INIT;
    as.instance_id = (char *)"0b7e2c1a-6a43-4f7d-9b8e-0c1d2e3f4a5b";
    as.epoch = 12;
    as.project = (char *)"proj";
    as.kind = LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_JOB;
    as.image = (char *)"127.0.0.1:5000/busybox:latest";
    as.n_command = 3;
    as.command = cmd;
    as.n_env = 2;
    as.env = env;
    as.cpu_millis = 500;
    as.memory_bytes = 512LL << 20;
    as.port = 8080;
    as.max_execution_seconds = 3600;
    as.job_run = (char *)"run-1";
    as.array_index = 9999999;
    as.retry = 2;
    as.gpus = 1;
    as.registry_auth = (char *)"u:p";
    Loom__V1__InstanceAssign *a = (Loom__V1__InstanceAssign *)round_trip(&as.base);
    assert_string_equal(a->instance_id, as.instance_id);
    assert_int_equal(a->epoch, 12);
    assert_int_equal(a->kind, LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_JOB);
    assert_int_equal(a->n_command, 3);
    assert_string_equal(a->command[2], "echo hi");
    assert_int_equal(a->n_env, 2);
    assert_string_equal(a->env[1]->name, "B");
    assert_int_equal(a->memory_bytes, 512LL << 20);
    assert_int_equal(a->array_index, 9999999);
    assert_string_equal(a->registry_auth, "u:p");
    protobuf_c_message_free_unpacked(&a->base, NULL);

    Loom__V1__InstanceStop st = LOOM__V1__INSTANCE_STOP__INIT;
    st.instance_id = (char *)"i";
    st.epoch = 3;
    st.reason = (char *)"scaled down";
    st.grace_seconds = 10;
    Loom__V1__InstanceStop *s = (Loom__V1__InstanceStop *)round_trip(&st.base);
    assert_int_equal(s->grace_seconds, 10);
    assert_string_equal(s->reason, "scaled down");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    Loom__V1__InstanceReport rp = LOOM__V1__INSTANCE_REPORT__INIT;
    rp.instance_id = (char *)"i";
    rp.node = (char *)"node-1";
    rp.state = LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_FAILED;
    rp.exit_code = -9;
    rp.reason = (char *)"OOM";
    rp.address = (char *)"10.88.0.2:8080";
    rp.ts_unix_ms = 1795839932123LL;
    rp.oom_killed = true;
    rp.timed_out = true;
    rp.seq = UINT64_MAX;
    rp.permanent = true;
    Loom__V1__InstanceReport *r = (Loom__V1__InstanceReport *)round_trip(&rp.base);
    assert_int_equal(r->state, LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_FAILED);
    assert_int_equal(r->exit_code, -9);
    assert_true(r->oom_killed && r->timed_out && r->permanent);
    assert_true(r->seq == UINT64_MAX);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void test_log_messages(void **state)
{
    (void)state;
    Loom__V1__LogLine l1 = LOOM__V1__LOG_LINE__INIT, l2 = LOOM__V1__LOG_LINE__INIT;
    l1.ts_unix_ns = 1795839932123456789LL;
    l1.stream = LOOM__V1__LOG_STREAM__LOG_STREAM_STDOUT;
    l1.text = (char *)"hello";
    l1.offset = 0;
    l2.stream = LOOM__V1__LOG_STREAM__LOG_STREAM_STDERR;
    l2.text = (char *)"w\xc3\xa9rld";
    l2.offset = 123456789012ULL;
    Loom__V1__LogLine *lines[] = {&l1, &l2};
    Loom__V1__LogBatch b = LOOM__V1__LOG_BATCH__INIT;
    b.instance_id = (char *)"i";
    b.project = (char *)"p";
    b.n_lines = 2;
    b.lines = lines;
    Loom__V1__LogBatch *o = (Loom__V1__LogBatch *)round_trip(&b.base);
    assert_int_equal(o->n_lines, 2);
    assert_int_equal(o->lines[0]->ts_unix_ns, 1795839932123456789LL);
    assert_int_equal(o->lines[1]->stream, LOOM__V1__LOG_STREAM__LOG_STREAM_STDERR);
    assert_string_equal(o->lines[1]->text, "w\xc3\xa9rld");
    assert_true(o->lines[1]->offset == 123456789012ULL);
    protobuf_c_message_free_unpacked(&o->base, NULL);

    Loom__V1__LogLine *l = (Loom__V1__LogLine *)round_trip(&l1.base);
    assert_string_equal(l->text, "hello");
    protobuf_c_message_free_unpacked(&l->base, NULL);
}

static void test_node_messages(void **state)
{
    (void)state;
    Loom__V1__GpuDevice g = LOOM__V1__GPU_DEVICE__INIT;
    g.id = (char *)"0";
    g.model = (char *)"H100";
    g.path = (char *)"/dev/nvidia0";
    Loom__V1__GpuDevice *gpus[] = {&g};
    Loom__V1__NodeRegister__LabelsEntry lab = LOOM__V1__NODE_REGISTER__LABELS_ENTRY__INIT;
    lab.key = (char *)"zone";
    lab.value = (char *)"a";
    Loom__V1__NodeRegister__LabelsEntry *labels[] = {&lab};
    Loom__V1__NodeRegister nr = LOOM__V1__NODE_REGISTER__INIT;
    nr.node = (char *)"node-1";
    nr.address = (char *)"127.0.0.1";
    nr.boot_id = (char *)"boot";
    nr.cpu_millis = 2000;
    nr.memory_bytes = 8LL << 30;
    nr.disk_bytes = 64LL << 30;
    nr.n_labels = 1;
    nr.labels = labels;
    nr.n_gpus = 1;
    nr.gpus = gpus;
    nr.version = (char *)"0.1";
    nr.simulated = true;
    nr.subnet = (char *)"10.88.0.0/16";
    Loom__V1__NodeRegister *n = (Loom__V1__NodeRegister *)round_trip(&nr.base);
    assert_int_equal(n->n_labels, 1);
    assert_string_equal(n->labels[0]->key, "zone");
    assert_string_equal(n->gpus[0]->model, "H100");
    assert_true(n->simulated);
    assert_string_equal(n->subnet, "10.88.0.0/16");
    protobuf_c_message_free_unpacked(&n->base, NULL);

    Loom__V1__GpuDevice *gd = (Loom__V1__GpuDevice *)round_trip(&g.base);
    assert_string_equal(gd->path, "/dev/nvidia0");
    protobuf_c_message_free_unpacked(&gd->base, NULL);

    char *ids[] = {(char *)"a", (char *)"b"};
    Loom__V1__NodeHeartbeat hb = LOOM__V1__NODE_HEARTBEAT__INIT;
    hb.node = (char *)"node-1";
    hb.boot_id = (char *)"boot";
    hb.seq = 99;
    hb.n_instance_ids = 2;
    hb.instance_ids = ids;
    hb.epoch_seen = 5;
    Loom__V1__NodeHeartbeat *h = (Loom__V1__NodeHeartbeat *)round_trip(&hb.base);
    assert_int_equal(h->n_instance_ids, 2);
    assert_string_equal(h->instance_ids[1], "b");
    assert_int_equal(h->epoch_seen, 5);
    protobuf_c_message_free_unpacked(&h->base, NULL);
}

static void test_scale_usage(void **state)
{
    (void)state;
    Loom__V1__ScaleDecision sd = LOOM__V1__SCALE_DECISION__INIT;
    sd.project = (char *)"p";
    sd.app = (char *)"web";
    sd.generation = 4;
    sd.desired = 3;
    sd.ts_unix_ms = 1;
    sd.reason = (char *)"concurrency";
    Loom__V1__ScaleDecision *s = (Loom__V1__ScaleDecision *)round_trip(&sd.base);
    assert_int_equal(s->desired, 3);
    assert_string_equal(s->app, "web");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    Loom__V1__UsageSample us = LOOM__V1__USAGE_SAMPLE__INIT;
    us.instance_id = (char *)"i";
    us.node = (char *)"n";
    us.project = (char *)"p";
    us.seq = 7;
    us.ts_unix_ms = 2;
    us.interval_ms = 1000;
    us.cpu_usage_ns = 123456789;
    us.memory_bytes = 1 << 20;
    us.memory_peak_bytes = 2 << 20;
    us.cpu_millis_alloc = 1000;
    us.memory_bytes_alloc = 4LL << 30;
    us.gpus = 2;
    Loom__V1__UsageSample *u = (Loom__V1__UsageSample *)round_trip(&us.base);
    assert_true(u->cpu_usage_ns == 123456789);
    assert_int_equal(u->memory_bytes_alloc, 4LL << 30);
    assert_int_equal(u->gpus, 2);
    protobuf_c_message_free_unpacked(&u->base, NULL);
}

static void test_empty_message_is_defaults(void **state)
{
    (void)state;
    natsMsg *m = make_msg(NULL, 0);
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__Ack *a = (Loom__V1__Ack *)loom_bus_unpack(m, &loom__v1__ack__descriptor, &err);
    natsMsg_Destroy(m);
    assert_non_null(a);
    assert_false(a->ok);
    assert_string_equal(a->error, "");
    protobuf_c_message_free_unpacked(&a->base, NULL);
}

static void test_refuses_bad_bytes(void **state)
{
    (void)state;
    Loom__V1__InstanceReport rp = LOOM__V1__INSTANCE_REPORT__INIT;
    rp.instance_id = (char *)"0b7e2c1a-6a43-4f7d-9b8e-0c1d2e3f4a5b";
    rp.node = (char *)"node-1";
    rp.state = LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_RUNNING;
    size_t len = protobuf_c_message_get_packed_size(&rp.base);
    uint8_t *buf = malloc(len);
    protobuf_c_message_pack(&rp.base, buf);
    struct loom_err err = LOOM_ERR_INIT;

    /* cut inside the first string: its length prefix promises more bytes */
    for (size_t cut = 1; cut < 20; cut++) {
        natsMsg *m = make_msg(buf, cut);
        ProtobufCMessage *r = loom_bus_unpack(m, &loom__v1__instance_report__descriptor, &err);
        natsMsg_Destroy(m);
        if (r)
            fail_msg("accepted a report cut at %zu bytes", cut);
        assert_int_equal(err.code, LOOM_EINVAL);
        assert_non_null(strstr(err.msg, "loom.v1.InstanceReport"));
        assert_non_null(strstr(err.msg, "loom.test"));
    }
    free(buf);

    static const uint8_t garbage[][6] = {
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, /* unterminated varint key */
        {0x0a, 0x7f, 'a', 'b', 'c', 'd'},     /* string longer than the data */
        {0x08, 0xff, 0xff, 0xff, 0xff, 0xff}, /* unterminated varint value */
        {0x0f, 0x00, 0x00, 0x00, 0x00, 0x00}, /* wire type 7 does not exist */
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        natsMsg *m = make_msg(garbage[i], sizeof(garbage[i]));
        ProtobufCMessage *r = loom_bus_unpack(m, &loom__v1__instance_report__descriptor, &err);
        natsMsg_Destroy(m);
        if (r)
            fail_msg("accepted garbage %zu", i);
        assert_int_equal(err.code, LOOM_EINVAL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ack_envvar),        cmocka_unit_test(test_instance_messages),
        cmocka_unit_test(test_log_messages),      cmocka_unit_test(test_node_messages),
        cmocka_unit_test(test_scale_usage),       cmocka_unit_test(test_empty_message_is_defaults),
        cmocka_unit_test(test_refuses_bad_bytes),
    };
    /* natsMsg_Destroy needs the library's state, which natsMsg_Create does not set up */
    if (nats_Open(-1) != NATS_OK)
        return 1;
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nats_Close(); /* frees nats.c's library state for LeakSanitizer */
    return rc;
}
