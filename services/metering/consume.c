/* The durable pull consumer "metering" on LOOM_USAGE. A fetched batch is
 * written in one statement and one transaction, acknowledged to JetStream
 * only after COMMIT, and then to each sample's agent (UsageCommitted on
 * loom.metered.<node>), which only then drops it from its outbox. A crash in
 * between redelivers or resends, and the primary key (instance, seq) makes
 * the second insert a no-op that is acknowledged the same way. */
#include "metering.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "strbuf.h"
#include "subjects.h"
#include "util.h"

#define FETCH_TIMEOUT_MS 500
#define STREAM_MAX_AGE_MS (7LL * 24 * 3600 * 1000)
#define MAX_INTERVAL_MS (31LL * 24 * 3600 * 1000)

struct meter_config meter_cfg;

static natsSubscription *sub;
static struct loom_metric *m_stored, *m_dup, *m_bad, *m_fail, *m_batch;
static bool last_fetch_failed;
static int fetch_failures; /* in a row */

static bool kind_valid(const char *k)
{
    return !k || !*k || strcmp(k, "app") == 0 || strcmp(k, "job") == 0 ||
           strcmp(k, "function") == 0;
}

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
        s->memory_peak_bytes > INT64_MAX || s->cpu_ns > INT64_MAX)
        return loom_err_set(err, LOOM_EINVAL, "a counter is out of range");
    if (s->ts_unix_ms <= 0 || s->ts_unix_ms > 32503680000000LL)
        return loom_err_set(err, LOOM_EINVAL, "ts_unix_ms %" PRId64 " is out of range",
                            s->ts_unix_ms);
    if (s->interval_ms < 0 || s->interval_ms > MAX_INTERVAL_MS)
        return loom_err_set(err, LOOM_EINVAL, "interval_ms %" PRId64 " is out of range",
                            s->interval_ms);
    if (s->start_unix_ms != 0 && s->start_unix_ms != s->ts_unix_ms - s->interval_ms)
        return loom_err_set(err, LOOM_EINVAL,
                            "the interval (%" PRId64 ", %" PRId64 "] is not %" PRId64 " ms long",
                            s->start_unix_ms, s->ts_unix_ms, s->interval_ms);
    /* no more cpu than 4096 cpus could use in the interval (no overflow:
     * the interval is at most 31 days) */
    if (s->cpu_ns > (uint64_t)s->interval_ms * 4096 * 1000000)
        return loom_err_set(err, LOOM_EINVAL, "%" PRIu64 " ns of cpu in %" PRId64 " ms", s->cpu_ns,
                            s->interval_ms);
    if (s->cpu_millis_alloc < 0 || s->memory_bytes_alloc < 0 || s->ephemeral_bytes_alloc < 0)
        return loom_err_set(err, LOOM_EINVAL, "a negative allocation");
    if (!kind_valid(s->kind))
        return loom_err_set(err, LOOM_EINVAL, "kind \"%.20s\" is not app, job or function",
                            s->kind);
    if ((s->resource && strlen(s->resource) > 253) || (s->gpu_model && strlen(s->gpu_model) > 128))
        return loom_err_set(err, LOOM_EINVAL, "resource or gpu_model is too long");
    return 0;
}

/* The columns of a batch as PostgreSQL array literals, one parameter each. */
enum col {
    C_ID,
    C_SEQ,
    C_PROJECT,
    C_NODE,
    C_TS,
    C_START,
    C_INTERVAL,
    C_CPU_TOTAL,
    C_CPU,
    C_MEM,
    C_PEAK,
    C_CPU_ALLOC,
    C_MEM_ALLOC,
    C_GPUS,
    C_GPU_MODEL,
    C_EPHEMERAL,
    C_FINAL,
    C_KIND,
    C_RESOURCE,
    C_NCOLS
};

static const char insert_sql[] =
    "INSERT INTO usage_samples (instance_id, seq, project_id, project, node, ts, start_ts, "
    "interval_ms, cpu_usage_ns, cpu_ns, memory_bytes, memory_peak_bytes, cpu_millis_alloc, "
    "memory_bytes_alloc, gpus, gpu_model, ephemeral_bytes_alloc, final, kind, resource, revision) "
    "SELECT u.id, u.seq, coalesce(i.project_id, p.id), coalesce(ip.name, u.project), u.node, "
    "timestamptz 'epoch' + u.ts * interval '1 millisecond', "
    "timestamptz 'epoch' + (u.ts - u.iv) * interval '1 millisecond', u.iv, u.cum, u.cpu, u.mem, "
    "u.peak, u.cpua, u.mema, u.gpus, u.gm, u.eph, u.fin, "
    /* what PostgreSQL knows of the instance wins over what the agent says */
    "coalesce(i.kind, nullif(u.kind, ''), 'job'), "
    "coalesce(CASE i.kind WHEN 'app' THEN a.name WHEN 'job' THEN r.name "
    "                     WHEN 'function' THEN f.name END, u.res), "
    "coalesce(CASE i.kind WHEN 'app' THEN i.app_generation::text "
    "                     WHEN 'function' THEN i.function_generation::text END, '') "
    "FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], "
    "            $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], "
    "            $12::bigint[], $13::bigint[], $14::int[], $15::text[], $16::bigint[], "
    "            $17::bool[], $18::text[], $19::text[]) "
    "     AS u(id, seq, project, node, ts, st, iv, cum, cpu, mem, peak, cpua, mema, gpus, gm, "
    "          eph, fin, kind, res) "
    "LEFT JOIN instances i ON i.id = u.id "
    "LEFT JOIN projects ip ON ip.id = i.project_id "
    "LEFT JOIN projects p ON p.name = u.project "
    "LEFT JOIN apps a ON a.id = i.app_id "
    "LEFT JOIN job_runs r ON r.id = i.job_run_id "
    "LEFT JOIN functions f ON f.id = i.function_id "
    "ON CONFLICT (instance_id, seq) DO NOTHING RETURNING 1";

static void add_num(struct strbuf *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_num(struct strbuf *c, const char *fmt, ...)
{
    if (c->len)
        strbuf_addch(c, ',');
    char v[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof(v), fmt, ap);
    va_end(ap);
    strbuf_addstr(c, v);
}

static void add_text(struct strbuf *c, const char *s)
{
    if (c->len)
        strbuf_addch(c, ',');
    loom_db_array_elem(c, s ? s : "", s ? strlen(s) : 0);
}

/* Stores samples[i] where take[i]; returns how many were new, or -1. */
static int store(struct loom_db *db, Loom__V1__UsageSample **samples, const bool *take, int n,
                 struct loom_err *err)
{
    struct strbuf cols[C_NCOLS];
    for (int c = 0; c < C_NCOLS; c++)
        strbuf_init(&cols[c]);
    int rows = 0;
    for (int i = 0; i < n; i++) {
        if (!take[i])
            continue;
        const Loom__V1__UsageSample *s = samples[i];
        add_text(&cols[C_ID], s->instance_id);
        add_num(&cols[C_SEQ], "%" PRIu64, s->seq);
        add_text(&cols[C_PROJECT], s->project);
        add_text(&cols[C_NODE], s->node);
        add_num(&cols[C_TS], "%" PRId64, s->ts_unix_ms);
        add_num(&cols[C_START], "%" PRId64, s->start_unix_ms);
        add_num(&cols[C_INTERVAL], "%" PRId64, s->interval_ms);
        add_num(&cols[C_CPU_TOTAL], "%" PRIu64, s->cpu_usage_ns);
        add_num(&cols[C_CPU], "%" PRIu64, s->cpu_ns);
        add_num(&cols[C_MEM], "%" PRIu64, s->memory_bytes);
        add_num(&cols[C_PEAK], "%" PRIu64, s->memory_peak_bytes);
        add_num(&cols[C_CPU_ALLOC], "%" PRId64, s->cpu_millis_alloc);
        add_num(&cols[C_MEM_ALLOC], "%" PRId64, s->memory_bytes_alloc);
        add_num(&cols[C_GPUS], "%" PRIu32, s->gpus);
        add_text(&cols[C_GPU_MODEL], s->gpu_model);
        add_num(&cols[C_EPHEMERAL], "%" PRId64, s->ephemeral_bytes_alloc);
        add_num(&cols[C_FINAL], "%s", s->final ? "t" : "f");
        add_text(&cols[C_KIND], s->kind);
        add_text(&cols[C_RESOURCE], s->resource);
        rows++;
    }
    int stored = 0;
    if (rows > 0) {
        char *params[C_NCOLS];
        for (int c = 0; c < C_NCOLS; c++) {
            struct strbuf lit = STRBUF_INIT;
            strbuf_addf(&lit, "{%s}", cols[c].buf);
            params[c] = strbuf_detach(&lit, NULL);
        }
        PGresult *res = loom_db_exec(db, insert_sql, C_NCOLS, (const char *const *)params, err);
        stored = res ? PQntuples(res) : -1;
        PQclear(res);
        for (int c = 0; c < C_NCOLS; c++)
            free(params[c]);
    }
    for (int c = 0; c < C_NCOLS; c++)
        strbuf_release(&cols[c]);
    return stored;
}

enum verdict { V_ACK, V_TERM, V_RETRY };

/* Tells each node's agent which of its samples are committed (V_ACK) or
 * refused for good (V_TERM). */
static void notify_agents(struct loom_service *svc, Loom__V1__UsageSample **samples,
                          const enum verdict *verdict, int n, const char **msgids)
{
    bool *sent = calloc((size_t)n + 1, sizeof(*sent));
    char **ids = calloc((size_t)n + 1, sizeof(*ids)),
         **refused = calloc((size_t)n + 1, sizeof(*refused));
    if (!sent || !ids || !refused)
        abort();
    for (int i = 0; i < n; i++) {
        if (sent[i] || verdict[i] == V_RETRY || !samples[i] || !msgids[i])
            continue;
        const char *node = samples[i]->node;
        Loom__V1__UsageCommitted c = LOOM__V1__USAGE_COMMITTED__INIT;
        for (int j = i; j < n; j++) {
            if (sent[j] || verdict[j] == V_RETRY || !samples[j] || !msgids[j] ||
                strcmp(samples[j]->node, node) != 0)
                continue;
            sent[j] = true;
            if (verdict[j] == V_ACK)
                ids[c.n_ids++] = (char *)msgids[j];
            else
                refused[c.n_refused++] = (char *)msgids[j];
        }
        c.ids = ids;
        c.refused = refused;
        char subject[300];
        snprintf(subject, sizeof(subject), LOOM_SUBJ_METERED_FMT, node);
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_bus_publish(svc->bus, subject, &c.base, &err) < 0)
            log_warn("could not tell %s its samples are stored: %s", node, err.msg);
    }
    free(sent);
    free(ids);
    free(refused);
}

static void process(struct loom_service *svc, natsMsgList *list)
{
    int n = list->Count;
    _cleanup_free_ enum verdict *verdict = calloc((size_t)n + 1, sizeof(*verdict));
    _cleanup_free_ Loom__V1__UsageSample **samples = calloc((size_t)n + 1, sizeof(*samples));
    _cleanup_free_ bool *take = calloc((size_t)n + 1, sizeof(*take));
    _cleanup_free_ const char **msgids = calloc((size_t)n + 1, sizeof(*msgids));
    if (!verdict || !samples || !take || !msgids)
        abort();
    for (int i = 0; i < n; i++) {
        struct loom_err err = LOOM_ERR_INIT;
        natsMsg *m = list->Msgs[i];
        const char *mid = NULL;
        if (natsMsgHeader_Get(m, "Nats-Msg-Id", &mid) == NATS_OK)
            msgids[i] = mid;
        samples[i] =
            (Loom__V1__UsageSample *)loom_bus_unpack(m, &loom__v1__usage_sample__descriptor, &err);
        if (samples[i] && meter_sample_check(samples[i], &err) == 0) {
            verdict[i] = V_ACK;
            take[i] = true;
            continue;
        }
        log_warn("dropping usage message on %s: %s", natsMsg_GetSubject(m), err.msg);
        loom_metric_add(m_bad, 1);
        verdict[i] = V_TERM;
    }

    struct loom_err err = LOOM_ERR_INIT;
    int stored = -1;
    if (loom_db_begin(svc->db, &err) == 0) {
        stored = store(svc->db, samples, take, n, &err);
        if (stored >= 0 && loom_db_commit(svc->db, &err) < 0)
            stored = -1;
        else if (stored < 0)
            loom_db_rollback(svc->db);
    }
    if (stored >= 0) {
        int taken = 0;
        for (int i = 0; i < n; i++)
            taken += take[i];
        loom_metric_add(m_stored, stored);
        loom_metric_add(m_dup, taken - stored);
    } else if (err.code == LOOM_EINVAL) {
        /* one sample PostgreSQL refuses must not block the rest: store
         * them one by one and terminate the ones refused */
        for (int i = 0; i < n; i++) {
            if (!take[i])
                continue;
            bool one[1] = {true};
            struct loom_err e1 = LOOM_ERR_INIT;
            int rc = store(svc->db, &samples[i], one, 1, &e1);
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
    }
    /* after COMMIT (and JetStream's ack): the agents may forget them now */
    notify_agents(svc, samples, verdict, n, msgids);
    for (int i = 0; i < n; i++)
        if (samples[i])
            protobuf_c_message_free_unpacked(&samples[i]->base, NULL);
    loom_metric_observe(m_batch, n);
}

static int subscribe(struct loom_service *svc, struct loom_err *err)
{
    const char *const subjects[] = {"loom.usage.>"};
    if (loom_bus_js_stream(svc->bus, LOOM_STREAM_USAGE, subjects, 1, STREAM_MAX_AGE_MS, err) < 0)
        return loom_err_wrap(err, "ensuring stream %s", LOOM_STREAM_USAGE);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = LOOM_STREAM_USAGE;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.AckWait = 30LL * 1000 * 1000 * 1000; /* ns */
    so.Config.MaxAckPending = METER_MAX_ACK_PENDING;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&sub, loom_bus_js(svc->bus), "loom.usage.>", METER_DURABLE,
                                    NULL, &so, &jerr);
    if (s != NATS_OK) {
        sub = NULL;
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "could not create pull consumer \"%s\" on %s: %s (%d)", METER_DURABLE,
                            LOOM_STREAM_USAGE, natsStatus_GetText(s), (int)jerr);
    }
    return 0;
}

static void resubscribe(struct loom_service *svc)
{
    natsSubscription_Destroy(sub);
    sub = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (subscribe(svc, &err) < 0)
        log_warn("%s", err.msg);
    else
        log_info("consuming %s again as durable \"%s\"", LOOM_STREAM_USAGE, METER_DURABLE);
}

void meter_consume(struct loom_service *svc)
{
    /* drain what is there, then return so that the service loop can
     * aggregate and look at signals */
    for (int rounds = 0; rounds < 16 && !svc->stopping; rounds++) {
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s =
            natsSubscription_Fetch(&list, sub, (int)meter_cfg.fetch_batch, FETCH_TIMEOUT_MS, &jerr);
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
            /* a nats-server killed before it synced may come back without
             * the stream or the consumer: make them again (the agents send
             * again what is not confirmed) */
            if (++fetch_failures % 5 == 0)
                resubscribe(svc);
            loom_service_sleep(svc, 1000);
            return;
        }
        fetch_failures = 0;
        if (last_fetch_failed)
            log_info("fetching usage samples again");
        last_fetch_failed = false;
        if (list.Count > 0)
            process(svc, &list);
        int count = list.Count;
        natsMsgList_Destroy(&list);
        if (count < meter_cfg.fetch_batch)
            return;
    }
}

int meter_consume_start(struct loom_service *svc, struct loom_err *err)
{
    static const double sizes[] = {1, 10, 50, 100, 250, 500, 1000, 2000, 5000};
    m_stored = loom_metric_counter("loom_metering_samples_stored_total", NULL,
                                   "usage samples written to PostgreSQL");
    m_dup = loom_metric_counter("loom_metering_samples_duplicate_total", NULL,
                                "usage samples that were already stored (redeliveries)");
    m_bad = loom_metric_counter("loom_metering_samples_invalid_total", NULL,
                                "usage messages refused and terminated");
    m_fail = loom_metric_counter("loom_metering_store_failures_total", NULL,
                                 "batches that could not be stored (retried)");
    m_batch =
        loom_metric_histogram("loom_metering_batch_samples", NULL,
                              "samples fetched and stored together", sizes, LOOM_ARRAY_SIZE(sizes));
    if (subscribe(svc, err) < 0)
        return -1;
    log_info("consuming %s as durable \"%s\"", LOOM_STREAM_USAGE, METER_DURABLE);
    return 0;
}

bool meter_consume_ok(void)
{
    return sub != NULL && !last_fetch_failed;
}

void meter_consume_stop(void)
{
    /* unsubscribing would delete nothing (the consumer is durable); just
     * free the client side */
    natsSubscription_Destroy(sub);
    sub = NULL;
}
