/* loom-agent: the node's health checks, run by the housekeeping thread every
 * --health-interval: disk and memory pressure, the container runtime
 * answering, the GPUs' device nodes and nvidia-smi (for GPUs found on the
 * host), and an operator's script. What they find goes out with every
 * heartbeat; the scheduler drains the node while it is there and puts the
 * node back once it has been healthy for a while. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "log.h"
#include "proc.h"
#include "strbuf.h"
#include "util.h"

static void add(struct strbuf *sb, const char *what)
{
    if (sb->len)
        strbuf_addstr(sb, "; ");
    strbuf_addstr(sb, what);
}

/* The first line of a program's message, at most n bytes. */
static void first_line(const char *msg, char *buf, size_t n)
{
    size_t len = strcspn(msg, "\n");
    snprintf(buf, n, "%.*s", (int)(len < n ? len : n - 1), msg);
}

static void check_disk(struct agent *a, struct strbuf *sb)
{
    struct statvfs sv;
    if (a->o.health_min_disk_pct <= 0 || statvfs(a->o.state_dir, &sv) < 0 || sv.f_blocks == 0)
        return;
    int64_t pct = (int64_t)(sv.f_bavail * 100 / sv.f_blocks);
    if (pct >= a->o.health_min_disk_pct)
        return;
    char what[4400];
    snprintf(what, sizeof(what), "disk pressure: %" PRId64 "%% free on %s (under %" PRId64 "%%)",
             pct, a->o.state_dir, a->o.health_min_disk_pct);
    add(sb, what);
}

static void check_memory(struct agent *a, struct strbuf *sb)
{
    _cleanup_free_ char *mi = NULL;
    if (a->o.health_min_memory_pct <= 0 || loom_read_file("/proc/meminfo", &mi, NULL, NULL) < 0)
        return;
    const char *t = strstr(mi, "MemTotal:"), *v = strstr(mi, "MemAvailable:");
    if (!t || !v)
        return;
    long long total = strtoll(t + 9, NULL, 10), avail = strtoll(v + 13, NULL, 10);
    if (total <= 0 || avail * 100 / total >= a->o.health_min_memory_pct)
        return;
    char what[160];
    snprintf(what, sizeof(what), "memory pressure: %lld%% available (under %" PRId64 "%%)",
             avail * 100 / total, a->o.health_min_memory_pct);
    add(sb, what);
}

/* Runs argv with a deadline; a failure adds what, then why. */
static void check_program(const char *const *argv, int64_t limit_ms, const char *what,
                          struct strbuf *sb)
{
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_free_ char *out = NULL;
    if (loom_run_until(argv, NULL, NULL, loom_mono_ms() + limit_ms, &out, &err) == 0)
        return;
    char line[300], problem[400];
    first_line(err.msg, line, sizeof(line));
    snprintf(problem, sizeof(problem), "%s: %s", what, line);
    add(sb, problem);
}

static void check_runtime(struct agent *a, struct strbuf *sb)
{
    char root[4200];
    snprintf(root, sizeof(root), "%s/runc", a->o.state_dir);
    const char *argv[] = {a->o.runtime, "--root", root, "list", "-q", NULL};
    check_program(argv, 10000, "container runtime not answering", sb);
}

/* GPUs found on the host (configured ones are the operator's word). */
static void check_gpus(struct agent *a, struct strbuf *sb)
{
    if (!a->gpus_detected || a->ngpus == 0)
        return;
    for (int i = 0; i < a->ngpus; i++) {
        if (access(a->gpus[i].path, F_OK) == 0)
            continue;
        char what[300];
        snprintf(what, sizeof(what), "GPU %s: %s is gone", a->gpus[i].id, a->gpus[i].path);
        add(sb, what);
    }
    const char *argv[] = {"/usr/bin/nvidia-smi", "-L", NULL};
    if (access(argv[0], X_OK) == 0)
        check_program(argv, 10000, "nvidia-smi failed", sb);
}

/* Its exit status and its own words (stderr, else stdout), or its time. */
static void check_script(struct agent *a, struct strbuf *sb)
{
    if (!a->o.health_script || !a->o.health_script[0])
        return;
    const char *argv[] = {a->o.health_script, NULL};
    check_program(argv, a->o.health_ms < 30000 ? a->o.health_ms : 30000, "health script", sb);
}

void agent_health_check(struct agent *a)
{
    struct strbuf sb = STRBUF_INIT;
    check_disk(a, &sb);
    check_memory(a, &sb);
    check_runtime(a, &sb);
    check_gpus(a, &sb);
    check_script(a, &sb);
    char now[AGENT_HEALTH_MAX];
    snprintf(now, sizeof(now), "%s", sb.len ? sb.buf : "");
    strbuf_release(&sb);
    pthread_mutex_lock(&a->mu);
    bool changed = strcmp(now, a->health) != 0;
    if (changed)
        memcpy(a->health, now, sizeof(now));
    pthread_mutex_unlock(&a->mu);
    if (changed && now[0])
        log_warn("node unhealthy: %s", now);
    else if (changed)
        log_info("node healthy again");
}
