/* loom usage: what the project consumed and what it cost. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "httpc.h"
#include "strbuf.h"
#include "cli.h"

/* loom usage [--from TIME] [--to TIME] [--by resource|kind|day] */
int cmd_usage(int argc, char **argv)
{
    struct flag flags[] = {VFLAG("from"), VFLAG("to"), VFLAG("by")};
    flags[0].metavar = flags[1].metavar = "TIME";
    flags[0].help = "from this time (RFC 3339, a day 2026-05-01 or a month 2026-05; default: "
                    "the start of this month)";
    flags[1].help = "up to this time (default: the end of the current hour)";
    flags[2].metavar = "resource|kind|day";
    flags[2].help = "one line per resource (default), per kind of resource, or per day";
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    int rc = parse_args(&a, argc, argv);
    if (!rc && a.npos != 0)
        rc =
            usage_err("%s", "usage: loom usage [--from TIME] [--to TIME] [--by resource|kind|day]");
    if (!rc)
        rc = need_project();
    if (rc) {
        args_release(&a);
        return rc;
    }
    const char *by = fval(&a, "by") ? fval(&a, "by") : "resource";
    struct strbuf q = STRBUF_INIT;
    static const char *const names[] = {"from", "to", "by"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(names); i++) {
        const char *v = i == 2 ? by : fval(&a, names[i]);
        if (!v)
            continue;
        _cleanup_free_ char *e = loom_httpc_escape(v);
        strbuf_addf(&q, "%c%s=%s", q.len ? '&' : '?', i == 2 ? "group_by" : names[i], e);
    }
    args_release(&a);
    _cleanup_free_ char *path = ppath("usage", NULL, q.buf);
    strbuf_release(&q);
    struct reply r = {0};
    if ((rc = api_call("GET", path, NULL, &r)))
        return rc;
    if (cfg.json) {
        print_raw(&r);
        reply_release(&r);
        return EXIT_OK;
    }
    json_t *o = r.json;
    printf("Project %s, %s to %s\n\n", jstr(o, "project"), jstr(o, "from"), jstr(o, "to"));
    const char *what = strcmp(jstr(o, "group_by"), "day") == 0    ? "DAY"
                       : strcmp(jstr(o, "group_by"), "kind") == 0 ? "KIND"
                                                                  : "RESOURCE";
    printf("%-28s %-24s %22s %-13s %16s\n", what, "METRIC", "QUANTITY", "UNIT", "COST");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(o, "items"), i, x)
    {
        char label[80];
        if (*what == 'R')
            snprintf(label, sizeof(label), "%s %s", jstr(x, "kind"), jstr(x, "resource"));
        else
            snprintf(label, sizeof(label), "%s", jstr(x, *what == 'D' ? "day" : "kind"));
        char cost[48];
        snprintf(cost, sizeof(cost), "%s %s%s", jstr(x, "cost"), jstr(x, "currency"),
                 json_is_true(json_object_get(x, "final")) ? "" : "*");
        printf("%-28s %-24s %22s %-13s %16s\n", label, jstr(x, "metric"), jstr(x, "quantity"),
               jstr(x, "unit"), cost);
    }
    json_array_foreach(json_object_get(o, "totals"), i, x)
        printf("\nTotal: %s %s (list price %s)\n", jstr(x, "cost"), jstr(x, "currency"),
               jstr(x, "list_cost"));
    json_t *peaks = json_object_get(o, "peaks");
    if (json_array_size(peaks)) {
        printf("\nMemory peak:\n");
        json_array_foreach(peaks, i, x) printf("  %s %s: %lld bytes\n", jstr(x, "kind"),
                                               jstr(x, "resource"), jint(x, "memory_peak_bytes"));
    }
    printf("\n* provisional: the hour is not closed yet\n");
    reply_release(&r);
    return EXIT_OK;
}
