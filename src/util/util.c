#include "util/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void
oom(size_t n)
{
    fprintf(stderr, "labman: out of memory allocating %zu bytes\n", n);
    abort();
}

void *
lm_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *
lm_xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        oom(nmemb * size);
    return p;
}

void *
lm_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *
lm_xstrdup(const char *s)
{
    return lm_xstrndup(s, strlen(s));
}

char *
lm_xstrndup(const char *s, size_t n)
{
    char *p = lm_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *
lm_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    char *p = lm_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void
lm_buf_init(struct lm_buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = limit ? limit : SIZE_MAX - 1;
}

void
lm_buf_release(struct lm_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void
lm_buf_reset(struct lm_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static int
buf_reserve(struct lm_buf *b, size_t extra)
{
    if (extra > b->limit - b->len)
        return -E2BIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    b->data = lm_xrealloc(b->data, cap);
    b->cap = cap;
    return 0;
}

int
lm_buf_append(struct lm_buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int
lm_buf_puts(struct lm_buf *b, const char *s)
{
    return lm_buf_append(b, s, strlen(s));
}

int
lm_buf_vprintf(struct lm_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return -EINVAL;
    int rc = buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int
lm_buf_printf(struct lm_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = lm_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void
lm_buf_prom_label(struct lm_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            lm_buf_puts(b, "\\\\");
        else if (*s == '"')
            lm_buf_puts(b, "\\\"");
        else if (*s == '\n')
            lm_buf_puts(b, "\\n");
        else
            lm_buf_append(b, s, 1);
    }
}

void
lm_diags_add(struct lm_diags *d, int line, int col, const char *fmt, ...)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 8;
        d->v = lm_xrealloc(d->v, d->cap * sizeof(*d->v));
    }
    va_list ap;
    va_start(ap, fmt);
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    d->v[d->n].line = line;
    d->v[d->n].col = col;
    d->v[d->n].msg = b.data ? b.data : lm_xstrdup("");
    d->n++;
}

void
lm_diags_clear(struct lm_diags *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->v[i].msg);
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}

void
lm_diags_print(const struct lm_diags *d, const char *file, FILE *out)
{
    for (size_t i = 0; i < d->n; i++) {
        if (d->v[i].line > 0)
            fprintf(out, "%s:%d:%d: %s\n", file, d->v[i].line, d->v[i].col, d->v[i].msg);
        else
            fprintf(out, "%s: %s\n", file, d->v[i].msg);
    }
}

static int
diag_cmp(const void *a, const void *b)
{
    const struct lm_diag *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return 0;
}

void
lm_diags_sort(struct lm_diags *d)
{
    /* Insertion sort keeps equal positions in the order they were found. */
    for (size_t i = 1; i < d->n; i++) {
        struct lm_diag t = d->v[i];
        size_t j = i;
        while (j > 0 && diag_cmp(&d->v[j - 1], &t) > 0) {
            d->v[j] = d->v[j - 1];
            j--;
        }
        d->v[j] = t;
    }
}

void
lm_hex_encode(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int
lm_hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool
lm_is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lm_hex_value((unsigned char)s[i]) < 0)
            return false;
    return true;
}

int
lm_hex_decode(uint8_t *out, size_t outlen, const char *hex)
{
    if (strlen(hex) != 2 * outlen || !lm_is_hex(hex, 2 * outlen))
        return -EINVAL;
    for (size_t i = 0; i < outlen; i++)
        out[i] = (uint8_t)(lm_hex_value(hex[2 * i]) << 4 | lm_hex_value(hex[2 * i + 1]));
    return 0;
}

int
lm_hostport_parse(const char *s, char *hostbuf, size_t hostcap, int *port, bool allow_zero)
{
    const char *host, *colon;
    size_t hostlen;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return -EINVAL;
        host = s + 1;
        hostlen = (size_t)(end - host);
        colon = end + 1;
        if (hostlen == 0 || strspn(host, "0123456789abcdefABCDEF:.") < hostlen)
            return -EINVAL;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return -EINVAL;
        host = s;
        hostlen = (size_t)(colon - s);
        if (hostlen == 0)
            return -EINVAL;
        for (size_t i = 0; i < hostlen; i++) {
            unsigned char c = (unsigned char)host[i];
            if (!isalnum(c) && c != '.' && c != '-' && c != '_')
                return -EINVAL;
        }
    }
    const char *p = colon + 1;
    if (*p == '\0' || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p))
        return -EINVAL;
    long v = strtol(p, NULL, 10);
    if (v > 65535 || (v == 0 && !allow_zero))
        return -EINVAL;
    if (hostlen + 1 > hostcap)
        return -EINVAL;
    memcpy(hostbuf, host, hostlen);
    hostbuf[hostlen] = '\0';
    *port = (int)v;
    return 0;
}

bool
lm_hostport_is_loopback(const char *hostport)
{
    char host[256];
    int port;
    if (lm_hostport_parse(hostport, host, sizeof(host), &port, true) < 0)
        return false;
    if (strcmp(host, "localhost") == 0)
        return true;
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET, host, &v4) == 1)
        return (ntohl(v4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &v6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&v6))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(&v6))
            return v6.s6_addr[12] == 127;
    }
    /* Any other name may resolve anywhere; treat it as the network. */
    return false;
}

int
lm_file_read(const char *path, size_t max, char **out, size_t *outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct lm_buf b;
    lm_buf_init(&b, max);
    int rc = 0;
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        if (lm_buf_append(&b, chunk, (size_t)n)) {
            rc = -EFBIG;
            break;
        }
    }
    close(fd);
    if (rc) {
        lm_buf_release(&b);
        return rc;
    }
    if (!b.data)
        b.data = lm_xcalloc(1, 1);
    *out = b.data;
    *outlen = b.len;
    return 0;
}

void
lm_escape(char *out, size_t outcap, const void *in, size_t inlen)
{
    const unsigned char *s = in;
    size_t o = 0;

    if (outcap < 4) {
        if (outcap)
            out[0] = '\0';
        return;
    }
    /* Invariant: o + 4 <= outcap, so "..." and the NUL always fit. */
    for (size_t i = 0; i < inlen; i++) {
        char tmp[5];
        size_t n = 1;
        unsigned char c = s[i];
        if (c == '\n' || c == '\r' || c == '\t' || c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
            n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            n = (size_t)snprintf(tmp, sizeof(tmp), "\\x%02x", c);
        } else {
            tmp[0] = (char)c;
        }
        if (o + n + 4 > outcap) {
            memcpy(out + o, "...", 4);
            return;
        }
        memcpy(out + o, tmp, n);
        o += n;
    }
    out[o] = '\0';
}

uint64_t
lm_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t
lm_now_ms(void)
{
    return lm_now_us() / 1000u;
}

int
lm_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    int row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int prev = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cur = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = prev + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

void
lm_sockaddr_format(char *out, size_t cap, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        snprintf(out, cap, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        snprintf(out, cap, "%s:%u", ip, ntohs(a->sin_port));
    }
}

uint64_t
lm_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}
