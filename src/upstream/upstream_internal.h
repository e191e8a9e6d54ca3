/* upstream internals: what the API dispatch (upstream.c) shares with its two
 * paths, plain.c (our own HTTP/1.1 client for http://) and curl.c (libcurl's
 * multi interface, for https://). */
#ifndef LM_UPSTREAM_INTERNAL_H
#define LM_UPSTREAM_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "upstream/upstream.h"
#include "util/util.h"

#define LM_UP_HEAD_CAP (16 * 1024)     /* response status line, headers, trailers */
#define LM_UP_REQ_HEAD_CAP (32 * 1024) /* request headers we add */
#define LM_UP_KEEP_BUF_CAP (64 * 1024) /* bigger buffers are not kept in a pool */
#define LM_UP_FREE_REQS_MAX 64
#define LM_UP_CONNECT_MS_DEFAULT 5000

struct lm_upcurl;
struct lm_upplain;

/* A circular doubly linked list node; an unlinked node points at itself. */
struct link {
    struct link *prev, *next;
};

#define LINK_ENTRY(p, type, member) ((type *)(void *)((char *)(p)-offsetof(type, member)))

static inline void
link_init(struct link *l)
{
    l->prev = l->next = l;
}

static inline bool
link_linked(const struct link *l)
{
    return l->next != l;
}

static inline void
link_del(struct link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

static inline void
link_add_tail(struct link *head, struct link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static inline void
link_add_head(struct link *head, struct link *l)
{
    l->next = head->next;
    l->prev = head;
    head->next->prev = l;
    head->next = l;
}

struct lm_upstream {
    struct event_base *base;
    struct lm_upplain *plain;
    struct lm_upcurl *curl; /* made on the first request that needs it */
    unsigned depth;         /* one of our event callbacks is on the stack */
    bool freeing;           /* lm_upstream_free waits for depth 0 */
};

/* What both paths' requests start with; the rest is the path's own. */
struct lm_upstream_req {
    struct lm_upstream *u;
    bool curl;
    bool head_done;
    struct lm_buf resphead; /* "name\0value\0" pairs of the final response */
};

/* Every event callback of either path brackets its work with these, so that
 * lm_upstream_free called from inside a user callback waits until the stack
 * unwinds. Nothing may touch u after lm_upstream_leave_. */
void lm_upstream_enter_(struct lm_upstream *u);
void lm_upstream_leave_(struct lm_upstream *u);

/* One response header line, CRLF stripped: appended to b as "name\0value\0"
 * (OWS trimmed), or folded into the previous value when it starts with
 * whitespace. -EPROTO for a line that is not a header or over b's cap. */
int lm_upstream_store_header_(struct lm_buf *b, const char *line, size_t n);

/* curl.c */
int lm_upcurl_new(struct lm_upcurl **out, struct lm_upstream *u);
void lm_upcurl_cancel_all(struct lm_upcurl *c);
void lm_upcurl_destroy(struct lm_upcurl *c);
int lm_upcurl_start(struct lm_upcurl *c, const struct lm_upstream_opts *o,
                    const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out);
void lm_upcurl_pause(struct lm_upstream_req *r);
void lm_upcurl_resume(struct lm_upstream_req *r);
void lm_upcurl_cancel(struct lm_upstream_req *r);
unsigned lm_upcurl_active(const struct lm_upcurl *c);

/* plain.c. lm_upplain_start returns -EAGAIN for a URL it does not take
 * (userinfo, a host that is neither an address nor a plain DNS name): the
 * caller then hands it to curl. */
int lm_upplain_new(struct lm_upplain **out, struct lm_upstream *u);
void lm_upplain_cancel_all(struct lm_upplain *p);
void lm_upplain_destroy(struct lm_upplain *p);
int lm_upplain_start(struct lm_upplain *p, const struct lm_upstream_opts *o,
                     const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out);
void lm_upplain_pause(struct lm_upstream_req *r);
void lm_upplain_resume(struct lm_upstream_req *r);
void lm_upplain_cancel(struct lm_upstream_req *r);
unsigned lm_upplain_active(const struct lm_upplain *p);
/* For fuzzing the plain path's response parsing without sockets: a request
 * with no connection (nothing is sent; o->url is not read), whose response
 * bytes come from lm_upplain_feed_ as if read from its socket, n at most one
 * recv buffer (16 KiB; more is cut), n 0 for EOF. They run through the same
 * parser, callbacks and caps; pause and resume work as on a socket (resume
 * on the next turn of the loop), and a feed while paused is ignored, as a
 * paused socket is not read. Callbacks are called from inside the feed. */
int lm_upplain_start_fed_(struct lm_upplain *p, const struct lm_upstream_opts *o,
                          const struct lm_upstream_cbs *cbs, void *arg,
                          struct lm_upstream_req **out);
void lm_upplain_feed_(struct lm_upstream_req *r, const char *d, size_t n);

#endif
