/* loom-builder: reading a Dockerfile, and the line of a failed step that
 * says why. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "services/builder/builder.h"

static void test_parse(void **state)
{
    (void)state;
    const char *text = "# syntax=docker/dockerfile:1\n"
                       "ARG V=1\n"
                       "FROM busybox AS build\n"
                       "RUN echo a && \\\n"
                       "    echo b\n"
                       "\n"
                       "from build as second\n"
                       "COPY --from=build /etc/x /y\n"
                       "FROM 127.0.0.1:5000/p/base:1\n"
                       "COPY ./a b/../c /dst/\n"
                       "CMD [\"true\"]\n";
    struct df d;
    struct loom_err err = LOOM_ERR_INIT;
    if (df_parse(text, &d, &err) < 0)
        fail_msg("%s", err.msg);
    assert_int_equal(d.n, 8);
    assert_int_equal(d.nstages, 3);
    assert_string_equal(d.ins[1].keyword, "FROM");
    assert_string_equal(d.ins[1].from_image, "busybox");
    assert_string_equal(d.ins[1].stage, "build");
    assert_int_equal(d.ins[2].line, 4);
    assert_string_equal(d.ins[2].args, "echo a && echo b");
    assert_int_equal(d.ins[3].line, 7);
    assert_string_equal(d.ins[3].from_image, "build");
    assert_true(df_is_stage(&d, 3, "build"));
    assert_false(df_is_stage(&d, 1, "build")); /* not before it was named */
    assert_true(df_is_stage(&d, 0, "scratch"));
    assert_int_equal(d.ins[5].line, 9);
    /* buildah's step, back to its line */
    assert_int_equal(df_line_of(&d, "STEP 2/2: RUN echo a && echo b"), 4);
    assert_int_equal(df_line_of(&d, "CMD [\"true\"]"), 11);
    assert_int_equal(df_line_of(&d, "RUN nothing like it"), 0);
    df_release(&d);

    static const char *const bad[][2] = {
        {"RUN true\nFROM x\n", "line 1: RUN before the first FROM"},
        {"FROM\n", "line 1: FROM needs an image"},
        {"FROM x y z\n", "line 1: FROM needs an image [AS name]"},
        {"FROM x\nCOPY ../secret /s\n", "line 2: COPY ../secret reaches outside"},
        {"FROM x\nADD a/../../b /s\n", "line 2: ADD a/../../b reaches outside"},
        {"# nothing\n", "no FROM instruction"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (df_parse(bad[i][0], &d, &err) == 0)
            fail_msg("%s was accepted", bad[i][0]);
        if (!strstr(err.msg, bad[i][1]))
            fail_msg("\"%s\" does not say \"%s\"", err.msg, bad[i][1]);
    }
    /* a stage's files may come from anywhere in it */
    assert_int_equal(df_parse("FROM x AS a\nFROM y\nCOPY --from=a ../../z /z\n", &d, &err), 0);
    df_release(&d);
}

static void test_failure_line(void **state)
{
    (void)state;
    json_t *npm = json_pack("[s,s,s,s]", "npm ERR! code E404", "npm ERR! 404 Not Found - GET x",
                            "npm ERR! 404 more", "");
    assert_string_equal(step_failure_line(STEP_NPM, npm), "npm ERR! 404 Not Found - GET x");
    json_t *pip = json_pack("[s,s,s]", "Looking in links: /app/wheels",
                            "ERROR: Could not find a version that satisfies the requirement x",
                            "ERROR: No matching distribution found for x==1");
    assert_string_equal(step_failure_line(STEP_PIP, pip),
                        "ERROR: No matching distribution found for x==1");
    json_t *go = json_pack("[s,s]", "# example.com/a", "./main.go:7:2: undefined: fmt.Printl");
    assert_string_equal(step_failure_line(STEP_GO, go), "./main.go:7:2: undefined: fmt.Printl");
    json_t *b = json_pack("[s,s,s]", "[1/2] STEP 2/2: RUN exit 3",
                          "error building at STEP \"RUN exit 3\": exit status 3", "bye");
    assert_string_equal(step_failure_line(STEP_BUILDAH, b),
                        "error building at STEP \"RUN exit 3\": exit status 3");
    json_t *other = json_pack("[s,s,s]", "a", "last one", "  ");
    assert_string_equal(step_failure_line(STEP_OTHER, other), "last one");
    json_t *none = json_array();
    assert_null(step_failure_line(STEP_OTHER, none));
    json_decref(npm), json_decref(pip), json_decref(go), json_decref(b), json_decref(other);
    json_decref(none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_failure_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
