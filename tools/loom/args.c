/* loom: a verb's flags, and the request body members they set. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "json.h"
#include "spec.h"
#include "strbuf.h"
#include "util.h"
#include "cli.h"

int usage_err(const char *msg, const char *arg)
{
    fprintf(stderr, "loom: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\n(see loom --help)\n");
    return EXIT_USAGE;
}

struct flag *find_flag(struct args *a, const char *name)
{
    for (size_t i = 0; i < a->nflags; i++)
        if (strcmp(a->flags[i].name, name) == 0)
            return &a->flags[i];
    return NULL;
}

int parse_args(struct args *a, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strncmp(s, "--", 2) != 0 || s[2] == '\0') {
            if (a->npos >= 8)
                return usage_err("too many arguments at \"%s\"", s);
            a->pos[a->npos++] = s;
            continue;
        }
        if (strcmp(s, "--help") == 0) {
            printf("flags:\n");
            print_flags(stdout, a);
            exit(EXIT_OK);
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

void args_release(struct args *a)
{
    for (size_t i = 0; i < a->nflags; i++)
        if (a->flags[i].values)
            json_decref(a->flags[i].values);
    if (a->owned)
        free(a->flags);
    a->flags = NULL;
    a->nflags = 0;
}

const char *fval(struct args *a, const char *name)
{
    struct flag *f = find_flag(a, name);
    return f && f->set ? f->value : NULL;
}

bool fset(struct args *a, const char *name)
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

/* The name: --name or the one positional argument. */
int take_name(struct args *a, const char *what, const char **ret)
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

/* --env NAME=VALUE, --env-from-secret and --env-from-configmap, in that order. */
static int put_env(struct args *a, json_t *body, const struct loom_field *f)
{
    struct flag *env = find_flag(a, "env");
    struct flag *esec = find_flag(a, "env-from-secret");
    struct flag *ecm = find_flag(a, "env-from-configmap");
    if (!env->values && !esec->values && !ecm->values)
        return 0;
    _cleanup_json_ json_t *arr = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(env->values, i, v)
    {
        const char *s = json_string_value(v);
        const char *eq = strchr(s, '=');
        if (!eq || eq == s)
            return usage_err("--env \"%s\" is not NAME=VALUE", s);
        json_array_append_new(arr, json_pack("{s:s,s:s%,s:s}", "type", "literal", "name", s,
                                             (size_t)(eq - s), "value", eq + 1));
    }
    json_array_foreach(esec->values, i, v)
    {
        if (put_env_ref(arr, json_string_value(v), "secret", "--env-from-secret"))
            return EXIT_USAGE;
    }
    json_array_foreach(ecm->values, i, v)
    {
        if (put_env_ref(arr, json_string_value(v), "config_map", "--env-from-configmap"))
            return EXIT_USAGE;
    }
    json_object_set(body, f->name, arr);
    return 0;
}

static int put_volume_mounts(struct args *a, json_t *body, const struct loom_field *f)
{
    struct flag *msec = find_flag(a, "mount-secret"), *mcm = find_flag(a, "mount-configmap");
    if (!msec->values && !mcm->values)
        return 0;
    _cleanup_json_ json_t *arr = json_array();
    if (put_mounts(arr, msec->values, "secret", "--mount-secret") ||
        put_mounts(arr, mcm->values, "config_map", "--mount-configmap"))
        return EXIT_USAGE;
    json_object_set(body, f->name, arr);
    return 0;
}

/* --node-selector LABEL=VALUE (repeatable) */
static int put_selector(struct args *a, json_t *body, const struct loom_field *f)
{
    struct flag *sel = find_flag(a, f->flag);
    if (!sel->values)
        return 0;
    _cleanup_json_ json_t *o = json_object();
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
    json_object_set(body, f->name, o);
    return 0;
}

/* --probe-live / --probe-ready "type=http,path=/healthz,port=8080,initial_delay=1,
 * interval=10,timeout=1,failure_threshold=3" (Code Engine's KEY=VALUE list;
 * the keys are the spec's, "initial-delay" and "failure-threshold" also work). */
static int put_probe(struct args *a, json_t *body, const struct loom_field *f)
{
    const char *v = fval(a, f->flag);
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
    json_object_set(body, f->name, o);
    return 0;
}

/* --command X (repeatable) or --cmd 'SHELL LINE' */
static int put_commands(struct args *a, json_t *body, const struct loom_field *f)
{
    struct flag *command = find_flag(a, f->flag);
    const char *cmd = fval(a, "cmd");
    if (cmd && command->values)
        return usage_err("%s", "--cmd and --command cannot be combined");
    if (cmd)
        json_object_set_new(body, f->name, json_pack("[s,s,s]", "/bin/sh", "-c", cmd));
    else if (command->values)
        json_object_set(body, f->name, command->values);
    return 0;
}

/* --inline-code FILE (one file), --code-bundle DIR|FILE.tgz (a bundle), or
 * --code-reference as the API takes it: a data: URL in the body. */
static int put_code(struct args *a, json_t *body, const struct loom_field *f)
{
    const char *inline_file = fval(a, "inline-code"), *bundle = fval(a, "code-bundle");
    if ((inline_file != NULL) + (bundle != NULL) + (fval(a, f->flag) != NULL) > 1)
        return usage_err("%s", "give one of --inline-code, --code-bundle and --code-reference");
    if (fval(a, f->flag)) {
        json_object_set_new(body, f->name, json_string(fval(a, f->flag)));
        return 0;
    }
    if (!inline_file && !bundle)
        return 0;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    struct stat st;
    int rc;
    if (bundle && stat(bundle, &st) == 0 && S_ISDIR(st.st_mode)) {
        struct strbuf sb = STRBUF_INIT;
        rc = pack_dir(bundle, &sb, &err);
        data = strbuf_detach(&sb, &len);
    } else {
        rc = loom_read_file(inline_file ? inline_file : bundle, &data, &len, &err);
    }
    if (rc < 0) {
        fprintf(stderr, "loom: %s\n", err.msg);
        return EXIT_USAGE;
    }
    _cleanup_free_ char *b64 = loom_base64_encode(data, len);
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "data:%s;base64,%s", inline_file ? "text/plain" : "application/gzip", b64) <
        0)
        abort();
    json_object_set_new(body, f->name, json_string(url));
    return 0;
}

/* How the CLI writes the fields whose flags are not one plain value, and
 * the other flags that set them. */
static const struct builder {
    const char *field;
    int (*put)(struct args *a, json_t *body, const struct loom_field *f);
    bool repeat;
    struct flag extra[3];
} builders[] = {
    {"run_commands",
     put_commands,
     true,
     {{.name = "cmd",
       .has_value = true,
       .metavar = "TEXT",
       .help = "the command as one shell "
               "line: /bin/sh -c TEXT"}}},
    {"run_env_variables",
     put_env,
     true,
     {{.name = "env-from-secret",
       .has_value = true,
       .repeat = true,
       .metavar = "S[:KEY[=ENV],...]",
       .help = "variables from a secret: every key, or the keys named (as ENV)"},
      {.name = "env-from-configmap",
       .has_value = true,
       .repeat = true,
       .metavar = "C[:KEY[=ENV],...]",
       .help = "variables from a config map, as --env-from-secret"}}},
    {"run_volume_mounts",
     put_volume_mounts,
     true,
     {{.name = "mount-configmap",
       .has_value = true,
       .repeat = true,
       .metavar = "/DIR=C",
       .help = "a config map's keys as read-only files in DIR"}}},
    {"node_selector", put_selector, true, {{0}}},
    {"code_reference",
     put_code,
     false,
     {{.name = "inline-code",
       .has_value = true,
       .metavar = "FILE",
       .help = "the function's code: one file"},
      {.name = "code-bundle",
       .has_value = true,
       .metavar = "DIR|TGZ",
       .help = "the function's code: a directory (packed as a tar.gz) or a tar.gz"}}},
    {"probe_readiness", put_probe, false, {{0}}},
    {"probe_liveness", put_probe, false, {{0}}},
};

static const struct builder *builder_of(const struct loom_field *f)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(builders); i++)
        if (strcmp(builders[i].field, f->name) == 0)
            return &builders[i];
    return NULL;
}

int spec_args(struct args *a, enum loom_kind k, const struct flag *own, size_t nown)
{
    size_t n = 0, cap = loom_spec_table_len * 3 + nown;
    struct flag *flags = calloc(cap, sizeof(*flags));
    if (!flags)
        abort();
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (!loom_field_in(f, k) || !f->flag)
            continue;
        const struct builder *b = builder_of(f);
        flags[n++] = (struct flag){
            .name = f->flag,
            .has_value = f->type != LOOM_FT_BOOL,
            .repeat = f->type == LOOM_FT_STRINGS || (b && b->repeat),
            .metavar = f->metavar,
            .help = f->help,
        };
        for (size_t x = 0; b && x < LOOM_ARRAY_SIZE(b->extra) && b->extra[x].name; x++)
            flags[n++] = b->extra[x];
    }
    for (size_t i = 0; i < nown; i++)
        flags[n++] = own[i];
    *a = (struct args){.flags = flags, .nflags = n, .owned = true};
    return 0;
}

int put_spec_fields(struct args *a, enum loom_kind k, json_t *body)
{
    for (size_t i = 0; i < loom_spec_table_len; i++) {
        const struct loom_field *f = &loom_spec_table[i];
        if (!loom_field_in(f, k) || !f->flag)
            continue;
        const struct builder *b = builder_of(f);
        struct flag *fl = find_flag(a, f->flag);
        int rc = 0;
        if (b)
            rc = b->put(a, body, f);
        else if (f->type == LOOM_FT_INT)
            rc = put_int(a, f->flag, body, f->name);
        else if (f->type == LOOM_FT_BOOL && fl->set)
            json_object_set_new(body, f->name, json_true());
        else if (f->type == LOOM_FT_STRINGS && fl->values)
            json_object_set(body, f->name, fl->values);
        else if (f->type != LOOM_FT_STRINGS && fl->set)
            json_object_set_new(body, f->name, json_string(fl->value));
        if (rc)
            return rc;
    }
    return 0;
}

void print_flags(FILE *out, const struct args *a)
{
    for (size_t i = 0; i < a->nflags; i++) {
        const struct flag *f = &a->flags[i];
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s%s", f->name, f->has_value ? " " : "",
                 f->has_value ? (f->metavar ? f->metavar : "VALUE") : "", f->repeat ? " ..." : "");
        fprintf(out, "  %-34s %s\n", left, f->help ? f->help : "");
    }
}
