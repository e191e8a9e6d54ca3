/* Unit tests for src/yamux: two sessions wired back to back through in-memory
 * queues (open/accept, data both ways, windows and backpressure, FIN both
 * orders, RST, GoAway, ping and keepalive, max_streams, release and
 * re-entrancy rules), and one session fed hand-made frames for malformed
 * input, split in every way. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/util.h"
#include "yamux/yamux.h"

#define MAX_APPS 64

static uint64_t fake_now = 1000;

static uint64_t
clock_cb(void *arg)
{
    (void)arg;
    return fake_now;
}

/* One stream as the application sees it. */
struct app {
    struct end *end;
    struct lm_yamux_stream *st;
    uint8_t *rx;
    size_t rxlen, rxcap;
    size_t max_held;   /* most bytes delivered and not consumed at once */
    size_t unconsumed;
    bool auto_consume; /* consume at once in on_data */
    int fins, resets, reset_err, writables;
    /* re-entrancy probes, acted on in on_data */
    bool close_in_data, reset_in_data, free_in_data, free_session_in_data;
    struct lm_yamux_stream *write_other; /* written to from on_data */
    int feed_rc_in_cb;
    bool freed;
};

/* One side: a session, what it sent, and its applications' streams. */
struct end {
    struct lm_yamux *s;
    uint8_t *q;
    size_t qlen, qcap;
    int closes, close_err;
    char why[128];
    int accept_rc;
    bool accept_write; /* write from on_accept */
    bool free_in_close;
    struct app apps[MAX_APPS];
    int napps;
    int feed_rc;
};

static void
send_cb(const void *data, size_t n, void *arg)
{
    struct end *e = arg;
    if (e->qlen + n > e->qcap) {
        e->qcap = (e->qlen + n) * 2;
        e->q = lm_xrealloc(e->q, e->qcap);
    }
    memcpy(e->q + e->qlen, data, n);
    e->qlen += n;
}

static void
on_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct app *a = arg;
    assert_false(a->freed);
    assert_ptr_equal(st, a->st);
    if (a->rxlen + n > a->rxcap) {
        a->rxcap = (a->rxlen + n) * 2;
        a->rx = lm_xrealloc(a->rx, a->rxcap);
    }
    memcpy(a->rx + a->rxlen, data, n);
    a->rxlen += n;
    a->unconsumed += n;
    if (a->unconsumed > a->max_held)
        a->max_held = a->unconsumed;
    if (a->auto_consume) {
        assert_int_equal(lm_yamux_stream_consume(st, a->unconsumed), 0);
        a->unconsumed = 0;
    }
    a->feed_rc_in_cb = lm_yamux_feed(a->end->s, "x", 1);
    if (a->write_other)
        assert_int_equal(lm_yamux_stream_write(a->write_other, "ping", 4), 4);
    if (a->close_in_data)
        assert_int_equal(lm_yamux_stream_close(st), 0);
    if (a->reset_in_data)
        assert_int_equal(lm_yamux_stream_reset(st), 0);
    if (a->free_in_data) {
        a->freed = true;
        lm_yamux_stream_free(st);
    }
    if (a->free_session_in_data) {
        lm_yamux_free(a->end->s);
        a->end->s = NULL;
    }
}

static void
on_writable(struct lm_yamux_stream *st, void *arg)
{
    struct app *a = arg;
    (void)st;
    assert_false(a->freed);
    a->writables++;
}

static void
on_fin(struct lm_yamux_stream *st, void *arg)
{
    struct app *a = arg;
    (void)st;
    assert_false(a->freed);
    a->fins++;
}

static void
on_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    struct app *a = arg;
    (void)st;
    assert_false(a->freed);
    a->resets++;
    a->reset_err = err;
}

static const struct lm_yamux_stream_cbs app_cbs = {
    .on_data = on_data, .on_writable = on_writable, .on_fin = on_fin, .on_reset = on_reset,
};

static struct app *
app_new(struct end *e, struct lm_yamux_stream *st)
{
    assert_true(e->napps < MAX_APPS);
    struct app *a = &e->apps[e->napps++];
    memset(a, 0, sizeof(*a));
    a->end = e;
    a->st = st;
    a->auto_consume = true;
    lm_yamux_stream_set_cbs(st, &app_cbs, a);
    return a;
}

static int
on_accept(struct lm_yamux_stream *st, void *arg)
{
    struct end *e = arg;
    if (e->accept_rc < 0)
        return e->accept_rc;
    app_new(e, st);
    if (e->accept_write)
        assert_int_equal(lm_yamux_stream_write(st, "hi", 2), 2);
    return 0;
}

static void
on_close(int err, const char *why, void *arg)
{
    struct end *e = arg;
    e->closes++;
    e->close_err = err;
    snprintf(e->why, sizeof(e->why), "%s", why);
    if (e->free_in_close) {
        lm_yamux_free(e->s);
        e->s = NULL;
    }
}

static const struct lm_yamux_cbs end_cbs = {
    .send = send_cb, .on_accept = on_accept, .on_close = on_close, .now_ms = clock_cb,
};

static void
end_init(struct end *e, bool client, const struct lm_yamux_opts *o)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(lm_yamux_new(&e->s, client, &end_cbs, e, o), 0);
}

static void
end_fini(struct end *e)
{
    lm_yamux_free(e->s);
    for (int i = 0; i < e->napps; i++) {
        if (!e->apps[i].freed)
            lm_yamux_stream_free(e->apps[i].st);
        free(e->apps[i].rx);
    }
    free(e->q);
}

/* Moves what from sent to to, chunk bytes per feed (0: all at once). */
static void
move(struct end *from, struct end *to, size_t chunk)
{
    uint8_t *q = from->q;
    size_t n = from->qlen;
    from->q = NULL;
    from->qlen = from->qcap = 0;
    for (size_t off = 0; off < n && to->s;) {
        size_t k = chunk && chunk < n - off ? chunk : n - off;
        int rc = lm_yamux_feed(to->s, q + off, k);
        if (rc < 0) {
            to->feed_rc = rc;
            break;
        }
        off += k;
    }
    free(q);
}

static void
pump_chunked(struct end *a, struct end *b, size_t chunk)
{
    for (int i = 0; i < 10000 && (a->qlen || b->qlen); i++) {
        move(a, b, chunk);
        move(b, a, chunk);
    }
    assert_int_equal(a->qlen + b->qlen, 0);
}

static void
pump(struct end *a, struct end *b)
{
    pump_chunked(a, b, 0);
}

static struct app *
open_app(struct end *e)
{
    struct lm_yamux_stream *st;
    assert_int_equal(lm_yamux_open(e->s, &st), 0);
    return app_new(e, st);
}

static void
fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* Writes all of data, pumping when the window closes. */
static void
write_all(struct end *w, struct end *r, struct app *a, const uint8_t *data, size_t n)
{
    size_t off = 0;
    for (int guard = 0; off < n; guard++) {
        assert_true(guard < 100000);
        ssize_t k = lm_yamux_stream_write(a->st, data + off, n - off);
        assert_true(k >= 0);
        off += (size_t)k;
        if ((size_t)k < n)
            pump(w, r);
    }
}

static void
frame(uint8_t *out, uint8_t type, uint16_t flags, uint32_t id, uint32_t len)
{
    out[0] = 0;
    out[1] = type;
    out[2] = (uint8_t)(flags >> 8);
    out[3] = (uint8_t)flags;
    for (int i = 0; i < 4; i++) {
        out[4 + i] = (uint8_t)(id >> (24 - 8 * i));
        out[8 + i] = (uint8_t)(len >> (24 - 8 * i));
    }
}

static int
feed_frame(struct end *e, uint8_t type, uint16_t flags, uint32_t id, uint32_t len)
{
    uint8_t h[12];
    frame(h, type, flags, id, len);
    return lm_yamux_feed(e->s, h, sizeof(h));
}

/* The last frame e sent. */
static void
last_frame(const struct end *e, uint8_t *type, uint16_t *flags, uint32_t *id, uint32_t *len)
{
    assert_true(e->qlen >= 12);
    const uint8_t *h = e->q + e->qlen - 12;
    *type = h[1];
    *flags = (uint16_t)(h[2] << 8 | h[3]);
    *id = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
    *len = (uint32_t)h[8] << 24 | (uint32_t)h[9] << 16 | (uint32_t)h[10] << 8 | h[11];
}

/* --- back to back ------------------------------------------------------- */

static void
test_open_accept_data(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);

    struct app *ca = open_app(&c);
    assert_int_equal(lm_yamux_stream_id(ca->st), 1);
    struct app *cb = open_app(&c);
    assert_int_equal(lm_yamux_stream_id(cb->st), 3);
    assert_int_equal(lm_yamux_stream_write(ca->st, "hello", 5), 5);
    pump(&c, &s);
    assert_int_equal(s.napps, 2);
    struct app *sa = &s.apps[0];
    assert_int_equal(lm_yamux_stream_id(sa->st), 1);
    assert_int_equal(sa->rxlen, 5);
    assert_memory_equal(sa->rx, "hello", 5);
    assert_ptr_equal(lm_yamux_stream_get_arg(sa->st), sa);

    assert_int_equal(lm_yamux_stream_write(sa->st, "world!", 6), 6);
    pump(&c, &s);
    assert_int_equal(ca->rxlen, 6);
    assert_memory_equal(ca->rx, "world!", 6);

    /* The listener opens even ids. */
    struct app *so = open_app(&s);
    assert_int_equal(lm_yamux_stream_id(so->st), 2);
    assert_int_equal(lm_yamux_stream_write(so->st, "x", 1), 1);
    pump(&c, &s);
    assert_int_equal(c.napps, 3);
    assert_int_equal(lm_yamux_stream_id(c.apps[2].st), 2);
    assert_int_equal(c.apps[2].rxlen, 1);

    struct lm_yamux_stats st;
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.streams, 3);
    assert_int_equal(st.opened, 2);
    assert_int_equal(st.accepted, 1);
    assert_int_equal(lm_yamux_error(c.s), 0);
    end_fini(&c);
    end_fini(&s);
}

static void
test_window_backpressure(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);
    static uint8_t buf[1 << 20];
    fill(buf, sizeof(buf), 7);

    struct app *ca = open_app(&c);
    pump(&c, &s);
    struct app *sa = &s.apps[0];
    sa->auto_consume = false;

    size_t sent = 0;
    for (;;) {
        ssize_t k = lm_yamux_stream_write(ca->st, buf + sent, sizeof(buf) - sent);
        assert_true(k >= 0);
        if (k == 0)
            break;
        sent += (size_t)k;
        pump(&c, &s);
    }
    assert_int_equal(sent, LM_YAMUX_WINDOW);
    assert_int_equal(lm_yamux_stream_send_window(ca->st), 0);
    pump(&c, &s);
    assert_int_equal(sa->rxlen, LM_YAMUX_WINDOW);
    assert_int_equal(sa->max_held, LM_YAMUX_WINDOW);
    assert_int_equal(lm_yamux_stream_write(ca->st, buf, 10), 0);

    /* Consuming more than was delivered is refused. */
    assert_int_equal(lm_yamux_stream_consume(sa->st, LM_YAMUX_WINDOW + 1), -EINVAL);
    /* Below half the window nothing is announced... */
    assert_int_equal(lm_yamux_stream_consume(sa->st, LM_YAMUX_WINDOW / 2 - 1), 0);
    pump(&c, &s);
    assert_int_equal(lm_yamux_stream_send_window(ca->st), 0);
    assert_int_equal(ca->writables, 0);
    /* ... at half, a WindowUpdate reopens the writer. */
    assert_int_equal(lm_yamux_stream_consume(sa->st, 1), 0);
    pump(&c, &s);
    assert_int_equal(ca->writables, 1);
    assert_int_equal(lm_yamux_stream_send_window(ca->st), LM_YAMUX_WINDOW / 2);

    sa->auto_consume = true;
    assert_int_equal(lm_yamux_stream_consume(sa->st, LM_YAMUX_WINDOW / 2), 0);
    sa->unconsumed = 0;
    write_all(&c, &s, ca, buf + sent, sizeof(buf) - sent);
    pump(&c, &s);
    assert_int_equal(sa->rxlen, sizeof(buf));
    assert_memory_equal(sa->rx, buf, sizeof(buf));
    end_fini(&c);
    end_fini(&s);
}

static void
test_larger_window(void **state)
{
    (void)state;
    struct lm_yamux_opts o = {.window = 1u << 20};
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, &o);
    static uint8_t buf[2 << 20];
    fill(buf, sizeof(buf), 3);

    struct app *ca = open_app(&c);
    pump(&c, &s); /* the ACK announces the extra window */
    s.apps[0].auto_consume = false;
    c.qlen = 0;
    assert_int_equal(lm_yamux_stream_write(ca->st, buf, sizeof(buf)), 1u << 20);
    assert_int_equal(lm_yamux_stream_write(ca->st, buf, sizeof(buf)), 0);
    /* in frames of at most the protocol's window */
    size_t frames = 0;
    for (size_t off = 0; off < c.qlen; frames++) {
        const uint8_t *h = c.q + off;
        uint32_t len = (uint32_t)h[8] << 24 | (uint32_t)h[9] << 16 | (uint32_t)h[10] << 8 | h[11];
        assert_int_equal(h[1], 0);
        assert_true(len <= LM_YAMUX_WINDOW);
        off += 12 + len;
    }
    assert_int_equal(frames, 4);
    pump(&c, &s);
    assert_int_equal(s.apps[0].rxlen, 1u << 20);
    assert_int_equal(s.feed_rc, 0);

    /* The larger window is announced even when on_accept's own write
     * carried the ACK. */
    s.accept_write = true;
    struct app *cb = open_app(&c);
    pump(&c, &s);
    assert_int_equal(cb->rxlen, 2);
    assert_int_equal(lm_yamux_stream_send_window(cb->st), 1u << 20);
    end_fini(&c);
    end_fini(&s);
}

static void
test_fin_orders(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);
    struct lm_yamux_stats st;

    /* The opener closes first; the acceptor still answers. */
    struct app *ca = open_app(&c);
    assert_int_equal(lm_yamux_stream_write(ca->st, "request", 7), 7);
    assert_int_equal(lm_yamux_stream_close(ca->st), 0);
    assert_int_equal(lm_yamux_stream_close(ca->st), 0);
    assert_int_equal(lm_yamux_stream_write(ca->st, "x", 1), -EPIPE);
    pump(&c, &s);
    struct app *sa = &s.apps[0];
    assert_int_equal(sa->rxlen, 7);
    assert_int_equal(sa->fins, 1);
    assert_int_equal(lm_yamux_stream_write(sa->st, "answer", 6), 6);
    pump(&c, &s);
    assert_int_equal(ca->rxlen, 6);
    assert_int_equal(ca->fins, 0);
    assert_int_equal(lm_yamux_stream_close(sa->st), 0);
    pump(&c, &s);
    assert_int_equal(ca->fins, 1);
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.streams, 0);
    lm_yamux_get_stats(s.s, &st);
    assert_int_equal(st.streams, 0);
    assert_int_equal(lm_yamux_stream_write(sa->st, "x", 1), -EPIPE);
    assert_int_equal(ca->resets + sa->resets, 0);

    /* The acceptor closes first; the opener goes on writing. */
    struct app *cb = open_app(&c);
    pump(&c, &s);
    struct app *sb = &s.apps[1];
    assert_int_equal(lm_yamux_stream_close(sb->st), 0);
    pump(&c, &s);
    assert_int_equal(cb->fins, 1);
    assert_int_equal(lm_yamux_stream_write(cb->st, "more", 4), 4);
    pump(&c, &s);
    assert_int_equal(sb->rxlen, 4);
    assert_int_equal(lm_yamux_stream_close(cb->st), 0);
    pump(&c, &s);
    assert_int_equal(sb->fins, 1);
    lm_yamux_get_stats(s.s, &st);
    assert_int_equal(st.streams, 0);

    /* FIN carried by a Data frame, split anywhere, comes after its bytes. */
    uint8_t h[12 + 3];
    frame(h, 0, 1 | 4, 5, 3);
    memcpy(h + 12, "abc", 3);
    for (size_t i = 0; i < sizeof(h); i++)
        assert_int_equal(lm_yamux_feed(s.s, h + i, 1), 0);
    struct app *sc = &s.apps[2];
    assert_int_equal(sc->rxlen, 3);
    assert_int_equal(sc->fins, 1);
    end_fini(&c);
    end_fini(&s);
}

static void
test_rst(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);

    struct app *ca = open_app(&c);
    assert_int_equal(lm_yamux_stream_write(ca->st, "a", 1), 1);
    pump(&c, &s);
    struct app *sa = &s.apps[0];
    assert_int_equal(lm_yamux_stream_reset(ca->st), 0);
    assert_int_equal(lm_yamux_stream_reset(ca->st), 0);
    assert_int_equal(lm_yamux_stream_write(ca->st, "a", 1), -ECONNRESET);
    assert_int_equal(lm_yamux_stream_close(ca->st), -ECONNRESET);
    pump(&c, &s);
    assert_int_equal(ca->resets, 0); /* a local reset is not reported back */
    assert_int_equal(sa->resets, 1);
    assert_int_equal(sa->reset_err, -ECONNRESET);
    assert_int_equal(lm_yamux_stream_write(sa->st, "a", 1), -ECONNRESET);

    /* The acceptor resets from inside its own on_data; later bytes of the
     * same feed are dropped, the session lives on. */
    struct app *cb = open_app(&c);
    pump(&c, &s);
    struct app *sb = &s.apps[1];
    sb->reset_in_data = true;
    assert_int_equal(lm_yamux_stream_write(cb->st, "one", 3), 3);
    assert_int_equal(lm_yamux_stream_write(cb->st, "two", 3), 3);
    pump(&c, &s);
    assert_int_equal(sb->rxlen, 3);
    assert_int_equal(cb->resets, 1);
    assert_int_equal(lm_yamux_error(s.s), 0);
    assert_int_equal(lm_yamux_error(c.s), 0);
    struct lm_yamux_stats st;
    lm_yamux_get_stats(s.s, &st);
    assert_int_equal(st.streams, 0);
    end_fini(&c);
    end_fini(&s);
}

static void
test_goaway(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);
    struct lm_yamux_stream *st;

    struct app *ca = open_app(&c);
    pump(&c, &s);
    struct app *sa = &s.apps[0];
    assert_int_equal(lm_yamux_goaway(s.s, LM_YAMUX_GOAWAY_NORMAL), 0);
    assert_int_equal(lm_yamux_goaway(s.s, LM_YAMUX_GOAWAY_NORMAL), -EALREADY);
    assert_int_equal(lm_yamux_open(s.s, &st), -ESHUTDOWN);
    pump(&c, &s);
    assert_int_equal(lm_yamux_open(c.s, &st), -ECONNREFUSED);

    /* The open stream finishes normally. */
    assert_int_equal(lm_yamux_stream_write(ca->st, "last", 4), 4);
    assert_int_equal(lm_yamux_stream_close(ca->st), 0);
    pump(&c, &s);
    assert_int_equal(sa->rxlen, 4);
    assert_int_equal(lm_yamux_stream_write(sa->st, "bye", 3), 3);
    assert_int_equal(c.closes + s.closes, 0);
    assert_int_equal(lm_yamux_stream_close(sa->st), 0);
    pump(&c, &s);
    assert_int_equal(ca->rxlen, 3);
    /* The client learns it with the FIN; the server at its next tick. */
    assert_int_equal(c.closes, 1);
    assert_int_equal(c.close_err, 0);
    assert_int_equal(s.closes, 0);
    assert_int_equal(lm_yamux_tick(s.s, fake_now), -ESHUTDOWN);
    assert_int_equal(s.closes, 1);
    assert_int_equal(s.close_err, 0);
    assert_int_equal(ca->resets + sa->resets, 0);
    assert_int_equal(lm_yamux_error(c.s), -ESHUTDOWN);
    end_fini(&c);
    end_fini(&s);

    /* A SYN after our GoAway is refused with RST and counted. */
    end_init(&s, false, NULL);
    assert_int_equal(feed_frame(&s, 1, 1, 1, 0), 0);
    assert_int_equal(lm_yamux_goaway(s.s, 0), 0);
    assert_int_equal(feed_frame(&s, 1, 1, 3, 0), 0);
    uint8_t type;
    uint16_t flags;
    uint32_t id, len;
    last_frame(&s, &type, &flags, &id, &len);
    assert_int_equal(type, 1);
    assert_int_equal(flags, 8);
    assert_int_equal(id, 3);
    struct lm_yamux_stats stats;
    lm_yamux_get_stats(s.s, &stats);
    assert_int_equal(stats.refused, 1);
    assert_int_equal(stats.streams, 1);
    end_fini(&s);

    /* A GoAway with an error code ends the session at once. */
    end_init(&c, true, NULL);
    struct app *cc = open_app(&c);
    c.qlen = 0;
    assert_int_equal(feed_frame(&c, 3, 0, 0, 2), -EIO);
    assert_int_equal(c.closes, 1);
    assert_int_equal(cc->resets, 1);
    assert_int_equal(cc->reset_err, -EIO);
    assert_int_equal(c.qlen, 0); /* nothing answered to a peer that is leaving */
    end_fini(&c);
}

static void
test_ping_rtt(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);

    assert_int_equal(lm_yamux_ping_rtt_ms(c.s), -EAGAIN);
    assert_int_equal(lm_yamux_ping(c.s), 0);
    fake_now += 42;
    pump(&c, &s);
    assert_int_equal(lm_yamux_ping_rtt_ms(c.s), 42);
    assert_int_equal(lm_yamux_ping_rtt_ms(s.s), -EAGAIN);

    /* The server measures too, through the keepalive. */
    assert_int_equal(lm_yamux_tick(s.s, fake_now), 0);
    fake_now += 5;
    pump(&c, &s);
    assert_int_equal(lm_yamux_ping_rtt_ms(s.s), 5);

    /* A Ping answer echoes the opaque value. */
    c.qlen = 0;
    assert_int_equal(feed_frame(&c, 2, 1, 0, 0xdeadbeef), 0);
    uint8_t type;
    uint16_t flags;
    uint32_t id, len;
    last_frame(&c, &type, &flags, &id, &len);
    assert_int_equal(type, 2);
    assert_int_equal(flags, 2);
    assert_int_equal(len, 0xdeadbeef);
    c.qlen = 0;
    /* An answer to a Ping never sent is ignored. */
    assert_int_equal(feed_frame(&c, 2, 2, 0, 12345), 0);
    assert_int_equal(lm_yamux_ping_rtt_ms(c.s), 42);

    /* Explicit Pings are capped while unanswered. */
    int k = 0;
    while (lm_yamux_ping(c.s) == 0)
        k++;
    assert_int_equal(k, 8);
    assert_int_equal(lm_yamux_ping(c.s), -EBUSY);
    struct lm_yamux_stats st;
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.pings_sent, 9);
    assert_int_equal(st.pings_answered, 1);
    end_fini(&c);
    end_fini(&s);
}

static void
test_keepalive(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);

    /* Answered Pings keep it alive for a long time. */
    uint64_t t = fake_now;
    for (int i = 0; i < 200; i++, t += 1000) {
        assert_int_equal(lm_yamux_tick(c.s, t), 0);
        pump(&c, &s);
    }
    struct lm_yamux_stats st;
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.pings_sent, 200 / 15 + 1);
    assert_int_equal(st.pings_answered, st.pings_sent);

    /* A silent peer: three missed Pings end the session. */
    struct app *ca = open_app(&c);
    c.qlen = 0;
    uint64_t start = t;
    for (; lm_yamux_tick(c.s, t) == 0; t += 1000)
        assert_true(t - start < 100000);
    /* the first unanswered Ping goes within 15 s, the third is missed 45 s
     * after that one */
    assert_true(t - start >= 45000);
    assert_true(t - start <= 60000);
    assert_int_equal(c.closes, 1);
    assert_int_equal(c.close_err, -ETIMEDOUT);
    assert_non_null(strstr(c.why, "keepalive"));
    assert_int_equal(ca->resets, 1);
    assert_int_equal(ca->reset_err, -ETIMEDOUT);
    assert_int_equal(lm_yamux_tick(c.s, t + 1000), -ETIMEDOUT);
    assert_int_equal(c.closes, 1);
    assert_int_equal(lm_yamux_stream_write(ca->st, "x", 1), -ENOTCONN);
    end_fini(&c);
    end_fini(&s);
}

static void
test_max_streams(void **state)
{
    (void)state;
    struct lm_yamux_opts o = {.max_streams = 4};
    struct end c, s;
    end_init(&c, true, &o);
    end_init(&s, false, &o);
    struct lm_yamux_stream *st;

    struct app *ca[4];
    for (int i = 0; i < 4; i++)
        ca[i] = open_app(&c);
    assert_int_equal(lm_yamux_open(c.s, &st), -EAGAIN);
    pump(&c, &s);
    assert_int_equal(s.napps, 4);

    /* A peer that ignores our limit gets RST for the extra streams, and the
     * session goes on. */
    assert_int_equal(feed_frame(&s, 1, 1, 101, 0), 0);
    assert_int_equal(feed_frame(&s, 0, 1, 103, 0), 0);
    struct lm_yamux_stats stats;
    lm_yamux_get_stats(s.s, &stats);
    assert_int_equal(stats.refused, 2);
    assert_int_equal(stats.streams, 4);
    assert_int_equal(lm_yamux_error(s.s), 0);

    /* Once one ends there is room again. */
    s.qlen = 0;
    assert_int_equal(lm_yamux_stream_reset(ca[0]->st), 0);
    pump(&c, &s);
    struct app *cn = open_app(&c);
    assert_int_equal(lm_yamux_stream_write(cn->st, "ok", 2), 2);
    pump(&c, &s);
    assert_int_equal(s.napps, 5);
    assert_int_equal(s.apps[4].rxlen, 2);

    /* on_accept refuses. */
    s.accept_rc = -EPERM;
    assert_int_equal(lm_yamux_stream_reset(ca[1]->st), 0);
    struct app *cr = open_app(&c);
    pump(&c, &s);
    assert_int_equal(cr->resets, 1);
    lm_yamux_get_stats(s.s, &stats);
    assert_int_equal(stats.refused, 3);
    end_fini(&c);
    end_fini(&s);
}

/* --- malformed input ----------------------------------------------------- */

/* Feeds frame bytes to a fresh session (server unless client) and expects
 * death by protocol error with a GoAway(protocol error) sent. */
static void
expect_proto(bool client, const uint8_t *bytes, size_t n, const char *why_part)
{
    struct end e;
    end_init(&e, client, NULL);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = lm_yamux_feed(e.s, bytes + i, 1);
    assert_int_equal(rc, -EPROTO);
    assert_int_equal(e.closes, 1);
    assert_int_equal(e.close_err, -EPROTO);
    if (!strstr(e.why, why_part))
        fail_msg("why \"%s\" lacks \"%s\"", e.why, why_part);
    uint8_t type;
    uint16_t flags;
    uint32_t id, len;
    last_frame(&e, &type, &flags, &id, &len);
    assert_int_equal(type, 3);
    assert_int_equal(len, LM_YAMUX_GOAWAY_PROTO);
    assert_int_equal(lm_yamux_feed(e.s, bytes, n), -EPROTO);
    assert_int_equal(e.closes, 1);
    end_fini(&e);
}

static void
test_malformed(void **state)
{
    (void)state;
    uint8_t b[64];

    frame(b, 1, 1, 1, 0);
    b[0] = 1;
    expect_proto(false, b, 12, "version");
    frame(b, 4, 0, 0, 0);
    expect_proto(false, b, 12, "unknown frame type");
    frame(b, 0xff, 0, 0, 0);
    expect_proto(true, b, 12, "unknown frame type");
    /* parity: a server accepts odd ids only, a client even ones */
    frame(b, 1, 1, 2, 0);
    expect_proto(false, b, 12, "parity");
    frame(b, 1, 1, 3, 0);
    expect_proto(true, b, 12, "parity");
    frame(b, 1, 1, 0, 0);
    expect_proto(true, b, 12, "parity");
    /* the same id twice, open or ended */
    frame(b, 1, 1, 1, 0);
    frame(b + 12, 0, 1, 1, 0);
    expect_proto(false, b, 24, "already open");
    frame(b, 1, 1, 1, 0);
    frame(b + 12, 1, 8, 1, 0);
    frame(b + 24, 1, 1, 1, 0);
    expect_proto(false, b, 36, "already used");
    /* data beyond the window: at once, or over two frames */
    frame(b, 0, 1, 1, LM_YAMUX_WINDOW + 1);
    expect_proto(false, b, 12, "exceeds the window");
    frame(b, 0, 1, 1, 0xffffffffu);
    expect_proto(false, b, 12, "exceeds the window");
    /* window overflow, FIN twice, data after FIN */
    frame(b, 1, 1, 1, 0);
    frame(b + 12, 1, 0, 1, 0xffffffffu);
    expect_proto(false, b, 24, "overflows");
    frame(b, 1, 1 | 4, 1, 0);
    frame(b + 12, 1, 4, 1, 0);
    expect_proto(false, b, 24, "second FIN");
    frame(b, 1, 1 | 4, 1, 0);
    frame(b + 12, 0, 0, 1, 1);
    expect_proto(false, b, 25, "after its FIN");
}

/* Data over the window when the reader does not consume: the second frame
 * must be refused, the first one delivered whole. */
static int
accept_no_consume(struct lm_yamux_stream *st, void *arg)
{
    struct end *e = arg;
    struct app *a = app_new(e, st);
    a->auto_consume = false;
    return 0;
}

static void
test_window_exceeded(void **state)
{
    (void)state;
    static const struct lm_yamux_cbs cbs = {
        .send = send_cb, .on_accept = accept_no_consume, .on_close = on_close,
        .now_ms = clock_cb,
    };
    struct end e;
    memset(&e, 0, sizeof(e));
    assert_int_equal(lm_yamux_new(&e.s, false, &cbs, &e, NULL), 0);
    size_t n = 12 + 200000;
    uint8_t *big = lm_xcalloc(1, n);
    frame(big, 0, 1, 1, 200000);
    assert_int_equal(lm_yamux_feed(e.s, big, n), 0);
    assert_int_equal(e.apps[0].rxlen, 200000);
    frame(big, 0, 0, 1, LM_YAMUX_WINDOW - 200000 + 1);
    assert_int_equal(lm_yamux_feed(e.s, big, 12), -EPROTO);
    assert_non_null(strstr(e.why, "exceeds the window"));
    assert_int_equal(e.apps[0].resets, 1);
    assert_int_equal(e.apps[0].reset_err, -EPROTO);
    end_fini(&e);
    /* exactly the window is fine */
    memset(&e, 0, sizeof(e));
    assert_int_equal(lm_yamux_new(&e.s, false, &cbs, &e, NULL), 0);
    frame(big, 0, 1, 1, 200000);
    assert_int_equal(lm_yamux_feed(e.s, big, n), 0);
    frame(big, 0, 0, 1, LM_YAMUX_WINDOW - 200000);
    assert_int_equal(lm_yamux_feed(e.s, big, 12 + LM_YAMUX_WINDOW - 200000), 0);
    assert_int_equal(e.apps[0].rxlen, LM_YAMUX_WINDOW);
    end_fini(&e);
    free(big);
}

static void
test_truncated_and_lenient(void **state)
{
    (void)state;
    struct end e;
    end_init(&e, false, NULL);
    uint8_t b[12];

    /* A header dribbled in over 11 feeds is held, not acted on. */
    frame(b, 0, 1, 1, 2);
    for (int i = 0; i < 11; i++)
        assert_int_equal(lm_yamux_feed(e.s, b + i, 1), 0);
    assert_int_equal(e.napps, 0);
    assert_int_equal(lm_yamux_feed(e.s, b + 11, 1), 0);
    assert_int_equal(e.napps, 1);
    assert_int_equal(lm_yamux_feed(e.s, "h", 1), 0);
    assert_int_equal(lm_yamux_feed(e.s, "i", 1), 0);
    assert_int_equal(e.apps[0].rxlen, 2);
    assert_int_equal(lm_yamux_feed(e.s, b, 0), 0);

    /* Frames for streams that do not exist (any more) are dropped, their
     * payload skipped, as hashicorp does; unknown flag bits are ignored. */
    frame(b, 0, 0, 7, 3);
    assert_int_equal(lm_yamux_feed(e.s, b, 12), 0);
    assert_int_equal(lm_yamux_feed(e.s, "abc", 3), 0);
    assert_int_equal(feed_frame(&e, 1, 0, 99, 1000), 0);
    assert_int_equal(feed_frame(&e, 1, 0xfff0, 1, 10), 0);
    assert_int_equal(feed_frame(&e, 2, 0, 0, 0), 0);
    assert_int_equal(lm_yamux_error(e.s), 0);
    end_fini(&e);

    /* SYNs out of order (hashicorp can send them so) are fine. */
    end_init(&e, false, NULL);
    assert_int_equal(feed_frame(&e, 1, 1, 5, 0), 0);
    assert_int_equal(feed_frame(&e, 1, 1, 3, 0), 0);
    assert_int_equal(feed_frame(&e, 1, 1, 1, 0), 0);
    assert_int_equal(e.napps, 3);
    /* Far ahead: ids that fell out of the window count as used. */
    assert_int_equal(feed_frame(&e, 1, 1, 1 + 2 * 100000, 0), 0);
    assert_int_equal(feed_frame(&e, 1, 1, 7, 0), -EPROTO);
    end_fini(&e);
}

static void
test_bytewise(void **state)
{
    (void)state;
    static const size_t chunks[] = {1, 5, 11, 13, 4099};
    static uint8_t up[300000], down[300000];
    fill(up, sizeof(up), 1);
    fill(down, sizeof(down), 2);

    for (size_t k = 0; k < LM_ARRAY_LEN(chunks); k++) {
        struct end c, s;
        end_init(&c, true, NULL);
        end_init(&s, false, NULL);
        struct app *ca = open_app(&c), *cb = open_app(&c);
        size_t uo = 0, dof = 0;
        pump_chunked(&c, &s, chunks[k]);
        struct app *sa = &s.apps[0];
        for (int guard = 0; uo < sizeof(up) || dof < sizeof(down); guard++) {
            assert_true(guard < 10000);
            ssize_t w = lm_yamux_stream_write(ca->st, up + uo, sizeof(up) - uo);
            assert_true(w >= 0);
            uo += (size_t)w;
            w = lm_yamux_stream_write(sa->st, down + dof, sizeof(down) - dof);
            assert_true(w >= 0);
            dof += (size_t)w;
            assert_true(lm_yamux_stream_write(cb->st, "z", 1) >= 0);
            assert_int_equal(lm_yamux_ping(c.s) == 0 || lm_yamux_ping(c.s) == -EBUSY, 1);
            pump_chunked(&c, &s, chunks[k]);
        }
        assert_int_equal(lm_yamux_stream_close(ca->st), 0);
        assert_int_equal(lm_yamux_stream_close(sa->st), 0);
        pump_chunked(&c, &s, chunks[k]);
        assert_int_equal(sa->rxlen, sizeof(up));
        assert_memory_equal(sa->rx, up, sizeof(up));
        assert_int_equal(ca->rxlen, sizeof(down));
        assert_memory_equal(ca->rx, down, sizeof(down));
        assert_int_equal(ca->fins, 1);
        assert_int_equal(sa->fins, 1);
        assert_int_equal(c.feed_rc + s.feed_rc, 0);
        assert_true(lm_yamux_ping_rtt_ms(c.s) >= 0);
        end_fini(&c);
        end_fini(&s);
    }
}

/* --- ownership and re-entrancy ------------------------------------------- */

static void
test_release(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);
    struct lm_yamux_stats st;

    /* Released with nothing closed: a reset, the peer stops at once. */
    struct app *ca = open_app(&c);
    pump(&c, &s);
    ca->freed = true;
    lm_yamux_stream_free(ca->st);
    pump(&c, &s);
    assert_int_equal(s.apps[0].resets, 1);

    /* Released after the peer's FIN: our FIN goes out. */
    struct app *cb = open_app(&c);
    pump(&c, &s);
    struct app *sb = &s.apps[1];
    assert_int_equal(lm_yamux_stream_write(sb->st, "reply", 5), 5);
    assert_int_equal(lm_yamux_stream_close(sb->st), 0);
    pump(&c, &s);
    assert_int_equal(cb->fins, 1);
    cb->freed = true;
    lm_yamux_stream_free(cb->st);
    pump(&c, &s);
    assert_int_equal(sb->fins, 1);
    assert_int_equal(sb->resets, 0);

    /* Released after our own FIN: it lingers until the peer's FIN ... */
    struct app *cc = open_app(&c);
    pump(&c, &s);
    struct app *sc = &s.apps[2];
    assert_int_equal(lm_yamux_stream_close(cc->st), 0);
    cc->freed = true;
    lm_yamux_stream_free(cc->st);
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.streams, 1);
    pump(&c, &s);
    assert_int_equal(lm_yamux_stream_close(sc->st), 0);
    pump(&c, &s);
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.streams, 0);
    assert_int_equal(sc->resets, 0);

    /* ... or until data arrives that nobody will read: reset. */
    struct app *cd = open_app(&c);
    pump(&c, &s);
    struct app *sd = &s.apps[3];
    assert_int_equal(lm_yamux_stream_close(cd->st), 0);
    cd->freed = true;
    lm_yamux_stream_free(cd->st);
    assert_int_equal(lm_yamux_stream_write(sd->st, "late", 4), 4);
    pump(&c, &s);
    assert_int_equal(sd->resets, 1);
    lm_yamux_get_stats(c.s, &st);
    assert_int_equal(st.streams, 0);
    lm_yamux_stream_free(NULL);
    end_fini(&c);
    end_fini(&s);
}

static void
test_reentrancy(void **state)
{
    (void)state;
    struct end c, s;
    end_init(&c, true, NULL);
    end_init(&s, false, NULL);

    /* From on_data: feed is refused, another stream is written, the stream
     * is closed, then released. */
    struct app *ca = open_app(&c), *cb = open_app(&c);
    pump(&c, &s);
    struct app *sa = &s.apps[0], *sb = &s.apps[1];
    sa->write_other = sb->st;
    sa->close_in_data = true;
    assert_int_equal(lm_yamux_stream_write(ca->st, "go", 2), 2);
    pump(&c, &s);
    assert_int_equal(sa->feed_rc_in_cb, -EBUSY);
    assert_int_equal(cb->rxlen, 4);
    assert_int_equal(ca->fins, 1);
    sa->write_other = NULL;
    sa->close_in_data = false;
    sa->free_in_data = true;
    assert_int_equal(lm_yamux_stream_write(ca->st, "a", 1), 1);
    assert_int_equal(lm_yamux_stream_write(ca->st, "b", 1), 1);
    pump(&c, &s);
    /* "b" reached the released (lingering) stream: the writer is reset. */
    assert_int_equal(sa->rxlen, 3);
    assert_int_equal(ca->resets, 1);
    assert_int_equal(lm_yamux_stream_close(ca->st), -ECONNRESET);
    struct lm_yamux_stats st;
    lm_yamux_get_stats(s.s, &st);
    assert_int_equal(st.streams, 1);

    /* Freeing the session from on_data: everything else gets on_reset, the
     * rest of the input is ignored, memory goes when feed returns. */
    struct app *cc = open_app(&c);
    pump(&c, &s);
    struct app *sc = &s.apps[2];
    sc->free_session_in_data = true;
    assert_int_equal(lm_yamux_stream_write(cc->st, "x", 1), 1);
    assert_int_equal(lm_yamux_stream_write(cb->st, "y", 1), 1);
    pump(&c, &s);
    assert_null(s.s);
    assert_int_equal(sb->resets, 1);
    assert_int_equal(sb->reset_err, -ECONNABORTED);
    assert_int_equal(sc->resets, 1);
    assert_int_equal(sb->rxlen, 0);
    assert_int_equal(s.closes, 0);
    /* orphans: every call fails, free works */
    assert_int_equal(lm_yamux_stream_write(sb->st, "x", 1), -ENOTCONN);
    assert_int_equal(lm_yamux_stream_close(sb->st), -ENOTCONN);
    assert_int_equal(lm_yamux_stream_reset(sb->st), -ENOTCONN);
    end_fini(&c);
    end_fini(&s);

    /* Freeing the session from on_close. */
    end_init(&c, true, NULL);
    c.free_in_close = true;
    struct app *cx = open_app(&c);
    uint8_t b[12];
    frame(b, 9, 0, 0, 0);
    assert_int_equal(lm_yamux_feed(c.s, b, 12), -EPROTO);
    assert_null(c.s);
    assert_int_equal(cx->resets, 1);
    end_fini(&c);

    /* lm_yamux_free with open streams outside any callback. */
    end_init(&c, true, NULL);
    struct app *cy = open_app(&c);
    lm_yamux_free(c.s);
    c.s = NULL;
    assert_int_equal(cy->resets, 1);
    assert_int_equal(cy->reset_err, -ECONNABORTED);
    end_fini(&c);
    lm_yamux_free(NULL);
}

static void
test_bad_opts(void **state)
{
    (void)state;
    struct lm_yamux *s;
    struct lm_yamux_opts o = {.window = 1000};
    assert_int_equal(lm_yamux_new(&s, true, &end_cbs, NULL, &o), -EINVAL);
    o.window = LM_YAMUX_MAX_WINDOW + 1;
    assert_int_equal(lm_yamux_new(&s, true, &end_cbs, NULL, &o), -EINVAL);
    o = (struct lm_yamux_opts){.max_missed_pings = 9};
    assert_int_equal(lm_yamux_new(&s, true, &end_cbs, NULL, &o), -EINVAL);
    struct lm_yamux_cbs nosend = {0};
    assert_int_equal(lm_yamux_new(&s, true, &nosend, NULL, NULL), -EINVAL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_accept_data),
        cmocka_unit_test(test_window_backpressure),
        cmocka_unit_test(test_larger_window),
        cmocka_unit_test(test_fin_orders),
        cmocka_unit_test(test_rst),
        cmocka_unit_test(test_goaway),
        cmocka_unit_test(test_ping_rtt),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_max_streams),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_window_exceeded),
        cmocka_unit_test(test_truncated_and_lenient),
        cmocka_unit_test(test_bytewise),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_reentrancy),
        cmocka_unit_test(test_bad_opts),
    };
    return cmocka_run_group_tests_name("yamux", tests, NULL, NULL);
}
