#include <fcntl.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "metrics.h"
#include "strbuf.h"

/* Runs fn with stderr redirected into a pipe and returns what it wrote. */
static char *capture_stderr(void (*fn)(void))
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    struct strbuf sb = STRBUF_INIT;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof(buf))) > 0)
        strbuf_add(&sb, buf, (size_t)n);
    close(fds[0]);
    return strbuf_detach(&sb, NULL);
}

static void log_some(void)
{
    loom_log_init("unit", LOOM_LOG_INFO);
    log_debug("dropped below the minimum");
    log_info("hello \"%s\"\nnext\t%d", "world", 42);
    loom_log_set_request_id("req-1");
    log_error("with id");
    loom_log_set_request_id(NULL);
    log_warn("no id again");
}

static void test_log_lines(void **state)
{
    (void)state;
    unsetenv("LOOM_LOG_LEVEL");
    char *out = capture_stderr(log_some);
    /* three lines, each one JSON object */
    char *save = NULL;
    int n = 0;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save), n++) {
        json_error_t jerr;
        json_t *j = json_loads(line, 0, &jerr);
        if (!j)
            fail_msg("not JSON: %s", line);
        const char *time = json_string_value(json_object_get(j, "time"));
        assert_non_null(time);
        assert_int_equal(strlen(time), 24); /* 2026-11-28T04:25:32.123Z */
        assert_int_equal(time[23], 'Z');
        assert_string_equal(json_string_value(json_object_get(j, "service")), "unit");
        const char *level = json_string_value(json_object_get(j, "level"));
        const char *msg = json_string_value(json_object_get(j, "msg"));
        json_t *rid = json_object_get(j, "request_id");
        if (n == 0) {
            assert_string_equal(level, "info");
            assert_string_equal(msg, "hello \"world\"\nnext\t42");
            assert_null(rid);
        } else if (n == 1) {
            assert_string_equal(level, "error");
            assert_string_equal(json_string_value(rid), "req-1");
        } else {
            assert_string_equal(level, "warn");
            assert_null(rid);
        }
        json_decref(j);
    }
    assert_int_equal(n, 3);
    free(out);
}

static void log_env_override(void)
{
    setenv("LOOM_LOG_LEVEL", "error", 1);
    loom_log_init("unit", LOOM_LOG_DEBUG);
    log_warn("dropped: the environment asks for errors only");
    loom_log_set_level(LOOM_LOG_DEBUG);
    log_debug("kept");
    unsetenv("LOOM_LOG_LEVEL");
}

static void test_log_levels(void **state)
{
    (void)state;
    char *out = capture_stderr(log_env_override);
    assert_null(strstr(out, "dropped"));
    assert_non_null(strstr(out, "\"level\":\"debug\""));
    free(out);
    enum loom_log_level l;
    assert_int_equal(loom_log_level_parse("warn", &l), 0);
    assert_int_equal(l, LOOM_LOG_WARN);
    assert_int_equal(loom_log_level_parse("verbose", &l), -1);
}

static void test_metrics_render(void **state)
{
    (void)state;
    struct loom_metric *a = loom_metric_counter("t_requests_total", "code=\"200\"", "requests");
    struct loom_metric *b = loom_metric_counter("t_requests_total", "code=\"500\"", "requests");
    assert_ptr_equal(a, loom_metric_counter("t_requests_total", "code=\"200\"", "requests"));
    loom_metric_add(a, 2);
    loom_metric_add(b, 1);
    struct loom_metric *g = loom_metric_gauge("t_instances", NULL, "instances\nnow");
    loom_metric_set(g, 5);
    loom_metric_add(g, -1.5);
    const double buckets[] = {0.1, 1};
    struct loom_metric *h =
        loom_metric_histogram("t_latency_seconds", "route=\"x\"", "latency", buckets, 2);
    loom_metric_observe(h, 0.05);
    loom_metric_observe(h, 0.1); /* le is inclusive */
    loom_metric_observe(h, 0.5);
    loom_metric_observe(h, 7);
    struct strbuf sb = STRBUF_INIT;
    loom_metrics_render(&sb);
    const char *want = "# HELP t_requests_total requests\n"
                       "# TYPE t_requests_total counter\n"
                       "t_requests_total{code=\"200\"} 2\n"
                       "t_requests_total{code=\"500\"} 1\n"
                       "# HELP t_instances instances\\nnow\n"
                       "# TYPE t_instances gauge\n"
                       "t_instances 3.5\n"
                       "# HELP t_latency_seconds latency\n"
                       "# TYPE t_latency_seconds histogram\n"
                       "t_latency_seconds_bucket{route=\"x\",le=\"0.1\"} 2\n"
                       "t_latency_seconds_bucket{route=\"x\",le=\"1\"} 3\n"
                       "t_latency_seconds_bucket{route=\"x\",le=\"+Inf\"} 4\n"
                       "t_latency_seconds_sum{route=\"x\"} 7.65\n"
                       "t_latency_seconds_count{route=\"x\"} 4\n";
    assert_string_equal(sb.buf, want);
    strbuf_release(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_lines),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_metrics_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
