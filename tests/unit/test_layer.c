/* common/layer: deterministic layers and their two digests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zlib.h>

#include "layer.h"
#include "strbuf.h"
#include "util.h"

static char tmp[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/loom-layer-XXXXXX");
    assert_non_null(mkdtemp(tmp));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    loom_rm_rf(tmp, NULL);
    return 0;
}

/* "path type mode [-> target]" lines of a tar.gz, and the sha256 of its tar. */
static void listing(const char *path, struct strbuf *out, char diff_id[72])
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_all(a);
    assert_int_equal(archive_read_open_filename(a, path, 4096), ARCHIVE_OK);
    struct archive_entry *e;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        assert_int_equal(archive_entry_uid(e), 0);
        assert_int_equal(archive_entry_mtime(e), 0);
        strbuf_addf(out, "%s %c %o", archive_entry_pathname(e),
                    archive_entry_filetype(e) == AE_IFDIR   ? 'd'
                    : archive_entry_filetype(e) == AE_IFLNK ? 'l'
                                                            : 'f',
                    (unsigned)archive_entry_perm(e));
        if (archive_entry_symlink(e))
            strbuf_addf(out, " -> %s", archive_entry_symlink(e));
        strbuf_addch(out, '\n');
    }
    archive_read_free(a);
    /* the diff_id is the sha256 of the uncompressed tar */
    gzFile gz = gzopen(path, "rb");
    assert_non_null(gz);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    char buf[65536];
    int n;
    while ((n = gzread(gz, buf, sizeof(buf))) > 0)
        EVP_DigestUpdate(md, buf, (size_t)n);
    gzclose(gz);
    unsigned char b[32];
    EVP_DigestFinal_ex(md, b, NULL);
    EVP_MD_CTX_free(md);
    char hex[65];
    loom_hex(b, 32, hex);
    snprintf(diff_id, 72, "sha256:%s", hex);
}

static void write_one(int dirfd, struct loom_layer_info *info, struct loom_layer **ret)
{
    struct loom_layer *l = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_layer_open(tmp, &l, &err), 0);
    assert_int_equal(loom_layer_add_dir(l, "app", 0755, &err), 0);
    assert_int_equal(loom_layer_add_file(l, "app/server.js", 0644, "x\n", 2, &err), 0);
    assert_int_equal(loom_layer_add_symlink(l, "app/current", "server.js", &err), 0);
    assert_int_equal(loom_layer_add_tree(l, dirfd, "layers/deps/lib", true, &err), 0);
    if (loom_layer_finish(l, info, &err) < 0)
        fail_msg("%s", err.msg);
    *ret = l;
}

static void test_layer(void **state)
{
    (void)state;
    char dir[128], path[256];
    snprintf(dir, sizeof(dir), "%s/tree", tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof(path), "%s/b", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/b/run", dir);
    assert_int_equal(loom_write_file_atomic(path, "#!/bin/sh\n", 10, NULL), 0);
    chmod(path, 0755);
    snprintf(path, sizeof(path), "%s/a", dir);
    assert_int_equal(loom_write_file_atomic(path, "a", 1, NULL), 0);
    /* a link out of the tree is kept as a link, never followed */
    snprintf(path, sizeof(path), "%s/etc", dir);
    assert_int_equal(symlink("/etc", path), 0);
    snprintf(path, sizeof(path), "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
    assert_true(dirfd >= 0);

    struct loom_layer_info a, b;
    struct loom_layer *la, *lb;
    write_one(dirfd, &a, &la);
    write_one(dirfd, &b, &lb);
    close(dirfd);
    /* the same entries give the same bytes */
    assert_string_equal(a.digest, b.digest);
    assert_string_equal(a.diff_id, b.diff_id);
    char hex[65];
    assert_int_equal(loom_sha256_file(a.path, hex, NULL), 0);
    assert_string_equal(a.digest + 7, hex);
    struct stat st;
    assert_int_equal(stat(a.path, &st), 0);
    assert_int_equal(st.st_size, a.size);

    struct strbuf list = STRBUF_INIT;
    char diff_id[72];
    listing(a.path, &list, diff_id);
    assert_string_equal(diff_id, a.diff_id);
    assert_string_equal(list.buf, "app/ d 755\n"
                                  "app/server.js f 644\n"
                                  "app/current l 777 -> server.js\n"
                                  "layers/ d 755\n"
                                  "layers/deps/ d 755\n"
                                  "layers/deps/lib/ d 755\n"
                                  "layers/deps/lib/a f 644\n"
                                  "layers/deps/lib/b/ d 700\n"
                                  "layers/deps/lib/b/run f 755\n"
                                  "layers/deps/lib/etc l 777 -> /etc\n");
    assert_int_equal(a.entries, 10);
    strbuf_release(&list);
    char kept[4096];
    snprintf(kept, sizeof(kept), "%s", a.path);
    loom_layer_free(la);
    loom_layer_free(lb);
    assert_int_equal(access(kept, F_OK), -1); /* the file goes with the layer */
}

/* An archive's entries, renamed and filtered. */
static int under_app(const char *path, bool is_dir, void *arg, const char **ret_name,
                     struct loom_err *err)
{
    (void)is_dir, (void)err;
    struct strbuf *sb = arg;
    if (strstr(path, "skip"))
        return 0;
    strbuf_reset(sb);
    strbuf_addf(sb, "app/%s", path + (strncmp(path, "./", 2) == 0 ? 2 : 0));
    *ret_name = sb->buf;
    return 1;
}

static void test_from_archive(void **state)
{
    (void)state;
    char src[128], cmd[1024];
    snprintf(src, sizeof(src), "%s/src", tmp);
    snprintf(cmd, sizeof(cmd),
             "mkdir -p %s/d && echo one > %s/d/one && echo no > %s/skip && "
             "tar -C %s -czf %s/src.tgz d skip",
             src, src, src, src, tmp);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "%s/src.tgz", tmp);
    int fd = open(cmd, O_RDONLY);
    struct loom_layer *l = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    struct strbuf name = STRBUF_INIT;
    assert_int_equal(loom_layer_open(tmp, &l, &err), 0);
    assert_int_equal(loom_layer_add_archive(l, fd, under_app, &name, &err), 0);
    close(fd);
    struct loom_layer_info info;
    assert_int_equal(loom_layer_finish(l, &info, &err), 0);
    struct strbuf list = STRBUF_INIT;
    char diff_id[72];
    listing(info.path, &list, diff_id);
    assert_non_null(strstr(list.buf, "app/d/one f"));
    assert_null(strstr(list.buf, "skip"));
    loom_layer_free(l);
    strbuf_release(&list);
    strbuf_release(&name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer),
        cmocka_unit_test(test_from_archive),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
