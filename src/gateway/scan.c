/* Byte-level looks into JSON texts on the request path: where the members
 * we may rewrite sit (so a rewrite splices bytes instead of re-serializing
 * the client's body), and the token counts of a "usage" object (so relaying
 * an answer does not parse it). Every read is bounds-checked: runtimes'
 * bytes are not trusted to be valid JSON. */
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
