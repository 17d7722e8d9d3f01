/* Small helpers used across services: ids, hashes, time, files. */
#ifndef LOOM_UTIL_H
#define LOOM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Fills buf with n cryptographically random bytes (getrandom). */
int loom_random_bytes(void *buf, size_t n, struct loom_err *err);
/* A random RFC 4122 version 4 UUID, lowercase, 36 characters + NUL. */
void loom_uuid4(char out[37]);
/* True when s is a UUID in its canonical text form: 8-4-4-4-12 hex digits
 * (either case). False for NULL. */
bool loom_is_uuid(const char *s);
/* The 16 bytes of a UUID in that form into out; -1 when s is not one. */
int loom_uuid_bytes(const char *s, uint8_t out[16]);
/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void loom_hex(const void *data, size_t n, char *out);
/* The same, allocated (free it). */
char *loom_hex_alloc(const void *data, size_t n);
/* Exactly 2n hex characters (either case) into n bytes; -1 otherwise. */
int loom_unhex(const char *s, void *out, size_t n);
/* A string of hex pairs (either case) into a new buffer of *ret_len bytes
 * (free it); -1 for NULL, an odd length or a non-hex character. */
int loom_unhex_alloc(const char *s, uint8_t **ret, size_t *ret_len);
/* Standard base64 (RFC 4648 section 4, with padding) of n bytes, allocated. */
char *loom_base64_encode(const void *data, size_t n);
/* Standard base64 of len characters (padding optional, nothing else) into
 * an allocated buffer; -1 when s is not base64. */
int loom_base64_decode(const char *s, size_t len, uint8_t **ret, size_t *ret_len);
/* sha256 of data as 64 hex characters + NUL. */
void loom_sha256_hex(const void *data, size_t n, char out[65]);
/* sha256 of a whole file; -1 with err if it cannot be read. */
int loom_sha256_file(const char *path, char out[65], struct loom_err *err);

int64_t loom_now_ms(void);  /* CLOCK_REALTIME in milliseconds */
int64_t loom_mono_ms(void); /* CLOCK_MONOTONIC in milliseconds */
int64_t loom_now_ns(void);  /* CLOCK_REALTIME in nanoseconds */
/* Parses an RFC 3339 timestamp (exactly len bytes; up to 9 fraction digits;
 * Z or a +hh:mm / -hh:mm offset) to unix nanoseconds; -1 otherwise. */
int loom_parse_rfc3339_ns(const char *s, size_t len, int64_t *ret_ns);
/* A time as a user writes one in a query: RFC 3339, or a day "2026-05-01"
 * or a month "2026-05" (their first instant, UTC). -1 otherwise. */
int loom_parse_time_param(const char *s, int64_t *ret_ns);
/* RFC 3339 UTC with milliseconds: "2026-11-28T04:25:32.123Z" (25 bytes + NUL). */
void loom_format_time_ms(int64_t unix_ms, char out[32]);

/* True when s is a DNS label: 1-63 of [a-z0-9-], starting with a letter,
 * not ending with '-'. */
bool loom_is_dns_label(const char *s);

/* The next line of the text at *cursor, copied into buf without its '\n'
 * (lines that do not fit in bufsz are skipped), *cursor moved past it.
 * False at the end of the text. */
bool loom_next_line(const char **cursor, char *buf, size_t bufsz);

/* Reads a whole file (NUL-terminated; *ret_len may be NULL). */
int loom_read_file(const char *path, char **ret, size_t *ret_len, struct loom_err *err);
/* Writes data to path atomically (temp file in the same directory, fsync, rename). */
int loom_write_file_atomic(const char *path, const void *data, size_t len, struct loom_err *err);
/* mkdir -p with mode for created directories. */
int loom_mkdir_p(const char *path, unsigned mode, struct loom_err *err);
/* rm -rf; staying on one filesystem is the caller's job (unmount first). */
int loom_rm_rf(const char *path, struct loom_err *err);

#endif
