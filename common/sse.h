/* A reader of server-sent events (the WHATWG EventSource format), fed the
 * body as it arrives in pieces of any size: lines end in LF, CRLF or CR;
 * "event:" names the event, "data:" lines join with LF; a blank line
 * dispatches it; ":" lines are comments (keepalives). */
#ifndef LOOM_SSE_H
#define LOOM_SSE_H

#include <stdbool.h>
#include <stddef.h>

#include "strbuf.h"

/* An event: its name ("message" when none was given) and data. Return
 * non-zero to stop reading. */
typedef int (*loom_sse_handler)(const char *event, const char *data, void *arg);

struct loom_sse {
    struct strbuf line, event, data;
    bool has_data, last_cr;
    loom_sse_handler handler;
    void *arg;
};

void loom_sse_init(struct loom_sse *p, loom_sse_handler handler, void *arg);
void loom_sse_release(struct loom_sse *p);
/* Takes the next len bytes of the stream; returns the handler's non-zero
 * answer when it stopped, else 0. */
int loom_sse_feed(struct loom_sse *p, const char *buf, size_t len);

#endif
