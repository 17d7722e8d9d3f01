#include "layer.h"

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

#include <openssl/evp.h>
#include <zlib.h>

#include "cleanup.h"
#include "strbuf.h"
#include "tarball.h"
#include "util.h"

struct loom_layer {
    struct archive *a;
    char path[4096];
    int fd;
    z_stream z;
    EVP_MD_CTX *tar_md, *gz_md;
    int64_t size, entries;
    int write_errno;
};

static void md_hex(EVP_MD_CTX *md, char out[72])
{
    unsigned char b[32];
    char hex[65];
    EVP_DigestFinal_ex(md, b, NULL);
    loom_hex(b, 32, hex);
    snprintf(out, 72, "sha256:%s", hex);
}

static int out_write(struct loom_layer *l, const unsigned char *p, size_t n)
{
    EVP_DigestUpdate(l->gz_md, p, n);
    l->size += (int64_t)n;
    while (n > 0) {
        ssize_t w = write(l->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            l->write_errno = errno;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The tar's bytes: hashed, compressed, hashed again, written. */
static int deflate_some(struct loom_layer *l, const void *data, size_t len, int flush)
{
    unsigned char out[65536];
    l->z.next_in = (unsigned char *)data;
    l->z.avail_in = (uInt)len;
    do {
        l->z.next_out = out;
        l->z.avail_out = sizeof(out);
        int r = deflate(&l->z, flush);
        if (r == Z_STREAM_ERROR)
            return -1;
        if (out_write(l, out, sizeof(out) - l->z.avail_out) < 0)
            return -1;
    } while (l->z.avail_out == 0 || (flush == Z_FINISH && l->z.avail_in > 0));
    return 0;
}

static la_ssize_t tar_out(struct archive *a, void *arg, const void *buf, size_t len)
{
    (void)a;
    struct loom_layer *l = arg;
    EVP_DigestUpdate(l->tar_md, buf, len);
    return deflate_some(l, buf, len, Z_NO_FLUSH) < 0 ? -1 : (la_ssize_t)len;
}

int loom_layer_open(const char *tmp_dir, struct loom_layer **ret, struct loom_err *err)
{
    struct loom_layer *l = calloc(1, sizeof(*l));
    if (!l)
        abort();
    char rnd[37];
    loom_uuid4(rnd);
    snprintf(l->path, sizeof(l->path), "%s/layer-%s.tar.gz", tmp_dir, rnd);
    l->fd = open(l->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (l->fd < 0) {
        int e = errno;
        free(l);
        return loom_err_sys(err, e, "could not create a layer in \"%s\"", tmp_dir);
    }
    l->tar_md = EVP_MD_CTX_new();
    l->gz_md = EVP_MD_CTX_new();
    if (!l->tar_md || !l->gz_md || !EVP_DigestInit_ex(l->tar_md, EVP_sha256(), NULL) ||
        !EVP_DigestInit_ex(l->gz_md, EVP_sha256(), NULL))
        abort();
    /* gzip (windowBits + 16) with zlib's header: no name, time 0 */
    if (deflateInit2(&l->z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort();
    l->a = archive_write_new();
    if (!l->a)
        abort();
    archive_write_set_format_pax_restricted(l->a);
    archive_write_set_bytes_in_last_block(l->a, 1);
    if (archive_write_open(l->a, l, NULL, tar_out, NULL) != ARCHIVE_OK) {
        loom_err_set(err, LOOM_EIO, "could not start a layer: %s", archive_error_string(l->a));
        loom_layer_free(l);
        return -1;
    }
    *ret = l;
    return 0;
}

void loom_layer_free(struct loom_layer *l)
{
    if (!l)
        return;
    if (l->a)
        archive_write_free(l->a);
    if (l->fd >= 0)
        close(l->fd);
    unlink(l->path);
    deflateEnd(&l->z);
    EVP_MD_CTX_free(l->tar_md);
    EVP_MD_CTX_free(l->gz_md);
    free(l);
}

static int header(struct loom_layer *l, const char *path, unsigned type, unsigned mode,
                  int64_t size, const char *link, struct loom_err *err)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, path);
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, type == AE_IFLNK ? 0777 : mode & 07777);
    archive_entry_set_size(e, type == AE_IFREG ? size : 0);
    archive_entry_set_mtime(e, 0, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    if (link)
        archive_entry_set_symlink(e, link);
    int rc = archive_write_header(l->a, e);
    archive_entry_free(e);
    l->entries++;
    if (rc != ARCHIVE_OK)
        return loom_err_set(err, l->write_errno ? LOOM_EIO : LOOM_EINVAL,
                            "layer entry \"%.200s\": %s", path,
                            l->write_errno ? strerror(l->write_errno) : archive_error_string(l->a));
    return 0;
}

static int data(struct loom_layer *l, const char *path, const void *buf, size_t len,
                struct loom_err *err)
{
    if (len && archive_write_data(l->a, buf, len) != (la_ssize_t)len)
        return loom_err_set(err, LOOM_EIO, "layer entry \"%.200s\": %s", path,
                            l->write_errno ? strerror(l->write_errno) : archive_error_string(l->a));
    return 0;
}

int loom_layer_add_dir(struct loom_layer *l, const char *path, unsigned mode, struct loom_err *err)
{
    return header(l, path, AE_IFDIR, mode, 0, NULL, err);
}

int loom_layer_add_file(struct loom_layer *l, const char *path, unsigned mode, const void *buf,
                        size_t len, struct loom_err *err)
{
    if (header(l, path, AE_IFREG, mode, (int64_t)len, NULL, err) < 0)
        return -1;
    return data(l, path, buf, len, err);
}

int loom_layer_add_symlink(struct loom_layer *l, const char *path, const char *target,
                           struct loom_err *err)
{
    return header(l, path, AE_IFLNK, 0777, 0, target, err);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One entry of a tree, by its name in dirfd; name is its path in the layer. */
static int add_entry(struct loom_layer *l, int dirfd, const char *base, const char *name,
                     struct loom_err *err);

static int add_children(struct loom_layer *l, int fd, const char *prefix, struct loom_err *err)
{
    /* a description of its own: a dup would share (and move) fd's offset */
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return loom_err_sys(err, errno, "could not list \"%s\"", prefix);
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (n == cap && !(names = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof(char *))))
            abort();
        if (!(names[n++] = strdup(de->d_name)))
            abort();
    }
    closedir(d);
    qsort(names, n, sizeof(char *), name_cmp);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            _cleanup_free_ char *path = NULL;
            if (asprintf(&path, "%s%s%s", prefix, *prefix ? "/" : "", names[i]) < 0)
                abort();
            rc = add_entry(l, fd, names[i], path, err);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static int add_entry(struct loom_layer *l, int dirfd, const char *base, const char *name,
                     struct loom_err *err)
{
    struct stat st;
    if (fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return loom_err_sys(err, errno, "could not read \"%s\"", name);
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlinkat(dirfd, base, target, sizeof(target) - 1);
        if (n < 0)
            return loom_err_sys(err, errno, "could not read the link \"%s\"", name);
        target[n] = '\0';
        return loom_layer_add_symlink(l, name, target, err);
    }
    if (S_ISDIR(st.st_mode)) {
        _cleanup_close_ int fd =
            openat(dirfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return loom_err_sys(err, errno, "could not open \"%s\"", name);
        if (loom_layer_add_dir(l, name, st.st_mode, err) < 0)
            return -1;
        return add_children(l, fd, name, err);
    }
    if (!S_ISREG(st.st_mode))
        return 0;
    _cleanup_close_ int fd = openat(dirfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", name);
    return loom_layer_add_file_fd(l, name, st.st_mode, fd, st.st_size, err);
}

int loom_layer_add_file_fd(struct loom_layer *l, const char *name, unsigned mode, int fd,
                           int64_t size, struct loom_err *err)
{
    if (header(l, name, AE_IFREG, mode, size, NULL, err) < 0)
        return -1;
    char buf[65536];
    int64_t left = size;
    while (left > 0) {
        ssize_t n = read(fd, buf, sizeof(buf) < (size_t)left ? sizeof(buf) : (size_t)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return loom_err_sys(err, n < 0 ? errno : EIO, "could not read \"%s\"", name);
        if (data(l, name, buf, (size_t)n, err) < 0)
            return -1;
        left -= n;
    }
    return 0;
}

int loom_layer_add_tree(struct loom_layer *l, int dirfd, const char *prefix, bool with_parents,
                        struct loom_err *err)
{
    if (with_parents) {
        _cleanup_free_ char *p = strdup(prefix);
        for (char *s = strchr(p, '/'); s; s = strchr(s + 1, '/')) {
            *s = '\0';
            if (loom_layer_add_dir(l, p, 0755, err) < 0)
                return -1;
            *s = '/';
        }
    }
    struct stat st;
    if (fstat(dirfd, &st) < 0)
        return loom_err_sys(err, errno, "could not read \"%s\"", prefix);
    if (loom_layer_add_dir(l, prefix, st.st_mode, err) < 0)
        return -1;
    return add_children(l, dirfd, prefix, err);
}

static void archive_freep(struct archive **a)
{
    if (*a)
        archive_read_free(*a);
}

int loom_layer_add_archive(struct loom_layer *l, int fd, loom_layer_filter filter, void *arg,
                           struct loom_err *err)
{
    __attribute__((cleanup(archive_freep))) struct archive *a = loom_tarball_reader();
    if (archive_read_open_fd(a, fd, 65536) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "not a tar.gz: %s", archive_error_string(a));
    struct archive_entry *e;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *path = archive_entry_pathname(e);
        unsigned type = archive_entry_filetype(e);
        if (archive_entry_hardlink(e))
            return loom_err_set(err, LOOM_EINVAL, "entry \"%.200s\" is a hard link", path);
        if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
            continue;
        const char *name = path;
        if (filter) {
            int take = filter(path, type == AE_IFDIR, arg, &name, err);
            if (take < 0)
                return -1;
            if (!take)
                continue;
        }
        if (header(l, name, type, archive_entry_perm(e), archive_entry_size(e),
                   type == AE_IFLNK ? archive_entry_symlink(e) : NULL, err) < 0)
            return -1;
        char buf[65536];
        la_ssize_t n;
        while (type == AE_IFREG && (n = archive_read_data(a, buf, sizeof(buf))) != 0) {
            if (n < 0)
                return loom_err_set(err, LOOM_EINVAL, "entry \"%.200s\": %s", path,
                                    archive_error_string(a));
            if (data(l, name, buf, (size_t)n, err) < 0)
                return -1;
        }
    }
    if (r != ARCHIVE_EOF)
        return loom_err_set(err, LOOM_EINVAL, "not a valid tar.gz: %s", archive_error_string(a));
    return 0;
}

int loom_layer_finish(struct loom_layer *l, struct loom_layer_info *ret, struct loom_err *err)
{
    int rc = archive_write_close(l->a);
    archive_write_free(l->a);
    l->a = NULL;
    if (rc != ARCHIVE_OK || deflate_some(l, NULL, 0, Z_FINISH) < 0)
        return loom_err_sys(err, l->write_errno ? l->write_errno : EIO,
                            "could not write the layer \"%s\"", l->path);
    if (close(l->fd) < 0) {
        l->fd = -1;
        return loom_err_sys(err, errno, "could not write the layer \"%s\"", l->path);
    }
    l->fd = -1;
    *ret = (struct loom_layer_info){.size = l->size, .entries = l->entries, .path = l->path};
    md_hex(l->tar_md, ret->diff_id);
    md_hex(l->gz_md, ret->digest);
    return 0;
}
