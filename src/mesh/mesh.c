/* The mesh: connections, HELLO, trust at the door, gossip. See docs/mesh.md. */
#define LM_LOG_MODULE "mesh"

#include "mesh/mesh.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/listener.h>
#include <sodium.h>

#include "log/log.h"
#include "mesh/mesh_internal.h"

static void send_hello(struct conn *c);
static void publish_local(struct lm_mesh *m, bool force);

/* --- peers ------------------------------------------------------------------------------ */

struct peer *
lm_mesh_peer_find_(struct lm_mesh *m, const char *id)
{
    for (struct peer *p = m->peers; p; p = p->next)
        if (strcmp(p->id, id) == 0)
            return p;
    return NULL;
}

static struct peer *
peer_get(struct lm_mesh *m, const char *id)
{
    struct peer *p = lm_mesh_peer_find_(m, id);
    if (p || m->npeers >= PEERS_MAX || strcmp(id, m->id->node_id) == 0)
        return p;
    p = lm_xcalloc(1, sizeof(*p));
    snprintf(p->id, sizeof(p->id), "%s", id);
    p->next = m->peers;
    m->peers = p;
    m->npeers++;
    return p;
}

/* A peer's name, from its HELLO or its `peer` record. A new name for a
 * known peer is logged once, when this node learns it (bench/gossip.sh
 * times a record's spread by these lines). */
static void
peer_set_name(struct peer *p, const char *name)
{
    char nb[sizeof(p->name)];
    snprintf(nb, sizeof(nb), "%s", name);
    if (strcmp(p->name, nb) == 0)
        return;
    if (p->name[0]) {
        char was[4 * sizeof(p->name)], now[4 * sizeof(p->name)];
        lm_escape(was, sizeof(was), p->name, strlen(p->name));
        lm_escape(now, sizeof(now), nb, strlen(nb));
        log_info("peer %.12s is now named %s (was %s)", p->id, now, was);
    }
    memcpy(p->name, nb, sizeof(nb));
}

static void
peer_add_addr(struct peer *p, const char *addr)
{
    if (!addr || !*addr || strlen(addr) >= sizeof(p->addrs[0]))
        return;
    for (unsigned i = 0; i < p->naddrs; i++)
        if (strcmp(p->addrs[i], addr) == 0)
            return;
    if (p->naddrs < ADDRS_MAX)
        snprintf(p->addrs[p->naddrs++], sizeof(p->addrs[0]), "%s", addr);
}

static void
peer_set_addrs(struct peer *p, json_t *addrs)
{
    if (!json_is_array(addrs))
        return;
    p->naddrs = 0;
    size_t i;
    json_t *a;
    json_array_foreach(addrs, i, a) {
        if (json_is_string(a))
            peer_add_addr(p, json_string_value(a));
    }
}

int
lm_mesh_trust_(struct lm_mesh *m, const char *id, struct lm_trust_verdict *v)
{
    return lm_trust_check(&m->cfg->mesh, id, lm_trust_vouches_lookup, m->vouches, v);
}

static bool
allow_origin(void *arg, const char *origin)
{
    struct lm_mesh *m = arg;
    struct lm_trust_verdict v;
    return strcmp(origin, m->id->node_id) == 0 || lm_mesh_trust_(m, origin, &v) == 0;
}

/* --- connections ------------------------------------------------------------------------ */

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    struct lm_mesh *m = c->m;
    if (c->bev) { /* still lingering: shutting down */
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    for (struct conn **pp = &m->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    lm_frame_reader_release(&c->rd);
    lm_buf_release(&c->ctlq);
    event_free(c->reap);
    free(c);
}

struct conn *
lm_mesh_conn_new_(struct lm_mesh *m, bool dialed, const char *addr)
{
    struct conn *c = lm_xcalloc(1, sizeof(*c));
    c->m = m;
    c->dialed = dialed;
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    lm_frame_reader_init(&c->rd);
    lm_buf_init(&c->ctlq, CTL_QUEUE_CAP);
    c->started_ms = lm_now_ms();
    c->tokens = FRAME_BURST;
    c->tokens_ms = c->started_ms;
    c->reap = event_new(m->base, -1, 0, reap_cb, c);
    if (!c->reap)
        abort();
    c->next = m->conns;
    m->conns = c;
    return c;
}

const char *
lm_mesh_who_(const struct conn *c)
{
    static char b[200];
    if (c->id[0])
        snprintf(b, sizeof(b), "peer %.12s (%s)", c->id, c->addr);
    else
        snprintf(b, sizeof(b), "%s", c->addr);
    return b;
}

static void
dial_failed(struct lm_mesh *m, struct peer *p)
{
    p->fails++;
    p->next_dial_ms = lm_now_ms() + lm_peerstore_backoff_ms(p->fails, BACKOFF_BASE_MS,
                                                            BACKOFF_MAX_MS, randombytes_random());
    if (m->store)
        lm_peerstore_mark_fail(m->store, p->id, (int64_t)lm_wall_ms());
}

/* A closed connection's socket, once its last bytes have gone out. */
static void
linger_end(struct conn *c)
{
    if (c->bev) {
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    event_active(c->reap, 0, 0);
}

static void
linger_written(struct bufferevent *bev, void *arg)
{
    /* libevent may call this before anything went out (a write callback
     * already due for earlier bytes): only an empty buffer is the end. */
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        linger_end(arg);
}

static void
linger_event(struct bufferevent *bev, short what, void *arg)
{
    char why[300] = "timed out";
    if (!(what & BEV_EVENT_TIMEOUT))
        lm_tls_describe(NULL, bev, why, sizeof(why)); /* also clears OpenSSL's errors */
    log_debug("%s: its last bytes were not sent: %s", lm_mesh_who_(arg), why);
    linger_end(arg);
}

void
lm_mesh_conn_close_(struct conn *c, const char *fmt, ...)
{
    if (c->dead)
        return;
    c->dead = true;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (c->hello_got)
        log_info("%s: disconnected: %s", lm_mesh_who_(c), why);
    else
        log_warn("%s: %s", lm_mesh_who_(c), why);

    struct peer *p = c->peer;
    if (p) {
        if (p->conn == c)
            p->conn = NULL;
        if (p->dialing == c)
            p->dialing = NULL;
        if (c->dialed && !c->hello_got)
            dial_failed(c->m, p);
        else if (c->hello_got) /* it was up: try again soon, not at once */
            p->next_dial_ms = lm_now_ms() + BACKOFF_BASE_MS;
    } else if (c->dialed && c->expect[0]) {
        struct peer *q = lm_mesh_peer_find_(c->m, c->expect);
        if (q) {
            if (q->dialing == c)
                q->dialing = NULL;
            dial_failed(c->m, q);
        }
    }
    if (c->ctl) {
        lm_yamux_stream_free(c->ctl);
        c->ctl = NULL;
    }
    lm_yamux_free(c->mux);
    c->mux = NULL;
    size_t queued = c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
    if (queued > 0 && queued <= LINGER_MAX && !c->carrier) {
        /* The ERROR that says why (frame_too_large, the last strike) is
         * queued: let it out before the socket goes, reading nothing more. */
        struct timeval tv = {LINGER_MS / 1000, (LINGER_MS % 1000) * 1000};
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
        bufferevent_set_timeouts(c->bev, NULL, &tv);
        bufferevent_setcb(c->bev, NULL, linger_written, linger_event, c);
        return; /* reaped by linger_end */
    }
    if (c->bev) {
        bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    lm_mesh_carrier_free_(c->carrier); /* after the TLS filter over it */
    c->carrier = NULL;
    event_active(c->reap, 0, 0);
}

bool
lm_mesh_conn_up_(const struct conn *c)
{
    return !c->dead && c->hello_got && c->hello_sent;
}

/* Bytes for the peer from yamux: into TLS. */
static void
mux_send(const void *data, size_t n, void *arg)
{
    struct conn *c = arg;
    if (c->dead || !c->bev)
        return;
    c->bytes_out += n;
    if (c->carrier)
        lm_mesh_carrier_send_(c->carrier, data, n);
    else
        bufferevent_write(c->bev, data, n);
}

static void
flush_ctl(struct conn *c)
{
    while (!c->dead && c->ctl && c->ctlq_off < c->ctlq.len) {
        ssize_t k = lm_yamux_stream_write(c->ctl, c->ctlq.data + c->ctlq_off,
                                          c->ctlq.len - c->ctlq_off);
        if (k < 0) {
            lm_mesh_conn_close_(c, "control stream: %s", strerror((int)-k));
            return;
        }
        if (k == 0)
            break;
        c->ctlq_off += (size_t)k;
    }
    if (c->ctlq_off == c->ctlq.len) {
        lm_buf_reset(&c->ctlq);
        c->ctlq_off = 0;
    }
    if (!c->dead && c->bev && evbuffer_get_length(bufferevent_get_output(c->bev)) > OUT_CAP)
        lm_mesh_conn_close_(c, "not reading: over %u MiB queued for it", OUT_CAP >> 20);
}

/* One whole frame (len..sig) onto the control stream, in order. */
static void
send_raw(struct conn *c, const void *frame, size_t n)
{
    if (c->dead || !c->ctl)
        return;
    if (c->ctlq_off > 0 && c->ctlq_off == c->ctlq.len) {
        lm_buf_reset(&c->ctlq);
        c->ctlq_off = 0;
    }
    if (lm_buf_append(&c->ctlq, frame, n) != 0) {
        lm_mesh_conn_close_(c, "not reading: control queue over %u MiB", CTL_QUEUE_CAP >> 20);
        return;
    }
    flush_ctl(c);
}

static void
send_frame(struct conn *c, uint8_t type, const void *payload, size_t n, bool sign)
{
    struct lm_buf b;
    lm_buf_init(&b, LM_FRAME_MAX_REQUEST + 16);
    if (lm_frame_encode(&b, type, 0, payload, n, sign ? c->m->id : NULL) == 0)
        send_raw(c, b.data, b.len);
    lm_buf_release(&b);
}

static void
send_json(struct conn *c, uint8_t type, json_t *j, bool sign)
{
    char *s = json_dumps(j, JSON_COMPACT);
    if (s)
        send_frame(c, type, s, strlen(s), sign);
    free(s);
}

static void
send_error(struct conn *c, const char *code, const char *msg)
{
    struct lm_buf b;
    lm_buf_init(&b, 4096);
    if (lm_frame_encode_error(&b, LM_FRAME_ERROR, code, msg, false, -1) == 0)
        send_raw(c, b.data, b.len);
    lm_buf_release(&b);
}

/* A small frame straight onto a fresh stream (its window is far larger). */
void
lm_mesh_send_stream_frame_(struct lm_yamux_stream *st, uint8_t type, json_t *payload)
{
    struct lm_buf b;
    lm_buf_init(&b, 4096);
    json_t *empty = payload ? NULL : json_object();
    if (lm_frame_encode_json(&b, type, payload ? payload : empty, NULL) == 0)
        lm_yamux_stream_write(st, b.data, b.len);
    json_decref(empty);
    lm_buf_release(&b);
}

/* A stored record as its GOSSIP_RECORD frame, byte for byte as signed, into
 * b (initialized here; the caller releases it). 0 or -ENOMEM. */
static int
record_frame(struct lm_buf *b, const struct lm_gossip_record *r)
{
    size_t len = 2 + r->payload_len + LM_IDENTITY_SIG_BYTES;
    uint8_t head[6] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                       (uint8_t)len, LM_FRAME_GOSSIP_RECORD, LM_FRAME_SIGNED};
    lm_buf_init(b, len + 4);
    if (lm_buf_append(b, head, sizeof(head)) == 0 &&
        lm_buf_append(b, r->payload, r->payload_len) == 0 &&
        lm_buf_append(b, r->sig, sizeof(r->sig)) == 0)
        return 0;
    return -ENOMEM;
}

static void
send_record(void *arg, const struct lm_gossip_record *r)
{
    struct lm_buf b;
    if (record_frame(&b, r) == 0)
        send_raw(arg, b.data, b.len);
    lm_buf_release(&b);
}

static unsigned
up_conns(struct lm_mesh *m, struct conn **out, unsigned cap, const struct conn *except)
{
    unsigned n = 0;
    for (struct conn *c = m->conns; c; c = c->next)
        if (lm_mesh_conn_up_(c) && c != except && n < cap)
            out[n++] = c;
    return n;
}

/* How many peers a new record is pushed to, of k connected: FANOUT + ln k
 * rounded up, at most k (all of up to 5, 6 of 8..20, 8 of 55..148). When
 * every node that gets a record first forwards it to ln n + c random peers,
 * it reaches all n nodes with probability about exp(-e^-c) (Kermarrec,
 * Massoulie, Ganesh, 2003): c = 3 gives ~95%, and the rest get it from the
 * next digests. A fixed fanout of 3 left ~5% of a 100-node mesh waiting for
 * anti-entropy (bench/gossip.sh). k stands in for n: with max_peers below
 * the mesh's size the guarantee is weaker. */
static unsigned
fanout(unsigned k)
{
    static const unsigned e_pow[] = {2, 3, 8, 21, 55, 149, 404, 1097, 2981}; /* k > e^i */
    unsigned f = FANOUT;
    for (size_t i = 0; i < LM_ARRAY_LEN(e_pow) && k >= e_pow[i]; i++)
        f++;
    return f < k ? f : k;
}

/* Sends raw frame bytes to fanout(k) random connected peers other than except. */
static void
push_fanout(struct lm_mesh *m, const void *frame, size_t n, const struct conn *except)
{
    struct conn *all[256];
    unsigned k = up_conns(m, all, 256, except), f = fanout(k);
    for (unsigned i = 0; i < f; i++) {
        unsigned j = i + randombytes_uniform(k - i);
        struct conn *t = all[j];
        all[j] = all[i];
        all[i] = t;
        send_raw(t, frame, n);
    }
}

static void
push_record(struct lm_mesh *m, const struct lm_gossip_record *r, const struct conn *except)
{
    struct lm_buf b;
    if (record_frame(&b, r) == 0)
        push_fanout(m, b.data, b.len, except);
    lm_buf_release(&b);
}

static void
send_digest(struct conn *c)
{
    struct lm_buf b;
    lm_buf_init(&b, LM_GOSSIP_SYNC_MAX);
    if (lm_gossip_digest(c->m->gossip, lm_wall_ms(), c->m->digest_cursor, &b) == 0)
        send_frame(c, LM_FRAME_GOSSIP_DIGEST, b.data, b.len, false);
    lm_buf_release(&b);
}

static void
store_peer(struct lm_mesh *m, const struct peer *p, enum lm_peer_source src)
{
    if (!m->store)
        return;
    const char *addrs[ADDRS_MAX];
    for (unsigned i = 0; i < p->naddrs; i++)
        addrs[i] = p->addrs[i];
    lm_peerstore_upsert(m->store, p->id, p->name[0] ? p->name : NULL, addrs, p->naddrs, src,
                        (int64_t)lm_wall_ms());
}

/* --- what records mean ------------------------------------------------------------------ */

static void
learn_record(struct lm_mesh *m, const struct lm_gossip_record *r)
{
    if (strcmp(r->origin, m->id->node_id) == 0)
        return;
    if (r->kind_id == LM_GOSSIP_KIND_VOUCH) {
        json_t *peers = r->withdrawn ? NULL : json_object_get(r->body, "peers");
        const char *ids[LM_TRUST_MAX_VOUCH_PEERS];
        size_t n = 0, i;
        json_t *v;
        json_array_foreach(peers, i, v) {
            if (json_is_string(v) && n < LM_TRUST_MAX_VOUCH_PEERS)
                ids[n++] = json_string_value(v);
        }
        if (r->withdrawn)
            lm_trust_vouches_remove(m->vouches, r->origin);
        else if (lm_trust_vouches_set(m->vouches, r->origin, ids, n) != 0)
            log_warn("vouch record of %.12s ignored: malformed or too large", r->origin);
        return;
    }
    if (r->kind_id != LM_GOSSIP_KIND_PEER || r->withdrawn)
        return;
    struct lm_trust_verdict v;
    if (lm_mesh_trust_(m, r->origin, &v) != 0)
        return;
    struct peer *p = peer_get(m, r->origin);
    if (!p)
        return;
    json_t *name = json_object_get(r->body, "name");
    if (json_is_string(name))
        peer_set_name(p, json_string_value(name));
    json_t *roles = json_object_get(r->body, "roles");
    if (json_is_array(roles)) {
        json_decref(p->roles);
        p->roles = json_deep_copy(roles);
    }
    peer_set_addrs(p, json_object_get(r->body, "addrs"));
    p->nrelays = 0;
    size_t i;
    json_t *rl;
    json_array_foreach(json_object_get(r->body, "relays"), i, rl) {
        const char *id = json_string_value(rl);
        if (id && strlen(id) == LM_NODE_ID_LEN && p->nrelays < LM_ARRAY_LEN(p->relays))
            snprintf(p->relays[p->nrelays++], sizeof(p->relays[0]), "%s", id);
    }
    store_peer(m, p, LM_PEER_GOSSIP);
}

/* --- frames on the control stream ------------------------------------------------------- */

static void
strike(struct conn *c, enum rej why, const char *fmt, ...) LM_PRINTF(3, 4);
static void misbehaved(struct conn *c, const char *fmt, ...) LM_PRINTF(2, 3);

static void
strike(struct conn *c, enum rej why, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->m->rejected[why]++;
    c->strikes++;
    log_warn("%s: rejected: %s", lm_mesh_who_(c), msg);
    send_error(c, rej_names[why], msg);
    if (c->strikes >= STRIKES_MAX)
        misbehaved(c, "%u rejected frames", c->strikes);
}

/* Drops c and keeps its peer out for a while, doubling with each offence
 * (BAN_BASE_MS .. BAN_MAX_MS), so that a peer that floods or sends garbage
 * cannot come straight back and do it again. */
static void
misbehaved(struct conn *c, const char *fmt, ...)
{
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    struct peer *p = c->peer;
    if (p) {
        p->offences++;
        uint64_t ms = BAN_BASE_MS << (p->offences < 8 ? p->offences - 1 : 7);
        p->banned_until_ms = lm_now_ms() + (ms < BAN_MAX_MS ? ms : BAN_MAX_MS);
        p->next_dial_ms = p->banned_until_ms;
        lm_mesh_conn_close_(c, "%s: dropped, refused for %llu s", why,
                            (unsigned long long)((p->banned_until_ms - lm_now_ms()) / 1000));
    } else {
        lm_mesh_conn_close_(c, "%s: dropped", why);
    }
}

static enum rej
rej_of_problem(const struct lm_frame_problem *p)
{
    if (strcmp(p->code, LM_FRAME_E_BAD_SIGNATURE) == 0)
        return REJ_SIGNATURE;
    if (strcmp(p->code, LM_FRAME_E_STALE) == 0)
        return REJ_STALE;
    if (strcmp(p->code, LM_FRAME_E_REPLAYED) == 0)
        return REJ_REPLAY;
    return REJ_MALFORMED;
}

static void
on_hello(struct conn *c, const struct lm_frame *f)
{
    json_t *j = NULL;
    struct lm_frame_problem why;
    if (c->hello_got) {
        strike(c, REJ_MALFORMED, "a second HELLO");
        return;
    }
    if (lm_frame_check(f, c->m->replay, lm_wall_ms(), 0, &j, &why) != 0) {
        strike(c, rej_of_problem(&why), "HELLO: %s", why.message);
        lm_mesh_conn_close_(c, "no valid HELLO");
        return;
    }
    const char *from = json_string_value(json_object_get(j, "from"));
    if (!from || strcmp(from, c->id) != 0) {
        c->m->rejected[REJ_FORGED]++;
        lm_mesh_conn_close_(c, "HELLO signed as %.12s, but the TLS key is %.12s", from ? from : "?",
                   c->id);
        json_decref(j);
        return;
    }
    struct peer *p = c->peer;
    json_t *name = json_object_get(j, "name");
    if (json_is_string(name))
        peer_set_name(p, json_string_value(name));
    json_t *roles = json_object_get(j, "roles");
    if (json_is_array(roles)) {
        json_decref(p->roles);
        p->roles = json_deep_copy(roles);
    }
    peer_set_addrs(p, json_object_get(j, "addrs"));
    if (c->dialed && !c->via[0])
        peer_add_addr(p, c->addr);
    json_decref(j);
    c->hello_got = true;
    c->up_ms = lm_now_ms();
    p->fails = 0;
    p->last_seen_ms = lm_wall_ms();
    if (p->dialing == c)
        p->dialing = NULL;
    store_peer(c->m, p, c->dialed ? LM_PEER_GOSSIP : LM_PEER_INBOUND);
    if (c->m->store)
        lm_peerstore_mark_ok(c->m->store, p->id, (int64_t)p->last_seen_ms);
    log_info("%s: connected (%s, %s)", lm_mesh_who_(c), p->name[0] ? p->name : "?",
             c->dialed ? "dialed" : "accepted");
    send_digest(c); /* a newcomer learns the mesh at once, not at the next round */
}

static void
on_gossip_record(struct conn *c, const struct lm_frame *f)
{
    struct lm_mesh *m = c->m;
    if (!(f->flags & LM_FRAME_SIGNED) || !f->sig) {
        strike(c, REJ_SIGNATURE, "GOSSIP_RECORD without a signature");
        return;
    }
    struct lm_gossip_verdict v;
    int rc = lm_gossip_offer(m->gossip, f->payload, f->payload_len, f->sig, lm_wall_ms(), &v);
    if (rc == 0) {
        if (v.status == LM_GOSSIP_NEW) {
            learn_record(m, v.record);
            push_fanout(m, f->raw, f->raw_len, c); /* byte for byte, as signed */
        }
        return;
    }
    switch (v.status) {
    case LM_GOSSIP_BAD_SIGNATURE:
        strike(c, REJ_SIGNATURE, "record: %s", v.message);
        break;
    case LM_GOSSIP_MALFORMED:
        strike(c, REJ_MALFORMED, "record: %s", v.message);
        break;
    case LM_GOSSIP_STALE:
        strike(c, REJ_STALE, "record: %s", v.message);
        break;
    case LM_GOSSIP_DENIED: /* the sender may trust whom we do not: not its fault */
        m->rejected[REJ_UNTRUSTED]++;
        log_debug("%s: record dropped: %s", lm_mesh_who_(c), v.message);
        break;
    default: /* expired on the way, or our caps: logged by the store */
        log_debug("%s: record not stored: %s", lm_mesh_who_(c), v.message);
        break;
    }
}

static void
on_digest(struct conn *c, const struct lm_frame *f)
{
    struct lm_buf want;
    struct lm_gossip_sync st;
    lm_buf_init(&want, LM_GOSSIP_SYNC_MAX);
    if (lm_gossip_compare(c->m->gossip, f->payload, f->payload_len, lm_wall_ms(), send_record, c,
                          &want, &st) != 0)
        strike(c, REJ_MALFORMED, "digest: %s", st.message);
    else if (want.len && !c->dead)
        send_frame(c, LM_FRAME_GOSSIP_WANT, want.data, want.len, false);
    lm_buf_release(&want);
}

static void
on_want(struct conn *c, const struct lm_frame *f)
{
    struct lm_gossip_sync st;
    if (lm_gossip_want(c->m->gossip, f->payload, f->payload_len, lm_wall_ms(), send_record, c,
                       &st) != 0)
        strike(c, REJ_MALFORMED, "want: %s", st.message);
}

/* Token bucket on control frames: a flood costs the sender its connection,
 * not everyone else their service. */
static bool
rate_ok(struct conn *c)
{
    uint64_t now = lm_now_ms();
    c->tokens += (double)(now - c->tokens_ms) * FRAME_RATE / 1000.0;
    if (c->tokens > FRAME_BURST)
        c->tokens = FRAME_BURST;
    c->tokens_ms = now;
    if (c->tokens < 1)
        return false;
    c->tokens -= 1;
    return true;
}

static void
on_frame(struct conn *c, const struct lm_frame *f)
{
    c->frames_in++;
    if (!rate_ok(c)) {
        c->m->rejected[REJ_FLOOD]++;
        misbehaved(c, "more than %d frames/s", FRAME_RATE);
        return;
    }
    if (!c->hello_got && f->type != LM_FRAME_HELLO) {
        strike(c, REJ_MALFORMED, "%s before HELLO", lm_frame_type_name(f->type));
        lm_mesh_conn_close_(c, "no HELLO");
        return;
    }
    switch (f->type) {
    case LM_FRAME_HELLO:
        on_hello(c, f);
        break;
    case LM_FRAME_PING: {
        uint64_t nonce;
        if (lm_frame_parse_ping(f, &nonce) == 0) {
            struct lm_buf b;
            lm_buf_init(&b, 256);
            if (lm_frame_encode_ping(&b, LM_FRAME_PONG, nonce) == 0)
                send_raw(c, b.data, b.len);
            lm_buf_release(&b);
        }
        break;
    }
    case LM_FRAME_PONG:
        break;
    case LM_FRAME_ERROR: {
        struct lm_frame_error e;
        if (lm_frame_parse_error(f, &e) == 0) {
            char msg[300];
            lm_escape(msg, sizeof(msg), e.message, strlen(e.message));
            log_warn("%s says: %s: %s", lm_mesh_who_(c), e.code, msg);
        }
        break;
    }
    case LM_FRAME_GOSSIP_RECORD:
        on_gossip_record(c, f);
        break;
    case LM_FRAME_GOSSIP_DIGEST:
        on_digest(c, f);
        break;
    case LM_FRAME_GOSSIP_WANT:
        on_want(c, f);
        break;
    default: {
        char msg[80];
        snprintf(msg, sizeof(msg), "frame type 0x%02x is not served on the control stream",
                 f->type);
        send_error(c, "unsupported_type", msg);
        break;
    }
    }
}

static void
ctl_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct conn *c = arg;
    const uint8_t *p = data;
    size_t left = n;
    while (left && !c->dead) {
        size_t used = 0;
        struct lm_frame f;
        int rc = lm_frame_reader_feed(&c->rd, p, left, &used, &f);
        p += used;
        left -= used;
        /* Every control frame is capped at 1 MiB, PROXY_REQUEST-typed ones too. */
        if (rc == 0 && c->rd.need > LM_FRAME_MAX + LM_FRAME_LEN_BYTES)
            rc = -EMSGSIZE;
        if (rc == 1) {
            on_frame(c, &f);
        } else if (rc == -EMSGSIZE) {
            c->m->rejected[REJ_TOO_LARGE]++;
            send_error(c, "frame_too_large", "frame over the 1 MiB cap");
            misbehaved(c, "a frame over the cap on the control stream");
        } else if (rc < 0) {
            c->m->rejected[REJ_MALFORMED]++;
            lm_mesh_conn_close_(c, "broken framing on the control stream");
        }
    }
    if (!c->dead)
        lm_yamux_stream_consume(st, n);
}

static void
ctl_writable(struct lm_yamux_stream *st, void *arg)
{
    (void)st;
    flush_ctl(arg);
}

static void
ctl_gone(struct lm_yamux_stream *st, void *arg)
{
    (void)st;
    struct conn *c = arg;
    lm_mesh_conn_close_(c, "control stream closed");
}

static void
ctl_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    (void)st;
    struct conn *c = arg;
    lm_mesh_conn_close_(c, "control stream reset (%s)", strerror(-err));
}

static const struct lm_yamux_stream_cbs ctl_cbs = {
    .on_data = ctl_data,
    .on_writable = ctl_writable,
    .on_fin = ctl_gone,
    .on_reset = ctl_reset,
};

/* What HELLO and our `peer` record say of this node. */
static json_t *
roles_json(const struct lm_config *cfg)
{
    json_t *roles = json_array();
    static const enum lm_role all[] = {LM_ROLE_GATEWAY, LM_ROLE_PROVIDER, LM_ROLE_RELAY};
    for (size_t i = 0; i < LM_ARRAY_LEN(all); i++)
        if (cfg->node.roles & all[i])
            json_array_append_new(roles, json_string(lm_config_role_name(all[i])));
    return roles;
}

static json_t *
advertise_json(const struct lm_config *cfg)
{
    json_t *addrs = json_array();
    for (size_t i = 0; i < cfg->mesh.advertise.n; i++)
        json_array_append_new(addrs, json_string(cfg->mesh.advertise.v[i]));
    return addrs;
}

static void
send_hello(struct conn *c)
{
    struct lm_mesh *m = c->m;
    const struct lm_config *cfg = m->cfg;
    json_t *roles = roles_json(cfg), *addrs = advertise_json(cfg);
    json_t *j = json_pack("{s:s, s:I, s:i, s:s, s:o, s:o, s:s, s:[]}", "from", m->id->node_id,
                          "ts", (json_int_t)lm_wall_ms(), "version", 1, "name", cfg->node.name,
                          "roles", roles, "addrs", addrs, "software", SOFTWARE, "features");
    send_json(c, LM_FRAME_HELLO, j, true);
    json_decref(j);
    c->hello_sent = true;
}

/* --- the session ------------------------------------------------------------------------ */

static int
mux_accept(struct lm_yamux_stream *st, void *arg)
{
    struct conn *c = arg;
    if (c->dead)
        return -ECONNABORTED;
    if (!c->ctl && !c->dialed) { /* the dialer's first stream is the control stream */
        c->ctl = st;
        lm_yamux_stream_set_cbs(st, &ctl_cbs, c);
        send_hello(c);
        return 0;
    }
    if (!lm_mesh_conn_up_(c))
        return -EPROTO; /* nothing but the control stream before HELLO */
    return lm_mesh_proxy_accept_(c, st);
}

static void
mux_close(int err, const char *why, void *arg)
{
    struct conn *c = arg;
    lm_mesh_conn_close_(c, "session ended: %s", why && *why ? why : strerror(-err));
}

static const struct lm_yamux_cbs mux_cbs = {
    .send = mux_send,
    .on_accept = mux_accept,
    .on_close = mux_close,
};

static void
bev_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    while (!c->dead && c->mux && (n = evbuffer_get_length(in)) > 0) {
        size_t k = n < 65536 ? n : 65536;
        unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)k);
        c->bytes_in += k;
        int rc = lm_yamux_feed(c->mux, p, k);
        if (c->dead)
            return; /* bev is gone with it */
        evbuffer_drain(in, k);
        if (rc < 0) {
            lm_mesh_conn_close_(c, "yamux: %s", strerror(-rc));
            return;
        }
        /* Input makes output on its own (yamux Ping answers, window
         * updates): a peer that sends but never reads is bounded here. */
        if (evbuffer_get_length(bufferevent_get_output(bev)) > OUT_CAP) {
            c->m->rejected[REJ_FLOOD]++;
            lm_mesh_conn_close_(c, "not reading: over %u MiB queued for it", OUT_CAP >> 20);
            return;
        }
    }
}

static void
bev_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (!c->dead)
        flush_ctl(c);
}

/* Only one connection per pair of nodes: the one the smaller node id dialed.
 * Both may dial at once; each side then drops the same one. */
static bool
keep_new(const struct lm_mesh *m, const struct conn *old, const struct conn *c)
{
    bool we_are_smaller = strcmp(m->id->node_id, c->id) < 0;
    if (old->dialed == c->dialed)
        return true; /* a reconnect: the old one is stale */
    return c->dialed == we_are_smaller;
}

static void
tls_ready(struct conn *c)
{
    struct lm_mesh *m = c->m;
    char err[300];
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    if (lm_tls_check(ssl, c->dialed ? c->expect : NULL, c->id, err, sizeof(err)) != 0) {
        if (c->dialed && c->expect[0])
            c->m->rejected[REJ_FORGED]++;
        lm_mesh_conn_close_(c, "%s", err);
        return;
    }
    if (strcmp(c->id, m->id->node_id) == 0) {
        lm_mesh_conn_close_(c, "that is this node itself");
        return;
    }
    struct lm_trust_verdict v;
    if (lm_mesh_trust_(m, c->id, &v) != 0) {
        m->rejected[REJ_UNTRUSTED]++;
        lm_mesh_conn_close_(c, "refused: %s", v.text);
        return;
    }
    struct peer *p = peer_get(m, c->id);
    if (!p) {
        lm_mesh_conn_close_(c, "too many peers known (%d)", PEERS_MAX);
        return;
    }
    if (p->banned_until_ms > lm_now_ms()) {
        m->rejected[REJ_BANNED]++;
        lm_mesh_conn_close_(c, "refused: misbehaved, kept out for %llu s more",
                            (unsigned long long)((p->banned_until_ms - lm_now_ms()) / 1000));
        return;
    }
    if (p->conn && !p->conn->dead) {
        if (!keep_new(m, p->conn, c)) {
            lm_mesh_conn_close_(c, "already connected the other way");
            return;
        }
        lm_mesh_conn_close_(p->conn, "replaced by a new connection");
    }
    p->conn = c;
    c->peer = p;
    c->tls_ok = true;
    /* The handshake's timeouts end with it: an idle connection between two
     * gossip rounds is fine. From here, HELLO_TIMEOUT_MS and yamux keepalive
     * pings (3 unanswered: dropped) watch the connection. */
    bufferevent_set_timeouts(c->bev, NULL, NULL);
    if (lm_yamux_new(&c->mux, c->dialed, &mux_cbs, c, NULL) != 0) {
        lm_mesh_conn_close_(c, "cannot start yamux");
        return;
    }
    if (c->dialed) {
        if (lm_yamux_open(c->mux, &c->ctl) != 0) {
            lm_mesh_conn_close_(c, "cannot open the control stream");
            return;
        }
        lm_yamux_stream_set_cbs(c->ctl, &ctl_cbs, c);
        send_hello(c);
    }
}

static void
bev_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    int sys_errno = errno;
    if (what & BEV_EVENT_CONNECTED) {
        /* No Nagle: an SSE event is one small TLS record, and held back
         * behind an unacknowledged one it would wait for the peer's delayed
         * ACK (40 ms here). A relayed connection has no socket of its own
         * (fd -1); the relay's connections carry it. */
        evutil_socket_t fd = bufferevent_getfd(bev);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        tls_ready(c);
        if (!c->dead && evbuffer_get_length(bufferevent_get_input(bev)))
            bev_read(bev, c);
        return;
    }
    char why[300];
    if (!c->tls_ok && !c->dialed)
        c->m->rejected[REJ_HANDSHAKE]++;
    if (what & BEV_EVENT_TIMEOUT)
        snprintf(why, sizeof(why), "timed out%s", c->tls_ok ? "" : " in the TLS handshake");
    else if (what & BEV_EVENT_EOF)
        snprintf(why, sizeof(why), "closed by the peer");
    else {
        lm_tls_describe(NULL, bev, why, sizeof(why));
        /* A dial whose name or connect() failed at once (no route to the host):
         * libevent closed the socket before any TLS; only errno says why. */
        int dns = bufferevent_socket_get_dns_error(bev);
        if (c->dialed && !c->via[0] && bufferevent_getfd(bev) < 0 && (dns || sys_errno))
            snprintf(why, sizeof(why), "cannot %s: %s", dns ? "resolve" : "connect",
                     dns ? evutil_gai_strerror(dns) : strerror(sys_errno));
    }
    lm_mesh_conn_close_(c, "%s", why);
}

void
lm_mesh_conn_start_(struct conn *c, struct bufferevent *bev)
{
    c->bev = bev;
    bufferevent_setcb(bev, bev_read, bev_write, bev_event, c);
    /* A peer's connection carries new requests (a provider) and first
     * tokens (a gateway): urgent, like a client's request, rather than
     * queued behind every stream's next token (see LM_PRIO_URGENT). */
    bufferevent_priority_set(bev, LM_PRIO_URGENT);
    struct timeval tv = {LM_TLS_HANDSHAKE_TIMEOUT_MS / 1000, 0};
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int sl, void *arg)
{
    (void)l;
    struct lm_mesh *m = arg;
    char addr[160] = "?";
    (void)sl;
    lm_sockaddr_format(addr, sizeof(addr), sa);
    unsigned n = 0;
    for (struct conn *c = m->conns; c; c = c->next)
        n += !c->dead;
    if (n >= (unsigned)m->cfg->mesh.max_peers * 2 + 16) {
        log_warn("mesh: refusing %s: %u connections open", addr, n);
        evutil_closesocket(fd);
        return;
    }
    struct bufferevent *bev;
    if (lm_tls_bev_socket(&bev, m->tls, m->base, fd, true, 0) != 0) {
        evutil_closesocket(fd);
        return;
    }
    lm_mesh_conn_start_(lm_mesh_conn_new_(m, false, addr), bev);
}

static void
dial(struct lm_mesh *m, struct peer *p)
{
    /* Not dialable, or the last direct dial failed: through a relay it keeps
     * a connection to (alternating with direct dials while they fail). */
    if (!p->naddrs || (p->nrelays && p->fails % 2 == 1)) {
        if (lm_mesh_circuit_dial_(m, p) != 0)
            dial_failed(m, p);
        return;
    }
    const char *addr = p->addrs[p->fails % p->naddrs];
    char host[128];
    int port;
    if (lm_hostport_parse(addr, host, sizeof(host), &port, false) != 0) {
        dial_failed(m, p);
        return;
    }
    SSL *ssl = SSL_new(lm_tls_ctx_ssl(m->tls));
    struct bufferevent *bev = ssl ? bufferevent_openssl_socket_new(m->base, -1, ssl,
                                                                   BUFFEREVENT_SSL_CONNECTING,
                                                                   BEV_OPT_CLOSE_ON_FREE)
                                  : NULL;
    if (!bev) {
        SSL_free(ssl);
        dial_failed(m, p);
        return;
    }
    struct conn *c = lm_mesh_conn_new_(m, true, addr);
    snprintf(c->expect, sizeof(c->expect), "%s", p->id);
    p->dialing = c;
    lm_mesh_conn_start_(c, bev);
    log_debug("dialing %.12s at %s", p->id, addr);
    if (!m->dns)
        m->dns = evdns_base_new(m->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (bufferevent_socket_connect_hostname(bev, m->dns, AF_UNSPEC, host, port) != 0)
        lm_mesh_conn_close_(c, "cannot dial %s", addr);
}

static unsigned
connected(const struct lm_mesh *m)
{
    unsigned n = 0;
    for (const struct peer *p = m->peers; p; p = p->next)
        n += p->conn && !p->conn->dead;
    return n;
}

/* Dials every allowed peer with an address that is neither connected nor
 * backing off, up to max_peers. */
static void
dial_some(struct lm_mesh *m)
{
    uint64_t now = lm_now_ms();
    unsigned n = connected(m);
    for (struct peer *p = m->peers; p && n < (unsigned)m->cfg->mesh.max_peers; p = p->next) {
        if (p->conn || p->dialing || (!p->naddrs && !p->nrelays) || p->next_dial_ms > now)
            continue;
        struct lm_trust_verdict v;
        if (lm_mesh_trust_(m, p->id, &v) != 0)
            continue;
        dial(m, p);
        n++;
    }
}

/* --- local records ---------------------------------------------------------------------- */

static json_t *
capabilities_body(struct lm_mesh *m)
{
    json_t *models = json_array();
    size_t ne = m->endpoints ? lm_endpoints_count(m->endpoints) : 0;
    for (size_t i = 0; i < ne; i++) {
        const struct lm_endpoint *e = lm_endpoints_at(m->endpoints, i);
        if (!e->share || !e->healthy || e->loading)
            continue;
        for (size_t k = 0; k < e->n_models; k++) {
            const struct lm_model *md = &e->models[k];
            json_t *o = json_pack("{s:s, s:[], s:b, s:i, s:i, s:i}", "id", md->id, "aliases",
                                  "loaded", md->loaded, "slots_free",
                                  e->free_slots >= 0 ? e->free_slots : e->max_concurrent,
                                  "slots_total", e->max_concurrent, "queue",
                                  e->runtime_waiting > 0 ? e->runtime_waiting : 0);
            if (md->alias)
                json_array_append_new(json_object_get(o, "aliases"), json_string(md->alias));
            if (md->digest)
                json_object_set_new(o, "digest", json_string(md->digest));
            if (md->family)
                json_object_set_new(o, "family", json_string(md->family));
            if (md->param_size)
                json_object_set_new(o, "params", json_string(md->param_size));
            if (md->quant)
                json_object_set_new(o, "quant", json_string(md->quant));
            if (md->context_length > 0)
                json_object_set_new(o, "context_length", json_integer(md->context_length));
            json_array_append_new(models, o);
        }
    }
    const struct lm_config *cfg = m->cfg;
    json_t *prices = json_array(), *payouts = json_array(), *feps = json_array();
    for (size_t i = 0; i < cfg->n_prices; i++) {
        char in[32], out[32];
        lm_config_micros_format(cfg->prices[i].per_1k_in, in, sizeof(in));
        lm_config_micros_format(cfg->prices[i].per_1k_out, out, sizeof(out));
        json_array_append_new(prices, json_pack("{s:s, s:s, s:s}", "model", cfg->prices[i].model,
                                                "per_1k_in", in, "per_1k_out", out));
    }
    for (size_t i = 0; i < cfg->n_payouts; i++)
        json_array_append_new(payouts, json_pack("{s:s, s:s}", "currency",
                                                 cfg->payouts[i].currency, "address",
                                                 cfg->payouts[i].address));
    for (size_t i = 0; i < cfg->n_feps; i++)
        json_array_append_new(feps, json_string(cfg->feps[i].id));
    return json_pack("{s:o, s:o, s:o, s:o}", "models", models, "prices", prices, "payouts",
                     payouts, "feps", feps);
}

static void
publish(struct lm_mesh *m, const char *kind, json_t *body)
{
    struct lm_gossip_verdict v;
    if (lm_gossip_publish(m->gossip, m->id, kind, body, RECORD_TTL_MS, false, lm_wall_ms(), &v) ==
        0)
        push_record(m, v.record, NULL);
    else
        log_warn("cannot publish our %s record: %s", kind, v.message);
}

/* A relay this node is directly connected to: where others can reach it
 * when it has no address of its own. */
static bool
is_relay(const struct peer *p)
{
    if (!p->conn || !lm_mesh_conn_up_(p->conn) || p->conn->via[0])
        return false;
    size_t i;
    json_t *r;
    json_array_foreach(p->roles, i, r) {
        if (json_is_string(r) && strcmp(json_string_value(r), "relay") == 0)
            return true;
    }
    return false;
}

static void
publish_local(struct lm_mesh *m, bool force)
{
    const struct lm_config *cfg = m->cfg;
    if (force) {
        json_t *roles = roles_json(cfg), *addrs = advertise_json(cfg);
        json_t *relays = json_array();
        for (struct peer *p = m->peers; p; p = p->next)
            if (is_relay(p))
                json_array_append_new(relays, json_string(p->id));
        json_t *peer = json_pack("{s:s, s:o, s:o, s:o, s:s}", "name", cfg->node.name, "roles",
                                 roles, "addrs", addrs, "relays", relays, "version", LM_VERSION);
        publish(m, "peer", peer);
        json_decref(peer);
        if (cfg->mesh.trust == LM_TRUST_FRIENDS) {
            json_t *ids = json_array();
            for (size_t i = 0; i < cfg->mesh.trusted_peers.n; i++)
                json_array_append_new(ids, json_string(cfg->mesh.trusted_peers.v[i]));
            json_t *vouch = json_pack("{s:o}", "peers", ids);
            publish(m, "vouch", vouch);
            json_decref(vouch);
        }
    }
    /* Capabilities follow the endpoint registry: re-announced on change. */
    json_t *caps = capabilities_body(m);
    char *text = json_dumps(caps, JSON_COMPACT | JSON_SORT_KEYS);
    if (text && (force || !m->caps_text || strcmp(text, m->caps_text) != 0)) {
        publish(m, "capabilities", caps);
        free(m->caps_text);
        m->caps_text = text;
        text = NULL;
    }
    free(text);
    json_decref(caps);
}

void
lm_mesh_note_demand(struct lm_mesh *m, const char *model, uint64_t tokens_in,
                    uint64_t tokens_out, bool unserved, uint64_t ttft_ms)
{
    if (!m || strlen(model) >= sizeof(m->demand[0].model))
        return;
    struct demand *d = NULL;
    for (unsigned i = 0; i < m->ndemand && !d; i++)
        if (strcmp(m->demand[i].model, model) == 0)
            d = &m->demand[i];
    if (!d) {
        if (m->ndemand == MARKET_MODELS)
            return;
        d = &m->demand[m->ndemand++];
        memset(d, 0, sizeof(*d));
        snprintf(d->model, sizeof(d->model), "%s", model);
    }
    d->requests++;
    d->tokens_in += tokens_in;
    d->tokens_out += tokens_out;
    d->unserved += unserved;
    if (ttft_ms && !unserved) /* a sample: the first 64 of the window */
        if (d->nttft < LM_ARRAY_LEN(d->ttft))
            d->ttft[d->nttft++] = (uint32_t)(ttft_ms < UINT32_MAX ? ttft_ms : UINT32_MAX);
}

static int
cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Every market window (MARKET_WINDOW_S), a `market` record of the window's demand, when
 * there was any: what providers read to decide what to load and price. */
static void
publish_market(struct lm_mesh *m, uint64_t now)
{
    if (now < m->market_at_ms)
        return;
    m->market_at_ms = now + (uint64_t)m->market_window_s * 1000u;
    if (m->ndemand == 0)
        return;
    json_t *demand = json_array();
    for (unsigned i = 0; i < m->ndemand; i++) {
        struct demand *d = &m->demand[i];
        qsort(d->ttft, d->nttft, sizeof(d->ttft[0]), cmp_u32);
        json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I}", "model", d->model, "requests",
                              (json_int_t)d->requests, "tokens_in", (json_int_t)d->tokens_in,
                              "tokens_out", (json_int_t)d->tokens_out, "unserved",
                              (json_int_t)d->unserved);
        if (d->nttft)
            json_object_set_new(o, "p50_ttft_ms", json_integer(d->ttft[d->nttft / 2]));
        json_array_append_new(demand, o);
    }
    json_t *body = json_pack("{s:i, s:o}", "window_s", m->market_window_s, "demand", demand);
    publish(m, "market", body);
    json_decref(body);
    m->ndemand = 0;
}

static void
refreshed(void *arg, const struct lm_gossip_record *r)
{
    push_record(arg, r, NULL);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_mesh *m = arg;
    uint64_t now = lm_now_ms(), wall = lm_wall_ms();
    for (struct conn *c = m->conns; c; c = c->next) {
        if (c->dead)
            continue;
        if (!c->hello_got && now - c->started_ms > HELLO_TIMEOUT_MS)
            lm_mesh_conn_close_(c, "no HELLO within %d s", HELLO_TIMEOUT_MS / 1000);
        else if (c->mux && lm_yamux_tick(c->mux, now) < 0 && !c->dead)
            lm_mesh_conn_close_(c, "keepalive: no answer to 3 pings");
    }
    lm_gossip_expire(m->gossip, wall);
    lm_gossip_refresh(m->gossip, m->id, wall, refreshed, m);
    /* The relays we keep connections to are part of our peer record. */
    char relays[LM_NODE_ID_LEN * 8 + 8] = "";
    unsigned nr = 0;
    for (struct peer *p = m->peers; p && nr < 8; p = p->next)
        if (is_relay(p)) {
            strncat(relays, p->id, sizeof(relays) - strlen(relays) - 1);
            nr++;
        }
    bool relays_changed = strcmp(relays, m->relays_seen) != 0;
    if (relays_changed)
        snprintf(m->relays_seen, sizeof(m->relays_seen), "%s", relays);
    publish_local(m, relays_changed);
    publish_market(m, now);
    dial_some(m);
    struct timeval tv = {0, TICK_MS * 1000};
    evtimer_add(m->tick, &tv);
}

/* Anti-entropy: one digest every gossip_interval_ms to a random peer, on its
 * own persistent timer. It used to ride the 1 s tick, checking "last digest
 * + interval" against lm_now_ms(); libevent schedules the tick from its own
 * cached (coarse) clock, so the tick often came a hair early and skipped:
 * digests went out every 1-2 s (1.5 s on average, measured), and intervals
 * under 1 s were never honoured. */
static void
on_digest_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_mesh *m = arg;
    struct conn *all[256];
    unsigned k = up_conns(m, all, 256, NULL);
    if (k)
        send_digest(all[randombytes_uniform(k)]);
}

static void
arm_digest_timer(struct lm_mesh *m)
{
    int ms = m->cfg->mesh.gossip_interval_ms;
    if (ms == m->digest_interval_ms && evtimer_pending(m->digest_ev, NULL))
        return;
    m->digest_interval_ms = ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(m->digest_ev, &tv);
}

/* --- configuration ---------------------------------------------------------------------- */

bool
lm_mesh_enabled(const struct lm_config *cfg)
{
    return cfg->mesh.trust != LM_TRUST_PRIVATE || cfg->mesh.trusted_peers.n > 0 ||
           cfg->mesh.bootstrap.n > 0;
}

static void
add_bootstrap(struct lm_mesh *m)
{
    for (size_t i = 0; i < m->cfg->mesh.bootstrap.n; i++) {
        const char *b = m->cfg->mesh.bootstrap.v[i];
        const char *at = strchr(b, '@');
        if (!at || at - b != LM_NODE_ID_LEN)
            continue; /* config validated it */
        char id[LM_NODE_ID_LEN + 1];
        lm_identity_node_id_lower(id, b);
        struct peer *p = peer_get(m, id);
        if (p) {
            peer_add_addr(p, at + 1);
            store_peer(m, p, LM_PEER_BOOTSTRAP);
        }
    }
}

/* Peers from earlier runs: a restart rejoins without bootstrap. */
static void
add_stored(struct lm_mesh *m)
{
    struct lm_peer_rec *recs = NULL;
    size_t n = 0;
    if (!m->store || lm_peerstore_candidates(m->store, PEERS_MAX, &recs, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct peer *p = peer_get(m, recs[i].node_id);
        if (!p)
            continue;
        if (!p->name[0])
            snprintf(p->name, sizeof(p->name), "%s", recs[i].name);
        for (size_t k = 0; k < recs[i].n_addrs; k++)
            peer_add_addr(p, recs[i].addrs[k]);
        p->last_seen_ms = (uint64_t)recs[i].last_seen_ms;
    }
    lm_peer_recs_free(recs, n);
}

int
lm_mesh_new(struct lm_mesh **out, const struct lm_mesh_deps *deps, const struct lm_config *cfg,
            char *err, size_t errcap)
{
    *out = NULL;
    if (!lm_mesh_enabled(cfg))
        return 0;
    struct lm_mesh *m = lm_xcalloc(1, sizeof(*m));
    m->base = deps->base;
    m->id = deps->id;
    m->endpoints = deps->endpoints;
    m->upstream = deps->upstream;
    m->cfg = cfg;
    /* LABMAN_MARKET_WINDOW_S: a test knob (the tests cannot wait a minute). */
    const char *mw = getenv("LABMAN_MARKET_WINDOW_S");
    m->market_window_s = mw && atoi(mw) > 0 && atoi(mw) <= 3600 ? atoi(mw) : MARKET_WINDOW_S;
    m->market_at_ms = lm_now_ms() + (uint64_t)m->market_window_s * 1000u;
    m->vouches = lm_trust_vouches_new();
    struct lm_gossip_opts go = {.allow = allow_origin, .allow_arg = m};
    int rc = lm_tls_ctx_new(&m->tls, deps->id, err, errcap);
    if (rc == 0 && (rc = lm_gossip_new(&m->gossip, &go)) != 0)
        snprintf(err, errcap, "mesh: cannot start the gossip store: %s", strerror(-rc));
    if (rc == 0 && (rc = lm_frame_replay_new(&m->replay, 0)) != 0)
        snprintf(err, errcap, "mesh: cannot start the replay cache: %s", strerror(-rc));
    if (rc == 0 && deps->data_dir)
        lm_peerstore_open(deps->data_dir, &m->store); /* falls back to memory by itself */
    if (rc == 0) {
        struct sockaddr_storage ss;
        int sl = sizeof(ss);
        if (evutil_parse_sockaddr_port(cfg->mesh.listen, (struct sockaddr *)&ss, &sl) != 0) {
            snprintf(err, errcap, "mesh: cannot listen on %s: not an address", cfg->mesh.listen);
            rc = -EINVAL;
        } else {
            m->lis = evconnlistener_new_bind(m->base, on_accept, m,
                                             LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                                 LEV_OPT_CLOSE_ON_EXEC,
                                             128, (struct sockaddr *)&ss, sl);
            if (!m->lis) {
                rc = -errno ? -errno : -EADDRINUSE;
                snprintf(err, errcap, "mesh: cannot listen on %s: %s", cfg->mesh.listen,
                         strerror(-rc));
            }
        }
    }
    if (rc != 0) {
        lm_mesh_free(m);
        return rc;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(evconnlistener_get_fd(m->lis), (struct sockaddr *)&ss, &sl) == 0)
        lm_sockaddr_format(m->listen_addr, sizeof(m->listen_addr), (struct sockaddr *)&ss);
    add_stored(m);
    add_bootstrap(m);
    publish_local(m, true);
    m->tick = evtimer_new(m->base, on_tick, m);
    m->digest_ev = event_new(m->base, -1, EV_PERSIST, on_digest_timer, m);
    if (!m->tick || !m->digest_ev)
        abort();
    arm_digest_timer(m);
    struct timeval tv = {0, 0};
    evtimer_add(m->tick, &tv);
    log_info("mesh on %s (trust %s, %u peer(s) known)", m->listen_addr,
             lm_config_trust_name(cfg->mesh.trust), m->npeers);
    *out = m;
    return 0;
}

void
lm_mesh_stop_listening(struct lm_mesh *m)
{
    if (m && m->lis) {
        evconnlistener_free(m->lis);
        m->lis = NULL;
    }
}

void
lm_mesh_reconfigure(struct lm_mesh *m, const struct lm_config *cfg)
{
    if (!m)
        return;
    m->cfg = cfg;
    for (struct conn *c = m->conns; c; c = c->next) {
        struct lm_trust_verdict v;
        if (!c->dead && c->id[0] && lm_mesh_trust_(m, c->id, &v) != 0)
            lm_mesh_conn_close_(c, "no longer allowed: %s", v.text);
    }
    lm_gossip_drop_denied(m->gossip);
    add_bootstrap(m);
    publish_local(m, true);
    arm_digest_timer(m);
}

void
lm_mesh_free(struct lm_mesh *m)
{
    if (!m)
        return;
    lm_mesh_stop_listening(m);
    lm_mesh_proxy_free_all_(m);
    lm_mesh_relay_free_all_(m);
    while (m->conns) {
        struct conn *c = m->conns;
        lm_mesh_conn_close_(c, "shutting down");
        event_del(c->reap);
        reap_cb(-1, 0, c);
    }
    while (m->peers) {
        struct peer *p = m->peers;
        m->peers = p->next;
        json_decref(p->roles);
        free(p);
    }
    if (m->tick)
        event_free(m->tick);
    if (m->digest_ev)
        event_free(m->digest_ev);
    if (m->dns)
        evdns_base_free(m->dns, 0);
    lm_gossip_free(m->gossip);
    lm_frame_replay_free(m->replay);
    lm_trust_vouches_free(m->vouches);
    lm_peerstore_close(m->store);
    lm_tls_ctx_free(m->tls);
    free(m->caps_text);
    free(m);
}

/* --- the operator's view ---------------------------------------------------------------- */

struct models_of {
    const char *origin;
    json_t *out;
};

static void
collect_models(void *arg, const struct lm_gossip_record *r)
{
    struct models_of *mo = arg;
    if (strcmp(r->origin, mo->origin) != 0)
        return;
    size_t i;
    json_t *md;
    json_array_foreach(json_object_get(r->body, "models"), i, md) {
        json_t *id = json_object_get(md, "id");
        if (json_is_string(id))
            json_array_append(mo->out, id);
    }
}

json_t *
lm_mesh_peers_json(struct lm_mesh *m)
{
    json_t *arr = json_array();
    if (!m)
        return json_pack("{s:o}", "peers", arr);
    uint64_t now = lm_now_ms();
    for (struct peer *p = m->peers; p; p = p->next) {
        struct lm_trust_verdict v;
        lm_mesh_trust_(m, p->id, &v);
        struct conn *c = p->conn && lm_mesh_conn_up_(p->conn) ? p->conn : NULL;
        json_t *addrs = json_array();
        for (unsigned i = 0; i < p->naddrs; i++)
            json_array_append_new(addrs, json_string(p->addrs[i]));
        struct models_of mo = {p->id, json_array()};
        char path[96] = "none";
        if (c && c->via[0]) {
            struct peer *r = lm_mesh_peer_find_(m, c->via);
            snprintf(path, sizeof(path), "relay via %s",
                     r && r->name[0] ? r->name : c->via);
            path[sizeof(path) - 1] = '\0';
        } else if (c) {
            snprintf(path, sizeof(path), "direct");
        }
        lm_gossip_each(m->gossip, "capabilities", lm_wall_ms(), collect_models, &mo);
        json_t *o = json_pack("{s:s, s:s#, s:s, s:O, s:o, s:b, s:s, s:o, s:s, s:I}", "node_id",
                              p->id, "short_id", p->id, LM_SHORT_ID_LEN, "name", p->name,
                              "roles", p->roles ? p->roles : json_array(), "addrs", addrs,
                              "connected", c != NULL, "path", path, "models",
                              mo.out, "trust", v.code, "last_seen_ms",
                              (json_int_t)p->last_seen_ms);
        if (!p->roles)
            json_decref(json_object_get(o, "roles")); /* the temporary array above */
        /* What its gateway saw asked for lately (its `market` record). */
        const struct lm_gossip_record *mk = lm_gossip_get(m->gossip, p->id, "market",
                                                          lm_wall_ms());
        json_t *dm = mk && !mk->withdrawn ? json_object_get(mk->body, "demand") : NULL;
        json_object_set_new(o, "demand", json_is_array(dm) ? json_deep_copy(dm) : json_array());
        if (c) {
            int rtt = c->mux ? lm_yamux_ping_rtt_ms(c->mux) : -1;
            json_object_set_new(o, "rtt_ms", rtt >= 0 ? json_integer(rtt) : json_null());
            json_object_set_new(o, "direction", json_string(c->dialed ? "out" : "in"));
            json_object_set_new(o, "connected_s", json_integer((json_int_t)((now - c->up_ms) /
                                                                           1000)));
            json_object_set_new(o, "bytes_in", json_integer((json_int_t)c->bytes_in));
            json_object_set_new(o, "bytes_out", json_integer((json_int_t)c->bytes_out));
        } else {
            json_object_set_new(o, "rtt_ms", json_null());
            json_object_set_new(o, "fails", json_integer(p->fails));
        }
        json_array_append_new(arr, o);
    }
    return json_pack("{s:s, s:s, s:o}", "node_id", m->id->node_id, "listen", m->listen_addr,
                     "peers", arr);
}

void
lm_mesh_status(struct lm_mesh *m, json_t *st)
{
    json_t *o = json_object_get(st, "mesh");
    if (!json_is_object(o)) {
        o = json_object();
        json_object_set_new(st, "mesh", o);
    }
    json_object_set_new(o, "enabled", json_boolean(m != NULL));
    if (!m)
        return;
    struct lm_gossip_stats gs;
    lm_gossip_stats(m->gossip, &gs);
    json_object_set_new(o, "listen", json_string(m->listen_addr));
    json_object_set_new(o, "peers_known", json_integer(m->npeers));
    json_object_set_new(o, "peers_connected", json_integer(connected(m)));
    json_object_set_new(o, "records", json_integer((json_int_t)gs.records));
}

void
lm_mesh_metrics(struct lm_mesh *m, struct lm_buf *out)
{
    if (!m)
        return;
    lm_buf_printf(out,
                  "# HELP labman_mesh_peers Nodes this node knows of, and those connected now.\n"
                  "# TYPE labman_mesh_peers gauge\n"
                  "labman_mesh_peers{state=\"known\"} %u\n"
                  "labman_mesh_peers{state=\"connected\"} %u\n",
                  m->npeers, connected(m));
    lm_buf_puts(out, "# HELP labman_mesh_peer_bytes_total Mesh bytes per connected peer.\n"
                     "# TYPE labman_mesh_peer_bytes_total counter\n");
    for (struct peer *p = m->peers; p; p = p->next) {
        if (!p->conn || p->conn->dead)
            continue;
        lm_buf_printf(out, "labman_mesh_peer_bytes_total{peer=\"%.12s\",dir=\"in\"} %llu\n",
                      p->id, (unsigned long long)p->conn->bytes_in);
        lm_buf_printf(out, "labman_mesh_peer_bytes_total{peer=\"%.12s\",dir=\"out\"} %llu\n",
                      p->id, (unsigned long long)p->conn->bytes_out);
    }
    lm_buf_puts(out, "# HELP labman_mesh_rejected_total Frames and connections refused.\n"
                     "# TYPE labman_mesh_rejected_total counter\n");
    for (int i = 0; i < REJ_N; i++)
        lm_buf_printf(out, "labman_mesh_rejected_total{reason=\"%s\"} %llu\n", rej_names[i],
                      (unsigned long long)m->rejected[i]);
    lm_buf_printf(out,
                  "# HELP labman_mesh_circuits Relayed circuits this node carries now.\n"
                  "# TYPE labman_mesh_circuits gauge\n"
                  "labman_mesh_circuits %u\n"
                  "# HELP labman_mesh_circuits_total Relayed circuits this node has carried.\n"
                  "# TYPE labman_mesh_circuits_total counter\n"
                  "labman_mesh_circuits_total %llu\n",
                  lm_mesh_splices_(m), (unsigned long long)m->circuits_total);
    lm_mesh_proxy_metrics_(m, out);
    lm_gossip_metrics(m->gossip, out);
}
