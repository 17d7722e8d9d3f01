/* Running helper programs (runc, CNI plugins, ip, git) from a threaded
 * process. */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "strbuf.h"
#include "util.h"

int loom_run_until(const char *const *argv, const char *const *env, const char *stdin_data,
                   int64_t deadline_ms, char **ret_out, struct loom_err *err)
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
        /* only async-signal-safe calls until exec; a group of its own, so
         * that a deadline takes its children too */
        setpgid(0, 0);
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
    bool late = false;
    while (ofd >= 0 || efd >= 0 || in[1] >= 0) {
        struct pollfd p[3] = {{ofd, POLLIN, 0}, {efd, POLLIN, 0}, {in[1], POLLOUT, 0}};
        int64_t left = deadline_ms > 0 ? deadline_ms - loom_mono_ms() : -1;
        if (deadline_ms > 0 && left <= 0 && !late) {
            late = true;
            kill(-pid, SIGKILL);
        }
        int pr = poll(p, 3, late ? 1000 : left > INT32_MAX ? INT32_MAX : (int)left);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pr == 0 && late)
            break; /* its output is still held open by something it left */
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
    if (ofd >= 0)
        close(ofd);
    if (efd >= 0)
        close(efd);
    if (in[1] >= 0)
        close(in[1]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (late) {
        loom_err_set(err, LOOM_ETIMEOUT, "%s took too long (killed)", argv[0]);
        strbuf_release(&o);
        strbuf_release(&e);
        return -1;
    }
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

int loom_run(const char *const *argv, const char *const *env, const char *stdin_data,
             char **ret_out, struct loom_err *err)
{
    return loom_run_until(argv, env, stdin_data, 0, ret_out, err);
}
