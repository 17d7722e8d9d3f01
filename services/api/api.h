/* loom-api: the public REST API. Handlers answer under /v1; every one
 * authenticates the caller (api_auth), resolves the project in the path
 * (api_project) and scopes every query to it. */
#ifndef LOOM_API_H
#define LOOM_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "db.h"
#include "err.h"
#include "http.h"
#include "spec.h"
#include "strbuf.h"

/* Service-wide settings (from the options). */
struct api_config {
    char *activator_url;  /* LOOM_ACTIVATOR_URL, without a trailing slash */
    int64_t logs_wait_ms; /* how long a read of a finished instance's logs waits for their end */
    char *secrets_key;    /* LOOM_SECRETS_KEY: 64 hex characters, or NULL */
    int64_t rate_limit;   /* requests a second per API key and replica; 0 = no limit */
    char *registry;       /* LOOM_REGISTRY: host:port of the platform's registry, or NULL */
    int64_t max_upload;   /* LOOM_API_MAX_UPLOAD: bytes of one source upload */
    int64_t max_upload_unpacked; /* what it may unpack to */
};
extern struct api_config api_cfg;

/* ---- auth.c ---------------------------------------------------------- */

enum api_role { API_ROLE_ADMIN, API_ROLE_WRITE, API_ROLE_READ };

struct api_caller {
    enum api_role role;
    int64_t project_id; /* 0 for admin keys */
    char key_id[16];
};

/* Splits "loom_<12 hex>_<43 base64url>" into its key id (13 bytes with NUL)
 * and secret. LOOM_EUNAUTH when the shape is wrong. */
int api_key_parse(const char *key, char ret_key_id[13], const char **ret_secret,
                  struct loom_err *err);

/* Authenticates the request's bearer key: 401 problem for a missing, unknown,
 * wrong or revoked key; 403 when a read key asks for a method that writes. */
int api_auth(struct loom_http_req *req, struct loom_db *db, struct api_caller *ret,
             struct loom_err *err);

/* Drops cached keys (tests). */
void api_auth_cache_clear(void);

/* ---- common.c -------------------------------------------------------- */

struct api_project {
    int64_t id;
    char id_str[24];
    char name[64];
};

/* Authenticates and, when the route has a {project}, resolves params[0]
 * to a project the caller may see (404 otherwise, as if absent). */
int api_begin(struct loom_http_req *req, bool with_project, struct loom_db **ret_db,
              struct api_caller *ret_caller, struct api_project *ret_project, struct loom_err *err);

/* A write request (POST, PATCH, PUT, DELETE) in progress: api_write opens
 * one transaction around the handler's work, the idempotency record and the
 * outbox events, and commits once. */
struct api_ctx {
    struct loom_http_req *req;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project project; /* when the route has a {project} */
    json_t *body;               /* the request's JSON object ({} when there is no body) */
    bool wake_scheduler;        /* publish loom.sched.wake after commit */
    bool wake_builder;          /* publish loom.build.wake after commit */
    bool events;                /* outbox rows were written */
    const char *redact;         /* reply member never kept for Idempotency-Key replays */
};

/* Does the work inside the open transaction; on success *ret_status and
 * *ret_body (NULL for no body) are the reply. */
typedef int (*api_write_fn)(struct api_ctx *ctx, int *ret_status, json_t **ret_body,
                            struct loom_err *err);

/* Authenticates, resolves the project, parses the body, honours
 * Idempotency-Key on POST (same key and request: the first reply again;
 * same key, other request: 422), runs fn in a transaction and replies. */
void api_write(struct loom_http_req *req, bool with_project, api_write_fn fn);

/* Writes a CloudEvents 1.0 event to the outbox in the caller's transaction:
 * type "dev.loom.<kind>.<action>", subject loom.events.<project>.<kind>. */
int api_event(struct api_ctx *ctx, const char *kind, const char *action, const char *name,
              json_t *data, struct loom_err *err);

/* Publishes unpublished outbox rows (oldest first, a batch at a time) and
 * marks them; several replicas share the work (SKIP LOCKED). Returns the
 * number published or -1. Purges expired idempotency records too. */
int api_outbox_publish(struct loom_db *db, struct loom_err *err);

/* A PATCH of a resource with a spec (apps, jobs): the body validated as a
 * patch of kind, the row locked with sql_lock ($1 project id, $2 the name in
 * params[1]; columns id, generation, spec text), If-Match checked, the
 * merge (loom_spec_merge) validated whole. ret->row is the locked row. */
struct api_patch {
    PGresult *row; /* id, generation, spec */
    json_t *spec;  /* the whole new spec */
    bool changed;  /* it differs from the stored one */
};
int api_patch_spec(struct api_ctx *ctx, enum loom_kind kind, const char *sql_lock,
                   struct api_patch *ret, struct loom_err *err);
void api_patch_release(struct api_patch *p);
#define _cleanup_api_patch_ __attribute__((cleanup(api_patch_release)))

/* Checks If-Match against a resource's generation (its entity tag, sent as
 * "\"<generation>\""). No header or "*" passes; a mismatch is 412. */
int api_check_if_match(struct loom_http_req *req, const char *what, const char *name,
                       const char *generation, struct loom_err *err);

/* ---- logs.c --------------------------------------------------------------- */

/* Wakes every log follower: keepalives, and a look at PostgreSQL for what
 * NATS did not bring (the service's tick, once a second). */
void api_logs_heartbeat(void);

/* Authenticates an admin key (403 for others); admin routes call it first. */
int api_admin_begin(struct loom_http_req *req, struct loom_db **ret_db, struct loom_err *err);

/* Replies with err as a problem (logging 5xx errors once). */
void api_fail(struct loom_http_req *req, const struct loom_err *err);
#define API_FAIL(req, err)                                                                         \
    do {                                                                                           \
        api_fail((req), (err));                                                                    \
        return;                                                                                    \
    } while (0)

/* Publishes an empty message on subject (loom.sched.wake, loom.build.wake);
 * a failure is logged, not fatal: the scheduler and the builder also
 * reconcile on a timer. */
void api_wake(const char *subject);

/* Paging: ?limit=N (1..1000, default 100) and ?start=TOKEN, where TOKEN is
 * an opaque token from an earlier page's "next". ret_after is the decoded
 * last name of the previous page ("" for the first page). */
struct api_page {
    int64_t limit;
    char after[128];
};
int api_page_parse(struct loom_http_req *req, struct api_page *ret, struct loom_err *err);
/* Sets "limit" and, when the page was full, "next" (the token for the last name). */
void api_page_finish(json_t *out, const struct api_page *page, size_t nitems,
                     const char *last_name);
/* Encodes a name as a page token (hex with a "n" prefix), allocated. */
char *api_page_token(const char *name);
int api_page_token_decode(const char *token, char *out, size_t outsz);

/* SQL expression for a timestamptz column as RFC 3339 UTC text. */
#define API_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* Sets key to a string, or JSON null when s is NULL. */
void api_json_set_str(json_t *obj, const char *key, const char *s);
void api_json_set_int(json_t *obj, const char *key, const char *s); /* s NULL -> null */

/* ---- resource.c: list and get, one descriptor per kind ------------------ */

/* How list and get read one kind of resource: apps, jobs, job runs, secrets
 * and config maps share the handlers, and differ in their queries and in
 * how a row becomes JSON. */
struct api_resource {
    const char *what;     /* "app", for messages */
    const char *list_key; /* "apps", the list's member */
    const char *sql_get;  /* $1 project id, $2 name */
    const char *sql_list; /* $1 project id, $2 after, $3 limit, $4 the filter (or NULL) */
    const char *filter;   /* the query parameter sql_list takes as $4, or NULL */
    int name_col;         /* the name's column in both queries */
    bool etag;            /* a get answers ETag: "<generation>" */
    /* One row as JSON; details: the get of one resource (a list says less). */
    int (*to_json)(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                   PGresult *res, int r, bool details, json_t **ret, struct loom_err *err);
    const void *arg; /* for to_json */
};
/* One resource by name (404 naming it when absent). */
int api_resource_load(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                      const char *name, json_t **ret, struct loom_err *err);
void api_resource_list(struct loom_http_req *req, const struct api_resource *k);
void api_resource_get(struct loom_http_req *req, const struct api_resource *k);
/* The row sql ($1 project id, $2 name) finds, or NULL with LOOM_ENOTFOUND
 * `<what> "<name>" not found` (or the database's error). */
PGresult *api_find(struct loom_db *db, const struct api_project *p, const char *sql,
                   const char *what, const char *name, struct loom_err *err);

/* A log cursor ("next", ?after=): "<epoch microseconds>|<uuid>|<sequence>"
 * as a page token. parse: the three parts point into ret->buf (all NULL
 * without a cursor). next: "next" of out from the last row of res, whose
 * columns col, col + 1 and col + 2 are the three parts (after, as it came,
 * when res is empty). */
struct api_log_cursor {
    char buf[160];
    char *ts, *src, *seq;
};
int api_log_cursor_parse(const char *after, struct api_log_cursor *ret, struct loom_err *err);
/* ?limit= of a log page (1 to 10000, default 1000) as text. */
int api_log_limit(struct loom_http_req *req, char ret[24], struct loom_err *err);
void api_log_cursor_next(json_t *out, PGresult *res, int col, const char *after);

/* ETag: "<generation>" of a resource's JSON. */
void api_set_etag(struct loom_http_req *req, json_t *item);

/* The normalised columns of kind k (common/spec.h) for SQL built once: ", c1,
 * c2" into names, ", $first::bigint, $first+1::bigint" into params and ",
 * c1 = $first::bigint, ..." into sets (each may be NULL). Returns how many. */
size_t api_columns_sql(enum loom_kind k, int first, struct strbuf *names, struct strbuf *params,
                       struct strbuf *sets);
/* The stored spec's JSON text and its column values, as parameters after
 * the fixed ones: params[n_fixed] is the text, the columns follow. Returns
 * the number of parameters. spec must be complete (loom_spec_validate). */
#define API_SPEC_MAX_FIXED 15
struct api_spec_params {
    char *text;
    const char *params[API_SPEC_MAX_FIXED + 1 + LOOM_SPEC_MAX_COLUMNS];
    char values[LOOM_SPEC_MAX_COLUMNS][24];
};
int api_spec_params(enum loom_kind k, json_t *spec, const char *const *fixed, size_t n_fixed,
                    struct api_spec_params *ret, struct loom_err *err);
void api_spec_params_release(struct api_spec_params *p);
#define _cleanup_spec_params_ __attribute__((cleanup(api_spec_params_release)))

/* A kind kept with revisions (apps, functions): the row in table and each
 * generation's copy in rev_table (owner_col names the row). Every statement
 * takes the spec after the fixed values, its columns last:
 *   INSERT: project id, name, insert_only..., shared..., spec
 *   UPDATE: id, shared..., spec (generation + 1)
 *   revision: id, generation, shared..., spec
 * The SQL is built on first use. */
#define API_REV_MAX_FIXED 3
struct api_revisioned {
    enum loom_kind kind;
    const char *table, *rev_table, *owner_col;
    const char *insert_only[API_REV_MAX_FIXED + 1]; /* NULL-terminated */
    const char *shared[API_REV_MAX_FIXED + 1];      /* NULL-terminated */
    char *sql_insert, *sql_update, *sql_revision;   /* built once */
};
/* Inserts the resource and its revision 1; the new id into ret_id. A name
 * taken is LOOM_ECONFLICT "<what> \"<name>\" already exists". */
int api_rev_insert(struct api_ctx *ctx, struct api_revisioned *r, const char *what,
                   const char *name, const char *const *insert_only, const char *const *shared,
                   json_t *spec, char ret_id[24], struct loom_err *err);
/* Makes spec the next generation of row id, with its revision. */
int api_rev_update(struct api_ctx *ctx, struct api_revisioned *r, const char *id,
                   const char *const *shared, json_t *spec, struct loom_err *err);

/* A kind kept as one spec without revisions (jobs, builds): a row in table
 * (project_id, name, generation, spec), read through resource, with its
 * CloudEvents under event ("job"). check (or NULL) vets a complete spec
 * further (it may look in the database). The create, PATCH and DELETE of
 * api_write. */
struct api_saved {
    enum loom_kind kind;
    const char *table, *event;
    const struct api_resource *resource;
    int (*check)(struct api_ctx *ctx, json_t *spec, struct loom_err *err);
};
/* The columns api_saved_json reads (the name is column 1), and the to_json
 * of such a kind: its spec's fields with name, id, project, generation,
 * entity_tag, created_at and updated_at. */
#define API_SAVED_COLS                                                                             \
    "id, name, generation, spec::text, " API_TS("created_at") ", " API_TS("updated_at")
int api_saved_json(const struct api_resource *k, struct loom_db *db, const struct api_project *p,
                   PGresult *res, int r, bool details, json_t **ret, struct loom_err *err);
int api_saved_create(struct api_ctx *ctx, const struct api_saved *k, int *ret_status,
                     json_t **ret_body, struct loom_err *err);
int api_saved_update(struct api_ctx *ctx, const struct api_saved *k, int *ret_status,
                     json_t **ret_body, struct loom_err *err);
int api_saved_delete(struct api_ctx *ctx, const struct api_saved *k, int *ret_status,
                     struct loom_err *err);

/* ---- data.c: names and the data of secrets and config maps --------------- */

/* The name in a body: required DNS label. */
int api_body_name(json_t *body, const char **ret, struct loom_err *err);

/* The "data" member of a secret or config map body: an object of at most
 * 100 string values whose keys are 1-253 of [-._a-zA-Z0-9]; copied. */
int api_data_map(json_t *body, json_t **ret, struct loom_err *err);

/* Checks a secret's data against its format: "generic" (anything),
 * "registry" (server as host[:port], username, password, optionally email;
 * nothing else) or "tls" (tls_cert and tls_key, both PEM). The message
 * names the field (format, data.<key>) and the reason. */
int api_secret_data(const char *format, json_t *data, struct loom_err *err);

/* PostgreSQL multirange text -> compact spec ("" when empty), allocated. */
char *api_multirange_to_spec(const char *multirange);

/* ---- routes.c, openapi.c ------------------------------------------------ */

extern const struct loom_http_route api_routes[];
extern const size_t api_nroutes;
/* The handlers whose bodies are spooled to a file (uploads). */
extern const struct loom_http_spool api_spools[];
extern const size_t api_nspools;

/* The OpenAPI 3.1 document served at /openapi.json (built once). */
const char *api_openapi_text(void);
void api_openapi(struct loom_http_req *req);

/* ---- handlers ----------------------------------------------------------- */

void api_projects_list(struct loom_http_req *req);
void api_projects_create(struct loom_http_req *req);
void api_projects_get(struct loom_http_req *req);
void api_projects_delete(struct loom_http_req *req);

void api_jobruns_create(struct loom_http_req *req);
void api_jobruns_list(struct loom_http_req *req);
void api_jobruns_get(struct loom_http_req *req);
void api_jobruns_delete(struct loom_http_req *req);
void api_jobruns_logs(struct loom_http_req *req);
void api_jobruns_cancel(struct loom_http_req *req);
void api_jobruns_resubmit(struct loom_http_req *req);

void api_apps_create(struct loom_http_req *req);
void api_apps_list(struct loom_http_req *req);
void api_apps_get(struct loom_http_req *req);
void api_apps_delete(struct loom_http_req *req);
void api_apps_instances(struct loom_http_req *req);
void api_apps_update(struct loom_http_req *req);

void api_jobs_create(struct loom_http_req *req);
void api_jobs_list(struct loom_http_req *req);
void api_jobs_get(struct loom_http_req *req);
void api_jobs_update(struct loom_http_req *req);
void api_jobs_delete(struct loom_http_req *req);

void api_secrets_create(struct loom_http_req *req);
void api_secrets_list(struct loom_http_req *req);
void api_secrets_get(struct loom_http_req *req);
void api_secrets_replace(struct loom_http_req *req);
void api_secrets_delete(struct loom_http_req *req);

void api_configmaps_create(struct loom_http_req *req);
void api_configmaps_list(struct loom_http_req *req);
void api_configmaps_get(struct loom_http_req *req);
void api_configmaps_replace(struct loom_http_req *req);
void api_configmaps_delete(struct loom_http_req *req);
void api_apps_revisions(struct loom_http_req *req);

void api_functions_create(struct loom_http_req *req);
void api_functions_list(struct loom_http_req *req);
void api_functions_get(struct loom_http_req *req);
void api_functions_update(struct loom_http_req *req);
void api_functions_delete(struct loom_http_req *req);
void api_functions_activations(struct loom_http_req *req);
void api_functions_logs(struct loom_http_req *req);
void api_function_runtimes(struct loom_http_req *req);
void api_apps_logs(struct loom_http_req *req);

void api_uploads_create(struct loom_http_req *req);
void api_uploads_get(struct loom_http_req *req);
void api_builds_create(struct loom_http_req *req);
void api_builds_list(struct loom_http_req *req);
void api_builds_get(struct loom_http_req *req);
void api_builds_update(struct loom_http_req *req);
void api_builds_delete(struct loom_http_req *req);
void api_buildruns_create(struct loom_http_req *req);
void api_buildruns_list(struct loom_http_req *req);
void api_buildruns_get(struct loom_http_req *req);
void api_buildruns_cancel(struct loom_http_req *req);
void api_buildruns_delete(struct loom_http_req *req);
void api_buildruns_logs(struct loom_http_req *req);

/* The image a build run pushes: given with its registry as is, else in the
 * platform registry under the project (<registry>/<project>/<given or
 * name>), with ":latest" when it has no tag. Allocated. */
int api_output_image(const char *project, const char *name, const char *given, char **ret,
                     struct loom_err *err);

void api_admin_nodes_list(struct loom_http_req *req);
void api_admin_nodes_action(struct loom_http_req *req);
void api_admin_keys_list(struct loom_http_req *req);
void api_admin_keys_create(struct loom_http_req *req);
void api_admin_keys_revoke(struct loom_http_req *req);
void api_admin_quota_get(struct loom_http_req *req);
void api_admin_usage_export(struct loom_http_req *req);
void api_usage_get(struct loom_http_req *req);
void api_admin_quota_put(struct loom_http_req *req);

#endif
