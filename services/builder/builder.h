/* loom-builder: build runs (source to OCI image). Not carrying them out
 * yet: the service runs and serves its health endpoints; build runs wait in
 * pending. */
#ifndef LOOM_BUILDER_H
#define LOOM_BUILDER_H

#include "err.h"

struct loom_service;

int builder_start(struct loom_service *svc, struct loom_err *err);

#endif
