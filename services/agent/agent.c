/* loom-agent: node registration, heartbeats, the scheduler's commands,
 * report outboxes, usage samples, and restart adoption. The per-instance
 * lifecycle is in instance.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "subjects.h"
#include "util.h"

#include "loom/v1/common.pb-c.h"
#include "loom/v1/node.pb-c.h"
#include "loom/v1/usage.pb-c.h"

static struct agent g_agent;

const struct loom_opt agent_opts[] = {
    {"node-name", "LOOM_NODE_NAME", LOOM_OPT_STRING, &g_agent.o.node_name, NULL, 0, 0,
     "node name (default: the hostname)"},
    {"node-address", "LOOM_NODE_ADDRESS", LOOM_OPT_STRING, &g_agent.o.node_address, "127.0.0.1", 0,
     0, "address the activator reaches instances through"},
    {"state-dir", "LOOM_AGENT_STATE_DIR", LOOM_OPT_STRING, &g_agent.o.state_dir, NULL, 0, 0,
     "agent state directory (required)"},
    {"subnet", "LOOM_AGENT_SUBNET", LOOM_OPT_STRING, &g_agent.o.subnet, "10.88.0.0/24", 0, 0,
     "container subnet (CIDR)"},
    {"bridge", "LOOM_AGENT_BRIDGE", LOOM_OPT_STRING, &g_agent.o.bridge, "loom0", 0, 0,
     "bridge interface name"},
    {"cgroup-parent", "LOOM_AGENT_CGROUP_PARENT", LOOM_OPT_STRING, &g_agent.o.cgroup_parent, NULL,
     0, 0, "cgroup (relative to the agent's) holding instances (default: loom-<node>)"},
    {"runtime", "LOOM_AGENT_RUNTIME", LOOM_OPT_STRING, &g_agent.o.runtime, "runc", 0, 0,
     "OCI runtime"},
    {"cni-path", "LOOM_AGENT_CNI_PATH", LOOM_OPT_STRING, &g_agent.o.cni_path, "/usr/lib/cni", 0, 0,
     "CNI plugin directory"},
    {"image-cache-size", "LOOM_AGENT_IMAGE_CACHE_SIZE", LOOM_OPT_SIZE, &g_agent.o.image_cache_size,
     "10Gi", 0, 0, "image cache size"},
    {"insecure-registries", "LOOM_AGENT_INSECURE_REGISTRIES", LOOM_OPT_STRING, &g_agent.o.insecure,
     NULL, 0, 0, "registries (host[:port],...) reached over plain http"},
    {"cpu-millis", "LOOM_AGENT_CPU_MILLIS", LOOM_OPT_INT, &g_agent.o.cpu_millis, "0", 0, INT64_MAX,
     "allocatable cpu in millicores (0: detect)"},
    {"memory", "LOOM_AGENT_MEMORY", LOOM_OPT_SIZE, &g_agent.o.memory_bytes, "0", 0, 0,
     "allocatable memory (0: detect)"},
    {"labels", "LOOM_AGENT_LABELS", LOOM_OPT_STRING, &g_agent.o.labels, NULL, 0, 0,
     "node labels k=v,..."},
    {"gpus", "LOOM_AGENT_GPUS", LOOM_OPT_STRING, &g_agent.o.gpus, NULL, 0, 0,
     "GPUs id:model,... (default: detect /dev/nvidiaN)"},
    {"usage-interval", "LOOM_AGENT_USAGE_INTERVAL", LOOM_OPT_DURATION, &g_agent.o.usage_ms, "5s",
     100, 3600000, "usage sample interval"},
    {"heartbeat-interval", "LOOM_AGENT_HEARTBEAT_INTERVAL", LOOM_OPT_DURATION, &g_agent.o.hb_ms,
     "1s", 100, 60000, "heartbeat interval"},
    {"userns", "LOOM_AGENT_USERNS", LOOM_OPT_STRING, &g_agent.o.userns, "auto", 0, 0,
     "user namespaces: auto (where the host can), on (required), off"},
    {"userns-ranges", "LOOM_AGENT_USERNS_RANGES", LOOM_OPT_STRING, &g_agent.o.userns_ranges,
     "/var/lib/loom/userns-ranges", 0, 0,
     "file of the projects' host id ranges, shared by the agents of a host"},
    {"userns-base", "LOOM_AGENT_USERNS_BASE", LOOM_OPT_INT, &g_agent.o.userns_base, "1048576",
     65536, 4294836224LL, "first host id given to a project (a multiple of 65536)"},
    {"finished-retention", "LOOM_AGENT_FINISHED_RETENTION", LOOM_OPT_DURATION,
     &g_agent.o.retention_ms, "10m", 0, 0, "how long finished instance dirs (logs) are kept"},
};
const size_t agent_nopts = LOOM_ARRAY_SIZE(agent_opts);

/* ---- small helpers -------------------------------------------------------- */

char *agent_instance_dir(const char *state_dir, const char *id)
{
    char *d;
    if (asprintf(&d, "%s/instances/%s", state_dir, id) < 0)
        abort();
    return d;
}

int agent_write_json(const char *path, json_t *j, struct loom_err *err)
{
    _cleanup_free_ char *s = json_dumps(j, JSON_COMPACT);
    if (!s)
        return loom_err_set(err, LOOM_EINTERNAL, "could not serialize json");
    return loom_write_file_atomic(path, s, strlen(s), err);
}

int agent_write_file_nosync(const char *path, const char *data, size_t len, struct loom_err *err)
{
    char tmp[4300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s\"", tmp);
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            unlink(tmp);
            return loom_err_sys(err, e, "could not write \"%s\"", tmp);
        }
        off += (size_t)n;
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return loom_err_sys(err, e, "could not rename \"%s\"", tmp);
    }
    return 0;
}

int agent_write_json_nosync(const char *path, json_t *j, struct loom_err *err)
{
    _cleanup_free_ char *s = json_dumps(j, JSON_COMPACT);
    if (!s)
        return loom_err_set(err, LOOM_EINTERNAL, "could not serialize json");
    return agent_write_file_nosync(path, s, strlen(s), err);
}

char *agent_hex(const uint8_t *data, size_t len)
{
    char *h = malloc(len * 2 + 1);
    if (!h)
        abort();
    loom_hex(data, len, h);
    return h;
}

uint8_t *agent_unhex(const char *hex, size_t *ret_len)
{
    size_t n = strlen(hex);
    if (n % 2)
        return NULL;
    uint8_t *b = malloc(n / 2 + 1);
    if (!b)
        abort();
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            free(b);
            return NULL;
        }
        b[i] = (uint8_t)v;
    }
    *ret_len = n / 2;
    return b;
}

static bool valid_id(const char *id)
{
    /* instance ids are UUIDs; they become paths and runc ids */
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
              (id[i] >= 'A' && id[i] <= 'Z') || id[i] == '-' || id[i] == '_'))
            return false;
    return true;
}

/* ---- reports --------------------------------------------------------------- */

int agent_persist_reports(struct agent *a, struct instance *in)
{
    (void)a;
    _cleanup_json_ json_t *pending = json_array();
    for (struct report *r = in->outbox; r; r = r->next) {
        _cleanup_free_ char *h = agent_hex(r->data, r->len);
        json_array_append_new(pending, json_string(h));
    }
    _cleanup_json_ json_t *j = json_pack("{s:I,s:b,s:O}", "seq", (json_int_t)in->seq, "terminal",
                                         in->terminal, "pending", pending);
    char path[4200];
    snprintf(path, sizeof(path), "%s/reports", in->dir);
    struct loom_err err = LOOM_ERR_INIT;
    /* rename without fsync: it survives a crash of the agent (the page cache
     * stays), and a crash of the machine takes the containers with it; the
     * scheduler's database is the record and re-sends what was not acked.
     * An fsync here cost ~5 ms per report on the start path. */
    if (agent_write_json_nosync(path, j, &err) < 0) {
        log_error("instance %s: %s", in->id, err.msg);
        return -1;
    }
    return 0;
}

void agent_report(struct agent *a, struct instance *in, Loom__V1__InstanceState state,
                  const struct report_extra *x)
{
    Loom__V1__InstanceReport r = LOOM__V1__INSTANCE_REPORT__INIT;
    pthread_mutex_lock(&a->mu);
    if (in->terminal) {
        pthread_mutex_unlock(&a->mu);
        return;
    }
    r.instance_id = in->id;
    r.node = a->o.node_name;
    r.state = state;
    r.ts_unix_ms = loom_now_ms();
    r.seq = ++in->seq;
    if (x) {
        r.exit_code = x->exit_code;
        r.reason = (char *)(x->reason ? x->reason : "");
        r.address = (char *)(x->address ? x->address : "");
        r.oom_killed = x->oom_killed;
        r.timed_out = x->timed_out;
        r.permanent = x->permanent;
    }
    struct report *rep = calloc(1, sizeof(*rep));
    if (!rep)
        abort();
    rep->seq = r.seq;
    rep->len = loom__v1__instance_report__get_packed_size(&r);
    rep->data = malloc(rep->len + 1);
    if (!rep->data)
        abort();
    loom__v1__instance_report__pack(&r, rep->data);
    struct report **t = &in->outbox;
    while (*t)
        t = &(*t)->next;
    *t = rep;
    if (state >= ST_SUCCEEDED)
        in->terminal = true;
    if (state == ST_RUNNING)
        in->running = true;
    agent_persist_reports(a, in);
    pthread_cond_broadcast(&a->cond);
    agent_kick_reporter(a);
    pthread_mutex_unlock(&a->mu);
    log_info(
        "instance %s: report seq %" PRIu64 " %s%s%s", in->id, r.seq,
        protobuf_c_enum_descriptor_get_value(&loom__v1__instance_state__descriptor, state)->name,
        x && x->reason ? " " : "", x && x->reason ? x->reason : "");
}

/* Sends the head of every outbox, in order per instance; one failure holds
 * that instance's later reports back until the next round. */
static void *reporter_main(void *arg)
{
    struct agent *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stopping) {
        bool sent_any = false, failed = false;
        for (struct instance *in = a->list; in && !a->stopping; in = in->next) {
            while (in->outbox && !a->stopping) {
                struct report *r = in->outbox;
                uint8_t *copy = malloc(r->len + 1);
                if (!copy)
                    abort();
                memcpy(copy, r->data, r->len);
                size_t len = r->len;
                pthread_mutex_unlock(&a->mu);
                Loom__V1__InstanceReport *msg = loom__v1__instance_report__unpack(NULL, len, copy);
                free(copy);
                struct loom_err err = LOOM_ERR_INIT;
                int rc = msg ? loom_bus_request_ack(a->svc->bus, LOOM_SUBJ_INSTANCE_REPORT,
                                                    &msg->base, 2000, NULL, &err)
                             : 0;
                if (msg)
                    loom__v1__instance_report__free_unpacked(msg, NULL);
                pthread_mutex_lock(&a->mu);
                if (rc < 0) {
                    log_debug("instance %s: report not acknowledged: %s", in->id, err.msg);
                    failed = true;
                    break;
                }
                if (in->outbox == r) {
                    in->outbox = r->next;
                    free(r->data);
                    free(r);
                    agent_persist_reports(a, in);
                    pthread_cond_broadcast(&a->cond);
                }
                sent_any = true;
            }
        }
        (void)sent_any;
        bool pending = false;
        for (struct instance *in = a->list; in; in = in->next)
            if (in->outbox)
                pending = true;
        if (a->stopping)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (failed || pending) {
            ts.tv_sec += 1; /* resend after a second */
        } else {
            ts.tv_sec += 5;
        }
        a->report_kick = false;
        while (!a->stopping && !a->report_kick) {
            if (pthread_cond_timedwait(&a->report_cond, &a->mu, &ts) == ETIMEDOUT)
                break;
        }
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

void agent_kick_reporter(struct agent *a)
{
    /* caller holds a->mu */
    a->report_kick = true;
    pthread_cond_signal(&a->report_cond);
}

/* ---- epoch ------------------------------------------------------------------- */

/* Under a->mu. Returns false when epoch is older than one seen. */
static bool epoch_accept(struct agent *a, int64_t epoch)
{
    if (epoch < a->epoch)
        return false;
    if (epoch > a->epoch) {
        a->epoch = epoch;
        char path[4200], buf[32];
        snprintf(path, sizeof(path), "%s/epoch", a->o.state_dir);
        int n = snprintf(buf, sizeof(buf), "%" PRId64 "\n", epoch);
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_write_file_atomic(path, buf, (size_t)n, &err) < 0)
            log_error("%s", err.msg);
    }
    return true;
}

struct instance *agent_find(struct agent *a, const char *id)
{
    for (struct instance *in = a->list; in; in = in->next)
        if (strcmp(in->id, id) == 0)
            return in;
    return NULL;
}

/* ---- NATS handlers ---------------------------------------------------------- */

static int write_instance_json(struct agent *a, struct instance *in, struct loom_err *err)
{
    (void)a;
    Loom__V1__InstanceAssign *as = in->assign;
    _cleanup_free_ char *hex = agent_hex(in->assign_pb, in->assign_len);
    _cleanup_json_ json_t *j =
        json_pack("{s:s,s:s,s:s,s:s?,s:i,s:s?,s:s,s:s}", "id", in->id, "project", as->project,
                  "kind", as->kind == KIND_APP ? "app" : "job", "job_run",
                  as->job_run[0] ? as->job_run : NULL, "array_index", as->array_index, "app",
                  as->app[0] ? as->app : NULL, "image", as->image, "assign", hex);
    char path[4200];
    snprintf(path, sizeof(path), "%s/instance.json", in->dir);
    /* no fsync, as for the reports: an unacked assign is re-sent by the
     * scheduler, and after a machine crash there is nothing to re-adopt */
    return agent_write_json_nosync(path, j, err);
}

static struct instance *instance_new(struct agent *a, const uint8_t *pb, size_t len)
{
    Loom__V1__InstanceAssign *as = loom__v1__instance_assign__unpack(NULL, len, pb);
    if (!as)
        return NULL;
    struct instance *in = calloc(1, sizeof(*in));
    if (!in)
        abort();
    in->assign = as;
    in->assign_pb = malloc(len + 1);
    if (!in->assign_pb)
        abort();
    memcpy(in->assign_pb, pb, len);
    in->assign_len = len;
    snprintf(in->id, sizeof(in->id), "%s", as->instance_id);
    in->dir = agent_instance_dir(a->o.state_dir, in->id);
    in->shim_pid = -1;
    in->init_pid = -1;
    return in;
}

static void on_assign(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct agent *a = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceAssign *as = (Loom__V1__InstanceAssign *)loom_bus_unpack(
        msg, &loom__v1__instance_assign__descriptor, &err);
    if (!as) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    int64_t received = loom_mono_ms();
    const char *refuse = NULL;
    bool stale = false;
    if (!valid_id(as->instance_id))
        refuse = "invalid instance id";
    else if (!as->image || !as->image[0])
        refuse = "no image";
    else if (as->kind == KIND_APP && (as->port == 0 || as->port > 65535))
        refuse = "an app needs a port from 1 to 65535";
    pthread_mutex_lock(&a->mu);
    if (!refuse && !epoch_accept(a, as->epoch)) {
        refuse = "stale epoch";
        stale = true;
    }
    if (!refuse && !agent_find(a, as->instance_id) && !a->stopping) {
        struct instance *in = instance_new(a, (const uint8_t *)natsMsg_GetData(msg),
                                           (size_t)natsMsg_GetDataLength(msg));
        in->assigned_mono = received;
        if (loom_mkdir_p(in->dir, 0700, &err) < 0 || write_instance_json(a, in, &err) < 0) {
            log_error("instance %s: %s", in->id, err.msg);
            refuse = "could not write the instance state";
            instance_free(in);
        } else {
            agent_persist_reports(a, in);
            in->next = a->list;
            a->list = in;
            log_info("instance %s: assigned (%s, image %s)", in->id,
                     as->kind == KIND_APP ? "app" : "job", as->image);
            instance_spawn(a, in, false);
        }
    }
    pthread_mutex_unlock(&a->mu);
    loom_bus_ack(bus, msg, refuse, stale);
    loom__v1__instance_assign__free_unpacked(as, NULL);
}

/* A stop for an instance this node does not hold (never received, or gone
 * with a wiped state dir): it is not running here, so say it stopped. The
 * wall clock as seq outranks any report sent for it before. Not persisted:
 * the scheduler resends the stop until a report lands. */
static void report_unknown_stopped(struct agent *a, const char *id)
{
    Loom__V1__InstanceReport r = LOOM__V1__INSTANCE_REPORT__INIT;
    r.instance_id = (char *)id;
    r.node = a->o.node_name;
    r.state = ST_STOPPED;
    r.ts_unix_ms = loom_now_ms();
    r.seq = (uint64_t)r.ts_unix_ms;
    r.reason = (char *)"not running on this node";
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_request_ack(a->svc->bus, LOOM_SUBJ_INSTANCE_REPORT, &r.base, 2000, NULL, &err) < 0)
        log_debug("instance %s: stopped report not acknowledged: %s", id, err.msg);
    else
        log_info("instance %s: stop for an instance not on this node, reported stopped", id);
}

static void on_reregister(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    (void)msg;
    struct agent *a = arg;
    a->reregister = true;
    loom_service_wake(a->svc);
}

static void on_stop(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct agent *a = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceStop *st =
        (Loom__V1__InstanceStop *)loom_bus_unpack(msg, &loom__v1__instance_stop__descriptor, &err);
    if (!st) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    pthread_mutex_lock(&a->mu);
    if (!epoch_accept(a, st->epoch)) {
        pthread_mutex_unlock(&a->mu);
        loom_bus_ack(bus, msg, "stale epoch", true);
        loom__v1__instance_stop__free_unpacked(st, NULL);
        return;
    }
    struct instance *in = agent_find(a, st->instance_id);
    if (in && !in->stop_requested) {
        in->stop_requested = true;
        in->stop_grace_ms = (int64_t)st->grace_seconds * 1000;
        snprintf(in->stop_reason, sizeof(in->stop_reason), "%s",
                 st->reason && st->reason[0] ? st->reason : "stopped on request");
        log_info("instance %s: stop requested (%s)", in->id, in->stop_reason);
        pthread_cond_broadcast(&a->cond);
    }
    pthread_mutex_unlock(&a->mu);
    loom_bus_ack(bus, msg, NULL, false);
    if (!in && valid_id(st->instance_id))
        report_unknown_stopped(a, st->instance_id);
    loom__v1__instance_stop__free_unpacked(st, NULL);
}

/* ---- inventory ------------------------------------------------------------- */

static void detect_inventory(struct agent *a)
{
    if (a->o.cpu_millis <= 0)
        a->o.cpu_millis = sysconf(_SC_NPROCESSORS_ONLN) * 1000;
    if (a->o.memory_bytes <= 0) {
        _cleanup_free_ char *mi = NULL;
        if (loom_read_file("/proc/meminfo", &mi, NULL, NULL) == 0) {
            char *p = strstr(mi, "MemTotal:");
            if (p)
                a->o.memory_bytes = strtoll(p + 9, NULL, 10) * 1024;
        }
    }
    struct statvfs sv;
    if (statvfs(a->o.state_dir, &sv) == 0)
        a->disk_bytes = (int64_t)sv.f_blocks * (int64_t)sv.f_frsize;

    /* GPUs: configured, or /dev/nvidiaN with models from nvidia-smi -L */
    if (a->o.gpus && a->o.gpus[0]) {
        _cleanup_free_ char *list = strdup(a->o.gpus);
        for (char *s = list, *tok; (tok = strsep(&s, ",")) && a->ngpus < AGENT_MAX_GPUS;) {
            char *model = strchr(tok, ':');
            if (model)
                *model++ = 0;
            struct agent_gpu *g = &a->gpus[a->ngpus++];
            snprintf(g->id, sizeof(g->id), "%s", tok);
            snprintf(g->model, sizeof(g->model), "%s", model ? model : "unknown");
            snprintf(g->path, sizeof(g->path), "/dev/nvidia%s", tok);
        }
        return;
    }
    glob_t gl;
    if (glob("/dev/nvidia[0-9]*", 0, NULL, &gl) == 0) {
        _cleanup_free_ char *smi = NULL;
        const char *argv[] = {"/usr/bin/nvidia-smi", "-L", NULL};
        struct loom_err err = LOOM_ERR_INIT;
        if (access(argv[0], X_OK) == 0)
            agent_run(argv, NULL, NULL, &smi, &err);
        for (size_t i = 0; i < gl.gl_pathc && a->ngpus < AGENT_MAX_GPUS; i++) {
            struct agent_gpu *g = &a->gpus[a->ngpus++];
            const char *num = gl.gl_pathv[i] + strlen("/dev/nvidia");
            snprintf(g->id, sizeof(g->id), "%s", num);
            snprintf(g->path, sizeof(g->path), "%s", gl.gl_pathv[i]);
            snprintf(g->model, sizeof(g->model), "unknown");
            char key[32];
            snprintf(key, sizeof(key), "GPU %s: ", num);
            char *p = smi ? strstr(smi, key) : NULL;
            if (p) {
                p += strlen(key);
                size_t n = strcspn(p, "(\n");
                while (n && p[n - 1] == ' ')
                    n--;
                snprintf(g->model, sizeof(g->model), "%.*s", (int)n, p);
            }
        }
        globfree(&gl);
    }
}

/* ---- registration, heartbeat, usage, retention ----------------------------- */

static int do_register(struct agent *a, struct loom_err *err)
{
    Loom__V1__NodeRegister r = LOOM__V1__NODE_REGISTER__INIT;
    r.node = a->o.node_name;
    r.address = a->o.node_address;
    r.boot_id = a->boot_id;
    r.cpu_millis = a->o.cpu_millis;
    r.memory_bytes = a->o.memory_bytes;
    r.disk_bytes = a->disk_bytes;
    r.version = (char *)"0.1.0";
    r.subnet = a->o.subnet;
    Loom__V1__NodeRegister__LabelsEntry ents[32], *entp[32];
    _cleanup_free_ char *labels = a->o.labels ? strdup(a->o.labels) : NULL;
    for (char *s = labels, *tok; s && (tok = strsep(&s, ",")) && r.n_labels < 32;) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok)
            continue;
        *eq = 0;
        loom__v1__node_register__labels_entry__init(&ents[r.n_labels]);
        ents[r.n_labels].key = tok;
        ents[r.n_labels].value = eq + 1;
        entp[r.n_labels] = &ents[r.n_labels];
        r.n_labels++;
    }
    r.labels = entp;
    Loom__V1__GpuDevice gd[AGENT_MAX_GPUS], *gdp[AGENT_MAX_GPUS];
    for (int i = 0; i < a->ngpus; i++) {
        loom__v1__gpu_device__init(&gd[i]);
        gd[i].id = a->gpus[i].id;
        gd[i].model = a->gpus[i].model;
        gd[i].path = a->gpus[i].path;
        gdp[i] = &gd[i];
    }
    r.n_gpus = (size_t)a->ngpus;
    r.gpus = gdp;
    return loom_bus_request_ack(a->svc->bus, LOOM_SUBJ_NODE_REGISTER, &r.base, 2000, NULL, err);
}

static void heartbeat(struct agent *a)
{
    Loom__V1__NodeHeartbeat hb = LOOM__V1__NODE_HEARTBEAT__INIT;
    hb.node = a->o.node_name;
    hb.boot_id = a->boot_id;
    hb.seq = ++a->hb_seq;
    pthread_mutex_lock(&a->mu);
    hb.epoch_seen = a->epoch;
    size_t n = 0;
    for (struct instance *in = a->list; in; in = in->next)
        n++;
    char **ids = calloc(n + 1, sizeof(char *));
    if (!ids)
        abort();
    size_t k = 0;
    for (struct instance *in = a->list; in; in = in->next)
        if (!in->done)
            ids[k++] = strdup(in->id);
    pthread_mutex_unlock(&a->mu);
    hb.instance_ids = ids;
    hb.n_instance_ids = k;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_publish(a->svc->bus, LOOM_SUBJ_NODE_HEARTBEAT, &hb.base, &err) < 0)
        log_debug("heartbeat: %s", err.msg);
    for (size_t i = 0; i < k; i++)
        free(ids[i]);
    free(ids);
}

static bool ensure_usage_stream(struct agent *a)
{
    if (a->stream_ok)
        return true;
    const char *subjects[] = {"loom.usage.>"};
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_js_stream(a->svc->bus, LOOM_STREAM_USAGE, subjects, 1, 7 * 24 * 3600 * 1000LL,
                           &err) < 0) {
        log_warn("usage stream: %s", err.msg);
        return false;
    }
    a->stream_ok = true;
    return true;
}

void agent_publish_usage(struct agent *a, struct instance *in, const struct cgroup_usage *u)
{
    if (!ensure_usage_stream(a))
        return;
    Loom__V1__UsageSample us = LOOM__V1__USAGE_SAMPLE__INIT;
    int64_t now = loom_now_ms();
    pthread_mutex_lock(&a->mu);
    /* the seq is the dedup id and must grow across agent restarts: the wall
     * clock in ms, kept strictly increasing per instance */
    in->usage_seq = (uint64_t)now > in->usage_seq ? (uint64_t)now : in->usage_seq + 1;
    us.seq = in->usage_seq;
    pthread_mutex_unlock(&a->mu);
    us.instance_id = in->id;
    us.node = a->o.node_name;
    us.project = in->assign->project;
    us.ts_unix_ms = now;
    us.interval_ms = a->o.usage_ms;
    us.cpu_usage_ns = u->cpu_ns;
    us.memory_bytes = u->mem_bytes;
    us.memory_peak_bytes = u->mem_peak_bytes;
    us.cpu_millis_alloc = in->assign->cpu_millis;
    us.memory_bytes_alloc = in->assign->memory_bytes;
    us.gpus = in->assign->gpus;
    char subject[256], msgid[128];
    snprintf(subject, sizeof(subject), LOOM_SUBJ_USAGE_FMT, a->o.node_name);
    snprintf(msgid, sizeof(msgid), "%s:%" PRIu64, in->id, us.seq);
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_js_publish(a->svc->bus, subject, &us.base, msgid, NULL, &err) < 0)
        log_warn("usage sample for %s: %s", in->id, err.msg);
}

static void sample_usage(struct agent *a)
{
    if (!ensure_usage_stream(a))
        return;
    /* instances are freed only by retention, on this thread, so the
     * pointers stay valid outside the lock */
    pthread_mutex_lock(&a->mu);
    size_t n = 0;
    for (struct instance *in = a->list; in; in = in->next)
        n++;
    struct instance **v = calloc(n + 1, sizeof(*v));
    pid_t *pids = calloc(n + 1, sizeof(*pids));
    if (!v || !pids)
        abort();
    size_t k = 0;
    for (struct instance *in = a->list; in; in = in->next)
        if (in->running && !in->exited && in->init_pid > 0) {
            pids[k] = in->init_pid;
            v[k++] = in;
        }
    pthread_mutex_unlock(&a->mu);
    for (size_t i = 0; i < k; i++) {
        struct cgroup_usage u;
        struct loom_err err = LOOM_ERR_INIT;
        if (cgroup_usage_of_pid(pids[i], &u, &err) < 0)
            continue; /* exited in between: the final sample comes from exit.json */
        agent_publish_usage(a, v[i], &u);
    }
    free(v);
    free(pids);
}

static void retention(struct agent *a)
{
    int64_t now = loom_now_ms();
    pthread_mutex_lock(&a->mu);
    for (struct instance **pp = &a->list; *pp;) {
        struct instance *in = *pp;
        if (in->done && !in->thread_running && now - in->done_at_ms >= a->o.retention_ms) {
            *pp = in->next;
            struct loom_err err = LOOM_ERR_INIT;
            if (loom_rm_rf(in->dir, &err) < 0)
                log_warn("instance %s: %s", in->id, err.msg);
            else
                log_debug("instance %s: removed after retention", in->id);
            instance_free(in);
            continue;
        }
        pp = &in->next;
    }
    pthread_mutex_unlock(&a->mu);
}

/* Heartbeats, and registering again when the scheduler asks. */
static void *heartbeat_main(void *arg)
{
    struct agent *a = arg;
    int64_t next_hb = 0;
    while (!a->stopping) {
        if (a->reregister) {
            struct loom_err err = LOOM_ERR_INIT;
            a->reregister = false;
            if (do_register(a, &err) < 0) {
                log_warn("register again: %s", err.msg);
                a->reregister = true;
            } else {
                log_info("registered node %s again at the scheduler's request", a->o.node_name);
            }
        }
        int64_t now = loom_mono_ms();
        if (now >= next_hb) {
            heartbeat(a);
            next_hb = now + a->o.hb_ms;
        }
        int64_t wait = next_hb - loom_mono_ms();
        if (wait > 0)
            loom_service_sleep(a->svc, wait > 200 ? 200 : wait);
    }
    return NULL;
}

static void *housekeeping_main(void *arg)
{
    struct agent *a = arg;
    int64_t next_reg = 0;
    while (!a->stopping && !a->registered) {
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_mono_ms() >= next_reg) {
            if (do_register(a, &err) == 0) {
                a->registered = true;
                log_info("registered node %s (%" PRId64 " millicpu, %" PRId64 " bytes, %d gpus)",
                         a->o.node_name, a->o.cpu_millis, a->o.memory_bytes, a->ngpus);
                break;
            }
            log_warn("register: %s", err.msg);
            next_reg = loom_mono_ms() + 1000;
        }
        loom_service_sleep(a->svc, 200);
    }
    /* the heartbeat has its own thread: a usage round waits for a JetStream
     * ack per instance, and a late heartbeat gets the node declared lost */
    if (!a->stopping && pthread_create(&a->heartbeater, NULL, heartbeat_main, a) == 0)
        a->heartbeater_started = true;
    else if (!a->stopping)
        log_error("could not start the heartbeat thread");
    int64_t next_usage = 0, next_ret = 0;
    while (!a->stopping) {
        int64_t now = loom_mono_ms();
        if (now >= next_usage) {
            sample_usage(a);
            next_usage = now + a->o.usage_ms;
        }
        if (now >= next_ret) {
            retention(a);
            next_ret = now + 1000;
        }
        int64_t until = next_ret < next_usage ? next_ret : next_usage;
        int64_t wait = until - loom_mono_ms();
        if (wait > 0)
            loom_service_sleep(a->svc, wait > 1000 ? 1000 : wait);
    }
    return NULL;
}

/* ---- adoption --------------------------------------------------------------- */

static void adopt_all(struct agent *a)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/instances", a->o.state_dir);
    _cleanup_closedir_ DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !valid_id(de->d_name))
            continue;
        _cleanup_free_ char *dir = agent_instance_dir(a->o.state_dir, de->d_name);
        char p[4300];
        snprintf(p, sizeof(p), "%s/instance.json", dir);
        _cleanup_free_ char *text = NULL;
        struct loom_err err = LOOM_ERR_INIT;
        _cleanup_json_ json_t *j = NULL;
        const char *hex = NULL;
        size_t len = 0;
        _cleanup_free_ uint8_t *pb = NULL;
        struct instance *in = NULL;
        if (loom_read_file(p, &text, NULL, &err) < 0 ||
            !(j = loom_json_parse_object(text, strlen(text), &err)) ||
            !(hex = json_string_value(json_object_get(j, "assign"))) ||
            !(pb = agent_unhex(hex, &len)) || !(in = instance_new(a, pb, len))) {
            /* a directory without a usable instance.json was never acked:
             * nothing was started for it */
            log_warn("instance dir %s is unusable, removing it", dir);
            loom_rm_rf(dir, NULL);
            continue;
        }
        in->assigned_mono = loom_mono_ms();
        snprintf(p, sizeof(p), "%s/done", dir);
        struct stat st;
        if (stat(p, &st) == 0) {
            in->done = true;
            in->terminal = true;
            in->done_at_ms = (int64_t)st.st_mtime * 1000;
            in->next = a->list;
            a->list = in;
            continue;
        }
        /* the outbox */
        snprintf(p, sizeof(p), "%s/reports", dir);
        _cleanup_free_ char *rtext = NULL;
        _cleanup_json_ json_t *rj = NULL;
        if (loom_read_file(p, &rtext, NULL, NULL) == 0 &&
            (rj = loom_json_parse_object(rtext, strlen(rtext), NULL))) {
            in->seq = (uint64_t)json_integer_value(json_object_get(rj, "seq"));
            in->terminal = json_is_true(json_object_get(rj, "terminal"));
            json_t *pend = json_object_get(rj, "pending");
            struct report **t = &in->outbox;
            for (size_t i = 0; i < json_array_size(pend); i++) {
                size_t rl;
                uint8_t *rd = agent_unhex(json_string_value(json_array_get(pend, i)), &rl);
                if (!rd)
                    continue;
                struct report *r = calloc(1, sizeof(*r));
                if (!r)
                    abort();
                r->data = rd;
                r->len = rl;
                *t = r;
                t = &r->next;
            }
        }
        in->next = a->list;
        a->list = in;
        log_info("instance %s: adopting after restart", in->id);
        instance_spawn(a, in, true);
    }
}

/* ---- service hooks ------------------------------------------------------------ */

/* Whether every directory above path lets others through (x for others):
 * a container's root is nobody on the host. */
static int walkable_to(const char *path, struct loom_err *err)
{
    _cleanup_free_ char *p = realpath(path, NULL);
    if (!p)
        return loom_err_sys(err, errno, "could not resolve \"%s\"", path);
    for (char *slash = strrchr(p, '/'); slash; slash = strrchr(p, '/')) {
        *slash = 0;
        const char *dir = p[0] ? p : "/";
        struct stat st;
        if (stat(dir, &st) < 0)
            return loom_err_sys(err, errno, "could not stat \"%s\"", dir);
        if (!(st.st_mode & S_IXOTH))
            return loom_err_set(err, LOOM_EUNAVAIL,
                                "\"%s\" (above the state dir) is closed to other users "
                                "(mode %o): a container's root could not reach its rootfs",
                                dir, (unsigned)(st.st_mode & 07777));
        if (!p[0])
            break;
    }
    return 0;
}

/* Decides --userns: the probe runs on the layer cache's file system. Runc's
 * init, as the container's root (an unmapped host id), must walk from / to
 * the rootfs: the state dir and instances/ become 0711 (no listing). */
static int setup_userns(struct agent *a, struct loom_err *err)
{
    const char *mode = a->o.userns;
    if (strcmp(mode, "off") == 0)
        return 0;
    if (strcmp(mode, "auto") != 0 && strcmp(mode, "on") != 0)
        return loom_err_set(err, LOOM_EINVAL, "--userns must be auto, on or off, not \"%s\"", mode);
    if (a->o.userns_base % 65536 != 0)
        return loom_err_set(err, LOOM_EINVAL, "--userns-base must be a multiple of 65536");
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/images/userns-probe", a->o.state_dir);
    struct loom_err perr = LOOM_ERR_INIT;
    if (walkable_to(a->o.state_dir, &perr) < 0 || userns_probe(dir, &perr) < 0) {
        if (strcmp(mode, "on") == 0)
            return loom_err_set(err, LOOM_EUNAVAIL,
                                "user namespaces asked for (--userns on), but: %s", perr.msg);
        log_warn("user namespaces off: %s", perr.msg);
        return 0;
    }
    const char *dirs[] = {a->o.state_dir, "instances"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(dirs); i++) {
        char p[4200];
        if (i == 0)
            snprintf(p, sizeof(p), "%s", dirs[i]);
        else
            snprintf(p, sizeof(p), "%s/%s", a->o.state_dir, dirs[i]);
        if (chmod(p, 0711) < 0)
            return loom_err_sys(err, errno, "could not open \"%s\" to user namespaces", p);
    }
    a->userns = true;
    log_info("user namespaces on: each project's containers get 65536 host ids from %s",
             a->o.userns_ranges);
    return 0;
}

int agent_start(struct loom_service *svc, struct loom_err *err)
{
    struct agent *a = &g_agent;
    a->svc = svc;
    if (!a->o.state_dir || !a->o.state_dir[0])
        return loom_err_set(err, LOOM_EINVAL, "--state-dir (LOOM_AGENT_STATE_DIR) is required");
    if (!a->o.node_name || !a->o.node_name[0]) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        free(a->o.node_name);
        a->o.node_name = strdup(host);
    }
    if (!a->o.cgroup_parent || !a->o.cgroup_parent[0]) {
        free(a->o.cgroup_parent);
        if (asprintf(&a->o.cgroup_parent, "loom-%s", a->o.node_name) < 0)
            abort();
    }
    if (strchr(a->o.cgroup_parent, '/') || a->o.cgroup_parent[0] == '.')
        return loom_err_set(err, LOOM_EINVAL, "--cgroup-parent must be a single relative name");
    if (a->o.runtime[0] != '/') {
        /* runc is exec'd by path from threads: resolve it once */
        const char *dirs[] = {"/usr/sbin", "/usr/bin",       "/sbin",
                              "/bin",      "/usr/local/bin", "/usr/local/sbin"};
        for (size_t i = 0; i < LOOM_ARRAY_SIZE(dirs); i++) {
            char p[512];
            snprintf(p, sizeof(p), "%s/%s", dirs[i], a->o.runtime);
            if (access(p, X_OK) == 0) {
                free(a->o.runtime);
                a->o.runtime = strdup(p);
                break;
            }
        }
        if (a->o.runtime[0] != '/')
            return loom_err_set(err, LOOM_EINVAL, "runtime \"%s\" not found", a->o.runtime);
    }
    const char *subdirs[] = {"instances", "runc", "cni", "netns", "images"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(subdirs); i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", a->o.state_dir, subdirs[i]);
        if (loom_mkdir_p(p, 0700, err) < 0)
            return -1;
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &ca);
    pthread_cond_init(&a->report_cond, &ca);
    pthread_condattr_destroy(&ca);

    char p[4200];
    snprintf(p, sizeof(p), "%s/epoch", a->o.state_dir);
    _cleanup_free_ char *et = NULL;
    if (loom_read_file(p, &et, NULL, NULL) == 0)
        a->epoch = strtoll(et, NULL, 10);
    loom_uuid4(a->boot_id);
    detect_inventory(a);
    a->cni_conf = cni_bridge_config(a->o.node_name, a->o.bridge, a->o.subnet, a->o.state_dir);

    snprintf(p, sizeof(p), "%s/images", a->o.state_dir);
    struct image_store_opts io = {
        .dir = p, .max_bytes = a->o.image_cache_size, .insecure_hosts = a->o.insecure};
    if (image_store_open(&io, &a->images, err) < 0)
        return loom_err_wrap(err, "image store");
    if (setup_userns(a, err) < 0)
        return -1;

    static const double buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120};
    a->m_running = loom_metric_gauge("loom_agent_instances_running", NULL,
                                     "instances whose process is running");
    a->m_start = loom_metric_histogram("loom_agent_start_latency_seconds", NULL,
                                       "assign received to container process running", buckets,
                                       LOOM_ARRAY_SIZE(buckets));
    a->m_pulls = loom_metric_counter("loom_agent_image_gets_total", "result=\"ok\"",
                                     "image store gets (pulls or cache hits)");
    a->m_pull_fail = loom_metric_counter("loom_agent_image_gets_total", "result=\"error\"",
                                         "image store gets (pulls or cache hits)");
    a->m_pull_secs = loom_metric_histogram("loom_agent_image_get_seconds", NULL,
                                           "time to get an image (pull + unpack, or cached)",
                                           buckets, LOOM_ARRAY_SIZE(buckets));

    pthread_mutex_lock(&a->mu);
    adopt_all(a);
    pthread_mutex_unlock(&a->mu);
    instance_prepare(a);

    char subj[256];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_ASSIGN_FMT, a->o.node_name);
    if (loom_bus_subscribe(svc->bus, subj, NULL, on_assign, a, err) < 0)
        return -1;
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_STOP_FMT, a->o.node_name);
    if (loom_bus_subscribe(svc->bus, subj, NULL, on_stop, a, err) < 0)
        return -1;
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_REREGISTER_FMT, a->o.node_name);
    if (loom_bus_subscribe(svc->bus, subj, NULL, on_reregister, a, err) < 0)
        return -1;
    if (pthread_create(&a->reporter, NULL, reporter_main, a) != 0 ||
        pthread_create(&a->housekeeping, NULL, housekeeping_main, a) != 0)
        return loom_err_set(err, LOOM_EINTERNAL, "could not start threads");
    log_info("agent %s: state %s, bridge %s, subnet %s, cgroup parent %s", a->o.node_name,
             a->o.state_dir, a->o.bridge, a->o.subnet, a->o.cgroup_parent);
    return 0;
}

void agent_tick(struct loom_service *svc)
{
    (void)svc;
    struct agent *a = &g_agent;
    int running = 0;
    pthread_mutex_lock(&a->mu);
    for (struct instance *in = a->list; in; in = in->next)
        if (in->running && !in->exited)
            running++;
    pthread_mutex_unlock(&a->mu);
    if (a->m_running)
        loom_metric_set(a->m_running, running);
}

bool agent_ready(struct loom_service *svc)
{
    (void)svc;
    return g_agent.registered;
}

void agent_stop(struct loom_service *svc)
{
    (void)svc;
    struct agent *a = &g_agent;
    /* containers and shims keep running: the next agent adopts them */
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    pthread_cond_broadcast(&a->cond);
    pthread_cond_broadcast(&a->report_cond);
    pthread_mutex_unlock(&a->mu);
    loom_service_wake(svc);
    pthread_join(a->reporter, NULL);
    pthread_join(a->housekeeping, NULL);
    if (a->heartbeater_started)
        pthread_join(a->heartbeater, NULL);
    /* instance threads notice `stopping` within 100 ms; setup threads in the
     * middle of a pull are left to die with the process (adoption cleans
     * half-set-up instances) */
    for (int i = 0; i < 30; i++) {
        bool any = false;
        pthread_mutex_lock(&a->mu);
        for (struct instance *in = a->list; in; in = in->next)
            if (in->thread_running && !in->in_setup)
                any = true;
        pthread_mutex_unlock(&a->mu);
        if (!any)
            break;
        usleep(50000);
    }
}
