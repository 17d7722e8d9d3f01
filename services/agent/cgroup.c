/* cgroup paths and counters, for cgroup v1 (with or without the v2 "unified"
 * mount beside it) and pure v2. runc creates the instance cgroups from the
 * relative cgroupsPath; we only read them and remove leftovers. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "util.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
#define PROC_ROOT "/proc"

/* Set once by tests (cgroup_set_roots) before anything reads them. */
static char g_cgroot[PATH_MAX] = CGROUP_ROOT;
static char g_procroot[PATH_MAX] = PROC_ROOT;

void cgroup_set_roots(const char *cgroup_root, const char *proc_root)
{
    snprintf(g_cgroot, sizeof(g_cgroot), "%s", cgroup_root ? cgroup_root : CGROUP_ROOT);
    snprintf(g_procroot, sizeof(g_procroot), "%s", proc_root ? proc_root : PROC_ROOT);
}

static bool pure_v2(void)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/cgroup.controllers", g_cgroot);
    return access(path, F_OK) == 0;
}

/* name is one of the comma-separated entries of list ("cpu,cpuacct") */
static bool in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len;
        if (*p == ',')
            p++;
    }
    return false;
}

int cgroup_dir(pid_t pid, const char *controller, const char *suffix, char **ret,
               struct loom_err *err)
{
    char path[PATH_MAX + 32];
    if (pid > 0)
        snprintf(path, sizeof(path), "%s/%d/cgroup", g_procroot, (int)pid);
    else
        snprintf(path, sizeof(path), "%s/self/cgroup", g_procroot);
    _cleanup_free_ char *text = NULL;
    if (loom_read_file(path, &text, NULL, err) < 0)
        return -1;
    if (suffix && !suffix[0])
        suffix = NULL;
    bool pure = pure_v2();
    bool v2 = pure || !controller[0];
    /* lines are "hierarchy-id:controller-list:path"; the path may hold ':' */
    for (char *save = text, *line; (line = strsep(&save, "\n"));) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = 0;
        *c2 = 0;
        const char *ctrls = c1 + 1;
        char *cg = c2 + 1;
        bool match = v2 ? strcmp(line, "0") == 0 && !ctrls[0] : in_list(ctrls, controller);
        if (!match || cg[0] != '/')
            continue;
        char base[2 * PATH_MAX];
        if (pure) {
            snprintf(base, sizeof(base), "%s", g_cgroot);
        } else if (v2) {
            snprintf(base, sizeof(base), "%s/unified", g_cgroot);
            if (access(base, F_OK) < 0)
                return loom_err_set(err, LOOM_ENOTFOUND, "no cgroup v2 mount at \"%s\"", base);
        } else {
            /* a co-mounted hierarchy is mounted at its list ("cpu,cpuacct"),
             * usually but not always with a symlink per controller */
            snprintf(base, sizeof(base), "%s/%s", g_cgroot, controller);
            if (access(base, F_OK) < 0) {
                snprintf(base, sizeof(base), "%s/%s", g_cgroot, ctrls);
                if (access(base, F_OK) < 0)
                    return loom_err_set(err, LOOM_ENOTFOUND,
                                        "no mount of the %s cgroup controller under \"%s\"",
                                        controller, g_cgroot);
            }
        }
        /* runc's v2 manager puts a relative cgroupsPath below the parent of
         * its own cgroup, not below the own one: v2 lets a cgroup with
         * processes in it enable no controllers for its children. runc runs
         * in our cgroup, so its parent is where the instance cgroups are. v1
         * (and the unified mount in hybrid mode) use the own cgroup. */
        if (pure && suffix)
            *strrchr(cg, '/') = 0; /* "/a/b" -> "/a", "/a" and "/" -> "" */
        size_t cglen = strlen(cg);
        if (cglen > 0 && cg[cglen - 1] == '/')
            cg[cglen - 1] = 0; /* the root cgroup "/" */
        if (asprintf(ret, "%s%s%s%s", base, cg, suffix ? "/" : "", suffix ? suffix : "") < 0)
            abort();
        return 0;
    }
    return loom_err_set(err, LOOM_ENOTFOUND, "no %s cgroup in \"%s\"", v2 ? "v2" : controller,
                        path);
}

static int read_in(const char *dir, const char *file, char **ret, struct loom_err *err)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, file) < 0)
        abort();
    return loom_read_file(path, ret, NULL, err);
}

static int read_u64(const char *dir, const char *file, uint64_t *ret, struct loom_err *err)
{
    _cleanup_free_ char *t = NULL;
    if (read_in(dir, file, &t, err) < 0)
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(t, &end, 10);
    if (end == t || errno != 0)
        return loom_err_set(err, LOOM_EIO, "no number in \"%s/%s\"", dir, file);
    *ret = v;
    return 0;
}

/* the value of the "key value" line for key */
static int read_keyed(const char *dir, const char *file, const char *key, uint64_t *ret,
                      struct loom_err *err)
{
    _cleanup_free_ char *t = NULL;
    if (read_in(dir, file, &t, err) < 0)
        return -1;
    size_t klen = strlen(key);
    for (char *save = t, *line; (line = strsep(&save, "\n"));)
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(line + klen + 1, &end, 10);
            if (end == line + klen + 1 || errno != 0)
                break;
            *ret = v;
            return 0;
        }
    return loom_err_set(err, LOOM_EIO, "no %s value in \"%s/%s\"", key, dir, file);
}

int cgroup_oom_kills(const char *memdir, uint64_t *ret)
{
    /* v1: memory.oom_control has oom_kill since Linux 4.13. v2:
     * memory.events; its oom_kill counts every process killed, group kills
     * (memory.oom.group) included, while oom_group_kill counts the events */
    if (read_keyed(memdir, "memory.oom_control", "oom_kill", ret, NULL) == 0)
        return 0;
    return read_keyed(memdir, "memory.events", "oom_kill", ret, NULL);
}

static int usage_from(pid_t pid, const char *suffix, struct cgroup_usage *ret, struct loom_err *err)
{
    struct cgroup_usage u = {0};
    if (pure_v2()) {
        _cleanup_free_ char *dir = NULL;
        if (cgroup_dir(pid, "", suffix, &dir, err) < 0)
            return -1;
        uint64_t usec = 0;
        if (read_keyed(dir, "cpu.stat", "usage_usec", &usec, err) < 0 ||
            read_u64(dir, "memory.current", &u.mem_bytes, err) < 0)
            return -1;
        u.cpu_ns = usec * 1000;
        /* memory.peak came with Linux 5.19; before, the current usage is the
         * best lower bound there is */
        if (read_u64(dir, "memory.peak", &u.mem_peak_bytes, NULL) < 0)
            u.mem_peak_bytes = u.mem_bytes;
    } else {
        _cleanup_free_ char *cpu = NULL, *mem = NULL;
        if (cgroup_dir(pid, "cpuacct", suffix, &cpu, err) < 0 ||
            cgroup_dir(pid, "memory", suffix, &mem, err) < 0)
            return -1;
        if (read_u64(cpu, "cpuacct.usage", &u.cpu_ns, err) < 0 ||
            read_u64(mem, "memory.usage_in_bytes", &u.mem_bytes, err) < 0)
            return -1;
        if (read_u64(mem, "memory.max_usage_in_bytes", &u.mem_peak_bytes, NULL) < 0)
            u.mem_peak_bytes = u.mem_bytes;
    }
    *ret = u;
    return 0;
}

int cgroup_usage_of_pid(pid_t pid, struct cgroup_usage *ret, struct loom_err *err)
{
    return usage_from(pid, NULL, ret, err);
}

int cgroup_usage_of_child(const char *suffix, struct cgroup_usage *ret, struct loom_err *err)
{
    return usage_from(0, suffix, ret, err);
}

static int write_in(const char *dir, const char *file, const char *text, struct loom_err *err)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    size_t n = strlen(text);
    if (write(fd, text, n) != (ssize_t)n)
        return loom_err_sys(err, errno, "could not write %s to \"%s\"", text, path);
    return 0;
}

static bool has_file(const char *dir, const char *file)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    return access(path, F_OK) == 0;
}

int cgroup_set_limits(const char *suffix, int64_t cpu_millis, int64_t memory_bytes,
                      struct loom_err *err)
{
    char quota[32], mem[32];
    snprintf(mem, sizeof(mem), "%" PRId64, memory_bytes);
    _cleanup_free_ char *cpu = NULL, *memdir = NULL;
    if (pure_v2()) {
        snprintf(quota, sizeof(quota), "%" PRId64 " 100000", cpu_millis * 100);
        if (cgroup_dir(0, "", suffix, &cpu, err) < 0 || write_in(cpu, "cpu.max", quota, err) < 0 ||
            write_in(cpu, "memory.max", mem, err) < 0)
            return -1;
        /* no swap beyond the memory limit, as runc's --memory-swap = --memory */
        return has_file(cpu, "memory.swap.max") ? write_in(cpu, "memory.swap.max", "0", err) : 0;
    }
    snprintf(quota, sizeof(quota), "%" PRId64, cpu_millis * 100);
    if (cgroup_dir(0, "cpu", suffix, &cpu, err) < 0 ||
        cgroup_dir(0, "memory", suffix, &memdir, err) < 0 ||
        write_in(cpu, "cpu.cfs_period_us", "100000", err) < 0 ||
        write_in(cpu, "cpu.cfs_quota_us", quota, err) < 0)
        return -1;
    /* memory + swap is never below memory: raised first, lowered after */
    bool memsw = has_file(memdir, "memory.memsw.limit_in_bytes");
    struct loom_err e2 = LOOM_ERR_INIT;
    if (write_in(memdir, "memory.limit_in_bytes", mem, &e2) < 0) {
        if (!memsw || write_in(memdir, "memory.memsw.limit_in_bytes", mem, err) < 0 ||
            write_in(memdir, "memory.limit_in_bytes", mem, err) < 0)
            return -1;
        return 0;
    }
    return memsw ? write_in(memdir, "memory.memsw.limit_in_bytes", mem, err) : 0;
}

/* a directory itself, not a symlink to one (a hybrid host links cpuacct to
 * cpu,cpuacct: walking both would visit the hierarchy twice) */
static bool is_dir(DIR *d, const struct dirent *de)
{
    if (de->d_type != DT_UNKNOWN)
        return de->d_type == DT_DIR;
    struct stat st;
    return fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

/* SIGKILLs the processes listed in dir's cgroup.procs; false when none is
 * left to kill */
static bool kill_procs(const char *dir)
{
    _cleanup_free_ char *t = NULL;
    if (read_in(dir, "cgroup.procs", &t, NULL) < 0)
        return false;
    bool any = false;
    for (char *save = t, *line; (line = strsep(&save, "\n"));) {
        char *end;
        long pid = strtol(line, &end, 10);
        /* a process outside our pid namespace reads as 0, and kill(0) would
         * hit our own process group; never kill ourselves either */
        if (end == line || *end || pid <= 0 || pid > INT_MAX || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, SIGKILL) == 0)
            any = true;
    }
    return any;
}

/* Kills what runs in dir and its children, then removes them bottom-up. */
static int remove_tree(const char *dir)
{
    int n = 0;
    _cleanup_closedir_ DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.' || !is_dir(d, de))
                continue;
            _cleanup_free_ char *sub = NULL;
            if (asprintf(&sub, "%s/%s", dir, de->d_name) < 0)
                abort();
            n += remove_tree(sub);
        }
    }
    /* a killed process leaves cgroup.procs when it has exited */
    for (int tries = 0; tries < 50 && kill_procs(dir); tries++)
        usleep(20000);
    if (rmdir(dir) == 0)
        n++;
    return n;
}

static int find_and_remove(const char *dir, const char *name, int depth)
{
    if (depth > 8)
        return 0;
    int n = 0;
    _cleanup_closedir_ DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !is_dir(d, de))
            continue;
        _cleanup_free_ char *sub = NULL;
        if (asprintf(&sub, "%s/%s", dir, de->d_name) < 0)
            abort();
        if (strcmp(de->d_name, name) == 0)
            n += remove_tree(sub);
        else
            n += find_and_remove(sub, name, depth + 1);
    }
    return n;
}

int cgroup_remove_named(const char *name)
{
    if (!name || !*name || strchr(name, '/'))
        return 0;
    return find_and_remove(g_cgroot, name, 0);
}
