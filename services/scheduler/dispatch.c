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
#include "secretbox.h"
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
                     const char *reason)
{
    Loom__V1__InstanceStop stop;
    loom__v1__instance_stop__init(&stop);
    stop.instance_id = (char *)instance_id;
    stop.epoch = epoch;
    stop.reason = (char *)(reason ? reason : "");
    stop.grace_seconds = 10;
    char subj[320];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_STOP_FMT, node);
    publish_request(s, subj, 's', instance_id, &stop.base);
}

/* Strings out of a JSON array of strings (pointers into the array). */
static size_t json_strings(json_t *arr, char ***ret)
{
    *ret = NULL;
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return 0;
    size_t n = json_array_size(arr), w = 0;
    char **v = calloc(n, sizeof(char *));
    if (!v)
        abort();
    for (size_t i = 0; i < n; i++) {
        const char *x = json_string_value(json_array_get(arr, i));
        if (x)
            v[w++] = (char *)x;
    }
    *ret = v;
    return w;
}

struct env_list {
    Loom__V1__EnvVar *vars;
    Loom__V1__EnvVar **ptrs;
    char **owned;
    size_t n, cap, nowned;
};

static void env_add(struct env_list *e, const char *name, const char *value)
{
    if (e->n == e->cap)
        return;
    loom__v1__env_var__init(&e->vars[e->n]);
    e->vars[e->n].name = (char *)name;
    e->vars[e->n].value = (char *)value;
    e->ptrs[e->n] = &e->vars[e->n];
    e->n++;
}

static void env_addf(struct env_list *e, const char *name, const char *fmt, long long v)
{
    char *s = NULL;
    if (asprintf(&s, fmt, v) < 0)
        abort();
    e->owned[e->nowned++] = s;
    env_add(e, name, s);
}

/* What a spec's references resolve to, read once per run or app in one
 * sched_send_assigns call (never kept longer: secrets and config maps change
 * under us). */
struct assign_refs {
    json_t *env;    /* [[name, value], ...] in the spec's order */
    json_t *mounts; /* [{"path": P, "files": {name: data}}, ...] */
    char *auth;     /* "user:password" or NULL */
    char why[512];  /* set: the instance cannot run, for this reason */
};

static void assign_refs_release(struct assign_refs *r)
{
    json_decref(r->env);
    json_decref(r->mounts);
    free(r->auth);
    *r = (struct assign_refs){0};
}

/* Loads a secret's data. 1 with why filled when it is missing or does not
 * open (the instance fails), -1 on a database error (try again later). */
static int load_secret(struct loom_db *db, const char *project_id, const char *name,
                       json_t **ret_data, char *ret_format, size_t format_len, char *why,
                       size_t why_len, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err, "SELECT format, data_enc FROM secrets WHERE project_id = $1::bigint AND name = $2",
        project_id, name);
    if (!res)
        return -1;
    if (PQntuples(res) == 0) {
        snprintf(why, why_len, "secret \"%.200s\" not found", name);
        return 1;
    }
    size_t len = 0;
    unsigned char *sealed = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, 1), &len);
    if (!sealed)
        abort();
    char aad[512];
    loom_secretbox_aad(project_id, name, aad, sizeof(aad));
    struct loom_err oerr = LOOM_ERR_INIT;
    _cleanup_free_ char *plain = NULL;
    int rc = loom_secretbox_open(sealed, len, aad, &plain, &oerr);
    PQfreemem(sealed);
    if (rc < 0) {
        snprintf(why, why_len, "secret \"%.200s\" cannot be opened: %.200s", name, oerr.msg);
        return 1;
    }
    json_t *data = loom_json_parse_object(plain, strlen(plain), NULL);
    if (!data) {
        snprintf(why, why_len, "secret \"%.200s\" holds no JSON object", name);
        return 1;
    }
    snprintf(ret_format, format_len, "%s", PQgetvalue(res, 0, 0));
    *ret_data = data;
    return 0;
}

/* Like load_secret, for a config map. */
static int load_config_map(struct loom_db *db, const char *project_id, const char *name,
                           json_t **ret_data, char *why, size_t why_len, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err, "SELECT data::text FROM config_maps WHERE project_id = $1::bigint AND name = $2",
        project_id, name);
    if (!res)
        return -1;
    const char *text = PQntuples(res) ? PQgetvalue(res, 0, 0) : NULL;
    json_t *data = text ? loom_json_parse_object(text, strlen(text), NULL) : NULL;
    if (!data) {
        snprintf(why, why_len, "config map \"%.200s\" not found", name);
        return 1;
    }
    *ret_data = data;
    return 0;
}

static int load_ref(struct loom_db *db, const char *project_id, bool secret, const char *name,
                    json_t **ret_data, char *why, size_t why_len, struct loom_err *err)
{
    char format[32];
    if (secret)
        return load_secret(db, project_id, name, ret_data, format, sizeof(format), why, why_len,
                           err);
    return load_config_map(db, project_id, name, ret_data, why, why_len, err);
}

/* The host of an image reference ("127.0.0.1:5000/x:1" -> "127.0.0.1:5000"),
 * or of a registry server ("https://h:5000/v2/" -> "h:5000"). */
static void ref_host(const char *s, char *out, size_t len)
{
    const char *p = strstr(s, "://");
    p = p ? p + 3 : s;
    size_t n = strcspn(p, "/");
    snprintf(out, len, "%.*s", (int)n, p);
}

static void env_pair(json_t *env, const char *name, const char *value)
{
    json_array_append_new(env, json_pack("[ss]", name, value));
}

/* Resolves the env references, volume mounts and image secret of spec.
 * -1 on a database error; a missing reference fills ret->why. */
static int resolve_refs(struct loom_db *db, const char *project_id, json_t *spec,
                        struct assign_refs *ret, struct loom_err *err)
{
    struct assign_refs r = {.env = json_array(), .mounts = json_array()};
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(spec, "run_env_variables"), i, v)
    {
        const char *type = json_string_value(json_object_get(v, "type"));
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *ref = json_string_value(json_object_get(v, "reference"));
        const char *key = json_string_value(json_object_get(v, "key"));
        const char *prefix = json_string_value(json_object_get(v, "prefix"));
        if (!type || strcmp(type, "literal") == 0) {
            const char *value = json_string_value(json_object_get(v, "value"));
            if (name && value)
                env_pair(r.env, name, value);
            continue;
        }
        bool secret = strncmp(type, "secret_", 7) == 0;
        bool full = strstr(type, "_full_reference") != NULL;
        if (!ref || (!secret && strncmp(type, "config_map_", 11) != 0) ||
            (!full && (!key || !name))) {
            snprintf(r.why, sizeof(r.why), "invalid run_env_variables item %zu", i);
            break;
        }
        _cleanup_json_ json_t *data = NULL;
        int rc = load_ref(db, project_id, secret, ref, &data, r.why, sizeof(r.why), err);
        if (rc < 0) {
            assign_refs_release(&r);
            return -1;
        }
        if (rc > 0)
            break;
        if (full) {
            const char *k;
            json_t *x;
            json_object_foreach(data, k, x)
            {
                if (!json_is_string(x))
                    continue;
                char *n = NULL;
                if (asprintf(&n, "%s%s", prefix ? prefix : "", k) < 0)
                    abort();
                env_pair(r.env, n, json_string_value(x));
                free(n);
            }
        } else {
            const char *value = json_string_value(json_object_get(data, key));
            if (!value) {
                snprintf(r.why, sizeof(r.why), "key \"%.100s\" not found in %s \"%.200s\"", key,
                         secret ? "secret" : "config map", ref);
                break;
            }
            env_pair(r.env, name, value);
        }
    }
    json_array_foreach(r.why[0] ? NULL : json_object_get(spec, "run_volume_mounts"), i, v)
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
        int rc = load_ref(db, project_id, strcmp(type, "secret") == 0, ref, &data, r.why,
                          sizeof(r.why), err);
        if (rc < 0) {
            assign_refs_release(&r);
            return -1;
        }
        if (rc > 0)
            break;
        json_array_append_new(r.mounts, json_pack("{s:s,s:o,s:b}", "path", path, "files", data,
                                                  "secret", strcmp(type, "secret") == 0));
    }
    const char *isecret = json_string_value(json_object_get(spec, "image_secret"));
    if (!r.why[0] && isecret && isecret[0]) {
        _cleanup_json_ json_t *data = NULL;
        char format[32] = "";
        int rc = load_secret(db, project_id, isecret, &data, format, sizeof(format), r.why,
                             sizeof(r.why), err);
        if (rc < 0) {
            assign_refs_release(&r);
            return -1;
        }
        const char *server = json_string_value(json_object_get(data, "server"));
        const char *user = json_string_value(json_object_get(data, "username"));
        const char *pass = json_string_value(json_object_get(data, "password"));
        const char *image = json_string_value(json_object_get(spec, "image_reference"));
        if (rc == 0 && (strcmp(format, "registry") != 0 || !server || !user || !pass)) {
            snprintf(r.why, sizeof(r.why),
                     "image_secret \"%.200s\" is not a registry secret (server, username, "
                     "password)",
                     isecret);
        } else if (rc == 0 && image) {
            char h1[256], h2[256];
            ref_host(image, h1, sizeof(h1));
            ref_host(server, h2, sizeof(h2));
            if (strcasecmp(h1, h2) == 0 && asprintf(&r.auth, "%s:%s", user, pass) < 0)
                abort();
        }
    }
    *ret = r;
    return 0;
}

/* Probe from a spec's probe_readiness / probe_liveness; NULL when absent. */
static Loom__V1__Probe *probe_from_spec(json_t *p, Loom__V1__Probe *out)
{
    if (!json_is_object(p))
        return NULL;
    loom__v1__probe__init(out);
    const char *type = json_string_value(json_object_get(p, "type"));
    const char *path = json_string_value(json_object_get(p, "path"));
    out->type = (char *)(type ? type : "tcp");
    out->path = (char *)(path ? path : "");
#define PROBE_U32(field, key)                                                                      \
    do {                                                                                           \
        json_int_t x = json_integer_value(json_object_get(p, key));                                \
        out->field = x > 0 && x <= 65535 ? (uint32_t)x : 0;                                        \
    } while (0)
    PROBE_U32(port, "port");
    PROBE_U32(initial_delay_seconds, "initial_delay");
    PROBE_U32(period_seconds, "interval");
    PROBE_U32(timeout_seconds, "timeout");
    PROBE_U32(failure_threshold, "failure_threshold");
#undef PROBE_U32
    return out;
}

/* One row of the assign query (see sched_send_assigns) as an InstanceAssign. */
static void send_assign_row(struct sched *s, PGresult *res, int r, json_t *spec,
                            const struct assign_refs *refs, int64_t epoch)
{
    const char *id = PQgetvalue(res, r, 0);
    const char *node = PQgetvalue(res, r, 1);
    bool job = strcmp(PQgetvalue(res, r, 2), "job") == 0;
    const char *project = PQgetvalue(res, r, 3);

    Loom__V1__InstanceAssign a;
    loom__v1__instance_assign__init(&a);
    a.instance_id = (char *)id;
    a.epoch = epoch;
    a.project = (char *)project;
    a.kind = job ? LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_JOB
                 : LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_APP;
    const char *image = json_string_value(json_object_get(spec, "image_reference"));
    a.image = (char *)(image ? image : "");
    _cleanup_free_ char **cmd = NULL, **args = NULL;
    a.n_command = json_strings(json_object_get(spec, "run_commands"), &cmd);
    a.command = cmd;
    a.n_args = json_strings(json_object_get(spec, "run_arguments"), &args);
    a.args = args;
    a.cpu_millis = strtoll(PQgetvalue(res, r, 4), NULL, 10);
    a.memory_bytes = strtoll(PQgetvalue(res, r, 5), NULL, 10);
    a.gpus = (uint32_t)strtoul(PQgetvalue(res, r, 6), NULL, 10);
    a.retry = (int32_t)strtol(PQgetvalue(res, r, 7), NULL, 10);
    a.ephemeral_bytes = sched_spec_ephemeral(spec);
    a.registry_auth = refs->auth ? refs->auth : (char *)"";

    size_t nmounts = json_array_size(refs->mounts);
    _cleanup_free_ Loom__V1__Mount *mounts = calloc(nmounts ? nmounts : 1, sizeof(*mounts));
    _cleanup_free_ Loom__V1__Mount **mount_ptrs =
        calloc(nmounts ? nmounts : 1, sizeof(*mount_ptrs));
    if (!mounts || !mount_ptrs)
        abort();
    for (size_t k = 0; k < nmounts; k++) {
        json_t *m = json_array_get(refs->mounts, k);
        json_t *files = json_object_get(m, "files");
        loom__v1__mount__init(&mounts[k]);
        mounts[k].path = (char *)json_string_value(json_object_get(m, "path"));
        mounts[k].secret = json_is_true(json_object_get(m, "secret"));
        size_t nf = json_object_size(files), w = 0;
        mounts[k].files = calloc(nf ? nf : 1, sizeof(Loom__V1__MountFile *));
        if (!mounts[k].files)
            abort();
        const char *key;
        json_t *val;
        json_object_foreach(files, key, val)
        {
            if (!json_is_string(val))
                continue;
            Loom__V1__MountFile *f = malloc(sizeof(*f));
            if (!f)
                abort();
            loom__v1__mount_file__init(f);
            f->name = (char *)key;
            f->data.data = (uint8_t *)json_string_value(val);
            f->data.len = json_string_length(val);
            mounts[k].files[w++] = f;
        }
        mounts[k].n_files = w;
        mount_ptrs[k] = &mounts[k];
    }
    a.n_mounts = nmounts;
    a.mounts = mount_ptrs;
    Loom__V1__Probe readiness, liveness;
    if (!job) {
        a.readiness = probe_from_spec(json_object_get(spec, "probe_readiness"), &readiness);
        a.liveness = probe_from_spec(json_object_get(spec, "probe_liveness"), &liveness);
    }

    size_t cap = 20 + json_array_size(refs->env);
    struct env_list e = {.cap = cap};
    e.vars = calloc(cap, sizeof(*e.vars));
    e.ptrs = calloc(cap, sizeof(*e.ptrs));
    e.owned = calloc(cap, sizeof(*e.owned));
    if (!e.vars || !e.ptrs || !e.owned)
        abort();
    /* the user's variables first: ours win when a name repeats (last wins) */
    size_t i;
    json_t *v;
    json_array_foreach(refs->env, i, v) env_add(&e, json_string_value(json_array_get(v, 0)),
                                                json_string_value(json_array_get(v, 1)));
    char krev[320];
    if (job) {
        a.job_run = PQgetvalue(res, r, 9);
        a.array_index = (int32_t)strtol(PQgetvalue(res, r, 8), NULL, 10);
        const char *mode = json_string_value(json_object_get(spec, "run_mode"));
        bool daemon = mode && strcmp(mode, "daemon") == 0;
        /* the spec's value when it has one, else the run's column */
        json_int_t limit = json_integer_value(json_object_get(spec, "scale_max_execution_time"));
        if (limit <= 0)
            limit = strtoll(PQgetvalue(res, r, 12), NULL, 10);
        a.max_execution_seconds = daemon ? 0 : limit;
        env_addf(&e, "JOB_INDEX", "%lld", a.array_index);
        env_addf(&e, "JOB_ARRAY_SIZE", "%lld", strtoll(PQgetvalue(res, r, 10), NULL, 10));
        env_addf(&e, "JOB_INDEX_RETRY_COUNT", "%lld", a.retry);
        env_addf(&e, "JOB_RETRY_LIMIT", "%lld", strtoll(PQgetvalue(res, r, 11), NULL, 10));
        env_add(&e, "JOB_MODE", daemon ? "daemon" : "task");
        env_add(&e, "LOOM_JOBRUN", a.job_run);
        const char *rank = loom_db_val(res, r, 17);
        if (rank) {
            /* a gang member: torchrun's names and ours */
            const char *master = loom_db_val(res, r, 18);
            json_int_t world = json_integer_value(json_object_get(spec, "scale_nodes"));
            static const char *const names[][4] = {
                {"LOOM_RANK", "LOOM_WORLD_SIZE", "LOOM_MASTER_ADDR", "LOOM_MASTER_PORT"},
                {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"},
            };
            for (size_t k = 0; k < 2; k++) {
                env_addf(&e, names[k][0], "%lld", strtoll(rank, NULL, 10));
                env_addf(&e, names[k][1], "%lld", (long long)world);
                env_add(&e, names[k][2], master ? master : "");
                env_addf(&e, names[k][3], "%lld", SCHED_GANG_MASTER_PORT);
            }
        }
    } else {
        a.app = PQgetvalue(res, r, 13);
        json_int_t port = json_integer_value(json_object_get(spec, "image_port"));
        a.port = port > 0 && port < 65536 ? (uint32_t)port : 8080;
        env_addf(&e, "PORT", "%lld", a.port);
        env_add(&e, "LOOM_APP", a.app);
        env_add(&e, "K_SERVICE", a.app);
        snprintf(krev, sizeof(krev), "%s-%05ld", a.app, strtol(PQgetvalue(res, r, 14), NULL, 10));
        env_add(&e, "K_REVISION", krev);
    }
    env_add(&e, "LOOM_PROJECT", project);
    a.n_env = e.n;
    a.env = e.ptrs;

    char subj[320];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_ASSIGN_FMT, node);
    publish_request(s, subj, 'a', id, &a.base);
    for (size_t k = 0; k < e.nowned; k++)
        free(e.owned[k]);
    for (size_t k = 0; k < nmounts; k++) {
        for (size_t f = 0; f < mounts[k].n_files; f++)
            free(mounts[k].files[f]);
        free(mounts[k].files);
    }
    free(e.owned);
    free(e.ptrs);
    free(e.vars);
}

void sched_send_assigns(struct sched *s, struct loom_db *db, int64_t epoch, const char *ids_array)
{
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, &err,
        "SELECT i.id, i.node_name, i.kind, p.name, i.cpu_millis, i.memory_bytes, i.gpus, "
        "  i.retry, i.array_index, r.name, r.array_size, r.retry_limit, "
        "  r.max_execution_seconds, a.name, i.app_generation, "
        "  coalesce(r.spec, ar.spec, a.spec), coalesce(i.job_run_id, -i.app_id), i.rank, "
        "  (SELECT n.address FROM instances g JOIN nodes n ON n.name = g.node_name "
        "   WHERE g.id = i.gang), i.project_id "
        "FROM instances i JOIN projects p ON p.id = i.project_id "
        "LEFT JOIN job_runs r ON r.id = i.job_run_id "
        "LEFT JOIN apps a ON a.id = i.app_id "
        "LEFT JOIN app_revisions ar ON ar.app_id = i.app_id "
        "  AND ar.generation = i.app_generation "
        "WHERE i.id = ANY($1::uuid[]) ORDER BY 17",
        ids_array);
    if (!res) {
        log_warn("could not read instances to assign: %s", err.msg);
        return;
    }
    /* rows of one run or app share the spec: parse and resolve it once */
    _cleanup_json_ json_t *spec = NULL;
    struct assign_refs refs = {0};
    bool refs_ok = false;
    const char *spec_owner = NULL;
    for (int r = 0; r < PQntuples(res); r++) {
        const char *owner = PQgetvalue(res, r, 16);
        if (!spec_owner || strcmp(owner, spec_owner) != 0) {
            if (spec)
                json_decref(spec);
            const char *text = PQgetvalue(res, r, 15);
            spec = loom_json_parse_object(text, strlen(text), NULL);
            if (!spec)
                spec = json_object();
            spec_owner = owner;
            assign_refs_release(&refs);
            refs_ok = resolve_refs(db, PQgetvalue(res, r, 19), spec, &refs, &err) == 0;
            if (!refs_ok)
                log_warn("could not resolve the references of %s: %s", PQgetvalue(res, r, 0),
                         err.msg);
        }
        if (!refs_ok)
            continue; /* sent again once the database answers */
        if (refs.why[0]) {
            /* called after the placement committed: no transaction is open */
            if (sched_fail_instance(s, db, PQgetvalue(res, r, 0), refs.why, &err) < 0)
                log_warn("could not fail instance %s: %s", PQgetvalue(res, r, 0), err.msg);
            continue;
        }
        send_assign_row(s, res, r, spec, &refs, epoch);
    }
    assign_refs_release(&refs);
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
                      "  LIMIT " RESEND_LIMIT ") RETURNING id, node_name, reason",
                      period);
    if (!st)
        return -1;
    for (int r = 0; r < PQntuples(st); r++)
        sched_send_stop(s, PQgetvalue(st, r, 1), PQgetvalue(st, r, 0), epoch,
                        loom_db_val(st, r, 2));
    if (PQntuples(st) > 0)
        loom_metric_add(s->m_resends, PQntuples(st));
    return 0;
}
