/* loom-scheduler: places job indices and app instances on nodes; one leader
 * (lease in PostgreSQL), hot standbys. See sched.h. */
#include "sched.h"

#include "service.h"

static struct sched sched;

static const struct loom_opt opts[] = {
    {"lease-ttl", "LOOM_SCHEDULER_LEASE_TTL", LOOM_OPT_DURATION, &sched.lease_ttl_ms, "5s", 1000,
     600000, "how long a leader's lease lasts without renewal"},
    {"lease-renew", "LOOM_SCHEDULER_LEASE_RENEW", LOOM_OPT_DURATION, &sched.renew_ms, "1s", 100,
     300000, "how often the lease is renewed (or a standby tries to take it)"},
    {"node-timeout", "LOOM_SCHEDULER_NODE_TIMEOUT", LOOM_OPT_DURATION, &sched.node_timeout_ms,
     "10s", 1000, 3600000,
     "a node silent this long is lost and its instances replaced; its agent stops its job "
     "instances itself well before (the node lease, about 57% of this)"},
    {"health-settle", "LOOM_SCHEDULER_HEALTH_SETTLE", LOOM_OPT_DURATION, &sched.health_settle_ms,
     "60s", 0, 86400000,
     "a node drained because its health checks failed is ready again once they pass this long"},
    {"batch", "LOOM_SCHEDULER_BATCH", LOOM_OPT_INT, &sched.batch_max, "2000", 1, 100000,
     "most instances placed in one transaction"},
    {"resend", "LOOM_SCHEDULER_RESEND", LOOM_OPT_DURATION, &sched.resend_ms, "2s", 100, 600000,
     "unacknowledged assigns and pending stops are sent again after this"},
    {"retry-backoff", "LOOM_SCHEDULER_RETRY_BACKOFF", LOOM_OPT_DURATION, &sched.retry_backoff_ms,
     "500ms", 0, 600000,
     "a failed index waits this long before its first retry, doubling per retry up to 60s "
     "(0: retry at once)"},
    {"stem-cells", "LOOM_SCHEDULER_STEM_CELLS", LOOM_OPT_INT, &sched.stem_cells, "1", 0, 64,
     "idle pre-started containers each ready node keeps of each function runtime, for the first "
     "calls of functions (0: none; a first call then waits for one to start)"},
    {"secrets-key", "LOOM_SECRETS_KEY", LOOM_OPT_STRING, &sched.secrets_key, NULL, 0, 0,
     "AES-256-GCM key that opens secrets, 64 hex characters, the API's key (unset: instances "
     "that name a secret fail)"},
};

static const struct loom_service_def def = {
    .name = "scheduler",
    .default_addr = "127.0.0.1:0",
    .tick_ms = 200,
    .opts = opts,
    .nopts = sizeof(opts) / sizeof(opts[0]),
    .needs_db = true,
    .ctx = &sched,
    .start = sched_start,
    .ready = sched_ready,
    .tick = sched_tick,
    .stop = sched_stop,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
