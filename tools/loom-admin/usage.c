/* loom-admin: price sheets, the FOCUS export of usage, log retention. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "cleanup.h"
#include "config.h"
#include "json.h"
#include "quantity.h"
#include "strbuf.h"
#include "usage.h"
#include "util.h"

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static void db_closep(struct loom_db **db)
{
    loom_db_close(*db);
}
#define _cleanup_db_ __attribute__((cleanup(db_closep)))

/* ---- prices ----------------------------------------------------------------------- */

/* "METRIC[/SKU]=VALUE" into the price for METRIC and SKU in prices (made
 * when missing), member field = VALUE as a string. */
static int price_flag(json_t *prices, const char *flag, const char *arg, const char *field)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return usage_error("%s: expected METRIC[/SKU]=VALUE", flag);
    _cleanup_free_ char *key = strndup(arg, (size_t)(eq - arg));
    char *slash = strchr(key, '/');
    const char *sku = "";
    if (slash) {
        *slash = '\0';
        sku = slash + 1;
    }
    size_t i;
    json_t *p, *found = NULL;
    json_array_foreach(prices, i, p)
    {
        if (strcmp(json_string_value(json_object_get(p, "metric")), key) == 0 &&
            strcmp(json_string_value(json_object_get(p, "sku")), sku) == 0)
            found = p;
    }
    if (!found) {
        found = json_pack("{s:s,s:s}", "metric", key, "sku", sku);
        json_array_append_new(prices, found);
    }
    json_object_set_new(found, field, json_string(eq + 1));
    return 0;
}

/* The metrics PostgreSQL knows, NULL-terminated (in res). */
static int known_metrics(struct loom_db *db, PGresult **ret_res, const char ***ret,
                         struct loom_err *err)
{
    PGresult *res =
        loom_db_query(db, err, "SELECT name FROM usage_metrics WHERE $1 ORDER BY name", "true");
    if (!res)
        return -1;
    const char **names = calloc((size_t)PQntuples(res) + 1, sizeof(*names));
    if (!names)
        abort();
    for (int r = 0; r < PQntuples(res); r++)
        names[r] = PQgetvalue(res, r, 0);
    *ret_res = res;
    *ret = names;
    return 0;
}

static int prices_set(int argc, char **argv)
{
    static const struct option lo[] = {{"file", required_argument, NULL, 'f'},
                                       {"currency", required_argument, NULL, 'c'},
                                       {"effective-from", required_argument, NULL, 'e'},
                                       {"description", required_argument, NULL, 'd'},
                                       {"price", required_argument, NULL, 'p'},
                                       {"free", required_argument, NULL, 'r'},
                                       {0}};
    _cleanup_json_ json_t *sheet = NULL;
    _cleanup_json_ json_t *flags = json_pack("{s:[]}", "prices");
    bool any_flag = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        struct loom_err err = LOOM_ERR_INIT;
        switch (o) {
        case 'f': {
            _cleanup_free_ char *text = NULL;
            size_t len = 0;
            if (loom_read_file(optarg, &text, &len, &err) < 0)
                return fail(&err);
            json_decref(sheet);
            sheet = json_loadb(text, len, 0, NULL);
            if (!sheet)
                return usage_error("%s is not JSON", optarg);
            break;
        }
        case 'c':
        case 'e':
        case 'd':
            json_object_set_new(flags,
                                o == 'c'   ? "currency"
                                : o == 'e' ? "effective_from"
                                           : "description",
                                json_string(optarg));
            any_flag = true;
            break;
        case 'p':
        case 'r':
            if (price_flag(json_object_get(flags, "prices"), o == 'p' ? "--price" : "--free",
                           optarg, o == 'p' ? "unit_price" : "free_per_month") != 0)
                return 2;
            any_flag = true;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc || (!sheet && !any_flag) || (sheet && any_flag))
        return usage_error("%s", "prices set takes --file SHEET.json, or --currency and --price "
                                 "(with --free, --effective-from, --description)");
    if (!sheet)
        sheet = json_incref(flags);
    /* --free alone on a metric leaves no unit_price: the check names it */
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_db_ struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0)
        return fail(&err);
    _cleanup_pgres_ PGresult *mres = NULL;
    _cleanup_free_ const char **metrics = NULL;
    if (known_metrics(db, &mres, &metrics, &err) < 0)
        return fail(&err);
    struct loom_price_sheet *ps = calloc(1, sizeof(*ps));
    if (!ps)
        abort();
    int rc = 1;
    char eff[24], version[24] = "";
    if (loom_price_sheet_check(sheet, metrics, loom_now_ms() / 1000, ps, &err) < 0) {
        fprintf(stderr, "loom-admin: invalid price sheet: %s\n", err.msg);
        free(ps);
        return 1;
    }
    snprintf(eff, sizeof(eff), "%" PRId64, ps->effective_from_s);
    if (loom_db_begin(db, &err) < 0)
        goto out;
    PGresult *res =
        loom_db_query(db, &err,
                      "INSERT INTO price_sheets (effective_from, currency, description) "
                      "VALUES (to_timestamp($1::bigint), $2, $3) RETURNING version",
                      eff, ps->currency, ps->description);
    if (!res) {
        if (err.code == LOOM_ECONFLICT)
            loom_err_set(&err, LOOM_ECONFLICT,
                         "a price sheet takes effect at that hour already; sheets are never "
                         "changed: give the new one another --effective-from");
        goto out;
    }
    snprintf(version, sizeof(version), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    for (size_t i = 0; i < ps->n; i++) {
        const struct loom_price *p = &ps->prices[i];
        res = loom_db_query(db, &err,
                            "INSERT INTO prices (version, metric, sku, unit_price, free_per_month) "
                            "VALUES ($1, $2, $3, $4::numeric, $5::numeric)",
                            version, p->metric, p->sku, p->unit_price, p->free_per_month);
        if (!res)
            goto out;
        PQclear(res);
    }
    /* the hours still open from then on get the new prices now (metering
     * rates each row again when its hour closes) */
    res = loom_db_query(db, &err,
                        "SELECT usage_rate(coalesce(array_agg(id), '{}')) FROM usage_records "
                        "WHERE closed_pass IS NULL AND hour >= to_timestamp($1::bigint)",
                        eff);
    if (!res)
        goto out;
    PQclear(res);
    if (loom_db_commit(db, &err) < 0)
        goto out;
    char t[32];
    loom_format_time_ms(ps->effective_from_s * 1000, t);
    printf("price sheet version %s: %s, %zu prices, effective from %s\n", version, ps->currency,
           ps->n, t);
    rc = 0;
out:
    if (rc)
        loom_db_rollback(db);
    free(ps);
    return rc ? fail(&err) : 0;
}

static int prices_get(int argc, char **argv)
{
    static const struct option lo[] = {{"at", required_argument, NULL, 'a'}, {0}};
    const char *at = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (o != 'a')
            return 2;
        at = optarg;
    }
    if (optind != argc)
        return usage_error("%s", "usage: prices get [--at TIME]");
    int64_t at_ns = loom_now_ns();
    if (at && loom_parse_time_param(at, &at_ns) < 0)
        return usage_error("--at \"%s\" is not RFC 3339, a day or a month", at);
    char us[24];
    snprintf(us, sizeof(us), "%" PRId64, at_ns / 1000);
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_db_ struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0)
        return fail(&err);
    _cleanup_pgres_ PGresult *sheet =
        loom_db_query(db, &err,
                      "SELECT version, currency, " TS(
                          "effective_from") ", description FROM price_sheets "
                                            "WHERE effective_from <= timestamptz 'epoch' + "
                                            "$1::bigint * interval '1 microsecond' "
                                            "ORDER BY effective_from DESC LIMIT 1",
                      us);
    if (!sheet)
        return fail(&err);
    if (PQntuples(sheet) == 0) {
        printf("no price sheet in effect: usage is rated at 0\n");
        return 0;
    }
    printf("version:         %s\ncurrency:        %s\neffective from:  %s\ndescription:     %s\n\n",
           PQgetvalue(sheet, 0, 0), PQgetvalue(sheet, 0, 1), PQgetvalue(sheet, 0, 2),
           PQgetvalue(sheet, 0, 3));
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT p.metric, p.sku, m.unit, p.unit_price::text, p.free_per_month::text FROM prices p "
        "JOIN usage_metrics m ON m.name = p.metric WHERE p.version = $1 ORDER BY p.metric, p.sku",
        PQgetvalue(sheet, 0, 0));
    if (!res)
        return fail(&err);
    static const char *const h[] = {"METRIC", "SKU", "UNIT", "UNIT_PRICE", "FREE_PER_MONTH"};
    print_table(res, h);
    return 0;
}

int cmd_prices(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "set") == 0)
        return prices_set(argc, argv);
    if (argc >= 1 && strcmp(argv[0], "get") == 0)
        return prices_get(argc, argv);
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        static const char *const h[] = {"VERSION", "EFFECTIVE_FROM", "CURRENCY", "PRICES",
                                        "DESCRIPTION"};
        return query_print(
            "SELECT s.version, " TS(
                "s.effective_from") ", s.currency, "
                                    "(SELECT count(*) FROM prices p WHERE p.version = s.version), "
                                    "s.description FROM price_sheets s ORDER BY s.effective_from",
            h, 0, NULL);
    }
    return usage_error("%s", "usage: prices set ... | prices get [--at TIME] | prices list");
}

/* ---- the usage export ------------------------------------------------------------- */

struct export_args {
    const char *from, *to, *project, *include_open;
};

static const char *export_arg(void *arg, const char *name)
{
    struct export_args *a = arg;
    return strcmp(name, "from") == 0      ? a->from
           : strcmp(name, "to") == 0      ? a->to
           : strcmp(name, "project") == 0 ? a->project
                                          : a->include_open;
}

int cmd_usage(int argc, char **argv)
{
    static const char usage_u[] =
        "usage: usage export --format focus --from TIME --to TIME [--project P] [--include-open]";
    if (argc < 1 || strcmp(argv[0], "export") != 0)
        return usage_error("%s", usage_u);
    static const struct option lo[] = {
        {"format", required_argument, NULL, 'f'}, {"from", required_argument, NULL, 'a'},
        {"to", required_argument, NULL, 'b'},     {"project", required_argument, NULL, 'p'},
        {"include-open", no_argument, NULL, 'o'}, {0}};
    struct export_args a = {0};
    const char *format = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'f':
            format = optarg;
            break;
        case 'a':
            a.from = optarg;
            break;
        case 'b':
            a.to = optarg;
            break;
        case 'p':
            a.project = optarg;
            break;
        case 'o':
            a.include_open = "true";
            break;
        default:
            return 2;
        }
    }
    if (optind != argc)
        return usage_error("%s", usage_u);
    if (!format || strcmp(format, "focus") != 0)
        return usage_error("--format: \"%s\" is not a format (focus: FinOps FOCUS 1.2 CSV)",
                           format ? format : "");
    struct loom_focus_query q;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_focus_query_parse(export_arg, &a, &q, &err) < 0)
        return usage_error("--%s", err.msg);
    _cleanup_db_ struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0)
        return fail(&err);
    struct strbuf out = STRBUF_INIT;
    loom_focus_header(&out);
    struct loom_focus_cursor cur = {0};
    bool done = false;
    int rc = 0;
    while (!done) {
        if (loom_focus_page(db, &q, &cur, 5000, &out, &done, &err) < 0) {
            rc = fail(&err);
            break;
        }
        if (fwrite(out.buf, 1, out.len, stdout) != out.len) {
            perror("loom-admin: writing the export");
            rc = 1;
            break;
        }
        strbuf_reset(&out);
    }
    strbuf_release(&out);
    if (rc == 0 && fflush(stdout) != 0) {
        perror("loom-admin: writing the export");
        rc = 1;
    }
    return rc;
}

/* ---- log retention ---------------------------------------------------------------- */

static int retention_show(struct loom_db *db, const char *project)
{
    struct loom_err err = LOOM_ERR_INIT;
    /* the project's own policy, else the default row */
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT CASE WHEN r.project_id IS NULL THEN 'default' ELSE 'own' END, "
        "       extract(epoch FROM r.max_age)::bigint, r.max_bytes, " TS(
            "r.updated_at") " "
                            "FROM log_retention r WHERE r.project_id = (SELECT id FROM projects "
                            "WHERE name = $1) "
                            "   OR r.project_id IS NULL ORDER BY r.project_id IS NULL LIMIT 1",
        project ? project : "");
    if (!res)
        return fail(&err);
    const char *who = project ? project : "every project without its own";
    if (PQntuples(res) == 0) {
        printf("%s: no policy set; the logshipper's --log-retention (7 days by default) "
               "applies, no size limit\n",
               who);
        return 0;
    }
    char size[32] = "no limit";
    if (!PQgetisnull(res, 0, 2))
        loom_size_format(strtoll(PQgetvalue(res, 0, 2), NULL, 10), size, sizeof(size));
    printf("%s: lines kept %s s (%s policy), at most %s of text, updated %s\n", who,
           PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 0), size, PQgetvalue(res, 0, 3));
    return 0;
}

int cmd_logs(int argc, char **argv)
{
    static const char usage_l[] = "usage: logs retention get [--project P] | logs retention set "
                                  "[--project P] [--max-age 7d] [--max-size 10G|none]";
    if (argc < 2 || strcmp(argv[0], "retention") != 0 ||
        (strcmp(argv[1], "get") != 0 && strcmp(argv[1], "set") != 0))
        return usage_error("%s", usage_l);
    bool set = strcmp(argv[1], "set") == 0;
    static const struct option lo[] = {{"project", required_argument, NULL, 'p'},
                                       {"max-age", required_argument, NULL, 'a'},
                                       {"max-size", required_argument, NULL, 's'},
                                       {0}};
    const char *project = NULL, *age = NULL, *size = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc - 1, argv + 1, "", lo, NULL)) != -1) {
        switch (o) {
        case 'p':
            project = optarg;
            break;
        case 'a':
            age = optarg;
            break;
        case 's':
            size = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc - 1 || (!set && (age || size)))
        return usage_error("%s", usage_l);
    if (project && !loom_is_dns_label(project))
        return usage_error("--project: \"%s\" is not a project name", project);
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_db_ struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0)
        return fail(&err);
    if (set) {
        int64_t age_ms = 0, bytes = 0;
        if (!age && !size)
            return usage_error("%s", "logs retention set needs --max-age or --max-size");
        if (age && (loom_parse_duration_ms(age, &age_ms) < 0 || age_ms < 60000))
            return usage_error("--max-age: \"%s\" is not a duration of at least 1m (like 7d, "
                               "12h)",
                               age);
        bool no_size = size && strcmp(size, "none") == 0;
        if (size && !no_size && (loom_size_parse(size, LOOM_SIZE_ANY, &bytes, NULL) < 0 || !bytes))
            return usage_error("--max-size: \"%s\" is not a size (like 512Mi, 10G) or none", size);
        char a[24], b[24];
        snprintf(a, sizeof(a), "%" PRId64, age_ms);
        snprintf(b, sizeof(b), "%" PRId64, bytes);
        const char *params[] = {project ? project : "", age ? a : NULL, size && !no_size ? b : NULL,
                                size ? "t" : "f"};
        if (project) {
            _cleanup_pgres_ PGresult *pr =
                loom_db_query(db, &err, "SELECT id FROM projects WHERE name = $1", project);
            if (!pr)
                return fail(&err);
            if (PQntuples(pr) == 0) {
                fprintf(stderr, "loom-admin: project %s not found\n", project);
                return 1;
            }
        }
        /* a change keeps what it does not give; a new policy needs an age */
        if (loom_db_begin(db, &err) < 0)
            return fail(&err);
        PGresult *res = loom_db_exec(
            db,
            "UPDATE log_retention SET "
            "  max_age = coalesce($2::bigint * interval '1 millisecond', max_age), "
            "  max_bytes = CASE WHEN $4::bool THEN $3::bigint ELSE max_bytes END, "
            "  updated_at = now() "
            "WHERE project_id IS NOT DISTINCT FROM (SELECT id FROM projects WHERE name = $1)",
            4, params, &err);
        bool updated = res && atoi(PQcmdTuples(res)) > 0;
        PQclear(res);
        if (res && !updated) {
            if (!age) {
                loom_db_rollback(db);
                return usage_error("%s", "a new retention policy needs --max-age");
            }
            res = loom_db_exec(db,
                               "INSERT INTO log_retention (project_id, max_age, max_bytes) "
                               "VALUES ((SELECT id FROM projects WHERE name = $1), "
                               "        $2::bigint * interval '1 millisecond', "
                               "        CASE WHEN $4::bool THEN $3::bigint END)",
                               4, params, &err);
            PQclear(res);
        }
        if (!res || loom_db_commit(db, &err) < 0) {
            loom_db_rollback(db);
            return fail(&err);
        }
    }
    return retention_show(db, project);
}
