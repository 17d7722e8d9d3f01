/* common/quantity: CPU and sizes parsed exactly, at the edges: fractions,
 * binary and decimal units, overflow, exponents and garbage; and formatted
 * so that parsing the text gives the value back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "quantity.h"
#include "cleanup.h"

static int64_t cpu(const char *s)
{
    int64_t v = -7;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_cpu_parse(s, &v, &err) < 0) {
        assert_int_equal(err.code, LOOM_EINVAL);
        assert_true(err.msg[0] != '\0');
        return -1;
    }
    return v;
}

static int64_t size(const char *s, enum loom_size_units units)
{
    int64_t v = -7;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_size_parse(s, units, &v, &err) < 0) {
        assert_int_equal(err.code, LOOM_EINVAL);
        assert_true(err.msg[0] != '\0');
        return -1;
    }
    return v;
}

static void test_cpu(void **state)
{
    (void)state;
    assert_int_equal(cpu("1"), 1000);
    assert_int_equal(cpu("0.5"), 500);
    assert_int_equal(cpu(".125"), 125);
    assert_int_equal(cpu("0.125"), 125);
    assert_int_equal(cpu("12"), 12000);
    assert_int_equal(cpu("250m"), 250);
    assert_int_equal(cpu("0"), 0);
    assert_int_equal(cpu("1.001"), 1001);
    assert_int_equal(cpu("007"), 7000);
    assert_int_equal(cpu("1000000"), LOOM_CPU_MAX_MILLIS);
    const char *bad[] = {"",        "m",
                         "-1",      "+1",
                         "1.",      ".",
                         "0.0001",  "1e3",
                         "0x10",    " 1",
                         "1 ",      "1mm",
                         "1.5m",    "1M",
                         "1000001", "2k",
                         "1,5",     "nan",
                         "inf",     "1..2",
                         "1.2.3",   "99999999999999999999999999999999"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bad); i++)
        if (cpu(bad[i]) != -1)
            fail_msg("cpu \"%s\" was accepted", bad[i]);
    struct loom_err err = LOOM_ERR_INIT;
    int64_t v = 5;
    assert_int_equal(loom_cpu_parse(NULL, &v, &err), -1);
    assert_int_equal(v, 5); /* untouched on failure */
    assert_int_equal(loom_cpu_parse("0.0001", &v, &err), -1);
    assert_non_null(strstr(err.msg, "3 decimals"));
}

static void test_size(void **state)
{
    (void)state;
    assert_int_equal(size("4G", LOOM_SIZE_ANY), 4000000000LL);
    assert_int_equal(size("0.5G", LOOM_SIZE_ANY), 500000000LL);
    assert_int_equal(size("512Mi", LOOM_SIZE_ANY), 536870912LL);
    assert_int_equal(size("1.5Mi", LOOM_SIZE_ANY), 1572864LL);
    assert_int_equal(size("0.25Gi", LOOM_SIZE_ANY), 268435456LL);
    assert_int_equal(size("64K", LOOM_SIZE_ANY), 64000);
    assert_int_equal(size("64k", LOOM_SIZE_ANY), 64000);
    assert_int_equal(size("2Ki", LOOM_SIZE_ANY), 2048);
    assert_int_equal(size("1024", LOOM_SIZE_ANY), 1024);
    assert_int_equal(size("1024B", LOOM_SIZE_ANY), 1024);
    assert_int_equal(size("2GB", LOOM_SIZE_ANY), 2000000000LL);
    assert_int_equal(size("0", LOOM_SIZE_ANY), 0);
    assert_int_equal(size("1T", LOOM_SIZE_ANY), 1000000000000LL);
    assert_int_equal(size("1.123456789T", LOOM_SIZE_ANY), 1123456789000LL);
    /* the largest sizes: 8 EiB - 1 is still exact, one more byte is not */
    assert_int_equal(size("9223372036854775807", LOOM_SIZE_ANY), INT64_MAX);
    assert_int_equal(size("9223372036854775808", LOOM_SIZE_ANY), -1);
    assert_int_equal(size("8388608Ti", LOOM_SIZE_ANY), -1); /* 2^63 */
    assert_int_equal(size("8388607Ti", LOOM_SIZE_ANY), 8388607LL << 40);
    assert_int_equal(size("99999999999Ti", LOOM_SIZE_ANY), -1);
    const char *bad[] = {"",        "G",   "-1G",  "+1G", "1e3", "1e3M",
                         "0x10",    "1.5", "1.",   ".G",  "4 G", " 4G",
                         "4G ",     "4g",  "4GiB", "4gi", "4Gb", "0.0000000001G",
                         "1.0001K", "4Z",  "nanG", "1,5G"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bad); i++)
        if (size(bad[i], LOOM_SIZE_ANY) != -1)
            fail_msg("size \"%s\" was accepted", bad[i]);
}

static void test_memory_units(void **state)
{
    (void)state;
    assert_int_equal(size("4G", LOOM_SIZE_MEMORY), 4000000000LL);
    assert_int_equal(size("512M", LOOM_SIZE_MEMORY), 512000000LL);
    assert_int_equal(size("512Mi", LOOM_SIZE_MEMORY), 536870912LL);
    assert_int_equal(size("0.5Gi", LOOM_SIZE_MEMORY), 536870912LL);
    const char *not_memory[] = {"1024", "64K", "2Ki", "1T", "2GB", "1B"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(not_memory); i++)
        if (size(not_memory[i], LOOM_SIZE_MEMORY) != -1)
            fail_msg("memory \"%s\" was accepted", not_memory[i]);
    struct loom_err err = LOOM_ERR_INIT;
    int64_t v;
    assert_int_equal(loom_size_parse("64K", LOOM_SIZE_MEMORY, &v, &err), -1);
    assert_non_null(strstr(err.msg, "M, G, Mi, Gi"));
}

static void test_format(void **state)
{
    (void)state;
    char buf[32];
    struct {
        int64_t millis;
        const char *text;
    } cpus[] = {{125, "0.125"}, {250, "0.25"},   {500, "0.5"}, {1000, "1"},
                {12000, "12"},  {1001, "1.001"}, {0, "0"},     {1010, "1.01"}};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cpus); i++) {
        loom_cpu_format(cpus[i].millis, buf, sizeof(buf));
        assert_string_equal(buf, cpus[i].text);
        assert_int_equal(cpu(buf), cpus[i].millis);
    }
    struct {
        int64_t bytes;
        const char *text;
    } sizes[] = {
        {4000000000LL, "4G"},
        {536870912LL, "512Mi"},
        {1500000000LL, "1500M"},
        {123, "123"},
        {0, "0"},
        {4294967296LL, "4Gi"},
        {2048, "2Ki"},
        {64000, "64K"},
        {1LL << 40, "1Ti"},
        {3000000000000LL, "3T"},
        {INT64_MAX, "9223372036854775807"},
        {1073741824000LL, "1000Gi"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(sizes); i++) {
        loom_size_format(sizes[i].bytes, buf, sizeof(buf));
        assert_string_equal(buf, sizes[i].text);
        assert_int_equal(size(buf, LOOM_SIZE_ANY), sizes[i].bytes);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_memory_units),
        cmocka_unit_test(test_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
