/* The agent's image store: pulls images over the OCI distribution API,
 * verifies every blob's sha256, unpacks each layer once into a
 * content-addressed cache, and hands out the unpacked layer directories for
 * an overlay rootfs.
 *
 * Layout under dir:
 *   blobs/sha256/<hex>          verified blobs (manifests, configs, layer tarballs)
 *   layers/sha256/<hex>/        unpacked layer trees (by the compressed layer digest)
 *   tmp/                        downloads and unpacks in progress */
#ifndef LOOM_AGENT_IMAGE_H
#define LOOM_AGENT_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct image_store;

struct image_config {
    char **entrypoint; /* NULL-terminated, or NULL */
    char **cmd;        /* NULL-terminated, or NULL */
    char **env;        /* "K=V", NULL-terminated, or NULL */
    char *workdir;     /* or NULL */
    char *user;        /* or NULL */
};

struct image {
    char *ref;         /* as asked for */
    char *digest;      /* manifest digest "sha256:..." */
    char **layer_dirs; /* absolute paths of unpacked layers, lowest first */
    size_t nlayers;
    struct image_config config;
};

struct image_store_opts {
    const char *dir;
    int64_t max_bytes;          /* cache size limit; least recently used layers go first */
    const char *insecure_hosts; /* comma-separated host[:port] reached over plain http;
                                   127.0.0.1, localhost and [::1] always are */
};

int image_store_open(const struct image_store_opts *opts, struct image_store **ret,
                     struct loom_err *err);
void image_store_close(struct image_store *store); /* accepts NULL */

/* Pulls ref (if not cached) and unpacks it; blocks. Thread-safe: callers
 * asking for the same image at once share one pull. auth is "user:password"
 * for the registry, or NULL. An image or tag that does not exist is
 * LOOM_ENOTFOUND with a message that names the image; a digest mismatch or an
 * unsafe layer is LOOM_EINVAL. The returned image holds its layers against
 * eviction until image_release. */
int image_store_get(struct image_store *store, const char *ref, const char *auth,
                    struct image **ret, struct loom_err *err);
void image_release(struct image_store *store, struct image *img); /* accepts NULL */

#endif
