/* loom-builder: buildpacks' detection, one source shape at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/builder/builder.h"

/* A source: "path[*]" (a trailing * makes it executable) = text, or a
 * directory ending in '/'. */
struct file {
    const char *path, *text;
};

static void tree(const struct file *files, size_t n, struct src_tree *t)
{
    t->e = calloc(n, sizeof(*t->e));
    t->n = n;
    t->texts = json_object();
    for (size_t i = 0; i < n; i++) {
        char *p = strdup(files[i].path);
        size_t len = strlen(p);
        bool exec = len && p[len - 1] == '*';
        if (exec)
            p[--len] = '\0';
        bool dir = len && p[len - 1] == '/';
        if (dir)
            p[--len] = '\0';
        t->e[i] = (struct src_entry){p, dir ? 'd' : 'f', exec ? 0755 : 0644,
                                     files[i].text ? (int64_t)strlen(files[i].text) : 0};
        size_t max;
        if (!dir && files[i].text && bp_wants_text(p, t->e[i].mode, &max))
            json_object_set_new(t->texts, p, json_string(files[i].text));
    }
}

static void tree_release(struct src_tree *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->e[i].path);
    free(t->e);
    json_decref(t->texts);
}

static struct bp_options opts = {0};

/* Detects files; want: a plan ("" error expected) whose language is it,
 * or the error text. Returns the plan for more checks (or an empty one). */
static struct bp_plan detect(const struct file *files, size_t n, const char *lang,
                             const char *errtext)
{
    struct src_tree t;
    tree(files, n, &t);
    struct bp_plan p = {0};
    struct loom_err err = LOOM_ERR_INIT;
    int rc = bp_detect(&t, &opts, &p, &err);
    tree_release(&t);
    if (lang) {
        if (rc < 0)
            fail_msg("refused: %s", err.msg);
        assert_string_equal(p.language, lang);
    } else {
        if (rc == 0)
            fail_msg("detected %s (%s), expected \"%s\"", p.language, p.detail, errtext);
        if (!strstr(err.msg, errtext))
            fail_msg("\"%s\" does not say \"%s\"", err.msg, errtext);
    }
    return p;
}

static const char *cmd(const struct bp_plan *p)
{
    static char buf[512];
    char *s = json_dumps(p->cmd, JSON_COMPACT);
    snprintf(buf, sizeof(buf), "%s", s ? s : "");
    free(s);
    return buf;
}

static void test_node(void **state)
{
    (void)state;
    const struct file a[] = {
        {"package.json", "{\"name\":\"a\",\"dependencies\":{\"ms\":\"2.1.3\"}}"},
        {"package-lock.json", "{}"},
        {"server.js", "x"},
    };
    struct bp_plan p = detect(a, 3, "nodejs", NULL);
    assert_string_equal(p.step, "npm ci");
    assert_string_equal(p.build_stack, "nodejs-build");
    assert_string_equal(p.run_stack, "nodejs");
    assert_string_equal(p.step_output, "/app/node_modules");
    assert_int_equal(json_array_size(p.step_inputs), 2); /* the manifest and its lock */
    assert_false(p.step_all_source);
    assert_non_null(strstr(p.step_script, "npm ci --omit=dev"));
    assert_string_equal(cmd(&p), "[\"node\",\"server.js\"]");
    assert_string_equal(json_string_value(json_array_get(p.app_exclude, 0)), "node_modules");
    bp_plan_release(&p);

    /* no lock: npm install; scripts.start wins over main */
    const struct file b[] = {
        {"package.json", "{\"main\":\"lib/a.js\",\"scripts\":{\"start\":\"node lib/a.js --x\"},"
                         "\"dependencies\":{\"ms\":\"*\"}}"}};
    p = detect(b, 1, "nodejs", NULL);
    assert_string_equal(p.step, "npm install");
    assert_string_equal(cmd(&p), "[\"/bin/sh\",\"-c\",\"node lib/a.js --x\"]");
    bp_plan_release(&p);

    /* no dependencies: no step; main; a Procfile wins */
    const struct file c[] = {{"package.json", "{\"main\":\"a.js\"}"}, {"a.js", "x"}};
    p = detect(c, 2, "nodejs", NULL);
    assert_string_equal(p.build_stack, "");
    assert_null(p.step_script);
    assert_string_equal(cmd(&p), "[\"node\",\"a.js\"]");
    bp_plan_release(&p);
    const struct file d[] = {{"package.json", "{\"main\":\"a.js\"}"},
                             {"Procfile", "# web\nworker: node w.js\nweb: node b.js 8080\n"}};
    p = detect(d, 2, "nodejs", NULL);
    assert_string_equal(cmd(&p), "[\"/bin/sh\",\"-c\",\"node b.js 8080\"]");
    bp_plan_release(&p);

    const struct file bad[] = {{"package.json", "{\"name\": \"a\",\n  \"main\": x\n}"}};
    detect(bad, 1, NULL, "package.json line 2");
    const struct file nostart[] = {{"package.json", "{\"name\":\"a\"}"}};
    detect(nostart, 1, NULL, "no scripts.start and no main");
}

static void test_python(void **state)
{
    (void)state;
    const struct file a[] = {
        {"requirements.txt", "# deps\nhello==1.0\n"},
        {"wheels/", NULL},
        {"wheels/hello-1.0-py3-none-any.whl", "PK"},
        {"app.py", "print(1)"},
    };
    struct bp_plan p = detect(a, 4, "python", NULL);
    assert_string_equal(p.step, "pip install");
    assert_string_equal(p.build_stack, "python-build");
    assert_non_null(strstr(p.step_script, "--no-index"));
    assert_non_null(strstr(p.step_script, "--find-links /app/wheels"));
    assert_non_null(strstr(p.step_script, "-r /app/requirements.txt"));
    assert_int_equal(json_array_size(p.step_inputs), 2); /* the wheel and requirements.txt */
    assert_string_equal(cmd(&p), "[\"python3\",\"app.py\"]");
    bp_plan_release(&p);

    /* nothing required: no step */
    const struct file b[] = {{"requirements.txt", "\n# none\n"}, {"main.py", "x"}};
    p = detect(b, 2, "python", NULL);
    assert_null(p.step_script);
    assert_string_equal(cmd(&p), "[\"python3\",\"main.py\"]");
    bp_plan_release(&p);

    const struct file c[] = {{"requirements.txt", "flask\n"}, {"lib.py", "x"}};
    detect(c, 2, NULL, "app.py, main.py, server.py or wsgi.py");
}

static void test_go_static_scripts(void **state)
{
    (void)state;
    const struct file g[] = {{"go.mod", "module x\n\ngo 1.19\n"}, {"main.go", "package main"}};
    struct bp_plan p = detect(g, 2, "go", NULL);
    assert_true(p.step_all_source);
    assert_false(p.app_layer);
    assert_string_equal(p.run_stack, "busybox");
    assert_non_null(strstr(p.step_script, "GOPROXY=off"));
    assert_string_equal(cmd(&p), "[\"/layers/go/bin/app\"]");
    bp_plan_release(&p);

    const struct file s[] = {{"index.html", "<p>hi"}, {"style.css", "x"}};
    p = detect(s, 2, "static", NULL);
    assert_string_equal(p.run_stack, "busybox");
    assert_non_null(strstr(cmd(&p), "httpd"));
    bp_plan_release(&p);

    const struct file sh[] = {{"README", "x"}, {"serve*", "#!/bin/sh\nexec httpd -f"}};
    p = detect(sh, 2, "script", NULL);
    assert_string_equal(p.run_stack, "busybox");
    assert_string_equal(cmd(&p), "[\"/app/serve\"]");
    bp_plan_release(&p);
    const struct file py[] = {{"run.sh", "#!/usr/bin/env python3\nprint(1)"}};
    p = detect(py, 1, "script", NULL);
    assert_string_equal(p.run_stack, "python");
    assert_string_equal(cmd(&p), "[\"/bin/sh\",\"/app/run.sh\"]");
    bp_plan_release(&p);

    const struct file proc[] = {{"Procfile", "web: httpd -f -p 8080\n"}, {"data.txt", "x"}};
    p = detect(proc, 2, "procfile", NULL);
    assert_string_equal(cmd(&p), "[\"/bin/sh\",\"-c\",\"httpd -f -p 8080\"]");
    bp_plan_release(&p);
}

static void test_refusals(void **state)
{
    (void)state;
    const struct file df[] = {{"Dockerfile", "FROM x"}, {"package.json", "{}"}};
    detect(df, 2, NULL, "dockerfile strategy");
    const struct file none[] = {{"README.md", "hello"}, {"src/", NULL}};
    detect(none, 2, NULL, "no buildpack detects this source");
    const struct file proc[] = {{"Procfile", "web node a.js\n"}, {"index.html", "x"}};
    detect(proc, 2, NULL, "Procfile line 1");
    const struct file weird[] = {{"run*", "#!/usr/bin/ruby\nputs 1"}};
    detect(weird, 1, NULL, "no stack runs that interpreter");
}

/* A function's bundle: the same steps, no command, the runtime's entry. */
static void test_function(void **state)
{
    (void)state;
    opts.function = true;
    const struct file a[] = {
        {"package.json", "{\"name\":\"f\",\"dependencies\":{\"ms\":\"2.1.3\"}}"},
        {"index.js", "x"},
    };
    struct bp_plan p = detect(a, 2, "nodejs", NULL);
    assert_string_equal(p.step, "npm install");
    assert_string_equal(p.step_output, "/app/node_modules");
    assert_null(p.cmd);
    assert_non_null(strstr(p.detail, "function entry index.js"));
    bp_plan_release(&p);
    /* main, with require()'s own completion; a main that is not there */
    const struct file b[] = {{"package.json", "{\"main\":\"./lib/fn\"}"}, {"lib/fn.js", "x"}};
    p = detect(b, 2, "nodejs", NULL);
    bp_plan_release(&p);
    const struct file c[] = {{"package.json", "{\"main\":\"gone.js\"}"}, {"index.js", "x"}};
    p = detect(c, 2, NULL, "its main \"gone.js\" is not in the source");
    const struct file d[] = {{"package.json", "{}"}, {"server.js", "x"}};
    p = detect(d, 2, NULL, "a Node.js function needs index.js");
    /* Python: pip into the top of the bundle; __main__.py or main.py */
    const struct file e[] = {{"requirements.txt", "greet==1.0\n"}, {"__main__.py", "x"}};
    p = detect(e, 2, "python", NULL);
    assert_string_equal(p.step, "pip install");
    assert_non_null(strstr(p.detail, "function entry __main__.py"));
    bp_plan_release(&p);
    const struct file f[] = {{"requirements.txt", "greet==1.0\n"}, {"app.py", "x"}};
    p = detect(f, 2, NULL, "a Python function needs __main__.py or main.py");
    /* nothing else makes a function's bundle, a Procfile included */
    const struct file g[] = {{"go.mod", "module x\n"}, {"main.go", "x"}};
    p = detect(g, 2, NULL, "built from Node.js (package.json) or Python");
    const struct file h[] = {{"Procfile", "web: ./run\n"}, {"run*", "#!/bin/sh\n"}};
    p = detect(h, 2, NULL, "built from Node.js (package.json) or Python");
    opts.function = false;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node),
        cmocka_unit_test(test_python),
        cmocka_unit_test(test_go_static_scripts),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_function),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
