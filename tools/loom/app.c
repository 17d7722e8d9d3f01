/* loom app: create, update, get, list, delete, instances, revisions, logs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"
#include "util.h"
#include "cli.h"

static void print_app(json_t *app)
{
    json_t *d = json_object_get(app, "status_details");
    printf("Name:        %s\n", jstr(app, "name"));
    printf("Status:      %s\n", jstr(app, "status"));
    printf("URL:         %s\n", jstr(app, "endpoint"));
    printf("Image:       %s\n", jstr(app, "image_reference"));
    printf("Port:        %lld\n", jint(app, "image_port"));
    printf("Generation:  %lld\n", jint(app, "generation"));
    printf("Scale:       min %lld, max %lld, concurrency %lld\n", jint(app, "scale_min_instances"),
           jint(app, "scale_max_instances"), jint(app, "scale_concurrency"));
    printf("Resources:   cpu %s, memory %s\n", jstr(app, "scale_cpu_limit"),
           jstr(app, "scale_memory_limit"));
    printf("Instances:   %lld running, %lld desired\n", jint(d, "instances_running"),
           jint(d, "instances_desired"));
    if (json_is_string(json_object_get(d, "waiting_reason")))
        printf("Waiting:     %s\n", jstr(d, "waiting_reason"));
    printf("Created:     %s\n", jstr(app, "created_at"));
}

static int app_write(int argc, char **argv, bool create)
{
    static const struct flag own[] = {
        {.name = "name", .has_value = true, .metavar = "NAME", .help = "the app's name"},
        {.name = "no-wait", .help = "return at once, without waiting until it is ready"},
        {.name = "wait-timeout",
         .has_value = true,
         .metavar = "SECONDS",
         .help = "how long to wait until it is ready (300)"},
    };
    struct args a;
    spec_args(&a, LOOM_KIND_APP, own, LOOM_ARRAY_SIZE(own));
    add_build_flags(&a);
    int rc = parse_args(&a, argc, argv);
    _cleanup_json_ json_t *body = json_object();
    const char *name = NULL;
    char image[700];
    if (!rc)
        rc = take_name(&a, create ? "app create" : "app update", &name);
    if (!rc && fval(&a, "image") && fval(&a, "build-source"))
        rc = usage_err("%s", "give --image or --build-source, not both");
    if (!rc && create && !fval(&a, "image") && !fval(&a, "build-source"))
        rc = usage_err("%s", "app create needs --image or --build-source DIR|GIT_URL");
    if (!rc) {
        if (create)
            json_object_set_new(body, "name", json_string(name));
        rc = put_spec_fields(&a, LOOM_KIND_APP, body);
    }
    /* a source is built first; the app gets the digest it pushed */
    if (!rc && fval(&a, "build-source") && !(rc = build_from_flags(&a, name, false, image)))
        json_object_set_new(body, "image_reference", json_string(image));
    if (!rc && !create && json_object_size(body) == 0)
        rc = usage_err("%s", "app update: nothing to change");
    bool wait = !fset(&a, "no-wait");
    long timeout_s = fval(&a, "wait-timeout") ? atol(fval(&a, "wait-timeout")) : 300;
    args_release(&a);
    if (rc)
        return rc;
    _cleanup_free_ char *coll = ppath("apps", NULL, NULL);
    struct reply r = {0};
    rc = create ? api_call("POST", coll, body, &r) : patch_current("apps", name, body, "PATCH", &r);
    if (rc)
        return rc;
    if (!cfg.json)
        printf("app %s %s (generation %lld)\n", name, create ? "created" : "updated",
               jint(r.json, "generation"));
    _cleanup_free_ char *path = ppath("apps", name, NULL);
    char prev[128] = "";
    for (long waited = 0; wait && strcmp(jstr(r.json, "status"), "ready") != 0; waited++) {
        if (waited >= timeout_s) {
            fprintf(stderr, "loom: app %s is not ready after %ld s (still %s)\n", name, timeout_s,
                    jstr(r.json, "status"));
            reply_release(&r);
            return EXIT_API;
        }
        json_t *d = json_object_get(r.json, "status_details");
        char line[128];
        snprintf(line, sizeof(line), "%s: %lld of %lld instances running%s%s",
                 jstr(r.json, "status"), jint(d, "instances_running"), jint(d, "instances_desired"),
                 *jstr(d, "waiting_reason") ? " - " : "", jstr(d, "waiting_reason"));
        if (strcmp(line, prev) != 0 && !cfg.json) {
            printf("%s\n", line);
            fflush(stdout);
            snprintf(prev, sizeof(prev), "%s", line);
        }
        sleep_ms(1000);
        reply_release(&r);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
    }
    if (cfg.json)
        print_raw(&r);
    else
        printf("%s\n", jstr(r.json, "endpoint"));
    reply_release(&r);
    return EXIT_OK;
}

int cmd_app(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    if (strcmp(verb, "create") == 0 || strcmp(verb, "update") == 0)
        return app_write(argc, argv, verb[0] == 'c');
    if (strcmp(verb, "logs") == 0)
        return cmd_logs("apps", "app", false, argc, argv);
    struct args a = {.nflags = 0};
    if ((rc = parse_args(&a, argc, argv)))
        return rc;
    struct reply r = {0};
    if (strcmp(verb, "list") == 0 && a.npos == 0) {
        _cleanup_free_ char *path = ppath("apps", NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-28s %-10s %-9s %s\n", "NAME", "STATUS", "INSTANCES", "URL");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "apps"), i, x)
            {
                json_t *d = json_object_get(x, "status_details");
                char inst[32];
                snprintf(inst, sizeof(inst), "%lld/%lld", jint(d, "instances_running"),
                         jint(d, "instances_desired"));
                printf("%-28s %-10s %-9s %s\n", jstr(x, "name"), jstr(x, "status"), inst,
                       jstr(x, "endpoint"));
            }
        }
    } else if (strcmp(verb, "get") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("apps", a.pos[0], NULL);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            print_app(r.json);
    } else if (strcmp(verb, "instances") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("apps", a.pos[0], "/instances");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-36s %-9s %-16s %-21s %s\n", "ID", "STATUS", "NODE", "ADDRESS", "CREATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "instances"), i, x)
                printf("%-36s %-9s %-16s %-21s %s\n", jstr(x, "id"), jstr(x, "status"),
                       jstr(x, "node"), jstr(x, "address"), jstr(x, "created_at"));
        }
    } else if (strcmp(verb, "revisions") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("apps", a.pos[0], "/revisions");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-10s %-40s %s\n", "NAME", "GENERATION", "IMAGE", "CREATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "revisions"), i, x)
                printf("%-32s %-10lld %-40s %s\n", jstr(x, "name"), jint(x, "generation"),
                       jstr(x, "image_reference"), jstr(x, "created_at"));
        }
    } else if (strcmp(verb, "delete") == 0 && a.npos == 1) {
        return delete_with_retry("apps", a.pos[0], "app");
    } else {
        return usage_err("unknown or incomplete app command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
