/* Apps (leader): keep clamp(desired, min, max) live instances of the app's
 * current generation; replace the failed (with a backoff for crash loops),
 * stop the extra, and retire old generations once the new one is running.
 * Scale decisions (any replica) only store the desired count. */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "spec.h"
#include "loom/v1/scale.pb-c.h"
#include "subjects.h"
#include "util.h"

enum {
    COL_ID,
    COL_PROJECT_ID,
    COL_PROJECT,
    COL_NAME,
    COL_GENERATION,
    COL_DESIRED,
    COL_CPU,
    COL_MEM,
    COL_GPUS,
    COL_EPHEMERAL,
    COL_LIVE_CUR,
    COL_RUNNING_CUR,
    COL_LIVE_OLD,
    COL_BACKOFF,
    COL_REASON,
    COL_SPEC,
};

/* Creates n instances of app row r; appends their ids. */
static int app_create(struct sched *s, struct loom_db *db, int64_t epoch, PGresult *apps, int r,
                      int64_t n, struct sched_node *nodes, size_t nnodes, struct strbuf *ids,
                      size_t *ret_placed, struct loom_err *err)
{
    char why[256] = "";
    struct sched_request req;
    int64_t placed = 0;
    _cleanup_spec_ struct loom_spec spec = {0};
    struct loom_err serr = LOOM_ERR_INIT;
    if (loom_spec_decode_text(LOOM_KIND_APP, PQgetvalue(apps, r, COL_SPEC), &spec, &serr) < 0) {
        snprintf(why, sizeof(why), "%.255s", serr.msg);
        n = 0;
    } else {
        sched_request_init(&req, &spec, strtoll(PQgetvalue(apps, r, COL_CPU), NULL, 10),
                           strtoll(PQgetvalue(apps, r, COL_MEM), NULL, 10),
                           strtoll(PQgetvalue(apps, r, COL_EPHEMERAL), NULL, 10),
                           strtoll(PQgetvalue(apps, r, COL_GPUS), NULL, 10));
        /* the project's quota bounds apps as it bounds jobs */
        struct sched_quota q;
        bool has_quota = false;
        if (n > 0 &&
            sched_quota_load(db, PQgetvalue(apps, r, COL_PROJECT_ID), &q, &has_quota, err) < 0)
            return -1;
        if (has_quota) {
            size_t room = sched_quota_room(&q, &req, why, sizeof(why));
            if ((int64_t)room < n)
                n = (int64_t)room;
        }
        struct strbuf a_id = STRBUF_INIT, a_node = STRBUF_INIT;
        size_t sample = sched_sample_size(nnodes);
        for (; placed < n; placed++) {
            long k = sched_choose_node(nodes, nnodes, &req, sample, &s->rng);
            if (k < 0) {
                sched_describe_request(&req, why, sizeof(why));
                s->pool.ran_short = true;
                break;
            }
            nodes[k].cpu_used += req.cpu_millis;
            nodes[k].mem_used += req.memory_bytes;
            nodes[k].gpus_used += req.gpus;
            nodes[k].disk_used += req.ephemeral_bytes;
            char uuid[37];
            loom_uuid4(uuid);
            sched_pg_array_add(&a_id, uuid);
            sched_pg_array_add(&a_node, nodes[k].name);
        }
        if (placed > 0) {
            sched_pg_array_end(&a_id);
            sched_pg_array_end(&a_node);
            char ep[32], cpu[32], mem[32], gpus[16], ephb[32];
            snprintf(ep, sizeof(ep), "%lld", (long long)epoch);
            snprintf(ephb, sizeof(ephb), "%lld", (long long)req.ephemeral_bytes);
            snprintf(cpu, sizeof(cpu), "%lld", (long long)req.cpu_millis);
            snprintf(mem, sizeof(mem), "%lld", (long long)req.memory_bytes);
            snprintf(gpus, sizeof(gpus), "%d", req.gpus);
            _cleanup_pgres_ PGresult *ins = loom_db_query(
                db, err,
                "INSERT INTO instances (id, project_id, kind, app_id, app_generation, node_name, "
                "  epoch, cpu_millis, memory_bytes, gpus, ephemeral_bytes) "
                "SELECT x.id, $2::bigint, 'app', $1::bigint, $3::integer, x.node, $4::bigint, "
                "  $5::bigint, $6::bigint, $7::integer, $10::bigint "
                "FROM unnest($8::uuid[], $9::text[]) AS x(id, node) RETURNING id",
                PQgetvalue(apps, r, COL_ID), PQgetvalue(apps, r, COL_PROJECT_ID),
                PQgetvalue(apps, r, COL_GENERATION), ep, cpu, mem, gpus, a_id.buf, a_node.buf,
                ephb);
            strbuf_release(&a_id);
            strbuf_release(&a_node);
            if (!ins)
                return -1;
            for (int i = 0; i < PQntuples(ins); i++)
                sched_pg_array_add(ids, PQgetvalue(ins, i, 0));
            *ret_placed += (size_t)PQntuples(ins);
        } else {
            strbuf_release(&a_id);
            strbuf_release(&a_node);
        }
    }
    const char *old = loom_db_val(apps, r, COL_REASON);
    bool changed = why[0] ? !old || strcmp(old, why) != 0 : old != NULL;
    if (changed) {
        _cleanup_pgres_ PGresult *w = loom_db_query(
            db, err, "UPDATE apps SET waiting_reason = nullif($2, '') WHERE id = $1::bigint",
            PQgetvalue(apps, r, COL_ID), why);
        if (!w)
            return -1;
    }
    return 0;
}

/* An instance on a draining node counts as an old one: a replacement is
 * placed elsewhere first and the instance is stopped once the replacements
 * run, as in a rollover; cordoned nodes keep what they run. */
#define ON_DRAINING                                                                                \
    "EXISTS (SELECT 1 FROM nodes dn WHERE dn.name = node_name AND dn.state = 'draining')"

struct stop_list {
    PGresult *res[64];
    size_t n;
};

/* Marks n live instances of the app for stopping: `which` selects the
 * current generation ("cur") or older ones ("old"); not yet running ones go
 * first, then the newest. */
static int app_stop(struct loom_db *db, const char *app_id, const char *generation,
                    const char *which, int64_t n, const char *reason, struct stop_list *stops,
                    struct loom_err *err)
{
    char lim[32];
    snprintf(lim, sizeof(lim), "%lld", (long long)n);
    PGresult *res = loom_db_query(
        db, err,
        "UPDATE instances SET desired = 'stop', reason = $5, updated_at = now() WHERE id IN ("
        "  SELECT id FROM instances WHERE app_id = $1::bigint AND desired = 'run' "
        "    AND state IN " LOOM_LIVE_STATES_SQL " "
        "    AND (app_generation = $2::integer AND NOT " ON_DRAINING ") = ($3 = 'cur') "
        "  ORDER BY state = 'running', created_at DESC LIMIT $4::bigint) "
        "RETURNING id, node_name",
        app_id, generation, which, lim, reason);
    if (!res)
        return -1;
    if (stops->n < LOOM_ARRAY_SIZE(stops->res))
        stops->res[stops->n++] = res;
    else
        PQclear(res); /* the resend timer sends these */
    return 0;
}

int sched_apps_reconcile(struct sched *s, struct loom_db *db, int64_t epoch,
                         struct sched_pool *pool, size_t *ret_placed, struct loom_err *err)
{
    /* a cheap look first: most ticks every app has what it wants */
    _cleanup_pgres_ PGresult *apps = loom_db_exec(
        db,
        "SELECT a.id, a.project_id, p.name, a.name, a.generation, "
        "  greatest(a.min_instances, least(a.desired_instances, a.max_instances)), "
        "  a.cpu_millis, a.memory_bytes, a.gpus, a.ephemeral_bytes, "
        "  coalesce(l.live_cur, 0), coalesce(l.running_cur, 0), coalesce(l.live_old, 0), "
        "  coalesce(f.nf > 0 AND f.lastf > now() - make_interval(secs => "
        "    least(power(2, least(f.nf, 10) - 1), 60)), false), a.waiting_reason, a.spec::text "
        "FROM apps a JOIN projects p ON p.id = a.project_id "
        "LEFT JOIN LATERAL (SELECT "
        "    count(*) FILTER (WHERE i.app_generation = a.generation AND NOT " ON_DRAINING
        ") AS live_cur, "
        "    count(*) FILTER (WHERE i.app_generation = a.generation AND NOT " ON_DRAINING
        "      AND i.state = 'running') AS running_cur, "
        "    count(*) FILTER (WHERE i.app_generation <> a.generation OR " ON_DRAINING
        ") AS live_old "
        "  FROM instances i WHERE i.app_id = a.id AND i.desired = 'run' "
        "    AND i.state IN " LOOM_LIVE_STATES_SQL ") l ON true "
        "LEFT JOIN LATERAL (SELECT count(*) AS nf, max(finished_at) AS lastf FROM instances i "
        "  WHERE i.app_id = a.id AND i.state = 'failed' "
        "    AND i.finished_at > now() - interval '5 minutes') f ON true "
        "WHERE coalesce(l.live_cur, 0) <> "
        "    greatest(a.min_instances, least(a.desired_instances, a.max_instances)) "
        "  OR (coalesce(l.live_old, 0) > 0 AND coalesce(l.running_cur, 0) >= "
        "    greatest(a.min_instances, least(a.desired_instances, a.max_instances))) "
        "ORDER BY a.id",
        0, NULL, err);
    if (!apps)
        return -1;
    if (PQntuples(apps) == 0)
        return 0;

    struct strbuf ids = STRBUF_INIT;
    struct stop_list stops = {.n = 0};
    size_t placed = 0;
    if (loom_db_begin(db, err) < 0)
        goto out;
    if (sched_lease_check_tx(s, db, epoch, err) < 0)
        goto fail;
    for (int r = 0; r < PQntuples(apps); r++) {
        const char *id = PQgetvalue(apps, r, COL_ID);
        const char *gen = PQgetvalue(apps, r, COL_GENERATION);
        int64_t desired = strtoll(PQgetvalue(apps, r, COL_DESIRED), NULL, 10);
        int64_t live = strtoll(PQgetvalue(apps, r, COL_LIVE_CUR), NULL, 10);
        int64_t running = strtoll(PQgetvalue(apps, r, COL_RUNNING_CUR), NULL, 10);
        int64_t old = strtoll(PQgetvalue(apps, r, COL_LIVE_OLD), NULL, 10);
        bool backoff = strcmp(PQgetvalue(apps, r, COL_BACKOFF), "t") == 0;
        if (live < desired && !backoff &&
            (sched_pool_get(s, db, pool, err) < 0 ||
             app_create(s, db, epoch, apps, r, desired - live, pool->nodes, pool->n, &ids, &placed,
                        err) < 0))
            goto fail;
        if (live > desired &&
            app_stop(db, id, gen, "cur", live - desired, "scaled down", &stops, err) < 0)
            goto fail;
        if (old > 0 && running >= desired &&
            app_stop(db, id, gen, "old", old,
                     "replaced by a newer generation or moved off a draining node", &stops,
                     err) < 0)
            goto fail;
    }
    if (loom_db_commit(db, err) < 0)
        goto out;

    if (placed > 0) {
        sched_pg_array_end(&ids);
        loom_metric_add(s->m_placements, (double)placed);
        sched_send_assigns(s, db, epoch, ids.buf);
    }
    for (size_t i = 0; i < stops.n; i++)
        for (int k = 0; k < PQntuples(stops.res[i]); k++)
            sched_send_stop(s, PQgetvalue(stops.res[i], k, 1), PQgetvalue(stops.res[i], k, 0),
                            epoch, "scaled down", SCHED_STOP_GRACE_S);
    /* the activators drop stopping instances from their ready sets */
    for (int r = 0; r < PQntuples(apps); r++) {
        char subj[300];
        snprintf(subj, sizeof(subj), LOOM_SUBJ_APP_CHANGED_FMT, PQgetvalue(apps, r, COL_PROJECT),
                 PQgetvalue(apps, r, COL_NAME));
        loom_bus_publish_raw(s->svc->bus, subj, "", 0, NULL);
    }
    *ret_placed = placed;
    for (size_t i = 0; i < stops.n; i++)
        PQclear(stops.res[i]);
    strbuf_release(&ids);
    return 0;
fail:
    loom_db_rollback(db);
out:
    for (size_t i = 0; i < stops.n; i++)
        PQclear(stops.res[i]);
    strbuf_release(&ids);
    return -1;
}

static void on_scale(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__ScaleDecision *m = (Loom__V1__ScaleDecision *)loom_bus_unpack(
        msg, &loom__v1__scale_decision__descriptor, &err);
    if (!m)
        return;
    if (!loom_is_dns_label(m->project) || strlen(m->app) == 0 || strlen(m->app) > 63 ||
        m->desired > 100000) {
        protobuf_c_message_free_unpacked(&m->base, NULL);
        return;
    }
    char desired[16];
    snprintf(desired, sizeof(desired), "%u", m->desired);
    struct loom_db *db = loom_service_thread_db(&err);
    _cleanup_pgres_ PGresult *res = NULL;
    if (db)
        res = loom_db_query(db, &err,
                            "UPDATE apps a SET desired_instances = $3::integer "
                            "FROM projects p WHERE p.id = a.project_id AND p.name = $1 "
                            "  AND a.name = $2 AND a.desired_instances <> $3::integer "
                            "RETURNING a.id",
                            m->project, m->app, desired);
    if (!res)
        log_warn("could not store scale decision for %s/%s: %s", m->project, m->app, err.msg);
    else if (PQntuples(res) > 0) {
        log_info("app %s/%s scaled to %u (%s)", m->project, m->app, m->desired,
                 m->reason ? m->reason : "");
        sched_wake_leader(s);
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

int sched_apps_subscribe(struct sched *s, struct loom_err *err)
{
    return loom_bus_subscribe(s->svc->bus, LOOM_SUBJ_SCALE_DECISION, LOOM_QUEUE_SCHEDULER, on_scale,
                              s, err);
}
