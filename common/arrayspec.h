/* Array index specs: "0-9,20,30-39". Indices are 0..LOOM_ARRAY_MAX_INDEX;
 * ranges are sorted and merged (duplicates count once). */
#ifndef LOOM_ARRAYSPEC_H
#define LOOM_ARRAYSPEC_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define LOOM_ARRAY_MAX_INDEX 9999999
#define LOOM_ARRAY_MAX_COUNT 1000000

struct loom_range {
    int32_t lo, hi; /* inclusive */
};

struct loom_arrayspec {
    struct loom_range *ranges; /* sorted, disjoint, not adjacent */
    size_t n;
    int64_t count; /* number of indices */
};

/* Parses s; refuses empty specs, bad syntax, lo > hi, indices past
 * LOOM_ARRAY_MAX_INDEX, more than max_count indices, more than 10,000 items.
 * The message names the offending item. */
int loom_arrayspec_parse(const char *s, int64_t max_count, struct loom_arrayspec *ret,
                         struct loom_err *err);
void loom_arrayspec_release(struct loom_arrayspec *spec);
#define _cleanup_arrayspec_ __attribute__((cleanup(loom_arrayspec_release)))

/* "0-9,20,30-39" (canonical form), allocated. */
char *loom_arrayspec_format(const struct loom_arrayspec *spec);
/* PostgreSQL int4multirange literal "{[0,10),[20,21)}", allocated. */
char *loom_arrayspec_to_multirange(const struct loom_arrayspec *spec);
/* Parses PostgreSQL's multirange output ("{}" or "{[0,10),[20,21)}"). */
int loom_arrayspec_from_multirange(const char *s, struct loom_arrayspec *ret, struct loom_err *err);
/* True when idx is in the spec (binary search). */
int loom_arrayspec_contains(const struct loom_arrayspec *spec, int32_t idx);

#endif
