/* upstream, the plain path: our own HTTP/1.1 client for http:// URLs, on
 * non-blocking sockets watched by the libevent loop, with responses parsed by
 * libhttp-parser. https:// goes to curl.c.
 *
 * Cost per request in steady state: one send() of a head and body formatted
 * into the request's own buffer, one recv() into a buffer shared by every
 * connection, one pass of http_parser over it, no allocation (requests and
 * connections come from free lists) and no epoll_ctl (a connection keeps
 * EV_READ while idle, which is also how a close by the runtime is seen).
 *
 * Connections: a pool of idle keep-alive connections per origin (the URL's
 * host:port as written), newest first, bounded per origin and in all, closed
 * after IDLE_TIMEOUT_MS. A connection goes back only after a complete
 * response that allows keep-alive, with nothing extra after it. A request
 * sent on a reused connection that ends (EOF, reset, failed send) before a
 * single byte of response is sent once more on a fresh connection: the
 * runtime closed an idle connection just as we picked it.
 *
 * Host names are resolved with libevent's evdns (/etc/hosts, then the
 * resolv.conf servers) without blocking the loop, only when a connection is
 * to be opened and the origin's addresses are older than DNS_TTL_MS; a
 * request waits on its origin meanwhile. Each address is tried in turn until
 * one accepts ("localhost" may name ::1 first where a runtime listens on
 * 127.0.0.1 only). The connect timeout covers resolving.
 *
 * Re-entrancy: callbacks run only from our event callbacks, never from
 * inside start or cancel; errors found in start arrive through a zero
 * timer on the next turn of the loop. While the parser runs over bytes of a
 * request (p->cur), a cancel of that request only marks it and the parser
 * stops at the next callback; parse() then closes the connection. Any other
 * request may be cancelled at once. lm_upstream_free from a callback waits
 * for lm_upstream_leave_.
 *
 * Pause stops reading the socket, so the runtime's TCP window fills. Bytes
 * already read past the pause point (at most one recv buffer) are kept in
 * the request and parsed first on resume, which runs from a zero timer. */
#define LM_LOG_MODULE "upstream"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <http_parser.h>

#include "log/log.h"
#include "upstream/upstream_internal.h"

#define RECV_BUF (16 * 1024)
#define ORIGIN_IDLE_MAX 64 /* idle connections kept per origin */
#define IDLE_MAX 256       /* idle connections kept in all */
#define IDLE_TIMEOUT_MS 30000
#define SWEEP_MS 5000
#define ORIGINS_KEEP 64 /* origins without connections kept for later */
#define FREE_CONNS_MAX 64
#define AUTHORITY_MAX 300 /* host:port; longer goes to curl */
#define ADDRS_MAX 4        /* addresses of a host name tried in turn */
#define DNS_TTL_MS 60000

struct origin {
    struct lm_upplain *p;
    struct link all;  /* p->origins, most recently used first */
    struct link idle; /* idle connections, newest first */
    unsigned nidle;
    unsigned refs; /* connections and requests using it */
    bool named;    /* a host name, resolved by evdns */
    bool dns_busy; /* a resolution is under way */
    uint16_t port;
    unsigned naddrs;
    uint64_t resolved_ms;
    struct evdns_getaddrinfo_request *resolving;
    struct link waiters; /* requests waiting for the resolution */
    struct sockaddr_storage addrs[ADDRS_MAX];
    socklen_t alens[ADDRS_MAX];
    size_t keylen;
    char key[AUTHORITY_MAX + 1]; /* host:port as in the URL; the Host header */
    char host[AUTHORITY_MAX + 1];
};

struct preq;

struct conn {
    struct lm_upplain *p;
    struct origin *o;
    struct preq *r; /* NULL while idle */
    int fd;
    short watch; /* EV_READ / EV_WRITE as registered now */
    bool connecting;
    bool reused; /* a response completed on it before */
    uint64_t idle_since_ms;
    struct event *ev;
    struct link idle; /* o->idle */
    struct conn *next_free;
};

enum pstate {
    P_IDLE,    /* in the free list */
    P_RUNNING, /* connecting, sending or receiving */
    P_DONE,    /* finished; on_done may be running */
};

enum hstate { H_NONE, H_FIELD, H_VALUE };

/* The common answer skips http_parser (a sixth of the gateway's CPU per
 * request): see fast_head. */
enum fast { F_TRY, F_BODY, F_OFF };

struct preq {
    struct lm_upstream_req pub; /* first: the API's handle */
    struct lm_upplain *p;
    enum pstate state;
    struct conn *c;
    struct origin *o;
    bool cancelled; /* the caller let go: no callback any more */
    bool counted;   /* included in p->active */
    bool paused;
    bool retried;
    bool got_bytes; /* something of the response arrived */
    bool interim;   /* parsing a 1xx response */
    bool complete;  /* the final response ended */
    bool deferred;  /* r->defer is armed */
    enum fast fast; /* F_BODY: the head was read without http_parser */
    bool fast_close; /* F_BODY: "Connection: close" */
    uint64_t fast_left; /* F_BODY: body bytes still to come */
    unsigned addr_i; /* the origin's address being tried */
    enum hstate hstate;
    int err; /* a verdict reached inside a parser callback, or deferred */
    const char *errmsg;
    size_t vstart; /* where the header value being stored starts */
    size_t received, max, head_bytes, sent;
    unsigned first_byte_ms, total_ms, connect_ms;
    struct lm_upstream_cbs cbs;
    void *arg;
    http_parser parser;
    struct lm_buf out;  /* the request: head, then body */
    struct lm_buf held; /* bytes read but not parsed when paused */
    size_t held_off;
    struct event *t_connect, *t_first, *t_total, *defer;
    struct link live; /* p->live */
    struct link wait; /* o->waiters */
    struct preq *next_free;
    char msg[160];
};

struct lm_upplain {
    struct lm_upstream *up;
    struct event_base *base;
    struct link origins;
    unsigned norigins;
    struct link live;
    unsigned active;
    unsigned nidle;
    struct event *sweep;
    struct evdns_base *dns; /* made for the first host name */
    struct preq *cur; /* the request the parser is running for */
    struct preq *free_reqs;
    unsigned nfree_reqs;
    struct conn *free_conns;
    unsigned nfree_conns;
    char rbuf[RECV_BUF];
};

static void conn_cb(evutil_socket_t fd, short what, void *arg);
static void conn_open(struct preq *r);

/* --- requests ending ---------------------------------------------------------------- */

static void
conn_free(struct conn *c)
{
    struct lm_upplain *p = c->p;
    if (p->nfree_conns >= FREE_CONNS_MAX || p->up->freeing) {
        event_free(c->ev);
        free(c);
        return;
    }
    c->next_free = p->free_conns;
    p->free_conns = c;
    p->nfree_conns++;
}

static void
origin_release(struct lm_upplain *p, struct origin *o)
{
    if (o->refs || p->norigins <= ORIGINS_KEEP || p->up->freeing)
        return;
    link_del(&o->all);
    p->norigins--;
    free(o);
}

/* Closes: the runtime sees the connection go. */
static void
conn_close(struct conn *c)
{
    struct lm_upplain *p = c->p;
    if (c->watch) {
        event_del(c->ev);
        c->watch = 0;
    }
    close(c->fd);
    c->fd = -1;
    if (link_linked(&c->idle)) {
        link_del(&c->idle);
        c->o->nidle--;
        p->nidle--;
    }
    c->o->refs--;
    origin_release(p, c->o);
    c->o = NULL;
    c->r = NULL;
    conn_free(c);
}

static void
conn_watch(struct conn *c, short flags)
{
    /* Urgent until the first body byte: see LM_PRIO_URGENT. */
    int prio = c->r && c->r->received == 0 ? LM_PRIO_URGENT : LM_PRIO_BULK;
    if (c->watch == flags) {
        if (flags)
            event_priority_set(c->ev, prio);
        return;
    }
    if (c->watch)
        event_del(c->ev);
    c->watch = flags;
    if (!flags)
        return;
    event_assign(c->ev, c->p->base, c->fd, (short)(flags | EV_PERSIST), conn_cb, c);
    event_priority_set(c->ev, prio);
    if (event_add(c->ev, NULL) != 0)
        log_error("cannot watch socket %d", c->fd);
}

static void
sweep_arm(struct lm_upplain *p)
{
    if (!evtimer_pending(p->sweep, NULL)) {
        struct timeval tv = {SWEEP_MS / 1000, 0};
        evtimer_add(p->sweep, &tv);
    }
}

/* Idle again, or closed when the pool is full. */
static void
conn_put(struct conn *c)
{
    struct lm_upplain *p = c->p;
    struct origin *o = c->o;
    c->r = NULL;
    if (o->nidle >= ORIGIN_IDLE_MAX || p->nidle >= IDLE_MAX || p->up->freeing) {
        conn_close(c);
        return;
    }
    c->reused = true;
    c->idle_since_ms = lm_now_ms();
    conn_watch(c, EV_READ);
    link_add_head(&o->idle, &c->idle);
    o->nidle++;
    p->nidle++;
    sweep_arm(p);
}

static void
req_destroy(struct preq *r)
{
    event_free(r->t_connect);
    event_free(r->t_first);
    event_free(r->t_total);
    event_free(r->defer);
    lm_buf_release(&r->out);
    lm_buf_release(&r->held);
    lm_buf_release(&r->pub.resphead);
    free(r);
}

static void
recycle(struct preq *r)
{
    struct lm_upplain *p = r->p;
    r->state = P_IDLE;
    if (p->nfree_reqs >= LM_UP_FREE_REQS_MAX || p->up->freeing) {
        req_destroy(r);
        return;
    }
    if (r->out.cap > LM_UP_KEEP_BUF_CAP)
        lm_buf_release(&r->out);
    r->next_free = p->free_reqs;
    p->free_reqs = r;
    p->nfree_reqs++;
}

/* Out of every list and timer; the connection pooled (keep) or closed. */
static void
detach(struct preq *r, bool keep)
{
    struct lm_upplain *p = r->p;
    r->state = P_DONE;
    evtimer_del(r->t_connect);
    evtimer_del(r->t_first);
    evtimer_del(r->t_total);
    evtimer_del(r->defer);
    r->deferred = false;
    if (link_linked(&r->live))
        link_del(&r->live);
    if (link_linked(&r->wait))
        link_del(&r->wait);
    if (r->counted) {
        r->counted = false;
        p->active--;
    }
    struct conn *c = r->c;
    r->c = NULL;
    if (c) {
        if (keep)
            conn_put(c);
        else
            conn_close(c);
    }
    if (r->o) {
        r->o->refs--;
        origin_release(p, r->o);
        r->o = NULL;
    }
}

static void
finish(struct preq *r, int err, const char *msg)
{
    bool keep = false;
    if (err == 0 && r->c && r->sent == r->out.len && !r->c->connecting)
        keep = r->fast == F_BODY ? !r->fast_close : http_should_keep_alive(&r->parser) != 0;
    detach(r, keep);
    if (err && !r->cancelled)
        log_debug("request failed: %s (%d)", msg ? msg : "", err);
    if (!r->cancelled && r->cbs.on_done)
        r->cbs.on_done(&r->pub, err, msg ? msg : "", r->arg);
    recycle(r);
}

/* A verdict found where no callback may run (inside start): delivered from
 * a zero timer on the next turn of the loop. */
static void
defer_error(struct preq *r, int err, const char *msg)
{
    if (!r->err) {
        r->err = err;
        r->errmsg = msg;
    }
    if (r->c) {
        conn_close(r->c);
        r->c = NULL;
    }
    static const struct timeval zero = {0, 0};
    r->deferred = true;
    evtimer_add(r->defer, &zero);
}

/* --- parsing ------------------------------------------------------------------------ */

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static struct preq *
req_of(http_parser *hp)
{
    return hp->data;
}

static int
fail_in_cb(struct preq *r, int err, const char *msg)
{
    if (!r->err) {
        r->err = err;
        r->errmsg = msg;
    }
    return -1;
}

/* Header bytes of every message (1xx, final, trailers) count towards one
 * cap, as curl's path counts them. */
static int
count_head(struct preq *r, size_t n)
{
    if (n > LM_UP_HEAD_CAP - r->head_bytes)
        return fail_in_cb(r, -EPROTO, "response headers too large");
    r->head_bytes += n;
    return 0;
}

static int
on_status(http_parser *hp, const char *at, size_t n)
{
    (void)at;
    return count_head(req_of(hp), n);
}

static int
end_value(struct preq *r)
{
    struct lm_buf *b = &r->pub.resphead;
    while (b->len > r->vstart && is_ows(b->data[b->len - 1]))
        b->len--;
    r->hstate = H_NONE;
    if (lm_buf_append(b, "", 1))
        return fail_in_cb(r, -EPROTO, "response headers too large");
    return 0;
}

static int
on_header_field(http_parser *hp, const char *at, size_t n)
{
    struct preq *r = req_of(hp);
    if (count_head(r, n))
        return -1;
    if (r->pub.head_done)
        return 0; /* trailers: counted, not kept */
    if (r->hstate == H_VALUE && end_value(r))
        return -1;
    r->hstate = H_FIELD;
    if (lm_buf_append(&r->pub.resphead, at, n))
        return fail_in_cb(r, -EPROTO, "response headers too large");
    return 0;
}

static int
on_header_value(http_parser *hp, const char *at, size_t n)
{
    struct preq *r = req_of(hp);
    struct lm_buf *b = &r->pub.resphead;
    if (count_head(r, n))
        return -1;
    if (r->pub.head_done)
        return 0;
    if (r->hstate == H_FIELD) {
        if (lm_buf_append(b, "", 1))
            return fail_in_cb(r, -EPROTO, "response headers too large");
        r->hstate = H_VALUE;
        r->vstart = b->len;
    }
    if (memchr(at, '\0', n))
        return fail_in_cb(r, -EPROTO, "NUL in a response header");
    /* Leading OWS; an obs-fold arrives as more of the value, after one
     * space (RFC 9112 §5.2). */
    while (b->len == r->vstart && n && is_ows(*at)) {
        at++;
        n--;
    }
    if (lm_buf_append(b, at, n))
        return fail_in_cb(r, -EPROTO, "response headers too large");
    return 0;
}

static int head_complete(struct preq *r, int status, uint64_t content_length);

static int
on_headers_complete(http_parser *hp)
{
    struct preq *r = req_of(hp);
    if (r->pub.head_done)
        return 0; /* after trailers */
    if (r->hstate == H_VALUE && end_value(r))
        return -1;
    r->hstate = H_NONE;
    return head_complete(r, hp->status_code, hp->content_length);
}

/* The final head is in: 1 (no body, from a 1xx), 0, or -1 (ended). */
static int
head_complete(struct preq *r, int status, uint64_t content_length)
{
    if (status == 101)
        return fail_in_cb(r, -EPROTO, "unexpected 101 Switching Protocols");
    if (status < 200) {
        /* 1xx: the real response follows; 1 tells the parser no body. */
        r->interim = true;
        lm_buf_reset(&r->pub.resphead);
        return 1;
    }
    if (r->max && content_length != ULLONG_MAX && content_length > r->max) {
        snprintf(r->msg, sizeof(r->msg), "response larger than %zu bytes", r->max);
        return fail_in_cb(r, -EMSGSIZE, r->msg);
    }
    r->pub.head_done = true;
    evtimer_del(r->t_first);
    if (r->cbs.on_head)
        r->cbs.on_head(&r->pub, status, r->arg);
    if (r->cancelled)
        return -1;
    if (r->paused && r->fast != F_BODY)
        http_parser_pause(&r->parser, 1);
    return 0;
}

static int body(struct preq *r, const char *at, size_t n);

static int
on_body(http_parser *hp, const char *at, size_t n)
{
    struct preq *r = req_of(hp);
    int rc = body(r, at, n);
    if (rc == 0 && r->paused)
        http_parser_pause(hp, 1);
    return rc;
}

static int
body(struct preq *r, const char *at, size_t n)
{
    if (r->max && n > r->max - r->received) {
        snprintf(r->msg, sizeof(r->msg), "response larger than %zu bytes", r->max);
        return fail_in_cb(r, -EMSGSIZE, r->msg);
    }
    if (r->received == 0 && n && r->c) /* no connection when fuzzed */
        event_priority_set(r->c->ev, LM_PRIO_BULK);
    r->received += n;
    if (r->cbs.on_data && n)
        r->cbs.on_data(&r->pub, at, n, r->arg);
    if (r->cancelled)
        return -1;
    return 0;
}

static int
on_message_complete(http_parser *hp)
{
    struct preq *r = req_of(hp);
    if (r->interim) {
        r->interim = false;
        return 0;
    }
    /* Stop here: whatever follows is not ours. */
    r->complete = true;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* A cancelled request leaves: its connection is closed, never pooled. */
static void
drop(struct preq *r)
{
    detach(r, false);
    recycle(r);
}

/* Byte classes of the response head, looked up once a byte: bit 1 a token
 * byte (RFC 9110 tchar), bit 2 a value byte (visible ASCII, SP, HTAB). Bytes
 * from 0x80 up are neither. */
static const unsigned char head_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 3, 2, 3, 3, 3, 3, 3, 2, 2, 3, 3, 2, 3, 3, 2,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2,
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 2, 3, 0,
};

static bool
is_tchar(unsigned char c)
{
    return head_class[c] & 1;
}

static bool
is_vchar(unsigned char c)
{
    return head_class[c] & 2;
}

/* The common answer, read without http_parser: a whole head in the first
 * read, "HTTP/1.1 NNN reason" with a status in 200..599 but 204 and 304,
 * plain "name: value" lines, exactly one Content-Length, no
 * Transfer-Encoding, and Connection (if any) "close" or "keep-alive". The
 * head is stored as the callbacks store it. Returns the head's length, or
 * 0: anything else, which goes to http_parser from its first byte as
 * before. */
static size_t
fast_head(struct preq *r, const char *d, size_t n, int *status, uint64_t *clen)
{
    const unsigned char *u = (const unsigned char *)d;
    struct lm_buf *b = &r->pub.resphead;
    size_t counted, i;
    bool have_len = false, close = false;

    if (n < 16 || memcmp(d, "HTTP/1.1 ", 9) != 0 || !isdigit(u[9]) || !isdigit(u[10]) ||
        !isdigit(u[11]) || u[12] != ' ')
        return 0;
    *status = (u[9] - '0') * 100 + (u[10] - '0') * 10 + (u[11] - '0');
    if (*status < 200 || *status > 599 || *status == 204 || *status == 304)
        return 0;
    for (i = 13; i < n && is_vchar(u[i]); i++)
        ;
    if (i + 1 >= n || u[i] != '\r' || u[i + 1] != '\n')
        return 0;
    counted = i - 13;
    i += 2;
    for (;;) {
        if (i + 1 >= n)
            goto no;
        if (u[i] == '\r') {
            if (u[i + 1] != '\n')
                goto no;
            i += 2;
            break;
        }
        size_t name = i;
        while (i < n && is_tchar(u[i]))
            i++;
        size_t name_len = i - name;
        if (name_len == 0 || i >= n || u[i] != ':')
            goto no;
        i++;
        while (i < n && (u[i] == ' ' || u[i] == '\t'))
            i++;
        size_t val = i;
        while (i < n && is_vchar(u[i]))
            i++;
        if (i + 1 >= n || u[i] != '\r' || u[i + 1] != '\n')
            goto no;
        size_t raw_len = i - val, val_len = raw_len;
        while (val_len > 0 && is_ows(d[val + val_len - 1]))
            val_len--;
        i += 2;
        if (val_len == 0)
            goto no;
        const char *nm = d + name, *v = d + val;
        if (name_len == 14 && strncasecmp(nm, "content-length", 14) == 0) {
            /* http_parser takes no tab after the digits: let it say so. */
            if (have_len || val_len > 18 || val_len != raw_len)
                goto no;
            *clen = 0;
            for (size_t k = 0; k < val_len; k++) {
                if (!isdigit((unsigned char)v[k]))
                    goto no;
                *clen = *clen * 10 + (uint64_t)(v[k] - '0');
            }
            have_len = true;
        } else if ((name_len == 10 && strncasecmp(nm, "connection", 10) == 0) ||
                   (name_len == 16 && strncasecmp(nm, "proxy-connection", 16) == 0)) {
            if (val_len == 5 && strncasecmp(v, "close", 5) == 0)
                close = true;
            else if (!(val_len == 10 && strncasecmp(v, "keep-alive", 10) == 0))
                goto no;
        } else if ((name_len == 17 && strncasecmp(nm, "transfer-encoding", 17) == 0) ||
                   (name_len == 7 && strncasecmp(nm, "upgrade", 7) == 0)) {
            goto no;
        }
        counted += name_len + val_len;
        /* One append for the usual short pair: it runs for every header of
         * every response. */
        char pair[256];
        if (name_len + val_len + 2 <= sizeof(pair)) {
            memcpy(pair, nm, name_len);
            pair[name_len] = '\0';
            memcpy(pair + name_len + 1, v, val_len);
            pair[name_len + 1 + val_len] = '\0';
            if (lm_buf_append(b, pair, name_len + val_len + 2))
                goto no;
        } else if (lm_buf_append(b, nm, name_len) || lm_buf_append(b, "", 1) ||
                   lm_buf_append(b, v, val_len) || lm_buf_append(b, "", 1)) {
            goto no;
        }
    }
    if (!have_len || counted > LM_UP_HEAD_CAP - r->head_bytes)
        goto no;
    r->head_bytes += counted;
    r->fast_close = close;
    return i;
no:
    lm_buf_reset(b);
    return 0;
}

/* The body of a fast_head answer: Content-Length bytes, then the end. */
static size_t
fast_body(struct preq *r, const char *d, size_t n)
{
    size_t k = n < r->fast_left ? n : (size_t)r->fast_left;
    if (k > 0 && body(r, d, k) < 0)
        return k;
    r->fast_left -= k;
    if (r->fast_left == 0)
        r->complete = true;
    return k;
}

/* Runs fast_head and fast_body where they apply. Returns true when they
 * did (*used set), false when http_parser is to run. */
static bool
parse_fast(struct preq *r, const char *d, size_t n, size_t *used)
{
    size_t k = 0;
    if (r->fast == F_TRY) {
        int status;
        uint64_t clen;
        k = n ? fast_head(r, d, n, &status, &clen) : 0;
        if (k == 0) {
            r->fast = F_OFF;
            return false;
        }
        r->fast = F_BODY;
        r->fast_left = clen;
        if (head_complete(r, status, clen) < 0 || r->paused) {
            *used = k;
            return true;
        }
    }
    if (r->fast_left == 0)
        r->complete = true; /* also when a pause came just before the end */
    else if (k < n)
        k += fast_body(r, d + k, n - k);
    *used = k;
    return true;
}

/* Runs the parser over n bytes (n 0: the runtime closed). Returns true while
 * r still runs, with *used the bytes consumed: all of them, or fewer when
 * the caller paused. False when r has ended (and may be reused). */
static bool
parse(struct preq *r, const char *d, size_t n, size_t *used)
{
    struct lm_upplain *p = r->p;
    size_t k;
    enum http_errno e = HPE_OK;
    if (r->fast != F_OFF && parse_fast(r, d, n, &k)) {
        if (r->paused && !r->complete && !r->cancelled && !r->err)
            e = HPE_PAUSED;
    } else {
        p->cur = r;
        k = http_parser_execute(&r->parser, &settings, d, n);
        p->cur = NULL;
        e = HTTP_PARSER_ERRNO(&r->parser);
    }
    *used = k;
    if (r->cancelled) {
        drop(r);
        return false;
    }
    if (r->err) {
        finish(r, r->err, r->errmsg);
        return false;
    }
    if (r->complete) {
        if (k < n && r->c) {
            /* Bytes past the response: the connection is not reusable. */
            conn_close(r->c);
            r->c = NULL;
        }
        finish(r, 0, NULL);
        return false;
    }
    if (n == 0) {
        /* EOF short of the end (the parser says HPE_INVALID_EOF_STATE). */
        finish(r, -ECONNRESET, r->pub.head_done ? "connection closed mid-body"
                                                : "connection closed mid-headers");
        return false;
    }
    if (e == HPE_PAUSED)
        return true;
    if (e != HPE_OK) {
        snprintf(r->msg, sizeof(r->msg), "bad response: %s", http_errno_description(e));
        finish(r, -EPROTO, r->msg);
        return false;
    }
    return true;
}

/* --- the connection's events ----------------------------------------------------------- */

static void
watch_for(struct preq *r)
{
    short f = 0;
    if (r->c->connecting || r->sent < r->out.len)
        f |= EV_WRITE;
    if (!r->c->connecting && !r->paused)
        f |= EV_READ;
    conn_watch(r->c, f);
}

/* The connection ended before any byte of the response: once, on a reused
 * connection, the runtime may have closed it as we picked it up. */
static void
broken(struct preq *r, int err, const char *msg, bool in_start)
{
    if (!r->got_bytes && r->c && r->c->reused && !r->retried) {
        r->retried = true;
        conn_close(r->c);
        r->c = NULL;
        r->addr_i = 0;
        r->sent = 0;
        r->hstate = H_NONE;
        r->head_bytes = 0;
        http_parser_init(&r->parser, HTTP_RESPONSE);
        r->parser.data = r;
        conn_open(r);
        return;
    }
    if (in_start)
        defer_error(r, err, msg);
    else
        finish(r, err, msg);
}

static void
send_more(struct preq *r, bool in_start)
{
    struct conn *c = r->c;
    while (r->sent < r->out.len) {
        ssize_t n = send(c->fd, r->out.data + r->sent, r->out.len - r->sent, MSG_NOSIGNAL);
        if (n > 0) {
            r->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        broken(r, -ECONNRESET, "connection broke while sending", in_start);
        return;
    }
    watch_for(r);
}

static void
send_some(struct preq *r)
{
    send_more(r, false);
}

/* n bytes of response (at most RECV_BUF, one recv), or EOF when n is 0. */
static void
received(struct preq *r, const char *d, size_t n)
{
    if (n == 0 && !r->got_bytes) {
        broken(r, -ECONNRESET, "connection closed before a response", false);
        return;
    }
    r->got_bytes = true;
    size_t used;
    if (!parse(r, d, n, &used))
        return;
    if (used < n) {
        /* Paused from a callback: keep the rest for resume. */
        lm_buf_reset(&r->held);
        r->held_off = 0;
        lm_buf_append(&r->held, d + used, n - used);
    }
    if (r->c)
        watch_for(r);
}

static void
read_some(struct preq *r)
{
    struct lm_upplain *p = r->p;
    ssize_t n = recv(r->c->fd, p->rbuf, sizeof(p->rbuf), 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        broken(r, -ECONNRESET, errno == ECONNRESET ? "connection reset" : "receive failed",
               false);
        return;
    }
    received(r, p->rbuf, (size_t)n);
}

static void
connected(struct preq *r)
{
    struct conn *c = r->c;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        soerr = errno;
    if (soerr) {
        if (r->addr_i + 1 < r->o->naddrs) {
            conn_close(c);
            r->c = NULL;
            r->addr_i++;
            conn_open(r);
            return;
        }
        snprintf(r->msg, sizeof(r->msg), "cannot connect to %.64s: %s", r->o->key,
                 strerror(soerr));
        finish(r, -ECONNREFUSED, r->msg);
        return;
    }
    c->connecting = false;
    evtimer_del(r->t_connect);
    send_some(r);
}

/* Bytes or EOF on an idle connection: the runtime closed it or is talking
 * out of turn. Either way it is no use any more. */
static void
idle_event(struct conn *c)
{
    char b[64];
    ssize_t n = recv(c->fd, b, sizeof(b), 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    conn_close(c);
}

static void
conn_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct conn *c = arg;
    struct lm_upstream *up = c->p->up;
    lm_upstream_enter_(up);
    struct preq *r = c->r;
    if (!r) {
        idle_event(c);
    } else if (c->connecting) {
        connected(r);
    } else {
        if ((what & EV_WRITE) && r->sent < r->out.len) {
            send_some(r);
            /* r may have ended, or moved to a fresh connection (which may
             * be this struct again, connecting). */
            if (r->state != P_RUNNING || r->c != c || c->connecting)
                goto out;
        }
        if ((what & EV_READ) && !r->paused)
            read_some(r);
    }
out:
    lm_upstream_leave_(up);
}

static void resolve(struct preq *r);

static void
connect_timer_arm(struct preq *r)
{
    if (evtimer_pending(r->t_connect, NULL))
        return;
    unsigned ms = r->connect_ms;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(r->t_connect, &tv);
}

/* A fresh connection for r; errors arrive through finish or defer. */
static void
conn_open(struct preq *r)
{
    struct lm_upplain *p = r->p;
    struct origin *o = r->o;
    if (o->named && (o->naddrs == 0 || lm_now_ms() - o->resolved_ms >= DNS_TTL_MS)) {
        resolve(r);
        return;
    }
    if (r->addr_i >= o->naddrs)
        r->addr_i = 0;
    const struct sockaddr_storage *sa = &o->addrs[r->addr_i];
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(r->msg, sizeof(r->msg), "socket: %s", strerror(errno));
        defer_error(r, -EIO, r->msg);
        return;
    }
    int one = 1, idle = 60, intvl = 30;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    struct conn *c = p->free_conns;
    if (c) {
        p->free_conns = c->next_free;
        p->nfree_conns--;
    } else {
        c = lm_xcalloc(1, sizeof(*c));
        c->p = p;
        c->ev = event_new(p->base, -1, 0, conn_cb, c);
        if (!c->ev)
            abort(); /* out of memory */
    }
    c->fd = fd;
    c->o = o;
    c->r = r;
    c->watch = 0;
    c->reused = false;
    c->connecting = true;
    link_init(&c->idle);
    o->refs++;
    r->c = c;
    if (connect(fd, (const struct sockaddr *)sa, o->alens[r->addr_i]) == 0) {
        c->connecting = false;
        evtimer_del(r->t_connect);
        send_more(r, true);
        return;
    }
    if (errno != EINPROGRESS) {
        int e = errno;
        if (r->addr_i + 1 < o->naddrs) {
            conn_close(c);
            r->c = NULL;
            r->addr_i++;
            conn_open(r);
            return;
        }
        snprintf(r->msg, sizeof(r->msg), "cannot connect to %.64s: %s", o->key, strerror(e));
        defer_error(r, -ECONNREFUSED, r->msg);
        return;
    }
    connect_timer_arm(r);
    conn_watch(c, EV_WRITE);
}

/* --- host names ------------------------------------------------------------------------- */

static void
dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct origin *o = arg;
    if (result == EVUTIL_EAI_CANCEL) {
        /* From lm_upplain_destroy, which frees o itself. */
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    struct lm_upplain *p = o->p;
    o->dns_busy = false;
    o->resolving = NULL;
    o->naddrs = 0;
    for (struct evutil_addrinfo *ai = res; ai && o->naddrs < ADDRS_MAX; ai = ai->ai_next) {
        struct sockaddr_storage *ss = &o->addrs[o->naddrs];
        if (ai->ai_family == AF_INET && ai->ai_addrlen == sizeof(struct sockaddr_in)) {
            memcpy(ss, ai->ai_addr, ai->ai_addrlen);
            ((struct sockaddr_in *)ss)->sin_port = htons(o->port);
        } else if (ai->ai_family == AF_INET6 && ai->ai_addrlen == sizeof(struct sockaddr_in6)) {
            memcpy(ss, ai->ai_addr, ai->ai_addrlen);
            ((struct sockaddr_in6 *)ss)->sin6_port = htons(o->port);
        } else {
            continue;
        }
        o->alens[o->naddrs++] = (socklen_t)ai->ai_addrlen;
    }
    if (res)
        evutil_freeaddrinfo(res);
    if (o->naddrs)
        o->resolved_ms = lm_now_ms();
    else
        log_debug("cannot resolve %s: %s", o->host, evutil_gai_strerror(result));
    while (link_linked(&o->waiters)) {
        struct preq *r = LINK_ENTRY(o->waiters.next, struct preq, wait);
        link_del(&r->wait);
        r->addr_i = 0;
        if (o->naddrs)
            conn_open(r);
        else
            defer_error(r, -ECONNREFUSED, "cannot resolve the host name");
    }
    o->refs--; /* the resolution's */
    origin_release(p, o);
}

/* r waits for its origin's addresses; one resolution serves every waiter.
 * The answer may come at once (/etc/hosts), inside this call. */
static void
resolve(struct preq *r)
{
    struct lm_upplain *p = r->p;
    struct origin *o = r->o;
    connect_timer_arm(r);
    link_add_tail(&o->waiters, &r->wait);
    if (o->dns_busy)
        return;
    if (!p->dns) {
        p->dns = evdns_base_new(p->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!p->dns) {
            link_del(&r->wait);
            defer_error(r, -EIO, "cannot start the resolver");
            return;
        }
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    o->dns_busy = true;
    o->refs++;
    struct evdns_getaddrinfo_request *q = evdns_getaddrinfo(p->dns, o->host, NULL, &hints,
                                                            dns_cb, o);
    if (o->dns_busy) {
        if (q) {
            o->resolving = q;
        } else {
            /* Neither answered nor under way. */
            o->naddrs = 0;
            dns_cb(EVUTIL_EAI_FAIL, NULL, o);
        }
    }
}

/* --- timers ----------------------------------------------------------------------------- */

static void
timer_end(struct preq *r, int err, const char *msg)
{
    struct lm_upstream *up = r->p->up;
    lm_upstream_enter_(up);
    finish(r, err, msg);
    lm_upstream_leave_(up);
}

static void
t_connect_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct preq *r = arg;
    if (r->state != P_RUNNING || !(link_linked(&r->wait) || (r->c && r->c->connecting)))
        return;
    snprintf(r->msg, sizeof(r->msg), "no connection within %u ms", r->connect_ms);
    timer_end(r, -ETIMEDOUT, r->msg);
}

static void
t_first_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct preq *r = arg;
    if (r->state != P_RUNNING || r->pub.head_done)
        return;
    snprintf(r->msg, sizeof(r->msg), "no response headers within %u ms", r->first_byte_ms);
    timer_end(r, -ETIMEDOUT, r->msg);
}

static void
t_total_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct preq *r = arg;
    if (r->state != P_RUNNING)
        return;
    snprintf(r->msg, sizeof(r->msg), "no complete response within %u ms", r->total_ms);
    timer_end(r, -ETIMEDOUT, r->msg);
}

/* A deferred error, or a resume: parse what was held, then read again. */
static void
defer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct preq *r = arg;
    struct lm_upstream *up = r->p->up;
    r->deferred = false;
    if (r->state != P_RUNNING)
        return;
    lm_upstream_enter_(up);
    if (r->err) {
        finish(r, r->err, r->errmsg);
        goto out;
    }
    /* No connection: waiting for one (nothing held, the parser fresh), or
     * a fed request (lm_upplain_feed_), whose held bytes are parsed here. */
    if (r->paused)
        goto out;
    if (HTTP_PARSER_ERRNO(&r->parser) == HPE_PAUSED)
        http_parser_pause(&r->parser, 0);
    if (r->held_off < r->held.len) {
        size_t used;
        if (!parse(r, r->held.data + r->held_off, r->held.len - r->held_off, &used))
            goto out;
        r->held_off += used;
        if (r->held_off == r->held.len) {
            lm_buf_reset(&r->held);
            r->held_off = 0;
        }
    }
    if (r->c && !r->c->connecting)
        watch_for(r);
out:
    lm_upstream_leave_(up);
}

/* --- starting ---------------------------------------------------------------------------- */

static int
req_get(struct lm_upplain *p, struct preq **out)
{
    struct preq *r = p->free_reqs;
    if (r) {
        p->free_reqs = r->next_free;
        p->nfree_reqs--;
        *out = r;
        return 0;
    }
    r = lm_xcalloc(1, sizeof(*r));
    r->p = p;
    r->pub.u = p->up;
    r->pub.curl = false;
    lm_buf_init(&r->out, 0);
    lm_buf_init(&r->held, RECV_BUF);
    lm_buf_init(&r->pub.resphead, LM_UP_HEAD_CAP);
    link_init(&r->live);
    link_init(&r->wait);
    r->t_connect = evtimer_new(p->base, t_connect_cb, r);
    r->t_first = evtimer_new(p->base, t_first_cb, r);
    r->t_total = evtimer_new(p->base, t_total_cb, r);
    r->defer = evtimer_new(p->base, defer_cb, r);
    if (!r->t_connect || !r->t_first || !r->t_total || !r->defer) {
        if (r->t_connect)
            event_free(r->t_connect);
        if (r->t_first)
            event_free(r->t_first);
        if (r->t_total)
            event_free(r->t_total);
        if (r->defer)
            event_free(r->defer);
        lm_buf_release(&r->out);
        lm_buf_release(&r->held);
        lm_buf_release(&r->pub.resphead);
        free(r);
        return -ENOMEM;
    }
    *out = r;
    return 0;
}

/* A DNS name as runtimes are named: letters, digits, '-', '.', '_'. Anything
 * else (IDN, zone ids, oddities) is left to curl. */
static bool
plain_name(const char *h, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

/* The origin of "host:port", made on first use. -EAGAIN for what curl
 * should take (userinfo, odd hosts), -EINVAL for a port out of range. */
static int
origin_get(struct lm_upplain *p, const char *auth, size_t alen, struct origin **out)
{
    for (struct link *l = p->origins.next; l != &p->origins; l = l->next) {
        struct origin *o = LINK_ENTRY(l, struct origin, all);
        if (o->keylen == alen && memcmp(o->key, auth, alen) == 0) {
            if (l != p->origins.next) {
                link_del(l);
                link_add_head(&p->origins, l);
            }
            *out = o;
            return 0;
        }
    }
    if (alen == 0 || alen > AUTHORITY_MAX || memchr(auth, '@', alen))
        return -EAGAIN;
    char host[AUTHORITY_MAX + 1];
    const char *port = NULL;
    size_t hlen;
    if (auth[0] == '[') {
        const char *rb = memchr(auth, ']', alen);
        if (!rb)
            return -EAGAIN;
        hlen = (size_t)(rb - auth - 1);
        memcpy(host, auth + 1, hlen);
        if ((size_t)(rb + 1 - auth) < alen) {
            if (rb[1] != ':')
                return -EAGAIN;
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(auth, ':', alen);
        hlen = colon ? (size_t)(colon - auth) : alen;
        memcpy(host, auth, hlen);
        if (colon)
            port = colon + 1;
    }
    host[hlen] = '\0';
    unsigned long pn = 80;
    if (port && port < auth + alen) {
        pn = 0;
        for (const char *s = port; s < auth + alen; s++) {
            if (*s < '0' || *s > '9' || pn > 65535)
                return -EINVAL;
            pn = pn * 10 + (unsigned long)(*s - '0');
        }
        if (pn == 0 || pn > 65535)
            return -EINVAL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl = 0;
    bool named = false;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)pn);
        sl = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)pn);
        sl = sizeof(*sin6);
    } else if (auth[0] != '[' && plain_name(host, hlen)) {
        named = true;
    } else {
        return -EAGAIN;
    }
    struct origin *o = lm_xcalloc(1, sizeof(*o));
    o->p = p;
    link_init(&o->idle);
    link_init(&o->waiters);
    o->named = named;
    o->port = (uint16_t)pn;
    if (!named) {
        o->addrs[0] = ss;
        o->alens[0] = sl;
        o->naddrs = 1;
    }
    memcpy(o->host, host, hlen + 1);
    o->keylen = alen;
    memcpy(o->key, auth, alen);
    link_add_head(&p->origins, &o->all);
    p->norigins++;
    *out = o;
    return 0;
}

/* Pieces of the request head gathered on the stack and appended to the
 * output buffer in few calls: the head is built for every request. */
struct head {
    struct lm_buf *b;
    size_t n;
    int rc;
    char d[1024];
};

static void
head_flush(struct head *h)
{
    if (!h->rc && h->n)
        h->rc = lm_buf_append(h->b, h->d, h->n);
    h->n = 0;
}

static void
head_put(struct head *h, const void *p, size_t n)
{
    if (h->rc)
        return;
    if (n > sizeof(h->d) - h->n) {
        head_flush(h);
        if (!h->rc && n > sizeof(h->d))
            h->rc = lm_buf_append(h->b, p, n);
        if (h->rc || n > sizeof(h->d))
            return;
    }
    memcpy(h->d + h->n, p, n);
    h->n += n;
}

/* "METHOD path HTTP/1.1", Host, Content-Length, the caller's headers,
 * Connection, then the body: one buffer, one send. */
static int
format(struct preq *r, const struct lm_upstream_opts *o, const char *path, size_t plen)
{
    struct head h;
    bool post = o->method[0] == 'P';
    bool host = false;
    h.b = &r->out;
    h.n = 0;
    h.rc = 0;
    lm_buf_reset(h.b);
    head_put(&h, post ? "POST " : "GET ", post ? 5 : 4);
    if (plen == 0 || path[0] == '?')
        head_put(&h, "/", 1); /* "http://h:1?q" asks for "/?q" */
    head_put(&h, path, plen);
    head_put(&h, " HTTP/1.1\r\n", 11);
    for (size_t i = 0; i < LM_UPSTREAM_MAX_HEADERS && o->headers[i]; i++)
        if (strncasecmp(o->headers[i], "host:", 5) == 0)
            host = true;
    if (!host) {
        head_put(&h, "Host: ", 6);
        head_put(&h, r->o->key, r->o->keylen);
        head_put(&h, "\r\n", 2);
    }
    if (post) {
        char num[24];
        size_t k = sizeof(num);
        size_t v = o->body_len;
        do {
            num[--k] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        head_put(&h, "Content-Length: ", 16);
        head_put(&h, num + k, sizeof(num) - k);
        head_put(&h, "\r\n", 2);
    }
    for (size_t i = 0; i < LM_UPSTREAM_MAX_HEADERS && o->headers[i]; i++) {
        head_put(&h, o->headers[i], strlen(o->headers[i]));
        head_put(&h, "\r\n", 2);
    }
    head_put(&h, "Connection: keep-alive\r\n\r\n", 26);
    head_flush(&h);
    int rc = h.rc;
    if (post && o->body_len)
        rc = rc ? rc : lm_buf_append(h.b, o->body, o->body_len);
    return rc ? -EINVAL : 0;
}

static void
timer_arm(struct event *ev, unsigned ms)
{
    if (!ms)
        return;
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

/* A request from the free list made ready to run; not yet connected. */
static void
req_begin(struct preq *r, const struct lm_upstream_opts *o, const struct lm_upstream_cbs *cbs,
          void *arg, struct origin *org)
{
    struct lm_upplain *p = r->p;
    r->state = P_RUNNING;
    r->c = NULL;
    r->o = org;
    if (org)
        org->refs++;
    r->cancelled = r->paused = r->retried = r->got_bytes = false;
    r->interim = r->complete = r->deferred = r->pub.head_done = false;
    r->fast = F_TRY;
    r->hstate = H_NONE;
    r->addr_i = 0;
    r->err = 0;
    r->errmsg = NULL;
    r->received = r->head_bytes = r->sent = 0;
    r->max = o->max_response_bytes;
    r->first_byte_ms = o->first_byte_timeout_ms;
    r->total_ms = o->total_timeout_ms;
    r->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : LM_UP_CONNECT_MS_DEFAULT;
    r->cbs = *cbs;
    r->arg = arg;
    r->msg[0] = '\0';
    r->held_off = 0;
    lm_buf_reset(&r->held);
    lm_buf_reset(&r->pub.resphead);
    http_parser_init(&r->parser, HTTP_RESPONSE);
    r->parser.data = r;
    link_add_tail(&p->live, &r->live);
    r->counted = true;
    p->active++;
}

int
lm_upplain_start(struct lm_upplain *p, const struct lm_upstream_opts *o,
                 const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out)
{
    /* The URL was checked: "http://" and no controls or spaces. */
    const char *auth = o->url + 7;
    size_t alen = strcspn(auth, "/?#");
    const char *path = auth + alen;
    size_t plen = strcspn(path, "#");
    struct origin *org = NULL;
    int orc = origin_get(p, auth, alen, &org);
    if (orc == -EAGAIN)
        return -EAGAIN;
    struct preq *r;
    int rc = req_get(p, &r);
    if (rc)
        return rc;
    req_begin(r, o, cbs, arg, org);
    *out = &r->pub;
    if (orc) {
        snprintf(r->msg, sizeof(r->msg), "bad port in URL");
        defer_error(r, -EIO, r->msg);
        return 0;
    }
    rc = org ? format(r, o, path, plen) : -EINVAL;
    if (rc) {
        /* Only the Host header can be too long here: check_opts bounds
         * the rest. Not a caller's mistake worth -EINVAL from start. */
        defer_error(r, -EIO, "cannot format the request");
        return 0;
    }
    timer_arm(r->t_first, r->first_byte_ms);
    timer_arm(r->t_total, r->total_ms);
    if (link_linked(&org->idle)) {
        struct conn *c = LINK_ENTRY(org->idle.next, struct conn, idle);
        link_del(&c->idle);
        org->nidle--;
        p->nidle--;
        c->r = r;
        r->c = c;
        send_more(r, true);
    } else {
        conn_open(r);
    }
    return 0;
}

/* --- the rest of the internal API ----------------------------------------------------- */

static void
sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_upplain *p = arg;
    uint64_t now = lm_now_ms();
    struct link *l = p->origins.next;
    while (l != &p->origins) {
        struct origin *o = LINK_ENTRY(l, struct origin, all);
        l = l->next; /* o may go with its last connection */
        while (link_linked(&o->idle)) {
            struct conn *c = LINK_ENTRY(o->idle.prev, struct conn, idle);
            if (now - c->idle_since_ms < IDLE_TIMEOUT_MS)
                break;
            conn_close(c);
        }
    }
    if (p->nidle)
        sweep_arm(p);
}

int
lm_upplain_new(struct lm_upplain **out, struct lm_upstream *up)
{
    struct lm_upplain *p = lm_xcalloc(1, sizeof(*p));
    p->up = up;
    p->base = up->base;
    link_init(&p->origins);
    link_init(&p->live);
    p->sweep = evtimer_new(p->base, sweep_cb, p);
    if (!p->sweep) {
        free(p);
        return -ENOMEM;
    }
    *out = p;
    return 0;
}

static struct preq *
preq_of(struct lm_upstream_req *pub)
{
    return (struct preq *)(void *)pub;
}

static bool
req_live(const struct preq *r)
{
    return !r->cancelled && r->state == P_RUNNING;
}

void
lm_upplain_cancel(struct lm_upstream_req *pub)
{
    struct preq *r = preq_of(pub);
    if (!req_live(r))
        return;
    struct lm_upplain *p = r->p;
    r->cancelled = true;
    if (r->counted) {
        r->counted = false;
        p->active--;
    }
    if (p->cur == r) {
        /* The parser is running for r: it stops at the next callback and
         * parse() closes the connection. */
        evtimer_del(r->t_first);
        evtimer_del(r->t_total);
        evtimer_del(r->defer);
        return;
    }
    drop(r);
}

void
lm_upplain_cancel_all(struct lm_upplain *p)
{
    struct link *l = p->live.next;
    while (l != &p->live) {
        struct link *next = l->next;
        lm_upplain_cancel(&LINK_ENTRY(l, struct preq, live)->pub);
        l = next;
    }
}

void
lm_upplain_destroy(struct lm_upplain *p)
{
    if (!p)
        return;
    while (link_linked(&p->live))
        drop(LINK_ENTRY(p->live.next, struct preq, live));
    while (link_linked(&p->origins)) {
        struct origin *o = LINK_ENTRY(p->origins.next, struct origin, all);
        if (o->resolving)
            evdns_getaddrinfo_cancel(o->resolving); /* dns_cb leaves o alone */
        while (link_linked(&o->idle))
            conn_close(LINK_ENTRY(o->idle.next, struct conn, idle));
        link_del(&o->all);
        free(o);
    }
    while (p->free_reqs) {
        struct preq *r = p->free_reqs;
        p->free_reqs = r->next_free;
        req_destroy(r);
    }
    while (p->free_conns) {
        struct conn *c = p->free_conns;
        p->free_conns = c->next_free;
        event_free(c->ev);
        free(c);
    }
    if (p->dns)
        evdns_base_free(p->dns, 0);
    event_free(p->sweep);
    free(p);
}

void
lm_upplain_pause(struct lm_upstream_req *pub)
{
    struct preq *r = preq_of(pub);
    if (!req_live(r))
        return;
    r->paused = true;
    if (r->deferred && !r->err) {
        evtimer_del(r->defer);
        r->deferred = false;
    }
    if (r->c && !r->c->connecting)
        watch_for(r);
}

void
lm_upplain_resume(struct lm_upstream_req *pub)
{
    struct preq *r = preq_of(pub);
    if (!req_live(r) || !r->paused)
        return;
    r->paused = false;
    if (!r->deferred) {
        static const struct timeval zero = {0, 0};
        r->deferred = true;
        evtimer_add(r->defer, &zero);
    }
}

unsigned
lm_upplain_active(const struct lm_upplain *p)
{
    return p ? p->active : 0;
}

/* --- without a socket (fuzzing) ----------------------------------------------------------- */

int
lm_upplain_start_fed_(struct lm_upplain *p, const struct lm_upstream_opts *o,
                      const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out)
{
    struct preq *r;
    int rc = req_get(p, &r);
    if (rc)
        return rc;
    req_begin(r, o, cbs, arg, NULL);
    r->sent = r->out.len; /* as if sent; nothing is */
    *out = &r->pub;
    return 0;
}

void
lm_upplain_feed_(struct lm_upstream_req *pub, const char *d, size_t n)
{
    struct preq *r = preq_of(pub);
    struct lm_upstream *up = r->p->up;
    if (!req_live(r) || r->paused || r->deferred || r->held_off < r->held.len)
        return; /* a socket is not read meanwhile */
    lm_upstream_enter_(up);
    received(r, d, n < RECV_BUF ? n : RECV_BUF);
    lm_upstream_leave_(up);
}
