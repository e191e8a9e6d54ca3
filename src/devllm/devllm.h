/* devllm: a small, fast, deterministic stand-in for Ollama, llama.cpp, vLLM
 * and OpenAI-compatible servers, so labman runs and is tested without a GPU.
 * Owns: the per-flavor routes, text generation, faults (HTTP is src/http). */
#ifndef LM_DEVLLM_H
#define LM_DEVLLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "http/http.h"
#include "util/util.h"

enum lm_devllm_flavor {
    LM_DEVLLM_OPENAI,
    LM_DEVLLM_OLLAMA,
    LM_DEVLLM_LLAMACPP,
    LM_DEVLLM_VLLM,
};

#define LM_DEVLLM_MAX_MODELS 32
#define LM_DEVLLM_HDR_MAX (16 * 1024)
#define LM_DEVLLM_MAX_GEN 1000000 /* cap on tokens one request may ask for */

struct lm_devllm_opts {
    enum lm_devllm_flavor flavor;
    char host[256];
    int port;
    char *models_csv;
    unsigned tokens_per_sec; /* 0 = as fast as possible */
    unsigned ttft_ms;
    unsigned max_tokens;     /* natural generation length */
    unsigned max_concurrent; /* 0 = unlimited */
    double fail_rate;
    long fail_after_tokens; /* -1 = off */
    unsigned stall_ms;
    bool drop_connection;
    unsigned load_ms;
    uint64_t seed;
    size_t max_body;
    unsigned ctx_len;
};

struct lm_devllm_model {
    char name[128];
    char digest[65];
    char family[32];
    char param_size[16];
    uint64_t size;
    bool loaded;
    int64_t expires_ms;  /* wall clock; INT64_MAX = never */
    int64_t loaded_at_ms;
    unsigned active;     /* for vLLM's per-model gauges */
    uint64_t prompt_tokens_total, gen_tokens_total, success_total;
};

struct lm_devllm_req;

struct lm_devllm_server {
    struct lm_devllm_opts opts;
    struct event_base *base;
    struct lm_http_server *http;
    struct lm_devllm_model models[LM_DEVLLM_MAX_MODELS];
    size_t nmodels;
    unsigned active;        /* generation requests in flight */
    uint64_t counter;       /* request ids */
    uint64_t rng;           /* fault injection */
    uint64_t started_ms;    /* monotonic */
    uint64_t requests_total;
    uint64_t cancelled_total;
    struct lm_devllm_req *free_reqs;
    struct lm_buf scratch;  /* response bodies are built here, then copied out */
};

/* What a route answers on: the server and the client's connection. */
struct lm_devllm_conn {
    struct lm_devllm_server *srv;
    struct lm_http_conn *http;
};

/* api.c: the lm_http handler (arg is the lm_devllm_server). */
void lm_devllm_api_handle(struct lm_http_conn *c, const struct lm_http_request *r, void *arg);
void lm_devllm_api_free_all(struct lm_devllm_server *s);
int lm_devllm_models_init(struct lm_devllm_server *s);

/* gen.c: deterministic text, counts and vectors. */
uint64_t lm_devllm_hash(uint64_t h, const void *p, size_t n);
uint64_t lm_devllm_rand(uint64_t *state);
const char *lm_devllm_word(uint64_t *state, size_t *len);
size_t lm_devllm_count_words(const char *s, size_t n);
int lm_devllm_json_str(struct lm_buf *b, const char *s, size_t n);
int lm_devllm_embedding(struct lm_buf *b, uint64_t seed, const char *text, size_t n,
                        unsigned dims, bool base64);
void lm_devllm_iso8601(char *out, size_t cap, int64_t wall_ms, bool nanos);
int64_t lm_devllm_wall_ms(void);
int lm_devllm_duration_parse(const char *s, int64_t *ms);

#endif
