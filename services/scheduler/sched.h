/* loom-scheduler: leader election, placement of job indices and app instances,
 * node registration and liveness, instance reports.
 *
 * Any replica answers node registrations, heartbeats, instance reports and
 * scale decisions (plain data updates, idempotent). Only the replica that
 * holds the 'scheduler' lease places, stops and resends, and every placement
 * transaction re-checks the lease with FOR SHARE, so a deposed leader commits
 * nothing. */
#ifndef LOOM_SCHED_H
#define LOOM_SCHED_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arrayspec.h"
#include "err.h"
#include "instance_state.h"
#include "metrics.h"
#include "service.h"
#include "spec.h"
#include "strbuf.h"

/* scheduler -> agent <node>, publish (empty): the scheduler does not know the
 * node (its heartbeat matched no row); the agent sends NodeRegister again.
 * (Addition to common/subjects.h, kept here until the lead moves it.) */

/* Longest wait before an index's retry (the backoff doubles up to it). */
#define SCHED_BACKOFF_MAX_MS 60000
#define SCHED_BACKOFF_MAX_MS_STR "60000"
/* most reports one loom.instance.reports message may carry */
#define SCHED_REPORTS_MAX 1000

/* Most members of one gang (scale_nodes). */
#define SCHED_GANG_MAX 1000
/* The port a function runtime's proxy listens on. */
#define SCHED_FUNCTION_PORT 8080
/* The port rank 0 of a gang is told to listen on (MASTER_PORT). */
#define SCHED_GANG_MASTER_PORT 29500

/* --- resources and choices (place.c): pure functions ------------------------ */

struct json_t;

struct sched_node {
    char *name;
    int64_t cpu_total, mem_total;
    int64_t cpu_used, mem_used;
    int32_t gpus_total, gpus_used;
    char *gpu_model;       /* model of the node's GPUs, or NULL */
    int64_t disk_total;    /* 0: the node did not say; ephemeral storage is not fitted */
    int64_t disk_used;     /* ephemeral storage its live instances ask for */
    struct json_t *labels; /* {"k": "v"} from NodeRegister.labels, or NULL */
};

struct sched_request {
    int64_t cpu_millis;
    int64_t memory_bytes;
    int32_t gpus;
    const char *gpu_model;         /* NULL or "": any */
    int64_t ephemeral_bytes;       /* 0: none */
    const struct json_t *selector; /* node_selector {"k": "v"}: every pair must match, or NULL */
    bool spread;                   /* placement "spread": least allocated node first */
    const uint8_t *exclude;        /* a byte per node: 1 skips it (a gang's own), or NULL */
};

bool sched_node_fits(const struct sched_node *n, const struct sched_request *r);
/* Whether the node's labels hold every pair of selector (NULL: yes). */
bool sched_labels_match(const struct json_t *labels, const struct json_t *selector);

/* Picks a node for r: looks at `sample` random candidates (at least 2) and
 * takes the fitting one that is most allocated (bin packing; with r->spread
 * the least allocated); when none of
 * them fits, scans every node from a random start and takes the first that
 * fits. Returns the index or -1 when nothing fits. *rng is the state of a
 * xorshift generator (non-zero). Does not change the nodes. */
long sched_choose_node(const struct sched_node *nodes, size_t n, const struct sched_request *r,
                       size_t sample, uint64_t *rng);
/* How many candidates to look at among n nodes: ceil(log2 n), but at
 * least min(n, 8) and at least 2. */
size_t sched_sample_size(size_t n);

/* Writes the lowest min(max, count) indices of pending into out (ascending)
 * and returns how many. */
size_t sched_take_indices(const struct loom_arrayspec *pending, size_t max, int32_t *out);
/* An int4multirange literal for ascending indices ("{[0,3),[7,8)}"). */
void sched_indices_multirange(const int32_t *idx, size_t n, struct strbuf *out);
/* Adds one element to a PostgreSQL array literal being built in sb ("{" is
 * written before the first; finish with sched_pg_array_end). */
void sched_pg_array_add(struct strbuf *sb, const char *elem);
void sched_pg_array_end(struct strbuf *sb);
/* Adds an SQL NULL element. */
void sched_pg_array_add_null(struct strbuf *sb);

/* "no node fits cpu=2000m memory=4G gpus=1" */
void sched_describe_request(const struct sched_request *r, char *buf, size_t len);

/* True for a node name we accept: 1-253 of [a-zA-Z0-9_-], starting with an
 * alphanumeric (it is one token of NATS subjects, so no dots). */
bool sched_valid_node_name(const char *s);

/* The nodes the leader places on, loaded on first use and again once older
 * than SCHED_POOL_MAX_AGE_MS; placements take capacity from it in memory.
 * Only the leader takes capacity, so a pool that has not yet seen capacity
 * freed by reports is merely cautious. */
#define SCHED_POOL_MAX_AGE_MS 1000
/* A pool that ran short is reloaded sooner, once capacity came free. */
#define SCHED_POOL_MIN_AGE_MS 20
struct sched_pool {
    struct sched_node *nodes;
    size_t n;
    bool loaded;
    bool ran_short; /* something did not fit since the load */
    int64_t loaded_mono;
};
/* --- the service ----------------------------------------------------------- */

struct sched_ack_list {
    pthread_mutex_t mu;
    char **ids;
    size_t n, alloc;
    bool stale; /* an agent answered stale_epoch */
};

struct sched_hb_entry {
    char *node;
    char *boot_id;
    char *instance_ids; /* PostgreSQL uuid[] literal of the ids it holds */
    char *reply;        /* where its NodeLease goes, or NULL */
    char *health;       /* what its health checks found, "" when healthy */
};

struct sched {
    struct loom_service *svc;
    /* options */
    int64_t lease_ttl_ms;
    int64_t renew_ms;
    int64_t node_timeout_ms;
    int64_t health_settle_ms; /* healthy this long: a node its checks drained is ready */
    int64_t batch_max;        /* instances per placement transaction */
    int64_t resend_ms;        /* assign / stop resend period */
    int64_t retry_backoff_ms; /* first retry delay of a failed index; doubles */
    int64_t stem_cells;       /* idle instances per ready node and function runtime */
    char holder[160];         /* this replica's identity in the lease row */
    char *secrets_key;        /* LOOM_SECRETS_KEY: opens secrets for env and mounts */

    /* lease state, written by the lease thread */
    pthread_mutex_t lease_mu;
    pthread_cond_t lease_cond;
    bool leader;
    int64_t epoch;
    int64_t deadline_mono; /* leadership is void past this (local monotonic ms) */
    int64_t leader_since_mono;
    bool threads_stop;
    bool release_on_stop;
    pthread_t lease_thread;
    pthread_t hb_thread;
    bool lease_thread_started, hb_thread_started;

    /* the main loop's view */
    int64_t loop_epoch; /* epoch the loop last rebuilt for */
    struct sched_pool pool;
    atomic_bool capacity_freed; /* set by reports and registrations */
    atomic_bool nodes_changed;  /* a cordon, drain or uncordon: reload the pool now */
    int64_t last_resend_mono;
    uint64_t rng;

    /* heartbeat batch (any replica) */
    pthread_mutex_t hb_mu;
    struct sched_hb_entry *hb;
    size_t nhb, hb_alloc;

    /* acks of assigns sent with our inbox as reply subject */
    char inbox[96]; /* "_INBOX.loomsched.<random>" */
    struct sched_ack_list acks;

    /* metrics */
    struct loom_metric *m_placements, *m_batch_latency, *m_leader, *m_epoch, *m_reports,
        *m_nodes_lost, *m_resends;
};

/* lease.c */
int sched_lease_start(struct sched *s, struct loom_err *err);
void sched_lease_stop(struct sched *s); /* releases the lease when held */
/* True while this replica leads; *ret_epoch is the fencing token. */
bool sched_lease_current(struct sched *s, int64_t *ret_epoch);
/* Asks the lease thread to check the lease now (after a stale_epoch ack). */
void sched_lease_poke(struct sched *s);
/* In an open transaction: locks the lease row FOR SHARE and fails
 * (LOOM_ECONFLICT) unless we still hold it with epoch. */
int sched_lease_check_tx(struct sched *s, struct loom_db *db, int64_t epoch, struct loom_err *err);

/* nodes.c */
int sched_nodes_subscribe(struct sched *s, struct loom_err *err);
int sched_heartbeats_start(struct sched *s, struct loom_err *err);
void sched_heartbeats_stop(struct sched *s);
/* How long after sending a heartbeat that a replica recorded a node is
 * sure not to be declared lost: the lease its agent gets (nodes.c). */
int64_t sched_node_lease_ms(const struct sched *s);
/* Leader: ready nodes silent past node_timeout become lost; their live
 * instances become lost and their job indices pending again (no retry used).
 * With sweep, also live instances left on nodes already lost. */
int sched_nodes_check_liveness(struct sched *s, struct loom_db *db, int64_t epoch, bool sweep,
                               struct loom_err *err);
/* Nodes that can take work, with the capacity their live instances use. */
int sched_nodes_load(struct sched *s, struct loom_db *db, struct sched_node **ret, size_t *ret_n,
                     struct loom_err *err);
void sched_nodes_free(struct sched_node *nodes, size_t n);

int sched_pool_get(struct sched *s, struct loom_db *db, struct sched_pool *pool,
                   struct loom_err *err);
void sched_pool_release(struct sched_pool *pool);

/* reports.c */
int sched_reports_subscribe(struct sched *s, struct loom_err *err);
/* Ends run_id (completed, or failed when an index failed) once every index
 * has settled; in the caller's transaction. */
int sched_run_finish_if_settled(struct loom_db *db, const char *run_id, struct loom_err *err);
/* Wakes the leader's loop: locally when we lead, else on loom.sched.wake. */
void sched_wake_leader(struct sched *s);
/* Records instance_id as failed for good (no retry of its job index), as an
 * agent's permanent failure report would: for an instance that cannot be
 * assigned (a secret, config map or key it names is missing). */
int sched_fail_instance(struct sched *s, struct loom_db *db, const char *instance_id,
                        const char *reason, struct loom_err *err);

/* assign.c: the InstanceAssign of one instance, built without I/O */

/* What a spec's references resolve to, read once per run or app in one
 * sched_send_assigns call (never kept longer: secrets and config maps change
 * under us). */
struct sched_assign_refs {
    struct json_t *env;    /* [[name, value], ...] in the spec's order */
    struct json_t *mounts; /* [{"path": P, "files": {name: data}, "secret": b}, ...] */
    char *auth;            /* "user:password" or NULL */
    char why[512];         /* set: the instance cannot run, for this reason */
};
void sched_assign_refs_release(struct sched_assign_refs *r);

/* One instance to assign, as the assign query reads it. */
struct sched_assign_row {
    const char *id, *node, *project;
    bool job;
    int64_t cpu_millis, memory_bytes, ephemeral_bytes, gpus;
    int32_t retry;
    /* jobs */
    const char *job_run;
    int32_t array_index;
    int64_t array_size, retry_limit;
    const char *rank;   /* a gang member's rank, or NULL */
    const char *master; /* the address of rank 0's node, or NULL */
    /* apps */
    const char *app;
    int64_t generation;
    /* functions: the runtime's image (a stem cell has no spec of its own) */
    bool function;
    const char *runtime, *runtime_image;
    /* a build step: the directory the agent pushes once it exits 0, where,
     * and whether buildah may make namespaces of its own */
    const char *output_path, *output_repo;
    bool output_nested;
};

/* The message and the storage it points into. */
struct sched_assign {
    struct Loom__V1__InstanceAssign *msg;
    void *storage; /* owned */
};
/* Builds the InstanceAssign of row (pure): the image, command and limits of
 * spec, the resolved env and mounts of refs (every variable the user gave,
 * then Loom's: JOB_INDEX..., PORT..., which win when a name repeats), and
 * the probes. A function instance (a stem cell) has no spec (NULL) and no
 * refs: its runtime's image, port 8080 and a readiness probe on /health.
 * The message points into row, spec and refs, which must outlive it. */
void sched_assign_build(const struct sched_assign_row *row, const struct loom_spec *spec,
                        const struct sched_assign_refs *refs, int64_t epoch,
                        struct sched_assign *ret);
void sched_assign_release(struct sched_assign *a);

/* dispatch.c: telling agents */
int sched_dispatch_init(struct sched *s, struct loom_err *err);
/* Sends InstanceAssign for instance ids (rows already committed). */
void sched_send_assigns(struct sched *s, struct loom_db *db, int64_t epoch, const char *ids_array);
/* grace_seconds between SIGTERM and SIGKILL: SCHED_STOP_GRACE_S, and less
 * for a function instance, which no call uses any more when it is stopped */
#define SCHED_STOP_GRACE_S 10
#define SCHED_FUNCTION_STOP_GRACE_S 2
void sched_send_stop(struct sched *s, const char *node, const char *instance_id, int64_t epoch,
                     const char *reason, int grace_seconds);
/* Marks acked instances; called by the main loop. */
void sched_flush_acks(struct sched *s, struct loom_db *db);
/* Leader: resend unacked assigns and pending stops older than resend_ms. */
int sched_resend(struct sched *s, struct loom_db *db, int64_t epoch, struct loom_err *err);

/* jobs.c */
/* The resources one instance asks for: the integers from the row's
 * normalised columns (cpu_millis, memory_bytes, ephemeral_bytes, gpus), the
 * GPU model, node selector and placement from its decoded spec. */
void sched_request_init(struct sched_request *r, const struct loom_spec *spec, int64_t cpu_millis,
                        int64_t memory_bytes, int64_t ephemeral_bytes, int64_t gpus);
/* A project's quota and what its live instances hold (-1: no limit). */
struct sched_quota {
    int64_t project_id;
    int64_t cpu, mem, gpus, inst;
    int64_t cpu_used, mem_used, gpus_used, inst_used;
};
/* How many instances of req the quota still has room for; names the
 * exhausted resource in why ("quota: ...") when none. */
size_t sched_quota_room(const struct sched_quota *q, const struct sched_request *req, char *why,
                        size_t why_len);
/* One job run to place, as its row says. */
struct sched_run {
    struct loom_arrayspec pending;
    int64_t parallelism, n_running;
    int64_t members; /* a gang's size; 1: no gang */
    struct sched_request req;
    bool gang_expired;      /* its next gang waited past gang_timeout */
    int64_t gang_timeout_s; /* for the reason when it did */
};
/* What to do with it. */
struct sched_run_plan {
    int32_t *idx;     /* the indices to start, ascending */
    size_t n;         /* how many */
    size_t wanted;    /* how many it tried */
    long *nodes;      /* n * members node indices: index i's members at [i * members] */
    char why[256];    /* why it started fewer than it wanted (quota, no node fits) */
    bool capped;      /* parallelism holds back the rest */
    bool gang_failed; /* no gang placed and the wait is over: fail idx[0] */
};
/* Plans a run (pure): at most budget instances of its lowest pending
 * indices, within its parallelism and the quota q (NULL: none), each index
 * on nodes that fit (a gang all on distinct nodes, or not at all), taking
 * their capacity from nodes. */
void sched_plan_run(const struct sched_run *run, struct sched_node *nodes, size_t nnodes,
                    size_t budget, const struct sched_quota *q, uint64_t *rng,
                    struct sched_run_plan *ret);
void sched_run_plan_release(struct sched_run_plan *p);

/* The quota of a project and its use now; *ret_found false: no quota. */
int sched_quota_load(struct loom_db *db, const char *project_id, struct sched_quota *ret,
                     bool *ret_found, struct loom_err *err);
/* Leader: places pending indices of active runs; *ret_placed counts them. */
int sched_jobs_place(struct sched *s, struct loom_db *db, int64_t epoch, struct sched_pool *pool,
                     size_t *ret_placed, struct loom_err *err);
/* Leader: stops live instances of cancelled runs. */
int sched_jobs_stop_cancelled(struct sched *s, struct loom_db *db, int64_t epoch,
                              struct loom_err *err);
/* Leader: indices whose retry backoff has passed go back into their run's
 * pending ranges; *ret_moved counts them. */
int sched_jobs_promote_backoffs(struct loom_db *db, size_t *ret_moved, struct loom_err *err);
/* Whether any active run has pending indices and headroom. */
int sched_jobs_have_work(struct loom_db *db, bool *ret, struct loom_err *err);

/* apps.c */
int sched_apps_subscribe(struct sched *s, struct loom_err *err);
int sched_apps_reconcile(struct sched *s, struct loom_db *db, int64_t epoch,
                         struct sched_pool *pool, size_t *ret_placed, struct loom_err *err);

/* functions.c */
/* Leader: refills each ready node's stem cells of each runtime and sends
 * the stops of function instances marked to stop. */
int sched_functions_reconcile(struct sched *s, struct loom_db *db, int64_t epoch,
                              struct sched_pool *pool, struct loom_err *err);

/* loop.c */
int sched_start(struct loom_service *svc, struct loom_err *err);
void sched_tick(struct loom_service *svc);
void sched_stop(struct loom_service *svc);
bool sched_ready(struct loom_service *svc);

#endif
