/* Readiness and liveness probes of app instances: a TCP connect, or an
 * HTTP/1.1 GET whose status must be 2xx or 3xx (as Kubernetes). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "util.h"

int probe_from_assign(const Loom__V1__Probe *p, uint32_t instance_port, struct probe *ret,
                      struct loom_err *err)
{
    struct probe pr = {0};
    const char *type = p->type && p->type[0] ? p->type : "tcp";
    if (strcmp(type, "http") == 0)
        pr.http = true;
    else if (strcmp(type, "tcp") != 0)
        return loom_err_set(err, LOOM_EINVAL, "invalid probe type \"%s\"", type);
    if (pr.http) {
        const char *path = p->path && p->path[0] ? p->path : "/";
        size_t n = strlen(path);
        if (path[0] != '/' || n >= sizeof(pr.path))
            return loom_err_set(err, LOOM_EINVAL, "invalid probe path");
        /* it goes into the request line */
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)path[i] <= 0x20 || path[i] == 0x7f)
                return loom_err_set(err, LOOM_EINVAL, "invalid probe path");
        memcpy(pr.path, path, n + 1);
    }
    pr.port = p->port ? p->port : instance_port;
    if (pr.port == 0 || pr.port > 65535)
        return loom_err_set(err, LOOM_EINVAL, "invalid probe port %u", pr.port);
    pr.initial_delay_ms = (int64_t)p->initial_delay_seconds * 1000;
    pr.period_ms = (int64_t)(p->period_seconds ? p->period_seconds : 10) * 1000;
    pr.timeout_ms = (int64_t)(p->timeout_seconds ? p->timeout_seconds : 1) * 1000;
    pr.failure_threshold = p->failure_threshold ? p->failure_threshold : 3;
    *ret = pr;
    return 0;
}

static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - loom_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        return rc;
    }
}

int probe_run(const struct probe *p, const char *ip, struct loom_err *err)
{
    int64_t deadline = loom_mono_ms() + p->timeout_ms;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->port)};
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
        return loom_err_set(err, LOOM_EINVAL, "invalid address \"%s\"", ip);
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return loom_err_sys(err, errno, "socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        if (errno != EINPROGRESS)
            return loom_err_sys(err, errno, "connect to port %u", p->port);
        if (wait_fd(fd, POLLOUT, deadline) <= 0)
            return loom_err_set(err, LOOM_ETIMEOUT, "connect to port %u timed out", p->port);
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr)
            return loom_err_sys(err, soerr, "connect to port %u", p->port);
    }
    if (!p->http)
        return 0;
    char req[1200];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%u\r\nUser-Agent: loom-probe\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n",
                     p->path, ip, p->port);
    for (int off = 0; off < n;) {
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(fd, POLLOUT, deadline) <= 0)
                return loom_err_set(err, LOOM_ETIMEOUT, "GET %s timed out", p->path);
            continue;
        }
        if (w < 0)
            return loom_err_sys(err, errno, "GET %s", p->path);
        off += (int)w;
    }
    char buf[256];
    size_t len = 0;
    while (len < sizeof(buf) - 1 && !memchr(buf, '\n', len)) {
        if (wait_fd(fd, POLLIN, deadline) <= 0)
            return loom_err_set(err, LOOM_ETIMEOUT, "GET %s timed out", p->path);
        ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r < 0)
            return loom_err_sys(err, errno, "GET %s", p->path);
        if (r == 0)
            break;
        len += (size_t)r;
    }
    buf[len] = 0;
    int status = 0;
    if (sscanf(buf, "HTTP/%*d.%*d %d", &status) != 1)
        return loom_err_set(err, LOOM_EIO, "GET %s: no HTTP response", p->path);
    if (status < 200 || status >= 400)
        return loom_err_set(err, LOOM_EIO, "GET %s: HTTP status %d", p->path, status);
    return 0;
}
