/* One health and discovery check of one endpoint: a short chain of GETs
 * (kind detection first when the kind is not known), each async through
 * lm_upstream with short deadlines and a body cap, parsed with jansson. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endpoints/endpoints_internal.h"

#define LM_LOG_MODULE "endpoints"
#include "log/log.h"

enum step {
    S_DET_OLLAMA,  /* GET /api/version */
    S_DET_PROPS,   /* GET /props */
    S_DET_VERSION, /* GET /version */
    S_DET_METRICS, /* GET /metrics */
    S_DET_MODELS,  /* GET /v1/models */
    S_OL_TAGS,
    S_OL_PS,
    S_OL_SHOW,
    S_LC_HEALTH,
    S_LC_PROPS,
    S_LC_SLOTS,
    S_LC_MODELS,
    S_VL_HEALTH,
    S_VL_MODELS,
    S_VL_METRICS,
    S_OA_MODELS,
    S_DONE,
};

static const char *const step_path[] = {
    [S_DET_OLLAMA] = "/api/version", [S_DET_PROPS] = "/props",      [S_DET_VERSION] = "/version",
    [S_DET_METRICS] = "/metrics",    [S_DET_MODELS] = "/v1/models", [S_OL_TAGS] = "/api/tags",
    [S_OL_PS] = "/api/ps",           [S_OL_SHOW] = "/api/show",     [S_LC_HEALTH] = "/health",
    [S_LC_PROPS] = "/props",         [S_LC_SLOTS] = "/slots",       [S_LC_MODELS] = "/v1/models",
    [S_VL_HEALTH] = "/health",       [S_VL_MODELS] = "/v1/models",  [S_VL_METRICS] = "/metrics",
    [S_OA_MODELS] = "/v1/models",
};

struct lm_probe {
    struct lm_ep *ep;
    struct lm_upstream *up;
    struct lm_upstream_req *req;
    enum step step;
    int status;
    struct lm_buf body;
    struct lm_probe_result res;
    size_t show_i;   /* next model to ask /api/show about */
    int shows;       /* asked this check */
    char *show_body; /* the POST body of the running /api/show */
    int64_t n_ctx;   /* llama.cpp /props */
};

/* ---- results ---- */

void
lm_probe_result_init(struct lm_probe_result *res)
{
    memset(res, 0, sizeof(*res));
    res->free_slots = res->running = res->waiting = -1;
}

void
lm_probe_result_clear(struct lm_probe_result *res)
{
    lm_models_free(res->models, res->n_models);
    res->models = NULL;
    res->n_models = 0;
}

void
lm_probe_result_fail(struct lm_probe_result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->err, sizeof(res->err), fmt, ap);
    va_end(ap);
    res->ok = false;
}

/* ---- parsers ---- */

static json_t *
load(const char *body, size_t len, char *err, size_t errcap)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    if (!j) {
        char esc[96];
        lm_escape(esc, sizeof(esc), je.text, strlen(je.text));
        snprintf(err, errcap, "not JSON (%s)", esc);
    }
    return j;
}

/* A short printable string field, copied; NULL when absent or unusable. */
static char *
opt_str(json_t *o, const char *key, size_t max)
{
    const char *s = json_string_value(json_object_get(o, key));
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return NULL;
    return lm_xstrdup(s);
}

static int64_t
opt_int(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v) && json_integer_value(v) > 0)
        return json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) >= 1 && json_real_value(v) < 1e15)
        return (int64_t)json_real_value(v);
    return 0;
}

/* Appends a model named by key in o; false when o has no usable id. */
static struct lm_model *
add_model(struct lm_probe_result *res, json_t *o, const char *key)
{
    char *id = opt_str(o, key, LM_MODEL_ID_MAX);
    if (!id)
        return NULL;
    if (lm_models_find(res->models, res->n_models, id) >= 0) {
        free(id);
        return NULL;
    }
    if (res->n_models >= LM_ENDPOINT_MAX_MODELS) {
        res->truncated = true;
        free(id);
        return NULL;
    }
    res->models = lm_xrealloc(res->models, (res->n_models + 1) * sizeof(*res->models));
    struct lm_model *m = &res->models[res->n_models++];
    memset(m, 0, sizeof(*m));
    m->id = id;
    m->alias = lm_model_alias_of(id);
    return m;
}

int
lm_parse_version(const char *body, size_t len)
{
    char err[8];
    json_t *j = load(body, len, err, sizeof(err));
    int rc = json_is_string(json_object_get(j, "version")) ? 0 : -EINVAL;
    json_decref(j);
    return rc;
}

int
lm_parse_ollama_version(const char *body, size_t len)
{
    return lm_parse_version(body, len);
}

static json_t *
array_field(const char *body, size_t len, const char *key, json_t **root, char *err, size_t errcap)
{
    *root = load(body, len, err, errcap);
    if (!*root)
        return NULL;
    json_t *a = json_object_get(*root, key);
    if (!json_is_array(a)) {
        snprintf(err, errcap, "no \"%s\" list in the answer", key);
        return NULL;
    }
    return a;
}

int
lm_parse_ollama_tags(const char *body, size_t len, struct lm_probe_result *res, char *err,
                     size_t errcap)
{
    json_t *root, *v;
    size_t i;
    json_t *a = array_field(body, len, "models", &root, err, errcap);
    if (!a) {
        json_decref(root);
        return -EINVAL;
    }
    json_array_foreach(a, i, v)
    {
        struct lm_model *m = add_model(res, v, "name");
        if (!m && json_is_object(v) && !json_object_get(v, "name"))
            m = add_model(res, v, "model");
        if (!m)
            continue;
        json_t *d = json_object_get(v, "details");
        m->digest = opt_str(v, "digest", LM_MODEL_FIELD_MAX);
        m->family = opt_str(d, "family", LM_MODEL_FIELD_MAX);
        m->param_size = opt_str(d, "parameter_size", LM_MODEL_FIELD_MAX);
        m->quant = opt_str(d, "quantization_level", LM_MODEL_FIELD_MAX);
    }
    json_decref(root);
    return 0;
}

int
lm_parse_ollama_ps(const char *body, size_t len, struct lm_probe_result *res, char *err,
                   size_t errcap)
{
    json_t *root, *v;
    size_t i;
    json_t *a = array_field(body, len, "models", &root, err, errcap);
    if (!a) {
        json_decref(root);
        return -EINVAL;
    }
    json_array_foreach(a, i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        if (!name)
            name = json_string_value(json_object_get(v, "model"));
        int k = name ? lm_models_find(res->models, res->n_models, name) : -1;
        if (k < 0)
            continue;
        res->models[k].loaded = true;
        int64_t ctx = opt_int(v, "context_length");
        if (ctx > 0)
            res->models[k].context_length = ctx;
    }
    json_decref(root);
    return 0;
}

int
lm_parse_ollama_show(const char *body, size_t len, int64_t *ctx, char *err, size_t errcap)
{
    json_t *root = load(body, len, err, errcap);
    if (!root)
        return -EINVAL;
    json_t *info = json_object_get(root, "model_info");
    const char *k;
    json_t *v;
    *ctx = 0;
    /* "<architecture>.context_length", e.g. "llama.context_length". */
    json_object_foreach(info, k, v)
    {
        size_t n = strlen(k);
        if (n > 15 && strcmp(k + n - 15, ".context_length") == 0 && json_is_integer(v) &&
            json_integer_value(v) > 0) {
            *ctx = json_integer_value(v);
            break;
        }
    }
    json_decref(root);
    return 0;
}

int
lm_parse_openai_models(const char *body, size_t len, struct lm_probe_result *res, char *err,
                       size_t errcap)
{
    json_t *root, *v;
    size_t i;
    json_t *a = array_field(body, len, "data", &root, err, errcap);
    if (!a) {
        json_decref(root);
        return -EINVAL;
    }
    json_array_foreach(a, i, v)
    {
        struct lm_model *m = add_model(res, v, "id");
        if (!m)
            continue;
        m->loaded = true;
        m->context_length = opt_int(v, "max_model_len");
        if (!m->context_length)
            m->context_length = opt_int(json_object_get(v, "meta"), "n_ctx_train");
        if (!m->context_length)
            m->context_length = opt_int(v, "context_length");
    }
    json_decref(root);
    return 0;
}

int
lm_parse_llamacpp_props(const char *body, size_t len, int64_t *n_ctx, int *total_slots, char *err,
                        size_t errcap)
{
    json_t *root = load(body, len, err, errcap);
    if (!root)
        return -EINVAL;
    json_t *dgs = json_object_get(root, "default_generation_settings");
    if (!json_is_object(dgs)) {
        snprintf(err, errcap, "no \"default_generation_settings\" in the answer");
        json_decref(root);
        return -EINVAL;
    }
    *n_ctx = opt_int(dgs, "n_ctx");
    if (!*n_ctx)
        *n_ctx = opt_int(json_object_get(dgs, "params"), "n_ctx");
    int64_t ts = opt_int(root, "total_slots");
    *total_slots = ts > 0 && ts < 1 << 20 ? (int)ts : -1;
    json_decref(root);
    return 0;
}

int
lm_parse_llamacpp_slots(const char *body, size_t len, int *free_slots, char *err, size_t errcap)
{
    json_t *root = load(body, len, err, errcap), *v;
    size_t i;
    if (!root)
        return -EINVAL;
    if (!json_is_array(root)) {
        snprintf(err, errcap, "not a list of slots");
        json_decref(root);
        return -EINVAL;
    }
    int n = 0;
    json_array_foreach(root, i, v)
    {
        json_t *busy = json_object_get(v, "is_processing");
        json_t *state = json_object_get(v, "state");
        if (json_is_boolean(busy)) {
            n += !json_is_true(busy);
        } else if (json_is_integer(state)) {
            n += json_integer_value(state) == 0;
        } else {
            snprintf(err, errcap, "slot %zu says neither is_processing nor state", i);
            json_decref(root);
            return -EINVAL;
        }
    }
    *free_slots = n;
    json_decref(root);
    return 0;
}

bool
lm_parse_loading(int status, const char *body, size_t len)
{
    if (status != 503)
        return false;
    char err[8];
    json_t *root = load(body, len, err, sizeof(err));
    json_t *e = json_object_get(root, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (!msg)
        msg = json_string_value(json_object_get(root, "status"));
    bool loading = msg && strcasestr(msg, "loading") != NULL;
    json_decref(root);
    return loading;
}

/* Value of a Prometheus sample line "name{...} value" or "name value". */
static bool
sample_value(const char *line, size_t n, const char *name, double *out)
{
    size_t k = strlen(name);
    if (n <= k || memcmp(line, name, k) != 0 || (line[k] != '{' && line[k] != ' '))
        return false;
    const char *p = line + k, *end = line + n;
    if (*p == '{') {
        /* Skip the labels, minding quoted values. */
        bool q = false;
        for (p++; p < end; p++) {
            if (q && *p == '\\' && p + 1 < end)
                p++; /* not past end: a pointer two past it is undefined */
            else if (*p == '"')
                q = !q;
            else if (!q && *p == '}')
                break;
        }
        if (p >= end)
            return false;
        p++;
    }
    char num[64];
    while (p < end && *p == ' ')
        p++;
    size_t m = 0;
    while (p < end && *p != ' ' && m < sizeof(num) - 1)
        num[m++] = *p++;
    num[m] = '\0';
    char *e;
    double d = strtod(num, &e);
    if (m == 0 || *e || d != d || d < 0 || d > 1e9)
        return false;
    *out = d;
    return true;
}

int
lm_parse_vllm_metrics(const char *body, size_t len, int *running, int *waiting)
{
    const char *p = body, *end = body + len;
    double run = 0, wait = 0, v;
    bool any = false, got_run = false, got_wait = false;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (n >= 5 && memcmp(p, "vllm:", 5) == 0)
            any = true;
        if (sample_value(p, n, "vllm:num_requests_running", &v)) {
            run += v;
            got_run = true;
        } else if (sample_value(p, n, "vllm:num_requests_waiting", &v)) {
            wait += v;
            got_wait = true;
        }
        p = nl ? nl + 1 : end;
    }
    if (!any)
        return -EINVAL;
    *running = got_run ? (int)(run > 1e6 ? 1e6 : run) : -1;
    *waiting = got_wait ? (int)(wait > 1e6 ? 1e6 : wait) : -1;
    return 0;
}

/* ---- the check ---- */

static void start_step(struct lm_probe *p, enum step s);

static void
finish(struct lm_probe *p)
{
    struct lm_ep *ep = p->ep;
    struct lm_probe_result res = p->res;
    ep->probe = NULL;
    lm_buf_release(&p->body);
    free(p->show_body);
    free(p);
    lm_endpoints_checked(ep, &res);
    lm_probe_result_clear(&res);
}

static void fail(struct lm_probe *p, const char *fmt, ...) LM_PRINTF(2, 3);
static void
fail(struct lm_probe *p, const char *fmt, ...)
{
    char msg[LM_PROBE_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    lm_probe_result_fail(&p->res, "%s %s: %s", p->step == S_OL_SHOW ? "POST" : "GET",
                         step_path[p->step], msg);
    finish(p);
}

/* The next Ollama model that still lacks a context length, or n_models. */
static size_t
next_show(struct lm_probe *p)
{
    struct lm_ep *ep = p->ep;
    while (p->show_i < p->res.n_models) {
        const struct lm_model *m = &p->res.models[p->show_i];
        if (m->context_length == 0 && lm_model_allowed(&ep->include, &ep->exclude, m->id))
            break;
        p->show_i++;
    }
    return p->show_i;
}

/* Context lengths already known from the last check (same digest) are
 * kept, so /api/show runs once per model, not once per check. */
static void
carry_context(struct lm_probe *p)
{
    const struct lm_endpoint *e = &p->ep->pub;
    for (size_t i = 0; i < p->res.n_models; i++) {
        struct lm_model *m = &p->res.models[i];
        int k = lm_models_find(e->models, e->n_models, m->id);
        if (m->context_length || k < 0)
            continue;
        const struct lm_model *old = &e->models[k];
        if ((!old->digest && !m->digest) ||
            (old->digest && m->digest && strcmp(old->digest, m->digest) == 0))
            m->context_length = old->context_length;
    }
}

static void
ollama_show_or_done(struct lm_probe *p)
{
    if (p->shows < LM_OLLAMA_SHOW_PER_CHECK && next_show(p) < p->res.n_models) {
        p->shows++;
        start_step(p, S_OL_SHOW);
        return;
    }
    p->res.ok = true;
    finish(p);
}

static void
detected(struct lm_probe *p, enum lm_endpoint_kind kind, enum step first)
{
    p->res.kind = kind;
    start_step(p, first);
}

/* An answer (any status) to the running step. */
static void
handle(struct lm_probe *p)
{
    const char *b = p->body.data ? p->body.data : "";
    size_t n = p->body.len;
    int st = p->status;
    char err[160] = "";
    struct lm_probe_result *res = &p->res;

    switch (p->step) {
    case S_DET_OLLAMA:
        if (st == 200 && lm_parse_ollama_version(b, n) == 0) {
            detected(p, LM_KIND_OLLAMA, S_OL_TAGS);
            return;
        }
        {
            start_step(p, S_DET_PROPS);
            return;
        }
    case S_DET_PROPS: {
        int64_t ctx;
        int slots;
        if ((st == 200 && lm_parse_llamacpp_props(b, n, &ctx, &slots, err, sizeof(err)) == 0) ||
            lm_parse_loading(st, b, n)) {
            detected(p, LM_KIND_LLAMACPP, S_LC_HEALTH);
            return;
        }
        {
            start_step(p, S_DET_VERSION);
            return;
        }
    }
    case S_DET_VERSION:
        if (st == 200 && lm_parse_version(b, n) == 0) {
            start_step(p, S_DET_METRICS);
            return;
        }
        {
            start_step(p, S_DET_MODELS);
            return;
        }
    case S_DET_METRICS: {
        int run, wait;
        if (st == 200 && lm_parse_vllm_metrics(b, n, &run, &wait) == 0) {
            detected(p, LM_KIND_VLLM, S_VL_HEALTH);
            return;
        }
        {
            start_step(p, S_DET_MODELS);
            return;
        }
    }
    case S_DET_MODELS:
        if (st == 200 && lm_parse_openai_models(b, n, res, err, sizeof(err)) == 0) {
            res->kind = LM_KIND_OPENAI;
            res->models_known = res->ok = true;
            {
                finish(p);
                return;
            }
        }
        if (st != 200)
            snprintf(err, sizeof(err), "HTTP %d", st);
        lm_probe_result_fail(res,
                             "does not answer as Ollama, llama.cpp, vLLM or an OpenAI-compatible "
                             "server (GET /v1/models: %s)",
                             err);
        finish(p);
        return;

    case S_OL_TAGS:
        if (st != 200) {
            fail(p, "HTTP %d", st);
            return;
        }
        if (lm_parse_ollama_tags(b, n, res, err, sizeof(err)) < 0) {
            fail(p, "%s", err);
            return;
        }
        res->models_known = true;
        {
            start_step(p, S_OL_PS);
            return;
        }
    case S_OL_PS:
        /* Optional: without it every model counts as on disk. */
        if (st != 200 || lm_parse_ollama_ps(b, n, res, err, sizeof(err)) < 0)
            log_debug("endpoint %s: GET /api/ps: %s", p->ep->pub.name, st != 200 ? "failed" : err);
        carry_context(p);
        {
            ollama_show_or_done(p);
            return;
        }
    case S_OL_SHOW: {
        int64_t ctx = 0;
        if (st == 200 && lm_parse_ollama_show(b, n, &ctx, err, sizeof(err)) == 0 && ctx > 0)
            res->models[p->show_i].context_length = ctx;
        p->show_i++;
        {
            ollama_show_or_done(p);
            return;
        }
    }

    case S_LC_HEALTH:
        if (lm_parse_loading(st, b, n))
            res->loading = true;
        else if (st != 200 && st != 503) {
            fail(p, "HTTP %d", st);
            return;
        }
        {
            start_step(p, S_LC_PROPS);
            return;
        }
    case S_LC_PROPS: {
        int slots;
        if (st != 200 || lm_parse_llamacpp_props(b, n, &p->n_ctx, &slots, err, sizeof(err)) < 0)
            p->n_ctx = 0;
        {
            start_step(p, S_LC_SLOTS);
            return;
        }
    }
    case S_LC_SLOTS:
        /* Servers started without --slots answer 501: free slots unknown. */
        if (st != 200 || lm_parse_llamacpp_slots(b, n, &res->free_slots, err, sizeof(err)) < 0)
            res->free_slots = -1;
        {
            start_step(p, S_LC_MODELS);
            return;
        }
    case S_LC_MODELS:
    case S_VL_MODELS:
    case S_OA_MODELS:
        if (st != 200 || lm_parse_openai_models(b, n, res, err, sizeof(err)) < 0) {
            lm_probe_result_clear(res);
            if (res->loading) {
                res->ok = true;
                {
                    finish(p);
                    return;
                }
            }
            if (st != 200)
                fail(p, "HTTP %d", st);
            else
                fail(p, "%s", err);
            return;
        }
        res->models_known = true;
        if (p->step == S_LC_MODELS && p->n_ctx > 0)
            for (size_t i = 0; i < res->n_models; i++)
                res->models[i].context_length = p->n_ctx;
        if (p->step == S_VL_MODELS) {
            start_step(p, S_VL_METRICS);
            return;
        }
        res->ok = true;
        {
            finish(p);
            return;
        }
    case S_VL_HEALTH:
        if (st == 503)
            res->loading = true;
        else if (st != 200) {
            fail(p, "HTTP %d", st);
            return;
        }
        {
            start_step(p, S_VL_MODELS);
            return;
        }
    case S_VL_METRICS:
        if (st != 200 || lm_parse_vllm_metrics(b, n, &res->running, &res->waiting) < 0)
            res->running = res->waiting = -1;
        res->ok = true;
        {
            finish(p);
            return;
        }
    case S_DONE: break;
    }
    finish(p);
}

static bool
optional_step(enum step s)
{
    return s == S_OL_PS || s == S_OL_SHOW || s == S_LC_PROPS || s == S_LC_SLOTS ||
           s == S_VL_METRICS;
}

static void
on_head(struct lm_upstream_req *req, int status, void *arg)
{
    (void)req;
    struct lm_probe *p = arg;
    p->status = status;
}

static void
on_data(struct lm_upstream_req *req, const char *data, size_t len, void *arg)
{
    (void)req;
    struct lm_probe *p = arg;
    /* Past the cap the rest is dropped; upstream ends it with -EMSGSIZE. */
    lm_buf_append(&p->body, data, len);
}

static void
on_done(struct lm_upstream_req *req, int err, const char *msg, void *arg)
{
    (void)req;
    struct lm_probe *p = arg;
    p->req = NULL;
    if (err == 0) {
        handle(p);
        return;
    }
    char esc[128];
    lm_escape(esc, sizeof(esc), msg ? msg : "", msg ? strlen(msg) : 0);
    if (err == -EMSGSIZE)
        snprintf(esc, sizeof(esc), "answer larger than %u bytes", LM_PROBE_MAX_BYTES);
    if (optional_step(p->step)) {
        /* Continue as if the runtime had no such route. */
        p->status = 0;
        {
            handle(p);
            return;
        }
    }
    if (p->res.loading && (p->step == S_LC_MODELS || p->step == S_VL_MODELS)) {
        p->res.ok = true;
        {
            finish(p);
            return;
        }
    }
    fail(p, "%s", esc[0] ? esc : strerror(-err));
}

static void
start_step(struct lm_probe *p, enum step s)
{
    static const struct lm_upstream_cbs cbs = {on_head, on_data, on_done};
    struct lm_ep *ep = p->ep;
    struct lm_upstream_opts o = {
        .method = "GET",
        .connect_timeout_ms = LM_PROBE_CONNECT_MS,
        .total_timeout_ms = LM_PROBE_TOTAL_MS,
        .max_response_bytes = LM_PROBE_MAX_BYTES,
    };
    size_t h = 0;

    p->step = s;
    p->status = 0;
    lm_buf_reset(&p->body);
    char *url = lm_xasprintf("%s%s", ep->pub.url, step_path[s]);
    o.url = url;
    if (ep->auth)
        o.headers[h++] = ep->auth;
    o.headers[h++] = "Accept: application/json";
    if (s == S_OL_SHOW) {
        json_t *b = json_pack("{s:s,s:s}", "model", p->res.models[p->show_i].id, "name",
                              p->res.models[p->show_i].id);
        free(p->show_body);
        p->show_body = json_dumps(b, JSON_COMPACT);
        json_decref(b);
        o.method = "POST";
        o.body = p->show_body;
        o.body_len = p->show_body ? strlen(p->show_body) : 0;
        o.headers[h++] = "Content-Type: application/json";
    }
    int rc = lm_upstream_start(p->up, &o, &cbs, p, &p->req);
    free(url);
    if (rc < 0) {
        p->req = NULL;
        fail(p, "cannot start the request (%s)", strerror(-rc));
    }
}

void
lm_probe_start(struct lm_ep *ep, struct lm_upstream *up)
{
    struct lm_probe *p = lm_xcalloc(1, sizeof(*p));
    p->ep = ep;
    p->up = up;
    lm_buf_init(&p->body, LM_PROBE_MAX_BYTES);
    lm_probe_result_init(&p->res);
    ep->probe = p;
    ep->check_started_ms = lm_now_ms();
    if (ep->detected) {
        p->res.kind = ep->pub.kind;
        static const enum step first[] = {
            [LM_KIND_AUTO] = S_DET_OLLAMA,    [LM_KIND_OLLAMA] = S_OL_TAGS,
            [LM_KIND_LLAMACPP] = S_LC_HEALTH, [LM_KIND_VLLM] = S_VL_HEALTH,
            [LM_KIND_OPENAI] = S_OA_MODELS,
        };
        start_step(p, first[ep->pub.kind]);
        return;
    }
    start_step(p, S_DET_OLLAMA);
}

void
lm_probe_cancel(struct lm_ep *ep)
{
    struct lm_probe *p = ep->probe;
    if (!p)
        return;
    if (p->req)
        lm_upstream_cancel(p->req);
    ep->probe = NULL;
    lm_buf_release(&p->body);
    free(p->show_body);
    lm_probe_result_clear(&p->res);
    free(p);
}
