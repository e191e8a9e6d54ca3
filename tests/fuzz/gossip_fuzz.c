/* gossip_fuzz: any bytes through the gossip store the way the mesh feeds it:
 * record payloads, digests and wants from peers, local publications, time.
 *
 * Input: operations separated by NUL bytes (JSON never holds a raw NUL),
 * each one letter and its bytes:
 *   r<payload>  offered with a signature by key A made here, so that the
 *               parser and the rules behind the signature check are reached
 *               (seeds carry A's node id as origin)
 *   b<payload>  the same, signed by key B
 *   c<payload>  signed by key C, whose origin the allow predicate denies
 *   u<payload>  offered with an all-zero signature
 *   d<payload>  a peer's GOSSIP_DIGEST;  w<payload>  a peer's GOSSIP_WANT
 *   p<kind> <json body>  published by A (a body "null" withdraws)
 *   t<decimal ms>        the clock moves on; both stores expire
 * Store 1 has small caps, store 2 the defaults. Checks: return codes agree
 * with verdicts; NEW only for the key that signed, never for C or a zero
 * signature, and with the payload stored byte for byte; what publish makes
 * is accepted by the other store; a digest's want parses as a want; caps
 * hold; and at the end one anti-entropy exchange leaves store 2 with nothing
 * more to ask of store 1. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "gossip/gossip.h"
#include "log/log.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW UINT64_C(1700000000000)

static struct lm_identity keys[3]; /* A, B, C */
static bool ready;

static void
setup(void)
{
    if (ready)
        return;
    if (sodium_init() < 0)
        abort();
    lm_log_setup(LM_LOG_ERROR, LM_LOG_TEXT);
    for (int i = 0; i < 3; i++) {
        uint8_t seed[32];
        memset(seed, i + 1, sizeof(seed));
        crypto_sign_seed_keypair(keys[i].pk, keys[i].sk, seed);
        lm_hex_encode(keys[i].node_id, keys[i].pk, sizeof(keys[i].pk));
    }
    ready = true;
}

static bool
allow(void *arg, const char *origin)
{
    (void)arg;
    return strcmp(origin, keys[2].node_id) != 0;
}

static void
check_store(const struct lm_gossip *g, const struct lm_gossip_opts *o)
{
    struct lm_gossip_stats st;
    lm_gossip_stats(g, &st);
    size_t sum = 0;
    for (int k = 0; k < LM_GOSSIP_KIND_N; k++)
        sum += st.by_kind[k];
    if (sum != st.records || st.withdrawn > st.records || st.origins > st.records ||
        st.records > o->max_records || st.bytes > o->max_bytes)
        abort();
}

static void
check_record(void *arg, const struct lm_gossip_record *r)
{
    (void)arg;
    if (r->payload_len == 0 || r->payload_len > LM_GOSSIP_RECORD_MAX || strlen(r->origin) != 64 ||
        r->ttl_ms == 0 || r->expires_ms > r->received_ms + r->ttl_ms)
        abort();
}

static void
offer(struct lm_gossip *g, const struct lm_identity *signer, const uint8_t *p, size_t n,
      uint64_t now)
{
    uint8_t sig[64] = {0};
    struct lm_gossip_verdict v;

    if (signer) {
        uint8_t *m = lm_xmalloc(10 + n);
        memcpy(m, "labnet/1\0\x10", 10);
        memcpy(m + 10, p, n);
        lm_identity_sign(signer, m, 10 + n, sig);
        free(m);
    }
    int rc = lm_gossip_offer(g, p, n, sig, now, &v);
    if ((rc == 0) != (v.status <= LM_GOSSIP_OLDER) || (rc < 0 && !v.message[0]))
        abort();
    if ((v.status == LM_GOSSIP_NEW) != (v.record != NULL))
        abort();
    if (v.status != LM_GOSSIP_NEW)
        return;
    if (!signer || signer == &keys[2] || strcmp(v.record->origin, signer->node_id) != 0)
        abort();
    if (v.record->payload_len != n || memcmp(v.record->payload, p, n) != 0)
        abort();
    check_record(NULL, v.record);
    /* The same again, as another peer forwards it. */
    if (lm_gossip_offer(g, p, n, sig, now, &v) != 0 || v.status != LM_GOSSIP_DUPLICATE)
        abort();
}

/* Moves what one store sends into the other; every record must pass. */
struct pipe {
    struct lm_gossip *to;
    uint64_t now;
    bool strict; /* the receiver has room for everything */
};

static void
forward(void *arg, const struct lm_gossip_record *r)
{
    struct pipe *pp = arg;
    struct lm_gossip_verdict v;
    check_record(NULL, r);
    int rc = lm_gossip_offer(pp->to, r->payload, r->payload_len, r->sig, pp->now, &v);
    if (pp->strict && rc != 0)
        abort();
}

static void
digest_op(const struct lm_gossip *g, const uint8_t *p, size_t n, uint64_t now)
{
    struct lm_buf want;
    struct lm_gossip_sync st;
    lm_buf_init(&want, LM_GOSSIP_SYNC_MAX);
    int rc = lm_gossip_compare(g, p, n, now, check_record, NULL, &want, &st);
    if (rc < 0 && (rc != -EINVAL || !st.message[0] || st.sent || want.len))
        abort();
    if (rc == 0 && (st.sent_bytes > LM_GOSSIP_SEND_MAX || (want.len == 0) != (st.wanted == 0)))
        abort();
    /* What we ask for is a want we would read ourselves. */
    if (want.len > 0 && lm_gossip_want(g, (uint8_t *)want.data, want.len, now, NULL, NULL, &st))
        abort();
    lm_buf_release(&want);
}

static void
publish_op(struct lm_gossip *g1, struct lm_gossip *g2, const uint8_t *p, size_t n, uint64_t now)
{
    const uint8_t *sp = memchr(p, ' ', n);
    if (!sp)
        return;
    char kind[64];
    size_t kl = (size_t)(sp - p);
    if (kl >= sizeof(kind))
        return;
    memcpy(kind, p, kl);
    kind[kl] = '\0';
    json_t *body = json_loadb((const char *)sp + 1, n - kl - 1, JSON_DECODE_ANY, NULL);
    if (!body)
        return;
    struct lm_gossip_verdict v;
    bool withdrawn = json_is_null(body);
    int rc = lm_gossip_publish(g1, &keys[0], kind, withdrawn ? NULL : body, 60000, withdrawn,
                               now, &v);
    json_decref(body);
    if ((rc == 0) != (v.status == LM_GOSSIP_NEW) || (rc < 0 && !v.message[0]))
        abort();
    if (rc == 0) {
        struct lm_gossip_verdict w;
        if (!v.record->local || lm_gossip_offer(g2, v.record->payload, v.record->payload_len,
                                                v.record->sig, now, &w) != 0)
            abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lm_gossip_opts o1 = {.max_records = 8, .max_per_origin = 4, .max_bytes = 64 << 10,
                                .allow = allow};
    struct lm_gossip_opts o2 = {.max_records = LM_GOSSIP_DEFAULT_RECORDS,
                                .max_bytes = LM_GOSSIP_DEFAULT_BYTES, .allow = allow};
    struct lm_gossip *g1, *g2;
    uint64_t now = NOW;

    setup();
    if (lm_gossip_new(&g1, &o1) || lm_gossip_new(&g2, &o2))
        abort();
    for (size_t i = 0; i < size;) {
        const uint8_t *e = memchr(data + i, 0, size - i);
        size_t end = e ? (size_t)(e - data) : size;
        const uint8_t *p = data + i + 1;
        size_t n = end > i ? end - i - 1 : 0;
        char num[16];
        switch (end > i ? data[i] : 0) {
        case 'r': offer(g1, &keys[0], p, n, now); break;
        case 'b': offer(g1, &keys[1], p, n, now); break;
        case 'c': offer(g1, &keys[2], p, n, now); break;
        case 'u': offer(g1, NULL, p, n, now); break;
        case 'd': digest_op(g1, p, n, now); break;
        case 'w': {
            struct lm_gossip_sync st;
            int rc = lm_gossip_want(g1, p, n, now, check_record, NULL, &st);
            if (rc < 0 && (rc != -EINVAL || !st.message[0] || st.sent))
                abort();
            break;
        }
        case 'p': publish_op(g1, g2, p, n, now); break;
        case 't':
            if (n > 0 && n < sizeof(num)) {
                memcpy(num, p, n);
                num[n] = '\0';
                now += strtoull(num, NULL, 10) % (UINT64_C(48) * 3600 * 1000);
                lm_gossip_expire(g1, now);
                lm_gossip_expire(g2, now);
            }
            break;
        default: break;
        }
        check_store(g1, &o1);
        check_store(g2, &o2);
        i = end + 1;
    }

    /* Anti-entropy from store 1 to store 2 (room for all): afterwards
     * store 2 lacks nothing store 1 has, and store 1's digest is one that
     * store 2 reads. Then the other way, into the small store. */
    struct lm_buf digest, want;
    struct lm_gossip_sync st;
    uint8_t cursor[32] = {0};
    struct pipe to2 = {g2, now, true}, to1 = {g1, now, false};
    lm_buf_init(&digest, LM_GOSSIP_SYNC_MAX);
    lm_buf_init(&want, LM_GOSSIP_SYNC_MAX);
    if (lm_gossip_digest(g1, now, cursor, &digest) ||
        lm_gossip_compare(g2, (uint8_t *)digest.data, digest.len, now, forward, &to1, &want, &st))
        abort();
    if (want.len && lm_gossip_want(g1, (uint8_t *)want.data, want.len, now, forward, &to2, &st))
        abort();
    if (lm_gossip_digest(g1, now, cursor, &digest) ||
        lm_gossip_compare(g2, (uint8_t *)digest.data, digest.len, now, NULL, NULL, &want, &st) ||
        st.wanted != 0)
        abort();
    if (lm_gossip_digest(g2, now, cursor, &digest) ||
        lm_gossip_compare(g1, (uint8_t *)digest.data, digest.len, now, forward, &to2, &want, &st))
        abort();
    if (lm_gossip_each(g1, NULL, now, check_record, NULL) > lm_gossip_each(g2, NULL, now, NULL,
                                                                           NULL))
        abort();
    check_store(g1, &o1);
    check_store(g2, &o2);
    lm_buf_release(&digest);
    lm_buf_release(&want);
    lm_gossip_free(g1);
    lm_gossip_free(g2);
    return 0;
}
