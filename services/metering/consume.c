/* The durable pull consumer "metering" on LOOM_USAGE. A fetched batch is
 * written in one transaction and acknowledged only after COMMIT: a crash in
 * between redelivers, and the primary key makes the second insert a no-op. */
#include "metering.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bus.h"
#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

#define FETCH_BATCH 256
#define FETCH_TIMEOUT_MS 500
#define STREAM_MAX_AGE_MS (7LL * 24 * 3600 * 1000)

static natsSubscription *sub;
static struct loom_metric *m_stored, *m_dup, *m_bad, *m_fail;
static bool last_fetch_failed;

int meter_sample_check(const Loom__V1__UsageSample *s, struct loom_err *err)
{
    if (!loom_is_uuid(s->instance_id))
        return loom_err_set(err, LOOM_EINVAL, "instance_id \"%.40s\" is not a uuid",
                            s->instance_id ? s->instance_id : "");
    if (!s->node || !*s->node || strlen(s->node) > 253)
        return loom_err_set(err, LOOM_EINVAL, "node must be 1 to 253 characters");
    if (!s->project || !*s->project || strlen(s->project) > 63)
        return loom_err_set(err, LOOM_EINVAL, "project must be 1 to 63 characters");
    if (s->seq > INT64_MAX || s->cpu_usage_ns > INT64_MAX || s->memory_bytes > INT64_MAX ||
        s->memory_peak_bytes > INT64_MAX)
        return loom_err_set(err, LOOM_EINVAL, "a counter is out of range");
    if (s->ts_unix_ms <= 0 || s->ts_unix_ms > 32503680000000LL)
        return loom_err_set(err, LOOM_EINVAL, "ts_unix_ms %" PRId64 " is out of range",
                            s->ts_unix_ms);
    if (s->interval_ms < 0 || s->cpu_millis_alloc < 0 || s->memory_bytes_alloc < 0)
        return loom_err_set(err, LOOM_EINVAL, "a negative interval or allocation");
    return 0;
}

/* Returns 1 when stored, 0 when it was there already, -1 on error. */
static int store_sample(struct loom_db *db, const Loom__V1__UsageSample *s, struct loom_err *err)
{
    char seq[24], ts[24], iv[24], cpu[24], mem[24], peak[24], cpua[24], mema[24], gpus[16];
    snprintf(seq, sizeof(seq), "%" PRIu64, s->seq);
    snprintf(ts, sizeof(ts), "%" PRId64, s->ts_unix_ms);
    snprintf(iv, sizeof(iv), "%" PRId64, s->interval_ms);
    snprintf(cpu, sizeof(cpu), "%" PRIu64, s->cpu_usage_ns);
    snprintf(mem, sizeof(mem), "%" PRIu64, s->memory_bytes);
    snprintf(peak, sizeof(peak), "%" PRIu64, s->memory_peak_bytes);
    snprintf(cpua, sizeof(cpua), "%" PRId64, s->cpu_millis_alloc);
    snprintf(mema, sizeof(mema), "%" PRId64, s->memory_bytes_alloc);
    snprintf(gpus, sizeof(gpus), "%" PRIu32, s->gpus);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "INSERT INTO usage_samples (instance_id, seq, project_id, project, node, ts, "
        "interval_ms, cpu_usage_ns, memory_bytes, memory_peak_bytes, cpu_millis_alloc, "
        "memory_bytes_alloc, gpus) "
        "VALUES ($1::uuid, $2::bigint, coalesce((SELECT project_id FROM instances WHERE id = "
        "$1::uuid), (SELECT id FROM projects WHERE name = $3)), $3, $4, "
        "to_timestamp($5::bigint / 1000.0), $6, $7, $8, $9, $10, $11, $12) "
        "ON CONFLICT (instance_id, seq) DO NOTHING",
        s->instance_id, seq, s->project, s->node, ts, iv, cpu, mem, peak, cpua, mema, gpus);
    if (!res)
        return -1;
    return atoi(PQcmdTuples(res)) > 0 ? 1 : 0;
}

enum verdict { V_ACK, V_TERM, V_RETRY };

/* Writes the batch in one transaction. verdict[i] says what to do with
 * message i afterwards. */
static int store_batch(struct loom_db *db, natsMsg **msgs, int n, enum verdict *verdict,
                       Loom__V1__UsageSample **samples, struct loom_err *err)
{
    if (loom_db_begin(db, err) < 0)
        return -1;
    int stored = 0, dup = 0;
    for (int i = 0; i < n; i++) {
        if (verdict[i] != V_ACK)
            continue;
        int rc = store_sample(db, samples[i], err);
        if (rc < 0) {
            loom_db_rollback(db);
            return -1;
        }
        rc ? stored++ : dup++;
    }
    if (loom_db_commit(db, err) < 0)
        return -1;
    loom_metric_add(m_stored, stored);
    loom_metric_add(m_dup, dup);
    (void)msgs;
    return 0;
}

static void process(struct loom_service *svc, natsMsgList *list)
{
    int n = list->Count;
    enum verdict verdict[FETCH_BATCH];
    Loom__V1__UsageSample *samples[FETCH_BATCH] = {0};
    for (int i = 0; i < n; i++) {
        struct loom_err err = LOOM_ERR_INIT;
        natsMsg *m = list->Msgs[i];
        samples[i] =
            (Loom__V1__UsageSample *)loom_bus_unpack(m, &loom__v1__usage_sample__descriptor, &err);
        if (samples[i] && meter_sample_check(samples[i], &err) == 0) {
            verdict[i] = V_ACK;
            continue;
        }
        log_warn("dropping usage message on %s: %s", natsMsg_GetSubject(m), err.msg);
        loom_metric_add(m_bad, 1);
        verdict[i] = V_TERM;
    }

    struct loom_err err = LOOM_ERR_INIT;
    if (store_batch(svc->db, list->Msgs, n, verdict, samples, &err) < 0) {
        if (err.code == LOOM_EINVAL) {
            /* one sample PostgreSQL refuses must not block the rest: store
             * them one by one and terminate the ones refused */
            for (int i = 0; i < n; i++) {
                if (verdict[i] != V_ACK)
                    continue;
                struct loom_err e1 = LOOM_ERR_INIT;
                int rc = store_sample(svc->db, samples[i], &e1);
                if (rc >= 0) {
                    loom_metric_add(rc ? m_stored : m_dup, 1);
                } else if (e1.code == LOOM_EINVAL) {
                    log_warn("dropping usage sample %s:%" PRIu64 ": %s", samples[i]->instance_id,
                             samples[i]->seq, e1.msg);
                    loom_metric_add(m_bad, 1);
                    verdict[i] = V_TERM;
                } else {
                    log_warn("could not store usage sample: %s", e1.msg);
                    verdict[i] = V_RETRY;
                }
            }
        } else {
            log_warn("could not store %d usage samples: %s", n, err.msg);
            loom_metric_add(m_fail, 1);
            for (int i = 0; i < n; i++)
                if (verdict[i] == V_ACK)
                    verdict[i] = V_RETRY;
        }
    }

    for (int i = 0; i < n; i++) {
        natsMsg *m = list->Msgs[i];
        natsStatus s = NATS_OK;
        if (verdict[i] == V_ACK)
            s = natsMsg_Ack(m, NULL);
        else if (verdict[i] == V_TERM)
            s = natsMsg_Term(m, NULL);
        else
            s = natsMsg_NakWithDelay(m, 1000, NULL);
        if (s != NATS_OK)
            log_warn("could not acknowledge usage message: %s", natsStatus_GetText(s));
        if (samples[i])
            protobuf_c_message_free_unpacked(&samples[i]->base, NULL);
    }
}

void meter_tick(struct loom_service *svc)
{
    /* drain what is there, then return so that the service loop can look at
     * signals */
    for (int rounds = 0; rounds < 16 && !svc->stopping; rounds++) {
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s = natsSubscription_Fetch(&list, sub, FETCH_BATCH, FETCH_TIMEOUT_MS, &jerr);
        if (s == NATS_TIMEOUT) {
            last_fetch_failed = false;
            return;
        }
        if (s != NATS_OK) {
            if (!last_fetch_failed)
                log_warn("could not fetch usage samples: %s (%d)", natsStatus_GetText(s),
                         (int)jerr);
            last_fetch_failed = true;
            natsMsgList_Destroy(&list);
            loom_service_sleep(svc, 1000);
            return;
        }
        if (last_fetch_failed)
            log_info("fetching usage samples again");
        last_fetch_failed = false;
        if (list.Count > 0)
            process(svc, &list);
        int count = list.Count;
        natsMsgList_Destroy(&list);
        if (count < FETCH_BATCH)
            return;
    }
}

int meter_start(struct loom_service *svc, struct loom_err *err)
{
    m_stored = loom_metric_counter("loom_metering_samples_stored_total", NULL,
                                   "usage samples written to PostgreSQL");
    m_dup = loom_metric_counter("loom_metering_samples_duplicate_total", NULL,
                                "usage samples that were already stored (redeliveries)");
    m_bad = loom_metric_counter("loom_metering_samples_invalid_total", NULL,
                                "usage messages refused and terminated");
    m_fail = loom_metric_counter("loom_metering_store_failures_total", NULL,
                                 "batches that could not be stored (retried)");
    const char *const subjects[] = {"loom.usage.>"};
    if (loom_bus_js_stream(svc->bus, LOOM_STREAM_USAGE, subjects, 1, STREAM_MAX_AGE_MS, err) < 0)
        return loom_err_wrap(err, "ensuring stream %s", LOOM_STREAM_USAGE);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = LOOM_STREAM_USAGE;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.AckWait = 30LL * 1000 * 1000 * 1000; /* ns */
    so.Config.MaxAckPending = 4 * FETCH_BATCH;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&sub, loom_bus_js(svc->bus), "loom.usage.>", METER_DURABLE,
                                    NULL, &so, &jerr);
    if (s != NATS_OK)
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "could not create pull consumer \"%s\" on %s: %s (%d)", METER_DURABLE,
                            LOOM_STREAM_USAGE, natsStatus_GetText(s), (int)jerr);
    log_info("consuming %s as durable \"%s\"", LOOM_STREAM_USAGE, METER_DURABLE);
    return 0;
}

bool meter_ready(struct loom_service *svc)
{
    (void)svc;
    return sub != NULL && !last_fetch_failed;
}

void meter_stop(struct loom_service *svc)
{
    (void)svc;
    /* unsubscribing would delete nothing (the consumer is durable); just
     * free the client side */
    natsSubscription_Destroy(sub);
    sub = NULL;
}
