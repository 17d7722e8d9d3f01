#include "db.h"

#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "strbuf.h"
#include "util.h"

/* Every statement a connection runs is prepared on first use and executed
 * by name afterwards, so that PostgreSQL parses and plans it once per
 * connection rather than once per query (most of a small query's server
 * time). The cache is keyed by the SQL text; it is bounded because a
 * caller might build SQL text of many shapes: past STMT_MAX statements,
 * new ones run unprepared. */
#define STMT_MAX 256
#define STMT_SLOTS 512 /* open addressing, at most half full */

struct stmt {
    uint64_t hash;
    char *sql; /* NULL: free slot */
    unsigned id;
};

struct loom_db {
    PGconn *conn;
    bool in_tx;
    bool begin_pending; /* in_tx, but BEGIN goes out with the first statement */
    bool in_copy;       /* between loom_db_copy_start and loom_db_copy_end */
    struct stmt *stmts; /* STMT_SLOTS slots, allocated on first use */
    size_t nstmts;
    unsigned next_id; /* statement names are never reused on a connection */
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

static void stmts_clear(struct loom_db *db)
{
    if (!db->stmts)
        return;
    for (size_t i = 0; i < STMT_SLOTS; i++)
        free(db->stmts[i].sql);
    memset(db->stmts, 0, STMT_SLOTS * sizeof(*db->stmts));
    db->nstmts = 0;
}

void loom_db_close(struct loom_db *db)
{
    if (!db)
        return;
    PQfinish(db->conn);
    stmts_clear(db);
    free(db->stmts);
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

static uint64_t sql_hash(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot that holds sql, or the free slot where it would go. */
static struct stmt *stmt_slot(struct loom_db *db, const char *sql, uint64_t hash)
{
    for (size_t i = hash % STMT_SLOTS;; i = (i + 1) % STMT_SLOTS) {
        struct stmt *st = &db->stmts[i];
        if (!st->sql || (st->hash == hash && strcmp(st->sql, sql) == 0))
            return st;
    }
}

/* Forgets one statement (its slot is refilled from the following cluster,
 * as linear probing needs). The server keeps the old statement: names are
 * never reused, so nothing runs it again. */
static void stmt_forget(struct loom_db *db, struct stmt *st)
{
    free(st->sql);
    st->sql = NULL;
    db->nstmts--;
    size_t hole = (size_t)(st - db->stmts);
    for (size_t i = (hole + 1) % STMT_SLOTS; db->stmts[i].sql; i = (i + 1) % STMT_SLOTS) {
        size_t home = db->stmts[i].hash % STMT_SLOTS;
        /* move it when its home is not in (hole, i] (cyclically) */
        bool stays = hole < i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            db->stmts[hole] = db->stmts[i];
            db->stmts[i].sql = NULL;
            hole = i;
        }
    }
}

static void stmts_init(struct loom_db *db)
{
    if (db->stmts)
        return;
    db->stmts = calloc(STMT_SLOTS, sizeof(*db->stmts));
    if (!db->stmts)
        abort();
}

/* Runs sql, prepared when the cache has it or room for it. A failed
 * PREPARE's result is returned as the query's (the same error the query
 * would have had). *ret_st is the statement's slot when it ran prepared. */
static PGresult *exec_cached(struct loom_db *db, const char *sql, int n, const char *const *params,
                             struct stmt **ret_st)
{
    *ret_st = NULL;
    stmts_init(db);
    uint64_t hash = sql_hash(sql);
    struct stmt *st = stmt_slot(db, sql, hash);
    char name[24];
    if (!st->sql) {
        if (db->nstmts >= STMT_MAX)
            return PQexecParams(db->conn, sql, n, NULL, params, NULL, NULL, 0);
        unsigned id = db->next_id++;
        snprintf(name, sizeof(name), "loom_%u", id);
        PGresult *res = PQprepare(db->conn, name, sql, n, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            return res;
        PQclear(res);
        char *copy = strdup(sql);
        if (!copy)
            abort();
        *st = (struct stmt){.hash = hash, .sql = copy, .id = id};
        db->nstmts++;
    }
    snprintf(name, sizeof(name), "loom_%u", st->id);
    *ret_st = st;
    return PQexecPrepared(db->conn, name, n, params, NULL, NULL, 0);
}

/* A transaction's first statement: BEGIN, the PREPARE when the statement is
 * new and has room in the cache, and the statement go out in one pipeline,
 * one round trip. Returns like exec_cached: the first failure among them
 * (BEGIN, PREPARE, the statement), NULL when the connection broke. */
static PGresult *exec_with_begin(struct loom_db *db, const char *sql, int n,
                                 const char *const *params, struct stmt **ret_st)
{
    PGconn *c = db->conn;
    *ret_st = NULL;
    stmts_init(db);
    if (PQenterPipelineMode(c) != 1) {
        PGresult *b = PQexec(c, "BEGIN");
        if (PQresultStatus(b) != PGRES_COMMAND_OK)
            return b;
        PQclear(b);
        return exec_cached(db, sql, n, params, ret_st);
    }
    uint64_t hash = sql_hash(sql);
    struct stmt *st = stmt_slot(db, sql, hash);
    bool cached = st->sql != NULL, prepare = !cached && db->nstmts < STMT_MAX;
    unsigned id = cached ? st->id : db->next_id;
    if (prepare)
        db->next_id++;
    char name[24];
    snprintf(name, sizeof(name), "loom_%u", id);
    bool sent = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) &&
                (!prepare || PQsendPrepare(c, name, sql, n, NULL)) &&
                (cached || prepare ? PQsendQueryPrepared(c, name, n, params, NULL, NULL, 0)
                                   : PQsendQueryParams(c, sql, n, NULL, params, NULL, NULL, 0)) &&
                PQpipelineSync(c);
    /* each command's result is followed by a NULL; the sync point ends it */
    int nq = prepare ? 3 : 2, q = 0;
    PGresult *res[3] = {NULL, NULL, NULL};
    while (sent && q <= nq) {
        PGresult *r = PQgetResult(c);
        if (!r) {
            if (PQstatus(c) != CONNECTION_OK)
                break;
            q++;
            continue;
        }
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            break;
        }
        if (q < nq && !res[q])
            res[q] = r;
        else
            PQclear(r);
    }
    if (PQexitPipelineMode(c) != 1 && PQstatus(c) == CONNECTION_OK) {
        /* results left unread: this connection cannot be trusted any more */
        PQreset(c);
        stmts_clear(db);
    }
    if (PQstatus(c) != CONNECTION_OK) {
        for (int i = 0; i < nq; i++)
            PQclear(res[i]);
        return NULL;
    }
    /* the first command that did not succeed decides (the rest were skipped) */
    int last = nq - 1;
    for (int i = 0; i < last; i++) {
        if (PQresultStatus(res[i]) != PGRES_COMMAND_OK) {
            for (int k = 0; k < nq; k++)
                if (k != i)
                    PQclear(res[k]);
            return res[i];
        }
    }
    for (int i = 0; i < last; i++)
        PQclear(res[i]);
    if (prepare) {
        char *copy = strdup(sql);
        if (!copy)
            abort();
        *st = (struct stmt){.hash = hash, .sql = copy, .id = id};
        db->nstmts++;
    }
    if (cached || prepare)
        *ret_st = st;
    return res[last];
}

/* A prepared statement that can no longer run: gone from the server
 * (26000) or planned for a table whose columns changed (0A000, "cached plan
 * must not change result type"). */
static bool stmt_stale(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return state && (strcmp(state, "26000") == 0 ||
                     (strcmp(state, "0A000") == 0 && msg && strstr(msg, "cached plan")));
}

PGresult *loom_db_exec(struct loom_db *db, const char *sql, int n, const char *const *params,
                       struct loom_err *err)
{
    for (int attempt = 0;; attempt++) {
        /* with BEGIN still to send, the server has no transaction to lose */
        bool fresh = db->begin_pending;
        if (PQstatus(db->conn) != CONNECTION_OK) {
            if (db->in_tx && !fresh) {
                db->in_tx = false;
                loom_err_set(err, LOOM_EUNAVAIL,
                             "connection to PostgreSQL lost during a transaction");
                return NULL;
            }
            PQreset(db->conn);
            stmts_clear(db); /* a new session has none of them */
            if (PQstatus(db->conn) != CONNECTION_OK) {
                db->in_tx = db->begin_pending = false;
                set_conn_error(err, LOOM_EUNAVAIL, "could not reconnect to PostgreSQL", db->conn);
                return NULL;
            }
            PQsetNoticeProcessor(db->conn, ignore_notice, NULL);
        }
        struct stmt *prepared;
        PGresult *res = fresh ? exec_with_begin(db, sql, n, params, &prepared)
                              : exec_cached(db, sql, n, params, &prepared);
        ExecStatusType st = PQresultStatus(res);
        if (res && (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)) {
            db->begin_pending = false;
            return res;
        }
        if (PQstatus(db->conn) != CONNECTION_OK) {
            PQclear(res);
            if (db->in_tx && !fresh) {
                db->in_tx = false;
                loom_err_set(err, LOOM_EUNAVAIL,
                             "connection to PostgreSQL lost during a transaction");
                return NULL;
            }
            if (attempt == 0)
                continue;
            db->in_tx = db->begin_pending = false;
            set_conn_error(err, LOOM_EUNAVAIL, "PostgreSQL query failed", db->conn);
            return NULL;
        }
        db->begin_pending = false; /* BEGIN ran: the transaction is open (and failed) */
        if (prepared && res && stmt_stale(res)) {
            stmt_forget(db, prepared);
            if (attempt == 0 && (!db->in_tx || fresh)) {
                /* nothing but this statement ran in the transaction: start it again */
                PQclear(res);
                if (fresh) {
                    PQclear(PQexec(db->conn, "ROLLBACK"));
                    db->begin_pending = true;
                }
                continue;
            }
            PQclear(res); /* an open transaction failed with it: the caller rolls back */
            loom_err_set(err, LOOM_ERETRY,
                         "the database schema changed under a prepared statement: retry");
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
    /* BEGIN goes out with the first statement: one round trip less */
    db->in_tx = true;
    db->begin_pending = true;
    return 0;
}

int loom_db_commit(struct loom_db *db, struct loom_err *err)
{
    if (!db->in_tx)
        return loom_err_set(err, LOOM_EINTERNAL, "no transaction is open");
    if (db->begin_pending) { /* nothing ran in it */
        db->in_tx = db->begin_pending = false;
        return 0;
    }
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

static int copy_finish(struct loom_db *db, const char *why, struct loom_err *err);

void loom_db_rollback(struct loom_db *db)
{
    if (!db)
        return;
    bool open = db->in_tx && !db->begin_pending;
    db->in_tx = db->begin_pending = false;
    if (PQstatus(db->conn) != CONNECTION_OK) {
        db->in_copy = false;
        return;
    }
    if (db->in_copy) {
        struct loom_err ignored = LOOM_ERR_INIT;
        copy_finish(db, "rolled back", &ignored);
    }
    if (open || PQtransactionStatus(db->conn) != PQTRANS_IDLE)
        PQclear(PQexec(db->conn, "ROLLBACK"));
}

int loom_db_copy_start(struct loom_db *db, const char *sql, struct loom_err *err)
{
    if (PQstatus(db->conn) != CONNECTION_OK) {
        /* as a query would: reconnect once, unless a transaction was open */
        if (db->in_tx && !db->begin_pending) {
            db->in_tx = false;
            return loom_err_set(err, LOOM_EUNAVAIL,
                                "connection to PostgreSQL lost during a transaction");
        }
        PQreset(db->conn);
        stmts_clear(db);
        if (PQstatus(db->conn) != CONNECTION_OK) {
            db->in_tx = db->begin_pending = false;
            set_conn_error(err, LOOM_EUNAVAIL, "could not reconnect to PostgreSQL", db->conn);
            return -1;
        }
        PQsetNoticeProcessor(db->conn, ignore_notice, NULL);
    }
    if (db->begin_pending) {
        PGresult *b = PQexec(db->conn, "BEGIN");
        bool ok = PQresultStatus(b) == PGRES_COMMAND_OK;
        if (!ok)
            set_result_error(err, db->conn, b);
        PQclear(b);
        if (!ok)
            return -1;
        db->begin_pending = false;
    }
    PGresult *res = PQexec(db->conn, sql);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        set_result_error(err, db->conn, res);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    db->in_copy = true;
    return 0;
}

int loom_db_copy_put(struct loom_db *db, const void *data, size_t len, struct loom_err *err)
{
    if (!db->in_copy)
        return loom_err_set(err, LOOM_EINTERNAL, "no COPY is in progress");
    /* in pieces: PQputCopyData takes an int */
    const char *p = data;
    for (size_t off = 0; off < len;) {
        size_t n = len - off > (1u << 20) ? 1u << 20 : len - off;
        if (PQputCopyData(db->conn, p + off, (int)n) != 1) {
            /* PostgreSQL may have refused a row already: its error, if so */
            PGresult *res = PQgetResult(db->conn);
            if (PQresultErrorField(res, PG_DIAG_SQLSTATE))
                set_result_error(err, db->conn, res);
            else
                set_conn_error(err, LOOM_EUNAVAIL, "COPY to PostgreSQL failed", db->conn);
            PQclear(res);
            return -1;
        }
        off += n;
    }
    return 0;
}

/* Ends the COPY in progress (failing it with why, when not NULL) and reads
 * its result. */
static int copy_finish(struct loom_db *db, const char *why, struct loom_err *err)
{
    db->in_copy = false;
    if (PQputCopyEnd(db->conn, why) != 1) {
        set_conn_error(err, LOOM_EUNAVAIL, "COPY to PostgreSQL failed", db->conn);
        return -1;
    }
    int rc = 0;
    PGresult *res;
    while ((res = PQgetResult(db->conn))) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && rc == 0) {
            set_result_error(err, db->conn, res);
            rc = -1;
        }
        PQclear(res);
    }
    return rc;
}

int loom_db_copy_end(struct loom_db *db, struct loom_err *err)
{
    if (!db->in_copy)
        return loom_err_set(err, LOOM_EINTERNAL, "no COPY is in progress");
    return copy_finish(db, NULL, err);
}

void loom_db_array_elem(struct strbuf *out, const char *s, size_t len)
{
    strbuf_addch(out, '"');
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\')
            strbuf_addch(out, '\\');
        strbuf_addch(out, s[i]);
    }
    strbuf_addch(out, '"');
}

/* ---- COPY's binary format ------------------------------------------------------------ */

static void add_be16(struct strbuf *out, uint16_t v)
{
    v = htobe16(v);
    strbuf_add(out, &v, 2);
}

static void add_be32(struct strbuf *out, uint32_t v)
{
    v = htobe32(v);
    strbuf_add(out, &v, 4);
}

static void add_be64(struct strbuf *out, uint64_t v)
{
    v = htobe64(v);
    strbuf_add(out, &v, 8);
}

void loom_db_copy_bin_header(struct strbuf *out)
{
    /* the signature, then no flags and no header extension */
    strbuf_add(out, "PGCOPY\n\377\r\n\0", 11);
    add_be32(out, 0);
    add_be32(out, 0);
}

void loom_db_copy_bin_trailer(struct strbuf *out)
{
    add_be16(out, 0xffff);
}

void loom_db_copy_bin_row(struct strbuf *out, int nfields)
{
    add_be16(out, (uint16_t)nfields);
}

void loom_db_copy_bin_null(struct strbuf *out)
{
    add_be32(out, 0xffffffff);
}

void loom_db_copy_bin_int8(struct strbuf *out, int64_t v)
{
    add_be32(out, 8);
    add_be64(out, (uint64_t)v);
}

void loom_db_copy_bin_text(struct strbuf *out, const char *s, size_t len)
{
    add_be32(out, (uint32_t)len);
    strbuf_add(out, s, len);
}

void loom_db_copy_bin_uuid(struct strbuf *out, const uint8_t uuid[16])
{
    add_be32(out, 16);
    strbuf_add(out, uuid, 16);
}

void loom_db_copy_bin_timestamptz(struct strbuf *out, int64_t unix_us)
{
    /* microseconds since 2000-01-01 00:00 UTC, PostgreSQL's epoch */
    loom_db_copy_bin_int8(out, unix_us - 946684800LL * 1000000);
}
