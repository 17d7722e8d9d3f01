/* The life of a Loom service process, shared by all seven.
 *
 * loom_service_main parses the common options (--pg-dsn, --nats-url,
 * --http-addr, --log-level) plus the service's own, connects to PostgreSQL and
 * NATS (waiting for them), serves /livez, /readyz, /metrics and the service's
 * routes on --http-addr, calls start, then calls tick every tick_ms until
 * SIGTERM or SIGINT. On a signal it stops accepting HTTP, calls stop (finish
 * in-flight work), drains NATS and returns the process exit code.
 *
 *   static const struct loom_service_def def = {
 *       .name = "scheduler", .start = sched_start, .tick = sched_tick, ...
 *   };
 *   int main(int argc, char **argv) { return loom_service_main(&def, argc, argv); }
 */
#ifndef LOOM_SERVICE_H
#define LOOM_SERVICE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus.h"
#include "config.h"
#include "db.h"
#include "err.h"
#include "http.h"

struct loom_service {
    const char *name;   /* "api" */
    char *pg_dsn;       /* LOOM_PG_DSN */
    char *nats_url;     /* LOOM_NATS_URL */
    char *http_addr;    /* LOOM_<NAME>_ADDR, e.g. LOOM_API_ADDR */
    int64_t tick_ms;    /* from the definition, or --tick */
    struct loom_db *db; /* the main thread's connection (start, tick, stop) */
    struct loom_bus *bus;
    struct loom_http_server *http;
    volatile sig_atomic_t stopping;
    void *ctx;   /* the service's own state, from the definition */
    char **rest; /* non-option arguments */
    int nrest;
};

struct loom_service_def {
    const char *name;
    const char *default_addr; /* e.g. "127.0.0.1:8080"; port 0 = any free port */
    int64_t tick_ms;          /* 0: 1000 */
    int http_threads;         /* 0: thread per connection */
    size_t max_body;
    const struct loom_opt *opts; /* the service's own options, or NULL */
    size_t nopts;
    const struct loom_http_route *routes; /* served beside the health endpoints */
    size_t nroutes;
    bool needs_db;    /* false: never connects to PostgreSQL */
    bool accept_args; /* non-option arguments allowed */
    void *ctx;
    /* After connections, before serving. Non-zero fails the start. */
    int (*start)(struct loom_service *svc, struct loom_err *err);
    /* Extra readiness condition beyond PostgreSQL and NATS being up. */
    bool (*ready)(struct loom_service *svc);
    void (*tick)(struct loom_service *svc);
    /* On SIGTERM, after HTTP has stopped accepting: finish in-flight work. */
    void (*stop)(struct loom_service *svc);
};

/* Returns 0 after a clean stop, 1 when the start failed (the reason is logged
 * once). It calls nats_CloseAndWait() on the way out, after the bus is closed: do
 * not use NATS after it returns. A second SIGTERM/SIGINT while stopping exits
 * at once with status 1. */
int loom_service_main(const struct loom_service_def *def, int argc, char **argv);

/* What /readyz answers: PostgreSQL (when the service needs it) and NATS are
 * connected, and the service's own ready hook agrees. */
bool loom_service_ready(struct loom_service *svc);

/* The running service (for handlers that need the bus); NULL before start. */
struct loom_service *loom_service_current(void);

/* Sleeps up to ms, returning early when the service is asked to stop or
 * loom_service_wake is called (from any thread). */
void loom_service_sleep(struct loom_service *svc, int64_t ms);
void loom_service_wake(struct loom_service *svc);

/* A database connection for the calling thread (opened on first use, closed
 * at thread exit), for HTTP handlers and bus handlers. NULL with err when
 * PostgreSQL cannot be reached. */
struct loom_db *loom_service_thread_db(struct loom_err *err);

#endif
