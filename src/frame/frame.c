/* labnet/1 framing: the type table, encoding, signatures and the incremental reader. */
#include "frame/frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Above this a finished frame's buffer is given back rather than kept for the
 * next one: an idle stream should not sit on a 4 MiB request's memory. */
#define READER_KEEP_BYTES (64u << 10)

/* Small signed messages (HELLO, gossip, PROXY_END) are assembled on the stack. */
#define SIG_STACK_BYTES 2048
#define SIG_CONTEXT_BYTES (sizeof(LM_FRAME_SIG_CONTEXT)) /* "labnet/1" and its NUL */

static const char *const type_names[256] = {
    [LM_FRAME_HELLO] = "HELLO",
    [LM_FRAME_PING] = "PING",
    [LM_FRAME_PONG] = "PONG",
    [LM_FRAME_ERROR] = "ERROR",
    [LM_FRAME_GOSSIP_RECORD] = "GOSSIP_RECORD",
    [LM_FRAME_GOSSIP_DIGEST] = "GOSSIP_DIGEST",
    [LM_FRAME_GOSSIP_WANT] = "GOSSIP_WANT",
    [LM_FRAME_PROXY_REQUEST] = "PROXY_REQUEST",
    [LM_FRAME_PROXY_HEAD] = "PROXY_HEAD",
    [LM_FRAME_PROXY_CHUNK] = "PROXY_CHUNK",
    [LM_FRAME_PROXY_END] = "PROXY_END",
    [LM_FRAME_PROXY_ERROR] = "PROXY_ERROR",
    [LM_FRAME_PROXY_CANCEL] = "PROXY_CANCEL",
    [LM_FRAME_RECEIPT] = "RECEIPT",
    [LM_FRAME_RECEIPT_ACK] = "RECEIPT_ACK",
    [LM_FRAME_CIRCUIT_OPEN] = "CIRCUIT_OPEN",
    [LM_FRAME_CIRCUIT_OK] = "CIRCUIT_OK",
};

const char *
lm_frame_type_name(uint8_t type)
{
    return type_names[type] ? type_names[type] : "UNKNOWN";
}

bool
lm_frame_type_known(uint8_t type)
{
    return type_names[type] != NULL;
}

bool
lm_frame_type_signed(uint8_t type)
{
    switch (type) {
    case LM_FRAME_HELLO:
    case LM_FRAME_GOSSIP_RECORD:
    case LM_FRAME_PROXY_REQUEST:
    case LM_FRAME_PROXY_END:
    case LM_FRAME_RECEIPT:
        return true;
    default:
        return false;
    }
}

size_t
lm_frame_max(uint8_t type)
{
    return type == LM_FRAME_PROXY_REQUEST ? LM_FRAME_MAX_REQUEST : LM_FRAME_MAX;
}

/* Ed25519 signs one contiguous message, and in a frame the flags byte sits
 * between type and payload, so the message "labnet/1\0" || type || payload is
 * always assembled apart. Returns msg or a heap copy the caller frees. */
static uint8_t *
sig_message(uint8_t type, const void *payload, size_t n, uint8_t *msg, size_t *len)
{
    if (n > SIZE_MAX - SIG_CONTEXT_BYTES - 1)
        abort(); /* cannot be allocated anyway: treated as allocation failure */
    *len = SIG_CONTEXT_BYTES + 1 + n;
    if (*len > SIG_STACK_BYTES)
        msg = lm_xmalloc(*len);
    memcpy(msg, LM_FRAME_SIG_CONTEXT, SIG_CONTEXT_BYTES);
    msg[SIG_CONTEXT_BYTES] = type;
    if (n)
        memcpy(msg + SIG_CONTEXT_BYTES + 1, payload, n);
    return msg;
}

void
lm_frame_sign(uint8_t type, const void *payload, size_t n, const struct lm_identity *signer,
              uint8_t sig[LM_FRAME_SIG_BYTES])
{
    uint8_t stack[SIG_STACK_BYTES];
    size_t len;
    uint8_t *msg = sig_message(type, payload, n, stack, &len);
    lm_identity_sign(signer, msg, len, sig);
    if (msg != stack)
        free(msg);
}

int
lm_frame_verify_sig(uint8_t type, const void *payload, size_t n,
                    const uint8_t sig[LM_FRAME_SIG_BYTES], const uint8_t pk[LM_IDENTITY_PK_BYTES])
{
    uint8_t stack[SIG_STACK_BYTES];
    size_t len;
    uint8_t *msg = sig_message(type, payload, n, stack, &len);
    int rc = lm_identity_verify(pk, msg, len, sig);
    if (msg != stack)
        free(msg);
    return rc < 0 ? -EBADMSG : 0;
}

int
lm_frame_verify(const struct lm_frame *f, const uint8_t pk[LM_IDENTITY_PK_BYTES])
{
    if (!(f->flags & LM_FRAME_SIGNED) || !f->sig)
        return -EBADMSG;
    return lm_frame_verify_sig(f->type, f->payload, f->payload_len, f->sig, pk);
}

static void
put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t
get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int
lm_frame_encode(struct lm_buf *out, uint8_t type, uint8_t flags, const void *payload, size_t n,
                const struct lm_identity *signer)
{
    if ((flags & ~LM_FRAME_FLAGS_KNOWN) || ((flags & LM_FRAME_SIGNED) && !signer))
        return -EINVAL;
    if (signer)
        flags |= LM_FRAME_SIGNED;
    size_t siglen = signer ? LM_FRAME_SIG_BYTES : 0;
    /* Every cap is far above 2 + 64, so the subtraction cannot wrap. */
    if (n > lm_frame_max(type) - 2 - siglen)
        return -EMSGSIZE;
    size_t len = 2 + n + siglen;
    /* Checked whole up front so that out is never left holding half a frame. */
    if (LM_FRAME_LEN_BYTES + len > out->limit - out->len)
        return -E2BIG;

    uint8_t head[LM_FRAME_HEAD_BYTES];
    put_be32(head, (uint32_t)len);
    head[4] = type;
    head[5] = flags;
    lm_buf_append(out, head, sizeof(head));
    if (n)
        lm_buf_append(out, payload, n);
    if (signer) {
        uint8_t sig[LM_FRAME_SIG_BYTES];
        lm_frame_sign(type, payload, n, signer, sig);
        lm_buf_append(out, sig, sizeof(sig));
    }
    return 0;
}

int
lm_frame_encode_json(struct lm_buf *out, uint8_t type, const json_t *payload,
                     const struct lm_identity *signer)
{
    if (!json_is_object(payload))
        return -EINVAL;
    char *s = json_dumps(payload, JSON_COMPACT);
    if (!s)
        return -EINVAL; /* a string that is not UTF-8 somewhere inside */
    int rc = lm_frame_encode(out, type, 0, s, strlen(s), signer);
    free(s);
    return rc;
}

/* Checks the prefix as far as it has arrived (len 1..6 bytes), so that each
 * error is seen from the first byte that shows it: an impossible length from
 * four bytes, a length over the type's cap from five, a signed frame too short
 * for its signature from six. On six bytes sets *need, the whole frame's size. */
static int
check_head(const uint8_t *h, size_t len, size_t *need)
{
    if (len < LM_FRAME_LEN_BYTES)
        return 0;
    uint32_t n = get_be32(h);
    if (n < 2)
        return -EPROTO;
    if (n > LM_FRAME_MAX_REQUEST)
        return -EMSGSIZE;
    if (len < 5)
        return 0;
    if (n > lm_frame_max(h[4]))
        return -EMSGSIZE;
    if (len < LM_FRAME_HEAD_BYTES)
        return 0;
    if ((h[5] & LM_FRAME_SIGNED) && n < 2 + LM_FRAME_SIG_BYTES)
        return -EPROTO;
    *need = LM_FRAME_LEN_BYTES + (size_t)n;
    return 0;
}

static void
fill_frame(struct lm_frame *f, const uint8_t *raw, size_t len)
{
    f->raw = raw;
    f->raw_len = len;
    f->type = raw[4];
    f->flags = raw[5];
    f->payload = raw + LM_FRAME_HEAD_BYTES;
    f->payload_len = len - LM_FRAME_HEAD_BYTES;
    f->sig = NULL;
    if (f->flags & LM_FRAME_SIGNED) {
        f->payload_len -= LM_FRAME_SIG_BYTES;
        f->sig = raw + len - LM_FRAME_SIG_BYTES;
    }
}

void
lm_frame_reader_init(struct lm_frame_reader *r)
{
    memset(r, 0, sizeof(*r));
}

void
lm_frame_reader_release(struct lm_frame_reader *r)
{
    if (!r)
        return;
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = r->head_len = r->need = 0;
    r->done = false;
}

static void
reader_next(struct lm_frame_reader *r)
{
    r->done = false;
    r->head_len = 0;
    r->need = 0;
    r->len = 0;
    if (r->cap > READER_KEEP_BYTES) {
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
}

/* Appends to the frame being assembled. The buffer doubles as bytes arrive
 * but never past the frame's size, so a 4 MiB request costs 4 MiB, and a
 * peer that announces a large frame and sends little costs little. */
static void
reader_append(struct lm_frame_reader *r, const uint8_t *p, size_t n)
{
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < r->len + n)
            cap *= 2;
        if (cap > r->need)
            cap = r->need;
        r->buf = lm_xrealloc(r->buf, cap);
        r->cap = cap;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
}

int
lm_frame_reader_feed(struct lm_frame_reader *r, const void *data, size_t n, size_t *used,
                     struct lm_frame *out)
{
    const uint8_t *p = data;
    size_t off = 0, need = 0;
    int rc;

    *used = 0;
    if (r->err)
        return r->err;
    if (r->done)
        reader_next(r);

    /* Nothing held and a whole frame at the start of data: lend it as it is,
     * which spares copying the bulk of a stream (its PROXY_CHUNKs). */
    if (r->head_len == 0 && n >= LM_FRAME_HEAD_BYTES) {
        rc = check_head(p, LM_FRAME_HEAD_BYTES, &need);
        if (rc < 0)
            return r->err = rc;
        if (n >= need) {
            fill_frame(out, p, need);
            *used = need;
            return 1;
        }
    }

    while (r->head_len < LM_FRAME_HEAD_BYTES && off < n) {
        r->head[r->head_len++] = p[off++];
        rc = check_head(r->head, r->head_len, &need);
        if (rc < 0) {
            *used = off;
            return r->err = rc;
        }
    }
    if (r->head_len < LM_FRAME_HEAD_BYTES) {
        *used = off;
        return 0;
    }
    if (r->need == 0) {
        r->need = need;
        reader_append(r, r->head, LM_FRAME_HEAD_BYTES);
    }
    size_t take = r->need - r->len;
    if (take > n - off)
        take = n - off;
    if (take)
        reader_append(r, p + off, take);
    off += take;
    *used = off;
    if (r->len < r->need)
        return 0;
    fill_frame(out, r->buf, r->need);
    r->done = true;
    return 1;
}

bool
lm_frame_reader_idle(const struct lm_frame_reader *r)
{
    return !r->err && (r->done || r->head_len == 0);
}
