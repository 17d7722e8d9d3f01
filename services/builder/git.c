/* git sources: cloned by the builder (git moves data, it runs none of the
 * source's code: no hooks come with a clone), the revision resolved to its
 * commit and the tree at it archived as a tar.gz, the source of the run.
 * Only the protocols git's URL allows reach anything (file:// only when the
 * operator allows it); credentials from the source_secret go to git through
 * its environment and an askpass helper, never onto a command line, into a
 * log or into the image. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "builder.h"
#include "cleanup.h"
#include "json.h"
#include "proc.h"
#include "refs.h"
#include "strbuf.h"
#include "util.h"

#define GIT "/usr/bin/git"

/* The credentials of the run's source_secret as environment entries: a
 * username and password (an askpass script reads them), or an ssh key
 * (written 0600 in the run's directory). */
static int credentials(struct brun *r, struct strbuf *env, struct loom_err *err)
{
    if (!r->spec.source_secret)
        return 0;
    _cleanup_json_ json_t *data = NULL;
    char why[512] = "";
    int rc = loom_refs_load(r->db, r->project_id, true, r->spec.source_secret, &data, NULL, why,
                            sizeof(why), err);
    if (rc < 0)
        return -1;
    if (rc > 0)
        return loom_err_set(err, LOOM_EINVAL, "field \"source_secret\": %s", why);
    const char *user = json_string_value(json_object_get(data, "username"));
    const char *pass = json_string_value(json_object_get(data, "password"));
    const char *key = json_string_value(json_object_get(data, "ssh_key"));
    if (key) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/ssh-key", r->dir);
        if (loom_write_file_atomic(path, key, strlen(key), err) < 0 || chmod(path, 0600) < 0)
            return -1;
        strbuf_addf(env,
                    "GIT_SSH_COMMAND=ssh -i %s -o IdentitiesOnly=yes -o "
                    "StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s/known_hosts",
                    path, r->dir);
        strbuf_addch(env, '\0');
        return 0;
    }
    if (!pass)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_secret\": secret \"%s\" has neither password (with "
                            "username) nor ssh_key",
                            r->spec.source_secret);
    char askpass[4200];
    snprintf(askpass, sizeof(askpass), "%s/askpass", r->dir);
    static const char script[] = "#!/bin/sh\n"
                                 "case \"$1\" in Username*) printf '%s\\n' \"$LOOM_GIT_USER\" ;;\n"
                                 "*) printf '%s\\n' \"$LOOM_GIT_PASSWORD\" ;; esac\n";
    if (loom_write_file_atomic(askpass, script, strlen(script), err) < 0 ||
        chmod(askpass, 0700) < 0)
        return -1;
    strbuf_addf(env, "GIT_ASKPASS=%s", askpass);
    strbuf_addch(env, '\0');
    strbuf_addf(env, "LOOM_GIT_USER=%s", user ? user : "git");
    strbuf_addch(env, '\0');
    strbuf_addf(env, "LOOM_GIT_PASSWORD=%s", pass);
    strbuf_addch(env, '\0');
    return 0;
}

/* Runs git with args in the run's environment; its output into *ret_out
 * (or NULL). A failure's message is git's own, whose URL never holds a
 * secret (credentials are not in URLs). */
static int git(struct brun *r, const char *const *envp, const char *const *args, char **ret_out,
               struct loom_err *err)
{
    const char *argv[16] = {GIT};
    size_t n = 1;
    for (; args[n - 1] && n < 15; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    int64_t left = r->deadline_ms - loom_now_ms();
    return loom_run_until(argv, envp, NULL, loom_mono_ms() + (left > 0 ? left : 1), ret_out, err);
}

int git_fetch(struct brun *r, const char *dest, char ret_commit[64], struct loom_err *err)
{
    const char *url = r->spec.source_url;
    if (strncmp(url, "file://", 7) == 0 && !builder.git_file)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_url\": file:// sources are not allowed on this "
                            "platform (the operator allows them with LOOM_BUILDER_GIT_FILE)");
    /* the environment git gets: nothing of the builder's own */
    _cleanup_strbuf_ struct strbuf env = STRBUF_INIT;
    strbuf_addf(&env, "HOME=%s", r->dir);
    strbuf_addch(&env, '\0');
    static const char *const fixed[] = {"PATH=/usr/local/bin:/usr/bin:/bin",
                                        "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1",
                                        "GIT_CONFIG_GLOBAL=/dev/null", "LANG=C"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(fixed); i++) {
        strbuf_addstr(&env, fixed[i]);
        strbuf_addch(&env, '\0');
    }
    strbuf_addf(&env, "GIT_ALLOW_PROTOCOL=https:http:git:ssh%s", builder.git_file ? ":file" : "");
    strbuf_addch(&env, '\0');
    if (credentials(r, &env, err) < 0)
        return -1;
    const char *envp[16];
    size_t ne = 0;
    for (size_t off = 0; off < env.len && ne < 15; off += strlen(env.buf + off) + 1)
        envp[ne++] = env.buf + off;
    envp[ne] = NULL;

    char repo[4200];
    snprintf(repo, sizeof(repo), "%s/repo.git", r->dir);
    const char *rev = r->spec.source_revision ? r->spec.source_revision : "HEAD";
    _cleanup_free_ char *spec = NULL, *out = NULL;
    if (asprintf(&spec, "%s^{commit}", rev) < 0)
        abort();
    const char *clone[] = {"clone", "--quiet", "--bare", "--", url, repo, NULL};
    const char *resolve[] = {"-C", repo, "rev-parse", "--verify", "--end-of-options", spec, NULL};
    if (git(r, envp, clone, NULL, err) < 0)
        return loom_err_wrap(err, "git clone of %s", url);
    if (git(r, envp, resolve, &out, err) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "field \"source_revision\": %s has no branch, tag or commit \"%s\"",
                            url, rev);
    out[strcspn(out, "\n")] = '\0';
    snprintf(ret_commit, 64, "%.40s", out);
    const char *archive[] = {"-C", repo, "archive",  "--format=tar.gz",
                             "-o", dest, ret_commit, NULL};
    if (git(r, envp, archive, NULL, err) < 0)
        return loom_err_wrap(err, "git archive of %s at %s", url, ret_commit);
    brun_log(r, "source %s at %s (%s)", url, ret_commit, rev);
    return 0;
}
