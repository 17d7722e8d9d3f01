/* Leader election on the leases row 'scheduler' (see scheduling.md section 3):
 * a lease with a TTL taken and renewed with the database's clock, an epoch
 * that grows at every takeover, and a local monotonic deadline so that a
 * leader that cannot renew in time stops placing before the lease runs out
 * in PostgreSQL. */
#include "sched.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "log.h"
#include "util.h"

static void set_follower(struct sched *s)
{
    s->leader = false;
    s->deadline_mono = 0;
}

/* One renewal (or takeover) attempt; updates the shared state. */
static void lease_renew_once(struct sched *s, struct loom_db *db)
{
    struct loom_err err = LOOM_ERR_INIT;
    char ttl[32];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)s->lease_ttl_ms);
    int64_t sent = loom_mono_ms();
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, &err,
                      "UPDATE leases SET holder = $1, "
                      "  epoch = CASE WHEN holder = $1 AND expires_at >= now() THEN epoch "
                      "               ELSE epoch + 1 END, "
                      "  expires_at = now() + make_interval(secs => $2::bigint / 1000.0) "
                      "WHERE name = 'scheduler' AND (holder = $1 OR expires_at < now()) "
                      "RETURNING epoch",
                      s->holder, ttl);
    pthread_mutex_lock(&s->lease_mu);
    bool was_leader = s->leader;
    int64_t old_epoch = s->epoch;
    if (!res) {
        /* keep what we have: the local deadline ends leadership if this lasts */
        pthread_mutex_unlock(&s->lease_mu);
        log_warn("could not renew the scheduler lease: %s", err.msg);
        return;
    }
    if (PQntuples(res) == 1) {
        int64_t epoch = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        if (!was_leader || epoch != old_epoch)
            s->leader_since_mono = loom_mono_ms();
        s->leader = true;
        s->epoch = epoch;
        /* counted from before the query: PostgreSQL's expiry is later */
        s->deadline_mono = sent + s->lease_ttl_ms;
    } else {
        set_follower(s);
    }
    bool now_leader = s->leader;
    int64_t epoch = s->epoch;
    pthread_mutex_unlock(&s->lease_mu);

    if (now_leader && (!was_leader || epoch != old_epoch))
        log_info("became scheduler leader with epoch %lld", (long long)epoch);
    else if (!now_leader && was_leader)
        log_warn("lost the scheduler lease (epoch %lld)", (long long)old_epoch);
    loom_metric_set(s->m_leader, now_leader ? 1 : 0);
    loom_metric_set(s->m_epoch, (double)epoch);
    if (now_leader && (!was_leader || epoch != old_epoch))
        loom_service_wake(s->svc);
}

static void lease_release(struct sched *s, struct loom_db *db)
{
    struct loom_err err = LOOM_ERR_INIT;
    char epoch[32];
    pthread_mutex_lock(&s->lease_mu);
    bool held = s->leader;
    snprintf(epoch, sizeof(epoch), "%lld", (long long)s->epoch);
    set_follower(s);
    pthread_mutex_unlock(&s->lease_mu);
    if (!held)
        return;
    /* expired now: a standby takes over at its next attempt */
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, &err,
                      "UPDATE leases SET expires_at = now() - interval '1 millisecond' "
                      "WHERE name = 'scheduler' AND holder = $1 AND epoch = $2::bigint",
                      s->holder, epoch);
    if (!res)
        log_warn("could not release the scheduler lease: %s", err.msg);
    else
        log_info("released the scheduler lease (epoch %s)", epoch);
    loom_metric_set(s->m_leader, 0);
}

static void *lease_main(void *arg)
{
    struct sched *s = arg;
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = NULL;
    bool seeded = false;
    for (;;) {
        pthread_mutex_lock(&s->lease_mu);
        bool stop = s->threads_stop;
        pthread_mutex_unlock(&s->lease_mu);
        if (stop)
            break;
        if (!db)
            db = loom_service_thread_db(&err);
        if (db && !seeded) {
            /* the row's first appearance, already expired: the UPDATE takes it */
            _cleanup_pgres_ PGresult *res =
                loom_db_query(db, &err,
                              "INSERT INTO leases (name, holder, epoch, expires_at) "
                              "VALUES ('scheduler', $1, 0, now() - interval '1 second') "
                              "ON CONFLICT (name) DO NOTHING",
                              s->holder);
            seeded = res != NULL;
        }
        if (db && seeded)
            lease_renew_once(s, db);
        else if (!db)
            log_warn("lease: %s", err.msg);

        pthread_mutex_lock(&s->lease_mu);
        if (!s->threads_stop) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t ns = ts.tv_nsec + (s->renew_ms % 1000) * 1000000;
            ts.tv_sec += s->renew_ms / 1000 + ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&s->lease_cond, &s->lease_mu, &ts);
        }
        pthread_mutex_unlock(&s->lease_mu);
    }
    if (db && s->release_on_stop)
        lease_release(s, db);
    return NULL;
}

int sched_lease_start(struct sched *s, struct loom_err *err)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->lease_cond, &ca);
    pthread_condattr_destroy(&ca);
    int r = pthread_create(&s->lease_thread, NULL, lease_main, s);
    if (r != 0)
        return loom_err_sys(err, r, "could not start the lease thread");
    s->lease_thread_started = true;
    return 0;
}

void sched_lease_stop(struct sched *s)
{
    if (!s->lease_thread_started)
        return;
    pthread_mutex_lock(&s->lease_mu);
    s->threads_stop = true;
    s->release_on_stop = true;
    pthread_cond_broadcast(&s->lease_cond);
    pthread_mutex_unlock(&s->lease_mu);
    pthread_join(s->lease_thread, NULL);
    s->lease_thread_started = false;
}

bool sched_lease_current(struct sched *s, int64_t *ret_epoch)
{
    pthread_mutex_lock(&s->lease_mu);
    bool ok = s->leader && loom_mono_ms() < s->deadline_mono;
    int64_t epoch = s->epoch;
    pthread_mutex_unlock(&s->lease_mu);
    if (ok && ret_epoch)
        *ret_epoch = epoch;
    return ok;
}

void sched_lease_poke(struct sched *s)
{
    pthread_mutex_lock(&s->lease_mu);
    pthread_cond_broadcast(&s->lease_cond);
    pthread_mutex_unlock(&s->lease_mu);
}

int sched_lease_check_tx(struct sched *s, struct loom_db *db, int64_t epoch, struct loom_err *err)
{
    char e[32];
    snprintf(e, sizeof(e), "%lld", (long long)epoch);
    /* A leader stopped (SIGSTOP) inside this transaction would hold the row
     * and block every takeover; PostgreSQL ends such a session instead. */
    _cleanup_pgres_ PGresult *t = loom_db_exec(
        db, "SELECT set_config('idle_in_transaction_session_timeout', '2000', true)", 0, NULL, err);
    if (!t)
        return -1;
    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, err,
                      "SELECT epoch FROM leases WHERE name = 'scheduler' AND holder = $1 "
                      "AND epoch = $2::bigint AND expires_at > now() FOR SHARE",
                      s->holder, e);
    if (!res)
        return -1;
    if (PQntuples(res) != 1)
        return loom_err_set(err, LOOM_ECONFLICT, "scheduler lease (epoch %s) is no longer held", e);
    return 0;
}
