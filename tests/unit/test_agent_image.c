/* The agent's image store: references, manifest validation, digest
 * verification, layer unpacking (whiteouts, refusals), the layer cache.
 *
 * Tarballs are generated here with libarchive's writer. Must run as root
 * (whiteouts are character devices, opaque dirs use trusted.* xattrs).
 *
 * Pulls go to a registry the test serves itself on loopback (common/http.c),
 * which counts what is fetched: two callers at once share one pull, a second
 * pull reuses the cached layers, a missing tag is a clear LOOM_ENOTFOUND. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "err.h"
#include "http.h"
#include "httpc.h"
#include "util.h"

#include "services/agent/image.h"
#include "services/agent/registry.h"
#include "services/agent/unpack.h"

static const char *const HEX_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/* --- fixtures ------------------------------------------------------------------------- */

struct tdir {
    char root[256]; /* realpath'd mkdtemp */
    char tmp[300];  /* <root>/tmp */
    char dest[300]; /* <root>/dest (does not exist yet) */
    char out[300];  /* <root>/outside: nothing may appear here */
    char tar[300];  /* <root>/layer.tar */
};

static void tdir_make(struct tdir *t)
{
    char tmpl[] = "/tmp/loom-test-image-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    assert_non_null(realpath(tmpl, t->root));
    snprintf(t->tmp, sizeof(t->tmp), "%s/tmp", t->root);
    snprintf(t->dest, sizeof(t->dest), "%s/dest", t->root);
    snprintf(t->out, sizeof(t->out), "%s/outside", t->root);
    snprintf(t->tar, sizeof(t->tar), "%s/layer.tar", t->root);
    assert_int_equal(mkdir(t->tmp, 0700), 0);
    assert_int_equal(mkdir(t->out, 0755), 0);
}

static void tdir_remove(struct tdir *t)
{
    assert_int_equal(loom_rm_rf(t->root, NULL), 0);
}

static size_t dir_count(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

enum tkind { T_FILE, T_DIR, T_SYMLINK, T_HARDLINK, T_CHR, T_FIFO };

struct tent {
    enum tkind kind;
    const char *path;
    const char *data; /* file content, or symlink / hard link target */
    unsigned perm;
    int uid;
    const char *xattr; /* "name=value" or NULL */
};

enum tfilter { F_NONE, F_GZIP, F_ZSTD };

static void make_tar(const char *path, enum tfilter filter, const struct tent *ents, size_t n)
{
    struct archive *a = archive_write_new();
    assert_non_null(a);
    if (filter == F_GZIP)
        assert_int_equal(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    else if (filter == F_ZSTD)
        assert_int_equal(archive_write_add_filter_zstd(a), ARCHIVE_OK);
    assert_int_equal(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        const struct tent *t = &ents[i];
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, t->path);
        archive_entry_set_perm(e, t->perm ? t->perm : 0644);
        archive_entry_set_uid(e, t->uid);
        archive_entry_set_gid(e, t->uid);
        archive_entry_set_mtime(e, 1700000000, 0);
        switch (t->kind) {
        case T_FILE:
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_size(e, (la_int64_t)strlen(t->data ? t->data : ""));
            break;
        case T_DIR:
            archive_entry_set_filetype(e, AE_IFDIR);
            archive_entry_set_perm(e, t->perm ? t->perm : 0755);
            break;
        case T_SYMLINK:
            archive_entry_set_filetype(e, AE_IFLNK);
            archive_entry_set_symlink(e, t->data);
            break;
        case T_HARDLINK:
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, t->data);
            archive_entry_set_size(e, 0);
            break;
        case T_CHR:
            archive_entry_set_filetype(e, AE_IFCHR);
            archive_entry_set_rdev(e, makedev(1, 3));
            break;
        case T_FIFO:
            archive_entry_set_filetype(e, AE_IFIFO);
            break;
        }
        if (t->xattr) {
            const char *eq = strchr(t->xattr, '=');
            char name[128];
            snprintf(name, sizeof(name), "%.*s", (int)(eq - t->xattr), t->xattr);
            archive_entry_xattr_add_entry(e, name, eq + 1, strlen(eq + 1));
        }
        assert_true(archive_write_header(a, e) >= ARCHIVE_WARN);
        if (t->kind == T_FILE && t->data && *t->data)
            assert_int_equal(archive_write_data(a, t->data, strlen(t->data)),
                             (la_ssize_t)strlen(t->data));
        archive_entry_free(e);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

static char *read_text(const char *path)
{
    char *s = NULL;
    if (loom_read_file(path, &s, NULL, NULL) < 0)
        return NULL;
    return s;
}

/* --- references ----------------------------------------------------------------------- */

static void test_ref_parse_good(void **state)
{
    (void)state;
    static const struct {
        const char *ref, *host, *repo, *tag, *digest;
    } cases[] = {
        {"127.0.0.1:5000/busybox", "127.0.0.1:5000", "busybox", "latest", NULL},
        {"127.0.0.1:5000/library/busybox:1.36", "127.0.0.1:5000", "library/busybox", "1.36", NULL},
        {"localhost/a/b/c:v1.0-rc_1", "localhost", "a/b/c", "v1.0-rc_1", NULL},
        {"registry.example.com/my-app__x.y", "registry.example.com", "my-app__x.y", "latest", NULL},
        {"[::1]:5000/x:t", "[::1]:5000", "x", "t", NULL},
        {"localhost:5000/x@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         "localhost:5000", "x", NULL,
         "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
        {"localhost:5000/"
         "x:tag@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         "localhost:5000", "x", "tag",
         "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++) {
        struct registry_ref r = {0};
        struct loom_err err = LOOM_ERR_INIT;
        if (registry_ref_parse(cases[i].ref, &r, &err) < 0)
            fail_msg("%s: %s", cases[i].ref, err.msg);
        assert_string_equal(r.host, cases[i].host);
        assert_string_equal(r.repo, cases[i].repo);
        if (cases[i].tag)
            assert_string_equal(r.tag, cases[i].tag);
        else
            assert_null(r.tag);
        if (cases[i].digest)
            assert_string_equal(r.digest, cases[i].digest);
        else
            assert_null(r.digest);
        registry_ref_release(&r);
    }
}

static void test_ref_parse_bad(void **state)
{
    (void)state;
    static const struct {
        const char *ref, *why;
    } cases[] = {
        {"", "empty"},
        {"busybox", "registry host"},
        {"library/busybox:latest", "registry host"},
        {"127.0.0.1:5000/", "no repository"},
        {"127.0.0.1:5000/Busybox", "bad repository"},
        {"127.0.0.1:5000/a//b", "bad repository"},
        {"127.0.0.1:5000/a-:x", "bad repository"},
        {"127.0.0.1:5000/a:", "bad tag"},
        {"127.0.0.1:5000/a:-x", "bad tag"},
        {"127.0.0.1:5000/a:t t", "bad tag"},
        {"127.0.0.1:99999/a", "bad registry host"},
        {"127.0.0.1:/a", "bad registry host"},
        {"127.0.0.1:5000/a@sha256:abc", "64 lowercase hex"},
        {"127.0.0.1:5000/a@sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
         "64 lowercase hex"},
        {"127.0.0.1:5000/a@sha512:aa", "only sha256"},
        {"127.0.0.1:5000/a@", "only sha256"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(cases); i++) {
        struct registry_ref r = {0};
        struct loom_err err = LOOM_ERR_INIT;
        if (registry_ref_parse(cases[i].ref, &r, &err) == 0)
            fail_msg("\"%s\" was accepted", cases[i].ref);
        assert_int_equal(err.code, LOOM_EINVAL);
        if (!strstr(err.msg, cases[i].why) || !strstr(err.msg, "invalid image reference"))
            fail_msg("\"%s\": message \"%s\" lacks \"%s\"", cases[i].ref, err.msg, cases[i].why);
    }
}

static void test_insecure_hosts(void **state)
{
    (void)state;
    assert_true(registry_host_insecure("127.0.0.1:5000", NULL));
    assert_true(registry_host_insecure("localhost", NULL));
    assert_true(registry_host_insecure("[::1]:15000", NULL));
    assert_false(registry_host_insecure("registry.example.com", NULL));
    assert_false(registry_host_insecure("127.0.0.10:5000", NULL));
    assert_true(registry_host_insecure("reg.lan:5000", "other:1, reg.lan:5000"));
    assert_false(registry_host_insecure("reg.lan:5001", "reg.lan:5000"));
    assert_true(registry_host_insecure("reg.lan:5001", "x,reg.lan"));
    assert_false(registry_host_insecure("reg.lanx", "reg.lan"));
}

/* --- manifests -------------------------------------------------------------------------- */

#define D64(c)                                                                                     \
    "sha256:" c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c c  \
        c c c c c c c c c c c c c c c c c c c c c c

static const char GOOD_MANIFEST[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"" D64(
        "1") "\",\"size\":100},"
             "\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
             "\"digest\":\"" D64("2") "\",\"size\":5},"
                                      "{\"mediaType\":\"application/"
                                      "vnd.docker.image.rootfs.diff.tar.gzip\","
                                      "\"digest\":\"" D64("3") "\",\"size\":0}]}";

static void expect_manifest_error(const char *json, const char *why)
{
    struct registry_manifest m = {0};
    struct loom_err err = LOOM_ERR_INIT;
    if (registry_manifest_parse(json, strlen(json), &m, &err) == 0)
        fail_msg("accepted: %s", json);
    assert_int_equal(err.code, LOOM_EINVAL);
    if (!strstr(err.msg, why))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, why);
}

static char *replace(const char *s, const char *from, const char *to)
{
    const char *p = strstr(s, from);
    assert_non_null(p);
    char *r = NULL;
    assert_true(asprintf(&r, "%.*s%s%s", (int)(p - s), s, to, p + strlen(from)) > 0);
    return r;
}

static void test_manifest_validation(void **state)
{
    (void)state;
    struct registry_manifest m = {0};
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(registry_manifest_parse(GOOD_MANIFEST, strlen(GOOD_MANIFEST), &m, &err), 0);
    assert_int_equal(m.nlayers, 2);
    assert_string_equal(m.config.digest, D64("1"));
    assert_int_equal(m.config.size, 100);
    assert_string_equal(m.layers[1].digest, D64("3"));
    registry_manifest_release(&m);

    static const struct {
        const char *from, *to, *why;
    } bad[] = {
        {"application/vnd.oci.image.manifest.v1+json", "application/x-helm", "media type"},
        {"application/vnd.oci.image.manifest.v1+json",
         "application/vnd.docker.distribution.manifest.v1+json", "schema 1"},
        {"\"schemaVersion\":2", "\"schemaVersion\":1", "schemaVersion"},
        {D64("1"), "sha256:1111", "field \"digest\""},
        {"\"sha256:2222", "\"sha512:2222", "field \"digest\""},
        {D64("2"), "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
         "field \"digest\""},
        {"\"size\":5", "\"size\":-1", "field \"size\""},
        {"\"size\":5", "\"size\":\"5\"", "field \"size\""},
        {"\"size\":100", "\"size\":999999999", "config is"},
        {"application/vnd.oci.image.config.v1+json", "application/vnd.cncf.helm.config+json",
         "not a container image config"},
        {"tar+gzip", "tar+bzip2", "unsupported layer media type"},
        {"\"layers\":[", "\"layers\":{\"x\":[", "not JSON"},
    };
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(bad); i++) {
        _cleanup_free_ char *j = replace(GOOD_MANIFEST, bad[i].from, bad[i].to);
        expect_manifest_error(j, bad[i].why);
    }
    expect_manifest_error("[]", "not a JSON object");
    expect_manifest_error("{\"schemaVersion\":2,\"mediaType\":\"" MEDIA_OCI_INDEX
                          "\",\"manifests\":[]}",
                          "is an index");

    /* more than 128 layers */
    struct strbuf sb = STRBUF_INIT;
    strbuf_addstr(&sb, "{\"schemaVersion\":2,\"config\":{\"mediaType\":"
                       "\"application/vnd.oci.image.config.v1+json\",\"digest\":\"" D64(
                           "1") "\",\"size\":1},\"layers\":[");
    for (int i = 0; i < 129; i++)
        strbuf_addf(&sb,
                    "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"%s\","
                    "\"size\":1}",
                    i ? "," : "", D64("4"));
    strbuf_addstr(&sb, "]}");
    expect_manifest_error(sb.buf, "129 layers (at most 128)");
    strbuf_release(&sb);
}

static const char INDEX[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
    "\"manifests\":["
    "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" D64(
        "a") "\",\"size\":500,\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\"}},"
             "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" D64(
                 "b") "\",\"size\":500,\"platform\":{\"os\":\"windows\",\"architecture\":"
                      "\"amd64\"}},"
                      "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":"
                      "\"" D64("c") "\",\"size\":500,\"platform\":{\"os\":\"linux\","
                                    "\"architecture\":\"amd64\"}}]}";

static void test_index(void **state)
{
    (void)state;
    struct loom_err err = LOOM_ERR_INIT;
    bool is_index = false;
    assert_int_equal(registry_manifest_is_index(INDEX, strlen(INDEX), NULL, &is_index, &err), 0);
    assert_true(is_index);
    assert_int_equal(
        registry_manifest_is_index(GOOD_MANIFEST, strlen(GOOD_MANIFEST), NULL, &is_index, &err), 0);
    assert_false(is_index);
    /* an OCI manifest without mediaType is known by its shape and Content-Type */
    const char *bare = "{\"schemaVersion\":2,\"manifests\":[]}";
    assert_int_equal(registry_manifest_is_index(bare, strlen(bare), NULL, &is_index, &err), 0);
    assert_true(is_index);
    const char *odd = "{\"schemaVersion\":2}";
    assert_int_equal(
        registry_manifest_is_index(odd, strlen(odd), "application/x-foo", &is_index, &err), -1);
    assert_non_null(strstr(err.msg, "unsupported manifest media type \"application/x-foo\""));

    char *digest = NULL;
    assert_int_equal(registry_index_pick(INDEX, strlen(INDEX), &digest, &err), 0);
    assert_string_equal(digest, D64("c"));
    free(digest);

    _cleanup_free_ char *noamd = replace(INDEX, "\"os\":\"linux\",\"architecture\":\"amd64\"",
                                         "\"os\":\"linux\",\"architecture\":\"s390x\"");
    assert_int_equal(registry_index_pick(noamd, strlen(noamd), &digest, &err), -1);
    assert_int_equal(err.code, LOOM_ENOTFOUND);
    assert_non_null(strstr(err.msg, "linux/amd64"));

    _cleanup_free_ char *baddigest = replace(INDEX, D64("a"), "sha256:zz");
    assert_int_equal(registry_index_pick(baddigest, strlen(baddigest), &digest, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_non_null(strstr(err.msg, "manifests[0]"));
}

/* --- digests ------------------------------------------------------------------------------ */

static void test_verify_digest(void **state)
{
    (void)state;
    /* sha256("hello\n") */
    const char *good = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const char *bad = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be04";
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(registry_verify_bytes("hello\n", 6, good, &err), 0);
    assert_int_equal(registry_verify_bytes("hello\n", 6, bad, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_non_null(strstr(err.msg, "digest mismatch for blob sha256:5891b5b5"));
    assert_non_null(strstr(err.msg, "got sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d0"
                                    "8286a2e846f6be03"));

    struct tdir t;
    tdir_make(&t);
    assert_int_equal(loom_write_file_atomic(t.tar, "hello\n", 6, NULL), 0);
    assert_int_equal(registry_verify_file(t.tar, good, &err), 0);
    assert_int_equal(registry_verify_file(t.tar, bad, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_non_null(strstr(err.msg, "digest mismatch for blob"));
    assert_int_equal(registry_verify_file(t.tar, "md5:abc", &err), -1);
    assert_false(registry_digest_valid("sha256:"));
    assert_true(registry_digest_valid(good));
    tdir_remove(&t);
}

/* --- unpacking ------------------------------------------------------------------------------ */

static void unpack_good(enum tfilter filter)
{
    struct tdir t;
    tdir_make(&t);
    const struct tent ents[] = {
        {T_DIR, "./", NULL, 0755, 0, NULL},
        {T_DIR, "./etc/", NULL, 0750, 0, NULL},
        {T_FILE, "./etc/hello", "hello world\n", 0640, 1000, "user.loom=yes"},
        {T_HARDLINK, "etc/hello2", "./etc/hello", 0, 0, NULL},
        {T_DIR, "bin", NULL, 0755, 0, NULL},
        {T_FILE, "bin/busybox", "#!binary", 04755, 0, NULL},
        {T_SYMLINK, "bin/sh", "/bin/busybox", 0777, 0, NULL},
        {T_SYMLINK, "bin/hello", "../etc/hello", 0777, 0, NULL},
        {T_SYMLINK, "bin/self", ".", 0777, 0, NULL},
        {T_FILE, "var/.wh.gone", "", 0644, 0, NULL},
        {T_FILE, ".wh.toplevel", "", 0644, 0, NULL},
        {T_DIR, "opt", NULL, 0755, 0, NULL},
        {T_FILE, "opt/.wh..wh..opq", "", 0644, 0, NULL},
        {T_FILE, "opt/.wh..wh.plnk", "", 0644, 0, NULL},
        {T_FILE, "opt/new", "n", 0600, 0, "trusted.overlay.redirect=/x"},
    };
    make_tar(t.tar, filter, ents, LOOM_ARRAY_SIZE(ents));
    struct loom_err err = LOOM_ERR_INIT;
    int64_t size = 0;
    if (unpack_layer(t.tar, t.tmp, t.dest, &size, &err) < 0)
        fail_msg("unpack: %s", err.msg);
    assert_true(size > 0);
    assert_int_equal(dir_count(t.tmp), 0);

    char p[512];
    struct stat st;
    assert_int_equal(lstat(t.dest, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);

    snprintf(p, sizeof(p), "%s/etc", t.dest);
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0750);
    assert_int_equal(st.st_mtim.tv_sec, 1700000000);

    snprintf(p, sizeof(p), "%s/etc/hello", t.dest);
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(st.st_uid, 1000);
    assert_int_equal(st.st_gid, 1000);
    assert_int_equal(st.st_mtim.tv_sec, 1700000000);
    assert_int_equal(st.st_nlink, 2);
    _cleanup_free_ char *text = read_text(p);
    assert_string_equal(text, "hello world\n");
    char xv[16] = "";
    assert_int_equal(lgetxattr(p, "user.loom", xv, sizeof(xv)), 3);
    assert_memory_equal(xv, "yes", 3);

    snprintf(p, sizeof(p), "%s/bin/busybox", t.dest);
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 04755);

    char target[256];
    snprintf(p, sizeof(p), "%s/bin/sh", t.dest);
    ssize_t n = readlink(p, target, sizeof(target) - 1);
    assert_true(n > 0);
    target[n] = '\0';
    assert_string_equal(target, "/bin/busybox");

    /* whiteouts: 0:0 character devices named after what they hide */
    snprintf(p, sizeof(p), "%s/var/gone", t.dest);
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    assert_int_equal(st.st_rdev, makedev(0, 0));
    snprintf(p, sizeof(p), "%s/var/.wh.gone", t.dest);
    assert_int_equal(lstat(p, &st), -1);
    snprintf(p, sizeof(p), "%s/toplevel", t.dest);
    assert_int_equal(lstat(p, &st), 0);
    assert_true(S_ISCHR(st.st_mode));

    /* opaque directory; aufs bookkeeping and overlay xattrs from the tar dropped */
    snprintf(p, sizeof(p), "%s/opt", t.dest);
    assert_int_equal(lgetxattr(p, "trusted.overlay.opaque", xv, sizeof(xv)), 1);
    assert_int_equal(xv[0], 'y');
    snprintf(p, sizeof(p), "%s/opt/.wh..wh..opq", t.dest);
    assert_int_equal(lstat(p, &st), -1);
    snprintf(p, sizeof(p), "%s/opt/.wh..wh.plnk", t.dest);
    assert_int_equal(lstat(p, &st), -1);
    snprintf(p, sizeof(p), "%s/opt/new", t.dest);
    assert_int_equal(lstat(p, &st), 0);
    assert_int_equal(lgetxattr(p, "trusted.overlay.redirect", xv, sizeof(xv)), -1);

    int64_t again = 0;
    assert_int_equal(unpack_tree_size(t.dest, &again, &err), 0);
    assert_int_equal(again, size);
    tdir_remove(&t);
}

static void test_unpack_gzip(void **state)
{
    (void)state;
    unpack_good(F_GZIP);
}

static void test_unpack_zstd(void **state)
{
    (void)state;
    unpack_good(F_ZSTD);
}

static void test_unpack_plain(void **state)
{
    (void)state;
    unpack_good(F_NONE);
}

/* The layer is refused with why in the message, and nothing is left in dest,
 * tmp or the directory beside it. */
static void expect_refused(const struct tent *ents, size_t n, const char *why)
{
    struct tdir t;
    tdir_make(&t);
    make_tar(t.tar, F_GZIP, ents, n);
    struct loom_err err = LOOM_ERR_INIT;
    int64_t size = 0;
    if (unpack_layer(t.tar, t.tmp, t.dest, &size, &err) == 0)
        fail_msg("layer with %s was accepted", ents[n - 1].path);
    assert_int_equal(err.code, LOOM_EINVAL);
    if (!strstr(err.msg, why))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, why);
    struct stat st;
    assert_int_equal(lstat(t.dest, &st), -1);
    assert_int_equal(dir_count(t.tmp), 0);
    assert_int_equal(dir_count(t.out), 0);
    char p[512];
    snprintf(p, sizeof(p), "%s/x", t.root);
    assert_int_equal(lstat(p, &st), -1);
    tdir_remove(&t);
}

static void test_unpack_refuse_dotdot(void **state)
{
    (void)state;
    const struct tent ents[] = {
        {T_FILE, "ok", "fine", 0644, 0, NULL},
        {T_FILE, "../x", "escaped", 0644, 0, NULL},
    };
    expect_refused(ents, 2, "refusing layer entry \"../x\": path has a \"..\" component");
    const struct tent ents2[] = {
        {T_DIR, "a/", NULL, 0755, 0, NULL},
        {T_FILE, "a/../../x", "escaped", 0644, 0, NULL},
    };
    expect_refused(ents2, 2, "\"..\" component");
}

static void test_unpack_refuse_absolute(void **state)
{
    (void)state;
    const struct tent ents[] = {
        {T_FILE, "/abs", "escaped", 0644, 0, NULL},
    };
    expect_refused(ents, 1, "refusing layer entry \"/abs\": absolute path");
}

static void test_unpack_refuse_devices(void **state)
{
    (void)state;
    const struct tent ents[] = {
        {T_DIR, "dev/", NULL, 0755, 0, NULL},
        {T_CHR, "dev/null", NULL, 0666, 0, NULL},
    };
    expect_refused(ents, 2, "device nodes are not allowed");
    const struct tent fifo[] = {
        {T_FIFO, "pipe", NULL, 0666, 0, NULL},
    };
    expect_refused(fifo, 1, "FIFOs are not allowed");
}

static void test_unpack_refuse_symlink_escape(void **state)
{
    (void)state;
    /* a relative symlink climbing above the layer root */
    const struct tent up[] = {
        {T_DIR, "a/", NULL, 0755, 0, NULL},
        {T_SYMLINK, "a/l", "../../../etc", 0777, 0, NULL},
    };
    expect_refused(up, 2, "symlink target \"../../../etc\" escapes the layer root");

    /* an absolute symlink is kept, but writing through it is refused */
    struct tdir t;
    tdir_make(&t);
    const struct tent through[] = {
        {T_SYMLINK, "evil", t.out, 0777, 0, NULL},
        {T_FILE, "evil/pwned", "gotcha", 0644, 0, NULL},
    };
    make_tar(t.tar, F_GZIP, through, 2);
    struct loom_err err = LOOM_ERR_INIT;
    int64_t size = 0;
    assert_int_equal(unpack_layer(t.tar, t.tmp, t.dest, &size, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_non_null(strstr(err.msg, "written through the symlink \"evil\""));
    assert_int_equal(dir_count(t.out), 0);
    assert_int_equal(dir_count(t.tmp), 0);
    struct stat st;
    assert_int_equal(lstat(t.dest, &st), -1);

    /* the same through a deeper path, and a hard link through it */
    const struct tent deeper[] = {
        {T_DIR, "d/", NULL, 0755, 0, NULL},
        {T_SYMLINK, "d/evil", t.out, 0777, 0, NULL},
        {T_DIR, "d/evil/sub/", NULL, 0755, 0, NULL},
    };
    make_tar(t.tar, F_GZIP, deeper, 3);
    assert_int_equal(unpack_layer(t.tar, t.tmp, t.dest, &size, &err), -1);
    assert_non_null(strstr(err.msg, "written through the symlink \"d/evil\""));
    assert_int_equal(dir_count(t.out), 0);

    char victim[512];
    snprintf(victim, sizeof(victim), "%s/victim", t.out);
    assert_int_equal(loom_write_file_atomic(victim, "secret", 6, NULL), 0);
    const struct tent hard[] = {
        {T_SYMLINK, "evil", t.out, 0777, 0, NULL},
        {T_HARDLINK, "stolen", "evil/victim", 0, 0, NULL},
    };
    make_tar(t.tar, F_GZIP, hard, 2);
    assert_int_equal(unpack_layer(t.tar, t.tmp, t.dest, &size, &err), -1);
    assert_non_null(strstr(err.msg, "written through the symlink \"evil\""));
    assert_int_equal(dir_count(t.out), 1);
    assert_int_equal(lstat(victim, &st), 0);
    assert_int_equal(st.st_nlink, 1);
    tdir_remove(&t);

    /* whiteouts, opaque markers and directory modes through a symlink */
    struct tdir t2;
    tdir_make(&t2);
    const struct tent wh[] = {
        {T_SYMLINK, "evil", t2.out, 0777, 0, NULL},
        {T_FILE, "evil/.wh.victim", "", 0644, 0, NULL},
    };
    make_tar(t2.tar, F_GZIP, wh, 2);
    assert_int_equal(unpack_layer(t2.tar, t2.tmp, t2.dest, &size, &err), -1);
    assert_non_null(strstr(err.msg, "written through the symlink \"evil\""));
    const struct tent opq[] = {
        {T_SYMLINK, "evil", t2.out, 0777, 0, NULL},
        {T_FILE, "evil/.wh..wh..opq", "", 0644, 0, NULL},
    };
    make_tar(t2.tar, F_GZIP, opq, 2);
    assert_int_equal(unpack_layer(t2.tar, t2.tmp, t2.dest, &size, &err), -1);
    assert_non_null(strstr(err.msg, "written through the symlink \"evil\""));
    char xv[8];
    assert_int_equal(lgetxattr(t2.out, "trusted.overlay.opaque", xv, sizeof(xv)), -1);
    const struct tent dirmode[] = {
        {T_SYMLINK, "evil", t2.out, 0777, 0, NULL},
        {T_DIR, "evil/", NULL, 0700, 0, NULL},
    };
    make_tar(t2.tar, F_GZIP, dirmode, 2);
    int r = unpack_layer(t2.tar, t2.tmp, t2.dest, &size, &err);
    fprintf(stderr, "# directory entry over a symlink: %s\n",
            r == 0 ? "replaced by a directory in the layer" : err.msg);
    assert_int_equal(lstat(t2.out, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755);
    if (r == 0) {
        /* replaced by a real directory inside the layer */
        char p[512];
        snprintf(p, sizeof(p), "%s/evil", t2.dest);
        assert_int_equal(lstat(p, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(loom_rm_rf(t2.dest, NULL), 0);
    }
    const struct tent replace_link[] = {
        {T_SYMLINK, "evil", t2.out, 0777, 0, NULL},
        {T_FILE, "evil", "mine", 0600, 0, NULL},
    };
    make_tar(t2.tar, F_GZIP, replace_link, 2);
    r = unpack_layer(t2.tar, t2.tmp, t2.dest, &size, &err);
    assert_int_equal(dir_count(t2.out), 0);
    assert_int_equal(lstat(t2.out, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    fprintf(stderr, "# file entry over a symlink: %s\n",
            r == 0 ? "replaced by a file in the layer" : err.msg);
    assert_int_equal(dir_count(t2.tmp), 0);
    tdir_remove(&t2);

    const struct tent hardup[] = {
        {T_HARDLINK, "stolen", "../x", 0, 0, NULL},
    };
    expect_refused(hardup, 1, "\"..\" component");
    const struct tent hardabs[] = {
        {T_HARDLINK, "stolen", "/etc/passwd", 0, 0, NULL},
    };
    expect_refused(hardabs, 1, "hard link to the absolute path \"/etc/passwd\"");
}

static void test_unpack_corrupt(void **state)
{
    (void)state;
    struct tdir t;
    tdir_make(&t);
    assert_int_equal(loom_write_file_atomic(t.tar, "\x1f\x8bthis is not gzip", 18, NULL), 0);
    struct loom_err err = LOOM_ERR_INIT;
    int64_t size = 0;
    assert_int_equal(unpack_layer(t.tar, t.tmp, t.dest, &size, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_int_equal(dir_count(t.tmp), 0);
    tdir_remove(&t);
}

/* --- the store, from its cache (no network) --------------------------------------------------- */

struct fake_image {
    char ref[256];
    char digest[72];
};

/* Puts an image whose layers are already unpacked into the store directory:
 * the manifest and config blobs, and each layer tree with its .meta. */
static void seed_image(const char *dir, const char *const *layer_hex, size_t n, int64_t layer_size,
                       struct fake_image *ret)
{
    char path[512];
    const char *config = "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{"
                         "\"Entrypoint\":[\"/bin/sh\",\"-c\"],\"Cmd\":[\"echo hi\"],"
                         "\"Env\":[\"PATH=/bin\",\"A=b\"],\"WorkingDir\":\"/work\","
                         "\"User\":\"1000:1000\"},\"rootfs\":{\"type\":\"layers\"}}";
    char chex[65];
    loom_sha256_hex(config, strlen(config), chex);
    snprintf(path, sizeof(path), "%s/blobs/sha256/%s", dir, chex);
    assert_int_equal(loom_write_file_atomic(path, config, strlen(config), NULL), 0);
    struct strbuf m = STRBUF_INIT;
    strbuf_addf(&m,
                "{\"schemaVersion\":2,\"mediaType\":\"" MEDIA_OCI_MANIFEST "\",\"config\":"
                "{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":"
                "\"sha256:%s\",\"size\":%zu},\"layers\":[",
                chex, strlen(config));
    for (size_t i = 0; i < n; i++) {
        strbuf_addf(&m,
                    "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
                    "\"digest\":\"sha256:%s\",\"size\":10}",
                    i ? "," : "", layer_hex[i]);
        snprintf(path, sizeof(path), "%s/layers/sha256/%s", dir, layer_hex[i]);
        struct stat st;
        if (lstat(path, &st) == 0)
            continue;
        assert_int_equal(loom_mkdir_p(path, 0755, NULL), 0);
        snprintf(path, sizeof(path), "%s/layers/sha256/%s.meta", dir, layer_hex[i]);
        char sz[32];
        snprintf(sz, sizeof(sz), "%lld\n", (long long)layer_size);
        assert_int_equal(loom_write_file_atomic(path, sz, strlen(sz), NULL), 0);
    }
    strbuf_addstr(&m, "]}");
    char mhex[65];
    loom_sha256_hex(m.buf, m.len, mhex);
    snprintf(path, sizeof(path), "%s/blobs/sha256/%s", dir, mhex);
    assert_int_equal(loom_write_file_atomic(path, m.buf, m.len, NULL), 0);
    strbuf_release(&m);
    snprintf(ret->digest, sizeof(ret->digest), "sha256:%s", mhex);
    /* port 1: nothing listens, so any network use fails loudly */
    snprintf(ret->ref, sizeof(ret->ref), "127.0.0.1:1/test/img@%s", ret->digest);
}

static void layer_path(const char *dir, const char *hex, char *out, size_t outsz)
{
    snprintf(out, outsz, "%s/layers/sha256/%s", dir, hex);
}

static void test_store_cache_and_eviction(void **state)
{
    (void)state;
    struct tdir t;
    tdir_make(&t);
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/store", t.root);
    const char *hex_b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const char *hex_c = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    /* a stale download that open must clear away */
    char p[512];
    snprintf(p, sizeof(p), "%s/tmp/unpack-stale", dir);
    assert_int_equal(loom_mkdir_p(p, 0755, NULL), 0);
    snprintf(p, sizeof(p), "%s/blobs/sha256", dir);
    assert_int_equal(loom_mkdir_p(p, 0700, NULL), 0);

    struct fake_image one, two;
    const char *l1[] = {HEX_A, hex_b};
    const char *l2[] = {hex_c};
    seed_image(dir, l1, 2, 1000, &one);
    seed_image(dir, l2, 1, 1000, &two);
    /* image two's layer was used long ago: it goes first */
    snprintf(p, sizeof(p), "%s/layers/sha256/%s.meta", dir, hex_c);
    struct timespec old[2] = {{1000, 0}, {1000, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p, old, 0), 0);

    struct image_store_opts opts = {.dir = dir, .max_bytes = 2500, .insecure_hosts = NULL};
    struct image_store *s = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (image_store_open(&opts, &s, &err) < 0)
        fail_msg("open: %s", err.msg);
    snprintf(p, sizeof(p), "%s/tmp", dir);
    assert_int_equal(dir_count(p), 0);

    struct image *img = NULL;
    if (image_store_get(s, one.ref, NULL, &img, &err) < 0)
        fail_msg("get: %s", err.msg);
    assert_string_equal(img->ref, one.ref);
    assert_string_equal(img->digest, one.digest);
    assert_int_equal(img->nlayers, 2);
    layer_path(dir, HEX_A, p, sizeof(p));
    assert_string_equal(img->layer_dirs[0], p);
    layer_path(dir, hex_b, p, sizeof(p));
    assert_string_equal(img->layer_dirs[1], p);
    assert_string_equal(img->config.entrypoint[0], "/bin/sh");
    assert_string_equal(img->config.entrypoint[1], "-c");
    assert_null(img->config.entrypoint[2]);
    assert_string_equal(img->config.cmd[0], "echo hi");
    assert_string_equal(img->config.env[1], "A=b");
    assert_string_equal(img->config.workdir, "/work");
    assert_string_equal(img->config.user, "1000:1000");

    /* 3000 bytes cached, 2500 allowed: the unused layer of image two went */
    layer_path(dir, hex_c, p, sizeof(p));
    struct stat st;
    assert_int_equal(lstat(p, &st), -1);
    layer_path(dir, HEX_A, p, sizeof(p));
    assert_int_equal(lstat(p, &st), 0);

    /* image two now needs the network, and the registry is unreachable */
    struct image *img2 = NULL;
    assert_int_equal(image_store_get(s, two.ref, NULL, &img2, &err), -1);
    assert_int_equal(err.code, LOOM_EUNAVAIL);
    assert_non_null(strstr(err.msg, "registry 127.0.0.1:1 unreachable"));

    image_release(s, img);
    image_store_close(s);
    image_release(NULL, NULL);

    /* held layers are never evicted, even with a limit of 1 byte */
    const char *hex_d = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    const char *l3[] = {hex_d};
    struct fake_image three;
    seed_image(dir, l3, 1, 1000, &three);
    opts.max_bytes = 1;
    assert_int_equal(image_store_open(&opts, &s, &err), 0);
    struct image *a = NULL, *b = NULL;
    assert_int_equal(image_store_get(s, one.ref, NULL, &a, &err), 0);
    assert_int_equal(image_store_get(s, one.ref, NULL, &b, &err), 0);
    layer_path(dir, HEX_A, p, sizeof(p));
    assert_int_equal(lstat(p, &st), 0);
    layer_path(dir, hex_d, p, sizeof(p));
    assert_int_equal(lstat(p, &st), -1); /* unused: gone on the first pull */
    image_release(s, a);
    assert_int_equal(image_store_get(s, two.ref, NULL, &img2, &err), -1);
    layer_path(dir, HEX_A, p, sizeof(p));
    assert_int_equal(lstat(p, &st), 0); /* still held by b */
    image_release(s, b);
    /* once released, the next successful pull evicts them */
    seed_image(dir, l3, 1, 1000, &three);
    image_store_close(s);
    assert_int_equal(image_store_open(&opts, &s, &err), 0);
    assert_int_equal(image_store_get(s, three.ref, NULL, &a, &err), 0);
    layer_path(dir, HEX_A, p, sizeof(p));
    assert_int_equal(lstat(p, &st), -1);
    layer_path(dir, hex_b, p, sizeof(p));
    assert_int_equal(lstat(p, &st), -1);
    layer_path(dir, hex_d, p, sizeof(p));
    assert_int_equal(lstat(p, &st), 0);
    image_release(s, a);
    image_store_close(s);
    tdir_remove(&t);
}

static void test_store_bad_refs(void **state)
{
    (void)state;
    struct tdir t;
    tdir_make(&t);
    struct image_store_opts opts = {.dir = t.dest};
    struct image_store *s = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(image_store_open(&opts, &s, &err), 0);
    struct image *img = NULL;
    assert_int_equal(image_store_get(s, "busybox", NULL, &img, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    assert_non_null(strstr(err.msg, "invalid image reference \"busybox\""));
    /* a corrupted cached manifest is fetched again (and here fails on the network) */
    char p[512];
    snprintf(p, sizeof(p), "%s/blobs/sha256/%s", t.dest, HEX_A);
    assert_int_equal(loom_write_file_atomic(p, "{}", 2, NULL), 0);
    char ref[256];
    snprintf(ref, sizeof(ref), "127.0.0.1:1/x@sha256:%s", HEX_A);
    assert_int_equal(image_store_get(s, ref, NULL, &img, &err), -1);
    assert_int_equal(err.code, LOOM_EUNAVAIL);
    image_store_close(s);
    tdir_remove(&t);
}

/* --- pulls from a registry of the test's own ------------------------------------------------ */

/* An in-process registry that serves one image, test/img:latest (a config and
 * two gzip layers), over the distribution API's GETs and counts every fetch.
 * Its manifest GETs by tag wait at a gate until the test opens it, so that a
 * second caller can be made to arrive while the first pull is in flight. */
struct fake_blob {
    char digest[72];
    char *data;
    size_t len;
    atomic_int gets;
};

struct fake_registry {
    struct loom_http_server *srv;
    char host[32]; /* 127.0.0.1:<port> */
    struct fake_blob manifest, config, layers[2];
    atomic_int tag_gets; /* manifest GETs by tag */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool gate_open;
};

static void fake_blob_set(struct fake_blob *b, char *data, size_t len)
{
    char hex[65];
    loom_sha256_hex(data, len, hex);
    snprintf(b->digest, sizeof(b->digest), "sha256:%s", hex);
    b->data = data;
    b->len = len;
    atomic_init(&b->gets, 0);
}

static void registry_error(struct loom_http_req *req, int status, const char *code, const char *msg)
{
    loom_http_reply_json(req, status,
                         json_pack("{s:[{s:s,s:s}]}", "errors", "code", code, "message", msg));
}

/* GET /v2/test/img/manifests/<tag or digest> and /v2/test/img/blobs/<digest> */
static void fake_registry_get(struct loom_http_req *req)
{
    struct fake_registry *f = req->server_arg;
    const char *rest = req->rest ? req->rest : "";
    const char *repo = "test/img/";
    if (strncmp(rest, repo, strlen(repo)) != 0) {
        registry_error(req, 404, "NAME_UNKNOWN", "repository name not known to registry");
        return;
    }
    rest += strlen(repo);
    if (strncmp(rest, "manifests/", 10) == 0) {
        const char *ref = rest + 10;
        if (strcmp(ref, "latest") == 0) {
            atomic_fetch_add(&f->tag_gets, 1);
            pthread_mutex_lock(&f->mu);
            while (!f->gate_open)
                pthread_cond_wait(&f->cv, &f->mu);
            pthread_mutex_unlock(&f->mu);
        } else if (strcmp(ref, f->manifest.digest) == 0) {
            atomic_fetch_add(&f->manifest.gets, 1);
        } else {
            registry_error(req, 404, "MANIFEST_UNKNOWN", "manifest unknown");
            return;
        }
        loom_http_set_header(req, "Docker-Content-Digest", f->manifest.digest);
        loom_http_reply(req, 200, MEDIA_OCI_MANIFEST, f->manifest.data, f->manifest.len);
        return;
    }
    struct fake_blob *blobs[] = {&f->config, &f->layers[0], &f->layers[1]};
    for (size_t i = 0; strncmp(rest, "blobs/", 6) == 0 && i < LOOM_ARRAY_SIZE(blobs); i++) {
        if (strcmp(rest + 6, blobs[i]->digest) == 0) {
            atomic_fetch_add(&blobs[i]->gets, 1);
            loom_http_reply(req, 200, "application/octet-stream", blobs[i]->data, blobs[i]->len);
            return;
        }
    }
    registry_error(req, 404, "BLOB_UNKNOWN", "blob unknown to registry");
}

static const struct loom_http_route fake_registry_routes[] = {
    {"GET", "/v2/*", fake_registry_get},
};

static void fake_registry_open_gate(struct fake_registry *f)
{
    pthread_mutex_lock(&f->mu);
    f->gate_open = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* Makes the image's blobs (layer tarballs written under dir) and starts
 * serving them on a free port of 127.0.0.1, the gate closed. */
static void fake_registry_start(struct fake_registry *f, const char *dir)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    atomic_init(&f->tag_gets, 0);
    const struct tent l0[] = {
        {T_DIR, "etc", NULL, 0755, 0, NULL},
        {T_FILE, "etc/hello", "hello from layer 0\n", 0644, 0, NULL},
    };
    const struct tent l1[] = {
        {T_DIR, "etc", NULL, 0755, 0, NULL},
        {T_FILE, "etc/motd", "layer 1 was here\n", 0644, 0, NULL},
    };
    const struct tent *ents[] = {l0, l1};
    for (size_t i = 0; i < 2; i++) {
        char path[400];
        snprintf(path, sizeof(path), "%s/layer%zu.tar.gz", dir, i);
        make_tar(path, F_GZIP, ents[i], 2);
        char *data = NULL;
        size_t len = 0;
        assert_int_equal(loom_read_file(path, &data, &len, NULL), 0);
        fake_blob_set(&f->layers[i], data, len);
    }
    char *config = strdup("{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{"
                          "\"Cmd\":[\"/bin/sh\"],\"Env\":[\"PATH=/bin\"]},"
                          "\"rootfs\":{\"type\":\"layers\"}}");
    assert_non_null(config);
    fake_blob_set(&f->config, config, strlen(config));
    struct strbuf m = STRBUF_INIT;
    strbuf_addf(&m,
                "{\"schemaVersion\":2,\"mediaType\":\"" MEDIA_OCI_MANIFEST "\",\"config\":"
                "{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":"
                "\"%s\",\"size\":%zu},\"layers\":[",
                f->config.digest, f->config.len);
    for (size_t i = 0; i < 2; i++)
        strbuf_addf(&m,
                    "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\","
                    "\"digest\":\"%s\",\"size\":%zu}",
                    i ? "," : "", f->layers[i].digest, f->layers[i].len);
    strbuf_addstr(&m, "]}");
    size_t mlen = 0;
    char *manifest = strbuf_detach(&m, &mlen);
    fake_blob_set(&f->manifest, manifest, mlen);

    struct loom_http_server_opts o = {
        .addr = "127.0.0.1:0",
        .threads = 0, /* a thread per connection: a request held at the gate holds no other */
        .routes = fake_registry_routes,
        .nroutes = LOOM_ARRAY_SIZE(fake_registry_routes),
        .arg = f,
        .service = "fake-registry",
    };
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_http_server_start(&o, &f->srv, &err) < 0)
        fail_msg("fake registry: %s", err.msg);
    snprintf(f->host, sizeof(f->host), "127.0.0.1:%u", (unsigned)loom_http_server_port(f->srv));
}

static void fake_registry_stop(struct fake_registry *f)
{
    fake_registry_open_gate(f);
    loom_http_server_stop(f->srv);
    struct fake_blob *blobs[] = {&f->manifest, &f->config, &f->layers[0], &f->layers[1]};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(blobs); i++)
        free(blobs[i]->data);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

struct puller {
    struct image_store *s;
    const char *ref;
    atomic_bool calling; /* set just before image_store_get */
    struct image *img;
    struct loom_err err;
    int rc;
};

static void *pull_thread(void *arg)
{
    struct puller *p = arg;
    atomic_store(&p->calling, true);
    p->rc = image_store_get(p->s, p->ref, NULL, &p->img, &p->err);
    return NULL;
}

/* Polls cond for up to 10 s; false when it never held. */
static bool eventually(bool (*cond)(void *), void *arg)
{
    for (int i = 0; i < 1000; i++) {
        if (cond(arg))
            return true;
        usleep(10000);
    }
    return false;
}

static bool tag_fetched(void *arg)
{
    return atomic_load(&((struct fake_registry *)arg)->tag_gets) >= 1;
}

static bool puller_calling(void *arg)
{
    return atomic_load(&((struct puller *)arg)->calling);
}

static void assert_file_text(const char *dir, const char *rel, const char *want)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    _cleanup_free_ char *got = read_text(path);
    if (!got)
        fail_msg("%s: missing", path);
    assert_string_equal(got, want);
}

/* Two callers asking for one image at once share one pull: the manifest and
 * every blob are fetched once; both get the same verified, unpacked layers.
 * A later pull by tag asks for the manifest again and reuses the layers; a
 * tag the registry does not have is LOOM_ENOTFOUND naming the image. */
static void test_registry_pull(void **state)
{
    (void)state;
    struct tdir t;
    tdir_make(&t);
    struct fake_registry f;
    fake_registry_start(&f, t.root);
    char ref[128];
    snprintf(ref, sizeof(ref), "%s/test/img:latest", f.host);
    struct image_store_opts opts = {.dir = t.dest, .max_bytes = 0};
    struct image_store *s = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(image_store_open(&opts, &s, &err), 0);

    /* the first caller's manifest GET waits at the gate; the second caller
     * is started then, and given time to reach the store before the gate
     * opens: had it pulled on its own, its GET would be counted too */
    struct puller a = {.s = s, .ref = ref}, b = {.s = s, .ref = ref};
    atomic_init(&a.calling, false);
    atomic_init(&b.calling, false);
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, pull_thread, &a), 0);
    assert_true(eventually(tag_fetched, &f));
    assert_int_equal(pthread_create(&tb, NULL, pull_thread, &b), 0);
    assert_true(eventually(puller_calling, &b));
    usleep(200000);
    fake_registry_open_gate(&f);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (a.rc < 0)
        fail_msg("pull %s: %s", ref, a.err.msg);
    if (b.rc < 0)
        fail_msg("pull %s (second caller): %s", ref, b.err.msg);
    assert_int_equal(atomic_load(&f.tag_gets), 1);
    assert_int_equal(atomic_load(&f.config.gets), 1);
    assert_int_equal(atomic_load(&f.layers[0].gets), 1);
    assert_int_equal(atomic_load(&f.layers[1].gets), 1);
    assert_string_equal(a.img->digest, f.manifest.digest);
    assert_string_equal(b.img->digest, f.manifest.digest);
    assert_int_equal(a.img->nlayers, 2);
    assert_int_equal(b.img->nlayers, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_string_equal(a.img->layer_dirs[i], b.img->layer_dirs[i]);
        char want[400];
        snprintf(want, sizeof(want), "%s/layers/sha256/%s", t.dest, f.layers[i].digest + 7);
        assert_string_equal(a.img->layer_dirs[i], want);
    }
    assert_file_text(a.img->layer_dirs[0], "etc/hello", "hello from layer 0\n");
    assert_file_text(a.img->layer_dirs[1], "etc/motd", "layer 1 was here\n");
    assert_string_equal(a.img->config.cmd[0], "/bin/sh");
    image_release(s, a.img);
    image_release(s, b.img);

    struct image *img = NULL;
    if (image_store_get(s, ref, NULL, &img, &err) < 0)
        fail_msg("pull %s again: %s", ref, err.msg);
    assert_int_equal(atomic_load(&f.tag_gets), 2);
    assert_int_equal(atomic_load(&f.config.gets), 1);
    assert_int_equal(atomic_load(&f.layers[0].gets), 1);
    assert_int_equal(atomic_load(&f.layers[1].gets), 1);
    assert_string_equal(img->digest, f.manifest.digest);
    image_release(s, img);

    char missing[128];
    snprintf(missing, sizeof(missing), "%s/test/img:no-such-tag", f.host);
    img = NULL;
    assert_int_equal(image_store_get(s, missing, NULL, &img, &err), -1);
    assert_null(img);
    assert_int_equal(err.code, LOOM_ENOTFOUND);
    char want[300];
    snprintf(want, sizeof(want), "image \"%s\" not found", missing);
    if (!strstr(err.msg, want))
        fail_msg("\"%s\" does not say %s", err.msg, want);
    image_store_close(s);
    fake_registry_stop(&f);
    tdir_remove(&t);
}

int main(void)
{
    loom_httpc_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_parse_good),
        cmocka_unit_test(test_ref_parse_bad),
        cmocka_unit_test(test_insecure_hosts),
        cmocka_unit_test(test_manifest_validation),
        cmocka_unit_test(test_index),
        cmocka_unit_test(test_verify_digest),
        cmocka_unit_test(test_unpack_gzip),
        cmocka_unit_test(test_unpack_zstd),
        cmocka_unit_test(test_unpack_plain),
        cmocka_unit_test(test_unpack_refuse_dotdot),
        cmocka_unit_test(test_unpack_refuse_absolute),
        cmocka_unit_test(test_unpack_refuse_devices),
        cmocka_unit_test(test_unpack_refuse_symlink_escape),
        cmocka_unit_test(test_unpack_corrupt),
        cmocka_unit_test(test_store_cache_and_eviction),
        cmocka_unit_test(test_store_bad_refs),
        cmocka_unit_test(test_registry_pull),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    loom_httpc_global_cleanup();
    return r;
}
