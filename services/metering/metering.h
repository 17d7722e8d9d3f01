/* loom-metering: usage into rated hourly records, exactly once.
 *
 *   consume.c    usage samples from the JetStream stream LOOM_USAGE into
 *                PostgreSQL, once per (instance, seq); JetStream and the
 *                sample's agent are told only after COMMIT
 *   aggregate.c  samples, request counts and function activations into
 *                hourly usage_records, rated with the price sheet in effect;
 *                hours close a while after their end, late usage becomes a
 *                correction row; closed rows become CloudEvents
 *   push.c       those CloudEvents, in batches, to the operator's billing
 *                endpoint, with the cursor in PostgreSQL
 *
 * Any number of replicas: they share the consumer, and an advisory lock lets
 * one aggregate (or push) at a time. */
#ifndef LOOM_METERING_H
#define LOOM_METERING_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "loom/v1/usage.pb-c.h"

struct loom_service;
struct loom_db;

#define METER_DURABLE "metering"
#define METER_MAX_ACK_PENDING 4096

struct meter_config {
    int64_t fetch_batch;     /* samples fetched and stored together */
    int64_t aggregate_ms;    /* how often usage is aggregated */
    int64_t close_after_ms;  /* an hour closes this long after its end */
    int64_t aggregate_batch; /* samples (and requests, activations) per pass at most */
    char *push_url;          /* the CloudEvents endpoint, or NULL */
    char *push_token;        /* sent as a bearer token, or NULL */
    char *push_source;       /* the events' source */
    int64_t push_batch;      /* events per POST */
    int64_t push_timeout_ms;
};
extern struct meter_config meter_cfg;

/* Checks a decoded sample before it is stored: instance_id a UUID, node and
 * project present and short, counters within bigint, an interval that adds
 * up and no more cpu than it could hold. LOOM_EINVAL otherwise. */
int meter_sample_check(const Loom__V1__UsageSample *s, struct loom_err *err);

int meter_consume_start(struct loom_service *svc, struct loom_err *err);
/* Fetches and stores what the stream has, for a while. */
void meter_consume(struct loom_service *svc);
bool meter_consume_ok(void);
void meter_consume_stop(void);

/* One aggregation pass, when no other replica runs one: pending usage into
 * records, rated; hours past close_after closed, with their events. Returns
 * the number of sources aggregated (0 when another replica holds the
 * lock), or -1. */
int meter_aggregate(struct loom_db *db, struct loom_err *err);

/* Sends the events after the cursor to push_url, a batch at a time, while
 * it accepts them. Returns events sent, or -1 (the endpoint failed; the
 * cursor stays). */
int meter_push(struct loom_db *db, struct loom_err *err);

#endif
