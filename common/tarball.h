/* Checks of a tar.gz that came from outside (a function's code bundle, a
 * build's source): read, never written anywhere. */
#ifndef LOOM_TARBALL_H
#define LOOM_TARBALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct loom_tarball_limits {
    int64_t max_bytes;   /* the files' sizes together, unpacked */
    int64_t max_entries; /* files, directories and links */
    /* symbolic links are allowed when they stay inside: the target, read
     * from the link's directory, does not leave the tree (and is not
     * absolute); hard links never are */
    bool links;
};

/* Whether data is a gzip-compressed tar whose entries are plain files and
 * directories (and links, see limits) with relative paths inside it (no
 * absolute path, no "..", no device or fifo, nothing below a symbolic link
 * of the archive), within limits; the unpacked size is counted as it is
 * read, so a bomb stops at the limit. *ret_files counts the files. The
 * message names the first offending entry. */
int loom_tarball_check(const void *data, size_t len, const struct loom_tarball_limits *limits,
                       int64_t *ret_files, struct loom_err *err);
/* The same, read from fd from where it is (a large upload on disk). */
int loom_tarball_check_fd(int fd, const struct loom_tarball_limits *limits, int64_t *ret_files,
                          struct loom_err *err);

/* p without "." components, repeated and trailing slashes ("./a//b/" is
 * "a/b"), into out (reset first). */
struct strbuf;
void loom_tarball_normalize(const char *p, struct strbuf *out);

/* A libarchive reader of tar and tar.gz (archive_read_free it). */
struct archive;
struct archive *loom_tarball_reader(void);

/* Whether a symbolic link at path (relative to the top of a tree, without
 * "." components) to target stays inside the tree, its text read from the
 * link's own directory; an absolute target never does. */
bool loom_tarball_link_inside(const char *path, const char *target);

#endif
