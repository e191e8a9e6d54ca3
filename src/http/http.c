/* An HTTP/1.1 server on raw libevent fd events. evhttp costs extra syscalls
 * and allocations per request; here a request that arrives in one read is
 * parsed in place in a buffer shared by all connections, answered from the
 * read callback, and written with one writev. Only a connection with a
 * partial or outstanding request holds input memory of its own, so an idle
 * keep-alive connection costs about a kilobyte. */
#define LM_LOG_MODULE "http"
#include "http/http.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "log/log.h"
#include "util/util.h"

#define RBUF_SIZE (64 * 1024)  /* shared read buffer */
#define IN_MIN 4096            /* first size of a connection's own input buffer */
#define OUT_LOW (16 * 1024)    /* DRAINED below this */
#define OUT_HIGH (256 * 1024)  /* no more requests are read above this */
#define LINGER_MS 1000
#define ACCEPT_RETRY_MS 100    /* after EMFILE */
#define SPARE_SLOTS 64
#define SLOT_RAW 8192          /* requests up to this size are copied into their slot */
#define NO_DEADLINE UINT64_MAX

/* The parsed request of a connection that is reading or answering one.
 * Idle connections hold none; spare ones are kept by the server. A request
 * read whole into the shared buffer is copied into raw before it is handed
 * out, so its strings never move while the handler may hold them. */
struct slot {
    struct slot *next_free;
    struct lm_http_request req;
    char path[LM_HTTP_MAX_TARGET + 1];
    char raw[SLOT_RAW];
};

struct lm_http_server {
    struct event_base *base;
    struct lm_http_server_opts o;
    char *server_name;
    int lfd;
    struct event *accept_ev, *retry_ev;
    bool listening, accept_paused, stopping, early_close;
    struct lm_http_conn *conns;
    size_t nconns;
    unsigned in_flight;
    struct slot *free_slots;
    size_t n_free_slots;
    char *rbuf; /* RBUF_SIZE + 1 */
    char date[40];
    time_t date_sec;
    char addr[64];
    uint64_t now; /* ms, refreshed at each callback */
};

struct lm_http_conn {
    struct lm_http_server *srv;
    struct lm_http_conn *next, *prev;
    int fd;
    struct event *rev, *wev, *tev, *cev; /* cev: EV_CLOSED while reading is paused */
    struct evbuffer *out;
    /* Input: [in_off, in_len) is unconsumed; in[in_len] is always writable. */
    char *in;
    size_t in_off, in_len, in_cap;
    size_t scan; /* bytes of the current head already searched for its end */
    struct slot *slot;
    size_t hdr_len, body_len; /* of the current request; hdr_len 0 = head not parsed */
    char saved;               /* the byte the body's NUL terminator replaced */
    lm_http_event_fn *watch_fn;
    void *watch_arg;
    uint64_t t_first, t_hdr, t_idle, t_write, t_linger, armed;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer_sa;
    char peer[64];
    bool in_shared;    /* in is the server's rbuf, for this callback only */
    bool req_copied;   /* the active request's bytes are in slot->raw, not in */
    bool has_saved;    /* saved holds a byte to put back */
    bool nul_pending;  /* the body ended at in_len: the next read overwrites its NUL */
    bool keep_alive, expect_continue, continue_sent, head_req;
    int minor;
    bool active;       /* a request was handed out and is not answered yet */
    bool streaming, chunked;
    bool served;       /* answered at least one request */
    bool closing;      /* close once the output is sent */
    bool dead;         /* no more I/O; freed at the top of a callback */
    bool lingering;
    bool in_dispatch;
    bool reading;      /* rev is added */
    bool want_write;   /* wev is added */
    bool flush_scheduled;
    bool backlog;      /* complete requests wait for the client to read answers */
};

static void conn_kill(struct lm_http_conn *c);
static void closed_cb(evutil_socket_t fd, short what, void *arg);

/* --- small things ------------------------------------------------------ */

const char *
lm_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* RFC 9110 token characters. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

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

int
lm_http_parse_head(char *buf, size_t len, struct lm_http_request *r, char *pathbuf,
                   struct lm_http_head *h)
{
    char *p = buf, *end, *eol;
    bool have_len = false, conn_close = false, conn_ka = false;

    memset(h, 0, sizeof(*h));
    r->method = r->target = r->path = r->query = "";
    r->minor = 0;
    r->n_headers = 0;
    r->body = NULL;
    r->body_len = 0;
    h->why = "malformed request line";
    if (len < 4 || memcmp(buf + len - 4, "\r\n\r\n", 4) != 0)
        return 400;
    end = buf + len - 2; /* the blank line's CRLF ends the headers */

    /* method SP target SP HTTP/1.x CRLF */
    eol = memchr(p, '\r', (size_t)(end - p));
    if (!eol || eol[1] != '\n')
        return 400;
    char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p || sp1 - p > 32)
        return 400;
    for (const char *q = p; q < sp1; q++)
        if (!tchar[(unsigned char)*q])
            return 400;
    char *target = sp1 + 1;
    char *sp2 = memchr(target, ' ', (size_t)(eol - target));
    if (!sp2 || sp2 == target)
        return 400;
    h->why = "request target too long";
    if (sp2 - target > LM_HTTP_MAX_TARGET)
        return 414;
    h->why = "malformed request target";
    if (*target != '/' && !(sp2 - target == 1 && *target == '*'))
        return 400;
    for (const char *q = target; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return 400;
    const char *v = sp2 + 1;
    size_t vlen = (size_t)(eol - v);
    if (vlen == 8 && memcmp(v, "HTTP/1.", 7) == 0 && v[7] >= '0' && v[7] <= '9') {
        r->minor = v[7] - '0';
    } else if (vlen == 8 && memcmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' &&
               v[6] == '.' && v[7] >= '0' && v[7] <= '9') {
        h->why = "unsupported HTTP version";
        return 505;
    } else {
        h->why = "malformed request line";
        return 400;
    }
    *sp1 = '\0';
    *sp2 = '\0';
    r->method = p;
    r->target = target;
    char *qm = memchr(target, '?', (size_t)(sp2 - target));
    if (qm) {
        memcpy(pathbuf, target, (size_t)(qm - target));
        pathbuf[qm - target] = '\0';
        r->path = pathbuf;
        r->query = qm + 1;
    } else {
        r->path = target;
        r->query = sp2; /* "" */
    }

    for (p = eol + 2; p < end; p = eol + 2) {
        h->why = "malformed header";
        eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol[1] != '\n')
            return 400;
        char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p)
            return 400;
        for (const char *q = p; q < colon; q++)
            if (!tchar[(unsigned char)*q])
                return 400;
        char *val = colon + 1;
        while (val < eol && (*val == ' ' || *val == '\t'))
            val++;
        char *ve = eol;
        while (ve > val && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        const unsigned char *q = (const unsigned char *)val, *qe = (const unsigned char *)ve;
        for (; q < qe; q++)
            if ((unsigned char)(*q - 0x20) >= 0x5f && /* one test for the usual byte */
                ((*q < 0x20 && *q != '\t') || *q == 0x7f))
                return 400;
        if (r->n_headers == LM_HTTP_MAX_HEADERS) {
            h->why = "too many header lines";
            return 431;
        }
        size_t nl = (size_t)(colon - p), vl = (size_t)(ve - val);
        if (nl == 14 && strncasecmp(p, "content-length", 14) == 0) {
            size_t n = 0;
            h->why = "bad Content-Length";
            if (vl == 0 || vl > 15)
                return 400;
            for (size_t i = 0; i < vl; i++) {
                if (val[i] < '0' || val[i] > '9')
                    return 400;
                n = n * 10 + (size_t)(val[i] - '0');
            }
            if (have_len && n != h->content_length)
                return 400;
            have_len = true;
            h->content_length = n;
        } else if (nl == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
            /* Chunked request bodies are not decoded: every client we serve
             * (OpenAI SDKs, Open WebUI, curl) sends Content-Length, and a
             * refusal here also closes the door on request smuggling. */
            h->why = "Transfer-Encoding is not supported; send Content-Length";
            return 501;
        } else if (nl == 10 && strncasecmp(p, "connection", 10) == 0) {
            conn_close |= value_has_token(val, vl, "close");
            conn_ka |= value_has_token(val, vl, "keep-alive");
        } else if (nl == 6 && strncasecmp(p, "expect", 6) == 0) {
            h->expect_continue = vl == 12 && strncasecmp(val, "100-continue", 12) == 0;
        }
        *colon = '\0';
        *ve = '\0';
        r->headers[r->n_headers].name = p;
        r->headers[r->n_headers].value = val;
        r->n_headers++;
    }
    h->keep_alive = conn_close ? false : r->minor >= 1 ? true : conn_ka;
    h->why = NULL;
    return 0;
}

const char *
lm_http_header_get(const struct lm_http_request *r, const char *name)
{
    for (size_t i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

static const char *
date_header(struct lm_http_server *s)
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

static struct slot *
slot_get(struct lm_http_server *s)
{
    struct slot *sl = s->free_slots;
    if (sl) {
        s->free_slots = sl->next_free;
        s->n_free_slots--;
        return sl;
    }
    return lm_xmalloc(sizeof(*sl));
}

static void
slot_put(struct lm_http_server *s, struct slot *sl)
{
    if (s->n_free_slots >= SPARE_SLOTS) {
        free(sl);
        return;
    }
    sl->next_free = s->free_slots;
    s->free_slots = sl;
    s->n_free_slots++;
}

/* --- timers ---------------------------------------------------------------- */

/* The one deadline that applies to c now, from the timestamps of its phases. */
static uint64_t
conn_deadline(const struct lm_http_conn *c)
{
    const struct lm_http_server_opts *o = &c->srv->o;
    if (c->lingering)
        return c->t_linger + LINGER_MS;
    if (c->want_write)
        return c->t_write + o->idle_timeout_ms; /* the client stopped reading */
    if (c->active)
        return NO_DEADLINE; /* the handler's business */
    if (c->hdr_len)
        return c->t_hdr + o->body_timeout_ms;
    if (c->in_len > c->in_off)
        return c->t_first + o->header_timeout_ms;
    return c->t_idle + (c->served ? o->idle_timeout_ms : o->header_timeout_ms);
}

/* Deadlines move often (every request) but the timer is re-armed only when
 * one moves earlier; a timer that fires early finds a later deadline and
 * sleeps again. So the request path costs no timer operations. */
static void
timer_update(struct lm_http_conn *c)
{
    if (c->dead)
        return;
    uint64_t d = conn_deadline(c);
    if (d == NO_DEADLINE || (c->armed && c->armed <= d))
        return;
    uint64_t now = lm_now_ms();
    uint64_t ms = d > now ? d - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->tev, &tv);
    c->armed = d;
}

/* --- connection life ------------------------------------------------------ */

static void
reading_on(struct lm_http_conn *c)
{
    if (c->reading || c->dead)
        return;
    event_add(c->rev, NULL);
    c->reading = true;
    if (c->cev)
        event_del(c->cev);
}

/* Stops reading input. With watch, still notices the client going away
 * (EPOLLRDHUP), which is how a paused connection learns its client left. */
static void
reading_off(struct lm_http_conn *c, bool watch)
{
    if (!c->reading)
        return;
    event_del(c->rev);
    c->reading = false;
    if (watch && c->srv->early_close && !c->lingering && !c->dead) {
        if (!c->cev) {
            c->cev = event_new(c->srv->base, c->fd, EV_CLOSED | EV_PERSIST, closed_cb, c);
            if (!c->cev)
                abort();
        }
        event_add(c->cev, NULL);
    }
}

static void
accept_resume(struct lm_http_server *s)
{
    if (s->accept_paused && s->listening && s->nconns < s->o.max_conns) {
        event_add(s->accept_ev, NULL);
        s->accept_paused = false;
    }
}

static void
conn_free(struct lm_http_conn *c)
{
    struct lm_http_server *s = c->srv;
    if (c->active)
        s->in_flight--;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->tev);
    if (c->cev)
        event_free(c->cev);
    evbuffer_free(c->out);
    if (c->fd >= 0)
        close(c->fd);
    if (!c->in_shared)
        free(c->in);
    if (c->slot)
        slot_put(s, c->slot);
    free(c);
    accept_resume(s);
}

/* A request handed to a handler that never watched it and whose client went
 * away: the socket goes now, the struct when the handler answers. */
static void
conn_zombie(struct lm_http_conn *c)
{
    event_del(c->rev);
    event_del(c->wev);
    event_del(c->tev);
    if (c->cev)
        event_del(c->cev);
    c->reading = c->want_write = false;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    evbuffer_drain(c->out, evbuffer_get_length(c->out));
}

static void
request_done(struct lm_http_conn *c)
{
    struct lm_http_server *s = c->srv;
    size_t total = c->hdr_len + c->body_len;

    c->active = c->streaming = c->chunked = false;
    c->watch_fn = NULL;
    c->watch_arg = NULL;
    s->in_flight--;
    if (c->has_saved)
        c->in[c->in_off + total] = c->saved;
    c->has_saved = c->nul_pending = false;
    if (!c->req_copied)
        c->in_off += total;
    c->req_copied = false;
    c->hdr_len = c->body_len = 0;
    c->served = true;
    if (c->slot) {
        slot_put(s, c->slot);
        c->slot = NULL;
    }
    if (!c->keep_alive || s->stopping)
        c->closing = true;
    if (!c->in_dispatch)
        s->now = lm_now_ms();
    c->t_idle = c->t_first = s->now;
}

/* Called at the top of a callback: handles a connection marked dead. Returns
 * true when c must not be touched any more. */
static bool
reap(struct lm_http_conn *c)
{
    if (!c->dead)
        return false;
    if (c->active && c->watch_fn) {
        lm_http_event_fn *fn = c->watch_fn;
        c->watch_fn = NULL;
        fn(c, LM_HTTP_CLOSED, c->watch_arg);
        if (c->active)
            request_done(c);
    }
    if (c->active) {
        conn_zombie(c);
        return true;
    }
    conn_free(c);
    return true;
}

/* Marks c dead; the free (and the handler's LM_HTTP_CLOSED) happen at the top
 * of the write callback, never deep in a call stack that may hold c. */
static void
conn_kill(struct lm_http_conn *c)
{
    if (c->dead)
        return;
    c->dead = true;
    event_active(c->wev, EV_WRITE, 1);
}

/* Closing a socket with unread input makes the kernel send a reset, which
 * can destroy our last answer before the client reads it. So a connection
 * we close on purpose first shuts down its sending side, then reads and
 * discards until the client closes too, for at most a second. */
static void
conn_linger(struct lm_http_conn *c)
{
    if (c->lingering || c->dead)
        return;
    c->lingering = true;
    c->t_linger = lm_now_ms();
    shutdown(c->fd, SHUT_WR);
    if (c->want_write) {
        event_del(c->wev);
        c->want_write = false;
    }
    reading_on(c);
    timer_update(c);
}

static void
flush(struct lm_http_conn *c)
{
    bool wrote = false;
    if (c->dead || c->lingering)
        return;
    /* Log lines held for this turn (the access log) go out before the
     * answers they are about: whoever reads the log after an answer finds
     * its line. Still one write for all the lines of a turn's completions. */
    lm_log_write_held();
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            log_debug("write to %s failed: %s", lm_http_conn_peer(c), strerror(errno));
            conn_kill(c);
            return;
        }
        if (n == 0)
            break;
        wrote = true;
    }
    if (evbuffer_get_length(c->out) > 0) {
        if (!c->want_write) {
            /* libevent does not register an event that is pending
             * activation, so a scheduled flush would leave the socket
             * unwatched: drop the activation first. */
            if (c->flush_scheduled) {
                event_del(c->wev);
                c->flush_scheduled = false;
            }
            event_add(c->wev, NULL);
            c->want_write = true;
            c->t_write = lm_now_ms();
        } else if (wrote) {
            c->t_write = lm_now_ms();
        }
        timer_update(c);
    } else {
        if (c->want_write) {
            event_del(c->wev);
            c->want_write = false;
        }
        if (c->closing && !c->active)
            conn_linger(c);
    }
}

/* Output made outside a read or write callback of c goes out once the loop
 * comes back: writes of one turn are sent together, and none waits longer. */
static void
schedule_flush(struct lm_http_conn *c)
{
    if (c->in_dispatch || c->flush_scheduled || c->want_write || c->dead)
        return;
    c->flush_scheduled = true;
    event_active(c->wev, EV_WRITE, 1);
}

/* After the handler's answer: a dead connection (a zombie, or one killed
 * while the handler held it) is freed from the write callback. */
static void
answered(struct lm_http_conn *c)
{
    if (c->dead)
        event_active(c->wev, EV_WRITE, 1);
    else
        schedule_flush(c);
}

/* Requests left waiting for output room go on once the output was sent. */
static void
backlog_resume(struct lm_http_conn *c)
{
    if (c->backlog && !c->want_write && !c->dead && !c->flush_scheduled) {
        c->flush_scheduled = true;
        event_active(c->wev, EV_WRITE, 1);
    }
}

/* --- responses ------------------------------------------------------------ */

/* Appends to a bounded head buffer; what does not fit is cut (the caller
 * checks the total). memcpy rather than snprintf: this runs per response. */
static char *
put(char *p, char *end, const char *s, size_t n)
{
    if (n > (size_t)(end - p))
        n = (size_t)(end - p);
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, end, lit) put(p, end, lit, sizeof(lit) - 1)

static char *
put_str(char *p, char *end, const char *s)
{
    return put(p, end, s, strlen(s));
}

static char *
put_uint(char *p, char *end, size_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(p, end, tmp + i, sizeof(tmp) - i);
}

/* length: Content-Length, or -1 for a stream (chunked when c->chunked), or
 * -2 for none at all (1xx, 204, 304). */
static void
put_head(struct lm_http_conn *c, int status, const char *ctype, const char *extra,
         long long length)
{
    struct lm_http_server *s = c->srv;
    char head[1024], *p = head, *end = head + sizeof(head);
    if (s->stopping)
        c->keep_alive = false;
    if (status < 100 || status > 999)
        status = 500;
    p = PUT_LIT(p, end, "HTTP/1.1 ");
    p = put_uint(p, end, (size_t)status);
    p = PUT_LIT(p, end, " ");
    p = put_str(p, end, lm_http_reason(status));
    p = PUT_LIT(p, end, "\r\n");
    if (s->server_name) {
        p = PUT_LIT(p, end, "Server: ");
        p = put_str(p, end, s->server_name);
        p = PUT_LIT(p, end, "\r\n");
    }
    p = PUT_LIT(p, end, "Date: ");
    p = put_str(p, end, date_header(s));
    p = PUT_LIT(p, end, "\r\n");
    if (ctype) {
        p = PUT_LIT(p, end, "Content-Type: ");
        p = put_str(p, end, ctype);
        p = PUT_LIT(p, end, "\r\n");
    }
    if (length >= 0) {
        p = PUT_LIT(p, end, "Content-Length: ");
        p = put_uint(p, end, (size_t)length);
        p = PUT_LIT(p, end, "\r\n");
    } else if (length == -1 && c->chunked) {
        p = PUT_LIT(p, end, "Transfer-Encoding: chunked\r\n");
    }
    if (!c->keep_alive)
        p = PUT_LIT(p, end, "Connection: close\r\n");
    else if (c->minor == 0)
        p = PUT_LIT(p, end, "Connection: keep-alive\r\n");
    if (p == end) {
        /* Only an absurd content type or server name gets here. */
        log_warn("response head over %zu bytes: answering 500", sizeof(head));
        p = head;
        p = PUT_LIT(p, end, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                            "Connection: close\r\n");
        c->keep_alive = false;
        extra = NULL;
    }
    evbuffer_add(c->out, head, (size_t)(p - head));
    if (extra)
        evbuffer_add(c->out, extra, strlen(extra));
    evbuffer_add(c->out, "\r\n", 2);
}

static bool
bodiless(int status)
{
    return status < 200 || status == 204 || status == 304;
}

static void
put_whole(struct lm_http_conn *c, int status, const char *ctype, const char *extra,
          const void *body, size_t len)
{
    put_head(c, status, ctype, extra, bodiless(status) ? -2 : (long long)len);
    if (len && !c->head_req && !bodiless(status))
        evbuffer_add(c->out, body, len);
}

void
lm_http_respond(struct lm_http_conn *c, int status, const char *content_type,
                const char *extra_headers, const void *body, size_t len)
{
    if (!c->active || c->streaming)
        return;
    if (!c->dead)
        put_whole(c, status, content_type, extra_headers, body, len);
    request_done(c);
    answered(c);
}

void
lm_http_stream_begin(struct lm_http_conn *c, int status, const char *content_type,
                     const char *extra_headers)
{
    if (!c->active || c->streaming)
        return;
    c->streaming = true;
    if (c->dead)
        return;
    /* HTTP/1.0 has no chunked encoding: the end of the stream is the close. */
    c->chunked = c->minor >= 1;
    if (!c->chunked)
        c->keep_alive = false;
    put_head(c, status, content_type, extra_headers, -1);
    schedule_flush(c);
}

void
lm_http_stream_write(struct lm_http_conn *c, const void *data, size_t len)
{
    if (!c->active || !c->streaming || c->dead || len == 0 || c->head_req)
        return;
    if (c->chunked) {
        char hdr[24];
        size_t i = sizeof(hdr) - 2, v = len;
        hdr[i] = '\r';
        hdr[i + 1] = '\n';
        do {
            hdr[--i] = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v);
        evbuffer_add(c->out, hdr + i, sizeof(hdr) - i);
        evbuffer_add(c->out, data, len);
        evbuffer_add(c->out, "\r\n", 2);
    } else {
        evbuffer_add(c->out, data, len);
    }
    /* A producer that writes a lot in one turn is not held to the loop's
     * pace: above the low watermark the socket gets what it can take now. */
    if (evbuffer_get_length(c->out) >= OUT_LOW && !c->want_write)
        flush(c);
    else
        schedule_flush(c);
}

void
lm_http_stream_end(struct lm_http_conn *c)
{
    if (!c->active || !c->streaming)
        return;
    if (c->chunked && !c->dead && !c->head_req)
        evbuffer_add(c->out, "0\r\n\r\n", 5);
    request_done(c);
    answered(c);
}

void
lm_http_abort(struct lm_http_conn *c)
{
    if (!c->active)
        return;
    c->keep_alive = false;
    request_done(c);
    answered(c);
}

size_t
lm_http_conn_pending(const struct lm_http_conn *c)
{
    return evbuffer_get_length(c->out);
}

void
lm_http_watch(struct lm_http_conn *c, lm_http_event_fn *fn, void *arg)
{
    if (!c->active)
        return;
    c->watch_fn = fn;
    c->watch_arg = fn ? arg : NULL;
}

const char *
lm_http_conn_peer(const struct lm_http_conn *c)
{
    struct lm_http_conn *m = (struct lm_http_conn *)c; /* formatted once, on demand */
    if (m->peer[0])
        return m->peer;
    char ip[INET6_ADDRSTRLEN] = "?";
    if (c->peer_sa.sa.sa_family == AF_INET) {
        inet_ntop(AF_INET, &c->peer_sa.in4.sin_addr, ip, sizeof(ip));
        snprintf(m->peer, sizeof(m->peer), "%s:%u", ip, ntohs(c->peer_sa.in4.sin_port));
    } else if (c->peer_sa.sa.sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &c->peer_sa.in6.sin6_addr, ip, sizeof(ip));
        snprintf(m->peer, sizeof(m->peer), "[%s]:%u", ip, ntohs(c->peer_sa.in6.sin6_port));
    } else {
        snprintf(m->peer, sizeof(m->peer), "?");
    }
    return m->peer;
}

/* An answer of the server's own to a request it will not hand out; the
 * connection closes after it. */
static void
http_error(struct lm_http_conn *c, int status, const char *why)
{
    char body[256];
    int n = snprintf(body, sizeof(body),
                     "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\","
                     "\"param\":null,\"code\":null}}",
                     why ? why : lm_http_reason(status));
    log_debug("%s: %d %s", lm_http_conn_peer(c), status, why ? why : "");
    c->keep_alive = false;
    c->head_req = false;
    c->minor = 1;
    put_whole(c, status, "application/json", NULL, body, (size_t)n);
    c->closing = true;
    reading_off(c, false);
}

/* --- input ------------------------------------------------------------------ */

/* Moves the request's pointers after its bytes moved from address `from`
 * (span bytes, which may be freed memory: only the address is used) to `to`. */
static void
rebase(struct lm_http_conn *c, uintptr_t from, size_t span, char *to)
{
    if (!c->slot || !c->hdr_len)
        return;
    struct lm_http_request *r = &c->slot->req;
#define MOVE(p)                                                                                \
    do {                                                                                       \
        if ((uintptr_t)(p) >= from && (uintptr_t)(p) < from + span)                            \
            (p) = to + ((uintptr_t)(p) - from);                                                \
    } while (0)
    MOVE(r->method);
    MOVE(r->target);
    MOVE(r->path);
    MOVE(r->query);
    MOVE(r->body);
    for (size_t i = 0; i < r->n_headers; i++) {
        MOVE(r->headers[i].name);
        MOVE(r->headers[i].value);
    }
#undef MOVE
}

/* How many unconsumed bytes c may hold: one head, a head and its body, or
 * the request being answered plus one pipelined head. */
static size_t
in_limit(const struct lm_http_conn *c)
{
    size_t h = c->srv->o.max_header_bytes;
    if (c->active)
        return c->req_copied ? h : c->hdr_len + c->body_len + h;
    if (c->hdr_len)
        return c->hdr_len + c->body_len;
    return h;
}

/* Makes room to read into c's own buffer. False when c holds all it may. */
static bool
in_make_room(struct lm_http_conn *c)
{
    size_t used = c->in_len - c->in_off, limit = in_limit(c);
    if (used >= limit)
        return false;
    if (c->in_len + 1 < c->in_cap)
        return true;
    if (c->active && !c->req_copied)
        return false; /* the handler holds pointers into this buffer */
    if (c->in_off > 0) {
        uintptr_t from = (uintptr_t)(c->in + c->in_off);
        memmove(c->in, c->in + c->in_off, used + 1);
        rebase(c, from, used + 1, c->in);
        c->in_off = 0;
        c->in_len = used;
        if (c->in_len + 1 < c->in_cap)
            return true;
    }
    size_t cap = c->in_cap * 2 > IN_MIN ? c->in_cap * 2 : IN_MIN;
    if (cap > limit + 1)
        cap = limit + 1;
    if (cap < used + 2)
        cap = used + 2;
    uintptr_t old = (uintptr_t)c->in;
    char *nb = lm_xrealloc(c->in, cap);
    if ((uintptr_t)nb != old)
        rebase(c, old, c->in_len + 1, nb);
    c->in = nb;
    c->in_cap = cap;
    return true;
}

/* After a read into the shared buffer: what c still needs moves into a
 * buffer of its own, and the shared one is free for the next connection. */
static void
in_detach(struct lm_http_conn *c)
{
    struct lm_http_server *s = c->srv;
    size_t keep = c->in_len - c->in_off;
    c->in_shared = false;
    if (keep == 0) {
        c->in = NULL;
        c->in_cap = c->in_off = c->in_len = 0;
        return;
    }
    size_t cap = keep + 1 > IN_MIN ? keep + 1 + IN_MIN : IN_MIN;
    char *nb = lm_xmalloc(cap);
    memcpy(nb, s->rbuf + c->in_off, keep + 1);
    rebase(c, (uintptr_t)(s->rbuf + c->in_off), keep + 1, nb);
    c->in = nb;
    c->in_cap = cap;
    c->in_off = 0;
    c->in_len = keep;
}

/* Gives back an own input buffer with nothing left in it. */
static void
in_shrink(struct lm_http_conn *c)
{
    if (c->in && !c->in_shared && c->in_off == c->in_len && !c->active && !c->hdr_len) {
        free(c->in);
        c->in = NULL;
        c->in_cap = c->in_off = c->in_len = 0;
    }
}

static void
dispatch(struct lm_http_conn *c)
{
    struct lm_http_server *s = c->srv;
    struct lm_http_request *r = &c->slot->req;
    size_t total = c->hdr_len + c->body_len;
    char *msg;

    if (c->in_shared && total < SLOT_RAW) {
        /* The common case: copied out of the shared buffer into the slot. */
        msg = c->slot->raw;
        memcpy(msg, c->in + c->in_off, total);
        rebase(c, (uintptr_t)(c->in + c->in_off), total + 1, msg);
        c->in_off += total;
        c->req_copied = true;
    } else {
        /* Larger: handed out where it lies, in a buffer of c's own that
         * does not move until the answer (see in_make_room). */
        if (c->in_shared)
            in_detach(c);
        msg = c->in + c->in_off;
        /* The byte after the body may begin the next request: kept aside
         * while the body is NUL-terminated for the handler. */
        if (c->in_off + total < c->in_len) {
            c->saved = msg[total];
            c->has_saved = true;
        } else {
            c->nul_pending = true;
        }
    }
    msg[total] = '\0';
    r->body = msg + c->hdr_len;
    r->body_len = c->body_len;
    c->active = true;
    c->continue_sent = false;
    c->expect_continue = false;
    s->in_flight++;
    c->in_dispatch = true;
    s->o.handler(c, r, s->o.arg);
    c->in_dispatch = false;
}

/* The first "\r\n\r\n" in d[0..n), or NULL. A memchr per line beats
 * memmem's general search on the short heads of every request. */
static const char *
head_end(const char *d, size_t n)
{
    const char *end = d + n;
    while (end - d >= 4) {
        const char *p = memchr(d, '\r', (size_t)(end - d) - 3);
        if (!p)
            return NULL;
        if (p[1] == '\n' && p[2] == '\r' && p[3] == '\n')
            return p;
        d = p + 1;
    }
    return NULL;
}

/* Parses and hands out every complete request in c's input, in order, one at
 * a time: the next waits until the handler has answered this one. */
static void
process(struct lm_http_conn *c)
{
    struct lm_http_server *s = c->srv;
    size_t max_hdr = s->o.max_header_bytes;

    c->backlog = false;
    while (!c->active && !c->closing && !c->dead) {
        if (evbuffer_get_length(c->out) > OUT_HIGH) {
            c->backlog = true; /* the client is not reading its answers */
            break;
        }
        char *msg = c->in + c->in_off;
        size_t avail = c->in_len - c->in_off;
        if (c->hdr_len == 0) {
            /* Empty lines before a request are ignored (RFC 9112 §2.2). */
            while (avail >= 2 && msg[0] == '\r' && msg[1] == '\n') {
                msg += 2;
                avail -= 2;
                c->in_off += 2;
            }
            if (avail == 0)
                break;
            size_t lim = avail < max_hdr ? avail : max_hdr;
            size_t from = c->scan > 3 ? c->scan - 3 : 0;
            const char *e = from < lim ? head_end(msg + from, lim - from) : NULL;
            if (!e) {
                c->scan = lim;
                if (avail >= max_hdr) {
                    bool line = memchr(msg, '\n', lim) != NULL;
                    http_error(c, line ? 431 : 414,
                               line ? "request header too large" : "request target too long");
                }
                break;
            }
            c->scan = 0;
            size_t hl = (size_t)(e - msg) + 4;
            struct lm_http_head h;
            if (!c->slot)
                c->slot = slot_get(s);
            int st = lm_http_parse_head(msg, hl, &c->slot->req, c->slot->path, &h);
            if (st == 0 && h.content_length > s->o.max_body_bytes) {
                st = 413;
                h.why = "request body too large";
            }
            if (st) {
                http_error(c, st, h.why);
                break;
            }
            c->hdr_len = hl;
            c->body_len = h.content_length;
            c->keep_alive = h.keep_alive;
            c->expect_continue = h.expect_continue;
            c->minor = c->slot->req.minor;
            c->head_req = strcmp(c->slot->req.method, "HEAD") == 0;
            c->t_hdr = s->now;
        }
        if (avail < c->hdr_len + c->body_len) {
            if (c->expect_continue && !c->continue_sent && c->minor >= 1) {
                evbuffer_add(c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                c->continue_sent = true;
            }
            break;
        }
        dispatch(c);
    }
}

static void
on_eof(struct lm_http_conn *c)
{
    if (c->active) {
        log_debug("%s closed the connection mid-request", lm_http_conn_peer(c));
        conn_kill(c);
    } else if (evbuffer_get_length(c->out) > 0) {
        c->closing = true; /* send what is owed, then close */
        reading_off(c, false);
    } else {
        conn_kill(c);
    }
}

static void
linger_read(struct lm_http_conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->srv->rbuf, RBUF_SIZE);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            conn_kill(c);
        return;
    }
}

static void
read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lm_http_conn *c = arg;
    struct lm_http_server *s = c->srv;
    (void)what;

    if (reap(c))
        return;
    s->now = lm_now_ms();
    if (c->lingering) {
        linger_read(c);
        reap(c);
        return;
    }
    for (int round = 0; round < 16 && !c->dead && !c->closing; round++) {
        bool empty = c->in_len == c->in_off;
        if (empty && (!c->active || c->req_copied)) {
            /* Nothing buffered: read into the shared buffer. */
            free(c->in);
            c->in = s->rbuf;
            c->in_cap = RBUF_SIZE + 1;
            c->in_off = c->in_len = 0;
            c->in_shared = true;
        } else if (!in_make_room(c)) {
            reading_off(c, true); /* full: wait for the answer to the current request */
            break;
        }
        size_t room = c->in_cap - 1 - c->in_len;
        ssize_t n = read(fd, c->in + c->in_len, room);
        if (n <= 0) {
            int err = n < 0 ? errno : 0;
            if (c->in_shared)
                in_detach(c);
            if (n == 0) {
                on_eof(c);
            } else if (err != EINTR && err != EAGAIN && err != EWOULDBLOCK) {
                log_debug("read from %s failed: %s", lm_http_conn_peer(c), strerror(err));
                conn_kill(c);
            }
            if (n < 0 && err == EINTR)
                continue;
            break;
        }
        if (empty)
            c->t_first = s->now;
        if (c->nul_pending) {
            /* The body's NUL sat at in_len, where this read wrote. */
            c->saved = c->in[c->in_len];
            c->in[c->in_len] = '\0';
            c->has_saved = true;
            c->nul_pending = false;
        }
        c->in_len += (size_t)n;
        process(c);
        if (c->in_shared)
            in_detach(c);
        if ((size_t)n < room)
            break;
    }
    if (reap(c))
        return;
    flush(c);
    if (reap(c))
        return;
    backlog_resume(c);
    timer_update(c);
}

static void
write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lm_http_conn *c = arg;
    struct lm_http_server *s = c->srv;
    (void)fd;
    (void)what;

    c->flush_scheduled = false;
    if (reap(c))
        return;
    flush(c);
    if (reap(c))
        return;
    if (c->active && c->streaming && c->watch_fn && evbuffer_get_length(c->out) < OUT_LOW) {
        c->watch_fn(c, LM_HTTP_DRAINED, c->watch_arg);
        if (reap(c))
            return;
    }
    if (!c->active && !c->closing && !c->lingering &&
        (c->in_len > c->in_off || c->hdr_len) && evbuffer_get_length(c->out) <= OUT_HIGH) {
        /* Pipelined requests that waited for the previous answer. */
        s->now = lm_now_ms();
        c->in_dispatch = true; /* answers made now are flushed just below */
        process(c);
        c->in_dispatch = false;
        flush(c);
        if (reap(c))
            return;
    }
    backlog_resume(c);
    in_shrink(c);
    if (!c->reading && !c->closing && !c->lingering && in_limit(c) > c->in_len - c->in_off &&
        evbuffer_get_length(c->out) <= OUT_HIGH)
        reading_on(c);
    timer_update(c);
}

/* EV_CLOSED while reading was paused: the client hung up or reset. */
static void
closed_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lm_http_conn *c = arg;
    (void)fd;
    (void)what;
    if (reap(c))
        return;
    log_debug("%s went away", lm_http_conn_peer(c));
    conn_kill(c);
    reap(c);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lm_http_conn *c = arg;
    struct lm_http_server *s = c->srv;
    (void)fd;
    (void)what;

    c->armed = 0;
    if (reap(c))
        return;
    s->now = lm_now_ms();
    uint64_t d = conn_deadline(c);
    if (d == NO_DEADLINE)
        return;
    if (d > s->now) {
        timer_update(c);
        return;
    }
    if (c->lingering) {
        conn_kill(c);
    } else if (c->want_write) {
        log_debug("%s stopped reading: dropped", lm_http_conn_peer(c));
        conn_kill(c);
    } else if (c->in_len > c->in_off || c->hdr_len) {
        http_error(c, 408, c->hdr_len ? "request body timed out" : "request header timed out");
        flush(c);
    } else {
        conn_kill(c); /* idle */
    }
    if (!reap(c))
        timer_update(c);
}

/* --- accepting --------------------------------------------------------------- */

static void
conn_new(struct lm_http_server *s, int fd, const struct sockaddr_storage *ss, socklen_t sl)
{
    struct lm_http_conn *c = lm_xcalloc(1, sizeof(*c));
    c->srv = s;
    c->fd = fd;
    if (sl <= sizeof(c->peer_sa))
        memcpy(&c->peer_sa, ss, sl);
    c->out = evbuffer_new();
    c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, read_cb, c);
    c->wev = event_new(s->base, fd, EV_WRITE | EV_PERSIST, write_cb, c);
    c->tev = evtimer_new(s->base, timer_cb, c);
    if (!c->out || !c->rev || !c->wev || !c->tev) {
        log_error("out of memory for a connection");
        abort();
    }
    event_priority_set(c->rev, LM_PRIO_URGENT); /* a request: see LM_PRIO_URGENT */
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    c->t_idle = lm_now_ms();
    reading_on(c);
    timer_update(c);
}

static void
accept_pause(struct lm_http_server *s)
{
    if (!s->accept_paused && s->listening) {
        event_del(s->accept_ev);
        s->accept_paused = true;
    }
}

static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    accept_resume(arg);
}

static void
accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    struct lm_http_server *s = arg;
    (void)what;
    for (int i = 0; i < 64; i++) {
        if (s->nconns >= s->o.max_conns) {
            accept_pause(s); /* resumed when a connection closes */
            return;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The backlog stays readable: pause instead of spinning. */
                struct timeval tv = {0, ACCEPT_RETRY_MS * 1000};
                log_warn("accept: %s; pausing for %d ms", strerror(errno), ACCEPT_RETRY_MS);
                accept_pause(s);
                evtimer_add(s->retry_ev, &tv);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                       errno != ECONNABORTED) {
                log_warn("accept: %s", strerror(errno));
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_new(s, fd, &ss, sl);
    }
}

int
lm_http_server_new(struct lm_http_server **out, struct event_base *base,
                   const struct lm_http_server_opts *opts, char *err, size_t errcap)
{
    struct addrinfo hints = {0}, *res = NULL;
    char host[256], port_s[16];
    int port, fd = -1, rc;

    *out = NULL;
    if (!opts->listen || !opts->handler) {
        snprintf(err, errcap, "http server needs a listen address and a handler");
        return -EINVAL;
    }
    if (lm_hostport_parse(opts->listen, host, sizeof(host), &port, true)) {
        snprintf(err, errcap, "listen address '%s' is not host:port", opts->listen);
        return -EINVAL;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port_s, sizeof(port_s), "%d", port);
    int gai = getaddrinfo(host[0] ? host : NULL, port_s, &hints, &res);
    if (gai != 0) {
        snprintf(err, errcap, "cannot resolve '%s': %s", host, gai_strerror(gai));
        return -EINVAL;
    }
    rc = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
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
        snprintf(err, errcap, "cannot listen on %s: %s", opts->listen, strerror(-rc));
        return rc;
    }

    struct lm_http_server *s = lm_xcalloc(1, sizeof(*s));
    s->base = base;
    s->o = *opts;
    s->o.listen = NULL;
    if (!s->o.max_header_bytes)
        s->o.max_header_bytes = 16 * 1024;
    if (!s->o.max_body_bytes)
        s->o.max_body_bytes = 1024 * 1024;
    if (!s->o.header_timeout_ms)
        s->o.header_timeout_ms = 10000;
    if (!s->o.body_timeout_ms)
        s->o.body_timeout_ms = 60000;
    if (!s->o.idle_timeout_ms)
        s->o.idle_timeout_ms = 60000;
    if (!s->o.max_conns)
        s->o.max_conns = 4096;
    s->server_name = opts->server_name ? lm_xstrdup(opts->server_name) : NULL;
    s->o.server_name = s->server_name;
    s->lfd = fd;
    s->rbuf = lm_xmalloc(RBUF_SIZE + 1);
    s->early_close = (event_base_get_features(base) & EV_FEATURE_EARLY_CLOSE) != 0;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        lm_sockaddr_format(s->addr, sizeof(s->addr), (struct sockaddr *)&ss);
    s->accept_ev = event_new(base, fd, EV_READ | EV_PERSIST, accept_cb, s);
    s->retry_ev = evtimer_new(base, retry_cb, s);
    if (!s->accept_ev || !s->retry_ev)
        abort();
    event_priority_set(s->accept_ev, LM_PRIO_URGENT);
    event_add(s->accept_ev, NULL);
    s->listening = true;
    *out = s;
    return 0;
}

void
lm_http_server_stop_listening(struct lm_http_server *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    if (s->listening) {
        event_del(s->accept_ev);
        event_del(s->retry_ev);
        close(s->lfd);
        s->lfd = -1;
        s->listening = false;
    }
    /* Idle connections go now; the others once their request is answered. */
    for (struct lm_http_conn *c = s->conns; c; c = c->next) {
        if (!c->active && !c->hdr_len && c->in_len == c->in_off &&
            evbuffer_get_length(c->out) == 0 && !c->lingering)
            conn_kill(c);
    }
}

void
lm_http_server_free(struct lm_http_server *s)
{
    if (!s)
        return;
    while (s->conns) {
        struct lm_http_conn *c = s->conns;
        c->dead = true;
        if (!reap(c)) {
            conn_free(c);
        } else if (s->conns == c) {
            /* A zombie whose handler never watched it: it goes with us. */
            conn_free(c);
        }
    }
    if (s->listening)
        close(s->lfd);
    event_free(s->accept_ev);
    event_free(s->retry_ev);
    while (s->free_slots) {
        struct slot *sl = s->free_slots;
        s->free_slots = sl->next_free;
        free(sl);
    }
    free(s->rbuf);
    free(s->server_name);
    free(s);
}

void
lm_http_server_set_max_body(struct lm_http_server *s, size_t max_body_bytes)
{
    s->o.max_body_bytes = max_body_bytes;
}

unsigned
lm_http_server_in_flight(const struct lm_http_server *s)
{
    return s->in_flight;
}

size_t
lm_http_server_conns(const struct lm_http_server *s)
{
    return s->nconns;
}

const char *
lm_http_server_address(const struct lm_http_server *s)
{
    return s->addr;
}
