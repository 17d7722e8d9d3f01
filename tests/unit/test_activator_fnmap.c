/* A function call's parameters and the answer its result makes, as
 * OpenWhisk web actions do it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "services/activator/activator.h"

static void test_params(void **state)
{
    (void)state;
    json_t *query = json_pack("{s:s,s:s}", "name", "query", "q", "1");
    json_t *headers = json_pack("{s:s}", "Accept", "*/*");
    const char *body = "{\"name\":\"Ada\",\"n\":2}";
    json_t *p = act_fn_params("POST", "/x", query, headers, body, strlen(body),
                              "application/json; charset=utf-8");
    /* the body's members win over the query's */
    assert_string_equal(json_string_value(json_object_get(p, "name")), "Ada");
    assert_string_equal(json_string_value(json_object_get(p, "q")), "1");
    assert_int_equal(json_integer_value(json_object_get(p, "n")), 2);
    assert_string_equal(json_string_value(json_object_get(p, "__ow_method")), "post");
    assert_string_equal(json_string_value(json_object_get(p, "__ow_path")), "/x");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(p, "__ow_headers"), "Accept")), "*/*");
    assert_null(json_object_get(p, "__ow_body"));
    json_decref(p);
    /* not a JSON object: the body is text */
    p = act_fn_params("POST", "", query, NULL, "a=1&b=2", 7, "application/x-www-form-urlencoded");
    assert_string_equal(json_string_value(json_object_get(p, "__ow_body")), "a=1&b=2");
    assert_true(json_is_object(json_object_get(p, "__ow_headers")));
    json_decref(p);
    p = act_fn_params("POST", "", query, NULL, "[1,2]", 5, "application/json");
    assert_string_equal(json_string_value(json_object_get(p, "__ow_body")), "[1,2]");
    json_decref(p);
    /* a GET: the query alone */
    p = act_fn_params("GET", "", query, NULL, NULL, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "name")), "query");
    assert_null(json_object_get(p, "__ow_body"));
    json_decref(p);
    json_decref(query);
    json_decref(headers);
}

static struct act_fn_reply reply_of(const char *text)
{
    struct act_fn_reply r = {0};
    struct loom_err err = LOOM_ERR_INIT;
    if (act_fn_reply_from_result(text, strlen(text), &r, &err) < 0)
        fail_msg("%s: %s", text, err.msg);
    return r;
}

static void test_reply(void **state)
{
    (void)state;
    /* a plain result is the body, as JSON */
    struct act_fn_reply r = reply_of("{\"greeting\":\"Hello Ada\"}");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "application/json");
    assert_memory_equal(r.body, "{\"greeting\":\"Hello Ada\"}", r.len);
    act_fn_reply_release(&r);
    /* a web action's answer */
    r = reply_of("{\"statusCode\":201,\"headers\":{\"X-A\":\"1\",\"Content-Length\":\"9\","
                 "\"Content-Type\":\"text/html\"},\"body\":\"<p>hi</p>\"}");
    assert_int_equal(r.status, 201);
    assert_string_equal(r.content_type, "text/html");
    assert_memory_equal(r.body, "<p>hi</p>", r.len);
    assert_string_equal(json_string_value(json_object_get(r.headers, "X-A")), "1");
    assert_null(json_object_get(r.headers, "Content-Length")); /* the server frames it */
    assert_null(json_object_get(r.headers, "Content-Type"));
    act_fn_reply_release(&r);
    /* a body that is an object or array is sent as JSON */
    r = reply_of("{\"body\":{\"a\":[1,2]}}");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "application/json");
    assert_memory_equal(r.body, "{\"a\":[1,2]}", r.len);
    act_fn_reply_release(&r);
    r = reply_of("{\"body\":\"plain\"}");
    assert_string_equal(r.content_type, "text/plain; charset=utf-8");
    act_fn_reply_release(&r);
    r = reply_of("{\"statusCode\":204}");
    assert_int_equal(r.status, 204);
    assert_null(r.body);
    act_fn_reply_release(&r);
    /* a header that would split the answer is dropped */
    r = reply_of("{\"headers\":{\"X-B\":\"a\\r\\nSet-Cookie: x=1\"},\"body\":\"\"}");
    assert_null(json_object_get(r.headers, "X-B"));
    act_fn_reply_release(&r);
    /* refused */
    struct loom_err err = LOOM_ERR_INIT;
    const char *bad[] = {"not json", "{\"statusCode\":99}", "{\"statusCode\":\"200\"}",
                         "{\"headers\":[1]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct act_fn_reply x = {0};
        if (act_fn_reply_from_result(bad[i], strlen(bad[i]), &x, &err) == 0)
            fail_msg("%s was accepted", bad[i]);
        act_fn_reply_release(&x);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
