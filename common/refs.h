/* What a spec's references to secrets and config maps hold, read from
 * PostgreSQL now (never kept: they change under us). Secrets are opened with
 * common/secretbox.c, so the caller has set its key. */
#ifndef LOOM_REFS_H
#define LOOM_REFS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "db.h"
#include "err.h"

/* The data of project_id's secret (secret true) or config map name, a JSON
 * object of strings, and a secret's format when ret_format is not NULL.
 * 1 with why filled when it is missing or does not open (whatever needs it
 * cannot run), -1 on a database error (try again later). */
int loom_refs_load(struct loom_db *db, const char *project_id, bool secret, const char *name,
                   json_t **ret_data, char ret_format[32], char *why, size_t why_len,
                   struct loom_err *err);

/* The credentials of registry secret name for an image on host
 * ("host[:port]"): *ret_auth "username:password" (allocated) when the
 * secret's server is that host, NULL when it is another's. 1 with why filled
 * when the secret is missing, does not open, or is not a registry secret
 * (server, username, password); -1 on a database error. */
int loom_refs_registry_auth(struct loom_db *db, const char *project_id, const char *name,
                            const char *host, char **ret_auth, char *why, size_t why_len,
                            struct loom_err *err);

/* Appends to env ([[name, value], ...]) the variables of run_env_variables
 * items (validated by common/spec.c), in order: literals, and the keys of
 * secrets and config maps (with their prefix, or renamed). 1 with why filled
 * when a reference or key is missing, -1 on a database error. */
int loom_refs_env(struct loom_db *db, const char *project_id, json_t *items, json_t *env, char *why,
                  size_t why_len, struct loom_err *err);

#endif
