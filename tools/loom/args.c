/* loom: a verb's flags, and the request body members they set. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
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
int put_int(struct args *a, const char *flag, json_t *body, const char *key)
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

int put_ints(struct args *a, json_t *body, const struct int_flag *t, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = put_int(a, t[i].flag, body, t[i].key);
    return rc;
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

/* The run fields apps and job runs share. */
int put_run_fields(struct args *a, json_t *body)
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
