/* Aggregation of usage into hourly records (metering.h).
 *
 * A pass runs in one transaction under an advisory lock, so replicas take
 * turns and a pass is all or nothing. It marks the usage it takes (samples,
 * request counts, activations) in the statement that adds it to records:
 * each unit of usage is counted exactly once. Quantities are PostgreSQL
 * numerics computed by multiplying integers with exact decimals (no
 * division, no floating point), so the records add up to the samples to the
 * last digit.
 *
 * Each piece of usage goes to the hour its interval ends in. An hour's own
 * row (correction 0) grows while the hour is open; it closes close_after
 * past the hour's end and never changes again. Usage for a closed hour gets
 * a row of its own, marked with the pass that found it (a correction),
 * closed at once. */
#include "metering.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "metrics.h"

/* pg_try_advisory_xact_lock key: "loom-met" */
#define AGGREGATE_LOCK "7813572034718295"

static struct loom_metric *m_passes, *m_closed, *m_corrections;

/* $1 the pass, $2 how many of each source at most. Returns the ids of the
 * open rows it grew and of the correction rows it made, and the counts. */
static const char take_sql_head[] =
    "WITH smp AS ( "
    "  UPDATE usage_samples u SET aggregated = true "
    "  FROM (SELECT instance_id, seq FROM usage_samples WHERE NOT aggregated "
    "        ORDER BY ts LIMIT $2 FOR UPDATE) p "
    "  WHERE u.instance_id = p.instance_id AND u.seq = p.seq "
    "  RETURNING u.ts, u.project_id, u.project, u.kind, u.resource, u.revision, u.interval_ms, "
    "            u.cpu_ns, u.cpu_millis_alloc, u.memory_bytes_alloc, u.gpus, u.gpu_model, "
    "            u.ephemeral_bytes_alloc), "
    "req AS ( "
    "  UPDATE usage_requests u SET aggregated = true "
    "  FROM (SELECT id FROM usage_requests WHERE NOT aggregated ORDER BY ts LIMIT $2 FOR UPDATE) p "
    "  WHERE u.id = p.id "
    "  RETURNING u.ts, u.project_id, u.project, u.app, u.revision, u.requests), "
    "act AS ( "
    "  UPDATE function_activations a SET metered = true "
    "  FROM (SELECT id FROM function_activations WHERE NOT metered "
    "        ORDER BY started_at LIMIT $2 FOR UPDATE) p "
    "  WHERE a.id = p.id "
    "  RETURNING a.started_at, a.project_id, a.function_name, a.generation, a.billed_ms, "
    "            a.memory_bytes), "
    "bld AS ( "
    "  UPDATE build_runs b SET metered = true "
    "  FROM (SELECT id FROM build_runs WHERE NOT metered AND finished_at IS NOT NULL "
    "        ORDER BY finished_at LIMIT $2 FOR UPDATE) p "
    "  WHERE b.id = p.id "
    "  RETURNING b.finished_at, b.project_id, b.name, "
    "            coalesce(b.spec->>'strategy_size', 'medium') AS size, "
    "            extract(epoch FROM b.finished_at - coalesce(b.started_at, b.finished_at)) "
    "              AS secs), ";
/* (two halves: one string may not be longer than C17 promises, 4095) */
static const char take_sql_tail[] =
    "q AS ( "
    /* samples of stem cells and function instances are kept, not billed:
     * a function's price is its activations' */
    "  SELECT date_trunc('hour', s.ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, "
    "         s.project_id, s.project, s.kind, s.resource, s.revision, x.metric, x.sku, x.quantity "
    "  FROM smp s CROSS JOIN LATERAL (VALUES "
    "    ('vcpu_seconds_allocated', '', s.cpu_millis_alloc::numeric * s.interval_ms * 0.000001), "
    "    ('vcpu_seconds_used', '', s.cpu_ns::numeric * 0.000000001), "
    "    ('memory_gb_seconds', '', "
    "     s.memory_bytes_alloc::numeric * s.interval_ms * 0.000000000001), "
    "    ('gpu_seconds', s.gpu_model, s.gpus::numeric * s.interval_ms * 0.001), "
    "    ('ephemeral_gb_seconds', '', "
    "     s.ephemeral_bytes_alloc::numeric * s.interval_ms * 0.000000000001) "
    "  ) x(metric, sku, quantity) "
    "  WHERE s.project_id IS NOT NULL AND s.kind IN ('app', 'job') AND x.quantity > 0 "
    "  UNION ALL "
    "  SELECT date_trunc('hour', r.ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', "
    "         r.project_id, r.project, 'app', r.app, r.revision, 'requests', '', "
    "r.requests::numeric "
    "  FROM req r "
    "  UNION ALL "
    "  SELECT date_trunc('hour', a.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', "
    "         a.project_id, p.name, 'function', a.function_name, a.generation::text, x.metric, '', "
    "         x.quantity "
    "  FROM act a JOIN projects p ON p.id = a.project_id CROSS JOIN LATERAL (VALUES "
    "    ('function_invocations', 1::numeric), "
    "    ('function_gb_seconds', a.memory_bytes::numeric * a.billed_ms * 0.000000000001) "
    "  ) x(metric, quantity) WHERE x.quantity > 0 "
    "  UNION ALL "
    "  SELECT date_trunc('hour', b.finished_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', "
    "         b.project_id, p.name, 'build', b.name, '', 'build_seconds', b.size, b.secs "
    "  FROM bld b JOIN projects p ON p.id = b.project_id WHERE b.secs > 0), "
    "g AS ( "
    "  SELECT hour, project_id, min(project) AS project, kind, resource, revision, metric, sku, "
    "         sum(quantity) AS quantity, count(*) AS n, "
    "         hour <= coalesce((SELECT max(hour) FROM usage_hours), '-infinity') AS closed "
    "  FROM q GROUP BY hour, project_id, kind, resource, revision, metric, sku), "
    "grown AS ( "
    "  INSERT INTO usage_records (hour, project_id, project, kind, resource, revision, metric, "
    "                             sku, quantity, sources) "
    "  SELECT hour, project_id, project, kind, resource, revision, metric, sku, quantity, n "
    "  FROM g WHERE NOT closed "
    "  ON CONFLICT (hour, project_id, kind, resource, revision, metric, sku, correction) "
    "  DO UPDATE SET quantity = usage_records.quantity + EXCLUDED.quantity, "
    "                sources = usage_records.sources + EXCLUDED.sources, updated_at = now() "
    "  RETURNING id), "
    "late AS ( "
    "  INSERT INTO usage_records (hour, project_id, project, kind, resource, revision, metric, "
    "                             sku, quantity, sources, correction, closed_pass) "
    "  SELECT hour, project_id, project, kind, resource, revision, metric, sku, quantity, n, "
    "         $1, $1 "
    "  FROM g WHERE closed "
    "  RETURNING id) "
    "SELECT coalesce((SELECT array_agg(id) FROM grown), '{}'), "
    "       coalesce((SELECT array_agg(id) FROM late), '{}'), "
    "       (SELECT count(*) FROM smp), (SELECT count(*) FROM req), (SELECT count(*) FROM act), "
    "       (SELECT count(*) FROM smp WHERE project_id IS NULL), (SELECT count(*) FROM bld)";

enum { T_GROWN, T_LATE, T_SAMPLES, T_REQUESTS, T_ACTIVATIONS, T_ORPHANS, T_BUILDS };

/* Closes every hour whose end is close_after ($2 ms) past, in order, and
 * the rows of those hours. $1 the pass. Returns the ids closed. */
static const char close_hours_sql[] =
    "WITH lim AS ( "
    "  SELECT date_trunc('hour', (now() - $2::bigint * interval '1 millisecond') AT TIME ZONE "
    "'UTC') "
    "         AT TIME ZONE 'UTC' - interval '1 hour' AS h), "
    "first AS ( "
    "  SELECT coalesce((SELECT max(hour) + interval '1 hour' FROM usage_hours), "
    "                  (SELECT least(min(hour), (SELECT h FROM lim)) FROM usage_records "
    "                   WHERE closed_pass IS NULL), "
    "                  (SELECT h FROM lim)) AS f), "
    "hours AS ( "
    "  INSERT INTO usage_hours (hour, pass) "
    "  SELECT generate_series((SELECT f FROM first), (SELECT h FROM lim), interval '1 hour'), $1 "
    "  ON CONFLICT DO NOTHING RETURNING hour) "
    "UPDATE usage_records SET closed_pass = $1 "
    " WHERE closed_pass IS NULL AND hour <= (SELECT max(hour) FROM hours) "
    " RETURNING id";

/* The CloudEvents of the rows closed by pass $1 ($2 the source): one per
 * hour, project, metric, SKU and correction; the id says which. */
static const char events_sql[] =
    "INSERT INTO usage_events (id, event) "
    "SELECT e.id, jsonb_build_object("
    "  'specversion', '1.0', 'id', e.id, 'source', $2::text, 'type', 'dev.loom.usage',"
    "  'subject', e.project, 'time', e.start, 'datacontenttype', 'application/json',"
    "  'data', jsonb_build_object("
    "    'project', e.project, 'project_id', e.project_id, 'metric', e.metric, 'sku', e.sku,"
    "    'unit', e.unit, 'quantity', e.quantity, 'charge_period_start', e.start,"
    "    'charge_period_end', e.finish, 'correction', e.correction > 0, 'currency', e.currency,"
    "    'list_cost', e.list_cost, 'billed_cost', e.billed_cost,"
    "    'price_version', e.price_version, 'resources', e.resources)) "
    "FROM (SELECT 'loom-usage/' || u.project_id || '/' || u.metric"
    "             || CASE WHEN u.sku <> '' THEN '/' || u.sku ELSE '' END || '/'"
    "             || to_char(u.hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\"Z\"')"
    "             || CASE WHEN u.correction > 0 THEN '/correction-' || u.correction ELSE '' END"
    "             AS id,"
    "             u.project, u.project_id, u.metric, u.sku, m.unit, u.correction, u.currency,"
    "             to_char(u.hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS start,"
    "             to_char((u.hour + interval '1 hour') AT TIME ZONE 'UTC',"
    "                     'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS finish,"
    "             trim_scale(sum(u.quantity)) AS quantity,"
    "             trim_scale(sum(u.list_cost)) AS list_cost,"
    "             trim_scale(sum(u.billed_cost)) AS billed_cost,"
    "             max(u.price_version) AS price_version, count(*) AS resources"
    "      FROM usage_records u JOIN usage_metrics m ON m.name = u.metric"
    "      WHERE u.closed_pass = $1"
    "      GROUP BY u.project_id, u.project, u.metric, u.sku, m.unit, u.hour, u.correction,"
    "               u.currency"
    "      ORDER BY u.hour, u.project_id, u.metric, u.sku, u.correction) e "
    "ON CONFLICT (id) DO NOTHING";

static int rate(struct loom_db *db, const char *ids, struct loom_err *err)
{
    if (strcmp(ids, "{}") == 0)
        return 0;
    _cleanup_pgres_ PGresult *res = loom_db_query(db, err, "SELECT usage_rate($1::bigint[])", ids);
    return res ? 0 : -1;
}

/* The ids of a RETURNING id result as an array literal. */
static char *ids_of(PGresult *res)
{
    struct strbuf sb = STRBUF_INIT;
    strbuf_addch(&sb, '{');
    for (int r = 0; r < PQntuples(res); r++)
        strbuf_addf(&sb, "%s%s", r ? "," : "", PQgetvalue(res, r, 0));
    strbuf_addch(&sb, '}');
    return strbuf_detach(&sb, NULL);
}

static int pass(struct loom_db *db, int64_t *ret_taken, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *lock = loom_db_query(db, err,
                                                   "SELECT pg_try_advisory_xact_lock($1::bigint), "
                                                   "nextval('usage_pass_seq')",
                                                   AGGREGATE_LOCK);
    if (!lock)
        return -1;
    if (PQgetvalue(lock, 0, 0)[0] != 't') {
        *ret_taken = 0;
        return 0; /* another replica's turn (the sequence number is lost: gaps are fine) */
    }
    const char *passno = PQgetvalue(lock, 0, 1);
    char limit[24];
    snprintf(limit, sizeof(limit), "%" PRId64, meter_cfg.aggregate_batch);
    _cleanup_free_ char *take_sql = NULL;
    if (asprintf(&take_sql, "%s%s", take_sql_head, take_sql_tail) < 0)
        abort();
    _cleanup_pgres_ PGresult *took = loom_db_query(db, err, take_sql, passno, limit);
    if (!took)
        return loom_err_wrap(err, "aggregating usage");
    int64_t samples = strtoll(PQgetvalue(took, 0, T_SAMPLES), NULL, 10);
    int64_t requests = strtoll(PQgetvalue(took, 0, T_REQUESTS), NULL, 10);
    int64_t activations = strtoll(PQgetvalue(took, 0, T_ACTIVATIONS), NULL, 10);
    int64_t orphans = strtoll(PQgetvalue(took, 0, T_ORPHANS), NULL, 10);
    int64_t builds = strtoll(PQgetvalue(took, 0, T_BUILDS), NULL, 10);
    if (orphans > 0)
        log_warn("%" PRId64 " usage samples of unknown projects cannot be billed", orphans);
    if (rate(db, PQgetvalue(took, 0, T_GROWN), err) < 0 ||
        rate(db, PQgetvalue(took, 0, T_LATE), err) < 0)
        return loom_err_wrap(err, "rating usage");
    const char *late = PQgetvalue(took, 0, T_LATE);
    if (strcmp(late, "{}") != 0) {
        log_info("pass %s: usage for hours already closed went to correction rows %s", passno,
                 late);
        loom_metric_add(m_corrections, 1);
    }
    bool drained = samples < meter_cfg.aggregate_batch && requests < meter_cfg.aggregate_batch &&
                   activations < meter_cfg.aggregate_batch && builds < meter_cfg.aggregate_batch;
    /* an hour closes only once what waited for it is in (a pass that hit
     * its limit leaves more behind) */
    if (drained) {
        char close_after[24];
        snprintf(close_after, sizeof(close_after), "%" PRId64, meter_cfg.close_after_ms);
        _cleanup_pgres_ PGresult *closed =
            loom_db_query(db, err, close_hours_sql, passno, close_after);
        if (!closed)
            return loom_err_wrap(err, "closing hours");
        if (PQntuples(closed) > 0) {
            _cleanup_free_ char *ids = ids_of(closed);
            if (rate(db, ids, err) < 0)
                return loom_err_wrap(err, "rating closed hours");
            loom_metric_add(m_closed, PQntuples(closed));
        }
    }
    _cleanup_pgres_ PGresult *ev =
        loom_db_query(db, err, events_sql, passno, meter_cfg.push_source);
    if (!ev)
        return loom_err_wrap(err, "making usage events");
    *ret_taken = samples + requests + activations + builds;
    return 0;
}

int meter_aggregate(struct loom_db *db, struct loom_err *err)
{
    if (!m_passes) {
        m_passes = loom_metric_counter("loom_metering_aggregation_passes_total", NULL,
                                       "aggregation passes run by this replica");
        m_closed = loom_metric_counter("loom_metering_records_closed_total", NULL,
                                       "hourly usage records closed (final)");
        m_corrections = loom_metric_counter("loom_metering_correction_passes_total", NULL,
                                            "passes that found usage for closed hours");
    }
    if (loom_db_begin(db, err) < 0)
        return -1;
    int64_t taken = 0;
    if (pass(db, &taken, err) < 0) {
        loom_db_rollback(db);
        return -1;
    }
    if (loom_db_commit(db, err) < 0)
        return -1;
    loom_metric_add(m_passes, 1);
    return (int)(taken > INT32_MAX ? INT32_MAX : taken);
}
