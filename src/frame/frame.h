/* frame: labnet/1 frames (PROTOCOL.md §2, docs/labnet.md), with no socket in sight.
 * Owns: frame types, flags and caps; encoding and signing; incremental decoding with caps
 * checked from the prefix; signature, timestamp and replay checks of signed JSON frames. */
#ifndef LM_FRAME_H
#define LM_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "identity/identity.h"
#include "util/util.h"

/* Frame types. Types not listed here decode fine; the caller answers them with
 * ERROR unsupported_type and keeps the connection. */
enum {
    LM_FRAME_HELLO = 0x01,         /* signed, by `from` */
    LM_FRAME_PING = 0x02,
    LM_FRAME_PONG = 0x03,
    LM_FRAME_ERROR = 0x04,
    LM_FRAME_GOSSIP_RECORD = 0x10, /* signed, by `origin` */
    LM_FRAME_GOSSIP_DIGEST = 0x11,
    LM_FRAME_GOSSIP_WANT = 0x12,
    LM_FRAME_PROXY_REQUEST = 0x20, /* signed, by `from`; cap LM_FRAME_MAX_REQUEST */
    LM_FRAME_PROXY_HEAD = 0x21,
    LM_FRAME_PROXY_CHUNK = 0x22,   /* BINARY */
    LM_FRAME_PROXY_END = 0x23,     /* signed, by `from` */
    LM_FRAME_PROXY_ERROR = 0x24,
    LM_FRAME_PROXY_CANCEL = 0x25,
    LM_FRAME_RECEIPT = 0x30,       /* signed, by `origin` (the FEP) */
    LM_FRAME_RECEIPT_ACK = 0x31,
    LM_FRAME_CIRCUIT_OPEN = 0x40,
    LM_FRAME_CIRCUIT_OK = 0x41,
};

/* Flags. The other six bits are reserved: the encoder refuses them, the reader
 * passes them on untouched (as HTTP/2 does with unknown flags). */
#define LM_FRAME_SIGNED 0x01u /* a 64-byte Ed25519 signature follows the payload */
#define LM_FRAME_BINARY 0x02u /* the payload is raw bytes, not JSON */
#define LM_FRAME_FLAGS_KNOWN (LM_FRAME_SIGNED | LM_FRAME_BINARY)

/* Caps on the length field (type + flags + payload + signature); on the wire a
 * frame is 4 bytes more. */
#define LM_FRAME_MAX (1u << 20)         /* every type but PROXY_REQUEST */
#define LM_FRAME_MAX_REQUEST (4u << 20) /* PROXY_REQUEST */
#define LM_FRAME_LEN_BYTES 4            /* the be32 length field */
#define LM_FRAME_HEAD_BYTES 6           /* length + type + flags */
#define LM_FRAME_SIG_BYTES 64
#define LM_FRAME_SIG_CONTEXT "labnet/1" /* signed as these 8 bytes and a NUL */

#define LM_FRAME_TS_WINDOW_MS (5u * 60u * 1000u) /* |ts - now| above this is stale */
#define LM_FRAME_JSON_DEPTH 64 /* deeper nesting in a JSON payload is malformed */

/* "HELLO", "PROXY_REQUEST"...; "UNKNOWN" for a type not in the table. */
const char *lm_frame_type_name(uint8_t type);
bool lm_frame_type_known(uint8_t type);
/* The types that must carry a signature: HELLO, GOSSIP_RECORD, PROXY_REQUEST,
 * PROXY_END, RECEIPT. */
bool lm_frame_type_signed(uint8_t type);
/* The cap on the length field for this type. */
size_t lm_frame_max(uint8_t type);

/* One decoded frame. The pointers borrow either the bytes given to
 * lm_frame_reader_feed or the reader's buffer: valid until the next call on
 * the reader and, in the first case, as long as those bytes are. */
struct lm_frame {
    uint8_t type;
    uint8_t flags;
    const uint8_t *payload;
    size_t payload_len;
    const uint8_t *sig; /* LM_FRAME_SIG_BYTES when SIGNED, else NULL */
    const uint8_t *raw; /* the whole frame, length field included: forward these bytes */
    size_t raw_len;
};

/* Appends one frame to out. signer non-NULL sets SIGNED and appends its
 * signature over "labnet/1\0" || type || payload. Returns -EMSGSIZE over the
 * type's cap, -EINVAL for reserved flag bits or SIGNED in flags without a
 * signer, -E2BIG past out's limit; out is unchanged on error. */
int lm_frame_encode(struct lm_buf *out, uint8_t type, uint8_t flags, const void *payload,
                    size_t n, const struct lm_identity *signer);
/* The same with a JSON payload, serialized compactly (never BINARY). */
int lm_frame_encode_json(struct lm_buf *out, uint8_t type, const json_t *payload,
                         const struct lm_identity *signer);

/* The signature rule alone, for a payload that travels outside a frame (a
 * receipt inside FEP HTTP JSON). lm_frame_verify_sig: 0 or -EBADMSG. */
void lm_frame_sign(uint8_t type, const void *payload, size_t n, const struct lm_identity *signer,
                   uint8_t sig[LM_FRAME_SIG_BYTES]);
int lm_frame_verify_sig(uint8_t type, const void *payload, size_t n,
                        const uint8_t sig[LM_FRAME_SIG_BYTES],
                        const uint8_t pk[LM_IDENTITY_PK_BYTES]);
/* 0 when f is SIGNED and its signature is pk's; -EBADMSG otherwise. */
int lm_frame_verify(const struct lm_frame *f, const uint8_t pk[LM_IDENTITY_PK_BYTES]);

/* Incremental decoder for one stream. Embed it; init before use, release at
 * the end. It holds at most one frame, growing with the bytes that arrive
 * (never allocated ahead from a length the peer announced), so a stream costs
 * at most its type's cap + 4 bytes. */
struct lm_frame_reader {
    uint8_t head[LM_FRAME_HEAD_BYTES]; /* the prefix while it arrives */
    size_t head_len;
    size_t need;  /* whole frame, prefix included, once the prefix is in; else 0 */
    uint8_t *buf; /* the frame (prefix included) being assembled */
    size_t len;
    size_t cap;   /* allocated: never more than need */
    bool done;    /* buf holds the frame returned last: drop it on the next call */
    int err;      /* sticky: once a stream breaks its framing it stays broken */
};

void lm_frame_reader_init(struct lm_frame_reader *r);
void lm_frame_reader_release(struct lm_frame_reader *r); /* NULL-safe */
/* Takes bytes of the stream, in pieces of any size, and stops at the end of
 * the first complete frame. *used says how many bytes were taken; the rest
 * belong to the next call. Returns 1 with *out set (a frame is complete), 0
 * when all n bytes were taken without completing one, or an error:
 *   -EMSGSIZE  the length is over the type's cap, seen from the first five bytes
 *              before any body is buffered (answer ERROR frame_too_large, reset);
 *   -EPROTO    length < 2, or SIGNED without room for the 64-byte signature.
 * Errors are sticky: every later call returns the same one. */
int lm_frame_reader_feed(struct lm_frame_reader *r, const void *data, size_t n, size_t *used,
                         struct lm_frame *out);
/* True between frames (no partial frame held): where a stream may end cleanly. */
bool lm_frame_reader_idle(const struct lm_frame_reader *r);

/* Replay cache: keys seen within the timestamp window, in memory fixed at
 * creation (about 40 bytes per key). Keys are stored as keyed BLAKE2b digests
 * (a random key per cache) and bucketed by them, so peers cannot steer their
 * keys into one long chain; expired keys leave in expiry order (a min-heap).
 * Full policy: when max unexpired keys are held, new keys are refused
 * (-ENOSPC) until one expires: an old key is never dropped to make room, which
 * would let its replay through. */
#define LM_FRAME_REPLAY_DEFAULT_MAX 65536
#define LM_FRAME_REPLAY_LIMIT (1u << 24)

struct lm_frame_replay;

/* max 0 = LM_FRAME_REPLAY_DEFAULT_MAX; over LM_FRAME_REPLAY_LIMIT: -EINVAL. */
int lm_frame_replay_new(struct lm_frame_replay **out, size_t max);
void lm_frame_replay_free(struct lm_frame_replay *rp);
/* Remembers key until expires_ms (inclusive). 0: new, now remembered;
 * -EALREADY: held and not expired; -ENOSPC: full of unexpired keys. now_ms is
 * the same wall clock (Unix ms) as the frames' ts. */
int lm_frame_replay_add(struct lm_frame_replay *rp, const void *key, size_t len,
                        uint64_t expires_ms, uint64_t now_ms);
/* Keys held: unexpired as of the last add (expired ones leave at the next). */
size_t lm_frame_replay_count(const struct lm_frame_replay *rp);

/* Why lm_frame_check refused a frame. code is one of the LM_FRAME_E_* strings,
 * fit for ERROR.code; message is one line, peer bytes escaped. */
struct lm_frame_problem {
    const char *code;
    char message[256];
};

#define LM_FRAME_E_UNSUPPORTED "unsupported_type"   /* not a signed JSON type */
#define LM_FRAME_E_MALFORMED "malformed"            /* not a JSON object, wrong field type... */
#define LM_FRAME_E_MISSING "missing_field"
#define LM_FRAME_E_BAD_SIGNATURE "bad_signature"    /* unsigned, or not the signer's */
#define LM_FRAME_E_STALE "stale_timestamp"
#define LM_FRAME_E_REPLAYED "replayed"
#define LM_FRAME_E_REPLAY_FULL "replay_cache_full"  /* retryable */

/* The signed types whose freshness and duplicates a store judges (gossip by
 * seq and ttl, receipts by receipt_id): with this flag GOSSIP_RECORD and
 * RECEIPT skip the replay cache and the past side of the ts window (a record
 * re-sent by anti-entropy is older than 5 min); ts may still not be more than
 * 5 min ahead. The flag does nothing for other types. */
#define LM_FRAME_CHECK_STORED 0x1u

/* The whole check of a signed JSON frame, in this order: a signed type, SIGNED,
 * not BINARY; the payload one JSON object (nesting <= LM_FRAME_JSON_DEPTH,
 * duplicate keys refused); the signer's node id (64 lowercase hex) from
 * `origin` (GOSSIP_RECORD, RECEIPT) or `from` (HELLO, PROXY_REQUEST, PROXY_END);
 * `ts` (Unix ms) within LM_FRAME_TS_WINDOW_MS of now_ms (inclusive); the
 * signature by the signer's key; then the replay key in rp:
 *   HELLO                      (from, type, ts)
 *   PROXY_REQUEST, PROXY_END   (from, type, request_id)
 *   GOSSIP_RECORD              (origin, type, kind, seq)
 *   RECEIPT                    (origin, type, receipt_id)
 * Only the frame's type, flags, payload and sig are read, so a frame built by
 * hand from a receipt's payload and sig works too. On success returns 0 and
 * *out holds a reference to the payload object (json_decref it); the caller
 * still checks that the signer is whom it expects (HELLO: the TLS peer). On
 * failure returns a negative errno (-EPROTONOSUPPORT, -EINVAL, -EBADMSG,
 * -ERANGE, -EALREADY, -ENOSPC) and fills *why. rp may be NULL only when
 * LM_FRAME_CHECK_STORED applies to the type. */
int lm_frame_check(const struct lm_frame *f, struct lm_frame_replay *rp, uint64_t now_ms,
                   unsigned flags, json_t **out, struct lm_frame_problem *why);

/* Parses a JSON frame payload the way lm_frame_check does (one object, bounded
 * nesting, no duplicate keys): for the unsigned frames. 0 or -EINVAL. */
int lm_frame_parse_json(const struct lm_frame *f, json_t **out);

/* ERROR and PROXY_ERROR: {code, message, retryable, retry_after_ms?}. */
#define LM_FRAME_CODE_MAX 64
#define LM_FRAME_MESSAGE_MAX 1024

struct lm_frame_error {
    char code[LM_FRAME_CODE_MAX];       /* non-empty */
    char message[LM_FRAME_MESSAGE_MAX]; /* peer text, cut at a UTF-8 boundary: escape to log */
    bool retryable;
    int64_t retry_after_ms; /* -1 when absent */
};

/* type is LM_FRAME_ERROR or LM_FRAME_PROXY_ERROR; retry_after_ms < 0 leaves it
 * out; a message that is not UTF-8 is sent escaped. -EINVAL for an empty code
 * or another type. */
int lm_frame_encode_error(struct lm_buf *out, uint8_t type, const char *code,
                          const char *message, bool retryable, int64_t retry_after_ms);
/* code is required (a string of 1..63 bytes); a missing message is "", a
 * missing retryable false. -EINVAL when malformed or of another type. */
int lm_frame_parse_error(const struct lm_frame *f, struct lm_frame_error *out);

/* PING / PONG: {nonce}, an integer in 0..2^53-1 (exact in every JSON reader).
 * -EINVAL for another type or a nonce out of range. */
#define LM_FRAME_NONCE_MAX ((UINT64_C(1) << 53) - 1)
int lm_frame_encode_ping(struct lm_buf *out, uint8_t type, uint64_t nonce);
int lm_frame_parse_ping(const struct lm_frame *f, uint64_t *nonce);

/* PROXY_HEAD: {status, content_type}; status 100..599. The content type
 * becomes an HTTP header at the gateway: control bytes (CR, LF...) are refused
 * both ways (-EINVAL). */
int lm_frame_encode_proxy_head(struct lm_buf *out, int status, const char *content_type);
/* content_type is copied into ct (cut to ctcap - 1 bytes); "" when absent. */
int lm_frame_parse_proxy_head(const struct lm_frame *f, int *status, char *ct, size_t ctcap);

/* PROXY_CANCEL: {request_id}, 32 lowercase hex; anything else is -EINVAL. */
#define LM_FRAME_REQUEST_ID_LEN 32
int lm_frame_encode_proxy_cancel(struct lm_buf *out, const char *request_id);
int lm_frame_parse_proxy_cancel(const struct lm_frame *f,
                                char request_id[LM_FRAME_REQUEST_ID_LEN + 1]);

#endif
