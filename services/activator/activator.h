/* loom-activator: HTTP ingress for apps. Routes a request to an app by Host
 * (<app>.<project>.<domain>) or by path (/apps/<project>/<app>/...), proxies
 * it to a ready instance under its concurrency limit, holds it while the app
 * scales from zero, and runs the autoscaler (KPA-like stable and panic
 * windows over in-flight concurrency). Private and project apps answer only
 * on a second, internal listener (--internal-addr); see ingress.c. */
#ifndef LOOM_ACTIVATOR_H
#define LOOM_ACTIVATOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "spec.h"
#include "strbuf.h"

struct loom_service;
struct loom_http_req;

#define ACT_NAME_MAX 64 /* a DNS label and its NUL */

/* --- routing (route.c): pure functions ------------------------------------- */

/* Parses a Host header value "<app>.<project>.<domain>[:port]" (case does not
 * matter; labels come back lowercase). Returns 0 and fills project and app
 * (ACT_NAME_MAX bytes each) when host names an app under domain, else -1. */
int act_parse_host(const char *host, const char *domain, char *ret_project, char *ret_app);

/* Parses the path form "<prefix><project>/<app>[/<rest>]" (prefix "/apps/"
 * for apps, "/fns/" for functions). Returns 0 with project and app filled
 * and *ret_rest pointing into path at what follows "/<app>/" ("" when
 * nothing follows), else -1. */
int act_parse_path(const char *path, const char *prefix, char *ret_project, char *ret_app,
                   const char **ret_rest);

/* Appends a raw (still percent-encoded) path or query as it came, except
 * that bytes never allowed in a URL (controls, space, non-ASCII, "<>\\^`{|})
 * are percent-encoded. */
void act_add_url_raw(struct strbuf *out, const char *s);

/* True for hop-by-hop headers (RFC 9110 7.6.1) and for headers the proxy
 * sets itself (Host, Content-Length, Expect). */
bool act_is_hop_header(const char *name);

/* --- autoscaler math (kpa.c): pure ------------------------------------------ */

#define ACT_KPA_MAX_BUCKETS 1800

struct act_kpa_config {
    int64_t tick_ms;          /* how often act_kpa_tick runs (2000) */
    int64_t stable_window_ms; /* 60000 */
    int64_t panic_window_ms;  /* 6000 */
    double panic_threshold;   /* panic when panic-window concurrency >= this x capacity (2.0) */
    double max_scale_down;    /* at most divide the ready instances by this per tick (2.0) */
};

struct act_kpa {
    double buckets[ACT_KPA_MAX_BUCKETS]; /* average concurrency per tick, a ring */
    int nbuckets;                        /* filled so far (<= ACT_KPA_MAX_BUCKETS) */
    int head;                            /* next slot to write */
    bool panicking;
    int64_t panic_since_ms; /* last tick that met the panic condition */
    uint32_t desired;       /* the last result */
    /* what each recent tick wanted before the scale-down delay, a ring */
    uint32_t wants[ACT_KPA_MAX_BUCKETS];
    int64_t wants_ms[ACT_KPA_MAX_BUCKETS];
    int nwants;
    int wants_head;
};

/* Starts with desired as the current scale (e.g. the app's stored
 * desired_instances), so that a restarted activator does not scale an app
 * down before it has observed a full stable window. */
void act_kpa_init(struct act_kpa *kpa, uint32_t desired);

/* One autoscaler tick. avg is the time-averaged concurrency (in-flight plus
 * held requests) over the tick that just ended; ready the instances ready
 * now; target the concurrency one instance should carry (> 0).
 * The count wanted is ceil(stable-window mean / target), or the panic
 * window's when that is higher and the app is panicking. Scale-down delay:
 * the result is the highest count wanted at any tick of the last
 * scale_down_delay_ms (at most ACT_KPA_MAX_BUCKETS ticks), so a shrink waits
 * that long after the load that justified the higher count. Returns the
 * desired instance count (0 only after a whole stable window with no request
 * plus the delay). */
uint32_t act_kpa_tick(struct act_kpa *kpa, const struct act_kpa_config *cfg, double avg,
                      uint32_t ready, double target, int64_t scale_down_delay_ms, int64_t now_ms);

/* Raises the desired count to at least want now, outside a tick (a request
 * held at zero; requests waiting at every instance's concurrency limit); the
 * scale-down delay counts from now. panic: the load is beyond what the ready
 * instances can take, so enter panic mode as a tick would (no scale down for
 * a stable window), which keeps the next ticks from undoing the bump while
 * the stable window's mean catches up. Returns the desired count. */
uint32_t act_kpa_bump(struct act_kpa *kpa, uint32_t want, bool panic, int64_t now_ms);

/* A new revision of the app: it starts with at least initial instances
 * (scale_initial_instances) and keeps them for a whole stable window, as a
 * restarted autoscaler does (its concurrency history is dropped; the count
 * already desired is kept when higher, so that an update under load does
 * not shrink the app). Returns the desired count. */
uint32_t act_kpa_revision(struct act_kpa *kpa, uint32_t initial, int64_t now_ms);

/* --- a request's next step (plan.c): pure -------------------------------------- */

/* A ready instance of an app, as the activator tracks it. */
struct act_inst {
    char address[64];
    int inflight;
    int64_t down_until_ms; /* a connect failed: skip it until then */
};

/* The app as the activator knows it when a request looks at it. */
struct act_plan_app {
    bool known;      /* read from PostgreSQL at least once */
    bool exists;     /* the app row exists */
    bool refreshing; /* another request is reading it now */
    int64_t fetched_ms;
    /* "public" apps answer on both listeners; "private" ones only on the
     * internal listener; "project" ones only there and only to callers that
     * are running instances of the same project */
    enum loom_visibility visibility;
    int64_t concurrency; /* per-instance limit */
    double target;       /* per-instance autoscaler target */
    const struct act_inst *insts;
    size_t ninsts;
    int inflight;         /* proxied now */
    int held;             /* waiting, this request included */
    int64_t last_cold_ms; /* when a held request last asked for instances */
    uint32_t desired;     /* the autoscaler's count */
};

/* The caller of a "project" app on the internal listener: not checked yet,
 * an instance of the project, not one, or PostgreSQL could not tell. */
enum act_caller { ACT_CALLER_UNCHECKED, ACT_CALLER_IN, ACT_CALLER_OUT, ACT_CALLER_ERROR };

/* The request so far. */
struct act_plan_req {
    bool internal;      /* came through the internal listener */
    bool held;          /* it waits (counted in the held-requests gauge) */
    bool admitted;      /* the app's visibility lets the caller in */
    bool lookup_failed; /* its last read of the app failed */
    bool shutting_down; /* the activator is stopping */
    enum act_caller caller;
    int64_t deadline_ms; /* it is held until then at most */
};

struct act_plan_limits {
    int64_t cache_ttl_ms;      /* how long a read of the app is used */
    int64_t hold_recheck_ms;   /* the same while the request is held */
    int64_t cold_republish_ms; /* held requests ask for instances again after this */
    int64_t max_held;          /* held requests per app at most */
    int64_t hold_timeout_ms;   /* sets the Retry-After of a 503 at the deadline */
};

enum act_step {
    ACT_STEP_REFRESH,      /* read the app from PostgreSQL, then plan again */
    ACT_STEP_CHECK_CALLER, /* ask PostgreSQL who the caller is, then plan again */
    ACT_STEP_ADMIT,        /* the caller may see the app: note it, plan again */
    ACT_STEP_FORWARD,      /* proxy to insts[inst] */
    ACT_STEP_WAIT,         /* hold until something changes or wait_until_ms */
    ACT_STEP_REPLY,        /* answer with reply */
};

enum act_reply {
    ACT_REPLY_NONE,
    ACT_REPLY_LOOKUP_FAILED,  /* 503: the app cannot be read */
    ACT_REPLY_SHUTTING_DOWN,  /* 503 */
    ACT_REPLY_NOT_FOUND,      /* 404, also for an app this caller may not see */
    ACT_REPLY_CALLER_UNKNOWN, /* 503: the caller of a project app cannot be checked */
    ACT_REPLY_TOO_MANY_HELD,  /* 503 at once: max_held requests wait already */
    ACT_REPLY_NO_INSTANCE,    /* 503 at the deadline: no instance became ready */
    ACT_REPLY_NO_CAPACITY,    /* 503 at the deadline: every instance stayed busy */
};

/* Held requests ask the autoscaler for instances now rather than at its
 * next tick: one when the app has none (scaled to zero), or what the load
 * needs when every instance is at its concurrency limit. */
enum act_ask { ACT_ASK_NONE, ACT_ASK_FROM_ZERO, ACT_ASK_FOR_LOAD };

struct act_plan {
    enum act_step step;
    size_t inst;          /* FORWARD */
    int64_t wait_until;   /* WAIT */
    bool start_hold;      /* the request starts to wait now: count it as held */
    enum act_ask ask;     /* before WAIT or a 503 at the deadline */
    uint32_t want;        /* ASK_FOR_LOAD: the instances the load needs */
    enum act_reply reply; /* REPLY */
    int status;           /* REPLY: the HTTP status */
    int retry_after;      /* REPLY: seconds for Retry-After, 0: none */
    const char *detail;   /* REPLY: the problem's detail (NULL for the 404) */
};

/* What the request does next, given the app and the request as they are at
 * now. The caller does what the step says (and start_hold and ask first),
 * then plans again, until FORWARD or REPLY. */
void act_plan_request(const struct act_plan_app *app, const struct act_plan_req *req,
                      const struct act_plan_limits *lim, int64_t now, struct act_plan *ret);

/* The instance a request goes to: under the concurrency limit, not marked
 * down, the least loaded (the first of equals). -1 when none can take it. */
int act_pick_instance(const struct act_inst *insts, size_t n, int64_t concurrency, int64_t now);

/* --- function calls (fnmap.c): pure ------------------------------------------ */

#include <jansson.h>

/* The parameters of a function call: the query's arguments (an object of
 * strings), then the members of a JSON object body on top; any other body
 * is the text __ow_body. __ow_method, __ow_path and __ow_headers say how it
 * was called (OpenWhisk's web action parameters). A new object. */
json_t *act_fn_params(const char *method, const char *path, json_t *query, json_t *headers,
                      const char *body, size_t len, const char *content_type);

/* The HTTP answer a function's result makes. A JSON object with statusCode,
 * headers or body is the answer itself (a body that is text is sent as it
 * is, anything else as JSON); any other result is the body, as JSON. */
struct act_fn_reply {
    int status;
    json_t *headers; /* {"Name": "value"} without Content-Type and framing ones, or NULL */
    char *body;      /* NULL: no body */
    size_t len;
    char *content_type;
};
int act_fn_reply_from_result(const char *text, size_t len, struct act_fn_reply *ret,
                             struct loom_err *err);
void act_fn_reply_release(struct act_fn_reply *r);

/* --- the service (ingress.c, proxy.c) ---------------------------------------- */

struct act_config {
    char *domain;                    /* --domain */
    int64_t hold_timeout_ms;         /* --hold-timeout */
    int64_t upstream_timeout_ms;     /* --upstream-timeout */
    int64_t cache_ttl_ms;            /* instance cache lifetime (1000) */
    int64_t stable_window_ms;        /* --stable-window */
    int64_t panic_window_ms;         /* --panic-window */
    int64_t max_held_per_app;        /* --max-held */
    char *internal_addr;             /* --internal-addr: the listener for private apps, or "" */
    char *secrets_key;               /* --secrets-key: opens the secrets functions' env names */
    int64_t activation_retention_ms; /* --activation-retention */
};

extern struct act_config act_cfg;

/* ingress.c, shared with functions.c */
struct loom_db;
/* A connection of the activator's small pool (blocks until one is free). */
struct loom_db *act_db_get(struct loom_err *err);
void act_db_put(struct loom_db *db);
/* The client's address, as text. */
void act_client_ip(struct loom_http_req *req, char *out, size_t n);
/* Whether the client's source address is a running app or function
 * instance of project (1) or not (0); -1 when PostgreSQL cannot tell. */
int act_caller_in_project(struct loom_http_req *req, const char *project, struct loom_err *err);
/* Counts an answer in loom_activator_requests_total. */
/* A problem answer (with Retry-After when retry_after > 0), counted. */
void act_reply_problem(struct loom_http_req *req, int status, int retry_after, const char *detail);
void act_count_reply(int status);
/* The service is stopping: held requests give up. */
bool act_shutting_down(void);
/* Publishes loom.sched.wake. */
void act_wake_scheduler(void);

/* usage.c: requests that reached an app, for metering */
void act_usage_request(const char *project, const char *app);
/* Writes the counts so far to usage_requests (kept for the next time when
 * that fails). */
void act_usage_flush(struct loom_db *db);

/* functions.c */
/* Serves a call of project's function name; path is what follows its
 * address (for __ow_path). internal: through the internal listener. */
void act_fn_handle(struct loom_http_req *req, const char *project, const char *name,
                   const char *path, bool internal);
/* Stops idle instances and those of older generations. */
void act_fn_tick(void);
/* A free stem cell of runtime is running: calls waiting for one look now. */
void act_fn_stem_ready(const char *runtime);
/* Starts the activation writer (activations older than retention_ms go). */
int act_fn_start(int64_t activation_retention_ms, struct loom_err *err);
/* Writes what is left and frees the function table. */
void act_fn_stop(void);

int act_start(struct loom_service *svc, struct loom_err *err);
void act_tick(struct loom_service *svc);
void act_stop(struct loom_service *svc);
bool act_ready(struct loom_service *svc);
/* The catch-all HTTP handler. */
void act_handle(struct loom_http_req *req);

/* One upstream exchange. */
struct act_upstream_resp {
    long status;
    struct strbuf body;
    struct strbuf headers; /* "Name: value\r\n" lines as received, hop-by-hop removed */
    char *content_type;
};

void act_upstream_resp_release(struct act_upstream_resp *resp);

enum act_proxy_result {
    ACT_PROXY_OK,      /* resp is filled */
    ACT_PROXY_CONNECT, /* could not connect: nothing was sent, safe to retry elsewhere */
    ACT_PROXY_FAILED,  /* failed after (maybe) sending: 502 */
    ACT_PROXY_TIMEOUT, /* 504 */
};

/* Sends req to http://address + upstream_path (already escaped, with query)
 * over a kept-alive connection. extra_headers are "Name: value" lines added
 * after the client's (minus hop-by-hop ones). An exchange that takes longer
 * than timeout_ms is ACT_PROXY_TIMEOUT, and its upstream connection is
 * closed (never reused). */
enum act_proxy_result act_proxy(struct loom_http_req *req, const char *address,
                                const char *upstream_path, const char *const *extra_headers,
                                size_t nextra, int64_t timeout_ms, struct act_upstream_resp *resp,
                                struct loom_err *err);

/* POSTs a JSON body to http://address + path over the same kept-alive
 * connections (a function runtime's /init and /run). */
enum act_proxy_result act_call(const char *address, const char *path, const char *body, size_t len,
                               int64_t timeout_ms, struct act_upstream_resp *resp,
                               struct loom_err *err);

int act_proxy_global_init(struct loom_err *err);
void act_proxy_global_cleanup(void);

#endif
