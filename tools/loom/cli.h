/* loom, the user's CLI: what its files share. main.c reads the settings and
 * dispatches the nouns; args.c parses a verb's flags into a request body;
 * api.c calls the API and maps replies to exit codes; output.c prints; one
 * file per noun (project.c, job.c, jobrun.c, app.c, kv.c). */
#ifndef LOOM_CLI_H
#define LOOM_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "spec.h"

enum {
    EXIT_OK = 0,
    EXIT_API = 1,
    EXIT_USAGE = 2,
    EXIT_NOTFOUND = 3,
    EXIT_AUTH = 4,
    EXIT_UNAVAIL = 5,
};

/* The settings: flag, then environment, then the config file. */
struct cli_config {
    char *api;
    char *key;
    char *project;
    bool json;
};
extern struct cli_config cfg;

/* Strips leading and trailing blanks in place. */
void trim(char *s);

/* ---- args.c: verb flags ------------------------------------------------------ */

/* Verb flags: each either takes a value (kept, repeatable ones appended to a
 * JSON array) or is boolean. Positionals are collected in order. */
struct flag {
    const char *name;
    bool has_value;
    bool repeat;
    const char *metavar; /* what the value is, for --help */
    const char *help;
    const char *value; /* last value */
    json_t *values;    /* all values, for repeatable flags */
    bool set;
};

#define VFLAG(n)                                                                                   \
    {                                                                                              \
        .name = (n), .has_value = true                                                             \
    }
#define RFLAG(n)                                                                                   \
    {                                                                                              \
        .name = (n), .has_value = true, .repeat = true                                             \
    }
#define BFLAG(n)                                                                                   \
    {                                                                                              \
        .name = (n)                                                                                \
    }

struct args {
    struct flag *flags;
    size_t nflags;
    bool owned; /* flags was allocated (spec_args) */
    const char *pos[8];
    int npos;
};

/* Prints "loom: " msg (a format with one %s for arg) and a hint; EXIT_USAGE. */
int usage_err(const char *msg, const char *arg);
struct flag *find_flag(struct args *a, const char *name);
int parse_args(struct args *a, int argc, char **argv);
void args_release(struct args *a);
const char *fval(struct args *a, const char *name);
bool fset(struct args *a, const char *name);
int take_name(struct args *a, const char *what, const char **ret);
/* The flags of a verb that writes a spec of kind k: one per field of the
 * spec table (common/spec.c) that has one, the other flags that set those
 * fields (--cmd, --env-from-secret, ...), then the verb's own. */
int spec_args(struct args *a, enum loom_kind k, const struct flag *own, size_t nown);
/* The body members the spec flags of a set. */
int put_spec_fields(struct args *a, enum loom_kind k, json_t *body);
/* The flags of a run's submit (job runs, build runs): --name (or the one
 * positional), --<parent_flag> naming a saved job or build (into the body's
 * parent_field), the spec flags of kind and --wait. One of the parent or
 * the need flags must be given (else need_msg). *ret_name points into argv. */
struct submit_kind {
    enum loom_kind kind;
    const char *verb, *parent_flag, *parent_help, *parent_field;
    const char *need[2];
    const char *need_msg;
};
int submit_args(const struct submit_kind *k, int argc, char **argv, json_t *body,
                const char **ret_name, bool *ret_wait);
/* One line per flag: its name, value and description. */
void print_flags(FILE *out, const struct args *a);

/* ---- pack.c --------------------------------------------------------------------- */

/* DIR's files and directories as a tar.gz into out (symbolic links refused). */
struct strbuf;
struct loom_err;
int pack_dir(const char *dir, struct strbuf *out, struct loom_err *err);
/* A build's source: DIR as a tar.gz in a temporary file, without what
 * DIR/.ceignore (else DIR/.gitignore) leaves out and without .git; links
 * kept as links when they stay inside DIR, refused when they point out. */
struct packed {
    FILE *file; /* the tar.gz, at its start; the caller closes it */
    int64_t size, files;
    unsigned char sha256[32];
    const char *ignore_file; /* ".ceignore", ".gitignore" or NULL */
};
int pack_source(const char *dir, struct packed *ret, struct loom_err *err);

/* ---- api.c: calls and replies ------------------------------------------------ */

struct reply {
    long status;
    char *raw;    /* body text */
    json_t *json; /* parsed body, or NULL */
};

void reply_release(struct reply *r);
int api_call_if(const char *method, const char *path, json_t *body, const char *if_match,
                struct reply *ret);
int api_call(const char *method, const char *path, json_t *body, struct reply *ret);
/* A call whose failure is the caller's to report (nothing is printed). */
int api_call_quiet(const char *method, const char *path, struct reply *ret);
/* POST of len bytes of f (content_type) to path, with extra headers
 * (NULL-terminated, or NULL). */
int api_post_file(const char *path, FILE *f, int64_t len, const char *content_type,
                  const char *const *extra, struct reply *ret);
/* A GET whose answer is a stream: body bytes go to sink as they come (no
 * overall time limit, but 60 s of silence ends it). An error answer is
 * printed as api_call does; returns the exit code. */
struct loom_httpc_resp;
int api_stream(const char *path, const char *accept,
               int (*sink)(const void *data, size_t len, void *arg), void *arg);
int need_project(void);
char *ppath(const char *coll, const char *name, const char *suffix);
int patch_current(const char *coll, const char *name, json_t *body, const char *method,
                  struct reply *ret);
int write_resource(const char *coll, const char *what, const char *name, bool create,
                   const char *method, json_t *body);
int delete_with_retry(const char *coll, const char *name, const char *what);
void sleep_ms(long ms);

/* ---- output.c ---------------------------------------------------------------- */

/* A string member, "" when absent. */
const char *jstr(json_t *o, const char *k);
long long jint(json_t *o, const char *k);
void print_raw(const struct reply *r);
/* buildrun logs NAME [-f] of a build run under coll ("build_runs"), polled. */
int follow_logs(const char *coll, const char *noun, int argc, char **argv);

/* ---- logs.c ------------------------------------------------------------------ */

/* NOUN logs NAME [-f] [--instance ID] [--index I] [--since T] [--tail N]
 * [--stream S] of a resource under coll ("apps"); is_run: a job run (its
 * indices, and -f ends with the run). */
int cmd_logs(const char *coll, const char *noun, bool is_run, int argc, char **argv);

/* ---- the nouns ----------------------------------------------------------------- */

int cmd_project(const char *verb, int argc, char **argv);
int cmd_job(const char *verb, int argc, char **argv);
int cmd_jobrun(const char *verb, int argc, char **argv);
int cmd_app(const char *verb, int argc, char **argv);
int cmd_kv(const char *coll, const char *what, const char *verb, int argc, char **argv);
int cmd_fn(const char *verb, int argc, char **argv);
int cmd_build(const char *verb, int argc, char **argv);
int cmd_buildrun(const char *verb, int argc, char **argv);

/* ---- build.c: sources and build runs, for every noun that builds ------------- */

/* Uploads the directory dir as a build's source (nothing is sent when this
 * project has it already) into *ret_digest ("sha256:<hex>"). Progress goes to
 * stdout (stderr with -o json). */
int upload_source(const char *dir, char ret_digest[72]);
/* body's source from a --source value: an upload of a directory, else a git
 * URL. */
int put_source_value(const char *value, json_t *body);
/* The --build-* flags (--build-source DIR|GIT_URL and the build's settings)
 * of the nouns that deploy an image, added to a's. */
void add_build_flags(struct args *a);
/* Builds what a's --build-* flags say as a build run named after name,
 * waiting with progress; *ret_ref: the repository@digest it pushed, or for
 * a function's bundle (bundle true) its "sha256:<hex>". */
int build_from_flags(struct args *a, const char *name, bool bundle, char ret_ref[700]);
/* Waits until build run name ends, printing each step as it goes; EXIT_OK
 * when it succeeded, with *ret its last state (the caller releases). */
int wait_buildrun(const char *name, struct reply *ret);
/* loom usage [flags]: no verb */
int cmd_usage(int argc, char **argv);

#endif
