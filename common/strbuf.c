#include "strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char loom_strbuf_empty[1];

void strbuf_init(struct strbuf *sb)
{
    sb->buf = loom_strbuf_empty;
    sb->len = 0;
    sb->alloc = 0;
}

void strbuf_release(struct strbuf *sb)
{
    if (sb->alloc)
        free(sb->buf);
    strbuf_init(sb);
}

void strbuf_reset(struct strbuf *sb)
{
    sb->len = 0;
    if (sb->alloc)
        sb->buf[0] = '\0';
}

void strbuf_grow(struct strbuf *sb, size_t extra)
{
    if (extra > SIZE_MAX - sb->len - 1)
        abort();
    size_t need = sb->len + extra + 1;
    if (need <= sb->alloc)
        return;
    size_t n = sb->alloc ? sb->alloc : 64;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    char *p = realloc(sb->alloc ? sb->buf : NULL, n);
    if (!p)
        abort();
    if (!sb->alloc)
        p[0] = '\0';
    sb->buf = p;
    sb->alloc = n;
}

void strbuf_add(struct strbuf *sb, const void *data, size_t len)
{
    strbuf_grow(sb, len);
    if (len)
        memcpy(sb->buf + sb->len, data, len);
    sb->len += len;
    sb->buf[sb->len] = '\0';
}

void strbuf_addstr(struct strbuf *sb, const char *s)
{
    strbuf_add(sb, s, strlen(s));
}

void strbuf_addch(struct strbuf *sb, char c)
{
    strbuf_grow(sb, 1);
    sb->buf[sb->len++] = c;
    sb->buf[sb->len] = '\0';
}

void strbuf_addf(struct strbuf *sb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        strbuf_add(sb, tmp, (size_t)n);
        return;
    }
    strbuf_grow(sb, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at p (0 when invalid, overlong, a
 * surrogate or past U+10FFFF). */
static size_t utf8_sequence_len(const unsigned char *p)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

void strbuf_add_json_escaped(struct strbuf *sb, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        switch (c) {
        case '"':
            strbuf_add(sb, "\\\"", 2);
            break;
        case '\\':
            strbuf_add(sb, "\\\\", 2);
            break;
        case '\n':
            strbuf_add(sb, "\\n", 2);
            break;
        case '\r':
            strbuf_add(sb, "\\r", 2);
            break;
        case '\t':
            strbuf_add(sb, "\\t", 2);
            break;
        case '\b':
            strbuf_add(sb, "\\b", 2);
            break;
        case '\f':
            strbuf_add(sb, "\\f", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                strbuf_add(sb, u, 6);
            } else if (c < 0x80) {
                strbuf_addch(sb, (char)c);
            } else {
                /* JSON text must be UTF-8: invalid sequences become U+FFFD */
                size_t n = utf8_sequence_len(p);
                if (n) {
                    strbuf_add(sb, p, n);
                    p += n - 1;
                } else {
                    strbuf_addstr(sb, "\\ufffd");
                }
            }
        }
    }
}

char *strbuf_detach(struct strbuf *sb, size_t *ret_len)
{
    char *r;
    if (sb->alloc) {
        r = sb->buf;
    } else {
        r = strdup("");
        if (!r)
            abort();
    }
    if (ret_len)
        *ret_len = sb->len;
    strbuf_init(sb);
    return r;
}
