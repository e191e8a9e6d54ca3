#include "gossip/gossip.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LM_LOG_MODULE "gossip"
#include "log/log.h"

/* "labnet/1\0" || type: what every frame signature covers before the payload. */
#define SIG_CONTEXT "labnet/1"
#define SIG_PREFIX_LEN (sizeof(SIG_CONTEXT) + 1)

struct rec {
    struct lm_gossip_record pub;
    size_t mem;     /* charged against max_bytes */
    uint8_t data[]; /* the payload bytes */
};

struct origin {
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    char id[LM_NODE_ID_LEN + 1];
    struct rec **recs; /* a handful (max_per_origin): linear search by kind */
    size_t n, cap;
};

struct lm_gossip {
    struct lm_gossip_opts o; /* defaults filled in */
    /* Sorted by key: lookups are a binary search, and a digest walks a
     * range of origins in order without sorting anything. Inserting moves
     * pointers, but new origins are rare next to updates of known ones. */
    struct origin **origins;
    size_t n_origins, cap_origins;
    size_t records, withdrawn, payload_bytes, bytes;
    size_t by_kind[LM_GOSSIP_KIND_N];
    uint64_t offers[LM_GOSSIP_STATUS_N];
    /* The node publishing through this store, for lm_gossip_due. */
    uint8_t self[LM_IDENTITY_PK_BYTES];
    bool has_self;
    bool full_warned; /* "full" is logged once, again only after space freed */
};

/* A record's fields once parsed and checked, before it is stored. */
struct parsed {
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    char origin[LM_NODE_ID_LEN + 1];
    char kind[LM_GOSSIP_KIND_MAX + 1];
    enum lm_gossip_kind kind_id;
    uint64_t seq, ts;
    uint32_t ttl;
    bool withdrawn;
    json_t *root; /* owned */
    json_t *body; /* inside root; NULL when absent or null in a tombstone */
};

/* An entry of a peer's digest or want. */
struct dent {
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    char origin[LM_NODE_ID_LEN + 1];
    char kind[LM_GOSSIP_KIND_MAX + 1];
    uint64_t seq;
};

static const char *const status_codes[LM_GOSSIP_STATUS_N] = {
    [LM_GOSSIP_NEW] = "new",
    [LM_GOSSIP_DUPLICATE] = "duplicate",
    [LM_GOSSIP_OLDER] = "older",
    [LM_GOSSIP_MALFORMED] = "malformed",
    [LM_GOSSIP_BAD_SIGNATURE] = "bad_signature",
    [LM_GOSSIP_STALE] = "stale",
    [LM_GOSSIP_EXPIRED] = "expired",
    [LM_GOSSIP_DENIED] = "denied",
    [LM_GOSSIP_OVER_CAPACITY] = "over_capacity",
};

static const int status_errnos[LM_GOSSIP_STATUS_N] = {
    [LM_GOSSIP_MALFORMED] = -EINVAL,    [LM_GOSSIP_BAD_SIGNATURE] = -EBADMSG,
    [LM_GOSSIP_STALE] = -ESTALE,        [LM_GOSSIP_EXPIRED] = -ETIME,
    [LM_GOSSIP_DENIED] = -EPERM,        [LM_GOSSIP_OVER_CAPACITY] = -ENOSPC,
};

static const char *const kind_names[LM_GOSSIP_KIND_N] = {
    [LM_GOSSIP_KIND_PEER] = "peer",     [LM_GOSSIP_KIND_CAPABILITIES] = "capabilities",
    [LM_GOSSIP_KIND_MARKET] = "market", [LM_GOSSIP_KIND_VOUCH] = "vouch",
    [LM_GOSSIP_KIND_OTHER] = "other",
};

const char *
lm_gossip_status_code(enum lm_gossip_status s)
{
    return (unsigned)s < LM_GOSSIP_STATUS_N ? status_codes[s] : "unknown";
}

const char *
lm_gossip_kind_name(enum lm_gossip_kind k)
{
    return (unsigned)k < LM_GOSSIP_KIND_N ? kind_names[k] : "other";
}

static int
verdict(struct lm_gossip_verdict *v, enum lm_gossip_status s, const char *fmt, ...)
    LM_PRINTF(3, 4);

static int
verdict(struct lm_gossip_verdict *v, enum lm_gossip_status s, const char *fmt, ...)
{
    va_list ap;
    v->status = s;
    va_start(ap, fmt);
    vsnprintf(v->message, sizeof(v->message), fmt, ap);
    va_end(ap);
    return status_errnos[s];
}

static void
msgf(char *msg, size_t cap, const char *fmt, ...) LM_PRINTF(3, 4);

static void
msgf(char *msg, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
}

/* ---- syntax ---- */

/* jansson recurses once per level, up to 2048 deep; a record is refused
 * before parsing when its brackets nest deeper than we ever need. */
static bool
depth_ok(const uint8_t *p, size_t n, int max)
{
    int depth = 0;
    bool in_str = false;

    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                return false;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return true;
}

static bool
kind_ok(const char *s, size_t n)
{
    if (n == 0 || n > LM_GOSSIP_KIND_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_'))
            return false;
    return true;
}

static enum lm_gossip_kind
kind_id(const char *kind)
{
    for (int k = 0; k < LM_GOSSIP_KIND_OTHER; k++)
        if (strcmp(kind, kind_names[k]) == 0)
            return (enum lm_gossip_kind)k;
    return LM_GOSSIP_KIND_OTHER;
}

/* A node id as records carry it: exactly 64 lowercase hex digits, so that
 * one key has one spelling in digests and wants. */
static bool
node_id_of(const json_t *j, uint8_t pk[LM_IDENTITY_PK_BYTES], char id[LM_NODE_ID_LEN + 1])
{
    if (!json_is_string(j) || json_string_length(j) != LM_NODE_ID_LEN)
        return false;
    const char *s = json_string_value(j);
    for (size_t i = 0; i < LM_NODE_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    memcpy(id, s, LM_NODE_ID_LEN + 1);
    return lm_hex_decode(pk, LM_IDENTITY_PK_BYTES, s) == 0;
}

static bool
kind_of(const json_t *j, char kind[LM_GOSSIP_KIND_MAX + 1])
{
    if (!json_is_string(j) || !kind_ok(json_string_value(j), json_string_length(j)))
        return false;
    memcpy(kind, json_string_value(j), json_string_length(j) + 1);
    return true;
}

static bool
uint_of(const json_t *j, uint64_t max, uint64_t *out)
{
    if (!json_is_integer(j) || json_integer_value(j) < 0 ||
        (uint64_t)json_integer_value(j) > max)
        return false;
    *out = (uint64_t)json_integer_value(j);
    return true;
}

/* ---- body shapes of the kinds we read (PROTOCOL.md §3) ----
 * Loose on purpose: the fields a reader relies on must be there with their
 * type, every other listed field is type-checked when present (null counts
 * as absent), and anything unlisted passes for newer nodes to use. */

enum ftype { F_STR, F_INT, F_NUM, F_BOOL, F_SCALAR, F_STRS, F_NODE_IDS, F_OBJS };

struct field {
    const char *name;
    enum ftype type;
    bool required;
    const struct field *sub; /* F_OBJS: the fields of each element */
};

static const struct field model_fields[] = {
    {"id", F_STR, true, NULL},           {"aliases", F_STRS, false, NULL},
    {"digest", F_STR, false, NULL},      {"family", F_STR, false, NULL},
    {"params", F_SCALAR, false, NULL},   {"quant", F_STR, false, NULL},
    {"context_length", F_INT, false, NULL}, {"loaded", F_BOOL, false, NULL},
    {"slots_free", F_INT, false, NULL},  {"slots_total", F_INT, false, NULL},
    {"queue", F_INT, false, NULL},       {NULL, 0, false, NULL},
};
static const struct field price_fields[] = {
    /* Money: a decimal string (exact, as labman sends it) or a number. */
    {"model", F_STR, true, NULL},      {"per_1k_in", F_SCALAR, false, NULL},
    {"per_1k_out", F_SCALAR, false, NULL}, {"currency", F_STR, false, NULL},
    {NULL, 0, false, NULL},
};
static const struct field payout_fields[] = {
    {"currency", F_STR, true, NULL},
    {"address", F_STR, true, NULL},
    {NULL, 0, false, NULL},
};
static const struct field demand_fields[] = {
    {"model", F_STR, true, NULL},      {"requests", F_INT, false, NULL},
    {"tokens_in", F_INT, false, NULL}, {"tokens_out", F_INT, false, NULL},
    {"unserved", F_INT, false, NULL},  {"p50_ttft_ms", F_NUM, false, NULL},
    {NULL, 0, false, NULL},
};
/* 7: the fields of the widest kind (peer) and the end mark. */
static const struct field body_fields[LM_GOSSIP_KIND_OTHER][7] = {
    [LM_GOSSIP_KIND_PEER] = {{"name", F_STR, true, NULL},
                             {"roles", F_STRS, false, NULL},
                             {"addrs", F_STRS, false, NULL},
                             {"relays", F_STRS, false, NULL},
                             {"public_endpoint", F_STR, false, NULL},
                             {"version", F_SCALAR, false, NULL},
                             {NULL, 0, false, NULL}},
    [LM_GOSSIP_KIND_CAPABILITIES] = {{"models", F_OBJS, true, model_fields},
                                     {"prices", F_OBJS, false, price_fields},
                                     {"payouts", F_OBJS, false, payout_fields},
                                     {"feps", F_STRS, false, NULL},
                                     {NULL, 0, false, NULL}},
    [LM_GOSSIP_KIND_MARKET] = {{"window_s", F_INT, false, NULL},
                               {"demand", F_OBJS, true, demand_fields},
                               {NULL, 0, false, NULL}},
    [LM_GOSSIP_KIND_VOUCH] = {{"peers", F_NODE_IDS, true, NULL}, {NULL, 0, false, NULL}},
};

static const char *
ftype_name(enum ftype t)
{
    switch (t) {
    case F_STR: return "a string";
    case F_INT: return "an integer";
    case F_NUM: return "a number";
    case F_BOOL: return "true or false";
    case F_SCALAR: return "a string or a number";
    case F_STRS: return "an array of strings";
    case F_NODE_IDS: return "an array of node ids";
    case F_OBJS: return "an array of objects";
    }
    return "?";
}

static bool check_fields(const json_t *obj, const struct field *f, const char *path, char *msg,
                         size_t cap);

static bool
check_value(const json_t *v, const struct field *f, const char *path, char *msg, size_t cap)
{
    bool ok = true;
    switch (f->type) {
    case F_STR: ok = json_is_string(v); break;
    case F_INT: ok = json_is_integer(v); break;
    case F_NUM: ok = json_is_number(v); break;
    case F_BOOL: ok = json_is_boolean(v); break;
    case F_SCALAR: ok = json_is_string(v) || json_is_number(v); break;
    case F_STRS:
    case F_NODE_IDS:
    case F_OBJS:
        ok = json_is_array(v);
        for (size_t i = 0; ok && i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            uint8_t pk[LM_IDENTITY_PK_BYTES];
            char id[LM_NODE_ID_LEN + 1];
            if (f->type == F_STRS) {
                ok = json_is_string(e);
            } else if (f->type == F_NODE_IDS) {
                ok = node_id_of(e, pk, id);
            } else if (!json_is_object(e)) {
                ok = false;
            } else {
                char sub[96];
                snprintf(sub, sizeof(sub), "%s.%s[%zu]", path, f->name, i);
                if (!check_fields(e, f->sub, sub, msg, cap))
                    return false;
            }
        }
        break;
    }
    if (!ok)
        msgf(msg, cap, "%s.%s must be %s", path, f->name, ftype_name(f->type));
    return ok;
}

static bool
check_fields(const json_t *obj, const struct field *f, const char *path, char *msg, size_t cap)
{
    for (; f->name; f++) {
        const json_t *v = json_object_get(obj, f->name);
        if (!v || json_is_null(v)) {
            if (f->required) {
                msgf(msg, cap, "%s.%s is missing", path, f->name);
                return false;
            }
            continue;
        }
        if (!check_value(v, f, path, msg, cap))
            return false;
    }
    return true;
}

/* ---- records ---- */

static void
parsed_release(struct parsed *r)
{
    json_decref(r->root);
    r->root = NULL;
    r->body = NULL;
}

/* Parses and checks a record payload: everything that can be said from the
 * bytes alone. -EINVAL with msg on any fault. */
static int
parse_record(const uint8_t *p, size_t n, struct parsed *r, char *msg, size_t cap)
{
    json_error_t je;
    uint64_t ttl;

    memset(r, 0, sizeof(*r));
    if (n == 0 || n > LM_GOSSIP_RECORD_MAX) {
        msgf(msg, cap, "record payload is %zu bytes, not 1..%u", n, LM_GOSSIP_RECORD_MAX);
        return -EINVAL;
    }
    if (!depth_ok(p, n, LM_GOSSIP_DEPTH_MAX)) {
        msgf(msg, cap, "record nests deeper than %d levels", LM_GOSSIP_DEPTH_MAX);
        return -EINVAL;
    }
    /* Duplicate keys are refused: the signature covers the bytes, and two
     * readers keeping different copies of "origin" would disagree on what
     * was signed. */
    r->root = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &je);
    if (!r->root) {
        char esc[128];
        lm_escape(esc, sizeof(esc), je.text, strlen(je.text));
        msgf(msg, cap, "record is not JSON: %s at byte %d", esc, je.position);
        return -EINVAL;
    }
    const json_t *root = r->root;
    if (!json_is_object(root)) {
        msgf(msg, cap, "record is not a JSON object");
        goto fail;
    }
    if (!node_id_of(json_object_get(root, "origin"), r->pk, r->origin)) {
        msgf(msg, cap, "origin must be a node id (64 lowercase hex digits)");
        goto fail;
    }
    if (!kind_of(json_object_get(root, "kind"), r->kind)) {
        msgf(msg, cap, "kind must be 1 to %d characters of [a-z_]", LM_GOSSIP_KIND_MAX);
        goto fail;
    }
    r->kind_id = kind_id(r->kind);
    if (!uint_of(json_object_get(root, "seq"), LM_GOSSIP_SEQ_MAX, &r->seq)) {
        msgf(msg, cap, "seq must be an integer in 0..2^53-1");
        goto fail;
    }
    if (!uint_of(json_object_get(root, "ts"), LM_GOSSIP_SEQ_MAX, &r->ts)) {
        msgf(msg, cap, "ts must be an integer (Unix ms)");
        goto fail;
    }
    if (!uint_of(json_object_get(root, "ttl_ms"), LM_GOSSIP_TTL_MAX_MS, &ttl) || ttl == 0) {
        msgf(msg, cap, "ttl_ms must be an integer in 1..%u", LM_GOSSIP_TTL_MAX_MS);
        goto fail;
    }
    r->ttl = (uint32_t)ttl;
    const json_t *w = json_object_get(root, "withdrawn");
    if (w && !json_is_null(w) && !json_is_boolean(w)) {
        msgf(msg, cap, "withdrawn must be true or false");
        goto fail;
    }
    r->withdrawn = json_is_true(w);
    json_t *body = json_object_get(root, "body");
    if (r->withdrawn) {
        /* A tombstone's body says nothing anyone acts on. */
        r->body = json_is_null(body) ? NULL : body;
        return 0;
    }
    if (!body) {
        msgf(msg, cap, "body is missing");
        goto fail;
    }
    if (r->kind_id != LM_GOSSIP_KIND_OTHER) {
        if (!json_is_object(body)) {
            msgf(msg, cap, "a %s body must be an object", r->kind);
            goto fail;
        }
        if (!check_fields(body, body_fields[r->kind_id], "body", msg, cap))
            goto fail;
    }
    r->body = body;
    return 0;
fail:
    parsed_release(r);
    return -EINVAL;
}

static size_t
count_values(json_t *j)
{
    size_t n = 1;
    const char *key;
    json_t *v;

    if (json_is_object(j)) {
        json_object_foreach(j, key, v)
            n += count_values(v);
    } else if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j); i++)
            n += count_values(json_array_get(j, i));
    }
    return n;
}

static size_t
record_mem(const struct parsed *r, size_t n)
{
    return sizeof(struct rec) + n + (r->body ? count_values(r->body) : 0) * LM_GOSSIP_VALUE_COST;
}

static uint8_t *
signed_message(const uint8_t *payload, size_t n, size_t *len)
{
    uint8_t *m = lm_xmalloc(SIG_PREFIX_LEN + n);
    memcpy(m, SIG_CONTEXT, sizeof(SIG_CONTEXT)); /* with its NUL */
    m[sizeof(SIG_CONTEXT)] = LM_GOSSIP_RECORD_TYPE;
    memcpy(m + SIG_PREFIX_LEN, payload, n);
    *len = SIG_PREFIX_LEN + n;
    return m;
}

static uint64_t
due_time(const struct rec *x)
{
    return x->pub.ts_ms + x->pub.ttl_ms / 2;
}

static bool
live(const struct rec *x, uint64_t now_ms)
{
    return x->pub.expires_ms > now_ms;
}

/* ---- the store ---- */

static size_t
origin_lower(const struct lm_gossip *g, const uint8_t pk[LM_IDENTITY_PK_BYTES])
{
    size_t lo = 0, hi = g->n_origins;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(g->origins[mid]->pk, pk, LM_IDENTITY_PK_BYTES) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct origin *
origin_find(const struct lm_gossip *g, const uint8_t pk[LM_IDENTITY_PK_BYTES])
{
    size_t i = origin_lower(g, pk);
    if (i < g->n_origins && memcmp(g->origins[i]->pk, pk, LM_IDENTITY_PK_BYTES) == 0)
        return g->origins[i];
    return NULL;
}

static struct rec **
slot_find(struct origin *o, const char *kind)
{
    for (size_t i = 0; o && i < o->n; i++)
        if (strcmp(o->recs[i]->pub.kind, kind) == 0)
            return &o->recs[i];
    return NULL;
}

static struct origin *
origin_add(struct lm_gossip *g, const uint8_t pk[LM_IDENTITY_PK_BYTES], const char *id)
{
    size_t i = origin_lower(g, pk);
    struct origin *o = lm_xcalloc(1, sizeof(*o));
    memcpy(o->pk, pk, LM_IDENTITY_PK_BYTES);
    memcpy(o->id, id, LM_NODE_ID_LEN + 1);
    if (g->n_origins == g->cap_origins) {
        g->cap_origins = g->cap_origins ? g->cap_origins * 2 : 64;
        g->origins = lm_xrealloc(g->origins, g->cap_origins * sizeof(*g->origins));
    }
    memmove(&g->origins[i + 1], &g->origins[i], (g->n_origins - i) * sizeof(*g->origins));
    g->origins[i] = o;
    g->n_origins++;
    return o;
}

static void
account(struct lm_gossip *g, const struct rec *x, bool add)
{
    if (add) {
        g->records++;
        g->withdrawn += x->pub.withdrawn;
        g->by_kind[x->pub.kind_id]++;
        g->payload_bytes += x->pub.payload_len;
        g->bytes += x->mem;
    } else {
        g->records--;
        g->withdrawn -= x->pub.withdrawn;
        g->by_kind[x->pub.kind_id]--;
        g->payload_bytes -= x->pub.payload_len;
        g->bytes -= x->mem;
    }
}

static void
rec_free(struct rec *x)
{
    if (!x)
        return;
    json_decref(x->pub.body);
    free(x);
}

/* Removes record j of o (keeping the others in order) and frees it. */
static void
rec_remove(struct lm_gossip *g, struct origin *o, size_t j)
{
    struct rec *x = o->recs[j];
    account(g, x, false);
    memmove(&o->recs[j], &o->recs[j + 1], (o->n - j - 1) * sizeof(*o->recs));
    o->n--;
    rec_free(x);
}

static void
origin_free(struct lm_gossip *g, struct origin *o)
{
    while (o->n > 0)
        rec_remove(g, o, o->n - 1);
    free(o->recs);
    free(o);
}

/* After records went: drops emptied origins, and re-arms the "full" warning
 * once there is real room again (not at the first free byte, or a store
 * at its cap would log on every other record). */
static void
compact(struct lm_gossip *g)
{
    size_t w = 0;
    for (size_t i = 0; i < g->n_origins; i++) {
        if (g->origins[i]->n == 0)
            origin_free(g, g->origins[i]);
        else
            g->origins[w++] = g->origins[i];
    }
    g->n_origins = w;
    if (g->full_warned && g->records <= g->o.max_records * 9 / 10 &&
        g->bytes <= g->o.max_bytes / 10 * 9)
        g->full_warned = false;
}

static void
warn_full(struct lm_gossip *g, const char *what)
{
    if (g->full_warned)
        return;
    g->full_warned = true;
    log_warn("store full (%s): records of new origins and kinds are refused until some expire; "
             "known ones are still updated",
             what);
}

int
lm_gossip_new(struct lm_gossip **out, const struct lm_gossip_opts *opts)
{
    struct lm_gossip_opts o = {0};
    if (opts)
        o = *opts;
    if (!o.max_records)
        o.max_records = LM_GOSSIP_DEFAULT_RECORDS;
    if (!o.max_per_origin)
        o.max_per_origin = LM_GOSSIP_DEFAULT_PER_ORIGIN;
    if (!o.max_bytes)
        o.max_bytes = LM_GOSSIP_DEFAULT_BYTES;
    if (!o.digest_entries)
        o.digest_entries = LM_GOSSIP_DIGEST_ENTRIES;
    /* A digest holds whole origins, so one origin's records must fit. */
    if (o.max_per_origin > LM_GOSSIP_PER_ORIGIN_MAX ||
        o.digest_entries > LM_GOSSIP_DIGEST_ENTRIES || o.digest_entries < o.max_per_origin)
        return -EINVAL;
    struct lm_gossip *g = lm_xcalloc(1, sizeof(*g));
    g->o = o;
    *out = g;
    return 0;
}

void
lm_gossip_free(struct lm_gossip *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_origins; i++)
        origin_free(g, g->origins[i]);
    free(g->origins);
    free(g);
}

/* Stores a parsed record whose signature is known good: the checks that
 * need our clock and the store (stale, expired, older, caps), then the
 * insertion. */
static int
admit(struct lm_gossip *g, struct parsed *r, const uint8_t *payload, size_t n,
      const uint8_t sig[LM_IDENTITY_SIG_BYTES], uint64_t now_ms, bool local,
      struct lm_gossip_verdict *v)
{
    if (r->ts > now_ms + LM_GOSSIP_SKEW_MS)
        return verdict(v, LM_GOSSIP_STALE, "ts is %llu ms ahead of our clock (more than %u)",
                       (unsigned long long)(r->ts - now_ms), LM_GOSSIP_SKEW_MS);
    if (r->ts + r->ttl <= now_ms)
        return verdict(v, LM_GOSSIP_EXPIRED, "expired %llu ms ago (ts + ttl_ms)",
                       (unsigned long long)(now_ms - r->ts - r->ttl));

    struct origin *o = origin_find(g, r->pk);
    struct rec **slot = slot_find(o, r->kind);
    struct rec *cur = slot ? *slot : NULL;
    /* An expired record that expire() has not swept yet no longer counts:
     * the highest *unexpired* seq wins. */
    if (cur && live(cur, now_ms)) {
        if (r->seq < cur->pub.seq)
            return verdict(v, LM_GOSSIP_OLDER, "seq %llu is older than our %llu",
                           (unsigned long long)r->seq, (unsigned long long)cur->pub.seq);
        if (r->seq == cur->pub.seq) {
            /* Same seq, other bytes: the signer equivocated. First one wins
             * here; peers may keep the other until the next seq settles it. */
            bool same = cur->pub.payload_len == n && memcmp(cur->pub.payload, payload, n) == 0;
            return verdict(v, LM_GOSSIP_DUPLICATE, "seq %llu already stored%s",
                           (unsigned long long)r->seq, same ? "" : " (with other content)");
        }
    }

    size_t mem = record_mem(r, n);
    if (cur) {
        /* Updates of known slots go on when full, as long as they do not
         * grow the store past its cap. */
        if (mem > cur->mem && g->bytes - cur->mem + mem > g->o.max_bytes) {
            warn_full(g, "bytes");
            return verdict(v, LM_GOSSIP_OVER_CAPACITY, "store full: %zu of %zu bytes used",
                           g->bytes, g->o.max_bytes);
        }
    } else if (o && o->n >= g->o.max_per_origin) {
        return verdict(v, LM_GOSSIP_OVER_CAPACITY, "origin already has %zu records (the cap)",
                       o->n);
    } else if (g->records >= g->o.max_records) {
        warn_full(g, "records");
        return verdict(v, LM_GOSSIP_OVER_CAPACITY, "store full: %zu records", g->records);
    } else if (g->bytes + mem > g->o.max_bytes) {
        warn_full(g, "bytes");
        return verdict(v, LM_GOSSIP_OVER_CAPACITY, "store full: %zu of %zu bytes used",
                       g->bytes, g->o.max_bytes);
    }

    struct rec *x = lm_xmalloc(sizeof(*x) + n);
    memset(x, 0, sizeof(*x));
    struct lm_gossip_record *p = &x->pub;
    memcpy(p->origin, r->origin, sizeof(p->origin));
    memcpy(p->origin_pk, r->pk, sizeof(p->origin_pk));
    memcpy(p->kind, r->kind, sizeof(p->kind));
    p->kind_id = r->kind_id;
    p->seq = r->seq;
    p->ts_ms = r->ts;
    p->ttl_ms = r->ttl;
    p->withdrawn = r->withdrawn;
    p->local = local;
    p->received_ms = now_ms;
    /* Our clock bounds the signer's: a record lives at most ttl_ms from the
     * moment we got it, and never past the signer's ts + ttl_ms, so that a
     * copy relayed late (by anti-entropy) does not live longer either. */
    p->expires_ms = (r->ts < now_ms ? r->ts : now_ms) + r->ttl;
    p->body = r->body ? json_incref(r->body) : NULL;
    memcpy(x->data, payload, n);
    p->payload = x->data;
    p->payload_len = n;
    memcpy(p->sig, sig, LM_IDENTITY_SIG_BYTES);
    x->mem = mem;

    if (cur) {
        account(g, cur, false);
        rec_free(cur);
        *slot = x;
    } else {
        if (!o)
            o = origin_add(g, r->pk, r->origin);
        if (o->n == o->cap) {
            o->cap = o->cap ? o->cap * 2 : 4;
            o->recs = lm_xrealloc(o->recs, o->cap * sizeof(*o->recs));
        }
        o->recs[o->n++] = x;
    }
    account(g, x, true);
    v->status = LM_GOSSIP_NEW;
    v->record = p;
    snprintf(v->message, sizeof(v->message), "stored %s seq %llu", r->kind,
             (unsigned long long)r->seq);
    return 0;
}

static void
verdict_init(struct lm_gossip_verdict *v)
{
    v->status = LM_GOSSIP_MALFORMED;
    v->record = NULL;
    v->message[0] = '\0';
}

static int
offer(struct lm_gossip *g, const uint8_t *payload, size_t n,
      const uint8_t sig[LM_IDENTITY_SIG_BYTES], uint64_t now_ms, struct lm_gossip_verdict *v)
{
    struct parsed r;
    char msg[sizeof(v->message)];
    int rc = parse_record(payload, n, &r, msg, sizeof(msg));
    if (rc < 0)
        return verdict(v, LM_GOSSIP_MALFORMED, "%s", msg);
    if (g->o.allow && !g->o.allow(g->o.allow_arg, r.origin)) {
        rc = verdict(v, LM_GOSSIP_DENIED, "origin %.12s is not allowed", r.origin);
        goto out;
    }
    /* The same bytes and signature as the stored record (the common case
     * in gossip: several peers forward each record) need no second
     * verification. */
    struct rec **slot = slot_find(origin_find(g, r.pk), r.kind);
    if (slot && live(*slot, now_ms) && (*slot)->pub.payload_len == n &&
        memcmp((*slot)->pub.payload, payload, n) == 0 &&
        memcmp((*slot)->pub.sig, sig, LM_IDENTITY_SIG_BYTES) == 0) {
        rc = verdict(v, LM_GOSSIP_DUPLICATE, "seq %llu already stored",
                     (unsigned long long)r.seq);
        goto out;
    }
    size_t mlen;
    uint8_t *m = signed_message(payload, n, &mlen);
    rc = lm_identity_verify(r.pk, m, mlen, sig);
    free(m);
    if (rc < 0) {
        rc = verdict(v, LM_GOSSIP_BAD_SIGNATURE, "signature is not %.12s's over this record",
                     r.origin);
        goto out;
    }
    rc = admit(g, &r, payload, n, sig, now_ms, false, v);
out:
    parsed_release(&r);
    return rc;
}

int
lm_gossip_offer(struct lm_gossip *g, const uint8_t *payload, size_t n,
                const uint8_t sig[LM_IDENTITY_SIG_BYTES], uint64_t now_ms,
                struct lm_gossip_verdict *v)
{
    verdict_init(v);
    int rc = offer(g, payload, n, sig, now_ms, v);
    g->offers[v->status]++;
    return rc;
}

int
lm_gossip_publish(struct lm_gossip *g, const struct lm_identity *id, const char *kind,
                  json_t *body, uint32_t ttl_ms, bool withdrawn, uint64_t now_ms,
                  struct lm_gossip_verdict *v)
{
    verdict_init(v);
    if (!kind || !kind_ok(kind, strlen(kind)))
        return verdict(v, LM_GOSSIP_MALFORMED, "kind must be 1 to %d characters of [a-z_]",
                       LM_GOSSIP_KIND_MAX);
    if (ttl_ms == 0 || ttl_ms > LM_GOSSIP_TTL_MAX_MS)
        return verdict(v, LM_GOSSIP_MALFORMED, "ttl_ms must be in 1..%u", LM_GOSSIP_TTL_MAX_MS);
    if (!body && !withdrawn)
        return verdict(v, LM_GOSSIP_MALFORMED, "a record needs a body");

    struct rec **slot = slot_find(origin_find(g, id->pk), kind);
    const struct rec *cur = slot ? *slot : NULL;
    /* The clock is the counter: a restarted node starts above what it
     * published before without storing anything, as long as its clock
     * moved on. A record of ours learnt back from peers counts too. */
    uint64_t seq = now_ms;
    if (cur && cur->pub.seq >= seq)
        seq = cur->pub.seq + 1;
    if (seq > LM_GOSSIP_SEQ_MAX)
        return verdict(v, LM_GOSSIP_MALFORMED, "seq would pass 2^53-1");
    /* A tombstone that expired before the record it withdraws would let
     * anyone replay that record and bring it back. Peers whose clocks lag
     * ours end the tombstone up to LM_GOSSIP_SKEW_MS early (they count
     * from their receipt), hence the margin. */
    if (withdrawn && cur && cur->pub.expires_ms > now_ms) {
        uint64_t need = cur->pub.expires_ms - now_ms + LM_GOSSIP_SKEW_MS;
        if (need > LM_GOSSIP_TTL_MAX_MS)
            need = LM_GOSSIP_TTL_MAX_MS;
        if (need > ttl_ms)
            ttl_ms = (uint32_t)need;
    }

    json_t *root = json_object();
    json_object_set_new(root, "origin", json_string(id->node_id));
    json_object_set_new(root, "kind", json_string(kind));
    json_object_set_new(root, "seq", json_integer((json_int_t)seq));
    json_object_set_new(root, "ts", json_integer((json_int_t)now_ms));
    json_object_set_new(root, "ttl_ms", json_integer(ttl_ms));
    if (withdrawn)
        json_object_set_new(root, "withdrawn", json_true());
    json_object_set_new(root, "body", body ? json_incref(body) : json_object());
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s)
        return verdict(v, LM_GOSSIP_MALFORMED, "body cannot be encoded as JSON");

    /* The same checks as a peer's record: what we send must pass them. */
    struct parsed r;
    char msg[sizeof(v->message)];
    size_t n = strlen(s);
    int rc = parse_record((const uint8_t *)s, n, &r, msg, sizeof(msg));
    if (rc < 0) {
        free(s);
        return verdict(v, LM_GOSSIP_MALFORMED, "%s", msg);
    }
    uint8_t sig[LM_IDENTITY_SIG_BYTES];
    size_t mlen;
    uint8_t *m = signed_message((const uint8_t *)s, n, &mlen);
    lm_identity_sign(id, m, mlen, sig);
    free(m);
    rc = admit(g, &r, (const uint8_t *)s, n, sig, now_ms, true, v);
    parsed_release(&r);
    free(s);
    if (rc == 0) {
        memcpy(g->self, id->pk, sizeof(g->self));
        g->has_self = true;
    }
    return rc;
}

uint64_t
lm_gossip_due(const struct lm_gossip *g)
{
    uint64_t next = 0;
    const struct origin *o = g->has_self ? origin_find(g, g->self) : NULL;
    for (size_t i = 0; o && i < o->n; i++) {
        const struct rec *x = o->recs[i];
        if (x->pub.local && !x->pub.withdrawn && (next == 0 || due_time(x) < next))
            next = due_time(x);
    }
    return next;
}

size_t
lm_gossip_refresh(struct lm_gossip *g, const struct lm_identity *id, uint64_t now_ms,
                  lm_gossip_record_fn *fn, void *arg)
{
    struct origin *o = origin_find(g, id->pk);
    size_t done = 0;

    /* Publishing replaces a record in its slot: o and o->recs stay put. */
    for (size_t i = 0; o && i < o->n; i++) {
        const struct rec *x = o->recs[i];
        if (!x->pub.local || x->pub.withdrawn || due_time(x) > now_ms)
            continue;
        char kind[LM_GOSSIP_KIND_MAX + 1];
        struct lm_gossip_verdict v;
        memcpy(kind, x->pub.kind, sizeof(kind));
        if (lm_gossip_publish(g, id, kind, x->pub.body, x->pub.ttl_ms, false, now_ms, &v) < 0) {
            log_warn("cannot renew own %s record: %s", kind, v.message);
            continue;
        }
        done++;
        if (fn)
            fn(arg, v.record);
    }
    return done;
}

size_t
lm_gossip_expire(struct lm_gossip *g, uint64_t now_ms)
{
    size_t dropped = 0;
    for (size_t i = 0; i < g->n_origins; i++) {
        struct origin *o = g->origins[i];
        for (size_t j = o->n; j-- > 0;) {
            if (!live(o->recs[j], now_ms)) {
                rec_remove(g, o, j);
                dropped++;
            }
        }
    }
    compact(g);
    return dropped;
}

int
lm_gossip_drop_origin(struct lm_gossip *g, const char *origin)
{
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    if (!origin || lm_identity_parse_node_id(origin, pk) < 0)
        return -EINVAL;
    struct origin *o = origin_find(g, pk);
    if (!o)
        return 0;
    int n = (int)o->n;
    while (o->n > 0)
        rec_remove(g, o, o->n - 1);
    compact(g);
    return n;
}

size_t
lm_gossip_drop_denied(struct lm_gossip *g)
{
    size_t dropped = 0;
    for (size_t i = 0; g->o.allow && i < g->n_origins; i++) {
        struct origin *o = g->origins[i];
        if (g->o.allow(g->o.allow_arg, o->id))
            continue;
        dropped += o->n;
        while (o->n > 0)
            rec_remove(g, o, o->n - 1);
    }
    compact(g);
    return dropped;
}

const struct lm_gossip_record *
lm_gossip_get(const struct lm_gossip *g, const char *origin, const char *kind, uint64_t now_ms)
{
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    if (!origin || !kind || lm_identity_parse_node_id(origin, pk) < 0)
        return NULL;
    struct rec **slot = slot_find(origin_find(g, pk), kind);
    return slot && live(*slot, now_ms) ? &(*slot)->pub : NULL;
}

size_t
lm_gossip_each(const struct lm_gossip *g, const char *kind, uint64_t now_ms,
               lm_gossip_record_fn *fn, void *arg)
{
    size_t n = 0;
    for (size_t i = 0; i < g->n_origins; i++) {
        const struct origin *o = g->origins[i];
        for (size_t j = 0; j < o->n; j++) {
            const struct rec *x = o->recs[j];
            if (x->pub.withdrawn || !live(x, now_ms) || (kind && strcmp(x->pub.kind, kind) != 0))
                continue;
            n++;
            if (fn)
                fn(arg, &x->pub);
        }
    }
    return n;
}

/* ---- anti-entropy ---- */

static int
dent_cmp(const void *a, const void *b)
{
    const struct dent *x = a, *y = b;
    int c = memcmp(x->pk, y->pk, LM_IDENTITY_PK_BYTES);
    return c ? c : strcmp(x->kind, y->kind);
}

static const struct dent *
dent_find(const struct dent *d, size_t n, const uint8_t pk[LM_IDENTITY_PK_BYTES],
          const char *kind)
{
    struct dent key;
    memcpy(key.pk, pk, sizeof(key.pk));
    memcpy(key.kind, kind, strlen(kind) + 1);
    return n ? bsearch(&key, d, n, sizeof(*d), dent_cmp) : NULL;
}

/* Parses a digest (with_seq) or want payload into entries sorted by
 * (origin, kind), one per pair (the highest seq when repeated). A digest's
 * optional "range" is read into lo/hi; otherwise they span every key.
 * Unknown fields, and extra elements after an entry's own, are ignored:
 * newer nodes may say more. */
static int
parse_entries(const uint8_t *p, size_t n, bool with_seq, struct dent **out, size_t *n_out,
              uint8_t lo[LM_IDENTITY_PK_BYTES], uint8_t hi[LM_IDENTITY_PK_BYTES], char *msg,
              size_t cap)
{
    const char *what = with_seq ? "digest" : "want";
    json_error_t je;
    struct dent *d = NULL;
    size_t nd = 0;
    json_t *root = NULL;

    memset(lo, 0, LM_IDENTITY_PK_BYTES);
    memset(hi, 0xff, LM_IDENTITY_PK_BYTES);
    if (n > LM_GOSSIP_SYNC_MAX) {
        msgf(msg, cap, "%s is %zu bytes, more than %u", what, n, LM_GOSSIP_SYNC_MAX);
        return -EINVAL;
    }
    if (!depth_ok(p, n, LM_GOSSIP_DEPTH_MAX)) {
        msgf(msg, cap, "%s nests deeper than %d levels", what, LM_GOSSIP_DEPTH_MAX);
        return -EINVAL;
    }
    root = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char esc[128];
        lm_escape(esc, sizeof(esc), je.text, strlen(je.text));
        msgf(msg, cap, "%s is not JSON: %s at byte %d", what, esc, je.position);
        return -EINVAL;
    }
    const json_t *entries = json_object_get(root, "entries");
    if (!json_is_object(root) || !json_is_array(entries)) {
        msgf(msg, cap, "%s must be an object with an array \"entries\"", what);
        goto fail;
    }
    const json_t *range = with_seq ? json_object_get(root, "range") : NULL;
    if (range) {
        char a[LM_NODE_ID_LEN + 1], b[LM_NODE_ID_LEN + 1];
        if (!json_is_array(range) || json_array_size(range) != 2 ||
            !node_id_of(json_array_get(range, 0), lo, a) ||
            !node_id_of(json_array_get(range, 1), hi, b) ||
            memcmp(lo, hi, LM_IDENTITY_PK_BYTES) > 0) {
            msgf(msg, cap, "digest range must be [low, high], two node ids in order");
            goto fail;
        }
    }
    size_t ne = json_array_size(entries);
    d = lm_xmalloc((ne ? ne : 1) * sizeof(*d));
    for (size_t i = 0; i < ne; i++) {
        const json_t *e = json_array_get(entries, i);
        struct dent *x = &d[nd];
        if (!json_is_array(e) || json_array_size(e) < (with_seq ? 3u : 2u) ||
            !node_id_of(json_array_get(e, 0), x->pk, x->origin) ||
            !kind_of(json_array_get(e, 1), x->kind) ||
            (with_seq && !uint_of(json_array_get(e, 2), LM_GOSSIP_SEQ_MAX, &x->seq))) {
            msgf(msg, cap, "%s entry %zu must be [origin, kind%s]", what, i,
                 with_seq ? ", seq" : "");
            goto fail;
        }
        if (memcmp(x->pk, lo, LM_IDENTITY_PK_BYTES) < 0 ||
            memcmp(x->pk, hi, LM_IDENTITY_PK_BYTES) > 0) {
            msgf(msg, cap, "digest entry %zu lies outside its range", i);
            goto fail;
        }
        if (!with_seq)
            x->seq = 0;
        nd++;
    }
    json_decref(root);
    if (nd > 1)
        qsort(d, nd, sizeof(*d), dent_cmp);
    size_t w = 0;
    for (size_t i = 0; i < nd; i++) {
        if (w > 0 && dent_cmp(&d[w - 1], &d[i]) == 0) {
            if (d[i].seq > d[w - 1].seq)
                d[w - 1].seq = d[i].seq;
        } else {
            d[w++] = d[i];
        }
    }
    *out = d;
    *n_out = w;
    return 0;
fail:
    free(d);
    json_decref(root);
    return -EINVAL;
}

static void
sync_init(struct lm_gossip_sync *st)
{
    memset(st, 0, sizeof(*st));
}

/* Passes x to send unless the byte budget of this exchange is spent. */
static bool
send_one(const struct rec *x, lm_gossip_record_fn *send, void *arg, struct lm_gossip_sync *st)
{
    if (st->sent_bytes + x->pub.payload_len > LM_GOSSIP_SEND_MAX) {
        st->truncated = true;
        return false;
    }
    st->sent++;
    st->sent_bytes += x->pub.payload_len;
    if (send)
        send(arg, &x->pub);
    return true;
}

static void
pk_decrement(uint8_t pk[LM_IDENTITY_PK_BYTES])
{
    for (size_t i = LM_IDENTITY_PK_BYTES; i-- > 0;)
        if (pk[i]-- != 0)
            break;
}

static size_t
live_count(const struct origin *o, uint64_t now_ms)
{
    size_t c = 0;
    for (size_t j = 0; j < o->n; j++)
        c += live(o->recs[j], now_ms);
    return c;
}

int
lm_gossip_digest(const struct lm_gossip *g, uint64_t now_ms,
                 uint8_t cursor[LM_IDENTITY_PK_BYTES], struct lm_buf *out)
{
    static const uint8_t zero[LM_IDENTITY_PK_BYTES];
    uint8_t hi[LM_IDENTITY_PK_BYTES], next[LM_IDENTITY_PK_BYTES];
    size_t start = origin_lower(g, cursor), end = start, entries = 0;

    /* Whole origins, so that a range says everything we hold inside it. */
    for (; end < g->n_origins; end++) {
        size_t c = live_count(g->origins[end], now_ms);
        if (entries > 0 && entries + c > g->o.digest_entries)
            break;
        entries += c;
    }
    if (end == g->n_origins) {
        memset(hi, 0xff, sizeof(hi));
        memset(next, 0, sizeof(next));
    } else {
        /* Up to just below the next origin, so ranges tile the key space
         * and the peer learns of its records in the gaps too. */
        memcpy(next, g->origins[end]->pk, sizeof(next));
        memcpy(hi, next, sizeof(hi));
        pk_decrement(hi);
    }

    lm_buf_reset(out);
    int rc = lm_buf_puts(out, "{\"entries\":[");
    const char *sep = "";
    for (size_t i = start; rc == 0 && i < end; i++) {
        const struct origin *o = g->origins[i];
        for (size_t j = 0; rc == 0 && j < o->n; j++) {
            const struct rec *x = o->recs[j];
            if (!live(x, now_ms))
                continue;
            rc = lm_buf_printf(out, "%s[\"%s\",\"%s\",%llu]", sep, o->id, x->pub.kind,
                               (unsigned long long)x->pub.seq);
            sep = ",";
        }
    }
    if (rc == 0)
        rc = lm_buf_puts(out, "]");
    if (rc == 0 && (memcmp(cursor, zero, sizeof(zero)) != 0 || end < g->n_origins)) {
        char a[LM_NODE_ID_LEN + 1], b[LM_NODE_ID_LEN + 1];
        lm_hex_encode(a, cursor, LM_IDENTITY_PK_BYTES);
        lm_hex_encode(b, hi, LM_IDENTITY_PK_BYTES);
        rc = lm_buf_printf(out, ",\"range\":[\"%s\",\"%s\"]", a, b);
    }
    if (rc == 0)
        rc = lm_buf_puts(out, "}");
    if (rc < 0) {
        lm_buf_reset(out);
        return -E2BIG;
    }
    memcpy(cursor, next, LM_IDENTITY_PK_BYTES);
    return 0;
}

/* Whether a record we lack could be stored at all: asking for what the
 * caps will refuse would repeat the same exchange every round. */
static bool
could_store(const struct lm_gossip *g, const struct dent *d, size_t pending_new)
{
    if (g->o.allow && !g->o.allow(g->o.allow_arg, d->origin))
        return false;
    const struct origin *o = origin_find(g, d->pk);
    for (size_t j = 0; o && j < o->n; j++)
        if (strcmp(o->recs[j]->pub.kind, d->kind) == 0)
            return true; /* an update: always worth a try */
    if (o && o->n >= g->o.max_per_origin)
        return false;
    return g->records + pending_new < g->o.max_records && g->bytes < g->o.max_bytes;
}

int
lm_gossip_compare(const struct lm_gossip *g, const uint8_t *digest, size_t n, uint64_t now_ms,
                  lm_gossip_record_fn *send, void *arg, struct lm_buf *want,
                  struct lm_gossip_sync *st)
{
    struct dent *d;
    size_t nd;
    uint8_t lo[LM_IDENTITY_PK_BYTES], hi[LM_IDENTITY_PK_BYTES];

    sync_init(st);
    lm_buf_reset(want);
    int rc = parse_entries(digest, n, true, &d, &nd, lo, hi, st->message, sizeof(st->message));
    if (rc < 0)
        return rc;

    /* What we lack, first: it is the one part that can fail (want's limit),
     * and send must not have run when we return an error. */
    size_t pending_new = 0;
    for (size_t i = 0; i < nd; i++) {
        struct rec **slot = slot_find(origin_find(g, d[i].pk), d[i].kind);
        bool have = slot && live(*slot, now_ms);
        if ((have && (*slot)->pub.seq >= d[i].seq) || !could_store(g, &d[i], pending_new))
            continue;
        if (st->wanted == LM_GOSSIP_WANT_ENTRIES) {
            st->truncated = true;
            break;
        }
        rc = lm_buf_printf(want, "%s[\"%s\",\"%s\"]", st->wanted ? "," : "{\"entries\":[",
                           d[i].origin, d[i].kind);
        if (rc < 0)
            break;
        st->wanted++;
        pending_new += slot == NULL;
    }
    if (rc == 0 && st->wanted > 0)
        rc = lm_buf_puts(want, "]}");
    if (rc < 0) {
        lm_buf_reset(want);
        msgf(st->message, sizeof(st->message), "the want payload does not fit its buffer");
        st->wanted = 0;
        free(d);
        return -E2BIG;
    }

    /* What the peer lacks, within the range its digest speaks for. */
    bool more = true;
    for (size_t i = origin_lower(g, lo); more && i < g->n_origins; i++) {
        const struct origin *o = g->origins[i];
        if (memcmp(o->pk, hi, LM_IDENTITY_PK_BYTES) > 0)
            break;
        for (size_t j = 0; more && j < o->n; j++) {
            const struct rec *x = o->recs[j];
            if (!live(x, now_ms))
                continue;
            const struct dent *e = dent_find(d, nd, o->pk, x->pub.kind);
            if (!e || e->seq < x->pub.seq)
                more = send_one(x, send, arg, st);
        }
    }
    free(d);
    return 0;
}

int
lm_gossip_want(const struct lm_gossip *g, const uint8_t *want, size_t n, uint64_t now_ms,
               lm_gossip_record_fn *send, void *arg, struct lm_gossip_sync *st)
{
    struct dent *d;
    size_t nd;
    uint8_t lo[LM_IDENTITY_PK_BYTES], hi[LM_IDENTITY_PK_BYTES];

    sync_init(st);
    int rc = parse_entries(want, n, false, &d, &nd, lo, hi, st->message, sizeof(st->message));
    if (rc < 0)
        return rc;
    /* parse_entries made the pairs unique: each record goes once. */
    for (size_t i = 0; i < nd; i++) {
        struct rec **slot = slot_find(origin_find(g, d[i].pk), d[i].kind);
        if (slot && live(*slot, now_ms) && !send_one(*slot, send, arg, st))
            break;
    }
    free(d);
    return 0;
}

/* ---- counts ---- */

void
lm_gossip_stats(const struct lm_gossip *g, struct lm_gossip_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->records = g->records;
    out->withdrawn = g->withdrawn;
    out->origins = g->n_origins;
    memcpy(out->by_kind, g->by_kind, sizeof(out->by_kind));
    out->payload_bytes = g->payload_bytes;
    out->bytes = g->bytes;
    memcpy(out->offers, g->offers, sizeof(out->offers));
}

static void
family(struct lm_buf *out, const char *name, const char *type, const char *help)
{
    lm_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
lm_gossip_metrics(const struct lm_gossip *g, struct lm_buf *out)
{
    family(out, "labman_gossip_records", "gauge",
           "Gossip records stored, tombstones included, by kind.");
    for (int k = 0; k < LM_GOSSIP_KIND_N; k++)
        lm_buf_printf(out, "labman_gossip_records{kind=\"%s\"} %zu\n", kind_names[k],
                      g->by_kind[k]);
    family(out, "labman_gossip_tombstones", "gauge", "Withdrawn records kept until their TTL.");
    lm_buf_printf(out, "labman_gossip_tombstones %zu\n", g->withdrawn);
    family(out, "labman_gossip_origins", "gauge", "Nodes with records in the gossip store.");
    lm_buf_printf(out, "labman_gossip_origins %zu\n", g->n_origins);
    family(out, "labman_gossip_bytes", "gauge",
           "Memory charged to the gossip store (payloads, parsed JSON), against its cap.");
    lm_buf_printf(out, "labman_gossip_bytes %zu\n", g->bytes);
    family(out, "labman_gossip_payload_bytes", "gauge", "Bytes of stored record payloads.");
    lm_buf_printf(out, "labman_gossip_payload_bytes %zu\n", g->payload_bytes);
    family(out, "labman_gossip_offers_total", "counter",
           "Gossip records received from peers, by outcome.");
    for (int s = 0; s < LM_GOSSIP_STATUS_N; s++)
        lm_buf_printf(out, "labman_gossip_offers_total{result=\"%s\"} %llu\n", status_codes[s],
                      (unsigned long long)g->offers[s]);
}
