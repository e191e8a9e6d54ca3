/* trust: the peer admission rule of SPEC §6 and a set of vouches. Ids are
 * compared as 64 hex digits without regard to case, because a config or a
 * record may have been written either way; they are handed on lowercase. */
#include "trust/trust.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* id is valid and lowercase; list entries may be anything. */
static bool
same_id(const char *id, const char *entry)
{
    if (!lm_identity_is_node_id(entry))
        return false;
    for (size_t i = 0; i < LM_NODE_ID_LEN; i++) {
        char c = entry[i];
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (c != id[i])
            return false;
    }
    return true;
}

static bool
listed(const struct lm_strv *list, const char *id)
{
    for (size_t i = 0; i < list->n; i++)
        if (same_id(id, list->v[i]))
            return true;
    return false;
}

static int LM_PRINTF(3, 4)
verdict(struct lm_trust_verdict *v, enum lm_trust_reason reason, const char *fmt, ...)
{
    static const char *const codes[] = {
        [LM_TRUST_OK_TRUSTED] = "trusted",     [LM_TRUST_OK_VOUCHED] = "vouched",
        [LM_TRUST_OK_PUBLIC] = "public",       [LM_TRUST_NO_DENIED] = "denied",
        [LM_TRUST_NO_UNTRUSTED] = "untrusted", [LM_TRUST_NO_BAD_ID] = "bad_id",
    };
    va_list ap;
    v->reason = reason;
    v->code = codes[reason];
    v->allowed = reason == LM_TRUST_OK_TRUSTED || reason == LM_TRUST_OK_VOUCHED ||
                 reason == LM_TRUST_OK_PUBLIC;
    va_start(ap, fmt);
    vsnprintf(v->text, sizeof(v->text), fmt, ap);
    va_end(ap);
    if (v->allowed)
        return 0;
    return reason == LM_TRUST_NO_BAD_ID ? -EINVAL : -EPERM;
}

int
lm_trust_check(const struct lm_cfg_mesh *mesh, const char *node_id, lm_trust_vouch_fn *vouches,
               void *arg, struct lm_trust_verdict *v)
{
    char id[LM_NODE_ID_LEN + 1], by[LM_NODE_ID_LEN + 1];

    memset(v, 0, sizeof(*v));
    if (!lm_identity_is_node_id(node_id))
        return verdict(v, LM_TRUST_NO_BAD_ID, "not a node id (64 hex digits)");
    lm_identity_node_id_lower(id, node_id);

    if (listed(&mesh->denied_peers, id))
        return verdict(v, LM_TRUST_NO_DENIED, "denied (in denied_peers)");
    if (listed(&mesh->trusted_peers, id))
        return verdict(v, LM_TRUST_OK_TRUSTED, "in trusted_peers");

    switch (mesh->trust) {
    case LM_TRUST_PUBLIC:
        return verdict(v, LM_TRUST_OK_PUBLIC, "not denied (trust = public)");
    case LM_TRUST_FRIENDS:
        /* Only the operator's own list can vouch: asking about vouched peers
         * too would make trust transitive. */
        for (size_t i = 0; vouches && i < mesh->trusted_peers.n; i++) {
            const char *t = mesh->trusted_peers.v[i];
            if (!lm_identity_is_node_id(t))
                continue;
            lm_identity_node_id_lower(by, t);
            if (strcmp(by, id) == 0 || listed(&mesh->denied_peers, by))
                continue;
            if (vouches(by, id, arg)) {
                memcpy(v->voucher, by, sizeof(v->voucher));
                return verdict(v, LM_TRUST_OK_VOUCHED, "vouched for by trusted peer %.*s "
                               "(trust = friends)", LM_SHORT_ID_LEN, by);
            }
        }
        return verdict(v, LM_TRUST_NO_UNTRUSTED, "not in trusted_peers and no trusted peer "
                       "vouches for it (trust = friends)");
    case LM_TRUST_PRIVATE:
    default:
        return verdict(v, LM_TRUST_NO_UNTRUSTED, "not in trusted_peers (trust = private)");
    }
}

/* ---- the vouch set ------------------------------------------------------ */

struct pair {
    uint8_t voucher[LM_IDENTITY_PK_BYTES];
    uint8_t peer[LM_IDENTITY_PK_BYTES];
};

struct lm_trust_vouches {
    struct pair *v; /* sorted by (voucher, peer), no duplicates */
    size_t n, cap;
};

static int
pair_cmp(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct pair));
}

/* Index of the first pair of voucher (or where it would be). */
static size_t
lower_bound(const struct lm_trust_vouches *vs, const uint8_t *voucher)
{
    size_t lo = 0, hi = vs->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(vs->v[mid].voucher, voucher, LM_IDENTITY_PK_BYTES) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t
voucher_end(const struct lm_trust_vouches *vs, size_t i, const uint8_t *voucher)
{
    while (i < vs->n && memcmp(vs->v[i].voucher, voucher, LM_IDENTITY_PK_BYTES) == 0)
        i++;
    return i;
}

struct lm_trust_vouches *
lm_trust_vouches_new(void)
{
    return lm_xcalloc(1, sizeof(struct lm_trust_vouches));
}

void
lm_trust_vouches_free(struct lm_trust_vouches *vs)
{
    if (!vs)
        return;
    free(vs->v);
    free(vs);
}

int
lm_trust_vouches_set(struct lm_trust_vouches *vs, const char *voucher, const char *const *peers,
                     size_t n)
{
    uint8_t who[LM_IDENTITY_PK_BYTES];

    if (!lm_identity_is_node_id(voucher) || lm_hex_decode(who, sizeof(who), voucher) < 0)
        return -EINVAL;
    if (n > LM_TRUST_MAX_VOUCH_PEERS)
        return -E2BIG;
    struct pair *add = n ? lm_xmalloc(n * sizeof(*add)) : NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!lm_identity_is_node_id(peers[i]) || lm_hex_decode(add[k].peer, LM_IDENTITY_PK_BYTES, peers[i]) < 0) {
            free(add);
            return -EINVAL;
        }
        if (memcmp(add[k].peer, who, sizeof(who)) == 0)
            continue;
        memcpy(add[k].voucher, who, sizeof(who));
        k++;
    }
    if (k)
        qsort(add, k, sizeof(*add), pair_cmp);
    size_t uniq = 0;
    for (size_t i = 0; i < k; i++)
        if (uniq == 0 || pair_cmp(&add[uniq - 1], &add[i]) != 0)
            add[uniq++] = add[i];

    size_t lo = lower_bound(vs, who), hi = voucher_end(vs, lo, who);
    size_t total = vs->n - (hi - lo) + uniq;
    if (total > LM_TRUST_MAX_VOUCH_PAIRS) {
        free(add);
        return -ENOSPC;
    }
    if (total > vs->cap) {
        vs->cap = total < 2 * vs->cap ? 2 * vs->cap : total;
        vs->v = lm_xrealloc(vs->v, vs->cap * sizeof(*vs->v));
    }
    /* The voucher's pairs are contiguous: replace that run in place. */
    if (vs->n > hi)
        memmove(vs->v + lo + uniq, vs->v + hi, (vs->n - hi) * sizeof(*vs->v));
    if (uniq)
        memcpy(vs->v + lo, add, uniq * sizeof(*add));
    vs->n = total;
    free(add);
    return 0;
}

void
lm_trust_vouches_remove(struct lm_trust_vouches *vs, const char *voucher)
{
    (void)lm_trust_vouches_set(vs, voucher, NULL, 0);
}

size_t
lm_trust_vouches_count(const struct lm_trust_vouches *vs)
{
    return vs ? vs->n : 0;
}

bool
lm_trust_vouches_lookup(const char *voucher, const char *node_id, void *vouches)
{
    const struct lm_trust_vouches *vs = vouches;
    struct pair key;

    if (!vs || vs->n == 0 || !lm_identity_is_node_id(voucher) || !lm_identity_is_node_id(node_id) ||
        lm_hex_decode(key.voucher, LM_IDENTITY_PK_BYTES, voucher) < 0 ||
        lm_hex_decode(key.peer, LM_IDENTITY_PK_BYTES, node_id) < 0)
        return false;
    return bsearch(&key, vs->v, vs->n, sizeof(key), pair_cmp) != NULL;
}
