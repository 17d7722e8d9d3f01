#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "arrayspec.h"

/* Parses s and checks its canonical form and count. */
static void expect_spec(const char *s, const char *canon, int64_t count)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_arrayspec spec;
    assert_int_equal(loom_arrayspec_parse(s, LOOM_ARRAY_MAX_COUNT, &spec, &err), 0);
    char *f = loom_arrayspec_format(&spec);
    assert_string_equal(f, canon);
    assert_int_equal(spec.count, count);
    free(f);
    loom_arrayspec_release(&spec);
}

static void expect_refused(const char *s, int64_t max, const char *msg_part)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_arrayspec spec = {NULL, 0, 0};
    assert_int_equal(loom_arrayspec_parse(s, max, &spec, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    if (!strstr(err.msg, msg_part))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, msg_part);
    assert_null(spec.ranges);
}

static void test_parse_basic(void **state)
{
    (void)state;
    expect_spec("0-9,20,30-39", "0-9,20,30-39", 21);
    expect_spec("5", "5", 1);
    expect_spec("0", "0", 1);
    expect_spec("9999999", "9999999", 1);
}

static void test_merge(void **state)
{
    (void)state;
    expect_spec("30-39,0-9,20", "0-9,20,30-39", 21); /* sorted */
    expect_spec("0-9,5-15", "0-15", 16);             /* overlap */
    expect_spec("0-9,10-19", "0-19", 20);            /* adjacent */
    expect_spec("3,3,3", "3", 1);                    /* duplicates count once */
    expect_spec("1,2,3,7,5,6", "1-3,5-7", 6);
    expect_spec("0-100,50-60,99", "0-100", 101); /* contained */
}

static void test_refused(void **state)
{
    (void)state;
    expect_refused("", 100, "empty");
    expect_refused("abc", 100, "\"abc\"");
    expect_refused("1,,2", 100, "item \"\"");
    expect_refused("1-", 100, "\"1-\"");
    expect_refused("-1", 100, "\"-1\"");
    expect_refused("1 ,2", 100, "\"1 \"");
    expect_refused("0-9,x", 100, "\"x\"");
    expect_refused("1-2-3", 100, "\"1-2-3\"");
    expect_refused("9-3", 100, "item \"9-3\": range start is greater than its end");
    expect_refused("10000000", 0, "item \"10000000\": index greater than 9999999");
    expect_refused("0-99999999999999999999", 0, "greater than 9999999");
    expect_refused("0-100", 100, "101 indices, more than 100");
    expect_refused("0-9999999", LOOM_ARRAY_MAX_COUNT, "more than 1000000");
    /* more than 10,000 items */
    size_t n = 10001;
    char *many = malloc(n * 2 + 1);
    for (size_t i = 0; i < n; i++) {
        many[2 * i] = '1';
        many[2 * i + 1] = ',';
    }
    many[2 * n - 1] = '\0';
    expect_refused(many, 100, "more than 10000 items");
    free(many);
}

static void test_multirange_round_trip(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_arrayspec spec, back;
    assert_int_equal(loom_arrayspec_parse("0-9,20", 100, &spec, &err), 0);
    char *mr = loom_arrayspec_to_multirange(&spec);
    assert_string_equal(mr, "{[0,10),[20,21)}");
    assert_int_equal(loom_arrayspec_from_multirange(mr, &back, &err), 0);
    char *f = loom_arrayspec_format(&back);
    assert_string_equal(f, "0-9,20");
    assert_int_equal(back.count, 11);
    free(f);
    free(mr);
    loom_arrayspec_release(&spec);
    loom_arrayspec_release(&back);

    assert_int_equal(loom_arrayspec_from_multirange("{}", &back, &err), 0);
    assert_int_equal(back.n, 0);
    assert_int_equal(back.count, 0);
    mr = loom_arrayspec_to_multirange(&back);
    assert_string_equal(mr, "{}");
    f = loom_arrayspec_format(&back);
    assert_string_equal(f, "");
    free(f);
    free(mr);
    loom_arrayspec_release(&back);

    /* inclusive and exclusive bounds in either form */
    assert_int_equal(loom_arrayspec_from_multirange("{[3,5],(6,8)}", &back, &err), 0);
    f = loom_arrayspec_format(&back);
    assert_string_equal(f, "3-5,7");
    free(f);
    loom_arrayspec_release(&back);

    const char *bad[] = {"",         "{",       "[0,1)",    "{[0,1)",         "{[0,1)x}", "{[a,1)}",
                         "{[0,1),}", "{[0 1)}", "{[-5,1)}", "{[0,10000001)}", "{}x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (loom_arrayspec_from_multirange(bad[i], &back, &err) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(err.code, LOOM_EINVAL);
    }
}

static void test_contains(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_arrayspec spec;
    assert_int_equal(loom_arrayspec_parse("0-9,20,30-39", 100, &spec, &err), 0);
    int32_t in[] = {0, 5, 9, 20, 30, 39};
    int32_t out[] = {-1, 10, 19, 21, 29, 40, 1000};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++)
        assert_true(loom_arrayspec_contains(&spec, in[i]));
    for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++)
        assert_false(loom_arrayspec_contains(&spec, out[i]));
    loom_arrayspec_release(&spec);
    loom_arrayspec_release(&spec); /* releasing twice is harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_basic), cmocka_unit_test(test_merge),
        cmocka_unit_test(test_refused),     cmocka_unit_test(test_multirange_round_trip),
        cmocka_unit_test(test_contains),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
