#include "unpack.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "cleanup.h"
#include "strbuf.h"
#include "util.h"

#define READ_BLOCK (128 * 1024)

static void archive_read_freep(struct archive **a)
{
    if (*a)
        archive_read_free(*a);
}

static void archive_write_freep(struct archive **a)
{
    if (*a)
        archive_write_free(*a);
}

/* Normalizes an entry path to "a/b/c": drops "./" prefixes, empty and "."
 * components and a trailing slash. Refuses absolute paths and "..". The
 * result may be "" (the layer root). */
static int normalize_path(const char *raw, char **ret, struct loom_err *err)
{
    if (raw[0] == '/')
        return loom_err_set(err, LOOM_EINVAL, "refusing layer entry \"%.200s\": absolute path",
                            raw);
    struct strbuf sb = STRBUF_INIT;
    const char *p = raw;
    while (*p) {
        while (*p == '/')
            p++;
        const char *e = p;
        while (*e && *e != '/')
            e++;
        size_t n = (size_t)(e - p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            strbuf_release(&sb);
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": path has a \"..\" component",
                                raw);
        }
        if (n > 0 && !(n == 1 && p[0] == '.')) {
            if (sb.len)
                strbuf_addch(&sb, '/');
            strbuf_add(&sb, p, n);
        }
        p = e;
    }
    *ret = strbuf_detach(&sb, NULL);
    return 0;
}

/* True when a relative symlink target, resolved lexically from the
 * directory holding the link (depth components below the layer root),
 * climbs above the root. */
static bool symlink_escapes(const char *norm_path, const char *target)
{
    int depth = 0;
    for (const char *p = norm_path; *p; p++)
        if (*p == '/')
            depth++;
    const char *p = target;
    while (*p) {
        while (*p == '/')
            p++;
        const char *e = p;
        while (*e && *e != '/')
            e++;
        size_t n = (size_t)(e - p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0)
                return true;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            depth++;
        }
        p = e;
    }
    return false;
}

struct unpacker {
    const char *dest; /* the tree being filled (absolute, free of symlinks) */
    size_t dest_len;
    struct strbuf path;   /* scratch */
    char *checked_parent; /* the last parent directory found free of symlinks */
};

/* Refuses a path whose directories (all components but the last, or all of
 * them when include_last) include a symlink on disk: writing there would
 * follow it. Missing components are fine (they will be made as
 * directories). */
static int check_no_symlink(struct unpacker *u, const char *entry, const char *norm,
                            bool include_last, struct loom_err *err)
{
    size_t end = strlen(norm);
    if (!include_last) {
        const char *slash = strrchr(norm, '/');
        end = slash ? (size_t)(slash - norm) : 0;
    }
    if (end == 0)
        return 0;
    if (u->checked_parent && strlen(u->checked_parent) == end &&
        strncmp(u->checked_parent, norm, end) == 0)
        return 0;
    strbuf_reset(&u->path);
    strbuf_add(&u->path, u->dest, u->dest_len);
    size_t i = 0;
    while (i < end) {
        size_t j = i;
        while (j < end && norm[j] != '/')
            j++;
        strbuf_addch(&u->path, '/');
        strbuf_add(&u->path, norm + i, j - i);
        struct stat st;
        if (lstat(u->path.buf, &st) < 0) {
            if (errno == ENOENT)
                break;
            return loom_err_sys(err, errno, "could not stat \"%s\"", u->path.buf);
        }
        if (S_ISLNK(st.st_mode))
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": it would be written through "
                                "the symlink \"%.*s\"",
                                entry, (int)j, norm);
        i = j + 1;
    }
    free(u->checked_parent);
    u->checked_parent = strndup(norm, end);
    if (!u->checked_parent)
        abort();
    return 0;
}

static char *join(const char *a, const char *b)
{
    char *s = NULL;
    if (asprintf(&s, "%s%s%s", a, *b ? "/" : "", b) < 0)
        abort();
    return s;
}

/* `.wh..wh..opq` in dir: overlayfs hides the lower layers' content of dir. */
static int make_opaque(struct unpacker *u, const char *entry, const char *dir, struct loom_err *err)
{
    if (check_no_symlink(u, entry, dir, true, err) < 0)
        return -1;
    _cleanup_free_ char *path = join(u->dest, dir);
    if (loom_mkdir_p(path, 0755, err) < 0)
        return -1;
    if (lsetxattr(path, "trusted.overlay.opaque", "y", 1, 0) < 0)
        return loom_err_sys(err, errno, "could not mark \"%s\" opaque", path);
    return 0;
}

/* `.wh.<name>` in dir: a 0:0 character device hides <name> of the lower layers. */
static int make_whiteout(struct unpacker *u, const char *entry, const char *dir, const char *name,
                         struct archive_entry *e, struct loom_err *err)
{
    if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "refusing layer entry \"%.200s\": whiteout of no name", entry);
    _cleanup_free_ char *rel = join(dir, name);
    if (!*dir) {
        free(rel);
        rel = strdup(name);
        if (!rel)
            abort();
    }
    if (check_no_symlink(u, entry, rel, false, err) < 0)
        return -1;
    _cleanup_free_ char *parent = join(u->dest, dir);
    if (loom_mkdir_p(parent, 0755, err) < 0)
        return -1;
    _cleanup_free_ char *path = join(u->dest, rel);
    struct stat st;
    if (lstat(path, &st) == 0 && loom_rm_rf(path, err) < 0)
        return -1;
    if (mknod(path, S_IFCHR | 0000, makedev(0, 0)) < 0)
        return loom_err_sys(err, errno, "could not create whiteout \"%s\"", path);
    if (lchown(path, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e)) < 0)
        return loom_err_sys(err, errno, "could not chown \"%s\"", path);
    return 0;
}

/* Drops trusted.overlay.* xattrs: a layer must not steer overlayfs itself
 * (redirects, metacopy, opaque outside the whiteout convention). */
static void filter_xattrs(struct archive_entry *e)
{
    if (archive_entry_xattr_count(e) == 0)
        return;
    bool bad = false;
    const char *name;
    const void *value;
    size_t size;
    archive_entry_xattr_reset(e);
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK)
        if (strncmp(name, "trusted.overlay.", 16) == 0)
            bad = true;
    if (!bad)
        return;
    struct keep {
        char *name;
        void *value;
        size_t size;
    } *keep = calloc((size_t)archive_entry_xattr_count(e), sizeof(*keep));
    if (!keep)
        abort();
    size_t n = 0;
    archive_entry_xattr_reset(e);
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
        if (strncmp(name, "trusted.overlay.", 16) == 0)
            continue;
        keep[n].name = strdup(name);
        keep[n].value = malloc(size ? size : 1);
        if (!keep[n].name || !keep[n].value)
            abort();
        memcpy(keep[n].value, value, size);
        keep[n].size = size;
        n++;
    }
    archive_entry_xattr_clear(e);
    for (size_t i = 0; i < n; i++) {
        archive_entry_xattr_add_entry(e, keep[i].name, keep[i].value, keep[i].size);
        free(keep[i].name);
        free(keep[i].value);
    }
    free(keep);
}

static int copy_data(struct archive *in, struct archive *out, const char *entry,
                     struct loom_err *err)
{
    for (;;) {
        const void *buf;
        size_t size;
        la_int64_t off;
        int r = archive_read_data_block(in, &buf, &size, &off);
        if (r == ARCHIVE_EOF)
            return 0;
        if (r < ARCHIVE_WARN)
            return loom_err_set(err, LOOM_EINVAL, "corrupt layer at \"%.200s\": %s", entry,
                                archive_error_string(in));
        if (archive_write_data_block(out, buf, size, off) < ARCHIVE_WARN)
            return loom_err_set(err, LOOM_EIO, "could not write \"%.200s\": %s", entry,
                                archive_error_string(out));
    }
}

static int unpack_entry(struct unpacker *u, struct archive *in, struct archive *out,
                        struct archive_entry *e, struct loom_err *err)
{
    const char *raw = archive_entry_pathname(e);
    if (!raw)
        raw = archive_entry_pathname_utf8(e);
    if (!raw)
        return loom_err_set(err, LOOM_EINVAL, "corrupt layer: an entry has no path");
    _cleanup_free_ char *entry = strdup(raw);
    _cleanup_free_ char *norm = NULL;
    if (!entry)
        abort();
    if (normalize_path(entry, &norm, err) < 0)
        return -1;

    const char *slash = strrchr(norm, '/');
    const char *base = slash ? slash + 1 : norm;
    if (strncmp(base, ".wh.", 4) == 0) {
        _cleanup_free_ char *dir = strndup(norm, slash ? (size_t)(slash - norm) : 0);
        if (!dir)
            abort();
        if (strcmp(base, ".wh..wh..opq") == 0)
            return make_opaque(u, entry, dir, err);
        if (strncmp(base, ".wh..wh.", 8) == 0)
            return 0; /* aufs bookkeeping (.wh..wh.plnk and the like) */
        return make_whiteout(u, entry, dir, base + 4, e, err);
    }

    const char *hard = archive_entry_hardlink(e);
    if (!hard)
        hard = archive_entry_hardlink_utf8(e);
    mode_t type = archive_entry_filetype(e);
    _cleanup_free_ char *hard_abs = NULL;
    bool wrote_symlink = false;
    if (hard) {
        _cleanup_free_ char *hnorm = NULL;
        if (hard[0] == '/')
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": hard link to the absolute "
                                "path \"%.200s\"",
                                entry, hard);
        if (normalize_path(hard, &hnorm, err) < 0)
            return loom_err_wrap(err, "hard link \"%.200s\"", entry);
        if (!*hnorm)
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": hard link to the layer root",
                                entry);
        if (check_no_symlink(u, entry, hnorm, false, err) < 0)
            return -1;
        hard_abs = join(u->dest, hnorm);
        archive_entry_set_hardlink(e, hard_abs);
    } else {
        switch (type) {
        case AE_IFREG:
        case AE_IFDIR:
            break;
        case AE_IFLNK: {
            const char *target = archive_entry_symlink(e);
            if (!target)
                target = archive_entry_symlink_utf8(e);
            if (!target)
                return loom_err_set(err, LOOM_EINVAL,
                                    "refusing layer entry \"%.200s\": symlink without a target",
                                    entry);
            /* An absolute target is resolved inside the container's own
             * root, never on the host: extraction does not follow symlinks
             * (check_no_symlink and ARCHIVE_EXTRACT_SECURE_SYMLINKS), so it
             * is safe to keep. A relative one that climbs above the root
             * has no meaning in an image and is refused. */
            if (target[0] != '/' && symlink_escapes(norm, target))
                return loom_err_set(err, LOOM_EINVAL,
                                    "refusing layer entry \"%.200s\": symlink target \"%.200s\" "
                                    "escapes the layer root",
                                    entry, target);
            wrote_symlink = true;
            break;
        }
        case AE_IFCHR:
        case AE_IFBLK:
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": device nodes are not allowed "
                                "in layers",
                                entry);
        case AE_IFIFO:
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": FIFOs are not allowed in layers",
                                entry);
        case AE_IFSOCK:
            return loom_err_set(
                err, LOOM_EINVAL,
                "refusing layer entry \"%.200s\": sockets are not allowed in layers", entry);
        default:
            return loom_err_set(err, LOOM_EINVAL,
                                "refusing layer entry \"%.200s\": unsupported file type 0%o", entry,
                                (unsigned)type);
        }
    }
    if (!*norm && type != AE_IFDIR)
        return loom_err_set(err, LOOM_EINVAL,
                            "refusing layer entry \"%.200s\": the layer root must be a directory",
                            entry);
    if (check_no_symlink(u, entry, norm, false, err) < 0)
        return -1;
    filter_xattrs(e);
    _cleanup_free_ char *abs = join(u->dest, norm);
    archive_entry_set_pathname(e, abs);
    int r = archive_write_header(out, e);
    if (r < ARCHIVE_WARN)
        return loom_err_set(err, r == ARCHIVE_FAILED ? LOOM_EINVAL : LOOM_EIO,
                            "could not unpack layer entry \"%.200s\": %s", entry,
                            archive_error_string(out));
    if (archive_entry_size(e) > 0 && copy_data(in, out, entry, err) < 0)
        return -1;
    r = archive_write_finish_entry(out);
    if (r < ARCHIVE_WARN)
        return loom_err_set(err, LOOM_EIO, "could not finish layer entry \"%.200s\": %s", entry,
                            archive_error_string(out));
    if (wrote_symlink || hard) {
        /* a new symlink (or a hard link to one) may sit in a directory
         * checked before */
        free(u->checked_parent);
        u->checked_parent = NULL;
    }
    return 0;
}

static int unpack_into(const char *tar_path, const char *dest, struct loom_err *err)
{
    __attribute__((cleanup(archive_read_freep))) struct archive *in = archive_read_new();
    __attribute__((cleanup(archive_write_freep))) struct archive *out = archive_write_disk_new();
    if (!in || !out)
        abort();
    /* Only the compressions OCI layers use, built into libarchive: no
     * external decompressor programs. */
    archive_read_support_filter_gzip(in);
    archive_read_support_filter_zstd(in);
    archive_read_support_format_tar(in);
    archive_read_support_format_empty(in);
    /* Numeric ids only: the host's user database means nothing inside an
     * image, so no archive_write_disk_set_standard_lookup. */
    archive_write_disk_set_options(out, ARCHIVE_EXTRACT_OWNER | ARCHIVE_EXTRACT_PERM |
                                            ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_XATTR |
                                            ARCHIVE_EXTRACT_ACL | ARCHIVE_EXTRACT_SECURE_SYMLINKS |
                                            ARCHIVE_EXTRACT_SECURE_NODOTDOT);
    if (archive_read_open_filename(in, tar_path, READ_BLOCK) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "could not read layer \"%s\": %s", tar_path,
                            archive_error_string(in));

    struct unpacker u = {.dest = dest, .dest_len = strlen(dest)};
    strbuf_init(&u.path);
    int ret = -1;
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(in, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            loom_err_set(err, LOOM_EINVAL, "corrupt layer: %s", archive_error_string(in));
            goto out;
        }
        if (unpack_entry(&u, in, out, e, err) < 0)
            goto out;
    }
    /* directory times and modes are set here, after their content */
    if (archive_write_close(out) < ARCHIVE_WARN) {
        loom_err_set(err, LOOM_EIO, "could not finish unpacking: %s", archive_error_string(out));
        goto out;
    }
    ret = 0;
out:
    strbuf_release(&u.path);
    free(u.checked_parent);
    return ret;
}

int unpack_layer(const char *tar_path, const char *tmp_dir, const char *dest, int64_t *ret_size,
                 struct loom_err *err)
{
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s/unpack-XXXXXX", tmp_dir) < 0)
        abort();
    if (!mkdtemp(tmp))
        return loom_err_sys(err, errno, "could not create a directory in \"%s\"", tmp_dir);
    /* mkdtemp makes 0700; a layer root without its own entry is 0755 */
    int64_t size = 0;
    if (chmod(tmp, 0755) < 0) {
        loom_err_sys(err, errno, "could not chmod \"%s\"", tmp);
        goto fail;
    }
    if (unpack_into(tar_path, tmp, err) < 0)
        goto fail;
    if (unpack_tree_size(tmp, &size, err) < 0)
        goto fail;
    if (rename(tmp, dest) < 0) {
        loom_err_sys(err, errno, "could not rename \"%s\" to \"%s\"", tmp, dest);
        goto fail;
    }
    *ret_size = size;
    return 0;
fail:
    loom_rm_rf(tmp, NULL);
    return -1;
}

/* --- du ---------------------------------------------------------------------------- */

struct du {
    int64_t total;
    struct du_link {
        dev_t dev;
        ino_t ino;
        int64_t bytes;
    } * links; /* files with more than one link, to count once */
    size_t nlinks, alloc;
};

static int du_walk(struct du *du, int dirfd, const char *path, struct loom_err *err)
{
    int fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    _cleanup_closedir_ DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return loom_err_sys(err, errno, "could not read \"%s\"", path);
    }
    struct dirent *de;
    while ((errno = 0, de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            return loom_err_sys(err, errno, "could not stat \"%s/%s\"", path, de->d_name);
        int64_t bytes = (int64_t)st.st_blocks * 512;
        if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
            if (du->nlinks == du->alloc) {
                du->alloc = du->alloc ? du->alloc * 2 : 64;
                du->links = realloc(du->links, du->alloc * sizeof(*du->links));
                if (!du->links)
                    abort();
            }
            du->links[du->nlinks++] = (struct du_link){st.st_dev, st.st_ino, bytes};
        } else {
            du->total += bytes;
        }
        if (S_ISDIR(st.st_mode) && du_walk(du, fd, de->d_name, err) < 0)
            return -1;
    }
    if (errno)
        return loom_err_sys(err, errno, "could not read \"%s\"", path);
    return 0;
}

static int du_link_cmp(const void *a, const void *b)
{
    const struct du_link *x = a, *y = b;
    if (x->dev != y->dev)
        return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return 0;
}

int unpack_tree_size(const char *path, int64_t *ret, struct loom_err *err)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return loom_err_sys(err, errno, "could not stat \"%s\"", path);
    struct du du = {.total = (int64_t)st.st_blocks * 512};
    int r = du_walk(&du, AT_FDCWD, path, err);
    if (r == 0) {
        if (du.nlinks)
            qsort(du.links, du.nlinks, sizeof(*du.links), du_link_cmp);
        for (size_t i = 0; i < du.nlinks; i++)
            if (i == 0 || du_link_cmp(&du.links[i], &du.links[i - 1]) != 0)
                du.total += du.links[i].bytes;
        *ret = du.total;
    }
    free(du.links);
    return r;
}
