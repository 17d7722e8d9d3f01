/* /v1/projects/{project}/uploads: the source of a build, as one tar.gz.
 * The HTTP server spools the body to a temporary file (at most
 * LOOM_API_MAX_UPLOAD bytes); it is checked (its Content-Digest when sent,
 * every entry, the size it unpacks to) and stored once, by content, in the
 * platform registry: a blob and an OCI artifact manifest in the project's
 * repository <project>/loom-sources. An upload the registry already holds
 * is not sent again. build_sources records which project uploaded what, so
 * that builds use only their own project's sources. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"
#include "registry.h"
#include "tarball.h"
#include "util.h"

#define SOURCE_MEDIA_TYPE "application/vnd.loom.source.v1.tar+gzip"
#define SOURCE_CONFIG_MEDIA_TYPE "application/vnd.loom.source.config.v1+json"

/* sha256 of what fd holds, read from its start; fd is left at its start. */
static int fd_sha256(int fd, char ret_hex[65], struct loom_err *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        abort();
    char buf[65536];
    ssize_t n;
    int rc = 0;
    while ((n = read(fd, buf, sizeof(buf))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = loom_err_sys(err, errno, "could not read the upload");
            break;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned char md[32];
    EVP_DigestFinal_ex(ctx, md, NULL);
    EVP_MD_CTX_free(ctx);
    loom_hex(md, 32, ret_hex);
    if (rc == 0 && lseek(fd, 0, SEEK_SET) < 0)
        rc = loom_err_sys(err, errno, "could not rewind the upload");
    return rc;
}

/* Content-Digest: sha-256=:<base64>: (RFC 9530), when the client sent one. */
static int check_content_digest(struct loom_http_req *req, const char *hex, struct loom_err *err)
{
    const char *h = loom_http_header(req, "Content-Digest");
    if (!h)
        return 0;
    const char *p = strstr(h, "sha-256=:");
    const char *end = p ? strchr(p + 9, ':') : NULL;
    _cleanup_free_ uint8_t *md = NULL;
    size_t n = 0;
    if (!end || loom_base64_decode(p + 9, (size_t)(end - p - 9), &md, &n) < 0 || n != 32)
        return loom_err_set(err, LOOM_EINVAL,
                            "header Content-Digest: not sha-256=:<base64 of 32 bytes>:");
    char got[65];
    loom_hex(md, 32, got);
    if (strcmp(got, hex) != 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "the upload arrived damaged: its sha256 is %s, Content-Digest says %s",
                            hex, got);
    return 0;
}

/* The blob and its artifact manifest in <registry>/<project>/loom-sources;
 * *ret_sent: the bytes sent to the registry (0 when it had the blob). */
static int store_source(const struct api_project *proj, int fd, int64_t size, const char *digest,
                        int64_t *ret_sent, struct loom_err *err)
{
    _cleanup_free_ char *image = NULL;
    if (asprintf(&image, "%s/%s/loom-sources", api_cfg.registry, proj->name) < 0)
        abort();
    struct loom_registry_ref ref = {0};
    struct loom_registry_client *c = NULL;
    if (loom_registry_ref_parse(image, &ref, err) < 0)
        return -1;
    int rc = loom_registry_client_new(&ref, image, NULL, NULL, &c, err);
    loom_registry_ref_release(&ref);
    if (rc < 0)
        return -1;
    int dupfd = dup(fd);
    FILE *f = dupfd >= 0 ? fdopen(dupfd, "r") : NULL;
    if (!f) {
        if (dupfd >= 0)
            close(dupfd);
        loom_registry_client_free(c);
        return loom_err_sys(err, errno, "could not read the upload");
    }
    static const char config[] = "{}";
    char config_digest[72], hex[65];
    loom_sha256_hex(config, 2, hex);
    snprintf(config_digest, sizeof(config_digest), "sha256:%s", hex);
    int64_t unused;
    _cleanup_free_ char *manifest = NULL;
    if (asprintf(
            &manifest,
            "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
            "\"config\":{\"mediaType\":\"" SOURCE_CONFIG_MEDIA_TYPE "\",\"digest\":\"%s\","
            "\"size\":2},\"layers\":[{\"mediaType\":\"" SOURCE_MEDIA_TYPE "\",\"digest\":"
            "\"%s\",\"size\":%lld}]}",
            config_digest, digest, (long long)size) < 0)
        abort();
    char manifest_digest[72];
    loom_sha256_hex(manifest, strlen(manifest), hex);
    snprintf(manifest_digest, sizeof(manifest_digest), "sha256:%s", hex);
    rc = loom_registry_blob_ensure(c, digest, f, NULL, size, NULL, ret_sent, err) < 0 ||
                 loom_registry_blob_ensure(c, config_digest, NULL, config, 2, NULL, &unused, err) <
                     0 ||
                 loom_registry_put_manifest(c, manifest_digest,
                                            "application/vnd.oci.image.manifest.v1+json", manifest,
                                            strlen(manifest), err) < 0
             ? -1
             : 0;
    fclose(f);
    loom_registry_client_free(c);
    return rc;
}

void api_uploads_create(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    if (!api_cfg.registry || !*api_cfg.registry) {
        loom_err_set(&err, LOOM_EUNAVAIL, "uploads need the platform registry (LOOM_REGISTRY)");
        API_FAIL(req, &err);
    }
    if (req->body_fd < 0 || req->body_len == 0) {
        loom_err_set(&err, LOOM_EINVAL, "the body is empty: send the source as one tar.gz");
        API_FAIL(req, &err);
    }
    const struct loom_tarball_limits limits = {api_cfg.max_upload_unpacked, 200000, true};
    char hex[65], digest[72];
    int64_t files = 0, sent = 0;
    if (fd_sha256(req->body_fd, hex, &err) < 0 || check_content_digest(req, hex, &err) < 0)
        API_FAIL(req, &err);
    if (loom_tarball_check_fd(req->body_fd, &limits, &files, &err) < 0) {
        loom_err_wrap(&err, "the upload");
        API_FAIL(req, &err);
    }
    snprintf(digest, sizeof(digest), "sha256:%s", hex);
    if (lseek(req->body_fd, 0, SEEK_SET) < 0 ||
        store_source(&proj, req->body_fd, (int64_t)req->body_len, digest, &sent, &err) < 0) {
        if (err.code == LOOM_EINVAL || err.code == LOOM_ENOTFOUND)
            err.code = LOOM_EUNAVAIL; /* the registry's refusal is not the caller's fault */
        API_FAIL(req, &err);
    }
    char size[24], nfiles[24];
    snprintf(size, sizeof(size), "%zu", req->body_len);
    snprintf(nfiles, sizeof(nfiles), "%lld", (long long)files);
    _cleanup_pgres_ PGresult *ins =
        loom_db_query(db, &err,
                      "WITH n AS (INSERT INTO build_sources (project_id, digest, size, files) "
                      "  VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1) "
                      "SELECT count(*) FROM n",
                      proj.id_str, digest, size, nfiles);
    if (!ins)
        API_FAIL(req, &err);
    bool created = strcmp(PQgetvalue(ins, 0, 0), "1") == 0;
    json_t *out = json_pack("{s:s,s:I,s:I,s:b,s:I}", "digest", digest, "size",
                            (json_int_t)req->body_len, "files", (json_int_t)files, "already_stored",
                            sent == 0, "bytes_stored", (json_int_t)sent);
    loom_http_reply_json(req, created ? 201 : 200, out);
}

void api_uploads_get(struct loom_http_req *req)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_pgres_ PGresult *res = api_find(
        db, &proj,
        "SELECT digest, size, files, " API_TS("created_at") " FROM build_sources "
                                                            "WHERE project_id = $1 AND digest = $2",
        "upload", req->params[1], &err);
    if (!res)
        API_FAIL(req, &err);
    loom_http_reply_json(req, 200,
                         json_pack("{s:s,s:I,s:I,s:s}", "digest", PQgetvalue(res, 0, 0), "size",
                                   (json_int_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10), "files",
                                   (json_int_t)strtoll(PQgetvalue(res, 0, 2), NULL, 10),
                                   "created_at", PQgetvalue(res, 0, 3)));
}
