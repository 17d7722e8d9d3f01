/* The activator's request path and autoscaler loop.
 *
 * Per app (keyed by project and name) it keeps the ready instances as last
 * read from PostgreSQL (refreshed after cache_ttl_ms, at once after a
 * loom.app.<project>.<app> message, and every 100 ms while requests are
 * held), an in-flight count per instance, and the autoscaler's state. One
 * mutex guards the table; each app has a condition variable that held
 * requests wait on.
 *
 * What the app's spec asks for:
 * - scale_concurrency: an instance never gets more requests at once from this
 *   activator; the others wait (held, at most --max-held per app, then 503)
 *   and count as load, so they drive the scale up.
 * - scale_concurrency_target: the autoscaler sizes to ceil(load / target).
 * - scale_down_delay: a shrink waits that long after the load that justified
 *   the higher count (act_kpa_tick).
 * - scale_request_timeout: a proxied exchange that takes longer gets 504 and
 *   its upstream connection is closed.
 * - scale_initial_instances: a new revision (created or updated within the
 *   last stable window) is scaled to at least that many at once, and kept
 *   there for a stable window (act_kpa_revision). The activator learns of new
 *   revisions from the API's events (loom.events.<project>.app), its periodic
 *   sweep, and requests.
 * - visibility: "public" apps answer on both listeners; "private" ones only on
 *   the internal listener (--internal-addr, which the operator binds where only
 *   the platform's own network reaches, e.g. the bridges' gateway address);
 *   "project" ones only on the internal listener and only to callers whose
 *   source address is a running app instance of the same project. Anywhere
 *   else they are a 404, exactly as if they did not exist. */
#include "activator.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "db.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "secretbox.h"
#include "spec.h"
#include "subjects.h"
#include "util.h"
#include "loom/v1/scale.pb-c.h"

#define HOLD_RECHECK_MS 100
#define COLD_REPUBLISH_MS 1000
#define APP_IDLE_FORGET_MS (10 * 60 * 1000)
#define SWEEP_EVERY_MS 10000
#define NBUCKETS 256
#define DB_POOL 4
#define MAX_CONNECT_RETRIES 3
#define INSTANCE_DOWN_MS 2000

struct act_config act_cfg;

struct app {
    struct app *next;
    char project[ACT_NAME_MAX];
    char name[ACT_NAME_MAX];
    bool known;         /* fetched at least once */
    bool exists;        /* the app row exists */
    bool refreshing;    /* a thread is querying PostgreSQL for it */
    int64_t fetched_ms; /* monotonic; 0 forces a refresh */
    int64_t generation;
    int64_t concurrency; /* per-instance limit */
    double target;       /* per-instance autoscaler target */
    int64_t scale_down_delay_ms;
    int64_t request_timeout_ms; /* one proxied exchange at most */
    enum loom_visibility visibility;
    int64_t rev_generation; /* the generation whose start the autoscaler saw (0: none) */
    struct act_inst *insts;
    size_t ninsts;
    int inflight; /* proxied now */
    int held;     /* waiting for an instance */
    bool cold;    /* a scale from zero was asked for and no instance came yet */
    int64_t last_cold_ms;
    int64_t last_used_ms;
    /* autoscaler: time-weighted concurrency (in-flight + held) over the tick */
    double area;
    int64_t area_since_ms;
    int64_t tick_start_ms;
    struct act_kpa kpa;
    uint32_t published;
    bool has_published;
    pthread_cond_t cond;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct app *table[NBUCKETS];
static bool stopping;
static int64_t last_sweep_ms;

static struct loom_db *pool[DB_POOL];
static bool pool_busy[DB_POOL];
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;

static const double latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,   0.5,   1,      2.5,   5,    10,    30};
static struct loom_metric *m_latency, *m_held, *m_cold, *m_decisions;
static struct loom_http_server *internal_http;
/* req->server_arg of requests that came through the internal listener */
static char internal_tag;

/* --- the app table ---------------------------------------------------------- */

static unsigned hash_key(const char *project, const char *name)
{
    unsigned h = 5381;
    for (const char *p = project; *p; p++)
        h = h * 33 + (unsigned char)*p;
    h = h * 33 + '/';
    for (const char *p = name; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return h % NBUCKETS;
}

static struct app *app_find(const char *project, const char *name)
{
    for (struct app *a = table[hash_key(project, name)]; a; a = a->next)
        if (strcmp(a->project, project) == 0 && strcmp(a->name, name) == 0)
            return a;
    return NULL;
}

static struct app *app_get(const char *project, const char *name, uint32_t desired)
{
    struct app *a = app_find(project, name);
    if (a)
        return a;
    a = calloc(1, sizeof(*a));
    if (!a)
        abort();
    snprintf(a->project, sizeof(a->project), "%s", project);
    snprintf(a->name, sizeof(a->name), "%s", name);
    /* until it is read: an app with every default */
    a->concurrency = 100;
    a->target = 100;
    a->request_timeout_ms = act_cfg.upstream_timeout_ms;
    a->visibility = LOOM_VIS_PUBLIC;
    int64_t now = loom_mono_ms();
    a->area_since_ms = a->tick_start_ms = a->last_used_ms = now;
    act_kpa_init(&a->kpa, desired);
    a->published = desired;
    a->has_published = true;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &ca);
    pthread_condattr_destroy(&ca);
    unsigned b = hash_key(project, name);
    a->next = table[b];
    table[b] = a;
    return a;
}

static void app_free(struct app *a)
{
    pthread_cond_destroy(&a->cond);
    free(a->insts);
    free(a);
}

/* Accounts the concurrency (in-flight + held) up to now; call with mu held
 * before changing either count. */
static void conc_account(struct app *a, int64_t now)
{
    a->area += (double)(a->inflight + a->held) * (double)(now - a->area_since_ms);
    a->area_since_ms = now;
}

/* --- PostgreSQL --------------------------------------------------------------- */

struct loom_db *act_db_get(struct loom_err *err)
{
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        for (int i = 0; i < DB_POOL; i++) {
            if (pool_busy[i])
                continue;
            pool_busy[i] = true;
            pthread_mutex_unlock(&pool_mu);
            if (!pool[i]) {
                struct loom_service *svc = loom_service_current();
                if (loom_db_open(svc ? svc->pg_dsn : NULL, &pool[i], err) < 0) {
                    pthread_mutex_lock(&pool_mu);
                    pool_busy[i] = false;
                    pthread_cond_signal(&pool_cond);
                    pthread_mutex_unlock(&pool_mu);
                    return NULL;
                }
            }
            return pool[i];
        }
        pthread_cond_wait(&pool_cond, &pool_mu);
    }
}

void act_db_put(struct loom_db *db)
{
    pthread_mutex_lock(&pool_mu);
    for (int i = 0; i < DB_POOL; i++)
        if (pool[i] == db)
            pool_busy[i] = false;
    pthread_cond_signal(&pool_cond);
    pthread_mutex_unlock(&pool_mu);
}

static void note_revision(struct app *a, int64_t generation, int64_t initial, bool young,
                          int64_t now);

/* "is the current revision younger than the stable window" in SQL, by the
 * database clock; $3 is the window in seconds */
#define SQL_REVISION_YOUNG                                                                         \
    "coalesce((SELECT r.created_at > now() - make_interval(secs => $3::double precision) "         \
    "FROM app_revisions r WHERE r.app_id = a.id AND r.generation = a.generation), false)"

enum {
    RC_GENERATION,
    RC_CONCURRENCY,
    RC_TARGET,
    RC_SPEC,
    RC_YOUNG,
    RC_DESIRED,
    RC_ADDRESS,
};

static int64_t col(PGresult *res, int c)
{
    return strtoll(PQgetvalue(res, 0, c), NULL, 10);
}

/* Reads the app and its ready instances, then installs them into a (taking
 * mu). Keeps the in-flight counts of instances that are still there. */
static int app_refresh(struct app *a, const char *project, const char *name, struct loom_err *err)
{
    struct loom_db *db = act_db_get(err);
    if (!db)
        return -1;
    char window[32];
    snprintf(window, sizeof(window), "%.3f", (double)act_cfg.stable_window_ms / 1000.0);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "SELECT a.generation, a.concurrency, a.target, a.spec::text, " SQL_REVISION_YOUNG
        ", a.desired_instances, i.address "
        "FROM apps a JOIN projects p ON p.id = a.project_id "
        "LEFT JOIN instances i ON i.app_id = a.id AND i.state = 'running' "
        "AND i.desired = 'run' AND i.address IS NOT NULL "
        "WHERE p.name = $1 AND a.name = $2 ORDER BY i.address",
        project, name, window);
    act_db_put(db);
    if (!res)
        return -1;
    int n = PQntuples(res);
    _cleanup_spec_ struct loom_spec spec = {0};
    if (n > 0 && loom_spec_decode_text(LOOM_KIND_APP, PQgetvalue(res, 0, RC_SPEC), &spec, err) < 0)
        return -1;
    struct act_inst *insts = n > 0 ? calloc((size_t)n, sizeof(*insts)) : NULL;
    if (n > 0 && !insts)
        abort();
    size_t ninsts = 0;
    for (int r = 0; r < n; r++) {
        const char *addr = loom_db_val(res, r, RC_ADDRESS);
        if (addr && strlen(addr) < sizeof(insts[0].address))
            snprintf(insts[ninsts++].address, sizeof(insts[0].address), "%s", addr);
    }

    pthread_mutex_lock(&mu);
    bool first = !a->known;
    a->known = true;
    a->exists = n > 0;
    a->fetched_ms = loom_mono_ms();
    if (n > 0) {
        a->generation = col(res, RC_GENERATION);
        a->concurrency = col(res, RC_CONCURRENCY);
        a->target = (double)col(res, RC_TARGET);
        a->scale_down_delay_ms = spec.scale_down_delay * 1000;
        a->request_timeout_ms = spec.request_timeout * 1000;
        a->visibility = (enum loom_visibility)spec.visibility;
        if (first && a->kpa.desired == 0 && a->kpa.nbuckets == 0) {
            /* start from the scale the app has, as after an activator restart */
            uint32_t d = (uint32_t)col(res, RC_DESIRED);
            a->kpa.desired = d;
            a->published = d;
        }
        note_revision(a, a->generation, spec.initial_instances,
                      strcmp(PQgetvalue(res, 0, RC_YOUNG), "t") == 0, loom_mono_ms());
    }
    for (size_t i = 0; i < ninsts; i++)
        for (size_t j = 0; j < a->ninsts; j++)
            if (strcmp(insts[i].address, a->insts[j].address) == 0) {
                insts[i].inflight = a->insts[j].inflight;
                insts[i].down_until_ms = a->insts[j].down_until_ms;
            }
    free(a->insts);
    a->insts = insts;
    a->ninsts = ninsts;
    if (ninsts > 0)
        a->cold = false;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&mu);
    return 0;
}

/* --- bus ------------------------------------------------------------------------ */

static void publish_decision(struct app *a, uint32_t desired, const char *reason)
{
    struct loom_service *svc = loom_service_current();
    if (!svc || !svc->bus)
        return;
    Loom__V1__ScaleDecision d;
    loom__v1__scale_decision__init(&d);
    d.project = a->project;
    d.app = a->name;
    d.generation = a->generation;
    d.desired = desired;
    d.ts_unix_ms = loom_now_ms();
    d.reason = (char *)reason;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_publish(svc->bus, LOOM_SUBJ_SCALE_DECISION, &d.base, &err) < 0) {
        log_warn("could not publish scale decision for %s/%s: %s", a->project, a->name, err.msg);
        return;
    }
    loom_metric_add(m_decisions, 1);
    log_info("scale %s/%s to %u: %s", a->project, a->name, desired, reason);
}

void act_wake_scheduler(void)
{
    struct loom_service *svc = loom_service_current();
    struct loom_err err = LOOM_ERR_INIT;
    if (svc && svc->bus && loom_bus_publish_raw(svc->bus, LOOM_SUBJ_SCHED_WAKE, "", 0, &err) < 0)
        log_warn("could not publish %s: %s", LOOM_SUBJ_SCHED_WAKE, err.msg);
}

/* A revision seen for the first time: when it is new (created within the
 * last stable window) it starts with at least scale_initial_instances. An
 * old one is only noted: the activator started, or had forgotten the app.
 * Call with mu held. */
static void note_revision(struct app *a, int64_t generation, int64_t initial, bool young,
                          int64_t now)
{
    if (generation == a->rev_generation)
        return;
    a->rev_generation = generation;
    if (!young || initial <= 0)
        return;
    uint32_t d = act_kpa_revision(&a->kpa, (uint32_t)initial, now);
    if (a->has_published && d == a->published)
        return;
    a->published = d;
    a->has_published = true;
    char reason[96];
    snprintf(reason, sizeof(reason), "generation %lld starts with %lld instances",
             (long long)generation, (long long)initial);
    publish_decision(a, d, reason);
    if (d > 0)
        act_wake_scheduler();
}

/* Reads the app now (from a bus callback), unless a request is doing so;
 * create: track it when this activator did not yet. */
static void app_refresh_now(const char *project, const char *name, bool create)
{
    pthread_mutex_lock(&mu);
    struct app *a = create ? app_get(project, name, 0) : app_find(project, name);
    if (!a) {
        pthread_mutex_unlock(&mu);
        return;
    }
    if (a->refreshing) {
        a->fetched_ms = 0;
        pthread_mutex_unlock(&mu);
        return;
    }
    a->refreshing = true;
    pthread_mutex_unlock(&mu);
    struct loom_err err = LOOM_ERR_INIT;
    int rc = app_refresh(a, project, name, &err);
    pthread_mutex_lock(&mu);
    a->refreshing = false;
    if (rc < 0) {
        log_warn("could not look up app %s/%s: %s", project, name, err.msg);
        a->fetched_ms = 0;
    }
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&mu);
}

/* subj is <prefix><project>.<rest>: the project (non-empty, shorter than
 * ACT_NAME_MAX) into project, and where rest starts. */
static bool subject_project(const char *subj, const char *prefix, char project[ACT_NAME_MAX],
                            const char **ret_rest)
{
    size_t pl = strlen(prefix);
    if (strncmp(subj, prefix, pl) != 0)
        return false;
    const char *p = subj + pl, *dot = strchr(p, '.');
    if (!dot || dot == p || (size_t)(dot - p) >= ACT_NAME_MAX)
        return false;
    memcpy(project, p, (size_t)(dot - p));
    project[dot - p] = '\0';
    *ret_rest = dot + 1;
    return true;
}

/* loom.events.<project>.app, CloudEvents from the API: an app was created,
 * updated or deleted. A new revision may want its initial instances now,
 * before any request comes. */
static void on_app_event(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus, (void)arg;
    char project[ACT_NAME_MAX];
    const char *rest;
    if (!subject_project(natsMsg_GetSubject(msg), "loom.events.", project, &rest) ||
        strcmp(rest, "app") != 0)
        return;
    json_error_t jerr;
    _cleanup_json_ json_t *ev =
        json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &jerr);
    const char *type = json_string_value(json_object_get(ev, "type"));
    const char *name = json_string_value(json_object_get(ev, "subject"));
    if (!type || !name || !loom_is_dns_label(project) || !loom_is_dns_label(name) ||
        strlen(name) >= ACT_NAME_MAX)
        return;
    if (strcmp(type, "dev.loom.app.created") == 0 || strcmp(type, "dev.loom.app.updated") == 0)
        app_refresh_now(project, name, true);
    else if (strcmp(type, "dev.loom.app.deleted") == 0)
        app_refresh_now(project, name, false);
}

/* loom.app.<project>.<app>: the app's instances changed. */
static void on_app_changed(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus, (void)arg;
    char project[ACT_NAME_MAX];
    const char *app;
    if (!subject_project(natsMsg_GetSubject(msg), "loom.app.", project, &app) ||
        strlen(app) >= ACT_NAME_MAX)
        return;
    pthread_mutex_lock(&mu);
    struct app *a = app_find(project, app);
    if (a) {
        a->fetched_ms = 0;
        pthread_cond_broadcast(&a->cond);
    }
    pthread_mutex_unlock(&mu);
}

/* loom.stem.<runtime>: a free stem cell of runtime runs. */
static void on_stem_ready(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus, (void)arg;
    const char *subject = natsMsg_GetSubject(msg);
    size_t n = strlen(LOOM_SUBJ_STEM_READY_PREFIX);
    if (subject && strncmp(subject, LOOM_SUBJ_STEM_READY_PREFIX, n) == 0)
        act_fn_stem_ready(subject + n);
}

/* On SIGTERM the server waits for its requests before act_stop runs: held
 * requests look at the service's flag themselves. */
bool act_shutting_down(void)
{
    struct loom_service *svc = loom_service_current();
    return stopping || !svc || svc->stopping;
}

/* --- requests ---------------------------------------------------------------------- */

void act_count_reply(int status)
{
    char labels[32];
    snprintf(labels, sizeof(labels), "code=\"%d\"", status);
    loom_metric_add(loom_metric_counter("loom_activator_requests_total", labels,
                                        "requests answered by the activator, by status"),
                    1);
}

void act_reply_problem(struct loom_http_req *req, int status, int retry_after, const char *detail)
{
    if (retry_after > 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", retry_after);
        loom_http_set_header(req, "Retry-After", v);
    }
    loom_http_reply_problem(req, status, "%s", detail);
    act_count_reply(status);
}

void act_client_ip(struct loom_http_req *req, char *out, size_t n)
{
    snprintf(out, n, "unknown");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)n);
}

static void reply_upstream(struct loom_http_req *req, struct act_upstream_resp *resp)
{
    /* header lines "Name: value\r\n"; the server takes a bounded number of
     * extra headers, keep room for its own */
    int room = LOOM_HTTP_MAX_HEADERS - 1;
    char *p = resp->headers.buf;
    while (*p && room > 0) {
        char *eol = strstr(p, "\r\n");
        if (!eol)
            break;
        *eol = '\0';
        char *colon = strchr(p, ':');
        if (colon) {
            *colon = '\0';
            const char *v = colon + 1;
            while (*v == ' ')
                v++;
            loom_http_set_header(req, p, v);
            room--;
        }
        p = eol + 2;
    }
    if (*p)
        log_debug("dropped upstream response headers beyond the server's limit");
    loom_http_reply(req, (int)resp->status, resp->content_type, resp->body.buf, resp->body.len);
    act_count_reply((int)resp->status);
}

/* Whether the client's source address is a running instance of project
 * (1) or not (0); -1 when PostgreSQL cannot tell. Containers reach the
 * internal listener without address translation, so their source address is
 * the one their instance row has. */
int act_caller_in_project(struct loom_http_req *req, const char *project, struct loom_err *err)
{
    char ip[INET6_ADDRSTRLEN];
    act_client_ip(req, ip, sizeof(ip));
    struct loom_db *db = act_db_get(err);
    if (!db)
        return -1;
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, err,
                      "SELECT 1 FROM instances i JOIN projects p ON p.id = i.project_id "
                      "WHERE p.name = $1 AND i.kind IN ('app', 'function') "
                      "AND i.state = 'running' "
                      "AND i.desired = 'run' AND split_part(i.address, ':', 1) = $2 LIMIT 1",
                      project, ip);
    act_db_put(db);
    if (!res)
        return -1;
    return PQntuples(res) > 0 ? 1 : 0;
}

static void reply_not_found(struct loom_http_req *req, const char *project, const char *name)
{
    loom_http_reply_problem(req, 404, "app \"%s\" not found in project \"%s\"", name, project);
    act_count_reply(404);
}

/* The app as act_plan_request sees it. Call with mu held. */
static struct act_plan_app app_view(const struct app *a)
{
    return (struct act_plan_app){
        .known = a->known,
        .exists = a->exists,
        .refreshing = a->refreshing,
        .fetched_ms = a->fetched_ms,
        .visibility = a->visibility,
        .concurrency = a->concurrency,
        .target = a->target,
        .insts = a->insts,
        .ninsts = a->ninsts,
        .inflight = a->inflight,
        .held = a->held,
        .last_cold_ms = a->last_cold_ms,
        .desired = a->kpa.desired,
    };
}

/* A held request's ask for instances (act_plan.ask). Call with mu held. */
static void ask_for_instances(struct app *a, const struct act_plan *p, int64_t now)
{
    uint32_t d;
    const char *reason;
    if (p->ask == ACT_ASK_FROM_ZERO) {
        if (!a->cold)
            loom_metric_add(m_cold, 1);
        a->cold = true;
        d = act_kpa_bump(&a->kpa, 1, false, now);
        reason = "request held while scaled to zero";
    } else {
        d = act_kpa_bump(&a->kpa, p->want, true, now);
        reason = "requests wait at the instances' concurrency limit";
    }
    a->last_cold_ms = now;
    a->published = d;
    a->has_published = true;
    publish_decision(a, d, reason);
    act_wake_scheduler();
}

/* Proxies req to the instance at address, with the X-Forwarded-* headers
 * and the request id. */
static enum act_proxy_result forward(struct loom_http_req *req, const char *address,
                                     const char *upstream_path, int64_t timeout_ms,
                                     struct act_upstream_resp *resp, struct loom_err *err)
{
    char xff[512], ip[INET6_ADDRSTRLEN];
    act_client_ip(req, ip, sizeof(ip));
    const char *prev = loom_http_header(req, "x-forwarded-for");
    if (prev && strlen(prev) < 400)
        snprintf(xff, sizeof(xff), "X-Forwarded-For: %s, %s", prev, ip);
    else
        snprintf(xff, sizeof(xff), "X-Forwarded-For: %s", ip);
    char xfp[64], xfh[300], rid[64];
    const char *proto = loom_http_header(req, "x-forwarded-proto");
    snprintf(xfp, sizeof(xfp), "X-Forwarded-Proto: %s",
             proto && (!strcmp(proto, "https") || !strcmp(proto, "http")) ? proto : "http");
    const char *host = loom_http_header(req, "host");
    snprintf(xfh, sizeof(xfh), "X-Forwarded-Host: %.250s", host ? host : "");
    snprintf(rid, sizeof(rid), "X-Request-Id: %s", req->request_id);
    const char *extra[] = {xff, xfp, xfh, rid};
    int64_t t0 = loom_mono_ms();
    enum act_proxy_result pr = act_proxy(req, address, upstream_path, extra, LOOM_ARRAY_SIZE(extra),
                                         timeout_ms, resp, err);
    loom_metric_observe(m_latency, (double)(loom_mono_ms() - t0) / 1000.0);
    return pr;
}

/* An exchange with the instance at address ended. Call with mu held. */
static void instance_done(struct app *a, const char *address, bool unreachable, int64_t now)
{
    for (size_t i = 0; i < a->ninsts; i++) {
        if (strcmp(a->insts[i].address, address) != 0)
            continue;
        if (a->insts[i].inflight > 0)
            a->insts[i].inflight--;
        /* PostgreSQL may still list it (it died, or is being stopped): do
         * not send it more for a while */
        if (unreachable)
            a->insts[i].down_until_ms = now + INSTANCE_DOWN_MS;
    }
    conc_account(a, now);
    a->inflight--;
    a->last_used_ms = now;
    pthread_cond_broadcast(&a->cond); /* a slot is free */
}

/* Serves one request for an app: act_plan_request decides each step, this
 * does the I/O it asks for. The request counts in the app's load (a->held,
 * then a->inflight) and, while it waits, in the held-requests gauge; there
 * is one way out of the loop, which gives back whatever it still counts in. */
static void serve_app(struct loom_http_req *req, const char *project, const char *name,
                      const char *upstream_path, bool internal)
{
    const struct act_plan_limits lim = {
        .cache_ttl_ms = act_cfg.cache_ttl_ms,
        .hold_recheck_ms = HOLD_RECHECK_MS,
        .cold_republish_ms = COLD_REPUBLISH_MS,
        .max_held = act_cfg.max_held_per_app,
        .hold_timeout_ms = act_cfg.hold_timeout_ms,
    };
    int64_t start = loom_mono_ms();
    struct act_plan_req rq = {.internal = internal, .deadline_ms = start + act_cfg.hold_timeout_ms};
    struct act_plan p = {0};
    _cleanup_(act_upstream_resp_release) struct act_upstream_resp resp = {.body = STRBUF_INIT,
                                                                          .headers = STRBUF_INIT};
    struct loom_err err = LOOM_ERR_INIT;
    enum act_proxy_result pr = ACT_PROXY_OK;
    int64_t timeout_ms = 0;
    int connect_failures = 0;

    pthread_mutex_lock(&mu);
    struct app *a = app_get(project, name, 0);
    a->last_used_ms = start;
    conc_account(a, start);
    a->held++; /* counted as held until an instance is picked */
    bool counted = true;
    for (;;) {
        int64_t now = loom_mono_ms();
        rq.shutting_down = act_shutting_down();
        struct act_plan_app view = app_view(a);
        act_plan_request(&view, &rq, &lim, now, &p);
        if (p.start_hold) {
            rq.held = true;
            loom_metric_add(m_held, 1);
        }
        if (p.ask != ACT_ASK_NONE)
            ask_for_instances(a, &p, now);
        if (p.step == ACT_STEP_REFRESH) {
            a->refreshing = true;
            pthread_mutex_unlock(&mu);
            struct loom_err rerr = LOOM_ERR_INIT;
            int rc = app_refresh(a, project, name, &rerr);
            pthread_mutex_lock(&mu);
            a->refreshing = false;
            pthread_cond_broadcast(&a->cond);
            rq.lookup_failed = rc < 0;
            if (rc < 0) {
                log_warn("could not look up app %s/%s: %s", project, name, rerr.msg);
                a->fetched_ms = loom_mono_ms(); /* retry after the ttl, not at once */
            }
        } else if (p.step == ACT_STEP_CHECK_CALLER) {
            pthread_mutex_unlock(&mu);
            struct loom_err cerr = LOOM_ERR_INIT;
            int in = act_caller_in_project(req, project, &cerr);
            pthread_mutex_lock(&mu);
            if (in < 0)
                log_warn("could not check the caller of %s/%s: %s", project, name, cerr.msg);
            rq.caller = in < 0 ? ACT_CALLER_ERROR : in > 0 ? ACT_CALLER_IN : ACT_CALLER_OUT;
        } else if (p.step == ACT_STEP_ADMIT) {
            rq.admitted = true;
        } else if (p.step == ACT_STEP_WAIT) {
            struct timespec ts = {(time_t)(p.wait_until / 1000),
                                  (long)(p.wait_until % 1000) * 1000000L};
            pthread_cond_timedwait(&a->cond, &mu, &ts);
        } else if (p.step == ACT_STEP_FORWARD) {
            struct act_inst *in = &a->insts[p.inst];
            char address[sizeof(in->address)];
            snprintf(address, sizeof(address), "%s", in->address);
            in->inflight++;
            conc_account(a, now);
            a->held--;
            a->inflight++;
            counted = false;
            if (rq.held)
                loom_metric_add(m_held, -1);
            rq.held = false;
            timeout_ms = a->request_timeout_ms;
            pthread_mutex_unlock(&mu);
            act_upstream_resp_release(&resp);
            pr = forward(req, address, upstream_path, timeout_ms, &resp, &err);
            pthread_mutex_lock(&mu);
            instance_done(a, address, pr == ACT_PROXY_CONNECT, loom_mono_ms());
            if (pr != ACT_PROXY_CONNECT || ++connect_failures >= MAX_CONNECT_RETRIES)
                break;
            /* nothing reached the instance: it is probably gone; look again
             * and try another one (past the hold deadline too: a free live
             * instance takes it at once, else 503) */
            log_info("%s", err.msg);
            a->fetched_ms = 0;
            conc_account(a, loom_mono_ms());
            a->held++;
            counted = true;
        } else {
            break; /* ACT_STEP_REPLY */
        }
    }
    if (counted) {
        conc_account(a, loom_mono_ms());
        a->held--;
    }
    if (rq.held)
        loom_metric_add(m_held, -1);
    pthread_mutex_unlock(&mu);

    if (p.step == ACT_STEP_REPLY && p.reply == ACT_REPLY_NOT_FOUND) {
        reply_not_found(req, project, name);
    } else if (p.step == ACT_STEP_REPLY) {
        act_reply_problem(req, p.status, p.retry_after, p.detail);
    } else if (pr == ACT_PROXY_OK) {
        reply_upstream(req, &resp);
        act_usage_request(project, name);
    } else if (pr == ACT_PROXY_TIMEOUT) {
        act_usage_request(project, name); /* it reached the app, which used it */
        log_warn("%s", err.msg);
        loom_http_reply_problem(req, 504,
                                "the app did not answer within its request timeout "
                                "(scale_request_timeout %lld s)",
                                (long long)(timeout_ms / 1000));
        act_count_reply(504);
    } else {
        log_warn("%s", err.msg);
        loom_http_reply_problem(req, 502, "%s", err.msg);
        act_count_reply(502);
    }
}

struct query_ctx {
    struct strbuf *out;
    bool first;
};

static enum MHD_Result add_query_arg(void *arg, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct query_ctx *q = arg;
    strbuf_addch(q->out, q->first ? '?' : '&');
    q->first = false;
    act_add_url_raw(q->out, key ? key : "");
    if (value) {
        strbuf_addch(q->out, '=');
        act_add_url_raw(q->out, value);
    }
    return MHD_YES;
}

/* The server leaves the query undecoded but split into arguments; put it
 * back together for the upstream request. */
static void append_query(struct strbuf *up, struct loom_http_req *req)
{
    struct query_ctx q = {up, true};
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, add_query_arg, &q);
}

void act_handle(struct loom_http_req *req)
{
    char project[ACT_NAME_MAX], name[ACT_NAME_MAX], fn_domain[300];
    const char *rest;
    bool internal = req->server_arg == &internal_tag;
    /* the route is "/\*": rest is the whole path, still percent-encoded */
    _cleanup_strbuf_ struct strbuf raw = STRBUF_INIT, up = STRBUF_INIT;
    strbuf_addch(&raw, '/');
    strbuf_addstr(&raw, req->rest ? req->rest : "");
    const char *host = loom_http_header(req, "host");
    /* functions: <fn>.<project>.fn.<domain> or /fns/<project>/<fn>/... */
    snprintf(fn_domain, sizeof(fn_domain), "fn.%s", act_cfg.domain);
    if (act_parse_host(host, fn_domain, project, name) == 0) {
        act_fn_handle(req, project, name, raw.buf, internal);
        return;
    }
    if (act_parse_path(raw.buf, "/fns/", project, name, &rest) == 0) {
        strbuf_addch(&up, '/');
        strbuf_addstr(&up, rest);
        act_fn_handle(req, project, name, up.buf, internal);
        return;
    }
    if (act_parse_host(host, act_cfg.domain, project, name) == 0) {
        act_add_url_raw(&up, raw.buf);
    } else if (act_parse_path(raw.buf, "/apps/", project, name, &rest) == 0) {
        strbuf_addch(&up, '/');
        act_add_url_raw(&up, rest);
    } else {
        /* the catch-all route hides the server's own endpoints: they answer
         * what is for no app */
        if (loom_http_serve_builtin(req))
            return;
        loom_http_reply_problem(req, 404,
                                "no app or function here: use /apps/<project>/<app>/, "
                                "/fns/<project>/<function>, or the host <app>.<project>.%s or "
                                "<function>.<project>.fn.%s",
                                act_cfg.domain, act_cfg.domain);
        act_count_reply(404);
        return;
    }
    append_query(&up, req);
    serve_app(req, project, name, up.buf, internal);
}

/* --- the autoscaler and housekeeping ---------------------------------------------- */

/* Tracks apps that have instances although nobody asked this activator for
 * them (an activator restart, another replica's traffic) so that they still
 * scale to zero when idle, and apps whose new revision wants initial
 * instances (in case the API's event was missed). */
static void sweep_apps(struct loom_service *svc)
{
    struct loom_err err = LOOM_ERR_INIT;
    char window[32];
    snprintf(window, sizeof(window), "%.3f", (double)act_cfg.stable_window_ms / 1000.0);
    const char *params[] = {window};
    _cleanup_pgres_ PGresult *res = loom_db_exec(
        svc->db,
        "SELECT p.name, a.name, a.desired_instances, a.generation, a.spec::text, "
        "  coalesce(r.created_at > now() - make_interval(secs => $1::double precision), false) "
        "FROM apps a JOIN projects p ON p.id = a.project_id "
        "LEFT JOIN app_revisions r ON r.app_id = a.id AND r.generation = a.generation "
        "WHERE a.desired_instances > 0 "
        "  OR r.created_at > now() - make_interval(secs => $1::double precision)",
        1, params, &err);
    if (!res) {
        log_warn("could not list scaled apps: %s", err.msg);
        return;
    }
    pthread_mutex_lock(&mu);
    int64_t now = loom_mono_ms();
    for (int r = 0; r < PQntuples(res); r++) {
        const char *p = PQgetvalue(res, r, 0), *n = PQgetvalue(res, r, 1);
        int64_t desired = strtoll(PQgetvalue(res, r, 2), NULL, 10);
        _cleanup_spec_ struct loom_spec spec = {0};
        if (strlen(p) >= ACT_NAME_MAX || strlen(n) >= ACT_NAME_MAX ||
            loom_spec_decode_text(LOOM_KIND_APP, PQgetvalue(res, r, 4), &spec, &err) < 0 ||
            (desired == 0 && spec.initial_instances == 0))
            continue;
        struct app *a = app_find(p, n);
        if (!a)
            a = app_get(p, n, (uint32_t)desired);
        note_revision(a, strtoll(PQgetvalue(res, r, 3), NULL, 10), spec.initial_instances,
                      strcmp(PQgetvalue(res, r, 5), "t") == 0, now);
    }
    pthread_mutex_unlock(&mu);
}

void act_tick(struct loom_service *svc)
{
    act_fn_tick();
    act_usage_flush(svc->db);
    int64_t now = loom_mono_ms();
    if (now - last_sweep_ms >= SWEEP_EVERY_MS) {
        last_sweep_ms = now;
        sweep_apps(svc);
    }
    struct act_kpa_config cfg = {
        .tick_ms = svc->tick_ms, /* --tick: the windows count in ticks */
        .stable_window_ms = act_cfg.stable_window_ms,
        .panic_window_ms = act_cfg.panic_window_ms,
        .panic_threshold = 2.0,
        .max_scale_down = 2.0,
    };
    pthread_mutex_lock(&mu);
    for (int b = 0; b < NBUCKETS; b++) {
        struct app **pp = &table[b];
        while (*pp) {
            struct app *a = *pp;
            now = loom_mono_ms();
            if (a->known && !a->exists && a->inflight == 0 && a->held == 0 && !a->refreshing &&
                now - a->last_used_ms > act_cfg.cache_ttl_ms) {
                /* unknown apps are not kept: anyone can make up names */
                *pp = a->next;
                app_free(a);
                continue;
            }
            if (a->inflight == 0 && a->held == 0 && !a->refreshing && a->published == 0 &&
                a->kpa.desired == 0 && now - a->last_used_ms > APP_IDLE_FORGET_MS) {
                *pp = a->next;
                app_free(a);
                continue;
            }
            conc_account(a, now);
            int64_t span = now - a->tick_start_ms;
            double avg = span > 0 ? a->area / (double)span : 0;
            a->area = 0;
            a->tick_start_ms = now;
            if (a->exists || !a->known) {
                uint32_t d = act_kpa_tick(&a->kpa, &cfg, avg, (uint32_t)a->ninsts, a->target,
                                          a->scale_down_delay_ms, now);
                if (!a->has_published || d != a->published) {
                    char reason[96];
                    snprintf(reason, sizeof(reason), "concurrency %.2f, target %.1f%s", avg,
                             a->target, a->kpa.panicking ? ", panic" : "");
                    a->published = d;
                    a->has_published = true;
                    publish_decision(a, d, reason);
                    if (d > 0)
                        act_wake_scheduler();
                }
            }
            pp = &a->next;
        }
    }
    pthread_mutex_unlock(&mu);
}

/* /readyz on the internal listener: the service's readiness */
static bool internal_ready(void *arg)
{
    (void)arg;
    struct loom_service *svc = loom_service_current();
    return svc && loom_service_ready(svc);
}

int act_start(struct loom_service *svc, struct loom_err *err)
{
    if (act_proxy_global_init(err) < 0 ||
        loom_secretbox_set_key(
            act_cfg.secrets_key && *act_cfg.secrets_key ? act_cfg.secrets_key : NULL, err) < 0 ||
        act_fn_start(act_cfg.activation_retention_ms, err) < 0)
        return -1;
    m_latency = loom_metric_histogram("loom_activator_proxy_seconds", NULL,
                                      "time to proxy a request to an instance", latency_buckets,
                                      LOOM_ARRAY_SIZE(latency_buckets));
    m_held =
        loom_metric_gauge("loom_activator_held_requests", NULL, "requests waiting for an instance");
    m_cold = loom_metric_counter("loom_activator_cold_starts_total", NULL,
                                 "scale-from-zero requests triggered by held requests");
    m_decisions = loom_metric_counter("loom_activator_scale_decisions_total", NULL,
                                      "ScaleDecision messages published");
    if (loom_bus_subscribe(svc->bus, "loom.app.>", NULL, on_app_changed, NULL, err) < 0)
        return loom_err_wrap(err, "subscribing to loom.app.>");
    if (loom_bus_subscribe(svc->bus, "loom.events.*.app", NULL, on_app_event, NULL, err) < 0)
        return loom_err_wrap(err, "subscribing to loom.events.*.app");
    if (loom_bus_subscribe(svc->bus, LOOM_SUBJ_STEM_READY_PREFIX ">", NULL, on_stem_ready, NULL,
                           err) < 0)
        return loom_err_wrap(err, "subscribing to " LOOM_SUBJ_STEM_READY_PREFIX ">");
    if (act_cfg.internal_addr && *act_cfg.internal_addr) {
        static const struct loom_http_route internal_routes[] = {{"*", "/*", act_handle}};
        const struct loom_http_server_opts o = {
            .addr = act_cfg.internal_addr,
            .max_body = 32u << 20,
            .threads = 0, /* as the public listener: a held request blocks only its own */
            .routes = internal_routes,
            .nroutes = LOOM_ARRAY_SIZE(internal_routes),
            .arg = &internal_tag,
            .ready = internal_ready,
            .service = "activator-internal",
        };
        if (loom_http_server_start(&o, &internal_http, err) < 0)
            return loom_err_wrap(err, "internal listener on %s", act_cfg.internal_addr);
        log_info("internal listener (private and project apps) on port %u",
                 (unsigned)loom_http_server_port(internal_http));
    }
    log_info("routing hosts <app>.<project>.%s and <function>.<project>.fn.%s, and paths "
             "/apps/<project>/<app>/ and /fns/<project>/<function>; hold %lld ms",
             act_cfg.domain, act_cfg.domain, (long long)act_cfg.hold_timeout_ms);
    return 0;
}

bool act_ready(struct loom_service *svc)
{
    (void)svc;
    return !stopping;
}

void act_stop(struct loom_service *svc)
{
    act_fn_stop();
    /* held requests there see the service stopping and end */
    loom_http_server_stop(internal_http);
    internal_http = NULL;
    /* both listeners are stopped: the last counts */
    act_usage_flush(svc->db);
    pthread_mutex_lock(&pool_mu);
    for (int i = 0; i < DB_POOL; i++) {
        loom_db_close(pool[i]);
        pool[i] = NULL;
    }
    pthread_mutex_unlock(&pool_mu);
    act_proxy_global_cleanup();
    pthread_mutex_lock(&mu);
    stopping = true;
    /* the HTTP server has stopped: no request uses the table any more */
    for (int b = 0; b < NBUCKETS; b++) {
        while (table[b]) {
            struct app *a = table[b];
            table[b] = a->next;
            app_free(a);
        }
    }
    pthread_mutex_unlock(&mu);
}
