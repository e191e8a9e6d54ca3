/* Unit tests for src/http: the head parser, then a real server on 127.0.0.1
 * driven by the test's own event loop, with raw client sockets: keep-alive,
 * pipelining, 100-continue, error statuses, timeouts, streaming, HTTP/1.0,
 * DRAINED, CLOSED, max_conns, stop_listening. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "http/http.h"
#include "util/util.h"

/* --- the parser on its own ---------------------------------------------- */

static int
parse(const char *text, struct lm_http_request *r, struct lm_http_head *h, char *buf,
      char *path)
{
    size_t n = strlen(text);
    memcpy(buf, text, n + 1);
    return lm_http_parse_head(buf, n, r, path, h);
}

static void
test_parse_head(void **state)
{
    (void)state;
    static struct lm_http_request r;
    static char buf[70000], path[LM_HTTP_MAX_TARGET + 1];
    struct lm_http_head h;

    assert_int_equal(parse("POST /v1/chat?x=1&y HTTP/1.1\r\nHost: a\r\n"
                           "X-Two:  spaced value \t\r\nContent-Length: 12\r\n"
                           "Expect: 100-continue\r\n\r\n",
                           &r, &h, buf, path),
                     0);
    assert_string_equal(r.method, "POST");
    assert_string_equal(r.target, "/v1/chat?x=1&y");
    assert_string_equal(r.path, "/v1/chat");
    assert_string_equal(r.query, "x=1&y");
    assert_int_equal(r.minor, 1);
    assert_int_equal(r.n_headers, 4);
    assert_string_equal(r.headers[1].name, "X-Two");
    assert_string_equal(r.headers[1].value, "spaced value");
    assert_string_equal(lm_http_header_get(&r, "x-two"), "spaced value");
    assert_string_equal(lm_http_header_get(&r, "HOST"), "a");
    assert_null(lm_http_header_get(&r, "X-None"));
    assert_int_equal(h.content_length, 12);
    assert_true(h.keep_alive);
    assert_true(h.expect_continue);

    assert_int_equal(parse("GET / HTTP/1.0\r\nX-Empty:\r\n\r\n", &r, &h, buf, path), 0);
    assert_string_equal(r.path, "/");
    assert_string_equal(r.query, "");
    assert_string_equal(r.headers[0].value, "");
    assert_false(h.keep_alive);
    assert_int_equal(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r, &h, buf,
                           path),
                     0);
    assert_true(h.keep_alive);
    assert_int_equal(parse("GET / HTTP/1.1\r\nConnection: te, close\r\n\r\n", &r, &h, buf,
                           path),
                     0);
    assert_false(h.keep_alive);

    const char *bad400[] = {
        "GARBAGE\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        "GET x HTTP/1.1\r\n\r\n",
        "GET / FTP/1.1\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon\r\n\r\n",
        "GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1234567890123456\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET / HTTP/1.1\n\r\n\r\n",
        "\x00\xff\x01\r\n\r\n",
    };
    for (size_t i = 0; i < LM_ARRAY_LEN(bad400); i++) {
        memcpy(buf, bad400[i], strlen(bad400[i]) + 1);
        size_t n = i == LM_ARRAY_LEN(bad400) - 1 ? 7 : strlen(bad400[i]);
        int st = lm_http_parse_head(buf, n, &r, path, &h);
        if (st != 400)
            fail_msg("input %zu: %d", i, st);
        assert_non_null(h.why);
    }
    assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n", &r, &h, buf, path), 505);
    assert_int_equal(parse("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &r, &h, buf,
                           path),
                     501);
    /* Content-Length twice with the same value is fine. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n",
                           &r, &h, buf, path),
                     0);

    char *big = lm_xmalloc(LM_HTTP_MAX_TARGET + 64);
    int n = snprintf(big, 32, "GET /");
    memset(big + n, 'a', LM_HTTP_MAX_TARGET);
    strcpy(big + n + LM_HTTP_MAX_TARGET, " HTTP/1.1\r\n\r\n");
    assert_int_equal(parse(big, &r, &h, buf, path), 414);
    /* Exactly the limit, with a query: the path is copied out whole. */
    strcpy(big + n + LM_HTTP_MAX_TARGET - 3, "?q HTTP/1.1\r\n\r\n");
    assert_int_equal(parse(big, &r, &h, buf, path), 0);
    assert_int_equal(strlen(r.target), LM_HTTP_MAX_TARGET);
    assert_int_equal(strlen(r.path), LM_HTTP_MAX_TARGET - 2);
    assert_string_equal(r.query, "q");
    free(big);

    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_puts(&b, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < LM_HTTP_MAX_HEADERS; i++)
        lm_buf_printf(&b, "X-%d: %d\r\n", i, i);
    lm_buf_puts(&b, "\r\n");
    assert_int_equal(parse(b.data, &r, &h, buf, path), 0);
    assert_int_equal(r.n_headers, LM_HTTP_MAX_HEADERS);
    b.len -= 2;
    lm_buf_puts(&b, "X-Last: 1\r\n\r\n");
    assert_int_equal(parse(b.data, &r, &h, buf, path), 431);
    lm_buf_release(&b);
}

/* --- a server under test ---------------------------------------------------- */

struct tstate {
    struct event_base *base;
    struct lm_http_server *srv;
    struct lm_http_conn *held; /* an unanswered request */
    const struct lm_http_request *held_r;
    const char *held_body, *held_x; /* pointers kept by the handler, as a gateway would */
    int handled;
    int drained, closed;
    size_t max_pending;
    struct lm_buf seen;        /* "METHOD target|" per request, in order */
    bool watch;
};

static struct tstate T;

static void
on_event(struct lm_http_conn *c, enum lm_http_event ev, void *arg)
{
    (void)arg;
    if (ev == LM_HTTP_DRAINED) {
        T.drained++;
        return;
    }
    T.closed++;
    if (T.held == c)
        T.held = NULL;
}

static void
handler(struct lm_http_conn *c, const struct lm_http_request *r, void *arg)
{
    (void)arg;
    T.handled++;
    lm_buf_printf(&T.seen, "%s %s|", r->method, r->target);
    if (strcmp(r->path, "/echo") == 0) {
        char out[4096];
        const char *x = lm_http_header_get(r, "X-Test");
        int n = snprintf(out, sizeof(out), "m=%s p=%s q=%s h=%zu x=%s nul=%d len=%zu body=",
                         r->method,
                         r->path, r->query, r->n_headers, x ? x : "-",
                         r->body[r->body_len] == '\0', r->body_len);
        size_t bl = r->body_len < sizeof(out) - (size_t)n ? r->body_len : sizeof(out) - (size_t)n;
        memcpy(out + n, r->body, bl);
        lm_http_respond(c, 200, "text/plain", "X-Extra: 1\r\n", out, (size_t)n + bl);
    } else if (strcmp(r->path, "/hold") == 0) {
        T.held = c; /* answered later by the test */
        T.held_r = r;
        T.held_body = r->body;
        T.held_x = lm_http_header_get(r, "X-Test");
        if (T.watch)
            lm_http_watch(c, on_event, NULL);
    } else if (strcmp(r->path, "/stream") == 0) {
        T.held = c;
        lm_http_watch(c, on_event, NULL);
        lm_http_stream_begin(c, 200, "text/event-stream", NULL);
    } else if (strcmp(r->path, "/abort") == 0) {
        lm_http_abort(c);
    } else if (strcmp(r->path, "/nocontent") == 0) {
        lm_http_respond(c, 204, NULL, NULL, "ignored", 7);
    } else {
        lm_http_respond(c, 404, "text/plain", NULL, "nope", 4);
    }
}

static void
server_start(const struct lm_http_server_opts *extra)
{
    char err[256] = "";
    struct lm_http_server_opts o = {0};
    if (extra)
        o = *extra;
    o.listen = "127.0.0.1:0";
    o.handler = handler;
    o.server_name = "test";
    memset(&T, 0, sizeof(T));
    lm_buf_init(&T.seen, 0);
    T.base = event_base_new();
    assert_non_null(T.base);
    assert_int_equal(lm_http_server_new(&T.srv, T.base, &o, err, sizeof(err)), 0);
    assert_non_null(strstr(lm_http_server_address(T.srv), "127.0.0.1:"));
}

static void
server_stop(void)
{
    lm_http_server_free(T.srv);
    event_base_free(T.base);
    lm_buf_release(&T.seen);
}

static void
run_ms(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(T.base, &tv);
    event_base_dispatch(T.base);
}

static int
client(int rcvbuf)
{
    const char *addr = lm_http_server_address(T.srv);
    int port = atoi(strrchr(addr, ':') + 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void
send_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EAGAIN) {
            run_ms(5);
            continue;
        }
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

static void
send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Runs the loop and reads until `until` is in the input, EOF, or ms passed.
 * Returns the bytes read (NUL-terminated, caller frees); *eof tells EOF. */
static char *
recv_until(int fd, const char *until, int ms, bool *eof)
{
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_append(&b, "", 0);
    bool end = false;
    for (int waited = 0; waited <= ms; waited += 5) {
        run_ms(5);
        for (;;) {
            char tmp[65536];
            ssize_t n = read(fd, tmp, sizeof(tmp));
            if (n > 0) {
                lm_buf_append(&b, tmp, (size_t)n);
                continue;
            }
            if (n == 0 || (n < 0 && errno != EAGAIN))
                end = true;
            break;
        }
        if (end || (until && strstr(b.data, until)))
            break;
    }
    if (eof)
        *eof = end;
    return b.data;
}

static void
test_echo_keepalive(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    send_str(fd, "POST /echo?a=b HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\nContent-Length: 5\r\n"
                 "\r\nhello");
    bool eof;
    char *out = recv_until(fd, "body=hello", 2000, &eof);
    assert_false(eof);
    assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\nServer: test\r\nDate: "));
    assert_non_null(strstr(out, "Content-Type: text/plain\r\nContent-Length: "));
    assert_non_null(strstr(out, "X-Extra: 1\r\n\r\n"));
    assert_non_null(strstr(out, "m=POST p=/echo q=a=b h=3 x=yes nul=1 len=5 body=hello"));
    assert_null(strstr(out, "Connection:"));
    free(out);
    /* The same connection again, a body sent in pieces, with stray CRLF first. */
    send_str(fd, "\r\nPOST /echo HTTP/1.1\r\nContent-Length: 10000\r\n\r\n");
    char *body = lm_xmalloc(10001);
    memset(body, 'b', 10000);
    for (int i = 0; i < 10; i++) {
        send_all(fd, body + i * 1000, 1000);
        run_ms(2);
    }
    out = recv_until(fd, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 2000, &eof);
    assert_non_null(strstr(out, "p=/echo q= h=1 x=- nul=1 len=10000 body=bbb"));
    free(out);
    free(body);
    /* HEAD: the length of the answer, not the answer; 204: no length at all. */
    send_str(fd, "HEAD /echo HTTP/1.1\r\n\r\nGET /nocontent HTTP/1.1\r\n\r\n");
    out = recv_until(fd, "204 No Content\r\n", 2000, &eof);
    run_ms(20);
    char *rest = recv_until(fd, NULL, 20, &eof);
    assert_null(strstr(out, "m=HEAD"));
    assert_null(strstr(rest, "ignored"));
    assert_null(strstr(strstr(out, "204 No Content"), "Content-Length"));
    free(out);
    free(rest);
    assert_int_equal(T.handled, 4);
    assert_int_equal(lm_http_server_in_flight(T.srv), 0);
    close(fd);
    run_ms(20);
    assert_int_equal(lm_http_server_conns(T.srv), 0);
    server_stop();
}

static void
test_pipelining_in_order(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    /* The first is held; the two after it must wait for its answer. */
    send_str(fd, "GET /hold?q HTTP/1.1\r\nX-Test: mine\r\nContent-Length: 9\r\n\r\nheld body"
                 "GET /echo?n=2 HTTP/1.1\r\n\r\n"
                 "POST /echo?n=3 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    bool eof;
    char *out = recv_until(fd, NULL, 60, &eof);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(T.handled, 1);
    assert_non_null(T.held);
    assert_int_equal(lm_http_server_in_flight(T.srv), 1);
    assert_int_equal(lm_http_server_conns(T.srv), 1);
    /* More pipelined input while the answer is outstanding. */
    send_str(fd, "GET /echo?n=4 HTTP/1.1\r\nConnection: close\r\n\r\n");
    run_ms(20);
    assert_int_equal(T.handled, 1);
    /* Other clients' requests go through the shared read buffer meanwhile;
     * what the held handler kept must not change under it. */
    int other = client(0);
    send_str(other, "POST /echo HTTP/1.1\r\nX-Test: other\r\nContent-Length: 9\r\n\r\nXXXXXXXXX");
    free(recv_until(other, "body=XXXXXXXXX", 2000, &eof));
    close(other);
    assert_string_equal(T.held_body, "held body");
    assert_string_equal(T.held_x, "mine");
    assert_string_equal(T.held_r->path, "/hold");
    assert_string_equal(T.held_r->query, "q");
    lm_http_respond(T.held, 200, "text/plain", NULL, "first", 5);
    T.held = NULL;
    out = recv_until(fd, NULL, 2000, &eof);
    assert_true(eof);
    char *a = strstr(out, "first"), *b = strstr(out, "q=n=2"), *c = strstr(out, "body=abc"),
         *d = strstr(out, "q=n=4");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_non_null(d);
    assert_true(a < b && b < c && c < d);
    assert_non_null(strstr(out, "Connection: close"));
    assert_string_equal(T.seen.data,
                        "GET /hold?q|POST /echo|GET /echo?n=2|POST /echo?n=3|GET /echo?n=4|");
    free(out);
    close(fd);
    server_stop();
}

/* A request too big for its slot is handed out where it lies; pipelined
 * input read behind it must neither move it nor grow without bound. */
static void
test_big_request_held(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    size_t bl = 20000;
    char *req = lm_xmalloc(bl + 128);
    int n = snprintf(req, 128, "POST /hold HTTP/1.1\r\nX-Test: big\r\nContent-Length: %zu\r\n\r\n",
                     bl);
    memset(req + n, 'q', bl);
    send_all(fd, req, (size_t)n + bl);
    for (int i = 0; i < 200 && !T.held; i++)
        run_ms(5);
    assert_non_null(T.held);
    assert_int_equal(strlen(T.held_body), bl);
    /* 200 KiB of pipelined requests behind it: none is handed out early. */
    struct lm_buf more;
    lm_buf_init(&more, 0);
    for (int i = 0; i < 8000; i++)
        lm_buf_printf(&more, "GET /echo?%04d HTTP/1.1\r\n\r\n", i);
    size_t off = 0;
    for (int i = 0; i < 100 && off < more.len; i++) {
        ssize_t w = write(fd, more.data + off, more.len - off);
        if (w > 0)
            off += (size_t)w;
        run_ms(2);
    }
    assert_int_equal(strlen(T.held_body), bl);
    assert_string_equal(T.held_x, "big");
    assert_int_equal(T.handled, 1);
    lm_http_respond(T.held, 200, "text/plain", NULL, "ok", 2);
    T.held = NULL;
    /* All 8000 are answered in order once the client reads. */
    size_t answers = 0;
    struct lm_buf in;
    lm_buf_init(&in, 0);
    for (int i = 0; i < 2000 && T.handled < 8001; i++) {
        char tmp[65536];
        ssize_t r;
        while ((r = read(fd, tmp, sizeof(tmp))) > 0)
            answers += (size_t)r;
        if (off < more.len) {
            ssize_t w = write(fd, more.data + off, more.len - off);
            if (w > 0)
                off += (size_t)w;
        }
        run_ms(2);
    }
    assert_int_equal(T.handled, 8001);
    assert_true(answers > 0);
    lm_buf_release(&more);
    lm_buf_release(&in);
    free(req);
    close(fd);
    server_stop();
}

static void
test_expect_continue(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    send_str(fd, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    bool eof;
    char *out = recv_until(fd, "\r\n\r\n", 2000, &eof);
    assert_string_equal(out, "HTTP/1.1 100 Continue\r\n\r\n");
    free(out);
    send_str(fd, "data");
    out = recv_until(fd, "body=data", 2000, &eof);
    assert_true(strncmp(out, "HTTP/1.1 200 OK", 15) == 0);
    free(out);
    close(fd);
    server_stop();
}

static void
expect_error(const char *req, const char *status)
{
    int fd = client(0);
    send_str(fd, req);
    bool eof;
    char *out = recv_until(fd, NULL, 2000, &eof);
    if (strncmp(out, status, strlen(status)) != 0)
        fail_msg("%.40s...: got %.60s", req, out);
    assert_true(eof); /* closed after an error */
    assert_non_null(strstr(out, "Connection: close"));
    assert_non_null(strstr(out, "{\"error\":{\"message\":"));
    free(out);
    close(fd);
}

static void
test_error_statuses(void **state)
{
    (void)state;
    struct lm_http_server_opts o = {.max_body_bytes = 100, .max_header_bytes = 2048,
                                    .header_timeout_ms = 100};
    server_start(&o);
    expect_error("GARBAGE\r\n\r\n", "HTTP/1.1 400 ");
    expect_error("GET / HTTP/1.1\r\nbad header\r\n\r\n", "HTTP/1.1 400 ");
    expect_error("POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n", "HTTP/1.1 413 ");
    expect_error("GET / HTTP/2.0\r\n\r\n", "HTTP/1.1 505 ");
    expect_error("GET / HTTP/1.1\r\n", "HTTP/1.1 408 "); /* header_timeout_ms */
    expect_error("POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 501 ");
    char *big = lm_xmalloc(8192);
    snprintf(big, 8192, "GET / HTTP/1.1\r\nX-Big: %04000d\r\n\r\n", 0);
    expect_error(big, "HTTP/1.1 431 "); /* more than max_header_bytes in all */
    memset(big, 'a', 3000);
    memcpy(big, "GET /", 5);
    big[3000] = '\0';
    expect_error(big, "HTTP/1.1 414 "); /* no end of line in max_header_bytes */
    free(big);
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_puts(&b, "GET / HTTP/1.1\r\n");
    for (int i = 0; i <= LM_HTTP_MAX_HEADERS; i++)
        lm_buf_printf(&b, "X-%d: %d\r\n", i, i);
    lm_buf_puts(&b, "\r\n");
    expect_error(b.data, "HTTP/1.1 431 ");
    lm_buf_release(&b);
    assert_int_equal(T.handled, 0);
    /* The server is fine after all that. */
    int fd = client(0);
    send_str(fd, "GET /echo HTTP/1.1\r\n\r\n");
    char *out = recv_until(fd, "body=", 2000, NULL);
    assert_non_null(strstr(out, "200 OK"));
    free(out);
    close(fd);
    server_stop();
}

static void
test_timeouts(void **state)
{
    (void)state;
    struct lm_http_server_opts o = {.header_timeout_ms = 150, .idle_timeout_ms = 300,
                                    .body_timeout_ms = 200};
    server_start(&o);
    int silent = client(0), slow = client(0), body = client(0), idle = client(0);
    send_str(slow, "GET /echo HT");
    send_str(body, "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nab");
    send_str(idle, "GET /echo HTTP/1.1\r\n\r\n");
    /* A slowloris client blocks nobody: another is served meanwhile. */
    int other = client(0);
    send_str(other, "GET /echo?other HTTP/1.1\r\n\r\n");
    bool eof;
    char *out = recv_until(other, "body=", 1000, &eof);
    assert_non_null(strstr(out, "q=other"));
    free(out);
    uint64_t t0 = lm_now_ms();
    out = recv_until(silent, NULL, 2000, &eof);
    assert_true(eof);
    assert_string_equal(out, ""); /* nothing was asked: closed without a word */
    free(out);
    out = recv_until(slow, NULL, 2000, &eof);
    assert_true(eof);
    assert_true(strncmp(out, "HTTP/1.1 408 ", 13) == 0);
    free(out);
    out = recv_until(body, NULL, 2000, &eof);
    assert_true(eof);
    assert_true(strncmp(out, "HTTP/1.1 408 ", 13) == 0);
    free(out);
    assert_true(lm_now_ms() - t0 < 1000);
    /* The idle keep-alive connection lasts idle_timeout after its answer. */
    out = recv_until(idle, NULL, 2000, &eof);
    assert_true(eof);
    assert_non_null(strstr(out, "200 OK"));
    free(out);
    close(silent);
    close(slow);
    close(body);
    close(idle);
    close(other);
    run_ms(50);
    server_stop();
}

static void
test_stream_chunked_and_http10(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    send_str(fd, "GET /stream HTTP/1.1\r\n\r\n");
    bool eof;
    char *out = recv_until(fd, "\r\n\r\n", 2000, &eof);
    assert_non_null(strstr(out, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(out, "Content-Type: text/event-stream\r\n"));
    free(out);
    assert_non_null(T.held);
    /* Each write reaches the client without waiting for more. */
    lm_http_stream_write(T.held, "data: one\n\n", 11);
    out = recv_until(fd, "one", 2000, &eof);
    assert_string_equal(out, "b\r\ndata: one\n\n\r\n");
    free(out);
    lm_http_stream_write(T.held, "hello", 5);
    lm_http_stream_end(T.held);
    T.held = NULL;
    out = recv_until(fd, "0\r\n\r\n", 2000, &eof);
    assert_string_equal(out, "5\r\nhello\r\n0\r\n\r\n");
    free(out);
    assert_int_equal(T.closed, 0);
    assert_int_equal(lm_http_server_in_flight(T.srv), 0);
    close(fd);

    /* HTTP/1.0: no chunks; the end of the answer is the close. */
    fd = client(0);
    send_str(fd, "GET /stream HTTP/1.0\r\n\r\n");
    out = recv_until(fd, "\r\n\r\n", 2000, &eof);
    assert_null(strstr(out, "Transfer-Encoding"));
    assert_non_null(strstr(out, "Connection: close\r\n"));
    free(out);
    lm_http_stream_write(T.held, "raw bytes", 9);
    lm_http_stream_end(T.held);
    T.held = NULL;
    out = recv_until(fd, NULL, 2000, &eof);
    assert_true(eof);
    assert_string_equal(out, "raw bytes");
    free(out);
    close(fd);

    /* abort: a broken stream, as the client sees it. */
    fd = client(0);
    send_str(fd, "GET /stream HTTP/1.1\r\n\r\n");
    free(recv_until(fd, "\r\n\r\n", 2000, &eof));
    lm_http_stream_write(T.held, "part", 4);
    lm_http_abort(T.held);
    T.held = NULL;
    out = recv_until(fd, NULL, 2000, &eof);
    assert_true(eof);
    assert_string_equal(out, "4\r\npart\r\n");
    free(out);
    close(fd);
    run_ms(20);
    assert_int_equal(T.closed, 0);
    server_stop();
}

static void
test_drained_slow_reader(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(4096);
    send_str(fd, "GET /stream HTTP/1.1\r\n\r\n");
    bool eof;
    free(recv_until(fd, "\r\n\r\n", 2000, &eof));
    assert_non_null(T.held);
    /* Write until the client's socket is full and output queues here. */
    static char chunk[16384];
    memset(chunk, 'z', sizeof(chunk));
    size_t total = 0;
    while (lm_http_conn_pending(T.held) < 64 * 1024 && total < (64u << 20)) {
        lm_http_stream_write(T.held, chunk, sizeof(chunk));
        total += sizeof(chunk);
        run_ms(1);
    }
    assert_true(lm_http_conn_pending(T.held) >= 64 * 1024);
    int before = T.drained;
    run_ms(50);
    assert_int_equal(T.drained, before); /* still full: no DRAINED */
    /* The client reads: the queue empties and DRAINED comes. */
    size_t got = 0;
    for (int i = 0; i < 400 && T.drained == before; i++) {
        char tmp[65536];
        ssize_t n;
        while ((n = read(fd, tmp, sizeof(tmp))) > 0)
            got += (size_t)n;
        run_ms(5);
    }
    assert_true(T.drained > before);
    assert_true(lm_http_conn_pending(T.held) < 16 * 1024);
    assert_true(got > 0);
    lm_http_stream_end(T.held);
    T.held = NULL;
    close(fd);
    run_ms(20);
    assert_int_equal(T.closed, 0);
    server_stop();
}

static void
test_closed_mid_stream(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    send_str(fd, "GET /stream HTTP/1.1\r\n\r\n");
    bool eof;
    free(recv_until(fd, "\r\n\r\n", 2000, &eof));
    lm_http_stream_write(T.held, "x", 1);
    run_ms(10);
    assert_int_equal(lm_http_server_in_flight(T.srv), 1);
    close(fd);
    for (int i = 0; i < 100 && T.closed == 0; i++)
        run_ms(5);
    assert_int_equal(T.closed, 1);
    assert_null(T.held);
    assert_int_equal(lm_http_server_in_flight(T.srv), 0);
    assert_int_equal(lm_http_server_conns(T.srv), 0);

    /* Not watched: the handler answers a client that left, later; no harm. */
    fd = client(0);
    send_str(fd, "GET /hold HTTP/1.1\r\n\r\n");
    run_ms(20);
    struct lm_http_conn *c = T.held;
    assert_non_null(c);
    close(fd);
    run_ms(30);
    lm_http_respond(c, 200, "text/plain", NULL, "late", 4);
    run_ms(20);
    assert_int_equal(lm_http_server_in_flight(T.srv), 0);
    assert_int_equal(lm_http_server_conns(T.srv), 0);

    /* A watched request held open when the server is freed gets CLOSED. */
    T.watch = true;
    fd = client(0);
    send_str(fd, "GET /hold HTTP/1.1\r\n\r\n");
    run_ms(20);
    assert_non_null(T.held);
    int closed = T.closed;
    lm_http_server_free(T.srv);
    T.srv = NULL;
    assert_int_equal(T.closed, closed + 1);
    close(fd);
    event_base_free(T.base);
    lm_buf_release(&T.seen);
}

static void
test_max_conns_and_stop(void **state)
{
    (void)state;
    struct lm_http_server_opts o = {.max_conns = 2};
    server_start(&o);
    int a = client(0), b = client(0), c = client(0);
    run_ms(30);
    assert_int_equal(lm_http_server_conns(T.srv), 2);
    send_str(c, "GET /echo?c HTTP/1.1\r\n\r\n");
    bool eof;
    char *out = recv_until(c, NULL, 60, &eof);
    assert_string_equal(out, ""); /* not accepted yet */
    free(out);
    close(a);
    out = recv_until(c, "body=", 2000, &eof);
    assert_non_null(strstr(out, "q=c"));
    free(out);
    assert_int_equal(lm_http_server_conns(T.srv), 2);

    /* stop_listening: the idle one goes now, the busy one after its answer. */
    send_str(b, "GET /hold HTTP/1.1\r\n\r\n");
    run_ms(20);
    assert_non_null(T.held);
    lm_http_server_stop_listening(T.srv);
    out = recv_until(c, NULL, 2000, &eof);
    assert_true(eof);
    free(out);
    lm_http_respond(T.held, 200, "text/plain", NULL, "bye", 3);
    T.held = NULL;
    out = recv_until(b, NULL, 2000, &eof);
    assert_true(eof);
    assert_non_null(strstr(out, "Connection: close"));
    free(out);
    close(b);
    close(c);
    run_ms(30);
    assert_int_equal(lm_http_server_conns(T.srv), 0);
    server_stop();
}

static void
test_abort_and_listen_errors(void **state)
{
    (void)state;
    server_start(NULL);
    int fd = client(0);
    send_str(fd, "GET /abort HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n");
    bool eof;
    char *out = recv_until(fd, NULL, 2000, &eof);
    assert_true(eof);
    assert_string_equal(out, "");
    free(out);
    close(fd);
    assert_int_equal(T.handled, 1);

    char err[256];
    struct lm_http_server *s2 = NULL;
    struct lm_http_server_opts o = {.listen = lm_http_server_address(T.srv), .handler = handler};
    assert_true(lm_http_server_new(&s2, T.base, &o, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "cannot listen"));
    o.listen = "nonsense";
    assert_int_equal(lm_http_server_new(&s2, T.base, &o, err, sizeof(err)), -EINVAL);
    assert_null(s2);
    assert_string_equal(lm_http_reason(431), "Request Header Fields Too Large");
    server_stop();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_head),
        cmocka_unit_test(test_echo_keepalive),
        cmocka_unit_test(test_pipelining_in_order),
        cmocka_unit_test(test_big_request_held),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_error_statuses),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_stream_chunked_and_http10),
        cmocka_unit_test(test_drained_slow_reader),
        cmocka_unit_test(test_closed_mid_stream),
        cmocka_unit_test(test_max_conns_and_stop),
        cmocka_unit_test(test_abort_and_listen_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
