/* loom-agent: the options, and the service hooks that start and stop the
 * agent's threads. Commands are in commands.c, report outboxes in report.c,
 * registration and heartbeats in node.c, usage samples in usage.c, restart
 * adoption in adopt.c, the per-instance lifecycle in instance.c. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "util.h"

static struct agent g_agent;

const struct loom_opt agent_opts[] = {
    {"node-name", "LOOM_NODE_NAME", LOOM_OPT_STRING, &g_agent.o.node_name, NULL, 0, 0,
     "node name (default: the hostname)"},
    {"node-address", "LOOM_NODE_ADDRESS", LOOM_OPT_STRING, &g_agent.o.node_address, "127.0.0.1", 0,
     0, "address the activator reaches instances through"},
    {"state-dir", "LOOM_AGENT_STATE_DIR", LOOM_OPT_STRING, &g_agent.o.state_dir, NULL, 0, 0,
     "agent state directory (required)"},
    {"subnet", "LOOM_AGENT_SUBNET", LOOM_OPT_STRING, &g_agent.o.subnet, "10.88.0.0/24", 0, 0,
     "container subnet (CIDR)"},
    {"bridge", "LOOM_AGENT_BRIDGE", LOOM_OPT_STRING, &g_agent.o.bridge, "loom0", 0, 0,
     "bridge interface name"},
    {"cgroup-parent", "LOOM_AGENT_CGROUP_PARENT", LOOM_OPT_STRING, &g_agent.o.cgroup_parent, NULL,
     0, 0, "cgroup (relative to the agent's) holding instances (default: loom-<node>)"},
    {"runtime", "LOOM_AGENT_RUNTIME", LOOM_OPT_STRING, &g_agent.o.runtime, "runc", 0, 0,
     "OCI runtime"},
    {"cni-path", "LOOM_AGENT_CNI_PATH", LOOM_OPT_STRING, &g_agent.o.cni_path, "/usr/lib/cni", 0, 0,
     "CNI plugin directory"},
    {"image-cache-size", "LOOM_AGENT_IMAGE_CACHE_SIZE", LOOM_OPT_SIZE, &g_agent.o.image_cache_size,
     "10Gi", 0, 0, "image cache size"},
    {"insecure-registries", "LOOM_AGENT_INSECURE_REGISTRIES", LOOM_OPT_STRING, &g_agent.o.insecure,
     NULL, 0, 0, "registries (host[:port],...) reached over plain http"},
    {"cpu-millis", "LOOM_AGENT_CPU_MILLIS", LOOM_OPT_INT, &g_agent.o.cpu_millis, "0", 0, INT64_MAX,
     "allocatable cpu in millicores (0: detect)"},
    {"memory", "LOOM_AGENT_MEMORY", LOOM_OPT_SIZE, &g_agent.o.memory_bytes, "0", 0, 0,
     "allocatable memory (0: detect)"},
    {"labels", "LOOM_AGENT_LABELS", LOOM_OPT_STRING, &g_agent.o.labels, NULL, 0, 0,
     "node labels k=v,..."},
    {"gpus", "LOOM_AGENT_GPUS", LOOM_OPT_STRING, &g_agent.o.gpus, NULL, 0, 0,
     "GPUs id:model,... (default: detect /dev/nvidiaN)"},
    {"usage-interval", "LOOM_AGENT_USAGE_INTERVAL", LOOM_OPT_DURATION, &g_agent.o.usage_ms, "5s",
     100, 3600000, "usage sample interval"},
    {"usage-resend", "LOOM_AGENT_USAGE_RESEND", LOOM_OPT_DURATION, &g_agent.o.usage_resend_ms,
     "30s", 1000, 3600000,
     "send a usage sample again when metering has not said it committed it after this "
     "(then twice as long, up to 16 times)"},
    {"log-rate", "LOOM_AGENT_LOG_RATE", LOOM_OPT_SIZE, &g_agent.o.log_rate, "2Mi", 0, 0,
     "bytes of output an instance may write a second (in bursts of --log-burst); the rest is "
     "dropped, with a marker line saying how much; 0: no limit"},
    {"log-burst", "LOOM_AGENT_LOG_BURST", LOOM_OPT_SIZE, &g_agent.o.log_burst, "16Mi", 0, 0,
     "bytes of output an instance may write at once beyond its rate"},
    {"log-max-disk", "LOOM_AGENT_LOG_MAX_DISK", LOOM_OPT_SIZE, &g_agent.o.log_max_disk, "256Mi", 0,
     0,
     "disk an instance's output not yet shipped may take; beyond, lines are dropped; 0: no "
     "limit"},
    {"heartbeat-interval", "LOOM_AGENT_HEARTBEAT_INTERVAL", LOOM_OPT_DURATION, &g_agent.o.hb_ms,
     "1s", 100, 60000, "heartbeat interval"},
    {"userns", "LOOM_AGENT_USERNS", LOOM_OPT_STRING, &g_agent.o.userns, "auto", 0, 0,
     "user namespaces: auto (where the host can), on (required), off"},
    {"userns-ranges", "LOOM_AGENT_USERNS_RANGES", LOOM_OPT_STRING, &g_agent.o.userns_ranges,
     "/var/lib/loom/userns-ranges", 0, 0,
     "file of the projects' host id ranges, shared by the agents of a host"},
    {"userns-base", "LOOM_AGENT_USERNS_BASE", LOOM_OPT_INT, &g_agent.o.userns_base, "1048576",
     65536, 4294836224LL, "first host id given to a project (a multiple of 65536)"},
    {"health-interval", "LOOM_AGENT_HEALTH_INTERVAL", LOOM_OPT_DURATION, &g_agent.o.health_ms,
     "10s", 100, 3600000, "how often the node's health checks run"},
    {"health-script", "LOOM_AGENT_HEALTH_SCRIPT", LOOM_OPT_STRING, &g_agent.o.health_script, NULL,
     0, 0,
     "an operator's check, run at each health interval: a non-zero exit (its message says why) "
     "drains the node until it passes again for a while"},
    {"health-min-disk-free", "LOOM_AGENT_HEALTH_MIN_DISK_FREE", LOOM_OPT_INT,
     &g_agent.o.health_min_disk_pct, "5", 0, 99,
     "percent of the state dir's file system that must be free, else the node is unhealthy (0: "
     "no check)"},
    {"health-min-memory-free", "LOOM_AGENT_HEALTH_MIN_MEMORY_FREE", LOOM_OPT_INT,
     &g_agent.o.health_min_memory_pct, "5", 0, 99,
     "percent of memory that must be available, else the node is unhealthy (0: no check)"},
    {"finished-retention", "LOOM_AGENT_FINISHED_RETENTION", LOOM_OPT_DURATION,
     &g_agent.o.retention_ms, "10m", 0, 0, "how long finished instance dirs (logs) are kept"},
};
const size_t agent_nopts = LOOM_ARRAY_SIZE(agent_opts);

/* ---- service hooks ------------------------------------------------------------ */

/* Whether every directory above path lets others through (x for others):
 * a container's root is nobody on the host. */
static int walkable_to(const char *path, struct loom_err *err)
{
    _cleanup_free_ char *p = realpath(path, NULL);
    if (!p)
        return loom_err_sys(err, errno, "could not resolve \"%s\"", path);
    for (char *slash = strrchr(p, '/'); slash; slash = strrchr(p, '/')) {
        *slash = 0;
        const char *dir = p[0] ? p : "/";
        struct stat st;
        if (stat(dir, &st) < 0)
            return loom_err_sys(err, errno, "could not stat \"%s\"", dir);
        if (!(st.st_mode & S_IXOTH))
            return loom_err_set(err, LOOM_EUNAVAIL,
                                "\"%s\" (above the state dir) is closed to other users "
                                "(mode %o): a container's root could not reach its rootfs",
                                dir, (unsigned)(st.st_mode & 07777));
        if (!p[0])
            break;
    }
    return 0;
}

/* Decides --userns: the probe runs on the layer cache's file system. Runc's
 * init, as the container's root (an unmapped host id), must walk from / to
 * the rootfs: the state dir and instances/ become 0711 (no listing). */
static int setup_userns(struct agent *a, struct loom_err *err)
{
    const char *mode = a->o.userns;
    if (strcmp(mode, "off") == 0)
        return 0;
    if (strcmp(mode, "auto") != 0 && strcmp(mode, "on") != 0)
        return loom_err_set(err, LOOM_EINVAL, "--userns must be auto, on or off, not \"%s\"", mode);
    if (a->o.userns_base % 65536 != 0)
        return loom_err_set(err, LOOM_EINVAL, "--userns-base must be a multiple of 65536");
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/images/userns-probe", a->o.state_dir);
    struct loom_err perr = LOOM_ERR_INIT;
    if (walkable_to(a->o.state_dir, &perr) < 0 || userns_probe(dir, &perr) < 0) {
        if (strcmp(mode, "on") == 0)
            return loom_err_set(err, LOOM_EUNAVAIL,
                                "user namespaces asked for (--userns on), but: %s", perr.msg);
        log_warn("user namespaces off: %s", perr.msg);
        return 0;
    }
    const char *dirs[] = {a->o.state_dir, "instances"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(dirs); i++) {
        char p[4200];
        if (i == 0)
            snprintf(p, sizeof(p), "%s", dirs[i]);
        else
            snprintf(p, sizeof(p), "%s/%s", a->o.state_dir, dirs[i]);
        if (chmod(p, 0711) < 0)
            return loom_err_sys(err, errno, "could not open \"%s\" to user namespaces", p);
    }
    a->userns = true;
    log_info("user namespaces on: each project's containers get 65536 host ids from %s",
             a->o.userns_ranges);
    return 0;
}

int agent_start(struct loom_service *svc, struct loom_err *err)
{
    struct agent *a = &g_agent;
    a->svc = svc;
    if (!a->o.state_dir || !a->o.state_dir[0])
        return loom_err_set(err, LOOM_EINVAL, "--state-dir (LOOM_AGENT_STATE_DIR) is required");
    if (!a->o.node_name || !a->o.node_name[0]) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        free(a->o.node_name);
        a->o.node_name = strdup(host);
    }
    if (!a->o.cgroup_parent || !a->o.cgroup_parent[0]) {
        free(a->o.cgroup_parent);
        if (asprintf(&a->o.cgroup_parent, "loom-%s", a->o.node_name) < 0)
            abort();
    }
    if (strchr(a->o.cgroup_parent, '/') || a->o.cgroup_parent[0] == '.')
        return loom_err_set(err, LOOM_EINVAL, "--cgroup-parent must be a single relative name");
    if (a->o.runtime[0] != '/') {
        /* runc is exec'd by path from threads: resolve it once */
        char p[512];
        if (!agent_find_prog(a->o.runtime, p, sizeof(p)))
            return loom_err_set(err, LOOM_EINVAL, "runtime \"%s\" not found", a->o.runtime);
        free(a->o.runtime);
        a->o.runtime = strdup(p);
    }
    const char *subdirs[] = {"instances", "runc", "cni", "netns", "images"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(subdirs); i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", a->o.state_dir, subdirs[i]);
        if (loom_mkdir_p(p, 0700, err) < 0)
            return -1;
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &ca);
    pthread_cond_init(&a->report_cond, &ca);
    pthread_mutex_init(&a->usage_mu, NULL);
    pthread_mutex_init(&a->usage_wake_mu, NULL);
    pthread_cond_init(&a->usage_wake, &ca);
    pthread_condattr_destroy(&ca);

    char p[4200];
    snprintf(p, sizeof(p), "%s/epoch", a->o.state_dir);
    _cleanup_free_ char *et = NULL;
    if (loom_read_file(p, &et, NULL, NULL) == 0)
        a->epoch = strtoll(et, NULL, 10);
    loom_uuid4(a->boot_id);
    agent_detect_inventory(a);
    a->cni_conf = cni_bridge_config(a->o.node_name, a->o.bridge, a->o.subnet, a->o.state_dir);

    snprintf(p, sizeof(p), "%s/images", a->o.state_dir);
    struct image_store_opts io = {
        .dir = p, .max_bytes = a->o.image_cache_size, .insecure_hosts = a->o.insecure};
    if (image_store_open(&io, &a->images, err) < 0)
        return loom_err_wrap(err, "image store");
    if (setup_userns(a, err) < 0)
        return -1;

    static const double buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120};
    a->m_running = loom_metric_gauge("loom_agent_instances_running", NULL,
                                     "instances whose process is running");
    a->m_start = loom_metric_histogram("loom_agent_start_latency_seconds", NULL,
                                       "assign received to container process running", buckets,
                                       LOOM_ARRAY_SIZE(buckets));
    a->m_pulls = loom_metric_counter("loom_agent_image_gets_total", "result=\"ok\"",
                                     "image store gets (pulls or cache hits)");
    a->m_pull_fail = loom_metric_counter("loom_agent_image_gets_total", "result=\"error\"",
                                         "image store gets (pulls or cache hits)");
    a->m_pull_secs = loom_metric_histogram("loom_agent_image_get_seconds", NULL,
                                           "time to get an image (pull + unpack, or cached)",
                                           buckets, LOOM_ARRAY_SIZE(buckets));

    a->m_lease_out = loom_metric_counter(
        "loom_agent_lease_expired_total", NULL,
        "times the node lease ran out (no scheduler answered): job instances stopped");
    agent_lease_load(a);

    /* before adoption: an adopted instance's cursor may be in the outbox */
    if (agent_usage_open(a, err) < 0)
        return -1;
    pthread_mutex_lock(&a->mu);
    agent_adopt_all(a);
    pthread_mutex_unlock(&a->mu);
    instance_prepare(a);

    if (agent_subscribe_commands(a, err) < 0 || agent_subscribe_specialize(a, err) < 0)
        return -1;
    if (pthread_create(&a->reporter, NULL, agent_reporter_main, a) != 0 ||
        pthread_create(&a->housekeeping, NULL, agent_housekeeping_main, a) != 0 ||
        pthread_create(&a->usage_sender, NULL, agent_usage_sender_main, a) != 0)
        return loom_err_set(err, LOOM_EINTERNAL, "could not start threads");
    a->usage_sender_started = true;
    log_info("agent %s: state %s, bridge %s, subnet %s, cgroup parent %s", a->o.node_name,
             a->o.state_dir, a->o.bridge, a->o.subnet, a->o.cgroup_parent);
    return 0;
}

void agent_tick(struct loom_service *svc)
{
    (void)svc;
    struct agent *a = &g_agent;
    int running = 0;
    pthread_mutex_lock(&a->mu);
    for (struct instance *in = a->list; in; in = in->next)
        if (in->running && !in->exited)
            running++;
    pthread_mutex_unlock(&a->mu);
    if (a->m_running)
        loom_metric_set(a->m_running, running);
}

bool agent_ready(struct loom_service *svc)
{
    (void)svc;
    return g_agent.registered;
}

void agent_stop(struct loom_service *svc)
{
    (void)svc;
    struct agent *a = &g_agent;
    /* containers and shims keep running: the next agent adopts them */
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    pthread_cond_broadcast(&a->cond);
    pthread_cond_broadcast(&a->report_cond);
    pthread_mutex_unlock(&a->mu);
    loom_service_wake(svc);
    pthread_mutex_lock(&a->usage_wake_mu);
    pthread_cond_broadcast(&a->usage_wake);
    pthread_mutex_unlock(&a->usage_wake_mu);
    pthread_join(a->reporter, NULL);
    pthread_join(a->housekeeping, NULL);
    if (a->usage_sender_started)
        pthread_join(a->usage_sender, NULL);
    if (a->heartbeater_started)
        pthread_join(a->heartbeater, NULL);
    /* instance threads notice `stopping` within 100 ms; setup threads in the
     * middle of a pull are left to die with the process (adoption cleans
     * half-set-up instances) */
    for (int i = 0; i < 30; i++) {
        bool any = false;
        pthread_mutex_lock(&a->mu);
        for (struct instance *in = a->list; in; in = in->next)
            if (in->thread_running && !in->in_setup)
                any = true;
        pthread_mutex_unlock(&a->mu);
        if (!any)
            break;
        usleep(50000);
    }
}
