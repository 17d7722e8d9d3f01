/* API key minting (common/apikey.c): the key's text from known bytes, fresh
 * keys that the API's parser accepts, the stored hash, and the zeroing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "apikey.h"
#include "services/api/api.h"
#include "util.h"

static void test_format_known_bytes(void **state)
{
    (void)state;
    const uint8_t id[6] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab};
    uint8_t secret[32];
    for (int i = 0; i < 32; i++)
        secret[i] = (uint8_t)i;
    struct loom_apikey k;
    loom_apikey_format(id, secret, &k);
    assert_string_equal(k.key_id, "0123456789ab");
    /* base64url of the bytes 0..31, no padding; sha256 of that text */
    assert_string_equal(k.key, "loom_0123456789ab_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
    assert_string_equal(k.secret_sha256_hex,
                        "ea866a757e4c38babfa8127cbe9a409d3e1f93a00ff1488ff735fcf917afffd0");

    /* the two characters base64url has instead of '+' and '/' */
    uint8_t high[32];
    memset(high, 0xff, sizeof(high));
    high[0] = 0xfb;
    high[2] = 0xbf;
    loom_apikey_format(id, high, &k);
    assert_string_equal(k.key + 18, "-_-_______________________________________8");
}

static void test_mint(void **state)
{
    (void)state;
    struct loom_apikey a, b;
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_apikey_mint(&a, &err), 0);
    assert_int_equal(loom_apikey_mint(&b, &err), 0);
    assert_string_not_equal(a.key_id, b.key_id);
    assert_string_not_equal(a.key, b.key);
    assert_int_equal(strlen(a.key), LOOM_APIKEY_LEN);

    /* what the API's authentication takes apart */
    char id[13];
    const char *secret = NULL;
    assert_int_equal(api_key_parse(a.key, id, &secret, &err), 0);
    assert_string_equal(id, a.key_id);
    assert_int_equal(strlen(secret), LOOM_APIKEY_SECRET_LEN);

    /* the stored hash is the one a check computes from the presented secret */
    unsigned char sha[32];
    char hex[65];
    loom_apikey_secret_sha256(secret, sha);
    loom_hex(sha, sizeof(sha), hex);
    assert_string_equal(hex, a.secret_sha256_hex);
    loom_sha256_hex(secret, strlen(secret), hex);
    assert_string_equal(hex, a.secret_sha256_hex);

    loom_apikey_release(&a);
    loom_apikey_release(&b);
    loom_apikey_release(NULL);
}

static void test_release_zeroes(void **state)
{
    (void)state;
    struct loom_apikey k, zero;
    memset(&zero, 0, sizeof(zero));
    struct loom_err err = LOOM_ERR_INIT;
    assert_int_equal(loom_apikey_mint(&k, &err), 0);
    assert_memory_not_equal(&k, &zero, sizeof(k));
    loom_apikey_release(&k);
    assert_memory_equal(&k, &zero, sizeof(k));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_known_bytes),
        cmocka_unit_test(test_mint),
        cmocka_unit_test(test_release_zeroes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
