/* OCI distribution client: image references, manifest and config
 * validation, blob downloads verified against their sha256 digest (the
 * agent's image store), and pushes (uploads and the builder): blobs once
 * each, manifests by digest or tag.
 *
 * Only sha256 digests are supported. Everything read from a registry is
 * checked here before it is used. */
#ifndef LOOM_REGISTRY_H
#define LOOM_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

#define LOOM_REGISTRY_MAX_MANIFEST_BYTES (4 * 1024 * 1024)
#define LOOM_REGISTRY_MAX_CONFIG_BYTES (4 * 1024 * 1024)
#define LOOM_REGISTRY_MAX_LAYERS 128

#define LOOM_MEDIA_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define LOOM_MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define LOOM_MEDIA_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define LOOM_MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"

/* "host[:port]/repo[:tag]" or "host[:port]/repo[:tag]@sha256:<64 hex>".
 * The host is required (it must contain '.' or ':', be "localhost", or be a
 * bracketed IPv6 address); repository path components follow the
 * distribution grammar (lowercase alphanumerics joined by '.', '_', '__' or
 * dashes); the tag defaults to "latest". */
struct loom_registry_ref {
    char *host;   /* "127.0.0.1:5000", "[::1]:5000", "registry.example.com" */
    char *repo;   /* "library/busybox" */
    char *tag;    /* "latest" when neither tag nor digest was given; may be NULL */
    char *digest; /* "sha256:<hex>" or NULL */
};

/* Fills ret; a malformed ref is LOOM_EINVAL `invalid image reference "x": reason`. */
int loom_registry_ref_parse(const char *ref, struct loom_registry_ref *ret, struct loom_err *err);
void loom_registry_ref_release(struct loom_registry_ref *ref); /* accepts NULL */

/* True for "sha256:" followed by exactly 64 lowercase hex characters. */
bool loom_registry_digest_valid(const char *digest);

/* True when host ("host[:port]") is reached over plain http: 127.0.0.1,
 * localhost and [::1] on any port, and each entry of insecure_hosts (comma
 * separated; an entry without a port matches every port of that host). */
bool loom_registry_host_insecure(const char *host, const char *insecure_hosts);

/* sha256 of data compared with digest; a mismatch is LOOM_EINVAL
 * `digest mismatch for blob <digest>: got sha256:<actual>`. */
int loom_registry_verify_bytes(const void *data, size_t len, const char *digest,
                               struct loom_err *err);
/* The same for a whole file, read in chunks. */
int loom_registry_verify_file(const char *path, const char *digest, struct loom_err *err);

/* A content descriptor from a manifest. */
struct loom_registry_desc {
    char *media_type;
    char *digest;
    int64_t size;
};

struct loom_registry_manifest {
    struct loom_registry_desc config;
    struct loom_registry_desc *layers; /* lowest first */
    size_t nlayers;
};

void loom_registry_manifest_release(struct loom_registry_manifest *m); /* accepts NULL */

/* True when the manifest body (with the Content-Type the registry gave, or
 * NULL) is an OCI index or a Docker manifest list. Fails on a body that is
 * not JSON, or whose media type is none of the four accepted ones. */
int loom_registry_manifest_is_index(const char *body, size_t len, const char *content_type,
                                    bool *ret_is_index, struct loom_err *err);

/* Picks the linux/amd64 manifest of an index; *ret is its "sha256:..."
 * digest. No such entry is LOOM_ENOTFOUND. */
int loom_registry_index_pick(const char *body, size_t len, char **ret, struct loom_err *err);

/* Parses and validates an image manifest (OCI or Docker v2 schema 2): media
 * types, digests, sizes, at most LOOM_REGISTRY_MAX_LAYERS layers, a config of at
 * most LOOM_REGISTRY_MAX_CONFIG_BYTES. */
int loom_registry_manifest_parse(const char *body, size_t len, struct loom_registry_manifest *ret,
                                 struct loom_err *err);

/* One connection context for one repository (its auth state: a bearer token
 * obtained on the first 401 is reused for later requests). */
struct loom_registry_client;

/* auth is "user:password" or NULL. image names the image in messages. */
int loom_registry_client_new(const struct loom_registry_ref *ref, const char *image,
                             const char *auth, const char *insecure_hosts,
                             struct loom_registry_client **ret, struct loom_err *err);
void loom_registry_client_free(struct loom_registry_client *c); /* accepts NULL */

/* GET /v2/<repo>/manifests/<reference> (a tag or a digest) accepting the four
 * manifest media types. When reference is a digest, the body is verified
 * against it. *ret_body is NUL-terminated, *ret_content_type may be NULL, and
 * *ret_digest is the sha256 of the body. 404 is LOOM_ENOTFOUND
 * `image "REF" not found: manifest unknown`; a registry that cannot be reached
 * is LOOM_EUNAVAIL naming it. */
int loom_registry_get_manifest(struct loom_registry_client *c, const char *reference,
                               char **ret_body, size_t *ret_len, char **ret_content_type,
                               char **ret_digest, struct loom_err *err);

/* Downloads blob digest (of the size the manifest states, at most max_size
 * bytes) into a temporary file in tmp_dir, hashing as it streams, and
 * renames it to dest only when its sha256 and size match; otherwise the
 * temporary file is removed and the error is LOOM_EINVAL
 * `digest mismatch for blob sha256:...`. */
int loom_registry_fetch_blob(struct loom_registry_client *c, const char *digest, int64_t size,
                             int64_t max_size, const char *tmp_dir, const char *dest,
                             struct loom_err *err);

/* Whether the client's repository has blob digest (HEAD). */
int loom_registry_blob_exists(struct loom_registry_client *c, const char *digest, bool *ret,
                              struct loom_err *err);
/* Asks the registry to link blob digest of repository from_repo (same
 * registry) into the client's: *ret_mounted when it did, so no upload is
 * needed; otherwise nothing changed. */
int loom_registry_blob_mount(struct loom_registry_client *c, const char *digest,
                             const char *from_repo, bool *ret_mounted, struct loom_err *err);
/* Uploads blob digest of len bytes, read from f (from its position) or
 * from data, in one PUT; the registry checks the digest. */
int loom_registry_blob_push(struct loom_registry_client *c, const char *digest, FILE *f,
                            const void *data, int64_t len, struct loom_err *err);
/* The blob in the repository once: nothing sent when the registry has it,
 * a cross-repository mount from mount_from (or NULL) when it has it there,
 * else an upload of f or data (both NULL: LOOM_ENOTFOUND). *ret_sent: the
 * bytes uploaded. */
int loom_registry_blob_ensure(struct loom_registry_client *c, const char *digest, FILE *f,
                              const void *data, int64_t len, const char *mount_from,
                              int64_t *ret_sent, struct loom_err *err);
/* PUT of a manifest under reference (a tag or its digest). */
int loom_registry_put_manifest(struct loom_registry_client *c, const char *reference,
                               const char *media_type, const char *body, size_t len,
                               struct loom_err *err);
/* A blob of at most max bytes into memory (NUL-terminated), verified. */
int loom_registry_get_blob(struct loom_registry_client *c, const char *digest, size_t max,
                           char **ret, size_t *ret_len, struct loom_err *err);

#endif
