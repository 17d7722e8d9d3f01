/* Reading a Dockerfile before buildah does: its instructions with their
 * line numbers, the images its stages start FROM, and COPY or ADD sources
 * that would reach outside the build context. A pure function. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "builder.h"
#include "cleanup.h"
#include "strbuf.h"
#include "tarball.h"

void df_release(struct df *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->ins[i].keyword);
        free(d->ins[i].args);
        free(d->ins[i].from_image);
        free(d->ins[i].stage);
    }
    free(d->ins);
    *d = (struct df){0};
}

/* The next word of *p (split on blanks), allocated; NULL at the end. */
static char *word(const char **p)
{
    const char *s = *p;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return NULL;
    size_t n = strcspn(s, " \t");
    *p = s + n;
    return strndup(s, n);
}

/* Whether a COPY or ADD source leaves the context: ".." above its top (an
 * absolute source is read from the context's top). */
static bool escapes(const char *src)
{
    return !loom_tarball_link_inside("context", src + strspn(src, "/"));
}

static int check_copy(struct df_ins *in, struct loom_err *err)
{
    const char *p = in->args;
    _cleanup_free_ char *last = NULL;
    bool from_stage = false;
    char *w;
    /* JSON form ["a", "b"] is checked by buildah; the shell form here */
    if (p[strspn(p, " \t")] == '[')
        return 0;
    while ((w = word(&p))) {
        if (strncmp(w, "--", 2) == 0) {
            from_stage = from_stage || strncmp(w, "--from=", 7) == 0;
            free(w);
            continue;
        }
        if (last && !from_stage && escapes(last)) {
            int rc = loom_err_set(err, LOOM_EINVAL,
                                  "Dockerfile line %d: %s %s reaches outside the build context",
                                  in->line, in->keyword, last);
            free(w);
            return rc;
        }
        free(last);
        last = w;
    }
    return 0;
}

int df_parse(const char *text, struct df *ret, struct loom_err *err)
{
    struct df d = {0};
    size_t cap = 0;
    _cleanup_strbuf_ struct strbuf logical = STRBUF_INIT;
    int line = 0, start = 0;
    const char *p = text;
    while (*p) {
        size_t len = strcspn(p, "\n");
        line++;
        _cleanup_free_ char *l = strndup(p, len);
        p += len + (p[len] == '\n');
        size_t n = strlen(l);
        while (n && (l[n - 1] == '\r' || l[n - 1] == ' ' || l[n - 1] == '\t'))
            l[--n] = '\0';
        const char *t = l + strspn(l, " \t");
        if (*t == '#' || (!*t && !logical.len))
            continue; /* comments (and parser directives) and blank lines */
        if (!logical.len)
            start = line;
        bool more = n && l[n - 1] == '\\';
        if (more)
            l[--n] = '\0';
        while (more && n && (l[n - 1] == ' ' || l[n - 1] == '\t'))
            l[--n] = '\0';
        strbuf_addf(&logical, "%s%s", logical.len ? " " : "", logical.len ? t : l);
        if (more && *p)
            continue;
        const char *q = logical.buf;
        char *kw = word(&q);
        if (!kw) {
            strbuf_reset(&logical);
            continue;
        }
        for (char *c = kw; *c; c++)
            *c = (char)toupper((unsigned char)*c);
        if (d.n == cap && !(d.ins = realloc(d.ins, (cap = cap ? 2 * cap : 16) * sizeof(*d.ins))))
            abort();
        struct df_ins *in = &d.ins[d.n++];
        *in = (struct df_ins){.line = start, .keyword = kw, .args = strdup(q + strspn(q, " \t"))};
        strbuf_reset(&logical);
        if (strcmp(kw, "FROM") == 0) {
            const char *a = in->args;
            char *img = word(&a);
            while (img && strncmp(img, "--", 2) == 0) {
                free(img);
                img = word(&a);
            }
            char *as = word(&a), *name = as ? word(&a) : NULL;
            if (!img || (as && (strcasecmp(as, "AS") != 0 || !name))) {
                free(img), free(as), free(name);
                df_release(&d);
                return loom_err_set(err, LOOM_EINVAL,
                                    "Dockerfile line %d: FROM needs an image [AS name]", start);
            }
            free(as);
            in->from_image = img;
            in->stage = name;
            d.nstages++;
        } else if (d.nstages == 0 && strcmp(kw, "ARG") != 0) {
            loom_err_set(err, LOOM_EINVAL, "Dockerfile line %d: %s before the first FROM", in->line,
                         kw);
            df_release(&d);
            return -1;
        } else if ((strcmp(kw, "COPY") == 0 || strcmp(kw, "ADD") == 0) && check_copy(in, err) < 0) {
            df_release(&d);
            return -1;
        }
    }
    if (d.nstages == 0) {
        df_release(&d);
        return loom_err_set(err, LOOM_EINVAL, "Dockerfile: no FROM instruction");
    }
    *ret = d;
    return 0;
}

bool df_is_stage(const struct df *d, size_t before, const char *name)
{
    if (strcasecmp(name, "scratch") == 0)
        return true;
    for (size_t i = 0; i < before && i < d->n; i++)
        if (d->ins[i].stage && strcasecmp(d->ins[i].stage, name) == 0)
            return true;
    return false;
}

int df_line_of(const struct df *d, const char *step)
{
    /* buildah's "STEP 3/5: RUN exit 3" (or the instruction alone) */
    const char *colon = strstr(step, ": ");
    const char *text = colon && strncmp(step, "STEP", 4) == 0 ? colon + 2 : step;
    size_t k = strcspn(text, " \t");
    for (size_t i = 0; i < d->n; i++) {
        const struct df_ins *in = &d->ins[i];
        if (strlen(in->keyword) != k || strncasecmp(text, in->keyword, k) != 0)
            continue;
        const char *rest = text + k;
        rest += strspn(rest, " \t");
        if (strncmp(rest, in->args, strlen(rest)) == 0 ||
            strncmp(in->args, rest, strlen(in->args)) == 0)
            return in->line;
    }
    return 0;
}
