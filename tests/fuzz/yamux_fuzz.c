/* yamux_fuzz: two ways in, picked by the first byte.
 *
 * Raw (bit 0 clear): the rest of the input is bytes from a hostile peer, fed
 * in pieces of a size the input picks, into a client or server session whose
 * application accepts streams and, per stream, consumes, holds, echoes,
 * half-closes, resets, releases or refuses. Checked: what the session sends
 * parses as well-formed frames (SYNs of our own parity, Data within the
 * window); no stream holds more than a window; streams stay under
 * max_streams; no callback after release or on_reset; on_close at most
 * once, and its error sticks.
 *
 * Script (bit 0 set): the input is API operations on two sessions wired back
 * to back. Checked: neither ever gets a protocol error from the other, bytes
 * arrive in order on the right stream, and at the peer's FIN every byte the
 * peer wrote has arrived. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "yamux/yamux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSLOT 16
#define MAX_STREAMS 8
#define QCAP (64u << 20)
#define MAX_FINS 1024

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (!(c))                                                                              \
            abort();                                                                           \
    } while (0)

static uint64_t now;

static uint64_t
clock_cb(void *arg)
{
    (void)arg;
    return now;
}

struct slot {
    struct side *side;
    struct lm_yamux_stream *st; /* NULL: free */
    int policy;
    size_t held;
    uint64_t rx, tx;
    bool closed, fin_recv, reset;
};

struct fin_mark {
    uint32_t id;
    uint64_t bytes;
};

/* One session with its application. */
struct side {
    struct lm_yamux *s;
    bool client, script;
    /* what it sent, checked frame by frame as it comes */
    uint8_t *q;
    size_t len, cap;
    uint8_t hdr[12];
    size_t hlen;
    uint32_t payload;
    struct slot slots[NSLOT];
    int closes, close_err;
    uint8_t seed;
    /* script: bytes written before each FIN we sent */
    struct fin_mark fins[MAX_FINS];
    unsigned nfins;
    struct side *peer;
};

static uint32_t
be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void
check_out(struct side *d, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (d->payload) {
            size_t k = n < d->payload ? n : d->payload;
            d->payload -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        size_t k = 12 - d->hlen < n ? 12 - d->hlen : n;
        memcpy(d->hdr + d->hlen, p, k);
        d->hlen += k;
        p += k;
        n -= k;
        if (d->hlen < 12)
            break;
        d->hlen = 0;
        uint16_t flags = (uint16_t)(d->hdr[2] << 8 | d->hdr[3]);
        uint32_t id = be32(d->hdr + 4), len = be32(d->hdr + 8);
        CHECK(d->hdr[0] == 0 && d->hdr[1] <= 3);
        if ((flags & 1) && d->hdr[1] <= 1)
            CHECK(id != 0 && (bool)(id & 1) == d->client);
        if (d->hdr[1] == 0) {
            CHECK(len <= LM_YAMUX_WINDOW);
            d->payload = len;
        }
    }
}

static void
send_cb(const void *data, size_t n, void *arg)
{
    struct side *d = arg;
    check_out(d, data, n);
    CHECK(d->len + n <= QCAP);
    if (d->len + n > d->cap) {
        d->cap = (d->len + n) * 2;
        d->q = lm_xrealloc(d->q, d->cap);
    }
    memcpy(d->q + d->len, data, n);
    d->len += n;
}

static uint8_t
pattern(uint32_t id, uint64_t off)
{
    return (uint8_t)(id * 131u + off * 7u + (off >> 8));
}

static void
note_fin(struct side *d, struct slot *sl)
{
    uint32_t id = lm_yamux_stream_id(sl->st);
    for (unsigned i = 0; i < d->nfins; i++)
        if (d->fins[i].id == id)
            return;
    if (d->nfins < MAX_FINS)
        d->fins[d->nfins++] = (struct fin_mark){id, sl->tx};
}

static void
release(struct slot *sl)
{
    struct side *d = sl->side;
    /* lm_yamux_stream_free sends FIN when only the peer had closed. */
    if (d->script && !sl->reset && sl->fin_recv && !sl->closed && lm_yamux_error(d->s) == 0)
        note_fin(d, sl);
    struct lm_yamux_stream *st = sl->st;
    sl->st = NULL;
    lm_yamux_stream_free(st);
}

static void
on_data(struct lm_yamux_stream *st, const void *data, size_t n, void *arg)
{
    struct slot *sl = arg;
    const uint8_t *p = data;
    CHECK(sl->st == st && !sl->reset && !sl->fin_recv && n > 0);
    sl->held += n;
    CHECK(sl->held <= LM_YAMUX_WINDOW);
    if (sl->side->script) {
        uint32_t id = lm_yamux_stream_id(st);
        for (size_t i = 0; i < n; i++)
            CHECK(p[i] == pattern(id, sl->rx + i));
        sl->rx += n;
    }
    switch (sl->policy) {
    case 0: /* consume everything */
        CHECK(lm_yamux_stream_consume(st, sl->held) == 0);
        sl->held = 0;
        break;
    case 1: /* a reader that never reads */
        break;
    case 2: /* echo what fits, then consume */
        if (!sl->side->script)
            (void)lm_yamux_stream_write(st, data, n);
        CHECK(lm_yamux_stream_consume(st, sl->held) == 0);
        sl->held = 0;
        break;
    case 3: /* half-close, keep reading */
        if (!sl->side->script)
            lm_yamux_stream_close(st);
        CHECK(lm_yamux_stream_consume(st, sl->held) == 0);
        sl->held = 0;
        break;
    case 4:
        if (!sl->side->script) {
            CHECK(lm_yamux_stream_reset(st) == 0);
            sl->reset = true;
        }
        break;
    case 5:
        if (!sl->side->script)
            release(sl);
        break;
    default: /* consume half */
        CHECK(lm_yamux_stream_consume(st, sl->held / 2) == 0);
        sl->held -= sl->held / 2;
        break;
    }
}

static void
on_fin(struct lm_yamux_stream *st, void *arg)
{
    struct slot *sl = arg;
    struct side *d = sl->side;
    CHECK(sl->st == st && !sl->reset && !sl->fin_recv);
    sl->fin_recv = true;
    if (d->script) {
        uint32_t id = lm_yamux_stream_id(st);
        bool found = false;
        for (unsigned i = 0; i < d->peer->nfins; i++) {
            if (d->peer->fins[i].id == id) {
                CHECK(d->peer->fins[i].bytes == sl->rx);
                found = true;
            }
        }
        CHECK(found);
    } else if (sl->policy == 0 || sl->policy == 2) {
        sl->closed = true;
        lm_yamux_stream_close(st);
        release(sl);
    }
}

static void
on_writable(struct lm_yamux_stream *st, void *arg)
{
    struct slot *sl = arg;
    CHECK(sl->st == st && !sl->reset && !sl->closed);
    CHECK(lm_yamux_stream_send_window(st) > 0);
}

static void
on_reset(struct lm_yamux_stream *st, int err, void *arg)
{
    struct slot *sl = arg;
    CHECK(sl->st == st && !sl->reset && err < 0);
    sl->reset = true;
    if (!sl->side->script)
        release(sl);
}

static const struct lm_yamux_stream_cbs stream_cbs = {
    .on_data = on_data, .on_writable = on_writable, .on_fin = on_fin, .on_reset = on_reset,
};

static struct slot *
slot_add(struct side *d, struct lm_yamux_stream *st, int policy)
{
    for (unsigned i = 0; i < NSLOT; i++) {
        struct slot *sl = &d->slots[i];
        if (!sl->st) {
            memset(sl, 0, sizeof(*sl));
            sl->side = d;
            sl->st = st;
            sl->policy = policy;
            lm_yamux_stream_set_cbs(st, &stream_cbs, sl);
            return sl;
        }
    }
    return NULL;
}

static int
on_accept(struct lm_yamux_stream *st, void *arg)
{
    struct side *d = arg;
    struct lm_yamux_stats stats;
    lm_yamux_get_stats(d->s, &stats);
    CHECK(stats.streams <= MAX_STREAMS);
    uint32_t id = lm_yamux_stream_id(st);
    CHECK(id != 0 && (bool)(id & 1) != d->client);
    int policy = (int)((d->seed + id) % 8);
    if (d->script)
        policy = (id >> 1) & 1 ? 0 : 6;
    else if (policy == 7)
        return -EPERM;
    return slot_add(d, st, policy) ? 0 : -ENOSPC;
}

static void
on_close(int err, const char *why, void *arg)
{
    struct side *d = arg;
    CHECK(why && why[0] && d->closes == 0);
    d->closes++;
    d->close_err = err;
    if (d->script)
        CHECK(err == 0 || err == -ETIMEDOUT);
}

static const struct lm_yamux_cbs session_cbs = {
    .send = send_cb, .on_accept = on_accept, .on_close = on_close, .now_ms = clock_cb,
};

static void
side_init(struct side *d, bool client, bool script, uint8_t seed)
{
    memset(d, 0, sizeof(*d));
    d->client = client;
    d->script = script;
    d->seed = seed;
    struct lm_yamux_opts o = {.max_streams = MAX_STREAMS};
    CHECK(lm_yamux_new(&d->s, client, &session_cbs, d, &o) == 0);
}

static void
side_fini(struct side *d)
{
    lm_yamux_free(d->s);
    for (unsigned i = 0; i < NSLOT; i++)
        if (d->slots[i].st)
            release(&d->slots[i]);
    free(d->q);
}

static int
feed(struct side *d, const uint8_t *p, size_t n)
{
    int before = lm_yamux_error(d->s);
    int rc = lm_yamux_feed(d->s, p, n);
    if (before)
        CHECK(rc == before);
    CHECK(rc == lm_yamux_error(d->s));
    struct lm_yamux_stats stats;
    lm_yamux_get_stats(d->s, &stats);
    CHECK(stats.streams <= MAX_STREAMS);
    return rc;
}

/* --- raw ----------------------------------------------------------------- */

static void
fuzz_raw(const uint8_t *data, size_t size)
{
    static struct side d;
    if (size < 3)
        return;
    side_init(&d, data[0] & 2, false, data[2]);
    size_t chunk = data[1] ? data[1] : size;
    data += 3;
    size -= 3;
    for (size_t off = 0; off < size;) {
        size_t k = chunk < size - off ? chunk : size - off;
        int rc = feed(&d, data + off, k);
        if (rc < 0) {
            CHECK(d.closes == 1);
            CHECK(d.close_err == rc || (d.close_err == 0 && rc == -ESHUTDOWN));
            break;
        }
        off += k;
        if ((off / chunk) % 64 == 0) {
            now += 16000;
            lm_yamux_tick(d.s, now);
        }
    }
    side_fini(&d);
}

/* --- script -------------------------------------------------------------- */

static void
move(struct side *from, struct side *to, size_t chunk)
{
    uint8_t *q = from->q;
    size_t n = from->len;
    from->q = NULL;
    from->len = from->cap = 0;
    for (size_t off = 0; off < n;) {
        size_t k = chunk && chunk < n - off ? chunk : n - off;
        int rc = feed(to, q + off, k);
        if (rc < 0) {
            CHECK(rc == -ESHUTDOWN || rc == -ETIMEDOUT);
            break;
        }
        off += k;
    }
    free(q);
}

static void
pump(struct side *a, struct side *b, size_t chunk)
{
    for (int i = 0; i < 64 && (a->len || b->len); i++) {
        move(a, b, chunk);
        move(b, a, chunk);
    }
}

static struct slot *
pick(struct side *d, uint8_t arg)
{
    struct slot *sl = &d->slots[(arg >> 1) % NSLOT];
    return sl->st ? sl : NULL;
}

static void
fuzz_script(const uint8_t *data, size_t size)
{
    static struct side a, b;
    static uint8_t buf[16384];
    side_init(&a, true, true, 0);
    side_init(&b, false, true, 0);
    a.peer = &b;
    b.peer = &a;

    for (size_t i = 0; i + 1 < size; i += 2) {
        uint8_t op = data[i], arg = data[i + 1];
        struct side *d = arg & 1 ? &b : &a;
        struct slot *sl = pick(d, arg);
        struct lm_yamux_stream *st;
        switch (op % 11) {
        case 0:
            if (lm_yamux_open(d->s, &st) == 0 && !slot_add(d, st, (arg >> 2) % 2 ? 0 : 6))
                lm_yamux_stream_free(st);
            break;
        case 1:
            if (sl) {
                size_t n = ((size_t)(op >> 4) + 1) * 1024 - arg;
                uint32_t id = lm_yamux_stream_id(sl->st);
                for (size_t j = 0; j < n; j++)
                    buf[j] = pattern(id, sl->tx + j);
                ssize_t k = lm_yamux_stream_write(sl->st, buf, n);
                if (k > 0)
                    sl->tx += (uint64_t)k;
            }
            break;
        case 2:
            if (sl) {
                CHECK(lm_yamux_stream_consume(sl->st, sl->held) == 0);
                sl->held = 0;
            }
            break;
        case 3:
            if (sl && !sl->closed && lm_yamux_stream_close(sl->st) == 0) {
                sl->closed = true;
                note_fin(d, sl);
            }
            break;
        case 4:
            if (sl) {
                lm_yamux_stream_reset(sl->st);
                sl->reset = true;
                release(sl);
            }
            break;
        case 5:
            if (sl)
                release(sl);
            break;
        case 6:
            pump(&a, &b, op >> 4 ? (size_t)(op >> 4) * arg : 0);
            break;
        case 7:
            lm_yamux_ping(d->s);
            break;
        case 8:
            if (op >> 4 == 0xf)
                lm_yamux_goaway(d->s, LM_YAMUX_GOAWAY_NORMAL);
            break;
        case 9:
            now += (uint64_t)(op >> 4) * 1000;
            lm_yamux_tick(d->s, now);
            break;
        default:
            if (sl && sl->held) {
                size_t n = arg % sl->held + 1;
                CHECK(lm_yamux_stream_consume(sl->st, n) == 0);
                sl->held -= n;
            }
            break;
        }
    }
    pump(&a, &b, 0);
    side_fini(&a);
    side_fini(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz_script(data + 1, size - 1);
    else
        fuzz_raw(data, size);
    return 0;
}
