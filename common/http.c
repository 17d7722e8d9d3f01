#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "config.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "strbuf.h"
#include "util.h"

#define DEFAULT_MAX_BODY (1u << 20)
#define DEFAULT_DRAIN_MS 5000
#define DISCARD_LIMIT (16u << 20)

struct loom_http_server {
    struct MHD_Daemon *daemon;
    struct loom_http_server_opts opts;
    char *service;
    uint16_t port;
    double start_time;
    struct loom_metric *latency;
    atomic_int inflight; /* requests begun and not yet completed */
    /* loom_http_requests_total{code} by status, looked up once each */
    _Atomic(struct loom_metric *) requests_by_code[600];
    atomic_bool stopping;
    /* the streams being answered, so that stop can end them */
    pthread_mutex_t streams_mu;
    struct loom_http_stream *streams;
};

struct loom_http_stream {
    struct loom_http_server *srv;
    struct MHD_Connection *conn;
    loom_http_stream_fill fill;
    loom_http_stream_done done;
    void *arg;
    struct strbuf buf; /* filled, not yet sent from off on */
    size_t off;
    bool ended; /* fill said it is over (or the server stops) */
    /* under mu: the connection is suspended; a wake came since the last fill */
    pthread_mutex_t mu;
    bool suspended, woken;
    struct loom_http_stream *prev, *next; /* srv->streams */
};

/* Per request: the body so far and everything the request struct points into. */
struct conn_state {
    struct loom_http_server *srv;
    struct strbuf body;
    bool too_big;
    size_t discarded;  /* body bytes dropped after too_big */
    int64_t spool_max; /* > 0: the body goes to spool_fd (a route's spool) */
    int spool_fd;
    int spool_errno; /* the temporary file could not be made or written */
    int64_t spooled;
    bool done;
    int64_t start_ms;
    char *path;     /* decoded */
    char *segs_raw; /* the raw path, split in place for matching */
    char **allocs;  /* decoded params and query values */
    size_t nallocs, allocs_cap;
    struct loom_http_req req;
};

static const double latency_buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,   1,    2.5,   5,    10};

/* Decodes %xx (and '+' when plus is set) into a new string; NULL when it would
 * contain a NUL byte or a malformed escape. */
static char *url_decode(const char *s, size_t len, bool plus)
{
    char *out = malloc(len + 1);
    if (!out)
        abort();
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
                !isxdigit((unsigned char)s[i + 2])) {
                free(out);
                return NULL;
            }
            char hex[3] = {s[i + 1], s[i + 2], 0};
            long v = strtol(hex, NULL, 16);
            if (v == 0) {
                free(out);
                return NULL;
            }
            out[w++] = (char)v;
            i += 2;
        } else if (c == '+' && plus) {
            out[w++] = ' ';
        } else {
            out[w++] = c;
        }
    }
    out[w] = '\0';
    return out;
}

static const char *state_keep(struct conn_state *st, char *s)
{
    if (!s)
        return NULL;
    if (st->nallocs == st->allocs_cap) {
        st->allocs_cap = st->allocs_cap ? st->allocs_cap * 2 : 8;
        char **a = realloc(st->allocs, st->allocs_cap * sizeof(char *));
        if (!a)
            abort();
        st->allocs = a;
    }
    st->allocs[st->nallocs++] = s;
    return s;
}

static void state_free(struct conn_state *st)
{
    if (!st)
        return;
    strbuf_release(&st->body);
    if (st->spool_fd >= 0)
        close(st->spool_fd);
    free(st->path);
    free(st->segs_raw);
    for (size_t i = 0; i < st->nallocs; i++)
        free(st->allocs[i]);
    free(st->allocs);
    for (int i = 0; i < st->req.nhdrs; i++) {
        free(st->req.hdr_names[i]);
        free(st->req.hdr_values[i]);
    }
    free(st);
}

static struct conn_state *req_state(struct loom_http_req *req)
{
    return (struct conn_state *)((char *)req - offsetof(struct conn_state, req));
}

const char *loom_http_status_title(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status >= 500 ? "Server Error" : status >= 400 ? "Client Error" : "Unknown";
    }
}

const char *loom_http_header(struct loom_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *loom_http_query(struct loom_http_req *req, const char *name)
{
    /* our unescape callback leaves query values raw: decode them here */
    const char *raw = MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
    if (!raw)
        return NULL;
    return state_keep(req_state(req), url_decode(raw, strlen(raw), true));
}

json_t *loom_http_body_json(struct loom_http_req *req, struct loom_err *err)
{
    if (req->body_len == 0) {
        loom_err_set(err, LOOM_EINVAL, "request body is empty (expected a JSON object)");
        return NULL;
    }
    return loom_json_parse_object(req->body, req->body_len, err);
}

void loom_http_set_header(struct loom_http_req *req, const char *name, const char *value)
{
    if (req->nhdrs >= LOOM_HTTP_MAX_HEADERS)
        return;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v)
        abort();
    req->hdr_names[req->nhdrs] = n;
    req->hdr_values[req->nhdrs] = v;
    req->nhdrs++;
}

void loom_http_reply(struct loom_http_req *req, int status, const char *content_type,
                     const void *body, size_t len)
{
    if (req->replied)
        return;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!r)
        abort();
    if (content_type)
        MHD_add_response_header(r, "Content-Type", content_type);
    MHD_add_response_header(r, "X-Request-Id", req->request_id);
    for (int i = 0; i < req->nhdrs; i++)
        MHD_add_response_header(r, req->hdr_names[i], req->hdr_values[i]);
    /* while draining, a kept-alive connection gets no further request in */
    if (atomic_load(&req_state(req)->srv->stopping))
        MHD_add_response_header(r, "Connection", "close");
    MHD_queue_response(req->conn, (unsigned)status, r);
    MHD_destroy_response(r);
    req->replied = true;
    req->status = status;
}

/* --- streamed replies ------------------------------------------------------------- */

/* MHD asks for more of the body. What fill made goes out first; with
 * nothing to send the connection is suspended until a wake. The suspend
 * happens under the stream's lock, so a wake (which takes it too) never
 * resumes a connection that is not suspended yet. */
static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct loom_http_stream *s = cls;
    for (;;) {
        if (s->off < s->buf.len) {
            size_t n = s->buf.len - s->off;
            if (n > max)
                n = max;
            memcpy(out, s->buf.buf + s->off, n);
            s->off += n;
            if (s->off == s->buf.len) {
                strbuf_reset(&s->buf);
                s->off = 0;
            }
            return (ssize_t)n;
        }
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (atomic_load(&s->srv->stopping)) {
            s->ended = true;
            continue;
        }
        pthread_mutex_lock(&s->mu);
        s->woken = false;
        pthread_mutex_unlock(&s->mu);
        int r = s->fill(s->arg, &s->buf);
        if (r == LOOM_HTTP_STREAM_ABORT)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* cut: the client sees it failed */
        if (r < 0)
            s->ended = true;
        if (s->buf.len > 0 || s->ended)
            continue;
        pthread_mutex_lock(&s->mu);
        if (s->woken || atomic_load(&s->srv->stopping)) {
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        s->suspended = true;
        MHD_suspend_connection(s->conn);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
}

void loom_http_stream_wake(struct loom_http_stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->woken = true;
    bool resume = s->suspended;
    s->suspended = false;
    if (resume)
        MHD_resume_connection(s->conn);
    pthread_mutex_unlock(&s->mu);
}

/* The response is gone (the stream ended, the client left or the server
 * stopped): the owner is told, then the stream is freed. */
static void stream_free(void *cls)
{
    struct loom_http_stream *s = cls;
    struct loom_http_server *srv = s->srv;
    pthread_mutex_lock(&srv->streams_mu);
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    pthread_mutex_unlock(&srv->streams_mu);
    if (s->done)
        s->done(s->arg);
    strbuf_release(&s->buf);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

struct loom_http_stream *loom_http_reply_stream(struct loom_http_req *req, int status,
                                                const char *content_type,
                                                loom_http_stream_fill fill,
                                                loom_http_stream_done done, void *arg)
{
    struct loom_http_server *srv = req_state(req)->srv;
    if (req->replied || srv->opts.threads <= 0) {
        /* a server with a thread per connection cannot suspend one */
        if (!req->replied)
            loom_http_reply_problem(req, 500, "this server cannot stream replies");
        if (done)
            done(arg);
        return NULL;
    }
    struct loom_http_stream *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    s->srv = srv;
    s->conn = req->conn;
    s->fill = fill;
    s->done = done;
    s->arg = arg;
    strbuf_init(&s->buf);
    pthread_mutex_init(&s->mu, NULL);
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_read, s, stream_free);
    if (!r)
        abort();
    if (content_type)
        MHD_add_response_header(r, "Content-Type", content_type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Request-Id", req->request_id);
    for (int i = 0; i < req->nhdrs; i++)
        MHD_add_response_header(r, req->hdr_names[i], req->hdr_values[i]);
    pthread_mutex_lock(&srv->streams_mu);
    s->next = srv->streams;
    if (s->next)
        s->next->prev = s;
    srv->streams = s;
    pthread_mutex_unlock(&srv->streams_mu);
    MHD_queue_response(req->conn, (unsigned)status, r);
    MHD_destroy_response(r); /* MHD keeps it until the connection is done: then stream_free */
    req->replied = true;
    req->status = status;
    return s;
}

void loom_http_reply_json(struct loom_http_req *req, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    if (!s) {
        loom_http_reply_problem(req, 500, "could not encode the response");
        return;
    }
    loom_http_reply(req, status, "application/json", s, strlen(s));
    free(s);
}

static void reply_problem_str(struct loom_http_req *req, int status, const char *detail)
{
    json_t *p = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "type", "about:blank", "title",
                          loom_http_status_title(status), "status", status, "detail", detail,
                          "instance", req->path ? req->path : "", "request_id", req->request_id);
    if (!p) /* detail or path was not valid UTF-8 */
        p = json_pack("{s:s, s:s, s:i, s:s}", "type", "about:blank", "title",
                      loom_http_status_title(status), "status", status, "request_id",
                      req->request_id);
    char *s = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    loom_http_reply(req, status, "application/problem+json", s ? s : "{}", s ? strlen(s) : 2);
    free(s);
}

void loom_http_reply_problem(struct loom_http_req *req, int status, const char *detail_fmt, ...)
{
    char detail[1024] = "";
    if (detail_fmt) {
        va_list ap;
        va_start(ap, detail_fmt);
        vsnprintf(detail, sizeof(detail), detail_fmt, ap);
        va_end(ap);
    }
    reply_problem_str(req, status, detail);
}

void loom_http_reply_err(struct loom_http_req *req, const struct loom_err *err)
{
    int status = loom_errc_http_status(err->code);
    if (err->code == LOOM_ERETRY || err->code == LOOM_EUNAVAIL)
        loom_http_set_header(req, "Retry-After", "1");
    reply_problem_str(req, status, err->msg[0] ? err->msg : loom_errc_name(err->code));
}

/* --- built-in endpoints ---------------------------------------------------------- */

static void handle_livez(struct loom_http_req *req)
{
    loom_http_reply(req, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void handle_readyz(struct loom_http_req *req)
{
    struct loom_http_server *srv = req_state(req)->srv;
    if (srv->opts.ready && !srv->opts.ready(srv->opts.arg)) {
        loom_http_reply_problem(req, 503, "not ready");
        return;
    }
    loom_http_reply(req, 200, "text/plain; charset=utf-8", "ready\n", 6);
}

static void handle_metrics(struct loom_http_req *req)
{
    struct loom_http_server *srv = req_state(req)->srv;
    struct strbuf sb = STRBUF_INIT;
    loom_metrics_render(&sb);
    strbuf_addstr(&sb, "# HELP process_start_time_seconds Start time of the process since unix "
                       "epoch in seconds.\n# TYPE process_start_time_seconds gauge\n");
    strbuf_addf(&sb, "process_start_time_seconds %.3f\n", srv->start_time);
    loom_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", sb.buf, sb.len);
    strbuf_release(&sb);
}

static const struct loom_http_route builtin_routes[] = {
    {"GET", "/livez", handle_livez},
    {"GET", "/readyz", handle_readyz},
    {"GET", "/metrics", handle_metrics},
};

/* --- routing ---------------------------------------------------------------------- */

static bool method_matches(const char *route_method, const char *method)
{
    return strcmp(route_method, "*") == 0 || strcmp(route_method, method) == 0 ||
           (strcmp(method, "HEAD") == 0 && strcmp(route_method, "GET") == 0);
}

bool loom_http_serve_builtin(struct loom_http_req *req)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(builtin_routes); i++) {
        if (strcmp(req->path, builtin_routes[i].pattern) != 0 ||
            !method_matches(builtin_routes[i].method, req->method))
            continue;
        builtin_routes[i].handler(req);
        return true;
    }
    return false;
}

/* Matches the raw path against pattern; fills params (decoded) and rest (raw).
 * Returns 1 on match, 0 on no match, -1 when a segment does not decode. */
static int match_pattern(struct conn_state *st, const char *pattern, const char *path)
{
    if (pattern[0] != '/' || path[0] != '/')
        return 0;
    const char *p = pattern + 1, *u = path + 1;
    char *params[LOOM_HTTP_MAX_PARAMS];
    int nparams = 0;
    int result = 0;
    const char *rest = NULL;
    for (;;) {
        size_t plen = strcspn(p, "/");
        if (plen == 1 && p[0] == '*' && p[1] == '\0') {
            rest = u;
            result = 1;
            break;
        }
        size_t ulen = strcspn(u, "/");
        bool capture = plen == 2 && p[0] == '{' && p[1] == '}';
        /* most segments have nothing to decode: compare them as they are */
        if (!capture && !memchr(u, '%', ulen)) {
            if (ulen != plen || memcmp(u, p, plen) != 0)
                break;
            goto next;
        }
        char *dec = url_decode(u, ulen, false);
        if (!dec) {
            result = -1;
            break;
        }
        if (capture) {
            if (ulen == 0 || nparams == LOOM_HTTP_MAX_PARAMS) {
                free(dec);
                break;
            }
            params[nparams++] = dec;
        } else {
            bool same = strlen(dec) == plen && memcmp(dec, p, plen) == 0;
            free(dec);
            if (!same)
                break;
        }
    next:
        p += plen;
        u += ulen;
        if (*p == '\0' && *u == '\0') {
            result = 1;
            break;
        }
        /* "/apps/x" matches "/apps/{}" + "/" + "*" with rest "" */
        if (*p == '/' && p[1] == '*' && p[2] == '\0' && *u == '\0') {
            rest = u;
            result = 1;
            break;
        }
        if (*p != '/' || *u != '/')
            break;
        p++;
        u++;
    }
    if (result == 1) {
        for (int i = 0; i < nparams; i++)
            st->req.params[i] = state_keep(st, params[i]);
        st->req.nparams = nparams;
        st->req.rest = rest;
    } else {
        for (int i = 0; i < nparams; i++)
            free(params[i]);
    }
    return result;
}

static void dispatch(struct conn_state *st, const char *raw_path)
{
    struct loom_http_server *srv = st->srv;
    struct loom_http_req *req = &st->req;
    struct strbuf allow = STRBUF_INIT;
    for (int pass = 0; pass < 2; pass++) {
        const struct loom_http_route *routes = pass == 0 ? srv->opts.routes : builtin_routes;
        size_t n = pass == 0 ? srv->opts.nroutes : LOOM_ARRAY_SIZE(builtin_routes);
        for (size_t i = 0; i < n; i++) {
            int m = match_pattern(st, routes[i].pattern, raw_path);
            if (m < 0) {
                strbuf_release(&allow);
                loom_http_reply_problem(req, 400, "malformed percent-encoding in the path");
                return;
            }
            if (m == 0)
                continue;
            if (method_matches(routes[i].method, req->method)) {
                strbuf_release(&allow);
                routes[i].handler(req);
                if (!req->replied)
                    loom_http_reply_problem(req, 500, "the handler did not reply");
                return;
            }
            /* keep the params of a later full match only */
            for (int k = 0; k < req->nparams; k++)
                req->params[k] = NULL;
            req->nparams = 0;
            req->rest = NULL;
            if (!strstr(allow.buf, routes[i].method)) {
                if (allow.len)
                    strbuf_addstr(&allow, ", ");
                strbuf_addstr(&allow, routes[i].method);
            }
        }
    }
    if (allow.len) {
        loom_http_set_header(req, "Allow", allow.buf);
        strbuf_release(&allow);
        loom_http_reply_problem(req, 405, "method %s is not allowed here", req->method);
        return;
    }
    loom_http_reply_problem(req, 404, "no such resource");
}

static bool request_id_sane(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64 || n >= sizeof(((struct loom_http_req *)0)->request_id))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void finish(struct conn_state *st)
{
    struct loom_http_server *srv = st->srv;
    struct loom_http_req *req = &st->req;
    int code = req->status >= 100 && req->status < 600 ? req->status : 0;
    struct loom_metric *counter = code ? atomic_load(&srv->requests_by_code[code]) : NULL;
    if (!counter) {
        char labels[32];
        snprintf(labels, sizeof(labels), "code=\"%d\"", req->status);
        counter = loom_metric_counter("loom_http_requests_total", labels, "HTTP requests served");
        if (code)
            atomic_store(&srv->requests_by_code[code], counter);
    }
    loom_metric_add(counter, 1);
    double secs = (double)(loom_mono_ms() - st->start_ms) / 1000.0;
    loom_metric_observe(srv->latency, secs);
    if (srv->opts.log_requests)
        log_info("%s %s %d %.1fms", req->method, req->path ? req->path : "", req->status,
                 secs * 1000.0);
    loom_log_set_request_id(NULL);
}

static void init_request(struct conn_state *st, struct MHD_Connection *conn, const char *url,
                         const char *method)
{
    struct loom_http_req *req = &st->req;
    req->conn = conn;
    req->method = method;
    req->server_arg = st->srv->opts.arg;
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (request_id_sane(rid))
        snprintf(req->request_id, sizeof(req->request_id), "%s", rid);
    else
        loom_uuid4(req->request_id);
    st->path = url_decode(url, strlen(url), false);
    req->path = st->path ? st->path : url;
    req->body = "";
    req->body_fd = -1;
}

/* The spool limit of the route a request goes to, 0 for none. */
static int64_t spool_of(struct conn_state *st, const char *raw_path)
{
    const struct loom_http_server_opts *o = &st->srv->opts;
    int64_t limit = 0;
    for (size_t k = 0; k < o->nspools && !limit; k++)
        for (size_t i = 0; i < o->nroutes && !limit; i++)
            if (o->routes[i].handler == o->spools[k].handler &&
                method_matches(o->routes[i].method, st->req.method) &&
                match_pattern(st, o->routes[i].pattern, raw_path) == 1)
                limit = *o->spools[k].limit;
    /* dispatch matches again: its captures are its own */
    st->req.nparams = 0;
    st->req.rest = NULL;
    return limit;
}

/* Opens the spool file: unlinked from the start, gone with the request. */
static void spool_open(struct conn_state *st)
{
    const char *dir = getenv("TMPDIR");
    st->spool_fd = open(dir && *dir ? dir : "/var/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (st->spool_fd < 0)
        st->spool_errno = errno;
}

static void spool_write(struct conn_state *st, const char *data, size_t len)
{
    st->spooled += (int64_t)len;
    while (len > 0 && !st->spool_errno) {
        ssize_t n = write(st->spool_fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            st->spool_errno = errno;
        else
            data += n, len -= (size_t)n;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct loom_http_server *srv = cls;
    size_t max_body = srv->opts.max_body ? srv->opts.max_body : DEFAULT_MAX_BODY;
    struct conn_state *st = *con_cls;
    if (!st) {
        st = calloc(1, sizeof(*st));
        if (!st)
            return MHD_NO;
        st->srv = srv;
        atomic_fetch_add(&srv->inflight, 1); /* until on_completed */
        st->start_ms = loom_mono_ms();
        strbuf_init(&st->body);
        st->spool_fd = -1;
        *con_cls = st;
        init_request(st, conn, url, method);
        st->spool_max = spool_of(st, url);
        if (st->spool_max > 0)
            max_body = (size_t)st->spool_max;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        int64_t clen;
        if (cl && loom_parse_int(cl, 0, 0, &clen) == 0 && clen > (int64_t)max_body) {
            st->too_big = true;
            st->done = true;
            loom_log_set_request_id(st->req.request_id);
            loom_http_reply_problem(&st->req, 413, "request body larger than %zu bytes", max_body);
            finish(st);
        } else if (st->spool_max > 0) {
            spool_open(st);
        }
        return MHD_YES;
    }
    if (st->spool_max > 0)
        max_body = (size_t)st->spool_max;
    if (*upload_data_size && st->spool_max > 0 && !st->too_big) {
        if (st->spooled + (int64_t)*upload_data_size > st->spool_max) {
            st->too_big = true;
            st->discarded = (size_t)st->spooled;
        } else {
            spool_write(st, upload_data, *upload_data_size);
            *upload_data_size = 0;
            return MHD_YES;
        }
    }
    if (*upload_data_size) {
        if (st->too_big) {
            /* MHD 0.9.75 cannot send a response queued in the middle of an
             * upload, so the rest of the body is read and dropped and the 413
             * goes out at its end; a body that goes on and on is cut off. */
            st->discarded += *upload_data_size;
            *upload_data_size = 0;
            return st->discarded > max_body + DISCARD_LIMIT ? MHD_NO : MHD_YES;
        }
        if (st->body.len + *upload_data_size > max_body) {
            st->too_big = true;
            st->discarded = st->body.len + *upload_data_size;
            strbuf_release(&st->body);
        } else {
            strbuf_add(&st->body, upload_data, *upload_data_size);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (st->done)
        return MHD_YES;
    if (st->too_big) {
        st->done = true;
        loom_log_set_request_id(st->req.request_id);
        loom_http_reply_problem(&st->req, 413, "request body larger than %zu bytes", max_body);
        finish(st);
        return MHD_YES;
    }
    st->done = true;
    loom_log_set_request_id(st->req.request_id);
    if (st->spool_max > 0 && (st->spool_errno || lseek(st->spool_fd, 0, SEEK_SET) < 0)) {
        int e = st->spool_errno ? st->spool_errno : errno;
        log_error("could not keep a request body in a temporary file: %s", strerror(e));
        loom_http_reply_problem(&st->req, 503, "the server could not keep the body: %s",
                                strerror(e));
        finish(st);
        return MHD_YES;
    }
    if (st->spool_max > 0) {
        st->req.body_fd = st->spool_fd;
        st->req.body_len = (size_t)st->spooled;
    } else {
        st->req.body = st->body.buf;
        st->req.body_len = st->body.len;
    }
    dispatch(st, url);
    finish(st);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct conn_state *st = *con_cls;
    if (st)
        atomic_fetch_sub(&st->srv->inflight, 1);
    state_free(st);
    *con_cls = NULL;
}

/* Leaves the path and query raw: we decode each path segment ourselves so
 * that "%2F" inside a segment does not split it. */
static size_t no_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

int loom_http_server_start(const struct loom_http_server_opts *opts, struct loom_http_server **ret,
                           struct loom_err *err)
{
    _cleanup_free_ char *host = NULL;
    uint16_t port;
    if (loom_parse_hostport(opts->addr ? opts->addr : "", &host, &port) < 0)
        return loom_err_set(err, LOOM_EINVAL, "invalid listen address \"%s\"",
                            opts->addr ? opts->addr : "");
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    unsigned flags = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    int gai = getaddrinfo(host, portstr, &hints, &ai);
    if (gai != 0 || !ai)
        return loom_err_set(err, LOOM_EINVAL, "could not resolve listen address \"%s\": %s",
                            opts->addr, gai_strerror(gai));
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    freeaddrinfo(ai);

    struct loom_http_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        abort();
    srv->opts = *opts;
    srv->service = strdup(opts->service ? opts->service : "");
    if (!srv->service)
        abort();
    srv->opts.service = srv->service;
    pthread_mutex_init(&srv->streams_mu, NULL);
    srv->start_time = (double)loom_now_ms() / 1000.0;
    srv->latency =
        loom_metric_histogram("loom_http_request_duration_seconds", NULL, "HTTP request latency",
                              latency_buckets, LOOM_ARRAY_SIZE(latency_buckets));
    /* MHD_USE_ITC: loom_http_server_stop quiesces the daemon first */
    if (opts->threads > 0)
        flags |= MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
                 MHD_ALLOW_SUSPEND_RESUME;
    else
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                 MHD_USE_ITC;

    srv->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_UNESCAPE_CALLBACK, no_unescape,
        NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)(opts->threads > 0 ? opts->threads : 0), MHD_OPTION_END);
    if (!srv->daemon) {
        free(srv->service);
        free(srv);
        return loom_err_set(err, LOOM_EUNAVAIL, "could not listen on \"%s\"", opts->addr);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : port;
    *ret = srv;
    return 0;
}

void loom_http_server_stop(struct loom_http_server *srv)
{
    if (!srv)
        return;
    /* Stop accepting, then let the requests in flight finish (a held one
     * sees loom_http_stopping and answers) before MHD_stop_daemon closes
     * every connection, which would cut them off without an answer. */
    atomic_store(&srv->stopping, true);
    MHD_socket listen_fd = MHD_quiesce_daemon(srv->daemon);
    /* streams end at their next read: wake the suspended ones (MHD must
     * not be stopped with a connection suspended) */
    pthread_mutex_lock(&srv->streams_mu);
    for (struct loom_http_stream *st = srv->streams; st; st = st->next)
        loom_http_stream_wake(st);
    pthread_mutex_unlock(&srv->streams_mu);
    int64_t deadline =
        loom_mono_ms() + (srv->opts.drain_ms > 0 ? srv->opts.drain_ms : DEFAULT_DRAIN_MS);
    while (atomic_load(&srv->inflight) > 0 && loom_mono_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(srv->daemon);
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    pthread_mutex_destroy(&srv->streams_mu);
    free(srv->service);
    free(srv);
}

bool loom_http_stopping(struct loom_http_req *req)
{
    return atomic_load(&req_state(req)->srv->stopping);
}

uint16_t loom_http_server_port(const struct loom_http_server *srv)
{
    return srv->port;
}
