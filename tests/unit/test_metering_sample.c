/* The metering service's check of a usage sample before it is stored. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "services/metering/metering.h"

static char id_ok[] = "0f4c7b1e-5d0a-4e4e-9a53-6b7e2f7d9c11";
static char id_bad[] = "not-a-uuid";
static char id_badhex[] = "0f4c7b1e-5d0a-4e4e-9a53-6b7e2f7d9c1g";
static char node[] = "node-1";
static char project[] = "shop";
static char empty[] = "";
static char kind_job[] = "job";
static char kind_bad[] = "vm";

static void good(Loom__V1__UsageSample *s)
{
    loom__v1__usage_sample__init(s);
    s->instance_id = id_ok;
    s->node = node;
    s->project = project;
    s->seq = 7;
    s->ts_unix_ms = 1795839932123;
    s->interval_ms = 1000;
    s->cpu_usage_ns = 123456789;
    s->memory_bytes = 1 << 20;
    s->memory_peak_bytes = 2 << 20;
    s->cpu_millis_alloc = 500;
    s->memory_bytes_alloc = 512 << 20;
}

static void test_check(void **state)
{
    (void)state;
    Loom__V1__UsageSample s;
    struct loom_err err = LOOM_ERR_INIT;
    good(&s);
    assert_int_equal(meter_sample_check(&s, &err), 0);

    good(&s);
    s.instance_id = id_bad;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    good(&s);
    s.instance_id = id_badhex;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.node = empty;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.project = empty;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.seq = (uint64_t)INT64_MAX + 1;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.cpu_usage_ns = UINT64_MAX;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.ts_unix_ms = 0;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.memory_bytes_alloc = -1;
    assert_int_equal(meter_sample_check(&s, &err), -1);

    /* the interval: its start, end and length agree */
    good(&s);
    s.start_unix_ms = s.ts_unix_ms - 1000;
    s.cpu_ns = 900000000;
    s.kind = kind_job;
    assert_int_equal(meter_sample_check(&s, &err), 0);
    s.start_unix_ms = s.ts_unix_ms - 999;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    assert_string_equal(err.msg, "the interval (1795839931124, 1795839932123] is not 1000 ms long");
    good(&s);
    s.interval_ms = -1;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.interval_ms = 32LL * 86400 * 1000;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    /* no more cpu than 4096 cpus could use in the interval */
    good(&s);
    s.cpu_ns = 4096ULL * 1000 * 1000000;
    assert_int_equal(meter_sample_check(&s, &err), 0);
    s.cpu_ns = 4097ULL * 1000 * 1000000;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    good(&s);
    s.kind = kind_bad;
    assert_int_equal(meter_sample_check(&s, &err), -1);
    assert_string_equal(err.msg, "kind \"vm\" is not app, job or function");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
