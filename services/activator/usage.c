/* Requests an app answered, for metering: counted in memory per app and
 * written to usage_requests on every tick (one row per app and tick).
 * What a kill -9 of the activator takes is at most one tick's counts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include "activator.h"
#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "strbuf.h"

struct req_count {
    char project[ACT_NAME_MAX], app[ACT_NAME_MAX];
    int64_t n;
    struct req_count *next;
};

static pthread_mutex_t usage_mu = PTHREAD_MUTEX_INITIALIZER;
static struct req_count *counts;

static void add(const char *project, const char *app, int64_t n)
{
    struct req_count *c = counts;
    while (c && (strcmp(c->project, project) != 0 || strcmp(c->app, app) != 0))
        c = c->next;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            abort();
        snprintf(c->project, sizeof(c->project), "%s", project);
        snprintf(c->app, sizeof(c->app), "%s", app);
        c->next = counts;
        counts = c;
    }
    c->n += n;
}

void act_usage_request(const char *project, const char *app)
{
    pthread_mutex_lock(&usage_mu);
    add(project, app, 1);
    pthread_mutex_unlock(&usage_mu);
}

void act_usage_flush(struct loom_db *db)
{
    pthread_mutex_lock(&usage_mu);
    struct req_count *taken = counts;
    counts = NULL;
    pthread_mutex_unlock(&usage_mu);
    if (!taken)
        return;
    struct strbuf projects = STRBUF_INIT, apps = STRBUF_INIT, ns = STRBUF_INIT;
    for (struct req_count *c = taken; c; c = c->next) {
        const char *sep = c == taken ? "" : ",";
        strbuf_addstr(&projects, sep);
        loom_db_array_elem(&projects, c->project, strlen(c->project));
        strbuf_addstr(&apps, sep);
        loom_db_array_elem(&apps, c->app, strlen(c->app));
        strbuf_addf(&ns, "%s%lld", sep, (long long)c->n);
    }
    struct strbuf p = STRBUF_INIT, a = STRBUF_INIT, n = STRBUF_INIT;
    strbuf_addf(&p, "{%s}", projects.buf);
    strbuf_addf(&a, "{%s}", apps.buf);
    strbuf_addf(&n, "{%s}", ns.buf);
    struct loom_err err = LOOM_ERR_INIT;
    PGresult *res =
        loom_db_query(db, &err,
                      "INSERT INTO usage_requests (ts, project_id, project, app, requests) "
                      "SELECT now(), p.id, u.project, u.app, u.n "
                      "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(project, app, n) "
                      "JOIN projects p ON p.name = u.project",
                      p.buf, a.buf, n.buf);
    bool ok = res != NULL;
    PQclear(res);
    strbuf_release(&projects);
    strbuf_release(&apps);
    strbuf_release(&ns);
    strbuf_release(&p);
    strbuf_release(&a);
    strbuf_release(&n);
    if (!ok)
        log_warn("could not record request counts (kept for the next tick): %s", err.msg);
    pthread_mutex_lock(&usage_mu);
    for (struct req_count *c = taken, *next; c; c = next) {
        next = c->next;
        if (!ok)
            add(c->project, c->app, c->n);
        free(c);
    }
    pthread_mutex_unlock(&usage_mu);
}
