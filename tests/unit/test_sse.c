/* common/sse: server-sent events read in pieces of any size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "sse.h"

static int collect(const char *event, const char *data, void *arg)
{
    struct strbuf *out = arg;
    strbuf_addf(out, "[%s|%s]", event, data);
    return strcmp(data, "stop") == 0 ? 7 : 0;
}

static void test_events(void **state)
{
    (void)state;
    static const char stream[] = ": keepalive\n\n"
                                 "data: {\"line\":\"a\"}\n\n"
                                 "data:two\r\ndata: lines\r\n\r\n"
                                 "event: end\ndata: {\"reason\":\"done\"}\n\n"
                                 "id: 3\nretry: 10\ndata\n\n"
                                 "data: : not a comment\r\rdata: unfinished";
    static const char want[] = "[message|{\"line\":\"a\"}][message|two\nlines]"
                               "[end|{\"reason\":\"done\"}][message|][message|: not a comment]";
    /* whole, and byte by byte: the same events */
    for (size_t step = sizeof(stream); step >= 1; step = step == sizeof(stream) ? 1 : 0) {
        struct strbuf out = STRBUF_INIT;
        struct loom_sse p;
        loom_sse_init(&p, collect, &out);
        for (size_t i = 0; i < sizeof(stream) - 1; i += step)
            assert_int_equal(
                loom_sse_feed(&p, stream + i,
                              i + step > sizeof(stream) - 1 ? sizeof(stream) - 1 - i : step),
                0);
        assert_string_equal(out.buf, want);
        loom_sse_release(&p);
        strbuf_release(&out);
    }
    /* the handler stops the reading */
    struct strbuf out = STRBUF_INIT;
    struct loom_sse p;
    loom_sse_init(&p, collect, &out);
    assert_int_equal(loom_sse_feed(&p, "data: stop\n\ndata: later\n\n", 25), 7);
    assert_string_equal(out.buf, "[message|stop]");
    loom_sse_release(&p);
    strbuf_release(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
