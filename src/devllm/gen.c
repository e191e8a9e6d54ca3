/* Deterministic text, token counts, embeddings and small formatting helpers.
 * The same seed and prompt always give the same words, so tests and
 * benchmarks can compare answers byte for byte. */
#include "devllm/devllm.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const words[] = {
    "the", "lab", "mesh", "model", "runs", "on", "a", "small", "node", "and",
    "answers", "every", "request", "with", "tokens", "that", "flow", "through",
    "quiet", "wires", "between", "friends", "who", "share", "their", "spare",
    "compute", "so", "nobody", "waits", "long", "for", "an", "idea", "to",
    "grow", "into", "words", "like", "these", "ones", "here", "now", "again",
    "bright", "fast", "local", "honest", "gentle", "steady", "warm", "clear",
    "river", "stone", "light", "signal", "garden", "paper", "window", "bridge",
    "morning", "engine", "circle", "harbor",
};

uint64_t
lm_devllm_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    if (h == 0)
        h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* splitmix64: tiny, fast and good enough for fake words and faults. */
uint64_t
lm_devllm_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

const char *
lm_devllm_word(uint64_t *state, size_t *len)
{
    const char *w = words[lm_devllm_rand(state) % LM_ARRAY_LEN(words)];
    *len = strlen(w);
    return w;
}

size_t
lm_devllm_count_words(const char *s, size_t n)
{
    size_t count = 0;
    bool in_word = false;
    for (size_t i = 0; i < n; i++) {
        bool space = isspace((unsigned char)s[i]) != 0;
        if (!space && !in_word)
            count++;
        in_word = !space;
    }
    return count;
}

int
lm_devllm_json_str(struct lm_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[256];
    size_t t = 0;
    int rc = 0;

    tmp[t++] = '"';
    for (size_t i = 0; i < n && rc == 0; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (t > sizeof(tmp) - 8) {
            rc = lm_buf_append(b, tmp, t);
            t = 0;
        }
        if (ch == '"' || ch == '\\') {
            tmp[t++] = '\\';
            tmp[t++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            tmp[t++] = '\\';
            tmp[t++] = 'u';
            tmp[t++] = '0';
            tmp[t++] = '0';
            tmp[t++] = hex[ch >> 4];
            tmp[t++] = hex[ch & 15];
        } else {
            tmp[t++] = (char)ch;
        }
    }
    tmp[t++] = '"';
    if (rc == 0)
        rc = lm_buf_append(b, tmp, t);
    return rc;
}

static int
base64_append(struct lm_buf *b, const unsigned char *p, size_t n)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char out[4];
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[0] = tab[(v >> 18) & 63];
        out[1] = tab[(v >> 12) & 63];
        out[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[3] = i + 2 < n ? tab[v & 63] : '=';
        rc = lm_buf_append(b, out, 4);
    }
    return rc;
}

/* A unit vector derived from the text, so equal texts embed equally and
 * different texts (almost surely) do not. */
int
lm_devllm_embedding(struct lm_buf *b, uint64_t seed, const char *text, size_t n,
                    unsigned dims, bool base64)
{
    uint64_t st = lm_devllm_hash(seed, text, n);
    double norm = 0;
    float v[4096];
    int rc;

    if (dims == 0 || dims > LM_ARRAY_LEN(v))
        return -EINVAL;
    for (unsigned i = 0; i < dims; i++) {
        double x = (double)(lm_devllm_rand(&st) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        v[i] = (float)x;
        norm += x * x;
    }
    norm = sqrt(norm);
    for (unsigned i = 0; i < dims; i++)
        v[i] = (float)(v[i] / norm);

    if (base64) {
        unsigned char raw[4096 * 4];
        for (unsigned i = 0; i < dims; i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            raw[i * 4] = (unsigned char)u;
            raw[i * 4 + 1] = (unsigned char)(u >> 8);
            raw[i * 4 + 2] = (unsigned char)(u >> 16);
            raw[i * 4 + 3] = (unsigned char)(u >> 24);
        }
        if ((rc = lm_buf_puts(b, "\"")) || (rc = base64_append(b, raw, (size_t)dims * 4)))
            return rc;
        return lm_buf_puts(b, "\"");
    }
    if ((rc = lm_buf_puts(b, "[")))
        return rc;
    for (unsigned i = 0; i < dims; i++) {
        if ((rc = lm_buf_printf(b, i ? ",%.7g" : "%.7g", (double)v[i])))
            return rc;
    }
    return lm_buf_puts(b, "]");
}

int64_t
lm_devllm_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* RFC 3339 in UTC, as Ollama writes created_at and expires_at. */
void
lm_devllm_iso8601(char *out, size_t cap, int64_t wall_ms, bool nanos)
{
    time_t sec = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    if (nanos)
        snprintf(out + n, cap - n, ".%03d000000Z", (int)(wall_ms % 1000));
    else
        snprintf(out + n, cap - n, "Z");
}

/* Go-style durations ("5m", "1h30m", "250ms", "-1") or a plain number of
 * seconds, as Ollama accepts for keep_alive. Negative means forever. */
int
lm_devllm_duration_parse(const char *s, int64_t *ms)
{
    const char *p = s;
    bool neg = false;
    double total = 0;

    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    if (!*p)
        return -EINVAL;
    char *end;
    double v = strtod(p, &end);
    if (end != p && *end == '\0') {
        *ms = (int64_t)((neg ? -v : v) * 1000.0);
        return 0;
    }
    while (*p) {
        v = strtod(p, &end);
        if (end == p || !isfinite(v) || v > 1e12)
            return -EINVAL;
        p = end;
        double unit;
        if (strncmp(p, "ns", 2) == 0) {
            unit = 1e-6;
            p += 2;
        } else if (strncmp(p, "us", 2) == 0) {
            unit = 1e-3;
            p += 2;
        } else if (strncmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else if (*p == 's') {
            unit = 1000;
            p++;
        } else if (*p == 'm') {
            unit = 60000;
            p++;
        } else if (*p == 'h') {
            unit = 3600000;
            p++;
        } else {
            return -EINVAL;
        }
        total += v * unit;
    }
    *ms = (int64_t)(neg ? -total : total);
    return 0;
}
