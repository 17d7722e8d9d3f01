/* common/usage: the price sheet check, the export's parameters and CSV. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "json.h"
#include "strbuf.h"
#include "usage.h"

static const char *const metrics[] = {"vcpu_seconds_used", "gpu_seconds", "requests", NULL};
/* 2026-05-01T10:20:00Z */
#define NOW 1777630800

static int check(const char *text, struct loom_price_sheet *ps, struct loom_err *err)
{
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    int rc = loom_price_sheet_check(j, metrics, NOW, ps, err);
    /* the sheet's strings point into j: compare before freeing */
    if (rc == 0 && ps->n > 0)
        assert_non_null(ps->prices[0].metric);
    json_decref(j);
    return rc;
}

static void test_decimal(void **state)
{
    (void)state;
    assert_true(loom_decimal_valid("0"));
    assert_true(loom_decimal_valid("0.0000342"));
    assert_true(loom_decimal_valid("100000"));
    assert_true(loom_decimal_valid("123456789012345.123456789012345"));
    assert_false(loom_decimal_valid(""));
    assert_false(loom_decimal_valid("."));
    assert_false(loom_decimal_valid(".5"));
    assert_false(loom_decimal_valid("5."));
    assert_false(loom_decimal_valid("-1"));
    assert_false(loom_decimal_valid("1e3"));
    assert_false(loom_decimal_valid("1,5"));
    assert_false(loom_decimal_valid(" 1"));
    assert_false(loom_decimal_valid("1234567890123456"));
    assert_false(loom_decimal_valid("1.1234567890123456"));
}

static void test_price_sheet(void **state)
{
    (void)state;
    struct loom_price_sheet ps;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(check("{\"currency\":\"EUR\",\"effective_from\":\"2026-05-02T00:00:00Z\","
                           "\"description\":\"May\",\"prices\":["
                           "{\"metric\":\"vcpu_seconds_used\",\"unit_price\":\"0.0000342\","
                           "\"free_per_month\":\"100000\"},"
                           "{\"metric\":\"gpu_seconds\",\"sku\":\"A100\",\"unit_price\":\"0.001\"},"
                           "{\"metric\":\"gpu_seconds\",\"unit_price\":2}]}",
                           &ps, &err),
                     0);
    assert_string_equal(ps.currency, "EUR");
    assert_int_equal(ps.effective_from_s, 1777680000);
    assert_int_equal(ps.n, 3);
    assert_string_equal(ps.prices[0].unit_price, "0.0000342");
    assert_string_equal(ps.prices[0].free_per_month, "100000");
    assert_string_equal(ps.prices[1].free_per_month, "0");
    assert_string_equal(ps.prices[2].unit_price, "2");
    assert_string_equal(ps.prices[2].sku, "");

    /* without effective_from: the current hour */
    assert_int_equal(
        check("{\"currency\":\"USD\",\"prices\":[{\"metric\":\"requests\",\"unit_price\":\"0\"}]}",
              &ps, &err),
        0);
    assert_int_equal(ps.effective_from_s, NOW - NOW % 3600);

    static const struct {
        const char *sheet, *msg;
    } bad[] = {
        {"[]", "a price sheet must be a JSON object"},
        {"{\"currency\":\"USD\",\"prices\":[],\"x\":1}", "unknown field \"x\""},
        {"{\"prices\":[]}", "field \"currency\""},
        {"{\"currency\":\"usd\",\"prices\":[]}",
         "field \"currency\": \"usd\" is not an ISO 4217 code (three capital letters, like USD)"},
        {"{\"currency\":\"USD\",\"prices\":[]}", "field \"prices\": must be an array of 1 to 200 "
                                                 "prices"},
        {"{\"currency\":\"USD\",\"effective_from\":\"tomorrow\",\"prices\":[]}",
         "field \"effective_from\": \"tomorrow\" is not an RFC 3339 time"},
        {"{\"currency\":\"USD\",\"effective_from\":\"2026-06-01T00:30:00Z\",\"prices\":[]}",
         "field \"effective_from\": must be on the hour"},
        {"{\"currency\":\"USD\",\"effective_from\":\"2026-05-01T09:00:00Z\",\"prices\":[]}",
         "field \"effective_from\": must not be before the current hour "
         "(2026-05-01T10:00:00.000Z): earlier hours may be closed, and closed hours never change"},
        {"{\"currency\":\"USD\",\"prices\":[1]}", "field \"prices[0]\": must be an object"},
        {"{\"currency\":\"USD\",\"prices\":[{\"unit_price\":\"1\"}]}",
         "field \"prices[0].metric\": is required"},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"cpu\",\"unit_price\":\"1\"}]}",
         "field \"prices[0].metric\": \"cpu\" is not one of vcpu_seconds_used, gpu_seconds, "
         "requests"},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"requests\"}]}",
         "field \"prices[0].unit_price\": is required"},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"requests\",\"unit_price\":0.5}]}",
         "field \"prices[0].unit_price\": must be a decimal as a string (\"0.0000342\")"},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"requests\",\"unit_price\":\"-1\"}]}",
         "field \"prices[0].unit_price\": \"-1\" is not a decimal"},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"requests\",\"unit_price\":\"1\","
         "\"free_per_month\":\"x\"}]}",
         "field \"prices[0].free_per_month\": \"x\" is not a decimal"},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"requests\",\"unit_price\":\"1\","
         "\"tier\":1}]}",
         "field \"prices[0]\": unknown field \"tier\""},
        {"{\"currency\":\"USD\",\"prices\":[{\"metric\":\"gpu_seconds\",\"sku\":\"A\","
         "\"unit_price\":\"1\"},{\"metric\":\"gpu_seconds\",\"sku\":\"A\",\"unit_price\":\"2\"}]}",
         "field \"prices[1]\": gpu_seconds SKU A is priced twice (also in prices[0])"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        loom_err_clear(&err);
        json_t *j = json_loads(bad[i].sheet, JSON_DECODE_ANY, NULL);
        assert_non_null(j);
        assert_int_equal(loom_price_sheet_check(j, metrics, NOW, &ps, &err), -1);
        json_decref(j);
        assert_int_equal(err.code, LOOM_EINVAL);
        if (!strstr(err.msg, bad[i].msg))
            fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, err.msg, bad[i].msg);
    }
}

static const char *get_from(void *arg, const char *name)
{
    const char *const *kv = arg;
    for (; kv[0]; kv += 2)
        if (strcmp(kv[0], name) == 0)
            return kv[1];
    return NULL;
}

static void test_focus_query(void **state)
{
    (void)state;
    struct loom_focus_query q;
    struct loom_err err = LOOM_ERR_INIT;
    const char *ok[] = {"from",    "2026-05", "to",           "2026-05-02T12:00:00+02:00",
                        "project", "shop",    "include_open", "true",
                        NULL};
    assert_int_equal(loom_focus_query_parse(get_from, ok, &q, &err), 0);
    assert_int_equal(q.from_ns, 1777593600LL * 1000000000LL);
    assert_int_equal(q.to_ns, (1777680000LL + 10 * 3600) * 1000000000LL);
    assert_string_equal(q.project, "shop");
    assert_true(q.include_open);

    static const struct {
        const char *kv[9];
        const char *msg;
    } bad[] = {
        {{"to", "2026-06", NULL}, "from: is required"},
        {{"from", "2026-13", "to", "2026-06", NULL}, "from: \"2026-13\" is not RFC 3339"},
        {{"from", "2026-06", "to", "2026-05", NULL}, "to: must be after from"},
        {{"from", "2026-01", "to", "2027-06", NULL}, "to: at most 400 days after from"},
        {{"from", "2026-05", "to", "2026-06", "project", "Bad_Name", NULL},
         "project: \"Bad_Name\" is not a project name"},
        {{"from", "2026-05", "to", "2026-06", "include_open", "yes", NULL},
         "include_open: must be true or false"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        loom_err_clear(&err);
        assert_int_equal(loom_focus_query_parse(get_from, (void *)bad[i].kv, &q, &err), -1);
        if (!strstr(err.msg, bad[i].msg))
            fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, err.msg, bad[i].msg);
    }
}

static void test_csv(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    loom_csv_field(&sb, "plain");
    strbuf_addch(&sb, ',');
    loom_csv_field(&sb, "a,b");
    strbuf_addch(&sb, ',');
    loom_csv_field(&sb, "{\"loom:kind\": \"job\"}");
    strbuf_addch(&sb, ',');
    loom_csv_field(&sb, "two\nlines");
    strbuf_addch(&sb, ',');
    loom_csv_field(&sb, "");
    assert_string_equal(sb.buf,
                        "plain,\"a,b\",\"{\"\"loom:kind\"\": \"\"job\"\"}\",\"two\nlines\",");
    strbuf_reset(&sb);

    /* the 21 columns FOCUS 1.0 to 1.2 make mandatory are all there */
    loom_focus_header(&sb);
    static const char *const mandatory[] = {
        "BilledCost",         "BillingAccountId",  "BillingAccountName", "BillingCurrency",
        "BillingPeriodStart", "BillingPeriodEnd",  "ChargeCategory",     "ChargeClass",
        "ChargeDescription",  "ChargePeriodStart", "ChargePeriodEnd",    "ContractedCost",
        "EffectiveCost",      "InvoiceIssuerName", "ListCost",           "ProviderName",
        "PublisherName",      "PricingQuantity",   "PricingUnit",        "ServiceCategory",
        "ServiceName",
    };
    for (size_t i = 0; i < sizeof(mandatory) / sizeof(mandatory[0]); i++) {
        char col[64];
        snprintf(col, sizeof(col), ",%s,", mandatory[i]);
        struct strbuf line = STRBUF_INIT;
        strbuf_addf(&line, ",%.*s,", (int)(sb.len - 2), sb.buf);
        if (!strstr(line.buf, col))
            fail_msg("column %s is missing", mandatory[i]);
        strbuf_release(&line);
    }
    assert_true(sb.len > 2 && strcmp(sb.buf + sb.len - 2, "\r\n") == 0);
    strbuf_release(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decimal),
        cmocka_unit_test(test_price_sheet),
        cmocka_unit_test(test_focus_query),
        cmocka_unit_test(test_csv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
