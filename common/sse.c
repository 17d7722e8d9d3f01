#include "sse.h"

#include <string.h>

void loom_sse_init(struct loom_sse *p, loom_sse_handler handler, void *arg)
{
    memset(p, 0, sizeof(*p));
    strbuf_init(&p->line);
    strbuf_init(&p->event);
    strbuf_init(&p->data);
    p->handler = handler;
    p->arg = arg;
}

void loom_sse_release(struct loom_sse *p)
{
    strbuf_release(&p->line);
    strbuf_release(&p->event);
    strbuf_release(&p->data);
}

/* One whole line (without its end). */
static int take_line(struct loom_sse *p)
{
    const char *l = p->line.buf;
    size_t n = p->line.len;
    if (n == 0) {
        int rc = 0;
        if (p->has_data)
            rc = p->handler(p->event.len ? p->event.buf : "message", p->data.buf, p->arg);
        strbuf_reset(&p->event);
        strbuf_reset(&p->data);
        p->has_data = false;
        return rc;
    }
    if (l[0] == ':')
        return 0;
    const char *colon = memchr(l, ':', n);
    size_t flen = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    if (colon && *v == ' ')
        v++;
    size_t vlen = (size_t)(l + n - v);
    if (flen == 5 && memcmp(l, "event", 5) == 0) {
        strbuf_reset(&p->event);
        strbuf_add(&p->event, v, vlen);
    } else if (flen == 4 && memcmp(l, "data", 4) == 0) {
        if (p->has_data)
            strbuf_addch(&p->data, '\n');
        strbuf_add(&p->data, v, vlen);
        p->has_data = true;
    }
    /* id and retry are not used here */
    return 0;
}

int loom_sse_feed(struct loom_sse *p, const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (c == '\n' && p->last_cr) {
            p->last_cr = false; /* the LF of a CRLF */
            continue;
        }
        p->last_cr = c == '\r';
        if (c != '\n' && c != '\r') {
            strbuf_addch(&p->line, c);
            continue;
        }
        int rc = take_line(p);
        strbuf_reset(&p->line);
        if (rc)
            return rc;
    }
    return 0;
}
