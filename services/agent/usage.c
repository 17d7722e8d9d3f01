/* loom-agent: usage samples of running instances, to JetStream. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent_int.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

#include "loom/v1/usage.pb-c.h"

static bool ensure_usage_stream(struct agent *a)
{
    if (a->stream_ok)
        return true;
    const char *subjects[] = {"loom.usage.>"};
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_js_stream(a->svc->bus, LOOM_STREAM_USAGE, subjects, 1, 7 * 24 * 3600 * 1000LL,
                           &err) < 0) {
        log_warn("usage stream: %s", err.msg);
        return false;
    }
    a->stream_ok = true;
    return true;
}

void agent_publish_usage(struct agent *a, struct instance *in, const struct cgroup_usage *u)
{
    if (!ensure_usage_stream(a))
        return;
    Loom__V1__UsageSample us = LOOM__V1__USAGE_SAMPLE__INIT;
    int64_t now = loom_now_ms();
    pthread_mutex_lock(&a->mu);
    /* the seq is the dedup id and must grow across agent restarts: the wall
     * clock in ms, kept strictly increasing per instance */
    in->usage_seq = (uint64_t)now > in->usage_seq ? (uint64_t)now : in->usage_seq + 1;
    us.seq = in->usage_seq;
    pthread_mutex_unlock(&a->mu);
    us.instance_id = in->id;
    us.node = a->o.node_name;
    us.project = (char *)instance_project(in);
    us.ts_unix_ms = now;
    us.interval_ms = a->o.usage_ms;
    us.cpu_usage_ns = u->cpu_ns;
    us.memory_bytes = u->mem_bytes;
    us.memory_peak_bytes = u->mem_peak_bytes;
    us.cpu_millis_alloc = in->assign->cpu_millis;
    us.memory_bytes_alloc = in->assign->memory_bytes;
    us.gpus = in->assign->gpus;
    char subject[256], msgid[128];
    snprintf(subject, sizeof(subject), LOOM_SUBJ_USAGE_FMT, a->o.node_name);
    snprintf(msgid, sizeof(msgid), "%s:%" PRIu64, in->id, us.seq);
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_js_publish(a->svc->bus, subject, &us.base, msgid, NULL, &err) < 0)
        log_warn("usage sample for %s: %s", in->id, err.msg);
}

void agent_sample_usage(struct agent *a)
{
    if (!ensure_usage_stream(a))
        return;
    /* instances are freed only by retention, on this thread, so the
     * pointers stay valid outside the lock */
    pthread_mutex_lock(&a->mu);
    size_t n = 0;
    for (struct instance *in = a->list; in; in = in->next)
        n++;
    struct instance **v = calloc(n + 1, sizeof(*v));
    pid_t *pids = calloc(n + 1, sizeof(*pids));
    if (!v || !pids)
        abort();
    size_t k = 0;
    for (struct instance *in = a->list; in; in = in->next)
        if (in->running && !in->exited && in->init_pid > 0) {
            pids[k] = in->init_pid;
            v[k++] = in;
        }
    pthread_mutex_unlock(&a->mu);
    for (size_t i = 0; i < k; i++) {
        struct cgroup_usage u;
        struct loom_err err = LOOM_ERR_INIT;
        if (cgroup_usage_of_pid(pids[i], &u, &err) < 0)
            continue; /* exited in between: the final sample comes from exit.json */
        agent_publish_usage(a, v[i], &u);
    }
    free(v);
    free(pids);
}
