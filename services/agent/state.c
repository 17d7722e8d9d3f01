/* loom-agent: the state directory's files: instance directories, their
 * JSON records (written with or without fsync), hex-encoded protobufs, and
 * the struct instance an assign makes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

char *agent_instance_dir(const char *state_dir, const char *id)
{
    char *d;
    if (asprintf(&d, "%s/instances/%s", state_dir, id) < 0)
        abort();
    return d;
}

int agent_write_json(const char *path, json_t *j, struct loom_err *err)
{
    _cleanup_free_ char *s = json_dumps(j, JSON_COMPACT);
    if (!s)
        return loom_err_set(err, LOOM_EINTERNAL, "could not serialize json");
    return loom_write_file_atomic(path, s, strlen(s), err);
}

int agent_write_file_nosync(const char *path, const char *data, size_t len, struct loom_err *err)
{
    char tmp[4300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s\"", tmp);
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            unlink(tmp);
            return loom_err_sys(err, e, "could not write \"%s\"", tmp);
        }
        off += (size_t)n;
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return loom_err_sys(err, e, "could not rename \"%s\"", tmp);
    }
    return 0;
}

int agent_write_json_nosync(const char *path, json_t *j, struct loom_err *err)
{
    _cleanup_free_ char *s = json_dumps(j, JSON_COMPACT);
    if (!s)
        return loom_err_set(err, LOOM_EINTERNAL, "could not serialize json");
    return agent_write_file_nosync(path, s, strlen(s), err);
}

const char *agent_kind_name(int kind)
{
    return kind == KIND_APP ? "app" : kind == KIND_FUNCTION ? "function" : "job";
}

bool agent_valid_id(const char *id)
{
    /* instance ids are UUIDs; they become paths and runc ids */
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
              (id[i] >= 'A' && id[i] <= 'Z') || id[i] == '-' || id[i] == '_'))
            return false;
    return true;
}

int agent_write_instance_json(struct agent *a, struct instance *in, struct loom_err *err)
{
    (void)a;
    Loom__V1__InstanceAssign *as = in->assign;
    _cleanup_free_ char *hex = loom_hex_alloc(in->assign_pb, in->assign_len);
    _cleanup_json_ json_t *j = json_pack(
        "{s:s,s:s,s:s,s:s?,s:i,s:s?,s:s,s:s,s:s?}", "id", in->id, "project", instance_project(in),
        "kind", agent_kind_name(as->kind), "job_run", as->job_run[0] ? as->job_run : NULL,
        "array_index", as->array_index, "app", as->app[0] ? as->app : NULL, "image", as->image,
        "assign", hex, "claimed_project", in->claimed_project[0] ? in->claimed_project : NULL);
    if (j && in->claimed_project[0]) {
        /* a claimed stem cell's limits are its function's (specialize.c) */
        json_object_set_new(j, "claimed_cpu_millis", json_integer(as->cpu_millis));
        json_object_set_new(j, "claimed_memory_bytes", json_integer(as->memory_bytes));
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/instance.json", in->dir);
    /* no fsync, as for the reports: an unacked assign is re-sent by the
     * scheduler, and after a machine crash there is nothing to re-adopt */
    return agent_write_json_nosync(path, j, err);
}

/* Zeroes a string in place: its bytes leave memory, the field reads "". */
static void wipe(char *s)
{
    if (s)
        memset(s, 0, strlen(s));
}

void agent_scrub_assign(struct agent *a, struct instance *in)
{
    pthread_mutex_lock(&a->mu);
    Loom__V1__InstanceAssign *as = in->assign;
    for (size_t i = 0; i < as->n_env; i++)
        wipe(as->env[i]->value);
    wipe(as->registry_auth);
    for (size_t i = 0; i < as->n_mounts; i++)
        for (size_t k = 0; k < as->mounts[i]->n_files; k++) {
            ProtobufCBinaryData *d = &as->mounts[i]->files[k]->data;
            if (d->data)
                memset(d->data, 0, d->len);
            d->len = 0;
        }
    if (in->assign_pb)
        memset(in->assign_pb, 0, in->assign_len);
    free(in->assign_pb);
    in->assign_len = loom__v1__instance_assign__get_packed_size(as);
    in->assign_pb = malloc(in->assign_len + 1);
    if (!in->assign_pb)
        abort();
    loom__v1__instance_assign__pack(as, in->assign_pb);
    struct loom_err err = LOOM_ERR_INIT;
    if (agent_write_instance_json(a, in, &err) < 0)
        log_warn("instance %s: %s", in->id, err.msg);
    pthread_mutex_unlock(&a->mu);
}

struct instance *agent_instance_new(struct agent *a, const uint8_t *pb, size_t len)
{
    Loom__V1__InstanceAssign *as = loom__v1__instance_assign__unpack(NULL, len, pb);
    if (!as)
        return NULL;
    struct instance *in = calloc(1, sizeof(*in));
    if (!in)
        abort();
    in->assign = as;
    in->assign_pb = malloc(len + 1);
    if (!in->assign_pb)
        abort();
    memcpy(in->assign_pb, pb, len);
    in->assign_len = len;
    snprintf(in->id, sizeof(in->id), "%s", as->instance_id);
    in->dir = agent_instance_dir(a->o.state_dir, in->id);
    in->shim_pid = -1;
    in->init_pid = -1;
    return in;
}
