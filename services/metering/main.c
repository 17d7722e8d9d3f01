/* loom-metering: usage samples into rated hourly records, and out to
 * billing systems (metering.h). */
#include "log.h"
#include "metering.h"
#include "service.h"
#include "util.h"

static const struct loom_opt opts[] = {
    {"fetch-batch", "LOOM_METERING_FETCH_BATCH", LOOM_OPT_INT, &meter_cfg.fetch_batch, "500", 1,
     METER_MAX_ACK_PENDING, "usage samples fetched and stored in one transaction"},
    {"aggregate-interval", "LOOM_METERING_AGGREGATE_INTERVAL", LOOM_OPT_DURATION,
     &meter_cfg.aggregate_ms, "10s", 100, 3600000, "how often usage is aggregated and rated"},
    {"aggregate-batch", "LOOM_METERING_AGGREGATE_BATCH", LOOM_OPT_INT, &meter_cfg.aggregate_batch,
     "50000", 1, 10000000, "samples (and request counts, activations) per aggregation pass"},
    {"close-after", "LOOM_METERING_CLOSE_AFTER", LOOM_OPT_DURATION, &meter_cfg.close_after_ms,
     "15m", 0, 7 * 86400000LL,
     "an hour's usage is final this long after the hour ends (later usage: a correction row)"},
    {"push-url", "LOOM_METERING_PUSH_URL", LOOM_OPT_STRING, &meter_cfg.push_url, NULL, 0, 0,
     "where usage CloudEvents are POSTed in batches (unset: not pushed)"},
    {"push-token", "LOOM_METERING_PUSH_TOKEN", LOOM_OPT_STRING, &meter_cfg.push_token, NULL, 0, 0,
     "bearer token for the push endpoint"},
    {"push-source", "LOOM_METERING_PUSH_SOURCE", LOOM_OPT_STRING, &meter_cfg.push_source,
     "/loom/metering", 0, 0, "the source attribute of the usage CloudEvents"},
    {"push-batch", "LOOM_METERING_PUSH_BATCH", LOOM_OPT_INT, &meter_cfg.push_batch, "100", 1, 10000,
     "events per POST"},
    {"push-timeout", "LOOM_METERING_PUSH_TIMEOUT", LOOM_OPT_DURATION, &meter_cfg.push_timeout_ms,
     "10s", 100, 600000, "how long a POST may take"},
};

static int64_t next_aggregate_ms, next_push_ms, push_backoff_ms;
static bool aggregate_failing;

static int meter_start(struct loom_service *svc, struct loom_err *err)
{
    if (meter_cfg.push_url && !*meter_cfg.push_url)
        meter_cfg.push_url = NULL;
    if (meter_cfg.push_url)
        log_info("pushing usage events to %s", meter_cfg.push_url);
    return meter_consume_start(svc, err);
}

static void aggregate(struct loom_service *svc)
{
    struct loom_err err = LOOM_ERR_INIT;
    int n = meter_aggregate(svc->db, &err);
    if (n < 0 && !aggregate_failing)
        log_warn("%s", err.msg);
    else if (n >= 0 && aggregate_failing)
        log_info("aggregating usage again");
    aggregate_failing = n < 0;
    /* a pass that hit its limit goes on at once */
    next_aggregate_ms =
        loom_mono_ms() + (n >= meter_cfg.aggregate_batch ? 0 : meter_cfg.aggregate_ms);
}

static void push(struct loom_service *svc)
{
    struct loom_err err = LOOM_ERR_INIT;
    int n = meter_push(svc->db, &err);
    if (n < 0) {
        /* 1 s, doubling up to a minute */
        push_backoff_ms = push_backoff_ms ? push_backoff_ms * 2 : 1000;
        if (push_backoff_ms > 60000)
            push_backoff_ms = 60000;
        log_warn("pushing usage events: %s (again in %lld ms)", err.msg,
                 (long long)push_backoff_ms);
        next_push_ms = loom_mono_ms() + push_backoff_ms;
        return;
    }
    if (push_backoff_ms)
        log_info("the usage event endpoint answers again");
    push_backoff_ms = 0;
    next_push_ms = loom_mono_ms() + 1000;
}

static void meter_tick(struct loom_service *svc)
{
    meter_consume(svc);
    if (svc->stopping)
        return;
    int64_t now = loom_mono_ms();
    if (now >= next_aggregate_ms)
        aggregate(svc);
    if (meter_cfg.push_url && now >= next_push_ms)
        push(svc);
}

static bool meter_ready(struct loom_service *svc)
{
    (void)svc;
    return meter_consume_ok();
}

static void meter_stop(struct loom_service *svc)
{
    (void)svc;
    meter_consume_stop();
}

static const struct loom_service_def def = {
    .name = "metering",
    .default_addr = "127.0.0.1:0",
    .tick_ms = 10,
    .http_threads = 2,
    .opts = opts,
    .nopts = sizeof(opts) / sizeof(opts[0]),
    .needs_db = true,
    .start = meter_start,
    .ready = meter_ready,
    .tick = meter_tick,
    .stop = meter_stop,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
