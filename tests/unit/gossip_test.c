/* Unit tests for src/gossip: records between stores, the seq rules,
 * signatures, time, tombstones, anti-entropy, trust, caps and bad input.
 * Keys come from fixed seeds, so every run signs the same bytes. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "gossip/gossip.h"
#include "log/log.h"

#define NOW UINT64_C(1700000000000)
#define MIN UINT64_C(60000)

static void
key_from(struct lm_identity *id, uint8_t seed_byte)
{
    uint8_t seed[32];
    memset(id, 0, sizeof(*id));
    memset(seed, seed_byte, sizeof(seed));
    crypto_sign_seed_keypair(id->pk, id->sk, seed);
    lm_hex_encode(id->node_id, id->pk, sizeof(id->pk));
    memcpy(id->short_id, id->node_id, LM_SHORT_ID_LEN);
}

static void
sign(const struct lm_identity *id, const char *payload, size_t n, uint8_t sig[64])
{
    uint8_t *m = malloc(10 + n);
    memcpy(m, "labnet/1\0\x10", 10);
    memcpy(m + 10, payload, n);
    lm_identity_sign(id, m, 10 + n, sig);
    free(m);
}

/* A record payload; body is JSON text, NULL leaves "body" out. */
static char *
record(const char *origin, const char *kind, uint64_t seq, uint64_t ts, uint64_t ttl,
       bool withdrawn, const char *body)
{
    return lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"%s\",\"seq\":%llu,\"ts\":%llu,"
                        "\"ttl_ms\":%llu%s%s%s}",
                        origin, kind, (unsigned long long)seq, (unsigned long long)ts,
                        (unsigned long long)ttl, withdrawn ? ",\"withdrawn\":true" : "",
                        body ? ",\"body\":" : "", body ? body : "");
}

/* Signs payload with id and offers it to g. */
static int
offer_as(struct lm_gossip *g, const struct lm_identity *id, const char *payload, uint64_t now,
         struct lm_gossip_verdict *v)
{
    uint8_t sig[64];
    sign(id, payload, strlen(payload), sig);
    return lm_gossip_offer(g, (const uint8_t *)payload, strlen(payload), sig, now, v);
}

/* offer_as for a record built and freed here; returns the status. */
static enum lm_gossip_status
offer_rec(struct lm_gossip *g, const struct lm_identity *id, const char *kind, uint64_t seq,
          uint64_t ts, uint64_t ttl, bool withdrawn, const char *body, uint64_t now)
{
    struct lm_gossip_verdict v;
    char *p = record(id->node_id, kind, seq, ts, ttl, withdrawn, body);
    int rc = offer_as(g, id, p, now, &v);
    free(p);
    assert_int_equal(rc < 0, v.status > LM_GOSSIP_OLDER);
    if (rc < 0)
        assert_true(v.message[0] != '\0');
    return v.status;
}

static struct lm_gossip *
store(const struct lm_gossip_opts *o)
{
    struct lm_gossip *g;
    assert_int_equal(lm_gossip_new(&g, o), 0);
    return g;
}

/* A copy of a record as it would travel: payload bytes and signature. */
struct wire {
    uint8_t *payload;
    size_t n;
    uint8_t sig[64];
};

struct outbox {
    struct wire w[256];
    size_t n;
};

static void
collect(void *arg, const struct lm_gossip_record *r)
{
    struct outbox *ob = arg;
    assert_true(ob->n < LM_ARRAY_LEN(ob->w));
    struct wire *w = &ob->w[ob->n++];
    w->payload = malloc(r->payload_len);
    memcpy(w->payload, r->payload, r->payload_len);
    w->n = r->payload_len;
    memcpy(w->sig, r->sig, 64);
}

static void
outbox_clear(struct outbox *ob)
{
    for (size_t i = 0; i < ob->n; i++)
        free(ob->w[i].payload);
    ob->n = 0;
}

/* Offers everything in ob to g; returns how many were NEW. */
static size_t
deliver(struct lm_gossip *g, struct outbox *ob, uint64_t now)
{
    size_t fresh = 0;
    for (size_t i = 0; i < ob->n; i++) {
        struct lm_gossip_verdict v;
        int rc = lm_gossip_offer(g, ob->w[i].payload, ob->w[i].n, ob->w[i].sig, now, &v);
        assert_int_equal(rc, 0);
        fresh += v.status == LM_GOSSIP_NEW;
    }
    outbox_clear(ob);
    return fresh;
}

static void
count_fn(void *arg, const struct lm_gossip_record *r)
{
    (void)r;
    (*(size_t *)arg)++;
}

static const char *const CAPS =
    "{\"models\":[{\"id\":\"llama3\",\"aliases\":[\"l3\"],\"loaded\":true,\"slots_free\":2,"
    "\"slots_total\":4,\"queue\":0,\"params\":\"8B\",\"digest\":null}],"
    "\"prices\":[{\"model\":\"llama3\",\"per_1k_in\":\"0.1\",\"per_1k_out\":1,\"currency\":\"usd\"}],"
    "\"payouts\":[{\"currency\":\"usd\",\"address\":\"acct\"}],\"feps\":[\"f\"]}";
static const char *const PEER = "{\"name\":\"n\",\"roles\":[\"gateway\"],\"addrs\":[\"h:1\"],"
                                "\"relays\":[],\"version\":\"0.1.0\"}";
static const char *const MARKET = "{\"window_s\":60,\"demand\":[{\"model\":\"m\",\"requests\":3,"
                                  "\"tokens_in\":1,\"tokens_out\":2,\"unserved\":0,"
                                  "\"p50_ttft_ms\":12.5}]}";

static void
test_publish_then_offer(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *ga = store(NULL), *gb = store(NULL);
    struct lm_gossip_verdict v, w;

    json_t *body = json_loads(CAPS, 0, NULL);
    assert_int_equal(lm_gossip_publish(ga, &a, "capabilities", body, 60000, false, NOW, &v), 0);
    json_decref(body);
    assert_int_equal(v.status, LM_GOSSIP_NEW);
    const struct lm_gossip_record *r = v.record;
    assert_int_equal(r->seq, NOW);
    assert_int_equal(r->ts_ms, NOW);
    assert_true(r->local);
    assert_int_equal(r->kind_id, LM_GOSSIP_KIND_CAPABILITIES);
    assert_string_equal(r->origin, a.node_id);

    assert_int_equal(lm_gossip_offer(gb, r->payload, r->payload_len, r->sig, NOW + 10, &w), 0);
    assert_int_equal(w.status, LM_GOSSIP_NEW);
    assert_non_null(w.record);
    assert_false(w.record->local);
    assert_int_equal(w.record->payload_len, r->payload_len);
    assert_memory_equal(w.record->payload, r->payload, r->payload_len);
    assert_memory_equal(w.record->sig, r->sig, 64);
    const json_t *models = json_object_get(w.record->body, "models");
    assert_string_equal(json_string_value(json_object_get(json_array_get(models, 0), "id")),
                        "llama3");

    const struct lm_gossip_record *got = lm_gossip_get(gb, a.node_id, "capabilities", NOW + 10);
    assert_ptr_equal(got, w.record);
    assert_null(lm_gossip_get(gb, a.node_id, "peer", NOW + 10));
    assert_null(lm_gossip_get(gb, "nothex", "capabilities", NOW + 10));

    /* The same record again (from another peer): not forwarded again. */
    assert_int_equal(lm_gossip_offer(gb, r->payload, r->payload_len, r->sig, NOW + 20, &w), 0);
    assert_int_equal(w.status, LM_GOSSIP_DUPLICATE);
    assert_null(w.record);

    struct lm_gossip_stats st;
    lm_gossip_stats(gb, &st);
    assert_int_equal(st.records, 1);
    assert_int_equal(st.origins, 1);
    assert_int_equal(st.by_kind[LM_GOSSIP_KIND_CAPABILITIES], 1);
    assert_int_equal(st.offers[LM_GOSSIP_NEW], 1);
    assert_int_equal(st.offers[LM_GOSSIP_DUPLICATE], 1);
    assert_int_equal(st.payload_bytes, r->payload_len);
    assert_true(st.bytes > st.payload_bytes);

    size_t n = 0;
    assert_int_equal(lm_gossip_each(gb, "capabilities", NOW, count_fn, &n), 1);
    assert_int_equal(n, 1);
    assert_int_equal(lm_gossip_each(gb, "market", NOW, NULL, NULL), 0);
    assert_int_equal(lm_gossip_each(gb, NULL, NOW, NULL, NULL), 1);

    lm_gossip_free(ga);
    lm_gossip_free(gb);
    lm_gossip_free(NULL);
}

static void
test_higher_seq_wins(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *g = store(NULL);

    assert_int_equal(offer_rec(g, &a, "peer", 7, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &a, "peer", 5, NOW, MIN, false, PEER, NOW), LM_GOSSIP_OLDER);
    /* Equal seq with other content: the first stays. */
    assert_int_equal(offer_rec(g, &a, "peer", 7, NOW, MIN, false, "{\"name\":\"other\"}", NOW),
                     LM_GOSSIP_DUPLICATE);
    const struct lm_gossip_record *r = lm_gossip_get(g, a.node_id, "peer", NOW);
    assert_string_equal(json_string_value(json_object_get(r->body, "name")), "n");
    assert_int_equal(offer_rec(g, &a, "peer", 8, NOW, MIN, false, "{\"name\":\"new\"}", NOW),
                     LM_GOSSIP_NEW);
    r = lm_gossip_get(g, a.node_id, "peer", NOW);
    assert_int_equal(r->seq, 8);
    assert_string_equal(json_string_value(json_object_get(r->body, "name")), "new");
    /* Kinds are independent. */
    assert_int_equal(offer_rec(g, &a, "market", 1, NOW, MIN, false, MARKET, NOW), LM_GOSSIP_NEW);

    struct lm_gossip_stats st;
    lm_gossip_stats(g, &st);
    assert_int_equal(st.records, 2);
    assert_int_equal(st.offers[LM_GOSSIP_OLDER], 1);
    assert_int_equal(st.offers[LM_GOSSIP_DUPLICATE], 1);
    lm_gossip_free(g);
}

static void
test_bad_signature(void **state)
{
    (void)state;
    struct lm_identity a, b;
    key_from(&a, 1);
    key_from(&b, 2);
    struct lm_gossip *g = store(NULL);
    struct lm_gossip_verdict v;
    uint8_t sig[64];

    char *p = record(a.node_id, "peer", 1, NOW, MIN, false, PEER);
    size_t n = strlen(p);
    sign(&a, p, n, sig);
    /* One byte changed after signing ("n" -> "o": still a good record). */
    char *c = strstr(p, "\"name\":\"n\"") + 8;
    *c ^= 1;
    assert_int_equal(lm_gossip_offer(g, (uint8_t *)p, n, sig, NOW, &v), -EBADMSG);
    assert_int_equal(v.status, LM_GOSSIP_BAD_SIGNATURE);
    assert_string_equal(lm_gossip_status_code(v.status), "bad_signature");
    *c ^= 1;
    assert_int_equal(lm_gossip_offer(g, (uint8_t *)p, n, sig, NOW, &v), 0);
    /* The stored bytes with another signature are still checked. */
    uint8_t zero[64] = {0};
    assert_int_equal(lm_gossip_offer(g, (uint8_t *)p, n, zero, NOW, &v), -EBADMSG);
    free(p);

    /* Signed by a, claiming to be b. */
    p = record(b.node_id, "peer", 1, NOW, MIN, false, PEER);
    assert_int_equal(offer_as(g, &a, p, NOW, &v), -EBADMSG);
    assert_int_equal(v.status, LM_GOSSIP_BAD_SIGNATURE);
    free(p);

    /* A signature over the payload without the context is not one. */
    p = record(b.node_id, "peer", 1, NOW, MIN, false, PEER);
    lm_identity_sign(&b, p, strlen(p), sig);
    assert_int_equal(lm_gossip_offer(g, (uint8_t *)p, strlen(p), sig, NOW, &v), -EBADMSG);
    free(p);

    assert_null(lm_gossip_get(g, b.node_id, "peer", NOW));
    struct lm_gossip_stats st;
    lm_gossip_stats(g, &st);
    assert_int_equal(st.records, 1);
    assert_int_equal(st.offers[LM_GOSSIP_BAD_SIGNATURE], 4);
    lm_gossip_free(g);
}

static void
test_time_checks(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *g = store(NULL);
    struct lm_gossip_verdict v;

    assert_int_equal(offer_rec(g, &a, "peer", 1, NOW + 5 * MIN + 1, MIN, false, PEER, NOW),
                     LM_GOSSIP_STALE);
    char *p = record(a.node_id, "peer", 1, NOW + 5 * MIN + 1, MIN, false, PEER);
    assert_int_equal(offer_as(g, &a, p, NOW, &v), -ESTALE);
    free(p);
    /* At the edge of the allowed skew, a signer ahead of us: it lives
     * ttl_ms from our receipt, not from its own clock. */
    assert_int_equal(offer_rec(g, &a, "peer", 1, NOW + 5 * MIN, MIN, false, PEER, NOW),
                     LM_GOSSIP_NEW);
    assert_int_equal(lm_gossip_get(g, a.node_id, "peer", NOW)->expires_ms, NOW + MIN);

    /* An old record that is still within its TTL is accepted (anti-entropy
     * delivers them), and keeps the signer's end of life. */
    assert_int_equal(offer_rec(g, &a, "market", 1, NOW - 30 * MIN, 60 * MIN, false, MARKET, NOW),
                     LM_GOSSIP_NEW);
    assert_int_equal(lm_gossip_get(g, a.node_id, "market", NOW)->expires_ms, NOW + 30 * MIN);

    /* Expired on arrival. */
    assert_int_equal(offer_rec(g, &a, "vouch", 1, NOW - MIN, MIN, false, "{\"peers\":[]}", NOW),
                     LM_GOSSIP_EXPIRED);
    p = record(a.node_id, "vouch", 1, NOW - 2 * MIN, MIN, false, "{\"peers\":[]}");
    assert_int_equal(offer_as(g, &a, p, NOW, &v), -ETIME);
    assert_non_null(strstr(v.message, "expired"));
    free(p);
    lm_gossip_free(g);
}

static void
test_expiry(void **state)
{
    (void)state;
    struct lm_identity a, b;
    key_from(&a, 1);
    key_from(&b, 2);
    struct lm_gossip *g = store(NULL);

    assert_int_equal(offer_rec(g, &a, "peer", 5, NOW, 1000, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &b, "peer", 1, NOW, 5000, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_non_null(lm_gossip_get(g, a.node_id, "peer", NOW + 999));
    assert_null(lm_gossip_get(g, a.node_id, "peer", NOW + 1000));
    assert_int_equal(lm_gossip_each(g, "peer", NOW + 1000, NULL, NULL), 1);

    /* Expired but not swept yet: a lower seq that is still alive wins, as
     * the highest unexpired record. */
    assert_int_equal(offer_rec(g, &a, "peer", 4, NOW + 500, 1000, false, PEER, NOW + 1200),
                     LM_GOSSIP_NEW);
    assert_int_equal(lm_gossip_get(g, a.node_id, "peer", NOW + 1200)->seq, 4);

    assert_int_equal(lm_gossip_expire(g, NOW + 1499), 0);
    assert_int_equal(lm_gossip_expire(g, NOW + 1500), 1);
    struct lm_gossip_stats st;
    lm_gossip_stats(g, &st);
    assert_int_equal(st.records, 1);
    assert_int_equal(st.origins, 1);
    assert_int_equal(lm_gossip_expire(g, NOW + 5000), 1);
    lm_gossip_stats(g, &st);
    assert_int_equal(st.records, 0);
    assert_int_equal(st.origins, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.payload_bytes, 0);
    lm_gossip_free(g);
}

static void
test_tombstone(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *ga = store(NULL), *gb = store(NULL);
    struct lm_gossip_verdict v;

    json_t *body = json_loads(PEER, 0, NULL);
    assert_int_equal(lm_gossip_publish(ga, &a, "peer", body, 10 * MIN, false, NOW, &v), 0);
    json_decref(body);
    char *live = lm_xstrndup((const char *)v.record->payload, v.record->payload_len);
    uint8_t live_sig[64];
    memcpy(live_sig, v.record->sig, 64);
    assert_int_equal(lm_gossip_offer(gb, (uint8_t *)live, strlen(live), live_sig, NOW, &v), 0);

    /* Withdrawn with a short TTL: raised to outlive the record, by the
     * clock skew peers may have. */
    assert_int_equal(lm_gossip_publish(ga, &a, "peer", NULL, 1000, true, NOW + MIN, &v), 0);
    const struct lm_gossip_record *t = v.record;
    assert_true(t->withdrawn);
    assert_int_equal(t->seq, NOW + MIN);
    assert_int_equal(t->ttl_ms, 9 * MIN + LM_GOSSIP_SKEW_MS);
    assert_int_equal(t->expires_ms, NOW + 15 * MIN);
    struct lm_gossip_verdict w;
    assert_int_equal(lm_gossip_offer(gb, t->payload, t->payload_len, t->sig, NOW + MIN, &w), 0);
    assert_int_equal(w.status, LM_GOSSIP_NEW);

    const struct lm_gossip_record *r = lm_gossip_get(gb, a.node_id, "peer", NOW + MIN);
    assert_non_null(r);
    assert_true(r->withdrawn);
    assert_int_equal(lm_gossip_each(gb, "peer", NOW + MIN, NULL, NULL), 0);
    struct lm_gossip_stats st;
    lm_gossip_stats(gb, &st);
    assert_int_equal(st.withdrawn, 1);
    assert_int_equal(st.records, 1);

    /* The withdrawn record, replayed, stays withdrawn. */
    assert_int_equal(lm_gossip_offer(gb, (uint8_t *)live, strlen(live), live_sig, NOW + 2 * MIN,
                                     &w),
                     0);
    assert_int_equal(w.status, LM_GOSSIP_OLDER);
    /* Nothing to renew: a tombstone is not refreshed. */
    assert_int_equal(lm_gossip_due(ga), 0);
    assert_int_equal(lm_gossip_refresh(ga, &a, NOW + 9 * MIN, NULL, NULL), 0);

    /* A tombstone ends with its TTL, and then the slot is free. */
    assert_int_equal(lm_gossip_expire(gb, NOW + 15 * MIN - 1), 0);
    assert_int_equal(lm_gossip_expire(gb, NOW + 15 * MIN), 1);
    assert_null(lm_gossip_get(gb, a.node_id, "peer", NOW + 15 * MIN));
    /* A long TTL is not shortened. */
    assert_int_equal(lm_gossip_publish(ga, &a, "peer", NULL, 60 * MIN, true, NOW + 2 * MIN, &v),
                     0);
    assert_int_equal(v.record->ttl_ms, 60 * MIN);

    /* Announcing again after a withdrawal: the higher seq wins again. */
    assert_int_equal(offer_rec(gb, &a, "market", 10, NOW, MIN, true, NULL, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(gb, &a, "market", 9, NOW, MIN, false, MARKET, NOW),
                     LM_GOSSIP_OLDER);
    assert_int_equal(offer_rec(gb, &a, "market", 11, NOW, MIN, false, MARKET, NOW),
                     LM_GOSSIP_NEW);
    assert_false(lm_gossip_get(gb, a.node_id, "market", NOW)->withdrawn);
    lm_gossip_stats(gb, &st);
    assert_int_equal(st.withdrawn, 0);

    free(live);
    lm_gossip_free(ga);
    lm_gossip_free(gb);
}

/* One full exchange, as the mesh runs it: `from` sends its digest to `to`,
 * `to` answers with records and a want, `from` answers the want. */
static void
exchange(struct lm_gossip *from, struct lm_gossip *to, uint64_t now, uint8_t cursor[32])
{
    struct lm_buf digest, want;
    struct lm_gossip_sync st;
    struct outbox *ob = calloc(1, sizeof(*ob));

    lm_buf_init(&digest, LM_GOSSIP_SYNC_MAX);
    lm_buf_init(&want, LM_GOSSIP_SYNC_MAX);
    assert_int_equal(lm_gossip_digest(from, now, cursor, &digest), 0);
    assert_int_equal(lm_gossip_compare(to, (uint8_t *)digest.data, digest.len, now, collect, ob,
                                       &want, &st),
                     0);
    assert_int_equal(st.sent, ob->n);
    assert_false(st.truncated);
    deliver(from, ob, now);
    if (want.len > 0) {
        assert_int_equal(lm_gossip_want(from, (uint8_t *)want.data, want.len, now, collect, ob,
                                        &st),
                         0);
        assert_int_equal(st.sent, ob->n);
        deliver(to, ob, now);
    } else {
        assert_int_equal(st.wanted, 0);
    }
    lm_buf_release(&digest);
    lm_buf_release(&want);
    free(ob);
}

/* Whether a and b hold the same records: each one's digest finds nothing
 * to send or want in the other. */
static void
assert_same(struct lm_gossip *a, struct lm_gossip *b, uint64_t now)
{
    struct lm_gossip *pair[2][2] = {{a, b}, {b, a}};
    for (int i = 0; i < 2; i++) {
        struct lm_buf digest, want;
        struct lm_gossip_sync st;
        uint8_t cursor[32] = {0};
        lm_buf_init(&digest, 0);
        lm_buf_init(&want, 0);
        assert_int_equal(lm_gossip_digest(pair[i][0], now, cursor, &digest), 0);
        assert_int_equal(lm_gossip_compare(pair[i][1], (uint8_t *)digest.data, digest.len, now,
                                           NULL, NULL, &want, &st),
                         0);
        assert_int_equal(st.sent, 0);
        assert_int_equal(st.wanted, 0);
        assert_int_equal(want.len, 0);
        lm_buf_release(&digest);
        lm_buf_release(&want);
    }
    struct lm_gossip_stats sa, sb;
    lm_gossip_stats(a, &sa);
    lm_gossip_stats(b, &sb);
    assert_int_equal(sa.records, sb.records);
    assert_int_equal(sa.payload_bytes, sb.payload_bytes);
}

static void
test_anti_entropy(void **state)
{
    (void)state;
    struct lm_identity x, y, z;
    key_from(&x, 1);
    key_from(&y, 2);
    key_from(&z, 3);
    struct lm_gossip *ga = store(NULL), *gb = store(NULL);

    /* Both: x/peer. Only a: x/capabilities, an older y/peer, a tombstone
     * z/vouch. Only b: the newer y/peer, z/market. */
    assert_int_equal(offer_rec(ga, &x, "peer", 1, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(gb, &x, "peer", 1, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(ga, &x, "capabilities", 3, NOW, MIN, false, CAPS, NOW),
                     LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(ga, &y, "peer", 5, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(gb, &y, "peer", 6, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(ga, &z, "vouch", 2, NOW, MIN, true, NULL, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(gb, &z, "market", 4, NOW, MIN, false, MARKET, NOW),
                     LM_GOSSIP_NEW);

    /* a's digest to b: b sends y/peer 6 and z/market, and wants
     * x/capabilities and z/vouch. */
    struct lm_buf digest, want;
    struct lm_gossip_sync st;
    struct outbox *ob = calloc(1, sizeof(*ob));
    uint8_t cursor[32] = {0};
    lm_buf_init(&digest, 0);
    lm_buf_init(&want, 0);
    assert_int_equal(lm_gossip_digest(ga, NOW, cursor, &digest), 0);
    assert_null(strstr(digest.data, "range"));
    assert_int_equal(lm_gossip_compare(gb, (uint8_t *)digest.data, digest.len, NOW, collect, ob,
                                       &want, &st),
                     0);
    assert_int_equal(st.sent, 2);
    assert_int_equal(st.wanted, 2);
    assert_non_null(strstr(want.data, "\"capabilities\"]"));
    assert_non_null(strstr(want.data, "\"vouch\"]"));
    assert_int_equal(deliver(ga, ob, NOW), 2);
    assert_int_equal(lm_gossip_want(ga, (uint8_t *)want.data, want.len, NOW, collect, ob, &st),
                     0);
    assert_int_equal(st.sent, 2);
    assert_int_equal(deliver(gb, ob, NOW), 2);
    assert_same(ga, gb, NOW);
    assert_int_equal(lm_gossip_get(ga, y.node_id, "peer", NOW)->seq, 6);
    assert_true(lm_gossip_get(gb, z.node_id, "vouch", NOW)->withdrawn);

    /* The same bytes everywhere: what b holds of x is what a held. */
    const struct lm_gossip_record *ra = lm_gossip_get(ga, x.node_id, "capabilities", NOW);
    const struct lm_gossip_record *rb = lm_gossip_get(gb, x.node_id, "capabilities", NOW);
    assert_int_equal(ra->payload_len, rb->payload_len);
    assert_memory_equal(ra->payload, rb->payload, ra->payload_len);

    /* A want asking twice, and for what we do not hold, sends once. */
    const char *w2 = lm_xasprintf("{\"entries\":[[\"%s\",\"peer\"],[\"%s\",\"peer\"],"
                                  "[\"%s\",\"nothing\"]],\"more\":1}",
                                  x.node_id, x.node_id, x.node_id);
    assert_int_equal(lm_gossip_want(ga, (const uint8_t *)w2, strlen(w2), NOW, NULL, NULL, &st),
                     0);
    assert_int_equal(st.sent, 1);
    /* Nor what expired since. */
    assert_int_equal(lm_gossip_want(ga, (const uint8_t *)w2, strlen(w2), NOW + MIN, NULL, NULL,
                                    &st),
                     0);
    assert_int_equal(st.sent, 0);
    free((void *)w2);

    /* A digest naming a pair twice, in either order, counts its highest
     * seq: b holds y/peer 6, so seq 9 is wanted and y/peer is not sent
     * (the 4 records sent are the other origins', which it lacks). */
    for (int i = 0; i < 2; i++) {
        char *d2 = lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",%d],[\"%s\",\"peer\",%d]]}",
                                y.node_id, i ? 9 : 1, y.node_id, i ? 1 : 9);
        assert_int_equal(lm_gossip_compare(gb, (uint8_t *)d2, strlen(d2), NOW, NULL, NULL, &want,
                                           &st),
                         0);
        assert_int_equal(st.wanted, 1);
        assert_int_equal(st.sent, 4);
        free(d2);
    }

    /* A fresh node catches up from an empty digest. */
    struct lm_gossip *gc = store(NULL);
    memset(cursor, 0, sizeof(cursor));
    exchange(gc, ga, NOW, cursor);
    assert_same(ga, gc, NOW);
    /* And the other way round: its digest makes the holder ask for all. */
    struct lm_gossip *gd = store(NULL);
    memset(cursor, 0, sizeof(cursor));
    exchange(ga, gd, NOW, cursor);
    assert_same(ga, gd, NOW);

    /* Expired records are neither listed nor sent. */
    lm_buf_reset(&digest);
    assert_int_equal(lm_gossip_digest(ga, NOW + MIN, cursor, &digest), 0);
    assert_string_equal(digest.data, "{\"entries\":[]}");

    lm_buf_release(&digest);
    lm_buf_release(&want);
    free(ob);
    lm_gossip_free(ga);
    lm_gossip_free(gb);
    lm_gossip_free(gc);
    lm_gossip_free(gd);
}

static void
test_digest_ranges(void **state)
{
    (void)state;
    struct lm_gossip_opts o = {.digest_entries = 16};
    struct lm_gossip *ga = store(&o), *gb = store(&o);
    struct lm_identity ids[40];

    for (int i = 0; i < 40; i++) {
        key_from(&ids[i], (uint8_t)(10 + i));
        assert_int_equal(offer_rec(ga, &ids[i], "peer", 1, NOW, MIN, false, PEER, NOW),
                         LM_GOSSIP_NEW);
    }
    /* b learns everything from a's digests, 16 entries at a time, each
     * naming its range, until the cursor wraps. */
    uint8_t cursor[32] = {0}, zero[32] = {0};
    int chunks = 0;
    do {
        struct lm_buf d;
        lm_buf_init(&d, 0);
        uint8_t before[32];
        memcpy(before, cursor, 32);
        assert_int_equal(lm_gossip_digest(ga, NOW, cursor, &d), 0);
        assert_non_null(strstr(d.data, "\"range\":["));
        json_t *j = json_loads(d.data, 0, NULL);
        assert_true(json_array_size(json_object_get(j, "entries")) <= 16);
        json_decref(j);
        lm_buf_release(&d);
        memcpy(cursor, before, 32);
        exchange(ga, gb, NOW, cursor);
        chunks++;
    } while (memcmp(cursor, zero, 32) != 0 && chunks < 10);
    assert_int_equal(chunks, 3);
    assert_same(ga, gb, NOW);

    /* A digest speaks only for its range: a holder sends what lies inside
     * it and nothing else. */
    struct lm_gossip *gc = store(NULL);
    char lo[65], hi[65];
    struct lm_buf d, want;
    struct lm_gossip_sync st;
    lm_buf_init(&d, 0);
    lm_buf_init(&want, 0);
    memset(cursor, 0, sizeof(cursor));
    assert_int_equal(lm_gossip_digest(ga, NOW, cursor, &d), 0);
    json_t *j = json_loads(d.data, 0, NULL);
    json_t *range = json_object_get(j, "range");
    snprintf(lo, sizeof(lo), "%s", json_string_value(json_array_get(range, 0)));
    snprintf(hi, sizeof(hi), "%s", json_string_value(json_array_get(range, 1)));
    size_t in_first = json_array_size(json_object_get(j, "entries"));
    json_decref(j);
    assert_string_equal(lo, "0000000000000000000000000000000000000000000000000000000000000000");
    char *empty = lm_xasprintf("{\"entries\":[],\"range\":[\"%s\",\"%s\"]}", lo, hi);
    assert_int_equal(lm_gossip_compare(ga, (uint8_t *)empty, strlen(empty), NOW, NULL, NULL,
                                       &want, &st),
                     0);
    assert_int_equal(st.sent, in_first);
    assert_int_equal(st.wanted, 0);
    free(empty);
    /* An empty store's digest is whole (no range): it is sent everything. */
    memset(cursor, 0, sizeof(cursor));
    assert_int_equal(lm_gossip_digest(gc, NOW, cursor, &d), 0);
    assert_string_equal(d.data, "{\"entries\":[]}");
    assert_int_equal(lm_gossip_compare(ga, (uint8_t *)d.data, d.len, NOW, NULL, NULL, &want,
                                       &st),
                     0);
    assert_int_equal(st.sent, 40);
    /* A buffer too small for the digest: -E2BIG, cursor unchanged. */
    struct lm_buf tiny;
    lm_buf_init(&tiny, 64);
    assert_int_equal(lm_gossip_digest(ga, NOW, cursor, &tiny), -E2BIG);
    assert_memory_equal(cursor, zero, 32);
    lm_buf_release(&tiny);

    lm_buf_release(&d);
    lm_buf_release(&want);
    lm_gossip_free(ga);
    lm_gossip_free(gb);
    lm_gossip_free(gc);
}

struct deny {
    char denied[65];
    size_t calls;
};

static bool
allow_fn(void *arg, const char *origin)
{
    struct deny *d = arg;
    d->calls++;
    return strcmp(origin, d->denied) != 0;
}

static void
test_trust(void **state)
{
    (void)state;
    struct lm_identity a, b;
    key_from(&a, 1);
    key_from(&b, 2);
    struct deny d = {0};
    snprintf(d.denied, sizeof(d.denied), "%s", b.node_id);
    struct lm_gossip_opts o = {.allow = allow_fn, .allow_arg = &d};
    struct lm_gossip *g = store(&o);
    struct lm_gossip_verdict v;

    char *p = record(b.node_id, "peer", 1, NOW, MIN, false, PEER);
    assert_int_equal(offer_as(g, &b, p, NOW, &v), -EPERM);
    assert_int_equal(v.status, LM_GOSSIP_DENIED);
    free(p);
    assert_null(lm_gossip_get(g, b.node_id, "peer", NOW));
    assert_int_equal(offer_rec(g, &a, "peer", 1, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &a, "market", 1, NOW, MIN, false, MARKET, NOW), LM_GOSSIP_NEW);

    /* A digest naming the denied origin: not asked for. */
    char *dg = lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",1],[\"%s\",\"vouch\",1]]}",
                            b.node_id, a.node_id);
    struct lm_buf want;
    struct lm_gossip_sync st;
    lm_buf_init(&want, 0);
    assert_int_equal(lm_gossip_compare(g, (uint8_t *)dg, strlen(dg), NOW, NULL, NULL, &want, &st),
                     0);
    assert_int_equal(st.wanted, 1);
    assert_null(strstr(want.data, b.node_id));
    assert_non_null(strstr(want.data, a.node_id));
    free(dg);
    lm_buf_release(&want);

    /* Trust changes: a is denied now. */
    snprintf(d.denied, sizeof(d.denied), "%s", a.node_id);
    assert_int_equal(lm_gossip_drop_denied(g), 2);
    assert_null(lm_gossip_get(g, a.node_id, "peer", NOW));
    assert_int_equal(lm_gossip_drop_denied(g), 0);

    /* drop_origin. */
    d.denied[0] = '\0';
    assert_int_equal(offer_rec(g, &a, "peer", 2, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &b, "peer", 2, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(lm_gossip_drop_origin(g, a.node_id), 1);
    assert_int_equal(lm_gossip_drop_origin(g, a.node_id), 0);
    assert_int_equal(lm_gossip_drop_origin(g, "xyz"), -EINVAL);
    assert_null(lm_gossip_get(g, a.node_id, "peer", NOW));
    assert_non_null(lm_gossip_get(g, b.node_id, "peer", NOW));
    struct lm_gossip_stats s;
    lm_gossip_stats(g, &s);
    assert_int_equal(s.records, 1);
    assert_int_equal(s.origins, 1);
    assert_int_equal(s.offers[LM_GOSSIP_DENIED], 1);
    lm_gossip_free(g);
}

/* Runs fn with stderr going to a file; returns how often needle was logged. */
static int
count_logged(const char *needle, void (*fn)(void *), void *arg)
{
    char path[] = "/tmp/lm-gossip-test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    lm_log_setup(LM_LOG_WARN, LM_LOG_TEXT);
    fn(arg);
    lm_log_setup(LM_LOG_ERROR, LM_LOG_TEXT);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char buf[4096] = {0};
    assert_true(pread(fd, buf, sizeof(buf) - 1, 0) >= 0);
    close(fd);
    unlink(path);
    int n = 0;
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

struct caps_run {
    struct lm_gossip *g;
    struct lm_identity ids[6];
};

static void
fill_caps(void *arg)
{
    struct caps_run *c = arg;
    struct lm_gossip *g = c->g;
    struct lm_identity *x = &c->ids[0], *y = &c->ids[1], *z = &c->ids[2];

    /* Per origin: two kinds, the third refused. */
    assert_int_equal(offer_rec(g, x, "peer", 1, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, x, "market", 1, NOW, MIN, false, MARKET, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, x, "vouch", 1, NOW, MIN, false, "{\"peers\":[]}", NOW),
                     LM_GOSSIP_OVER_CAPACITY);
    /* Total: three records, then new origins and kinds are refused... */
    assert_int_equal(offer_rec(g, y, "peer", 1, NOW, 1000, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, z, "peer", 1, NOW, MIN, false, PEER, NOW),
                     LM_GOSSIP_OVER_CAPACITY);
    assert_int_equal(offer_rec(g, y, "market", 1, NOW, MIN, false, MARKET, NOW),
                     LM_GOSSIP_OVER_CAPACITY);
    assert_int_equal(offer_rec(g, z, "market", 1, NOW, MIN, false, MARKET, NOW),
                     LM_GOSSIP_OVER_CAPACITY);
    /* ...while known ones are still updated. */
    assert_int_equal(offer_rec(g, x, "peer", 2, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, y, "peer", 2, NOW, 1000, false, PEER, NOW), LM_GOSSIP_NEW);
}

static void
refill_caps(void *arg)
{
    struct caps_run *c = arg;
    /* y expired: room for z, and once full again, one more warning. */
    assert_int_equal(lm_gossip_expire(c->g, NOW + 1000), 1);
    assert_int_equal(offer_rec(c->g, &c->ids[2], "peer", 1, NOW, MIN, false, PEER, NOW + 1000),
                     LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(c->g, &c->ids[3], "peer", 1, NOW, MIN, false, PEER, NOW + 1000),
                     LM_GOSSIP_OVER_CAPACITY);
}

static void
test_caps_records(void **state)
{
    (void)state;
    struct lm_gossip_opts o = {.max_records = 3, .max_per_origin = 2};
    struct caps_run c;
    c.g = store(&o);
    for (int i = 0; i < 6; i++)
        key_from(&c.ids[i], (uint8_t)(1 + i));

    assert_int_equal(count_logged("store full", fill_caps, &c), 1);
    struct lm_gossip_stats st;
    lm_gossip_stats(c.g, &st);
    assert_int_equal(st.records, 3);
    assert_int_equal(st.offers[LM_GOSSIP_OVER_CAPACITY], 4);

    /* When full, a digest's new records are not asked for; updates are. */
    char *dg = lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",9],[\"%s\",\"peer\",9]]}",
                            c.ids[4].node_id, c.ids[0].node_id);
    struct lm_buf want;
    struct lm_gossip_sync sy;
    lm_buf_init(&want, 0);
    assert_int_equal(lm_gossip_compare(c.g, (uint8_t *)dg, strlen(dg), NOW, NULL, NULL, &want,
                                       &sy),
                     0);
    assert_int_equal(sy.wanted, 1);
    assert_non_null(strstr(want.data, c.ids[0].node_id));
    free(dg);
    lm_buf_release(&want);

    assert_int_equal(count_logged("store full", refill_caps, &c), 1);
    lm_gossip_free(c.g);

    /* With room in the store, an origin at its own cap is not asked for a
     * new kind, only for updates of the kinds it has. */
    o = (struct lm_gossip_opts){.max_per_origin = 2};
    c.g = store(&o);
    assert_int_equal(offer_rec(c.g, &c.ids[0], "peer", 1, NOW, MIN, false, PEER, NOW),
                     LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(c.g, &c.ids[0], "market", 1, NOW, MIN, false, MARKET, NOW),
                     LM_GOSSIP_NEW);
    dg = lm_xasprintf("{\"entries\":[[\"%s\",\"vouch\",1],[\"%s\",\"market\",2],"
                      "[\"%s\",\"vouch\",1]]}",
                      c.ids[0].node_id, c.ids[0].node_id, c.ids[1].node_id);
    lm_buf_init(&want, 0);
    assert_int_equal(lm_gossip_compare(c.g, (uint8_t *)dg, strlen(dg), NOW, NULL, NULL, &want,
                                       &sy),
                     0);
    assert_int_equal(sy.wanted, 2);
    assert_null(strstr(want.data, "\"vouch\"]],"));
    assert_non_null(strstr(want.data, "\"market\"]"));
    free(dg);
    lm_buf_release(&want);
    lm_gossip_free(c.g);

    /* Out of range options. */
    struct lm_gossip *g;
    o = (struct lm_gossip_opts){.max_per_origin = LM_GOSSIP_PER_ORIGIN_MAX + 1};
    assert_int_equal(lm_gossip_new(&g, &o), -EINVAL);
    o = (struct lm_gossip_opts){.digest_entries = 8};
    assert_int_equal(lm_gossip_new(&g, &o), -EINVAL);
    o = (struct lm_gossip_opts){.digest_entries = LM_GOSSIP_DIGEST_ENTRIES + 1};
    assert_int_equal(lm_gossip_new(&g, &o), -EINVAL);
}

static void
test_caps_bytes(void **state)
{
    (void)state;
    struct lm_identity a, b;
    key_from(&a, 1);
    key_from(&b, 2);
    struct lm_gossip *probe = store(NULL);
    assert_int_equal(offer_rec(probe, &a, "capabilities", 1, NOW, MIN, false, CAPS, NOW),
                     LM_GOSSIP_NEW);
    struct lm_gossip_stats st;
    lm_gossip_stats(probe, &st);
    size_t one = st.bytes;
    lm_gossip_free(probe);

    struct lm_gossip_opts o = {.max_bytes = one + one / 2};
    struct lm_gossip *g = store(&o);
    assert_int_equal(offer_rec(g, &a, "capabilities", 1, NOW, MIN, false, CAPS, NOW),
                     LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &b, "capabilities", 1, NOW, MIN, false, CAPS, NOW),
                     LM_GOSSIP_OVER_CAPACITY);
    /* An update of the same size passes, one that grows past the cap not,
     * and a withdrawal (smaller) always does. */
    assert_int_equal(offer_rec(g, &a, "capabilities", 2, NOW, MIN, false, CAPS, NOW),
                     LM_GOSSIP_NEW);
    char big[4096];
    snprintf(big, sizeof(big), "{\"models\":[{\"id\":\"m\"}],\"x\":[");
    for (int i = 0; i < 500; i++)
        strcat(big, i ? ",0" : "0");
    strcat(big, "]}");
    assert_int_equal(offer_rec(g, &a, "capabilities", 3, NOW, MIN, false, big, NOW),
                     LM_GOSSIP_OVER_CAPACITY);
    assert_int_equal(offer_rec(g, &a, "capabilities", 4, NOW, MIN, true, NULL, NOW),
                     LM_GOSSIP_NEW);
    lm_gossip_stats(g, &st);
    assert_true(st.bytes <= o.max_bytes);
    assert_int_equal(st.records, 1);
    lm_gossip_free(g);
}

static void
test_malformed_records(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *g = store(NULL);
    const char *id = a.node_id;
    char upper[65];
    for (int i = 0; i < 64; i++)
        upper[i] = (char)(id[i] >= 'a' ? id[i] - 32 : id[i]);
    upper[64] = '\0';
    char deep[200] = "";
    for (int i = 0; i < 16; i++)
        strcat(deep, "[");
    for (int i = 0; i < 16; i++)
        strcat(deep, "]");
    char deep_ok[200] = "";
    for (int i = 0; i < 14; i++)
        strcat(deep_ok, "[");
    for (int i = 0; i < 14; i++)
        strcat(deep_ok, "]");

#define HEAD "\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,\"ttl_ms\":60000"
    char *bad[] = {
        lm_xasprintf("not json"),
        lm_xasprintf("[\"%s\"]", id),
        lm_xasprintf("{" HEAD ",\"body\":{\"name\":\"n\"}} x", id),
        lm_xasprintf("{" HEAD ",\"body\":{\"name\":\"n\"},\"seq\":2}", id),
        lm_xasprintf("{" HEAD ",\"body\":{\"name\":\"n\",\"x\":%s}}", id, deep),
        lm_xasprintf("{\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,\"ttl_ms\":6,\"body\":{}}"),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", upper),
        lm_xasprintf("{\"origin\":\"%.62s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":7,\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}"),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"Peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"kind2\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"seq\":1,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,\"body\":{}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":-1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1.5,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":\"1\",\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":9007199254740992,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":99999999999999999999,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":\"now\","
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":0,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":86400001,\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{" HEAD ",\"withdrawn\":\"yes\",\"body\":{\"name\":\"n\"}}", id),
        lm_xasprintf("{" HEAD "}", id),
        lm_xasprintf("{" HEAD ",\"body\":[]}", id),
        lm_xasprintf("{" HEAD ",\"body\":{}}", id),
        lm_xasprintf("{" HEAD ",\"body\":{\"name\":\"n\",\"addrs\":[1]}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"capabilities\",\"seq\":1,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,\"body\":{\"models\":{}}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"capabilities\",\"seq\":1,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,\"body\":{\"models\":[{}]}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"capabilities\",\"seq\":1,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,"
                     "\"body\":{\"models\":[{\"id\":\"m\",\"loaded\":1}]}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"capabilities\",\"seq\":1,"
                     "\"ts\":1700000000000,\"ttl_ms\":60000,"
                     "\"body\":{\"models\":[],\"prices\":[{\"model\":\"m\",\"per_1k_in\":[1]}]}}",
                     id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"vouch\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"peers\":[\"abc\"]}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"market\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"demand\":7}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"a\\u0000b\"}}", id),
        lm_xasprintf("{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":1700000000000,"
                     "\"ttl_ms\":60000,\"body\":{\"name\":\"\xff\"}}", id),
    };
    for (size_t i = 0; i < LM_ARRAY_LEN(bad); i++) {
        struct lm_gossip_verdict v;
        int rc = offer_as(g, &a, bad[i], NOW, &v);
        if (rc != -EINVAL)
            fail_msg("case %zu: %s: rc %d %s", i, bad[i], rc, v.message);
        assert_int_equal(v.status, LM_GOSSIP_MALFORMED);
        assert_true(v.message[0] != '\0');
        for (const char *m = v.message; *m; m++)
            assert_true(*m >= 0x20 && *m < 0x7f);
        free(bad[i]);
    }

    /* Sizes: empty, and one byte over the record cap. */
    struct lm_gossip_verdict v;
    uint8_t sig[64] = {0};
    assert_int_equal(lm_gossip_offer(g, (const uint8_t *)"", 0, sig, NOW, &v), -EINVAL);
    size_t n = LM_GOSSIP_RECORD_MAX + 1;
    char *huge = malloc(n + 1);
    char *head = lm_xasprintf("{" HEAD ",\"body\":{\"name\":\"", id);
    memset(huge, 'a', n);
    memcpy(huge, head, strlen(head));
    memcpy(huge + n - 3, "\"}}", 3);
    huge[n] = '\0';
    assert_int_equal(offer_as(g, &a, huge, NOW, &v), -EINVAL);
    assert_non_null(strstr(v.message, "65537"));
    /* At the cap exactly it is fine. */
    huge[n - 1] = '\0';
    memcpy(huge + n - 4, "\"}}", 3);
    assert_int_equal(offer_as(g, &a, huge, NOW, &v), 0);
    assert_int_equal(v.status, LM_GOSSIP_NEW);
    free(head);
    free(huge);

    /* Unknown fields, nulls for optional ones, and a tombstone without a
     * body are all fine. */
    char *ok = lm_xasprintf("{" HEAD ",\"later\":{\"x\":%s},\"body\":{\"name\":\"n\","
                            "\"public_endpoint\":null,\"version\":1,\"new\":true}}",
                            id, deep_ok);
    ok[strstr(ok, "\"seq\":1") - ok + 6] = '2';
    assert_int_equal(offer_as(g, &a, ok, NOW, &v), 0);
    assert_int_equal(v.status, LM_GOSSIP_NEW);
    free(ok);
    assert_int_equal(offer_rec(g, &a, "peer", 3, NOW, MIN, true, NULL, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &a, "peer", 4, NOW, MIN, true, "null", NOW), LM_GOSSIP_NEW);
    assert_null(lm_gossip_get(g, id, "peer", NOW)->body);
#undef HEAD

    struct lm_gossip_stats st;
    lm_gossip_stats(g, &st);
    assert_int_equal(st.offers[LM_GOSSIP_MALFORMED], LM_ARRAY_LEN(bad) + 2);
    lm_gossip_free(g);
}

static size_t sends;

static void
send_count(void *arg, const struct lm_gossip_record *r)
{
    (void)arg;
    (void)r;
    sends++;
}

static void
test_malformed_sync(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *g = store(NULL);
    assert_int_equal(offer_rec(g, &a, "peer", 1, NOW, MIN, false, PEER, NOW), LM_GOSSIP_NEW);
    const char *id = a.node_id;
    char lo[65], hi[65];
    memset(lo, '0', 64);
    memset(hi, 'f', 64);
    lo[64] = hi[64] = '\0';

    char *bad[] = {
        lm_xasprintf("not json"),
        lm_xasprintf("[]"),
        lm_xasprintf("{}"),
        lm_xasprintf("{\"entries\":{}}"),
        lm_xasprintf("{\"entries\":[[\"%s\",\"peer\"]]}", id),
        lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",-1]]}", id),
        lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",1.0]]}", id),
        lm_xasprintf("{\"entries\":[[\"%.63s\",\"peer\",1]]}", id),
        lm_xasprintf("{\"entries\":[[\"%s\",\"PEER\",1]]}", id),
        lm_xasprintf("{\"entries\":[7]}"),
        lm_xasprintf("{\"entries\":[],\"range\":[\"%s\"]}", lo),
        lm_xasprintf("{\"entries\":[],\"range\":[\"%s\",\"%s\"]}", hi, lo),
        lm_xasprintf("{\"entries\":[],\"range\":\"all\"}"),
        lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",1]],\"range\":[\"%s\",\"%s\"]}", id, lo, lo),
        lm_xasprintf("{\"entries\":[],\"entries\":[]}"),
        lm_xasprintf("{\"entries\":[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]}"),
    };
    struct lm_buf want;
    lm_buf_init(&want, 0);
    for (size_t i = 0; i < LM_ARRAY_LEN(bad); i++) {
        struct lm_gossip_sync st;
        sends = 0;
        int rc = lm_gossip_compare(g, (uint8_t *)bad[i], strlen(bad[i]), NOW, send_count, NULL,
                                   &want, &st);
        if (rc != -EINVAL)
            fail_msg("case %zu: %s: rc %d", i, bad[i], rc);
        assert_true(st.message[0] != '\0');
        assert_int_equal(sends, 0);
        assert_int_equal(want.len, 0);
        free(bad[i]);
    }
    char *badw[] = {
        lm_xasprintf("{\"entries\":[[\"%s\"]]}", id),
        lm_xasprintf("{\"entries\":[[\"%s\",3]]}", id),
        lm_xasprintf("{\"entries\":null}"),
        lm_xasprintf("{\"entries\":[[\"%s\",\"peer\"]]} ]", id),
    };
    for (size_t i = 0; i < LM_ARRAY_LEN(badw); i++) {
        struct lm_gossip_sync st;
        sends = 0;
        assert_int_equal(lm_gossip_want(g, (uint8_t *)badw[i], strlen(badw[i]), NOW, send_count,
                                        NULL, &st),
                         -EINVAL);
        assert_true(st.message[0] != '\0');
        assert_int_equal(sends, 0);
        free(badw[i]);
    }
    /* Over the frame cap. */
    size_t n = LM_GOSSIP_SYNC_MAX + 1;
    uint8_t *big = malloc(n);
    memset(big, ' ', n);
    struct lm_gossip_sync st;
    assert_int_equal(lm_gossip_compare(g, big, n, NOW, NULL, NULL, &want, &st), -EINVAL);
    assert_int_equal(lm_gossip_want(g, big, n, NOW, NULL, NULL, &st), -EINVAL);
    free(big);

    /* Newer nodes may say more: unknown fields and longer entries pass;
     * a want may carry a range (ignored there). */
    char *ok = lm_xasprintf("{\"v\":2,\"entries\":[[\"%s\",\"peer\",0,\"extra\"]],"
                            "\"range\":[\"%s\",\"%s\"]}", id, lo, hi);
    sends = 0;
    assert_int_equal(lm_gossip_compare(g, (uint8_t *)ok, strlen(ok), NOW, send_count, NULL, &want,
                                       &st),
                     0);
    assert_int_equal(sends, 1);
    assert_int_equal(st.wanted, 0);
    free(ok);
    ok = lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",{}]],\"range\":5}", id);
    sends = 0;
    assert_int_equal(lm_gossip_want(g, (uint8_t *)ok, strlen(ok), NOW, send_count, NULL, &st), 0);
    assert_int_equal(sends, 1);
    free(ok);

    /* A want buffer too small: -E2BIG, and nothing was sent. */
    struct lm_identity b;
    key_from(&b, 2);
    ok = lm_xasprintf("{\"entries\":[[\"%s\",\"peer\",1]]}", b.node_id);
    struct lm_buf small;
    lm_buf_init(&small, 16);
    sends = 0;
    assert_int_equal(lm_gossip_compare(g, (uint8_t *)ok, strlen(ok), NOW, send_count, NULL,
                                       &small, &st),
                     -E2BIG);
    assert_int_equal(sends, 0);
    assert_int_equal(small.len, 0);
    lm_buf_release(&small);
    free(ok);

    lm_buf_release(&want);
    lm_gossip_free(g);
}

/* One exchange yields at most LM_GOSSIP_SEND_MAX bytes of records and asks
 * for at most LM_GOSSIP_WANT_ENTRIES: a tiny digest cannot make us send a
 * whole store at once. */
static void
test_exchange_bounds(void **state)
{
    (void)state;
    struct lm_gossip *g = store(NULL);
    char *fill = malloc(60001);
    memset(fill, 'x', 60000);
    fill[60000] = '\0';
    char *body = lm_xasprintf("\"%s\"", fill);
    struct lm_buf w;
    lm_buf_init(&w, 0);
    lm_buf_puts(&w, "{\"entries\":[");
    size_t total = 0;
    for (int i = 0; i < 5; i++) {
        struct lm_identity id;
        key_from(&id, (uint8_t)(100 + i));
        for (int k = 0; k < 16; k++) {
            char kind[8];
            snprintf(kind, sizeof(kind), "k_%c", 'a' + k);
            assert_int_equal(offer_rec(g, &id, kind, 1, NOW, MIN, false, body, NOW),
                             LM_GOSSIP_NEW);
            lm_buf_printf(&w, "%s[\"%s\",\"%s\"]", total ? "," : "", id.node_id, kind);
            total++;
        }
    }
    lm_buf_puts(&w, "]}");
    struct lm_gossip_sync st;
    struct lm_buf want;
    lm_buf_init(&want, 0);
    const char *empty = "{\"entries\":[]}";
    assert_int_equal(lm_gossip_compare(g, (const uint8_t *)empty, strlen(empty), NOW, NULL, NULL,
                                       &want, &st),
                     0);
    assert_true(st.truncated);
    assert_true(st.sent > 0 && st.sent < total);
    assert_true(st.sent_bytes <= LM_GOSSIP_SEND_MAX);
    assert_true(st.sent_bytes + 60000 > LM_GOSSIP_SEND_MAX);
    assert_int_equal(lm_gossip_want(g, (uint8_t *)w.data, w.len, NOW, NULL, NULL, &st), 0);
    assert_true(st.truncated);
    assert_true(st.sent > 0 && st.sent < total);
    assert_true(st.sent_bytes <= LM_GOSSIP_SEND_MAX);

    /* A digest of more records than one want may ask for. */
    lm_buf_reset(&w);
    lm_buf_puts(&w, "{\"entries\":[");
    for (unsigned i = 0; i <= LM_GOSSIP_WANT_ENTRIES; i++)
        lm_buf_printf(&w, "%s[\"%064x\",\"peer\",1]", i ? "," : "", i);
    lm_buf_puts(&w, "]}");
    assert_true(w.len <= LM_GOSSIP_SYNC_MAX);
    assert_int_equal(lm_gossip_compare(g, (uint8_t *)w.data, w.len, NOW, NULL, NULL, &want, &st),
                     0);
    assert_int_equal(st.wanted, LM_GOSSIP_WANT_ENTRIES);
    assert_true(st.truncated);
    assert_true(want.len <= LM_GOSSIP_SYNC_MAX);
    assert_int_equal(lm_gossip_want(g, (uint8_t *)want.data, want.len, NOW, NULL, NULL, &st), 0);
    assert_int_equal(st.sent, 0);

    lm_buf_release(&w);
    lm_buf_release(&want);
    free(body);
    free(fill);
    lm_gossip_free(g);
}

static void
test_unknown_kind_forwarded(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *gb = store(NULL), *gc = store(NULL);
    struct lm_gossip_verdict v;

    /* Odd spacing, key order, escapes, numbers: a re-encoder would change
     * every one of them. */
    char *p = lm_xasprintf("{ \"kind\" : \"future_thing\",\n \"body\": [1, 2.50, \"\\u00e9\", "
                           "{\"deep\": {\"k\": null}}], \"origin\":\"%s\", \"seq\": 1, "
                           "\"ttl_ms\": 60000, \"ts\": 1700000000000, \"extra\": \"x\" }\n",
                           a.node_id);
    assert_int_equal(offer_as(gb, &a, p, NOW, &v), 0);
    assert_int_equal(v.status, LM_GOSSIP_NEW);
    assert_int_equal(v.record->kind_id, LM_GOSSIP_KIND_OTHER);
    assert_string_equal(v.record->kind, "future_thing");
    assert_true(json_is_array(v.record->body));

    /* Forwarded through a want, byte for byte, and accepted downstream. */
    struct outbox *ob = calloc(1, sizeof(*ob));
    struct lm_gossip_sync st;
    char *w = lm_xasprintf("{\"entries\":[[\"%s\",\"future_thing\"]]}", a.node_id);
    assert_int_equal(lm_gossip_want(gb, (uint8_t *)w, strlen(w), NOW, collect, ob, &st), 0);
    assert_int_equal(ob->n, 1);
    assert_int_equal(ob->w[0].n, strlen(p));
    assert_memory_equal(ob->w[0].payload, p, strlen(p));
    assert_int_equal(deliver(gc, ob, NOW), 1);
    const struct lm_gossip_record *r = lm_gossip_get(gc, a.node_id, "future_thing", NOW);
    assert_memory_equal(r->payload, p, strlen(p));

    struct lm_gossip_stats s;
    lm_gossip_stats(gc, &s);
    assert_int_equal(s.by_kind[LM_GOSSIP_KIND_OTHER], 1);
    free(w);
    free(p);
    free(ob);
    lm_gossip_free(gb);
    lm_gossip_free(gc);
}

static void
test_refresh(void **state)
{
    (void)state;
    struct lm_identity a, b;
    key_from(&a, 1);
    key_from(&b, 2);
    struct lm_gossip *ga = store(NULL), *gb = store(NULL);
    struct lm_gossip_verdict v;

    assert_int_equal(lm_gossip_due(ga), 0);
    json_t *peer = json_loads(PEER, 0, NULL), *market = json_loads(MARKET, 0, NULL);
    assert_int_equal(lm_gossip_publish(ga, &a, "peer", peer, 10000, false, NOW, &v), 0);
    assert_int_equal(lm_gossip_publish(ga, &a, "market", market, 20000, false, NOW + 1, &v), 0);
    json_decref(peer);
    json_decref(market);
    /* Someone else's record in the store is never ours to renew. */
    assert_int_equal(offer_rec(ga, &b, "peer", 1, NOW, 1000, false, PEER, NOW), LM_GOSSIP_NEW);
    assert_int_equal(lm_gossip_due(ga), NOW + 5000);

    struct outbox *ob = calloc(1, sizeof(*ob));
    assert_int_equal(lm_gossip_refresh(ga, &a, NOW + 4999, collect, ob), 0);
    assert_int_equal(lm_gossip_refresh(ga, &a, NOW + 5000, collect, ob), 1);
    assert_int_equal(ob->n, 1);
    const struct lm_gossip_record *r = lm_gossip_get(ga, a.node_id, "peer", NOW + 5000);
    assert_int_equal(r->seq, NOW + 5000);
    assert_int_equal(r->ts_ms, NOW + 5000);
    assert_int_equal(r->ttl_ms, 10000);
    assert_true(r->local);
    assert_string_equal(json_string_value(json_object_get(r->body, "name")), "n");
    assert_int_equal(lm_gossip_due(ga), NOW + 10000);
    outbox_clear(ob);
    assert_int_equal(lm_gossip_refresh(ga, &a, NOW + 20000, collect, ob), 2);
    assert_int_equal(deliver(gb, ob, NOW + 20000), 2);
    assert_int_equal(lm_gossip_refresh(ga, &b, NOW + 20000, NULL, NULL), 0);

    /* A withdrawn record is never renewed, whatever its body. */
    json_t *thing = json_object();
    assert_int_equal(lm_gossip_publish(ga, &a, "thing", thing, 10000, false, NOW + 20000, &v), 0);
    assert_int_equal(lm_gossip_publish(ga, &a, "thing", thing, 10000, true, NOW + 20001, &v), 0);
    json_decref(thing);
    /* Long past half of every TTL (the tombstone's was raised to 5 min +
     * 10 s): peer and market are renewed, even though expired meanwhile. */
    assert_int_equal(lm_gossip_refresh(ga, &a, NOW + 400000, NULL, NULL), 2);
    assert_true(lm_gossip_get(ga, a.node_id, "thing", NOW + 300000)->withdrawn);
    assert_int_equal(lm_gossip_get(ga, a.node_id, "thing", NOW + 300000)->seq, NOW + 20001);
    assert_int_equal(lm_gossip_get(ga, a.node_id, "peer", NOW + 400000)->seq, NOW + 400000);
    free(ob);
    lm_gossip_free(ga);
    lm_gossip_free(gb);
}

static void
test_seq_scheme(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *g = store(NULL);
    struct lm_gossip_verdict v;
    json_t *body = json_loads(PEER, 0, NULL);

    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, MIN, false, NOW, &v), 0);
    assert_int_equal(v.record->seq, NOW);
    /* Twice in one millisecond: still increasing. */
    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, MIN, false, NOW, &v), 0);
    assert_int_equal(v.record->seq, NOW + 1);
    /* The clock went back: the counter does not. */
    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, MIN, false, NOW - 1000, &v), 0);
    assert_int_equal(v.record->seq, NOW + 2);
    uint8_t *old = malloc(v.record->payload_len);
    size_t oldn = v.record->payload_len;
    uint8_t oldsig[64];
    memcpy(old, v.record->payload, oldn);
    memcpy(oldsig, v.record->sig, 64);
    lm_gossip_free(g);

    /* Restarted with nothing on disk: a later clock is enough... */
    g = store(NULL);
    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, MIN, false, NOW + 10, &v), 0);
    assert_int_equal(v.record->seq, NOW + 10);
    lm_gossip_free(g);
    /* ...and a record of ours learnt back from a peer counts too. */
    g = store(NULL);
    assert_int_equal(lm_gossip_offer(g, old, oldn, oldsig, NOW, &v), 0);
    assert_false(v.record->local);
    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, MIN, false, NOW, &v), 0);
    assert_int_equal(v.record->seq, NOW + 3);
    assert_true(v.record->local);
    free(old);

    /* Bad arguments. */
    assert_int_equal(lm_gossip_publish(g, &a, "Peer", body, MIN, false, NOW, &v), -EINVAL);
    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, 0, false, NOW, &v), -EINVAL);
    assert_int_equal(lm_gossip_publish(g, &a, "peer", body, LM_GOSSIP_TTL_MAX_MS + 1, false, NOW,
                                       &v),
                     -EINVAL);
    assert_int_equal(lm_gossip_publish(g, &a, "peer", NULL, MIN, false, NOW, &v), -EINVAL);
    json_t *empty = json_object();
    assert_int_equal(lm_gossip_publish(g, &a, "capabilities", empty, MIN, false, NOW, &v),
                     -EINVAL);
    assert_non_null(strstr(v.message, "models"));
    json_object_set_new(empty, "models", json_array());
    char *blob = malloc(LM_GOSSIP_RECORD_MAX + 1);
    memset(blob, 'x', LM_GOSSIP_RECORD_MAX);
    blob[LM_GOSSIP_RECORD_MAX] = '\0';
    json_object_set_new(empty, "blob", json_string(blob));
    assert_int_equal(lm_gossip_publish(g, &a, "capabilities", empty, MIN, false, NOW, &v),
                     -EINVAL);
    assert_non_null(strstr(v.message, "bytes"));
    free(blob);
    json_decref(empty);
    json_decref(body);
    lm_gossip_free(g);
}

static void
test_metrics(void **state)
{
    (void)state;
    struct lm_identity a;
    key_from(&a, 1);
    struct lm_gossip *g = store(NULL);
    assert_int_equal(offer_rec(g, &a, "capabilities", 1, NOW, MIN, false, CAPS, NOW),
                     LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &a, "peer", 1, NOW, MIN, true, NULL, NOW), LM_GOSSIP_NEW);
    assert_int_equal(offer_rec(g, &a, "peer", 0, NOW, MIN, false, PEER, NOW), LM_GOSSIP_OLDER);
    struct lm_buf m;
    lm_buf_init(&m, 0);
    lm_gossip_metrics(g, &m);
    assert_non_null(strstr(m.data, "labman_gossip_records{kind=\"capabilities\"} 1\n"));
    assert_non_null(strstr(m.data, "labman_gossip_records{kind=\"peer\"} 1\n"));
    assert_non_null(strstr(m.data, "labman_gossip_tombstones 1\n"));
    assert_non_null(strstr(m.data, "labman_gossip_origins 1\n"));
    assert_non_null(strstr(m.data, "labman_gossip_offers_total{result=\"new\"} 2\n"));
    assert_non_null(strstr(m.data, "labman_gossip_offers_total{result=\"older\"} 1\n"));
    assert_non_null(strstr(m.data, "# TYPE labman_gossip_bytes gauge\n"));
    lm_buf_release(&m);
    assert_string_equal(lm_gossip_status_code(LM_GOSSIP_OVER_CAPACITY), "over_capacity");
    assert_string_equal(lm_gossip_kind_name(LM_GOSSIP_KIND_VOUCH), "vouch");
    lm_gossip_free(g);
}

int
main(void)
{
    lm_log_setup(LM_LOG_ERROR, LM_LOG_TEXT);
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_then_offer),
        cmocka_unit_test(test_higher_seq_wins),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_time_checks),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_tombstone),
        cmocka_unit_test(test_anti_entropy),
        cmocka_unit_test(test_digest_ranges),
        cmocka_unit_test(test_trust),
        cmocka_unit_test(test_caps_records),
        cmocka_unit_test(test_caps_bytes),
        cmocka_unit_test(test_malformed_records),
        cmocka_unit_test(test_malformed_sync),
        cmocka_unit_test(test_exchange_bounds),
        cmocka_unit_test(test_unknown_kind_forwarded),
        cmocka_unit_test(test_refresh),
        cmocka_unit_test(test_seq_scheme),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
