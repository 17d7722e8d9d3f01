/* Tailing container.log files into log_lines.
 *
 * inotify says which files grew (a full scan each second catches anything it
 * missed). A round reads what the files hold, puts partial records back into
 * lines (cri.c's joiner), stores every line of the round with one COPY, and
 * moves each instance's log_streams row in the same transaction: its
 * covered_offset (every line ending before it is stored), its resume_offset
 * (where a restarted logshipper reads again) and, once the instance has
 * exited and all it wrote is stored, eos_at, which readers of a finished
 * instance wait for. Only then are the lines published as LogBatches, which
 * tile each file ([from, to) offsets) so that a follower sees a gap. A round
 * that fails to commit is forgotten: its instances are read again from their
 * committed point. Once stored, a file's beginning is punched out
 * (FALLOC_FL_PUNCH_HOLE): the disk holds only what is not shipped yet.
 *
 * PostgreSQL's work on the rows is most of a round's: the COPY (in binary,
 * which PostgreSQL takes without parsing text) starts with the round's first
 * lines and is sent in pieces as the files are read, so that PostgreSQL
 * stores the first rows while the logshipper reads and makes the next. */
#include "logshipper.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/falloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>

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
#define ROUND_BUDGET (16 * 1024 * 1024) /* bytes read per round, all files */
#define FILE_BUDGET (4 * 1024 * 1024)   /* per file and round: no file starves the rest */
#define PUBLISH_MAX (512 * 1024)        /* bytes of lines per LogBatch (NATS takes 1 MiB) */
#define LINE_PB_MAX 32                  /* bytes a LogLine adds to its text, at most */
#define PUNCH_STEP (1024 * 1024)        /* punch once this much more is stored */
#define COPY_PIECE (256 * 1024)         /* COPY data sent while the round reads on */
#define SCAN_EVERY_MS 1000
#define WAIT_MS 100

struct ls_config ls_cfg;

struct tracked {
    struct tracked *next;
    char *dir; /* <state-dir>/instances/<id> */
    char id[37];
    char project[64];
    uint8_t uuid[16];    /* id, for COPY */
    char project_id[24]; /* "" while the project is not known */
    int64_t project_num; /* project_id as a number, when it is known */
    int fd;
    bool can_punch;
    int wd; /* inotify watch on dir, or -1 */
    /* committed (log_streams) */
    int64_t resume, covered, lines, bytes;
    bool eos;
    /* read but not committed yet */
    int64_t pos; /* next byte to read */
    struct ls_joiner joiner;
    int64_t punched;
    bool in_long_line; /* skipping the rest of an oversized record */
    bool dirty, seen, failing;
    /* this round */
    size_t first_line, nlines; /* its lines in the round */
    int64_t round_from, round_resume, round_bytes;
    bool round_eos;
};

/* The lines of a round, all instances: COPY's rows and, for the LogBatches,
 * each line's fields. */
struct round_line {
    struct tracked *t;
    int64_t offset, ts_ns;
    enum ls_stream stream;
    size_t text_at, text_len; /* in rnd.texts */
};

static struct {
    struct strbuf copy;  /* COPY data (binary) not sent yet */
    struct strbuf texts; /* cleaned texts, each NUL-terminated */
    struct round_line *lines;
    size_t n, cap;
    struct tracked *t; /* the instance being read */
    struct loom_db *db;
    bool copying; /* the round's transaction and COPY are open */
    bool failed;  /* sending the COPY failed: err says why */
    struct loom_err err;
} rnd;

#define COPY_SQL                                                                                   \
    "COPY log_lines (instance_id, \"offset\", ts, stream, line, project_id) FROM STDIN "           \
    "WITH (FORMAT binary)"

static char **dirs;
static size_t ndirs;
static struct tracked *tracked;
static char *chunk;
static int inotify_fd = -1;
static int *dir_wds; /* per state dir, its instances/ (or -1) */
static int64_t last_scan_ms;
static struct loom_metric *m_lines, *m_bytes, *m_bad, *m_rounds, *m_round_secs;

static void tracked_free(struct tracked *t)
{
    if (!t)
        return;
    if (t->fd >= 0)
        close(t->fd);
    if (t->wd >= 0 && inotify_fd >= 0)
        inotify_rm_watch(inotify_fd, t->wd);
    ls_joiner_release(&t->joiner);
    free(t->dir);
    free(t);
}

/* The instance's project from instance.json, or -1 while it is not there.
 * A stem cell has none until a project claims it. */
static int read_project(const char *dir, char *out, size_t n, struct loom_err *err)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/instance.json", dir) < 0)
        abort();
    _cleanup_json_ json_t *obj = loom_json_read_file(path, err);
    if (!obj)
        return -1;
    const char *project = NULL, *claimed = NULL;
    if (loom_json_get_string(obj, "project", false, 63, &project, err) < 0 ||
        loom_json_get_string(obj, "claimed_project", false, 63, &claimed, err) < 0)
        return loom_err_wrap(err, "%s", path);
    if (project && !*project)
        project = claimed;
    if (!project || !loom_is_dns_label(project))
        return loom_err_set(err, LOOM_EINVAL, "%s: no valid project (yet)", path);
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
    /* read-write to punch out what is stored; read-only where that is refused */
    bool rw = true;
    _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        rw = false;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        svc->db, err,
        "SELECT s.resume_offset, s.covered_offset, s.lines, s.bytes, s.eos_at IS NOT NULL, "
        "       (SELECT id FROM projects WHERE name = $2) "
        "FROM (SELECT 1) one LEFT JOIN log_streams s ON s.instance_id = $1::uuid",
        id, project);
    if (!res)
        return loom_err_wrap(err, "reading the shipped offsets of %s", id);
    struct tracked *t = calloc(1, sizeof(*t));
    if (!t)
        abort();
    t->dir = strdup(dir);
    if (!t->dir)
        abort();
    snprintf(t->id, sizeof(t->id), "%.36s", id); /* a UUID (scan_dir) */
    snprintf(t->project, sizeof(t->project), "%s", project);
    if (loom_uuid_bytes(t->id, t->uuid) < 0)
        abort();
    const char *pid = loom_db_val(res, 0, 5);
    snprintf(t->project_id, sizeof(t->project_id), "%s", pid ? pid : "");
    t->project_num = pid ? strtoll(pid, NULL, 10) : 0;
    if (loom_db_val(res, 0, 0)) {
        t->resume = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        t->covered = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        t->lines = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        t->bytes = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        t->eos = PQgetvalue(res, 0, 4)[0] == 't';
    }
    t->pos = t->resume;
    t->punched = 0;
    t->fd = TAKE_FD(fd);
    t->can_punch = rw;
    t->wd = -1;
    ls_joiner_init(&t->joiner);
    struct stat st;
    if (fstat(t->fd, &st) == 0 && st.st_size < t->pos) {
        /* the file is shorter than what we shipped: not the file we knew */
        log_warn("%s is shorter than the %" PRId64 " bytes already shipped; reading it from "
                 "the start",
                 path, t->pos);
        t->pos = t->resume = t->covered = 0;
    }
    if (inotify_fd >= 0)
        t->wd = inotify_add_watch(inotify_fd, dir, IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO);
    t->dirty = true;
    *ret = t;
    return 0;
}

/* ---- a round ------------------------------------------------------------------------- */

static void round_reset(struct loom_db *db)
{
    strbuf_reset(&rnd.copy);
    loom_db_copy_bin_header(&rnd.copy);
    strbuf_reset(&rnd.texts);
    rnd.n = 0;
    rnd.db = db;
    rnd.copying = rnd.failed = false;
    rnd.err = (struct loom_err)LOOM_ERR_INIT;
}

/* Sends the round's COPY data made so far, opening the round's transaction
 * and COPY with the first piece; with last, ends the COPY (PostgreSQL has
 * then taken every row, or said why not). Once a piece fails, the round is
 * lost (rnd.failed, rnd.err). */
static void send_copy(bool last)
{
    if (rnd.failed)
        return;
    int rc = 0;
    if (!rnd.copying) {
        rc = loom_db_begin(rnd.db, &rnd.err);
        if (rc == 0)
            rc = loom_db_copy_start(rnd.db, COPY_SQL, &rnd.err);
        rnd.copying = rc == 0;
    }
    if (rc == 0 && last)
        loom_db_copy_bin_trailer(&rnd.copy);
    if (rc == 0)
        rc = loom_db_copy_put(rnd.db, rnd.copy.buf, rnd.copy.len, &rnd.err);
    strbuf_reset(&rnd.copy);
    if (rc == 0 && last)
        rc = loom_db_copy_end(rnd.db, &rnd.err);
    rnd.failed = rc < 0;
}

/* The joiner's callback: one line of rnd.t into the rnd. Lines below
 * what is stored already (read again after a failed round or a restart)
 * are not taken twice. */
static void take_line(void *arg, const struct ls_line *l)
{
    (void)arg;
    struct tracked *t = rnd.t;
    if (l->offset < t->covered)
        return;
    if (rnd.n == rnd.cap) {
        rnd.cap = rnd.cap ? rnd.cap * 2 : 1024;
        rnd.lines = realloc(rnd.lines, rnd.cap * sizeof(*rnd.lines));
        if (!rnd.lines)
            abort();
    }
    size_t at = rnd.texts.len;
    ls_add_clean_utf8(&rnd.texts, l->text, l->len);
    size_t len = rnd.texts.len - at;
    strbuf_addch(&rnd.texts, '\0');
    rnd.lines[rnd.n++] = (struct round_line){.t = t,
                                             .offset = l->offset,
                                             .ts_ns = l->ts_ns,
                                             .stream = l->stream,
                                             .text_at = at,
                                             .text_len = len};
    /* one COPY row: id, offset, ts (a time before 1970 as 1970), stream,
     * line, project id */
    struct strbuf *c = &rnd.copy;
    strbuf_grow(c, 2 + 6 * 4 + 16 + 8 + 8 + 6 + len + 8);
    loom_db_copy_bin_row(c, 6);
    loom_db_copy_bin_uuid(c, t->uuid);
    loom_db_copy_bin_int8(c, l->offset);
    loom_db_copy_bin_timestamptz(c, l->ts_ns < 0 ? 0 : l->ts_ns / 1000);
    loom_db_copy_bin_text(c, l->stream == LS_STDERR ? "stderr" : "stdout", 6);
    loom_db_copy_bin_text(c, rnd.texts.buf + at, len);
    if (t->project_id[0])
        loom_db_copy_bin_int8(c, t->project_num);
    else
        loom_db_copy_bin_null(c);
    t->round_bytes += (int64_t)len;
    if (c->len >= COPY_PIECE)
        send_copy(false);
}

/* Reads what t's file holds into the round, up to budget bytes; returns the
 * bytes consumed. */
static int64_t read_file(struct tracked *t, int64_t budget)
{
    rnd.t = t;
    int64_t used = 0;
    while (used < budget && !rnd.failed) {
        ssize_t n = pread(t->fd, chunk, CHUNK, (off_t)t->pos);
        if (n < 0) {
            log_warn("could not read %s/container.log: %s", t->dir, strerror(errno));
            break;
        }
        if (n == 0)
            break;
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
                /* the shim cuts records at 16 KiB: this is not a CRI record */
                log_warn("%s/container.log: a record at offset %" PRId64 " is longer than %d "
                         "bytes; skipping it",
                         t->dir, t->pos, CHUNK);
                loom_metric_add(m_bad, 1);
                t->pos += n;
                t->in_long_line = true;
                continue;
            }
            t->pos += (int64_t)start;
            break; /* a record not written whole yet: wait for the rest */
        }
        size_t end = (size_t)(last - chunk) + 1;
        for (size_t p = start; p < end;) {
            char *nl = memchr(chunk + p, '\n', end - p);
            size_t len = (size_t)(nl - (chunk + p));
            int64_t offset = t->pos + (int64_t)p;
            struct ls_cri_line rec;
            struct loom_err err = LOOM_ERR_INIT;
            if (ls_parse_cri(chunk + p, len, &rec, &err) == 0) {
                ls_joiner_feed(&t->joiner, offset, &rec, take_line, NULL);
            } else if (offset >= t->covered) {
                log_warn("%s/container.log: skipping malformed line at offset %" PRId64 ": %s",
                         t->dir, offset, err.msg);
                loom_metric_add(m_bad, 1);
            }
            p += len + 1;
        }
        loom_metric_add(m_bytes, (double)end);
        t->pos += (int64_t)end;
        used += (int64_t)end;
    }
    return used;
}

/* Stores the round: the rest of the lines' COPY, the cursors in
 * log_streams. */
static int commit_round(struct loom_service *svc, struct tracked **ts, size_t nt,
                        struct loom_err *err)
{
    struct strbuf ids = STRBUF_INIT, pids = STRBUF_INIT, resume = STRBUF_INIT,
                  covered = STRBUF_INIT, lines = STRBUF_INIT, bytes = STRBUF_INIT,
                  eos = STRBUF_INIT;
    for (size_t i = 0; i < nt; i++) {
        struct tracked *t = ts[i];
        const char *sep = i ? "," : "";
        strbuf_addf(&ids, "%s%s", sep, t->id);
        strbuf_addf(&pids, "%s%s", sep, t->project_id[0] ? t->project_id : "NULL");
        strbuf_addf(&resume, "%s%" PRId64, sep, t->round_resume);
        strbuf_addf(&covered, "%s%" PRId64, sep, t->pos > t->covered ? t->pos : t->covered);
        strbuf_addf(&lines, "%s%zu", sep, t->nlines);
        strbuf_addf(&bytes, "%s%" PRId64, sep, t->round_bytes);
        strbuf_addf(&eos, "%s%s", sep, t->round_eos ? "t" : "f");
    }
    char *lits[7];
    struct strbuf *cols[] = {&ids, &pids, &resume, &covered, &lines, &bytes, &eos};
    for (int c = 0; c < 7; c++) {
        struct strbuf l = STRBUF_INIT;
        strbuf_addf(&l, "{%s}", cols[c]->buf);
        lits[c] = strbuf_detach(&l, NULL);
        strbuf_release(cols[c]);
    }
    int rc = -1;
    if (rnd.n > 0)
        send_copy(true);
    else if (loom_db_begin(svc->db, &rnd.err) < 0)
        rnd.failed = true;
    if (rnd.failed) {
        *err = rnd.err;
        loom_db_rollback(svc->db);
        goto out;
    }
    PGresult *res = loom_db_query(
        svc->db, err,
        "INSERT INTO log_streams AS s (instance_id, project_id, node, resume_offset, "
        "covered_offset, lines, bytes, eos_at) "
        "SELECT u.id, u.pid, $8, u.r, u.c, u.l, u.b, CASE WHEN u.e THEN now() END "
        "FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], "
        "            $6::bigint[], $7::bool[]) AS u(id, pid, r, c, l, b, e) "
        "ON CONFLICT (instance_id) DO UPDATE SET project_id = EXCLUDED.project_id, "
        "  node = EXCLUDED.node, resume_offset = EXCLUDED.resume_offset, "
        "  covered_offset = EXCLUDED.covered_offset, lines = s.lines + EXCLUDED.lines, "
        "  bytes = s.bytes + EXCLUDED.bytes, eos_at = coalesce(s.eos_at, EXCLUDED.eos_at), "
        "  updated_at = now()",
        lits[0], lits[1], lits[2], lits[3], lits[4], lits[5], lits[6], ls_cfg.node);
    PQclear(res);
    if (!res) {
        loom_db_rollback(svc->db);
        goto out;
    }
    rc = loom_db_commit(svc->db, err);
out:
    for (int c = 0; c < 7; c++)
        free(lits[c]);
    return rc;
}

/* The lines of t in the round, as LogBatches of at most PUBLISH_MAX bytes of
 * lines (a line's text and its other fields; short lines are mostly the
 * latter) that tile [round_from, pos). */
static void publish(struct loom_service *svc, struct tracked *t)
{
    char subject[160];
    snprintf(subject, sizeof(subject), LOOM_SUBJ_LOGS_FMT, t->project, t->id);
    size_t i = t->first_line, end = t->first_line + t->nlines;
    int64_t from = t->round_from;
    do {
        size_t k = i, size = 0;
        while (k < end && (k == i || size + rnd.lines[k].text_len + LINE_PB_MAX <= PUBLISH_MAX)) {
            size += rnd.lines[k].text_len + LINE_PB_MAX;
            k++;
        }
        size_t n = k - i;
        _cleanup_free_ Loom__V1__LogLine *msgs = calloc(n ? n : 1, sizeof(*msgs));
        _cleanup_free_ Loom__V1__LogLine **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
        if (!msgs || !ptrs)
            abort();
        for (size_t m = 0; m < n; m++) {
            const struct round_line *l = &rnd.lines[i + m];
            loom__v1__log_line__init(&msgs[m]);
            msgs[m].ts_unix_ns = l->ts_ns;
            msgs[m].stream = l->stream == LS_STDERR ? LOOM__V1__LOG_STREAM__LOG_STREAM_STDERR
                                                    : LOOM__V1__LOG_STREAM__LOG_STREAM_STDOUT;
            msgs[m].offset = (uint64_t)l->offset;
            msgs[m].text = rnd.texts.buf + l->text_at;
            ptrs[m] = &msgs[m];
        }
        /* a piece ends where the next line starts; the last at what is covered */
        int64_t to = k < end ? rnd.lines[k].offset : t->pos > t->covered ? t->pos : t->covered;
        Loom__V1__LogBatch lb = LOOM__V1__LOG_BATCH__INIT;
        lb.instance_id = t->id;
        lb.project = t->project;
        lb.n_lines = n;
        lb.lines = ptrs;
        lb.from_offset = (uint64_t)from;
        lb.to_offset = (uint64_t)to;
        lb.eos = k == end && t->round_eos;
        struct loom_err err = LOOM_ERR_INIT;
        if (loom_bus_publish(svc->bus, subject, &lb.base, &err) < 0)
            log_warn("could not publish %zu log lines of %s: %s", n, t->id, err.msg);
        from = to;
        i = k;
    } while (i < end);
}

/* Punches out what is stored (not the pending lines' parts): the disk keeps
 * what is not shipped yet, the offsets stay. */
static void punch(struct tracked *t)
{
    int64_t upto = t->resume & ~(int64_t)4095;
    if (!t->can_punch || upto - t->punched < PUNCH_STEP)
        return;
    if (fallocate(t->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)upto) < 0) {
        log_info("%s/container.log: cannot free shipped bytes (%s); the file keeps them", t->dir,
                 strerror(errno));
        t->can_punch = false;
        return;
    }
    t->punched = upto;
}

/* One round over the instances that may have news. */
static void ship_round(struct loom_service *svc, bool all)
{
    int64_t t0 = loom_mono_ms();
    round_reset(svc->db);
    size_t cap = 0, nt = 0;
    for (struct tracked *t = tracked; t; t = t->next)
        cap++;
    _cleanup_free_ struct tracked **ts = calloc(cap + 1, sizeof(*ts));
    if (!ts)
        abort();
    int64_t budget = ROUND_BUDGET;
    for (struct tracked *t = tracked; t && budget > 0 && !rnd.failed; t = t->next) {
        if (t->eos || (!t->dirty && !all))
            continue;
        t->dirty = false;
        /* exited before we read: what the file holds is all there is */
        _cleanup_free_ char *exit_path = NULL;
        if (asprintf(&exit_path, "%s/exit.json", t->dir) < 0)
            abort();
        bool exited = access(exit_path, F_OK) == 0;
        t->first_line = rnd.n;
        t->round_from = t->covered;
        t->round_bytes = 0;
        int64_t used = read_file(t, budget < FILE_BUDGET ? budget : FILE_BUDGET);
        budget -= used;
        if (used >= FILE_BUDGET)
            t->dirty = true; /* more next round */
        struct stat st;
        t->round_eos = exited && !t->in_long_line && fstat(t->fd, &st) == 0 && st.st_size == t->pos;
        if (t->round_eos && !ls_joiner_empty(&t->joiner)) {
            rnd.t = t;
            ls_joiner_flush(&t->joiner, t->pos, take_line, NULL);
        }
        t->nlines = rnd.n - t->first_line;
        t->round_resume = ls_joiner_resume(&t->joiner, t->pos);
        if (t->nlines > 0 || t->round_eos || t->pos != t->covered)
            ts[nt++] = t;
    }
    if (nt == 0)
        return;
    struct loom_err err = LOOM_ERR_INIT;
    if (commit_round(svc, ts, nt, &err) < 0) {
        /* forget the round: read again from what is stored */
        static bool failing;
        if (!failing)
            log_warn("could not store log lines: %s", err.msg);
        failing = true;
        for (size_t i = 0; i < nt; i++) {
            ts[i]->pos = ts[i]->resume;
            ls_joiner_reset(&ts[i]->joiner);
            ts[i]->dirty = true;
            ts[i]->failing = true;
        }
        return;
    }
    size_t lines = 0;
    for (size_t i = 0; i < nt; i++) {
        struct tracked *t = ts[i];
        if (t->failing)
            log_info("storing log lines of %s again", t->id);
        t->failing = false;
        t->resume = t->round_resume;
        t->round_from = t->covered;
        if (t->pos > t->covered)
            t->covered = t->pos;
        t->lines += (int64_t)t->nlines;
        t->bytes += t->round_bytes;
        t->eos = t->round_eos;
        lines += t->nlines;
        publish(svc, t);
        punch(t);
        if (t->eos)
            log_debug("instance %s: its output is all stored (%" PRId64 " lines)", t->id, t->lines);
    }
    loom_metric_add(m_lines, (double)lines);
    loom_metric_add(m_rounds, 1);
    loom_metric_observe(m_round_secs, (double)(loom_mono_ms() - t0) / 1000.0);
}

/* ---- finding instances ------------------------------------------------------------------ */

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

static void scan_all(struct loom_service *svc)
{
    for (struct tracked *t = tracked; t; t = t->next)
        t->seen = false;
    for (size_t i = 0; i < ndirs; i++) {
        if (dir_wds[i] < 0 && inotify_fd >= 0) {
            _cleanup_free_ char *p = NULL;
            if (asprintf(&p, "%s/instances", dirs[i]) < 0)
                abort();
            dir_wds[i] = inotify_add_watch(inotify_fd, p, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
        }
        scan_dir(svc, dirs[i]);
    }
    /* the agent removed an instance: ship what was complete, then forget it */
    bool gone = false;
    for (struct tracked *t = tracked; t; t = t->next)
        if (!t->seen && !t->eos) {
            t->dirty = true;
            gone = true;
        }
    if (gone)
        ship_round(svc, false);
    struct tracked **pp = &tracked;
    while (*pp) {
        struct tracked *t = *pp;
        if (!t->seen) {
            log_info("instance %s is gone; stopped shipping its logs", t->id);
            *pp = t->next;
            tracked_free(t);
            continue;
        }
        pp = &t->next;
    }
}

/* Marks the instances inotify names; true when a new instance dir came. */
static bool read_events(void)
{
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool new_dir = false;
    for (;;) {
        ssize_t n = read(inotify_fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->mask & IN_Q_OVERFLOW) {
                for (struct tracked *t = tracked; t; t = t->next)
                    t->dirty = true;
                new_dir = true;
            }
            for (size_t i = 0; i < ndirs; i++)
                if (ev->wd == dir_wds[i])
                    new_dir = true;
            for (struct tracked *t = tracked; t; t = t->next)
                if (ev->wd == t->wd)
                    t->dirty = true;
            p += sizeof(*ev) + ev->len;
        }
    }
    return new_dir;
}

void ls_tick(struct loom_service *svc)
{
    int64_t now = loom_mono_ms();
    if (now - last_scan_ms >= SCAN_EVERY_MS) {
        last_scan_ms = now;
        scan_all(svc);
        ship_round(svc, true);
    }
    /* wait for news, for a while (the service loop looks at signals after) */
    int64_t until = loom_mono_ms() + WAIT_MS;
    while (!svc->stopping) {
        bool more = false;
        for (struct tracked *t = tracked; t; t = t->next)
            more |= t->dirty && !t->eos;
        int64_t left = until - loom_mono_ms();
        if (!more && left <= 0)
            break;
        struct pollfd p = {inotify_fd, POLLIN, 0};
        if (!more && inotify_fd >= 0 && poll(&p, 1, (int)left) <= 0)
            break;
        if (inotify_fd < 0 && !more)
            break;
        if (inotify_fd >= 0 && read_events()) {
            for (size_t i = 0; i < ndirs; i++)
                scan_dir(svc, dirs[i]);
        }
        ship_round(svc, false);
        if (loom_mono_ms() >= until)
            break;
    }
    ls_retention_tick(svc);
}

int ls_start(struct loom_service *svc, struct loom_err *err)
{
    (void)svc;
    if (!ls_cfg.state_dirs || !*ls_cfg.state_dirs)
        return loom_err_set(err, LOOM_EINVAL,
                            "--agent-state-dir (LOOM_AGENT_STATE_DIR) is required");
    if (!ls_cfg.node || !*ls_cfg.node) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        free(ls_cfg.node);
        ls_cfg.node = strdup(host);
    }
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
        dir_wds = realloc(dir_wds, (ndirs + 1) * sizeof(*dir_wds));
        if (!dirs || !dir_wds || !(dirs[ndirs] = strdup(tok)))
            abort();
        dir_wds[ndirs] = -1;
        ndirs++;
        log_info("shipping logs from %s/instances", tok);
    }
    if (ndirs == 0)
        return loom_err_set(err, LOOM_EINVAL, "--agent-state-dir names no directory");
    chunk = malloc(CHUNK);
    if (!chunk)
        abort();
    strbuf_init(&rnd.copy);
    strbuf_init(&rnd.texts);
    inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (inotify_fd < 0)
        log_warn("no inotify (%s): looking for new lines every second", strerror(errno));
    static const double secs[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
    m_lines = loom_metric_counter("loom_logshipper_lines_total", NULL, "log lines shipped");
    m_bytes =
        loom_metric_counter("loom_logshipper_bytes_total", NULL, "bytes of container.log consumed");
    m_bad = loom_metric_counter("loom_logshipper_malformed_lines_total", NULL,
                                "lines that are not CRI log lines (skipped)");
    m_rounds = loom_metric_counter("loom_logshipper_rounds_total", NULL,
                                   "rounds that stored lines (one COPY and commit each)");
    m_round_secs =
        loom_metric_histogram("loom_logshipper_round_seconds", NULL,
                              "a round's reading, COPY and commit", secs, LOOM_ARRAY_SIZE(secs));
    return ls_retention_start(svc, err);
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
    free(dir_wds);
    dirs = NULL;
    dir_wds = NULL;
    ndirs = 0;
    if (inotify_fd >= 0)
        close(inotify_fd);
    inotify_fd = -1;
    free(chunk);
    chunk = NULL;
    strbuf_release(&rnd.copy);
    strbuf_release(&rnd.texts);
    free(rnd.lines);
    rnd.lines = NULL;
    rnd.cap = rnd.n = 0;
}
