/* toml: TOML 1.0, parsed in one pass into a tree of lm_toml_value.
 *
 * Positions are 1-based; a column counts characters (UTF-8 code points, a tab
 * is one) from the start of the line, so it matches what an editor shows.
 * Keys are looked up during the parse through one hash shared by all tables,
 * keyed by (table, key), so that a table with 10^5 keys costs O(n). */
#include "toml/toml.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Parser bookkeeping in lm_toml_value.flags: which syntax made a table or an
 * array decides what later lines may do with it. */
#define F_DEFINED 0x1u /* table named by a [header] or a [[header]] element */
#define F_DOTTED 0x2u  /* table made by a dotted key: only dotted keys extend it */
#define F_CLOSED 0x4u  /* inline table or static array: never extended */
#define F_AOT 0x8u     /* array made by [[header]]: [[header]] appends */

struct key_part {
    char *s;
    int line, col;
};

struct key_path {
    struct key_part v[LM_TOML_MAX_DEPTH];
    size_t n;
};

struct slot {
    const struct lm_toml_value *tab; /* NULL = empty */
    size_t idx;                      /* index into tab->u.tab.items */
    uint64_t hash;
};

struct parser {
    const unsigned char *buf;
    size_t len, pos;
    int line, col;
    int depth;
    char *msg;
    size_t msgcap;
    int eline, ecol;
    struct slot *slots;
    size_t nslots, used; /* nslots is a power of two */
};

static int parse_value(struct parser *p, struct lm_toml_value **out);

/* ---- errors and positions ---------------------------------------------- */

static int LM_PRINTF(4, 5)
fail_at(struct parser *p, int line, int col, const char *fmt, ...)
{
    va_list ap;
    p->eline = line;
    p->ecol = col;
    if (p->msgcap > 0) {
        va_start(ap, fmt);
        vsnprintf(p->msg, p->msgcap, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

#define fail(p, ...) fail_at((p), (p)->line, (p)->col, __VA_ARGS__)

/* A key as it may appear in a message: printable, bounded. */
static const char *
show(char *out, size_t cap, const char *s)
{
    lm_escape(out, cap, s, strlen(s));
    return out;
}

static int
peek(const struct parser *p)
{
    return p->pos < p->len ? p->buf[p->pos] : -1;
}

static int
peek_at(const struct parser *p, size_t k)
{
    return p->pos + k < p->len ? p->buf[p->pos + k] : -1;
}

static void
adv(struct parser *p)
{
    unsigned char c = p->buf[p->pos++];
    if (c == '\n') {
        p->line++;
        p->col = 1;
    } else if ((c & 0xC0) != 0x80) {
        p->col++;
    }
}

static void
adv_n(struct parser *p, size_t n)
{
    while (n-- > 0)
        adv(p);
}

static bool
looking_at(const struct parser *p, const char *s)
{
    size_t n = strlen(s);
    return p->len - p->pos >= n && memcmp(p->buf + p->pos, s, n) == 0;
}

/* "a table", "an integer", "an inline table", "a static array": for messages. */
static const char *
kind_name(const struct lm_toml_value *v)
{
    if (v->flags & F_CLOSED)
        return v->type == LM_TOML_TABLE ? "an inline table" : "a static array";
    switch (v->type) {
    case LM_TOML_TABLE: return "a table";
    case LM_TOML_ARRAY: return "an array of tables";
    case LM_TOML_STRING: return "a string";
    case LM_TOML_INTEGER: return "an integer";
    case LM_TOML_FLOAT: return "a float";
    case LM_TOML_BOOL: return "a bool";
    default: return "a date or time";
    }
}

static bool
is_control(int c)
{
    return (c >= 0 && c < 0x20 && c != '\t') || c == 0x7F;
}

static bool
is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool
is_bare(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' ||
           c == '-';
}

static void
skip_ws(struct parser *p)
{
    while (peek(p) == ' ' || peek(p) == '\t')
        adv(p);
}

/* Consumes LF or CRLF; 1 if one was there, 0 if not, <0 on a bare CR. */
static int
eat_newline(struct parser *p)
{
    if (peek(p) == '\n') {
        adv(p);
        return 1;
    }
    if (peek(p) == '\r') {
        if (peek_at(p, 1) != '\n')
            return fail(p, "carriage return not followed by newline");
        adv_n(p, 2);
        return 1;
    }
    return 0;
}

/* At '#': skips to the end of the line, leaving the newline. */
static int
skip_comment(struct parser *p)
{
    adv(p);
    for (;;) {
        int c = peek(p);
        if (c < 0 || c == '\n' || (c == '\r' && peek_at(p, 1) == '\n'))
            return 0;
        if (is_control(c))
            return fail(p, "control character in comment");
        adv(p);
    }
}

/* Whitespace, newlines and comments, as allowed inside arrays. */
static int
skip_ws_nl(struct parser *p)
{
    for (;;) {
        skip_ws(p);
        if (peek(p) == '#') {
            int rc = skip_comment(p);
            if (rc < 0)
                return rc;
        }
        int rc = eat_newline(p);
        if (rc <= 0)
            return rc;
    }
}

/* ---- UTF-8 -------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid:
 * no overlongs, no surrogates, nothing above U+10FFFF. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static int
check_utf8(struct parser *p)
{
    int line = 1, col = 1;
    size_t i = looking_at(p, "\xEF\xBB\xBF") ? 3 : 0;
    while (i < p->len) {
        size_t n = utf8_len(p->buf + i, p->len - i);
        if (n == 0)
            return fail_at(p, line, col, "invalid UTF-8");
        if (p->buf[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
        i += n;
    }
    return 0;
}

static int
utf8_put(struct lm_buf *b, uint32_t cp)
{
    unsigned char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (unsigned char)(0xC0 | (cp >> 6));
        s[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (unsigned char)(0xE0 | (cp >> 12));
        s[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        s[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        s[0] = (unsigned char)(0xF0 | (cp >> 18));
        s[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        s[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        s[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return lm_buf_append(b, s, n);
}

/* ---- values ------------------------------------------------------------- */

static struct lm_toml_value *
value_new(enum lm_toml_type type, int line, int col)
{
    struct lm_toml_value *v = lm_xcalloc(1, sizeof(*v));
    v->type = type;
    v->line = line;
    v->col = col;
    return v;
}

void
lm_toml_free(struct lm_toml_value *v)
{
    if (!v)
        return;
    switch (v->type) {
    case LM_TOML_TABLE:
        for (size_t i = 0; i < v->u.tab.len; i++) {
            free(v->u.tab.items[i].key);
            lm_toml_free(v->u.tab.items[i].value);
        }
        free(v->u.tab.items);
        break;
    case LM_TOML_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++)
            lm_toml_free(v->u.arr.items[i]);
        free(v->u.arr.items);
        break;
    case LM_TOML_STRING:
        free(v->u.str.ptr);
        break;
    default:
        break;
    }
    free(v);
}

static void
array_push(struct lm_toml_value *a, struct lm_toml_value *item)
{
    if (a->u.arr.len == a->u.arr.cap) {
        a->u.arr.cap = a->u.arr.cap ? a->u.arr.cap * 2 : 4;
        a->u.arr.items = lm_xrealloc(a->u.arr.items, a->u.arr.cap * sizeof(*a->u.arr.items));
    }
    a->u.arr.items[a->u.arr.len++] = item;
}

/* ---- the (table, key) hash --------------------------------------------- */

static uint64_t
key_hash(const struct lm_toml_value *tab, const char *key)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)tab;
    for (const unsigned char *s = (const unsigned char *)key; *s; s++)
        h = (h ^ *s) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static void
hash_insert_slot(struct slot *slots, size_t nslots, const struct slot *s)
{
    size_t i = s->hash & (nslots - 1);
    while (slots[i].tab)
        i = (i + 1) & (nslots - 1);
    slots[i] = *s;
}

static struct lm_toml_entry *
hash_find(const struct parser *p, const struct lm_toml_value *tab, const char *key)
{
    if (p->nslots == 0)
        return NULL;
    uint64_t h = key_hash(tab, key);
    for (size_t i = h & (p->nslots - 1); p->slots[i].tab; i = (i + 1) & (p->nslots - 1)) {
        const struct slot *s = &p->slots[i];
        if (s->hash == h && s->tab == tab && strcmp(tab->u.tab.items[s->idx].key, key) == 0)
            return &tab->u.tab.items[s->idx];
    }
    return NULL;
}

/* Adds key (taken over) to tab; the caller has checked it is absent. */
static void
table_add(struct parser *p, struct lm_toml_value *tab, char *key, int line, int col,
          struct lm_toml_value *value)
{
    if ((p->used + 1) * 2 > p->nslots) {
        size_t n = p->nslots ? p->nslots * 2 : 64;
        struct slot *slots = lm_xcalloc(n, sizeof(*slots));
        for (size_t i = 0; i < p->nslots; i++)
            if (p->slots[i].tab)
                hash_insert_slot(slots, n, &p->slots[i]);
        free(p->slots);
        p->slots = slots;
        p->nslots = n;
    }
    if (tab->u.tab.len == tab->u.tab.cap) {
        tab->u.tab.cap = tab->u.tab.cap ? tab->u.tab.cap * 2 : 4;
        tab->u.tab.items =
            lm_xrealloc(tab->u.tab.items, tab->u.tab.cap * sizeof(*tab->u.tab.items));
    }
    struct slot s = {.tab = tab, .idx = tab->u.tab.len, .hash = key_hash(tab, key)};
    tab->u.tab.items[tab->u.tab.len++] =
        (struct lm_toml_entry){.key = key, .line = line, .col = col, .value = value};
    hash_insert_slot(p->slots, p->nslots, &s);
    p->used++;
}

/* ---- strings ------------------------------------------------------------ */

/* At '\\' in a basic string; multi-line strings also allow a line-ending
 * backslash, which swallows all whitespace up to the next text. */
static int
parse_escape(struct parser *p, struct lm_buf *b, bool multiline)
{
    int line = p->line, col = p->col;
    adv(p);
    int c = peek(p);
    const char *simple = NULL;
    switch (c) {
    case 'b': simple = "\b"; break;
    case 't': simple = "\t"; break;
    case 'n': simple = "\n"; break;
    case 'f': simple = "\f"; break;
    case 'r': simple = "\r"; break;
    case '"': simple = "\""; break;
    case '\\': simple = "\\"; break;
    default: break;
    }
    if (simple) {
        adv(p);
        return lm_buf_append(b, simple, 1) < 0 ? fail(p, "string too long") : 0;
    }
    if (c == 'u' || c == 'U') {
        int n = c == 'u' ? 4 : 8;
        uint32_t cp = 0;
        adv(p);
        for (int i = 0; i < n; i++) {
            int h = lm_hex_value(peek(p));
            if (h < 0)
                return fail_at(p, line, col, "\\%c escape needs %d hex digits", c, n);
            cp = (cp << 4) | (uint32_t)h;
            adv(p);
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return fail_at(p, line, col, "escape is not a unicode scalar value");
        return utf8_put(b, cp) < 0 ? fail(p, "string too long") : 0;
    }
    if (multiline && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
        skip_ws(p);
        int rc = eat_newline(p);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return fail_at(p, line, col, "only whitespace may follow a line-ending backslash");
        for (;;) {
            skip_ws(p);
            rc = eat_newline(p);
            if (rc <= 0)
                return rc;
        }
    }
    if (c < 0)
        return fail_at(p, line, col, "unterminated string");
    if (c >= 0x20 && c < 0x7F)
        return fail_at(p, line, col, "invalid escape \"\\%c\"", c);
    return fail_at(p, line, col, "invalid escape");
}

/* At the opening quote of any of the four string kinds. */
static int
parse_string(struct parser *p, struct lm_buf *b, bool allow_multiline)
{
    int line = p->line, col = p->col;
    char q = (char)peek(p);
    bool basic = q == '"';
    bool multiline = peek_at(p, 1) == q && peek_at(p, 2) == q;
    if (multiline) {
        if (!allow_multiline)
            return fail(p, "multi-line string not allowed here");
        adv_n(p, 3);
        /* A newline right after the opening quotes is not part of it. */
        int rc = eat_newline(p);
        if (rc < 0)
            return rc;
    } else {
        adv(p);
    }
    for (;;) {
        int c = peek(p);
        if (c < 0)
            return fail_at(p, line, col, "unterminated string");
        if (c == q) {
            if (!multiline) {
                adv(p);
                return 0;
            }
            size_t n = 0;
            while (peek_at(p, n) == q)
                n++;
            if (n >= 3) {
                /* Up to two quotes may sit right before the closing three. */
                if (n > 5)
                    return fail(p, "too many quotes at end of string");
                if (lm_buf_append(b, p->buf + p->pos, n - 3) < 0)
                    return fail(p, "string too long");
                adv_n(p, n);
                return 0;
            }
            if (lm_buf_append(b, p->buf + p->pos, n) < 0)
                return fail(p, "string too long");
            adv_n(p, n);
            continue;
        }
        if (c == '\\' && basic) {
            int rc = parse_escape(p, b, multiline);
            if (rc < 0)
                return rc;
            continue;
        }
        if (c == '\n' || c == '\r') {
            if (!multiline)
                return fail_at(p, line, col, "unterminated string");
            int rc = eat_newline(p);
            if (rc < 0)
                return rc;
            if (lm_buf_append(b, "\n", 1) < 0)
                return fail(p, "string too long");
            continue;
        }
        if (is_control(c))
            return fail(p, "control character in string");
        if (lm_buf_append(b, p->buf + p->pos, 1) < 0)
            return fail(p, "string too long");
        adv(p);
    }
}

/* ---- keys --------------------------------------------------------------- */

static void
key_path_clear(struct key_path *k)
{
    for (size_t i = 0; i < k->n; i++)
        free(k->v[i].s);
    k->n = 0;
}

/* A dotted key; surrounding whitespace is the caller's. */
static int
parse_key(struct parser *p, struct key_path *k)
{
    k->n = 0;
    for (;;) {
        int line = p->line, col = p->col;
        int c = peek(p);
        char *s;
        if (k->n == LM_TOML_MAX_DEPTH)
            return fail(p, "key has more than %d parts", LM_TOML_MAX_DEPTH);
        if (c == '"' || c == '\'') {
            struct lm_buf b;
            lm_buf_init(&b, LM_TOML_MAX_INPUT);
            int rc = parse_string(p, &b, false);
            if (rc == 0 && memchr(b.data ? b.data : "", '\0', b.len))
                rc = fail_at(p, line, col, "key contains a NUL character");
            if (rc < 0) {
                lm_buf_release(&b);
                return rc;
            }
            s = lm_xstrndup(b.data ? b.data : "", b.len);
            lm_buf_release(&b);
        } else {
            size_t start = p->pos;
            while (is_bare(peek(p)))
                adv(p);
            if (p->pos == start) {
                if (c > 0x20 && c < 0x7F)
                    return fail(p, "expected a key, found '%c'", c);
                return fail(p, "expected a key");
            }
            s = lm_xstrndup((const char *)p->buf + start, p->pos - start);
        }
        k->v[k->n++] = (struct key_part){.s = s, .line = line, .col = col};
        skip_ws(p);
        if (peek(p) != '.')
            return 0;
        adv(p);
        skip_ws(p);
    }
}

/* ---- numbers and dates ------------------------------------------------- */

/* What may follow a scalar value. */
static bool
at_value_end(const struct parser *p)
{
    int c = peek(p);
    return c < 0 || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ']' ||
           c == '}' || c == '#';
}

/* Digits in base with single underscores between them, copied to b
 * without the underscores; *ndigits says how many. */
static int
scan_digits(struct parser *p, struct lm_buf *b, int base, size_t *ndigits)
{
    *ndigits = 0;
    for (;;) {
        int c = peek(p);
        int d = lm_hex_value(c);
        if (d < 0 || d >= base) {
            if (c == '_')
                return fail(p, "'_' must sit between digits");
            if (*ndigits == 0)
                return fail(p, "expected a digit");
            return 0;
        }
        if (lm_buf_append(b, p->buf + p->pos, 1) < 0)
            return fail(p, "number too long");
        (*ndigits)++;
        adv(p);
        if (peek(p) == '_') {
            adv(p);
            if (lm_hex_value(peek(p)) < 0 || lm_hex_value(peek(p)) >= base)
                return fail(p, "'_' must sit between digits");
        }
    }
}

static int
parse_prefixed_int(struct parser *p, struct lm_toml_value *v)
{
    int base = peek_at(p, 1) == 'x' ? 16 : peek_at(p, 1) == 'o' ? 8 : 2;
    struct lm_buf b;
    size_t nd;
    uint64_t n = 0;
    adv_n(p, 2);
    lm_buf_init(&b, LM_TOML_MAX_INPUT);
    int rc = scan_digits(p, &b, base, &nd);
    if (rc < 0)
        goto out;
    if (!at_value_end(p)) {
        rc = fail(p, "invalid character in integer");
        goto out;
    }
    for (size_t i = 0; i < b.len; i++) {
        uint64_t d = (uint64_t)lm_hex_value((unsigned char)b.data[i]);
        if (n > ((uint64_t)INT64_MAX - d) / (uint64_t)base) {
            rc = fail_at(p, v->line, v->col, "integer does not fit in 64 bits");
            goto out;
        }
        n = n * (uint64_t)base + d;
    }
    v->u.integer = (int64_t)n;
out:
    lm_buf_release(&b);
    return rc;
}

static int
parse_number(struct parser *p, struct lm_toml_value *v)
{
    int sign = 0;
    struct lm_buf b;
    size_t nd;
    int rc;

    if (peek(p) == '0' && (peek_at(p, 1) == 'x' || peek_at(p, 1) == 'o' || peek_at(p, 1) == 'b')) {
        v->type = LM_TOML_INTEGER;
        return parse_prefixed_int(p, v);
    }
    if (peek(p) == '+' || peek(p) == '-')
        sign = peek(p);
    const char *special[] = {"inf", "nan"};
    for (size_t i = 0; i < 2; i++) {
        size_t off = sign ? 1 : 0;
        if (p->len - p->pos >= off + 3 && memcmp(p->buf + p->pos + off, special[i], 3) == 0) {
            adv_n(p, sign ? 4 : 3);
            if (!at_value_end(p))
                return fail(p, "invalid character after %s", special[i]);
            v->type = LM_TOML_FLOAT;
            v->u.flt = i == 0 ? INFINITY : NAN;
            if (sign == '-')
                v->u.flt = -v->u.flt;
            return 0;
        }
    }
    lm_buf_init(&b, LM_TOML_MAX_INPUT);
    if (sign) {
        lm_buf_append(&b, p->buf + p->pos, 1);
        adv(p);
        if (!is_digit(peek(p))) {
            rc = fail(p, "expected a digit after '%c'", sign);
            goto out;
        }
    }
    int zline = p->line, zcol = p->col;
    bool leading_zero = peek(p) == '0';
    rc = scan_digits(p, &b, 10, &nd);
    if (rc < 0)
        goto out;
    if (leading_zero && nd > 1) {
        rc = fail_at(p, zline, zcol, "leading zeros are not allowed");
        goto out;
    }
    bool is_float = false;
    if (peek(p) == '.') {
        is_float = true;
        lm_buf_append(&b, ".", 1);
        adv(p);
        if (!is_digit(peek(p))) {
            rc = fail(p, "expected a digit after '.'");
            goto out;
        }
        rc = scan_digits(p, &b, 10, &nd);
        if (rc < 0)
            goto out;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        is_float = true;
        lm_buf_append(&b, "e", 1);
        adv(p);
        if (peek(p) == '+' || peek(p) == '-') {
            lm_buf_append(&b, p->buf + p->pos, 1);
            adv(p);
        }
        if (!is_digit(peek(p))) {
            rc = fail(p, "expected a digit in exponent");
            goto out;
        }
        rc = scan_digits(p, &b, 10, &nd);
        if (rc < 0)
            goto out;
    }
    if (!at_value_end(p)) {
        rc = fail(p, "invalid character in number");
        goto out;
    }
    if (is_float) {
        v->type = LM_TOML_FLOAT;
        v->u.flt = strtod(b.data, NULL);
        if (isinf(v->u.flt))
            rc = fail_at(p, v->line, v->col, "float is out of range");
        goto out;
    }
    v->type = LM_TOML_INTEGER;
    errno = 0;
    long long n = strtoll(b.data, NULL, 10);
    if (errno == ERANGE) {
        rc = fail_at(p, v->line, v->col, "integer does not fit in 64 bits");
        goto out;
    }
    v->u.integer = n;
out:
    lm_buf_release(&b);
    return rc;
}

/* Exactly n digits. */
static int
scan_fixed(struct parser *p, int n, int *out, const char *what)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(peek(p)))
            return fail(p, "%s needs %d digits", what, n);
        x = x * 10 + (peek(p) - '0');
        adv(p);
    }
    *out = x;
    return 0;
}

static int
expect_char(struct parser *p, int c, const char *what)
{
    if (peek(p) != c)
        return fail(p, "expected '%c' in %s", c, what);
    adv(p);
    return 0;
}

static bool
is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
parse_date(struct parser *p, struct lm_toml_datetime *dt)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int line = p->line, col = p->col;
    int rc;
    if ((rc = scan_fixed(p, 4, &dt->year, "year")) < 0 ||
        (rc = expect_char(p, '-', "date")) < 0 ||
        (rc = scan_fixed(p, 2, &dt->month, "month")) < 0 ||
        (rc = expect_char(p, '-', "date")) < 0 ||
        (rc = scan_fixed(p, 2, &dt->day, "day")) < 0)
        return rc;
    if (dt->month < 1 || dt->month > 12)
        return fail_at(p, line, col, "month out of range");
    int maxd = mdays[dt->month - 1] + (dt->month == 2 && is_leap(dt->year));
    if (dt->day < 1 || dt->day > maxd)
        return fail_at(p, line, col, "day out of range");
    return 0;
}

static int
parse_time(struct parser *p, struct lm_toml_datetime *dt)
{
    int line = p->line, col = p->col;
    int rc;
    if ((rc = scan_fixed(p, 2, &dt->hour, "hour")) < 0 ||
        (rc = expect_char(p, ':', "time")) < 0 ||
        (rc = scan_fixed(p, 2, &dt->minute, "minute")) < 0 ||
        (rc = expect_char(p, ':', "time")) < 0 ||
        (rc = scan_fixed(p, 2, &dt->second, "second")) < 0)
        return rc;
    /* 60 is a leap second, which RFC 3339 allows. */
    if (dt->hour > 23 || dt->minute > 59 || dt->second > 60)
        return fail_at(p, line, col, "time out of range");
    if (peek(p) == '.') {
        adv(p);
        if (!is_digit(peek(p)))
            return fail(p, "expected a digit after '.'");
        while (is_digit(peek(p))) {
            if (dt->frac_digits < 9)
                dt->nanosecond = dt->nanosecond * 10 + (peek(p) - '0');
            if (dt->frac_digits < INT32_MAX)
                dt->frac_digits++;
            adv(p);
        }
        for (int i = dt->frac_digits; i < 9; i++)
            dt->nanosecond *= 10;
    }
    return 0;
}

/* Dates, times and date-times; the caller saw "DDDD-" or "DD:". */
static int
parse_datetime(struct parser *p, struct lm_toml_value *v)
{
    struct lm_toml_datetime *dt = &v->u.dt;
    int rc;
    if (peek_at(p, 2) == ':') {
        v->type = LM_TOML_TIME_LOCAL;
        if ((rc = parse_time(p, dt)) < 0)
            return rc;
        goto end;
    }
    v->type = LM_TOML_DATE_LOCAL;
    if ((rc = parse_date(p, dt)) < 0)
        return rc;
    int c = peek(p);
    if (c == 'T' || c == 't' || (c == ' ' && is_digit(peek_at(p, 1)))) {
        adv(p);
        v->type = LM_TOML_DATETIME_LOCAL;
        if ((rc = parse_time(p, dt)) < 0)
            return rc;
        c = peek(p);
        if (c == 'Z' || c == 'z') {
            adv(p);
            v->type = LM_TOML_DATETIME;
        } else if (c == '+' || c == '-') {
            int line = p->line, col = p->col, oh, om;
            adv(p);
            if ((rc = scan_fixed(p, 2, &oh, "offset hour")) < 0 ||
                (rc = expect_char(p, ':', "offset")) < 0 ||
                (rc = scan_fixed(p, 2, &om, "offset minute")) < 0)
                return rc;
            if (oh > 23 || om > 59)
                return fail_at(p, line, col, "offset out of range");
            dt->offset_minutes = (c == '-' ? -1 : 1) * (oh * 60 + om);
            v->type = LM_TOML_DATETIME;
        }
    }
end:
    if (!at_value_end(p))
        return fail(p, "invalid character in date or time");
    return 0;
}

/* ---- arrays and inline tables ------------------------------------------ */

static int
parse_array(struct parser *p, struct lm_toml_value *a)
{
    int rc;
    adv(p);
    for (;;) {
        if ((rc = skip_ws_nl(p)) < 0)
            return rc;
        if (peek(p) == ']') {
            adv(p);
            return 0;
        }
        struct lm_toml_value *item;
        if ((rc = parse_value(p, &item)) < 0)
            return rc;
        array_push(a, item);
        if ((rc = skip_ws_nl(p)) < 0)
            return rc;
        if (peek(p) == ',') {
            adv(p);
            continue;
        }
        if (peek(p) == ']') {
            adv(p);
            return 0;
        }
        if (peek(p) < 0)
            return fail_at(p, a->line, a->col, "unterminated array");
        return fail(p, "expected ',' or ']' in array");
    }
}

static int parse_keyval(struct parser *p, struct lm_toml_value *tab);

static int
parse_inline_table(struct parser *p, struct lm_toml_value *t)
{
    int rc;
    adv(p);
    skip_ws(p);
    if (peek(p) == '}') {
        adv(p);
        return 0;
    }
    for (;;) {
        skip_ws(p);
        int c = peek(p);
        if (c == '}')
            return fail(p, "trailing comma in inline table");
        if (c < 0 || c == '\n' || c == '\r')
            return fail(p, "newline in inline table");
        if ((rc = parse_keyval(p, t)) < 0)
            return rc;
        skip_ws(p);
        c = peek(p);
        if (c == ',') {
            adv(p);
            continue;
        }
        if (c == '}') {
            adv(p);
            return 0;
        }
        if (c < 0 || c == '\n' || c == '\r')
            return fail(p, "newline in inline table");
        return fail(p, "expected ',' or '}' in inline table");
    }
}

static int
parse_value(struct parser *p, struct lm_toml_value **out)
{
    int line = p->line, col = p->col;
    int c = peek(p);
    struct lm_toml_value *v = value_new(LM_TOML_BOOL, line, col);
    int rc;

    *out = NULL;
    if (c == '"' || c == '\'') {
        struct lm_buf b;
        lm_buf_init(&b, LM_TOML_MAX_INPUT);
        rc = parse_string(p, &b, true);
        v->type = LM_TOML_STRING;
        v->u.str.len = b.len;
        v->u.str.ptr = lm_xstrndup(b.data ? b.data : "", b.len);
        lm_buf_release(&b);
        if (rc == 0 && !at_value_end(p))
            rc = fail(p, "unexpected text after string");
    } else if (c == '[' || c == '{') {
        if (p->depth >= LM_TOML_MAX_DEPTH) {
            rc = fail(p, "arrays and inline tables nested deeper than %d", LM_TOML_MAX_DEPTH);
            goto out;
        }
        p->depth++;
        if (c == '[') {
            v->type = LM_TOML_ARRAY;
            v->flags = F_CLOSED;
            rc = parse_array(p, v);
        } else {
            v->type = LM_TOML_TABLE;
            v->flags = F_CLOSED;
            rc = parse_inline_table(p, v);
        }
        p->depth--;
    } else if (looking_at(p, "true") || looking_at(p, "false")) {
        v->u.boolean = c == 't';
        adv_n(p, v->u.boolean ? 4 : 5);
        rc = at_value_end(p) ? 0 : fail(p, "invalid character after boolean");
    } else if (is_digit(c) && is_digit(peek_at(p, 1)) &&
               (peek_at(p, 2) == ':' ||
                (is_digit(peek_at(p, 2)) && is_digit(peek_at(p, 3)) && peek_at(p, 4) == '-'))) {
        rc = parse_datetime(p, v);
    } else if (is_digit(c) || c == '+' || c == '-' || c == 'i' || c == 'n') {
        rc = parse_number(p, v);
    } else if (c < 0 || c == '\n' || c == '\r' || c == '#') {
        rc = fail(p, "expected a value");
    } else {
        rc = fail(p, "invalid value");
    }
out:
    if (rc < 0) {
        lm_toml_free(v);
        return rc;
    }
    *out = v;
    return 0;
}

/* ---- tables ------------------------------------------------------------- */

/* key = value into tab: dotted parts may only walk through tables made by
 * dotted keys in this same table, and the last part must be new. */
static int
parse_keyval(struct parser *p, struct lm_toml_value *tab)
{
    struct key_path k;
    char esc[96];
    int rc = parse_key(p, &k);
    struct lm_toml_value *v = NULL;
    if (rc < 0)
        goto out;
    struct key_part *last = &k.v[k.n - 1];
    if (peek(p) != '=') {
        rc = fail(p, "expected '=' after key \"%s\"", show(esc, sizeof(esc), last->s));
        goto out;
    }
    adv(p);
    skip_ws(p);
    for (size_t i = 0; i + 1 < k.n; i++) {
        struct lm_toml_entry *e = hash_find(p, tab, k.v[i].s);
        if (!e) {
            struct lm_toml_value *t = value_new(LM_TOML_TABLE, k.v[i].line, k.v[i].col);
            t->flags = F_DOTTED;
            table_add(p, tab, k.v[i].s, k.v[i].line, k.v[i].col, t);
            k.v[i].s = NULL;
            tab = t;
            continue;
        }
        if (e->value->type != LM_TOML_TABLE) {
            rc = fail_at(p, k.v[i].line, k.v[i].col, "key \"%s\" is %s, not a table",
                         show(esc, sizeof(esc), e->key), kind_name(e->value));
            goto out;
        }
        if (!(e->value->flags & F_DOTTED) || (e->value->flags & F_CLOSED)) {
            rc = fail_at(p, k.v[i].line, k.v[i].col,
                         "cannot add keys to %s \"%s\" defined at %d:%d",
                         e->value->flags & F_CLOSED ? "inline table" : "table",
                         show(esc, sizeof(esc), e->key), e->value->line, e->value->col);
            goto out;
        }
        tab = e->value;
    }
    const struct lm_toml_entry *dup = hash_find(p, tab, last->s);
    if (dup) {
        rc = fail_at(p, last->line, last->col, "duplicate key \"%s\" (first defined at %d:%d)",
                     show(esc, sizeof(esc), last->s), dup->line, dup->col);
        goto out;
    }
    if ((rc = parse_value(p, &v)) < 0)
        goto out;
    table_add(p, tab, last->s, last->line, last->col, v);
    last->s = NULL;
out:
    key_path_clear(&k);
    return rc;
}

/* At '[': a [table] or [[array of tables]] header; *cur becomes its table. */
static int
parse_header(struct parser *p, struct lm_toml_value *root, struct lm_toml_value **cur)
{
    int line = p->line, col = p->col;
    struct key_path k;
    char esc[96];
    bool aot = peek_at(p, 1) == '[';
    int rc;

    k.n = 0;
    adv_n(p, aot ? 2 : 1);
    skip_ws(p);
    if ((rc = parse_key(p, &k)) < 0)
        goto out;
    if (peek(p) != ']' || (aot && peek_at(p, 1) != ']')) {
        rc = fail(p, aot ? "expected ']]' after table name" : "expected ']' after table name");
        goto out;
    }
    adv_n(p, aot ? 2 : 1);

    struct lm_toml_value *tab = root;
    for (size_t i = 0; i + 1 < k.n; i++) {
        struct key_part *kp = &k.v[i];
        struct lm_toml_entry *e = hash_find(p, tab, kp->s);
        if (!e) {
            struct lm_toml_value *t = value_new(LM_TOML_TABLE, kp->line, kp->col);
            table_add(p, tab, kp->s, kp->line, kp->col, t);
            kp->s = NULL;
            tab = t;
            continue;
        }
        struct lm_toml_value *v = e->value;
        if (v->type == LM_TOML_ARRAY && (v->flags & F_AOT)) {
            tab = v->u.arr.items[v->u.arr.len - 1];
        } else if (v->type == LM_TOML_TABLE && !(v->flags & F_CLOSED)) {
            tab = v;
        } else {
            rc = fail_at(p, kp->line, kp->col, "key \"%s\" is %s (defined at %d:%d)",
                         show(esc, sizeof(esc), e->key), kind_name(v), e->line, e->col);
            goto out;
        }
    }

    struct key_part *last = &k.v[k.n - 1];
    struct lm_toml_entry *e = hash_find(p, tab, last->s);
    if (aot) {
        struct lm_toml_value *t = value_new(LM_TOML_TABLE, line, col);
        t->flags = F_DEFINED;
        if (!e) {
            struct lm_toml_value *a = value_new(LM_TOML_ARRAY, line, col);
            a->flags = F_AOT;
            table_add(p, tab, last->s, last->line, last->col, a);
            last->s = NULL;
            array_push(a, t);
        } else if (e->value->type == LM_TOML_ARRAY && (e->value->flags & F_AOT)) {
            array_push(e->value, t);
        } else {
            lm_toml_free(t);
            rc = fail_at(p, last->line, last->col,
                         "cannot append to \"%s\": it is %s (defined at %d:%d)",
                         show(esc, sizeof(esc), last->s), kind_name(e->value), e->line,
                         e->col);
            goto out;
        }
        *cur = t;
    } else if (!e) {
        struct lm_toml_value *t = value_new(LM_TOML_TABLE, line, col);
        t->flags = F_DEFINED;
        table_add(p, tab, last->s, last->line, last->col, t);
        last->s = NULL;
        *cur = t;
    } else if (e->value->type == LM_TOML_TABLE && !(e->value->flags & (F_DEFINED | F_DOTTED |
                                                                      F_CLOSED))) {
        e->value->flags |= F_DEFINED;
        e->value->line = line;
        e->value->col = col;
        *cur = e->value;
    } else if (e->value->type == LM_TOML_TABLE) {
        rc = fail_at(p, line, col, "table \"%s\" already defined at %d:%d",
                     show(esc, sizeof(esc), last->s), e->value->line, e->value->col);
    } else {
        rc = fail_at(p, last->line, last->col, "key \"%s\" already defined as %s at %d:%d",
                     show(esc, sizeof(esc), last->s), kind_name(e->value), e->line, e->col);
    }
out:
    key_path_clear(&k);
    return rc;
}

static int
parse_document(struct parser *p, struct lm_toml_value *root)
{
    struct lm_toml_value *cur = root;
    int rc;
    /* A byte order mark is allowed, and only at the very start. */
    if (looking_at(p, "\xEF\xBB\xBF"))
        p->pos = 3;
    for (;;) {
        skip_ws(p);
        int c = peek(p);
        if (c < 0)
            return 0;
        if (c == '[') {
            rc = parse_header(p, root, &cur);
        } else if (c != '#' && c != '\n' && c != '\r') {
            rc = parse_keyval(p, cur);
        } else {
            rc = 0;
        }
        if (rc < 0)
            return rc;
        skip_ws(p);
        if (peek(p) == '#' && (rc = skip_comment(p)) < 0)
            return rc;
        if ((rc = eat_newline(p)) < 0)
            return rc;
        if (rc == 0 && peek(p) >= 0)
            return fail(p, "expected a newline after %s", c == '[' ? "table header" : "value");
    }
}

int
lm_toml_parse(const char *buf, size_t len, struct lm_toml_value **out, int *line, int *col,
              char *msg, size_t msgcap)
{
    struct parser p = {
        .buf = (const unsigned char *)buf,
        .len = len,
        .line = 1,
        .col = 1,
        .msg = msg,
        .msgcap = msgcap,
        .eline = 1,
        .ecol = 1,
    };
    struct lm_toml_value *root = NULL;
    int rc;

    *out = NULL;
    if (msgcap > 0)
        msg[0] = '\0';
    if (len > LM_TOML_MAX_INPUT) {
        rc = fail_at(&p, 1, 1, "input larger than %u bytes", LM_TOML_MAX_INPUT);
        goto out;
    }
    if ((rc = check_utf8(&p)) < 0)
        goto out;
    root = value_new(LM_TOML_TABLE, 1, 1);
    root->flags = F_DEFINED;
    if ((rc = parse_document(&p, root)) < 0) {
        lm_toml_free(root);
        goto out;
    }
    *out = root;
out:
    free(p.slots);
    if (line)
        *line = p.eline;
    if (col)
        *col = p.ecol;
    return rc;
}

/* ---- lookups and helpers ----------------------------------------------- */

const struct lm_toml_entry *
lm_toml_get_entry(const struct lm_toml_value *table, const char *key)
{
    if (!table || table->type != LM_TOML_TABLE || !key)
        return NULL;
    for (size_t i = 0; i < table->u.tab.len; i++)
        if (strcmp(table->u.tab.items[i].key, key) == 0)
            return &table->u.tab.items[i];
    return NULL;
}

const struct lm_toml_value *
lm_toml_get(const struct lm_toml_value *table, const char *key)
{
    const struct lm_toml_entry *e = lm_toml_get_entry(table, key);
    return e ? e->value : NULL;
}

const char *
lm_toml_type_name(enum lm_toml_type t)
{
    switch (t) {
    case LM_TOML_TABLE: return "table";
    case LM_TOML_ARRAY: return "array";
    case LM_TOML_STRING: return "string";
    case LM_TOML_INTEGER: return "integer";
    case LM_TOML_FLOAT: return "float";
    case LM_TOML_BOOL: return "bool";
    case LM_TOML_DATETIME: return "datetime";
    case LM_TOML_DATETIME_LOCAL: return "datetime-local";
    case LM_TOML_DATE_LOCAL: return "date-local";
    case LM_TOML_TIME_LOCAL: return "time-local";
    }
    return "unknown";
}

/* Invalid UTF-8 cannot be written as TOML at all, so it is refused rather
 * than escaped into something that reads back differently. */
int
lm_toml_quote(struct lm_buf *b, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t start = b->len;
    int rc = lm_buf_append(b, "\"", 1);
    for (size_t i = 0; rc == 0 && i < len;) {
        unsigned char c = u[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\t': esc = "\\t"; break;
        case '\n': esc = "\\n"; break;
        case '\f': esc = "\\f"; break;
        case '\r': esc = "\\r"; break;
        default: break;
        }
        if (esc) {
            rc = lm_buf_puts(b, esc);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            rc = lm_buf_printf(b, "\\u%04x", c);
            i++;
        } else {
            size_t n = utf8_len(u + i, len - i);
            if (n == 0) {
                rc = -EINVAL;
                break;
            }
            rc = lm_buf_append(b, u + i, n);
            i += n;
        }
    }
    if (rc == 0)
        rc = lm_buf_append(b, "\"", 1);
    if (rc < 0 && b->data) {
        b->len = start;
        b->data[start] = '\0';
    }
    return rc;
}
