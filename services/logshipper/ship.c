/* Tailing container.log files into log_lines.
 *
 * Per instance we keep the byte offset up to which lines are shipped. On
 * first sight the offset comes from PostgreSQL (the greatest offset already
 * stored for the instance: reading restarts at that line and skips it), so a
 * restarted logshipper neither loses nor repeats lines, and the primary key
 * (instance_id, offset) makes any overlap a no-op. Only complete lines are
 * shipped; a trailing partial line waits for its newline. */
#include "logshipper.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bus.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "service.h"
#include "subjects.h"
#include "util.h"
#include "loom/v1/log.pb-c.h"

#define CHUNK (256 * 1024)
#define BUDGET_PER_TICK (8 * 1024 * 1024)
#define RETENTION_BATCH 5000
#define RETENTION_MAX_BATCHES 20

struct ls_config ls_cfg;

struct tracked {
    struct tracked *next;
    char *dir; /* <state-dir>/instances/<id> */
    char id[37];
    char project[64];
    int fd;
    int64_t pos;       /* next byte to read */
    int64_t skip_upto; /* lines at offsets <= this are in PostgreSQL already */
    bool in_long_line; /* skipping the rest of an oversized line */
    bool failing;      /* the last insert failed (log once) */
    bool seen;
};

static char **dirs;
static size_t ndirs;
static struct tracked *tracked;
static char *chunk;
static int64_t last_retention_ms;
static struct loom_metric *m_lines, *m_bytes, *m_bad, *m_deleted;

static void tracked_free(struct tracked *t)
{
    if (!t)
        return;
    if (t->fd >= 0)
        close(t->fd);
    free(t->dir);
    free(t);
}

/* The instance's project from instance.json, or -1 while it is not there. */
static int read_project(const char *dir, char *out, size_t n, struct loom_err *err)
{
    _cleanup_free_ char *path = NULL, *text = NULL;
    size_t len;
    if (asprintf(&path, "%s/instance.json", dir) < 0)
        abort();
    if (loom_read_file(path, &text, &len, err) < 0)
        return -1;
    _cleanup_json_ json_t *obj = loom_json_parse_object(text, len, err);
    if (!obj)
        return loom_err_wrap(err, "%s", path);
    const char *project = NULL;
    if (loom_json_get_string(obj, "project", true, 63, &project, err) < 0)
        return loom_err_wrap(err, "%s", path);
    if (!loom_is_dns_label(project))
        return loom_err_set(err, LOOM_EINVAL, "%s: project \"%s\" is not a valid name", path,
                            project);
    snprintf(out, n, "%s", project);
    return 0;
}

static int start_tracking(struct loom_service *svc, const char *dir, const char *id,
                          struct tracked **ret, struct loom_err *err)
{
    char project[64];
    if (read_project(dir, project, sizeof(project), err) < 0)
        return -1;
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/container.log", dir) < 0)
        abort();
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        svc->db, err, "SELECT max(\"offset\") FROM log_lines WHERE instance_id = $1::uuid", id);
    if (!res)
        return loom_err_wrap(err, "reading the shipped offset of %s", id);
    const char *max = loom_db_val(res, 0, 0);
    struct tracked *t = calloc(1, sizeof(*t));
    if (!t)
        abort();
    t->dir = strdup(dir);
    if (!t->dir)
        abort();
    snprintf(t->id, sizeof(t->id), "%.36s", id); /* a UUID (scan_dir) */
    snprintf(t->project, sizeof(t->project), "%s", project);
    t->skip_upto = max ? strtoll(max, NULL, 10) : -1;
    t->pos = max ? t->skip_upto : 0;
    t->fd = TAKE_FD(fd);
    struct stat st;
    if (fstat(t->fd, &st) == 0 && st.st_size < t->pos) {
        /* the file is shorter than what we shipped: not the file we knew */
        log_warn("%s is shorter than the %" PRId64 " bytes already shipped; reading it from "
                 "the start",
                 path, t->pos);
        t->pos = 0;
    }
    *ret = t;
    return 0;
}

static void format_ts(int64_t ns, char out[40])
{
    time_t s = (time_t)(ns / 1000000000LL);
    long us = (long)((ns % 1000000000LL) / 1000);
    if (ns < 0) {
        s = 0;
        us = 0;
    }
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06ld+00", us);
}

struct batch {
    struct strbuf offsets, tss, streams, lines; /* PostgreSQL array literals */
    struct strbuf texts;                        /* cleaned texts, NUL-separated */
    Loom__V1__LogLine *msgs;
    size_t *text_at;
    size_t n, cap;
};

static void batch_init(struct batch *b)
{
    memset(b, 0, sizeof(*b));
    strbuf_init(&b->offsets);
    strbuf_init(&b->tss);
    strbuf_init(&b->streams);
    strbuf_init(&b->lines);
    strbuf_init(&b->texts);
}

static void batch_release(struct batch *b)
{
    strbuf_release(&b->offsets);
    strbuf_release(&b->tss);
    strbuf_release(&b->streams);
    strbuf_release(&b->lines);
    strbuf_release(&b->texts);
    free(b->msgs);
    free(b->text_at);
}

static void batch_add(struct batch *b, int64_t offset, const struct ls_cri_line *l)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->msgs = realloc(b->msgs, b->cap * sizeof(*b->msgs));
        b->text_at = realloc(b->text_at, b->cap * sizeof(*b->text_at));
        if (!b->msgs || !b->text_at)
            abort();
    }
    const char *sep = b->n ? "," : "";
    strbuf_addf(&b->offsets, "%s%" PRId64, sep, offset);
    char ts[40];
    format_ts(l->ts_ns, ts);
    strbuf_addf(&b->tss, "%s\"%s\"", sep, ts);
    strbuf_addf(&b->streams, "%s%s", sep, l->stream == LS_STDERR ? "stderr" : "stdout");
    size_t at = b->texts.len;
    ls_add_clean_utf8(&b->texts, l->text, l->text_len);
    size_t tlen = b->texts.len - at;
    strbuf_addch(&b->texts, '\0');
    strbuf_addstr(&b->lines, sep);
    loom_db_array_elem(&b->lines, b->texts.buf + at, tlen);
    Loom__V1__LogLine *m = &b->msgs[b->n];
    loom__v1__log_line__init(m);
    m->ts_unix_ns = l->ts_ns;
    m->stream = l->stream == LS_STDERR ? LOOM__V1__LOG_STREAM__LOG_STREAM_STDERR
                                       : LOOM__V1__LOG_STREAM__LOG_STREAM_STDOUT;
    m->offset = (uint64_t)offset;
    b->text_at[b->n] = at;
    b->n++;
}

static int batch_insert(struct loom_service *svc, struct tracked *t, struct batch *b,
                        struct loom_err *err)
{
    _cleanup_strbuf_ struct strbuf o = STRBUF_INIT, ts = STRBUF_INIT, s = STRBUF_INIT,
                                   l = STRBUF_INIT;
    strbuf_addf(&o, "{%s}", b->offsets.buf);
    strbuf_addf(&ts, "{%s}", b->tss.buf);
    strbuf_addf(&s, "{%s}", b->streams.buf);
    strbuf_addf(&l, "{%s}", b->lines.buf);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        svc->db, err,
        "INSERT INTO log_lines (instance_id, \"offset\", ts, stream, line) "
        "SELECT $1::uuid, u.o, u.t, u.s, u.l "
        "FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::text[]) AS u(o, t, s, l) "
        "ON CONFLICT (instance_id, \"offset\") DO NOTHING",
        t->id, o.buf, ts.buf, s.buf, l.buf);
    return res ? 0 : -1;
}

static void batch_publish(struct loom_service *svc, struct tracked *t, struct batch *b)
{
    _cleanup_free_ Loom__V1__LogLine **ptrs = calloc(b->n, sizeof(*ptrs));
    if (!ptrs)
        abort();
    for (size_t i = 0; i < b->n; i++) {
        b->msgs[i].text = b->texts.buf + b->text_at[i];
        ptrs[i] = &b->msgs[i];
    }
    Loom__V1__LogBatch lb;
    loom__v1__log_batch__init(&lb);
    lb.instance_id = t->id;
    lb.project = t->project;
    lb.n_lines = b->n;
    lb.lines = ptrs;
    char subject[160];
    snprintf(subject, sizeof(subject), LOOM_SUBJ_LOGS_FMT, t->project, t->id);
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_publish(svc->bus, subject, &lb.base, &err) < 0)
        log_warn("could not publish %zu log lines of %s: %s", b->n, t->id, err.msg);
}

/* Ships what is complete in t's file, up to the tick's budget. */
static void ship(struct loom_service *svc, struct tracked *t)
{
    int64_t budget = BUDGET_PER_TICK;
    while (budget > 0 && !svc->stopping) {
        ssize_t n = pread(t->fd, chunk, CHUNK, (off_t)t->pos);
        if (n < 0) {
            log_warn("could not read %s/container.log: %s", t->dir, strerror(errno));
            return;
        }
        if (n == 0)
            return;
        size_t start = 0;
        if (t->in_long_line) {
            char *nl = memchr(chunk, '\n', (size_t)n);
            if (!nl) {
                t->pos += n;
                continue;
            }
            start = (size_t)(nl - chunk) + 1;
            t->in_long_line = false;
        }
        char *last = memrchr(chunk + start, '\n', (size_t)n - start);
        if (!last) {
            if (n == CHUNK && start == 0) {
                /* the shim cuts lines at 16 KiB: this is not a CRI line */
                log_warn("%s/container.log: a line at offset %" PRId64 " is longer than %d "
                         "bytes; skipping it",
                         t->dir, t->pos, CHUNK);
                loom_metric_add(m_bad, 1);
                t->pos += n;
                t->in_long_line = true;
                continue;
            }
            t->pos += (int64_t)start;
            return; /* a partial line: wait for the rest */
        }
        size_t end = (size_t)(last - chunk) + 1;

        struct batch b;
        batch_init(&b);
        size_t p = start;
        while (p < end) {
            char *nl = memchr(chunk + p, '\n', end - p);
            size_t len = (size_t)(nl - (chunk + p));
            int64_t offset = t->pos + (int64_t)p;
            if (offset > t->skip_upto) {
                struct ls_cri_line l;
                struct loom_err err = LOOM_ERR_INIT;
                if (ls_parse_cri(chunk + p, len, &l, &err) == 0) {
                    batch_add(&b, offset, &l);
                } else {
                    log_warn("%s/container.log: skipping malformed line at offset %" PRId64 ": %s",
                             t->dir, offset, err.msg);
                    loom_metric_add(m_bad, 1);
                }
            }
            p += len + 1;
        }
        if (b.n > 0) {
            struct loom_err err = LOOM_ERR_INIT;
            if (batch_insert(svc, t, &b, &err) < 0) {
                if (!t->failing)
                    log_warn("could not store log lines of %s: %s", t->id, err.msg);
                t->failing = true;
                batch_release(&b);
                return; /* try again next tick from the same offset */
            }
            if (t->failing)
                log_info("storing log lines of %s again", t->id);
            t->failing = false;
            batch_publish(svc, t, &b);
            loom_metric_add(m_lines, (double)b.n);
        }
        batch_release(&b);
        loom_metric_add(m_bytes, (double)end);
        t->pos += (int64_t)end;
        budget -= (int64_t)end;
    }
}

static struct tracked *find_tracked(const char *dir)
{
    for (struct tracked *t = tracked; t; t = t->next)
        if (strcmp(t->dir, dir) == 0)
            return t;
    return NULL;
}

static void scan_dir(struct loom_service *svc, const char *state_dir)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/instances", state_dir) < 0)
        abort();
    _cleanup_closedir_ DIR *d = opendir(path);
    if (!d)
        return; /* the agent has not made it yet */
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!loom_is_uuid(de->d_name))
            continue;
        _cleanup_free_ char *idir = NULL;
        if (asprintf(&idir, "%s/%s", path, de->d_name) < 0)
            abort();
        struct tracked *t = find_tracked(idir);
        if (t) {
            t->seen = true;
            continue;
        }
        struct loom_err err = LOOM_ERR_INIT;
        if (start_tracking(svc, idir, de->d_name, &t, &err) < 0) {
            /* instance.json or container.log not written yet is normal */
            if (err.sys_errno != ENOENT)
                log_debug("not shipping %s yet: %s", idir, err.msg);
            continue;
        }
        log_info("shipping logs of instance %s (project %s) from offset %" PRId64, t->id,
                 t->project, t->pos);
        t->seen = true;
        t->next = tracked;
        tracked = t;
    }
}

static void retention(struct loom_service *svc)
{
    char interval[48];
    snprintf(interval, sizeof(interval), "%" PRId64 " milliseconds", ls_cfg.retention_ms);
    long total = 0;
    for (int i = 0; i < RETENTION_MAX_BATCHES && !svc->stopping; i++) {
        struct loom_err err = LOOM_ERR_INIT;
        _cleanup_pgres_ PGresult *res =
            loom_db_query(svc->db, &err,
                          "DELETE FROM log_lines WHERE ctid = ANY(ARRAY(SELECT ctid FROM log_lines "
                          "WHERE ts < now() - $1::interval LIMIT 5000))",
                          interval);
        if (!res) {
            log_warn("could not delete old log lines: %s", err.msg);
            return;
        }
        long n = atol(PQcmdTuples(res));
        total += n;
        if (n < RETENTION_BATCH)
            break;
    }
    if (total > 0) {
        loom_metric_add(m_deleted, (double)total);
        log_info("deleted %ld log lines older than %s", total, interval);
    }
}

void ls_tick(struct loom_service *svc)
{
    for (struct tracked *t = tracked; t; t = t->next)
        t->seen = false;
    for (size_t i = 0; i < ndirs; i++)
        scan_dir(svc, dirs[i]);
    struct tracked **pp = &tracked;
    while (*pp) {
        struct tracked *t = *pp;
        if (!t->seen) {
            /* the agent removed the instance: what was complete is shipped */
            ship(svc, t);
            log_info("instance %s is gone; stopped shipping its logs", t->id);
            *pp = t->next;
            tracked_free(t);
            continue;
        }
        ship(svc, t);
        pp = &t->next;
    }
    int64_t now = loom_mono_ms();
    if (now - last_retention_ms >= ls_cfg.retention_every_ms) {
        last_retention_ms = now;
        retention(svc);
    }
}

int ls_start(struct loom_service *svc, struct loom_err *err)
{
    (void)svc;
    if (!ls_cfg.state_dirs || !*ls_cfg.state_dirs)
        return loom_err_set(err, LOOM_EINVAL,
                            "--agent-state-dir (LOOM_AGENT_STATE_DIR) is required");
    _cleanup_free_ char *copy = strdup(ls_cfg.state_dirs);
    if (!copy)
        abort();
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (!*tok)
            continue;
        dirs = realloc(dirs, (ndirs + 1) * sizeof(*dirs));
        if (!dirs || !(dirs[ndirs] = strdup(tok)))
            abort();
        ndirs++;
        log_info("shipping logs from %s/instances", tok);
    }
    if (ndirs == 0)
        return loom_err_set(err, LOOM_EINVAL, "--agent-state-dir names no directory");
    chunk = malloc(CHUNK);
    if (!chunk)
        abort();
    m_lines = loom_metric_counter("loom_logshipper_lines_total", NULL, "log lines shipped");
    m_bytes =
        loom_metric_counter("loom_logshipper_bytes_total", NULL, "bytes of container.log consumed");
    m_bad = loom_metric_counter("loom_logshipper_malformed_lines_total", NULL,
                                "lines that are not CRI log lines (skipped)");
    m_deleted = loom_metric_counter("loom_logshipper_retention_deleted_total", NULL,
                                    "log lines deleted by the retention policy");
    /* the first retention pass runs a minute after start, not during it */
    last_retention_ms = loom_mono_ms();
    return 0;
}

void ls_stop(struct loom_service *svc)
{
    (void)svc;
    while (tracked) {
        struct tracked *t = tracked;
        tracked = t->next;
        tracked_free(t);
    }
    for (size_t i = 0; i < ndirs; i++)
        free(dirs[i]);
    free(dirs);
    dirs = NULL;
    ndirs = 0;
    free(chunk);
    chunk = NULL;
}
