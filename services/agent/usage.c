/* loom-agent: usage samples of running instances, through the durable
 * outbox (outbox.c) to JetStream, until metering says it committed them.
 *
 * Each instance has a cursor (instances/<id>/usage.json): the end of its
 * last sample and the cgroup's cpu counter then. A sample covers the time
 * since, and the cpu used since: so the samples of an instance add up to its
 * counter exactly, whatever was lost in between is covered by the next one,
 * and the last comes from exit.json, where the shim left the final counter.
 * A sample is put in the outbox (on disk) before the cursor moves; after a
 * crash between the two, the outbox's newest sample of the instance is the
 * cursor. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

#include "loom/v1/usage.pb-c.h"

#define USAGE_STREAM_MAX_AGE_MS (7LL * 24 * 3600 * 1000)

void usage_next_sample(struct usage_cursor *c, const struct usage_reading *rd,
                       Loom__V1__UsageSample *ret)
{
    uint64_t now = rd->now_ms > 0 ? (uint64_t)rd->now_ms : 0;
    c->seq = now > c->seq ? now : c->seq + 1;
    int64_t end = rd->now_ms > c->ts_ms ? rd->now_ms : c->ts_ms;
    ret->seq = c->seq;
    ret->start_unix_ms = c->ts_ms;
    ret->ts_unix_ms = end;
    ret->interval_ms = end - c->ts_ms;
    ret->cpu_usage_ns = rd->cpu_total_ns;
    ret->cpu_ns = rd->cpu_total_ns >= c->cpu_ns ? rd->cpu_total_ns - c->cpu_ns : 0;
    ret->memory_bytes = rd->mem_bytes;
    ret->memory_peak_bytes = rd->mem_peak_bytes;
    c->ts_ms = end;
    c->cpu_ns = rd->cpu_total_ns;
}

/* ---- the cursor ----------------------------------------------------------------- */

static int cursor_save(const struct instance *in, const struct usage_cursor *c,
                       struct loom_err *err)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/usage.json", in->dir);
    _cleanup_json_ json_t *j =
        json_pack("{s:I,s:I,s:I,s:b}", "seq", (json_int_t)c->seq, "ts", (json_int_t)c->ts_ms, "cpu",
                  (json_int_t)c->cpu_ns, "final", c->final);
    return agent_write_json(path, j, err);
}

static bool cursor_load(const struct instance *in, struct usage_cursor *ret)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/usage.json", in->dir);
    _cleanup_json_ json_t *j = loom_json_read_file(path, NULL);
    if (!j)
        return false;
    ret->seq = (uint64_t)json_integer_value(json_object_get(j, "seq"));
    ret->ts_ms = json_integer_value(json_object_get(j, "ts"));
    ret->cpu_ns = (uint64_t)json_integer_value(json_object_get(j, "cpu"));
    ret->final = json_is_true(json_object_get(j, "final"));
    return true;
}

void agent_usage_prepare(struct instance *in)
{
    struct usage_cursor c = {.ts_ms = loom_now_ms()};
    struct loom_err err = LOOM_ERR_INIT;
    if (cursor_save(in, &c, &err) < 0)
        log_warn("instance %s: usage cursor: %s", in->id, err.msg);
}

void agent_usage_start(struct agent *a, struct instance *in)
{
    struct usage_cursor c = {.ts_ms = loom_now_ms()};
    struct loom_err err = LOOM_ERR_INIT;
    if (cursor_save(in, &c, &err) < 0)
        log_warn("instance %s: usage cursor: %s", in->id, err.msg);
    pthread_mutex_lock(&a->usage_mu);
    in->usage = c;
    in->usage_ready = true;
    pthread_mutex_unlock(&a->usage_mu);
}

/* The cursor from now and the counter as it is: what the instance used
 * before (a stem cell's start and wait, for no project) is nobody's. */
static struct usage_cursor cursor_from_now(struct agent *a, const struct instance *in)
{
    struct cgroup_usage u = {0};
    char suffix[512];
    snprintf(suffix, sizeof(suffix), "%s/%s", a->o.cgroup_parent, in->id);
    cgroup_usage_of_child(suffix, &u, NULL);
    return (struct usage_cursor){.ts_ms = loom_now_ms(), .cpu_ns = u.cpu_ns};
}

void agent_usage_claimed(struct agent *a, struct instance *in)
{
    struct usage_cursor c = cursor_from_now(a, in);
    struct loom_err err = LOOM_ERR_INIT;
    pthread_mutex_lock(&a->usage_mu);
    if (in->usage_ready && !in->usage.final && in->usage.seq == 0) {
        c.seq = in->usage.seq;
        if (cursor_save(in, &c, &err) < 0)
            log_warn("instance %s: usage cursor: %s", in->id, err.msg);
        in->usage = c;
    }
    pthread_mutex_unlock(&a->usage_mu);
}

void agent_usage_adopt(struct agent *a, struct instance *in)
{
    struct usage_cursor c = {0};
    bool have = cursor_load(in, &c);
    uint64_t seq = 0;
    _cleanup_free_ uint8_t *data = NULL;
    size_t len = 0;
    if (a->outbox && usage_outbox_last(a->outbox, in->id, &seq, &data, &len) && seq > c.seq) {
        Loom__V1__UsageSample *s = loom__v1__usage_sample__unpack(NULL, len, data);
        if (s) {
            c.seq = s->seq;
            c.ts_ms = s->ts_unix_ms;
            c.cpu_ns = s->cpu_usage_ns;
            c.final = s->final;
            have = true;
            loom__v1__usage_sample__free_unpacked(s, NULL);
        }
    }
    if (!have) {
        /* started by an agent that kept no cursor: from now on, and from
         * the counter as it is (what ran before is not known) */
        c = cursor_from_now(a, in);
        log_warn("instance %s: no usage cursor; metering it from now", in->id);
    }
    pthread_mutex_lock(&a->usage_mu);
    in->usage = c;
    in->usage_ready = true;
    pthread_mutex_unlock(&a->usage_mu);
}

/* ---- samples into the outbox ------------------------------------------------------- */

static const char *gpu_model_of(struct agent *a, const struct instance *in)
{
    for (int i = 0; i < a->ngpus; i++)
        if (in->gpu_mask & (1ULL << i))
            return a->gpus[i].model;
    return "";
}

/* Takes the instance's next sample from rd into the outbox and moves its
 * cursor, unless its final sample is taken already. */
static void put_sample(struct agent *a, struct instance *in, const struct usage_reading *rd,
                       bool final)
{
    Loom__V1__InstanceAssign *as = in->assign;
    pthread_mutex_lock(&a->usage_mu);
    const char *project = instance_project(in);
    if (!in->usage_ready || in->usage.final || !project[0]) {
        pthread_mutex_unlock(&a->usage_mu);
        return;
    }
    struct usage_cursor c = in->usage;
    Loom__V1__UsageSample us = LOOM__V1__USAGE_SAMPLE__INIT;
    usage_next_sample(&c, rd, &us);
    /* a reading no container here could have made (another cgroup's) must
     * not move the cursor: the next good one covers the interval */
    uint64_t cpus = a->o.cpu_millis > 0 ? (uint64_t)a->o.cpu_millis / 1000 + 1 : 1024;
    if (us.cpu_ns > ((uint64_t)us.interval_ms + 1000) * 1000000 * cpus) {
        log_warn("instance %s: a cpu counter of %" PRIu64 " ns after %" PRIu64 " ns %" PRId64
                 " ms before cannot be its own; not metered",
                 in->id, rd->cpu_total_ns, in->usage.cpu_ns, us.interval_ms);
        pthread_mutex_unlock(&a->usage_mu);
        return;
    }
    c.final = final;
    us.final = final;
    us.instance_id = in->id;
    us.node = a->o.node_name;
    us.project = (char *)project;
    us.cpu_millis_alloc = as->cpu_millis;
    us.memory_bytes_alloc = as->memory_bytes;
    us.ephemeral_bytes_alloc = as->ephemeral_bytes;
    us.gpus = as->gpus;
    us.gpu_model = (char *)gpu_model_of(a, in);
    us.kind = (char *)agent_kind_name(as->kind);
    us.resource = as->kind == KIND_APP ? as->app : as->job_run;
    size_t len = loom__v1__usage_sample__get_packed_size(&us);
    _cleanup_free_ uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    loom__v1__usage_sample__pack(&us, buf);
    char id[USAGE_OUTBOX_ID_MAX];
    snprintf(id, sizeof(id), "%s:%" PRIu64, in->id, us.seq);
    struct loom_err err = LOOM_ERR_INIT;
    if (usage_outbox_put(a->outbox, id, buf, len, loom_now_ms(), &err) < 0) {
        /* the cursor stays: the next sample covers this interval too */
        log_warn("instance %s: usage sample: %s", in->id, err.msg);
    } else {
        in->usage = c;
        if (cursor_save(in, &c, &err) < 0)
            log_warn("instance %s: usage cursor: %s", in->id, err.msg);
    }
    pthread_mutex_unlock(&a->usage_mu);
    pthread_mutex_lock(&a->usage_wake_mu);
    pthread_cond_signal(&a->usage_wake);
    pthread_mutex_unlock(&a->usage_wake_mu);
}

void agent_usage_final(struct agent *a, struct instance *in, json_t *exit_json)
{
    json_t *cpu = json_object_get(exit_json, "cpu_usage_ns");
    json_t *at = json_object_get(exit_json, "finished_at");
    pthread_mutex_lock(&a->usage_mu);
    struct usage_reading rd = {
        .now_ms = json_is_integer(at) ? json_integer_value(at) : loom_now_ms(),
        .cpu_total_ns = in->usage.cpu_ns,
    };
    pthread_mutex_unlock(&a->usage_mu);
    if (json_is_integer(cpu))
        rd.cpu_total_ns = (uint64_t)json_integer_value(cpu);
    else
        log_warn("instance %s: the shim could not read the final cpu counter; the last "
                 "interval is metered without cpu",
                 in->id);
    rd.mem_peak_bytes =
        (uint64_t)json_integer_value(json_object_get(exit_json, "memory_peak_bytes"));
    put_sample(a, in, &rd, true);
}

void agent_sample_usage(struct agent *a)
{
    /* instances are freed only by retention, on this thread, so the
     * pointers stay valid outside the lock */
    pthread_mutex_lock(&a->mu);
    size_t n = 0;
    for (struct instance *in = a->list; in; in = in->next)
        n++;
    struct instance **v = calloc(n + 1, sizeof(*v));
    if (!v)
        abort();
    size_t k = 0;
    for (struct instance *in = a->list; in; in = in->next)
        if (in->running && !in->exited && in->init_pid > 0)
            v[k++] = in;
    pthread_mutex_unlock(&a->mu);
    for (size_t i = 0; i < k; i++) {
        /* the instance's own cgroup, by name: through its init's pid, an
         * init that exited but is not reaped yet shows the root cgroup's
         * counters */
        struct cgroup_usage u;
        char suffix[512];
        snprintf(suffix, sizeof(suffix), "%s/%s", a->o.cgroup_parent, v[i]->id);
        if (cgroup_usage_of_child(suffix, &u, NULL) < 0)
            continue; /* gone in between: the final sample comes from exit.json */
        struct usage_reading rd = {.now_ms = loom_now_ms(),
                                   .cpu_total_ns = u.cpu_ns,
                                   .mem_bytes = u.mem_bytes,
                                   .mem_peak_bytes = u.mem_peak_bytes};
        put_sample(a, v[i], &rd, false);
    }
    free(v);
}

/* ---- sending, and the commit notices --------------------------------------------- */

static bool ensure_usage_stream(struct agent *a)
{
    if (a->stream_ok)
        return true;
    const char *subjects[] = {"loom.usage.>"};
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_js_stream(a->svc->bus, LOOM_STREAM_USAGE, subjects, 1, USAGE_STREAM_MAX_AGE_MS,
                           &err) < 0) {
        log_warn("usage stream: %s", err.msg);
        return false;
    }
    a->stream_ok = true;
    return true;
}

void *agent_usage_sender_main(void *arg)
{
    struct agent *a = arg;
    char subject[256];
    snprintf(subject, sizeof(subject), LOOM_SUBJ_USAGE_FMT, a->o.node_name);
    bool failing = false;
    int64_t pause_until = 0;
    while (!a->stopping) {
        int64_t now = loom_now_ms();
        struct usage_outbox_entry e;
        if (now < pause_until || !usage_outbox_next_due(a->outbox, now, &e)) {
            int64_t due = usage_outbox_next_due_ms(a->outbox);
            if (due < pause_until)
                due = pause_until;
            int64_t wait = due - now;
            if (wait > 1000)
                wait = 1000;
            if (wait > 0) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_sec += wait / 1000;
                ts.tv_nsec += (wait % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_mutex_lock(&a->usage_wake_mu);
                if (!a->stopping)
                    pthread_cond_timedwait(&a->usage_wake, &a->usage_wake_mu, &ts);
                pthread_mutex_unlock(&a->usage_wake_mu);
            }
            continue;
        }
        struct loom_err err = LOOM_ERR_INIT;
        bool ok = ensure_usage_stream(a) && loom_bus_js_publish_raw(a->svc->bus, subject, e.data,
                                                                    e.len, e.id, NULL, &err) == 0;
        usage_outbox_sent(a->outbox, e.id, ok, loom_now_ms(), a->o.usage_resend_ms);
        if (!ok) {
            /* NATS or the stream is away: wait before the next, rather than
             * failing every sample in turn */
            if (!failing)
                log_warn("could not send usage sample %s: %s (%zu samples wait in the outbox)",
                         e.id, err.msg[0] ? err.msg : "no usage stream",
                         usage_outbox_count(a->outbox));
            failing = true;
            a->stream_ok = false;
            pause_until = loom_now_ms() + 1000;
        } else if (failing) {
            log_info("sending usage samples again (%zu in the outbox)",
                     usage_outbox_count(a->outbox));
            failing = false;
        } else if (e.attempts > 0) {
            log_debug("usage sample %s sent again (no commit notice yet)", e.id);
        }
        usage_outbox_entry_release(&e);
    }
    return NULL;
}

static void on_metered(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    struct agent *a = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__UsageCommitted *c = (Loom__V1__UsageCommitted *)loom_bus_unpack(
        msg, &loom__v1__usage_committed__descriptor, &err);
    if (!c) {
        log_warn("%s", err.msg);
        return;
    }
    for (size_t i = 0; i < c->n_ids; i++)
        usage_outbox_done(a->outbox, c->ids[i]);
    for (size_t i = 0; i < c->n_refused; i++)
        if (usage_outbox_done(a->outbox, c->refused[i]))
            log_warn("metering refused usage sample %s (see its log); dropped", c->refused[i]);
    loom__v1__usage_committed__free_unpacked(c, NULL);
}

int agent_usage_open(struct agent *a, struct loom_err *err)
{
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/usage-outbox", a->o.state_dir);
    if (usage_outbox_open(dir, &a->outbox, err) < 0)
        return loom_err_wrap(err, "usage outbox");
    size_t n = usage_outbox_count(a->outbox);
    if (n > 0)
        log_info("%zu usage samples in the outbox from before; sending them", n);
    char subject[256];
    snprintf(subject, sizeof(subject), LOOM_SUBJ_METERED_FMT, a->o.node_name);
    return loom_bus_subscribe(a->svc->bus, subject, NULL, on_metered, a, err);
}
