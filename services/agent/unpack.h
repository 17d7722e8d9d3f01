/* Layer unpacking: a layer tarball (gzip, zstd or uncompressed) into a
 * directory usable as an overlayfs lower layer.
 *
 * Whiteouts become what overlayfs understands: `.wh.<name>` becomes a 0:0
 * character device <name>; `.wh..wh..opq` sets trusted.overlay.opaque="y" on
 * its directory. Other `.wh..wh.*` entries (aufs bookkeeping) are skipped.
 *
 * Refused, with the entry named and nothing left behind:
 *   - paths that are absolute or have a ".." component;
 *   - character and block devices, FIFOs and sockets (whiteouts are made by
 *     us, never taken from the tarball);
 *   - relative symlinks whose target climbs above the layer root, resolved
 *     lexically from the symlink's own directory ("a/l -> ../../etc");
 *   - hard links whose target is absolute or has a ".." component;
 *   - any entry (or hard link target) whose parent path goes through a
 *     symlink already unpacked, which is how an archive writes outside;
 *   - xattrs in the trusted.overlay. namespace (they would steer overlayfs).
 * Absolute symlink targets ("/bin/sh -> /bin/busybox") are allowed: the tree
 * is only used as a container's root, where they resolve inside it, and
 * extraction never follows a symlink (see the parent check above).
 *
 * Modes (setuid included), numeric ownership, mtimes and xattrs are kept;
 * the caller is root. */
#ifndef LOOM_AGENT_UNPACK_H
#define LOOM_AGENT_UNPACK_H

#include <stdint.h>

#include "err.h"

/* Unpacks the tarball at tar_path into dest, which must not exist: into a
 * fresh directory under tmp_dir (same filesystem), renamed to dest on
 * success and removed on failure. *ret_size is the disk usage of the tree
 * (as du counts it). An unsafe or corrupt layer is LOOM_EINVAL. Streams: the
 * archive is never held in memory whole. */
int unpack_layer(const char *tar_path, const char *tmp_dir, const char *dest, int64_t *ret_size,
                 struct loom_err *err);

/* Disk usage of a tree in bytes (allocated blocks, hard links counted once,
 * symlinks not followed). */
int unpack_tree_size(const char *path, int64_t *ret, struct loom_err *err);

#endif
