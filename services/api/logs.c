/* GET .../{job_runs,apps,functions}/{name}/logs: the output lines of a
 * resource's instances.
 *
 * Filters: ?instance=ID, ?index=N (job runs), ?stream=stdout|stderr,
 * ?since=TIME|DURATION, ?tail=N. A page (apps and functions: ?limit=,
 * ?after=<next>) or, for a job run, the run's lines index by index.
 *
 * Complete at completion: an instance that has finished has its lines all
 * readable once the logshipper has marked its end of stream (log_streams.
 * eos_at); a read waits for that mark, a few seconds at most, and says which
 * instances may still miss lines and why ("incomplete").
 *
 * ?follow=true streams server-sent events: the lines so far (from
 * PostgreSQL, up to a snapshot of each instance's covered offset), then the
 * logshipper's LogBatches from NATS. Batches tile each instance's file, so a
 * batch that starts past where a follower is has its gap read from
 * PostgreSQL (core NATS may drop messages), and per-instance positions let a
 * line that another node delivers late through. A job run's stream ends
 * (event "end") once the run is over and every instance's output is in. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "strbuf.h"
#include "subjects.h"
#include "util.h"
#include "loom/v1/log.pb-c.h"

#define MAX_LOG_LINES 10000
#define PAGE_LINES 500
#define KEEPALIVE_MS 15000
#define CHECK_EVERY_MS 2000
#define QUEUE_MAX (8 << 20) /* bytes of batches a slow follower may have waiting */
#define TERMINAL_SQL "('succeeded', 'failed', 'stopped', 'lost')"

struct log_kind {
    const char *what;       /* "job run", for messages */
    const char *sql_lookup; /* $1 project id, $2 name -> id (and the run's state) */
    const char *column;     /* the instances column that names it */
    bool is_run;            /* indices and retries; the stream ends with the run */
};

static const struct log_kind kinds[] = {
    {"job run",
     "SELECT id, state FROM job_runs WHERE project_id = $1 AND name = $2 AND build_run_id IS NULL",
     "i.job_run_id", true},
    {"app", "SELECT id, '' FROM apps WHERE project_id = $1 AND name = $2", "i.app_id", false},
    {"function", "SELECT id, '' FROM functions WHERE project_id = $1 AND name = $2",
     "i.function_id", false},
};

struct log_query {
    const struct log_kind *kind;
    char owner[24];
    char instance[37]; /* "" for every instance */
    char index[16];    /* "" for every index */
    char stream[8];    /* "", "stdout" or "stderr" */
    char since_us[24]; /* "" for the beginning */
    int64_t tail;      /* 0: not asked */
    int64_t limit;
    bool follow;
};

/* The conditions the filters put on "i" (instances) and "l" (log_lines), as
 * SQL over parameters $first.. (instance, index, stream, since), in that
 * order; the parameters go to params. */
static void filter_sql(const struct log_query *q, int first, struct strbuf *sql,
                       const char **params)
{
    strbuf_addf(sql,
                " AND ($%d::uuid IS NULL OR i.id = $%d::uuid)"
                " AND ($%d::int IS NULL OR i.array_index = $%d::int)"
                " AND ($%d::text IS NULL OR l.stream = $%d)"
                " AND ($%d::bigint IS NULL OR l.ts >= timestamptz 'epoch' + $%d::bigint * "
                "interval '1 microsecond')",
                first, first, first + 1, first + 1, first + 2, first + 2, first + 3, first + 3);
    params[0] = q->instance[0] ? q->instance : NULL;
    params[1] = q->index[0] ? q->index : NULL;
    params[2] = q->stream[0] ? q->stream : NULL;
    params[3] = q->since_us[0] ? q->since_us : NULL;
}

static int parse_query(struct loom_http_req *req, const struct log_kind *kind,
                       struct log_query *ret, struct loom_err *err)
{
    memset(ret, 0, sizeof(*ret));
    ret->kind = kind;
    ret->limit = 1000;
    const char *v;
    if ((v = loom_http_query(req, "instance"))) {
        if (!loom_is_uuid(v))
            return loom_err_set(err, LOOM_EINVAL,
                                "query parameter \"instance\": \"%.40s\" is not an instance id", v);
        snprintf(ret->instance, sizeof(ret->instance), "%s", v);
    }
    if ((v = loom_http_query(req, "index"))) {
        int64_t idx;
        if (!kind->is_run || loom_parse_int(v, 0, 9999999, &idx) < 0)
            return loom_err_set(err, LOOM_EINVAL,
                                kind->is_run ? "query parameter \"index\": not an array index"
                                             : "query parameter \"index\": only job runs have "
                                               "indices");
        snprintf(ret->index, sizeof(ret->index), "%lld", (long long)idx);
    }
    if ((v = loom_http_query(req, "stream"))) {
        if (strcmp(v, "stdout") != 0 && strcmp(v, "stderr") != 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "query parameter \"stream\": must be stdout or stderr");
        snprintf(ret->stream, sizeof(ret->stream), "%s", v);
    }
    if ((v = loom_http_query(req, "since"))) {
        /* a time, or a duration back from now */
        int64_t ns, ms;
        if (loom_parse_time_param(v, &ns) == 0)
            snprintf(ret->since_us, sizeof(ret->since_us), "%" PRId64, ns / 1000);
        else if (loom_parse_duration_ms(v, &ms) == 0)
            snprintf(ret->since_us, sizeof(ret->since_us), "%" PRId64, (loom_now_ms() - ms) * 1000);
        else
            return loom_err_set(err, LOOM_EINVAL,
                                "query parameter \"since\": \"%.40s\" is neither a time (RFC "
                                "3339, a day) nor a duration (10m, 2h, 1d)",
                                v);
    }
    if ((v = loom_http_query(req, "tail")) && loom_parse_int(v, 1, MAX_LOG_LINES, &ret->tail) < 0)
        return loom_err_set(err, LOOM_EINVAL, "query parameter \"tail\": must be 1 to %d",
                            MAX_LOG_LINES);
    if ((v = loom_http_query(req, "limit")) && loom_parse_int(v, 1, MAX_LOG_LINES, &ret->limit) < 0)
        return loom_err_set(err, LOOM_EINVAL, "query parameter \"limit\": must be 1 to %d",
                            MAX_LOG_LINES);
    if ((v = loom_http_query(req, "follow")) && loom_parse_bool(v, &ret->follow) < 0)
        return loom_err_set(err, LOOM_EINVAL, "query parameter \"follow\": must be true or false");
    return 0;
}

/* ---- complete at completion ------------------------------------------------------------ */

/* Waits (up to wait_ms) until every finished instance of the query has its
 * end of stream marked, and returns in ret the ones that may miss lines:
 * [{"instance","node","reason"}] (an empty array when none). */
static int wait_complete(struct loom_db *db, const struct log_query *q, int64_t wait_ms,
                         json_t **ret, struct loom_err *err)
{
    struct strbuf sql = STRBUF_INIT;
    strbuf_addf(&sql,
                "SELECT i.id, i.node_name, coalesce(n.state, 'lost') = 'lost' OR i.state = 'lost' "
                "FROM instances i LEFT JOIN log_streams s ON s.instance_id = i.id "
                "LEFT JOIN nodes n ON n.name = i.node_name "
                "WHERE %s = $1 AND i.state IN " TERMINAL_SQL " "
                "AND (i.started_at IS NOT NULL OR s.instance_id IS NOT NULL) "
                "AND s.eos_at IS NULL "
                "AND ($2::uuid IS NULL OR i.id = $2::uuid) "
                "AND ($3::int IS NULL OR i.array_index = $3::int) LIMIT 20",
                q->kind->column);
    const char *params[] = {q->owner, q->instance[0] ? q->instance : NULL,
                            q->index[0] ? q->index : NULL};
    int64_t deadline = loom_mono_ms() + wait_ms;
    json_t *out = json_array();
    int rc = 0;
    for (;;) {
        PGresult *res = loom_db_exec(db, sql.buf, 3, params, err);
        if (!res) {
            rc = -1;
            break;
        }
        int n = PQntuples(res), lost = 0;
        for (int r = 0; r < n; r++)
            lost += PQgetvalue(res, r, 2)[0] == 't';
        bool give_up = n == lost || loom_mono_ms() >= deadline;
        if (give_up) {
            for (int r = 0; r < n; r++) {
                bool node_lost = PQgetvalue(res, r, 2)[0] == 't';
                char reason[300];
                if (node_lost)
                    snprintf(reason, sizeof(reason),
                             "node %s is lost: the lines it had not shipped may never arrive",
                             PQgetvalue(res, r, 1));
                else
                    snprintf(reason, sizeof(reason),
                             "node %s has not shipped the end of this instance's output yet "
                             "(waited %lld s): its last lines may be missing",
                             PQgetvalue(res, r, 1), (long long)(wait_ms / 1000));
                json_array_append_new(out,
                                      json_pack("{s:s,s:s,s:s}", "instance", PQgetvalue(res, r, 0),
                                                "node", PQgetvalue(res, r, 1), "reason", reason));
            }
            PQclear(res);
            break;
        }
        PQclear(res);
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    strbuf_release(&sql);
    if (rc < 0) {
        json_decref(out);
        return -1;
    }
    *ret = out;
    return 0;
}

/* ---- lines ---------------------------------------------------------------------------- */

/* One line as JSON: instance, (index, retry), ts, stream, line. */
static json_t *line_json(const struct log_kind *k, const char *inst, const char *index,
                         const char *retry, const char *ts, const char *stream, const char *text)
{
    json_t *o = json_object();
    api_json_set_str(o, "instance", inst);
    if (k->is_run) {
        api_json_set_int(o, "index", index);
        api_json_set_int(o, "retry", retry);
    }
    api_json_set_str(o, "ts", ts);
    api_json_set_str(o, "stream", stream);
    api_json_set_str(o, "line", text);
    return o;
}

/* Wraps SQL, a query of log lines, so that it gives the last $PARAM of them,
 * in time order. */
static void only_last(struct strbuf *sql, int param)
{
    struct strbuf t = STRBUF_INIT;
    strbuf_addf(&t,
                "SELECT * FROM (%s ORDER BY l.ts DESC, l.instance_id DESC, l.\"offset\" "
                "DESC LIMIT $%d) x ORDER BY 7, 1, 8",
                sql->buf, param);
    strbuf_release(sql);
    *sql = t;
}

enum { L_INST, L_INDEX, L_RETRY, L_TS, L_STREAM, L_LINE, L_TS_US, L_OFFSET };
#define LINE_COLS                                                                                  \
    "l.instance_id, i.array_index, i.retry, " API_TS("l.ts") ", l.stream, l.line, "                \
                                                             "(extract(epoch FROM l.ts) * "        \
                                                             "1000000)::bigint, l.\"offset\""

static void reply_page(struct loom_http_req *req, struct loom_db *db, const struct log_query *q,
                       json_t *incomplete)
{
    struct loom_err err = LOOM_ERR_INIT;
    const char *after = loom_http_query(req, "after");
    /* cursor: "<epoch microseconds>|<instance uuid>|<offset>" as a token */
    char cur[128] = "", *ts = NULL, *inst = NULL, *off = NULL;
    if (after && *after && !q->kind->is_run) {
        char *save = NULL;
        if (api_page_token_decode(after, cur, sizeof(cur)) < 0 ||
            !(ts = strtok_r(cur, "|", &save)) || !(inst = strtok_r(NULL, "|", &save)) ||
            !(off = strtok_r(NULL, "|", &save))) {
            loom_err_set(&err, LOOM_EINVAL,
                         "query parameter \"after\": not a cursor from \"next\"");
            json_decref(incomplete);
            API_FAIL(req, &err);
        }
    }
    struct strbuf sql = STRBUF_INIT;
    const char *params[9];
    params[0] = q->owner;
    strbuf_addf(&sql,
                "SELECT " LINE_COLS " FROM log_lines l JOIN instances i ON i.id = "
                "l.instance_id WHERE %s = $1",
                q->kind->column);
    filter_sql(q, 2, &sql, params + 1);
    char lim[24];
    int np = 5;
    if (q->tail) {
        /* the last lines, in time order */
        snprintf(lim, sizeof(lim), "%lld", (long long)q->tail);
        only_last(&sql, 6);
        params[np++] = lim;
    } else if (q->kind->is_run) {
        /* a run's lines index by index, each try in turn */
        snprintf(lim, sizeof(lim), "%d", MAX_LOG_LINES + 1);
        strbuf_addstr(&sql, " ORDER BY i.array_index, i.created_at, l.\"offset\" LIMIT $6");
        params[np++] = lim;
    } else {
        snprintf(lim, sizeof(lim), "%lld", (long long)q->limit);
        strbuf_addstr(&sql, " AND ($6::bigint IS NULL OR (l.ts, l.instance_id, l.\"offset\") > "
                            "(timestamptz 'epoch' + $6::bigint * interval '1 microsecond', "
                            "$7::uuid, $8::bigint)) ORDER BY l.ts, l.instance_id, l.\"offset\" "
                            "LIMIT $9");
        params[np++] = ts;
        params[np++] = inst;
        params[np++] = off;
        params[np++] = lim;
    }
    _cleanup_pgres_ PGresult *res = loom_db_exec(db, sql.buf, np, params, &err);
    strbuf_release(&sql);
    if (!res) {
        json_decref(incomplete);
        API_FAIL(req, &err);
    }
    _cleanup_json_ json_t *out = json_object();
    json_t *lines = json_array();
    json_object_set_new(out, "lines", lines);
    int n = PQntuples(res);
    int shown = q->kind->is_run && !q->tail && n > MAX_LOG_LINES ? MAX_LOG_LINES : n;
    for (int r = 0; r < shown; r++)
        json_array_append_new(
            lines, line_json(q->kind, loom_db_val(res, r, L_INST), loom_db_val(res, r, L_INDEX),
                             loom_db_val(res, r, L_RETRY), loom_db_val(res, r, L_TS),
                             loom_db_val(res, r, L_STREAM), loom_db_val(res, r, L_LINE)));
    if (q->kind->is_run) {
        if (n > shown)
            json_object_set_new(out, "truncated", json_true());
    } else if (n > 0) {
        char c[128];
        snprintf(c, sizeof(c), "%s|%s|%s", PQgetvalue(res, n - 1, L_TS_US),
                 PQgetvalue(res, n - 1, L_INST), PQgetvalue(res, n - 1, L_OFFSET));
        _cleanup_free_ char *tok = api_page_token(c);
        json_object_set_new(out, "next", json_string(tok));
    } else {
        json_object_set_new(out, "next", json_string(after ? after : ""));
    }
    json_object_set_new(out, "incomplete", incomplete);
    loom_http_reply_json(req, 200, TAKE_PTR(out));
}

/* ---- following ---------------------------------------------------------------------------- */

struct queued {
    struct queued *next;
    size_t len;
    uint8_t data[]; /* a packed LogBatch */
};

struct inst {
    struct inst *next;
    char id[37];
    char index[16], retry[16]; /* "" when none */
    bool member;               /* of the query's selection (and filters) */
    bool eos;
    int64_t covered; /* every line below this offset was sent (or filtered out) */
    int64_t bound;   /* history: lines below this offset (the snapshot) */
};

struct follower {
    /* under reg_mu */
    struct loom_http_stream *stream;
    struct follower *next;
    /* under mu: what the NATS handler queued */
    pthread_mutex_t mu;
    struct queued *head, *tail;
    size_t queued;
    bool overflow;
    /* the server thread's */
    struct log_query q;
    char project[64];
    bool history_done, ended, run_over;
    bool hist_started;
    char hist_ts[24], hist_inst[37], hist_off[24];
    struct inst *insts;
    int64_t last_write_ms, last_check_ms;
};

struct project_sub {
    char project[64];
    struct follower *followers;
    struct project_sub *next;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct project_sub *subs;

static struct inst *inst_find(struct follower *f, const char *id)
{
    for (struct inst *i = f->insts; i; i = i->next)
        if (strcmp(i->id, id) == 0)
            return i;
    return NULL;
}

static struct inst *inst_add(struct follower *f, const char *id, bool member, const char *index,
                             const char *retry)
{
    struct inst *i = calloc(1, sizeof(*i));
    if (!i)
        abort();
    snprintf(i->id, sizeof(i->id), "%s", id);
    snprintf(i->index, sizeof(i->index), "%s", index ? index : "");
    snprintf(i->retry, sizeof(i->retry), "%s", retry ? retry : "");
    i->member = member;
    i->next = f->insts;
    f->insts = i;
    return i;
}

static void sse_line(struct follower *f, struct strbuf *out, const struct inst *in, const char *ts,
                     const char *stream, const char *text)
{
    json_t *o = line_json(f->q.kind, in->id, in->index[0] ? in->index : NULL,
                          in->retry[0] ? in->retry : NULL, ts, stream, text);
    _cleanup_free_ char *s = loom_json_dumps(o);
    json_decref(o);
    strbuf_addf(out, "data: %s\n\n", s);
}

/* The NATS handler: a batch of some instance of the project, for each of
 * its followers (the server thread decides what it is). */
static void on_batch(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    struct project_sub *ps = arg;
    int len = natsMsg_GetDataLength(msg);
    const char *data = natsMsg_GetData(msg);
    if (len <= 0 || !data)
        return;
    pthread_mutex_lock(&reg_mu);
    for (struct follower *f = ps->followers; f; f = f->next) {
        pthread_mutex_lock(&f->mu);
        if (f->queued + (size_t)len > QUEUE_MAX) {
            f->overflow = true; /* it reads its gaps from PostgreSQL */
        } else {
            struct queued *q = malloc(sizeof(*q) + (size_t)len);
            if (!q)
                abort();
            q->next = NULL;
            q->len = (size_t)len;
            memcpy(q->data, data, (size_t)len);
            if (f->tail)
                f->tail->next = q;
            else
                f->head = q;
            f->tail = q;
            f->queued += (size_t)len;
        }
        pthread_mutex_unlock(&f->mu);
        if (f->stream)
            loom_http_stream_wake(f->stream);
    }
    pthread_mutex_unlock(&reg_mu);
}

/* Registers f under its project, subscribing to the project's batches the
 * first time (the subscription stays). */
static int follow_register(struct follower *f, struct loom_http_stream *s, struct loom_err *err)
{
    pthread_mutex_lock(&reg_mu);
    struct project_sub *ps = subs;
    while (ps && strcmp(ps->project, f->project) != 0)
        ps = ps->next;
    if (!ps) {
        ps = calloc(1, sizeof(*ps));
        if (!ps)
            abort();
        snprintf(ps->project, sizeof(ps->project), "%s", f->project);
        char subject[128];
        snprintf(subject, sizeof(subject), LOOM_SUBJ_LOGS_FMT, f->project, "*");
        struct loom_service *svc = loom_service_current();
        if (!svc || loom_bus_subscribe(svc->bus, subject, NULL, on_batch, ps, err) < 0) {
            pthread_mutex_unlock(&reg_mu);
            free(ps);
            return svc ? -1 : loom_err_set(err, LOOM_EUNAVAIL, "the service is stopping");
        }
        ps->next = subs;
        subs = ps;
    }
    f->stream = s;
    f->next = ps->followers;
    ps->followers = f;
    pthread_mutex_unlock(&reg_mu);
    return 0;
}

static void follower_free(struct follower *f)
{
    while (f->head) {
        struct queued *q = f->head;
        f->head = q->next;
        free(q);
    }
    while (f->insts) {
        struct inst *i = f->insts;
        f->insts = i->next;
        free(i);
    }
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void follow_done(void *arg)
{
    struct follower *f = arg;
    pthread_mutex_lock(&reg_mu);
    for (struct project_sub *ps = subs; ps; ps = ps->next)
        for (struct follower **pp = &ps->followers; *pp; pp = &(*pp)->next)
            if (*pp == f) {
                *pp = f->next;
                goto found;
            }
found:
    f->stream = NULL;
    pthread_mutex_unlock(&reg_mu);
    follower_free(f);
}

/* The instances of the selection now: id, index, retry, the offset up to
 * which their lines are stored, whether their end of stream is marked, and
 * whether they are over (finished, and their output all in, or never to
 * come: never started, or on a lost node). */
enum { S_ID, S_INDEX, S_RETRY, S_COVERED, S_EOS, S_OVER };
static PGresult *instances_now(struct loom_db *db, const struct follower *f, struct loom_err *err)
{
    struct strbuf sql = STRBUF_INIT;
    strbuf_addf(&sql,
                "SELECT i.id, i.array_index, i.retry, coalesce(s.covered_offset, 0), "
                "s.eos_at IS NOT NULL, i.state IN " TERMINAL_SQL
                " AND (s.eos_at IS NOT NULL OR (i.started_at IS NULL AND s.instance_id IS NULL) "
                "OR i.state = 'lost' OR coalesce(n.state, 'lost') = 'lost') "
                "FROM instances i LEFT JOIN log_streams s ON s.instance_id = i.id "
                "LEFT JOIN nodes n ON n.name = i.node_name WHERE %s = $1 "
                "AND ($2::uuid IS NULL OR i.id = $2::uuid) "
                "AND ($3::int IS NULL OR i.array_index = $3::int)",
                f->q.kind->column);
    const char *params[] = {f->q.owner, f->q.instance[0] ? f->q.instance : NULL,
                            f->q.index[0] ? f->q.index : NULL};
    PGresult *res = loom_db_exec(db, sql.buf, 3, params, err);
    strbuf_release(&sql);
    return res;
}

/* What the history holds: the instances now, below their stored offsets. */
static int snapshot(struct loom_db *db, struct follower *f, struct loom_err *err)
{
    PGresult *res = instances_now(db, f, err);
    if (!res)
        return -1;
    for (int r = 0; r < PQntuples(res); r++) {
        struct inst *i = inst_add(f, PQgetvalue(res, r, S_ID), true, loom_db_val(res, r, S_INDEX),
                                  loom_db_val(res, r, S_RETRY));
        i->bound = i->covered = strtoll(PQgetvalue(res, r, S_COVERED), NULL, 10);
        i->eos = PQgetvalue(res, r, S_EOS)[0] == 't';
    }
    PQclear(res);
    return 0;
}

/* The bounds of the snapshot as two array literals. */
static void bounds(struct follower *f, struct strbuf *ids, struct strbuf *offs)
{
    strbuf_addch(ids, '{');
    strbuf_addch(offs, '{');
    for (struct inst *i = f->insts; i; i = i->next) {
        if (!i->member || i->bound == 0)
            continue;
        if (ids->len > 1) {
            strbuf_addch(ids, ',');
            strbuf_addch(offs, ',');
        }
        strbuf_addstr(ids, i->id);
        strbuf_addf(offs, "%" PRId64, i->bound);
    }
    strbuf_addch(ids, '}');
    strbuf_addch(offs, '}');
}

/* The next page of history (or, with tail, all of it); history_done once
 * it is all out. */
static int history_page(struct loom_db *db, struct follower *f, struct strbuf *out,
                        struct loom_err *err)
{
    struct strbuf ids = STRBUF_INIT, offs = STRBUF_INIT, sql = STRBUF_INIT;
    bounds(f, &ids, &offs);
    const char *params[10] = {ids.buf, offs.buf};
    strbuf_addstr(&sql, "SELECT " LINE_COLS " FROM log_lines l JOIN unnest($1::uuid[], "
                        "$2::bigint[]) b(id, lim) ON l.instance_id = b.id AND l.\"offset\" < "
                        "b.lim JOIN instances i ON i.id = l.instance_id WHERE true");
    filter_sql(&f->q, 3, &sql, params + 2);
    char lim[24];
    int np = 6;
    if (f->q.tail) {
        snprintf(lim, sizeof(lim), "%lld", (long long)f->q.tail);
        only_last(&sql, 7);
        params[np++] = lim;
    } else {
        snprintf(lim, sizeof(lim), "%d", PAGE_LINES);
        strbuf_addstr(&sql, " AND ($7::bigint IS NULL OR (l.ts, l.instance_id, l.\"offset\") > "
                            "(timestamptz 'epoch' + $7::bigint * interval '1 microsecond', "
                            "$8::uuid, $9::bigint)) ORDER BY l.ts, l.instance_id, l.\"offset\" "
                            "LIMIT $10");
        params[np++] = f->hist_started ? f->hist_ts : NULL;
        params[np++] = f->hist_started ? f->hist_inst : NULL;
        params[np++] = f->hist_started ? f->hist_off : NULL;
        params[np++] = lim;
    }
    PGresult *res = loom_db_exec(db, sql.buf, np, params, err);
    strbuf_release(&sql);
    strbuf_release(&ids);
    strbuf_release(&offs);
    if (!res)
        return -1;
    int n = PQntuples(res);
    for (int r = 0; r < n; r++) {
        struct inst *i = inst_find(f, PQgetvalue(res, r, L_INST));
        if (i)
            sse_line(f, out, i, PQgetvalue(res, r, L_TS), PQgetvalue(res, r, L_STREAM),
                     PQgetvalue(res, r, L_LINE));
    }
    if (n > 0) {
        f->hist_started = true;
        snprintf(f->hist_ts, sizeof(f->hist_ts), "%s", PQgetvalue(res, n - 1, L_TS_US));
        snprintf(f->hist_inst, sizeof(f->hist_inst), "%s", PQgetvalue(res, n - 1, L_INST));
        snprintf(f->hist_off, sizeof(f->hist_off), "%s", PQgetvalue(res, n - 1, L_OFFSET));
    }
    f->history_done = f->q.tail || n < PAGE_LINES;
    PQclear(res);
    return 0;
}

/* Lines of i from its covered offset up to upto (INT64_MAX: all stored), from
 * PostgreSQL; moves covered. */
static int catch_up(struct loom_db *db, struct follower *f, struct inst *i, int64_t upto,
                    struct strbuf *out, struct loom_err *err)
{
    char from[24], to[24];
    snprintf(from, sizeof(from), "%" PRId64, i->covered);
    snprintf(to, sizeof(to), "%" PRId64, upto);
    struct strbuf sql = STRBUF_INIT;
    strbuf_addstr(&sql, "SELECT " LINE_COLS " FROM log_lines l JOIN instances i ON i.id = "
                        "l.instance_id WHERE l.instance_id = $1::uuid AND l.\"offset\" >= $2 AND "
                        "l.\"offset\" < $3");
    const char *params[7] = {i->id, from, to};
    filter_sql(&f->q, 4, &sql, params + 3);
    strbuf_addstr(&sql, " ORDER BY l.\"offset\"");
    PGresult *res = loom_db_exec(db, sql.buf, 7, params, err);
    strbuf_release(&sql);
    if (!res)
        return -1;
    int n = PQntuples(res);
    for (int r = 0; r < n; r++)
        sse_line(f, out, i, PQgetvalue(res, r, L_TS), PQgetvalue(res, r, L_STREAM),
                 PQgetvalue(res, r, L_LINE));
    if (n > 0) {
        int64_t last = strtoll(PQgetvalue(res, n - 1, L_OFFSET), NULL, 10) + 1;
        if (last > i->covered)
            i->covered = last;
    }
    if (upto != INT64_MAX && upto > i->covered)
        i->covered = upto;
    PQclear(res);
    return 0;
}

/* An instance a batch names that the follower has not met: in the
 * selection (a new app instance, a new try of an index) or not. */
static struct inst *meet(struct loom_db *db, struct follower *f, const char *id,
                         struct loom_err *err)
{
    struct strbuf sql = STRBUF_INIT;
    strbuf_addf(&sql,
                "SELECT i.array_index, i.retry FROM instances i WHERE i.id = $1::uuid AND %s = $2 "
                "AND ($3::uuid IS NULL OR i.id = $3::uuid) "
                "AND ($4::int IS NULL OR i.array_index = $4::int)",
                f->q.kind->column);
    const char *params[] = {id, f->q.owner, f->q.instance[0] ? f->q.instance : NULL,
                            f->q.index[0] ? f->q.index : NULL};
    PGresult *res = loom_db_exec(db, sql.buf, 4, params, err);
    strbuf_release(&sql);
    if (!res)
        return NULL;
    struct inst *i = PQntuples(res)
                         ? inst_add(f, id, true, loom_db_val(res, 0, 0), loom_db_val(res, 0, 1))
                         : inst_add(f, id, false, NULL, NULL);
    PQclear(res);
    return i;
}

static bool line_passes(const struct follower *f, const Loom__V1__LogLine *l)
{
    if (f->q.stream[0]) {
        bool err_stream = l->stream == LOOM__V1__LOG_STREAM__LOG_STREAM_STDERR;
        if (err_stream != (strcmp(f->q.stream, "stderr") == 0))
            return false;
    }
    if (f->q.since_us[0] && l->ts_unix_ns / 1000 < strtoll(f->q.since_us, NULL, 10))
        return false;
    return true;
}

static int take_batch(struct loom_db *db, struct follower *f, const struct queued *qd,
                      struct strbuf *out, struct loom_err *err)
{
    Loom__V1__LogBatch *b = loom__v1__log_batch__unpack(NULL, qd->len, qd->data);
    if (!b || !loom_is_uuid(b->instance_id)) {
        if (b)
            loom__v1__log_batch__free_unpacked(b, NULL);
        return 0;
    }
    int rc = 0;
    struct inst *i = inst_find(f, b->instance_id);
    if (!i)
        i = meet(db, f, b->instance_id, err);
    if (!i) {
        rc = -1;
    } else if (i->member) {
        int64_t from = (int64_t)b->from_offset, to = (int64_t)b->to_offset;
        /* a gap (a batch lost, or sent before we listened): PostgreSQL has it */
        if (from > i->covered && catch_up(db, f, i, from, out, err) < 0) {
            rc = -1;
        } else if (to > i->covered) {
            for (size_t k = 0; k < b->n_lines; k++) {
                const Loom__V1__LogLine *l = b->lines[k];
                if ((int64_t)l->offset < i->covered || !line_passes(f, l))
                    continue;
                char ts[32];
                loom_format_time_ms(l->ts_unix_ns / 1000000, ts);
                sse_line(f, out, i, ts,
                         l->stream == LOOM__V1__LOG_STREAM__LOG_STREAM_STDERR ? "stderr" : "stdout",
                         l->text);
            }
            i->covered = to;
        }
        if (b->eos)
            i->eos = true;
    }
    loom__v1__log_batch__free_unpacked(b, NULL);
    return rc;
}

/* Every so often, and after an overflow: what PostgreSQL has that did not
 * come through NATS; and whether a run's stream is over. */
static int check(struct loom_db *db, struct follower *f, struct strbuf *out, struct loom_err *err)
{
    f->last_check_ms = loom_mono_ms();
    PGresult *res = instances_now(db, f, err);
    if (!res)
        return -1;
    bool all_done = true;
    int rc = 0;
    for (int r = 0; r < PQntuples(res) && rc == 0; r++) {
        const char *id = PQgetvalue(res, r, S_ID);
        struct inst *i = inst_find(f, id);
        if (!i)
            i = inst_add(f, id, true, loom_db_val(res, r, S_INDEX), loom_db_val(res, r, S_RETRY));
        i->member = true;
        int64_t stored = strtoll(PQgetvalue(res, r, S_COVERED), NULL, 10);
        if (stored > i->covered)
            rc = catch_up(db, f, i, stored, out, err);
        if (PQgetvalue(res, r, S_EOS)[0] == 't')
            i->eos = true;
        all_done &= PQgetvalue(res, r, S_OVER)[0] == 't';
    }
    PQclear(res);
    if (rc < 0)
        return -1;
    /* a run (or one instance) whose output is all out: the stream ends */
    bool bounded = f->q.kind->is_run || f->q.instance[0];
    if (bounded && all_done) {
        bool over = true;
        if (f->q.kind->is_run) {
            _cleanup_pgres_ PGresult *run =
                loom_db_query(db, err,
                              "SELECT state IN ('completed', 'failed', 'cancelled') FROM job_runs "
                              "WHERE id = $1",
                              f->q.owner);
            if (!run)
                return -1;
            over = PQntuples(run) == 0 || PQgetvalue(run, 0, 0)[0] == 't';
        }
        if (over) {
            strbuf_addstr(out, "event: end\ndata: {\"reason\":\"every instance has exited and "
                               "all it wrote is here\"}\n\n");
            f->ended = true;
        }
    }
    return 0;
}

static int follow_fill(void *arg, struct strbuf *out)
{
    struct follower *f = arg;
    if (f->ended)
        return -1;
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = loom_service_thread_db(&err);
    if (!db)
        goto failed;
    if (!f->history_done) {
        if (history_page(db, f, out, &err) < 0)
            goto failed;
        if (f->history_done && check(db, f, out, &err) < 0)
            goto failed;
    } else {
        pthread_mutex_lock(&f->mu);
        struct queued *q = f->head;
        bool overflow = f->overflow;
        f->head = f->tail = NULL;
        f->queued = 0;
        f->overflow = false;
        pthread_mutex_unlock(&f->mu);
        int rc = 0;
        while (q) {
            struct queued *next = q->next;
            if (rc == 0)
                rc = take_batch(db, f, q, out, &err);
            free(q);
            q = next;
        }
        if (rc < 0)
            goto failed;
        bool eos_seen = false;
        for (struct inst *i = f->insts; i; i = i->next)
            eos_seen |= i->member && i->eos;
        if ((overflow || eos_seen || loom_mono_ms() - f->last_check_ms >= CHECK_EVERY_MS) &&
            check(db, f, out, &err) < 0)
            goto failed;
    }
    if (out->len) {
        f->last_write_ms = loom_mono_ms();
    } else if (loom_mono_ms() - f->last_write_ms >= KEEPALIVE_MS) {
        /* also how a client that left is found out */
        strbuf_addstr(out, ": keepalive\n\n");
        f->last_write_ms = loom_mono_ms();
    }
    return f->ended && !out->len ? -1 : 1 - !out->len;
failed:
    log_warn("following logs: %s", err.msg);
    return LOOM_HTTP_STREAM_ABORT;
}

void api_logs_heartbeat(void)
{
    pthread_mutex_lock(&reg_mu);
    for (struct project_sub *ps = subs; ps; ps = ps->next)
        for (struct follower *f = ps->followers; f; f = f->next)
            if (f->stream)
                loom_http_stream_wake(f->stream);
    pthread_mutex_unlock(&reg_mu);
}

static void follow(struct loom_http_req *req, struct loom_db *db, const struct api_project *p,
                   const struct log_query *q)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct follower *f = calloc(1, sizeof(*f));
    if (!f)
        abort();
    pthread_mutex_init(&f->mu, NULL);
    f->q = *q;
    snprintf(f->project, sizeof(f->project), "%s", p->name);
    f->last_write_ms = f->last_check_ms = loom_mono_ms();
    /* listen first, then look: a batch stored after the snapshot comes
     * through NATS, one stored before is in the history */
    struct loom_http_stream *s =
        loom_http_reply_stream(req, 200, "text/event-stream", follow_fill, follow_done, f);
    if (!s)
        return; /* follow_done freed f */
    if (follow_register(f, s, &err) < 0 || snapshot(db, f, &err) < 0) {
        log_warn("following logs: %s", err.msg);
        f->ended = true; /* the stream ends at its first read */
        loom_http_stream_wake(s);
    }
}

static void api_logs(struct loom_http_req *req, int kind_index)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db;
    struct api_caller caller;
    struct api_project proj;
    const struct log_kind *k = &kinds[kind_index];
    struct log_query q;
    if (api_begin(req, true, &db, &caller, &proj, &err) < 0 || parse_query(req, k, &q, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_pgres_ PGresult *owner =
        loom_db_query(db, &err, k->sql_lookup, proj.id_str, req->params[1]);
    if (!owner)
        API_FAIL(req, &err);
    if (PQntuples(owner) == 0) {
        loom_err_set(&err, LOOM_ENOTFOUND, "%s \"%s\" not found", k->what, req->params[1]);
        API_FAIL(req, &err);
    }
    snprintf(q.owner, sizeof(q.owner), "%s", PQgetvalue(owner, 0, 0));
    if (q.follow) {
        follow(req, db, &proj, &q);
        return;
    }
    json_t *incomplete = NULL;
    if (wait_complete(db, &q, api_cfg.logs_wait_ms, &incomplete, &err) < 0)
        API_FAIL(req, &err);
    reply_page(req, db, &q, incomplete);
}

void api_jobruns_logs(struct loom_http_req *req)
{
    api_logs(req, 0);
}

void api_apps_logs(struct loom_http_req *req)
{
    api_logs(req, 1);
}

void api_functions_logs(struct loom_http_req *req)
{
    api_logs(req, 2);
}
