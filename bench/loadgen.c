/* loadgen: the load generator of bench/gateway.sh. One thread, epoll, plain
 * HTTP/1.1 keep-alive against an OpenAI-compatible server (devllm, nginx or
 * labmand in front of it). Optionally watches the process under test (--pid)
 * and reads its CPU time and RSS from /proc exactly at the edges of each timed
 * window, so no shell command runs inside a measurement.
 *
 *   loadgen rps  HOST PORT [--conns 64] [--requests N] [--warmup N] [--runs K] [--pid P]
 *       fixed-count runs of small non-streaming chat completions; per run:
 *       run=i requests= seconds= rps= errors= reconnects= cpu_us_per_req= rss_peak_kb=
 *   loadgen lat  HOST PORT [--requests 5000] [--warmup N] [--runs K]
 *       one connection, sequential requests; per run: run=i p50_us= p99_us= max_us= errors=
 *   loadgen idle HOST PORT [--conns 1000] [--runs K] --pid P
 *       each run opens CONNS more connections, one request on each, leaves them
 *       idle; per run: run=i conns= rss_before_kb= rss_after_kb= bytes_per_conn=
 *   loadgen sse  HOST PORT [--streams 512] [--max-tokens 250] [--tps 25]
 *                [--settle 1] [--seconds 6] [--runs K] [--pid P[,P...]]
 *       STREAMS streams kept open, each restarting on its connection when it
 *       ends; the first round is cut to staggered lengths so that afterwards
 *       streams end (and new ones start) evenly spread in time. Measured from
 *       SETTLE s on, for SECONDS s; per run: run=i events= events_per_s=
 *       max_gap_ms= worst_delay_ms= ttft_n= ttft_p50_us= ttft_p99_us= cpu_pct=
 *       errors= — worst_delay is the longest gap between two events of a stream
 *       minus the expected 1000/TPS ms. --ttft-out FILE appends every TTFT
 *       sample (µs, one a line), so that runs can be pooled. Several
 *       comma-separated --pid (a proxy made of several processes: a mesh's
 *       gateway, relay and provider nodes): cpu_pct= is their sum,
 *       cpu_pct_each= each one's, cpu_us_per_event= the sum ÷ events. (rps
 *       and idle watch the first.)
 *
 * Any error (connect, non-200, malformed answer) is counted in errors=. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFCAP 65536

static struct sockaddr_in addr;
static const char *host;
static const char *model = "llama3.2:1b";
static int pid = 0;   /* the watched process: the first --pid */
#define MAX_PIDS 8
static int pids[MAX_PIDS]; /* sse: every --pid, pids[0] == pid */
static int npids;

static uint64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* utime+stime of the watched process (all its threads), in clock ticks. */
static long long
cpu_ticks_of(int which)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", which);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p += 2; /* field 3, state */
    for (int field = 3; field < 14 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    if (!p)
        return -1;
    long long ut, st;
    if (sscanf(p, "%lld %lld", &ut, &st) != 2)
        return -1;
    return ut + st;
}

static long long
cpu_ticks(void)
{
    return cpu_ticks_of(pid);
}

static long
rss_kb(void)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static int
dial(int nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&addr, sizeof(addr)) < 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (nonblock)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static size_t
make_request(char *out, size_t cap, int stream, int max_tokens)
{
    char body[512];
    int bl;
    if (stream)
        bl = snprintf(body, sizeof(body),
                      "{\"model\":\"%s\",\"stream\":true,\"max_tokens\":%d,\"messages\":"
                      "[{\"role\":\"user\",\"content\":\"tell me a story\"}]}",
                      model, max_tokens);
    else
        bl = snprintf(body, sizeof(body),
                      "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"hello there\"}],\"max_tokens\":%d}",
                      model, max_tokens);
    return (size_t)snprintf(out, cap,
                            "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                            host, bl, body);
}

/* Header facts of a response whose head is b[0..hlen). */
struct head {
    int status;
    long long clen; /* -1: none */
    int chunked;
    int close;
};

static int
parse_head(const char *b, size_t hlen, struct head *h)
{
    h->status = 0;
    h->clen = -1;
    h->chunked = 0;
    h->close = 0;
    if (hlen < 12 || memcmp(b, "HTTP/1.", 7) != 0)
        return -1;
    h->status = atoi(b + 9);
    if (b[7] == '0')
        h->close = 1;
    const char *p = memchr(b, '\n', hlen), *end = b + hlen;
    while (p && ++p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        size_t len = (size_t)(eol - p);
        if (len > 15 && strncasecmp(p, "content-length:", 15) == 0)
            h->clen = strtoll(p + 15, NULL, 10);
        else if (len > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
            h->chunked = memmem(p, len, "chunked", 7) != NULL;
        else if (len > 11 && strncasecmp(p, "connection:", 11) == 0)
            h->close = memmem(p, len, "close", 5) != NULL;
        p = eol;
    }
    return 0;
}

/* A whole non-streamed response at b[0..n)? 1 and *used, 0 need more, -1 bad. */
static int
parse_response(const char *b, size_t n, size_t *used, struct head *h)
{
    const char *e = memmem(b, n, "\r\n\r\n", 4);
    if (!e)
        return n > 16384 ? -1 : 0;
    size_t hlen = (size_t)(e - b) + 4;
    if (parse_head(b, hlen, h) < 0)
        return -1;
    if (h->chunked) {
        size_t p = hlen;
        for (;;) {
            const char *eol = memmem(b + p, n - p, "\r\n", 2);
            if (!eol)
                return 0;
            char *x;
            unsigned long long sz = strtoull(b + p, &x, 16);
            if (x == b + p)
                return -1;
            p = (size_t)(eol - b) + 2;
            if (sz == 0) {
                if (n - p < 2)
                    return 0;
                if (memcmp(b + p, "\r\n", 2) != 0) /* trailers: skip to blank line */
                {
                    const char *t = memmem(b + p, n - p, "\r\n\r\n", 4);
                    if (!t)
                        return 0;
                    *used = (size_t)(t - b) + 4;
                } else
                    *used = p + 2;
                return 1;
            }
            if (n - p < sz + 2)
                return 0;
            p += sz + 2;
        }
    }
    if (h->clen < 0)
        return -1; /* close-delimited answers are not used here */
    if (n - hlen < (size_t)h->clen)
        return 0;
    *used = hlen + (size_t)h->clen;
    return 1;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t
pct(const uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i];
}

/* ---- rps ---- */

struct rconn {
    int fd;
    int busy; /* a request is in flight */
    size_t len;
    char buf[BUFCAP];
};

static char req_small[1024];
static size_t req_small_len;

static int
rconn_open(struct rconn *c, int ep)
{
    c->fd = dial(1);
    c->len = 0;
    c->busy = 0;
    if (c->fd < 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int
mode_rps(int conns, long requests, long warmup, int runs)
{
    int ep = epoll_create1(0);
    struct rconn *cs = calloc((size_t)conns, sizeof(*cs));
    if (!cs)
        return 1;
    for (int i = 0; i < conns; i++)
        if (rconn_open(&cs[i], ep) < 0) {
            perror("loadgen: connect");
            return 1;
        }
    long hz = sysconf(_SC_CLK_TCK);
    struct epoll_event evs[256];
    for (int run = 0; run <= runs; run++) {
        long target = run == 0 ? warmup : requests;
        if (target <= 0)
            continue;
        long issued = 0, done = 0, errors = 0, reconnects = 0;
        long rss_peak = pid ? rss_kb() : -1;
        long long t0 = pid ? cpu_ticks() : 0;
        uint64_t start = now_us(), next_sample = start + 20000;
        for (int i = 0; i < conns && issued < target; i++, issued++) {
            cs[i].busy = 1;
            if (write(cs[i].fd, req_small, req_small_len) != (ssize_t)req_small_len)
                errors++;
        }
        while (done < issued) {
            int n = epoll_wait(ep, evs, 256, 20);
            for (int i = 0; i < n; i++) {
                struct rconn *c = evs[i].data.ptr;
                ssize_t r = read(c->fd, c->buf + c->len, BUFCAP - c->len);
                if (r < 0 && errno == EAGAIN)
                    continue;
                if (r <= 0) { /* closed under us */
                    int was_busy = c->busy;
                    close(c->fd);
                    reconnects++;
                    if (rconn_open(c, ep) < 0) {
                        perror("loadgen: reconnect");
                        return 1;
                    }
                    if (!was_busy)
                        continue;
                    /* the request in flight is lost: an error; send another */
                    done++;
                    errors++;
                    if (issued < target) {
                        issued++;
                        c->busy = 1;
                        if (write(c->fd, req_small, req_small_len) != (ssize_t)req_small_len)
                            errors++;
                    }
                    continue;
                }
                c->len += (size_t)r;
                size_t used;
                struct head h;
                int k = parse_response(c->buf, c->len, &used, &h);
                if (k == 0)
                    continue;
                if (k < 0 || h.status != 200)
                    errors++;
                done++;
                c->busy = 0;
                if (k > 0 && used < c->len) /* unexpected extra bytes */
                    errors++;
                c->len = 0;
                if (k < 0 || h.close) {
                    close(c->fd);
                    reconnects++;
                    if (rconn_open(c, ep) < 0) {
                        perror("loadgen: reconnect");
                        return 1;
                    }
                }
                if (issued < target) {
                    issued++;
                    c->busy = 1;
                    if (write(c->fd, req_small, req_small_len) != (ssize_t)req_small_len)
                        errors++;
                }
            }
            if (pid) {
                uint64_t t = now_us();
                if (t >= next_sample) {
                    long kb = rss_kb();
                    if (kb > rss_peak)
                        rss_peak = kb;
                    next_sample = t + 20000;
                }
            }
        }
        double secs = (double)(now_us() - start) / 1e6;
        long long t1 = pid ? cpu_ticks() : 0;
        if (run == 0)
            continue;
        printf("run=%d requests=%ld seconds=%.3f rps=%.0f errors=%ld reconnects=%ld", run, done,
               secs, (double)done / secs, errors, reconnects);
        if (pid)
            printf(" cpu_us_per_req=%.2f rss_peak_kb=%ld",
                   (double)(t1 - t0) / (double)hz * 1e6 / (double)done, rss_peak);
        printf("\n");
        fflush(stdout);
    }
    for (int i = 0; i < conns; i++)
        close(cs[i].fd);
    free(cs);
    return 0;
}

/* ---- lat ---- */

static int
mode_lat(long requests, long warmup, int runs)
{
    int fd = dial(0);
    if (fd < 0) {
        perror("loadgen: connect");
        return 1;
    }
    static char buf[BUFCAP];
    uint64_t *lat = calloc((size_t)requests, sizeof(*lat));
    if (!lat)
        return 1;
    for (int run = 0; run <= runs; run++) {
        long n = run == 0 ? warmup : requests, errors = 0;
        for (long i = 0; i < n; i++) {
            uint64_t t0 = now_us();
            if (write(fd, req_small, req_small_len) != (ssize_t)req_small_len) {
                fprintf(stderr, "loadgen: write failed\n");
                return 1;
            }
            size_t len = 0, used;
            struct head h;
            int k;
            for (;;) {
                ssize_t r = read(fd, buf + len, BUFCAP - len);
                if (r <= 0) {
                    fprintf(stderr, "loadgen: connection closed\n");
                    return 1;
                }
                len += (size_t)r;
                if ((k = parse_response(buf, len, &used, &h)) != 0)
                    break;
            }
            uint64_t t1 = now_us();
            if (k < 0 || h.status != 200)
                errors++;
            if (run > 0)
                lat[i] = t1 - t0;
            if (k < 0 || h.close) {
                close(fd);
                if ((fd = dial(0)) < 0) {
                    perror("loadgen: reconnect");
                    return 1;
                }
            }
        }
        if (run == 0)
            continue;
        qsort(lat, (size_t)n, sizeof(*lat), cmp_u64);
        printf("run=%d requests=%ld p50_us=%llu p99_us=%llu max_us=%llu errors=%ld\n", run, n,
               (unsigned long long)pct(lat, (size_t)n, 0.50),
               (unsigned long long)pct(lat, (size_t)n, 0.99), (unsigned long long)lat[n - 1],
               errors);
        fflush(stdout);
    }
    close(fd);
    free(lat);
    return 0;
}

/* ---- idle ---- */

static int
mode_idle(int conns, int runs)
{
    static char buf[BUFCAP];
    if (!pid) {
        fprintf(stderr, "loadgen: idle needs --pid\n");
        return 2;
    }
    int *fds = calloc((size_t)conns * (size_t)runs, sizeof(int));
    if (!fds)
        return 1;
    int nfd = 0;
    for (int run = 1; run <= runs; run++) {
        long errors = 0;
        usleep(200000);
        long before = rss_kb();
        for (int i = 0; i < conns; i++) {
            int fd = dial(0);
            if (fd < 0) {
                perror("loadgen: connect");
                return 1;
            }
            fds[nfd++] = fd;
            if (write(fd, req_small, req_small_len) != (ssize_t)req_small_len) {
                errors++;
                continue;
            }
            size_t len = 0, used;
            struct head h;
            int k = 0;
            while (k == 0) {
                ssize_t r = read(fd, buf + len, BUFCAP - len);
                if (r <= 0) {
                    k = -1;
                    break;
                }
                len += (size_t)r;
                k = parse_response(buf, len, &used, &h);
            }
            if (k < 0 || h.status != 200 || h.close)
                errors++;
        }
        usleep(300000); /* let the server settle (timers, freed buffers) */
        long after = rss_kb();
        /* every connection must still be open: one the server closed costs it nothing */
        int closed = 0;
        for (int i = 0; i < nfd; i++) {
            char c;
            ssize_t r = recv(fds[i], &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
                closed++;
        }
        errors += closed;
        printf("run=%d conns=%d total_conns=%d rss_before_kb=%ld rss_after_kb=%ld "
               "bytes_per_conn=%.0f closed=%d errors=%ld\n",
               run, conns, nfd, before, after, (double)(after - before) * 1024.0 / conns, closed,
               errors);
        fflush(stdout);
    }
    for (int i = 0; i < nfd; i++)
        close(fds[i]);
    free(fds);
    return 0;
}

/* ---- sse ---- */

enum { S_HEAD, S_SIZE, S_DATA, S_DATA_CRLF, S_TRAILER, S_CLEN, S_EOF };

struct sconn {
    int fd;
    int phase;
    size_t hlen;
    char head[8192];
    unsigned long long left; /* bytes left in the chunk / Content-Length body */
    int sizeline_ok;         /* saw a hex digit on the size line */
    int match;               /* bytes of "data:" matched at a line start, -1: mid-line */
    int trailer_nl;          /* newlines seen while reading the last chunk's end */
    int close_after;
    uint64_t sent_us, last_event_us;
    int first_seen;
};

struct sse_stats {
    uint64_t settle, end;
    uint64_t events, max_gap, errors, completed;
    uint64_t *ttft;
    size_t nttft, capttft;
};

static int sse_max_tokens;
static const char *samples_path; /* --ttft-out: every TTFT sample, appended */

static int
sconn_send(struct sconn *c, int max_tokens, uint64_t t)
{
    char req[1024];
    size_t n = make_request(req, sizeof(req), 1, max_tokens);
    c->phase = S_HEAD;
    c->hlen = 0;
    c->match = 0;
    c->first_seen = 0;
    c->last_event_us = 0;
    c->sent_us = t;
    return write(c->fd, req, n) == (ssize_t)n ? 0 : -1;
}

static int
sconn_open(struct sconn *c, int ep)
{
    c->fd = dial(1);
    if (c->fd < 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

/* Counts SSE "data:" lines in body bytes. */
static unsigned
count_events(struct sconn *c, const char *p, size_t n)
{
    static const char pat[] = "data:";
    unsigned k = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n') {
            c->match = 0;
            continue;
        }
        if (c->match < 0)
            continue;
        if (ch == pat[c->match]) {
            if (++c->match == 5) {
                k++;
                c->match = -1;
            }
        } else
            c->match = -1;
    }
    return k;
}

/* Feeds received bytes; returns 1 when the response ended, 0 otherwise, -1 bad. */
static int
sconn_feed(struct sconn *c, const char *p, size_t n, unsigned *events)
{
    while (n) {
        switch (c->phase) {
        case S_HEAD: {
            size_t take = n < sizeof(c->head) - c->hlen ? n : sizeof(c->head) - c->hlen;
            if (take == 0)
                return -1;
            memcpy(c->head + c->hlen, p, take);
            size_t old = c->hlen > 3 ? c->hlen - 3 : 0;
            c->hlen += take;
            const char *e = memmem(c->head + old, c->hlen - old, "\r\n\r\n", 4);
            if (!e) {
                p += take;
                n -= take;
                continue;
            }
            size_t hl = (size_t)(e - c->head) + 4;
            struct head h;
            if (parse_head(c->head, hl, &h) < 0 || h.status != 200)
                return -1;
            c->close_after = h.close;
            size_t consumed = hl - (c->hlen - take);
            p += consumed;
            n -= consumed;
            c->match = 0;
            if (h.chunked) {
                c->phase = S_SIZE;
                c->left = 0;
                c->sizeline_ok = 0;
            } else if (h.clen >= 0) {
                c->phase = S_CLEN;
                c->left = (unsigned long long)h.clen;
                if (c->left == 0)
                    return 1;
            } else
                c->phase = S_EOF;
            break;
        }
        case S_SIZE: {
            char ch = *p++;
            n--;
            if (isxdigit((unsigned char)ch) && c->sizeline_ok >= 0) {
                c->left = c->left * 16 + (unsigned)(isdigit((unsigned char)ch)
                                                        ? ch - '0'
                                                        : (tolower((unsigned char)ch) - 'a' + 10));
                c->sizeline_ok = 1;
            } else if (ch == '\n') {
                if (c->sizeline_ok == 0)
                    return -1;
                if (c->left == 0) {
                    c->phase = S_TRAILER;
                    c->trailer_nl = 0;
                } else
                    c->phase = S_DATA;
                c->sizeline_ok = 0;
            } else if (ch != '\r')
                c->sizeline_ok = c->sizeline_ok ? -1 : 0; /* chunk extension: ignore */
            break;
        }
        case S_DATA: {
            size_t take = n < c->left ? n : (size_t)c->left;
            *events += count_events(c, p, take);
            p += take;
            n -= take;
            c->left -= take;
            if (c->left == 0) {
                c->phase = S_DATA_CRLF;
                c->left = 2;
            }
            break;
        }
        case S_DATA_CRLF:
            p++;
            n--;
            if (--c->left == 0) {
                c->phase = S_SIZE;
                c->left = 0;
            }
            break;
        case S_TRAILER: /* after "0\r\n": wait for the blank line */
            if (*p == '\n') {
                if (++c->trailer_nl == 1) {
                    /* only the terminating CRLF if no trailer text came before */
                    p++;
                    n--;
                    return 1;
                }
            }
            p++;
            n--;
            break;
        case S_CLEN: {
            size_t take = n < c->left ? n : (size_t)c->left;
            *events += count_events(c, p, take);
            p += take;
            n -= take;
            c->left -= take;
            if (c->left == 0)
                return 1;
            break;
        }
        case S_EOF:
            *events += count_events(c, p, n);
            n = 0;
            break;
        }
    }
    return 0;
}

static void
add_ttft(struct sse_stats *s, uint64_t v)
{
    if (s->nttft == s->capttft) {
        s->capttft = s->capttft ? s->capttft * 2 : 4096;
        s->ttft = realloc(s->ttft, s->capttft * sizeof(*s->ttft));
        if (!s->ttft)
            abort();
    }
    s->ttft[s->nttft++] = v;
}

static int
mode_sse(int streams, double settle, double seconds, int tps, int runs)
{
    int ep = epoll_create1(0);
    struct sconn *cs = calloc((size_t)streams, sizeof(*cs));
    if (!cs)
        return 1;
    for (int i = 0; i < streams; i++)
        if (sconn_open(&cs[i], ep) < 0) {
            perror("loadgen: connect");
            return 1;
        }
    long hz = sysconf(_SC_CLK_TCK);
    uint64_t expected_gap = tps > 0 ? 1000000u / (unsigned)tps : 0;
    static char buf[BUFCAP];
    struct epoll_event evs[256];
    for (int run = 1; run <= runs; run++) {
        struct sse_stats st = {0};
        uint64_t start = now_us();
        st.settle = start + (uint64_t)(settle * 1e6);
        st.end = st.settle + (uint64_t)(seconds * 1e6);
        /* First round: starts spread over one token interval, so that the
         * streams' tokens do not all fall on the same instants, and lengths
         * staggered, so that streams end (and restart) evenly spread in time. */
        uint64_t ramp = expected_gap ? expected_gap : 40000;
        int started = 0;
        long long t0 = -1, t1 = -1, t0s[MAX_PIDS] = {0}, t1s[MAX_PIDS] = {0};
        for (;;) {
            uint64_t t = now_us();
            while (started < streams && t >= start + ramp * (uint64_t)started / (uint64_t)streams) {
                int mt = (int)((long long)sse_max_tokens * (started + 1) / streams);
                if (sconn_send(&cs[started], mt < 1 ? 1 : mt, t) < 0)
                    st.errors++;
                started++;
            }
            if (t0 < 0 && t >= st.settle && pid) {
                t0 = 0;
                for (int i = 0; i < npids; i++)
                    t0 += t0s[i] = cpu_ticks_of(pids[i]);
            }
            if (t >= st.end)
                break;
            int n = epoll_wait(ep, evs, 256, started < streams ? 1 : 5);
            t = now_us();
            for (int i = 0; i < n; i++) {
                struct sconn *c = evs[i].data.ptr;
                ssize_t r = read(c->fd, buf, sizeof(buf));
                if (r < 0 && errno == EAGAIN)
                    continue;
                unsigned ev = 0;
                int k;
                if (r <= 0)
                    k = c->phase == S_EOF ? 1 : -1;
                else
                    k = sconn_feed(c, buf, (size_t)r, &ev);
                if (ev) {
                    if (t >= st.settle && t < st.end) {
                        st.events += ev;
                        if (c->last_event_us && t - c->last_event_us > st.max_gap)
                            st.max_gap = t - c->last_event_us;
                        if (!c->first_seen && c->sent_us >= st.settle)
                            add_ttft(&st, t - c->sent_us);
                    }
                    c->first_seen = 1;
                    c->last_event_us = t;
                }
                if (k == 0)
                    continue;
                if (k < 0)
                    st.errors++;
                else
                    st.completed++;
                if (k < 0 || c->close_after || r <= 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    if (sconn_open(c, ep) < 0) {
                        perror("loadgen: reconnect");
                        return 1;
                    }
                }
                if (sconn_send(c, sse_max_tokens, now_us()) < 0)
                    st.errors++;
            }
        }
        if (pid) {
            t1 = 0;
            for (int i = 0; i < npids; i++)
                t1 += t1s[i] = cpu_ticks_of(pids[i]);
        }
        /* drain: close and reopen every connection so the next run starts clean */
        for (int i = 0; i < streams; i++) {
            epoll_ctl(ep, EPOLL_CTL_DEL, cs[i].fd, NULL);
            close(cs[i].fd);
        }
        usleep(300000);
        for (int i = 0; i < streams; i++)
            if (sconn_open(&cs[i], ep) < 0) {
                perror("loadgen: connect");
                return 1;
            }
        if (samples_path) {
            FILE *f = fopen(samples_path, "a");
            if (!f) {
                perror(samples_path);
                return 1;
            }
            for (size_t i = 0; i < st.nttft; i++)
                fprintf(f, "%llu\n", (unsigned long long)st.ttft[i]);
            fclose(f);
        }
        qsort(st.ttft, st.nttft, sizeof(*st.ttft), cmp_u64);
        double win = seconds;
        double gap_ms = (double)st.max_gap / 1000.0;
        double delay_ms =
            st.max_gap > expected_gap ? (double)(st.max_gap - expected_gap) / 1000.0 : 0;
        printf("run=%d events=%llu events_per_s=%.0f max_gap_ms=%.1f worst_delay_ms=%.1f "
               "ttft_n=%zu ttft_p50_us=%llu ttft_p99_us=%llu completed=%llu errors=%llu",
               run, (unsigned long long)st.events, (double)st.events / win, gap_ms, delay_ms,
               st.nttft, (unsigned long long)pct(st.ttft, st.nttft, 0.50),
               (unsigned long long)pct(st.ttft, st.nttft, 0.99),
               (unsigned long long)st.completed, (unsigned long long)st.errors);
        if (pid) {
            printf(" cpu_pct=%.2f", (double)(t1 - t0) / (double)hz / win * 100.0);
            if (st.events)
                printf(" cpu_us_per_event=%.3f",
                       (double)(t1 - t0) / (double)hz * 1e6 / (double)st.events);
            if (npids > 1)
                for (int i = 0; i < npids; i++)
                    printf("%s%.2f", i ? "," : " cpu_pct_each=",
                           (double)(t1s[i] - t0s[i]) / (double)hz / win * 100.0);
        }
        printf("\n");
        fflush(stdout);
        free(st.ttft);
    }
    free(cs);
    return 0;
}

static void
usage(void)
{
    fprintf(stderr, "usage: loadgen rps|lat|idle|sse HOST PORT [options] (see bench/loadgen.c)\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    if (argc < 4)
        usage();
    const char *mode = argv[1];
    host = argv[2];
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        usage();
    int conns = -1, runs = 5, tps = 25, streams = 512;
    long requests = -1, warmup = -1;
    double settle = 1, seconds = 6;
    sse_max_tokens = 250;
    for (int i = 4; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *o = argv[i], *v = argv[++i];
        if (!strcmp(o, "--conns"))
            conns = atoi(v);
        else if (!strcmp(o, "--requests"))
            requests = atol(v);
        else if (!strcmp(o, "--warmup"))
            warmup = atol(v);
        else if (!strcmp(o, "--runs"))
            runs = atoi(v);
        else if (!strcmp(o, "--pid")) {
            for (const char *q = v; q && npids < MAX_PIDS; q = strchr(q, ',')) {
                if (*q == ',')
                    q++;
                pids[npids++] = atoi(q);
            }
            pid = pids[0];
        } else if (!strcmp(o, "--streams"))
            streams = atoi(v);
        else if (!strcmp(o, "--max-tokens"))
            sse_max_tokens = atoi(v);
        else if (!strcmp(o, "--tps"))
            tps = atoi(v);
        else if (!strcmp(o, "--settle"))
            settle = atof(v);
        else if (!strcmp(o, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(o, "--ttft-out"))
            samples_path = v;
        else if (!strcmp(o, "--model"))
            model = v;
        else
            usage();
    }
    if (runs < 1 || streams < 1 || seconds <= 0)
        usage();
    req_small_len = make_request(req_small, sizeof(req_small), 0, 8);
    if (!strcmp(mode, "rps"))
        return mode_rps(conns > 0 ? conns : 64, requests > 0 ? requests : 50000,
                        warmup >= 0 ? warmup : 10000, runs);
    if (!strcmp(mode, "lat"))
        return mode_lat(requests > 0 ? requests : 5000, warmup >= 0 ? warmup : 1000, runs);
    if (!strcmp(mode, "idle"))
        return mode_idle(conns > 0 ? conns : 1000, runs);
    if (!strcmp(mode, "sse"))
        return mode_sse(streams, settle, seconds, tps, runs);
    usage();
    return 2;
}
