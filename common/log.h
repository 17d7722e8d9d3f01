/* Logging: one JSON object per line on stderr:
 *   {"time":"2026-11-28T04:25:32.123Z","level":"info","service":"api",
 *    "msg":"...","request_id":"..."}
 * Only program code logs (services' top levels, tools); library code returns
 * errors instead. Thread-safe. */
#ifndef LOOM_LOG_H
#define LOOM_LOG_H

enum loom_log_level {
    LOOM_LOG_DEBUG = 0,
    LOOM_LOG_INFO,
    LOOM_LOG_WARN,
    LOOM_LOG_ERROR,
};

/* service names the process in every line; lines below min are dropped.
 * LOOM_LOG_LEVEL=debug|info|warn|error in the environment overrides min. */
void loom_log_init(const char *service, enum loom_log_level min);

/* Changes the minimum level (no environment override): for a --log-level
 * flag that must win over LOOM_LOG_LEVEL. */
void loom_log_set_level(enum loom_log_level min);

/* Sets (or with NULL clears) the request id that this thread's lines carry. */
void loom_log_set_request_id(const char *request_id);
const char *loom_log_request_id(void);

void loom_log(enum loom_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses "debug", "info", "warn", "error"; returns -1 for anything else. */
int loom_log_level_parse(const char *s, enum loom_log_level *ret);

#define log_debug(...) loom_log(LOOM_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) loom_log(LOOM_LOG_INFO, __VA_ARGS__)
#define log_warn(...) loom_log(LOOM_LOG_WARN, __VA_ARGS__)
#define log_error(...) loom_log(LOOM_LOG_ERROR, __VA_ARGS__)

#endif
