/* loom-activator: HTTP ingress, request holding and autoscaling for apps;
 * the calls of functions. */
#include "activator.h"
#include "service.h"

static const struct loom_opt opts[] = {
    {"domain", "LOOM_ACTIVATOR_DOMAIN", LOOM_OPT_STRING, &act_cfg.domain, "loom.localhost", 0, 0,
     "apps answer on <app>.<project>.<domain>, functions on <fn>.<project>.fn.<domain>"},
    {"hold-timeout", "LOOM_ACTIVATOR_HOLD_TIMEOUT", LOOM_OPT_DURATION, &act_cfg.hold_timeout_ms,
     "30s", 100, 3600000, "how long a request waits for an instance before 503"},
    {"upstream-timeout", "LOOM_ACTIVATOR_UPSTREAM_TIMEOUT", LOOM_OPT_DURATION,
     &act_cfg.upstream_timeout_ms, "300s", 100, 3600000,
     "limit on one proxied request for apps without scale_request_timeout"},
    {"internal-addr", "LOOM_ACTIVATOR_INTERNAL_ADDR", LOOM_OPT_STRING, &act_cfg.internal_addr, "",
     0, 0,
     "a second listener for private and project apps (bind it where only the platform's "
     "network reaches, e.g. the bridges' gateway address); empty: none"},
    {"cache-ttl", "LOOM_ACTIVATOR_CACHE_TTL", LOOM_OPT_DURATION, &act_cfg.cache_ttl_ms, "1s", 10,
     60000, "how long an app's instance list is used before it is read again"},
    {"stable-window", "LOOM_ACTIVATOR_STABLE_WINDOW", LOOM_OPT_DURATION, &act_cfg.stable_window_ms,
     "60s", 2000, 3600000, "autoscaler averaging window (and the idle time before scale to zero)"},
    {"panic-window", "LOOM_ACTIVATOR_PANIC_WINDOW", LOOM_OPT_DURATION, &act_cfg.panic_window_ms,
     "6s", 2000, 600000, "autoscaler short window for bursts"},
    {"max-held", "LOOM_ACTIVATOR_MAX_HELD", LOOM_OPT_INT, &act_cfg.max_held_per_app, "1000", 1,
     1000000, "requests held per app at most; more get 503 at once"},
    {"secrets-key", "LOOM_SECRETS_KEY", LOOM_OPT_STRING, &act_cfg.secrets_key, NULL, 0, 0,
     "AES-256-GCM key that opens the secrets functions take variables from, the API's key "
     "(unset: such functions cannot start)"},
    {"activation-retention", "LOOM_ACTIVATOR_ACTIVATION_RETENTION", LOOM_OPT_DURATION,
     &act_cfg.activation_retention_ms, "168h", 60000, 31536000000LL,
     "function activation records older than this are deleted"},
};

static const struct loom_http_route routes[] = {
    {"*", "/*", act_handle},
};

static const struct loom_service_def def = {
    .name = "activator",
    .default_addr = "127.0.0.1:8081",
    .tick_ms = 2000,
    .http_threads = 0, /* thread per connection: a held request blocks only its own */
    .max_body = 32u << 20,
    .opts = opts,
    .nopts = sizeof(opts) / sizeof(opts[0]),
    .routes = routes,
    .nroutes = sizeof(routes) / sizeof(routes[0]),
    .needs_db = true,
    .start = act_start,
    .ready = act_ready,
    .tick = act_tick,
    .stop = act_stop,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
