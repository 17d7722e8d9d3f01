/* Readiness and liveness probes: what passes, what fails and why. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../services/agent/agent.h"

/* A one-connection-at-a-time HTTP server on 127.0.0.1 answering with
 * `status`, for `count` connections. */
struct server {
    int fd;
    uint16_t port;
    int status, count;
    char last_request[512];
    pthread_t t;
};

static void *serve(void *arg)
{
    struct server *s = arg;
    for (int i = 0; i < s->count; i++) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            break;
        char buf[512];
        ssize_t n = read(c, buf, sizeof(buf) - 1);
        if (n > 0) {
            buf[n] = 0;
            memcpy(s->last_request, buf, (size_t)n + 1);
        }
        char resp[128];
        int m =
            snprintf(resp, sizeof(resp), "HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", s->status);
        if (write(c, resp, (size_t)m) < 0) {
        }
        close(c);
    }
    return NULL;
}

static void server_start(struct server *s, int status, int count)
{
    s->status = status;
    s->count = count;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->fd, 8), 0);
    socklen_t sl = sizeof(sa);
    getsockname(s->fd, (struct sockaddr *)&sa, &sl);
    s->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&s->t, NULL, serve, s), 0);
}

static void server_stop(struct server *s)
{
    pthread_join(s->t, NULL);
    close(s->fd);
}

static void test_defaults_and_validation(void **state)
{
    (void)state;
    Loom__V1__Probe p = LOOM__V1__PROBE__INIT;
    struct probe pr;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(probe_from_assign(&p, 8080, &pr, &err), 0);
    assert_false(pr.http);
    assert_int_equal(pr.port, 8080);
    assert_int_equal(pr.period_ms, 10000);
    assert_int_equal(pr.timeout_ms, 1000);
    assert_int_equal(pr.failure_threshold, 3);
    p.type = (char *)"http";
    p.path = (char *)"/healthz";
    p.port = 9000;
    p.initial_delay_seconds = 2;
    p.period_seconds = 5;
    p.failure_threshold = 1;
    assert_int_equal(probe_from_assign(&p, 8080, &pr, &err), 0);
    assert_true(pr.http);
    assert_string_equal(pr.path, "/healthz");
    assert_int_equal(pr.port, 9000);
    assert_int_equal(pr.initial_delay_ms, 2000);
    assert_int_equal(pr.period_ms, 5000);
    assert_int_equal(pr.failure_threshold, 1);
    /* a path cannot smuggle headers into the request */
    p.path = (char *)"/x HTTP/1.1\r\nHost: evil";
    assert_int_equal(probe_from_assign(&p, 8080, &pr, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    p.path = (char *)"healthz";
    assert_int_equal(probe_from_assign(&p, 8080, &pr, &err), -1);
    p.path = (char *)"/";
    p.type = (char *)"exec";
    assert_int_equal(probe_from_assign(&p, 8080, &pr, &err), -1);
    p.type = (char *)"tcp";
    p.port = 0;
    assert_int_equal(probe_from_assign(&p, 0, &pr, &err), -1);
}

static void test_tcp(void **state)
{
    (void)state;
    struct server s;
    server_start(&s, 200, 1);
    Loom__V1__Probe p = LOOM__V1__PROBE__INIT;
    struct probe pr;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(probe_from_assign(&p, s.port, &pr, &err), 0);
    assert_int_equal(probe_run(&pr, "127.0.0.1", &err), 0);
    server_stop(&s);
    /* nothing listens there any more */
    assert_int_equal(probe_run(&pr, "127.0.0.1", &err), -1);
    assert_non_null(strstr(err.msg, "refused"));
}

static void test_http(void **state)
{
    (void)state;
    struct server s;
    server_start(&s, 204, 1);
    Loom__V1__Probe p = LOOM__V1__PROBE__INIT;
    p.type = (char *)"http";
    p.path = (char *)"/ready";
    struct probe pr;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(probe_from_assign(&p, s.port, &pr, &err), 0);
    assert_int_equal(probe_run(&pr, "127.0.0.1", &err), 0);
    server_stop(&s);
    assert_memory_equal(s.last_request, "GET /ready HTTP/1.1\r\n", 21);

    server_start(&s, 503, 1);
    assert_int_equal(probe_from_assign(&p, s.port, &pr, &err), 0);
    assert_int_equal(probe_run(&pr, "127.0.0.1", &err), -1);
    assert_non_null(strstr(err.msg, "HTTP status 503"));
    server_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_validation),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
