/* loom-logshipper: tails <agent-state-dir>/instances/<id>/container.log
 * (CRI format) into log_lines and publishes each batch as a LogBatch on
 * loom.logs.<project>.<instance>; deletes lines past the retention. */
#ifndef LOOM_LOGSHIPPER_H
#define LOOM_LOGSHIPPER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "strbuf.h"

struct loom_service;

enum ls_stream {
    LS_STDOUT = 1, /* as loom.v1.LogStream */
    LS_STDERR = 2,
};

struct ls_cri_line {
    int64_t ts_ns; /* unix time in nanoseconds */
    enum ls_stream stream;
    bool partial;     /* "P": the writer cut a long line; more follows */
    const char *text; /* points into the parsed line, not NUL-terminated */
    size_t text_len;
};

/* Parses one CRI log line without its newline:
 *   "<RFC 3339 time with up to 9 fraction digits> <stdout|stderr> <F|P> <text>"
 * The time may end in Z or a +hh:mm / -hh:mm offset. LOOM_EINVAL otherwise. */
int ls_parse_cri(const char *line, size_t len, struct ls_cri_line *ret, struct loom_err *err);

/* Appends text as valid UTF-8 without NUL bytes (PostgreSQL text cannot hold
 * them): each invalid byte and each NUL becomes U+FFFD. */
void ls_add_clean_utf8(struct strbuf *out, const char *text, size_t len);

struct ls_config {
    char *state_dirs;     /* --agent-state-dir, comma-separated */
    int64_t retention_ms; /* --log-retention */
    int64_t retention_every_ms;
};

extern struct ls_config ls_cfg;

int ls_start(struct loom_service *svc, struct loom_err *err);
void ls_tick(struct loom_service *svc);
void ls_stop(struct loom_service *svc);

#endif
