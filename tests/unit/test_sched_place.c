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

#include "arrayspec.h"
#include "services/scheduler/sched.h"
#include "spec.h"
#include "util.h"

/* The request of a run: its row's integers, the rest from its decoded spec. */
static void test_request_from_spec(void **state)
{
    (void)state;
    json_t *j = json_pack("{s:s,s:s,s:{s:s},s:s}", "image_reference", "x:1", "scale_gpu_model",
                          "H100", "node_selector", "zone", "a", "placement", "spread");
    struct loom_spec spec;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_spec_decode(LOOM_KIND_JOBRUN, j, &spec, &err), 0);
    struct sched_request r;
    sched_request_init(&r, &spec, 2000, 8000000000LL, 400000000, 1);
    assert_int_equal(r.cpu_millis, 2000);
    assert_int_equal(r.memory_bytes, 8000000000LL);
    assert_int_equal(r.ephemeral_bytes, 400000000);
    assert_int_equal(r.gpus, 1);
    assert_string_equal(r.gpu_model, "H100");
    assert_string_equal(json_string_value(json_object_get(r.selector, "zone")), "a");
    assert_true(r.spread);
    loom_spec_release(&spec);
    /* an empty selector selects nothing; binpack by default */
    json_object_set_new(j, "node_selector", json_object());
    json_object_del(j, "placement");
    assert_int_equal(loom_spec_decode(LOOM_KIND_JOBRUN, j, &spec, &err), 0);
    sched_request_init(&r, &spec, 1000, 1, 1, 0);
    assert_null(r.selector);
    assert_false(r.spread);
    loom_spec_release(&spec);
    json_decref(j);
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

/* A run of the given pending indices ("0-9"), one 1000m/1000 instance each. */
static struct sched_run run_of(const char *pending, int64_t parallelism, int64_t running,
                               int64_t members)
{
    struct sched_run run = {.parallelism = parallelism, .n_running = running, .members = members};
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_arrayspec_parse(pending, 1000000, &run.pending, &err), 0);
    run.req = (struct sched_request){.cpu_millis = 1000, .memory_bytes = 1000};
    return run;
}

static void test_plan_lowest_indices_within_limits(void **state)
{
    (void)state;
    struct sched_node nodes[] = {node("a", 4000, 4000, 0, 0), node("b", 4000, 4000, 0, 0)};
    uint64_t rng = 3;
    struct sched_run run = run_of("3-9,20", 0, 0, 1);
    struct sched_run_plan p;
    /* the budget bounds it */
    sched_plan_run(&run, nodes, 2, 5, NULL, &rng, &p);
    assert_int_equal(p.n, 5);
    assert_int_equal(p.wanted, 5);
    int32_t want[] = {3, 4, 5, 6, 7};
    assert_memory_equal(p.idx, want, sizeof(want));
    assert_int_equal(nodes[0].cpu_used + nodes[1].cpu_used, 5000);
    assert_false(p.capped);
    assert_string_equal(p.why, "");
    sched_run_plan_release(&p);
    /* capacity bounds it: 3 more fit, the rest wait with a reason */
    sched_plan_run(&run, nodes, 2, 100, NULL, &rng, &p);
    assert_int_equal(p.wanted, 8);
    assert_int_equal(p.n, 3);
    assert_string_equal(p.why, "no node fits cpu=1000m memory=1K");
    assert_int_equal(nodes[0].cpu_used + nodes[1].cpu_used, 8000);
    sched_run_plan_release(&p);
    loom_arrayspec_release(&run.pending);

    /* parallelism: 2 run of 3 allowed, so one more starts and the rest wait */
    struct sched_node fresh[] = {node("a", 64000, 64000, 0, 0)};
    run = run_of("0-9", 3, 2, 1);
    sched_plan_run(&run, fresh, 1, 100, NULL, &rng, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.idx[0], 0);
    assert_true(p.capped);
    sched_run_plan_release(&p);
    /* none allowed: nothing tried, nothing to say */
    run.n_running = 3;
    sched_plan_run(&run, fresh, 1, 100, NULL, &rng, &p);
    assert_int_equal(p.wanted, 0);
    assert_string_equal(p.why, "");
    sched_run_plan_release(&p);
    loom_arrayspec_release(&run.pending);

    /* a quota with room for 2 instances */
    struct sched_quota q = {.cpu = -1, .mem = -1, .gpus = -1, .inst = 4, .inst_used = 2};
    run = run_of("0-9", 0, 0, 1);
    sched_plan_run(&run, fresh, 1, 100, &q, &rng, &p);
    assert_int_equal(p.n, 2);
    sched_run_plan_release(&p);
    q.inst_used = 4;
    sched_plan_run(&run, fresh, 1, 100, &q, &rng, &p);
    assert_int_equal(p.n, 0);
    assert_string_equal(p.why, "quota: the project's instances limit is reached");
    sched_run_plan_release(&p);
    loom_arrayspec_release(&run.pending);
}

static void test_plan_gangs_all_or_none(void **state)
{
    (void)state;
    /* three nodes with room for one member each, one with room for three */
    struct sched_node nodes[] = {node("a", 1000, 1000, 0, 0), node("b", 1000, 1000, 0, 0),
                                 node("big", 3000, 3000, 0, 0)};
    uint64_t rng = 9;
    struct sched_run run = run_of("0-1", 0, 0, 3);
    struct sched_run_plan p;
    sched_plan_run(&run, nodes, 3, 100, NULL, &rng, &p);
    /* index 0's gang on three distinct nodes; index 1's cannot be whole */
    assert_int_equal(p.wanted, 2);
    assert_int_equal(p.n, 1);
    assert_true(p.nodes[0] != p.nodes[1] && p.nodes[1] != p.nodes[2] && p.nodes[0] != p.nodes[2]);
    assert_string_equal(p.why, "no node fits cpu=1000m memory=1K for all 3 members of a gang");
    /* the half-placed second gang gave its capacity back */
    assert_int_equal(nodes[0].cpu_used + nodes[1].cpu_used + nodes[2].cpu_used, 3000);
    assert_false(p.gang_failed);
    sched_run_plan_release(&p);
    /* nothing fits now; past its gang_timeout the next index fails */
    run.gang_expired = true;
    sched_plan_run(&run, nodes, 3, 100, NULL, &rng, &p);
    assert_int_equal(p.n, 0);
    assert_true(p.gang_failed);
    assert_int_equal(p.idx[0], 0);
    sched_run_plan_release(&p);
    loom_arrayspec_release(&run.pending);

    /* binpack would put every member on the fullest node, which has room
     * for two: a gang still spreads over three */
    struct sched_node packed[] = {node("big", 4000, 4000, 2000, 2000), node("a", 8000, 8000, 0, 0),
                                  node("b", 8000, 8000, 0, 0)};
    run = run_of("0", 0, 0, 3);
    sched_plan_run(&run, packed, 3, 100, NULL, &rng, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.nodes[0], 0); /* the fullest first */
    assert_true(p.nodes[1] != 0 && p.nodes[2] != 0 && p.nodes[1] != p.nodes[2]);
    assert_int_equal(packed[0].cpu_used, 3000);
    sched_run_plan_release(&p);
    loom_arrayspec_release(&run.pending);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_from_spec),
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
        cmocka_unit_test(test_plan_lowest_indices_within_limits),
        cmocka_unit_test(test_plan_gangs_all_or_none),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
