/* loom-logshipper: tails <agent-state-dir>/instances/<id>/container.log
 * (CRI format) into log_lines, marks each instance's end of stream, and
 * publishes each batch as a LogBatch on loom.logs.<project>.<instance>
 * (ship.c); deletes lines past their project's retention (retention.c). */
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

/* ---- joining partial records ------------------------------------------------------
 * The shim cuts lines longer than 16 KiB into partial records ("P"), ended
 * by a full one ("F"); the two streams' records interleave. The joiner puts
 * each line back together and hands it out at the offset of the record that
 * ends it, so lines come out in increasing offsets. A line that grows past
 * LS_MAX_LINE is handed out at that size and the rest starts a new one. */

#define LS_MAX_LINE (1024 * 1024)

struct ls_line {
    int64_t offset; /* of the record that ends the line */
    int64_t ts_ns;  /* of its first record */
    enum ls_stream stream;
    const char *text; /* raw bytes (not checked as UTF-8), valid during the callback */
    size_t len;
};

typedef void (*ls_emit_fn)(void *arg, const struct ls_line *l);

struct ls_joiner {
    struct strbuf text[3]; /* by stream (1 stdout, 2 stderr) */
    int64_t first_offset[3], ts_ns[3];
    bool pending[3];
};

void ls_joiner_init(struct ls_joiner *j);
void ls_joiner_release(struct ls_joiner *j);
/* Drops what is pending (a reader starting again from its resume point). */
void ls_joiner_reset(struct ls_joiner *j);
/* Takes the record at offset; emits the line it completes, if any. */
void ls_joiner_feed(struct ls_joiner *j, int64_t offset, const struct ls_cri_line *rec,
                    ls_emit_fn emit, void *arg);
/* Emits what is pending as lines (the writer is gone), at offset. */
void ls_joiner_flush(struct ls_joiner *j, int64_t offset, ls_emit_fn emit, void *arg);
/* Where a reader that loses what is pending must start again to get it
 * back: the first pending part's offset, or scanned when nothing is. */
int64_t ls_joiner_resume(const struct ls_joiner *j, int64_t scanned);
bool ls_joiner_empty(const struct ls_joiner *j);

/* Appends text as valid UTF-8 without NUL bytes (PostgreSQL text cannot hold
 * them): each invalid byte and each NUL becomes U+FFFD. */
void ls_add_clean_utf8(struct strbuf *out, const char *text, size_t len);

struct ls_config {
    char *state_dirs;     /* --agent-state-dir, comma-separated */
    char *node;           /* --node-name, for log_streams */
    int64_t retention_ms; /* --log-retention: the default age */
    int64_t retention_every_ms;
};

extern struct ls_config ls_cfg;

/* ship.c */
int ls_start(struct loom_service *svc, struct loom_err *err);
void ls_tick(struct loom_service *svc);
void ls_stop(struct loom_service *svc);

/* retention.c: a pass every retention_every_ms, when no other logshipper
 * runs one. */
int ls_retention_start(struct loom_service *svc, struct loom_err *err);
void ls_retention_tick(struct loom_service *svc);

#endif
