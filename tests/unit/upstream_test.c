/* Unit tests for src/upstream over real sockets: a small scripted HTTP/1.1
 * server runs on the same libevent loop (or, for the CPU measurement, on its
 * own loop in a second thread) and answers by path. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "upstream/upstream.h"
#include "util/util.h"

/* --- the scripted server ---------------------------------------------------- */

enum mode { M_IDLE, M_CHUNKS, M_TICK, M_FLOOD, M_CLOSE_AFTER, M_SCRIPT };

struct conn {
    struct srv *s;
    struct bufferevent *bev;
    unsigned id;
    unsigned nreq;
    enum mode mode;
    struct event *tick;
    int ticks;
    bool have_head;
    size_t body_need;
    char path[128];
    size_t flood_added;
    const char *const *script; /* M_SCRIPT: pieces sent one per tick */
    bool drop_next;            /* close on the next request, unanswered */
    bool seen;                 /* some bytes arrived */
    struct conn *next;
};

struct srv {
    struct event_base *base;
    struct evconnlistener *lis;
    int port;
    unsigned accepted;
    unsigned requests;
    unsigned peer_closed; /* connections the client closed */
    uint64_t peer_closed_us;
    unsigned last_conn;       /* id of the connection of the last request */
    unsigned dropped;         /* requests closed on unanswered (drop_next) */
    unsigned char first_byte; /* of the last connection to send anything */
    char last_req[8192];      /* head and start of body of the last request */
    size_t last_body_len;
    size_t flood_flushed;     /* bytes of /flood handed to the kernel */
    size_t flood_pending;     /* bytes of /flood still in our output buffer */
    struct conn *conns;
};

static void conn_free(struct conn *c);

static void
srv_printf(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap);
    va_end(ap);
}

static void
chunk(struct conn *c, const char *data, size_t n)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    evbuffer_add_printf(out, "%zx\r\n", n);
    evbuffer_add(out, data, n);
    evbuffer_add(out, "\r\n", 2);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    if (c->mode == M_SCRIPT) {
        const char *piece = c->script[c->ticks++];
        if (piece)
            srv_printf(c, "%s", piece);
        if (!piece || !c->script[c->ticks]) {
            c->mode = M_IDLE;
            evtimer_del(c->tick);
        }
        return;
    }
    char line[32];
    int n = snprintf(line, sizeof(line), "tick %d\n", c->ticks);
    chunk(c, line, (size_t)n);
    c->ticks++;
    if (c->mode == M_CHUNKS && c->ticks == 5) {
        srv_printf(c, "0\r\n\r\n");
        c->mode = M_IDLE;
        evtimer_del(c->tick);
    }
}

static void
flood_fill(struct conn *c)
{
    static char block[16384];
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (block[0] == 0)
        memset(block, 'f', sizeof(block));
    while (evbuffer_get_length(out) < 2 * sizeof(block)) {
        chunk(c, block, sizeof(block));
        c->flood_added += sizeof(block);
    }
}

static void
flood_account(struct conn *c)
{
    size_t pending = evbuffer_get_length(bufferevent_get_output(c->bev));
    c->s->flood_pending = pending;
    c->s->flood_flushed = c->flood_added > pending ? c->flood_added - pending : 0;
}

/* Responses split where a parser is most easily caught out: mid-header,
 * mid-chunk-size, mid-chunk, between CR and LF. */
static const char *const split_chunked[] = {
    "HTTP/1.1 200 OK\r\nTransfer-", "Encoding: chunked\r\nX-Test: sp", "lit\r\n\r\n5\r\nhel",
    "lo\r\n", "6\r\n wor", "ld\r\n0\r", "\n\r\n", NULL};
static const char *const continue_then_ok[] = {
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 200 OK\r\nX-Test: final\r\nContent-Length: 2\r\n\r\nok", NULL};

static void
script(struct conn *c, const char *const *pieces)
{
    c->mode = M_SCRIPT;
    c->script = pieces;
    c->ticks = 0;
    struct timeval tv = {0, 20000};
    if (c->tick)
        event_free(c->tick);
    c->tick = event_new(c->s->base, -1, EV_PERSIST, tick_cb, c);
    evtimer_add(c->tick, &tv);
}

static void
respond(struct conn *c)
{
    struct srv *s = c->s;
    const char *p = c->path;
    s->requests++;
    s->last_conn = c->id;
    c->nreq++;
    if (strcmp(p, "/ok") == 0 || strcmp(p, "/ok-drop-next") == 0) {
        c->drop_next = p[3] != '\0';
        srv_printf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Test:  hello \r\n"
                      "X-Conn: %u\r\nContent-Length: 5\r\n\r\nhello", c->id);
    } else if (strcmp(p, "/echo") == 0) {
        size_t n = strlen(s->last_req);
        srv_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", n, s->last_req);
    } else if (strcmp(p, "/chunks") == 0 || strcmp(p, "/tick") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        c->mode = p[1] == 'c' ? M_CHUNKS : M_TICK;
        c->ticks = 0;
        struct timeval tv = {0, p[1] == 'c' ? 40000 : 10000};
        c->tick = event_new(s->base, -1, EV_PERSIST, tick_cb, c);
        evtimer_add(c->tick, &tv);
    } else if (strcmp(p, "/flood") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        c->mode = M_FLOOD;
        flood_fill(c);
    } else if (strcmp(p, "/close-mid") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
        c->mode = M_CLOSE_AFTER;
    } else if (strcmp(p, "/close-mid-chunked") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        chunk(c, "partial", 7);
        c->mode = M_CLOSE_AFTER;
    } else if (strcmp(p, "/close-now") == 0) {
        c->mode = M_CLOSE_AFTER;
    } else if (strcmp(p, "/big") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        for (int i = 0; i < 100; i++)
            srv_printf(c, "%01000d", 0);
    } else if (strcmp(p, "/big-chunked") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        char b[1000];
        memset(b, 'b', sizeof(b));
        for (int i = 0; i < 100; i++)
            chunk(c, b, sizeof(b));
        srv_printf(c, "0\r\n\r\n");
    } else if (strcmp(p, "/huge-headers") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\n");
        for (int i = 0; i < 20; i++)
            srv_printf(c, "X-Pad-%d: %01000d\r\n", i, 0);
        srv_printf(c, "Content-Length: 0\r\n\r\n");
    } else if (strcmp(p, "/early-hints") == 0) {
        srv_printf(c, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                      "HTTP/1.1 201 Created\r\nX-Fold: one\r\n two\r\nContent-Length: 2\r\n\r\nok");
    } else if (strcmp(p, "/garbage") == 0) {
        srv_printf(c, "SSH-2.0-OpenSSH_9.2\r\n\r\n");
        c->mode = M_CLOSE_AFTER;
    } else if (strcmp(p, "/redirect") == 0) {
        srv_printf(c, "HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n");
    } else if (strcmp(p, "/split-chunked") == 0) {
        script(c, split_chunked);
    } else if (strcmp(p, "/continue") == 0) {
        script(c, continue_then_ok);
    } else if (strcmp(p, "/eof-body") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil eof");
        c->mode = M_CLOSE_AFTER;
    } else if (strcmp(p, "/ok-close") == 0) {
        /* Says close but leaves it to the client. */
        srv_printf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello");
    } else if (strcmp(p, "/ok-extra") == 0) {
        srv_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloJUNK");
    } else if (strcmp(p, "/silent") == 0) {
        /* never answers */
    } else {
        srv_printf(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }
}

static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct srv *s = c->s;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (!c->seen && evbuffer_get_length(in)) {
        c->seen = true;
        evbuffer_copyout(in, &s->first_byte, 1);
    }
    for (;;) {
        if (!c->have_head) {
            struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
            if (e.pos < 0) {
                if (evbuffer_get_length(in) > 65536)
                    conn_free(c);
                return;
            }
            size_t hl = (size_t)e.pos + 4;
            char *h = (char *)evbuffer_pullup(in, (ev_ssize_t)hl);
            size_t keep = hl < sizeof(s->last_req) - 1 ? hl : sizeof(s->last_req) - 1;
            memcpy(s->last_req, h, keep);
            s->last_req[keep] = '\0';
            char method[16];
            if (sscanf(s->last_req, "%15s %127s", method, c->path) != 2)
                c->path[0] = '\0';
            const char *cl = strcasestr(s->last_req, "\r\nContent-Length:");
            c->body_need = cl ? strtoul(cl + 17, NULL, 10) : 0;
            evbuffer_drain(in, hl);
            c->have_head = true;
            if (c->drop_next) {
                /* As a runtime whose keep-alive timer fired as the request
                 * arrived. */
                s->dropped++;
                conn_free(c);
                return;
            }
        }
        if (evbuffer_get_length(in) < c->body_need)
            return;
        size_t n = strlen(s->last_req);
        size_t room = sizeof(s->last_req) - 1 - n;
        size_t copy = c->body_need < room ? c->body_need : room;
        evbuffer_copyout(in, s->last_req + n, copy);
        s->last_req[n + copy] = '\0';
        s->last_body_len = c->body_need;
        evbuffer_drain(in, c->body_need);
        c->have_head = false;
        respond(c);
        if (c->mode == M_CLOSE_AFTER && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
            conn_free(c);
            return;
        }
        if (c->mode == M_CLOSE_AFTER || c->mode == M_FLOOD || c->mode == M_SCRIPT)
            return;
    }
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (c->mode == M_CLOSE_AFTER) {
        conn_free(c);
        return;
    }
    if (c->mode == M_FLOOD) {
        flood_fill(c);
        flood_account(c);
    }
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        c->s->peer_closed++;
        c->s->peer_closed_us = lm_now_us();
        conn_free(c);
    }
}

static void
conn_free(struct conn *c)
{
    struct srv *s = c->s;
    for (struct conn **pp = &s->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->tick)
        event_free(c->tick);
    bufferevent_free(c->bev);
    free(c);
}

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    struct srv *s = arg;
    struct conn *c = lm_xcalloc(1, sizeof(*c));
    c->s = s;
    c->id = ++s->accepted;
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    /* Flood refills whenever less than a block is waiting. */
    bufferevent_setwatermark(c->bev, EV_WRITE, 16384, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = s->conns;
    s->conns = c;
}

static void
srv_start(struct srv *s, struct event_base *base)
{
    memset(s, 0, sizeof(*s));
    s->base = base;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    s->lis = evconnlistener_new_bind(base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                     1024, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(s->lis);
    struct sockaddr_in got;
    socklen_t gl = sizeof(got);
    assert_int_equal(getsockname(evconnlistener_get_fd(s->lis), (struct sockaddr *)&got, &gl), 0);
    s->port = ntohs(got.sin_port);
}

static void
srv_stop(struct srv *s)
{
    while (s->conns)
        conn_free(s->conns);
    evconnlistener_free(s->lis);
}

static struct conn *
srv_conn(struct srv *s, unsigned id)
{
    for (struct conn *c = s->conns; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* --- the client side: what the callbacks saw ---------------------------------- */

struct res {
    struct lm_upstream *u;
    struct lm_upstream_req *r;
    int status;
    char xtest[64];
    char xconn[16];
    struct lm_buf body;
    unsigned heads, datas, dones;
    int err;
    char msg[256];
    uint64_t t_start_us, t_done_us;
    uint64_t data_us[16];
    /* scripted behaviour */
    unsigned cancel_at_data;  /* cancel from inside the Nth on_data */
    bool cancel_in_head;
    bool pause_at_first_data;
    bool free_in_data;
    struct lm_upstream_req *cancel_other; /* cancelled from inside our on_data */
    struct res *start_in_data;            /* started from inside our on_data */
    const char *start_url;
};

static void
on_head(struct lm_upstream_req *r, int status, void *arg)
{
    struct res *x = arg;
    assert_ptr_equal(r, x->r);
    x->heads++;
    x->status = status;
    const char *v = lm_upstream_header(r, "x-test");
    snprintf(x->xtest, sizeof(x->xtest), "%s", v ? v : "(none)");
    v = lm_upstream_header(r, "X-CONN");
    snprintf(x->xconn, sizeof(x->xconn), "%s", v ? v : "");
    if (x->cancel_in_head)
        lm_upstream_cancel(r);
}

static void on_done(struct lm_upstream_req *r, int err, const char *msg, void *arg);
static void on_data(struct lm_upstream_req *r, const char *data, size_t len, void *arg);

static const struct lm_upstream_cbs cbs = {on_head, on_data, on_done};

static void
on_data(struct lm_upstream_req *r, const char *data, size_t len, void *arg)
{
    struct res *x = arg;
    assert_ptr_equal(r, x->r);
    assert_int_equal(x->dones, 0);
    if (x->datas < LM_ARRAY_LEN(x->data_us))
        x->data_us[x->datas] = lm_now_us();
    x->datas++;
    size_t room = x->body.limit - x->body.len;
    lm_buf_append(&x->body, data, len < room ? len : room);
    if (x->pause_at_first_data && x->datas == 1)
        lm_upstream_pause(r);
    if (x->cancel_other && x->datas == 1)
        lm_upstream_cancel(x->cancel_other);
    if (x->start_in_data && x->datas == 1) {
        struct lm_upstream_opts o = {.method = "GET", .url = x->start_url};
        assert_int_equal(lm_upstream_start(x->u, &o, &cbs, x->start_in_data, &x->start_in_data->r),
                         0);
    }
    if (x->free_in_data && x->datas == 1)
        lm_upstream_free(x->u);
    if (x->cancel_at_data && x->datas == x->cancel_at_data)
        lm_upstream_cancel(r);
}

static void
on_done(struct lm_upstream_req *r, int err, const char *msg, void *arg)
{
    struct res *x = arg;
    assert_ptr_equal(r, x->r);
    x->dones++;
    x->err = err;
    snprintf(x->msg, sizeof(x->msg), "%s", msg);
    x->t_done_us = lm_now_us();
    /* Calls on a finishing request are harmless no-ops. */
    lm_upstream_pause(r);
    lm_upstream_resume(r);
    lm_upstream_cancel(r);
}

static void
res_init(struct res *x, struct lm_upstream *u)
{
    memset(x, 0, sizeof(*x));
    x->u = u;
    x->err = 1;
    lm_buf_init(&x->body, 1 << 20);
}

static void
res_release(struct res *x)
{
    lm_buf_release(&x->body);
}

/* --- loop helpers ------------------------------------------------------------ */

struct env {
    struct event_base *base;
    struct srv srv;
    struct lm_upstream *u;
    char url[128];
};

static char *
url(struct env *e, const char *path)
{
    snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%d%s", e->srv.port, path);
    return e->url;
}

static void
wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until *flag >= want or ms pass; true if reached. A periodic
 * wake-up keeps EVLOOP_ONCE from blocking past the deadline. */
static bool
run_until(struct env *e, const unsigned *flag, unsigned want, unsigned ms)
{
    struct event *wake = event_new(e->base, -1, EV_PERSIST, wake_cb, NULL);
    struct timeval tv = {0, 5000};
    evtimer_add(wake, &tv);
    uint64_t end = lm_now_ms() + ms;
    while ((!flag || *flag < want) && lm_now_ms() < end)
        event_base_loop(e->base, EVLOOP_ONCE);
    event_free(wake);
    return !flag || *flag >= want;
}

static void
run_for(struct env *e, unsigned ms)
{
    run_until(e, NULL, 0, ms);
}

static int
setup(void **state)
{
    struct env *e = lm_xcalloc(1, sizeof(*e));
    e->base = event_base_new();
    assert_non_null(e->base);
    srv_start(&e->srv, e->base);
    assert_int_equal(lm_upstream_new(&e->u, e->base), 0);
    *state = e;
    return 0;
}

static int
teardown(void **state)
{
    struct env *e = *state;
    lm_upstream_free(e->u);
    srv_stop(&e->srv);
    event_base_free(e->base);
    free(e);
    return 0;
}

static void
get(struct env *e, struct res *x, const char *path, const struct lm_upstream_opts *base)
{
    struct lm_upstream_opts o = {.method = "GET"};
    if (base)
        o = *base;
    o.url = url(e, path);
    x->t_start_us = lm_now_us();
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, x, &x->r), 0);
}

/* --- tests -------------------------------------------------------------------- */

static void
test_bad_options(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    struct lm_upstream_req *r = NULL;
    struct lm_upstream_opts o = {.method = "GET", .url = "file:///etc/passwd"};
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.url = "ftp://127.0.0.1/x";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.url = "http://127.0.0.1/a b";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.url = NULL;
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.url = url(e, "/ok");
    o.method = "PUT";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.method = "GET";
    o.body = "x";
    o.body_len = 1; /* GET with a body */
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.body = NULL;
    o.body_len = 0;
    o.headers[0] = "X-Evil: a\r\nInjected: yes";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.headers[0] = "No colon";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    o.headers[0] = ": empty name";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    for (int i = 0; i <= LM_UPSTREAM_MAX_HEADERS; i++)
        o.headers[i] = "X-A: b";
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &r), -EINVAL);
    assert_null(r);
    assert_int_equal(lm_upstream_active(e->u), 0);
    /* Nothing was called back. */
    run_for(e, 20);
    assert_int_equal(x.heads + x.datas + x.dones, 0);
    res_release(&x);
}

static void
test_simple_get(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    get(e, &x, "/ok", NULL);
    assert_int_equal(lm_upstream_active(e->u), 1);
    /* Nothing is called back from inside start. */
    assert_int_equal(x.heads + x.datas + x.dones, 0);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.status, 200);
    assert_int_equal(x.heads, 1);
    assert_string_equal(x.xtest, "hello"); /* case-insensitive, OWS trimmed */
    assert_string_equal(x.body.data, "hello");
    assert_int_equal(lm_upstream_active(e->u), 0);
    assert_null(strstr(e->srv.last_req, "Expect:"));
    res_release(&x);
}

static void
test_post_echo(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    /* Over curl's 1 MiB Expect threshold: we must not wait for a 100. */
    size_t n = (1 << 20) + 100;
    char *body = lm_xmalloc(n);
    memset(body, 'p', n);
    memcpy(body, "{\"k\":1}", 7);
    struct lm_upstream_opts o = {.method = "POST", .body = body, .body_len = n};
    o.headers[0] = "Content-Type: application/json";
    o.headers[1] = "X-Custom:   spaced value";
    get(e, &x, "/echo", &o);
    free(body); /* copied */
    assert_true(run_until(e, &x.dones, 1, 5000));
    assert_int_equal(x.err, 0);
    assert_int_equal(e->srv.last_body_len, n);
    assert_non_null(strstr(x.body.data, "POST /echo HTTP/1.1\r\n"));
    assert_non_null(strstr(x.body.data, "Content-Type: application/json\r\n"));
    assert_non_null(strstr(x.body.data, "X-Custom:   spaced value\r\n"));
    assert_non_null(strstr(x.body.data, "\r\n\r\n{\"k\":1}ppp"));
    assert_null(strcasestr(x.body.data, "Expect:"));
    res_release(&x);

    /* Empty POST body: Content-Length 0, nothing read from stdin. */
    res_init(&x, e->u);
    struct lm_upstream_opts o2 = {.method = "POST"};
    get(e, &x, "/echo", &o2);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_non_null(strstr(x.body.data, "Content-Length: 0\r\n"));
    res_release(&x);

    /* The same pooled handle then does a GET again. */
    res_init(&x, e->u);
    get(e, &x, "/echo", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_non_null(strstr(x.body.data, "GET /echo HTTP/1.1\r\n"));
    assert_null(strstr(x.body.data, "Content-Length"));
    res_release(&x);
}

static void
test_streamed_chunks_arrive_as_sent(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    get(e, &x, "/chunks", NULL);
    assert_true(run_until(e, &x.dones, 1, 5000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.status, 200);
    assert_string_equal(x.body.data, "tick 0\ntick 1\ntick 2\ntick 3\ntick 4\n");
    /* One on_data per 40 ms tick, as sent, not all at the end: the first
     * arrives about 160 ms before the last (timers may bunch under load). */
    assert_int_equal(x.datas, 5);
    assert_true(x.data_us[4] - x.data_us[0] >= 100000);
    assert_true(x.t_done_us >= x.data_us[4]);
    res_release(&x);
}

static void
test_close_mid_body(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    get(e, &x, "/close-mid", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ECONNRESET);
    assert_int_equal(x.status, 200);
    assert_string_equal(x.body.data, "0123456789");
    res_release(&x);

    res_init(&x, e->u);
    get(e, &x, "/close-mid-chunked", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ECONNRESET);
    assert_string_equal(x.body.data, "partial");
    res_release(&x);

    /* Closed without a byte of answer. */
    res_init(&x, e->u);
    get(e, &x, "/close-now", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ECONNRESET);
    assert_int_equal(x.heads, 0);
    res_release(&x);
}

static void
test_first_byte_timeout(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    struct lm_upstream_opts o = {.method = "GET", .first_byte_timeout_ms = 150};
    get(e, &x, "/silent", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ETIMEDOUT);
    assert_int_equal(x.heads, 0);
    assert_true(x.t_done_us - x.t_start_us >= 140000);
    assert_true(x.t_done_us - x.t_start_us < 2000000);
    assert_non_null(strstr(x.msg, "150 ms"));
    /* The runtime sees the connection go. */
    assert_true(run_until(e, &e->srv.peer_closed, 1, 2000));
    res_release(&x);

    /* The first-byte deadline stops counting at the headers. */
    res_init(&x, e->u);
    o.first_byte_timeout_ms = 60;
    get(e, &x, "/chunks", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.datas, 5);
    res_release(&x);
}

static void
test_total_timeout(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    struct lm_upstream_opts o = {.method = "GET", .total_timeout_ms = 100};
    get(e, &x, "/tick", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ETIMEDOUT);
    assert_true(x.datas >= 2);
    assert_true(run_until(e, &e->srv.peer_closed, 1, 2000));
    res_release(&x);
}

static void
test_connection_refused(void **state)
{
    struct env *e = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    close(fd); /* bound, never listened: nothing there */
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/x", ntohs(sin.sin_port));
    struct res x;
    res_init(&x, e->u);
    struct lm_upstream_opts o = {.method = "GET", .url = u};
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &x.r), 0);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ECONNREFUSED);
    assert_int_equal(x.heads, 0);
    res_release(&x);
}

static void
test_response_too_large(void **state)
{
    struct env *e = *state;
    struct lm_upstream_opts o = {.method = "GET", .max_response_bytes = 1000};
    struct res x;
    /* Content-Length says so up front. */
    res_init(&x, e->u);
    get(e, &x, "/big", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -EMSGSIZE);
    assert_true(x.body.len <= 1000);
    res_release(&x);
    /* Chunked: counted as it streams. */
    res_init(&x, e->u);
    get(e, &x, "/big-chunked", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -EMSGSIZE);
    assert_true(x.body.len <= 1000);
    assert_non_null(strstr(x.msg, "1000"));
    res_release(&x);
    /* Exactly at the cap is fine. */
    res_init(&x, e->u);
    o.max_response_bytes = 5;
    get(e, &x, "/ok", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    res_release(&x);
}

static void
test_protocol_errors(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    get(e, &x, "/huge-headers", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -EPROTO);
    assert_int_equal(x.heads, 0);
    res_release(&x);

    res_init(&x, e->u);
    get(e, &x, "/garbage", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -EPROTO);
    res_release(&x);

    /* 1xx skipped; obs-fold joined; only the final response's headers. */
    res_init(&x, e->u);
    get(e, &x, "/early-hints", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.heads, 1);
    assert_int_equal(x.status, 201);
    assert_string_equal(x.body.data, "ok");
    res_release(&x);

    /* Redirects are not followed. */
    res_init(&x, e->u);
    unsigned before = e->srv.requests;
    get(e, &x, "/redirect", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.status, 302);
    assert_int_equal(e->srv.requests, before + 1);
    res_release(&x);
}

static void
head_fold_cb(struct lm_upstream_req *r, int status, void *arg)
{
    (void)status;
    struct res *x = arg;
    x->heads++;
    const char *v = lm_upstream_header(r, "x-fold");
    snprintf(x->xtest, sizeof(x->xtest), "%s", v ? v : "(none)");
    assert_null(lm_upstream_header(r, "link"));
    assert_null(lm_upstream_header(r, "x-absent"));
}

static void
test_header_lookup(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    struct lm_upstream_cbs c = {head_fold_cb, on_data, on_done};
    struct lm_upstream_opts o = {.method = "GET", .url = url(e, "/early-hints")};
    assert_int_equal(lm_upstream_start(e->u, &o, &c, &x, &x.r), 0);
    assert_null(lm_upstream_header(x.r, "x-fold")); /* before on_head */
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_string_equal(x.xtest, "one two");
    res_release(&x);
}

static void
test_keepalive_reuse(void **state)
{
    struct env *e = *state;
    struct res a, b;
    res_init(&a, e->u);
    get(e, &a, "/ok", NULL);
    assert_true(run_until(e, &a.dones, 1, 3000));
    res_init(&b, e->u);
    get(e, &b, "/ok", NULL);
    assert_true(run_until(e, &b.dones, 1, 3000));
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_string_equal(a.xconn, "1");
    assert_string_equal(b.xconn, "1");
    assert_int_equal(e->srv.accepted, 1);
    struct conn *c = srv_conn(&e->srv, 1);
    assert_non_null(c);
    assert_int_equal(c->nreq, 2);
    res_release(&a);
    res_release(&b);
}

static void
test_pause_backs_up_runtime(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    x.pause_at_first_data = true;
    get(e, &x, "/flood", NULL);
    assert_true(run_until(e, &x.datas, 1, 3000));
    /* Paused: no more on_data, and the server's writes back up (kernel
     * buffers full, its own output buffer non-empty, nothing flushed). */
    run_for(e, 250);
    size_t flushed = e->srv.flood_flushed;
    size_t got = x.body.len;
    unsigned datas = x.datas;
    run_for(e, 150);
    assert_int_equal(x.datas, 1);
    assert_int_equal(x.datas, datas);
    assert_int_equal(x.body.len, got);
    /* The kernel may still take a trickle as it compacts its queues; an
     * unpaused reader takes hundreds of MB in that time. */
    assert_true(e->srv.flood_flushed - flushed < 256 * 1024);
    assert_true(e->srv.flood_pending > 0);
    /* What we hold while paused is curl's one read buffer, at most. */
    assert_true(got <= 64 * 1024);
    assert_int_equal(x.dones, 0);
    /* Resume: nothing from inside resume itself; data flows on the loop. */
    lm_upstream_resume(x.r);
    assert_int_equal(x.datas, 1);
    assert_true(run_until(e, &x.datas, 50, 3000));
    assert_true(e->srv.flood_flushed > flushed);
    /* Pause and resume again, then let go. */
    lm_upstream_pause(x.r);
    unsigned d2 = x.datas;
    run_for(e, 100);
    assert_true(x.datas <= d2 + 1);
    lm_upstream_resume(x.r);
    assert_true(run_until(e, &x.datas, d2 + 20, 3000));
    unsigned closed = e->srv.peer_closed;
    lm_upstream_cancel(x.r);
    assert_true(run_until(e, &e->srv.peer_closed, closed + 1, 2000));
    assert_int_equal(x.dones, 0);
    assert_int_equal(lm_upstream_active(e->u), 0);
    res_release(&x);
}

static void
cancel_later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct res *x = arg;
    lm_upstream_cancel(x->r);
    x->t_done_us = lm_now_us();
}

static void
test_cancel_mid_stream(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    get(e, &x, "/tick", NULL);
    assert_true(run_until(e, &x.datas, 3, 3000));
    /* Cancel from a plain event, as the gateway does on client close. */
    struct event *ev = evtimer_new(e->base, cancel_later_cb, &x);
    struct timeval tv = {0, 1000};
    evtimer_add(ev, &tv);
    assert_true(run_until(e, &e->srv.peer_closed, 1, 2000));
    event_free(ev);
    assert_true(e->srv.peer_closed_us - x.t_done_us < 500000);
    assert_int_equal(lm_upstream_active(e->u), 0);
    unsigned datas = x.datas;
    run_for(e, 60);
    assert_int_equal(x.datas, datas);
    assert_int_equal(x.dones, 0);
    res_release(&x);

    /* A new request after a cancel works on a fresh connection. */
    res_init(&x, e->u);
    get(e, &x, "/ok", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_string_equal(x.xconn, "2");
    res_release(&x);
}

static void
test_cancel_inside_callbacks(void **state)
{
    struct env *e = *state;
    struct res x;
    /* From inside on_data. */
    res_init(&x, e->u);
    x.cancel_at_data = 2;
    get(e, &x, "/tick", NULL);
    assert_true(run_until(e, &e->srv.peer_closed, 1, 2000));
    run_for(e, 50);
    assert_int_equal(x.datas, 2);
    assert_int_equal(x.dones, 0);
    assert_int_equal(lm_upstream_active(e->u), 0);
    res_release(&x);

    /* From inside on_head. */
    res_init(&x, e->u);
    x.cancel_in_head = true;
    get(e, &x, "/tick", NULL);
    assert_true(run_until(e, &e->srv.peer_closed, 2, 2000));
    run_for(e, 50);
    assert_int_equal(x.heads, 1);
    assert_int_equal(x.datas, 0);
    assert_int_equal(x.dones, 0);
    res_release(&x);

    /* Another request's on_data cancels a running one; it also starts one. */
    struct res a, b, c;
    res_init(&a, e->u);
    res_init(&b, e->u);
    res_init(&c, e->u);
    get(e, &b, "/tick", NULL);
    assert_true(run_until(e, &b.datas, 1, 3000));
    a.cancel_other = b.r;
    a.start_in_data = &c;
    char cu[128];
    snprintf(cu, sizeof(cu), "http://127.0.0.1:%d/ok", e->srv.port);
    a.start_url = cu;
    get(e, &a, "/chunks", NULL);
    assert_true(run_until(e, &c.dones, 1, 3000));
    assert_int_equal(c.err, 0);
    assert_string_equal(c.body.data, "hello");
    assert_true(run_until(e, &a.dones, 1, 3000));
    assert_int_equal(a.err, 0);
    assert_int_equal(b.dones, 0);
    assert_true(run_until(e, &e->srv.peer_closed, 3, 2000));
    assert_int_equal(lm_upstream_active(e->u), 0);
    res_release(&a);
    res_release(&b);
    res_release(&c);
}

static void
test_free_inside_callback(void **state)
{
    struct env *e = *state;
    struct res x, y;
    res_init(&x, e->u);
    res_init(&y, e->u);
    get(e, &y, "/tick", NULL);
    x.free_in_data = true;
    get(e, &x, "/tick", NULL);
    assert_true(run_until(e, &x.datas, 1, 3000));
    e->u = NULL; /* freed from inside on_data */
    assert_true(run_until(e, &e->srv.peer_closed, 2, 2000));
    run_for(e, 50);
    assert_int_equal(x.datas, 1);
    assert_int_equal(x.dones + y.dones, 0);
    res_release(&x);
    res_release(&y);
}

static void
test_free_with_requests_running(void **state)
{
    struct env *e = *state;
    struct res x[3];
    for (int i = 0; i < 3; i++) {
        res_init(&x[i], e->u);
        get(e, &x[i], i ? "/tick" : "/silent", NULL);
    }
    assert_true(run_until(e, &x[2].datas, 1, 3000));
    assert_int_equal(lm_upstream_active(e->u), 3);
    lm_upstream_free(e->u);
    e->u = NULL;
    assert_true(run_until(e, &e->srv.peer_closed, 3, 2000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(x[i].dones, 0);
        res_release(&x[i]);
    }
}

static void
test_pooled_connection_closed_by_server(void **state)
{
    struct env *e = *state;
    struct res x;
    res_init(&x, e->u);
    get(e, &x, "/ok-drop-next", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    res_release(&x);

    /* The pooled connection is closed as the request arrives: sent again,
     * body and all, on a fresh connection. */
    res_init(&x, e->u);
    struct lm_upstream_opts o = {.method = "POST", .body = "abc", .body_len = 3};
    get(e, &x, "/echo", &o);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(e->srv.dropped, 1);
    assert_int_equal(e->srv.accepted, 2);
    assert_int_equal(e->srv.last_conn, 2);
    assert_non_null(strstr(x.body.data, "\r\n\r\nabc"));
    res_release(&x);

    /* Once only: when the fresh connection fails too, that is the answer. */
    res_init(&x, e->u);
    get(e, &x, "/ok-drop-next", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_string_equal(x.xconn, "2");
    res_release(&x);
    res_init(&x, e->u);
    get(e, &x, "/close-now", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ECONNRESET);
    assert_int_equal(x.heads, 0);
    assert_int_equal(e->srv.dropped, 2);
    assert_int_equal(e->srv.accepted, 3);
    res_release(&x);

    /* A connection the runtime closed while idle is not used again. */
    res_init(&x, e->u);
    get(e, &x, "/ok", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_string_equal(x.xconn, "4");
    res_release(&x);
    srv_conn(&e->srv, 4)->mode = M_CLOSE_AFTER;
    conn_free(srv_conn(&e->srv, 4));
    run_for(e, 50);
    unsigned requests = e->srv.requests;
    res_init(&x, e->u);
    get(e, &x, "/ok", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_string_equal(x.xconn, "5");
    assert_int_equal(e->srv.requests, requests + 1);
    res_release(&x);
}

static void
test_split_reads(void **state)
{
    struct env *e = *state;
    struct res x;
    /* Chunked, split mid-header, mid-size, mid-data and between CR and LF. */
    res_init(&x, e->u);
    get(e, &x, "/split-chunked", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.status, 200);
    assert_string_equal(x.xtest, "split");
    assert_string_equal(x.body.data, "hello world");
    assert_true(x.datas >= 2);
    res_release(&x);

    /* A 100 Continue alone in its own segment, then the response. */
    res_init(&x, e->u);
    get(e, &x, "/continue", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_int_equal(x.heads, 1);
    assert_int_equal(x.status, 200);
    assert_string_equal(x.xtest, "final");
    assert_string_equal(x.body.data, "ok");
    /* Both responses ended cleanly on the connection: it is reused. */
    res_release(&x);
    res_init(&x, e->u);
    get(e, &x, "/ok", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(e->srv.accepted, 1);
    res_release(&x);
}

static void
test_connection_reuse_rules(void **state)
{
    struct env *e = *state;
    struct res x;
    /* No length: the body runs to EOF, a complete response. */
    res_init(&x, e->u);
    get(e, &x, "/eof-body", NULL);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, 0);
    assert_string_equal(x.body.data, "until eof");
    res_release(&x);

    /* "Connection: close" and bytes past the response: never pooled, and
     * closed by us. */
    const char *paths[] = {"/ok-close", "/ok-extra"};
    for (unsigned i = 0; i < 2; i++) {
        unsigned closed = e->srv.peer_closed;
        res_init(&x, e->u);
        get(e, &x, paths[i], NULL);
        assert_true(run_until(e, &x.dones, 1, 3000));
        assert_int_equal(x.err, 0);
        assert_string_equal(x.body.data, "hello");
        unsigned used = e->srv.last_conn;
        assert_true(run_until(e, &e->srv.peer_closed, closed + 1, 2000));
        assert_null(srv_conn(&e->srv, used));
        res_release(&x);
        res_init(&x, e->u);
        get(e, &x, "/ok", NULL);
        assert_true(run_until(e, &x.dones, 1, 3000));
        assert_int_equal(x.err, 0);
        assert_int_equal(e->srv.last_conn, e->srv.accepted);
        assert_true(e->srv.last_conn > used);
        res_release(&x);
    }
}

static void
test_https_goes_through_curl(void **state)
{
    struct env *e = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    close(fd);
    char u[64];
    struct res x;
    res_init(&x, e->u);
    snprintf(u, sizeof(u), "https://127.0.0.1:%d/x", ntohs(sin.sin_port));
    struct lm_upstream_opts o = {.method = "GET", .url = u};
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &x.r), 0);
    assert_int_equal(x.dones, 0);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ECONNREFUSED);
    res_release(&x);

    /* To our plain server: what arrives is a TLS ClientHello (0x16). */
    res_init(&x, e->u);
    snprintf(u, sizeof(u), "https://127.0.0.1:%d/ok", e->srv.port);
    o.first_byte_timeout_ms = 300;
    assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &x.r), 0);
    assert_true(run_until(e, &x.dones, 1, 3000));
    assert_int_equal(x.err, -ETIMEDOUT);
    assert_int_equal(e->srv.first_byte, 0x16);
    res_release(&x);

}

static void
test_host_names(void **state)
{
    struct env *e = *state;
    struct res x;
    char u[64];
    /* From /etc/hosts, without blocking the loop; if it names ::1 first,
     * where nothing listens, the next address is tried. */
    for (int i = 0; i < 2; i++) {
        res_init(&x, e->u);
        snprintf(u, sizeof(u), "http://localhost:%d/ok", e->srv.port);
        struct lm_upstream_opts o = {.method = "GET", .url = u};
        assert_int_equal(lm_upstream_start(e->u, &o, &cbs, &x, &x.r), 0);
        assert_int_equal(x.dones, 0);
        assert_true(run_until(e, &x.dones, 1, 3000));
        assert_int_equal(x.err, 0);
        assert_string_equal(x.body.data, "hello");
        assert_non_null(strstr(e->srv.last_req, "\r\nHost: localhost:"));
        /* Our own client (curl sends no Connection header). */
        assert_non_null(strstr(e->srv.last_req, "\r\nConnection: keep-alive\r\n"));
        res_release(&x);
    }
    /* The second went on the first's connection. */
    assert_int_equal(e->srv.accepted, 1);
}

/* A caller restarting each failed request from on_done must not starve the
 * rest of the loop. */
struct restart {
    struct lm_upstream *u;
    char url[64];
    unsigned left, dones, ticks, ticks_seen_before_end;
    struct lm_upstream_req *r;
};

static void restart_done(struct lm_upstream_req *r, int err, const char *msg, void *arg);
static const struct lm_upstream_cbs restart_cbs = {NULL, NULL, restart_done};

static void
restart_done(struct lm_upstream_req *r, int err, const char *msg, void *arg)
{
    (void)r;
    (void)msg;
    struct restart *x = arg;
    assert_int_equal(err, -EIO);
    x->dones++;
    if (--x->left == 0) {
        x->ticks_seen_before_end = x->ticks;
        return;
    }
    struct lm_upstream_opts o = {.method = "GET", .url = x->url};
    assert_int_equal(lm_upstream_start(x->u, &o, &restart_cbs, x, &x->r), 0);
}

static void
tick_count_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ((struct restart *)arg)->ticks++;
}

static void
test_restart_loop_does_not_starve(void **state)
{
    struct env *e = *state;
    /* Fails inside curl at once, not on a later socket event. */
    struct restart x = {.u = e->u, .left = 400, .url = "http://127.0.0.1:99999/"};
    /* An always-readable socket runs once per turn of the loop (a timer
     * would not: libevent's clock is coarse). */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    struct event *tick = event_new(e->base, sv[0], EV_READ | EV_PERSIST, tick_count_cb, &x);
    event_add(tick, NULL);
    struct lm_upstream_opts o = {.method = "GET", .url = x.url};
    assert_int_equal(lm_upstream_start(e->u, &o, &restart_cbs, &x, &x.r), 0);
    assert_true(run_until(e, &x.dones, 400, 10000));
    event_free(tick);
    close(sv[0]);
    close(sv[1]);
    /* Other events ran many times while the 400 failures went round. */
    assert_true(x.ticks_seen_before_end >= 10);
}

static void
test_many_concurrent(void **state)
{
    struct env *e = *state;
    enum { N = 200 };
    struct res *x = lm_xcalloc(N, sizeof(*x));
    unsigned done = 0;
    for (int i = 0; i < N; i++) {
        res_init(&x[i], e->u);
        get(e, &x[i], i % 4 == 0 ? "/chunks" : "/ok", NULL);
    }
    assert_int_equal(lm_upstream_active(e->u), N);
    uint64_t end = lm_now_ms() + 10000;
    while (done < N && lm_now_ms() < end) {
        event_base_loop(e->base, EVLOOP_ONCE);
        done = 0;
        for (int i = 0; i < N; i++)
            done += x[i].dones;
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(x[i].err, 0);
        assert_string_equal(x[i].body.data, i % 4 == 0 ? "tick 0\ntick 1\ntick 2\ntick 3\ntick 4\n"
                                                       : "hello");
        res_release(&x[i]);
    }
    assert_int_equal(lm_upstream_active(e->u), 0);
    assert_true(e->srv.accepted <= N);
    free(x);
}

/* --- CPU per request ---------------------------------------------------------- */

/* The server runs on its own loop in a second thread, so the client thread's
 * CPU time is the cost of upstream + curl + libevent alone. Printed, not
 * asserted: timings are for bench/, never for tests. */
struct bench_srv {
    struct event_base *base;
    struct srv srv;
    int stop[2];
    pthread_t th;
};

static void
bench_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void *
bench_thread(void *arg)
{
    struct bench_srv *b = arg;
    struct event *ev = event_new(b->base, b->stop[0], EV_READ, bench_stop_cb, b->base);
    event_add(ev, NULL);
    event_base_dispatch(b->base);
    event_free(ev);
    return NULL;
}

struct bench {
    struct lm_upstream *u;
    const char *url;
    unsigned total, started, done, failed;
};

static void
bench_done(struct lm_upstream_req *r, int err, const char *msg, void *arg);

static const struct lm_upstream_cbs bench_cbs = {NULL, NULL, bench_done};

static void
bench_next(struct bench *b)
{
    struct lm_upstream_opts o = {.method = "GET", .url = b->url};
    struct lm_upstream_req *r;
    b->started++;
    if (lm_upstream_start(b->u, &o, &bench_cbs, b, &r) != 0)
        b->failed++, b->done++;
}

static void
bench_done(struct lm_upstream_req *r, int err, const char *msg, void *arg)
{
    (void)r;
    (void)msg;
    struct bench *b = arg;
    b->done++;
    if (err)
        b->failed++;
    if (b->started < b->total)
        bench_next(b);
}

static uint64_t
thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static double
bench_run(struct event_base *base, struct lm_upstream *u, const char *u_url, unsigned n,
          unsigned conc)
{
    struct bench b = {.u = u, .url = u_url, .total = n};
    uint64_t c0 = thread_cpu_us();
    for (unsigned i = 0; i < conc && i < n; i++)
        bench_next(&b);
    while (b.done < n)
        event_base_loop(base, EVLOOP_ONCE);
    uint64_t c1 = thread_cpu_us();
    assert_int_equal(b.failed, 0);
    return (double)(c1 - c0) / n;
}

/* Baseline in the same run: a bare bufferevent keep-alive client doing the
 * same GETs, i.e. the cost of the loop and the syscalls without curl. */
struct raw {
    struct bench *b;
    struct bufferevent *bev;
};

static const char raw_req[] = "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

static void
raw_read_cb(struct bufferevent *bev, void *arg)
{
    struct raw *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (e.pos < 0 || evbuffer_get_length(in) < (size_t)e.pos + 4 + 5)
            return;
        const char *h = (const char *)evbuffer_pullup(in, e.pos + 4 + 5);
        if (strncmp(h, "HTTP/1.1 200", 12) != 0 || memcmp(h + e.pos + 4, "hello", 5) != 0)
            c->b->failed++;
        evbuffer_drain(in, (size_t)e.pos + 4 + 5);
        c->b->done++;
        if (c->b->started < c->b->total) {
            c->b->started++;
            bufferevent_write(bev, raw_req, sizeof(raw_req) - 1);
        }
    }
}

static double
raw_run(struct event_base *base, int port, unsigned n, unsigned conc)
{
    struct bench b = {.total = n};
    struct raw *c = lm_xcalloc(conc, sizeof(*c));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (unsigned i = 0; i < conc; i++) {
        c[i].b = &b;
        c[i].bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
        bufferevent_setcb(c[i].bev, raw_read_cb, NULL, NULL, &c[i]);
        bufferevent_enable(c[i].bev, EV_READ | EV_WRITE);
        assert_int_equal(
            bufferevent_socket_connect(c[i].bev, (struct sockaddr *)&sin, sizeof(sin)), 0);
        evutil_make_socket_nonblocking(bufferevent_getfd(c[i].bev));
        int one = 1;
        setsockopt(bufferevent_getfd(c[i].bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    uint64_t c0 = thread_cpu_us();
    for (unsigned i = 0; i < conc && i < n; i++) {
        b.started++;
        bufferevent_write(c[i].bev, raw_req, sizeof(raw_req) - 1);
    }
    while (b.done < n)
        event_base_loop(base, EVLOOP_ONCE);
    uint64_t c1 = thread_cpu_us();
    assert_int_equal(b.failed, 0);
    for (unsigned i = 0; i < conc; i++)
        bufferevent_free(c[i].bev);
    free(c);
    return (double)(c1 - c0) / n;
}

static void
test_cpu_per_request(void **state)
{
    (void)state;
    const char *env = getenv("LM_UPSTREAM_BENCH_N");
    unsigned n = env ? (unsigned)strtoul(env, NULL, 10) : 2000;
    if (n < 100)
        n = 100;
    struct bench_srv bs;
    bs.base = event_base_new();
    assert_int_equal(pipe(bs.stop), 0);
    srv_start(&bs.srv, bs.base);
    char u_url[64];
    snprintf(u_url, sizeof(u_url), "http://127.0.0.1:%d/ok", bs.srv.port);
    assert_int_equal(pthread_create(&bs.th, NULL, bench_thread, &bs), 0);

    struct event_base *base = event_base_new();
    struct lm_upstream *u;
    assert_int_equal(lm_upstream_new(&u, base), 0);
    bench_run(base, u, u_url, 200, 64); /* warm: connections, pools */
    raw_run(base, bs.srv.port, 200, 64);
    double seq = bench_run(base, u, u_url, n, 1);
    double par = bench_run(base, u, u_url, n, 64);
    double rseq = raw_run(base, bs.srv.port, n, 1);
    double rpar = raw_run(base, bs.srv.port, n, 64);
    printf("upstream: client CPU us per small GET (%u each): upstream %.1f sequential, "
           "%.1f at 64 in flight; bare libevent client %.1f / %.1f\n",
           n, seq, par, rseq, rpar);
    lm_upstream_free(u);
    event_base_free(base);

    assert_int_equal(write(bs.stop[1], "x", 1), 1);
    pthread_join(bs.th, NULL);
    srv_stop(&bs.srv);
    event_base_free(bs.base);
    close(bs.stop[0]);
    close(bs.stop[1]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_simple_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streamed_chunks_arrive_as_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_mid_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_byte_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_total_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_backs_up_runtime, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_inside_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_requests_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_loop_does_not_starve, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pooled_connection_closed_by_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_split_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_reuse_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_https_goes_through_curl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_names, setup, teardown),
        cmocka_unit_test(test_cpu_per_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
