#include "activator.h"

#include <math.h>
#include <string.h>

void act_kpa_init(struct act_kpa *kpa, uint32_t desired)
{
    memset(kpa, 0, sizeof(*kpa));
    kpa->desired = desired;
}

/* Records what a tick (or a bump) wanted, for the scale-down delay. */
static void want_push(struct act_kpa *kpa, uint32_t want, int64_t now_ms)
{
    kpa->wants[kpa->wants_head] = want;
    kpa->wants_ms[kpa->wants_head] = now_ms;
    kpa->wants_head = (kpa->wants_head + 1) % ACT_KPA_MAX_BUCKETS;
    if (kpa->nwants < ACT_KPA_MAX_BUCKETS)
        kpa->nwants++;
}

/* The highest count wanted at or after since_ms. */
static uint32_t want_max_since(const struct act_kpa *kpa, int64_t since_ms)
{
    uint32_t m = 0;
    for (int i = 1; i <= kpa->nwants; i++) {
        int k = (kpa->wants_head - i + ACT_KPA_MAX_BUCKETS) % ACT_KPA_MAX_BUCKETS;
        if (kpa->wants_ms[k] < since_ms)
            break; /* newest first: the rest are older */
        if (kpa->wants[k] > m)
            m = kpa->wants[k];
    }
    return m;
}

uint32_t act_kpa_bump(struct act_kpa *kpa, uint32_t want, bool panic, int64_t now_ms)
{
    if (panic) {
        kpa->panicking = true;
        kpa->panic_since_ms = now_ms;
    }
    if (want > kpa->desired)
        kpa->desired = want;
    want_push(kpa, kpa->desired, now_ms);
    return kpa->desired;
}

uint32_t act_kpa_revision(struct act_kpa *kpa, uint32_t initial, int64_t now_ms)
{
    /* no history: the tick keeps at least desired until a whole stable
     * window of the new revision has been seen */
    kpa->nbuckets = 0;
    kpa->head = 0;
    kpa->panicking = false;
    return act_kpa_bump(kpa, initial, false, now_ms);
}

/* Mean of the newest n buckets (fewer when fewer exist). */
static double window_mean(const struct act_kpa *kpa, int n)
{
    if (n > kpa->nbuckets)
        n = kpa->nbuckets;
    if (n <= 0)
        return 0;
    double sum = 0;
    for (int i = 1; i <= n; i++)
        sum += kpa->buckets[(kpa->head - i + ACT_KPA_MAX_BUCKETS) % ACT_KPA_MAX_BUCKETS];
    return sum / n;
}

static int window_buckets(int64_t window_ms, int64_t tick_ms)
{
    int64_t n = tick_ms > 0 ? (window_ms + tick_ms - 1) / tick_ms : 1;
    if (n < 1)
        n = 1;
    if (n > ACT_KPA_MAX_BUCKETS)
        n = ACT_KPA_MAX_BUCKETS;
    return (int)n;
}

/* ceil, forgiving the rounding noise of a sum of doubles */
static uint32_t ceil_ratio(double v, double target)
{
    double r = v / target;
    if (r <= 1e-9)
        return 0;
    r = ceil(r - 1e-9);
    return r > 1e6 ? 1000000u : (uint32_t)r;
}

uint32_t act_kpa_tick(struct act_kpa *kpa, const struct act_kpa_config *cfg, double avg,
                      uint32_t ready, double target, int64_t scale_down_delay_ms, int64_t now_ms)
{
    if (avg < 0)
        avg = 0;
    if (target <= 0)
        target = 1;
    kpa->buckets[kpa->head] = avg;
    kpa->head = (kpa->head + 1) % ACT_KPA_MAX_BUCKETS;
    if (kpa->nbuckets < ACT_KPA_MAX_BUCKETS)
        kpa->nbuckets++;

    int nstable = window_buckets(cfg->stable_window_ms, cfg->tick_ms);
    int npanic = window_buckets(cfg->panic_window_ms, cfg->tick_ms);
    double stable = window_mean(kpa, nstable);
    double panic = window_mean(kpa, npanic);
    uint32_t want = ceil_ratio(stable, target);
    uint32_t panic_want = ceil_ratio(panic, target);

    /* Panic: the short window carries at least threshold x what the ready
     * instances can take. Stay in panic for a stable window after the last
     * tick that met the condition, and never scale down while in it. */
    double capacity = (ready > 0 ? ready : 1) * target;
    if (panic > 0 && panic >= cfg->panic_threshold * capacity) {
        kpa->panicking = true;
        kpa->panic_since_ms = now_ms;
    } else if (kpa->panicking && now_ms - kpa->panic_since_ms >= cfg->stable_window_ms) {
        kpa->panicking = false;
    }
    if (kpa->panicking) {
        if (panic_want > want)
            want = panic_want;
        if (kpa->desired > want)
            want = kpa->desired;
    }

    /* Scale down at most by max_scale_down per tick (to zero only from 1). */
    if (want < ready && cfg->max_scale_down > 1) {
        uint32_t floor_ready = (uint32_t)floor(ready / cfg->max_scale_down);
        if (want < floor_ready)
            want = floor_ready;
    }

    /* Until a whole stable window has been seen, do not go below where we
     * started: no history is not the same as no traffic. */
    if (kpa->nbuckets < nstable && want < kpa->desired)
        want = kpa->desired;

    /* Scale-down delay: keep the highest count wanted within the delay, so
     * that a shrink happens only scale_down_delay after the load that
     * justified the higher count is gone. */
    want_push(kpa, want, now_ms);
    if (scale_down_delay_ms > 0) {
        uint32_t held = want_max_since(kpa, now_ms - scale_down_delay_ms);
        if (held > want)
            want = held;
    }
    kpa->desired = want;
    return want;
}
