/* The agent's user namespace ranges: one 65536-id range per project, kept in
 * a file several agents share, and refused input. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../services/agent/agent.h"
#include "util.h"

/* far above any /etc/subuid range a test host may have */
#define BASE 0x40000000u

static char g_dir[64], g_file[128];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/loom-userns-test.XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_file, sizeof(g_file), "%s/sub/ranges", g_dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    loom_rm_rf(g_dir, NULL);
    return 0;
}

static uint32_t range_of(const char *project)
{
    uint32_t base = 0;
    struct loom_err err = LOOM_ERR_INIT;
    int rc = userns_range(g_file, BASE, project, &base, &err);
    if (rc < 0)
        fail_msg("userns_range(%s): %s", project, err.msg);
    return base;
}

static void test_allocate(void **state)
{
    (void)state;
    uint32_t a = range_of("11111111-aaaa-4000-8000-000000000001");
    uint32_t b = range_of("22222222-bbbb-4000-8000-000000000002");
    uint32_t c = range_of("33333333-cccc-4000-8000-000000000003");
    assert_int_equal(a, BASE);
    assert_int_equal(b, BASE + 65536);
    assert_int_equal(c, BASE + 2 * 65536);
    /* a project keeps its range */
    assert_int_equal(range_of("22222222-bbbb-4000-8000-000000000002"), b);
    /* the file says so, one line each, and is not for others to read */
    char *text = NULL;
    assert_int_equal(loom_read_file(g_file, &text, NULL, NULL), 0);
    char want[400];
    snprintf(want, sizeof(want),
             "%u 11111111-aaaa-4000-8000-000000000001\n"
             "%u 22222222-bbbb-4000-8000-000000000002\n"
             "%u 33333333-cccc-4000-8000-000000000003\n",
             a, b, c);
    assert_string_equal(text, want);
    free(text);
    struct stat st;
    assert_int_equal(stat(g_file, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_damaged_lines(void **state)
{
    (void)state;
    /* damaged lines give nothing away, and a taken base stays taken */
    char text[300];
    int n = snprintf(text, sizeof(text), "garbage\n%u\n12345 odd-base\n%u p-one\n\n%u\n", BASE,
                     BASE, BASE + 65536);
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_mkdir_p(g_dir, 0700, &err), 0);
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/sub", g_dir);
    loom_mkdir_p(sub, 0700, NULL);
    assert_int_equal(loom_write_file_atomic(g_file, text, (size_t)n, &err), 0);
    assert_int_equal(range_of("p-one"), BASE);
    assert_int_equal(range_of("p-two"), BASE + 65536);
    assert_int_equal(range_of("p-one"), BASE);
}

static void test_refused(void **state)
{
    (void)state;
    uint32_t base = 7;
    struct loom_err err = LOOM_ERR_INIT;
    const char *bad[] = {"", "a b", "a\nb", "x/y", "p:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(userns_range(g_file, BASE, bad[i], &base, &err), -1);
        assert_int_equal(err.code, LOOM_EINVAL);
        assert_int_equal(base, 7);
        loom_err_clear(&err);
    }
    assert_int_equal(userns_range(g_file, BASE + 1, "p", &base, &err), -1);
    assert_int_equal(err.code, LOOM_EINVAL);
    loom_err_clear(&err);
    assert_int_equal(userns_range(g_file, 0, "p", &base, &err), -1);
    loom_err_clear(&err);
    /* nothing was recorded */
    char *text = NULL;
    if (loom_read_file(g_file, &text, NULL, NULL) == 0)
        assert_string_equal(text, "");
    free(text);
}

static void test_full(void **state)
{
    (void)state;
    /* the last range ends below 2^32 - 1 (no id): from 0xfffe0000 one
     * fits, 0xffff0000 + 65535 would be it */
    uint32_t base;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(userns_range(g_file, 0xfffe0000u, "first", &base, &err), 0);
    assert_int_equal(base, 0xfffe0000u);
    assert_int_equal(userns_range(g_file, 0xfffe0000u, "second", &base, &err), -1);
    assert_int_equal(err.code, LOOM_ECONFLICT);
}

static void test_concurrent(void **state)
{
    (void)state;
    /* agents side by side: 8 processes, 8 projects, 8 distinct ranges */
    for (int i = 0; i < 8; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            char p[32];
            snprintf(p, sizeof(p), "proj-%d", i);
            uint32_t b;
            _exit(userns_range(g_file, BASE, p, &b, NULL) == 0 ? 0 : 1);
        }
        assert_true(pid > 0);
    }
    for (int i = 0; i < 8; i++) {
        int st;
        assert_true(wait(&st) > 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    uint32_t seen[8];
    for (int i = 0; i < 8; i++) {
        char p[32];
        snprintf(p, sizeof(p), "proj-%d", i);
        seen[i] = range_of(p);
        assert_true(seen[i] >= BASE && seen[i] < BASE + 8 * 65536);
        assert_int_equal(seen[i] % 65536, 0);
        for (int j = 0; j < i; j++)
            assert_true(seen[j] != seen[i]);
    }
}

/* A stem cell's range goes back when it is gone: the next one reuses it,
 * the others keep theirs, and releasing an unknown name changes nothing. */
static void test_release(void **state)
{
    (void)state;
    uint32_t keep = range_of("project-a");
    uint32_t stem = range_of("stem-1");
    assert_int_equal(stem, keep + 65536);
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(userns_release(g_file, "stem-1", &err), 0);
    assert_int_equal(userns_release(g_file, "stem-unknown", &err), 0);
    assert_int_equal(range_of("project-a"), keep);
    assert_int_equal(range_of("stem-2"), stem); /* the freed range, from the file */
    char *text = NULL;
    assert_int_equal(loom_read_file(g_file, &text, NULL, &err), 0);
    assert_null(strstr(text, "stem-1"));
    assert_non_null(strstr(text, "project-a"));
    assert_non_null(strstr(text, "stem-2"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_allocate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
