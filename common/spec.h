/* The user's spec of a resource, as one typed model.
 *
 * One table lists every field of every kind (jobs, job runs, apps): its JSON
 * name (Code Engine's), its type and range, its default, the CLI flag that
 * sets it, its description, and the integer column the API stores it in
 * beside the JSON. That table drives
 *   - the API's validation, defaults and PATCH merge (loom_spec_validate,
 *     loom_spec_complete, loom_spec_merge),
 *   - the field lists and the OpenAPI schemas (loom_spec_field_names,
 *     loom_spec_schema),
 *   - the normalised columns the API writes (loom_spec_columns),
 *   - the CLI's flags (loom_spec_fields, flag and metavar),
 *   - and a decode into struct loom_spec, which the scheduler and the
 *     activator call once per row instead of reading JSON members by name.
 * A field is parsed, ranged and defaulted in this one place. */
#ifndef LOOM_SPEC_H
#define LOOM_SPEC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum loom_kind {
    LOOM_KIND_JOB,      /* a saved job: the spec its runs start from */
    LOOM_KIND_JOBRUN,   /* one run of an array of indices */
    LOOM_KIND_APP,      /* a long-running HTTP service */
    LOOM_KIND_FUNCTION, /* a few files of code, invoked over HTTP */
    LOOM_KIND_BUILD,    /* a saved build: source, strategy and output image */
    LOOM_KIND_BUILDRUN, /* one run of a build: source to a pushed image */
    LOOM_KIND_COUNT,
};
#define LOOM_K_JOB (1u << LOOM_KIND_JOB)
#define LOOM_K_JOBRUN (1u << LOOM_KIND_JOBRUN)
#define LOOM_K_APP (1u << LOOM_KIND_APP)
#define LOOM_K_JOBS (LOOM_K_JOB | LOOM_K_JOBRUN)
#define LOOM_K_FUNCTION (1u << LOOM_KIND_FUNCTION)
#define LOOM_K_RUNS (LOOM_K_JOBS | LOOM_K_APP) /* the kinds that run an image */
#define LOOM_K_BUILD (1u << LOOM_KIND_BUILD)
#define LOOM_K_BUILDRUN (1u << LOOM_KIND_BUILDRUN)
#define LOOM_K_BUILDS (LOOM_K_BUILD | LOOM_K_BUILDRUN)

/* "job", "job run", "app", "function", "build", "build run": for messages. */
const char *loom_kind_what(enum loom_kind k);

enum loom_ftype {
    LOOM_FT_STRING,  /* max: length; check: further rules */
    LOOM_FT_INT,     /* min..max */
    LOOM_FT_BOOL,    /* true or false */
    LOOM_FT_ENUM,    /* one of choices; decoded to its index */
    LOOM_FT_CPU,     /* vCPU text (common/quantity.h), stored canonical; decoded to millicores */
    LOOM_FT_SIZE,    /* memory or storage text (M, G, Mi, Gi); decoded to bytes; max: bytes */
    LOOM_FT_STRINGS, /* array of at most min strings of at most max bytes */
    LOOM_FT_OBJECT,  /* any other shape: check validates it, decode reads it */
};

/* What the field's default is when a create does not give it. */
enum loom_fdef {
    LOOM_DEF_NONE,    /* none: absent (decode gives 0 / NULL / the implied value) */
    LOOM_DEF_VALUE,   /* def, a JSON text, filled in */
    LOOM_DEF_FOLLOWS, /* the value of the field named by def; it follows that
                       * field in a PATCH that changes only that field */
    LOOM_DEF_IMPLIED, /* def is what decode gives when absent; nothing is filled in,
                       * so the stored spec says only what the user chose */
};

struct loom_field;
/* Validates body's member f->name (present and not null) and sets the
 * normalised value in out. The message names the field. */
typedef int (*loom_field_check_fn)(json_t *body, json_t *out, const struct loom_field *f,
                                   struct loom_err *err);
/* Reads a validated member v (NULL: absent) into dst. */
typedef int (*loom_field_decode_fn)(json_t *v, void *dst, struct loom_err *err);

struct loom_field {
    const char *name; /* the JSON member */
    enum loom_ftype type;
    unsigned kinds; /* LOOM_K_* */
    int64_t min, max;
    const char *const *choices; /* ENUM: NULL-terminated */
    enum loom_fdef def_kind;
    const char *def;
    loom_field_check_fn check;   /* OBJECT: the validator; STRING: extra rules */
    loom_field_decode_fn decode; /* OBJECT: the reader (NULL: the JSON is kept as is) */
    size_t offset;               /* where decode puts it in struct loom_spec */
    const char *column;          /* the normalised integer column the API writes, or NULL */
    const char *flag;            /* the CLI flag (without "--"), or NULL */
    const char *metavar;         /* what the flag takes: "VCPU", "N" */
    const char *help;            /* one line, for OpenAPI and --help */
    const char *schema;          /* OBJECT: its OpenAPI schema, with ' for " */
};

/* The whole table, in the order fields are checked and listed. */
extern const struct loom_field loom_spec_table[];
extern const size_t loom_spec_table_len;

static inline bool loom_field_in(const struct loom_field *f, enum loom_kind k)
{
    return (f->kinds & (1u << k)) != 0;
}

/* The field named name in kind k, or NULL. */
const struct loom_field *loom_spec_field(enum loom_kind k, const char *name);

/* The members a request body of kind k may have ("name", "job_name" for a
 * job run, "build_name" for a build run, then the table's fields of k),
 * NULL-terminated; static storage. */
const char *const *loom_spec_field_names(enum loom_kind k);

/* Validates a request body of kind k. partial (a PATCH): only what is
 * present is checked and no default is filled. Otherwise the whole spec is
 * completed (loom_spec_complete). *ret_spec is a new object without "name"
 * (and "job_name"): each given field in its normal form. Nothing is written
 * to *ret_spec on failure; the message names the field. */
int loom_spec_validate(enum loom_kind k, json_t *body, bool partial, json_t **ret_spec,
                       struct loom_err *err);

/* Fills the defaults of a spec in place and runs the checks that need the
 * whole spec (min <= max, a cpu:memory combination, a daemon's fields...). */
int loom_spec_complete(enum loom_kind k, json_t *spec, struct loom_err *err);

/* A stored spec with a validated patch applied (a new object, to complete
 * and check again). raw is the request body: a member that is null there is
 * removed (as in a JSON merge patch, at the top level only), so that it
 * takes its default again or goes. A field defaulted from another (FOLLOWS)
 * follows that field when only that one changes, and a patch of only one of
 * scale_cpu_limit and scale_memory_limit drops the other, so that it gets
 * its partner anew; a new source (source_url or source_upload) replaces the
 * old one and its type. A run over a job or a build is the same merge. */
json_t *loom_spec_merge(const json_t *old, const json_t *patch, const json_t *raw);

/* A job run's spec: the body's fields (validated as for a PATCH) over the
 * job's spec (NULL: a run without a job), then completed. A daemon run may
 * not give scale_retry_limit or scale_max_execution_time. The run's indices
 * (the body's, else the job's, else "0") are parsed once, into
 * *ret_indices, and are not in *ret_spec: a run keeps them as its ranges. */
struct loom_arrayspec;
int loom_spec_jobrun(const json_t *job_spec, json_t *body, json_t **ret_spec,
                     struct loom_arrayspec *ret_indices, struct loom_err *err);

/* A build run's spec: the body's fields (validated as for a PATCH) over the
 * build's spec (NULL: a run without a build), then completed (its source
 * must then be whole: a git URL, or an upload). */
int loom_spec_buildrun(const json_t *build_spec, json_t *body, json_t **ret_spec,
                       struct loom_err *err);

/* Function code: at most this much, given as a data: URL in code_reference
 * (base64 makes it a third longer). */
#define LOOM_SPEC_MAX_CODE_BYTES (512 * 1024)
/* a data: URL of that much code, percent-encoded at worst; the decoded size
 * is what is checked against LOOM_SPEC_MAX_CODE_BYTES */
#define LOOM_SPEC_MAX_CODE_REFERENCE (LOOM_SPEC_MAX_CODE_BYTES * 3 + 256)

/* The code of a data: URL code_reference: its bytes (allocated) and
 * whether it is a tar.gz bundle (application/gzip) rather than one file
 * (text/plain, or no type). The message says what is wrong, without the
 * field's name. */
int loom_spec_code_decode(const char *ref, uint8_t **ret, size_t *ret_len, bool *ret_binary,
                          struct loom_err *err);

/* True for "sha256:" and 64 lowercase hex digits (an upload, stored code). */
bool loom_spec_is_digest(const char *s);

/* True for a key of a secret or config map: 1-253 of [-._a-zA-Z0-9]. */
bool loom_spec_is_key(const char *s);

/* ---- the decoded spec ------------------------------------------------------- */

enum loom_run_mode { LOOM_RUN_TASK, LOOM_RUN_DAEMON };
enum loom_placement { LOOM_PLACE_BINPACK, LOOM_PLACE_SPREAD };
enum loom_visibility { LOOM_VIS_PUBLIC, LOOM_VIS_PRIVATE, LOOM_VIS_PROJECT };
enum loom_source_type { LOOM_SOURCE_LOCAL, LOOM_SOURCE_GIT };
enum loom_strategy { LOOM_STRATEGY_DOCKERFILE, LOOM_STRATEGY_BUILDPACKS };
enum loom_output_type { LOOM_OUTPUT_IMAGE, LOOM_OUTPUT_BUNDLE };
enum loom_build_size { LOOM_SIZE_SMALL, LOOM_SIZE_MEDIUM, LOOM_SIZE_LARGE, LOOM_SIZE_XLARGE };

/* What a build size gives each of its steps: Code Engine's sizes. */
struct loom_build_resources {
    int64_t cpu_millis, memory_bytes, ephemeral_bytes;
};
const struct loom_build_resources *loom_build_size_resources(enum loom_build_size s);

struct loom_probe {
    bool set;
    bool http;
    const char *path; /* http: the path; "" for tcp */
    int64_t port;     /* 0: the app's port */
    int64_t initial_delay, interval, timeout, failure_threshold;
};

/* Every field of every kind, typed; those of other kinds stay zero. Strings
 * and arrays point into json, which the spec holds a reference to. */
struct loom_spec {
    enum loom_kind kind;
    json_t *json;
    /* what runs */
    const char *image;
    const char *image_secret; /* NULL: none */
    json_t *commands, *arguments;
    json_t *env;    /* run_env_variables, validated items */
    json_t *mounts; /* run_volume_mounts, validated items */
    int64_t cpu_millis, memory_bytes, ephemeral_bytes, gpus;
    const char *gpu_model; /* NULL: any */
    /* jobs and runs */
    const char *array_spec;
    int64_t retry_limit, max_execution_time, parallelism, nodes, priority, gang_timeout;
    int run_mode;          /* enum loom_run_mode */
    int placement;         /* enum loom_placement */
    json_t *node_selector; /* {"label": "value"}; NULL: none */
    /* apps */
    int64_t port, min_instances, max_instances, initial_instances;
    int64_t concurrency, concurrency_target, scale_down_delay, request_timeout;
    int visibility; /* enum loom_visibility (also functions) */
    struct loom_probe readiness, liveness;
    /* functions (and concurrency, cpu, memory, max_execution_time,
     * scale_down_delay and visibility above) */
    const char *runtime;
    const char *code_reference; /* a data: URL, or "sha256:<hex>" once stored */
    const char *code_main;
    bool code_binary;
    /* builds and build runs */
    int source_type;           /* enum loom_source_type */
    const char *source_url;    /* git: the repository; NULL for an upload */
    const char *source_upload; /* local: "sha256:<hex>" of an upload; NULL for git */
    const char *source_revision, *source_context_dir, *source_secret; /* NULL: none */
    int strategy_type;                                                /* enum loom_strategy */
    const char *strategy_spec_file;
    int strategy_size;        /* enum loom_build_size */
    int output_type;          /* enum loom_output_type */
    const char *output_image; /* NULL: the platform registry's <project>/<name> */
    const char *output_secret;
    int64_t build_timeout; /* seconds */
};

/* Decodes a stored spec of kind k; absent fields get their defaults. A
 * value that is not valid (a spec stored by an older version, or by hand)
 * is an error naming the field. ret holds a reference to spec. */
int loom_spec_decode(enum loom_kind k, json_t *spec, struct loom_spec *ret, struct loom_err *err);
/* The same from the JSON text of a row. */
int loom_spec_decode_text(enum loom_kind k, const char *text, struct loom_spec *ret,
                          struct loom_err *err);
void loom_spec_release(struct loom_spec *s);
#define _cleanup_spec_ __attribute__((cleanup(loom_spec_release)))

/* ---- storage and documents -------------------------------------------------- */

/* The normalised columns of kind k (NULL-terminated names, static) and their
 * values for s, in the same order, as decimal text (values[i] must hold 24
 * bytes); returns how many. */
#define LOOM_SPEC_MAX_COLUMNS 16
size_t loom_spec_columns(enum loom_kind k, const struct loom_spec *s,
                         const char *ret_names[LOOM_SPEC_MAX_COLUMNS],
                         char ret_values[LOOM_SPEC_MAX_COLUMNS][24]);

/* The OpenAPI 3.1 schema of the fields in every kind of `all` and in no
 * kind of `none` (the run fields all kinds share: LOOM_K_RUNS, 0; those of
 * jobs alone: LOOM_K_JOB, LOOM_K_APP): an object schema with a property per
 * field (type, range, enum, default, description). */
json_t *loom_spec_schema(unsigned all, unsigned none);

#endif
