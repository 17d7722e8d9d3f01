/* loom-agent internals: the node agent's state, the per-instance lifecycle,
 * and the helpers it is built from (OCI bundle, CNI, cgroups, shim).
 *
 * State directory layout (--state-dir):
 *   epoch                      highest scheduler epoch accepted
 *   images/                    the image store (image.h)
 *   runc/                      runc --root
 *   usage-outbox/<id>          usage samples not yet committed by metering (outbox.c)
 *   cni/                       host-local IPAM data
 *   netns/<id>                 network namespace bind mounts (<id>: an instance, or
 *                              pool-<uuid> for one made ahead by the pool)
 *   netpool/pool-<uuid>.json   a ready pooled namespace {"cni_id","ip","conf"}
 *                              (.pending while CNI ADD runs)
 *   instances/<id>/            per instance:
 *     instance.json            identity + the assign (hex protobuf) to re-adopt
 *     reports                  report outbox {"seq","terminal","pending":[hex]}
 *     shim.json                what the shim needs (runtime, root, limits)
 *     shim.pid                 the shim's pid
 *     cni.json                 the CNI network config used (DEL needs it)
 *     net.json                 {"ip","mark"} once networking is up, plus
 *                              "cni_id","conf" when the namespace came from the pool
 *     config.json rootfs/      the OCI bundle; scratch/ holds upper/ and work/
 *     mounts/<n>/              the files of the assign's n-th mount (secrets,
 *                              config maps), bound read-only; removed at teardown
 *     container.log            CRI-format stdout/stderr (the shim writes it)
 *     usage.json               the usage cursor {"seq","ts","cpu","final"}: where the
 *                              last sample put in the outbox ended
 *     exit.json                {"exit_code","oom_killed","timed_out","finished_at",
 *                              "cpu_usage_ns","memory_peak_bytes"}
 *     done                     terminal report acknowledged and resources freed */
#ifndef LOOM_AGENT_AGENT_H
#define LOOM_AGENT_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "config.h"
#include "proc.h"
#include "err.h"
#include "loom/v1/instance.pb-c.h"
#include "loom/v1/usage.pb-c.h"

/* ---- outbox.c: the durable usage outbox -----------------------------------
 * One file per sample in a directory, named by the sample's id
 * "<instance>:<seq>" (its Nats-Msg-Id), written (fsync of the file, rename,
 * fsync of the directory) before it is first sent and removed when metering
 * says the sample is committed: neither a NATS outage, an agent restart nor
 * a reboot loses one. Samples are sent in the order they were put, sent
 * again while no commit notice comes (after resend_ms, then later each
 * time), and retried with backoff while sending fails. Thread-safe. */

#define USAGE_OUTBOX_ID_MAX 96

struct usage_outbox;
struct usage_outbox_entry {
    char id[USAGE_OUTBOX_ID_MAX];
    uint8_t *data; /* the packed sample (a copy: usage_outbox_entry_release) */
    size_t len;
    int attempts; /* sends JetStream acknowledged before */
};

/* Opens dir (made when missing) and loads the samples there, all due now. */
int usage_outbox_open(const char *dir, struct usage_outbox **ret, struct loom_err *err);
void usage_outbox_free(struct usage_outbox *ob); /* accepts NULL */
/* Writes a sample durably and queues it, due at now_ms. */
int usage_outbox_put(struct usage_outbox *ob, const char *id, const uint8_t *data, size_t len,
                     int64_t now_ms, struct loom_err *err);
/* Drops a sample (committed or refused by metering); false if it was not there. */
bool usage_outbox_done(struct usage_outbox *ob, const char *id);
/* The sample due first, if it is due at now_ms. */
bool usage_outbox_next_due(struct usage_outbox *ob, int64_t now_ms, struct usage_outbox_entry *ret);
void usage_outbox_entry_release(struct usage_outbox_entry *e);
/* After a send: ok (JetStream acknowledged it) makes it due again after
 * resend_ms times 2^attempts (at most 16 times); a failure, after 1 s
 * doubling up to 30 s. */
void usage_outbox_sent(struct usage_outbox *ob, const char *id, bool ok, int64_t now_ms,
                       int64_t resend_ms);
size_t usage_outbox_count(struct usage_outbox *ob);
/* When the first sample is due (INT64_MAX when there is none). */
int64_t usage_outbox_next_due_ms(struct usage_outbox *ob);
/* The instance's sample with the highest seq still held (a copy of its
 * packed data), for an agent that crashed between putting a sample and
 * moving the instance's cursor. */
bool usage_outbox_last(struct usage_outbox *ob, const char *instance, uint64_t *ret_seq,
                       uint8_t **ret_data, size_t *ret_len);

/* ---- usage.c: the samples of an instance ------------------------------------ */

/* Where an instance's last sample ended: the next covers (ts_ms, now]. */
struct usage_cursor {
    uint64_t seq;    /* of the last sample (0: none yet) */
    int64_t ts_ms;   /* its end (at first: the container's start) */
    uint64_t cpu_ns; /* the cgroup's counter then */
    bool final;      /* the last sample (from the exit) is taken */
};

struct usage_reading {
    int64_t now_ms;
    uint64_t cpu_total_ns; /* the cgroup's cumulative counter */
    uint64_t mem_bytes, mem_peak_bytes;
};

/* The next sample of an instance from its cursor and a reading, into the
 * sample's seq, times and cpu fields; moves the cursor. The seq is the
 * wall clock in ms, kept strictly increasing; the interval never runs
 * backwards; a counter lower than the cursor's (it cannot happen with one
 * cgroup) counts as no cpu used. */
void usage_next_sample(struct usage_cursor *c, const struct usage_reading *rd,
                       Loom__V1__UsageSample *ret);

/* ---- bundle.c: OCI runtime config ---------------------------------------- */

struct bundle_device {
    char path[64];
    unsigned major, minor;
};

/* A read-only bind mount (secrets and config maps). */
struct bundle_bind {
    const char *source;      /* host directory */
    const char *destination; /* absolute path in the container */
};

struct bundle_spec {
    const char *id;          /* container id = instance id */
    const char *hostname;    /* HOSTNAME and uts hostname */
    const char *const *argv; /* process args, NULL-terminated, at least one */
    const char *const *env;  /* "K=V", NULL-terminated */
    const char *cwd;         /* NULL: "/" */
    uint32_t uid, gid;
    const char *netns_path;   /* NULL: a new, unconnected network namespace */
    const char *cgroups_path; /* relative "<parent>/<id>" */
    int64_t cpu_millis;       /* 0: no cpu limit */
    int64_t memory_bytes;     /* 0: no memory limit */
    int64_t pids_limit;
    uint64_t nofile; /* RLIMIT_NOFILE soft = hard; 0: 65536 */
    const struct bundle_device *devices;
    size_t ndevices;
    const struct bundle_bind *binds; /* read-only, nosuid, nodev, noexec */
    size_t nbinds;
    /* user namespace: container ids 0..65535 are host ids userns_base + id;
     * 0: no user namespace */
    uint32_t userns_base;
    /* NULL: a new sysfs; else /sys is a read-only bind of this directory */
    const char *sysfs_source;
    /* a Dockerfile build step: unshare, mount and umount are allowed, so that
     * buildah makes namespaces of its own inside the container's (nested:
     * it gets no capability the container has not) */
    bool nested_namespaces;
};

/* A mount path a container may have: absolute, normalised (no empty, "."
 * or ".." component, no trailing '/'), no control characters or ',', and
 * not /proc, /sys, /dev or below them. */
bool bundle_mount_path_valid(const char *path);
/* A mounted file's name: [-._a-zA-Z0-9]{1,253}, never "." or "..". */
bool bundle_mount_file_name_valid(const char *name);

/* The config.json for spec (root is "rootfs"). */
int bundle_config(const struct bundle_spec *spec, json_t **ret, struct loom_err *err);

/* Resolves an image "user" field ("", "uid", "uid:gid", "name", "name:group")
 * against the passwd and group files (their contents, may be NULL). Unknown
 * names are LOOM_EINVAL. */
int bundle_resolve_user(const char *user, const char *passwd, const char *group, uint32_t *ret_uid,
                        uint32_t *ret_gid, struct loom_err *err);

/* ---- userns.c: user namespaces ------------------------------------------- */

/* The first host id of project's 65536 ids, from the ranges file at path
 * (created when absent; shared by the agents of a host, under flock): the
 * project's recorded range, or the lowest free one at or above first_base
 * (a multiple of 65536) that overlaps no /etc/subuid or /etc/subgid range,
 * recorded. */
int userns_range(const char *path, uint32_t first_base, const char *project, uint32_t *ret_base,
                 struct loom_err *err);
/* A user namespace mapping ids 0..65535 to base..base+65535 (uid and gid):
 * a descriptor the caller closes. */
/* Forgets project's range (a stem cell's, when it is gone): another may get
 * it. Nothing of the range may be left on disk or running. */
int userns_release(const char *path, const char *project, struct loom_err *err);
int userns_open(uint32_t base, int *ret_fd, struct loom_err *err);
/* Same, one per base for this process's life: the caller must not close it. */
int userns_open_cached(uint32_t base, int *ret_fd, struct loom_err *err);
/* Mounts at dst (a directory) a read-only sysfs of the network namespace
 * at netns_path, and lets every user of that namespace bind ports below
 * 1024 (a container's root in a user namespace has no CAP_NET_BIND_SERVICE
 * over a namespace the host made). */
int userns_netns_sysfs(const char *netns_path, const char *dst, struct loom_err *err);
/* Mounts a read-only (nosuid, nodev) copy of the mount of directory src on
 * dst (created), its owners mapped through the user namespace userns_fd. */
int userns_idmap_bind(const char *src, const char *dst, int userns_fd, struct loom_err *err);
/* Unmounts and removes every entry (a directory) of dir, then dir. -1 if
 * one stays. */
int userns_unmount_dir(const char *dir);
/* Whether this host can run containers in user namespaces over ID-mapped
 * layers: makes an overlay of an ID-mapped directory in dir (a scratch
 * directory on the layer cache's file system, removed after) and checks the
 * owners it shows. The reason when not. */
int userns_probe(const char *dir, struct loom_err *err);

/* ---- proc.c: running helper programs ------------------------------------- */

/* The path of program name in the system's program directories (/usr/sbin,
 * /usr/bin, /sbin, /bin, /usr/local/sbin, /usr/local/bin, in that order)
 * into buf; false when none has it. The agent runs programs by path. */
bool agent_find_prog(const char *name, char *buf, size_t size);

/* True when pid is alive and its cmdline is `... shim ... --id <id>`. */
bool agent_is_our_shim(pid_t pid, const char *id);

/* A child process holding new namespaces: /proc/<pid>/ns/... are they until
 * ns_child_end. */
struct ns_child {
    pid_t pid;
    int release_fd;
};
/* Forks a child that unshares flags (CLONE_NEW*). */
int ns_child_start(int flags, struct ns_child *ret, struct loom_err *err);
/* Lets the child exit and reaps it. */
void ns_child_end(struct ns_child *c);

/* ---- cni.c: network namespaces and CNI plugins ----------------------------- */

struct cni_net {
    const char *cni_path;  /* plugin directory */
    const char *state_dir; /* agent state dir */
};

/* Creates a network namespace bind-mounted at path. */
int netns_create(const char *path, struct loom_err *err);
/* Unmounts and removes path (absent: success). */
int netns_remove(const char *path, struct loom_err *err);

/* The bridge network config (bridge + host-local on subnet) for node. */
char *cni_bridge_config(const char *node, const char *bridge, const char *subnet,
                        const char *state_dir);
/* Runs the bridge plugin from conf and then loopback, ADD; returns the
 * container's IPv4 address (allocated). */
int cni_add(const char *cni_path, const char *conf, const char *id, const char *netns,
            char **ret_ip, char **ret_host_if, struct loom_err *err);
/* Project isolation on a node's bridge (nftables table "bridge loom-<bridge>"):
 * containers reach containers of their own project, the host (so the
 * activator reaches app instances) and, through the node, the outside; never
 * another project's containers. setup creates the table and rules for subnet
 * (idempotent, once per process); add/del admit or remove one container
 * address with its project's mark; remove deletes the table (cleanup; 1 when
 * there was one). */
uint32_t cni_project_mark(const char *project);
int cni_isolation_setup(const char *bridge, const char *subnet, struct loom_err *err);
int cni_isolation_add(const char *bridge, const char *ip, uint32_t mark, struct loom_err *err);
int cni_isolation_del(const char *bridge, const char *ip, uint32_t mark, struct loom_err *err);
/* Moves ip from mark from (which proj must map it to) to mark to in one
 * nft process: what cni_isolation_add(to) then cni_isolation_del(from) do,
 * without their look-ups. */
int cni_isolation_move(const char *bridge, const char *ip, uint32_t from, uint32_t to,
                       struct loom_err *err);
int cni_isolation_remove(const char *bridge, struct loom_err *err);
/* A pool of network namespaces with CNI ADD already done, so that a start
 * does not wait for the plugins. Entries live as records
 * <state>/netpool/<cni_id>.json {"cni_id","ip","conf"[,"project"]} (".pending" while
 * being made); a background thread keeps size of them ready and, on open,
 * takes over what a previous agent left. */
struct netpool;
int netpool_open(const char *state_dir, const char *cni_path, const char *conf, int size,
                 struct netpool **ret, struct loom_err *err);
/* Takes a ready entry, renaming its record to dest_path (the instance's
 * net.json): one kept after an instance of project if there is one, else a
 * fresh one; false when none is ready. */
bool netpool_take(struct netpool *p, const char *project, const char *dest_path,
                  char ret_cni_id[48], char ret_ip[64]);
/* Keeps the namespace of the record at rec_path (an ended instance of
 * project, its container gone) for the project's next start: no CNI DEL
 * now, no ADD then. A namespace goes back only to its own project: a
 * container keeps nothing in it (it has no CAP_NET_ADMIN over it) but the
 * address, whose old flows may still be tracked. At most size are kept (the
 * oldest of another project makes room). The record is moved into the
 * pool; false (nothing changed) when it cannot be kept. */
bool netpool_keep(struct netpool *p, const char *project, const char *rec_path);
/* CNI DEL + namespace removal for a record ({"cni_id","conf"}; cni_id
 * defaults to fallback_id). A missing or unreadable record is a success. */
int netpool_release_record(const char *cni_path, const char *state_dir, const char *rec_path,
                           const char *fallback_id, struct loom_err *err);

/* DEL of both (succeeds when already gone). */
int cni_del(const char *cni_path, const char *conf, const char *id, const char *netns,
            struct loom_err *err);

/* ---- cgroup.c ------------------------------------------------------------ */

/* The directory of controller ("memory", "cpuacct", or "" for v2) for the
 * cgroup of pid (0 = self). With suffix (NULL or "" for none), the cgroup
 * runc makes for that relative cgroupsPath when started by pid: below pid's
 * own cgroup on v1 and on the unified mount of a hybrid host, below the
 * parent of pid's own cgroup on pure v2 (there controller is ignored).
 * LOOM_ENOTFOUND when pid has no such cgroup or its hierarchy is not
 * mounted. The directory itself need not exist. */
int cgroup_dir(pid_t pid, const char *controller, const char *suffix, char **ret,
               struct loom_err *err);
/* Number of OOM kills recorded in the memory cgroup dir (v1 or v2). */
int cgroup_oom_kills(const char *memdir, uint64_t *ret);
struct cgroup_usage {
    uint64_t cpu_ns, mem_bytes, mem_peak_bytes;
};
/* Usage of the container whose init is pid. Without a peak counter (v2
 * before Linux 5.19) the peak is the current usage. A missing cpu or memory
 * counter is an error. */
int cgroup_usage_of_pid(pid_t pid, struct cgroup_usage *ret, struct loom_err *err);
/* Usage of the cgroup runc made for suffix ("<parent>/<id>"), found as
 * cgroup_dir(0, ..., suffix) does. */
int cgroup_usage_of_child(const char *suffix, struct cgroup_usage *ret, struct loom_err *err);
/* Sets the limits of the cgroup runc made for suffix (found as
 * cgroup_usage_of_child finds it) in place, as `runc update --cpu-period
 * 100000 --cpu-quota cpu_millis*100 --memory M --memory-swap M` would, without
 * a process: cpu.max, memory.max and memory.swap.max (0) on v2; the cfs
 * period and quota, memory.limit_in_bytes and (where swap is accounted)
 * memory.memsw.limit_in_bytes on v1, in the order the kernel accepts. */
int cgroup_set_limits(const char *suffix, int64_t cpu_millis, int64_t memory_bytes,
                      struct loom_err *err);
/* Removes every cgroup dir named name (and its children, killing what runs
 * in them) under every hierarchy in /sys/fs/cgroup. Returns the count. */
int cgroup_remove_named(const char *name);
/* For tests: read cgroup_root instead of /sys/fs/cgroup and proc_root
 * instead of /proc (NULL: the real one). Not thread-safe; call before the
 * other cgroup functions run. */
void cgroup_set_roots(const char *cgroup_root, const char *proc_root);

/* ---- probe.c: readiness and liveness probes ---------------------------------- */

struct probe {
    bool http;       /* false: TCP connect */
    char path[1024]; /* http: the request path */
    uint32_t port;
    int64_t initial_delay_ms, period_ms, timeout_ms;
    uint32_t failure_threshold;
};

/* The probe p describes, defaults filled in (port 0: instance_port; period
 * 10 s, timeout 1 s, threshold 3). An unknown type, a path that is not
 * "/..." without spaces or control characters, or no port is LOOM_EINVAL. */
int probe_from_assign(const Loom__V1__Probe *p, uint32_t instance_port, struct probe *ret,
                      struct loom_err *err);
/* Runs p once against ip within its timeout: 0 when it passes, else -1 and
 * why in err (a refused connect, a timeout, the HTTP status). */
int probe_run(const struct probe *p, const char *ip, struct loom_err *err);

/* ---- shim.c -------------------------------------------------------------- */

/* `loom-agent shim --state-dir D --id ID`: see instance.c. */
int shim_main(int argc, char **argv);

/* ---- sweep.c ------------------------------------------------------------- */

/* `loom-agent cleanup --state-dir D [--bridge B] [--cgroup-parent P]`: sweeps
 * away everything the state dir accounts for. */
int sweep_main(int argc, char **argv);

/* ---- agent.c, state.c, instance.c ------------------------------------------ */

struct loom_service;
struct agent;
struct instance;

int agent_start(struct loom_service *svc, struct loom_err *err);
void agent_tick(struct loom_service *svc);
void agent_stop(struct loom_service *svc);
bool agent_ready(struct loom_service *svc);

extern const struct loom_opt agent_opts[];
extern const size_t agent_nopts;

/* state.c: the state directory's files. */
char *agent_instance_dir(const char *state_dir, const char *id);
int agent_write_json(const char *path, json_t *j, struct loom_err *err);
/* tmp + rename without fsync: for state that matters only while this boot's
 * containers exist (an agent crash keeps it, a machine crash ends them). */
int agent_write_file_nosync(const char *path, const char *data, size_t len, struct loom_err *err);
int agent_write_json_nosync(const char *path, json_t *j, struct loom_err *err);

#endif
