/* API keys: "loom_<key_id>_<secret>", the key id 12 lowercase hex digits,
 * the secret 43 base64url characters (32 random bytes). PostgreSQL keeps
 * only the sha256 of the secret's text (api_keys.secret_sha256); the key is
 * shown once, when it is made. */
#ifndef LOOM_APIKEY_H
#define LOOM_APIKEY_H

#include <stdint.h>

#include "err.h"

#define LOOM_APIKEY_ID_LEN 12
#define LOOM_APIKEY_SECRET_LEN 43
#define LOOM_APIKEY_LEN (5 + LOOM_APIKEY_ID_LEN + 1 + LOOM_APIKEY_SECRET_LEN)

struct loom_apikey {
    char key_id[LOOM_APIKEY_ID_LEN + 1];
    char key[LOOM_APIKEY_LEN + 1]; /* the whole key, secret included */
    char secret_sha256_hex[65];    /* what api_keys.secret_sha256 holds, in hex */
};

/* A new key from fresh random bytes. Release it (it holds the secret) with
 * loom_apikey_release, best as _cleanup_(loom_apikey_release). */
int loom_apikey_mint(struct loom_apikey *ret, struct loom_err *err);
/* The key made of these bytes: what loom_apikey_mint does once it has them.
 * The caller zeroes secret_raw. */
void loom_apikey_format(const uint8_t id_raw[6], const uint8_t secret_raw[32],
                        struct loom_apikey *ret);
/* Zeroes k (the compiler may not drop it). Accepts NULL. */
void loom_apikey_release(struct loom_apikey *k);

/* Stores a minted key in api_keys: $1 the key id, $2 secret_sha256_hex, $3
 * the project's name (NULL for an admin key), $4 the role, $5 the
 * description. No row is made when the project does not exist. */
#define LOOM_APIKEY_INSERT_SQL                                                                     \
    "INSERT INTO api_keys (key_id, secret_sha256, project_id, role, description) "                 \
    "SELECT $1, decode($2, 'hex'), p.id, $4, $5 FROM (SELECT NULL::bigint AS id) z "               \
    "LEFT JOIN projects p ON p.name = $3 WHERE $3::text IS NULL OR p.id IS NOT NULL"

/* The sha256 of a secret's text, as minting stores it and a check compares it. */
void loom_apikey_secret_sha256(const char *secret, unsigned char ret[32]);

#endif
