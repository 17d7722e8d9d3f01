/* loom: the user's CLI for the Loom REST API. This file: the settings
 * (flags, environment, config file), login and logout, and the dispatch of
 * the nouns. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "httpc.h"
#include "util.h"
#include "cli.h"

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
    "  jobrun get N | list | delete N | cancel N\n"
    "  jobrun logs N [-f] [--index I] [LOG FILTERS]   (-f: as written, until the run ends)\n"
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
    "  app get N | list | delete N | instances N | revisions N | logs N [-f] [LOG FILTERS]\n"
    "  fn create N --runtime R (--inline-code FILE | --code-bundle DIR|TGZ |\n"
    "         --build-source DIR|GIT_URL) [--main F]\n"
    "         [--env K=V...] [--cpu C] [--memory M] [--concurrency N] [--timeout S]\n"
    "         [--scale-down-delay S] [--visibility public|private|project]\n"
    "  fn update N [the same flags] | get N | list | delete N | runtimes\n"
    "  fn invoke N [--data JSON | --data-file F] [--header K:V...]   (prints the answer)\n"
    "  fn logs N [-f] [LOG FILTERS] | activations N\n"
    "  build create N --source DIR|GIT_URL [--strategy buildpacks|dockerfile] [--image REF]\n"
    "         [--size small|medium|large|xlarge] [--commit REV] [--context-dir D]\n"
    "         [--dockerfile F] [--git-repo-secret S] [--registry-secret S] [--timeout S]\n"
    "         [--output-type image|bundle]   (bundle: a function's code, buildpacks only)\n"
    "  build update N [the same flags] | get N | list | delete N\n"
    "  buildrun submit --name N (--build B | --source DIR|GIT_URL [build flags]) [--wait]\n"
    "         (a directory is uploaded: .ceignore, else .gitignore, leaves files out)\n"
    "  buildrun get N | list | logs N [-f] | cancel N | delete N\n"
    "  app create|update N, job create N: --build-source DIR|GIT_URL [--build-strategy S]\n"
    "         [--build-size S] [--build-commit REV] ... instead of --image: builds, then\n"
    "         deploys the digest the build pushed\n"
    "  fn create|update N --build-source DIR|GIT_URL [build flags]: builds the function's\n"
    "         code bundle (the source with its npm or pip dependencies), then deploys it\n"
    "  secret create N [--format generic|registry|tls] DATA | update N DATA\n"
    "  secret get N | list | delete N\n"
    "  configmap create|update N DATA | get N | list | delete N\n"
    "  usage [--from TIME] [--to TIME] [--by resource|kind|day]   consumption and cost\n";

/* (two strings: C17 promises no more than 4095 characters in one) */
static const char usage_more[] =
    "\n"
    "  LOG FILTERS: --instance ID, --since TIME|DURATION, --tail N, --stream stdout|stderr\n"
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

struct cli_config cfg;

/* ---- settings ----------------------------------------------------------- */

void trim(char *s)
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
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_mkdir_p(dir, 0700, &err) < 0) {
        fprintf(stderr, "loom: %s\n", err.msg);
        return EXIT_API;
    }
    if (chmod(dir, 0700) < 0) {
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

/* The global options, which may appear anywhere, out of argv; the rest in
 * order into rest. -1 to go on, else the exit status (--help, a usage
 * error). */
static int global_options(int argc, char **argv, char **rest, int *ret_nrest)
{
    int nrest = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        char **dst = NULL;
        /* after NOUN VERB, --help lists that verb's flags (args.c) */
        if ((strcmp(s, "--help") == 0 && nrest < 2) || strcmp(s, "-h") == 0) {
            fputs(usage_text, stdout);
            fputs(usage_more, stdout);
            return EXIT_OK;
        }
        if (strcmp(s, "--project") == 0)
            dst = &cfg.project;
        else if (strcmp(s, "--api") == 0)
            dst = &cfg.api;
        else if (strcmp(s, "--key") == 0)
            dst = &cfg.key;
        if (dst || strcmp(s, "-o") == 0 || strcmp(s, "--output") == 0) {
            if (i + 1 >= argc)
                return usage_err("option \"%s\" needs a value", s);
            const char *v = argv[++i];
            if (dst) {
                free(*dst);
                *dst = strdup(v);
            } else if (strcmp(v, "json") == 0) {
                cfg.json = true;
            } else if (strcmp(v, "table") != 0) {
                return usage_err("output format \"%s\" is not json or table", v);
            }
            continue;
        }
        rest[nrest++] = argv[i];
    }
    *ret_nrest = nrest;
    return -1;
}

static int dispatch(const char *noun, const char *verb, int argc, char **argv)
{
    if (strcmp(noun, "project") == 0 || strcmp(noun, "projects") == 0)
        return cmd_project(verb, argc, argv);
    if (strcmp(noun, "jobrun") == 0 || strcmp(noun, "jr") == 0)
        return cmd_jobrun(verb, argc, argv);
    if (strcmp(noun, "app") == 0 || strcmp(noun, "application") == 0)
        return cmd_app(verb, argc, argv);
    if (strcmp(noun, "job") == 0)
        return cmd_job(verb, argc, argv);
    if (strcmp(noun, "fn") == 0 || strcmp(noun, "function") == 0)
        return cmd_fn(verb, argc, argv);
    if (strcmp(noun, "build") == 0)
        return cmd_build(verb, argc, argv);
    if (strcmp(noun, "buildrun") == 0 || strcmp(noun, "br") == 0)
        return cmd_buildrun(verb, argc, argv);
    if (strcmp(noun, "secret") == 0)
        return cmd_kv("secrets", "secret", verb, argc, argv);
    if (strcmp(noun, "configmap") == 0 || strcmp(noun, "cm") == 0)
        return cmd_kv("config_maps", "config map", verb, argc, argv);
    return usage_err("unknown noun \"%s\"", noun);
}

static int run(int nrest, char **rest)
{
    setting(&cfg.api, "LOOM_API");
    setting(&cfg.key, "LOOM_KEY");
    setting(&cfg.project, "LOOM_PROJECT");
    /* login takes only flags and the environment, never the old file */
    bool session = nrest == 1 && (strcmp(rest[0], "login") == 0 || strcmp(rest[0], "logout") == 0);
    bool no_verb = nrest >= 1 && strcmp(rest[0], "usage") == 0;
    if (!session) {
        read_config_file();
        if (nrest < 2 && !no_verb) {
            fputs(usage_text, stderr);
            fputs(usage_more, stderr);
            return EXIT_USAGE;
        }
    }
    loom_httpc_global_init();
    int rc = no_verb                         ? cmd_usage(nrest - 1, rest + 1)
             : !session                      ? dispatch(rest[0], rest[1], nrest - 2, rest + 2)
             : strcmp(rest[0], "login") == 0 ? cmd_login()
                                             : cmd_logout();
    loom_httpc_global_cleanup();
    return rc;
}

int main(int argc, char **argv)
{
    _cleanup_free_ char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    if (!rest)
        abort();
    int nrest = 0;
    int rc = global_options(argc, argv, rest, &nrest);
    if (rc < 0)
        rc = run(nrest, rest);
    free(cfg.api);
    free(cfg.key);
    free(cfg.project);
    return rc;
}
