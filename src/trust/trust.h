/* trust: whether a peer may be part of this node's mesh (SPEC §6).
 * Owns: the decision for [mesh] trust = private | friends | public, the rule
 * that denied_peers always wins, the one-hop limit on vouches, reason codes. */
#ifndef LM_TRUST_H
#define LM_TRUST_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "identity/identity.h"

/* Bounds on what `vouch` gossip records may make this node hold. */
#define LM_TRUST_MAX_VOUCH_PEERS 1024 /* node ids in one voucher's record */
#define LM_TRUST_MAX_VOUCH_PAIRS 65536 /* (voucher, peer) pairs in a set */

/* Does voucher vouch for node_id? Both are 64 lowercase hex digits. The
 * check asks only about vouchers that are in trusted_peers and not denied,
 * so an implementation may keep the vouches of any origin. */
typedef bool lm_trust_vouch_fn(const char *voucher, const char *node_id, void *arg);

enum lm_trust_reason {
    LM_TRUST_OK_TRUSTED,   /* allowed: in trusted_peers (any mode) */
    LM_TRUST_OK_VOUCHED,   /* allowed: trust = friends and a trusted peer vouches for it */
    LM_TRUST_OK_PUBLIC,    /* allowed: trust = public and not denied */
    LM_TRUST_NO_DENIED,    /* refused: in denied_peers, whatever the mode */
    LM_TRUST_NO_UNTRUSTED, /* refused: private and not trusted; friends and not vouched */
    LM_TRUST_NO_BAD_ID,    /* refused: not a node id (64 hex digits) */
};

struct lm_trust_verdict {
    bool allowed;
    enum lm_trust_reason reason;
    /* Short, stable, for logs, metrics labels and JSON: "trusted", "vouched",
     * "public", "denied", "untrusted", "bad_id". */
    const char *code;
    char voucher[LM_NODE_ID_LEN + 1]; /* LM_TRUST_OK_VOUCHED: the trusted voucher; else "" */
    /* One line for operators, e.g. "not in trusted_peers (trust = private)".
     * Names peers by short id only; never holds bytes from the peer. */
    char text[160];
};

/* Decides whether node_id (64 hex digits, either case) may be a peer:
 *   1. in denied_peers             -> refused, in every mode;
 *   2. in trusted_peers            -> allowed, in every mode;
 *   3. trust = public              -> allowed;
 *   4. trust = friends, and a peer of trusted_peers (not denied) vouches for
 *      node_id through vouches     -> allowed;
 *   5. otherwise                   -> refused.
 * Vouches reach one hop only: a peer allowed because it is vouched for is not
 * trusted, so its own vouches never count. That keeps the set of peers an
 * operator accepted bounded by the people they named, instead of by everyone
 * those people's friends' friends chose. vouches may be NULL (no vouches);
 * it is never called unless trust = friends.
 * Fills *v in every case. Returns 0 when allowed, -EPERM when refused,
 * -EINVAL when node_id is not a node id. */
int lm_trust_check(const struct lm_cfg_mesh *mesh, const char *node_id, lm_trust_vouch_fn *vouches,
                   void *arg, struct lm_trust_verdict *v);

/* A set of vouches the caller keeps from `vouch` gossip records
 * ({peers:[node_id...]} signed by origin): one whole list per voucher, as a
 * newer record replaces an older one. Lookups are O(log n). */
struct lm_trust_vouches;

struct lm_trust_vouches *lm_trust_vouches_new(void);
void lm_trust_vouches_free(struct lm_trust_vouches *vs);

/* Replaces voucher's list with peers (n of them; n = 0 empties it). Ids are
 * 64 hex digits, either case; duplicates and a self-vouch are dropped. On an
 * error the set is unchanged: -EINVAL for a malformed id, -E2BIG for more than
 * LM_TRUST_MAX_VOUCH_PEERS, -ENOSPC when the set would pass
 * LM_TRUST_MAX_VOUCH_PAIRS. */
int lm_trust_vouches_set(struct lm_trust_vouches *vs, const char *voucher,
                         const char *const *peers, size_t n);
/* Drops voucher's list (record withdrawn or expired); a no-op when absent. */
void lm_trust_vouches_remove(struct lm_trust_vouches *vs, const char *voucher);
/* Pairs held. */
size_t lm_trust_vouches_count(const struct lm_trust_vouches *vs);
/* An lm_trust_vouch_fn over a set: pass it with the set as arg. */
bool lm_trust_vouches_lookup(const char *voucher, const char *node_id, void *vouches);

#endif
