/* Log retention: per project by age and by size (log_retention; a row
 * without project is the default, else --log-retention and no size limit),
 * in small batches, each its own short statement, so that writers never
 * wait on it; the oldest lines go first. One logshipper at a time runs a
 * pass (a session advisory lock). Deleted bytes come off log_streams.bytes
 * in the statement that deletes them, which is what the size limit reads. */
#include "logshipper.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "util.h"

/* pg_try_advisory_lock key: "loom-ret" */
#define RETENTION_LOCK "7813572034718297"
#define BATCH "2000"
#define MAX_BATCHES 50 /* per project and pass: the next pass goes on */

static int64_t last_pass_ms;
static struct loom_metric *m_deleted;

/* Deletes the lines $1.. selects ("ctid" of at most BATCH lines) and takes
 * their bytes off their streams; returns how many. */
static int64_t delete_batch(struct loom_db *db, const char *select, int n,
                            const char *const *params, struct loom_err *err)
{
    char sql[1200];
    snprintf(sql, sizeof(sql),
             "WITH d AS (DELETE FROM log_lines WHERE ctid = ANY(ARRAY(%s)) "
             "           RETURNING instance_id, octet_length(line) AS b), "
             "u AS (UPDATE log_streams s SET bytes = greatest(0, s.bytes - x.b) "
             "      FROM (SELECT instance_id, sum(b) AS b FROM d GROUP BY 1) x "
             "      WHERE s.instance_id = x.instance_id RETURNING 1) "
             "SELECT count(*) FROM d",
             select);
    _cleanup_pgres_ PGresult *res = loom_db_exec(db, sql, n, params, err);
    if (!res)
        return -1;
    return strtoll(PQgetvalue(res, 0, 0), NULL, 10);
}

/* Batches of select until it finds nothing (or MAX_BATCHES). */
static int64_t delete_all(struct loom_db *db, const char *select, int n, const char *const *params,
                          struct loom_err *err)
{
    int64_t total = 0;
    for (int i = 0; i < MAX_BATCHES; i++) {
        int64_t d = delete_batch(db, select, n, params, err);
        if (d < 0)
            return -1;
        total += d;
        if (d < atoi(BATCH))
            break;
    }
    return total;
}

static int by_size(struct loom_db *db, int64_t *deleted, struct loom_err *err);

static void pass(struct loom_db *db)
{
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *pol =
        loom_db_query(db, &err,
                      "SELECT project_id, (extract(epoch FROM max_age) * 1000)::bigint, max_bytes "
                      "FROM log_retention WHERE $1 ORDER BY project_id NULLS FIRST",
                      "true");
    if (!pol) {
        log_warn("log retention: %s", err.msg);
        return;
    }
    char def_age[24];
    snprintf(def_age, sizeof(def_age), "%" PRId64, ls_cfg.retention_ms);
    int64_t deleted = 0;
    /* by age: each project with its own policy, then every other line */
    for (int r = 0; r < PQntuples(pol); r++) {
        const char *pid = loom_db_val(pol, r, 0), *age = PQgetvalue(pol, r, 1);
        if (!pid) {
            snprintf(def_age, sizeof(def_age), "%s", age);
            continue;
        }
        const char *p[] = {pid, age};
        int64_t d = delete_all(db,
                               "SELECT ctid FROM log_lines WHERE project_id = $1 AND ts < now() - "
                               "$2::bigint * interval '1 millisecond' LIMIT " BATCH,
                               2, p, &err);
        if (d < 0)
            goto failed;
        deleted += d;
    }
    const char *p1[] = {def_age};
    int64_t d = delete_all(db,
                           "SELECT ctid FROM log_lines l WHERE ts < now() - $1::bigint * interval "
                           "'1 millisecond' AND (l.project_id IS NULL OR NOT EXISTS (SELECT 1 "
                           "FROM log_retention r WHERE r.project_id = l.project_id)) LIMIT " BATCH,
                           1, p1, &err);
    if (d < 0)
        goto failed;
    deleted += d;
    /* by size: the projects over their limit lose their oldest lines */
    if (by_size(db, &deleted, &err) < 0)
        goto failed;
    /* streams of instances long gone and emptied: nothing reads them */
    PGresult *gone = loom_db_query(
        db, &err,
        "DELETE FROM log_streams s WHERE s.bytes <= 0 AND s.eos_at < now() - $1::bigint * "
        "interval '1 millisecond' AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = "
        "s.instance_id)",
        def_age);
    if (!gone)
        goto failed;
    PQclear(gone);
    if (deleted > 0) {
        loom_metric_add(m_deleted, (double)deleted);
        log_info("log retention deleted %" PRId64 " lines", deleted);
    }
    return;
failed:
    log_warn("log retention: %s", err.msg);
}

static int by_size(struct loom_db *db, int64_t *deleted, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *over = loom_db_query(
        db, err,
        "SELECT s.project_id, sum(s.bytes) - coalesce(r.max_bytes, dr.max_bytes) "
        "FROM log_streams s LEFT JOIN log_retention r ON r.project_id = s.project_id "
        "LEFT JOIN log_retention dr ON dr.project_id IS NULL "
        "WHERE s.project_id IS NOT NULL AND coalesce(r.max_bytes, dr.max_bytes) IS NOT NULL "
        "AND $1 GROUP BY s.project_id, r.max_bytes, dr.max_bytes "
        "HAVING sum(s.bytes) > coalesce(r.max_bytes, dr.max_bytes)",
        "true");
    if (!over)
        return -1;
    for (int r = 0; r < PQntuples(over); r++) {
        const char *pid = PQgetvalue(over, r, 0);
        int64_t excess = strtoll(PQgetvalue(over, r, 1), NULL, 10);
        for (int i = 0; i < MAX_BATCHES && excess > 0; i++) {
            /* the oldest lines whose bytes, summed in order, reach the excess */
            char ex[24];
            snprintf(ex, sizeof(ex), "%" PRId64, excess);
            const char *p[] = {pid, ex};
            _cleanup_pgres_ PGresult *res = loom_db_exec(
                db,
                "WITH o AS (SELECT ctid, sum(octet_length(line)) OVER (ORDER BY ts, instance_id, "
                "\"offset\") - octet_length(line) AS before FROM (SELECT ctid, line, ts, "
                "instance_id, \"offset\" FROM log_lines WHERE project_id = $1 ORDER BY ts "
                "LIMIT " BATCH ") l), "
                "d AS (DELETE FROM log_lines WHERE ctid IN (SELECT ctid FROM o WHERE before < "
                "$2::bigint) RETURNING instance_id, octet_length(line) AS b), "
                "u AS (UPDATE log_streams s SET bytes = greatest(0, s.bytes - x.b) FROM (SELECT "
                "instance_id, sum(b) AS b FROM d GROUP BY 1) x WHERE s.instance_id = x.instance_id "
                "RETURNING 1) "
                "SELECT count(*), coalesce(sum(b), 0) FROM d",
                2, p, err);
            if (!res)
                return -1;
            int64_t n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
            *deleted += n;
            excess -= strtoll(PQgetvalue(res, 0, 1), NULL, 10);
            if (n == 0)
                break;
        }
    }
    return 0;
}

void ls_retention_tick(struct loom_service *svc)
{
    int64_t now = loom_mono_ms();
    if (now - last_pass_ms < ls_cfg.retention_every_ms || svc->stopping)
        return;
    last_pass_ms = now;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *lock =
        loom_db_query(svc->db, &err, "SELECT pg_try_advisory_lock($1::bigint)", RETENTION_LOCK);
    if (!lock || PQgetvalue(lock, 0, 0)[0] != 't')
        return; /* PostgreSQL is away, or another logshipper is at it */
    pass(svc->db);
    PGresult *un =
        loom_db_query(svc->db, &err, "SELECT pg_advisory_unlock($1::bigint)", RETENTION_LOCK);
    PQclear(un);
}

int ls_retention_start(struct loom_service *svc, struct loom_err *err)
{
    (void)svc;
    (void)err;
    m_deleted = loom_metric_counter("loom_logshipper_retention_deleted_total", NULL,
                                    "log lines deleted by the retention policy");
    /* the first pass runs an interval after start, not during it */
    last_pass_ms = loom_mono_ms();
    return 0;
}
