/* loom jobrun: submit, resubmit, get, logs, list, delete, cancel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"
#include "util.h"
#include "cli.h"

static void print_run(json_t *run)
{
    json_t *d = json_object_get(run, "status_details");
    printf("Name:       %s\n", jstr(run, "name"));
    printf("Status:     %s\n", jstr(run, "status"));
    printf("Image:      %s\n", jstr(run, "image_reference"));
    printf("Created:    %s\n", jstr(run, "created_at"));
    if (json_is_string(json_object_get(run, "finished_at")))
        printf("Finished:   %s\n", jstr(run, "finished_at"));
    printf("Array:      %s\n", jstr(run, "scale_array_spec"));
    printf("Requested:  %lld\n", jint(d, "requested"));
    printf("Pending:    %lld  %s\n", jint(d, "pending"), jstr(d, "pending_indices"));
    printf("Running:    %lld  %s\n", jint(d, "running"), jstr(d, "running_indices"));
    printf("Succeeded:  %lld  %s\n", jint(d, "succeeded"), jstr(d, "succeeded_indices"));
    printf("Failed:     %lld  %s\n", jint(d, "failed"), jstr(d, "failed_indices"));
    if (json_is_string(json_object_get(d, "waiting_reason")))
        printf("Waiting:    %s\n", jstr(d, "waiting_reason"));
    json_t *det = json_object_get(d, "indices_details");
    bool header = false;
    size_t i;
    json_t *x;
    json_array_foreach(det, i, x)
    {
        if (strcmp(jstr(x, "status"), "failed") != 0 && jint(x, "retries") == 0)
            continue;
        if (!header) {
            printf("\n%-7s %-10s %-7s %-9s %s\n", "INDEX", "STATUS", "RETRIES", "EXIT", "REASON");
            header = true;
        }
        char exitc[16] = "-";
        if (json_is_integer(json_object_get(x, "exit_code")))
            snprintf(exitc, sizeof(exitc), "%lld", jint(x, "exit_code"));
        printf("%-7lld %-10s %-7lld %-9s %s\n", jint(x, "index"), jstr(x, "status"),
               jint(x, "retries"), exitc, jstr(x, "last_failure_reason"));
    }
}

static bool run_finished(json_t *run)
{
    const char *s = jstr(run, "status");
    return strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0;
}

/* Polls until the run finishes, printing a line whenever the counts change. */
static int wait_run(const char *name, struct reply *last)
{
    _cleanup_free_ char *path = ppath("job_runs", name, NULL);
    char prev[256] = "";
    for (;;) {
        struct reply r = {0};
        int rc = api_call("GET", path, NULL, &r);
        if (rc)
            return rc;
        json_t *d = json_object_get(r.json, "status_details");
        char line[256];
        snprintf(line, sizeof(line),
                 "%s: %lld pending, %lld running, %lld succeeded, %lld failed (of %lld)%s%s",
                 jstr(r.json, "status"), jint(d, "pending"), jint(d, "running"),
                 jint(d, "succeeded"), jint(d, "failed"), jint(d, "requested"),
                 *jstr(d, "waiting_reason") ? " - " : "", jstr(d, "waiting_reason"));
        if (strcmp(line, prev) != 0) {
            fprintf(cfg.json ? stderr : stdout, "%s\n", line);
            fflush(stdout);
            snprintf(prev, sizeof(prev), "%s", line);
        }
        if (run_finished(r.json)) {
            *last = r;
            return EXIT_OK;
        }
        reply_release(&r);
        sleep_ms(1000);
    }
}

/* After a run was created: print it, or wait for it to finish (exit 1 when
 * it did not complete). */
static int after_submit(const char *name, bool wait, struct reply *r)
{
    int rc;
    if (!wait) {
        if (cfg.json)
            print_raw(r);
        else
            printf("job run %s submitted: %s\n", jstr(r->json, "name"), jstr(r->json, "status"));
        reply_release(r);
        return EXIT_OK;
    }
    if (!cfg.json)
        printf("job run %s submitted\n", name);
    reply_release(r);
    if ((rc = wait_run(name, r)))
        return rc;
    if (cfg.json)
        print_raw(r);
    else
        printf("job run %s %s\n", name, jstr(r->json, "status"));
    rc = strcmp(jstr(r->json, "status"), "completed") == 0 ? EXIT_OK : EXIT_API;
    if (rc && !cfg.json)
        print_run(r->json);
    reply_release(r);
    return rc;
}

static int jobrun_submit(int argc, char **argv)
{
    static const struct submit_kind k = {LOOM_KIND_JOBRUN,
                                         "jobrun submit",
                                         "job",
                                         "start from a saved job",
                                         "job_name",
                                         {"image"},
                                         "jobrun submit needs --image or --job"};
    _cleanup_json_ json_t *body = json_object();
    const char *name = NULL;
    bool wait = false;
    int rc = submit_args(&k, argc, argv, body, &name, &wait);
    if (rc)
        return rc;
    _cleanup_free_ char *path = ppath("job_runs", NULL, NULL);
    struct reply r = {0};
    if ((rc = api_call("POST", path, body, &r)))
        return rc;
    return after_submit(name, wait, &r);
}

/* loom jobrun resubmit R [--array-indices S] [--name NEW] [--wait] */
static int jobrun_resubmit(int argc, char **argv)
{
    struct flag flags[] = {VFLAG("array-indices"), VFLAG("name"), VFLAG("jobrun"), BFLAG("wait")};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    int rc = parse_args(&a, argc, argv);
    const char *old = fval(&a, "jobrun");
    if (!rc && !old && a.npos == 1)
        old = a.pos[0];
    if (!rc && (!old || a.npos > (fval(&a, "jobrun") ? 0 : 1)))
        rc = usage_err("%s", "usage: jobrun resubmit RUN [--array-indices S] [--name NEW]");
    _cleanup_json_ json_t *body = json_object();
    if (!rc && fval(&a, "array-indices"))
        json_object_set_new(body, "scale_array_spec", json_string(fval(&a, "array-indices")));
    if (!rc && fval(&a, "name"))
        json_object_set_new(body, "name", json_string(fval(&a, "name")));
    bool wait = fset(&a, "wait");
    args_release(&a);
    if (rc)
        return rc;
    _cleanup_free_ char *path = ppath("job_runs", old, "/resubmit");
    struct reply r = {0};
    if ((rc = api_call("POST", path, body, &r)))
        return rc;
    _cleanup_free_ char *name = strdup(jstr(r.json, "name"));
    return after_submit(name, wait, &r);
}

int cmd_jobrun(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    if (strcmp(verb, "submit") == 0)
        return jobrun_submit(argc, argv);
    if (strcmp(verb, "resubmit") == 0)
        return jobrun_resubmit(argc, argv);
    if (strcmp(verb, "logs") == 0)
        return cmd_logs("job_runs", "jobrun", true, argc, argv);
    struct args a = {.nflags = 0};
    rc = parse_args(&a, argc, argv);
    if (rc)
        return rc;
    struct reply r = {0};
    if (strcmp(verb, "list") == 0 && a.npos == 0) {
        _cleanup_free_ char *path = ppath("job_runs", NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-10s %9s %9s %9s %9s  %s\n", "NAME", "STATUS", "REQUESTED", "RUNNING",
                   "SUCCEEDED", "FAILED", "CREATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "job_runs"), i, x)
            {
                json_t *d = json_object_get(x, "status_details");
                printf("%-32s %-10s %9lld %9lld %9lld %9lld  %s\n", jstr(x, "name"),
                       jstr(x, "status"), jint(d, "requested"), jint(d, "running"),
                       jint(d, "succeeded"), jint(d, "failed"), jstr(x, "created_at"));
            }
        }
    } else if (strcmp(verb, "get") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("job_runs", a.pos[0], NULL);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            print_run(r.json);
    } else if (strcmp(verb, "delete") == 0 && a.npos == 1) {
        return delete_with_retry("job_runs", a.pos[0], "job run");
    } else if (strcmp(verb, "cancel") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath("job_runs", a.pos[0], "/cancel");
        if ((rc = api_call("POST", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            printf("job run %s %s\n", a.pos[0], jstr(r.json, "status"));
    } else {
        return usage_err("unknown or incomplete jobrun command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
