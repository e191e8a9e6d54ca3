/* gossip: the store of signed gossip records (labnet/1 §3), without sockets.
 * Owns: record validation and signature checks, the highest-seq-wins rule per
 * (origin, kind), tombstones, expiry, caps, and the digest/want exchange. */
#ifndef LM_GOSSIP_H
#define LM_GOSSIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "identity/identity.h"
#include "util/util.h"

/* The frame type byte that a record signature covers (GOSSIP_RECORD):
 * sig = Ed25519(origin, "labnet/1\0" || 0x10 || payload). */
#define LM_GOSSIP_RECORD_TYPE 0x10

#define LM_GOSSIP_RECORD_MAX 65536u             /* payload bytes of one record */
#define LM_GOSSIP_DEPTH_MAX 16                  /* JSON nesting, the payload object = 1 */
#define LM_GOSSIP_KIND_MAX 32                   /* [a-z_]{1,32} */
#define LM_GOSSIP_SKEW_MS (5u * 60u * 1000u)    /* how far ahead of our clock ts may be */
#define LM_GOSSIP_TTL_MAX_MS (24u * 3600u * 1000u)
#define LM_GOSSIP_SEQ_MAX ((UINT64_C(1) << 53) - 1) /* exact in every JSON reader */
#define LM_GOSSIP_SYNC_MAX (1u << 20)           /* digest / want payload bytes (frame cap) */
#define LM_GOSSIP_DIGEST_ENTRIES 4096           /* per digest we write (~500 KB at most) */
#define LM_GOSSIP_WANT_ENTRIES 4096             /* per want we write */
#define LM_GOSSIP_SEND_MAX (4u << 20)           /* record bytes one compare/want yields */

/* Store caps (lm_gossip_opts, 0 = these). */
#define LM_GOSSIP_DEFAULT_RECORDS 10000
#define LM_GOSSIP_DEFAULT_PER_ORIGIN 16
#define LM_GOSSIP_PER_ORIGIN_MAX 64
#define LM_GOSSIP_DEFAULT_BYTES (32u << 20)
/* What one parsed JSON value is charged against max_bytes (jansson's node
 * plus its slot in the parent): a 64 KiB record of tiny values costs far
 * more memory than 64 KiB, and max_bytes is meant to bound memory. */
#define LM_GOSSIP_VALUE_COST 48

enum lm_gossip_kind {
    LM_GOSSIP_KIND_PEER,
    LM_GOSSIP_KIND_CAPABILITIES,
    LM_GOSSIP_KIND_MARKET,
    LM_GOSSIP_KIND_VOUCH,
    LM_GOSSIP_KIND_OTHER, /* kept and forwarded, not interpreted */
    LM_GOSSIP_KIND_N
};

/* What lm_gossip_offer / lm_gossip_publish made of a record. The first three
 * are the protocol working (return 0); the rest are refusals (return < 0). */
enum lm_gossip_status {
    LM_GOSSIP_NEW,            /* stored: forward it to fanout peers */
    LM_GOSSIP_DUPLICATE,      /* same seq as the stored one: not forwarded */
    LM_GOSSIP_OLDER,          /* lower seq than the stored one: not forwarded */
    LM_GOSSIP_MALFORMED,      /* -EINVAL */
    LM_GOSSIP_BAD_SIGNATURE,  /* -EBADMSG */
    LM_GOSSIP_STALE,          /* -ESTALE: ts more than LM_GOSSIP_SKEW_MS ahead of now */
    LM_GOSSIP_EXPIRED,        /* -ETIME: ts + ttl_ms already past */
    LM_GOSSIP_DENIED,         /* -EPERM: the allow predicate refused the origin */
    LM_GOSSIP_OVER_CAPACITY,  /* -ENOSPC: a cap is reached (docs/gossip.md) */
    LM_GOSSIP_STATUS_N
};

/* A stored record. Read-only; pointers stay valid until the next call that
 * changes the store (offer, publish, refresh, expire, drop_*, free). */
struct lm_gossip_record {
    char origin[LM_NODE_ID_LEN + 1]; /* lowercase hex, as in the payload */
    uint8_t origin_pk[LM_IDENTITY_PK_BYTES];
    char kind[LM_GOSSIP_KIND_MAX + 1];
    enum lm_gossip_kind kind_id;
    uint64_t seq;
    uint64_t ts_ms;       /* the signer's clock */
    uint32_t ttl_ms;
    bool withdrawn;       /* a tombstone */
    bool local;           /* published by this process (lm_gossip_refresh renews it) */
    uint64_t received_ms; /* our clock when it was stored */
    uint64_t expires_ms;  /* min(ts_ms, received_ms) + ttl_ms */
    json_t *body;         /* the parsed "body"; NULL for a tombstone without one.
                           * Owned by the store: json_incref to keep it longer. */
    const uint8_t *payload; /* the bytes as signed, to forward unchanged */
    size_t payload_len;
    uint8_t sig[LM_IDENTITY_SIG_BYTES];
};

struct lm_gossip_verdict {
    enum lm_gossip_status status;
    const struct lm_gossip_record *record; /* NEW: the stored record; else NULL */
    char message[256];                     /* why; one line, bytes from peers escaped */
};

/* Whether records of origin (a node id) may be stored and forwarded: the
 * trust policy of SPEC §6. Must not call into the store. */
typedef bool lm_gossip_allow_fn(void *arg, const char *origin);
/* Gets a record to send or read. Must not change the store. */
typedef void lm_gossip_record_fn(void *arg, const struct lm_gossip_record *r);

struct lm_gossip_opts {
    size_t max_records;    /* records of all origins; 0 = LM_GOSSIP_DEFAULT_RECORDS */
    size_t max_per_origin; /* 0 = LM_GOSSIP_DEFAULT_PER_ORIGIN, at most _PER_ORIGIN_MAX */
    size_t max_bytes;      /* accounted memory; 0 = LM_GOSSIP_DEFAULT_BYTES */
    size_t digest_entries; /* entries per digest; 0 = LM_GOSSIP_DIGEST_ENTRIES (also the max) */
    lm_gossip_allow_fn *allow; /* NULL = every origin */
    void *allow_arg;
};

struct lm_gossip;

/* opts NULL = defaults. -EINVAL when a cap is out of range. */
int lm_gossip_new(struct lm_gossip **out, const struct lm_gossip_opts *opts);
void lm_gossip_free(struct lm_gossip *g);

/* A GOSSIP_RECORD from a peer: payload bytes and the 64-byte signature.
 * now_ms is the wall clock (Unix ms), not lm_now_ms(). Checks, in order:
 * size, nesting, JSON, fields and the body of known kinds (malformed),
 * origin allowed (denied), signature (bad_signature, skipped for bytes
 * identical to the stored record), ts (stale), ts + ttl (expired), seq
 * against the stored record (duplicate, older), caps (over_capacity).
 * Returns 0 with v->status NEW, DUPLICATE or OLDER, else a negative errno
 * (see enum lm_gossip_status) with v->message. */
int lm_gossip_offer(struct lm_gossip *g, const uint8_t *payload, size_t n,
                    const uint8_t sig[LM_IDENTITY_SIG_BYTES], uint64_t now_ms,
                    struct lm_gossip_verdict *v);

/* Builds, signs with id and stores a local record: seq = max(now_ms, stored
 * seq + 1). body is read, not taken (NULL allowed for a tombstone). A
 * tombstone's ttl is raised to outlive the record it withdraws by
 * LM_GOSSIP_SKEW_MS (so a replay cannot bring it back). Returns 0
 * with v->record (the bytes and signature to push), or as lm_gossip_offer. */
int lm_gossip_publish(struct lm_gossip *g, const struct lm_identity *id, const char *kind,
                      json_t *body, uint32_t ttl_ms, bool withdrawn, uint64_t now_ms,
                      struct lm_gossip_verdict *v);

/* When the next local record falls due for re-publication (half its TTL
 * lived; tombstones are never renewed): a time <= now_ms means now, 0 none. */
uint64_t lm_gossip_due(const struct lm_gossip *g);
/* Re-signs every local record of id due by now_ms with the same body, kind,
 * ttl and a new ts and seq, and passes each new record to fn (to push). A
 * caller with fresher content simply publishes it instead. A record that
 * cannot be renewed (the byte cap) is logged and left to expire. Returns
 * how many were renewed. */
size_t lm_gossip_refresh(struct lm_gossip *g, const struct lm_identity *id, uint64_t now_ms,
                         lm_gossip_record_fn *fn, void *arg);

/* Drops records whose expires_ms <= now_ms. Returns how many. */
size_t lm_gossip_expire(struct lm_gossip *g, uint64_t now_ms);
/* Drops every record of origin (a peer became denied). Returns how many,
 * or -EINVAL when origin is not a node id. */
int lm_gossip_drop_origin(struct lm_gossip *g, const char *origin);
/* Asks the allow predicate again about every origin and drops the refused
 * ones (after a trust change). Returns how many records went. */
size_t lm_gossip_drop_denied(struct lm_gossip *g);

/* The current record of (origin, kind), tombstones included (check
 * ->withdrawn); NULL when none or expired at now_ms. */
const struct lm_gossip_record *lm_gossip_get(const struct lm_gossip *g, const char *origin,
                                             const char *kind, uint64_t now_ms);
/* Calls fn for every live record (not withdrawn, not expired at now_ms) of
 * kind (NULL = all kinds), in origin order. Returns how many. */
size_t lm_gossip_each(const struct lm_gossip *g, const char *kind, uint64_t now_ms,
                      lm_gossip_record_fn *fn, void *arg);

/* Anti-entropy. What one exchange did; message says why on an error. */
struct lm_gossip_sync {
    size_t sent;       /* records passed to the send callback */
    size_t sent_bytes; /* their payload bytes */
    size_t wanted;     /* entries in the want payload */
    bool truncated;    /* a bound was reached; the next round continues */
    char message[256];
};

/* Writes one GOSSIP_DIGEST payload into out (reset first; give it no limit
 * or at least LM_GOSSIP_SYNC_MAX). When the unexpired records do not fit in
 * one digest, each call covers the next range of origins, starting at
 * *cursor (all zero = the start) and naming the range in "range"; *cursor
 * is advanced, and wraps to zero after the last range. Returns 0 or -E2BIG
 * when out's limit is too small. */
int lm_gossip_digest(const struct lm_gossip *g, uint64_t now_ms,
                     uint8_t cursor[LM_IDENTITY_PK_BYTES], struct lm_buf *out);
/* A peer's GOSSIP_DIGEST: passes to send every record we hold (within the
 * digest's range) that it lacks or holds older, and writes into want (reset
 * first; len 0 = nothing to ask) the GOSSIP_WANT payload for the entries we
 * lack or hold older, leaving out denied origins and new records the caps
 * could not take. -EINVAL for a malformed digest (st->message says why),
 * -E2BIG when want's limit is too small; send is then never called. */
int lm_gossip_compare(const struct lm_gossip *g, const uint8_t *digest, size_t n,
                      uint64_t now_ms, lm_gossip_record_fn *send, void *arg,
                      struct lm_buf *want, struct lm_gossip_sync *st);
/* A peer's GOSSIP_WANT: passes to send each record asked for that we hold
 * (unexpired), once each. -EINVAL for a malformed want. */
int lm_gossip_want(const struct lm_gossip *g, const uint8_t *want, size_t n, uint64_t now_ms,
                   lm_gossip_record_fn *send, void *arg, struct lm_gossip_sync *st);

struct lm_gossip_stats {
    size_t records;   /* stored, tombstones included */
    size_t withdrawn; /* tombstones */
    size_t origins;
    size_t by_kind[LM_GOSSIP_KIND_N];
    size_t payload_bytes; /* record payloads, as received */
    size_t bytes;         /* accounted memory: what max_bytes caps */
    uint64_t offers[LM_GOSSIP_STATUS_N]; /* lm_gossip_offer outcomes so far */
};

void lm_gossip_stats(const struct lm_gossip *g, struct lm_gossip_stats *out);
/* Prometheus families: labman_gossip_records{kind}, labman_gossip_tombstones,
 * labman_gossip_origins, labman_gossip_bytes, labman_gossip_payload_bytes,
 * labman_gossip_offers_total{result}. */
void lm_gossip_metrics(const struct lm_gossip *g, struct lm_buf *out);

/* "new", "duplicate", "older", "malformed", "bad_signature", "stale",
 * "expired", "denied", "over_capacity": the code for an ERROR frame. */
const char *lm_gossip_status_code(enum lm_gossip_status s);
/* "peer", "capabilities", "market", "vouch", "other". */
const char *lm_gossip_kind_name(enum lm_gossip_kind k);

#endif
