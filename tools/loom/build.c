/* loom build (create, update, get, list, delete) and loom buildrun (submit,
 * get, list, logs, cancel, delete), and what every noun that builds shares:
 * uploading a directory as a source and waiting for a run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "json.h"
#include "util.h"
#include "cli.h"

static FILE *progress(void)
{
    return cfg.json ? stderr : stdout;
}

int upload_source(const char *dir, char ret_digest[72])
{
    struct loom_err err = LOOM_ERR_INIT;
    struct packed p;
    if (pack_source(dir, &p, &err) < 0) {
        fprintf(stderr, "loom: %s\n", err.msg);
        return EXIT_USAGE;
    }
    char hex[65];
    loom_hex(p.sha256, 32, hex);
    snprintf(ret_digest, 72, "sha256:%s", hex);
    fprintf(progress(), "source %s: %lld files, %lld bytes packed%s%s%s\n", dir, (long long)p.files,
            (long long)p.size, p.ignore_file ? " (" : "", p.ignore_file ? p.ignore_file : "",
            p.ignore_file ? " honoured)" : "");
    /* an identical source this project uploaded before is not sent again */
    _cleanup_free_ char *have = ppath("uploads", ret_digest, NULL);
    struct reply r = {0};
    int rc = EXIT_OK;
    if (api_call_quiet("GET", have, &r) == EXIT_OK) {
        fprintf(progress(), "source %s: already uploaded (%s)\n", dir, ret_digest);
    } else {
        _cleanup_free_ char *path = ppath("uploads", NULL, NULL);
        _cleanup_free_ char *b64 = loom_base64_encode(p.sha256, 32);
        _cleanup_free_ char *cd = NULL;
        if (asprintf(&cd, "Content-Digest: sha-256=:%s:", b64) < 0)
            abort();
        const char *extra[] = {cd, NULL};
        rc = api_post_file(path, p.file, p.size, "application/gzip", extra, &r);
        if (rc == EXIT_OK)
            fprintf(progress(), "source %s: uploaded (%s)\n", dir, ret_digest);
    }
    reply_release(&r);
    fclose(p.file);
    return rc;
}

int put_source_value(const char *value, json_t *body)
{
    struct stat st;
    if (stat(value, &st) == 0 && S_ISDIR(st.st_mode)) {
        char digest[72];
        int rc = upload_source(value, digest);
        if (rc)
            return rc;
        json_object_set_new(body, "source_type", json_string("local"));
        json_object_set_new(body, "source_upload", json_string(digest));
        return 0;
    }
    if (!strstr(value, "://") && !strchr(value, '@'))
        return usage_err("--source \"%s\" is neither a directory nor a git URL", value);
    json_object_set_new(body, "source_url", json_string(value));
    return 0;
}

/* ---- one-step deploys: --build-source ------------------------------------------------ */

static const struct flag build_flags[] = {
    {.name = "build-source",
     .has_value = true,
     .metavar = "DIR|GIT_URL",
     .help = "build from this source first (a directory is uploaded), then deploy what it "
             "made by digest: an image, or a function's code bundle with its dependencies"},
    {.name = "build-strategy",
     .has_value = true,
     .metavar = "STRATEGY",
     .help = "buildpacks (the default: detected) or dockerfile"},
    {.name = "build-size",
     .has_value = true,
     .metavar = "SIZE",
     .help = "small, medium, large, xlarge"},
    {.name = "build-context-dir",
     .has_value = true,
     .metavar = "DIR",
     .help = "the directory of the source to build"},
    {.name = "build-dockerfile", .has_value = true, .metavar = "FILE", .help = "the Dockerfile"},
    {.name = "build-commit",
     .has_value = true,
     .metavar = "REV",
     .help = "the branch, tag or commit of a git source"},
    {.name = "build-git-repo-secret",
     .has_value = true,
     .metavar = "SECRET",
     .help = "the git credentials of a git source"},
    {.name = "build-timeout", .has_value = true, .metavar = "SECONDS", .help = "the build's limit"},
};

void add_build_flags(struct args *a)
{
    size_t n = LOOM_ARRAY_SIZE(build_flags);
    a->flags = realloc(a->flags, (a->nflags + n) * sizeof(*a->flags));
    if (!a->flags)
        abort();
    memcpy(a->flags + a->nflags, build_flags, sizeof(build_flags));
    a->nflags += n;
}

int build_from_flags(struct args *a, const char *name, bool bundle, char ret_ref[700])
{
    static const char *const fields[][2] = {
        {"build-strategy", "strategy_type"},         {"build-size", "strategy_size"},
        {"build-context-dir", "source_context_dir"}, {"build-dockerfile", "strategy_spec_file"},
        {"build-commit", "source_revision"},         {"build-git-repo-secret", "source_secret"},
    };
    _cleanup_json_ json_t *body = json_object();
    char run[64];
    /* the run's name: the resource's, and when (a DNS label of at most 63) */
    snprintf(run, sizeof(run), "%.40s-%lld", name, (long long)(loom_now_ms() / 1000));
    json_object_set_new(body, "name", json_string(run));
    if (bundle)
        json_object_set_new(body, "output_type", json_string("bundle"));
    else
        json_object_set_new(body, "output_image", json_string(name));
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(fields); i++)
        if (fval(a, fields[i][0]))
            json_object_set_new(body, fields[i][1], json_string(fval(a, fields[i][0])));
    if (fval(a, "build-timeout")) {
        char *end;
        long long t = strtoll(fval(a, "build-timeout"), &end, 10);
        if (*end || !*fval(a, "build-timeout"))
            return usage_err("%s", "--build-timeout needs seconds");
        json_object_set_new(body, "timeout", json_integer(t));
    }
    int rc = put_source_value(fval(a, "build-source"), body);
    _cleanup_free_ char *path = ppath("build_runs", NULL, NULL);
    struct reply r = {0};
    if (!rc)
        rc = api_call("POST", path, body, &r);
    reply_release(&r);
    if (!rc)
        rc = wait_buildrun(run, &r);
    if (rc)
        return rc;
    json_t *d = json_object_get(r.json, "status_details");
    snprintf(ret_ref, 700, "%s", jstr(d, bundle ? "output_digest" : "output_image_digest"));
    fprintf(progress(), "build run %s %s %s\n", run, bundle ? "made the bundle" : "pushed",
            ret_ref);
    reply_release(&r);
    return EXIT_OK;
}

/* ---- printing ------------------------------------------------------------------ */

static void print_build(json_t *b)
{
    printf("Name:        %s\n", jstr(b, "name"));
    printf("Source:      %s %s%s%s\n", jstr(b, "source_type"),
           *jstr(b, "source_url") ? jstr(b, "source_url") : jstr(b, "source_upload"),
           *jstr(b, "source_revision") ? " at " : "", jstr(b, "source_revision"));
    if (*jstr(b, "source_context_dir"))
        printf("Context:     %s\n", jstr(b, "source_context_dir"));
    printf("Strategy:    %s%s%s\n", jstr(b, "strategy_type"),
           strcmp(jstr(b, "strategy_type"), "dockerfile") == 0 ? " " : "",
           strcmp(jstr(b, "strategy_type"), "dockerfile") == 0 ? jstr(b, "strategy_spec_file")
                                                               : "");
    printf("Size:        %s\n", jstr(b, "strategy_size"));
    bool bundle = strcmp(jstr(b, "output_type"), "bundle") == 0;
    if (bundle)
        printf("Output:      a function's code bundle\n");
    else
        printf("Image:       %s%s%s\n",
               *jstr(b, "output_image") ? jstr(b, "output_image") : "(default)",
               *jstr(b, "output_secret") ? ", pushed with secret " : "", jstr(b, "output_secret"));
    printf("Timeout:     %lld s\n", jint(b, "timeout"));
    if (json_object_get(b, "generation"))
        printf("Generation:  %lld\n", jint(b, "generation"));
    printf("Created:     %s\n", jstr(b, "created_at"));
}

/* "1.234 s" */
static void print_ms(char *out, size_t n, long long ms)
{
    snprintf(out, n, "%lld.%03lld s", ms / 1000, ms % 1000);
}

static void print_step(FILE *out, json_t *s)
{
    char d[32] = "";
    if (json_is_integer(json_object_get(s, "duration_ms")))
        print_ms(d, sizeof(d), jint(s, "duration_ms"));
    fprintf(out, "  %-12s %-9s %10s  %s\n", jstr(s, "name"), jstr(s, "status"), d,
            jstr(s, "detail"));
}

static void print_run(json_t *run)
{
    json_t *d = json_object_get(run, "status_details");
    print_build(run);
    if (*jstr(run, "build_name"))
        printf("Build:       %s\n", jstr(run, "build_name"));
    printf("Status:      %s\n", jstr(run, "status"));
    if (*jstr(d, "strategy"))
        printf("Detected:    %s\n", jstr(d, "strategy"));
    if (*jstr(d, "output_image_digest"))
        printf("Pushed:      %s\n", jstr(d, "output_image_digest"));
    else if (strcmp(jstr(run, "output_type"), "bundle") == 0 && *jstr(d, "output_digest"))
        printf("Bundle:      %s (a function's code_reference)\n", jstr(d, "output_digest"));
    if (*jstr(d, "reason"))
        printf("Reason:      %s\n", jstr(d, "reason"));
    if (*jstr(run, "finished_at"))
        printf("Finished:    %s\n", jstr(run, "finished_at"));
    json_t *steps = json_object_get(d, "steps");
    if (json_array_size(steps)) {
        printf("\n  %-12s %-9s %10s  %s\n", "STEP", "STATUS", "TIME", "DETAIL");
        size_t i;
        json_t *s;
        json_array_foreach(steps, i, s) print_step(stdout, s);
    }
}

static bool run_ended(json_t *run)
{
    const char *s = jstr(run, "status");
    return strcmp(s, "pending") != 0 && strcmp(s, "running") != 0;
}

int wait_buildrun(const char *name, struct reply *ret)
{
    _cleanup_free_ char *path = ppath("build_runs", name, NULL);
    _cleanup_json_ json_t *shown = json_array(); /* the steps as last printed */
    char last[64] = "";
    for (;;) {
        struct reply r = {0};
        int rc = api_call("GET", path, NULL, &r);
        if (rc)
            return rc;
        json_t *d = json_object_get(r.json, "status_details");
        json_t *steps = json_object_get(d, "steps");
        if (strcmp(last, jstr(r.json, "status")) != 0) {
            snprintf(last, sizeof(last), "%s", jstr(r.json, "status"));
            fprintf(progress(), "build run %s: %s%s%s\n", name, last,
                    *jstr(d, "strategy") ? ", " : "", jstr(d, "strategy"));
        }
        size_t i;
        json_t *s;
        json_array_foreach(steps, i, s)
        {
            if (json_equal(s, json_array_get(shown, i)))
                continue;
            print_step(progress(), s);
            if (i < json_array_size(shown))
                json_array_set(shown, i, s);
            else
                json_array_append(shown, s);
        }
        fflush(progress());
        if (run_ended(r.json)) {
            if (strcmp(jstr(r.json, "status"), "succeeded") == 0) {
                *ret = r;
                return EXIT_OK;
            }
            fprintf(stderr, "loom: build run %s %s: %s\n", name, jstr(r.json, "status"),
                    jstr(d, "reason"));
            reply_release(&r);
            return EXIT_API;
        }
        reply_release(&r);
        sleep_ms(200);
    }
}

/* ---- loom build ---------------------------------------------------------------- */

int cmd_build(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    bool create = strcmp(verb, "create") == 0;
    if (create || strcmp(verb, "update") == 0) {
        static const struct flag own[] = {
            {.name = "name", .has_value = true, .metavar = "NAME", .help = "the build's name"}};
        struct args a;
        spec_args(&a, LOOM_KIND_BUILD, own, LOOM_ARRAY_SIZE(own));
        _cleanup_json_ json_t *body = json_object();
        const char *name = NULL;
        rc = parse_args(&a, argc, argv);
        if (!rc)
            rc = take_name(&a, create ? "build create" : "build update", &name);
        if (!rc && create)
            json_object_set_new(body, "name", json_string(name));
        if (!rc)
            rc = put_spec_fields(&a, LOOM_KIND_BUILD, body);
        if (!rc && !create && json_object_size(body) == 0)
            rc = usage_err("%s", "build update: nothing to change");
        if (!rc)
            rc = write_resource("builds", "build", name, create, "PATCH", body);
        args_release(&a);
        return rc;
    }
    struct reply r = {0};
    if (strcmp(verb, "get") == 0 && argc == 1) {
        _cleanup_free_ char *path = ppath("builds", argv[0], NULL);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            print_build(r.json);
    } else if (strcmp(verb, "list") == 0 && argc == 0) {
        _cleanup_free_ char *path = ppath("builds", NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-28s %-10s %-11s %-50s %s\n", "NAME", "STRATEGY", "SOURCE", "IMAGE",
                   "CREATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "builds"), i, x)
                printf("%-28s %-10s %-11s %-50s %s\n", jstr(x, "name"), jstr(x, "strategy_type"),
                       jstr(x, "source_type"), jstr(x, "output_image"), jstr(x, "created_at"));
        }
    } else if (strcmp(verb, "delete") == 0 && argc == 1) {
        _cleanup_free_ char *path = ppath("builds", argv[0], NULL);
        if ((rc = api_call("DELETE", path, NULL, &r)))
            return rc;
        printf("build %s deleted\n", argv[0]);
    } else {
        return usage_err("unknown or incomplete build command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}

/* ---- loom buildrun ---------------------------------------------------------------- */

static int buildrun_submit(int argc, char **argv)
{
    static const struct submit_kind k = {LOOM_KIND_BUILDRUN,
                                         "buildrun submit",
                                         "build",
                                         "run a saved build",
                                         "build_name",
                                         {"source", "source-upload"},
                                         "buildrun submit needs --build or --source DIR|GIT_URL"};
    _cleanup_json_ json_t *body = json_object();
    const char *rname = NULL;
    bool wait = false;
    int rc = submit_args(&k, argc, argv, body, &rname, &wait);
    if (rc)
        return rc;
    _cleanup_free_ char *path = ppath("build_runs", NULL, NULL);
    struct reply r = {0};
    if ((rc = api_call("POST", path, body, &r)))
        return rc;
    if (!wait) {
        if (cfg.json)
            print_raw(&r);
        else
            printf("build run %s submitted: %s\n", rname, jstr(r.json, "output_image"));
        reply_release(&r);
        return EXIT_OK;
    }
    reply_release(&r);
    if ((rc = wait_buildrun(rname, &r)))
        return rc;
    if (cfg.json)
        print_raw(&r);
    else
        printf("build run %s succeeded: %s\n", rname,
               jstr(json_object_get(r.json, "status_details"), "output_image_digest"));
    reply_release(&r);
    return EXIT_OK;
}

int cmd_buildrun(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    if (strcmp(verb, "submit") == 0)
        return buildrun_submit(argc, argv);
    if (strcmp(verb, "logs") == 0)
        return follow_logs("build_runs", "buildrun", argc, argv);
    struct reply r = {0};
    if (strcmp(verb, "get") == 0 && argc == 1) {
        _cleanup_free_ char *path = ppath("build_runs", argv[0], NULL);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            print_run(r.json);
    } else if (strcmp(verb, "list") == 0 && argc == 0) {
        _cleanup_free_ char *path = ppath("build_runs", NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-28s %-10s %-20s %-26s %s\n", "NAME", "STATUS", "BUILD", "CREATED", "DIGEST");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "build_runs"), i, x)
                printf("%-28s %-10s %-20s %-26s %s\n", jstr(x, "name"), jstr(x, "status"),
                       jstr(x, "build_name"), jstr(x, "created_at"),
                       jstr(json_object_get(x, "status_details"), "output_digest"));
        }
    } else if (strcmp(verb, "cancel") == 0 && argc == 1) {
        _cleanup_free_ char *path = ppath("build_runs", argv[0], "/cancel");
        if ((rc = api_call("POST", path, NULL, &r)))
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            printf("build run %s: %s%s\n", argv[0], jstr(r.json, "status"),
                   json_is_true(json_object_get(json_object_get(r.json, "status_details"),
                                                "cancel_requested"))
                       ? " (cancelling)"
                       : "");
    } else if (strcmp(verb, "delete") == 0 && argc == 1) {
        return delete_with_retry("build_runs", argv[0], "build run");
    } else {
        return usage_err("unknown or incomplete buildrun command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
