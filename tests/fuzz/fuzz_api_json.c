/* libFuzzer target for loom-api's request decoding: the bytes are parsed as
 * JSON the way the API parses a body, then handed to every validator in
 * services/api/spec.c (apps, jobs, job runs with and without a job spec,
 * app PATCH merges, secret and config map data and secret formats, names,
 * array specs, cpu). A validator must
 * refuse with a message or return a spec; it must never crash, leak or read
 * out of bounds. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/api/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_spec(int rc, json_t *spec, const struct loom_err *err)
{
    /* the contract: a spec exactly on success, a message on failure */
    if (rc == 0 && !spec)
        abort();
    if (rc < 0 && (spec || err->msg[0] == '\0'))
        abort();
    json_decref(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!body)
        return 0;
    if (!json_is_object(body)) {
        json_decref(body);
        return 0;
    }
    struct loom_err err = LOOM_ERR_INIT;
    json_t *spec = NULL;
    int rc;

    rc = api_app_spec(body, false, &spec, &err);
    check_spec(rc, spec, &err);
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = api_app_spec(body, true, &spec, &err);
    check_spec(rc, spec, &err);

    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = api_job_spec(body, false, &spec, &err);
    json_t *job = rc == 0 ? json_incref(spec) : NULL;
    check_spec(rc, spec, &err);
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = api_job_spec(body, true, &spec, &err);
    check_spec(rc, spec, &err);

    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = api_jobrun_spec(body, NULL, &spec, &err);
    check_spec(rc, spec, &err);
    if (job) {
        /* a job run from a job: the body overrides the job's spec */
        err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
        rc = api_jobrun_spec(body, job, &spec, &err);
        check_spec(rc, spec, &err);
        json_decref(job);
    }

    /* a PATCH: the body validated as a patch, merged over a full app spec
     * made from the same body (or a minimal one), validated whole */
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    json_t *base = NULL, *patch = NULL;
    if (api_app_spec(body, false, &base, &err) < 0) {
        json_t *min = json_pack("{s:s,s:s}", "name", "web", "image_reference", "a:1");
        err = (struct loom_err)LOOM_ERR_INIT;
        if (api_app_spec(min, false, &base, &err) < 0)
            abort();
        json_decref(min);
    }
    err = (struct loom_err)LOOM_ERR_INIT;
    if (api_app_spec(body, true, &patch, &err) == 0) {
        json_t *merged = api_spec_merge(base, patch, body);
        json_object_set_new(merged, "name", json_string("web"));
        err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
        rc = api_app_spec(merged, false, &spec, &err);
        check_spec(rc, spec, &err);
        json_decref(merged);
        json_decref(patch);
    }
    json_decref(base);

    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = api_data_map(body, &spec, &err);
    if (rc == 0) {
        /* the secret formats over the same data */
        static const char *const formats[] = {"generic", "registry", "tls", "other"};
        for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
            struct loom_err ferr = LOOM_ERR_INIT;
            if (api_secret_data(formats[i], spec, &ferr) < 0 && ferr.msg[0] == '\0')
                abort();
        }
    }
    check_spec(rc, spec, &err);

    const char *name = NULL;
    err = (struct loom_err)LOOM_ERR_INIT;
    (void)api_body_name(body, &name, &err);

    const char *s = json_string_value(json_object_get(body, "scale_array_spec"));
    if (s) {
        char *canon = NULL, *mr = NULL;
        int64_t n = 0;
        err = (struct loom_err)LOOM_ERR_INIT;
        if (api_array_spec(s, &canon, &mr, &n, &err) == 0) {
            /* the multirange must read back as the canonical spec */
            char *back = api_multirange_to_spec(mr);
            if (!back || strcmp(back, canon) != 0)
                abort();
            free(back);
            free(canon);
            free(mr);
        }
    }
    s = json_string_value(json_object_get(body, "scale_cpu_limit"));
    if (s) {
        int64_t m;
        (void)api_parse_cpu(s, &m);
    }
    json_decref(body);
    return 0;
}
