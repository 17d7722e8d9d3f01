/* The agent's durable usage outbox (agent.h): one file per sample, an index
 * by id for the commit notices, and a heap by due time for the sender. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "cleanup.h"
#include "util.h"

#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000
#define RESEND_MAX_FACTOR 16

struct ob_entry {
    char id[USAGE_OUTBOX_ID_MAX];
    uint8_t *data;
    size_t len;
    int64_t due_ms;
    uint64_t order; /* insertion order: equal due times go oldest first */
    int attempts;   /* acknowledged by JetStream so far */
    int failures;   /* sends that failed in a row */
    size_t heap_at;
    struct ob_entry *hnext; /* hash chain */
};

struct usage_outbox {
    pthread_mutex_t mu;
    char *dir;
    int dirfd;
    struct ob_entry **heap;
    size_t n, heap_cap;
    struct ob_entry **buckets;
    size_t nbuckets;
    uint64_t next_order;
};

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static bool earlier(const struct ob_entry *a, const struct ob_entry *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->order < b->order);
}

static void heap_swap(struct usage_outbox *ob, size_t i, size_t j)
{
    struct ob_entry *t = ob->heap[i];
    ob->heap[i] = ob->heap[j];
    ob->heap[j] = t;
    ob->heap[i]->heap_at = i;
    ob->heap[j]->heap_at = j;
}

static void heap_up(struct usage_outbox *ob, size_t i)
{
    while (i > 0 && earlier(ob->heap[i], ob->heap[(i - 1) / 2])) {
        heap_swap(ob, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(struct usage_outbox *ob, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < ob->n && earlier(ob->heap[l], ob->heap[m]))
            m = l;
        if (r < ob->n && earlier(ob->heap[r], ob->heap[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(ob, i, m);
        i = m;
    }
}

static void rehash(struct usage_outbox *ob, size_t nbuckets)
{
    struct ob_entry **b = calloc(nbuckets, sizeof(*b));
    if (!b)
        abort();
    for (size_t i = 0; i < ob->nbuckets; i++)
        for (struct ob_entry *e = ob->buckets[i], *next; e; e = next) {
            next = e->hnext;
            size_t k = hash_id(e->id) & (nbuckets - 1);
            e->hnext = b[k];
            b[k] = e;
        }
    free(ob->buckets);
    ob->buckets = b;
    ob->nbuckets = nbuckets;
}

static struct ob_entry **find_slot(struct usage_outbox *ob, const char *id)
{
    struct ob_entry **pp = &ob->buckets[hash_id(id) & (ob->nbuckets - 1)];
    while (*pp && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

/* Takes e (allocated) into the index and the heap; under ob->mu. */
static void add_entry(struct usage_outbox *ob, struct ob_entry *e)
{
    if (ob->n + 1 > ob->nbuckets * 2)
        rehash(ob, ob->nbuckets * 2);
    struct ob_entry **slot = &ob->buckets[hash_id(e->id) & (ob->nbuckets - 1)];
    e->hnext = *slot;
    *slot = e;
    if (ob->n == ob->heap_cap) {
        ob->heap_cap = ob->heap_cap ? ob->heap_cap * 2 : 64;
        ob->heap = realloc(ob->heap, ob->heap_cap * sizeof(*ob->heap));
        if (!ob->heap)
            abort();
    }
    e->order = ob->next_order++;
    e->heap_at = ob->n;
    ob->heap[ob->n++] = e;
    heap_up(ob, e->heap_at);
}

static void entry_free(struct ob_entry *e)
{
    if (!e)
        return;
    free(e->data);
    free(e);
}

/* An id becomes a file name: "<instance>:<seq>" with the instance an agent
 * id (agent_valid_id) and seq digits. */
static bool id_valid(const char *id)
{
    const char *colon = strchr(id, ':');
    if (!colon || colon == id || strlen(id) >= USAGE_OUTBOX_ID_MAX || !colon[1])
        return false;
    for (const char *p = id; p < colon; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '-' || *p == '_'))
            return false;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

void usage_outbox_free(struct usage_outbox *ob)
{
    if (!ob)
        return;
    for (size_t i = 0; i < ob->n; i++)
        entry_free(ob->heap[i]);
    free(ob->heap);
    free(ob->buckets);
    if (ob->dirfd >= 0)
        close(ob->dirfd);
    free(ob->dir);
    pthread_mutex_destroy(&ob->mu);
    free(ob);
}

int usage_outbox_open(const char *dir, struct usage_outbox **ret, struct loom_err *err)
{
    if (loom_mkdir_p(dir, 0700, err) < 0)
        return -1;
    struct usage_outbox *ob = calloc(1, sizeof(*ob));
    if (!ob)
        abort();
    pthread_mutex_init(&ob->mu, NULL);
    ob->dir = strdup(dir);
    if (!ob->dir)
        abort();
    ob->nbuckets = 256;
    ob->buckets = calloc(ob->nbuckets, sizeof(*ob->buckets));
    if (!ob->buckets)
        abort();
    ob->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ob->dirfd < 0) {
        loom_err_sys(err, errno, "could not open \"%s\"", dir);
        usage_outbox_free(ob);
        return -1;
    }
    /* in name order: the samples of an instance go out in seq order (the
     * seqs of one instance have the same number of digits for centuries) */
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort);
    if (n < 0) {
        loom_err_sys(err, errno, "could not read \"%s\"", dir);
        usage_outbox_free(ob);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        char path[4400];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (name[0] == '.') {
            /* a write that a crash interrupted: never sent, and its sample
             * is taken again from the instance's cursor */
            if (strncmp(name, ".tmp-", 5) == 0)
                unlink(path);
        } else if (id_valid(name)) {
            char *data = NULL;
            size_t len = 0;
            if (loom_read_file(path, &data, &len, NULL) == 0) {
                struct ob_entry *e = calloc(1, sizeof(*e));
                if (!e)
                    abort();
                snprintf(e->id, sizeof(e->id), "%.*s", (int)sizeof(e->id) - 1, name);
                e->data = (uint8_t *)data;
                e->len = len;
                add_entry(ob, e);
            }
        }
        free(ents[i]);
    }
    free(ents);
    *ret = ob;
    return 0;
}

static int write_all(int fd, const void *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, (const char *)data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

int usage_outbox_put(struct usage_outbox *ob, const char *id, const uint8_t *data, size_t len,
                     int64_t now_ms, struct loom_err *err)
{
    if (!id_valid(id))
        return loom_err_set(err, LOOM_EINVAL, "\"%s\" is not an outbox id", id);
    char tmp[64];
    snprintf(tmp, sizeof(tmp), ".tmp-%016" PRIx64, hash_id(id) ^ (uint64_t)now_ms);
    _cleanup_close_ int fd = openat(ob->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return loom_err_sys(err, errno, "could not create \"%s/%s\"", ob->dir, tmp);
    /* durable before it is sent: a reboot right after must not lose it */
    if (write_all(fd, data, len) < 0 || fsync(fd) < 0 ||
        renameat(ob->dirfd, tmp, ob->dirfd, id) < 0 || fsync(ob->dirfd) < 0) {
        int e = errno;
        unlinkat(ob->dirfd, tmp, 0);
        return loom_err_sys(err, e, "could not write \"%s/%s\"", ob->dir, id);
    }
    struct ob_entry *e = calloc(1, sizeof(*e));
    if (!e)
        abort();
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->data = malloc(len ? len : 1);
    if (!e->data)
        abort();
    memcpy(e->data, data, len);
    e->len = len;
    e->due_ms = now_ms;
    pthread_mutex_lock(&ob->mu);
    struct ob_entry **slot = find_slot(ob, id);
    if (*slot) {
        /* the same sample again (cannot happen: seqs grow): keep the first */
        pthread_mutex_unlock(&ob->mu);
        entry_free(e);
        return 0;
    }
    add_entry(ob, e);
    pthread_mutex_unlock(&ob->mu);
    return 0;
}

bool usage_outbox_done(struct usage_outbox *ob, const char *id)
{
    if (!id_valid(id))
        return false;
    pthread_mutex_lock(&ob->mu);
    struct ob_entry **slot = find_slot(ob, id);
    struct ob_entry *e = *slot;
    if (!e) {
        pthread_mutex_unlock(&ob->mu);
        return false;
    }
    *slot = e->hnext;
    size_t i = e->heap_at;
    ob->n--;
    if (i != ob->n) {
        ob->heap[i] = ob->heap[ob->n];
        ob->heap[i]->heap_at = i;
        heap_down(ob, i);
        heap_up(ob, i);
    }
    /* no fsync: a removal lost in a crash only resends a committed sample,
     * which metering drops */
    unlinkat(ob->dirfd, id, 0);
    pthread_mutex_unlock(&ob->mu);
    entry_free(e);
    return true;
}

bool usage_outbox_next_due(struct usage_outbox *ob, int64_t now_ms, struct usage_outbox_entry *ret)
{
    pthread_mutex_lock(&ob->mu);
    struct ob_entry *e = ob->n ? ob->heap[0] : NULL;
    bool due = e && e->due_ms <= now_ms;
    if (due) {
        snprintf(ret->id, sizeof(ret->id), "%s", e->id);
        ret->data = malloc(e->len ? e->len : 1);
        if (!ret->data)
            abort();
        memcpy(ret->data, e->data, e->len);
        ret->len = e->len;
        ret->attempts = e->attempts;
    }
    pthread_mutex_unlock(&ob->mu);
    return due;
}

void usage_outbox_entry_release(struct usage_outbox_entry *e)
{
    free(e->data);
    e->data = NULL;
}

void usage_outbox_sent(struct usage_outbox *ob, const char *id, bool ok, int64_t now_ms,
                       int64_t resend_ms)
{
    pthread_mutex_lock(&ob->mu);
    struct ob_entry *e = *find_slot(ob, id);
    if (e) {
        if (ok) {
            /* the commit notice should follow within a second; without it
             * (lost, or the stream lost the sample in a crash) send again,
             * later each time */
            int shift = e->attempts < 4 ? e->attempts : 4;
            int64_t wait = resend_ms * (1 << shift);
            if (wait > resend_ms * RESEND_MAX_FACTOR)
                wait = resend_ms * RESEND_MAX_FACTOR;
            e->attempts++;
            e->failures = 0;
            e->due_ms = now_ms + wait;
        } else {
            int shift = e->failures < 5 ? e->failures : 5;
            int64_t wait = (int64_t)RETRY_MIN_MS << shift;
            e->failures++;
            e->due_ms = now_ms + (wait < RETRY_MAX_MS ? wait : RETRY_MAX_MS);
        }
        heap_down(ob, e->heap_at);
        heap_up(ob, e->heap_at);
    }
    pthread_mutex_unlock(&ob->mu);
}

size_t usage_outbox_count(struct usage_outbox *ob)
{
    pthread_mutex_lock(&ob->mu);
    size_t n = ob->n;
    pthread_mutex_unlock(&ob->mu);
    return n;
}

int64_t usage_outbox_next_due_ms(struct usage_outbox *ob)
{
    pthread_mutex_lock(&ob->mu);
    int64_t t = ob->n ? ob->heap[0]->due_ms : INT64_MAX;
    pthread_mutex_unlock(&ob->mu);
    return t;
}

bool usage_outbox_last(struct usage_outbox *ob, const char *instance, uint64_t *ret_seq,
                       uint8_t **ret_data, size_t *ret_len)
{
    size_t ilen = strlen(instance);
    uint64_t best = 0;
    struct ob_entry *found = NULL;
    pthread_mutex_lock(&ob->mu);
    for (size_t i = 0; i < ob->n; i++) {
        struct ob_entry *e = ob->heap[i];
        if (strncmp(e->id, instance, ilen) != 0 || e->id[ilen] != ':')
            continue;
        uint64_t seq = strtoull(e->id + ilen + 1, NULL, 10);
        if (!found || seq > best) {
            best = seq;
            found = e;
        }
    }
    if (found) {
        *ret_seq = best;
        *ret_data = malloc(found->len ? found->len : 1);
        if (!*ret_data)
            abort();
        memcpy(*ret_data, found->data, found->len);
        *ret_len = found->len;
    }
    pthread_mutex_unlock(&ob->mu);
    return found != NULL;
}
