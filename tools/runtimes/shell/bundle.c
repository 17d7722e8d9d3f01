#define ZLIB_CONST
#include "bundle.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "cleanup.h"
#include "strbuf.h"

#define CHUNK 65536
#define MAX_META 65536 /* GNU long names and pax headers */
#define MAX_LINK 4096  /* a zip's link target */

enum entry_kind { ENTRY_FILE, ENTRY_DIR, ENTRY_SYMLINK, ENTRY_HARDLINK };

struct unpack {
    const char *root;
    size_t written;      /* file content so far */
    struct strbuf links; /* the links made, as paths each ending in '\0' */
};

/* name's path below the root in rel ("" for the root itself). */
static int clean_name(const char *name, char rel[PATH_MAX], struct loom_err *err)
{
    size_t len = 0;
    if (name[0] == '/')
        return loom_err_set(err, LOOM_EINVAL, "entry \"%s\" has an absolute path", name);
    for (const char *p = name; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return loom_err_set(err, LOOM_EINVAL, "entry \"%s\" has \"..\" in its path", name);
        if (n > 0 && !(n == 1 && p[0] == '.')) {
            if (len + n + 2 > PATH_MAX)
                return loom_err_set(err, LOOM_EINVAL, "entry \"%s\": path too long", name);
            if (len > 0)
                rel[len++] = '/';
            memcpy(rel + len, p, n);
            len += n;
        }
        p += n;
        if (*p == '/')
            p++;
    }
    rel[len] = '\0';
    return 0;
}

static int join(char path[PATH_MAX], const char *root, const char *rel, size_t rel_len,
                struct loom_err *err)
{
    int n = snprintf(path, PATH_MAX, "%s/%.*s", root, (int)rel_len, rel);
    if (n < 0 || n >= PATH_MAX)
        return loom_err_set(err, LOOM_EINVAL, "path too long: %.*s", (int)rel_len, rel);
    return 0;
}

/* Whether target, followed from the directory of the link at rel, stays below
 * the root when every directory on the way is a real one. */
static bool link_stays_inside(const char *rel, const char *target)
{
    long depth = 0;
    if (target[0] == '/')
        return false;
    for (const char *p = rel; *p; p++)
        depth += *p == '/';
    for (const char *p = target; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0)
                return false;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            depth++;
        }
        p += n;
        if (*p == '/')
            p++;
    }
    return true;
}

/* Makes the directories above rel, refusing links and files on the way, and
 * clears the place of the entry itself. *ret_dir_exists: a directory is there. */
static int prepare(const struct unpack *u, const char *name, const char *rel, enum entry_kind kind,
                   char path[PATH_MAX], bool *ret_dir_exists, struct loom_err *err)
{
    struct stat st;
    for (const char *slash = strchr(rel, '/'); slash; slash = strchr(slash + 1, '/')) {
        if (join(path, u->root, rel, (size_t)(slash - rel), err) < 0)
            return -1;
        if (lstat(path, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                return loom_err_set(err, LOOM_EINVAL, "entry \"%s\" lies under a %s", name,
                                    S_ISLNK(st.st_mode) ? "link" : "file");
        } else if (errno != ENOENT || mkdir(path, 0755) < 0) {
            return loom_err_sys(err, errno, "could not make the directory of \"%s\"", name);
        }
    }
    if (join(path, u->root, rel, strlen(rel), err) < 0)
        return -1;
    *ret_dir_exists = false;
    if (lstat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode) && kind != ENTRY_DIR)
            return loom_err_set(err, LOOM_EINVAL, "entry \"%s\" replaces a directory", name);
        if (S_ISDIR(st.st_mode))
            *ret_dir_exists = true;
        else if (unlink(path) < 0)
            return loom_err_sys(err, errno, "could not replace \"%s\"", name);
    } else if (errno != ENOENT) {
        return loom_err_sys(err, errno, "could not look at \"%s\"", name);
    }
    return 0;
}

/* Makes one entry; for a file, *ret_fd is then open for its content. */
static int make_entry(struct unpack *u, const char *name, enum entry_kind kind, unsigned mode,
                      const char *target, int *ret_fd, struct loom_err *err)
{
    char rel[PATH_MAX], path[PATH_MAX], source_rel[PATH_MAX], source[PATH_MAX];
    bool dir_exists;
    struct stat st;
    int fd;

    *ret_fd = -1;
    if (clean_name(name, rel, err) < 0)
        return -1;
    if (!rel[0])
        return 0; /* the top directory itself */
    if (prepare(u, name, rel, kind, path, &dir_exists, err) < 0)
        return -1;
    switch (kind) {
    case ENTRY_DIR:
        if (!dir_exists && mkdir(path, 0755) < 0)
            return loom_err_sys(err, errno, "could not make \"%s\"", name);
        return 0;
    case ENTRY_FILE:
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
            return loom_err_sys(err, errno, "could not create \"%s\"", name);
        if (fchmod(fd, mode & 0111 ? 0755 : 0644) < 0) {
            close(fd);
            return loom_err_sys(err, errno, "could not set the mode of \"%s\"", name);
        }
        *ret_fd = fd;
        return 0;
    case ENTRY_SYMLINK:
        if (!link_stays_inside(rel, target))
            return loom_err_set(err, LOOM_EINVAL, "link \"%s\" -> \"%s\" leads out of the action",
                                name, target);
        if (symlink(target, path) < 0)
            return loom_err_sys(err, errno, "could not make the link \"%s\"", name);
        strbuf_add(&u->links, path, strlen(path) + 1);
        return 0;
    case ENTRY_HARDLINK:
        if (clean_name(target, source_rel, err) < 0 ||
            join(source, u->root, source_rel, strlen(source_rel), err) < 0)
            return -1;
        if (lstat(source, &st) < 0 || !S_ISREG(st.st_mode))
            return loom_err_set(err, LOOM_EINVAL,
                                "hard link \"%s\" -> \"%s\" is not to a file of the bundle", name,
                                target);
        if (link(source, path) < 0)
            return loom_err_sys(err, errno, "could not make the hard link \"%s\"", name);
        return 0;
    }
    return 0;
}

static int too_large(struct loom_err *err)
{
    return loom_err_set(err, LOOM_ETOOBIG, "the bundle unpacks to more than %zu MiB",
                        BUNDLE_MAX_BYTES >> 20);
}

static int write_data(struct unpack *u, int fd, const unsigned char *p, size_t n,
                      struct loom_err *err)
{
    if (n > BUNDLE_MAX_BYTES - u->written)
        return too_large(err);
    u->written += n;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return loom_err_sys(err, errno, "could not write the bundle's files");
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Every link made, followed through the others, must end below the root. */
static int check_links(const struct unpack *u, struct loom_err *err)
{
    _cleanup_free_ char *top = realpath(u->root, NULL);
    if (!top)
        return loom_err_sys(err, errno, "could not resolve %s", u->root);
    size_t top_len = strlen(top), root_len = strlen(u->root);
    for (size_t off = 0; off < u->links.len; off += strlen(u->links.buf + off) + 1) {
        const char *path = u->links.buf + off;
        _cleanup_free_ char *real = realpath(path, NULL);
        if (!real)
            continue; /* dangling: the lexical check is all there is to check */
        if (strncmp(real, top, top_len) != 0 || (real[top_len] && real[top_len] != '/'))
            return loom_err_set(err, LOOM_EINVAL, "link \"%s\" leads out of the action",
                                path + root_len + 1);
    }
    return 0;
}

/* --- tar.gz ----------------------------------------------------------------- */

struct gz {
    z_stream z;
    bool end;
};

/* Reads exactly n bytes (n <= CHUNK): 1; 0 at the end of the stream before
 * any byte; -1 when it ends early or is damaged. */
static int gz_read(struct gz *g, unsigned char *out, size_t n, struct loom_err *err)
{
    g->z.next_out = out;
    g->z.avail_out = (uInt)n;
    while (g->z.avail_out > 0 && !g->end) {
        int rc = inflate(&g->z, Z_NO_FLUSH);
        if (rc == Z_STREAM_END)
            g->end = true;
        else if (rc == Z_BUF_ERROR)
            return loom_err_set(err, LOOM_EINVAL, "the tar.gz is truncated");
        else if (rc != Z_OK)
            return loom_err_set(err, LOOM_EINVAL, "the tar.gz is damaged: %s",
                                g->z.msg ? g->z.msg : "inflate failed");
    }
    if (g->z.avail_out == 0)
        return 1;
    if (g->z.avail_out == n)
        return 0;
    return loom_err_set(err, LOOM_EINVAL, "the tar.gz is truncated");
}

/* Reads exactly n bytes, which must be there. */
static int gz_need(struct gz *g, unsigned char *out, size_t n, struct loom_err *err)
{
    int r = gz_read(g, out, n, err);
    if (r == 0)
        return loom_err_set(err, LOOM_EINVAL, "the tar.gz is truncated");
    return r < 0 ? -1 : 0;
}

static int gz_skip(struct gz *g, unsigned long long n, struct loom_err *err)
{
    unsigned char scratch[512];
    for (; n > 0; n -= 512)
        if (gz_need(g, scratch, sizeof(scratch), err) < 0)
            return -1;
    return 0;
}

/* An octal header field; ULLONG_MAX when it is not one (or base-256). */
static unsigned long long tar_octal(const unsigned char *p, size_t n)
{
    unsigned long long v = 0;
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++) {
        v = v * 8 + (unsigned)(p[i] - '0');
        if (v > (1ULL << 40))
            return ULLONG_MAX;
    }
    for (; i < n; i++)
        if (p[i] != ' ' && p[i] != '\0')
            return ULLONG_MAX;
    return v;
}

static bool tar_checksum_ok(const unsigned char h[512])
{
    unsigned long long sum = 0;
    for (int i = 0; i < 512; i++)
        sum += i >= 148 && i < 156 ? ' ' : h[i];
    return sum == tar_octal(h + 148, 8);
}

/* The value of the pax record "LENGTH key=value\n" named key, or NULL. */
static char *pax_get(const char *data, size_t n, const char *key)
{
    size_t key_len = strlen(key);
    for (size_t p = 0; p < n;) {
        char *end;
        unsigned long len = strtoul(data + p, &end, 10);
        if (len == 0 || len > n - p || *end != ' ')
            break;
        const char *rec = end + 1;
        size_t rec_len = (size_t)(data + p + len - rec); /* with its '\n' */
        if (rec_len > key_len + 1 && memcmp(rec, key, key_len) == 0 && rec[key_len] == '=')
            return strndup(rec + key_len + 1, rec_len - key_len - 2);
        p += len;
    }
    return NULL;
}

static void replace(char **slot, char *value)
{
    free(*slot);
    *slot = value;
}

static int tar_entries(struct unpack *u, struct gz *g, struct loom_err *err)
{
    _cleanup_free_ char *long_name = NULL, *long_link = NULL;
    unsigned char h[512], chunk[CHUNK];

    for (;;) {
        int r = gz_read(g, h, sizeof(h), err);
        if (r <= 0)
            return r; /* the end without its zero blocks is accepted */
        bool zero = true;
        for (size_t i = 0; i < sizeof(h) && zero; i++)
            zero = h[i] == 0;
        if (zero)
            return 0;
        if (!tar_checksum_ok(h))
            return loom_err_set(err, LOOM_EINVAL, "the tar.gz holds no tar archive");
        unsigned long long size = tar_octal(h + 124, 12);
        if (size == ULLONG_MAX)
            return loom_err_set(err, LOOM_EINVAL, "the tar has an entry of unknown size");
        unsigned long long padded = (size + 511) & ~511ULL;
        char type = h[156] ? (char)h[156] : '0';

        if (type == 'g') { /* pax global header: nothing Loom needs */
            if (gz_skip(g, padded, err) < 0)
                return -1;
            continue;
        }
        if (type == 'L' || type == 'K' || type == 'x') {
            if (size > MAX_META)
                return loom_err_set(err, LOOM_EINVAL, "the tar has a header too large");
            _cleanup_free_ char *meta = malloc(padded + 1);
            if (!meta)
                abort();
            for (size_t off = 0; off < padded; off += 512)
                if (gz_need(g, (unsigned char *)meta + off, 512, err) < 0)
                    return -1;
            meta[size] = '\0';
            if (type == 'L')
                replace(&long_name, strdup(meta));
            else if (type == 'K')
                replace(&long_link, strdup(meta));
            else {
                char *v;
                if ((v = pax_get(meta, size, "path")))
                    replace(&long_name, v);
                if ((v = pax_get(meta, size, "linkpath")))
                    replace(&long_link, v);
            }
            continue;
        }

        char short_name[256 + 100 + 1], short_link[101];
        size_t prefix_len = memcmp(h + 257, "ustar\0", 6) == 0 ? strnlen((char *)h + 345, 155) : 0;
        snprintf(short_name, sizeof(short_name), "%.*s%s%.*s", (int)prefix_len, (char *)h + 345,
                 prefix_len ? "/" : "", (int)strnlen((char *)h, 100), (char *)h);
        snprintf(short_link, sizeof(short_link), "%.*s", (int)strnlen((char *)h + 157, 100),
                 (char *)h + 157);
        const char *name = long_name ? long_name : short_name;
        const char *target = long_link ? long_link : short_link;
        enum entry_kind kind;
        switch (type) {
        case '0':
        case '7':
            kind = ENTRY_FILE;
            break;
        case '5':
            kind = ENTRY_DIR;
            break;
        case '2':
            kind = ENTRY_SYMLINK;
            break;
        case '1':
            kind = ENTRY_HARDLINK;
            break;
        default:
            return loom_err_set(err, LOOM_EINVAL, "entry \"%s\" is not a file, directory or link",
                                name);
        }
        _cleanup_close_ int fd = -1;
        if (make_entry(u, name, kind, (unsigned)tar_octal(h + 100, 8), target, &fd, err) < 0)
            return -1;
        for (unsigned long long left = padded, data = size; left > 0;) {
            size_t n = left < CHUNK ? (size_t)left : CHUNK;
            if (gz_need(g, chunk, n, err) < 0)
                return -1;
            size_t used = data < n ? (size_t)data : n;
            if (fd >= 0 && write_data(u, fd, chunk, used, err) < 0)
                return -1;
            left -= n;
            data -= used;
        }
        replace(&long_name, NULL);
        replace(&long_link, NULL);
    }
}

static int unpack_tar(struct unpack *u, const unsigned char *data, size_t len, struct loom_err *err)
{
    if (len > UINT_MAX)
        return too_large(err);
    struct gz g = {.z = {.next_in = data, .avail_in = (uInt)len}};
    if (inflateInit2(&g.z, 16 + MAX_WBITS) != Z_OK)
        return loom_err_set(err, LOOM_EINTERNAL, "could not start inflating");
    int rc = tar_entries(u, &g, err);
    inflateEnd(&g.z);
    return rc;
}

/* --- zip -------------------------------------------------------------------- */

static uint32_t le16(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t le32(const unsigned char *p)
{
    return le16(p) | le16(p + 2) << 16;
}

/* Where a zip entry's content goes: a file, or memory (a link's target). */
struct sink {
    struct unpack *u;
    int fd;
    struct strbuf *mem;
};

static int sink_put(struct sink *s, const unsigned char *p, size_t n, struct loom_err *err)
{
    if (s->fd >= 0)
        return write_data(s->u, s->fd, p, n, err);
    if (s->mem->len + n > MAX_LINK)
        return loom_err_set(err, LOOM_EINVAL, "a link target is too long");
    strbuf_add(s->mem, p, n);
    return 0;
}

static int zip_content(const unsigned char *in, size_t n, unsigned method, struct sink *s,
                       const char *name, struct loom_err *err)
{
    unsigned char out[CHUNK];
    z_stream z = {.next_in = in, .avail_in = (uInt)n};
    int rc = 0, z_rc = Z_OK;

    if (method == 0)
        return sink_put(s, in, n, err);
    if (method != 8)
        return loom_err_set(err, LOOM_EINVAL, "entry \"%s\": compression method %u not supported",
                            name, method);
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK)
        return loom_err_set(err, LOOM_EINTERNAL, "could not start inflating");
    while (rc == 0 && z_rc == Z_OK) {
        z.next_out = out;
        z.avail_out = sizeof(out);
        z_rc = inflate(&z, Z_NO_FLUSH);
        if (z_rc != Z_OK && z_rc != Z_STREAM_END)
            rc = loom_err_set(err, LOOM_EINVAL, "entry \"%s\" is damaged", name);
        else
            rc = sink_put(s, out, sizeof(out) - z.avail_out, err);
    }
    inflateEnd(&z);
    return rc;
}

static int unpack_zip(struct unpack *u, const unsigned char *data, size_t len, struct loom_err *err)
{
    const unsigned char *eocd = NULL;
    /* the end record is in the last 22 bytes, or before a comment of up to 64 KiB */
    for (size_t i = len - 22; len >= 22 && !eocd; i--) {
        if (le32(data + i) == 0x06054b50)
            eocd = data + i;
        if (i == 0 || len - 22 - i >= 0xffff)
            break;
    }
    if (!eocd)
        return loom_err_set(err, LOOM_EINVAL, "the zip has no central directory");

    size_t off = le32(eocd + 16);
    for (uint32_t count = le16(eocd + 10); count > 0; count--) {
        if (off > len || len - off < 46 || le32(data + off) != 0x02014b50)
            return loom_err_set(err, LOOM_EINVAL, "the zip is damaged");
        const unsigned char *c = data + off;
        uint32_t name_len = le16(c + 28), csize = le32(c + 20), local = le32(c + 42);
        uint32_t mode = c[5] == 3 ? le32(c + 38) >> 16 : 0; /* made on Unix */
        if (len - off - 46 < name_len || memchr(c + 46, 0, name_len))
            return loom_err_set(err, LOOM_EINVAL, "the zip is damaged");
        _cleanup_free_ char *name = strndup((const char *)c + 46, name_len);
        off += 46 + name_len + le16(c + 30) + le16(c + 32);
        if (le16(c + 8) & 1)
            return loom_err_set(err, LOOM_EINVAL, "entry \"%s\" is encrypted", name);
        if (local > len || len - local < 30 || le32(data + local) != 0x04034b50)
            return loom_err_set(err, LOOM_EINVAL, "the zip is damaged");
        size_t start = local + 30 + le16(data + local + 26) + le16(data + local + 28);
        if (start > len || len - start < csize)
            return loom_err_set(err, LOOM_EINVAL, "the zip is damaged");

        enum entry_kind kind = ENTRY_FILE;
        _cleanup_strbuf_ struct strbuf target = STRBUF_INIT;
        if (name_len > 0 && name[name_len - 1] == '/') {
            kind = ENTRY_DIR;
        } else if (S_ISLNK(mode)) {
            struct sink s = {.u = u, .fd = -1, .mem = &target};
            kind = ENTRY_SYMLINK;
            if (zip_content(data + start, csize, le16(c + 10), &s, name, err) < 0)
                return -1;
        }
        _cleanup_close_ int fd = -1;
        if (make_entry(u, name, kind, mode, target.buf, &fd, err) < 0)
            return -1;
        struct sink s = {.u = u, .fd = fd};
        if (fd >= 0 && zip_content(data + start, csize, le16(c + 10), &s, name, err) < 0)
            return -1;
    }
    return 0;
}

int bundle_unpack(const unsigned char *data, size_t len, const char *root, struct loom_err *err)
{
    struct unpack u = {.root = root, .links = STRBUF_INIT};
    int rc;
    if (len >= 2 && data[0] == 0x1f && data[1] == 0x8b)
        rc = unpack_tar(&u, data, len, err);
    else if (len >= 4 && data[0] == 'P' && data[1] == 'K')
        rc = unpack_zip(&u, data, len, err);
    else
        rc = loom_err_set(err, LOOM_EINVAL, "the bundle is neither a tar.gz nor a zip");
    if (rc == 0)
        rc = check_links(&u, err);
    strbuf_release(&u.links);
    return rc;
}
