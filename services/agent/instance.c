/* One instance's life on this node, in its own thread:
 *
 *   setup      PULLING: image_store_get; STARTING: overlay rootfs (upper dir
 *              on a size-limited tmpfs when ephemeral_bytes is set), network
 *              namespace + CNI ADD, config.json, then the shim (which runs
 *              `runc run --detach` and owns the container's stdio)
 *   running    jobs: as soon as `runc start` returned; apps: once ip:port
 *              accepts a TCP connection
 *   watch      the shim's exit (pidfd), stop requests (runc kill TERM, KILL
 *              after the grace period)
 *   finish     exit.json -> the terminal report
 *   teardown   after the terminal report is acknowledged: runc delete,
 *              unmount, CNI DEL, netns, cgroups, config.json and the mounts'
 *              files; instance.json (without the assign's secrets),
 *              container.log and exit.json stay until --finished-retention
 *              passes */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "layer.h"
#include "log.h"
#include "quantity.h"
#include "strbuf.h"
#include "util.h"

#define APP_LISTEN_TIMEOUT_MS 120000
#define SHIM_START_TIMEOUT_MS 120000

struct run {
    struct agent *a;
    struct instance *in;
    bool adopt;
    int pidfd;
    bool shim_reaped;
    char fail_reason[600];
    bool fail_permanent;
    char netns[4200]; /* the network namespace setup_network made or took */
    /* admitting the address to its project's network runs beside the shim's
     * start (until then the container reaches no other container: fail
     * closed) */
    pthread_t admit;
    bool admitting;
    int admit_rc;
    uint32_t admit_mark;
    struct loom_err admit_err;
    /* apps: liveness (watch() runs it once the instance is RUNNING) */
    bool have_liveness;
    struct probe liveness;
    int64_t running_at;
    /* the project's user namespace (--userns), kept by userns_open_cached */
    int userns_fd;
};

void instance_free(struct instance *in)
{
    if (!in)
        return;
    if (in->assign)
        loom__v1__instance_assign__free_unpacked(in->assign, NULL);
    free(in->assign_pb);
    free(in->dir);
    for (struct report *r = in->outbox, *n; r; r = n) {
        n = r->next;
        free(r->data);
        free(r);
    }
    free(in);
}

static void path_in(char *buf, size_t n, struct instance *in, const char *name)
{
    snprintf(buf, n, "%s/%s", in->dir, name);
}

static bool stop_requested(struct run *r)
{
    pthread_mutex_lock(&r->a->mu);
    bool s = r->in->stop_requested;
    pthread_mutex_unlock(&r->a->mu);
    return s;
}

static int runc_cmd(struct agent *a, const char *cmd, const char *id, const char *arg,
                    struct loom_err *err)
{
    char root[4200];
    snprintf(root, sizeof(root), "%s/runc", a->o.state_dir);
    const char *argv[8] = {a->o.runtime, "--root", root, cmd};
    int i = 4;
    if (strcmp(cmd, "delete") == 0)
        argv[i++] = "--force";
    argv[i++] = id;
    if (arg)
        argv[i++] = arg;
    argv[i] = NULL;
    return loom_run(argv, NULL, NULL, NULL, err);
}

/* Reads a file inside root without following links out of it. */
static char *read_in_root(const char *root, const char *rel)
{
    _cleanup_close_ int rfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0)
        return NULL;
    struct open_how how = {.flags = O_RDONLY | O_CLOEXEC,
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    _cleanup_close_ int fd = (int)syscall(SYS_openat2, rfd, rel, &how, sizeof(how));
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf)
        abort();
    ssize_t n;
    while (len < cap && (n = read(fd, buf + len, cap - len)) > 0)
        len += (size_t)n;
    buf[len] = 0;
    return buf;
}

/* ---- GPUs ---------------------------------------------------------------------- */

static int gpus_take(struct agent *a, struct instance *in, struct loom_err *err)
{
    uint32_t want = in->assign->gpus;
    if (want == 0)
        return 0;
    pthread_mutex_lock(&a->mu);
    uint64_t mask = 0;
    uint32_t got = 0;
    for (int i = 0; i < a->ngpus && got < want; i++)
        if (!(a->gpus_held & (1ULL << i))) {
            mask |= 1ULL << i;
            got++;
        }
    if (got < want) {
        pthread_mutex_unlock(&a->mu);
        return loom_err_set(err, LOOM_ECONFLICT, "%u GPUs asked for, %u free on this node", want,
                            got);
    }
    a->gpus_held |= mask;
    in->gpu_mask = mask;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

static void gpus_release(struct agent *a, struct instance *in)
{
    pthread_mutex_lock(&a->mu);
    a->gpus_held &= ~in->gpu_mask;
    in->gpu_mask = 0;
    pthread_mutex_unlock(&a->mu);
}

static void add_device(struct bundle_device *devs, size_t *n, const char *path)
{
    struct stat st;
    if (*n >= 80 || stat(path, &st) < 0 || !S_ISCHR(st.st_mode))
        return;
    snprintf(devs[*n].path, sizeof(devs[*n].path), "%s", path);
    devs[*n].major = major(st.st_rdev);
    devs[*n].minor = minor(st.st_rdev);
    (*n)++;
}

/* ---- setup ------------------------------------------------------------------------- */

/* The project's host ids; the instance dir becomes reachable (not
 * readable) by the container's root, which runc's init runs as when it
 * mounts the rootfs inside. runc makes the container's user namespace (the
 * same mapping); the agent's own of the range ID-maps the layers. */
static int setup_userns(struct run *r, struct loom_err *err)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    uint32_t base;
    char stem[96];
    if (userns_range(a->o.userns_ranges, (uint32_t)a->o.userns_base,
                     instance_tenant(in, false, stem, sizeof(stem)), &base, err) < 0)
        return loom_err_wrap(err, "user namespace");
    if (userns_open_cached(base, &r->userns_fd, err) < 0)
        return loom_err_wrap(err, "user namespace");
    if (chown(in->dir, 0, base) < 0 || chmod(in->dir, 0710) < 0)
        return loom_err_sys(err, errno, "could not set the owner of \"%s\"", in->dir);
    in->uid_base = base;
    return 0;
}

static int mount_rootfs(struct run *r, struct image *img, struct loom_err *err)
{
    struct instance *in = r->in;
    char rootfs[4200], scratch[4200], upper[4300], work[4300];
    path_in(rootfs, sizeof(rootfs), in, "rootfs");
    path_in(scratch, sizeof(scratch), in, "scratch");
    snprintf(upper, sizeof(upper), "%s/upper", scratch);
    snprintf(work, sizeof(work), "%s/work", scratch);
    if (loom_mkdir_p(rootfs, 0755, err) < 0 || loom_mkdir_p(scratch, 0700, err) < 0)
        return -1;
    if (in->assign->ephemeral_bytes > 0) {
        /* the writable layer is a tmpfs of the instance's ephemeral size, so
         * a container cannot fill the node's disk; its pages are charged to
         * the memory cgroup of whoever writes them (the container) */
        char opts[64];
        snprintf(opts, sizeof(opts), "size=%" PRId64 ",mode=0700", in->assign->ephemeral_bytes);
        if (mount("loom-scratch", scratch, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
            return loom_err_sys(err, errno, "could not mount the scratch tmpfs");
    }
    if (loom_mkdir_p(upper, 0755, err) < 0 || loom_mkdir_p(work, 0700, err) < 0)
        return -1;
    struct strbuf o = STRBUF_INIT;
    int userns_fd = in->uid_base ? r->userns_fd : -1;
    /* the container's root owns the writable layer's root; what it copies
     * up keeps the shifted owner the ID-mapped layers show */
    if (in->uid_base && chown(upper, in->uid_base, in->uid_base) < 0)
        return loom_err_sys(err, errno, "could not set the owner of \"%s\"", upper);
    strbuf_addstr(&o, "lowerdir=");
    if (img->nlayers == 0) {
        char empty[4300];
        snprintf(empty, sizeof(empty), "%s/empty", scratch);
        loom_mkdir_p(empty, 0755, NULL);
        strbuf_addstr(&o, empty);
    }
    for (size_t i = img->nlayers; i > 0; i--) { /* top first */
        const char *layer = img->layer_dirs[i - 1];
        char mapped[4300];
        if (userns_fd >= 0) {
            /* <dir>/lower/<i>: the shared layer, ID-mapped for this project */
            path_in(mapped, sizeof(mapped), in, "lower");
            if (i == img->nlayers && mkdir(mapped, 0700) < 0 && errno != EEXIST)
                return loom_err_sys(err, errno, "could not create \"%s\"", mapped);
            size_t l = strlen(mapped);
            snprintf(mapped + l, sizeof(mapped) - l, "/%zu", i - 1);
            if (userns_idmap_bind(layer, mapped, userns_fd, err) < 0) {
                strbuf_release(&o);
                return -1;
            }
            layer = mapped;
        }
        strbuf_addf(&o, "%s%s", i == img->nlayers ? "" : ":", layer);
    }
    strbuf_addf(&o, ",upperdir=%s,workdir=%s", upper, work);
    if (o.len >= 4096) {
        /* mount(2) takes one page of options; fsconfig's "lowerdir+" would
         * lift this for very deep images */
        strbuf_release(&o);
        return loom_err_set(err, LOOM_EINVAL, "image has too many layers (%zu) to mount",
                            img->nlayers);
    }
    int rc = mount("overlay", rootfs, "overlay", 0, o.buf);
    int e = errno;
    strbuf_release(&o);
    if (rc < 0)
        return loom_err_sys(err, e, "could not mount the overlay rootfs");
    return 0;
}

static char **build_env(struct instance *in, struct image *img, char ***ret)
{
    Loom__V1__InstanceAssign *as = in->assign;
    size_t nimg = 0;
    for (char **e = img->config.env; e && *e; e++)
        nimg++;
    char **env = calloc(nimg + as->n_env + 4, sizeof(char *));
    if (!env)
        abort();
    size_t k = 0;
    for (size_t i = 0; i < nimg; i++) {
        const char *e = img->config.env[i];
        size_t nl = strcspn(e, "=");
        bool overridden = false;
        for (size_t j = 0; j < as->n_env; j++)
            if (strlen(as->env[j]->name) == nl && strncmp(as->env[j]->name, e, nl) == 0)
                overridden = true;
        if (!overridden)
            env[k++] = strdup(e);
    }
    for (size_t j = 0; j < as->n_env; j++) {
        if (!as->env[j]->name[0] || strchr(as->env[j]->name, '='))
            continue;
        if (asprintf(&env[k++], "%s=%s", as->env[j]->name, as->env[j]->value) < 0)
            abort();
    }
    *ret = env;
    return env;
}

static void free_strv(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

/* 65536, or less where the agent's own hard limit is lower (a container
 * cannot raise it without CAP_SYS_RESOURCE in the host) */
static uint64_t nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 65536)
        return rl.rlim_max;
    return 65536;
}

/* Writes each mount's files into <dir>/mounts/<n>/ (owned by the container's
 * user; 0400 for a secret, 0444 otherwise; the directory 0555) and fills
 * binds. Names and paths from the assign are checked here: they become host
 * paths and mount points. */
static int write_mounts(struct instance *in, uint32_t uid, uint32_t gid, struct bundle_bind *binds,
                        char (*srcs)[4300], struct loom_err *err)
{
    Loom__V1__InstanceAssign *as = in->assign;
    if (as->n_mounts == 0)
        return 0;
    char base[4200];
    path_in(base, sizeof(base), in, "mounts");
    if (loom_mkdir_p(base, 0711, err) < 0)
        return -1;
    for (size_t i = 0; i < as->n_mounts; i++) {
        Loom__V1__Mount *m = as->mounts[i];
        if (!bundle_mount_path_valid(m->path))
            return loom_err_set(err, LOOM_EINVAL, "invalid mount path \"%s\"", m->path);
        for (size_t j = 0; j < i; j++)
            if (strcmp(as->mounts[j]->path, m->path) == 0)
                return loom_err_set(err, LOOM_EINVAL, "mount path \"%s\" given twice", m->path);
        snprintf(srcs[i], sizeof(srcs[i]), "%s/%zu", base, i);
        if (mkdir(srcs[i], 0700) < 0 && errno != EEXIST)
            return loom_err_sys(err, errno, "could not create \"%s\"", srcs[i]);
        for (size_t f = 0; f < m->n_files; f++) {
            Loom__V1__MountFile *mf = m->files[f];
            if (!bundle_mount_file_name_valid(mf->name))
                return loom_err_set(err, LOOM_EINVAL, "invalid file name \"%s\" in mount \"%s\"",
                                    mf->name, m->path);
            char fp[4600];
            snprintf(fp, sizeof(fp), "%s/%s", srcs[i], mf->name);
            _cleanup_close_ int fd =
                open(fp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (fd < 0)
                return loom_err_sys(err, errno, "could not create \"%s\"", fp);
            for (size_t off = 0; off < mf->data.len;) {
                ssize_t n = write(fd, mf->data.data + off, mf->data.len - off);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0)
                    return loom_err_sys(err, errno, "could not write \"%s\"", fp);
                off += (size_t)n;
            }
            if (fchown(fd, uid, gid) < 0 || fchmod(fd, m->secret ? 0400 : 0444) < 0)
                return loom_err_sys(err, errno, "could not set the owner of \"%s\"", fp);
        }
        if (chown(srcs[i], uid, gid) < 0 || chmod(srcs[i], 0555) < 0)
            return loom_err_sys(err, errno, "could not set the owner of \"%s\"", srcs[i]);
        binds[i].source = srcs[i];
        binds[i].destination = m->path;
    }
    return 0;
}

/* A stem cell's CPU limit: the scheduler holds its small share for it, but
 * its runtime starts (an interpreter's imports) at a whole vCPU's pace, and
 * an idle stem cell uses none; a claim sets its function's (specialize.c). */
#define STEM_CPU_LIMIT_MILLIS 1000
static int64_t stem_cpu_limit(const Loom__V1__InstanceAssign *as)
{
    if (as->kind == KIND_FUNCTION && !as->project[0] && as->cpu_millis < STEM_CPU_LIMIT_MILLIS)
        return STEM_CPU_LIMIT_MILLIS;
    return as->cpu_millis;
}
static int write_bundle(struct run *r, struct image *img, struct loom_err *err)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    Loom__V1__InstanceAssign *as = in->assign;
    char rootfs[4200];
    path_in(rootfs, sizeof(rootfs), in, "rootfs");

    /* argv: command replaces the entrypoint; args replace cmd (the image cmd
     * is dropped when the command is replaced, as Kubernetes does) */
    size_t n = 0;
    const char *argv[512];
    if (as->n_command > 0) {
        for (size_t i = 0; i < as->n_command && n < 500; i++)
            argv[n++] = as->command[i];
    } else {
        for (char **p = img->config.entrypoint; p && *p && n < 500; p++)
            argv[n++] = *p;
    }
    if (as->n_args > 0) {
        for (size_t i = 0; i < as->n_args && n < 510; i++)
            argv[n++] = as->args[i];
    } else if (as->n_command == 0) {
        for (char **p = img->config.cmd; p && *p && n < 510; p++)
            argv[n++] = *p;
    }
    argv[n] = NULL;

    uint32_t uid = 0, gid = 0;
    if (img->config.user && img->config.user[0]) {
        _cleanup_free_ char *passwd = read_in_root(rootfs, "etc/passwd");
        _cleanup_free_ char *group = read_in_root(rootfs, "etc/group");
        if (bundle_resolve_user(img->config.user, passwd, group, &uid, &gid, err) < 0)
            return -1;
    }
    if (in->uid_base && (uid > 65535 || gid > 65535))
        return loom_err_set(err, LOOM_EINVAL,
                            "image user %" PRIu32 ":%" PRIu32
                            " is outside the 65536 ids of the container's user namespace",
                            uid, gid);

    if (as->n_mounts > 64)
        return loom_err_set(err, LOOM_EINVAL, "too many mounts (%zu, at most 64)", as->n_mounts);
    struct bundle_bind binds[64];
    char(*srcs)[4300] = calloc(as->n_mounts ? as->n_mounts : 1, sizeof(*srcs));
    if (!srcs)
        abort();
    /* the files' owner as the host sees the container's user */
    if (write_mounts(in, in->uid_base + uid, in->uid_base + gid, binds, srcs, err) < 0) {
        free(srcs);
        return -1;
    }

    char **env = NULL;
    build_env(in, img, &env);
    size_t ne = 0;
    while (env[ne])
        ne++;
    struct bundle_device devs[80];
    size_t ndev = 0;
    if (in->gpu_mask) {
        struct strbuf vis = STRBUF_INIT;
        for (int i = 0; i < a->ngpus; i++)
            if (in->gpu_mask & (1ULL << i)) {
                strbuf_addf(&vis, "%s%s", vis.len ? "," : "", a->gpus[i].id);
                add_device(devs, &ndev, a->gpus[i].path);
            }
        static const char *const ctl[] = {"/dev/nvidiactl", "/dev/nvidia-uvm",
                                          "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"};
        if (ndev > 0)
            for (size_t i = 0; i < LOOM_ARRAY_SIZE(ctl); i++)
                add_device(devs, &ndev, ctl[i]);
        if (asprintf(&env[ne++], "NVIDIA_VISIBLE_DEVICES=%s", vis.buf) < 0)
            abort();
        strbuf_release(&vis);
    }
    char cgpath[512], sysfs[4200];
    snprintf(cgpath, sizeof(cgpath), "%s/%s", a->o.cgroup_parent, in->id);
    path_in(sysfs, sizeof(sysfs), in, "sys");
    struct bundle_spec spec = {
        .id = in->id,
        .hostname = in->id,
        .argv = argv,
        .env = (const char *const *)env,
        .cwd = img->config.workdir,
        .uid = uid,
        .gid = gid,
        .netns_path = r->netns,
        .cgroups_path = cgpath,
        .cpu_millis = stem_cpu_limit(as),
        .memory_bytes = as->memory_bytes,
        .pids_limit = 2048,
        .nofile = nofile_limit(),
        .devices = devs,
        .ndevices = ndev,
        .binds = binds,
        .nbinds = as->n_mounts,
        .userns_base = in->uid_base,
        .nested_namespaces =
            in->assign->build_output && in->assign->build_output->nested_namespaces,
        .sysfs_source = in->uid_base ? sysfs : NULL,
    };
    _cleanup_json_ json_t *cfg = NULL;
    int rc = bundle_config(&spec, &cfg, err);
    free_strv(env);
    free(srcs);
    if (rc < 0)
        return -1;
    char path[4200];
    path_in(path, sizeof(path), in, "config.json");
    return agent_write_json_nosync(path, cfg, err);
}

/* The pool of ready network namespaces, opened by instance_prepare (size from
 * LOOM_AGENT_NETNS_POOL, default 8; 0 turns it off). */
static struct netpool *netpool_of(struct agent *a)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static bool tried;
    static struct netpool *pool;
    pthread_mutex_lock(&mu);
    if (!tried) {
        tried = true;
        const char *env = getenv("LOOM_AGENT_NETNS_POOL");
        int size = env && *env ? atoi(env) : 8;
        struct loom_err err = LOOM_ERR_INIT;
        if (size > 0 &&
            netpool_open(a->o.state_dir, a->o.cni_path, a->cni_conf, size, &pool, &err) < 0)
            log_warn("network namespace pool: %s", err.msg);
    }
    pthread_mutex_unlock(&mu);
    return pool;
}

static void *admit_main(void *arg)
{
    struct run *r = arg;
    r->admit_rc = cni_isolation_add(r->a->o.bridge, r->in->ip, r->admit_mark, &r->admit_err);
    return NULL;
}

static int setup_network(struct run *r, struct loom_err *err)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    char path[4200], netjson[4200], cni_id[48], ipbuf[64];
    path_in(netjson, sizeof(netjson), in, "net.json");
    struct netpool *pool = netpool_of(a);
    _cleanup_json_ json_t *j = NULL;
    char stem[96];
    const char *tenant = instance_tenant(in, true, stem, sizeof(stem));
    if (pool && netpool_take(pool, tenant, netjson, cni_id, ipbuf)) {
        /* net.json is now the pool's record {"cni_id","conf","ip"} */
        snprintf(r->netns, sizeof(r->netns), "%s/netns/%s", a->o.state_dir, cni_id);
        j = json_pack("{s:s,s:s,s:s}", "ip", ipbuf, "cni_id", cni_id, "conf", a->cni_conf);
    } else {
        snprintf(r->netns, sizeof(r->netns), "%s/netns/%s", a->o.state_dir, in->id);
        if (netns_create(r->netns, err) < 0)
            return -1;
        /* written before ADD: teardown and `loom-agent cleanup` DEL with it */
        path_in(path, sizeof(path), in, "cni.json");
        if (loom_write_file_atomic(path, a->cni_conf, strlen(a->cni_conf), err) < 0)
            return -1;
        _cleanup_free_ char *ip = NULL;
        if (cni_add(a->o.cni_path, a->cni_conf, in->id, r->netns, &ip, NULL, err) < 0)
            return -1;
        snprintf(ipbuf, sizeof(ipbuf), "%s", ip);
        j = json_pack("{s:s}", "ip", ipbuf);
    }
    uint32_t mark = cni_project_mark(tenant);
    snprintf(in->ip, sizeof(in->ip), "%s", ipbuf);
    /* written before the address is admitted: teardown removes it with these */
    json_object_set_new(j, "mark", json_integer((json_int_t)mark));
    if (agent_write_json_nosync(netjson, j, err) < 0)
        return -1;
    if (cni_isolation_setup(a->o.bridge, a->o.subnet, err) < 0)
        return -1;
    if (in->uid_base) {
        char sys[4200];
        path_in(sys, sizeof(sys), in, "sys");
        if (userns_netns_sysfs(r->netns, sys, err) < 0)
            return -1;
    }
    r->admit_mark = mark;
    r->admit_err = (struct loom_err)LOOM_ERR_INIT;
    if (pthread_create(&r->admit, NULL, admit_main, r) == 0) {
        r->admitting = true;
        return 0;
    }
    return cni_isolation_add(a->o.bridge, in->ip, mark, err);
}

/* Waits for the admission setup_network started; its error, if any. */
static int admit_join(struct run *r, struct loom_err *err)
{
    if (!r->admitting)
        return 0;
    pthread_join(r->admit, NULL);
    r->admitting = false;
    if (r->admit_rc < 0) {
        if (err)
            *err = r->admit_err;
        return -1;
    }
    return 0;
}

/* ---- warm shims ----------------------------------------------------------
 * One shim exec'd ahead of need, waiting for an instance id on a pipe (see
 * shim.c): a start then skips the ~10 ms exec of this binary. Its argv holds
 * a placeholder as long as an instance id (a UUID), which the shim
 * overwrites with the id it is given. */

#define WARM_ID_PLACEHOLDER "warm0000-0000-0000-0000-000000000000"

static struct {
    pthread_mutex_t mu;
    bool ready;
    pid_t pid;
    int status_fd, ctl_fd;
} g_warm = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bool warm_shim_take(const char *id, pid_t *ret_pid, int *ret_status)
{
    if (strlen(id) != strlen(WARM_ID_PLACEHOLDER))
        return false;
    pthread_mutex_lock(&g_warm.mu);
    bool ready = g_warm.ready;
    pid_t pid = g_warm.pid;
    int status_fd = g_warm.status_fd, ctl_fd = g_warm.ctl_fd;
    g_warm.ready = false;
    pthread_mutex_unlock(&g_warm.mu);
    if (!ready)
        return false;
    char line[80];
    int n = snprintf(line, sizeof(line), "%s\n", id);
    bool ok = write(ctl_fd, line, (size_t)n) == n && kill(pid, 0) == 0;
    close(ctl_fd);
    if (!ok) {
        /* it went away: reaped by whoever waits for children, or by this */
        close(status_fd);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, WNOHANG);
        return false;
    }
    *ret_pid = pid;
    *ret_status = status_fd;
    return true;
}

/* Starts a warm shim when none is ready (LOOM_AGENT_WARM_SHIM=0 turns them off). */
static void warm_shim_refill(struct agent *a)
{
    const char *env = getenv("LOOM_AGENT_WARM_SHIM");
    if (env && strcmp(env, "0") == 0)
        return;
    pthread_mutex_lock(&g_warm.mu);
    if (g_warm.ready) {
        pthread_mutex_unlock(&g_warm.mu);
        return;
    }
    int sp[2], cp[2];
    if (pipe2(sp, O_CLOEXEC) < 0) {
        pthread_mutex_unlock(&g_warm.mu);
        return;
    }
    if (pipe2(cp, O_CLOEXEC) < 0) {
        close(sp[0]), close(sp[1]);
        pthread_mutex_unlock(&g_warm.mu);
        return;
    }
    char placeholder[] = WARM_ID_PLACEHOLDER;
    const char *argv[] = {"loom-agent", "shim",      "--state-dir", a->o.state_dir, "--warm", "1",
                          "--id",       placeholder, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        int dn = open("/dev/null", O_RDWR);
        int s3 = fcntl(sp[1], F_DUPFD, 10), c4 = fcntl(cp[0], F_DUPFD, 10);
        if (dn < 0 || s3 < 0 || c4 < 0)
            _exit(126);
        dup2(dn, 0);
        dup2(dn, 1);
        dup2(dn, 2);
        dup2(s3, 3);
        dup2(c4, 4);
        close_range(5, ~0U, 0);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(sp[1]);
    close(cp[0]);
    if (pid < 0) {
        close(sp[0]), close(cp[1]);
    } else {
        g_warm.ready = true;
        g_warm.pid = pid;
        g_warm.status_fd = sp[0];
        g_warm.ctl_fd = cp[1];
    }
    pthread_mutex_unlock(&g_warm.mu);
}

/* The shim pid is ours (a child, warm or just forked): watch it with a
 * pidfd and record it for a restarted agent to find. */
static void adopt_shim_child(struct instance *in, struct run *r, pid_t pid)
{
    in->shim_pid = pid;
    in->shim_child = true;
    r->pidfd = pidfd_open(pid, 0);
    char path[4200], buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
    path_in(path, sizeof(path), in, "shim.pid");
    struct loom_err err = LOOM_ERR_INIT;
    if (agent_write_file_nosync(path, buf, (size_t)n, &err) < 0)
        log_warn("instance %s: %s", in->id, err.msg);
}

static int launch_shim(struct run *r, int *ret_status, struct loom_err *err)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    char path[4200], root[4200], cg[512];
    snprintf(root, sizeof(root), "%s/runc", a->o.state_dir);
    snprintf(cg, sizeof(cg), "%s/%s", a->o.cgroup_parent, in->id);
    _cleanup_json_ json_t *sj = json_pack(
        "{s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "runtime", a->o.runtime, "root", root, "cgroup", cg,
        "max_execution_seconds", (json_int_t)in->assign->max_execution_seconds, "gpu_mask",
        (json_int_t)in->gpu_mask, "log_rate", (json_int_t)a->o.log_rate, "log_burst",
        (json_int_t)a->o.log_burst, "log_max_disk", (json_int_t)a->o.log_max_disk);
    path_in(path, sizeof(path), in, "shim.json");
    if (agent_write_json_nosync(path, sj, err) < 0)
        return -1;
    char shimlog[4200];
    path_in(shimlog, sizeof(shimlog), in, "shim.log");
    pid_t wpid;
    int wstatus;
    if (warm_shim_take(in->id, &wpid, &wstatus)) {
        adopt_shim_child(in, r, wpid);
        *ret_status = wstatus;
        return 0;
    }
    const char *argv[] = {"loom-agent", "shim", "--state-dir", a->o.state_dir,
                          "--id",       in->id, NULL};
    int sp[2];
    if (pipe2(sp, O_CLOEXEC) < 0)
        return loom_err_sys(err, errno, "pipe");
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sp[0]), close(sp[1]);
        return loom_err_sys(err, e, "fork");
    }
    if (pid == 0) {
        setsid();
        int dn = open("/dev/null", O_RDONLY);
        int lf = open(shimlog, O_WRONLY | O_CREAT | O_APPEND, 0640);
        if (dn < 0 || lf < 0)
            _exit(126);
        dup2(dn, 0);
        dup2(lf, 1);
        dup2(lf, 2);
        if (sp[1] == 3)
            fcntl(3, F_SETFD, 0);
        else
            dup2(sp[1], 3);
        close_range(4, ~0U, 0);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(sp[1]);
    adopt_shim_child(in, r, pid);
    *ret_status = sp[0];
    return 0;
}

/* Reads the shim's status line: 0 with init pid, or -1 with its error. */
static int shim_status(struct run *r, int fd, pid_t *ret_pid, int64_t *ret_ms, struct loom_err *err)
{
    char buf[700];
    size_t len = 0;
    int64_t deadline = loom_mono_ms() + SHIM_START_TIMEOUT_MS;
    while (len < sizeof(buf) - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        int rc = poll(&p, 1, 200);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0) {
            ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            if (memchr(buf, '\n', len))
                break;
        }
        if (loom_mono_ms() > deadline || r->a->stopping) {
            close(fd);
            return loom_err_set(err, LOOM_ETIMEOUT, "the container did not start in time");
        }
    }
    close(fd);
    buf[len] = 0;
    buf[strcspn(buf, "\n")] = 0;
    if (strncmp(buf, "ok ", 3) == 0) {
        long long ms = 0;
        int pid = 0;
        sscanf(buf + 3, "%d %lld", &pid, &ms);
        *ret_pid = pid;
        *ret_ms = ms;
        return 0;
    }
    if (strncmp(buf, "err ", 4) == 0)
        return loom_err_set(err, LOOM_EIO, "%s", buf + 4);
    return loom_err_set(err, LOOM_EIO, "the shim exited before starting the container");
}

static bool shim_gone(struct run *r)
{
    if (r->pidfd < 0)
        return r->in->shim_pid <= 0 || !agent_is_our_shim(r->in->shim_pid, r->in->id);
    struct pollfd p = {r->pidfd, POLLIN, 0};
    return poll(&p, 1, 0) > 0;
}

/* The readiness probe of an app: the assign's, or a TCP connect to its port.
 * Before the first pass it is retried every 20 ms (not every period: the
 * start latency is what a user waits for), each try within its timeout; a
 * function runtime's every 5 ms: a stem cell started for a call that found
 * none free is on that call's path, and a refused connect costs little. */
#define READY_RETRY_US 20000
#define FUNCTION_READY_RETRY_US 5000
static int readiness_of(struct instance *in, struct probe *ret, struct loom_err *err)
{
    if (in->assign->readiness)
        return probe_from_assign(in->assign->readiness, in->assign->port, ret, err);
    Loom__V1__Probe tcp = LOOM__V1__PROBE__INIT;
    tcp.timeout_seconds = 1;
    if (probe_from_assign(&tcp, in->assign->port, ret, err) < 0)
        return -1;
    ret->timeout_ms = 200;
    return 0;
}

/* After the process runs: jobs are RUNNING now; apps once readiness passes. */
static void await_running(struct run *r)
{
    struct instance *in = r->in;
    char addr[96] = "";
    if (in->assign->kind == KIND_APP || in->assign->kind == KIND_FUNCTION) {
        struct probe ready;
        struct loom_err err = LOOM_ERR_INIT;
        if (readiness_of(in, &ready, &err) < 0 ||
            (in->assign->liveness &&
             probe_from_assign(in->assign->liveness, in->assign->port, &r->liveness, &err) < 0)) {
            snprintf(r->fail_reason, sizeof(r->fail_reason), "%s", err.msg);
            r->fail_permanent = true;
            runc_cmd(r->a, "kill", in->id, "KILL", &err);
            return;
        }
        r->have_liveness = in->assign->liveness != NULL;
        int64_t t_process = loom_mono_ms();
        int probes = 0;
        int64_t deadline = loom_mono_ms() + APP_LISTEN_TIMEOUT_MS + ready.initial_delay_ms;
        int64_t first = loom_mono_ms() + ready.initial_delay_ms;
        while (loom_mono_ms() < first) {
            if (shim_gone(r) || stop_requested(r) || r->a->stopping)
                return;
            usleep(20000);
        }
        useconds_t retry_us =
            in->assign->kind == KIND_FUNCTION ? FUNCTION_READY_RETRY_US : READY_RETRY_US;
        for (;;) {
            loom_err_clear(&err);
            probes++;
            if (probe_run(&ready, in->ip, &err) == 0)
                break;
            if (shim_gone(r) || stop_requested(r) || r->a->stopping)
                return;
            if (loom_mono_ms() > deadline) {
                if (in->assign->readiness)
                    snprintf(r->fail_reason, sizeof(r->fail_reason),
                             "readiness probe did not pass: %s", err.msg);
                else
                    snprintf(r->fail_reason, sizeof(r->fail_reason),
                             "app did not listen on port %u", in->assign->port);
                runc_cmd(r->a, "kill", in->id, "KILL", &err);
                return;
            }
            usleep(retry_us);
        }
        snprintf(addr, sizeof(addr), "%s:%u", in->ip, in->assign->port);
        log_debug("instance %s: ready %" PRId64 " ms after its process ran (%d probes)", in->id,
                  loom_mono_ms() - t_process, probes);
    }
    r->running_at = loom_mono_ms();
    struct report_extra x = {.address = addr};
    agent_report(r->a, in, ST_RUNNING, &x);
}

static int setup(struct run *r, struct loom_err *err)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    int64_t t_entry = loom_mono_ms();
    if (loom_mkdir_p(in->dir, 0700, err) < 0)
        return -1;
    agent_report(a, in, ST_PULLING, NULL);
    int64_t t0 = loom_mono_ms();
    int64_t t_reports = t0 - t_entry;
    const char *auth = in->assign->registry_auth[0] ? in->assign->registry_auth : NULL;
    if (image_store_get(a->images, in->assign->image, auth, &in->img, err) < 0) {
        loom_metric_add(a->m_pull_fail, 1);
        r->fail_permanent = err->code == LOOM_ENOTFOUND || err->code == LOOM_EINVAL;
        return -1;
    }
    int64_t t_pull = loom_mono_ms() - t0;
    loom_metric_add(a->m_pulls, 1);
    loom_metric_observe(a->m_pull_secs, (double)t_pull / 1000.0);
    if (stop_requested(r))
        return 0;
    int64_t t_rep2 = loom_mono_ms();
    agent_report(a, in, ST_STARTING, NULL);
    int64_t t1 = loom_mono_ms();
    t_reports += t1 - t_rep2;
    if (gpus_take(a, in, err) < 0)
        return -1;
    if (a->userns && setup_userns(r, err) < 0)
        return -1;
    if (mount_rootfs(r, in->img, err) < 0)
        return -1;
    int64_t t2 = loom_mono_ms();
    if (setup_network(r, err) < 0)
        return -1;
    int64_t t3 = loom_mono_ms();
    if (write_bundle(r, in->img, err) < 0) {
        r->fail_permanent = err->code == LOOM_EINVAL;
        return -1;
    }
    t2 += loom_mono_ms() - t3; /* the bundle counts as rootfs+bundle */
    t3 = loom_mono_ms();
    if (stop_requested(r))
        return 0;
    int status = -1;
    agent_usage_prepare(in);
    if (launch_shim(r, &status, err) < 0)
        return -1;
    pid_t init = -1;
    int64_t runc_ms = 0;
    if (shim_status(r, status, &init, &runc_ms, err) < 0)
        return -1;
    /* the next start's shim, now that this one's runc is done */
    warm_shim_refill(a);
    if (admit_join(r, err) < 0)
        return -1;
    int64_t now = loom_mono_ms();
    pthread_mutex_lock(&a->mu);
    in->init_pid = init;
    pthread_mutex_unlock(&a->mu);
    agent_usage_start(a, in);
    double lat = (double)(now - in->assigned_mono) / 1000.0;
    loom_metric_observe(a->m_start, lat);
    log_info("instance %s: process running %" PRId64 " ms after assign (image %" PRId64
             " ms, rootfs+bundle %" PRId64 " ms, network %" PRId64
             " ms, shim+runc create/start %" PRId64 " ms of which runc %" PRId64
             " ms; before setup %" PRId64 " ms, reports %" PRId64 " ms)",
             in->id, now - in->assigned_mono, t_pull, t2 - t1, t3 - t2, now - t3, runc_ms,
             t_entry - in->assigned_mono, t_reports);
    await_running(r);
    return 0;
}

/* ---- watch, finish, teardown ----------------------------------------------------- */

static void watch(struct run *r)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    int64_t term_at = -1;
    bool killed = false;
    int64_t next_live = -1;
    uint32_t live_failures = 0;
    for (;;) {
        if (r->pidfd >= 0) {
            struct pollfd p = {r->pidfd, POLLIN, 0};
            if (poll(&p, 1, 100) > 0)
                break;
        } else {
            if (!agent_is_our_shim(in->shim_pid, in->id))
                break;
            usleep(100000);
        }
        pthread_mutex_lock(&a->mu);
        bool stopping = a->stopping, stop = in->stop_requested, running = in->running;
        int64_t grace = in->stop_grace_ms;
        pthread_mutex_unlock(&a->mu);
        if (stopping)
            return;
        struct loom_err err = LOOM_ERR_INIT;
        if (r->have_liveness && running && !stop && !r->fail_reason[0]) {
            int64_t now = loom_mono_ms();
            if (next_live < 0)
                next_live = r->running_at + r->liveness.initial_delay_ms;
            if (now >= next_live) {
                next_live = now + r->liveness.period_ms;
                if (probe_run(&r->liveness, in->ip, &err) == 0) {
                    live_failures = 0;
                } else if (++live_failures >= r->liveness.failure_threshold) {
                    snprintf(r->fail_reason, sizeof(r->fail_reason), "liveness probe failed: %s",
                             err.msg);
                    log_info("instance %s: %s, killing it", in->id, r->fail_reason);
                    /* the shim records the exit; finish() reports the reason */
                    loom_err_clear(&err);
                    if (runc_cmd(a, "kill", in->id, "KILL", &err) < 0)
                        log_debug("instance %s: %s", in->id, err.msg);
                }
                loom_err_clear(&err);
            }
        }
        if (stop && term_at < 0) {
            term_at = loom_mono_ms();
            if (runc_cmd(a, "kill", in->id, "TERM", &err) < 0)
                log_debug("instance %s: %s", in->id, err.msg);
        } else if (stop && !killed && loom_mono_ms() - term_at >= grace) {
            killed = true;
            if (runc_cmd(a, "kill", in->id, "KILL", &err) < 0)
                log_debug("instance %s: %s", in->id, err.msg);
        }
    }
    if (in->shim_child && !r->shim_reaped) {
        while (waitpid(in->shim_pid, NULL, 0) < 0 && errno == EINTR)
            ;
        r->shim_reaped = true;
    }
    pthread_mutex_lock(&a->mu);
    in->exited = true;
    pthread_mutex_unlock(&a->mu);
}

/* A command that is not in the image (or not executable) fails the same way
 * on every retry: runc says `exec: "/bin/x": stat /bin/x: no such file...`. */
static bool exec_failed(const char *msg)
{
    return strstr(msg, "exec: \"") &&
           (strstr(msg, "no such file") || strstr(msg, "permission denied") ||
            strstr(msg, "executable file not found"));
}

static void finish(struct run *r)
{
    struct instance *in = r->in;
    if (in->terminal)
        return;
    char path[4200];
    path_in(path, sizeof(path), in, "exit.json");
    _cleanup_free_ char *text = NULL;
    _cleanup_json_ json_t *j = NULL;
    bool have_exit = loom_read_file(path, &text, NULL, NULL) == 0 &&
                     (j = loom_json_parse_object(text, strlen(text), NULL));
    int code = have_exit ? (int)json_integer_value(json_object_get(j, "exit_code")) : -1;
    bool oom = have_exit && json_is_true(json_object_get(j, "oom_killed"));
    bool timed_out = have_exit && json_is_true(json_object_get(j, "timed_out"));
    const char *error = have_exit ? json_string_value(json_object_get(j, "error")) : NULL;
    /* the last sample covers what ran since the previous one, up to the
     * exit: before the terminal report, so that it is in the outbox before
     * anything of the instance may go */
    if (have_exit)
        agent_usage_final(r->a, in, j);
    char reason[700];
    struct loom_layer_info out;
    struct report_extra x = {
        .exit_code = code, .oom_killed = oom, .timed_out = timed_out, .reason = reason};
    Loom__V1__InstanceState st = ST_FAILED;
    if (in->stop_requested) {
        st = ST_STOPPED;
        snprintf(reason, sizeof(reason), "%s", in->stop_reason);
    } else if (r->fail_reason[0]) {
        snprintf(reason, sizeof(reason), "%s", r->fail_reason);
        x.permanent = r->fail_permanent;
    } else if (!have_exit) {
        snprintf(reason, sizeof(reason), "the shim exited without recording the exit status");
    } else if (error) {
        snprintf(reason, sizeof(reason), "%s", error);
        x.permanent = exec_failed(error);
    } else if (timed_out) {
        snprintf(reason, sizeof(reason), "timed out after %" PRId64 "s",
                 in->assign->max_execution_seconds);
    } else if (oom) {
        char lim[32];
        loom_size_format(in->assign->memory_bytes, lim, sizeof(lim));
        snprintf(reason, sizeof(reason), "oom killed (memory limit %s)", lim);
    } else if (code == 0 && in->assign->build_output && in->assign->build_output->path[0]) {
        /* a build step: its output becomes a layer before it counts as done */
        const Loom__V1__BuildOutput *bo = in->assign->build_output;
        char rootfs[4200], tmp[4200];
        path_in(rootfs, sizeof(rootfs), in, "rootfs");
        snprintf(tmp, sizeof(tmp), "%s/images/tmp", r->a->o.state_dir);
        struct loom_err err = LOOM_ERR_INIT;
        const char *auth = in->assign->registry_auth[0] ? in->assign->registry_auth : NULL;
        if (agent_push_output(rootfs, bo->path, bo->repository, auth, tmp, &out, &err) < 0) {
            snprintf(reason, sizeof(reason), "build output %s: %s", bo->path, err.msg);
        } else {
            st = ST_SUCCEEDED;
            reason[0] = 0;
            x.output_digest = out.digest;
            x.output_diff_id = out.diff_id;
            x.output_size = out.size;
        }
    } else if (code == 0) {
        st = ST_SUCCEEDED;
        reason[0] = 0;
    } else {
        snprintf(reason, sizeof(reason), "exit code %d", code);
    }
    agent_report(r->a, in, st, &x);
}

static void rmdir_cgroups(struct agent *a, const char *id)
{
    static const char *const ctrls[] = {"memory",  "cpu",        "cpuacct", "pids",
                                        "devices", "freezer",    "blkio",   "cpuset",
                                        "net_cls", "perf_event", "hugetlb", ""};
    char suffix[512];
    snprintf(suffix, sizeof(suffix), "%s/%s", a->o.cgroup_parent, id);
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(ctrls); i++) {
        _cleanup_free_ char *d = NULL;
        if (cgroup_dir(0, ctrls[i], suffix, &d, NULL) == 0)
            rmdir(d);
    }
}

static void teardown(struct run *r)
{
    struct agent *a = r->a;
    struct instance *in = r->in;
    struct loom_err err = LOOM_ERR_INIT;
    char path[4200], netns[4200];
    /* the shim deletes the container; this covers a shim that died */
    runc_cmd(a, "delete", in->id, NULL, &err);
    loom_err_clear(&err);
    /* runc's state of it is gone only once nothing of it runs */
    snprintf(path, sizeof(path), "%s/runc/%s", a->o.state_dir, in->id);
    bool deleted = access(path, F_OK) < 0 && errno == ENOENT;
    path_in(path, sizeof(path), in, "rootfs");
    bool rootfs_ok = umount2(path, MNT_DETACH) == 0 || errno == EINVAL || errno == ENOENT;
    if (rootfs_ok)
        rmdir(path);
    /* user namespaces: the ID-mapped layers below it, the network's sysfs */
    path_in(path, sizeof(path), in, "lower");
    if (userns_unmount_dir(path) < 0)
        log_warn("instance %s: could not unmount every layer in \"%s\"", in->id, path);
    path_in(path, sizeof(path), in, "sys");
    if ((umount2(path, MNT_DETACH) == 0 || errno == EINVAL || errno == ENOENT) && rmdir(path) < 0 &&
        errno != ENOENT)
        log_warn("instance %s: could not remove \"%s\"", in->id, path);
    snprintf(netns, sizeof(netns), "%s/netns/%s", a->o.state_dir, in->id);
    path_in(path, sizeof(path), in, "net.json");
    _cleanup_free_ char *nt = NULL;
    _cleanup_json_ json_t *nj = NULL;
    bool pooled = false;
    if (loom_read_file(path, &nt, NULL, NULL) == 0 &&
        (nj = loom_json_parse_object(nt, strlen(nt), NULL))) {
        const char *ip = json_string_value(json_object_get(nj, "ip"));
        json_int_t mark = json_integer_value(json_object_get(nj, "mark"));
        if (ip && mark > 0 && cni_isolation_del(a->o.bridge, ip, (uint32_t)mark, &err) < 0)
            log_warn("instance %s: %s", in->id, err.msg);
        loom_err_clear(&err);
        pooled = json_object_get(nj, "cni_id") != NULL;
    }
    /* a namespace taken from the pool goes back to it for the project's
     * next start when the container is surely gone, else it is DELeted
     * under the pool's id */
    struct netpool *pool = pooled && deleted ? netpool_of(a) : NULL;
    /* an idle stem cell's namespace is nobody's to keep */
    const char *keeper = instance_project(in);
    if (pooled && !(pool && keeper[0] && netpool_keep(pool, keeper, path)) &&
        netpool_release_record(a->o.cni_path, a->o.state_dir, path, NULL, &err) < 0)
        log_warn("instance %s: %s", in->id, err.msg);
    loom_err_clear(&err);
    path_in(path, sizeof(path), in, "cni.json");
    _cleanup_free_ char *conf = NULL;
    if (loom_read_file(path, &conf, NULL, NULL) == 0) {
        if (cni_del(a->o.cni_path, conf, in->id, netns, &err) < 0)
            log_warn("instance %s: %s", in->id, err.msg);
        else
            unlink(path);
    }
    if (netns_remove(netns, &err) < 0)
        log_warn("instance %s: %s", in->id, err.msg);
    rmdir_cgroups(a, in->id);
    path_in(path, sizeof(path), in, "scratch");
    bool scratch_ok = umount2(path, MNT_DETACH) == 0 || errno == EINVAL || errno == ENOENT;
    if (rootfs_ok && scratch_ok)
        loom_rm_rf(path, NULL);
    /* a stem cell's host ids were its own: once its files are gone, another
     * may have them */
    if (in->assign->kind == KIND_FUNCTION && !in->assign->project[0] && rootfs_ok && scratch_ok &&
        a->o.userns_ranges) {
        char stem[96];
        if (userns_release(a->o.userns_ranges, instance_tenant(in, false, stem, sizeof(stem)),
                           &err) < 0)
            log_warn("instance %s: %s", in->id, err.msg);
        loom_err_clear(&err);
    }
    path_in(path, sizeof(path), in, "config.json");
    unlink(path);
    /* the secrets written for the mounts go with the container */
    path_in(path, sizeof(path), in, "mounts");
    if (loom_rm_rf(path, &err) < 0)
        log_warn("instance %s: %s", in->id, err.msg);
    loom_err_clear(&err);
    agent_scrub_assign(a, in);
    gpus_release(a, in);
    if (in->img) {
        image_release(a->images, in->img);
        in->img = NULL;
    }
    path_in(path, sizeof(path), in, "done");
    if (loom_write_file_atomic(path, "", 0, &err) < 0)
        log_warn("instance %s: %s", in->id, err.msg);
    pthread_mutex_lock(&a->mu);
    in->done = true;
    in->running = false;
    in->done_at_ms = loom_now_ms();
    pthread_mutex_unlock(&a->mu);
    log_info("instance %s: cleaned up", in->id);
}

static void adopt(struct run *r)
{
    struct instance *in = r->in;
    char path[4200];
    if (in->terminal)
        return; /* only the outbox and the teardown are left */
    path_in(path, sizeof(path), in, "shim.json");
    _cleanup_free_ char *sj = NULL;
    _cleanup_json_ json_t *sjj = NULL;
    if (loom_read_file(path, &sj, NULL, NULL) == 0 &&
        (sjj = loom_json_parse_object(sj, strlen(sj), NULL))) {
        in->gpu_mask = (uint64_t)json_integer_value(json_object_get(sjj, "gpu_mask"));
        pthread_mutex_lock(&r->a->mu);
        r->a->gpus_held |= in->gpu_mask;
        pthread_mutex_unlock(&r->a->mu);
    }
    path_in(path, sizeof(path), in, "net.json");
    _cleanup_free_ char *nj = NULL;
    _cleanup_json_ json_t *njj = NULL;
    if (loom_read_file(path, &nj, NULL, NULL) == 0 &&
        (njj = loom_json_parse_object(nj, strlen(nj), NULL)) &&
        json_string_value(json_object_get(njj, "ip")))
        snprintf(in->ip, sizeof(in->ip), "%s", json_string_value(json_object_get(njj, "ip")));
    path_in(path, sizeof(path), in, "shim.pid");
    _cleanup_free_ char *pt = NULL;
    pid_t pid = loom_read_file(path, &pt, NULL, NULL) == 0 ? (pid_t)atoi(pt) : -1;
    path_in(path, sizeof(path), in, "exit.json");
    bool exited = access(path, F_OK) == 0;
    if (pid > 0 && agent_is_our_shim(pid, in->id)) {
        in->shim_pid = pid;
        in->shim_child = false;
        r->pidfd = pidfd_open(pid, 0);
        path_in(path, sizeof(path), in, "pid");
        _cleanup_free_ char *ip = NULL;
        if (loom_read_file(path, &ip, NULL, NULL) == 0) {
            pthread_mutex_lock(&r->a->mu);
            in->init_pid = (pid_t)atoi(ip);
            pthread_mutex_unlock(&r->a->mu);
            agent_usage_adopt(r->a, in);
            log_info("instance %s: adopted running shim %d", in->id, (int)pid);
            /* hold the image's layers against eviction again (cached: no pull) */
            struct loom_err err = LOOM_ERR_INIT;
            const char *auth = in->assign->registry_auth[0] ? in->assign->registry_auth : NULL;
            if (image_store_get(r->a->images, in->assign->image, auth, &in->img, &err) < 0)
                log_warn("instance %s: could not hold its image: %s", in->id, err.msg);
            await_running(r);
        }
        return;
    }
    if (exited) {
        agent_usage_adopt(r->a, in); /* for the final sample */
        return;                      /* finished while we were away: finish() reports it */
    }
    path_in(path, sizeof(path), in, "pid");
    if (access(path, F_OK) == 0)
        snprintf(r->fail_reason, sizeof(r->fail_reason),
                 "the instance's shim is gone without an exit status (node cleanup or crash)");
    else
        snprintf(r->fail_reason, sizeof(r->fail_reason),
                 "the agent restarted while the instance was being set up");
}

static void *instance_main(void *arg)
{
    struct run *r = arg;
    struct agent *a = r->a;
    struct instance *in = r->in;
    if (!r->adopt) {
        struct loom_err err = LOOM_ERR_INIT;
        int setup_rc = setup(r, &err);
        if (admit_join(r, setup_rc < 0 ? NULL : &err) < 0)
            setup_rc = -1;
        if (setup_rc < 0) {
            log_warn("instance %s: %s", in->id, err.msg);
            snprintf(r->fail_reason, sizeof(r->fail_reason), "%s", err.msg);
            if (exec_failed(err.msg))
                r->fail_permanent = true;
            if (in->shim_pid > 0) /* the shim runs: let it finish and record the exit */
                runc_cmd(a, "kill", in->id, "KILL", &err);
        }
    } else {
        adopt(r);
    }
    pthread_mutex_lock(&a->mu);
    in->in_setup = false;
    pthread_mutex_unlock(&a->mu);
    if (in->shim_pid > 0 && !in->terminal)
        watch(r);
    if (!a->stopping) {
        finish(r);
        /* the terminal report must be acknowledged before the evidence goes */
        pthread_mutex_lock(&a->mu);
        while (in->outbox && !a->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&a->cond, &a->mu, &ts);
        }
        bool go = !a->stopping;
        pthread_mutex_unlock(&a->mu);
        if (go)
            teardown(r);
    }
    if (r->pidfd >= 0)
        close(r->pidfd);
    pthread_mutex_lock(&a->mu);
    in->thread_running = false;
    pthread_mutex_unlock(&a->mu);
    free(r);
    return NULL;
}

void instance_prepare(struct agent *a)
{
    /* the first starts after the agent's would otherwise find an empty
     * pool, and pay for a CNI ADD and an exec of the shim */
    netpool_of(a);
    warm_shim_refill(a);
}

void instance_spawn(struct agent *a, struct instance *in, bool adopt_it)
{
    struct run *r = calloc(1, sizeof(*r));
    if (!r)
        abort();
    r->a = a;
    r->in = in;
    r->adopt = adopt_it;
    r->pidfd = -1;
    r->userns_fd = -1;
    in->thread_running = true;
    in->in_setup = !adopt_it;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    if (pthread_create(&t, &at, instance_main, r) != 0) {
        /* cannot happen short of exhaustion; the heartbeat keeps the id and
         * the scheduler's liveness check replaces it */
        in->thread_running = false;
        free(r);
    }
    pthread_attr_destroy(&at);
}
