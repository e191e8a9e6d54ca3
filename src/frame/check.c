/* JSON payloads: the full check of signed frames, and the unsigned frames'
 * builders and parsers, so that the mesh code never hand-rolls them. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame/frame.h"
#include "frame/frame_internal.h"

/* Bounds on the strings that go into a replay key. */
#define KIND_MAX 64
#define RECEIPT_ID_MAX 128
#define REPLAY_KEY_MAX (1 + LM_IDENTITY_PK_BYTES + 1 + RECEIPT_ID_MAX + 8)

/* jansson parses recursively and only stops at depth 2048; this cheap pass
 * refuses deep nesting before it. Exact on valid JSON; on invalid JSON it may
 * count wrongly, and jansson refuses that anyway. */
static bool
too_deep(const uint8_t *p, size_t n, unsigned max)
{
    unsigned depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max)
                return true;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return false;
}

/* One JSON object, nesting bounded, duplicate keys refused: two readers that
 * keep different duplicates would read different things into one signature. */
static int
load_object(const uint8_t *p, size_t n, json_t **out, char *err, size_t errcap)
{
    json_error_t jerr;
    if (too_deep(p, n, LM_FRAME_JSON_DEPTH)) {
        snprintf(err, errcap, "JSON nested deeper than %d levels", LM_FRAME_JSON_DEPTH);
        return -EINVAL;
    }
    json_t *o = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        /* jansson quotes the input near the error: escape it. */
        char text[sizeof(jerr.text) * 4];
        lm_escape(text, sizeof(text), jerr.text, strnlen(jerr.text, sizeof(jerr.text)));
        snprintf(err, errcap, "invalid JSON at byte %d: %.200s", jerr.position, text);
        return -EINVAL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        snprintf(err, errcap, "payload is not a JSON object");
        return -EINVAL;
    }
    *out = o;
    return 0;
}

int
lm_frame_parse_json(const struct lm_frame *f, json_t **out)
{
    char err[8];
    if (f->flags & LM_FRAME_BINARY)
        return -EINVAL;
    return load_object(f->payload, f->payload_len, out, err, sizeof(err));
}

static int
fail(struct lm_frame_problem *why, int rc, const char *code, const char *fmt, ...)
    LM_PRINTF(4, 5);

static int
fail(struct lm_frame_problem *why, int rc, const char *code, const char *fmt, ...)
{
    va_list ap;
    why->code = code;
    va_start(ap, fmt);
    vsnprintf(why->message, sizeof(why->message), fmt, ap);
    va_end(ap);
    return rc;
}

static bool
is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* A string field of the payload, 1..max bytes. */
static int
get_string(json_t *o, const char *name, size_t max, const char **s, size_t *len,
           struct lm_frame_problem *why)
{
    json_t *v = json_object_get(o, name);
    if (!v)
        return fail(why, -EINVAL, LM_FRAME_E_MISSING, "no \"%s\"", name);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max)
        return fail(why, -EINVAL, LM_FRAME_E_MALFORMED, "\"%s\" is not a string of 1..%zu bytes",
                    name, max);
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 0;
}

/* A non-negative integer field. */
static int
get_uint(json_t *o, const char *name, uint64_t *out, struct lm_frame_problem *why)
{
    json_t *v = json_object_get(o, name);
    if (!v)
        return fail(why, -EINVAL, LM_FRAME_E_MISSING, "no \"%s\"", name);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(why, -EINVAL, LM_FRAME_E_MALFORMED, "\"%s\" is not a non-negative integer",
                    name);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int
get_request_id(json_t *o, const char **s, struct lm_frame_problem *why)
{
    size_t len;
    int rc = get_string(o, "request_id", LM_FRAME_REQUEST_ID_LEN, s, &len, why);
    if (rc < 0)
        return rc;
    if (len != LM_FRAME_REQUEST_ID_LEN || !is_lower_hex(*s, len))
        return fail(why, -EINVAL, LM_FRAME_E_MALFORMED,
                    "\"request_id\" is not %d lowercase hex digits", LM_FRAME_REQUEST_ID_LEN);
    return 0;
}

static void
put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* The replay key: type || signer key || what makes this frame unique for its
 * type, each variable part preceded by its length so that no two field
 * values can spell the same key. */
static int
replay_key(json_t *o, uint8_t type, const uint8_t *pk, uint64_t ts, uint8_t *key, size_t *len,
           struct lm_frame_problem *why)
{
    const char *s;
    size_t n = 0, slen;
    int rc;

    key[n++] = type;
    memcpy(key + n, pk, LM_IDENTITY_PK_BYTES);
    n += LM_IDENTITY_PK_BYTES;
    switch (type) {
    case LM_FRAME_HELLO:
        put_be64(key + n, ts);
        n += 8;
        break;
    case LM_FRAME_PROXY_REQUEST:
    case LM_FRAME_PROXY_END:
        if ((rc = get_request_id(o, &s, why)) < 0)
            return rc;
        memcpy(key + n, s, LM_FRAME_REQUEST_ID_LEN);
        n += LM_FRAME_REQUEST_ID_LEN;
        break;
    case LM_FRAME_GOSSIP_RECORD: {
        uint64_t seq;
        if ((rc = get_string(o, "kind", KIND_MAX, &s, &slen, why)) < 0 ||
            (rc = get_uint(o, "seq", &seq, why)) < 0)
            return rc;
        key[n++] = (uint8_t)slen;
        memcpy(key + n, s, slen);
        n += slen;
        put_be64(key + n, seq);
        n += 8;
        break;
    }
    default: /* LM_FRAME_RECEIPT */
        if ((rc = get_string(o, "receipt_id", RECEIPT_ID_MAX, &s, &slen, why)) < 0)
            return rc;
        key[n++] = (uint8_t)slen;
        memcpy(key + n, s, slen);
        n += slen;
        break;
    }
    *len = n;
    return 0;
}

/* The replay cache, after the signature: only keys of frames their signer
 * really sent take room in it. */
static int
check_replay(json_t *o, uint8_t type, const uint8_t *pk, const char *id, uint64_t ts,
             struct lm_frame_replay *rp, uint64_t now_ms, struct lm_frame_problem *why)
{
    uint8_t key[REPLAY_KEY_MAX];
    size_t keylen;
    int rc = replay_key(o, type, pk, ts, key, &keylen, why);
    if (rc < 0)
        return rc;
    /* Kept while a frame with this ts can pass the window above, no longer. */
    rc = lm_frame_replay_add(rp, key, keylen, ts + LM_FRAME_TS_WINDOW_MS, now_ms);
    if (rc == -EALREADY)
        return fail(why, rc, LM_FRAME_E_REPLAYED, "%s from %.12s was seen already",
                    lm_frame_type_name(type), id);
    if (rc < 0)
        return fail(why, -ENOSPC, LM_FRAME_E_REPLAY_FULL,
                    "replay cache full (%zu keys within the window); retry later",
                    lm_frame_replay_count(rp));
    return 0;
}

int
lm_frame_check(const struct lm_frame *f, struct lm_frame_replay *rp, uint64_t now_ms,
               unsigned flags, json_t **out, struct lm_frame_problem *why)
{
    json_t *o = NULL;
    const char *id;
    size_t idlen;
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    uint64_t ts;
    int rc;

    why->code = NULL;
    why->message[0] = '\0';
    if (!lm_frame_type_signed(f->type))
        return fail(why, -EPROTONOSUPPORT, LM_FRAME_E_UNSUPPORTED,
                    "frame type 0x%02x (%s) is not a signed JSON frame", f->type,
                    lm_frame_type_name(f->type));
    bool stored = (flags & LM_FRAME_CHECK_STORED) &&
                  (f->type == LM_FRAME_GOSSIP_RECORD || f->type == LM_FRAME_RECEIPT);
    if (!rp && !stored)
        return fail(why, -EINVAL, LM_FRAME_E_MALFORMED, "no replay cache to check %s against",
                    lm_frame_type_name(f->type));
    if (!(f->flags & LM_FRAME_SIGNED) || !f->sig)
        return fail(why, -EBADMSG, LM_FRAME_E_BAD_SIGNATURE, "%s must be signed",
                    lm_frame_type_name(f->type));
    if (f->flags & LM_FRAME_BINARY)
        return fail(why, -EINVAL, LM_FRAME_E_MALFORMED, "%s must be JSON, not BINARY",
                    lm_frame_type_name(f->type));

    if ((rc = load_object(f->payload, f->payload_len, &o, why->message, sizeof(why->message))) <
        0) {
        why->code = LM_FRAME_E_MALFORMED;
        return rc;
    }

    /* Whoever the payload names as signer must have signed it: a frame signed
     * by A that names B fails here, as it should. */
    const char *field =
        f->type == LM_FRAME_GOSSIP_RECORD || f->type == LM_FRAME_RECEIPT ? "origin" : "from";
    if ((rc = get_string(o, field, LM_NODE_ID_LEN, &id, &idlen, why)) < 0)
        goto fail;
    if (idlen != LM_NODE_ID_LEN || !is_lower_hex(id, idlen)) {
        rc = fail(why, -EINVAL, LM_FRAME_E_MALFORMED,
                  "\"%s\" is not a node id (64 lowercase hex digits)", field);
        goto fail;
    }
    lm_identity_parse_node_id(id, pk);

    /* The window before the signature: stale frames cost no Ed25519 verify. */
    if ((rc = get_uint(o, "ts", &ts, why)) < 0)
        goto fail;
    if (ts > now_ms && ts - now_ms > LM_FRAME_TS_WINDOW_MS) {
        rc = fail(why, -ERANGE, LM_FRAME_E_STALE, "ts is %llu ms ahead of local time",
                  (unsigned long long)(ts - now_ms));
        goto fail;
    }
    /* Behind the cache's clock, not now_ms, so that the window and the cache's
     * pruning agree: see lm_frame_replay_clock. */
    uint64_t clock = stored ? now_ms : lm_frame_replay_clock(rp, now_ms);
    if (!stored && clock > ts && clock - ts > LM_FRAME_TS_WINDOW_MS) {
        rc = fail(why, -ERANGE, LM_FRAME_E_STALE, "ts is %llu ms behind local time",
                  (unsigned long long)(clock - ts));
        goto fail;
    }

    if (lm_frame_verify_sig(f->type, f->payload, f->payload_len, f->sig, pk) < 0) {
        rc = fail(why, -EBADMSG, LM_FRAME_E_BAD_SIGNATURE, "%s is not signed by its %s %.12s",
                  lm_frame_type_name(f->type), field, id);
        goto fail;
    }
    if (!stored && (rc = check_replay(o, f->type, pk, id, ts, rp, now_ms, why)) < 0)
        goto fail;
    *out = o;
    return 0;
fail:
    json_decref(o);
    return rc;
}

/* Serializes o as one frame and drops the reference. */
static int
encode_owned(struct lm_buf *out, uint8_t type, json_t *o)
{
    int rc = lm_frame_encode_json(out, type, o, NULL);
    json_decref(o);
    return rc;
}

int
lm_frame_encode_error(struct lm_buf *out, uint8_t type, const char *code, const char *message,
                      bool retryable, int64_t retry_after_ms)
{
    if ((type != LM_FRAME_ERROR && type != LM_FRAME_PROXY_ERROR) || !code || !code[0] ||
        strlen(code) >= LM_FRAME_CODE_MAX)
        return -EINVAL;
    if (!message)
        message = "";
    json_t *m = json_string(message);
    if (!m) {
        /* Not UTF-8 (an upstream's bytes, say): send it escaped to ASCII. */
        size_t n = strlen(message);
        if (n > LM_FRAME_MESSAGE_MAX)
            n = LM_FRAME_MESSAGE_MAX;
        char *esc = lm_xmalloc(4 * n + 8);
        lm_escape(esc, 4 * n + 8, message, n);
        m = json_string(esc);
        free(esc);
    }
    json_t *c = json_string(code);
    if (!c) {
        json_decref(m);
        return -EINVAL; /* code not UTF-8 */
    }
    json_t *o = json_object();
    json_object_set_new(o, "code", c);
    json_object_set_new(o, "message", m);
    json_object_set_new(o, "retryable", json_boolean(retryable));
    if (retry_after_ms >= 0)
        json_object_set_new(o, "retry_after_ms", json_integer(retry_after_ms));
    return encode_owned(out, type, o);
}

/* Copies at most cap - 1 bytes, never cutting a UTF-8 sequence in two. */
static void
copy_utf8(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((uint8_t)src[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static bool
json_frame(const struct lm_frame *f, uint8_t t1, uint8_t t2, json_t **o)
{
    if (f->type != t1 && f->type != t2)
        return false;
    return lm_frame_parse_json(f, o) == 0;
}

int
lm_frame_parse_error(const struct lm_frame *f, struct lm_frame_error *out)
{
    json_t *o;
    int rc = -EINVAL;

    if (!json_frame(f, LM_FRAME_ERROR, LM_FRAME_PROXY_ERROR, &o))
        return -EINVAL;
    json_t *code = json_object_get(o, "code");
    json_t *msg = json_object_get(o, "message");
    json_t *retry = json_object_get(o, "retryable");
    json_t *after = json_object_get(o, "retry_after_ms");
    if (!json_is_string(code) || json_string_length(code) == 0 ||
        json_string_length(code) >= LM_FRAME_CODE_MAX)
        goto out;
    if (msg && !json_is_string(msg))
        goto out;
    if (retry && !json_is_boolean(retry))
        goto out;
    if (after && !json_is_null(after) && (!json_is_integer(after) || json_integer_value(after) < 0))
        goto out;
    memcpy(out->code, json_string_value(code), json_string_length(code) + 1);
    if (msg)
        copy_utf8(out->message, sizeof(out->message), json_string_value(msg),
                  json_string_length(msg));
    else
        out->message[0] = '\0';
    out->retryable = retry && json_is_true(retry);
    out->retry_after_ms = json_is_integer(after) ? json_integer_value(after) : -1;
    rc = 0;
out:
    json_decref(o);
    return rc;
}

int
lm_frame_encode_ping(struct lm_buf *out, uint8_t type, uint64_t nonce)
{
    if ((type != LM_FRAME_PING && type != LM_FRAME_PONG) || nonce > LM_FRAME_NONCE_MAX)
        return -EINVAL;
    return encode_owned(out, type, json_pack("{s:I}", "nonce", (json_int_t)nonce));
}

int
lm_frame_parse_ping(const struct lm_frame *f, uint64_t *nonce)
{
    json_t *o;
    if (!json_frame(f, LM_FRAME_PING, LM_FRAME_PONG, &o))
        return -EINVAL;
    json_t *v = json_object_get(o, "nonce");
    int rc = -EINVAL;
    if (json_is_integer(v) && json_integer_value(v) >= 0 &&
        (uint64_t)json_integer_value(v) <= LM_FRAME_NONCE_MAX) {
        *nonce = (uint64_t)json_integer_value(v);
        rc = 0;
    }
    json_decref(o);
    return rc;
}

/* A content type goes into an HTTP header at the gateway: no control bytes. */
static bool
header_safe(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

int
lm_frame_encode_proxy_head(struct lm_buf *out, int status, const char *content_type)
{
    if (status < 100 || status > 599 || !content_type ||
        !header_safe(content_type, strlen(content_type)))
        return -EINVAL;
    json_t *o = json_pack("{s:i, s:s}", "status", status, "content_type", content_type);
    if (!o)
        return -EINVAL;
    return encode_owned(out, LM_FRAME_PROXY_HEAD, o);
}

int
lm_frame_parse_proxy_head(const struct lm_frame *f, int *status, char *ct, size_t ctcap)
{
    json_t *o;
    if (ctcap == 0 || !json_frame(f, LM_FRAME_PROXY_HEAD, LM_FRAME_PROXY_HEAD, &o))
        return -EINVAL;
    json_t *s = json_object_get(o, "status");
    json_t *c = json_object_get(o, "content_type");
    int rc = -EINVAL;
    if (!json_is_integer(s) || json_integer_value(s) < 100 || json_integer_value(s) > 599)
        goto out;
    if (c && (!json_is_string(c) || !header_safe(json_string_value(c), json_string_length(c))))
        goto out;
    *status = (int)json_integer_value(s);
    if (c)
        copy_utf8(ct, ctcap, json_string_value(c), json_string_length(c));
    else
        ct[0] = '\0';
    rc = 0;
out:
    json_decref(o);
    return rc;
}

int
lm_frame_encode_proxy_cancel(struct lm_buf *out, const char *request_id)
{
    if (!request_id || strlen(request_id) != LM_FRAME_REQUEST_ID_LEN ||
        !is_lower_hex(request_id, LM_FRAME_REQUEST_ID_LEN))
        return -EINVAL;
    return encode_owned(out, LM_FRAME_PROXY_CANCEL, json_pack("{s:s}", "request_id", request_id));
}

int
lm_frame_parse_proxy_cancel(const struct lm_frame *f, char request_id[LM_FRAME_REQUEST_ID_LEN + 1])
{
    json_t *o;
    struct lm_frame_problem why;
    const char *s;
    if (!json_frame(f, LM_FRAME_PROXY_CANCEL, LM_FRAME_PROXY_CANCEL, &o))
        return -EINVAL;
    int rc = get_request_id(o, &s, &why);
    if (rc == 0)
        memcpy(request_id, s, LM_FRAME_REQUEST_ID_LEN + 1);
    json_decref(o);
    return rc < 0 ? -EINVAL : 0;
}
