/* `loom-agent cleanup`: removes everything an agent state dir accounts for,
 * even after a crash: shims and containers, mounts, CNI allocations and
 * veths, network namespaces, the bridge, instance cgroups, and masquerade
 * rules a failed CNI DEL left behind. Files (logs) stay. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"

static void add_unique(char ***v, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*v)[i], s) == 0)
            return;
    *v = realloc(*v, (*n + 1) * sizeof(char *));
    if (!*v)
        abort();
    (*v)[(*n)++] = strdup(s);
}

static void unmount_under(const char *dir)
{
    /* deepest first: /proc/mounts lists parents before children */
    for (int pass = 0; pass < 5; pass++) {
        _cleanup_free_ char *m = NULL;
        if (loom_read_file("/proc/mounts", &m, NULL, NULL) < 0)
            return;
        char **list = NULL;
        size_t n = 0;
        size_t dl = strlen(dir);
        for (char *save = m, *line; (line = strsep(&save, "\n"));) {
            char *sp = strchr(line, ' ');
            if (!sp)
                continue;
            char *mp = sp + 1;
            char *e = strchr(mp, ' ');
            if (e)
                *e = 0;
            if (strncmp(mp, dir, dl) == 0 && (mp[dl] == '/' || mp[dl] == 0))
                add_unique(&list, &n, mp);
        }
        for (size_t i = n; i > 0; i--) {
            if (umount2(list[i - 1], MNT_DETACH) < 0)
                fprintf(stderr, "cleanup: could not unmount %s: %s\n", list[i - 1],
                        strerror(errno));
            free(list[i - 1]);
        }
        free(list);
        if (n == 0)
            return;
    }
}

static void remove_masquerade(const char *bridge)
{
    char ipt_save[256], ipt[256];
    if (!agent_find_prog("iptables-save", ipt_save, sizeof(ipt_save)))
        return;
    char tail[128];
    snprintf(tail, sizeof(tail), "-%s\\\" id: ", bridge);
    const char *argv[] = {ipt_save, "-t", "nat", NULL};
    _cleanup_free_ char *out = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_run(argv, NULL, NULL, &out, &err) < 0)
        return;
    char **chains = NULL;
    size_t nchains = 0;
    for (char *save = out, *line; (line = strsep(&save, "\n"));) {
        if (strncmp(line, "-A POSTROUTING ", 15) != 0 || !strstr(line, "name: \\\"loom-") ||
            !strstr(line, tail))
            continue;
        char *j = strstr(line, " -j CNI-");
        if (j) {
            char chain[64];
            snprintf(chain, sizeof(chain), "%.*s", (int)strcspn(j + 4, " "), j + 4);
            add_unique(&chains, &nchains, chain);
        }
        /* the rule text comes from iptables-save and is shell-quoted by it */
        _cleanup_free_ char *cmd = NULL;
        if (asprintf(&cmd, "iptables -t nat -D %s", line + 3) < 0)
            abort();
        const char *sh[] = {"/bin/sh", "-c", cmd, NULL};
        if (loom_run(sh, NULL, NULL, NULL, &err) < 0)
            fprintf(stderr, "cleanup: %s\n", err.msg);
    }
    bool have_ipt = agent_find_prog("iptables", ipt, sizeof(ipt));
    for (size_t i = 0; i < nchains && have_ipt; i++) {
        const char *f[] = {ipt, "-t", "nat", "-F", chains[i], NULL};
        const char *x[] = {ipt, "-t", "nat", "-X", chains[i], NULL};
        loom_run(f, NULL, NULL, NULL, &err);
        loom_run(x, NULL, NULL, NULL, &err);
        free(chains[i]);
    }
    free(chains);
}

int sweep_main(int argc, char **argv)
{
    const char *state = NULL, *bridge = NULL, *cgparent = NULL, *cni_path = "/usr/lib/cni",
               *runtime = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--state-dir") == 0)
            state = argv[i + 1];
        else if (strcmp(argv[i], "--bridge") == 0)
            bridge = argv[i + 1];
        else if (strcmp(argv[i], "--cgroup-parent") == 0)
            cgparent = argv[i + 1];
        else if (strcmp(argv[i], "--cni-path") == 0)
            cni_path = argv[i + 1];
        else if (strcmp(argv[i], "--runtime") == 0)
            runtime = argv[i + 1];
        else {
            fprintf(stderr, "cleanup: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!state) {
        fprintf(stderr, "usage: loom-agent cleanup --state-dir DIR [--bridge B] "
                        "[--cgroup-parent P] [--cni-path D] [--runtime R]\n");
        return 2;
    }
    char runc[256];
    if (!runtime && agent_find_prog("runc", runc, sizeof(runc)))
        runtime = runc;
    char **parents = NULL;
    size_t nparents = 0;
    if (cgparent)
        add_unique(&parents, &nparents, cgparent);
    char inst[4200], runcroot[4200];
    snprintf(inst, sizeof(inst), "%s/instances", state);
    snprintf(runcroot, sizeof(runcroot), "%s/runc", state);
    struct loom_err err = LOOM_ERR_INIT;

    /* 1. shims first, so that none restarts or reports anything */
    DIR *d = opendir(inst);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[4500];
        snprintf(p, sizeof(p), "%s/%s/shim.pid", inst, de->d_name);
        _cleanup_free_ char *t = NULL;
        if (loom_read_file(p, &t, NULL, NULL) == 0) {
            pid_t pid = (pid_t)atoi(t);
            if (agent_is_our_shim(pid, de->d_name))
                kill(pid, SIGKILL);
        }
        snprintf(p, sizeof(p), "%s/%s/shim.json", inst, de->d_name);
        _cleanup_free_ char *sj = NULL;
        _cleanup_json_ json_t *j = NULL;
        if (loom_read_file(p, &sj, NULL, NULL) == 0 &&
            (j = loom_json_parse_object(sj, strlen(sj), NULL))) {
            const char *cg = json_string_value(json_object_get(j, "cgroup"));
            if (cg && strchr(cg, '/')) {
                char parent[256];
                snprintf(parent, sizeof(parent), "%.*s", (int)strcspn(cg, "/"), cg);
                add_unique(&parents, &nparents, parent);
            }
        }
    }
    if (d)
        closedir(d);

    /* 2. containers runc knows */
    d = opendir(runcroot);
    while (d && runtime && (de = readdir(d))) {
        if (de->d_name[0] == '.' || de->d_type != DT_DIR)
            continue;
        const char *k[] = {runtime, "--root", runcroot, "kill", de->d_name, "KILL", NULL};
        const char *del[] = {runtime, "--root", runcroot, "delete", "--force", de->d_name, NULL};
        loom_run(k, NULL, NULL, NULL, &err);
        for (int i = 0; i < 20; i++) {
            if (loom_run(del, NULL, NULL, NULL, &err) == 0)
                break;
            usleep(100000);
        }
        printf("container %s removed\n", de->d_name);
    }
    if (d)
        closedir(d);

    /* 3. per instance: rootfs, CNI, netns */
    d = opendir(inst);
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[4500], netns[4500];
        snprintf(p, sizeof(p), "%s/%s/rootfs", inst, de->d_name);
        umount2(p, MNT_DETACH);
        snprintf(netns, sizeof(netns), "%s/netns/%s", state, de->d_name);
        snprintf(p, sizeof(p), "%s/%s/cni.json", inst, de->d_name);
        _cleanup_free_ char *conf = NULL;
        if (loom_read_file(p, &conf, NULL, NULL) == 0) {
            if (cni_del(cni_path, conf, de->d_name, netns, &err) < 0)
                fprintf(stderr, "cleanup: instance %s: %s\n", de->d_name, err.msg);
            else
                unlink(p);
        }
        netns_remove(netns, &err);
        /* a namespace the instance took from the pool */
        snprintf(p, sizeof(p), "%s/%s/net.json", inst, de->d_name);
        if (netpool_release_record(cni_path, state, p, "", &err) < 0)
            fprintf(stderr, "cleanup: instance %s: %s\n", de->d_name, err.msg);
        snprintf(p, sizeof(p), "%s/%s/scratch", inst, de->d_name);
        umount2(p, MNT_DETACH);
    }
    if (d)
        closedir(d);

    /* 3b. the pool of ready network namespaces (made or half made) */
    char pooldir[4200];
    snprintf(pooldir, sizeof(pooldir), "%s/netpool", state);
    d = opendir(pooldir);
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[4500];
        snprintf(p, sizeof(p), "%s/%s", pooldir, de->d_name);
        if (netpool_release_record(cni_path, state, p, NULL, &err) < 0)
            fprintf(stderr, "cleanup: %s: %s\n", p, err.msg);
        else
            unlink(p);
    }
    if (d)
        closedir(d);

    /* 4. whatever is still mounted under the state dir */
    unmount_under(state);

    /* 5. the bridge and its masquerade leftovers */
    if (bridge && bridge[0]) {
        remove_masquerade(bridge);
        if (cni_isolation_remove(bridge, &err) > 0)
            printf("nftables table bridge loom-%s removed\n", bridge);
        char ip[256];
        bool have_ip = agent_find_prog("ip", ip, sizeof(ip));
        const char *show[] = {ip, "link", "show", bridge, NULL};
        const char *del[] = {ip, "link", "del", bridge, NULL};
        if (have_ip && loom_run(show, NULL, NULL, NULL, &err) == 0) {
            if (loom_run(del, NULL, NULL, NULL, &err) < 0)
                fprintf(stderr, "cleanup: %s\n", err.msg);
            else
                printf("bridge %s removed\n", bridge);
        }
    }

    /* 6. cgroups */
    for (size_t i = 0; i < nparents; i++) {
        int n = cgroup_remove_named(parents[i]);
        if (n > 0)
            printf("%d cgroup directories named %s removed\n", n, parents[i]);
        free(parents[i]);
    }
    free(parents);
    return 0;
}
