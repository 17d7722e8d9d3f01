#include "tarball.h"

#include <archive.h>
#include <archive_entry.h>
#include <string.h>

static void archive_freep(struct archive **a)
{
    if (*a)
        archive_read_free(*a);
}

/* Why a path cannot be unpacked under a directory, or NULL. */
static const char *path_problem(const char *p)
{
    if (!p || !*p)
        return "has no name";
    if (p[0] == '/')
        return "is an absolute path";
    for (const char *c = p; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.')
            return "goes up with \"..\"";
        c += n;
        while (*c == '/')
            c++;
    }
    return NULL;
}

int loom_tarball_check(const void *data, size_t len, const struct loom_tarball_limits *limits,
                       int64_t *ret_files, struct loom_err *err)
{
    __attribute__((cleanup(archive_freep))) struct archive *a = archive_read_new();
    if (!a)
        return loom_err_set(err, LOOM_EINTERNAL, "out of memory");
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    if (archive_read_open_memory(a, data, len) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "is not a tar.gz: %s", archive_error_string(a));
    int64_t bytes = 0, entries = 0, files = 0;
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        const char *why = path_problem(name);
        mode_t type = archive_entry_filetype(e);
        if (!why && type != AE_IFREG && type != AE_IFDIR)
            why = "is not a plain file or directory (links, devices and fifos are refused)";
        if (!why && archive_entry_hardlink(e))
            why = "is a hard link";
        if (why)
            return loom_err_set(err, LOOM_EINVAL, "entry \"%.128s\" %s", name ? name : "", why);
        if (++entries > limits->max_entries)
            return loom_err_set(err, LOOM_EINVAL, "has more than %lld entries",
                                (long long)limits->max_entries);
        if (type != AE_IFREG)
            continue;
        files++;
        /* count what is really there, not what the header says */
        char buf[16384];
        la_ssize_t n;
        while ((n = archive_read_data(a, buf, sizeof(buf))) > 0) {
            bytes += n;
            if (bytes > limits->max_bytes)
                return loom_err_set(err, LOOM_EINVAL, "unpacks to more than %lld bytes",
                                    (long long)limits->max_bytes);
        }
        if (n < 0)
            return loom_err_set(err, LOOM_EINVAL, "is damaged at \"%.128s\": %s", name,
                                archive_error_string(a));
    }
    if (r != ARCHIVE_EOF)
        return loom_err_set(err, LOOM_EINVAL, "is not a valid tar.gz: %s", archive_error_string(a));
    if (files == 0)
        return loom_err_set(err, LOOM_EINVAL, "holds no file");
    if (ret_files)
        *ret_files = files;
    return 0;
}
