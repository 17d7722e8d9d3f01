#include "apikey.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/* base64url without padding (RFC 4648, section 5) */
static void b64url(const uint8_t *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tbl[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = tbl[v & 63];
    }
    out[o] = '\0';
}

void loom_apikey_secret_sha256(const char *secret, unsigned char ret[32])
{
    SHA256((const unsigned char *)secret, strlen(secret), ret);
}

void loom_apikey_format(const uint8_t id_raw[6], const uint8_t secret_raw[32],
                        struct loom_apikey *ret)
{
    char secret[LOOM_APIKEY_SECRET_LEN + 1];
    unsigned char sha[32];
    loom_hex(id_raw, 6, ret->key_id);
    b64url(secret_raw, 32, secret);
    /* the hash is of the secret as it appears in the key (its base64url text) */
    loom_apikey_secret_sha256(secret, sha);
    loom_hex(sha, sizeof(sha), ret->secret_sha256_hex);
    snprintf(ret->key, sizeof(ret->key), "loom_%s_%s", ret->key_id, secret);
    OPENSSL_cleanse(secret, sizeof(secret));
}

int loom_apikey_mint(struct loom_apikey *ret, struct loom_err *err)
{
    uint8_t id_raw[6], secret_raw[32];
    int rc = 0;
    if (loom_random_bytes(id_raw, sizeof(id_raw), err) < 0 ||
        loom_random_bytes(secret_raw, sizeof(secret_raw), err) < 0)
        rc = -1;
    else
        loom_apikey_format(id_raw, secret_raw, ret);
    OPENSSL_cleanse(secret_raw, sizeof(secret_raw));
    return rc;
}

void loom_apikey_release(struct loom_apikey *k)
{
    if (k)
        OPENSSL_cleanse(k, sizeof(*k));
}
