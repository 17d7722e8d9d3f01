/* Shared state of the agent's files: agent.c (options, start, stop),
 * state.c, commands.c, report.c, node.c, usage.c, inventory.c, adopt.c and
 * instance.c. */
#ifndef LOOM_AGENT_AGENT_INT_H
#define LOOM_AGENT_AGENT_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent.h"
#include "image.h"
#include "metrics.h"

#define AGENT_MAX_GPUS 64
#define AGENT_HEALTH_MAX 1024 /* what the health checks found, at most */

/* protoc-c keeps the proto's enum prefixes; shorter names for this code */
#define ST_PULLING LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_PULLING
#define ST_STARTING LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_STARTING
#define ST_RUNNING LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_RUNNING
#define ST_SUCCEEDED LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_SUCCEEDED
#define ST_FAILED LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_FAILED
#define ST_STOPPED LOOM__V1__INSTANCE_STATE__INSTANCE_STATE_STOPPED
#define KIND_APP LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_APP
#define KIND_FUNCTION LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_FUNCTION

struct report {
    uint64_t seq;
    uint8_t *data; /* packed InstanceReport */
    size_t len;
    struct report *next;
};

struct instance {
    char id[72];
    char *dir;
    Loom__V1__InstanceAssign *assign;
    uint8_t *assign_pb;
    size_t assign_len;
    int64_t assigned_mono;
    /* reports (under agent.mu) */
    uint64_t seq;
    bool terminal;
    struct report *outbox;
    /* process */
    pid_t shim_pid, init_pid;
    bool shim_child;
    bool running, exited;
    char ip[64];
    uint64_t gpu_mask;
    uint32_t uid_base; /* the project's first host id; 0: no user namespace */
    /* a function instance assigned without a project (a stem cell) belongs
     * to the project that claimed it once specialized (under agent.mu) */
    char claimed_project[72];
    /* where the last usage sample ended (under agent.usage_mu) */
    struct usage_cursor usage;
    bool usage_ready;
    /* stop request */
    bool stop_requested;
    int64_t stop_grace_ms;
    char stop_reason[256];
    /* thread */
    bool thread_running, in_setup;
    bool done;
    int64_t done_at_ms;
    struct image *img;
    struct instance *next;
};

struct agent_gpu {
    char id[64], model[128], path[128];
};

struct agent {
    struct {
        char *node_name, *node_address, *state_dir, *subnet, *bridge, *cgroup_parent, *runtime,
            *cni_path, *insecure, *labels, *gpus, *userns, *userns_ranges;
        int64_t userns_base, image_cache_size, cpu_millis, memory_bytes, usage_ms, hb_ms,
            retention_ms, usage_resend_ms, log_rate, log_burst, log_max_disk, health_ms,
            health_min_disk_pct, health_min_memory_pct;
        char *health_script;
    } o;
    struct loom_service *svc;
    pthread_mutex_t mu;
    pthread_cond_t cond;        /* instance changes (stop requests, acks) */
    pthread_cond_t report_cond; /* wakes the reporter */
    bool report_kick;
    struct instance *list;
    int64_t epoch;
    char boot_id[37];
    int64_t disk_bytes;
    struct agent_gpu gpus[AGENT_MAX_GPUS];
    int ngpus;
    bool gpus_detected;            /* found on the host, not configured */
    char health[AGENT_HEALTH_MAX]; /* health.c: "" or what is wrong (under mu) */
    uint64_t gpus_held;
    bool userns; /* containers run in user namespaces (--userns) */
    char *cni_conf;
    struct image_store *images;
    volatile bool stopping, registered;
    volatile bool reregister; /* the scheduler asked for a new NodeRegister */
    bool stream_ok;
    /* usage: the outbox, its sender, and the lock that orders each
     * instance's samples (a round and the final one) */
    struct usage_outbox *outbox;
    pthread_mutex_t usage_mu, usage_wake_mu;
    pthread_cond_t usage_wake;
    pthread_t usage_sender;
    bool usage_sender_started;
    uint64_t hb_seq;
    /* the node lease (node.c): armed by the first NodeLease, or by the
     * previous agent's from <state>/lease; job instances stop when it runs
     * out (under mu) */
    bool lease_armed, lease_out;
    int64_t lease_until; /* monotonic ms */
    struct loom_metric *m_lease_out;
    pthread_t reporter, housekeeping, heartbeater;
    bool heartbeater_started;
    struct loom_metric *m_running, *m_start, *m_pulls, *m_pull_fail, *m_pull_secs;
};

struct report_extra {
    int32_t exit_code;
    const char *reason, *address;
    bool oom_killed, timed_out, permanent;
    const char *output_digest, *output_diff_id; /* a build step's layer, or NULL */
    int64_t output_size;
};

/* ---- output.c: a build step's output ---------------------------------------------- */

/* Packs directory path of the root filesystem at rootfs (resolved inside it:
 * no link leads out) as a layer in tmp_dir and pushes it to repository
 * (auth: "user:password" or NULL); *ret describes it. */
struct loom_layer_info;
int agent_push_output(const char *rootfs, const char *path, const char *repository,
                      const char *auth, const char *tmp_dir, struct loom_layer_info *ret,
                      struct loom_err *err);

/* ---- state.c ---------------------------------------------------------------- */

/* Instance ids are UUIDs; they become paths and runc ids. */
bool agent_valid_id(const char *id);
/* A new instance for a packed InstanceAssign (copied); NULL when it does not
 * unpack. */
struct instance *agent_instance_new(struct agent *a, const uint8_t *pb, size_t len);
/* The instance's instance.json (identity and the assign, to re-adopt). */
int agent_write_instance_json(struct agent *a, struct instance *in, struct loom_err *err);
/* An ended instance's secrets leave the node: its assign (here and in
 * instance.json) loses the env's values, the registry password and the
 * mounts' file contents (teardown removes config.json and the mount files). */
void agent_scrub_assign(struct agent *a, struct instance *in);

/* ---- commands.c --------------------------------------------------------------- */

/* Subscribes to this node's assign, stop and register-again subjects. */
int agent_subscribe_commands(struct agent *a, struct loom_err *err);

/* "job", "app", "function": for logs and instance.json. */
const char *agent_kind_name(int kind);

/* specialize.c: function instances */
/* Whose network and host ids an instance uses: its project, or for a stem
 * cell (a function instance with none) "stem-<id>", shared with nobody.
 * claimed: the project that claimed a stem cell wins (its network); the
 * user namespace of a stem cell stays its own. */
const char *instance_tenant(const struct instance *in, bool claimed, char *buf, size_t n);
/* The project an instance's work belongs to now ("" for an idle stem cell). */
const char *instance_project(const struct instance *in);
int agent_subscribe_specialize(struct agent *a, struct loom_err *err);

/* ---- report.c ----------------------------------------------------------------- */

/* The reporter thread: sends the head of every outbox. */
void *agent_reporter_main(void *arg);
/* Queues a report (persisted) and wakes the reporter. Not under a->mu. */
void agent_report(struct agent *a, struct instance *in, Loom__V1__InstanceState state,
                  const struct report_extra *x);
/* Under a->mu. */
int agent_persist_reports(struct agent *a, struct instance *in);
void agent_kick_reporter(struct agent *a);
struct instance *agent_find(struct agent *a, const char *id);

/* ---- node.c, usage.c, inventory.c, adopt.c -------------------------------------- */

/* The previous agent's node lease, from <state>/lease: it still binds the
 * instances this one adopts. */
void agent_lease_load(struct agent *a);
/* The housekeeping thread: registers, starts the heartbeat thread, then runs
 * usage rounds and retention until a->stopping. */
void *agent_housekeeping_main(void *arg);
/* usage.c: opens the outbox (<state>/usage-outbox) and subscribes to this
 * node's commit notices. */
int agent_usage_open(struct agent *a, struct loom_err *err);
/* The sender thread: the outbox's due samples to JetStream. */
void *agent_usage_sender_main(void *arg);
/* The container is about to start: a cursor from now and a counter of 0 on
 * disk, so that an agent that dies before agent_usage_start leaves its
 * successor the whole of the container's counter to meter. */
void agent_usage_prepare(struct instance *in);
/* The container started: its first sample covers the time from now and
 * the cgroup's counter from 0. */
void agent_usage_start(struct agent *a, struct instance *in);
/* An instance adopted after a restart: its cursor from usage.json, or from
 * the outbox's newest sample of it when that is further. */
void agent_usage_adopt(struct agent *a, struct instance *in);
/* A stem cell claimed for a project: metered from now. */
void agent_usage_claimed(struct agent *a, struct instance *in);
/* The instance's last sample, from the shim's exit.json (once). */
void agent_usage_final(struct agent *a, struct instance *in, json_t *exit_json);
/* One usage round: a sample of every running instance into the outbox. */
void agent_sample_usage(struct agent *a);

/* health.c: runs the node's health checks into a->health. */
void agent_health_check(struct agent *a);

/* Fills in cpu, memory, disk and GPUs where the options leave them to detect. */
void agent_detect_inventory(struct agent *a);
/* Under a->mu: takes over the instances of the state directory. */
void agent_adopt_all(struct agent *a);

/* ---- instance.c ------------------------------------------------------------------ */

/* Under a->mu: starts the instance's thread (adopt: after an
 * agent restart). */
void instance_spawn(struct agent *a, struct instance *in, bool adopt);
/* Fills the network namespace pool and starts a warm shim, ahead of the
 * first start. */
void instance_prepare(struct agent *a);
void instance_free(struct instance *in);

#endif
