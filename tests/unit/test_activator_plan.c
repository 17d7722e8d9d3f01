/* The activator's request plan (act_plan_request): what a request for an
 * app does next, from the app's state as the activator knows it. Times are
 * in ms; the limits are the service's defaults (1 s cache, 100 ms recheck
 * while held, asks again every second, 30 s hold). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "services/activator/activator.h"

static const struct act_plan_limits lim = {
    .cache_ttl_ms = 1000,
    .hold_recheck_ms = 100,
    .cold_republish_ms = 1000,
    .max_held = 3,
    .hold_timeout_ms = 30000,
};

#define NOW 100000

/* A public app read 10 ms ago with the instances given, concurrency 2. */
static struct act_plan_app app_with(const struct act_inst *insts, size_t n)
{
    return (struct act_plan_app){
        .known = true,
        .exists = true,
        .fetched_ms = NOW - 10,
        .visibility = LOOM_VIS_PUBLIC,
        .concurrency = 2,
        .target = 2,
        .insts = insts,
        .ninsts = n,
        .held = 1,
        .last_cold_ms = 0,
        .desired = 1,
    };
}

static struct act_plan_req fresh_req(void)
{
    return (struct act_plan_req){.admitted = true, .deadline_ms = NOW + 30000};
}

static struct act_plan plan(const struct act_plan_app *a, const struct act_plan_req *r, int64_t now)
{
    struct act_plan p;
    act_plan_request(a, r, &lim, now, &p);
    return p;
}

static void test_pick_instance(void **state)
{
    (void)state;
    struct act_inst in[] = {
        {.address = "a", .inflight = 2},                           /* at the limit */
        {.address = "b", .inflight = 1},                           /* free */
        {.address = "c", .inflight = 0, .down_until_ms = NOW + 1}, /* marked down */
        {.address = "d", .inflight = 0},                           /* the least loaded */
        {.address = "e", .inflight = 0},                           /* as loaded as d */
    };
    assert_int_equal(act_pick_instance(in, 5, 2, NOW), 3);
    assert_int_equal(act_pick_instance(in, 3, 2, NOW), 1);
    assert_int_equal(act_pick_instance(in, 5, 2, NOW + 1), 2); /* c is back */
    assert_int_equal(act_pick_instance(in, 1, 2, NOW), -1);
    assert_int_equal(act_pick_instance(in, 0, 2, NOW), -1);
}

/* Read the app first when it was never read, or the read is older than the
 * cache ttl (100 ms while held); never while another request reads it. */
static void test_refresh(void **state)
{
    (void)state;
    struct act_plan_app a = {.fetched_ms = 0};
    struct act_plan_req r = fresh_req();
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_REFRESH);
    a.refreshing = true;
    assert_int_not_equal(plan(&a, &r, NOW).step, ACT_STEP_REFRESH);

    struct act_inst one = {.address = "a"};
    a = app_with(&one, 1);
    a.fetched_ms = NOW - 500;
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_FORWARD);
    a.fetched_ms = NOW - 1000;
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_REFRESH);
    a.fetched_ms = NOW - 150;
    r.held = true;
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_REFRESH);
}

/* An app that cannot be read at all: 503 at once; one that was read before
 * goes on with what is known. */
static void test_lookup_failed(void **state)
{
    (void)state;
    struct act_plan_app a = {.fetched_ms = NOW};
    struct act_plan_req r = fresh_req();
    r.lookup_failed = true;
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_REPLY);
    assert_int_equal(p.reply, ACT_REPLY_LOOKUP_FAILED);
    assert_int_equal(p.status, 503);
    assert_int_equal(p.retry_after, 1);

    struct act_inst one = {.address = "a"};
    a = app_with(&one, 1);
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_FORWARD);
}

static void test_shutting_down_and_gone(void **state)
{
    (void)state;
    struct act_inst one = {.address = "a"};
    struct act_plan_app a = app_with(&one, 1);
    struct act_plan_req r = fresh_req();
    r.shutting_down = true;
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.reply, ACT_REPLY_SHUTTING_DOWN);
    assert_int_equal(p.status, 503);
    assert_int_equal(p.retry_after, 1);

    /* deleted while the request was held */
    r = fresh_req();
    r.held = true;
    a.exists = false;
    a.ninsts = 0;
    p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_REPLY);
    assert_int_equal(p.reply, ACT_REPLY_NOT_FOUND);
    assert_int_equal(p.status, 404);
    assert_false(p.start_hold);
}

/* Visibility: public everywhere; private on the internal listener only;
 * project on the internal listener to the project's own instances only.
 * Anywhere else it is a 404, as if the app did not exist. */
static void test_visibility(void **state)
{
    (void)state;
    struct act_inst one = {.address = "a"};
    struct act_plan_app a = app_with(&one, 1);
    struct act_plan_req r = fresh_req();
    r.admitted = false;
    static const struct {
        enum loom_visibility vis;
        bool internal;
        enum act_caller caller;
        enum act_step step;
        enum act_reply reply;
    } cases[] = {
        {LOOM_VIS_PUBLIC, false, ACT_CALLER_UNCHECKED, ACT_STEP_ADMIT, ACT_REPLY_NONE},
        {LOOM_VIS_PUBLIC, true, ACT_CALLER_UNCHECKED, ACT_STEP_ADMIT, ACT_REPLY_NONE},
        {LOOM_VIS_PRIVATE, false, ACT_CALLER_UNCHECKED, ACT_STEP_REPLY, ACT_REPLY_NOT_FOUND},
        {LOOM_VIS_PRIVATE, true, ACT_CALLER_UNCHECKED, ACT_STEP_ADMIT, ACT_REPLY_NONE},
        {LOOM_VIS_PROJECT, false, ACT_CALLER_UNCHECKED, ACT_STEP_REPLY, ACT_REPLY_NOT_FOUND},
        {LOOM_VIS_PROJECT, false, ACT_CALLER_IN, ACT_STEP_REPLY, ACT_REPLY_NOT_FOUND},
        {LOOM_VIS_PROJECT, true, ACT_CALLER_UNCHECKED, ACT_STEP_CHECK_CALLER, ACT_REPLY_NONE},
        {LOOM_VIS_PROJECT, true, ACT_CALLER_IN, ACT_STEP_ADMIT, ACT_REPLY_NONE},
        {LOOM_VIS_PROJECT, true, ACT_CALLER_OUT, ACT_STEP_REPLY, ACT_REPLY_NOT_FOUND},
        {LOOM_VIS_PROJECT, true, ACT_CALLER_ERROR, ACT_STEP_REPLY, ACT_REPLY_CALLER_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        a.visibility = cases[i].vis;
        r.internal = cases[i].internal;
        r.caller = cases[i].caller;
        struct act_plan p = plan(&a, &r, NOW);
        if (p.step != cases[i].step || p.reply != cases[i].reply)
            fail_msg("case %zu: step %d reply %d", i, p.step, p.reply);
        if (p.reply == ACT_REPLY_CALLER_UNKNOWN && (p.status != 503 || p.retry_after != 1))
            fail_msg("case %zu: status %d", i, p.status);
    }
    /* once admitted, the request goes on */
    a.visibility = LOOM_VIS_PROJECT;
    r.internal = true;
    r.caller = ACT_CALLER_UNCHECKED;
    r.admitted = true;
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_FORWARD);
}

static void test_forward(void **state)
{
    (void)state;
    struct act_inst in[] = {{.address = "a", .inflight = 2}, {.address = "b", .inflight = 1}};
    struct act_plan_app a = app_with(in, 2);
    struct act_plan_req r = fresh_req();
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_FORWARD);
    assert_int_equal(p.inst, 1);
    assert_false(p.start_hold);
    assert_int_equal(p.ask, ACT_ASK_NONE);
    /* even past the deadline, a free instance takes it */
    r.deadline_ms = NOW - 1;
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_FORWARD);
}

/* Scaled to zero: the request starts to wait, asks for an instance, and
 * waits 100 ms at most before looking again. */
static void test_hold_from_zero(void **state)
{
    (void)state;
    struct act_plan_app a = app_with(NULL, 0);
    struct act_plan_req r = fresh_req();
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_WAIT);
    assert_true(p.start_hold);
    assert_int_equal(p.ask, ACT_ASK_FROM_ZERO);
    assert_int_equal(p.wait_until, NOW + 100);

    /* held already: no second count; the ask waits a second after the last */
    r.held = true;
    a.last_cold_ms = NOW - 500;
    p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_WAIT);
    assert_false(p.start_hold);
    assert_int_equal(p.ask, ACT_ASK_NONE);
    a.last_cold_ms = NOW - 1000;
    assert_int_equal(plan(&a, &r, NOW).ask, ACT_ASK_FROM_ZERO);

    /* the last wait ends at the deadline */
    r.deadline_ms = NOW + 30;
    assert_int_equal(plan(&a, &r, NOW).wait_until, NOW + 30);

    /* an app not read yet (another request reads it): wait, count nothing */
    struct act_plan_app unknown = {.refreshing = true};
    p = plan(&unknown, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_WAIT);
    assert_false(p.start_hold);
    assert_int_equal(p.ask, ACT_ASK_NONE);
}

/* Every instance at its limit: ask for what the load needs, in panic mode,
 * when that is more than the autoscaler wants already. */
static void test_hold_for_load(void **state)
{
    (void)state;
    struct act_inst in[] = {{.address = "a", .inflight = 2}};
    struct act_plan_app a = app_with(in, 1);
    a.inflight = 2;
    a.held = 3;
    struct act_plan_req r = fresh_req();
    r.held = true;
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_WAIT);
    assert_int_equal(p.ask, ACT_ASK_FOR_LOAD);
    assert_int_equal(p.want, 3); /* ceil(5 / 2) */
    a.desired = 3;
    assert_int_equal(plan(&a, &r, NOW).ask, ACT_ASK_NONE);
    a.desired = 1;
    a.held = 1; /* load 3 of target 2: 2 */
    p = plan(&a, &r, NOW);
    assert_int_equal(p.ask, ACT_ASK_FOR_LOAD);
    assert_int_equal(p.want, 2);
}

/* More than max_held waiting: a new request gets 503 at once, uncounted. */
static void test_too_many_held(void **state)
{
    (void)state;
    struct act_plan_app a = app_with(NULL, 0);
    a.held = 4; /* max_held 3, this request included */
    struct act_plan_req r = fresh_req();
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_REPLY);
    assert_int_equal(p.reply, ACT_REPLY_TOO_MANY_HELD);
    assert_int_equal(p.status, 503);
    assert_int_equal(p.retry_after, 1);
    assert_false(p.start_hold);
    assert_int_equal(p.ask, ACT_ASK_NONE);
    /* one already waiting is not turned away */
    r.held = true;
    assert_int_equal(plan(&a, &r, NOW).step, ACT_STEP_WAIT);
    /* max_held waiting, this one included: it may wait too */
    a.held = 3;
    r.held = false;
    p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_WAIT);
    assert_true(p.start_hold);
}

/* At the deadline: 503 with Retry-After a third of the hold timeout, saying
 * whether no instance came or none was free. */
static void test_deadline(void **state)
{
    (void)state;
    struct act_plan_app a = app_with(NULL, 0);
    struct act_plan_req r = fresh_req();
    r.held = true;
    r.deadline_ms = NOW;
    struct act_plan p = plan(&a, &r, NOW);
    assert_int_equal(p.step, ACT_STEP_REPLY);
    assert_int_equal(p.reply, ACT_REPLY_NO_INSTANCE);
    assert_int_equal(p.status, 503);
    assert_int_equal(p.retry_after, 10);
    assert_non_null(p.detail);

    struct act_inst busy = {.address = "a", .inflight = 2};
    a = app_with(&busy, 1);
    assert_int_equal(plan(&a, &r, NOW).reply, ACT_REPLY_NO_CAPACITY);

    struct act_plan_limits short_hold = lim;
    short_hold.hold_timeout_ms = 2000;
    act_plan_request(&a, &r, &short_hold, NOW, &p);
    assert_int_equal(p.retry_after, 1); /* never 0 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_instance),  cmocka_unit_test(test_refresh),
        cmocka_unit_test(test_lookup_failed),  cmocka_unit_test(test_shutting_down_and_gone),
        cmocka_unit_test(test_visibility),     cmocka_unit_test(test_forward),
        cmocka_unit_test(test_hold_from_zero), cmocka_unit_test(test_hold_for_load),
        cmocka_unit_test(test_too_many_held),  cmocka_unit_test(test_deadline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
