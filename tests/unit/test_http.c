#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <pthread.h>

#include "http.h"
#include "httpc.h"
#include "json.h"
#include "log.h"
#include "strbuf.h"

/* The HTTP server and client against each other on loopback. */

/* ---- http ---- */
static bool is_ready = true;
static bool ready_cb(void *arg)
{
    (void)arg;
    return is_ready;
}

static void h_thing(struct loom_http_req *req)
{
    json_t *j = json_pack("{s:s,s:i,s:s?}", "id", req->params[0], "n", req->nparams, "q",
                          loom_http_query(req, "q"));
    loom_http_set_header(req, "ETag", "\"v1\"");
    loom_http_reply_json(req, 200, j);
}

static void h_post(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    json_t *j = loom_http_body_json(req, &err);
    if (!j) {
        loom_http_reply_err(req, &err);
        return;
    }
    loom_http_set_header(req, "Location", "/v1/things/1");
    loom_http_reply_json(req, 201, j);
}

static void h_files(struct loom_http_req *req)
{
    loom_http_reply(req, 200, "text/plain", req->rest, strlen(req->rest));
}

static void h_noreply(struct loom_http_req *req)
{
    (void)req;
}

static void h_slow(struct loom_http_req *req)
{
    usleep(500000);
    loom_http_reply(req, 200, "text/plain", "slow", 4);
}

static void h_err(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    loom_err_set(&err, LOOM_ENOTFOUND, "app \"x\" not found");
    loom_http_reply_err(req, &err);
}

/* A spooled body: answers its size, where it came from and its first bytes. */
static void h_upload(struct loom_http_req *req)
{
    char head[16] = "";
    ssize_t n = req->body_fd >= 0 ? read(req->body_fd, head, 8) : -1;
    json_t *j = json_pack("{s:I,s:b,s:s#}", "len", (json_int_t)req->body_len, "file",
                          req->body_fd >= 0, "head", head, (size_t)(n > 0 ? n : 0));
    loom_http_reply_json(req, 200, j);
}

static int64_t upload_limit = 100000;
static const struct loom_http_spool spools[] = {{h_upload, &upload_limit}};

static const struct loom_http_route routes[] = {
    {"PUT", "/v1/things/{}/upload", h_upload},
    {"GET", "/v1/things/{}", h_thing},
    {"POST", "/v1/things", h_post},
    {"DELETE", "/v1/things/{}", h_thing},
    {"*", "/files/{}/*", h_files},
    {"GET", "/noreply", h_noreply},
    {"GET", "/slow", h_slow},
    {"GET", "/err", h_err},
};

static int do_req(const char *method, const char *url, const char *const *hdrs, const char *body,
                  struct loom_httpc_resp *resp)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_httpc_req rq = {.method = method,
                                .url = url,
                                .headers = hdrs,
                                .body = body,
                                .body_len = body ? strlen(body) : 0,
                                .timeout_ms = 3000};
    if (loom_httpc_do(&rq, resp, &err) < 0) {
        return -1;
    }
    return (int)resp->status;
}

static size_t sink_total;
static int sink(const void *d, size_t n, void *arg)
{
    (void)d;
    (void)arg;
    sink_total += n;
    return 0;
}

static void run_http(int threads)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_http_server *srv;
    struct loom_http_server_opts o = {.addr = "127.0.0.1:0",
                                      .max_body = 64,
                                      .threads = threads,
                                      .routes = routes,
                                      .nroutes = sizeof(routes) / sizeof(routes[0]),
                                      .spools = spools,
                                      .nspools = 1,
                                      .ready = ready_cb,
                                      .service = "it",
                                      .log_requests = false};
    assert_true(loom_http_server_start(&o, &srv, &err) == 0);
    unsigned port = loom_http_server_port(srv);
    assert_true(port > 0);
    char base[64], url[256];
    snprintf(base, sizeof(base), "http://127.0.0.1:%u", port);
    struct loom_httpc_resp r;

#define URL(p) (snprintf(url, sizeof(url), "%s%s", base, p), url)
    const char *rid[] = {"X-Request-Id: abc-123", NULL};
    assert_int_equal(do_req("GET", URL("/v1/things/a%20b%2Fc?q=x%26y+z"), rid, NULL, &r), 200);
    assert_true(strcmp(r.body.buf, "{\"id\":\"a b/c\",\"n\":1,\"q\":\"x&y z\"}") == 0);
    assert_true(r.etag && strcmp(r.etag, "\"v1\"") == 0);
    assert_true(r.content_type && strcmp(r.content_type, "application/json") == 0);
    loom_httpc_resp_release(&r);

    assert_int_equal(do_req("GET", URL("/v1/things/a/b"), NULL, NULL, &r), 404);
    assert_true(r.content_type && strcmp(r.content_type, "application/problem+json") == 0);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL("/v1/things/"), NULL, NULL, &r), 404);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("PUT", URL("/v1/things/1"), NULL, "", &r), 405);
    loom_httpc_resp_release(&r);

    assert_int_equal(do_req("POST", URL("/v1/things"), NULL, "{\"a\":1}", &r), 201);
    assert_true(strcmp(r.body.buf, "{\"a\":1}") == 0);
    assert_true(r.location && strcmp(r.location, "/v1/things/1") == 0);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("POST", URL("/v1/things"), NULL, "[1]", &r), 400);
    loom_httpc_resp_release(&r);
    char big[200];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    assert_int_equal(do_req("POST", URL("/v1/things"), NULL, big, &r), 413);
    loom_httpc_resp_release(&r);
    const char *chunked[] = {"Transfer-Encoding: chunked", NULL};
    assert_int_equal(do_req("POST", URL("/v1/things"), chunked, big, &r), 413);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("POST", URL("/v1/things"), chunked, "{\"b\":2}", &r), 201);
    assert_true(strcmp(r.body.buf, "{\"b\":2}") == 0);
    loom_httpc_resp_release(&r);

    /* a spooled body: past max_body (64), up to its own limit, read from a file */
    FILE *up = tmpfile();
    for (int i = 0; i < 9000; i++)
        fputs("0123456789", up);
    rewind(up);
    struct loom_httpc_req urq = {
        .method = "PUT", .url = URL("/v1/things/1/upload"), .body_file = up, .body_len = 90000};
    assert_true(loom_httpc_do(&urq, &r, &err) == 0 && r.status == 200);
    assert_string_equal(r.body.buf, "{\"len\":90000,\"file\":true,\"head\":\"01234567\"}");
    loom_httpc_resp_release(&r);
    upload_limit = 80000;
    rewind(up);
    assert_true(loom_httpc_do(&urq, &r, &err) == 0 && r.status == 413);
    loom_httpc_resp_release(&r);
    rewind(up);
    const char *up_chunked[] = {"Transfer-Encoding: chunked", NULL};
    urq.headers = up_chunked;
    assert_true(loom_httpc_do(&urq, &r, &err) == 0 && r.status == 413);
    loom_httpc_resp_release(&r);
    upload_limit = 100000;
    fclose(up);

    assert_int_equal(do_req("PATCH", URL("/files/x/a/b%20c"), NULL, "", &r), 200);
    assert_true(strcmp(r.body.buf, "a/b%20c") == 0);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL("/files/x"), NULL, NULL, &r), 200);
    assert_true(r.body.len == 0);
    loom_httpc_resp_release(&r);

    assert_int_equal(do_req("GET", URL("/noreply"), NULL, NULL, &r), 500);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL("/err"), NULL, NULL, &r), 404);
    assert_true(strstr(r.body.buf, "\"detail\":\"app \\\"x\\\" not found\""));
    assert_true(strstr(r.body.buf, "\"instance\":\"/err\""));
    loom_httpc_resp_release(&r);

    assert_int_equal(do_req("GET", URL("/livez"), NULL, NULL, &r), 200);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL("/readyz"), NULL, NULL, &r), 200);
    loom_httpc_resp_release(&r);
    is_ready = false;
    assert_int_equal(do_req("GET", URL("/readyz"), NULL, NULL, &r), 503);
    loom_httpc_resp_release(&r);
    is_ready = true;
    assert_int_equal(do_req("GET", URL("/metrics"), NULL, NULL, &r), 200);
    assert_true(strstr(r.body.buf, "loom_http_requests_total{code=\"200\"}"));
    assert_true(strstr(r.body.buf, "loom_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
    assert_true(strstr(r.body.buf, "process_start_time_seconds "));
    loom_httpc_resp_release(&r);

    /* request ids: echoed when sane, replaced otherwise (seen in the problem body) */
    const char *badrid[] = {"X-Request-Id: bad id!", NULL};
    assert_int_equal(do_req("GET", URL("/nothing"), badrid, NULL, &r), 404);
    assert_true(!strstr(r.body.buf, "bad id"));
    assert_true(strstr(r.body.buf, "\"request_id\":\""));
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL("/nothing"), rid, NULL, &r), 404);
    assert_true(strstr(r.body.buf, "\"request_id\":\"abc-123\""));
    loom_httpc_resp_release(&r);

    /* httpc: timeout, sink, max body, refused */
    struct loom_httpc_req rq = {.url = URL("/slow"), .timeout_ms = 200};
    assert_true(loom_httpc_do(&rq, &r, &err) == -1 && err.code == LOOM_ETIMEOUT);
    struct loom_httpc_req rq2 = {.url = URL("/metrics"), .sink = sink};
    sink_total = 0;
    assert_true(loom_httpc_do(&rq2, &r, &err) == 0 && r.status == 200 && r.body.len == 0 &&
                sink_total > 100);
    loom_httpc_resp_release(&r);
    struct loom_httpc_req rq3 = {.url = URL("/metrics"), .max_body = 10};
    assert_true(loom_httpc_do(&rq3, &r, &err) == -1 && err.code == LOOM_ETOOBIG);
    struct loom_httpc_req rq4 = {.url = "http://127.0.0.1:1/"};
    assert_true(loom_httpc_do(&rq4, &r, &err) == -1 && err.code == LOOM_EUNAVAIL);

    loom_http_server_stop(srv);
    loom_http_server_stop(NULL);
}

/* ---- streamed replies ---- */

/* A pushed stream: a producer thread queues lines and wakes the stream, as
 * a NATS handler does for a log follower; fill hands out what is queued. */
struct pushed {
    pthread_mutex_t mu;
    struct loom_http_stream *stream; /* NULL once done ran */
    struct strbuf queued;
    int produced, total;
    bool finished;
    int done_calls;
};
static struct pushed pushed = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int pushed_fill(void *arg, struct strbuf *out)
{
    struct pushed *p = arg;
    pthread_mutex_lock(&p->mu);
    strbuf_add(out, p->queued.buf, p->queued.len);
    strbuf_reset(&p->queued);
    bool over = p->finished && p->produced == p->total;
    pthread_mutex_unlock(&p->mu);
    return over ? -1 : 1;
}

static void pushed_done(void *arg)
{
    struct pushed *p = arg;
    pthread_mutex_lock(&p->mu);
    p->stream = NULL;
    p->done_calls++;
    pthread_mutex_unlock(&p->mu);
}

static void *producer(void *arg)
{
    struct pushed *p = arg;
    for (int i = 0; i < p->total; i++) {
        usleep(i % 10 == 0 ? 20000 : 200); /* pauses: the connection waits suspended */
        pthread_mutex_lock(&p->mu);
        strbuf_addf(&p->queued, "line %d\n", i);
        p->produced++;
        p->finished = p->produced == p->total;
        if (p->stream)
            loom_http_stream_wake(p->stream);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

static void h_pushed(struct loom_http_req *req)
{
    pthread_mutex_lock(&pushed.mu);
    pushed.stream =
        loom_http_reply_stream(req, 200, "text/plain", pushed_fill, pushed_done, &pushed);
    pthread_mutex_unlock(&pushed.mu);
}

/* A pulled stream: fill makes the next page each time (the export). */
static int pages;
static int pulled_fill(void *arg, struct strbuf *out)
{
    int *n = arg;
    strbuf_addf(out, "page %d\n", *n);
    return ++*n == pages ? -1 : 1;
}

static int pulled_n;
static void h_pulled(struct loom_http_req *req)
{
    pulled_n = 0;
    loom_http_reply_stream(req, 200, "text/csv", pulled_fill, NULL, &pulled_n);
}

/* A stream that never ends: stopping the server ends it. */
static int forever_fill(void *arg, struct strbuf *out)
{
    (void)arg;
    (void)out;
    return 0;
}

static int forever_done_calls;
static void forever_done(void *arg)
{
    (void)arg;
    forever_done_calls++;
}

static void h_forever(struct loom_http_req *req)
{
    loom_http_reply_stream(req, 200, "text/plain", forever_fill, forever_done, NULL);
}

static const struct loom_http_route stream_routes[] = {
    {"GET", "/pushed", h_pushed},
    {"GET", "/pulled", h_pulled},
    {"GET", "/forever", h_forever},
};

static void *stop_later(void *arg)
{
    usleep(300000);
    loom_http_server_stop(arg);
    return NULL;
}

static void test_http_stream(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_http_server *srv;
    struct loom_http_server_opts o = {.addr = "127.0.0.1:0",
                                      .threads = 2,
                                      .routes = stream_routes,
                                      .nroutes = 3,
                                      .service = "it"};
    assert_int_equal(loom_http_server_start(&o, &srv, &err), 0);
    char url[128];
    struct loom_httpc_resp r;
#define URL3(p)                                                                                    \
    (snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", loom_http_server_port(srv), p), url)

    /* every pushed line arrives, once, in order, across many suspends */
    pushed.total = 300;
    strbuf_init(&pushed.queued);
    pthread_t t;
    pthread_create(&t, NULL, producer, &pushed);
    assert_int_equal(do_req("GET", URL3("/pushed"), NULL, NULL, &r), 200);
    pthread_join(t, NULL);
    struct strbuf want = STRBUF_INIT;
    for (int i = 0; i < pushed.total; i++)
        strbuf_addf(&want, "line %d\n", i);
    assert_string_equal(r.body.buf, want.buf);
    assert_string_equal(r.content_type, "text/plain");
    loom_httpc_resp_release(&r);
    strbuf_release(&want);
    assert_int_equal(pushed.done_calls, 1);
    strbuf_release(&pushed.queued);

    /* pages made on demand */
    pages = 1000;
    assert_int_equal(do_req("GET", URL3("/pulled"), NULL, NULL, &r), 200);
    assert_non_null(strstr(r.body.buf, "page 0\npage 1\n"));
    assert_non_null(strstr(r.body.buf, "page 999\n"));
    assert_null(strstr(r.body.buf, "page 1000"));
    loom_httpc_resp_release(&r);

    /* a stream waiting for data ends when the server stops, and is told */
    pthread_t stopper;
    pthread_create(&stopper, NULL, stop_later, srv);
    struct loom_httpc_req rq = {.url = URL3("/forever"), .timeout_ms = -1, .idle_timeout_ms = 5000};
    int rc = loom_httpc_do(&rq, &r, &err);
    pthread_join(stopper, NULL);
    assert_true(rc == -1 || r.status == 200);
    loom_httpc_resp_release(&r);
    assert_int_equal(forever_done_calls, 1);
#undef URL3
}

/* A catch-all route (as the activator's) claims what it serves itself and
 * hands the rest to loom_http_serve_builtin. */
static void h_catchall(struct loom_http_req *req)
{
    if (strncmp(req->path, "/app/", 5) == 0) {
        loom_http_reply(req, 200, "text/plain", "app", 3);
        return;
    }
    if (loom_http_serve_builtin(req))
        return;
    loom_http_reply_problem(req, 404, "mine");
}

static void test_http_serve_builtin(void **state)
{
    (void)state;
    static const struct loom_http_route all[] = {{"*", "/*", h_catchall}};
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_http_server *srv;
    struct loom_http_server_opts o = {
        .addr = "127.0.0.1:0", .routes = all, .nroutes = 1, .ready = ready_cb, .service = "it"};
    assert_int_equal(loom_http_server_start(&o, &srv, &err), 0);
    char url[128];
    struct loom_httpc_resp r;
#define URL2(p)                                                                                    \
    (snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", loom_http_server_port(srv), p), url)
    assert_int_equal(do_req("GET", URL2("/livez"), NULL, NULL, &r), 200);
    assert_string_equal(r.body.buf, "ok\n");
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("HEAD", URL2("/livez"), NULL, NULL, &r), 200);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL2("/readyz"), NULL, NULL, &r), 200);
    loom_httpc_resp_release(&r);
    is_ready = false;
    assert_int_equal(do_req("GET", URL2("/readyz"), NULL, NULL, &r), 503);
    loom_httpc_resp_release(&r);
    is_ready = true;
    assert_int_equal(do_req("GET", URL2("/metrics"), NULL, NULL, &r), 200);
    assert_non_null(strstr(r.body.buf, "process_start_time_seconds "));
    assert_string_equal(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    loom_httpc_resp_release(&r);
    /* only GET and HEAD of the three paths; the route keeps the rest */
    assert_int_equal(do_req("POST", URL2("/livez"), NULL, "", &r), 404);
    assert_non_null(strstr(r.body.buf, "mine"));
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL2("/livez/x"), NULL, NULL, &r), 404);
    loom_httpc_resp_release(&r);
    assert_int_equal(do_req("GET", URL2("/app/metrics"), NULL, NULL, &r), 200);
    assert_string_equal(r.body.buf, "app");
    loom_httpc_resp_release(&r);
#undef URL2
    loom_http_server_stop(srv);
}

static void test_http_thread_per_connection(void **state)
{
    (void)state;
    run_http(0);
}

static void test_http_thread_pool(void **state)
{
    (void)state;
    run_http(2);
}

int main(void)
{
    loom_httpc_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_thread_per_connection),
        cmocka_unit_test(test_http_thread_pool),
        cmocka_unit_test(test_http_serve_builtin),
        cmocka_unit_test(test_http_stream),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    loom_httpc_global_cleanup();
    return rc;
}
