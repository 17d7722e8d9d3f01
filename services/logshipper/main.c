/* loom-logshipper: container logs of this machine's agents into PostgreSQL
 * and NATS. */
#include "logshipper.h"
#include "service.h"

static const struct loom_opt opts[] = {
    {"agent-state-dir", "LOOM_AGENT_STATE_DIR", LOOM_OPT_STRING, &ls_cfg.state_dirs, NULL, 0, 0,
     "agent state directories to ship from (comma-separated)"},
    {"node-name", "LOOM_NODE_NAME", LOOM_OPT_STRING, &ls_cfg.node, NULL, 0, 0,
     "the node whose logs these are (default: the hostname)"},
    {"log-retention", "LOOM_LOG_RETENTION", LOOM_OPT_DURATION, &ls_cfg.retention_ms, "168h", 60000,
     3650LL * 86400000,
     "delete log lines older than this, unless `loom-admin logs retention` says otherwise"},
    {"retention-interval", "LOOM_LOGSHIPPER_RETENTION_INTERVAL", LOOM_OPT_DURATION,
     &ls_cfg.retention_every_ms, "1m", 1000, 86400000, "how often old lines are deleted"},
};

static const struct loom_service_def def = {
    .name = "logshipper",
    .default_addr = "127.0.0.1:0",
    .tick_ms = 1, /* ls_tick waits for inotify itself */
    .http_threads = 2,
    .opts = opts,
    .nopts = sizeof(opts) / sizeof(opts[0]),
    .needs_db = true,
    .start = ls_start,
    .tick = ls_tick,
    .stop = ls_stop,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
