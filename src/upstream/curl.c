/* upstream, the curl path: libcurl's multi interface on the libevent loop,
 * for https:// URLs (plain.c takes http://).
 *
 * One CURLM per struct lm_upcurl, made on the first request it gets. curl
 * tells us which sockets to watch (sock_cb) and when to wake it (timer_cb);
 * libevent tells curl when a socket is ready (curl_multi_socket_action).
 * Completions are read after every curl call with curl_multi_info_read.
 *
 * Re-entrancy is the whole difficulty. on_head and on_data run inside curl's
 * header and write callbacks, and curl forbids curl_multi_add_handle and
 * curl_multi_remove_handle from there. So while a curl call that may run our
 * callbacks is on the stack (u->in_curl), lm_upcurl_start queues the
 * request and lm_upcurl_cancel only marks it; both land on u->todo, which
 * after_curl() works off as soon as curl has returned. A request cancelled
 * from inside its own on_data also makes the write callback fail, so curl
 * stops reading its connection at once. lm_upstream_free called from inside
 * a callback is deferred the same way, to when our event callback unwinds
 * (lm_upstream_enter_/leave_ in upstream.c).
 *
 * Pause: the write callback answers CURL_WRITEFUNC_PAUSE once r->paused is
 * set, so curl keeps at most one read buffer and stops reading the socket;
 * the runtime's TCP window then fills. Resume never calls back from inside
 * lm_upcurl_resume: it arms a zero-timeout event which calls
 * curl_easy_pause(CURLPAUSE_CONT), and any bytes curl held are delivered
 * through on_data from there, on the next turn of the loop.
 *
 * Reuse: requests (with their easy handle, error buffer and byte buffers) go
 * back to a free list, so a request in steady state allocates nothing of
 * ours; connections stay in the multi handle's keep-alive pool. */
#define LM_LOG_MODULE "upstream"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "log/log.h"
#include "upstream/upstream_internal.h"
#include "util/util.h"

#define HEAD_CAP LM_UP_HEAD_CAP
#define REQ_HEAD_CAP LM_UP_REQ_HEAD_CAP
#define KEEP_BUF_CAP LM_UP_KEEP_BUF_CAP
#define FREE_REQS_MAX LM_UP_FREE_REQS_MAX
#define FREE_SOCKS_MAX 64
#define MAX_CONNECTS 256 /* idle keep-alive connections the pool keeps */
#define CONNECT_MS_DEFAULT LM_UP_CONNECT_MS_DEFAULT

enum req_state {
    REQ_IDLE,     /* in the free list */
    REQ_QUEUED,   /* started from inside a curl callback, not yet added */
    REQ_ATTACHED, /* in the multi handle */
    REQ_DONE,     /* detached; on_done may be running */
};

struct creq {
    struct lm_upstream_req pub; /* first: the API's handle */
    struct lm_upcurl *u;
    CURL *easy;
    enum req_state state;
    bool cancelled;   /* the caller let go: no callback any more */
    bool counted;     /* included in u->active */
    bool paused;      /* the caller asked for no data */
    bool curl_paused; /* our write callback returned CURL_WRITEFUNC_PAUSE */
    int err; /* a verdict of ours reached inside a curl callback */
    const char *errmsg;
    size_t received;
    size_t max;
    size_t head_bytes; /* all header bytes seen, trailers included */
    unsigned first_byte_ms;
    struct lm_upstream_cbs cbs;
    void *arg;
    struct lm_buf body;     /* copy of the POST body */
    struct lm_buf reqhead;  /* copies of the request headers, NUL-separated */
    struct curl_slist hl[LM_UPSTREAM_MAX_HEADERS + 2];
    struct event *first_byte;
    struct event *resume;
    struct link live; /* u->live */
    struct link todo; /* u->todo */
    struct creq *next_free;
    char msg[96];
    char errbuf[CURL_ERROR_SIZE];
};

struct sock {
    struct lm_upcurl *u;
    curl_socket_t fd;
    int what;
    bool added;
    struct event *ev; /* reassigned as curl's interest changes */
    struct link all;
    struct sock *next_free;
};

struct lm_upcurl {
    struct lm_upstream *up;
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct link live;  /* requests started and not finished */
    struct link todo;  /* queued starts and deferred cancels */
    struct link socks; /* every struct sock, in use or free */
    struct creq *free_reqs;
    unsigned nfree_reqs;
    struct sock *free_socks;
    unsigned nfree_socks;
    unsigned active;
    unsigned in_curl; /* a curl call that may run our callbacks is on the stack */
    bool kick;        /* a transfer was added from inside an event callback */
};

static void
enter(struct lm_upcurl *u)
{
    lm_upstream_enter_(u->up);
}

/* May free u: the last thing an event callback does. */
static void
leave(struct lm_upcurl *u)
{
    lm_upstream_leave_(u->up);
}

/* --- sockets and timer: curl asks, libevent watches ------------------------ */

static void after_curl(struct lm_upcurl *u);

static void
sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sock *s = arg;
    struct lm_upcurl *u = s->u;
    int flags = 0;
    if (what & EV_READ)
        flags |= CURL_CSELECT_IN;
    if (what & EV_WRITE)
        flags |= CURL_CSELECT_OUT;
    int running;
    enter(u);
    u->in_curl++;
    curl_multi_socket_action(u->multi, fd, flags, &running);
    u->in_curl--;
    after_curl(u);
    leave(u);
}

static void
timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_upcurl *u = arg;
    int running;
    enter(u);
    u->in_curl++;
    curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    u->in_curl--;
    after_curl(u);
    leave(u);
}

static void
sock_release(struct lm_upcurl *u, struct sock *s)
{
    if (s->added) {
        event_del(s->ev);
        s->added = false;
    }
    if (u->nfree_socks >= FREE_SOCKS_MAX) {
        link_del(&s->all);
        event_free(s->ev);
        free(s);
        return;
    }
    s->next_free = u->free_socks;
    u->free_socks = s;
    u->nfree_socks++;
}

static int
sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct lm_upcurl *u = userp;
    struct sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        /* curl forgets the socket itself; it is still open at this point. */
        if (s)
            sock_release(u, s);
        return 0;
    }
    if (!s) {
        if (u->free_socks) {
            s = u->free_socks;
            u->free_socks = s->next_free;
            u->nfree_socks--;
        } else {
            s = lm_xcalloc(1, sizeof(*s));
            s->u = u;
            s->ev = event_new(u->base, fd, 0, sock_event_cb, s);
            if (!s->ev) {
                free(s);
                return -1;
            }
            link_add_tail(&u->socks, &s->all);
        }
        s->fd = fd;
        s->what = 0;
        s->added = false;
        curl_multi_assign(u->multi, fd, s);
    }
    if (s->added && s->what == what && s->fd == fd)
        return 0;
    if (s->added)
        event_del(s->ev);
    short ev = EV_PERSIST;
    if (what & CURL_POLL_IN)
        ev |= EV_READ;
    if (what & CURL_POLL_OUT)
        ev |= EV_WRITE;
    s->fd = fd;
    s->what = what;
    event_assign(s->ev, u->base, fd, ev, sock_event_cb, s);
    if (event_add(s->ev, NULL) != 0) {
        log_error("cannot watch socket %d", (int)fd);
        s->added = false;
        return -1;
    }
    s->added = true;
    return 0;
}

static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct lm_upcurl *u = userp;
    if (timeout_ms < 0) {
        evtimer_del(u->timer);
        return 0;
    }
    /* Even a zero timeout goes through the loop: curl must not be called
     * back from inside its own timer callback. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    return evtimer_add(u->timer, &tv) == 0 ? 0 : -1;
}

/* --- requests ------------------------------------------------------------- */

static size_t header_cb(char *p, size_t size, size_t n, void *arg);
static size_t write_cb(char *p, size_t size, size_t n, void *arg);
static void first_byte_cb(evutil_socket_t fd, short what, void *arg);
static void resume_cb(evutil_socket_t fd, short what, void *arg);

#define SETOPT(e, opt, val)                                                                    \
    do {                                                                                       \
        if (curl_easy_setopt((e), (opt), (val)) != CURLE_OK)                                   \
            goto fail;                                                                         \
    } while (0)

/* Options every request shares, set once per easy handle. */
static int
easy_init(struct creq *r)
{
    CURL *e = curl_easy_init();
    if (!e)
        return -ENOMEM;
    r->easy = e;
    SETOPT(e, CURLOPT_PRIVATE, (void *)r);
    SETOPT(e, CURLOPT_NOSIGNAL, 1L);
    SETOPT(e, CURLOPT_NOPROGRESS, 1L);
    /* An endpoint URL can never make us read files or talk anything else. */
    SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
    /* Runtimes are reached only at the configured URL, never through an
     * http_proxy from the environment. */
    SETOPT(e, CURLOPT_PROXY, "");
    SETOPT(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(e, CURLOPT_TCP_NODELAY, 1L);
    SETOPT(e, CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(e, CURLOPT_TCP_KEEPIDLE, 60L);
    SETOPT(e, CURLOPT_TCP_KEEPINTVL, 30L);
    /* No User-Agent: curl formats it anew for every request, which costs
     * about a tenth of curl's CPU per request (measured), and no runtime
     * needs it. */
    /* Bodies over 64 KiB go through curl's upload buffer, which then stays
     * with the pooled handle: the smallest curl allows. */
    SETOPT(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
    SETOPT(e, CURLOPT_ERRORBUFFER, r->errbuf);
    SETOPT(e, CURLOPT_HEADERFUNCTION, header_cb);
    SETOPT(e, CURLOPT_HEADERDATA, (void *)r);
    SETOPT(e, CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(e, CURLOPT_WRITEDATA, (void *)r);
    return 0;
fail:
    curl_easy_cleanup(e);
    r->easy = NULL;
    return -EIO;
}

static void
req_destroy(struct creq *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    if (r->first_byte)
        event_free(r->first_byte);
    if (r->resume)
        event_free(r->resume);
    lm_buf_release(&r->body);
    lm_buf_release(&r->reqhead);
    lm_buf_release(&r->pub.resphead);
    free(r);
}

static int
req_get(struct lm_upcurl *u, struct creq **out)
{
    struct creq *r = u->free_reqs;
    if (r) {
        u->free_reqs = r->next_free;
        u->nfree_reqs--;
        *out = r;
        return 0;
    }
    r = lm_xcalloc(1, sizeof(*r));
    r->u = u;
    r->pub.u = u->up;
    r->pub.curl = true;
    lm_buf_init(&r->body, 0);
    lm_buf_init(&r->reqhead, REQ_HEAD_CAP);
    lm_buf_init(&r->pub.resphead, HEAD_CAP);
    link_init(&r->live);
    link_init(&r->todo);
    r->first_byte = evtimer_new(u->base, first_byte_cb, r);
    r->resume = event_new(u->base, -1, 0, resume_cb, r);
    int rc = r->first_byte && r->resume ? easy_init(r) : -ENOMEM;
    if (rc) {
        req_destroy(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* Back to the pool; the request must be detached. */
static void
recycle(struct creq *r)
{
    struct lm_upcurl *u = r->u;
    r->state = REQ_IDLE;
    if (u->nfree_reqs >= FREE_REQS_MAX || u->up->freeing) {
        req_destroy(r);
        return;
    }
    if (r->body.cap > KEEP_BUF_CAP)
        lm_buf_release(&r->body);
    if (r->reqhead.cap > KEEP_BUF_CAP)
        lm_buf_release(&r->reqhead);
    r->next_free = u->free_reqs;
    u->free_reqs = r;
    u->nfree_reqs++;
}

/* Leaves the multi handle and every list. abort closes the connection so the
 * runtime sees us leave: a transfer removed before its end is never put back
 * in the pool, and FORBID_REUSE makes that explicit. */
static void
detach(struct creq *r, bool abort)
{
    struct lm_upcurl *u = r->u;
    if (r->state == REQ_ATTACHED) {
        if (abort)
            curl_easy_setopt(r->easy, CURLOPT_FORBID_REUSE, 1L);
        curl_multi_remove_handle(u->multi, r->easy);
    }
    r->state = REQ_DONE;
    evtimer_del(r->first_byte);
    event_del(r->resume);
    if (link_linked(&r->live))
        link_del(&r->live);
    if (link_linked(&r->todo))
        link_del(&r->todo);
    if (r->counted) {
        r->counted = false;
        u->active--;
    }
}

static void
finish(struct creq *r, int err, const char *msg)
{
    detach(r, err != 0);
    if (!r->cancelled && r->cbs.on_done)
        r->cbs.on_done(&r->pub, err, msg ? msg : "", r->arg);
    recycle(r);
}

/* curl's verdict in the header's terms. A connection that closes mid-body
 * (short of Content-Length or of the last chunk) is CURLE_PARTIAL_FILE, one
 * that closes before any answer CURLE_GOT_NOTHING, a reset CURLE_RECV_ERROR:
 * all -ECONNRESET. Connect and TLS handshake failures are -ECONNREFUSED; a
 * reply that is not HTTP/1.x (curl refuses HTTP/0.9) is -EPROTO. */
static int
map_result(struct creq *r, CURLcode c, const char **msg)
{
    *msg = r->errbuf[0] ? r->errbuf : curl_easy_strerror(c);
    if (r->err) {
        *msg = r->errmsg;
        return r->err;
    }
    switch (c) {
    case CURLE_OK:
        if (!r->pub.head_done) {
            *msg = "no response headers";
            return -EPROTO;
        }
        return 0;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return -ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
        return -ECONNRESET;
    case CURLE_FILESIZE_EXCEEDED:
        return -EMSGSIZE;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_CONTENT_ENCODING:
        return -EPROTO;
    default:
        return -EIO;
    }
}

static int
attach(struct creq *r)
{
    CURLMcode mc = curl_multi_add_handle(r->u->multi, r->easy);
    if (mc != CURLM_OK) {
        log_warn("cannot add transfer: %s", curl_multi_strerror(mc));
        return -EIO;
    }
    r->state = REQ_ATTACHED;
    /* Added from a callback of ours (a request started from on_done, say):
     * after_curl() starts it at once instead of a turn of the loop later. */
    if (r->u->up->depth)
        r->u->kick = true;
    return 0;
}

/* Completions first, then queued work, until both are empty. Runs only when
 * no curl call is on the stack, so add and remove are allowed here. */
static void
after_curl(struct lm_upcurl *u)
{
    if (u->in_curl)
        return;
    /* A caller that restarts every failed request from on_done must not keep
     * us here forever: past a few kicks, curl's zero timer takes over. */
    unsigned kicks = 0;
    for (;;) {
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(u->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            CURL *easy = m->easy_handle;
            CURLcode res = m->data.result; /* m dies with remove_handle */
            char *p = NULL;
            curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p);
            struct creq *r = (struct creq *)(void *)p;
            if (!r || r->state != REQ_ATTACHED) {
                curl_multi_remove_handle(u->multi, easy);
                continue;
            }
            const char *msg;
            int err = map_result(r, res, &msg);
            if (err && !r->cancelled)
                log_debug("request failed: %s (%d)", msg, err);
            finish(r, err, msg);
        }
        if (!link_linked(&u->todo)) {
            if (!u->kick || u->up->freeing || kicks++ >= 16)
                break;
            u->kick = false;
            int running;
            u->in_curl++;
            curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
            u->in_curl--;
            continue;
        }
        struct creq *r = LINK_ENTRY(u->todo.next, struct creq, todo);
        link_del(&r->todo);
        if (r->cancelled) {
            detach(r, true);
            recycle(r);
        } else if (r->state == REQ_QUEUED && attach(r) != 0) {
            finish(r, -EIO, "cannot add transfer");
        }
    }
}

static void
first_byte_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct creq *r = arg;
    struct lm_upcurl *u = r->u;
    if (r->cancelled || r->pub.head_done || (r->state != REQ_ATTACHED && r->state != REQ_QUEUED))
        return;
    enter(u);
    snprintf(r->msg, sizeof(r->msg), "no response headers within %u ms", r->first_byte_ms);
    finish(r, -ETIMEDOUT, r->msg);
    after_curl(u);
    leave(u);
}

static void
resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct creq *r = arg;
    struct lm_upcurl *u = r->u;
    if (r->cancelled || r->paused || !r->curl_paused || r->state != REQ_ATTACHED)
        return;
    r->curl_paused = false;
    enter(u);
    u->in_curl++;
    /* May deliver the bytes curl held, through write_cb and on_data. */
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
    u->in_curl--;
    after_curl(u);
    leave(u);
}

/* --- curl callbacks --------------------------------------------------------- */

static size_t
fail_in_cb(struct creq *r, int err, const char *msg)
{
    if (!r->err) {
        r->err = err;
        r->errmsg = msg;
    }
    return CURL_WRITEFUNC_ERROR;
}

static size_t
header_cb(char *p, size_t size, size_t n, void *arg)
{
    struct creq *r = arg;
    size_t len = size * n;
    if (r->cancelled || r->err)
        return CURL_WRITEFUNC_ERROR;
    if (len > HEAD_CAP - r->head_bytes)
        return fail_in_cb(r, -EPROTO, "response headers too large");
    r->head_bytes += len;
    if (r->pub.head_done)
        return len; /* trailers: counted, not kept */
    size_t ll = len;
    if (ll && p[ll - 1] == '\n')
        ll--;
    if (ll && p[ll - 1] == '\r')
        ll--;
    if (ll == 0) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code < 200) {
            /* 1xx: the real response follows. */
            lm_buf_reset(&r->pub.resphead);
            return len;
        }
        r->pub.head_done = true;
        evtimer_del(r->first_byte);
        if (r->cbs.on_head)
            r->cbs.on_head(&r->pub, (int)code, r->arg);
        return r->cancelled ? CURL_WRITEFUNC_ERROR : len;
    }
    if (ll >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        lm_buf_reset(&r->pub.resphead);
        return len;
    }
    if (lm_upstream_store_header_(&r->pub.resphead, p, ll))
        return fail_in_cb(r, -EPROTO, "malformed or oversized response header");
    return len;
}

static size_t
write_cb(char *p, size_t size, size_t n, void *arg)
{
    struct creq *r = arg;
    size_t len = size * n;
    if (r->cancelled || r->err)
        return CURL_WRITEFUNC_ERROR;
    if (r->paused) {
        /* curl keeps these bytes and stops reading the socket. */
        r->curl_paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (r->max && len > r->max - r->received) {
        snprintf(r->msg, sizeof(r->msg), "response larger than %zu bytes", r->max);
        return fail_in_cb(r, -EMSGSIZE, r->msg);
    }
    r->received += len;
    if (r->cbs.on_data && len)
        r->cbs.on_data(&r->pub, p, len, r->arg);
    return r->cancelled ? CURL_WRITEFUNC_ERROR : len;
}

/* --- options (checked by upstream.c) --------------------------------------------- */

/* The per-request options; the easy handle may carry a previous request's. */
static int
req_setup(struct creq *r, const struct lm_upstream_opts *o)
{
    CURL *e = r->easy;
    lm_buf_reset(&r->reqhead);
    lm_buf_reset(&r->pub.resphead);
    bool post = o->method[0] == 'P';
    size_t nh = 0;
    for (; nh < LM_UPSTREAM_MAX_HEADERS && o->headers[nh]; nh++)
        if (lm_buf_append(&r->reqhead, o->headers[nh], strlen(o->headers[nh]) + 1))
            return -EINVAL;
    /* curl would send "Expect: 100-continue" for big bodies and wait. */
    if (post) {
        if (lm_buf_append(&r->reqhead, "Expect:", sizeof("Expect:")))
            return -EINVAL;
        nh++;
    }
    /* Our own list nodes over our own copies: no allocation per request. */
    char *s = r->reqhead.data;
    for (size_t i = 0; i < nh; i++) {
        r->hl[i].data = s;
        r->hl[i].next = i + 1 < nh ? &r->hl[i + 1] : NULL;
        s += strlen(s) + 1;
    }

    SETOPT(e, CURLOPT_URL, o->url);
    SETOPT(e, CURLOPT_HTTPHEADER, nh ? r->hl : NULL);
    if (post) {
        lm_buf_reset(&r->body);
        if (o->body_len && lm_buf_append(&r->body, o->body, o->body_len))
            return -EINVAL;
        SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        /* Never NULL: curl would read the body from stdin. */
        SETOPT(e, CURLOPT_POSTFIELDS, o->body_len ? (const char *)r->body.data : "");
    } else {
        SETOPT(e, CURLOPT_HTTPGET, 1L);
    }
    long cto = o->connect_timeout_ms ? (long)o->connect_timeout_ms : CONNECT_MS_DEFAULT;
    SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, cto);
    SETOPT(e, CURLOPT_TIMEOUT_MS, (long)o->total_timeout_ms);
    SETOPT(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_response_bytes);
    SETOPT(e, CURLOPT_FORBID_REUSE, 0L);
    return 0;
fail:
    return -EIO;
}

/* --- internal API (upstream_internal.h) ----------------------------------------- */

int
lm_upcurl_new(struct lm_upcurl **out, struct lm_upstream *up)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -EIO;
    struct lm_upcurl *u = lm_xcalloc(1, sizeof(*u));
    u->up = up;
    u->base = up->base;
    link_init(&u->live);
    link_init(&u->todo);
    link_init(&u->socks);
    u->multi = curl_multi_init();
    u->timer = evtimer_new(u->base, timer_event_cb, u);
    if (!u->multi || !u->timer)
        goto fail;
    if (curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, sock_cb) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, (void *)u) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_cb) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, (void *)u) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)MAX_CONNECTS) != CURLM_OK)
        goto fail;
    *out = u;
    return 0;
fail:
    if (u->multi)
        curl_multi_cleanup(u->multi);
    if (u->timer)
        event_free(u->timer);
    free(u);
    curl_global_cleanup();
    return -EIO;
}

void
lm_upcurl_destroy(struct lm_upcurl *u)
{
    if (!u)
        return;
    while (link_linked(&u->live)) {
        struct creq *r = LINK_ENTRY(u->live.next, struct creq, live);
        detach(r, true);
        req_destroy(r);
    }
    while (u->free_reqs) {
        struct creq *r = u->free_reqs;
        u->free_reqs = r->next_free;
        req_destroy(r);
    }
    /* Closes the pooled connections; may still call sock_cb and timer_cb. */
    curl_multi_cleanup(u->multi);
    while (link_linked(&u->socks)) {
        struct sock *s = LINK_ENTRY(u->socks.next, struct sock, all);
        link_del(&s->all);
        event_free(s->ev);
        free(s);
    }
    event_free(u->timer);
    free(u);
    curl_global_cleanup();
}

void
lm_upcurl_cancel_all(struct lm_upcurl *u)
{
    if (!u)
        return;
    struct link *l = u->live.next;
    while (l != &u->live) {
        struct link *next = l->next;
        lm_upcurl_cancel(&LINK_ENTRY(l, struct creq, live)->pub);
        l = next;
    }
}

int
lm_upcurl_start(struct lm_upcurl *u, const struct lm_upstream_opts *o,
                const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out)
{
    struct creq *r;
    int rc = req_get(u, &r);
    if (rc)
        return rc;
    r->cancelled = r->paused = r->curl_paused = r->pub.head_done = false;
    r->err = 0;
    r->errmsg = NULL;
    r->received = 0;
    r->head_bytes = 0;
    r->max = o->max_response_bytes;
    r->first_byte_ms = o->first_byte_timeout_ms;
    r->cbs = *cbs;
    r->arg = arg;
    r->msg[0] = '\0';
    r->errbuf[0] = '\0';
    rc = req_setup(r, o);
    if (rc)
        goto fail;
    if (u->in_curl) {
        /* Inside a curl callback: curl_multi_add_handle must wait. */
        r->state = REQ_QUEUED;
        link_add_tail(&u->todo, &r->todo);
    } else {
        rc = attach(r);
        if (rc)
            goto fail;
    }
    link_add_tail(&u->live, &r->live);
    r->counted = true;
    u->active++;
    if (r->first_byte_ms) {
        struct timeval tv = {.tv_sec = r->first_byte_ms / 1000,
                             .tv_usec = (r->first_byte_ms % 1000) * 1000};
        evtimer_add(r->first_byte, &tv);
    }
    *out = &r->pub;
    return 0;
fail:
    if (link_linked(&r->todo))
        link_del(&r->todo);
    r->state = REQ_DONE;
    recycle(r);
    return rc;
}

static struct creq *
creq_of(struct lm_upstream_req *pub)
{
    return (struct creq *)(void *)pub;
}

static bool
req_live(const struct creq *r)
{
    return !r->cancelled && (r->state == REQ_ATTACHED || r->state == REQ_QUEUED);
}

void
lm_upcurl_pause(struct lm_upstream_req *pub)
{
    struct creq *r = creq_of(pub);
    if (!req_live(r))
        return;
    r->paused = true;
    event_del(r->resume);
}

void
lm_upcurl_resume(struct lm_upstream_req *pub)
{
    struct creq *r = creq_of(pub);
    if (!req_live(r) || !r->paused)
        return;
    r->paused = false;
    if (r->curl_paused)
        event_active(r->resume, EV_TIMEOUT, 1);
}

void
lm_upcurl_cancel(struct lm_upstream_req *pub)
{
    struct creq *r = creq_of(pub);
    if (!req_live(r))
        return;
    struct lm_upcurl *u = r->u;
    r->cancelled = true;
    if (r->counted) {
        r->counted = false;
        u->active--;
    }
    if (r->state == REQ_QUEUED || !u->in_curl) {
        detach(r, true);
        recycle(r);
        return;
    }
    /* Inside a curl callback: curl_multi_remove_handle must wait until curl
     * returns; after_curl() does it then. */
    evtimer_del(r->first_byte);
    event_del(r->resume);
    if (!link_linked(&r->todo))
        link_add_tail(&u->todo, &r->todo);
}

unsigned
lm_upcurl_active(const struct lm_upcurl *u)
{
    return u ? u->active : 0;
}
