/* The bus: NATS (nats.c) carrying protobuf messages.
 *
 * The connection reconnects forever in the background; publishing while
 * disconnected is buffered by nats.c up to its limit. Handlers run on nats.c's
 * threads (one per subscription): they must not block for long and must use
 * their own database connection. */
#ifndef LOOM_BUS_H
#define LOOM_BUS_H

#include <nats/nats.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"

struct loom_bus;

/* Connects to url (comma-separated list allowed), naming the client name.
 * Fails if no server answers within timeout_ms. */
int loom_bus_connect(const char *url, const char *name, int timeout_ms, struct loom_bus **ret,
                     struct loom_err *err);
/* Drains subscriptions (waits up to timeout_ms for in-flight handlers), then
 * closes and frees. Accepts NULL. */
void loom_bus_close(struct loom_bus *bus, int timeout_ms);
natsConnection *loom_bus_nc(struct loom_bus *bus);
bool loom_bus_connected(struct loom_bus *bus);

/* Packs msg and publishes it on subject. */
int loom_bus_publish(struct loom_bus *bus, const char *subject, const ProtobufCMessage *msg,
                     struct loom_err *err);
int loom_bus_publish_raw(struct loom_bus *bus, const char *subject, const void *data, size_t len,
                         struct loom_err *err);

typedef void (*loom_bus_handler)(struct loom_bus *bus, natsMsg *msg, void *arg);

/* Subscribes handler to subject; with queue set, one member of the queue
 * group gets each message. The handler does not own msg (it is destroyed
 * after the handler returns). Subscriptions live until loom_bus_close. */
int loom_bus_subscribe(struct loom_bus *bus, const char *subject, const char *queue,
                       loom_bus_handler handler, void *arg, struct loom_err *err);

/* (nats.c keeps library state that natsMsg_Destroy needs: a program that
 * creates messages without a connection, like a unit test, calls nats_Open(-1)
 * first; nats_Close() belongs at the very end of main, after every
 * connection is destroyed, which loom_service_main does.) */
/* Unpacks msg's data as desc; refuses (LOOM_EINVAL) what does not decode.
 * Free the result with protobuf_c_message_free_unpacked(m, NULL). */
ProtobufCMessage *loom_bus_unpack(const natsMsg *msg, const ProtobufCMessageDescriptor *desc,
                                  struct loom_err *err);

/* Sends req and waits up to timeout_ms for a reply decoded as reply_desc.
 * No responders or timeout -> LOOM_ETIMEOUT / LOOM_EUNAVAIL. */
int loom_bus_request(struct loom_bus *bus, const char *subject, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *reply_desc, int timeout_ms,
                     ProtobufCMessage **ret_reply, struct loom_err *err);

/* Replies to a request message (no-op when it has no reply subject). */
int loom_bus_respond(struct loom_bus *bus, const natsMsg *req, const ProtobufCMessage *reply,
                     struct loom_err *err);

/* Sends req expecting a loom.v1.Ack; returns 0 only for ok = true. A refused
 * ack becomes LOOM_ECONFLICT with the receiver's message (stale_epoch is
 * reported through *ret_stale when not NULL). */
int loom_bus_request_ack(struct loom_bus *bus, const char *subject, const ProtobufCMessage *req,
                         int timeout_ms, bool *ret_stale, struct loom_err *err);
/* A request whose Ack is awaited later, so that the caller can do other
 * work while the receiver acts: loom_bus_ack_start sends req; loom_bus_ack_wait
 * waits up to timeout_ms for the Ack (the same outcomes as
 * loom_bus_request_ack, stale_epoch aside) and frees the pending request;
 * loom_bus_ack_abandon frees one whose Ack is no longer wanted. Both accept
 * NULL (ack_wait then fails with LOOM_EINTERNAL). */
struct loom_bus_pending;
int loom_bus_ack_start(struct loom_bus *bus, const char *subject, const ProtobufCMessage *req,
                       struct loom_bus_pending **ret, struct loom_err *err);
int loom_bus_ack_wait(struct loom_bus_pending *p, int timeout_ms, struct loom_err *err);
void loom_bus_ack_abandon(struct loom_bus_pending *p);
/* Replies with an Ack: ok when error is NULL. */
int loom_bus_ack(struct loom_bus *bus, const natsMsg *req, const char *error, bool stale_epoch);

/* JetStream: makes sure a file-backed stream with these subjects exists
 * (created if missing, left alone if present). */
int loom_bus_js_stream(struct loom_bus *bus, const char *name, const char *const *subjects,
                       size_t nsubjects, int64_t max_age_ms, struct loom_err *err);
/* Publishes to JetStream with Nats-Msg-Id = msg_id and waits for the ack;
 * *ret_duplicate (may be NULL) tells whether the server dropped it as a resend. */
int loom_bus_js_publish(struct loom_bus *bus, const char *subject, const ProtobufCMessage *msg,
                        const char *msg_id, bool *ret_duplicate, struct loom_err *err);
/* The same with data already packed. */
int loom_bus_js_publish_raw(struct loom_bus *bus, const char *subject, const void *data, size_t len,
                            const char *msg_id, bool *ret_duplicate, struct loom_err *err);
jsCtx *loom_bus_js(struct loom_bus *bus);

#endif
