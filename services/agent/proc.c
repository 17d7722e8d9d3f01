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

int agent_run(const char *const *argv, const char *const *env, const char *stdin_data,
              char **ret_out, struct loom_err *err)
{
    int in[2], out[2], errp[2];
    if (pipe2(in, O_CLOEXEC) < 0)
        return loom_err_sys(err, errno, "pipe");
    if (pipe2(out, O_CLOEXEC) < 0) {
        close(in[0]);
        close(in[1]);
        return loom_err_sys(err, errno, "pipe");
    }
    if (pipe2(errp, O_CLOEXEC) < 0) {
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        return loom_err_sys(err, errno, "pipe");
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(in[0]), close(in[1]), close(out[0]), close(out[1]), close(errp[0]), close(errp[1]);
        return loom_err_sys(err, e, "fork");
    }
    if (pid == 0) {
        /* only async-signal-safe calls until exec */
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(errp[1], 2);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        if (env)
            execve(argv[0], (char *const *)argv, (char *const *)env);
        else
            execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(errp[1]);
    size_t in_len = stdin_data ? strlen(stdin_data) : 0, in_off = 0;
    if (in_len == 0) {
        close(in[1]);
        in[1] = -1;
    } else {
        fcntl(in[1], F_SETFL, O_NONBLOCK);
    }
    struct strbuf o = STRBUF_INIT, e = STRBUF_INIT;
    int ofd = out[0], efd = errp[0];
    while (ofd >= 0 || efd >= 0 || in[1] >= 0) {
        struct pollfd p[3] = {{ofd, POLLIN, 0}, {efd, POLLIN, 0}, {in[1], POLLOUT, 0}};
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        char buf[4096];
        for (int i = 0; i < 2; i++) {
            int *fd = i == 0 ? &ofd : &efd;
            if (*fd >= 0 && (p[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                ssize_t n = read(*fd, buf, sizeof(buf));
                if (n > 0)
                    strbuf_add(i == 0 ? &o : &e, buf, (size_t)n);
                else if (n == 0 || errno != EINTR) {
                    close(*fd);
                    *fd = -1;
                }
            }
        }
        if (in[1] >= 0 && (p[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t n = write(in[1], stdin_data + in_off, in_len - in_off);
            if (n > 0)
                in_off += (size_t)n;
            if ((n < 0 && errno != EAGAIN && errno != EINTR) || in_off >= in_len) {
                close(in[1]);
                in[1] = -1;
            }
        }
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        /* trim trailing newlines; prefer stderr, then stdout (CNI errors are on stdout) */
        struct strbuf *m = e.len ? &e : &o;
        while (m->len && (m->buf[m->len - 1] == '\n' || m->buf[m->len - 1] == ' '))
            m->buf[--m->len] = 0;
        if (WIFEXITED(status))
            loom_err_set(err, LOOM_EIO, "%s exited with status %d: %.300s", argv[0],
                         WEXITSTATUS(status), m->buf);
        else
            loom_err_set(err, LOOM_EIO, "%s killed by signal %d", argv[0],
                         WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        strbuf_release(&o);
        strbuf_release(&e);
        return -1;
    }
    strbuf_release(&e);
    if (ret_out)
        *ret_out = strbuf_detach(&o, NULL);
    else
        strbuf_release(&o);
    return 0;
}

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
