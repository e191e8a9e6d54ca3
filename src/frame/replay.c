/* The replay cache of signed frames: keyed digests in a chained hash table,
 * with a min-heap on expiry so that expired keys leave in order, each once. */
#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "frame/frame.h"
#include "frame/frame_internal.h"

/* 128 bits: two distinct keys collide (and a fresh frame is refused as a
 * replay) with odds far below any other failure. */
#define DIGEST_BYTES 16
#define NIL UINT32_MAX

struct node {
    uint8_t digest[DIGEST_BYTES];
    uint64_t expires;
    uint32_t next; /* in its bucket's chain, or in the free list */
    uint32_t heap; /* its position in the heap */
};

struct lm_frame_replay {
    struct node *nodes; /* max of them, allocated once: the memory bound */
    uint32_t *buckets;  /* chain heads; as many as max, rounded up to a power of two */
    uint32_t *heap;     /* node indices, earliest expiry first */
    size_t mask;
    size_t count; /* held keys, all unexpired as of the last add */
    size_t max;
    uint32_t free_head;
    uint64_t clock; /* the largest now_ms seen */
    uint8_t key[crypto_generichash_KEYBYTES];
};

int
lm_frame_replay_new(struct lm_frame_replay **out, size_t max)
{
    if (max == 0)
        max = LM_FRAME_REPLAY_DEFAULT_MAX;
    if (max > LM_FRAME_REPLAY_LIMIT)
        return -EINVAL;
    if (sodium_init() < 0)
        return -EIO;
    struct lm_frame_replay *rp = lm_xcalloc(1, sizeof(*rp));
    size_t nb = 16;
    while (nb < max)
        nb *= 2;
    rp->nodes = lm_xcalloc(max, sizeof(*rp->nodes));
    rp->heap = lm_xcalloc(max, sizeof(*rp->heap));
    rp->buckets = lm_xmalloc(nb * sizeof(*rp->buckets));
    for (size_t i = 0; i < nb; i++)
        rp->buckets[i] = NIL;
    for (size_t i = 0; i < max; i++)
        rp->nodes[i].next = i + 1 < max ? (uint32_t)(i + 1) : NIL;
    rp->mask = nb - 1;
    rp->max = max;
    /* A secret key per cache: peers cannot compute where their keys land, so
     * they cannot pile them into one chain. */
    randombytes_buf(rp->key, sizeof(rp->key));
    *out = rp;
    return 0;
}

void
lm_frame_replay_free(struct lm_frame_replay *rp)
{
    if (!rp)
        return;
    free(rp->nodes);
    free(rp->heap);
    free(rp->buckets);
    sodium_memzero(rp->key, sizeof(rp->key));
    free(rp);
}

size_t
lm_frame_replay_count(const struct lm_frame_replay *rp)
{
    return rp->count;
}

uint64_t
lm_frame_replay_clock(struct lm_frame_replay *rp, uint64_t now_ms)
{
    if (now_ms > rp->clock)
        rp->clock = now_ms;
    return rp->clock;
}

static uint32_t *
bucket(struct lm_frame_replay *rp, const uint8_t *digest)
{
    uint64_t h;
    memcpy(&h, digest, sizeof(h));
    return &rp->buckets[(size_t)h & rp->mask];
}

static void
heap_set(struct lm_frame_replay *rp, size_t pos, uint32_t idx)
{
    rp->heap[pos] = idx;
    rp->nodes[idx].heap = (uint32_t)pos;
}

static uint64_t
heap_key(const struct lm_frame_replay *rp, size_t pos)
{
    return rp->nodes[rp->heap[pos]].expires;
}

static void
sift_up(struct lm_frame_replay *rp, size_t pos)
{
    uint32_t idx = rp->heap[pos];
    while (pos > 0) {
        size_t parent = (pos - 1) / 2;
        if (heap_key(rp, parent) <= rp->nodes[idx].expires)
            break;
        heap_set(rp, pos, rp->heap[parent]);
        pos = parent;
    }
    heap_set(rp, pos, idx);
}

static void
sift_down(struct lm_frame_replay *rp, size_t pos)
{
    uint32_t idx = rp->heap[pos];
    for (;;) {
        size_t c = 2 * pos + 1;
        if (c >= rp->count)
            break;
        if (c + 1 < rp->count && heap_key(rp, c + 1) < heap_key(rp, c))
            c++;
        if (rp->nodes[idx].expires <= heap_key(rp, c))
            break;
        heap_set(rp, pos, rp->heap[c]);
        pos = c;
    }
    heap_set(rp, pos, idx);
}

/* Removes the earliest-expiring key (the heap's top). */
static void
drop_first(struct lm_frame_replay *rp)
{
    uint32_t idx = rp->heap[0];
    struct node *n = &rp->nodes[idx];
    uint32_t *link = bucket(rp, n->digest);
    while (*link != idx)
        link = &rp->nodes[*link].next;
    *link = n->next;
    n->next = rp->free_head;
    rp->free_head = idx;
    rp->count--;
    if (rp->count > 0) {
        heap_set(rp, 0, rp->heap[rp->count]);
        sift_down(rp, 0);
    }
}

int
lm_frame_replay_add(struct lm_frame_replay *rp, const void *key, size_t len,
                    uint64_t expires_ms, uint64_t now_ms)
{
    uint8_t digest[DIGEST_BYTES];
    uint64_t now = lm_frame_replay_clock(rp, now_ms);

    /* Each key leaves once, so this costs O(log n) per key over its life. */
    while (rp->count > 0 && heap_key(rp, 0) < now)
        drop_first(rp);

    crypto_generichash(digest, sizeof(digest), key, len, rp->key, sizeof(rp->key));
    uint32_t *head = bucket(rp, digest);
    for (uint32_t i = *head; i != NIL; i = rp->nodes[i].next) {
        if (memcmp(rp->nodes[i].digest, digest, DIGEST_BYTES) == 0)
            return -EALREADY;
    }
    /* Full of keys still within their window: refuse the new one rather than
     * forget an old one, which would let its replay through. */
    if (rp->count >= rp->max)
        return -ENOSPC;

    uint32_t idx = rp->free_head;
    struct node *n = &rp->nodes[idx];
    rp->free_head = n->next;
    memcpy(n->digest, digest, DIGEST_BYTES);
    n->expires = expires_ms;
    n->next = *head;
    *head = idx;
    heap_set(rp, rp->count, idx);
    rp->count++;
    sift_up(rp, rp->count - 1);
    return 0;
}
