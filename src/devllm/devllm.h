/* devllm: a small, fast, deterministic stand-in for Ollama, llama.cpp, vLLM
 * and OpenAI-compatible servers, so labman runs and is tested without a GPU.
 * Owns: its HTTP/1.1 server, the per-flavor routes, text generation, faults. */
#ifndef LM_DEVLLM_H
#define LM_DEVLLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "util/util.h"

enum lm_devllm_flavor {
    LM_DEVLLM_OPENAI,
    LM_DEVLLM_OLLAMA,
    LM_DEVLLM_LLAMACPP,
    LM_DEVLLM_VLLM,
};

#define LM_DEVLLM_MAX_MODELS 32
#define LM_DEVLLM_HDR_MAX (16 * 1024)
#define LM_DEVLLM_PATH_MAX 2048
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

struct lm_devllm_conn;
struct lm_devllm_req;

struct lm_devllm_server {
    struct lm_devllm_opts opts;
    struct event_base *base;
    struct event *accept_ev;
    int listen_fd;
    struct lm_devllm_model models[LM_DEVLLM_MAX_MODELS];
    size_t nmodels;
    unsigned active;        /* generation requests in flight */
    uint64_t counter;       /* request ids */
    uint64_t rng;           /* fault injection */
    uint64_t started_ms;    /* monotonic */
    uint64_t requests_total;
    uint64_t cancelled_total;
    struct lm_devllm_conn *conns; /* all open connections */
    struct lm_devllm_req *free_reqs;
    struct lm_buf scratch;  /* response bodies are built here, then copied out */
    char date[64];          /* cached "Date:" value */
    int64_t date_sec;
};

/* One parsed HTTP request; pointers stay valid during the handler only. */
struct lm_devllm_http_req {
    const char *method;
    const char *path;  /* without query */
    const char *body;
    size_t body_len;
};

struct lm_devllm_conn {
    struct lm_devllm_server *srv;
    struct lm_devllm_conn *next, *prev;
    int fd;
    struct event *rev, *wev;
    struct evbuffer *out;
    char *in;
    size_t in_len, in_cap;
    size_t hdr_len;       /* parsed header length; 0 = not parsed yet */
    size_t body_len;
    bool keep_alive;
    bool http10;
    bool continue_sent;
    bool busy;            /* a response is being produced asynchronously */
    bool chunked;         /* the current streamed response is chunked */
    bool closing;         /* close once output has drained */
    bool read_paused;
    bool want_write;      /* the write event is armed */
    bool dead;            /* to be freed from the write callback */
    bool expect_continue;
    bool in_dispatch;     /* inside conn_process: no re-entry */
    bool lingering;       /* sent all, shut down writing, draining input */
    char method[8];
    char path[LM_DEVLLM_PATH_MAX + 1];
    struct lm_devllm_req *req;
};

/* http.c */
int lm_devllm_server_listen(struct lm_devllm_server *s);
void lm_devllm_server_close(struct lm_devllm_server *s);
void lm_devllm_respond(struct lm_devllm_conn *c, int status, const char *ctype,
                       const char *body, size_t len);
void lm_devllm_respond_extra(struct lm_devllm_conn *c, int status, const char *ctype,
                             const char *extra_headers, const char *body, size_t len);
void lm_devllm_stream_begin(struct lm_devllm_conn *c, const char *ctype);
void lm_devllm_stream_write(struct lm_devllm_conn *c, const char *data, size_t len);
void lm_devllm_stream_end(struct lm_devllm_conn *c);
/* Ends the current response early: "flush" keeps what was written and then
 * closes (a broken stream); otherwise the socket is closed at once. */
void lm_devllm_conn_abort(struct lm_devllm_conn *c, bool flush);
/* Marks an async response as done and goes on with pipelined requests. */
void lm_devllm_conn_done(struct lm_devllm_conn *c);
size_t lm_devllm_conn_pending(const struct lm_devllm_conn *c);
void lm_devllm_conn_flush(struct lm_devllm_conn *c);

/* api.c */
void lm_devllm_api_handle(struct lm_devllm_conn *c, const struct lm_devllm_http_req *r);
void lm_devllm_api_closed(struct lm_devllm_conn *c);   /* free c->req */
void lm_devllm_api_drained(struct lm_devllm_conn *c);  /* output drained: resume */
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
