#include "logshipper.h"

#include <string.h>

#include "strbuf.h"
#include "util.h"

int ls_parse_cri(const char *line, size_t len, struct ls_cri_line *ret, struct loom_err *err)
{
    const char *end = line + len;
    const char *sp1 = memchr(line, ' ', len);
    if (!sp1)
        return loom_err_set(err, LOOM_EINVAL, "no space after the time");
    int64_t ts;
    if (loom_parse_rfc3339_ns(line, (size_t)(sp1 - line), &ts) < 0)
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
    strbuf_grow(out, len + 16);
    size_t i = 0, run = 0; /* valid bytes from run to i, added at once */
    while (i < len) {
        /* the common case: printable ASCII */
        if (p[i] >= 0x20 && p[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_seq(p + i, len - i);
        if (n > 0) {
            i += n;
            continue;
        }
        strbuf_add(out, p + run, i - run);
        strbuf_add(out, "\xef\xbf\xbd", 3);
        i++;
        run = i;
    }
    strbuf_add(out, p + run, len - run);
}

/* ---- joining partial records -------------------------------------------------------- */

void ls_joiner_init(struct ls_joiner *j)
{
    memset(j, 0, sizeof(*j));
    for (int i = 0; i < 3; i++)
        strbuf_init(&j->text[i]);
}

void ls_joiner_release(struct ls_joiner *j)
{
    for (int i = 0; i < 3; i++)
        strbuf_release(&j->text[i]);
}

void ls_joiner_reset(struct ls_joiner *j)
{
    for (int i = 0; i < 3; i++) {
        strbuf_reset(&j->text[i]);
        j->pending[i] = false;
    }
}

static void emit_pending(struct ls_joiner *j, int s, int64_t offset, ls_emit_fn emit, void *arg)
{
    struct ls_line l = {.offset = offset,
                        .ts_ns = j->ts_ns[s],
                        .stream = (enum ls_stream)s,
                        .text = j->text[s].buf,
                        .len = j->text[s].len};
    emit(arg, &l);
    strbuf_reset(&j->text[s]);
    j->pending[s] = false;
}

void ls_joiner_feed(struct ls_joiner *j, int64_t offset, const struct ls_cri_line *rec,
                    ls_emit_fn emit, void *arg)
{
    int s = rec->stream == LS_STDERR ? 2 : 1;
    if (!j->pending[s] && !rec->partial) {
        /* the common case: a whole line in one record */
        struct ls_line l = {.offset = offset,
                            .ts_ns = rec->ts_ns,
                            .stream = rec->stream,
                            .text = rec->text,
                            .len = rec->text_len};
        emit(arg, &l);
        return;
    }
    if (!j->pending[s]) {
        j->pending[s] = true;
        j->first_offset[s] = offset;
        j->ts_ns[s] = rec->ts_ns;
    }
    strbuf_add(&j->text[s], rec->text, rec->text_len);
    if (!rec->partial || j->text[s].len >= LS_MAX_LINE)
        emit_pending(j, s, offset, emit, arg);
}

void ls_joiner_flush(struct ls_joiner *j, int64_t offset, ls_emit_fn emit, void *arg)
{
    /* in the order the lines began */
    int first =
        j->pending[2] && (!j->pending[1] || j->first_offset[2] < j->first_offset[1]) ? 2 : 1;
    if (j->pending[first])
        emit_pending(j, first, offset, emit, arg);
    if (j->pending[3 - first])
        emit_pending(j, 3 - first, offset, emit, arg);
}

int64_t ls_joiner_resume(const struct ls_joiner *j, int64_t scanned)
{
    int64_t r = scanned;
    for (int s = 1; s <= 2; s++)
        if (j->pending[s] && j->first_offset[s] < r)
            r = j->first_offset[s];
    return r;
}

bool ls_joiner_empty(const struct ls_joiner *j)
{
    return !j->pending[1] && !j->pending[2];
}
