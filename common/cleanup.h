/* Scope-bound cleanup for single-owner locals, in the style of systemd and crun.
 *
 *   _cleanup_free_ char *s = NULL;
 *   _cleanup_close_ int fd = -1;
 *   ...
 *   *ret = TAKE_PTR(s);    hand ownership to the caller
 */
#ifndef LOOM_CLEANUP_H
#define LOOM_CLEANUP_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <dirent.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void loom_freep(void *p)
{
    free(*(void **)p);
}

static inline void loom_closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

static inline void loom_fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}

static inline void loom_closedirp(DIR **d)
{
    if (*d)
        closedir(*d);
}

#define _cleanup_free_ _cleanup_(loom_freep)
#define _cleanup_close_ _cleanup_(loom_closep)
#define _cleanup_fclose_ _cleanup_(loom_fclosep)
#define _cleanup_closedir_ _cleanup_(loom_closedirp)

/* Generates `static inline void fnp(type *p)` calling fn(*p) when *p is set. */
#define LOOM_DEFINE_CLEANUP(type, fn)                                                              \
    static inline void fn##p(type *p)                                                              \
    {                                                                                              \
        if (*p)                                                                                    \
            fn(*p);                                                                                \
    }

#define TAKE_PTR(p)                                                                                \
    __extension__({                                                                                \
        __typeof__(p) take_ptr_tmp_ = (p);                                                         \
        (p) = NULL;                                                                                \
        take_ptr_tmp_;                                                                             \
    })

#define TAKE_FD(fd)                                                                                \
    __extension__({                                                                                \
        int take_fd_tmp_ = (fd);                                                                   \
        (fd) = -1;                                                                                 \
        take_fd_tmp_;                                                                              \
    })

#define LOOM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
