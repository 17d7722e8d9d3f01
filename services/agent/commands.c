/* loom-agent: the scheduler's commands (assign, stop, register again),
 * checked against the highest epoch seen. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "agent_int.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

/* Under a->mu. Returns false when epoch is older than one seen. */
static bool epoch_accept(struct agent *a, int64_t epoch)
{
    if (epoch < a->epoch)
        return false;
    if (epoch > a->epoch) {
        a->epoch = epoch;
        char path[4200], buf[32];
        snprintf(path, sizeof(path), "%s/epoch", a->o.state_dir);
        int n = snprintf(buf, sizeof(buf), "%" PRId64 "\n", epoch);
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_write_file_atomic(path, buf, (size_t)n, &err) < 0)
            log_error("%s", err.msg);
    }
    return true;
}

struct instance *agent_find(struct agent *a, const char *id)
{
    for (struct instance *in = a->list; in; in = in->next)
        if (strcmp(in->id, id) == 0)
            return in;
    return NULL;
}

static void on_assign(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct agent *a = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceAssign *as = (Loom__V1__InstanceAssign *)loom_bus_unpack(
        msg, &loom__v1__instance_assign__descriptor, &err);
    if (!as) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    int64_t received = loom_mono_ms();
    const char *refuse = NULL;
    bool stale = false;
    if (!agent_valid_id(as->instance_id))
        refuse = "invalid instance id";
    else if (!as->image || !as->image[0])
        refuse = "no image";
    else if ((as->kind == KIND_APP || as->kind == KIND_FUNCTION) &&
             (as->port == 0 || as->port > 65535))
        refuse = "an app or function needs a port from 1 to 65535";
    pthread_mutex_lock(&a->mu);
    if (!refuse && !epoch_accept(a, as->epoch)) {
        refuse = "stale epoch";
        stale = true;
    }
    if (!refuse && !agent_find(a, as->instance_id) && !a->stopping) {
        struct instance *in = agent_instance_new(a, (const uint8_t *)natsMsg_GetData(msg),
                                                 (size_t)natsMsg_GetDataLength(msg));
        in->assigned_mono = received;
        if (loom_mkdir_p(in->dir, 0700, &err) < 0 || agent_write_instance_json(a, in, &err) < 0) {
            log_error("instance %s: %s", in->id, err.msg);
            refuse = "could not write the instance state";
            instance_free(in);
        } else {
            agent_persist_reports(a, in);
            in->next = a->list;
            a->list = in;
            log_info("instance %s: assigned (%s, image %s)", in->id, agent_kind_name(as->kind),
                     as->image);
            instance_spawn(a, in, false);
        }
    }
    pthread_mutex_unlock(&a->mu);
    loom_bus_ack(bus, msg, refuse, stale);
    loom__v1__instance_assign__free_unpacked(as, NULL);
}

/* A stop for an instance this node does not hold (never received, or gone
 * with a wiped state dir): it is not running here, so say it stopped. The
 * wall clock as seq outranks any report sent for it before. Not persisted:
 * the scheduler resends the stop until a report lands. */
static void report_unknown_stopped(struct agent *a, const char *id)
{
    Loom__V1__InstanceReport r = LOOM__V1__INSTANCE_REPORT__INIT;
    r.instance_id = (char *)id;
    r.node = a->o.node_name;
    r.state = ST_STOPPED;
    r.ts_unix_ms = loom_now_ms();
    r.seq = (uint64_t)r.ts_unix_ms;
    r.reason = (char *)"not running on this node";
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_request_ack(a->svc->bus, LOOM_SUBJ_INSTANCE_REPORT, &r.base, 2000, NULL, &err) < 0)
        log_debug("instance %s: stopped report not acknowledged: %s", id, err.msg);
    else
        log_info("instance %s: stop for an instance not on this node, reported stopped", id);
}

static void on_reregister(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    (void)msg;
    struct agent *a = arg;
    a->reregister = true;
    loom_service_wake(a->svc);
}

static void on_stop(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct agent *a = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceStop *st =
        (Loom__V1__InstanceStop *)loom_bus_unpack(msg, &loom__v1__instance_stop__descriptor, &err);
    if (!st) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    pthread_mutex_lock(&a->mu);
    if (!epoch_accept(a, st->epoch)) {
        pthread_mutex_unlock(&a->mu);
        loom_bus_ack(bus, msg, "stale epoch", true);
        loom__v1__instance_stop__free_unpacked(st, NULL);
        return;
    }
    struct instance *in = agent_find(a, st->instance_id);
    if (in && !in->stop_requested) {
        in->stop_requested = true;
        in->stop_grace_ms = (int64_t)st->grace_seconds * 1000;
        snprintf(in->stop_reason, sizeof(in->stop_reason), "%s",
                 st->reason && st->reason[0] ? st->reason : "stopped on request");
        log_info("instance %s: stop requested (%s)", in->id, in->stop_reason);
        pthread_cond_broadcast(&a->cond);
    }
    pthread_mutex_unlock(&a->mu);
    loom_bus_ack(bus, msg, NULL, false);
    if (!in && agent_valid_id(st->instance_id))
        report_unknown_stopped(a, st->instance_id);
    loom__v1__instance_stop__free_unpacked(st, NULL);
}

int agent_subscribe_commands(struct agent *a, struct loom_err *err)
{
    char subj[256];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_ASSIGN_FMT, a->o.node_name);
    if (loom_bus_subscribe(a->svc->bus, subj, NULL, on_assign, a, err) < 0)
        return -1;
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_STOP_FMT, a->o.node_name);
    if (loom_bus_subscribe(a->svc->bus, subj, NULL, on_stop, a, err) < 0)
        return -1;
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_REREGISTER_FMT, a->o.node_name);
    if (loom_bus_subscribe(a->svc->bus, subj, NULL, on_reregister, a, err) < 0)
        return -1;
    return 0;
}
