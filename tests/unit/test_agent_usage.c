/* The agent's usage: the samples an instance's cursor makes, and the
 * durable outbox (in a temporary directory). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/agent/agent.h"
#include "util.h"

static void test_next_sample(void **state)
{
    (void)state;
    struct usage_cursor c = {.ts_ms = 1000000};
    Loom__V1__UsageSample s = LOOM__V1__USAGE_SAMPLE__INIT;
    struct usage_reading rd = {.now_ms = 1005000, .cpu_total_ns = 2500000000ULL};
    usage_next_sample(&c, &rd, &s);
    assert_int_equal(s.seq, 1005000);
    assert_int_equal(s.start_unix_ms, 1000000);
    assert_int_equal(s.ts_unix_ms, 1005000);
    assert_int_equal(s.interval_ms, 5000);
    assert_int_equal(s.cpu_ns, 2500000000ULL);
    assert_int_equal(s.cpu_usage_ns, 2500000000ULL);

    /* the next covers what came after; the wall clock going back neither
     * reuses a seq nor makes a negative interval */
    rd = (struct usage_reading){.now_ms = 1004000, .cpu_total_ns = 2600000000ULL};
    usage_next_sample(&c, &rd, &s);
    assert_int_equal(s.seq, 1005001);
    assert_int_equal(s.start_unix_ms, 1005000);
    assert_int_equal(s.interval_ms, 0);
    assert_int_equal(s.cpu_ns, 100000000);

    /* the samples add up to the counter, whatever their number */
    uint64_t sum = 2500000000ULL + 100000000;
    for (int i = 1; i <= 10; i++) {
        rd = (struct usage_reading){.now_ms = 1005000 + i * 1000,
                                    .cpu_total_ns = 2600000000ULL + (uint64_t)i * 12345};
        usage_next_sample(&c, &rd, &s);
        sum += s.cpu_ns;
    }
    assert_int_equal(sum, 2600000000ULL + 10 * 12345);
    assert_int_equal(c.ts_ms, 1015000);

    /* a counter that went down counts as nothing used, and is the new base */
    rd = (struct usage_reading){.now_ms = 1016000, .cpu_total_ns = 5};
    usage_next_sample(&c, &rd, &s);
    assert_int_equal(s.cpu_ns, 0);
    assert_int_equal(c.cpu_ns, 5);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    if (d)
        closedir(d);
    return n;
}

/* An outbox in a new temporary directory (dir: a mkdtemp template). */
static struct usage_outbox *temp_outbox(char *dir)
{
    assert_non_null(mkdtemp(dir));
    struct usage_outbox *ob = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(usage_outbox_open(dir, &ob, &err), 0);
    return ob;
}

static void test_outbox(void **state)
{
    (void)state;
    char dir[] = "/tmp/loom-outbox-test.XXXXXX";
    struct usage_outbox *ob = temp_outbox(dir);
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(usage_outbox_count(ob), 0);
    assert_int_equal(usage_outbox_next_due_ms(ob), INT64_MAX);

    const uint8_t a[] = {1, 2, 3}, b[] = {4, 5};
    assert_int_equal(usage_outbox_put(ob, "inst-1:100", a, sizeof(a), 1000, &err), 0);
    assert_int_equal(usage_outbox_put(ob, "inst-1:200", b, sizeof(b), 1000, &err), 0);
    assert_int_equal(usage_outbox_put(ob, "inst-2:150", b, sizeof(b), 1500, &err), 0);
    assert_int_equal(usage_outbox_put(ob, "../x:1", a, 1, 1000, &err), -1);
    assert_int_equal(usage_outbox_put(ob, "inst-1:12a", a, 1, 1000, &err), -1);
    assert_int_equal(count_files(dir), 3);

    /* oldest first; nothing before it is due */
    struct usage_outbox_entry e;
    assert_false(usage_outbox_next_due(ob, 999, &e));
    assert_true(usage_outbox_next_due(ob, 1000, &e));
    assert_string_equal(e.id, "inst-1:100");
    assert_int_equal(e.len, 3);
    assert_memory_equal(e.data, a, 3);
    assert_int_equal(e.attempts, 0);
    usage_outbox_entry_release(&e);

    /* sent and acknowledged by JetStream: due again only after resend */
    usage_outbox_sent(ob, "inst-1:100", true, 1000, 30000);
    assert_true(usage_outbox_next_due(ob, 2000, &e));
    assert_string_equal(e.id, "inst-1:200");
    usage_outbox_entry_release(&e);
    usage_outbox_sent(ob, "inst-1:200", true, 2000, 30000);
    /* a failed send: after a second */
    assert_true(usage_outbox_next_due(ob, 2000, &e));
    assert_string_equal(e.id, "inst-2:150");
    usage_outbox_entry_release(&e);
    usage_outbox_sent(ob, "inst-2:150", false, 2000, 30000);
    assert_false(usage_outbox_next_due(ob, 2999, &e));
    assert_int_equal(usage_outbox_next_due_ms(ob), 3000);
    assert_true(usage_outbox_next_due(ob, 3000, &e));
    assert_string_equal(e.id, "inst-2:150");
    usage_outbox_entry_release(&e);
    usage_outbox_sent(ob, "inst-2:150", false, 3000, 30000);
    assert_int_equal(usage_outbox_next_due_ms(ob), 5000); /* doubled */
    usage_outbox_sent(ob, "inst-2:150", true, 5000, 30000);

    /* no commit notice: sent again after 30 s, then after 60 s */
    assert_true(usage_outbox_next_due(ob, 31000, &e));
    assert_string_equal(e.id, "inst-1:100");
    assert_int_equal(e.attempts, 1);
    usage_outbox_entry_release(&e);
    usage_outbox_sent(ob, "inst-1:100", true, 31000, 30000);

    /* the newest sample of an instance, for a cursor after a crash */
    uint64_t seq = 0;
    uint8_t *data = NULL;
    size_t len = 0;
    assert_true(usage_outbox_last(ob, "inst-1", &seq, &data, &len));
    assert_int_equal(seq, 200);
    assert_int_equal(len, 2);
    free(data);
    assert_false(usage_outbox_last(ob, "inst-", &seq, &data, &len));

    /* committed: gone from memory and disk */
    assert_true(usage_outbox_done(ob, "inst-1:200"));
    assert_false(usage_outbox_done(ob, "inst-1:200"));
    assert_false(usage_outbox_done(ob, "nope:1"));
    assert_int_equal(usage_outbox_count(ob), 2);
    assert_int_equal(count_files(dir), 2);
    usage_outbox_free(ob);

    /* a restart finds what was not committed, all due at once, in order;
     * a write a crash cut short is removed */
    char tmp[256];
    snprintf(tmp, sizeof(tmp), "%s/.tmp-0123", dir);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(usage_outbox_open(dir, &ob, &err), 0);
    assert_int_equal(usage_outbox_count(ob), 2);
    assert_true(usage_outbox_next_due(ob, 0, &e));
    assert_string_equal(e.id, "inst-1:100");
    usage_outbox_entry_release(&e);
    assert_int_equal(access(tmp, F_OK), -1);
    assert_true(usage_outbox_done(ob, "inst-1:100"));
    assert_true(usage_outbox_done(ob, "inst-2:150"));
    usage_outbox_free(ob);
    assert_int_equal(count_files(dir), 0);
    assert_int_equal(loom_rm_rf(dir, &err), 0);
}

/* Many samples: the index and the heap stay consistent through growth and
 * removals in any order. */
static void test_outbox_many(void **state)
{
    (void)state;
    char dir[] = "/tmp/loom-outbox-test.XXXXXX";
    struct usage_outbox *ob = temp_outbox(dir);
    struct loom_err err = LOOM_ERR_INIT;
    const uint8_t d[] = {9};
    char id[64];
    for (int i = 0; i < 700; i++) {
        snprintf(id, sizeof(id), "i%d:%d", i % 7, 1000 + i);
        assert_int_equal(usage_outbox_put(ob, id, d, 1, 5000 - i, &err), 0);
    }
    for (int i = 0; i < 700; i += 2) {
        snprintf(id, sizeof(id), "i%d:%d", i % 7, 1000 + i);
        assert_true(usage_outbox_done(ob, id));
    }
    int64_t last = 0;
    struct usage_outbox_entry e;
    int seen = 0;
    while (usage_outbox_next_due(ob, 10000, &e)) {
        int n = atoi(strchr(e.id, ':') + 1) - 1000;
        assert_true(n % 2 == 1);
        assert_true(5000 - n >= last);
        last = 5000 - n;
        assert_true(usage_outbox_done(ob, e.id));
        usage_outbox_entry_release(&e);
        seen++;
    }
    assert_int_equal(seen, 350);
    usage_outbox_free(ob);
    assert_int_equal(loom_rm_rf(dir, &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_sample),
        cmocka_unit_test(test_outbox),
        cmocka_unit_test(test_outbox_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
