/* The buildpacks strategy: detect, get the dependency layer (from the
 * cache, or from a step), make the app layer, push. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "metrics.h"
#include "util.h"

static enum step_kind kind_of(const struct bp_plan *p)
{
    return strcmp(p->language, "nodejs") == 0   ? STEP_NPM
           : strcmp(p->language, "python") == 0 ? STEP_PIP
           : strcmp(p->language, "go") == 0     ? STEP_GO
                                                : STEP_OTHER;
}

/* The cache key of a step: what its layer is made from (the build stack,
 * the script, the output directory and the input layer's content). */
static void cache_key(const struct stack *s, const struct bp_plan *p,
                      const struct loom_layer_info *input, char ret[65])
{
    _cleanup_free_ char *text = NULL;
    if (asprintf(&text, "loom-build-cache v1\n%s\n%s\n%s\n%s\n", s->ref, p->step_output,
                 input->diff_id, p->step_script) < 0)
        abort();
    loom_sha256_hex(text, strlen(text), ret);
}

int bp_deps_layer(struct brun *r, const char *source, const struct bp_plan *p,
                  struct img_layer *ret, struct loom_err *err)
{
    struct stack bs = {0};
    struct loom_layer *in = NULL;
    struct loom_layer_info input;
    char key[65];
    int rc = stack_load(r, p->build_stack, &bs, err);
    if (rc == 0)
        rc = source_layer(r, source, p->step_all_source ? NULL : p->step_inputs, NULL, &in, &input,
                          err);
    if (rc == 0) {
        cache_key(&bs, p, &input, key);
        _cleanup_pgres_ PGresult *c = loom_db_query(
            r->db, err,
            "UPDATE build_cache SET last_used_at = now() WHERE project_id = $1 AND key = $2 "
            "RETURNING digest, diff_id, size",
            r->project_id, key);
        bool have = false;
        rc = c ? 0 : -1;
        if (rc == 0 && PQntuples(c) > 0 &&
            (rc = loom_registry_blob_exists(r->cache, PQgetvalue(c, 0, 0), &have, err)) == 0 &&
            have) {
            snprintf(ret->digest, sizeof(ret->digest), "%s", PQgetvalue(c, 0, 0));
            snprintf(ret->diff_id, sizeof(ret->diff_id), "%s", PQgetvalue(c, 0, 1));
            ret->size = strtoll(PQgetvalue(c, 0, 2), NULL, 10);
            snprintf(ret->mount_from, sizeof(ret->mount_from), "%s", r->cache_repo);
            brun_step(r, p->step, "cached");
            brun_step_end(r, "cached", "%s from %.19s... (%lld bytes), made from the same inputs",
                          p->step_output, ret->digest, (long long)ret->size);
            loom_metric_add(builder.m_cached, 1);
        } else if (rc == 0) {
            char detail[200];
            snprintf(detail, sizeof(detail), "on stack %s, %lld input files", bs.name,
                     (long long)input.entries);
            brun_step(r, p->step, detail);
            struct step_req req = {
                .label = p->step_all_source ? "compile" : "deps",
                .kind = kind_of(p),
                .stack = &bs,
                .script = p->step_script,
                .input = &input,
                .output = p->step_output,
            };
            struct step_out out;
            rc = step_run(r, &req, &out, err);
            if (rc == 0) {
                snprintf(ret->digest, sizeof(ret->digest), "%s", out.digest);
                snprintf(ret->diff_id, sizeof(ret->diff_id), "%s", out.diff_id);
                ret->size = out.size;
                snprintf(ret->mount_from, sizeof(ret->mount_from), "%s", r->cache_repo);
                char size[24];
                snprintf(size, sizeof(size), "%lld", (long long)out.size);
                _cleanup_pgres_ PGresult *ins = loom_db_query(
                    r->db, err,
                    "INSERT INTO build_cache (project_id, key, digest, diff_id, size) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (project_id, key) DO UPDATE SET "
                    "digest = $3, diff_id = $4, size = $5, last_used_at = now()",
                    r->project_id, key, out.digest, out.diff_id, size);
                rc = ins ? 0 : -1;
                if (rc == 0)
                    brun_step_end(r, "succeeded", "%s: %lld bytes, layer %.19s...", p->step_output,
                                  (long long)out.size, out.digest);
            }
        }
    }
    loom_layer_free(in);
    stack_release(&bs);
    return rc;
}

int bp_detect_step(struct brun *r, const char *source, const struct bp_options *o,
                   const char *label, struct src_tree *t, struct bp_plan *p, struct loom_err *err)
{
    brun_step(r, "detect", label);
    int rc = source_list(source, r->spec.source_context_dir, t, err);
    if (rc == 0)
        rc = bp_detect(t, o, p, err);
    if (rc == 0) {
        _cleanup_pgres_ PGresult *s = loom_db_query(
            r->db, err, "UPDATE build_runs SET strategy = $2 WHERE id = $1", r->id, p->detail);
        rc = s ? 0 : -1;
    }
    if (rc == 0)
        brun_step_end(r, "succeeded", "%s", p->detail);
    return rc;
}

int buildpacks_run(struct brun *r, const char *source, struct loom_err *err)
{
    struct src_tree t = {0};
    struct bp_plan p = {0};
    struct stack run = {0};
    struct loom_layer *app = NULL;
    struct loom_layer_info app_info;
    struct img img = {0};
    struct out_target out = {0};
    char digest[72];
    const struct bp_options o = {builder.npm_registry, builder.pip_index, builder.go_proxy, false};
    int rc = bp_detect_step(r, source, &o, NULL, &t, &p, err);
    if (rc == 0)
        rc = out_open(r, &out, err);
    if (rc == 0)
        rc = stack_load(r, p.run_stack, &run, err);
    if (rc == 0) {
        img.config = img_config(&run, p.env, p.cmd, "/app");
        img_add_stack(&img, &run);
    }
    if (rc == 0 && p.build_stack[0]) {
        rc = brun_check(r, err);
        if (rc == 0)
            rc = bp_deps_layer(r, source, &p, &img.layers[img.n], err);
        if (rc == 0)
            img.n++;
    }
    if (rc == 0 && p.app_layer) {
        brun_step(r, "app", NULL);
        rc = source_layer(r, source, NULL, p.app_exclude, &app, &app_info, err);
        if (rc == 0) {
            struct img_layer *l = &img.layers[img.n++];
            *l = (struct img_layer){.size = app_info.size, .file = app_info.path};
            snprintf(l->digest, sizeof(l->digest), "%s", app_info.digest);
            snprintf(l->diff_id, sizeof(l->diff_id), "%s", app_info.diff_id);
            brun_step_end(r, "succeeded", "/app: %lld entries, %lld bytes",
                          (long long)app_info.entries, (long long)app_info.size);
        }
    }
    if (rc == 0)
        rc = brun_check(r, err);
    if (rc == 0) {
        int64_t before = r->uploaded;
        brun_step(r, "push", r->spec.output_image);
        rc = img_push(r, &img, &out, digest, err);
        if (rc == 0) {
            snprintf(r->output_ref, sizeof(r->output_ref), "%s/%s@%s", out.host, out.repo, digest);
            brun_step_end(r, "succeeded", "%s: %zu layers, %lld bytes uploaded", r->output_ref,
                          img.n, (long long)(r->uploaded - before));
        }
    }
    json_decref(img.config);
    out_close(&out);
    loom_layer_free(app);
    stack_release(&run);
    bp_plan_release(&p);
    src_tree_release(&t);
    return rc;
}
