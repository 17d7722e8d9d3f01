#include "httpc.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One curl handle per thread, reused so that connections are kept alive
 * (the activator proxies every request through here). */
static __thread CURL *tls_curl;
static pthread_key_t curl_key;
static pthread_once_t curl_key_once = PTHREAD_ONCE_INIT;

static void curl_key_destroy(void *p)
{
    curl_easy_cleanup(p);
}

static void curl_key_create(void)
{
    pthread_key_create(&curl_key, curl_key_destroy);
}

static CURL *thread_curl(void)
{
    if (tls_curl) {
        curl_easy_reset(tls_curl);
        return tls_curl;
    }
    pthread_once(&curl_key_once, curl_key_create);
    tls_curl = curl_easy_init();
    if (!tls_curl)
        abort();
    pthread_setspecific(curl_key, tls_curl);
    return tls_curl;
}

void loom_httpc_global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void loom_httpc_global_cleanup(void)
{
    if (tls_curl) {
        pthread_setspecific(curl_key, NULL);
        curl_easy_cleanup(tls_curl);
        tls_curl = NULL;
    }
    curl_global_cleanup();
}

void loom_httpc_resp_release(struct loom_httpc_resp *resp)
{
    if (!resp)
        return;
    if (resp->body.buf)
        strbuf_release(&resp->body);
    else
        strbuf_init(&resp->body);
    free(resp->content_type);
    free(resp->location);
    free(resp->www_authenticate);
    free(resp->docker_content_digest);
    free(resp->retry_after);
    free(resp->etag);
    resp->content_type = resp->location = resp->www_authenticate = NULL;
    resp->docker_content_digest = resp->retry_after = resp->etag = NULL;
    resp->status = 0;
}

struct transfer {
    const struct loom_httpc_req *req;
    struct loom_httpc_resp *resp;
    size_t max_body;
    bool too_big;
    bool sink_aborted;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * nmemb;
    if (t->req->sink) {
        if (t->req->sink(data, n, t->req->sink_arg) != 0) {
            t->sink_aborted = true;
            return 0;
        }
        return n;
    }
    if (t->resp->body.len + n > t->max_body) {
        t->too_big = true;
        return 0;
    }
    strbuf_add(&t->resp->body, data, n);
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * nmemb;
    struct loom_httpc_resp *r = t->resp;
    /* a new status line (after a redirect or 100 Continue) starts a new set */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        long st = r->status;
        struct strbuf body = r->body;
        strbuf_init(&r->body);
        loom_httpc_resp_release(r);
        r->body = body;
        r->status = st;
        return n;
    }
    static const struct {
        const char *name;
        size_t off;
    } wanted[] = {
        {"content-type", offsetof(struct loom_httpc_resp, content_type)},
        {"location", offsetof(struct loom_httpc_resp, location)},
        {"www-authenticate", offsetof(struct loom_httpc_resp, www_authenticate)},
        {"docker-content-digest", offsetof(struct loom_httpc_resp, docker_content_digest)},
        {"retry-after", offsetof(struct loom_httpc_resp, retry_after)},
        {"etag", offsetof(struct loom_httpc_resp, etag)},
    };
    const char *colon = memchr(data, ':', n);
    if (!colon)
        return n;
    size_t namelen = (size_t)(colon - data);
    for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
        if (strlen(wanted[i].name) != namelen || strncasecmp(wanted[i].name, data, namelen) != 0)
            continue;
        const char *v = colon + 1, *end = data + n;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
            end--;
        char **slot = (char **)((char *)r + wanted[i].off);
        free(*slot);
        *slot = strndup(v, (size_t)(end - v));
        if (!*slot)
            abort();
        break;
    }
    return n;
}

int loom_httpc_do(const struct loom_httpc_req *req, struct loom_httpc_resp *resp,
                  struct loom_err *err)
{
    memset(resp, 0, sizeof(*resp));
    strbuf_init(&resp->body);
    const char *method = req->method ? req->method : "GET";
    CURL *c = thread_curl();
    struct transfer t = {req, resp, req->max_body ? req->max_body : 64u << 20, false, false};
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;

    curl_easy_setopt(c, CURLOPT_URL, req->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    if (req->timeout_ms < 0) {
        /* a stream: no end in sight, but silence is a dead peer */
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 0L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
                         (long)(req->idle_timeout_ms > 999 ? req->idle_timeout_ms / 1000 : 60));
    } else {
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
                         (long)(req->timeout_ms > 0 ? req->timeout_ms : 30000));
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    if (req->follow_redirects) {
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    }
    for (const char *const *h = req->headers; h && *h; h++)
        hdrs = curl_slist_append(hdrs, *h);
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (req->body_file) {
        /* streamed from the file (curl reads it with fread): its upload mode, under our method */
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READDATA, req->body_file);
        curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        hdrs = curl_slist_append(hdrs, "Expect:");
    } else if (strcmp(method, "GET") != 0 || req->body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body ? req->body : "");
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        /* no 100-continue round trip */
        hdrs = curl_slist_append(hdrs, "Expect:");
    }
    if (hdrs)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);

    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(hdrs);
    /* the handle keeps pointers to our locals: drop them before returning */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    if (rc != CURLE_OK) {
        const char *why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
        enum loom_errc code;
        if (t.too_big)
            code = LOOM_ETOOBIG, why = "response body too large";
        else if (t.sink_aborted)
            code = LOOM_EIO, why = "transfer aborted by the receiver";
        else if (rc == CURLE_OPERATION_TIMEDOUT)
            code = LOOM_ETIMEOUT;
        else if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL)
            code = LOOM_EINVAL;
        else
            code = LOOM_EUNAVAIL;
        loom_err_set(err, code, "%s %s: %s", method, req->url, why);
        loom_httpc_resp_release(resp);
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    return 0;
}

char *loom_httpc_escape(const char *s)
{
    char *e = curl_easy_escape(thread_curl(), s, 0);
    if (!e)
        abort();
    char *out = strdup(e);
    curl_free(e);
    if (!out)
        abort();
    return out;
}
