/* JSON helpers over jansson, for decoding request bodies with field-level
 * validation messages: `field "image_port": must be an integer from 1 to 65535`. */
#ifndef LOOM_JSON_H
#define LOOM_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"

static inline void loom_json_decrefp(json_t **j)
{
    if (*j)
        json_decref(*j);
}
#define _cleanup_json_ __attribute__((cleanup(loom_json_decrefp)))

/* Parses text that must be one JSON object (max depth and size are the
 * caller's: bodies are capped before this). */
json_t *loom_json_parse_object(const char *text, size_t len, struct loom_err *err);

/* Reads a file that must hold one JSON object (NULL with err otherwise). */
json_t *loom_json_read_file(const char *path, struct loom_err *err);
/* Refuses members not in allowed (NULL-terminated): `unknown field "x"`. */
int loom_json_check_fields(json_t *obj, const char *const *allowed, struct loom_err *err);

/* Each getter: a missing (or null) member leaves *ret untouched and returns 0
 * unless required; a present member of the wrong type or out of range is an
 * LOOM_EINVAL error naming the field. *ret for strings points into obj. */
int loom_json_get_string(json_t *obj, const char *field, bool required, size_t max_len,
                         const char **ret, struct loom_err *err);
int loom_json_get_int(json_t *obj, const char *field, bool required, int64_t min, int64_t max,
                      int64_t *ret, struct loom_err *err);
int loom_json_get_bool(json_t *obj, const char *field, bool required, bool *ret,
                       struct loom_err *err);
/* An array of at most max_items strings each at most max_len bytes; *ret
 * points into obj (NULL when absent). */
int loom_json_get_string_array(json_t *obj, const char *field, bool required, size_t max_items,
                               size_t max_len, json_t **ret, struct loom_err *err);

/* Serializes compactly; the caller frees. */
char *loom_json_dumps(const json_t *j);

#endif
