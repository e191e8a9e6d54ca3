/* yamux as a state machine with no I/O of its own: bytes come in through
 * lm_yamux_feed and leave through the send callback, so the mesh runs it over
 * a TLS bufferevent and tests and fuzzers drive it directly.
 *
 * Memory is bounded by construction: the parser keeps one partial header;
 * Data payloads are handed to on_data straight from the caller's buffer, and
 * the application holds at most one receive window per stream because the
 * window only reopens as it consumes. Streams are capped by max_streams.
 *
 * Callbacks may call back into the API. A stream is held (busy) while one of
 * its callbacks runs and the session (depth) while feed, tick or free run, so
 * that releasing a stream or freeing the session from a callback only marks
 * it; the memory goes when the outermost caller unwinds. */
#define LM_LOG_MODULE "yamux"
#include "yamux/yamux.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log/log.h"
#include "util/util.h"

enum { T_DATA = 0, T_WINDOW = 1, T_PING = 2, T_GOAWAY = 3 };
enum { F_SYN = 1, F_ACK = 2, F_FIN = 4, F_RST = 8 };

/* Peer SYNs may arrive out of id order (hashicorp's OpenStream picks the id
 * and sends the SYN from different goroutines), so "a new id" is judged in a
 * sliding window of this many peer ids; ids below it count as used. */
#define SEEN_IDS 4096
/* Our Pings whose send time is kept, for the RTT of a late answer. */
#define PING_RING 16
#define PING_EXPLICIT_MAX 8

struct lm_yamux_stream {
    struct lm_yamux *s; /* NULL once orphaned by lm_yamux_free */
    struct lm_yamux_stream *hnext;      /* id table chain */
    struct lm_yamux_stream *prev, *next; /* every stream the session still owns */
    uint32_t id;
    uint32_t send_window;
    uint32_t recv_window; /* bytes the peer may still send */
    uint32_t held;        /* delivered, not yet consumed */
    uint32_t unannounced; /* consumed (or initial extra), not yet given back */
    uint16_t pending;     /* SYN or ACK owed on our next frame */
    unsigned busy;        /* callbacks running on it */
    bool in_table;        /* open: neither reset nor closed both ways */
    bool fin_sent, fin_recv, reset, released, want_writable, notified;
    struct lm_yamux_stream_cbs cbs;
    void *arg;
};

struct lm_yamux {
    struct lm_yamux_cbs cbs;
    void *arg;
    bool client;
    uint32_t window;
    unsigned max_streams, keepalive_ms, max_missed;

    /* parser */
    uint8_t hdr[LM_YAMUX_HEADER_LEN];
    size_t hdr_len;
    uint32_t payload_left, payload_id;
    bool payload_fin;

    /* streams */
    struct lm_yamux_stream **table;
    uint32_t table_mask;
    struct lm_yamux_stream *all;
    unsigned count;
    uint32_t next_id;
    uint8_t seen[SEEN_IDS / 8]; /* bit (peer id >> 1) % SEEN_IDS */
    uint32_t seen_base;         /* lowest peer id >> 1 still judged by the bitmap */

    /* pings */
    uint32_t ping_next, ping_acked; /* ids [ping_acked, ping_next) unanswered */
    uint64_t ping_sent[PING_RING];
    int64_t rtt_ms;                 /* -1 until an answer */
    bool ka_started, ka_outstanding;
    uint32_t ka_id;
    uint64_t ka_next_ms;
    unsigned missed;

    bool local_goaway, remote_goaway;
    bool dead, free_req, freeing;
    int err;
    unsigned depth;
    char why[96];
    struct lm_yamux_stats stats;
};

static uint64_t
now_ms(struct lm_yamux *s)
{
    return s->cbs.now_ms ? s->cbs.now_ms(s->arg) : lm_now_ms();
}

/* --- wire ---------------------------------------------------------------- */

#define SEND_JOIN_MAX 4096 /* payloads up to this go out with their header, in one send */

static void
send_frame(struct lm_yamux *s, uint8_t type, uint16_t flags, uint32_t id, uint32_t len,
           const void *payload, size_t plen)
{
    uint8_t h[LM_YAMUX_HEADER_LEN] = {
        0,
        type,
        (uint8_t)(flags >> 8),
        (uint8_t)flags,
        (uint8_t)(id >> 24),
        (uint8_t)(id >> 16),
        (uint8_t)(id >> 8),
        (uint8_t)id,
        (uint8_t)(len >> 24),
        (uint8_t)(len >> 16),
        (uint8_t)(len >> 8),
        (uint8_t)len,
    };
    /* A small frame goes out in one piece: over TLS each send can be a
     * record of its own (a filter bufferevent writes at once). */
    if (plen > 0 && plen <= SEND_JOIN_MAX) {
        uint8_t b[LM_YAMUX_HEADER_LEN + SEND_JOIN_MAX];
        memcpy(b, h, sizeof(h));
        memcpy(b + sizeof(h), payload, plen);
        s->cbs.send(b, sizeof(h) + plen, s->arg);
        return;
    }
    s->cbs.send(h, sizeof(h), s->arg);
    if (plen > 0)
        s->cbs.send(payload, plen, s->arg);
}

/* A frame on a stream carries whatever SYN or ACK it still owes. */
static void
send_stream(struct lm_yamux *s, struct lm_yamux_stream *st, uint8_t type, uint16_t flags,
            uint32_t len, const void *payload, size_t plen)
{
    flags |= st->pending;
    st->pending = 0;
    send_frame(s, type, flags, st->id, len, payload, plen);
}

static uint32_t
be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* --- stream table and lifetime ------------------------------------------- */

static struct lm_yamux_stream *
lookup(struct lm_yamux *s, uint32_t id)
{
    struct lm_yamux_stream *st = s->table[id & s->table_mask];
    while (st && st->id != id)
        st = st->hnext;
    return st;
}

static struct lm_yamux_stream *
stream_new(struct lm_yamux *s, uint32_t id, uint16_t pending)
{
    struct lm_yamux_stream *st = lm_xcalloc(1, sizeof(*st));
    st->s = s;
    st->id = id;
    st->send_window = LM_YAMUX_WINDOW;
    st->recv_window = LM_YAMUX_WINDOW;
    /* A window larger than the protocol's initial one is announced with the
     * SYN or ACK, as hashicorp does with MaxStreamWindowSize. */
    st->unannounced = s->window - LM_YAMUX_WINDOW;
    st->pending = pending;
    st->in_table = true;
    uint32_t b = id & s->table_mask;
    st->hnext = s->table[b];
    s->table[b] = st;
    st->next = s->all;
    if (s->all)
        s->all->prev = st;
    s->all = st;
    s->count++;
    return st;
}

static void
stream_destroy(struct lm_yamux_stream *st)
{
    struct lm_yamux *s = st->s;
    if (s) {
        if (st->prev)
            st->prev->next = st->next;
        else
            s->all = st->next;
        if (st->next)
            st->next->prev = st->prev;
    }
    free(st);
}

static void
maybe_destroy(struct lm_yamux_stream *st)
{
    if (st->released && !st->in_table && st->busy == 0)
        stream_destroy(st);
}

/* The stream is over on the wire: its id no longer resolves, so late frames
 * for it are dropped as hashicorp drops frames for streams it has closed. */
static void
unlink_id(struct lm_yamux *s, struct lm_yamux_stream *st)
{
    if (!st->in_table)
        return;
    struct lm_yamux_stream **pp = &s->table[st->id & s->table_mask];
    while (*pp != st)
        pp = &(*pp)->hnext;
    *pp = st->hnext;
    st->hnext = NULL;
    st->in_table = false;
    s->count--;
}

static void
finish(struct lm_yamux *s, struct lm_yamux_stream *st)
{
    unlink_id(s, st);
    maybe_destroy(st);
}

static void
hold(struct lm_yamux_stream *st)
{
    st->busy++;
}

static void
unhold(struct lm_yamux_stream *st)
{
    st->busy--;
    maybe_destroy(st);
}

static bool
may_call(const struct lm_yamux *s, const struct lm_yamux_stream *st)
{
    return !st->released && !s->free_req;
}

static void
notify_reset(struct lm_yamux *s, struct lm_yamux_stream *st, int err)
{
    if (st->notified || !may_call(s, st))
        return;
    st->notified = true;
    if (st->cbs.on_reset) {
        hold(st);
        st->cbs.on_reset(st, err, st->arg);
        unhold(st);
    }
}

/* Every stream still open ends with on_reset(err). A snapshot, each held,
 * because the callbacks may release any stream. */
static void
reset_all(struct lm_yamux *s, int err)
{
    unsigned n = 0;
    for (struct lm_yamux_stream *st = s->all; st; st = st->next)
        n++;
    if (n == 0)
        return;
    struct lm_yamux_stream **v = lm_xmalloc(n * sizeof(*v));
    unsigned k = 0;
    for (struct lm_yamux_stream *st = s->all; st; st = st->next) {
        v[k++] = st;
        hold(st);
    }
    for (unsigned i = 0; i < k; i++) {
        struct lm_yamux_stream *st = v[i];
        if (st->in_table) {
            st->reset = true;
            unlink_id(s, st);
            notify_reset(s, st, err);
        }
    }
    for (unsigned i = 0; i < k; i++)
        unhold(v[i]);
    free(v);
}

static void
die(struct lm_yamux *s, int err, int goaway_code)
{
    if (s->dead)
        return;
    s->dead = true;
    s->err = err;
    if (goaway_code >= 0)
        send_frame(s, T_GOAWAY, 0, 0, (uint32_t)goaway_code, NULL, 0);
    log_debug("session %s: %s", s->client ? "client" : "server", s->why);
    reset_all(s, err);
    if (!s->free_req && s->cbs.on_close)
        s->cbs.on_close(err, s->why, s->arg);
}

static int
proto_error(struct lm_yamux *s, const char *fmt, ...) LM_PRINTF(2, 3);

static int
proto_error(struct lm_yamux *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof(s->why), fmt, ap);
    va_end(ap);
    die(s, -EPROTO, LM_YAMUX_GOAWAY_PROTO);
    return -EPROTO;
}

/* After a GoAway either way no stream can start, so the session is over
 * once the last one ends. */
static void
check_drained(struct lm_yamux *s)
{
    if (s->dead || s->free_req || s->count > 0 || !(s->local_goaway || s->remote_goaway))
        return;
    snprintf(s->why, sizeof(s->why), "goaway %s: all streams ended",
             s->local_goaway ? "sent" : "received");
    die(s, 0, -1);
}

static void
session_destroy(struct lm_yamux *s)
{
    struct lm_yamux_stream *st = s->all;
    while (st) {
        struct lm_yamux_stream *next = st->next;
        st->in_table = false;
        st->hnext = st->prev = st->next = NULL;
        if (st->released)
            free(st);
        else
            st->s = NULL;
        st = next;
    }
    free(s->table);
    free(s);
}

/* The end of feed, tick or free: the outermost one frees a session whose
 * owner asked for it inside a callback. */
static int
leave(struct lm_yamux *s)
{
    int err = s->dead ? (s->err ? s->err : -ESHUTDOWN) : 0;
    if (--s->depth == 0 && s->free_req)
        session_destroy(s);
    return err;
}

/* --- receive window ------------------------------------------------------ */

static void
give_back(struct lm_yamux *s, struct lm_yamux_stream *st, bool force)
{
    if (s->dead || !st->in_table || st->fin_recv)
        return;
    if (!force && st->unannounced < s->window / 2)
        return;
    send_stream(s, st, T_WINDOW, 0, st->unannounced, NULL, 0);
    st->recv_window += st->unannounced;
    st->unannounced = 0;
}

static void
consume(struct lm_yamux *s, struct lm_yamux_stream *st, uint32_t n)
{
    st->held -= n;
    st->unannounced += n;
    give_back(s, st, false);
}

/* --- incoming ------------------------------------------------------------ */

static bool
seen_test_and_set(struct lm_yamux *s, uint32_t id)
{
    uint32_t k = id >> 1;
    if (k < s->seen_base)
        return true;
    if (k - s->seen_base >= SEEN_IDS) {
        uint32_t nb = k - SEEN_IDS + 1;
        if (nb - s->seen_base >= SEEN_IDS) {
            memset(s->seen, 0, sizeof(s->seen));
        } else {
            for (uint32_t i = s->seen_base; i != nb; i++)
                s->seen[(i % SEEN_IDS) / 8] &= (uint8_t) ~(1u << (i % 8));
        }
        s->seen_base = nb;
    }
    uint32_t bit = k % SEEN_IDS;
    bool was = s->seen[bit / 8] & (1u << (bit % 8));
    s->seen[bit / 8] |= (uint8_t)(1u << (bit % 8));
    return was;
}

/* A SYN: a new stream from the peer, or a refusal with RST. Returns the
 * stream, NULL when refused, or sets *err on a protocol error. */
static struct lm_yamux_stream *
incoming(struct lm_yamux *s, uint32_t id, int *err)
{
    bool peer_odd = !s->client;
    if (id == 0 || (bool)(id & 1) != peer_odd) {
        *err = proto_error(s, "SYN for stream %u: wrong parity for a %s peer", id,
                           peer_odd ? "client" : "server");
        return NULL;
    }
    if (seen_test_and_set(s, id)) {
        *err = proto_error(s, "SYN for stream %u: id already used", id);
        return NULL;
    }
    if (s->local_goaway || s->remote_goaway || s->count >= s->max_streams ||
        !s->cbs.on_accept) {
        s->stats.refused++;
        send_frame(s, T_WINDOW, F_RST, id, 0, NULL, 0);
        return NULL;
    }
    struct lm_yamux_stream *st = stream_new(s, id, F_ACK);
    hold(st);
    int rc = s->cbs.on_accept(st, s->arg);
    if (rc < 0) {
        s->stats.refused++;
        st->released = true;
        if (st->in_table && !s->dead) {
            st->reset = true;
            send_stream(s, st, T_WINDOW, F_RST, 0, NULL, 0);
        }
        unlink_id(s, st);
        unhold(st);
        return NULL;
    }
    s->stats.accepted++;
    /* The ACK (with any window above the protocol's) goes now, unless
     * on_accept already sent a frame that carried it. */
    if (st->in_table && (st->pending || st->unannounced) && !s->dead)
        give_back(s, st, true);
    struct lm_yamux_stream *ret = st->in_table ? st : NULL;
    unhold(st);
    return ret;
}

static void
peer_fin(struct lm_yamux *s, struct lm_yamux_stream *st)
{
    st->fin_recv = true;
    if (st->fin_sent) {
        unlink_id(s, st);
    }
    if (may_call(s, st) && st->cbs.on_fin) {
        hold(st);
        st->cbs.on_fin(st, st->arg);
        unhold(st);
    } else {
        maybe_destroy(st);
    }
}

static void
peer_rst(struct lm_yamux *s, struct lm_yamux_stream *st)
{
    st->reset = true;
    hold(st);
    unlink_id(s, st);
    notify_reset(s, st, -ECONNRESET);
    unhold(st);
}

/* Bytes of a Data payload for stream id; any may be dropped on the way. */
static void
deliver(struct lm_yamux *s, uint32_t id, const uint8_t *p, uint32_t n)
{
    struct lm_yamux_stream *st = lookup(s, id);
    if (!st)
        return;
    if (st->released) {
        /* Nobody reads it any more: tell the writer to stop, as TCP does
         * for data that reaches a closed socket. */
        st->reset = true;
        send_stream(s, st, T_WINDOW, F_RST, 0, NULL, 0);
        finish(s, st);
        return;
    }
    st->held += n;
    if (!st->cbs.on_data || s->free_req) {
        consume(s, st, n);
        return;
    }
    hold(st);
    st->cbs.on_data(st, p, n, st->arg);
    unhold(st);
}

static int
on_stream_frame(struct lm_yamux *s, uint8_t type, uint16_t flags, uint32_t id, uint32_t len)
{
    int err = 0;
    struct lm_yamux_stream *st;

    if (type == T_DATA && len > s->window)
        return proto_error(s, "data frame of %u bytes on stream %u exceeds the window", len, id);
    if (flags & F_SYN) {
        if (lookup(s, id))
            return proto_error(s, "SYN for stream %u: already open", id);
        st = incoming(s, id, &err);
        if (err)
            return err;
        if (s->dead || s->free_req)
            return 0;
    } else {
        st = lookup(s, id);
    }
    if (type == T_DATA) {
        s->payload_left = len;
        s->payload_id = id;
        s->payload_fin = false;
    }
    if (!st)
        return 0; /* ours, already ended (or refused): drop, as hashicorp does */

    if (type == T_DATA && len > st->recv_window)
        return proto_error(s, "data frame of %u bytes on stream %u exceeds the window of %u",
                           len, id, st->recv_window);
    if ((flags & F_FIN) && st->fin_recv && !(flags & F_RST))
        return proto_error(s, "second FIN on stream %u", id);
    if (type == T_DATA && len > 0 && st->fin_recv && !(flags & F_RST))
        return proto_error(s, "data on stream %u after its FIN", id);

    if (flags & F_RST) {
        peer_rst(s, st);
        return 0; /* any payload is dropped: the stream no longer resolves */
    }
    if (type == T_DATA) {
        st->recv_window -= len;
        if (flags & F_FIN) {
            if (len > 0)
                s->payload_fin = true;
            else
                peer_fin(s, st);
        }
        return 0;
    }

    /* WindowUpdate */
    if (len > UINT32_MAX - st->send_window)
        return proto_error(s, "window update on stream %u overflows the send window", id);
    st->send_window += len;
    hold(st);
    if (flags & F_FIN)
        peer_fin(s, st);
    if (st->want_writable && st->send_window > 0 && st->in_table && !st->fin_sent &&
        may_call(s, st)) {
        st->want_writable = false;
        if (st->cbs.on_writable)
            st->cbs.on_writable(st, st->arg);
    }
    unhold(st);
    return 0;
}

static void
on_ping(struct lm_yamux *s, uint16_t flags, uint32_t opaque)
{
    if (flags & F_SYN) {
        send_frame(s, T_PING, F_ACK, 0, opaque, NULL, 0);
        return;
    }
    if (!(flags & F_ACK))
        return;
    uint32_t out = s->ping_next - s->ping_acked;
    if (opaque - s->ping_acked >= out)
        return; /* not one of ours, or already answered: hashicorp ignores these too */
    if (s->ping_next - opaque <= PING_RING) {
        uint64_t now = now_ms(s), sent = s->ping_sent[opaque % PING_RING];
        s->rtt_ms = now >= sent ? (int64_t)(now - sent) : 0;
    }
    if (s->ka_outstanding && s->ka_id - s->ping_acked <= opaque - s->ping_acked)
        s->ka_outstanding = false;
    s->ping_acked = opaque + 1;
    s->missed = 0;
    s->stats.pings_answered++;
}

static int
on_goaway(struct lm_yamux *s, uint32_t code)
{
    switch (code) {
    case LM_YAMUX_GOAWAY_NORMAL:
        s->remote_goaway = true;
        return 0;
    case LM_YAMUX_GOAWAY_PROTO:
        snprintf(s->why, sizeof(s->why), "peer sent GoAway: protocol error");
        die(s, -EPROTO, -1);
        return -EPROTO;
    case LM_YAMUX_GOAWAY_INTERNAL:
        snprintf(s->why, sizeof(s->why), "peer sent GoAway: internal error");
        die(s, -EIO, -1);
        return -EIO;
    default:
        snprintf(s->why, sizeof(s->why), "peer sent GoAway with unknown code %u", code);
        die(s, -EPROTO, -1);
        return -EPROTO;
    }
}

static int
on_header(struct lm_yamux *s)
{
    const uint8_t *h = s->hdr;
    uint8_t type = h[1];
    uint16_t flags = (uint16_t)(h[2] << 8 | h[3]);
    uint32_t id = be32(h + 4), len = be32(h + 8);

    if (h[0] != 0)
        return proto_error(s, "unsupported protocol version %u", h[0]);
    switch (type) {
    case T_DATA:
    case T_WINDOW:
        return on_stream_frame(s, type, flags, id, len);
    case T_PING:
        on_ping(s, flags, len);
        return 0;
    case T_GOAWAY:
        return on_goaway(s, len);
    default:
        return proto_error(s, "unknown frame type %u", type);
    }
}

int
lm_yamux_feed(struct lm_yamux *s, const void *data, size_t n)
{
    const uint8_t *p = data;

    if (s->depth > 0)
        return -EBUSY;
    if (s->dead)
        return s->err ? s->err : -ESHUTDOWN;
    s->depth++;
    while (n > 0 && !s->dead && !s->free_req) {
        if (s->payload_left > 0) {
            uint32_t take = n < s->payload_left ? (uint32_t)n : s->payload_left;
            s->payload_left -= take;
            deliver(s, s->payload_id, p, take);
            p += take;
            n -= take;
            if (s->payload_left == 0 && s->payload_fin && !s->dead && !s->free_req) {
                struct lm_yamux_stream *st = lookup(s, s->payload_id);
                s->payload_fin = false;
                if (st)
                    peer_fin(s, st);
            }
            continue;
        }
        size_t take = LM_YAMUX_HEADER_LEN - s->hdr_len;
        if (take > n)
            take = n;
        memcpy(s->hdr + s->hdr_len, p, take);
        s->hdr_len += take;
        p += take;
        n -= take;
        if (s->hdr_len < LM_YAMUX_HEADER_LEN)
            break;
        s->hdr_len = 0;
        on_header(s);
    }
    check_drained(s);
    return leave(s);
}

/* --- keepalive ----------------------------------------------------------- */

static void
send_ping(struct lm_yamux *s)
{
    uint32_t id = s->ping_next++;
    if (s->ping_next - s->ping_acked > PING_RING)
        s->ping_acked = s->ping_next - PING_RING; /* the oldest is given up on */
    s->ping_sent[id % PING_RING] = now_ms(s);
    s->stats.pings_sent++;
    send_frame(s, T_PING, F_SYN, 0, id, NULL, 0);
}

int
lm_yamux_tick(struct lm_yamux *s, uint64_t now)
{
    if (s->depth > 0)
        return -EBUSY;
    if (s->dead)
        return s->err ? s->err : -ESHUTDOWN;
    s->depth++;
    if (!s->ka_started) {
        s->ka_started = true;
        s->ka_next_ms = now;
    }
    if (now >= s->ka_next_ms) {
        if (s->ka_outstanding)
            s->missed++;
        if (s->missed >= s->max_missed) {
            snprintf(s->why, sizeof(s->why), "keepalive: %u pings in a row unanswered",
                     s->missed);
            die(s, -ETIMEDOUT, -1);
        } else {
            send_ping(s);
            s->ka_id = s->ping_next - 1;
            s->ka_outstanding = true;
            s->ka_next_ms = now + s->keepalive_ms;
        }
    }
    check_drained(s);
    return leave(s);
}

int
lm_yamux_ping(struct lm_yamux *s)
{
    if (s->dead || s->free_req)
        return -ENOTCONN;
    if (s->ping_next - s->ping_acked >= PING_EXPLICIT_MAX)
        return -EBUSY;
    send_ping(s);
    return 0;
}

int
lm_yamux_ping_rtt_ms(const struct lm_yamux *s)
{
    if (s->rtt_ms < 0)
        return -EAGAIN;
    return s->rtt_ms > INT_MAX ? INT_MAX : (int)s->rtt_ms;
}

/* --- session ------------------------------------------------------------- */

int
lm_yamux_new(struct lm_yamux **out, bool client, const struct lm_yamux_cbs *cbs, void *arg,
             const struct lm_yamux_opts *opts)
{
    struct lm_yamux_opts o = {0};
    if (opts)
        o = *opts;
    if (!o.window)
        o.window = LM_YAMUX_WINDOW;
    if (!o.max_streams)
        o.max_streams = LM_YAMUX_MAX_STREAMS;
    if (!o.keepalive_ms)
        o.keepalive_ms = LM_YAMUX_KEEPALIVE_MS;
    if (!o.max_missed_pings)
        o.max_missed_pings = LM_YAMUX_MISSED_PINGS;
    if (!cbs || !cbs->send || o.window < LM_YAMUX_WINDOW || o.window > LM_YAMUX_MAX_WINDOW ||
        o.max_streams > LM_YAMUX_MAX_STREAMS_LIMIT ||
        o.max_missed_pings > LM_YAMUX_MAX_MISSED_PINGS)
        return -EINVAL;

    struct lm_yamux *s = lm_xcalloc(1, sizeof(*s));
    s->cbs = *cbs;
    s->arg = arg;
    s->client = client;
    s->window = o.window;
    s->max_streams = o.max_streams;
    s->keepalive_ms = o.keepalive_ms;
    s->max_missed = o.max_missed_pings;
    uint32_t buckets = 16;
    while (buckets < 2 * o.max_streams)
        buckets *= 2;
    s->table = lm_xcalloc(buckets, sizeof(*s->table));
    s->table_mask = buckets - 1;
    s->next_id = client ? 1 : 2;
    s->rtt_ms = -1;
    *out = s;
    return 0;
}

void
lm_yamux_free(struct lm_yamux *s)
{
    if (!s || s->free_req || s->freeing)
        return;
    /* A nested call from one of the on_resets below is a no-op, so that
     * every open stream still hears of the end. */
    s->freeing = true;
    s->depth++;
    if (!s->dead) {
        s->dead = true;
        s->err = -ECONNABORTED;
        reset_all(s, -ECONNABORTED);
    }
    s->free_req = true;
    leave(s);
}

int
lm_yamux_goaway(struct lm_yamux *s, uint32_t code)
{
    if (s->dead || s->free_req)
        return -ENOTCONN;
    if (s->local_goaway)
        return -EALREADY;
    s->local_goaway = true;
    send_frame(s, T_GOAWAY, 0, 0, code, NULL, 0);
    return 0;
}

int
lm_yamux_error(const struct lm_yamux *s)
{
    if (!s->dead)
        return 0;
    return s->err ? s->err : -ESHUTDOWN;
}

void
lm_yamux_get_stats(const struct lm_yamux *s, struct lm_yamux_stats *out)
{
    *out = s->stats;
    out->streams = s->count;
}

int
lm_yamux_open(struct lm_yamux *s, struct lm_yamux_stream **out)
{
    if (s->dead || s->free_req)
        return -ENOTCONN;
    if (s->local_goaway)
        return -ESHUTDOWN;
    if (s->remote_goaway)
        return -ECONNREFUSED;
    if (s->count >= s->max_streams)
        return -EAGAIN;
    if (s->next_id >= UINT32_MAX - 1)
        return -ENOSPC;
    struct lm_yamux_stream *st = stream_new(s, s->next_id, F_SYN);
    s->next_id += 2;
    s->stats.opened++;
    give_back(s, st, true);
    *out = st;
    return 0;
}

/* --- streams ------------------------------------------------------------- */

void
lm_yamux_stream_set_cbs(struct lm_yamux_stream *st, const struct lm_yamux_stream_cbs *cbs,
                        void *arg)
{
    if (cbs)
        st->cbs = *cbs;
    else
        memset(&st->cbs, 0, sizeof(st->cbs));
    st->arg = arg;
}

void *
lm_yamux_stream_get_arg(const struct lm_yamux_stream *st)
{
    return st->arg;
}

void
lm_yamux_stream_set_arg(struct lm_yamux_stream *st, void *arg)
{
    st->arg = arg;
}

uint32_t
lm_yamux_stream_id(const struct lm_yamux_stream *st)
{
    return st->id;
}

static int
stream_usable(const struct lm_yamux_stream *st)
{
    if (!st->s || st->s->dead || st->s->free_req || st->released)
        return -ENOTCONN;
    if (!st->in_table)
        return st->reset ? -ECONNRESET : -EPIPE;
    return 0;
}

uint32_t
lm_yamux_stream_send_window(const struct lm_yamux_stream *st)
{
    if (stream_usable(st) < 0 || st->fin_sent)
        return 0;
    return st->send_window;
}

ssize_t
lm_yamux_stream_write(struct lm_yamux_stream *st, const void *data, size_t n)
{
    int rc = stream_usable(st);
    if (rc < 0)
        return rc;
    if (st->fin_sent)
        return -EPIPE;
    if (n == 0)
        return 0;
    /* Frames never exceed the protocol's initial window, whatever the peer
     * announces: a receiver may size its checks by it. */
    size_t done = 0;
    while (done < n && st->send_window > 0) {
        uint32_t take = st->send_window < LM_YAMUX_WINDOW ? st->send_window : LM_YAMUX_WINDOW;
        if (n - done < take)
            take = (uint32_t)(n - done);
        st->send_window -= take;
        send_stream(st->s, st, T_DATA, 0, take, (const uint8_t *)data + done, take);
        done += take;
    }
    if (done < n)
        st->want_writable = true;
    return (ssize_t)done;
}

int
lm_yamux_stream_consume(struct lm_yamux_stream *st, size_t n)
{
    if (n > st->held)
        return -EINVAL;
    if (!st->s || st->s->dead || st->s->free_req) {
        st->held -= (uint32_t)n;
        return 0;
    }
    consume(st->s, st, (uint32_t)n);
    return 0;
}

int
lm_yamux_stream_close(struct lm_yamux_stream *st)
{
    int rc = stream_usable(st);
    if (rc == -EPIPE || (rc == 0 && st->fin_sent))
        return 0;
    if (rc < 0)
        return rc;
    struct lm_yamux *s = st->s;
    st->fin_sent = true;
    send_stream(s, st, T_WINDOW, F_FIN, 0, NULL, 0);
    if (st->fin_recv)
        finish(s, st);
    return 0;
}

int
lm_yamux_stream_reset(struct lm_yamux_stream *st)
{
    int rc = stream_usable(st);
    if (rc == -EPIPE || rc == -ECONNRESET)
        return 0;
    if (rc < 0)
        return rc;
    struct lm_yamux *s = st->s;
    st->reset = true;
    send_stream(s, st, T_WINDOW, F_RST, 0, NULL, 0);
    finish(s, st);
    return 0;
}

void
lm_yamux_stream_free(struct lm_yamux_stream *st)
{
    if (!st || st->released)
        return;
    struct lm_yamux *s = st->s;
    if (!s) {
        if (st->busy == 0)
            free(st); /* an orphan: the session is gone */
        else
            st->released = true;
        return;
    }
    st->released = true;
    if (st->in_table && !s->dead && !s->free_req) {
        if (!st->fin_sent && !st->fin_recv) {
            st->reset = true;
            send_stream(s, st, T_WINDOW, F_RST, 0, NULL, 0);
            unlink_id(s, st);
        } else if (!st->fin_sent) {
            st->fin_sent = true;
            send_stream(s, st, T_WINDOW, F_FIN, 0, NULL, 0);
            unlink_id(s, st);
        }
        /* else: our FIN is out, the peer's is due; it lingers for it. */
    }
    maybe_destroy(st);
}
