/* OCI image layers written by Loom itself: a tar (PAX), gzip-compressed
 * into a file, with the two digests an image needs computed on the way:
 * diff_id (sha256 of the tar) and digest (sha256 of the tar.gz). A layer
 * is deterministic: the same entries, in the same order, give the same
 * bytes. Entries are owned by 0:0, dated 0 and keep their permission bits;
 * nothing is ever followed through a symbolic link.
 *
 *   struct loom_layer *l;
 *   loom_layer_open(tmp_dir, &l, err);
 *   loom_layer_add_file(l, "app/server.js", 0644, text, len, err);
 *   loom_layer_add_tree(l, dirfd, "app/node_modules", err);
 *   loom_layer_finish(l, &info, err);   // info.path: the .tar.gz
 *   loom_layer_free(l);                 // removes the file unless kept
 */
#ifndef LOOM_LAYER_H
#define LOOM_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

#define LOOM_MEDIA_LAYER_GZIP "application/vnd.oci.image.layer.v1.tar+gzip"

struct loom_layer;

struct loom_layer_info {
    char digest[72];  /* "sha256:<hex>" of the tar.gz */
    char diff_id[72]; /* "sha256:<hex>" of the tar */
    int64_t size;     /* bytes of the tar.gz */
    int64_t entries;
    const char *path; /* the tar.gz (owned by the layer) */
};

/* A new layer in a temporary file under tmp_dir. */
int loom_layer_open(const char *tmp_dir, struct loom_layer **ret, struct loom_err *err);
/* Removes the file (unless loom_layer_keep took it) and frees. NULL is fine. */
void loom_layer_free(struct loom_layer *l);

/* Entries; path is relative ("app/x"), without "." or ".." components. A
 * directory's parents are not made for it: add them first. */
int loom_layer_add_dir(struct loom_layer *l, const char *path, unsigned mode, struct loom_err *err);
int loom_layer_add_file(struct loom_layer *l, const char *path, unsigned mode, const void *data,
                        size_t len, struct loom_err *err);
/* A file of size bytes read from fd (from where it is). */
int loom_layer_add_file_fd(struct loom_layer *l, const char *path, unsigned mode, int fd,
                           int64_t size, struct loom_err *err);
int loom_layer_add_symlink(struct loom_layer *l, const char *path, const char *target,
                           struct loom_err *err);
/* The tree of directory fd dirfd, under prefix (its own entry included,
 * and its parents when with_parents): names sorted, regular files,
 * directories and symbolic links (as links, never followed); anything else
 * is left out. */
int loom_layer_add_tree(struct loom_layer *l, int dirfd, const char *prefix, bool with_parents,
                        struct loom_err *err);

/* Which entries of an archive go in, and under what name: return 1 to take
 * it under *ret_name (owned by the caller of the callback, valid until the
 * next call), 0 to leave it out, -1 (with err) to stop. */
typedef int (*loom_layer_filter)(const char *path, bool is_dir, void *arg, const char **ret_name,
                                 struct loom_err *err);
/* The entries of the tar.gz read from fd, in their order (files,
 * directories and symbolic links; hard links as copies are not supported
 * and stop it), each through filter (NULL: all, as they are named). The
 * archive must have been checked (common/tarball.h) first. */
int loom_layer_add_archive(struct loom_layer *l, int fd, loom_layer_filter filter, void *arg,
                           struct loom_err *err);

/* Ends the layer: flushes, closes and fills *ret. */
int loom_layer_finish(struct loom_layer *l, struct loom_layer_info *ret, struct loom_err *err);

#endif
