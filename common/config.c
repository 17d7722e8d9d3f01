#include "config.h"
#include "quantity.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"

/* Each parser returns NULL on success or the reason it refused s. */

static const char *parse_int_reason(const char *s, int64_t min, int64_t max, int64_t *ret)
{
    if (!*s || isspace((unsigned char)*s))
        return "not an integer";
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end)
        return "not an integer";
    if (errno == ERANGE)
        return "out of range";
    if (max > min && (v < min || v > max))
        return "out of range";
    *ret = v;
    return NULL;
}

static const char *parse_bool_reason(const char *s, bool *ret)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < LOOM_ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *ret = true;
            return NULL;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *ret = false;
            return NULL;
        }
    }
    return "not a boolean (true/false)";
}

/* Reads the leading unsigned integer of s; *end points after it. */
static const char *parse_number_prefix(const char *s, int64_t *ret, const char **end)
{
    if (!isdigit((unsigned char)*s))
        return NULL;
    int64_t v = 0;
    const char *p = s;
    while (isdigit((unsigned char)*p)) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10)
            return NULL;
        v = v * 10 + d;
        p++;
    }
    *ret = v;
    *end = p;
    return p;
}

static const char *parse_duration_reason(const char *s, int64_t *ret)
{
    int64_t v;
    const char *unit;
    if (!parse_number_prefix(s, &v, &unit))
        return *s && isdigit((unsigned char)*s) ? "out of range"
                                                : "not a duration (like 250ms, 5s, 2m, 1h, 7d)";
    int64_t mul;
    if (*unit == '\0' || strcmp(unit, "s") == 0)
        mul = 1000;
    else if (strcmp(unit, "ms") == 0)
        mul = 1;
    else if (strcmp(unit, "m") == 0)
        mul = 60 * 1000;
    else if (strcmp(unit, "h") == 0)
        mul = 3600 * 1000;
    else if (strcmp(unit, "d") == 0)
        mul = 24 * 3600 * 1000;
    else
        return "not a duration (like 250ms, 5s, 2m, 1h, 7d)";
    if (v > INT64_MAX / mul)
        return "out of range";
    *ret = v * mul;
    return NULL;
}

static const char *parse_size_reason(const char *s, int64_t *ret)
{
    if (loom_size_parse(s, LOOM_SIZE_ANY, ret, NULL) < 0)
        return "not a size (like 512, 64K, 512Mi, 0.5G, 4G)";
    return NULL;
}

static const char *parse_hostport_reason(const char *s, char **ret_host, uint16_t *ret_port)
{
    const char *colon;
    const char *host;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return "not host:port";
        host = s + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return "not host:port";
        host = s;
        hostlen = (size_t)(colon - s);
        if (memchr(host, ':', hostlen))
            return "not host:port (write IPv6 addresses in brackets)";
    }
    int64_t port;
    if (parse_int_reason(colon + 1, 0, 65535, &port))
        return "not host:port (port must be 0 to 65535)";
    for (size_t i = 0; i < hostlen; i++) {
        unsigned char c = (unsigned char)host[i];
        if (isspace(c) || c == '/' || c < 0x20)
            return "not host:port";
    }
    char *h = hostlen ? strndup(host, hostlen) : strdup("127.0.0.1");
    if (!h)
        abort();
    *ret_host = h;
    *ret_port = (uint16_t)port;
    return NULL;
}

int loom_parse_int(const char *s, int64_t min, int64_t max, int64_t *ret)
{
    return parse_int_reason(s, min, max, ret) ? -1 : 0;
}

int loom_parse_bool(const char *s, bool *ret)
{
    return parse_bool_reason(s, ret) ? -1 : 0;
}

int loom_parse_duration_ms(const char *s, int64_t *ret)
{
    return parse_duration_reason(s, ret) ? -1 : 0;
}

int loom_parse_hostport(const char *s, char **ret_host, uint16_t *ret_port)
{
    return parse_hostport_reason(s, ret_host, ret_port) ? -1 : 0;
}

static int opt_error(const struct loom_opt *o, const char *value, const char *reason,
                     struct loom_err *err)
{
    if (o->env)
        return loom_err_set(err, LOOM_EINVAL, "invalid value \"%s\" for --%s (%s): %s", value,
                            o->flag, o->env, reason);
    return loom_err_set(err, LOOM_EINVAL, "invalid value \"%s\" for --%s: %s", value, o->flag,
                        reason);
}

static int opt_assign(const struct loom_opt *o, const char *value, struct loom_err *err)
{
    const char *reason = NULL;
    int64_t v = 0;
    bool b;
    switch (o->type) {
    case LOOM_OPT_STRING: {
        char *s = strdup(value);
        if (!s)
            abort();
        free(*(char **)o->dst);
        *(char **)o->dst = s;
        return 0;
    }
    case LOOM_OPT_ADDR: {
        char *host;
        uint16_t port;
        reason = parse_hostport_reason(value, &host, &port);
        if (reason)
            return opt_error(o, value, reason, err);
        size_t n = strlen(host) + 16;
        char *s = malloc(n);
        if (!s)
            abort();
        if (strchr(host, ':'))
            snprintf(s, n, "[%s]:%u", host, (unsigned)port);
        else
            snprintf(s, n, "%s:%u", host, (unsigned)port);
        free(host);
        free(*(char **)o->dst);
        *(char **)o->dst = s;
        return 0;
    }
    case LOOM_OPT_BOOL:
        reason = parse_bool_reason(value, &b);
        if (reason)
            return opt_error(o, value, reason, err);
        *(bool *)o->dst = b;
        return 0;
    case LOOM_OPT_INT:
        reason = parse_int_reason(value, o->min, o->max, &v);
        if (reason && strcmp(reason, "out of range") == 0 && o->max > o->min) {
            char r[96];
            snprintf(r, sizeof(r), "must be from %" PRId64 " to %" PRId64, o->min, o->max);
            return opt_error(o, value, r, err);
        }
        break;
    case LOOM_OPT_DURATION:
        reason = parse_duration_reason(value, &v);
        if (!reason && o->max > o->min && (v < o->min || v > o->max)) {
            char r[96];
            snprintf(r, sizeof(r), "must be from %" PRId64 "ms to %" PRId64 "ms", o->min, o->max);
            return opt_error(o, value, r, err);
        }
        break;
    case LOOM_OPT_SIZE:
        reason = parse_size_reason(value, &v);
        if (!reason && o->max > o->min && (v < o->min || v > o->max)) {
            char r[96];
            snprintf(r, sizeof(r), "must be from %" PRId64 " to %" PRId64 " bytes", o->min, o->max);
            return opt_error(o, value, r, err);
        }
        break;
    }
    if (reason)
        return opt_error(o, value, reason, err);
    *(int64_t *)o->dst = v;
    return 0;
}

static const struct loom_opt *find_opt(const struct loom_opt *opts, size_t nopts, const char *name,
                                       size_t len, size_t *ret_idx)
{
    for (size_t i = 0; i < nopts; i++) {
        if (strlen(opts[i].flag) == len && memcmp(opts[i].flag, name, len) == 0) {
            *ret_idx = i;
            return &opts[i];
        }
    }
    return NULL;
}

int loom_config_parse(const struct loom_opt *opts, size_t nopts, int argc, char **argv,
                      char ***ret_rest, int *ret_nrest, bool *ret_help, struct loom_err *err)
{
    for (size_t i = 0; i < nopts; i++)
        if (opts[i].type == LOOM_OPT_STRING || opts[i].type == LOOM_OPT_ADDR)
            *(char **)opts[i].dst = NULL;

    /* the value each option got on the command line (last one wins) */
    _cleanup_free_ const char **given = calloc(nopts + 1, sizeof(*given));
    _cleanup_free_ char **rest = calloc((size_t)(argc > 0 ? argc : 1), sizeof(*rest));
    if (!given || !rest)
        abort();
    int nrest = 0;
    bool only_args = false;

    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (only_args || a[0] != '-' || a[1] == '\0') {
            rest[nrest++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_args = true;
            continue;
        }
        if (ret_help && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            *ret_help = true;
            return 0;
        }
        if (a[1] != '-')
            return loom_err_set(err, LOOM_EINVAL, "unknown flag \"%s\"", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t namelen = eq ? (size_t)(eq - name) : strlen(name);
        size_t idx;
        const struct loom_opt *o = find_opt(opts, nopts, name, namelen, &idx);
        if (!o) {
            return loom_err_set(err, LOOM_EINVAL, "unknown flag \"--%.*s\"", (int)namelen, name);
        }
        if (eq) {
            given[idx] = eq + 1;
        } else if (o->type == LOOM_OPT_BOOL) {
            given[idx] = "true";
        } else {
            if (i + 1 >= argc)
                return loom_err_set(err, LOOM_EINVAL, "missing value for --%s", o->flag);
            given[idx] = argv[++i];
        }
    }
    if (nrest > 0 && !ret_rest)
        return loom_err_set(err, LOOM_EINVAL, "unexpected argument \"%s\"", rest[0]);

    for (size_t i = 0; i < nopts; i++) {
        const struct loom_opt *o = &opts[i];
        const char *v = given[i];
        if (!v && o->env) {
            const char *e = getenv(o->env);
            if (e && *e)
                v = e;
        }
        if (!v)
            v = o->def;
        if (!v)
            continue;
        if (opt_assign(o, v, err) < 0) {
            loom_config_release(opts, nopts);
            return -1;
        }
    }

    if (ret_help)
        *ret_help = false;
    if (ret_rest) {
        /* rest goes at the end of argv, in order, so no allocation outlives the parse */
        int start = argc - nrest;
        int w = 1;
        _cleanup_free_ char **opts_args = calloc((size_t)(argc > 0 ? argc : 1), sizeof(char *));
        if (!opts_args)
            abort();
        int nopt_args = 0;
        int r = 0;
        for (int i = 1; i < argc; i++) {
            if (r < nrest && argv[i] == rest[r])
                r++;
            else
                opts_args[nopt_args++] = argv[i];
        }
        for (int i = 0; i < nopt_args; i++)
            argv[w++] = opts_args[i];
        for (int i = 0; i < nrest; i++)
            argv[start + i] = rest[i];
        *ret_rest = argv + start;
        *ret_nrest = nrest;
    }
    return 0;
}

void loom_config_release(const struct loom_opt *opts, size_t nopts)
{
    for (size_t i = 0; i < nopts; i++) {
        if (opts[i].type == LOOM_OPT_STRING || opts[i].type == LOOM_OPT_ADDR) {
            free(*(char **)opts[i].dst);
            *(char **)opts[i].dst = NULL;
        }
    }
}

void loom_config_usage(FILE *out, const char *prog, const struct loom_opt *opts, size_t nopts)
{
    static const char *const type_names[] = {
        [LOOM_OPT_STRING] = "STRING",     [LOOM_OPT_INT] = "INT",   [LOOM_OPT_BOOL] = "",
        [LOOM_OPT_DURATION] = "DURATION", [LOOM_OPT_SIZE] = "SIZE", [LOOM_OPT_ADDR] = "HOST:PORT",
    };
    fprintf(out, "usage: %s [OPTIONS]\n\noptions:\n", prog);
    for (size_t i = 0; i < nopts; i++) {
        const struct loom_opt *o = &opts[i];
        const char *t = type_names[o->type];
        fprintf(out, "  --%s%s%s\n", o->flag, *t ? " " : "", t);
        fprintf(out, "      %s", o->help ? o->help : "");
        if (o->env)
            fprintf(out, " [env %s]", o->env);
        if (o->def)
            fprintf(out, " [default \"%s\"]", o->def);
        fputc('\n', out);
    }
    fprintf(out, "  --help\n      show this help\n");
}
