/* The logshipper's CRI log line parser, timestamps, UTF-8 cleaning,
 * PostgreSQL array literal elements and COPY's binary format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "services/logshipper/logshipper.h"

static int parse(const char *s, struct ls_cri_line *l)
{
    struct loom_err err = LOOM_ERR_INIT;
    int rc = ls_parse_cri(s, strlen(s), l, &err);
    if (rc < 0)
        assert_int_equal(err.code, LOOM_EINVAL);
    return rc;
}

static void test_cri_ok(void **state)
{
    (void)state;
    struct ls_cri_line l;
    assert_int_equal(parse("2026-11-28T04:25:32.123456789Z stdout F hello world", &l), 0);
    assert_int_equal(l.ts_ns, 1795839932123456789LL);
    assert_int_equal(l.stream, LS_STDOUT);
    assert_false(l.partial);
    assert_int_equal(l.text_len, 11);
    assert_memory_equal(l.text, "hello world", 11);

    assert_int_equal(parse("2026-11-28T04:25:32Z stderr P  two  spaces ", &l), 0);
    assert_int_equal(l.ts_ns, 1795839932000000000LL);
    assert_int_equal(l.stream, LS_STDERR);
    assert_true(l.partial);
    assert_int_equal(l.text_len, 13);
    assert_memory_equal(l.text, " two  spaces ", 13);

    /* empty lines, with and without the separator */
    assert_int_equal(parse("2026-11-28T04:25:32.5Z stdout F ", &l), 0);
    assert_int_equal(l.text_len, 0);
    assert_int_equal(l.ts_ns, 1795839932500000000LL);
    assert_int_equal(parse("2026-11-28T04:25:32.5Z stdout F", &l), 0);
    assert_int_equal(l.text_len, 0);

    /* an offset: 06:25:32+02:00 is 04:25:32Z */
    assert_int_equal(parse("2026-11-28T06:25:32.000001+02:00 stdout F x", &l), 0);
    assert_int_equal(l.ts_ns, 1795839932000001000LL);
    /* more than 9 fraction digits are cut */
    assert_int_equal(parse("2026-11-28T04:25:32.1234567891Z stdout F x", &l), 0);
    assert_int_equal(l.ts_ns, 1795839932123456789LL);
}

static void test_cri_bad(void **state)
{
    (void)state;
    struct ls_cri_line l;
    assert_int_equal(parse("", &l), -1);
    assert_int_equal(parse("hello world", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32Z", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32Z stdin F x", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32Z stdout X x", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32Z stdout Fx", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32Z stdout", &l), -1);
    assert_int_equal(parse("2026-11-28 04:25:32Z stdout F x", &l), -1);
    assert_int_equal(parse("2026-13-28T04:25:32Z stdout F x", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32.Z stdout F x", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32 stdout F x", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32+0200 stdout F x", &l), -1);
    assert_int_equal(parse("2026-11-28T04:25:32Zjunk stdout F x", &l), -1);
}

static void test_utf8(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    ls_add_clean_utf8(&sb, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14);
    assert_string_equal(sb.buf, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    strbuf_reset(&sb);
    /* NUL, a lone continuation byte, a truncated sequence, an overlong form,
     * a surrogate */
    ls_add_clean_utf8(&sb,
                      "a\0b\x80"
                      "c\xe2\x82"
                      "d\xc0\xaf"
                      "e\xed\xa0\x80",
                      14);
    assert_string_equal(sb.buf, "a\xef\xbf\xbd"
                                "b\xef\xbf\xbd"
                                "c\xef\xbf\xbd\xef\xbf\xbd"
                                "d\xef\xbf\xbd\xef\xbf\xbd"
                                "e\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    strbuf_release(&sb);
}

static void test_array_elem(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    loom_db_array_elem(&sb, "a \"q\" \\ {b,c}", 13);
    assert_string_equal(sb.buf, "\"a \\\"q\\\" \\\\ {b,c}\"");
    strbuf_reset(&sb);
    loom_db_array_elem(&sb, "", 0);
    assert_string_equal(sb.buf, "\"\"");
    strbuf_release(&sb);
}

/* COPY's binary format, byte for byte as PostgreSQL's documentation gives it */
static void test_copy_bin(void **state)
{
    (void)state;
    struct strbuf sb = STRBUF_INIT;
    loom_db_copy_bin_header(&sb);
    assert_int_equal(sb.len, 19);
    assert_memory_equal(sb.buf, "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0", 19);
    strbuf_reset(&sb);
    static const uint8_t uuid[16] = {0x9a, 0xbf, 0x38, 0xfa, 0xeb, 0xb7, 0x40, 0x7a,
                                     0x97, 0xbe, 0x5b, 0x4a, 0x8f, 0x43, 0x75, 0x5d};
    loom_db_copy_bin_row(&sb, 5);
    loom_db_copy_bin_uuid(&sb, uuid);
    loom_db_copy_bin_int8(&sb, 258);
    loom_db_copy_bin_timestamptz(&sb, 946684800000001LL); /* 2000-01-01 00:00:00.000001 */
    loom_db_copy_bin_text(&sb, "h\xc3\xa9", 3);
    loom_db_copy_bin_null(&sb);
    loom_db_copy_bin_trailer(&sb);
    static const char want[] = "\0\5"                                       /* 5 fields */
                               "\0\0\0\x10\x9a\xbf\x38\xfa\xeb\xb7\x40\x7a" /* uuid */
                               "\x97\xbe\x5b\x4a\x8f\x43\x75\x5d"
                               "\0\0\0\x08\0\0\0\0\0\0\x01\x02" /* int8 */
                               "\0\0\0\x08\0\0\0\0\0\0\0\x01"   /* timestamptz */
                               "\0\0\0\x03h\xc3\xa9"            /* text */
                               "\xff\xff\xff\xff"               /* NULL */
                               "\xff\xff";                      /* the end */
    assert_int_equal(sb.len, sizeof(want) - 1);
    assert_memory_equal(sb.buf, want, sizeof(want) - 1);
    /* times before PostgreSQL's epoch are negative */
    strbuf_reset(&sb);
    loom_db_copy_bin_timestamptz(&sb, 0);
    assert_memory_equal(sb.buf, "\0\0\0\x08\xff\xfc\xa2\xfe\xc4\xc8\x20\x00", 12);
    strbuf_release(&sb);
}

/* The joiner: lines of partial records put back together, handed out at the
 * offset of the record that ends them, in increasing offsets. */
static void collect_line(void *arg, const struct ls_line *l)
{
    struct strbuf *out = arg;
    strbuf_addf(out, "%lld:%s:%lld:%.*s|", (long long)l->offset,
                l->stream == LS_STDERR ? "err" : "out", (long long)l->ts_ns, (int)l->len, l->text);
}

static void rec(struct ls_joiner *j, int64_t off, enum ls_stream s, bool partial, const char *text,
                struct strbuf *out)
{
    struct ls_cri_line r = {
        .ts_ns = off * 10, .stream = s, .partial = partial, .text = text, .text_len = strlen(text)};
    ls_joiner_feed(j, off, &r, collect_line, out);
}

static void test_joiner(void **state)
{
    (void)state;
    struct ls_joiner j;
    ls_joiner_init(&j);
    struct strbuf out = STRBUF_INIT;
    rec(&j, 0, LS_STDOUT, true, "aaa", &out);
    assert_int_equal(ls_joiner_resume(&j, 10), 0);
    assert_false(ls_joiner_empty(&j));
    rec(&j, 10, LS_STDERR, false, "e", &out); /* the other stream goes on meanwhile */
    rec(&j, 20, LS_STDOUT, true, "bbb", &out);
    rec(&j, 30, LS_STDOUT, false, "c", &out);
    assert_true(ls_joiner_empty(&j));
    assert_int_equal(ls_joiner_resume(&j, 40), 40);
    /* the joined line: at its last record's offset, with its first's time */
    assert_string_equal(out.buf, "10:err:100:e|30:out:0:aaabbbc|");
    strbuf_reset(&out);

    /* pending on both streams, then the writer is gone: flushed in the
     * order the lines began */
    rec(&j, 50, LS_STDERR, true, "x", &out);
    rec(&j, 60, LS_STDOUT, true, "y", &out);
    assert_int_equal(ls_joiner_resume(&j, 70), 50);
    ls_joiner_flush(&j, 70, collect_line, &out);
    assert_string_equal(out.buf, "70:err:500:x|70:out:600:y|");
    assert_true(ls_joiner_empty(&j));
    strbuf_reset(&out);

    /* a reader starting again drops what is pending */
    rec(&j, 80, LS_STDOUT, true, "lost", &out);
    ls_joiner_reset(&j);
    rec(&j, 90, LS_STDOUT, false, "z", &out);
    assert_string_equal(out.buf, "90:out:900:z|");
    strbuf_reset(&out);

    /* a line past LS_MAX_LINE is handed out at that size, the rest goes on */
    char *part = malloc(16384 + 1);
    memset(part, 'p', 16384);
    part[16384] = 0;
    int64_t off = 100;
    for (int i = 0; i < LS_MAX_LINE / 16384 + 1; i++, off += 16400)
        rec(&j, off, LS_STDOUT, true, part, &out);
    rec(&j, off, LS_STDOUT, false, "end", &out);
    free(part);
    const char *second = strchr(out.buf, '|');
    assert_non_null(second);
    assert_int_equal(second - strchr(out.buf, 'p'), LS_MAX_LINE);
    /* the second: the last part and the end */
    const char *text2 = strrchr(second + 1 - 1, ':');
    assert_non_null(text2);
    assert_int_equal(strlen(text2 + 1), 16384 + strlen("end|"));
    assert_string_equal(text2 + 1 + 16384, "end|");
    strbuf_release(&out);
    ls_joiner_release(&j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_joiner),     cmocka_unit_test(test_cri_ok),
        cmocka_unit_test(test_cri_bad),    cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_array_elem), cmocka_unit_test(test_copy_bin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
