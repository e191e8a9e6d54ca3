/* endpoints internals shared by endpoints.c, probe.c and the unit tests:
 * the per-endpoint state behind struct lm_endpoint, the pure parsers of the
 * runtimes' answers, and the catalogue helpers. Not for other modules. */
#ifndef LM_ENDPOINTS_INTERNAL_H
#define LM_ENDPOINTS_INTERNAL_H

#include "endpoints/endpoints.h"

#define LM_PROBE_CONNECT_MS 1000
#define LM_PROBE_TOTAL_MS 3000
#define LM_PROBE_MAX_BYTES (4u << 20)
#define LM_PROBE_ERR_MAX 256
#define LM_MODEL_ID_MAX 256        /* longer model ids are skipped */
#define LM_MODEL_FIELD_MAX 128     /* longer family/quant/... are dropped */
#define LM_OLLAMA_SHOW_PER_CHECK 8 /* /api/show calls per check, for context length */
#define LM_CHECK_RETRY_MIN_MS 250  /* first retry after a failed check */
#define LM_RECHECK_MIN_GAP_MS 200  /* failures re-check at most this often */
#define LM_DISCOVERY_GONE_CHECKS 3 /* a discovered endpoint leaves after this many periods */

/* What one check found; probe.c fills it, endpoints.c applies it. */
struct lm_probe_result {
    bool ok;      /* answered as a runtime */
    bool loading; /* up, but not serving yet */
    char err[LM_PROBE_ERR_MAX];
    enum lm_endpoint_kind kind; /* detected or configured */
    bool models_known;          /* false: keep the previous catalogue */
    struct lm_model *models;    /* unfiltered, owned */
    size_t n_models;
    bool truncated;                   /* the runtime listed more than LM_ENDPOINT_MAX_MODELS */
    int free_slots, running, waiting; /* -1 unknown */
};

void lm_probe_result_init(struct lm_probe_result *res);
void lm_probe_result_clear(struct lm_probe_result *res);
void lm_probe_result_fail(struct lm_probe_result *res, const char *fmt, ...) LM_PRINTF(2, 3);

/* The state behind a struct lm_endpoint (pub comes first). */
struct lm_ep {
    struct lm_endpoint pub;
    struct lm_endpoints *r;
    enum lm_endpoint_kind cfg_kind;
    bool detected; /* pub.kind came from answers (or config); false = detect next */
    bool listed;   /* visible through lm_endpoints_at and selectable */
    bool removed;  /* gone from the config: freed after its last release */
    bool checked;  /* at least one check finished */
    int port;      /* discovery scanners: the port scanned */
    struct lm_strv include, exclude;
    char *auth; /* "Authorization: Bearer …" or NULL; never logged */

    struct event *timer;         /* next check */
    struct event *breaker_timer; /* open → half-open */
    struct lm_probe *probe;      /* the check running now, NULL when none */
    uint64_t check_started_ms;
    uint64_t last_ok_ms;
    unsigned check_failures;     /* consecutive failed checks (retry backoff) */
    bool trial_out;              /* half-open: the one trial request is out */
    uint64_t last_pick;          /* round robin: lower = picked longer ago */
    unsigned in_flight_at_check; /* our requests when free_slots was read */

    char **retired; /* model ids a slot may still point at */
    size_t n_retired;
};

static inline struct lm_ep *
lm_ep_of(const struct lm_endpoint *e)
{
    return (struct lm_ep *)e;
}

/* Catalogue helpers. */
/* "llama3" for "llama3:latest"; NULL when id has no ":latest" tag. */
char *lm_model_alias_of(const char *id);
/* The model is named name: by id, by alias, or "x:latest" for an untagged id. */
bool lm_model_matches(const struct lm_model *m, const char *name);
/* Index of the model called name in models, or -1. */
int lm_models_find(const struct lm_model *models, size_t n, const char *name);
/* Passes include (any glob) and no exclude glob. */
bool lm_model_allowed(const struct lm_strv *include, const struct lm_strv *exclude, const char *id);
void lm_model_clear(struct lm_model *m);
void lm_models_free(struct lm_model *models, size_t n);

/* Parsers of runtime answers. Every field is optional and type-checked; a
 * body that is not the expected shape returns -EINVAL with a reason in err
 * (printable ASCII). Model lists append to res (up to LM_ENDPOINT_MAX_MODELS). */
int lm_parse_ollama_version(const char *body, size_t len);
int lm_parse_ollama_tags(const char *body, size_t len, struct lm_probe_result *res, char *err,
                         size_t errcap);
int lm_parse_ollama_ps(const char *body, size_t len, struct lm_probe_result *res, char *err,
                       size_t errcap);
int lm_parse_ollama_show(const char *body, size_t len, int64_t *ctx, char *err, size_t errcap);
/* OpenAI /v1/models; vLLM's max_model_len and llama.cpp's meta.n_ctx_train
 * give context_length. Models are marked loaded. */
int lm_parse_openai_models(const char *body, size_t len, struct lm_probe_result *res, char *err,
                           size_t errcap);
int lm_parse_llamacpp_props(const char *body, size_t len, int64_t *n_ctx, int *total_slots,
                            char *err, size_t errcap);
/* Idle slots: is_processing false (newer servers) or state 0 (older). */
int lm_parse_llamacpp_slots(const char *body, size_t len, int *free_slots, char *err,
                            size_t errcap);
/* True when /health says loading (llama.cpp: 503 with "Loading model"). */
bool lm_parse_loading(int status, const char *body, size_t len);
/* Sums vllm:num_requests_running / _waiting over all labels; -EINVAL when
 * there is no vllm: series at all. */
int lm_parse_vllm_metrics(const char *body, size_t len, int *running, int *waiting);
int lm_parse_version(const char *body, size_t len);

/* Probe driver (probe.c): runs one check of ep; calls lm_endpoints_checked
 * when done. lm_probe_cancel stops it without the callback. */
struct lm_probe;
void lm_probe_start(struct lm_ep *ep, struct lm_upstream *up);
void lm_probe_cancel(struct lm_ep *ep);

/* Takes res (models included) into ep: health, catalogue (filtered by the
 * endpoint's globs, aliases added), slots, breaker-free waiters woken. */
void lm_endpoints_checked(struct lm_ep *ep, struct lm_probe_result *res);
/* The breaker timer's action (tests call it directly). */
void lm_endpoints_half_open(struct lm_ep *ep);
/* Period of checks: LM_ENDPOINTS_CHECK_MS, or env LABMAN_CHECK_MS (tests). */
unsigned lm_endpoints_check_ms(const struct lm_endpoints *r);

#endif
