#include "usage.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"

/* ---- price sheets ------------------------------------------------------------------ */

bool loom_decimal_valid(const char *s)
{
    size_t i = 0, whole = 0, frac = 0;
    while (s[i] >= '0' && s[i] <= '9') {
        i++;
        whole++;
    }
    if (whole == 0 || whole > 15)
        return false;
    if (s[i] == '.') {
        i++;
        while (s[i] >= '0' && s[i] <= '9') {
            i++;
            frac++;
        }
        if (frac == 0 || frac > 15)
            return false;
    }
    return s[i] == '\0';
}

/* A decimal member (a string, or an integer) into buf. */
static int get_decimal(json_t *obj, const char *field, size_t idx, bool required, char *buf,
                       struct loom_err *err)
{
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) {
        if (required)
            return loom_err_set(err, LOOM_EINVAL, "field \"prices[%zu].%s\": is required", idx,
                                field);
        snprintf(buf, LOOM_DECIMAL_MAX, "0");
        return 0;
    }
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        snprintf(buf, LOOM_DECIMAL_MAX, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_string(v) && strlen(json_string_value(v)) < LOOM_DECIMAL_MAX)
        snprintf(buf, LOOM_DECIMAL_MAX, "%s", json_string_value(v));
    else
        return loom_err_set(
            err, LOOM_EINVAL,
            "field \"prices[%zu].%s\": must be a decimal as a string (\"0.0000342\")", idx, field);
    if (!loom_decimal_valid(buf))
        return loom_err_set(
            err, LOOM_EINVAL,
            "field \"prices[%zu].%s\": \"%s\" is not a decimal of at most 15 digits "
            "before and 15 after the point",
            idx, field, buf);
    return 0;
}

static int check_price(json_t *p, size_t idx, const char *const *metrics, struct loom_price *ret,
                       struct loom_err *err)
{
    static const char *const fields[] = {"metric", "sku", "unit_price", "free_per_month", NULL};
    if (!json_is_object(p))
        return loom_err_set(err, LOOM_EINVAL, "field \"prices[%zu]\": must be an object", idx);
    struct loom_err e = LOOM_ERR_INIT;
    if (loom_json_check_fields(p, fields, &e) < 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"prices[%zu]\": %s", idx, e.msg);
    json_t *m = json_object_get(p, "metric");
    if (!json_is_string(m))
        return loom_err_set(err, LOOM_EINVAL, "field \"prices[%zu].metric\": is required", idx);
    const char *metric = json_string_value(m);
    const char *const *k = metrics;
    while (*k && strcmp(*k, metric) != 0)
        k++;
    if (!*k) {
        struct strbuf known = STRBUF_INIT;
        for (k = metrics; *k; k++)
            strbuf_addf(&known, "%s%s", k == metrics ? "" : ", ", *k);
        loom_err_set(err, LOOM_EINVAL, "field \"prices[%zu].metric\": \"%.64s\" is not one of %s",
                     idx, metric, known.buf);
        strbuf_release(&known);
        return -1;
    }
    json_t *sku = json_object_get(p, "sku");
    if (sku && !json_is_null(sku) && (!json_is_string(sku) || strlen(json_string_value(sku)) > 128))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"prices[%zu].sku\": must be a string of at most 128 characters",
                            idx);
    ret->metric = metric;
    ret->sku = json_is_string(sku) ? json_string_value(sku) : "";
    if (get_decimal(p, "unit_price", idx, true, ret->unit_price, err) < 0 ||
        get_decimal(p, "free_per_month", idx, false, ret->free_per_month, err) < 0)
        return -1;
    return 0;
}

int loom_price_sheet_check(json_t *sheet, const char *const *metrics, int64_t now_s,
                           struct loom_price_sheet *ret, struct loom_err *err)
{
    static const char *const fields[] = {"currency", "effective_from", "description", "prices",
                                         NULL};
    if (!json_is_object(sheet))
        return loom_err_set(err, LOOM_EINVAL, "a price sheet must be a JSON object");
    if (loom_json_check_fields(sheet, fields, err) < 0)
        return -1;
    memset(ret, 0, sizeof(*ret));
    const char *cur = NULL, *eff = NULL, *desc = "";
    if (loom_json_get_string(sheet, "currency", true, 3, &cur, err) < 0 ||
        loom_json_get_string(sheet, "effective_from", false, 64, &eff, err) < 0 ||
        loom_json_get_string(sheet, "description", false, 500, &desc, err) < 0)
        return -1;
    if (strlen(cur) != 3 || cur[0] < 'A' || cur[0] > 'Z' || cur[1] < 'A' || cur[1] > 'Z' ||
        cur[2] < 'A' || cur[2] > 'Z')
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"currency\": \"%s\" is not an ISO 4217 code (three capital "
                            "letters, like USD)",
                            cur);
    memcpy(ret->currency, cur, 4);
    int64_t hour_now = now_s - now_s % 3600;
    ret->effective_from_s = hour_now;
    if (eff) {
        int64_t ns;
        if (loom_parse_rfc3339_ns(eff, strlen(eff), &ns) < 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"effective_from\": \"%s\" is not an RFC 3339 time", eff);
        if (ns % (3600LL * 1000000000LL) != 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"effective_from\": must be on the hour (like "
                                "2026-06-01T00:00:00Z): usage is rated by the hour");
        ret->effective_from_s = ns / 1000000000LL;
        if (ret->effective_from_s < hour_now) {
            char t[32];
            loom_format_time_ms(hour_now * 1000, t);
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"effective_from\": must not be before the current hour "
                                "(%s): earlier hours may be closed, and closed hours never change",
                                t);
        }
    }
    ret->description = desc;
    json_t *prices = json_object_get(sheet, "prices");
    if (!json_is_array(prices) || json_array_size(prices) == 0 ||
        json_array_size(prices) > LOOM_PRICES_MAX)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"prices\": must be an array of 1 to %d prices",
                            LOOM_PRICES_MAX);
    size_t i;
    json_t *p;
    json_array_foreach(prices, i, p)
    {
        if (check_price(p, i, metrics, &ret->prices[i], err) < 0)
            return -1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(ret->prices[j].metric, ret->prices[i].metric) == 0 &&
                strcmp(ret->prices[j].sku, ret->prices[i].sku) == 0)
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"prices[%zu]\": %s%s%s is priced twice (also in "
                                    "prices[%zu])",
                                    i, ret->prices[i].metric, ret->prices[i].sku[0] ? " SKU " : "",
                                    ret->prices[i].sku, j);
        ret->n++;
    }
    return 0;
}

/* ---- the FOCUS export -------------------------------------------------------------- */

#define MAX_RANGE_NS (400LL * 86400 * 1000000000LL)

int loom_focus_query_parse(const char *(*get)(void *arg, const char *name), void *arg,
                           struct loom_focus_query *ret, struct loom_err *err)
{
    memset(ret, 0, sizeof(*ret));
    static const char *const times[] = {"from", "to"};
    int64_t *dst[] = {&ret->from_ns, &ret->to_ns};
    for (size_t i = 0; i < 2; i++) {
        const char *v = get(arg, times[i]);
        if (!v || !*v)
            return loom_err_set(err, LOOM_EINVAL,
                                "%s: is required (RFC 3339, a day 2026-05-01 or a month 2026-05)",
                                times[i]);
        if (loom_parse_time_param(v, dst[i]) < 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "%s: \"%.40s\" is not RFC 3339, a day (2026-05-01) or a month "
                                "(2026-05)",
                                times[i], v);
    }
    if (ret->to_ns <= ret->from_ns)
        return loom_err_set(err, LOOM_EINVAL, "to: must be after from");
    if (ret->to_ns - ret->from_ns > MAX_RANGE_NS)
        return loom_err_set(err, LOOM_EINVAL, "to: at most 400 days after from");
    const char *p = get(arg, "project");
    if (p && *p) {
        if (!loom_is_dns_label(p))
            return loom_err_set(err, LOOM_EINVAL, "project: \"%.64s\" is not a project name", p);
        snprintf(ret->project, sizeof(ret->project), "%s", p);
    }
    const char *open = get(arg, "include_open");
    if (open && *open) {
        if (strcmp(open, "true") == 0 || strcmp(open, "1") == 0)
            ret->include_open = true;
        else if (strcmp(open, "false") != 0 && strcmp(open, "0") != 0)
            return loom_err_set(err, LOOM_EINVAL, "include_open: must be true or false");
    }
    return 0;
}

void loom_csv_field(struct strbuf *out, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        strbuf_addstr(out, s);
        return;
    }
    strbuf_addch(out, '"');
    for (; *s; s++) {
        if (*s == '"')
            strbuf_addch(out, '"');
        strbuf_addch(out, *s);
    }
    strbuf_addch(out, '"');
}

/* The columns, in the order the query produces them. */
static const char *const focus_columns[] = {
    "BilledCost",        "BillingAccountId",   "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd",  "BillingPeriodStart", "ChargeCategory",     "ChargeClass",
    "ChargeDescription", "ChargeFrequency",    "ChargePeriodEnd",    "ChargePeriodStart",
    "ConsumedQuantity",  "ConsumedUnit",       "ContractedCost",     "ContractedUnitPrice",
    "EffectiveCost",     "InvoiceIssuerName",  "ListCost",           "ListUnitPrice",
    "PricingCategory",   "PricingQuantity",    "PricingUnit",        "ProviderName",
    "PublisherName",     "ResourceId",         "ResourceName",       "ResourceType",
    "ServiceCategory",   "ServiceName",        "ServiceSubcategory", "SkuId",
    "SkuPriceId",        "SubAccountId",       "SubAccountName",     "Tags",
    "x_Metric",          "x_Revision",         "x_Sources",          "x_FreeQuantity",
    "x_Final",           "x_RecordId",
};

void loom_focus_header(struct strbuf *out)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(focus_columns); i++)
        strbuf_addf(out, "%s%s", i ? "," : "", focus_columns[i]);
    strbuf_addstr(out, "\r\n");
}

/* ISO 8601 in UTC, as FOCUS writes times */
#define FOCUS_ISO8601 "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'"

/* The billing account is the platform: one operator bills its projects
 * (sub-accounts). A correction belongs to the billing period it was found
 * in; a charge period stays the hour it is for. */
static const char page_sql[] =
    "WITH r AS ( "
    "  SELECT u.*, m.unit, m.description AS mdesc, "
    "         CASE WHEN u.correction > 0 THEN u.created_at ELSE u.hour END AS billed_at "
    "  FROM usage_records u JOIN usage_metrics m ON m.name = u.metric "
    "  WHERE u.hour >= timestamptz 'epoch' + $1::bigint * interval '1 microsecond' "
    "    AND u.hour < timestamptz 'epoch' + $2::bigint * interval '1 microsecond' "
    "    AND ($3 = '' OR u.project = $3) AND ($4::bool OR u.closed_pass IS NOT NULL) "
    "    AND ($5::timestamptz IS NULL OR (u.hour, u.id) > ($5::timestamptz, $6::bigint)) "
    "  ORDER BY u.hour, u.id LIMIT $7) "
    "SELECT trim_scale(billed_cost)::text, 'loom', 'Loom', currency, "
    "  to_char(date_trunc('month', billed_at AT TIME ZONE 'UTC') + interval '1 month', "
    "          " FOCUS_ISO8601 "), "
    "  to_char(date_trunc('month', billed_at AT TIME ZONE 'UTC'), " FOCUS_ISO8601 "), "
    "  'Usage', CASE WHEN correction > 0 THEN 'Correction' ELSE '' END, "
    "  mdesc || ': ' || CASE kind WHEN 'job' THEN 'job run ' ELSE kind || ' ' END || resource "
    "        || CASE WHEN revision <> '' THEN ' (revision ' || revision || ')' ELSE '' END, "
    "  'Usage-Based', "
    "  to_char((hour + interval '1 hour') AT TIME ZONE 'UTC', " FOCUS_ISO8601 "), "
    "  to_char(hour AT TIME ZONE 'UTC', " FOCUS_ISO8601 "), "
    "  trim_scale(quantity)::text, unit, trim_scale(list_cost)::text, "
    "  trim_scale(unit_price)::text, trim_scale(billed_cost)::text, 'Loom', "
    "  trim_scale(list_cost)::text, trim_scale(unit_price)::text, 'Standard', "
    "  trim_scale(quantity)::text, unit, 'Loom', 'Loom', "
    "  '/v1/projects/' || project || CASE kind WHEN 'job' THEN '/job_runs/' WHEN 'app' THEN "
    "    '/apps/' WHEN 'function' THEN '/functions/' ELSE '/build_runs/' END || resource, "
    "  resource, "
    "  CASE kind WHEN 'job' THEN 'Job Run' WHEN 'app' THEN 'App' WHEN 'function' THEN 'Function' "
    "            ELSE 'Build Run' END, "
    "  CASE kind WHEN 'build' THEN 'Developer Tools' ELSE 'Compute' END, "
    "  CASE kind WHEN 'job' THEN 'Loom Jobs' WHEN 'app' THEN 'Loom Apps' WHEN 'function' "
    "            THEN 'Loom Functions' ELSE 'Loom Builds' END, "
    "  CASE kind WHEN 'function' THEN 'Serverless Compute' WHEN 'build' THEN "
    "    'Other (Developer Tools)' ELSE 'Containers' END, "
    "  metric || CASE WHEN sku <> '' THEN ':' || sku ELSE '' END, "
    "  CASE WHEN price_version IS NULL THEN '' ELSE price_version || ':' || metric "
    "       || CASE WHEN sku <> '' THEN ':' || sku ELSE '' END END, "
    "  project_id::text, project, "
    "  jsonb_build_object('loom:kind', kind, 'loom:revision', revision)::text, "
    "  metric, revision, sources::text, trim_scale(free_quantity)::text, "
    "  CASE WHEN closed_pass IS NULL THEN 'false' ELSE 'true' END, id::text, "
    /* r.: the output's "hour" and "id" are the text columns, whose order is not theirs */
    "  hour::text, id::text FROM r ORDER BY r.hour, r.id";

int loom_focus_page(struct loom_db *db, const struct loom_focus_query *q,
                    struct loom_focus_cursor *cur, size_t max_rows, struct strbuf *out,
                    bool *ret_done, struct loom_err *err)
{
    char from[24], to[24], limit[24];
    snprintf(from, sizeof(from), "%" PRId64, q->from_ns / 1000);
    snprintf(to, sizeof(to), "%" PRId64, q->to_ns / 1000);
    snprintf(limit, sizeof(limit), "%zu", max_rows);
    const char *params[] = {from,
                            to,
                            q->project,
                            q->include_open ? "true" : "false",
                            cur->started ? cur->hour : NULL,
                            cur->started ? cur->id : NULL,
                            limit};
    _cleanup_pgres_ PGresult *res = loom_db_exec(db, page_sql, 7, params, err);
    if (!res)
        return -1;
    int n = PQntuples(res);
    size_t ncols = LOOM_ARRAY_SIZE(focus_columns);
    for (int r = 0; r < n; r++) {
        for (size_t c = 0; c < ncols; c++) {
            if (c)
                strbuf_addch(out, ',');
            loom_csv_field(out, PQgetvalue(res, r, (int)c));
        }
        strbuf_addstr(out, "\r\n");
    }
    if (n > 0) {
        cur->started = true;
        snprintf(cur->hour, sizeof(cur->hour), "%s", PQgetvalue(res, n - 1, (int)ncols));
        snprintf(cur->id, sizeof(cur->id), "%s", PQgetvalue(res, n - 1, (int)ncols + 1));
    }
    *ret_done = (size_t)n < max_rows;
    return 0;
}
