/* The image store. One mutex guards the in-memory tables; network transfers
 * and unpacking run without it.
 *
 * - Pulls in flight are keyed by (ref, auth): a second caller for the same
 *   key waits on that pull's condition variable and gets its result.
 * - Layers in flight are marked PULLING in the layer table; anyone needing
 *   one waits on layer_cv until it is READY (or gone, then pulls it).
 * - Each READY layer has a refcount (images handed out and pulls in
 *   progress). Eviction, after each pull, takes only layers at refcount 0,
 *   least recently used first, until the unpacked total fits max_bytes.
 *
 * On disk, next to each layers/sha256/<hex>/ tree, <hex>.meta holds its
 * unpacked size; the mtime of that file is the layer's last use. A layer
 * tarball is removed from blobs/ once unpacked (the tree is what we keep;
 * manifests and configs stay in blobs/). */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cleanup.h"
#include "json.h"
#include "registry.h"
#include "unpack.h"
#include "util.h"

/* A layer tarball may be large, but not absurdly so. */
#define MAX_LAYER_BYTES (INT64_C(64) << 30)

enum layer_state { LAYER_PULLING, LAYER_READY };

struct layer {
    char hex[65];
    enum layer_state state;
    int refs;
    int64_t size;
    int64_t last_used_ms;
    struct layer *next;
};

/* What a pull resolves to; enough to build an image from the cache. */
struct resolved {
    char *digest;
    char config_hex[65];
    char (*layer_hex)[65];
    size_t nlayers;
};

struct pull {
    char *key;
    pthread_cond_t cv;
    bool done;
    int waiters;
    int rc;
    struct loom_err err;
    struct resolved res;
    struct pull *next;
};

struct image_store {
    char *dir; /* absolute, without symlinks */
    char *blobs;
    char *layers;
    char *tmp;
    char *insecure_hosts;
    int64_t max_bytes;
    pthread_mutex_t mu;
    pthread_cond_t layer_cv;
    struct layer *layer_list;
    struct pull *pulls;
};

static void resolved_release(struct resolved *r)
{
    free(r->digest);
    free(r->layer_hex);
    memset(r, 0, sizeof(*r));
}

static void resolved_copy(const struct resolved *src, struct resolved *dst)
{
    memset(dst, 0, sizeof(*dst));
    dst->digest = strdup(src->digest);
    memcpy(dst->config_hex, src->config_hex, sizeof(dst->config_hex));
    dst->nlayers = src->nlayers;
    dst->layer_hex = calloc(src->nlayers ? src->nlayers : 1, sizeof(*dst->layer_hex));
    if (!dst->digest || !dst->layer_hex)
        abort();
    memcpy(dst->layer_hex, src->layer_hex, src->nlayers * sizeof(*dst->layer_hex));
}

static char *path_of(const char *dir, const char *hex, const char *suffix)
{
    char *s = NULL;
    if (asprintf(&s, "%s/%s%s", dir, hex, suffix) < 0)
        abort();
    return s;
}

static bool is_hex64(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    return n == 64;
}

/* --- the layer table (mu held) ------------------------------------------------------ */

static struct layer *layer_find(struct image_store *s, const char *hex)
{
    for (struct layer *l = s->layer_list; l; l = l->next)
        if (strcmp(l->hex, hex) == 0)
            return l;
    return NULL;
}

static struct layer *layer_add(struct image_store *s, const char *hex, enum layer_state state)
{
    struct layer *l = calloc(1, sizeof(*l));
    if (!l)
        abort();
    snprintf(l->hex, sizeof(l->hex), "%s", hex);
    l->state = state;
    l->next = s->layer_list;
    s->layer_list = l;
    return l;
}

static void layer_remove(struct image_store *s, struct layer *victim)
{
    for (struct layer **pp = &s->layer_list; *pp; pp = &(*pp)->next)
        if (*pp == victim) {
            *pp = victim->next;
            free(victim);
            return;
        }
}

static void touch_meta(struct image_store *s, const char *hex)
{
    _cleanup_free_ char *meta = path_of(s->layers, hex, ".meta");
    utimensat(AT_FDCWD, meta, NULL, 0);
}

static void layer_unref_locked(struct image_store *s, const char *hex)
{
    struct layer *l = layer_find(s, hex);
    if (l && l->refs > 0) {
        l->refs--;
        l->last_used_ms = loom_now_ms();
    }
}

/* Picks victims under mu: renames their trees into tmp/ (fast), and returns
 * the paths to remove once mu is released. */
static char **evict_locked(struct image_store *s, size_t *ret_n)
{
    *ret_n = 0;
    if (s->max_bytes <= 0)
        return NULL;
    int64_t total = 0;
    for (struct layer *l = s->layer_list; l; l = l->next)
        total += l->size;
    char **victims = NULL;
    size_t n = 0;
    while (total > s->max_bytes) {
        struct layer *lru = NULL;
        for (struct layer *l = s->layer_list; l; l = l->next)
            if (l->state == LAYER_READY && l->refs == 0 &&
                (!lru || l->last_used_ms < lru->last_used_ms))
                lru = l;
        if (!lru)
            break; /* everything left is in use */
        _cleanup_free_ char *tree = path_of(s->layers, lru->hex, "");
        _cleanup_free_ char *meta = path_of(s->layers, lru->hex, ".meta");
        char rnd[37];
        loom_uuid4(rnd);
        char *gone = NULL;
        if (asprintf(&gone, "%s/evict-%.12s-%s", s->tmp, lru->hex, rnd) < 0)
            abort();
        unlink(meta);
        if (rename(tree, gone) < 0) {
            free(gone);
            gone = NULL;
        }
        total -= lru->size;
        layer_remove(s, lru);
        if (gone) {
            victims = realloc(victims, (n + 1) * sizeof(*victims));
            if (!victims)
                abort();
            victims[n++] = gone;
        }
    }
    *ret_n = n;
    return victims;
}

static void remove_victims(char **victims, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        loom_rm_rf(victims[i], NULL);
        free(victims[i]);
    }
    free(victims);
}

/* --- open / close ---------------------------------------------------------------------- */

static int write_meta(const char *meta, int64_t size, struct loom_err *err)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%lld\n", (long long)size);
    return loom_write_file_atomic(meta, buf, (size_t)n, err);
}

static int load_layers(struct image_store *s, struct loom_err *err)
{
    _cleanup_closedir_ DIR *d = opendir(s->layers);
    if (!d)
        return loom_err_sys(err, errno, "could not open \"%s\"", s->layers);
    struct dirent *de;
    while ((de = readdir(d))) {
        char name[256];
        snprintf(name, sizeof(name), "%s", de->d_name);
        size_t n = strlen(name);
        if (n == 69 && strcmp(name + 64, ".meta") == 0) {
            /* a size without its tree: a crash between the two */
            name[64] = '\0';
            _cleanup_free_ char *tree = path_of(s->layers, name, "");
            struct stat st;
            if (is_hex64(name) && lstat(tree, &st) < 0) {
                _cleanup_free_ char *meta = path_of(s->layers, name, ".meta");
                unlink(meta);
            }
            continue;
        }
        if (!is_hex64(name))
            continue;
        _cleanup_free_ char *tree = path_of(s->layers, name, "");
        _cleanup_free_ char *meta = path_of(s->layers, name, ".meta");
        struct stat st;
        if (lstat(tree, &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        int64_t size = -1;
        _cleanup_free_ char *text = NULL;
        if (loom_read_file(meta, &text, NULL, NULL) == 0) {
            char *end = NULL;
            long long v = strtoll(text, &end, 10);
            if (end != text && v >= 0)
                size = v;
        }
        if (size < 0) {
            if (unpack_tree_size(tree, &size, err) < 0 || write_meta(meta, size, err) < 0)
                return -1;
        }
        struct stat mst;
        struct layer *l = layer_add(s, name, LAYER_READY);
        l->size = size;
        l->last_used_ms = stat(meta, &mst) == 0
                              ? (int64_t)mst.st_mtim.tv_sec * 1000 + mst.st_mtim.tv_nsec / 1000000
                              : loom_now_ms();
    }
    return 0;
}

void image_store_close(struct image_store *s)
{
    if (!s)
        return;
    while (s->layer_list) {
        struct layer *l = s->layer_list;
        s->layer_list = l->next;
        free(l);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->layer_cv);
    free(s->dir);
    free(s->blobs);
    free(s->layers);
    free(s->tmp);
    free(s->insecure_hosts);
    free(s);
}

int image_store_open(const struct image_store_opts *opts, struct image_store **ret,
                     struct loom_err *err)
{
    if (!opts || !opts->dir || !*opts->dir)
        return loom_err_set(err, LOOM_EINVAL, "image store: no directory given");
    if (loom_mkdir_p(opts->dir, 0700, err) < 0)
        return loom_err_wrap(err, "image store");
    struct image_store *s = calloc(1, sizeof(*s));
    if (!s)
        abort();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->layer_cv, NULL);
    s->max_bytes = opts->max_bytes;
    if (opts->insecure_hosts && !(s->insecure_hosts = strdup(opts->insecure_hosts)))
        abort();
    /* Extraction refuses to go through symlinks, so the store's own path
     * must have none. */
    s->dir = realpath(opts->dir, NULL);
    if (!s->dir) {
        loom_err_sys(err, errno, "image store: could not resolve \"%s\"", opts->dir);
        goto fail;
    }
    if (asprintf(&s->blobs, "%s/blobs/sha256", s->dir) < 0 ||
        asprintf(&s->layers, "%s/layers/sha256", s->dir) < 0 ||
        asprintf(&s->tmp, "%s/tmp", s->dir) < 0)
        abort();
    /* whatever was in flight when we last stopped is garbage */
    if (loom_rm_rf(s->tmp, err) < 0 || loom_mkdir_p(s->tmp, 0700, err) < 0 ||
        loom_mkdir_p(s->blobs, 0700, err) < 0 || loom_mkdir_p(s->layers, 0700, err) < 0 ||
        load_layers(s, err) < 0) {
        loom_err_wrap(err, "image store");
        goto fail;
    }
    *ret = s;
    return 0;
fail:
    image_store_close(s);
    return -1;
}

/* --- pulling ---------------------------------------------------------------------------- */

struct pull_ctx {
    struct image_store *store;
    const struct loom_registry_ref *ref;
    const char *image; /* the ref as asked for */
    const char *auth;
    struct loom_registry_client *client; /* made on first need: a cached image needs no network */
};

static int ctx_client(struct pull_ctx *ctx, struct loom_registry_client **ret, struct loom_err *err)
{
    if (!ctx->client && loom_registry_client_new(ctx->ref, ctx->image, ctx->auth,
                                                 ctx->store->insecure_hosts, &ctx->client, err) < 0)
        return -1;
    *ret = ctx->client;
    return 0;
}

/* A manifest by digest: from blobs/ when there, else from the registry
 * (verified), then kept. */
static int manifest_by_digest(struct pull_ctx *ctx, const char *digest, char **ret_body,
                              size_t *ret_len, struct loom_err *err)
{
    _cleanup_free_ char *path = path_of(ctx->store->blobs, digest + 7, "");
    _cleanup_free_ char *body = NULL;
    size_t len = 0;
    if (loom_read_file(path, &body, &len, NULL) == 0 &&
        loom_registry_verify_bytes(body, len, digest, NULL) == 0) {
        *ret_body = TAKE_PTR(body);
        *ret_len = len;
        return 0;
    }
    free(body);
    body = NULL;
    struct loom_registry_client *c;
    _cleanup_free_ char *ct = NULL;
    _cleanup_free_ char *got = NULL;
    if (ctx_client(ctx, &c, err) < 0 ||
        loom_registry_get_manifest(c, digest, &body, &len, &ct, &got, err) < 0)
        return -1;
    if (loom_write_file_atomic(path, body, len, err) < 0)
        return -1;
    *ret_body = TAKE_PTR(body);
    *ret_len = len;
    return 0;
}

/* Downloads, verifies and unpacks one layer (not yet in the table as READY). */
static int fetch_layer(struct pull_ctx *ctx, const struct loom_registry_desc *d, int64_t *ret_size,
                       struct loom_err *err)
{
    struct image_store *s = ctx->store;
    const char *hex = d->digest + 7;
    _cleanup_free_ char *blob = path_of(s->blobs, hex, "");
    _cleanup_free_ char *tree = path_of(s->layers, hex, "");
    _cleanup_free_ char *meta = path_of(s->layers, hex, ".meta");
    struct stat st;
    if (lstat(tree, &st) == 0 && loom_rm_rf(tree, err) < 0) /* unpacked but never recorded */
        return -1;
    if (access(blob, F_OK) != 0 || loom_registry_verify_file(blob, d->digest, NULL) < 0) {
        struct loom_registry_client *c;
        if (ctx_client(ctx, &c, err) < 0 ||
            loom_registry_fetch_blob(c, d->digest, d->size, MAX_LAYER_BYTES, s->tmp, blob, err) < 0)
            return -1;
    }
    int64_t size = 0;
    int r = unpack_layer(blob, s->tmp, tree, &size, err);
    unlink(blob); /* the unpacked tree is what we keep */
    if (r < 0)
        return loom_err_wrap(err, "layer %s", d->digest);
    if (write_meta(meta, size, err) < 0) {
        loom_rm_rf(tree, NULL);
        return -1;
    }
    *ret_size = size;
    return 0;
}

/* Makes the layer READY (pulling it, or waiting for whoever is) and holds
 * one reference on it. */
static int acquire_layer(struct pull_ctx *ctx, const struct loom_registry_desc *d,
                         struct loom_err *err)
{
    struct image_store *s = ctx->store;
    const char *hex = d->digest + 7;
    pthread_mutex_lock(&s->mu);
    struct layer *l;
    for (;;) {
        l = layer_find(s, hex);
        if (!l)
            break;
        if (l->state == LAYER_READY) {
            l->refs++;
            l->last_used_ms = loom_now_ms();
            pthread_mutex_unlock(&s->mu);
            touch_meta(s, hex);
            return 0;
        }
        pthread_cond_wait(&s->layer_cv, &s->mu);
    }
    l = layer_add(s, hex, LAYER_PULLING);
    pthread_mutex_unlock(&s->mu);

    int64_t size = 0;
    int r = fetch_layer(ctx, d, &size, err);

    pthread_mutex_lock(&s->mu);
    if (r == 0) {
        l->state = LAYER_READY;
        l->size = size;
        l->refs = 1;
        l->last_used_ms = loom_now_ms();
    } else {
        layer_remove(s, l);
    }
    pthread_cond_broadcast(&s->layer_cv);
    pthread_mutex_unlock(&s->mu);
    return r;
}

static void unref_layers(struct image_store *s, char (*hexes)[65], size_t n)
{
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++)
        layer_unref_locked(s, hexes[i]);
    pthread_mutex_unlock(&s->mu);
}

/* Resolves ref to a manifest, fetches its config and makes every layer
 * READY, holding one reference on each layer in ret->layer_hex. */
static int do_pull(struct pull_ctx *ctx, struct resolved *ret, struct loom_err *err)
{
    struct image_store *s = ctx->store;
    _cleanup_free_ char *body = NULL;
    _cleanup_free_ char *digest = NULL;
    size_t len = 0;
    if (ctx->ref->digest) {
        digest = strdup(ctx->ref->digest);
        if (!digest)
            abort();
        if (manifest_by_digest(ctx, digest, &body, &len, err) < 0)
            return -1;
    } else {
        struct loom_registry_client *c;
        _cleanup_free_ char *ct = NULL;
        if (ctx_client(ctx, &c, err) < 0 ||
            loom_registry_get_manifest(c, ctx->ref->tag, &body, &len, &ct, &digest, err) < 0)
            return -1;
        /* named by its digest: once there, it holds these bytes (a read by
         * digest verifies them), and a cached start skips the write and
         * its fsync */
        _cleanup_free_ char *path = path_of(s->blobs, digest + 7, "");
        if (access(path, F_OK) < 0 && loom_write_file_atomic(path, body, len, err) < 0)
            return -1;
    }
    bool is_index = false;
    if (loom_registry_manifest_is_index(body, len, NULL, &is_index, err) < 0)
        return loom_err_wrap(err, "image \"%s\"", ctx->image);
    if (is_index) {
        _cleanup_free_ char *child = NULL;
        if (loom_registry_index_pick(body, len, &child, err) < 0)
            return loom_err_wrap(err, "image \"%s\"", ctx->image);
        free(body);
        body = NULL;
        if (manifest_by_digest(ctx, child, &body, &len, err) < 0)
            return -1;
    }
    struct loom_registry_manifest m = {0};
    if (loom_registry_manifest_parse(body, len, &m, err) < 0)
        return loom_err_wrap(err, "image \"%s\"", ctx->image);

    if (m.nlayers == 0) {
        /* valid for OCI artifacts, but nothing a container can run from */
        loom_registry_manifest_release(&m);
        return loom_err_set(err, LOOM_EINVAL, "image \"%s\" has no layers", ctx->image);
    }
    int r = -1;
    struct resolved res = {0};
    _cleanup_free_ char *config = path_of(s->blobs, m.config.digest + 7, "");
    /* re-verified when cached: cheap, and a torn file after a crash is refetched */
    if (loom_registry_verify_file(config, m.config.digest, NULL) < 0) {
        struct loom_registry_client *c;
        if (ctx_client(ctx, &c, err) < 0 ||
            loom_registry_fetch_blob(c, m.config.digest, m.config.size,
                                     LOOM_REGISTRY_MAX_CONFIG_BYTES, s->tmp, config, err) < 0)
            goto out;
    }
    res.digest = TAKE_PTR(digest);
    snprintf(res.config_hex, sizeof(res.config_hex), "%s", m.config.digest + 7);
    res.layer_hex = calloc(m.nlayers ? m.nlayers : 1, sizeof(*res.layer_hex));
    if (!res.layer_hex)
        abort();
    for (size_t i = 0; i < m.nlayers; i++) {
        if (acquire_layer(ctx, &m.layers[i], err) < 0) {
            unref_layers(s, res.layer_hex, res.nlayers);
            loom_err_wrap(err, "image \"%s\"", ctx->image);
            goto out;
        }
        snprintf(res.layer_hex[i], sizeof(res.layer_hex[i]), "%s", m.layers[i].digest + 7);
        res.nlayers = i + 1;
    }
    *ret = res;
    memset(&res, 0, sizeof(res));
    r = 0;
out:
    resolved_release(&res);
    loom_registry_manifest_release(&m);
    return r;
}

/* --- images ------------------------------------------------------------------------------ */

static void strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static int config_strv(json_t *cfg, const char *field, char ***ret, struct loom_err *err)
{
    json_t *a = json_object_get(cfg, field);
    if (!a || json_is_null(a))
        return 0;
    if (!json_is_array(a))
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid image config: field \"config.%s\": must be an array of "
                            "strings",
                            field);
    size_t n = json_array_size(a);
    char **v = calloc(n + 1, sizeof(*v));
    if (!v)
        abort();
    for (size_t i = 0; i < n; i++) {
        const char *str = json_string_value(json_array_get(a, i));
        if (!str) {
            strv_free(v);
            return loom_err_set(err, LOOM_EINVAL,
                                "invalid image config: field \"config.%s\": must be an array of "
                                "strings",
                                field);
        }
        if (!(v[i] = strdup(str)))
            abort();
    }
    *ret = v;
    return 0;
}

static int config_str(json_t *cfg, const char *field, char **ret, struct loom_err *err)
{
    json_t *j = json_object_get(cfg, field);
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_string(j))
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid image config: field \"config.%s\": must be a string", field);
    if (json_string_length(j) > 0 && !(*ret = strdup(json_string_value(j))))
        abort();
    return 0;
}

static void image_config_release(struct image_config *c)
{
    strv_free(c->entrypoint);
    strv_free(c->cmd);
    strv_free(c->env);
    free(c->workdir);
    free(c->user);
    memset(c, 0, sizeof(*c));
}

static int parse_config(const char *path, const char *image, struct image_config *ret,
                        struct loom_err *err)
{
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (loom_read_file(path, &text, &len, err) < 0)
        return -1;
    if (len > LOOM_REGISTRY_MAX_CONFIG_BYTES)
        return loom_err_set(err, LOOM_EINVAL, "image \"%s\": config larger than %d bytes", image,
                            LOOM_REGISTRY_MAX_CONFIG_BYTES);
    json_error_t jerr;
    _cleanup_json_ json_t *j = json_loadb(text, len, 0, &jerr);
    if (!json_is_object(j))
        return loom_err_set(err, LOOM_EINVAL, "image \"%s\": config is not a JSON object", image);
    const char *os = json_string_value(json_object_get(j, "os"));
    const char *arch = json_string_value(json_object_get(j, "architecture"));
    if ((os && strcmp(os, "linux") != 0) || (arch && strcmp(arch, "amd64") != 0))
        return loom_err_set(err, LOOM_EINVAL, "image \"%s\" is for %s/%s, not linux/amd64", image,
                            os ? os : "?", arch ? arch : "?");
    struct image_config c = {0};
    json_t *cfg = json_object_get(j, "config");
    if (cfg && !json_is_null(cfg)) {
        if (!json_is_object(cfg))
            return loom_err_set(err, LOOM_EINVAL,
                                "image \"%s\": invalid config: field \"config\": must be an "
                                "object",
                                image);
        if (config_strv(cfg, "Entrypoint", &c.entrypoint, err) < 0 ||
            config_strv(cfg, "Cmd", &c.cmd, err) < 0 || config_strv(cfg, "Env", &c.env, err) < 0 ||
            config_str(cfg, "WorkingDir", &c.workdir, err) < 0 ||
            config_str(cfg, "User", &c.user, err) < 0) {
            image_config_release(&c);
            return loom_err_wrap(err, "image \"%s\"", image);
        }
    }
    *ret = c;
    return 0;
}

static void image_free(struct image *img)
{
    if (!img)
        return;
    free(img->ref);
    free(img->digest);
    for (size_t i = 0; i < img->nlayers; i++)
        free(img->layer_dirs[i]);
    free(img->layer_dirs);
    image_config_release(&img->config);
    free(img);
}

/* Builds the caller's image from a resolution whose layer references the
 * caller already holds; drops them on failure. */
static int build_image(struct image_store *s, const char *ref, const struct resolved *res,
                       struct image **ret, struct loom_err *err)
{
    struct image *img = calloc(1, sizeof(*img));
    if (!img)
        abort();
    _cleanup_free_ char *config = path_of(s->blobs, res->config_hex, "");
    if (parse_config(config, ref, &img->config, err) < 0) {
        free(img);
        unref_layers(s, res->layer_hex, res->nlayers);
        return -1;
    }
    img->ref = strdup(ref);
    img->digest = strdup(res->digest);
    img->layer_dirs = calloc(res->nlayers ? res->nlayers : 1, sizeof(*img->layer_dirs));
    if (!img->ref || !img->digest || !img->layer_dirs)
        abort();
    for (size_t i = 0; i < res->nlayers; i++)
        img->layer_dirs[i] = path_of(s->layers, res->layer_hex[i], "");
    img->nlayers = res->nlayers;
    *ret = img;
    return 0;
}

static void pull_free(struct pull *p)
{
    free(p->key);
    pthread_cond_destroy(&p->cv);
    resolved_release(&p->res);
    free(p);
}

int image_store_get(struct image_store *s, const char *ref, const char *auth, struct image **ret,
                    struct loom_err *err)
{
    struct loom_registry_ref r = {0};
    if (loom_registry_ref_parse(ref, &r, err) < 0)
        return -1;
    _cleanup_free_ char *key = NULL;
    if (asprintf(&key, "%s\n%s", ref, auth ? auth : "") < 0)
        abort();

    pthread_mutex_lock(&s->mu);
    struct pull *p = s->pulls;
    while (p && strcmp(p->key, key) != 0)
        p = p->next;
    if (p) {
        /* someone is pulling this already: wait for their result */
        p->waiters++;
        while (!p->done)
            pthread_cond_wait(&p->cv, &s->mu);
        int rc = p->rc;
        struct resolved res = {0};
        if (rc == 0)
            resolved_copy(&p->res, &res); /* the leader took our layer references */
        else if (err)
            *err = p->err;
        if (--p->waiters == 0)
            pull_free(p);
        pthread_mutex_unlock(&s->mu);
        loom_registry_ref_release(&r);
        if (rc == 0)
            rc = build_image(s, ref, &res, ret, err);
        resolved_release(&res);
        return rc;
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        abort();
    p->key = TAKE_PTR(key);
    pthread_cond_init(&p->cv, NULL);
    p->next = s->pulls;
    s->pulls = p;
    pthread_mutex_unlock(&s->mu);

    struct pull_ctx ctx = {.store = s, .ref = &r, .image = ref, .auth = auth};
    struct loom_err perr = LOOM_ERR_INIT;
    struct resolved res = {0};
    struct image *img = NULL;
    int rc = do_pull(&ctx, &res, &perr);
    loom_registry_client_free(ctx.client);
    loom_registry_ref_release(&r);
    if (rc == 0)
        rc = build_image(s, ref, &res, &img, &perr);

    pthread_mutex_lock(&s->mu);
    for (struct pull **pp = &s->pulls; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    p->done = true;
    p->rc = rc;
    p->err = perr;
    if (rc == 0) {
        /* take one reference per waiter now, so nothing is evicted before
         * they wake */
        for (size_t i = 0; i < res.nlayers; i++) {
            struct layer *l = layer_find(s, res.layer_hex[i]);
            if (l)
                l->refs += p->waiters;
        }
        resolved_copy(&res, &p->res);
    }
    size_t nvictims = 0;
    char **victims = rc == 0 ? evict_locked(s, &nvictims) : NULL;
    pthread_cond_broadcast(&p->cv);
    if (p->waiters == 0)
        pull_free(p);
    pthread_mutex_unlock(&s->mu);
    remove_victims(victims, nvictims);
    resolved_release(&res);

    if (rc < 0) {
        if (err)
            *err = perr;
        return -1;
    }
    *ret = img;
    return 0;
}

void image_release(struct image_store *s, struct image *img)
{
    if (!img)
        return;
    if (!s) {
        image_free(img);
        return;
    }
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < img->nlayers; i++) {
        const char *slash = strrchr(img->layer_dirs[i], '/');
        layer_unref_locked(s, slash ? slash + 1 : img->layer_dirs[i]);
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < img->nlayers; i++) {
        const char *slash = strrchr(img->layer_dirs[i], '/');
        touch_meta(s, slash ? slash + 1 : img->layer_dirs[i]);
    }
    image_free(img);
}
