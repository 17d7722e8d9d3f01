#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "util.h"

static void test_uuid(void **state)
{
    (void)state;
    char a[37], b[37];
    loom_uuid4(a);
    loom_uuid4(b);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            assert_int_equal(a[i], '-');
            continue;
        }
        assert_true((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f'));
    }
    assert_int_equal(a[14], '4');           /* version 4 */
    assert_non_null(strchr("89ab", a[19])); /* RFC 4122 variant */
}

static void test_is_uuid(void **state)
{
    (void)state;
    char fresh[37];
    loom_uuid4(fresh);
    assert_true(loom_is_uuid(fresh));
    assert_true(loom_is_uuid("9abf38fa-ebb7-407a-97be-5b4a8f43755d"));
    assert_true(loom_is_uuid("9ABF38FA-EBB7-407A-97BE-5B4A8F43755D"));
    const char *bad[] = {"",
                         "9abf38fa-ebb7-407a-97be-5b4a8f43755",   /* short */
                         "9abf38fa-ebb7-407a-97be-5b4a8f43755d0", /* long */
                         "9abf38fa+ebb7-407a-97be-5b4a8f43755d",  /* not a dash */
                         "9abf38faebb7-407a-97be-5b4a8f43755d0",  /* dash moved */
                         "9abf38fa-ebb7-407a-97be-5b4a8f43755g",  /* not hex */
                         "../../etc/passwd-ebb7-407a-97be-5b4a8f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (loom_is_uuid(bad[i]))
            fail_msg("accepted \"%s\"", bad[i]);
    assert_false(loom_is_uuid(NULL));
}

static void test_uuid_bytes(void **state)
{
    (void)state;
    uint8_t b[16];
    assert_int_equal(loom_uuid_bytes("9abf38fa-ebb7-407A-97be-5b4a8f43755d", b), 0);
    static const uint8_t want[16] = {0x9a, 0xbf, 0x38, 0xfa, 0xeb, 0xb7, 0x40, 0x7a,
                                     0x97, 0xbe, 0x5b, 0x4a, 0x8f, 0x43, 0x75, 0x5d};
    assert_memory_equal(b, want, 16);
    assert_int_equal(loom_uuid_bytes("9abf38faebb7407a97be5b4a8f43755d", b), -1);
    assert_int_equal(loom_uuid_bytes("9abf38fa-ebb7-407a-97be-5b4a8f43755g", b), -1);
    assert_int_equal(loom_uuid_bytes(NULL, b), -1);
}

static void test_dns_label(void **state)
{
    (void)state;
    const char *good[] = {"a", "web", "my-app-2",
                          "a23456789012345678901234567890123456789012345678901234567890123"};
    const char *bad[] = {
        "",         "A",
        "1abc",     "-abc",
        "abc-",     "a_b",
        "a.b",      "ab c",
        "\xc3\xa9", "a23456789012345678901234567890123456789012345678901234567890123x"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!loom_is_dns_label(good[i]))
            fail_msg("refused \"%s\"", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (loom_is_dns_label(bad[i]))
            fail_msg("accepted \"%s\"", bad[i]);
}

static void test_hex_sha256(void **state)
{
    (void)state;
    char hex[9];
    loom_hex("\x00\x01\xab\xff", 4, hex);
    assert_string_equal(hex, "0001abff");
    char out[65];
    loom_sha256_hex("", 0, out);
    assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    loom_sha256_hex("abc", 3, out);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* Hex both ways, in place and allocated: what loom_hex writes, loom_unhex
 * and loom_unhex_alloc read back; anything but whole hex pairs is refused. */
static void test_unhex(void **state)
{
    (void)state;
    const unsigned char bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    char *hex = loom_hex_alloc(bytes, sizeof(bytes));
    assert_string_equal(hex, "00017f80abff");
    unsigned char back[sizeof(bytes)];
    assert_int_equal(loom_unhex(hex, back, sizeof(back)), 0);
    assert_memory_equal(back, bytes, sizeof(bytes));
    assert_int_equal(loom_unhex(hex, back, sizeof(back) - 1), -1); /* not 2n characters */

    uint8_t *b = NULL;
    size_t n = 99;
    assert_int_equal(loom_unhex_alloc(hex, &b, &n), 0);
    assert_int_equal(n, sizeof(bytes));
    assert_memory_equal(b, bytes, sizeof(bytes));
    free(b);
    free(hex);
    assert_int_equal(loom_unhex_alloc("00017F80ABFF", &b, &n), 0); /* upper case */
    assert_int_equal(b[5], 0xff);
    free(b);
    assert_int_equal(loom_unhex_alloc("", &b, &n), 0);
    assert_int_equal(n, 0);
    free(b);

    const char *bad[] = {"0", "abc", "0g", " a", "+a", "-1", "a\n", "0x1f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        b = NULL;
        if (loom_unhex_alloc(bad[i], &b, &n) == 0)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_null(b); /* nothing handed out on failure */
    }
    assert_int_equal(loom_unhex_alloc(NULL, &b, &n), -1);
}

static void test_files(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    char dir[] = "/tmp/loom-test-util-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[128], path[160];
    snprintf(sub, sizeof(sub), "%s/a/b/c", dir);
    assert_int_equal(loom_mkdir_p(sub, 0755, &err), 0);
    assert_int_equal(loom_mkdir_p(sub, 0755, &err), 0); /* exists: fine */
    snprintf(path, sizeof(path), "%s/file", sub);

    assert_int_equal(loom_write_file_atomic(path, "abc", 3, &err), 0);
    assert_int_equal(loom_write_file_atomic(path, "hello\n", 6, &err), 0); /* replaces */
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(loom_read_file(path, &data, &len, &err), 0);
    assert_int_equal(len, 6);
    assert_string_equal(data, "hello\n");
    free(data);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 6);

    char sha[65];
    assert_int_equal(loom_sha256_file(path, sha, &err), 0);
    char want[65];
    loom_sha256_hex("hello\n", 6, want);
    assert_string_equal(sha, want);

    /* the temp file is gone: the directory holds only the file */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "test \"$(ls -A %s)\" = file", sub);
    assert_int_equal(system(cmd), 0);

    /* writing into a missing directory fails and leaves nothing behind */
    char missing[192];
    snprintf(missing, sizeof(missing), "%s/nope/file", dir);
    assert_int_equal(loom_write_file_atomic(missing, "x", 1, &err), -1);
    assert_int_equal(err.code, LOOM_EIO);
    assert_non_null(strstr(err.msg, "No such file or directory"));

    assert_int_equal(loom_read_file(missing, &data, NULL, &err), -1);
    assert_int_equal(err.code, LOOM_ENOTFOUND);
    assert_int_equal(loom_sha256_file(missing, sha, &err), -1);

    /* a path through a regular file cannot be created */
    char through[192];
    snprintf(through, sizeof(through), "%s/x", path);
    assert_int_equal(loom_mkdir_p(through, 0755, &err), -1);

    assert_int_equal(loom_rm_rf(dir, &err), 0);
    assert_int_equal(access(dir, F_OK), -1);
    assert_int_equal(loom_rm_rf(dir, &err), 0); /* already gone: fine */
}

static void test_time(void **state)
{
    (void)state;
    char out[32];
    loom_format_time_ms(1795839932123LL, out);
    assert_string_equal(out, "2026-11-28T04:25:32.123Z");
    loom_format_time_ms(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    int64_t a = loom_mono_ms(), b = loom_mono_ms();
    assert_true(b >= a);
    int64_t now = loom_now_ms();
    assert_true(now > 1700000000000LL);
    int64_t ns = loom_now_ns();
    assert_true(ns / 1000000 >= now - 1000 && ns / 1000000 <= now + 1000);
}

static void test_random(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    unsigned char a[32] = {0}, zero[32] = {0};
    assert_int_equal(loom_random_bytes(a, sizeof(a), &err), 0);
    assert_memory_not_equal(a, zero, sizeof(a));
}

static void test_next_line(void **state)
{
    (void)state;
    char buf[8];
    const char *p = "a:1\n\ntoo-long-line\nlast";
    assert_true(loom_next_line(&p, buf, sizeof(buf)));
    assert_string_equal(buf, "a:1");
    assert_true(loom_next_line(&p, buf, sizeof(buf)));
    assert_string_equal(buf, ""); /* an empty line is a line */
    assert_true(loom_next_line(&p, buf, sizeof(buf)));
    assert_string_equal(buf, "last"); /* the long one is skipped */
    assert_false(loom_next_line(&p, buf, sizeof(buf)));
    const char *none = NULL;
    assert_false(loom_next_line(&none, buf, sizeof(buf)));
    p = "x\n";
    assert_true(loom_next_line(&p, buf, sizeof(buf)));
    assert_string_equal(buf, "x");
    assert_false(loom_next_line(&p, buf, sizeof(buf)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid),       cmocka_unit_test(test_is_uuid),
        cmocka_unit_test(test_uuid_bytes), cmocka_unit_test(test_dns_label),
        cmocka_unit_test(test_hex_sha256), cmocka_unit_test(test_unhex),
        cmocka_unit_test(test_files),      cmocka_unit_test(test_time),
        cmocka_unit_test(test_random),     cmocka_unit_test(test_next_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
