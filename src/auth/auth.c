#include "auth/auth.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#define LM_LOG_MODULE "auth"
#include "log/log.h"

/* Limits count over a sliding 60 s window kept as a ring of 60 one-second
 * buckets. Unlike a token bucket it answers exactly what "60 requests per
 * minute" promises an operator (no burst refill arithmetic), tokens charged
 * after the fact fit in as they are, its memory is fixed, and Retry-After
 * is exact: the time until the oldest buckets leave the window. The price
 * is a granularity of one second. */
#define WINDOW_S 60

struct bucket {
    uint64_t sec; /* which second (now_ms / 1000) the count belongs to */
    uint64_t n;
};

struct window {
    struct bucket b[WINDOW_S];
};

struct lm_auth_key {
    char *name;
    uint8_t hash[crypto_hash_sha256_BYTES];
    struct lm_strv models; /* globs; empty = all */
    int64_t rpm, tpm, max_concurrent; /* 0 = unlimited */
    unsigned in_flight;
    struct window requests, tokens;
    /* Removed by a reload while requests were in flight: kept on the
     * retired list until lm_auth_finish has seen the last of them. */
    bool retired;
    struct lm_auth_key *next_retired;
};

struct lm_auth {
    enum lm_auth_mode mode;
    /* Open addressing on the first bytes of the hash (uniform: it is a
     * SHA-256), capacity a power of two at least twice the key count. */
    struct lm_auth_key **slots;
    size_t cap, n;
    struct lm_auth_key *retired;
    char msg[384]; /* the message of the last refusal */
};

/* ---- windows ---- */

static void
window_add(struct window *w, uint64_t now_ms, uint64_t n)
{
    uint64_t sec = now_ms / 1000;
    struct bucket *b = &w->b[sec % WINDOW_S];
    /* A bucket from a later second (the caller's clock stepped back a
     * little) keeps its count: counting longer errs on the safe side. */
    if (b->sec < sec) {
        b->sec = sec;
        b->n = 0;
    }
    b->n = n > UINT64_MAX - b->n ? UINT64_MAX : b->n + n;
}

static uint64_t
window_sum(const struct window *w, uint64_t now_ms)
{
    uint64_t sec = now_ms / 1000, sum = 0;
    for (size_t i = 0; i < WINDOW_S; i++) {
        const struct bucket *b = &w->b[i];
        if (b->n && b->sec + WINDOW_S > sec)
            sum = b->n > UINT64_MAX - sum ? UINT64_MAX : sum + b->n;
    }
    return sum;
}

/* Seconds until at least `need` counted units have left the window,
 * rounded up, at least 1. */
static unsigned
window_retry_after(const struct window *w, uint64_t now_ms, uint64_t need)
{
    uint64_t sec = now_ms / 1000, freed = 0;
    uint64_t first = sec >= WINDOW_S - 1 ? sec - (WINDOW_S - 1) : 0;
    for (uint64_t s = first; s <= sec; s++) {
        const struct bucket *b = &w->b[s % WINDOW_S];
        if (b->sec != s)
            continue;
        freed += b->n;
        if (freed >= need) {
            uint64_t ms = (s + WINDOW_S) * 1000 - now_ms;
            uint64_t r = (ms + 999) / 1000;
            return r < 1 ? 1 : (unsigned)r;
        }
    }
    /* Only counts dated after now remain (a clock step): a whole window. */
    return WINDOW_S;
}

/* ---- keys ---- */

static struct lm_auth_key *
key_new(const struct lm_cfg_key *ck, const uint8_t hash[crypto_hash_sha256_BYTES])
{
    struct lm_auth_key *k = lm_xcalloc(1, sizeof(*k));
    k->name = lm_xstrdup(ck->name);
    memcpy(k->hash, hash, sizeof(k->hash));
    return k;
}

static void
key_set_limits(struct lm_auth_key *k, const struct lm_cfg_key *ck)
{
    for (size_t i = 0; i < k->models.n; i++)
        free(k->models.v[i]);
    free(k->models.v);
    k->models.v = NULL;
    k->models.n = ck->models.n;
    if (ck->models.n) {
        k->models.v = lm_xcalloc(ck->models.n, sizeof(char *));
        for (size_t i = 0; i < ck->models.n; i++)
            k->models.v[i] = lm_xstrdup(ck->models.v[i]);
    }
    k->rpm = ck->rpm;
    k->tpm = ck->tpm;
    k->max_concurrent = ck->max_concurrent;
}

static void
key_free(struct lm_auth_key *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->models.n; i++)
        free(k->models.v[i]);
    free(k->models.v);
    free(k->name);
    free(k);
}

static size_t
slot_of(const uint8_t *hash, size_t cap)
{
    uint64_t h;
    memcpy(&h, hash, sizeof(h));
    return (size_t)(h & (cap - 1));
}

/* The key with this hash, or NULL. Every probed slot is compared in
 * constant time, so the time taken says nothing about how close a guess
 * came to a configured hash. */
static struct lm_auth_key *
table_find(struct lm_auth_key *const *slots, size_t cap, const uint8_t *hash)
{
    size_t i = cap ? slot_of(hash, cap) : 0;
    /* The table is never full (cap >= 2n), so an empty slot ends every probe. */
    for (size_t probes = 0; probes < cap; probes++) {
        struct lm_auth_key *k = slots[i];
        if (!k)
            return NULL;
        if (sodium_memcmp(k->hash, hash, sizeof(k->hash)) == 0)
            return k;
        i = (i + 1) & (cap - 1);
    }
    return NULL;
}

static void
table_put(struct lm_auth_key **slots, size_t cap, struct lm_auth_key *k)
{
    size_t i = slot_of(k->hash, cap);
    while (slots[i])
        i = (i + 1) & (cap - 1);
    slots[i] = k;
}

static void
retire(struct lm_auth *a, struct lm_auth_key *k)
{
    if (k->in_flight == 0) {
        key_free(k);
        return;
    }
    k->retired = true;
    k->next_retired = a->retired;
    a->retired = k;
}

static void
unretire_free(struct lm_auth *a, struct lm_auth_key *k)
{
    for (struct lm_auth_key **pp = &a->retired; *pp; pp = &(*pp)->next_retired) {
        if (*pp == k) {
            *pp = k->next_retired;
            key_free(k);
            return;
        }
    }
}

static void
sodium_ready(void)
{
    /* Idempotent; failing means no usable randomness, like an allocation
     * failure there is nothing sensible to go on with. */
    if (sodium_init() < 0) {
        fprintf(stderr, "labman: libsodium cannot be initialised\n");
        abort();
    }
}

/* ---- lifecycle ---- */

struct lm_auth *
lm_auth_new(const struct lm_config *cfg)
{
    struct lm_auth *a = lm_xcalloc(1, sizeof(*a));
    sodium_ready();
    lm_auth_reconfigure(a, cfg);
    return a;
}

void
lm_auth_free(struct lm_auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->cap; i++)
        key_free(a->slots[i]);
    free(a->slots);
    while (a->retired) {
        struct lm_auth_key *k = a->retired;
        a->retired = k->next_retired;
        key_free(k);
    }
    free(a);
}

void
lm_auth_reconfigure(struct lm_auth *a, const struct lm_config *cfg)
{
    size_t n = cfg->gateway.auth == LM_AUTH_KEYS ? cfg->gateway.n_keys : 0;
    size_t cap = 0, kept = 0, added = 0, removed = 0;
    struct lm_auth_key **slots = NULL;

    if (n) {
        cap = 4;
        while (cap < 2 * n)
            cap *= 2;
        slots = lm_xcalloc(cap, sizeof(*slots));
    }
    for (size_t i = 0; i < n; i++) {
        const struct lm_cfg_key *ck = &cfg->gateway.keys[i];
        uint8_t hash[crypto_hash_sha256_BYTES];
        /* config has checked the 64 hex digits and unique names/hashes. */
        if (lm_hex_decode(hash, sizeof(hash), ck->key_sha256) < 0 || !ck->name ||
            table_find(slots, cap, hash)) {
            log_warn("key \"%s\" skipped: its key_sha256 is invalid or repeated",
                     ck->name ? ck->name : "?");
            continue;
        }
        struct lm_auth_key *k = table_find(a->slots, a->cap, hash);
        if (k && strcmp(k->name, ck->name) == 0) {
            kept++; /* same name and hash: the same key, counters and all */
        } else {
            k = key_new(ck, hash);
            added++;
        }
        key_set_limits(k, ck);
        table_put(slots, cap, k);
    }
    /* The old table is only read above (clearing its slots would cut the
     * probe chains); what the new one did not take over goes now. */
    for (size_t i = 0; i < a->cap; i++) {
        struct lm_auth_key *k = a->slots[i];
        if (k && table_find(slots, cap, k->hash) != k) {
            retire(a, k);
            removed++;
        }
    }
    free(a->slots);
    a->slots = slots;
    a->cap = cap;
    a->n = kept + added;
    if (a->mode != cfg->gateway.auth || n || removed)
        log_info("gateway auth = \"%s\": %zu key%s (%zu kept with their counters, %zu new, "
                 "%zu removed)", lm_config_auth_name(cfg->gateway.auth), a->n,
                 a->n == 1 ? "" : "s", kept, added, removed);
    if (cfg->gateway.auth == LM_AUTH_FEP && a->mode != LM_AUTH_FEP)
        log_warn("gateway auth = \"fep\" is not available in this version: every API "
                 "request is answered 503 until auth is \"none\" or \"keys\"");
    a->mode = cfg->gateway.auth;
}

/* ---- checks ---- */

static bool
model_allowed(const struct lm_auth_key *k, const char *model)
{
    if (!model || k->models.n == 0)
        return true;
    char name[512];
    const char *at = strrchr(model, '@');
    size_t len = at ? (size_t)(at - model) : strlen(model);
    if (len >= sizeof(name))
        return false; /* no runtime names a model like that */
    memcpy(name, model, len);
    name[len] = '\0';
    for (size_t i = 0; i < k->models.n; i++)
        if (fnmatch(k->models.v[i], name, 0) == 0)
            return true;
    return false;
}

/* Finds the token of "Bearer <token>": the scheme in any case, then
 * blanks, then visible ASCII up to trailing blanks. */
static int
bearer_token(const char *h, const char **tok, size_t *len)
{
    while (*h == ' ' || *h == '\t')
        h++;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return -1;
    h += 6;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t n = 0;
    while (h[n] > ' ' && h[n] < 0x7f)
        n++;
    for (size_t i = n; h[i]; i++)
        if (h[i] != ' ' && h[i] != '\t')
            return -1;
    if (n == 0)
        return -1;
    *tok = h;
    *len = n;
    return 0;
}

static void
refuse(struct lm_auth *a, struct lm_auth_result *out, enum lm_auth_verdict v,
       struct lm_auth_key *k, unsigned retry_after_s)
{
    out->verdict = v;
    out->key = k;
    out->retry_after_s = retry_after_s;
    out->message = a->msg;
}

void
lm_auth_check(struct lm_auth *a, const char *authorization, const char *model,
              uint64_t now_ms, struct lm_auth_result *out)
{
    memset(out, 0, sizeof(*out));
    a->msg[0] = '\0';
    out->message = a->msg;

    if (a->mode == LM_AUTH_NONE) {
        out->verdict = LM_AUTH_OK;
        return;
    }
    if (a->mode == LM_AUTH_FEP) {
        snprintf(a->msg, sizeof(a->msg),
                 "this gateway is configured with auth = \"fep\", which this version of labman "
                 "does not support yet; ask its operator to use auth = \"none\" or \"keys\"");
        refuse(a, out, LM_AUTH_UNAVAILABLE, NULL, 0);
        return;
    }

    const char *tok;
    size_t len;
    if (!authorization || !*authorization) {
        snprintf(a->msg, sizeof(a->msg),
                 "no API key: send it in an Authorization header, as \"Authorization: Bearer "
                 "<key>\"");
        refuse(a, out, LM_AUTH_MISSING, NULL, 0);
        return;
    }
    if (bearer_token(authorization, &tok, &len) < 0) {
        snprintf(a->msg, sizeof(a->msg),
                 "malformed Authorization header: expected \"Bearer <key>\"");
        refuse(a, out, LM_AUTH_MISSING, NULL, 0);
        return;
    }
    struct lm_auth_key *k = NULL;
    if (len <= LM_AUTH_TOKEN_MAX) {
        uint8_t hash[crypto_hash_sha256_BYTES];
        crypto_hash_sha256(hash, (const unsigned char *)tok, len);
        k = table_find(a->slots, a->cap, hash);
    }
    if (!k) {
        snprintf(a->msg, sizeof(a->msg), "invalid API key");
        refuse(a, out, LM_AUTH_BAD_KEY, NULL, 0);
        return;
    }
    if (!model_allowed(k, model)) {
        snprintf(a->msg, sizeof(a->msg), "key \"%s\" may not use model \"%.200s\"", k->name,
                 model);
        refuse(a, out, LM_AUTH_FORBIDDEN, k, 0);
        return;
    }
    if (k->rpm > 0) {
        uint64_t used = window_sum(&k->requests, now_ms);
        if (used >= (uint64_t)k->rpm) {
            unsigned r = window_retry_after(&k->requests, now_ms, used - (uint64_t)k->rpm + 1);
            snprintf(a->msg, sizeof(a->msg),
                     "rate limit of %lld requests per minute reached for key \"%s\"; retry "
                     "after %u s", (long long)k->rpm, k->name, r);
            refuse(a, out, LM_AUTH_RATE, k, r);
            return;
        }
    }
    if (k->tpm > 0) {
        uint64_t used = window_sum(&k->tokens, now_ms);
        if (used >= (uint64_t)k->tpm) {
            unsigned r = window_retry_after(&k->tokens, now_ms, used - (uint64_t)k->tpm + 1);
            snprintf(a->msg, sizeof(a->msg),
                     "token limit of %lld tokens per minute reached for key \"%s\" (%llu used "
                     "in the last minute); retry after %u s", (long long)k->tpm, k->name,
                     (unsigned long long)used, r);
            refuse(a, out, LM_AUTH_TOKENS, k, r);
            return;
        }
    }
    if (k->max_concurrent > 0 && (int64_t)k->in_flight >= k->max_concurrent) {
        /* A slot frees when a running request ends, which nobody can
         * foresee; one second is the shortest Retry-After there is. */
        snprintf(a->msg, sizeof(a->msg),
                 "concurrency limit of %lld request%s at once reached for key \"%s\"; retry "
                 "after 1 s", (long long)k->max_concurrent, k->max_concurrent == 1 ? "" : "s",
                 k->name);
        refuse(a, out, LM_AUTH_CONCURRENCY, k, 1);
        return;
    }
    window_add(&k->requests, now_ms, 1);
    k->in_flight++;
    out->verdict = LM_AUTH_OK;
    out->key = k;
}

void
lm_auth_finish(struct lm_auth *a, struct lm_auth_key *key, uint64_t tokens, uint64_t now_ms)
{
    if (!key)
        return;
    if (key->in_flight == 0) {
        log_warn("key \"%s\": a request finished twice (ignored)", key->name);
        return;
    }
    key->in_flight--;
    if (tokens)
        window_add(&key->tokens, now_ms, tokens);
    if (key->retired && key->in_flight == 0)
        unretire_free(a, key);
}

const char *
lm_auth_key_name(const struct lm_auth_key *key)
{
    return key ? key->name : "-";
}

unsigned
lm_auth_key_in_flight(const struct lm_auth_key *key)
{
    return key ? key->in_flight : 0;
}

int
lm_auth_http_status(enum lm_auth_verdict v)
{
    switch (v) {
    case LM_AUTH_OK:
        return 200;
    case LM_AUTH_MISSING:
    case LM_AUTH_BAD_KEY:
        return 401;
    case LM_AUTH_FORBIDDEN:
        return 403;
    case LM_AUTH_RATE:
    case LM_AUTH_TOKENS:
    case LM_AUTH_CONCURRENCY:
        return 429;
    case LM_AUTH_UNAVAILABLE:
        return 503;
    }
    return 500;
}

const char *
lm_auth_error_type(enum lm_auth_verdict v)
{
    switch (v) {
    case LM_AUTH_OK:
        return NULL;
    case LM_AUTH_MISSING:
    case LM_AUTH_BAD_KEY:
        return "invalid_request_error";
    case LM_AUTH_FORBIDDEN:
        return "permission_error";
    case LM_AUTH_RATE:
    case LM_AUTH_CONCURRENCY:
        return "requests";
    case LM_AUTH_TOKENS:
        return "tokens";
    case LM_AUTH_UNAVAILABLE:
        return "server_error";
    }
    return "server_error";
}

const char *
lm_auth_error_code(enum lm_auth_verdict v)
{
    switch (v) {
    case LM_AUTH_OK:
        return NULL;
    case LM_AUTH_MISSING:
        return "missing_api_key";
    case LM_AUTH_BAD_KEY:
        return "invalid_api_key";
    case LM_AUTH_FORBIDDEN:
        return "model_not_allowed";
    case LM_AUTH_RATE:
    case LM_AUTH_TOKENS:
        return "rate_limit_exceeded";
    case LM_AUTH_CONCURRENCY:
        return "concurrency_limit_exceeded";
    case LM_AUTH_UNAVAILABLE:
        return "auth_unavailable";
    }
    return "internal_error";
}

/* ---- keys for operators ---- */

void
lm_auth_sha256_hex(const char *s, size_t len, char out[65])
{
    uint8_t hash[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(hash, (const unsigned char *)s, len);
    lm_hex_encode(out, hash, sizeof(hash));
}

void
lm_auth_key_generate(char key[64], char sha256_hex[65])
{
    uint8_t raw[32];
    sodium_ready();
    randombytes_buf(raw, sizeof(raw));
    memcpy(key, "lm-", 3);
    sodium_bin2base64(key + 3, 64 - 3, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
    lm_auth_sha256_hex(key, strlen(key), sha256_hex);
}
