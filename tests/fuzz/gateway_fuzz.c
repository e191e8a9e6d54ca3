/* gateway_fuzz: a runtime's answer bytes through the gateway's SSE splitter
 * (sse.c) and its byte-level JSON scans (scan.c), which never parse.
 *
 * Input: 1 byte choosing how the stream is cut into reads (0: one read),
 * then the bytes. Checks:
 *  - splitting in one read or many gives the same events (those that fit
 *    GW_SSE_EVENT_MAX; bigger ones may pass in pieces), every byte comes out
 *    once and in order, and each whole event is exactly one event;
 *  - on valid JSON, the scans agree with jansson: usage numbers (a JSON
 *    integer >= 0, else 0), the "model" / "stream_options" members, the
 *    empty "choices" test, and stripping "usage":null leaves valid JSON;
 *  - gw_scan_body accepts exactly what json_loadb accepts as an object (or
 *    leaves the call to it) and reads the same request fields;
 *  - gw_json_str writes a JSON string jansson reads back to the same bytes.
 * The JSON checks run on the whole input and on each event's data. Inputs
 * with "\u" escapes (a key spelled differently) or with the key written more
 * than once are not compared: the scans look for keys as written, and for
 * the last "usage" in the text (relaying a long answer looks at its tail). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gateway/gw.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct events {
    struct lm_buf all;   /* every byte handed out, in order */
    struct lm_buf whole; /* whole events that fit, each as "<len>\0<bytes>" */
    size_t n_whole;
};

static char *
dup_exact(const char *s, size_t n)
{
    char *d = lm_xmalloc(n ? n : 1);
    if (n)
        memcpy(d, s, n);
    return d;
}

static size_t
count(const char *s, size_t len, const char *needle)
{
    size_t k = strlen(needle), n = 0;
    for (const char *p = s; (p = memmem(p, len - (size_t)(p - s), needle, k)); p++)
        n++;
    return n;
}

static uint64_t
expected_uint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* The span [val, val + val_len) of member key is the value jansson has. */
static void
check_span(const char *s, size_t len, const struct gw_span *sp, json_t *j, const char *key)
{
    json_t *want = json_object_get(j, key);
    if (sp->found != (want != NULL))
        abort();
    if (!sp->found)
        return;
    size_t k = strlen(key);
    if (sp->member + k + 2 > len || s[sp->member] != '"' || memcmp(s + sp->member + 1, key, k) ||
        s[sp->member + k + 1] != '"' || sp->val + sp->val_len > len || sp->val <= sp->member)
        abort();
    json_t *got = json_loadb(s + sp->val, sp->val_len, JSON_DECODE_ANY, NULL);
    if (!got || !json_equal(got, want))
        abort();
    json_decref(got);
}

static enum gw_jtype
jtype(json_t *v)
{
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT:
        return GW_J_OBJECT;
    case JSON_ARRAY:
        return GW_J_ARRAY;
    case JSON_STRING:
        return GW_J_STRING;
    case JSON_INTEGER:
    case JSON_REAL:
        return GW_J_NUMBER;
    case JSON_TRUE:
        return GW_J_TRUE;
    case JSON_FALSE:
        return GW_J_FALSE;
    default:
        return v ? GW_J_NULL : GW_J_ABSENT;
    }
}

/* gw_scan_body against json_loadb(s, len, 0): 0 only on an object jansson
 * accepts, with the same "model", "stream", "stream_options" and
 * "include_usage"; -EINVAL only where jansson refuses it or it is not an
 * object; -EAGAIN (left to jansson) anywhere. */
static void
check_body(const char *s, size_t len, json_t *j)
{
    struct gw_body b;
    int rc = gw_scan_body(s, len, &b);
    if (rc == -EAGAIN)
        return;
    if (rc == -EINVAL) {
        if (j && json_is_object(j))
            abort();
        return;
    }
    if (rc != 0 || !j || !json_is_object(j))
        abort();
    json_t *model = json_object_get(j, "model"), *so = json_object_get(j, "stream_options");
    if (b.model != jtype(model) || b.stream != jtype(json_object_get(j, "stream")) ||
        b.stream_options != jtype(so))
        abort();
    if (json_is_object(so) && b.include_usage != jtype(json_object_get(so, "include_usage")))
        abort();
    if (s[b.members.open] != '{')
        abort();
    check_span(s, len, &b.members.model, j, "model");
    check_span(s, len, &b.members.stream_options, j, "stream_options");
    if (json_is_string(model)) {
        const struct gw_span *m = &b.members.model;
        if (m->val_len - 2 != json_string_length(model) ||
            memcmp(s + m->val + 1, json_string_value(model), m->val_len - 2))
            abort();
    }
}

/* A JSON text (or anything): memory safety always, agreement with jansson
 * when it is a valid object. */
static void
check_json(const char *in, size_t len)
{
    char *s = dup_exact(in, len);
    uint64_t p = 0, c = 0;
    bool found = gw_find_usage(s, len, &p, &c);
    bool usage_only = gw_is_usage_only(s, len);
    struct gw_members m;
    int mrc = gw_scan_members(s, len, &m);

    json_t *j = json_loadb(s, len, 0, NULL);
    check_body(s, len, j);
    if (j && json_is_object(j) && !memmem(s, len, "\\u", 2)) {
        size_t nu = count(s, len, "\"usage\"");
        json_t *u = json_object_get(j, "usage");
        if (nu == 0 && found)
            abort();
        if (nu == 1 && u) {
            if (found != json_is_object(u))
                abort();
            if (found && (p != expected_uint(u, "prompt_tokens") ||
                          c != expected_uint(u, "completion_tokens")))
                abort();
        }
        size_t nc = count(s, len, "\"choices\"");
        json_t *ch = json_object_get(j, "choices");
        if (nc == 0 && usage_only)
            abort();
        if (nc == 1 && ch && usage_only != (json_is_array(ch) && json_array_size(ch) == 0))
            abort();
        if (mrc != 0 || s[m.open] != '{')
            abort();
        check_span(s, len, &m.model, j, "model");
        check_span(s, len, &m.stream_options, j, "stream_options");
    }
    size_t n = gw_strip_usage_null(s, len);
    if (n > len || (n != len && n != len - 13))
        abort();
    if (j) {
        /* What is cut is a whole `"usage":null` member and its comma. */
        json_t *k = json_loadb(s, n, 0, NULL);
        if (!k)
            abort();
        json_decref(k);
    }
    json_decref(j);
    free(s);
}

static void
check_json_str(const char *s, size_t len)
{
    json_t *want = json_stringn(s, len); /* NULL unless valid UTF-8 */
    struct lm_buf b;
    lm_buf_init(&b, 0);
    gw_json_str(&b, s, len);
    json_t *got = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (want && (!got || !json_equal(got, want)))
        abort();
    if (got && (!json_is_string(got) || json_string_length(got) != len ||
                memcmp(json_string_value(got), s, len)))
        abort();
    json_decref(got);
    json_decref(want);
    lm_buf_release(&b);
}

/* Exactly one event: a fresh splitter hands it back whole, nothing held. */
static size_t one_n;
static void
one_fn(void *arg, const char *ev, size_t len, bool whole)
{
    (void)ev;
    (void)arg;
    (void)len;
    if (!whole)
        abort();
    one_n++;
}

static void
on_event(void *arg, const char *ev, size_t len, bool whole)
{
    struct events *e = arg;
    if (len == 0)
        abort();
    char *copy = dup_exact(ev, len);
    lm_buf_append(&e->all, copy, len);
    if (whole) {
        if (copy[len - 1] != '\n')
            abort();
        if (len <= GW_SSE_EVENT_MAX) {
            lm_buf_printf(&e->whole, "%zu", len);
            lm_buf_append(&e->whole, "", 1);
            lm_buf_append(&e->whole, copy, len);
            e->n_whole++;
        }
        struct gw_sse s;
        gw_sse_init(&s);
        one_n = 0;
        gw_sse_feed(&s, copy, len, one_fn, NULL);
        if (one_n != 1 || gw_sse_pending(&s) != 0)
            abort();
        gw_sse_release(&s);
        /* What the gateway looks at: the event, and its data as JSON. */
        check_json(copy, len);
        if (len > 6 && memcmp(copy, "data: ", 6) == 0) {
            size_t n = len - 6;
            while (n && (copy[6 + n - 1] == '\n' || copy[6 + n - 1] == '\r'))
                n--;
            check_json(copy + 6, n);
        }
    }
    free(copy);
}

static uint32_t
next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void
split(const char *d, size_t n, uint8_t cut, struct events *e, size_t *pending)
{
    struct gw_sse s;
    gw_sse_init(&s);
    uint32_t rs = 0x9e3779b9u * (cut | 0x100u);
    size_t off = 0;
    while (off < n) {
        size_t k = n - off;
        if (cut) {
            size_t lim = (size_t)1 << (cut % 12 + 1);
            k = 1 + next_rand(&rs) % lim;
            if (k > n - off)
                k = n - off;
        }
        char *piece = dup_exact(d + off, k);
        gw_sse_feed(&s, piece, k, on_event, e);
        free(piece);
        off += k;
    }
    *pending = gw_sse_pending(&s);
    if (*pending > GW_SSE_EVENT_MAX)
        abort();
    gw_sse_release(&s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t cut = data[0];
    const char *d = (const char *)data + 1;
    size_t n = size - 1;

    struct events a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    lm_buf_init(&a.all, 0);
    lm_buf_init(&a.whole, 0);
    lm_buf_init(&b.all, 0);
    lm_buf_init(&b.whole, 0);
    size_t pa, pb;
    split(d, n, 0, &a, &pa);
    split(d, n, cut ? cut : 1, &b, &pb);
    /* Bytes out are the input, less what is held for an event's end. In one
     * read the splitter holds only the tail; cut up, an oversized tail may
     * have gone out in pieces instead. */
    if (a.all.len + pa != n || (a.all.len && memcmp(a.all.data, d, a.all.len)))
        abort();
    if (b.all.len + pb != n || (b.all.len && memcmp(b.all.data, d, b.all.len)))
        abort();
    if (a.n_whole != b.n_whole || a.whole.len != b.whole.len ||
        (a.whole.len && memcmp(a.whole.data, b.whole.data, a.whole.len)))
        abort();
    lm_buf_release(&a.all);
    lm_buf_release(&a.whole);
    lm_buf_release(&b.all);
    lm_buf_release(&b.whole);

    check_json(d, n);
    check_json_str(d, n);
    return 0;
}
