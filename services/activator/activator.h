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
#include "strbuf.h"

struct loom_service;
struct loom_http_req;

#define ACT_NAME_MAX 64 /* a DNS label and its NUL */

/* --- routing (route.c): pure functions ------------------------------------- */

/* Parses a Host header value "<app>.<project>.<domain>[:port]" (case does not
 * matter; labels come back lowercase). Returns 0 and fills project and app
 * (ACT_NAME_MAX bytes each) when host names an app under domain, else -1. */
int act_parse_host(const char *host, const char *domain, char *ret_project, char *ret_app);

/* Parses the path form "/apps/<project>/<app>[/<rest>]". Returns 0 with
 * project and app filled and *ret_rest pointing into path at what follows
 * "/<app>/" ("" when nothing follows), else -1. */
int act_parse_path(const char *path, char *ret_project, char *ret_app, const char **ret_rest);

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

/* --- the service (ingress.c, proxy.c) ---------------------------------------- */

struct act_config {
    char *domain;                /* --domain */
    int64_t hold_timeout_ms;     /* --hold-timeout */
    int64_t upstream_timeout_ms; /* --upstream-timeout */
    int64_t cache_ttl_ms;        /* instance cache lifetime (1000) */
    int64_t stable_window_ms;    /* --stable-window */
    int64_t panic_window_ms;     /* --panic-window */
    int64_t max_held_per_app;    /* --max-held */
    char *internal_addr;         /* --internal-addr: the listener for private apps, or "" */
};

extern struct act_config act_cfg;

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

int act_proxy_global_init(struct loom_err *err);
void act_proxy_global_cleanup(void);

#endif
