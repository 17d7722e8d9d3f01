/* The registry side of a build: stacks read from the platform registry,
 * image configs made from them, and images pushed blob by blob. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "metrics.h"
#include "refs.h"
#include "util.h"

#define MEDIA_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MEDIA_CONFIG "application/vnd.oci.image.config.v1+json"

int reg_client(const char *repo, struct loom_registry_client **ret, struct loom_err *err)
{
    _cleanup_free_ char *image = NULL;
    if (asprintf(&image, "%s/%s", builder.registry, repo) < 0)
        abort();
    struct loom_registry_ref ref = {0};
    if (loom_registry_ref_parse(image, &ref, err) < 0)
        return -1;
    int rc = loom_registry_client_new(&ref, image, NULL, NULL, ret, err);
    loom_registry_ref_release(&ref);
    return rc;
}

void stack_release(struct stack *s)
{
    loom_registry_manifest_release(&s->m);
    json_decref(s->config);
    *s = (struct stack){0};
}

int stack_load(struct brun *r, const char *name, struct stack *ret, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *res =
        loom_db_query(r->db, err, "SELECT image FROM build_stacks WHERE name = $1", name);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "the stack \"%s\" is not installed (an operator adds it: loom-admin "
                            "stack build %s)",
                            name, name);
    struct stack s = {0};
    snprintf(s.name, sizeof(s.name), "%s", name);
    snprintf(s.ref, sizeof(s.ref), "%s", PQgetvalue(res, 0, 0));
    struct loom_registry_ref ref = {0};
    struct loom_registry_client *c = NULL;
    _cleanup_free_ char *body = NULL, *ct = NULL, *digest = NULL, *config = NULL;
    size_t len = 0, clen = 0;
    int rc = loom_registry_ref_parse(s.ref, &ref, err);
    if (rc == 0 && (!ref.digest || strcmp(ref.host, builder.registry) != 0))
        rc = loom_err_set(err, LOOM_EINVAL,
                          "stack \"%s\" is registered as %s: it must be an image of the platform "
                          "registry %s, by digest",
                          name, s.ref, builder.registry);
    if (rc == 0) {
        snprintf(s.repo, sizeof(s.repo), "%s", ref.repo);
        rc = loom_registry_client_new(&ref, s.ref, NULL, NULL, &c, err);
    }
    if (rc == 0)
        rc = loom_registry_get_manifest(c, ref.digest, &body, &len, &ct, &digest, err);
    if (rc == 0)
        rc = loom_registry_manifest_parse(body, len, &s.m, err);
    if (rc == 0)
        rc = loom_registry_get_blob(c, s.m.config.digest, LOOM_REGISTRY_MAX_CONFIG_BYTES, &config,
                                    &clen, err);
    if (rc == 0 && !(s.config = json_loadb(config, clen, 0, NULL)))
        rc = loom_err_set(err, LOOM_EINVAL, "stack \"%s\": its config is not JSON", name);
    if (rc == 0 && json_array_size(json_object_get(json_object_get(s.config, "rootfs"),
                                                   "diff_ids")) != s.m.nlayers)
        rc = loom_err_set(err, LOOM_EINVAL, "stack \"%s\": its config and manifest disagree", name);
    loom_registry_client_free(c);
    loom_registry_ref_release(&ref);
    if (rc < 0) {
        stack_release(&s);
        return loom_err_wrap(err, "stack %s", name);
    }
    *ret = s;
    return 0;
}

/* The name of a "K=V" item, its length. */
static size_t env_name_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

json_t *img_config(const struct stack *s, json_t *env, json_t *entrypoint, const char *workdir)
{
    json_t *cfg = json_deep_copy(json_object_get(s->config, "config"));
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        cfg = json_object();
    }
    json_t *merged = json_array();
    size_t i, j;
    json_t *v, *w;
    json_array_foreach(json_object_get(cfg, "Env"), i, v)
    {
        const char *kv = json_string_value(v);
        bool replaced = false;
        json_array_foreach(env, j, w)
        {
            const char *x = json_string_value(w);
            if (kv && x && env_name_len(kv) == env_name_len(x) &&
                strncmp(kv, x, env_name_len(kv)) == 0)
                replaced = true;
        }
        if (kv && !replaced)
            json_array_append(merged, v);
    }
    json_array_extend(merged, env);
    json_object_set_new(cfg, "Env", merged);
    if (entrypoint)
        json_object_set(cfg, "Entrypoint", entrypoint);
    else
        json_object_del(cfg, "Entrypoint");
    json_object_del(cfg, "Cmd");
    json_object_set_new(cfg, "WorkingDir", json_string(workdir));
    json_object_set_new(cfg, "ExposedPorts", json_pack("{s:{}}", "8080/tcp"));
    /* the stack's architecture, a fixed time: the same inputs, the same image */
    const char *arch = json_string_value(json_object_get(s->config, "architecture"));
    return json_pack("{s:s,s:s,s:s,s:o}", "architecture", arch ? arch : "amd64", "os", "linux",
                     "created", "1970-01-01T00:00:00Z", "config", cfg);
}

void img_add_stack(struct img *img, const struct stack *s)
{
    json_t *diff_ids = json_object_get(json_object_get(s->config, "rootfs"), "diff_ids");
    for (size_t i = 0; i < s->m.nlayers && img->n < LOOM_ARRAY_SIZE(img->layers); i++) {
        struct img_layer *l = &img->layers[img->n++];
        *l = (struct img_layer){.size = s->m.layers[i].size};
        snprintf(l->digest, sizeof(l->digest), "%s", s->m.layers[i].digest);
        snprintf(l->diff_id, sizeof(l->diff_id), "%s",
                 json_string_value(json_array_get(diff_ids, i)));
        snprintf(l->mount_from, sizeof(l->mount_from), "%s", s->repo);
    }
}

int out_open(struct brun *r, struct out_target *ret, struct loom_err *err)
{
    struct loom_registry_ref ref = {0};
    struct out_target t = {0};
    _cleanup_free_ char *auth = NULL;
    const char *secret = r->spec.output_secret;
    int rc = loom_registry_ref_parse(r->spec.output_image, &ref, err);
    if (rc < 0)
        return loom_err_wrap(err, "field \"output_image\"");
    snprintf(t.host, sizeof(t.host), "%s", ref.host);
    snprintf(t.repo, sizeof(t.repo), "%s", ref.repo);
    snprintf(t.tag, sizeof(t.tag), "%s", ref.tag ? ref.tag : "latest");
    t.platform = strcmp(ref.host, builder.registry) == 0;
    if (t.platform && secret)
        rc = loom_err_set(err, LOOM_EINVAL,
                          "field \"output_secret\": the platform registry %s needs none",
                          builder.registry);
    if (rc == 0 && !t.platform && secret) {
        char why[512] = "";
        rc = loom_refs_registry_auth(r->db, r->project_id, secret, ref.host, &auth, why,
                                     sizeof(why), err);
        if (rc > 0)
            rc = loom_err_set(err, LOOM_EINVAL, "field \"output_secret\": %s", why);
        else if (rc == 0 && !auth)
            rc = loom_err_set(err, LOOM_EINVAL,
                              "field \"output_secret\": secret \"%s\" is for another registry "
                              "than %s",
                              secret, ref.host);
    }
    if (rc == 0)
        rc = loom_registry_client_new(&ref, r->spec.output_image, auth, NULL, &t.c, err);
    loom_registry_ref_release(&ref);
    if (auth)
        explicit_bzero(auth, strlen(auth));
    if (rc < 0)
        return -1;
    *ret = t;
    return 0;
}

void out_close(struct out_target *t)
{
    loom_registry_client_free(t->c);
    t->c = NULL;
}

/* The blob of l in the target's repository, sent only when it is not
 * there: in the platform registry a layer of another repository is
 * mounted; another registry gets it uploaded, read from the platform
 * registry when the run has no file of it. */
static int layer_ensure(struct brun *r, struct out_target *t, const struct img_layer *l,
                        int64_t *ret_sent, struct loom_err *err)
{
    char path[4200] = "";
    const char *file = l->file;
    int rc = 0;
    *ret_sent = 0;
    if (!t->platform && !file && l->mount_from[0]) {
        bool have = false;
        if (loom_registry_blob_exists(t->c, l->digest, &have, err) < 0)
            return -1;
        if (have)
            return 0;
        struct loom_registry_client *from = NULL;
        snprintf(path, sizeof(path), "%s/blob-%.71s", r->dir, l->digest + 7);
        rc = reg_client(l->mount_from, &from, err);
        if (rc == 0)
            rc = loom_registry_fetch_blob(from, l->digest, l->size, l->size, r->dir, path, err);
        loom_registry_client_free(from);
        if (rc < 0)
            return -1;
        file = path;
    }
    _cleanup_fclose_ FILE *f = file ? fopen(file, "re") : NULL;
    if (file && !f)
        rc = loom_err_sys(err, errno, "could not open the layer %s", file);
    if (rc == 0)
        rc = loom_registry_blob_ensure(t->c, l->digest, f, NULL, l->size,
                                       t->platform && l->mount_from[0] ? l->mount_from : NULL,
                                       ret_sent, err);
    if (path[0])
        unlink(path);
    return rc;
}

int img_push(struct brun *r, struct img *img, struct out_target *t, char ret_digest[72],
             struct loom_err *err)
{
    struct loom_registry_client *c = t->c;
    json_t *diff_ids = json_array(), *layers = json_array();
    int64_t sent = 0, total = 0;
    int rc = 0, uploaded = 0;
    for (size_t i = 0; i < img->n && rc == 0; i++) {
        const struct img_layer *l = &img->layers[i];
        int64_t n = 0;
        rc = layer_ensure(r, t, l, &n, err);
        sent += n;
        uploaded += n > 0;
        total += l->size;
        json_array_append_new(diff_ids, json_string(l->diff_id));
        json_array_append_new(layers, json_pack("{s:s,s:s,s:I}", "mediaType", LOOM_MEDIA_LAYER_GZIP,
                                                "digest", l->digest, "size", (json_int_t)l->size));
    }
    json_object_set_new(img->config, "rootfs",
                        json_pack("{s:s,s:o}", "type", "layers", "diff_ids", diff_ids));
    _cleanup_free_ char *config = json_dumps(img->config, JSON_COMPACT | JSON_SORT_KEYS);
    char hex[65], config_digest[72];
    loom_sha256_hex(config, strlen(config), hex);
    snprintf(config_digest, sizeof(config_digest), "sha256:%s", hex);
    int64_t n = 0;
    if (rc == 0)
        rc = loom_registry_blob_ensure(c, config_digest, NULL, config, (int64_t)strlen(config),
                                       NULL, &n, err);
    sent += n;
    _cleanup_free_ char *manifest = NULL;
    json_t *m = json_pack("{s:i,s:s,s:{s:s,s:s,s:I},s:o}", "schemaVersion", 2, "mediaType",
                          MEDIA_MANIFEST, "config", "mediaType", MEDIA_CONFIG, "digest",
                          config_digest, "size", (json_int_t)strlen(config), "layers", layers);
    manifest = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    loom_sha256_hex(manifest, strlen(manifest), hex);
    snprintf(ret_digest, 72, "sha256:%s", hex);
    /* by digest first; the tag only once the image is whole */
    if (rc == 0)
        rc = loom_registry_put_manifest(c, ret_digest, MEDIA_MANIFEST, manifest, strlen(manifest),
                                        err);
    if (rc == 0 && t->tag[0])
        rc = loom_registry_put_manifest(c, t->tag, MEDIA_MANIFEST, manifest, strlen(manifest), err);
    if (rc < 0)
        return loom_err_wrap(err, "pushing to %s/%s", t->host, t->repo);
    r->uploaded += sent;
    loom_metric_add(builder.m_uploaded, (double)sent);
    brun_log(r, "pushed %s/%s@%s: %zu layers (%lld bytes), %d uploaded, %lld bytes sent", t->host,
             t->repo, ret_digest, img->n, (long long)total, uploaded, (long long)sent);
    return 0;
}
