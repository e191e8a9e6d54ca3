/* Requests across the mesh (PROTOCOL.md §4): a gateway's request rides its
 * own yamux stream to a provider, which runs it on a local endpoint and
 * streams the answer back as PROXY_HEAD, PROXY_CHUNK..., PROXY_END. The yamux
 * window is the backpressure both ways: the gateway consumes only what its
 * client took, and the provider pauses its runtime when the window is shut. */
#define LM_LOG_MODULE "mesh"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <fnmatch.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "log/log.h"
#include "mesh/mesh_internal.h"

#define CHUNK_MAX (64u * 1024)   /* payload of one PROXY_CHUNK we send */
#define TAIL_MAX 512             /* answer bytes kept to find usage split across chunks */
#define CONNECT_TIMEOUT_MS 5000
#define RTT_STEP_MS 10
#define REQ_PENDING_MAX (8u << 20) /* request bytes still arriving, per connection */

/* --- both sides: frames onto a stream ----------------------------------------------------- */

/* Bytes of whole frames a stream's window has not taken yet. Bounded by
 * the callers: the gateway queues one request (≤ 4 MiB), the provider
 * pauses its runtime as soon as anything waits here. */
struct outq {
    struct lm_buf b;
    size_t off;
};

static int
outq_flush(struct outq *q, struct lm_yamux_stream *st)
{
    while (q->off < q->b.len) {
        ssize_t k = lm_yamux_stream_write(st, q->b.data + q->off, q->b.len - q->off);
        if (k < 0)
            return (int)k;
        if (k == 0)
            break;
        q->off += (size_t)k;
    }
    if (q->off == q->b.len) {
        lm_buf_reset(&q->b);
        q->off = 0;
    }
    return 0;
}

static bool
outq_empty(const struct outq *q)
{
    return q->off == q->b.len;
}

/* --- the gateway's side ------------------------------------------------------------------- */

struct lm_mesh_req {
    struct lm_mesh *m;
    struct lm_yamux_stream *st;
    struct lm_frame_reader rd;
    struct lm_mesh_req_cbs cbs;
    void *arg;
    char node[LM_NODE_ID_LEN + 1];
    char request_id[LM_FRAME_REQUEST_ID_LEN + 1];
    struct outq out;
    struct lm_buf held; /* stream bytes that came while paused: one window at most */
    bool head, paused, done, relayed;
    struct lm_mesh_usage usage;
    struct lm_mesh_req *next; /* m->reqs */
};

static void
req_unlink(struct lm_mesh_req *r)
{
    for (struct lm_mesh_req **pp = &r->m->reqs; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            return;
        }
    }
}

/* The end, once: the stream goes (reset when the answer was not complete,
 * which is the cancel the provider sees) and the callback runs last. */
static void
req_finish(struct lm_mesh_req *r, int err, const char *msg)
{
    if (r->done)
        return;
    r->done = true;
    if (r->st) {
        lm_yamux_stream_free(r->st);
        r->st = NULL;
    }
    req_unlink(r);
    struct peer *p = lm_mesh_peer_find_(r->m, r->node);
    if (err && err != -ECANCELED) {
        r->m->proxy_failed++;
        if (p)
            p->req_fails++;
    } else if (!err) {
        r->m->proxy_ok++;
        if (p)
            p->req_fails /= 2;
    }
    struct lm_mesh_req_cbs cbs = r->cbs;
    void *arg = r->arg;
    struct lm_mesh_usage usage = r->usage;
    lm_frame_reader_release(&r->rd);
    lm_buf_release(&r->out.b);
    lm_buf_release(&r->held);
    free(r);
    if (cbs.on_done)
        cbs.on_done(NULL, err, msg, &usage, arg);
}

static int
err_of_code(const char *code)
{
    if (strcmp(code, "overloaded") == 0)
        return -EBUSY;
    if (strcmp(code, "model_not_available") == 0)
        return -ENOENT;
    if (strcmp(code, "timeout") == 0)
        return -ETIMEDOUT;
    if (strcmp(code, "untrusted") == 0 || strcmp(code, "rejected_economics") == 0)
        return -EPERM;
    if (strcmp(code, "bad_request") == 0)
        return -EINVAL;
    return -EIO;
}

/* One frame of the answer. Returns false when r is gone. */
static bool
req_frame(struct lm_mesh_req *r, const struct lm_frame *f)
{
    char msg[300];
    switch (f->type) {
    case LM_FRAME_PROXY_HEAD: {
        int status;
        char ct[128];
        if (r->head || lm_frame_parse_proxy_head(f, &status, ct, sizeof(ct)) != 0) {
            req_finish(r, -EPROTO, "the provider sent a malformed PROXY_HEAD");
            return false;
        }
        r->head = true;
        if (r->cbs.on_head)
            r->cbs.on_head(r, status, ct, r->arg);
        return !r->done;
    }
    case LM_FRAME_PROXY_CHUNK:
        if (!r->head) {
            req_finish(r, -EPROTO, "the provider sent data before PROXY_HEAD");
            return false;
        }
        if (r->cbs.on_data && f->payload_len)
            r->cbs.on_data(r, (const char *)f->payload, f->payload_len, r->arg);
        return !r->done;
    case LM_FRAME_PROXY_END: {
        json_t *j = NULL;
        struct lm_frame_problem why;
        if (lm_frame_check(f, r->m->replay, lm_wall_ms(), 0, &j, &why) != 0) {
            snprintf(msg, sizeof(msg), "PROXY_END refused: %s", why.message);
            r->m->rejected[REJ_SIGNATURE]++;
            req_finish(r, -EPROTO, msg);
            return false;
        }
        const char *from = json_string_value(json_object_get(j, "from"));
        const char *rid = json_string_value(json_object_get(j, "request_id"));
        if (!from || strcmp(from, r->node) != 0 || !rid || strcmp(rid, r->request_id) != 0) {
            json_decref(j);
            r->m->rejected[REJ_FORGED]++;
            req_finish(r, -EPROTO, "PROXY_END not from the provider or for another request");
            return false;
        }
        json_t *u = json_object_get(j, "usage");
        r->usage.prompt_tokens = (uint64_t)json_integer_value(json_object_get(u,
                                                                              "prompt_tokens"));
        r->usage.completion_tokens =
            (uint64_t)json_integer_value(json_object_get(u, "completion_tokens"));
        r->usage.signed_end = true;
        json_decref(j);
        if (!r->head) {
            req_finish(r, -EPROTO, "PROXY_END before PROXY_HEAD");
            return false;
        }
        req_finish(r, 0, NULL);
        return false;
    }
    case LM_FRAME_PROXY_ERROR: {
        struct lm_frame_error e;
        if (lm_frame_parse_error(f, &e) != 0) {
            req_finish(r, -EPROTO, "the provider sent a malformed PROXY_ERROR");
            return false;
        }
        char m[200];
        lm_escape(m, sizeof(m), e.message, strlen(e.message));
        snprintf(msg, sizeof(msg), "provider %.12s: %s: %s", r->node, e.code, m);
        r->usage.retry_after_ms = e.retry_after_ms;
        req_finish(r, err_of_code(e.code), msg);
        return false;
    }
    default:
        req_finish(r, -EPROTO, "the provider sent an unexpected frame");
        return false;
    }
}

/* Feeds answer bytes; stops early when paused (the rest is held) or when r
 * ended. Returns the bytes taken. */
static size_t
req_feed(struct lm_mesh_req *r, const uint8_t *p, size_t n)
{
    size_t taken = 0;
    while (taken < n && !r->paused) {
        size_t used = 0;
        struct lm_frame f;
        int rc = lm_frame_reader_feed(&r->rd, p + taken, n - taken, &used, &f);
        taken += used;
        if (rc == 1) {
            if (!req_frame(r, &f))
                return SIZE_MAX; /* r is gone */
        } else if (rc < 0) {
            req_finish(r, -EPROTO, rc == -EMSGSIZE ? "a frame over the cap from the provider"
                                                   : "broken framing from the provider");
            return SIZE_MAX;
        }
    }
    return taken;
}

static void
req_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct lm_mesh_req *r = arg;
    if (r->paused) {
        lm_buf_append(&r->held, data, n); /* unconsumed: the window bounds it */
        return;
    }
    size_t k = req_feed(r, data, n);
    if (k == SIZE_MAX)
        return;
    if (k < n)
        lm_buf_append(&r->held, (const char *)data + k, n - k);
    lm_yamux_stream_consume(st, k);
}

static void
req_writable(struct lm_yamux_stream *st, void *arg)
{
    struct lm_mesh_req *r = arg;
    if (outq_flush(&r->out, st) < 0)
        req_finish(r, -ECONNRESET, "the stream to the provider broke");
}

static void
req_fin(struct lm_yamux_stream *st, void *arg)
{
    (void)st;
    struct lm_mesh_req *r = arg;
    if (!r->paused && r->held.len == 0)
        req_finish(r, -ECONNRESET, "the provider ended the stream without PROXY_END");
}

static void
req_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    (void)st;
    struct lm_mesh_req *r = arg;
    req_finish(r, -ECONNRESET,
               err == -ECONNRESET ? "the provider reset the stream" : "the mesh connection broke");
}

static const struct lm_yamux_stream_cbs req_cbs = {req_data, req_writable, req_fin, req_reset};

int
lm_mesh_request(struct lm_mesh *m, const struct lm_mesh_req_opts *o,
                const struct lm_mesh_req_cbs *cbs, void *arg, struct lm_mesh_req **out)
{
    *out = NULL;
    if (!m)
        return -ENOTCONN;
    struct peer *p = lm_mesh_peer_find_(m, o->node_id);
    if (!p || !p->conn || !lm_mesh_conn_up_(p->conn))
        return -ENOTCONN;
    struct lm_yamux_stream *st;
    int rc = lm_yamux_open(p->conn->mux, &st);
    if (rc < 0)
        return rc;

    struct lm_mesh_req *r = lm_xcalloc(1, sizeof(*r));
    r->m = m;
    r->st = st;
    r->relayed = p->conn->via[0] != '\0';
    r->cbs = *cbs;
    r->arg = arg;
    snprintf(r->node, sizeof(r->node), "%s", o->node_id);
    if (o->request_id && strlen(o->request_id) == LM_FRAME_REQUEST_ID_LEN) {
        snprintf(r->request_id, sizeof(r->request_id), "%s", o->request_id);
    } else {
        uint8_t rnd[LM_FRAME_REQUEST_ID_LEN / 2];
        randombytes_buf(rnd, sizeof(rnd));
        lm_hex_encode(r->request_id, rnd, sizeof(rnd));
    }
    lm_frame_reader_init(&r->rd);
    lm_buf_init(&r->out.b, LM_FRAME_MAX_REQUEST + 16);
    lm_buf_init(&r->held, 2u * LM_YAMUX_MAX_WINDOW);
    r->usage.retry_after_ms = -1;

    /* The body goes in as the client's bytes (already validated JSON), not
     * re-encoded: "body" is the last member so it can be spliced in. */
    json_t *head = json_pack("{s:s, s:I, s:s, s:s, s:s, s:s, s:b, s:I}", "from", m->id->node_id,
                             "ts", (json_int_t)lm_wall_ms(), "request_id", r->request_id, "to",
                             o->node_id, "api", o->api, "model", o->model, "stream", o->stream,
                             "deadline_ms", (json_int_t)o->deadline_ms);
    char *hs = head ? json_dumps(head, JSON_COMPACT) : NULL;
    json_decref(head);
    struct lm_buf payload;
    lm_buf_init(&payload, LM_FRAME_MAX_REQUEST);
    rc = hs ? 0 : -ENOMEM;
    if (rc == 0 && (lm_buf_append(&payload, hs, strlen(hs) - 1) != 0 ||
                    lm_buf_puts(&payload, ",\"body\":") != 0 ||
                    lm_buf_append(&payload, o->body, o->body_len) != 0 ||
                    lm_buf_puts(&payload, "}") != 0))
        rc = -EMSGSIZE;
    free(hs);
    if (rc == 0)
        rc = lm_frame_encode(&r->out.b, LM_FRAME_PROXY_REQUEST, 0, payload.data, payload.len,
                             m->id);
    lm_buf_release(&payload);
    if (rc == 0)
        rc = outq_flush(&r->out, st);
    if (rc != 0) {
        lm_yamux_stream_free(st);
        lm_frame_reader_release(&r->rd);
        lm_buf_release(&r->out.b);
        lm_buf_release(&r->held);
        free(r);
        return rc;
    }
    lm_yamux_stream_set_cbs(st, &req_cbs, r);
    r->next = m->reqs;
    m->reqs = r;
    m->proxy_sent++;
    *out = r;
    return 0;
}

void
lm_mesh_req_pause(struct lm_mesh_req *r)
{
    if (r)
        r->paused = true;
}

void
lm_mesh_req_resume(struct lm_mesh_req *r)
{
    if (!r || !r->paused || r->done)
        return;
    r->paused = false;
    /* What came while paused, in order; it may pause again. */
    size_t n = r->held.len;
    if (n == 0)
        return;
    uint8_t *copy = lm_xmalloc(n);
    memcpy(copy, r->held.data, n);
    lm_buf_reset(&r->held);
    struct lm_yamux_stream *st = r->st;
    size_t k = req_feed(r, copy, n);
    if (k != SIZE_MAX) {
        if (k < n)
            lm_buf_append(&r->held, copy + k, n - k);
        if (st)
            lm_yamux_stream_consume(st, k);
    }
    free(copy);
}

void
lm_mesh_req_cancel(struct lm_mesh_req *r)
{
    if (!r || r->done)
        return;
    r->cbs.on_done = NULL; /* no callback after a cancel */
    req_finish(r, -ECANCELED, "cancelled");
}

bool
lm_mesh_req_relayed(const struct lm_mesh_req *r)
{
    return r && r->relayed;
}

const char *
lm_mesh_req_node(const struct lm_mesh_req *r)
{
    return r ? r->node : NULL;
}

/* --- the provider's side ------------------------------------------------------------------ */

struct serve {
    struct lm_mesh *m;
    struct conn *c;
    struct lm_yamux_stream *st;
    struct lm_frame_reader rd;
    char from[LM_NODE_ID_LEN + 1];
    char request_id[LM_FRAME_REQUEST_ID_LEN + 1];
    char model[256];
    struct lm_slot slot;
    bool have_slot, started, head, paused, ended;
    struct lm_upstream_req *ureq;
    struct outq out;
    char url[512];
    char *body;
    char tail[TAIL_MAX * 2];
    size_t tail_len;
    size_t tail_seen;          /* keys starting before this offset were looked for */
    ptrdiff_t usage_at, finish_at; /* the first key of each in tail, -1: none */
    uint64_t prompt_tokens, completion_tokens;
    char finish[32];
    uint64_t t0_us, t_first_us;
    size_t pending; /* bytes of the request taken before it was complete */
    struct serve *next; /* m->serving */
};

/* The request is complete, or the stream goes: its bytes no longer count
 * against the connection's budget for requests still arriving. */
static void
unpend(struct serve *s)
{
    s->c->req_pending -= s->pending;
    s->pending = 0;
}

static void
serve_unlink(struct serve *s)
{
    for (struct serve **pp = &s->m->serving; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            return;
        }
    }
}

static void
serve_free(struct serve *s, enum lm_outcome outcome)
{
    unpend(s);
    if (s->ureq) {
        lm_upstream_cancel(s->ureq);
        s->ureq = NULL;
    }
    if (s->have_slot) {
        lm_endpoints_release(s->m->endpoints, &s->slot, outcome);
        s->have_slot = false;
    }
    if (s->st) {
        lm_yamux_stream_free(s->st);
        s->st = NULL;
    }
    serve_unlink(s);
    lm_frame_reader_release(&s->rd);
    lm_buf_release(&s->out.b);
    free(s->body);
    free(s);
}

/* What s->out holds into the window. */
static void
serve_flush(struct serve *s)
{
    if (!s->st || outq_flush(&s->out, s->st) < 0)
        return;
    /* The window is shut: stop the runtime until the gateway takes more. */
    if (!outq_empty(&s->out) && s->ureq && !s->paused) {
        s->paused = true;
        lm_upstream_pause(s->ureq);
    }
}

static void
serve_send(struct serve *s, const struct lm_buf *frame)
{
    if (!s->st || lm_buf_append(&s->out.b, frame->data, frame->len) != 0)
        return;
    serve_flush(s);
}

/* No more frames: FIN goes out once the window has taken what waits. */
static void
serve_end(struct serve *s)
{
    s->ended = true;
    if (s->st && outq_empty(&s->out))
        lm_yamux_stream_close(s->st);
}

/* Answers with PROXY_ERROR and half-closes; the stream goes when the
 * gateway lets go of it. */
static void
serve_error(struct serve *s, const char *code, bool retryable, int64_t retry_after_ms,
            const char *fmt, ...) LM_PRINTF(5, 6);

static void
serve_error(struct serve *s, const char *code, bool retryable, int64_t retry_after_ms,
            const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct lm_buf b;
    lm_buf_init(&b, 4096);
    if (lm_frame_encode_error(&b, LM_FRAME_PROXY_ERROR, code, msg, retryable, retry_after_ms) ==
        0)
        serve_send(s, &b);
    lm_buf_release(&b);
    serve_end(s);
    /* Busy or missing is the provider's state; the rest is the peer's doing. */
    if (strcmp(code, "overloaded") == 0 || strcmp(code, "model_not_available") == 0 ||
        strcmp(code, "upstream_error") == 0 || strcmp(code, "timeout") == 0)
        log_info("mesh request %s from %.12s: %s: %s", s->request_id[0] ? s->request_id : "-",
                 s->from, code, msg);
    else
        log_warn("mesh request %s from %.12s: refused: %s: %s",
                 s->request_id[0] ? s->request_id : "-", s->from, code, msg);
}

/* Usage and finish_reason as the answer goes by, from a sliding tail so a
 * field split across chunks is still found. */
static uint64_t
num_after(const char *hay, size_t n, const char *key)
{
    const char *p = memmem(hay, n, key, strlen(key));
    if (!p)
        return UINT64_MAX;
    p += strlen(key);
    while (p < hay + n && (*p == ' ' || *p == ':'))
        p++;
    uint64_t v = 0;
    const char *d = p;
    while (p < hay + n && *p >= '0' && *p <= '9' && p - d < 18)
        v = v * 10 + (uint64_t)(*p++ - '0');
    return p > d ? v : UINT64_MAX;
}

/* Drops the first d bytes of the tail. A key found there is lost: the next
 * scan looks at the whole tail again, for the one after it. */
static void
tail_drop(struct serve *s, size_t d)
{
    ptrdiff_t dd = (ptrdiff_t)d;
    bool lost = (s->usage_at >= 0 && s->usage_at < dd) || (s->finish_at >= 0 && s->finish_at < dd);
    memmove(s->tail, s->tail + d, s->tail_len - d);
    s->tail_len -= d;
    s->tail_seen = lost || s->tail_seen < d ? 0 : s->tail_seen - d;
    s->usage_at = s->usage_at >= dd ? s->usage_at - dd : -1;
    s->finish_at = s->finish_at >= dd ? s->finish_at - dd : -1;
}

#define USAGE_KEY "\"usage\""
#define FINISH_KEY "\"finish_reason\":\""

/* The first "usage" in the tail from offset from on whose value is not null
 * (a streamed answer has "usage":null in every event): its offset, -1 none,
 * -2 one whose value has not come yet (its offset in *undecided). */
static ptrdiff_t
find_usage(const struct serve *s, size_t from, size_t *undecided)
{
    const char *end = s->tail + s->tail_len, *p = s->tail + from;
    for (;;) {
        const char *u = memmem(p, (size_t)(end - p), USAGE_KEY, sizeof(USAGE_KEY) - 1);
        if (!u)
            return -1;
        const char *v = u + sizeof(USAGE_KEY) - 1;
        while (v < end && (*v == ' ' || *v == ':'))
            v++;
        size_t have = (size_t)(end - v);
        if (have < 4 && memcmp(v, "null", have) == 0) {
            *undecided = (size_t)(u - s->tail);
            return -2;
        }
        if (memcmp(v, "null", 4) != 0)
            return u - s->tail;
        p = v + 4;
    }
}

/* Each answer byte is searched for the keys about once (what came since the
 * last scan, plus a key's length before it, where a key split across chunks
 * starts); a key found is parsed again as more bytes come, until the tail
 * lets go of it. */
static void
watch_answer(struct serve *s, const char *data, size_t len)
{
    if (len >= TAIL_MAX) {
        memcpy(s->tail, data + len - TAIL_MAX, TAIL_MAX);
        s->tail_len = TAIL_MAX;
        s->tail_seen = 0;
        s->usage_at = s->finish_at = -1;
        if (memmem(data, len - TAIL_MAX, "\"usage\"", 7) == NULL &&
            memmem(data, len - TAIL_MAX, "finish_reason", 13) == NULL)
            goto scan;
        /* A long chunk with usage inside: scan it whole. */
        uint64_t pt = num_after(data, len, "\"prompt_tokens\"");
        uint64_t ct = num_after(data, len, "\"completion_tokens\"");
        if (pt != UINT64_MAX)
            s->prompt_tokens = pt;
        if (ct != UINT64_MAX)
            s->completion_tokens = ct;
        goto scan;
    }
    if (s->tail_len + len > sizeof(s->tail)) {
        size_t keep = TAIL_MAX - len < s->tail_len ? TAIL_MAX - len : s->tail_len;
        tail_drop(s, s->tail_len - keep);
    }
    memcpy(s->tail + s->tail_len, data, len);
    s->tail_len += len;
scan:;
    /* A key not found yet may start in the last bytes, its end still to come. */
    size_t seen = s->tail_len >= sizeof(FINISH_KEY) - 2 ? s->tail_len - (sizeof(FINISH_KEY) - 2)
                                                        : 0;
    if (s->usage_at < 0) {
        size_t undecided = 0;
        ptrdiff_t u = find_usage(s, s->tail_seen, &undecided);
        if (u >= 0)
            s->usage_at = u;
        else if (u == -2 && undecided < seen)
            seen = undecided;
    }
    if (s->finish_at < 0) {
        const char *f = memmem(s->tail + s->tail_seen, s->tail_len - s->tail_seen, FINISH_KEY,
                               sizeof(FINISH_KEY) - 1);
        if (f)
            s->finish_at = f - s->tail;
    }
    s->tail_seen = seen;
    if (s->usage_at >= 0) {
        const char *u = s->tail + s->usage_at;
        size_t rest = s->tail_len - (size_t)s->usage_at;
        uint64_t pt = num_after(u, rest, "\"prompt_tokens\"");
        uint64_t ct = num_after(u, rest, "\"completion_tokens\"");
        if (pt != UINT64_MAX)
            s->prompt_tokens = pt;
        if (ct != UINT64_MAX)
            s->completion_tokens = ct;
    }
    if (s->finish_at >= 0) {
        const char *f = s->tail + s->finish_at + sizeof(FINISH_KEY) - 1;
        size_t k = 0;
        while (f + k < s->tail + s->tail_len && f[k] != '"' && k < sizeof(s->finish) - 1)
            k++;
        if (f + k < s->tail + s->tail_len && f[k] == '"') {
            memcpy(s->finish, f, k);
            s->finish[k] = '\0';
        }
    }
}

static void
up_head(struct lm_upstream_req *r, int status, void *arg)
{
    struct serve *s = arg;
    const char *ct = lm_upstream_header(r, "Content-Type");
    s->t_first_us = lm_now_us();
    s->head = true;
    struct lm_buf b;
    lm_buf_init(&b, 4096);
    if (lm_frame_encode_proxy_head(&b, status, ct ? ct : "application/json") == 0)
        serve_send(s, &b);
    lm_buf_release(&b);
}

static void
up_data(struct lm_upstream_req *r, const char *data, size_t len, void *arg)
{
    (void)r;
    struct serve *s = arg;
    watch_answer(s, data, len);
    if (!s->st)
        return;
    /* Framed straight into the stream's queue, whose buffer stays from one
     * chunk to the next: no buffer of its own, no copy, per chunk. */
    while (len > 0) {
        size_t k = len < CHUNK_MAX ? len : CHUNK_MAX;
        if (lm_frame_encode(&s->out.b, LM_FRAME_PROXY_CHUNK, LM_FRAME_BINARY, data, k, NULL) != 0)
            break;
        data += k;
        len -= k;
    }
    serve_flush(s);
}

static void
up_done(struct lm_upstream_req *r, int err, const char *msg, void *arg)
{
    (void)r;
    struct serve *s = arg;
    s->ureq = NULL;
    if (err) {
        char m[200];
        lm_escape(m, sizeof(m), msg ? msg : "failed", strlen(msg ? msg : "failed"));
        serve_error(s, err == -ETIMEDOUT ? "timeout" : "upstream_error", !s->head, -1,
                    "endpoint %s: %s", s->slot.ep ? s->slot.ep->name : "?", m);
        lm_endpoints_release(s->m->endpoints, &s->slot, LM_OUTCOME_FAILED);
        s->have_slot = false;
        return;
    }
    uint64_t now = lm_now_us();
    json_t *end = json_pack(
        "{s:s, s:s, s:I, s:{s:I, s:I}, s:s, s:{s:I, s:I, s:I}}", "from", s->m->id->node_id,
        "request_id", s->request_id, "ts", (json_int_t)lm_wall_ms(), "usage", "prompt_tokens",
        (json_int_t)s->prompt_tokens, "completion_tokens", (json_int_t)s->completion_tokens,
        "finish_reason", s->finish[0] ? s->finish : "stop", "timings", "queue_ms",
        (json_int_t)0, "ttft_ms", (json_int_t)((s->t_first_us - s->t0_us) / 1000), "total_ms",
        (json_int_t)((now - s->t0_us) / 1000));
    struct lm_buf b;
    lm_buf_init(&b, 8192);
    if (end && lm_frame_encode_json(&b, LM_FRAME_PROXY_END, end, s->m->id) == 0)
        serve_send(s, &b);
    lm_buf_release(&b);
    json_decref(end);
    lm_endpoints_release(s->m->endpoints, &s->slot, LM_OUTCOME_OK);
    s->have_slot = false;
    s->m->served_ok++;
    serve_end(s);
}

static const char *
api_path(const char *api)
{
    if (strcmp(api, "chat") == 0)
        return "/v1/chat/completions";
    if (strcmp(api, "completions") == 0)
        return "/v1/completions";
    if (strcmp(api, "embeddings") == 0)
        return "/v1/embeddings";
    return NULL;
}

static void
serve_start(struct serve *s, const struct lm_frame *f)
{
    struct lm_mesh *m = s->m;
    json_t *j = NULL;
    struct lm_frame_problem why;
    s->started = true;
    unpend(s);
    if (lm_frame_check(f, m->replay, lm_wall_ms(), 0, &j, &why) != 0) {
        m->rejected[strcmp(why.code, LM_FRAME_E_REPLAYED) == 0   ? REJ_REPLAY
                    : strcmp(why.code, LM_FRAME_E_STALE) == 0    ? REJ_STALE
                    : strcmp(why.code, LM_FRAME_E_BAD_SIGNATURE) == 0 ? REJ_SIGNATURE
                                                                     : REJ_MALFORMED]++;
        serve_error(s, "bad_request", false, -1, "PROXY_REQUEST refused: %s", why.message);
        return;
    }
    const char *from = json_string_value(json_object_get(j, "from"));
    const char *to = json_string_value(json_object_get(j, "to"));
    const char *rid = json_string_value(json_object_get(j, "request_id"));
    const char *api = json_string_value(json_object_get(j, "api"));
    const char *model = json_string_value(json_object_get(j, "model"));
    json_t *body = json_object_get(j, "body");
    json_t *dl = json_object_get(j, "deadline_ms");
    if (rid && strlen(rid) == LM_FRAME_REQUEST_ID_LEN)
        snprintf(s->request_id, sizeof(s->request_id), "%s", rid);
    if (!from || strcmp(from, s->c->id) != 0) {
        m->rejected[REJ_FORGED]++;
        serve_error(s, "untrusted", false, -1, "signed as %.12s on %.12s's connection",
                    from ? from : "?", s->c->id);
        goto out;
    }
    if (!to || strcmp(to, m->id->node_id) != 0) {
        serve_error(s, "bad_request", false, -1, "addressed to another node");
        goto out;
    }
    const char *path = api ? api_path(api) : NULL;
    if (!path || !model || !json_is_object(body) || strlen(model) >= sizeof(s->model)) {
        serve_error(s, "bad_request", false, -1, "missing or malformed api, model or body");
        goto out;
    }
    snprintf(s->model, sizeof(s->model), "%s", model);
    if (!(m->cfg->node.roles & LM_ROLE_PROVIDER) || !m->endpoints) {
        serve_error(s, "model_not_available", true, -1, "this node is not a provider");
        goto out;
    }
    /* Endpoints with share = false never serve the mesh. */
    const struct lm_endpoint *skip[64];
    size_t nskip = 0;
    for (size_t i = 0; i < lm_endpoints_count(m->endpoints) && nskip < 64; i++) {
        const struct lm_endpoint *e = lm_endpoints_at(m->endpoints, i);
        if (!e->share)
            skip[nskip++] = e;
    }
    int rc = lm_endpoints_acquire(m->endpoints, model, skip, nskip, &s->slot);
    if (rc == -ENOENT) {
        serve_error(s, "model_not_available", true, -1, "no shared endpoint serves %s", model);
        goto out;
    }
    if (rc != 0) {
        serve_error(s, "overloaded", true, 1000, "every endpoint serving %s is busy", model);
        goto out;
    }
    s->have_slot = true;

    /* The runtime gets the model under its own name. */
    json_t *b = json_deep_copy(body);
    json_object_set_new(b, "model", json_string(s->slot.model_id));
    s->body = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    const struct lm_endpoint *ep = s->slot.ep;
    snprintf(s->url, sizeof(s->url), "%s%s", ep->url, path);
    struct lm_upstream_opts o;
    memset(&o, 0, sizeof(o));
    o.method = "POST";
    o.url = s->url;
    size_t h = 0;
    o.headers[h++] = "Content-Type: application/json";
    const char *auth = lm_endpoints_auth_header(ep);
    if (auth)
        o.headers[h++] = auth;
    o.body = s->body;
    o.body_len = s->body ? strlen(s->body) : 0;
    int64_t left = json_is_integer(dl) ? json_integer_value(dl) : 0;
    if (left <= 0 || left > 24 * 3600 * 1000)
        left = 600000;
    o.connect_timeout_ms = CONNECT_TIMEOUT_MS;
    o.total_timeout_ms = (unsigned)left;
    static const struct lm_upstream_cbs ucbs = {up_head, up_data, up_done};
    s->t0_us = lm_now_us();
    rc = lm_upstream_start(m->upstream, &o, &ucbs, s, &s->ureq);
    if (rc != 0) {
        s->ureq = NULL;
        lm_endpoints_release(m->endpoints, &s->slot, LM_OUTCOME_FAILED);
        s->have_slot = false;
        serve_error(s, "upstream_error", true, -1, "cannot start: %s", strerror(-rc));
        goto out;
    }
    m->served++;
    log_debug("mesh request %s from %.12s: %s on %s", s->request_id, s->from, model, ep->name);
out:
    json_decref(j);
}

static void
serve_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct serve *s = arg;
    const uint8_t *p = data;
    size_t left = n;
    while (left && !s->ended) {
        size_t used = 0;
        struct lm_frame f;
        int rc = lm_frame_reader_feed(&s->rd, p, left, &used, &f);
        p += used;
        left -= used;
        if (!s->started) {
            /* Up to 4 MiB per request and many streams: a peer could make us
             * hold far more than that in requests that never complete. */
            s->pending += used;
            s->c->req_pending += used;
            if (rc != 1 && s->c->req_pending > REQ_PENDING_MAX) {
                serve_error(s, "overloaded", true, 1000,
                            "over %u MiB of requests arriving at once on this connection",
                            REQ_PENDING_MAX >> 20);
                break;
            }
        }
        if (rc == 1) {
            if (!s->started && f.type == LM_FRAME_PROXY_REQUEST) {
                serve_start(s, &f);
            } else if (!s->started && f.type == LM_FRAME_CIRCUIT_OPEN) {
                /* Not a request: a circuit (relay.c) takes the stream over,
                 * with the bytes after this frame. */
                json_t *j = NULL;
                if (lm_frame_parse_json(&f, &j) != 0) {
                    serve_error(s, "bad_request", false, -1, "malformed CIRCUIT_OPEN");
                    continue;
                }
                struct lm_yamux_stream *own = s->st;
                struct conn *c = s->c;
                lm_yamux_stream_consume(st, n - left);
                s->st = NULL;
                serve_free(s, LM_OUTCOME_CANCELED);
                lm_mesh_circuit_accept_(c, own, j, p, left);
                json_decref(j);
                return;
            } else if (f.type == LM_FRAME_PROXY_CANCEL) {
                log_debug("mesh request %s: cancelled by the gateway", s->request_id);
                serve_free(s, LM_OUTCOME_CANCELED);
                return;
            } else {
                serve_error(s, "bad_request", false, -1, "%s where PROXY_REQUEST was due",
                            lm_frame_type_name(f.type));
            }
        } else if (rc == -EMSGSIZE) {
            s->m->rejected[REJ_TOO_LARGE]++;
            serve_error(s, "frame_too_large", false, -1, "a request over the 4 MiB cap");
        } else if (rc < 0) {
            s->m->rejected[REJ_MALFORMED]++;
            serve_error(s, "bad_request", false, -1, "broken framing");
        }
    }
    if (s->st)
        lm_yamux_stream_consume(st, n);
}

static void
serve_writable(struct lm_yamux_stream *st, void *arg)
{
    struct serve *s = arg;
    if (outq_flush(&s->out, st) < 0 || !outq_empty(&s->out))
        return;
    if (s->ended)
        lm_yamux_stream_close(st);
    else if (s->paused && s->ureq) {
        s->paused = false;
        lm_upstream_resume(s->ureq);
    }
}

static void
serve_fin(struct lm_yamux_stream *st, void *arg)
{
    (void)st;
    struct serve *s = arg;
    if (s->ended && outq_empty(&s->out))
        serve_free(s, LM_OUTCOME_OK);
}

static void
serve_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    (void)st;
    (void)err;
    struct serve *s = arg;
    if (!s->ended)
        log_debug("mesh request %s: the gateway let go; cancelling upstream", s->request_id);
    serve_free(s, s->ended ? LM_OUTCOME_OK : LM_OUTCOME_CANCELED);
}

static const struct lm_yamux_stream_cbs serve_cbs = {serve_data, serve_writable, serve_fin,
                                                     serve_reset};

int
lm_mesh_proxy_accept_(struct conn *c, struct lm_yamux_stream *st)
{
    struct lm_mesh *m = c->m;
    struct serve *s = lm_xcalloc(1, sizeof(*s));
    s->m = m;
    s->c = c;
    s->st = st;
    snprintf(s->from, sizeof(s->from), "%s", c->id);
    lm_frame_reader_init(&s->rd);
    s->usage_at = s->finish_at = -1;
    lm_buf_init(&s->out.b, 4u << 20);
    lm_yamux_stream_set_cbs(st, &serve_cbs, s);
    s->next = m->serving;
    m->serving = s;
    return 0;
}

void
lm_mesh_proxy_free_all_(struct lm_mesh *m)
{
    while (m->serving)
        serve_free(m->serving, LM_OUTCOME_CANCELED);
    while (m->reqs)
        req_finish(m->reqs, -ECONNABORTED, "shutting down");
}

void
lm_mesh_proxy_metrics_(struct lm_mesh *m, struct lm_buf *out)
{
    unsigned serving = 0, sending = 0;
    for (struct serve *s = m->serving; s; s = s->next)
        serving++;
    for (struct lm_mesh_req *r = m->reqs; r; r = r->next)
        sending++;
    lm_buf_printf(out,
                  "# HELP labman_mesh_requests_total Requests across the mesh, by side and "
                  "result.\n"
                  "# TYPE labman_mesh_requests_total counter\n"
                  "labman_mesh_requests_total{side=\"gateway\",result=\"ok\"} %llu\n"
                  "labman_mesh_requests_total{side=\"gateway\",result=\"failed\"} %llu\n"
                  "labman_mesh_requests_total{side=\"provider\",result=\"started\"} %llu\n"
                  "labman_mesh_requests_total{side=\"provider\",result=\"ok\"} %llu\n"
                  "# HELP labman_mesh_requests_in_flight Requests across the mesh now.\n"
                  "# TYPE labman_mesh_requests_in_flight gauge\n"
                  "labman_mesh_requests_in_flight{side=\"gateway\"} %u\n"
                  "labman_mesh_requests_in_flight{side=\"provider\"} %u\n",
                  (unsigned long long)m->proxy_ok, (unsigned long long)m->proxy_failed,
                  (unsigned long long)m->served, (unsigned long long)m->served_ok, sending,
                  serving);
}

/* --- choosing a provider ------------------------------------------------------------------ */

bool
lm_mesh_is_self(const struct lm_mesh *m, const char *node)
{
    if (!m || !node)
        return false;
    return strcasecmp(node, m->id->node_id) == 0 || strcasecmp(node, m->id->short_id) == 0 ||
           strcmp(node, m->cfg->node.name) == 0;
}

static bool
names_model(json_t *md, const char *model)
{
    const char *id = json_string_value(json_object_get(md, "id"));
    if (!id)
        return false;
    size_t n = strlen(model), k = strlen(id);
    if (strcmp(id, model) == 0 ||
        (n == k + 7 && strcmp(model + k, ":latest") == 0 && strncmp(model, id, k) == 0 &&
         !strchr(id, ':')))
        return true;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(md, "aliases"), i, a) {
        if (json_is_string(a) && strcmp(json_string_value(a), model) == 0)
            return true;
    }
    return false;
}

static bool
matches_pin(const struct peer *p, const char *pin)
{
    if (!pin)
        return true;
    size_t n = strlen(pin);
    return strcmp(p->name, pin) == 0 ||
           (n >= LM_SHORT_ID_LEN && n <= LM_NODE_ID_LEN && strncasecmp(p->id, pin, n) == 0);
}

/* The price of 1k output tokens for model in a capabilities body, in
 * micro-units; INT64_MAX when none is listed. */
static int64_t
price_of(json_t *caps, const char *model)
{
    size_t i;
    json_t *pr;
    json_array_foreach(json_object_get(caps, "prices"), i, pr) {
        const char *glob = json_string_value(json_object_get(pr, "model"));
        json_t *out = json_object_get(pr, "per_1k_out");
        lm_micros v;
        if (!glob || fnmatch(glob, model, 0) != 0)
            continue;
        if (json_is_string(out) && lm_config_micros_parse(json_string_value(out), &v) == 0)
            return v;
        if (json_is_number(out) && json_number_value(out) >= 0 && json_number_value(out) < 1e9)
            return (lm_micros)(json_number_value(out) * 1e6);
    }
    return INT64_MAX;
}

struct pick {
    struct lm_mesh *m;
    const char *model, *pin;
    char (*skip)[LM_NODE_ID_LEN + 1];
    size_t nskip;
    struct peer *best;
    int64_t best_key[5];
};

static void
consider(void *arg, const struct lm_gossip_record *r)
{
    struct pick *k = arg;
    struct peer *p = lm_mesh_peer_find_(k->m, r->origin);
    if (!p || !p->conn || !lm_mesh_conn_up_(p->conn) || !matches_pin(p, k->pin))
        return;
    for (size_t i = 0; i < k->nskip; i++)
        if (strcmp(k->skip[i], p->id) == 0)
            return;
    struct lm_trust_verdict v;
    if (lm_mesh_trust_(k->m, p->id, &v) != 0)
        return;
    size_t i;
    json_t *md, *found = NULL;
    json_array_foreach(json_object_get(r->body, "models"), i, md) {
        if (names_model(md, k->model)) {
            found = md;
            break;
        }
    }
    if (!found)
        return;
    int rtt = lm_yamux_ping_rtt_ms(p->conn->mux);
    /* Smaller is better, compared in order. RTT counts in steps of
     * RTT_STEP_MS: a few ms of jitter between two nodes in the same place
     * says nothing, and must not outweigh their prices. */
    int64_t key[5] = {
        json_integer_value(json_object_get(found, "slots_free")) > 0 ? 0 : 1,
        json_is_true(json_object_get(found, "loaded")) ? 0 : 1,
        (int64_t)p->req_fails,
        (rtt >= 0 ? rtt : 1000) / RTT_STEP_MS,
        price_of(r->body, k->model),
    };
    if (k->best) {
        bool better = false;
        for (int j = 0; j < 5; j++) {
            if (key[j] != k->best_key[j]) {
                better = key[j] < k->best_key[j];
                break;
            }
        }
        if (!better)
            return;
    }
    k->best = p;
    memcpy(k->best_key, key, sizeof(key));
}

int
lm_mesh_pick(struct lm_mesh *m, const char *model, const char *pin,
             char (*skip)[LM_NODE_ID_LEN + 1], size_t nskip, char out[LM_NODE_ID_LEN + 1],
             char *name, size_t namecap)
{
    if (!m)
        return -ENOENT;
    struct pick k = {.m = m, .model = model, .pin = pin, .skip = skip, .nskip = nskip};
    lm_gossip_each(m->gossip, "capabilities", lm_wall_ms(), consider, &k);
    if (!k.best)
        return -ENOENT;
    snprintf(out, LM_NODE_ID_LEN + 1, "%s", k.best->id);
    if (name)
        snprintf(name, namecap, "%s", k.best->name[0] ? k.best->name : k.best->id);
    return 0;
}

struct models_acc {
    struct lm_mesh *m;
    json_t *by_id;
};

static void
add_models(void *arg, const struct lm_gossip_record *r)
{
    struct models_acc *a = arg;
    struct peer *p = lm_mesh_peer_find_(a->m, r->origin);
    struct lm_trust_verdict v;
    if (!p || !p->conn || !lm_mesh_conn_up_(p->conn) || lm_mesh_trust_(a->m, p->id, &v) != 0)
        return;
    size_t i;
    json_t *md;
    json_array_foreach(json_object_get(r->body, "models"), i, md) {
        const char *id = json_string_value(json_object_get(md, "id"));
        if (!id || strlen(id) > 256)
            continue;
        json_t *e = json_object_get(a->by_id, id);
        if (!e) {
            e = json_pack("{s:s, s:[]}", "id", id, "nodes");
            json_object_set_new(a->by_id, id, e);
        }
        json_array_append_new(json_object_get(e, "nodes"),
                              json_pack("{s:s, s:s, s:b}", "node_id", p->id, "name", p->name,
                                        "loaded", json_is_true(json_object_get(md, "loaded"))));
    }
}

json_t *
lm_mesh_models_json(struct lm_mesh *m)
{
    json_t *arr = json_array();
    if (!m)
        return arr;
    struct models_acc a = {m, json_object()};
    lm_gossip_each(m->gossip, "capabilities", lm_wall_ms(), add_models, &a);
    const char *key;
    json_t *v;
    json_object_foreach(a.by_id, key, v) {
        json_array_append(arr, v);
    }
    json_decref(a.by_id);
    return arr;
}
