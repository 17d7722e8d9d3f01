#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"

int loom_random_bytes(void *buf, size_t n, struct loom_err *err)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return loom_err_sys(err, errno, "could not get random bytes");
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void loom_uuid4(char out[37])
{
    unsigned char b[16];
    if (loom_random_bytes(b, sizeof(b), NULL) < 0)
        abort(); /* getrandom does not fail on a booted kernel */
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    char hex[33];
    loom_hex(b, sizeof(b), hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

bool loom_is_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

int loom_uuid_bytes(const char *s, uint8_t out[16])
{
    if (!loom_is_uuid(s))
        return -1;
    char hex[33];
    size_t n = 0;
    for (const char *p = s; *p; p++)
        if (*p != '-')
            hex[n++] = *p;
    hex[n] = '\0';
    return loom_unhex(hex, out, 16);
}

void loom_hex(const void *data, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

char *loom_hex_alloc(const void *data, size_t n)
{
    char *h = malloc(n * 2 + 1);
    if (!h)
        abort();
    loom_hex(data, n, h);
    return h;
}

void loom_sha256_hex(const void *data, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL))
        abort();
    loom_hex(md, 32, out);
}

int loom_sha256_file(const char *path, char out[65], struct loom_err *err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(ctx);
        return loom_err_set(err, LOOM_EINTERNAL, "could not start sha256");
    }
    unsigned char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            EVP_MD_CTX_free(ctx);
            return loom_err_sys(err, e, "could not read \"%s\"", path);
        }
        if (n == 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    loom_hex(md, 32, out);
    return 0;
}

int64_t loom_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t loom_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t loom_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void loom_format_time_ms(int64_t unix_ms, char out[32])
{
    time_t secs = (time_t)(unix_ms / 1000);
    int ms = (int)(unix_ms % 1000);
    if (ms < 0) {
        ms += 1000;
        secs -= 1;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    char date[24];
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03dZ", date, ms);
}

bool loom_next_line(const char **cursor, char *buf, size_t bufsz)
{
    while (*cursor && **cursor) {
        const char *start = *cursor, *eol = strchr(start, '\n');
        size_t len = eol ? (size_t)(eol - start) : strlen(start);
        *cursor = eol ? eol + 1 : start + len;
        if (len < bufsz) {
            memcpy(buf, start, len);
            buf[len] = 0;
            return true;
        }
    }
    return false;
}

bool loom_is_dns_label(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63)
        return false;
    if (s[0] < 'a' || s[0] > 'z')
        return false;
    if (s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

int loom_read_file(const char *path, char **ret, size_t *ret_len, struct loom_err *err)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        loom_err_sys(err, e, "could not open \"%s\"", path);
        if (err && e == ENOENT)
            err->code = LOOM_ENOTFOUND;
        return -1;
    }
    size_t cap = 4096, len = 0;
    _cleanup_free_ char *buf = malloc(cap);
    if (!buf)
        abort();
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            char *p = realloc(buf, cap);
            if (!p)
                abort();
            buf = p;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return loom_err_sys(err, errno, "could not read \"%s\"", path);
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    if (ret_len)
        *ret_len = len;
    *ret = TAKE_PTR(buf);
    return 0;
}

int loom_write_file_atomic(const char *path, const void *data, size_t len, struct loom_err *err)
{
    size_t plen = strlen(path);
    _cleanup_free_ char *tmp = malloc(plen + 32);
    if (!tmp)
        abort();
    char rnd[9];
    unsigned char rb[4];
    if (loom_random_bytes(rb, sizeof(rb), err) < 0)
        return -1;
    loom_hex(rb, sizeof(rb), rnd);
    snprintf(tmp, plen + 32, "%s.tmp-%s", path, rnd);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s\"", tmp);
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, p + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return loom_err_sys(err, e, "could not write \"%s\"", tmp);
        }
        off += (size_t)n;
    }
    if (fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return loom_err_sys(err, e, "could not fsync \"%s\"", tmp);
    }
    if (close(fd) < 0) {
        int e = errno;
        unlink(tmp);
        return loom_err_sys(err, e, "could not close \"%s\"", tmp);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return loom_err_sys(err, e, "could not rename \"%s\" to \"%s\"", tmp, path);
    }
    /* make the rename durable too */
    _cleanup_free_ char *dir = strdup(path);
    if (!dir)
        abort();
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0)
        (void)fsync(dfd);
    return 0;
}

int loom_mkdir_p(const char *path, unsigned mode, struct loom_err *err)
{
    _cleanup_free_ char *p = strdup(path);
    if (!p)
        abort();
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, (mode_t)mode) < 0 && errno != EEXIST)
            return loom_err_sys(err, errno, "could not create directory \"%s\"", p);
        *s = '/';
    }
    if (mkdir(p, (mode_t)mode) < 0) {
        if (errno != EEXIST)
            return loom_err_sys(err, errno, "could not create directory \"%s\"", p);
        struct stat st;
        if (stat(p, &st) < 0 || !S_ISDIR(st.st_mode))
            return loom_err_set(err, LOOM_EIO, "could not create directory \"%s\": not a directory",
                                p);
    }
    return 0;
}

static int rm_rf_at(int parent, const char *name, const char *path, struct loom_err *err)
{
    struct stat st;
    if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT)
            return 0;
        return loom_err_sys(err, errno, "could not stat \"%s\"", path);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(parent, name, 0) < 0 && errno != ENOENT)
            return loom_err_sys(err, errno, "could not remove \"%s\"", path);
        return 0;
    }
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not open \"%s\"", path);
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return loom_err_sys(err, e, "could not open \"%s\"", path);
    }
    int r = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        size_t len = strlen(path) + strlen(de->d_name) + 2;
        char *child = malloc(len);
        if (!child)
            abort();
        snprintf(child, len, "%s/%s", path, de->d_name);
        r = rm_rf_at(dirfd(d), de->d_name, child, err);
        free(child);
        if (r < 0)
            break;
    }
    closedir(d);
    if (r < 0)
        return -1;
    if (unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        return loom_err_sys(err, errno, "could not remove \"%s\"", path);
    return 0;
}

int loom_rm_rf(const char *path, struct loom_err *err)
{
    return rm_rf_at(AT_FDCWD, path, path, err);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int loom_unhex(const char *s, void *out, size_t n)
{
    unsigned char *o = out;
    if (strlen(s) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        o[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

int loom_unhex_alloc(const char *s, uint8_t **ret, size_t *ret_len)
{
    size_t len = s ? strlen(s) : 1;
    if (len % 2)
        return -1;
    /* one byte more: an empty string is not malloc(0) */
    _cleanup_free_ uint8_t *b = malloc(len / 2 + 1);
    if (!b)
        abort();
    if (loom_unhex(s, b, len / 2) < 0)
        return -1;
    *ret = TAKE_PTR(b);
    *ret_len = len / 2;
    return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *loom_base64_encode(const void *data, size_t n)
{
    const uint8_t *in = data;
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out)
        abort();
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        *o++ = b64[v >> 18 & 63];
        *o++ = b64[v >> 12 & 63];
        *o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

int loom_base64_decode(const char *s, size_t len, uint8_t **ret, size_t *ret_len)
{
    while (len > 0 && s[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    uint8_t *out = malloc(len * 3 / 4 + 1);
    if (!out)
        abort();
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = s[i] ? strchr(b64, s[i]) : NULL;
        if (!p) {
            free(out);
            return -1;
        }
        acc = acc << 6 | (uint32_t)(p - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    *ret = out;
    *ret_len = o;
    return 0;
}

/* --- time ---------------------------------------------------------------------- */

static int digits(const char *s, int n, int *ret)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *ret = v;
    return 0;
}

int loom_parse_rfc3339_ns(const char *s, size_t len, int64_t *ret_ns)
{
    /* 2026-11-28T04:25:32[.fraction](Z|+hh:mm|-hh:mm) */
    int Y, M, D, h, m, sec;
    if (len < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
        s[16] != ':')
        return -1;
    if (digits(s, 4, &Y) < 0 || digits(s + 5, 2, &M) < 0 || digits(s + 8, 2, &D) < 0 ||
        digits(s + 11, 2, &h) < 0 || digits(s + 14, 2, &m) < 0 || digits(s + 17, 2, &sec) < 0)
        return -1;
    if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    size_t i = 19;
    int64_t frac = 0;
    if (i < len && s[i] == '.') {
        i++;
        int nd = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (nd < 9) {
                frac = frac * 10 + (s[i] - '0');
                nd++;
            }
            i++;
        }
        if (nd == 0)
            return -1;
        for (; nd < 9; nd++)
            frac *= 10;
    }
    int64_t offset_s = 0;
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        int oh, om;
        if (digits(s + i + 1, 2, &oh) < 0 || digits(s + i + 4, 2, &om) < 0 || oh > 23 || om > 59)
            return -1;
        offset_s = (oh * 3600 + om * 60) * (s[i] == '+' ? 1 : -1);
        i += 6;
    } else {
        return -1;
    }
    if (i != len)
        return -1;
    /* lines come in runs of the same second: remember the last one */
    static __thread char last_secs[19];
    static __thread time_t last_t = -1;
    time_t t;
    if (last_t != -1 && memcmp(s, last_secs, 19) == 0) {
        t = last_t;
    } else {
        struct tm tm = {0};
        tm.tm_year = Y - 1900;
        tm.tm_mon = M - 1;
        tm.tm_mday = D;
        tm.tm_hour = h;
        tm.tm_min = m;
        tm.tm_sec = sec;
        t = timegm(&tm);
        if (t == (time_t)-1)
            return -1;
        memcpy(last_secs, s, 19);
        last_t = t;
    }
    *ret_ns = ((int64_t)t - offset_s) * 1000000000LL + frac;
    return 0;
}

int loom_parse_time_param(const char *s, int64_t *ret_ns)
{
    size_t n = strlen(s);
    char buf[32];
    /* a month or a day stand for their first instant, in UTC */
    if (n == 7 && s[4] == '-') {
        snprintf(buf, sizeof(buf), "%s-01T00:00:00Z", s);
        return loom_parse_rfc3339_ns(buf, strlen(buf), ret_ns);
    }
    if (n == 10 && s[4] == '-' && s[7] == '-') {
        snprintf(buf, sizeof(buf), "%sT00:00:00Z", s);
        return loom_parse_rfc3339_ns(buf, strlen(buf), ret_ns);
    }
    return loom_parse_rfc3339_ns(s, n, ret_ns);
}
