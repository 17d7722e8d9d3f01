/* The activator's autoscaler: stable and panic windows, scale to zero,
 * scale-down delay and rate. Ticks of 2 s, a 60 s stable and 6 s panic
 * window (Knative's defaults). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>

#include "services/activator/activator.h"

static const struct act_kpa_config cfg = {
    .tick_ms = 2000,
    .stable_window_ms = 60000,
    .panic_window_ms = 6000,
    .panic_threshold = 2.0,
    .max_scale_down = 2.0,
};

static struct act_kpa *new_kpa(uint32_t desired)
{
    struct act_kpa *k = malloc(sizeof(*k));
    assert_non_null(k);
    act_kpa_init(k, desired);
    return k;
}

/* The count is ceil(concurrency / target), whatever the target. */
static void test_sizes_to_target(void **state)
{
    (void)state;
    static const struct {
        double load, target;
        uint32_t want;
    } cases[] = {
        {1.0, 1.0, 1},   {3.0, 1.0, 3},   {2.5, 1.0, 3},     {10.0, 10.0, 1},
        {11.0, 10.0, 2}, {0.2, 100.0, 1}, {250.0, 100.0, 3}, {12.0, 4.0, 3},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct act_kpa *k = new_kpa(0);
        uint32_t d = 0;
        int64_t t = 0;
        /* a whole stable window of steady load, ready instances following */
        for (int i = 0; i < 40; i++, t += 2000)
            d = act_kpa_tick(k, &cfg, cases[c].load, d, cases[c].target, 0, t);
        assert_int_equal(d, cases[c].want);
        free(k);
    }
}

/* Steady load: desired = ceil(concurrency / target). */
static void test_steady(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    int64_t t = 0;
    uint32_t d = 0;
    /* 21 concurrent requests against target 7 -> 3 instances */
    for (int i = 0; i < 40; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 21.0, d, 7.0, 0, t);
    assert_int_equal(d, 3);
    /* exactly 14 -> 2, not 3 (rounding noise) */
    for (int i = 0; i < 40; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 14.0, d, 7.0, 0, t);
    assert_int_equal(d, 2);
    free(k);
}

/* From zero, the first tick with a request wants one instance. */
static void test_from_zero(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    assert_int_equal(act_kpa_tick(k, &cfg, 0.0, 0, 70.0, 0, 0), 0);
    assert_int_equal(act_kpa_tick(k, &cfg, 0.3, 0, 70.0, 0, 2000), 1);
    free(k);
}

/* Scale to zero only after a whole stable window without requests, plus the
 * scale-down delay. */
static void test_to_zero(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    int64_t t = 0;
    uint32_t d = act_kpa_tick(k, &cfg, 1.0, 0, 70.0, 0, t);
    assert_int_equal(d, 1);
    int ticks_to_zero = 0;
    for (int i = 1; i <= 60 && d > 0; i++) {
        t += 2000;
        d = act_kpa_tick(k, &cfg, 0.0, 1, 70.0, 0, t);
        ticks_to_zero = i;
    }
    assert_int_equal(d, 0);
    /* the bucket with traffic leaves the 30-bucket window after 30 ticks */
    assert_int_equal(ticks_to_zero, 30);

    /* the same with a 10 s scale-down delay: 5 more ticks */
    act_kpa_init(k, 0);
    t = 0;
    d = act_kpa_tick(k, &cfg, 1.0, 0, 70.0, 10000, t);
    ticks_to_zero = 0;
    for (int i = 1; i <= 60 && d > 0; i++) {
        t += 2000;
        d = act_kpa_tick(k, &cfg, 0.0, 1, 70.0, 10000, t);
        ticks_to_zero = i;
    }
    assert_int_equal(d, 0);
    assert_int_equal(ticks_to_zero, 35);
    free(k);
}

/* A burst above twice the capacity panics: the 6 s window decides at once,
 * and the scale does not go down while panicking. */
static void test_panic(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    int64_t t = 0;
    uint32_t d = 0;
    for (int i = 0; i < 30; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 5.0, 1, 7.0, 0, t);
    assert_int_equal(d, 1);
    /* burst to 70: the stable window alone would say ceil(avg/7) = 2 */
    d = act_kpa_tick(k, &cfg, 70.0, 1, 7.0, 0, t);
    t += 2000;
    assert_true(k->panicking);
    /* panic window mean = (5 + 5 + 70) / 3 = 26.7 -> 4 */
    assert_int_equal(d, 4);
    d = act_kpa_tick(k, &cfg, 70.0, 4, 7.0, 0, t);
    t += 2000;
    assert_int_equal(d, 7); /* (5 + 70 + 70) / 3 / 7 -> 7 */
    /* load falls back: no scale down while in panic */
    for (int i = 0; i < 10; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 5.0, 7, 7.0, 0, t);
    assert_true(k->panicking);
    assert_int_equal(d, 7);
    /* a stable window after the last panic tick it ends, and the scale
     * comes down at most halving per tick */
    for (int i = 0; i < 30; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 5.0, d, 7.0, 0, t);
    assert_false(k->panicking);
    assert_int_equal(d, 1);
    free(k);
}

/* scale_down_delay: a shrink happens only once the delay has passed since
 * the last tick that wanted the higher count; load coming back within the
 * delay keeps the count, and the delay then counts again from there. */
static void test_scale_down_delay(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    int64_t t = 0;
    uint32_t d = 0;
    const int64_t delay = 20000;
    /* 3 instances' worth of load at target 1 for a stable window */
    for (int i = 0; i < 30; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 3.0, d, 1.0, delay, t);
    assert_int_equal(d, 3);
    /* the load drops to 1: the 30-bucket stable mean (90 - 2j) / 30 stays
     * above 2 for 14 ticks, and then the count is held 10 ticks (20 s) more */
    int held_ticks = 0;
    for (int i = 0; i < 40; i++, t += 2000) {
        d = act_kpa_tick(k, &cfg, 1.0, d, 1.0, delay, t);
        if (d == 3)
            held_ticks++;
    }
    assert_int_equal(d, 1);
    assert_int_equal(held_ticks, 14 + 10);

    /* without a delay the same drop shrinks after the 14 ticks */
    act_kpa_init(k, 0);
    t = 0;
    d = 0;
    for (int i = 0; i < 30; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 3.0, d, 1.0, 0, t);
    held_ticks = 0;
    for (int i = 0; i < 40; i++, t += 2000) {
        d = act_kpa_tick(k, &cfg, 1.0, d, 1.0, 0, t);
        if (d == 3)
            held_ticks++;
    }
    assert_int_equal(held_ticks, 14);

    /* with a one-tick window (no averaging, no rate limit, no panic) the
     * delay alone decides: load back within the delay never shrinks, and the
     * delay counts again from the last load */
    static const struct act_kpa_config instant = {
        .tick_ms = 2000,
        .stable_window_ms = 2000,
        .panic_window_ms = 2000,
        .panic_threshold = 1e9,
        .max_scale_down = 0,
    };
    act_kpa_init(k, 0);
    t = 0;
    d = act_kpa_tick(k, &instant, 2.0, 0, 1.0, delay, t);
    assert_int_equal(d, 2);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 9; i++) { /* 18 s quiet < 20 s delay */
            t += 2000;
            d = act_kpa_tick(k, &instant, 0.0, d, 1.0, delay, t);
            assert_int_equal(d, 2);
        }
        t += 2000;
        d = act_kpa_tick(k, &instant, 2.0, d, 1.0, delay, t);
        assert_int_equal(d, 2);
    }
    int quiet = 0;
    while (d == 2 && quiet < 100) {
        t += 2000;
        d = act_kpa_tick(k, &instant, 0.0, d, 1.0, delay, t);
        quiet++;
    }
    assert_int_equal(d, 0);
    assert_int_equal(quiet, 11); /* the tick 20 s after the last load still holds */
    free(k);
}

/* scale_initial_instances: a new revision starts with at least initial
 * instances and keeps them for a whole stable window without traffic, then
 * scales down as usual (the scheduler clamps to scale_min_instances). */
static void test_initial(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    int64_t t = 0;
    assert_int_equal(act_kpa_revision(k, 3, t), 3);
    uint32_t d = 3;
    int ticks = 0;
    for (; ticks < 100 && d == 3; ticks++) {
        t += 2000;
        d = act_kpa_tick(k, &cfg, 0.0, 3, 1.0, 0, t);
    }
    /* 29 ticks hold it (fewer buckets than the 30 of the stable window); the
     * 30th may halve */
    assert_int_equal(ticks, 30);
    assert_int_equal(d, 1);
    t += 2000;
    d = act_kpa_tick(k, &cfg, 0.0, 1, 1.0, 0, t);
    assert_int_equal(d, 0);

    /* an update under load: the higher count it already has is kept */
    act_kpa_init(k, 0);
    t = 0;
    d = 0;
    for (int i = 0; i < 30; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 5.0, d, 1.0, 0, t);
    assert_int_equal(d, 5);
    assert_int_equal(act_kpa_revision(k, 2, t), 5);
    /* and load above initial scales it up within the first window */
    act_kpa_init(k, 0);
    t = 0;
    assert_int_equal(act_kpa_revision(k, 1, t), 1);
    d = 1;
    for (int i = 0; i < 3; i++) {
        t += 2000;
        d = act_kpa_tick(k, &cfg, 4.0, d, 1.0, 0, t);
    }
    assert_int_equal(d, 4);

    /* initial with a scale-down delay: the delay adds to the window */
    act_kpa_init(k, 0);
    t = 0;
    act_kpa_revision(k, 2, t);
    d = 2;
    ticks = 0;
    for (; ticks < 100 && d == 2; ticks++) {
        t += 2000;
        d = act_kpa_tick(k, &cfg, 0.0, 2, 1.0, 10000, t);
    }
    assert_int_equal(ticks, 30 + 5);
    free(k);
}

/* A held request at zero bumps the count at once; so do requests waiting
 * at the concurrency limit, and those panic: the next ticks keep the count
 * although the stable window's mean has not caught up. */
static void test_bump(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(0);
    assert_int_equal(act_kpa_bump(k, 1, false, 0), 1);
    assert_int_equal(act_kpa_bump(k, 0, false, 100), 1); /* never lowers */
    assert_false(k->panicking);

    /* a long quiet history at 1 instance, target 10 */
    act_kpa_init(k, 1);
    int64_t t = 0;
    uint32_t d = 1;
    for (int i = 0; i < 30; i++, t += 2000)
        d = act_kpa_tick(k, &cfg, 2.0, 1, 10.0, 0, t);
    assert_int_equal(d, 1);
    /* 11 requests: one instance takes 10, one waits -> 2 at once */
    assert_int_equal(act_kpa_bump(k, 2, true, t), 2);
    /* the stable mean alone would say 1 for many ticks: kept at 2 */
    for (int i = 0; i < 5; i++) {
        t += 2000;
        d = act_kpa_tick(k, &cfg, 11.0, 1, 10.0, 0, t);
        assert_int_equal(d, 2);
    }
    free(k);
}

static void test_scale_down_rate(void **state)
{
    (void)state;
    struct act_kpa *k = new_kpa(10);
    int64_t t = 0;
    /* fill the window with no load while 10 are ready */
    uint32_t d = 10;
    for (int i = 0; i < 29; i++, t += 2000) {
        d = act_kpa_tick(k, &cfg, 0.0, 10, 7.0, 0, t);
        /* not before a whole window has been observed */
        assert_int_equal(d, 10);
    }
    d = act_kpa_tick(k, &cfg, 0.0, 10, 7.0, 0, t);
    assert_int_equal(d, 5); /* at most halve: 10 -> 5 */
    t += 2000;
    d = act_kpa_tick(k, &cfg, 0.0, 5, 7.0, 0, t);
    assert_int_equal(d, 2);
    t += 2000;
    d = act_kpa_tick(k, &cfg, 0.0, 2, 7.0, 0, t);
    assert_int_equal(d, 1);
    t += 2000;
    d = act_kpa_tick(k, &cfg, 0.0, 1, 7.0, 0, t);
    assert_int_equal(d, 0);
    free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_steady),
        cmocka_unit_test(test_from_zero),
        cmocka_unit_test(test_to_zero),
        cmocka_unit_test(test_panic),
        cmocka_unit_test(test_scale_down_rate),
        cmocka_unit_test(test_sizes_to_target),
        cmocka_unit_test(test_scale_down_delay),
        cmocka_unit_test(test_initial),
        cmocka_unit_test(test_bump),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
