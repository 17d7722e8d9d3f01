/* loom-builder: build runs, source to OCI image.
 *
 * Workers claim pending runs from PostgreSQL (FOR UPDATE SKIP LOCKED) and
 * hold them with a heartbeat; a run whose builder went silent is taken
 * again (or failed after its attempts), so that none stays running. A run:
 *   source   the upload (a blob of the platform registry) or a git checkout,
 *            both as one tar.gz, checked like an upload
 *   detect   buildpacks: what the source is (detect.c, a pure plan);
 *            dockerfile: the Dockerfile's stages
 *   steps    what runs user code (npm, pip, go build, buildah) is a job run
 *            of the run's project, on a node, in a container: the builder
 *            never runs it itself. Its output directory comes back as a
 *            layer the agent pushed; dependency layers are cached by what
 *            they were made from
 *   image    the stack's layers, the dependency layer, the app layer, a
 *            config; pushed blob by blob (none twice), the manifest by
 *            digest, the tag last: a failed run leaves no tag
 * Each step is recorded on the run (status, duration, detail), and what the
 * builder says is in build_run_logs beside the steps' own output. */
#ifndef LOOM_BUILDER_H
#define LOOM_BUILDER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct loom_service;

/* ---- detect.c: buildpacks, a pure plan ------------------------------------------ */

/* The source as detection sees it: its entries (paths relative to the
 * context directory, without "./") and the text of the few files it reads
 * (texts: {"package.json": "...", ...}; an executable's first line). */
struct src_entry {
    char *path;
    char type; /* 'f' file, 'd' directory, 'l' symbolic link */
    unsigned mode;
    int64_t size;
};
struct src_tree {
    struct src_entry *e;
    size_t n;
    json_t *texts;
};
/* Whether detection reads this top-level file's text (and how much of it). */
bool bp_wants_text(const char *path, unsigned mode, size_t *ret_max);

/* What the operator lets steps reach. */
struct bp_options {
    const char *npm_registry; /* or NULL: npm's own */
    const char *pip_index;    /* or NULL: vendored wheels only (--no-index) */
    const char *go_proxy;     /* or NULL: off (vendor/ or the standard library) */
    bool function;            /* a function's bundle: Node.js or Python, started by its runtime */
};

/* What to build. The image: run_stack's layers, then the step's output
 * (when there is a step), then the source under /app (unless app_layer is
 * false); cmd, env and /app as working directory. */
struct bp_plan {
    char language[16];    /* nodejs, python, go, static, script, procfile */
    char run_stack[32];   /* the stack the image is made on */
    char build_stack[32]; /* where the step runs; "" when there is no step */
    char step[24];        /* "npm ci", "pip install", "go build" */
    char *step_script;    /* its shell script (allocated) */
    char step_output[64]; /* the directory that becomes a layer */
    bool step_all_source; /* the step gets the whole source, not step_inputs */
    json_t *step_inputs;  /* source paths the step gets; their contents key its cache */
    bool app_layer;       /* the source goes under /app */
    json_t *app_exclude;  /* top-level names left out of it */
    json_t *cmd;          /* the Entrypoint */
    json_t *env;          /* ["K=V", ...] */
    char detail[256];     /* "nodejs: npm ci; start: node server.js" */
};
void bp_plan_release(struct bp_plan *p);
/* Detects what the source is, in the buildpacks' order: a Dockerfile (an
 * error that says to use the dockerfile strategy), package.json (Node.js),
 * requirements.txt or pyproject.toml (Python), go.mod (Go), index.html (a
 * static site), an executable script; a Procfile's web: line is the command
 * in every case (alone: run on busybox). Errors name the file and the line.
 * For a function (o->function) only Node.js and Python are built, there is
 * no command (the runtime loads the code) and its entry file must be there. */
int bp_detect(const struct src_tree *t, const struct bp_options *o, struct bp_plan *ret,
              struct loom_err *err);
/* The run's "detect" step (label: its note, or NULL): lists source's tree
 * into *t, detects into *p and records the strategy it found on the run. */
struct brun;
int bp_detect_step(struct brun *r, const char *source, const struct bp_options *o,
                   const char *label, struct src_tree *t, struct bp_plan *p, struct loom_err *err);

/* ---- dfparse.c: a Dockerfile, read before buildah reads it -------------------------- */

struct df_ins {
    int line;                 /* where it starts */
    char *keyword;            /* upper case: FROM, RUN... */
    char *args;               /* the rest, continuation lines joined */
    char *from_image, *stage; /* FROM: the image, and its AS name or NULL */
};
struct df {
    struct df_ins *ins;
    size_t n, nstages;
};
/* The instructions of a Dockerfile. Refused with the line: a FROM without an
 * image, an instruction before the first FROM (but ARG), a COPY or ADD
 * whose source climbs out of the build context. */
int df_parse(const char *text, struct df *ret, struct loom_err *err);
void df_release(struct df *d);
/* Whether name is "scratch" or a stage named before instruction before. */
bool df_is_stage(const struct df *d, size_t before, const char *name);
/* The line of the instruction buildah names in a step ("STEP 3/5: RUN x",
 * or "RUN x"), 0 when none matches. */
int df_line_of(const struct df *d, const char *step);

/* ---- reason.c: why a step failed, in one line ------------------------------------- */

enum step_kind { STEP_NPM, STEP_PIP, STEP_GO, STEP_BUILDAH, STEP_OTHER };
/* The line of a failed step's output that says why (npm's error, pip's
 * missing package, the compiler's file:line, buildah's STEP), or the last
 * one; lines is a JSON array of strings, oldest first. NULL when empty. */
const char *step_failure_line(enum step_kind k, json_t *lines);

/* ---- the service ------------------------------------------------------------------- */

#include <pthread.h>

#include "layer.h"
#include "registry.h"
#include "spec.h"

struct loom_db;

struct builder {
    struct loom_service *svc;
    /* options */
    char *registry, *work_dir, *npm_registry, *pip_index, *go_proxy, *ca_file, *secrets_key;
    int64_t workers, stale_ms, max_attempts;
    bool git_file; /* file:// git sources allowed (tests, single-machine setups) */
    char holder[160];
    /* workers */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    bool stopping;
    pthread_t *threads;
    size_t nthreads;
    int64_t last_recover_ms;
    struct loom_metric *m_succeeded, *m_failed, *m_seconds, *m_cached, *m_uploaded;
};
extern struct builder builder;

/* A stack: its image (the platform registry's repository and digest), its
 * manifest and config. */
struct stack {
    char name[64];
    char ref[600];  /* host/repo@sha256:... */
    char repo[300]; /* repo within the platform registry */
    struct loom_registry_manifest m;
    json_t *config; /* the image config */
};
void stack_release(struct stack *s);

/* One run being carried out. */
struct brun {
    struct builder *b;
    struct loom_db *db;
    char id[24], project_id[24], project[64], name[64];
    int attempt;
    json_t *spec_json;
    struct loom_spec spec;
    int64_t deadline_ms; /* wall clock */
    char dir[4096];      /* its scratch directory */
    json_t *steps;       /* as recorded */
    int log_seq;
    char output_ref[700];               /* repo@digest once pushed */
    struct loom_registry_client *cache; /* <registry>/<project>/loom-cache */
    char cache_repo[300];               /* <project>/loom-cache */
    int64_t uploaded;                   /* bytes pushed to the registry */
    enum { STOP_NONE, STOP_CANCEL, STOP_BUILDER, STOP_LOST } stop; /* set by brun_check */
};

/* run.c: records */
/* A line in the run's log (build_run_logs). */
void brun_log(struct brun *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A step begins (status running) / ends (status, detail); both recorded. */
void brun_step(struct brun *r, const char *name, const char *detail);
void brun_step_end(struct brun *r, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Whether the run must stop now: cancelled, past its deadline, or the
 * builder stopping (the message says which). */
int brun_check(struct brun *r, struct loom_err *err);

/* image.c: the registry side */
/* A client for repository repo of the platform registry (auth: none). */
int reg_client(const char *repo, struct loom_registry_client **ret, struct loom_err *err);
/* The stack registered under name (build_stacks), with manifest and config. */
int stack_load(struct brun *r, const char *name, struct stack *ret, struct loom_err *err);
/* An image to push: layers (lowest first) and a config. */
struct img_layer {
    char digest[72], diff_id[72];
    int64_t size;
    const char *file;     /* a local .tar.gz to upload, or NULL */
    char mount_from[300]; /* a repository of the platform registry that has it, or "" */
};
struct img {
    struct img_layer layers[32];
    size_t n;
    json_t *config; /* the config, without rootfs (filled from layers) */
};
/* Where a run's image goes: output_image's registry, repository and tag. */
struct out_target {
    char host[256], repo[300], tag[200]; /* tag "": by digest only */
    bool platform; /* the platform registry: layers are mounted from its repositories */
    struct loom_registry_client *c;
};
/* A client for output_image: the platform registry's needs no credentials
 * (an output_secret for it is refused); another registry's are those of
 * output_secret, a registry secret whose server is that host. */
int out_open(struct brun *r, struct out_target *ret, struct loom_err *err);
void out_close(struct out_target *t);
/* Pushes img to the target by digest, then under its tag (set last: a
 * failed push leaves no tag); ret_digest gets the manifest's digest. Every
 * blob once: what the registry has is not sent; another registry gets the
 * platform registry's layers (stacks, the dependency cache) uploaded. */
int img_push(struct brun *r, struct img *img, struct out_target *t, char ret_digest[72],
             struct loom_err *err);
/* The config of an image on stack: the stack's, Env merged with env (a name
 * in env wins), and entrypoint, cmd and working directory replaced. */
json_t *img_config(const struct stack *s, json_t *env, json_t *entrypoint, const char *workdir);
void img_add_stack(struct img *img, const struct stack *s);

/* step.c: user code, as a job run of the project */
struct step_req {
    const char *label; /* "deps", "compile", "dockerfile": the job run's last name part */
    enum step_kind kind;
    const struct stack *stack;
    const char *script;                  /* /bin/sh -c */
    const struct loom_layer_info *input; /* the source the step gets under /app */
    const struct img_layer *extra;       /* more layers under it (base images...) */
    size_t nextra;
    const char *output; /* the directory that comes back as a layer */
};
struct step_out {
    char digest[72], diff_id[72];
    int64_t size;
};
int step_run(struct brun *r, const struct step_req *s, struct step_out *ret, struct loom_err *err);
/* Cancels the build run's step job runs that are still alive. */
int steps_cancel(struct loom_db *db, const char *build_run_id, struct loom_err *err);

/* source.c, git.c: the source */
/* The run's source as one checked tar.gz in the run's directory. */
int source_fetch(struct brun *r, char ret_path[4200], struct loom_err *err);
/* A git source at its revision, archived as a tar.gz into dest;
 * ret_commit: the commit it was. */
int git_fetch(struct brun *r, const char *dest, char ret_commit[64], struct loom_err *err);
/* The entries of the source under context (NULL: all) for detection. */
int source_list(const char *path, const char *context, struct src_tree *ret, struct loom_err *err);
void src_tree_release(struct src_tree *t);
/* A layer of the source under app/: only the paths of only (and their
 * directories; NULL: all), without the top-level names of exclude and
 * without .git. */
int source_layer(struct brun *r, const char *path, json_t *only, json_t *exclude,
                 struct loom_layer **ret_layer, struct loom_layer_info *ret, struct loom_err *err);

/* The same entries added to layer l under prefix ("" for its top). */
int source_add(struct brun *r, struct loom_layer *l, const char *path, const char *prefix,
               json_t *only, json_t *exclude, struct loom_err *err);

/* The text of file rel (relative to the context) of the source, at most
 * max bytes; LOOM_ENOTFOUND when it has none. */
int source_read(const char *path, const char *context, const char *rel, size_t max, char **ret,
                struct loom_err *err);

/* buildpacks.c, dockerfile.c: the strategies */
int buildpacks_run(struct brun *r, const char *source_path, struct loom_err *err);
/* The layer of the plan's step (p->build_stack set): from the cache when
 * the same inputs made it before, else made by a step and cached; the
 * cache's repository has it. */
int bp_deps_layer(struct brun *r, const char *source_path, const struct bp_plan *p,
                  struct img_layer *ret, struct loom_err *err);
/* bundle.c: a function's code bundle (output_type bundle), stored in
 * function_code; r->output_ref gets its "sha256:<hex>". */
int bundle_run(struct brun *r, const char *source_path, struct loom_err *err);
int dockerfile_run(struct brun *r, const char *source_path, struct loom_err *err);

int builder_start(struct loom_service *svc, struct loom_err *err);
void builder_tick(struct loom_service *svc);
void builder_stop(struct loom_service *svc);

#endif
