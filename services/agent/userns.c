/* User namespaces for containers (--userns auto|on|off).
 *
 * Each project gets 65536 host ids of its own on this host: its containers'
 * root is host uid <base>, its uid 1000 is <base>+1000, and no two projects
 * share an id, so a process that escapes its container owns nothing of the
 * host's or another project's.
 *
 * The image layers stay owned by host root in the shared cache. Each
 * instance sees them through ID-mapped mounts (mount_setattr with
 * MOUNT_ATTR_IDMAP and a user namespace holding the project's mapping),
 * stacked under its overlay: a file owned by 0 in the image appears owned by
 * <base>, which is root inside the container, so container root can change
 * the image's files as it can without a user namespace (copy-up writes the
 * upper layer with the shifted owner). No layer is copied or chowned.
 *
 * The ranges file holds one line "<base> <project>" per project and is
 * shared, under flock, by every agent on the host, so that agents side by
 * side never give two projects the same ids. A project keeps its range:
 * there are about 65,000 slots above the first base. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "strbuf.h"
#include "util.h"

#define RANGE_SIZE 65536u

/* ---- ranges ------------------------------------------------------------------ */

/* Whether [base, base+RANGE_SIZE) overlaps a range of /etc/subuid-style text
 * ("name:start:count" lines): those ids belong to the host's users. */
static bool overlaps_subids(const char *text, uint64_t base)
{
    char line[512];
    for (const char *p = text; loom_next_line(&p, line, sizeof(line));) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        uint64_t start = strtoull(c1 + 1, NULL, 10), count = strtoull(c2 + 1, NULL, 10);
        if (start < base + RANGE_SIZE && base < start + count)
            return true;
    }
    return false;
}

static int range_from_file(const char *path, uint32_t first_base, const char *project,
                           uint32_t *ret_base, struct loom_err *err)
{
    /* it names a line of the file: the characters of a safe file name */
    if (strlen(project) > 128 || !bundle_mount_file_name_valid(project))
        return loom_err_set(err, LOOM_EINVAL, "invalid project id \"%s\" for a user namespace",
                            project);
    if (first_base == 0 || first_base % RANGE_SIZE != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "user namespace base %" PRIu32 " is not a non-zero multiple of 65536",
                            first_base);
    _cleanup_free_ char *dir = strdup(path);
    if (!dir)
        abort();
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (loom_mkdir_p(dir, 0700, err) < 0)
            return -1;
    }
    _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    if (flock(fd, LOCK_EX) < 0)
        return loom_err_sys(err, errno, "could not lock \"%s\"", path);
    struct strbuf text = STRBUF_INIT;
    char buf[8192];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        strbuf_add(&text, buf, (size_t)n);
    if (n < 0) {
        int e = errno;
        strbuf_release(&text);
        return loom_err_sys(err, e, "could not read \"%s\"", path);
    }
    /* the taken bases, and this project's if it has one */
    size_t cap = 64, used = 0;
    uint32_t *taken = malloc(cap * sizeof(*taken));
    if (!taken)
        abort();
    int64_t found = -1;
    for (char *save = text.buf, *line; text.buf && (line = strsep(&save, "\n"));) {
        char *sp = strchr(line, ' ');
        if (!sp)
            continue;
        *sp = 0;
        char *end;
        unsigned long long b = strtoull(line, &end, 10);
        if (*end || b == 0 || b > UINT32_MAX || b % RANGE_SIZE)
            continue; /* a damaged line gives nothing away */
        if (strcmp(sp + 1, project) == 0)
            found = (int64_t)b;
        if (used == cap) {
            cap *= 2;
            taken = realloc(taken, cap * sizeof(*taken));
            if (!taken)
                abort();
        }
        taken[used++] = (uint32_t)b;
    }
    strbuf_release(&text);
    if (found >= 0) {
        free(taken);
        *ret_base = (uint32_t)found;
        return 0;
    }
    _cleanup_free_ char *subuid = NULL, *subgid = NULL;
    loom_read_file("/etc/subuid", &subuid, NULL, NULL);
    loom_read_file("/etc/subgid", &subgid, NULL, NULL);
    int64_t pick = -1;
    /* the top id (2^32 - 1) is "no id": the last range ends below it */
    for (uint64_t b = first_base; b + RANGE_SIZE < UINT32_MAX && pick < 0; b += RANGE_SIZE) {
        bool busy = overlaps_subids(subuid, b) || overlaps_subids(subgid, b);
        for (size_t i = 0; i < used && !busy; i++)
            busy = taken[i] == b;
        if (!busy)
            pick = (int64_t)b;
    }
    free(taken);
    if (pick < 0)
        return loom_err_set(err, LOOM_ECONFLICT, "no free user namespace range in \"%s\"", path);
    char line[200];
    int len = snprintf(line, sizeof(line), "%" PRId64 " %s\n", pick, project);
    if (lseek(fd, 0, SEEK_END) < 0 || write(fd, line, (size_t)len) != len || fsync(fd) < 0)
        return loom_err_sys(err, errno, "could not write \"%s\"", path);
    *ret_base = (uint32_t)pick;
    return 0;
}

/* a recorded range never changes: once known, a start reads no file */
static pthread_mutex_t known_mu = PTHREAD_MUTEX_INITIALIZER;
static struct known {
    char *key; /* "<path>\n<project>" */
    uint32_t base;
} * known;
static size_t nknown, capknown;

int userns_range(const char *path, uint32_t first_base, const char *project, uint32_t *ret_base,
                 struct loom_err *err)
{
    _cleanup_free_ char *key = NULL;
    if (asprintf(&key, "%s\n%s", path, project) < 0)
        abort();
    pthread_mutex_lock(&known_mu);
    for (size_t i = 0; i < nknown; i++)
        if (strcmp(known[i].key, key) == 0) {
            *ret_base = known[i].base;
            pthread_mutex_unlock(&known_mu);
            return 0;
        }
    pthread_mutex_unlock(&known_mu);
    uint32_t base;
    if (range_from_file(path, first_base, project, &base, err) < 0)
        return -1;
    pthread_mutex_lock(&known_mu);
    if (nknown == capknown) {
        capknown = capknown ? capknown * 2 : 16;
        known = realloc(known, capknown * sizeof(*known));
        if (!known)
            abort();
    }
    known[nknown++] = (struct known){.key = TAKE_PTR(key), .base = base};
    pthread_mutex_unlock(&known_mu);
    *ret_base = base;
    return 0;
}

int userns_release(const char *path, const char *project, struct loom_err *err)
{
    _cleanup_free_ char *key = NULL;
    if (asprintf(&key, "%s\n%s", path, project) < 0)
        abort();
    pthread_mutex_lock(&known_mu);
    for (size_t i = 0; i < nknown; i++)
        if (strcmp(known[i].key, key) == 0) {
            free(known[i].key);
            known[i] = known[--nknown];
            break;
        }
    pthread_mutex_unlock(&known_mu);
    _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : loom_err_sys(err, errno, "could not open \"%s\"", path);
    if (flock(fd, LOCK_EX) < 0)
        return loom_err_sys(err, errno, "could not lock \"%s\"", path);
    struct strbuf text = STRBUF_INIT, kept = STRBUF_INIT;
    char buf[8192];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        strbuf_add(&text, buf, (size_t)n);
    bool dropped = false;
    for (char *save = text.buf, *line; n == 0 && text.buf && (line = strsep(&save, "\n"));) {
        const char *sp = strchr(line, ' ');
        if (!*line)
            continue;
        if (sp && strcmp(sp + 1, project) == 0) {
            dropped = true;
            continue;
        }
        strbuf_addf(&kept, "%s\n", line);
    }
    int rc = 0;
    if (n < 0)
        rc = loom_err_sys(err, errno, "could not read \"%s\"", path);
    else if (dropped &&
             (ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0 ||
              write(fd, kept.buf ? kept.buf : "", kept.len) != (ssize_t)kept.len || fsync(fd) < 0))
        rc = loom_err_sys(err, errno, "could not write \"%s\"", path);
    strbuf_release(&text);
    strbuf_release(&kept);
    return rc;
}

/* ---- namespaces and mounts ---------------------------------------------------------- */

static int write_map(pid_t pid, const char *file, uint32_t base, struct loom_err *err)
{
    char path[64], map[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    int n = snprintf(map, sizeof(map), "0 %" PRIu32 " %u\n", base, RANGE_SIZE);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, map, (size_t)n) != n)
        return loom_err_sys(err, errno, "could not write %s", path);
    return 0;
}

int userns_open(uint32_t base, int *ret_fd, struct loom_err *err)
{
    /* the parent maps the child's new namespace and keeps a descriptor of
     * it: the namespace lives on as long as the descriptor */
    struct ns_child child;
    if (ns_child_start(CLONE_NEWUSER, &child, err) < 0)
        return loom_err_wrap(err, "user namespace");
    int rc = 0;
    if (write_map(child.pid, "uid_map", base, err) < 0 ||
        write_map(child.pid, "gid_map", base, err) < 0) {
        rc = -1;
    } else {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)child.pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            rc = loom_err_sys(err, errno, "could not open %s", path);
        else
            *ret_fd = fd;
    }
    ns_child_end(&child);
    return rc;
}

int userns_open_cached(uint32_t base, int *ret_fd, struct loom_err *err)
{
    /* one namespace per range for the agent's life: a project's starts
     * after its first skip the fork */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static struct {
        uint32_t base;
        int fd;
    } * cache;
    static size_t ncache, capcache;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < ncache; i++)
        if (cache[i].base == base) {
            *ret_fd = cache[i].fd;
            pthread_mutex_unlock(&mu);
            return 0;
        }
    int fd;
    if (userns_open(base, &fd, err) < 0) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    if (ncache == capcache) {
        capcache = capcache ? capcache * 2 : 16;
        cache = realloc(cache, capcache * sizeof(*cache));
        if (!cache)
            abort();
    }
    cache[ncache].base = base;
    cache[ncache].fd = fd;
    ncache++;
    pthread_mutex_unlock(&mu);
    *ret_fd = fd;
    return 0;
}

int userns_netns_sysfs(const char *netns_path, const char *dst, struct loom_err *err)
{
    /* A sysfs shows the network of whoever mounts it, and only a holder of
     * CAP_SYS_ADMIN over the owner of that network may mount one: the
     * container's root (in its own user namespace, the network made by the
     * host) cannot. This thread enters the network namespace (setns moves
     * the calling thread only), mounts it, and comes back; the container
     * gets a bind of it. */
    _cleanup_close_ int target = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (target < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", netns_path);
    _cleanup_close_ int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0)
        return loom_err_sys(err, errno, "could not open this thread's network namespace");
    if (mkdir(dst, 0755) < 0 && errno != EEXIST)
        return loom_err_sys(err, errno, "could not create \"%s\"", dst);
    if (setns(target, CLONE_NEWNET) < 0)
        return loom_err_sys(err, errno, "could not enter \"%s\"", netns_path);
    int rc = 0;
    if (mount("sysfs", dst, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
        rc = loom_err_sys(err, errno, "could not mount a sysfs on \"%s\"", dst);
    } else {
        /* /proc/sys/net is the opening thread's network's */
        int fd = open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0\n", 2) != 2)
            rc = loom_err_sys(err, errno, "could not open low ports in \"%s\"", netns_path);
        if (fd >= 0)
            close(fd);
    }
    if (setns(home, CLONE_NEWNET) < 0) {
        /* this thread would probe and connect from the container's
         * network from now on: nothing sane is left to do */
        fprintf(stderr, "loom-agent: could not return to the host network namespace: %s\n",
                strerror(errno));
        abort();
    }
    return rc;
}

int userns_idmap_bind(const char *src, const char *dst, int userns_fd, struct loom_err *err)
{
    _cleanup_close_ int tree =
        open_tree(AT_FDCWD, src, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW);
    if (tree < 0)
        return loom_err_sys(err, errno, "could not clone the mount of \"%s\"", src);
    struct mount_attr attr = {
        .attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        .userns_fd = (uint64_t)userns_fd,
    };
    if (mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
        return loom_err_sys(err, errno, "could not ID-map the mount of \"%s\"", src);
    if (mkdir(dst, 0700) < 0 && errno != EEXIST)
        return loom_err_sys(err, errno, "could not create \"%s\"", dst);
    if (move_mount(tree, "", AT_FDCWD, dst, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return loom_err_sys(err, errno, "could not mount \"%s\" on \"%s\"", src, dst);
    return 0;
}

int userns_unmount_dir(const char *dir)
{
    int left = 0;
    _cleanup_closedir_ DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -1;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[4600];
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        if (umount2(p, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
            left++;
        else if (rmdir(p) < 0 && errno != ENOENT)
            left++;
    }
    if (left == 0)
        rmdir(dir);
    return left ? -1 : 0;
}

/* ---- probe ------------------------------------------------------------------------ */

int userns_probe(const char *dir, struct loom_err *err)
{
    _cleanup_free_ char *max = NULL;
    if (loom_read_file("/proc/sys/user/max_user_namespaces", &max, NULL, NULL) == 0 &&
        strtol(max, NULL, 10) <= 0)
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "user namespaces are disabled (user.max_user_namespaces = 0)");
    /* a base no project gets (the ranges file starts far below it) */
    const uint32_t probe_base = 0xfffe0000u - RANGE_SIZE;
    int ns = -1;
    if (userns_open(probe_base, &ns, err) < 0)
        return -1;
    char lower[4300], idm[4300], upper[4300], work[4300], merged[4300], f[4400];
    snprintf(lower, sizeof(lower), "%s/lower", dir);
    snprintf(idm, sizeof(idm), "%s/idmapped", dir);
    snprintf(upper, sizeof(upper), "%s/upper", dir);
    snprintf(work, sizeof(work), "%s/work", dir);
    snprintf(merged, sizeof(merged), "%s/merged", dir);
    umount2(merged, MNT_DETACH);
    umount2(idm, MNT_DETACH);
    loom_rm_rf(dir, NULL);
    int rc = -1;
    if (loom_mkdir_p(lower, 0755, err) < 0 || loom_mkdir_p(upper, 0755, err) < 0 ||
        loom_mkdir_p(work, 0700, err) < 0 || loom_mkdir_p(merged, 0755, err) < 0)
        goto out;
    snprintf(f, sizeof(f), "%s/f", lower);
    if (loom_write_file_atomic(f, "x", 1, err) < 0)
        goto out;
    if (userns_idmap_bind(lower, idm, ns, err) < 0) {
        loom_err_wrap(err, "ID-mapped mounts");
        goto out;
    }
    char opts[4400 * 3];
    snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s", idm, upper, work);
    if (mount("overlay", merged, "overlay", 0, opts) < 0) {
        loom_err_sys(err, errno, "overlayfs over an ID-mapped layer");
        goto out;
    }
    struct stat st;
    snprintf(f, sizeof(f), "%s/f", merged);
    if (stat(f, &st) < 0)
        loom_err_sys(err, errno, "could not stat \"%s\"", f);
    else if (st.st_uid != probe_base || st.st_gid != probe_base)
        loom_err_set(err, LOOM_EUNAVAIL,
                     "an ID-mapped layer under overlayfs shows owner %u, not %" PRIu32,
                     (unsigned)st.st_uid, probe_base);
    else
        rc = 0;
out:
    umount2(merged, MNT_DETACH);
    umount2(idm, MNT_DETACH);
    loom_rm_rf(dir, NULL);
    close(ns);
    return rc;
}
