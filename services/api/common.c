/* What every handler does first (auth, project scope) and small helpers. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "config.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

struct api_config api_cfg;

/* The name of a project key's project, so that the usual request (a project
 * key in its own project) needs no query to resolve the project in the path.
 * A project key of another project, or of none, is answered 404 either way.
 * Entries live as long as a cached key (auth.c): a deleted project's key
 * keeps working that long anyway, and then finds nothing in it. Admin keys
 * may name any project and always ask PostgreSQL. */
#define PROJECT_CACHE_MS 5000
#define PROJECT_CACHE_SLOTS 256

struct cached_project {
    int64_t id;
    char name[64];
    int64_t expires_ms; /* monotonic */
};

static pthread_mutex_t project_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cached_project projects[PROJECT_CACHE_SLOTS];

/* 1 when the cache knows project id: *ret_same says whether name is its name. */
static int project_cached(int64_t id, const char *name, bool *ret_same)
{
    struct cached_project *c = &projects[(uint64_t)id % PROJECT_CACHE_SLOTS];
    int found = 0;
    pthread_mutex_lock(&project_lock);
    if (c->id == id && c->expires_ms > loom_mono_ms()) {
        *ret_same = strcmp(c->name, name) == 0;
        found = 1;
    }
    pthread_mutex_unlock(&project_lock);
    return found;
}

static void project_remember(int64_t id, const char *name)
{
    struct cached_project c = {.id = id, .expires_ms = loom_mono_ms() + PROJECT_CACHE_MS};
    if (strlen(name) >= sizeof(c.name))
        return;
    strcpy(c.name, name);
    pthread_mutex_lock(&project_lock);
    projects[(uint64_t)id % PROJECT_CACHE_SLOTS] = c;
    pthread_mutex_unlock(&project_lock);
}

void api_fail(struct loom_http_req *req, const struct loom_err *err)
{
    int status = loom_errc_http_status(err->code);
    if (status >= 500)
        log_error("%s %s: %s", req->method, req->path, err->msg);
    if (err->code == LOOM_EUNAUTH)
        loom_http_set_header(req, "WWW-Authenticate", "Bearer realm=\"loom\"");
    loom_http_reply_err(req, err);
}

int api_begin(struct loom_http_req *req, bool with_project, struct loom_db **ret_db,
              struct api_caller *ret_caller, struct api_project *ret_project, struct loom_err *err)
{
    struct loom_db *db = loom_service_thread_db(err);
    if (!db)
        return -1;
    struct api_caller caller;
    if (api_auth(req, db, &caller, err) < 0)
        return -1;
    if (with_project) {
        const char *name = req->nparams > 0 ? req->params[0] : "";
        bool same = false;
        int64_t id = 0;
        if (caller.role != API_ROLE_ADMIN && project_cached(caller.project_id, name, &same)) {
            id = same ? caller.project_id : 0;
        } else {
            _cleanup_pgres_ PGresult *res =
                loom_db_query(db, err, "SELECT id FROM projects WHERE name = $1", name);
            if (!res)
                return -1;
            id = PQntuples(res) ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
            if (id != 0 && caller.role != API_ROLE_ADMIN && caller.project_id == id)
                project_remember(id, name);
        }
        /* another project's resources look exactly like absent ones */
        if (id == 0 || (caller.role != API_ROLE_ADMIN && caller.project_id != id))
            return loom_err_set(err, LOOM_ENOTFOUND, "project \"%s\" not found", name);
        struct api_project p = {.id = id};
        snprintf(p.id_str, sizeof(p.id_str), "%lld", (long long)id);
        snprintf(p.name, sizeof(p.name), "%s", name);
        *ret_project = p;
    }
    *ret_db = db;
    *ret_caller = caller;
    return 0;
}

void api_wake(const char *subject)
{
    struct loom_service *svc = loom_service_current();
    struct loom_err err = LOOM_ERR_INIT;
    if (!svc || !svc->bus)
        return;
    if (loom_bus_publish_raw(svc->bus, subject, "", 0, &err) < 0)
        log_warn("could not publish %s: %s", subject, err.msg);
}

char *api_page_token(const char *name)
{
    size_t n = strlen(name);
    char *out = malloc(2 * n + 2);
    if (!out)
        abort();
    out[0] = 'n';
    for (size_t i = 0; i < n; i++)
        snprintf(out + 1 + 2 * i, 3, "%02x", (unsigned char)name[i]);
    out[1 + 2 * n] = '\0';
    return out;
}

int api_page_token_decode(const char *token, char *out, size_t outsz)
{
    size_t n = strlen(token);
    if (n < 1 || token[0] != 'n' || (n - 1) % 2 != 0 || (n - 1) / 2 >= outsz)
        return -1;
    for (size_t i = 0; i < (n - 1) / 2; i++) {
        unsigned v;
        char hex[3] = {token[1 + 2 * i], token[2 + 2 * i], 0};
        char *end;
        v = (unsigned)strtoul(hex, &end, 16);
        if (*end || v == 0 ||
            !((hex[0] >= '0' && hex[0] <= '9') || (hex[0] >= 'a' && hex[0] <= 'f')))
            return -1;
        out[i] = (char)v;
    }
    out[(n - 1) / 2] = '\0';
    return 0;
}

int api_page_parse(struct loom_http_req *req, struct api_page *ret, struct loom_err *err)
{
    struct api_page p = {.limit = 100};
    const char *limit = loom_http_query(req, "limit");
    const char *start = loom_http_query(req, "start");
    if (limit && loom_parse_int(limit, 1, 1000, &p.limit) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "query parameter \"limit\": must be an integer from 1 to 1000");
    if (start && *start && api_page_token_decode(start, p.after, sizeof(p.after)) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "query parameter \"start\": not a token from an earlier page");
    *ret = p;
    return 0;
}

void api_page_finish(json_t *out, const struct api_page *page, size_t nitems, const char *last_name)
{
    json_object_set_new(out, "limit", json_integer(page->limit));
    if ((int64_t)nitems == page->limit && last_name) {
        _cleanup_free_ char *tok = api_page_token(last_name);
        json_object_set_new(out, "next", json_string(tok));
    }
}

void api_json_set_str(json_t *obj, const char *key, const char *s)
{
    json_object_set_new(obj, key, s ? json_string(s) : json_null());
}

void api_json_set_int(json_t *obj, const char *key, const char *s)
{
    json_object_set_new(obj, key, s ? json_integer(strtoll(s, NULL, 10)) : json_null());
}
