#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

struct loom_metric {
    char *name;
    char *labels; /* "" when none */
    char *help;
    enum metric_type type;
    double value;
    double *bounds;   /* histograms: upper bounds, without +Inf */
    uint64_t *counts; /* per bucket (not cumulative), nbounds + 1 with +Inf */
    size_t nbounds;
    double sum;
    uint64_t count;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct loom_metric **registry;
static size_t nregistry, registry_cap;

static char *xstrdup(const char *s)
{
    char *r = strdup(s ? s : "");
    if (!r)
        abort();
    return r;
}

static struct loom_metric *lookup_or_add(const char *name, const char *labels, const char *help,
                                         enum metric_type type, const double *buckets,
                                         size_t nbuckets)
{
    if (!labels)
        labels = "";
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nregistry; i++) {
        struct loom_metric *m = registry[i];
        if (strcmp(m->name, name) == 0 && strcmp(m->labels, labels) == 0) {
            pthread_mutex_unlock(&registry_lock);
            return m;
        }
    }
    struct loom_metric *m = calloc(1, sizeof(*m));
    if (!m)
        abort();
    m->name = xstrdup(name);
    m->labels = xstrdup(labels);
    m->help = xstrdup(help);
    m->type = type;
    if (type == METRIC_HISTOGRAM) {
        m->nbounds = nbuckets;
        m->bounds = calloc(nbuckets ? nbuckets : 1, sizeof(double));
        m->counts = calloc(nbuckets + 1, sizeof(uint64_t));
        if (!m->bounds || !m->counts)
            abort();
        if (nbuckets)
            memcpy(m->bounds, buckets, nbuckets * sizeof(double));
    }
    if (nregistry == registry_cap) {
        registry_cap = registry_cap ? registry_cap * 2 : 32;
        struct loom_metric **r = realloc(registry, registry_cap * sizeof(*r));
        if (!r)
            abort();
        registry = r;
    }
    registry[nregistry++] = m;
    pthread_mutex_unlock(&registry_lock);
    return m;
}

struct loom_metric *loom_metric_counter(const char *name, const char *labels, const char *help)
{
    return lookup_or_add(name, labels, help, METRIC_COUNTER, NULL, 0);
}

struct loom_metric *loom_metric_gauge(const char *name, const char *labels, const char *help)
{
    return lookup_or_add(name, labels, help, METRIC_GAUGE, NULL, 0);
}

struct loom_metric *loom_metric_histogram(const char *name, const char *labels, const char *help,
                                          const double *buckets, size_t nbuckets)
{
    return lookup_or_add(name, labels, help, METRIC_HISTOGRAM, buckets, nbuckets);
}

void loom_metric_add(struct loom_metric *m, double v)
{
    if (!m || m->type == METRIC_HISTOGRAM)
        return;
    pthread_mutex_lock(&registry_lock);
    m->value += v;
    pthread_mutex_unlock(&registry_lock);
}

void loom_metric_set(struct loom_metric *m, double v)
{
    if (!m || m->type == METRIC_HISTOGRAM)
        return;
    pthread_mutex_lock(&registry_lock);
    m->value = v;
    pthread_mutex_unlock(&registry_lock);
}

void loom_metric_observe(struct loom_metric *m, double v)
{
    if (!m || m->type != METRIC_HISTOGRAM)
        return;
    pthread_mutex_lock(&registry_lock);
    size_t i = 0;
    while (i < m->nbounds && v > m->bounds[i])
        i++;
    m->counts[i]++;
    m->sum += v;
    m->count++;
    pthread_mutex_unlock(&registry_lock);
}

static void add_value(struct strbuf *out, double v)
{
    if (isnan(v))
        strbuf_addstr(out, "NaN");
    else if (isinf(v))
        strbuf_addstr(out, v > 0 ? "+Inf" : "-Inf");
    else
        strbuf_addf(out, "%.15g", v);
}

static void add_help(struct strbuf *out, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            strbuf_addstr(out, "\\\\");
        else if (*p == '\n')
            strbuf_addstr(out, "\\n");
        else
            strbuf_addch(out, *p);
    }
}

/* name{labels[,extra]} */
static void add_series(struct strbuf *out, const char *name, const char *suffix, const char *labels,
                       const char *extra)
{
    strbuf_addstr(out, name);
    strbuf_addstr(out, suffix);
    if (*labels || extra) {
        strbuf_addch(out, '{');
        strbuf_addstr(out, labels);
        if (extra) {
            if (*labels)
                strbuf_addch(out, ',');
            strbuf_addstr(out, extra);
        }
        strbuf_addch(out, '}');
    }
    strbuf_addch(out, ' ');
}

void loom_metrics_render(struct strbuf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&registry_lock);
    bool *done = calloc(nregistry ? nregistry : 1, sizeof(bool));
    if (!done)
        abort();
    for (size_t i = 0; i < nregistry; i++) {
        if (done[i])
            continue;
        const struct loom_metric *first = registry[i];
        strbuf_addf(out, "# HELP %s ", first->name);
        add_help(out, first->help);
        strbuf_addf(out, "\n# TYPE %s %s\n", first->name, type_names[first->type]);
        for (size_t j = i; j < nregistry; j++) {
            const struct loom_metric *m = registry[j];
            if (done[j] || strcmp(m->name, first->name) != 0)
                continue;
            done[j] = true;
            if (m->type != METRIC_HISTOGRAM) {
                add_series(out, m->name, "", m->labels, NULL);
                add_value(out, m->value);
                strbuf_addch(out, '\n');
                continue;
            }
            uint64_t cum = 0;
            for (size_t b = 0; b <= m->nbounds; b++) {
                cum += m->counts[b];
                char le[64];
                if (b < m->nbounds)
                    snprintf(le, sizeof(le), "le=\"%.15g\"", m->bounds[b]);
                else
                    snprintf(le, sizeof(le), "le=\"+Inf\"");
                add_series(out, m->name, "_bucket", m->labels, le);
                strbuf_addf(out, "%llu\n", (unsigned long long)cum);
            }
            add_series(out, m->name, "_sum", m->labels, NULL);
            add_value(out, m->sum);
            strbuf_addch(out, '\n');
            add_series(out, m->name, "_count", m->labels, NULL);
            strbuf_addf(out, "%llu\n", (unsigned long long)m->count);
        }
    }
    free(done);
    pthread_mutex_unlock(&registry_lock);
}
