#include "builder.h"

#include "log.h"

int builder_start(struct loom_service *svc, struct loom_err *err)
{
    (void)svc, (void)err;
    log_warn("build runs are not carried out yet: they wait in pending");
    return 0;
}
