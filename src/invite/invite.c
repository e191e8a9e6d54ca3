/* invite: tokens, and the [mesh] edit that `labman join` makes.
 *
 * The edit works on the text, not on a re-serialized tree, so that an
 * operator's comments and layout survive. The TOML parser tells where things
 * start (line:column); where a value ends is found by a small scanner that
 * only has to be right for text the parser already accepted. The result is
 * parsed again and compared with the intended config before anyone uses it,
 * so a scanner mistake can refuse a join but never write a wrong file. */
#include "invite/invite.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "config/config.h"
#include "toml/toml.h"

static void LM_PRINTF(3, 4)
set_err(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (!err || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

static void
lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
}

/* ---- addresses ------------------------------------------------------------ */

/* Config form ("host:port", "[v6]:port") checked, lowercased into out. */
static int
norm_addr(const char *addr, char out[LM_INVITE_ADDR_MAX + 1])
{
    char host[LM_INVITE_ADDR_MAX + 1];
    int port;
    size_t len = strlen(addr);
    if (len == 0 || len > LM_INVITE_ADDR_MAX ||
        lm_hostport_parse(addr, host, sizeof(host), &port, false) < 0)
        return -EINVAL;
    if (addr[0] == '[') {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, host, &a6) != 1)
            return -EINVAL;
        if (IN6_IS_ADDR_UNSPECIFIED(&a6))
            return -EADDRNOTAVAIL;
    } else if (strcmp(host, "0.0.0.0") == 0) {
        return -EADDRNOTAVAIL;
    }
    /* Zero-filled: the struct holding it is compared and copied whole. */
    memset(out, 0, LM_INVITE_ADDR_MAX + 1);
    memcpy(out, addr, len);
    lower(out);
    return 0;
}

int
lm_invite_init(struct lm_invite *inv, const char *node_id)
{
    memset(inv, 0, sizeof(*inv));
    if (!node_id || strlen(node_id) != LM_NODE_ID_LEN || !lm_is_hex(node_id, LM_NODE_ID_LEN))
        return -EINVAL;
    memcpy(inv->node_id, node_id, LM_NODE_ID_LEN + 1);
    lower(inv->node_id);
    return 0;
}

int
lm_invite_add_addr(struct lm_invite *inv, const char *addr)
{
    char a[LM_INVITE_ADDR_MAX + 1];
    int rc = addr ? norm_addr(addr, a) : -EINVAL;
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < inv->n_addrs; i++)
        if (strcmp(inv->addrs[i], a) == 0)
            return 0;
    if (inv->n_addrs == LM_INVITE_MAX_ADDRS)
        return -ENOSPC;
    memcpy(inv->addrs[inv->n_addrs++], a, sizeof(a));
    return 0;
}

/* ---- tokens --------------------------------------------------------------- */

static void
checksum(const char *body, size_t len, char out[LM_INVITE_CHECK_LEN + 1])
{
    unsigned char h[crypto_generichash_BYTES_MIN];
    if (sodium_init() < 0) /* idempotent; libsodium wants it before any use */
        abort();
    crypto_generichash(h, sizeof(h), (const unsigned char *)body, len, NULL, 0);
    lm_hex_encode(out, h, LM_INVITE_CHECK_LEN / 2);
}

int
lm_invite_format(const struct lm_invite *inv, char *out, size_t cap)
{
    struct lm_buf b;
    char check[LM_INVITE_CHECK_LEN + 1];

    /* The buffer's limit is the token's: any failed append means too long. */
    lm_buf_init(&b, LM_INVITE_TOKEN_MAX);
    int rc = lm_buf_printf(&b, "%s%s", LM_INVITE_PREFIX, inv->node_id);
    for (size_t i = 0; rc == 0 && i < inv->n_addrs; i++) {
        const char *a = inv->addrs[i];
        const char *end = a[0] == '[' ? strchr(a, ']') : NULL;
        rc = lm_buf_puts(&b, i == 0 ? "@" : ",");
        if (rc == 0 && end) /* no brackets: "[v6]:port" becomes "v6:port" */
            rc = lm_buf_append(&b, a + 1, (size_t)(end - a - 1));
        if (rc == 0)
            rc = lm_buf_puts(&b, end ? end + 1 : a);
    }
    if (rc == 0) {
        checksum(b.data, b.len, check);
        rc = lm_buf_printf(&b, "/%s", check);
    }
    if (rc == 0 && b.len + 1 <= cap)
        memcpy(out, b.data, b.len + 1);
    else
        rc = -E2BIG;
    lm_buf_release(&b);
    return rc;
}

/* One address as a token writes it, into config form. */
static int
token_addr(const char *s, size_t len, char out[LM_INVITE_ADDR_MAX + 1])
{
    char tmp[LM_INVITE_ADDR_MAX + 3];
    if (len == 0 || len > LM_INVITE_ADDR_MAX)
        return -EINVAL;
    const char *first = memchr(s, ':', len);
    const char *last = NULL;
    for (size_t i = len; i-- > 0;)
        if (s[i] == ':') {
            last = s + i;
            break;
        }
    if (first && first != last && s[0] != '[') {
        /* IPv6 without brackets: the port follows the last ':'. */
        size_t hl = (size_t)(last - s);
        if (len + 2 > LM_INVITE_ADDR_MAX)
            return -EINVAL;
        tmp[0] = '[';
        memcpy(tmp + 1, s, hl);
        tmp[hl + 1] = ']';
        memcpy(tmp + hl + 2, last, len - hl);
        tmp[len + 2] = '\0';
    } else {
        memcpy(tmp, s, len);
        tmp[len] = '\0';
    }
    return norm_addr(tmp, out);
}

int
lm_invite_parse(const char *token, struct lm_invite *out, char *err, size_t errcap)
{
    char t[LM_INVITE_TOKEN_MAX + 1], check[LM_INVITE_CHECK_LEN + 1], shown[96];
    const size_t plen = strlen(LM_INVITE_PREFIX);

    memset(out, 0, sizeof(*out));
    if (!token) {
        set_err(err, errcap, "no token");
        return -EINVAL;
    }
    while (*token == ' ' || *token == '\t' || *token == '\r' || *token == '\n')
        token++;
    size_t len = strlen(token);
    while (len && (token[len - 1] == ' ' || token[len - 1] == '\t' || token[len - 1] == '\r' ||
                   token[len - 1] == '\n'))
        len--;
    if (len == 0) {
        set_err(err, errcap, "the token is empty");
        return -EINVAL;
    }
    if (len > LM_INVITE_TOKEN_MAX) {
        set_err(err, errcap, "the token is longer than %d bytes", LM_INVITE_TOKEN_MAX);
        return -EINVAL;
    }
    memcpy(t, token, len);
    t[len] = '\0';
    lower(t);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c <= ' ' || c >= 0x7f) {
            set_err(err, errcap, "the token has a space, line break or other unexpected "
                                 "character inside; copy it as one line");
            return -EINVAL;
        }
    }
    if (strncmp(t, LM_INVITE_PREFIX, plen) != 0) {
        size_t v = strspn(t, "labmn"), d = strspn(t + v, "0123456789");
        if (v == 6 && strncmp(t, "labman", 6) == 0 && d > 0 && t[v + d] == ':')
            set_err(err, errcap, "token version %.*s is not understood by this labman "
                                 "(it reads %.*s)", (int)(v + d), t, (int)plen - 1,
                    LM_INVITE_PREFIX);
        else
            set_err(err, errcap, "not a labman invite token (one starts with \"%s\")",
                    LM_INVITE_PREFIX);
        return -EINVAL;
    }
    char *slash = strrchr(t, '/');
    if (!slash) {
        set_err(err, errcap, "the token has no checksum at its end: was it cut short?");
        return -EINVAL;
    }
    checksum(t, (size_t)(slash - t), check);
    if (strlen(slash + 1) != LM_INVITE_CHECK_LEN || strcmp(slash + 1, check) != 0) {
        set_err(err, errcap, "the token's checksum does not match: it was cut short or "
                             "mistyped; copy it again");
        return -EINVAL;
    }
    *slash = '\0';

    char *id = t + plen;
    char *at = strchr(id, '@');
    size_t idlen = at ? (size_t)(at - id) : strlen(id);
    if (idlen != LM_NODE_ID_LEN || !lm_is_hex(id, LM_NODE_ID_LEN)) {
        set_err(err, errcap, "the token's node id is not 64 hex digits");
        return -EINVAL;
    }
    memcpy(out->node_id, id, LM_NODE_ID_LEN);
    out->node_id[LM_NODE_ID_LEN] = '\0';
    if (!at)
        return 0;

    const char *p = at + 1;
    for (;;) {
        size_t n = strcspn(p, ",");
        char a[LM_INVITE_ADDR_MAX + 1];
        int rc = token_addr(p, n, a);
        if (rc == 0 && out->n_addrs == LM_INVITE_MAX_ADDRS)
            rc = -ENOSPC;
        if (rc == 0) {
            bool dup = false;
            for (size_t i = 0; i < out->n_addrs; i++)
                dup = dup || strcmp(out->addrs[i], a) == 0;
            if (!dup)
                memcpy(out->addrs[out->n_addrs++], a, sizeof(a));
        } else if (rc == -ENOSPC) {
            set_err(err, errcap, "the token has more than %d addresses", LM_INVITE_MAX_ADDRS);
        } else {
            lm_escape(shown, sizeof(shown), p, n);
            set_err(err, errcap, "the token's address \"%s\" is not host:port%s", shown,
                    rc == -EADDRNOTAVAIL ? " that a peer can dial" : "");
        }
        if (rc < 0) {
            memset(out, 0, sizeof(*out));
            return -EINVAL;
        }
        if (p[n] == '\0')
            break;
        p += n + 1;
    }
    return 0;
}

/* ---- finding things in TOML text ------------------------------------------ */

/* Byte offset of a parser position: columns count code points, and a byte
 * order mark is not in column 1. */
static size_t
offset_of(const char *t, size_t len, int line, int col)
{
    size_t i = len >= 3 && memcmp(t, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    for (int l = 1; l < line && i < len;)
        if (t[i++] == '\n')
            l++;
    for (int c = 1; c < col && i < len; c++) {
        i++;
        while (i < len && ((unsigned char)t[i] & 0xC0) == 0x80)
            i++;
    }
    return i;
}

/* At a quote: past the string (all four kinds). */
static size_t
skip_string(const char *t, size_t len, size_t i)
{
    char q = t[i];
    bool basic = q == '"';
    if (i + 2 < len && t[i + 1] == q && t[i + 2] == q) {
        for (i += 3; i < len;) {
            if (basic && t[i] == '\\') {
                i += 2;
            } else if (t[i] == q && i + 2 < len && t[i + 1] == q && t[i + 2] == q) {
                i += 3;
                /* Up to two more quotes are content before the delimiter. */
                for (int k = 0; k < 2 && i < len && t[i] == q; k++)
                    i++;
                return i;
            } else {
                i++;
            }
        }
        return len;
    }
    for (i++; i < len && t[i] != q && t[i] != '\n'; i++)
        if (basic && t[i] == '\\')
            i++;
    return i < len ? i + 1 : len;
}

static size_t
skip_comment(const char *t, size_t len, size_t i)
{
    while (i < len && t[i] != '\n' && t[i] != '\r')
        i++;
    return i;
}

static bool
is_digit_at(const char *t, size_t len, size_t i)
{
    return i < len && t[i] >= '0' && t[i] <= '9';
}

/* At the first byte of a value: past its last byte. */
static size_t
skip_value(const char *t, size_t len, size_t i)
{
    if (i >= len)
        return len;
    if (t[i] == '"' || t[i] == '\'')
        return skip_string(t, len, i);
    if (t[i] == '[' || t[i] == '{') {
        int depth = 0;
        while (i < len) {
            char c = t[i];
            if (c == '"' || c == '\'') {
                i = skip_string(t, len, i);
                continue;
            }
            if (c == '#') {
                i = skip_comment(t, len, i);
                continue;
            }
            if (c == '[' || c == '{')
                depth++;
            else if ((c == ']' || c == '}') && --depth == 0)
                return i + 1;
            i++;
        }
        return len;
    }
    /* Numbers, booleans, dates; a date-time may hold one space. */
    size_t start = i;
    while (i < len && !strchr(" \t\r\n,]}#", t[i]))
        i++;
    if (i - start == 10 && t[start + 4] == '-' && t[start + 7] == '-' && i < len && t[i] == ' ' &&
        is_digit_at(t, len, i + 1) && is_digit_at(t, len, i + 2) && i + 3 < len &&
        t[i + 3] == ':') {
        for (i++; i < len && !strchr(" \t\r\n,]}#", t[i]);)
            i++;
    }
    return i;
}

static size_t
skip_blanks(const char *t, size_t len, size_t i)
{
    while (i < len && (t[i] == ' ' || t[i] == '\t'))
        i++;
    return i;
}

/* Past the newline ending the line that i is on, when only blanks and a
 * comment are left on it; len at the end of a file without a final newline
 * (*eol_missing set); (size_t)-1 when something else follows. */
static size_t
after_line(const char *t, size_t len, size_t i, bool *eol_missing)
{
    *eol_missing = false;
    i = skip_blanks(t, len, i);
    if (i < len && t[i] == '#')
        i = skip_comment(t, len, i);
    if (i >= len) {
        *eol_missing = true;
        return len;
    }
    if (t[i] == '\n')
        return i + 1;
    if (t[i] == '\r' && i + 1 < len && t[i + 1] == '\n')
        return i + 2;
    return (size_t)-1;
}

static size_t
line_start(const char *t, size_t i)
{
    while (i > 0 && t[i - 1] != '\n')
        i--;
    return i;
}

static bool
blank_before(const char *t, size_t i)
{
    for (size_t j = line_start(t, i); j < i; j++)
        if (t[j] != ' ' && t[j] != '\t')
            return false;
    return true;
}

/* ---- the edit ------------------------------------------------------------- */

struct ins {
    size_t at;
    int order; /* among insertions at the same offset */
    struct lm_buf text;
};

struct editor {
    const char *t;
    size_t len;
    const char *eol;
    struct ins v[8];
    size_t n;
    char *err;
    size_t errcap;
};

static struct lm_buf *
insert_at(struct editor *e, size_t at)
{
    if (e->n == LM_ARRAY_LEN(e->v))
        abort(); /* at most five are made: a bug, not an input */
    struct ins *in = &e->v[e->n];
    in->at = at;
    in->order = (int)e->n;
    lm_buf_init(&in->text, LM_CONFIG_MAX_BYTES);
    e->n++;
    return &in->text;
}

struct key_items {
    const char *key;
    char **items; /* quoted TOML strings */
    size_t n;
};

static void
put_items(struct lm_buf *b, const struct key_items *k, const char *sep)
{
    for (size_t i = 0; i < k->n; i++) {
        if (i)
            lm_buf_puts(b, sep);
        lm_buf_puts(b, k->items[i]);
    }
}

/* New items at the end of an existing array, in its style. */
static int
extend_array(struct editor *e, const struct lm_toml_value *arr, const struct key_items *k)
{
    const char *t = e->t;
    size_t len = e->len;
    size_t open = offset_of(t, len, arr->line, arr->col);
    if (open >= len || t[open] != '[') {
        set_err(e->err, e->errcap, "cannot find the start of mesh.%s", k->key);
        return -ENOTSUP;
    }
    size_t end = skip_value(t, len, open);
    if (end == 0 || end > len || t[end - 1] != ']') {
        set_err(e->err, e->errcap, "cannot find the end of mesh.%s", k->key);
        return -ENOTSUP;
    }
    size_t close = end - 1;
    bool multiline = memchr(t + open, '\n', close - open) != NULL;
    struct lm_buf *b;

    if (arr->u.arr.len == 0) {
        if (multiline && blank_before(t, close)) {
            size_t ls = line_start(t, close);
            b = insert_at(e, ls);
            for (size_t i = 0; i < k->n; i++)
                lm_buf_printf(b, "%.*s    %s,%s", (int)(close - ls), t + ls, k->items[i], e->eol);
        } else {
            b = insert_at(e, open + 1);
            put_items(b, k, ", ");
        }
        return 0;
    }

    const struct lm_toml_value *last = arr->u.arr.items[arr->u.arr.len - 1];
    size_t lstart = offset_of(t, len, last->line, last->col);
    size_t lend = skip_value(t, len, lstart);
    if (lend > close) {
        set_err(e->err, e->errcap, "cannot find the last item of mesh.%s", k->key);
        return -ENOTSUP;
    }
    if (multiline && blank_before(t, lstart)) {
        /* One item per line: after the last item's line (and its comment),
         * with its indentation and its trailing-comma habit. */
        size_t j = skip_blanks(t, len, lend);
        bool comma = j < len && t[j] == ',';
        bool eol_missing;
        size_t after = after_line(t, len, comma ? j + 1 : j, &eol_missing);
        if (after != (size_t)-1 && !eol_missing && after <= close) {
            size_t ls = line_start(t, lstart);
            if (!comma)
                lm_buf_puts(insert_at(e, lend), ",");
            b = insert_at(e, after);
            for (size_t i = 0; i < k->n; i++)
                lm_buf_printf(b, "%.*s%s%s%s", (int)(lstart - ls), t + ls, k->items[i],
                              comma || i + 1 < k->n ? "," : "", e->eol);
            return 0;
        }
    }
    b = insert_at(e, lend);
    lm_buf_puts(b, ", ");
    put_items(b, k, ", ");
    return 0;
}

/* A new `key = [...]` line: one item per line when there are several,
 * since each is a 64-digit id and more than one would not fit a screen. */
static void
put_key_line(struct lm_buf *b, const char *prefix, const struct key_items *k, const char *eol)
{
    lm_buf_printf(b, "%s%s = [", prefix, k->key);
    if (k->n > 1) {
        for (size_t i = 0; i < k->n; i++)
            lm_buf_printf(b, "%s    %s,", eol, k->items[i]);
        lm_buf_puts(b, eol);
    } else {
        put_items(b, k, ", ");
    }
    lm_buf_printf(b, "]%s", eol);
}

enum form { FORM_HEADER, FORM_DOTTED, FORM_INLINE };

/* Keys that [mesh] lacks, written after its last key. */
static int
add_keys(struct editor *e, const struct lm_toml_value *mesh, enum form form,
         const struct key_items *keys, size_t nkeys)
{
    const char *t = e->t;
    size_t len = e->len;
    size_t mesh_at = offset_of(t, len, mesh->line, mesh->col);
    size_t at;
    bool eol_missing = false;

    if (form == FORM_INLINE) {
        size_t n = mesh->u.tab.len;
        if (n) {
            const struct lm_toml_value *lv = mesh->u.tab.items[n - 1].value;
            at = skip_value(t, len, offset_of(t, len, lv->line, lv->col));
        } else {
            at = mesh_at + 1;
        }
        struct lm_buf *b = insert_at(e, at);
        for (size_t i = 0; i < nkeys; i++) {
            lm_buf_printf(b, "%s%s = [", n || i ? ", " : " ", keys[i].key);
            put_items(b, &keys[i], ", ");
            lm_buf_puts(b, "]");
        }
        if (!n)
            lm_buf_puts(b, " ");
        return 0;
    }

    if (mesh->u.tab.len) {
        const struct lm_toml_value *lv = mesh->u.tab.items[mesh->u.tab.len - 1].value;
        size_t vend = skip_value(t, len, offset_of(t, len, lv->line, lv->col));
        at = after_line(t, len, vend, &eol_missing);
    } else {
        /* A [mesh] header with no keys: right after its line. */
        const char *nl = memchr(t + mesh_at, '\n', len - mesh_at);
        at = nl ? (size_t)(nl - t) + 1 : len;
        eol_missing = !nl;
    }
    if (at == (size_t)-1) {
        set_err(e->err, e->errcap, "cannot find the end of the last key in [mesh]");
        return -ENOTSUP;
    }
    struct lm_buf *b = insert_at(e, at);
    if (eol_missing)
        lm_buf_puts(b, e->eol);
    for (size_t i = 0; i < nkeys; i++)
        put_key_line(b, form == FORM_DOTTED ? "mesh." : "", &keys[i], e->eol);
    return 0;
}

static int
ins_cmp(const void *a, const void *b)
{
    const struct ins *x = a, *y = b;
    if (x->at != y->at)
        return x->at < y->at ? -1 : 1;
    return x->order - y->order;
}

static void
strv_push(struct lm_strv *v, const char *s)
{
    v->v = lm_xrealloc(v->v, (v->n + 1) * sizeof(*v->v));
    v->v[v->n++] = lm_xstrdup(s);
}

static bool
strv_has(const struct lm_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcasecmp(v->v[i], s) == 0)
            return true;
    return false;
}

/* The first problem of a config, for a one-line error. */
static void
first_diag(const struct lm_diags *d, char *err, size_t cap, const char *what)
{
    if (d->n && d->v[0].line > 0)
        set_err(err, cap, "%s: %d:%d: %s", what, d->v[0].line, d->v[0].col, d->v[0].msg);
    else
        set_err(err, cap, "%s: %s", what, d->n ? d->v[0].msg : "invalid");
}

int
lm_invite_join(const char *text, size_t len, const struct lm_invite *inv, struct lm_buf *out,
               struct lm_invite_edit *ed, char *err, size_t errcap)
{
    struct lm_config *cfg = NULL, *next = NULL;
    struct lm_diags diags = {0};
    struct lm_toml_value *root = NULL;
    struct editor e = {.t = text, .len = len, .eol = "\n", .err = err, .errcap = errcap};
    char *items[1 + LM_INVITE_MAX_ADDRS] = {0};
    size_t n_items = 0;
    struct key_items keys[2] = {{.key = "trusted_peers"}, {.key = "bootstrap"}};
    struct lm_buf want, got;
    int rc;

    memset(ed, 0, sizeof(*ed));
    lm_buf_init(out, LM_CONFIG_MAX_BYTES);
    lm_buf_init(&want, 0);
    lm_buf_init(&got, 0);
    if (err && errcap)
        err[0] = '\0';
    if (lm_config_parse(text, len, "config", &cfg, &diags) < 0) {
        first_diag(&diags, err, errcap, "the config is invalid");
        rc = -EINVAL;
        goto out;
    }
    if (strv_has(&cfg->mesh.denied_peers, inv->node_id)) {
        set_err(err, errcap, "node %.*s is in [mesh] denied_peers; remove it from there first "
                "to trust it", LM_SHORT_ID_LEN, inv->node_id);
        rc = -EPERM;
        goto out;
    }

    /* What is missing, as quoted TOML strings, and the config it should
     * give (the old one plus exactly that). */
    struct lm_buf q;
    if (!strv_has(&cfg->mesh.trusted_peers, inv->node_id)) {
        lm_buf_init(&q, 0);
        lm_toml_quote(&q, inv->node_id, strlen(inv->node_id));
        keys[0].items = &items[n_items];
        keys[0].n = 1;
        items[n_items++] = q.data;
        strv_push(&cfg->mesh.trusted_peers, inv->node_id);
        ed->trusted_added = true;
    }
    keys[1].items = &items[n_items];
    for (size_t i = 0; i < inv->n_addrs; i++) {
        char entry[LM_NODE_ID_LEN + 2 + LM_INVITE_ADDR_MAX];
        snprintf(entry, sizeof(entry), "%s@%s", inv->node_id, inv->addrs[i]);
        if (strv_has(&cfg->mesh.bootstrap, entry))
            continue;
        lm_buf_init(&q, 0);
        lm_toml_quote(&q, entry, strlen(entry));
        items[n_items++] = q.data;
        keys[1].n++;
        strv_push(&cfg->mesh.bootstrap, entry);
    }
    ed->bootstrap_added = keys[1].n;

    if (!ed->trusted_added && ed->bootstrap_added == 0) {
        rc = lm_buf_append(out, text, len) < 0 ? -EFBIG : 0;
        goto out;
    }

    char msg[256];
    int line, col;
    if (lm_toml_parse(text, len, &root, &line, &col, msg, sizeof(msg)) < 0) {
        set_err(err, errcap, "the config is invalid: %d:%d: %s", line, col, msg);
        rc = -EINVAL;
        goto out;
    }
    const char *nl = memchr(text, '\n', len);
    if (nl && nl > text && nl[-1] == '\r')
        e.eol = "\r\n";

    const struct lm_toml_value *mesh = lm_toml_get(root, "mesh");
    struct key_items missing[2];
    size_t n_missing = 0;
    rc = 0;
    if (!mesh) {
        struct lm_buf *b = insert_at(&e, len);
        if (len && text[len - 1] != '\n')
            lm_buf_puts(b, e.eol);
        if (len)
            lm_buf_puts(b, e.eol);
        lm_buf_printf(b, "[mesh]%s", e.eol);
        for (size_t i = 0; i < 2; i++)
            if (keys[i].n)
                put_key_line(b, "", &keys[i], e.eol);
    } else {
        size_t at = offset_of(text, len, mesh->line, mesh->col);
        enum form form = at < len && text[at] == '[' ? FORM_HEADER
                         : at < len && text[at] == '{' ? FORM_INLINE
                                                       : FORM_DOTTED;
        for (size_t i = 0; i < 2 && rc == 0; i++) {
            if (!keys[i].n)
                continue;
            const struct lm_toml_value *arr = lm_toml_get(mesh, keys[i].key);
            if (arr && arr->type == LM_TOML_ARRAY)
                rc = extend_array(&e, arr, &keys[i]);
            else if (!arr)
                missing[n_missing++] = keys[i];
            else
                rc = -ENOTSUP;
        }
        if (rc == 0 && n_missing)
            rc = add_keys(&e, mesh, form, missing, n_missing);
        if (rc < 0) {
            if (err && !err[0])
                set_err(err, errcap, "cannot edit this layout of [mesh]");
            goto out;
        }
    }

    /* Stitch the text and the insertions together. */
    qsort(e.v, e.n, sizeof(e.v[0]), ins_cmp);
    size_t pos = 0;
    for (size_t i = 0; i < e.n && rc == 0; i++) {
        if (lm_buf_append(out, text + pos, e.v[i].at - pos) < 0 ||
            lm_buf_append(out, e.v[i].text.data, e.v[i].text.len) < 0)
            rc = -EFBIG;
        pos = e.v[i].at;
    }
    if (rc == 0 && lm_buf_append(out, text + pos, len - pos) < 0)
        rc = -EFBIG;
    if (rc < 0) {
        set_err(err, errcap, "the edited config would be larger than %u bytes",
                LM_CONFIG_MAX_BYTES);
        goto out;
    }

    /* The proof: the new text means the old config plus the additions. */
    lm_diags_clear(&diags);
    if (lm_config_parse(out->data, out->len, "config", &next, &diags) < 0) {
        first_diag(&diags, err, errcap, "the edited config does not load (nothing written)");
        rc = -EPROTO;
        goto out;
    }
    if (lm_config_to_toml(cfg, false, &want) < 0 || lm_config_to_toml(next, false, &got) < 0 ||
        want.len != got.len || memcmp(want.data, got.data, want.len) != 0) {
        set_err(err, errcap, "the edit would change more than [mesh] trusted_peers and "
                             "bootstrap (nothing written); please add them by hand");
        rc = -EPROTO;
        goto out;
    }
out:
    if (rc < 0) {
        lm_buf_release(out);
        memset(ed, 0, sizeof(*ed));
    }
    for (size_t i = 0; i < e.n; i++)
        lm_buf_release(&e.v[i].text);
    for (size_t i = 0; i < n_items; i++)
        free(items[i]);
    lm_toml_free(root);
    lm_config_free(cfg);
    lm_config_free(next);
    lm_diags_clear(&diags);
    lm_buf_release(&want);
    lm_buf_release(&got);
    return rc;
}

/* ---- replacing the file --------------------------------------------------- */

static int
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int
lm_invite_write_file(const char *path, const char *before, size_t before_len, const char *text,
                     size_t len, char *err, size_t errcap)
{
    char real[PATH_MAX], dir[PATH_MAX], base[PATH_MAX], tmp[PATH_MAX + 32];
    struct stat st;
    char *now = NULL;
    size_t now_len = 0;
    int fd = -1, rc;

    if (!realpath(path, real)) {
        rc = -errno;
        set_err(err, errcap, "cannot find %s: %s", path, strerror(-rc));
        return rc;
    }
    if (stat(real, &st) < 0) {
        rc = -errno;
        set_err(err, errcap, "cannot stat %s: %s", real, strerror(-rc));
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errcap, "%s is not a regular file", real);
        return -EINVAL;
    }
    snprintf(dir, sizeof(dir), "%s", real);
    snprintf(base, sizeof(base), "%s", real);
    int n = snprintf(tmp, sizeof(tmp), "%s/.%s.join-XXXXXX", dirname(dir), basename(base));
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        set_err(err, errcap, "path too long: %s", real);
        return -ENAMETOOLONG;
    }
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        set_err(err, errcap, "cannot create a temp file beside %s: %s", real, strerror(-rc));
        return rc;
    }
    /* The config may hold nothing secret, but its mode and owner are the
     * operator's choice (and labmand may run as another user). */
    if (fchmod(fd, st.st_mode & 07777) < 0) {
        rc = -errno;
        set_err(err, errcap, "cannot set the mode of %s: %s", tmp, strerror(-rc));
        goto fail;
    }
    if ((st.st_uid != geteuid() || st.st_gid != getegid()) &&
        fchown(fd, st.st_uid, st.st_gid) < 0) {
        rc = -errno;
        set_err(err, errcap, "cannot give the new file %s's owner (%u:%u): %s; run as its "
                "owner or as root", real, (unsigned)st.st_uid, (unsigned)st.st_gid,
                strerror(-rc));
        goto fail;
    }
    rc = write_all(fd, text, len);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (rc < 0) {
        set_err(err, errcap, "cannot write %s: %s", tmp, strerror(-rc));
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = -errno;
        set_err(err, errcap, "cannot write %s: %s", tmp, strerror(-rc));
        goto fail;
    }
    fd = -1;
    rc = lm_file_read(real, before_len + 1, &now, &now_len);
    if (rc < 0 && rc != -EFBIG) {
        set_err(err, errcap, "cannot read %s again: %s", real, strerror(-rc));
        goto fail;
    }
    if (rc == -EFBIG || now_len != before_len ||
        (before_len && memcmp(now, before, before_len) != 0)) {
        set_err(err, errcap, "%s changed while labman was editing it; nothing written, run "
                "the command again", real);
        rc = -EAGAIN;
        goto fail;
    }
    if (rename(tmp, real) < 0) {
        rc = -errno;
        set_err(err, errcap, "cannot replace %s: %s", real, strerror(-rc));
        goto fail;
    }
    free(now);
    snprintf(dir, sizeof(dir), "%s", real);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(now);
    return rc;
}
