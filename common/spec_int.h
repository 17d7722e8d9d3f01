/* Inside the spec model: the member validators and readers the field table
 * (spec.c) names, written in spec_check.c. Not for other modules. */
#ifndef LOOM_SPEC_INT_H
#define LOOM_SPEC_INT_H

#include "spec.h"

/* Rewrites a message about a member of a nested object so that it names the
 * whole path: `field "name": ...` under prefix "x[0]" is `field "x[0].name": ...`. */
int loom_spec_nested_err(struct loom_err *err, const char *prefix, const struct loom_err *sub);

/* STRING extras: run after the string was copied into out. */
int loom_spec_check_image(json_t *body, json_t *out, const struct loom_field *f,
                          struct loom_err *err);
int loom_spec_check_reference(json_t *body, json_t *out, const struct loom_field *f,
                              struct loom_err *err);
int loom_spec_check_gpu_model(json_t *body, json_t *out, const struct loom_field *f,
                              struct loom_err *err);
int loom_spec_check_array(json_t *body, json_t *out, const struct loom_field *f,
                          struct loom_err *err);
/* CPU extra: one of the field's choices (Code Engine's vCPU sizes). */
int loom_spec_check_choice(json_t *body, json_t *out, const struct loom_field *f,
                           struct loom_err *err);

/* STRING extras of functions. */
int loom_spec_check_runtime(json_t *body, json_t *out, const struct loom_field *f,
                            struct loom_err *err);
int loom_spec_check_identifier(json_t *body, json_t *out, const struct loom_field *f,
                               struct loom_err *err);
int loom_spec_check_code(json_t *body, json_t *out, const struct loom_field *f,
                         struct loom_err *err);

/* OBJECT validators. */
int loom_spec_check_env(json_t *body, json_t *out, const struct loom_field *f,
                        struct loom_err *err);
int loom_spec_check_mounts(json_t *body, json_t *out, const struct loom_field *f,
                           struct loom_err *err);
int loom_spec_check_selector(json_t *body, json_t *out, const struct loom_field *f,
                             struct loom_err *err);
int loom_spec_check_probe(json_t *body, json_t *out, const struct loom_field *f,
                          struct loom_err *err);
/* OBJECT reader: a probe into struct loom_probe. */
int loom_spec_decode_probe(json_t *v, void *dst, struct loom_err *err);

/* The cpu:memory combinations of a kind, as Code Engine allows them. */
struct loom_shapes {
    const int64_t *cpus; /* millicores, ascending */
    size_t ncpus;
    const int *ratios; /* GB per vCPU, the one to prefer first */
    size_t nratios;
    int64_t max_gb;
    const char *default_cpu, *default_memory;
    const char *ratio_text;      /* "2, 4 or 8" */
    const char *memory_examples; /* "0.5G, 1G, ..." */
};

/* Whole-spec checks (loom_spec_complete): a cpu:memory combination, with
 * the partner of one given alone filled in (neither: the defaults). */
int loom_spec_check_resources(json_t *spec, const struct loom_shapes *shapes, struct loom_err *err);

#endif
