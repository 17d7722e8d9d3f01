/* loom project: list, get, create, delete. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"
#include "cli.h"

int cmd_project(const char *verb, int argc, char **argv)
{
    struct args a = {.nflags = 0};
    int rc = parse_args(&a, argc, argv);
    if (rc)
        return rc;
    struct reply r = {0};
    if (strcmp(verb, "list") == 0 && a.npos == 0) {
        rc = api_call("GET", "/v1/projects?limit=1000", NULL, &r);
        if (rc)
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-24s\n", "NAME", "CREATED");
            size_t i;
            json_t *p;
            json_array_foreach(json_object_get(r.json, "projects"), i, p)
                printf("%-32s %-24s\n", jstr(p, "name"), jstr(p, "created_at"));
        }
    } else if ((strcmp(verb, "get") == 0 || strcmp(verb, "create") == 0) && a.npos <= 1) {
        const char *name = a.npos ? a.pos[0] : cfg.project;
        if (!name)
            return usage_err("%s", "project name missing");
        _cleanup_free_ char *path = NULL;
        if (verb[0] == 'g') {
            if (asprintf(&path, "/v1/projects/%s", name) < 0)
                abort();
            rc = api_call("GET", path, NULL, &r);
        } else {
            _cleanup_json_ json_t *body = json_pack("{s:s}", "name", name);
            rc = api_call("POST", "/v1/projects", body, &r);
        }
        if (rc)
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            printf("project %s (created %s)\n", jstr(r.json, "name"), jstr(r.json, "created_at"));
    } else if (strcmp(verb, "delete") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "/v1/projects/%s", a.pos[0]) < 0)
            abort();
        if ((rc = api_call("DELETE", path, NULL, &r)))
            return rc;
        printf("project %s deleted\n", a.pos[0]);
    } else {
        return usage_err("unknown project command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
