/* Errors: a code that callers branch on and a message worth reading.
 *
 * Functions that can fail return int (0 on success, -1 on failure) and take
 * `struct loom_err *err` as their last parameter; on failure they fill it.
 * Messages follow PostgreSQL's style: lowercase, no period, state the reason:
 * `could not open "%s": No such file or directory`. Library code never logs;
 * the caller logs the message once, at the top. */
#ifndef LOOM_ERR_H
#define LOOM_ERR_H

#include <stddef.h>

enum loom_errc {
    LOOM_OK = 0,
    LOOM_EINVAL,    /* bad input from outside: 400 */
    LOOM_EUNAUTH,   /* missing or wrong credentials: 401 */
    LOOM_EPERM,     /* authenticated but not allowed: 403 */
    LOOM_ENOTFOUND, /* 404 */
    LOOM_ECONFLICT, /* already exists, or state forbids it: 409 */
    LOOM_EPRECOND,  /* If-Match mismatch: 412 */
    LOOM_ETOOBIG,   /* 413 */
    LOOM_EUNPROC,   /* well-formed but cannot be processed: 422 */
    LOOM_ELIMIT,    /* rate limit or quota: 429 */
    LOOM_ERETRY,    /* transient (serialization failure, deadlock): try again */
    LOOM_EUNAVAIL,  /* a dependency is down: 503 */
    LOOM_ETIMEOUT,  /* 504 */
    LOOM_EIO,       /* system call failed */
    LOOM_EINTERNAL, /* a bug or an unexpected answer: 500 */
};

struct loom_err {
    enum loom_errc code;
    int sys_errno; /* errno when a system call failed, else 0 */
    char msg[512];
};

/* clang-format off */
#define LOOM_ERR_INIT {LOOM_OK, 0, {0}}
/* clang-format on */

/* Sets code and message; returns -1 so that `return loom_err_set(...)` works.
 * err may be NULL (the caller does not care why). */
int loom_err_set(struct loom_err *err, enum loom_errc code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like loom_err_set with LOOM_EIO, appending ": strerror(errnum)". */
int loom_err_sys(struct loom_err *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the current message with context: "pulling image: <old message>".
 * Keeps the code. Returns -1. */
int loom_err_wrap(struct loom_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void loom_err_clear(struct loom_err *err);

/* "invalid", "not_found"...: stable names for logs and problem types. */
const char *loom_errc_name(enum loom_errc code);

/* The HTTP status an error code maps to (500 for unknown codes). */
int loom_errc_http_status(enum loom_errc code);

#endif
