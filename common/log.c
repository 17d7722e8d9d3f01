#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strbuf.h"
#include "util.h"

static char log_service[64] = "loom";
static enum loom_log_level log_min = LOOM_LOG_INFO;
static __thread char log_request_id[65];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void loom_log_init(const char *service, enum loom_log_level min)
{
    snprintf(log_service, sizeof(log_service), "%s", service ? service : "loom");
    log_min = min;
    enum loom_log_level env;
    const char *s = getenv("LOOM_LOG_LEVEL");
    if (s && loom_log_level_parse(s, &env) == 0)
        log_min = env;
}

void loom_log_set_level(enum loom_log_level min)
{
    log_min = min;
}

void loom_log_set_request_id(const char *request_id)
{
    if (!request_id)
        log_request_id[0] = '\0';
    else
        snprintf(log_request_id, sizeof(log_request_id), "%s", request_id);
}

const char *loom_log_request_id(void)
{
    return log_request_id[0] ? log_request_id : NULL;
}

int loom_log_level_parse(const char *s, enum loom_log_level *ret)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *ret = (enum loom_log_level)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *ret = LOOM_LOG_WARN;
        return 0;
    }
    return -1;
}

void loom_log(enum loom_log_level level, const char *fmt, ...)
{
    if (level < log_min || level > LOOM_LOG_ERROR)
        return;
    int saved_errno = errno;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    char ts[32];
    loom_format_time_ms(loom_now_ms(), ts);

    struct strbuf sb = STRBUF_INIT;
    strbuf_grow(&sb, strlen(msg) + 160);
    strbuf_addstr(&sb, "{\"time\":\"");
    strbuf_addstr(&sb, ts);
    strbuf_addstr(&sb, "\",\"level\":\"");
    strbuf_addstr(&sb, level_names[level]);
    strbuf_addstr(&sb, "\",\"service\":\"");
    strbuf_add_json_escaped(&sb, log_service);
    strbuf_addstr(&sb, "\",\"msg\":\"");
    strbuf_add_json_escaped(&sb, msg);
    strbuf_addch(&sb, '"');
    if (log_request_id[0]) {
        strbuf_addstr(&sb, ",\"request_id\":\"");
        strbuf_add_json_escaped(&sb, log_request_id);
        strbuf_addch(&sb, '"');
    }
    strbuf_addstr(&sb, "}\n");
    /* one write per line so that lines from threads do not interleave */
    size_t off = 0;
    while (off < sb.len) {
        ssize_t n = write(STDERR_FILENO, sb.buf + off, sb.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    strbuf_release(&sb);
    errno = saved_errno;
}
