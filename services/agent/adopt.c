/* loom-agent: adopting, after a restart, the instances a previous agent
 * left in the state directory. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent_int.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "util.h"

void agent_adopt_all(struct agent *a)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/instances", a->o.state_dir);
    _cleanup_closedir_ DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !agent_valid_id(de->d_name))
            continue;
        _cleanup_free_ char *dir = agent_instance_dir(a->o.state_dir, de->d_name);
        char p[4300];
        snprintf(p, sizeof(p), "%s/instance.json", dir);
        _cleanup_free_ char *text = NULL;
        struct loom_err err = LOOM_ERR_INIT;
        _cleanup_json_ json_t *j = NULL;
        const char *hex = NULL;
        size_t len = 0;
        _cleanup_free_ uint8_t *pb = NULL;
        struct instance *in = NULL;
        if (loom_read_file(p, &text, NULL, &err) < 0 ||
            !(j = loom_json_parse_object(text, strlen(text), &err)) ||
            !(hex = json_string_value(json_object_get(j, "assign"))) ||
            loom_unhex_alloc(hex, &pb, &len) < 0 || !(in = agent_instance_new(a, pb, len))) {
            /* a directory without a usable instance.json was never acked:
             * nothing was started for it */
            log_warn("instance dir %s is unusable, removing it", dir);
            loom_rm_rf(dir, NULL);
            continue;
        }
        in->assigned_mono = loom_mono_ms();
        const char *claimed = json_string_value(json_object_get(j, "claimed_project"));
        if (claimed && loom_is_dns_label(claimed)) {
            snprintf(in->claimed_project, sizeof(in->claimed_project), "%s", claimed);
            json_int_t cpu = json_integer_value(json_object_get(j, "claimed_cpu_millis"));
            json_int_t mem = json_integer_value(json_object_get(j, "claimed_memory_bytes"));
            if (cpu > 0 && mem > 0) {
                in->assign->cpu_millis = cpu;
                in->assign->memory_bytes = mem;
            }
        }
        snprintf(p, sizeof(p), "%s/done", dir);
        struct stat st;
        if (stat(p, &st) == 0) {
            in->done = true;
            in->terminal = true;
            in->done_at_ms = (int64_t)st.st_mtime * 1000;
            in->next = a->list;
            a->list = in;
            continue;
        }
        /* the outbox */
        snprintf(p, sizeof(p), "%s/reports", dir);
        _cleanup_free_ char *rtext = NULL;
        _cleanup_json_ json_t *rj = NULL;
        if (loom_read_file(p, &rtext, NULL, NULL) == 0 &&
            (rj = loom_json_parse_object(rtext, strlen(rtext), NULL))) {
            in->seq = (uint64_t)json_integer_value(json_object_get(rj, "seq"));
            in->terminal = json_is_true(json_object_get(rj, "terminal"));
            json_t *pend = json_object_get(rj, "pending");
            struct report **t = &in->outbox;
            for (size_t i = 0; i < json_array_size(pend); i++) {
                size_t rl;
                uint8_t *rd;
                if (loom_unhex_alloc(json_string_value(json_array_get(pend, i)), &rd, &rl) < 0)
                    continue;
                struct report *r = calloc(1, sizeof(*r));
                if (!r)
                    abort();
                r->data = rd;
                r->len = rl;
                *t = r;
                t = &r->next;
            }
        }
        in->next = a->list;
        a->list = in;
        log_info("instance %s: adopting after restart", in->id);
        instance_spawn(a, in, true);
    }
}
