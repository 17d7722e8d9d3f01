#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strbuf.h"

static void test_init_empty(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    assert_non_null(sb.buf);
    assert_string_equal(sb.buf, "");
    assert_int_equal(sb.len, 0);
    strbuf_release(&sb); /* releasing an untouched buffer is fine */
    strbuf_init(&sb);
    size_t len = 99;
    char *s = strbuf_detach(&sb, &len);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    free(s); /* detach always hands back a heap string */
}

static void test_add(void **state)
{
    (void)state;
    _cleanup_strbuf_ struct strbuf sb = STRBUF_INIT;
    strbuf_addstr(&sb, "abc");
    strbuf_addch(&sb, '-');
    strbuf_add(&sb, "xyz", 2);
    strbuf_addf(&sb, "%d/%s", 42, "q");
    assert_string_equal(sb.buf, "abc-xy42/q");
    assert_int_equal(sb.len, 10);
    strbuf_reset(&sb);
    assert_string_equal(sb.buf, "");
    assert_int_equal(sb.len, 0);
    strbuf_add(&sb, "a\0b", 3); /* binary data keeps its length */
    assert_int_equal(sb.len, 3);
    assert_memory_equal(sb.buf, "a\0b", 4);
}

static void test_growth(void **state)
{
    (void)state;
    _cleanup_strbuf_ struct strbuf sb = STRBUF_INIT;
    for (int i = 0; i < 10000; i++)
        strbuf_addch(&sb, (char)('a' + i % 26));
    assert_int_equal(sb.len, 10000);
    assert_int_equal(sb.buf[10000], '\0');
    assert_int_equal(sb.buf[9999], 'a' + 9999 % 26);
    char big[1000];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    strbuf_reset(&sb);
    strbuf_addf(&sb, "<%s>", big); /* longer than addf's stack buffer */
    assert_int_equal(sb.len, 1001);
    assert_int_equal(sb.buf[0], '<');
    assert_int_equal(sb.buf[1000], '>');
}

static void test_json_escape(void **state)
{
    (void)state;
    _cleanup_strbuf_ struct strbuf sb = STRBUF_INIT;
    strbuf_add_json_escaped(&sb, "a\"b\\c\nd\te\x01\x1f/\xc3\xa9");
    assert_string_equal(sb.buf, "a\\\"b\\\\c\\nd\\te\\u0001\\u001f/\xc3\xa9");
    /* invalid UTF-8 (a lone continuation byte, a cut sequence, an overlong
     * '/', a surrogate) becomes U+FFFD so that every line is valid JSON;
     * valid 3- and 4-byte sequences pass through */
    strbuf_reset(&sb);
    strbuf_add_json_escaped(&sb, "x\x80y\xe2\x82z\xc0\xaf\xed\xa0\x80\xe2\x82\xac\xf0\x9f\x98\x80");
    assert_string_equal(sb.buf, "x\\ufffdy\\ufffd\\ufffdz\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd"
                                "\xe2\x82\xac\xf0\x9f\x98\x80");
}

static void test_detach(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    strbuf_addstr(&sb, "hello");
    size_t len;
    char *s = strbuf_detach(&sb, &len);
    assert_string_equal(s, "hello");
    assert_int_equal(len, 5);
    assert_string_equal(sb.buf, "");
    assert_int_equal(sb.len, 0);
    free(s);
    strbuf_release(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty), cmocka_unit_test(test_add),
        cmocka_unit_test(test_growth),     cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_detach),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
