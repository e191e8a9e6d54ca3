/* Splitting a runtime's SSE byte stream into events, so each is relayed the
 * moment its blank line arrives. Events that come whole in one read are
 * handed out in place; only a tail split across reads is copied. */
#include <string.h>

#include "gateway/gw.h"

void
gw_sse_init(struct gw_sse *s)
{
    lm_buf_init(&s->part, GW_SSE_EVENT_MAX);
    s->nl = 1;
    s->oversize = false;
}

void
gw_sse_reset(struct gw_sse *s)
{
    lm_buf_reset(&s->part);
    s->nl = 1;
    s->oversize = false;
}

void
gw_sse_release(struct gw_sse *s)
{
    lm_buf_release(&s->part);
    gw_sse_init(s);
}

size_t
gw_sse_pending(const struct gw_sse *s)
{
    return s->part.len;
}

/* data[start, end) ends an event (end == event end) or is its incomplete
 * tail (complete = false). */
static void
piece(struct gw_sse *s, const char *p, size_t n, bool complete, gw_sse_fn *fn, void *arg)
{
    if (s->oversize) {
        if (n)
            fn(arg, p, n, false);
        if (complete)
            s->oversize = false;
        return;
    }
    if (s->part.len == 0 && complete) {
        fn(arg, p, n, true);
        return;
    }
    if (lm_buf_append(&s->part, p, n) < 0) {
        /* Too big to inspect: hand out what we hold and the rest as it comes. */
        if (s->part.len)
            fn(arg, s->part.data, s->part.len, false);
        lm_buf_reset(&s->part);
        if (n)
            fn(arg, p, n, false);
        s->oversize = !complete;
        return;
    }
    if (complete) {
        fn(arg, s->part.data, s->part.len, true);
        lm_buf_reset(&s->part);
    }
}

void
gw_sse_feed(struct gw_sse *s, const char *data, size_t len, gw_sse_fn *fn, void *arg)
{
    size_t i = 0, start = 0;

    while (i < len) {
        if (s->nl == 0) {
            const char *p = memchr(data + i, '\n', len - i);
            if (!p)
                break;
            i = (size_t)(p - data) + 1;
            s->nl = 1;
            continue;
        }
        char c = data[i];
        if (c == '\n') {
            i++;
            piece(s, data + start, i - start, true, fn, arg);
            start = i;
            s->nl = 1;
        } else if (c == '\r' && s->nl == 1) {
            i++;
            s->nl = 2;
        } else {
            s->nl = 0;
        }
    }
    if (start < len)
        piece(s, data + start, len - start, false, fn, arg);
}
