/* admin: the admin HTTP listener (evhttp) on the daemon's event loop.
 * Owns: /healthz, /readyz, /metrics, /admin/v1/status, the route table other
 * modules add to, bearer-token auth, request bounds, and the refusal to open
 * an unauthenticated admin API to the network. */
#ifndef LM_ADMIN_H
#define LM_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "util/util.h"

#define LM_ADMIN_MAX_HEADERS 16384 /* bytes of request line + headers */
#define LM_ADMIN_MAX_BODY 65536
#define LM_ADMIN_TIMEOUT_S 30 /* read/write/idle per connection */
#define LM_ADMIN_TOKEN_MAX 4096
#define LM_ADMIN_METRICS_MAX (4u << 20)
#define LM_ADMIN_MAX_ROUTES 64

enum lm_admin_state { LM_ADMIN_STARTING, LM_ADMIN_READY, LM_ADMIN_DRAINING };

/* A route handler answers req, normally before it returns. One that answers
 * later (on the same loop) must answer even if the client went away: the
 * request counts as in flight, and delays shutdown, until it is answered or
 * its connection is gone. */
typedef void lm_admin_route_fn(struct evhttp_request *req, void *arg);
/* Appends whole metric families (# HELP, # TYPE, samples) to out. */
typedef void lm_admin_metrics_fn(struct lm_buf *out, void *arg);
/* Adds fields to the /admin/v1/status object. */
typedef void lm_admin_status_fn(json_t *status, void *arg);

struct lm_admin;

struct lm_admin_opts {
    const char *listen;     /* "host:port" or "[v6]:port" */
    const char *token_file; /* NULL or "" = no token */
    const char *version;
};

/* Binds the listener. Refuses (-EPERM) a non-loopback listen address without
 * a token file. On failure err says why, in one line. */
int lm_admin_new(struct lm_admin **out, struct event_base *base, const struct lm_admin_opts *opts,
                 char *err, size_t errcap);
void lm_admin_free(struct lm_admin *a);

/* Replaces the token (SIGHUP). Same rules as at start; on failure the old
 * token stays. */
int lm_admin_set_token_file(struct lm_admin *a, const char *token_file, char *err, size_t errcap);

/* Exact path match; methods is a mask of EVHTTP_REQ_*. HEAD is served as GET.
 * -EEXIST for a path already routed, -ENOSPC past LM_ADMIN_MAX_ROUTES. */
int lm_admin_route(struct lm_admin *a, const char *path, unsigned methods, lm_admin_route_fn *fn,
                   void *arg);
void lm_admin_add_metrics(struct lm_admin *a, lm_admin_metrics_fn *fn, void *arg);
void lm_admin_add_status(struct lm_admin *a, lm_admin_status_fn *fn, void *arg);

void lm_admin_set_state(struct lm_admin *a, enum lm_admin_state state);
enum lm_admin_state lm_admin_get_state(const struct lm_admin *a);
const char *lm_admin_state_name(enum lm_admin_state state);

/* The address actually bound, e.g. "127.0.0.1:8145" or "[::1]:8145". */
const char *lm_admin_address(const struct lm_admin *a);
/* Stops accepting; connections already open are served until they finish. */
void lm_admin_stop_listening(struct lm_admin *a);
/* Requests received and not yet fully answered. */
unsigned lm_admin_in_flight(const struct lm_admin *a);

/* Replies. lm_admin_reply_json takes ownership of body. */
void lm_admin_reply_json(struct evhttp_request *req, int code, json_t *body);
void lm_admin_reply_text(struct evhttp_request *req, int code, const char *content_type,
                         const char *body, size_t len);
void lm_admin_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
    LM_PRINTF(3, 4);

/* Helpers shared with the CLI. */
/* Reads a token file: the first line, surrounding whitespace trimmed; must be
 * 1..LM_ADMIN_TOKEN_MAX printable non-space bytes. *out is malloc'd. */
int lm_admin_token_read(const char *path, char **out, char *err, size_t errcap);

#endif
