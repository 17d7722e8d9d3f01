/* loom-metering: usage samples from the JetStream stream LOOM_USAGE into
 * PostgreSQL, exactly once per (instance, seq). Rating and the FOCUS export
 * are not written yet. */
#ifndef LOOM_METERING_H
#define LOOM_METERING_H

#include <stdbool.h>

#include "err.h"
#include "loom/v1/usage.pb-c.h"

struct loom_service;

#define METER_DURABLE "metering"

/* Checks a decoded sample before it is stored: instance_id a UUID, node and
 * project present and short, counters within bigint. LOOM_EINVAL otherwise. */
int meter_sample_check(const Loom__V1__UsageSample *s, struct loom_err *err);

int meter_start(struct loom_service *svc, struct loom_err *err);
void meter_tick(struct loom_service *svc);
void meter_stop(struct loom_service *svc);
bool meter_ready(struct loom_service *svc);

#endif
