/* What a request for an app does next (act_plan_request): the decisions of
 * the activator's request path as a pure function over the app's state, so
 * that they are tested without a network; ingress.c does the I/O. */
#include "activator.h"

#include <math.h>

int act_pick_instance(const struct act_inst *insts, size_t n, int64_t concurrency, int64_t now)
{
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        if (insts[i].inflight >= concurrency || insts[i].down_until_ms > now)
            continue;
        if (best < 0 || insts[i].inflight < insts[best].inflight)
            best = (int)i;
    }
    return best;
}

static void reply(struct act_plan *p, enum act_reply why, int status, int retry_after,
                  const char *detail)
{
    p->step = ACT_STEP_REPLY;
    p->reply = why;
    p->status = status;
    p->retry_after = retry_after;
    p->detail = detail;
}

/* Whether the caller may see the app, as far as it is known yet: sets the
 * step when it must be checked first, or when the answer is no. */
static void admit(const struct act_plan_app *app, const struct act_plan_req *req,
                  struct act_plan *ret)
{
    enum loom_visibility vis = app->visibility;
    if (vis == LOOM_VIS_PUBLIC || (req->internal && vis == LOOM_VIS_PRIVATE)) {
        ret->step = ACT_STEP_ADMIT;
        return;
    }
    if (!req->internal || vis != LOOM_VIS_PROJECT) {
        /* exactly as if it did not exist */
        reply(ret, ACT_REPLY_NOT_FOUND, 404, 0, NULL);
        return;
    }
    switch (req->caller) {
    case ACT_CALLER_UNCHECKED:
        ret->step = ACT_STEP_CHECK_CALLER;
        return;
    case ACT_CALLER_IN:
        ret->step = ACT_STEP_ADMIT;
        return;
    case ACT_CALLER_OUT:
        reply(ret, ACT_REPLY_NOT_FOUND, 404, 0, NULL);
        return;
    case ACT_CALLER_ERROR:
        break;
    }
    reply(ret, ACT_REPLY_CALLER_UNKNOWN, 503, 1, "the app's callers cannot be checked");
}

void act_plan_request(const struct act_plan_app *app, const struct act_plan_req *req,
                      const struct act_plan_limits *lim, int64_t now, struct act_plan *ret)
{
    *ret = (struct act_plan){.step = ACT_STEP_WAIT};
    if (req->lookup_failed && !app->known) {
        reply(ret, ACT_REPLY_LOOKUP_FAILED, 503, 1, "the app's instances cannot be looked up");
        return;
    }
    /* a held request looks again often: an instance may have become ready */
    int64_t ttl = req->held ? lim->hold_recheck_ms : lim->cache_ttl_ms;
    if (!app->refreshing && (app->fetched_ms == 0 || now - app->fetched_ms >= ttl)) {
        ret->step = ACT_STEP_REFRESH;
        return;
    }
    if (req->shutting_down) {
        reply(ret, ACT_REPLY_SHUTTING_DOWN, 503, 1, "the activator is shutting down");
        return;
    }
    if (app->known && !app->exists) {
        reply(ret, ACT_REPLY_NOT_FOUND, 404, 0, NULL);
        return;
    }
    if (app->known && !req->admitted) {
        admit(app, req, ret);
        return;
    }
    if (app->known) {
        int i = act_pick_instance(app->insts, app->ninsts, app->concurrency, now);
        if (i >= 0) {
            ret->step = ACT_STEP_FORWARD;
            ret->inst = (size_t)i;
            return;
        }
        if (!req->held) {
            if (app->held > lim->max_held) {
                reply(ret, ACT_REPLY_TOO_MANY_HELD, 503, 1,
                      "too many requests are waiting for this app");
                return;
            }
            ret->start_hold = true;
        }
        /* ask now rather than at the next autoscaler tick, and again every
         * cold_republish_ms in case the message was lost */
        if (now - app->last_cold_ms >= lim->cold_republish_ms) {
            if (app->ninsts == 0) {
                ret->ask = ACT_ASK_FROM_ZERO;
            } else {
                /* every instance is at its concurrency limit */
                double load = (double)(app->inflight + app->held);
                uint32_t need = (uint32_t)ceil(load / app->target - 1e-9);
                if (need > app->desired) {
                    ret->ask = ACT_ASK_FOR_LOAD;
                    ret->want = need;
                }
            }
        }
    }
    if (now >= req->deadline_ms) {
        int retry = (int)(lim->hold_timeout_ms / 1000 / 3);
        if (app->ninsts == 0)
            reply(ret, ACT_REPLY_NO_INSTANCE, 503, retry < 1 ? 1 : retry,
                  "no instance of the app became ready in time");
        else
            reply(ret, ACT_REPLY_NO_CAPACITY, 503, retry < 1 ? 1 : retry,
                  "no instance of the app could take the request in time");
        return;
    }
    ret->step = ACT_STEP_WAIT;
    ret->wait_until = now + lim->hold_recheck_ms < req->deadline_ms ? now + lim->hold_recheck_ms
                                                                    : req->deadline_ms;
}
