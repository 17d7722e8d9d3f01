/* Checks of a tar.gz that came from outside (a function's code bundle, a
 * build's source): read in memory, never written anywhere. */
#ifndef LOOM_TARBALL_H
#define LOOM_TARBALL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct loom_tarball_limits {
    int64_t max_bytes;   /* the files' sizes together, unpacked */
    int64_t max_entries; /* files and directories */
};

/* Whether data is a gzip-compressed tar whose entries are plain files and
 * directories with relative paths inside it (no absolute path, no "..", no
 * link, device or fifo), within limits; the unpacked size is counted as it
 * is read, so a bomb stops at the limit. *ret_files counts the files. The
 * message names the first offending entry. */
int loom_tarball_check(const void *data, size_t len, const struct loom_tarball_limits *limits,
                       int64_t *ret_files, struct loom_err *err);

#endif
