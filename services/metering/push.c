/* CloudEvents to a billing endpoint (metering.h).
 *
 * The events are rows of usage_events, made when their hour closed; each
 * has a stable id. They go out in seq order, a batch per POST
 * (application/cloudevents-batch+json, the shape OpenMeter and similar
 * services ingest), and the cursor (usage_push_cursor, per endpoint) moves
 * only after a 2xx: a failure or a restart sends the same events again,
 * under the same ids, and the receiver drops what it has. One replica
 * pushes at a time (a session advisory lock held for the round). */
#include "metering.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "strbuf.h"

/* pg_try_advisory_lock key: "loom-psh" */
#define PUSH_LOCK "7813572034718296"
#define MAX_BATCHES_PER_ROUND 50

static struct loom_metric *m_sent, *m_fail;

/* POSTs one batch; 0 when the endpoint took it (2xx). */
static int post(const char *body, size_t len, struct loom_err *err)
{
    _cleanup_free_ char *auth = NULL;
    const char *headers[4] = {"Content-Type: application/cloudevents-batch+json",
                              "Accept: application/json"};
    if (meter_cfg.push_token && *meter_cfg.push_token) {
        if (asprintf(&auth, "Authorization: Bearer %s", meter_cfg.push_token) < 0)
            abort();
        headers[2] = auth;
    }
    struct loom_httpc_req req = {
        .method = "POST",
        .url = meter_cfg.push_url,
        .headers = headers,
        .body = body,
        .body_len = len,
        .timeout_ms = meter_cfg.push_timeout_ms,
        .max_body = 64 * 1024,
    };
    struct loom_httpc_resp resp = {.body = STRBUF_INIT};
    int rc = loom_httpc_do(&req, &resp, err);
    if (rc == 0 && (resp.status < 200 || resp.status > 299))
        rc = loom_err_set(err, LOOM_EUNAVAIL, "%s answered %ld: %.200s", meter_cfg.push_url,
                          resp.status, resp.body.buf);
    loom_httpc_resp_release(&resp);
    return rc;
}

/* Sends one batch after the cursor; returns how many (0: nothing to send). */
static int push_batch(struct loom_db *db, struct loom_err *err)
{
    const char *target = meter_cfg.push_url;
    _cleanup_pgres_ PGresult *cur = loom_db_query(
        db, err,
        "INSERT INTO usage_push_cursor (target) VALUES ($1) ON CONFLICT (target) DO UPDATE "
        "SET target = EXCLUDED.target RETURNING seq",
        target);
    if (!cur)
        return -1;
    const char *from = PQgetvalue(cur, 0, 0);
    char limit[24];
    snprintf(limit, sizeof(limit), "%" PRId64, meter_cfg.push_batch);
    _cleanup_pgres_ PGresult *rows = loom_db_query(
        db, err,
        "SELECT seq, event::text FROM usage_events WHERE seq > $1::bigint ORDER BY seq LIMIT $2",
        from, limit);
    if (!rows)
        return -1;
    int n = PQntuples(rows);
    if (n == 0)
        return 0;
    struct strbuf body = STRBUF_INIT;
    strbuf_addch(&body, '[');
    for (int r = 0; r < n; r++) {
        if (r)
            strbuf_addch(&body, ',');
        strbuf_addstr(&body, PQgetvalue(rows, r, 1));
    }
    strbuf_addch(&body, ']');
    int rc = post(body.buf, body.len, err);
    strbuf_release(&body);
    if (rc < 0)
        return -1;
    /* only from where we started: a cursor moved meanwhile (an operator's
     * reset) is left alone */
    _cleanup_pgres_ PGresult *upd =
        loom_db_query(db, err,
                      "UPDATE usage_push_cursor SET seq = $2::bigint, updated_at = now() "
                      "WHERE target = $1 AND seq = $3::bigint",
                      target, PQgetvalue(rows, n - 1, 0), from);
    if (!upd)
        return -1;
    return n;
}

int meter_push(struct loom_db *db, struct loom_err *err)
{
    if (!m_sent) {
        m_sent = loom_metric_counter("loom_metering_events_pushed_total", NULL,
                                     "usage CloudEvents the billing endpoint accepted");
        m_fail = loom_metric_counter("loom_metering_push_failures_total", NULL,
                                     "POSTs to the billing endpoint that failed (retried)");
    }
    _cleanup_pgres_ PGresult *lock =
        loom_db_query(db, err, "SELECT pg_try_advisory_lock($1::bigint)", PUSH_LOCK);
    if (!lock)
        return -1;
    if (PQgetvalue(lock, 0, 0)[0] != 't')
        return 0;
    int total = 0, rc = 0;
    for (int i = 0; i < MAX_BATCHES_PER_ROUND; i++) {
        rc = push_batch(db, err);
        if (rc <= 0)
            break;
        total += rc;
        loom_metric_add(m_sent, rc);
    }
    if (rc < 0)
        loom_metric_add(m_fail, 1);
    struct loom_err uerr = LOOM_ERR_INIT;
    PGresult *un = loom_db_query(db, &uerr, "SELECT pg_advisory_unlock($1::bigint)", PUSH_LOCK);
    PQclear(un);
    return rc < 0 ? -1 : total;
}
