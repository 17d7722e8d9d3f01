/* The scheduler's life: subscriptions and threads at start, the leader's
 * loop on every tick or wake, the lease handed back on SIGTERM. */
#include "sched.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "db.h"
#include "log.h"
#include "secretbox.h"
#include "subjects.h"
#include "util.h"

/* Time one tick may spend placing before it lets the rest of the loop run. */
#define PLACE_BUDGET_MS 500

static void on_wake(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)bus;
    struct sched *s = arg;
    if (sched_lease_current(s, NULL)) {
        /* from a standby's report or registration, new work from the API, or
         * loom-admin after it changed a node ("nodes") */
        atomic_store(&s->capacity_freed, true);
        if (natsMsg_GetDataLength(msg) == 5 && memcmp(natsMsg_GetData(msg), "nodes", 5) == 0)
            atomic_store(&s->nodes_changed, true);
        loom_service_wake(s->svc);
    }
}

int sched_start(struct loom_service *svc, struct loom_err *err)
{
    struct sched *s = svc->ctx;
    s->svc = svc;
    pthread_mutex_init(&s->lease_mu, NULL);
    pthread_mutex_init(&s->hb_mu, NULL);
    pthread_mutex_init(&s->acks.mu, NULL);
    if (loom_random_bytes(&s->rng, sizeof(s->rng), err) < 0)
        return -1;
    s->rng |= 1;
    if (s->holder[0] == '\0') {
        char host[64] = "";
        char rnd[9];
        unsigned char b[4];
        gethostname(host, sizeof(host) - 1);
        if (loom_random_bytes(b, sizeof(b), err) < 0)
            return -1;
        loom_hex(b, sizeof(b), rnd);
        snprintf(s->holder, sizeof(s->holder), "%s:%d:%s", host, (int)getpid(), rnd);
    }
    if (loom_secretbox_set_key(s->secrets_key, err) < 0)
        return -1;
    if (!loom_secretbox_enabled())
        log_warn("LOOM_SECRETS_KEY is not set: instances that name a secret will fail");
    if (s->renew_ms * 2 > s->lease_ttl_ms)
        return loom_err_set(err, LOOM_EINVAL, "--lease-renew must be at most half of --lease-ttl");
    static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,   0.25,   0.5,   1,    2.5};
    s->m_placements = loom_metric_counter("loom_scheduler_placements_total", NULL,
                                          "Instances placed (job indices and app instances)");
    s->m_batch_latency = loom_metric_histogram(
        "loom_scheduler_placement_batch_seconds", NULL,
        "Time to decide and commit one placement transaction", buckets, LOOM_ARRAY_SIZE(buckets));
    s->m_leader = loom_metric_gauge("loom_scheduler_leader", NULL, "1 while this replica leads");
    s->m_epoch = loom_metric_gauge("loom_scheduler_epoch", NULL, "Last lease epoch held");
    s->m_reports =
        loom_metric_counter("loom_scheduler_reports_total", NULL, "Instance reports recorded");
    s->m_nodes_lost = loom_metric_counter("loom_scheduler_nodes_lost_total", NULL,
                                          "Nodes declared lost for want of heartbeats");
    s->m_resends = loom_metric_counter("loom_scheduler_resends_total", NULL,
                                       "InstanceAssign and InstanceStop messages sent again");

    if (sched_dispatch_init(s, err) < 0 || sched_nodes_subscribe(s, err) < 0 ||
        sched_reports_subscribe(s, err) < 0 || sched_apps_subscribe(s, err) < 0 ||
        loom_bus_subscribe(svc->bus, LOOM_SUBJ_SCHED_WAKE, NULL, on_wake, s, err) < 0)
        return -1;
    if (sched_heartbeats_start(s, err) < 0 || sched_lease_start(s, err) < 0)
        return -1;
    log_info("scheduler replica %s started (lease ttl %lld ms, node timeout %lld ms, node lease "
             "%lld ms)",
             s->holder, (long long)s->lease_ttl_ms, (long long)s->node_timeout_ms,
             (long long)sched_node_lease_ms(s));
    if (sched_node_lease_ms(s) < 2500)
        log_warn("a node lease of %lld ms is short: agents stop their job instances whenever "
                 "heartbeats go unanswered that long (raise --node-timeout)",
                 (long long)sched_node_lease_ms(s));
    return 0;
}

static void leader_pass(struct sched *s, struct loom_db *db, int64_t epoch)
{
    struct loom_err err = LOOM_ERR_INIT;
    int64_t now = loom_mono_ms();
    if (epoch != s->loop_epoch) {
        /* Nothing is cached across passes: every pass reads PostgreSQL, so
         * taking over is only forgetting what the last term was doing. */
        log_info("leading with epoch %lld: state comes from PostgreSQL", (long long)epoch);
        s->loop_epoch = epoch;
        s->last_resend_mono = 0;
        sched_pool_release(&s->pool);
    }
    pthread_mutex_lock(&s->lease_mu);
    int64_t since = s->leader_since_mono;
    pthread_mutex_unlock(&s->lease_mu);
    /* A new leader waits one timeout before declaring nodes lost: after an
     * outage of every replica, heartbeats have not been recorded meanwhile. */
    bool each_second = now - s->last_resend_mono >= 1000;
    if (now - since >= s->node_timeout_ms &&
        sched_nodes_check_liveness(s, db, epoch, each_second, &err) < 0)
        log_warn("node liveness check failed: %s", err.msg);

    size_t moved = 0;
    if (sched_jobs_promote_backoffs(db, &moved, &err) < 0)
        log_warn("could not requeue indices after their retry backoff: %s", err.msg);
    bool work = false;
    if (sched_jobs_have_work(db, &work, &err) < 0)
        log_warn("could not look for pending job indices: %s", err.msg);
    int64_t end = now + PLACE_BUDGET_MS;
    while (work && sched_lease_current(s, NULL)) {
        size_t placed = 0;
        if (sched_jobs_place(s, db, epoch, &s->pool, &placed, &err) < 0) {
            log_warn("job placement failed: %s", err.msg);
            break;
        }
        if (placed < (size_t)s->batch_max)
            break;
        if (loom_mono_ms() >= end) {
            loom_service_wake(s->svc); /* more to place: no pause before the next pass */
            break;
        }
    }
    size_t placed = 0;
    if (sched_lease_current(s, NULL) &&
        sched_apps_reconcile(s, db, epoch, &s->pool, &placed, &err) < 0)
        log_warn("app reconciliation failed: %s", err.msg);

    if (sched_lease_current(s, NULL) && sched_functions_reconcile(s, db, epoch, &s->pool, &err) < 0)
        log_warn("function instance reconciliation failed: %s", err.msg);

    if (each_second && sched_lease_current(s, NULL)) {
        s->last_resend_mono = now;
        if (sched_jobs_stop_cancelled(s, db, epoch, &err) < 0)
            log_warn("could not stop cancelled runs: %s", err.msg);
        if (sched_resend(s, db, epoch, &err) < 0)
            log_warn("resend failed: %s", err.msg);
    }
}

void sched_tick(struct loom_service *svc)
{
    struct sched *s = svc->ctx;
    sched_flush_acks(s, svc->db);
    int64_t epoch;
    if (!sched_lease_current(s, &epoch)) {
        s->loop_epoch = 0;
        sched_pool_release(&s->pool);
        return;
    }
    leader_pass(s, svc->db, epoch);
}

void sched_stop(struct loom_service *svc)
{
    struct sched *s = svc->ctx;
    /* the lease first: its thread must see release_on_stop with the stop */
    sched_lease_stop(s);
    sched_heartbeats_stop(s);
    sched_flush_acks(s, svc->db);
    sched_pool_release(&s->pool);
}

bool sched_ready(struct loom_service *svc)
{
    (void)svc;
    return true;
}
