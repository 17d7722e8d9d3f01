/* cgroup paths and counters, for cgroup v1 (with or without the v2 "unified"
 * mount beside it) and pure v2. runc creates the instance cgroups from the
 * relative cgroupsPath; we only read them and remove leftovers. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "util.h"

static bool pure_v2(void)
{
    return access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0;
}

int cgroup_dir(pid_t pid, const char *controller, const char *suffix, char **ret,
               struct loom_err *err)
{
    char path[64];
    if (pid > 0)
        snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/cgroup");
    _cleanup_free_ char *text = NULL;
    if (loom_read_file(path, &text, NULL, err) < 0)
        return -1;
    bool v2 = pure_v2() || !controller[0];
    for (char *save = text, *line; (line = strsep(&save, "\n"));) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c1 = 0;
        *c2 = 0;
        const char *ctrls = c1 + 1, *cg = c2 + 1;
        bool match = false;
        if (v2) {
            match = strcmp(line, "0") == 0 && !ctrls[0];
        } else {
            /* "cpu,cpuacct" style lists */
            _cleanup_free_ char *list = strdup(ctrls);
            for (char *s2 = list, *c; list && (c = strsep(&s2, ","));)
                if (strcmp(c, controller) == 0)
                    match = true;
        }
        if (!match)
            continue;
        const char *base;
        char mnt[256];
        if (v2)
            base = pure_v2() ? "/sys/fs/cgroup" : "/sys/fs/cgroup/unified";
        else {
            snprintf(mnt, sizeof(mnt), "/sys/fs/cgroup/%s", controller);
            /* cpuacct may be co-mounted as cpu,cpuacct */
            if (access(mnt, F_OK) < 0)
                snprintf(mnt, sizeof(mnt), "/sys/fs/cgroup/cpu,cpuacct");
            base = mnt;
        }
        if (strcmp(cg, "/") == 0)
            cg = "";
        if (asprintf(ret, "%s%s%s%s", base, cg, suffix ? "/" : "", suffix ? suffix : "") < 0)
            abort();
        return 0;
    }
    return loom_err_set(err, LOOM_ENOTFOUND, "no %s cgroup for pid %d",
                        controller[0] ? controller : "v2", (int)pid);
}

static int read_u64(const char *dir, const char *file, uint64_t *ret)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    _cleanup_free_ char *t = NULL;
    if (loom_read_file(path, &t, NULL, NULL) < 0)
        return -1;
    char *end;
    unsigned long long v = strtoull(t, &end, 10);
    if (end == t)
        return -1;
    *ret = v;
    return 0;
}

/* "key value" lines */
static int read_keyed(const char *dir, const char *file, const char *key, uint64_t *ret)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    _cleanup_free_ char *t = NULL;
    if (loom_read_file(path, &t, NULL, NULL) < 0)
        return -1;
    size_t klen = strlen(key);
    for (char *save = t, *line; (line = strsep(&save, "\n"));)
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
            *ret = strtoull(line + klen + 1, NULL, 10);
            return 0;
        }
    return -1;
}

int cgroup_oom_kills(const char *memdir, uint64_t *ret)
{
    if (read_keyed(memdir, "memory.oom_control", "oom_kill", ret) == 0)
        return 0;
    return read_keyed(memdir, "memory.events", "oom_kill", ret);
}

static int usage_from(pid_t pid, const char *suffix, struct cgroup_usage *ret, struct loom_err *err)
{
    struct cgroup_usage u = {0};
    if (pure_v2()) {
        _cleanup_free_ char *dir = NULL;
        if (cgroup_dir(pid, "", suffix, &dir, err) < 0)
            return -1;
        uint64_t usec = 0;
        if (read_keyed(dir, "cpu.stat", "usage_usec", &usec) < 0)
            return loom_err_set(err, LOOM_EIO, "could not read cpu.stat in \"%s\"", dir);
        u.cpu_ns = usec * 1000;
        read_u64(dir, "memory.current", &u.mem_bytes);
        if (read_u64(dir, "memory.peak", &u.mem_peak_bytes) < 0)
            u.mem_peak_bytes = u.mem_bytes;
    } else {
        _cleanup_free_ char *cpu = NULL, *mem = NULL;
        if (cgroup_dir(pid, "cpuacct", suffix, &cpu, err) < 0 ||
            cgroup_dir(pid, "memory", suffix, &mem, err) < 0)
            return -1;
        if (read_u64(cpu, "cpuacct.usage", &u.cpu_ns) < 0)
            return loom_err_set(err, LOOM_EIO, "could not read cpuacct.usage in \"%s\"", cpu);
        if (read_u64(mem, "memory.usage_in_bytes", &u.mem_bytes) < 0)
            return loom_err_set(err, LOOM_EIO, "could not read memory usage in \"%s\"", mem);
        read_u64(mem, "memory.max_usage_in_bytes", &u.mem_peak_bytes);
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

/* Kills what runs in dir and its children, then removes them bottom-up. */
static int remove_tree(const char *dir)
{
    int n = 0;
    _cleanup_closedir_ DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_type != DT_DIR || de->d_name[0] == '.')
                continue;
            char sub[4096];
            snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name);
            n += remove_tree(sub);
        }
    }
    char procs[4200];
    snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
    for (int tries = 0; tries < 50; tries++) {
        _cleanup_free_ char *t = NULL;
        if (loom_read_file(procs, &t, NULL, NULL) < 0 || !t[0])
            break;
        for (char *save = t, *line; (line = strsep(&save, "\n"));)
            if (*line)
                kill((pid_t)atoi(line), SIGKILL);
        usleep(20000);
    }
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
        if (de->d_type != DT_DIR || de->d_name[0] == '.')
            continue;
        char sub[4096];
        snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name);
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
    return find_and_remove("/sys/fs/cgroup", name, 0);
}
