/* upstream: the API of upstream.h, dispatched to one of two paths.
 *
 * http:// URLs go to plain.c, our own HTTP/1.1 client on non-blocking
 * sockets with libhttp-parser: curl costs ~25-30 us of CPU per small request
 * here (URL re-parsing, its own printf, malloc, two poll() liveness checks),
 * more than the whole budget of a proxied request (SPEC §9). https:// URLs,
 * and the few http:// ones plain.c leaves (userinfo, hosts that are neither
 * an address nor a plain DNS name), go to curl.c, libcurl's multi interface,
 * made on first use: TLS to a runtime is rare in a homelab.
 *
 * Both paths share the validation of options, the response header store and
 * the deferred free: lm_upstream_free from inside a callback marks u and
 * the last of our event callbacks to unwind (lm_upstream_leave_) frees. */
#define LM_LOG_MODULE "upstream"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log/log.h"
#include "upstream/upstream_internal.h"

#define REQ_HEADER_MAX 8192 /* one request header */
#define URL_MAX 8192

/* --- shared with the paths ---------------------------------------------------- */

static void destroy(struct lm_upstream *u);

void
lm_upstream_enter_(struct lm_upstream *u)
{
    u->depth++;
}

void
lm_upstream_leave_(struct lm_upstream *u)
{
    if (--u->depth == 0 && u->freeing)
        destroy(u);
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* One header line, CRLF stripped: appended as "name\0value\0", or folded
 * into the previous value. -EPROTO for a line that is not a header. */
int
lm_upstream_store_header_(struct lm_buf *b, const char *line, size_t n)
{
    if (memchr(line, '\0', n))
        return -EPROTO;
    if (is_ows(line[0])) {
        /* obs-fold: RFC 9112 §5.2 says replace it with a space. */
        if (b->len == 0)
            return -EPROTO;
        while (n && is_ows(*line)) {
            line++;
            n--;
        }
        while (n && is_ows(line[n - 1]))
            n--;
        size_t len = b->len - 1; /* drop the value's NUL */
        b->len = len;
        if (lm_buf_append(b, " ", 1) || lm_buf_append(b, line, n) || lm_buf_append(b, "", 1)) {
            b->len = len + 1;
            return -EPROTO;
        }
        return 0;
    }
    const char *colon = memchr(line, ':', n);
    if (!colon || colon == line)
        return -EPROTO;
    size_t nlen = (size_t)(colon - line);
    for (size_t i = 0; i < nlen; i++)
        if ((unsigned char)line[i] <= ' ' || line[i] == 0x7f)
            return -EPROTO;
    const char *v = colon + 1;
    size_t vlen = n - nlen - 1;
    while (vlen && is_ows(*v)) {
        v++;
        vlen--;
    }
    while (vlen && is_ows(v[vlen - 1]))
        vlen--;
    size_t len = b->len;
    if (lm_buf_append(b, line, nlen) || lm_buf_append(b, "", 1) || lm_buf_append(b, v, vlen) ||
        lm_buf_append(b, "", 1)) {
        b->len = len;
        return -EPROTO;
    }
    return 0;
}

/* --- options --------------------------------------------------------------------- */

/* Both checks run on every request: one test per byte where they can. */
static bool
valid_url(const char *url)
{
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return false;
    const unsigned char *u = (const unsigned char *)url;
    size_t i = 0;
    unsigned char c;
    while ((c = u[i]) > ' ' && c != 0x7f)
        if (++i > URL_MAX)
            return false;
    return c == '\0';
}

/* "Name: value" with a token name and no control bytes but tab. */
static bool
valid_header(const char *h, size_t *lenp)
{
    const unsigned char *u = (const unsigned char *)h;
    size_t i = 0;
    unsigned char c;
    while ((c = u[i]) != ':') {
        if (c <= ' ' || c == 0x7f) /* NUL too: no colon */
            return false;
        if (++i >= REQ_HEADER_MAX)
            return false;
    }
    if (i == 0)
        return false;
    for (i++; (c = u[i]) != '\0'; i++) {
        if ((c < ' ' && c != '\t') || c == 0x7f)
            return false;
        if (i >= REQ_HEADER_MAX)
            return false;
    }
    *lenp = i;
    return true;
}

static int
check_opts(const struct lm_upstream_opts *o)
{
    bool post;
    if (!o->method || !o->url)
        return -EINVAL;
    if (strcmp(o->method, "GET") == 0)
        post = false;
    else if (strcmp(o->method, "POST") == 0)
        post = true;
    else
        return -EINVAL;
    if (!valid_url(o->url))
        return -EINVAL;
    if (o->body_len && (!o->body || !post))
        return -EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < LM_ARRAY_LEN(o->headers) && o->headers[i]; i++) {
        size_t len;
        if (i == LM_UPSTREAM_MAX_HEADERS || !valid_header(o->headers[i], &len))
            return -EINVAL;
        total += len + 1;
    }
    if (total + sizeof("Expect:") > LM_UP_REQ_HEAD_CAP)
        return -EINVAL;
    return 0;
}

/* --- public ------------------------------------------------------------------------ */

int
lm_upstream_new(struct lm_upstream **out, struct event_base *base)
{
    if (!out || !base)
        return -EINVAL;
    struct lm_upstream *u = lm_xcalloc(1, sizeof(*u));
    u->base = base;
    int rc = lm_upplain_new(&u->plain, u);
    if (rc) {
        free(u);
        return rc;
    }
    *out = u;
    return 0;
}

static void
destroy(struct lm_upstream *u)
{
    lm_upplain_destroy(u->plain);
    lm_upcurl_destroy(u->curl);
    free(u);
}

void
lm_upstream_free(struct lm_upstream *u)
{
    if (!u || u->freeing)
        return;
    u->freeing = true;
    lm_upplain_cancel_all(u->plain);
    lm_upcurl_cancel_all(u->curl);
    /* From inside a callback: lm_upstream_leave_ finishes this once our
     * event callback has returned. */
    if (u->depth == 0)
        destroy(u);
}

int
lm_upstream_start(struct lm_upstream *u, const struct lm_upstream_opts *o,
                  const struct lm_upstream_cbs *cbs, void *arg, struct lm_upstream_req **out)
{
    if (!u || !o || !cbs || !out || u->freeing)
        return -EINVAL;
    int rc = check_opts(o);
    if (rc)
        return rc;
    if (strncasecmp(o->url, "http://", 7) == 0) {
        rc = lm_upplain_start(u->plain, o, cbs, arg, out);
        if (rc != -EAGAIN)
            return rc;
    }
    if (!u->curl) {
        rc = lm_upcurl_new(&u->curl, u);
        if (rc)
            return rc;
    }
    return lm_upcurl_start(u->curl, o, cbs, arg, out);
}

const char *
lm_upstream_header(const struct lm_upstream_req *r, const char *name)
{
    if (!r || !name || !r->head_done || !r->resphead.data)
        return NULL;
    const char *p = r->resphead.data, *end = p + r->resphead.len;
    while (p < end) {
        size_t nlen = strlen(p);
        const char *v = p + nlen + 1;
        if (v >= end)
            break;
        if (strcasecmp(p, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

void
lm_upstream_pause(struct lm_upstream_req *r)
{
    if (!r)
        return;
    if (r->curl)
        lm_upcurl_pause(r);
    else
        lm_upplain_pause(r);
}

void
lm_upstream_resume(struct lm_upstream_req *r)
{
    if (!r)
        return;
    if (r->curl)
        lm_upcurl_resume(r);
    else
        lm_upplain_resume(r);
}

void
lm_upstream_cancel(struct lm_upstream_req *r)
{
    if (!r)
        return;
    if (r->curl)
        lm_upcurl_cancel(r);
    else
        lm_upplain_cancel(r);
}

unsigned
lm_upstream_active(const struct lm_upstream *u)
{
    return u ? lm_upplain_active(u->plain) + lm_upcurl_active(u->curl) : 0;
}
