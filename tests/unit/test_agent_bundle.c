/* The agent's OCI config.json: what the runtime is told about isolation and
 * limits, and how an image's user is resolved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "../../services/agent/agent.h"
#include "json.h"

static const char *const argv_[] = {"/bin/sh", "-c", "echo hi", NULL};
static const char *const env_[] = {"A=1", "JOB_INDEX=3", NULL};

static struct bundle_spec base_spec(void)
{
    struct bundle_spec s = {
        .id = "11111111-0000-0000-0000-000000000001",
        .hostname = "11111111-0000-0000-0000-000000000001",
        .argv = argv_,
        .env = env_,
        .netns_path = "/var/lib/loom/netns/x",
        .cgroups_path = "loom-n1/11111111-0000-0000-0000-000000000001",
        .cpu_millis = 500,
        .memory_bytes = 64 << 20,
        .pids_limit = 2048,
    };
    return s;
}

static bool array_has(json_t *a, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) if (json_is_string(v) &&
                                    strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

static void test_process(void **state)
{
    (void)state;
    struct bundle_spec s = base_spec();
    json_t *cfg = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    json_t *p = json_object_get(cfg, "process");
    assert_false(json_is_true(json_object_get(p, "terminal")));
    assert_true(json_is_true(json_object_get(p, "noNewPrivileges")));
    json_t *args = json_object_get(p, "args");
    assert_int_equal(json_array_size(args), 3);
    assert_string_equal(json_string_value(json_array_get(args, 2)), "echo hi");
    json_t *env = json_object_get(p, "env");
    assert_true(array_has(env, "JOB_INDEX=3"));
    assert_true(array_has(env, "HOSTNAME=11111111-0000-0000-0000-000000000001"));
    /* an image without PATH still finds its programs */
    bool path = false;
    for (size_t i = 0; i < json_array_size(env); i++)
        if (strncmp(json_string_value(json_array_get(env, i)), "PATH=", 5) == 0)
            path = true;
    assert_true(path);
    assert_string_equal(json_string_value(json_object_get(p, "cwd")), "/");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(p, "user"), "uid")), 0);
    json_t *rl = json_array_get(json_object_get(p, "rlimits"), 0);
    assert_string_equal(json_string_value(json_object_get(rl, "type")), "RLIMIT_NOFILE");
    assert_int_equal(json_integer_value(json_object_get(rl, "hard")), 65536);
    json_t *caps = json_object_get(p, "capabilities");
    const char *sets[] = {"bounding", "effective", "permitted"};
    for (size_t i = 0; i < 3; i++) {
        json_t *c = json_object_get(caps, sets[i]);
        assert_true(json_array_size(c) <= 11);
        assert_true(array_has(c, "CAP_NET_BIND_SERVICE"));
        assert_false(array_has(c, "CAP_SYS_ADMIN"));
        assert_false(array_has(c, "CAP_NET_RAW"));
        assert_false(array_has(c, "CAP_SYS_PTRACE"));
    }
    json_decref(cfg);
}

static void test_linux(void **state)
{
    (void)state;
    struct bundle_spec s = base_spec();
    json_t *cfg = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    json_t *l = json_object_get(cfg, "linux");
    assert_string_equal(json_string_value(json_object_get(l, "cgroupsPath")),
                        "loom-n1/11111111-0000-0000-0000-000000000001");
    const char *want[] = {"pid", "mount", "network", "ipc", "uts"};
    json_t *ns = json_object_get(l, "namespaces");
    assert_int_equal(json_array_size(ns), 5);
    for (size_t i = 0; i < 5; i++) {
        json_t *n = json_array_get(ns, i);
        assert_string_equal(json_string_value(json_object_get(n, "type")), want[i]);
        if (strcmp(want[i], "network") == 0)
            assert_string_equal(json_string_value(json_object_get(n, "path")),
                                "/var/lib/loom/netns/x");
        assert_true(strcmp(want[i], "user") != 0);
    }
    json_t *r = json_object_get(l, "resources");
    json_t *mem = json_object_get(r, "memory");
    assert_int_equal(json_integer_value(json_object_get(mem, "limit")), 64 << 20);
    /* no swap: the memory+swap limit equals the memory limit */
    assert_int_equal(json_integer_value(json_object_get(mem, "swap")), 64 << 20);
    json_t *cpu = json_object_get(r, "cpu");
    assert_int_equal(json_integer_value(json_object_get(cpu, "quota")), 50000);
    assert_int_equal(json_integer_value(json_object_get(cpu, "period")), 100000);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "pids"), "limit")),
                     2048);
    assert_true(array_has(json_object_get(l, "maskedPaths"), "/proc/kcore"));
    assert_true(array_has(json_object_get(l, "readonlyPaths"), "/proc/sys"));
    json_t *sc = json_object_get(l, "seccomp");
    assert_non_null(sc);
    json_t *rule = json_array_get(json_object_get(sc, "syscalls"), 0);
    assert_string_equal(json_string_value(json_object_get(rule, "action")), "SCMP_ACT_ERRNO");
    const char *denied[] = {"mount",       "umount2", "pivot_root", "kexec_load",
                            "init_module", "bpf",     "ptrace",     "unshare",
                            "setns",       "keyctl",  "reboot",     "open_by_handle_at",
                            "userfaultfd"};
    for (size_t i = 0; i < sizeof(denied) / sizeof(denied[0]); i++)
        assert_true(array_has(json_object_get(rule, "names"), denied[i]));
    assert_false(array_has(json_object_get(rule, "names"), "read"));

    /* mounts: /tmp is a tmpfs, /sys read-only */
    json_t *mounts = json_object_get(cfg, "mounts");
    bool tmp = false, sys_ro = false;
    for (size_t i = 0; i < json_array_size(mounts); i++) {
        json_t *m = json_array_get(mounts, i);
        const char *d = json_string_value(json_object_get(m, "destination"));
        if (strcmp(d, "/tmp") == 0)
            tmp = strcmp(json_string_value(json_object_get(m, "type")), "tmpfs") == 0;
        if (strcmp(d, "/sys") == 0)
            sys_ro = array_has(json_object_get(m, "options"), "ro");
    }
    assert_true(tmp);
    assert_true(sys_ro);
    assert_string_equal(json_string_value(json_object_get(json_object_get(cfg, "root"), "path")),
                        "rootfs");
    json_decref(cfg);
}

static void test_devices(void **state)
{
    (void)state;
    struct bundle_spec s = base_spec();
    struct bundle_device d[1] = {{"/dev/nvidia0", 195, 0}};
    s.devices = d;
    s.ndevices = 1;
    json_t *cfg = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    json_t *l = json_object_get(cfg, "linux");
    json_t *dev = json_array_get(json_object_get(l, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(dev, "path")), "/dev/nvidia0");
    assert_int_equal(json_integer_value(json_object_get(dev, "major")), 195);
    json_t *rules = json_object_get(json_object_get(l, "resources"), "devices");
    assert_int_equal(json_array_size(rules), 2);
    assert_false(json_is_true(json_object_get(json_array_get(rules, 0), "allow")));
    assert_true(json_is_true(json_object_get(json_array_get(rules, 1), "allow")));
    json_decref(cfg);
}

static void test_refusals(void **state)
{
    (void)state;
    json_t *cfg = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    struct bundle_spec s = base_spec();
    s.cgroups_path = "/loom/x"; /* absolute: would escape the agent's cgroup */
    assert_int_equal(bundle_config(&s, &cfg, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    s = base_spec();
    static const char *const empty[] = {NULL};
    s.argv = empty;
    assert_int_equal(bundle_config(&s, &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "no command"));
    /* no limits asked for: no memory or cpu section */
    s = base_spec();
    s.memory_bytes = 0;
    s.cpu_millis = 0;
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    json_t *r = json_object_get(json_object_get(cfg, "linux"), "resources");
    assert_null(json_object_get(r, "memory"));
    assert_null(json_object_get(r, "cpu"));
    json_decref(cfg);
}

static void test_user(void **state)
{
    (void)state;
    const char *passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home:/bin/sh\n"
                         "www:x:33:33::/var/www:/bin/false";
    const char *group = "root:x:0:\nstaff:x:50:\napp:x:1001:";
    uint32_t u = 9, g = 9;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(bundle_resolve_user("", passwd, group, &u, &g, &err), 0);
    assert_int_equal(u, 0);
    assert_int_equal(g, 0);
    assert_int_equal(bundle_resolve_user("app", passwd, group, &u, &g, &err), 0);
    assert_int_equal(u, 1000);
    assert_int_equal(g, 1001);
    assert_int_equal(bundle_resolve_user("1000", passwd, group, &u, &g, &err), 0);
    assert_int_equal(u, 1000);
    assert_int_equal(g, 1001);
    assert_int_equal(bundle_resolve_user("www:staff", passwd, group, &u, &g, &err), 0);
    assert_int_equal(u, 33);
    assert_int_equal(g, 50);
    assert_int_equal(bundle_resolve_user("4242:77", NULL, NULL, &u, &g, &err), 0);
    assert_int_equal(u, 4242);
    assert_int_equal(g, 77);
    assert_int_equal(bundle_resolve_user("4242", NULL, NULL, &u, &g, &err), 0);
    assert_int_equal(g, 0);
    assert_int_equal(bundle_resolve_user("nobody", passwd, group, &u, &g, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_int_equal(bundle_resolve_user("app:nogroup", passwd, group, &u, &g, &err), -1);
    assert_int_equal(bundle_resolve_user("-1", passwd, group, &u, &g, &err), -1);
}

/* secrets and config maps: read-only binds, where a container may have them */
static void test_mounts(void **state)
{
    (void)state;
    struct bundle_spec s = base_spec();
    const struct bundle_bind binds[] = {{"/var/lib/loom/i/mounts/0", "/etc/secret"}};
    s.binds = binds;
    s.nbinds = 1;
    json_t *cfg = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    json_t *m, *found = NULL;
    size_t i;
    json_array_foreach(json_object_get(cfg, "mounts"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "destination")), "/etc/secret") == 0)
            found = m;
    }
    assert_non_null(found);
    assert_string_equal(json_string_value(json_object_get(found, "type")), "bind");
    assert_string_equal(json_string_value(json_object_get(found, "source")),
                        "/var/lib/loom/i/mounts/0");
    bool ro = false;
    json_t *o;
    json_array_foreach(json_object_get(found, "options"), i, o)
    {
        if (strcmp(json_string_value(o), "ro") == 0)
            ro = true;
    }
    assert_true(ro);
    json_decref(cfg);

    assert_true(bundle_mount_path_valid("/etc/secret"));
    assert_true(bundle_mount_path_valid("/a/b.c/d"));
    assert_true(bundle_mount_path_valid("/devices")); /* not /dev itself */
    assert_false(bundle_mount_path_valid(""));
    assert_false(bundle_mount_path_valid("/"));
    assert_false(bundle_mount_path_valid("etc/secret"));
    assert_false(bundle_mount_path_valid("/etc/secret/"));
    assert_false(bundle_mount_path_valid("/etc//secret"));
    assert_false(bundle_mount_path_valid("/etc/./secret"));
    assert_false(bundle_mount_path_valid("/etc/../root"));
    assert_false(bundle_mount_path_valid("/.."));
    assert_false(bundle_mount_path_valid("/proc"));
    assert_false(bundle_mount_path_valid("/proc/sys"));
    assert_false(bundle_mount_path_valid("/sys/fs"));
    assert_false(bundle_mount_path_valid("/dev"));
    assert_false(bundle_mount_path_valid("/dev/shm"));
    assert_false(bundle_mount_path_valid("/a,b"));
    assert_false(bundle_mount_path_valid("/a\nb"));

    assert_true(bundle_mount_file_name_valid("password"));
    assert_true(bundle_mount_file_name_valid(".env"));
    assert_true(bundle_mount_file_name_valid("tls.crt"));
    assert_false(bundle_mount_file_name_valid(""));
    assert_false(bundle_mount_file_name_valid("."));
    assert_false(bundle_mount_file_name_valid(".."));
    assert_false(bundle_mount_file_name_valid("a/b"));
    assert_false(bundle_mount_file_name_valid("../x"));
    assert_false(bundle_mount_file_name_valid("a b"));
}

static void test_userns(void **state)
{
    (void)state;
    struct bundle_spec s = base_spec();
    json_t *cfg = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    /* without: no user namespace, no mappings */
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    json_t *l = json_object_get(cfg, "linux");
    assert_null(json_object_get(l, "uidMappings"));
    json_decref(cfg);

    s.userns_base = 3 * 65536;
    s.sysfs_source = "/var/lib/loom/agent/instances/x/sys";
    assert_int_equal(bundle_config(&s, &cfg, &err), 0);
    l = json_object_get(cfg, "linux");
    json_t *ns = json_object_get(l, "namespaces");
    assert_int_equal(json_array_size(ns), 6);
    json_t *u = json_array_get(ns, 5);
    assert_string_equal(json_string_value(json_object_get(u, "type")), "user");
    assert_null(json_object_get(u, "path"));
    /* /sys: a read-only bind of the sysfs the agent mounted for the network */
    json_t *mnts = json_object_get(cfg, "mounts");
    json_t *sys = NULL;
    for (size_t i = 0; i < json_array_size(mnts); i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(mnts, i), "destination")),
                   "/sys") == 0)
            sys = json_array_get(mnts, i);
    assert_non_null(sys);
    assert_string_equal(json_string_value(json_object_get(sys, "type")), "bind");
    assert_string_equal(json_string_value(json_object_get(sys, "source")), s.sysfs_source);
    json_t *o = json_object_get(sys, "options");
    assert_true(array_has(o, "ro") && array_has(o, "nosuid") && array_has(o, "nodev") &&
                array_has(o, "noexec"));
    assert_false(array_has(o, "rbind"));
    const char *maps[] = {"uidMappings", "gidMappings"};
    for (size_t i = 0; i < 2; i++) {
        json_t *m = json_object_get(l, maps[i]);
        assert_int_equal(json_array_size(m), 1);
        json_t *e = json_array_get(m, 0);
        assert_int_equal(json_integer_value(json_object_get(e, "containerID")), 0);
        assert_int_equal(json_integer_value(json_object_get(e, "hostID")), 196608);
        assert_int_equal(json_integer_value(json_object_get(e, "size")), 65536);
    }
    /* the process's ids stay container ids */
    json_t *user = json_object_get(json_object_get(cfg, "process"), "user");
    assert_int_equal(json_integer_value(json_object_get(user, "uid")), 0);
    json_decref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_process), cmocka_unit_test(test_linux),
        cmocka_unit_test(test_devices), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_user),    cmocka_unit_test(test_mounts),
        cmocka_unit_test(test_userns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
