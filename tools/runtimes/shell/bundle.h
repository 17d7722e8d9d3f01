/* Function bundles: a tar.gz (Loom's code bundles) or a zip (OpenWhisk's),
 * unpacked into the action's private directory.
 *
 * bundle_unpack() refuses, with a message that names the entry:
 *   - an absolute path or a ".." component;
 *   - an entry placed under a link (the bundle's own links are not followed);
 *   - a link whose target leads out of root: lexically when it is made, and
 *     by realpath() once everything is unpacked (a link may pass through
 *     others); a dangling link is only checked lexically;
 *   - a hard link to anything but a file of the bundle;
 *   - entries other than files, directories and links (devices, fifos);
 *   - more than BUNDLE_MAX_BYTES of file content, counted as it is written.
 * Files get mode 0755 when the bundle marks them executable, else 0644;
 * directories 0755. On failure what was unpacked so far stays in root. */
#ifndef LOOM_RUNTIME_BUNDLE_H
#define LOOM_RUNTIME_BUNDLE_H

#include <stddef.h>

#include "err.h"

#define BUNDLE_MAX_BYTES ((size_t)64 << 20)

/* Unpacks data (a tar.gz or a zip, told apart by their magic numbers) into
 * the existing directory root. */
int bundle_unpack(const unsigned char *data, size_t len, const char *root, struct loom_err *err);

#endif
