/* The dockerfile strategy: buildah builds the Dockerfile in a step, a
 * container of the project like any other (its user namespace, no extra
 * capabilities, the build size's limits), with RUN steps isolated by
 * chroot inside it. The step reaches no registry: the images the stages
 * start FROM (the platform registry's, or stacks by name) are given to it
 * as OCI layouts, and the Dockerfile it builds names them there
 * (oci:/loom/bases/<n>). buildah writes the image as an OCI layout, which
 * comes back as the step's output; the builder pushes its blobs and its
 * manifest as buildah made them. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "builder.h"
#include "cleanup.h"
#include "db.h"
#include "json.h"
#include "strbuf.h"
#include "tarball.h"
#include "util.h"

#define MAX_BASES 8
#define BASES_DIR "loom/bases"
#define MAX_DOCKERFILE (1 << 20)

static const char script[] =
    "set -e\n"
    "export HOME=/tmp/home XDG_RUNTIME_DIR=/tmp/run STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot\n"
    "mkdir -p /tmp/home /tmp/run /out\n"
    "buildah --storage-driver vfs bud --isolation chroot --format oci --layers=false "
    "-f /loom/Dockerfile -t loom-build /app\n"
    "buildah --storage-driver vfs push --quiet loom-build oci:/out/image:latest\n";

/* The reference a FROM image stands for: a stack by its name, an image of
 * the platform registry, or one of the project's repositories there. */
static int base_ref(struct brun *r, const char *image, int line, struct stack *ret_stack,
                    char ret[700], struct loom_err *err)
{
    size_t first = strcspn(image, "/");
    bool has_host =
        image[first] == '/' && (memchr(image, '.', first) || memchr(image, ':', first) ||
                                !strncmp(image, "localhost/", 10));
    if (!has_host && !strchr(image, '/') && !strchr(image, ':') && !strchr(image, '@')) {
        struct loom_err e = LOOM_ERR_INIT;
        if (stack_load(r, image, ret_stack, &e) == 0) {
            snprintf(ret, 700, "%s", ret_stack->ref);
            return 0;
        }
    }
    if (has_host &&
        (strncmp(image, builder.registry, first) != 0 || strlen(builder.registry) != first))
        return loom_err_set(err, LOOM_EINVAL,
                            "Dockerfile line %d: FROM %s: a build starts from a stack or an image "
                            "of the platform registry %s",
                            line, image, builder.registry);
    if (has_host)
        snprintf(ret, 700, "%s", image);
    else
        snprintf(ret, 700, "%s/%s/%s", builder.registry, r->project, image);
    return 0;
}

/* A layer holding image ref as an OCI layout in BASES_DIR/<n>. */
static int base_layer(struct brun *r, const char *ref, int n, struct img_layer *ret,
                      struct loom_err *err)
{
    struct loom_registry_ref pr = {0};
    struct loom_registry_client *c = NULL;
    struct loom_registry_manifest m = {0};
    struct loom_layer *l = NULL;
    struct loom_layer_info info;
    _cleanup_free_ char *body = NULL, *ct = NULL, *digest = NULL, *config = NULL;
    size_t len = 0, clen = 0;
    char dir[128], path[300];
    snprintf(dir, sizeof(dir), BASES_DIR "/%d", n);
    int rc = loom_registry_ref_parse(ref, &pr, err);
    if (rc == 0)
        rc = loom_registry_client_new(&pr, ref, NULL, NULL, &c, err);
    if (rc == 0)
        rc = loom_registry_get_manifest(c, pr.digest ? pr.digest : pr.tag, &body, &len, &ct,
                                        &digest, err);
    if (rc == 0)
        rc = loom_registry_manifest_parse(body, len, &m, err);
    if (rc == 0)
        rc = loom_registry_get_blob(c, m.config.digest, LOOM_REGISTRY_MAX_CONFIG_BYTES, &config,
                                    &clen, err);
    if (rc == 0)
        rc = loom_layer_open(r->dir, &l, err);
    static const char *const dirs[] = {"loom", BASES_DIR};
    for (size_t i = 0; rc == 0 && i < LOOM_ARRAY_SIZE(dirs); i++)
        rc = loom_layer_add_dir(l, dirs[i], 0755, err);
    if (rc == 0) {
        _cleanup_free_ char *index = NULL;
        if (asprintf(&index,
                     "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"%s\",\"digest\":\"%s\","
                     "\"size\":%zu,\"annotations\":{\"org.opencontainers.image.ref.name\":"
                     "\"latest\"}}]}",
                     ct && *ct ? ct : LOOM_MEDIA_OCI_MANIFEST, digest, len) < 0)
            abort();
        static const char layout[] = "{\"imageLayoutVersion\":\"1.0.0\"}";
        rc = loom_layer_add_dir(l, dir, 0755, err);
        snprintf(path, sizeof(path), "%s/oci-layout", dir);
        if (rc == 0)
            rc = loom_layer_add_file(l, path, 0644, layout, strlen(layout), err);
        snprintf(path, sizeof(path), "%s/index.json", dir);
        if (rc == 0)
            rc = loom_layer_add_file(l, path, 0644, index, strlen(index), err);
        snprintf(path, sizeof(path), "%s/blobs", dir);
        if (rc == 0)
            rc = loom_layer_add_dir(l, path, 0755, err);
        snprintf(path, sizeof(path), "%s/blobs/sha256", dir);
        if (rc == 0)
            rc = loom_layer_add_dir(l, path, 0755, err);
        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", dir, digest + 7);
        if (rc == 0)
            rc = loom_layer_add_file(l, path, 0644, body, len, err);
        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", dir, m.config.digest + 7);
        if (rc == 0)
            rc = loom_layer_add_file(l, path, 0644, config, clen, err);
    }
    for (size_t i = 0; rc == 0 && i < m.nlayers; i++) {
        char tmp[4300];
        snprintf(tmp, sizeof(tmp), "%s/base-%d-%zu", r->dir, n, i);
        rc = loom_registry_fetch_blob(c, m.layers[i].digest, m.layers[i].size, (int64_t)1 << 34,
                                      r->dir, tmp, err);
        _cleanup_close_ int fd = rc == 0 ? open(tmp, O_RDONLY | O_CLOEXEC) : -1;
        snprintf(path, sizeof(path), "%s/blobs/sha256/%s", dir, m.layers[i].digest + 7);
        if (rc == 0)
            rc = loom_layer_add_file_fd(l, path, 0644, fd, m.layers[i].size, err);
        unlink(tmp);
    }
    if (rc == 0)
        rc = loom_layer_finish(l, &info, err);
    if (rc == 0) {
        struct loom_registry_client *cache = r->cache;
        _cleanup_fclose_ FILE *f = fopen(info.path, "re");
        int64_t sent = 0;
        rc = f ? loom_registry_blob_ensure(cache, info.digest, f, NULL, info.size, NULL, &sent, err)
               : loom_err_sys(err, errno, "could not read a layer");
        *ret = (struct img_layer){.size = info.size};
        snprintf(ret->digest, sizeof(ret->digest), "%s", info.digest);
        snprintf(ret->diff_id, sizeof(ret->diff_id), "%s", info.diff_id);
        snprintf(ret->mount_from, sizeof(ret->mount_from), "%s", r->cache_repo);
    }
    loom_layer_free(l);
    loom_registry_manifest_release(&m);
    loom_registry_client_free(c);
    loom_registry_ref_release(&pr);
    return rc < 0 ? loom_err_wrap(err, "the base image %s", ref) : 0;
}

/* The Dockerfile buildah builds: each instruction on its own line, where it
 * was (so that buildah's messages and ours agree), with the FROM images
 * replaced by their layouts. */
static char *rewrite(const struct df *d, const char *const *from)
{
    struct strbuf sb = STRBUF_INIT;
    int line = 1;
    size_t b = 0;
    for (size_t i = 0; i < d->n; i++) {
        const struct df_ins *in = &d->ins[i];
        for (; line < in->line; line++)
            strbuf_addch(&sb, '\n');
        if (in->from_image && from[i]) {
            strbuf_addf(&sb, "FROM oci:/" BASES_DIR "/%zu:latest", b++);
            if (in->stage)
                strbuf_addf(&sb, " AS %s", in->stage);
        } else {
            strbuf_addf(&sb, "%s %s", in->keyword, in->args);
        }
        strbuf_addch(&sb, '\n');
        line++;
    }
    return strbuf_detach(&sb, NULL);
}

/* Pushes the OCI layout of the step's output (the tar.gz of /out) to repo,
 * blob by blob, the manifest by digest and then tag. */
static int push_layout(struct brun *r, const struct step_out *out, struct out_target *t,
                       char ret_digest[72], struct loom_err *err)
{
    char tgz[4200];
    snprintf(tgz, sizeof(tgz), "%s/output.tar.gz", r->dir);
    if (loom_registry_fetch_blob(r->cache, out->digest, out->size, out->size, r->dir, tgz, err) < 0)
        return loom_err_wrap(err, "the image buildah made");
    struct archive *a = loom_tarball_reader();
    if (archive_read_open_filename(a, tgz, 65536) != ARCHIVE_OK) {
        archive_read_free(a);
        return loom_err_set(err, LOOM_EINVAL, "the image buildah made is not a tar.gz");
    }
    _cleanup_free_ char *index = NULL;
    struct archive_entry *e;
    int rc = 0;
    /* blobs into the run's directory, by their digest */
    while (rc == 0 && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *p = archive_entry_pathname(e);
        const char *blob = strstr(p, "out/image/blobs/sha256/");
        bool is_index = strcmp(p, "out/image/index.json") == 0;
        if (archive_entry_filetype(e) != AE_IFREG || (!blob && !is_index))
            continue;
        char path[4300];
        snprintf(path, sizeof(path), "%s/%s", r->dir, is_index ? "index.json" : blob + 23);
        char d[80];
        snprintf(d, sizeof(d), "sha256:%.70s", blob ? blob + 23 : "");
        if (blob && !loom_registry_digest_valid(d))
            continue;
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || archive_read_data_into_fd(a, fd) != ARCHIVE_OK)
            rc = loom_err_set(err, LOOM_EIO, "could not unpack the image buildah made");
    }
    archive_read_free(a);
    char path[4300];
    snprintf(path, sizeof(path), "%s/index.json", r->dir);
    size_t ilen = 0;
    if (rc == 0 && loom_read_file(path, &index, &ilen, err) < 0)
        rc = -1;
    _cleanup_json_ json_t *ij = rc == 0 ? json_loadb(index, ilen, 0, NULL) : NULL;
    const char *mdigest = json_string_value(
        json_object_get(json_array_get(json_object_get(ij, "manifests"), 0), "digest"));
    if (rc == 0 && (!mdigest || !loom_registry_digest_valid(mdigest)))
        rc = loom_err_set(err, LOOM_EINVAL, "the image buildah made has no manifest");
    _cleanup_free_ char *manifest = NULL;
    size_t mlen = 0;
    struct loom_registry_manifest m = {0};
    if (rc == 0) {
        snprintf(path, sizeof(path), "%s/%s", r->dir, mdigest + 7);
        rc = loom_read_file(path, &manifest, &mlen, err) < 0 ||
                     loom_registry_verify_bytes(manifest, mlen, mdigest, err) < 0 ||
                     loom_registry_manifest_parse(manifest, mlen, &m, err) < 0
                 ? -1
                 : 0;
    }
    struct loom_registry_client *c = t->c;
    int64_t sent = 0;
    for (size_t i = 0; rc == 0 && i <= m.nlayers; i++) {
        const struct loom_registry_desc *d = i < m.nlayers ? &m.layers[i] : &m.config;
        snprintf(path, sizeof(path), "%s/%s", r->dir, d->digest + 7);
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        int64_t n = 0;
        rc =
            f && loom_registry_verify_file(path, d->digest, err) == 0
                ? loom_registry_blob_ensure(c, d->digest, f, NULL, d->size, NULL, &n, err)
                : loom_err_set(err, LOOM_EINVAL, "the image buildah made lacks blob %s", d->digest);
        sent += n;
    }
    const char *mt = LOOM_MEDIA_OCI_MANIFEST;
    if (rc == 0)
        rc = loom_registry_put_manifest(c, mdigest, mt, manifest, mlen, err);
    if (rc == 0)
        rc = loom_registry_put_manifest(c, t->tag, mt, manifest, mlen, err);
    if (rc == 0) {
        snprintf(ret_digest, 72, "%s", mdigest);
        r->uploaded += sent;
        brun_log(r, "pushed %s/%s@%s: %zu layers, %lld bytes sent", t->host, t->repo, mdigest,
                 m.nlayers, (long long)sent);
    } else if (c) {
        loom_err_wrap(err, "pushing to %s/%s", t->host, t->repo);
    }
    loom_registry_manifest_release(&m);
    return rc;
}

/* A failed buildah step's reason, with the Dockerfile's line. */
static void name_the_line(const struct df *d, struct loom_err *err)
{
    const char *at = strstr(err->msg, "STEP \"");
    if (!at)
        return;
    char step[512];
    snprintf(step, sizeof(step), "%.*s", (int)strcspn(at + 6, "\""), at + 6);
    int line = df_line_of(d, step);
    if (line <= 0)
        return;
    const char *why = strstr(at + 6, "\": ");
    char msg[sizeof(err->msg)];
    snprintf(msg, sizeof(msg), "Dockerfile line %d: %.150s: %.300s", line, step,
             why ? why + 3 : err->msg);
    snprintf(err->msg, sizeof(err->msg), "%s", msg);
}

int dockerfile_run(struct brun *r, const char *source, struct loom_err *err)
{
    const char *context = r->spec.source_context_dir;
    _cleanup_free_ char *text = NULL, *rewritten = NULL;
    struct df d = {0};
    struct stack buildah = {0};
    struct stack stacks[MAX_BASES];
    memset(stacks, 0, sizeof(stacks));
    char bases[MAX_BASES][700];
    const char *from[64] = {0};
    struct img_layer extra[MAX_BASES + 1];
    size_t nbases = 0;
    struct loom_layer *in = NULL, *dl = NULL;
    struct loom_layer_info input, dinfo;
    struct out_target target = {0};
    char digest[72];
    brun_step(r, "detect", r->spec.strategy_spec_file);
    int rc = source_read(source, context, r->spec.strategy_spec_file, MAX_DOCKERFILE, &text, err);
    if (rc == 0)
        rc = df_parse(text, &d, err);
    for (size_t i = 0; rc == 0 && i < d.n && i < LOOM_ARRAY_SIZE(from); i++) {
        const struct df_ins *ins = &d.ins[i];
        if (!ins->from_image || df_is_stage(&d, i, ins->from_image))
            continue;
        if (nbases == MAX_BASES) {
            rc = loom_err_set(err, LOOM_EINVAL, "Dockerfile line %d: more than %d base images",
                              ins->line, MAX_BASES);
            break;
        }
        rc = base_ref(r, ins->from_image, ins->line, &stacks[nbases], bases[nbases], err);
        from[i] = bases[nbases];
        nbases += rc == 0;
    }
    if (rc == 0) {
        _cleanup_strbuf_ struct strbuf det = STRBUF_INIT;
        strbuf_addstr(&det, "dockerfile");
        for (size_t i = 0; i < nbases; i++)
            strbuf_addf(&det, "%s%s", i ? ", " : ": ", bases[i]);
        const char *detail = det.buf;
        _cleanup_pgres_ PGresult *s = loom_db_query(
            r->db, err, "UPDATE build_runs SET strategy = $2 WHERE id = $1", r->id, detail);
        rc = s ? 0 : -1;
        if (rc == 0)
            brun_step_end(r, "succeeded", "%zu instructions, %zu stages; %s", d.n, d.nstages,
                          nbases ? detail : "FROM scratch");
    }
    if (rc == 0)
        rc = out_open(r, &target, err);
    if (rc == 0) {
        brun_step(r, "bases", NULL);
        for (size_t i = 0; rc == 0 && i < nbases; i++)
            rc = base_layer(r, bases[i], (int)i, &extra[i], err);
        if (rc == 0)
            brun_step_end(r, "succeeded", "%zu base images as OCI layouts", nbases);
    }
    if (rc == 0) {
        rewritten = rewrite(&d, from);
        rc = loom_layer_open(r->dir, &dl, err) < 0 ||
                     loom_layer_add_dir(dl, "loom", 0755, err) < 0 ||
                     loom_layer_add_file(dl, "loom/Dockerfile", 0644, rewritten, strlen(rewritten),
                                         err) < 0 ||
                     loom_layer_finish(dl, &dinfo, err) < 0
                 ? -1
                 : 0;
        if (rc == 0) {
            struct img_layer *l = &extra[nbases];
            *l = (struct img_layer){.size = dinfo.size, .file = dinfo.path};
            snprintf(l->digest, sizeof(l->digest), "%s", dinfo.digest);
            snprintf(l->diff_id, sizeof(l->diff_id), "%s", dinfo.diff_id);
        }
    }
    if (rc == 0)
        rc = source_layer(r, source, NULL, NULL, &in, &input, err);
    if (rc == 0)
        rc = stack_load(r, "buildah", &buildah, err);
    struct step_out out;
    if (rc == 0) {
        brun_step(r, "buildah", r->spec.strategy_spec_file);
        struct step_req req = {.label = "dockerfile",
                               .kind = STEP_BUILDAH,
                               .stack = &buildah,
                               .script = script,
                               .input = &input,
                               .extra = extra,
                               .nextra = nbases + 1,
                               .output = "/out"};
        rc = step_run(r, &req, &out, err);
        if (rc < 0)
            name_the_line(&d, err);
        else
            brun_step_end(r, "succeeded", "an OCI image of %lld bytes", (long long)out.size);
    }
    if (rc == 0) {
        brun_step(r, "push", r->spec.output_image);
        rc = push_layout(r, &out, &target, digest, err);
        if (rc == 0) {
            snprintf(r->output_ref, sizeof(r->output_ref), "%s/%s@%s", target.host, target.repo,
                     digest);
            brun_step_end(r, "succeeded", "%s", r->output_ref);
        }
    }
    out_close(&target);
    loom_layer_free(in);
    loom_layer_free(dl);
    for (size_t i = 0; i < MAX_BASES; i++)
        stack_release(&stacks[i]);
    stack_release(&buildah);
    df_release(&d);
    return rc;
}
