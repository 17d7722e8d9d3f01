/* Request body validation: every field is checked and every message names
 * the field, so that a user can fix the request without reading the code. */
#include <ctype.h>
#include <string.h>

#include "api.h"
#include "arrayspec.h"
#include "cleanup.h"
#include "config.h"
#include "json.h"
#include "util.h"

#define MAX_IMAGE_LEN 512
#define MAX_CMD_ITEMS 64
#define MAX_CMD_LEN 4096
#define MAX_ENV_ITEMS 100
#define MAX_ENV_VALUE 32768
#define MIN_MEMORY (6LL << 20)
#define MAX_MEMORY (256LL << 30)

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
    int64_t whole = 0, frac = 0;
    int nwhole = 0, nfrac = 0;
    const char *p = s;
    for (; isdigit((unsigned char)*p); p++) {
        if (++nwhole > 3)
            return -1;
        whole = whole * 10 + (*p - '0');
    }
    if (*p == '.') {
        p++;
        for (; isdigit((unsigned char)*p); p++) {
            if (++nfrac > 3)
                return -1;
            frac = frac * 10 + (*p - '0');
        }
        if (nfrac == 0)
            return -1;
    }
    if (*p || nwhole + nfrac == 0)
        return -1;
    for (int i = nfrac; i < 3; i++)
        frac *= 10;
    int64_t millis = whole * 1000 + frac;
    if (millis <= 0 || millis > 64000)
        return -1;
    *ret_millis = millis;
    return 0;
}

static int check_cpu(const char *s, struct loom_err *err)
{
    int64_t m;
    if (api_parse_cpu(s, &m) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_cpu_limit\": \"%s\" is not a vCPU count from 0.001 to "
                            "64 such as \"0.5\", \"2\" or \"250m\"",
                            s);
    return 0;
}

static int check_memory(const char *s, struct loom_err *err)
{
    int64_t b;
    size_t n = strlen(s);
    if (loom_parse_size(s, &b) < 0 || (n > 0 && s[n - 1] == 'B'))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" is not a size such as \"512M\" "
                            "or \"4G\"",
                            s);
    if (b < MIN_MEMORY || b > MAX_MEMORY)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"scale_memory_limit\": \"%s\" is outside 6M to 256G", s);
    return 0;
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

static int check_env(json_t *body, json_t **ret, struct loom_err *err)
{
    json_t *arr = json_object_get(body, "run_env_variables");
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_env_variables\": must be an array of "
                            "{\"type\":\"literal\",\"name\":N,\"value\":V}");
    if (json_array_size(arr) > MAX_ENV_ITEMS)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_env_variables\": at most %d variables are allowed",
                            MAX_ENV_ITEMS);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        static const char *const allowed[] = {"type", "name", "value", NULL};
        struct loom_err sub = LOOM_ERR_INIT;
        if (!json_is_object(v))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"run_env_variables[%zu]\": must be an object", i);
        if (loom_json_check_fields(v, allowed, &sub) < 0)
            return loom_err_set(err, LOOM_EINVAL, "field \"run_env_variables[%zu]\": %s", i,
                                sub.msg);
        const char *type = "literal", *name = NULL, *value = NULL;
        if (loom_json_get_string(v, "type", false, 32, &type, &sub) < 0 ||
            loom_json_get_string(v, "name", true, 256, &name, &sub) < 0 ||
            loom_json_get_string(v, "value", true, MAX_ENV_VALUE, &value, &sub) < 0)
            return loom_err_set(err, LOOM_EINVAL, "field \"run_env_variables[%zu]\": %s", i,
                                sub.msg);
        if (strcmp(type, "literal") != 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"run_env_variables[%zu].type\": only \"literal\" is "
                                "supported",
                                i);
        if (!is_env_name(name))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"run_env_variables[%zu].name\": \"%s\" is not a variable "
                                "name ([A-Za-z_][A-Za-z0-9_]*)",
                                i, name);
        if (strlen(value) != json_string_length(json_object_get(v, "value")))
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"run_env_variables[%zu].value\": must not contain NUL", i);
    }
    json_t *out = json_array();
    json_array_foreach(arr, i, v)
    {
        json_array_append_new(out, json_pack("{s:s,s:O,s:O}", "type", "literal", "name",
                                             json_object_get(v, "name"), "value",
                                             json_object_get(v, "value")));
    }
    *ret = out;
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

static int copy_strings(json_t *body, json_t *out, const char *field, struct loom_err *err)
{
    json_t *arr = NULL;
    if (loom_json_get_string_array(body, field, false, MAX_CMD_ITEMS, MAX_CMD_LEN, &arr, err) < 0)
        return -1;
    if (arr)
        json_object_set_new(out, field, json_deep_copy(arr));
    return 0;
}

/* The fields apps and jobs share: image and command, env, resources. */
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
    s = NULL;
    if (copy_string(body, out, "scale_cpu_limit", 16, &s, err) < 0)
        return -1;
    if (s && check_cpu(s, err) < 0)
        return -1;
    s = NULL;
    if (copy_string(body, out, "scale_memory_limit", 16, &s, err) < 0)
        return -1;
    if (s && check_memory(s, err) < 0)
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

/* Job fields (jobs and job runs). */
static int check_job_fields(json_t *body, json_t *out, struct loom_err *err)
{
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
        copy_int(body, out, "priority", 0, 100, err) < 0)
        return -1;
    s = NULL;
    if (copy_string(body, out, "run_mode", 16, &s, err) < 0)
        return -1;
    if (s && strcmp(s, "task") != 0 && strcmp(s, "daemon") != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"run_mode\": must be \"task\" or \"daemon\", not \"%s\"", s);
    return 0;
}

static void set_default(json_t *spec, const char *field, json_t *value)
{
    if (!json_object_get(spec, field))
        json_object_set_new(spec, field, value);
    else
        json_decref(value);
}

static void job_defaults(json_t *spec)
{
    set_default(spec, "run_commands", json_array());
    set_default(spec, "run_arguments", json_array());
    set_default(spec, "run_env_variables", json_array());
    set_default(spec, "scale_array_spec", json_string("0"));
    set_default(spec, "scale_retry_limit", json_integer(3));
    set_default(spec, "scale_max_execution_time", json_integer(7200));
    set_default(spec, "scale_cpu_limit", json_string("1"));
    set_default(spec, "scale_memory_limit", json_string("4G"));
    set_default(spec, "parallelism", json_integer(0));
    set_default(spec, "run_mode", json_string("task"));
}

static const char *const job_fields[] = {
    "name",
    "image_reference",
    "run_commands",
    "run_arguments",
    "run_env_variables",
    "scale_array_spec",
    "scale_retry_limit",
    "scale_max_execution_time",
    "scale_cpu_limit",
    "scale_memory_limit",
    "parallelism",
    "run_mode",
    "scale_gpus",
    "scale_gpu_model",
    "scale_nodes",
    "priority",
    NULL,
};

static const char *const jobrun_fields[] = {
    "name",
    "job_name",
    "image_reference",
    "run_commands",
    "run_arguments",
    "run_env_variables",
    "scale_array_spec",
    "scale_retry_limit",
    "scale_max_execution_time",
    "scale_cpu_limit",
    "scale_memory_limit",
    "parallelism",
    "run_mode",
    "scale_gpus",
    "scale_gpu_model",
    "scale_nodes",
    "priority",
    NULL,
};

int api_job_spec(json_t *body, bool partial, json_t **ret_spec, struct loom_err *err)
{
    const char *name;
    if (loom_json_check_fields(body, job_fields, err) < 0 ||
        (!partial && api_body_name(body, &name, err) < 0))
        return -1;
    _cleanup_json_ json_t *out = json_object();
    if (check_run_fields(body, out, err) < 0 || check_job_fields(body, out, err) < 0)
        return -1;
    if (!partial) {
        if (!json_object_get(out, "image_reference"))
            return loom_err_set(err, LOOM_EINVAL, "field \"image_reference\": is required");
        job_defaults(out);
    }
    *ret_spec = TAKE_PTR(out);
    return 0;
}

int api_jobrun_spec(json_t *body, const json_t *job_spec, json_t **ret_spec, struct loom_err *err)
{
    const char *name;
    if (loom_json_check_fields(body, jobrun_fields, err) < 0 || api_body_name(body, &name, err) < 0)
        return -1;
    _cleanup_json_ json_t *given = json_object();
    if (check_run_fields(body, given, err) < 0 || check_job_fields(body, given, err) < 0)
        return -1;
    _cleanup_json_ json_t *out = job_spec ? json_deep_copy(job_spec) : json_object();
    json_object_update(out, given);
    if (!json_object_get(out, "image_reference"))
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"image_reference\": is required unless job_name is given");
    job_defaults(out);
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

static const char *const app_fields[] = {
    "name",
    "image_reference",
    "image_port",
    "run_commands",
    "run_arguments",
    "run_env_variables",
    "scale_min_instances",
    "scale_max_instances",
    "scale_concurrency",
    "scale_cpu_limit",
    "scale_memory_limit",
    "scale_gpus",
    "scale_gpu_model",
    NULL,
};

int api_app_spec(json_t *body, bool partial, json_t **ret_spec, struct loom_err *err)
{
    const char *name;
    if (loom_json_check_fields(body, app_fields, err) < 0 ||
        (!partial && api_body_name(body, &name, err) < 0))
        return -1;
    _cleanup_json_ json_t *out = json_object();
    if (check_run_fields(body, out, err) < 0 ||
        copy_int(body, out, "image_port", 1, 65535, err) < 0 ||
        copy_int(body, out, "scale_min_instances", 0, 1000, err) < 0 ||
        copy_int(body, out, "scale_max_instances", 1, 1000, err) < 0 ||
        copy_int(body, out, "scale_concurrency", 1, 1000, err) < 0)
        return -1;
    if (!partial) {
        if (!json_object_get(out, "image_reference"))
            return loom_err_set(err, LOOM_EINVAL, "field \"image_reference\": is required");
        set_default(out, "image_port", json_integer(8080));
        set_default(out, "run_commands", json_array());
        set_default(out, "run_arguments", json_array());
        set_default(out, "run_env_variables", json_array());
        set_default(out, "scale_min_instances", json_integer(0));
        set_default(out, "scale_max_instances", json_integer(10));
        set_default(out, "scale_concurrency", json_integer(100));
        set_default(out, "scale_cpu_limit", json_string("1"));
        set_default(out, "scale_memory_limit", json_string("4G"));
        json_int_t mn = json_integer_value(json_object_get(out, "scale_min_instances"));
        json_int_t mx = json_integer_value(json_object_get(out, "scale_max_instances"));
        if (mn > mx)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"scale_min_instances\": %lld is more than "
                                "scale_max_instances (%lld)",
                                (long long)mn, (long long)mx);
    }
    *ret_spec = TAKE_PTR(out);
    return 0;
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
