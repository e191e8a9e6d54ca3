/* A minimal HTTP/1.1 server on raw libevent fd events: keep-alive,
 * pipelining (one response at a time, in order), bounded header and body
 * sizes. evhttp costs two epoll_ctl calls and an ioctl per request; here a
 * response is written straight from the read callback, which is what lets
 * one core answer tens of thousands of small requests a second. */
#define LM_LOG_MODULE "devllm"
#include "devllm/devllm.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log/log.h"

#define IN_INITIAL 4096
#define OUT_HIGH (256 * 1024) /* stop reading pipelined input above this */

static const char *
reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static const char *
date_header(struct lm_devllm_server *s)
{
    time_t now = time(NULL);
    if (now != s->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof(s->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_sec = now;
    }
    return s->date;
}

static void
conn_free(struct lm_devllm_conn *c)
{
    struct lm_devllm_server *s = c->srv;
    if (c->req)
        lm_devllm_api_closed(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->rev);
    event_free(c->wev);
    evbuffer_free(c->out);
    close(c->fd);
    free(c->in);
    free(c);
}

/* Frees happen only from the write callback, never deep in a call stack
 * that may still hold the connection. */
static void
conn_kill(struct lm_devllm_conn *c)
{
    c->closing = true;
    c->dead = true;
    event_active(c->wev, EV_WRITE, 1);
}

/* Closing a socket with unread input makes the kernel send a reset, which
 * can destroy our error answer before the client reads it. So a connection
 * we close on purpose first shuts down its sending side, then reads and
 * discards until the client closes too, for at most a second. */
static void
conn_linger(struct lm_devllm_conn *c)
{
    struct timeval tv = {1, 0};
    if (c->lingering)
        return;
    c->lingering = true;
    shutdown(c->fd, SHUT_WR);
    event_del(c->wev);
    c->want_write = false;
    event_add(c->rev, &tv);
}

void
lm_devllm_conn_flush(struct lm_devllm_conn *c)
{
    if (c->dead || c->lingering)
        return;
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            log_debug("write failed: %s", strerror(errno));
            conn_kill(c);
            return;
        }
        if (n == 0)
            break;
    }
    if (evbuffer_get_length(c->out) > 0) {
        if (!c->want_write) {
            event_add(c->wev, NULL);
            c->want_write = true;
        }
    } else if (c->closing) {
        conn_linger(c);
    }
}

size_t
lm_devllm_conn_pending(const struct lm_devllm_conn *c)
{
    return evbuffer_get_length(c->out);
}

static void
put_head(struct lm_devllm_conn *c, int status, const char *ctype, const char *extra,
         long long content_length)
{
    char head[512];
    int n;
    const char *conn_hdr = "";
    if (!c->keep_alive)
        conn_hdr = "Connection: close\r\n";
    else if (c->http10)
        conn_hdr = "Connection: keep-alive\r\n";
    if (content_length >= 0) {
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: labman-devllm\r\nDate: %s\r\n"
                     "Content-Type: %s\r\nContent-Length: %lld\r\n%s%s\r\n",
                     status, reason(status), date_header(c->srv), ctype, content_length,
                     conn_hdr, extra ? extra : "");
    } else {
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: labman-devllm\r\nDate: %s\r\n"
                     "Content-Type: %s\r\nCache-Control: no-cache\r\n%s%s%s\r\n",
                     status, reason(status), date_header(c->srv), ctype,
                     c->chunked ? "Transfer-Encoding: chunked\r\n" : "", conn_hdr,
                     extra ? extra : "");
    }
    if (n > 0 && (size_t)n < sizeof(head))
        evbuffer_add(c->out, head, (size_t)n);
}

void
lm_devllm_respond_extra(struct lm_devllm_conn *c, int status, const char *ctype,
                        const char *extra_headers, const char *body, size_t len)
{
    if (c->dead)
        return;
    put_head(c, status, ctype, extra_headers, (long long)len);
    if (len)
        evbuffer_add(c->out, body, len);
    if (!c->keep_alive)
        c->closing = true;
}

void
lm_devllm_respond(struct lm_devllm_conn *c, int status, const char *ctype, const char *body,
                  size_t len)
{
    lm_devllm_respond_extra(c, status, ctype, NULL, body, len);
}

void
lm_devllm_stream_begin(struct lm_devllm_conn *c, const char *ctype)
{
    if (c->dead)
        return;
    /* HTTP/1.0 has no chunked encoding: the end of the stream is the close. */
    c->chunked = !c->http10;
    if (c->http10)
        c->keep_alive = false;
    put_head(c, 200, ctype, NULL, -1);
}

void
lm_devllm_stream_write(struct lm_devllm_conn *c, const char *data, size_t len)
{
    if (c->dead || len == 0)
        return;
    if (c->chunked) {
        char hdr[24];
        int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
        evbuffer_add(c->out, hdr, (size_t)n);
        evbuffer_add(c->out, data, len);
        evbuffer_add(c->out, "\r\n", 2);
    } else {
        evbuffer_add(c->out, data, len);
    }
}

void
lm_devllm_stream_end(struct lm_devllm_conn *c)
{
    if (c->dead)
        return;
    if (c->chunked)
        evbuffer_add(c->out, "0\r\n\r\n", 5);
    c->chunked = false;
    if (!c->keep_alive)
        c->closing = true;
}

void
lm_devllm_conn_abort(struct lm_devllm_conn *c, bool flush)
{
    if (c->dead)
        return;
    if (flush) {
        c->closing = true;
        c->busy = false;
        lm_devllm_conn_flush(c);
    } else {
        evbuffer_drain(c->out, evbuffer_get_length(c->out));
        conn_kill(c);
    }
}

static void
http_error(struct lm_devllm_conn *c, int status, const char *msg)
{
    char body[256];
    int n = snprintf(body, sizeof(body),
                     "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\","
                     "\"param\":null,\"code\":null}}",
                     msg);
    c->keep_alive = false;
    lm_devllm_respond(c, status, "application/json", body, (size_t)n);
    c->closing = true;
}

static bool
is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static bool
value_has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++) {
        if (strncasecmp(v + i, tok, tl) == 0 && (i == 0 || v[i - 1] == ' ' || v[i - 1] == ',') &&
            (i + tl == n || v[i + tl] == ' ' || v[i + tl] == ',' || v[i + tl] == ';'))
            return true;
    }
    return false;
}

/* Parses c->in[0..hdr_len). Returns 0 or the HTTP status to answer with. */
static int
parse_head(struct lm_devllm_conn *c, const char *msg, const char **why)
{
    const char *p = msg, *end = msg + c->hdr_len - 2; /* keep the last CRLF */
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    bool have_len = false, expect = false;

    *why = "malformed request line";
    if (!eol || eol[1] != '\n')
        return 400;
    /* METHOD SP target SP HTTP/1.x */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p || (size_t)(sp1 - p) >= sizeof(c->method))
        return 400;
    for (const char *q = p; q < sp1; q++)
        if (*q < 'A' || *q > 'Z')
            return 400;
    memcpy(c->method, p, (size_t)(sp1 - p));
    c->method[sp1 - p] = '\0';
    const char *target = sp1 + 1;
    const char *sp2 = memchr(target, ' ', (size_t)(eol - target));
    if (!sp2 || sp2 == target || *target != '/')
        return 400;
    const char *qm = memchr(target, '?', (size_t)(sp2 - target));
    size_t plen = (size_t)((qm ? qm : sp2) - target);
    *why = "request target too long";
    if ((size_t)(sp2 - target) > LM_DEVLLM_PATH_MAX)
        return 414;
    for (const char *q = target; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f) {
            *why = "malformed request target";
            return 400;
        }
    memcpy(c->path, target, plen);
    c->path[plen] = '\0';
    size_t vlen = (size_t)(eol - sp2 - 1);
    *why = "unsupported HTTP version";
    if (vlen == 8 && memcmp(sp2 + 1, "HTTP/1.1", 8) == 0) {
        c->http10 = false;
        c->keep_alive = true;
    } else if (vlen == 8 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0) {
        c->http10 = true;
        c->keep_alive = false;
    } else if (vlen >= 5 && memcmp(sp2 + 1, "HTTP/", 5) == 0) {
        return 505;
    } else {
        *why = "malformed request line";
        return 400;
    }

    c->body_len = 0;
    for (p = eol + 2; p < end; p = eol + 2) {
        eol = memchr(p, '\r', (size_t)(end - p));
        *why = "malformed header";
        if (!eol || eol[1] != '\n')
            return 400;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p)
            return 400;
        for (const char *q = p; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return 400;
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        const char *ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        for (const char *q = v; q < ve; q++)
            if (*q == '\n' || *q == '\0')
                return 400;
        size_t nl = (size_t)(colon - p), vl = (size_t)(ve - v);
        if (nl == 14 && strncasecmp(p, "content-length", 14) == 0) {
            size_t len = 0;
            *why = "bad Content-Length";
            if (vl == 0 || vl > 15)
                return 400;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return 400;
                len = len * 10 + (size_t)(v[i] - '0');
            }
            if (have_len && len != c->body_len)
                return 400;
            have_len = true;
            c->body_len = len;
        } else if (nl == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
            *why = "Transfer-Encoding is not supported; send Content-Length";
            return 501;
        } else if (nl == 10 && strncasecmp(p, "connection", 10) == 0) {
            if (value_has_token(v, vl, "close"))
                c->keep_alive = false;
            else if (value_has_token(v, vl, "keep-alive"))
                c->keep_alive = true;
        } else if (nl == 6 && strncasecmp(p, "expect", 6) == 0) {
            expect = vl == 12 && strncasecmp(v, "100-continue", 12) == 0;
        }
    }
    *why = "request body too large";
    if (c->body_len > c->srv->opts.max_body)
        return 413;
    c->expect_continue = expect;
    return 0;
}

static void
conn_process(struct lm_devllm_conn *c)
{
    size_t off = 0;
    while (!c->busy && !c->closing && !c->dead) {
        const char *msg = c->in + off;
        size_t avail = c->in_len - off;
        if (avail == 0)
            break;
        if (c->hdr_len == 0) {
            const char *e = memmem(msg, avail < LM_DEVLLM_HDR_MAX ? avail : LM_DEVLLM_HDR_MAX,
                                   "\r\n\r\n", 4);
            if (!e) {
                if (avail >= LM_DEVLLM_HDR_MAX)
                    http_error(c, 431, "request header too large");
                break;
            }
            c->hdr_len = (size_t)(e - msg) + 4;
            const char *why;
            int st = parse_head(c, msg, &why);
            if (st) {
                http_error(c, st, why);
                break;
            }
        }
        if (avail < c->hdr_len + c->body_len) {
            if (c->expect_continue && !c->continue_sent) {
                evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                c->continue_sent = true;
            }
            break;
        }
        struct lm_devllm_http_req r = {
            .method = c->method,
            .path = c->path,
            .body = msg + c->hdr_len,
            .body_len = c->body_len,
        };
        off += c->hdr_len + c->body_len;
        c->hdr_len = 0;
        c->continue_sent = false;
        c->expect_continue = false;
        c->srv->requests_total++;
        c->in_dispatch = true;
        lm_devllm_api_handle(c, &r);
        c->in_dispatch = false;
    }
    if (off > 0) {
        c->in_len -= off;
        memmove(c->in, c->in + off, c->in_len);
    }
    /* Give back the memory of a large body once it has been handled. */
    if (c->in_len == 0 && c->in_cap > 64 * 1024) {
        free(c->in);
        c->in_cap = IN_INITIAL;
        c->in = lm_xmalloc(c->in_cap);
    }
}

static bool
ensure_space(struct lm_devllm_conn *c)
{
    if (c->in_len < c->in_cap)
        return true;
    size_t need = c->hdr_len ? c->hdr_len + c->body_len : LM_DEVLLM_HDR_MAX;
    if (c->in_cap >= need)
        return false;
    size_t cap = c->in_cap * 2;
    if (cap > need)
        cap = need;
    c->in = lm_xrealloc(c->in, cap);
    c->in_cap = cap;
    return true;
}

static void
read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lm_devllm_conn *c = arg;
    if (c->lingering) {
        char sink[4096];
        ssize_t n;
        while ((n = read(fd, sink, sizeof(sink))) > 0)
            ;
        if ((what & EV_TIMEOUT) || n == 0 || (errno != EAGAIN && errno != EINTR))
            conn_free(c);
        return;
    }
    for (int round = 0; round < 16 && !c->dead; round++) {
        if (!ensure_space(c) || (c->busy && evbuffer_get_length(c->out) > OUT_HIGH)) {
            /* Full of pipelined requests while one is still running: wait. */
            event_del(c->rev);
            c->read_paused = true;
            break;
        }
        size_t room = c->in_cap - c->in_len;
        ssize_t n = read(fd, c->in + c->in_len, room);
        if (n == 0) {
            if (c->busy) {
                log_debug("client closed the connection mid-request");
                conn_free(c);
                return;
            }
            event_del(c->rev);
            c->closing = true;
            break;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_free(c);
            return;
        }
        c->in_len += (size_t)n;
        conn_process(c);
        if ((size_t)n < room)
            break;
    }
    lm_devllm_conn_flush(c);
}

static void
write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lm_devllm_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->dead) {
        conn_free(c);
        return;
    }
    lm_devllm_conn_flush(c);
    if (c->dead)
        return;
    if (evbuffer_get_length(c->out) == 0 && c->want_write) {
        event_del(c->wev);
        c->want_write = false;
    }
    if (c->req)
        lm_devllm_api_drained(c);
    if (c->read_paused && !c->dead && !c->closing) {
        c->read_paused = false;
        event_add(c->rev, NULL);
        conn_process(c);
        lm_devllm_conn_flush(c);
    }
}

void
lm_devllm_conn_done(struct lm_devllm_conn *c)
{
    c->busy = false;
    if (c->dead || c->in_dispatch)
        return;
    conn_process(c);
    if (c->read_paused && !c->closing) {
        c->read_paused = false;
        event_add(c->rev, NULL);
    }
}

static void
accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    struct lm_devllm_server *s = arg;
    (void)what;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                log_warn("accept: %s", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct lm_devllm_conn *c = lm_xcalloc(1, sizeof(*c));
        c->srv = s;
        c->fd = fd;
        c->in_cap = IN_INITIAL;
        c->in = lm_xmalloc(c->in_cap);
        c->out = evbuffer_new();
        c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, read_cb, c);
        c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, write_cb, c);
        if (!c->out || !c->rev || !c->wev) {
            log_error("out of memory for a connection");
            abort();
        }
        c->next = s->conns;
        if (s->conns)
            s->conns->prev = c;
        s->conns = c;
        event_add(c->rev, NULL);
    }
}

int
lm_devllm_server_listen(struct lm_devllm_server *s)
{
    struct addrinfo hints = {0}, *res = NULL;
    char port[16];
    int fd = -1, rc = -EADDRNOTAVAIL;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", s->opts.port);
    int gai = getaddrinfo(s->opts.host[0] ? s->opts.host : NULL, port, &hints, &res);
    if (gai != 0) {
        log_error("cannot resolve %s: %s", s->opts.host, gai_strerror(gai));
        return -EINVAL;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0) {
            rc = 0;
            break;
        }
        rc = -errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (rc) {
        log_error("cannot listen on %s:%d: %s", s->opts.host, s->opts.port, strerror(-rc));
        return rc;
    }
    s->listen_fd = fd;
    s->accept_ev = event_new(s->base, fd, EV_READ | EV_PERSIST, accept_cb, s);
    event_add(s->accept_ev, NULL);
    return 0;
}

void
lm_devllm_server_close(struct lm_devllm_server *s)
{
    while (s->conns)
        conn_free(s->conns);
    if (s->accept_ev)
        event_free(s->accept_ev);
    s->accept_ev = NULL;
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    s->listen_fd = -1;
}
