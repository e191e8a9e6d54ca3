/* auth: who may use the gateway, and how much. Owns: API keys (only their
 * SHA-256 is ever held), per-key model allow-lists, and the rpm / tpm /
 * max_concurrent limits with the Retry-After each refusal carries. */
#ifndef LM_AUTH_H
#define LM_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

struct lm_auth;
struct lm_auth_key; /* one [[gateway.keys]] entry with its live counters */

enum lm_auth_verdict {
    LM_AUTH_OK,
    LM_AUTH_MISSING,     /* 401: no "Authorization: Bearer" */
    LM_AUTH_BAD_KEY,     /* 401: no key has that hash */
    LM_AUTH_FORBIDDEN,   /* 403: model not in the key's allow-list */
    LM_AUTH_RATE,        /* 429: rpm spent; retry_after_s set */
    LM_AUTH_TOKENS,      /* 429: tpm spent; retry_after_s set */
    LM_AUTH_CONCURRENCY, /* 429: max_concurrent in flight; retry_after_s set */
    LM_AUTH_UNAVAILABLE, /* 503: auth = "fep" is not available in this version */
};

/* Longest bearer token looked at; a longer one is LM_AUTH_BAD_KEY unhashed. */
#define LM_AUTH_TOKEN_MAX 1024

struct lm_auth_result {
    enum lm_auth_verdict verdict;
    struct lm_auth_key *key; /* set for OK and for the limit verdicts */
    unsigned retry_after_s;
    const char *message; /* for the client, in OpenAI's error "message"; valid
                          * until the next lm_auth_check on the same lm_auth */
};

/* Built from cfg->gateway (auth mode and keys). auth = "none" admits all. */
struct lm_auth *lm_auth_new(const struct lm_config *cfg);
void lm_auth_free(struct lm_auth *a);
/* SIGHUP: keys added/removed/changed; counters of keys that stay (same
 * name and hash) are kept, so a reload does not reset anyone's limits. */
void lm_auth_reconfigure(struct lm_auth *a, const struct lm_config *cfg);

/* Looks the bearer token up (by SHA-256, constant-time compare) and checks
 * the allow-list, rpm, tpm and concurrency for model. now_ms is monotonic.
 * authorization is the raw header value or NULL. On LM_AUTH_OK the request
 * is counted (rpm and one concurrent slot): call lm_auth_finish once.
 * model NULL (a listing such as /v1/models) skips the allow-list; an
 * "@node" pin is not part of the name the allow-list sees. */
void lm_auth_check(struct lm_auth *a, const char *authorization, const char *model,
                   uint64_t now_ms, struct lm_auth_result *out);
/* The request ended: frees its concurrent slot and charges its tokens to tpm.
 * key NULL (auth = "none") does nothing. A key removed by a reload stays
 * alive until its last in-flight request has finished here; lm_auth_free
 * must come after every request has finished. */
void lm_auth_finish(struct lm_auth *a, struct lm_auth_key *key, uint64_t tokens, uint64_t now_ms);

/* For logs and metrics: the key's configured name; "-" for NULL. */
const char *lm_auth_key_name(const struct lm_auth_key *key);
/* Requests of this key now in flight (for metrics and tests). */
unsigned lm_auth_key_in_flight(const struct lm_auth_key *key);

/* How a refusal is answered, in OpenAI's error shape: HTTP status, "type"
 * and "code" (LM_AUTH_OK gives 200, NULL, NULL). One table, so the gateway
 * and the docs cannot drift apart. */
int lm_auth_http_status(enum lm_auth_verdict v);
const char *lm_auth_error_type(enum lm_auth_verdict v);
const char *lm_auth_error_code(enum lm_auth_verdict v);

/* A fresh random key ("lm-" + 43 base64url chars) and its lowercase hex
 * SHA-256, for `labman key new`. */
void lm_auth_key_generate(char key[64], char sha256_hex[65]);
void lm_auth_sha256_hex(const char *s, size_t len, char out[65]);

#endif
