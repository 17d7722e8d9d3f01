/* A function's code bundle (output_type bundle): the source with the
 * dependencies its step installed (node_modules beside package.json; a
 * Python target directory at the top, which the runtime puts on sys.path),
 * one deterministic tar.gz. It is stored as any function's code is, once per
 * content in function_code, and the run records its sha256: a function
 * names it by that digest. The step is the buildpacks' one, in a container
 * on a node, with the same dependency cache. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "strbuf.h"
#include "tarball.h"
#include "util.h"

/* What a bundle may unpack to: the API's limits on a function's bundle; the
 * links npm makes (node_modules/.bin) stay inside, which the runtimes take. */
static const struct loom_tarball_limits bundle_limits = {64LL << 20, 10000, true};

/* The step's output directory ("app/node_modules") moved to where the
 * runtime looks for it ("node_modules"; "" for Python's, the top). */
struct relocate {
    const char *from, *to;
    struct strbuf name;
};

static int relocate_entry(const char *path, bool is_dir, void *arg, const char **ret_name,
                          struct loom_err *err)
{
    (void)is_dir, (void)err;
    struct relocate *m = arg;
    size_t n = strlen(m->from);
    while (strncmp(path, "./", 2) == 0)
        path += 2;
    if (strncmp(path, m->from, n) != 0 || (path[n] != '/' && path[n] != '\0'))
        return 0; /* the directories above it */
    const char *rest = path + n + (path[n] == '/');
    while (*rest == '/')
        rest++;
    strbuf_reset(&m->name);
    if (*m->to && *rest)
        strbuf_addf(&m->name, "%s/%s", m->to, rest);
    else
        strbuf_addstr(&m->name, *m->to ? m->to : rest);
    if (!m->name.buf || !*m->name.buf)
        return 0; /* the top itself */
    *ret_name = m->name.buf;
    return 1;
}

/* The step's layer, from the cache's repository, into the run's directory. */
static int deps_fetch(struct brun *r, const struct img_layer *l, char ret_path[4200],
                      struct loom_err *err)
{
    snprintf(ret_path, 4200, "%s/deps.tar.gz", r->dir);
    if (loom_registry_fetch_blob(r->cache, l->digest, l->size, l->size, r->dir, ret_path, err) < 0)
        return loom_err_wrap(err, "the dependency layer");
    _cleanup_close_ int fd = open(ret_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open the dependency layer");
    if (loom_tarball_check_fd(fd, &bundle_limits, NULL, err) < 0)
        return loom_err_wrap(err, "the dependencies");
    return 0;
}

/* The bundle's bytes into function_code (nothing when it has them). */
static int bundle_store(struct brun *r, const struct loom_layer_info *info, char ret_hex[65],
                        struct loom_err *err)
{
    _cleanup_free_ char *data = NULL;
    size_t len = 0;
    if (loom_read_file(info->path, &data, &len, err) < 0)
        return -1;
    snprintf(ret_hex, 65, "%s", info->digest + 7);
    _cleanup_free_ char *hex = loom_hex_alloc(data, len);
    _cleanup_pgres_ PGresult *ins =
        loom_db_query(r->db, err,
                      "INSERT INTO function_code (sha256, is_bundle, data) "
                      "VALUES ($1, true, decode($2, 'hex')) ON CONFLICT (sha256) DO NOTHING",
                      ret_hex, hex);
    return ins ? 0 : -1;
}

int bundle_run(struct brun *r, const char *source, struct loom_err *err)
{
    struct src_tree t = {0};
    struct bp_plan p = {0};
    struct img_layer deps = {0};
    struct loom_layer *b = NULL;
    struct loom_layer_info info;
    struct relocate m = {.name = STRBUF_INIT};
    char deps_path[4200], hex[65];
    const struct bp_options o = {builder.npm_registry, builder.pip_index, builder.go_proxy, true};
    int rc = bp_detect_step(r, source, &o, "a function's bundle", &t, &p, err);
    if (rc == 0 && p.build_stack[0]) {
        rc = brun_check(r, err);
        if (rc == 0)
            rc = bp_deps_layer(r, source, &p, &deps, err);
    }
    if (rc == 0)
        rc = brun_check(r, err);
    if (rc == 0) {
        brun_step(r, "bundle", NULL);
        rc = loom_layer_open(r->dir, &b, err);
    }
    if (rc == 0)
        rc = source_add(r, b, source, "", NULL, p.app_exclude, err);
    if (rc == 0 && p.build_stack[0]) {
        /* "/app/node_modules" -> "node_modules", "/layers/python" -> the top */
        m.from = p.step_output + 1;
        m.to = strncmp(m.from, "app/", 4) == 0 ? m.from + 4 : "";
        _cleanup_close_ int fd = -1;
        rc = deps_fetch(r, &deps, deps_path, err);
        if (rc == 0 && (fd = open(deps_path, O_RDONLY | O_CLOEXEC)) < 0)
            rc = loom_err_sys(err, errno, "could not open the dependency layer");
        if (rc == 0)
            rc = loom_layer_add_archive(b, fd, relocate_entry, &m, err);
    }
    if (rc == 0)
        rc = loom_layer_finish(b, &info, err);
    if (rc == 0) {
        /* what a function may be given: the API's limits on a bundle */
        _cleanup_close_ int fd = open(info.path, O_RDONLY | O_CLOEXEC);
        rc = fd < 0 ? loom_err_sys(err, errno, "could not open the bundle")
                    : loom_tarball_check_fd(fd, &bundle_limits, NULL, err);
        if (rc < 0)
            loom_err_wrap(err, "the function's bundle");
    }
    if (rc == 0)
        rc = brun_check(r, err);
    if (rc == 0)
        rc = bundle_store(r, &info, hex, err);
    if (rc == 0) {
        snprintf(r->output_ref, sizeof(r->output_ref), "sha256:%s", hex);
        brun_step_end(r, "succeeded", "%s: %lld entries, %lld bytes", r->output_ref,
                      (long long)info.entries, (long long)info.size);
    }
    strbuf_release(&m.name);
    loom_layer_free(b);
    bp_plan_release(&p);
    src_tree_release(&t);
    return rc;
}
