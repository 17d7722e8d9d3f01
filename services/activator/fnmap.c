/* What a function call sends and what its answer becomes, as OpenWhisk web
 * actions do it. Pure: unit-tested without a runtime. */
#include "activator.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"

json_t *act_fn_params(const char *method, const char *path, json_t *query, json_t *headers,
                      const char *body, size_t len, const char *content_type)
{
    json_t *p = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(query, k, v)
    {
        json_object_set(p, k, v);
    }
    bool is_json = content_type && strncasecmp(content_type, "application/json", 16) == 0;
    json_t *parsed = len > 0 && is_json ? json_loadb(body, len, 0, NULL) : NULL;
    if (json_is_object(parsed)) {
        json_object_update(p, parsed);
    } else if (len > 0) {
        /* anything else reaches the function as text (JSON that is not an
         * object, a form, bytes that are not UTF-8 get replaced) */
        json_t *s = json_stringn(body, len);
        json_object_set_new(p, "__ow_body", s ? s : json_string("(a body that is not UTF-8)"));
    }
    json_decref(parsed);
    /* lower case, as OpenWhisk's web actions see it */
    char m[16];
    size_t i = 0;
    for (; method[i] && i < sizeof(m) - 1; i++)
        m[i] = (char)tolower((unsigned char)method[i]);
    m[i] = '\0';
    json_object_set_new(p, "__ow_method", json_string(m));
    json_object_set_new(p, "__ow_path", json_string(path));
    json_object_set_new(p, "__ow_headers", headers ? json_incref(headers) : json_object());
    return p;
}

void act_fn_reply_release(struct act_fn_reply *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->content_type);
    json_decref(r->headers);
    *r = (struct act_fn_reply){0};
}

/* A body member: text as it is, anything else as JSON. */
static char *body_text(json_t *b, bool *ret_json, size_t *ret_len)
{
    if (json_is_string(b)) {
        *ret_json = false;
        *ret_len = json_string_length(b);
        char *s = malloc(*ret_len + 1);
        if (!s)
            abort();
        memcpy(s, json_string_value(b), *ret_len + 1);
        return s;
    }
    *ret_json = true;
    char *s = json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        abort();
    *ret_len = strlen(s);
    return s;
}

int act_fn_reply_from_result(const char *text, size_t len, struct act_fn_reply *ret,
                             struct loom_err *err)
{
    _cleanup_json_ json_t *r = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    if (!r)
        return loom_err_set(err, LOOM_EINVAL, "the function's runtime answered something not JSON");
    struct act_fn_reply out = {.status = 200};
    json_t *status = json_object_get(r, "statusCode");
    json_t *headers = json_object_get(r, "headers");
    json_t *body = json_object_get(r, "body");
    bool web = json_is_object(r) && (status || headers || body);
    if (!web) {
        /* the result itself is the answer */
        bool is_json;
        out.body = body_text(r, &is_json, &out.len);
        out.content_type = strdup("application/json");
        *ret = out;
        return 0;
    }
    if (status) {
        json_int_t st = json_integer_value(status);
        if (!json_is_integer(status) || st < 100 || st > 599)
            return loom_err_set(err, LOOM_EINVAL,
                                "the function answered a statusCode that is not 100 to 599");
        out.status = (int)st;
    }
    if (headers && !json_is_object(headers))
        return loom_err_set(err, LOOM_EINVAL,
                            "the function answered headers that are not an object");
    const char *ct = NULL;
    if (headers) {
        out.headers = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(headers, k, v)
        {
            /* the server frames the answer itself */
            if (!json_is_string(v) || act_is_hop_header(k) || strchr(k, '\r') || strchr(k, '\n') ||
                strpbrk(json_string_value(v), "\r\n"))
                continue;
            if (strcasecmp(k, "content-type") == 0)
                ct = json_string_value(v);
            else
                json_object_set(out.headers, k, v);
        }
    }
    bool is_json = false;
    if (body && !json_is_null(body))
        out.body = body_text(body, &is_json, &out.len);
    out.content_type = strdup(ct ? ct : is_json ? "application/json" : "text/plain; charset=utf-8");
    if (!out.content_type)
        abort();
    *ret = out;
    return 0;
}
