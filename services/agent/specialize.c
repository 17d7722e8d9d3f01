/* loom-agent: function instances. A stem cell is a function runtime
 * assigned with no project: it runs in a user namespace and a network of its
 * own ("stem-<id>"), shared with no other container. The activator that
 * claims it for a project's function tells this node; the instance then
 * joins the project's network and takes the function's limits. It never
 * changes hands again. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "subjects.h"
#include "util.h"
#include "loom/v1/instance.pb-c.h"

const char *instance_tenant(const struct instance *in, bool claimed, char *buf, size_t n)
{
    if (in->assign->project[0])
        return in->assign->project;
    if (claimed && in->claimed_project[0])
        return in->claimed_project;
    snprintf(buf, n, "stem-%s", in->id);
    return buf;
}

const char *instance_project(const struct instance *in)
{
    return in->assign->project[0] ? in->assign->project : in->claimed_project;
}

/* Moves the instance's address from its stem mark to the project's. */
static int remark(struct agent *a, struct instance *in, const char *project, struct loom_err *err)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/net.json", in->dir);
    _cleanup_free_ char *text = NULL;
    _cleanup_json_ json_t *j = NULL;
    if (loom_read_file(path, &text, NULL, err) < 0 ||
        !(j = loom_json_parse_object(text, strlen(text), err)))
        return loom_err_wrap(err, "its network record");
    const char *ip = json_string_value(json_object_get(j, "ip"));
    json_int_t old = json_integer_value(json_object_get(j, "mark"));
    uint32_t mark = cni_project_mark(project);
    if (!ip)
        return loom_err_set(err, LOOM_EINTERNAL, "its network record has no address");
    /* recorded first: a teardown after a crash removes the new mark */
    json_object_set_new(j, "mark", json_integer((json_int_t)mark));
    if (agent_write_json_nosync(path, j, err) < 0)
        return -1;
    /* the usual case, one nft process: the record says where it is (a record
     * that already says mark is one a crash left between it and nft) */
    struct loom_err e2 = LOOM_ERR_INIT;
    if (old > 0 && (uint32_t)old != mark &&
        cni_isolation_move(a->o.bridge, ip, (uint32_t)old, mark, &e2) == 0)
        return 0;
    if (old > 0 && (uint32_t)old != mark)
        log_warn("instance %s: %s; looking it up", in->id, e2.msg);
    if (cni_isolation_add(a->o.bridge, ip, mark, err) < 0)
        return -1;
    if (old > 0 && (uint32_t)old != mark &&
        cni_isolation_del(a->o.bridge, ip, (uint32_t)old, err) < 0)
        return -1;
    return 0;
}

/* The function's limits on the running container: written into its
 * cgroup, or (where that fails) by the OCI runtime's update. */
static int set_limits(struct agent *a, struct instance *in, int64_t cpu_millis,
                      int64_t memory_bytes, struct loom_err *err)
{
    char cg[512];
    snprintf(cg, sizeof(cg), "%s/%s", a->o.cgroup_parent, in->id);
    struct loom_err e2 = LOOM_ERR_INIT;
    if (cgroup_set_limits(cg, cpu_millis, memory_bytes, &e2) == 0)
        return 0;
    log_warn("instance %s: %s; updating through %s", in->id, e2.msg, a->o.runtime);
    char root[4200], mem[32], quota[32];
    snprintf(root, sizeof(root), "%s/runc", a->o.state_dir);
    snprintf(mem, sizeof(mem), "%" PRId64, memory_bytes);
    snprintf(quota, sizeof(quota), "%" PRId64, cpu_millis * 100); /* per 100 ms period */
    const char *argv[] = {a->o.runtime,    "--root", root,           "update", "--memory",    mem,
                          "--memory-swap", mem,      "--cpu-period", "100000", "--cpu-quota", quota,
                          in->id,          NULL};
    return loom_run(argv, NULL, NULL, NULL, err);
}

static void on_specialize(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    struct agent *a = arg;
    struct loom_err err = LOOM_ERR_INIT;
    Loom__V1__InstanceSpecialize *m = (Loom__V1__InstanceSpecialize *)loom_bus_unpack(
        msg, &loom__v1__instance_specialize__descriptor, &err);
    if (!m) {
        loom_bus_ack(bus, msg, err.msg, false);
        return;
    }
    const char *refuse = NULL;
    bool first = false;
    pthread_mutex_lock(&a->mu);
    struct instance *in = agent_valid_id(m->instance_id) ? agent_find(a, m->instance_id) : NULL;
    if (!in || in->done || in->stop_requested)
        refuse = "no such instance running on this node";
    else if (in->assign->kind != KIND_FUNCTION || in->assign->project[0])
        refuse = "not a stem cell";
    else if (!loom_is_dns_label(m->project) ||
             (in->claimed_project[0] && strcmp(in->claimed_project, m->project) != 0))
        refuse = "claimed by another project";
    else if (m->cpu_millis <= 0 || m->memory_bytes <= 0)
        refuse = "invalid limits";
    if (!refuse && !in->claimed_project[0]) {
        snprintf(in->claimed_project, sizeof(in->claimed_project), "%s", m->project);
        /* from now on the instance holds, and is metered at, its function's shape */
        in->assign->cpu_millis = m->cpu_millis;
        in->assign->memory_bytes = m->memory_bytes;
        first = true;
        if (agent_write_instance_json(a, in, &err) < 0)
            log_warn("instance %s: %s", in->id, err.msg);
    }
    pthread_mutex_unlock(&a->mu);
    /* outside the lock: nft and runc are processes; a repeat is harmless */
    int64_t t0 = loom_mono_ms(), t_net = t0;
    if (!refuse &&
        (remark(a, in, m->project, &err) < 0 ||
         (t_net = loom_mono_ms(), set_limits(a, in, m->cpu_millis, m->memory_bytes, &err) < 0))) {
        log_warn("instance %s: specializing for %s: %s", m->instance_id, m->project, err.msg);
        refuse = "could not specialize";
    }
    if (!refuse)
        log_debug("instance %s: specialized (network %" PRId64 " ms, limits %" PRId64 " ms)",
                  in->id, t_net - t0, loom_mono_ms() - t_net);
    if (!refuse && first) {
        agent_usage_claimed(a, in);
        log_info("instance %s: claimed by %s/%s (generation %" PRId64 ")", in->id, m->project,
                 m->function, m->generation);
    }
    loom_bus_ack(bus, msg, refuse, false);
    loom__v1__instance_specialize__free_unpacked(m, NULL);
}

int agent_subscribe_specialize(struct agent *a, struct loom_err *err)
{
    char subj[256];
    snprintf(subj, sizeof(subj), LOOM_SUBJ_AGENT_SPECIALIZE_FMT, a->o.node_name);
    return loom_bus_subscribe(a->svc->bus, subj, NULL, on_specialize, a, err);
}
