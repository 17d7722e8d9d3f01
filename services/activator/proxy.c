/* The upstream side of the activator: libcurl easy handles, one per thread,
 * sharing one connection cache so that upstream connections stay alive
 * across client connections (the HTTP server runs a thread per client
 * connection, and those threads come and go). */
#include "activator.h"

#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>

#include "http.h"

#define MAX_RESPONSE_BODY (64u << 20)

static CURLSH *share;
static pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
static pthread_key_t easy_key;
static bool inited;

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *arg)
{
    (void)h, (void)access, (void)arg;
    pthread_mutex_lock(&share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *arg)
{
    (void)h, (void)arg;
    pthread_mutex_unlock(&share_locks[data]);
}

static void easy_free(void *p)
{
    curl_easy_cleanup(p);
}

int act_proxy_global_init(struct loom_err *err)
{
    if (inited)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return loom_err_set(err, LOOM_EINTERNAL, "could not initialize libcurl");
    for (size_t i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&share_locks[i], NULL);
    share = curl_share_init();
    if (!share)
        return loom_err_set(err, LOOM_EINTERNAL, "could not create a curl share handle");
    curl_share_setopt(share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    if (pthread_key_create(&easy_key, easy_free) != 0)
        return loom_err_set(err, LOOM_EINTERNAL, "could not create a thread key");
    inited = true;
    return 0;
}

void act_proxy_global_cleanup(void)
{
    if (!inited)
        return;
    CURL *h = pthread_getspecific(easy_key);
    if (h) {
        curl_easy_cleanup(h);
        pthread_setspecific(easy_key, NULL);
    }
    curl_share_cleanup(share);
    share = NULL;
    curl_global_cleanup();
    inited = false;
}

static CURL *thread_easy(void)
{
    CURL *h = pthread_getspecific(easy_key);
    if (h) {
        curl_easy_reset(h);
    } else {
        h = curl_easy_init();
        if (!h)
            return NULL;
        pthread_setspecific(easy_key, h);
    }
    curl_easy_setopt(h, CURLOPT_SHARE, share);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
    return h;
}

void act_upstream_resp_release(struct act_upstream_resp *resp)
{
    if (!resp)
        return;
    strbuf_release(&resp->body);
    strbuf_release(&resp->headers);
    free(resp->content_type);
    resp->content_type = NULL;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct act_upstream_resp *resp = arg;
    size_t len = size * n;
    if (resp->body.len + len > MAX_RESPONSE_BODY)
        return 0; /* aborts the transfer */
    strbuf_add(&resp->body, data, len);
    return len;
}

/* The connection's own hop-by-hop list: "Connection: close, X-Foo". */
static bool named_in(const char *list, const char *name, size_t nlen)
{
    if (!list)
        return false;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        if ((size_t)(e - p) == nlen && strncasecmp(p, name, nlen) == 0)
            return true;
        p = e;
    }
    return false;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct act_upstream_resp *resp = arg;
    size_t len = size * n;
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* a new status line (after 100 Continue): start over */
        strbuf_reset(&resp->headers);
        free(resp->content_type);
        resp->content_type = NULL;
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon)
        return len;
    size_t nlen = (size_t)(colon - data);
    char name[128];
    if (nlen == 0 || nlen >= sizeof(name))
        return len;
    memcpy(name, data, nlen);
    name[nlen] = '\0';
    const char *v = colon + 1;
    const char *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    if (strcasecmp(name, "content-type") == 0) {
        free(resp->content_type);
        resp->content_type = strndup(v, (size_t)(end - v));
        return len;
    }
    /* the server sets its own Date and X-Request-Id (the client's request id) */
    if (act_is_hop_header(name) || strcasecmp(name, "date") == 0 ||
        strcasecmp(name, "x-request-id") == 0)
        return len;
    strbuf_add(&resp->headers, name, nlen);
    strbuf_addstr(&resp->headers, ": ");
    strbuf_add(&resp->headers, v, (size_t)(end - v));
    strbuf_addstr(&resp->headers, "\r\n");
    return len;
}

struct hdr_ctx {
    struct curl_slist *list;
    const char *connection; /* the client's Connection header */
    bool failed;
};

static enum MHD_Result add_client_header(void *arg, enum MHD_ValueKind kind, const char *key,
                                         const char *value)
{
    (void)kind;
    struct hdr_ctx *ctx = arg;
    if (!key || act_is_hop_header(key) || named_in(ctx->connection, key, strlen(key)))
        return MHD_YES;
    /* set by the activator itself */
    if (strcasecmp(key, "x-forwarded-for") == 0 || strcasecmp(key, "x-forwarded-host") == 0 ||
        strcasecmp(key, "x-forwarded-proto") == 0 || strcasecmp(key, "x-request-id") == 0)
        return MHD_YES;
    struct strbuf line = STRBUF_INIT;
    strbuf_addstr(&line, key);
    strbuf_addstr(&line, value && *value ? ": " : ";"); /* "Name;" sends an empty value */
    if (value && *value)
        strbuf_addstr(&line, value);
    struct curl_slist *l = curl_slist_append(ctx->list, line.buf);
    strbuf_release(&line);
    if (!l) {
        ctx->failed = true;
        return MHD_NO;
    }
    ctx->list = l;
    return MHD_YES;
}

/* Runs the transfer set up on h with headers; the response into resp. */
static enum act_proxy_result perform(CURL *h, const char *address, struct curl_slist *headers,
                                     int64_t timeout_ms, struct act_upstream_resp *resp,
                                     struct loom_err *err)
{
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, resp);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    /* on a timeout curl closes the connection: the instance sees the
     * request end, and the connection is never reused mid-response */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(timeout_ms > 0 ? timeout_ms : 1));
    /* the client asked for exactly this; no decoding, no redirects */
    curl_easy_setopt(h, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);

    CURLcode rc = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    if (rc == CURLE_COULDNT_CONNECT) {
        loom_err_set(err, LOOM_EUNAVAIL, "could not connect to instance %s: %s", address,
                     curl_easy_strerror(rc));
        return ACT_PROXY_CONNECT;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        loom_err_set(err, LOOM_ETIMEOUT, "instance %s did not answer within %lld ms", address,
                     (long long)timeout_ms);
        return ACT_PROXY_TIMEOUT;
    }
    if (rc != CURLE_OK) {
        loom_err_set(err, LOOM_EUNAVAIL, "proxying to instance %s: %s", address,
                     rc == CURLE_WRITE_ERROR ? "response body too large" : curl_easy_strerror(rc));
        return ACT_PROXY_FAILED;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    return ACT_PROXY_OK;
}

enum act_proxy_result act_proxy(struct loom_http_req *req, const char *address,
                                const char *upstream_path, const char *const *extra_headers,
                                size_t nextra, int64_t timeout_ms, struct act_upstream_resp *resp,
                                struct loom_err *err)
{
    CURL *h = thread_easy();
    if (!h) {
        loom_err_set(err, LOOM_EINTERNAL, "could not create a curl handle");
        return ACT_PROXY_FAILED;
    }
    struct strbuf url = STRBUF_INIT;
    strbuf_addf(&url, "http://%s%s", address, upstream_path);

    struct hdr_ctx hc = {.connection = loom_http_header(req, "connection")};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, add_client_header, &hc);
    for (size_t i = 0; !hc.failed && i < nextra; i++) {
        struct curl_slist *l = curl_slist_append(hc.list, extra_headers[i]);
        if (!l)
            hc.failed = true;
        else
            hc.list = l;
    }
    /* no "Expect: 100-continue" round trip, and no chunked bodies: we have it all */
    struct curl_slist *l = hc.failed ? NULL : curl_slist_append(hc.list, "Expect:");
    if (!l) {
        curl_slist_free_all(hc.list);
        strbuf_release(&url);
        loom_err_set(err, LOOM_EINTERNAL, "out of memory building upstream headers");
        return ACT_PROXY_FAILED;
    }
    hc.list = l;

    curl_easy_setopt(h, CURLOPT_URL, url.buf);
    if (strcmp(req->method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(req->method, "GET") == 0 && req->body_len == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (strcmp(req->method, "POST") != 0)
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
    }
    enum act_proxy_result pr = perform(h, address, hc.list, timeout_ms, resp, err);
    curl_slist_free_all(hc.list);
    strbuf_release(&url);
    return pr;
}

enum act_proxy_result act_call(const char *address, const char *path, const char *body, size_t len,
                               int64_t timeout_ms, struct act_upstream_resp *resp,
                               struct loom_err *err)
{
    CURL *h = thread_easy();
    if (!h) {
        loom_err_set(err, LOOM_EINTERNAL, "could not create a curl handle");
        return ACT_PROXY_FAILED;
    }
    char url[256];
    snprintf(url, sizeof(url), "http://%s%s", address, path);
    struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *l2 = l ? curl_slist_append(l, "Expect:") : NULL;
    if (!l2) {
        curl_slist_free_all(l);
        loom_err_set(err, LOOM_EINTERNAL, "out of memory building upstream headers");
        return ACT_PROXY_FAILED;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    enum act_proxy_result pr = perform(h, address, l2, timeout_ms, resp, err);
    curl_slist_free_all(l2);
    return pr;
}
