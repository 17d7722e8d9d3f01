/* loom fn: create, update, get, list, delete, invoke, logs, activations,
 * runtimes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "httpc.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"
#include "cli.h"

static void print_fn(json_t *fn)
{
    printf("Name:        %s\n", jstr(fn, "name"));
    printf("Status:      %s\n", jstr(fn, "status"));
    printf("URL:         %s\n", jstr(fn, "endpoint"));
    printf("Runtime:     %s\n", jstr(fn, "runtime"));
    printf("Code:        %s%s (main: %s)\n", jstr(fn, "code_reference"),
           json_is_true(json_object_get(fn, "code_binary")) ? ", a bundle" : "",
           jstr(fn, "code_main"));
    printf("Resources:   cpu %s, memory %s\n", jstr(fn, "scale_cpu_limit"),
           jstr(fn, "scale_memory_limit"));
    printf("Scale:       concurrency %lld, timeout %lld s, idle instances stop after %lld s\n",
           jint(fn, "scale_concurrency"), jint(fn, "scale_max_execution_time"),
           jint(fn, "scale_down_delay"));
    printf("Instances:   %lld running\n",
           jint(json_object_get(fn, "status_details"), "instances_running"));
    printf("Generation:  %lld\n", jint(fn, "generation"));
    printf("Created:     %s\n", jstr(fn, "created_at"));
}

static int fn_write(int argc, char **argv, bool create)
{
    static const struct flag own[] = {
        {.name = "name", .has_value = true, .metavar = "NAME", .help = "the function's name"},
    };
    struct args a;
    spec_args(&a, LOOM_KIND_FUNCTION, own, LOOM_ARRAY_SIZE(own));
    add_build_flags(&a);
    _cleanup_json_ json_t *body = json_object();
    const char *name = NULL;
    char bundle[700];
    int rc = parse_args(&a, argc, argv);
    if (!rc)
        rc = take_name(&a, create ? "fn create" : "fn update", &name);
    if (!rc && create && !fval(&a, "runtime"))
        rc = usage_err("%s", "fn create needs --runtime (see loom fn runtimes)");
    if (!rc) {
        if (create)
            json_object_set_new(body, "name", json_string(name));
        rc = put_spec_fields(&a, LOOM_KIND_FUNCTION, body);
    }
    if (!rc && fval(&a, "build-source") && json_object_get(body, "code_reference"))
        rc = usage_err("%s", "give --inline-code, --code-bundle or --build-source, not two");
    /* a source is built into a bundle first; the function gets its digest */
    if (!rc && fval(&a, "build-source") && !(rc = build_from_flags(&a, name, true, bundle)))
        json_object_set_new(body, "code_reference", json_string(bundle));
    if (!rc && create && !json_object_get(body, "code_reference"))
        rc = usage_err("%s", "fn create needs --inline-code FILE, --code-bundle DIR|TGZ or "
                             "--build-source DIR|GIT_URL");
    if (!rc && !create && json_object_size(body) == 0)
        rc = usage_err("%s", "fn update: nothing to change");
    _cleanup_free_ char *fname = name ? strdup(name) : NULL;
    args_release(&a);
    if (rc)
        return rc;
    _cleanup_free_ char *coll = ppath("functions", NULL, NULL);
    struct reply r = {0};
    rc = create ? api_call("POST", coll, body, &r)
                : patch_current("functions", fname, body, "PATCH", &r);
    if (rc)
        return rc;
    if (cfg.json)
        print_raw(&r);
    else
        printf("function %s %s (generation %lld)\n%s\n", fname, create ? "created" : "updated",
               jint(r.json, "generation"), jstr(r.json, "endpoint"));
    reply_release(&r);
    return EXIT_OK;
}

/* loom fn invoke NAME [--data JSON | --data-file F] [--header K:V]...: POSTs
 * the data to the function's endpoint and prints what it answered. */
static int fn_invoke(int argc, char **argv)
{
    struct flag flags[] = {
        {.name = "data", .has_value = true, .metavar = "JSON", .help = "the parameters"},
        {.name = "data-file", .has_value = true, .metavar = "FILE", .help = "the parameters"},
        {.name = "header",
         .has_value = true,
         .repeat = true,
         .metavar = "K:V",
         .help = "a request header"},
    };
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    int rc = parse_args(&a, argc, argv);
    if (!rc && a.npos != 1)
        rc = usage_err("%s", "usage: fn invoke NAME [--data JSON | --data-file F] [--header K:V]");
    if (!rc && fval(&a, "data") && fval(&a, "data-file"))
        rc = usage_err("%s", "give --data or --data-file, not both");
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    struct loom_err err = LOOM_ERR_INIT;
    if (!rc && fval(&a, "data-file") &&
        loom_read_file(fval(&a, "data-file"), &data, &len, &err) < 0)
        rc = usage_err("%s", err.msg);
    if (!rc && fval(&a, "data")) {
        data = strdup(fval(&a, "data"));
        len = strlen(data);
    }
    if (!rc && data && !json_loadb(data, len, JSON_DECODE_ANY, NULL))
        rc = usage_err("%s", "the data is not JSON");
    struct reply fn = {0};
    _cleanup_free_ char *path = rc ? NULL : ppath("functions", a.pos[0], NULL);
    if (!rc)
        rc = api_call("GET", path, NULL, &fn);
    if (rc) {
        args_release(&a);
        return rc;
    }
    /* the user's headers, then ours */
    struct flag *hf = find_flag(&a, "header");
    size_t nh = json_array_size(hf->values);
    _cleanup_free_ const char **headers = calloc(nh + 3, sizeof(char *));
    if (!headers)
        abort();
    for (size_t i = 0; i < nh; i++)
        headers[i] = json_string_value(json_array_get(hf->values, i));
    headers[nh] = "Content-Type: application/json";
    struct loom_httpc_req req = {
        .method = data ? "POST" : "GET",
        .url = jstr(fn.json, "endpoint"),
        .headers = headers,
        .body = data,
        .body_len = len,
        .timeout_ms = 180000,
    };
    struct loom_httpc_resp resp = {.body = STRBUF_INIT};
    if (loom_httpc_do(&req, &resp, &err) < 0) {
        fprintf(stderr, "loom: could not call %s: %s\n", jstr(fn.json, "endpoint"), err.msg);
        rc = EXIT_UNAVAIL;
    } else {
        fwrite(resp.body.buf ? resp.body.buf : "", 1, resp.body.len, stdout);
        if (resp.body.len && resp.body.buf[resp.body.len - 1] != '\n')
            putchar('\n');
        rc = resp.status < 400 ? EXIT_OK : EXIT_API;
        if (rc)
            fprintf(stderr, "loom: the function answered HTTP %ld\n", resp.status);
    }
    loom_httpc_resp_release(&resp);
    reply_release(&fn);
    args_release(&a);
    return rc;
}

static int fn_activations(const char *name)
{
    _cleanup_free_ char *path = ppath("functions", name, "/activations?limit=100");
    struct reply r = {0};
    int rc = api_call("GET", path, NULL, &r);
    if (rc)
        return rc;
    if (cfg.json) {
        print_raw(&r);
    } else {
        printf("%-36s %-24s %10s %8s %-18s %5s %s\n", "ACTIVATION", "STARTED", "DURATION", "BILLED",
               "STATUS", "COLD", "INSTANCE");
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(r.json, "activations"), i, x)
            printf("%-36s %-24s %8.2fms %6lldms %-18s %5s %.8s\n", jstr(x, "id"),
                   jstr(x, "started_at"), json_real_value(json_object_get(x, "duration_ms")),
                   jint(x, "billed_duration_ms"), jstr(x, "status"),
                   json_is_true(json_object_get(x, "cold")) ? "yes" : "no", jstr(x, "instance_id"));
    }
    reply_release(&r);
    return EXIT_OK;
}

static int fn_runtimes(void)
{
    struct reply r = {0};
    int rc = api_call("GET", "/v1/function_runtimes", NULL, &r);
    if (rc)
        return rc;
    json_t *list = json_object_get(r.json, "function_runtimes");
    if (cfg.json) {
        _cleanup_free_ char *t = json_dumps(list, JSON_INDENT(2));
        printf("%s\n", t);
    } else {
        printf("%-20s %-10s %-8s %s\n", "NAME", "FAMILY", "DEFAULT", "DEPRECATED");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x)
            printf("%-20s %-10s %-8s %s\n", jstr(x, "name"), jstr(x, "family"),
                   json_is_true(json_object_get(x, "default")) ? "yes" : "no",
                   json_is_true(json_object_get(x, "deprecated")) ? "yes" : "no");
    }
    reply_release(&r);
    return EXIT_OK;
}

int cmd_fn(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    if (strcmp(verb, "create") == 0 || strcmp(verb, "update") == 0)
        return fn_write(argc, argv, strcmp(verb, "create") == 0);
    if (strcmp(verb, "invoke") == 0)
        return fn_invoke(argc, argv);
    if (strcmp(verb, "logs") == 0)
        return cmd_logs("functions", "fn", false, argc, argv);
    if (strcmp(verb, "runtimes") == 0 && argc == 0)
        return fn_runtimes();
    if (strcmp(verb, "activations") == 0 && argc == 1)
        return fn_activations(argv[0]);
    struct reply r = {0};
    if (strcmp(verb, "get") == 0 && argc == 1) {
        _cleanup_free_ char *path = ppath("functions", argv[0], NULL);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            print_fn(r.json);
    } else if (strcmp(verb, "list") == 0 && argc == 0) {
        _cleanup_free_ char *path = ppath("functions", NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-14s %-8s %s\n", "NAME", "RUNTIME", "STATUS", "URL");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "functions"), i, x)
                printf("%-32s %-14s %-8s %s\n", jstr(x, "name"), jstr(x, "runtime"),
                       jstr(x, "status"), jstr(x, "endpoint"));
        }
    } else if (strcmp(verb, "delete") == 0 && argc == 1) {
        _cleanup_free_ char *path = ppath("functions", argv[0], NULL);
        if ((rc = api_call("DELETE", path, NULL, &r)))
            return rc;
        printf("function %s deleted\n", argv[0]);
    } else {
        return usage_err("unknown or incomplete fn command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
