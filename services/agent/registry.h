/* OCI distribution client for the agent's image store: image references,
 * manifest and config validation, and blob downloads verified against their
 * sha256 digest.
 *
 * Only sha256 digests are supported. Everything read from a registry is
 * checked here before the image store uses it. */
#ifndef LOOM_AGENT_REGISTRY_H
#define LOOM_AGENT_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define REGISTRY_MAX_MANIFEST_BYTES (4 * 1024 * 1024)
#define REGISTRY_MAX_CONFIG_BYTES (4 * 1024 * 1024)
#define REGISTRY_MAX_LAYERS 128

#define MEDIA_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MEDIA_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MEDIA_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MEDIA_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"

/* "host[:port]/repo[:tag]" or "host[:port]/repo[:tag]@sha256:<64 hex>".
 * The host is required (it must contain '.' or ':', be "localhost", or be a
 * bracketed IPv6 address); repository path components follow the
 * distribution grammar (lowercase alphanumerics joined by '.', '_', '__' or
 * dashes); the tag defaults to "latest". */
struct registry_ref {
    char *host;   /* "127.0.0.1:5000", "[::1]:5000", "registry.example.com" */
    char *repo;   /* "library/busybox" */
    char *tag;    /* "latest" when neither tag nor digest was given; may be NULL */
    char *digest; /* "sha256:<hex>" or NULL */
};

/* Fills ret; a malformed ref is LOOM_EINVAL `invalid image reference "x": reason`. */
int registry_ref_parse(const char *ref, struct registry_ref *ret, struct loom_err *err);
void registry_ref_release(struct registry_ref *ref); /* accepts NULL */

/* True for "sha256:" followed by exactly 64 lowercase hex characters. */
bool registry_digest_valid(const char *digest);

/* True when host ("host[:port]") is reached over plain http: 127.0.0.1,
 * localhost and [::1] on any port, and each entry of insecure_hosts (comma
 * separated; an entry without a port matches every port of that host). */
bool registry_host_insecure(const char *host, const char *insecure_hosts);

/* sha256 of data compared with digest; a mismatch is LOOM_EINVAL
 * `digest mismatch for blob <digest>: got sha256:<actual>`. */
int registry_verify_bytes(const void *data, size_t len, const char *digest, struct loom_err *err);
/* The same for a whole file, read in chunks. */
int registry_verify_file(const char *path, const char *digest, struct loom_err *err);

/* A content descriptor from a manifest. */
struct registry_desc {
    char *media_type;
    char *digest;
    int64_t size;
};

struct registry_manifest {
    struct registry_desc config;
    struct registry_desc *layers; /* lowest first */
    size_t nlayers;
};

void registry_manifest_release(struct registry_manifest *m); /* accepts NULL */

/* True when the manifest body (with the Content-Type the registry gave, or
 * NULL) is an OCI index or a Docker manifest list. Fails on a body that is
 * not JSON, or whose media type is none of the four accepted ones. */
int registry_manifest_is_index(const char *body, size_t len, const char *content_type,
                               bool *ret_is_index, struct loom_err *err);

/* Picks the linux/amd64 manifest of an index; *ret is its "sha256:..."
 * digest. No such entry is LOOM_ENOTFOUND. */
int registry_index_pick(const char *body, size_t len, char **ret, struct loom_err *err);

/* Parses and validates an image manifest (OCI or Docker v2 schema 2): media
 * types, digests, sizes, at most REGISTRY_MAX_LAYERS layers, a config of at
 * most REGISTRY_MAX_CONFIG_BYTES. */
int registry_manifest_parse(const char *body, size_t len, struct registry_manifest *ret,
                            struct loom_err *err);

/* One connection context for one repository (its auth state: a bearer token
 * obtained on the first 401 is reused for later requests). */
struct registry_client;

/* auth is "user:password" or NULL. image names the image in messages. */
int registry_client_new(const struct registry_ref *ref, const char *image, const char *auth,
                        const char *insecure_hosts, struct registry_client **ret,
                        struct loom_err *err);
void registry_client_free(struct registry_client *c); /* accepts NULL */

/* GET /v2/<repo>/manifests/<reference> (a tag or a digest) accepting the four
 * manifest media types. When reference is a digest, the body is verified
 * against it. *ret_body is NUL-terminated, *ret_content_type may be NULL, and
 * *ret_digest is the sha256 of the body. 404 is LOOM_ENOTFOUND
 * `image "REF" not found: manifest unknown`; a registry that cannot be reached
 * is LOOM_EUNAVAIL naming it. */
int registry_get_manifest(struct registry_client *c, const char *reference, char **ret_body,
                          size_t *ret_len, char **ret_content_type, char **ret_digest,
                          struct loom_err *err);

/* Downloads blob digest (of the size the manifest states, at most max_size
 * bytes) into a temporary file in tmp_dir, hashing as it streams, and
 * renames it to dest only when its sha256 and size match; otherwise the
 * temporary file is removed and the error is LOOM_EINVAL
 * `digest mismatch for blob sha256:...`. */
int registry_fetch_blob(struct registry_client *c, const char *digest, int64_t size,
                        int64_t max_size, const char *tmp_dir, const char *dest,
                        struct loom_err *err);

#endif
