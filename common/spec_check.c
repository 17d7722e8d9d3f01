/* The member validators of the spec model: each message names the field,
 * down to the item of a list (`run_env_variables[1].key`), so that a user
 * can fix the request without reading the code. */
#include <ctype.h>
#include <string.h>

#include "arrayspec.h"
#include "cleanup.h"
#include "json.h"
#include "quantity.h"
#include "spec_int.h"
#include "util.h"

#define MAX_ENV_ITEMS 100
#define MAX_ENV_VALUE 32768
#define MAX_MOUNTS 20
#define MAX_SELECTOR 32

#define DNS_LABEL_RULE                                                                             \
    "1 to 63 lowercase letters, digits or '-', starting with a letter and not ending with '-'"

static const char *out_string(json_t *out, const struct loom_field *f)
{
    return json_string_value(json_object_get(out, f->name));
}

int loom_spec_nested_err(struct loom_err *err, const char *prefix, const struct loom_err *sub)
{
    static const char *const heads[] = {"field \"", "unknown field \""};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(heads); i++) {
        size_t n = strlen(heads[i]);
        if (strncmp(sub->msg, heads[i], n) == 0)
            return loom_err_set(err, sub->code, "%.*s%s.%s", (int)n, sub->msg, prefix,
                                sub->msg + n);
    }
    return loom_err_set(err, sub->code, "field \"%s\": %s", prefix, sub->msg);
}

/* host[:port]/repo[:tag] or ...@sha256:<64 hex>: refuse what no registry
 * would accept so that the error comes now, not from the node. */
int loom_spec_check_image(json_t *body, json_t *out, const struct loom_field *f,
                          struct loom_err *err)
{
    (void)body;
    const char *s = out_string(out, f);
    size_t n = strlen(s);
    if (n == 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must not be empty", f->name);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || strchr("._-/:@[]", c)))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s\": character '%c' is not allowed in an image "
                                "reference",
                                f->name, isprint(c) ? c : '?');
    }
    if (s[0] == '/' || s[n - 1] == '/' || strstr(s, "//"))
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": \"%s\" has an empty path component",
                            f->name, s);
    const char *at = strchr(s, '@');
    if (at) {
        if (strncmp(at + 1, "sha256:", 7) != 0 || strlen(at + 8) != 64)
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": a digest must be sha256:<64 hex>",
                                f->name);
        for (const char *p = at + 8; *p; p++)
            if (!isxdigit((unsigned char)*p) || isupper((unsigned char)*p))
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"%s\": a digest must be sha256:<64 lowercase hex>",
                                    f->name);
    }
    return 0;
}

/* A member naming a secret or config map: a DNS label. The thing named need
 * not exist yet (as in Code Engine): the scheduler fails an instance whose
 * reference is missing, naming it. path: the enclosing item, or NULL. */
static int check_reference(json_t *obj, const char *field, const char *path, bool required,
                           const char **ret, struct loom_err *err)
{
    struct loom_err sub = LOOM_ERR_INIT;
    const char *s = NULL;
    if (loom_json_get_string(obj, field, required, 63, &s, &sub) < 0)
        return path ? loom_spec_nested_err(err, path, &sub)
                    : loom_err_set(err, sub.code, "%s", sub.msg);
    if (s && !loom_is_dns_label(s))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s%s%s\": \"%s\" is not a name (" DNS_LABEL_RULE ")",
                            path ? path : "", path ? "." : "", field, s);
    *ret = s;
    return 0;
}

int loom_spec_check_reference(json_t *body, json_t *out, const struct loom_field *f,
                              struct loom_err *err)
{
    (void)body;
    const char *s = NULL;
    return check_reference(out, f->name, NULL, false, &s, err);
}

int loom_spec_check_gpu_model(json_t *body, json_t *out, const struct loom_field *f,
                              struct loom_err *err)
{
    (void)body;
    for (const char *p = out_string(out, f); *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("._-", *p)))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s\": only letters, digits, '.', '_' and '-' are "
                                "allowed",
                                f->name);
    return 0;
}

/* An array spec, kept in its canonical text. */
int loom_spec_check_array(json_t *body, json_t *out, const struct loom_field *f,
                          struct loom_err *err)
{
    (void)body;
    struct loom_arrayspec as = {0};
    if (loom_arrayspec_parse(out_string(out, f), LOOM_ARRAY_MAX_COUNT, &as, err) < 0)
        return loom_err_wrap(err, "field \"%s\"", f->name);
    char *canon = loom_arrayspec_format(&as);
    loom_arrayspec_release(&as);
    if (!canon)
        return loom_err_set(err, LOOM_EINTERNAL, "could not format the array spec");
    json_object_set_new(out, f->name, json_string(canon));
    free(canon);
    return 0;
}

/* ---- cpu and memory -------------------------------------------------------- */

int loom_spec_check_choice(json_t *body, json_t *out, const struct loom_field *f,
                           struct loom_err *err)
{
    (void)body;
    const char *s = out_string(out, f);
    char list[160] = "";
    for (const char *const *c = f->choices; *c; c++) {
        if (strcmp(s, *c) == 0)
            return 0;
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 c == f->choices ? "" : ", ", *c);
    }
    return loom_err_set(err, LOOM_EINVAL, "field \"%s\": \"%s\" is not one of the vCPU sizes %s",
                        f->name, s, list);
}

/* The number of a memory text in megabytes under both readings of its unit
 * (its "i" ignored): decimal, G = 1000M ("4G", "4Gi": 4000), and binary,
 * G = 1024M ("4G", "4Gi": 4096). -1: not a memory text. */
static void memory_readings(const char *text, int64_t *ret_dec, int64_t *ret_bin)
{
    char t[32];
    size_t n = strlen(text);
    *ret_dec = *ret_bin = -1;
    if (n == 0 || n + 2 > sizeof(t))
        return;
    memcpy(t, text, n + 1);
    if (t[n - 1] == 'i')
        t[--n] = '\0';
    int64_t b;
    if (loom_size_parse(t, LOOM_SIZE_MEMORY, &b, NULL) == 0 && b % 1000 == 0)
        *ret_dec = b / 1000; /* megabytes times 1000 */
    t[n] = 'i';
    t[n + 1] = '\0';
    if (loom_size_parse(t, LOOM_SIZE_MEMORY, &b, NULL) == 0 && b % 1024 == 0)
        *ret_bin = b / 1024 * 1000 / 1024; /* mebibytes times 1000 */
}

/* Whether millis vCPU with ratio GB per vCPU is the memory text: equal in
 * decimal units (0.25G = 250M) or in binary ones (256M or 256Mi = 0.25Gi). */
static bool combo_matches(const struct loom_shapes *sh, int64_t millis, int ratio, const char *mem)
{
    int64_t gb_milli = millis * ratio, dec, bin; /* GB times 1000 */
    if (gb_milli > sh->max_gb * 1000)
        return false;
    memory_readings(mem, &dec, &bin);
    /* decimal: MB*1000 = GB*1000*1000; binary: MiB*1000 = GiB*1000*1024 */
    return dec == gb_milli * 1000 || bin == gb_milli * 1024;
}

static bool combo_ok(const struct loom_shapes *sh, int64_t millis, const char *mem)
{
    for (size_t r = 0; r < sh->nratios; r++)
        if (combo_matches(sh, millis, sh->ratios[r], mem))
            return true;
    return false;
}

/* "0.25G" for 250 MB: memory for a cpu and ratio. */
static void format_gb(int64_t mb, char *out, size_t outsz)
{
    if (mb % 1000 == 0)
        snprintf(out, outsz, "%lldG", (long long)(mb / 1000));
    else
        snprintf(out, outsz, "%lldM", (long long)mb);
}

/* "2G, 4G or 8G": the memories that go with millis, in ascending ratio. */
static void memories_for(const struct loom_shapes *sh, int64_t millis, char *out, size_t outsz)
{
    int sorted[8];
    size_t n = 0;
    for (size_t r = 0; r < sh->nratios && n < LOOM_ARRAY_SIZE(sorted); r++)
        if (millis * sh->ratios[r] <= sh->max_gb * 1000)
            sorted[n++] = sh->ratios[r];
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            int t = sorted[j];
            sorted[j] = sorted[j - 1];
            sorted[j - 1] = t;
        }
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        char gb[24];
        format_gb(millis * sorted[i], gb, sizeof(gb));
        snprintf(out + strlen(out), outsz - strlen(out), "%s%s",
                 i == 0       ? ""
                 : i + 1 == n ? " or "
                              : ", ",
                 gb);
    }
}

int loom_spec_check_resources(json_t *out, const struct loom_shapes *sh, struct loom_err *err)
{
    const char *cpu = json_string_value(json_object_get(out, "scale_cpu_limit"));
    const char *mem = json_string_value(json_object_get(out, "scale_memory_limit"));
    char buf[32];
    if (!cpu && !mem) {
        json_object_set_new(out, "scale_cpu_limit", json_string(sh->default_cpu));
        json_object_set_new(out, "scale_memory_limit", json_string(sh->default_memory));
        return 0;
    }
    int64_t millis = 0, bytes = 0;
    if (cpu && loom_cpu_parse(cpu, &millis, err) < 0)
        return loom_err_wrap(err, "field \"scale_cpu_limit\"");
    if (mem && loom_size_parse(mem, LOOM_SIZE_MEMORY, &bytes, err) < 0)
        return loom_err_wrap(err, "field \"scale_memory_limit\"");
    if (!mem) {
        format_gb(millis * sh->ratios[0], buf, sizeof(buf));
        json_object_set_new(out, "scale_memory_limit", json_string(buf));
        return 0;
    }
    if (!cpu) {
        for (size_t r = 0; r < sh->nratios; r++)
            for (size_t c = 0; c < sh->ncpus; c++)
                if (combo_matches(sh, sh->cpus[c], sh->ratios[r], mem)) {
                    loom_cpu_format(sh->cpus[c], buf, sizeof(buf));
                    json_object_set_new(out, "scale_cpu_limit", json_string(buf));
                    return 0;
                }
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" is not %s GB per vCPU for any "
                            "vCPU size (try %s)",
                            mem, sh->ratio_text, sh->memory_examples);
    }
    if (!combo_ok(sh, millis, mem)) {
        char list[96];
        memories_for(sh, millis, list, sizeof(list));
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" with scale_cpu_limit \"%s\" is "
                            "not a valid combination (memory must be %s)",
                            mem, cpu, list);
    }
    return 0;
}

/* ---- environment ------------------------------------------------------------ */

static bool is_env_name(const char *s)
{
    if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_'))
            return false;
    return true;
}

bool loom_spec_is_key(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

/* One run_env_variables item, checked and copied into *ret. */
static int check_env_item(json_t *v, size_t i, json_t **ret, struct loom_err *err)
{
    static const char *const literal_fields[] = {"type", "name", "value", NULL};
    static const char *const full_fields[] = {"type", "reference", "prefix", NULL};
    static const char *const key_fields[] = {"type", "reference", "key", "name", NULL};
    char path[48];
    snprintf(path, sizeof(path), "run_env_variables[%zu]", i);
    struct loom_err sub = LOOM_ERR_INIT;
    if (!json_is_object(v))
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be an object", path);
    const char *type = "literal";
    if (loom_json_get_string(v, "type", false, 32, &type, &sub) < 0)
        return loom_spec_nested_err(err, path, &sub);
    bool literal = strcmp(type, "literal") == 0;
    bool full = strcmp(type, "secret_full_reference") == 0 ||
                strcmp(type, "config_map_full_reference") == 0;
    bool key =
        strcmp(type, "secret_key_reference") == 0 || strcmp(type, "config_map_key_reference") == 0;
    if (!literal && !full && !key)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s.type\": \"%s\" is not literal, secret_full_reference, "
                            "secret_key_reference, config_map_full_reference or "
                            "config_map_key_reference",
                            path, type);
    if (loom_json_check_fields(v,
                               literal ? literal_fields
                               : full  ? full_fields
                                       : key_fields,
                               &sub) < 0)
        return loom_spec_nested_err(err, path, &sub);
    _cleanup_json_ json_t *out = json_pack("{s:s}", "type", type);
    const char *name = NULL, *value = NULL, *ref = NULL, *prefix = NULL, *k = NULL;
    if (literal || key) {
        if (loom_json_get_string(v, "name", true, 256, &name, &sub) < 0)
            return loom_spec_nested_err(err, path, &sub);
        if (!is_env_name(name))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.name\": \"%.64s\" is not a variable name "
                                "([A-Za-z_][A-Za-z0-9_]*)",
                                path, name);
        json_object_set_new(out, "name", json_string(name));
    }
    if (literal) {
        if (loom_json_get_string(v, "value", true, MAX_ENV_VALUE, &value, &sub) < 0)
            return loom_spec_nested_err(err, path, &sub);
        json_object_set_new(out, "value", json_string(value));
        *ret = TAKE_PTR(out);
        return 0;
    }
    if (check_reference(v, "reference", path, true, &ref, err) < 0)
        return -1;
    json_object_set_new(out, "reference", json_string(ref));
    if (full) {
        if (loom_json_get_string(v, "prefix", false, 64, &prefix, &sub) < 0)
            return loom_spec_nested_err(err, path, &sub);
        if (prefix && *prefix && !is_env_name(prefix))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.prefix\": \"%s\" cannot start a variable name "
                                "([A-Za-z_][A-Za-z0-9_]*)",
                                path, prefix);
        if (prefix)
            json_object_set_new(out, "prefix", json_string(prefix));
    } else {
        if (loom_json_get_string(v, "key", true, 253, &k, &sub) < 0)
            return loom_spec_nested_err(err, path, &sub);
        if (!loom_spec_is_key(k))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.key\": \"%.64s\" is not a key (1 to 253 of "
                                "[-._a-zA-Z0-9])",
                                path, k);
        json_object_set_new(out, "key", json_string(k));
    }
    *ret = TAKE_PTR(out);
    return 0;
}

int loom_spec_check_env(json_t *body, json_t *out_spec, const struct loom_field *f,
                        struct loom_err *err)
{
    json_t *arr = json_object_get(body, f->name);
    if (!json_is_array(arr))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be an array of "
                            "{\"type\":\"literal\",\"name\":N,\"value\":V} or references",
                            f->name);
    if (json_array_size(arr) > MAX_ENV_ITEMS)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": at most %d variables are allowed",
                            f->name, MAX_ENV_ITEMS);
    _cleanup_json_ json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        json_t *item;
        if (check_env_item(v, i, &item, err) < 0)
            return -1;
        /* a name set twice is a mistake, not a rule about which one wins */
        const char *name = json_string_value(json_object_get(item, "name"));
        size_t j;
        json_t *prev;
        json_array_foreach(out, j, prev)
        {
            const char *pn = json_string_value(json_object_get(prev, "name"));
            if (name && pn && strcmp(name, pn) == 0) {
                loom_err_set(err, LOOM_EINVAL,
                             "field \"%s[%zu].name\": \"%s\" is already set by %s[%zu]", f->name, i,
                             name, f->name, j);
                json_decref(item);
                return -1;
            }
        }
        json_array_append_new(out, item);
    }
    json_object_set_new(out_spec, f->name, TAKE_PTR(out));
    return 0;
}

/* ---- mounts ------------------------------------------------------------------ */

/* An absolute, normalized directory that is not the root or a kernel file
 * system: "/etc/conf", not "/a/../b", "/a/" or "/proc/x". */
static const char *mount_path_problem(const char *s)
{
    if (s[0] != '/')
        return "must be an absolute path";
    if (strcmp(s, "/") == 0)
        return "cannot be the root";
    if (s[strlen(s) - 1] == '/')
        return "must not end with '/'";
    for (const char *p = s; *p; p++)
        if (!isprint((unsigned char)*p) || *p == ' ' || *p == ':' || *p == ',')
            return "has a character that is not allowed";
    for (const char *p = s; *p;) {
        const char *q = strchr(p + 1, '/');
        size_t n = q ? (size_t)(q - p - 1) : strlen(p + 1);
        if (n == 0 || (n == 1 && p[1] == '.') || (n == 2 && p[1] == '.' && p[2] == '.'))
            return "must not have empty, \".\" or \"..\" components";
        if (!q)
            break;
        p = q;
    }
    static const char *const reserved[] = {"/proc", "/sys", "/dev"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(reserved); i++) {
        size_t n = strlen(reserved[i]);
        if (strncmp(s, reserved[i], n) == 0 && (s[n] == '\0' || s[n] == '/'))
            return "is under /proc, /sys or /dev";
    }
    return NULL;
}

int loom_spec_check_mounts(json_t *body, json_t *out_spec, const struct loom_field *f,
                           struct loom_err *err)
{
    json_t *arr = json_object_get(body, f->name);
    if (!json_is_array(arr))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be an array of "
                            "{\"type\":\"secret\"|\"config_map\",\"reference\":NAME,"
                            "\"mount_path\":\"/dir\"}",
                            f->name);
    if (json_array_size(arr) > MAX_MOUNTS)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": at most %d mounts are allowed",
                            f->name, MAX_MOUNTS);
    static const char *const fields[] = {"type", "reference", "mount_path", "name", NULL};
    _cleanup_json_ json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        char path[48];
        snprintf(path, sizeof(path), "%s[%zu]", f->name, i);
        struct loom_err sub = LOOM_ERR_INIT;
        if (!json_is_object(v))
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be an object", path);
        const char *type = NULL, *ref = NULL, *mp = NULL, *name = NULL;
        if (loom_json_check_fields(v, fields, &sub) < 0 ||
            loom_json_get_string(v, "type", true, 32, &type, &sub) < 0 ||
            loom_json_get_string(v, "mount_path", true, 256, &mp, &sub) < 0 ||
            loom_json_get_string(v, "name", false, 63, &name, &sub) < 0)
            return loom_spec_nested_err(err, path, &sub);
        if (strcmp(type, "secret") != 0 && strcmp(type, "config_map") != 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.type\": must be \"secret\" or \"config_map\", not "
                                "\"%.32s\"",
                                path, type);
        if (check_reference(v, "reference", path, true, &ref, err) < 0)
            return -1;
        const char *why = mount_path_problem(mp);
        if (why)
            return loom_err_set(err, LOOM_EINVAL, "field \"%s.mount_path\": \"%.256s\" %s", path,
                                mp, why);
        if (name && !loom_is_dns_label(name))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.name\": \"%s\" is not a name (" DNS_LABEL_RULE ")",
                                path, name);
        size_t j;
        json_t *prev;
        json_array_foreach(out, j, prev)
        {
            if (strcmp(json_string_value(json_object_get(prev, "mount_path")), mp) == 0)
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"%s.mount_path\": \"%s\" is already mounted by "
                                    "%s[%zu]",
                                    path, mp, f->name, j);
        }
        json_t *m = json_pack("{s:s,s:s,s:s}", "type", type, "reference", ref, "mount_path", mp);
        if (name)
            json_object_set_new(m, "name", json_string(name));
        json_array_append_new(out, m);
    }
    json_object_set_new(out_spec, f->name, TAKE_PTR(out));
    return 0;
}

/* ---- node selector ------------------------------------------------------------- */

int loom_spec_check_selector(json_t *body, json_t *out, const struct loom_field *f,
                             struct loom_err *err)
{
    json_t *sel = json_object_get(body, f->name);
    if (!json_is_object(sel))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be an object of label: value strings", f->name);
    if (json_object_size(sel) > MAX_SELECTOR)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": at most %d labels", f->name,
                            MAX_SELECTOR);
    const char *k;
    json_t *v;
    json_object_foreach(sel, k, v)
    {
        /* labels as Kubernetes writes them: [prefix/]name, values 0-63 chars */
        size_t n = strlen(k);
        bool ok =
            n > 0 && n <= 253 && isalnum((unsigned char)k[0]) && isalnum((unsigned char)k[n - 1]);
        for (const char *p = k; ok && *p; p++)
            ok = isalnum((unsigned char)*p) || strchr("-_./", *p);
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s\": label \"%.64s\" must be 1 to 253 of "
                                "[-._/a-zA-Z0-9], starting and ending with a letter or digit",
                                f->name, k);
        if (!json_is_string(v))
            return loom_err_set(err, LOOM_EINVAL, "field \"%s.%s\": must be a string", f->name, k);
        const char *val = json_string_value(v);
        ok = strlen(val) <= 63 && json_string_length(v) == strlen(val);
        for (const char *p = val; ok && *p; p++)
            ok = isalnum((unsigned char)*p) || strchr("-_.", *p);
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.%s\": the value must be 0 to 63 of [-._a-zA-Z0-9]",
                                f->name, k);
    }
    json_object_set_new(out, f->name, json_deep_copy(sel));
    return 0;
}

/* ---- probes -------------------------------------------------------------------- */

/* A probe's members, its own small field table: name, range, default. */
static const struct probe_member {
    const char *name;
    int64_t min, max, def;
    size_t offset;
} probe_members[] = {
    {"port", 1, 65535, 0, offsetof(struct loom_probe, port)},
    {"initial_delay", 0, 3600, 0, offsetof(struct loom_probe, initial_delay)},
    {"interval", 1, 3600, 10, offsetof(struct loom_probe, interval)},
    {"timeout", 1, 3600, 1, offsetof(struct loom_probe, timeout)},
    {"failure_threshold", 1, 10, 3, offsetof(struct loom_probe, failure_threshold)},
};

/* probe_readiness / probe_liveness: {"type":"tcp"|"http","path":"/p",
 * "port":N,"initial_delay":s,"interval":s,"timeout":s,"failure_threshold":n};
 * port defaults to image_port (left out), path to "/" for http. */
int loom_spec_check_probe(json_t *body, json_t *out, const struct loom_field *f,
                          struct loom_err *err)
{
    static const char *const fields[] = {
        "type", "path", "port", "initial_delay", "interval", "timeout", "failure_threshold", NULL};
    json_t *p = json_object_get(body, f->name);
    if (!json_is_object(p))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be an object such as {\"type\":\"http\","
                            "\"path\":\"/healthz\"}",
                            f->name);
    struct loom_err sub = LOOM_ERR_INIT;
    if (loom_json_check_fields(p, fields, &sub) < 0)
        return loom_spec_nested_err(err, f->name, &sub);
    const char *type = "tcp", *path = NULL;
    if (loom_json_get_string(p, "type", false, 32, &type, &sub) < 0)
        return loom_spec_nested_err(err, f->name, &sub);
    if (strcmp(type, "tcp") != 0 && strcmp(type, "http") != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s.type\": must be \"tcp\" or \"http\", not \"%.32s\"",
                            f->name, type);
    _cleanup_json_ json_t *o = json_pack("{s:s}", "type", type);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(probe_members); i++) {
        const struct probe_member *m = &probe_members[i];
        int64_t v = INT64_MIN;
        if (loom_json_get_int(p, m->name, false, m->min, m->max, &v, &sub) < 0)
            return loom_spec_nested_err(err, f->name, &sub);
        if (v == INT64_MIN && m->def == 0 && m->min > 0)
            continue; /* port: left out, the app's */
        json_object_set_new(o, m->name, json_integer(v == INT64_MIN ? m->def : v));
    }
    bool http = strcmp(type, "http") == 0;
    if (loom_json_get_string(p, "path", false, 256, &path, &sub) < 0)
        return loom_spec_nested_err(err, f->name, &sub);
    if (path && !http)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s.path\": only an http probe has a path",
                            f->name);
    if (path) {
        bool ok = path[0] == '/';
        for (const char *c = path; ok && *c; c++)
            ok = isgraph((unsigned char)*c);
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.path\": must start with '/' and have no spaces or "
                                "control characters",
                                f->name);
    }
    if (http)
        json_object_set_new(o, "path", json_string(path ? path : "/"));
    json_object_set_new(out, f->name, TAKE_PTR(o));
    return 0;
}

int loom_spec_decode_probe(json_t *v, void *dst, struct loom_err *err)
{
    struct loom_probe *p = dst;
    *p = (struct loom_probe){0};
    if (!v)
        return 0;
    if (!json_is_object(v))
        return loom_err_set(err, LOOM_EINVAL, "must be an object");
    const char *type = json_string_value(json_object_get(v, "type"));
    p->set = true;
    p->http = type && strcmp(type, "http") == 0;
    const char *path = json_string_value(json_object_get(v, "path"));
    p->path = p->http ? (path ? path : "/") : "";
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(probe_members); i++) {
        const struct probe_member *m = &probe_members[i];
        int64_t x = m->def;
        if (loom_json_get_int(v, m->name, false, m->min, m->max, &x, err) < 0)
            return -1;
        *(int64_t *)((char *)p + m->offset) = x;
    }
    return 0;
}

/* ---- functions ------------------------------------------------------------------ */

int loom_spec_check_runtime(json_t *body, json_t *out, const struct loom_field *f,
                            struct loom_err *err)
{
    (void)body;
    const char *s = out_string(out, f);
    bool ok = islower((unsigned char)s[0]);
    for (const char *p = s; ok && *p; p++)
        ok = islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-' || *p == '.';
    if (!ok)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": \"%.64s\" is not a runtime name such as python-3.11 "
                            "(see GET /v1/function_runtimes)",
                            f->name, s);
    return 0;
}

int loom_spec_check_identifier(json_t *body, json_t *out, const struct loom_field *f,
                               struct loom_err *err)
{
    (void)body;
    const char *s = out_string(out, f);
    bool ok = isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == '$';
    for (const char *p = s; ok && *p; p++)
        ok = isalnum((unsigned char)*p) || *p == '_' || *p == '$' || *p == '.';
    if (!ok)
        return loom_err_set(
            err, LOOM_EINVAL,
            "field \"%s\": \"%.64s\" is not a function name ([A-Za-z_$][A-Za-z0-9_$.]*)", f->name,
            s);
    return 0;
}

static bool is_stored_code(const char *s)
{
    if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
        return false;
    for (const char *p = s + 7; *p; p++)
        if (!isxdigit((unsigned char)*p) || isupper((unsigned char)*p))
            return false;
    return true;
}

static int hexdigit(char c)
{
    return isdigit((unsigned char)c) ? c - '0' : tolower((unsigned char)c) - 'a' + 10;
}

int loom_spec_code_decode(const char *ref, uint8_t **ret, size_t *ret_len, bool *ret_binary,
                          struct loom_err *err)
{
    static const char *const bundles[] = {"application/gzip", "application/x-gzip",
                                          "application/tar+gzip", "application/x-tar+gzip"};
    if (strncmp(ref, "data:", 5) != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "is not a data: URL (data:text/plain;base64,... for one file, "
                            "data:application/gzip;base64,... for a tar.gz bundle)");
    const char *head = ref + 5, *comma = strchr(head, ',');
    if (!comma)
        return loom_err_set(err, LOOM_EINVAL, "is a data: URL without its ','");
    size_t hlen = (size_t)(comma - head);
    bool base64 = hlen >= 7 && strncmp(comma - 7, ";base64", 7) == 0;
    size_t tlen = strcspn(head, ";,");
    bool binary = false, text = tlen == 0 || (tlen == 10 && strncmp(head, "text/plain", 10) == 0);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bundles); i++)
        if (strlen(bundles[i]) == tlen && strncmp(head, bundles[i], tlen) == 0)
            binary = true;
    if (!text && !binary)
        return loom_err_set(err, LOOM_EINVAL,
                            "has the media type \"%.*s\": one file is text/plain, a bundle "
                            "application/gzip",
                            (int)(tlen > 64 ? 64 : tlen), head);
    if (binary && !base64)
        return loom_err_set(err, LOOM_EINVAL, "is a bundle that is not ;base64");
    const char *data = comma + 1;
    size_t dlen = strlen(data);
    uint8_t *out = NULL;
    size_t n = 0;
    if (base64) {
        if (loom_base64_decode(data, dlen, &out, &n) < 0)
            return loom_err_set(err, LOOM_EINVAL, "is not valid base64 after its ','");
    } else {
        /* percent-encoded text */
        out = malloc(dlen + 1);
        if (!out)
            abort();
        for (size_t i = 0; i < dlen; i++) {
            if (data[i] == '%' && i + 2 < dlen + 1 && isxdigit((unsigned char)data[i + 1]) &&
                isxdigit((unsigned char)data[i + 2])) {
                out[n++] = (uint8_t)(hexdigit(data[i + 1]) * 16 + hexdigit(data[i + 2]));
                i += 2;
            } else if (data[i] == '%') {
                free(out);
                return loom_err_set(err, LOOM_EINVAL,
                                    "has a '%%' that is not followed by two "
                                    "hex digits");
            } else {
                out[n++] = (uint8_t)data[i];
            }
        }
    }
    if (n == 0 || n > LOOM_SPEC_MAX_CODE_BYTES) {
        free(out);
        return loom_err_set(err, LOOM_EINVAL,
                            "holds %zu bytes of code; a function's code is 1 byte to %d KiB", n,
                            LOOM_SPEC_MAX_CODE_BYTES / 1024);
    }
    *ret = out;
    *ret_len = n;
    *ret_binary = binary;
    return 0;
}

int loom_spec_check_code(json_t *body, json_t *out, const struct loom_field *f,
                         struct loom_err *err)
{
    (void)body;
    const char *s = out_string(out, f);
    if (is_stored_code(s))
        return 0;
    uint8_t *code = NULL;
    size_t n;
    bool binary;
    if (loom_spec_code_decode(s, &code, &n, &binary, err) < 0)
        return loom_err_wrap(err, "field \"%s\"", f->name);
    free(code);
    return 0;
}
