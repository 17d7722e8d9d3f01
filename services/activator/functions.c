/* Function calls. A call goes to a warm instance of the function's current
 * generation that has room under scale_concurrency; without one it claims a
 * stem cell (a runtime container the scheduler keeps idle on every node) in
 * PostgreSQL, where the claim is final and for this function alone, asks
 * the node to move it into the project's network and limits, loads the code
 * into it (/init) meanwhile, and runs the call (/run) once the node confirmed,
 * the OpenWhisk action proxy contract. With no stem cell left the call waits
 * (bounded) for the pools to refill; the scheduler's word that a stem cell
 * runs (loom.stem.<runtime>) wakes it.
 * Each call is an activation, recorded in batches. An instance that ran
 * past the time limit, or broke, is stopped; an idle one after
 * scale_down_delay; one of an older generation once its calls end. */
#include "activator.h"

#include <inttypes.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "cleanup.h"
#include "db.h"
#include "http.h"
#include "instance_state.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "refs.h"
#include "service.h"
#include "spec.h"
#include "subjects.h"
#include "util.h"
#include "loom/v1/instance.pb-c.h"

#define NBUCKETS 128
#define CLAIM_RETRY_MS 25          /* a call with no stem cell looks again this often */
#define MAX_INSTANCES 200          /* per function, as a bound on a runaway scale-up */
#define FLUSH_EVERY_MS 100         /* activation records are written in batches */
#define RETENTION_EVERY_MS 60000   /* old activations go in small batches */
#define EVICT_AFTER_MS 500         /* a call short of a stem cell this long makes room */
#define EVICT_IDLE_MS 1000         /* by stopping an instance idle at least this long */
#define SPECIALIZE_TIMEOUT_MS 1000 /* a claimed stem cell's node confirms within this */

struct fn_inst {
    char id[40];
    char address[64];
    int64_t generation;
    int inflight;
    bool ready; /* its code is loaded */
    int64_t last_used_ms;
};

struct fn {
    struct fn *next;
    char project[ACT_NAME_MAX], name[ACT_NAME_MAX];
    bool known, exists, refreshing;
    int64_t fetched_ms, last_used_ms;
    /* the current generation */
    int64_t id, project_id, generation;
    char project_id_str[24], id_str[24];
    char runtime[64], code_sha[72];
    int64_t concurrency, cpu_millis, memory_bytes, timeout_ms, down_delay_ms;
    int visibility;
    char *init_body; /* the /init request of this generation */
    size_t init_len;
    char why[512];     /* set: the function cannot start (a missing secret...) */
    char *code_cached; /* the code of code_sha, as /init takes it */
    bool binary;
    struct fn_inst *insts;
    size_t ninsts, cap;
    int claiming; /* calls claiming a stem cell now */
    pthread_cond_t cond;
};

/* One call, for the activations table. */
struct activation {
    char id[37], instance[40], status[24];
    int64_t project_id, function_id, generation, started_ms, duration_us, memory_bytes;
    int http_status;
    bool cold;
    char name[ACT_NAME_MAX];
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct fn *table[NBUCKETS];

static pthread_mutex_t act_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t act_cond = PTHREAD_COND_INITIALIZER;
static struct activation *pending;
static size_t npending, cappending;
static pthread_t writer;
static bool writer_started, writer_stop;
static int64_t retention_ms;

static struct loom_metric *m_calls_cold, *m_calls_warm, *m_latency, *m_claims_waited, *m_evictions,
    *m_unconfirmed;
static int64_t next_evict_ms; /* (mu) evictions are at least EVICT_AFTER_MS apart */

/* --- the table ------------------------------------------------------------------- */

static unsigned hash_key(const char *project, const char *name)
{
    unsigned h = 2166136261u;
    for (const char *p = project; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % NBUCKETS;
}

/* Call with mu held. */
static struct fn *fn_get(const char *project, const char *name)
{
    unsigned b = hash_key(project, name);
    for (struct fn *f = table[b]; f; f = f->next)
        if (strcmp(f->project, project) == 0 && strcmp(f->name, name) == 0)
            return f;
    struct fn *f = calloc(1, sizeof(*f));
    if (!f)
        abort();
    snprintf(f->project, sizeof(f->project), "%s", project);
    snprintf(f->name, sizeof(f->name), "%s", name);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cond, &ca);
    pthread_condattr_destroy(&ca);
    f->next = table[b];
    table[b] = f;
    return f;
}

static void fn_free(struct fn *f)
{
    pthread_cond_destroy(&f->cond);
    free(f->init_body);
    free(f->code_cached);
    free(f->insts);
    free(f);
}

static struct fn_inst *inst_add(struct fn *f, const char *id, const char *address, int64_t gen)
{
    for (size_t i = 0; i < f->ninsts; i++)
        if (strcmp(f->insts[i].id, id) == 0)
            return &f->insts[i];
    if (f->ninsts == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->insts = realloc(f->insts, f->cap * sizeof(*f->insts));
        if (!f->insts)
            abort();
    }
    struct fn_inst *in = &f->insts[f->ninsts++];
    *in = (struct fn_inst){.generation = gen, .last_used_ms = loom_mono_ms()};
    snprintf(in->id, sizeof(in->id), "%s", id);
    snprintf(in->address, sizeof(in->address), "%s", address);
    return in;
}

static struct fn_inst *inst_find(struct fn *f, const char *id)
{
    for (size_t i = 0; i < f->ninsts; i++)
        if (strcmp(f->insts[i].id, id) == 0)
            return &f->insts[i];
    return NULL;
}

static void inst_remove(struct fn *f, const char *id)
{
    for (size_t i = 0; i < f->ninsts; i++)
        if (strcmp(f->insts[i].id, id) == 0) {
            f->insts[i] = f->insts[--f->ninsts];
            return;
        }
}

/* --- room for a cold call ------------------------------------------------------------ */

/* Warm instances are a cache: when a node is full, no stem cell can be
 * placed, and a cold call waits for one; it then stops the instance that
 * has been idle longest (of any function this activator serves), whose
 * room the scheduler gives to a new stem cell. */

/* 1 when a stem cell of runtime is on its way (the scheduler found room
 * for one), 0 when none is, -1 on error. A free one the call could not
 * claim is one whose node has no room for the function. */
static int stem_coming(const char *runtime)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = act_db_get(&err);
    if (!db)
        return -1;
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, &err,
                      "SELECT EXISTS (SELECT 1 FROM instances WHERE kind = 'function' "
                      "AND runtime = $1 AND claimed_at IS NULL AND desired = 'run' "
                      "AND state IN ('assigned', 'pulling', 'starting'))",
                      runtime);
    act_db_put(db);
    if (!res)
        return -1;
    return strcmp(PQgetvalue(res, 0, 0), "t") == 0;
}

/* Calls waiting for a stem cell, by runtime (mu), for the scheduler: it
 * places stem cells beyond its pools for them (function_stem_demand). A
 * count is written when it grows and on every tick while it is not 0 or
 * changed, so that the rows of a live activator stay fresh. */
#define DEMAND_RUNTIMES 32
static struct demand {
    char runtime[64];
    int waiting, written;
} demand[DEMAND_RUNTIMES];
static char replica[96]; /* this activator in function_stem_demand */

static struct demand *demand_slot(const char *runtime)
{
    struct demand *free_slot = NULL;
    for (size_t i = 0; i < DEMAND_RUNTIMES; i++) {
        if (strcmp(demand[i].runtime, runtime) == 0)
            return &demand[i];
        if (!free_slot && !demand[i].runtime[0])
            free_slot = &demand[i];
    }
    if (free_slot)
        snprintf(free_slot->runtime, sizeof(free_slot->runtime), "%s", runtime);
    return free_slot; /* NULL: more runtimes than slots; no demand for this one */
}

static void demand_write(const char *runtime, int waiting)
{
    char n[24];
    snprintf(n, sizeof(n), "%d", waiting);
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = act_db_get(&err);
    _cleanup_pgres_ PGresult *res = NULL;
    if (db) {
        res = loom_db_query(db, &err,
                            "INSERT INTO function_stem_demand (activator, runtime, waiting) "
                            "VALUES ($1, $2, $3::integer) ON CONFLICT (activator, runtime) DO "
                            "UPDATE SET waiting = EXCLUDED.waiting, updated_at = now()",
                            replica, runtime, n);
        act_db_put(db);
    }
    if (!res)
        log_warn("could not record %d calls waiting for runtime %s: %s", waiting, runtime, err.msg);
}

/* A call starts (+1) or stops (-1) waiting for a stem cell of runtime (mu
 * held; taken and given back around the write). */
static void demand_change(const char *runtime, int delta)
{
    struct demand *d = demand_slot(runtime);
    if (!d)
        return;
    d->waiting += delta;
    /* written both ways: a count left high after the calls got their stem
     * cells would have the scheduler start more than they need */
    {
        int n = d->waiting;
        d->written = n;
        char rt[64];
        snprintf(rt, sizeof(rt), "%s", runtime);
        pthread_mutex_unlock(&mu);
        demand_write(rt, n);
        if (delta > 0)
            act_wake_scheduler();
        pthread_mutex_lock(&mu);
    }
}

/* On the tick: the counts that are not 0 or changed since written. */
static void demand_tick(void)
{
    for (size_t i = 0; i < DEMAND_RUNTIMES; i++) {
        pthread_mutex_lock(&mu);
        char rt[sizeof(demand[i].runtime)];
        memcpy(rt, demand[i].runtime, sizeof(rt));
        int n = demand[i].waiting;
        bool due = rt[0] && (n > 0 || n != demand[i].written);
        if (due)
            demand[i].written = n;
        pthread_mutex_unlock(&mu);
        if (due)
            demand_write(rt, n);
    }
}

/* Takes the longest idle instance out of its function's table (mu held):
 * its id into victim; false when none has been idle EVICT_IDLE_MS. */
static bool evict_pick(char victim[40], int64_t now)
{
    struct fn *owner = NULL;
    struct fn_inst *best = NULL;
    for (size_t b = 0; b < NBUCKETS; b++)
        for (struct fn *f = table[b]; f; f = f->next)
            for (size_t i = 0; i < f->ninsts; i++) {
                struct fn_inst *x = &f->insts[i];
                if (x->ready && x->inflight == 0 && now - x->last_used_ms >= EVICT_IDLE_MS &&
                    (!best || x->last_used_ms < best->last_used_ms))
                    best = x, owner = f;
            }
    if (!best)
        return false;
    snprintf(victim, 40, "%s", best->id);
    inst_remove(owner, victim);
    return true;
}

/* --- reading a function ------------------------------------------------------------ */

enum {
    F_ID,
    F_PROJECT_ID,
    F_GENERATION,
    F_RUNTIME,
    F_CODE_SHA,
    F_SPEC,
    F_BUNDLE,
    F_CODE, /* NULL when the cached code is still the code */
};

/* The /init request of a generation: its main, code and environment. */
static char *init_request(const struct fn *f, const struct loom_spec *spec, json_t *env_pairs,
                          const char *code, bool binary, size_t *ret_len)
{
    json_t *env = json_object();
    size_t i;
    json_t *v;
    json_array_foreach(env_pairs, i, v)
    {
        json_object_set(env, json_string_value(json_array_get(v, 0)), json_array_get(v, 1));
    }
    char name[160];
    snprintf(name, sizeof(name), "/%s/%s", f->project, f->name);
    _cleanup_json_ json_t *body =
        json_pack("{s:{s:s,s:s,s:s,s:b,s:o}}", "value", "name", name, "main", spec->code_main,
                  "code", code, "binary", binary, "env", env);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    *ret_len = text ? strlen(text) : 0;
    return text;
}

/* Reads the function, its warm instances and (when it changed) its code and
 * environment, then installs them into f (taking mu). */
static int fn_refresh(struct fn *f, struct loom_err *err)
{
    /* project and name never change: they are f's key */
    pthread_mutex_lock(&mu);
    char cached_sha[72];
    snprintf(cached_sha, sizeof(cached_sha), "%s", f->code_cached ? f->code_sha : "");
    pthread_mutex_unlock(&mu);

    struct loom_db *db = act_db_get(err);
    if (!db)
        return -1;
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "SELECT f.id, f.project_id, f.generation, f.runtime, f.code_sha256, f.spec::text, "
        "  c.is_bundle, CASE WHEN c.sha256 = $3 THEN NULL WHEN c.is_bundle "
        "    THEN translate(encode(c.data, 'base64'), E'\\n', '') "
        "    ELSE convert_from(c.data, 'UTF8') END "
        "FROM functions f JOIN projects p ON p.id = f.project_id "
        "JOIN function_code c ON c.sha256 = f.code_sha256 WHERE p.name = $1 AND f.name = $2",
        f->project, f->name, cached_sha);
    _cleanup_pgres_ PGresult *insts = NULL;
    _cleanup_spec_ struct loom_spec spec = {0};
    _cleanup_json_ json_t *env = json_array();
    char why[512] = "";
    int rc = res ? 0 : -1;
    if (rc == 0 && PQntuples(res) > 0) {
        rc = loom_spec_decode_text(LOOM_KIND_FUNCTION, PQgetvalue(res, 0, F_SPEC), &spec, err);
        /* the environment is read once per refresh: secrets change under us */
        if (rc == 0 && loom_refs_env(db, PQgetvalue(res, 0, F_PROJECT_ID), spec.env, env, why,
                                     sizeof(why), err) < 0)
            rc = -1;
        /* instances another replica loaded, or this one before a restart */
        if (rc == 0)
            insts = loom_db_query(db, err,
                                  "SELECT id, address, function_generation FROM instances "
                                  "WHERE function_id = $1 AND state = 'running' AND "
                                  "desired = 'run' AND address IS NOT NULL AND "
                                  "initialized_at IS NOT NULL",
                                  PQgetvalue(res, 0, F_ID));
        if (rc == 0 && !insts)
            rc = -1;
    }
    act_db_put(db);
    if (rc < 0)
        return -1;

    pthread_mutex_lock(&mu);
    f->known = true;
    f->exists = PQntuples(res) > 0;
    f->fetched_ms = loom_mono_ms();
    if (f->exists) {
        if (!PQgetisnull(res, 0, F_CODE)) {
            free(f->code_cached);
            f->code_cached = strdup(PQgetvalue(res, 0, F_CODE));
            if (!f->code_cached)
                abort();
            snprintf(f->code_sha, sizeof(f->code_sha), "%s", PQgetvalue(res, 0, F_CODE_SHA));
            f->binary = *PQgetvalue(res, 0, F_BUNDLE) == 't';
        }
        f->id = strtoll(PQgetvalue(res, 0, F_ID), NULL, 10);
        f->project_id = strtoll(PQgetvalue(res, 0, F_PROJECT_ID), NULL, 10);
        snprintf(f->id_str, sizeof(f->id_str), "%s", PQgetvalue(res, 0, F_ID));
        snprintf(f->project_id_str, sizeof(f->project_id_str), "%s",
                 PQgetvalue(res, 0, F_PROJECT_ID));
        f->generation = strtoll(PQgetvalue(res, 0, F_GENERATION), NULL, 10);
        snprintf(f->runtime, sizeof(f->runtime), "%s", PQgetvalue(res, 0, F_RUNTIME));
        f->concurrency = spec.concurrency;
        f->cpu_millis = spec.cpu_millis;
        f->memory_bytes = spec.memory_bytes;
        f->timeout_ms = spec.max_execution_time * 1000;
        f->down_delay_ms = spec.scale_down_delay * 1000;
        f->visibility = spec.visibility;
        snprintf(f->why, sizeof(f->why), "%s", why);
        free(f->init_body);
        f->init_body = init_request(f, &spec, env, f->code_cached, f->binary, &f->init_len);
        for (int r = 0; r < PQntuples(insts); r++) {
            struct fn_inst *in = inst_add(f, PQgetvalue(insts, r, 0), PQgetvalue(insts, r, 1),
                                          strtoll(PQgetvalue(insts, r, 2), NULL, 10));
            in->ready = true;
        }
    }
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&mu);
    return 0;
}

/* --- instances -------------------------------------------------------------------- */

/* Claims a stem cell of the function's runtime: for good, and for this
 * function's current generation. 1 with id and address when one was free. */
static int claim(struct fn *f, char id[40], char address[64], char node[256], struct loom_err *err)
{
    char gen[24], cpu[24], mem[24];
    pthread_mutex_lock(&mu);
    snprintf(gen, sizeof(gen), "%" PRId64, f->generation);
    snprintf(cpu, sizeof(cpu), "%" PRId64, f->cpu_millis);
    snprintf(mem, sizeof(mem), "%" PRId64, f->memory_bytes);
    char runtime[64], fid[24], pid[24];
    snprintf(runtime, sizeof(runtime), "%s", f->runtime);
    snprintf(fid, sizeof(fid), "%s", f->id_str);
    snprintf(pid, sizeof(pid), "%s", f->project_id_str);
    pthread_mutex_unlock(&mu);
    struct loom_db *db = act_db_get(err);
    if (!db)
        return -1;
    /* SKIP LOCKED: two activators never take the same one, nor wait */
    _cleanup_pgres_ PGresult *res = loom_db_query(
        db, err,
        "UPDATE instances SET project_id = $2::bigint, function_id = $3::bigint, "
        "  function_generation = $4::integer, claimed_at = now(), cpu_millis = $5::bigint, "
        "  memory_bytes = $6::bigint, updated_at = now() "
        "WHERE id = (SELECT s.id FROM instances s JOIN nodes n ON n.name = s.node_name "
        "  WHERE s.kind = 'function' AND s.runtime = $1 AND s.claimed_at IS NULL "
        "  AND s.state = 'running' AND s.desired = 'run' AND s.address IS NOT NULL "
        /* the node has room for the function's shape in place of the stem's */
        "  AND (SELECT n.cpu_millis - sum(j.cpu_millis) >= $5::bigint - s.cpu_millis "
        "      AND n.memory_bytes - sum(j.memory_bytes) >= $6::bigint - s.memory_bytes "
        "      FROM instances j WHERE j.node_name = n.name AND j.desired = 'run' "
        "      AND j.state IN " LOOM_LIVE_STATES_SQL ") "
        "  ORDER BY s.created_at LIMIT 1 FOR UPDATE OF s SKIP LOCKED) "
        "RETURNING id, address, node_name",
        runtime, pid, fid, gen, cpu, mem);
    act_db_put(db);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return 0;
    snprintf(id, 40, "%s", PQgetvalue(res, 0, 0));
    snprintf(address, 64, "%s", PQgetvalue(res, 0, 1));
    snprintf(node, 256, "%s", PQgetvalue(res, 0, 2));
    return 1;
}

/* Tells the node its stem cell now belongs to the project: it joins the
 * project's network and takes the function's limits, then acks. The ack is
 * awaited (loom_bus_ack_wait) before the instance's first call; the code
 * loads meanwhile, in the stem's own network (it reaches less, never more)
 * under the stem's limits. */
static int specialize_start(const struct fn *f, const char *id, const char *node,
                            struct loom_bus_pending **ret, struct loom_err *err)
{
    struct loom_service *svc = loom_service_current();
    if (!svc || !svc->bus)
        return loom_err_set(err, LOOM_EUNAVAIL, "no connection to the bus");
    Loom__V1__InstanceSpecialize m = LOOM__V1__INSTANCE_SPECIALIZE__INIT;
    m.instance_id = (char *)id;
    m.project = (char *)f->project;
    m.function = (char *)f->name;
    m.generation = f->generation;
    m.cpu_millis = f->cpu_millis;
    m.memory_bytes = f->memory_bytes;
    char subj[320];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_SPECIALIZE_FMT, node);
    return loom_bus_ack_start(svc->bus, subj, &m.base, ret, err);
}

/* Asks for an instance to stop, saying why. */
static void inst_stop(const char *id, const char *reason)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = act_db_get(&err);
    _cleanup_pgres_ PGresult *res = NULL;
    if (db)
        res = loom_db_query(db, &err,
                            "UPDATE instances SET desired = 'stop', reason = $2, "
                            "updated_at = now() WHERE id = $1 AND desired = 'run'",
                            id, reason);
    if (db)
        act_db_put(db);
    if (!res)
        log_warn("instance %s: could not record its stop (%s): %s", id, reason, err.msg);
    else
        act_wake_scheduler();
}

/* --- activations ------------------------------------------------------------------ */

static void record(const struct activation *a)
{
    pthread_mutex_lock(&act_mu);
    if (npending == cappending) {
        cappending = cappending ? cappending * 2 : 256;
        pending = realloc(pending, cappending * sizeof(*pending));
        if (!pending)
            abort();
    }
    pending[npending++] = *a;
    pthread_mutex_unlock(&act_mu);
}

/* Writes a batch of activations in one statement. */
static int flush(struct loom_db *db, const struct activation *b, size_t n, struct loom_err *err)
{
    struct strbuf ids = STRBUF_INIT, pids = STRBUF_INIT, fids = STRBUF_INIT, names = STRBUF_INIT,
                  gens = STRBUF_INIT, insts = STRBUF_INIT, starts = STRBUF_INIT, durs = STRBUF_INIT,
                  mems = STRBUF_INIT, sts = STRBUF_INIT, https = STRBUF_INIT, colds = STRBUF_INIT;
    struct strbuf *all[] = {&ids,    &pids, &fids, &names, &gens,  &insts,
                            &starts, &durs, &mems, &sts,   &https, &colds};
    for (size_t i = 0; i < n; i++) {
        const char *sep = i ? "," : "{";
        strbuf_addf(&ids, "%s%s", sep, b[i].id);
        strbuf_addf(&pids, "%s%" PRId64, sep, b[i].project_id);
        strbuf_addf(&fids, "%s%" PRId64, sep, b[i].function_id);
        strbuf_addf(&names, "%s%s", sep, b[i].name);
        strbuf_addf(&gens, "%s%" PRId64, sep, b[i].generation);
        strbuf_addf(&insts, "%s%s", sep, b[i].instance[0] ? b[i].instance : "NULL");
        strbuf_addf(&starts, "%s%" PRId64, sep, b[i].started_ms);
        strbuf_addf(&durs, "%s%" PRId64, sep, b[i].duration_us);
        strbuf_addf(&mems, "%s%" PRId64, sep, b[i].memory_bytes);
        strbuf_addf(&sts, "%s%s", sep, b[i].status);
        strbuf_addf(&https, "%s%d", sep, b[i].http_status);
        strbuf_addf(&colds, "%s%s", sep, b[i].cold ? "t" : "f");
    }
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(all); i++)
        strbuf_addch(all[i], '}');
    /* billed: the duration rounded up to the millisecond; ON CONFLICT: a
     * batch written again after an error is not counted twice */
    const char *params[] = {ids.buf,    pids.buf, fids.buf, names.buf, gens.buf,  insts.buf,
                            starts.buf, durs.buf, mems.buf, sts.buf,   https.buf, colds.buf};
    _cleanup_pgres_ PGresult *res = loom_db_exec(
        db,
        /* and the instances a cold call loaded: others may use them now */
        "WITH ins AS (INSERT INTO function_activations (id, project_id, function_id, "
        "function_name, "
        "  generation, instance_id, started_at, duration_us, billed_ms, memory_bytes, status, "
        "  http_status, cold) "
        "SELECT x.id, x.pid, f.id, x.name, x.gen, x.inst, "
        "  to_timestamp(x.start / 1000.0), x.dur, (x.dur + 999) / 1000, x.mem, x.st, x.http, "
        "  x.cold "
        "FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], "
        "  $6::uuid[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::int[], "
        "  $12::boolean[]) AS x(id, pid, fid, name, gen, inst, start, dur, mem, st, http, cold) "
        "JOIN projects p ON p.id = x.pid LEFT JOIN functions f ON f.id = x.fid "
        "ON CONFLICT (id) DO NOTHING RETURNING instance_id, cold, status) "
        "UPDATE instances SET initialized_at = now() WHERE id IN (SELECT instance_id FROM ins "
        "  WHERE cold AND status IN ('success', 'application_error')) "
        "  AND initialized_at IS NULL AND desired = 'run'",
        LOOM_ARRAY_SIZE(params), params, err);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(all); i++)
        strbuf_release(all[i]);
    return res ? 0 : -1;
}

static void *writer_main(void *arg)
{
    (void)arg;
    struct loom_db *db = NULL;
    int64_t last_retention = loom_mono_ms();
    int final_tries = 0;
    pthread_mutex_lock(&act_mu);
    for (;;) {
        if (npending == 0 && !writer_stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += FLUSH_EVERY_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&act_cond, &act_mu, &ts);
        }
        struct activation *batch = pending;
        size_t n = npending;
        bool stop = writer_stop;
        pending = NULL;
        npending = cappending = 0;
        pthread_mutex_unlock(&act_mu);
        struct loom_err err = LOOM_ERR_INIT;
        if (n > 0 || loom_mono_ms() - last_retention >= RETENTION_EVERY_MS) {
            struct loom_service *svc = loom_service_current();
            if (!db && loom_db_open(svc ? svc->pg_dsn : NULL, &db, &err) < 0)
                log_warn("activations: %s", err.msg);
        }
        for (int attempt = 0; db && n > 0 && attempt < 3; attempt++) {
            if (flush(db, batch, n, &err) == 0) {
                n = 0;
                break;
            }
            log_warn("could not record %zu activations: %s", n, err.msg);
        }
        if (n > 0) {
            /* kept for the next pass: an activation is recorded once it can be */
            pthread_mutex_lock(&act_mu);
            for (size_t i = 0; i < n; i++) {
                if (npending == cappending) {
                    cappending = cappending ? cappending * 2 : 256;
                    pending = realloc(pending, cappending * sizeof(*pending));
                    if (!pending)
                        abort();
                }
                pending[npending++] = batch[i];
            }
            pthread_mutex_unlock(&act_mu);
        }
        free(batch);
        if (db && loom_mono_ms() - last_retention >= RETENTION_EVERY_MS) {
            last_retention = loom_mono_ms();
            char keep[32];
            snprintf(keep, sizeof(keep), "%" PRId64, retention_ms / 1000);
            _cleanup_pgres_ PGresult *del = loom_db_query(
                db, &err,
                /* an activation metering has not counted yet stays */
                "DELETE FROM function_activations WHERE id IN (SELECT id FROM "
                "function_activations WHERE started_at < now() - make_interval(secs => "
                "$1::bigint) AND metered LIMIT 1000)",
                keep);
            if (!del)
                log_warn("activation retention: %s", err.msg);
        }
        pthread_mutex_lock(&act_mu);
        if (stop && (npending == 0 || ++final_tries > 20)) {
            if (npending > 0)
                log_error("%zu activations could not be recorded before the activator stopped",
                          npending);
            break;
        }
        if (stop) {
            pthread_mutex_unlock(&act_mu);
            usleep(100000); /* PostgreSQL is away: a last few tries */
            pthread_mutex_lock(&act_mu);
        }
    }
    pthread_mutex_unlock(&act_mu);
    loom_db_close(db);
    return NULL;
}

/* --- a call ----------------------------------------------------------------------- */

struct call {
    struct loom_http_req *req;
    struct fn *f;
    char *run_body;
    size_t run_len;
    struct activation act;
};

static enum MHD_Result collect(void *arg, enum MHD_ValueKind kind, const char *key,
                               const char *value)
{
    (void)kind;
    json_object_set_new(arg, key ? key : "", json_string(value ? value : ""));
    return MHD_YES;
}

/* The /run request: the parameters and the call's metadata. */
static void build_run(struct call *c, const char *path)
{
    _cleanup_json_ json_t *query = json_object(), *headers = json_object();
    MHD_get_connection_values(c->req->conn, MHD_GET_ARGUMENT_KIND, collect, query);
    MHD_get_connection_values(c->req->conn, MHD_HEADER_KIND, collect, headers);
    /* the caller's credentials stay with the activator */
    json_object_del(headers, "Authorization");
    json_object_del(headers, "authorization");
    _cleanup_json_ json_t *params =
        act_fn_params(c->req->method, path, query, headers, c->req->body, c->req->body_len,
                      loom_http_header(c->req, "content-type"));
    char name[160];
    snprintf(name, sizeof(name), "/%s/%s", c->f->project, c->f->name);
    _cleanup_json_ json_t *run = json_pack(
        "{s:O,s:s,s:s,s:s,s:I}", "value", params, "activation_id", c->act.id, "action_name", name,
        "namespace", c->f->project, "deadline", (json_int_t)(loom_now_ms() + c->f->timeout_ms));
    c->run_body = json_dumps(run, JSON_COMPACT);
    c->run_len = c->run_body ? strlen(c->run_body) : 0;
}

/* /init on a freshly claimed instance; its code is the function's now. */
static int load_code(struct fn *f, const char *address, char *why, size_t why_len)
{
    pthread_mutex_lock(&mu);
    char *body = f->init_body ? strdup(f->init_body) : NULL;
    size_t len = f->init_len;
    int64_t timeout = f->timeout_ms;
    pthread_mutex_unlock(&mu);
    if (!body) {
        snprintf(why, why_len, "the function's code could not be prepared");
        return -1;
    }
    _cleanup_(act_upstream_resp_release) struct act_upstream_resp resp = {.body = STRBUF_INIT,
                                                                          .headers = STRBUF_INIT};
    struct loom_err err = LOOM_ERR_INIT;
    enum act_proxy_result pr = act_call(address, "/init", body, len, timeout, &resp, &err);
    free(body);
    if (pr != ACT_PROXY_OK) {
        snprintf(why, why_len, "%s", err.msg);
        return -1;
    }
    if (resp.status != 200) {
        /* the runtime's own words: a syntax error, a missing main */
        _cleanup_json_ json_t *e =
            json_loadb(resp.body.buf ? resp.body.buf : "", resp.body.len, 0, NULL);
        const char *msg = json_string_value(json_object_get(e, "error"));
        snprintf(why, why_len, "the code did not load: %.400s", msg ? msg : "no reason given");
        return 1;
    }
    return 0;
}

/* Serves one call of a function; one way out, which gives back what the
 * call holds (an instance's slot, a claim). */
static void serve(struct call *c, const char *path, bool internal)
{
    struct fn *f = c->f;
    struct loom_http_req *req = c->req;
    int64_t start = loom_mono_ms();
    int64_t deadline = start + act_cfg.hold_timeout_ms;
    bool checked_caller = false, waited = false;
    struct fn_inst *in = NULL;
    char inst_id[40] = "", address[64] = "";
    int status = 0; /* set: answer this problem */
    char detail[600] = "";
    int retry_after = 0;

    pthread_mutex_lock(&mu);
    f->last_used_ms = start;
    for (;;) {
        int64_t now = loom_mono_ms();
        if (act_shutting_down()) {
            status = 503, retry_after = 1;
            snprintf(detail, sizeof(detail), "the activator is stopping");
            break;
        }
        if (!f->known || now - f->fetched_ms > act_cfg.cache_ttl_ms) {
            if (f->refreshing) {
                struct timespec ts = {(time_t)((now + 50) / 1000),
                                      (long)((now + 50) % 1000) * 1000000L};
                pthread_cond_timedwait(&f->cond, &mu, &ts);
                continue;
            }
            f->refreshing = true;
            pthread_mutex_unlock(&mu);
            struct loom_err err = LOOM_ERR_INIT;
            int rc = fn_refresh(f, &err);
            pthread_mutex_lock(&mu);
            f->refreshing = false;
            if (rc < 0) {
                log_warn("could not look up function %s/%s: %s", f->project, f->name, err.msg);
                status = 503, retry_after = 1;
                snprintf(detail, sizeof(detail), "the function cannot be read now");
                break;
            }
        }
        if (!f->exists) {
            status = 404;
            snprintf(detail, sizeof(detail), "function \"%s\" not found in project \"%s\"", f->name,
                     f->project);
            break;
        }
        /* visibility: not there is the same as not found */
        if (f->visibility != LOOM_VIS_PUBLIC && !internal) {
            status = 404;
            snprintf(detail, sizeof(detail), "function \"%s\" not found in project \"%s\"", f->name,
                     f->project);
            break;
        }
        if (f->visibility == LOOM_VIS_PROJECT && !checked_caller) {
            pthread_mutex_unlock(&mu);
            struct loom_err err = LOOM_ERR_INIT;
            int yes = act_caller_in_project(req, f->project, &err);
            pthread_mutex_lock(&mu);
            checked_caller = true;
            if (yes != 1) {
                status = yes < 0 ? 503 : 404;
                snprintf(detail, sizeof(detail),
                         yes < 0 ? "the caller cannot be checked now"
                                 : "function \"%s\" not found in project "
                                   "\"%s\"",
                         f->name, f->project);
                break;
            }
        }
        if (f->why[0]) {
            status = 502;
            snprintf(detail, sizeof(detail), "the function cannot start: %s", f->why);
            snprintf(c->act.status, sizeof(c->act.status), "developer_error");
            break;
        }
        /* a warm instance of the current generation with room */
        struct fn_inst *best = NULL;
        for (size_t i = 0; i < f->ninsts; i++) {
            struct fn_inst *x = &f->insts[i];
            if (x->ready && x->generation == f->generation && x->inflight < f->concurrency &&
                (!best || x->inflight < best->inflight))
                best = x;
        }
        if (best) {
            best->inflight++;
            in = best;
            snprintf(inst_id, sizeof(inst_id), "%s", in->id);
            snprintf(address, sizeof(address), "%s", in->address);
            break;
        }
        /* instances being loaded will have room for this one */
        int waiting_capacity = f->claiming * (int)f->concurrency;
        size_t current = 0;
        for (size_t i = 0; i < f->ninsts; i++)
            current += f->insts[i].generation == f->generation;
        if ((f->claiming == 0 || waiting_capacity <= f->claiming) &&
            current + (size_t)f->claiming < MAX_INSTANCES) {
            f->claiming++;
            pthread_mutex_unlock(&mu);
            char node[256];
            struct loom_err err = LOOM_ERR_INIT;
            int got = claim(f, inst_id, address, node, &err);
            pthread_mutex_lock(&mu);
            f->claiming--;
            if (got < 0) {
                log_warn("could not claim an instance for %s/%s: %s", f->project, f->name, err.msg);
                status = 503, retry_after = 1;
                snprintf(detail, sizeof(detail), "no instance can be claimed now");
                break;
            }
            if (got > 0) {
                in = inst_add(f, inst_id, address, f->generation);
                in->inflight = 1;
                c->act.cold = true;
                pthread_mutex_unlock(&mu);
                int64_t t_claimed = loom_mono_ms();
                struct loom_bus_pending *ack = NULL;
                struct loom_err serr = LOOM_ERR_INIT;
                int spec = specialize_start(f, inst_id, node, &ack, &serr);
                char why[512];
                int rc = load_code(f, address, why, sizeof(why));
                int64_t t_loaded = loom_mono_ms();
                /* the first call only once the node says the instance is the
                 * project's: in its network, under the function's limits */
                if (spec == 0 && rc == 0)
                    spec = loom_bus_ack_wait(ack, SPECIALIZE_TIMEOUT_MS, &serr);
                else
                    loom_bus_ack_abandon(ack);
                /* where a cold call's time goes, hop by hop */
                log_debug("function %s/%s: instance %s claimed %" PRId64
                          " ms into the call (%s), its code loaded in %" PRId64
                          " ms, its specialization confirmed %" PRId64 " ms later",
                          f->project, f->name, inst_id, t_claimed - start,
                          waited ? "after waiting for a stem cell" : "a stem cell was free",
                          t_loaded - t_claimed, loom_mono_ms() - t_loaded);
                pthread_mutex_lock(&mu);
                in = inst_find(f, inst_id);
                if (rc == 0 && spec < 0) {
                    /* not used: another stem cell is claimed for the call */
                    if (in)
                        inst_remove(f, inst_id);
                    in = NULL;
                    pthread_mutex_unlock(&mu);
                    log_warn("instance %s: its specialization for %s/%s was not confirmed: %s",
                             inst_id, f->project, f->name, serr.msg);
                    loom_metric_add(m_unconfirmed, 1);
                    inst_stop(inst_id, "its specialization was not confirmed");
                    pthread_mutex_lock(&mu);
                    inst_id[0] = address[0] = 0;
                    c->act.cold = false;
                } else if (rc != 0) {
                    if (in)
                        inst_remove(f, inst_id);
                    in = NULL;
                    pthread_mutex_unlock(&mu);
                    inst_stop(inst_id, rc > 0 ? "its code did not load" : "unreachable");
                    pthread_mutex_lock(&mu);
                    status = 502;
                    snprintf(detail, sizeof(detail), "%s", why);
                    snprintf(c->act.status, sizeof(c->act.status),
                             rc > 0 ? "developer_error" : "system_error");
                    break;
                } else {
                    if (in)
                        in->ready = true;
                    /* recorded with the call's activation (flush), off the cold path */
                    pthread_cond_broadcast(&f->cond);
                    break;
                }
            }
            /* none free: the pools refill; a busy instance may free up first */
            /* (got > 0 here: an unconfirmed instance; the next claim after a pause) */
            if (got == 0 && !waited) {
                waited = true;
                loom_metric_add(m_claims_waited, 1);
                demand_change(f->runtime, +1);
            } else if (got == 0) {
                act_wake_scheduler();
            }
            now = loom_mono_ms();
            if (got == 0 && now - start >= EVICT_AFTER_MS && now >= next_evict_ms) {
                next_evict_ms = now + EVICT_AFTER_MS;
                char runtime[64], victim[40];
                snprintf(runtime, sizeof(runtime), "%s", f->runtime);
                pthread_mutex_unlock(&mu);
                bool room = stem_coming(runtime) != 0;
                pthread_mutex_lock(&mu);
                if (!room && evict_pick(victim, loom_mono_ms())) {
                    pthread_mutex_unlock(&mu);
                    log_info("instance %s: evicted, its node's room going to a cold call of %s/%s",
                             victim, f->project, f->name);
                    loom_metric_add(m_evictions, 1);
                    inst_stop(victim, "evicted: its room went to a cold call");
                    pthread_mutex_lock(&mu);
                }
            }
        }
        if (loom_mono_ms() >= deadline) {
            status = 503, retry_after = (int)((act_cfg.hold_timeout_ms + 999) / 1000);
            snprintf(detail, sizeof(detail),
                     "no instance of function \"%s\" became free within %lld ms (runtime %s)",
                     f->name, (long long)act_cfg.hold_timeout_ms, f->runtime);
            break;
        }
        int64_t until = loom_mono_ms() + CLAIM_RETRY_MS;
        struct timespec ts = {(time_t)(until / 1000), (long)(until % 1000) * 1000000L};
        pthread_cond_timedwait(&f->cond, &mu, &ts);
    }
    if (waited)
        demand_change(f->runtime, -1);
    int64_t timeout = f->timeout_ms, memory = f->memory_bytes;
    c->act.project_id = f->project_id;
    c->act.function_id = f->id;
    c->act.generation = f->generation;
    pthread_mutex_unlock(&mu);

    _cleanup_(act_upstream_resp_release) struct act_upstream_resp resp = {.body = STRBUF_INIT,
                                                                          .headers = STRBUF_INIT};
    struct loom_err err = LOOM_ERR_INIT;
    enum act_proxy_result pr = ACT_PROXY_FAILED;
    int64_t t0 = loom_now_ns();
    c->act.started_ms = loom_now_ms();
    if (!status) {
        build_run(c, path);
        pr = act_call(address, "/run", c->run_body, c->run_len, timeout, &resp, &err);
    }
    c->act.duration_us = (loom_now_ns() - t0) / 1000;
    c->act.memory_bytes = memory;
    snprintf(c->act.instance, sizeof(c->act.instance), "%s", inst_id);

    /* a runtime gives up on the call at its deadline with an error of its
     * own (the code may still be running there): a timeout all the same */
    if (pr == ACT_PROXY_OK && resp.status != 200 && c->act.duration_us / 1000 >= timeout - 100)
        pr = ACT_PROXY_TIMEOUT;
    /* the instance's slot back; a broken or late one is not used again */
    const char *stop = pr == ACT_PROXY_TIMEOUT ? "call over its time limit"
                       : pr == ACT_PROXY_CONNECT || pr == ACT_PROXY_FAILED ? "unreachable"
                                                                           : NULL;
    if (in) {
        pthread_mutex_lock(&mu);
        struct fn_inst *x = inst_find(f, inst_id);
        if (x && stop)
            inst_remove(f, inst_id);
        else if (x) {
            x->inflight--;
            x->last_used_ms = loom_mono_ms();
        }
        pthread_cond_broadcast(&f->cond);
        pthread_mutex_unlock(&mu);
        if (stop)
            inst_stop(inst_id, stop);
    }

    char id_header[64];
    snprintf(id_header, sizeof(id_header), "%s", c->act.id);
    loom_http_set_header(req, "X-Loom-Activation-Id", id_header);
    if (status) {
        c->act.http_status = status;
        if (!c->act.status[0])
            snprintf(c->act.status, sizeof(c->act.status), "system_error");
        act_reply_problem(req, status, retry_after, detail);
    } else if (pr == ACT_PROXY_TIMEOUT) {
        c->act.http_status = 504;
        snprintf(c->act.status, sizeof(c->act.status), "timeout");
        char d[160];
        snprintf(d, sizeof(d), "the function did not answer within its time limit (%lld s)",
                 (long long)(timeout / 1000));
        act_reply_problem(req, 504, 0, d);
    } else if (pr != ACT_PROXY_OK) {
        c->act.http_status = 502;
        snprintf(c->act.status, sizeof(c->act.status), "system_error");
        log_warn("function %s/%s: %s", f->project, f->name, err.msg);
        act_reply_problem(req, 502, 0, "the function's instance failed");
    } else if (resp.status != 200) {
        /* an error in user code: the runtime's message */
        _cleanup_json_ json_t *e =
            json_loadb(resp.body.buf ? resp.body.buf : "", resp.body.len, 0, NULL);
        const char *msg = json_string_value(json_object_get(e, "error"));
        char d[700];
        snprintf(d, sizeof(d), "the function failed: %.600s", msg ? msg : "no reason given");
        c->act.http_status = 502;
        snprintf(c->act.status, sizeof(c->act.status), "application_error");
        act_reply_problem(req, 502, 0, d);
    } else {
        struct act_fn_reply out = {0};
        if (act_fn_reply_from_result(resp.body.buf ? resp.body.buf : "", resp.body.len, &out,
                                     &err) < 0) {
            c->act.http_status = 502;
            snprintf(c->act.status, sizeof(c->act.status), "developer_error");
            act_reply_problem(req, 502, 0, err.msg);
        } else {
            const char *k;
            json_t *v;
            int room = LOOM_HTTP_MAX_HEADERS - 2;
            json_object_foreach(out.headers, k, v)
            {
                if (room-- > 0)
                    loom_http_set_header(req, k, json_string_value(v));
            }
            c->act.http_status = out.status;
            snprintf(c->act.status, sizeof(c->act.status), "success");
            loom_http_reply(req, out.status, out.content_type, out.body, out.len);
            act_count_reply(out.status);
        }
        act_fn_reply_release(&out);
    }
    loom_metric_add(c->act.cold ? m_calls_cold : m_calls_warm, 1);
    loom_metric_observe(m_latency, (double)(loom_mono_ms() - start) / 1000.0);
    if (c->act.function_id)
        record(&c->act);
}

void act_fn_handle(struct loom_http_req *req, const char *project, const char *name,
                   const char *path, bool internal)
{
    struct call c = {.req = req};
    loom_uuid4(c.act.id);
    snprintf(c.act.name, sizeof(c.act.name), "%s", name);
    pthread_mutex_lock(&mu);
    c.f = fn_get(project, name);
    pthread_mutex_unlock(&mu);
    serve(&c, path, internal);
    free(c.run_body);
}

void act_fn_stem_ready(const char *runtime)
{
    pthread_mutex_lock(&mu);
    for (size_t b = 0; b < NBUCKETS; b++)
        for (struct fn *f = table[b]; f; f = f->next)
            if (strcmp(f->runtime, runtime) == 0)
                pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&mu);
}

/* --- housekeeping ------------------------------------------------------------------ */

void act_fn_tick(void)
{
    int64_t now = loom_mono_ms();
    struct stop {
        char id[40];
        const char *why;
    } stops[64];
    size_t nstops = 0;
    pthread_mutex_lock(&mu);
    for (int b = 0; b < NBUCKETS; b++) {
        struct fn **pp = &table[b];
        while (*pp) {
            struct fn *f = *pp;
            for (size_t i = 0; i < f->ninsts && nstops < LOOM_ARRAY_SIZE(stops);) {
                struct fn_inst *x = &f->insts[i];
                const char *why = NULL;
                if (x->inflight == 0 && x->generation != f->generation)
                    why = "replaced by a newer generation";
                else if (x->inflight == 0 && now - x->last_used_ms > f->down_delay_ms)
                    why = "idle";
                if (!why) {
                    i++;
                    continue;
                }
                snprintf(stops[nstops].id, sizeof(stops[nstops].id), "%s", x->id);
                stops[nstops++].why = why;
                f->insts[i] = f->insts[--f->ninsts];
            }
            /* unknown and unused functions are not kept */
            if (f->ninsts == 0 && f->claiming == 0 && !f->refreshing &&
                now - f->last_used_ms > 10 * 60 * 1000) {
                *pp = f->next;
                fn_free(f);
                continue;
            }
            pp = &f->next;
        }
    }
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; i < nstops; i++)
        inst_stop(stops[i].id, stops[i].why);
    demand_tick();
}

int act_fn_start(int64_t activation_retention_ms, struct loom_err *err)
{
    static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,  0.5,    1,     2.5,  5,     10,   60};
    retention_ms = activation_retention_ms;
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    char rnd[37];
    loom_uuid4(rnd);
    snprintf(replica, sizeof(replica), "%s:%d:%.8s", host, (int)getpid(), rnd);
    m_calls_cold = loom_metric_counter("loom_activator_function_calls_total", "cold=\"true\"",
                                       "function calls, by whether they loaded an instance");
    m_calls_warm = loom_metric_counter("loom_activator_function_calls_total", "cold=\"false\"",
                                       "function calls, by whether they loaded an instance");
    m_claims_waited = loom_metric_counter("loom_activator_function_stem_waits_total", NULL,
                                          "calls that found no stem cell and waited for one");
    m_evictions = loom_metric_counter("loom_activator_function_evictions_total", NULL,
                                      "idle instances stopped to make room for a cold call");
    m_unconfirmed =
        loom_metric_counter("loom_activator_function_unconfirmed_total", NULL,
                            "claimed stem cells not used: their node did not confirm the claim");
    m_latency =
        loom_metric_histogram("loom_activator_function_seconds", NULL,
                              "time to answer a function call", buckets, LOOM_ARRAY_SIZE(buckets));
    if (pthread_create(&writer, NULL, writer_main, NULL) != 0)
        return loom_err_set(err, LOOM_EINTERNAL, "could not start the activation writer");
    writer_started = true;
    return 0;
}

void act_fn_stop(void)
{
    if (!writer_started)
        return;
    pthread_mutex_lock(&act_mu);
    writer_stop = true;
    pthread_cond_signal(&act_cond);
    pthread_mutex_unlock(&act_mu);
    pthread_join(writer, NULL);
    writer_started = false;
    pthread_mutex_lock(&mu);
    for (int b = 0; b < NBUCKETS; b++)
        while (table[b]) {
            struct fn *f = table[b];
            table[b] = f->next;
            fn_free(f);
        }
    pthread_mutex_unlock(&mu);
}
