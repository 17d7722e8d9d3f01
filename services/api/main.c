/* loom-api: the public REST API (see api.h). */
#include <string.h>
#include <time.h>

#include "api.h"
#include "log.h"
#include "secretbox.h"
#include "service.h"
#include "util.h"

static const struct loom_opt api_opts[] = {
    {"activator-url", "LOOM_ACTIVATOR_URL", LOOM_OPT_STRING, &api_cfg.activator_url,
     "http://127.0.0.1:8081", 0, 0, "base URL of the activator, for app endpoints"},
    {"registry", "LOOM_REGISTRY", LOOM_OPT_STRING, &api_cfg.registry, NULL, 0, 0,
     "host:port of the platform's registry: uploads go there, and the images builds push "
     "when they name no registry"},
    {"max-upload", "LOOM_API_MAX_UPLOAD", LOOM_OPT_SIZE, &api_cfg.max_upload, "64M", 1,
     (int64_t)1 << 34, "the largest source upload (a tar.gz)"},
    {"max-upload-unpacked", "LOOM_API_MAX_UPLOAD_UNPACKED", LOOM_OPT_SIZE,
     &api_cfg.max_upload_unpacked, "1G", 1, (int64_t)1 << 40,
     "what one source upload may unpack to (a bigger one is refused as a bomb)"},
    {"secrets-key", "LOOM_SECRETS_KEY", LOOM_OPT_STRING, &api_cfg.secrets_key, NULL, 0, 0,
     "AES-256-GCM key for secrets, 64 hex characters (unset: secrets are disabled)"},
    {"logs-wait", "LOOM_API_LOGS_WAIT", LOOM_OPT_DURATION, &api_cfg.logs_wait_ms, "5s", 0, 60000,
     "how long a read of a finished instance's logs waits for the logshipper to have stored its "
     "last lines"},
    {"rate-limit", "LOOM_API_RATE_LIMIT", LOOM_OPT_INT, &api_cfg.rate_limit, "200", 0, 1000000,
     "requests a second per API key (bursts of twice that); 0 = no limit"},
};

static int api_start(struct loom_service *svc, struct loom_err *err)
{
    (void)svc;
    /* endpoints are built as <url>/apps/...: drop a trailing slash once here */
    size_t n = api_cfg.activator_url ? strlen(api_cfg.activator_url) : 0;
    while (n > 0 && api_cfg.activator_url[n - 1] == '/')
        api_cfg.activator_url[--n] = '\0';
    if (loom_secretbox_set_key(api_cfg.secrets_key, err) < 0)
        return -1;
    if (!api_cfg.secrets_key || !*api_cfg.secrets_key)
        log_warn("LOOM_SECRETS_KEY is not set: the secrets routes answer 503");
    return 0;
}

/* Under a stream of writes every one wakes this thread: waiting until
 * OUTBOX_GAP_MS after the previous pass lets one pass carry the events of
 * many writes (each pass costs a transaction and housekeeping that scans the
 * outbox). A lone write is published at once; a busy stream, within 50 ms. */
#define OUTBOX_GAP_MS 50

/* Publishes what the outbox holds: right after a write (the write wakes the
 * service) and on every tick for anything a crash left behind. */
static void api_tick(struct loom_service *svc)
{
    static int64_t last_ms;
    int64_t wait_ms = last_ms + OUTBOX_GAP_MS - loom_mono_ms();
    if (wait_ms > 0 && !svc->stopping) {
        struct timespec ts = {0, (long)wait_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    last_ms = loom_mono_ms();
    struct loom_err err = LOOM_ERR_INIT;
    int n;
    while ((n = api_outbox_publish(svc->db, &err)) >= 100)
        ;
    if (n < 0)
        log_warn("could not publish events: %s", err.msg);
    api_logs_heartbeat();
}

static const struct loom_service_def api_def = {
    .name = "api",
    .default_addr = "127.0.0.1:8080",
    .tick_ms = 1000,
    .http_threads = 4,
    .max_body = 1 << 20,
    .opts = api_opts,
    .nopts = sizeof(api_opts) / sizeof(api_opts[0]),
    .routes = api_routes,
    .needs_db = true,
    .start = api_start,
    .tick = api_tick,
};

int main(int argc, char **argv)
{
    struct loom_service_def def = api_def;
    def.nroutes = api_nroutes;
    def.spools = api_spools;
    def.nspools = api_nspools;
    return loom_service_main(&def, argc, argv);
}
