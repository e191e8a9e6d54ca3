/* endpoints: the local LLM runtimes this node serves from. Owns: the
 * registry (configured + discovered), kind detection, per-kind health and
 * model discovery on a jittered timer, the model catalogue, selection of an
 * endpoint for a request, the bounded wait queue, and circuit breakers. */
#ifndef LM_ENDPOINTS_H
#define LM_ENDPOINTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>

#include "config/config.h"
#include "upstream/upstream.h"

#define LM_ENDPOINTS_MAX 64           /* configured + discovered */
#define LM_ENDPOINT_MAX_MODELS 256    /* per endpoint; more are ignored with a log line */
#define LM_ENDPOINTS_CHECK_MS 10000   /* health/discovery period, ±20% jitter */
#define LM_ENDPOINTS_QUEUE_MAX 256    /* waiters across all models */
#define LM_BREAKER_FAILURES 5         /* consecutive failures that open a circuit */
#define LM_BREAKER_OPEN_MS 10000      /* open → half-open after this */

enum lm_breaker { LM_BREAKER_CLOSED, LM_BREAKER_OPEN, LM_BREAKER_HALF_OPEN };

struct lm_model {
    char *id;          /* as the runtime names it, e.g. "llama3.2:1b" */
    char *alias;       /* e.g. "llama3" for "llama3:latest"; NULL when none */
    char *digest;      /* "sha256:…" where known, else NULL */
    char *family;      /* NULL when unknown */
    char *param_size;  /* "1.2B", NULL when unknown */
    char *quant;       /* "Q4_K_M", NULL when unknown */
    int64_t context_length; /* 0 when unknown */
    bool loaded;       /* in memory now (false = on disk only) */
};

struct lm_endpoint {
    char *name;  /* from config, or "discovered-<port>" */
    char *url;   /* server root without trailing '/', e.g. "http://127.0.0.1:11434" */
    enum lm_endpoint_kind kind; /* detected when configured as auto */
    bool discovered;
    bool share;
    int max_concurrent;
    char *api_key_env; /* "" = none; the key itself is read from the environment */

    bool healthy;  /* answered the last check */
    bool loading;  /* llama.cpp 503 "loading" and the like: up, but not serving */
    char *last_error; /* NULL when the last check passed */
    uint64_t last_check_ms; /* monotonic, 0 = never */
    int free_slots; /* from the runtime (llama.cpp /slots); -1 unknown */
    int runtime_running, runtime_waiting; /* vLLM /metrics; -1 unknown */

    unsigned in_flight; /* requests labman has running on it now */
    enum lm_breaker breaker;
    unsigned consecutive_failures;
    uint64_t requests_total, failures_total;

    struct lm_model *models; /* after include/exclude filtering */
    size_t n_models;
};

/* A taken place on an endpoint; give it back with lm_endpoints_release. */
struct lm_slot {
    struct lm_endpoint *ep;
    const char *model_id; /* the runtime's name for the requested model */
};

enum lm_outcome {
    LM_OUTCOME_OK,       /* answered (any 2xx/4xx that is the client's fault) */
    LM_OUTCOME_FAILED,   /* connect error, 5xx, 429, timeout, broken stream */
    LM_OUTCOME_CANCELED, /* the client left; says nothing about the endpoint */
};

struct lm_endpoints;
struct lm_endpoints_waiter;

int lm_endpoints_new(struct lm_endpoints **out, struct event_base *base, struct lm_upstream *up,
                     const struct lm_config *cfg);
void lm_endpoints_free(struct lm_endpoints *r);
/* SIGHUP: endpoints added, removed or changed. In-flight requests on a
 * removed endpoint finish; it is freed after its last release. */
void lm_endpoints_reconfigure(struct lm_endpoints *r, const struct lm_config *cfg);

/* Runs every check now (tests, `labman endpoints --refresh`). */
void lm_endpoints_check_now(struct lm_endpoints *r);
/* Called once after the first round of checks has finished (readiness). */
void lm_endpoints_on_first_round(struct lm_endpoints *r, void (*fn)(void *arg), void *arg);

size_t lm_endpoints_count(const struct lm_endpoints *r);
const struct lm_endpoint *lm_endpoints_at(const struct lm_endpoints *r, size_t i);

/* True when some healthy endpoint serves model (by id or alias). */
bool lm_endpoints_has_model(const struct lm_endpoints *r, const char *model);

/* Takes a slot for model: healthy, circuit not open, under max_concurrent,
 * loaded before on-disk, least in-flight, then round robin. skip lists
 * endpoints already tried for this request (failover). Returns 0 with *out,
 * -ENOENT when no endpoint (outside skip) serves the model, -EAGAIN when
 * some do but all are full or their circuits are open. */
int lm_endpoints_acquire(struct lm_endpoints *r, const char *model,
                         const struct lm_endpoint *const *skip, size_t n_skip,
                         struct lm_slot *out);
/* Gives the slot back; the outcome feeds the circuit breaker, and a failure
 * triggers an immediate re-check of that endpoint. Wakes a waiter. */
void lm_endpoints_release(struct lm_endpoints *r, struct lm_slot *slot, enum lm_outcome outcome);

/* Waits for a slot for model: fn runs (once) when a slot may have become
 * free; it should call lm_endpoints_acquire again and wait again if that
 * still says -EAGAIN. -EAGAIN when the queue is full. The caller keeps its
 * own deadline and cancels on timeout or client disconnect. */
typedef void lm_endpoints_wait_fn(void *arg);
int lm_endpoints_wait(struct lm_endpoints *r, const char *model, lm_endpoints_wait_fn *fn,
                      void *arg, struct lm_endpoints_waiter **out);
void lm_endpoints_wait_cancel(struct lm_endpoints_waiter *w);
size_t lm_endpoints_queue_depth(const struct lm_endpoints *r);

/* Extra request headers for an endpoint ("Authorization: Bearer …" from
 * api_key_env), NULL when none. Never logged. */
const char *lm_endpoints_auth_header(const struct lm_endpoint *ep);

/* JSON for the admin API and `labman endpoints` / `labman models`. */
json_t *lm_endpoints_json(const struct lm_endpoints *r);
json_t *lm_endpoints_models_json(const struct lm_endpoints *r);
/* Prometheus families: labman_endpoint_up, _loading, _in_flight, _models,
 * _circuit_state, _requests_total, _failures_total, labman_queue_depth. */
struct lm_buf;
void lm_endpoints_metrics(const struct lm_endpoints *r, struct lm_buf *out);

const char *lm_breaker_name(enum lm_breaker b);

#endif
