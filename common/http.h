/* HTTP server helpers over libmicrohttpd: routing with path parameters, JSON
 * bodies, RFC 9457 problem+json errors, request ids, and the endpoints every
 * service serves (/livez, /readyz, /metrics).
 *
 * A handler gets a struct loom_http_req and must answer it exactly once with
 * one of the loom_http_reply_* functions. Handlers run on the server's
 * threads, so per-thread resources (a database connection) belong in
 * thread-local storage. */
#ifndef LOOM_HTTP_H
#define LOOM_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define LOOM_HTTP_MAX_PARAMS 6
#define LOOM_HTTP_MAX_HEADERS 12

struct loom_http_server;

struct loom_http_req {
    void *conn; /* struct MHD_Connection * */
    const char *method;
    const char *path; /* without the query string */
    const char *body; /* NUL-terminated copy of the body, "" when none */
    size_t body_len;
    int body_fd;         /* a spooled body (struct loom_http_spool): an unlinked
                            temporary file of body_len bytes, at its start; -1 otherwise */
    char request_id[40]; /* from X-Request-Id when sane, else generated */
    const char *params[LOOM_HTTP_MAX_PARAMS]; /* captured {} segments, decoded */
    int nparams;
    const char *rest; /* what a trailing "*" matched (without leading '/'), or NULL;
                         as sent, not URL-decoded (proxies forward it as is) */
    void *server_arg; /* the arg given to loom_http_server_start */
    void *user;       /* free for the handler */
    /* extra response headers set with loom_http_set_header */
    char *hdr_names[LOOM_HTTP_MAX_HEADERS];
    char *hdr_values[LOOM_HTTP_MAX_HEADERS];
    int nhdrs;
    bool replied;
    int status; /* the status that was sent, for logs and metrics */
};

typedef void (*loom_http_handler)(struct loom_http_req *req);

/* method "GET", "POST"..., or "*" for any. pattern segments: literal, "{}"
 * (one segment, captured into params) or a final "*" (the rest, into rest).
 * First match wins. A path that matches a pattern with another method gets
 * 405 with Allow; no match gets 404. */
struct loom_http_route {
    const char *method;
    const char *pattern;
    loom_http_handler handler;
};

/* The handlers whose request bodies go to a temporary file (in $TMPDIR,
 * else /var/tmp) instead of memory, up to *limit bytes (read when a request
 * comes, so that it may be an option); larger gets 413. */
struct loom_http_spool {
    loom_http_handler handler;
    const int64_t *limit;
};

struct loom_http_server_opts {
    const char *addr; /* "host:port"; port 0 picks a free one */
    size_t max_body;  /* larger bodies get 413 (0: 1 MiB) */
    int threads;      /* worker threads (0: thread per connection) */
    const struct loom_http_route *routes;
    size_t nroutes;
    const struct loom_http_spool *spools; /* or NULL */
    size_t nspools;
    void *arg;                /* req->server_arg */
    bool (*ready)(void *arg); /* for /readyz; NULL = always ready */
    const char *service;      /* for logs */
    bool log_requests;        /* one log line per request */
    int drain_ms;             /* how long stop waits for requests in flight (0: 5000) */
};

/* Starts serving. /livez, /readyz and /metrics are added after the routes. */
int loom_http_server_start(const struct loom_http_server_opts *opts, struct loom_http_server **ret,
                           struct loom_err *err);
/* Stops accepting connections, waits up to opts.drain_ms for the requests in
 * flight to be answered (answers sent meanwhile close their connection),
 * then closes every connection and frees. Accepts NULL. */
void loom_http_server_stop(struct loom_http_server *srv);
/* True once the server is stopping: a handler that holds a request (waits
 * for something) should answer it now, e.g. with a 503 and Retry-After. */
bool loom_http_stopping(struct loom_http_req *req);
/* Answers a GET or HEAD of /livez, /readyz or /metrics as the server's
 * built-in endpoints do and returns true; false (nothing sent) for any
 * other request. For a catch-all route that hides them, for the requests it
 * does not claim itself (the activator: those for no app). */
bool loom_http_serve_builtin(struct loom_http_req *req);
uint16_t loom_http_server_port(const struct loom_http_server *srv);

/* Request accessors. */
const char *loom_http_header(struct loom_http_req *req, const char *name);
const char *loom_http_query(struct loom_http_req *req, const char *name);
/* Parses the body as a JSON object; 400-class error in err when it is not. */
json_t *loom_http_body_json(struct loom_http_req *req, struct loom_err *err);

/* Adds a response header for the coming reply (copied). */
void loom_http_set_header(struct loom_http_req *req, const char *name, const char *value);

/* Replies. body is stolen (decref'd) by reply_json. */
void loom_http_reply(struct loom_http_req *req, int status, const char *content_type,
                     const void *body, size_t len);
void loom_http_reply_json(struct loom_http_req *req, int status, json_t *body);
/* A streamed reply (chunked; server-sent events or CSV), for servers with a
 * thread pool (opts.threads > 0). fill runs on the server's thread when the
 * client can take more: it appends what is ready to out and returns > 0 (or
 * 0 with out still empty: nothing yet, the connection waits, costing no
 * thread, until loom_http_stream_wake), or -1 once the stream is over (what
 * out holds still goes out), or LOOM_HTTP_STREAM_ABORT when it failed
 * midway (the connection is cut without the last chunk, so that the client
 * sees an error rather than a short body). done runs once, when the connection is
 * finished (the stream ended, the client left, the server stops); after it
 * returns the stream is freed. Returns the stream, or NULL (done has run,
 * a problem was sent). */
struct loom_http_stream;
struct strbuf;
#define LOOM_HTTP_STREAM_ABORT (-2)
typedef int (*loom_http_stream_fill)(void *arg, struct strbuf *out);
typedef void (*loom_http_stream_done)(void *arg);
struct loom_http_stream *loom_http_reply_stream(struct loom_http_req *req, int status,
                                                const char *content_type,
                                                loom_http_stream_fill fill,
                                                loom_http_stream_done done, void *arg);
/* From any thread, until done has returned: fill has something new. The
 * caller makes sure the two do not cross (a lock that done takes too). */
void loom_http_stream_wake(struct loom_http_stream *s);

/* application/problem+json: {"type","title","status","detail","instance","request_id"}. */
void loom_http_reply_problem(struct loom_http_req *req, int status, const char *detail_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Problem from an error: the status from err->code, detail from err->msg. */
void loom_http_reply_err(struct loom_http_req *req, const struct loom_err *err);

/* The standard title for a status ("Not Found"). */
const char *loom_http_status_title(int status);

#endif
