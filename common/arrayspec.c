#include "arrayspec.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"

#define ARRAYSPEC_MAX_ITEMS 10000

static int range_cmp(const void *a, const void *b)
{
    const struct loom_range *x = a, *y = b;
    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    return x->hi < y->hi ? -1 : x->hi > y->hi;
}

/* Sorts and merges overlapping and adjacent ranges, then counts. */
static void normalize(struct loom_arrayspec *spec)
{
    if (spec->n == 0) {
        spec->count = 0;
        return;
    }
    qsort(spec->ranges, spec->n, sizeof(*spec->ranges), range_cmp);
    size_t w = 0;
    for (size_t i = 1; i < spec->n; i++) {
        struct loom_range *cur = &spec->ranges[w];
        if ((int64_t)spec->ranges[i].lo <= (int64_t)cur->hi + 1) {
            if (spec->ranges[i].hi > cur->hi)
                cur->hi = spec->ranges[i].hi;
        } else {
            spec->ranges[++w] = spec->ranges[i];
        }
    }
    spec->n = w + 1;
    spec->count = 0;
    for (size_t i = 0; i < spec->n; i++)
        spec->count += (int64_t)spec->ranges[i].hi - spec->ranges[i].lo + 1;
}

/* Reads a decimal index at *p; refuses signs, spaces and values past the maximum. */
static int read_index(const char **p, int32_t *ret)
{
    const char *s = *p;
    if (!isdigit((unsigned char)*s))
        return -1;
    int64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (*s - '0');
        if (v > LOOM_ARRAY_MAX_INDEX)
            return -2;
        s++;
    }
    *ret = (int32_t)v;
    *p = s;
    return 0;
}

int loom_arrayspec_parse(const char *s, int64_t max_count, struct loom_arrayspec *ret,
                         struct loom_err *err)
{
    if (!s || !*s)
        return loom_err_set(err, LOOM_EINVAL, "array spec is empty");
    size_t nitems = 1;
    for (const char *p = s; *p; p++)
        if (*p == ',')
            nitems++;
    if (nitems > ARRAYSPEC_MAX_ITEMS)
        return loom_err_set(err, LOOM_EINVAL, "array spec has more than %d items",
                            ARRAYSPEC_MAX_ITEMS);
    struct loom_arrayspec spec = {calloc(nitems, sizeof(struct loom_range)), 0, 0};
    if (!spec.ranges)
        abort();

    const char *p = s;
    for (;;) {
        const char *item = p;
        size_t itemlen = strcspn(item, ",");
        int32_t lo, hi;
        int r = read_index(&p, &lo);
        if (r == 0 && *p == '-') {
            p++;
            r = read_index(&p, &hi);
        } else {
            hi = lo;
        }
        if (r == 0 && *p != ',' && *p != '\0')
            r = -1;
        if (r < 0) {
            free(spec.ranges);
            if (r == -2)
                return loom_err_set(err, LOOM_EINVAL,
                                    "array spec item \"%.*s\": index greater than %d", (int)itemlen,
                                    item, LOOM_ARRAY_MAX_INDEX);
            return loom_err_set(err, LOOM_EINVAL,
                                "array spec item \"%.*s\": not an index or a range like 0-9",
                                (int)itemlen, item);
        }
        if (lo > hi) {
            free(spec.ranges);
            return loom_err_set(err, LOOM_EINVAL,
                                "array spec item \"%.*s\": range start is greater than its end",
                                (int)itemlen, item);
        }
        spec.ranges[spec.n++] = (struct loom_range){lo, hi};
        if (*p == '\0')
            break;
        p++; /* ',' */
    }
    normalize(&spec);
    if (max_count > 0 && spec.count > max_count) {
        int64_t count = spec.count;
        free(spec.ranges);
        return loom_err_set(err, LOOM_EINVAL, "array spec has %lld indices, more than %lld",
                            (long long)count, (long long)max_count);
    }
    *ret = spec;
    return 0;
}

void loom_arrayspec_release(struct loom_arrayspec *spec)
{
    if (!spec)
        return;
    free(spec->ranges);
    spec->ranges = NULL;
    spec->n = 0;
    spec->count = 0;
}

char *loom_arrayspec_format(const struct loom_arrayspec *spec)
{
    struct strbuf sb = STRBUF_INIT;
    for (size_t i = 0; i < spec->n; i++) {
        if (i)
            strbuf_addch(&sb, ',');
        if (spec->ranges[i].lo == spec->ranges[i].hi)
            strbuf_addf(&sb, "%d", (int)spec->ranges[i].lo);
        else
            strbuf_addf(&sb, "%d-%d", (int)spec->ranges[i].lo, (int)spec->ranges[i].hi);
    }
    return strbuf_detach(&sb, NULL);
}

char *loom_arrayspec_to_multirange(const struct loom_arrayspec *spec)
{
    struct strbuf sb = STRBUF_INIT;
    strbuf_addch(&sb, '{');
    for (size_t i = 0; i < spec->n; i++) {
        if (i)
            strbuf_addch(&sb, ',');
        strbuf_addf(&sb, "[%d,%d)", (int)spec->ranges[i].lo, (int)spec->ranges[i].hi + 1);
    }
    strbuf_addch(&sb, '}');
    return strbuf_detach(&sb, NULL);
}

/* Reads a possibly negative integer for a multirange bound. */
static int read_bound(const char **p, int64_t *ret)
{
    const char *s = *p;
    bool neg = false;
    if (*s == '-') {
        neg = true;
        s++;
    }
    if (!isdigit((unsigned char)*s))
        return -1;
    int64_t v = 0;
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (*s - '0');
        if (v > INT32_MAX)
            return -1;
        s++;
    }
    *ret = neg ? -v : v;
    *p = s;
    return 0;
}

int loom_arrayspec_from_multirange(const char *s, struct loom_arrayspec *ret, struct loom_err *err)
{
    const char *p = s;
    if (*p != '{')
        return loom_err_set(err, LOOM_EINVAL, "invalid multirange \"%s\"", s);
    p++;
    size_t cap = 1;
    for (const char *q = p; *q; q++)
        if (*q == ',')
            cap++;
    struct loom_arrayspec spec = {calloc(cap, sizeof(struct loom_range)), 0, 0};
    if (!spec.ranges)
        abort();
    if (*p == '}') {
        p++;
    } else {
        for (;;) {
            /* PostgreSQL canonicalizes int4 ranges to [lo,hi), but accept either bracket */
            char open = *p;
            if (open != '[' && open != '(')
                goto bad;
            p++;
            int64_t lo, hi;
            if (read_bound(&p, &lo) < 0 || *p != ',')
                goto bad;
            p++;
            if (read_bound(&p, &hi) < 0)
                goto bad;
            char close = *p;
            if (close != ')' && close != ']')
                goto bad;
            p++;
            if (open == '(')
                lo++;
            if (close == ']')
                hi++;
            if (lo < 0 || hi - 1 > LOOM_ARRAY_MAX_INDEX)
                goto bad;
            if (lo < hi && spec.n < cap)
                spec.ranges[spec.n++] = (struct loom_range){(int32_t)lo, (int32_t)(hi - 1)};
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p == '}') {
                p++;
                break;
            }
            goto bad;
        }
    }
    if (*p != '\0')
        goto bad;
    normalize(&spec);
    *ret = spec;
    return 0;
bad:
    free(spec.ranges);
    return loom_err_set(err, LOOM_EINVAL, "invalid multirange \"%s\"", s);
}

int loom_arrayspec_contains(const struct loom_arrayspec *spec, int32_t idx)
{
    size_t lo = 0, hi = spec->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (idx < spec->ranges[mid].lo)
            hi = mid;
        else if (idx > spec->ranges[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}
