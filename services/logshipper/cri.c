#include "logshipper.h"

#include <string.h>
#include <time.h>

static int digits(const char *s, int n, int *ret)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *ret = v;
    return 0;
}

int ls_parse_rfc3339_ns(const char *s, size_t len, int64_t *ret_ns)
{
    /* 2026-11-28T04:25:32[.fraction](Z|+hh:mm|-hh:mm) */
    int Y, M, D, h, m, sec;
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return -1;
    if (digits(s, 4, &Y) < 0 || digits(s + 5, 2, &M) < 0 || digits(s + 8, 2, &D) < 0 ||
        digits(s + 11, 2, &h) < 0 || digits(s + 14, 2, &m) < 0 || digits(s + 17, 2, &sec) < 0)
        return -1;
    if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    size_t i = 19;
    int64_t frac = 0;
    if (i < len && s[i] == '.') {
        i++;
        int nd = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (nd < 9) {
                frac = frac * 10 + (s[i] - '0');
                nd++;
            }
            i++;
        }
        if (nd == 0)
            return -1;
        for (; nd < 9; nd++)
            frac *= 10;
    }
    int64_t offset_s = 0;
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int oh, om;
        if (digits(s + i + 1, 2, &oh) < 0 || digits(s + i + 4, 2, &om) < 0 || oh > 23 || om > 59)
            return -1;
        offset_s = (oh * 3600 + om * 60) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return -1;
    }
    if (i != len)
        return -1;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -1;
    *ret_ns = ((int64_t)t - offset_s) * 1000000000LL + frac;
    return 0;
}

int ls_parse_cri(const char *line, size_t len, struct ls_cri_line *ret, struct loom_err *err)
{
    const char *end = line + len;
    const char *sp1 = memchr(line, ' ', len);
    if (!sp1)
        return loom_err_set(err, LOOM_EINVAL, "no space after the time");
    int64_t ts;
    if (ls_parse_rfc3339_ns(line, (size_t)(sp1 - line), &ts) < 0)
        return loom_err_set(err, LOOM_EINVAL, "bad time \"%.*s\"",
                            (int)(sp1 - line > 40 ? 40 : sp1 - line), line);
    const char *st = sp1 + 1;
    enum ls_stream stream;
    if (end - st >= 7 && memcmp(st, "stdout ", 7) == 0)
        stream = LS_STDOUT;
    else if (end - st >= 7 && memcmp(st, "stderr ", 7) == 0)
        stream = LS_STDERR;
    else
        return loom_err_set(err, LOOM_EINVAL, "stream is not stdout or stderr");
    const char *tag = st + 7;
    if (tag >= end || (*tag != 'F' && *tag != 'P') || (tag + 1 < end && tag[1] != ' '))
        return loom_err_set(err, LOOM_EINVAL, "tag is not F or P");
    const char *text = tag + 1 < end ? tag + 2 : end; /* "... F" alone: an empty line */
    ret->ts_ns = ts;
    ret->stream = stream;
    ret->partial = *tag == 'P';
    ret->text = text;
    ret->text_len = (size_t)(end - text);
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return c ? 1 : 0;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

void ls_add_clean_utf8(struct strbuf *out, const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq(p + i, len - i);
        if (n == 0) {
            strbuf_add(out, "\xef\xbf\xbd", 3);
            i++;
        } else {
            strbuf_add(out, p + i, n);
            i += n;
        }
    }
}
