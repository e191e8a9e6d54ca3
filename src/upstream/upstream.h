/* upstream: HTTP(S) requests to local runtimes on the libevent loop (our own
 * HTTP/1.1 client for http://, libcurl's multi interface for https://). Owns:
 * connection reuse, streaming of response bytes as they arrive, pause/resume
 * for backpressure, deadlines, and aborting a request the moment its client
 * no longer wants it. */
#ifndef LM_UPSTREAM_H
#define LM_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#define LM_UPSTREAM_MAX_HEADERS 16 /* request headers we add */

struct lm_upstream;
struct lm_upstream_req;

struct lm_upstream_opts {
    const char *method;  /* "GET" or "POST" */
    const char *url;     /* full URL */
    const char *headers[LM_UPSTREAM_MAX_HEADERS + 1]; /* "Name: value", NULL-terminated */
    const void *body;    /* POST body; copied, so the caller may free it */
    size_t body_len;
    unsigned connect_timeout_ms;    /* 0 = 5 s */
    unsigned first_byte_timeout_ms; /* until the response headers; 0 = none */
    unsigned total_timeout_ms;      /* whole exchange; 0 = none */
    size_t max_response_bytes;      /* body cap (probes); 0 = unlimited (streams) */
};

/* Callbacks. None is called from inside lm_upstream_start or
 * lm_upstream_cancel; after on_done (or cancel) none is called again. */
struct lm_upstream_cbs {
    /* Status line and headers are complete (after any 100-continue). */
    void (*on_head)(struct lm_upstream_req *r, int status, void *arg);
    /* Response body bytes, as they arrive. The callee may call
     * lm_upstream_pause(r) to stop the flow until lm_upstream_resume(r). */
    void (*on_data)(struct lm_upstream_req *r, const char *data, size_t len, void *arg);
    /* The end: err 0 for a complete response, else -ECONNREFUSED (could not
     * connect), -ETIMEDOUT (a deadline passed), -ECONNRESET (the connection
     * broke mid-response), -EMSGSIZE (over max_response_bytes), -EPROTO
     * (not HTTP), -EIO (anything else). msg is a short human reason.
     * r is freed when on_done returns. */
    void (*on_done)(struct lm_upstream_req *r, int err, const char *msg, void *arg);
};

int lm_upstream_new(struct lm_upstream **out, struct event_base *base);
/* Cancels every request still running (no callbacks) and frees. */
void lm_upstream_free(struct lm_upstream *u);

/* Starts a request. Returns 0 and *out, or -EINVAL for bad options. */
int lm_upstream_start(struct lm_upstream *u, const struct lm_upstream_opts *o,
                      const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out);

/* Response header of a request past on_head (case-insensitive); NULL if
 * absent. Valid until on_done. */
const char *lm_upstream_header(const struct lm_upstream_req *r, const char *name);

void lm_upstream_pause(struct lm_upstream_req *r);
void lm_upstream_resume(struct lm_upstream_req *r);

/* Aborts at once: the connection to the runtime is closed, so the runtime
 * sees the client leave and stops generating. No callback follows. */
void lm_upstream_cancel(struct lm_upstream_req *r);

/* Requests running now (for metrics and draining). */
unsigned lm_upstream_active(const struct lm_upstream *u);

#endif
