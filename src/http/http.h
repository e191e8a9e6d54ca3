/* http: a small HTTP/1.1 server on the libevent loop, for the gateway and
 * labman-devllm. Owns: sockets, request parsing with hard size and time
 * limits, keep-alive and pipelining, responses (whole, chunked or streamed),
 * output backpressure, and telling the handler when its client went away. */
#ifndef LM_HTTP_H
#define LM_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#define LM_HTTP_MAX_HEADERS 64 /* header lines per request; more → 431 */

struct lm_http_server;
struct lm_http_conn;

struct lm_http_header {
    const char *name; /* NUL-terminated, as the client wrote it */
    const char *value; /* NUL-terminated, surrounding whitespace trimmed */
};

/* One parsed request. Every pointer stays valid until the response to this
 * request is finished (respond, stream_end or abort) or the client is gone. */
struct lm_http_request {
    const char *method; /* "GET", "POST", ... */
    const char *target; /* as sent: path plus query */
    const char *path;   /* target without the query */
    const char *query;  /* after '?', "" when none */
    int minor;          /* HTTP/1.<minor> */
    struct lm_http_header headers[LM_HTTP_MAX_HEADERS];
    size_t n_headers;
    const char *body; /* NUL-terminated for convenience; may contain NUL */
    size_t body_len;
};

/* Called once per request, in order. The handler answers now or later (on
 * the same loop) with exactly one of lm_http_respond / lm_http_stream_* /
 * lm_http_abort. Pipelined requests on the same connection wait until the
 * current one is answered. */
typedef void lm_http_handler_fn(struct lm_http_conn *c, const struct lm_http_request *r,
                                void *arg);

/* Events for a request that is answered asynchronously (see lm_http_watch). */
enum lm_http_event {
    LM_HTTP_DRAINED, /* queued output fell below the low watermark: write more */
    LM_HTTP_CLOSED,  /* the client went away; c is invalid once this returns */
};
typedef void lm_http_event_fn(struct lm_http_conn *c, enum lm_http_event ev, void *arg);

struct lm_http_server_opts {
    const char *listen; /* "host:port" or "[v6]:port" */
    size_t max_header_bytes; /* request line + headers; over → 431 (default 16 KiB) */
    size_t max_body_bytes;   /* over → 413 (default 1 MiB) */
    unsigned header_timeout_ms; /* first byte to end of headers (default 10 s) */
    unsigned body_timeout_ms;   /* end of headers to end of body (default 60 s) */
    unsigned idle_timeout_ms;   /* keep-alive idle (default 60 s) */
    size_t max_conns;           /* accepted at once; beyond that, accept waits (default 4096) */
    const char *server_name;    /* "Server:" header value; NULL = none */
    lm_http_handler_fn *handler;
    void *arg;
};

/* Binds and listens. On failure err says why in one line. */
int lm_http_server_new(struct lm_http_server **out, struct event_base *base,
                       const struct lm_http_server_opts *opts, char *err, size_t errcap);
/* Closes every connection at once (handlers get LM_HTTP_CLOSED first). */
void lm_http_server_free(struct lm_http_server *s);
/* Stops accepting; open connections finish their current request and close. */
void lm_http_server_stop_listening(struct lm_http_server *s);
/* Limits that may change on reload; they apply to requests not yet read. */
void lm_http_server_set_max_body(struct lm_http_server *s, size_t max_body_bytes);
/* Requests received and not yet fully answered. */
unsigned lm_http_server_in_flight(const struct lm_http_server *s);
size_t lm_http_server_conns(const struct lm_http_server *s);
/* The bound address, e.g. "127.0.0.1:31145" or "[::1]:31145". */
const char *lm_http_server_address(const struct lm_http_server *s);

/* Case-insensitive lookup; NULL when absent. */
const char *lm_http_header_get(const struct lm_http_request *r, const char *name);
/* The peer's address as "ip:port", for logs. */
const char *lm_http_conn_peer(const struct lm_http_conn *c);

/* A whole response. extra_headers: NULL or complete lines, each ending in
 * "\r\n" (e.g. "Retry-After: 1\r\nX-Labman-Node: lab-1\r\n"). Content-Length,
 * Date, Connection and Content-Type are added here. */
void lm_http_respond(struct lm_http_conn *c, int status, const char *content_type,
                     const char *extra_headers, const void *body, size_t len);

/* A streamed response: chunked for HTTP/1.1 clients, close-delimited for
 * HTTP/1.0. Each write goes to the socket as soon as the loop can send it,
 * never held back to fill a buffer. */
void lm_http_stream_begin(struct lm_http_conn *c, int status, const char *content_type,
                          const char *extra_headers);
void lm_http_stream_write(struct lm_http_conn *c, const void *data, size_t len);
void lm_http_stream_end(struct lm_http_conn *c);

/* Ends the exchange without a proper answer: what was queued is sent, then
 * the connection is closed (a broken stream, as the client will see it). */
void lm_http_abort(struct lm_http_conn *c);

/* Bytes queued for this client and not yet written to the socket. A handler
 * that streams stops producing above its own high watermark and waits for
 * LM_HTTP_DRAINED. */
size_t lm_http_conn_pending(const struct lm_http_conn *c);

/* Registers fn for c's events until the current response is finished or
 * the client is gone. fn = NULL unregisters. */
void lm_http_watch(struct lm_http_conn *c, lm_http_event_fn *fn, void *arg);

const char *lm_http_reason(int status);

/* Added for the fuzz target and tests: the request-head parser on its own. */
#define LM_HTTP_MAX_TARGET 4096 /* request target bytes; longer → 414 */

/* What the parser learned beyond struct lm_http_request. */
struct lm_http_head {
    size_t content_length;
    bool keep_alive;      /* from the version and Connection */
    bool expect_continue; /* "Expect: 100-continue" */
    const char *why;      /* on error: a short reason, safe to put in JSON */
};

/* Parses one complete request head buf[0..len), which must end in
 * "\r\n\r\n", in place: NULs are written into buf and r's strings point
 * into it, except r->path when there is a query, which is copied into
 * pathbuf (LM_HTTP_MAX_TARGET + 1 bytes). r->body is left NULL. Returns 0
 * or the status to answer: 400, 414, 431 (too many header lines), 501
 * (Transfer-Encoding: request bodies need Content-Length), 505. */
int lm_http_parse_head(char *buf, size_t len, struct lm_http_request *r, char *pathbuf,
                       struct lm_http_head *h);

#endif
