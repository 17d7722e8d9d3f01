/* libFuzzer target for loom-api's request decoding: the bytes are parsed as
 * JSON the way the API parses a body, then handed to every validator the API
 * calls (common/spec.c for apps, jobs, job runs with and without a job spec
 * and app PATCH merges, with the decode of each spec it accepts;
 * services/api/data.c for secret and config map data and secret formats and
 * names; common/quantity.c for cpu and sizes). A validator must refuse with
 * a message or return a spec; it must never crash, leak or read out of
 * bounds, and a spec it accepts must decode. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arrayspec.h"
#include "quantity.h"
#include "services/api/api.h"
#include "spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The contract: a spec exactly on success, a message on failure; a spec
 * of kind k that was validated whole (complete) decodes. */
static void check_kind(int rc, json_t *spec, const struct loom_err *err, int k, bool complete)
{
    if (rc == 0 && !spec)
        abort();
    if (rc < 0 && (spec || err->msg[0] == '\0'))
        abort();
    if (rc == 0 && complete) {
        struct loom_spec s;
        struct loom_err derr = LOOM_ERR_INIT;
        if (loom_spec_decode((enum loom_kind)k, spec, &s, &derr) < 0)
            abort();
        loom_spec_release(&s);
    }
    json_decref(spec);
}

static void check_spec(int rc, json_t *spec, const struct loom_err *err)
{
    check_kind(rc, spec, err, LOOM_KIND_JOB, false);
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

    rc = loom_spec_validate(LOOM_KIND_APP, body, false, &spec, &err);
    check_kind(rc, spec, &err, LOOM_KIND_APP, true);
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = loom_spec_validate(LOOM_KIND_APP, body, true, &spec, &err);
    check_spec(rc, spec, &err);

    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = loom_spec_validate(LOOM_KIND_JOB, body, false, &spec, &err);
    json_t *job = rc == 0 ? json_incref(spec) : NULL;
    check_kind(rc, spec, &err, LOOM_KIND_JOB, true);
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = loom_spec_validate(LOOM_KIND_JOB, body, true, &spec, &err);
    check_spec(rc, spec, &err);

    struct loom_arrayspec indices = {0};
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    rc = loom_spec_jobrun(NULL, body, &spec, &indices, &err);
    if (rc == 0 && indices.count < 1)
        abort();
    loom_arrayspec_release(&indices);
    check_kind(rc, spec, &err, LOOM_KIND_JOBRUN, true);
    if (job) {
        /* a job run from a job: the body overrides the job's spec */
        err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
        rc = loom_spec_jobrun(job, body, &spec, &indices, &err);
        loom_arrayspec_release(&indices);
        check_kind(rc, spec, &err, LOOM_KIND_JOBRUN, true);
        json_decref(job);
    }

    /* a PATCH: the body validated as a patch, merged over a full app spec
     * made from the same body (or a minimal one), validated whole */
    err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
    json_t *base = NULL, *patch = NULL;
    if (loom_spec_validate(LOOM_KIND_APP, body, false, &base, &err) < 0) {
        json_t *min = json_pack("{s:s,s:s}", "name", "web", "image_reference", "a:1");
        err = (struct loom_err)LOOM_ERR_INIT;
        if (loom_spec_validate(LOOM_KIND_APP, min, false, &base, &err) < 0)
            abort();
        json_decref(min);
    }
    err = (struct loom_err)LOOM_ERR_INIT;
    if (loom_spec_validate(LOOM_KIND_APP, body, true, &patch, &err) == 0) {
        json_t *merged = loom_spec_merge(base, patch, body);
        err = (struct loom_err)LOOM_ERR_INIT, spec = NULL;
        rc = loom_spec_validate(LOOM_KIND_APP, merged, false, &spec, &err);
        check_kind(rc, spec, &err, LOOM_KIND_APP, true);
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
        struct loom_arrayspec as = {0};
        err = (struct loom_err)LOOM_ERR_INIT;
        if (loom_arrayspec_parse(s, LOOM_ARRAY_MAX_COUNT, &as, &err) == 0) {
            /* the multirange must read back as the canonical spec */
            char *canon = loom_arrayspec_format(&as);
            char *mr = loom_arrayspec_to_multirange(&as);
            char *back = api_multirange_to_spec(mr);
            if (!canon || !back || strcmp(back, canon) != 0)
                abort();
            free(back);
            free(canon);
            free(mr);
        }
        loom_arrayspec_release(&as);
    }
    /* cpu and sizes: a value parsed prints back as text that parses to it */
    s = json_string_value(json_object_get(body, "scale_cpu_limit"));
    int64_t v, back;
    char text[32];
    if (s && loom_cpu_parse(s, &v, NULL) == 0) {
        loom_cpu_format(v, text, sizeof(text));
        if (loom_cpu_parse(text, &back, NULL) < 0 || back != v)
            abort();
    }
    s = json_string_value(json_object_get(body, "scale_memory_limit"));
    if (s && loom_size_parse(s, LOOM_SIZE_ANY, &v, NULL) == 0) {
        loom_size_format(v, text, sizeof(text));
        if (loom_size_parse(text, LOOM_SIZE_ANY, &back, NULL) < 0 || back != v)
            abort();
    }
    json_decref(body);
    return 0;
}
