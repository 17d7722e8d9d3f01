#include "activator.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* Copies the label [s, s+n) lowercased into out and checks it is a DNS label. */
static int take_label(const char *s, size_t n, char *out)
{
    if (n == 0 || n >= ACT_NAME_MAX)
        return -1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[n] = '\0';
    return loom_is_dns_label(out) ? 0 : -1;
}

int act_parse_host(const char *host, const char *domain, char *ret_project, char *ret_app)
{
    if (!host || !domain || !*domain)
        return -1;
    size_t len = strlen(host);
    /* strip ":port" (hosts here are names, never IPv6 literals) */
    const char *colon = memchr(host, ':', len);
    if (colon)
        len = (size_t)(colon - host);
    /* a trailing dot is the same name */
    if (len > 0 && host[len - 1] == '.')
        len--;
    size_t dlen = strlen(domain);
    if (len < dlen + 4 || host[len - dlen - 1] != '.' ||
        strncasecmp(host + len - dlen, domain, dlen) != 0)
        return -1;
    size_t names = len - dlen - 1; /* "<app>.<project>" */
    const char *dot = memchr(host, '.', names);
    if (!dot)
        return -1;
    size_t alen = (size_t)(dot - host);
    size_t plen = names - alen - 1;
    char app[ACT_NAME_MAX], project[ACT_NAME_MAX];
    if (take_label(host, alen, app) < 0 || take_label(dot + 1, plen, project) < 0)
        return -1;
    memcpy(ret_project, project, strlen(project) + 1);
    memcpy(ret_app, app, strlen(app) + 1);
    return 0;
}

int act_parse_path(const char *path, const char *prefix, char *ret_project, char *ret_app,
                   const char **ret_rest)
{
    size_t plen = strlen(prefix);
    if (!path || strncmp(path, prefix, plen) != 0)
        return -1;
    const char *p = path + plen;
    const char *slash = strchr(p, '/');
    if (!slash)
        return -1;
    char project[ACT_NAME_MAX], app[ACT_NAME_MAX];
    if (take_label(p, (size_t)(slash - p), project) < 0)
        return -1;
    const char *a = slash + 1;
    const char *end = strchr(a, '/');
    size_t alen = end ? (size_t)(end - a) : strlen(a);
    if (take_label(a, alen, app) < 0)
        return -1;
    /* names are stored lowercase: an uppercase path is not the same app */
    if (strncmp(p, project, strlen(project)) != 0 || strncmp(a, app, alen) != 0)
        return -1;
    memcpy(ret_project, project, strlen(project) + 1);
    memcpy(ret_app, app, alen + 1);
    *ret_rest = end ? end + 1 : a + alen;
    return 0;
}

void act_add_url_raw(struct strbuf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* bytes that may never appear in a URL as they are */
        if (*p <= 0x20 || *p >= 0x7f || strchr("\"<>\\^`{|}", *p)) {
            char b[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            strbuf_add(out, b, 3);
        } else {
            strbuf_addch(out, (char)*p);
        }
    }
}

bool act_is_hop_header(const char *name)
{
    static const char *const hop[] = {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "content-length",
        "expect",
    };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strcasecmp(name, hop[i]) == 0)
            return true;
    return false;
}
