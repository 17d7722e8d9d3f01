#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"

struct cfg {
    char *name;
    int64_t port;
    bool verbose;
    int64_t timeout_ms;
    int64_t mem;
    char *addr;
};

static struct cfg c;

static const struct loom_opt opts[] = {
    {"name", "LOOMTEST_NAME", LOOM_OPT_STRING, &c.name, "def", 0, 0, "a name"},
    {"http-port", "LOOM_HTTP_PORT", LOOM_OPT_INT, &c.port, "80", 1, 65535, "a port"},
    {"verbose", "LOOMTEST_VERBOSE", LOOM_OPT_BOOL, &c.verbose, "false", 0, 0, "chatty"},
    {"timeout", "LOOMTEST_TIMEOUT", LOOM_OPT_DURATION, &c.timeout_ms, "5s", 0, 0, "a timeout"},
    {"mem", NULL, LOOM_OPT_SIZE, &c.mem, "64Mi", 0, 0, "a size"},
    {"addr", "LOOMTEST_ADDR", LOOM_OPT_ADDR, &c.addr, ":8080", 0, 0, "an address"},
};
#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static int setup(void **state)
{
    (void)state;
    memset(&c, 0, sizeof(c));
    unsetenv("LOOMTEST_NAME");
    unsetenv("LOOM_HTTP_PORT");
    unsetenv("LOOMTEST_VERBOSE");
    unsetenv("LOOMTEST_TIMEOUT");
    unsetenv("LOOMTEST_ADDR");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    loom_config_release(opts, NOPTS);
    return 0;
}

/* Parses the NULL-terminated arguments after "prog" (copied into a writable argv). */
static int parse(struct loom_err *err, ...)
{
    char *argv[16] = {(char *)"prog"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    const char *a;
    while ((a = va_arg(ap, const char *)) && argc < 16)
        argv[argc++] = (char *)a;
    va_end(ap);
    return loom_config_parse(opts, NOPTS, argc, argv, NULL, NULL, NULL, err);
}

static void test_defaults(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    char *argv[] = {(char *)"prog"};
    assert_int_equal(loom_config_parse(opts, NOPTS, 1, argv, NULL, NULL, NULL, &err), 0);
    assert_string_equal(c.name, "def");
    assert_int_equal(c.port, 80);
    assert_false(c.verbose);
    assert_int_equal(c.timeout_ms, 5000);
    assert_int_equal(c.mem, 64 * 1024 * 1024);
    assert_string_equal(c.addr, "127.0.0.1:8080");
}

static void test_precedence(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    setenv("LOOMTEST_NAME", "fromenv", 1);
    setenv("LOOM_HTTP_PORT", "81", 1);
    assert_int_equal(parse(&err, "--name", "fromflag", NULL), 0);
    assert_string_equal(c.name, "fromflag"); /* flag beats env */
    assert_int_equal(c.port, 81);            /* env beats default */
    loom_config_release(opts, NOPTS);
    assert_null(c.name);

    assert_int_equal(parse(&err, "--http-port=82", "--name=x=y", NULL), 0);
    assert_int_equal(c.port, 82);
    assert_string_equal(c.name, "x=y");
    loom_config_release(opts, NOPTS);

    /* the last of repeated flags wins */
    assert_int_equal(parse(&err, "--http-port", "1", "--http-port", "2", NULL), 0);
    assert_int_equal(c.port, 2);
}

static void test_bool_flags(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(parse(&err, "--verbose", NULL), 0);
    assert_true(c.verbose);
    loom_config_release(opts, NOPTS);
    setenv("LOOMTEST_VERBOSE", "yes", 1);
    assert_int_equal(parse(&err, "--verbose=off", NULL), 0);
    assert_false(c.verbose);
    loom_config_release(opts, NOPTS);
    assert_int_equal(parse(&err, NULL), 0);
    assert_true(c.verbose);
    loom_config_release(opts, NOPTS);
    assert_int_equal(parse(&err, "--verbose=maybe", NULL), -1);
    assert_string_equal(err.msg, "invalid value \"maybe\" for --verbose (LOOMTEST_VERBOSE): not a "
                                 "boolean (true/false)");
}

static void test_bad_values(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(parse(&err, "--http-port", "abc", NULL), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_string_equal(err.msg,
                        "invalid value \"abc\" for --http-port (LOOM_HTTP_PORT): not an integer");
    assert_null(c.name); /* nothing left allocated after a failure */

    setenv("LOOM_HTTP_PORT", "12x", 1);
    assert_int_equal(parse(&err, NULL), -1);
    assert_string_equal(err.msg,
                        "invalid value \"12x\" for --http-port (LOOM_HTTP_PORT): not an integer");
    unsetenv("LOOM_HTTP_PORT");

    assert_int_equal(parse(&err, "--http-port=70000", NULL), -1);
    assert_string_equal(err.msg, "invalid value \"70000\" for --http-port (LOOM_HTTP_PORT): must "
                                 "be from 1 to 65535");
    assert_int_equal(parse(&err, "--mem", "12Q", NULL), -1);
    assert_non_null(strstr(err.msg, "invalid value \"12Q\" for --mem: not a size"));
    assert_int_equal(parse(&err, "--timeout", "soon", NULL), -1);
    assert_non_null(strstr(err.msg, "for --timeout (LOOMTEST_TIMEOUT): not a duration"));
    assert_int_equal(parse(&err, "--addr", "nocolon", NULL), -1);
    assert_non_null(strstr(err.msg, "for --addr (LOOMTEST_ADDR): not host:port"));
}

static void test_unknown_and_missing(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(parse(&err, "--bogus", "1", NULL), -1);
    assert_string_equal(err.msg, "unknown flag \"--bogus\"");
    assert_int_equal(parse(&err, "--bogus=1", NULL), -1);
    assert_string_equal(err.msg, "unknown flag \"--bogus\"");
    assert_int_equal(parse(&err, "--name", NULL), -1);
    assert_string_equal(err.msg, "missing value for --name");
    assert_int_equal(parse(&err, "stray", NULL), -1);
    assert_string_equal(err.msg, "unexpected argument \"stray\"");
}

static void test_help_and_rest(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    bool help = false;
    char *argv[] = {(char *)"prog", (char *)"a",  (char *)"--name", (char *)"n",
                    (char *)"b",    (char *)"--", (char *)"--c"};
    char **rest = NULL;
    int nrest = 0;
    assert_int_equal(loom_config_parse(opts, NOPTS, 7, argv, &rest, &nrest, &help, &err), 0);
    assert_false(help);
    assert_int_equal(nrest, 3);
    assert_string_equal(rest[0], "a");
    assert_string_equal(rest[1], "b");
    assert_string_equal(rest[2], "--c");
    assert_string_equal(c.name, "n");
    loom_config_release(opts, NOPTS);

    char *argv2[] = {(char *)"prog", (char *)"--help"};
    assert_int_equal(loom_config_parse(opts, NOPTS, 2, argv2, NULL, NULL, &help, &err), 0);
    assert_true(help);
}

static void test_durations(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(loom_parse_duration_ms("250ms", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(loom_parse_duration_ms("5s", &v), 0);
    assert_int_equal(v, 5000);
    assert_int_equal(loom_parse_duration_ms("2m", &v), 0);
    assert_int_equal(v, 120000);
    assert_int_equal(loom_parse_duration_ms("1h", &v), 0);
    assert_int_equal(v, 3600000);
    assert_int_equal(loom_parse_duration_ms("7", &v), 0);
    assert_int_equal(v, 7000);
    assert_int_equal(loom_parse_duration_ms("7d", &v), 0);
    assert_int_equal(v, 7 * 86400000LL);
    assert_int_equal(loom_parse_duration_ms("0", &v), 0);
    assert_int_equal(v, 0);
    v = 42;
    assert_int_equal(loom_parse_duration_ms("", &v), -1);
    assert_int_equal(loom_parse_duration_ms("-1s", &v), -1);
    assert_int_equal(loom_parse_duration_ms("5 s", &v), -1);
    assert_int_equal(loom_parse_duration_ms("5w", &v), -1);
    assert_int_equal(loom_parse_duration_ms("ms", &v), -1);
    assert_int_equal(loom_parse_duration_ms("99999999999999999999s", &v), -1);
    assert_int_equal(loom_parse_duration_ms("9223372036854775807h", &v), -1);
    assert_int_equal(v, 42); /* untouched on failure */
}

/* LOOM_OPT_SIZE is common/quantity.h's parser (tested at its edges in
 * test_quantity), with the option's name in the error. */
static void test_sizes(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(parse(&err, "--mem", "512Mi", NULL), 0);
    assert_int_equal(c.mem, 512LL * 1024 * 1024);
    loom_config_release(opts, NOPTS); /* a parse starts from no strings */
    assert_int_equal(parse(&err, "--mem", "0.5G", NULL), 0);
    assert_int_equal(c.mem, 500000000LL);
    loom_config_release(opts, NOPTS);
    assert_int_equal(parse(&err, "--mem", "4GiB", NULL), -1);
    assert_non_null(strstr(err.msg, "--mem"));
    assert_non_null(strstr(err.msg, "not a size"));
    assert_int_equal(parse(&err, "--mem", "99999999999Ti", NULL), -1);
}

static void test_ints_bools(void **state)
{
    (void)state;
    int64_t v;
    bool b;
    assert_int_equal(loom_parse_int("-5", -10, 10, &v), 0);
    assert_int_equal(v, -5);
    assert_int_equal(loom_parse_int("11", -10, 10, &v), -1);
    assert_int_equal(loom_parse_int("123", 0, 0, &v), 0); /* max <= min: unbounded */
    assert_int_equal(loom_parse_int(" 1", 0, 0, &v), -1);
    assert_int_equal(loom_parse_int("", 0, 0, &v), -1);
    assert_int_equal(loom_parse_int("99999999999999999999", 0, 0, &v), -1);
    const char *yes[] = {"1", "true", "yes", "on", "TRUE"};
    const char *no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(loom_parse_bool(yes[i], &b), 0);
        assert_true(b);
    }
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(loom_parse_bool(no[i], &b), 0);
        assert_false(b);
    }
    assert_int_equal(loom_parse_bool("2", &b), -1);
}

static void test_hostport(void **state)
{
    (void)state;
    char *host = NULL;
    uint16_t port = 0;
    assert_int_equal(loom_parse_hostport(":8080", &host, &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    free(host);
    assert_int_equal(loom_parse_hostport("0.0.0.0:0", &host, &port), 0);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 0);
    free(host);
    assert_int_equal(loom_parse_hostport("[::1]:443", &host, &port), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 443);
    free(host);
    assert_int_equal(loom_parse_hostport("localhost:65535", &host, &port), 0);
    assert_string_equal(host, "localhost");
    free(host);
    host = NULL;
    assert_int_equal(loom_parse_hostport("localhost", &host, &port), -1);
    assert_int_equal(loom_parse_hostport("localhost:65536", &host, &port), -1);
    assert_int_equal(loom_parse_hostport("localhost:", &host, &port), -1);
    assert_int_equal(loom_parse_hostport("::1:80", &host, &port), -1);
    assert_int_equal(loom_parse_hostport("[::1]80", &host, &port), -1);
    assert_int_equal(loom_parse_hostport("a b:80", &host, &port), -1);
    assert_null(host);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bool_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_and_rest, setup, teardown),
        cmocka_unit_test(test_durations),
        cmocka_unit_test_setup_teardown(test_sizes, setup, teardown),
        cmocka_unit_test(test_ints_bools),
        cmocka_unit_test(test_hostport),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
