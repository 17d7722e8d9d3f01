/* Running helper programs (runc, CNI plugins, ip) from a threaded process. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "strbuf.h"

bool agent_find_prog(const char *name, char *buf, size_t size)
{
    static const char *const dirs[] = {"/usr/sbin", "/usr/bin",        "/sbin",
                                       "/bin",      "/usr/local/sbin", "/usr/local/bin"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(dirs); i++) {
        snprintf(buf, size, "%s/%s", dirs[i], name);
        if (access(buf, X_OK) == 0)
            return true;
    }
    return false;
}

bool agent_is_our_shim(pid_t pid, const char *id)
{
    if (pid <= 0 || (kill(pid, 0) < 0 && errno == ESRCH))
        return false;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    if (n <= 0)
        return false;
    buf[n] = 0;
    bool shim = false, idmatch = false;
    for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
        if (strcmp(p, "shim") == 0)
            shim = true;
        if (strcmp(p, "--id") == 0 && p + strlen(p) + 1 < buf + n &&
            strcmp(p + strlen(p) + 1, id) == 0)
            idmatch = true;
    }
    /* a zombie has an empty cmdline: treat as gone */
    return shim && idmatch;
}

int ns_child_start(int flags, struct ns_child *ret, struct loom_err *err)
{
    /* unshare in a thread of this process would move that thread: a child
     * makes the namespace and holds it until ns_child_end */
    int ready[2], hold[2];
    if (pipe2(ready, O_CLOEXEC) < 0)
        return loom_err_sys(err, errno, "pipe");
    if (pipe2(hold, O_CLOEXEC) < 0) {
        int e = errno;
        close(ready[0]), close(ready[1]);
        return loom_err_sys(err, e, "pipe");
    }
    pid_t pid = fork();
    if (pid == 0) {
        char c = unshare(flags) == 0 ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1)
            _exit(1);
        (void)!read(hold[0], &c, 1);
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    if (pid < 0) {
        int e = errno;
        close(ready[0]), close(hold[1]);
        return loom_err_sys(err, e, "fork");
    }
    char c = 0;
    ssize_t n;
    while ((n = read(ready[0], &c, 1)) < 0 && errno == EINTR)
        ;
    close(ready[0]);
    struct ns_child child = {.pid = pid, .release_fd = hold[1]};
    if (n != 1 || c != 'y') {
        ns_child_end(&child);
        return loom_err_set(err, LOOM_EIO, "could not create a namespace");
    }
    *ret = child;
    return 0;
}

void ns_child_end(struct ns_child *c)
{
    if (c->pid <= 0)
        return;
    /* a byte, not EOF: a concurrent fork elsewhere in the agent may hold a
     * copy of the write end until it execs */
    (void)!write(c->release_fd, "x", 1);
    close(c->release_fd);
    while (waitpid(c->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    c->pid = 0;
}
