/* A build step's output: the directory the step wrote, as a layer pushed to
 * the platform registry. The directory is found inside the container's
 * root filesystem (a link in its path resolves there, never on the host)
 * and walked without following links; owners and times are zeroed, so the
 * same output is the same layer. */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent_int.h"
#include "cleanup.h"
#include "layer.h"
#include "registry.h"

int agent_push_output(const char *rootfs, const char *path, const char *repository,
                      const char *auth, const char *tmp_dir, struct loom_layer_info *ret,
                      struct loom_err *err)
{
    if (path[0] != '/' || strstr(path, "/../") || strstr(path, "/./") || !path[1])
        return loom_err_set(err, LOOM_EINVAL, "not an absolute, normal path");
    _cleanup_close_ int root = open(rootfs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return loom_err_sys(err, errno, "could not open the container's root");
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    _cleanup_close_ int dir = (int)syscall(SYS_openat2, root, path + 1, &how, sizeof(how));
    if (dir < 0)
        return errno == ENOENT ? loom_err_set(err, LOOM_EINVAL, "the step left no such directory")
                               : loom_err_sys(err, errno, "could not open it");
    struct loom_layer *l = NULL;
    struct loom_registry_ref ref = {0};
    struct loom_registry_client *c = NULL;
    int64_t sent = 0;
    int rc = loom_layer_open(tmp_dir, &l, err);
    if (rc == 0)
        rc = loom_layer_add_tree(l, dir, path + 1, true, err);
    if (rc == 0)
        rc = loom_layer_finish(l, ret, err);
    if (rc == 0)
        rc = loom_registry_ref_parse(repository, &ref, err);
    if (rc == 0)
        rc = loom_registry_client_new(&ref, repository, auth, NULL, &c, err);
    if (rc == 0) {
        _cleanup_fclose_ FILE *f = fopen(ret->path, "re");
        rc = f ? loom_registry_blob_ensure(c, ret->digest, f, NULL, ret->size, NULL, &sent, err)
               : loom_err_sys(err, errno, "could not read the layer");
    }
    loom_registry_client_free(c);
    loom_registry_ref_release(&ref);
    /* the report carries the digests; the file goes */
    ret->path = NULL;
    loom_layer_free(l);
    return rc;
}
