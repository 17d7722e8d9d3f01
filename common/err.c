#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void err_vset(struct loom_err *err, enum loom_errc code, const char *fmt, va_list ap)
{
    err->code = code;
    err->sys_errno = 0;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

int loom_err_set(struct loom_err *err, enum loom_errc code, const char *fmt, ...)
{
    if (!err)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, code, fmt, ap);
    va_end(ap);
    return -1;
}

int loom_err_sys(struct loom_err *err, int errnum, const char *fmt, ...)
{
    if (!err)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, LOOM_EIO, fmt, ap);
    va_end(ap);
    err->sys_errno = errnum;
    size_t len = strlen(err->msg);
    char ebuf[128];
    /* GNU strerror_r may return a static string instead of filling ebuf */
    const char *es = strerror_r(errnum, ebuf, sizeof(ebuf));
    snprintf(err->msg + len, sizeof(err->msg) - len, ": %s", es);
    return -1;
}

int loom_err_wrap(struct loom_err *err, const char *fmt, ...)
{
    if (!err)
        return -1;
    char prefix[sizeof(err->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    char old[sizeof(err->msg)];
    memcpy(old, err->msg, sizeof(old));
    old[sizeof(old) - 1] = '\0';
    /* built by hand: truncation of a long chain of contexts is expected */
    size_t n = strlen(prefix);
    memcpy(err->msg, prefix, n + 1);
    if (old[0] && n + 2 < sizeof(err->msg)) {
        memcpy(err->msg + n, ": ", 3);
        n += 2;
        size_t m = strlen(old);
        if (m > sizeof(err->msg) - 1 - n)
            m = sizeof(err->msg) - 1 - n;
        memcpy(err->msg + n, old, m);
        err->msg[n + m] = '\0';
    }
    if (err->code == LOOM_OK)
        err->code = LOOM_EINTERNAL;
    return -1;
}

void loom_err_clear(struct loom_err *err)
{
    if (!err)
        return;
    err->code = LOOM_OK;
    err->sys_errno = 0;
    err->msg[0] = '\0';
}

const char *loom_errc_name(enum loom_errc code)
{
    switch (code) {
    case LOOM_OK:
        return "ok";
    case LOOM_EINVAL:
        return "invalid";
    case LOOM_EUNAUTH:
        return "unauthenticated";
    case LOOM_EPERM:
        return "forbidden";
    case LOOM_ENOTFOUND:
        return "not_found";
    case LOOM_ECONFLICT:
        return "conflict";
    case LOOM_EPRECOND:
        return "precondition_failed";
    case LOOM_ETOOBIG:
        return "too_big";
    case LOOM_EUNPROC:
        return "unprocessable";
    case LOOM_ELIMIT:
        return "limit";
    case LOOM_ERETRY:
        return "retry";
    case LOOM_EUNAVAIL:
        return "unavailable";
    case LOOM_ETIMEOUT:
        return "timeout";
    case LOOM_EIO:
        return "io";
    case LOOM_EINTERNAL:
        return "internal";
    }
    return "internal";
}

int loom_errc_http_status(enum loom_errc code)
{
    switch (code) {
    case LOOM_OK:
        return 200;
    case LOOM_EINVAL:
        return 400;
    case LOOM_EUNAUTH:
        return 401;
    case LOOM_EPERM:
        return 403;
    case LOOM_ENOTFOUND:
        return 404;
    case LOOM_ECONFLICT:
        return 409;
    case LOOM_EPRECOND:
        return 412;
    case LOOM_ETOOBIG:
        return 413;
    case LOOM_EUNPROC:
        return 422;
    case LOOM_ELIMIT:
        return 429;
    case LOOM_ERETRY:
        return 503;
    case LOOM_EUNAVAIL:
        return 503;
    case LOOM_ETIMEOUT:
        return 504;
    case LOOM_EIO:
    case LOOM_EINTERNAL:
        return 500;
    }
    return 500;
}
