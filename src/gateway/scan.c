/* Byte-level looks into JSON texts on the request path: the one-pass check
 * of a request body and the fields we route by (so no tree is built per
 * request), where the members we may rewrite sit (so a rewrite splices
 * bytes instead of re-serializing the client's body), and the token counts
 * of a "usage" object (so relaying an answer does not parse it). Every read
 * is bounds-checked: runtimes' bytes are not trusted to be valid JSON. */
#include <errno.h>
#include <string.h>

#include "gateway/gw.h"

#define NOPE ((size_t)-1)

static size_t
skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is '"'; returns the offset after the closing quote. */
static size_t
skip_string(const char *s, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return NOPE;
}

/* Returns the offset after the value starting at s[i]. */
static size_t
skip_value(const char *s, size_t len, size_t i)
{
    if (i >= len)
        return NOPE;
    if (s[i] == '"')
        return skip_string(s, len, i);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        while (i < len) {
            char c = s[i];
            if (c == '"') {
                i = skip_string(s, len, i);
                if (i == NOPE)
                    return NOPE;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0)
                return i + 1;
            i++;
        }
        return NOPE;
    }
    while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i;
}

static bool
key_is(const char *s, size_t kstart, size_t kend, const char *name)
{
    size_t n = strlen(name);
    return kend - kstart == n + 2 && memcmp(s + kstart + 1, name, n) == 0;
}

/* Walks the members of the object opening at s[i]; fn is called with the
 * key's span [kstart, kend) and the value's [vstart, vend). Returns 0 or
 * -EINVAL. */
typedef void member_fn(void *arg, const char *s, size_t kstart, size_t kend, size_t vstart,
                       size_t vend);

static int
walk_object(const char *s, size_t len, size_t i, member_fn *fn, void *arg)
{
    if (i >= len || s[i] != '{')
        return -EINVAL;
    i = skip_ws(s, len, i + 1);
    if (i < len && s[i] == '}')
        return 0;
    while (i < len) {
        if (s[i] != '"')
            return -EINVAL;
        size_t kstart = i, kend = skip_string(s, len, i);
        if (kend == NOPE)
            return -EINVAL;
        i = skip_ws(s, len, kend);
        if (i >= len || s[i] != ':')
            return -EINVAL;
        size_t vstart = skip_ws(s, len, i + 1);
        size_t vend = skip_value(s, len, vstart);
        if (vend == NOPE || vend == vstart)
            return -EINVAL;
        fn(arg, s, kstart, kend, vstart, vend);
        i = skip_ws(s, len, vend);
        if (i < len && s[i] == '}')
            return 0;
        if (i >= len || s[i] != ',')
            return -EINVAL;
        i = skip_ws(s, len, i + 1);
    }
    return -EINVAL;
}

static void
on_top_member(void *arg, const char *s, size_t kstart, size_t kend, size_t vstart, size_t vend)
{
    struct gw_members *m = arg;
    struct gw_span *sp = key_is(s, kstart, kend, "model")            ? &m->model
                         : key_is(s, kstart, kend, "stream_options") ? &m->stream_options
                                                                     : NULL;
    if (!sp)
        return;
    sp->found = true;
    sp->member = kstart;
    sp->val = vstart;
    sp->val_len = vend - vstart;
}

int
gw_scan_members(const char *s, size_t len, struct gw_members *out)
{
    memset(out, 0, sizeof(*out));
    size_t i = skip_ws(s, len, 0);
    out->open = i;
    return walk_object(s, len, i, on_top_member, out);
}

struct usage {
    uint64_t prompt, completion;
};

/* A count is a JSON integer >= 0; anything else (1.5e3, -2, "12", digits
 * past uint64) reads as 0, as it does where the answer is parsed with
 * jansson, rather than as its leading digits. */
static uint64_t
read_uint(const char *s, size_t start, size_t end)
{
    uint64_t v = 0;
    for (size_t i = start; i < end; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    return v;
}

static void
on_usage_member(void *arg, const char *s, size_t kstart, size_t kend, size_t vstart, size_t vend)
{
    struct usage *u = arg;
    if (key_is(s, kstart, kend, "prompt_tokens"))
        u->prompt = read_uint(s, vstart, vend);
    else if (key_is(s, kstart, kend, "completion_tokens"))
        u->completion = read_uint(s, vstart, vend);
}

bool
gw_find_usage(const char *s, size_t len, uint64_t *prompt, uint64_t *completion)
{
    static const char key[] = "\"usage\"";
    size_t end = len;

    while (end >= sizeof(key) - 1) {
        const char *q = memrchr(s, '"', end);
        if (!q)
            return false;
        size_t at = (size_t)(q - s);
        end = at;
        /* A "usage" key ends with this quote: look back for its start. */
        if (at < sizeof(key) - 2 || memcmp(s + at - (sizeof(key) - 2), key, sizeof(key) - 1))
            continue;
        size_t kstart = at - (sizeof(key) - 2);
        if (kstart > 0 && s[kstart - 1] == '\\')
            continue; /* inside a string */
        size_t i = skip_ws(s, len, at + 1);
        if (i >= len || s[i] != ':')
            continue;
        i = skip_ws(s, len, i + 1);
        if (i >= len || s[i] != '{')
            continue; /* "usage": null, or a string value "usage" */
        struct usage u = {0, 0};
        if (walk_object(s, len, i, on_usage_member, &u) < 0)
            return false;
        *prompt = u.prompt;
        *completion = u.completion;
        return true;
    }
    return false;
}

bool
gw_is_usage_only(const char *ev, size_t len)
{
    static const char key[] = "\"choices\"";
    const char *p = memmem(ev, len, key, sizeof(key) - 1);
    if (!p)
        return false;
    size_t i = skip_ws(ev, len, (size_t)(p - ev) + sizeof(key) - 1);
    if (i >= len || ev[i] != ':')
        return false;
    i = skip_ws(ev, len, i + 1);
    if (i >= len || ev[i] != '[')
        return false;
    i = skip_ws(ev, len, i + 1);
    return i < len && ev[i] == ']';
}

size_t
gw_strip_usage_null(char *ev, size_t len)
{
    static const char a[] = ",\"usage\":null", b[] = "\"usage\":null,";
    char *p = memmem(ev, len, a, sizeof(a) - 1);
    if (!p)
        p = memmem(ev, len, b, sizeof(b) - 1);
    if (!p)
        return len;
    size_t n = sizeof(a) - 1, off = (size_t)(p - ev);
    memmove(p, p + n, len - off - n);
    return len - n;
}

void
gw_json_str(struct lm_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;

    lm_buf_append(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        lm_buf_append(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t n = 2;
        if (c == '\n')
            esc[1] = 'n';
        else if (c == '\r')
            esc[1] = 'r';
        else if (c == '\t')
            esc[1] = 't';
        else if (c < 0x20) {
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        lm_buf_append(b, esc, n);
    }
    lm_buf_append(b, s + run, len - run);
    lm_buf_append(b, "\"", 1);
}

/* ---- validating a request body ---- */

/* Bytes that stand for themselves inside a JSON string. */
static const unsigned char plain[256] = {
    ['\x20'] = 1, ['\x21'] = 1, ['\x23' ... '\x5b'] = 1, ['\x5d' ... '\x7f'] = 1,
};

struct scanner {
    const unsigned char *s;
    size_t len;
    int rc;           /* -EINVAL or -EAGAIN once one is known */
    struct gw_body *b;
};

static bool
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static size_t
ws(const struct scanner *sc, size_t i)
{
    const unsigned char *s = sc->s;
    while (i < sc->len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    return i;
}

static size_t
fail(struct scanner *sc, int rc)
{
    if (sc->rc == 0 || rc == -EINVAL)
        sc->rc = rc;
    return NOPE;
}

static bool
hex4(const struct scanner *sc, size_t i, uint32_t *out)
{
    uint32_t v = 0;
    if (i + 4 > sc->len)
        return false;
    for (size_t k = i; k < i + 4; k++) {
        unsigned char c = sc->s[k];
        uint32_t d = c >= '0' && c <= '9'   ? (uint32_t)(c - '0')
                     : c >= 'a' && c <= 'f' ? (uint32_t)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (uint32_t)(c - 'A' + 10)
                                            : 16;
        if (d == 16)
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

/* One UTF-8 sequence at s[i] (>= 0x80), strict as jansson is: no overlong
 * forms, no surrogates, nothing past U+10FFFF. Returns its length or 0. */
static size_t
utf8_seq(const struct scanner *sc, size_t i)
{
    const unsigned char *s = sc->s;
    unsigned char c = s[i];
    size_t n;
    uint32_t v;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (i + n > sc->len)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((s[i + k] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (s[i + k] & 0x3f);
    }
    if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff) || (n == 3 && v < 0x800) ||
        (n == 4 && v < 0x10000))
        return 0;
    return n;
}

/* s[i] is '"'. Returns the offset after the closing quote; *esc tells
 * whether the string has escapes (its bytes are then not its value). */
static size_t
string(struct scanner *sc, size_t i, bool *esc)
{
    const unsigned char *s = sc->s;
    size_t len = sc->len;
    *esc = false;
    for (i++;;) {
        while (i < len && plain[s[i]])
            i++;
        if (i >= len)
            return fail(sc, -EINVAL);
        unsigned char c = s[i];
        if (c == '"')
            return i + 1;
        if (c == '\\') {
            *esc = true;
            if (i + 1 >= len)
                return fail(sc, -EINVAL);
            c = s[i + 1];
            if (c != 'u') {
                if (!strchr("\"\\/bfnrt", c) || c == '\0')
                    return fail(sc, -EINVAL);
                i += 2;
                continue;
            }
            uint32_t cp, lo;
            if (!hex4(sc, i + 2, &cp))
                return fail(sc, -EINVAL);
            i += 6;
            /* jansson refuses \u0000 (no JSON_ALLOW_NUL) and unpaired
             * surrogates. */
            if (cp == 0 || (cp >= 0xdc00 && cp <= 0xdfff))
                return fail(sc, -EINVAL);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (i + 1 >= len || s[i] != '\\' || s[i + 1] != 'u' || !hex4(sc, i + 2, &lo) ||
                    lo < 0xdc00 || lo > 0xdfff)
                    return fail(sc, -EINVAL);
                i += 6;
            }
            continue;
        }
        if (c < 0x20)
            return fail(sc, -EINVAL);
        size_t n = utf8_seq(sc, i);
        if (n == 0)
            return fail(sc, -EINVAL);
        i += n;
    }
}

/* A number jansson reads: it refuses integers past int64 and reals past
 * DBL_MAX, which take more than a glance to tell; those are left to it. */
static size_t
number(struct scanner *sc, size_t i)
{
    const unsigned char *s = sc->s;
    size_t len = sc->len;
    if (s[i] == '-')
        i++;
    size_t d0 = i;
    if (i >= len || !is_digit(s[i]))
        return fail(sc, -EINVAL);
    if (s[i] == '0') {
        i++;
        if (i < len && is_digit(s[i]))
            return fail(sc, -EINVAL);
    } else {
        while (i < len && is_digit(s[i]))
            i++;
    }
    size_t int_digits = i - d0;
    bool real = false;
    long exp = 0;
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len || !is_digit(s[i]))
            return fail(sc, -EINVAL);
        while (i < len && is_digit(s[i]))
            i++;
        real = true;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool neg = false;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            neg = s[i++] == '-';
        if (i >= len || !is_digit(s[i]))
            return fail(sc, -EINVAL);
        for (; i < len && is_digit(s[i]); i++)
            if (exp < 100000)
                exp = exp * 10 + (s[i] - '0');
        if (neg)
            exp = -exp;
        real = true;
    }
    if (real ? (long)int_digits + exp > 300 : int_digits > 18)
        return fail(sc, -EAGAIN);
    return i;
}

static size_t value(struct scanner *sc, size_t i, unsigned depth, enum gw_jtype *type);

/* The object at s[i]; top: the request's own members are looked at. */
static size_t
object(struct scanner *sc, size_t i, unsigned depth, int what)
{
    const unsigned char *s = sc->s;
    struct gw_body *b = sc->b;
    i = ws(sc, i + 1);
    if (i < sc->len && s[i] == '}')
        return i + 1;
    for (;;) {
        if (i >= sc->len || s[i] != '"')
            return fail(sc, -EINVAL);
        size_t kstart = i;
        bool esc;
        i = string(sc, i, &esc);
        if (i == NOPE)
            return NOPE;
        size_t kend = i;
        i = ws(sc, i);
        if (i >= sc->len || s[i] != ':')
            return fail(sc, -EINVAL);
        size_t vstart = ws(sc, i + 1);
        enum gw_jtype t = GW_J_ABSENT;
        /* A key spelled with escapes may be one we look for. */
        if (esc && what != 0)
            fail(sc, -EAGAIN);
        const char *k = (const char *)s;
        int sub = 0;
        struct gw_span *sp = NULL;
        enum gw_jtype *tp = NULL;
        if (what == 1) {
            if (key_is(k, kstart, kend, "model")) {
                sp = &b->members.model;
                tp = &b->model;
            } else if (key_is(k, kstart, kend, "stream")) {
                tp = &b->stream;
            } else if (key_is(k, kstart, kend, "stream_options")) {
                sp = &b->members.stream_options;
                tp = &b->stream_options;
                b->include_usage = GW_J_ABSENT; /* the last one counts */
                sub = 2;
            }
        } else if (what == 2 && key_is(k, kstart, kend, "include_usage")) {
            tp = &b->include_usage;
        }
        i = value(sc, vstart, depth + 1, &t);
        if (i == NOPE)
            return NOPE;
        if (sub == 2 && t == GW_J_OBJECT) {
            /* Looked into again, now as stream_options (rarely more than
             * a member or two). */
            if (object(sc, vstart, depth + 1, 2) == NOPE)
                return NOPE;
        }
        if (tp)
            *tp = t;
        if (sp) {
            sp->found = true;
            sp->member = kstart;
            sp->val = vstart;
            sp->val_len = i - vstart;
        }
        if (tp == &b->model && t == GW_J_STRING && memchr(k + vstart, '\\', i - vstart))
            fail(sc, -EAGAIN); /* its bytes are not its value */
        i = ws(sc, i);
        if (i < sc->len && s[i] == '}')
            return i + 1;
        if (i >= sc->len || s[i] != ',')
            return fail(sc, -EINVAL);
        i = ws(sc, i + 1);
    }
}

static size_t
value(struct scanner *sc, size_t i, unsigned depth, enum gw_jtype *type)
{
    const unsigned char *s = sc->s;
    size_t len = sc->len;
    if (i >= len)
        return fail(sc, -EINVAL);
    if (depth > GW_SCAN_DEPTH)
        return fail(sc, -EAGAIN); /* jansson's limit is deeper: let it judge */
    switch (s[i]) {
    case '"': {
        bool esc;
        *type = GW_J_STRING;
        return string(sc, i, &esc);
    }
    case '{':
        *type = GW_J_OBJECT;
        return object(sc, i, depth, 0);
    case '[':
        *type = GW_J_ARRAY;
        i = ws(sc, i + 1);
        if (i < len && s[i] == ']')
            return i + 1;
        for (;;) {
            enum gw_jtype t = GW_J_ABSENT;
            i = value(sc, i, depth + 1, &t);
            if (i == NOPE)
                return NOPE;
            i = ws(sc, i);
            if (i < len && s[i] == ']')
                return i + 1;
            if (i >= len || s[i] != ',')
                return fail(sc, -EINVAL);
            i = ws(sc, i + 1);
        }
    case 't':
        *type = GW_J_TRUE;
        if (len - i >= 4 && memcmp(s + i, "true", 4) == 0)
            return i + 4;
        return fail(sc, -EINVAL);
    case 'f':
        *type = GW_J_FALSE;
        if (len - i >= 5 && memcmp(s + i, "false", 5) == 0)
            return i + 5;
        return fail(sc, -EINVAL);
    case 'n':
        *type = GW_J_NULL;
        if (len - i >= 4 && memcmp(s + i, "null", 4) == 0)
            return i + 4;
        return fail(sc, -EINVAL);
    default:
        *type = GW_J_NUMBER;
        return number(sc, i);
    }
}

int
gw_scan_body(const char *s, size_t len, struct gw_body *out)
{
    struct scanner sc = {(const unsigned char *)s, len, 0, out};
    memset(out, 0, sizeof(*out));
    size_t i = ws(&sc, 0);
    out->members.open = i;
    if (i >= len || s[i] != '{')
        return -EINVAL;
    i = object(&sc, i, 0, 1);
    if (i != NOPE && ws(&sc, i) != len)
        fail(&sc, -EINVAL);
    return sc.rc;
}
