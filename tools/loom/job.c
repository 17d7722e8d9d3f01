/* loom job: create, update, get, list, delete. */
#include <stdio.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"
#include "util.h"
#include "cli.h"

static void print_job(json_t *job)
{
    printf("Name:        %s\n", jstr(job, "name"));
    printf("Image:       %s\n", jstr(job, "image_reference"));
    printf("Array:       %s\n", jstr(job, "scale_array_spec"));
    printf("Mode:        %s\n", jstr(job, "run_mode"));
    printf("Retries:     %lld\n", jint(job, "scale_retry_limit"));
    printf("Max time:    %lld s\n", jint(job, "scale_max_execution_time"));
    printf("Parallelism: %lld\n", jint(job, "parallelism"));
    printf("Resources:   cpu %s, memory %s\n", jstr(job, "scale_cpu_limit"),
           jstr(job, "scale_memory_limit"));
    printf("Generation:  %lld\n", jint(job, "generation"));
    printf("Created:     %s\n", jstr(job, "created_at"));
}

int cmd_job(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    static const struct flag own[] = {VFLAG("name")};
    struct args a;
    spec_args(&a, LOOM_KIND_JOB, own, LOOM_ARRAY_SIZE(own));
    add_build_flags(&a);
    if ((rc = parse_args(&a, argc, argv))) {
        args_release(&a);
        return rc;
    }
    struct reply r = {0};
    _cleanup_json_ json_t *body = json_object();
    bool create = strcmp(verb, "create") == 0;
    if (create || strcmp(verb, "update") == 0) {
        const char *name = NULL;
        rc = take_name(&a, create ? "job create" : "job update", &name);
        char image[700];
        if (!rc && fval(&a, "image") && fval(&a, "build-source"))
            rc = usage_err("%s", "give --image or --build-source, not both");
        if (!rc && create && !fval(&a, "image") && !fval(&a, "build-source"))
            rc = usage_err("%s", "job create needs --image or --build-source DIR|GIT_URL");
        if (!rc && create)
            json_object_set_new(body, "name", json_string(name));
        if (!rc)
            rc = put_spec_fields(&a, LOOM_KIND_JOB, body);
        if (!rc && fval(&a, "build-source") && !(rc = build_from_flags(&a, name, false, image)))
            json_object_set_new(body, "image_reference", json_string(image));
        if (!rc && !create && json_object_size(body) == 0)
            rc = usage_err("%s", "job update: nothing to change");
        if (!rc)
            rc = write_resource("jobs", "job", name, create, "PATCH", body);
        args_release(&a);
        return rc;
    } else if (strcmp(verb, "get") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("jobs", a.pos[0], NULL);
        args_release(&a);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            print_job(r.json);
    } else if (strcmp(verb, "list") == 0 && a.npos == 0) {
        args_release(&a);
        _cleanup_free_ char *path = ppath("jobs", NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-14s %-40s %s\n", "NAME", "ARRAY", "IMAGE", "CREATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "jobs"), i, x)
                printf("%-32s %-14s %-40s %s\n", jstr(x, "name"), jstr(x, "scale_array_spec"),
                       jstr(x, "image_reference"), jstr(x, "created_at"));
        }
    } else if (strcmp(verb, "delete") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("jobs", a.pos[0], NULL);
        const char *name = a.pos[0];
        args_release(&a);
        if ((rc = api_call("DELETE", path, NULL, &r)))
            return rc;
        printf("job %s deleted\n", name);
    } else {
        args_release(&a);
        return usage_err("unknown or incomplete job command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
