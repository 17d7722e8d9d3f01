#include "bus.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom/v1/common.pb-c.h"
#include "util.h"

struct bus_sub {
    struct loom_bus *bus;
    natsSubscription *sub;
    loom_bus_handler handler;
    void *arg;
    struct bus_sub *next;
};

struct loom_bus {
    natsConnection *nc;
    jsCtx *js;
    pthread_mutex_t lock;
    pthread_cond_t closed_cond;
    bool closed;
    struct bus_sub *subs;
};

static enum loom_errc errc_for_status(natsStatus s)
{
    switch (s) {
    case NATS_TIMEOUT:
        return LOOM_ETIMEOUT;
    case NATS_NO_RESPONDERS:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NO_SERVER:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR:
    case NATS_DRAINING:
    case NATS_CONNECTION_AUTH_FAILED:
        return LOOM_EUNAVAIL;
    case NATS_INVALID_SUBJECT:
    case NATS_INVALID_ARG:
    case NATS_INVALID_QUEUE_NAME:
        return LOOM_EINVAL;
    case NATS_MAX_PAYLOAD:
        return LOOM_ETOOBIG;
    case NATS_SLOW_CONSUMER:
        return LOOM_ELIMIT;
    default:
        return LOOM_EINTERNAL;
    }
}

static int set_nats_error(struct loom_err *err, natsStatus s, const char *fmt, const char *subject)
{
    char what[256];
    snprintf(what, sizeof(what), fmt, subject);
    return loom_err_set(err, errc_for_status(s), "%s: %s", what, natsStatus_GetText(s));
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    struct loom_bus *bus = closure;
    pthread_mutex_lock(&bus->lock);
    bus->closed = true;
    pthread_cond_broadcast(&bus->closed_cond);
    pthread_mutex_unlock(&bus->lock);
}

/* Waits until on_closed ran (or wait_ms passed): only then may bus be freed,
 * because nats.c calls on_closed from its own thread. */
static void wait_closed(struct loom_bus *bus, int64_t wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (wait_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&bus->lock);
    while (!bus->closed) {
        if (pthread_cond_timedwait(&bus->closed_cond, &bus->lock, &until) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&bus->lock);
}

static void bus_free(struct loom_bus *bus)
{
    for (struct bus_sub *s = bus->subs, *next; s; s = next) {
        next = s->next;
        natsSubscription_Destroy(s->sub);
        free(s);
    }
    jsCtx_Destroy(bus->js);
    natsConnection_Destroy(bus->nc);
    pthread_cond_destroy(&bus->closed_cond);
    pthread_mutex_destroy(&bus->lock);
    free(bus);
}

int loom_bus_connect(const char *url, const char *name, int timeout_ms, struct loom_bus **ret,
                     struct loom_err *err)
{
    struct loom_bus *bus = calloc(1, sizeof(*bus));
    if (!bus)
        abort();
    pthread_mutex_init(&bus->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&bus->closed_cond, &ca);
    pthread_condattr_destroy(&ca);

    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK && name)
        s = natsOptions_SetName(opts, name);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, timeout_ms > 0 && timeout_ms < 2000 ? timeout_ms : 2000);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(opts, on_closed, bus);
    if (s != NATS_OK) {
        natsOptions_Destroy(opts);
        bus_free(bus);
        return set_nats_error(err, s, "invalid NATS options for \"%s\"", url);
    }

    int64_t deadline = loom_mono_ms() + timeout_ms;
    for (;;) {
        s = natsConnection_Connect(&bus->nc, opts);
        if (s == NATS_OK || loom_mono_ms() >= deadline)
            break;
        if (s == NATS_INVALID_ARG || s == NATS_CONNECTION_AUTH_FAILED)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        bus->nc = NULL;
        bus_free(bus);
        return set_nats_error(err, s, "could not connect to NATS at \"%s\"", url);
    }
    s = natsConnection_JetStream(&bus->js, bus->nc, NULL);
    if (s != NATS_OK) {
        natsConnection_Close(bus->nc);
        wait_closed(bus, 1000);
        bus_free(bus);
        return set_nats_error(err, s, "could not set up JetStream on \"%s\"", url);
    }
    *ret = bus;
    return 0;
}

void loom_bus_close(struct loom_bus *bus, int timeout_ms)
{
    if (!bus)
        return;
    /* Drain lets in-flight handlers finish and flushes what we published,
     * then closes the connection; on_closed tells us when that happened.
     * A handler still running after timeout_ms must not touch the bus. */
    natsStatus s = natsConnection_DrainTimeout(bus->nc, timeout_ms > 0 ? timeout_ms : 1);
    if (s == NATS_OK)
        wait_closed(bus, (int64_t)timeout_ms + 1000);
    natsConnection_Close(bus->nc);
    wait_closed(bus, 1000);
    bus_free(bus);
}

natsConnection *loom_bus_nc(struct loom_bus *bus)
{
    return bus->nc;
}

bool loom_bus_connected(struct loom_bus *bus)
{
    return bus && natsConnection_Status(bus->nc) == NATS_CONN_STATUS_CONNECTED;
}

static int pack(const ProtobufCMessage *msg, uint8_t **ret, size_t *ret_len, struct loom_err *err)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > INT32_MAX)
        return loom_err_set(err, LOOM_ETOOBIG, "message %s is too big", msg->descriptor->name);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    protobuf_c_message_pack(msg, buf);
    *ret = buf;
    *ret_len = len;
    return 0;
}

int loom_bus_publish_raw(struct loom_bus *bus, const char *subject, const void *data, size_t len,
                         struct loom_err *err)
{
    if (len > INT32_MAX)
        return loom_err_set(err, LOOM_ETOOBIG, "message for \"%s\" is too big", subject);
    natsStatus s = natsConnection_Publish(bus->nc, subject, data, (int)len);
    if (s != NATS_OK)
        return set_nats_error(err, s, "could not publish on \"%s\"", subject);
    return 0;
}

int loom_bus_publish(struct loom_bus *bus, const char *subject, const ProtobufCMessage *msg,
                     struct loom_err *err)
{
    uint8_t *buf;
    size_t len;
    if (pack(msg, &buf, &len, err) < 0)
        return -1;
    int r = loom_bus_publish_raw(bus, subject, buf, len, err);
    free(buf);
    return r;
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    struct bus_sub *bs = closure;
    bs->handler(bs->bus, msg, bs->arg);
    natsMsg_Destroy(msg);
}

int loom_bus_subscribe(struct loom_bus *bus, const char *subject, const char *queue,
                       loom_bus_handler handler, void *arg, struct loom_err *err)
{
    struct bus_sub *bs = calloc(1, sizeof(*bs));
    if (!bs)
        abort();
    bs->bus = bus;
    bs->handler = handler;
    bs->arg = arg;
    natsStatus s;
    if (queue && *queue)
        s = natsConnection_QueueSubscribe(&bs->sub, bus->nc, subject, queue, on_msg, bs);
    else
        s = natsConnection_Subscribe(&bs->sub, bus->nc, subject, on_msg, bs);
    if (s != NATS_OK) {
        free(bs);
        return set_nats_error(err, s, "could not subscribe to \"%s\"", subject);
    }
    pthread_mutex_lock(&bus->lock);
    bs->next = bus->subs;
    bus->subs = bs;
    pthread_mutex_unlock(&bus->lock);
    /* Make sure the server has the interest before we report success, so
     * that a request sent right after does not meet "no responders". When
     * disconnected, nats.c sends the subscription again on reconnect. */
    (void)natsConnection_FlushTimeout(bus->nc, 2000);
    return 0;
}

ProtobufCMessage *loom_bus_unpack(const natsMsg *msg, const ProtobufCMessageDescriptor *desc,
                                  struct loom_err *err)
{
    const char *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);
    if (len < 0)
        len = 0;
    ProtobufCMessage *m =
        protobuf_c_message_unpack(desc, NULL, (size_t)len, (const uint8_t *)(data ? data : ""));
    if (!m) {
        const char *subj = natsMsg_GetSubject(msg);
        loom_err_set(err, LOOM_EINVAL, "could not decode %s on \"%s\"", desc->name,
                     subj ? subj : "");
        return NULL;
    }
    return m;
}

int loom_bus_request(struct loom_bus *bus, const char *subject, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *reply_desc, int timeout_ms,
                     ProtobufCMessage **ret_reply, struct loom_err *err)
{
    uint8_t *buf;
    size_t len;
    if (pack(req, &buf, &len, err) < 0)
        return -1;
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, bus->nc, subject, buf, (int)len,
                                          timeout_ms > 0 ? timeout_ms : 1);
    free(buf);
    if (s == NATS_TIMEOUT)
        return loom_err_set(err, LOOM_ETIMEOUT, "no reply on \"%s\" within %d ms", subject,
                            timeout_ms);
    if (s == NATS_NO_RESPONDERS)
        return loom_err_set(err, LOOM_EUNAVAIL, "no responders on \"%s\"", subject);
    if (s != NATS_OK)
        return set_nats_error(err, s, "request on \"%s\" failed", subject);
    ProtobufCMessage *m = loom_bus_unpack(reply, reply_desc, err);
    natsMsg_Destroy(reply);
    if (!m)
        return -1;
    *ret_reply = m;
    return 0;
}

int loom_bus_respond(struct loom_bus *bus, const natsMsg *req, const ProtobufCMessage *reply,
                     struct loom_err *err)
{
    const char *to = natsMsg_GetReply(req);
    if (!to || !*to)
        return 0;
    return loom_bus_publish(bus, to, reply, err);
}

int loom_bus_request_ack(struct loom_bus *bus, const char *subject, const ProtobufCMessage *req,
                         int timeout_ms, bool *ret_stale, struct loom_err *err)
{
    ProtobufCMessage *m = NULL;
    if (loom_bus_request(bus, subject, req, &loom__v1__ack__descriptor, timeout_ms, &m, err) < 0)
        return -1;
    Loom__V1__Ack *ack = (Loom__V1__Ack *)m;
    int r = 0;
    if (ret_stale)
        *ret_stale = ack->stale_epoch;
    if (!ack->ok)
        r = loom_err_set(err, LOOM_ECONFLICT, "%s refused: %s", subject,
                         ack->error && *ack->error ? ack->error : "no reason given");
    protobuf_c_message_free_unpacked(m, NULL);
    return r;
}

struct loom_bus_pending {
    natsSubscription *sub;
    char subject[256];
};

void loom_bus_ack_abandon(struct loom_bus_pending *p)
{
    if (!p)
        return;
    natsSubscription_Destroy(p->sub);
    free(p);
}

int loom_bus_ack_start(struct loom_bus *bus, const char *subject, const ProtobufCMessage *req,
                       struct loom_bus_pending **ret, struct loom_err *err)
{
    struct loom_bus_pending *p = calloc(1, sizeof(*p));
    if (!p)
        abort();
    snprintf(p->subject, sizeof(p->subject), "%s", subject);
    uint8_t *buf = NULL;
    size_t len = 0;
    natsInbox *inbox = NULL;
    natsStatus s = natsInbox_Create(&inbox);
    /* the inbox is subscribed before the request goes: the reply cannot
     * come first */
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&p->sub, bus->nc, inbox);
    if (s == NATS_OK)
        s = natsSubscription_AutoUnsubscribe(p->sub, 1);
    if (s == NATS_OK && pack(req, &buf, &len, err) < 0) {
        natsInbox_Destroy(inbox);
        loom_bus_ack_abandon(p);
        return -1;
    }
    if (s == NATS_OK)
        s = natsConnection_PublishRequest(bus->nc, subject, inbox, buf, (int)len);
    free(buf);
    natsInbox_Destroy(inbox);
    if (s != NATS_OK) {
        loom_bus_ack_abandon(p);
        return set_nats_error(err, s, "request on \"%s\" failed", subject);
    }
    *ret = p;
    return 0;
}

int loom_bus_ack_wait(struct loom_bus_pending *p, int timeout_ms, struct loom_err *err)
{
    if (!p)
        return loom_err_set(err, LOOM_EINTERNAL, "no request to wait for");
    natsMsg *reply = NULL;
    natsStatus s = natsSubscription_NextMsg(&reply, p->sub, timeout_ms > 0 ? timeout_ms : 1);
    int r = 0;
    if (s == NATS_TIMEOUT)
        r = loom_err_set(err, LOOM_ETIMEOUT, "no reply on \"%s\" within %d ms", p->subject,
                         timeout_ms);
    else if (s != NATS_OK)
        r = set_nats_error(err, s, "request on \"%s\" failed", p->subject);
    else if (natsMsg_IsNoResponders(reply))
        r = loom_err_set(err, LOOM_EUNAVAIL, "no responders on \"%s\"", p->subject);
    else {
        Loom__V1__Ack *ack =
            (Loom__V1__Ack *)loom_bus_unpack(reply, &loom__v1__ack__descriptor, err);
        if (!ack)
            r = -1;
        else if (!ack->ok)
            r = loom_err_set(err, LOOM_ECONFLICT, "%s refused: %s", p->subject,
                             ack->error && *ack->error ? ack->error : "no reason given");
        if (ack)
            protobuf_c_message_free_unpacked(&ack->base, NULL);
    }
    natsMsg_Destroy(reply);
    loom_bus_ack_abandon(p);
    return r;
}

int loom_bus_ack(struct loom_bus *bus, const natsMsg *req, const char *error, bool stale_epoch)
{
    Loom__V1__Ack ack;
    loom__v1__ack__init(&ack);
    ack.ok = error == NULL;
    ack.error = (char *)(error ? error : "");
    ack.stale_epoch = stale_epoch;
    return loom_bus_respond(bus, req, &ack.base, NULL);
}

int loom_bus_js_stream(struct loom_bus *bus, const char *name, const char *const *subjects,
                       size_t nsubjects, int64_t max_age_ms, struct loom_err *err)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, bus->js, name, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr)
        return set_nats_error(err, s, "could not look up stream \"%s\"", name);

    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = name;
    cfg.Subjects = (const char **)subjects;
    cfg.SubjectsLen = (int)nsubjects;
    cfg.Storage = js_FileStorage;
    cfg.MaxAge = max_age_ms * 1000000; /* nanoseconds */
    jerr = 0;
    s = js_AddStream(&si, bus->js, &cfg, NULL, &jerr);
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (jerr == JSStreamNameExistErr) /* another replica created it meanwhile */
        return 0;
    const char *detail = nats_GetLastError(NULL);
    return loom_err_set(err, errc_for_status(s), "could not create stream \"%s\": %s", name,
                        detail ? detail : natsStatus_GetText(s));
}

int loom_bus_js_publish(struct loom_bus *bus, const char *subject, const ProtobufCMessage *msg,
                        const char *msg_id, bool *ret_duplicate, struct loom_err *err)
{
    uint8_t *buf;
    size_t len;
    if (pack(msg, &buf, &len, err) < 0)
        return -1;
    int r = loom_bus_js_publish_raw(bus, subject, buf, len, msg_id, ret_duplicate, err);
    free(buf);
    return r;
}

int loom_bus_js_publish_raw(struct loom_bus *bus, const char *subject, const void *data, size_t len,
                            const char *msg_id, bool *ret_duplicate, struct loom_err *err)
{
    if (len > INT32_MAX)
        return loom_err_set(err, LOOM_ETOOBIG, "message for \"%s\" is too big", subject);
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, subject, NULL, (const char *)data, (int)len);
    if (s == NATS_OK && msg_id && *msg_id)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id);
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return set_nats_error(err, s, "could not build message for \"%s\"", subject);
    }
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    s = js_PublishMsg(&pa, bus->js, m, NULL, &jerr);
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        if (s == NATS_NO_RESPONDERS)
            return loom_err_set(err, LOOM_EUNAVAIL, "no JetStream stream for \"%s\"", subject);
        return set_nats_error(err, s, "could not publish to JetStream on \"%s\"", subject);
    }
    if (ret_duplicate)
        *ret_duplicate = pa->Duplicate;
    jsPubAck_Destroy(pa);
    return 0;
}

jsCtx *loom_bus_js(struct loom_bus *bus)
{
    return bus->js;
}
