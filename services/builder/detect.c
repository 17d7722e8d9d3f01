/* Buildpacks' detection, as Cloud Foundry, Paketo and Heroku do it: the
 * source's marker files say its language, its manifest says how to get its
 * dependencies and how it starts. A pure function over the source's
 * listing and a few files' text, so that every rule is unit-tested. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder.h"
#include "cleanup.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"

/* The layout of a built image. */
#define APP_DIR "/app"
#define NODE_MODULES APP_DIR "/node_modules"
#define PY_DEPS "/layers/python"
#define GO_BIN_DIR "/layers/go/bin"
#define GO_BIN GO_BIN_DIR "/app"
#define BASE_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *const wheel_dirs[] = {"wheels", "vendor", "wheelhouse"};
static const char *const node_mains[] = {"server.js", "index.js", "app.js", "main.js"};
static const char *const py_mains[] = {"app.py", "main.py", "server.py", "wsgi.py"};
static const char *const script_names[] = {"start", "start.sh", "run", "run.sh", "main.sh"};

bool bp_wants_text(const char *path, unsigned mode, size_t *ret_max)
{
    static const char *const manifests[] = {"Dockerfile",
                                            "package.json",
                                            "package-lock.json",
                                            "npm-shrinkwrap.json",
                                            "requirements.txt",
                                            "pyproject.toml",
                                            "go.mod",
                                            "Procfile"};
    *ret_max = 1 << 20;
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(manifests); i++)
        if (strcmp(path, manifests[i]) == 0)
            return true;
    /* a top-level executable or script: its first line says how it runs */
    *ret_max = 256;
    bool top = !strchr(path, '/');
    size_t n = strlen(path);
    return top && ((mode & 0111) || (n > 3 && strcmp(path + n - 3, ".sh") == 0));
}

void bp_plan_release(struct bp_plan *p)
{
    free(p->step_script);
    json_decref(p->step_inputs);
    json_decref(p->app_exclude);
    json_decref(p->cmd);
    json_decref(p->env);
    *p = (struct bp_plan){0};
}

static const struct src_entry *find(const struct src_tree *t, const char *path)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->e[i].path, path) == 0)
            return &t->e[i];
    return NULL;
}

static bool has_file(const struct src_tree *t, const char *path)
{
    const struct src_entry *e = find(t, path);
    return e && e->type == 'f';
}

static const char *text(const struct src_tree *t, const char *path)
{
    return json_string_value(json_object_get(t->texts, path));
}

/* The first of names the source has at its top, or NULL. */
static const char *first_of(const struct src_tree *t, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (has_file(t, names[i]))
            return names[i];
    return NULL;
}

static void trim_line(char *s)
{
    size_t n = strlen(s), i = 0;
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    while (isspace((unsigned char)s[i]))
        i++;
    memmove(s, s + i, n - i + 1);
}

/* The command of the Procfile's web: line (allocated), or NULL. A Procfile
 * with lines that are not "name: command" is an error naming the line. */
static int procfile_web(const struct src_tree *t, char **ret, struct loom_err *err)
{
    *ret = NULL;
    const char *s = text(t, "Procfile");
    if (!s)
        return 0;
    int lineno = 0;
    for (const char *line = s; *line;
         line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
        lineno++;
        size_t len = strcspn(line, "\n");
        char buf[4096];
        snprintf(buf, sizeof(buf), "%.*s", (int)(len < sizeof(buf) ? len : sizeof(buf) - 1), line);
        trim_line(buf);
        if (!buf[0] || buf[0] == '#')
            continue;
        char *colon = strchr(buf, ':');
        bool ok = colon && colon > buf;
        for (char *c = buf; ok && c < colon; c++)
            ok = isalnum((unsigned char)*c) || *c == '_' || *c == '-';
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL,
                                "Procfile line %d: \"%.80s\" is not \"name: command\"", lineno,
                                buf);
        *colon = '\0';
        char *cmd = colon + 1;
        while (*cmd == ' ' || *cmd == '\t')
            cmd++;
        if (strcmp(buf, "web") == 0) {
            if (!*cmd)
                return loom_err_set(err, LOOM_EINVAL, "Procfile line %d: web has no command",
                                    lineno);
            free(*ret);
            *ret = strdup(cmd);
        }
    }
    return 0;
}

static json_t *shell_cmd(const char *cmd)
{
    return json_pack("[s,s,s]", "/bin/sh", "-c", cmd);
}

static void env_add(struct bp_plan *p, const char *kv)
{
    json_array_append_new(p->env, json_string(kv));
}

/* ---- Node.js --------------------------------------------------------------------------- */

/* Whether require() finds main: the file, with .js, or its index.js. */
static bool node_main_found(const struct src_tree *t, const char *main)
{
    while (strncmp(main, "./", 2) == 0)
        main += 2;
    static const char *const tails[] = {"", ".js", ".cjs", ".mjs", "/index.js"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(tails); i++) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s%s", main, tails[i]) < 0)
            abort();
        if (has_file(t, path))
            return true;
    }
    return false;
}

static int detect_node(const struct src_tree *t, const struct bp_options *o, const char *web,
                       struct bp_plan *p, struct loom_err *err)
{
    json_error_t je;
    const char *s = text(t, "package.json");
    _cleanup_json_ json_t *pkg = s ? json_loads(s, 0, &je) : NULL;
    if (!json_is_object(pkg))
        return s && !pkg
                   ? loom_err_set(err, LOOM_EINVAL, "package.json line %d: %s", je.line, je.text)
                   : loom_err_set(err, LOOM_EINVAL,
                                  "package.json: not a JSON object (or larger than 1 MiB)");
    json_t *deps = json_object_get(pkg, "dependencies");
    if (deps && !json_is_object(deps))
        return loom_err_set(err, LOOM_EINVAL, "package.json: \"dependencies\" is not an object");
    const char *lock =
        first_of(t, (const char *const[]){"package-lock.json", "npm-shrinkwrap.json"}, 2);
    snprintf(p->language, sizeof(p->language), "nodejs");
    snprintf(p->run_stack, sizeof(p->run_stack), "nodejs");
    p->app_layer = true;
    json_array_append_new(p->app_exclude, json_string("node_modules"));
    env_add(p, "NODE_ENV=production");
    env_add(p, "PATH=" NODE_MODULES "/.bin:" BASE_PATH);
    char what[128] = "no dependencies";
    if (json_object_size(deps) > 0) {
        snprintf(p->build_stack, sizeof(p->build_stack), "nodejs-build");
        snprintf(p->step, sizeof(p->step), "%s", lock ? "npm ci" : "npm install");
        snprintf(p->step_output, sizeof(p->step_output), "%s", NODE_MODULES);
        json_array_append_new(p->step_inputs, json_string("package.json"));
        if (lock)
            json_array_append_new(p->step_inputs, json_string(lock));
        if (asprintf(&p->step_script,
                     "set -e\n"
                     "export HOME=/tmp/home npm_config_cache=/tmp/npm-cache "
                     "npm_config_update_notifier=false npm_config_fund=false "
                     "npm_config_audit=false npm_config_fetch_retries=1%s%s\n"
                     "cd " APP_DIR "\n"
                     "%s --omit=dev --no-audit --no-fund%s\n"
                     "mkdir -p " NODE_MODULES "\n",
                     o->npm_registry ? " npm_config_registry=" : "",
                     o->npm_registry ? o->npm_registry : "", p->step,
                     lock ? "" : " --no-package-lock") < 0)
            abort();
        snprintf(what, sizeof(what), "%zu %s, %s", json_object_size(deps),
                 json_object_size(deps) == 1 ? "dependency" : "dependencies", p->step);
    }
    const char *start =
        json_string_value(json_object_get(json_object_get(pkg, "scripts"), "start"));
    const char *main = json_string_value(json_object_get(pkg, "main"));
    const char *file = first_of(t, node_mains, LOOM_ARRAY_SIZE(node_mains));
    char how[160];
    if (o->function) {
        /* the runtime requires the bundle's directory: main, else index.js */
        if (!main && !has_file(t, "index.js"))
            return loom_err_set(err, LOOM_EINVAL,
                                "a Node.js function needs index.js, or a main in package.json");
        if (main && !node_main_found(t, main))
            return loom_err_set(err, LOOM_EINVAL,
                                "package.json: its main \"%.100s\" is not in the source", main);
        snprintf(how, sizeof(how), "function entry %.100s", main ? main : "index.js");
    } else if (web) {
        p->cmd = shell_cmd(web);
        snprintf(how, sizeof(how), "Procfile web: %.100s", web);
    } else if (start) {
        p->cmd = shell_cmd(start);
        snprintf(how, sizeof(how), "scripts.start: %.100s", start);
    } else if (main || file) {
        p->cmd = json_pack("[s,s]", "node", main ? main : file);
        snprintf(how, sizeof(how), "node %.100s", main ? main : file);
    } else {
        return loom_err_set(err, LOOM_EINVAL,
                            "package.json has no scripts.start and no main, and the source has "
                            "no server.js, index.js, app.js or main.js: say how it starts (or "
                            "add a Procfile with a web: line)");
    }
    snprintf(p->detail, sizeof(p->detail), "nodejs: %s; start: %s", what, how);
    return 0;
}

/* ---- Python ------------------------------------------------------------------------------ */

/* Whether requirements.txt names anything (lines that are not blank or
 * comments). */
static bool has_requirements(const char *s)
{
    for (const char *l = s; l && *l; l += strcspn(l, "\n") + (l[strcspn(l, "\n")] != 0)) {
        const char *c = l;
        while (*c == ' ' || *c == '\t')
            c++;
        if (*c && *c != '\n' && *c != '#' && *c != '\r')
            return true;
    }
    return false;
}

static int detect_python(const struct src_tree *t, const struct bp_options *o, const char *web,
                         struct bp_plan *p, struct loom_err *err)
{
    snprintf(p->language, sizeof(p->language), "python");
    snprintf(p->run_stack, sizeof(p->run_stack), "python");
    p->app_layer = true;
    env_add(p, "PYTHONPATH=" PY_DEPS);
    env_add(p, "PATH=" PY_DEPS "/bin:" BASE_PATH);
    const char *req = text(t, "requirements.txt");
    bool pyproject = has_file(t, "pyproject.toml");
    char what[160] = "no dependencies";
    if ((req && has_requirements(req)) || (!req && pyproject)) {
        _cleanup_strbuf_ struct strbuf links = STRBUF_INIT;
        for (size_t d = 0; d < LOOM_ARRAY_SIZE(wheel_dirs); d++) {
            size_t n = strlen(wheel_dirs[d]);
            bool found = false;
            for (size_t i = 0; i < t->n; i++) {
                const char *path = t->e[i].path;
                size_t len = strlen(path);
                if (t->e[i].type != 'f' || strncmp(path, wheel_dirs[d], n) != 0 || path[n] != '/' ||
                    len < 4 || strcmp(path + len - 4, ".whl") != 0)
                    continue;
                json_array_append_new(p->step_inputs, json_string(path));
                found = true;
            }
            if (found)
                strbuf_addf(&links, " --find-links " APP_DIR "/%s", wheel_dirs[d]);
        }
        snprintf(p->build_stack, sizeof(p->build_stack), "python-build");
        snprintf(p->step, sizeof(p->step), "pip install");
        snprintf(p->step_output, sizeof(p->step_output), "%s", PY_DEPS);
        const char *target = req ? "-r " APP_DIR "/requirements.txt" : APP_DIR;
        if (req) {
            json_array_append_new(p->step_inputs, json_string("requirements.txt"));
        } else {
            p->step_all_source = true; /* pip builds the project itself */
        }
        if (asprintf(&p->step_script,
                     "set -e\n"
                     "export HOME=/tmp/home PIP_DISABLE_PIP_VERSION_CHECK=1 "
                     "PIP_NO_CACHE_DIR=1\n"
                     "mkdir -p " PY_DEPS "\n"
                     "python3 -m pip install --no-warn-script-location --target " PY_DEPS
                     "%s%s%s %s %s\n",
                     o->pip_index ? " --index-url " : " --no-index",
                     o->pip_index ? o->pip_index : "", links.buf, req ? "" : "--no-build-isolation",
                     target) < 0)
            abort();
        snprintf(what, sizeof(what), "pip install from %s%s%s",
                 req ? "requirements.txt" : "pyproject.toml", links.len ? ", wheels in" : "",
                 links.len ? links.buf + 13 : "");
    }
    const char *file = first_of(t, py_mains, LOOM_ARRAY_SIZE(py_mains));
    char how[160];
    if (o->function) {
        /* the runtime's entry point */
        const char *entry = has_file(t, "__main__.py") ? "__main__.py"
                            : has_file(t, "main.py")   ? "main.py"
                                                       : NULL;
        if (!entry)
            return loom_err_set(err, LOOM_EINVAL, "a Python function needs __main__.py or main.py");
        snprintf(how, sizeof(how), "function entry %s", entry);
    } else if (web) {
        p->cmd = shell_cmd(web);
        snprintf(how, sizeof(how), "Procfile web: %.100s", web);
    } else if (file) {
        p->cmd = json_pack("[s,s]", "python3", file);
        snprintf(how, sizeof(how), "python3 %s", file);
    } else {
        return loom_err_set(err, LOOM_EINVAL,
                            "a Python source needs app.py, main.py, server.py or wsgi.py, or a "
                            "Procfile with a web: line, to say how it starts");
    }
    snprintf(p->detail, sizeof(p->detail), "python: %s; start: %s", what, how);
    return 0;
}

/* ---- Go ---------------------------------------------------------------------------------- */

static int detect_go(const struct src_tree *t, const struct bp_options *o, const char *web,
                     struct bp_plan *p)
{
    bool vendored = find(t, "vendor/modules.txt") != NULL;
    snprintf(p->language, sizeof(p->language), "go");
    snprintf(p->run_stack, sizeof(p->run_stack), "busybox");
    snprintf(p->build_stack, sizeof(p->build_stack), "go-build");
    snprintf(p->step, sizeof(p->step), "go build");
    snprintf(p->step_output, sizeof(p->step_output), "%s", GO_BIN_DIR);
    p->step_all_source = true;
    p->app_layer = false; /* the program is the binary */
    if (asprintf(&p->step_script,
                 "set -e\n"
                 "export HOME=/tmp/home GOCACHE=/tmp/go-cache GOPATH=/tmp/go GOPROXY=%s%s\n"
                 "mkdir -p " GO_BIN_DIR "\n"
                 "cd " APP_DIR "\n"
                 "go build -trimpath -ldflags=-s -o " GO_BIN " .\n",
                 o->go_proxy ? o->go_proxy : "off", vendored ? " GOFLAGS=-mod=vendor" : "") < 0)
        abort();
    p->cmd = web ? shell_cmd(web) : json_pack("[s]", GO_BIN);
    snprintf(p->detail, sizeof(p->detail), "go: go build%s, on busybox; start: %.100s",
             vendored ? " (vendor/)" : "", web ? web : GO_BIN);
    (void)t;
    return 0;
}

/* ---- static sites, scripts ---------------------------------------------------------------- */

/* The stack a script's first line asks for: busybox for sh, python for a
 * Python or bash script (Debian's), nodejs for node; NULL: not a script. */
static const char *script_stack(const char *first_line)
{
    if (!first_line || strncmp(first_line, "#!", 2) != 0)
        return first_line ? "busybox" : NULL; /* executable, no #!: a shell script */
    if (strstr(first_line, "python"))
        return "python";
    if (strstr(first_line, "node"))
        return "nodejs";
    if (strstr(first_line, "bash"))
        return "python";
    if (strstr(first_line, "sh"))
        return "busybox";
    return NULL;
}

/* The script to run: one of the usual names, else a top-level executable,
 * else a top-level *.sh (only these have their first line in texts). */
static const char *find_script(const struct src_tree *t)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(script_names); i++)
        if (has_file(t, script_names[i]) && text(t, script_names[i]))
            return script_names[i];
    const char *sh = NULL;
    for (size_t i = 0; i < t->n; i++) {
        const struct src_entry *e = &t->e[i];
        if (e->type != 'f' || strchr(e->path, '/') || !text(t, e->path) ||
            strcmp(e->path, "Procfile") == 0)
            continue;
        if (e->mode & 0111)
            return e->path;
        if (!sh)
            sh = e->path;
    }
    return sh;
}

/* 1 when there is nothing to run. */
static int detect_script(const struct src_tree *t, const char *web, struct bp_plan *p,
                         struct loom_err *err)
{
    const char *script = find_script(t);
    if (!script && !web)
        return 1;
    const char *first = script ? text(t, script) : NULL;
    const char *stack = script ? script_stack(first) : "busybox";
    if (!stack)
        return loom_err_set(err, LOOM_EINVAL,
                            "%s starts with \"%.60s\": no stack runs that interpreter (sh, bash, "
                            "python3 and node are known)",
                            script, first);
    snprintf(p->language, sizeof(p->language), "%s", script ? "script" : "procfile");
    snprintf(p->run_stack, sizeof(p->run_stack), "%s", stack);
    p->app_layer = true;
    char path[300];
    snprintf(path, sizeof(path), APP_DIR "/%s", script ? script : "");
    if (web)
        p->cmd = shell_cmd(web);
    else if (find(t, script)->mode & 0111)
        p->cmd = json_pack("[s]", path);
    else
        p->cmd = json_pack("[s,s]", "/bin/sh", path);
    snprintf(p->detail, sizeof(p->detail), "%s on %s; start: %.120s",
             script ? "script" : "Procfile", stack, web ? web : path);
    return 0;
}

int bp_detect(const struct src_tree *t, const struct bp_options *o, struct bp_plan *ret,
              struct loom_err *err)
{
    struct bp_plan p = {.step_inputs = json_array(),
                        .app_exclude = json_array(),
                        .env = json_pack("[s]", "PORT=8080")};
    _cleanup_free_ char *web = NULL;
    int rc;
    if (has_file(t, "Dockerfile")) {
        rc = loom_err_set(err, LOOM_EINVAL,
                          "the source has a Dockerfile: build it with the dockerfile strategy "
                          "(strategy_type dockerfile, loom --strategy dockerfile)");
    } else if (procfile_web(t, &web, err) < 0) {
        rc = -1;
    } else if (o->function && !has_file(t, "package.json") && !has_file(t, "requirements.txt") &&
               !has_file(t, "pyproject.toml")) {
        rc = loom_err_set(err, LOOM_EINVAL,
                          "a function's bundle is built from Node.js (package.json) or Python "
                          "(requirements.txt or pyproject.toml) source, and this source has "
                          "neither");
    } else if (has_file(t, "package.json")) {
        rc = detect_node(t, o, web, &p, err);
    } else if (has_file(t, "requirements.txt") || has_file(t, "pyproject.toml")) {
        rc = detect_python(t, o, web, &p, err);
    } else if (has_file(t, "go.mod")) {
        rc = detect_go(t, o, web, &p);
    } else if (has_file(t, "index.html")) {
        snprintf(p.language, sizeof(p.language), "static");
        snprintf(p.run_stack, sizeof(p.run_stack), "busybox");
        p.app_layer = true;
        p.cmd = shell_cmd(web ? web : "exec httpd -f -v -p \"${PORT:-8080}\" -h " APP_DIR);
        snprintf(p.detail, sizeof(p.detail), "static site: %s",
                 web ? "Procfile web" : "busybox httpd serving /app");
        rc = 0;
    } else if ((rc = detect_script(t, web, &p, err)) > 0) {
        rc = loom_err_set(err, LOOM_EINVAL,
                          "nothing to build: no buildpack detects this source (it needs "
                          "package.json, requirements.txt or pyproject.toml, go.mod, index.html, "
                          "an executable script or a Procfile)");
    }
    if (rc < 0) {
        bp_plan_release(&p);
        return -1;
    }
    *ret = p;
    return 0;
}
