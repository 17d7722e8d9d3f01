/* loom-agent: what the node offers: cpu, memory, disk and GPUs. */
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "util.h"

void agent_detect_inventory(struct agent *a)
{
    if (a->o.cpu_millis <= 0)
        a->o.cpu_millis = sysconf(_SC_NPROCESSORS_ONLN) * 1000;
    if (a->o.memory_bytes <= 0) {
        _cleanup_free_ char *mi = NULL;
        if (loom_read_file("/proc/meminfo", &mi, NULL, NULL) == 0) {
            char *p = strstr(mi, "MemTotal:");
            if (p)
                a->o.memory_bytes = strtoll(p + 9, NULL, 10) * 1024;
        }
    }
    struct statvfs sv;
    if (statvfs(a->o.state_dir, &sv) == 0)
        a->disk_bytes = (int64_t)sv.f_blocks * (int64_t)sv.f_frsize;

    /* GPUs: configured, or /dev/nvidiaN with models from nvidia-smi -L */
    if (a->o.gpus && a->o.gpus[0]) {
        _cleanup_free_ char *list = strdup(a->o.gpus);
        for (char *s = list, *tok; (tok = strsep(&s, ",")) && a->ngpus < AGENT_MAX_GPUS;) {
            char *model = strchr(tok, ':');
            if (model)
                *model++ = 0;
            struct agent_gpu *g = &a->gpus[a->ngpus++];
            snprintf(g->id, sizeof(g->id), "%s", tok);
            snprintf(g->model, sizeof(g->model), "%s", model ? model : "unknown");
            snprintf(g->path, sizeof(g->path), "/dev/nvidia%s", tok);
        }
        return;
    }
    glob_t gl;
    if (glob("/dev/nvidia[0-9]*", 0, NULL, &gl) == 0) {
        a->gpus_detected = true;
        _cleanup_free_ char *smi = NULL;
        const char *argv[] = {"/usr/bin/nvidia-smi", "-L", NULL};
        struct loom_err err = LOOM_ERR_INIT;
        if (access(argv[0], X_OK) == 0)
            loom_run(argv, NULL, NULL, &smi, &err);
        for (size_t i = 0; i < gl.gl_pathc && a->ngpus < AGENT_MAX_GPUS; i++) {
            struct agent_gpu *g = &a->gpus[a->ngpus++];
            const char *num = gl.gl_pathv[i] + strlen("/dev/nvidia");
            snprintf(g->id, sizeof(g->id), "%s", num);
            snprintf(g->path, sizeof(g->path), "%s", gl.gl_pathv[i]);
            snprintf(g->model, sizeof(g->model), "unknown");
            char key[32];
            snprintf(key, sizeof(key), "GPU %s: ", num);
            char *p = smi ? strstr(smi, key) : NULL;
            if (p) {
                p += strlen(key);
                size_t n = strcspn(p, "(\n");
                while (n && p[n - 1] == ' ')
                    n--;
                snprintf(g->model, sizeof(g->model), "%.*s", (int)n, p);
            }
        }
        globfree(&gl);
    }
}
