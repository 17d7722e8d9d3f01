/* HTTP client over libcurl. */
#ifndef LOOM_HTTPC_H
#define LOOM_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"
#include "strbuf.h"

struct loom_httpc_resp {
    long status;
    struct strbuf body; /* unless written to a sink */
    char *content_type; /* response headers of interest, or NULL */
    char *location;
    char *www_authenticate;
    char *docker_content_digest;
    char *retry_after;
    char *etag;
};

void loom_httpc_resp_release(struct loom_httpc_resp *resp);

/* Called with each chunk of the response body; return non-zero to abort. */
typedef int (*loom_httpc_sink)(const void *data, size_t len, void *arg);

struct loom_httpc_req {
    const char *method; /* "GET" when NULL */
    const char *url;
    const char *const *headers; /* "Name: value" strings, NULL-terminated, or NULL */
    const void *body;
    size_t body_len;
    FILE *body_file;         /* or the body is body_len bytes read from here */
    int64_t timeout_ms;      /* whole transfer; 0 = 30 s; < 0: none (a stream) */
    int64_t idle_timeout_ms; /* timeout_ms < 0: give up after this long without a byte (60 s) */
    loom_httpc_sink sink;    /* body to sink instead of resp->body */
    void *sink_arg;
    size_t max_body;      /* refuse larger bodies into resp->body (0 = 64 MiB) */
    int follow_redirects; /* for blob downloads that redirect to storage */
};

/* Performs the request. A transport failure (refused, timeout, DNS) is an
 * error (LOOM_EUNAVAIL or LOOM_ETIMEOUT); any HTTP status is a success and
 * is in resp->status. */
int loom_httpc_do(const struct loom_httpc_req *req, struct loom_httpc_resp *resp,
                  struct loom_err *err);

/* s percent-encoded for a URL's query or path (every byte but
 * A-Z a-z 0-9 - . _ ~), allocated. */
char *loom_httpc_escape(const char *s);

/* Must run once in main before threads start (curl_global_init). */
void loom_httpc_global_init(void);
void loom_httpc_global_cleanup(void);

#endif
