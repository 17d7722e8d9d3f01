#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "cleanup.h"
#include "httpc.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"

#define TOKEN_MAX_BYTES (1024 * 1024)
#define REF_MAX_LEN 1024

/* --- small helpers ------------------------------------------------------------ */

static bool is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_hex_lower(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

bool loom_registry_digest_valid(const char *digest)
{
    if (!digest || strncmp(digest, "sha256:", 7) != 0)
        return false;
    const char *hex = digest + 7;
    size_t n = 0;
    for (; hex[n]; n++)
        if (!is_hex_lower(hex[n]))
            return false;
    return n == 64;
}

/* --- references ------------------------------------------------------------------ */

void loom_registry_ref_release(struct loom_registry_ref *ref)
{
    if (!ref)
        return;
    free(ref->host);
    free(ref->repo);
    free(ref->tag);
    free(ref->digest);
    memset(ref, 0, sizeof(*ref));
}

static bool host_valid(const char *h, size_t n)
{
    size_t i = 0;
    if (n == 0)
        return false;
    if (h[0] == '[') {
        /* [ipv6] */
        for (i = 1; i < n && h[i] != ']'; i++)
            if (!(is_hex_lower(h[i]) || (h[i] >= 'A' && h[i] <= 'F') || h[i] == ':' || h[i] == '.'))
                return false;
        if (i >= n || i == 1)
            return false;
        i++;
    } else {
        for (; i < n && h[i] != ':'; i++) {
            char c = h[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-'))
                return false;
        }
        if (i == 0 || h[0] == '-' || h[0] == '.' || h[i - 1] == '-' || h[i - 1] == '.')
            return false;
    }
    if (i == n)
        return true;
    if (h[i] != ':')
        return false;
    i++;
    if (i == n || n - i > 5)
        return false;
    long port = 0;
    for (; i < n; i++) {
        if (h[i] < '0' || h[i] > '9')
            return false;
        port = port * 10 + (h[i] - '0');
    }
    return port >= 1 && port <= 65535;
}

/* One path component: alphanumerics joined by ".", "_", "__" or any number
 * of "-" (the distribution spec's grammar). */
static bool repo_component_valid(const char *s, size_t n)
{
    if (n == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[n - 1]))
        return false;
    size_t i = 0;
    while (i < n) {
        if (is_lower_alnum(s[i])) {
            i++;
            continue;
        }
        /* a separator */
        if (s[i] == '.') {
            i++;
        } else if (s[i] == '_') {
            i++;
            if (i < n && s[i] == '_')
                i++;
        } else if (s[i] == '-') {
            while (i < n && s[i] == '-')
                i++;
        } else {
            return false;
        }
        if (i >= n || !is_lower_alnum(s[i]))
            return false;
    }
    return true;
}

static bool tag_valid(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        bool word =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!(word || (i > 0 && (c == '.' || c == '-'))))
            return false;
    }
    return true;
}

int loom_registry_ref_parse(const char *ref, struct loom_registry_ref *ret, struct loom_err *err)
{
    if (!ref || !*ref)
        return loom_err_set(err, LOOM_EINVAL, "invalid image reference \"\": empty");
    if (strlen(ref) > REF_MAX_LEN)
        return loom_err_set(err, LOOM_EINVAL, "invalid image reference: longer than %d bytes",
                            REF_MAX_LEN);
    _cleanup_free_ char *copy = strdup(ref);
    if (!copy)
        abort();

    _cleanup_free_ char *digest = NULL;
    char *at = strchr(copy, '@');
    if (at) {
        *at = '\0';
        const char *d = at + 1;
        if (strncmp(d, "sha256:", 7) != 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "invalid image reference \"%s\": only sha256 digests are supported",
                                ref);
        if (!loom_registry_digest_valid(d))
            return loom_err_set(
                err, LOOM_EINVAL,
                "invalid image reference \"%s\": digest must be sha256: and 64 lowercase hex", ref);
        digest = strdup(d);
    }

    char *slash = strchr(copy, '/');
    if (!slash)
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid image reference \"%s\": must start with a registry host "
                            "(host[:port]/repository[:tag])",
                            ref);
    size_t hostlen = (size_t)(slash - copy);
    bool hostlike = memchr(copy, '.', hostlen) || memchr(copy, ':', hostlen) ||
                    (hostlen == 9 && strncmp(copy, "localhost", 9) == 0) || copy[0] == '[';
    if (!hostlike)
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid image reference \"%s\": must start with a registry host "
                            "(host[:port]/repository[:tag])",
                            ref);
    if (!host_valid(copy, hostlen))
        return loom_err_set(err, LOOM_EINVAL, "invalid image reference \"%s\": bad registry host",
                            ref);

    char *path = slash + 1;
    _cleanup_free_ char *tag = NULL;
    char *lastslash = strrchr(path, '/');
    char *colon = strrchr(lastslash ? lastslash : path, ':');
    if (colon) {
        *colon = '\0';
        if (!tag_valid(colon + 1))
            return loom_err_set(err, LOOM_EINVAL,
                                "invalid image reference \"%s\": bad tag \"%s\" (1-128 of "
                                "[A-Za-z0-9_.-], not starting with '.' or '-')",
                                ref, colon + 1);
        tag = strdup(colon + 1);
    }
    size_t pathlen = strlen(path);
    if (pathlen == 0)
        return loom_err_set(err, LOOM_EINVAL, "invalid image reference \"%s\": no repository", ref);
    if (pathlen > 255)
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid image reference \"%s\": repository longer than 255 bytes",
                            ref);
    for (char *p = path;;) {
        char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (!repo_component_valid(p, n))
            return loom_err_set(err, LOOM_EINVAL,
                                "invalid image reference \"%s\": bad repository \"%s\" "
                                "(lowercase letters, digits and separators . _ __ -)",
                                ref, path);
        if (!e)
            break;
        p = e + 1;
    }
    if (!tag && !digest)
        tag = strdup("latest");

    ret->host = strndup(copy, hostlen);
    ret->repo = strdup(path);
    ret->tag = TAKE_PTR(tag);
    ret->digest = TAKE_PTR(digest);
    if (!ret->host || !ret->repo)
        abort();
    return 0;
}

bool loom_registry_host_insecure(const char *host, const char *insecure_hosts)
{
    /* host without its port */
    size_t bare = strlen(host);
    if (host[0] == '[') {
        const char *rb = strchr(host, ']');
        if (rb)
            bare = (size_t)(rb - host) + 1;
    } else {
        const char *c = strchr(host, ':');
        if (c)
            bare = (size_t)(c - host);
    }
    static const char *const local[] = {"127.0.0.1", "localhost", "[::1]"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(local); i++)
        if (strlen(local[i]) == bare && strncasecmp(host, local[i], bare) == 0)
            return true;
    if (!insecure_hosts)
        return false;
    const char *p = insecure_hosts;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ')
            e++;
        size_t n = (size_t)(e - p);
        if (n > 0) {
            /* "host:port" matches exactly; "host" matches any port */
            if ((n == strlen(host) && strncasecmp(p, host, n) == 0) ||
                (n == bare && strncasecmp(p, host, bare) == 0))
                return true;
        }
        p = e;
    }
    return false;
}

/* --- digests ------------------------------------------------------------------------ */

static int digest_mismatch(const char *digest, const unsigned char md[32], struct loom_err *err)
{
    char hex[65];
    loom_hex(md, 32, hex);
    if (loom_registry_digest_valid(digest) && strcmp(digest + 7, hex) == 0)
        return 0;
    return loom_err_set(err, LOOM_EINVAL, "digest mismatch for blob %s: got sha256:%s", digest,
                        hex);
}

int loom_registry_verify_bytes(const void *data, size_t len, const char *digest,
                               struct loom_err *err)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
        return loom_err_set(err, LOOM_EINTERNAL, "sha256 failed");
    return digest_mismatch(digest, md, err);
}

static void evp_freep(EVP_MD_CTX **c)
{
    EVP_MD_CTX_free(*c);
}

int loom_registry_verify_file(const char *path, const char *digest, struct loom_err *err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    __attribute__((cleanup(evp_freep))) EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        return loom_err_set(err, LOOM_EINTERNAL, "sha256 failed");
    static const size_t bufsz = 256 * 1024;
    _cleanup_free_ char *buf = malloc(bufsz);
    if (!buf)
        abort();
    for (;;) {
        ssize_t n = read(fd, buf, bufsz);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return loom_err_sys(err, errno, "could not read \"%s\"", path);
        if (n == 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!EVP_DigestFinal_ex(ctx, md, &mdlen))
        return loom_err_set(err, LOOM_EINTERNAL, "sha256 failed");
    return digest_mismatch(digest, md, err);
}

/* --- manifests ---------------------------------------------------------------------- */

void loom_registry_manifest_release(struct loom_registry_manifest *m)
{
    if (!m)
        return;
    free(m->config.media_type);
    free(m->config.digest);
    for (size_t i = 0; i < m->nlayers; i++) {
        free(m->layers[i].media_type);
        free(m->layers[i].digest);
    }
    free(m->layers);
    memset(m, 0, sizeof(*m));
}

static json_t *parse_json_object(const char *body, size_t len, const char *what,
                                 struct loom_err *err)
{
    json_error_t jerr;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        loom_err_set(err, LOOM_EINVAL, "invalid %s: not JSON: %s (line %d)", what, jerr.text,
                     jerr.line);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        loom_err_set(err, LOOM_EINVAL, "invalid %s: not a JSON object", what);
        return NULL;
    }
    return j;
}

/* Strips parameters: "application/json; charset=utf-8" -> "application/json". */
static char *media_type_base(const char *ct)
{
    size_t n = strcspn(ct, "; \t");
    char *s = strndup(ct, n);
    if (!s)
        abort();
    return s;
}

static int manifest_media_type(json_t *j, const char *content_type, const char **ret,
                               struct loom_err *err)
{
    static const char *const known[] = {LOOM_MEDIA_OCI_INDEX, LOOM_MEDIA_OCI_MANIFEST,
                                        LOOM_MEDIA_DOCKER_LIST, LOOM_MEDIA_DOCKER_MANIFEST};
    json_t *mt = json_object_get(j, "mediaType");
    const char *t = NULL;
    _cleanup_free_ char *ctbase = content_type ? media_type_base(content_type) : NULL;
    if (mt) {
        if (!json_is_string(mt))
            return loom_err_set(err, LOOM_EINVAL,
                                "invalid manifest: field \"mediaType\": must be a string");
        t = json_string_value(mt);
    } else if (ctbase && strcmp(ctbase, "application/json") != 0 &&
               strcmp(ctbase, "text/plain") != 0) {
        t = ctbase;
    } else {
        /* OCI allows omitting mediaType; the shape tells the kind */
        t = json_object_get(j, "manifests") ? LOOM_MEDIA_OCI_INDEX : LOOM_MEDIA_OCI_MANIFEST;
    }
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(known); i++)
        if (strcmp(t, known[i]) == 0) {
            *ret = known[i];
            return 0;
        }
    if (strcmp(t, "application/vnd.docker.distribution.manifest.v1+json") == 0 ||
        strcmp(t, "application/vnd.docker.distribution.manifest.v1+prettyjws") == 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "unsupported manifest media type \"%s\": Docker schema 1 images are "
                            "not supported; push the image again with a current tool",
                            t);
    return loom_err_set(err, LOOM_EINVAL, "unsupported manifest media type \"%.200s\"", t);
}

int loom_registry_manifest_is_index(const char *body, size_t len, const char *content_type,
                                    bool *ret_is_index, struct loom_err *err)
{
    _cleanup_json_ json_t *j = parse_json_object(body, len, "manifest", err);
    if (!j)
        return -1;
    const char *t = NULL;
    if (manifest_media_type(j, content_type, &t, err) < 0)
        return -1;
    *ret_is_index = strcmp(t, LOOM_MEDIA_OCI_INDEX) == 0 || strcmp(t, LOOM_MEDIA_DOCKER_LIST) == 0;
    return 0;
}

static int desc_parse(json_t *d, const char *where, struct loom_registry_desc *ret,
                      struct loom_err *err)
{
    if (!json_is_object(d))
        return loom_err_set(err, LOOM_EINVAL, "invalid manifest: %s: must be an object", where);
    json_t *mt = json_object_get(d, "mediaType");
    json_t *dg = json_object_get(d, "digest");
    json_t *sz = json_object_get(d, "size");
    if (!json_is_string(mt))
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid manifest: %s: field \"mediaType\": must be a string", where);
    if (!json_is_string(dg))
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid manifest: %s: field \"digest\": must be a string", where);
    if (!loom_registry_digest_valid(json_string_value(dg)))
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid manifest: %s: field \"digest\": \"%.100s\" is not sha256: "
                            "and 64 lowercase hex",
                            where, json_string_value(dg));
    if (!json_is_integer(sz) || json_integer_value(sz) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid manifest: %s: field \"size\": must be an integer >= 0", where);
    ret->media_type = strdup(json_string_value(mt));
    ret->digest = strdup(json_string_value(dg));
    ret->size = json_integer_value(sz);
    if (!ret->media_type || !ret->digest)
        abort();
    return 0;
}

int loom_registry_index_pick(const char *body, size_t len, char **ret, struct loom_err *err)
{
    _cleanup_json_ json_t *j = parse_json_object(body, len, "image index", err);
    if (!j)
        return -1;
    json_t *ms = json_object_get(j, "manifests");
    if (!json_is_array(ms))
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid image index: field \"manifests\": must be an array");
    size_t i;
    json_t *m;
    json_array_foreach(ms, i, m)
    {
        char where[64];
        snprintf(where, sizeof(where), "manifests[%zu]", i);
        struct loom_registry_desc d = {0};
        if (desc_parse(m, where, &d, err) < 0)
            return loom_err_wrap(err, "image index");
        json_t *p = json_object_get(m, "platform");
        const char *os = json_is_object(p) ? json_string_value(json_object_get(p, "os")) : NULL;
        const char *arch =
            json_is_object(p) ? json_string_value(json_object_get(p, "architecture")) : NULL;
        bool manifest_type = strcmp(d.media_type, LOOM_MEDIA_OCI_MANIFEST) == 0 ||
                             strcmp(d.media_type, LOOM_MEDIA_DOCKER_MANIFEST) == 0;
        if (os && arch && strcmp(os, "linux") == 0 && strcmp(arch, "amd64") == 0 && manifest_type) {
            if (d.size > LOOM_REGISTRY_MAX_MANIFEST_BYTES) {
                loom_err_set(err, LOOM_EINVAL,
                             "invalid image index: manifest %s is %lld bytes (at most %d)",
                             d.digest, (long long)d.size, LOOM_REGISTRY_MAX_MANIFEST_BYTES);
                free(d.media_type);
                free(d.digest);
                return -1;
            }
            free(d.media_type);
            *ret = d.digest;
            return 0;
        }
        free(d.media_type);
        free(d.digest);
    }
    return loom_err_set(err, LOOM_ENOTFOUND, "image index has no linux/amd64 image");
}

static bool layer_media_type_ok(const char *t)
{
    static const char *const ok[] = {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(ok); i++)
        if (strcmp(t, ok[i]) == 0)
            return true;
    return false;
}

int loom_registry_manifest_parse(const char *body, size_t len, struct loom_registry_manifest *ret,
                                 struct loom_err *err)
{
    _cleanup_json_ json_t *j = parse_json_object(body, len, "manifest", err);
    if (!j)
        return -1;
    const char *t = NULL;
    if (manifest_media_type(j, NULL, &t, err) < 0)
        return -1;
    if (strcmp(t, LOOM_MEDIA_OCI_MANIFEST) != 0 && strcmp(t, LOOM_MEDIA_DOCKER_MANIFEST) != 0)
        return loom_err_set(err, LOOM_EINVAL, "invalid manifest: media type \"%s\" is an index", t);
    json_t *sv = json_object_get(j, "schemaVersion");
    if (!json_is_integer(sv) || json_integer_value(sv) != 2)
        return loom_err_set(err, LOOM_EINVAL,
                            "invalid manifest: field \"schemaVersion\": must be 2");

    struct loom_registry_manifest m = {0};
    if (desc_parse(json_object_get(j, "config"), "config", &m.config, err) < 0)
        goto fail;
    if (strcmp(m.config.media_type, "application/vnd.oci.image.config.v1+json") != 0 &&
        strcmp(m.config.media_type, "application/vnd.docker.container.image.v1+json") != 0) {
        loom_err_set(err, LOOM_EINVAL,
                     "invalid manifest: config media type \"%.200s\" is not a container image "
                     "config",
                     m.config.media_type);
        goto fail;
    }
    if (m.config.size > LOOM_REGISTRY_MAX_CONFIG_BYTES) {
        loom_err_set(err, LOOM_EINVAL, "invalid manifest: config is %lld bytes (at most %d)",
                     (long long)m.config.size, LOOM_REGISTRY_MAX_CONFIG_BYTES);
        goto fail;
    }
    json_t *layers = json_object_get(j, "layers");
    if (!json_is_array(layers)) {
        loom_err_set(err, LOOM_EINVAL, "invalid manifest: field \"layers\": must be an array");
        goto fail;
    }
    size_t n = json_array_size(layers);
    if (n > LOOM_REGISTRY_MAX_LAYERS) {
        loom_err_set(err, LOOM_EINVAL, "invalid manifest: %zu layers (at most %d)", n,
                     LOOM_REGISTRY_MAX_LAYERS);
        goto fail;
    }
    m.layers = calloc(n ? n : 1, sizeof(*m.layers));
    if (!m.layers)
        abort();
    for (size_t i = 0; i < n; i++) {
        char where[64];
        snprintf(where, sizeof(where), "layers[%zu]", i);
        if (desc_parse(json_array_get(layers, i), where, &m.layers[i], err) < 0)
            goto fail;
        m.nlayers = i + 1;
        if (!layer_media_type_ok(m.layers[i].media_type)) {
            loom_err_set(err, LOOM_EINVAL,
                         "invalid manifest: %s: unsupported layer media type \"%.200s\"", where,
                         m.layers[i].media_type);
            goto fail;
        }
    }
    *ret = m;
    return 0;
fail:
    loom_registry_manifest_release(&m);
    return -1;
}

/* --- the client ------------------------------------------------------------------------- */

#define REGISTRY_TOKEN_REFRESH_MS 60000

struct loom_registry_client {
    char *base;  /* "http://127.0.0.1:5000/v2/<repo>" */
    char *host;  /* for messages */
    char *repo;  /* for the default token scope */
    char *image; /* for messages */
    char *basic; /* "Authorization: Basic ..." when credentials were given */
    char *authz; /* the header sent now: a bearer token, basic, or NULL */
    bool tried_token;
    int64_t token_ms; /* when the token was fetched (monotonic) */
};

void loom_registry_client_free(struct loom_registry_client *c)
{
    if (!c)
        return;
    free(c->base);
    free(c->host);
    free(c->repo);
    free(c->image);
    free(c->basic);
    free(c->authz);
    free(c);
}

int loom_registry_client_new(const struct loom_registry_ref *ref, const char *image,
                             const char *auth, const char *insecure_hosts,
                             struct loom_registry_client **ret, struct loom_err *err)
{
    struct loom_registry_client *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    const char *scheme = loom_registry_host_insecure(ref->host, insecure_hosts) ? "http" : "https";
    if (asprintf(&c->base, "%s://%s/v2/%s", scheme, ref->host, ref->repo) < 0)
        abort();
    c->host = strdup(ref->host);
    c->repo = strdup(ref->repo);
    c->image = strdup(image);
    if (!c->host || !c->repo || !c->image)
        abort();
    if (auth && *auth) {
        if (!strchr(auth, ':')) {
            loom_registry_client_free(c);
            return loom_err_set(err, LOOM_EINVAL, "registry credentials must be \"user:password\"");
        }
        size_t n = strlen(auth);
        _cleanup_free_ unsigned char *b64 = malloc(4 * ((n + 2) / 3) + 1);
        if (!b64)
            abort();
        EVP_EncodeBlock(b64, (const unsigned char *)auth, (int)n);
        if (asprintf(&c->basic, "Authorization: Basic %s", b64) < 0)
            abort();
    }
    *ret = c;
    return 0;
}

/* WWW-Authenticate: Bearer realm="...",service="...",scope="..." */
struct challenge {
    char scheme[16];
    char *realm;
    char *service;
    char *scope;
};

static void challenge_release(struct challenge *ch)
{
    free(ch->realm);
    free(ch->service);
    free(ch->scope);
}

static void parse_challenge(const char *h, struct challenge *ch)
{
    memset(ch, 0, sizeof(*ch));
    const char *p = h;
    while (*p == ' ')
        p++;
    size_t n = strcspn(p, " ");
    snprintf(ch->scheme, sizeof(ch->scheme), "%.*s", (int)(n < 15 ? n : 15), p);
    p += n;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *k = p;
        while (*p && *p != '=' && *p != ',' && *p != ' ')
            p++;
        size_t klen = (size_t)(p - k);
        if (*p != '=') {
            continue;
        }
        p++;
        struct strbuf v = STRBUF_INIT;
        if (*p == '"') {
            p++;
            while (*p && *p != '"') {
                if (*p == '\\' && p[1])
                    p++;
                strbuf_addch(&v, *p++);
            }
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ',' && *p != ' ')
                strbuf_addch(&v, *p++);
        }
        char **slot = NULL;
        if (klen == 5 && strncasecmp(k, "realm", 5) == 0)
            slot = &ch->realm;
        else if (klen == 7 && strncasecmp(k, "service", 7) == 0)
            slot = &ch->service;
        else if (klen == 5 && strncasecmp(k, "scope", 5) == 0)
            slot = &ch->scope;
        if (slot && !*slot)
            *slot = strbuf_detach(&v, NULL);
        else
            strbuf_release(&v);
    }
}

static void add_query_escaped(struct strbuf *sb, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~')
            strbuf_addch(sb, (char)c);
        else
            strbuf_addf(sb, "%%%02X", c);
    }
}

static int transport_error(struct loom_registry_client *c, struct loom_err *err)
{
    /* keep the transport's reason, but the code callers branch on is EUNAVAIL */
    char reason[sizeof(err->msg)];
    snprintf(reason, sizeof(reason), "%s", err ? err->msg : "");
    return loom_err_set(err, LOOM_EUNAVAIL, "registry %s unreachable: %s", c->host, reason);
}

/* Fetches a bearer token from the challenge's realm (with basic credentials
 * when the caller gave some) and makes it the header for later requests. */
static int fetch_token(struct loom_registry_client *c, const struct challenge *ch,
                       struct loom_err *err)
{
    if (!ch->realm ||
        (strncmp(ch->realm, "https://", 8) != 0 && strncmp(ch->realm, "http://", 7) != 0))
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "registry %s: bearer challenge without a usable realm", c->host);
    _cleanup_strbuf_ struct strbuf url = STRBUF_INIT;
    strbuf_addstr(&url, ch->realm);
    char sep = strchr(ch->realm, '?') ? '&' : '?';
    if (ch->service) {
        strbuf_addch(&url, sep);
        strbuf_addstr(&url, "service=");
        add_query_escaped(&url, ch->service);
        sep = '&';
    }
    strbuf_addch(&url, sep);
    strbuf_addstr(&url, "scope=");
    if (ch->scope) {
        add_query_escaped(&url, ch->scope);
    } else {
        _cleanup_free_ char *scope = NULL;
        if (asprintf(&scope, "repository:%s:pull", c->repo) < 0)
            abort();
        add_query_escaped(&url, scope);
    }
    const char *headers[] = {c->basic, NULL};
    struct loom_httpc_req req = {
        .url = url.buf,
        .headers = c->basic ? headers : NULL,
        .max_body = TOKEN_MAX_BYTES,
        .timeout_ms = 30000,
    };
    struct loom_httpc_resp resp = {0};
    strbuf_init(&resp.body);
    if (loom_httpc_do(&req, &resp, err) < 0) {
        loom_httpc_resp_release(&resp);
        return loom_err_wrap(err, "registry %s: token server %s", c->host, ch->realm);
    }
    long status = resp.status;
    if (status == 401 || status == 403) {
        loom_httpc_resp_release(&resp);
        return loom_err_set(
            err, LOOM_EUNAUTH, "registry %s: token server refused %s for image \"%s\" (HTTP %ld)",
            c->host, c->basic ? "the credentials" : "anonymous access", c->image, status);
    }
    if (status != 200) {
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, LOOM_EUNAVAIL, "registry %s: token server answered HTTP %ld",
                            c->host, status);
    }
    json_error_t jerr;
    _cleanup_json_ json_t *j = json_loadb(resp.body.buf, resp.body.len, 0, &jerr);
    loom_httpc_resp_release(&resp);
    const char *tok = NULL;
    if (json_is_object(j)) {
        tok = json_string_value(json_object_get(j, "token"));
        if (!tok)
            tok = json_string_value(json_object_get(j, "access_token"));
    }
    if (!tok || !*tok || strpbrk(tok, "\r\n"))
        return loom_err_set(err, LOOM_EUNAVAIL, "registry %s: token server gave no token", c->host);
    free(c->authz);
    if (asprintf(&c->authz, "Authorization: Bearer %s", tok) < 0)
        abort();
    return 0;
}

/* Called on a 401: sets up credentials for one retry, or fails. */
static int handle_unauthorized(struct loom_registry_client *c, const char *www_authenticate,
                               struct loom_err *err)
{
    struct challenge ch;
    parse_challenge(www_authenticate ? www_authenticate : "", &ch);
    int r;
    /* a token that worked can expire in a long pull (Docker Hub's last
     * 300 s): a refused one older than a minute is fetched again */
    if (strcasecmp(ch.scheme, "Bearer") == 0 &&
        (!c->tried_token || loom_mono_ms() - c->token_ms > REGISTRY_TOKEN_REFRESH_MS)) {
        c->tried_token = true;
        c->token_ms = loom_mono_ms();
        r = fetch_token(c, &ch, err);
    } else if (strcasecmp(ch.scheme, "Basic") == 0 && c->basic &&
               (!c->authz || strcmp(c->authz, c->basic) != 0)) {
        free(c->authz);
        c->authz = strdup(c->basic);
        if (!c->authz)
            abort();
        r = 0;
    } else if (c->authz) {
        r = loom_err_set(err, LOOM_EUNAUTH, "registry %s refused the credentials for image \"%s\"",
                         c->host, c->image);
    } else {
        r = loom_err_set(err, LOOM_EUNAUTH, "registry %s requires credentials for image \"%s\"",
                         c->host, c->image);
    }
    challenge_release(&ch);
    return r;
}

/* The registry's own reason from an error body: {"errors":[{"message":"..."}]}. */
static void registry_reason(const struct strbuf *body, const char *fallback, char *out,
                            size_t outsz)
{
    snprintf(out, outsz, "%s", fallback);
    if (body->len == 0)
        return;
    _cleanup_json_ json_t *j = json_loadb(body->buf, body->len, 0, NULL);
    json_t *e = json_is_object(j) ? json_array_get(json_object_get(j, "errors"), 0) : NULL;
    const char *msg = json_is_object(e) ? json_string_value(json_object_get(e, "message")) : NULL;
    if (msg && *msg)
        snprintf(out, outsz, "%.200s", msg);
}

int loom_registry_get_manifest(struct loom_registry_client *c, const char *reference,
                               char **ret_body, size_t *ret_len, char **ret_content_type,
                               char **ret_digest, struct loom_err *err)
{
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/manifests/%s", c->base, reference) < 0)
        abort();
    static const char accept[] = "Accept: " LOOM_MEDIA_OCI_INDEX ", " LOOM_MEDIA_OCI_MANIFEST
                                 ", " LOOM_MEDIA_DOCKER_LIST ", " LOOM_MEDIA_DOCKER_MANIFEST;
    struct loom_httpc_resp resp = {0};
    for (int attempt = 0;; attempt++) {
        const char *headers[] = {accept, c->authz, NULL};
        struct loom_httpc_req req = {
            .url = url,
            .headers = headers,
            .max_body = LOOM_REGISTRY_MAX_MANIFEST_BYTES,
            .timeout_ms = 30000,
        };
        loom_httpc_resp_release(&resp);
        memset(&resp, 0, sizeof(resp));
        strbuf_init(&resp.body);
        if (loom_httpc_do(&req, &resp, err) < 0) {
            loom_httpc_resp_release(&resp);
            if (err && err->code == LOOM_ETOOBIG)
                return loom_err_set(err, LOOM_EINVAL,
                                    "manifest of image \"%s\" is larger than %d bytes", c->image,
                                    LOOM_REGISTRY_MAX_MANIFEST_BYTES);
            return transport_error(c, err);
        }
        if (resp.status == 401 && attempt < 2) {
            if (handle_unauthorized(c, resp.www_authenticate, err) < 0) {
                loom_httpc_resp_release(&resp);
                return -1;
            }
            continue;
        }
        break;
    }
    char reason[256];
    if (resp.status == 404) {
        registry_reason(&resp.body, "manifest unknown", reason, sizeof(reason));
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, LOOM_ENOTFOUND, "image \"%s\" not found: %s", c->image, reason);
    }
    if (resp.status == 401 || resp.status == 403) {
        enum loom_errc code = resp.status == 401 ? LOOM_EUNAUTH : LOOM_EPERM;
        registry_reason(&resp.body, "access denied", reason, sizeof(reason));
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, code, "registry %s refused access to image \"%s\": %s", c->host,
                            c->image, reason);
    }
    if (resp.status != 200) {
        long st = resp.status;
        registry_reason(&resp.body, "unexpected answer", reason, sizeof(reason));
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, st >= 500 ? LOOM_EUNAVAIL : LOOM_EINTERNAL,
                            "registry %s: HTTP %ld for the manifest of image \"%s\": %s", c->host,
                            st, c->image, reason);
    }
    if (resp.body.len > LOOM_REGISTRY_MAX_MANIFEST_BYTES) {
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, LOOM_EINVAL, "manifest of image \"%s\" is larger than %d bytes",
                            c->image, LOOM_REGISTRY_MAX_MANIFEST_BYTES);
    }

    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(resp.body.buf, resp.body.len, md, &mdlen, EVP_sha256(), NULL);
    char hex[65];
    loom_hex(md, 32, hex);
    _cleanup_free_ char *digest = NULL;
    if (asprintf(&digest, "sha256:%s", hex) < 0)
        abort();
    if (loom_registry_digest_valid(reference) && strcmp(reference, digest) != 0) {
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, LOOM_EINVAL, "digest mismatch for blob %s: got %s", reference,
                            digest);
    }
    /* pulled by tag, the registry's Docker-Content-Digest must agree with the bytes */
    if (!loom_registry_digest_valid(reference) && resp.docker_content_digest &&
        strncmp(resp.docker_content_digest, "sha256:", 7) == 0 &&
        strcmp(resp.docker_content_digest, digest) != 0) {
        loom_err_set(err, LOOM_EINVAL, "digest mismatch for blob %.80s: got %s",
                     resp.docker_content_digest, digest);
        loom_httpc_resp_release(&resp);
        return -1;
    }
    char *ct = resp.content_type ? strdup(resp.content_type) : NULL;
    *ret_body = strbuf_detach(&resp.body, ret_len);
    *ret_content_type = ct;
    *ret_digest = TAKE_PTR(digest);
    loom_httpc_resp_release(&resp);
    return 0;
}

struct blob_sink {
    int fd;
    EVP_MD_CTX *ctx;
    int64_t received;
    int64_t limit;
    bool too_big;
    int write_errno;
};

static int blob_sink_write(const void *data, size_t len, void *arg)
{
    struct blob_sink *s = arg;
    s->received += (int64_t)len;
    if (s->received > s->limit) {
        s->too_big = true;
        return 1;
    }
    EVP_DigestUpdate(s->ctx, data, len);
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(s->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            s->write_errno = errno;
            return 1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int blob_attempt(struct loom_registry_client *c, const char *url, const char *digest,
                        int64_t size, const char *tmp_path, long *ret_status,
                        char **ret_www_authenticate, struct strbuf *errbody,
                        unsigned char ret_md[32], struct loom_err *err)
{
    _cleanup_close_ int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s\"", tmp_path);
    __attribute__((cleanup(evp_freep))) EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        return loom_err_set(err, LOOM_EINTERNAL, "sha256 failed");
    /* an error body is small; a blob body may not exceed its stated size */
    struct blob_sink sink = {.fd = fd, .ctx = ctx, .limit = size < 65536 ? 65536 : size};
    const char *headers[] = {c->authz, NULL};
    struct loom_httpc_req req = {
        .url = url,
        .headers = headers,
        .sink = blob_sink_write,
        .sink_arg = &sink,
        .follow_redirects = 1,
        /* the whole transfer: a minute plus one second per MiB */
        .timeout_ms = 60000 + size / 1024,
    };
    struct loom_httpc_resp resp = {0};
    strbuf_init(&resp.body);
    int r = loom_httpc_do(&req, &resp, err);
    if (sink.too_big) {
        loom_httpc_resp_release(&resp);
        return loom_err_set(err, LOOM_EINVAL, "blob %s is larger than the %lld bytes stated",
                            digest, (long long)size);
    }
    if (sink.write_errno) {
        loom_httpc_resp_release(&resp);
        return loom_err_sys(err, sink.write_errno, "could not write \"%s\"", tmp_path);
    }
    if (r < 0) {
        loom_httpc_resp_release(&resp);
        return transport_error(c, err);
    }
    *ret_status = resp.status;
    *ret_www_authenticate = resp.www_authenticate ? strdup(resp.www_authenticate) : NULL;
    loom_httpc_resp_release(&resp);
    if (*ret_status != 200) {
        /* the error body went to the file: read back a little of it */
        char buf[4096];
        ssize_t n = pread(fd, buf, sizeof(buf), 0);
        if (n > 0)
            strbuf_add(errbody, buf, (size_t)n);
        return 0;
    }
    if (sink.received != size)
        return loom_err_set(err, LOOM_EINVAL,
                            "blob %s: got %lld bytes, the manifest says %lld (digest mismatch)",
                            digest, (long long)sink.received, (long long)size);
    if (fsync(fd) < 0)
        return loom_err_sys(err, errno, "could not sync \"%s\"", tmp_path);
    unsigned int mdlen = 0;
    if (!EVP_DigestFinal_ex(ctx, ret_md, &mdlen))
        return loom_err_set(err, LOOM_EINTERNAL, "sha256 failed");
    return 0;
}

int loom_registry_fetch_blob(struct loom_registry_client *c, const char *digest, int64_t size,
                             int64_t max_size, const char *tmp_dir, const char *dest,
                             struct loom_err *err)
{
    if (!loom_registry_digest_valid(digest))
        return loom_err_set(err, LOOM_EINVAL, "invalid blob digest \"%.100s\"", digest);
    if (size < 0 || size > max_size)
        return loom_err_set(err, LOOM_EINVAL, "blob %s is %lld bytes (at most %lld)", digest,
                            (long long)size, (long long)max_size);
    _cleanup_free_ char *url = NULL;
    _cleanup_free_ char *tmp_path = NULL;
    if (asprintf(&url, "%s/blobs/%s", c->base, digest) < 0)
        abort();
    char rnd[37];
    loom_uuid4(rnd);
    if (asprintf(&tmp_path, "%s/blob-%.12s-%s", tmp_dir, digest + 7, rnd) < 0)
        abort();

    int r = -1;
    unsigned char md[32];
    long status = 0;
    _cleanup_strbuf_ struct strbuf errbody = STRBUF_INIT;
    for (int attempt = 0;; attempt++) {
        _cleanup_free_ char *www = NULL;
        strbuf_reset(&errbody);
        if (blob_attempt(c, url, digest, size, tmp_path, &status, &www, &errbody, md, err) < 0)
            goto out;
        if (status == 401 && attempt < 2) {
            if (handle_unauthorized(c, www, err) < 0)
                goto out;
            continue;
        }
        break;
    }
    char reason[256];
    if (status != 200) {
        registry_reason(&errbody, "unexpected answer", reason, sizeof(reason));
        enum loom_errc code = status == 404                    ? LOOM_ENOTFOUND
                              : status == 401                  ? LOOM_EUNAUTH
                              : status == 403                  ? LOOM_EPERM
                              : status >= 500 || status == 429 ? LOOM_EUNAVAIL
                                                               : LOOM_EINTERNAL;
        loom_err_set(err, code, "registry %s: HTTP %ld for blob %s of image \"%s\": %s", c->host,
                     status, digest, c->image, reason);
        goto out;
    }
    if (digest_mismatch(digest, md, err) < 0)
        goto out;
    if (rename(tmp_path, dest) < 0) {
        loom_err_sys(err, errno, "could not rename \"%s\" to \"%s\"", tmp_path, dest);
        goto out;
    }
    r = 0;
out:
    if (r < 0)
        unlink(tmp_path);
    return r;
}

/* --- pushing ----------------------------------------------------------------------------- */

/* req against the registry with the client's credentials: a 401 is answered
 * (handle_unauthorized) and req sent again, its file body from the start.
 * extra: headers before the credentials (NULL-terminated, at most 4). The
 * answer is in *resp (released by the caller) whatever its status. */
static int send_authorized(struct loom_registry_client *c, struct loom_httpc_req *req,
                           const char *const *extra, struct loom_httpc_resp *resp,
                           struct loom_err *err)
{
    long start = req->body_file ? ftell(req->body_file) : 0;
    for (int attempt = 0;; attempt++) {
        const char *headers[6];
        size_t n = 0;
        for (; extra && extra[n] && n < 4; n++)
            headers[n] = extra[n];
        headers[n++] = c->authz;
        headers[n] = NULL;
        req->headers = headers;
        if (req->body_file && fseek(req->body_file, start, SEEK_SET) < 0)
            return loom_err_sys(err, errno, "could not rewind the blob");
        if (loom_httpc_do(req, resp, err) < 0)
            return transport_error(c, err);
        req->headers = NULL;
        if (resp->status != 401 || attempt >= 2)
            return 0;
        int r = handle_unauthorized(c, resp->www_authenticate, err);
        loom_httpc_resp_release(resp);
        if (r < 0)
            return -1;
    }
}

/* An answer that is not the one wanted, as an error naming what was asked. */
static int unexpected(struct loom_registry_client *c, struct loom_httpc_resp *resp,
                      const char *what, struct loom_err *err)
{
    char reason[256];
    registry_reason(&resp->body, "unexpected answer", reason, sizeof(reason));
    long st = resp->status;
    enum loom_errc code = st == 404                ? LOOM_ENOTFOUND
                          : st == 401              ? LOOM_EUNAUTH
                          : st == 403              ? LOOM_EPERM
                          : st >= 500 || st == 429 ? LOOM_EUNAVAIL
                                                   : LOOM_EINVAL;
    loom_httpc_resp_release(resp);
    return loom_err_set(err, code, "registry %s: HTTP %ld for %s of %s: %s", c->host, st, what,
                        c->repo, reason);
}

int loom_registry_blob_exists(struct loom_registry_client *c, const char *digest, bool *ret,
                              struct loom_err *err)
{
    if (!loom_registry_digest_valid(digest))
        return loom_err_set(err, LOOM_EINVAL, "invalid blob digest \"%.100s\"", digest);
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/blobs/%s", c->base, digest) < 0)
        abort();
    struct loom_httpc_req req = {.method = "HEAD", .url = url, .timeout_ms = 30000};
    struct loom_httpc_resp resp = {0};
    if (send_authorized(c, &req, NULL, &resp, err) < 0)
        return -1;
    if (resp.status != 200 && resp.status != 404)
        return unexpected(c, &resp, digest, err);
    *ret = resp.status == 200;
    loom_httpc_resp_release(&resp);
    return 0;
}

/* The absolute URL of an upload's Location, with the digest that closes it. */
static char *upload_url(struct loom_registry_client *c, const char *location, const char *digest)
{
    char *url = NULL;
    const char *sep = strchr(location, '?') ? "&" : "?";
    int rc;
    if (strncmp(location, "http://", 7) == 0 || strncmp(location, "https://", 8) == 0) {
        rc = asprintf(&url, "%s%sdigest=sha256%%3A%s", location, sep, digest + 7);
    } else {
        /* relative to the registry: the scheme and host of the base */
        const char *host_end = strstr(c->base, "://");
        host_end = host_end ? strchr(host_end + 3, '/') : NULL;
        int n = host_end ? (int)(host_end - c->base) : (int)strlen(c->base);
        rc = asprintf(&url, "%.*s%s%s%sdigest=sha256%%3A%s", n, c->base,
                      location[0] == '/' ? "" : "/", location, sep, digest + 7);
    }
    if (rc < 0)
        abort();
    return url;
}

int loom_registry_blob_mount(struct loom_registry_client *c, const char *digest,
                             const char *from_repo, bool *ret_mounted, struct loom_err *err)
{
    _cleanup_free_ char *url = NULL;
    _cleanup_strbuf_ struct strbuf q = STRBUF_INIT;
    add_query_escaped(&q, from_repo);
    if (asprintf(&url, "%s/blobs/uploads/?mount=sha256%%3A%s&from=%s", c->base, digest + 7, q.buf) <
        0)
        abort();
    struct loom_httpc_req req = {.method = "POST", .url = url, .timeout_ms = 30000};
    struct loom_httpc_resp resp = {0};
    if (send_authorized(c, &req, NULL, &resp, err) < 0)
        return -1;
    *ret_mounted = resp.status == 201;
    if (resp.status == 202 && resp.location) {
        /* not mounted: the registry opened an upload instead; close it */
        _cleanup_free_ char *cancel = upload_url(c, resp.location, digest);
        struct loom_httpc_req del = {.method = "DELETE", .url = cancel, .timeout_ms = 10000};
        struct loom_httpc_resp dresp = {0};
        if (send_authorized(c, &del, NULL, &dresp, NULL) == 0)
            loom_httpc_resp_release(&dresp);
    } else if (resp.status != 201) {
        return unexpected(c, &resp, "a blob mount", err);
    }
    loom_httpc_resp_release(&resp);
    return 0;
}

int loom_registry_blob_push(struct loom_registry_client *c, const char *digest, FILE *f,
                            const void *data, int64_t len, struct loom_err *err)
{
    if (!loom_registry_digest_valid(digest))
        return loom_err_set(err, LOOM_EINVAL, "invalid blob digest \"%.100s\"", digest);
    _cleanup_free_ char *start = NULL;
    if (asprintf(&start, "%s/blobs/uploads/", c->base) < 0)
        abort();
    struct loom_httpc_req post = {.method = "POST", .url = start, .timeout_ms = 30000};
    struct loom_httpc_resp resp = {0};
    if (send_authorized(c, &post, NULL, &resp, err) < 0)
        return -1;
    if (resp.status != 202 || !resp.location)
        return unexpected(c, &resp, "the start of a blob upload", err);
    _cleanup_free_ char *url = upload_url(c, resp.location, digest);
    loom_httpc_resp_release(&resp);
    /* monolithic: the whole blob in one PUT, a minute plus a second per MiB */
    struct loom_httpc_req put = {
        .method = "PUT",
        .url = url,
        .body = f ? NULL : data,
        .body_file = f,
        .body_len = (size_t)len,
        .timeout_ms = 60000 + len / 1024,
    };
    static const char *const ct[] = {"Content-Type: application/octet-stream", NULL};
    if (send_authorized(c, &put, ct, &resp, err) < 0)
        return -1;
    if (resp.status != 201)
        return unexpected(c, &resp, digest, err);
    loom_httpc_resp_release(&resp);
    return 0;
}

int loom_registry_blob_ensure(struct loom_registry_client *c, const char *digest, FILE *f,
                              const void *data, int64_t len, const char *mount_from,
                              int64_t *ret_sent, struct loom_err *err)
{
    bool have = false;
    *ret_sent = 0;
    if (loom_registry_blob_exists(c, digest, &have, err) < 0)
        return -1;
    if (!have && mount_from && loom_registry_blob_mount(c, digest, mount_from, &have, err) < 0)
        return -1;
    if (have)
        return 0;
    if (!f && !data)
        return loom_err_set(err, LOOM_ENOTFOUND, "registry %s: blob %s is not in %s%s%s", c->host,
                            digest, c->repo, mount_from ? " nor in " : "",
                            mount_from ? mount_from : "");
    if (loom_registry_blob_push(c, digest, f, data, len, err) < 0)
        return -1;
    *ret_sent = len;
    return 0;
}

int loom_registry_put_manifest(struct loom_registry_client *c, const char *reference,
                               const char *media_type, const char *body, size_t len,
                               struct loom_err *err)
{
    _cleanup_free_ char *url = NULL, *ct = NULL;
    if (asprintf(&url, "%s/manifests/%s", c->base, reference) < 0 ||
        asprintf(&ct, "Content-Type: %s", media_type) < 0)
        abort();
    struct loom_httpc_req req = {
        .method = "PUT", .url = url, .body = body, .body_len = len, .timeout_ms = 30000};
    const char *const extra[] = {ct, NULL};
    struct loom_httpc_resp resp = {0};
    if (send_authorized(c, &req, extra, &resp, err) < 0)
        return -1;
    if (resp.status != 201)
        return unexpected(c, &resp, reference, err);
    loom_httpc_resp_release(&resp);
    return 0;
}

int loom_registry_get_blob(struct loom_registry_client *c, const char *digest, size_t max,
                           char **ret, size_t *ret_len, struct loom_err *err)
{
    if (!loom_registry_digest_valid(digest))
        return loom_err_set(err, LOOM_EINVAL, "invalid blob digest \"%.100s\"", digest);
    _cleanup_free_ char *url = NULL;
    if (asprintf(&url, "%s/blobs/%s", c->base, digest) < 0)
        abort();
    struct loom_httpc_req req = {
        .url = url, .max_body = max, .timeout_ms = 60000, .follow_redirects = 1};
    struct loom_httpc_resp resp = {0};
    if (send_authorized(c, &req, NULL, &resp, err) < 0)
        return -1;
    if (resp.status != 200)
        return unexpected(c, &resp, digest, err);
    if (loom_registry_verify_bytes(resp.body.buf, resp.body.len, digest, err) < 0) {
        loom_httpc_resp_release(&resp);
        return -1;
    }
    *ret = strbuf_detach(&resp.body, ret_len);
    loom_httpc_resp_release(&resp);
    return 0;
}
