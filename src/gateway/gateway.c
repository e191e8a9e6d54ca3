/* The gateway: one request object per API call, from the parsed request to
 * the last byte relayed. Its life: check (auth, JSON, model) → take a slot
 * on an endpoint (or wait in the queue) → attempt upstream (failover on the
 * next endpoint while nothing has reached the client) → relay (buffered, SSE
 * event by event, or straight through) → done (slot, auth, metrics, log).
 * Request objects and buffers are pooled, and bodies are checked by a
 * scan rather than parsed into a tree, so a request allocates nothing once
 * the pool is warm. */
#include "gateway/gateway.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event_struct.h>
#include <jansson.h>

#include "auth/auth.h"
#include "gateway/gw.h"
#include "http/http.h"

#define LM_LOG_MODULE "gateway"
#include "log/log.h"
#include "mesh/mesh.h"

#define MAX_ATTEMPTS 3
#define QUEUE_WAIT_MAX_MS 30000
#define CONNECT_TIMEOUT_MS 5000
#define HIGH_WATER (32u * 1024)        /* client output queued: pause the runtime */
#define BUFFERED_MAX (256u * 1024)     /* larger non-SSE answers are streamed through */
#define ERRBODY_MAX 1024               /* of a failed attempt's answer, for the log */
#define MODEL_MAX 256                  /* bytes of a model name */
#define NODE_MAX 128                   /* bytes of a node name in a pin */
#define POOL_MAX 256                   /* idle request objects kept */
#define KEEP_BUF_MAX (64u * 1024)      /* pooled buffers larger than this are given back */
#define TAIL_MAX 1024                  /* end of a streamed-through answer, for its usage */
#define RETRY_BUSY_S 1
#define RETRY_DOWN_S 5

enum phase {
    PH_CHECK,    /* in the handler */
    PH_QUEUED,   /* waiting for a slot */
    PH_UPSTREAM, /* an attempt is running; nothing sent to the client */
    PH_RELAY,    /* the answer has begun: no more failover */
    PH_DONE,
};

enum mode {
    MODE_NONE,
    MODE_DISCARD, /* a failed attempt's answer (5xx, 429): kept for the log only */
    MODE_BUFFER,  /* a whole answer, relayed with its Content-Length */
    MODE_SSE,     /* event by event */
    MODE_PASS,    /* a large non-SSE answer, streamed through as it comes */
};

struct gw_req {
    struct lm_gateway *g;
    struct gw_req *prev, *next; /* in flight; the pool uses next only */
    struct lm_http_conn *conn;  /* NULL once the client is gone */
    struct event timer;
    char id[17];
    char method[8];
    char path[96]; /* escaped, for the log of unknown routes */
    enum gw_route route;
    enum phase phase;
    enum mode mode;
    int in_cb;        /* depth of our own calls on this object */
    bool client_gone; /* LM_HTTP_CLOSED while in_cb > 0 */

    /* The request. body stays valid until the response is finished. */
    const char *body;
    size_t body_len;
    struct gw_members members;
    bool members_ok;
    char model_sent[MODEL_MAX]; /* "model" as the client wrote it */
    char model[MODEL_MAX];      /* without "@node" */
    char label[MODEL_MAX];      /* a known model id for metrics; "" = unknown */
    bool stream, inject;        /* inject: add include_usage, strip the usage chunk */
    struct lm_auth_key *key;
    bool auth_held;

    /* Routing. */
    struct lm_slot slot;
    bool have_slot;
    char ep_name[64];
    const struct lm_endpoint *skip[MAX_ATTEMPTS];
    size_t n_skip;
    unsigned attempts;
    struct lm_endpoints_waiter *waiter;
    struct lm_upstream_req *ureq;
    /* Across the mesh: the provider running this attempt, and those tried. */
    struct lm_mesh_req *mreq;
    char node_id[LM_NODE_ID_LEN + 1];
    char node_hdr[96]; /* "X-Labman-Node: <provider>\r\n", "" when local */
    bool relayed;      /* the provider is reached through a relay */
    char mskip[MAX_ATTEMPTS][LM_NODE_ID_LEN + 1];
    size_t n_mskip;
    char pin[NODE_MAX]; /* model@node / X-Labman-Target naming another node */
    uint64_t t0_us, deadline_ms, queue_deadline_ms;
    enum gw_fail last_fail;
    char last_err[256];

    /* The answer. */
    int up_status;
    char ctype[128];
    struct lm_buf buf; /* MODE_BUFFER / MODE_DISCARD */
    struct gw_sse sse;
    char tail[TAIL_MAX];
    size_t tail_len;
    bool began, paused, failed_mid;
    uint64_t t_first_us;
    uint64_t tokens_in, tokens_out, events;
    bool usage_seen;
    int status; /* for the log: what the client got; 499 = it left */
    char hdrs[256];
};

struct lm_gateway {
    struct event_base *base;
    struct lm_upstream *up;
    struct lm_mesh *mesh; /* NULL while this node is on no mesh */
    unsigned balance_rr;
    struct lm_endpoints *eps;
    struct lm_admin *admin;
    struct lm_http_server *http;
    struct lm_auth *auth;
    struct gw_metrics *metrics;
    char *node_name; /* safe in a header */
    char *node_id;
    enum lm_auth_mode auth_mode;
    enum lm_route route_mode;
    uint64_t request_timeout_ms, first_token_timeout_ms;
    int64_t created;

    struct gw_req *active; /* in flight */
    unsigned n_active;
    struct gw_req *pool;
    unsigned n_pool;
    uint64_t id_seed, id_ctr;

    struct event log_flush; /* access-log lines held this turn: write them */
    bool log_held;
    char *hdr_node;        /* "X-Labman-Node: <name>\r\n" */
    size_t hdr_node_len;

    struct lm_buf scratch; /* error bodies, rewritten request bodies */
    struct lm_buf out;     /* SSE events to write, per upstream read */
    char url[2048];
};

static void attempt(struct gw_req *q);
static void req_done(struct gw_req *q);

/* ---- request objects ---- */

/* snprintf(dst, cap, "%s", s) without printf: on the request path. */
static void
scopy(char *dst, size_t cap, const char *s)
{
    size_t n = strnlen(s, cap - 1);
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static uint64_t
splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

static struct gw_req *
req_get(struct lm_gateway *g)
{
    struct gw_req *q = g->pool;
    if (q) {
        g->pool = q->next;
        g->n_pool--;
    } else {
        q = lm_xcalloc(1, sizeof(*q));
        q->g = g;
        lm_buf_init(&q->buf, 0);
        gw_sse_init(&q->sse);
        evtimer_assign(&q->timer, g->base, on_timer, q);
    }
    q->conn = NULL;
    q->phase = PH_CHECK;
    q->mode = MODE_NONE;
    q->in_cb = 0;
    q->client_gone = false;
    q->body = NULL;
    q->body_len = 0;
    q->members_ok = false;
    q->model_sent[0] = q->model[0] = q->label[0] = '\0';
    q->path[0] = '\0';
    q->stream = q->inject = false;
    q->key = NULL;
    q->auth_held = false;
    q->have_slot = false;
    memset(&q->slot, 0, sizeof(q->slot));
    q->ep_name[0] = '\0';
    q->n_skip = 0;
    q->attempts = 0;
    q->waiter = NULL;
    q->ureq = NULL;
    q->mreq = NULL;
    q->node_id[0] = q->node_hdr[0] = q->pin[0] = '\0';
    q->n_mskip = 0;
    q->last_fail = GW_FAIL_NONE;
    q->last_err[0] = '\0';
    q->up_status = 0;
    q->ctype[0] = '\0';
    lm_buf_reset(&q->buf);
    gw_sse_reset(&q->sse);
    q->tail_len = 0;
    q->began = q->paused = q->failed_mid = false;
    q->t_first_us = 0;
    q->tokens_in = q->tokens_out = q->events = 0;
    q->usage_seen = false;
    q->status = 0;
    q->route = GW_ROUTE_NONE;

    uint64_t r = splitmix64(g->id_seed + ++g->id_ctr);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++)
        q->id[i] = hex[(r >> (60 - 4 * i)) & 15];
    q->id[16] = '\0';
    q->t0_us = lm_now_us();

    q->prev = NULL;
    q->next = g->active;
    if (g->active)
        g->active->prev = q;
    g->active = q;
    g->n_active++;
    return q;
}

static void
req_free(struct gw_req *q)
{
    lm_buf_release(&q->buf);
    gw_sse_release(&q->sse);
    free(q);
}

/* Back to the pool (or freed); nothing may touch q afterwards. */
static void
req_put(struct gw_req *q)
{
    struct lm_gateway *g = q->g;
    if (q->buf.cap > KEEP_BUF_MAX)
        lm_buf_release(&q->buf);
    if (q->sse.part.cap > KEEP_BUF_MAX)
        gw_sse_release(&q->sse);
    if (g->n_pool >= POOL_MAX) {
        req_free(q);
        return;
    }
    q->next = g->pool;
    g->pool = q;
    g->n_pool++;
}

static void
enter(struct gw_req *q)
{
    q->in_cb++;
}

static void finish_gone(struct gw_req *q);

/* Leaves one of our entry points: a request finished meanwhile goes back to
 * the pool, and a client that left meanwhile is dealt with now. */
static void
leave(struct gw_req *q)
{
    if (--q->in_cb > 0)
        return;
    if (q->phase == PH_DONE) {
        req_put(q);
        return;
    }
    if (q->client_gone) {
        q->in_cb++;
        finish_gone(q);
        q->in_cb--;
        req_put(q);
    }
}

/* ---- answering ---- */

/* A bounded line built by hand: the access log runs once per request, and
 * printf's parsing and floating point were a good part of its cost. */
struct line {
    char *p, *end;
};

static void
put(struct line *l, const char *s, size_t n)
{
    size_t room = (size_t)(l->end - l->p);
    n = n < room ? n : room;
    memcpy(l->p, s, n);
    l->p += n;
}

static void
put_s(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void
put_u(struct line *l, uint64_t v)
{
    char d[20], *e = d + sizeof(d), *b = e;
    do
        *--b = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    put(l, b, (size_t)(e - b));
}

static const char *
headers(struct gw_req *q, bool served, unsigned retry_after)
{
    /* Built by hand, once per answer: the id is 16 bytes, the node's line
     * was made at start. */
    static const char id[] = "X-Labman-Request-Id: ", route[] = "X-Labman-Route: local\r\n",
                      direct[] = "X-Labman-Route: direct\r\n",
                      relay[] = "X-Labman-Route: relay\r\n";
    const struct lm_gateway *g = q->g;
    struct line l = {q->hdrs, q->hdrs + sizeof(q->hdrs) - 1};
    put(&l, id, sizeof(id) - 1);
    put(&l, q->id, 16);
    put(&l, "\r\n", 2);
    if (served && q->node_hdr[0]) {
        put_s(&l, q->node_hdr);
        if (q->relayed)
            put(&l, relay, sizeof(relay) - 1);
        else
            put(&l, direct, sizeof(direct) - 1);
    } else {
        put(&l, g->hdr_node, g->hdr_node_len);
        if (served)
            put(&l, route, sizeof(route) - 1);
    }
    if (retry_after) {
        put_s(&l, "Retry-After: ");
        put_u(&l, retry_after);
        put(&l, "\r\n", 2);
    }
    *l.p = '\0';
    return q->hdrs;
}

static void
respond(struct gw_req *q, int status, const char *ctype, const char *hdrs, const void *body,
        size_t len)
{
    q->status = status;
    if (q->conn)
        lm_http_respond(q->conn, status, ctype, hdrs, body, len);
    q->conn = NULL;
}

static void
error_json(struct lm_buf *b, const char *msg, const char *type, const char *param,
           const char *code)
{
    lm_buf_puts(b, "{\"error\":{\"message\":");
    gw_json_str(b, msg, strlen(msg));
    lm_buf_puts(b, ",\"type\":");
    gw_json_str(b, type, strlen(type));
    lm_buf_puts(b, ",\"param\":");
    if (param)
        gw_json_str(b, param, strlen(param));
    else
        lm_buf_puts(b, "null");
    lm_buf_puts(b, ",\"code\":");
    if (code)
        gw_json_str(b, code, strlen(code));
    else
        lm_buf_puts(b, "null");
    lm_buf_puts(b, "}}");
}

static void
reply_error(struct gw_req *q, int status, const char *type, const char *code, const char *param,
            unsigned retry_after, const char *fmt, ...) LM_PRINTF(7, 8);

/* Answers in OpenAI's error shape and ends the request. */
static void
reply_error(struct gw_req *q, int status, const char *type, const char *code, const char *param,
            unsigned retry_after, const char *fmt, ...)
{
    struct lm_gateway *g = q->g;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    lm_buf_reset(&g->scratch);
    error_json(&g->scratch, msg, type, param, code);
    bool served = q->attempts > 0;
    respond(q, status, "application/json", headers(q, served, retry_after), g->scratch.data,
            g->scratch.len);
    req_done(q);
}

/* ---- the end of a request ---- */

static void
release_slot(struct gw_req *q, enum lm_outcome outcome)
{
    if (!q->have_slot)
        return;
    q->have_slot = false;
    lm_endpoints_release(q->g->eps, &q->slot, outcome);
}

/* The attempt's request, local or across the mesh. */
static void
up_cancel(struct gw_req *q)
{
    if (q->ureq) {
        lm_upstream_cancel(q->ureq);
        q->ureq = NULL;
    }
    if (q->mreq) {
        lm_mesh_req_cancel(q->mreq);
        q->mreq = NULL;
    }
}

static void
stop_upstream(struct gw_req *q)
{
    up_cancel(q);
    if (q->waiter) {
        lm_endpoints_wait_cancel(q->waiter);
        q->waiter = NULL;
    }
    evtimer_del(&q->timer);
}

static const char *route_path(enum gw_route r);

/* us in tenths of a millisecond, rounded as printf("%.1f", us / 1e3) rounds:
 * only a tie (…50 µs) asks where the double lies, and an exact tie goes to
 * even. */
static uint64_t
ms_tenths(uint64_t us)
{
    uint64_t tenths = us / 100;
    unsigned rem = (unsigned)(us % 100);
    if (rem > 50) {
        tenths++;
    } else if (rem == 50) {
        double d = (double)us / 1000, err = fma(d, 1000, -(double)us);
        if (err > 0 || (err == 0 && tenths % 2 == 1))
            tenths++;
    }
    return tenths;
}

char *
gw_fmt_ms(char *out, size_t cap, uint64_t us)
{
    uint64_t t = ms_tenths(us);
    snprintf(out, cap, "%" PRIu64 ".%u", t / 10, (unsigned)(t % 10));
    return out;
}

static void
put_ms(struct line *l, uint64_t us)
{
    uint64_t t = ms_tenths(us);
    put_u(l, t / 10);
    char frac[2] = {'.', (char)('0' + t % 10)};
    put(l, frac, 2);
}

static void
on_log_flush(evutil_socket_t fd, short what, void *arg)
{
    struct lm_gateway *g = arg;
    (void)fd;
    (void)what;
    g->log_held = false;
    lm_log_flush();
}

/* One line per request, as
 *   "<id> key=<k> <method> <path> model="<m>" endpoint=<e> status=<n>
 *    in=<n> out=<n> ttft_ms=<x.y|-> dur_ms=<x.y> attempts=<n>[ stream]"
 * The lines of one event-loop turn are written together at its end. */
static void
access_log(const struct gw_req *q, uint64_t dur_us)
{
    struct lm_gateway *g = q->g;
    if (lm_log_get_level() < LM_LOG_INFO)
        return;
    char model[MODEL_MAX * 2], buf[1536];
    struct line l = {buf, buf + sizeof(buf)};
    const char *m = q->model_sent;
    /* lm_escape leaves a name of plain printable bytes as it is. */
    while (*m >= 0x20 && *m < 0x7f && *m != '"' && *m != '\\')
        m++;
    if (*m)
        lm_escape(model, sizeof(model), q->model_sent, strlen(q->model_sent));
    put(&l, q->id, 16);
    put_s(&l, " key=");
    put_s(&l, lm_auth_key_name(q->key));
    put_s(&l, " ");
    put_s(&l, q->method);
    put_s(&l, " ");
    put_s(&l, q->route == GW_ROUTE_NONE ? q->path : route_path(q->route));
    put_s(&l, " model=\"");
    put_s(&l, *m ? model : q->model_sent);
    put_s(&l, "\" endpoint=");
    put_s(&l, q->ep_name[0] ? q->ep_name : "-");
    put_s(&l, " status=");
    if (q->status < 0)
        put_s(&l, "-");
    put_u(&l, (uint64_t)(q->status < 0 ? -(int64_t)q->status : q->status));
    put_s(&l, " in=");
    put_u(&l, q->tokens_in);
    put_s(&l, " out=");
    put_u(&l, q->tokens_out);
    put_s(&l, " ttft_ms=");
    if (q->t_first_us)
        put_ms(&l, q->t_first_us - q->t0_us);
    else
        put_s(&l, "-");
    put_s(&l, " dur_ms=");
    put_ms(&l, dur_us);
    put_s(&l, " attempts=");
    put_u(&l, q->attempts);
    if (q->stream)
        put_s(&l, " stream");
    if (!g->log_held) {
        g->log_held = true;
        lm_log_hold();
        event_active(&g->log_flush, EV_TIMEOUT, 1);
    }
    lm_log_msg(LM_LOG_INFO, LM_LOG_MODULE, buf, (size_t)(l.p - buf));
}

/* Every request ends here exactly once. */
static void
req_done(struct gw_req *q)
{
    struct lm_gateway *g = q->g;
    uint64_t now = lm_now_us();

    stop_upstream(q);
    release_slot(q, LM_OUTCOME_CANCELED);
    if (q->conn) {
        lm_http_watch(q->conn, NULL, NULL);
        q->conn = NULL;
    }
    if (!q->usage_seen && q->events > 0)
        q->tokens_out = q->events; /* the runtime never told: count its chunks */
    gw_metrics_request(g->metrics, q->route, q->label[0] ? q->label : NULL,
                       q->ep_name[0] ? q->ep_name : NULL, q->status, now - q->t0_us,
                       q->t_first_us ? q->t_first_us - q->t0_us : 0, q->tokens_in,
                       q->tokens_out);
    access_log(q, now - q->t0_us);
    if (g->mesh && q->label[0] && q->route != GW_ROUTE_MODELS)
        lm_mesh_note_demand(g->mesh, q->label, q->tokens_in, q->tokens_out,
                            q->status / 100 != 2,
                            q->t_first_us ? (q->t_first_us - q->t0_us + 999) / 1000 : 0);
    /* Last: finishing may free a key that a reload removed (its final
     * in-flight request), and the access log above still names it. */
    if (q->auth_held)
        lm_auth_finish(g->auth, q->key, q->tokens_in + q->tokens_out, now / 1000);
    q->auth_held = false;
    q->key = NULL;

    if (q->prev)
        q->prev->next = q->next;
    else
        g->active = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
    g->n_active--;
    q->phase = PH_DONE;
    if (q->in_cb == 0)
        req_put(q);
}

/* The client left: stop the runtime at once. */
static void
finish_gone(struct gw_req *q)
{
    if (q->phase == PH_DONE)
        return;
    q->conn = NULL;
    stop_upstream(q);
    release_slot(q, LM_OUTCOME_CANCELED);
    q->status = 499;
    log_debug("%s: client went away; upstream request canceled", q->id);
    req_done(q);
}

static void
on_conn_event(struct lm_http_conn *c, enum lm_http_event ev, void *arg)
{
    struct gw_req *q = arg;
    (void)c;
    if (ev == LM_HTTP_CLOSED) {
        q->conn = NULL;
        q->client_gone = true;
        if (q->in_cb > 0)
            return;
        enter(q);
        finish_gone(q);
        leave(q);
        return;
    }
    if (ev == LM_HTTP_DRAINED && q->paused && (q->ureq || q->mreq)) {
        q->paused = false;
        if (q->ureq)
            lm_upstream_resume(q->ureq);
        else
            lm_mesh_req_resume(q->mreq);
    }
}

/* ---- failing ---- */

static void
final_failure(struct gw_req *q)
{
    switch (q->last_fail) {
    case GW_FAIL_TIMEOUT:
        reply_error(q, 504, "timeout_error", "upstream_timeout", NULL, 0,
                    "the model's runtime did not answer in time (%s)", q->last_err);
        break;
    case GW_FAIL_BUSY:
        reply_error(q, 503, "server_error", "no_capacity", NULL, RETRY_BUSY_S,
                    "every runtime serving model %s is busy (%s); retry later", q->model,
                    q->last_err);
        break;
    default:
        reply_error(q, 502, "server_error", "upstream_error", NULL, 0,
                    "the model's runtime failed (%s)", q->last_err);
        break;
    }
}

/* An attempt failed before anything reached the client: the endpoint is
 * blamed, and the next one is tried. */
static void
attempt_failed(struct gw_req *q, enum gw_fail why, const char *fmt, ...) LM_PRINTF(3, 4);

static void
attempt_failed(struct gw_req *q, enum gw_fail why, const char *fmt, ...)
{
    char detail[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);

    up_cancel(q);
    evtimer_del(&q->timer);
    release_slot(q, LM_OUTCOME_FAILED);
    gw_metrics_upstream_error(q->g->metrics, q->ep_name, why);
    q->last_fail = why;
    snprintf(q->last_err, sizeof(q->last_err), "endpoint %s: %s", q->ep_name, detail);
    log_warn("%s: attempt %u of %d on endpoint %s failed: %s", q->id, q->attempts, MAX_ATTEMPTS,
             q->ep_name, detail);
    q->phase = PH_CHECK;
    attempt(q);
}

/* After the first byte: an SSE error event and a proper end, or (for a
 * body streamed through) a broken connection the client can see. */
static void
fail_midway(struct gw_req *q, enum gw_fail why, enum lm_outcome outcome, const char *msg)
{
    struct lm_gateway *g = q->g;
    up_cancel(q);
    release_slot(q, outcome);
    if (outcome == LM_OUTCOME_FAILED)
        gw_metrics_upstream_error(g->metrics, q->ep_name, why);
    log_warn("%s: endpoint %s failed mid-answer: %s", q->id, q->ep_name, msg);
    q->failed_mid = true;
    if (q->mode == MODE_SSE && q->conn) {
        char m[256];
        snprintf(m, sizeof(m), "the model's runtime failed mid-stream (endpoint %s: %s)",
                 q->ep_name, msg);
        lm_buf_reset(&g->out);
        if (gw_sse_pending(&q->sse) > 0 || q->sse.nl == 0 || q->sse.oversize)
            lm_buf_puts(&g->out, "\n\n"); /* an event cut short: end it */
        lm_buf_puts(&g->out, "data: ");
        error_json(&g->out, m, why == GW_FAIL_TIMEOUT ? "timeout_error" : "server_error",
                   NULL, why == GW_FAIL_TIMEOUT ? "upstream_timeout" : "upstream_error");
        lm_buf_puts(&g->out, "\n\n");
        lm_http_stream_write(q->conn, g->out.data, g->out.len);
        lm_buf_reset(&g->out);
        if (q->conn)
            lm_http_stream_end(q->conn);
    } else if (q->conn) {
        lm_http_abort(q->conn);
    }
    q->conn = NULL;
    req_done(q);
}

static enum gw_fail
fail_of_err(int err)
{
    switch (err) {
    case -ECONNREFUSED:
        return GW_FAIL_CONNECT;
    case -ETIMEDOUT:
        return GW_FAIL_TIMEOUT;
    case -ECONNRESET:
        return GW_FAIL_BROKEN;
    case -EPROTO:
    case -EMSGSIZE:
        return GW_FAIL_PROTOCOL;
    default:
        return GW_FAIL_BROKEN;
    }
}

/* ---- relaying ---- */

static void
arm(struct gw_req *q, uint64_t at_ms)
{
    uint64_t now = lm_now_ms();
    uint64_t ms = at_ms > now ? at_ms - now : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(&q->timer, &tv);
}

static void
tail_add(struct gw_req *q, const char *p, size_t n)
{
    if (n >= TAIL_MAX) {
        memcpy(q->tail, p + n - TAIL_MAX, TAIL_MAX);
        q->tail_len = TAIL_MAX;
        return;
    }
    if (q->tail_len + n > TAIL_MAX) {
        size_t drop = q->tail_len + n - TAIL_MAX;
        memmove(q->tail, q->tail + drop, q->tail_len - drop);
        q->tail_len -= drop;
    }
    memcpy(q->tail + q->tail_len, p, n);
    q->tail_len += n;
}

/* The client's answer begins: from here on no failover. */
static void
begin(struct gw_req *q)
{
    q->began = true;
    q->phase = PH_RELAY;
    q->t_first_us = lm_now_us();
    q->status = q->up_status;
    arm(q, q->deadline_ms);
    if (q->conn)
        lm_http_stream_begin(q->conn, q->up_status, q->ctype[0] ? q->ctype : "text/event-stream",
                             headers(q, true, 0));
}

static void
write_out(struct gw_req *q, const char *p, size_t n)
{
    if (!q->conn || n == 0)
        return;
    lm_http_stream_write(q->conn, p, n);
    if (q->conn && !q->paused && (q->ureq || q->mreq) &&
        lm_http_conn_pending(q->conn) > HIGH_WATER) {
        q->paused = true;
        if (q->ureq)
            lm_upstream_pause(q->ureq);
        else
            lm_mesh_req_pause(q->mreq);
    }
}

static bool
has_data_line(const char *ev, size_t len)
{
    return memmem(ev, len, "data:", 5) != NULL;
}

static bool
is_done(const char *ev, size_t len)
{
    return (len >= 12 && memcmp(ev, "data: [DONE]", 12) == 0) ||
           (len >= 11 && memcmp(ev, "data:[DONE]", 11) == 0);
}

static void
on_event(void *arg, const char *ev, size_t len, bool whole)
{
    struct gw_req *q = arg;
    struct lm_buf *out = &q->g->out;

    if (whole && has_data_line(ev, len)) {
        if (!is_done(ev, len)) {
            if (memmem(ev, len, "\"usage\"", 7)) {
                uint64_t in, outt;
                if (gw_find_usage(ev, len, &in, &outt)) {
                    q->tokens_in = in;
                    q->tokens_out = outt;
                    q->usage_seen = true;
                }
                if (q->inject && gw_is_usage_only(ev, len))
                    return; /* the client did not ask for it */
            }
            q->events++;
        }
    }
    size_t off = out->len;
    lm_buf_append(out, ev, len);
    if (whole && q->inject)
        out->len = off + gw_strip_usage_null(out->data + off, len);
}

static void
got_head(struct gw_req *q, int status, const char *ct)
{
    enter(q);
    q->up_status = status;
    if (status >= 500 || status == 429) {
        q->mode = MODE_DISCARD;
    } else {
        scopy(q->ctype, sizeof(q->ctype), ct ? ct : "");
        bool sse = status / 100 == 2 && ct && strncasecmp(ct, "text/event-stream", 17) == 0;
        q->mode = sse ? MODE_SSE : MODE_BUFFER;
    }
    leave(q);
}

static void
on_head(struct lm_upstream_req *r, int status, void *arg)
{
    got_head(arg, status, lm_upstream_header(r, "Content-Type"));
}

static void
got_data(struct gw_req *q, const char *data, size_t len)
{
    struct lm_gateway *g = q->g;
    enter(q);
    if (q->phase == PH_DONE || q->client_gone)
        goto out;
    switch (q->mode) {
    case MODE_DISCARD:
        if (q->buf.len < ERRBODY_MAX)
            lm_buf_append(&q->buf, data, len < ERRBODY_MAX ? len : ERRBODY_MAX);
        break;
    case MODE_BUFFER:
        if (q->buf.len + len <= BUFFERED_MAX) {
            lm_buf_append(&q->buf, data, len);
            break;
        }
        q->mode = MODE_PASS;
        begin(q);
        write_out(q, q->buf.data, q->buf.len);
        tail_add(q, q->buf.data, q->buf.len);
        lm_buf_reset(&q->buf);
        /* fallthrough */
    case MODE_PASS:
        tail_add(q, data, len);
        write_out(q, data, len);
        break;
    case MODE_SSE:
        lm_buf_reset(&g->out);
        gw_sse_feed(&q->sse, data, len, on_event, q);
        if (g->out.len > 0) {
            if (!q->began)
                begin(q);
            write_out(q, g->out.data, g->out.len);
            lm_buf_reset(&g->out);
        }
        break;
    case MODE_NONE:
        break;
    }
out:
    leave(q);
}

static void
relay_buffered(struct gw_req *q)
{
    uint64_t in, outt;
    if (q->up_status / 100 == 2 && gw_find_usage(q->buf.data, q->buf.len, &in, &outt)) {
        q->tokens_in = in;
        q->tokens_out = outt;
        q->usage_seen = true;
    }
    q->t_first_us = 0;
    respond(q, q->up_status, q->ctype[0] ? q->ctype : "application/json", headers(q, true, 0),
            q->buf.data ? q->buf.data : "", q->buf.len);
    /* 4xx is the client's fault, not the endpoint's. */
    release_slot(q, LM_OUTCOME_OK);
    req_done(q);
}

static void
on_data(struct lm_upstream_req *r, const char *data, size_t len, void *arg)
{
    (void)r;
    got_data(arg, data, len);
}

static void
got_done(struct gw_req *q, int err, const char *msg)
{
    struct lm_gateway *g = q->g;
    enter(q);
    if (q->phase == PH_DONE || q->client_gone)
        goto out;
    if (q->mode == MODE_DISCARD) {
        char body[200];
        lm_escape(body, sizeof(body), q->buf.data ? q->buf.data : "", q->buf.len);
        attempt_failed(q, q->up_status == 429 || q->up_status == 503 ? GW_FAIL_BUSY
                                                                      : GW_FAIL_STATUS,
                       "HTTP %d %s", q->up_status, body);
        goto out;
    }
    if (err) {
        if (!q->began)
            attempt_failed(q, fail_of_err(err), "%s", msg ? msg : "failed");
        else
            fail_midway(q, fail_of_err(err), LM_OUTCOME_FAILED, msg ? msg : "failed");
        goto out;
    }
    switch (q->mode) {
    case MODE_BUFFER:
        if (q->buf.len == 0 && q->up_status / 100 == 2)
            attempt_failed(q, GW_FAIL_PROTOCOL, "HTTP %d with an empty body", q->up_status);
        else
            relay_buffered(q);
        break;
    case MODE_SSE:
        if (gw_sse_pending(&q->sse) > 0) {
            /* The last event came without its blank line: pass it on. */
            lm_buf_reset(&g->out);
            lm_buf_append(&g->out, q->sse.part.data, q->sse.part.len);
            if (!q->began)
                begin(q);
            write_out(q, g->out.data, g->out.len);
            lm_buf_reset(&g->out);
        }
        if (!q->began) {
            attempt_failed(q, GW_FAIL_PROTOCOL, "the event stream ended before any event");
            break;
        }
        /* fallthrough */
    case MODE_PASS:
        if (q->mode == MODE_PASS) {
            uint64_t in, outt;
            if (gw_find_usage(q->tail, q->tail_len, &in, &outt)) {
                q->tokens_in = in;
                q->tokens_out = outt;
                q->usage_seen = true;
            }
        }
        if (q->conn)
            lm_http_stream_end(q->conn);
        q->conn = NULL;
        release_slot(q, LM_OUTCOME_OK);
        req_done(q);
        break;
    default:
        attempt_failed(q, GW_FAIL_PROTOCOL, "no answer");
        break;
    }
out:
    leave(q);
}

static void
on_done(struct lm_upstream_req *r, int err, const char *msg, void *arg)
{
    (void)r;
    struct gw_req *q = arg;
    q->ureq = NULL;
    got_done(q, err, msg);
}

/* Across the mesh: the provider's answer comes the same way. */
static void
on_mesh_head(struct lm_mesh_req *r, int status, const char *ct, void *arg)
{
    (void)r;
    got_head(arg, status, ct);
}

static void
on_mesh_data(struct lm_mesh_req *r, const char *data, size_t len, void *arg)
{
    (void)r;
    got_data(arg, data, len);
}

static void
on_mesh_done(struct lm_mesh_req *r, int err, const char *msg, const struct lm_mesh_usage *u,
             void *arg)
{
    (void)r;
    struct gw_req *q = arg;
    q->mreq = NULL;
    if (!err && u->signed_end && !q->usage_seen) {
        q->tokens_in = u->prompt_tokens;
        q->tokens_out = u->completion_tokens;
        q->usage_seen = true;
    }
    /* The provider could not take it: like a busy endpoint, try another. */
    if (err == -EBUSY || err == -ENOENT || err == -EPERM) {
        enter(q);
        if (q->phase != PH_DONE && !q->client_gone && !q->began)
            attempt_failed(q, GW_FAIL_BUSY, "%s", msg ? msg : "refused");
        leave(q);
        return;
    }
    got_done(q, err == -EIO || err == -EPROTO || err == -EINVAL ? -ECONNRESET : err, msg);
}

/* ---- attempts ---- */

/* The body for this endpoint: the client's bytes, unless the model name or
 * stream_options must change. Returns the bytes to send. */
static const char *
build_body(struct gw_req *q, const char *model_id, size_t *len)
{
    struct lm_buf *b = &q->g->scratch;
    bool rename = strcmp(model_id, q->model_sent) != 0;

    if (!rename && !q->inject) {
        *len = q->body_len;
        return q->body;
    }
    lm_buf_reset(b);
    if (!q->members_ok) {
        /* Keys we cannot match by bytes (escaped): re-serialize. */
        json_t *o = json_loadb(q->body, q->body_len, 0, NULL);
        if (!o)
            goto raw;
        json_object_set_new(o, "model", json_string(model_id));
        if (q->inject) {
            json_t *so = json_object_get(o, "stream_options");
            if (!json_is_object(so)) {
                so = json_object();
                json_object_set_new(o, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
        }
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (!s)
            goto raw;
        lm_buf_puts(b, s);
        free(s);
        *len = b->len;
        return b->data;
    }

    /* Splice: at most the model value and the stream_options value change,
     * and stream_options may be added after the '{'. */
    const struct gw_members *m = &q->members;
    struct cut {
        size_t at, n;
        int what; /* 0 model, 1 stream_options */
    } cut[2];
    size_t n_cut = 0;
    if (rename)
        cut[n_cut++] = (struct cut){m->model.val, m->model.val_len, 0};
    if (q->inject && m->stream_options.found)
        cut[n_cut++] = (struct cut){m->stream_options.val, m->stream_options.val_len, 1};
    if (n_cut == 2 && cut[0].at > cut[1].at) {
        struct cut t = cut[0];
        cut[0] = cut[1];
        cut[1] = t;
    }
    size_t pos = m->open + 1;
    lm_buf_append(b, q->body, pos);
    if (q->inject && !m->stream_options.found)
        lm_buf_puts(b, "\"stream_options\":{\"include_usage\":true},");
    for (size_t i = 0; i < n_cut; i++) {
        lm_buf_append(b, q->body + pos, cut[i].at - pos);
        if (cut[i].what == 0) {
            gw_json_str(b, model_id, strlen(model_id));
        } else {
            const char *v = q->body + cut[i].at;
            size_t vn = cut[i].n;
            if (vn >= 2 && v[0] == '{') {
                /* Ours last: a repeated key takes the last value. */
                size_t k = vn - 1;
                while (k > 1 && (v[k - 1] == ' ' || v[k - 1] == '\n' || v[k - 1] == '\t' ||
                                 v[k - 1] == '\r'))
                    k--;
                lm_buf_append(b, v, k);
                lm_buf_puts(b, k > 1 ? ",\"include_usage\":true}" : "\"include_usage\":true}");
            } else {
                lm_buf_puts(b, "{\"include_usage\":true}");
            }
        }
        pos = cut[i].at + cut[i].n;
    }
    lm_buf_append(b, q->body + pos, q->body_len - pos);
    *len = b->len;
    return b->data;
raw:
    *len = q->body_len;
    return q->body;
}

static const char *
route_path(enum gw_route r)
{
    switch (r) {
    case GW_ROUTE_CHAT:
        return "/v1/chat/completions";
    case GW_ROUTE_COMPLETIONS:
        return "/v1/completions";
    case GW_ROUTE_EMBEDDINGS:
        return "/v1/embeddings";
    default:
        return "/v1/models";
    }
}

/* A new attempt: nothing of the last one's answer is kept. */
static void
attempt_begin(struct gw_req *q)
{
    q->attempts++;
    q->mode = MODE_NONE;
    q->up_status = 0;
    q->ctype[0] = '\0';
    lm_buf_reset(&q->buf);
    gw_sse_reset(&q->sse);
    q->paused = false;
}

/* Streams must show a first event within first_token_timeout_s. */
static void
arm_first(struct gw_req *q, uint64_t now)
{
    uint64_t until = q->deadline_ms;
    if (q->stream && now + q->g->first_token_timeout_ms < until)
        until = now + q->g->first_token_timeout_ms;
    arm(q, until);
}

static void
start_upstream(struct gw_req *q)
{
    struct lm_gateway *g = q->g;
    const struct lm_endpoint *ep = q->slot.ep;
    static const struct lm_upstream_cbs cbs = {on_head, on_data, on_done};

    scopy(q->ep_name, sizeof(q->ep_name), ep->name);
    scopy(q->label, sizeof(q->label), q->slot.model_id);
    if (q->n_skip < MAX_ATTEMPTS)
        q->skip[q->n_skip++] = ep;
    attempt_begin(q);

    struct lm_upstream_opts o;
    memset(&o, 0, sizeof(o));
    size_t ul = strnlen(ep->url, sizeof(g->url) - 1);
    memcpy(g->url, ep->url, ul);
    scopy(g->url + ul, sizeof(g->url) - ul, route_path(q->route));
    o.method = "POST";
    o.url = g->url;
    size_t h = 0;
    o.headers[h++] = "Content-Type: application/json";
    const char *auth = lm_endpoints_auth_header(ep);
    if (auth)
        o.headers[h++] = auth;
    o.headers[h] = NULL;
    o.body = build_body(q, q->slot.model_id, &o.body_len);

    uint64_t now = lm_now_ms();
    uint64_t left = q->deadline_ms > now ? q->deadline_ms - now : 1;
    o.connect_timeout_ms = (unsigned)(left < CONNECT_TIMEOUT_MS ? left : CONNECT_TIMEOUT_MS);
    o.total_timeout_ms = (unsigned)(left < UINT32_MAX ? left : UINT32_MAX);
    if (q->stream) {
        uint64_t ftt = g->first_token_timeout_ms < left ? g->first_token_timeout_ms : left;
        o.first_byte_timeout_ms = (unsigned)ftt;
    }

    q->phase = PH_UPSTREAM;
    int rc = lm_upstream_start(g->up, &o, &cbs, q, &q->ureq);
    if (rc < 0) {
        q->ureq = NULL;
        attempt_failed(q, GW_FAIL_PROTOCOL, "cannot start the request: %s", strerror(-rc));
        return;
    }
    arm_first(q, now);
}

static const char *
api_name(enum gw_route r)
{
    return r == GW_ROUTE_CHAT ? "chat" : r == GW_ROUTE_COMPLETIONS ? "completions" : "embeddings";
}

/* A peer's name goes into a response header: only when it is a plain
 * token, else its short id. */
static void
node_header(struct gw_req *q, const char *name)
{
    bool plain = *name && strlen(name) <= 64;
    for (const char *p = name; *p && plain; p++)
        plain = isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.';
    if (plain)
        snprintf(q->node_hdr, sizeof(q->node_hdr), "X-Labman-Node: %s\r\n", name);
    else
        snprintf(q->node_hdr, sizeof(q->node_hdr), "X-Labman-Node: %.*s\r\n", LM_SHORT_ID_LEN,
                 q->node_id);
}

/* The attempt goes to another node's provider, on its own mesh stream. */
static void
start_remote(struct gw_req *q, const char *node_id, const char *name)
{
    struct lm_gateway *g = q->g;
    static const struct lm_mesh_req_cbs cbs = {on_mesh_head, on_mesh_data, on_mesh_done};

    snprintf(q->node_id, sizeof(q->node_id), "%s", node_id);
    node_header(q, name);
    snprintf(q->ep_name, sizeof(q->ep_name), "@%.62s", name);
    if (!q->label[0])
        scopy(q->label, sizeof(q->label), q->model);
    if (q->n_mskip < MAX_ATTEMPTS)
        snprintf(q->mskip[q->n_mskip++], sizeof(q->mskip[0]), "%s", node_id);
    attempt_begin(q);

    struct lm_mesh_req_opts o = {
        .node_id = node_id,
        .api = api_name(q->route),
        .model = q->model,
        .stream = q->stream,
    };
    o.body = build_body(q, q->model, &o.body_len);
    uint64_t now = lm_now_ms();
    o.deadline_ms = q->deadline_ms > now ? q->deadline_ms - now : 1;
    q->phase = PH_UPSTREAM;
    int rc = lm_mesh_request(g->mesh, &o, &cbs, q, &q->mreq);
    q->relayed = lm_mesh_req_relayed(q->mreq);
    if (rc < 0) {
        q->mreq = NULL;
        attempt_failed(q, GW_FAIL_CONNECT, "cannot reach the provider: %s", strerror(-rc));
        return;
    }
    arm_first(q, now);
}

/* The provider across the mesh to try now, if the route mode allows one. */
static bool
pick_remote(struct gw_req *q, char id[LM_NODE_ID_LEN + 1], char *name, size_t namecap)
{
    struct lm_gateway *g = q->g;
    if (!g->mesh || (g->route_mode == LM_ROUTE_LOCAL_ONLY && !q->pin[0]))
        return false;
    return lm_mesh_pick(g->mesh, q->model, q->pin[0] ? q->pin : NULL, q->mskip, q->n_mskip, id,
                        name, namecap) == 0;
}

/* The same names endpoints.c accepts: id, alias, or "x:latest" for an
 * untagged id. */
static bool
model_is(const struct lm_model *m, const char *name)
{
    if (!m->id)
        return false;
    if (strcmp(m->id, name) == 0 || (m->alias && strcmp(m->alias, name) == 0))
        return true;
    size_t n = strlen(name), k = strlen(m->id);
    return n == k + 7 && strcmp(name + k, ":latest") == 0 && strncmp(name, m->id, k) == 0 &&
           !strchr(m->id, ':');
}

static bool
model_on(const struct lm_endpoint *e, const char *name)
{
    for (size_t i = 0; i < e->n_models; i++)
        if (model_is(&e->models[i], name))
            return true;
    return false;
}

/* Every healthy endpoint (outside skip) that serves the model has its
 * circuit open: waiting would not help. */
static bool
all_open(struct gw_req *q)
{
    struct lm_endpoints *eps = q->g->eps;
    bool any = false;
    for (size_t i = 0; i < lm_endpoints_count(eps); i++) {
        const struct lm_endpoint *e = lm_endpoints_at(eps, i);
        bool skipped = false;
        for (size_t k = 0; k < q->n_skip; k++)
            skipped |= q->skip[k] == e;
        if (skipped || !e->healthy || !model_on(e, q->model))
            continue;
        if (e->breaker != LM_BREAKER_OPEN)
            return false;
        any = true;
    }
    return any;
}

static void
on_slot_maybe(void *arg)
{
    struct gw_req *q = arg;
    enter(q);
    q->waiter = NULL;
    if (q->phase == PH_QUEUED) {
        evtimer_del(&q->timer);
        attempt(q);
    }
    leave(q);
}

static void
attempt(struct gw_req *q)
{
    struct lm_gateway *g = q->g;

    if (q->attempts >= MAX_ATTEMPTS) {
        final_failure(q);
        return;
    }
    if (lm_now_ms() >= q->deadline_ms) {
        if (q->last_fail == GW_FAIL_NONE)
            snprintf(q->last_err, sizeof(q->last_err), "request_timeout_s passed");
        q->last_fail = GW_FAIL_TIMEOUT;
        final_failure(q);
        return;
    }
    q->node_hdr[0] = '\0';
    char nid[LM_NODE_ID_LEN + 1], nname[80];
    /* Pinned to another node: only there. */
    if (q->pin[0]) {
        if (pick_remote(q, nid, nname, sizeof(nname))) {
            start_remote(q, nid, nname);
            return;
        }
        if (q->attempts > 0) {
            final_failure(q);
            return;
        }
        reply_error(q, 503, "server_error", "model_unavailable", NULL, RETRY_DOWN_S,
                    "node %s is not connected or does not serve model %s right now; retry later",
                    q->pin, q->model);
        return;
    }
    /* balance: every other request goes to the best remote provider. */
    if (g->route_mode == LM_ROUTE_BALANCE && (g->balance_rr++ & 1) &&
        pick_remote(q, nid, nname, sizeof(nname))) {
        start_remote(q, nid, nname);
        return;
    }
    int rc = lm_endpoints_acquire(g->eps, q->model, q->skip, q->n_skip, &q->slot);
    if (rc == 0) {
        q->have_slot = true;
        start_upstream(q);
        return;
    }
    /* prefer_local and balance: nothing free here, another node then. */
    if (pick_remote(q, nid, nname, sizeof(nname))) {
        start_remote(q, nid, nname);
        return;
    }
    if (rc == -ENOENT) {
        if (q->attempts > 0) {
            final_failure(q);
            return;
        }
        reply_error(q, 503, "server_error", "model_unavailable", NULL, RETRY_DOWN_S,
                    "no healthy endpoint of this node serves model %s right now; retry later",
                    q->model);
        return;
    }
    if (all_open(q)) {
        if (q->attempts > 0) {
            final_failure(q);
            return;
        }
        reply_error(q, 503, "server_error", "circuit_open", NULL, RETRY_DOWN_S,
                    "every endpoint serving model %s failed repeatedly and is paused; retry "
                    "later",
                    q->model);
        return;
    }
    /* Full: wait for a slot, within the queue deadline. */
    if (q->phase != PH_QUEUED) {
        uint64_t wait = g->first_token_timeout_ms < QUEUE_WAIT_MAX_MS ? g->first_token_timeout_ms
                                                                       : QUEUE_WAIT_MAX_MS;
        q->queue_deadline_ms = lm_now_ms() + wait;
        if (q->queue_deadline_ms > q->deadline_ms)
            q->queue_deadline_ms = q->deadline_ms;
    }
    if (lm_now_ms() >= q->queue_deadline_ms ||
        lm_endpoints_wait(g->eps, q->model, on_slot_maybe, q, &q->waiter) < 0) {
        q->waiter = NULL;
        reply_error(q, 429, "requests", "queue_full", NULL, RETRY_BUSY_S,
                    "every endpoint serving model %s is at its max_concurrent and the wait "
                    "queue is full; retry later",
                    q->model);
        return;
    }
    q->phase = PH_QUEUED;
    arm(q, q->queue_deadline_ms);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct gw_req *q = arg;
    (void)fd;
    (void)what;
    enter(q);
    uint64_t now = lm_now_ms();
    switch (q->phase) {
    case PH_QUEUED:
        if (q->waiter) {
            lm_endpoints_wait_cancel(q->waiter);
            q->waiter = NULL;
        }
        if (now >= q->deadline_ms)
            reply_error(q, 504, "timeout_error", "timeout", NULL, 0,
                        "request_timeout_s passed while waiting for a free endpoint");
        else
            reply_error(q, 429, "requests", "queue_timeout", NULL, RETRY_BUSY_S,
                        "every endpoint serving model %s stayed at its max_concurrent for %" PRIu64
                        " s; retry later",
                        q->model, (q->queue_deadline_ms - q->t0_us / 1000 + 500) / 1000);
        break;
    case PH_UPSTREAM:
        attempt_failed(q, GW_FAIL_TIMEOUT,
                       now >= q->deadline_ms ? "no answer within request_timeout_s"
                                             : "no first token within first_token_timeout_s");
        break;
    case PH_RELAY:
        /* The operator's request_timeout_s, not the endpoint's fault. */
        fail_midway(q, GW_FAIL_TIMEOUT, LM_OUTCOME_CANCELED, "request_timeout_s passed");
        break;
    default:
        break;
    }
    leave(q);
}

/* ---- the API ---- */

static bool
is_this_node(const struct lm_gateway *g, const char *node)
{
    if (strcmp(node, g->node_name) == 0)
        return true;
    size_t n = strlen(node);
    return n >= 4 && n <= strlen(g->node_id) && lm_is_hex(node, n) &&
           strncasecmp(g->node_id, node, n) == 0;
}

/* The catalogue entry called name on any endpoint, healthy or not. */
static const struct lm_model *
find_model(const struct lm_gateway *g, const char *name)
{
    for (size_t i = 0; i < lm_endpoints_count(g->eps); i++) {
        const struct lm_endpoint *e = lm_endpoints_at(g->eps, i);
        for (size_t k = 0; k < e->n_models; k++) {
            if (model_is(&e->models[k], name))
                return &e->models[k];
        }
    }
    return NULL;
}

static bool
authorize(struct gw_req *q, const struct lm_http_request *r, const char *model)
{
    struct lm_gateway *g = q->g;
    struct lm_auth_result res;
    lm_auth_check(g->auth, lm_http_header_get(r, "Authorization"), model, lm_now_ms(), &res);
    if (res.verdict == LM_AUTH_OK) {
        q->key = res.key;
        q->auth_held = true;
        return true;
    }
    q->key = res.key;
    reply_error(q, lm_auth_http_status(res.verdict), lm_auth_error_type(res.verdict),
                lm_auth_error_code(res.verdict), NULL, res.retry_after_s, "%s",
                res.message && *res.message ? res.message : "not authorized");
    return false;
}

static void
bad_request(struct gw_req *q, const char *param, const char *msg)
{
    reply_error(q, 400, "invalid_request_error", NULL, param, 0, "%s", msg);
}

/* The fields we route by, from one validating pass over the body (no
 * tree). Returns 1 (read), 0 (answered: a bad field), or -EAGAIN when the
 * scan cannot tell or the body is not valid JSON: parse_body_tree then
 * decides, and words the error as it always has. */
static int
scan_body(struct gw_req *q, const struct lm_http_request *r)
{
    struct gw_body b;
    if (!r->body || gw_scan_body(r->body, r->body_len, &b) != 0)
        return -EAGAIN;
    const char *why = NULL, *param = NULL;
    size_t mlen = b.members.model.val_len - 2; /* found when model is a string */
    if (b.model == GW_J_ABSENT) {
        why = "you must provide a model parameter";
        param = "model";
    } else if (b.model != GW_J_STRING || mlen == 0) {
        why = "model must be a non-empty string";
        param = "model";
    } else if (mlen >= MODEL_MAX) {
        why = "model names are at most 255 bytes, without NUL";
        param = "model";
    } else if (b.stream != GW_J_ABSENT && b.stream != GW_J_TRUE && b.stream != GW_J_FALSE &&
               b.stream != GW_J_NULL) {
        why = "stream must be a boolean";
        param = "stream";
    }
    if (why) {
        if (authorize(q, r, NULL)) /* as in parse_body_tree: 401 before 400 */
            bad_request(q, param, why);
        return 0;
    }
    memcpy(q->model_sent, r->body + b.members.model.val + 1, mlen);
    q->model_sent[mlen] = '\0';
    q->stream = q->route != GW_ROUTE_EMBEDDINGS && b.stream == GW_J_TRUE;
    if (q->stream)
        q->inject = (b.stream_options == GW_J_ABSENT || b.stream_options == GW_J_NULL ||
                     b.stream_options == GW_J_OBJECT) &&
                    b.include_usage != GW_J_TRUE;
    q->body = r->body;
    q->body_len = r->body_len;
    q->members = b.members;
    q->members_ok = true;
    return 1;
}

static bool parse_body_tree(struct gw_req *q, const struct lm_http_request *r);

/* Parses the body, checks the fields we route by, and decides what a
 * forwarded body must change. Answers and returns false on bad input. */
static bool
parse_body(struct gw_req *q, const struct lm_http_request *r)
{
    int rc = scan_body(q, r);
    return rc < 0 ? parse_body_tree(q, r) : rc == 1;
}

/* The same with jansson: bodies the scan leaves to it, and bad ones. */
static bool
parse_body_tree(struct gw_req *q, const struct lm_http_request *r)
{
    json_error_t jerr;
    json_t *o = json_loadb(r->body ? r->body : "", r->body_len, 0, &jerr);
    if (!o || !json_is_object(o)) {
        /* Only a client with a valid key learns what is wrong with its body. */
        if (!authorize(q, r, NULL)) {
            json_decref(o);
            return false;
        }
        if (!o)
            reply_error(q, 400, "invalid_request_error", "invalid_json", NULL, 0,
                        "the request body is not valid JSON: %s (line %d, column %d)", jerr.text,
                        jerr.line, jerr.column);
        else
            bad_request(q, NULL, "the request body must be a JSON object");
        json_decref(o);
        return false;
    }
    const char *why = NULL, *param = NULL;
    json_t *model = json_object_get(o, "model");
    json_t *stream = json_object_get(o, "stream");
    json_t *so = json_object_get(o, "stream_options");
    if (!model) {
        why = "you must provide a model parameter";
        param = "model";
    } else if (!json_is_string(model) || json_string_length(model) == 0) {
        why = "model must be a non-empty string";
        param = "model";
    } else if (json_string_length(model) >= MODEL_MAX ||
               strlen(json_string_value(model)) != json_string_length(model)) {
        why = "model names are at most 255 bytes, without NUL";
        param = "model";
    } else if (stream && !json_is_boolean(stream) && !json_is_null(stream)) {
        why = "stream must be a boolean";
        param = "stream";
    }
    if (why) {
        json_decref(o);
        if (authorize(q, r, NULL)) /* as above: 401 before 400 */
            bad_request(q, param, why);
        return false;
    }
    memcpy(q->model_sent, json_string_value(model), json_string_length(model) + 1);
    q->stream = q->route != GW_ROUTE_EMBEDDINGS && json_is_true(stream);
    if (q->stream) {
        json_t *iu = json_object_get(so, "include_usage");
        q->inject = (!so || json_is_null(so) || json_is_object(so)) && !json_is_true(iu);
    }
    json_decref(o);
    q->body = r->body;
    q->body_len = r->body_len;
    q->members_ok = gw_scan_members(q->body, q->body_len, &q->members) == 0 &&
                    q->members.model.found;
    return true;
}

/* model@node or X-Labman-Target: this node is served here; another is not
 * known yet (the mesh comes later). Fills q->model. */
static bool
resolve_target(struct gw_req *q, const struct lm_http_request *r)
{
    struct lm_gateway *g = q->g;
    const char *target = lm_http_header_get(r, "X-Labman-Target");
    const char *node = NULL;

    scopy(q->model, sizeof(q->model), q->model_sent);
    char *at = strrchr(q->model, '@');
    if (at && !find_model(g, q->model_sent)) {
        *at = '\0';
        node = at + 1;
    } else if (target && *target) {
        node = target;
    }
    q->pin[0] = '\0';
    if (!node || is_this_node(g, node))
        return true;
    char id[LM_NODE_ID_LEN + 1];
    if (g->mesh && strlen(node) < sizeof(q->pin) &&
        lm_mesh_pick(g->mesh, q->model, node, NULL, 0, id, NULL, 0) == 0) {
        scopy(q->pin, sizeof(q->pin), node);
        return true;
    }
    char esc[NODE_MAX];
    lm_escape(esc, sizeof(esc), node, strlen(node));
    reply_error(q, 404, "invalid_request_error", "node_not_found", "model", 0,
                "node \"%s\" is not connected to this gateway or does not serve this model "
                "(this node is \"%s\"; `labman peers` lists the mesh)",
                esc, g->node_name);
    return false;
}

static void
inference(struct gw_req *q, const struct lm_http_request *r)
{
    struct lm_gateway *g = q->g;

    /* Refusals that need no parsing come first. */
    if (g->auth_mode == LM_AUTH_FEP ||
        (g->auth_mode == LM_AUTH_KEYS && !lm_http_header_get(r, "Authorization"))) {
        authorize(q, r, NULL);
        return;
    }
    if (!parse_body(q, r))
        return;
    if (!authorize(q, r, q->model_sent))
        return;
    if (!resolve_target(q, r))
        return;
    const struct lm_model *m = q->pin[0] ? NULL : find_model(g, q->model);
    char id[LM_NODE_ID_LEN + 1];
    if (!m && (q->pin[0] || (g->mesh && g->route_mode != LM_ROUTE_LOCAL_ONLY &&
                             lm_mesh_pick(g->mesh, q->model, NULL, NULL, 0, id, NULL, 0) == 0))) {
        q->deadline_ms = q->t0_us / 1000 + g->request_timeout_ms;
        lm_http_watch(q->conn, on_conn_event, q);
        attempt(q);
        return;
    }
    if (!m) {
        char esc[MODEL_MAX * 2];
        lm_escape(esc, sizeof(esc), q->model, strlen(q->model));
        reply_error(q, 404, "invalid_request_error", "model_not_found", "model", 0,
                    "the model \"%s\" does not exist on this node; GET /v1/models lists the "
                    "models you can use",
                    esc);
        return;
    }
    scopy(q->label, sizeof(q->label), m->id);
    q->deadline_ms = q->t0_us / 1000 + g->request_timeout_ms;
    lm_http_watch(q->conn, on_conn_event, q);
    attempt(q);
}

/* ---- /v1/models ---- */

static json_t *
model_object(const struct lm_gateway *g, const struct lm_model *m)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:I,s:b}", "id", m->id, "object", "model", "created",
                     (json_int_t)g->created, "owned_by", g->node_name, "context_length",
                     (json_int_t)m->context_length, "loaded", m->loaded);
}

/* Merges m into the entry for its id: loaded anywhere, the largest context. */
static void
merge(json_t *entry, const struct lm_model *m)
{
    if (m->loaded)
        json_object_set_new(entry, "loaded", json_true());
    if (m->context_length > json_integer_value(json_object_get(entry, "context_length")))
        json_object_set_new(entry, "context_length", json_integer(m->context_length));
}

static json_t *
models_json(const struct lm_gateway *g, const char *only)
{
    json_t *data = json_array(), *seen = json_object();
    for (size_t i = 0; i < lm_endpoints_count(g->eps); i++) {
        const struct lm_endpoint *e = lm_endpoints_at(g->eps, i);
        if (!e->healthy)
            continue;
        for (size_t k = 0; k < e->n_models; k++) {
            const struct lm_model *m = &e->models[k];
            if (!m->id)
                continue;
            if (only && !model_is(m, only))
                continue;
            json_t *have = json_object_get(seen, m->id);
            if (have) {
                merge(have, m);
                continue;
            }
            json_t *o = model_object(g, m);
            json_object_set(seen, m->id, o);
            json_array_append_new(data, o);
        }
    }
    /* Models of other nodes, with the nodes serving them. */
    json_t *mesh = g->route_mode != LM_ROUTE_LOCAL_ONLY ? lm_mesh_models_json(g->mesh) : NULL;
    size_t i;
    json_t *mm;
    json_array_foreach(mesh, i, mm) {
        const char *id = json_string_value(json_object_get(mm, "id"));
        if (only && strcmp(id, only) != 0)
            continue;
        json_t *have = json_object_get(seen, id);
        if (!have) {
            have = json_pack("{s:s,s:s,s:I,s:s,s:b}", "id", id, "object", "model", "created",
                             (json_int_t)g->created, "owned_by", "mesh", "loaded", 0);
            json_object_set(seen, id, have);
            json_array_append_new(data, have);
        }
        json_object_set(have, "nodes", json_object_get(mm, "nodes"));
        size_t k;
        json_t *n;
        json_array_foreach(json_object_get(mm, "nodes"), k, n) {
            if (json_is_true(json_object_get(n, "loaded")))
                json_object_set_new(have, "loaded", json_true());
        }
    }
    json_decref(mesh);
    json_decref(seen);
    return data;
}

static void
reply_json(struct gw_req *q, int status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    respond(q, status, "application/json", headers(q, false, 0), s ? s : "{}",
            s ? strlen(s) : 2);
    free(s);
    req_done(q);
}

static int
unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static void
models(struct gw_req *q, const struct lm_http_request *r, const char *id)
{
    struct lm_gateway *g = q->g;
    if (!authorize(q, r, NULL))
        return;
    if (!id) {
        reply_json(q, 200, json_pack("{s:s,s:o}", "object", "list", "data", models_json(g, NULL)));
        return;
    }
    /* Percent-decoded: ids such as "hf.co/org/model:tag" are sent escaped. */
    size_t o = 0;
    for (size_t i = 0; id[i] && o + 1 < sizeof(q->model); i++) {
        int hi, lo;
        if (id[i] == '%' && (hi = unhex(id[i + 1])) >= 0 && (lo = unhex(id[i + 2])) >= 0) {
            q->model[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            q->model[o++] = id[i];
        }
    }
    q->model[o] = '\0';
    snprintf(q->model_sent, sizeof(q->model_sent), "%s", q->model);
    json_t *data = models_json(g, q->model);
    json_t *first = json_incref(json_array_get(data, 0));
    json_decref(data);
    if (!first) {
        char esc[MODEL_MAX * 2];
        lm_escape(esc, sizeof(esc), q->model, strlen(q->model));
        reply_error(q, 404, "invalid_request_error", "model_not_found", "model", 0,
                    "the model \"%s\" does not exist on this node; GET /v1/models lists the "
                    "models you can use",
                    esc);
        return;
    }
    snprintf(q->label, sizeof(q->label), "%s", json_string_value(json_object_get(first, "id")));
    reply_json(q, 200, first);
}

static void
method_not_allowed(struct gw_req *q, const char *allow)
{
    struct lm_gateway *g = q->g;
    char h[320];
    snprintf(h, sizeof(h), "%sAllow: %s\r\n", headers(q, false, 0), allow);
    lm_buf_reset(&g->scratch);
    char msg[160];
    snprintf(msg, sizeof(msg), "%s is not allowed here; use %s", q->method, allow);
    error_json(&g->scratch, msg, "invalid_request_error", NULL, "method_not_allowed");
    respond(q, 405, "application/json", h, g->scratch.data, g->scratch.len);
    req_done(q);
}

static void
on_request(struct lm_http_conn *c, const struct lm_http_request *r, void *arg)
{
    struct lm_gateway *g = arg;
    struct gw_req *q = req_get(g);
    const char *path = r->path;

    enter(q);
    q->conn = c;
    scopy(q->method, sizeof(q->method), r->method);
    bool get = strcmp(r->method, "GET") == 0, post = strcmp(r->method, "POST") == 0;

    if (strcmp(path, "/v1/chat/completions") == 0)
        q->route = GW_ROUTE_CHAT;
    else if (strcmp(path, "/v1/completions") == 0)
        q->route = GW_ROUTE_COMPLETIONS;
    else if (strcmp(path, "/v1/embeddings") == 0)
        q->route = GW_ROUTE_EMBEDDINGS;
    else if (strcmp(path, "/v1/models") == 0 || strncmp(path, "/v1/models/", 11) == 0)
        q->route = GW_ROUTE_MODELS;

    switch (q->route) {
    case GW_ROUTE_CHAT:
    case GW_ROUTE_COMPLETIONS:
    case GW_ROUTE_EMBEDDINGS:
        if (post)
            inference(q, r);
        else
            method_not_allowed(q, "POST");
        break;
    case GW_ROUTE_MODELS:
        if (!get)
            method_not_allowed(q, "GET");
        else if (path[10] == '/' && path[11])
            models(q, r, path + 11);
        else if (path[10] == '/')
            reply_error(q, 404, "invalid_request_error", "model_not_found", "model", 0,
                        "no model id after /v1/models/; GET /v1/models lists the models");
        else
            models(q, r, NULL);
        break;
    default: {
        lm_escape(q->path, sizeof(q->path), path, strlen(path));
        reply_error(q, 404, "invalid_request_error", "unknown_url", NULL, 0,
                    "Invalid URL (%s %s): this gateway serves GET /v1/models, POST "
                    "/v1/chat/completions, /v1/completions and /v1/embeddings",
                    q->method, q->path);
        break;
    }
    }
    leave(q);
}

/* ---- admin ---- */

static void
route_requests(struct evhttp_request *req, void *arg)
{
    struct lm_gateway *g = arg;
    uint64_t now = lm_now_us();
    json_t *list = json_array();
    for (const struct gw_req *q = g->active; q; q = q->next) {
        static const char *const phases[] = {"checking", "queued", "connecting", "relaying",
                                             "done"};
        json_t *o = json_pack(
            "{s:s,s:s,s:s,s:s,s:s,s:b,s:s,s:I,s:I,s:I,s:I}", "id", q->id, "key",
            lm_auth_key_name(q->key), "route", gw_route_name(q->route), "model", q->model_sent,
            "endpoint", q->ep_name, "stream", q->stream, "state", phases[q->phase], "age_ms",
            (json_int_t)((now - q->t0_us) / 1000), "attempts", (json_int_t)q->attempts,
            "tokens", (json_int_t)(q->usage_seen ? q->tokens_out : q->events), "prompt_tokens",
            (json_int_t)q->tokens_in);
        if (o) {
            /* paused: the client reads slower than the runtime writes. */
            json_object_set_new(o, "paused", json_boolean(q->paused));
            json_array_append_new(list, o);
        }
    }
    lm_admin_reply_json(req, 200,
                        json_pack("{s:o,s:I,s:I}", "requests", list, "in_flight",
                                  (json_int_t)g->n_active, "queued",
                                  (json_int_t)lm_endpoints_queue_depth(g->eps)));
}

static void
on_metrics(struct lm_buf *out, void *arg)
{
    struct lm_gateway *g = arg;
    gw_metrics_write(g->metrics, g->n_active, out);
}

static void
on_status(json_t *st, void *arg)
{
    struct lm_gateway *g = arg;
    json_t *listen = json_object_get(st, "listen");
    if (json_is_object(listen))
        json_object_set_new(listen, "gateway", json_string(lm_http_server_address(g->http)));
    json_object_set_new(st, "gateway",
                        json_pack("{s:s,s:s,s:s,s:I}", "listen", lm_http_server_address(g->http),
                                  "auth", lm_config_auth_name(g->auth_mode), "route",
                                  lm_config_route_name(g->route_mode), "in_flight",
                                  (json_int_t)g->n_active));
}

/* ---- life ---- */

static void
apply(struct lm_gateway *g, const struct lm_config *cfg)
{
    g->auth_mode = cfg->gateway.auth;
    g->route_mode = cfg->gateway.route;
    g->request_timeout_ms = (uint64_t)cfg->gateway.request_timeout_s * 1000;
    g->first_token_timeout_ms = (uint64_t)cfg->gateway.first_token_timeout_s * 1000;
    if (g->request_timeout_ms == 0)
        g->request_timeout_ms = 600000;
    if (g->first_token_timeout_ms == 0)
        g->first_token_timeout_ms = g->request_timeout_ms;
}

/* A node name as a header value: printable ASCII only. */
static char *
header_safe(const char *s)
{
    char *out = lm_xstrdup(s && *s ? s : "-");
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '_';
    return out;
}

int
lm_gateway_new(struct lm_gateway **out, const struct lm_gateway_deps *deps,
               const struct lm_config *cfg, char *err, size_t errcap)
{
    struct lm_gateway *g = lm_xcalloc(1, sizeof(*g));
    int rc;

    g->base = deps->base;
    g->up = deps->upstream;
    g->eps = deps->endpoints;
    g->admin = deps->admin;
    g->node_name = header_safe(deps->node_name);
    g->node_id = lm_xstrdup(deps->node_id ? deps->node_id : "");
    g->hdr_node = lm_xasprintf("X-Labman-Node: %s\r\n", g->node_name);
    g->hdr_node_len = strlen(g->hdr_node);
    event_assign(&g->log_flush, g->base, -1, 0, on_log_flush, g);
    g->created = (int64_t)time(NULL);
    lm_buf_init(&g->scratch, 0);
    lm_buf_init(&g->out, 0);
    if (getrandom(&g->id_seed, sizeof(g->id_seed), GRND_NONBLOCK) != sizeof(g->id_seed))
        g->id_seed = lm_now_us() ^ ((uint64_t)getpid() << 32);
    apply(g, cfg);
    g->auth = lm_auth_new(cfg);
    g->metrics = gw_metrics_new();

    struct lm_http_server_opts o = {
        .listen = cfg->gateway.listen,
        .max_body_bytes = (size_t)cfg->gateway.max_body_bytes,
        .server_name = NULL,
        .handler = on_request,
        .arg = g,
    };
    rc = lm_http_server_new(&g->http, g->base, &o, err, errcap);
    if (rc < 0)
        goto fail;
    if (g->admin) {
        lm_admin_route(g->admin, "/admin/v1/requests", EVHTTP_REQ_GET, route_requests, g);
        lm_admin_add_metrics(g->admin, on_metrics, g);
        lm_admin_add_status(g->admin, on_status, g);
    }
    log_info("OpenAI-compatible API on http://%s (auth %s)",
             lm_http_server_address(g->http), lm_config_auth_name(g->auth_mode));
    *out = g;
    return 0;
fail:
    lm_gateway_free(g);
    return rc;
}

void
lm_gateway_free(struct lm_gateway *g)
{
    if (!g)
        return;
    /* Closing the connections ends every request (LM_HTTP_CLOSED). */
    lm_http_server_free(g->http);
    while (g->active) {
        struct gw_req *q = g->active;
        q->conn = NULL;
        q->in_cb++;
        finish_gone(q);
        q->in_cb--;
        req_put(q);
    }
    while (g->pool) {
        struct gw_req *q = g->pool;
        g->pool = q->next;
        req_free(q);
    }
    if (g->log_held) {
        event_del(&g->log_flush);
        lm_log_flush();
    }
    lm_auth_free(g->auth);
    gw_metrics_free(g->metrics);
    lm_buf_release(&g->scratch);
    lm_buf_release(&g->out);
    free(g->node_name);
    free(g->node_id);
    free(g->hdr_node);
    free(g);
}

void
lm_gateway_reconfigure(struct lm_gateway *g, const struct lm_config *cfg)
{
    apply(g, cfg);
    lm_auth_reconfigure(g->auth, cfg);
    lm_http_server_set_max_body(g->http, (size_t)cfg->gateway.max_body_bytes);
}

void
lm_gateway_set_mesh(struct lm_gateway *g, struct lm_mesh *mesh)
{
    if (g)
        g->mesh = mesh;
}

void
lm_gateway_stop_listening(struct lm_gateway *g)
{
    if (g && g->http)
        lm_http_server_stop_listening(g->http);
}

unsigned
lm_gateway_in_flight(const struct lm_gateway *g)
{
    return g ? g->n_active : 0;
}
