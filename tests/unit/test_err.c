#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"

static void test_set_and_clear(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_err_set(&err, LOOM_ENOTFOUND, "app \"%s\" not found", "web"), -1);
    assert_int_equal(err.code, LOOM_ENOTFOUND);
    assert_int_equal(err.sys_errno, 0);
    assert_string_equal(err.msg, "app \"web\" not found");
    loom_err_clear(&err);
    assert_int_equal(err.code, LOOM_OK);
    assert_string_equal(err.msg, "");
    /* a NULL err is allowed and still says failure */
    assert_int_equal(loom_err_set(NULL, LOOM_EINVAL, "x"), -1);
    assert_int_equal(loom_err_sys(NULL, EIO, "x"), -1);
    assert_int_equal(loom_err_wrap(NULL, "x"), -1);
    loom_err_clear(NULL);
}

static void test_sys(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_err_sys(&err, ENOENT, "could not open \"%s\"", "/x"), -1);
    assert_int_equal(err.code, LOOM_EIO);
    assert_int_equal(err.sys_errno, ENOENT);
    assert_string_equal(err.msg, "could not open \"/x\": No such file or directory");
}

static void test_wrap(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    loom_err_set(&err, LOOM_EUNAVAIL, "connection refused");
    assert_int_equal(loom_err_wrap(&err, "pulling image %s", "a/b"), -1);
    assert_string_equal(err.msg, "pulling image a/b: connection refused");
    assert_int_equal(err.code, LOOM_EUNAVAIL);
    loom_err_wrap(&err, "starting");
    assert_string_equal(err.msg, "starting: pulling image a/b: connection refused");
}

static void test_long_messages_truncate(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    char big[2000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    loom_err_set(&err, LOOM_EINVAL, "%s", big);
    assert_int_equal(strlen(err.msg), sizeof(err.msg) - 1);
    loom_err_wrap(&err, "%s", big);
    assert_int_equal(strlen(err.msg), sizeof(err.msg) - 1);
    loom_err_sys(&err, EPERM, "%s", big);
    assert_int_equal(strlen(err.msg), sizeof(err.msg) - 1);
}

static void test_names_and_statuses(void **state)
{
    (void)state;
    static const struct {
        enum loom_errc code;
        const char *name;
        int status;
    } table[] = {
        {LOOM_EINVAL, "invalid", 400},
        {LOOM_EUNAUTH, "unauthenticated", 401},
        {LOOM_EPERM, "forbidden", 403},
        {LOOM_ENOTFOUND, "not_found", 404},
        {LOOM_ECONFLICT, "conflict", 409},
        {LOOM_EPRECOND, "precondition_failed", 412},
        {LOOM_ETOOBIG, "too_big", 413},
        {LOOM_EUNPROC, "unprocessable", 422},
        {LOOM_ELIMIT, "limit", 429},
        {LOOM_EUNAVAIL, "unavailable", 503},
        {LOOM_ETIMEOUT, "timeout", 504},
        {LOOM_EINTERNAL, "internal", 500},
        {LOOM_EIO, "io", 500},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        assert_string_equal(loom_errc_name(table[i].code), table[i].name);
        assert_int_equal(loom_errc_http_status(table[i].code), table[i].status);
    }
    assert_int_equal(loom_errc_http_status((enum loom_errc)999), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_and_clear),
        cmocka_unit_test(test_sys),
        cmocka_unit_test(test_wrap),
        cmocka_unit_test(test_long_messages_truncate),
        cmocka_unit_test(test_names_and_statuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
