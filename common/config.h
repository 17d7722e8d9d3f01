/* Configuration from command-line flags and the environment.
 *
 * A service declares a table of options; each has a long flag (--pg-dsn) and
 * an environment variable (LOOM_PG_DSN). Precedence: flag, then environment,
 * then the default. A bad value is an error that names the flag and why:
 *   invalid value "abc" for --http-port (LOOM_HTTP_PORT): not an integer */
#ifndef LOOM_CONFIG_H
#define LOOM_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

enum loom_opt_type {
    LOOM_OPT_STRING,   /* dst: char ** (allocated; free with loom_config_release) */
    LOOM_OPT_INT,      /* dst: int64_t *, bounded by min and max */
    LOOM_OPT_BOOL,     /* dst: bool *; "1/0/true/false/yes/no/on/off"; a bare flag is true */
    LOOM_OPT_DURATION, /* dst: int64_t * in milliseconds; "250ms", "5s", "2m", "1h", "7d", bare = s
                        */
    LOOM_OPT_SIZE, /* dst: int64_t * in bytes; "512", "64K", "512Mi", "4G" (common/quantity.h) */
    LOOM_OPT_ADDR, /* dst: char **; "host:port" or ":port" (host defaults to 127.0.0.1) */
};

struct loom_opt {
    const char *flag; /* without the dashes: "pg-dsn" */
    const char *env;  /* "LOOM_PG_DSN", or NULL */
    enum loom_opt_type type;
    void *dst;
    const char *def;  /* default in the same syntax as the flag, or NULL */
    int64_t min, max; /* for INT, DURATION and SIZE when max > min */
    const char *help;
};

/* Parses argv (and the environment) into the table's destinations. Arguments
 * that are not options are returned in *ret_rest (argv entries, not copies),
 * with their count in *ret_nrest; pass NULL to refuse them. --help sets
 * *ret_help (may be NULL) and stops. */
int loom_config_parse(const struct loom_opt *opts, size_t nopts, int argc, char **argv,
                      char ***ret_rest, int *ret_nrest, bool *ret_help, struct loom_err *err);

/* Frees the strings the parse allocated. */
void loom_config_release(const struct loom_opt *opts, size_t nopts);

void loom_config_usage(FILE *out, const char *prog, const struct loom_opt *opts, size_t nopts);

/* The value parsers behind the table, usable alone. All return 0 or -1. */
int loom_parse_int(const char *s, int64_t min, int64_t max, int64_t *ret);
int loom_parse_bool(const char *s, bool *ret);
int loom_parse_duration_ms(const char *s, int64_t *ret);
/* host is allocated; an empty host becomes "127.0.0.1". */
int loom_parse_hostport(const char *s, char **ret_host, uint16_t *ret_port);

#endif
