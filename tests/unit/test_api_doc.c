/* loom-api: /openapi.json describes exactly the routes served; secrets
 * encryption round-trips and refuses tampering; secret/config map data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "secretbox.h"
#include "services/api/api.h"

/* "/v1/projects/{project}/apps/{name}" -> "/v1/projects/{}/apps/{}" */
static void route_form(const char *path, char *out, size_t outsz)
{
    size_t o = 0;
    for (const char *p = path; *p && o + 3 < outsz; p++) {
        if (*p == '{') {
            out[o++] = '{';
            out[o++] = '}';
            while (*p && *p != '}')
                p++;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static void lower(const char *s, char *out, size_t outsz)
{
    size_t i = 0;
    for (; s[i] && i + 1 < outsz; i++)
        out[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] - 'A' + 'a' : s[i]);
    out[i] = '\0';
}

static void test_openapi_matches_routes(void **state)
{
    (void)state;
    const char *text = api_openapi_text();
    assert_non_null(text);
    json_error_t e;
    json_t *doc = json_loads(text, 0, &e);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "openapi")), "3.1.0");
    json_t *paths = json_object_get(doc, "paths");

    /* every route is documented */
    for (size_t i = 0; i < api_nroutes; i++) {
        bool found = false;
        const char *p;
        json_t *item;
        json_object_foreach(paths, p, item)
        {
            char form[256], m[16];
            route_form(p, form, sizeof(form));
            lower(api_routes[i].method, m, sizeof(m));
            if (strcmp(form, api_routes[i].pattern) == 0 && json_object_get(item, m))
                found = true;
        }
        if (!found)
            fail_msg("route %s %s is not in openapi.json", api_routes[i].method,
                     api_routes[i].pattern);
    }
    /* every documented operation is served, and its $refs resolve */
    json_t *schemas = json_object_get(json_object_get(doc, "components"), "schemas");
    const char *p;
    json_t *item;
    size_t nops = 0;
    json_object_foreach(paths, p, item)
    {
        const char *m;
        json_t *op;
        json_object_foreach(item, m, op)
        {
            char form[256];
            route_form(p, form, sizeof(form));
            bool found = false;
            for (size_t i = 0; i < api_nroutes; i++) {
                char rm[16];
                lower(api_routes[i].method, rm, sizeof(rm));
                if (strcmp(form, api_routes[i].pattern) == 0 && strcmp(rm, m) == 0)
                    found = true;
            }
            if (!found)
                fail_msg("openapi.json has %s %s but no route serves it", m, p);
            nops++;
        }
    }
    assert_int_equal(nops, api_nroutes);
    /* each "#/components/schemas/X" named anywhere exists */
    const char *s = text;
    while ((s = strstr(s, "#/components/schemas/")) != NULL) {
        s += strlen("#/components/schemas/");
        char name[64];
        size_t n = strcspn(s, "\"");
        assert_true(n < sizeof(name));
        memcpy(name, s, n);
        name[n] = '\0';
        if (!json_object_get(schemas, name))
            fail_msg("schema %s is referenced but not defined", name);
    }
    json_decref(doc);
}

/* The properties of a schema, following allOf and $ref. */
static void collect_props(json_t *schemas, json_t *schema, json_t *into)
{
    const char *ref = json_string_value(json_object_get(schema, "$ref"));
    if (ref) {
        const char *name = strrchr(ref, '/') + 1;
        collect_props(schemas, json_object_get(schemas, name), into);
    }
    size_t i;
    json_t *part;
    json_array_foreach(json_object_get(schema, "allOf"), i, part)
    {
        collect_props(schemas, part, into);
    }
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(schema, "properties"), k, v)
    {
        if (!json_is_true(json_object_get(v, "readOnly")))
            json_object_set(into, k, v);
    }
}

/* Every member a validator accepts is documented in the request schema,
 * and every documented writable member is accepted. */
static void check_fields(json_t *schemas, const char *schema, const char *const *fields)
{
    json_t *props = json_object();
    collect_props(schemas, json_object_get(schemas, schema), props);
    for (const char *const *f = fields; *f; f++)
        if (!json_object_get(props, *f))
            fail_msg("field %s is accepted but not in schema %s", *f, schema);
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v)
    {
        (void)v;
        bool found = false;
        for (const char *const *f = fields; *f; f++)
            found = found || strcmp(*f, k) == 0;
        if (!found)
            fail_msg("schema %s documents %s, which the API refuses", schema, k);
    }
    json_decref(props);
}

static void test_openapi_fields(void **state)
{
    (void)state;
    json_t *doc = json_loads(api_openapi_text(), 0, NULL);
    assert_non_null(doc);
    json_t *schemas = json_object_get(json_object_get(doc, "components"), "schemas");
    check_fields(schemas, "App", loom_spec_field_names(LOOM_KIND_APP));
    check_fields(schemas, "Job", loom_spec_field_names(LOOM_KIND_JOB));
    check_fields(schemas, "JobRunCreate", loom_spec_field_names(LOOM_KIND_JOBRUN));
    check_fields(schemas, "Function", loom_spec_field_names(LOOM_KIND_FUNCTION));
    json_decref(doc);
}

static void test_secret_crypto(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    unsigned char *sealed = NULL;
    size_t n = 0;
    /* without a key secrets are disabled, not stored in the clear */
    assert_int_equal(loom_secretbox_set_key(NULL, &err), 0);
    assert_int_equal(loom_secretbox_seal("x", 1, "a", &sealed, &n, &err), -1);
    assert_int_equal(err.code, LOOM_EUNAVAIL);
    assert_int_equal(loom_secretbox_set_key("xyz", &err), -1);
    assert_int_equal(loom_secretbox_set_key(
                         "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", &err),
                     0);
    const char *plain = "{\"pass\":\"hunter2\"}";
    assert_int_equal(
        loom_secretbox_seal(plain, strlen(plain), "loom-secret/1/s1", &sealed, &n, &err), 0);
    assert_int_equal(n, 12 + strlen(plain) + 16);
    assert_null(memmem(sealed, n, "hunter2", 7));
    char *back = NULL;
    assert_int_equal(loom_secretbox_open(sealed, n, "loom-secret/1/s1", &back, &err), 0);
    assert_string_equal(back, plain);
    free(back);
    /* bound to its project and name */
    back = NULL;
    assert_int_equal(loom_secretbox_open(sealed, n, "loom-secret/2/s1", &back, &err), -1);
    assert_null(back);
    /* and to its bytes */
    sealed[14] ^= 1;
    assert_int_equal(loom_secretbox_open(sealed, n, "loom-secret/1/s1", &back, &err), -1);
    assert_int_equal(loom_secretbox_open(sealed, 10, "loom-secret/1/s1", &back, &err), -1);
    free(sealed);
    /* two seals of the same text differ (random nonce) */
    unsigned char *a = NULL, *b = NULL;
    size_t na, nb;
    assert_int_equal(loom_secretbox_seal("same", 4, "x", &a, &na, &err), 0);
    assert_int_equal(loom_secretbox_seal("same", 4, "x", &b, &nb, &err), 0);
    assert_int_equal(na, nb);
    assert_memory_not_equal(a, b, na);
    free(a);
    free(b);
}

static void test_data_map(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    json_t *out = NULL;
    json_t *b = json_loads("{\"data\":{\"a.b-c_D\":\"1\",\"x\":\"\"}}", 0, NULL);
    assert_int_equal(api_data_map(b, &out, &err), 0);
    assert_int_equal(json_object_size(out), 2);
    json_decref(out);
    json_decref(b);
    static const char *const bad[][2] = {
        {"{}", "\"data\""},
        {"{\"data\":[]}", "\"data\""},
        {"{\"data\":{\"a b\":\"1\"}}", "a b"},
        {"{\"data\":{\"\":\"1\"}}", "\"data\""},
        {"{\"data\":{\"k\":1}}", "data.k"},
        {"{\"data\":{\"k\":null}}", "data.k"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        b = json_loads(bad[i][0], 0, NULL);
        assert_non_null(b);
        out = NULL;
        loom_err_clear(&err);
        assert_int_equal(api_data_map(b, &out, &err), -1);
        if (!strstr(err.msg, bad[i][1]))
            fail_msg("%s: \"%s\" does not name %s", bad[i][0], err.msg, bad[i][1]);
        assert_null(out);
        json_decref(b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openapi_matches_routes),
        cmocka_unit_test(test_openapi_fields),
        cmocka_unit_test(test_secret_crypto),
        cmocka_unit_test(test_data_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
