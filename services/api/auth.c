/* API key authentication. Keys are "loom_<key_id>_<secret>"; the database
 * holds sha256(secret). Valid keys are cached for a few seconds so that a
 * busy client does not cost a query per request; a revocation therefore
 * takes effect within AUTH_CACHE_MS. */
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "apikey.h"
#include "cleanup.h"
#include "util.h"

#define AUTH_CACHE_MS 5000
#define AUTH_CACHE_SLOTS 256

struct cached_key {
    char key_id[13];
    unsigned char sha[32];
    enum api_role role;
    int64_t project_id;
    int64_t expires_ms; /* monotonic */
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cached_key cache[AUTH_CACHE_SLOTS];

static unsigned slot_of(const char *key_id)
{
    unsigned h = 2166136261u;
    for (const char *p = key_id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % AUTH_CACHE_SLOTS;
}

void api_auth_cache_clear(void)
{
    pthread_mutex_lock(&cache_lock);
    memset(cache, 0, sizeof(cache));
    pthread_mutex_unlock(&cache_lock);
}

static bool is_b64url(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int api_key_parse(const char *key, char ret_key_id[13], const char **ret_secret,
                  struct loom_err *err)
{
    if (strncmp(key, "loom_", 5) != 0 || strlen(key) != 5 + 12 + 1 + 43 || key[17] != '_')
        return loom_err_set(err, LOOM_EUNAUTH, "malformed API key: expected loom_<id>_<secret>");
    for (int i = 5; i < 17; i++)
        if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f')))
            return loom_err_set(err, LOOM_EUNAUTH, "malformed API key: bad key id");
    for (int i = 18; key[i]; i++)
        if (!is_b64url(key[i]))
            return loom_err_set(err, LOOM_EUNAUTH, "malformed API key: bad secret");
    memcpy(ret_key_id, key + 5, 12);
    ret_key_id[12] = '\0';
    *ret_secret = key + 18;
    return 0;
}

/* bytea in PostgreSQL's hex output format: "\x<64 hex>". */
static int decode_sha(const char *s, unsigned char out[32])
{
    if (!s || strncmp(s, "\\x", 2) != 0)
        return -1;
    return loom_unhex(s + 2, out, 32);
}

static int lookup_key(struct loom_db *db, const char *key_id, struct cached_key *ret,
                      struct loom_err *err)
{
    int64_t now = loom_mono_ms();
    unsigned slot = slot_of(key_id);
    pthread_mutex_lock(&cache_lock);
    if (strcmp(cache[slot].key_id, key_id) == 0 && cache[slot].expires_ms > now) {
        *ret = cache[slot];
        pthread_mutex_unlock(&cache_lock);
        return 0;
    }
    pthread_mutex_unlock(&cache_lock);

    _cleanup_pgres_ PGresult *res =
        loom_db_query(db, err,
                      "SELECT secret_sha256, role, coalesce(project_id, 0), revoked_at IS NOT NULL "
                      "FROM api_keys WHERE key_id = $1",
                      key_id);
    if (!res)
        return -1;
    if (PQntuples(res) == 0)
        return loom_err_set(err, LOOM_EUNAUTH, "unknown API key");
    if (strcmp(PQgetvalue(res, 0, 3), "t") == 0)
        return loom_err_set(err, LOOM_EUNAUTH, "API key %s was revoked", key_id);
    struct cached_key k = {0};
    snprintf(k.key_id, sizeof(k.key_id), "%s", key_id);
    if (decode_sha(PQgetvalue(res, 0, 0), k.sha) < 0)
        return loom_err_set(err, LOOM_EINTERNAL, "stored hash of key %s is malformed", key_id);
    const char *role = PQgetvalue(res, 0, 1);
    k.role = strcmp(role, "admin") == 0   ? API_ROLE_ADMIN
             : strcmp(role, "write") == 0 ? API_ROLE_WRITE
                                          : API_ROLE_READ;
    k.project_id = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    k.expires_ms = now + AUTH_CACHE_MS;
    pthread_mutex_lock(&cache_lock);
    cache[slot] = k;
    pthread_mutex_unlock(&cache_lock);
    *ret = k;
    return 0;
}

/* Token buckets per key, per replica: rate tokens a second, twice that in
 * a burst. A colliding key takes the slot over (then starts full). */
struct bucket {
    char key_id[13];
    double tokens;
    int64_t at_ms;
};
static struct bucket buckets[AUTH_CACHE_SLOTS];

static int rate_check(struct loom_http_req *req, const char *key_id, struct loom_err *err)
{
    int64_t rate = api_cfg.rate_limit;
    if (rate <= 0)
        return 0;
    double burst = 2.0 * (double)rate;
    int64_t now = loom_mono_ms();
    unsigned slot = slot_of(key_id);
    pthread_mutex_lock(&cache_lock);
    struct bucket *b = &buckets[slot];
    if (strcmp(b->key_id, key_id) != 0) {
        snprintf(b->key_id, sizeof(b->key_id), "%s", key_id);
        b->tokens = burst;
        b->at_ms = now;
    }
    b->tokens += (double)(now - b->at_ms) * (double)rate / 1000.0;
    if (b->tokens > burst)
        b->tokens = burst;
    b->at_ms = now;
    bool ok = b->tokens >= 1.0;
    if (ok)
        b->tokens -= 1.0;
    int left = (int)b->tokens;
    int wait_s = ok ? 0 : (int)((1.0 - b->tokens) / (double)rate) + 1;
    pthread_mutex_unlock(&cache_lock);
    char policy[64], state[64];
    snprintf(policy, sizeof(policy), "\"burst\";q=%lld;w=1", (long long)burst);
    snprintf(state, sizeof(state), "\"burst\";r=%d;t=%d", left, wait_s);
    loom_http_set_header(req, "RateLimit-Policy", policy);
    loom_http_set_header(req, "RateLimit", state);
    if (!ok) {
        char retry[16];
        snprintf(retry, sizeof(retry), "%d", wait_s);
        loom_http_set_header(req, "Retry-After", retry);
        return loom_err_set(err, LOOM_ELIMIT,
                            "too many requests for API key %s (at most %lld a second): retry "
                            "after %d s",
                            key_id, (long long)rate, wait_s);
    }
    return 0;
}

static bool method_writes(const char *m)
{
    return !(strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0);
}

int api_auth(struct loom_http_req *req, struct loom_db *db, struct api_caller *ret,
             struct loom_err *err)
{
    const char *h = loom_http_header(req, "Authorization");
    if (!h || !*h)
        return loom_err_set(err, LOOM_EUNAUTH,
                            "missing Authorization header: send \"Bearer <API key>\"");
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return loom_err_set(err, LOOM_EUNAUTH, "Authorization must use the Bearer scheme");
    const char *key = h + 7;
    while (*key == ' ')
        key++;
    char key_id[13];
    const char *secret;
    if (api_key_parse(key, key_id, &secret, err) < 0)
        return -1;
    struct cached_key k;
    if (lookup_key(db, key_id, &k, err) < 0)
        return -1;
    unsigned char sha[32];
    loom_apikey_secret_sha256(secret, sha);
    if (CRYPTO_memcmp(sha, k.sha, 32) != 0)
        return loom_err_set(err, LOOM_EUNAUTH, "wrong secret for API key %s", key_id);
    if (rate_check(req, key_id, err) < 0)
        return -1;
    if (k.role == API_ROLE_READ && method_writes(req->method))
        return loom_err_set(err, LOOM_EPERM, "API key %s is read-only", key_id);
    struct api_caller c = {.role = k.role, .project_id = k.project_id};
    snprintf(c.key_id, sizeof(c.key_id), "%s", key_id);
    *ret = c;
    return 0;
}
