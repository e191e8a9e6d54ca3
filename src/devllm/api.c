/* Routes of each runtime flavor and the generation of answers: OpenAI
 * chat/completions/embeddings, Ollama's native API, llama.cpp's and vLLM's
 * probes. Request bodies are parsed with jansson; answers are printed into a
 * reused buffer, so the hot path does not allocate once warm. */
#define LM_LOG_MODULE "devllm"
#include "devllm/devllm.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>
#include <sodium.h>

#include "http/http.h"
#include "log/log.h"

#define F_OPENAI (1u << LM_DEVLLM_OPENAI)
#define F_OLLAMA (1u << LM_DEVLLM_OLLAMA)
#define F_LLAMA (1u << LM_DEVLLM_LLAMACPP)
#define F_VLLM (1u << LM_DEVLLM_VLLM)
#define F_ALL (F_OPENAI | F_OLLAMA | F_LLAMA | F_VLLM)

#define STREAM_HIGH (64 * 1024) /* pause a stream while more than this is unsent */
#define STREAM_LOW (16 * 1024)
#define YIELD_TOKENS 256        /* tokens per turn when not rate limited */
#define MAX_INPUTS 2048         /* embedding inputs per request */
#define DEFAULT_DIMS 768
#define JSON_CT "application/json; charset=utf-8"

enum api { API_OPENAI, API_OLLAMA };
enum gen_kind { GEN_CHAT, GEN_COMPLETION, GEN_OLLAMA_CHAT, GEN_OLLAMA_GENERATE };

struct lm_devllm_req {
    struct lm_devllm_req *next_free;
    struct lm_devllm_server *srv;
    struct lm_devllm_conn c; /* the client being answered */
    struct event *timer;
    enum gen_kind kind;
    size_t model;
    bool stream, include_usage, finish_length, stalled, waiting_drain, unload_after;
    unsigned prompt_tokens, n, emitted, stall_at;
    uint64_t state;
    uint64_t start_us, next_due_us, interval_us, first_us, load_us;
    int64_t keep_alive_ms;
    char prefix[384];
    struct lm_buf text;
};

/* What a generation request asked for, once parsed and checked. */
struct gen_params {
    size_t model;
    uint64_t h;
    unsigned prompt_tokens;
    long limit; /* -1 = none */
    bool stream, include_usage, has_prompt;
    int64_t keep_alive_ms;
};

typedef void handler_fn(struct lm_devllm_conn *c, json_t *body);

/* --- replies ------------------------------------------------------------ */

static void
respond(struct lm_devllm_conn *c, int status, const char *ctype, const char *extra,
        const char *body, size_t len)
{
    lm_http_respond(c->http, status, ctype, extra, body, len);
}

static struct lm_buf *
scratch(struct lm_devllm_conn *c)
{
    lm_buf_reset(&c->srv->scratch);
    return &c->srv->scratch;
}

static void
reply_buf(struct lm_devllm_conn *c, int status, struct lm_buf *b)
{
    respond(c, status, JSON_CT, NULL, b->data, b->len);
}

static void
reply_str(struct lm_devllm_conn *c, int status, const char *ctype, const char *s)
{
    respond(c, status, ctype, NULL, s, strlen(s));
}

static void reply_error(struct lm_devllm_conn *c, enum api api, int status, const char *type,
                        const char *param, const char *code, const char *fmt, ...)
    LM_PRINTF(7, 8);

/* Each runtime has its own error shape; labman's drivers parse all of them. */
static void
reply_error(struct lm_devllm_conn *c, enum api api, int status, const char *type,
            const char *param, const char *code, const char *fmt, ...)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (api == API_OLLAMA) {
        lm_buf_puts(b, "{\"error\":");
        lm_devllm_json_str(b, msg, strlen(msg));
        lm_buf_puts(b, "}");
    } else if (s->opts.flavor == LM_DEVLLM_LLAMACPP) {
        lm_buf_printf(b, "{\"error\":{\"code\":%d,\"message\":", status);
        lm_devllm_json_str(b, msg, strlen(msg));
        lm_buf_printf(b, ",\"type\":\"%s\"}}", type);
    } else {
        lm_buf_puts(b, "{\"error\":{\"message\":");
        lm_devllm_json_str(b, msg, strlen(msg));
        lm_buf_printf(b, ",\"type\":\"%s\",\"param\":", type);
        if (param)
            lm_buf_printf(b, "\"%s\"", param);
        else
            lm_buf_puts(b, "null");
        lm_buf_puts(b, ",\"code\":");
        if (code)
            lm_buf_printf(b, "\"%s\"}}", code);
        else
            lm_buf_puts(b, "null}}");
    }
    const char *extra = status == 429 || status == 503 ? "Retry-After: 1\r\n" : NULL;
    respond(c, status, JSON_CT, extra, b->data, b->len);
}

static void
bad_request(struct lm_devllm_conn *c, enum api api, const char *param, const char *msg)
{
    reply_error(c, api, 400, "invalid_request_error", param, NULL, "%s", msg);
}

/* --- models ------------------------------------------------------------- */

static bool
valid_model_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len >= sizeof(((struct lm_devllm_model *)0)->name) - 8)
        return false;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr("._:/-+", *p)))
            return false;
    return true;
}

static void
model_describe(struct lm_devllm_model *m)
{
    unsigned char hash[crypto_hash_sha256_BYTES];
    const char *p = m->name;
    size_t f = 0;

    crypto_hash_sha256(hash, (const unsigned char *)m->name, strlen(m->name));
    lm_hex_encode(m->digest, hash, sizeof(hash));
    const char *slash = strrchr(p, '/');
    if (slash)
        p = slash + 1;
    for (; *p && f < sizeof(m->family) - 1 &&
           ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'));
         p++)
        m->family[f++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
    m->family[f] = '\0';
    if (f == 0)
        strcpy(m->family, "llama");

    /* "llama3.2:1b" -> 1B parameters, "qwen2.5:0.5b" -> 0.5B, "x:270m" -> 270M. */
    double params = 7e9;
    const char *tag = strchr(m->name, ':');
    for (const char *q = tag ? tag + 1 : m->name; *q; q++) {
        if ((*q >= '0' && *q <= '9') && (q == m->name || !((q[-1] >= '0' && q[-1] <= '9') ||
                                                            q[-1] == '.'))) {
            char *end;
            double v = strtod(q, &end);
            if (*end == 'b' || *end == 'B') {
                params = v * 1e9;
                break;
            }
            if (*end == 'm' || *end == 'M') {
                params = v * 1e6;
                break;
            }
        }
    }
    if (params >= 1e9)
        snprintf(m->param_size, sizeof(m->param_size), "%.1fB", params / 1e9);
    else
        snprintf(m->param_size, sizeof(m->param_size), "%.0fM", params / 1e6);
    m->size = (uint64_t)(params * 0.6); /* Q4_K_M is about 4.8 bits a weight */
}

int
lm_devllm_models_init(struct lm_devllm_server *s)
{
    char *list = lm_xstrdup(s->opts.models_csv);
    char *save = NULL;
    int rc = 0;

    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (!*tok)
            continue;
        if (!valid_model_name(tok)) {
            log_error("invalid model name '%s' (letters, digits and ._:/-+ only)", tok);
            rc = -EINVAL;
            break;
        }
        if (s->nmodels == LM_DEVLLM_MAX_MODELS) {
            log_error("too many models (at most %d)", LM_DEVLLM_MAX_MODELS);
            rc = -EINVAL;
            break;
        }
        struct lm_devllm_model *m = &s->models[s->nmodels++];
        memset(m, 0, sizeof(*m));
        /* Ollama always names a tag. */
        if (s->opts.flavor == LM_DEVLLM_OLLAMA && !strchr(tok, ':'))
            snprintf(m->name, sizeof(m->name), "%s:latest", tok);
        else
            snprintf(m->name, sizeof(m->name), "%s", tok);
        model_describe(m);
        /* Only Ollama loads on demand; the others serve a loaded model. */
        m->loaded = s->opts.flavor != LM_DEVLLM_OLLAMA;
        m->expires_ms = INT64_MAX;
    }
    free(list);
    if (rc == 0 && s->nmodels == 0) {
        log_error("no models given (--models a,b,c)");
        rc = -EINVAL;
    }
    return rc;
}

static int
find_model(struct lm_devllm_server *s, const char *name, size_t len)
{
    if (s->opts.flavor == LM_DEVLLM_LLAMACPP)
        return 0; /* llama-server serves its one model whatever the request names */
    for (size_t i = 0; i < s->nmodels; i++) {
        const char *m = s->models[i].name;
        size_t ml = strlen(m);
        if (ml == len && memcmp(m, name, len) == 0)
            return (int)i;
        /* "llama3" is "llama3:latest" and the other way round, as in Ollama. */
        if (ml == len + 7 && memcmp(m, name, len) == 0 && strcmp(m + len, ":latest") == 0)
            return (int)i;
        if (len == ml + 7 && memcmp(m, name, ml) == 0 && memcmp(name + ml, ":latest", 7) == 0)
            return (int)i;
    }
    return -1;
}

static void
expire_models(struct lm_devllm_server *s)
{
    int64_t now = lm_devllm_wall_ms();
    for (size_t i = 0; i < s->nmodels; i++) {
        struct lm_devllm_model *m = &s->models[i];
        if (m->loaded && m->active == 0 && m->expires_ms <= now) {
            m->loaded = false;
            log_info("model %s unloaded (keep_alive expired)", m->name);
        }
    }
}

static void
put_details(struct lm_buf *b, const struct lm_devllm_model *m)
{
    lm_buf_printf(b,
                  "\"details\":{\"parent_model\":\"\",\"format\":\"gguf\",\"family\":\"%s\","
                  "\"families\":[\"%s\"],\"parameter_size\":\"%s\","
                  "\"quantization_level\":\"Q4_K_M\"}",
                  m->family, m->family, m->param_size);
}

/* --- request parsing ------------------------------------------------------ */

static void
add_text(struct gen_params *p, const char *s, size_t n)
{
    p->h = lm_devllm_hash(p->h, s, n);
    p->h = lm_devllm_hash(p->h, "", 1);
    p->prompt_tokens += (unsigned)lm_devllm_count_words(s, n);
    if (n > 0)
        p->has_prompt = true;
}

static int
parse_model(struct lm_devllm_conn *c, enum api api, json_t *body, struct gen_params *p)
{
    struct lm_devllm_server *s = c->srv;
    json_t *m = json_object_get(body, "model");
    if (!m && api == API_OLLAMA)
        m = json_object_get(body, "name");
    if (!json_is_string(m)) {
        if (s->opts.flavor == LM_DEVLLM_LLAMACPP && !m) {
            p->model = 0;
            p->h = lm_devllm_hash(s->opts.seed, s->models[0].name, strlen(s->models[0].name));
            return 0;
        }
        if (api == API_OLLAMA)
            bad_request(c, api, "model", "model is required");
        else
            bad_request(c, api, "model", "you must provide a model parameter");
        return -1;
    }
    const char *name = json_string_value(m);
    size_t len = json_string_length(m);
    int idx = find_model(s, name, len);
    if (idx < 0) {
        char esc[160];
        lm_escape(esc, sizeof(esc), name, len);
        if (api == API_OLLAMA)
            reply_error(c, api, 404, "not_found_error", NULL, NULL,
                        "model \"%s\" not found, try pulling it first", esc);
        else
            reply_error(c, api, 404, "invalid_request_error", "model", "model_not_found",
                        "The model `%s` does not exist. GET /v1/models lists the models "
                        "served here.", esc);
        return -1;
    }
    p->model = (size_t)idx;
    const char *mn = s->models[idx].name;
    p->h = lm_devllm_hash(s->opts.seed ^ 0x6c61626d616eULL, mn, strlen(mn));
    return 0;
}

/* Returns 1 when a bool is set, 0 when absent or null, -1 when not a bool. */
static int
get_bool(json_t *o, const char *key, bool *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return -1;
    *out = json_is_true(v);
    return 1;
}

static int
parse_limit(struct lm_devllm_conn *c, enum api api, json_t *body, struct gen_params *p)
{
    p->limit = -1;
    if (api == API_OLLAMA) {
        json_t *opt = json_object_get(body, "options");
        json_t *np = json_is_object(opt) ? json_object_get(opt, "num_predict") : NULL;
        if (np && !json_is_null(np)) {
            if (!json_is_integer(np)) {
                bad_request(c, api, NULL, "options.num_predict must be an integer");
                return -1;
            }
            json_int_t v = json_integer_value(np);
            if (v >= 0)
                p->limit = v > LM_DEVLLM_MAX_GEN ? LM_DEVLLM_MAX_GEN : (long)v;
        }
        return 0;
    }
    static const char *const keys[] = {"max_completion_tokens", "max_tokens", "n_predict"};
    for (size_t i = 0; i < LM_ARRAY_LEN(keys); i++) {
        json_t *v = json_object_get(body, keys[i]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > LM_DEVLLM_MAX_GEN) {
            char msg[96];
            snprintf(msg, sizeof(msg), "%s must be an integer between 0 and %d", keys[i],
                     LM_DEVLLM_MAX_GEN);
            bad_request(c, api, keys[i], msg);
            return -1;
        }
        p->limit = (long)json_integer_value(v);
        break;
    }
    return 0;
}

static int
parse_common(struct lm_devllm_conn *c, enum api api, json_t *body, struct gen_params *p)
{
    p->stream = api == API_OLLAMA; /* Ollama streams unless told not to */
    if (get_bool(body, "stream", &p->stream) < 0) {
        bad_request(c, api, "stream", "stream must be a boolean");
        return -1;
    }
    json_t *so = json_object_get(body, "stream_options");
    if (json_is_object(so) && get_bool(so, "include_usage", &p->include_usage) < 0) {
        bad_request(c, api, "stream_options", "include_usage must be a boolean");
        return -1;
    }
    json_t *n = json_object_get(body, "n");
    if (n && !json_is_null(n) && (!json_is_integer(n) || json_integer_value(n) != 1)) {
        bad_request(c, api, "n", "labman-devllm generates one choice: n must be 1");
        return -1;
    }
    json_t *seed = json_object_get(body, "seed");
    if (!json_is_integer(seed) && api == API_OLLAMA) {
        json_t *opt = json_object_get(body, "options");
        seed = json_is_object(opt) ? json_object_get(opt, "seed") : NULL;
    }
    if (json_is_integer(seed)) {
        json_int_t v = json_integer_value(seed);
        p->h = lm_devllm_hash(p->h, &v, sizeof(v));
    }
    p->keep_alive_ms = 5 * 60 * 1000;
    json_t *ka = json_object_get(body, "keep_alive");
    if (api == API_OLLAMA && ka && !json_is_null(ka)) {
        if (json_is_number(ka)) {
            p->keep_alive_ms = (int64_t)(json_number_value(ka) * 1000.0);
        } else if (!json_is_string(ka) ||
                   lm_devllm_duration_parse(json_string_value(ka), &p->keep_alive_ms) < 0) {
            bad_request(c, api, "keep_alive", "keep_alive must be a duration like \"5m\" or "
                                              "a number of seconds");
            return -1;
        }
    }
    return parse_limit(c, api, body, p);
}

static int
parse_messages(struct lm_devllm_conn *c, enum api api, json_t *body, struct gen_params *p)
{
    json_t *msgs = json_object_get(body, "messages");
    if (api == API_OLLAMA && (!msgs || json_is_null(msgs)))
        return 0;
    if (!json_is_array(msgs) || (api == API_OPENAI && json_array_size(msgs) == 0)) {
        bad_request(c, api, "messages", "messages must be a non-empty array");
        return -1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) {
            bad_request(c, api, "messages", "each message must be an object");
            return -1;
        }
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) {
            bad_request(c, api, "messages", "each message needs a role");
            return -1;
        }
        p->h = lm_devllm_hash(p->h, json_string_value(role), json_string_length(role));
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content)) {
            add_text(p, json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) {
            size_t j;
            json_t *part;
            json_array_foreach(content, j, part) {
                json_t *t = json_object_get(part, "text");
                if (json_is_string(t))
                    add_text(p, json_string_value(t), json_string_length(t));
            }
        } else if (content && !json_is_null(content)) {
            bad_request(c, api, "messages", "message content must be a string or an array");
            return -1;
        }
    }
    return 0;
}

static int
parse_prompt(struct lm_devllm_conn *c, enum api api, json_t *body, struct gen_params *p)
{
    json_t *prompt = json_object_get(body, "prompt");
    if (json_is_string(prompt)) {
        add_text(p, json_string_value(prompt), json_string_length(prompt));
    } else if (api == API_OPENAI && json_is_array(prompt) && json_array_size(prompt) == 1 &&
               json_is_string(json_array_get(prompt, 0))) {
        json_t *s = json_array_get(prompt, 0);
        add_text(p, json_string_value(s), json_string_length(s));
    } else if (api == API_OPENAI || (prompt && !json_is_null(prompt))) {
        bad_request(c, api, "prompt",
                    "prompt must be a string (labman-devllm answers one prompt per request)");
        return -1;
    }
    static const char *const extra[] = {"suffix", "system"};
    for (size_t i = 0; i < LM_ARRAY_LEN(extra); i++) {
        json_t *v = json_object_get(body, extra[i]);
        if (json_is_string(v))
            add_text(p, json_string_value(v), json_string_length(v));
        else if (v && !json_is_null(v)) {
            bad_request(c, api, extra[i], "must be a string");
            return -1;
        }
    }
    return 0;
}

/* --- generation ----------------------------------------------------------- */

static void tick(evutil_socket_t fd, short what, void *arg);

static struct lm_devllm_req *
req_get(struct lm_devllm_server *s)
{
    struct lm_devllm_req *q = s->free_reqs;
    if (q) {
        s->free_reqs = q->next_free;
    } else {
        q = lm_xcalloc(1, sizeof(*q));
        q->srv = s;
        q->timer = evtimer_new(s->base, tick, q);
        if (!q->timer)
            abort();
        lm_buf_init(&q->text, 0);
    }
    lm_buf_reset(&q->text);
    return q;
}

static void
req_release(struct lm_devllm_req *q)
{
    struct lm_devllm_server *s = q->srv;
    evtimer_del(q->timer);
    s->active--;
    s->models[q->model].active--;
    q->c.http = NULL;
    if (q->text.cap > 1024 * 1024)
        lm_buf_release(&q->text);
    q->next_free = s->free_reqs;
    s->free_reqs = q;
}

static void
ollama_created_at(char *out, size_t cap)
{
    lm_devllm_iso8601(out, cap, lm_devllm_wall_ms(), true);
}

static void
emit_token(struct lm_devllm_req *q, const char *w, size_t wl)
{
    struct lm_devllm_conn *c = &q->c;
    const char *sp = q->emitted ? " " : "";
    char buf[1024], ts[48];
    int n = 0;

    if (!q->stream) {
        lm_buf_append(&q->text, sp, strlen(sp));
        lm_buf_append(&q->text, w, wl);
        return;
    }
    const char *usage = q->include_usage ? ",\"usage\":null" : "";
    switch (q->kind) {
    case GEN_CHAT:
        if (q->emitted == 0) {
            n = snprintf(buf, sizeof(buf),
                         "data: %s{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                         "\"logprobs\":null,\"finish_reason\":null}]%s}\n\n",
                         q->prefix, usage);
            lm_http_stream_write(c->http, buf, (size_t)n);
        }
        n = snprintf(buf, sizeof(buf),
                     "data: %s{\"index\":0,\"delta\":{\"content\":\"%s%s\"},\"logprobs\":null,"
                     "\"finish_reason\":null}]%s}\n\n",
                     q->prefix, sp, w, usage);
        break;
    case GEN_COMPLETION:
        n = snprintf(buf, sizeof(buf),
                     "data: %s{\"text\":\"%s%s\",\"index\":0,\"logprobs\":null,"
                     "\"finish_reason\":null}]%s}\n\n",
                     q->prefix, sp, w, usage);
        break;
    case GEN_OLLAMA_CHAT:
        ollama_created_at(ts, sizeof(ts));
        n = snprintf(buf, sizeof(buf),
                     "%s\"%s\",\"message\":{\"role\":\"assistant\",\"content\":\"%s%s\"},"
                     "\"done\":false}\n",
                     q->prefix, ts, sp, w);
        break;
    case GEN_OLLAMA_GENERATE:
        ollama_created_at(ts, sizeof(ts));
        n = snprintf(buf, sizeof(buf), "%s\"%s\",\"response\":\"%s%s\",\"done\":false}\n",
                     q->prefix, ts, sp, w);
        break;
    }
    if (n > 0 && (size_t)n < sizeof(buf))
        lm_http_stream_write(c->http, buf, (size_t)n);
}

static void
put_ollama_stats(struct lm_buf *b, struct lm_devllm_req *q, const char *done_reason)
{
    uint64_t now = lm_now_us();
    uint64_t first = q->first_us ? q->first_us : now;
    uint64_t prompt_eval = first - q->start_us - (q->load_us < first - q->start_us ? q->load_us : 0);
    lm_buf_printf(b,
                  "\"done_reason\":\"%s\",\"done\":true,\"total_duration\":%" PRIu64
                  ",\"load_duration\":%" PRIu64 ",\"prompt_eval_count\":%u,"
                  "\"prompt_eval_duration\":%" PRIu64 ",\"eval_count\":%u,"
                  "\"eval_duration\":%" PRIu64 "}",
                  done_reason, (now - q->start_us) * 1000, q->load_us * 1000, q->prompt_tokens,
                  prompt_eval * 1000, q->emitted, (now - first) * 1000);
}

static void
put_usage(struct lm_buf *b, const struct lm_devllm_req *q)
{
    lm_buf_printf(b, "\"usage\":{\"prompt_tokens\":%u,\"completion_tokens\":%u,"
                     "\"total_tokens\":%u}",
                  q->prompt_tokens, q->emitted, q->prompt_tokens + q->emitted);
}

static void
finish(struct lm_devllm_req *q)
{
    struct lm_devllm_server *s = q->srv;
    struct lm_devllm_conn *c = &q->c;
    struct lm_devllm_model *m = &s->models[q->model];
    const char *fr = q->finish_length ? "length" : "stop";
    struct lm_buf *b = scratch(c);
    char ts[48];

    m->prompt_tokens_total += q->prompt_tokens;
    m->gen_tokens_total += q->emitted;
    m->success_total++;
    if (q->kind == GEN_OLLAMA_CHAT || q->kind == GEN_OLLAMA_GENERATE) {
        ollama_created_at(ts, sizeof(ts));
        lm_buf_printf(b, "%s\"%s\",", q->prefix, ts);
        if (q->kind == GEN_OLLAMA_CHAT)
            lm_buf_puts(b, "\"message\":{\"role\":\"assistant\",\"content\":");
        else
            lm_buf_puts(b, "\"response\":");
        if (q->stream)
            lm_buf_puts(b, "\"\"");
        else
            lm_devllm_json_str(b, q->text.data ? q->text.data : "", q->text.len);
        lm_buf_puts(b, q->kind == GEN_OLLAMA_CHAT ? "}," : ",");
        put_ollama_stats(b, q, fr);
        if (q->stream) {
            lm_buf_puts(b, "\n");
            lm_http_stream_write(c->http, b->data, b->len);
            lm_http_stream_end(c->http);
        } else {
            reply_buf(c, 200, b);
        }
        if (q->unload_after) {
            m->loaded = false;
            log_info("model %s unloaded (keep_alive 0)", m->name);
        } else {
            m->expires_ms = q->keep_alive_ms < 0 ? INT64_MAX
                                                 : lm_devllm_wall_ms() + q->keep_alive_ms;
        }
    } else if (q->stream) {
        const char *usage = q->include_usage ? ",\"usage\":null" : "";
        if (q->kind == GEN_CHAT) {
            if (q->emitted == 0)
                lm_buf_printf(b, "data: %s{\"index\":0,\"delta\":{\"role\":\"assistant\","
                                 "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]"
                                 "%s}\n\n",
                              q->prefix, usage);
            lm_buf_printf(b, "data: %s{\"index\":0,\"delta\":{},\"logprobs\":null,"
                             "\"finish_reason\":\"%s\"}]%s}\n\n",
                          q->prefix, fr, usage);
        } else {
            lm_buf_printf(b, "data: %s{\"text\":\"\",\"index\":0,\"logprobs\":null,"
                             "\"finish_reason\":\"%s\"}]%s}\n\n",
                          q->prefix, fr, usage);
        }
        lm_http_stream_write(c->http, b->data, b->len);
        if (q->include_usage) {
            lm_buf_reset(b);
            lm_buf_printf(b, "data: %s],", q->prefix);
            put_usage(b, q);
            lm_buf_puts(b, "}\n\n");
            lm_http_stream_write(c->http, b->data, b->len);
        }
        lm_http_stream_write(c->http, "data: [DONE]\n\n", 14);
        lm_http_stream_end(c->http);
    } else {
        /* prefix is the chunk prefix up to "choices":[ with the object name swapped. */
        size_t plen = strlen(q->prefix);
        lm_buf_append(b, q->prefix, plen);
        if (q->kind == GEN_CHAT) {
            lm_buf_puts(b, "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
            lm_devllm_json_str(b, q->text.data ? q->text.data : "", q->text.len);
            lm_buf_printf(b, ",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                          fr);
        } else {
            lm_buf_puts(b, "{\"text\":");
            lm_devllm_json_str(b, q->text.data ? q->text.data : "", q->text.len);
            lm_buf_printf(b, ",\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}],", fr);
        }
        put_usage(b, q);
        lm_buf_puts(b, "}");
        reply_buf(c, 200, b);
    }
    req_release(q);
}

static void
schedule(struct lm_devllm_req *q, uint64_t now)
{
    uint64_t d = q->next_due_us - now;
    struct timeval tv = {.tv_sec = (time_t)(d / 1000000), .tv_usec = (suseconds_t)(d % 1000000)};
    evtimer_add(q->timer, &tv);
}

/* Emits every token that is due, then sleeps on a timer until the next one.
 * Called at the start, from the timer and when a slow client has drained. */
static void
pump(struct lm_devllm_req *q)
{
    struct lm_devllm_server *s = q->srv;
    struct lm_devllm_conn *c = &q->c;
    uint64_t now = lm_now_us();
    unsigned budget = YIELD_TOKENS;

    while (q->emitted < q->n) {
        if (q->next_due_us > now) {
            schedule(q, now);
            return;
        }
        if (s->opts.fail_after_tokens >= 0 && q->emitted >= s->opts.fail_after_tokens) {
            log_debug("fault: breaking the answer after %u tokens", q->emitted);
            struct lm_http_conn *hc = c->http;
            req_release(q);
            lm_http_abort(hc); /* what was written goes out, then the close */
            return;
        }
        if (q->stream && lm_http_conn_pending(c->http) > STREAM_HIGH) {
            q->waiting_drain = true; /* until LM_HTTP_DRAINED */
            return;
        }
        if (budget-- == 0) {
            event_active(q->timer, EV_TIMEOUT, 1);
            return;
        }
        size_t wl;
        const char *w = lm_devllm_word(&q->state, &wl);
        if (q->emitted == 0)
            q->first_us = now;
        emit_token(q, w, wl);
        q->emitted++;
        if (q->interval_us)
            q->next_due_us += q->interval_us;
        if (q->stall_at && q->emitted == q->stall_at && !q->stalled) {
            q->stalled = true;
            q->next_due_us = (q->next_due_us > now ? q->next_due_us : now) +
                             (uint64_t)s->opts.stall_ms * 1000;
            log_debug("fault: stalling the answer for %u ms", s->opts.stall_ms);
        }
        if (q->interval_us || q->stalled)
            now = lm_now_us();
    }
    finish(q);
}

static void
tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

/* The client drained its output (resume a paused stream) or went away (the
 * request is freed at once: its slot and gauges are free for the next). */
static void
on_http_event(struct lm_http_conn *hc, enum lm_http_event ev, void *arg)
{
    struct lm_devllm_req *q = arg;
    if (ev == LM_HTTP_DRAINED) {
        if (q->waiting_drain && lm_http_conn_pending(hc) < STREAM_LOW) {
            q->waiting_drain = false;
            pump(q);
        }
        return;
    }
    q->srv->cancelled_total++;
    log_debug("client went away mid-request: freed request after %u of %u tokens", q->emitted,
              q->n);
    req_release(q);
}

void
lm_devllm_api_free_all(struct lm_devllm_server *s)
{
    while (s->free_reqs) {
        struct lm_devllm_req *q = s->free_reqs;
        s->free_reqs = q->next_free;
        event_free(q->timer);
        lm_buf_release(&q->text);
        free(q);
    }
}

static bool
loading(struct lm_devllm_server *s)
{
    return s->opts.load_ms && lm_now_ms() < s->started_ms + s->opts.load_ms;
}

static void
reply_busy(struct lm_devllm_conn *c, enum api api)
{
    enum lm_devllm_flavor f = c->srv->opts.flavor;
    if (api == API_OLLAMA)
        reply_error(c, api, 503, "", NULL, NULL,
                    "server busy, please try again.  maximum pending requests exceeded");
    else if (f == LM_DEVLLM_LLAMACPP || f == LM_DEVLLM_OLLAMA)
        reply_error(c, api, 503, "unavailable_error", NULL, NULL,
                    "server busy: all %u slots are processing", c->srv->opts.max_concurrent);
    else
        reply_error(c, api, 429, "requests", NULL, "rate_limit_exceeded",
                    "too many concurrent requests (max %u)", c->srv->opts.max_concurrent);
}

static void
gen_start(struct lm_devllm_conn *c, enum api api, enum gen_kind kind, struct gen_params *p)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_devllm_model *m = &s->models[p->model];

    if (s->opts.max_concurrent && s->active >= s->opts.max_concurrent) {
        reply_busy(c, api);
        return;
    }
    struct lm_devllm_req *q = req_get(s);
    q->c = *c;
    q->kind = kind;
    q->model = p->model;
    q->stream = p->stream;
    q->include_usage = p->stream && p->include_usage;
    q->prompt_tokens = p->prompt_tokens;
    q->n = s->opts.max_tokens;
    q->finish_length = false;
    if (p->limit >= 0 && (unsigned long)p->limit < q->n) {
        q->n = (unsigned)p->limit;
        q->finish_length = true;
    }
    q->emitted = 0;
    q->stalled = false;
    q->waiting_drain = false;
    q->stall_at = s->opts.stall_ms && q->n >= 2 ? q->n / 2 : 0;
    q->state = p->h;
    q->start_us = lm_now_us();
    q->first_us = 0;
    q->load_us = 0;
    q->interval_us = s->opts.tokens_per_sec ? 1000000u / s->opts.tokens_per_sec : 0;
    q->keep_alive_ms = p->keep_alive_ms;
    q->unload_after = s->opts.flavor == LM_DEVLLM_OLLAMA && p->keep_alive_ms == 0;
    if (!m->loaded) {
        q->load_us = (uint64_t)s->opts.load_ms * 1000;
        m->loaded = true;
        m->loaded_at_ms = lm_devllm_wall_ms();
        log_info("model %s loaded", m->name);
    }
    if (s->opts.flavor == LM_DEVLLM_OLLAMA)
        m->expires_ms = q->keep_alive_ms < 0 ? INT64_MAX : lm_devllm_wall_ms() + q->keep_alive_ms;
    q->next_due_us = q->start_us + (uint64_t)s->opts.ttft_ms * 1000 + q->load_us;
    s->active++;
    m->active++;
    s->counter++;

    uint64_t id = lm_devllm_hash(s->opts.seed, &s->counter, sizeof(s->counter));
    long long created = (long long)time(NULL);
    switch (kind) {
    case GEN_CHAT:
        snprintf(q->prefix, sizeof(q->prefix),
                 "{\"id\":\"chatcmpl-%016" PRIx64 "\",\"object\":\"%s\",\"created\":%lld,"
                 "\"model\":\"%s\",\"system_fingerprint\":\"fp_devllm\",\"choices\":[",
                 id, p->stream ? "chat.completion.chunk" : "chat.completion", created, m->name);
        break;
    case GEN_COMPLETION:
        snprintf(q->prefix, sizeof(q->prefix),
                 "{\"id\":\"cmpl-%016" PRIx64 "\",\"object\":\"text_completion\","
                 "\"created\":%lld,\"model\":\"%s\",\"system_fingerprint\":\"fp_devllm\","
                 "\"choices\":[",
                 id, created, m->name);
        break;
    case GEN_OLLAMA_CHAT:
    case GEN_OLLAMA_GENERATE:
        snprintf(q->prefix, sizeof(q->prefix), "{\"model\":\"%s\",\"created_at\":", m->name);
        break;
    }
    lm_http_watch(c->http, on_http_event, q);
    if (q->stream)
        lm_http_stream_begin(c->http, 200,
                             api == API_OLLAMA ? "application/x-ndjson" : "text/event-stream",
                             "Cache-Control: no-cache\r\n");
    pump(q);
}

/* Faults and the loading phase apply to every inference route. Returns true
 * when the request was answered (or dropped) here. */
static bool
intercept(struct lm_devllm_conn *c, enum api api)
{
    struct lm_devllm_server *s = c->srv;
    if (s->opts.drop_connection) {
        log_debug("fault: dropping the connection without an answer");
        lm_http_abort(c->http);
        return true;
    }
    if (s->opts.fail_rate > 0 &&
        (double)(lm_devllm_rand(&s->rng) >> 11) / 9007199254740992.0 < s->opts.fail_rate) {
        reply_error(c, api, 500, "server_error", NULL, NULL,
                    "labman-devllm: injected failure (--fail-rate)");
        return true;
    }
    if (loading(s) && s->opts.flavor != LM_DEVLLM_OLLAMA) {
        reply_error(c, api, 503, "unavailable_error", NULL, NULL, "Loading model");
        return true;
    }
    return false;
}

static void
h_chat(struct lm_devllm_conn *c, json_t *body)
{
    struct gen_params p = {0};
    if (intercept(c, API_OPENAI) || parse_model(c, API_OPENAI, body, &p) ||
        parse_common(c, API_OPENAI, body, &p) || parse_messages(c, API_OPENAI, body, &p))
        return;
    gen_start(c, API_OPENAI, GEN_CHAT, &p);
}

static void
h_completions(struct lm_devllm_conn *c, json_t *body)
{
    struct gen_params p = {0};
    if (intercept(c, API_OPENAI) || parse_model(c, API_OPENAI, body, &p) ||
        parse_common(c, API_OPENAI, body, &p) || parse_prompt(c, API_OPENAI, body, &p))
        return;
    gen_start(c, API_OPENAI, GEN_COMPLETION, &p);
}

/* Ollama: an empty prompt loads the model, or unloads it with keep_alive 0. */
static void
ollama_load_unload(struct lm_devllm_conn *c, const struct gen_params *p, bool chat)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_devllm_model *m = &s->models[p->model];
    struct lm_buf *b = scratch(c);
    char ts[48];
    const char *reason;

    if (p->keep_alive_ms == 0) {
        if (m->active == 0) {
            if (m->loaded)
                log_info("model %s unloaded (keep_alive 0)", m->name);
            m->loaded = false;
        } else {
            m->expires_ms = lm_devllm_wall_ms();
        }
        reason = "unload";
    } else {
        if (!m->loaded) {
            m->loaded = true;
            m->loaded_at_ms = lm_devllm_wall_ms();
            log_info("model %s loaded", m->name);
        }
        m->expires_ms = p->keep_alive_ms < 0 ? INT64_MAX : lm_devllm_wall_ms() + p->keep_alive_ms;
        reason = "load";
    }
    ollama_created_at(ts, sizeof(ts));
    lm_buf_printf(b, "{\"model\":\"%s\",\"created_at\":\"%s\",", m->name, ts);
    if (chat)
        lm_buf_puts(b, "\"message\":{\"role\":\"assistant\",\"content\":\"\"},");
    else
        lm_buf_puts(b, "\"response\":\"\",");
    lm_buf_printf(b, "\"done_reason\":\"%s\",\"done\":true}", reason);
    reply_buf(c, 200, b);
}

static void
h_ollama_chat(struct lm_devllm_conn *c, json_t *body)
{
    struct gen_params p = {0};
    if (intercept(c, API_OLLAMA) || parse_model(c, API_OLLAMA, body, &p) ||
        parse_common(c, API_OLLAMA, body, &p) || parse_messages(c, API_OLLAMA, body, &p))
        return;
    json_t *msgs = json_object_get(body, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        ollama_load_unload(c, &p, true);
        return;
    }
    gen_start(c, API_OLLAMA, GEN_OLLAMA_CHAT, &p);
}

static void
h_ollama_generate(struct lm_devllm_conn *c, json_t *body)
{
    struct gen_params p = {0};
    if (intercept(c, API_OLLAMA) || parse_model(c, API_OLLAMA, body, &p) ||
        parse_common(c, API_OLLAMA, body, &p) || parse_prompt(c, API_OLLAMA, body, &p))
        return;
    if (!p.has_prompt) {
        ollama_load_unload(c, &p, false);
        return;
    }
    gen_start(c, API_OLLAMA, GEN_OLLAMA_GENERATE, &p);
}

/* --- embeddings ------------------------------------------------------------ */

struct embed_input {
    const char *text;
    size_t len;
    unsigned tokens;
    uint64_t h;
};

/* Accepts a string, an array of strings, an array of token ids or an array
 * of such arrays, as OpenAI does. */
static int
embed_inputs(json_t *input, struct embed_input *out, size_t *n, uint64_t h)
{
    size_t count = 0;
    if (json_is_string(input)) {
        out[0] = (struct embed_input){json_string_value(input), json_string_length(input), 0, h};
        *n = 1;
        goto count;
    }
    if (!json_is_array(input) || json_array_size(input) == 0 ||
        json_array_size(input) > MAX_INPUTS)
        return -EINVAL;
    if (json_is_integer(json_array_get(input, 0))) {
        size_t i;
        json_t *v;
        uint64_t th = h;
        json_array_foreach(input, i, v) {
            if (!json_is_integer(v))
                return -EINVAL;
            json_int_t t = json_integer_value(v);
            th = lm_devllm_hash(th, &t, sizeof(t));
        }
        out[0] = (struct embed_input){"", 0, (unsigned)json_array_size(input), th};
        *n = 1;
        return 0;
    }
    size_t i;
    json_t *v;
    json_array_foreach(input, i, v) {
        if (json_is_string(v)) {
            out[count++] = (struct embed_input){json_string_value(v), json_string_length(v), 0, h};
        } else if (json_is_array(v) && json_array_size(v) > 0) {
            size_t j;
            json_t *t;
            uint64_t th = h;
            json_array_foreach(v, j, t) {
                if (!json_is_integer(t))
                    return -EINVAL;
                json_int_t tv = json_integer_value(t);
                th = lm_devllm_hash(th, &tv, sizeof(tv));
            }
            out[count++] = (struct embed_input){"", 0, (unsigned)json_array_size(v), th};
        } else {
            return -EINVAL;
        }
    }
    *n = count;
count:
    for (size_t k = 0; k < *n; k++)
        if (out[k].len)
            out[k].tokens = (unsigned)lm_devllm_count_words(out[k].text, out[k].len);
    return 0;
}

static int
embed_dims(struct lm_devllm_conn *c, enum api api, json_t *body, unsigned *dims)
{
    json_t *d = json_object_get(body, "dimensions");
    *dims = DEFAULT_DIMS;
    if (!d || json_is_null(d))
        return 0;
    if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 4096) {
        bad_request(c, api, "dimensions", "dimensions must be an integer from 1 to 4096");
        return -1;
    }
    *dims = (unsigned)json_integer_value(d);
    return 0;
}

static void
h_embeddings(struct lm_devllm_conn *c, json_t *body)
{
    static struct embed_input in[MAX_INPUTS];
    struct gen_params p = {0};
    unsigned dims;
    size_t n = 0;
    bool b64 = false;

    if (intercept(c, API_OPENAI) || parse_model(c, API_OPENAI, body, &p) ||
        embed_dims(c, API_OPENAI, body, &dims))
        return;
    json_t *fmt = json_object_get(body, "encoding_format");
    if (json_is_string(fmt) && strcmp(json_string_value(fmt), "base64") == 0)
        b64 = true;
    else if (fmt && !json_is_null(fmt) &&
             !(json_is_string(fmt) && strcmp(json_string_value(fmt), "float") == 0)) {
        bad_request(c, API_OPENAI, "encoding_format", "encoding_format must be float or base64");
        return;
    }
    if (embed_inputs(json_object_get(body, "input"), in, &n, p.h) < 0) {
        bad_request(c, API_OPENAI, "input",
                    "input must be a string, an array of strings or an array of token arrays "
                    "(at most 2048)");
        return;
    }
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    unsigned tokens = 0;
    int rc = lm_buf_puts(b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < n && rc == 0; i++) {
        tokens += in[i].tokens;
        lm_buf_printf(b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":",
                      i ? "," : "", i);
        rc = lm_devllm_embedding(b, in[i].h, in[i].text, in[i].len, dims, b64);
        if (rc == 0)
            rc = lm_buf_puts(b, "}");
    }
    if (rc) {
        reply_error(c, API_OPENAI, 413, "invalid_request_error", "input", NULL,
                    "the embeddings answer would be too large");
        return;
    }
    lm_buf_printf(b, "],\"model\":\"%s\",\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u}}",
                  s->models[p.model].name, tokens, tokens);
    s->models[p.model].prompt_tokens_total += tokens;
    reply_buf(c, 200, b);
}

static void
h_ollama_embed(struct lm_devllm_conn *c, json_t *body)
{
    static struct embed_input in[MAX_INPUTS];
    struct gen_params p = {0};
    unsigned dims;
    size_t n = 0;
    uint64_t t0 = lm_now_us();

    if (intercept(c, API_OLLAMA) || parse_model(c, API_OLLAMA, body, &p) ||
        embed_dims(c, API_OLLAMA, body, &dims))
        return;
    if (embed_inputs(json_object_get(body, "input"), in, &n, p.h) < 0) {
        bad_request(c, API_OLLAMA, "input", "input must be a string or an array of strings");
        return;
    }
    struct lm_devllm_server *s = c->srv;
    struct lm_devllm_model *m = &s->models[p.model];
    bool was_loaded = m->loaded;
    m->loaded = true;
    m->expires_ms = lm_devllm_wall_ms() + 5 * 60 * 1000;
    struct lm_buf *b = scratch(c);
    unsigned tokens = 0;
    int rc = lm_buf_printf(b, "{\"model\":\"%s\",\"embeddings\":[", m->name);
    for (size_t i = 0; i < n && rc == 0; i++) {
        tokens += in[i].tokens;
        if (i)
            lm_buf_puts(b, ",");
        rc = lm_devllm_embedding(b, in[i].h, in[i].text, in[i].len, dims, false);
    }
    if (rc) {
        reply_error(c, API_OLLAMA, 413, "", NULL, NULL, "the embeddings answer is too large");
        return;
    }
    uint64_t load_ns = was_loaded ? 0 : (uint64_t)s->opts.load_ms * 1000000;
    lm_buf_printf(b, "],\"total_duration\":%" PRIu64 ",\"load_duration\":%" PRIu64
                     ",\"prompt_eval_count\":%u}",
                  (lm_now_us() - t0) * 1000 + load_ns, load_ns, tokens);
    reply_buf(c, 200, b);
}

/* --- probes and listings ------------------------------------------------------ */

static void
h_models(struct lm_devllm_conn *c, json_t *body)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    long long created = (long long)(s->models[0].loaded_at_ms ? s->models[0].loaded_at_ms / 1000
                                                              : (long long)time(NULL));
    (void)body;
    lm_buf_puts(b, "{\"object\":\"list\",\"data\":[");
    /* llama-server serves exactly one model. */
    size_t n = s->opts.flavor == LM_DEVLLM_LLAMACPP ? 1 : s->nmodels;
    for (size_t i = 0; i < n; i++) {
        const struct lm_devllm_model *m = &s->models[i];
        lm_buf_printf(b, "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,", i ? "," : "",
                      m->name, created);
        switch (s->opts.flavor) {
        case LM_DEVLLM_OPENAI:
            lm_buf_puts(b, "\"owned_by\":\"labman-devllm\"}");
            break;
        case LM_DEVLLM_OLLAMA:
            lm_buf_puts(b, "\"owned_by\":\"library\"}");
            break;
        case LM_DEVLLM_LLAMACPP:
            lm_buf_printf(b, "\"owned_by\":\"llamacpp\",\"meta\":{\"vocab_type\":2,"
                             "\"n_vocab\":128256,\"n_ctx_train\":%u,\"n_embd\":2048,"
                             "\"n_params\":%" PRIu64 ",\"size\":%" PRIu64 "}}",
                          s->opts.ctx_len, (uint64_t)(m->size / 0.6), m->size);
            break;
        case LM_DEVLLM_VLLM:
            lm_buf_printf(b, "\"owned_by\":\"vllm\",\"root\":\"%s\",\"parent\":null,"
                             "\"max_model_len\":%u,\"permission\":[{\"id\":\"modelperm-%.16s\","
                             "\"object\":\"model_permission\",\"created\":%lld,"
                             "\"allow_create_engine\":false,\"allow_sampling\":true,"
                             "\"allow_logprobs\":true,\"allow_search_indices\":false,"
                             "\"allow_view\":true,\"allow_fine_tuning\":false,"
                             "\"organization\":\"*\",\"group\":null,\"is_blocking\":false}]}",
                          m->name, s->opts.ctx_len, m->digest, created);
            break;
        }
    }
    lm_buf_puts(b, "]}");
    reply_buf(c, 200, b);
}

static void
h_ollama_root(struct lm_devllm_conn *c, json_t *body)
{
    (void)body;
    reply_str(c, 200, "text/plain; charset=utf-8", "Ollama is running");
}

static void
h_ollama_version(struct lm_devllm_conn *c, json_t *body)
{
    (void)body;
    reply_str(c, 200, JSON_CT, "{\"version\":\"0.5.7\"}");
}

static void
h_tags(struct lm_devllm_conn *c, json_t *body)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    char ts[48];
    (void)body;
    lm_devllm_iso8601(ts, sizeof(ts), lm_devllm_wall_ms() - (int64_t)(lm_now_ms() - s->started_ms),
                      true);
    lm_buf_puts(b, "{\"models\":[");
    for (size_t i = 0; i < s->nmodels; i++) {
        const struct lm_devllm_model *m = &s->models[i];
        lm_buf_printf(b, "%s{\"name\":\"%s\",\"model\":\"%s\",\"modified_at\":\"%s\","
                         "\"size\":%" PRIu64 ",\"digest\":\"%s\",",
                      i ? "," : "", m->name, m->name, ts, m->size, m->digest);
        put_details(b, m);
        lm_buf_puts(b, "}");
    }
    lm_buf_puts(b, "]}");
    reply_buf(c, 200, b);
}

static void
h_ps(struct lm_devllm_conn *c, json_t *body)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    bool first = true;
    char ts[48];
    (void)body;
    expire_models(s);
    lm_buf_puts(b, "{\"models\":[");
    for (size_t i = 0; i < s->nmodels; i++) {
        const struct lm_devllm_model *m = &s->models[i];
        if (!m->loaded)
            continue;
        /* Ollama shows a model kept forever with a date centuries away. */
        int64_t exp = m->expires_ms == INT64_MAX
                          ? lm_devllm_wall_ms() + 292LL * 365 * 24 * 3600 * 1000
                          : m->expires_ms;
        lm_devllm_iso8601(ts, sizeof(ts), exp, true);
        lm_buf_printf(b, "%s{\"name\":\"%s\",\"model\":\"%s\",\"size\":%" PRIu64
                         ",\"digest\":\"%s\",",
                      first ? "" : ",", m->name, m->name, m->size, m->digest);
        put_details(b, m);
        lm_buf_printf(b, ",\"expires_at\":\"%s\",\"size_vram\":%" PRIu64
                         ",\"context_length\":%u}",
                      ts, m->size, s->opts.ctx_len);
        first = false;
    }
    lm_buf_puts(b, "]}");
    reply_buf(c, 200, b);
}

static void
h_show(struct lm_devllm_conn *c, json_t *body)
{
    struct gen_params p = {0};
    struct lm_devllm_server *s = c->srv;
    if (parse_model(c, API_OLLAMA, body, &p))
        return;
    const struct lm_devllm_model *m = &s->models[p.model];
    struct lm_buf *b = scratch(c);
    char ts[48];
    lm_devllm_iso8601(ts, sizeof(ts), lm_devllm_wall_ms(), true);
    lm_buf_printf(b,
                  "{\"license\":\"\",\"modelfile\":\"# Modelfile generated by labman-devllm\\n"
                  "FROM %s\\n\",\"parameters\":\"num_ctx %u\",\"template\":\"{{ .Prompt }}\",",
                  m->name, s->opts.ctx_len);
    put_details(b, m);
    lm_buf_printf(b,
                  ",\"model_info\":{\"general.architecture\":\"%s\","
                  "\"general.parameter_count\":%" PRIu64 ",\"%s.context_length\":%u},"
                  "\"capabilities\":[\"completion\"],\"modified_at\":\"%s\"}",
                  m->family, (uint64_t)(m->size / 0.6), m->family, s->opts.ctx_len, ts);
    reply_buf(c, 200, b);
}

static unsigned
total_slots(const struct lm_devllm_server *s)
{
    return s->opts.max_concurrent ? s->opts.max_concurrent : 8;
}

static void
put_slot(struct lm_buf *b, const struct lm_devllm_server *s, unsigned id, bool processing)
{
    lm_buf_printf(b,
                  "{\"id\":%u,\"id_task\":-1,\"n_ctx\":%u,\"speculative\":false,"
                  "\"is_processing\":%s,\"params\":{\"n_predict\":-1,\"seed\":%" PRIu64
                  ",\"temperature\":0.8,\"top_k\":40,\"top_p\":0.95,\"stream\":false},"
                  "\"prompt\":\"\",\"next_token\":{\"has_next_token\":true,\"n_remain\":-1,"
                  "\"n_decoded\":0}}",
                  id, s->opts.ctx_len, processing ? "true" : "false", s->opts.seed);
}

static void
h_llama_health(struct lm_devllm_conn *c, json_t *body)
{
    (void)body;
    if (loading(c->srv))
        reply_str(c, 503, JSON_CT,
                  "{\"error\":{\"code\":503,\"message\":\"Loading model\","
                  "\"type\":\"unavailable_error\"}}");
    else
        reply_str(c, 200, JSON_CT, "{\"status\":\"ok\"}");
}

static void
h_props(struct lm_devllm_conn *c, json_t *body)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    (void)body;
    lm_buf_puts(b, "{\"default_generation_settings\":");
    put_slot(b, s, 0, false);
    lm_buf_printf(b, ",\"total_slots\":%u,\"model_path\":\"/models/%s.gguf\","
                     "\"chat_template\":\"{{ messages }}\",\"modalities\":{\"vision\":false},"
                     "\"build_info\":\"b4600-labman-devllm\"}",
                  total_slots(s), s->models[0].name);
    reply_buf(c, 200, b);
}

static void
h_slots(struct lm_devllm_conn *c, json_t *body)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    (void)body;
    lm_buf_puts(b, "[");
    for (unsigned i = 0; i < total_slots(s); i++) {
        if (i)
            lm_buf_puts(b, ",");
        put_slot(b, s, i, i < s->active);
    }
    lm_buf_puts(b, "]");
    reply_buf(c, 200, b);
}

static void
h_vllm_health(struct lm_devllm_conn *c, json_t *body)
{
    (void)body;
    /* vLLM answers an empty 200 once the engine is up. */
    if (loading(c->srv))
        reply_str(c, 503, JSON_CT, "{\"detail\":\"Engine is loading\"}");
    else
        respond(c, 200, JSON_CT, NULL, "", 0);
}

static void
h_vllm_version(struct lm_devllm_conn *c, json_t *body)
{
    (void)body;
    reply_str(c, 200, JSON_CT, "{\"version\":\"0.6.6\"}");
}

static void
h_vllm_metrics(struct lm_devllm_conn *c, json_t *body)
{
    struct lm_devllm_server *s = c->srv;
    struct lm_buf *b = scratch(c);
    (void)body;
    lm_buf_puts(b, "# HELP vllm:num_requests_running Number of requests currently running "
                   "on GPU.\n# TYPE vllm:num_requests_running gauge\n");
    for (size_t i = 0; i < s->nmodels; i++)
        lm_buf_printf(b, "vllm:num_requests_running{model_name=\"%s\"} %u.0\n", s->models[i].name,
                      s->models[i].active);
    lm_buf_puts(b, "# HELP vllm:num_requests_waiting Number of requests waiting to be "
                   "processed.\n# TYPE vllm:num_requests_waiting gauge\n");
    for (size_t i = 0; i < s->nmodels; i++)
        lm_buf_printf(b, "vllm:num_requests_waiting{model_name=\"%s\"} 0.0\n", s->models[i].name);
    lm_buf_puts(b, "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent "
                   "usage.\n# TYPE vllm:gpu_cache_usage_perc gauge\n");
    for (size_t i = 0; i < s->nmodels; i++)
        lm_buf_printf(b, "vllm:gpu_cache_usage_perc{model_name=\"%s\"} %.4f\n",
                      s->models[i].name,
                      (double)s->models[i].active / (double)total_slots(s) > 1.0
                          ? 1.0
                          : (double)s->models[i].active / (double)total_slots(s));
    lm_buf_puts(b, "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
                   "# TYPE vllm:prompt_tokens_total counter\n");
    for (size_t i = 0; i < s->nmodels; i++)
        lm_buf_printf(b, "vllm:prompt_tokens_total{model_name=\"%s\"} %" PRIu64 ".0\n",
                      s->models[i].name, s->models[i].prompt_tokens_total);
    lm_buf_puts(b, "# HELP vllm:generation_tokens_total Number of generation tokens "
                   "processed.\n# TYPE vllm:generation_tokens_total counter\n");
    for (size_t i = 0; i < s->nmodels; i++)
        lm_buf_printf(b, "vllm:generation_tokens_total{model_name=\"%s\"} %" PRIu64 ".0\n",
                      s->models[i].name, s->models[i].gen_tokens_total);
    lm_buf_puts(b, "# HELP vllm:request_success_total Count of successfully processed "
                   "requests.\n# TYPE vllm:request_success_total counter\n");
    for (size_t i = 0; i < s->nmodels; i++)
        lm_buf_printf(b, "vllm:request_success_total{model_name=\"%s\"} %" PRIu64 ".0\n",
                      s->models[i].name, s->models[i].success_total);
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b->data, b->len);
}

/* --- routing ----------------------------------------------------------------- */

struct route {
    const char *method;
    const char *path;
    unsigned flavors;
    bool json; /* the body must be a JSON object */
    handler_fn *fn;
};

static const struct route routes[] = {
    {"GET", "/", F_OLLAMA, false, h_ollama_root},
    {"GET", "/api/version", F_OLLAMA, false, h_ollama_version},
    {"GET", "/api/tags", F_OLLAMA, false, h_tags},
    {"GET", "/api/ps", F_OLLAMA, false, h_ps},
    {"POST", "/api/show", F_OLLAMA, true, h_show},
    {"POST", "/api/chat", F_OLLAMA, true, h_ollama_chat},
    {"POST", "/api/generate", F_OLLAMA, true, h_ollama_generate},
    {"POST", "/api/embed", F_OLLAMA, true, h_ollama_embed},
    {"GET", "/v1/models", F_ALL, false, h_models},
    {"POST", "/v1/chat/completions", F_ALL, true, h_chat},
    {"POST", "/v1/completions", F_ALL, true, h_completions},
    {"POST", "/v1/embeddings", F_ALL, true, h_embeddings},
    {"GET", "/models", F_LLAMA, false, h_models},
    {"POST", "/chat/completions", F_LLAMA, true, h_chat},
    {"POST", "/completions", F_LLAMA, true, h_completions},
    {"POST", "/embeddings", F_LLAMA, true, h_embeddings},
    {"GET", "/health", F_LLAMA, false, h_llama_health},
    {"GET", "/props", F_LLAMA, false, h_props},
    {"GET", "/slots", F_LLAMA, false, h_slots},
    {"GET", "/health", F_VLLM, false, h_vllm_health},
    {"GET", "/version", F_VLLM, false, h_vllm_version},
    {"GET", "/metrics", F_VLLM, false, h_vllm_metrics},
};

static void
not_found(struct lm_devllm_conn *c, const struct lm_http_request *r, bool wrong_method)
{
    char esc[128];
    switch (c->srv->opts.flavor) {
    case LM_DEVLLM_OLLAMA:
        if (strncmp(r->path, "/v1/", 4) != 0) {
            reply_str(c, wrong_method ? 405 : 404, "text/plain",
                      wrong_method ? "405 method not allowed" : "404 page not found");
            return;
        }
        break;
    case LM_DEVLLM_LLAMACPP:
        reply_str(c, 404, JSON_CT,
                  "{\"error\":{\"code\":404,\"message\":\"File Not Found\","
                  "\"type\":\"not_found_error\"}}");
        return;
    case LM_DEVLLM_VLLM:
        if (wrong_method)
            reply_str(c, 405, JSON_CT, "{\"detail\":\"Method Not Allowed\"}");
        else
            reply_str(c, 404, JSON_CT, "{\"detail\":\"Not Found\"}");
        return;
    case LM_DEVLLM_OPENAI:
        break;
    }
    lm_escape(esc, sizeof(esc), r->path, strlen(r->path));
    reply_error(c, API_OPENAI, wrong_method ? 405 : 404, "invalid_request_error", NULL, NULL,
                "Invalid URL (%s %s)", r->method, esc);
}

void
lm_devllm_api_handle(struct lm_http_conn *hc, const struct lm_http_request *r, void *arg)
{
    struct lm_devllm_conn ctx = {.srv = arg, .http = hc}, *c = &ctx;
    c->srv->requests_total++;
    unsigned flavor = 1u << c->srv->opts.flavor;
    const struct route *hit = NULL;
    bool path_known = false;

    for (size_t i = 0; i < LM_ARRAY_LEN(routes); i++) {
        if (!(routes[i].flavors & flavor) || strcmp(routes[i].path, r->path) != 0)
            continue;
        path_known = true;
        if (strcmp(routes[i].method, r->method) == 0) {
            hit = &routes[i];
            break;
        }
    }
    if (!hit) {
        not_found(c, r, path_known);
        return;
    }
    if (!hit->json) {
        hit->fn(c, NULL);
        return;
    }
    enum api api = strncmp(r->path, "/api/", 5) == 0 ? API_OLLAMA : API_OPENAI;
    json_error_t jerr;
    json_t *body = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(body)) {
        char msg[256], esc[200];
        lm_escape(esc, sizeof(esc), jerr.text, strlen(jerr.text));
        if (body)
            snprintf(msg, sizeof(msg), "the request body must be a JSON object");
        else
            snprintf(msg, sizeof(msg), "invalid JSON body: %s (line %d, column %d)", esc,
                     jerr.line, jerr.column);
        bad_request(c, api, NULL, msg);
        json_decref(body);
        return;
    }
    hit->fn(c, body);
    json_decref(body);
}
