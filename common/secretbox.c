/* AES-256-GCM sealing of secret values under the operator's key (see
 * secretbox.h). */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "secretbox.h"
#include "util.h"

#define NONCE_LEN 12
#define TAG_LEN 16

static unsigned char master_key[32];
static bool have_key;

bool loom_secretbox_enabled(void)
{
    return have_key;
}

int loom_secretbox_set_key(const char *hex, struct loom_err *err)
{
    if (!hex || !*hex) {
        have_key = false;
        return 0;
    }
    if (loom_unhex(hex, master_key, sizeof(master_key)) < 0)
        return loom_err_set(err, LOOM_EINVAL,
                            "the secrets key must be 64 hex characters (32 random bytes)");
    have_key = true;
    return 0;
}

static void ctx_freep(EVP_CIPHER_CTX **c)
{
    EVP_CIPHER_CTX_free(*c);
}

int loom_secretbox_seal(const char *plain, size_t len, const char *aad, unsigned char **ret,
                        size_t *ret_len, struct loom_err *err)
{
    if (!have_key)
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "secrets are disabled: the operator has not set LOOM_SECRETS_KEY");
    _cleanup_free_ unsigned char *out = malloc(NONCE_LEN + len + TAG_LEN);
    __attribute__((cleanup(ctx_freep))) EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!out || !c)
        return loom_err_set(err, LOOM_EINTERNAL, "out of memory");
    if (loom_random_bytes(out, NONCE_LEN, err) < 0)
        return -1;
    int n = 0, fin = 0;
    if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, master_key, out) != 1 ||
        EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
        EVP_EncryptUpdate(c, out + NONCE_LEN, &n, (const unsigned char *)plain, (int)len) != 1 ||
        EVP_EncryptFinal_ex(c, out + NONCE_LEN + n, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, out + NONCE_LEN + n + fin) != 1)
        return loom_err_set(err, LOOM_EINTERNAL, "could not encrypt the secret");
    *ret_len = NONCE_LEN + (size_t)n + (size_t)fin + TAG_LEN;
    *ret = TAKE_PTR(out);
    return 0;
}

int loom_secretbox_open(const unsigned char *sealed, size_t len, const char *aad, char **ret,
                        struct loom_err *err)
{
    if (!have_key)
        return loom_err_set(err, LOOM_EUNAVAIL,
                            "secrets are disabled: the operator has not set LOOM_SECRETS_KEY");
    if (len < NONCE_LEN + TAG_LEN)
        return loom_err_set(err, LOOM_EINTERNAL, "stored secret is too short");
    size_t clen = len - NONCE_LEN - TAG_LEN;
    _cleanup_free_ char *out = malloc(clen + 1);
    __attribute__((cleanup(ctx_freep))) EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!out || !c)
        return loom_err_set(err, LOOM_EINTERNAL, "out of memory");
    int n = 0, fin = 0;
    unsigned char tag[TAG_LEN];
    memcpy(tag, sealed + len - TAG_LEN, TAG_LEN);
    if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, master_key, sealed) != 1 ||
        EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
        EVP_DecryptUpdate(c, (unsigned char *)out, &n, sealed + NONCE_LEN, (int)clen) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1 ||
        EVP_DecryptFinal_ex(c, (unsigned char *)out + n, &fin) != 1)
        return loom_err_set(err, LOOM_EINTERNAL,
                            "could not decrypt a stored secret (wrong key or damaged data)");
    out[n + fin] = '\0';
    *ret = TAKE_PTR(out);
    return 0;
}

void loom_secretbox_aad(const char *project_id, const char *name, char *out, size_t outsz)
{
    snprintf(out, outsz, "loom-secret/%s/%s", project_id, name);
}
