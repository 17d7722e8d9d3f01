#include "sched.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses a non-negative decimal ("0.5", "12") into *ret; *end points past it. */
static int parse_decimal(const char *s, double *ret, const char **end)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *e;
    double v = strtod(s, &e);
    if (errno || e == s || !isfinite(v) || v < 0)
        return -1;
    /* strtod accepts hex and exponents; we do not */
    for (const char *p = s; p < e; p++)
        if (!isdigit((unsigned char)*p) && *p != '.')
            return -1;
    *ret = v;
    *end = e;
    return 0;
}

int sched_parse_cpu(const char *s, int64_t *ret)
{
    double v;
    const char *end;
    if (parse_decimal(s, &v, &end) < 0)
        return -1;
    double millis;
    if (*end == '\0')
        millis = v * 1000.0;
    else if (strcmp(end, "m") == 0)
        millis = v;
    else
        return -1;
    if (millis < 1 || millis > 1e9)
        return -1;
    *ret = (int64_t)llround(millis);
    return 0;
}

int sched_parse_memory(const char *s, int64_t *ret)
{
    static const struct {
        const char *suffix;
        double mult;
    } units[] = {
        {"", 1},
        {"K", 1e3},
        {"M", 1e6},
        {"G", 1e9},
        {"T", 1e12},
        {"k", 1e3},
        {"Ki", 1024.0},
        {"Mi", 1024.0 * 1024},
        {"Gi", 1024.0 * 1024 * 1024},
        {"Ti", 1024.0 * 1024 * 1024 * 1024},
        {"KB", 1e3},
        {"MB", 1e6},
        {"GB", 1e9},
        {"TB", 1e12},
    };
    double v;
    const char *end;
    if (parse_decimal(s, &v, &end) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            double b = v * units[i].mult;
            if (b < 1 || b > 9.0e18)
                return -1;
            *ret = (int64_t)llround(b);
            return 0;
        }
    }
    return -1;
}

bool sched_node_fits(const struct sched_node *n, const struct sched_request *r)
{
    if (n->cpu_total - n->cpu_used < r->cpu_millis)
        return false;
    if (n->mem_total - n->mem_used < r->memory_bytes)
        return false;
    if (r->ephemeral_bytes > 0 && n->disk_total > 0 &&
        n->disk_total - n->disk_used < r->ephemeral_bytes)
        return false;
    if (r->selector && !sched_labels_match(n->labels, r->selector))
        return false;
    if (r->gpus > 0) {
        if (n->gpus_total - n->gpus_used < r->gpus)
            return false;
        if (r->gpu_model && r->gpu_model[0] &&
            (!n->gpu_model || strcasecmp(n->gpu_model, r->gpu_model) != 0))
            return false;
    }
    return true;
}

bool sched_labels_match(const struct json_t *labels, const struct json_t *selector)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)selector, k, v)
    {
        const char *have = json_string_value(json_object_get(labels, k));
        const char *want = json_string_value(v);
        if (!have || !want || strcmp(have, want) != 0)
            return false;
    }
    return true;
}

int64_t sched_spec_ephemeral(const struct json_t *spec)
{
    const char *s = json_string_value(json_object_get(spec, "scale_ephemeral_storage_limit"));
    int64_t b;
    if (!s || sched_parse_memory(s, &b) < 0)
        return SCHED_EPHEMERAL_DEFAULT;
    return b;
}

static uint64_t xorshift(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

/* Fraction of the node allocated once r is on it: higher packs tighter. */
static double pack_score(const struct sched_node *n, const struct sched_request *r)
{
    double c = n->cpu_total ? (double)(n->cpu_used + r->cpu_millis) / (double)n->cpu_total : 1;
    double m = n->mem_total ? (double)(n->mem_used + r->memory_bytes) / (double)n->mem_total : 1;
    /* spread: the emptiest node scores highest */
    return r->spread ? -(c + m) : c + m;
}

size_t sched_sample_size(size_t n)
{
    size_t k = 0;
    while (((size_t)1 << k) < n)
        k++;
    /* small clusters: look at (nearly) every node, packing is then tight */
    size_t floor = n < 8 ? n : 8;
    if (k < floor)
        k = floor;
    return k < 2 ? 2 : k;
}

long sched_choose_node(const struct sched_node *nodes, size_t n, const struct sched_request *r,
                       size_t sample, uint64_t *rng)
{
    if (n == 0)
        return -1;
    if (sample < 2)
        sample = 2;
    long best = -1;
    double best_score = -1e300;
    if (sample >= n) {
        for (size_t i = 0; i < n; i++) {
            if (!sched_node_fits(&nodes[i], r))
                continue;
            double sc = pack_score(&nodes[i], r);
            if (sc > best_score) {
                best_score = sc;
                best = (long)i;
            }
        }
        return best;
    }
    for (size_t k = 0; k < sample; k++) {
        size_t i = (size_t)(xorshift(rng) % n);
        if (!sched_node_fits(&nodes[i], r))
            continue;
        double sc = pack_score(&nodes[i], r);
        if (sc > best_score) {
            best_score = sc;
            best = (long)i;
        }
    }
    if (best >= 0)
        return best;
    /* The sample missed: a full pass so that work waits only when nothing fits. */
    size_t start = (size_t)(xorshift(rng) % n);
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (sched_node_fits(&nodes[i], r))
            return (long)i;
    }
    return -1;
}

size_t sched_take_indices(const struct loom_arrayspec *pending, size_t max, int32_t *out)
{
    size_t got = 0;
    for (size_t i = 0; i < pending->n && got < max; i++)
        for (int64_t x = pending->ranges[i].lo; x <= pending->ranges[i].hi && got < max; x++)
            out[got++] = (int32_t)x;
    return got;
}

void sched_indices_multirange(const int32_t *idx, size_t n, struct strbuf *out)
{
    strbuf_addch(out, '{');
    size_t i = 0;
    bool first = true;
    while (i < n) {
        size_t j = i;
        while (j + 1 < n && idx[j + 1] == idx[j] + 1)
            j++;
        strbuf_addf(out, "%s[%d,%lld)", first ? "" : ",", idx[i], (long long)idx[j] + 1);
        first = false;
        i = j + 1;
    }
    strbuf_addch(out, '}');
}

void sched_pg_array_add(struct strbuf *sb, const char *elem)
{
    strbuf_addch(sb, sb->len == 0 ? '{' : ',');
    strbuf_addch(sb, '"');
    for (const char *p = elem; *p; p++) {
        if (*p == '"' || *p == '\\')
            strbuf_addch(sb, '\\');
        strbuf_addch(sb, *p);
    }
    strbuf_addch(sb, '"');
}

void sched_pg_array_add_null(struct strbuf *sb)
{
    strbuf_addch(sb, sb->len == 0 ? '{' : ',');
    strbuf_addstr(sb, "NULL");
}

void sched_pg_array_end(struct strbuf *sb)
{
    if (sb->len == 0)
        strbuf_addch(sb, '{');
    strbuf_addch(sb, '}');
}

static void format_bytes(int64_t b, char *buf, size_t len)
{
    if (b % 1000000000 == 0)
        snprintf(buf, len, "%lldG", (long long)(b / 1000000000));
    else if (b % (1024LL * 1024 * 1024) == 0)
        snprintf(buf, len, "%lldGi", (long long)(b / (1024LL * 1024 * 1024)));
    else if (b % 1000000 == 0)
        snprintf(buf, len, "%lldM", (long long)(b / 1000000));
    else if (b % (1024 * 1024) == 0)
        snprintf(buf, len, "%lldMi", (long long)(b / (1024 * 1024)));
    else
        snprintf(buf, len, "%lld", (long long)b);
}

void sched_describe_request(const struct sched_request *r, char *buf, size_t len)
{
    char mem[32];
    format_bytes(r->memory_bytes, mem, sizeof(mem));
    int w = snprintf(buf, len, "no node fits cpu=%lldm memory=%s", (long long)r->cpu_millis, mem);
    if (r->gpus > 0 && w > 0 && (size_t)w < len)
        w += snprintf(buf + w, len - (size_t)w, " gpus=%d%s%s", r->gpus,
                      r->gpu_model && r->gpu_model[0] ? " model=" : "",
                      r->gpu_model && r->gpu_model[0] ? r->gpu_model : "");
    if (r->ephemeral_bytes > 0 && w > 0 && (size_t)w < len) {
        format_bytes(r->ephemeral_bytes, mem, sizeof(mem));
        w += snprintf(buf + w, len - (size_t)w, " ephemeral=%s", mem);
    }
    if (r->selector && w > 0 && (size_t)w < len) {
        char *sel = json_dumps((json_t *)r->selector, JSON_COMPACT | JSON_SORT_KEYS);
        snprintf(buf + w, len - (size_t)w, " node_selector=%s", sel ? sel : "?");
        free(sel);
    }
}

bool sched_valid_node_name(const char *s)
{
    if (!s || !isalnum((unsigned char)s[0]))
        return false;
    size_t n = 0;
    for (const char *p = s; *p; p++, n++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            return false;
    return n <= 253;
}
