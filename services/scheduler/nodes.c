/* Nodes: registration and heartbeats (any replica), liveness (leader). */
#include "sched.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "loom/v1/node.pb-c.h"
#include "subjects.h"
#include "util.h"

#define HB_FLUSH_MS 200

/* Marks the live instances on nodes (a text[] literal) lost, except keep
 * (a uuid[] literal) and, when before is set, those created after it. Job
 * indices they held go back to pending without using a retry: the work did
 * not fail, the node did. The result's row: instances lost, runs re-queued,
 * "project.app ..." of the apps that lost instances (for
 * publish_app_changes). */
static PGresult *lose_instances(struct loom_db *db, const char *nodes, const char *keep,
                                const char *before, const char *reason, struct loom_err *err)
{
    return loom_db_query(
        db, err,
        "WITH li AS ("
        "  UPDATE instances SET state = 'lost', finished_at = now(), updated_at = now(), "
        "    reason = $4 "
        "  WHERE node_name = ANY($1::text[]) AND state IN " LOOM_LIVE_STATES_SQL " "
        "    AND id <> ALL($2::uuid[]) "
        "    AND ($3::timestamptz IS NULL OR created_at < $3::timestamptz) "
        "  RETURNING id, kind, job_run_id, array_index, app_id, gang), "
        "ji AS ("
        "  UPDATE job_run_indices j SET state = 'pending', instance_id = NULL "
        "  FROM li WHERE li.kind = 'job' AND j.run_id = li.job_run_id "
        "    AND j.idx = li.array_index AND j.instance_id = coalesce(li.gang, li.id) "
        "    AND j.state = 'running' "
        "  RETURNING j.run_id, j.idx), "
        /* a gang that lost a member restarts whole: the others stop (sent by
         * the leader's next resend pass, hence the old updated_at) */
        "gs AS ("
        "  UPDATE instances g SET desired = 'stop', reason = 'gang member lost', "
        "    updated_at = now() - interval '1 hour' "
        "  FROM li WHERE li.gang IS NOT NULL AND g.gang = li.gang "
        "    AND g.node_name <> ALL($1::text[]) AND g.desired = 'run' "
        "    AND g.state IN " LOOM_LIVE_STATES_SQL " RETURNING g.id), "
        "jr AS ("
        "  UPDATE job_runs r SET n_running = r.n_running - g.n, "
        "    pending = r.pending + g.m, updated_at = now() "
        "  FROM (SELECT run_id, count(*) AS n, "
        "          range_agg(int4range(idx, idx + 1)) AS m FROM ji GROUP BY run_id) g "
        "  WHERE r.id = g.run_id RETURNING r.id) "
        "SELECT (SELECT count(*) FROM li), (SELECT count(*) FROM jr), "
        "  (SELECT string_agg(DISTINCT p.name || '.' || a.name, ' ') FROM li "
        "     JOIN apps a ON a.id = li.app_id JOIN projects p ON p.id = a.project_id)",
        nodes, keep, before, reason);
}

/* Tells the activators about the apps in lose_instances' result. */
static void publish_app_changes(struct sched *s, PGresult *inst)
{
    const char *apps = loom_db_val(inst, 0, 2);
    if (!apps)
        return;
    _cleanup_free_ char *copy = strdup(apps);
    if (!copy)
        abort();
    char *save = NULL;
    for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        char subj[600];
        char *dot = strchr(t, '.'); /* project names have no dots */
        if (!dot)
            continue;
        *dot = '\0';
        snprintf(subj, sizeof(subj), LOOM_SUBJ_APP_CHANGED_FMT, t, dot + 1);
        loom_bus_publish_raw(s->svc->bus, subj, "", 0, NULL);
    }
}

static bool short_string(const char *s, size_t max)
{
    return s && strnlen(s, max + 1) <= max;
}

static void on_register(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__NodeRegister *m =
        (Loom__V1__NodeRegister *)loom_bus_unpack(msg, &loom__v1__node_register__descriptor, &err);
    if (!m) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    const char *bad = NULL;
    if (!sched_valid_node_name(m->node))
        bad = "invalid node name";
    else if (!short_string(m->address, 255) || !short_string(m->boot_id, 128) ||
             !short_string(m->subnet, 64) || !short_string(m->version, 128))
        bad = "field too long";
    else if (m->cpu_millis < 0 || m->memory_bytes < 0 || m->disk_bytes < 0)
        bad = "negative resources";
    else if (m->n_labels > 64 || m->n_gpus > 64)
        bad = "too many labels or gpus";
    _cleanup_json_ json_t *labels = json_object();
    _cleanup_json_ json_t *gpus = json_array();
    for (size_t i = 0; !bad && i < m->n_labels; i++) {
        if (!short_string(m->labels[i]->key, 255) || !short_string(m->labels[i]->value, 1024))
            bad = "label too long";
        else
            json_object_set_new(labels, m->labels[i]->key, json_string(m->labels[i]->value));
    }
    for (size_t i = 0; !bad && i < m->n_gpus; i++) {
        Loom__V1__GpuDevice *g = m->gpus[i];
        if (!short_string(g->id, 128) || !short_string(g->model, 128) ||
            !short_string(g->path, 255))
            bad = "gpu field too long";
        else
            json_array_append_new(
                gpus, json_pack("{s:s,s:s,s:s}", "id", g->id, "model", g->model, "path", g->path));
    }
    if (bad) {
        loom_bus_ack(bus, msg, bad, false);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        return;
    }
    _cleanup_free_ char *labels_s = loom_json_dumps(labels);
    _cleanup_free_ char *gpus_s = loom_json_dumps(gpus);
    char cpu[32], mem[32], disk[32];
    snprintf(cpu, sizeof(cpu), "%lld", (long long)m->cpu_millis);
    snprintf(mem, sizeof(mem), "%lld", (long long)m->memory_bytes);
    snprintf(disk, sizeof(disk), "%lld", (long long)m->disk_bytes);

    struct loom_db *db = loom_service_thread_db(&err);
    _cleanup_pgres_ PGresult *res = NULL;
    if (db)
        res = loom_db_query(
            db, &err,
            "INSERT INTO nodes (name, address, boot_id, cpu_millis, memory_bytes, disk_bytes, "
            "  labels, gpus, subnet, simulated, state, last_heartbeat) "
            "VALUES ($1, $2, $3, $4::bigint, $5::bigint, $6::bigint, $7::jsonb, $8::jsonb, $9, "
            "  $10::boolean, 'ready', now()) "
            "ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address, "
            "  boot_id = EXCLUDED.boot_id, cpu_millis = EXCLUDED.cpu_millis, "
            "  memory_bytes = EXCLUDED.memory_bytes, disk_bytes = EXCLUDED.disk_bytes, "
            "  labels = EXCLUDED.labels, gpus = EXCLUDED.gpus, subnet = EXCLUDED.subnet, "
            "  simulated = EXCLUDED.simulated, last_heartbeat = now(), "
            "  restarted_at = CASE WHEN nodes.boot_id <> EXCLUDED.boot_id THEN now() "
            "                      ELSE nodes.restarted_at END, "
            "  state = CASE WHEN nodes.state IN ('cordoned', 'draining') THEN nodes.state "
            "               ELSE 'ready' END",
            m->node, m->address, m->boot_id, cpu, mem, disk, labels_s, gpus_s, m->subnet,
            m->simulated ? "true" : "false");
    if (!res) {
        log_warn("could not register node \"%s\": %s", m->node, err.msg);
        loom_bus_ack(bus, msg, err.msg, false);
    } else {
        log_info("node \"%s\" registered (%lld millicpu, %lld bytes, %zu gpus)", m->node,
                 (long long)m->cpu_millis, (long long)m->memory_bytes, m->n_gpus);
        loom_bus_ack(bus, msg, NULL, false);
        sched_wake_leader(s);
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* Heartbeats are only collected here; the flusher writes them in batches. */
static void on_heartbeat(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__NodeHeartbeat *m = (Loom__V1__NodeHeartbeat *)loom_bus_unpack(
        msg, &loom__v1__node_heartbeat__descriptor, &err);
    if (!m)
        return;
    if (!sched_valid_node_name(m->node) || m->n_instance_ids > 100000) {
        protobuf_c_message_free_unpacked(&m->base, NULL);
        return;
    }
    struct strbuf ids = STRBUF_INIT;
    for (size_t i = 0; i < m->n_instance_ids; i++)
        if (loom_is_uuid(m->instance_ids[i]))
            sched_pg_array_add(&ids, m->instance_ids[i]);
    sched_pg_array_end(&ids);
    char *node = strdup(m->node);
    char *boot = strndup(m->boot_id, 128);
    char *health = strndup(m->health_problem, 1000);
    /* words for operators: printable ASCII only, whatever the agent sent (a
     * byte PostgreSQL refuses would fail the whole batch) */
    for (char *p = health; p && *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    const char *to = natsMsg_GetReply(msg);
    char *reply = to && to[0] ? strdup(to) : NULL;
    protobuf_c_message_free_unpacked(&m->base, NULL);
    if (!node || !boot || !health || (to && to[0] && !reply))
        abort();

    pthread_mutex_lock(&s->hb_mu);
    if (s->nhb == s->hb_alloc) {
        s->hb_alloc = s->hb_alloc ? s->hb_alloc * 2 : 256;
        s->hb = realloc(s->hb, s->hb_alloc * sizeof(*s->hb));
        if (!s->hb)
            abort();
    }
    s->hb[s->nhb].node = node;
    s->hb[s->nhb].boot_id = boot;
    s->hb[s->nhb].instance_ids = strbuf_detach(&ids, NULL);
    s->hb[s->nhb].reply = reply;
    s->hb[s->nhb].health = health;
    s->nhb++;
    pthread_mutex_unlock(&s->hb_mu);
}

static void hb_free(struct sched_hb_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(e[i].node);
        free(e[i].boot_id);
        free(e[i].instance_ids);
        free(e[i].reply);
        free(e[i].health);
    }
    free(e);
}

/* node's latest heartbeat in the batch (there is one). */
static const struct sched_hb_entry *hb_latest(const struct sched_hb_entry *e, size_t n,
                                              const char *node)
{
    for (size_t i = n; i-- > 0;)
        if (strcmp(e[i].node, node) == 0)
            return &e[i];
    return &e[0];
}

/* The first heartbeat of a restarted agent (new boot_id): what it does not
 * list of the instances placed before it registered is gone with the old
 * agent. */
static void hb_restarted(struct sched *s, struct loom_db *db, const char *node,
                         const char *restarted_at, const char *ids)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct strbuf names = STRBUF_INIT;
    sched_pg_array_add(&names, node);
    sched_pg_array_end(&names);
    _cleanup_pgres_ PGresult *inst =
        lose_instances(db, names.buf, ids, restarted_at, "agent restarted without it", &err);
    strbuf_release(&names);
    if (!inst) {
        log_warn("could not reconcile restarted node \"%s\": %s", node, err.msg);
        return;
    }
    _cleanup_pgres_ PGresult *done =
        loom_db_query(db, &err,
                      "UPDATE nodes SET restarted_at = NULL WHERE name = $1 "
                      "AND restarted_at = $2::timestamptz",
                      node, restarted_at);
    if (strcmp(PQgetvalue(inst, 0, 0), "0") != 0) {
        log_warn("node \"%s\" restarted: %s instances lost, %s runs re-queued", node,
                 PQgetvalue(inst, 0, 0), PQgetvalue(inst, 0, 1));
        publish_app_changes(s, inst);
        sched_wake_leader(s);
    }
}

/* A heartbeat recorded at time f leaves last_heartbeat >= f - fresh (a
 * fresh row, younger than a third of the timeout, is not rewritten), so the
 * node is not lost before f - fresh + timeout, and f is after the agent sent
 * it. The lease keeps a margin below that for the agent to kill its work and
 * for clocks that tick apart. */
int64_t sched_node_lease_ms(const struct sched *s)
{
    int64_t margin = s->node_timeout_ms / 10 > 500 ? s->node_timeout_ms / 10 : 500;
    int64_t lease = s->node_timeout_ms - s->node_timeout_ms / 3 - margin;
    return lease > 0 ? lease : 0;
}

/* Answers the recorded heartbeats of known nodes with their lease. */
static void hb_grant(struct sched *s, const struct sched_hb_entry *e, size_t n, PGresult *res)
{
    Loom__V1__NodeLease l = LOOM__V1__NODE_LEASE__INIT;
    l.lease_ms = sched_node_lease_ms(s);
    if (l.lease_ms == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (!e[i].reply)
            continue;
        bool unknown = false;
        for (int r = 0; r < PQntuples(res) && !unknown; r++)
            unknown = PQgetisnull(res, r, 1) && strcmp(PQgetvalue(res, r, 0), e[i].node) == 0;
        struct loom_err err = LOOM_ERR_INIT;
        if (!unknown && loom_bus_publish(s->svc->bus, e[i].reply, &l.base, &err) < 0)
            log_debug("lease of node \"%s\": %s", e[i].node, err.msg);
    }
}

/* Writes one batch: one UPDATE for every node, then the exceptions it
 * returns (unknown nodes asked to register again, lost nodes back to ready). */
/* A node whose health checks fail is drained: its job instances are
 * stopped, to start again elsewhere without using a retry (an app's are
 * replaced through the draining node, see apps.c). */
static void hb_unhealthy(struct loom_db *db, const char *node, const char *problem)
{
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *u =
        loom_db_query(db, &err,
                      "UPDATE instances SET desired = 'stop', reason = 'node unhealthy: ' || $2, "
                      "  updated_at = now() - interval '1 hour' "
                      "WHERE node_name = $1 AND kind = 'job' AND desired = 'run' "
                      "  AND state IN " LOOM_LIVE_STATES_SQL,
                      node, problem);
    if (!u)
        log_warn("could not move the job instances off unhealthy node \"%s\": %s", node, err.msg);
    log_warn("node \"%s\" is unhealthy (%s): draining, %s job instances to move", node, problem,
             u ? PQcmdTuples(u) : "?");
}

/* Writes one batch: one UPDATE for every node, then the exceptions it
 * returns (unknown nodes asked to register again, lost nodes back to ready,
 * nodes drained for their health or back from it). */
static void hb_flush(struct sched *s, struct loom_db *db, struct sched_hb_entry *e, size_t n)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct strbuf names = STRBUF_INIT, health = STRBUF_INIT;
    for (size_t i = 0; i < n; i++) {
        sched_pg_array_add(&names, e[i].node);
        sched_pg_array_add(&health, e[i].health);
    }
    sched_pg_array_end(&names);
    sched_pg_array_end(&health);
    /* A node's row is written only once its last_heartbeat is older than a
     * third of the node timeout (at most ~1/3 timeout + one flush stale,
     * far from lost): 10,000 nodes cost ~3,000 row writes a second, not
     * 10,000; a change of health, and a node out of service for its health,
     * are written at once. Rows locked in name order, as the leader's loss
     * check locks them: replicas flushing at once and the check do not
     * deadlock; and FOR NO KEY UPDATE, which does not wait for the key
     * share locks of instance rows being inserted on these nodes.
     * b: each node's latest heartbeat in the batch. */
    char fresh[32], settle[32];
    snprintf(fresh, sizeof(fresh), "%lld", (long long)(s->node_timeout_ms / 3));
    snprintf(settle, sizeof(settle), "%lld", (long long)s->health_settle_ms);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "WITH b AS (SELECT DISTINCT ON (name) name, nullif(health, '') AS health "
        "      FROM unnest($1::text[], $3::text[]) WITH ORDINALITY AS x(name, health, ord) "
        "      ORDER BY name, ord DESC), "
        "o AS (SELECT n.name, n.state, b.health, "
        "        b.health IS NOT NULL AND n.state IN ('ready', 'lost') AS sick, "
        "        b.health IS NULL AND n.cordoned_by = 'health' "
        "          AND n.healthy_since < now() - make_interval(secs => $4::bigint / 1000.0) "
        "          AS well "
        "      FROM nodes n JOIN b USING (name) "
        "      WHERE n.state = 'lost' OR n.restarted_at IS NOT NULL "
        "        OR n.last_heartbeat < now() - make_interval(secs => $2::bigint / 1000.0) "
        "        OR n.health_problem IS DISTINCT FROM b.health OR n.cordoned_by = 'health' "
        "      ORDER BY n.name FOR NO KEY UPDATE OF n), "
        "u AS (UPDATE nodes n SET last_heartbeat = now(), "
        "        state = CASE WHEN o.sick THEN 'draining' "
        "                     WHEN n.state = 'lost' OR o.well THEN 'ready' ELSE n.state END, "
        "        cordoned_by = CASE WHEN o.sick THEN 'health' WHEN o.well THEN NULL "
        "                           ELSE n.cordoned_by END, "
        "        health_problem = o.health, "
        "        healthy_since = CASE WHEN o.health IS NULL "
        "                             THEN coalesce(n.healthy_since, now()) END "
        "      FROM o WHERE n.name = o.name "
        "      RETURNING n.name, o.state AS old_state, n.boot_id, n.restarted_at, "
        "        n.state AS new_state, o.health, o.sick, o.well) "
        "SELECT b.name, u.old_state, u.boot_id, u.restarted_at::text, u.new_state, u.health, "
        "  u.sick, u.well "
        "FROM b LEFT JOIN u USING (name) LEFT JOIN nodes k ON k.name = b.name "
        "WHERE k.name IS NULL OR u.old_state = 'lost' OR u.restarted_at IS NOT NULL "
        "  OR u.sick OR u.well",
        names.buf, fresh, health.buf, settle);
    strbuf_release(&names);
    strbuf_release(&health);
    if (!res) {
        log_warn("could not record %zu heartbeats: %s", n, err.msg);
        return;
    }
    hb_grant(s, e, n, res);
    bool changed = false;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *node = PQgetvalue(res, r, 0);
        if (PQgetisnull(res, r, 1)) {
            char subj[320];
            snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_REREGISTER_FMT, node);
            loom_bus_publish_raw(s->svc->bus, subj, "", 0, NULL);
            log_info("unknown node \"%s\" heartbeats: asked it to register", node);
            continue;
        }
        const struct sched_hb_entry *hb = hb_latest(e, n, node);
        if (!PQgetisnull(res, r, 3) && strcmp(hb->boot_id, PQgetvalue(res, r, 2)) == 0)
            hb_restarted(s, db, node, PQgetvalue(res, r, 3), hb->instance_ids);
        if (strcmp(PQgetvalue(res, r, 6), "t") == 0) {
            hb_unhealthy(db, node, PQgetvalue(res, r, 5));
            changed = true;
        } else if (strcmp(PQgetvalue(res, r, 7), "t") == 0) {
            log_info("node \"%s\" has been healthy for %lld ms: ready again", node,
                     (long long)s->health_settle_ms);
            changed = true;
        }
        if (strcmp(PQgetvalue(res, r, 1), "lost") != 0)
            continue;
        /* Its instances were declared lost and replaced: the ones it still
         * runs get stopped (the leader sends the stops, see dispatch.c). */
        _cleanup_pgres_ PGresult *u = loom_db_query(
            db, &err,
            "UPDATE instances SET desired = 'stop', updated_at = now() - interval '1 hour' "
            "WHERE id = ANY($1::uuid[]) AND node_name = $2 AND state = 'lost'",
            hb->instance_ids, node);
        log_info("lost node \"%s\" is back: %s, %s stale instances to stop", node,
                 PQgetvalue(res, r, 4), u ? PQcmdTuples(u) : "?");
        sched_wake_leader(s);
    }
    if (changed)
        loom_bus_publish_raw(s->svc->bus, LOOM_SUBJ_SCHED_WAKE, "nodes", 5, NULL);
}

static void *hb_main(void *arg)
{
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    for (;;) {
        struct timespec ts = {0, HB_FLUSH_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&s->hb_mu);
        struct sched_hb_entry *e = s->hb;
        size_t n = s->nhb;
        s->hb = NULL;
        s->nhb = s->hb_alloc = 0;
        pthread_mutex_unlock(&s->hb_mu);
        pthread_mutex_lock(&s->lease_mu);
        bool stop = s->threads_stop;
        pthread_mutex_unlock(&s->lease_mu);
        if (n > 0) {
            struct loom_db *db = loom_service_thread_db(&err);
            if (db)
                hb_flush(s, db, e, n);
            else
                log_warn("could not record heartbeats: %s", err.msg);
            hb_free(e, n);
        }
        if (stop)
            break;
    }
    return NULL;
}

int sched_heartbeats_start(struct sched *s, struct loom_err *err)
{
    int r = pthread_create(&s->hb_thread, NULL, hb_main, s);
    if (r != 0)
        return loom_err_sys(err, r, "could not start the heartbeat thread");
    s->hb_thread_started = true;
    return 0;
}

void sched_heartbeats_stop(struct sched *s)
{
    if (!s->hb_thread_started)
        return;
    pthread_mutex_lock(&s->lease_mu);
    s->threads_stop = true;
    pthread_mutex_unlock(&s->lease_mu);
    pthread_join(s->hb_thread, NULL);
    s->hb_thread_started = false;
}

int sched_nodes_subscribe(struct sched *s, struct loom_err *err)
{
    if (loom_bus_subscribe(s->svc->bus, LOOM_SUBJ_NODE_REGISTER, LOOM_QUEUE_SCHEDULER, on_register,
                           s, err) < 0)
        return -1;
    return loom_bus_subscribe(s->svc->bus, LOOM_SUBJ_NODE_HEARTBEAT, LOOM_QUEUE_SCHEDULER,
                              on_heartbeat, s, err);
}

int sched_nodes_check_liveness(struct sched *s, struct loom_db *db, int64_t epoch, bool sweep,
                               struct loom_err *err)
{
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%lld", (long long)s->node_timeout_ms);
    /* cheap test first: most ticks find nothing */
    _cleanup_pgres_ PGresult *probe =
        loom_db_query(db, err,
                      "SELECT EXISTS (SELECT 1 FROM nodes WHERE state = 'ready' "
                      "  AND last_heartbeat < now() - make_interval(secs => $1::bigint / 1000.0)) "
                      "OR ($2::boolean AND EXISTS (SELECT 1 FROM nodes n WHERE n.state = 'lost' "
                      "  AND EXISTS (SELECT 1 FROM instances i WHERE i.node_name = n.name "
                      "    AND i.state IN " LOOM_LIVE_STATES_SQL ")))",
                      timeout, sweep ? "true" : "false");
    if (!probe)
        return -1;
    if (strcmp(PQgetvalue(probe, 0, 0), "t") != 0)
        return 0;
    _cleanup_pgres_ PGresult *lost = NULL, *inst = NULL, *holding = NULL;
    if (loom_db_begin(db, err) < 0)
        return -1;
    if (sched_lease_check_tx(s, db, epoch, err) < 0)
        goto fail;
    lost =
        loom_db_query(db, err,
                      "UPDATE nodes SET state = 'lost' WHERE name IN (SELECT name FROM nodes "
                      "  WHERE state = 'ready' "
                      "    AND last_heartbeat < now() - make_interval(secs => $1::bigint / 1000.0) "
                      "  ORDER BY name FOR NO KEY UPDATE) "
                      "RETURNING name",
                      timeout);
    if (!lost)
        goto fail;
    /* the nodes just lost, and any lost one still holding live instances
     * (placed from a node list read just before it was lost) */
    holding = loom_db_exec(db,
                           "SELECT n.name FROM nodes n WHERE n.state = 'lost' "
                           "AND EXISTS (SELECT 1 FROM instances i WHERE i.node_name = n.name "
                           "  AND i.state IN " LOOM_LIVE_STATES_SQL ")",
                           0, NULL, err);
    if (!holding)
        goto fail;
    struct strbuf names = STRBUF_INIT;
    for (int i = 0; i < PQntuples(holding); i++)
        sched_pg_array_add(&names, PQgetvalue(holding, i, 0));
    sched_pg_array_end(&names);
    inst = lose_instances(db, names.buf, "{}", NULL, "node lost", err);
    if (!inst) {
        strbuf_release(&names);
        goto fail;
    }
    if (loom_db_commit(db, err) < 0) {
        strbuf_release(&names);
        return -1;
    }
    if (PQntuples(lost) > 0 || strcmp(PQgetvalue(inst, 0, 0), "0") != 0)
        log_warn("nodes lost (no heartbeat for %lld ms): %d; lost nodes holding instances: %s; "
                 "%s instances lost, %s runs re-queued",
                 (long long)s->node_timeout_ms, PQntuples(lost), names.buf, PQgetvalue(inst, 0, 0),
                 PQgetvalue(inst, 0, 1));
    loom_metric_add(s->m_nodes_lost, PQntuples(lost));
    /* the leader's node list must not offer them any more */
    if (PQntuples(lost) > 0)
        sched_pool_release(&s->pool);
    strbuf_release(&names);
    publish_app_changes(s, inst);
    return 0;
fail:
    loom_db_rollback(db);
    return -1;
}

int sched_nodes_load(struct sched *s, struct loom_db *db, struct sched_node **ret, size_t *ret_n,
                     struct loom_err *err)
{
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%lld", (long long)s->node_timeout_ms);
    /* Two plain queries merged here by name: a join lets a planner with
     * stale statistics pick a nested loop that re-aggregates per node. */
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "SELECT name, cpu_millis, memory_bytes, jsonb_array_length(gpus), gpus->0->>'model', "
        "  disk_bytes, nullif(labels, '{}'::jsonb)::text "
        "FROM nodes WHERE state = 'ready' "
        "  AND last_heartbeat > now() - make_interval(secs => $1::bigint / 1000.0) "
        "ORDER BY name COLLATE \"C\"",
        timeout);
    if (!res)
        return -1;
    _cleanup_pgres_ PGresult *use = loom_db_exec(
        db,
        "SELECT node_name, sum(cpu_millis), sum(memory_bytes), sum(gpus), sum(ephemeral_bytes) "
        "FROM instances "
        "WHERE state IN " LOOM_LIVE_STATES_SQL
        " GROUP BY node_name ORDER BY node_name COLLATE \"C\"",
        0, NULL, err);
    if (!use)
        return -1;
    size_t n = (size_t)PQntuples(res);
    struct sched_node *nodes = calloc(n ? n : 1, sizeof(*nodes));
    if (!nodes)
        abort();
    int u = 0, nu = PQntuples(use);
    for (size_t i = 0; i < n; i++) {
        int r = (int)i;
        const char *name = PQgetvalue(res, r, 0);
        nodes[i].name = strdup(name);
        if (!nodes[i].name)
            abort();
        nodes[i].cpu_total = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        nodes[i].mem_total = strtoll(PQgetvalue(res, r, 2), NULL, 10);
        nodes[i].gpus_total = (int32_t)strtol(PQgetvalue(res, r, 3), NULL, 10);
        const char *model = loom_db_val(res, r, 4);
        nodes[i].gpu_model = model ? strdup(model) : NULL;
        nodes[i].disk_total = strtoll(PQgetvalue(res, r, 5), NULL, 10);
        const char *labels = loom_db_val(res, r, 6);
        nodes[i].labels = labels ? loom_json_parse_object(labels, strlen(labels), NULL) : NULL;
        while (u < nu && strcmp(PQgetvalue(use, u, 0), name) < 0)
            u++;
        if (u < nu && strcmp(PQgetvalue(use, u, 0), name) == 0) {
            nodes[i].cpu_used = strtoll(PQgetvalue(use, u, 1), NULL, 10);
            nodes[i].mem_used = strtoll(PQgetvalue(use, u, 2), NULL, 10);
            nodes[i].gpus_used = (int32_t)strtol(PQgetvalue(use, u, 3), NULL, 10);
            nodes[i].disk_used = strtoll(PQgetvalue(use, u, 4), NULL, 10);
        }
    }
    *ret = nodes;
    *ret_n = n;
    return 0;
}

void sched_nodes_free(struct sched_node *nodes, size_t n)
{
    if (!nodes)
        return;
    for (size_t i = 0; i < n; i++) {
        free(nodes[i].name);
        free(nodes[i].gpu_model);
        json_decref(nodes[i].labels);
    }
    free(nodes);
}

int sched_pool_get(struct sched *s, struct loom_db *db, struct sched_pool *pool,
                   struct loom_err *err)
{
    int64_t age = loom_mono_ms() - pool->loaded_mono;
    bool changed = atomic_exchange(&s->nodes_changed, false);
    if (!changed && pool->loaded && age < SCHED_POOL_MAX_AGE_MS &&
        !(pool->ran_short && age >= SCHED_POOL_MIN_AGE_MS && atomic_load(&s->capacity_freed)))
        return 0;
    atomic_store(&s->capacity_freed, false);
    struct sched_node *nodes;
    size_t n;
    int64_t t = loom_mono_ms();
    if (sched_nodes_load(s, db, &nodes, &n, err) < 0)
        return -1;
    sched_pool_release(pool);
    pool->nodes = nodes;
    pool->n = n;
    pool->loaded = true;
    pool->loaded_mono = t;
    return 0;
}

void sched_pool_release(struct sched_pool *pool)
{
    sched_nodes_free(pool->nodes, pool->n);
    *pool = (struct sched_pool){0};
}
