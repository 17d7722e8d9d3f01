/* A growable, always NUL-terminated byte buffer (git's strbuf, smaller).
 * Allocation failure aborts: a service that cannot allocate a few bytes
 * cannot do anything useful. */
#ifndef LOOM_STRBUF_H
#define LOOM_STRBUF_H

#include <stddef.h>

struct strbuf {
    char *buf; /* never NULL after init: points at "" until something is added */
    size_t len;
    size_t alloc;
};

/* clang-format off */
#define STRBUF_INIT {loom_strbuf_empty, 0, 0}
/* clang-format on */
extern char loom_strbuf_empty[];

void strbuf_init(struct strbuf *sb);
void strbuf_release(struct strbuf *sb); /* frees; leaves sb as after init */
void strbuf_reset(struct strbuf *sb);   /* len = 0, keeps the allocation */
void strbuf_grow(struct strbuf *sb, size_t extra);
void strbuf_add(struct strbuf *sb, const void *data, size_t len);
void strbuf_addstr(struct strbuf *sb, const char *s);
void strbuf_addch(struct strbuf *sb, char c);
void strbuf_addf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s with JSON string escaping (no surrounding quotes). */
void strbuf_add_json_escaped(struct strbuf *sb, const char *s);
/* Returns the buffer (caller frees) and leaves sb as after init. */
char *strbuf_detach(struct strbuf *sb, size_t *ret_len);

static inline void strbuf_releasep(struct strbuf *sb)
{
    strbuf_release(sb);
}
#define _cleanup_strbuf_ __attribute__((cleanup(strbuf_releasep)))

#endif
