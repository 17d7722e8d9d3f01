#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

static json_t *parse(const char *s)
{
    struct loom_err err = LOOM_ERR_INIT;
    json_t *j = loom_json_parse_object(s, strlen(s), &err);
    assert_non_null(j);
    return j;
}

static void test_parse_object(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    json_t *j = loom_json_parse_object("[1]", 3, &err);
    assert_null(j);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_string_equal(err.msg, "expected a JSON object");
    j = loom_json_parse_object("{\"a\":", 5, &err);
    assert_null(j);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_non_null(strstr(err.msg, "invalid JSON"));
    j = loom_json_parse_object("{\"a\":1,\"a\":2}", 13, &err);
    assert_null(j); /* duplicate keys are ambiguous: refused */
    /* only len bytes are read */
    j = loom_json_parse_object("{}garbage", 2, &err);
    assert_non_null(j);
    json_decref(j);
}

static void test_check_fields(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_json_ json_t *j = parse("{\"name\":\"x\",\"image\":\"y\"}");
    static const char *const ok[] = {"name", "image", "port", NULL};
    static const char *const narrow[] = {"name", NULL};
    assert_int_equal(loom_json_check_fields(j, ok, &err), 0);
    assert_int_equal(loom_json_check_fields(j, narrow, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_string_equal(err.msg, "unknown field \"image\"");
}

static void test_get_string(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_json_ json_t *j = parse("{\"s\":\"hello\",\"n\":5,\"z\":null}");
    const char *s = "untouched";
    assert_int_equal(loom_json_get_string(j, "s", true, 10, &s, &err), 0);
    assert_string_equal(s, "hello");
    s = "untouched";
    assert_int_equal(loom_json_get_string(j, "missing", false, 10, &s, &err), 0);
    assert_string_equal(s, "untouched");
    assert_int_equal(loom_json_get_string(j, "z", false, 10, &s, &err), 0);
    assert_string_equal(s, "untouched");
    assert_int_equal(loom_json_get_string(j, "missing", true, 10, &s, &err), -1);
    assert_string_equal(err.msg, "field \"missing\": required");
    assert_int_equal(loom_json_get_string(j, "z", true, 10, &s, &err), -1);
    assert_string_equal(err.msg, "field \"z\": required");
    assert_int_equal(loom_json_get_string(j, "n", false, 10, &s, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_string_equal(err.msg, "field \"n\": must be a string");
    assert_int_equal(loom_json_get_string(j, "s", false, 4, &s, &err), -1);
    assert_string_equal(err.msg, "field \"s\": must be at most 4 bytes");
    assert_string_equal(s, "untouched");
}

static void test_get_int(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_json_ json_t *j =
        parse("{\"port\":8080,\"big\":70000,\"real\":1.5,\"str\":\"1\",\"neg\":-1}");
    int64_t v = 7;
    assert_int_equal(loom_json_get_int(j, "port", true, 1, 65535, &v, &err), 0);
    assert_int_equal(v, 8080);
    v = 7;
    assert_int_equal(loom_json_get_int(j, "missing", false, 1, 65535, &v, &err), 0);
    assert_int_equal(v, 7);
    assert_int_equal(loom_json_get_int(j, "big", true, 1, 65535, &v, &err), -1);
    assert_string_equal(err.msg, "field \"big\": must be an integer from 1 to 65535");
    assert_int_equal(loom_json_get_int(j, "real", true, 0, 10, &v, &err), -1);
    assert_string_equal(err.msg, "field \"real\": must be an integer from 0 to 10");
    assert_int_equal(loom_json_get_int(j, "str", true, 0, 10, &v, &err), -1);
    assert_int_equal(loom_json_get_int(j, "neg", true, 0, 10, &v, &err), -1);
    assert_int_equal(v, 7);
}

static void test_get_bool(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_json_ json_t *j = parse("{\"t\":true,\"f\":false,\"n\":1}");
    bool b = false;
    assert_int_equal(loom_json_get_bool(j, "t", true, &b, &err), 0);
    assert_true(b);
    assert_int_equal(loom_json_get_bool(j, "f", true, &b, &err), 0);
    assert_false(b);
    assert_int_equal(loom_json_get_bool(j, "n", true, &b, &err), -1);
    assert_string_equal(err.msg, "field \"n\": must be true or false");
    assert_int_equal(loom_json_get_bool(j, "x", true, &b, &err), -1);
    assert_string_equal(err.msg, "field \"x\": required");
}

static void test_get_string_array(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_json_ json_t *j =
        parse("{\"a\":[\"x\",\"yy\"],\"mixed\":[\"x\",1],\"s\":\"x\",\"long\":[\"abcdef\"]}");
    json_t *arr = NULL;
    assert_int_equal(loom_json_get_string_array(j, "a", true, 5, 5, &arr, &err), 0);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 2);
    assert_int_equal(loom_json_get_string_array(j, "none", false, 5, 5, &arr, &err), 0);
    assert_null(arr);
    assert_int_equal(loom_json_get_string_array(j, "a", true, 1, 5, &arr, &err), -1);
    assert_string_equal(err.msg, "field \"a\": must have at most 1 items");
    assert_int_equal(loom_json_get_string_array(j, "mixed", true, 5, 5, &arr, &err), -1);
    assert_string_equal(err.msg, "field \"mixed\": item 1 must be a string");
    assert_int_equal(loom_json_get_string_array(j, "s", true, 5, 5, &arr, &err), -1);
    assert_string_equal(err.msg, "field \"s\": must be an array of strings");
    assert_int_equal(loom_json_get_string_array(j, "long", true, 5, 5, &arr, &err), -1);
    assert_string_equal(err.msg, "field \"long\": item 0 must be at most 5 bytes");
}

static void test_dumps(void **state)
{
    (void)state;
    _cleanup_json_ json_t *j = json_pack("{s:s,s:i}", "a", "q\"x", "b", 2);
    char *s = loom_json_dumps(j);
    assert_string_equal(s, "{\"a\":\"q\\\"x\",\"b\":2}");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_object), cmocka_unit_test(test_check_fields),
        cmocka_unit_test(test_get_string),   cmocka_unit_test(test_get_int),
        cmocka_unit_test(test_get_bool),     cmocka_unit_test(test_get_string_array),
        cmocka_unit_test(test_dumps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
