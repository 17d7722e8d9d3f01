/* Network namespaces and the CNI plugins (bridge + host-local, loopback),
 * executed directly as the CNI spec describes. */
#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/netlink.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"

int netns_create(const char *path, struct loom_err *err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s\"", path);
    struct ns_child child;
    int rc = 0;
    if (ns_child_start(CLONE_NEWNET, &child, err) < 0) {
        rc = loom_err_wrap(err, "network namespace");
    } else {
        char src[64];
        snprintf(src, sizeof(src), "/proc/%d/ns/net", (int)child.pid);
        if (mount(src, path, NULL, MS_BIND, NULL) < 0)
            rc = loom_err_sys(err, errno, "could not bind-mount the network namespace on \"%s\"",
                              path);
        ns_child_end(&child);
    }
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
    if (loom_run(argv, env, conf, ret_out, err) < 0)
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

static const char *nft_prog(void)
{
    return access("/usr/sbin/nft", X_OK) == 0 ? "/usr/sbin/nft" : "/sbin/nft";
}

/* nftables in this process, through libnftables (the library the nft
 * program is made of, documented in libnftables(3)) where it is installed:
 * an nft process spends 10-25 ms starting and loading its tables before it
 * does anything, on the path of every claimed stem cell's first call; the
 * library does the same batch in under a millisecond. Loaded at run time,
 * so that hosts without it (and builds without its headers) use the program.
 * One context, used under a lock: it is not thread-safe. */
static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    void *ctx;
    int (*run)(void *ctx, const char *buf);
    const char *(*output)(void *ctx);
    const char *(*error)(void *ctx);
} libnft = {PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, NULL, NULL, NULL, NULL};

/* dlsym's answer into a function pointer (POSIX makes the conversion work;
 * ISO C has no cast for it) */
#define LIBNFT_SYM(h, var, name) (*(void **)&(var) = dlsym((h), (name)))

/* The library opens its netlink socket without O_CLOEXEC: every process the
 * agent starts would inherit it. Ours are all opened with it, so the
 * netfilter netlink sockets without it are the library's. */
static void libnft_cloexec(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    for (struct dirent *de; (de = readdir(d));) {
        int fd = atoi(de->d_name), domain = 0, proto = 0;
        socklen_t len = sizeof(int);
        int flags = de->d_name[0] == '.' ? -1 : fcntl(fd, F_GETFD);
        if (flags < 0 || (flags & FD_CLOEXEC) ||
            getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_NETLINK ||
            getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) < 0 || proto != NETLINK_NETFILTER)
            continue;
        fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
    closedir(d);
}

static void libnft_load(void)
{
    void *h = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return;
    void *(*ctx_new)(uint32_t);
    int (*buffer_output)(void *), (*buffer_error)(void *);
    if (!LIBNFT_SYM(h, ctx_new, "nft_ctx_new") ||
        !LIBNFT_SYM(h, buffer_output, "nft_ctx_buffer_output") ||
        !LIBNFT_SYM(h, buffer_error, "nft_ctx_buffer_error") ||
        !LIBNFT_SYM(h, libnft.run, "nft_run_cmd_from_buffer") ||
        !LIBNFT_SYM(h, libnft.output, "nft_ctx_get_output_buffer") ||
        !LIBNFT_SYM(h, libnft.error, "nft_ctx_get_error_buffer"))
        return;
    void *ctx = ctx_new(0); /* NFT_CTX_DEFAULT */
    if (ctx)
        libnft_cloexec();
    if (ctx && buffer_output(ctx) == 0 && buffer_error(ctx) == 0)
        libnft.ctx = ctx; /* kept for the process's life, as the library itself */
}

/* Runs an nft script (one transaction), its output into *ret_out when not
 * NULL; the error names nft's own message. */
static int nft_run(const char *script, char **ret_out, struct loom_err *err)
{
    pthread_once(&libnft.once, libnft_load);
    if (!libnft.ctx) {
        const char *argv[] = {nft_prog(), "-f", "-", NULL};
        return loom_run(argv, NULL, script, ret_out, err);
    }
    pthread_mutex_lock(&libnft.mu);
    int rc = libnft.run(libnft.ctx, script);
    /* each read empties its buffer for the next command */
    const char *out = libnft.output(libnft.ctx), *e = libnft.error(libnft.ctx);
    if (rc != 0) {
        size_t n = e ? strlen(e) : 0;
        while (n > 0 && (e[n - 1] == '\n' || e[n - 1] == ' '))
            n--;
        loom_err_set(err, LOOM_EIO, "nft: %.*s", (int)n, n ? e : "failed");
    } else if (ret_out && !(*ret_out = strdup(out ? out : ""))) {
        abort();
    }
    pthread_mutex_unlock(&libnft.mu);
    return rc == 0 ? 0 : -1;
}

static int nft_batch(const char *script, struct loom_err *err)
{
    return nft_run(script, NULL, err);
}

uint32_t cni_project_mark(const char *project)
{
    /* FNV-1a; 0 is reserved for "not a container of this bridge" */
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)(project ? project : ""); *p; p++)
        h = (h ^ *p) * 16777619u;
    return h ? h : 1;
}

int cni_isolation_setup(const char *bridge, const char *subnet, struct loom_err *err)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static bool done;
    struct in_addr net;
    char addr[INET_ADDRSTRLEN], gw[INET_ADDRSTRLEN];
    snprintf(addr, sizeof(addr), "%.*s", (int)strcspn(subnet, "/"), subnet);
    if (inet_pton(AF_INET, addr, &net) != 1)
        return loom_err_set(err, LOOM_EINVAL, "subnet \"%s\" is not an IPv4 prefix", subnet);
    /* host-local's default gateway: the bridge's own address */
    struct in_addr g = {htonl(ntohl(net.s_addr) + 1)};
    inet_ntop(AF_INET, &g, gw, sizeof(gw));
    pthread_mutex_lock(&mu);
    if (done) {
        pthread_mutex_unlock(&mu);
        return 0;
    }
    /* Containers of one node share one bridge (L2) and are told apart by
     * address: proj maps a container address to its project's mark, member
     * holds (address . mark). Bridged frames between two addresses of the
     * subnet (forward), and frames the host routes back onto the bridge
     * (output, not from the bridge's own address) pass only when both ends
     * carry the same mark. The host (activator) and the outside are not
     * affected. Re-running flushes and re-adds the rules, elements stay. */
    struct strbuf s = STRBUF_INIT;
    const char *t = bridge;
    strbuf_addf(&s,
                "add table bridge loom-%s\n"
                "add map bridge loom-%s proj { type ipv4_addr : mark; }\n"
                "add set bridge loom-%s member { type ipv4_addr . mark; }\n"
                "add chain bridge loom-%s check\n"
                "add chain bridge loom-%s forward { type filter hook forward priority 0; "
                "policy accept; }\n"
                "add chain bridge loom-%s output { type filter hook output priority 0; "
                "policy accept; }\n"
                "flush chain bridge loom-%s check\n"
                "flush chain bridge loom-%s forward\n"
                "flush chain bridge loom-%s output\n"
                "add rule bridge loom-%s check meta mark set 0\n"
                "add rule bridge loom-%s check meta mark set ip saddr map @proj\n"
                "add rule bridge loom-%s check ip daddr . meta mark @member accept\n"
                "add rule bridge loom-%s check drop\n"
                "add rule bridge loom-%s forward ip saddr %s ip daddr %s jump check\n"
                "add rule bridge loom-%s output ip saddr %s ip saddr != %s ip daddr %s "
                "jump check\n",
                t, t, t, t, t, t, t, t, t, t, t, t, t, t, subnet, subnet, t, subnet, gw, subnet);
    int rc = nft_batch(s.buf, err);
    strbuf_release(&s);
    if (rc == 0)
        done = true;
    pthread_mutex_unlock(&mu);
    return rc < 0 ? loom_err_wrap(err, "network isolation rules for bridge %s", bridge) : 0;
}

/* The mark the proj map holds for ip into ret: 1, or 0 when it holds none. */
static int proj_mark(const char *bridge, const char *ip, uint32_t *ret, struct loom_err *err)
{
    char script[200];
    snprintf(script, sizeof(script), "get element bridge loom-%s proj { %s }\n", bridge, ip);
    _cleanup_free_ char *out = NULL;
    struct loom_err e = LOOM_ERR_INIT;
    if (nft_run(script, &out, &e) < 0) {
        if (strstr(e.msg, "No such file or directory"))
            return 0;
        return loom_err_set(err, e.code, "%s", e.msg);
    }
    /* elements = { 10.88.0.5 : 0x0000002a } */
    const char *at = out ? strstr(out, " : 0x") : NULL;
    char *end;
    unsigned long v = at ? strtoul(at + 3, &end, 16) : 0;
    if (!at || end == at + 3 || v > UINT32_MAX)
        return loom_err_set(err, LOOM_EIO, "nft get element printed no mark for %s", ip);
    *ret = (uint32_t)v;
    return 1;
}

/* What removes ip from proj and member when proj maps it to cur (the
 * member element added first, so that its delete cannot fail). */
static void drop_script(struct strbuf *s, const char *bridge, const char *ip, uint32_t cur)
{
    strbuf_addf(s,
                "add element bridge loom-%s member { %s . 0x%x }\n"
                "delete element bridge loom-%s member { %s . 0x%x }\n"
                "delete element bridge loom-%s proj { %s }\n",
                bridge, ip, cur, bridge, ip, cur, bridge, ip);
}

/* The script that gives ip the mark: its proj entry and its member element. */
static void admit_script(struct strbuf *s, const char *bridge, const char *ip, uint32_t mark)
{
    strbuf_addf(s,
                "add element bridge loom-%s proj { %s : 0x%x }\n"
                "add element bridge loom-%s member { %s . 0x%x }\n",
                bridge, ip, mark, bridge, ip, mark);
}

int cni_isolation_add(const char *bridge, const char *ip, uint32_t mark, struct loom_err *err)
{
    /* an address may still carry another mark: a stem cell's before it was
     * specialized, or a stale entry a crash left for a reused address; it
     * goes in the same batch, so that ip never has two */
    uint32_t cur = 0;
    int has = proj_mark(bridge, ip, &cur, err);
    if (has < 0)
        return loom_err_wrap(err, "admitting %s to its project's network", ip);
    _cleanup_strbuf_ struct strbuf s = STRBUF_INIT;
    if (has && cur != mark)
        drop_script(&s, bridge, ip, cur);
    admit_script(&s, bridge, ip, mark);
    if (nft_batch(s.buf, err) < 0)
        return loom_err_wrap(err, "admitting %s to its project's network", ip);
    return 0;
}

int cni_isolation_move(const char *bridge, const char *ip, uint32_t from, uint32_t to,
                       struct loom_err *err)
{
    /* one batch, applied as a whole or not at all: it fails when proj has
     * no entry for ip */
    _cleanup_strbuf_ struct strbuf s = STRBUF_INIT;
    drop_script(&s, bridge, ip, from);
    admit_script(&s, bridge, ip, to);
    if (nft_batch(s.buf, err) < 0)
        return loom_err_wrap(err, "moving %s to another network", ip);
    return 0;
}

int cni_isolation_del(const char *bridge, const char *ip, uint32_t mark, struct loom_err *err)
{
    /* only ip's entry for this mark: after a move to another mark, the
     * new one stays */
    uint32_t cur = 0;
    int has = proj_mark(bridge, ip, &cur, err);
    if (has < 0)
        return loom_err_wrap(err, "removing %s from its project's network", ip);
    _cleanup_strbuf_ struct strbuf s = STRBUF_INIT;
    if (has && cur == mark)
        drop_script(&s, bridge, ip, mark);
    else
        strbuf_addf(&s,
                    "add element bridge loom-%s member { %s . 0x%x }\n"
                    "delete element bridge loom-%s member { %s . 0x%x }\n",
                    bridge, ip, mark, bridge, ip, mark);
    if (nft_batch(s.buf, err) < 0)
        return loom_err_wrap(err, "removing %s from its project's network", ip);
    return 0;
}

int cni_isolation_remove(const char *bridge, struct loom_err *err)
{
    const char *list[] = {nft_prog(), "list", "table", "bridge", NULL, NULL};
    char table[64];
    snprintf(table, sizeof(table), "loom-%s", bridge);
    list[4] = table;
    struct loom_err e2 = LOOM_ERR_INIT;
    if (loom_run(list, NULL, NULL, NULL, &e2) < 0)
        return 0; /* no such table */
    const char *del[] = {nft_prog(), "delete", "table", "bridge", table, NULL};
    if (loom_run(del, NULL, NULL, NULL, err) < 0)
        return loom_err_wrap(err, "removing nftables table bridge %s", table);
    return 1;
}

/* ---- the pool of ready network namespaces ---------------------------------- */

struct netpool_entry {
    char cni_id[48], ip[64];
    char project[80]; /* "": fresh; else kept after one of project's instances */
    struct netpool_entry *next;
};

struct netpool {
    char *state_dir, *cni_path, *conf;
    int size, making;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct netpool_entry *ready; /* fresh and kept entries, newest first */
    int nready, nkept;           /* fresh ones (the refill target), kept ones */
    int64_t last_take_ms;
};

#define NETPOOL_REFILL_DELAY_MS 250

static void netpool_paths(const struct netpool *p, const char *cni_id, char *netns, size_t nn,
                          char *rec, size_t nr, const char *ext)
{
    snprintf(netns, nn, "%s/netns/%s", p->state_dir, cni_id);
    snprintf(rec, nr, "%s/netpool/%s.%s", p->state_dir, cni_id, ext);
}

int netpool_release_record(const char *cni_path, const char *state_dir, const char *rec_path,
                           const char *fallback_id, struct loom_err *err)
{
    _cleanup_free_ char *text = NULL;
    _cleanup_json_ json_t *j = NULL;
    if (loom_read_file(rec_path, &text, NULL, NULL) < 0 ||
        !(j = loom_json_parse_object(text, strlen(text), NULL)))
        return 0;
    const char *id = json_string_value(json_object_get(j, "cni_id"));
    const char *conf = json_string_value(json_object_get(j, "conf"));
    if (!id)
        id = fallback_id;
    if (!id || !conf)
        return 0;
    char netns[4200];
    snprintf(netns, sizeof(netns), "%s/netns/%s", state_dir, id);
    if (cni_del(cni_path, conf, id, netns, err) < 0)
        return -1;
    return netns_remove(netns, err);
}

/* One entry: the record <id>.pending (what a DEL needs) first, then the
 * namespace and CNI ADD, then <id>.json (ready) replaces it. */
static int netpool_make(struct netpool *p, struct netpool_entry **ret, struct loom_err *err)
{
    char uuid[37], netns[4200], pending[4200], readyp[4200];
    loom_uuid4(uuid);
    struct netpool_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    snprintf(e->cni_id, sizeof(e->cni_id), "pool-%s", uuid);
    netpool_paths(p, e->cni_id, netns, sizeof(netns), pending, sizeof(pending), "pending");
    netpool_paths(p, e->cni_id, netns, sizeof(netns), readyp, sizeof(readyp), "json");
    _cleanup_json_ json_t *j = json_pack("{s:s,s:s}", "cni_id", e->cni_id, "conf", p->conf);
    _cleanup_free_ char *ip = NULL;
    if (agent_write_json(pending, j, err) < 0)
        goto fail;
    if (netns_create(netns, err) < 0)
        goto fail_pending;
    if (cni_add(p->cni_path, p->conf, e->cni_id, netns, &ip, NULL, err) < 0)
        goto fail_pending;
    snprintf(e->ip, sizeof(e->ip), "%s", ip);
    json_object_set_new(j, "ip", json_string(ip));
    if (agent_write_json(readyp, j, err) < 0)
        goto fail_pending;
    unlink(pending);
    *ret = e;
    return 0;
fail_pending : {
    struct loom_err e2 = LOOM_ERR_INIT;
    if (netpool_release_record(p->cni_path, p->state_dir, pending, NULL, &e2) == 0)
        unlink(pending);
}
fail:
    free(e);
    return -1;
}

static void *netpool_maker(void *arg);

static void *netpool_main(void *arg)
{
    struct netpool *p = arg;
    /* what a previous agent left: ready entries are used, half-made ones undone */
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/netpool", p->state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t n = strlen(de->d_name);
        char path[4500];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (n > 8 && strcmp(de->d_name + n - 8, ".pending") == 0) {
            struct loom_err e2 = LOOM_ERR_INIT;
            if (netpool_release_record(p->cni_path, p->state_dir, path, NULL, &e2) == 0)
                unlink(path);
        } else if (n > 5 && strcmp(de->d_name + n - 5, ".json") == 0) {
            _cleanup_free_ char *text = NULL;
            _cleanup_json_ json_t *j = NULL;
            const char *id = NULL, *ip = NULL, *proj = NULL;
            if (loom_read_file(path, &text, NULL, NULL) == 0 &&
                (j = loom_json_parse_object(text, strlen(text), NULL)) &&
                (id = json_string_value(json_object_get(j, "cni_id"))) &&
                (ip = json_string_value(json_object_get(j, "ip"))) && strlen(id) < 48) {
                struct netpool_entry *e = calloc(1, sizeof(*e));
                if (!e)
                    abort();
                snprintf(e->cni_id, sizeof(e->cni_id), "%s", id);
                snprintf(e->ip, sizeof(e->ip), "%s", ip);
                proj = json_string_value(json_object_get(j, "project"));
                if (proj && strlen(proj) < sizeof(e->project))
                    snprintf(e->project, sizeof(e->project), "%s", proj);
                pthread_mutex_lock(&p->mu);
                e->next = p->ready;
                p->ready = e;
                if (e->project[0])
                    p->nkept++;
                else
                    p->nready++;
                pthread_mutex_unlock(&p->mu);
            }
        }
    }
    if (d)
        closedir(d);
    /* a second maker: a CNI ADD (two plugin execs) takes about as long as
     * a start, so one maker falls behind a run of starts */
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (p->size > 1)
        pthread_create(&t, &attr, netpool_maker, p);
    pthread_attr_destroy(&attr);
    return netpool_maker(p);
}

static void *netpool_maker(void *arg)
{
    struct netpool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->nready + p->making >= p->size)
            pthread_cond_wait(&p->cond, &p->mu);
        /* a start that just took an entry is still in runc: while half the
         * pool is left, refill a little later instead of competing for the
         * cpu; below that, now, or a run of starts drains it and the next
         * start pays for a whole CNI ADD */
        int64_t quiet = p->last_take_ms + NETPOOL_REFILL_DELAY_MS - loom_mono_ms();
        if (p->nready * 2 >= p->size && quiet > 0) {
            pthread_mutex_unlock(&p->mu);
            usleep((useconds_t)quiet * 1000);
            continue;
        }
        p->making++;
        pthread_mutex_unlock(&p->mu);
        struct netpool_entry *e = NULL;
        struct loom_err err = LOOM_ERR_INIT;
        int rc = netpool_make(p, &e, &err);
        pthread_mutex_lock(&p->mu);
        p->making--;
        if (rc == 0) {
            e->next = p->ready;
            p->ready = e;
            p->nready++;
        }
        pthread_mutex_unlock(&p->mu);
        if (rc < 0) {
            fprintf(stderr, "netpool: %s\n", err.msg);
            sleep(1);
        }
    }
    return NULL;
}

int netpool_open(const char *state_dir, const char *cni_path, const char *conf, int size,
                 struct netpool **ret, struct loom_err *err)
{
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/netpool", state_dir);
    if (loom_mkdir_p(dir, 0700, err) < 0)
        return -1;
    struct netpool *p = calloc(1, sizeof(*p));
    if (!p)
        abort();
    p->state_dir = strdup(state_dir);
    p->cni_path = strdup(cni_path);
    p->conf = strdup(conf);
    if (!p->state_dir || !p->cni_path || !p->conf)
        abort();
    p->size = size;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* lives as long as the agent: the entries it leaves are used again by the
     * next agent, or undone by `loom-agent cleanup` */
    int rc = pthread_create(&t, &attr, netpool_main, p);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        return loom_err_set(err, LOOM_EINTERNAL, "could not start the network pool thread");
    *ret = p;
    return 0;
}

bool netpool_take(struct netpool *p, const char *project, const char *dest_path,
                  char ret_cni_id[48], char ret_ip[64])
{
    for (;;) {
        /* one the project used before, else a fresh one: never another
         * project's */
        pthread_mutex_lock(&p->mu);
        struct netpool_entry **pe = NULL, **fresh = NULL;
        for (struct netpool_entry **q = &p->ready; *q && !pe; q = &(*q)->next) {
            if ((*q)->project[0] && strcmp((*q)->project, project) == 0)
                pe = q;
            else if (!(*q)->project[0] && !fresh)
                fresh = q;
        }
        if (!pe)
            pe = fresh;
        struct netpool_entry *e = pe ? *pe : NULL;
        if (e) {
            *pe = e->next;
            if (e->project[0]) {
                p->nkept--;
            } else {
                p->nready--;
                p->last_take_ms = loom_mono_ms();
                pthread_cond_signal(&p->cond);
            }
        }
        pthread_mutex_unlock(&p->mu);
        if (!e)
            return false;
        char netns[4200], rec[4200];
        netpool_paths(p, e->cni_id, netns, sizeof(netns), rec, sizeof(rec), "json");
        /* the record moves into the instance's directory in one step: from
         * then on the instance's teardown (or cleanup) owns the namespace */
        bool ok = rename(rec, dest_path) == 0;
        if (ok) {
            memcpy(ret_cni_id, e->cni_id, 48);
            memcpy(ret_ip, e->ip, 64);
        }
        free(e);
        if (ok)
            return true;
    }
}

bool netpool_keep(struct netpool *p, const char *project, const char *rec_path)
{
    _cleanup_free_ char *text = NULL;
    _cleanup_json_ json_t *j = NULL;
    const char *id, *ip, *conf;
    if (!project[0] || strlen(project) >= 80 || loom_read_file(rec_path, &text, NULL, NULL) < 0 ||
        !(j = loom_json_parse_object(text, strlen(text), NULL)) ||
        !(id = json_string_value(json_object_get(j, "cni_id"))) || strlen(id) >= 48 ||
        !(ip = json_string_value(json_object_get(j, "ip"))) || strlen(ip) >= 64 ||
        !(conf = json_string_value(json_object_get(j, "conf"))) || strcmp(conf, p->conf) != 0)
        return false;
    /* room for it: at most size kept; else the oldest kept of another
     * project goes (its DEL runs here, in the caller's teardown) */
    struct netpool_entry *evicted = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->nkept >= p->size) {
        struct netpool_entry **oldest = NULL;
        for (struct netpool_entry **q = &p->ready; *q; q = &(*q)->next)
            if ((*q)->project[0] && strcmp((*q)->project, project) != 0)
                oldest = q;
        if (oldest) {
            evicted = *oldest;
            *oldest = evicted->next;
            p->nkept--;
        }
    }
    bool room = p->nkept < p->size;
    pthread_mutex_unlock(&p->mu);
    if (evicted) {
        char netns[4200], rec[4200];
        netpool_paths(p, evicted->cni_id, netns, sizeof(netns), rec, sizeof(rec), "json");
        struct loom_err err = LOOM_ERR_INIT;
        if (netpool_release_record(p->cni_path, p->state_dir, rec, NULL, &err) == 0)
            unlink(rec);
        free(evicted);
    }
    if (!room)
        return false;
    struct netpool_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    snprintf(e->cni_id, sizeof(e->cni_id), "%s", id);
    snprintf(e->ip, sizeof(e->ip), "%s", ip);
    snprintf(e->project, sizeof(e->project), "%s", project);
    char netns[4200], rec[4200];
    netpool_paths(p, e->cni_id, netns, sizeof(netns), rec, sizeof(rec), "json");
    _cleanup_json_ json_t *kept =
        json_pack("{s:s,s:s,s:s,s:s}", "cni_id", id, "conf", conf, "ip", ip, "project", project);
    _cleanup_free_ char *out = json_dumps(kept, JSON_COMPACT);
    /* written beside, then the instance's record goes: a crash between
     * leaves two records of one namespace, and its DEL succeeds twice */
    if (!out || agent_write_file_nosync(rec, out, strlen(out), NULL) < 0) {
        free(e);
        return false;
    }
    unlink(rec_path);
    pthread_mutex_lock(&p->mu);
    e->next = p->ready;
    p->ready = e;
    p->nkept++;
    pthread_mutex_unlock(&p->mu);
    return true;
}
