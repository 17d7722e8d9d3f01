#include "sched.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quantity.h"
#include "spec.h"

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

static bool excluded(const struct sched_request *r, size_t i)
{
    return r->exclude && r->exclude[i];
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
            if (excluded(r, i) || !sched_node_fits(&nodes[i], r))
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
        if (excluded(r, i) || !sched_node_fits(&nodes[i], r))
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
        if (!excluded(r, i) && sched_node_fits(&nodes[i], r))
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

void sched_describe_request(const struct sched_request *r, char *buf, size_t len)
{
    char mem[32];
    loom_size_format(r->memory_bytes, mem, sizeof(mem));
    int w = snprintf(buf, len, "no node fits cpu=%lldm memory=%s", (long long)r->cpu_millis, mem);
    if (r->gpus > 0 && w > 0 && (size_t)w < len)
        w += snprintf(buf + w, len - (size_t)w, " gpus=%d%s%s", r->gpus,
                      r->gpu_model && r->gpu_model[0] ? " model=" : "",
                      r->gpu_model && r->gpu_model[0] ? r->gpu_model : "");
    if (r->ephemeral_bytes > 0 && w > 0 && (size_t)w < len) {
        loom_size_format(r->ephemeral_bytes, mem, sizeof(mem));
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

/* Takes r's resources on node k (give: gives them back). */
static void take(struct sched_node *n, const struct sched_request *r, int sign)
{
    n->cpu_used += sign * r->cpu_millis;
    n->mem_used += sign * r->memory_bytes;
    n->gpus_used += sign * r->gpus;
    n->disk_used += sign * r->ephemeral_bytes;
}

void sched_plan_run(const struct sched_run *run, struct sched_node *nodes, size_t nnodes,
                    size_t budget, const struct sched_quota *q, uint64_t *rng,
                    struct sched_run_plan *ret)
{
    struct sched_run_plan p = {0};
    size_t members = run->members > 1 ? (size_t)run->members : 1;
    size_t want = budget / members;
    if (want == 0)
        want = 1; /* one gang may exceed a batch */
    if (run->parallelism > 0) {
        int64_t room = run->parallelism - run->n_running;
        want = room <= 0 ? 0 : (size_t)room < want ? (size_t)room : want;
    }
    if (want > 0 && q) {
        size_t room = sched_quota_room(q, &run->req, p.why, sizeof(p.why)) / members;
        if (room == 0 && !p.why[0])
            snprintf(p.why, sizeof(p.why), "quota: no room for all %zu members of a gang", members);
        if (room < want)
            want = room;
    }
    if ((int64_t)want > run->pending.count)
        want = (size_t)run->pending.count;
    p.idx = calloc(want ? want : 1, sizeof(*p.idx));
    p.nodes = calloc((want ? want : 1) * members, sizeof(*p.nodes));
    uint8_t *exclude = members > 1 ? calloc(nnodes ? nnodes : 1, 1) : NULL;
    if (!p.idx || !p.nodes || (members > 1 && !exclude))
        abort();
    p.wanted = sched_take_indices(&run->pending, want, p.idx);
    struct sched_request req = run->req;
    req.exclude = exclude; /* a gang's members go to distinct nodes */
    size_t sample = sched_sample_size(nnodes);
    for (; p.n < p.wanted; p.n++) {
        long *mine = &p.nodes[p.n * members];
        size_t m = 0;
        for (; m < members; m++) {
            long k = sched_choose_node(nodes, nnodes, &req, sample, rng);
            if (k < 0)
                break;
            mine[m] = k;
            take(&nodes[k], &req, 1);
            if (exclude)
                exclude[k] = 1;
        }
        for (size_t k = 0; exclude && k < m; k++)
            exclude[mine[k]] = 0;
        if (m < members) {
            /* all or none: give back what this gang took */
            for (size_t k = 0; k < m; k++)
                take(&nodes[mine[k]], &req, -1);
            sched_describe_request(&run->req, p.why, sizeof(p.why));
            if (members > 1) {
                size_t l = strlen(p.why);
                snprintf(p.why + l, sizeof(p.why) - l, " for all %zu members of a gang", members);
            }
            break;
        }
    }
    free(exclude);
    /* indices still pending wait for running ones to end */
    p.capped = run->parallelism > 0 && run->n_running + (int64_t)p.n >= run->parallelism &&
               run->pending.count > (int64_t)p.n;
    p.gang_failed = members > 1 && p.n == 0 && p.wanted > 0 && run->gang_expired;
    *ret = p;
}

void sched_run_plan_release(struct sched_run_plan *p)
{
    if (!p)
        return;
    free(p->idx);
    free(p->nodes);
    *p = (struct sched_run_plan){0};
}

void sched_request_init(struct sched_request *r, const struct loom_spec *spec, int64_t cpu_millis,
                        int64_t memory_bytes, int64_t ephemeral_bytes, int64_t gpus)
{
    *r = (struct sched_request){
        .cpu_millis = cpu_millis,
        .memory_bytes = memory_bytes,
        .ephemeral_bytes = ephemeral_bytes,
        .gpus = (int32_t)gpus,
        .gpu_model = spec->gpu_model,
        .selector = json_object_size(spec->node_selector) ? spec->node_selector : NULL,
        .spread = spec->placement == LOOM_PLACE_SPREAD,
    };
}
