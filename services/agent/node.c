/* loom-agent: registration, heartbeats, and the housekeeping thread (usage
 * rounds, retention of finished instances). */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "agent_int.h"
#include "cleanup.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

#include "loom/v1/common.pb-c.h"
#include "loom/v1/node.pb-c.h"

static int do_register(struct agent *a, struct loom_err *err)
{
    Loom__V1__NodeRegister r = LOOM__V1__NODE_REGISTER__INIT;
    r.node = a->o.node_name;
    r.address = a->o.node_address;
    r.boot_id = a->boot_id;
    r.cpu_millis = a->o.cpu_millis;
    r.memory_bytes = a->o.memory_bytes;
    r.disk_bytes = a->disk_bytes;
    r.version = (char *)"0.1.0";
    r.subnet = a->o.subnet;
    Loom__V1__NodeRegister__LabelsEntry ents[32], *entp[32];
    _cleanup_free_ char *labels = a->o.labels ? strdup(a->o.labels) : NULL;
    for (char *s = labels, *tok; s && (tok = strsep(&s, ",")) && r.n_labels < 32;) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok)
            continue;
        *eq = 0;
        loom__v1__node_register__labels_entry__init(&ents[r.n_labels]);
        ents[r.n_labels].key = tok;
        ents[r.n_labels].value = eq + 1;
        entp[r.n_labels] = &ents[r.n_labels];
        r.n_labels++;
    }
    r.labels = entp;
    Loom__V1__GpuDevice gd[AGENT_MAX_GPUS], *gdp[AGENT_MAX_GPUS];
    for (int i = 0; i < a->ngpus; i++) {
        loom__v1__gpu_device__init(&gd[i]);
        gd[i].id = a->gpus[i].id;
        gd[i].model = a->gpus[i].model;
        gd[i].path = a->gpus[i].path;
        gdp[i] = &gd[i];
    }
    r.n_gpus = (size_t)a->ngpus;
    r.gpus = gdp;
    return loom_bus_request_ack(a->svc->bus, LOOM_SUBJ_NODE_REGISTER, &r.base, 2000, NULL, err);
}

/* ---- the node lease ------------------------------------------------------------
 * A scheduler answers each heartbeat once PostgreSQL has it: the node will
 * not be declared lost, nor its instances placed elsewhere, before lease_ms
 * after the heartbeat was sent. When no answer renews it in time (the bus
 * is down, this node is cut off, no scheduler can write), the agent stops
 * its job instances itself, before the scheduler may start them again
 * elsewhere: no job index runs twice at once. Apps and functions keep
 * serving; a second copy of them elsewhere is harmless. */

static void lease_path(const struct agent *a, char *buf, size_t n)
{
    snprintf(buf, n, "%s/lease", a->o.state_dir);
}

void agent_lease_load(struct agent *a)
{
    char p[4200];
    lease_path(a, p, sizeof(p));
    _cleanup_free_ char *text = NULL;
    if (loom_read_file(p, &text, NULL, NULL) < 0)
        return;
    char *end;
    long long until = strtoll(text, &end, 10);
    if (end == text || until <= 0) {
        log_warn("%s: not a lease, ignored", p);
        return;
    }
    a->lease_armed = true;
    a->lease_until = loom_mono_ms() + (until - loom_now_ms());
    log_info("node lease of the previous agent: %lld ms left", (long long)(until - loom_now_ms()));
}

/* A heartbeat sent at sent (monotonic) was answered with lease_ms. */
static void lease_renew(struct agent *a, int64_t sent, int64_t lease_ms)
{
    if (lease_ms <= 0)
        return;
    int64_t until = sent + lease_ms;
    pthread_mutex_lock(&a->mu);
    bool back = a->lease_out;
    if (!a->lease_armed || until > a->lease_until)
        a->lease_until = until;
    a->lease_armed = true;
    a->lease_out = false;
    until = a->lease_until;
    pthread_mutex_unlock(&a->mu);
    if (back)
        log_info("node lease renewed: a scheduler answers again");
    /* the next agent, if this one dies, inherits the lease; no fsync, as
     * for instance.json: after a machine crash nothing runs to fence */
    char p[4200], buf[32];
    lease_path(a, p, sizeof(p));
    int n = snprintf(buf, sizeof(buf), "%" PRId64 "\n", loom_now_ms() + (until - loom_mono_ms()));
    struct loom_err err = LOOM_ERR_INIT;
    if (agent_write_file_nosync(p, buf, (size_t)n, &err) < 0)
        log_warn("%s", err.msg);
}

/* Stops every job instance once the lease has run out. */
static void lease_check(struct agent *a)
{
    int64_t now = loom_mono_ms();
    size_t stopped = 0;
    pthread_mutex_lock(&a->mu);
    if (!a->lease_armed || a->lease_out || now < a->lease_until) {
        pthread_mutex_unlock(&a->mu);
        return;
    }
    a->lease_out = true;
    for (struct instance *in = a->list; in; in = in->next) {
        if (in->done || in->terminal || in->stop_requested || in->assign->kind == KIND_APP ||
            in->assign->kind == KIND_FUNCTION)
            continue;
        in->stop_requested = true;
        in->stop_grace_ms = 0;
        snprintf(in->stop_reason, sizeof(in->stop_reason),
                 "node lease expired: no scheduler answered for %" PRId64
                 " ms, the work may be placed elsewhere",
                 now - a->lease_until);
        stopped++;
    }
    if (stopped)
        pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->mu);
    loom_metric_add(a->m_lease_out, 1);
    log_warn("node lease expired (no scheduler answered a heartbeat in time): %zu job instances "
             "stopped",
             stopped);
}

static void heartbeat(struct agent *a)
{
    Loom__V1__NodeHeartbeat hb = LOOM__V1__NODE_HEARTBEAT__INIT;
    hb.node = a->o.node_name;
    hb.boot_id = a->boot_id;
    hb.seq = ++a->hb_seq;
    pthread_mutex_lock(&a->mu);
    hb.epoch_seen = a->epoch;
    size_t n = 0;
    for (struct instance *in = a->list; in; in = in->next)
        n++;
    char **ids = calloc(n + 1, sizeof(char *));
    if (!ids)
        abort();
    size_t k = 0;
    for (struct instance *in = a->list; in; in = in->next)
        if (!in->done)
            ids[k++] = strdup(in->id);
    char health[AGENT_HEALTH_MAX];
    memcpy(health, a->health, sizeof(health));
    /* no longer than the lease has left: it is checked when this returns */
    int64_t sent = loom_mono_ms(), wait = a->o.hb_ms;
    if (a->lease_armed && !a->lease_out && a->lease_until - sent < wait)
        wait = a->lease_until - sent > 50 ? a->lease_until - sent : 50;
    pthread_mutex_unlock(&a->mu);
    hb.instance_ids = ids;
    hb.n_instance_ids = k;
    hb.health_problem = health;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__NodeLease *l = NULL;
    if (loom_bus_request(a->svc->bus, LOOM_SUBJ_NODE_HEARTBEAT, &hb.base,
                         &loom__v1__node_lease__descriptor, (int)wait, (ProtobufCMessage **)&l,
                         &err) < 0) {
        log_debug("heartbeat: %s", err.msg);
    } else {
        lease_renew(a, sent, l->lease_ms);
        loom__v1__node_lease__free_unpacked(l, NULL);
    }
    for (size_t i = 0; i < k; i++)
        free(ids[i]);
    free(ids);
}

static void retention(struct agent *a)
{
    int64_t now = loom_now_ms();
    pthread_mutex_lock(&a->mu);
    for (struct instance **pp = &a->list; *pp;) {
        struct instance *in = *pp;
        if (in->done && !in->thread_running && now - in->done_at_ms >= a->o.retention_ms) {
            *pp = in->next;
            struct loom_err err = LOOM_ERR_INIT;
            if (loom_rm_rf(in->dir, &err) < 0)
                log_warn("instance %s: %s", in->id, err.msg);
            else
                log_debug("instance %s: removed after retention", in->id);
            instance_free(in);
            continue;
        }
        pp = &in->next;
    }
    pthread_mutex_unlock(&a->mu);
}

/* Heartbeats, and registering again when the scheduler asks. */
static void *heartbeat_main(void *arg)
{
    struct agent *a = arg;
    int64_t next_hb = 0;
    while (!a->stopping) {
        if (a->reregister) {
            struct loom_err err = LOOM_ERR_INIT;
            a->reregister = false;
            if (do_register(a, &err) < 0) {
                log_warn("register again: %s", err.msg);
                a->reregister = true;
            } else {
                log_info("registered node %s again at the scheduler's request", a->o.node_name);
            }
        }
        int64_t now = loom_mono_ms();
        if (now >= next_hb) {
            next_hb = now + a->o.hb_ms;
            heartbeat(a);
        }
        lease_check(a);
        int64_t wait = next_hb - loom_mono_ms();
        if (wait > 0)
            loom_service_sleep(a->svc, wait > 200 ? 200 : wait);
    }
    return NULL;
}

void *agent_housekeeping_main(void *arg)
{
    struct agent *a = arg;
    int64_t next_reg = 0;
    while (!a->stopping && !a->registered) {
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_mono_ms() >= next_reg) {
            if (do_register(a, &err) == 0) {
                a->registered = true;
                log_info("registered node %s (%" PRId64 " millicpu, %" PRId64 " bytes, %d gpus)",
                         a->o.node_name, a->o.cpu_millis, a->o.memory_bytes, a->ngpus);
                break;
            }
            log_warn("register: %s", err.msg);
            next_reg = loom_mono_ms() + 1000;
        }
        lease_check(a); /* adopted instances live on the previous agent's lease */
        loom_service_sleep(a->svc, 200);
    }
    /* the heartbeat has its own thread: a usage round waits for a JetStream
     * ack per instance, and a late heartbeat gets the node declared lost */
    if (!a->stopping && pthread_create(&a->heartbeater, NULL, heartbeat_main, a) == 0)
        a->heartbeater_started = true;
    else if (!a->stopping)
        log_error("could not start the heartbeat thread");
    int64_t next_usage = 0, next_ret = 0, next_health = 0;
    while (!a->stopping) {
        int64_t now = loom_mono_ms();
        if (now >= next_usage) {
            agent_sample_usage(a);
            next_usage = now + a->o.usage_ms;
        }
        if (now >= next_ret) {
            retention(a);
            next_ret = now + 1000;
        }
        if (now >= next_health) {
            agent_health_check(a);
            next_health = loom_mono_ms() + a->o.health_ms;
        }
        int64_t until = next_ret < next_usage ? next_ret : next_usage;
        until = next_health < until ? next_health : until;
        int64_t wait = until - loom_mono_ms();
        if (wait > 0)
            loom_service_sleep(a->svc, wait > 1000 ? 1000 : wait);
    }
    return NULL;
}
