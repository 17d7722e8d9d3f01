/* Names and the data of secrets and config maps: every message names the
 * field, so that a user can fix the request without reading the code. (The
 * specs of apps, jobs and runs are checked by common/spec.c.) */
#include <ctype.h>
#include <string.h>

#include "api.h"
#include "arrayspec.h"
#include "cleanup.h"
#include "json.h"
#include "spec.h"
#include "util.h"

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
        if (!loom_spec_is_key(k))
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
