/* Unit tests for src/frame: labnet/1 frames (PROTOCOL.md §2). Round trips,
 * fragmentation, caps, signatures, timestamps, the replay cache, malformed
 * payloads, the unsigned frames' helpers, and a byte-exact vector that other
 * implementations can test against (the same one is in docs/labnet.md). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "frame/frame.h"
#include "identity/identity.h"
#include "util/util.h"

#define T0 UINT64_C(1700000000000) /* a fixed "now", Unix ms */
#define MIN5 ((uint64_t)LM_FRAME_TS_WINDOW_MS)
#define RID_A "0123456789abcdef0123456789abcdef"
#define RID_B "fedcba9876543210fedcba9876543210"

static struct lm_identity id_a, id_b;

static void
make_id(struct lm_identity *id, uint8_t first)
{
    uint8_t seed[32];
    memset(id, 0, sizeof(*id));
    for (size_t i = 0; i < sizeof(seed); i++)
        seed[i] = (uint8_t)(first + i);
    crypto_sign_seed_keypair(id->pk, id->sk, seed);
    lm_hex_encode(id->node_id, id->pk, sizeof(id->pk));
}

static int
setup_ids(void **state)
{
    (void)state;
    if (sodium_init() < 0)
        return -1;
    make_id(&id_a, 0);
    make_id(&id_b, 100);
    return 0;
}

/* A frame built by the encoder and read back through a reader; f points
 * into b (the reader lends whole frames without copying). */
struct built {
    struct lm_buf b;
    struct lm_frame f;
};

static void
decode_one(struct built *x)
{
    struct lm_frame_reader r;
    size_t used;
    lm_frame_reader_init(&r);
    assert_int_equal(lm_frame_reader_feed(&r, x->b.data, x->b.len, &used, &x->f), 1);
    assert_int_equal(used, x->b.len);
    assert_ptr_equal(x->f.raw, x->b.data);
    lm_frame_reader_release(&r);
}

static void
build_raw(struct built *x, uint8_t type, uint8_t flags, const void *p, size_t n,
          const struct lm_identity *signer)
{
    lm_buf_init(&x->b, 0);
    assert_int_equal(lm_frame_encode(&x->b, type, flags, p, n, signer), 0);
    decode_one(x);
}

static void build(struct built *x, uint8_t type, const struct lm_identity *signer,
                  const char *fmt, ...) LM_PRINTF(4, 5);

static void
build(struct built *x, uint8_t type, const struct lm_identity *signer, const char *fmt, ...)
{
    struct lm_buf p;
    va_list ap;
    lm_buf_init(&p, 0);
    va_start(ap, fmt);
    assert_int_equal(lm_buf_vprintf(&p, fmt, ap), 0);
    va_end(ap);
    build_raw(x, type, 0, p.data, p.len, signer);
    lm_buf_release(&p);
}

static void
unbuild(struct built *x)
{
    lm_buf_release(&x->b);
}

/* Runs lm_frame_check and returns its code ("ok" on success). */
static const char *
check(const struct built *x, struct lm_frame_replay *rp, uint64_t now, unsigned flags)
{
    static char code[64];
    struct lm_frame_problem why;
    json_t *o = NULL;
    int rc = lm_frame_check(&x->f, rp, now, flags, &o, &why);
    if (rc == 0) {
        assert_true(json_is_object(o));
        json_decref(o);
        return "ok";
    }
    assert_null(o);
    assert_non_null(why.code);
    assert_true(why.message[0] != '\0');
    snprintf(code, sizeof(code), "%s", why.code);
    return code;
}

static void
hello(struct built *x, const struct lm_identity *signer, const char *from, uint64_t ts)
{
    build(x, LM_FRAME_HELLO, signer,
          "{\"from\":\"%s\",\"ts\":%llu,\"version\":1,\"name\":\"n\",\"roles\":[],"
          "\"addrs\":[],\"software\":\"labman/0.1.0\",\"features\":[]}",
          from, (unsigned long long)ts);
}

static void
request(struct built *x, const struct lm_identity *signer, const char *rid, uint64_t ts)
{
    build(x, LM_FRAME_PROXY_REQUEST, signer,
          "{\"from\":\"%s\",\"ts\":%llu,\"request_id\":\"%s\",\"to\":\"%s\",\"api\":\"chat\","
          "\"model\":\"m\",\"stream\":true,\"deadline_ms\":60000,\"body\":{\"messages\":[]}}",
          signer->node_id, (unsigned long long)ts, rid, id_b.node_id);
}

static void
test_type_table(void **state)
{
    (void)state;
    static const struct {
        uint8_t type;
        const char *name;
        bool sig;
    } table[] = {
        {0x01, "HELLO", true},          {0x02, "PING", false},
        {0x03, "PONG", false},          {0x04, "ERROR", false},
        {0x10, "GOSSIP_RECORD", true},  {0x11, "GOSSIP_DIGEST", false},
        {0x12, "GOSSIP_WANT", false},   {0x20, "PROXY_REQUEST", true},
        {0x21, "PROXY_HEAD", false},    {0x22, "PROXY_CHUNK", false},
        {0x23, "PROXY_END", true},      {0x24, "PROXY_ERROR", false},
        {0x25, "PROXY_CANCEL", false},  {0x30, "RECEIPT", true},
        {0x31, "RECEIPT_ACK", false},   {0x40, "CIRCUIT_OPEN", false},
        {0x41, "CIRCUIT_OK", false},
    };
    size_t known = 0;
    for (size_t i = 0; i < LM_ARRAY_LEN(table); i++) {
        assert_string_equal(lm_frame_type_name(table[i].type), table[i].name);
        assert_true(lm_frame_type_known(table[i].type));
        assert_int_equal(lm_frame_type_signed(table[i].type), table[i].sig);
        assert_int_equal(lm_frame_max(table[i].type),
                         table[i].type == 0x20 ? 4u << 20 : 1u << 20);
    }
    for (unsigned t = 0; t < 256; t++)
        known += lm_frame_type_known((uint8_t)t);
    assert_int_equal(known, LM_ARRAY_LEN(table));
    assert_string_equal(lm_frame_type_name(0x7f), "UNKNOWN");
    assert_false(lm_frame_type_signed(0x7f));
    assert_int_equal(lm_frame_max(0x7f), LM_FRAME_MAX);
}

/* Every type, encoded and read back: the fields, the raw bytes, the length
 * field, and for signed types the signature. */
static void
test_roundtrip_every_type(void **state)
{
    (void)state;
    for (unsigned t = 0; t < 256; t++) {
        if (!lm_frame_type_known((uint8_t)t) && t != 0x7f && t != 0)
            continue;
        uint8_t type = (uint8_t)t;
        bool binary = type == LM_FRAME_PROXY_CHUNK;
        const struct lm_identity *signer = lm_frame_type_signed(type) ? &id_a : NULL;
        char payload[128];
        int n = binary ? 5 : snprintf(payload, sizeof(payload), "{\"t\":%u}", t);
        if (binary)
            memcpy(payload, "da\0ta", 5);
        struct built x;
        build_raw(&x, type, binary ? LM_FRAME_BINARY : 0, payload, (size_t)n, signer);
        size_t siglen = signer ? LM_FRAME_SIG_BYTES : 0;
        assert_int_equal(x.b.len, 4 + 2 + (size_t)n + siglen);
        uint32_t len = (uint32_t)(uint8_t)x.b.data[0] << 24 | (uint32_t)(uint8_t)x.b.data[1] << 16 |
                       (uint32_t)(uint8_t)x.b.data[2] << 8 | (uint8_t)x.b.data[3];
        assert_int_equal(len, 2 + (size_t)n + siglen);
        assert_int_equal(x.f.type, type);
        unsigned want_flags = (binary ? LM_FRAME_BINARY : 0) | (signer ? LM_FRAME_SIGNED : 0);
        assert_int_equal(x.f.flags, want_flags);
        assert_int_equal(x.f.payload_len, (size_t)n);
        assert_memory_equal(x.f.payload, payload, (size_t)n);
        assert_int_equal(x.f.raw_len, x.b.len);
        if (signer) {
            assert_ptr_equal(x.f.sig, x.f.payload + n);
            assert_int_equal(lm_frame_verify(&x.f, id_a.pk), 0);
        } else {
            assert_null(x.f.sig);
            assert_int_equal(lm_frame_verify(&x.f, id_a.pk), -EBADMSG);
        }
        unbuild(&x);
    }
}

/* Frames of mixed shapes, back to back in one buffer. */
static void
stream_of_frames(struct lm_buf *b, size_t *count)
{
    static const uint8_t big[3000] = {1};
    lm_buf_init(b, 0);
    *count = 0;
    assert_int_equal(lm_frame_encode_ping(b, LM_FRAME_PING, 42), 0);
    (*count)++;
    assert_int_equal(lm_frame_encode(b, LM_FRAME_HELLO, 0, "{\"a\":1}", 7, &id_a), 0);
    (*count)++;
    assert_int_equal(lm_frame_encode(b, LM_FRAME_PROXY_CHUNK, LM_FRAME_BINARY, big, sizeof(big),
                                     NULL), 0);
    (*count)++;
    assert_int_equal(lm_frame_encode(b, LM_FRAME_CIRCUIT_OK, 0, NULL, 0, NULL), 0); /* empty */
    (*count)++;
    assert_int_equal(lm_frame_encode(b, 0x7f, 0, "{}", 2, NULL), 0); /* unknown type */
    (*count)++;
    assert_int_equal(lm_frame_encode(b, LM_FRAME_PROXY_END, 0, NULL, 0, &id_b), 0);
    (*count)++;
}

/* Feeds b in pieces of the sizes step() gives, checking each frame against
 * a one-shot read of the same bytes. */
static void
feed_in_pieces(const struct lm_buf *b, size_t nframes, size_t (*step)(size_t i))
{
    struct lm_frame_reader whole, r;
    struct lm_frame want, got;
    size_t wpos = 0, pos = 0, seen = 0, used, i = 0;

    lm_frame_reader_init(&whole);
    lm_frame_reader_init(&r);
    while (pos < b->len) {
        size_t n = step(i++);
        if (n > b->len - pos)
            n = b->len - pos;
        size_t off = 0;
        while (off < n) {
            int rc = lm_frame_reader_feed(&r, b->data + pos + off, n - off, &used, &got);
            assert_true(rc >= 0);
            assert_true(used > 0 && used <= n - off);
            off += used;
            if (rc == 0) {
                assert_int_equal(off, n);
                assert_false(lm_frame_reader_idle(&r));
                continue;
            }
            assert_int_equal(lm_frame_reader_feed(&whole, b->data + wpos, b->len - wpos, &used,
                                                  &want), 1);
            wpos += used;
            assert_int_equal(got.type, want.type);
            assert_int_equal(got.flags, want.flags);
            assert_int_equal(got.payload_len, want.payload_len);
            assert_memory_equal(got.payload, want.payload, want.payload_len);
            assert_int_equal(got.raw_len, want.raw_len);
            assert_memory_equal(got.raw, want.raw, want.raw_len);
            assert_int_equal(got.sig != NULL, want.sig != NULL);
            if (got.sig)
                assert_memory_equal(got.sig, want.sig, LM_FRAME_SIG_BYTES);
            assert_true(lm_frame_reader_idle(&r));
            seen++;
        }
        pos += n;
    }
    assert_int_equal(seen, nframes);
    assert_int_equal(wpos, b->len);
    assert_true(lm_frame_reader_idle(&r));
    lm_frame_reader_release(&r);
    lm_frame_reader_release(&whole);
}

static size_t
one_byte(size_t i)
{
    (void)i;
    return 1;
}

static size_t
odd_sizes(size_t i)
{
    static const size_t sizes[] = {3, 1, 7, 2, 5, 700, 4, 6, 1, 2999, 13, 64};
    return sizes[i % LM_ARRAY_LEN(sizes)];
}

static size_t
everything(size_t i)
{
    (void)i;
    return SIZE_MAX;
}

static void
test_fragmentation(void **state)
{
    (void)state;
    struct lm_buf b;
    size_t count;
    stream_of_frames(&b, &count);
    feed_in_pieces(&b, count, one_byte);
    feed_in_pieces(&b, count, odd_sizes);
    feed_in_pieces(&b, count, everything);
    lm_buf_release(&b);
}

/* Many frames in one feed: each comes back in turn, borrowed from the input. */
static void
test_many_frames_one_feed(void **state)
{
    (void)state;
    struct lm_buf b;
    struct lm_frame_reader r;
    struct lm_frame f;
    size_t count, used, pos = 0, seen = 0;
    stream_of_frames(&b, &count);
    lm_frame_reader_init(&r);
    while (pos < b.len) {
        assert_int_equal(lm_frame_reader_feed(&r, b.data + pos, b.len - pos, &used, &f), 1);
        assert_ptr_equal(f.raw, b.data + pos);
        pos += used;
        seen++;
    }
    assert_int_equal(seen, count);
    assert_int_equal(lm_frame_reader_feed(&r, b.data, 0, &used, &f), 0);
    assert_int_equal(used, 0);
    assert_null(r.buf); /* nothing was ever copied */
    lm_frame_reader_release(&r);
    lm_buf_release(&b);
}

static void
put_prefix(uint8_t *p, uint32_t len, uint8_t type, uint8_t flags)
{
    p[0] = (uint8_t)(len >> 24);
    p[1] = (uint8_t)(len >> 16);
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
    p[4] = type;
    p[5] = flags;
}

/* Feeds the prefix one byte at a time; returns the first non-zero result and
 * how many bytes it took to get there. */
static int
feed_prefix(struct lm_frame_reader *r, const uint8_t *p, size_t n, size_t *taken)
{
    struct lm_frame f;
    size_t used;
    *taken = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = lm_frame_reader_feed(r, p + i, 1, &used, &f);
        *taken += used;
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void
test_caps_from_prefix(void **state)
{
    (void)state;
    struct lm_frame_reader r;
    struct lm_frame f;
    uint8_t p[6];
    size_t taken, used;

    /* 1 MiB + 1 for a PING: refused at the fifth byte, nothing buffered. */
    put_prefix(p, LM_FRAME_MAX + 1, LM_FRAME_PING, 0);
    lm_frame_reader_init(&r);
    assert_int_equal(feed_prefix(&r, p, 6, &taken), -EMSGSIZE);
    assert_int_equal(taken, 5);
    assert_null(r.buf);
    assert_int_equal(r.cap, 0);
    /* Sticky: the stream is broken for good. */
    assert_int_equal(lm_frame_reader_feed(&r, p, 6, &used, &f), -EMSGSIZE);
    assert_int_equal(used, 0);
    assert_false(lm_frame_reader_idle(&r));
    lm_frame_reader_release(&r);

    /* The same length is fine for a PROXY_REQUEST... */
    put_prefix(p, LM_FRAME_MAX + 1, LM_FRAME_PROXY_REQUEST, 0);
    lm_frame_reader_init(&r);
    assert_int_equal(feed_prefix(&r, p, 6, &taken), 0);
    assert_true(r.cap <= 256); /* only the prefix is held, nothing allocated ahead */
    lm_frame_reader_release(&r);
    /* ...whose cap is 4 MiB; over any cap shows from the length field alone. */
    put_prefix(p, LM_FRAME_MAX_REQUEST + 1, LM_FRAME_PROXY_REQUEST, 0);
    lm_frame_reader_init(&r);
    assert_int_equal(feed_prefix(&r, p, 6, &taken), -EMSGSIZE);
    assert_int_equal(taken, 4);
    lm_frame_reader_release(&r);
    put_prefix(p, UINT32_MAX, 0x7f, 0);
    lm_frame_reader_init(&r);
    assert_int_equal(lm_frame_reader_feed(&r, p, 6, &used, &f), -EMSGSIZE);
    assert_null(r.buf);
    lm_frame_reader_release(&r);

    /* Lengths that cannot hold a type and flags, or a signature. */
    for (uint32_t len = 0; len < 2; len++) {
        put_prefix(p, len, LM_FRAME_PING, 0);
        lm_frame_reader_init(&r);
        assert_int_equal(feed_prefix(&r, p, 6, &taken), -EPROTO);
        assert_int_equal(taken, 4);
        lm_frame_reader_release(&r);
    }
    put_prefix(p, 2 + LM_FRAME_SIG_BYTES - 1, LM_FRAME_HELLO, LM_FRAME_SIGNED);
    lm_frame_reader_init(&r);
    assert_int_equal(feed_prefix(&r, p, 6, &taken), -EPROTO);
    assert_int_equal(taken, 6);
    lm_frame_reader_release(&r);

    /* Exactly a type, flags and a signature: an empty signed payload. */
    struct built x;
    build_raw(&x, LM_FRAME_HELLO, 0, NULL, 0, &id_a);
    assert_int_equal(x.f.payload_len, 0);
    assert_int_equal(lm_frame_verify(&x.f, id_a.pk), 0);
    unbuild(&x);
}

/* The largest frames each cap allows, read through the copying path. */
static void
test_caps_at_the_limit(void **state)
{
    (void)state;
    struct lm_buf b;
    struct lm_frame_reader r;
    struct lm_frame f;
    size_t used;
    uint8_t *big = lm_xcalloc(1, LM_FRAME_MAX_REQUEST);

    lm_buf_init(&b, 0);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PING, 0, big, LM_FRAME_MAX - 2 + 1, NULL),
                     -EMSGSIZE);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_HELLO, 0, big, LM_FRAME_MAX - 2 - 64 + 1,
                                     &id_a), -EMSGSIZE);
    assert_int_equal(b.len, 0);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PROXY_CHUNK, LM_FRAME_BINARY, big,
                                     LM_FRAME_MAX - 2, NULL), 0);
    assert_int_equal(b.len, 4 + LM_FRAME_MAX);
    lm_frame_reader_init(&r);
    assert_int_equal(lm_frame_reader_feed(&r, b.data, 10, &used, &f), 0);
    assert_int_equal(lm_frame_reader_feed(&r, b.data + 10, b.len - 10, &used, &f), 1);
    assert_int_equal(f.payload_len, LM_FRAME_MAX - 2);
    assert_int_equal(r.cap, 4 + LM_FRAME_MAX);

    /* A 4 MiB PROXY_REQUEST, signed, verified. */
    lm_buf_reset(&b);
    size_t n = LM_FRAME_MAX_REQUEST - 2 - LM_FRAME_SIG_BYTES;
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PROXY_REQUEST, 0, big, n + 1, &id_a), -EMSGSIZE);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PROXY_REQUEST, 0, big, n, &id_a), 0);
    assert_int_equal(b.len, 4 + LM_FRAME_MAX_REQUEST);
    for (size_t off = 0; off < b.len; off += used) {
        size_t piece = b.len - off < 65536 ? b.len - off : 65536;
        int rc = lm_frame_reader_feed(&r, b.data + off, piece, &used, &f);
        assert_int_equal(rc, off + used == b.len ? 1 : 0);
    }
    assert_int_equal(f.type, LM_FRAME_PROXY_REQUEST);
    assert_int_equal(f.payload_len, n);
    assert_int_equal(lm_frame_verify(&f, id_a.pk), 0);
    assert_int_equal(r.cap, 4 + LM_FRAME_MAX_REQUEST); /* exactly the frame, not a doubling */
    /* The next frame gives the 4 MiB back. */
    assert_int_equal(lm_frame_reader_feed(&r, b.data, 3, &used, &f), 0);
    assert_null(r.buf);
    lm_frame_reader_release(&r);
    lm_frame_reader_release(NULL);
    lm_buf_release(&b);
    free(big);
}

static void
test_encode_refusals(void **state)
{
    (void)state;
    struct lm_buf b;
    lm_buf_init(&b, 0);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PING, 0x04, "{}", 2, NULL), -EINVAL);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_HELLO, LM_FRAME_SIGNED, "{}", 2, NULL), -EINVAL);
    assert_int_equal(b.len, 0);
    lm_buf_release(&b);

    /* A buffer with a limit is left untouched, not half-written. */
    lm_buf_init(&b, 16);
    assert_int_equal(lm_buf_puts(&b, "abc"), 0);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PING, 0, "{\"nonce\":1}", 11, NULL), -E2BIG);
    assert_int_equal(b.len, 3);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_PING, 0, "{}", 2, NULL), 0);
    assert_int_equal(b.len, 3 + 8);
    lm_buf_release(&b);

    json_t *arr = json_array();
    lm_buf_init(&b, 0);
    assert_int_equal(lm_frame_encode_json(&b, LM_FRAME_PING, arr, NULL), -EINVAL);
    json_decref(arr);
    lm_buf_release(&b);
}

/* Reserved flag bits are passed on by the reader (forward compatibility). */
static void
test_reserved_flags_pass(void **state)
{
    (void)state;
    uint8_t p[8];
    struct lm_frame_reader r;
    struct lm_frame f;
    size_t used;
    put_prefix(p, 4, 0x55, 0xfc);
    memcpy(p + 6, "{}", 2);
    lm_frame_reader_init(&r);
    assert_int_equal(lm_frame_reader_feed(&r, p, sizeof(p), &used, &f), 1);
    assert_int_equal(f.flags, 0xfc);
    assert_int_equal(f.type, 0x55);
    assert_int_equal(f.payload_len, 2);
    assert_null(f.sig);
    lm_frame_reader_release(&r);
}

/* The byte-exact vector of docs/labnet.md: seed 00 01 .. 1f, HELLO. */
static const char vector_payload[] =
    "{\"from\":\"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8\","
    "\"ts\":1700000000000,\"version\":1,\"name\":\"vector\",\"roles\":[\"gateway\"],"
    "\"addrs\":[\"192.0.2.1:31146\"],\"software\":\"labman/0.1.0\",\"features\":[]}";
static const char vector_hex[] =
    "0000011401017b2266726f6d223a223033613130376266663363653130626531"
    "6437306464313865373462633039393637653464363330396261353064356631"
    "646463383636343132353533316238222c227473223a31373030303030303030"
    "3030302c2276657273696f6e223a312c226e616d65223a22766563746f72222c"
    "22726f6c6573223a5b2267617465776179225d2c226164647273223a5b223139"
    "322e302e322e313a3331313436225d2c22736f667477617265223a226c61626d"
    "616e2f302e312e30222c226665617475726573223a5b5d7de64a59e21d7ce687"
    "d4a12a15ee4701cd659269b5fac1346b647f41269ca0c16ecf990dabb9e8d81a"
    "e56d56a9b415ec12ab983ab7ee84e334d25943720f64910e";

static void
test_vector(void **state)
{
    (void)state;
    struct lm_identity v;
    struct lm_buf b;
    make_id(&v, 0);
    assert_string_equal(v.node_id,
                        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8");
    lm_buf_init(&b, 0);
    assert_int_equal(lm_frame_encode(&b, LM_FRAME_HELLO, 0, vector_payload,
                                     strlen(vector_payload), &v), 0);
    char *hex = lm_xmalloc(2 * b.len + 1);
    lm_hex_encode(hex, (const uint8_t *)b.data, b.len);
    assert_string_equal(hex, vector_hex);
    free(hex);

    /* Decoded from the hex, it passes the whole check at its own ts. */
    struct built x;
    size_t n = strlen(vector_hex) / 2;
    lm_buf_init(&x.b, 0);
    uint8_t *raw = lm_xmalloc(n);
    assert_int_equal(lm_hex_decode(raw, n, vector_hex), 0);
    assert_int_equal(lm_buf_append(&x.b, raw, n), 0);
    free(raw);
    decode_one(&x);
    struct lm_frame_replay *rp;
    assert_int_equal(lm_frame_replay_new(&rp, 0), 0);
    assert_string_equal(check(&x, rp, T0, 0), "ok");
    lm_frame_replay_free(rp);
    unbuild(&x);
    lm_buf_release(&b);
}

static void
test_signatures(void **state)
{
    (void)state;
    struct built x;
    struct lm_frame_replay *rp;
    assert_int_equal(lm_frame_replay_new(&rp, 0), 0);

    hello(&x, &id_a, id_a.node_id, T0);
    assert_int_equal(lm_frame_verify(&x.f, id_a.pk), 0);
    assert_int_equal(lm_frame_verify(&x.f, id_b.pk), -EBADMSG); /* wrong key */

    /* A tampered payload byte (within the JSON, so it still parses). */
    char *t = memmem(x.b.data, x.b.len, "\"name\":\"n\"", 10);
    assert_non_null(t);
    t[8] = 'm';
    decode_one(&x);
    assert_int_equal(lm_frame_verify(&x.f, id_a.pk), -EBADMSG);
    assert_string_equal(check(&x, rp, T0, 0), "bad_signature");
    t[8] = 'n';
    decode_one(&x);
    assert_string_equal(check(&x, rp, T0, 0), "ok");

    /* The type byte is signed too: a HELLO relabelled PROXY_END fails. */
    x.b.data[4] = LM_FRAME_PROXY_END;
    decode_one(&x);
    assert_int_equal(lm_frame_verify(&x.f, id_a.pk), -EBADMSG);
    assert_string_equal(check(&x, rp, T0, 0), "bad_signature");
    /* A tampered signature. */
    x.b.data[4] = LM_FRAME_HELLO;
    x.b.data[x.b.len - 1] ^= 1;
    decode_one(&x);
    assert_string_equal(check(&x, rp, T0 + 1, 0), "bad_signature");
    /* The SIGNED flag cleared: the signature becomes payload, and it is unsigned. */
    x.b.data[x.b.len - 1] ^= 1;
    x.b.data[5] = 0;
    decode_one(&x);
    assert_string_equal(check(&x, rp, T0 + 1, 0), "bad_signature");
    unbuild(&x);

    /* Signed by A, naming B as its sender. */
    hello(&x, &id_a, id_b.node_id, T0);
    assert_string_equal(check(&x, rp, T0, 0), "bad_signature");
    unbuild(&x);
    /* A gossip record signed by A whose origin is B. */
    build(&x, LM_FRAME_GOSSIP_RECORD, &id_a,
          "{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":%llu,\"ttl_ms\":60000,"
          "\"body\":{}}",
          id_b.node_id, (unsigned long long)T0);
    assert_string_equal(check(&x, rp, T0, 0), "bad_signature");
    unbuild(&x);
    /* The signer of a record is its origin, not a "from" that relays it. */
    build(&x, LM_FRAME_GOSSIP_RECORD, &id_a,
          "{\"from\":\"%s\",\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":1,\"ts\":%llu,"
          "\"ttl_ms\":60000,\"body\":{}}",
          id_a.node_id, id_b.node_id, (unsigned long long)T0);
    assert_string_equal(check(&x, rp, T0, 0), "bad_signature");
    unbuild(&x);
    /* A signed type sent unsigned. */
    build(&x, LM_FRAME_HELLO, NULL, "{\"from\":\"%s\",\"ts\":%llu}", id_a.node_id,
          (unsigned long long)T0);
    assert_string_equal(check(&x, rp, T0, 0), "bad_signature");
    unbuild(&x);
    lm_frame_replay_free(rp);
}

static void
test_timestamps(void **state)
{
    (void)state;
    static const struct {
        int64_t skew; /* now - ts */
        const char *want;
    } cases[] = {
        {0, "ok"},
        {(int64_t)MIN5 - 1000, "ok"},
        {(int64_t)MIN5, "ok"},
        {(int64_t)MIN5 + 1, "stale_timestamp"},
        {(int64_t)MIN5 + 1000, "stale_timestamp"},
        {-((int64_t)MIN5 - 1000), "ok"},
        {-(int64_t)MIN5, "ok"},
        {-((int64_t)MIN5 + 1000), "stale_timestamp"},
        {-(int64_t)T0, "stale_timestamp"},
    };
    for (size_t i = 0; i < LM_ARRAY_LEN(cases); i++) {
        struct lm_frame_replay *rp;
        struct built x;
        assert_int_equal(lm_frame_replay_new(&rp, 0), 0);
        uint64_t ts = T0 - (uint64_t)cases[i].skew;
        hello(&x, &id_a, id_a.node_id, ts);
        assert_string_equal(check(&x, rp, T0, 0), cases[i].want);
        unbuild(&x);
        lm_frame_replay_free(rp);
    }
}

static void
test_replay_hello_and_request(void **state)
{
    (void)state;
    struct lm_frame_replay *rp;
    struct built h1, h2, r1, r2, r3;
    assert_int_equal(lm_frame_replay_new(&rp, 0), 0);

    hello(&h1, &id_a, id_a.node_id, T0);
    assert_string_equal(check(&h1, rp, T0, 0), "ok");
    assert_string_equal(check(&h1, rp, T0 + 1000, 0), "replayed");
    /* A new HELLO (another ts) from the same node, and one from another node. */
    hello(&h2, &id_a, id_a.node_id, T0 + 1);
    assert_string_equal(check(&h2, rp, T0 + 1000, 0), "ok");
    unbuild(&h2);
    hello(&h2, &id_b, id_b.node_id, T0);
    assert_string_equal(check(&h2, rp, T0 + 1000, 0), "ok");
    unbuild(&h2);

    request(&r1, &id_a, RID_A, T0);
    assert_string_equal(check(&r1, rp, T0, 0), "ok");
    assert_string_equal(check(&r1, rp, T0 + MIN5, 0), "replayed");
    /* The same request_id re-signed with a new ts is still a duplicate... */
    request(&r2, &id_a, RID_A, T0 + 2000);
    assert_string_equal(check(&r2, rp, T0 + 2000, 0), "replayed");
    unbuild(&r2);
    /* ...but another request_id, or the same id from another node, is not. */
    request(&r2, &id_a, RID_B, T0);
    assert_string_equal(check(&r2, rp, T0, 0), "ok");
    request(&r3, &id_b, RID_A, T0);
    assert_string_equal(check(&r3, rp, T0, 0), "ok");
    unbuild(&r3);
    /* PROXY_END keys apart from PROXY_REQUEST with the same request_id. */
    build(&r3, LM_FRAME_PROXY_END, &id_a,
          "{\"from\":\"%s\",\"request_id\":\"%s\",\"ts\":%llu,\"usage\":{}}", id_a.node_id,
          RID_A, (unsigned long long)T0);
    assert_string_equal(check(&r3, rp, T0, 0), "ok");
    assert_string_equal(check(&r3, rp, T0, 0), "replayed");
    unbuild(&r3);

    /* After the window the old frames are stale, not let through... */
    uint64_t later = T0 + MIN5 + 1;
    assert_string_equal(check(&h1, rp, later, 0), "stale_timestamp");
    assert_string_equal(check(&r1, rp, later, 0), "stale_timestamp");
    /* ...and their keys are gone: the same request_id in a fresh frame is accepted. */
    request(&r3, &id_a, RID_A, later);
    assert_string_equal(check(&r3, rp, later, 0), "ok");
    assert_string_equal(check(&r3, rp, later, 0), "replayed");
    unbuild(&r3);

    /* A clock stepping back does not reopen the window of pruned keys. */
    assert_string_equal(check(&r2, rp, T0 + 1000, 0), "stale_timestamp");

    unbuild(&h1);
    unbuild(&r1);
    unbuild(&r2);
    lm_frame_replay_free(rp);
}

/* Gossip records and receipts with LM_FRAME_CHECK_STORED: the store judges
 * duplicates and age; only a ts far ahead is still refused here. */
static void
test_stored_types(void **state)
{
    (void)state;
    struct lm_frame_replay *rp;
    struct built g, rc, old, ahead;
    assert_int_equal(lm_frame_replay_new(&rp, 0), 0);
    const char *rec = "{\"origin\":\"%s\",\"kind\":\"peer\",\"seq\":7,\"ts\":%llu,"
                      "\"ttl_ms\":3600000,\"body\":{\"name\":\"a\"},\"unknown_field\":[1,2]}";

    build(&g, LM_FRAME_GOSSIP_RECORD, &id_a, rec, id_a.node_id, (unsigned long long)T0);
    assert_string_equal(check(&g, rp, T0, LM_FRAME_CHECK_STORED), "ok");
    assert_string_equal(check(&g, rp, T0, LM_FRAME_CHECK_STORED), "ok");
    assert_string_equal(check(&g, NULL, T0, LM_FRAME_CHECK_STORED), "ok");
    assert_int_equal(lm_frame_replay_count(rp), 0);
    /* Without the flag a record is keyed by (origin, kind, seq). */
    assert_string_equal(check(&g, rp, T0, 0), "ok");
    assert_string_equal(check(&g, rp, T0, 0), "replayed");
    assert_string_equal(check(&g, NULL, T0, 0), "malformed"); /* no cache to check against */

    build(&old, LM_FRAME_GOSSIP_RECORD, &id_a, rec, id_a.node_id,
          (unsigned long long)(T0 - 3000000));
    assert_string_equal(check(&old, rp, T0, LM_FRAME_CHECK_STORED), "ok");
    assert_string_equal(check(&old, rp, T0, 0), "stale_timestamp");
    build(&ahead, LM_FRAME_GOSSIP_RECORD, &id_a, rec, id_a.node_id,
          (unsigned long long)(T0 + MIN5 + 1000));
    assert_string_equal(check(&ahead, rp, T0, LM_FRAME_CHECK_STORED), "stale_timestamp");

    build(&rc, LM_FRAME_RECEIPT, &id_b,
          "{\"receipt_id\":\"r-1\",\"origin\":\"%s\",\"ts\":%llu,\"amount_micros\":5}",
          id_b.node_id, (unsigned long long)T0);
    assert_string_equal(check(&rc, rp, T0 + 1, LM_FRAME_CHECK_STORED), "ok");
    assert_string_equal(check(&rc, rp, T0 + 1, LM_FRAME_CHECK_STORED), "ok");
    assert_string_equal(check(&rc, rp, T0 + 1, 0), "ok");
    assert_string_equal(check(&rc, rp, T0 + 1, 0), "replayed");
    unbuild(&rc);

    /* The flag means nothing to other types: a HELLO is still checked. */
    struct built h;
    hello(&h, &id_a, id_a.node_id, T0);
    assert_string_equal(check(&h, rp, T0, LM_FRAME_CHECK_STORED), "ok");
    assert_string_equal(check(&h, rp, T0, LM_FRAME_CHECK_STORED), "replayed");
    assert_string_equal(check(&h, NULL, T0, LM_FRAME_CHECK_STORED), "malformed");
    unbuild(&h);
    unbuild(&g);
    unbuild(&old);
    unbuild(&ahead);
    lm_frame_replay_free(rp);
}

/* Full cache: new keys are refused, old ones stay held, and room comes back
 * only as keys expire. */
static void
test_replay_full_policy(void **state)
{
    (void)state;
    static const char *const rids[] = {
        "00000000000000000000000000000001", "00000000000000000000000000000002",
        "00000000000000000000000000000003", "00000000000000000000000000000004",
    };
    struct lm_frame_replay *rp;
    struct built r[4];
    assert_int_equal(lm_frame_replay_new(&rp, 3), 0);
    for (size_t i = 0; i < 4; i++)
        request(&r[i], &id_a, rids[i], T0 + i * 1000);
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(check(&r[i], rp, T0 + 3000, 0), "ok");
    assert_string_equal(check(&r[3], rp, T0 + 3000, 0), "replay_cache_full");
    struct lm_frame_problem why;
    json_t *o = NULL;
    assert_int_equal(lm_frame_check(&r[3].f, rp, T0 + 3000, 0, &o, &why), -ENOSPC);
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(check(&r[i], rp, T0 + 3000, 0), "replayed");
    assert_string_equal(check(&r[3], rp, T0 + MIN5, 0), "replay_cache_full");
    /* r[0] (ts T0) expires after T0 + 5 min: room for one. */
    assert_string_equal(check(&r[3], rp, T0 + MIN5 + 1, 0), "ok");
    assert_int_equal(lm_frame_replay_count(rp), 3);
    assert_string_equal(check(&r[1], rp, T0 + MIN5 + 1, 0), "replayed");
    for (size_t i = 0; i < 4; i++)
        unbuild(&r[i]);
    lm_frame_replay_free(rp);

    assert_int_equal(lm_frame_replay_new(&rp, LM_FRAME_REPLAY_LIMIT + 1), -EINVAL);
    lm_frame_replay_free(NULL);
}

/* The cache against a plain list, on random keys, expiries and times. */
static void
test_replay_model(void **state)
{
    (void)state;
    enum { MAX = 50, KEYS = 200, STEPS = 20000 };
    struct lm_frame_replay *rp;
    uint64_t model[KEYS] = {0}; /* expiry of each held key, 0 = not held */
    uint64_t now = 1000;
    uint32_t seed = 12345;

    assert_int_equal(lm_frame_replay_new(&rp, MAX), 0);
    for (int step = 0; step < STEPS; step++) {
        seed = seed * 1103515245u + 12345u;
        uint32_t k = (seed >> 8) % KEYS;
        seed = seed * 1103515245u + 12345u;
        uint64_t exp = now + (seed >> 8) % 400;
        seed = seed * 1103515245u + 12345u;
        now += (seed >> 8) % 4;
        size_t held = 0;
        for (size_t i = 0; i < KEYS; i++) {
            if (model[i] && model[i] < now)
                model[i] = 0;
            held += model[i] != 0;
        }
        int want = model[k] ? -EALREADY : held >= MAX ? -ENOSPC : 0;
        if (want == 0)
            model[k] = exp;
        char key[16];
        int n = snprintf(key, sizeof(key), "k%u", k);
        assert_int_equal(lm_frame_replay_add(rp, key, (size_t)n, exp, now), want);
        if (want != -ENOSPC)
            assert_int_equal(lm_frame_replay_count(rp), held + (want == 0));
    }
    lm_frame_replay_free(rp);
}

static void
test_malformed(void **state)
{
    (void)state;
    struct lm_frame_replay *rp;
    struct built x;
    assert_int_equal(lm_frame_replay_new(&rp, 0), 0);
    static const char *const bad[] = {
        "", "not json", "[1,2]", "\"str\"", "42", "null", "{\"from\":", "{} trailing",
        "{\"a\":1,\"a\":2}", "{\"s\":\"\\u0000\"}", "{\"s\":\"\xff\xfe\"}",
    };
    for (size_t i = 0; i < LM_ARRAY_LEN(bad); i++) {
        build_raw(&x, LM_FRAME_HELLO, 0, bad[i], strlen(bad[i]), &id_a);
        assert_string_equal(check(&x, rp, T0, 0), "malformed");
        unbuild(&x);
    }

    /* Nesting: 64 levels are fine, 65 are not, 100000 are refused quickly. */
    for (size_t depth = 63; depth <= 100000; depth = depth == 65 ? 100000 : depth + 1) {
        struct lm_buf p;
        lm_buf_init(&p, 0);
        lm_buf_printf(&p, "{\"from\":\"%s\",\"ts\":%llu,\"x\":", id_a.node_id,
                      (unsigned long long)(T0 + depth));
        for (size_t i = 1; i < depth; i++)
            lm_buf_puts(&p, "[");
        for (size_t i = 1; i < depth; i++)
            lm_buf_puts(&p, "]");
        lm_buf_puts(&p, "}");
        build_raw(&x, LM_FRAME_HELLO, 0, p.data, p.len, &id_a);
        assert_string_equal(check(&x, rp, T0, 0), depth <= 64 ? "ok" : "malformed");
        unbuild(&x);
        lm_buf_release(&p);
    }

    /* Signer and ts fields. */
    unsigned long long ts = T0;
    const char *me = id_a.node_id;
    build(&x, LM_FRAME_HELLO, &id_a, "{\"ts\":%llu}", ts);
    assert_string_equal(check(&x, rp, T0, 0), "missing_field");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":\"%s\"}", me);
    assert_string_equal(check(&x, rp, T0, 0), "missing_field");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":17,\"ts\":%llu}", ts);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":\"%s0\",\"ts\":%llu}", me, ts);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":\"abc\",\"ts\":%llu}", ts);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":\"%s\",\"ts\":-1}", me);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":\"%s\",\"ts\":1.7e12}", me);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    build(&x, LM_FRAME_HELLO, &id_a, "{\"from\":\"%s\",\"ts\":\"%llu\"}", me, ts);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);

    /* An uppercase node id is not a node id (they are lowercase everywhere). */
    char upper[65];
    for (size_t i = 0; i < 65; i++)
        upper[i] = (char)(id_a.node_id[i] >= 'a' ? id_a.node_id[i] - 32 : id_a.node_id[i]);
    hello(&x, &id_a, upper, T0);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);

    /* Replay key fields. */
    request(&x, &id_a, "0123", T0);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    request(&x, &id_a, "0123456789ABCDEF0123456789ABCDEF", T0);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    build(&x, LM_FRAME_PROXY_REQUEST, &id_a, "{\"from\":\"%s\",\"ts\":%llu}", id_a.node_id,
          (unsigned long long)T0);
    assert_string_equal(check(&x, rp, T0, 0), "missing_field");
    unbuild(&x);
    build(&x, LM_FRAME_GOSSIP_RECORD, &id_a, "{\"origin\":\"%s\",\"ts\":%llu,\"kind\":\"peer\"}",
          id_a.node_id, (unsigned long long)T0);
    assert_string_equal(check(&x, rp, T0, 0), "missing_field");
    unbuild(&x);
    build(&x, LM_FRAME_RECEIPT, &id_a, "{\"origin\":\"%s\",\"ts\":%llu,\"receipt_id\":\"\"}",
          id_a.node_id, (unsigned long long)T0);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);

    /* Not a signed JSON frame at all. */
    build_raw(&x, LM_FRAME_PING, 0, "{}", 2, NULL);
    assert_string_equal(check(&x, rp, T0, 0), "unsupported_type");
    unbuild(&x);
    build_raw(&x, 0x7f, 0, "{}", 2, &id_a);
    assert_string_equal(check(&x, rp, T0, 0), "unsupported_type");
    unbuild(&x);
    build_raw(&x, LM_FRAME_HELLO, LM_FRAME_BINARY, "{}", 2, &id_a);
    assert_string_equal(check(&x, rp, T0, 0), "malformed");
    unbuild(&x);
    lm_frame_replay_free(rp);
}

static void
test_error_frames(void **state)
{
    (void)state;
    struct built x;
    struct lm_frame_error e;

    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_error(&x.b, LM_FRAME_ERROR, "frame_too_large", "too big",
                                           false, -1), 0);
    decode_one(&x);
    assert_int_equal(x.f.type, LM_FRAME_ERROR);
    assert_int_equal(x.f.flags, 0);
    assert_memory_equal(x.f.payload, "{\"code\":\"frame_too_large\",\"message\":\"too big\","
                        "\"retryable\":false}", x.f.payload_len);
    assert_int_equal(lm_frame_parse_error(&x.f, &e), 0);
    assert_string_equal(e.code, "frame_too_large");
    assert_string_equal(e.message, "too big");
    assert_false(e.retryable);
    assert_int_equal(e.retry_after_ms, -1);
    unbuild(&x);

    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_error(&x.b, LM_FRAME_PROXY_ERROR, "overloaded", "busy", true,
                                           2500), 0);
    decode_one(&x);
    assert_int_equal(x.f.type, LM_FRAME_PROXY_ERROR);
    assert_int_equal(lm_frame_parse_error(&x.f, &e), 0);
    assert_string_equal(e.code, "overloaded");
    assert_true(e.retryable);
    assert_int_equal(e.retry_after_ms, 2500);
    unbuild(&x);

    /* Bytes that are not UTF-8 go out escaped, still one valid frame. */
    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_error(&x.b, LM_FRAME_ERROR, "upstream_error", "bad \xff",
                                           false, -1), 0);
    decode_one(&x);
    assert_int_equal(lm_frame_parse_error(&x.f, &e), 0);
    assert_string_equal(e.message, "bad \\xff");
    unbuild(&x);

    struct lm_buf b;
    lm_buf_init(&b, 0);
    assert_int_equal(lm_frame_encode_error(&b, LM_FRAME_PING, "x", "", false, -1), -EINVAL);
    assert_int_equal(lm_frame_encode_error(&b, LM_FRAME_ERROR, "", "", false, -1), -EINVAL);
    assert_int_equal(lm_frame_encode_error(&b, LM_FRAME_ERROR, NULL, "", false, -1), -EINVAL);
    assert_int_equal(b.len, 0);
    lm_buf_release(&b);

    /* Parsing: unknown fields ignored, absent optional fields defaulted. */
    static const struct {
        const char *json;
        int rc;
    } cases[] = {
        {"{\"code\":\"x\",\"future\":{\"a\":[1]}}", 0},
        {"{\"code\":\"x\",\"retry_after_ms\":null}", 0},
        {"{\"message\":\"m\"}", -EINVAL},
        {"{\"code\":\"\"}", -EINVAL},
        {"{\"code\":1}", -EINVAL},
        {"{\"code\":\"x\",\"message\":1}", -EINVAL},
        {"{\"code\":\"x\",\"retryable\":\"yes\"}", -EINVAL},
        {"{\"code\":\"x\",\"retry_after_ms\":-5}", -EINVAL},
        {"{\"code\":\"x\",\"retry_after_ms\":1.5}", -EINVAL},
        {"{\"code\":\"0123456789012345678901234567890123456789012345678901234567890123\"}",
         -EINVAL},
        {"[]", -EINVAL},
        {"{", -EINVAL},
    };
    for (size_t i = 0; i < LM_ARRAY_LEN(cases); i++) {
        build_raw(&x, LM_FRAME_ERROR, 0, cases[i].json, strlen(cases[i].json), NULL);
        memset(&e, 0x55, sizeof(e));
        assert_int_equal(lm_frame_parse_error(&x.f, &e), cases[i].rc);
        if (cases[i].rc == 0) {
            assert_string_equal(e.code, "x");
            assert_string_equal(e.message, "");
            assert_false(e.retryable);
            assert_int_equal(e.retry_after_ms, -1);
        }
        unbuild(&x);
    }
    build_raw(&x, LM_FRAME_PING, 0, "{\"code\":\"x\"}", 12, NULL);
    assert_int_equal(lm_frame_parse_error(&x.f, &e), -EINVAL);
    unbuild(&x);
    build_raw(&x, LM_FRAME_ERROR, LM_FRAME_BINARY, "{\"code\":\"x\"}", 12, NULL);
    assert_int_equal(lm_frame_parse_error(&x.f, &e), -EINVAL);
    unbuild(&x);

    /* A long message is cut, and never inside a UTF-8 sequence. */
    struct lm_buf p;
    lm_buf_init(&p, 0);
    lm_buf_puts(&p, "{\"code\":\"x\",\"message\":\"");
    for (int i = 0; i < 2000; i++)
        lm_buf_puts(&p, "\xc3\xa9"); /* é */
    lm_buf_puts(&p, "\"}");
    build_raw(&x, LM_FRAME_ERROR, 0, p.data, p.len, NULL);
    assert_int_equal(lm_frame_parse_error(&x.f, &e), 0);
    assert_int_equal(strlen(e.message), LM_FRAME_MESSAGE_MAX - 2);
    unbuild(&x);
    lm_buf_release(&p);
}

static void
test_ping_head_cancel(void **state)
{
    (void)state;
    struct built x;
    uint64_t nonce;
    int status;
    char ct[64], rid[LM_FRAME_REQUEST_ID_LEN + 1];

    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_ping(&x.b, LM_FRAME_PONG, LM_FRAME_NONCE_MAX), 0);
    decode_one(&x);
    assert_int_equal(x.f.type, LM_FRAME_PONG);
    assert_int_equal(lm_frame_parse_ping(&x.f, &nonce), 0);
    assert_int_equal(nonce, LM_FRAME_NONCE_MAX);
    unbuild(&x);
    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_ping(&x.b, LM_FRAME_PING, LM_FRAME_NONCE_MAX + 1), -EINVAL);
    assert_int_equal(lm_frame_encode_ping(&x.b, LM_FRAME_ERROR, 1), -EINVAL);
    lm_buf_release(&x.b);
    static const char *const bad_pings[] = {"{}", "{\"nonce\":-1}", "{\"nonce\":\"1\"}",
                                            "{\"nonce\":9007199254740992}", "{\"nonce\":1.0}"};
    for (size_t i = 0; i < LM_ARRAY_LEN(bad_pings); i++) {
        build_raw(&x, LM_FRAME_PING, 0, bad_pings[i], strlen(bad_pings[i]), NULL);
        assert_int_equal(lm_frame_parse_ping(&x.f, &nonce), -EINVAL);
        unbuild(&x);
    }

    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_proxy_head(&x.b, 200, "text/event-stream"), 0);
    decode_one(&x);
    assert_int_equal(x.f.type, LM_FRAME_PROXY_HEAD);
    assert_int_equal(lm_frame_parse_proxy_head(&x.f, &status, ct, sizeof(ct)), 0);
    assert_int_equal(status, 200);
    assert_string_equal(ct, "text/event-stream");
    assert_int_equal(lm_frame_parse_proxy_head(&x.f, &status, ct, 5), 0);
    assert_string_equal(ct, "text");
    unbuild(&x);
    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_proxy_head(&x.b, 99, "a"), -EINVAL);
    assert_int_equal(lm_frame_encode_proxy_head(&x.b, 200, "a\r\nSet-Cookie: x"), -EINVAL);
    lm_buf_release(&x.b);
    static const char *const bad_heads[] = {"{\"content_type\":\"a\"}", "{\"status\":600}",
                                            "{\"status\":200,\"content_type\":\"a\\r\\nX: y\"}",
                                            "{\"status\":200,\"content_type\":5}"};
    for (size_t i = 0; i < LM_ARRAY_LEN(bad_heads); i++) {
        build_raw(&x, LM_FRAME_PROXY_HEAD, 0, bad_heads[i], strlen(bad_heads[i]), NULL);
        assert_int_equal(lm_frame_parse_proxy_head(&x.f, &status, ct, sizeof(ct)), -EINVAL);
        unbuild(&x);
    }
    build_raw(&x, LM_FRAME_PROXY_HEAD, 0, "{\"status\":404}", 14, NULL);
    assert_int_equal(lm_frame_parse_proxy_head(&x.f, &status, ct, sizeof(ct)), 0);
    assert_string_equal(ct, "");
    unbuild(&x);

    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_proxy_cancel(&x.b, RID_A), 0);
    decode_one(&x);
    assert_int_equal(lm_frame_parse_proxy_cancel(&x.f, rid), 0);
    assert_string_equal(rid, RID_A);
    unbuild(&x);
    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_proxy_cancel(&x.b, "abc"), -EINVAL);
    lm_buf_release(&x.b);
    build_raw(&x, LM_FRAME_PROXY_CANCEL, 0, "{\"request_id\":\"xyz\"}", 20, NULL);
    assert_int_equal(lm_frame_parse_proxy_cancel(&x.f, rid), -EINVAL);
    unbuild(&x);

    /* Any JSON object through the generic encoder, signed or not. */
    json_t *o = json_pack("{s:[[s,s,i]]}", "entries", id_a.node_id, "peer", 3);
    lm_buf_init(&x.b, 0);
    assert_int_equal(lm_frame_encode_json(&x.b, LM_FRAME_GOSSIP_DIGEST, o, NULL), 0);
    decode_one(&x);
    json_t *back;
    assert_int_equal(lm_frame_parse_json(&x.f, &back), 0);
    assert_true(json_equal(o, back));
    json_decref(back);
    json_decref(o);
    unbuild(&x);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_roundtrip_every_type),
        cmocka_unit_test(test_fragmentation),
        cmocka_unit_test(test_many_frames_one_feed),
        cmocka_unit_test(test_caps_from_prefix),
        cmocka_unit_test(test_caps_at_the_limit),
        cmocka_unit_test(test_encode_refusals),
        cmocka_unit_test(test_reserved_flags_pass),
        cmocka_unit_test(test_vector),
        cmocka_unit_test(test_signatures),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_replay_hello_and_request),
        cmocka_unit_test(test_stored_types),
        cmocka_unit_test(test_replay_full_policy),
        cmocka_unit_test(test_replay_model),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_error_frames),
        cmocka_unit_test(test_ping_head_cancel),
    };
    return cmocka_run_group_tests(tests, setup_ids, NULL);
}
