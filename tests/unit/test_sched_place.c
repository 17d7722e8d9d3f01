/* The scheduler's pure logic: resource parsing, node choice, taking indices
 * from a pending multirange, PostgreSQL literals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "services/scheduler/sched.h"
#include "util.h"

static void test_parse_cpu(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(sched_parse_cpu("1", &v), 0);
    assert_int_equal(v, 1000);
    assert_int_equal(sched_parse_cpu("0.5", &v), 0);
    assert_int_equal(v, 500);
    assert_int_equal(sched_parse_cpu("0.125", &v), 0);
    assert_int_equal(v, 125);
    assert_int_equal(sched_parse_cpu("250m", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(sched_parse_cpu("8", &v), 0);
    assert_int_equal(v, 8000);
    const char *bad[] = {"", "0", "-1", "abc", "1x", "0x10", "1e3", " 1", "0.0001", "1.5mm"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sched_parse_cpu(bad[i], &v), -1);
    assert_int_equal(sched_parse_cpu(NULL, &v), -1);
}

static void test_parse_memory(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(sched_parse_memory("4G", &v), 0);
    assert_int_equal(v, 4000000000LL);
    assert_int_equal(sched_parse_memory("512M", &v), 0);
    assert_int_equal(v, 512000000LL);
    assert_int_equal(sched_parse_memory("64K", &v), 0);
    assert_int_equal(v, 64000);
    assert_int_equal(sched_parse_memory("1Gi", &v), 0);
    assert_int_equal(v, 1073741824LL);
    assert_int_equal(sched_parse_memory("512Mi", &v), 0);
    assert_int_equal(v, 536870912LL);
    assert_int_equal(sched_parse_memory("2Ki", &v), 0);
    assert_int_equal(v, 2048);
    assert_int_equal(sched_parse_memory("0.5G", &v), 0);
    assert_int_equal(v, 500000000LL);
    assert_int_equal(sched_parse_memory("1024", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(sched_parse_memory("2GB", &v), 0);
    assert_int_equal(v, 2000000000LL);
    const char *bad[] = {"", "0", "G", "4X", "-1G", "4 G", "4g ", "1e9", "0x100"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sched_parse_memory(bad[i], &v), -1);
}

static void test_request_defaults(void **state)
{
    (void)state;
    struct sched_request r;
    char why[128];
    assert_int_equal(sched_request_from_columns(NULL, NULL, NULL, NULL, &r, why, sizeof(why)), 0);
    assert_int_equal(r.cpu_millis, 1000);
    assert_int_equal(r.memory_bytes, 4000000000LL);
    assert_int_equal(r.gpus, 0);
    assert_int_equal(sched_request_from_columns("2", "8G", "1", "H100", &r, why, sizeof(why)), 0);
    assert_int_equal(r.cpu_millis, 2000);
    assert_int_equal(r.gpus, 1);
    assert_string_equal(r.gpu_model, "H100");
    assert_int_equal(sched_request_from_columns("two", NULL, NULL, NULL, &r, why, sizeof(why)), -1);
    assert_string_equal(why, "invalid scale_cpu_limit \"two\"");
    assert_int_equal(sched_request_from_columns(NULL, "4Q", NULL, NULL, &r, why, sizeof(why)), -1);
    assert_string_equal(why, "invalid scale_memory_limit \"4Q\"");
}

static struct sched_node node(const char *name, int64_t cpu, int64_t mem, int64_t cpu_used,
                              int64_t mem_used)
{
    struct sched_node n = {0};
    n.name = (char *)name;
    n.cpu_total = cpu;
    n.mem_total = mem;
    n.cpu_used = cpu_used;
    n.mem_used = mem_used;
    return n;
}

static void test_fits(void **state)
{
    (void)state;
    struct sched_node n = node("a", 4000, 8000, 3000, 0);
    struct sched_request r = {.cpu_millis = 1000, .memory_bytes = 8000};
    assert_true(sched_node_fits(&n, &r));
    r.cpu_millis = 1001;
    assert_false(sched_node_fits(&n, &r));
    r.cpu_millis = 1;
    r.memory_bytes = 8001;
    assert_false(sched_node_fits(&n, &r));
    /* GPUs: count and model */
    r.memory_bytes = 1;
    r.gpus = 1;
    assert_false(sched_node_fits(&n, &r));
    n.gpus_total = 2;
    n.gpu_model = (char *)"H100";
    assert_true(sched_node_fits(&n, &r));
    r.gpu_model = "h100";
    assert_true(sched_node_fits(&n, &r));
    r.gpu_model = "A100";
    assert_false(sched_node_fits(&n, &r));
    r.gpu_model = "";
    n.gpus_used = 2;
    assert_false(sched_node_fits(&n, &r));
}

static void test_choose_binpack(void **state)
{
    (void)state;
    /* small cluster: every node is looked at, the fullest that fits wins */
    struct sched_node nodes[] = {
        node("empty", 4000, 4000, 0, 0),
        node("half", 4000, 4000, 2000, 2000),
        node("full", 4000, 4000, 4000, 4000),
        node("most", 4000, 4000, 3000, 3000),
    };
    struct sched_request r = {.cpu_millis = 1000, .memory_bytes = 1000};
    uint64_t rng = 42;
    long i = sched_choose_node(nodes, 4, &r, sched_sample_size(4), &rng);
    assert_int_equal(i, 3);
    r.cpu_millis = 1500;
    i = sched_choose_node(nodes, 4, &r, sched_sample_size(4), &rng);
    assert_int_equal(i, 1);
    r.cpu_millis = 5000;
    assert_int_equal(sched_choose_node(nodes, 4, &r, sched_sample_size(4), &rng), -1);
    assert_int_equal(sched_choose_node(nodes, 0, &r, 2, &rng), -1);
}

static void test_choose_large_finds_the_only_fit(void **state)
{
    (void)state;
    /* 10,000 full nodes and one with room: the sample misses it, the scan
     * finds it */
    size_t n = 10000;
    struct sched_node *nodes = calloc(n, sizeof(*nodes));
    assert_non_null(nodes);
    for (size_t i = 0; i < n; i++)
        nodes[i] = node("x", 1000, 1000, 1000, 1000);
    nodes[7777].cpu_used = 0;
    nodes[7777].mem_used = 0;
    struct sched_request r = {.cpu_millis = 500, .memory_bytes = 500};
    uint64_t rng = 7;
    assert_int_equal(sched_sample_size(n), 14);
    for (int k = 0; k < 5; k++)
        assert_int_equal(sched_choose_node(nodes, n, &r, sched_sample_size(n), &rng), 7777);
    free(nodes);
}

static void test_choose_spreads_load_when_sampling(void **state)
{
    (void)state;
    /* repeated choices with capacity taken as we go never overfill a node */
    size_t n = 1000;
    struct sched_node *nodes = calloc(n, sizeof(*nodes));
    assert_non_null(nodes);
    for (size_t i = 0; i < n; i++)
        nodes[i] = node("x", 4000, 16000, 0, 0);
    struct sched_request r = {.cpu_millis = 1000, .memory_bytes = 1000};
    uint64_t rng = 1;
    for (int k = 0; k < 4000; k++) {
        long i = sched_choose_node(nodes, n, &r, sched_sample_size(n), &rng);
        assert_true(i >= 0);
        nodes[i].cpu_used += r.cpu_millis;
        nodes[i].mem_used += r.memory_bytes;
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(nodes[i].cpu_used, 4000);
    assert_int_equal(sched_choose_node(nodes, n, &r, sched_sample_size(n), &rng), -1);
    free(nodes);
}

static void test_take_indices(void **state)
{
    (void)state;
    struct loom_range ranges[] = {{0, 2}, {5, 5}, {10, 19}};
    struct loom_arrayspec spec = {ranges, 3, 14};
    int32_t out[20];
    assert_int_equal(sched_take_indices(&spec, 5, out), 5);
    int32_t want[] = {0, 1, 2, 5, 10};
    assert_memory_equal(out, want, sizeof(want));
    assert_int_equal(sched_take_indices(&spec, 100, out), 14);
    assert_int_equal(out[13], 19);
    assert_int_equal(sched_take_indices(&spec, 0, out), 0);
    struct loom_arrayspec empty = {NULL, 0, 0};
    assert_int_equal(sched_take_indices(&empty, 5, out), 0);
}

static void test_multirange_and_arrays(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    int32_t idx[] = {0, 1, 2, 5, 10, 11};
    sched_indices_multirange(idx, 6, &sb);
    assert_string_equal(sb.buf, "{[0,3),[5,6),[10,12)}");
    strbuf_reset(&sb);
    sched_indices_multirange(idx, 0, &sb);
    assert_string_equal(sb.buf, "{}");
    strbuf_reset(&sb);
    sched_pg_array_end(&sb);
    assert_string_equal(sb.buf, "{}");
    strbuf_reset(&sb);
    sched_pg_array_add(&sb, "a");
    sched_pg_array_add(&sb, "b\"c\\d");
    sched_pg_array_add(&sb, "");
    sched_pg_array_end(&sb);
    assert_string_equal(sb.buf, "{\"a\",\"b\\\"c\\\\d\",\"\"}");
    strbuf_release(&sb);
}

static void test_describe(void **state)
{
    (void)state;
    char buf[128];
    struct sched_request r = {.cpu_millis = 2000, .memory_bytes = 4000000000LL};
    sched_describe_request(&r, buf, sizeof(buf));
    assert_string_equal(buf, "no node fits cpu=2000m memory=4G");
    r.memory_bytes = 512LL * 1024 * 1024;
    r.gpus = 2;
    r.gpu_model = "H100";
    sched_describe_request(&r, buf, sizeof(buf));
    assert_string_equal(buf, "no node fits cpu=2000m memory=512Mi gpus=2 model=H100");
}

static void test_names(void **state)
{
    (void)state;
    assert_true(sched_valid_node_name("node-1"));
    assert_true(sched_valid_node_name("N_2"));
    assert_false(sched_valid_node_name(""));
    assert_false(sched_valid_node_name("-x"));
    assert_false(sched_valid_node_name("a.b"));
    assert_false(sched_valid_node_name("a*"));
    assert_false(sched_valid_node_name("a>"));
    assert_false(sched_valid_node_name(NULL));
    assert_true(loom_is_uuid("9abf38fa-ebb7-407a-97be-5b4a8f43755d"));
    assert_false(loom_is_uuid("9abf38fa-ebb7-407a-97be-5b4a8f43755"));
    assert_false(loom_is_uuid("9abf38fa+ebb7-407a-97be-5b4a8f43755d"));
    assert_false(loom_is_uuid("9abf38fa-ebb7-407a-97be-5b4a8f43755g"));
}

static void test_fits_labels_and_disk(void **state)
{
    (void)state;
    struct sched_node n = node("a", 4000, 8000, 0, 0);
    struct sched_request r = {.cpu_millis = 1000, .memory_bytes = 1000};
    json_t *sel = json_pack("{s:s}", "zone", "b");
    r.selector = sel;
    assert_false(sched_node_fits(&n, &r)); /* no labels */
    n.labels = json_pack("{s:s,s:s}", "zone", "a", "disk", "ssd");
    assert_false(sched_node_fits(&n, &r));
    json_object_set_new(n.labels, "zone", json_string("b"));
    assert_true(sched_node_fits(&n, &r));
    json_object_set_new(sel, "disk", json_string("hdd"));
    assert_false(sched_node_fits(&n, &r));
    r.selector = NULL;
    /* ephemeral storage: fitted only when the node says how much disk it has */
    r.ephemeral_bytes = 400000000;
    assert_true(sched_node_fits(&n, &r));
    n.disk_total = 1000000000;
    n.disk_used = 700000000;
    assert_false(sched_node_fits(&n, &r));
    n.disk_used = 600000000;
    assert_true(sched_node_fits(&n, &r));
    json_t *spec = json_pack("{s:s}", "scale_ephemeral_storage_limit", "1G");
    assert_int_equal(sched_spec_ephemeral(spec), 1000000000);
    json_object_del(spec, "scale_ephemeral_storage_limit");
    assert_int_equal(sched_spec_ephemeral(spec), SCHED_EPHEMERAL_DEFAULT);
    json_decref(spec);
    json_decref(sel);
    json_decref(n.labels);
}

static void test_choose_spread(void **state)
{
    (void)state;
    struct sched_node nodes[] = {
        node("half", 4000, 4000, 2000, 2000),
        node("empty", 4000, 4000, 0, 0),
        node("most", 4000, 4000, 3000, 3000),
    };
    struct sched_request r = {.cpu_millis = 1000, .memory_bytes = 1000, .spread = true};
    uint64_t rng = 7;
    assert_int_equal(sched_choose_node(nodes, 3, &r, sched_sample_size(3), &rng), 1);
    r.spread = false;
    assert_int_equal(sched_choose_node(nodes, 3, &r, sched_sample_size(3), &rng), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_cpu),
        cmocka_unit_test(test_parse_memory),
        cmocka_unit_test(test_request_defaults),
        cmocka_unit_test(test_fits),
        cmocka_unit_test(test_fits_labels_and_disk),
        cmocka_unit_test(test_choose_spread),
        cmocka_unit_test(test_choose_binpack),
        cmocka_unit_test(test_choose_large_finds_the_only_fit),
        cmocka_unit_test(test_choose_spreads_load_when_sampling),
        cmocka_unit_test(test_take_indices),
        cmocka_unit_test(test_multirange_and_arrays),
        cmocka_unit_test(test_describe),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
