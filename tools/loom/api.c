/* loom: calls to the API, their replies, problems and exit codes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "err.h"
#include "httpc.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"
#include "cli.h"

void reply_release(struct reply *r)
{
    free(r->raw);
    if (r->json)
        json_decref(r->json);
    memset(r, 0, sizeof(*r));
}

static int exit_for_status(long status)
{
    if (status < 300)
        return EXIT_OK;
    if (status == 401 || status == 403)
        return EXIT_AUTH;
    if (status == 404)
        return EXIT_NOTFOUND;
    if (status >= 500)
        return EXIT_UNAVAIL;
    return EXIT_API;
}

static void print_problem(const struct reply *r)
{
    const char *detail = r->json ? json_string_value(json_object_get(r->json, "detail")) : NULL;
    const char *title = r->json ? json_string_value(json_object_get(r->json, "title")) : NULL;
    const char *rid = r->json ? json_string_value(json_object_get(r->json, "request_id")) : NULL;
    fprintf(stderr, "loom: %s (HTTP %ld%s%s)\n",
            detail  ? detail
            : title ? title
                    : (r->raw && *r->raw ? r->raw : "error"),
            r->status, title ? " " : "", title ? title : "");
    if (rid)
        fprintf(stderr, "request id: %s\n", rid);
}

/* The API's base URL without a trailing slash, and path, allocated; NULL
 * (printed why) when there is no API address or key. */
static char *api_url(const char *path, int *ret_rc)
{
    if (!cfg.api || !*cfg.api) {
        fprintf(stderr, "loom: no API address: run loom login, or set LOOM_API or --api\n");
        *ret_rc = EXIT_USAGE;
        return NULL;
    }
    if (!cfg.key || !*cfg.key) {
        fprintf(stderr, "loom: no API key: run loom login, or set LOOM_KEY or --key\n");
        *ret_rc = EXIT_AUTH;
        return NULL;
    }
    size_t n = strlen(cfg.api);
    while (n && cfg.api[n - 1] == '/')
        n--;
    char *url = NULL;
    if (asprintf(&url, "%.*s%s", (int)n, cfg.api, path) < 0)
        abort();
    return url;
}

/* Calls the API. Returns an exit code: EXIT_OK for 2xx (then *ret holds the
 * reply), else prints the problem to stderr. */
/* One call: a JSON body (body), a file body (f, len bytes of content_type)
 * or none, with If-Match and extra headers as given. */
static int api_request(const char *method, const char *path, json_t *body, FILE *f, int64_t len,
                       const char *content_type, const char *if_match, const char *const *extra,
                       bool quiet, struct reply *ret)
{
    int urc = EXIT_OK;
    _cleanup_free_ char *url = api_url(path, &urc);
    if (!url)
        return urc;
    _cleanup_free_ char *auth = NULL;
    if (asprintf(&auth, "Authorization: Bearer %s", cfg.key) < 0)
        abort();
    char idem[64] = "";
    if (strcmp(method, "POST") == 0) {
        char uuid[37];
        loom_uuid4(uuid);
        snprintf(idem, sizeof(idem), "Idempotency-Key: \"%s\"", uuid);
    }
    char ifm[96] = "";
    if (if_match)
        snprintf(ifm, sizeof(ifm), "If-Match: \"%.64s\"", if_match);
    _cleanup_free_ char *ct = NULL;
    if (asprintf(&ct, "Content-Type: %s", content_type ? content_type : "application/json") < 0)
        abort();
    const char *headers[10] = {auth, "Accept: application/json", ct};
    int nh = 3;
    if (idem[0])
        headers[nh++] = idem;
    if (ifm[0])
        headers[nh++] = ifm;
    for (size_t i = 0; extra && extra[i] && nh < 9; i++)
        headers[nh++] = extra[i];
    _cleanup_free_ char *text = body ? loom_json_dumps(body) : NULL;
    struct loom_httpc_req req = {
        .method = method,
        .url = url,
        .headers = headers,
        .body = text,
        .body_file = f,
        .body_len = f      ? (size_t)len
                    : text ? strlen(text)
                           : 0,
        /* an upload: a minute plus a second per MiB */
        .timeout_ms = 30000 + len / 1024,
    };
    struct loom_httpc_resp resp = {.body = STRBUF_INIT};
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_httpc_do(&req, &resp, &err) < 0) {
        fprintf(stderr, "loom: could not reach the API at %s: %s\n", cfg.api, err.msg);
        loom_httpc_resp_release(&resp);
        return EXIT_UNAVAIL;
    }
    struct reply r = {.status = resp.status};
    r.raw = strbuf_detach(&resp.body, NULL);
    loom_httpc_resp_release(&resp);
    if (r.raw && *r.raw)
        r.json = json_loads(r.raw, 0, NULL);
    int rc = exit_for_status(r.status);
    if (rc != EXIT_OK) {
        if (!quiet)
            print_problem(&r);
        reply_release(&r);
        return rc;
    }
    *ret = r;
    return EXIT_OK;
}

int api_call_if(const char *method, const char *path, json_t *body, const char *if_match,
                struct reply *ret)
{
    return api_request(method, path, body, NULL, 0, NULL, if_match, NULL, false, ret);
}

int api_call_quiet(const char *method, const char *path, struct reply *ret)
{
    return api_request(method, path, NULL, NULL, 0, NULL, NULL, NULL, true, ret);
}

int api_post_file(const char *path, FILE *f, int64_t len, const char *content_type,
                  const char *const *extra, struct reply *ret)
{
    return api_request("POST", path, NULL, f, len, content_type, NULL, extra, false, ret);
}

int api_call(const char *method, const char *path, json_t *body, struct reply *ret)
{
    return api_call_if(method, path, body, NULL, ret);
}

struct stream_sink {
    struct loom_httpc_resp *resp;
    const char *accept;
    int (*sink)(const void *data, size_t len, void *arg);
    void *arg;
    struct strbuf other; /* a body of another type: a problem */
};

static int stream_to(const void *data, size_t len, void *arg)
{
    struct stream_sink *s = arg;
    const char *ct = s->resp->content_type;
    if (ct && strncmp(ct, s->accept, strlen(s->accept)) == 0)
        return s->sink(data, len, s->arg);
    if (s->other.len < 65536)
        strbuf_add(&s->other, data, len);
    return 0;
}

int api_stream(const char *path, const char *accept,
               int (*sink)(const void *data, size_t len, void *arg), void *arg)
{
    int rc = EXIT_OK;
    _cleanup_free_ char *url = api_url(path, &rc);
    if (!url)
        return rc;
    _cleanup_free_ char *auth = NULL, *acc = NULL;
    if (asprintf(&auth, "Authorization: Bearer %s", cfg.key) < 0 ||
        asprintf(&acc, "Accept: %s", accept) < 0)
        abort();
    const char *headers[] = {auth, acc, NULL};
    struct loom_httpc_resp resp = {.body = STRBUF_INIT};
    struct stream_sink s = {.resp = &resp, .accept = accept, .sink = sink, .arg = arg};
    strbuf_init(&s.other);
    struct loom_httpc_req req = {.url = url,
                                 .headers = headers,
                                 .timeout_ms = -1,
                                 .idle_timeout_ms = 60000,
                                 .sink = stream_to,
                                 .sink_arg = &s};
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_httpc_do(&req, &resp, &err) < 0) {
        /* the reader stopping the transfer is not an error */
        if (err.code != LOOM_EIO) {
            fprintf(stderr, "loom: %s\n", err.msg);
            rc = EXIT_UNAVAIL;
        }
    } else if (resp.status < 200 || resp.status > 299) {
        struct reply r = {.status = resp.status};
        r.raw = strbuf_detach(&s.other, NULL);
        if (r.raw && *r.raw)
            r.json = json_loads(r.raw, 0, NULL);
        rc = exit_for_status(r.status);
        print_problem(&r);
        reply_release(&r);
    }
    strbuf_release(&s.other);
    loom_httpc_resp_release(&resp);
    return rc;
}

int need_project(void)
{
    if (!cfg.project || !*cfg.project) {
        fprintf(stderr, "loom: no project: set LOOM_PROJECT or --project\n");
        return EXIT_USAGE;
    }
    return 0;
}

/* "/v1/projects/<p>/<coll>[/<name>][<suffix>]" */
char *ppath(const char *coll, const char *name, const char *suffix)
{
    char *p;
    if (asprintf(&p, "/v1/projects/%s/%s%s%s%s", cfg.project, coll, name ? "/" : "",
                 name ? name : "", suffix ? suffix : "") < 0)
        abort();
    return p;
}

/* PATCH with If-Match: reads the resource's entity tag first, so a change
 * made by someone else in between is refused (412) instead of lost. */
int patch_current(const char *coll, const char *name, json_t *body, const char *method,
                  struct reply *ret)
{
    _cleanup_free_ char *path = ppath(coll, name, NULL);
    struct reply cur = {0};
    int rc = api_call("GET", path, NULL, &cur);
    if (rc)
        return rc;
    _cleanup_free_ char *etag = strdup(jstr(cur.json, "entity_tag"));
    reply_release(&cur);
    return api_call_if(method, path, body, etag, ret);
}

/* Creates the resource (POST to coll) or changes it (method, with If-Match:
 * patch_current), then prints the reply (-o json) or "<what> <name>
 * created|updated (generation N)". */
int write_resource(const char *coll, const char *what, const char *name, bool create,
                   const char *method, json_t *body)
{
    struct reply r = {0};
    _cleanup_free_ char *path = ppath(coll, NULL, NULL);
    int rc =
        create ? api_call("POST", path, body, &r) : patch_current(coll, name, body, method, &r);
    if (rc)
        return rc;
    if (cfg.json)
        print_raw(&r);
    else
        printf("%s %s %s (generation %lld)\n", what, name, create ? "created" : "updated",
               jint(r.json, "generation"));
    reply_release(&r);
    return EXIT_OK;
}

/* DELETE that may answer 202 (instances still stopping): retries until the
 * row is gone. */
int delete_with_retry(const char *coll, const char *name, const char *what)
{
    _cleanup_free_ char *path = ppath(coll, name, NULL);
    for (int tries = 0;; tries++) {
        struct reply r = {0};
        int rc = api_call("DELETE", path, NULL, &r);
        if (rc == EXIT_NOTFOUND && tries > 0)
            rc = EXIT_OK;
        if (rc)
            return rc;
        long st = r.status;
        reply_release(&r);
        if (st != 202)
            break;
        if (tries == 0)
            printf("stopping the instances of %s %s...\n", what, name);
        if (tries >= 60) {
            fprintf(stderr, "loom: %s %s is still stopping; delete it again later\n", what, name);
            return EXIT_API;
        }
        sleep_ms(1000);
    }
    printf("%s %s deleted\n", what, name);
    return EXIT_OK;
}

void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
