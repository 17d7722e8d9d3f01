/* PostgreSQL over libpq: parameterized queries only, transactions, and
 * SQLSTATEs mapped to loom_errc.
 *
 * A struct loom_db is one connection and is not thread-safe: give each thread
 * its own. A query on a broken connection reconnects once and retries, unless
 * a transaction was open (then the error is LOOM_EUNAVAIL and the caller's
 * transaction is gone).
 *
 * Each connection prepares the statements it runs (the first 256 distinct SQL
 * texts) and executes them by name afterwards; a statement whose table
 * changed shape under it is prepared again (inside a transaction that already
 * did other work, the error is LOOM_ERETRY). loom_db_begin sends nothing:
 * BEGIN goes out with the transaction's first statement, in one round trip. */
#ifndef LOOM_DB_H
#define LOOM_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct loom_db;

int loom_db_open(const char *dsn, struct loom_db **ret, struct loom_err *err);
/* Retries loom_db_open until it works or timeout_ms passes. */
int loom_db_open_wait(const char *dsn, int timeout_ms, struct loom_db **ret, struct loom_err *err);
void loom_db_close(struct loom_db *db); /* accepts NULL */
PGconn *loom_db_conn(struct loom_db *db);
bool loom_db_ok(struct loom_db *db); /* connection is up (for /readyz) */

/* Runs sql with n text parameters ($1..$n; a NULL entry is SQL NULL).
 * Returns the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK) or NULL with err
 * filled: unique violation -> LOOM_ECONFLICT, foreign key -> LOOM_ENOTFOUND,
 * check/data exceptions -> LOOM_EINVAL, serialization/deadlock -> LOOM_ERETRY,
 * connection -> LOOM_EUNAVAIL, query_canceled -> LOOM_ETIMEOUT. The message
 * carries PostgreSQL's primary message; err->msg for a constraint names it. */
PGresult *loom_db_exec(struct loom_db *db, const char *sql, int n, const char *const *params,
                       struct loom_err *err);

/* loom_db_query(db, err, sql, p1, p2, ...) with at least one parameter. */
#define loom_db_query(db, err, sql, ...)                                                           \
    loom_db_exec((db), (sql), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)), \
                 (const char *[]){__VA_ARGS__}, (err))

/* Runs sql without parameters and discards the result. */
int loom_db_run(struct loom_db *db, const char *sql, struct loom_err *err);

int loom_db_begin(struct loom_db *db, struct loom_err *err);
int loom_db_commit(struct loom_db *db, struct loom_err *err);
void loom_db_rollback(struct loom_db *db); /* safe when no transaction is open */
bool loom_db_in_tx(struct loom_db *db);

/* COPY ... FROM STDIN in pieces, so that PostgreSQL stores the first rows
 * while the caller makes the next: loom_db_copy_start sends sql (BEGIN
 * first when it is still to send), loom_db_copy_put sends data as it comes
 * (it waits only while PostgreSQL is behind), loom_db_copy_end ends the
 * COPY and says whether PostgreSQL took every row (errors as
 * loom_db_exec's: a unique violation is LOOM_ECONFLICT). Nothing else may
 * use db in between; loom_db_rollback abandons a COPY in progress (after a
 * failed put, say). */
int loom_db_copy_start(struct loom_db *db, const char *sql, struct loom_err *err);
int loom_db_copy_put(struct loom_db *db, const void *data, size_t len, struct loom_err *err);
int loom_db_copy_end(struct loom_db *db, struct loom_err *err);

/* COPY's binary format (COPY ... FROM STDIN WITH (FORMAT binary)): the
 * header, then for each row loom_db_copy_bin_row with the number of fields
 * and that many fields, then the trailer. PostgreSQL reads binary values
 * without parsing text: an int8, a uuid or a timestamptz costs it a copy.
 * Text must be valid in the server's encoding, without NUL bytes. */
struct strbuf;
void loom_db_copy_bin_header(struct strbuf *out);
void loom_db_copy_bin_trailer(struct strbuf *out);
void loom_db_copy_bin_row(struct strbuf *out, int nfields);
void loom_db_copy_bin_null(struct strbuf *out);
void loom_db_copy_bin_int8(struct strbuf *out, int64_t v);
void loom_db_copy_bin_text(struct strbuf *out, const char *s, size_t len);
void loom_db_copy_bin_uuid(struct strbuf *out, const uint8_t uuid[16]);
/* unix_us: microseconds since 1970-01-01 00:00 UTC */
void loom_db_copy_bin_timestamptz(struct strbuf *out, int64_t unix_us);

/* Appends s (len bytes) as one element of a PostgreSQL array literal:
 * "..." with " and \ escaped. With the braces around the elements, the
 * literal is one parameter: many rows in one statement (unnest). */
struct strbuf;
void loom_db_array_elem(struct strbuf *out, const char *s, size_t len);

/* The loom_errc for a SQLSTATE (NULL -> LOOM_EUNAVAIL). */
enum loom_errc loom_db_errc_for_sqlstate(const char *sqlstate);

static inline void loom_pqclearp(PGresult **r)
{
    PQclear(*r);
}
#define _cleanup_pgres_ __attribute__((cleanup(loom_pqclearp)))

/* Value of row r, column c, or NULL when SQL NULL. */
static inline const char *loom_db_val(const PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? NULL : PQgetvalue(res, r, c);
}

#endif
