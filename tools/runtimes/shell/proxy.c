/* Loom's action proxy for shell functions: the OpenWhisk action proxy
 * contract, with OpenWhisk's blackbox convention for running the script.
 * Built statically (libc, zlib, jansson) for the busybox runtime image.
 *
 * HTTP/1.1 on 0.0.0.0:$PORT (default 8080), keep-alive, a thread per
 * connection, so that several /run calls can be in flight at once.
 *
 * POST /init {"value": {"code", "binary", "env", ...}}
 *     Installs the action, once. code is the script, or with binary true the
 *     base64 of a bundle (tar.gz or zip, see bundle.h) holding `exec`, else
 *     `main.sh`. It goes to $LOOM_ACTION_DIR (else a new directory under
 *     $TMPDIR or /tmp), the script's working directory. env entries become
 *     environment variables of the script.
 *     200 {"ok": true}; 403 once /init has been tried; 502 {"error"} when the
 *     action cannot be installed; 400 when the body is not an /init request.
 * POST /run {"value": {params}, "activation_id", "deadline" (epoch ms), ...}
 *     Runs `sh SCRIPT PARAMS` (an ELF executable runs directly), PARAMS being
 *     value as JSON, with each other top-level string or number K of the body
 *     as __OW_K (upper case) in its environment, stdin from /dev/null, in a
 *     process group of its own, killed at the deadline and once the script
 *     has ended. The last non-empty line of its stdout is the result: a JSON
 *     object as it is, another JSON value as {"body": value}, anything else
 *     {"output": "<all of stdout>"}. 200 with the result when the script
 *     exits 0; 502 {"error"} when it exits non-zero, is killed or is still
 *     running at the deadline; 403 {"error": "not initialized"} before a
 *     successful /init.
 * GET /health
 *     200 once listening.
 *
 * Every line the script writes to stdout or stderr during a call, but the
 * result line, goes to the proxy's stdout or stderr prefixed with
 * "<activation_id> ". The proxy's own messages start with "proxy: ".
 * SIGTERM and SIGINT end the proxy. It is the subreaper of the scripts'
 * processes: what a script leaves behind is killed and reaped when it ends,
 * but for processes that leave its process group. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bundle.h"
#include "cleanup.h"
#include "err.h"
#include "json.h"
#include "strbuf.h"

#define MAX_HEAD (16 << 10)
#define MAX_BODY ((size_t)128 << 20)
#define MAX_LINE ((size_t)8 << 20) /* a longer line is cut in two; also the stdout kept */
#define CHUNK 65536

extern char **environ;

/* Written once, under lock, by the /init that installs the action. */
static struct {
    pthread_mutex_t lock;
    bool tried;
    bool ready;
    bool native; /* an ELF executable, run directly rather than by sh */
    char dir[PATH_MAX];
    char script[PATH_MAX];
} action = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* --- output ----------------------------------------------------------------- */

static pthread_mutex_t output_lock = PTHREAD_MUTEX_INITIALIZER;

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere left to say so */
        p += w;
        n -= (size_t)w;
    }
}

/* One line to fd, after prefix and a space when prefix is set. */
static void put_line(int fd, const char *prefix, const char *line, size_t n)
{
    _cleanup_strbuf_ struct strbuf sb = STRBUF_INIT;
    if (prefix) {
        strbuf_addstr(&sb, prefix);
        strbuf_addch(&sb, ' ');
    }
    strbuf_add(&sb, line, n);
    strbuf_addch(&sb, '\n');
    pthread_mutex_lock(&output_lock);
    write_all(fd, sb.buf, sb.len);
    pthread_mutex_unlock(&output_lock);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    put_line(STDERR_FILENO, "proxy:", msg, strlen(msg));
}

/* The length of the valid UTF-8 sequence at p, 0 when there is none. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    size_t len = *p < 0x80 ? 1 : *p < 0xc2 ? 0 : *p < 0xe0 ? 2 : *p < 0xf0 ? 3 : *p < 0xf5 ? 4 : 0;
    if (len <= 1)
        return len;
    if ((size_t)(end - p) < len)
        return 0;
    uint32_t cp = *p & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* s as a JSON string, every byte that is not valid UTF-8 replaced by U+FFFD. */
static json_t *json_text(const char *s, size_t n)
{
    _cleanup_strbuf_ struct strbuf sb = STRBUF_INIT;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        size_t len = utf8_len(p, end);
        strbuf_add(&sb, len ? (const char *)p : "\xef\xbf\xbd", len ? len : 3);
        p += len ? len : 1;
    }
    return json_stringn(sb.buf, sb.len);
}

/* --- HTTP ------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    default:
        return "Internal Server Error";
    }
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the client is gone; the read side notices */
        p += w;
        n -= (size_t)w;
    }
}

static void answer(int fd, int status, const char *body, size_t n)
{
    _cleanup_strbuf_ struct strbuf sb = STRBUF_INIT;
    strbuf_addf(&sb,
                "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                status, reason(status), n);
    strbuf_add(&sb, body, n);
    send_all(fd, sb.buf, sb.len);
}

static void answer_json(int fd, int status, json_t *obj)
{
    _cleanup_free_ char *body = json_dumps(obj, JSON_COMPACT);
    if (!body)
        abort(); /* only out of memory: every string was made valid */
    answer(fd, status, body, strlen(body));
}

static void answer_error(int fd, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer_error(int fd, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    _cleanup_json_ json_t *obj = json_object();
    json_object_set_new(obj, "error", json_text(msg, strlen(msg)));
    answer_json(fd, status, obj);
}

struct request {
    char method[8];
    char path[256];
    bool keep_alive;
    bool expect_continue;
    bool chunked;
    size_t content_length;
};

/* The request line and the headers Loom's proxy cares about. */
static int parse_head(const char *head, size_t n, struct request *req)
{
    _cleanup_free_ char *text = strndup(head, n);
    char *save = NULL, *line = strtok_r(text, "\r\n", &save);
    int minor = -1;
    char tail;

    *req = (struct request){0};
    if (!line || sscanf(line, "%7s %255s HTTP/1.%d%c", req->method, req->path, &minor, &tail) != 3)
        return -1;
    req->keep_alive = minor >= 1;
    while ((line = strtok_r(NULL, "\r\n", &save))) {
        char *value = strchr(line, ':'), *end;
        if (!value)
            return -1;
        *value++ = '\0';
        value += strspn(value, " \t");
        if (strcasecmp(line, "content-length") == 0) {
            errno = 0;
            unsigned long long len = strtoull(value, &end, 10);
            if (errno || end == value || len > SIZE_MAX)
                return -1;
            req->content_length = (size_t)len;
        } else if (strcasecmp(line, "connection") == 0) {
            if (strcasestr(value, "close"))
                req->keep_alive = false;
            else if (strcasestr(value, "keep-alive"))
                req->keep_alive = true;
        } else if (strcasecmp(line, "transfer-encoding") == 0) {
            req->chunked = strncasecmp(value, "identity", 8) != 0;
        } else if (strcasecmp(line, "expect") == 0) {
            req->expect_continue = strncasecmp(value, "100-continue", 12) == 0;
        }
    }
    return 0;
}

/* Reads more of the connection into in; false when it ends. */
static bool receive(int fd, struct strbuf *in, size_t want)
{
    strbuf_grow(in, want);
    for (;;) {
        ssize_t n = recv(fd, in->buf + in->len, want, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        in->len += (size_t)n;
        in->buf[in->len] = '\0';
        return true;
    }
}

/* --- /init ------------------------------------------------------------------ */

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64; whitespace is skipped, padding optional. */
static int base64_decode(const char *s, size_t n, unsigned char **ret, size_t *ret_len)
{
    _cleanup_free_ unsigned char *out = malloc(n / 4 * 3 + 3);
    size_t len = 0, pad = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (!out)
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int v = base64_value(c);
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
            continue;
        if (c == '=' && ++pad <= 2)
            continue;
        if (v < 0 || pad > 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits);
        }
    }
    *ret = TAKE_PTR(out);
    *ret_len = len;
    return 0;
}

static int mkdir_p(const char *path, struct loom_err *err)
{
    char part[PATH_MAX];
    if (snprintf(part, sizeof(part), "%s", path) >= (int)sizeof(part))
        return loom_err_set(err, LOOM_EINVAL, "path too long: %s", path);
    for (char *p = part + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(part, 0700) < 0 && errno != EEXIST)
            return loom_err_sys(err, errno, "could not make %s", part);
        if (!c)
            return 0;
        *p = c;
    }
}

static int write_script(const char *path, const char *code, size_t n, struct loom_err *err)
{
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create %s", path);
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, code + off, n - off);
        if (w < 0 && errno != EINTR)
            return loom_err_sys(err, errno, "could not write %s", path);
        off += w > 0 ? (size_t)w : 0;
    }
    return 0;
}

static int set_script(const char *name, struct loom_err *err)
{
    int n = snprintf(action.script, sizeof(action.script), "%s/%s", action.dir, name);
    if (n < 0 || n >= (int)sizeof(action.script))
        return loom_err_set(err, LOOM_EINVAL, "path too long: %s/%s", action.dir, name);
    return 0;
}

/* Sets up the action described by /init's value in action.*. */
static int install(json_t *value, struct loom_err *err)
{
    const char *dir = getenv("LOOM_ACTION_DIR"), *tmp = getenv("TMPDIR"), *key;
    json_t *code = json_object_get(value, "code"), *v;
    struct stat st;

    json_object_foreach(json_object_get(value, "env"), key, v)
    {
        _cleanup_free_ char *text =
            json_is_string(v) ? strdup(json_string_value(v)) : json_dumps(v, JSON_ENCODE_ANY);
        if (!text || setenv(key, text, 1) < 0)
            return loom_err_set(err, LOOM_EINVAL, "could not set the variable \"%s\"", key);
    }
    if (dir && *dir) {
        if (snprintf(action.dir, sizeof(action.dir), "%s", dir) >= (int)sizeof(action.dir) ||
            mkdir_p(action.dir, err) < 0)
            return loom_err_wrap(err, "LOOM_ACTION_DIR");
    } else {
        snprintf(action.dir, sizeof(action.dir), "%s/action-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(action.dir))
            return loom_err_sys(err, errno, "could not make %s", action.dir);
    }

    if (json_is_true(json_object_get(value, "binary"))) {
        _cleanup_free_ unsigned char *data = NULL;
        size_t len;
        if (base64_decode(json_string_value(code), json_string_length(code), &data, &len) < 0)
            return loom_err_set(err, LOOM_EINVAL, "the code is not base64");
        if (bundle_unpack(data, len, action.dir, err) < 0)
            return -1;
        if (set_script("exec", err) < 0)
            return -1;
        if ((stat(action.script, &st) < 0 || !S_ISREG(st.st_mode)) &&
            set_script("main.sh", err) < 0)
            return -1;
        if (stat(action.script, &st) < 0 || !S_ISREG(st.st_mode))
            return loom_err_set(err, LOOM_EINVAL, "the bundle has neither exec nor main.sh");
    } else {
        if (set_script("exec", err) < 0 ||
            write_script(action.script, json_string_value(code), json_string_length(code), err))
            return -1;
    }

    /* an ELF executable runs directly; anything else is a script for sh */
    static const char elf[4] = {0x7f, 'E', 'L', 'F'};
    char magic[4] = {0};
    _cleanup_close_ int fd = open(action.script, O_RDONLY | O_CLOEXEC);
    action.native = fd >= 0 && read(fd, magic, sizeof(magic)) == (ssize_t)sizeof(magic) &&
                    memcmp(magic, elf, sizeof(elf)) == 0 && fstat(fd, &st) == 0 &&
                    (st.st_mode & 0111);
    return 0;
}

static void handle_init(int fd, const char *body, size_t len)
{
    _cleanup_json_ json_t *msg = json_loadb(body, len, 0, NULL);
    json_t *value = json_object_get(msg, "value");
    struct loom_err err = LOOM_ERR_INIT;
    int rc;

    if (!json_is_string(json_object_get(value, "code"))) {
        answer_error(fd, 400, "the body needs value.code, a string");
        return;
    }
    pthread_mutex_lock(&action.lock);
    if (action.tried) {
        pthread_mutex_unlock(&action.lock);
        answer_error(fd, 403, "cannot initialize the action more than once");
        return;
    }
    action.tried = true;
    rc = install(value, &err);
    action.ready = rc == 0;
    pthread_mutex_unlock(&action.lock);
    if (rc < 0) {
        say("init failed: %s", err.msg);
        answer_error(fd, 502, "%s", err.msg);
        return;
    }
    answer(fd, 200, "{\"ok\":true}", 11);
}

/* --- /run ------------------------------------------------------------------- */

struct stream {
    int fd;             /* the pipe's read end, -1 once it has ended */
    struct strbuf part; /* an unfinished line */
};

struct run {
    const char *id;
    struct stream streams[2]; /* the script's stdout and stderr */
    struct strbuf last;       /* stdout's last non-empty line, held back: the result? */
    size_t blanks;            /* the empty lines after it */
    struct strbuf all;        /* stdout, up to MAX_LINE bytes */
};

static void release_held(struct run *r)
{
    if (r->last.len)
        put_line(STDOUT_FILENO, r->id, r->last.buf, r->last.len);
    for (; r->blanks > 0; r->blanks--)
        put_line(STDOUT_FILENO, r->id, "", 0);
    strbuf_reset(&r->last);
}

static void on_line(struct run *r, int which, const char *line, size_t n)
{
    if (which == 1) {
        put_line(STDERR_FILENO, r->id, line, n);
        return;
    }
    if (r->all.len + n + 1 <= MAX_LINE) {
        strbuf_add(&r->all, line, n);
        strbuf_addch(&r->all, '\n');
    }
    if (n == 0 && r->last.len) {
        r->blanks++;
        return;
    }
    release_held(r);
    if (n == 0)
        put_line(STDOUT_FILENO, r->id, "", 0);
    else
        strbuf_add(&r->last, line, n);
}

/* Reads what the pipe holds: > 0 bytes read, 0 at its end (the last line
 * handed on), -1 when there is nothing now. */
static ssize_t stream_read(struct run *r, int which)
{
    struct stream *s = &r->streams[which];
    char buf[CHUNK];
    ssize_t n = read(s->fd, buf, sizeof(buf));

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return -1;
    if (n <= 0) {
        if (s->part.len)
            on_line(r, which, s->part.buf, s->part.len);
        strbuf_reset(&s->part);
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    strbuf_add(&s->part, buf, (size_t)n);
    size_t start = 0;
    for (char *nl; (nl = memchr(s->part.buf + start, '\n', s->part.len - start));) {
        on_line(r, which, s->part.buf + start, (size_t)(nl - s->part.buf) - start);
        start = (size_t)(nl - s->part.buf) + 1;
    }
    if (s->part.len - start >= MAX_LINE) {
        on_line(r, which, s->part.buf + start, s->part.len - start);
        start = s->part.len;
    }
    memmove(s->part.buf, s->part.buf + start, s->part.len - start + 1);
    s->part.len -= start;
    return n;
}

static void drain(struct run *r, int which)
{
    while (r->streams[which].fd >= 0 && stream_read(r, which) > 0) {
    }
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Starts the script with its output into r's pipes; *ret_pid. */
static int spawn_script(struct run *r, char *const argv[], char *const envp[], pid_t *ret_pid,
                        struct loom_err *err)
{
    int pipes[2][2] = {{-1, -1}, {-1, -1}}, rc = 0;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, defaults;

    for (int i = 0; i < 2 && rc == 0; i++)
        if (pipe2(pipes[i], O_CLOEXEC) < 0)
            rc = loom_err_sys(err, errno, "could not make a pipe");
    if (rc == 0) {
        sigemptyset(&none);
        sigemptyset(&defaults);
        sigaddset(&defaults, SIGPIPE);
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, pipes[0][1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, pipes[1][1], STDERR_FILENO);
        posix_spawn_file_actions_addchdir_np(&fa, action.dir);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        int e = posix_spawnp(ret_pid, argv[0], &fa, &attr, argv, envp);
        if (e != 0)
            rc = loom_err_sys(err, e, "could not start %s", argv[0]);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
    }
    for (int i = 0; i < 2; i++) {
        if (pipes[i][1] >= 0)
            close(pipes[i][1]);
        if (rc == 0) {
            fcntl(pipes[i][0], F_SETFL, O_NONBLOCK);
            r->streams[i].fd = pipes[i][0];
        } else if (pipes[i][0] >= 0) {
            close(pipes[i][0]);
        }
    }
    return rc;
}

/* Runs the script to its end or the deadline (0: none), its output through r.
 * *ret_status: its wait status; *ret_late: killed at the deadline. */
static int run_script(struct run *r, char *const argv[], char *const envp[], long long deadline,
                      int *ret_status, bool *ret_late, struct loom_err *err)
{
    pid_t pid;
    bool ended = false, late = false;

    if (spawn_script(r, argv, envp, &pid, err) < 0)
        return -1;
    /* the pidfd says when the script ends, without waiting for what it left
     * running with the pipes open */
    _cleanup_close_ int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        kill(-pid, SIGKILL);
        late = true; /* reaped below; reported as an error */
        loom_err_sys(err, errno, "could not watch the action");
    }
    while (!ended && !late) {
        struct pollfd p[3] = {
            {.fd = r->streams[0].fd, .events = POLLIN},
            {.fd = r->streams[1].fd, .events = POLLIN},
            {.fd = pidfd, .events = POLLIN},
        };
        long long left = deadline ? deadline - now_ms() : -1;
        if (deadline && left <= 0) {
            late = true;
            break;
        }
        if (poll(p, 3, left < 0 ? -1 : left > INT_MAX ? INT_MAX : (int)left) < 0) {
            if (errno == EINTR)
                continue;
            late = true;
            loom_err_sys(err, errno, "could not wait for the action");
            break;
        }
        for (int i = 0; i < 2; i++)
            if (p[i].revents)
                drain(r, i);
        ended = p[2].revents != 0;
    }
    if (late)
        kill(-pid, SIGKILL);
    drain(r, 0);
    drain(r, 1);
    /* what the script left running: the group stays its own until it is reaped */
    kill(-pid, SIGKILL);
    /* the script, and what it left (the proxy is their subreaper) */
    for (;;) {
        int status;
        pid_t child = waitpid(-pid, &status, 0);
        if (child < 0 && errno == EINTR)
            continue;
        if (child < 0)
            break; /* ECHILD: the group is gone */
        if (child == pid)
            *ret_status = status;
    }
    for (int i = 0; i < 2; i++)
        if (r->streams[i].fd >= 0) {
            close(r->streams[i].fd);
            r->streams[i].fd = -1;
        }
    *ret_late = late;
    return pidfd < 0 ? -1 : 0;
}

/* The script's environment: the proxy's without __OW_ variables, and the call's. */
static char **call_env(json_t *msg)
{
    size_t n = 0, k = 0;
    const char *key;
    json_t *v;

    while (environ[n])
        n++;
    char **env = calloc(n + json_object_size(msg) + 1, sizeof(char *));
    if (!env)
        abort();
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "__OW_", 5) != 0)
            env[k++] = strdup(environ[i]);
    json_object_foreach(msg, key, v)
    {
        struct strbuf sb = STRBUF_INIT;
        if (strcmp(key, "value") == 0 || !(json_is_string(v) || json_is_number(v)))
            continue;
        strbuf_addstr(&sb, "__OW_");
        for (const char *c = key; *c; c++)
            strbuf_addch(&sb, *c >= 'a' && *c <= 'z' ? (char)(*c - 'a' + 'A') : *c);
        strbuf_addch(&sb, '=');
        if (json_is_string(v))
            strbuf_addstr(&sb, json_string_value(v));
        else if (json_is_integer(v))
            strbuf_addf(&sb, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else
            strbuf_addf(&sb, "%.17g", json_real_value(v));
        env[k++] = strbuf_detach(&sb, NULL);
    }
    return env;
}

static void free_env(char **env)
{
    for (char **e = env; e && *e; e++)
        free(*e);
    free(env);
}

/* The deadline in epoch milliseconds, a number or a string of digits; 0 for none. */
static long long deadline_of(json_t *v)
{
    if (json_is_number(v))
        return (long long)json_number_value(v);
    return json_is_string(v) ? strtoll(json_string_value(v), NULL, 10) : 0;
}

/* The answer to a script that exited 0: its last line, or all its output. */
static void answer_result(int fd, struct run *r)
{
    _cleanup_json_ json_t *result = json_loadb(r->last.buf, r->last.len, JSON_DECODE_ANY, NULL);
    if (json_is_object(result)) {
        answer(fd, 200, r->last.buf, r->last.len);
        return;
    }
    _cleanup_json_ json_t *obj = json_object();
    if (result) {
        json_object_set(obj, "body", result);
    } else {
        release_held(r);
        json_object_set_new(obj, "output", json_text(r->all.buf, r->all.len));
    }
    answer_json(fd, 200, obj);
}

static void handle_run(int fd, const char *body, size_t len)
{
    _cleanup_json_ json_t *msg = json_loadb(body, len, 0, NULL);
    struct loom_err err = LOOM_ERR_INIT;
    int status = 0;
    bool late = false, ready;

    if (!json_is_object(msg)) {
        answer_error(fd, 400, "the body is not a JSON object");
        return;
    }
    pthread_mutex_lock(&action.lock);
    ready = action.ready;
    pthread_mutex_unlock(&action.lock);
    if (!ready) {
        answer_error(fd, 403, "not initialized");
        return;
    }

    json_t *value = json_object_get(msg, "value");
    _cleanup_free_ char *params =
        value ? json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("{}");
    const char *id = json_string_value(json_object_get(msg, "activation_id"));
    char sh[] = "sh";
    char *argv_sh[] = {sh, action.script, params, NULL};
    char *argv_native[] = {action.script, params, NULL};
    char **env = call_env(msg);
    struct run r = {
        .id = id && *id ? id : NULL,
        .streams = {{.fd = -1, .part = STRBUF_INIT}, {.fd = -1, .part = STRBUF_INIT}},
        .last = STRBUF_INIT,
        .all = STRBUF_INIT,
    };

    int rc = run_script(&r, action.native ? argv_native : argv_sh, env,
                        deadline_of(json_object_get(msg, "deadline")), &status, &late, &err);
    if (rc < 0)
        answer_error(fd, 502, "%s", err.msg);
    else if (late)
        answer_error(fd, 502, "the action did not finish before its deadline");
    else if (WIFSIGNALED(status))
        answer_error(fd, 502, "the action was killed by signal %d", WTERMSIG(status));
    else if (WEXITSTATUS(status) != 0)
        answer_error(fd, 502, "the action exited with status %d", WEXITSTATUS(status));
    else
        answer_result(fd, &r);
    if (rc < 0 || late || status != 0)
        release_held(&r);

    free_env(env);
    strbuf_release(&r.streams[0].part);
    strbuf_release(&r.streams[1].part);
    strbuf_release(&r.last);
    strbuf_release(&r.all);
}

/* --- connections ------------------------------------------------------------ */

/* Serves one request of the connection; false when the connection is done. */
static bool serve_one(int fd, struct strbuf *in)
{
    struct request req;
    char *end;

    while (!(end = memmem(in->buf, in->len, "\r\n\r\n", 4))) {
        if (in->len > MAX_HEAD) {
            answer_error(fd, 431, "the request head is too large");
            return false;
        }
        if (!receive(fd, in, 4096))
            return false;
    }
    size_t head_len = (size_t)(end - in->buf) + 4;
    if (parse_head(in->buf, head_len - 4, &req) < 0) {
        answer_error(fd, 400, "malformed request");
        return false;
    }
    if (req.chunked) {
        answer_error(fd, 411, "a Content-Length is required");
        return false;
    }
    if (req.content_length > MAX_BODY) {
        answer_error(fd, 413, "the body is too large");
        return false;
    }
    size_t need = head_len + req.content_length;
    if (in->len < need && req.expect_continue)
        send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    while (in->len < need)
        if (!receive(fd, in, need - in->len))
            return false;

    const char *body = in->buf + head_len;
    if (strcmp(req.method, "GET") == 0 && strcmp(req.path, "/health") == 0)
        answer(fd, 200, "{\"ok\":true}", 11);
    else if (strcmp(req.method, "POST") == 0 && strcmp(req.path, "/init") == 0)
        handle_init(fd, body, req.content_length);
    else if (strcmp(req.method, "POST") == 0 && strcmp(req.path, "/run") == 0)
        handle_run(fd, body, req.content_length);
    else
        answer_error(fd, 404, "not found");

    memmove(in->buf, in->buf + need, in->len - need + 1);
    in->len -= need;
    return req.keep_alive;
}

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct strbuf in = STRBUF_INIT;
    while (serve_one(fd, &in)) {
    }
    strbuf_release(&in);
    close(fd);
    return NULL;
}

static void *accept_loop(void *arg)
{
    int listen_fd = (int)(intptr_t)arg, one = 1;
    pthread_attr_t attr;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        pthread_t t;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED) {
                say("could not accept a connection: %s", strerror(errno));
                usleep(100000); /* out of descriptors or memory: let some go */
            }
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (pthread_create(&t, &attr, serve, (void *)(intptr_t)fd) != 0) {
            say("could not start a thread for a connection");
            close(fd);
        }
    }
    return NULL;
}

int main(void)
{
    const char *port_env = getenv("PORT");
    long port = port_env && *port_env ? strtol(port_env, NULL, 10) : 8080;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    sigset_t stop;
    pthread_t acceptor;
    int fd, one = 1, sig;

    if (port <= 0 || port > 65535) {
        say("PORT must be a TCP port, not \"%s\"", port_env);
        return 2;
    }
    addr.sin_port = htons((uint16_t)port);
    /* threads inherit the mask: only sigwait below takes these */
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* what a script leaves running comes to the proxy when the script ends, as
     * it would to PID 1 in a container, to be killed and reaped with it */
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 128) < 0) {
        say("could not listen on 0.0.0.0:%ld: %s", port, strerror(errno));
        return 1;
    }
    if (pthread_create(&acceptor, NULL, accept_loop, (void *)(intptr_t)fd) != 0) {
        say("could not start the acceptor thread");
        return 1;
    }
    say("listening on 0.0.0.0:%ld", port);
    sigwait(&stop, &sig);
    say("stopping on %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    return 0;
}
