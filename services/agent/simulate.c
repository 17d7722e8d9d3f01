/* loom-agent --simulate N: many fake nodes on one NATS connection (see
 * simulate.h). Threads: the NATS handlers (assign, stop, reregister), one
 * registration pass at start, a timer that ends instances when due, a
 * heartbeat thread, and reporters, each owning the instances that hash to
 * it so that one instance's reports go out in order. */
#include "simulate.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "cleanup.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

#include "loom/v1/instance.pb-c.h"
#include "loom/v1/node.pb-c.h"

#define SIM_MAX_NODES 100000
#define SIM_REPORTERS 16
#define SIM_REGISTRARS 8
#define SIM_HASH_BUCKETS (1u << 18)
/* seq of a STOPPED report for an instance this process never knew: above
 * anything a real run of reports could have reached */
#define SIM_UNKNOWN_SEQ (UINT64_C(1) << 40)

static struct {
    int64_t nodes;
    char *node_name;
    char *node_address;
    int64_t cpu_millis;
    int64_t memory_bytes;
    int64_t gpus;
    char *gpu_model;
    int64_t run_ms;
    int64_t hb_ms;
} o;

const struct loom_opt sim_opts[] = {
    {"simulate", "LOOM_AGENT_SIMULATE", LOOM_OPT_INT, &o.nodes, "0", 0, SIM_MAX_NODES,
     "simulate this many nodes (no containers run; see services/agent/simulate.h)"},
    {"simulate-gpus", "LOOM_AGENT_SIMULATE_GPUS", LOOM_OPT_INT, &o.gpus, "0", 0, 64,
     "GPUs of each simulated node"},
    {"simulate-gpu-model", "LOOM_AGENT_SIMULATE_GPU_MODEL", LOOM_OPT_STRING, &o.gpu_model, "H100",
     0, 0, "model of the simulated GPUs"},
    {"simulate-run-time", "LOOM_AGENT_SIMULATE_RUN_TIME", LOOM_OPT_DURATION, &o.run_ms, "0", 0,
     86400000, "how long a simulated job instance runs when its command has no \"sleep N\""},
    {"node-name", "LOOM_NODE_NAME", LOOM_OPT_STRING, &o.node_name, NULL, 0, 0,
     "node name (default: the hostname)"},
    {"node-address", "LOOM_NODE_ADDRESS", LOOM_OPT_STRING, &o.node_address, "127.0.0.1", 0, 0,
     "address the activator reaches instances through"},
    {"cpu-millis", "LOOM_AGENT_CPU_MILLIS", LOOM_OPT_INT, &o.cpu_millis, "0", 0, INT64_MAX,
     "allocatable cpu in millicores (0: detect; simulated: 32000)"},
    {"memory", "LOOM_AGENT_MEMORY", LOOM_OPT_SIZE, &o.memory_bytes, "0", 0, 0,
     "allocatable memory (0: detect; simulated: 128Gi)"},
    {"heartbeat-interval", "LOOM_AGENT_HEARTBEAT_INTERVAL", LOOM_OPT_DURATION, &o.hb_ms, "1s", 100,
     60000, "heartbeat interval"},
};
const size_t sim_nopts = LOOM_ARRAY_SIZE(sim_opts);

bool sim_requested(int argc, char **argv)
{
    const char *v = getenv("LOOM_AGENT_SIMULATE");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--simulate") == 0 && i + 1 < argc)
            v = argv[i + 1];
        else if (strncmp(argv[i], "--simulate=", 11) == 0)
            v = argv[i] + 11;
    }
    return v && strtol(v, NULL, 10) > 0;
}

struct sim_inst {
    char id[37];
    int node;
    bool app;
    bool done;
    int exit_code;
    bool timed_out;
    int64_t due_ms; /* monotonic; INT64_MAX: until stopped */
    uint64_t seq;
    size_t live_pos; /* index in g.live while not done */
    struct sim_inst *next;
};

struct sim_report {
    char id[37];
    int node;
    Loom__V1__InstanceState state;
    int exit_code;
    bool timed_out;
    uint64_t seq;
    char address[64];
    char reason[96];
    struct sim_report *next;
};

struct sim_reporter {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct sim_report *head, *tail;
};

static struct {
    struct loom_service *svc;
    char boot_id[37];
    char prefix[200]; /* "<node>-sim-" */
    size_t prefix_len;
    char (*names)[256];

    pthread_mutex_t mu;
    struct sim_inst **buckets;
    struct sim_inst **live;
    size_t nlive, live_alloc;
    int64_t epoch;

    atomic_bool quit;
    atomic_long registered;
    pthread_t timer, heartbeat, registrars[SIM_REGISTRARS];
    struct sim_reporter rep[SIM_REPORTERS];
    bool started;
} g;

static uint32_t hash_id(const char *id)
{
    uint32_t h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (uint8_t)*id) * 16777619u;
    return h;
}

/* Node number of a subject "loom.agent.<prefix>NNNNN.<verb>", or -1. */
static int node_of_subject(const char *subj)
{
    static const char head[] = "loom.agent.";
    if (strncmp(subj, head, sizeof(head) - 1) != 0)
        return -1;
    const char *p = subj + sizeof(head) - 1;
    if (strncmp(p, g.prefix, g.prefix_len) != 0)
        return -1;
    p += g.prefix_len;
    char *end;
    long n = strtol(p, &end, 10);
    if (end == p || *end != '.' || n < 0 || n >= o.nodes)
        return -1;
    return (int)n;
}

static struct sim_inst *find_locked(const char *id)
{
    for (struct sim_inst *x = g.buckets[hash_id(id) & (SIM_HASH_BUCKETS - 1)]; x; x = x->next)
        if (strcmp(x->id, id) == 0)
            return x;
    return NULL;
}

static void live_remove_locked(struct sim_inst *x)
{
    size_t i = x->live_pos;
    g.live[i] = g.live[--g.nlive];
    g.live[i]->live_pos = i;
    x->done = true;
}

static void enqueue_report(const char *id, int node, Loom__V1__InstanceState state, int code,
                           bool timed_out, uint64_t seq, const char *address, const char *reason)
{
    struct sim_report *r = calloc(1, sizeof(*r));
    if (!r)
        abort();
    snprintf(r->id, sizeof(r->id), "%s", id);
    r->node = node;
    r->state = state;
    r->exit_code = code;
    r->timed_out = timed_out;
    r->seq = seq;
    snprintf(r->address, sizeof(r->address), "%s", address ? address : "");
    snprintf(r->reason, sizeof(r->reason), "%s", reason ? reason : "");
    struct sim_reporter *q = &g.rep[hash_id(id) % SIM_REPORTERS];
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

/* Queues x's terminal report; under g.mu. */
static void finish_locked(struct sim_inst *x, bool stopped)
{
    Loom__V1__InstanceState st = stopped ? LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_STOPPED
                                 : x->exit_code
                                     ? LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_FAILED
                                     : LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_SUCCEEDED;
    char reason[96] = "";
    if (stopped)
        snprintf(reason, sizeof(reason), "stopped");
    else if (x->timed_out)
        snprintf(reason, sizeof(reason), "timed out (max execution time reached)");
    else if (x->exit_code)
        snprintf(reason, sizeof(reason), "exit status %d", x->exit_code);
    enqueue_report(x->id, x->node, st, stopped ? 143 : x->exit_code, !stopped && x->timed_out,
                   ++x->seq, NULL, reason);
    live_remove_locked(x);
}

/* What the command line says: "exit N" and "sleep N" (see simulate.h). */
static void read_command(const Loom__V1__InstanceAssign *a, int *ret_code, int64_t *ret_ms)
{
    char line[4096] = "";
    size_t len = 0;
    for (size_t pass = 0; pass < 2; pass++) {
        size_t n = pass ? a->n_args : a->n_command;
        char **v = pass ? a->args : a->command;
        for (size_t i = 0; i < n && len < sizeof(line) - 2; i++)
            len += (size_t)snprintf(line + len, sizeof(line) - len, "%s ", v[i]);
        if (len >= sizeof(line))
            len = sizeof(line) - 1;
    }
    *ret_code = 0;
    *ret_ms = o.run_ms;
    for (const char *p = line; (p = strstr(p, "exit ")); p += 5)
        if (p == line || strchr(" ;&|(\t", p[-1])) {
            *ret_code = (int)(strtol(p + 5, NULL, 10) & 255);
            break;
        }
    for (const char *p = line; (p = strstr(p, "sleep ")); p += 6)
        if (p == line || strchr(" ;&|(\t", p[-1])) {
            double s = strtod(p + 6, NULL);
            if (s >= 0 && s < 1e7)
                *ret_ms = (int64_t)(s * 1000);
            break;
        }
}

static void on_assign(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)arg;
    int node = node_of_subject(natsMsg_GetSubject(msg));
    if (node < 0)
        return; /* another agent's node on the same NATS */
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceAssign *a = (Loom__V1__InstanceAssign *)loom_bus_unpack(
        msg, &loom__v1__instance_assign__descriptor, &err);
    if (!a) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    if (strlen(a->instance_id) != 36) {
        loom_bus_ack(bus, msg, "invalid instance id", false);
        protobuf_c_message_free_unpacked(&a->base, NULL);
        return;
    }
    int code;
    int64_t run_ms;
    read_command(a, &code, &run_ms);
    pthread_mutex_lock(&g.mu);
    if (a->epoch < g.epoch) {
        pthread_mutex_unlock(&g.mu);
        loom_bus_ack(bus, msg, "stale epoch", true);
        protobuf_c_message_free_unpacked(&a->base, NULL);
        return;
    }
    g.epoch = a->epoch;
    if (find_locked(a->instance_id)) {
        /* a resend: already accepted */
        pthread_mutex_unlock(&g.mu);
        loom_bus_ack(bus, msg, NULL, false);
        protobuf_c_message_free_unpacked(&a->base, NULL);
        return;
    }
    struct sim_inst *x = calloc(1, sizeof(*x));
    if (!x)
        abort();
    snprintf(x->id, sizeof(x->id), "%s", a->instance_id);
    x->node = node;
    x->app = a->kind == LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_APP ||
             a->kind == LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_FUNCTION;
    x->exit_code = code;
    x->due_ms = INT64_MAX;
    if (!x->app) {
        int64_t limit = a->max_execution_seconds * 1000;
        if (limit > 0 && run_ms > limit) {
            run_ms = limit;
            x->exit_code = 137;
            x->timed_out = true;
        }
        x->due_ms = loom_mono_ms() + run_ms;
    }
    uint32_t b = hash_id(x->id) & (SIM_HASH_BUCKETS - 1);
    x->next = g.buckets[b];
    g.buckets[b] = x;
    if (g.nlive == g.live_alloc) {
        g.live_alloc = g.live_alloc ? g.live_alloc * 2 : 4096;
        g.live = realloc(g.live, g.live_alloc * sizeof(*g.live));
        if (!g.live)
            abort();
    }
    x->live_pos = g.nlive;
    g.live[g.nlive++] = x;
    char address[64] = "";
    if (x->app)
        snprintf(address, sizeof(address), "%s:%u", o.node_address, a->port ? a->port : 8080);
    /* queued under the lock: the timer cannot queue the end before this */
    enqueue_report(x->id, node, LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_RUNNING, 0, false,
                   ++x->seq, address, NULL);
    pthread_mutex_unlock(&g.mu);
    loom_bus_ack(bus, msg, NULL, false);
    protobuf_c_message_free_unpacked(&a->base, NULL);
}

static void on_stop(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)arg;
    int node = node_of_subject(natsMsg_GetSubject(msg));
    if (node < 0)
        return;
    Loom__V1__InstanceStop *st =
        (Loom__V1__InstanceStop *)loom_bus_unpack(msg, &loom__v1__instance_stop__descriptor, NULL);
    if (!st) {
        loom_bus_ack(bus, msg, "invalid InstanceStop", false);
        return;
    }
    pthread_mutex_lock(&g.mu);
    if (st->epoch < g.epoch) {
        pthread_mutex_unlock(&g.mu);
        loom_bus_ack(bus, msg, "stale epoch", true);
        protobuf_c_message_free_unpacked(&st->base, NULL);
        return;
    }
    g.epoch = st->epoch;
    struct sim_inst *x = find_locked(st->instance_id);
    if (x && !x->done)
        finish_locked(x, true);
    else if (!x && strlen(st->instance_id) == 36)
        /* never assigned here (lost before it arrived): say it is gone */
        enqueue_report(st->instance_id, node, LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_STOPPED, 143,
                       false, SIM_UNKNOWN_SEQ, NULL, "stopped");
    pthread_mutex_unlock(&g.mu);
    loom_bus_ack(bus, msg, NULL, false);
    protobuf_c_message_free_unpacked(&st->base, NULL);
}

static int register_node(int i, struct loom_err *err)
{
    Loom__V1__NodeRegister r = LOOM__V1__NODE_REGISTER__INIT;
    r.node = g.names[i];
    r.address = o.node_address;
    r.boot_id = g.boot_id;
    r.cpu_millis = o.cpu_millis;
    r.memory_bytes = o.memory_bytes;
    r.disk_bytes = INT64_C(100) << 30;
    r.version = (char *)"0.1.0-sim";
    r.simulated = true;
    r.subnet = (char *)"";
    Loom__V1__GpuDevice gd[64], *gdp[64];
    char ids[64][8], paths[64][24];
    for (int k = 0; k < o.gpus; k++) {
        loom__v1__gpu_device__init(&gd[k]);
        snprintf(ids[k], sizeof(ids[k]), "%d", k);
        snprintf(paths[k], sizeof(paths[k]), "/dev/nvidia%d", k);
        gd[k].id = ids[k];
        gd[k].model = o.gpu_model;
        gd[k].path = paths[k];
        gdp[k] = &gd[k];
    }
    r.n_gpus = (size_t)o.gpus;
    r.gpus = gdp;
    return loom_bus_request_ack(g.svc->bus, LOOM_SUBJ_NODE_REGISTER, &r.base, 5000, NULL, err);
}

static void on_reregister(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    (void)arg;
    int node = node_of_subject(natsMsg_GetSubject(msg));
    struct loom_err err = LOOM_ERR_INIT;
    if (node >= 0 && register_node(node, &err) < 0)
        log_warn("could not register simulated node %s again: %s", g.names[node], err.msg);
}

static void *registrar_main(void *arg)
{
    long t = (long)(intptr_t)arg;
    for (long i = t; i < o.nodes && !atomic_load(&g.quit); i += SIM_REGISTRARS) {
        struct loom_err err = LOOM_ERR_INIT;
        while (register_node((int)i, &err) < 0 && !atomic_load(&g.quit)) {
            log_warn("could not register simulated node %s: %s", g.names[i], err.msg);
            usleep(500000);
            loom_err_clear(&err);
        }
        atomic_fetch_add(&g.registered, 1);
    }
    return NULL;
}

#define SIM_BATCH 500 /* reports a reporter sends in one loom.instance.reports */

/* Sends the queue's head reports in batches; those not acknowledged stay at
 * the head, in order, and go again (like the real agent's outbox). */
static void *reporter_main(void *arg)
{
    struct sim_reporter *q = arg;
    struct sim_report *batch[SIM_BATCH];
    Loom__V1__InstanceReport ms[SIM_BATCH], *mp[SIM_BATCH];
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (!q->head && !atomic_load(&g.quit))
            pthread_cond_wait(&q->cond, &q->mu);
        size_t n = 0;
        for (struct sim_report *r = q->head; r && n < SIM_BATCH; r = r->next)
            batch[n++] = r;
        pthread_mutex_unlock(&q->mu);
        if (n == 0)
            return NULL;
        int64_t now = loom_now_ms();
        for (size_t i = 0; i < n; i++) {
            struct sim_report *r = batch[i];
            loom__v1__instance_report__init(&ms[i]);
            ms[i].instance_id = r->id;
            ms[i].node = g.names[r->node];
            ms[i].state = r->state;
            ms[i].exit_code = r->exit_code;
            ms[i].reason = r->reason;
            ms[i].address = r->address;
            ms[i].ts_unix_ms = now;
            ms[i].timed_out = r->timed_out;
            ms[i].seq = r->seq;
            mp[i] = &ms[i];
        }
        Loom__V1__InstanceReports req = LOOM__V1__INSTANCE_REPORTS__INIT;
        req.n_reports = n;
        req.reports = mp;
        Loom__V1__Acks *acks = NULL;
        struct loom_err err = LOOM_ERR_INIT;
        bool done[SIM_BATCH] = {false};
        size_t ok = 0;
        if (loom_bus_request(g.svc->bus, LOOM_SUBJ_INSTANCE_REPORTS, &req.base,
                             &loom__v1__acks__descriptor, 5000, (ProtobufCMessage **)&acks,
                             &err) < 0) {
            log_debug("%zu reports: %s (resending)", n, err.msg);
        } else {
            for (size_t i = 0; i < n && i < acks->n_acks; i++)
                if (acks->acks[i]->ok)
                    ok += done[i] = true;
                else
                    log_debug("report of %s: %s (resending)", batch[i]->id, acks->acks[i]->error);
            loom__v1__acks__free_unpacked(acks, NULL);
        }
        /* the batch is the queue's first n: unlink the acknowledged ones */
        pthread_mutex_lock(&q->mu);
        struct sim_report **pp = &q->head, *kept = NULL;
        for (size_t i = 0; i < n; i++) {
            if (done[i]) {
                *pp = batch[i]->next;
                if (q->tail == batch[i])
                    q->tail = kept;
                free(batch[i]);
            } else {
                kept = batch[i];
                pp = &batch[i]->next;
            }
        }
        pthread_mutex_unlock(&q->mu);
        if (ok < n)
            for (int i = 0; i < 10 && !atomic_load(&g.quit); i++)
                usleep(50000);
        if (ok < n && atomic_load(&g.quit))
            return NULL;
    }
}

static void *timer_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g.quit)) {
        usleep(5000);
        int64_t now = loom_mono_ms();
        pthread_mutex_lock(&g.mu);
        for (size_t i = 0; i < g.nlive;) {
            struct sim_inst *x = g.live[i];
            if (x->due_ms <= now)
                finish_locked(x, false); /* moves the last one into slot i */
            else
                i++;
        }
        pthread_mutex_unlock(&g.mu);
    }
    return NULL;
}

static void *heartbeat_main(void *arg)
{
    (void)arg;
    uint64_t seq = 0;
    size_t *count = calloc((size_t)o.nodes, sizeof(*count));
    char ***ids = calloc((size_t)o.nodes, sizeof(*ids));
    if (!count || !ids)
        abort();
    while (!atomic_load(&g.quit)) {
        int64_t t0 = loom_mono_ms();
        seq++;
        pthread_mutex_lock(&g.mu);
        memset(count, 0, (size_t)o.nodes * sizeof(*count));
        for (size_t i = 0; i < g.nlive; i++)
            count[g.live[i]->node]++;
        for (long n = 0; n < o.nodes; n++) {
            ids[n] = count[n] ? calloc(count[n], sizeof(char *)) : NULL;
            count[n] = 0;
        }
        /* ids are copied: finished instances stay allocated (resends of
         * their assigns must find them), but copies keep this simple */
        for (size_t i = 0; i < g.nlive; i++) {
            struct sim_inst *x = g.live[i];
            ids[x->node][count[x->node]++] = strdup(x->id);
        }
        int64_t epoch = g.epoch;
        pthread_mutex_unlock(&g.mu);
        for (long n = 0; n < o.nodes; n++) {
            Loom__V1__NodeHeartbeat hb = LOOM__V1__NODE_HEARTBEAT__INIT;
            hb.node = g.names[n];
            hb.boot_id = g.boot_id;
            hb.seq = seq;
            hb.instance_ids = ids[n];
            hb.n_instance_ids = count[n];
            hb.epoch_seen = epoch;
            struct loom_err err = LOOM_ERR_INIT;
            if (loom_bus_publish(g.svc->bus, LOOM_SUBJ_NODE_HEARTBEAT, &hb.base, &err) < 0)
                log_debug("heartbeat of %s: %s", g.names[n], err.msg);
            for (size_t k = 0; k < count[n]; k++)
                free(ids[n][k]);
            free(ids[n]);
        }
        int64_t left = o.hb_ms - (loom_mono_ms() - t0);
        while (left > 0 && !atomic_load(&g.quit)) {
            usleep((useconds_t)(left > 100 ? 100000 : left * 1000));
            left -= 100;
        }
    }
    free(count);
    free(ids);
    return NULL;
}

int sim_start(struct loom_service *svc, struct loom_err *err)
{
    g.svc = svc;
    if (o.nodes <= 0)
        return loom_err_set(err, LOOM_EINVAL, "--simulate needs at least one node");
    if (!o.node_name || !o.node_name[0]) {
        char host[128] = "localhost";
        gethostname(host, sizeof(host) - 1);
        free(o.node_name);
        o.node_name = strdup(host);
    }
    if (strlen(o.node_name) > 180)
        return loom_err_set(err, LOOM_EINVAL, "--node-name is too long to simulate under");
    if (o.cpu_millis == 0)
        o.cpu_millis = 32000;
    if (o.memory_bytes == 0)
        o.memory_bytes = INT64_C(128) << 30;
    snprintf(g.prefix, sizeof(g.prefix), "%s-sim-", o.node_name);
    g.prefix_len = strlen(g.prefix);
    g.names = calloc((size_t)o.nodes, sizeof(*g.names));
    g.buckets = calloc(SIM_HASH_BUCKETS, sizeof(*g.buckets));
    if (!g.names || !g.buckets)
        abort();
    for (long i = 0; i < o.nodes; i++)
        snprintf(g.names[i], sizeof(g.names[i]), "%s%05ld", g.prefix, i);
    loom_uuid4(g.boot_id);
    pthread_mutex_init(&g.mu, NULL);

    char subj[256];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_ASSIGN_FMT, "*");
    if (loom_bus_subscribe(svc->bus, subj, NULL, on_assign, NULL, err) < 0)
        return -1;
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_STOP_FMT, "*");
    if (loom_bus_subscribe(svc->bus, subj, NULL, on_stop, NULL, err) < 0)
        return -1;
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_REREGISTER_FMT, "*");
    if (loom_bus_subscribe(svc->bus, subj, NULL, on_reregister, NULL, err) < 0)
        return -1;
    for (int i = 0; i < SIM_REPORTERS; i++) {
        pthread_mutex_init(&g.rep[i].mu, NULL);
        pthread_cond_init(&g.rep[i].cond, NULL);
        if (pthread_create(&g.rep[i].thread, NULL, reporter_main, &g.rep[i]) != 0)
            abort();
    }
    for (long i = 0; i < SIM_REGISTRARS; i++)
        if (pthread_create(&g.registrars[i], NULL, registrar_main, (void *)(intptr_t)i) != 0)
            abort();
    if (pthread_create(&g.timer, NULL, timer_main, NULL) != 0 ||
        pthread_create(&g.heartbeat, NULL, heartbeat_main, NULL) != 0)
        abort();
    g.started = true;
    log_info("simulating %lld nodes %s00000.. (%lld millicpu, %lld bytes, %lld GPUs each)",
             (long long)o.nodes, g.prefix, (long long)o.cpu_millis, (long long)o.memory_bytes,
             (long long)o.gpus);
    return 0;
}

void sim_tick(struct loom_service *svc)
{
    (void)svc;
}

bool sim_ready(struct loom_service *svc)
{
    (void)svc;
    return atomic_load(&g.registered) >= o.nodes;
}

void sim_stop(struct loom_service *svc)
{
    (void)svc;
    if (!g.started)
        return;
    atomic_store(&g.quit, true);
    for (int i = 0; i < SIM_REGISTRARS; i++)
        pthread_join(g.registrars[i], NULL);
    pthread_join(g.timer, NULL);
    pthread_join(g.heartbeat, NULL);
    for (int i = 0; i < SIM_REPORTERS; i++) {
        pthread_mutex_lock(&g.rep[i].mu);
        pthread_cond_broadcast(&g.rep[i].cond);
        pthread_mutex_unlock(&g.rep[i].mu);
    }
    /* reporters finish what they hold first (each send waits at most 2 s) */
    for (int i = 0; i < SIM_REPORTERS; i++)
        pthread_join(g.rep[i].thread, NULL);
}
