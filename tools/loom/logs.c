/* loom jobrun|app|fn logs NAME: the output of a resource's instances, or,
 * with -f, followed as it is written (server-sent events). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "httpc.h"
#include "json.h"
#include "sse.h"
#include "strbuf.h"
#include "cli.h"

struct logs_out {
    bool is_run;
    bool ended;
};

static void print_line(const struct logs_out *o, json_t *x)
{
    if (cfg.json) {
        _cleanup_free_ char *t = json_dumps(x, JSON_COMPACT);
        printf("%s\n", t);
    } else if (o->is_run) {
        printf("[%lld] %s\n", jint(x, "index"), jstr(x, "line"));
    } else {
        printf("[%.8s] %s\n", jstr(x, "instance"), jstr(x, "line"));
    }
}

/* What the API says may be missing: on stderr, so that the lines stay clean. */
static void print_incomplete(json_t *reply)
{
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(reply, "incomplete"), i, x)
        fprintf(stderr, "loom: warning: instance %s: %s\n", jstr(x, "instance"), jstr(x, "reason"));
    if (json_is_true(json_object_get(reply, "truncated")))
        fprintf(stderr, "loom: warning: only the first lines are shown (use --index, --since or "
                        "--tail)\n");
}

static int on_event(const char *event, const char *data, void *arg)
{
    struct logs_out *o = arg;
    if (strcmp(event, "end") == 0) {
        o->ended = true;
        return 1; /* stop reading: the run is over */
    }
    json_t *x = json_loads(data, 0, NULL);
    if (x && strcmp(event, "message") == 0)
        print_line(o, x);
    json_decref(x);
    fflush(stdout);
    return 0;
}

static int feed(const void *data, size_t len, void *arg)
{
    return loom_sse_feed(arg, data, len);
}

int cmd_logs(const char *coll, const char *noun, bool is_run, int argc, char **argv)
{
    struct flag flags[] = {BFLAG("follow"), VFLAG("instance"), VFLAG("index"),
                           VFLAG("since"),  VFLAG("tail"),     VFLAG("stream")};
    flags[0].help = "follow: print lines as they are written (-f)";
    flags[1].metavar = "ID";
    flags[1].help = "one instance's lines";
    flags[2].metavar = "I";
    flags[2].help = "one array index's lines (job runs)";
    flags[3].metavar = "TIME|DURATION";
    flags[3].help = "lines written since then (RFC 3339, a day, or 10m, 2h, 1d ago)";
    flags[4].metavar = "N";
    flags[4].help = "the last N lines";
    flags[5].metavar = "stdout|stderr";
    flags[5].help = "one stream's lines";
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    /* -f is the usual spelling */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "-f") == 0)
            argv[i] = (char *)"--follow";
    int rc = parse_args(&a, argc, argv);
    if (!rc && a.npos != 1)
        rc = usage_err("usage: %s logs NAME [-f] [--instance ID] [--index I] [--since T] "
                       "[--tail N] [--stream stdout|stderr]",
                       noun);
    if (!rc && !is_run && fval(&a, "index"))
        rc = usage_err("--index: only job runs have indices (%s)", noun);
    if (rc) {
        args_release(&a);
        return rc;
    }
    bool follow = fset(&a, "follow");
    struct strbuf q = STRBUF_INIT;
    static const char *const names[] = {"instance", "index", "since", "tail", "stream"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(names); i++) {
        const char *v = fval(&a, names[i]);
        if (!v)
            continue;
        _cleanup_free_ char *e = loom_httpc_escape(v);
        strbuf_addf(&q, "%c%s=%s", q.len ? '&' : '?', names[i], e);
    }
    _cleanup_free_ char *base = ppath(coll, a.pos[0], "/logs");
    args_release(&a);
    struct logs_out o = {.is_run = is_run};
    if (follow) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s%s%cfollow=true", base, q.buf, q.len ? '&' : '?') < 0)
            abort();
        strbuf_release(&q);
        struct loom_sse p;
        loom_sse_init(&p, on_event, &o);
        rc = api_stream(path, "text/event-stream", feed, &p);
        loom_sse_release(&p);
        return rc;
    }
    /* pages of an app's or function's lines; a run's come in one piece */
    _cleanup_free_ char *after = NULL;
    for (;;) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s%s%s%s%s", base, q.buf, after && *after ? (q.len ? "&" : "?") : "",
                     after && *after ? "after=" : "", after && *after ? after : "") < 0)
            abort();
        struct reply r = {0};
        if ((rc = api_call("GET", path, NULL, &r))) {
            strbuf_release(&q);
            return rc;
        }
        json_t *lines = json_object_get(r.json, "lines");
        size_t i;
        json_t *x;
        json_array_foreach(lines, i, x) print_line(&o, x);
        print_incomplete(r.json);
        fflush(stdout);
        free(after);
        after = strdup(jstr(r.json, "next"));
        size_t n = json_array_size(lines);
        reply_release(&r);
        /* a full page of an app's lines: there may be more */
        if (is_run || n < 1000 || strstr(q.buf, "tail="))
            break;
    }
    strbuf_release(&q);
    return EXIT_OK;
}
