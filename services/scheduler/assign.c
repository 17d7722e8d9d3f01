/* The InstanceAssign of one instance, from its row, its decoded spec and
 * its resolved references: no I/O, so that a unit test sees exactly what an
 * agent would be told. */
#include "sched.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/v1/instance.pb-c.h"
#include "spec.h"

/* Everything the message points to that is not in the row, the spec or
 * the refs. */
struct storage {
    Loom__V1__InstanceAssign msg;
    char **command, **args;
    Loom__V1__EnvVar *vars;
    Loom__V1__EnvVar **var_ptrs;
    size_t nvars, cap;
    char **owned; /* strings made here (numbers) */
    size_t nowned;
    Loom__V1__Mount *mounts;
    Loom__V1__Mount **mount_ptrs;
    size_t nmounts;
    Loom__V1__Probe readiness, liveness;
    Loom__V1__BuildOutput output;
    char revision[96];
};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        abort();
    return p;
}

/* The strings of a JSON array of strings, pointing into it. */
static char **strings(json_t *arr, size_t *ret_n)
{
    size_t n = json_array_size(arr), w = 0;
    char **v = xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const char *x = json_string_value(json_array_get(arr, i));
        if (x)
            v[w++] = (char *)x;
    }
    *ret_n = w;
    return v;
}

static void env_add(struct storage *st, const char *name, const char *value)
{
    if (st->nvars == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 32;
        st->vars = realloc(st->vars, st->cap * sizeof(*st->vars));
        st->var_ptrs = realloc(st->var_ptrs, st->cap * sizeof(*st->var_ptrs));
        if (!st->vars || !st->var_ptrs)
            abort();
        for (size_t i = 0; i < st->nvars; i++)
            st->var_ptrs[i] = &st->vars[i];
    }
    Loom__V1__EnvVar *v = &st->vars[st->nvars];
    loom__v1__env_var__init(v);
    v->name = (char *)name;
    v->value = (char *)value;
    st->var_ptrs[st->nvars++] = v;
}

static void env_addf(struct storage *st, const char *name, long long value)
{
    char *s = NULL;
    if (asprintf(&s, "%lld", value) < 0)
        abort();
    st->owned = realloc(st->owned, (st->nowned + 1) * sizeof(char *));
    if (!st->owned)
        abort();
    st->owned[st->nowned++] = s;
    env_add(st, name, s);
}

static Loom__V1__Probe *probe(const struct loom_probe *p, Loom__V1__Probe *out)
{
    if (!p->set)
        return NULL;
    loom__v1__probe__init(out);
    out->type = (char *)(p->http ? "http" : "tcp");
    out->path = (char *)p->path;
    out->port = (uint32_t)p->port;
    out->initial_delay_seconds = (uint32_t)p->initial_delay;
    out->period_seconds = (uint32_t)p->interval;
    out->timeout_seconds = (uint32_t)p->timeout;
    out->failure_threshold = (uint32_t)p->failure_threshold;
    return out;
}

static void add_mounts(struct storage *st, json_t *mounts)
{
    st->nmounts = json_array_size(mounts);
    st->mounts = xcalloc(st->nmounts, sizeof(*st->mounts));
    st->mount_ptrs = xcalloc(st->nmounts, sizeof(*st->mount_ptrs));
    for (size_t k = 0; k < st->nmounts; k++) {
        json_t *m = json_array_get(mounts, k), *files = json_object_get(m, "files");
        Loom__V1__Mount *out = &st->mounts[k];
        loom__v1__mount__init(out);
        out->path = (char *)json_string_value(json_object_get(m, "path"));
        out->secret = json_is_true(json_object_get(m, "secret"));
        out->files = xcalloc(json_object_size(files), sizeof(Loom__V1__MountFile *));
        const char *key;
        json_t *val;
        json_object_foreach(files, key, val)
        {
            if (!json_is_string(val))
                continue;
            Loom__V1__MountFile *f = xcalloc(1, sizeof(*f));
            loom__v1__mount_file__init(f);
            f->name = (char *)key;
            f->data.data = (uint8_t *)json_string_value(val);
            f->data.len = json_string_length(val);
            out->files[out->n_files++] = f;
        }
        st->mount_ptrs[k] = out;
    }
}

/* Loom's variables of a job index, after the user's. */
static void job_env(struct storage *st, const struct sched_assign_row *row,
                    const struct loom_spec *spec)
{
    Loom__V1__InstanceAssign *a = &st->msg;
    a->job_run = (char *)row->job_run;
    a->array_index = row->array_index;
    bool daemon = spec->run_mode == LOOM_RUN_DAEMON;
    a->max_execution_seconds = daemon ? 0 : spec->max_execution_time;
    env_addf(st, "JOB_INDEX", row->array_index);
    env_addf(st, "JOB_ARRAY_SIZE", row->array_size);
    env_addf(st, "JOB_INDEX_RETRY_COUNT", row->retry);
    env_addf(st, "JOB_RETRY_LIMIT", row->retry_limit);
    env_add(st, "JOB_MODE", daemon ? "daemon" : "task");
    env_add(st, "LOOM_JOBRUN", row->job_run);
    if (!row->rank)
        return;
    /* a gang member: torchrun's names and ours */
    static const char *const names[][4] = {
        {"LOOM_RANK", "LOOM_WORLD_SIZE", "LOOM_MASTER_ADDR", "LOOM_MASTER_PORT"},
        {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"},
    };
    for (size_t k = 0; k < 2; k++) {
        env_addf(st, names[k][0], strtoll(row->rank, NULL, 10));
        env_addf(st, names[k][1], spec->nodes);
        env_add(st, names[k][2], row->master ? row->master : "");
        env_addf(st, names[k][3], SCHED_GANG_MASTER_PORT);
    }
}

/* Loom's variables of an app instance, after the user's. */
static void app_env(struct storage *st, const struct sched_assign_row *row,
                    const struct loom_spec *spec)
{
    Loom__V1__InstanceAssign *a = &st->msg;
    a->app = (char *)row->app;
    a->port = (uint32_t)spec->port;
    a->readiness = probe(&spec->readiness, &st->readiness);
    a->liveness = probe(&spec->liveness, &st->liveness);
    env_addf(st, "PORT", spec->port);
    env_add(st, "LOOM_APP", row->app);
    env_add(st, "K_SERVICE", row->app);
    snprintf(st->revision, sizeof(st->revision), "%s-%05lld", row->app, (long long)row->generation);
    env_add(st, "K_REVISION", st->revision);
}

/* A stem cell: its runtime's proxy listens on $PORT and says /health once
 * it does; what it will run comes later, from the activator's /init. */
static void function_instance(struct storage *st, const struct sched_assign_row *row)
{
    Loom__V1__InstanceAssign *a = &st->msg;
    a->kind = LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_FUNCTION;
    a->image = (char *)(row->runtime_image ? row->runtime_image : "");
    a->port = SCHED_FUNCTION_PORT;
    loom__v1__probe__init(&st->readiness);
    st->readiness.type = (char *)"http";
    st->readiness.path = (char *)"/health";
    st->readiness.period_seconds = 1;
    st->readiness.timeout_seconds = 1;
    st->readiness.failure_threshold = 3;
    a->readiness = &st->readiness;
    env_addf(st, "PORT", SCHED_FUNCTION_PORT);
    env_add(st, "LOOM_RUNTIME", row->runtime ? row->runtime : "");
}

void sched_assign_build(const struct sched_assign_row *row, const struct loom_spec *spec,
                        const struct sched_assign_refs *refs, int64_t epoch,
                        struct sched_assign *ret)
{
    struct storage *st = xcalloc(1, sizeof(*st));
    Loom__V1__InstanceAssign *a = &st->msg;
    loom__v1__instance_assign__init(a);
    a->instance_id = (char *)row->id;
    a->epoch = epoch;
    a->project = (char *)row->project;
    a->kind = row->job ? LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_JOB
                       : LOOM__V1__INSTANCE_KIND__INSTANCE_KIND_APP;
    if (spec) {
        a->image = (char *)(spec->image ? spec->image : "");
        st->command = strings(spec->commands, &a->n_command);
        a->command = st->command;
        st->args = strings(spec->arguments, &a->n_args);
        a->args = st->args;
    }
    a->cpu_millis = row->cpu_millis;
    a->memory_bytes = row->memory_bytes;
    a->ephemeral_bytes = row->ephemeral_bytes;
    a->gpus = (uint32_t)row->gpus;
    a->retry = row->retry;
    a->registry_auth = refs->auth ? refs->auth : (char *)"";
    add_mounts(st, refs->mounts); /* none (NULL) for a stem cell */
    a->n_mounts = st->nmounts;
    a->mounts = st->mount_ptrs;
    /* the user's variables first: ours win when a name repeats (last wins) */
    size_t i;
    json_t *v;
    json_array_foreach(refs->env, i, v)
    {
        env_add(st, json_string_value(json_array_get(v, 0)),
                json_string_value(json_array_get(v, 1)));
    }
    if (row->function)
        function_instance(st, row);
    else if (row->job)
        job_env(st, row, spec);
    else
        app_env(st, row, spec);
    env_add(st, "LOOM_PROJECT", row->project);
    if (row->output_path && row->output_repo) {
        loom__v1__build_output__init(&st->output);
        st->output.path = (char *)row->output_path;
        st->output.repository = (char *)row->output_repo;
        st->output.nested_namespaces = row->output_nested;
        a->build_output = &st->output;
    }
    a->n_env = st->nvars;
    a->env = st->var_ptrs;
    *ret = (struct sched_assign){.msg = a, .storage = st};
}

void sched_assign_release(struct sched_assign *a)
{
    struct storage *st = a ? a->storage : NULL;
    if (!st)
        return;
    for (size_t k = 0; k < st->nowned; k++)
        free(st->owned[k]);
    for (size_t k = 0; k < st->nmounts; k++) {
        for (size_t f = 0; f < st->mounts[k].n_files; f++)
            free(st->mounts[k].files[f]);
        free(st->mounts[k].files);
    }
    free(st->owned);
    free(st->mounts);
    free(st->mount_ptrs);
    free(st->vars);
    free(st->var_ptrs);
    free(st->command);
    free(st->args);
    free(st);
    *a = (struct sched_assign){0};
}
