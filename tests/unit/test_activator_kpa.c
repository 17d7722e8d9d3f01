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

static void test_target(void **state)
{
    (void)state;
    assert_true(act_kpa_target(100, 0) > 69.9 && act_kpa_target(100, 0) < 70.1);
    assert_true(act_kpa_target(10, 0) > 6.9 && act_kpa_target(10, 0) < 7.1);
    assert_true(act_kpa_target(10, 5) == 5.0);
    assert_true(act_kpa_target(0, 0) > 69.9); /* unset concurrency: 100 */
    assert_true(act_kpa_target(1, 0) > 0.69 && act_kpa_target(1, 0) < 0.71);
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
        cmocka_unit_test(test_target),    cmocka_unit_test(test_steady),
        cmocka_unit_test(test_from_zero), cmocka_unit_test(test_to_zero),
        cmocka_unit_test(test_panic),     cmocka_unit_test(test_scale_down_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
