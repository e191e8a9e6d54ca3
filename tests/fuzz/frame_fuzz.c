/* frame_fuzz: any bytes through the labnet/1 frame reader and the signed-JSON
 * check. Input: byte 0 picks how the rest is cut into pieces; the rest is a
 * stream's bytes. Checked for every input:
 * - read in those pieces, the stream gives the same frames and the same final
 *   error as read whole, and every byte is taken;
 * - each frame lies inside its cap, raw = length field + type + flags +
 *   payload + signature, and an unsigned one re-encodes to the same bytes;
 * - lm_frame_check answers 0 with a JSON object, or a documented code and a
 *   message; the unsigned frames' parsers never crash;
 * - each frame's payload is also re-signed with a fixed key (seed 00..1f, node
 *   id 03a107bf..., the docs/labnet.md vector's) and checked, so payloads naming
 *   that key reach the timestamp and replay-cache paths, with a cache of four
 *   keys that fills up. "Now" is fixed: 1700000000000. */
#include <errno.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame/frame.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW_MS UINT64_C(1700000000000)
#define MAX_FRAMES 4096

static struct lm_identity fuzz_id;

static void
init_key(void)
{
    static bool done;
    uint8_t seed[32];
    if (done)
        return;
    if (sodium_init() < 0)
        abort();
    for (size_t i = 0; i < sizeof(seed); i++)
        seed[i] = (uint8_t)i;
    crypto_sign_seed_keypair(fuzz_id.pk, fuzz_id.sk, seed);
    lm_hex_encode(fuzz_id.node_id, fuzz_id.pk, sizeof(fuzz_id.pk));
    done = true;
}

static void
check_frame_shape(const struct lm_frame *f)
{
    if (f->raw_len < LM_FRAME_HEAD_BYTES || f->raw_len - LM_FRAME_LEN_BYTES > lm_frame_max(f->type))
        abort();
    uint32_t len = (uint32_t)f->raw[0] << 24 | (uint32_t)f->raw[1] << 16 |
                   (uint32_t)f->raw[2] << 8 | f->raw[3];
    if (len != f->raw_len - LM_FRAME_LEN_BYTES || f->raw[4] != f->type || f->raw[5] != f->flags)
        abort();
    size_t siglen = (f->flags & LM_FRAME_SIGNED) ? LM_FRAME_SIG_BYTES : 0;
    if (f->payload != f->raw + LM_FRAME_HEAD_BYTES ||
        f->payload_len + siglen + LM_FRAME_HEAD_BYTES != f->raw_len)
        abort();
    if ((siglen != 0) != (f->sig != NULL) || (f->sig && f->sig != f->payload + f->payload_len))
        abort();
    /* Touch every byte, so ASan sees any pointer past the frame. */
    volatile uint8_t sum = 0;
    for (size_t i = 0; i < f->raw_len; i++)
        sum += f->raw[i];
    (void)sum;
    if (!(f->flags & LM_FRAME_SIGNED) && !(f->flags & ~LM_FRAME_FLAGS_KNOWN)) {
        struct lm_buf b;
        lm_buf_init(&b, 0);
        if (lm_frame_encode(&b, f->type, f->flags, f->payload, f->payload_len, NULL) != 0 ||
            b.len != f->raw_len || memcmp(b.data, f->raw, b.len) != 0)
            abort();
        lm_buf_release(&b);
    }
}

static void
run_check(const struct lm_frame *f, struct lm_frame_replay *rp, unsigned flags)
{
    static const char *const codes[] = {
        LM_FRAME_E_UNSUPPORTED, LM_FRAME_E_MALFORMED, LM_FRAME_E_MISSING,
        LM_FRAME_E_BAD_SIGNATURE, LM_FRAME_E_STALE, LM_FRAME_E_REPLAYED,
        LM_FRAME_E_REPLAY_FULL,
    };
    struct lm_frame_problem why;
    json_t *o = NULL;
    int rc = lm_frame_check(f, rp, NOW_MS, flags, &o, &why);
    if (rc == 0) {
        if (!json_is_object(o) || !lm_frame_type_signed(f->type))
            abort();
        json_decref(o);
        return;
    }
    if (rc > 0 || o || !why.code || !why.message[0] ||
        memchr(why.message, '\n', strlen(why.message)))
        abort();
    bool known = false;
    for (size_t i = 0; i < LM_ARRAY_LEN(codes); i++)
        known |= strcmp(why.code, codes[i]) == 0;
    if (!known)
        abort();
}

static void
run_parsers(const struct lm_frame *f)
{
    struct lm_frame_error e;
    uint64_t nonce;
    int status;
    char ct[32], rid[LM_FRAME_REQUEST_ID_LEN + 1];
    json_t *o;

    if (lm_frame_parse_error(f, &e) == 0 &&
        (!e.code[0] || strlen(e.code) >= LM_FRAME_CODE_MAX || e.retry_after_ms < -1))
        abort();
    if (lm_frame_parse_ping(f, &nonce) == 0 && nonce > LM_FRAME_NONCE_MAX)
        abort();
    if (lm_frame_parse_proxy_head(f, &status, ct, sizeof(ct)) == 0 &&
        (status < 100 || status > 599 || strpbrk(ct, "\r\n")))
        abort();
    if (lm_frame_parse_proxy_cancel(f, rid) == 0 && strlen(rid) != LM_FRAME_REQUEST_ID_LEN)
        abort();
    if (lm_frame_parse_json(f, &o) == 0) {
        if (!json_is_object(o))
            abort();
        json_decref(o);
    }
}

/* The payload signed by the fuzz key, as if it had come so. */
static void
run_resigned(const struct lm_frame *f, struct lm_frame_replay *rp)
{
    uint8_t sig[LM_FRAME_SIG_BYTES];
    struct lm_frame g = *f;
    if (!lm_frame_type_signed(f->type))
        return;
    lm_frame_sign(f->type, f->payload, f->payload_len, &fuzz_id, sig);
    g.flags = (uint8_t)((f->flags | LM_FRAME_SIGNED) & ~LM_FRAME_BINARY);
    g.sig = sig;
    if (lm_frame_verify(&g, fuzz_id.pk) != 0)
        abort();
    run_check(&g, rp, 0);
    run_check(&g, NULL, LM_FRAME_CHECK_STORED);
}

static uint32_t
next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lm_frame_reader whole, cut;
    struct lm_frame a, b;
    struct lm_frame_replay *rp;
    size_t wpos = 0, used;
    int werr = 0, cerr = 0, frames = 0;

    if (size < 1)
        return 0;
    init_key();
    uint8_t mode = data[0];
    uint32_t rnd = 0x9e3779b9u ^ mode;
    data++;
    size--;

    /* The whole stream at once, as the reference. */
    lm_frame_reader_init(&whole);
    if (lm_frame_replay_new(&rp, 4) < 0)
        abort();
    while (wpos < size && frames < MAX_FRAMES) {
        int rc = lm_frame_reader_feed(&whole, data + wpos, size - wpos, &used, &a);
        if (rc < 0) {
            if (rc != -EMSGSIZE && rc != -EPROTO)
                abort();
            werr = rc;
            break;
        }
        wpos += used;
        if (rc == 0) {
            if (wpos != size)
                abort();
            break;
        }
        check_frame_shape(&a);
        run_check(&a, rp, 0);
        run_check(&a, rp, LM_FRAME_CHECK_STORED);
        run_parsers(&a);
        run_resigned(&a, rp);
        frames++;
    }
    lm_frame_replay_free(rp);

    /* The same bytes in pieces: the same frames, the same end. */
    lm_frame_reader_release(&whole);
    lm_frame_reader_init(&whole);
    lm_frame_reader_init(&cut);
    size_t pos = 0;
    wpos = 0;
    int n = 0;
    while (pos < size && !cerr && n < MAX_FRAMES) {
        size_t piece = 1 + next_rand(&rnd) % (mode < 128 ? 8 : 4096);
        if (piece > size - pos)
            piece = size - pos;
        size_t off = 0;
        while (off < piece && n < MAX_FRAMES) {
            int rc = lm_frame_reader_feed(&cut, data + pos + off, piece - off, &used, &b);
            if (used > piece - off)
                abort();
            off += used;
            if (rc < 0) {
                cerr = rc;
                break;
            }
            if (rc == 0) {
                if (off != piece)
                    abort();
                break;
            }
            if (++n > frames ||
                lm_frame_reader_feed(&whole, data + wpos, size - wpos, &used, &a) != 1)
                abort();
            wpos += used;
            if (a.raw_len != b.raw_len || memcmp(a.raw, b.raw, a.raw_len) != 0 ||
                a.type != b.type || a.flags != b.flags || a.payload_len != b.payload_len ||
                (a.sig == NULL) != (b.sig == NULL))
                abort();
        }
        pos += off;
    }
    if (n != frames || (frames < MAX_FRAMES && cerr != werr))
        abort();
    if (cerr && lm_frame_reader_feed(&cut, data, size, &used, &b) != cerr)
        abort(); /* errors are sticky */
    lm_frame_reader_release(&cut);
    lm_frame_reader_release(&whole);
    return 0;
}
