#include "subjects.h"
#include "builder.h"

#include "bus.h"
#include "log.h"
#include "metrics.h"
#include "service.h"

static struct loom_metric *m_refused;

static void on_build_request(struct loom_bus *bus, natsMsg *msg, void *arg)
{
    (void)arg;
    loom_metric_add(m_refused, 1);
    if (loom_bus_ack(bus, msg, BUILDER_NOT_IMPLEMENTED, false) < 0)
        log_warn("could not answer a build request on %s", natsMsg_GetSubject(msg));
}

int builder_start(struct loom_service *svc, struct loom_err *err)
{
    m_refused = loom_metric_counter("loom_builder_requests_refused_total", NULL,
                                    "build requests refused because builds are not implemented");
    if (loom_bus_subscribe(svc->bus, LOOM_SUBJ_BUILD_REQUEST, BUILDER_QUEUE, on_build_request, NULL,
                           err) < 0)
        return loom_err_wrap(err, "subscribing to %s", LOOM_SUBJ_BUILD_REQUEST);
    log_warn("builds are not implemented yet: refusing requests on %s", LOOM_SUBJ_BUILD_REQUEST);
    return 0;
}
