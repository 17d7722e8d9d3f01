/* common/tarball: what a tar.gz from outside may hold. Each case is an
 * archive written here with libarchive, as a hostile client would. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strbuf.h"
#include "tarball.h"

/* One entry: a path, its type ('f' file, 'd' directory, 'l' symbolic link,
 * 'h' hard link, 'c' character device), a link target or file text, and
 * the size of a file of zeros (when text is NULL). */
struct ent {
    const char *path;
    char type;
    const char *text;
    int64_t zeros;
};

static la_ssize_t append(struct archive *a, void *arg, const void *buf, size_t len)
{
    (void)a;
    strbuf_add(arg, buf, len);
    return (la_ssize_t)len;
}

static void make_tgz(const struct ent *ents, size_t n, struct strbuf *out)
{
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_add_filter_gzip(a);
    assert_int_equal(archive_write_open(a, out, NULL, append, NULL), ARCHIVE_OK);
    static char zeros[65536];
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, ents[i].path);
        archive_entry_set_perm(e, 0644);
        int64_t size = ents[i].type == 'f'
                           ? (ents[i].text ? (int64_t)strlen(ents[i].text) : ents[i].zeros)
                           : 0;
        switch (ents[i].type) {
        case 'f':
            archive_entry_set_filetype(e, AE_IFREG);
            break;
        case 'd':
            archive_entry_set_filetype(e, AE_IFDIR);
            break;
        case 'l':
            archive_entry_set_filetype(e, AE_IFLNK);
            archive_entry_set_symlink(e, ents[i].text);
            break;
        case 'h':
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, ents[i].text);
            break;
        case 'c':
            archive_entry_set_filetype(e, AE_IFCHR);
            archive_entry_set_rdev(e, 0);
            break;
        }
        archive_entry_set_size(e, size);
        assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
        if (ents[i].type == 'f' && ents[i].text)
            archive_write_data(a, ents[i].text, strlen(ents[i].text));
        for (int64_t left = ents[i].type == 'f' && !ents[i].text ? ents[i].zeros : 0; left > 0;) {
            size_t k = left < (int64_t)sizeof(zeros) ? (size_t)left : sizeof(zeros);
            archive_write_data(a, zeros, k);
            left -= (int64_t)k;
        }
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
}

static const struct loom_tarball_limits source_limits = {1 << 20, 100, true};
static const struct loom_tarball_limits bundle_limits = {1 << 20, 100, false};

/* Checks ents under limits, from memory and from a file: the same verdict,
 * whose message holds want (NULL: accepted). */
static void check(const struct ent *ents, size_t n, const struct loom_tarball_limits *limits,
                  const char *want)
{
    struct strbuf tgz = STRBUF_INIT;
    make_tgz(ents, n, &tgz);
    struct loom_err err = LOOM_ERR_INIT;
    int64_t files = 0;
    int rc = loom_tarball_check(tgz.buf, tgz.len, limits, &files, &err);
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(fwrite(tgz.buf, 1, tgz.len, f), tgz.len);
    rewind(f);
    struct loom_err ferr = LOOM_ERR_INIT;
    int frc = loom_tarball_check_fd(fileno(f), limits, NULL, &ferr);
    fclose(f);
    strbuf_release(&tgz);
    if (!want) {
        if (rc != 0)
            fail_msg("refused: %s", err.msg);
        assert_int_equal(frc, 0);
        assert_true(files > 0);
        return;
    }
    if (rc == 0)
        fail_msg("accepted an archive that should fail with \"%s\"", want);
    if (!strstr(err.msg, want))
        fail_msg("\"%s\" does not say \"%s\"", err.msg, want);
    assert_int_equal(frc, -1);
    assert_string_equal(ferr.msg, err.msg);
}

static void test_accepts(void **state)
{
    (void)state;
    const struct ent ok[] = {
        {"./", 'd', NULL, 0},
        {"./app/", 'd', NULL, 0},
        {"./app/index.js", 'f', "console.log(1)\n", 0},
        {"./app/current", 'l', "index.js", 0},
        {"./app/lib/up", 'l', "../index.js", 0},
    };
    check(ok, 5, &source_limits, NULL);
    /* a function bundle takes no links at all */
    check(ok, 5, &bundle_limits, "links, devices and fifos are refused");
}

static void test_refuses(void **state)
{
    (void)state;
    const struct ent up[] = {{"../evil", 'f', "x", 0}};
    check(up, 1, &source_limits, "entry \"../evil\" goes up");
    const struct ent deep[] = {{"a/b/../../../evil", 'f', "x", 0}};
    check(deep, 1, &source_limits, "goes up");
    const struct ent abs[] = {{"/etc/cron.d/x", 'f', "x", 0}};
    check(abs, 1, &source_limits, "is an absolute path");
    const struct ent out_rel[] = {{"a/escape", 'l', "../../etc/passwd", 0}};
    check(out_rel, 1, &source_limits, "outside the source");
    const struct ent out_abs[] = {{"link", 'l', "/etc", 0}};
    check(out_abs, 1, &source_limits, "outside the source");
    /* a link that stays inside, then a file written through it */
    const struct ent through[] = {{"d/", 'd', NULL, 0}, {"l", 'l', "d", 0}, {"l/x", 'f', "x", 0}};
    check(through, 3, &source_limits, "is under the symbolic link \"l\"");
    const struct ent hard[] = {{"a", 'f', "x", 0}, {"h", 'h', "a", 0}};
    check(hard, 2, &source_limits, "is a hard link");
    const struct ent dev[] = {{"null", 'c', NULL, 0}};
    check(dev, 1, &source_limits, "devices and fifos are refused");
    /* a bomb: 64 MiB of zeros is a few tens of KiB compressed */
    const struct ent bomb[] = {{"zeros", 'f', NULL, 64 << 20}};
    check(bomb, 1, &source_limits, "unpacks to more than 1048576 bytes");
    struct ent many[101];
    char names[101][16];
    for (int i = 0; i < 101; i++) {
        snprintf(names[i], sizeof(names[i]), "f%d", i);
        many[i] = (struct ent){names[i], 'f', "x", 0};
    }
    check(many, 101, &source_limits, "more than 100 entries");
    const struct ent dirs[] = {{"d/", 'd', NULL, 0}};
    check(dirs, 1, &source_limits, "holds no file");
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_tarball_check("plain text", 10, &source_limits, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "tar.gz"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts),
        cmocka_unit_test(test_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
