/* What a spec's references to secrets and config maps hold, read now. */
#include "refs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "json.h"
#include "secretbox.h"

/* Loads a secret's data. 1 with why filled when it is missing or does not
 * open (the instance fails), -1 on a database error (try again later). */
static int load_secret(struct loom_db *db, const char *project_id, const char *name,
                       json_t **ret_data, char ret_format[32], char *why, size_t why_len,
                       struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err, "SELECT format, data_enc FROM secrets WHERE project_id = $1::bigint AND name = $2",
        project_id, name);
    if (!res)
        return -1;
    if (PQntuples(res) == 0) {
        snprintf(why, why_len, "secret \"%.200s\" not found", name);
        return 1;
    }
    size_t len = 0;
    unsigned char *sealed = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, 1), &len);
    if (!sealed)
        abort();
    char aad[512];
    loom_secretbox_aad(project_id, name, aad, sizeof(aad));
    struct loom_err oerr = LOOM_ERR_INIT;
    _cleanup_free_ char *plain = NULL;
    int rc = loom_secretbox_open(sealed, len, aad, &plain, &oerr);
    PQfreemem(sealed);
    if (rc < 0) {
        snprintf(why, why_len, "secret \"%.200s\" cannot be opened: %.200s", name, oerr.msg);
        return 1;
    }
    json_t *data = loom_json_parse_object(plain, strlen(plain), NULL);
    if (!data) {
        snprintf(why, why_len, "secret \"%.200s\" holds no JSON object", name);
        return 1;
    }
    if (ret_format)
        snprintf(ret_format, 32, "%s", PQgetvalue(res, 0, 0));
    *ret_data = data;
    return 0;
}

/* Like load_secret, for a config map. */
static int load_config_map(struct loom_db *db, const char *project_id, const char *name,
                           json_t **ret_data, char *why, size_t why_len, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err, "SELECT data::text FROM config_maps WHERE project_id = $1::bigint AND name = $2",
        project_id, name);
    if (!res)
        return -1;
    const char *text = PQntuples(res) ? PQgetvalue(res, 0, 0) : NULL;
    json_t *data = text ? loom_json_parse_object(text, strlen(text), NULL) : NULL;
    if (!data) {
        snprintf(why, why_len, "config map \"%.200s\" not found", name);
        return 1;
    }
    *ret_data = data;
    return 0;
}

int loom_refs_load(struct loom_db *db, const char *project_id, bool secret, const char *name,
                   json_t **ret_data, char ret_format[32], char *why, size_t why_len,
                   struct loom_err *err)
{
    if (secret)
        return load_secret(db, project_id, name, ret_data, ret_format, why, why_len, err);
    return load_config_map(db, project_id, name, ret_data, why, why_len, err);
}

/* The host of a registry server or image reference: what comes before the
 * first '/', after any scheme. */
static void host_of(const char *s, char *out, size_t len)
{
    const char *p = strstr(s, "://");
    p = p ? p + 3 : s;
    size_t n = strcspn(p, "/");
    snprintf(out, len, "%.*s", (int)n, p);
}

int loom_refs_registry_auth(struct loom_db *db, const char *project_id, const char *name,
                            const char *host, char **ret_auth, char *why, size_t why_len,
                            struct loom_err *err)
{
    _cleanup_json_ json_t *data = NULL;
    char format[32] = "";
    int rc = load_secret(db, project_id, name, &data, format, why, why_len, err);
    if (rc != 0)
        return rc;
    const char *server = json_string_value(json_object_get(data, "server"));
    const char *user = json_string_value(json_object_get(data, "username"));
    const char *pass = json_string_value(json_object_get(data, "password"));
    if (strcmp(format, "registry") != 0 || !server || !user || !pass) {
        snprintf(why, why_len,
                 "secret \"%.200s\" is not a registry secret (server, username, "
                 "password)",
                 name);
        return 1;
    }
    char h1[256], h2[256];
    host_of(host, h1, sizeof(h1));
    host_of(server, h2, sizeof(h2));
    char *auth = NULL;
    if (strcasecmp(h1, h2) == 0 && asprintf(&auth, "%s:%s", user, pass) < 0)
        abort();
    *ret_auth = auth;
    return 0;
}

static void env_pair(json_t *env, const char *name, const char *value)
{
    json_array_append_new(env, json_pack("[ss]", name, value));
}

int loom_refs_env(struct loom_db *db, const char *project_id, json_t *items, json_t *env, char *why,
                  size_t why_len, struct loom_err *err)
{
    size_t i;
    json_t *v;
    json_array_foreach(items, i, v)
    {
        const char *type = json_string_value(json_object_get(v, "type"));
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *ref = json_string_value(json_object_get(v, "reference"));
        const char *key = json_string_value(json_object_get(v, "key"));
        const char *prefix = json_string_value(json_object_get(v, "prefix"));
        if (!type || strcmp(type, "literal") == 0) {
            const char *value = json_string_value(json_object_get(v, "value"));
            if (name && value)
                env_pair(env, name, value);
            continue;
        }
        bool secret = strncmp(type, "secret_", 7) == 0;
        bool full = strstr(type, "_full_reference") != NULL;
        if (!ref || (!secret && strncmp(type, "config_map_", 11) != 0) ||
            (!full && (!key || !name))) {
            snprintf(why, why_len, "invalid run_env_variables item %zu", i);
            return 1;
        }
        _cleanup_json_ json_t *data = NULL;
        int rc = loom_refs_load(db, project_id, secret, ref, &data, NULL, why, why_len, err);
        if (rc != 0)
            return rc;
        if (full) {
            const char *k;
            json_t *x;
            json_object_foreach(data, k, x)
            {
                if (!json_is_string(x))
                    continue;
                char *n = NULL;
                if (asprintf(&n, "%s%s", prefix ? prefix : "", k) < 0)
                    abort();
                env_pair(env, n, json_string_value(x));
                free(n);
            }
        } else {
            const char *value = json_string_value(json_object_get(data, key));
            if (!value) {
                snprintf(why, why_len, "key \"%.100s\" not found in %s \"%.200s\"", key,
                         secret ? "secret" : "config map", ref);
                return 1;
            }
            env_pair(env, name, value);
        }
    }
    return 0;
}
