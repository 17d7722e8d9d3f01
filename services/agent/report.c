/* loom-agent: the report outboxes, persisted per instance, and the thread
 * that sends them to the scheduler in order. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

int agent_persist_reports(struct agent *a, struct instance *in)
{
    (void)a;
    _cleanup_json_ json_t *pending = json_array();
    for (struct report *r = in->outbox; r; r = r->next) {
        _cleanup_free_ char *h = loom_hex_alloc(r->data, r->len);
        json_array_append_new(pending, json_string(h));
    }
    _cleanup_json_ json_t *j = json_pack("{s:I,s:b,s:O}", "seq", (json_int_t)in->seq, "terminal",
                                         in->terminal, "pending", pending);
    char path[4200];
    snprintf(path, sizeof(path), "%s/reports", in->dir);
    struct loom_err err = LOOM_ERR_INIT;
    /* rename without fsync: it survives a crash of the agent (the page cache
     * stays), and a crash of the machine takes the containers with it; the
     * scheduler's database is the record and re-sends what was not acked.
     * An fsync here cost ~5 ms per report on the start path. */
    if (agent_write_json_nosync(path, j, &err) < 0) {
        log_error("instance %s: %s", in->id, err.msg);
        return -1;
    }
    return 0;
}

void agent_report(struct agent *a, struct instance *in, Loom__V1__InstanceState state,
                  const struct report_extra *x)
{
    Loom__V1__InstanceReport r = LOOM__V1__INSTANCE_REPORT__INIT;
    pthread_mutex_lock(&a->mu);
    if (in->terminal) {
        pthread_mutex_unlock(&a->mu);
        return;
    }
    r.instance_id = in->id;
    r.node = a->o.node_name;
    r.state = state;
    r.ts_unix_ms = loom_now_ms();
    r.seq = ++in->seq;
    if (x) {
        r.exit_code = x->exit_code;
        r.reason = (char *)(x->reason ? x->reason : "");
        r.address = (char *)(x->address ? x->address : "");
        r.oom_killed = x->oom_killed;
        r.timed_out = x->timed_out;
        r.permanent = x->permanent;
        r.output_digest = (char *)(x->output_digest ? x->output_digest : "");
        r.output_diff_id = (char *)(x->output_diff_id ? x->output_diff_id : "");
        r.output_size = x->output_size;
    }
    struct report *rep = calloc(1, sizeof(*rep));
    if (!rep)
        abort();
    rep->seq = r.seq;
    rep->len = loom__v1__instance_report__get_packed_size(&r);
    rep->data = malloc(rep->len + 1);
    if (!rep->data)
        abort();
    loom__v1__instance_report__pack(&r, rep->data);
    struct report **t = &in->outbox;
    while (*t)
        t = &(*t)->next;
    *t = rep;
    if (state >= ST_SUCCEEDED)
        in->terminal = true;
    if (state == ST_RUNNING)
        in->running = true;
    agent_persist_reports(a, in);
    pthread_cond_broadcast(&a->cond);
    agent_kick_reporter(a);
    pthread_mutex_unlock(&a->mu);
    log_info(
        "instance %s: report seq %" PRIu64 " %s%s%s", in->id, r.seq,
        protobuf_c_enum_descriptor_get_value(&loom__v1__instance_state__descriptor, state)->name,
        x && x->reason ? " " : "", x && x->reason ? x->reason : "");
}

/* Sends the head of every outbox, in order per instance; one failure holds
 * that instance's later reports back until the next round. */
void *agent_reporter_main(void *arg)
{
    struct agent *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stopping) {
        bool sent_any = false, failed = false;
        for (struct instance *in = a->list; in && !a->stopping; in = in->next) {
            while (in->outbox && !a->stopping) {
                struct report *r = in->outbox;
                uint8_t *copy = malloc(r->len + 1);
                if (!copy)
                    abort();
                memcpy(copy, r->data, r->len);
                size_t len = r->len;
                pthread_mutex_unlock(&a->mu);
                Loom__V1__InstanceReport *msg = loom__v1__instance_report__unpack(NULL, len, copy);
                free(copy);
                struct loom_err err = LOOM_ERR_INIT;
                int rc = msg ? loom_bus_request_ack(a->svc->bus, LOOM_SUBJ_INSTANCE_REPORT,
                                                    &msg->base, 2000, NULL, &err)
                             : 0;
                if (msg)
                    loom__v1__instance_report__free_unpacked(msg, NULL);
                pthread_mutex_lock(&a->mu);
                if (rc < 0) {
                    log_debug("instance %s: report not acknowledged: %s", in->id, err.msg);
                    failed = true;
                    break;
                }
                if (in->outbox == r) {
                    in->outbox = r->next;
                    free(r->data);
                    free(r);
                    agent_persist_reports(a, in);
                    pthread_cond_broadcast(&a->cond);
                }
                sent_any = true;
            }
        }
        (void)sent_any;
        bool pending = false;
        for (struct instance *in = a->list; in; in = in->next)
            if (in->outbox)
                pending = true;
        if (a->stopping)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (failed || pending) {
            ts.tv_sec += 1; /* resend after a second */
        } else {
            ts.tv_sec += 5;
        }
        a->report_kick = false;
        while (!a->stopping && !a->report_kick) {
            if (pthread_cond_timedwait(&a->report_cond, &a->mu, &ts) == ETIMEDOUT)
                break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

void agent_kick_reporter(struct agent *a)
{
    /* caller holds a->mu */
    a->report_kick = true;
    pthread_cond_signal(&a->report_cond);
}
