/* The OCI runtime config (config.json) of an instance. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "cleanup.h"
#include "json.h"
#include "util.h"

/* Podman's default capability set (containers.conf); Docker adds MKNOD,
 * NET_RAW and AUDIT_WRITE, which serverless workloads do not need. */
static const char *const caps[] = {
    "CAP_CHOWN",   "CAP_DAC_OVERRIDE",     "CAP_FOWNER",     "CAP_FSETID",
    "CAP_KILL",    "CAP_NET_BIND_SERVICE", "CAP_SETFCAP",    "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETUID",           "CAP_SYS_CHROOT",
};

/* runc spec's defaults */
static const char *const masked_paths[] = {
    "/proc/acpi",          "/proc/asound",     "/proc/kcore",       "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/sys/firmware",       "/proc/scsi",
};
static const char *const readonly_paths[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

/* Seccomp: default allow, deny what a container has no business calling.
 * The trade-off: an allowlist (Docker/Podman's default ERRNO profile with ~370
 * syscalls) is stricter and also blocks syscalls added to future kernels, but
 * it is large and must track every libc's new syscalls (clone3, statx, rseq...)
 * or ordinary programs break. A denylist keeps every ordinary program working
 * and removes the known kernel attack surface; together with the small
 * capability set (no CAP_SYS_ADMIN) and no_new_privs it is what we ship.
 * Namespace creation through clone(CLONE_NEW*) is not filtered here (it would
 * need argument filters); unshare and setns are. */
static const char *const denied_syscalls[] = {
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
    "vm86",
    "vm86old",
    "_sysctl",
    "adjtimex",
};

static json_t *str_array(const char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *mount_entry(const char *dest, const char *type, const char *src,
                           const char *const *opts, size_t nopts)
{
    return json_pack("{s:s,s:s,s:s,s:o}", "destination", dest, "type", type, "source", src,
                     "options", str_array(opts, nopts));
}

static json_t *mounts(const struct bundle_spec *s)
{
    static const char *const proc_o[] = {"nosuid", "noexec", "nodev"};
    static const char *const dev_o[] = {"nosuid", "strictatime", "mode=755", "size=65536k"};
    static const char *const pts_o[] = {"nosuid", "noexec", "newinstance", "ptmxmode=0666",
                                        "mode=0620"};
    static const char *const shm_o[] = {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"};
    static const char *const mq_o[] = {"nosuid", "noexec", "nodev"};
    static const char *const sys_o[] = {"nosuid", "noexec", "nodev", "ro"};
    static const char *const tmp_o[] = {"nosuid", "nodev", "mode=1777"};
    json_t *m = json_array();
    json_array_append_new(m, mount_entry("/proc", "proc", "proc", proc_o, 3));
    json_array_append_new(m, mount_entry("/dev", "tmpfs", "tmpfs", dev_o, 4));
    json_array_append_new(m, mount_entry("/dev/pts", "devpts", "devpts", pts_o, 5));
    json_array_append_new(m, mount_entry("/dev/shm", "tmpfs", "shm", shm_o, 5));
    json_array_append_new(m, mount_entry("/dev/mqueue", "mqueue", "mqueue", mq_o, 3));
    if (s->sysfs_source) {
        static const char *const sysb_o[] = {"bind", "ro", "nosuid", "noexec", "nodev"};
        json_array_append_new(m, mount_entry("/sys", "bind", s->sysfs_source, sysb_o, 5));
    } else {
        json_array_append_new(m, mount_entry("/sys", "sysfs", "sysfs", sys_o, 4));
    }
    json_array_append_new(m, mount_entry("/tmp", "tmpfs", "tmpfs", tmp_o, 3));
    static const char *const bind_o[] = {"rbind", "ro", "nosuid", "nodev", "noexec"};
    for (size_t i = 0; i < s->nbinds; i++)
        json_array_append_new(m, mount_entry(s->binds[i].destination, "bind", s->binds[i].source,
                                             bind_o, LOOM_ARRAY_SIZE(bind_o)));
    return m;
}

bool bundle_mount_path_valid(const char *path)
{
    size_t n = strlen(path);
    if (n < 2 || n > 1024 || path[0] != '/' || path[n - 1] == '/')
        return false;
    /* normalised: no empty, "." or ".." component */
    for (const char *c = path + 1; *c;) {
        size_t l = strcspn(c, "/");
        if (l == 0 || (l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        c += l;
        if (*c)
            c++;
    }
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == ',')
            return false;
    /* the kernel's file systems and the runtime's own mounts stay as they are */
    static const char *const denied[] = {"/proc", "/sys", "/dev"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(denied); i++) {
        size_t dl = strlen(denied[i]);
        if (strncmp(path, denied[i], dl) == 0 && (path[dl] == 0 || path[dl] == '/'))
            return false;
    }
    return true;
}

bool bundle_mount_file_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 253 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* What a build step that makes its own namespaces needs (nested_namespaces). */
static const char *const nested_syscalls[] = {"unshare", "mount", "umount", "umount2"};

static json_t *seccomp(bool nested)
{
    json_t *names = json_array();
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(denied_syscalls); i++) {
        bool needed = false;
        for (size_t k = 0; nested && k < LOOM_ARRAY_SIZE(nested_syscalls); k++)
            needed = needed || strcmp(denied_syscalls[i], nested_syscalls[k]) == 0;
        if (!needed)
            json_array_append_new(names, json_string(denied_syscalls[i]));
    }
    return json_pack("{s:s,s:[sss],s:[{s:o,s:s,s:i}]}", "defaultAction", "SCMP_ACT_ALLOW",
                     "architectures", "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                     "syscalls", "names", names, "action", "SCMP_ACT_ERRNO", "errnoRet", EPERM);
}

static json_t *resources(const struct bundle_spec *s)
{
    json_t *r = json_object();
    json_t *devs = json_array();
    /* deny every device, then allow what runc's default set and the GPUs need
     * (runc adds its default allowed devices itself) */
    json_array_append_new(devs, json_pack("{s:b,s:s}", "allow", 0, "access", "rwm"));
    for (size_t i = 0; i < s->ndevices; i++)
        json_array_append_new(devs, json_pack("{s:b,s:s,s:I,s:I,s:s}", "allow", 1, "type", "c",
                                              "major", (json_int_t)s->devices[i].major, "minor",
                                              (json_int_t)s->devices[i].minor, "access", "rwm"));
    json_object_set_new(r, "devices", devs);
    if (s->memory_bytes > 0)
        /* swap = limit: the memsw limit equals the memory limit, so no swap */
        json_object_set_new(r, "memory",
                            json_pack("{s:I,s:I}", "limit", (json_int_t)s->memory_bytes, "swap",
                                      (json_int_t)s->memory_bytes));
    if (s->cpu_millis > 0)
        json_object_set_new(r, "cpu",
                            json_pack("{s:I,s:I}", "quota", (json_int_t)(s->cpu_millis * 100),
                                      "period", (json_int_t)100000));
    json_object_set_new(
        r, "pids",
        json_pack("{s:I}", "limit", (json_int_t)(s->pids_limit > 0 ? s->pids_limit : 2048)));
    return r;
}

int bundle_config(const struct bundle_spec *s, json_t **ret, struct loom_err *err)
{
    if (!s->argv || !s->argv[0] || !s->argv[0][0])
        return loom_err_set(err, LOOM_EINVAL,
                            "no command to run: the image has no entrypoint "
                            "or cmd and none was given");
    if (!s->cgroups_path || s->cgroups_path[0] == '/')
        return loom_err_set(err, LOOM_EINVAL, "cgroups path must be relative");

    json_t *args = json_array();
    for (size_t i = 0; s->argv[i]; i++)
        json_array_append_new(args, json_string(s->argv[i]));
    json_t *env = json_array();
    bool have_path = false;
    for (size_t i = 0; s->env && s->env[i]; i++) {
        if (strncmp(s->env[i], "PATH=", 5) == 0)
            have_path = true;
        json_array_append_new(env, json_string(s->env[i]));
    }
    if (!have_path)
        json_array_append_new(env,
                              json_string("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                          "/sbin:/bin"));
    if (s->hostname) {
        _cleanup_free_ char *h = NULL;
        if (asprintf(&h, "HOSTNAME=%s", s->hostname) < 0)
            abort();
        json_array_append_new(env, json_string(h));
    }

    uint64_t nofile = s->nofile ? s->nofile : 65536;
    json_t *capset = str_array(caps, LOOM_ARRAY_SIZE(caps));
    json_t *process = json_pack(
        "{s:b,s:{s:I,s:I},s:o,s:o,s:s,s:b,s:[{s:s,s:I,s:I}],s:{s:O,s:O,s:O}}", "terminal", 0,
        "user", "uid", (json_int_t)s->uid, "gid", (json_int_t)s->gid, "args", args, "env", env,
        "cwd", s->cwd && s->cwd[0] ? s->cwd : "/", "noNewPrivileges", 1, "rlimits", "type",
        "RLIMIT_NOFILE", "hard", (json_int_t)nofile, "soft", (json_int_t)nofile, "capabilities",
        "bounding", capset, "effective", capset, "permitted", capset);
    json_decref(capset);
    if (!process)
        return loom_err_set(err, LOOM_EINTERNAL, "could not build the process spec");

    json_t *ns = json_array();
    json_array_append_new(ns, json_pack("{s:s}", "type", "pid"));
    json_array_append_new(ns, json_pack("{s:s}", "type", "mount"));
    if (s->netns_path)
        json_array_append_new(ns, json_pack("{s:s,s:s}", "type", "network", "path", s->netns_path));
    else
        json_array_append_new(ns, json_pack("{s:s}", "type", "network"));
    json_array_append_new(ns, json_pack("{s:s}", "type", "ipc"));
    json_array_append_new(ns, json_pack("{s:s}", "type", "uts"));
    if (s->userns_base)
        json_array_append_new(ns, json_pack("{s:s}", "type", "user"));

    json_t *devices = json_array();
    for (size_t i = 0; i < s->ndevices; i++)
        json_array_append_new(
            devices, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "path", s->devices[i].path, "type",
                               "c", "major", (json_int_t)s->devices[i].major, "minor",
                               (json_int_t)s->devices[i].minor, "fileMode", (json_int_t)0666, "uid",
                               (json_int_t)0, "gid", (json_int_t)0));

    json_t *linux_ =
        json_pack("{s:s,s:o,s:o,s:o,s:o,s:o,s:o}", "cgroupsPath", s->cgroups_path, "namespaces", ns,
                  "resources", resources(s), "maskedPaths",
                  str_array(masked_paths, LOOM_ARRAY_SIZE(masked_paths)), "readonlyPaths",
                  str_array(readonly_paths, LOOM_ARRAY_SIZE(readonly_paths)), "seccomp",
                  seccomp(s->nested_namespaces), "devices", devices);
    if (linux_ && s->userns_base) {
        json_t *map = json_pack("[{s:I,s:I,s:I}]", "containerID", (json_int_t)0, "hostID",
                                (json_int_t)s->userns_base, "size", (json_int_t)65536);
        json_object_set(linux_, "uidMappings", map);
        json_object_set_new(linux_, "gidMappings", map);
    }

    json_t *cfg =
        json_pack("{s:s,s:o,s:{s:s,s:b},s:s,s:o,s:o}", "ociVersion", "1.0.2", "process", process,
                  "root", "path", "rootfs", "readonly", 0, "hostname",
                  s->hostname ? s->hostname : s->id, "mounts", mounts(s), "linux", linux_);
    if (!cfg)
        return loom_err_set(err, LOOM_EINTERNAL, "could not build config.json");
    *ret = cfg;
    return 0;
}

/* Finds name in a passwd/group style file: returns field[idx] numeric. */
static int lookup_id(const char *file, const char *name, int idx, bool by_id, uint32_t id_in,
                     uint32_t *ret)
{
    char line[1024];
    for (const char *p = file; loom_next_line(&p, line, sizeof(line));) {
        char *fields[7] = {0};
        int n = 0;
        char *save = line;
        for (char *f; n < 7 && (f = strsep(&save, ":"));)
            fields[n++] = f;
        if (n <= idx || n <= 2)
            continue;
        char *end;
        unsigned long uid = strtoul(fields[2], &end, 10);
        bool match = by_id ? (!*end && uid == id_in) : strcmp(fields[0], name) == 0;
        if (match) {
            unsigned long v = strtoul(fields[idx], &end, 10);
            if (*end || v > UINT32_MAX)
                return -1;
            *ret = (uint32_t)v;
            return 0;
        }
    }
    return -1;
}

static bool parse_u32(const char *s, uint32_t *ret)
{
    if (!*s)
        return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || errno || v > UINT32_MAX || *s == '-')
        return false;
    *ret = (uint32_t)v;
    return true;
}

int bundle_resolve_user(const char *user, const char *passwd, const char *group, uint32_t *ret_uid,
                        uint32_t *ret_gid, struct loom_err *err)
{
    if (!user || !*user) {
        *ret_uid = 0;
        *ret_gid = 0;
        return 0;
    }
    _cleanup_free_ char *u = strdup(user);
    if (!u)
        abort();
    char *g = strchr(u, ':');
    if (g)
        *g++ = 0;
    uint32_t uid, gid = 0;
    bool have_gid = false;
    if (!parse_u32(u, &uid)) {
        if (lookup_id(passwd, u, 2, false, 0, &uid) < 0)
            return loom_err_set(err, LOOM_EINVAL, "image user \"%s\" not found in /etc/passwd", u);
        if (lookup_id(passwd, u, 3, false, 0, &gid) == 0)
            have_gid = true;
    } else if (lookup_id(passwd, NULL, 3, true, uid, &gid) == 0) {
        have_gid = true;
    }
    if (g && *g) {
        if (!parse_u32(g, &gid) && lookup_id(group, g, 2, false, 0, &gid) < 0)
            return loom_err_set(err, LOOM_EINVAL, "image group \"%s\" not found in /etc/group", g);
        have_gid = true;
    }
    if (!have_gid)
        gid = 0;
    *ret_uid = uid;
    *ret_gid = gid;
    return 0;
}
