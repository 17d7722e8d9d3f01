#include "tarball.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "strbuf.h"

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

void loom_tarball_normalize(const char *p, struct strbuf *out)
{
    strbuf_reset(out);
    for (const char *c = p; *c;) {
        size_t n = strcspn(c, "/");
        if (n && !(n == 1 && c[0] == '.')) {
            if (out->len)
                strbuf_addch(out, '/');
            strbuf_add(out, c, n);
        }
        c += n;
        while (*c == '/')
            c++;
    }
}

bool loom_tarball_link_inside(const char *path, const char *target)
{
    if (!*target || target[0] == '/')
        return false;
    int depth = 0; /* of the link's directory */
    for (const char *c = path; *c; c++)
        depth += *c == '/';
    for (const char *c = target; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            if (--depth < 0)
                return false;
        } else if (n && !(n == 1 && c[0] == '.')) {
            depth++;
        }
        c += n;
        while (*c == '/')
            c++;
    }
    return true;
}

/* The symbolic links seen so far (normalized paths): an entry below one
 * would be written through it. */
struct links {
    char **paths;
    size_t n, cap;
};

static void links_release(struct links *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->paths[i]);
    free(l->paths);
}

static const char *links_under(const struct links *l, const char *path)
{
    for (size_t i = 0; i < l->n; i++) {
        size_t k = strlen(l->paths[i]);
        if (strncmp(path, l->paths[i], k) == 0 && path[k] == '/')
            return l->paths[i];
    }
    return NULL;
}

static void links_add(struct links *l, const char *path)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->paths = realloc(l->paths, l->cap * sizeof(*l->paths));
        if (!l->paths)
            abort();
    }
    if (!(l->paths[l->n++] = strdup(path)))
        abort();
}

/* Why entry e cannot be taken (limits: links or not), or NULL. */
static const char *entry_problem(struct archive_entry *e, const struct loom_tarball_limits *limits,
                                 const struct links *seen, const char *norm, char *why,
                                 size_t whylen)
{
    const char *name = archive_entry_pathname(e), *via;
    const char *problem = path_problem(name);
    mode_t type = archive_entry_filetype(e);
    const char *hard = archive_entry_hardlink(e);
    if (problem)
        return problem;
    if ((via = links_under(seen, norm))) {
        snprintf(why, whylen, "is under the symbolic link \"%.128s\"", via);
        return why;
    }
    if (hard)
        return "is a hard link (pack it as a copy)";
    if (type == AE_IFLNK && limits->links) {
        const char *target = archive_entry_symlink(e);
        if (!target || !loom_tarball_link_inside(norm, target)) {
            snprintf(why, whylen, "is a symbolic link to \"%.128s\", outside the source",
                     target ? target : "");
            return why;
        }
        return NULL;
    }
    if (type != AE_IFREG && type != AE_IFDIR)
        return limits->links ? "is not a file, directory or link (devices and fifos are refused)"
                             : "is not a plain file or directory (links, devices and fifos are "
                               "refused)";
    return NULL;
}

static int check_archive(struct archive *a, const struct loom_tarball_limits *limits,
                         int64_t *ret_files, struct loom_err *err)
{
    int64_t bytes = 0, entries = 0, files = 0;
    struct archive_entry *e;
    _cleanup_strbuf_ struct strbuf norm = STRBUF_INIT;
    struct links seen = {0};
    int r, rc = -1;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        char buf[320];
        loom_tarball_normalize(name ? name : "", &norm);
        const char *why = entry_problem(e, limits, &seen, norm.buf, buf, sizeof(buf));
        if (why) {
            loom_err_set(err, LOOM_EINVAL, "entry \"%.128s\" %s", name ? name : "", why);
            goto out;
        }
        if (++entries > limits->max_entries) {
            loom_err_set(err, LOOM_EINVAL, "has more than %lld entries",
                         (long long)limits->max_entries);
            goto out;
        }
        if (archive_entry_filetype(e) == AE_IFLNK)
            links_add(&seen, norm.buf);
        if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e))
            continue;
        files++;
        /* count what is really there, not what the header says */
        char data[16384];
        la_ssize_t n;
        while ((n = archive_read_data(a, data, sizeof(data))) > 0) {
            bytes += n;
            if (bytes > limits->max_bytes) {
                loom_err_set(err, LOOM_EINVAL, "unpacks to more than %lld bytes",
                             (long long)limits->max_bytes);
                goto out;
            }
        }
        if (n < 0) {
            loom_err_set(err, LOOM_EINVAL, "is damaged at \"%.128s\": %s", name,
                         archive_error_string(a));
            goto out;
        }
    }
    if (r != ARCHIVE_EOF)
        loom_err_set(err, LOOM_EINVAL, "is not a valid tar.gz: %s", archive_error_string(a));
    else if (files == 0)
        loom_err_set(err, LOOM_EINVAL, "holds no file");
    else
        rc = 0;
out:
    links_release(&seen);
    if (rc == 0 && ret_files)
        *ret_files = files;
    return rc;
}

struct archive *loom_tarball_reader(void)
{
    struct archive *a = archive_read_new();
    if (!a)
        abort();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    return a;
}

int loom_tarball_check(const void *data, size_t len, const struct loom_tarball_limits *limits,
                       int64_t *ret_files, struct loom_err *err)
{
    __attribute__((cleanup(archive_freep))) struct archive *a = loom_tarball_reader();
    if (archive_read_open_memory(a, data, len) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "is not a tar.gz: %s", archive_error_string(a));
    return check_archive(a, limits, ret_files, err);
}

int loom_tarball_check_fd(int fd, const struct loom_tarball_limits *limits, int64_t *ret_files,
                          struct loom_err *err)
{
    __attribute__((cleanup(archive_freep))) struct archive *a = loom_tarball_reader();
    if (archive_read_open_fd(a, fd, 65536) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "is not a tar.gz: %s", archive_error_string(a));
    return check_archive(a, limits, ret_files, err);
}
