#include "service.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "httpc.h"
#include "log.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS 30000
#define BUS_DRAIN_MS 5000

static struct loom_service *current;
static const struct loom_service_def *current_def;

/* loom_service_sleep waits on this; signals and loom_service_wake broadcast it */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond;
static bool wake_pending;

static pthread_t signal_thread;
static sigset_t signal_set;
static volatile sig_atomic_t signal_thread_quit;

static __thread struct loom_db *thread_db;
static pthread_key_t thread_db_key;
static pthread_once_t thread_db_once = PTHREAD_ONCE_INIT;

struct loom_service *loom_service_current(void)
{
    return current;
}

void loom_service_wake(struct loom_service *svc)
{
    (void)svc;
    pthread_mutex_lock(&wake_lock);
    wake_pending = true;
    pthread_cond_broadcast(&wake_cond);
    pthread_mutex_unlock(&wake_lock);
}

void loom_service_sleep(struct loom_service *svc, int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&wake_lock);
    while (!wake_pending && !(svc && svc->stopping)) {
        if (pthread_cond_timedwait(&wake_cond, &wake_lock, &until) == ETIMEDOUT)
            break;
    }
    wake_pending = false;
    pthread_mutex_unlock(&wake_lock);
}

static void *signal_main(void *arg)
{
    struct loom_service *svc = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&signal_set, &sig) != 0)
            continue;
        if (signal_thread_quit)
            return NULL;
        if (svc->stopping) {
            log_warn("second %s while stopping: exiting now", strsignal(sig));
            _exit(1);
        }
        log_info("received %s, stopping", strsignal(sig));
        svc->stopping = 1;
        loom_service_wake(svc);
    }
}

static void thread_db_destroy(void *p)
{
    loom_db_close(p);
}

static void thread_db_key_create(void)
{
    pthread_key_create(&thread_db_key, thread_db_destroy);
}

struct loom_db *loom_service_thread_db(struct loom_err *err)
{
    if (thread_db)
        return thread_db;
    if (!current || !current_def || !current_def->needs_db) {
        loom_err_set(err, LOOM_EINTERNAL, "this service has no database");
        return NULL;
    }
    pthread_once(&thread_db_once, thread_db_key_create);
    struct loom_db *db;
    if (loom_db_open(current->pg_dsn ? current->pg_dsn : "", &db, err) < 0)
        return NULL;
    thread_db = db;
    pthread_setspecific(thread_db_key, db);
    return db;
}

/* The main thread does not run key destructors: close its connection by hand. */
static void close_own_thread_db(void)
{
    if (!thread_db)
        return;
    pthread_setspecific(thread_db_key, NULL);
    loom_db_close(thread_db);
    thread_db = NULL;
}

bool loom_service_ready(struct loom_service *svc)
{
    if (current_def->needs_db && !loom_db_ok(svc->db))
        return false;
    if (!loom_bus_connected(svc->bus))
        return false;
    return !current_def->ready || current_def->ready(svc);
}

static bool service_ready(void *arg)
{
    return loom_service_ready(arg);
}

static void env_name(char *out, size_t n, const char *service, const char *suffix)
{
    size_t w = (size_t)snprintf(out, n, "LOOM_");
    for (const char *p = service; *p && w + 1 < n; p++)
        out[w++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[w] = '\0';
    snprintf(out + w, n - w, "_%s", suffix);
}

int loom_service_main(const struct loom_service_def *def, int argc, char **argv)
{
    struct loom_service svc = {0};
    svc.name = def->name;
    svc.ctx = def->ctx;
    svc.tick_ms = def->tick_ms > 0 ? def->tick_ms : 1000;
    loom_log_init(def->name, LOOM_LOG_INFO);

    char addr_env[96], tick_env[96], tick_def[32];
    env_name(addr_env, sizeof(addr_env), def->name, "ADDR");
    env_name(tick_env, sizeof(tick_env), def->name, "TICK");
    snprintf(tick_def, sizeof(tick_def), "%lldms", (long long)svc.tick_ms);
    char *log_level = NULL;
    const struct loom_opt common[] = {
        {"pg-dsn", "LOOM_PG_DSN", LOOM_OPT_STRING, &svc.pg_dsn, NULL, 0, 0,
         "PostgreSQL connection string"},
        {"nats-url", "LOOM_NATS_URL", LOOM_OPT_STRING, &svc.nats_url, "nats://127.0.0.1:4222", 0, 0,
         "NATS server URL(s), comma-separated"},
        {"http-addr", addr_env, LOOM_OPT_ADDR, &svc.http_addr,
         def->default_addr ? def->default_addr : "127.0.0.1:0", 0, 0,
         "address to serve HTTP on (port 0: any free port)"},
        {"log-level", "LOOM_LOG_LEVEL", LOOM_OPT_STRING, &log_level, "info", 0, 0,
         "debug, info, warn or error"},
        {"tick", tick_env, LOOM_OPT_DURATION, &svc.tick_ms, tick_def, 1, 24 * 3600 * 1000,
         "interval of the service's periodic work"},
    };
    size_t ncommon = LOOM_ARRAY_SIZE(common);
    size_t nopts = ncommon + def->nopts;
    _cleanup_free_ struct loom_opt *opts = calloc(nopts, sizeof(*opts));
    if (!opts)
        abort();
    memcpy(opts, common, sizeof(common));
    if (def->nopts)
        memcpy(opts + ncommon, def->opts, def->nopts * sizeof(*opts));

    struct loom_err err = LOOM_ERR_INIT;
    bool help = false;
    if (loom_config_parse(opts, nopts, argc, argv, def->accept_args ? &svc.rest : NULL,
                          def->accept_args ? &svc.nrest : NULL, &help, &err) < 0) {
        log_error("%s", err.msg);
        return 1;
    }
    if (help) {
        char prog[64];
        snprintf(prog, sizeof(prog), "loom-%s", def->name);
        loom_config_usage(stdout, prog, opts, nopts);
        loom_config_release(opts, nopts);
        return 0;
    }
    enum loom_log_level level;
    if (loom_log_level_parse(log_level, &level) < 0) {
        log_error("invalid value \"%s\" for --log-level (LOOM_LOG_LEVEL): not one of debug, "
                  "info, warn, error",
                  log_level);
        loom_config_release(opts, nopts);
        return 1;
    }
    loom_log_set_level(level);

    /* Signals go to a dedicated thread: block them before any other thread
     * exists so that every thread inherits the mask. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&signal_set);
    sigaddset(&signal_set, SIGTERM);
    sigaddset(&signal_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signal_set, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wake_cond, &ca);
    pthread_condattr_destroy(&ca);
    loom_httpc_global_init();
    pthread_create(&signal_thread, NULL, signal_main, &svc);

    current = &svc;
    current_def = def;
    int rc = 1;

    if (def->needs_db) {
        log_info("connecting to PostgreSQL");
        /* retried here rather than with loom_db_open_wait so that a signal
         * ends the wait */
        int64_t deadline = loom_mono_ms() + CONNECT_TIMEOUT_MS;
        while (loom_db_open(svc.pg_dsn ? svc.pg_dsn : "", &svc.db, &err) < 0) {
            if (svc.stopping)
                goto stopped;
            if (loom_mono_ms() >= deadline) {
                log_error("%s", err.msg);
                goto out;
            }
            loom_service_sleep(&svc, 100);
        }
        log_info("connected to PostgreSQL");
    }
    if (svc.stopping)
        goto stopped;
    /* the URL may carry a user and password: log only what follows them */
    const char *at = strrchr(svc.nats_url, '@');
    log_info("connecting to NATS at %s", at ? at + 1 : svc.nats_url);
    char client_name[80];
    snprintf(client_name, sizeof(client_name), "loom-%s", def->name);
    int64_t bus_deadline = loom_mono_ms() + CONNECT_TIMEOUT_MS;
    while (loom_bus_connect(svc.nats_url, client_name, 1000, &svc.bus, &err) < 0) {
        if (svc.stopping)
            goto stopped;
        if (loom_mono_ms() >= bus_deadline || err.code == LOOM_EINVAL) {
            log_error("%s", err.msg);
            goto out;
        }
        loom_service_sleep(&svc, 100);
    }
    log_info("connected to NATS");
    if (svc.stopping)
        goto stopped;

    if (def->start && def->start(&svc, &err) < 0) {
        log_error("%s", err.msg[0] ? err.msg : "start failed");
        goto out;
    }

    const struct loom_http_server_opts hopts = {
        .addr = svc.http_addr,
        .max_body = def->max_body,
        .threads = def->http_threads,
        .routes = def->routes,
        .nroutes = def->nroutes,
        .arg = &svc,
        .ready = service_ready,
        .service = def->name,
        .log_requests = level == LOOM_LOG_DEBUG,
    };
    if (loom_http_server_start(&hopts, &svc.http, &err) < 0) {
        log_error("%s", err.msg);
        if (def->stop)
            def->stop(&svc);
        goto out;
    }
    {
        _cleanup_free_ char *host = NULL;
        uint16_t port;
        if (loom_parse_hostport(svc.http_addr, &host, &port) == 0)
            log_info("listening on http://%s%s%s:%u", strchr(host, ':') ? "[" : "", host,
                     strchr(host, ':') ? "]" : "", (unsigned)loom_http_server_port(svc.http));
    }

    while (!svc.stopping) {
        if (def->tick)
            def->tick(&svc);
        loom_service_sleep(&svc, svc.tick_ms);
    }

    log_info("stopping");
    loom_http_server_stop(svc.http);
    svc.http = NULL;
    if (def->stop)
        def->stop(&svc);
stopped:
    rc = 0;
out:
    loom_http_server_stop(svc.http);
    loom_bus_close(svc.bus, BUS_DRAIN_MS);
    close_own_thread_db();
    loom_db_close(svc.db);
    current = NULL;

    signal_thread_quit = 1;
    pthread_kill(signal_thread, SIGTERM);
    pthread_join(signal_thread, NULL);

    /* nats_CloseAndWait ends nats.c's library threads (and with them the
     * thread-local curl handles and database connections its handlers
     * opened); it comes after every connection is destroyed, and nothing
     * may use NATS after it. curl's global state goes last. */
    nats_CloseAndWait(2000);
    loom_httpc_global_cleanup();
    if (rc == 0)
        log_info("stopped");
    loom_config_release(opts, nopts);
    return rc;
}
