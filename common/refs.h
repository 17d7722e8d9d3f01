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

/* Appends to env ([[name, value], ...]) the variables of run_env_variables
 * items (validated by common/spec.c), in order: literals, and the keys of
 * secrets and config maps (with their prefix, or renamed). 1 with why filled
 * when a reference or key is missing, -1 on a database error. */
int loom_refs_env(struct loom_db *db, const char *project_id, json_t *items, json_t *env, char *why,
                  size_t why_len, struct loom_err *err);

#endif
