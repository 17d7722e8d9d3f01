#include "db.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

struct loom_db {
    PGconn *conn;
    bool in_tx;
};

/* libpq prints notices on stderr, which would break the JSON log stream */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* PQerrorMessage without its trailing newline. */
static void set_conn_error(struct loom_err *err, enum loom_errc code, const char *what,
                           PGconn *conn)
{
    const char *m = conn ? PQerrorMessage(conn) : "out of memory";
    size_t n = strlen(m);
    while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    loom_err_set(err, code, "%s: %.*s", what, (int)n, m);
}

static PGconn *connect_dsn(const char *dsn)
{
    const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *const vals[] = {dsn, program_invocation_short_name, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

int loom_db_open(const char *dsn, struct loom_db **ret, struct loom_err *err)
{
    PGconn *conn = connect_dsn(dsn ? dsn : "");
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        set_conn_error(err, LOOM_EUNAVAIL, "could not connect to PostgreSQL", conn);
        PQfinish(conn);
        return -1;
    }
    PQsetNoticeProcessor(conn, ignore_notice, NULL);
    struct loom_db *db = calloc(1, sizeof(*db));
    if (!db)
        abort();
    db->conn = conn;
    *ret = db;
    return 0;
}

int loom_db_open_wait(const char *dsn, int timeout_ms, struct loom_db **ret, struct loom_err *err)
{
    int64_t deadline = loom_mono_ms() + timeout_ms;
    for (;;) {
        if (loom_db_open(dsn, ret, err) == 0)
            return 0;
        if (loom_mono_ms() >= deadline)
            return -1;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void loom_db_close(struct loom_db *db)
{
    if (!db)
        return;
    PQfinish(db->conn);
    free(db);
}

PGconn *loom_db_conn(struct loom_db *db)
{
    return db->conn;
}

bool loom_db_ok(struct loom_db *db)
{
    return db && PQstatus(db->conn) == CONNECTION_OK;
}

bool loom_db_in_tx(struct loom_db *db)
{
    return db->in_tx;
}

enum loom_errc loom_db_errc_for_sqlstate(const char *s)
{
    if (!s || strlen(s) != 5)
        return LOOM_EUNAVAIL;
    if (strcmp(s, "23505") == 0 || strcmp(s, "23P01") == 0)
        return LOOM_ECONFLICT;
    if (strcmp(s, "23503") == 0)
        return LOOM_ENOTFOUND;
    if (strncmp(s, "23", 2) == 0 || strncmp(s, "22", 2) == 0)
        return LOOM_EINVAL;
    if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0 || strcmp(s, "55P03") == 0)
        return LOOM_ERETRY;
    if (strcmp(s, "57014") == 0)
        return LOOM_ETIMEOUT;
    /* connection exceptions, shutdown and crash recovery, out of resources */
    if (strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0 || strncmp(s, "53", 2) == 0)
        return LOOM_EUNAVAIL;
    return LOOM_EINTERNAL;
}

static void set_result_error(struct loom_err *err, PGconn *conn, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    if (!primary) {
        set_conn_error(err, LOOM_EUNAVAIL, "PostgreSQL query failed", conn);
        return;
    }
    enum loom_errc code = loom_db_errc_for_sqlstate(state);
    if (constraint && !strstr(primary, constraint))
        loom_err_set(err, code, "%s (constraint \"%s\")", primary, constraint);
    else
        loom_err_set(err, code, "%s", primary);
}

PGresult *loom_db_exec(struct loom_db *db, const char *sql, int n, const char *const *params,
                       struct loom_err *err)
{
    for (int attempt = 0;; attempt++) {
        if (PQstatus(db->conn) != CONNECTION_OK) {
            if (db->in_tx) {
                db->in_tx = false;
                loom_err_set(err, LOOM_EUNAVAIL,
                             "connection to PostgreSQL lost during a transaction");
                return NULL;
            }
            PQreset(db->conn);
            if (PQstatus(db->conn) != CONNECTION_OK) {
                set_conn_error(err, LOOM_EUNAVAIL, "could not reconnect to PostgreSQL", db->conn);
                return NULL;
            }
            PQsetNoticeProcessor(db->conn, ignore_notice, NULL);
        }
        PGresult *res = PQexecParams(db->conn, sql, n, NULL, params, NULL, NULL, 0);
        ExecStatusType st = PQresultStatus(res);
        if (res && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK))
            return res;
        if (PQstatus(db->conn) != CONNECTION_OK) {
            PQclear(res);
            if (db->in_tx) {
                db->in_tx = false;
                loom_err_set(err, LOOM_EUNAVAIL,
                             "connection to PostgreSQL lost during a transaction");
                return NULL;
            }
            if (attempt == 0)
                continue;
            set_conn_error(err, LOOM_EUNAVAIL, "PostgreSQL query failed", db->conn);
            return NULL;
        }
        if (res && (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR))
            set_result_error(err, db->conn, res);
        else if (res)
            loom_err_set(err, LOOM_EINTERNAL, "unexpected PostgreSQL result %s", PQresStatus(st));
        else
            set_conn_error(err, LOOM_EUNAVAIL, "PostgreSQL query failed", db->conn);
        PQclear(res);
        return NULL;
    }
}

int loom_db_run(struct loom_db *db, const char *sql, struct loom_err *err)
{
    PGresult *res = loom_db_exec(db, sql, 0, NULL, err);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

int loom_db_begin(struct loom_db *db, struct loom_err *err)
{
    if (db->in_tx)
        return loom_err_set(err, LOOM_EINTERNAL, "a transaction is already open");
    if (loom_db_run(db, "BEGIN", err) < 0)
        return -1;
    db->in_tx = true;
    return 0;
}

int loom_db_commit(struct loom_db *db, struct loom_err *err)
{
    if (!db->in_tx)
        return loom_err_set(err, LOOM_EINTERNAL, "no transaction is open");
    PGresult *res = loom_db_exec(db, "COMMIT", 0, NULL, err);
    db->in_tx = false;
    if (!res) {
        /* a failed COMMIT leaves no transaction behind, but make sure */
        if (PQstatus(db->conn) == CONNECTION_OK && PQtransactionStatus(db->conn) != PQTRANS_IDLE)
            PQclear(PQexec(db->conn, "ROLLBACK"));
        return -1;
    }
    /* COMMIT of a transaction that already failed answers ROLLBACK, not an error */
    bool rolled_back = strcmp(PQcmdStatus(res), "ROLLBACK") == 0;
    PQclear(res);
    if (rolled_back)
        return loom_err_set(err, LOOM_ERETRY, "transaction was rolled back after an earlier error");
    return 0;
}

void loom_db_rollback(struct loom_db *db)
{
    if (!db)
        return;
    bool open = db->in_tx;
    db->in_tx = false;
    if (PQstatus(db->conn) != CONNECTION_OK)
        return;
    if (open || PQtransactionStatus(db->conn) != PQTRANS_IDLE)
        PQclear(PQexec(db->conn, "ROLLBACK"));
}
