/* Network namespaces and the CNI plugins (bridge + host-local, loopback),
 * executed directly as the CNI spec describes. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "json.h"

int netns_create(const char *path, struct loom_err *err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s\"", path);
    int p1[2], p2[2];
    if (pipe2(p1, O_CLOEXEC) < 0)
        return loom_err_sys(err, errno, "pipe");
    if (pipe2(p2, O_CLOEXEC) < 0) {
        close(p1[0]), close(p1[1]);
        return loom_err_sys(err, errno, "pipe");
    }
    /* a child makes the namespace and holds it while we bind-mount it:
     * unshare in a thread of this process would move that thread */
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(p1[0]), close(p1[1]), close(p2[0]), close(p2[1]);
        return loom_err_sys(err, e, "fork");
    }
    if (pid == 0) {
        close(p1[0]);
        close(p2[1]);
        char c = unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
        if (write(p1[1], &c, 1) != 1)
            _exit(1);
        (void)!read(p2[0], &c, 1);
        _exit(0);
    }
    close(p1[1]);
    close(p2[0]);
    char c = 0;
    int rc = 0;
    if (read(p1[0], &c, 1) != 1 || c != 'y') {
        rc = loom_err_set(err, LOOM_EIO, "could not create a network namespace");
    } else {
        char src[64];
        snprintf(src, sizeof(src), "/proc/%d/ns/net", (int)pid);
        if (mount(src, path, NULL, MS_BIND, NULL) < 0)
            rc = loom_err_sys(err, errno, "could not bind-mount the network namespace on \"%s\"",
                              path);
    }
    close(p1[0]);
    /* lets the child exit (a byte, not EOF: a concurrent fork elsewhere in
     * the agent may hold a copy of the write end) */
    (void)!write(p2[1], "x", 1);
    close(p2[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    if (rc < 0)
        unlink(path);
    return rc;
}

int netns_remove(const char *path, struct loom_err *err)
{
    if (umount2(path, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
        return loom_err_sys(err, errno, "could not unmount \"%s\"", path);
    if (unlink(path) < 0 && errno != ENOENT)
        return loom_err_sys(err, errno, "could not remove \"%s\"", path);
    return 0;
}

char *cni_bridge_config(const char *node, const char *bridge, const char *subnet,
                        const char *state_dir)
{
    char name[128], datadir[4096];
    /* one network name per node (and bridge), so agents side by side keep
     * separate IPAM state and iptables chains */
    snprintf(name, sizeof(name), "loom-%s-%s", node, bridge);
    snprintf(datadir, sizeof(datadir), "%s/cni", state_dir);
    _cleanup_json_ json_t *j =
        json_pack("{s:s,s:s,s:s,s:s,s:b,s:b,s:b,s:{s:s,s:[[{s:s}]],s:[{s:s}],s:s}}", "cniVersion",
                  "1.0.0", "name", name, "type", "bridge", "bridge", bridge, "isGateway", 1,
                  "ipMasq", 1, "hairpinMode", 1, "ipam", "type", "host-local", "ranges", "subnet",
                  subnet, "routes", "dst", "0.0.0.0/0", "dataDir", datadir);
    return j ? loom_json_dumps(j) : NULL;
}

static int cni_exec(const char *cni_path, const char *cmd, const char *conf, const char *type,
                    const char *id, const char *netns, char **ret_out, struct loom_err *err)
{
    char plugin[4096], e_cmd[64], e_id[128], e_ns[4200], e_path[4200];
    snprintf(plugin, sizeof(plugin), "%s/%s", cni_path, type);
    snprintf(e_cmd, sizeof(e_cmd), "CNI_COMMAND=%s", cmd);
    snprintf(e_id, sizeof(e_id), "CNI_CONTAINERID=%s", id);
    snprintf(e_ns, sizeof(e_ns), "CNI_NETNS=%s", netns);
    snprintf(e_path, sizeof(e_path), "CNI_PATH=%s", cni_path);
    const char *env[] = {
        e_cmd,  e_id,
        e_ns,   "CNI_IFNAME=eth0",
        e_path, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        NULL};
    const char *argv[] = {plugin, NULL};
    if (agent_run(argv, env, conf, ret_out, err) < 0)
        return loom_err_wrap(err, "cni %s %s", type, cmd);
    return 0;
}

int cni_add(const char *cni_path, const char *conf, const char *id, const char *netns,
            char **ret_ip, char **ret_host_if, struct loom_err *err)
{
    _cleanup_free_ char *out = NULL;
    if (cni_exec(cni_path, "ADD", conf, "bridge", id, netns, &out, err) < 0)
        return -1;
    json_error_t jerr;
    _cleanup_json_ json_t *res = json_loads(out, 0, &jerr);
    json_t *ips = res ? json_object_get(res, "ips") : NULL;
    const char *addr = NULL;
    for (size_t i = 0; ips && i < json_array_size(ips); i++) {
        const char *a = json_string_value(json_object_get(json_array_get(ips, i), "address"));
        if (a && strchr(a, '.')) {
            addr = a;
            break;
        }
    }
    if (!addr)
        return loom_err_set(err, LOOM_EINTERNAL, "cni bridge ADD returned no IPv4 address");
    /* the host-side veth: an interface outside the sandbox that is not the bridge */
    const char *bridge = json_string_value(
        json_object_get(json_array_get(json_object_get(res, "interfaces"), 0), "name"));
    const char *host_if = NULL;
    json_t *ifs = json_object_get(res, "interfaces");
    for (size_t i = 0; i < json_array_size(ifs); i++) {
        json_t *f = json_array_get(ifs, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        if (name && !json_object_get(f, "sandbox") && (!bridge || strcmp(name, bridge) != 0))
            host_if = name;
    }
    char *ip = strndup(addr, strcspn(addr, "/"));
    if (!ip)
        abort();
    static const char lo_conf[] =
        "{\"cniVersion\":\"1.0.0\",\"name\":\"lo\",\"type\":\"loopback\"}";
    if (cni_exec(cni_path, "ADD", lo_conf, "loopback", id, netns, NULL, err) < 0) {
        free(ip);
        return -1;
    }
    *ret_ip = ip;
    if (ret_host_if) {
        *ret_host_if = host_if ? strdup(host_if) : NULL;
    }
    return 0;
}

int cni_del(const char *cni_path, const char *conf, const char *id, const char *netns,
            struct loom_err *err)
{
    /* DEL must succeed when things are already gone; a missing netns file is
     * passed as is (the plugins then skip the in-namespace part but still
     * release the IP and the masquerade rules) */
    struct loom_err e2 = LOOM_ERR_INIT;
    static const char lo_conf[] =
        "{\"cniVersion\":\"1.0.0\",\"name\":\"lo\",\"type\":\"loopback\"}";
    (void)cni_exec(cni_path, "DEL", lo_conf, "loopback", id, netns, NULL, &e2);
    if (cni_exec(cni_path, "DEL", conf, "bridge", id, netns, NULL, err) < 0)
        return -1;
    return 0;
}

int cni_isolate_port(const char *host_if, struct loom_err *err)
{
    const char *ip = access("/usr/sbin/ip", X_OK) == 0 ? "/usr/sbin/ip" : "/sbin/ip";
    const char *argv[] = {ip,     "link",         "set",      "dev", host_if,
                          "type", "bridge_slave", "isolated", "on",  NULL};
    if (agent_run(argv, NULL, NULL, NULL, err) < 0)
        return loom_err_wrap(err, "isolating bridge port %s", host_if);
    return 0;
}
