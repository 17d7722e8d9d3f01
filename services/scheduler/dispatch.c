/* Telling agents: InstanceAssign and InstanceStop go out as requests whose
 * reply subject is this replica's inbox, so that thousands can be in flight
 * without one thread waiting on each; the acks come back to on_reply and
 * the main loop marks the instances acked in one UPDATE. What is not acked
 * is sent again by sched_resend. */
#include "sched.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "loom/v1/common.pb-c.h"
#include "loom/v1/instance.pb-c.h"
#include "refs.h"
#include "spec.h"
#include "subjects.h"
#include "util.h"

#define RESEND_LIMIT "5000"

static void on_reply(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    struct sched *s = arg;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(s->inbox);
    if (strncmp(subj, s->inbox, plen) != 0 || subj[plen] != '.')
        return;
    const char *kind = subj + plen + 1; /* "a.<id>" or "s.<id>" */
    if ((kind[0] != 'a' && kind[0] != 's') || kind[1] != '.' || !loom_is_uuid(kind + 2))
        return;
    Loom__V1__Ack *ack = (Loom__V1__Ack *)loom_bus_unpack(msg, &loom__v1__ack__descriptor, NULL);
    if (!ack)
        return;
    bool ok = ack->ok, stale = ack->stale_epoch;
    protobuf_c_message_free_unpacked(&ack->base, NULL);
    if (stale) {
        /* an agent has seen a newer epoch: someone else leads */
        sched_lease_poke(s);
        return;
    }
    if (!ok || kind[0] != 'a')
        return;
    pthread_mutex_lock(&s->acks.mu);
    if (s->acks.n == s->acks.alloc) {
        s->acks.alloc = s->acks.alloc ? s->acks.alloc * 2 : 256;
        s->acks.ids = realloc(s->acks.ids, s->acks.alloc * sizeof(char *));
        if (!s->acks.ids)
            abort();
    }
    s->acks.ids[s->acks.n] = strdup(kind + 2);
    if (!s->acks.ids[s->acks.n])
        abort();
    s->acks.n++;
    pthread_mutex_unlock(&s->acks.mu);
}

int sched_dispatch_init(struct sched *s, struct loom_err *err)
{
    char rnd[17];
    unsigned char b[8];
    if (loom_random_bytes(b, sizeof(b), err) < 0)
        return -1;
    loom_hex(b, sizeof(b), rnd);
    snprintf(s->inbox, sizeof(s->inbox), "_INBOX.loomsched.%s", rnd);
    char subj[128];
    snprintf(subj, sizeof(subj), "%s.>", s->inbox);
    return loom_bus_subscribe(s->svc->bus, subj, NULL, on_reply, s, err);
}

void sched_flush_acks(struct sched *s, struct loom_db *db)
{
    pthread_mutex_lock(&s->acks.mu);
    char **ids = s->acks.ids;
    size_t n = s->acks.n;
    s->acks.ids = NULL;
    s->acks.n = s->acks.alloc = 0;
    pthread_mutex_unlock(&s->acks.mu);
    if (n == 0)
        return;
    struct strbuf arr = STRBUF_INIT;
    for (size_t i = 0; i < n; i++) {
        sched_pg_array_add(&arr, ids[i]);
        free(ids[i]);
    }
    free(ids);
    sched_pg_array_end(&arr);
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *res = loom_db_query(db, &err,
                                                  "UPDATE instances SET acked = true "
                                                  "WHERE id = ANY($1::uuid[]) AND NOT acked",
                                                  arr.buf);
    if (!res)
        log_warn("could not mark %zu assigns acknowledged: %s", n, err.msg);
    strbuf_release(&arr);
}

static void publish_request(struct sched *s, const char *subject, char kind, const char *id,
                            const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    _cleanup_free_ uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    protobuf_c_message_pack(m, buf);
    char reply[160];
    snprintf(reply, sizeof(reply), "%s.%c.%s", s->inbox, kind, id);
    natsStatus st =
        natsConnection_PublishRequest(loom_bus_nc(s->svc->bus), subject, reply, buf, (int)len);
    if (st != NATS_OK)
        log_warn("could not publish on \"%s\": %s", subject, natsStatus_GetText(st));
}

void sched_send_stop(struct sched *s, const char *node, const char *instance_id, int64_t epoch,
                     const char *reason, int grace_seconds)
{
    Loom__V1__InstanceStop stop;
    loom__v1__instance_stop__init(&stop);
    stop.instance_id = (char *)instance_id;
    stop.epoch = epoch;
    stop.reason = (char *)(reason ? reason : "");
    stop.grace_seconds = grace_seconds;
    char subj[320];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_STOP_FMT, node);
    publish_request(s, subj, 's', instance_id, &stop.base);
}

void sched_assign_refs_release(struct sched_assign_refs *r)
{
    json_decref(r->env);
    json_decref(r->mounts);
    free(r->auth);
    *r = (struct sched_assign_refs){0};
}

/* Resolves the env references, volume mounts and image secret of spec.
 * -1 on a database error; a missing reference fills ret->why. */
static int resolve_refs(struct loom_db *db, const char *project_id, const struct loom_spec *spec,
                        struct sched_assign_refs *ret, struct loom_err *err)
{
    struct sched_assign_refs r = {.env = json_array(), .mounts = json_array()};
    size_t i;
    json_t *v;
    int rc = loom_refs_env(db, project_id, spec->env, r.env, r.why, sizeof(r.why), err);
    if (rc < 0) {
        sched_assign_refs_release(&r);
        return -1;
    }
    json_array_foreach(r.why[0] ? NULL : spec->mounts, i, v)
    {
        const char *type = json_string_value(json_object_get(v, "type"));
        const char *ref = json_string_value(json_object_get(v, "reference"));
        const char *path = json_string_value(json_object_get(v, "mount_path"));
        if (!type || !ref || !path || path[0] != '/' ||
            (strcmp(type, "secret") != 0 && strcmp(type, "config_map") != 0)) {
            snprintf(r.why, sizeof(r.why), "invalid run_volume_mounts item %zu", i);
            break;
        }
        json_t *data = NULL;
        rc = loom_refs_load(db, project_id, strcmp(type, "secret") == 0, ref, &data, NULL, r.why,
                            sizeof(r.why), err);
        if (rc < 0) {
            sched_assign_refs_release(&r);
            return -1;
        }
        if (rc > 0)
            break;
        json_array_append_new(r.mounts, json_pack("{s:s,s:o,s:b}", "path", path, "files", data,
                                                  "secret", strcmp(type, "secret") == 0));
    }
    const char *isecret = spec->image_secret;
    if (!r.why[0] && isecret && isecret[0]) {
        /* the secret is used when its server is the image's host */
        rc = loom_refs_registry_auth(db, project_id, isecret, spec->image ? spec->image : "",
                                     &r.auth, r.why, sizeof(r.why), err);
        if (rc < 0) {
            sched_assign_refs_release(&r);
            return -1;
        }
    }
    *ret = r;
    return 0;
}

/* The columns of the assign query. */
enum {
    AS_ID,
    AS_NODE,
    AS_KIND,
    AS_PROJECT,
    AS_CPU,
    AS_MEMORY,
    AS_GPUS,
    AS_EPHEMERAL,
    AS_RETRY,
    AS_INDEX,
    AS_RUN,
    AS_ARRAY_SIZE,
    AS_RETRY_LIMIT,
    AS_APP,
    AS_GENERATION,
    AS_SPEC,
    AS_OWNER, /* the run (> 0) or app (< 0) whose spec the row has */
    AS_RANK,
    AS_MASTER,
    AS_PROJECT_ID,
    AS_RUNTIME,
    AS_RUNTIME_IMAGE,
    AS_OUTPUT_PATH,
    AS_OUTPUT_REPO,
    AS_OUTPUT_NESTED,
};

static int64_t num(PGresult *res, int r, int c)
{
    const char *v = loom_db_val(res, r, c);
    return v ? strtoll(v, NULL, 10) : 0;
}

static struct sched_assign_row assign_row(PGresult *res, int r)
{
    return (struct sched_assign_row){
        .id = PQgetvalue(res, r, AS_ID),
        .node = PQgetvalue(res, r, AS_NODE),
        .project = PQgetvalue(res, r, AS_PROJECT),
        .job = strcmp(PQgetvalue(res, r, AS_KIND), "job") == 0,
        .cpu_millis = num(res, r, AS_CPU),
        .memory_bytes = num(res, r, AS_MEMORY),
        .ephemeral_bytes = num(res, r, AS_EPHEMERAL),
        .gpus = num(res, r, AS_GPUS),
        .retry = (int32_t)num(res, r, AS_RETRY),
        .job_run = loom_db_val(res, r, AS_RUN),
        .array_index = (int32_t)num(res, r, AS_INDEX),
        .array_size = num(res, r, AS_ARRAY_SIZE),
        .retry_limit = num(res, r, AS_RETRY_LIMIT),
        .rank = loom_db_val(res, r, AS_RANK),
        .master = loom_db_val(res, r, AS_MASTER),
        .app = loom_db_val(res, r, AS_APP),
        .generation = num(res, r, AS_GENERATION),
        .function = strcmp(PQgetvalue(res, r, AS_KIND), "function") == 0,
        .runtime = loom_db_val(res, r, AS_RUNTIME),
        .runtime_image = loom_db_val(res, r, AS_RUNTIME_IMAGE),
        .output_path = loom_db_val(res, r, AS_OUTPUT_PATH),
        .output_repo = loom_db_val(res, r, AS_OUTPUT_REPO),
        .output_nested = strcmp(PQgetvalue(res, r, AS_OUTPUT_NESTED), "t") == 0,
    };
}

static void send_assign(struct sched *s, const struct sched_assign_row *row,
                        const struct loom_spec *spec, const struct sched_assign_refs *refs,
                        int64_t epoch)
{
    struct sched_assign a;
    sched_assign_build(row, spec, refs, epoch, &a);
    char subj[320];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_ASSIGN_FMT, row->node);
    publish_request(s, subj, 'a', row->id, &a.msg->base);
    sched_assign_release(&a);
}

/* Decodes and resolves the spec a row shares with the rows of its run or
 * app; a spec that does not decode fails the instance like a missing
 * reference (refs->why). -1 on a database error. */
static int load_spec(struct loom_db *db, PGresult *res, int r, struct loom_spec *spec,
                     struct sched_assign_refs *refs, struct loom_err *err)
{
    enum loom_kind kind =
        strcmp(PQgetvalue(res, r, AS_KIND), "job") == 0 ? LOOM_KIND_JOBRUN : LOOM_KIND_APP;
    struct loom_err serr = LOOM_ERR_INIT;
    *refs = (struct sched_assign_refs){0};
    if (loom_spec_decode_text(kind, PQgetvalue(res, r, AS_SPEC), spec, &serr) < 0) {
        snprintf(refs->why, sizeof(refs->why), "%s", serr.msg);
        return 0;
    }
    return resolve_refs(db, PQgetvalue(res, r, AS_PROJECT_ID), spec, refs, err);
}

void sched_send_assigns(struct sched *s, struct loom_db *db, int64_t epoch, const char *ids_array)
{
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT i.id, i.node_name, i.kind, coalesce(p.name, ''), i.cpu_millis, i.memory_bytes, "
        "  i.gpus, i.ephemeral_bytes, i.retry, i.array_index, r.name, r.array_size, "
        "  r.retry_limit, a.name, i.app_generation, coalesce(r.spec, ar.spec, a.spec)::text, "
        "  coalesce(i.job_run_id::text, (-i.app_id)::text, i.id::text), i.rank, "
        "  (SELECT n.address FROM instances g JOIN nodes n ON n.name = g.node_name "
        "   WHERE g.id = i.gang), i.project_id, i.runtime, fr.image, "
        "  r.build_output->>'path', r.build_output->>'repository', "
        "  coalesce((r.build_output->>'nested')::boolean, false) "
        "FROM instances i LEFT JOIN projects p ON p.id = i.project_id "
        "LEFT JOIN job_runs r ON r.id = i.job_run_id "
        "LEFT JOIN apps a ON a.id = i.app_id "
        "LEFT JOIN app_revisions ar ON ar.app_id = i.app_id "
        "  AND ar.generation = i.app_generation "
        "LEFT JOIN function_runtimes fr ON fr.name = i.runtime "
        "WHERE i.id = ANY($1::uuid[]) ORDER BY 17",
        ids_array);
    if (!res) {
        log_warn("could not read instances to assign: %s", err.msg);
        return;
    }
    /* rows of one run or app share the spec: decode and resolve it once */
    _cleanup_spec_ struct loom_spec spec = {0};
    struct sched_assign_refs refs = {0};
    bool refs_ok = false;
    const char *spec_owner = NULL;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *owner = PQgetvalue(res, r, AS_OWNER);
        if (strcmp(PQgetvalue(res, r, AS_KIND), "function") == 0) {
            /* a stem cell: its runtime's image, no spec and no references */
            struct sched_assign_refs none = {0};
            struct sched_assign_row row = assign_row(res, r);
            send_assign(s, &row, NULL, &none, epoch);
            continue;
        }
        if (!spec_owner || strcmp(owner, spec_owner) != 0) {
            loom_spec_release(&spec);
            sched_assign_refs_release(&refs);
            spec_owner = owner;
            refs_ok = load_spec(db, res, r, &spec, &refs, &err) == 0;
            if (!refs_ok)
                log_warn("could not resolve the references of %s: %s", PQgetvalue(res, r, AS_ID),
                         err.msg);
        }
        if (!refs_ok)
            continue; /* sent again once the database answers */
        if (refs.why[0]) {
            /* called after the placement committed: no transaction is open */
            if (sched_fail_instance(s, db, PQgetvalue(res, r, AS_ID), refs.why, &err) < 0)
                log_warn("could not fail instance %s: %s", PQgetvalue(res, r, AS_ID), err.msg);
            continue;
        }
        struct sched_assign_row row = assign_row(res, r);
        send_assign(s, &row, &spec, &refs, epoch);
    }
    sched_assign_refs_release(&refs);
}

int sched_resend(struct sched *s, struct loom_db *db, int64_t epoch, struct loom_err *err)
{
    char period[32];
    snprintf(period, sizeof(period), "%lld", (long long)s->resend_ms);
    _cleanup_pgres_ PGresult *a =
        loom_db_query(db, err,
                      "UPDATE instances SET updated_at = now() WHERE id IN ("
                      "  SELECT id FROM instances WHERE state = 'assigned' AND NOT acked "
                      "    AND desired = 'run' "
                      "    AND updated_at < now() - make_interval(secs => $1::bigint / 1000.0) "
                      "  LIMIT " RESEND_LIMIT ") RETURNING id",
                      period);
    if (!a)
        return -1;
    if (PQntuples(a) > 0) {
        struct strbuf ids = STRBUF_INIT;
        for (int r = 0; r < PQntuples(a); r++)
            sched_pg_array_add(&ids, PQgetvalue(a, r, 0));
        sched_pg_array_end(&ids);
        log_info("resending %d unacknowledged assigns", PQntuples(a));
        loom_metric_add(s->m_resends, PQntuples(a));
        sched_send_assigns(s, db, epoch, ids.buf);
        strbuf_release(&ids);
    }
    /* stops: live instances we want gone, and lost ones a returning node
     * still runs; never to a node that is itself lost */
    _cleanup_pgres_ PGresult *st =
        loom_db_query(db, err,
                      "UPDATE instances SET updated_at = now() WHERE id IN ("
                      "  SELECT i.id FROM instances i JOIN nodes n ON n.name = i.node_name "
                      "  WHERE i.desired = 'stop' AND n.state <> 'lost' "
                      "    AND (i.state IN " LOOM_LIVE_STATES_SQL " OR i.state = 'lost') "
                      "    AND i.updated_at < now() - make_interval(secs => $1::bigint / 1000.0) "
                      "  LIMIT " RESEND_LIMIT ") RETURNING id, node_name, reason, kind",
                      period);
    if (!st)
        return -1;
    for (int r = 0; r < PQntuples(st); r++)
        sched_send_stop(s, PQgetvalue(st, r, 1), PQgetvalue(st, r, 0), epoch, loom_db_val(st, r, 2),
                        strcmp(PQgetvalue(st, r, 3), "function") == 0 ? SCHED_FUNCTION_STOP_GRACE_S
                                                                      : SCHED_STOP_GRACE_S);
    if (PQntuples(st) > 0)
        loom_metric_add(s->m_resends, PQntuples(st));
    return 0;
}
