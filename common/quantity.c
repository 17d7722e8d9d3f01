#include "quantity.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cleanup.h"

/* 128 bits hold any mantissa we accept times any unit without overflow, so
 * the arithmetic below is exact and its range checks are plain compares. */
__extension__ typedef __int128 wide;

#define MAX_DIGITS 30 /* < log10(2^127 / 2^40) */

/* A decimal "12", "0.5", ".125" as mant / 10^scale; returns where it ends,
 * or NULL when s does not start with one. "1." is refused: a dot must be
 * followed by a digit, so that a truncated value is not read as another.
 * More than MAX_DIGITS digits is refused too (*ret_long says so). */
static const char *parse_decimal(const char *s, wide *ret_mant, int *ret_scale, bool *ret_long)
{
    wide mant = 0;
    int ndigits = 0, scale = 0;
    const char *p = s;
    *ret_long = false;
    for (; isdigit((unsigned char)*p); p++, ndigits++)
        if (ndigits < MAX_DIGITS)
            mant = mant * 10 + (*p - '0');
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return NULL;
        for (; isdigit((unsigned char)*p); p++, ndigits++, scale++)
            if (ndigits < MAX_DIGITS)
                mant = mant * 10 + (*p - '0');
    }
    if (ndigits == 0)
        return NULL;
    if (ndigits > MAX_DIGITS) {
        *ret_long = true;
        return NULL;
    }
    *ret_mant = mant;
    *ret_scale = scale;
    return p;
}

static wide pow10w(int n)
{
    wide r = 1;
    while (n-- > 0)
        r *= 10;
    return r;
}

int loom_cpu_parse(const char *s, int64_t *ret_millis, struct loom_err *err)
{
    wide mant, millis;
    int scale = 0;
    bool too_long = false;
    const char *end = s ? parse_decimal(s, &mant, &scale, &too_long) : NULL;
    if (too_long)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" has too many digits", s);
    if (!end || (*end && strcmp(end, "m") != 0))
        return loom_err_set(err, LOOM_EINVAL,
                            "\"%.64s\" is not a number of vCPU such as 0.5, 2 or 250m", s ? s : "");
    if (*end == 'm') {
        if (scale > 0)
            return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" is not a whole number of millicores",
                                s);
        millis = mant;
    } else {
        if (scale > 3)
            return loom_err_set(err, LOOM_EINVAL,
                                "\"%.64s\" has more than 3 decimals (the smallest step is 0.001 "
                                "vCPU, 1m)",
                                s);
        millis = mant * pow10w(3 - scale);
    }
    if (millis > LOOM_CPU_MAX_MILLIS)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" is more than a million vCPU", s);
    *ret_millis = (int64_t)millis;
    return 0;
}

static const struct unit {
    const char *suffix;
    int64_t mult;
    bool memory; /* one of Code Engine's memory units */
} units[] = {
    {"", 1, false},
    {"B", 1, false},
    {"K", 1000, false},
    {"k", 1000, false},
    {"KB", 1000, false},
    {"M", 1000000, true},
    {"MB", 1000000, false},
    {"G", 1000000000, true},
    {"GB", 1000000000, false},
    {"T", 1000000000000, false},
    {"TB", 1000000000000, false},
    {"Ki", 1LL << 10, false},
    {"Mi", 1LL << 20, true},
    {"Gi", 1LL << 30, true},
    {"Ti", 1LL << 40, false},
};

int loom_size_parse(const char *s, enum loom_size_units which, int64_t *ret_bytes,
                    struct loom_err *err)
{
    const char *hint = which == LOOM_SIZE_MEMORY
                           ? "a size such as 512M, 0.5G, 4G or 2Gi (units M, G, Mi, Gi)"
                           : "a size such as 512, 64K, 512Mi, 0.5G or 4G";
    wide mant;
    int scale = 0;
    bool too_long = false;
    const char *end = s ? parse_decimal(s, &mant, &scale, &too_long) : NULL;
    if (too_long)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" has too many digits", s);
    if (!end)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" is not %s", s ? s : "", hint);
    const struct unit *u = NULL;
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(units) && !u; i++)
        if (strcmp(end, units[i].suffix) == 0 && (which == LOOM_SIZE_ANY || units[i].memory))
            u = &units[i];
    if (!u)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" is not %s", s, hint);
    wide scaled = mant * u->mult, div = pow10w(scale);
    if (scaled % div != 0)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" is not a whole number of bytes", s);
    wide bytes = scaled / div;
    if (bytes > INT64_MAX)
        return loom_err_set(err, LOOM_EINVAL, "\"%.64s\" is too large", s);
    *ret_bytes = (int64_t)bytes;
    return 0;
}

void loom_cpu_format(int64_t millis, char *buf, size_t len)
{
    if (millis < 0 || millis % 1000 == 0) {
        snprintf(buf, len, "%" PRId64, millis / 1000);
        return;
    }
    char frac[8];
    snprintf(frac, sizeof(frac), "%03" PRId64, millis % 1000);
    for (size_t n = strlen(frac); n > 0 && frac[n - 1] == '0'; n--)
        frac[n - 1] = '\0';
    snprintf(buf, len, "%" PRId64 ".%s", millis / 1000, frac);
}

void loom_size_format(int64_t bytes, char *buf, size_t len)
{
    /* largest step first; at each step the decimal unit before the binary */
    static const char *const order[] = {"T", "Ti", "G", "Gi", "M", "Mi", "K", "Ki"};
    if (bytes > 0)
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(order); i++)
            for (size_t k = 0; k < LOOM_ARRAY_SIZE(units); k++)
                if (strcmp(units[k].suffix, order[i]) == 0 && bytes % units[k].mult == 0) {
                    snprintf(buf, len, "%" PRId64 "%s", bytes / units[k].mult, order[i]);
                    return;
                }
    snprintf(buf, len, "%" PRId64, bytes);
}
