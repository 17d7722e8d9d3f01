/* loom-builder: build runs (source to OCI image). Not implemented yet: the
 * service runs, serves its health endpoints and refuses build requests with
 * an Ack that says so, so that a sender fails fast instead of timing out. */
#ifndef LOOM_BUILDER_H
#define LOOM_BUILDER_H

#include "err.h"

struct loom_service;

/* request (payload not defined yet), reply loom.v1.Ack */
#define BUILDER_QUEUE "builder"
#define BUILDER_NOT_IMPLEMENTED "builds are not implemented yet"

int builder_start(struct loom_service *svc, struct loom_err *err);

#endif
