/* Usage: what a project consumed and what it cost (GET .../usage), and the
 * operator's export to billing systems (GET /v1/admin/usage/export, FinOps
 * FOCUS 1.2 CSV, streamed). Both read the hourly records metering rates;
 * hours not closed yet show provisional costs ("final": false). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "strbuf.h"
#include "usage.h"
#include "util.h"

/* ---- the project's view ------------------------------------------------------------ */

struct usage_grouping {
    const char *name;
    const char *cols; /* two text columns: what a row is of */
    const char *keys[2];
};

static const struct usage_grouping groupings[] = {
    {"resource", "u.kind, u.resource", {"kind", "resource"}},
    {"kind", "u.kind, ''", {"kind", NULL}},
    {"day", "to_char(u.hour AT TIME ZONE 'UTC', 'YYYY-MM-DD'), ''", {"day", NULL}},
};

/* A time query parameter into microseconds since the epoch, as text. */
static int time_param(struct loom_http_req *req, const char *name, int64_t def_ns, char out[24],
                      struct loom_err *err)
{
    const char *v = loom_http_query(req, name);
    int64_t ns = def_ns;
    if (v && *v && loom_parse_time_param(v, &ns) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "query parameter \"%s\": \"%.40s\" is not RFC 3339, a day "
                            "(2026-05-01) or a month (2026-05)",
                            name, v);
    snprintf(out, 24, "%" PRId64, ns / 1000);
    return 0;
}

void api_usage_get(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    /* by default: this month so far, the current hour included */
    int64_t now_s = loom_now_ms() / 1000;
    time_t t = (time_t)now_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    int64_t month_ns = (int64_t)timegm(&tm) * 1000000000LL;
    int64_t next_hour_ns = (now_s - now_s % 3600 + 3600) * 1000000000LL;
    char from[24], to[24];
    if (time_param(req, "from", month_ns, from, &err) < 0 ||
        time_param(req, "to", next_hour_ns, to, &err) < 0)
        API_FAIL(req, &err);
    if (strtoll(to, NULL, 10) <= strtoll(from, NULL, 10)) {
        loom_err_set(&err, LOOM_EINVAL, "query parameter \"to\": must be after from");
        API_FAIL(req, &err);
    }
    const char *by = loom_http_query(req, "group_by");
    const struct usage_grouping *g = &groupings[0];
    if (by) {
        g = NULL;
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(groupings); i++)
            if (strcmp(by, groupings[i].name) == 0)
                g = &groupings[i];
        if (!g) {
            loom_err_set(&err, LOOM_EINVAL,
                         "query parameter \"group_by\": must be resource, kind or day");
            API_FAIL(req, &err);
        }
    }
    char sql[1400];
    snprintf(sql, sizeof(sql),
             "SELECT %s, u.metric, m.unit, u.currency, trim_scale(sum(u.quantity))::text, "
             "trim_scale(sum(u.billed_cost))::text, trim_scale(sum(u.list_cost))::text, "
             "bool_and(u.closed_pass IS NOT NULL) "
             "FROM usage_records u JOIN usage_metrics m ON m.name = u.metric "
             "WHERE u.project_id = $1 "
             "AND u.hour >= timestamptz 'epoch' + $2::bigint * interval '1 microsecond' "
             "AND u.hour < timestamptz 'epoch' + $3::bigint * interval '1 microsecond' "
             "GROUP BY 1, 2, u.metric, m.unit, u.currency ORDER BY 1, 2, u.metric, u.currency",
             g->cols);
    const char *params[] = {proj.id_str, from, to};
    _cleanup_pgres_ PGresult *res = loom_db_exec(db, sql, 3, params, &err);
    if (!res)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *out = json_object();
    json_object_set_new(out, "project", json_string(proj.name));
    char ft[32], tt[32];
    loom_format_time_ms(strtoll(from, NULL, 10) / 1000, ft);
    loom_format_time_ms(strtoll(to, NULL, 10) / 1000, tt);
    json_object_set_new(out, "from", json_string(ft));
    json_object_set_new(out, "to", json_string(tt));
    json_object_set_new(out, "group_by", json_string(g->name));
    json_t *items = json_array();
    json_object_set_new(out, "items", items);
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = json_object();
        for (int k = 0; k < 2; k++)
            if (g->keys[k])
                api_json_set_str(o, g->keys[k], PQgetvalue(res, r, k));
        api_json_set_str(o, "metric", PQgetvalue(res, r, 2));
        api_json_set_str(o, "unit", PQgetvalue(res, r, 3));
        api_json_set_str(o, "currency", PQgetvalue(res, r, 4));
        /* decimals as strings: exact, whatever the client's numbers are */
        api_json_set_str(o, "quantity", PQgetvalue(res, r, 5));
        api_json_set_str(o, "cost", PQgetvalue(res, r, 6));
        api_json_set_str(o, "list_cost", PQgetvalue(res, r, 7));
        json_object_set_new(o, "final", json_boolean(PQgetvalue(res, r, 8)[0] == 't'));
        json_array_append_new(items, o);
    }
    _cleanup_pgres_ PGresult *tot = loom_db_query(
        db, &err,
        "SELECT currency, trim_scale(sum(billed_cost))::text, trim_scale(sum(list_cost))::text "
        "FROM usage_records WHERE project_id = $1 "
        "AND hour >= timestamptz 'epoch' + $2::bigint * interval '1 microsecond' "
        "AND hour < timestamptz 'epoch' + $3::bigint * interval '1 microsecond' "
        "GROUP BY currency ORDER BY currency",
        proj.id_str, from, to);
    if (!tot)
        API_FAIL(req, &err);
    json_t *totals = json_array();
    json_object_set_new(out, "totals", totals);
    for (int r = 0; r < PQntuples(tot); r++)
        json_array_append_new(totals,
                              json_pack("{s:s,s:s,s:s}", "currency", PQgetvalue(tot, r, 0), "cost",
                                        PQgetvalue(tot, r, 1), "list_cost", PQgetvalue(tot, r, 2)));
    if (g == &groupings[0]) {
        /* the memory peak is a maximum, not a sum: from the samples */
        _cleanup_pgres_ PGresult *pk =
            loom_db_query(db, &err,
                          "SELECT kind, resource, max(memory_peak_bytes) FROM usage_samples "
                          "WHERE project_id = $1 "
                          "AND ts >= timestamptz 'epoch' + $2::bigint * interval '1 microsecond' "
                          "AND ts < timestamptz 'epoch' + $3::bigint * interval '1 microsecond' "
                          "GROUP BY kind, resource ORDER BY kind, resource",
                          proj.id_str, from, to);
        if (!pk)
            API_FAIL(req, &err);
        json_t *peaks = json_array();
        json_object_set_new(out, "peaks", peaks);
        for (int r = 0; r < PQntuples(pk); r++) {
            json_t *o = json_object();
            api_json_set_str(o, "kind", PQgetvalue(pk, r, 0));
            api_json_set_str(o, "resource", PQgetvalue(pk, r, 1));
            api_json_set_int(o, "memory_peak_bytes", PQgetvalue(pk, r, 2));
            json_array_append_new(peaks, o);
        }
    }
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

/* ---- the operator's export ---------------------------------------------------------- */

#define EXPORT_PAGE_ROWS 2000

struct export_stream {
    struct loom_focus_query q;
    struct loom_focus_cursor cur;
    struct strbuf first; /* the header and first page, made before answering */
    bool done;
};

static const char *query_arg(void *arg, const char *name)
{
    return loom_http_query(arg, name);
}

/* The next page, on the server thread, with its database connection: the
 * keyset cursor needs no transaction between pages. */
static int export_fill(void *arg, struct strbuf *out)
{
    struct export_stream *e = arg;
    if (e->first.len) {
        strbuf_add(out, e->first.buf, e->first.len);
        strbuf_release(&e->first);
        return e->done ? -1 : 1;
    }
    if (e->done)
        return -1;
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = loom_service_thread_db(&err);
    if (!db || loom_focus_page(db, &e->q, &e->cur, EXPORT_PAGE_ROWS, out, &e->done, &err) < 0) {
        log_error("usage export cut short: %s", err.msg);
        return LOOM_HTTP_STREAM_ABORT;
    }
    return e->done ? -1 : 1;
}

static void export_done(void *arg)
{
    struct export_stream *e = arg;
    strbuf_release(&e->first);
    free(e);
}

void api_admin_usage_export(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    if (api_admin_begin(req, &db, &err) < 0)
        API_FAIL(req, &err);
    const char *format = loom_http_query(req, "format");
    if (!format || strcmp(format, "focus") != 0) {
        loom_err_set(&err, LOOM_EINVAL,
                     "query parameter \"format\": must be focus (FinOps FOCUS 1.2 CSV)");
        API_FAIL(req, &err);
    }
    struct export_stream *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    if (loom_focus_query_parse(query_arg, req, &e->q, &err) < 0) {
        free(e);
        /* "to: must be after from" -> query parameter "to": must be after from */
        struct loom_err e2 = LOOM_ERR_INIT;
        const char *colon = strchr(err.msg, ':');
        loom_err_set(&e2, LOOM_EINVAL, "query parameter \"%.*s\"%s",
                     colon ? (int)(colon - err.msg) : 0, err.msg, colon ? colon : err.msg);
        API_FAIL(req, &e2);
    }
    /* the header and the first page before answering: a failure now is a
     * problem, not a cut stream */
    strbuf_init(&e->first);
    loom_focus_header(&e->first);
    if (loom_focus_page(db, &e->q, &e->cur, EXPORT_PAGE_ROWS, &e->first, &e->done, &err) < 0) {
        export_done(e);
        API_FAIL(req, &err);
    }
    loom_http_set_header(req, "Content-Disposition", "attachment; filename=\"loom-usage.csv\"");
    loom_http_reply_stream(req, 200, "text/csv; charset=utf-8", export_fill, export_done, e);
}
