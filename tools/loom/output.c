/* loom: printing helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"

#include "cli.h"

const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

long long jint(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

void print_raw(const struct reply *r)
{
    fputs(r->raw ? r->raw : "", stdout);
    if (r->raw && *r->raw && r->raw[strlen(r->raw) - 1] != '\n')
        putchar('\n');
}

/* loom buildrun logs NAME [-f]: in time order; -f keeps polling until the
 * run says it has "finished". A line is prefixed with its build step. */
int follow_logs(const char *coll, const char *noun, int argc, char **argv)
{
    struct flag flags[] = {BFLAG("follow"), VFLAG("instance")};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    bool follow = false;
    /* -f is the usual spelling */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "-f") == 0)
            argv[i] = (char *)"--follow";
    int rc = parse_args(&a, argc, argv);
    if (!rc && a.npos != 1)
        rc = usage_err("usage: %s logs NAME [-f] [--instance ID]", noun);
    if (rc) {
        args_release(&a);
        return rc;
    }
    follow = fset(&a, "follow");
    _cleanup_free_ char *base = ppath(coll, a.pos[0], "/logs?limit=1000");
    _cleanup_free_ char *inst = fval(&a, "instance") ? strdup(fval(&a, "instance")) : NULL;
    args_release(&a);
    _cleanup_free_ char *after = NULL;
    for (;;) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s%s%s%s%s", base, inst ? "&instance=" : "", inst ? inst : "",
                     after && *after ? "&after=" : "", after && *after ? after : "") < 0)
            abort();
        struct reply r = {0};
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        json_t *lines = json_object_get(r.json, "lines");
        size_t i;
        json_t *x;
        if (cfg.json) {
            json_array_foreach(lines, i, x)
            {
                _cleanup_free_ char *t = json_dumps(x, JSON_COMPACT);
                printf("%s\n", t);
            }
        } else {
            json_array_foreach(lines, i, x)
                printf("[%.8s] %s\n", *jstr(x, "step") ? jstr(x, "step") : jstr(x, "instance"),
                       jstr(x, "line"));
        }
        fflush(stdout);
        free(after);
        after = strdup(jstr(r.json, "next"));
        size_t n = json_array_size(lines);
        bool ended = json_is_true(json_object_get(r.json, "finished"));
        reply_release(&r);
        if (n == 1000)
            continue;
        if (!follow || (ended && n == 0))
            return EXIT_OK;
        sleep_ms(1000);
    }
}
