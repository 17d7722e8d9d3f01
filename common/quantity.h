/* CPU, memory and storage quantities: the one parser and formatter of them
 * in Loom. Every quantity is an exact integer once parsed (millicores,
 * bytes); no floating point is involved, so "0.1G" is 100000000 bytes, not
 * a rounding of it.
 *
 * CPU, in vCPU: a decimal with at most 3 fractional digits ("2", "0.5",
 * ".125") or millicores ("250m"), as Code Engine and Kubernetes write it.
 *
 * Sizes, in bytes: a decimal followed by a unit, as Code Engine writes
 * memory and storage:
 *   decimal units  K k M G T (10^3 ... 10^12), also written KB MB GB TB
 *   binary units   Ki Mi Gi Ti (2^10 ... 2^40)
 *   no unit, or B  bytes
 * A fraction is allowed when the result is a whole number of bytes ("0.5G",
 * "1.5Mi"; not "1.5" or "0.0000000001G"). Exponents ("1e3"), signs, spaces
 * and hexadecimal are refused: they are not in Code Engine's syntax and a
 * typo should not become a valid size. */
#ifndef LOOM_QUANTITY_H
#define LOOM_QUANTITY_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* The largest quantity either parser returns: a million vCPU, 8 EiB. */
#define LOOM_CPU_MAX_MILLIS 1000000000LL

/* Which units loom_size_parse accepts. */
enum loom_size_units {
    LOOM_SIZE_ANY,    /* every unit above, and plain bytes */
    LOOM_SIZE_MEMORY, /* Code Engine's memory units only: M, G, Mi, Gi */
};

/* "0.5" -> 500. On failure err (LOOM_EINVAL) says why, without naming a
 * field: the caller wraps it ("field \"scale_cpu_limit\": ..."). */
int loom_cpu_parse(const char *s, int64_t *ret_millis, struct loom_err *err);

/* "4G" -> 4000000000, "512Mi" -> 536870912. */
int loom_size_parse(const char *s, enum loom_size_units units, int64_t *ret_bytes,
                    struct loom_err *err);

/* The canonical vCPU text: "0.125", "0.5", "2", "1.001". len >= 24 holds any value. */
void loom_cpu_format(int64_t millis, char *buf, size_t len);

/* The shortest exact text with the largest unit that divides the size,
 * decimal before binary at the same step: "4G", "512Mi", "1500M", "123".
 * Parsing it gives the size back. len >= 24 holds any value. */
void loom_size_format(int64_t bytes, char *buf, size_t len);

#endif
