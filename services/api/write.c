/* The write path: one transaction per request holding the change, its
 * outbox events and its idempotency record, so that they commit together. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "cleanup.h"
#include "json.h"
#include "log.h"
#include "service.h"
#include "strbuf.h"
#include "subjects.h"
#include "util.h"

#define IDEM_MAX_LEN 255
#define OUTBOX_BATCH "100"

/* The Idempotency-Key value: an sf-string ("...") or, leniently, a bare
 * token; printable ASCII, at most IDEM_MAX_LEN. */
static int idem_key(const char *h, char *out, size_t outsz, struct loom_err *err)
{
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
        h++;
        n -= 2;
    }
    if (n == 0 || n > IDEM_MAX_LEN || n >= outsz)
        return loom_err_set(err, LOOM_EINVAL,
                            "header \"Idempotency-Key\": must be 1 to %d characters", IDEM_MAX_LEN);
    for (size_t i = 0; i < n; i++)
        if (!isprint((unsigned char)h[i]) || h[i] == '"' || h[i] == '\\')
            return loom_err_set(err, LOOM_EINVAL,
                                "header \"Idempotency-Key\": only printable characters are "
                                "allowed (a UUID is best)");
    memcpy(out, h, n);
    out[n] = '\0';
    return 0;
}

/* Takes the idempotency record inside the transaction. A concurrent request
 * with the same key blocks on the primary key until this one commits or
 * rolls back, so it then sees the finished reply (or takes over). Sets
 * *ret_replayed when an earlier reply was sent instead. */
static int idem_take(struct api_ctx *ctx, const char *key, const char *fingerprint,
                     bool *ret_replayed, struct loom_err *err)
{
    _cleanup_pgres_ PGresult *old =
        loom_db_query(ctx->db, err,
                      "DELETE FROM idempotency_keys WHERE key_id = $1 AND idem_key = $2 "
                      "AND created_at < now() - interval '24 hours'",
                      ctx->caller.key_id, key);
    if (!old)
        return -1;
    _cleanup_pgres_ PGresult *ins = loom_db_query(
        ctx->db, err,
        "INSERT INTO idempotency_keys (key_id, idem_key, fingerprint) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        ctx->caller.key_id, key, fingerprint);
    if (!ins)
        return -1;
    if (PQntuples(ins) == 1) {
        *ret_replayed = false;
        return 0;
    }
    _cleanup_pgres_ PGresult *res =
        loom_db_query(ctx->db, err,
                      "SELECT fingerprint, status, content_type, response FROM idempotency_keys "
                      "WHERE key_id = $1 AND idem_key = $2",
                      ctx->caller.key_id, key);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_ERETRY, "Idempotency-Key record vanished: try again");
    if (strcmp(PQgetvalue(res, 0, 0), fingerprint) != 0)
        return loom_err_set(err, LOOM_EUNPROC,
                            "Idempotency-Key \"%s\" was already used for a different request", key);
    if (PQgetisnull(res, 0, 1))
        return loom_err_set(err, LOOM_ECONFLICT,
                            "a request with Idempotency-Key \"%s\" is still in progress", key);
    loom_db_rollback(ctx->db);
    const char *resp = loom_db_val(res, 0, 3);
    loom_http_set_header(ctx->req, "Idempotent-Replayed", "true");
    loom_http_reply(ctx->req, atoi(PQgetvalue(res, 0, 1)), loom_db_val(res, 0, 2), resp,
                    resp ? strlen(resp) : 0);
    *ret_replayed = true;
    return 0;
}

static int idem_store(struct api_ctx *ctx, const char *key, int status, const char *body,
                      struct loom_err *err)
{
    char st[16];
    snprintf(st, sizeof(st), "%d", status);
    _cleanup_pgres_ PGresult *res =
        loom_db_query(ctx->db, err,
                      "UPDATE idempotency_keys SET status = $3, content_type = $4, response = $5 "
                      "WHERE key_id = $1 AND idem_key = $2",
                      ctx->caller.key_id, key, st, body ? "application/json" : NULL, body);
    return res ? 0 : -1;
}

static int write_tx(struct api_ctx *ctx, api_write_fn fn, const char *key, int *ret_status,
                    char **ret_text, bool *ret_replayed, struct loom_err *err)
{
    if (key) {
        _cleanup_strbuf_ struct strbuf fp = STRBUF_INIT;
        strbuf_addf(&fp, "%s\n%s\n", ctx->req->method, ctx->req->path);
        strbuf_add(&fp, ctx->req->body, ctx->req->body_len);
        char hex[65];
        loom_sha256_hex(fp.buf, fp.len, hex);
        if (idem_take(ctx, key, hex, ret_replayed, err) < 0)
            return -1;
        if (*ret_replayed)
            return 0;
    }
    int status = 200;
    _cleanup_json_ json_t *out = NULL;
    if (fn(ctx, &status, &out, err) < 0) {
        /* a failure that forgot to say why is still a failure, not a 200 */
        if (err->code == LOOM_OK)
            loom_err_set(err, LOOM_EINTERNAL, "the request failed without a reason");
        return -1;
    }
    _cleanup_free_ char *text = out ? loom_json_dumps(out) : NULL;
    if (key && out && ctx->redact && json_object_get(out, ctx->redact)) {
        /* a secret shown once is not kept in the clear for a replay */
        _cleanup_json_ json_t *kept = json_deep_copy(out);
        json_object_set_new(kept, ctx->redact, json_string("(shown only in the first reply)"));
        _cleanup_free_ char *kept_text = loom_json_dumps(kept);
        if (idem_store(ctx, key, status, kept_text, err) < 0)
            return -1;
    } else if (key && idem_store(ctx, key, status, text, err) < 0) {
        return -1;
    }
    if (loom_db_commit(ctx->db, err) < 0)
        return -1;
    *ret_status = status;
    *ret_text = TAKE_PTR(text);
    return 0;
}

void api_write(struct loom_http_req *req, bool with_project, api_write_fn fn)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct api_ctx ctx = {.req = req};
    if (api_begin(req, with_project, &ctx.db, &ctx.caller, &ctx.project, &err) < 0)
        API_FAIL(req, &err);
    _cleanup_json_ json_t *body = NULL;
    if (req->body_len > 0 || strcmp(req->method, "DELETE") != 0) {
        /* action POSTs (cancel) may come without a body */
        body = req->body_len > 0 ? loom_http_body_json(req, &err) : json_object();
        if (!body)
            API_FAIL(req, &err);
    } else {
        body = json_object();
    }
    ctx.body = body;
    char key[IDEM_MAX_LEN + 1];
    const char *h =
        strcmp(req->method, "POST") == 0 ? loom_http_header(req, "Idempotency-Key") : NULL;
    if (h && idem_key(h, key, sizeof(key), &err) < 0)
        API_FAIL(req, &err);
    if (loom_db_begin(ctx.db, &err) < 0)
        API_FAIL(req, &err);
    int status = 0;
    _cleanup_free_ char *text = NULL;
    bool replayed = false;
    if (write_tx(&ctx, fn, h ? key : NULL, &status, &text, &replayed, &err) < 0) {
        loom_db_rollback(ctx.db);
        API_FAIL(req, &err);
    }
    if (replayed)
        return;
    if (ctx.wake_scheduler)
        api_wake_scheduler();
    if (ctx.events && loom_service_current())
        loom_service_wake(loom_service_current());
    if (text)
        loom_http_reply(req, status, "application/json", text, strlen(text));
    else
        loom_http_reply(req, status, NULL, NULL, 0);
}

int api_event(struct api_ctx *ctx, const char *kind, const char *action, const char *name,
              json_t *data, struct loom_err *err)
{
    char id[37], type[96], source[256], subject[256];
    loom_uuid4(id);
    snprintf(type, sizeof(type), "dev.loom.%s.%s", kind, action);
    snprintf(source, sizeof(source), "/v1/projects/%s", ctx->project.name);
    snprintf(subject, sizeof(subject), LOOM_SUBJ_EVENTS_FMT, ctx->project.name, kind);
    char now[32];
    loom_format_time_ms(loom_now_ms(), now);
    _cleanup_json_ json_t *ev =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "specversion", "1.0", "id", id, "source", source,
                  "type", type, "subject", name, "time", now);
    if (!ev)
        return loom_err_set(err, LOOM_EINTERNAL, "could not build event %s", type);
    if (data) {
        json_object_set_new(ev, "datacontenttype", json_string("application/json"));
        json_object_set(ev, "data", data);
    }
    _cleanup_free_ char *text = loom_json_dumps(ev);
    _cleanup_pgres_ PGresult *res = loom_db_query(
        ctx->db, err, "INSERT INTO outbox (subject, event) VALUES ($1, $2::jsonb)", subject, text);
    if (!res)
        return -1;
    ctx->events = true;
    return 0;
}

int api_outbox_publish(struct loom_db *db, struct loom_err *err)
{
    struct loom_service *svc = loom_service_current();
    if (!svc || !svc->bus || !loom_bus_connected(svc->bus))
        return 0;
    if (loom_db_begin(db, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *rows =
        loom_db_query(db, err,
                      "SELECT id, subject, event::text FROM outbox WHERE published_at IS NULL "
                      "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                      OUTBOX_BATCH);
    if (!rows) {
        loom_db_rollback(db);
        return -1;
    }
    int n = PQntuples(rows), sent = 0;
    for (; sent < n; sent++) {
        const char *ev = PQgetvalue(rows, sent, 2);
        if (loom_bus_publish_raw(svc->bus, PQgetvalue(rows, sent, 1), ev, strlen(ev), err) < 0)
            break;
    }
    /* only what the server has surely received is marked */
    if (sent > 0 && natsConnection_FlushTimeout(loom_bus_nc(svc->bus), 2000) != NATS_OK)
        sent = 0;
    if (sent > 0) {
        /* one UPDATE for the batch: ids as a PostgreSQL array literal */
        _cleanup_strbuf_ struct strbuf ids = STRBUF_INIT;
        strbuf_addch(&ids, '{');
        for (int r = 0; r < sent; r++)
            strbuf_addf(&ids, "%s%s", r ? "," : "", PQgetvalue(rows, r, 0));
        strbuf_addch(&ids, '}');
        _cleanup_pgres_ PGresult *upd = loom_db_query(
            db, err, "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
            ids.buf);
        if (!upd) {
            loom_db_rollback(db);
            return -1;
        }
    }
    if (loom_db_commit(db, err) < 0)
        return -1;
    /* housekeeping of published events and old idempotency records, once a
     * minute: under a stream of writes this runs on every pass otherwise */
    static _Atomic int64_t last_gc_ms;
    int64_t now = loom_now_ms();
    if (now - last_gc_ms >= 60000) {
        last_gc_ms = now;
        _cleanup_pgres_ PGresult *gc1 = loom_db_query(
            db, err, "DELETE FROM outbox WHERE published_at < now() - $1::interval", "1 hour");
        _cleanup_pgres_ PGresult *gc2 = loom_db_query(
            db, err, "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval",
            "24 hours");
    }
    return sent;
}

int api_check_if_match(struct loom_http_req *req, const char *what, const char *name,
                       const char *generation, struct loom_err *err)
{
    const char *h = loom_http_header(req, "If-Match");
    if (!h || strcmp(h, "*") == 0)
        return 0;
    /* a list of entity tags, weak or strong, is accepted */
    char want[40];
    snprintf(want, sizeof(want), "\"%s\"", generation);
    const char *p = h;
    while ((p = strstr(p, want)) != NULL) {
        char after = p[strlen(want)];
        if (after == '\0' || after == ',' || after == ' ')
            return 0;
        p++;
    }
    return loom_err_set(err, LOOM_EPRECOND,
                        "%s \"%s\" has changed (its entity tag is now \"%s\"): read it again "
                        "and retry",
                        what, name, generation);
}

int api_patch_spec(struct api_ctx *ctx, enum loom_kind kind, const char *sql_lock,
                   struct api_patch *ret, struct loom_err *err)
{
    const char *what = loom_kind_what(kind);
    const char *name = ctx->req->params[1], *given = NULL;
    if (loom_json_get_string(ctx->body, "name", false, 63, &given, err) < 0)
        return -1;
    if (given && strcmp(given, name) != 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"name\": %s \"%s\" cannot be renamed", what,
                            name);
    _cleanup_json_ json_t *patch = NULL;
    if (loom_spec_validate(kind, ctx->body, true, &patch, err) < 0)
        return -1;
    _cleanup_pgres_ PGresult *cur =
        loom_db_query(ctx->db, err, sql_lock, ctx->project.id_str, name);
    if (!cur)
        return -1;
    if (PQntuples(cur) == 0)
        return loom_err_set(err, LOOM_ENOTFOUND, "%s \"%s\" not found", what, name);
    if (api_check_if_match(ctx->req, what, name, PQgetvalue(cur, 0, 1), err) < 0)
        return -1;
    const char *text = PQgetvalue(cur, 0, 2);
    _cleanup_json_ json_t *old = loom_json_parse_object(text, strlen(text), err);
    if (!old)
        return loom_err_wrap(err, "stored spec of %s %s", what, name);
    _cleanup_json_ json_t *merged = loom_spec_merge(old, patch, ctx->body);
    json_t *spec = NULL;
    if (loom_spec_validate(kind, merged, false, &spec, err) < 0)
        return -1;
    ret->changed = !json_equal(spec, old);
    ret->spec = spec;
    ret->row = TAKE_PTR(cur);
    return 0;
}

void api_patch_release(struct api_patch *p)
{
    if (!p)
        return;
    PQclear(p->row);
    json_decref(p->spec);
    *p = (struct api_patch){0};
}
