/* upstream_fuzz: any bytes as a runtime's answer to the plain http:// path
 * (src/upstream/plain.c), through lm_upplain_feed_: the production parser
 * callbacks, the 16 KiB header cap, Content-Length / chunked / until-EOF
 * bodies, 1xx, max_response_bytes, pause and resume, the end rules.
 *
 * Input: 4 control bytes, then the response.
 *   [0] flags: 1 = pause in some on_data calls, 2 = cancel instead of EOF
 *       at the end, 4 = a max_response_bytes of [1..2] (big-endian), else 0
 *   [3] how the response is cut into reads: 0 one read (of at most 16 KiB,
 *       as recv gives), else a pseudo-random cut derived from it.
 * Checks: the header store is well-formed "name\0value\0" within its cap and
 * every name is found again; no body byte past max_response_bytes; on_done
 * exactly once (none after a cancel); and the outcome (status, error, body,
 * headers) is the same when the same bytes arrive in one piece per read. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "upstream/upstream_internal.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define READ_MAX (16 * 1024) /* the plain path's recv buffer */

struct outcome {
    struct lm_upstream_req *r;
    bool pause, paused, done, head;
    int status, err;
    unsigned ndata, ndone;
    size_t max;
    struct lm_buf body, head_copy;
};

static struct event_base *base;
static struct lm_upstream *up;

static void
check_head(const struct lm_upstream_req *r, struct outcome *o)
{
    const struct lm_buf *b = &r->resphead;
    if (b->len > LM_UP_HEAD_CAP || (b->len && b->data[b->len - 1] != '\0'))
        abort();
    size_t strings = 0;
    for (size_t i = 0; i < b->len; i += strlen(b->data + i) + 1) {
        const char *s = b->data + i;
        if (strings % 2 == 0) {
            /* A name; lookup finds the first of that name, which is a name. */
            const char *v = lm_upstream_header(r, s);
            if (!v || v < b->data || v >= b->data + b->len)
                abort();
        }
        strings++;
    }
    if (strings % 2)
        abort();
    lm_buf_reset(&o->head_copy);
    if (b->len)
        lm_buf_append(&o->head_copy, b->data, b->len);
}

static void
on_head(struct lm_upstream_req *r, int status, void *arg)
{
    struct outcome *o = arg;
    if (o->done || o->head || r != o->r || status < 200 || status > 999 || !r->head_done)
        abort();
    o->head = true;
    o->status = status;
    check_head(r, o);
}

static void
on_data(struct lm_upstream_req *r, const char *data, size_t len, void *arg)
{
    struct outcome *o = arg;
    if (o->done || !o->head || r != o->r || len == 0 || o->paused)
        abort();
    lm_buf_append(&o->body, data, len);
    if (o->max && o->body.len > o->max)
        abort();
    if (o->pause && o->ndata++ % 3 == 0) {
        o->paused = true;
        lm_upstream_pause(r);
    }
}

static void
on_done(struct lm_upstream_req *r, int err, const char *msg, void *arg)
{
    struct outcome *o = arg;
    if (o->done || r != o->r || !msg)
        abort();
    o->done = true;
    o->ndone++;
    o->err = err;
    if (err != 0 && err != -ECONNRESET && err != -EMSGSIZE && err != -EPROTO)
        abort();
    if (err == 0 && !o->head)
        abort();
}

static const struct lm_upstream_cbs cbs = {on_head, on_data, on_done};

static uint32_t
next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* One run over the response; cut 0 = reads as large as recv gives. */
static void
run(const uint8_t *d, size_t n, uint8_t flags, size_t max, uint8_t cut, struct outcome *o)
{
    struct lm_upstream_opts opts = {.method = "GET", .url = "http://fuzz/"};
    opts.max_response_bytes = max;
    o->pause = flags & 1;
    o->max = max;
    if (lm_upplain_start_fed_(up->plain, &opts, &cbs, o, &o->r) != 0)
        abort();
    uint32_t rs = 0x9e3779b9u * (cut | 0x100u);
    size_t off = 0;
    for (;;) {
        /* While paused the socket is not read: resume, and let the loop
         * run the held bytes through (as from the defer timer). */
        for (unsigned spins = 0; !o->done && o->paused; spins++) {
            if (spins > 4 * n + 16)
                abort(); /* resume makes no progress */
            o->paused = false;
            lm_upstream_resume(o->r);
            event_base_loop(base, EVLOOP_NONBLOCK);
        }
        if (o->done)
            break;
        if (off == n) {
            if (flags & 2) {
                lm_upstream_cancel(o->r);
                break;
            }
            lm_upplain_feed_(o->r, NULL, 0);
            if (!o->done && !o->paused)
                abort(); /* EOF always ends the request */
            continue;
        }
        size_t k = n - off;
        if (cut) {
            size_t lim = (size_t)1 << (cut % 8 + 1);
            k = 1 + next_rand(&rs) % lim;
            if (k > n - off)
                k = n - off;
        }
        if (k > READ_MAX)
            k = READ_MAX;
        /* An exact copy, so ASan sees any read past what was "received". */
        char *buf = lm_xmalloc(k);
        memcpy(buf, d + off, k);
        lm_upplain_feed_(o->r, buf, k);
        free(buf);
        off += k;
    }
    if (o->ndone > 1 || ((flags & 2) == 0 && !o->done))
        abort();
    /* Nothing of it may be left behind on the loop. */
    event_base_loop(base, EVLOOP_NONBLOCK);
    if (lm_upstream_active(up) != 0)
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!base) {
        base = event_base_new();
        if (!base || lm_upstream_new(&up, base) != 0)
            abort();
    }
    if (size < 4)
        return 0;
    uint8_t flags = data[0];
    size_t max = (flags & 4) ? ((size_t)data[1] << 8 | data[2]) : 0;
    uint8_t cut = data[3];
    data += 4;
    size -= 4;

    struct outcome a = {0}, b = {0};
    lm_buf_init(&a.body, 0);
    lm_buf_init(&a.head_copy, 0);
    lm_buf_init(&b.body, 0);
    lm_buf_init(&b.head_copy, 0);
    run(data, size, flags, max, cut, &a);
    run(data, size, flags & 2, max, 0, &b);
    /* The way the bytes were cut into reads changes nothing, except how
     * much of the body got out before an error (the cap, bad chunking):
     * the parser hands out body bytes at the end of each read. */
    if (a.done != b.done || a.head != b.head || a.status != b.status || a.err != b.err)
        abort();
    if (a.head_copy.len != b.head_copy.len ||
        (a.head_copy.len && memcmp(a.head_copy.data, b.head_copy.data, a.head_copy.len)))
        abort();
    if ((!a.done || a.err == 0 || a.err == -ECONNRESET) &&
        (a.body.len != b.body.len || (a.body.len && memcmp(a.body.data, b.body.data, a.body.len))))
        abort();
    lm_buf_release(&a.body);
    lm_buf_release(&a.head_copy);
    lm_buf_release(&b.body);
    lm_buf_release(&b.head_copy);
    return 0;
}
