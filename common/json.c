#include "json.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "util.h"

json_t *loom_json_parse_object(const char *text, size_t len, struct loom_err *err)
{
    json_error_t jerr;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        loom_err_set(err, LOOM_EINVAL, "invalid JSON at line %d column %d: %s", jerr.line,
                     jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        loom_err_set(err, LOOM_EINVAL, "expected a JSON object");
        return NULL;
    }
    return j;
}

int loom_json_check_fields(json_t *obj, const char *const *allowed, struct loom_err *err)
{
    const char *key;
    json_t *v = NULL;
    json_object_foreach(obj, key, v)
    {
        (void)v;
        bool ok = false;
        for (const char *const *a = allowed; *a; a++) {
            if (strcmp(*a, key) == 0) {
                ok = true;
                break;
            }
        }
        if (!ok)
            return loom_err_set(err, LOOM_EINVAL, "unknown field \"%s\"", key);
    }
    return 0;
}

/* The member, NULL when absent or null; -1 when absent but required. */
static int get_member(json_t *obj, const char *field, bool required, json_t **ret,
                      struct loom_err *err)
{
    json_t *v = obj ? json_object_get(obj, field) : NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": required", field);
        *ret = NULL;
        return 0;
    }
    *ret = v;
    return 0;
}

int loom_json_get_string(json_t *obj, const char *field, bool required, size_t max_len,
                         const char **ret, struct loom_err *err)
{
    json_t *v = NULL;
    if (get_member(obj, field, required, &v, err) < 0)
        return -1;
    if (!v)
        return 0;
    if (!json_is_string(v))
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be a string", field);
    size_t len = json_string_length(v);
    if (max_len && len > max_len)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be at most %zu bytes", field,
                            max_len);
    if (strlen(json_string_value(v)) != len)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must not contain NUL characters",
                            field);
    *ret = json_string_value(v);
    return 0;
}

int loom_json_get_int(json_t *obj, const char *field, bool required, int64_t min, int64_t max,
                      int64_t *ret, struct loom_err *err)
{
    json_t *v = NULL;
    if (get_member(obj, field, required, &v, err) < 0)
        return -1;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"%s\": must be an integer from %" PRId64 " to %" PRId64, field,
                            min, max);
    *ret = json_integer_value(v);
    return 0;
}

int loom_json_get_bool(json_t *obj, const char *field, bool required, bool *ret,
                       struct loom_err *err)
{
    json_t *v = NULL;
    if (get_member(obj, field, required, &v, err) < 0)
        return -1;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be true or false", field);
    *ret = json_is_true(v);
    return 0;
}

int loom_json_get_string_array(json_t *obj, const char *field, bool required, size_t max_items,
                               size_t max_len, json_t **ret, struct loom_err *err)
{
    json_t *v = NULL;
    if (get_member(obj, field, required, &v, err) < 0)
        return -1;
    if (!v) {
        *ret = NULL;
        return 0;
    }
    if (!json_is_array(v))
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must be an array of strings", field);
    if (max_items && json_array_size(v) > max_items)
        return loom_err_set(err, LOOM_EINVAL, "field \"%s\": must have at most %zu items", field,
                            max_items);
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item))
            return loom_err_set(err, LOOM_EINVAL, "field \"%s\": item %zu must be a string", field,
                                i);
        size_t len = json_string_length(item);
        if (max_len && len > max_len)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s\": item %zu must be at most %zu bytes", field, i,
                                max_len);
        if (strlen(json_string_value(item)) != len)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"%s\": item %zu must not contain NUL characters", field, i);
    }
    *ret = v;
    return 0;
}

char *loom_json_dumps(const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        abort();
    return s;
}

json_t *loom_json_read_file(const char *path, struct loom_err *err)
{
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (loom_read_file(path, &text, &len, err) < 0)
        return NULL;
    json_t *j = loom_json_parse_object(text, len, err);
    if (!j)
        loom_err_wrap(err, "%s", path);
    return j;
}
