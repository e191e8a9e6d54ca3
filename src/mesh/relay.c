/* Relays (SPEC §6, PROTOCOL.md CIRCUIT_OPEN / CIRCUIT_OK): a node that cannot
 * be dialed keeps an outbound connection to a relay; a gateway opens a stream
 * to the relay naming it, the relay opens one to it and splices the two, and
 * the two ends run TLS (then yamux, HELLO, everything) inside: the relay only
 * ever sees ciphertext. The inner connection is an ordinary struct conn whose
 * bufferevent is a TLS filter over one end of a bufferevent pair; a carrier
 * moves bytes between the pair's other end and the yamux stream. */
#define LM_LOG_MODULE "mesh"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "log/log.h"
#include "mesh/mesh_internal.h"

#define CARRIER_OPEN_TIMEOUT_MS 10000

/* --- carrier: a yamux stream seen as a bufferevent ---------------------------------------- */

struct carrier {
    struct lm_mesh *m;
    struct lm_yamux_stream *st;
    struct bufferevent *near; /* our end of the pair; the TLS filter owns the other */
    struct conn *c;           /* the inner connection */
    struct lm_frame_reader rd; /* dialing: until CIRCUIT_OK */
    bool open;                /* CIRCUIT_OK seen (dialer) or sent (target) */
    struct peer *target;      /* dialing */
    /* The inner connection's bytes for its TLS filter, handed over once per
     * turn of the loop: a filter encrypts each write into a record of its
     * own at once, and one record per small yamux frame (an SSE event) cost
     * both ends a TLS record, a carrier frame and their syscalls each. */
    struct evbuffer *outq;
    struct event *flush_ev;
    bool flush_queued;
};

void
lm_mesh_carrier_free_(struct carrier *k)
{
    if (!k)
        return;
    if (k->near) {
        bufferevent_setcb(k->near, NULL, NULL, NULL, NULL);
        bufferevent_free(k->near);
    }
    if (k->st)
        lm_yamux_stream_free(k->st);
    lm_frame_reader_release(&k->rd);
    if (k->flush_ev)
        event_free(k->flush_ev);
    if (k->outq)
        evbuffer_free(k->outq);
    free(k);
}

static void
carrier_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct carrier *k = arg;
    k->flush_queued = false;
    if (k->c && k->c->bev && !k->c->dead)
        bufferevent_write_buffer(k->c->bev, k->outq); /* k may be gone after this */
    else
        evbuffer_drain(k->outq, evbuffer_get_length(k->outq));
}

void
lm_mesh_carrier_send_(struct carrier *k, const void *data, size_t n)
{
    evbuffer_add(k->outq, data, n);
    if (!k->flush_queued) {
        k->flush_queued = true;
        event_active(k->flush_ev, 0, 0);
    }
}

/* TLS bytes out: as much as the stream's window takes; the rest waits in
 * near's input until on_writable. */
static void
pump_out(struct carrier *k)
{
    struct evbuffer *in = bufferevent_get_input(k->near);
    size_t n;
    while (k->st && (n = evbuffer_get_length(in)) > 0) {
        size_t take = n < 65536 ? n : 65536;
        unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)take);
        ssize_t w = lm_yamux_stream_write(k->st, p, take);
        if (w <= 0) {
            if (w < 0 && k->c)
                lm_mesh_conn_close_(k->c, "relayed stream: %s", strerror((int)-w));
            return;
        }
        evbuffer_drain(in, (size_t)w);
    }
}

static void
near_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    pump_out(arg);
}

static void
carrier_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct carrier *k = arg;
    if (!k->open) { /* the dialer, waiting for CIRCUIT_OK */
        size_t used = 0;
        struct lm_frame f;
        int rc = lm_frame_reader_feed(&k->rd, data, n, &used, &f);
        if (rc == 0) {
            lm_yamux_stream_consume(st, n);
            return;
        }
        if (rc == 1 && f.type == LM_FRAME_CIRCUIT_OK) {
            k->open = true;
            lm_yamux_stream_consume(st, used);
            data = (const char *)data + used;
            n -= used;
            if (n == 0)
                return;
        } else {
            struct lm_frame_error e;
            char why[200] = "no CIRCUIT_OK";
            if (rc == 1 && f.type == LM_FRAME_ERROR && lm_frame_parse_error(&f, &e) == 0)
                lm_escape(why, sizeof(why), e.message, strlen(e.message));
            lm_yamux_stream_consume(st, n);
            lm_mesh_conn_close_(k->c, "relay refused the circuit: %s", why);
            return;
        }
    }
    /* Consumed at once: the inner yamux's own windows bound what can come. */
    bufferevent_write(k->near, data, n);
    lm_yamux_stream_consume(st, n);
}

static void
carrier_writable(struct lm_yamux_stream *st, void *arg)
{
    (void)st;
    pump_out(arg);
}

static void
carrier_gone(struct lm_yamux_stream *st, void *arg)
{
    (void)st;
    struct carrier *k = arg;
    if (k->c)
        lm_mesh_conn_close_(k->c, "the relay closed the circuit");
}

static void
carrier_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    (void)st;
    (void)err;
    struct carrier *k = arg;
    if (k->c)
        lm_mesh_conn_close_(k->c, "the circuit through the relay broke");
}

static const struct lm_yamux_stream_cbs carrier_cbs = {carrier_data, carrier_writable,
                                                       carrier_gone, carrier_reset};

/* The inner connection over st: TLS (client when dialing) on a pair whose
 * other end the carrier feeds. */
static struct conn *
carrier_conn(struct lm_mesh *m, struct lm_yamux_stream *st, struct conn *relay, bool dialing,
             const char *expect)
{
    struct bufferevent *pair[2];
    if (bufferevent_pair_new(m->base, 0, pair) != 0)
        return NULL;
    struct bufferevent *tls;
    if (lm_tls_bev_filter(&tls, m->tls, pair[0], !dialing, 0) != 0) {
        bufferevent_free(pair[0]);
        bufferevent_free(pair[1]);
        return NULL;
    }
    struct carrier *k = lm_xcalloc(1, sizeof(*k));
    k->m = m;
    k->st = st;
    k->near = pair[1];
    k->open = !dialing;
    lm_frame_reader_init(&k->rd);
    k->outq = evbuffer_new();
    /* Bulk: it runs once the events ready now were handled, with all they
     * wrote. Urgent would cost a turn of the loop (an epoll_wait over every
     * ready socket) per batch of bulk callbacks: at 512 streams that turned
     * into a spiral of polling. */
    k->flush_ev = event_new(m->base, -1, 0, carrier_flush, k);
    if (!k->outq || !k->flush_ev)
        abort(); /* out of memory, as in lm_xmalloc */
    event_priority_set(k->flush_ev, LM_PRIO_BULK);
    bufferevent_setcb(k->near, near_read, NULL, NULL, k);
    bufferevent_enable(k->near, EV_READ | EV_WRITE);
    lm_yamux_stream_set_cbs(st, &carrier_cbs, k);

    char addr[160];
    snprintf(addr, sizeof(addr), "via %.12s", relay->id);
    struct conn *c = lm_mesh_conn_new_(m, dialing, addr);
    snprintf(c->via, sizeof(c->via), "%s", relay->id);
    if (expect)
        snprintf(c->expect, sizeof(c->expect), "%s", expect);
    c->carrier = k;
    k->c = c;
    lm_mesh_conn_start_(c, tls);
    return c;
}

int
lm_mesh_circuit_dial_(struct lm_mesh *m, struct peer *p)
{
    for (unsigned i = 0; i < p->nrelays; i++) {
        struct peer *r = lm_mesh_peer_find_(m, p->relays[i]);
        if (!r || !r->conn || !lm_mesh_conn_up_(r->conn) || r->conn->via[0])
            continue;
        struct lm_yamux_stream *st;
        if (lm_yamux_open(r->conn->mux, &st) != 0)
            continue;
        json_t *j = json_pack("{s:s}", "target", p->id);
        lm_mesh_send_stream_frame_(st, LM_FRAME_CIRCUIT_OPEN, j);
        json_decref(j);
        struct conn *c = carrier_conn(m, st, r->conn, true, p->id);
        if (!c) {
            lm_yamux_stream_free(st);
            return -ENOMEM;
        }
        p->dialing = c;
        log_debug("dialing %.12s through relay %.12s", p->id, r->id);
        return 0;
    }
    return -ENETUNREACH;
}

/* --- splice: the relay's side ---------------------------------------------------------------- */

/* Two streams, bytes copied both ways. A side's bytes are consumed only once
 * the other side's window took them, so each direction holds at most one
 * window here, and a slow end slows the other. */
struct half {
    struct lm_yamux_stream *st;
    struct lm_buf q; /* bytes from this side not yet written to the other */
    size_t off;
    bool fin;
};

struct splice {
    struct lm_mesh *m;
    struct half a, b; /* a: the dialer's stream; b: the one to the target */
    bool open;        /* the target said CIRCUIT_OK */
    struct lm_frame_reader rd; /* b's CIRCUIT_OK */
    char from[LM_NODE_ID_LEN + 1], to[LM_NODE_ID_LEN + 1];
    uint64_t bytes;
    struct splice *next;
};

static void
splice_free(struct splice *s)
{
    for (struct splice **pp = &s->m->splices; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    if (s->a.st)
        lm_yamux_stream_free(s->a.st);
    if (s->b.st)
        lm_yamux_stream_free(s->b.st);
    lm_buf_release(&s->a.q);
    lm_buf_release(&s->b.q);
    lm_frame_reader_release(&s->rd);
    free(s);
}

static struct half *
other(struct splice *s, struct half *h)
{
    return h == &s->a ? &s->b : &s->a;
}

/* Moves what h holds into the other side's window. */
static void
flush(struct splice *s, struct half *h)
{
    struct half *o = other(s, h);
    if (!s->open || !o->st)
        return;
    while (h->off < h->q.len) {
        ssize_t w = lm_yamux_stream_write(o->st, h->q.data + h->off, h->q.len - h->off);
        if (w <= 0)
            break;
        h->off += (size_t)w;
        s->bytes += (size_t)w;
        if (h->st)
            lm_yamux_stream_consume(h->st, (size_t)w);
    }
    if (h->off == h->q.len) {
        lm_buf_reset(&h->q);
        h->off = 0;
        if (h->fin && o->st)
            lm_yamux_stream_close(o->st);
    }
}

static struct half *
half_of(struct splice *s, struct lm_yamux_stream *st)
{
    return st == s->a.st ? &s->a : &s->b;
}

static void
splice_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct splice *s = arg;
    struct half *h = half_of(s, st);
    if (h == &s->b && !s->open) {
        size_t used = 0;
        struct lm_frame f;
        int rc = lm_frame_reader_feed(&s->rd, data, n, &used, &f);
        if (rc == 0) {
            lm_yamux_stream_consume(st, n);
            return;
        }
        if (rc != 1 || f.type != LM_FRAME_CIRCUIT_OK) {
            log_info("circuit %.12s -> %.12s: the target refused it", s->from, s->to);
            splice_free(s);
            return;
        }
        lm_yamux_stream_consume(st, used);
        s->open = true;
        lm_mesh_send_stream_frame_(s->a.st, LM_FRAME_CIRCUIT_OK, NULL);
        flush(s, &s->a);
        data = (const char *)data + used;
        n -= used;
        if (n == 0)
            return;
    }
    /* Held until the other side takes it; not consumed before. */
    lm_buf_append(&h->q, data, n);
    flush(s, h);
}

static void
splice_writable(struct lm_yamux_stream *st, void *arg)
{
    struct splice *s = arg;
    flush(s, other(s, half_of(s, st)));
}

static void
splice_fin(struct lm_yamux_stream *st, void *arg)
{
    struct splice *s = arg;
    struct half *h = half_of(s, st);
    h->fin = true;
    flush(s, h);
    if (s->a.fin && s->b.fin && s->a.off == s->a.q.len && s->b.off == s->b.q.len)
        splice_free(s);
}

static void
splice_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    (void)st;
    (void)err;
    splice_free(arg); /* the other side is reset with it */
}

static const struct lm_yamux_stream_cbs splice_cbs = {splice_data, splice_writable, splice_fin,
                                                      splice_reset};

static void
refuse(struct lm_yamux_stream *st, const char *code, const char *msg)
{
    struct lm_buf b;
    lm_buf_init(&b, 4096);
    if (lm_frame_encode_error(&b, LM_FRAME_ERROR, code, msg, false, -1) == 0)
        lm_yamux_stream_write(st, b.data, b.len);
    lm_buf_release(&b);
    lm_yamux_stream_close(st);
    lm_yamux_stream_free(st);
}

void
lm_mesh_circuit_accept_(struct conn *c, struct lm_yamux_stream *st, json_t *open,
                        const uint8_t *rest, size_t nrest)
{
    struct lm_mesh *m = c->m;
    const char *target = json_string_value(json_object_get(open, "target"));
    if (!target) {
        refuse(st, "bad_request", "CIRCUIT_OPEN without a target");
        return;
    }
    if (strcmp(target, m->id->node_id) == 0) {
        /* We are the target: the dialer's TLS comes next, inside. */
        if (c->via[0]) {
            refuse(st, "bad_request", "no circuit inside a circuit");
            return;
        }
        lm_mesh_send_stream_frame_(st, LM_FRAME_CIRCUIT_OK, NULL);
        struct conn *in = carrier_conn(m, st, c, false, NULL);
        if (!in) {
            lm_yamux_stream_free(st);
            return;
        }
        if (nrest) {
            bufferevent_write(in->carrier->near, rest, nrest);
            lm_yamux_stream_consume(st, nrest);
        }
        return;
    }
    /* A relay, for a target connected to it directly. */
    struct peer *t = lm_mesh_peer_find_(m, target);
    if (!(m->cfg->node.roles & LM_ROLE_RELAY) || c->via[0]) {
        refuse(st, "unsupported_type", "this node is not a relay");
        return;
    }
    if (!t || !t->conn || !lm_mesh_conn_up_(t->conn) || t->conn->via[0]) {
        refuse(st, "model_not_available", "the target is not connected to this relay");
        return;
    }
    struct lm_yamux_stream *out;
    if (lm_yamux_open(t->conn->mux, &out) != 0) {
        refuse(st, "overloaded", "cannot open a stream to the target");
        return;
    }
    json_t *j = json_pack("{s:s, s:s}", "target", target, "from", c->id);
    lm_mesh_send_stream_frame_(out, LM_FRAME_CIRCUIT_OPEN, j);
    json_decref(j);
    struct splice *s = lm_xcalloc(1, sizeof(*s));
    s->m = m;
    s->a.st = st;
    s->b.st = out;
    lm_buf_init(&s->a.q, 2u * LM_YAMUX_MAX_WINDOW);
    lm_buf_init(&s->b.q, 2u * LM_YAMUX_MAX_WINDOW);
    lm_frame_reader_init(&s->rd);
    snprintf(s->from, sizeof(s->from), "%s", c->id);
    snprintf(s->to, sizeof(s->to), "%s", target);
    lm_yamux_stream_set_cbs(st, &splice_cbs, s);
    lm_yamux_stream_set_cbs(out, &splice_cbs, s);
    s->next = m->splices;
    m->splices = s;
    m->circuits_total++;
    if (nrest)
        lm_buf_append(&s->a.q, rest, nrest); /* consumed as the target takes it */
    log_info("relaying %.12s -> %.12s", c->id, target);
}

void
lm_mesh_relay_free_all_(struct lm_mesh *m)
{
    while (m->splices)
        splice_free(m->splices);
}

unsigned
lm_mesh_splices_(const struct lm_mesh *m)
{
    unsigned n = 0;
    for (const struct splice *s = m->splices; s; s = s->next)
        n++;
    return n;
}
