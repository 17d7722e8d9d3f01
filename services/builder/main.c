/* loom-builder: build runs, source to image (see builder.h). */
#include "builder.h"
#include "service.h"

static const struct loom_opt opts[] = {
    {"registry", "LOOM_REGISTRY", LOOM_OPT_STRING, &builder.registry, NULL, 0, 0,
     "host:port of the platform's registry: sources, stacks, caches and images"},
    {"workers", "LOOM_BUILDER_WORKERS", LOOM_OPT_INT, &builder.workers, "2", 1, 64,
     "build runs carried out at once by this replica"},
    {"work-dir", "LOOM_BUILDER_WORK_DIR", LOOM_OPT_STRING, &builder.work_dir, "/var/tmp", 0, 0,
     "where runs keep their source and layers while they last"},
    {"stale", "LOOM_BUILDER_STALE", LOOM_OPT_DURATION, &builder.stale_ms, "10s", 2000, 3600000,
     "a running build whose builder has been silent this long is taken again"},
    {"attempts", "LOOM_BUILDER_ATTEMPTS", LOOM_OPT_INT, &builder.max_attempts, "2", 1, 10,
     "how many builders may take a run whose builder stopped, before it fails"},
    {"npm-registry", "LOOM_BUILDER_NPM_REGISTRY", LOOM_OPT_STRING, &builder.npm_registry, NULL, 0,
     0, "the npm registry steps fetch from (unset: npm's own)"},
    {"pip-index", "LOOM_BUILDER_PIP_INDEX", LOOM_OPT_STRING, &builder.pip_index, NULL, 0, 0,
     "a Python package index steps may use (unset: vendored wheels only)"},
    {"go-proxy", "LOOM_BUILDER_GO_PROXY", LOOM_OPT_STRING, &builder.go_proxy, NULL, 0, 0,
     "GOPROXY for Go steps (unset: off, vendor/ and the standard library only)"},
    {"ca-file", "LOOM_BUILDER_CA_FILE", LOOM_OPT_STRING, &builder.ca_file, NULL, 0, 0,
     "a PEM bundle of the certificate authorities steps trust when they fetch dependencies "
     "(a proxy's; unset: the stack's own)"},
    {"secrets-key", "LOOM_SECRETS_KEY", LOOM_OPT_STRING, &builder.secrets_key, NULL, 0, 0,
     "the API's key of secrets (64 hex characters): opens a build's source_secret"},
    {"git-file", "LOOM_BUILDER_GIT_FILE", LOOM_OPT_BOOL, &builder.git_file, "false", 0, 0,
     "allow file:// git sources (a path on the builder's machine: tests, one-machine setups)"},
};

static const struct loom_service_def def = {
    .name = "builder",
    .default_addr = "127.0.0.1:0",
    .tick_ms = 1000,
    .http_threads = 2,
    .opts = opts,
    .nopts = sizeof(opts) / sizeof(opts[0]),
    .needs_db = true,
    .start = builder_start,
    .tick = builder_tick,
    .stop = builder_stop,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
