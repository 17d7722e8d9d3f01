/* The activator's routing: Host header and path parsing, URL re-encoding,
 * hop-by-hop headers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "services/activator/activator.h"

static void test_host(void **state)
{
    (void)state;
    char p[ACT_NAME_MAX], a[ACT_NAME_MAX];
    assert_int_equal(act_parse_host("web.shop.loom.localhost", "loom.localhost", p, a), 0);
    assert_string_equal(p, "shop");
    assert_string_equal(a, "web");
    /* port, case, trailing dot */
    assert_int_equal(act_parse_host("Web.SHOP.Loom.Localhost.:8080", "loom.localhost", p, a), 0);
    assert_string_equal(p, "shop");
    assert_string_equal(a, "web");
    assert_int_equal(act_parse_host("a-1.p2.example.com:80", "example.com", p, a), 0);
    assert_string_equal(a, "a-1");
    assert_string_equal(p, "p2");

    /* not ours */
    assert_int_equal(act_parse_host("127.0.0.1:8080", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("shop.loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("x.web.shop.loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("web.shop.evilloom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("web.shopXloom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("web..loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host(".shop.loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("we_b.shop.loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("web-.shop.loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("1web.shop.loom.localhost", "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host(NULL, "loom.localhost", p, a), -1);
    assert_int_equal(act_parse_host("", "loom.localhost", p, a), -1);
    char longlabel[100];
    memset(longlabel, 'a', 70);
    strcpy(longlabel + 70, ".p.loom.localhost");
    assert_int_equal(act_parse_host(longlabel, "loom.localhost", p, a), -1);
}

static void test_path(void **state)
{
    (void)state;
    char p[ACT_NAME_MAX], a[ACT_NAME_MAX];
    const char *rest;
    assert_int_equal(act_parse_path("/apps/shop/web/x/y", "/apps/", p, a, &rest), 0);
    assert_string_equal(p, "shop");
    assert_string_equal(a, "web");
    assert_string_equal(rest, "x/y");
    assert_int_equal(act_parse_path("/apps/shop/web/", "/apps/", p, a, &rest), 0);
    assert_string_equal(rest, "");
    assert_int_equal(act_parse_path("/apps/shop/web", "/apps/", p, a, &rest), 0);
    assert_string_equal(a, "web");
    assert_string_equal(rest, "");
    assert_int_equal(act_parse_path("/apps/shop/web//z", "/apps/", p, a, &rest), 0);
    assert_string_equal(rest, "/z");

    assert_int_equal(act_parse_path("/apps/shop", "/apps/", p, a, &rest), -1);
    assert_int_equal(act_parse_path("/apps/shop/", "/apps/", p, a, &rest), -1);
    assert_int_equal(act_parse_path("/apps//web/", "/apps/", p, a, &rest), -1);
    assert_int_equal(act_parse_path("/apps/Shop/web/", "/apps/", p, a, &rest), -1);
    assert_int_equal(act_parse_path("/apps/shop/w%65b/", "/apps/", p, a, &rest), -1);
    assert_int_equal(act_parse_path("/app/shop/web/", "/apps/", p, a, &rest), -1);
    assert_int_equal(act_parse_path("/", "/apps/", p, a, &rest), -1);
    /* functions, under their own prefix */
    assert_int_equal(act_parse_path("/fns/shop/hello/x", "/fns/", p, a, &rest), 0);
    assert_string_equal(a, "hello");
    assert_string_equal(rest, "x");
    assert_int_equal(act_parse_path("/apps/shop/hello", "/fns/", p, a, &rest), -1);
}

static void test_url_raw(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    act_add_url_raw(&sb, "/a%20b/c?d=e&f=%2F");
    assert_string_equal(sb.buf, "/a%20b/c?d=e&f=%2F");
    strbuf_reset(&sb);
    act_add_url_raw(&sb, "/x y\"<>\\^`{|}\x01\xc3\xa9");
    assert_string_equal(sb.buf, "/x%20y%22%3C%3E%5C%5E%60%7B%7C%7D%01%C3%A9");
    strbuf_release(&sb);
}

static void test_hop(void **state)
{
    (void)state;
    assert_true(act_is_hop_header("Connection"));
    assert_true(act_is_hop_header("keep-alive"));
    assert_true(act_is_hop_header("Transfer-Encoding"));
    assert_true(act_is_hop_header("Upgrade"));
    assert_true(act_is_hop_header("Host"));
    assert_true(act_is_hop_header("content-length"));
    assert_false(act_is_hop_header("Content-Type"));
    assert_false(act_is_hop_header("Authorization"));
    assert_false(act_is_hop_header("X-Forwarded-For"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_url_raw),
        cmocka_unit_test(test_hop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
