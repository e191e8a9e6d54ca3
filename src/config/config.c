#include "config/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "toml/toml.h"

/* Bounds on strings in the file: generous for any real use, small enough
 * that a name can go into a log line or a gossip record as it is. */
#define NAME_MAX_LEN 64
#define URL_MAX_LEN 2048
#define PATH_MAX_LEN 4096
#define TEXT_MAX_LEN 256
#define GLOB_MAX_LEN 256
#define ENV_MAX_LEN 128
/* Whole units; keeps micro-units well inside int64. */
#define MONEY_MAX_WHOLE 9000000000000LL

#define AT(v) (v)->line, (v)->col

struct ctx {
    struct lm_diags *d;
    struct lm_config *cfg;
    const struct lm_toml_value *auth_v; /* for the cross-section checks */
};

/* A name seen in an array of tables, for the duplicate check. */
struct seen {
    const char *s;
    int line, col;
    size_t order;
};

static const char *const role_names[] = {"gateway", "provider", "relay"};
static const char *const auth_names[] = {"none", "keys", "fep"};
static const char *const route_names[] = {"local_only", "prefer_local", "balance"};
static const char *const trust_names[] = {"private", "friends", "public"};
static const char *const kind_names[] = {"auto", "ollama", "llamacpp", "vllm", "openai"};
static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};

static void err(struct ctx *c, int line, int col, const char *fmt, ...) LM_PRINTF(4, 5);

static void
err(struct ctx *c, int line, int col, const char *fmt, ...)
{
    struct lm_buf b;
    va_list ap;

    lm_buf_init(&b, 0);
    va_start(ap, fmt);
    lm_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    lm_diags_add(c->d, line, col, "%s", b.data ? b.data : "");
    lm_buf_release(&b);
}

/* Text from the file goes into messages escaped and bounded. */
struct esc {
    char s[100];
};

static struct esc
esc(const char *s)
{
    struct esc e;
    lm_escape(e.s, sizeof(e.s), s, strlen(s));
    return e;
}

static const char *
phrase(enum lm_toml_type t)
{
    switch (t) {
    case LM_TOML_TABLE: return "a table";
    case LM_TOML_ARRAY: return "an array";
    case LM_TOML_STRING: return "a string";
    case LM_TOML_INTEGER: return "an integer";
    case LM_TOML_FLOAT: return "a float";
    case LM_TOML_BOOL: return "a boolean";
    case LM_TOML_DATETIME: return "a date-time";
    case LM_TOML_DATETIME_LOCAL: return "a local date-time";
    case LM_TOML_DATE_LOCAL: return "a local date";
    case LM_TOML_TIME_LOCAL: return "a local time";
    }
    return "a value";
}

static int
find_name(const char *s, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return (int)i;
    return -1;
}

/* The closest known name, when it is close enough to be a typo. */
static const char *
suggest(const char *s, const char *const *names, size_t n)
{
    const char *best = NULL;
    int best_d = 1000;

    for (size_t i = 0; i < n; i++) {
        int d = lm_edit_distance(s, names[i]);
        size_t len = strlen(names[i]);
        int limit = len <= 3 ? 1 : len <= 8 ? 2 : 3;
        if (d <= limit && d < best_d) {
            best = names[i];
            best_d = d;
        }
    }
    return best;
}

static void
list_names(char *out, size_t cap, const char *const *names, size_t n)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o < cap; i++) {
        int w = snprintf(out + o, cap - o, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static void
check_keys(struct ctx *c, const struct lm_toml_value *tab, const char *where,
           const char *const *known, size_t n)
{
    for (size_t i = 0; i < tab->u.tab.len; i++) {
        const struct lm_toml_entry *e = &tab->u.tab.items[i];
        if (find_name(e->key, known, n) >= 0)
            continue;
        const char *hint = suggest(e->key, known, n);
        if (hint)
            err(c, e->line, e->col, "unknown key \"%s\" in %s; did you mean \"%s\"?",
                esc(e->key).s, where, hint);
        else
            err(c, e->line, e->col, "unknown key \"%s\" in %s", esc(e->key).s, where);
    }
}

static void
strv_push(struct lm_strv *v, char *s)
{
    v->v = lm_xrealloc(v->v, (v->n + 1) * sizeof(*v->v));
    v->v[v->n++] = s;
}

static void
strv_free(struct lm_strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->v[i]);
    free(v->v);
    v->v = NULL;
    v->n = 0;
}

static void
set_str(char **dst, char *s)
{
    free(*dst);
    *dst = s;
}

/* --- typed access ------------------------------------------------------ */

static const struct lm_toml_value *
get(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
    enum lm_toml_type want)
{
    const struct lm_toml_value *v = lm_toml_get(tab, key);
    if (!v)
        return NULL;
    if (v->type != want) {
        err(c, AT(v), "expected %s for %s.%s, got %s", phrase(want), path, key,
            phrase(v->type));
        return NULL;
    }
    return v;
}

static bool
str_ok(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    if (strlen(v->u.str.ptr) != v->u.str.len) {
        err(c, AT(v), "%s must not contain a NUL character", what);
        return false;
    }
    return true;
}

/* A checker validates one string value and returns its normalized copy,
 * or NULL after recording what is wrong with it. */
typedef char *(*check_fn)(struct ctx *c, const struct lm_toml_value *v, const char *what);

static bool
has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

static char *
chk_text(struct ctx *c, const struct lm_toml_value *v, const char *what, size_t max,
         bool allow_empty)
{
    const char *s = v->u.str.ptr;
    if (!allow_empty && s[0] == '\0') {
        err(c, AT(v), "%s must not be empty", what);
        return NULL;
    }
    if (strlen(s) > max) {
        err(c, AT(v), "%s is too long (at most %zu bytes)", what, max);
        return NULL;
    }
    if (has_ctl(s)) {
        err(c, AT(v), "%s must not contain control characters", what);
        return NULL;
    }
    return lm_xstrdup(s);
}

static char *
chk_label(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    return chk_text(c, v, what, NAME_MAX_LEN, false);
}

static char *
chk_address(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    return chk_text(c, v, what, TEXT_MAX_LEN, false);
}

static char *
chk_path(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    return chk_text(c, v, what, PATH_MAX_LEN, false);
}

static char *
chk_path_or_empty(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    return chk_text(c, v, what, PATH_MAX_LEN, true);
}

/* Endpoint names and FEP ids appear in URLs, metrics labels and logs. */
static char *
chk_ident(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    const char *s = v->u.str.ptr;
    size_t len = strlen(s);
    if (len == 0 || len > NAME_MAX_LEN ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != len) {
        err(c, AT(v), "invalid %s \"%s\"; use 1 to %d of A-Z a-z 0-9 . _ -", what,
            esc(s).s, NAME_MAX_LEN);
        return NULL;
    }
    return lm_xstrdup(s);
}

static char *
chk_listen(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    char host[256];
    int port;
    if (lm_hostport_parse(v->u.str.ptr, host, sizeof(host), &port, false) != 0) {
        err(c, AT(v), "invalid address \"%s\" for %s; expected host:port or [v6]:port "
                      "with port 1..65535", esc(v->u.str.ptr).s, what);
        return NULL;
    }
    return lm_xstrdup(v->u.str.ptr);
}

static char *
lower_hex(const char *s)
{
    char *r = lm_xstrdup(s);
    for (char *p = r; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    return r;
}

static bool
is_hex64(const char *s)
{
    return strlen(s) == 64 && lm_is_hex(s, 64);
}

static char *
chk_hex64(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    if (!is_hex64(v->u.str.ptr)) {
        err(c, AT(v), "%s must be 64 hex digits", what);
        return NULL;
    }
    return lower_hex(v->u.str.ptr);
}

static char *
chk_bootstrap(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    const char *s = v->u.str.ptr;
    const char *at = strchr(s, '@');
    char host[256];
    int port;

    if (!at || at - s != 64 || !lm_is_hex(s, 64) ||
        lm_hostport_parse(at + 1, host, sizeof(host), &port, false) != 0) {
        err(c, AT(v), "invalid bootstrap peer \"%s\" for %s; expected "
                      "\"<64-hex node id>@host:port\"", esc(s).s, what);
        return NULL;
    }
    return lower_hex(s);
}

/* fnmatch(3) patterns: the one mistake it would silently accept is an
 * unclosed bracket (matched literally), which is never what was meant. */
static char *
chk_glob(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    const char *s = v->u.str.ptr;
    size_t len = strlen(s);
    if (len == 0 || len > GLOB_MAX_LEN) {
        err(c, AT(v), "%s must be a pattern of 1 to %d bytes", what, GLOB_MAX_LEN);
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\') {
            if (i + 1 == len) {
                err(c, AT(v), "pattern \"%s\" for %s ends with a lone backslash", esc(s).s,
                    what);
                return NULL;
            }
            i++;
        } else if (s[i] == '[') {
            size_t j = i + 1;
            if (s[j] == '!' || s[j] == '^')
                j++;
            if (s[j] == ']')
                j++;
            while (j < len && s[j] != ']')
                j++;
            if (j >= len) {
                err(c, AT(v), "pattern \"%s\" for %s has an unbalanced '['", esc(s).s, what);
                return NULL;
            }
            i = j;
        }
    }
    return lm_xstrdup(s);
}

static char *
chk_env(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    const char *s = v->u.str.ptr;
    size_t len = strlen(s);
    if (len == 0)
        return lm_xstrdup("");
    if (len > ENV_MAX_LEN || (s[0] >= '0' && s[0] <= '9') ||
        strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != len) {
        err(c, AT(v), "invalid environment variable name \"%s\" for %s", esc(s).s, what);
        return NULL;
    }
    return lm_xstrdup(s);
}

static char *
chk_currency(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    const char *s = v->u.str.ptr;
    size_t len = strlen(s);
    if (len < 2 || len > 12 || strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != len) {
        err(c, AT(v), "invalid currency \"%s\" for %s; use 2 to 12 of A-Z 0-9", esc(s).s,
            what);
        return NULL;
    }
    return lm_xstrdup(s);
}

/* Why a URL is unusable, or NULL. Only what an upstream base URL needs:
 * scheme, host, optional port, optional path. */
static const char *
url_problem(const char *s)
{
    const char *p;
    if (strncmp(s, "http://", 7) == 0)
        p = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        p = s + 8;
    else
        return "must start with http:// or https://";
    if (strlen(s) > URL_MAX_LEN)
        return "is too long";
    for (const char *q = s; *q; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f)
            return "must not contain spaces or control characters";
    if (strpbrk(p, "?#"))
        return "must not have a query or fragment";
    size_t alen = strcspn(p, "/");
    if (alen == 0)
        return "has no host";
    if (memchr(p, '@', alen))
        return "must not contain credentials (use api_key_env)";

    const char *end = p + alen, *port = NULL;
    if (p[0] == '[') {
        const char *rb = memchr(p, ']', alen);
        if (!rb || rb == p + 1)
            return "has an invalid IPv6 host";
        for (const char *q = p + 1; q < rb; q++)
            if (!strchr("0123456789abcdefABCDEF:.", *q))
                return "has an invalid IPv6 host";
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return "has an invalid host";
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', alen);
        const char *hend = colon ? colon : end;
        if (hend == p)
            return "has no host";
        for (const char *q = p; q < hend; q++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", *q))
                return "has an invalid host";
        if (colon)
            port = colon + 1;
    }
    if (port) {
        size_t plen = (size_t)(end - port);
        long n = 0;
        if (plen == 0 || plen > 5)
            return "has an invalid port";
        for (const char *q = port; q < end; q++) {
            if (*q < '0' || *q > '9')
                return "has an invalid port";
            n = n * 10 + (*q - '0');
        }
        if (n < 1 || n > 65535)
            return "has an invalid port";
    }
    return NULL;
}

static char *
chk_url(struct ctx *c, const struct lm_toml_value *v, const char *what)
{
    const char *why = url_problem(v->u.str.ptr);
    if (why) {
        err(c, AT(v), "invalid URL \"%s\" for %s: %s", esc(v->u.str.ptr).s, what, why);
        return NULL;
    }
    return lm_xstrdup(v->u.str.ptr);
}

/* A string key checked by fn; *dst keeps its default when the key is
 * absent or wrong. Returns the value when it was applied. */
static const struct lm_toml_value *
get_checked(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
            check_fn fn, char **dst)
{
    const struct lm_toml_value *v = get(c, tab, path, key, LM_TOML_STRING);
    char what[160];
    snprintf(what, sizeof(what), "%s.%s", path, key);
    if (!v || !str_ok(c, v, what))
        return NULL;
    char *s = fn(c, v, what);
    if (!s)
        return NULL;
    set_str(dst, s);
    return v;
}

static void
missing(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key)
{
    err(c, AT(tab), "%s is missing the required key \"%s\"", path, key);
}

static void
get_strv(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
         check_fn fn, struct lm_strv *dst)
{
    const struct lm_toml_value *v = get(c, tab, path, key, LM_TOML_ARRAY);
    if (!v)
        return;
    struct lm_strv nv = {0};
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const struct lm_toml_value *it = v->u.arr.items[i];
        char what[160];
        snprintf(what, sizeof(what), "%s.%s[%zu]", path, key, i);
        if (it->type != LM_TOML_STRING) {
            err(c, AT(it), "expected a string for %s, got %s", what, phrase(it->type));
            continue;
        }
        if (!str_ok(c, it, what))
            continue;
        char *s = fn(c, it, what);
        if (s)
            strv_push(&nv, s);
    }
    strv_free(dst);
    *dst = nv;
}

static const struct lm_toml_value *
get_int(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
        int64_t lo, int64_t hi, int64_t *dst)
{
    const struct lm_toml_value *v = get(c, tab, path, key, LM_TOML_INTEGER);
    if (!v)
        return NULL;
    if (v->u.integer < lo || v->u.integer > hi) {
        if (hi == INT64_MAX)
            err(c, AT(v), "%s.%s must be at least %lld, got %lld", path, key, (long long)lo,
                (long long)v->u.integer);
        else
            err(c, AT(v), "%s.%s must be between %lld and %lld, got %lld", path, key,
                (long long)lo, (long long)hi, (long long)v->u.integer);
        return NULL;
    }
    *dst = v->u.integer;
    return v;
}

static const struct lm_toml_value *
get_int32(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
          int lo, int hi, int *dst)
{
    int64_t x;
    const struct lm_toml_value *v = get_int(c, tab, path, key, lo, hi, &x);
    if (v)
        *dst = (int)x;
    return v;
}

static void
get_bool(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
         bool *dst)
{
    const struct lm_toml_value *v = get(c, tab, path, key, LM_TOML_BOOL);
    if (v)
        *dst = v->u.boolean;
}

static const struct lm_toml_value *
get_enum(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
         const char *const *names, size_t n, int *dst)
{
    const struct lm_toml_value *v = get(c, tab, path, key, LM_TOML_STRING);
    if (!v)
        return NULL;
    char what[160];
    snprintf(what, sizeof(what), "%s.%s", path, key);
    if (!str_ok(c, v, what))
        return NULL;
    int i = find_name(v->u.str.ptr, names, n);
    if (i < 0) {
        char list[128];
        const char *hint = suggest(v->u.str.ptr, names, n);
        list_names(list, sizeof(list), names, n);
        if (hint)
            err(c, AT(v), "invalid value \"%s\" for %s.%s; expected one of %s; "
                          "did you mean \"%s\"?", esc(v->u.str.ptr).s, path, key, list, hint);
        else
            err(c, AT(v), "invalid value \"%s\" for %s.%s; expected one of %s",
                esc(v->u.str.ptr).s, path, key, list);
        return NULL;
    }
    *dst = i;
    return v;
}

/* --- money ------------------------------------------------------------- */

static const char *
micros_problem(const char *s, lm_micros *out)
{
    int64_t whole = 0, frac = 0;
    int fd = 0;
    const char *p = s;

    if (*p == '-')
        return "must not be negative";
    if (*p < '0' || *p > '9')
        return "is not a decimal amount like \"50.00\"";
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (*p - '0');
        if (whole > MONEY_MAX_WHOLE)
            return "is too large";
    }
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return "is not a decimal amount like \"50.00\"";
        for (; *p >= '0' && *p <= '9'; p++) {
            if (++fd > 6)
                return "has more than 6 decimal places";
            frac = frac * 10 + (*p - '0');
        }
    }
    if (*p != '\0')
        return "is not a decimal amount like \"50.00\"";
    for (; fd < 6; fd++)
        frac *= 10;
    *out = whole * 1000000 + frac;
    return NULL;
}

int
lm_config_micros_parse(const char *s, lm_micros *out)
{
    lm_micros m;
    if (micros_problem(s, &m))
        return -EINVAL;
    *out = m;
    return 0;
}

void
lm_config_micros_format(lm_micros m, char *out, size_t cap)
{
    const char *sign = "";
    uint64_t u = (uint64_t)m;
    if (m < 0) {
        sign = "-";
        u = (uint64_t)0 - u;
    }
    char frac[8];
    snprintf(frac, sizeof(frac), "%06llu", (unsigned long long)(u % 1000000));
    for (int i = 5; i >= 2 && frac[i] == '0'; i--)
        frac[i] = '\0';
    snprintf(out, cap, "%s%llu.%s", sign, (unsigned long long)(u / 1000000), frac);
}

static void
get_money(struct ctx *c, const struct lm_toml_value *tab, const char *path, const char *key,
          lm_micros *dst)
{
    const struct lm_toml_value *v = lm_toml_get(tab, key);
    if (!v)
        return;
    if (v->type == LM_TOML_INTEGER) {
        if (v->u.integer < 0)
            err(c, AT(v), "%s.%s must not be negative", path, key);
        else if (v->u.integer > MONEY_MAX_WHOLE)
            err(c, AT(v), "%s.%s is too large", path, key);
        else
            *dst = v->u.integer * 1000000;
        return;
    }
    if (v->type != LM_TOML_STRING) {
        err(c, AT(v), "expected a decimal string like \"50.00\" for %s.%s, got %s", path, key,
            phrase(v->type));
        return;
    }
    char what[160];
    snprintf(what, sizeof(what), "%s.%s", path, key);
    if (!str_ok(c, v, what))
        return;
    lm_micros m;
    const char *why = micros_problem(v->u.str.ptr, &m);
    if (why)
        err(c, AT(v), "amount \"%s\" for %s %s", esc(v->u.str.ptr).s, what, why);
    else
        *dst = m;
}

/* --- duplicates -------------------------------------------------------- */

static int
seen_cmp(const void *a, const void *b)
{
    const struct seen *x = a, *y = b;
    int r = strcmp(x->s, y->s);
    if (r)
        return r;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Sorting keeps this O(n log n) however many entries a file holds. */
static void
check_unique(struct ctx *c, struct seen *v, size_t n, const char *what, bool show)
{
    if (n < 2)
        return;
    qsort(v, n, sizeof(*v), seen_cmp);
    size_t first = 0;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(v[i].s, v[first].s) != 0) {
            first = i;
            continue;
        }
        if (show)
            err(c, v[i].line, v[i].col, "duplicate %s \"%s\" (first defined at line %d)", what,
                esc(v[i].s).s, v[first].line);
        else
            err(c, v[i].line, v[i].col, "duplicate %s (same as at line %d)", what,
                v[first].line);
    }
}

static void
seen_add(struct seen **v, size_t *n, const char *s, const struct lm_toml_value *at)
{
    *v = lm_xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[*n] = (struct seen){.s = s, .line = at->line, .col = at->col, .order = *n};
    (*n)++;
}

/* --- sections ---------------------------------------------------------- */

/* An array of tables, [[name]]; NULL (after a message) when it is not. */
static const struct lm_toml_value *
table_array(struct ctx *c, const struct lm_toml_value *v, const char *name)
{
    if (v->type != LM_TOML_ARRAY) {
        err(c, AT(v), "expected an array of tables for %s (write [[%s]]), got %s", name, name,
            phrase(v->type));
        return NULL;
    }
    return v;
}

static bool
is_table_item(struct ctx *c, const struct lm_toml_value *it, const char *path)
{
    if (it->type != LM_TOML_TABLE) {
        err(c, AT(it), "expected a table for %s, got %s", path, phrase(it->type));
        return false;
    }
    return true;
}

static void
parse_node(struct ctx *c, const struct lm_toml_value *t)
{
    static const char *const keys[] = {"name", "data_dir", "roles", "log_level", "log_format"};
    struct lm_config *cfg = c->cfg;
    int e;

    check_keys(c, t, "[node]", keys, LM_ARRAY_LEN(keys));
    get_checked(c, t, "node", "name", chk_label, &cfg->node.name);
    get_checked(c, t, "node", "data_dir", chk_path, &cfg->node.data_dir);
    if (get_enum(c, t, "node", "log_level", level_names, LM_ARRAY_LEN(level_names), &e))
        cfg->node.log_level = (enum lm_log_level)e;
    if (get_enum(c, t, "node", "log_format", format_names, LM_ARRAY_LEN(format_names), &e))
        cfg->node.log_format = (enum lm_log_format)e;

    const struct lm_toml_value *v = get(c, t, "node", "roles", LM_TOML_ARRAY);
    if (!v)
        return;
    if (v->u.arr.len == 0) {
        err(c, AT(v), "node.roles must not be empty; use any of gateway, provider, relay");
        return;
    }
    unsigned roles = 0;
    bool ok = true;
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const struct lm_toml_value *it = v->u.arr.items[i];
        if (it->type != LM_TOML_STRING) {
            err(c, AT(it), "expected a string for node.roles[%zu], got %s", i,
                phrase(it->type));
            ok = false;
            continue;
        }
        int r = find_name(it->u.str.ptr, role_names, LM_ARRAY_LEN(role_names));
        if (r < 0 || strlen(it->u.str.ptr) != it->u.str.len) {
            const char *hint = suggest(it->u.str.ptr, role_names, LM_ARRAY_LEN(role_names));
            err(c, AT(it), "invalid role \"%s\" in node.roles; expected any of gateway, "
                           "provider, relay%s%s%s", esc(it->u.str.ptr).s,
                hint ? "; did you mean \"" : "", hint ? hint : "", hint ? "\"?" : "");
            ok = false;
            continue;
        }
        if (roles & (1u << r)) {
            err(c, AT(it), "role \"%s\" is listed twice in node.roles", role_names[r]);
            ok = false;
            continue;
        }
        roles |= 1u << r;
    }
    if (ok)
        cfg->node.roles = roles;
}

static void
parse_key(struct ctx *c, const struct lm_toml_value *t, size_t idx, struct lm_cfg_key *k)
{
    static const char *const keys[] = {"name", "key_sha256", "models", "rpm", "tpm",
                                       "max_concurrent"};
    char path[48];
    snprintf(path, sizeof(path), "gateway.keys[%zu]", idx);
    check_keys(c, t, "[[gateway.keys]]", keys, LM_ARRAY_LEN(keys));
    if (!get_checked(c, t, path, "name", chk_label, &k->name) && !lm_toml_get(t, "name"))
        missing(c, t, path, "name");
    char *hash = NULL;
    if (get_checked(c, t, path, "key_sha256", chk_hex64, &hash))
        memcpy(k->key_sha256, hash, 65);
    else if (!lm_toml_get(t, "key_sha256"))
        missing(c, t, path, "key_sha256");
    free(hash);
    get_strv(c, t, path, "models", chk_glob, &k->models);
    get_int(c, t, path, "rpm", 0, INT64_MAX, &k->rpm);
    get_int(c, t, path, "tpm", 0, INT64_MAX, &k->tpm);
    get_int(c, t, path, "max_concurrent", 0, INT64_MAX, &k->max_concurrent);
}

static void
parse_gateway(struct ctx *c, const struct lm_toml_value *t)
{
    static const char *const keys[] = {"listen",         "auth",
                                       "route",          "max_body_bytes",
                                       "request_timeout_s", "first_token_timeout_s",
                                       "keys"};
    struct lm_config *cfg = c->cfg;
    int e;

    check_keys(c, t, "[gateway]", keys, LM_ARRAY_LEN(keys));
    get_checked(c, t, "gateway", "listen", chk_listen, &cfg->gateway.listen);
    c->auth_v = get_enum(c, t, "gateway", "auth", auth_names, LM_ARRAY_LEN(auth_names), &e);
    if (c->auth_v)
        cfg->gateway.auth = (enum lm_auth_mode)e;
    if (get_enum(c, t, "gateway", "route", route_names, LM_ARRAY_LEN(route_names), &e))
        cfg->gateway.route = (enum lm_route)e;
    get_int(c, t, "gateway", "max_body_bytes", 1024, 1 << 30, &cfg->gateway.max_body_bytes);
    bool req_ok = get_int32(c, t, "gateway", "request_timeout_s", 1, 86400,
                            &cfg->gateway.request_timeout_s) != NULL;
    bool req_bad = !req_ok && lm_toml_get(t, "request_timeout_s");
    int hi = req_bad ? 86400 : cfg->gateway.request_timeout_s;
    const struct lm_toml_value *ft = lm_toml_get(t, "first_token_timeout_s");
    if (ft && ft->type == LM_TOML_INTEGER && ft->u.integer > hi && ft->u.integer <= 86400) {
        err(c, AT(ft), "gateway.first_token_timeout_s (%lld) must not exceed "
                       "gateway.request_timeout_s (%d)", (long long)ft->u.integer, hi);
    } else {
        get_int32(c, t, "gateway", "first_token_timeout_s", 1, 86400,
                  &cfg->gateway.first_token_timeout_s);
    }
    /* Unset, it follows a shorter request timeout rather than contradict it. */
    if (!ft && cfg->gateway.first_token_timeout_s > cfg->gateway.request_timeout_s)
        cfg->gateway.first_token_timeout_s = cfg->gateway.request_timeout_s;

    const struct lm_toml_value *kv = lm_toml_get(t, "keys");
    if (!kv || !table_array(c, kv, "gateway.keys"))
        return;
    struct seen *names = NULL, *hashes = NULL;
    size_t nn = 0, nh = 0;
    cfg->gateway.keys = lm_xcalloc(kv->u.arr.len, sizeof(*cfg->gateway.keys));
    for (size_t i = 0; i < kv->u.arr.len; i++) {
        const struct lm_toml_value *it = kv->u.arr.items[i];
        char path[48];
        snprintf(path, sizeof(path), "gateway.keys[%zu]", i);
        if (!is_table_item(c, it, path))
            continue;
        struct lm_cfg_key *k = &cfg->gateway.keys[cfg->gateway.n_keys++];
        parse_key(c, it, i, k);
        if (k->name)
            seen_add(&names, &nn, k->name, lm_toml_get(it, "name"));
        if (k->key_sha256[0])
            seen_add(&hashes, &nh, k->key_sha256, lm_toml_get(it, "key_sha256"));
    }
    check_unique(c, names, nn, "key name", true);
    check_unique(c, hashes, nh, "key_sha256", false);
    free(names);
    free(hashes);
}

static void
parse_admin(struct ctx *c, const struct lm_toml_value *t)
{
    static const char *const keys[] = {"listen", "token_file"};
    check_keys(c, t, "[admin]", keys, LM_ARRAY_LEN(keys));
    const struct lm_toml_value *listen =
        get_checked(c, t, "admin", "listen", chk_listen, &c->cfg->admin.listen);
    get_checked(c, t, "admin", "token_file", chk_path_or_empty, &c->cfg->admin.token_file);
    /* The admin API can reload the config and will grow more powers: open to
     * the network it must at least ask for a token. */
    if (listen && !*c->cfg->admin.token_file && !lm_hostport_is_loopback(c->cfg->admin.listen))
        err(c, AT(listen),
            "admin.listen %s is not a loopback address: set admin.token_file, or listen on "
            "127.0.0.1",
            esc(c->cfg->admin.listen).s);
}

static int
strp_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
parse_mesh(struct ctx *c, const struct lm_toml_value *t)
{
    static const char *const keys[] = {"listen",        "advertise",    "bootstrap",
                                       "trust",         "trusted_peers", "denied_peers",
                                       "max_peers",     "gossip_interval_ms"};
    struct lm_config *cfg = c->cfg;
    int e;

    check_keys(c, t, "[mesh]", keys, LM_ARRAY_LEN(keys));
    get_checked(c, t, "mesh", "listen", chk_listen, &cfg->mesh.listen);
    get_strv(c, t, "mesh", "advertise", chk_listen, &cfg->mesh.advertise);
    get_strv(c, t, "mesh", "bootstrap", chk_bootstrap, &cfg->mesh.bootstrap);
    if (get_enum(c, t, "mesh", "trust", trust_names, LM_ARRAY_LEN(trust_names), &e))
        cfg->mesh.trust = (enum lm_trust)e;
    get_strv(c, t, "mesh", "trusted_peers", chk_hex64, &cfg->mesh.trusted_peers);
    get_strv(c, t, "mesh", "denied_peers", chk_hex64, &cfg->mesh.denied_peers);
    get_int32(c, t, "mesh", "max_peers", 1, 4096, &cfg->mesh.max_peers);
    get_int32(c, t, "mesh", "gossip_interval_ms", 50, 60000, &cfg->mesh.gossip_interval_ms);

    /* A peer both trusted and denied is a contradiction, not a priority rule. */
    const struct lm_toml_value *dv = lm_toml_get(t, "denied_peers");
    size_t nt = cfg->mesh.trusted_peers.n;
    if (!dv || dv->type != LM_TOML_ARRAY || nt == 0)
        return;
    char **sorted = lm_xmalloc(nt * sizeof(*sorted));
    memcpy(sorted, cfg->mesh.trusted_peers.v, nt * sizeof(*sorted));
    qsort(sorted, nt, sizeof(*sorted), strp_cmp);
    for (size_t i = 0; i < dv->u.arr.len; i++) {
        const struct lm_toml_value *it = dv->u.arr.items[i];
        if (it->type != LM_TOML_STRING || !is_hex64(it->u.str.ptr))
            continue;
        char *id = lower_hex(it->u.str.ptr);
        if (bsearch(&id, sorted, nt, sizeof(*sorted), strp_cmp))
            err(c, AT(it), "peer %.16s... is in both mesh.trusted_peers and "
                           "mesh.denied_peers", id);
        free(id);
    }
    free(sorted);
}

static void
parse_discovery(struct ctx *c, const struct lm_toml_value *t)
{
    static const char *const keys[] = {"scan_local"};
    check_keys(c, t, "[discovery]", keys, LM_ARRAY_LEN(keys));
    get_bool(c, t, "discovery", "scan_local", &c->cfg->discovery.scan_local);
}

static void
parse_endpoint(struct ctx *c, const struct lm_toml_value *t, const char *path,
               struct lm_cfg_endpoint *ep)
{
    static const char *const keys[] = {"name",           "url",            "kind",
                                       "max_concurrent", "models_include", "models_exclude",
                                       "api_key_env",    "share"};
    int e;

    ep->kind = LM_KIND_AUTO;
    ep->max_concurrent = 4;
    strv_push(&ep->models_include, lm_xstrdup("*"));
    ep->api_key_env = lm_xstrdup("");
    ep->share = true;

    check_keys(c, t, "[[endpoints]]", keys, LM_ARRAY_LEN(keys));
    if (!get_checked(c, t, path, "name", chk_ident, &ep->name) && !lm_toml_get(t, "name"))
        missing(c, t, path, "name");
    if (!get_checked(c, t, path, "url", chk_url, &ep->url) && !lm_toml_get(t, "url"))
        missing(c, t, path, "url");
    if (get_enum(c, t, path, "kind", kind_names, LM_ARRAY_LEN(kind_names), &e))
        ep->kind = (enum lm_endpoint_kind)e;
    get_int32(c, t, path, "max_concurrent", 1, 1024, &ep->max_concurrent);
    get_strv(c, t, path, "models_include", chk_glob, &ep->models_include);
    get_strv(c, t, path, "models_exclude", chk_glob, &ep->models_exclude);
    get_checked(c, t, path, "api_key_env", chk_env, &ep->api_key_env);
    get_bool(c, t, path, "share", &ep->share);
}

static void
parse_fep(struct ctx *c, const struct lm_toml_value *t, const char *path, struct lm_cfg_fep *f)
{
    static const char *const keys[] = {"id", "url", "public_key", "max_unpaid"};

    f->max_unpaid = 50 * 1000000LL;
    check_keys(c, t, "[[feps]]", keys, LM_ARRAY_LEN(keys));
    if (!get_checked(c, t, path, "id", chk_ident, &f->id) && !lm_toml_get(t, "id"))
        missing(c, t, path, "id");
    if (!get_checked(c, t, path, "url", chk_url, &f->url) && !lm_toml_get(t, "url"))
        missing(c, t, path, "url");
    char *key = NULL;
    if (get_checked(c, t, path, "public_key", chk_hex64, &key))
        memcpy(f->public_key, key, 65);
    else if (!lm_toml_get(t, "public_key"))
        missing(c, t, path, "public_key");
    free(key);
    get_money(c, t, path, "max_unpaid", &f->max_unpaid);
}

static void
parse_payout(struct ctx *c, const struct lm_toml_value *t, const char *path,
             struct lm_cfg_payout *p)
{
    static const char *const keys[] = {"currency", "address", "min_payout"};

    check_keys(c, t, "[[payouts]]", keys, LM_ARRAY_LEN(keys));
    if (!get_checked(c, t, path, "currency", chk_currency, &p->currency) &&
        !lm_toml_get(t, "currency"))
        missing(c, t, path, "currency");
    if (!get_checked(c, t, path, "address", chk_address, &p->address) &&
        !lm_toml_get(t, "address"))
        missing(c, t, path, "address");
    get_money(c, t, path, "min_payout", &p->min_payout);
}

static void
parse_price(struct ctx *c, const struct lm_toml_value *t, const char *path,
            struct lm_cfg_price *p)
{
    static const char *const keys[] = {"model", "per_1k_in", "per_1k_out"};

    check_keys(c, t, "[[prices]]", keys, LM_ARRAY_LEN(keys));
    if (!get_checked(c, t, path, "model", chk_glob, &p->model) && !lm_toml_get(t, "model"))
        missing(c, t, path, "model");
    get_money(c, t, path, "per_1k_in", &p->per_1k_in);
    get_money(c, t, path, "per_1k_out", &p->per_1k_out);
}

static void
parse_endpoints(struct ctx *c, const struct lm_toml_value *v)
{
    struct lm_config *cfg = c->cfg;
    struct seen *names = NULL;
    size_t nn = 0;

    cfg->endpoints = lm_xcalloc(v->u.arr.len, sizeof(*cfg->endpoints));
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const struct lm_toml_value *it = v->u.arr.items[i];
        char path[48];
        snprintf(path, sizeof(path), "endpoints[%zu]", i);
        if (!is_table_item(c, it, path))
            continue;
        struct lm_cfg_endpoint *ep = &cfg->endpoints[cfg->n_endpoints++];
        parse_endpoint(c, it, path, ep);
        if (ep->name)
            seen_add(&names, &nn, ep->name, lm_toml_get(it, "name"));
    }
    check_unique(c, names, nn, "endpoint name", true);
    free(names);
}

static void
parse_feps(struct ctx *c, const struct lm_toml_value *v)
{
    struct lm_config *cfg = c->cfg;
    struct seen *ids = NULL;
    size_t n = 0;

    cfg->feps = lm_xcalloc(v->u.arr.len, sizeof(*cfg->feps));
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const struct lm_toml_value *it = v->u.arr.items[i];
        char path[48];
        snprintf(path, sizeof(path), "feps[%zu]", i);
        if (!is_table_item(c, it, path))
            continue;
        struct lm_cfg_fep *f = &cfg->feps[cfg->n_feps++];
        parse_fep(c, it, path, f);
        if (f->id)
            seen_add(&ids, &n, f->id, lm_toml_get(it, "id"));
    }
    check_unique(c, ids, n, "fep id", true);
    free(ids);
}

static void
parse_payouts(struct ctx *c, const struct lm_toml_value *v)
{
    struct lm_config *cfg = c->cfg;
    struct seen *cur = NULL;
    size_t n = 0;

    cfg->payouts = lm_xcalloc(v->u.arr.len, sizeof(*cfg->payouts));
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const struct lm_toml_value *it = v->u.arr.items[i];
        char path[48];
        snprintf(path, sizeof(path), "payouts[%zu]", i);
        if (!is_table_item(c, it, path))
            continue;
        struct lm_cfg_payout *p = &cfg->payouts[cfg->n_payouts++];
        parse_payout(c, it, path, p);
        if (p->currency)
            seen_add(&cur, &n, p->currency, lm_toml_get(it, "currency"));
    }
    check_unique(c, cur, n, "payout currency", true);
    free(cur);
}

static void
parse_prices(struct ctx *c, const struct lm_toml_value *v)
{
    struct lm_config *cfg = c->cfg;
    struct seen *models = NULL;
    size_t n = 0;

    cfg->prices = lm_xcalloc(v->u.arr.len, sizeof(*cfg->prices));
    for (size_t i = 0; i < v->u.arr.len; i++) {
        const struct lm_toml_value *it = v->u.arr.items[i];
        char path[48];
        snprintf(path, sizeof(path), "prices[%zu]", i);
        if (!is_table_item(c, it, path))
            continue;
        struct lm_cfg_price *p = &cfg->prices[cfg->n_prices++];
        parse_price(c, it, path, p);
        if (p->model)
            seen_add(&models, &n, p->model, lm_toml_get(it, "model"));
    }
    check_unique(c, models, n, "price for model", true);
    free(models);
}

static const char *const section_names[] = {"node",      "gateway",   "admin",
                                            "mesh",      "discovery", "endpoints",
                                            "feps",      "payouts",   "prices"};

static void
parse_root(struct ctx *c, const struct lm_toml_value *root)
{
    for (size_t i = 0; i < root->u.tab.len; i++) {
        const struct lm_toml_entry *e = &root->u.tab.items[i];
        const struct lm_toml_value *v = e->value;
        int s = find_name(e->key, section_names, LM_ARRAY_LEN(section_names));
        if (s < 0) {
            const char *hint = suggest(e->key, section_names, LM_ARRAY_LEN(section_names));
            bool tab = v->type == LM_TOML_TABLE || v->type == LM_TOML_ARRAY;
            if (tab && hint)
                err(c, e->line, e->col, "unknown section [%s]; did you mean [%s]?",
                    esc(e->key).s, hint);
            else if (tab)
                err(c, e->line, e->col, "unknown section [%s]", esc(e->key).s);
            else
                err(c, e->line, e->col, "unknown key \"%s\" at top level; keys belong in "
                                        "a section such as [node]", esc(e->key).s);
            continue;
        }
        if (s <= 4 && v->type != LM_TOML_TABLE) {
            err(c, AT(v), "expected a table for %s (write [%s]), got %s", e->key, e->key,
                phrase(v->type));
            continue;
        }
        switch (s) {
        case 0: parse_node(c, v); break;
        case 1: parse_gateway(c, v); break;
        case 2: parse_admin(c, v); break;
        case 3: parse_mesh(c, v); break;
        case 4: parse_discovery(c, v); break;
        default:
            if (!table_array(c, v, e->key))
                break;
            if (s == 5)
                parse_endpoints(c, v);
            else if (s == 6)
                parse_feps(c, v);
            else if (s == 7)
                parse_payouts(c, v);
            else
                parse_prices(c, v);
        }
    }

    struct lm_config *cfg = c->cfg;
    if (c->auth_v && cfg->gateway.auth == LM_AUTH_KEYS && cfg->gateway.n_keys == 0)
        err(c, AT(c->auth_v), "gateway.auth = \"keys\" needs at least one [[gateway.keys]]");
    if (c->auth_v && cfg->gateway.auth == LM_AUTH_FEP && cfg->n_feps == 0)
        err(c, AT(c->auth_v), "gateway.auth = \"fep\" needs at least one [[feps]]");
}

/* --- public ------------------------------------------------------------ */

struct lm_config *
lm_config_defaults(void)
{
    struct lm_config *cfg = lm_xcalloc(1, sizeof(*cfg));
    char host[256];

    cfg->path = lm_xstrdup("");
    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0' || has_ctl(host))
        snprintf(host, sizeof(host), "labman");
    host[NAME_MAX_LEN] = '\0';
    cfg->node.name = lm_xstrdup(host);
    cfg->node.data_dir = lm_xstrdup("/var/lib/labman");
    cfg->node.roles = LM_ROLE_GATEWAY | LM_ROLE_PROVIDER;
    cfg->node.log_level = LM_LOG_INFO;
    cfg->node.log_format = LM_LOG_TEXT;

    cfg->gateway.listen = lm_xstrdup("127.0.0.1:31145");
    cfg->gateway.auth = LM_AUTH_NONE;
    cfg->gateway.route = LM_ROUTE_PREFER_LOCAL;
    cfg->gateway.max_body_bytes = 8388608;
    cfg->gateway.request_timeout_s = 600;
    cfg->gateway.first_token_timeout_s = 120;

    cfg->admin.listen = lm_xstrdup("127.0.0.1:8145");
    cfg->admin.token_file = lm_xstrdup("");

    cfg->mesh.listen = lm_xstrdup("0.0.0.0:41145");
    cfg->mesh.trust = LM_TRUST_PRIVATE;
    cfg->mesh.max_peers = 64;
    cfg->mesh.gossip_interval_ms = 1000;

    cfg->discovery.scan_local = true;
    return cfg;
}

int
lm_config_parse(const char *buf, size_t len, const char *name, struct lm_config **out,
                struct lm_diags *diags)
{
    struct lm_diags local = {0};
    struct lm_toml_value *root = NULL;
    struct lm_config *cfg = NULL;
    int line = 0, col = 0, rc;
    char msg[256];

    *out = NULL;
    if (!diags)
        diags = &local;
    size_t before = diags->n;

    if (len > LM_CONFIG_MAX_BYTES) {
        lm_diags_add(diags, 0, 0, "file is larger than %u bytes", LM_CONFIG_MAX_BYTES);
        rc = -EINVAL;
        goto out;
    }
    msg[0] = '\0';
    rc = lm_toml_parse(buf, len, &root, &line, &col, msg, sizeof(msg));
    if (rc) {
        lm_diags_add(diags, line, col, "%s", msg[0] ? msg : "invalid TOML");
        rc = -EINVAL;
        goto out;
    }

    cfg = lm_config_defaults();
    set_str(&cfg->path, lm_xstrdup(name ? name : ""));
    struct ctx c = {.d = diags, .cfg = cfg};
    parse_root(&c, root);

    /* Sort only what this call added; the caller's earlier entries stay. */
    struct lm_diags mine = {.v = diags->v + before, .n = diags->n - before};
    lm_diags_sort(&mine);
    if (diags->n > before) {
        rc = -EINVAL;
        goto out;
    }
    *out = cfg;
    cfg = NULL;
    rc = 0;
out:
    lm_config_free(cfg);
    lm_toml_free(root);
    lm_diags_clear(&local);
    return rc;
}

int
lm_config_load(const char *path, struct lm_config **out, struct lm_diags *diags)
{
    struct lm_diags local = {0};
    char *buf = NULL;
    size_t len = 0;

    *out = NULL;
    if (!diags)
        diags = &local;
    int rc = lm_file_read(path, LM_CONFIG_MAX_BYTES, &buf, &len);
    if (rc == -EFBIG) {
        lm_diags_add(diags, 0, 0, "cannot read: file is larger than %u bytes",
                     LM_CONFIG_MAX_BYTES);
        rc = -EINVAL;
    } else if (rc) {
        lm_diags_add(diags, 0, 0, "cannot read: %s", strerror(-rc));
        rc = -EINVAL;
    } else {
        rc = lm_config_parse(buf, len, path, out, diags);
    }
    free(buf);
    lm_diags_clear(&local);
    return rc;
}

void
lm_config_free(struct lm_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->node.name);
    free(cfg->node.data_dir);
    free(cfg->gateway.listen);
    for (size_t i = 0; i < cfg->gateway.n_keys; i++) {
        free(cfg->gateway.keys[i].name);
        strv_free(&cfg->gateway.keys[i].models);
    }
    free(cfg->gateway.keys);
    free(cfg->admin.listen);
    free(cfg->admin.token_file);
    free(cfg->mesh.listen);
    strv_free(&cfg->mesh.advertise);
    strv_free(&cfg->mesh.bootstrap);
    strv_free(&cfg->mesh.trusted_peers);
    strv_free(&cfg->mesh.denied_peers);
    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        struct lm_cfg_endpoint *ep = &cfg->endpoints[i];
        free(ep->name);
        free(ep->url);
        strv_free(&ep->models_include);
        strv_free(&ep->models_exclude);
        free(ep->api_key_env);
    }
    free(cfg->endpoints);
    for (size_t i = 0; i < cfg->n_feps; i++) {
        free(cfg->feps[i].id);
        free(cfg->feps[i].url);
    }
    free(cfg->feps);
    for (size_t i = 0; i < cfg->n_payouts; i++) {
        free(cfg->payouts[i].currency);
        free(cfg->payouts[i].address);
    }
    free(cfg->payouts);
    for (size_t i = 0; i < cfg->n_prices; i++)
        free(cfg->prices[i].model);
    free(cfg->prices);
    free(cfg);
}

/* --- output ------------------------------------------------------------ */

/* Appends stop at the first failure (the buffer's cap); rc remembers it. */
struct out {
    struct lm_buf *b;
    int rc;
};

static void put(struct out *o, const char *fmt, ...) LM_PRINTF(2, 3);

static void
put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    if (o->rc)
        return;
    va_start(ap, fmt);
    o->rc = lm_buf_vprintf(o->b, fmt, ap);
    va_end(ap);
}

static void
put_str(struct out *o, const char *key, const char *s)
{
    put(o, "%s = ", key);
    if (!o->rc)
        o->rc = lm_toml_quote(o->b, s ? s : "", s ? strlen(s) : 0);
    put(o, "\n");
}

static void
put_strv(struct out *o, const char *key, const struct lm_strv *v)
{
    put(o, "%s = [", key);
    for (size_t i = 0; i < v->n; i++) {
        if (i)
            put(o, ", ");
        if (!o->rc)
            o->rc = lm_toml_quote(o->b, v->v[i], strlen(v->v[i]));
    }
    put(o, "]\n");
}

static void
put_money(struct out *o, const char *key, lm_micros m)
{
    char s[32];
    lm_config_micros_format(m, s, sizeof(s));
    put_str(o, key, s);
}

int
lm_config_to_toml(const struct lm_config *cfg, bool mask, struct lm_buf *b)
{
    struct out o = {.b = b, .rc = 0};
    struct lm_strv roles = {0};
    char *rv[3];

    put(&o, "# labman effective configuration (defaults included)%s\n\n",
        mask ? "; key hashes masked" : "");
    put(&o, "[node]\n");
    put_str(&o, "name", cfg->node.name);
    put_str(&o, "data_dir", cfg->node.data_dir);
    for (size_t i = 0; i < LM_ARRAY_LEN(role_names); i++)
        if (cfg->node.roles & (1u << i))
            rv[roles.n++] = (char *)role_names[i];
    roles.v = rv;
    put_strv(&o, "roles", &roles);
    put_str(&o, "log_level", lm_log_level_name(cfg->node.log_level));
    put_str(&o, "log_format", format_names[cfg->node.log_format == LM_LOG_JSON]);

    put(&o, "\n[gateway]\n");
    put_str(&o, "listen", cfg->gateway.listen);
    put_str(&o, "auth", lm_config_auth_name(cfg->gateway.auth));
    put_str(&o, "route", lm_config_route_name(cfg->gateway.route));
    put(&o, "max_body_bytes = %lld\n", (long long)cfg->gateway.max_body_bytes);
    put(&o, "request_timeout_s = %d\n", cfg->gateway.request_timeout_s);
    put(&o, "first_token_timeout_s = %d\n", cfg->gateway.first_token_timeout_s);
    for (size_t i = 0; i < cfg->gateway.n_keys; i++) {
        const struct lm_cfg_key *k = &cfg->gateway.keys[i];
        put(&o, "\n[[gateway.keys]]\n");
        put_str(&o, "name", k->name);
        put_str(&o, "key_sha256", mask ? "********" : k->key_sha256);
        put_strv(&o, "models", &k->models);
        put(&o, "rpm = %lld\ntpm = %lld\nmax_concurrent = %lld\n", (long long)k->rpm,
            (long long)k->tpm, (long long)k->max_concurrent);
    }

    put(&o, "\n[admin]\n");
    put_str(&o, "listen", cfg->admin.listen);
    put_str(&o, "token_file", cfg->admin.token_file);

    put(&o, "\n[mesh]\n");
    put_str(&o, "listen", cfg->mesh.listen);
    put_strv(&o, "advertise", &cfg->mesh.advertise);
    put_strv(&o, "bootstrap", &cfg->mesh.bootstrap);
    put_str(&o, "trust", lm_config_trust_name(cfg->mesh.trust));
    put_strv(&o, "trusted_peers", &cfg->mesh.trusted_peers);
    put_strv(&o, "denied_peers", &cfg->mesh.denied_peers);
    put(&o, "max_peers = %d\n", cfg->mesh.max_peers);
    put(&o, "gossip_interval_ms = %d\n", cfg->mesh.gossip_interval_ms);

    put(&o, "\n[discovery]\n");
    put(&o, "scan_local = %s\n", cfg->discovery.scan_local ? "true" : "false");

    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        const struct lm_cfg_endpoint *ep = &cfg->endpoints[i];
        put(&o, "\n[[endpoints]]\n");
        put_str(&o, "name", ep->name);
        put_str(&o, "url", ep->url);
        put_str(&o, "kind", lm_config_kind_name(ep->kind));
        put(&o, "max_concurrent = %d\n", ep->max_concurrent);
        put_strv(&o, "models_include", &ep->models_include);
        put_strv(&o, "models_exclude", &ep->models_exclude);
        put_str(&o, "api_key_env", ep->api_key_env);
        put(&o, "share = %s\n", ep->share ? "true" : "false");
    }
    for (size_t i = 0; i < cfg->n_feps; i++) {
        const struct lm_cfg_fep *f = &cfg->feps[i];
        put(&o, "\n[[feps]]\n");
        put_str(&o, "id", f->id);
        put_str(&o, "url", f->url);
        put_str(&o, "public_key", f->public_key);
        put_money(&o, "max_unpaid", f->max_unpaid);
    }
    for (size_t i = 0; i < cfg->n_payouts; i++) {
        const struct lm_cfg_payout *p = &cfg->payouts[i];
        put(&o, "\n[[payouts]]\n");
        put_str(&o, "currency", p->currency);
        put_str(&o, "address", p->address);
        put_money(&o, "min_payout", p->min_payout);
    }
    for (size_t i = 0; i < cfg->n_prices; i++) {
        const struct lm_cfg_price *p = &cfg->prices[i];
        put(&o, "\n[[prices]]\n");
        put_str(&o, "model", p->model);
        put_money(&o, "per_1k_in", p->per_1k_in);
        put_money(&o, "per_1k_out", p->per_1k_out);
    }
    return o.rc;
}

static void
changed(struct lm_buf *out, int *n, const char *name, const char *a, const char *b)
{
    if (strcmp(a ? a : "", b ? b : "") == 0)
        return;
    if (*n)
        lm_buf_puts(out, ", ");
    lm_buf_puts(out, name);
    (*n)++;
}

int
lm_config_restart_needed(const struct lm_config *old, const struct lm_config *new_cfg,
                         struct lm_buf *out)
{
    int n = 0;
    changed(out, &n, "node.data_dir", old->node.data_dir, new_cfg->node.data_dir);
    changed(out, &n, "gateway.listen", old->gateway.listen, new_cfg->gateway.listen);
    changed(out, &n, "admin.listen", old->admin.listen, new_cfg->admin.listen);
    changed(out, &n, "mesh.listen", old->mesh.listen, new_cfg->mesh.listen);
    return n;
}

const char *
lm_config_role_name(enum lm_role r)
{
    switch (r) {
    case LM_ROLE_GATEWAY: return "gateway";
    case LM_ROLE_PROVIDER: return "provider";
    case LM_ROLE_RELAY: return "relay";
    }
    return "?";
}

const char *
lm_config_auth_name(enum lm_auth_mode a)
{
    return (unsigned)a < LM_ARRAY_LEN(auth_names) ? auth_names[a] : "?";
}

const char *
lm_config_route_name(enum lm_route r)
{
    return (unsigned)r < LM_ARRAY_LEN(route_names) ? route_names[r] : "?";
}

const char *
lm_config_trust_name(enum lm_trust t)
{
    return (unsigned)t < LM_ARRAY_LEN(trust_names) ? trust_names[t] : "?";
}

const char *
lm_config_kind_name(enum lm_endpoint_kind k)
{
    return (unsigned)k < LM_ARRAY_LEN(kind_names) ? kind_names[k] : "?";
}
