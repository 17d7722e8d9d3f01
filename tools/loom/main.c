/* loom: the user's CLI for the Loom REST API. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sys/stat.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "err.h"
#include "httpc.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"

enum {
    EXIT_OK = 0,
    EXIT_API = 1,
    EXIT_USAGE = 2,
    EXIT_NOTFOUND = 3,
    EXIT_AUTH = 4,
    EXIT_UNAVAIL = 5,
};

static const char usage_text[] =
    "usage: loom [--project P] [-o json] [--api URL] [--key KEY] NOUN VERB [ARGS]\n"
    "\n"
    "  login --api URL --key KEY [--project P]   check the key, save them (0600 file)\n"
    "  logout                                     remove the saved settings\n"
    "  project list | get NAME | create NAME | delete NAME (admin keys)\n"
    "  jobrun submit --name N (--image IMG | --job J) [--cmd 'SHELL' | --command X...]\n"
    "         [--arg X...] [--array-indices SPEC] [--retrylimit N] [--maxexecutiontime S]\n"
    "         [--cpu C] [--memory M] [--ephemeral-storage S] [--parallelism P]\n"
    "         [--mode task|daemon] [--gpus N] [--gpu-model M] [--nodes N] [--priority 0-100]\n"
    "         [--node-selector LABEL=VALUE...] [--placement binpack|spread]\n"
    "         [--gang-timeout S] [ENV AND MOUNTS] [--registry-secret S] [--wait]\n"
    "  jobrun get N | logs N [--index I] | list | delete N | cancel N\n"
    "  jobrun resubmit N [--array-indices SPEC] [--name NEW] [--wait]\n"
    "         (reruns N's failed indices, or SPEC, as a new run)\n"
    "  job create N --image IMG [same flags as jobrun submit] | update N [flags]\n"
    "  job get N | list | delete N\n"
    "  app create N --image IMG [--cmd CMD | --command X...] [--arg X...] [--port P]\n"
    "         [--min-scale K] [--max-scale K] [--scale-initial-instances K]\n"
    "         [--concurrency C] [--concurrency-target T] [--scale-down-delay S]\n"
    "         [--request-timeout S] [--cpu C] [--memory M] [--ephemeral-storage S]\n"
    "         [--probe-live LIST] [--probe-ready LIST] [--visibility public|private|project]\n"
    "         [ENV AND MOUNTS] [--registry-secret S] [--no-wait] [--wait-timeout S]\n"
    "         (probe LIST: type=http|tcp,path=/p,port=N,initial-delay=S,interval=S,\n"
    "          timeout=S,failure-threshold=N; without --no-wait: progress lines until ready)\n"
    "  app update N [the same flags]   (a new generation; refused if changed meanwhile)\n"
    "  app get N | list | delete N | instances N | revisions N | logs N [-f] [--instance ID]\n"
    "  secret create N [--format generic|registry|tls] DATA | update N DATA\n"
    "  secret get N | list | delete N\n"
    "  configmap create|update N DATA | get N | list | delete N\n"
    "\n"
    "  ENV AND MOUNTS (repeatable): --env K=V, --env-from-secret S[:KEY[=ENV],...],\n"
    "         --env-from-configmap C[:KEY[=ENV],...], --mount-secret /DIR=S,\n"
    "         --mount-configmap /DIR=C\n"
    "  DATA (repeatable): --from-literal K=V, --from-file K=PATH, --from-env-file PATH;\n"
    "         registry: --server HOST --username U --password P [--email E];\n"
    "         tls: --cert-chain-file PEM --private-key-file PEM\n"
    "\n"
    "Settings (flag, then environment, then the file $XDG_CONFIG_HOME/loom/config or\n"
    "~/.config/loom/config, lines \"key = value\", written by loom login):\n"
    "  --api URL      LOOM_API      api = URL       the loom-api base URL\n"
    "  --key KEY      LOOM_KEY      key = KEY       API key (loom_<id>_<secret>)\n"
    "  --project P    LOOM_PROJECT  project = P     the project to work in\n"
    "  -o json        print the API's JSON as it came (tables otherwise)\n"
    "\n"
    "Errors print the API's problem detail and its request id on stderr.\n"
    "Exit status: 0 ok, 1 API error (invalid request, conflict, failed run),\n"
    "2 usage error, 3 not found, 4 authentication or permission, 5 server unavailable.\n";

static struct {
    char *api;
    char *key;
    char *project;
    bool json;
} cfg;

static int usage_err(const char *msg, const char *arg)
{
    fprintf(stderr, "loom: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\n(see loom --help)\n");
    return EXIT_USAGE;
}

/* ---- settings ----------------------------------------------------------- */

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    size_t i = 0;
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    memmove(s, s + i, strlen(s + i) + 1);
}

static void read_config_file(void)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    char path[1024];
    if (xdg && *xdg)
        snprintf(path, sizeof(path), "%s/loom/config", xdg);
    else if (home)
        snprintf(path, sizeof(path), "%s/.config/loom/config", home);
    else
        return;
    _cleanup_fclose_ FILE *f = fopen(path, "re");
    if (!f)
        return;
    char line[2048];
    while (fgets(line, sizeof(line), f)) {
        char *eq = strchr(line, '=');
        if (line[0] == '#' || !eq)
            continue;
        *eq = '\0';
        char *k = line, *v = eq + 1;
        trim(k);
        trim(v);
        char **dst = strcmp(k, "api") == 0       ? &cfg.api
                     : strcmp(k, "key") == 0     ? &cfg.key
                     : strcmp(k, "project") == 0 ? &cfg.project
                                                 : NULL;
        if (dst && !*dst)
            *dst = strdup(v);
    }
}

static void setting(char **dst, const char *env)
{
    const char *v = getenv(env);
    if (!*dst && v && *v)
        *dst = strdup(v);
}

/* ---- HTTP ----------------------------------------------------------------- */

struct reply {
    long status;
    char *raw;    /* body text */
    json_t *json; /* parsed body, or NULL */
};

static void reply_release(struct reply *r)
{
    free(r->raw);
    if (r->json)
        json_decref(r->json);
    memset(r, 0, sizeof(*r));
}

static int exit_for_status(long status)
{
    if (status < 300)
        return EXIT_OK;
    if (status == 401 || status == 403)
        return EXIT_AUTH;
    if (status == 404)
        return EXIT_NOTFOUND;
    if (status >= 500)
        return EXIT_UNAVAIL;
    return EXIT_API;
}

static void print_problem(const struct reply *r)
{
    const char *detail = r->json ? json_string_value(json_object_get(r->json, "detail")) : NULL;
    const char *title = r->json ? json_string_value(json_object_get(r->json, "title")) : NULL;
    const char *rid = r->json ? json_string_value(json_object_get(r->json, "request_id")) : NULL;
    fprintf(stderr, "loom: %s (HTTP %ld%s%s)\n",
            detail  ? detail
            : title ? title
                    : (r->raw && *r->raw ? r->raw : "error"),
            r->status, title ? " " : "", title ? title : "");
    if (rid)
        fprintf(stderr, "request id: %s\n", rid);
}

/* Calls the API. Returns an exit code: EXIT_OK for 2xx (then *ret holds the
 * reply), else prints the problem to stderr. */
static int api_call_if(const char *method, const char *path, json_t *body, const char *if_match,
                       struct reply *ret)
{
    if (!cfg.api || !*cfg.api) {
        fprintf(stderr, "loom: no API address: run loom login, or set LOOM_API or --api\n");
        return EXIT_USAGE;
    }
    if (!cfg.key || !*cfg.key) {
        fprintf(stderr, "loom: no API key: run loom login, or set LOOM_KEY or --key\n");
        return EXIT_AUTH;
    }
    size_t n = strlen(cfg.api);
    while (n && cfg.api[n - 1] == '/')
        n--;
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%.*s%s", (int)n, cfg.api, path) < 0)
        abort();
    _cleanup_free_ char *auth = NULL;
    if (asprintf(&auth, "Authorization: Bearer %s", cfg.key) < 0)
        abort();
    char idem[64] = "";
    if (strcmp(method, "POST") == 0) {
        char uuid[37];
        loom_uuid4(uuid);
        snprintf(idem, sizeof(idem), "Idempotency-Key: \"%s\"", uuid);
    }
    char ifm[96] = "";
    if (if_match)
        snprintf(ifm, sizeof(ifm), "If-Match: \"%.64s\"", if_match);
    const char *headers[6] = {auth, "Accept: application/json", "Content-Type: application/json"};
    int nh = 3;
    if (idem[0])
        headers[nh++] = idem;
    if (ifm[0])
        headers[nh++] = ifm;
    _cleanup_free_ char *text = body ? loom_json_dumps(body) : NULL;
    struct loom_httpc_req req = {
        .method = method,
        .url = url,
        .headers = headers,
        .body = text,
        .body_len = text ? strlen(text) : 0,
        .timeout_ms = 30000,
    };
    struct loom_httpc_resp resp = {.body = STRBUF_INIT};
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_httpc_do(&req, &resp, &err) < 0) {
        fprintf(stderr, "loom: could not reach the API at %s: %s\n", cfg.api, err.msg);
        loom_httpc_resp_release(&resp);
        return EXIT_UNAVAIL;
    }
    struct reply r = {.status = resp.status};
    r.raw = strbuf_detach(&resp.body, NULL);
    loom_httpc_resp_release(&resp);
    if (r.raw && *r.raw)
        r.json = json_loads(r.raw, 0, NULL);
    int rc = exit_for_status(r.status);
    if (rc != EXIT_OK) {
        print_problem(&r);
        reply_release(&r);
        return rc;
    }
    *ret = r;
    return EXIT_OK;
}

static int api_call(const char *method, const char *path, json_t *body, struct reply *ret)
{
    return api_call_if(method, path, body, NULL, ret);
}

static int need_project(void)
{
    if (!cfg.project || !*cfg.project) {
        fprintf(stderr, "loom: no project: set LOOM_PROJECT or --project\n");
        return EXIT_USAGE;
    }
    return 0;
}

/* "/v1/projects/<p>/<coll>[/<name>][<suffix>]" */
static char *ppath(const char *coll, const char *name, const char *suffix)
{
    char *p;
    if (asprintf(&p, "/v1/projects/%s/%s%s%s%s", cfg.project, coll, name ? "/" : "",
                 name ? name : "", suffix ? suffix : "") < 0)
        abort();
    return p;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static long long jint(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

static void print_raw(const struct reply *r)
{
    fputs(r->raw ? r->raw : "", stdout);
    if (r->raw && *r->raw && r->raw[strlen(r->raw) - 1] != '\n')
        putchar('\n');
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- argument parsing for verbs --------------------------------------------- */

/* Verb flags: each either takes a value (kept, repeatable ones appended to a
 * JSON array) or is boolean. Positionals are collected in order. */
struct flag {
    const char *name;
    bool has_value;
    bool repeat;
    const char *value; /* last value */
    json_t *values;    /* all values, for repeatable flags */
    bool set;
};

#define VFLAG(n)                                                                                   \
    {                                                                                              \
        .name = (n), .has_value = true                                                             \
    }
#define RFLAG(n)                                                                                   \
    {                                                                                              \
        .name = (n), .has_value = true, .repeat = true                                             \
    }
#define BFLAG(n)                                                                                   \
    {                                                                                              \
        .name = (n)                                                                                \
    }

struct args {
    struct flag *flags;
    size_t nflags;
    const char *pos[8];
    int npos;
};

static struct flag *find_flag(struct args *a, const char *name)
{
    for (size_t i = 0; i < a->nflags; i++)
        if (strcmp(a->flags[i].name, name) == 0)
            return &a->flags[i];
    return NULL;
}

static int parse_args(struct args *a, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strncmp(s, "--", 2) != 0 || s[2] == '\0') {
            if (a->npos >= 8)
                return usage_err("too many arguments at \"%s\"", s);
            a->pos[a->npos++] = s;
            continue;
        }
        char name[64];
        const char *eq = strchr(s, '=');
        snprintf(name, sizeof(name), "%.*s", eq ? (int)(eq - s - 2) : (int)strlen(s + 2), s + 2);
        struct flag *f = find_flag(a, name);
        if (!f)
            return usage_err("unknown option \"%s\"", s);
        const char *v = NULL;
        if (f->has_value) {
            if (eq)
                v = eq + 1;
            else if (i + 1 < argc)
                v = argv[++i];
            else
                return usage_err("option \"%s\" needs a value", s);
            if (f->repeat) {
                if (!f->values)
                    f->values = json_array();
                json_array_append_new(f->values, json_string(v));
            } else if (f->set) {
                return usage_err("option \"%s\" given twice", s);
            }
        } else if (eq) {
            return usage_err("option \"--%s\" takes no value", name);
        }
        f->value = v;
        f->set = true;
    }
    return 0;
}

static void args_release(struct args *a)
{
    for (size_t i = 0; i < a->nflags; i++)
        if (a->flags[i].values)
            json_decref(a->flags[i].values);
}

static const char *fval(struct args *a, const char *name)
{
    struct flag *f = find_flag(a, name);
    return f && f->set ? f->value : NULL;
}

static bool fset(struct args *a, const char *name)
{
    struct flag *f = find_flag(a, name);
    return f && f->set;
}

/* Integer flag into the body under key. */
static int put_int(struct args *a, const char *flag, json_t *body, const char *key)
{
    const char *v = fval(a, flag);
    if (!v)
        return 0;
    char *end;
    long long n = strtoll(v, &end, 10);
    if (!*v || *end)
        return usage_err("--%s needs an integer", flag);
    json_object_set_new(body, key, json_integer(n));
    return 0;
}

/* Integer flags and the body members they set. */
struct int_flag {
    const char *flag, *key;
};

static int put_ints(struct args *a, json_t *body, const struct int_flag *t, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = put_int(a, t[i].flag, body, t[i].key);
    return rc;
}

/* --env-from-secret / --env-from-configmap (Code Engine's forms):
 *   NAME                      every key, as an env variable of the same name
 *   NAME:KEY[,KEY2...]        those keys, each as a variable named after it
 *   NAME:KEY=ENV[,KEY2=ENV2]  those keys under other names
 * kind: "secret" or "config_map". */
static int put_env_ref(json_t *arr, const char *s, const char *kind, const char *flag)
{
    const char *colon = strchr(s, ':');
    size_t nlen = colon ? (size_t)(colon - s) : strlen(s);
    if (nlen == 0)
        return usage_err("%s needs NAME, NAME:KEY,... or NAME:KEY=ENVNAME,...", flag);
    char type[40];
    if (!colon) {
        snprintf(type, sizeof(type), "%s_full_reference", kind);
        json_array_append_new(arr, json_pack("{s:s,s:s%}", "type", type, "reference", s, nlen));
        return 0;
    }
    snprintf(type, sizeof(type), "%s_key_reference", kind);
    _cleanup_free_ char *keys = strdup(colon + 1);
    char *save = NULL;
    size_t added = 0;
    for (char *k = strtok_r(keys, ",", &save); k; k = strtok_r(NULL, ",", &save), added++) {
        char *eq = strchr(k, '=');
        const char *envname = k;
        if (eq) {
            *eq = '\0';
            envname = eq + 1;
        }
        if (!*k || !*envname)
            return usage_err("%s needs NAME, NAME:KEY,... or NAME:KEY=ENVNAME,...", flag);
        json_array_append_new(arr, json_pack("{s:s,s:s%,s:s,s:s}", "type", type, "reference", s,
                                             nlen, "key", k, "name", envname));
    }
    if (added == 0)
        return usage_err("%s needs NAME, NAME:KEY,... or NAME:KEY=ENVNAME,...", flag);
    return 0;
}

/* --mount-secret / --mount-configmap /abs/dir=NAME (repeatable). */
static int put_mounts(json_t *arr, json_t *values, const char *type, const char *flag)
{
    size_t i;
    json_t *v;
    json_array_foreach(values, i, v)
    {
        const char *s = json_string_value(v), *eq = strchr(s, '=');
        if (s[0] != '/' || !eq || !eq[1])
            return usage_err("%s needs /ABSOLUTE/PATH=NAME", flag);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s%}", "type", type, "reference", eq + 1,
                                             "mount_path", s, (size_t)(eq - s)));
    }
    return 0;
}

/* The run fields apps and job runs share. */
static int put_run_fields(struct args *a, json_t *body)
{
    if (fval(a, "image"))
        json_object_set_new(body, "image_reference", json_string(fval(a, "image")));
    struct flag *command = find_flag(a, "command");
    if (fval(a, "cmd") && command->values)
        return usage_err("%s", "--cmd and --command cannot be combined");
    if (fval(a, "cmd"))
        json_object_set_new(body, "run_commands",
                            json_pack("[s,s,s]", "/bin/sh", "-c", fval(a, "cmd")));
    else if (command->values)
        json_object_set(body, "run_commands", command->values);
    struct flag *arg = find_flag(a, "arg");
    if (arg->values)
        json_object_set(body, "run_arguments", arg->values);
    struct flag *env = find_flag(a, "env");
    struct flag *esec = find_flag(a, "env-from-secret");
    struct flag *ecm = find_flag(a, "env-from-configmap");
    if (env->values || esec->values || ecm->values) {
        json_t *arr = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(env->values, i, v)
        {
            const char *s = json_string_value(v);
            const char *eq = strchr(s, '=');
            if (!eq || eq == s) {
                json_decref(arr);
                return usage_err("--env \"%s\" is not NAME=VALUE", s);
            }
            json_array_append_new(arr, json_pack("{s:s,s:s%,s:s}", "type", "literal", "name", s,
                                                 (size_t)(eq - s), "value", eq + 1));
        }
        json_array_foreach(esec->values, i, v)
        {
            if (put_env_ref(arr, json_string_value(v), "secret", "--env-from-secret")) {
                json_decref(arr);
                return EXIT_USAGE;
            }
        }
        json_array_foreach(ecm->values, i, v)
        {
            if (put_env_ref(arr, json_string_value(v), "config_map", "--env-from-configmap")) {
                json_decref(arr);
                return EXIT_USAGE;
            }
        }
        json_object_set_new(body, "run_env_variables", arr);
    }
    struct flag *msec = find_flag(a, "mount-secret"), *mcm = find_flag(a, "mount-configmap");
    if (msec->values || mcm->values) {
        json_t *arr = json_array();
        if (put_mounts(arr, msec->values, "secret", "--mount-secret") ||
            put_mounts(arr, mcm->values, "config_map", "--mount-configmap")) {
            json_decref(arr);
            return EXIT_USAGE;
        }
        json_object_set_new(body, "run_volume_mounts", arr);
    }
    if (fval(a, "registry-secret"))
        json_object_set_new(body, "image_secret", json_string(fval(a, "registry-secret")));
    if (fval(a, "ephemeral-storage"))
        json_object_set_new(body, "scale_ephemeral_storage_limit",
                            json_string(fval(a, "ephemeral-storage")));
    if (fval(a, "cpu"))
        json_object_set_new(body, "scale_cpu_limit", json_string(fval(a, "cpu")));
    if (fval(a, "memory"))
        json_object_set_new(body, "scale_memory_limit", json_string(fval(a, "memory")));
    if (fval(a, "gpu-model"))
        json_object_set_new(body, "scale_gpu_model", json_string(fval(a, "gpu-model")));
    if (put_int(a, "gpus", body, "scale_gpus"))
        return EXIT_USAGE;
    return 0;
}

/* ---- project --------------------------------------------------------------- */

static int cmd_project(const char *verb, int argc, char **argv)
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

/* ---- jobrun ----------------------------------------------------------------- */

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

/* Flags of every run spec (apps and jobs). */
#define RUN_FLAGS                                                                                  \
    RFLAG("env-from-secret"), RFLAG("env-from-configmap"), RFLAG("mount-secret"),                  \
        RFLAG("mount-configmap"), VFLAG("registry-secret"), VFLAG("ephemeral-storage")

#define JOB_FLAGS                                                                                  \
    VFLAG("name"), VFLAG("image"), VFLAG("cmd"), RFLAG("command"), RFLAG("arg"), RFLAG("env"),     \
        VFLAG("array-indices"), VFLAG("retrylimit"), VFLAG("maxexecutiontime"), VFLAG("cpu"),      \
        VFLAG("memory"), VFLAG("parallelism"), VFLAG("mode"), VFLAG("gpus"), VFLAG("gpu-model"),   \
        RUN_FLAGS, VFLAG("nodes"), VFLAG("priority"), RFLAG("node-selector"), VFLAG("placement"),  \
        VFLAG("gang-timeout")

/* The name: --name or the one positional argument. */
static int take_name(struct args *a, const char *what, const char **ret)
{
    const char *name = fval(a, "name");
    if (!name && a->npos == 1)
        name = a->pos[0];
    else if (a->npos > (fval(a, "name") ? 0 : 1))
        return usage_err("unexpected argument \"%s\"", a->pos[a->npos - 1]);
    if (!name) {
        fprintf(stderr, "loom: %s needs a name\n", what);
        return EXIT_USAGE;
    }
    *ret = name;
    return 0;
}

static int put_job_fields(struct args *a, json_t *body)
{
    if (fval(a, "array-indices"))
        json_object_set_new(body, "scale_array_spec", json_string(fval(a, "array-indices")));
    if (fval(a, "mode"))
        json_object_set_new(body, "run_mode", json_string(fval(a, "mode")));
    if (fval(a, "placement"))
        json_object_set_new(body, "placement", json_string(fval(a, "placement")));
    struct flag *sel = find_flag(a, "node-selector");
    if (sel->values) {
        json_t *o = json_object();
        json_object_set_new(body, "node_selector", o);
        size_t i;
        json_t *v;
        json_array_foreach(sel->values, i, v)
        {
            const char *kv = json_string_value(v), *eq = strchr(kv, '=');
            if (!eq || eq == kv)
                return usage_err("--node-selector \"%s\" is not LABEL=VALUE", kv);
            _cleanup_free_ char *k = strndup(kv, (size_t)(eq - kv));
            json_object_set_new(o, k, json_string(eq + 1));
        }
    }
    static const struct int_flag ints[] = {
        {"nodes", "scale_nodes"},
        {"priority", "priority"},
        {"gang-timeout", "gang_timeout"},
        {"retrylimit", "scale_retry_limit"},
        {"maxexecutiontime", "scale_max_execution_time"},
        {"parallelism", "parallelism"},
    };
    int rc = put_run_fields(a, body);
    if (!rc)
        rc = put_ints(a, body, ints, LOOM_ARRAY_SIZE(ints));
    return rc;
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
    struct flag flags[] = {JOB_FLAGS, VFLAG("job"), BFLAG("wait")};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    _cleanup_json_ json_t *body = json_object();
    const char *name = NULL;
    int rc = parse_args(&a, argc, argv);
    if (!rc)
        rc = take_name(&a, "jobrun submit", &name);
    if (!rc && !fval(&a, "image") && !fval(&a, "job"))
        rc = usage_err("%s", "jobrun submit needs --image or --job");
    if (!rc) {
        json_object_set_new(body, "name", json_string(name));
        if (fval(&a, "job"))
            json_object_set_new(body, "job_name", json_string(fval(&a, "job")));
        rc = put_job_fields(&a, body);
    }
    bool wait = fset(&a, "wait");
    args_release(&a);
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

/* ---- job ----------------------------------------------------------------------- */

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

/* PATCH with If-Match: reads the resource's entity tag first, so a change
 * made by someone else in between is refused (412) instead of lost. */
static int patch_current(const char *coll, const char *name, json_t *body, const char *method,
                         struct reply *ret)
{
    _cleanup_free_ char *path = ppath(coll, name, NULL);
    struct reply cur = {0};
    int rc = api_call("GET", path, NULL, &cur);
    if (rc)
        return rc;
    _cleanup_free_ char *etag = strdup(jstr(cur.json, "entity_tag"));
    reply_release(&cur);
    return api_call_if(method, path, body, etag, ret);
}

static int cmd_job(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    struct flag flags[] = {JOB_FLAGS};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    if ((rc = parse_args(&a, argc, argv)))
        return rc;
    struct reply r = {0};
    _cleanup_json_ json_t *body = json_object();
    bool create = strcmp(verb, "create") == 0;
    if (create || strcmp(verb, "update") == 0) {
        const char *name = NULL;
        rc = take_name(&a, create ? "job create" : "job update", &name);
        if (!rc && create && !fval(&a, "image"))
            rc = usage_err("%s", "job create needs --image");
        if (!rc && create)
            json_object_set_new(body, "name", json_string(name));
        if (!rc)
            rc = put_job_fields(&a, body);
        if (!rc && !create && json_object_size(body) == 0)
            rc = usage_err("%s", "job update: nothing to change");
        if (!rc) {
            _cleanup_free_ char *coll = ppath("jobs", NULL, NULL);
            rc = create ? api_call("POST", coll, body, &r)
                        : patch_current("jobs", name, body, "PATCH", &r);
        }
        args_release(&a);
        if (rc)
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            printf("job %s %s (generation %lld)\n", name, create ? "created" : "updated",
                   jint(r.json, "generation"));
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

/* DELETE that may answer 202 (instances still stopping): retries until the
 * row is gone. */
static int delete_with_retry(const char *coll, const char *name, const char *what)
{
    _cleanup_free_ char *path = ppath(coll, name, NULL);
    for (int tries = 0;; tries++) {
        struct reply r = {0};
        int rc = api_call("DELETE", path, NULL, &r);
        if (rc == EXIT_NOTFOUND && tries > 0)
            rc = EXIT_OK;
        if (rc)
            return rc;
        long st = r.status;
        reply_release(&r);
        if (st != 202)
            break;
        if (tries == 0)
            printf("stopping the instances of %s %s...\n", what, name);
        if (tries >= 60) {
            fprintf(stderr, "loom: %s %s is still stopping; delete it again later\n", what, name);
            return EXIT_API;
        }
        sleep_ms(1000);
    }
    printf("%s %s deleted\n", what, name);
    return EXIT_OK;
}

static int cmd_jobrun(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    if (strcmp(verb, "submit") == 0)
        return jobrun_submit(argc, argv);
    if (strcmp(verb, "resubmit") == 0)
        return jobrun_resubmit(argc, argv);
    struct flag flags[] = {VFLAG("index")};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
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
    } else if (strcmp(verb, "logs") == 0 && a.npos == 1) {
        char q[64] = "";
        if (fval(&a, "index"))
            snprintf(q, sizeof(q), "?index=%.40s", fval(&a, "index"));
        _cleanup_free_ char *path = ppath("job_runs", a.pos[0], "/logs");
        _cleanup_free_ char *full = NULL;
        if (asprintf(&full, "%s%s", path, q) < 0)
            abort();
        if ((rc = api_call("GET", full, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, "lines"), i, x)
                printf("[%lld] %s\n", jint(x, "index"), jstr(x, "line"));
        }
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

/* ---- app ----------------------------------------------------------------------- */

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

/* --probe-live / --probe-ready "type=http,path=/healthz,port=8080,initial_delay=1,
 * interval=10,timeout=1,failure_threshold=3" (Code Engine's KEY=VALUE list;
 * the keys are the spec's, "initial-delay" and "failure-threshold" also work). */
static int put_probe(struct args *a, const char *flag, json_t *body, const char *key)
{
    const char *v = fval(a, flag);
    if (!v)
        return 0;
    _cleanup_json_ json_t *o = json_object();
    _cleanup_free_ char *text = strdup(v);
    char *save = NULL;
    for (char *kv = strtok_r(text, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq || eq == kv)
            return usage_err("--probe-* item \"%s\" is not KEY=VALUE", kv);
        *eq = '\0';
        for (char *c = kv; *c; c++)
            if (*c == '-')
                *c = '_';
        const char *val = eq + 1;
        if (strcmp(kv, "type") == 0 || strcmp(kv, "path") == 0) {
            json_object_set_new(o, kv, json_string(val));
            continue;
        }
        char *end;
        long long n = strtoll(val, &end, 10);
        if (!*val || *end)
            return usage_err("--probe-* item \"%s\" needs an integer", kv);
        json_object_set_new(o, kv, json_integer(n));
    }
    json_object_set(body, key, o);
    return 0;
}

static int app_write(int argc, char **argv, bool create)
{
    struct flag flags[] = {
        VFLAG("name"),
        VFLAG("image"),
        VFLAG("cmd"),
        RFLAG("command"),
        RFLAG("arg"),
        RFLAG("env"),
        VFLAG("port"),
        VFLAG("min-scale"),
        VFLAG("max-scale"),
        VFLAG("concurrency"),
        VFLAG("cpu"),
        VFLAG("memory"),
        VFLAG("gpus"),
        VFLAG("gpu-model"),
        BFLAG("no-wait"),
        VFLAG("wait-timeout"),
        RUN_FLAGS,
        VFLAG("concurrency-target"),
        VFLAG("scale-down-delay"),
        VFLAG("request-timeout"),
        VFLAG("scale-initial-instances"),
        VFLAG("probe-live"),
        VFLAG("probe-ready"),
        VFLAG("visibility"),
    };
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    int rc = parse_args(&a, argc, argv);
    _cleanup_json_ json_t *body = json_object();
    const char *name = NULL;
    if (!rc)
        rc = take_name(&a, create ? "app create" : "app update", &name);
    if (!rc && create && !fval(&a, "image"))
        rc = usage_err("%s", "app create needs --image");
    if (!rc) {
        if (create)
            json_object_set_new(body, "name", json_string(name));
        rc = put_run_fields(&a, body);
    }
    static const struct int_flag ints[] = {
        {"port", "image_port"},
        {"min-scale", "scale_min_instances"},
        {"max-scale", "scale_max_instances"},
        {"concurrency", "scale_concurrency"},
        {"concurrency-target", "scale_concurrency_target"},
        {"scale-down-delay", "scale_down_delay"},
        {"request-timeout", "scale_request_timeout"},
        {"scale-initial-instances", "scale_initial_instances"},
    };
    if (!rc)
        rc = put_ints(&a, body, ints, LOOM_ARRAY_SIZE(ints));
    if (!rc && fval(&a, "visibility"))
        json_object_set_new(body, "visibility", json_string(fval(&a, "visibility")));
    if (!rc)
        rc = put_probe(&a, "probe-live", body, "probe_liveness");
    if (!rc)
        rc = put_probe(&a, "probe-ready", body, "probe_readiness");
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

/* loom app logs N [-f] [--instance ID]: in time order; -f keeps polling. */
static int app_logs(int argc, char **argv)
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
        rc = usage_err("%s", "usage: app logs NAME [-f] [--instance ID]");
    if (rc) {
        args_release(&a);
        return rc;
    }
    follow = fset(&a, "follow");
    _cleanup_free_ char *base = ppath("apps", a.pos[0], "/logs?limit=1000");
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
                printf("[%.8s] %s\n", jstr(x, "instance"), jstr(x, "line"));
        }
        fflush(stdout);
        free(after);
        after = strdup(jstr(r.json, "next"));
        size_t n = json_array_size(lines);
        reply_release(&r);
        if (n == 1000)
            continue;
        if (!follow)
            return EXIT_OK;
        sleep_ms(1000);
    }
}

static int cmd_app(const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    if (strcmp(verb, "create") == 0 || strcmp(verb, "update") == 0)
        return app_write(argc, argv, verb[0] == 'c');
    if (strcmp(verb, "logs") == 0)
        return app_logs(argc, argv);
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

/* ---- secret, configmap ----------------------------------------------------------- */

/* loom secret|configmap create|update NAME --from-literal K=V... [--format F] */
/* A whole file as a string (secrets and config maps: at most 1 MiB). */
static int read_small_file(const char *path, char **ret)
{
    _cleanup_fclose_ FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "loom: could not open \"%s\": %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    struct strbuf sb = STRBUF_INIT;
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        strbuf_add(&sb, buf, n);
        if (sb.len > 1024 * 1024) {
            strbuf_release(&sb);
            fprintf(stderr, "loom: \"%s\" is over 1 MiB\n", path);
            return EXIT_USAGE;
        }
    }
    *ret = strbuf_detach(&sb, NULL);
    return 0;
}

/* Data from --from-file KEY=PATH, --from-env-file PATH (KEY=VALUE lines,
 * # comments), registry --server/--username/--password[/--email] and tls
 * --cert-chain-file/--private-key-file (keys tls_cert, tls_key). */
static int put_kv_sources(struct args *a, json_t *data)
{
    size_t i;
    json_t *v;
    json_array_foreach(find_flag(a, "from-file")->values, i, v)
    {
        const char *kv = json_string_value(v), *eq = strchr(kv, '=');
        if (!eq || eq == kv || !eq[1])
            return usage_err("--from-file \"%s\" is not KEY=PATH", kv);
        _cleanup_free_ char *k = strndup(kv, (size_t)(eq - kv));
        char *text;
        int rc = read_small_file(eq + 1, &text);
        if (rc)
            return rc;
        json_object_set_new(data, k, json_string(text));
        free(text);
    }
    json_array_foreach(find_flag(a, "from-env-file")->values, i, v)
    {
        _cleanup_free_ char *text = NULL;
        int rc = read_small_file(json_string_value(v), &text);
        if (rc)
            return rc;
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            trim(line);
            if (!*line || line[0] == '#')
                continue;
            char *eq = strchr(line, '=');
            if (!eq || eq == line)
                return usage_err("--from-env-file: line \"%s\" is not KEY=VALUE", line);
            *eq = '\0';
            json_object_set_new(data, line, json_string(eq + 1));
        }
    }
    static const char *const reg[][2] = {{"server", "server"},
                                         {"username", "username"},
                                         {"password", "password"},
                                         {"email", "email"}};
    for (size_t r = 0; r < LOOM_ARRAY_SIZE(reg); r++)
        if (fval(a, reg[r][0]))
            json_object_set_new(data, reg[r][1], json_string(fval(a, reg[r][0])));
    static const char *const tls[][2] = {{"cert-chain-file", "tls_cert"},
                                         {"private-key-file", "tls_key"}};
    for (size_t t = 0; t < LOOM_ARRAY_SIZE(tls); t++) {
        if (!fval(a, tls[t][0]))
            continue;
        char *text;
        int rc = read_small_file(fval(a, tls[t][0]), &text);
        if (rc)
            return rc;
        json_object_set_new(data, tls[t][1], json_string(text));
        free(text);
    }
    return 0;
}

static int cmd_kv(const char *coll, const char *what, const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    struct flag flags[] = {
        VFLAG("name"),   RFLAG("from-literal"),    RFLAG("from-file"),       RFLAG("from-env-file"),
        VFLAG("format"), VFLAG("server"),          VFLAG("username"),        VFLAG("password"),
        VFLAG("email"),  VFLAG("cert-chain-file"), VFLAG("private-key-file")};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    if ((rc = parse_args(&a, argc, argv)))
        return rc;
    struct reply r = {0};
    bool create = strcmp(verb, "create") == 0;
    if (create || strcmp(verb, "update") == 0) {
        const char *name = NULL;
        _cleanup_json_ json_t *body = json_object();
        json_t *data = json_object();
        json_object_set_new(body, "data", data);
        rc = take_name(&a, what, &name);
        struct flag *lit = find_flag(&a, "from-literal");
        if (!rc)
            rc = put_kv_sources(&a, data);
        if (!rc && json_object_size(data) == 0 && !lit->values)
            rc = usage_err("%s", "give the data as --from-literal KEY=VALUE, --from-file "
                                 "KEY=PATH, --from-env-file PATH (repeatable), or --server "
                                 "--username --password, or --cert-chain-file "
                                 "--private-key-file");
        size_t i;
        json_t *v;
        json_array_foreach(lit->values, i, v)
        {
            const char *kvs = json_string_value(v), *eq = strchr(kvs, '=');
            if (!rc && (!eq || eq == kvs))
                rc = usage_err("--from-literal \"%s\" is not KEY=VALUE", kvs);
            if (!rc) {
                _cleanup_free_ char *k = strndup(kvs, (size_t)(eq - kvs));
                json_object_set_new(data, k, json_string(eq + 1));
            }
        }
        if (!rc && fval(&a, "format"))
            json_object_set_new(body, "format", json_string(fval(&a, "format")));
        if (!rc && create)
            json_object_set_new(body, "name", json_string(name));
        if (!rc) {
            _cleanup_free_ char *cpath = ppath(coll, NULL, NULL);
            rc = create ? api_call("POST", cpath, body, &r)
                        : patch_current(coll, name, body, "PUT", &r);
        }
        args_release(&a);
        if (rc)
            return rc;
        if (cfg.json)
            print_raw(&r);
        else
            printf("%s %s %s (generation %lld)\n", what, name, create ? "created" : "updated",
                   jint(r.json, "generation"));
    } else if (strcmp(verb, "get") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath(coll, a.pos[0], NULL);
        args_release(&a);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("Name:        %s\n", jstr(r.json, "name"));
            if (json_object_get(r.json, "format"))
                printf("Format:      %s\n", jstr(r.json, "format"));
            printf("Generation:  %lld\n", jint(r.json, "generation"));
            printf("Updated:     %s\n", jstr(r.json, "updated_at"));
            json_t *data = json_object_get(r.json, "data");
            size_t i;
            json_t *k;
            printf("Data:\n");
            json_array_foreach(json_object_get(r.json, "data_keys"), i, k)
            {
                const char *key = json_string_value(k);
                if (data)
                    printf("  %s=%s\n", key, jstr(data, key));
                else
                    printf("  %s (value hidden from read keys)\n", key);
            }
        }
    } else if (strcmp(verb, "list") == 0 && a.npos == 0) {
        args_release(&a);
        _cleanup_free_ char *path = ppath(coll, NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-5s %s\n", "NAME", "KEYS", "UPDATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, coll), i, x)
                printf("%-32s %-5zu %s\n", jstr(x, "name"),
                       json_array_size(json_object_get(x, "data_keys")), jstr(x, "updated_at"));
        }
    } else if (strcmp(verb, "delete") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath(coll, a.pos[0], NULL);
        const char *name = a.pos[0];
        args_release(&a);
        if ((rc = api_call("DELETE", path, NULL, &r)))
            return rc;
        printf("%s %s deleted\n", what, name);
    } else {
        args_release(&a);
        return usage_err("unknown or incomplete command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}

/* ---- login ---------------------------------------------------------------- */

/* $XDG_CONFIG_HOME/loom (or ~/.config/loom) into buf; -1 when neither is set. */
static int config_dir(char *buf, size_t size)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, size, "%s/loom", xdg);
    else if (home && *home)
        snprintf(buf, size, "%s/.config/loom", home);
    else
        return -1;
    return 0;
}

/* mkdir -p with mode for the directories it creates. */
static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* loom login --api URL --key KEY [--project P]: checks the key with a GET
 * that needs it (and the project, when given, exists for it), then writes
 * the config file (0600, in a 0700 directory) atomically. */
static int cmd_login(void)
{
    if (!cfg.api || !*cfg.api || !cfg.key || !*cfg.key)
        return usage_err("%s", "login needs --api URL and --key KEY");
    struct reply r = {0};
    int rc = api_call("GET", "/v1/projects?limit=1", NULL, &r);
    if (rc)
        return rc;
    reply_release(&r);
    if (cfg.project && *cfg.project) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "/v1/projects/%s", cfg.project) < 0)
            abort();
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        reply_release(&r);
    }
    char dir[1024], file[1100], tmp[1100];
    if (config_dir(dir, sizeof(dir)) < 0) {
        fprintf(stderr, "loom: neither XDG_CONFIG_HOME nor HOME is set\n");
        return EXIT_USAGE;
    }
    if (mkdir_p(dir, 0700) < 0 || chmod(dir, 0700) < 0) {
        fprintf(stderr, "loom: could not create \"%s\": %s\n", dir, strerror(errno));
        return EXIT_API;
    }
    snprintf(file, sizeof(file), "%s/config", dir);
    snprintf(tmp, sizeof(tmp), "%s/config.tmp", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    _cleanup_fclose_ FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        fprintf(stderr, "loom: could not write \"%s\": %s\n", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return EXIT_API;
    }
    fchmod(fd, 0600);
    fprintf(f, "# written by loom login\napi = %s\nkey = %s\n", cfg.api, cfg.key);
    if (cfg.project && *cfg.project)
        fprintf(f, "project = %s\n", cfg.project);
    if (fflush(f) != 0 || fsync(fd) < 0 || rename(tmp, file) < 0) {
        fprintf(stderr, "loom: could not write \"%s\": %s\n", file, strerror(errno));
        unlink(tmp);
        return EXIT_API;
    }
    printf("logged in to %s%s%s; settings in %s\n", cfg.api, cfg.project ? ", project " : "",
           cfg.project ? cfg.project : "", file);
    return EXIT_OK;
}

/* loom logout: removes the config file (the key with it). */
static int cmd_logout(void)
{
    char dir[1024], file[1100];
    if (config_dir(dir, sizeof(dir)) < 0)
        return EXIT_OK;
    snprintf(file, sizeof(file), "%s/config", dir);
    if (unlink(file) < 0) {
        if (errno == ENOENT) {
            printf("not logged in (no %s)\n", file);
            return EXIT_OK;
        }
        fprintf(stderr, "loom: could not remove \"%s\": %s\n", file, strerror(errno));
        return EXIT_API;
    }
    printf("logged out (removed %s)\n", file);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    /* global options may appear anywhere; everything else goes on */
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    int nrest = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        char **dst = NULL;
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            fputs(usage_text, stdout);
            free(rest);
            return EXIT_OK;
        }
        if (strcmp(s, "--project") == 0)
            dst = &cfg.project;
        else if (strcmp(s, "--api") == 0)
            dst = &cfg.api;
        else if (strcmp(s, "--key") == 0)
            dst = &cfg.key;
        if (dst || strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0) {
            if (i + 1 >= argc) {
                free(rest);
                return usage_err("option \"%s\" needs a value", s);
            }
            const char *v = argv[++i];
            if (dst) {
                free(*dst);
                *dst = strdup(v);
            } else if (strcmp(v, "json") == 0) {
                cfg.json = true;
            } else if (strcmp(v, "table") != 0) {
                free(rest);
                return usage_err("output format \"%s\" is not json or table", v);
            }
            continue;
        }
        rest[nrest++] = argv[i];
    }
    setting(&cfg.api, "LOOM_API");
    setting(&cfg.key, "LOOM_KEY");
    setting(&cfg.project, "LOOM_PROJECT");
    if (nrest == 1 && (strcmp(rest[0], "login") == 0 || strcmp(rest[0], "logout") == 0)) {
        /* login takes only flags and the environment, never the old file */
        loom_httpc_global_init();
        int rc = strcmp(rest[0], "login") == 0 ? cmd_login() : cmd_logout();
        loom_httpc_global_cleanup();
        free(rest);
        free(cfg.api);
        free(cfg.key);
        free(cfg.project);
        return rc;
    }
    read_config_file();
    if (nrest < 2) {
        fputs(usage_text, stderr);
        free(rest);
        return EXIT_USAGE;
    }
    loom_httpc_global_init();
    const char *noun = rest[0], *verb = rest[1];
    int rc;
    if (strcmp(noun, "project") == 0 || strcmp(noun, "projects") == 0)
        rc = cmd_project(verb, nrest - 2, rest + 2);
    else if (strcmp(noun, "jobrun") == 0 || strcmp(noun, "jr") == 0)
        rc = cmd_jobrun(verb, nrest - 2, rest + 2);
    else if (strcmp(noun, "app") == 0 || strcmp(noun, "application") == 0)
        rc = cmd_app(verb, nrest - 2, rest + 2);
    else if (strcmp(noun, "job") == 0)
        rc = cmd_job(verb, nrest - 2, rest + 2);
    else if (strcmp(noun, "secret") == 0)
        rc = cmd_kv("secrets", "secret", verb, nrest - 2, rest + 2);
    else if (strcmp(noun, "configmap") == 0 || strcmp(noun, "cm") == 0)
        rc = cmd_kv("config_maps", "config map", verb, nrest - 2, rest + 2);
    else
        rc = usage_err("unknown noun \"%s\"", noun);
    loom_httpc_global_cleanup();
    free(rest);
    free(cfg.api);
    free(cfg.key);
    free(cfg.project);
    return rc;
}
