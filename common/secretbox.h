/* Secret values at rest: AES-256-GCM under the operator's key
 * (LOOM_SECRETS_KEY, 32 random bytes as 64 hex characters). A sealed value
 * is nonce (12) || ciphertext || tag (16); the additional data binds it to
 * its project and name (loom_secretbox_aad), so a value copied to another
 * row does not open. The API seals; the scheduler opens to hand values to
 * containers. The key is process-wide: set it once at start. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "err.h"

/* Sets the key from 64 hex characters; NULL or "" disables sealing and
 * opening (both then fail with LOOM_EUNAVAIL). LOOM_EINVAL on a bad key. */
int loom_secretbox_set_key(const char *hex, struct loom_err *err);

/* Whether a key is set. */
bool loom_secretbox_enabled(void);

/* The additional data for a secret: "loom-secret/<project id>/<name>". */
void loom_secretbox_aad(const char *project_id, const char *name, char *out, size_t outsz);

/* Encrypts len bytes of plain; *ret is malloc'd, *ret_len its size. */
int loom_secretbox_seal(const char *plain, size_t len, const char *aad, unsigned char **ret,
                        size_t *ret_len, struct loom_err *err);

/* Decrypts what loom_secretbox_seal made into a NUL-terminated string;
 * fails when the key, aad or data differ. */
int loom_secretbox_open(const unsigned char *sealed, size_t len, const char *aad, char **ret,
                        struct loom_err *err);
