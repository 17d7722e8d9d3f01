/* A run's source: fetched as one tar.gz (an upload from the registry, or a
 * git checkout archived), checked as the API checks uploads, listed for
 * detection, and copied into layers without being unpacked anywhere. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "strbuf.h"
#include "tarball.h"
#include "util.h"

/* What a source may unpack to, as the API's upload limit allows. */
static const struct loom_tarball_limits source_limits = {(int64_t)1 << 30, 200000, true};

int source_fetch(struct brun *r, char ret_path[4200], struct loom_err *err)
{
    snprintf(ret_path, 4200, "%s/source.tar.gz", r->dir);
    const char *digest = r->spec.source_upload;
    char detail[512];
    if (r->spec.source_type == LOOM_SOURCE_GIT) {
        brun_step(r, "source", r->spec.source_url);
        char commit[64];
        if (git_fetch(r, ret_path, commit, err) < 0)
            return -1;
        snprintf(detail, sizeof(detail), "%s at %s", r->spec.source_url, commit);
    } else {
        brun_step(r, "source", digest);
        _cleanup_pgres_ PGresult *res = loom_db_query(
            r->db, err, "SELECT size FROM build_sources WHERE project_id = $1 AND digest = $2",
            r->project_id, digest);
        if (!res)
            return -1;
        if (PQntuples(res) == 0)
            return loom_err_set(err, LOOM_EINVAL,
                                "field \"source_upload\": %s is not an upload of this project",
                                digest);
        int64_t size = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        _cleanup_free_ char *repo = NULL;
        if (asprintf(&repo, "%s/loom-sources", r->project) < 0)
            abort();
        struct loom_registry_client *c = NULL;
        if (reg_client(repo, &c, err) < 0)
            return -1;
        int rc = loom_registry_fetch_blob(c, digest, size, size, r->dir, ret_path, err);
        loom_registry_client_free(c);
        if (rc < 0)
            return loom_err_wrap(err, "fetching the upload");
        snprintf(detail, sizeof(detail), "upload %.19s..., %lld bytes", digest, (long long)size);
    }
    _cleanup_close_ int fd = open(ret_path, O_RDONLY | O_CLOEXEC);
    int64_t files = 0;
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open the source");
    if (loom_tarball_check_fd(fd, &source_limits, &files, err) < 0)
        return loom_err_wrap(err, "the source");
    brun_step_end(r, "succeeded", "%s, %lld files", detail, (long long)files);
    return 0;
}

/* p without "./" and trailing '/', relative to context ("" for none):
 * NULL when outside it, "" for the context itself. */
static const char *under_context(const char *p, const char *context, struct strbuf *buf)
{
    loom_tarball_normalize(p, buf);
    if (!buf->buf)
        strbuf_addstr(buf, "");
    size_t k = strlen(context);
    if (k == 0)
        return buf->buf;
    if (strncmp(buf->buf, context, k) != 0 || (buf->buf[k] != '/' && buf->buf[k] != '\0'))
        return NULL;
    return buf->buf[k] ? buf->buf + k + 1 : "";
}

static void archive_freep(struct archive **a)
{
    if (*a)
        archive_read_free(*a);
}

void src_tree_release(struct src_tree *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->e[i].path);
    free(t->e);
    json_decref(t->texts);
    *t = (struct src_tree){0};
}

int source_list(const char *path, const char *context, struct src_tree *ret, struct loom_err *err)
{
    __attribute__((cleanup(archive_freep))) struct archive *a = loom_tarball_reader();
    if (archive_read_open_filename(a, path, 65536) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "the source: %s", archive_error_string(a));
    struct src_tree t = {.texts = json_object()};
    size_t cap = 0;
    _cleanup_strbuf_ struct strbuf buf = STRBUF_INIT;
    struct archive_entry *e;
    bool context_seen = !context || !*context;
    int r;
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *rel = under_context(archive_entry_pathname(e), context ? context : "", &buf);
        if (!rel)
            continue;
        context_seen = true;
        if (!*rel)
            continue;
        unsigned type = archive_entry_filetype(e);
        if (t.n == cap && !(t.e = realloc(t.e, (cap = cap ? 2 * cap : 256) * sizeof(*t.e))))
            abort();
        struct src_entry *s = &t.e[t.n++];
        *s = (struct src_entry){strdup(rel),
                                type == AE_IFDIR   ? 'd'
                                : type == AE_IFLNK ? 'l'
                                                   : 'f',
                                archive_entry_perm(e), archive_entry_size(e)};
        size_t max = 0;
        if (s->type == 'f' && bp_wants_text(rel, s->mode, &max)) {
            _cleanup_strbuf_ struct strbuf text = STRBUF_INIT;
            char data[65536];
            la_ssize_t n;
            while ((n = archive_read_data(a, data, sizeof(data))) > 0 && text.len < max)
                strbuf_add(&text, data, (size_t)n);
            if (n < 0) {
                src_tree_release(&t);
                return loom_err_set(err, LOOM_EINVAL, "the source: %s", archive_error_string(a));
            }
            if (text.len > max) /* the first line of a script, a manifest up to 1 MiB */
                text.buf[max] = '\0', text.len = max;
            if (max <= 256 && text.len) /* a script: its first line */
                text.buf[strcspn(text.buf, "\n")] = '\0';
            if (text.len <= max && !memchr(text.buf ? text.buf : "", 0, text.len))
                json_object_set_new(t.texts, rel, json_string(text.buf ? text.buf : ""));
        }
    }
    if (r != ARCHIVE_EOF || !context_seen) {
        src_tree_release(&t);
        return r != ARCHIVE_EOF
                   ? loom_err_set(err, LOOM_EINVAL, "the source: %s", archive_error_string(a))
                   : loom_err_set(err, LOOM_EINVAL,
                                  "field \"source_context_dir\": the source has no \"%s\"",
                                  context);
    }
    *ret = t;
    return 0;
}

/* Which entries go in a layer of the source, and under what name. */
struct pick {
    const char *context;
    const char *prefix; /* "app" */
    json_t *only;       /* paths to take (and their directories), or NULL: all */
    json_t *exclude;    /* top-level names to leave out, or NULL */
    struct strbuf buf, name;
};

static bool listed(json_t *arr, const char *rel, bool as_parent)
{
    size_t i, n = strlen(rel);
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        if (strcmp(s, rel) == 0 || (as_parent && strncmp(s, rel, n) == 0 && s[n] == '/'))
            return true;
    }
    return false;
}

static int pick_entry(const char *path, bool is_dir, void *arg, const char **ret_name,
                      struct loom_err *err)
{
    (void)err;
    struct pick *p = arg;
    const char *rel = under_context(path, p->context, &p->buf);
    if (!rel || !*rel)
        return 0;
    size_t top = strcspn(rel, "/");
    _cleanup_free_ char *first = strndup(rel, top);
    if (strcmp(first, ".git") == 0 || (p->exclude && listed(p->exclude, first, false)))
        return 0;
    if (p->only && !listed(p->only, rel, is_dir))
        return 0;
    strbuf_reset(&p->name);
    strbuf_addf(&p->name, "%s%s%s", p->prefix, *p->prefix ? "/" : "", rel);
    *ret_name = p->name.buf;
    return 1;
}

int source_add(struct brun *r, struct loom_layer *l, const char *path, const char *prefix,
               json_t *only, json_t *exclude, struct loom_err *err)
{
    struct pick p = {.context = r->spec.source_context_dir ? r->spec.source_context_dir : "",
                     .prefix = prefix,
                     .only = only,
                     .exclude = exclude,
                     .buf = STRBUF_INIT,
                     .name = STRBUF_INIT};
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    int rc = fd < 0 ? loom_err_sys(err, errno, "could not open the source") : 0;
    if (rc == 0)
        rc = loom_layer_add_archive(l, fd, pick_entry, &p, err);
    strbuf_release(&p.buf);
    strbuf_release(&p.name);
    return rc;
}

int source_layer(struct brun *r, const char *path, json_t *only, json_t *exclude,
                 struct loom_layer **ret_layer, struct loom_layer_info *ret, struct loom_err *err)
{
    struct loom_layer *l = NULL;
    int rc = loom_layer_open(r->dir, &l, err);
    if (rc == 0)
        rc = loom_layer_add_dir(l, "app", 0755, err);
    if (rc == 0)
        rc = source_add(r, l, path, "app", only, exclude, err);
    if (rc == 0)
        rc = loom_layer_finish(l, ret, err);
    if (rc < 0) {
        loom_layer_free(l);
        return -1;
    }
    *ret_layer = l;
    return 0;
}

int source_read(const char *path, const char *context, const char *rel, size_t max, char **ret,
                struct loom_err *err)
{
    __attribute__((cleanup(archive_freep))) struct archive *a = loom_tarball_reader();
    if (archive_read_open_filename(a, path, 65536) != ARCHIVE_OK)
        return loom_err_set(err, LOOM_EINVAL, "the source: %s", archive_error_string(a));
    _cleanup_strbuf_ struct strbuf buf = STRBUF_INIT, want = STRBUF_INIT;
    loom_tarball_normalize(rel, &want);
    struct archive_entry *e;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *p = under_context(archive_entry_pathname(e), context ? context : "", &buf);
        if (!p || !want.buf || strcmp(p, want.buf) != 0 || archive_entry_filetype(e) != AE_IFREG)
            continue;
        if (archive_entry_size(e) > (int64_t)max)
            return loom_err_set(err, LOOM_EINVAL, "%s is larger than %zu bytes", rel, max);
        struct strbuf text = STRBUF_INIT;
        char data[65536];
        la_ssize_t n;
        while ((n = archive_read_data(a, data, sizeof(data))) > 0)
            strbuf_add(&text, data, (size_t)n);
        if (n < 0) {
            strbuf_release(&text);
            return loom_err_set(err, LOOM_EINVAL, "the source: %s", archive_error_string(a));
        }
        if (!text.buf)
            strbuf_addstr(&text, "");
        *ret = strbuf_detach(&text, NULL);
        return 0;
    }
    return loom_err_set(err, LOOM_ENOTFOUND, "the source has no %s%s%s", context ? context : "",
                        context && *context ? "/" : "", rel);
}
