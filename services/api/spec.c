/* Request body validation: every field is checked and every message names
 * the field, so that a user can fix the request without reading the code. */
#include <ctype.h>
#include <string.h>

#include "api.h"
#include "arrayspec.h"
#include "cleanup.h"
#include "json.h"
#include "util.h"

#define MAX_IMAGE_LEN 512
#define MAX_CMD_ITEMS 64
#define MAX_CMD_LEN 4096
#define MAX_ENV_ITEMS 100
#define MAX_ENV_VALUE 32768
#define MAX_MOUNTS 20
#define MAX_SELECTOR 32

int api_body_name(json_t *body, const char **ret, struct loom_err *err)
{
    const char *name = NULL;
    if (loom_json_get_string(body, "name", true, 63, &name, err) < 0)
        return -1;
    if (!loom_is_dns_label(name))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"name\": must be 1 to 63 lowercase letters, digits or '-', "
                            "starting with a letter and not ending with '-'");
    *ret = name;
    return 0;
}

/* host[:port]/repo[:tag] or ...@sha256:<64 hex>: refuse what no registry
 * would accept so that the error comes now, not from the node. */
static int check_image(const char *s, struct loom_err *err)
{
    size_t n = strlen(s);
    if (n == 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"image_reference\": must not be empty");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || strchr("._-/:@[]", c)))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"image_reference\": character '%c' is not allowed in an "
                                "image reference",
                                isprint(c) ? c : '?');
    }
    if (s[0] == '/' || s[n - 1] == '/' || strstr(s, "//"))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"image_reference\": \"%s\" has an empty path component", s);
    const char *at = strchr(s, '@');
    if (at) {
        if (strncmp(at + 1, "sha256:", 7) != 0 || strlen(at + 8) != 64)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"image_reference\": a digest must be sha256:<64 hex>");
        for (const char *p = at + 8; *p; p++)
            if (!isxdigit((unsigned char)*p) || isupper((unsigned char)*p))
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"image_reference\": a digest must be sha256:<64 "
                                    "lowercase hex>");
    }
    return 0;
}

/* A decimal with at most max_whole integer and 3 fractional digits ("2",
 * "0.125", ".5") as thousandths; returns the end, or NULL. */
static const char *parse_milli(const char *s, int max_whole, int64_t *ret)
{
    int64_t whole = 0, frac = 0;
    int nwhole = 0, nfrac = 0;
    const char *p = s;
    for (; isdigit((unsigned char)*p); p++) {
        if (++nwhole > max_whole)
            return NULL;
        whole = whole * 10 + (*p - '0');
    }
    if (*p == '.') {
        p++;
        for (; isdigit((unsigned char)*p); p++) {
            if (++nfrac > 3)
                return NULL;
            frac = frac * 10 + (*p - '0');
        }
        if (nfrac == 0)
            return NULL;
    }
    if (nwhole + nfrac == 0)
        return NULL;
    for (int i = nfrac; i < 3; i++)
        frac *= 10;
    *ret = whole * 1000 + frac;
    return p;
}

int api_parse_cpu(const char *s, int64_t *ret_millis)
{
    /* "500m" millicores, as Kubernetes and the scheduler also accept */
    size_t n = strlen(s);
    if (n > 1 && s[n - 1] == 'm') {
        int64_t m = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            if (!isdigit((unsigned char)s[i]) || i >= 5)
                return -1;
            m = m * 10 + (s[i] - '0');
        }
        if (m <= 0 || m > 64000)
            return -1;
        *ret_millis = m;
        return 0;
    }
    int64_t millis;
    const char *p = parse_milli(s, 3, &millis);
    if (!p || *p)
        return -1;
    if (millis <= 0 || millis > 64000)
        return -1;
    *ret_millis = millis;
    return 0;
}

/* A size such as "512M", "0.25G", "4Gi": a decimal with at most 3
 * fractional digits and a unit M, G, Mi or Gi. ret_milli is the number
 * times 1000 and ret_giga tells G/Gi from M/Mi; ret_binary tells Mi/Gi. */
static int parse_mem(const char *s, int64_t *ret_milli, bool *ret_giga, bool *ret_binary)
{
    int64_t milli;
    const char *p = parse_milli(s, 6, &milli);
    if (!p || !isdigit((unsigned char)s[0]))
        return -1;
    bool giga;
    if (*p == 'G')
        giga = true;
    else if (*p == 'M')
        giga = false;
    else
        return -1;
    p++;
    bool binary = *p == 'i';
    if (binary)
        p++;
    if (*p)
        return -1;
    *ret_milli = milli;
    *ret_giga = giga;
    *ret_binary = binary;
    return 0;
}

/* The size in megabytes (decimal, or MiB when binary) times 1000, for
 * comparing with a combination without rounding. */
static int64_t mem_mmb(int64_t milli, bool giga, bool binary)
{
    return milli * (giga ? (binary ? 1024 : 1000) : 1);
}

/* Code Engine's vCPU sizes; memory is 2, 4 or 8 GB per vCPU up to 48G. */
static const int64_t valid_cpus[] = {125, 250, 500, 1000, 2000, 4000, 6000, 8000, 10000, 12000};
static const int valid_ratios[] = {2, 4, 8};
#define MAX_MEMORY_GB 48

/* Whether millis vCPU with ratio GB per vCPU is the memory text: equal in
 * decimal units (0.25G = 250M) or in binary ones (256M or 256Mi = 0.25Gi). */
static bool combo_matches(int64_t millis, int ratio, const char *mem)
{
    int64_t milli, gb_milli = millis * ratio; /* GB times 1000 */
    bool giga, binary;
    if (gb_milli > MAX_MEMORY_GB * 1000 || parse_mem(mem, &milli, &giga, &binary) < 0)
        return false;
    /* decimal: MB*1000 = GB*1000*1000; binary: MiB*1000 = GiB*1000*1024 */
    return mem_mmb(milli, giga, false) == gb_milli * 1000 ||
           mem_mmb(milli, giga, true) == gb_milli * 1024;
}

static bool combo_ok(int64_t millis, const char *mem)
{
    for (size_t r = 0; r < LOOM_ARRAY_SIZE(valid_ratios); r++)
        if (combo_matches(millis, valid_ratios[r], mem))
            return true;
    return false;
}

static bool cpu_listed(int64_t millis)
{
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(valid_cpus); i++)
        if (valid_cpus[i] == millis)
            return true;
    return false;
}

/* "0.125", "1", "12": the canonical text of a listed vCPU size. */
static void format_cpu(int64_t millis, char *out, size_t outsz)
{
    if (millis % 1000 == 0)
        snprintf(out, outsz, "%lld", (long long)(millis / 1000));
    else if (millis % 100 == 0)
        snprintf(out, outsz, "%lld.%01lld", (long long)(millis / 1000),
                 (long long)(millis % 1000 / 100));
    else if (millis % 10 == 0)
        snprintf(out, outsz, "%lld.%02lld", (long long)(millis / 1000),
                 (long long)(millis % 1000 / 10));
    else
        snprintf(out, outsz, "%lld.%03lld", (long long)(millis / 1000), (long long)(millis % 1000));
}

/* "0.25G" for 250 (GB times 1000): memory for a cpu and ratio. */
static void format_gb(int64_t gb_milli, char *out, size_t outsz)
{
    if (gb_milli % 1000 == 0)
        snprintf(out, outsz, "%lldG", (long long)(gb_milli / 1000));
    else
        snprintf(out, outsz, "%lldM", (long long)gb_milli);
}

static int check_cpu(const char *s, int64_t *ret_millis, struct loom_err *err)
{
    int64_t m;
    if (api_parse_cpu(s, &m) < 0 || !cpu_listed(m))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_cpu_limit\": \"%s\" is not one of the vCPU sizes "
                            "0.125, 0.25, 0.5, 1, 2, 4, 6, 8, 10, 12",
                            s);
    *ret_millis = m;
    return 0;
}

static int check_memory(const char *s, struct loom_err *err)
{
    int64_t milli;
    bool giga, binary;
    if (parse_mem(s, &milli, &giga, &binary) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" is not a size such as \"512M\", "
                            "\"0.5G\", \"4G\" or \"2Gi\" (units M, G, Mi, Gi)",
                            s);
    if (mem_mmb(milli, giga, false) > MAX_MEMORY_GB * 1000 * 1000 && !binary)
        return loom_err_set(err, LOOM_EINVAL, "field \"scale_memory_limit\": \"%s\" is over 48G",
                            s);
    if (binary && mem_mmb(milli, giga, true) > MAX_MEMORY_GB * 1000 * 1024)
        return loom_err_set(err, LOOM_EINVAL, "field \"scale_memory_limit\": \"%s\" is over 48Gi",
                            s);
    return 0;
}

/* Completes and checks scale_cpu_limit and scale_memory_limit of a whole
 * spec: one given alone gets its 1:4 partner (or the nearest valid ratio
 * for memory); neither given is 1 vCPU with 4G. */
static int check_resources(json_t *out, struct loom_err *err)
{
    const char *cpu = json_string_value(json_object_get(out, "scale_cpu_limit"));
    const char *mem = json_string_value(json_object_get(out, "scale_memory_limit"));
    char buf[32];
    if (!cpu && !mem) {
        json_object_set_new(out, "scale_cpu_limit", json_string("1"));
        json_object_set_new(out, "scale_memory_limit", json_string("4G"));
        return 0;
    }
    int64_t millis = 0;
    if (cpu && check_cpu(cpu, &millis, err) < 0)
        return -1;
    if (mem && check_memory(mem, err) < 0)
        return -1;
    if (!mem) {
        format_gb(millis * 4, buf, sizeof(buf));
        json_object_set_new(out, "scale_memory_limit", json_string(buf));
        mem = json_string_value(json_object_get(out, "scale_memory_limit"));
    }
    if (!cpu) {
        static const int prefer[] = {4, 2, 8};
        for (size_t r = 0; r < LOOM_ARRAY_SIZE(prefer); r++)
            for (size_t c = 0; c < LOOM_ARRAY_SIZE(valid_cpus); c++)
                if (combo_matches(valid_cpus[c], prefer[r], mem)) {
                    format_cpu(valid_cpus[c], buf, sizeof(buf));
                    json_object_set_new(out, "scale_cpu_limit", json_string(buf));
                    return 0;
                }
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" is not 2, 4 or 8 GB per vCPU "
                            "for any vCPU size (try 0.5G, 1G, 2G, 4G, 8G, 16G, 32G or 48G)",
                            mem);
    }
    if (!combo_ok(millis, mem)) {
        char a[24], b[24], c[24];
        format_gb(millis * 2, a, sizeof(a));
        format_gb(millis * 4, b, sizeof(b));
        format_gb(millis * 8, c, sizeof(c));
        if (millis * 8 > MAX_MEMORY_GB * 1000)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"scale_memory_limit\": \"%s\" with scale_cpu_limit \"%s\" "
                                "is not a valid combination (memory must be %s or %s)",
                                mem, cpu, a, millis * 4 > MAX_MEMORY_GB * 1000 ? a : b);
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" with scale_cpu_limit \"%s\" is "
                            "not a valid combination (memory must be %s, %s or %s)",
                            mem, cpu, a, b, c);
    }
    /* the canonical vCPU text, which every parser reads ("0.125", not ".125") */
    format_cpu(millis, buf, sizeof(buf));
    json_object_set_new(out, "scale_cpu_limit", json_string(buf));
    return 0;
}

/* Rewrites a message about a member of a nested object so that it names the
 * whole path: `field "name": ...` under prefix "x[0]" is `field "x[0].name": ...`. */
static int nested_err(struct loom_err *err, const char *prefix, const struct loom_err *sub)
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

static bool is_env_name(const char *s)
{
    if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_'))
            return false;
    return true;
}

static bool is_data_key(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

#define DNS_LABEL_RULE                                                                             \
    "1 to 63 lowercase letters, digits or '-', starting with a letter and not ending with '-'"

/* A member naming a secret or config map: a DNS label. The thing named
 * need not exist yet (as in Code Engine): the scheduler fails an instance
 * whose reference is missing, naming it. */
static int get_reference(json_t *obj, const char *field, const char *path, bool required,
                         const char **ret, struct loom_err *err)
{
    struct loom_err sub = LOOM_ERR_INIT;
    const char *s = NULL;
    if (loom_json_get_string(obj, field, required, 63, &s, &sub) < 0)
        return path ? nested_err(err, path, &sub) : loom_err_set(err, sub.code, "%s", sub.msg);
    if (s && !loom_is_dns_label(s))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s%s%s\": \"%s\" is not a name (" DNS_LABEL_RULE ")",
                            path ? path : "", path ? "." : "", field, s);
    *ret = s;
    return 0;
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
        return nested_err(err, path, &sub);
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
        return nested_err(err, path, &sub);
    _cleanup_json_ json_t *out = json_pack("{s:s}", "type", type);
    const char *name = NULL, *value = NULL, *ref = NULL, *prefix = NULL, *k = NULL;
    if (literal || key) {
        if (loom_json_get_string(v, "name", true, 256, &name, &sub) < 0)
            return nested_err(err, path, &sub);
        if (!is_env_name(name))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.name\": \"%.64s\" is not a variable name "
                                "([A-Za-z_][A-Za-z0-9_]*)",
                                path, name);
        json_object_set_new(out, "name", json_string(name));
    }
    if (literal) {
        if (loom_json_get_string(v, "value", true, MAX_ENV_VALUE, &value, &sub) < 0)
            return nested_err(err, path, &sub);
        json_object_set_new(out, "value", json_string(value));
        *ret = TAKE_PTR(out);
        return 0;
    }
    if (get_reference(v, "reference", path, true, &ref, err) < 0)
        return -1;
    json_object_set_new(out, "reference", json_string(ref));
    if (full) {
        if (loom_json_get_string(v, "prefix", false, 64, &prefix, &sub) < 0)
            return nested_err(err, path, &sub);
        if (prefix && *prefix && !is_env_name(prefix))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.prefix\": \"%s\" cannot start a variable name "
                                "([A-Za-z_][A-Za-z0-9_]*)",
                                path, prefix);
        if (prefix)
            json_object_set_new(out, "prefix", json_string(prefix));
    } else {
        if (loom_json_get_string(v, "key", true, 253, &k, &sub) < 0)
            return nested_err(err, path, &sub);
        if (!is_data_key(k))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.key\": \"%.64s\" is not a key (1 to 253 of "
                                "[-._a-zA-Z0-9])",
                                path, k);
        json_object_set_new(out, "key", json_string(k));
    }
    *ret = TAKE_PTR(out);
    return 0;
}

static int check_env(json_t *body, json_t **ret, struct loom_err *err)
{
    json_t *arr = json_object_get(body, "run_env_variables");
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_env_variables\": must be an array of "
                            "{\"type\":\"literal\",\"name\":N,\"value\":V} or references");
    if (json_array_size(arr) > MAX_ENV_ITEMS)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_env_variables\": at most %d variables are allowed",
                            MAX_ENV_ITEMS);
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
                             "field \"run_env_variables[%zu].name\": \"%s\" is already set by "
                             "run_env_variables[%zu]",
                             i, name, j);
                json_decref(item);
                return -1;
            }
        }
        json_array_append_new(out, item);
    }
    *ret = TAKE_PTR(out);
    return 0;
}

/* An absolute, normalized directory that is not the root or a kernel
 * file system: "/etc/conf", not "/a/../b", "/a/" or "/proc/x". */
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

static int check_mounts(json_t *body, json_t *out_spec, struct loom_err *err)
{
    json_t *arr = json_object_get(body, "run_volume_mounts");
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_volume_mounts\": must be an array of "
                            "{\"type\":\"secret\"|\"config_map\",\"reference\":NAME,"
                            "\"mount_path\":\"/dir\"}");
    if (json_array_size(arr) > MAX_MOUNTS)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_volume_mounts\": at most %d mounts are allowed",
                            MAX_MOUNTS);
    static const char *const fields[] = {"type", "reference", "mount_path", "name", NULL};
    _cleanup_json_ json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        char path[48];
        snprintf(path, sizeof(path), "run_volume_mounts[%zu]", i);
        struct loom_err sub = LOOM_ERR_INIT;
        if (!json_is_object(v))
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be an object", path);
        const char *type = NULL, *ref = NULL, *mp = NULL, *name = NULL;
        if (loom_json_check_fields(v, fields, &sub) < 0 ||
            loom_json_get_string(v, "type", true, 32, &type, &sub) < 0 ||
            loom_json_get_string(v, "mount_path", true, 256, &mp, &sub) < 0 ||
            loom_json_get_string(v, "name", false, 63, &name, &sub) < 0)
            return nested_err(err, path, &sub);
        if (strcmp(type, "secret") != 0 && strcmp(type, "config_map") != 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.type\": must be \"secret\" or \"config_map\", not "
                                "\"%.32s\"",
                                path, type);
        if (get_reference(v, "reference", path, true, &ref, err) < 0)
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
                                    "run_volume_mounts[%zu]",
                                    path, mp, j);
        }
        json_t *m = json_pack("{s:s,s:s,s:s}", "type", type, "reference", ref, "mount_path", mp);
        if (name)
            json_object_set_new(m, "name", json_string(name));
        json_array_append_new(out, m);
    }
    json_object_set_new(out_spec, "run_volume_mounts", TAKE_PTR(out));
    return 0;
}

static int check_ephemeral(const char *s, struct loom_err *err)
{
    int64_t milli;
    bool giga, binary;
    if (parse_mem(s, &milli, &giga, &binary) < 0 || milli == 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_ephemeral_storage_limit\": \"%s\" is not a size such "
                            "as \"400M\" or \"4G\" (units M, G, Mi, Gi)",
                            s);
    if (mem_mmb(milli, giga, binary) > MAX_MEMORY_GB * 1000 * (binary ? 1024 : 1000))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_ephemeral_storage_limit\": \"%s\" is over 48G", s);
    return 0;
}

static int copy_string(json_t *body, json_t *out, const char *field, size_t max_len,
                       const char **ret, struct loom_err *err)
{
    const char *s = NULL;
    if (loom_json_get_string(body, field, false, max_len, &s, err) < 0)
        return -1;
    if (s)
        json_object_set_new(out, field, json_string(s));
    if (ret)
        *ret = s;
    return 0;
}

static int copy_int(json_t *body, json_t *out, const char *field, int64_t min, int64_t max,
                    struct loom_err *err)
{
    int64_t v = INT64_MIN;
    if (loom_json_get_int(body, field, false, min, max, &v, err) < 0)
        return -1;
    if (v != INT64_MIN)
        json_object_set_new(out, field, json_integer(v));
    return 0;
}

/* A string member that must be one of choices (NULL-terminated). */
static int copy_enum(json_t *body, json_t *out, const char *field, const char *const *choices,
                     struct loom_err *err)
{
    const char *s = NULL;
    if (copy_string(body, out, field, 32, &s, err) < 0)
        return -1;
    if (!s)
        return 0;
    for (const char *const *c = choices; *c; c++)
        if (strcmp(s, *c) == 0)
            return 0;
    char list[128] = "";
    for (const char *const *c = choices; *c; c++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s\"%s\"",
                 c == choices ? ""
                 : c[1]       ? ", "
                              : " or ",
                 *c);
    return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be %s, not \"%.32s\"", field, list,
                        s);
}

static int copy_strings(json_t *body, json_t *out, const char *field, struct loom_err *err)
{
    json_t *arr = NULL;
    if (loom_json_get_string_array(body, field, false, MAX_CMD_ITEMS, MAX_CMD_LEN, &arr, err) < 0)
        return -1;
    if (arr)
        json_object_set_new(out, field, json_deep_copy(arr));
    return 0;
}

/* The fields apps and jobs share: image and command, env, mounts, resources. */
static int check_run_fields(json_t *body, json_t *out, struct loom_err *err)
{
    const char *s = NULL;
    if (copy_string(body, out, "image_reference", MAX_IMAGE_LEN, &s, err) < 0)
        return -1;
    if (s && check_image(s, err) < 0)
        return -1;
    if (copy_strings(body, out, "run_commands", err) < 0 ||
        copy_strings(body, out, "run_arguments", err) < 0)
        return -1;
    json_t *env = NULL;
    if (check_env(body, &env, err) < 0)
        return -1;
    if (env)
        json_object_set_new(out, "run_env_variables", env);
    if (check_mounts(body, out, err) < 0)
        return -1;
    s = NULL;
    if (get_reference(body, "image_secret", NULL, false, &s, err) < 0)
        return -1;
    if (s)
        json_object_set_new(out, "image_secret", json_string(s));
    int64_t millis;
    s = NULL;
    if (copy_string(body, out, "scale_cpu_limit", 16, &s, err) < 0)
        return -1;
    if (s && check_cpu(s, &millis, err) < 0)
        return -1;
    s = NULL;
    if (copy_string(body, out, "scale_memory_limit", 16, &s, err) < 0)
        return -1;
    if (s && check_memory(s, err) < 0)
        return -1;
    s = NULL;
    if (copy_string(body, out, "scale_ephemeral_storage_limit", 16, &s, err) < 0)
        return -1;
    if (s && check_ephemeral(s, err) < 0)
        return -1;
    if (copy_int(body, out, "scale_gpus", 0, 64, err) < 0)
        return -1;
    s = NULL;
    if (copy_string(body, out, "scale_gpu_model", 64, &s, err) < 0)
        return -1;
    for (const char *p = s; p && *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("._-", *p)))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"scale_gpu_model\": only letters, digits, '.', '_' and "
                                "'-' are allowed");
    return 0;
}

int api_array_spec(const char *spec, char **ret_canonical, char **ret_multirange,
                   int64_t *ret_count, struct loom_err *err)
{
    struct loom_arrayspec as = {0};
    if (loom_arrayspec_parse(spec, LOOM_ARRAY_MAX_COUNT, &as, err) < 0)
        return loom_err_wrap(err, "field \"scale_array_spec\"");
    _cleanup_free_ char *canon = loom_arrayspec_format(&as);
    _cleanup_free_ char *mr = loom_arrayspec_to_multirange(&as);
    int64_t count = as.count;
    loom_arrayspec_release(&as);
    if (!canon || !mr)
        return loom_err_set(err, LOOM_EINTERNAL, "could not format the array spec");
    if (ret_canonical)
        *ret_canonical = TAKE_PTR(canon);
    if (ret_multirange)
        *ret_multirange = TAKE_PTR(mr);
    if (ret_count)
        *ret_count = count;
    return 0;
}

char *api_multirange_to_spec(const char *multirange)
{
    struct loom_arrayspec as = {0};
    struct loom_err err = LOOM_ERR_INIT;
    if (!multirange || loom_arrayspec_from_multirange(multirange, &as, &err) < 0)
        return strdup("");
    char *s = as.n ? loom_arrayspec_format(&as) : strdup("");
    loom_arrayspec_release(&as);
    return s ? s : strdup("");
}

static int check_node_selector(json_t *body, json_t *out, struct loom_err *err)
{
    json_t *sel = json_object_get(body, "node_selector");
    if (!sel || json_is_null(sel))
        return 0;
    if (!json_is_object(sel))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"node_selector\": must be an object of label: value strings");
    if (json_object_size(sel) > MAX_SELECTOR)
        return loom_err_set(err, LOOM_EINVAL, "field \"node_selector\": at most %d labels",
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
                                "field \"node_selector\": label \"%.64s\" must be 1 to 253 of "
                                "[-._/a-zA-Z0-9], starting and ending with a letter or digit",
                                k);
        if (!json_is_string(v))
            return loom_err_set(err, LOOM_EINVAL, "field \"node_selector.%s\": must be a string",
                                k);
        const char *val = json_string_value(v);
        ok = strlen(val) <= 63 && json_string_length(v) == strlen(val);
        for (const char *p = val; ok && *p; p++)
            ok = isalnum((unsigned char)*p) || strchr("-_.", *p);
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"node_selector.%s\": the value must be 0 to 63 of "
                                "[-._a-zA-Z0-9]",
                                k);
    }
    json_object_set_new(out, "node_selector", json_deep_copy(sel));
    return 0;
}

/* Job fields (jobs and job runs). */
static int check_job_fields(json_t *body, json_t *out, struct loom_err *err)
{
    static const char *const modes[] = {"task", "daemon", NULL};
    static const char *const placements[] = {"binpack", "spread", NULL};
    const char *s = NULL;
    if (copy_string(body, out, "scale_array_spec", 65536, &s, err) < 0)
        return -1;
    if (s) {
        _cleanup_free_ char *canon = NULL;
        if (api_array_spec(s, &canon, NULL, NULL, err) < 0)
            return -1;
        json_object_set_new(out, "scale_array_spec", json_string(canon));
    }
    if (copy_int(body, out, "scale_retry_limit", 0, 5, err) < 0 ||
        copy_int(body, out, "scale_max_execution_time", 1, 86400, err) < 0 ||
        copy_int(body, out, "parallelism", 0, LOOM_ARRAY_MAX_COUNT, err) < 0 ||
        copy_int(body, out, "scale_nodes", 1, 1000, err) < 0 ||
        copy_int(body, out, "priority", 0, 100, err) < 0 ||
        copy_int(body, out, "gang_timeout", 1, 86400, err) < 0 ||
        copy_enum(body, out, "run_mode", modes, err) < 0 ||
        copy_enum(body, out, "placement", placements, err) < 0 ||
        check_node_selector(body, out, err) < 0)
        return -1;
    return 0;
}

static void set_default(json_t *spec, const char *field, json_t *value)
{
    if (!json_object_get(spec, field))
        json_object_set_new(spec, field, value);
    else
        json_decref(value);
}

/* Defaults of the fields apps and jobs share, and the checks that need the
 * whole spec. */
static int run_defaults(json_t *spec, struct loom_err *err)
{
    set_default(spec, "run_commands", json_array());
    set_default(spec, "run_arguments", json_array());
    set_default(spec, "run_env_variables", json_array());
    set_default(spec, "run_volume_mounts", json_array());
    set_default(spec, "scale_ephemeral_storage_limit", json_string("400M"));
    return check_resources(spec, err);
}

static int job_defaults(json_t *spec, struct loom_err *err)
{
    set_default(spec, "scale_array_spec", json_string("0"));
    set_default(spec, "scale_retry_limit", json_integer(3));
    set_default(spec, "scale_max_execution_time", json_integer(7200));
    set_default(spec, "parallelism", json_integer(0));
    set_default(spec, "run_mode", json_string("task"));
    set_default(spec, "node_selector", json_object());
    set_default(spec, "placement", json_string("binpack"));
    set_default(spec, "gang_timeout", json_integer(300));
    return run_defaults(spec, err);
}

#define RUN_FIELDS                                                                                 \
    "image_reference", "run_commands", "run_arguments", "run_env_variables", "run_volume_mounts",  \
        "image_secret", "scale_cpu_limit", "scale_memory_limit", "scale_ephemeral_storage_limit",  \
        "scale_gpus", "scale_gpu_model"
#define JOB_FIELDS                                                                                 \
    "scale_array_spec", "scale_retry_limit", "scale_max_execution_time", "parallelism",            \
        "run_mode", "scale_nodes", "priority", "node_selector", "placement", "gang_timeout"

const char *const api_job_fields[] = {"name", RUN_FIELDS, JOB_FIELDS, NULL};
const char *const api_jobrun_fields[] = {"name", "job_name", RUN_FIELDS, JOB_FIELDS, NULL};

int api_job_spec(json_t *body, bool partial, json_t **ret_spec, struct loom_err *err)
{
    const char *name;
    if (loom_json_check_fields(body, api_job_fields, err) < 0 ||
        (!partial && api_body_name(body, &name, err) < 0))
        return -1;
    _cleanup_json_ json_t *out = json_object();
    if (check_run_fields(body, out, err) < 0 || check_job_fields(body, out, err) < 0)
        return -1;
    if (!partial) {
        if (!json_object_get(out, "image_reference"))
            return loom_err_set(err, LOOM_EINVAL, "field \"image_reference\": is required");
        if (job_defaults(out, err) < 0)
            return -1;
    }
    *ret_spec = TAKE_PTR(out);
    return 0;
}

int api_jobrun_spec(json_t *body, const json_t *job_spec, json_t **ret_spec, struct loom_err *err)
{
    const char *name;
    if (loom_json_check_fields(body, api_jobrun_fields, err) < 0 ||
        api_body_name(body, &name, err) < 0)
        return -1;
    _cleanup_json_ json_t *given = json_object();
    if (check_run_fields(body, given, err) < 0 || check_job_fields(body, given, err) < 0)
        return -1;
    _cleanup_json_ json_t *out = job_spec ? json_deep_copy(job_spec) : json_object();
    /* a run that names only one of cpu and memory gets its partner anew
     * rather than the job's, which may not fit the new one */
    bool cpu = json_object_get(given, "scale_cpu_limit") != NULL;
    bool mem = json_object_get(given, "scale_memory_limit") != NULL;
    if (cpu != mem)
        json_object_del(out, cpu ? "scale_memory_limit" : "scale_cpu_limit");
    json_object_update(out, given);
    if (!json_object_get(out, "image_reference"))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"image_reference\": is required unless job_name is given");
    if (job_defaults(out, err) < 0)
        return -1;
    const char *mode = json_string_value(json_object_get(out, "run_mode"));
    if (mode && strcmp(mode, "daemon") == 0 &&
        (json_object_get(given, "scale_retry_limit") ||
         json_object_get(given, "scale_max_execution_time")))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_mode\": a daemon run takes no scale_retry_limit or "
                            "scale_max_execution_time");
    *ret_spec = TAKE_PTR(out);
    return 0;
}

const char *const api_app_fields[] = {
    "name",
    RUN_FIELDS,
    "image_port",
    "scale_min_instances",
    "scale_max_instances",
    "scale_initial_instances",
    "scale_concurrency",
    "scale_concurrency_target",
    "scale_down_delay",
    "scale_request_timeout",
    "probe_readiness",
    "probe_liveness",
    "visibility",
    NULL,
};

/* probe_readiness / probe_liveness: {"type":"tcp"|"http","path":"/p",
 * "port":N,"initial_delay":s,"interval":s,"timeout":s,"failure_threshold":n};
 * port defaults to image_port (left out), path to "/" for http. */
static int check_probe(json_t *body, json_t *out, const char *field, struct loom_err *err)
{
    static const char *const fields[] = {
        "type", "path", "port", "initial_delay", "interval", "timeout", "failure_threshold", NULL};
    static const char *const types[] = {"tcp", "http", NULL};
    json_t *p = json_object_get(body, field);
    if (!p || json_is_null(p))
        return 0;
    if (!json_is_object(p))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be an object such as {\"type\":\"http\","
                            "\"path\":\"/healthz\"}",
                            field);
    struct loom_err sub = LOOM_ERR_INIT;
    _cleanup_json_ json_t *o = json_object();
    if (loom_json_check_fields(p, fields, &sub) < 0 || copy_enum(p, o, "type", types, &sub) < 0 ||
        copy_int(p, o, "port", 1, 65535, &sub) < 0 ||
        copy_int(p, o, "initial_delay", 0, 3600, &sub) < 0 ||
        copy_int(p, o, "interval", 1, 3600, &sub) < 0 ||
        copy_int(p, o, "timeout", 1, 3600, &sub) < 0 ||
        copy_int(p, o, "failure_threshold", 1, 10, &sub) < 0)
        return nested_err(err, field, &sub);
    set_default(o, "type", json_string("tcp"));
    bool http = strcmp(json_string_value(json_object_get(o, "type")), "http") == 0;
    const char *path = NULL;
    if (loom_json_get_string(p, "path", false, 256, &path, &sub) < 0)
        return nested_err(err, field, &sub);
    if (path && !http)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s.path\": only an http probe has a path",
                            field);
    if (path) {
        bool ok = path[0] == '/';
        for (const char *c = path; ok && *c; c++)
            ok = isgraph((unsigned char)*c);
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s.path\": must start with '/' and have no spaces or "
                                "control characters",
                                field);
    }
    if (http)
        json_object_set_new(o, "path", json_string(path ? path : "/"));
    set_default(o, "initial_delay", json_integer(0));
    set_default(o, "interval", json_integer(10));
    set_default(o, "timeout", json_integer(1));
    set_default(o, "failure_threshold", json_integer(3));
    json_object_set_new(out, field, TAKE_PTR(o));
    return 0;
}

static json_int_t int_of(json_t *spec, const char *field)
{
    return json_integer_value(json_object_get(spec, field));
}

int api_app_spec(json_t *body, bool partial, json_t **ret_spec, struct loom_err *err)
{
    static const char *const visibilities[] = {"public", "private", "project", NULL};
    const char *name;
    if (loom_json_check_fields(body, api_app_fields, err) < 0 ||
        (!partial && api_body_name(body, &name, err) < 0))
        return -1;
    _cleanup_json_ json_t *out = json_object();
    if (check_run_fields(body, out, err) < 0 ||
        copy_int(body, out, "image_port", 1, 65535, err) < 0 ||
        copy_int(body, out, "scale_min_instances", 0, 1000, err) < 0 ||
        copy_int(body, out, "scale_max_instances", 1, 1000, err) < 0 ||
        copy_int(body, out, "scale_initial_instances", 0, 1000, err) < 0 ||
        copy_int(body, out, "scale_concurrency", 1, 1000, err) < 0 ||
        copy_int(body, out, "scale_concurrency_target", 1, 1000, err) < 0 ||
        copy_int(body, out, "scale_down_delay", 0, 3600, err) < 0 ||
        copy_int(body, out, "scale_request_timeout", 1, 600, err) < 0 ||
        check_probe(body, out, "probe_readiness", err) < 0 ||
        check_probe(body, out, "probe_liveness", err) < 0 ||
        copy_enum(body, out, "visibility", visibilities, err) < 0)
        return -1;
    if (!partial) {
        if (!json_object_get(out, "image_reference"))
            return loom_err_set(err, LOOM_EINVAL, "field \"image_reference\": is required");
        set_default(out, "image_port", json_integer(8080));
        set_default(out, "scale_min_instances", json_integer(0));
        set_default(out, "scale_max_instances", json_integer(10));
        set_default(out, "scale_initial_instances",
                    json_integer(int_of(out, "scale_min_instances")));
        set_default(out, "scale_concurrency", json_integer(100));
        set_default(out, "scale_concurrency_target",
                    json_integer(int_of(out, "scale_concurrency")));
        set_default(out, "scale_down_delay", json_integer(0));
        set_default(out, "scale_request_timeout", json_integer(300));
        set_default(out, "visibility", json_string("public"));
        if (run_defaults(out, err) < 0)
            return -1;
        json_int_t mn = int_of(out, "scale_min_instances"), mx = int_of(out, "scale_max_instances");
        if (mn > mx)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"scale_min_instances\": %lld is more than "
                                "scale_max_instances (%lld)",
                                (long long)mn, (long long)mx);
        json_int_t init = int_of(out, "scale_initial_instances");
        if (init > mx)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"scale_initial_instances\": %lld is more than "
                                "scale_max_instances (%lld)",
                                (long long)init, (long long)mx);
        json_int_t c = int_of(out, "scale_concurrency"),
                   t = int_of(out, "scale_concurrency_target");
        if (t > c)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"scale_concurrency_target\": %lld is more than "
                                "scale_concurrency (%lld)",
                                (long long)t, (long long)c);
    }
    *ret_spec = TAKE_PTR(out);
    return 0;
}

json_t *api_spec_merge(const json_t *old, const json_t *patch, const json_t *raw)
{
    json_t *merged = json_deep_copy(old);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)raw, key, v)
    {
        if (json_is_null(v))
            json_object_del(merged, key);
    }
    /* values that were defaulted from another field follow it when only
     * that field changes: a lower scale_concurrency takes the target along */
    static const char *const follows[][2] = {
        {"scale_concurrency_target", "scale_concurrency"},
        {"scale_initial_instances", "scale_min_instances"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(follows); i++) {
        json_t *dep = json_object_get(old, follows[i][0]);
        json_t *src = json_object_get(old, follows[i][1]);
        if (json_object_get(patch, follows[i][1]) && !json_object_get(patch, follows[i][0]) &&
            dep && src && json_equal(dep, src))
            json_object_del(merged, follows[i][0]);
    }
    bool cpu = json_object_get(patch, "scale_cpu_limit") != NULL;
    bool mem = json_object_get(patch, "scale_memory_limit") != NULL;
    if (cpu != mem)
        json_object_del(merged, cpu ? "scale_memory_limit" : "scale_cpu_limit");
    json_object_update(merged, (json_t *)patch);
    return merged;
}

int api_data_map(json_t *body, json_t **ret, struct loom_err *err)
{
    json_t *data = json_object_get(body, "data");
    if (!data || json_is_null(data))
        return loom_err_set(err, LOOM_EINVAL, "field \"data\": is required");
    if (!json_is_object(data))
        return loom_err_set(err, LOOM_EINVAL, "field \"data\": must be an object of string values");
    if (json_object_size(data) > 100)
        return loom_err_set(err, LOOM_EINVAL, "field \"data\": at most 100 keys are allowed");
    const char *k;
    json_t *v;
    json_object_foreach(data, k, v)
    {
        if (!is_data_key(k))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"data\": key \"%.64s\" must be 1 to 253 of [-._a-zA-Z0-9]",
                                k);
        if (!json_is_string(v))
            return loom_err_set(err, LOOM_EINVAL, "field \"data.%s\": must be a string", k);
        if (strlen(json_string_value(v)) != json_string_length(v))
            return loom_err_set(err, LOOM_EINVAL, "field \"data.%s\": must not contain NUL", k);
    }
    *ret = json_deep_copy(data);
    return 0;
}

/* One PEM block of the given kind ("CERTIFICATE", or NULL for any label
 * ending in "PRIVATE KEY"): BEGIN line, base64 lines, the END line with the
 * same label. Several blocks (a chain) are fine; other text is not. */
static bool looks_like_pem(const char *s, bool key)
{
    int blocks = 0;
    const char *p = s;
    while (*p) {
        while (*p == '\n' || *p == '\r' || *p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (strncmp(p, "-----BEGIN ", 11) != 0)
            return false;
        const char *label = p + 11, *dash = strstr(label, "-----");
        if (!dash || dash - label > 40 || memchr(label, '\n', (size_t)(dash - label)))
            return false;
        size_t llen = (size_t)(dash - label);
        bool ok = key ? llen >= 11 && strncmp(dash - 11, "PRIVATE KEY", 11) == 0
                      : llen == 11 && strncmp(label, "CERTIFICATE", 11) == 0;
        if (!ok)
            return false;
        p = dash + 5;
        size_t nb64 = 0;
        for (;;) {
            while (*p == '\n' || *p == '\r')
                p++;
            if (strncmp(p, "-----END ", 9) == 0)
                break;
            if (!*p)
                return false;
            for (; *p && *p != '\n' && *p != '\r'; p++, nb64++)
                if (!(isalnum((unsigned char)*p) || *p == '+' || *p == '/' || *p == '='))
                    return false;
        }
        if (nb64 == 0 || strncmp(p + 9, label, llen) != 0 || strncmp(p + 9 + llen, "-----", 5) != 0)
            return false;
        p += 9 + llen + 5;
        blocks++;
    }
    return blocks > 0 && (!key || blocks == 1);
}

/* host, host:port or [v6]:port, as an image reference starts */
static bool is_registry_server(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr(".-:[]", *p)))
            return false;
    return s[0] != '.' && s[0] != '-' && s[0] != ':';
}

int api_secret_data(const char *format, json_t *data, struct loom_err *err)
{
    const char *k;
    json_t *v;
    if (strcmp(format, "generic") == 0)
        return 0;
    if (strcmp(format, "registry") == 0) {
        static const char *const need[] = {"server", "username", "password"};
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(need); i++) {
            const char *val = json_string_value(json_object_get(data, need[i]));
            if (!val || !*val)
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"data.%s\": a registry secret needs server, "
                                    "username and password",
                                    need[i]);
        }
        json_object_foreach(data, k, v)
        {
            if (strcmp(k, "server") != 0 && strcmp(k, "username") != 0 &&
                strcmp(k, "password") != 0 && strcmp(k, "email") != 0)
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"data.%.64s\": a registry secret has only server, "
                                    "username, password and email",
                                    k);
        }
        const char *server = json_string_value(json_object_get(data, "server"));
        if (!is_registry_server(server))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"data.server\": \"%.64s\" is not a registry host such as "
                                "\"registry.example.com\" or \"127.0.0.1:5000\" (no scheme or "
                                "path)",
                                server);
        if (strchr(json_string_value(json_object_get(data, "username")), ':'))
            return loom_err_set(err, LOOM_EINVAL, "field \"data.username\": must not contain ':'");
        return 0;
    }
    if (strcmp(format, "tls") == 0) {
        json_object_foreach(data, k, v)
        {
            if (strcmp(k, "tls_cert") != 0 && strcmp(k, "tls_key") != 0)
                return loom_err_set(err, LOOM_EINVAL,
                                    "field \"data.%.64s\": a tls secret has only tls_cert and "
                                    "tls_key",
                                    k);
        }
        const char *cert = json_string_value(json_object_get(data, "tls_cert"));
        const char *key = json_string_value(json_object_get(data, "tls_key"));
        if (!cert || !looks_like_pem(cert, false))
            return loom_err_set(err, LOOM_EINVAL, "field \"data.tls_cert\": %s",
                                cert ? "must be PEM certificates (-----BEGIN CERTIFICATE----- "
                                       "... -----END CERTIFICATE-----)"
                                     : "a tls secret needs tls_cert and tls_key");
        if (!key || !looks_like_pem(key, true))
            return loom_err_set(err, LOOM_EINVAL, "field \"data.tls_key\": %s",
                                key ? "must be one PEM private key (-----BEGIN PRIVATE KEY----- "
                                      "... -----END PRIVATE KEY-----)"
                                    : "a tls secret needs tls_cert and tls_key");
        return 0;
    }
    return loom_err_set(err, LOOM_EINVAL,
                        "field \"format\": must be \"generic\", \"registry\" or \"tls\", not "
                        "\"%.16s\"",
                        format);
}
