/* loom: a directory packed as a tar.gz: a function's code bundle (in
 * memory; files and directories only) or a build's source (a temporary
 * file; links that stay inside, the ignore file honoured). The same tree
 * gives the same bytes: entries sorted, owners 0, times 0, no gzip time. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cleanup.h"
#include "strbuf.h"
#include "tarball.h"
#include "util.h"
#include "cli.h"

/* ---- ignore files: the patterns of .gitignore, read from DIR's top ------------------ */

struct ignore {
    char **pats;
    size_t n;
};

static void ignore_release(struct ignore *ig)
{
    for (size_t i = 0; i < ig->n; i++)
        free(ig->pats[i]);
    free(ig->pats);
}

/* DIR/.ceignore, else DIR/.gitignore: one pattern a line, "#" comments. */
static int ignore_load(const char *dir, struct ignore *ig, const char **ret_file,
                       struct loom_err *err)
{
    static const char *const files[] = {".ceignore", ".gitignore"};
    *ret_file = NULL;
    for (size_t f = 0; f < LOOM_ARRAY_SIZE(files) && !*ret_file; f++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, files[f]);
        _cleanup_free_ char *text = NULL;
        struct loom_err e = LOOM_ERR_INIT;
        if (loom_read_file(path, &text, NULL, &e) < 0) {
            if (e.code == LOOM_ENOTFOUND)
                continue;
            return loom_err_set(err, e.code, "%s", e.msg);
        }
        *ret_file = files[f];
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            trim(line);
            if (!*line || line[0] == '#')
                continue;
            ig->pats = realloc(ig->pats, (ig->n + 1) * sizeof(char *));
            if (!ig->pats || !(ig->pats[ig->n] = strdup(line[0] == '\\' ? line + 1 : line)))
                abort();
            ig->n++;
        }
    }
    return 0;
}

/* Whether pat (one line) matches rel (a path under DIR), as git does: a
 * trailing '/' matches directories only; a pattern with a '/' elsewhere is
 * anchored at DIR, else it matches a name at any depth; "**" crosses '/'. */
static bool pattern_matches(const char *pat, const char *rel, bool is_dir)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s", pat);
    size_t n = strlen(p);
    if (n && p[n - 1] == '/') {
        if (!is_dir)
            return false;
        p[--n] = '\0';
    }
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    if (!strchr(p, '/'))
        return fnmatch(p, base, FNM_PERIOD) == 0;
    const char *q = p[0] == '/' ? p + 1 : p;
    return fnmatch(q, rel, strstr(q, "**") ? 0 : FNM_PATHNAME) == 0;
}

/* The last pattern that matches decides; "!" takes a path back. */
static bool ignored(const struct ignore *ig, const char *rel, bool is_dir)
{
    bool out = false;
    for (size_t i = 0; i < ig->n; i++) {
        bool neg = ig->pats[i][0] == '!';
        if (pattern_matches(ig->pats[i] + neg, rel, is_dir))
            out = !neg;
    }
    return out;
}

/* ---- the archive -------------------------------------------------------------- */

struct packer {
    struct archive *a;
    const char *root;
    bool source;
    struct ignore ig;
    int64_t files;
    /* output: memory, or a file with its sha256 */
    struct strbuf *mem;
    FILE *file;
    EVP_MD_CTX *md;
    int64_t size;
};

static la_ssize_t append(struct archive *a, void *arg, const void *buf, size_t len)
{
    (void)a;
    struct packer *p = arg;
    if (p->mem) {
        strbuf_add(p->mem, buf, len);
    } else {
        if (fwrite(buf, 1, len, p->file) != len)
            return -1;
        EVP_DigestUpdate(p->md, buf, len);
    }
    p->size += (int64_t)len;
    return (la_ssize_t)len;
}

static int write_entry(struct packer *p, const char *rel, const char *path, const struct stat *st,
                       const char *link, struct loom_err *err)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, rel);
    archive_entry_set_filetype(e, S_ISDIR(st->st_mode)   ? AE_IFDIR
                                  : S_ISLNK(st->st_mode) ? AE_IFLNK
                                                         : AE_IFREG);
    archive_entry_set_perm(e, S_ISLNK(st->st_mode) ? 0777 : st->st_mode & 0755);
    archive_entry_set_size(e, S_ISREG(st->st_mode) ? st->st_size : 0);
    archive_entry_set_mtime(e, 0, 0);
    if (link)
        archive_entry_set_symlink(e, link);
    int rc = archive_write_header(p->a, e);
    archive_entry_free(e);
    if (rc != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EIO, "packing \"%s\": %s", path, archive_error_string(p->a));
    if (!S_ISREG(st->st_mode))
        return 0;
    p->files++;
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not read \"%s\"", path);
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        if (archive_write_data(p->a, buf, (size_t)n) != n)
            return loom_err_set(err, LOOM_EIO, "packing \"%s\": %s", path,
                                archive_error_string(p->a));
    return n < 0 ? loom_err_sys(err, errno, "could not read \"%s\"", path) : 0;
}

/* Adds root/rel (a file, link or directory, recursively) under the name rel. */
static int add_path(struct packer *p, const char *rel, struct loom_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s%s%s", p->root, *rel ? "/" : "", rel);
    struct stat st;
    if (lstat(path, &st) < 0)
        return loom_err_sys(err, errno, "could not read \"%s\"", path);
    if (*rel && p->source && ignored(&p->ig, rel, S_ISDIR(st.st_mode)))
        return 0;
    char link[4096] = "";
    if (S_ISLNK(st.st_mode)) {
        if (!p->source)
            return loom_err_set(err, LOOM_EINVAL,
                                "\"%s\" is a symbolic link: a bundle holds only files and "
                                "directories",
                                path);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n < 0)
            return loom_err_sys(err, errno, "could not read the link \"%s\"", path);
        link[n] = '\0';
        if (!loom_tarball_link_inside(rel, link))
            return loom_err_set(err, LOOM_EINVAL,
                                "\"%s\" is a symbolic link to \"%s\", outside %s: a source never "
                                "points out of itself (leave it out in .ceignore)",
                                path, link, p->root);
    } else if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        if (!p->source)
            return loom_err_set(err, LOOM_EINVAL, "\"%s\" is not a file or a directory", path);
        fprintf(stderr, "loom: leaving out \"%s\" (not a file, directory or link)\n", path);
        return 0;
    }
    if (*rel && write_entry(p, rel, path, &st, link[0] ? link : NULL, err) < 0)
        return -1;
    if (!S_ISDIR(st.st_mode))
        return 0;
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort); /* sorted: a stable archive */
    if (n < 0)
        return loom_err_sys(err, errno, "could not list \"%s\"", path);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *d = names[i]->d_name;
        bool skip =
            !strcmp(d, ".") || !strcmp(d, "..") || (p->source && !*rel && !strcmp(d, ".git"));
        if (!rc && !skip) {
            char sub[4096];
            snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", d);
            rc = add_path(p, sub, err);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static int pack(struct packer *p, struct loom_err *err)
{
    p->a = archive_write_new();
    if (!p->a)
        abort();
    archive_write_set_format_pax_restricted(p->a);
    archive_write_add_filter_gzip(p->a);
    archive_write_set_filter_option(p->a, "gzip", "timestamp", NULL);
    archive_write_set_bytes_in_last_block(p->a, 1);
    int rc = archive_write_open(p->a, p, NULL, append, NULL) == ARCHIVE_OK
                 ? add_path(p, "", err)
                 : loom_err_set(err, LOOM_EIO, "packing: %s", archive_error_string(p->a));
    if (archive_write_close(p->a) != ARCHIVE_OK && rc == 0)
        rc = loom_err_set(err, LOOM_EIO, "packing: %s", archive_error_string(p->a));
    archive_write_free(p->a);
    return rc;
}

int pack_dir(const char *dir, struct strbuf *out, struct loom_err *err)
{
    struct packer p = {.root = dir, .mem = out};
    return pack(&p, err);
}

int pack_source(const char *dir, struct packed *ret, struct loom_err *err)
{
    struct packer p = {.root = dir, .source = true};
    const char *ignore_file = NULL;
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return loom_err_set(err, LOOM_EINVAL, "\"%s\" is not a directory", dir);
    if (ignore_load(dir, &p.ig, &ignore_file, err) < 0)
        return -1;
    p.file = tmpfile();
    p.md = EVP_MD_CTX_new();
    if (!p.file || !p.md || !EVP_DigestInit_ex(p.md, EVP_sha256(), NULL))
        abort();
    int rc = pack(&p, err);
    unsigned char md[32];
    EVP_DigestFinal_ex(p.md, md, NULL);
    EVP_MD_CTX_free(p.md);
    ignore_release(&p.ig);
    if (rc == 0 && (fflush(p.file) != 0 || fseek(p.file, 0, SEEK_SET) < 0))
        rc = loom_err_sys(err, errno, "could not write the packed source");
    if (rc < 0) {
        fclose(p.file);
        return -1;
    }
    *ret = (struct packed){
        .file = p.file, .size = p.size, .files = p.files, .ignore_file = ignore_file};
    memcpy(ret->sha256, md, 32);
    return 0;
}
