/* Prometheus metrics: a process-wide registry of counters, gauges and
 * histograms, rendered in text format 0.0.4 by /metrics. Thread-safe.
 *
 * A name may carry labels: loom_metric_counter("loom_http_requests_total",
 * "code=\"200\"", "HTTP requests served"). The same name and labels return the
 * same metric. */
#ifndef LOOM_METRICS_H
#define LOOM_METRICS_H

#include <stddef.h>

#include "strbuf.h"

struct loom_metric;

struct loom_metric *loom_metric_counter(const char *name, const char *labels, const char *help);
struct loom_metric *loom_metric_gauge(const char *name, const char *labels, const char *help);
/* buckets: ascending upper bounds in the metric's unit (+Inf is added). */
struct loom_metric *loom_metric_histogram(const char *name, const char *labels, const char *help,
                                          const double *buckets, size_t nbuckets);

void loom_metric_add(struct loom_metric *m, double v);     /* counters, gauges */
void loom_metric_set(struct loom_metric *m, double v);     /* gauges */
void loom_metric_observe(struct loom_metric *m, double v); /* histograms */

/* Appends every metric in text format. */
void loom_metrics_render(struct strbuf *out);

#endif
