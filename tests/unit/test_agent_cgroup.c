/* The agent's cgroup paths and counters on fake trees: a pure cgroup v2 host
 * and a v1 host with the v2 "unified" mount beside it (this machine's kind;
 * the pure v2 path cannot run here for real). cgroup_set_roots points the
 * code at <tmp>/cg (for /sys/fs/cgroup) and <tmp>/proc (for /proc).
 *
 * cgroup_remove_named on a fake tree: a real cgroup dir can be removed while
 * it lists its control files, a plain one only when empty, so the fake
 * cgroups it should remove are empty dirs, and a dir holding a cgroup.procs
 * file stands for one that cannot go (processes left): it stays, uncounted. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../services/agent/agent.h"
#include "util.h"

struct fx {
    char tmp[256], cg[300], proc[300];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    snprintf(f->tmp, sizeof(f->tmp), "/tmp/loom-test-cgroup-XXXXXX");
    if (!mkdtemp(f->tmp)) {
        free(f);
        return -1;
    }
    snprintf(f->cg, sizeof(f->cg), "%s/cg", f->tmp);
    snprintf(f->proc, sizeof(f->proc), "%s/proc", f->tmp);
    cgroup_set_roots(f->cg, f->proc);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cgroup_set_roots(NULL, NULL);
    loom_rm_rf(f->tmp, NULL);
    free(f);
    return 0;
}

/* <tmp>/rel, its directory made first */
static void put(struct fx *f, const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", f->tmp, rel);
    char *slash = strrchr(path, '/');
    *slash = 0;
    assert_int_equal(loom_mkdir_p(path, 0755, NULL), 0);
    *slash = '/';
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static void mkdirs(struct fx *f, const char *rel)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", f->tmp, rel);
    assert_int_equal(loom_mkdir_p(path, 0755, NULL), 0);
}

static void rm(struct fx *f, const char *rel)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", f->tmp, rel);
    assert_int_equal(unlink(path), 0);
}

static bool exists(struct fx *f, const char *rel)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", f->tmp, rel);
    return access(path, F_OK) == 0;
}

/* <tmp>/rel holds text */
static void holds(struct fx *f, const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", f->tmp, rel);
    char *got = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_read_file(path, &got, NULL, &err) < 0)
        fail_msg("%s", err.msg);
    assert_string_equal(got, text);
    free(got);
}

/* cgroup_dir's answer, which must be <tmp>/want_rel */
static void dir_is(struct fx *f, pid_t pid, const char *ctrl, const char *suffix,
                   const char *want_rel)
{
    char want[1024];
    snprintf(want, sizeof(want), "%s/%s", f->tmp, want_rel);
    char *got = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    int rc = cgroup_dir(pid, ctrl, suffix, &got, &err);
    if (rc < 0)
        fail_msg("cgroup_dir(%d, \"%s\", %s): %s", (int)pid, ctrl, suffix ? suffix : "NULL",
                 err.msg);
    assert_string_equal(got, want);
    free(got);
}

static void dir_fails(pid_t pid, const char *ctrl, const char *suffix, const char *msg_part)
{
    char *got = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(cgroup_dir(pid, ctrl, suffix, &got, &err), -1);
    assert_null(got);
    assert_int_equal(err.code, LOOM_ENOTFOUND);
    if (!strstr(err.msg, msg_part))
        fail_msg("message \"%s\" does not say \"%s\"", err.msg, msg_part);
}

static void usage_fails(const char *suffix, const char *msg_part)
{
    struct cgroup_usage u = {7, 7, 7};
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(cgroup_usage_of_child(suffix, &u, &err), -1);
    assert_int_equal(u.cpu_ns, 7); /* ret untouched on failure */
    if (!err.msg[0] || !strstr(err.msg, msg_part))
        fail_msg("message \"%s\" does not say \"%s\"", err.msg, msg_part);
}

/* ---- pure v2 -------------------------------------------------------------- */

static void pure_v2_tree(struct fx *f)
{
    put(f, "cg/cgroup.controllers", "cpuset cpu io memory pids\n");
    put(f, "proc/self/cgroup", "0::/loom.slice/agent\n");
    /* runc (fs2) makes a relative cgroupsPath below the parent of its own */
    put(f, "cg/loom.slice/loom-n1/i1/cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n");
    put(f, "cg/loom.slice/loom-n1/i1/memory.current", "4096\n");
    put(f, "cg/loom.slice/loom-n1/i1/memory.peak", "8192\n");
    /* oom_group_kill first: it must not be taken for oom_kill */
    put(f, "cg/loom.slice/loom-n1/i1/memory.events",
        "low 0\nhigh 0\nmax 9\noom 4\noom_group_kill 1\noom_kill 2\n");
}

static void test_v2_dirs(void **state)
{
    struct fx *f = *state;
    pure_v2_tree(f);
    put(f, "proc/4242/cgroup", "0::/loom.slice/loom-n1/c1\n");
    dir_is(f, 0, "", NULL, "cg/loom.slice/agent");
    /* one hierarchy: the controller does not matter */
    dir_is(f, 0, "memory", NULL, "cg/loom.slice/agent");
    dir_is(f, 0, "cpuacct", NULL, "cg/loom.slice/agent");
    dir_is(f, 0, "", "", "cg/loom.slice/agent");
    dir_is(f, 0, "", "loom-n1/i1", "cg/loom.slice/loom-n1/i1");
    dir_is(f, 0, "memory", "loom-n1/i1", "cg/loom.slice/loom-n1/i1");
    dir_is(f, 4242, "", NULL, "cg/loom.slice/loom-n1/c1");

    /* the root cgroup, and a cgroup just below it */
    put(f, "proc/self/cgroup", "0::/\n");
    dir_is(f, 0, "", NULL, "cg");
    dir_is(f, 0, "", "loom-n1/i1", "cg/loom-n1/i1");
    put(f, "proc/self/cgroup", "0::/agent.scope\n");
    dir_is(f, 0, "", NULL, "cg/agent.scope");
    dir_is(f, 0, "memory", "loom-n1/i1", "cg/loom-n1/i1");

    dir_fails(999, "", NULL, "proc/999/cgroup");
    put(f, "proc/self/cgroup", "garbage\n");
    dir_fails(0, "", NULL, "no v2 cgroup");
}

static void test_v2_usage(void **state)
{
    struct fx *f = *state;
    pure_v2_tree(f);
    struct cgroup_usage u;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(cgroup_usage_of_child("loom-n1/i1", &u, &err), 0);
    assert_int_equal(u.cpu_ns, 1500000);
    assert_int_equal(u.mem_bytes, 4096);
    assert_int_equal(u.mem_peak_bytes, 8192);

    /* a container's init: its own cgroup, no parent rule */
    put(f, "proc/4242/cgroup", "0::/loom.slice/loom-n1/i1\n");
    memset(&u, 0, sizeof(u));
    assert_int_equal(cgroup_usage_of_pid(4242, &u, &err), 0);
    assert_int_equal(u.cpu_ns, 1500000);
    assert_int_equal(u.mem_peak_bytes, 8192);

    /* before Linux 5.19 there is no memory.peak */
    rm(f, "cg/loom.slice/loom-n1/i1/memory.peak");
    memset(&u, 0, sizeof(u));
    assert_int_equal(cgroup_usage_of_child("loom-n1/i1", &u, &err), 0);
    assert_int_equal(u.mem_bytes, 4096);
    assert_int_equal(u.mem_peak_bytes, 4096);

    put(f, "cg/loom.slice/loom-n1/i1/memory.current", "max\n");
    usage_fails("loom-n1/i1", "no number in");
    rm(f, "cg/loom.slice/loom-n1/i1/memory.current");
    usage_fails("loom-n1/i1", "memory.current");
    put(f, "cg/loom.slice/loom-n1/i1/cpu.stat", "user_usec 1000\n");
    usage_fails("loom-n1/i1", "no usage_usec value");
    rm(f, "cg/loom.slice/loom-n1/i1/cpu.stat");
    usage_fails("loom-n1/i1", "cpu.stat");
    usage_fails("loom-n1/nope", "loom-n1/nope");
}

static void test_v2_oom(void **state)
{
    struct fx *f = *state;
    pure_v2_tree(f);
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/cg/loom.slice/loom-n1/i1", f->tmp);
    uint64_t n = 99;
    assert_int_equal(cgroup_oom_kills(dir, &n), 0);
    assert_int_equal(n, 2);
    put(f, "cg/loom.slice/loom-n1/i1/memory.events", "low 0\nhigh 0\nmax 0\noom 0\n");
    assert_int_equal(cgroup_oom_kills(dir, &n), -1);
    rm(f, "cg/loom.slice/loom-n1/i1/memory.events");
    assert_int_equal(cgroup_oom_kills(dir, &n), -1);
    assert_int_equal(n, 2);
}

/* ---- v1 with the unified mount (hybrid) ------------------------------------ */

static void v1_tree(struct fx *f)
{
    put(f, "proc/self/cgroup",
        "9:name=systemd:/x\n"
        "8:cpuset:/y\n"
        "7:blkio:/x\n"
        "5:net_cls,net_prio:/x\n"
        "4:memory:/x\n"
        "3:cpu,cpuacct:/x\n"
        "0::/x\n");
    mkdirs(f, "cg/systemd/x");
    mkdirs(f, "cg/cpuset/y");
    mkdirs(f, "cg/net_cls,net_prio/x");
    mkdirs(f, "cg/unified/x");
    /* no blkio mount */
    put(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpuacct.usage", "123456789\n");
    put(f, "cg/memory/x/loom-n1/i1/memory.usage_in_bytes", "1000\n");
    put(f, "cg/memory/x/loom-n1/i1/memory.max_usage_in_bytes", "5000\n");
    put(f, "cg/memory/x/loom-n1/i1/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
}

static void test_v2_limits(void **state)
{
    struct fx *f = *state;
    pure_v2_tree(f);
    put(f, "cg/loom.slice/loom-n1/i1/cpu.max", "100000 100000\n");
    put(f, "cg/loom.slice/loom-n1/i1/memory.max", "500000000\n");
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(cgroup_set_limits("loom-n1/i1", 125, 268435456, &err), 0);
    holds(f, "cg/loom.slice/loom-n1/i1/cpu.max", "12500 100000");
    holds(f, "cg/loom.slice/loom-n1/i1/memory.max", "268435456");
    assert_false(exists(f, "cg/loom.slice/loom-n1/i1/memory.swap.max"));
    put(f, "cg/loom.slice/loom-n1/i1/memory.swap.max", "max\n");
    assert_int_equal(cgroup_set_limits("loom-n1/i1", 500, 536870912, &err), 0);
    holds(f, "cg/loom.slice/loom-n1/i1/cpu.max", "50000 100000");
    holds(f, "cg/loom.slice/loom-n1/i1/memory.swap.max", "0");
}

static void test_v1_dirs(void **state)
{
    struct fx *f = *state;
    v1_tree(f);
    dir_is(f, 0, "memory", NULL, "cg/memory/x");
    dir_is(f, 0, "memory", "loom-n1/i1", "cg/memory/x/loom-n1/i1");
    /* no parent rule on v1 or on the unified mount */
    dir_is(f, 0, "", "loom-n1/i1", "cg/unified/x/loom-n1/i1");
    /* co-mounted, no per-controller symlinks: the mount is the list */
    dir_is(f, 0, "cpuacct", "loom-n1/i1", "cg/cpu,cpuacct/x/loom-n1/i1");
    dir_is(f, 0, "cpu", NULL, "cg/cpu,cpuacct/x");
    dir_is(f, 0, "net_prio", NULL, "cg/net_cls,net_prio/x");
    dir_is(f, 0, "cpuset", NULL, "cg/cpuset/y");
    /* with the symlinks systemd makes, the symlink */
    char target[1024], link[1024];
    snprintf(target, sizeof(target), "%s/cg/cpu,cpuacct", f->tmp);
    snprintf(link, sizeof(link), "%s/cg/cpuacct", f->tmp);
    assert_int_equal(symlink(target, link), 0);
    dir_is(f, 0, "cpuacct", NULL, "cg/cpuacct/x");

    dir_fails(0, "pids", NULL, "no pids cgroup");
    dir_fails(0, "blkio", NULL, "no mount of the blkio cgroup controller");
    dir_fails(0, "acct", NULL, "no acct cgroup"); /* a list entry, not a substring */
    dir_fails(31337, "memory", NULL, "proc/31337/cgroup");

    /* the unified mount missing (v1 only): the "0::" line has no dir */
    char unified[1024];
    snprintf(unified, sizeof(unified), "%s/cg/unified/x", f->tmp);
    assert_int_equal(rmdir(unified), 0);
    *strrchr(unified, '/') = 0;
    assert_int_equal(rmdir(unified), 0);
    dir_fails(0, "", NULL, "no cgroup v2 mount");
}

static void test_v1_usage(void **state)
{
    struct fx *f = *state;
    v1_tree(f);
    struct cgroup_usage u;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(cgroup_usage_of_child("loom-n1/i1", &u, &err), 0);
    assert_int_equal(u.cpu_ns, 123456789);
    assert_int_equal(u.mem_bytes, 1000);
    assert_int_equal(u.mem_peak_bytes, 5000);

    put(f, "proc/77/cgroup", "4:memory:/x/loom-n1/i1\n3:cpu,cpuacct:/x/loom-n1/i1\n0::/x\n");
    memset(&u, 0, sizeof(u));
    assert_int_equal(cgroup_usage_of_pid(77, &u, &err), 0);
    assert_int_equal(u.cpu_ns, 123456789);
    assert_int_equal(u.mem_bytes, 1000);
    assert_int_equal(u.mem_peak_bytes, 5000);

    rm(f, "cg/memory/x/loom-n1/i1/memory.max_usage_in_bytes");
    memset(&u, 0, sizeof(u));
    assert_int_equal(cgroup_usage_of_child("loom-n1/i1", &u, &err), 0);
    assert_int_equal(u.mem_peak_bytes, 1000);

    rm(f, "cg/memory/x/loom-n1/i1/memory.usage_in_bytes");
    usage_fails("loom-n1/i1", "memory.usage_in_bytes");
    rm(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpuacct.usage");
    usage_fails("loom-n1/i1", "cpuacct.usage");
    put(f, "proc/self/cgroup", "4:memory:/x\n0::/x\n");
    usage_fails("loom-n1/i1", "no cpuacct cgroup");
}

static void test_v1_limits(void **state)
{
    struct fx *f = *state;
    v1_tree(f);
    put(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpu.cfs_period_us", "100000\n");
    put(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpu.cfs_quota_us", "100000\n");
    put(f, "cg/memory/x/loom-n1/i1/memory.limit_in_bytes", "500000000\n");
    struct loom_err err = LOOM_ERR_INIT;
    /* no swap accounting: memory alone */
    assert_int_equal(cgroup_set_limits("loom-n1/i1", 125, 268435456, &err), 0);
    holds(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpu.cfs_period_us", "100000");
    holds(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpu.cfs_quota_us", "12500");
    holds(f, "cg/memory/x/loom-n1/i1/memory.limit_in_bytes", "268435456");
    assert_false(exists(f, "cg/memory/x/loom-n1/i1/memory.memsw.limit_in_bytes"));
    /* with it, memory + swap is the same */
    put(f, "cg/memory/x/loom-n1/i1/memory.memsw.limit_in_bytes", "500000000\n");
    assert_int_equal(cgroup_set_limits("loom-n1/i1", 2000, 1073741824, &err), 0);
    holds(f, "cg/cpu,cpuacct/x/loom-n1/i1/cpu.cfs_quota_us", "200000");
    holds(f, "cg/memory/x/loom-n1/i1/memory.limit_in_bytes", "1073741824");
    holds(f, "cg/memory/x/loom-n1/i1/memory.memsw.limit_in_bytes", "1073741824");
    /* a container that is not there */
    assert_int_equal(cgroup_set_limits("loom-n1/gone", 125, 268435456, &err), -1);
    if (!strstr(err.msg, "loom-n1/gone/cpu.cfs_period_us"))
        fail_msg("message \"%s\" does not name the file", err.msg);
}

static void test_v1_oom(void **state)
{
    struct fx *f = *state;
    v1_tree(f);
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/cg/memory/x/loom-n1/i1", f->tmp);
    uint64_t n = 0;
    assert_int_equal(cgroup_oom_kills(dir, &n), 0);
    assert_int_equal(n, 3);
    /* before Linux 4.13 oom_control has no count */
    put(f, "cg/memory/x/loom-n1/i1/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n");
    assert_int_equal(cgroup_oom_kills(dir, &n), -1);
    assert_int_equal(n, 3);
}

/* ---- removal ------------------------------------------------------------- */

static void test_remove_v1(void **state)
{
    struct fx *f = *state;
    mkdirs(f, "cg/memory/x/loom-n1/i1");
    mkdirs(f, "cg/memory/x/loom-n1/i2/sub");
    mkdirs(f, "cg/memory/loom-n1x/i9");
    mkdirs(f, "cg/cpu,cpuacct/loom-n1/i1");
    mkdirs(f, "cg/unified/a/b/c/loom-n1/i3");
    /* processes left (see the top): stays, its empty sibling goes */
    put(f, "cg/pids/loom-n1/busy/cgroup.procs", "");
    mkdirs(f, "cg/pids/loom-n1/idle");
    /* a symlinked hierarchy is not walked (it would be twice) */
    mkdirs(f, "outside/loom-n1/i1");
    char target[1024], link[1024];
    snprintf(target, sizeof(target), "%s/outside", f->tmp);
    snprintf(link, sizeof(link), "%s/cg/cpuacct", f->tmp);
    assert_int_equal(symlink(target, link), 0);

    assert_int_equal(cgroup_remove_named("loom-n1"), 4 + 2 + 2 + 1);
    assert_false(exists(f, "cg/memory/x/loom-n1"));
    assert_true(exists(f, "cg/memory/x"));
    assert_true(exists(f, "cg/memory/loom-n1x/i9"));
    assert_false(exists(f, "cg/cpu,cpuacct/loom-n1"));
    assert_false(exists(f, "cg/unified/a/b/c/loom-n1"));
    assert_true(exists(f, "cg/unified/a/b/c"));
    assert_true(exists(f, "cg/pids/loom-n1/busy/cgroup.procs"));
    assert_false(exists(f, "cg/pids/loom-n1/idle"));
    assert_true(exists(f, "outside/loom-n1/i1"));

    assert_int_equal(cgroup_remove_named("loom-n1"), 0);
    assert_int_equal(cgroup_remove_named(NULL), 0);
    assert_int_equal(cgroup_remove_named(""), 0);
    assert_int_equal(cgroup_remove_named("x/loom-n1"), 0);
    assert_int_equal(cgroup_remove_named("loom-n1x"), 2);
}

static void test_remove_v2(void **state)
{
    struct fx *f = *state;
    put(f, "cg/cgroup.controllers", "cpu memory\n");
    mkdirs(f, "cg/loom.slice/agent");
    mkdirs(f, "cg/loom.slice/loom-n1/i1");
    mkdirs(f, "cg/loom.slice/loom-n1/i2");
    assert_int_equal(cgroup_remove_named("loom-n1"), 3);
    assert_false(exists(f, "cg/loom.slice/loom-n1"));
    assert_true(exists(f, "cg/loom.slice/agent"));
    assert_true(exists(f, "cg/cgroup.controllers"));
}

/* What a cgroup lists is killed, but never pid 0 (a process outside our pid
 * namespace reads as 0, and kill(0) is our whole process group) nor the
 * caller itself. The remover runs in a child with its own process group so
 * that a wrong kill shows as that child dying. */
static void test_remove_kills(void **state)
{
    struct fx *f = *state;
    pid_t victim = fork();
    assert_true(victim >= 0);
    if (victim == 0) {
        alarm(20); /* a victim left alive ends as SIGALRM, failing below */
        for (;;)
            pause();
    }
    char procs[64];
    snprintf(procs, sizeof(procs), "0\n%d\n", (int)victim);
    put(f, "cg/memory/loom-n9/cgroup.procs", procs);
    mkdirs(f, "cg/memory/loom-n9/self");

    pid_t remover = fork();
    assert_true(remover >= 0);
    if (remover == 0) {
        setpgid(0, 0);
        char path[1024];
        snprintf(path, sizeof(path), "%s/cg/memory/loom-n9/self/cgroup.procs", f->tmp);
        FILE *fp = fopen(path, "w");
        if (!fp)
            _exit(100);
        fprintf(fp, "%d\n", (int)getpid());
        fclose(fp);
        /* neither dir can go: both hold a file */
        _exit(cgroup_remove_named("loom-n9"));
    }
    int st;
    assert_int_equal(waitpid(victim, &st, 0), victim);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGKILL);
    assert_int_equal(waitpid(remover, &st, 0), remover);
    if (!WIFEXITED(st))
        fail_msg("the remover died of signal %d", WTERMSIG(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_true(exists(f, "cg/memory/loom-n9/self/cgroup.procs"));
}

/* NULL puts the real roots back */
static void test_real_roots(void **state)
{
    (void)state;
    cgroup_set_roots(NULL, NULL);
    char *d = NULL;
    if (cgroup_dir(0, "memory", NULL, &d, NULL) == 0)
        assert_memory_equal(d, "/sys/fs/cgroup/", 15);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2_dirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_oom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_dirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_oom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_v2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_kills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_roots, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
