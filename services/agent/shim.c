/* The per-instance shim: `loom-agent shim --state-dir D --id ID`.
 *
 * Started by the agent (setsid, so it outlives an agent restart), it runs
 * the container with `runc run --detach`, holding the read ends of the
 * container's stdout and stderr pipes; writes the output to container.log in CRI
 * format; reaps the container init (it is reparented to us: we are a child
 * subreaper); enforces max_execution_seconds; reads the OOM kill count before
 * `runc delete`; and writes exit.json atomically. If fd 3 is open it is the
 * agent's status pipe: "ok <pid> <ms>\n" once `runc run --detach` has returned, or
 * "err <message>\n". */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "json.h"
#include "util.h"

#define LOG_PARTIAL_MAX 16384
#define MARKER_EVERY_MS 1000

/* What keeps one instance's output from filling the disk or drowning the
 * others': a byte rate (a token bucket) and a cap on what container.log
 * holds on disk (the logshipper punches out what it stored, so this is what
 * waits to be shipped). Over either, whole lines are dropped and counted,
 * and a marker line on stderr says how many and why. */
struct log_caps {
    int64_t rate, burst, max_disk; /* bytes/s, bytes, bytes; 0: no cap */
    double tokens;
    int64_t refilled_ns;
    bool dropping[2]; /* the rest of the stream's current line goes */
    bool partial[2];  /* part of the stream's current line was written */
    int64_t dropped_lines, dropped_bytes;
    const char *why; /* of the drops not yet reported */
    int64_t marker_ms;
};

struct shim {
    char *dir, *id, *runtime, *root, *cgsuffix;
    int64_t max_exec_s;
    int logfd;
    char line[2][LOG_PARTIAL_MAX];
    size_t linelen[2];
    struct log_caps caps;
};

static void write_record(struct shim *s, int stream, const char *text, size_t len, bool partial);

/* The marker line for what was dropped since the last one. */
static void report_drops(struct shim *s)
{
    struct log_caps *c = &s->caps;
    if (c->dropped_lines == 0 && c->dropped_bytes == 0)
        return;
    char msg[320];
    int n = snprintf(msg, sizeof(msg), "[loom] %lld lines (%lld bytes) of output dropped: %s",
                     (long long)c->dropped_lines, (long long)c->dropped_bytes, c->why);
    write_record(s, 1, msg, (size_t)n, false);
    c->dropped_lines = c->dropped_bytes = 0;
    c->marker_ms = loom_mono_ms();
}

/* Whether a record of size bytes may be written now; false sets why. */
static bool admit(struct shim *s, size_t size)
{
    struct log_caps *c = &s->caps;
    if (c->max_disk > 0) {
        struct stat st;
        if (fstat(s->logfd, &st) == 0 && (int64_t)st.st_blocks * 512 > c->max_disk) {
            c->why = "the output waiting to be shipped reached the instance's cap";
            return false;
        }
    }
    if (c->rate <= 0)
        return true;
    int64_t now = loom_now_ns();
    c->tokens += (double)(now - c->refilled_ns) * (double)c->rate / 1e9;
    if (c->tokens > (double)c->burst)
        c->tokens = (double)c->burst;
    c->refilled_ns = now;
    if (c->tokens < (double)size) {
        c->why = "the instance writes faster than its log rate";
        return false;
    }
    c->tokens -= (double)size;
    return true;
}

/* A record of the container's output, through the caps: a line is written
 * whole or dropped whole (a line whose first parts went out and whose rest
 * may not gets an empty last part, so that it ends). */
static void write_log_line(struct shim *s, int stream, const char *text, size_t len, bool partial)
{
    struct log_caps *c = &s->caps;
    if (c->dropping[stream] || !admit(s, len + 40)) {
        if (c->partial[stream]) {
            write_record(s, stream, "", 0, false);
            c->partial[stream] = false;
        }
        c->dropping[stream] = partial;
        c->dropped_bytes += (int64_t)len;
        if (!partial)
            c->dropped_lines++;
        if (loom_mono_ms() - c->marker_ms >= MARKER_EVERY_MS)
            report_drops(s);
        return;
    }
    /* written again after drops: say so first, once a second at most (the
     * markers are not counted against the rate) */
    if ((c->dropped_lines || c->dropped_bytes) && loom_mono_ms() - c->marker_ms >= MARKER_EVERY_MS)
        report_drops(s);
    c->partial[stream] = partial;
    write_record(s, stream, text, len, partial);
}

static void write_record(struct shim *s, int stream, const char *text, size_t len, bool partial)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char head[96];
    int h = snprintf(head, sizeof(head), "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ %s %c ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec, stream ? "stderr" : "stdout", partial ? 'P' : 'F');
    /* one write per line so that a reader never sees half a line header */
    char *buf = malloc((size_t)h + len + 1);
    if (!buf)
        abort();
    memcpy(buf, head, (size_t)h);
    memcpy(buf + h, text, len);
    buf[(size_t)h + len] = '\n';
    size_t total = (size_t)h + len + 1, off = 0;
    while (off < total) {
        ssize_t n = write(s->logfd, buf + off, total - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    free(buf);
}

static void feed(struct shim *s, int stream, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n') {
            write_log_line(s, stream, s->line[stream], s->linelen[stream], false);
            s->linelen[stream] = 0;
            continue;
        }
        if (s->linelen[stream] == LOG_PARTIAL_MAX) {
            write_log_line(s, stream, s->line[stream], s->linelen[stream], true);
            s->linelen[stream] = 0;
        }
        s->line[stream][s->linelen[stream]++] = data[i];
    }
}

static void flush_partial(struct shim *s)
{
    for (int i = 0; i < 2; i++)
        if (s->linelen[i] || s->caps.partial[i] || s->caps.dropping[i]) {
            write_log_line(s, i, s->line[i], s->linelen[i], false);
            s->linelen[i] = 0;
        }
    report_drops(s);
}

static int runc(struct shim *s, const char *a1, const char *a2, const char *a3,
                struct loom_err *err)
{
    const char *argv[] = {s->runtime, "--root", s->root, a1, a2, a3, NULL};
    return loom_run(argv, NULL, NULL, NULL, err);
}

static void status_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void status_msg(const char *fmt, ...)
{
    if (fcntl(3, F_GETFD) < 0)
        return;
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(buf) - 1)
        n = sizeof(buf) - 1;
    (void)!write(3, buf, (size_t)n);
    close(3);
}

static int write_exit(struct shim *s, int code, bool oom, bool timed_out, const char *error,
                      const struct cgroup_usage *u)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/exit.json", s->dir);
    _cleanup_json_ json_t *j =
        json_pack("{s:i,s:b,s:b,s:I}", "exit_code", code, "oom_killed", oom, "timed_out", timed_out,
                  "finished_at", (json_int_t)loom_now_ms());
    if (error)
        json_object_set_new(j, "error", json_string(error));
    if (u) {
        /* the final counters, read before runc delete removes the cgroup */
        json_object_set_new(j, "cpu_usage_ns", json_integer((json_int_t)u->cpu_ns));
        json_object_set_new(j, "memory_peak_bytes", json_integer((json_int_t)u->mem_peak_bytes));
    }
    struct loom_err err = LOOM_ERR_INIT;
    if (agent_write_json(path, j, &err) < 0) {
        fprintf(stderr, "shim: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int64_t mono_ms(void)
{
    return loom_mono_ms();
}

static int shim_run(struct shim *s)
{
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);
    char path[4096];
    snprintf(path, sizeof(path), "%s/container.log", s->dir);
    s->logfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (s->logfd < 0) {
        status_msg("err could not open container.log: %s\n", strerror(errno));
        return write_exit(s, -1, false, false, "could not open container.log", NULL);
    }
    int outp[2], errp[2];
    if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
        status_msg("err pipe: %s\n", strerror(errno));
        return write_exit(s, -1, false, false, "pipe failed", NULL);
    }
    char bundle[4096], pidfile[4200], logfile[4200];
    snprintf(bundle, sizeof(bundle), "%s", s->dir);
    snprintf(pidfile, sizeof(pidfile), "%s/pid", s->dir);
    snprintf(logfile, sizeof(logfile), "%s/runc.log", s->dir);
    int64_t t0 = mono_ms();
    pid_t cp = fork();
    if (cp == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(outp[1], 1);
        dup2(errp[1], 2);
        /* `run --detach` is create and start in one runtime process: one
         * exec of the runtime fewer on every start (~10-20 ms here) */
        execl(s->runtime, s->runtime, "--root", s->root, "--log", logfile, "run", "--detach",
              "--bundle", bundle, "--pid-file", pidfile, s->id, (char *)NULL);
        _exit(127);
    }
    close(outp[1]);
    close(errp[1]);
    int st = 0;
    while (waitpid(cp, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        /* runc's own error went to the stderr pipe: keep it in the log */
        char buf[4096];
        fcntl(errp[0], F_SETFL, O_NONBLOCK);
        ssize_t n = read(errp[0], buf, sizeof(buf) - 1);
        buf[n > 0 ? n : 0] = 0;
        if (n > 0)
            feed(s, 1, buf, (size_t)n);
        flush_partial(s);
        char *nl = strchr(buf, '\n');
        if (nl)
            *nl = 0;
        char msg[600];
        snprintf(msg, sizeof(msg), "could not start the container: %.400s", buf);
        status_msg("err %s\n", msg);
        struct loom_err e = LOOM_ERR_INIT;
        runc(s, "delete", "--force", s->id, &e);
        return write_exit(s, -1, false, false, msg, NULL);
    }
    _cleanup_free_ char *pidtext = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_read_file(pidfile, &pidtext, NULL, &err) < 0) {
        status_msg("err %s\n", err.msg);
        return write_exit(s, -1, false, false, err.msg, NULL);
    }
    pid_t init = (pid_t)atoi(pidtext);
    status_msg("ok %d %" PRId64 "\n", (int)init, mono_ms() - t0);

    /* Both pipes are read by this one poll loop, and lines are stamped in
     * the order they are read. That order is exact for each stream and
     * across streams whenever the writer pauses between writes longer than
     * a loop turn; for a writer that alternates streams faster than that,
     * one poll round can find both pipes readable and the kernel records
     * no order between two pipes, so the cross-stream interleaving is only
     * approximate. Exact order would need one pipe for both streams, which
     * loses the stream of each line. */
    int fds[2] = {outp[0], errp[0]};
    bool exited = false, timed_out = false;
    int code = -1;
    int64_t start = mono_ms(), term_at = -1;
    while (!exited || fds[0] >= 0 || fds[1] >= 0) {
        struct pollfd p[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        int r = poll(p, 2, exited ? 1000 : 100);
        if (r < 0 && errno != EINTR)
            break;
        if (r == 0 && exited)
            break; /* init is gone and nobody writes: stop waiting on stray holders */
        char buf[65536];
        for (int i = 0; i < 2; i++) {
            if (fds[i] >= 0 && (p[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                ssize_t n = read(fds[i], buf, sizeof(buf));
                if (n > 0)
                    feed(s, i, buf, (size_t)n);
                else if (n == 0 || errno != EINTR) {
                    close(fds[i]);
                    fds[i] = -1;
                }
            }
        }
        pid_t w;
        while ((w = waitpid(-1, &st, WNOHANG)) > 0)
            if (w == init) {
                exited = true;
                code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            }
        if (!exited && s->max_exec_s > 0) {
            int64_t now = mono_ms();
            if (term_at < 0 && now - start >= s->max_exec_s * 1000) {
                timed_out = true;
                term_at = now;
                kill(init, SIGTERM);
            } else if (term_at >= 0 && now - term_at >= 10000) {
                kill(init, SIGKILL);
                term_at = now + 1000000; /* once */
            }
        }
    }
    flush_partial(s);

    /* the OOM count lives in the instance's memory cgroup, gone after delete */
    bool oom = false;
    _cleanup_free_ char *memdir = NULL;
    struct loom_err e = LOOM_ERR_INIT;
    if (cgroup_dir(0, "memory", s->cgsuffix, &memdir, &e) == 0) {
        uint64_t kills = 0;
        if (cgroup_oom_kills(memdir, &kills) == 0 && kills > 0)
            oom = true;
    }
    struct cgroup_usage u;
    bool have_usage = cgroup_usage_of_child(s->cgsuffix, &u, &e) == 0;
    if (runc(s, "delete", "--force", s->id, &e) < 0)
        fprintf(stderr, "shim: %s\n", e.msg);
    return write_exit(s, code, oom, timed_out, NULL, have_usage ? &u : NULL);
}

/* A warm shim is started ahead of need (the exec of this binary costs ~10 ms)
 * and waits for its instance id on fd 4. The id is written over the
 * placeholder in argv, so /proc/<pid>/cmdline says `--id <id>` like a shim
 * started for the instance (agent_is_our_shim, cleanup). Then stdout and
 * stderr go to the instance's shim.log as they would have. -1: no id comes
 * (the agent went away) or it does not fit. */
static int shim_wait_for_id(const char *state, char *id_arg)
{
    char buf[128];
    size_t len = 0;
    while (len < sizeof(buf) - 1) {
        ssize_t n = read(4, buf + len, sizeof(buf) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(buf, '\n', len))
            break;
    }
    close(4);
    buf[len] = 0;
    buf[strcspn(buf, "\n")] = 0;
    if (!buf[0] || strlen(buf) != strlen(id_arg) || strchr(buf, '/') || buf[0] == '.')
        return -1;
    memcpy(id_arg, buf, strlen(buf));
    _cleanup_free_ char *dir = agent_instance_dir(state, id_arg);
    char path[4200];
    snprintf(path, sizeof(path), "%s/shim.log", dir);
    int lf = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (lf >= 0) {
        dup2(lf, 1);
        dup2(lf, 2);
        close(lf);
    }
    return 0;
}

int shim_main(int argc, char **argv)
{
    const char *state = NULL;
    char *id = NULL;
    bool warm = false;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--state-dir") == 0)
            state = argv[i + 1];
        else if (strcmp(argv[i], "--id") == 0)
            id = argv[i + 1];
        else if (strcmp(argv[i], "--warm") == 0)
            warm = true;
    }
    if (!state || !id) {
        fprintf(stderr, "usage: loom-agent shim --state-dir DIR --id ID [--warm 1]\n");
        return 2;
    }
    if (warm && shim_wait_for_id(state, id) < 0)
        return 0;
    fcntl(3, F_SETFD, FD_CLOEXEC); /* the status pipe, if any: not for runc */
    struct shim s = {0};
    s.dir = agent_instance_dir(state, id);
    s.id = (char *)id;
    char path[4096];
    snprintf(path, sizeof(path), "%s/shim.json", s.dir);
    _cleanup_free_ char *text = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_json_ json_t *cfg = NULL;
    if (loom_read_file(path, &text, NULL, &err) < 0 ||
        !(cfg = loom_json_parse_object(text, strlen(text), &err))) {
        status_msg("err %s\n", err.msg);
        fprintf(stderr, "shim: %s\n", err.msg);
        return 1;
    }
    s.runtime = (char *)json_string_value(json_object_get(cfg, "runtime"));
    s.root = (char *)json_string_value(json_object_get(cfg, "root"));
    s.cgsuffix = (char *)json_string_value(json_object_get(cfg, "cgroup"));
    s.max_exec_s = json_integer_value(json_object_get(cfg, "max_execution_seconds"));
    s.caps.rate = json_integer_value(json_object_get(cfg, "log_rate"));
    s.caps.burst = json_integer_value(json_object_get(cfg, "log_burst"));
    s.caps.max_disk = json_integer_value(json_object_get(cfg, "log_max_disk"));
    s.caps.tokens = (double)s.caps.burst;
    s.caps.refilled_ns = loom_now_ns();
    if (!s.runtime || !s.root || !s.cgsuffix) {
        status_msg("err bad shim.json\n");
        return 1;
    }
    int rc = shim_run(&s);
    free(s.dir);
    return rc;
}
