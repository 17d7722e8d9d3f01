/* Usage records as other systems read them: the checks of a price sheet,
 * and the FinOps FOCUS 1.2 CSV export of the hourly records (the API's
 * /v1/admin/usage/export and `loom-admin usage export` share it). */
#ifndef LOOM_USAGE_H
#define LOOM_USAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct loom_db;
struct strbuf;

/* ---- price sheets ------------------------------------------------------------------ */

#define LOOM_PRICES_MAX 200
#define LOOM_DECIMAL_MAX 40

struct loom_price {
    const char *metric; /* points into the sheet */
    const char *sku;    /* "" for every SKU of the metric */
    char unit_price[LOOM_DECIMAL_MAX];
    char free_per_month[LOOM_DECIMAL_MAX];
};

struct loom_price_sheet {
    char currency[4];
    int64_t effective_from_s; /* unix seconds, on an hour */
    const char *description;  /* points into the sheet; "" when absent */
    struct loom_price prices[LOOM_PRICES_MAX];
    size_t n;
};

/* A non-negative decimal as prices and quantities are written: 1 to 15
 * digits, optionally a point and 1 to 15 more ("0.0000342", "100000"). */
bool loom_decimal_valid(const char *s);

/* Checks a price sheet:
 *   {"currency": "USD", "effective_from": "2026-06-01T00:00:00Z",
 *    "description": "...",
 *    "prices": [{"metric": "vcpu_seconds_used", "sku": "",
 *                "unit_price": "0.0000342", "free_per_month": "100000"}, ...]}
 * currency is ISO 4217 (three capital letters); effective_from an hour
 * boundary no earlier than the hour that holds now_s (an hour already
 * rated may be closed, and closed hours never change; absent: that hour);
 * metric one of metrics (NULL-terminated); unit_price required and
 * free_per_month optional, decimals as strings (or integers); a metric and
 * SKU priced once. Unknown fields are refused. Every error names its field
 * ("prices[2].unit_price: ..."). */
int loom_price_sheet_check(json_t *sheet, const char *const *metrics, int64_t now_s,
                           struct loom_price_sheet *ret, struct loom_err *err);

/* ---- the FOCUS export -------------------------------------------------------------- */

struct loom_focus_query {
    int64_t from_ns, to_ns; /* rows whose charge period (hour) starts in [from, to) */
    char project[64];       /* a project name, "" for all */
    bool include_open;      /* also hours not closed yet (x_Final false) */
};

/* Reads from, to (required: RFC 3339, a day or a month), project and
 * include_open through get(arg, name), which returns a parameter or NULL.
 * Errors name the parameter ("from: ..."); to must be after from, at most
 * 400 days later. */
int loom_focus_query_parse(const char *(*get)(void *arg, const char *name), void *arg,
                           struct loom_focus_query *ret, struct loom_err *err);

/* The CSV header line: FOCUS 1.2's columns, then Loom's own (x_). */
void loom_focus_header(struct strbuf *out);

/* Where a paged export is: after the row (hour, id). */
struct loom_focus_cursor {
    bool started;
    char hour[40];
    char id[24];
};

/* Appends up to max_rows CSV lines after *cur, in (charge period, record)
 * order, and moves *cur; *ret_done once nothing follows. Each line is one
 * usage record: its quantities, prices and costs as stored, exactly. */
int loom_focus_page(struct loom_db *db, const struct loom_focus_query *q,
                    struct loom_focus_cursor *cur, size_t max_rows, struct strbuf *out,
                    bool *ret_done, struct loom_err *err);

/* Appends s as one CSV field (RFC 4180: quoted when it holds a comma, a
 * quote, CR or LF; quotes doubled). */
void loom_csv_field(struct strbuf *out, const char *s);

#endif
