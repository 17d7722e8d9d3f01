/* loom: a directory packed as a tar.gz in memory (a function's code bundle). */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "strbuf.h"
#include "util.h"
#include "cli.h"

static la_ssize_t append(struct archive *a, void *arg, const void *buf, size_t len)
{
    (void)a;
    strbuf_add(arg, buf, len);
    return (la_ssize_t)len;
}

/* Adds dir/rel (a file or a directory, recursively) under the name rel. */
static int add_path(struct archive *a, const char *root, const char *rel, struct loom_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s%s%s", root, *rel ? "/" : "", rel);
    struct stat st;
    if (lstat(path, &st) < 0)
        return loom_err_sys(err, errno, "could not read \"%s\"", path);
    if (S_ISLNK(st.st_mode))
        return loom_err_set(err, LOOM_EINVAL,
                            "\"%s\" is a symbolic link: a bundle holds only files and directories",
                            path);
    if (*rel) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, rel);
        archive_entry_set_filetype(e, S_ISDIR(st.st_mode) ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(e, st.st_mode & 0755);
        archive_entry_set_size(e, S_ISDIR(st.st_mode) ? 0 : st.st_size);
        archive_entry_set_mtime(e, 0, 0); /* the same files give the same bundle */
        int rc = archive_write_header(a, e);
        archive_entry_free(e);
        if (rc != ARCHIVE_OK)
            return loom_err_set(err, LOOM_EIO, "packing \"%s\": %s", path, archive_error_string(a));
    }
    if (S_ISREG(st.st_mode)) {
        _cleanup_free_ char *data = NULL;
        size_t len = 0;
        if (loom_read_file(path, &data, &len, err) < 0)
            return -1;
        if (archive_write_data(a, data, len) != (la_ssize_t)len)
            return loom_err_set(err, LOOM_EIO, "packing \"%s\": %s", path, archive_error_string(a));
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        return loom_err_set(err, LOOM_EINVAL, "\"%s\" is not a file or a directory", path);
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort); /* sorted: a stable bundle */
    if (n < 0)
        return loom_err_sys(err, errno, "could not list \"%s\"", path);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *d = names[i]->d_name;
        if (!rc && strcmp(d, ".") != 0 && strcmp(d, "..") != 0) {
            char sub[4096];
            snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", d);
            rc = add_path(a, root, sub, err);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

int pack_dir(const char *dir, struct strbuf *out, struct loom_err *err)
{
    struct archive *a = archive_write_new();
    if (!a)
        abort();
    archive_write_set_format_pax_restricted(a);
    archive_write_add_filter_gzip(a);
    archive_write_set_bytes_in_last_block(a, 1);
    int rc = archive_write_open(a, out, NULL, append, NULL) == ARCHIVE_OK
                 ? add_path(a, dir, "", err)
                 : loom_err_set(err, LOOM_EIO, "packing: %s", archive_error_string(a));
    if (archive_write_close(a) != ARCHIVE_OK && rc == 0)
        rc = loom_err_set(err, LOOM_EIO, "packing: %s", archive_error_string(a));
    archive_write_free(a);
    return rc;
}
