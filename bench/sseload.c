/* sseload: keeps N streaming chat requests open against an OpenAI-compatible
 * server for a while, counts SSE events and the longest gap between two
 * events of one stream. When a stream ends ("data: [DONE]" and the last
 * chunk) the next request goes out on the same keep-alive connection.
 *
 *   sseload HOST PORT STREAMS SECONDS MAX_TOKENS [MODEL]
 *
 * Prints one line: events=N seconds=S events_per_s=R max_gap_ms=G streams=K errors=E */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct stream {
    int fd;
    char tail[16]; /* last bytes seen, to find markers split across reads */
    size_t tail_len;
    uint64_t last_event_us;
};

static uint64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static char request[1024];
static size_t request_len;

static int
open_stream(struct stream *s, const struct sockaddr_in *addr, int ep)
{
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->fd < 0 || connect(s->fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0) {
        perror("sseload: connect");
        return -1;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    s->tail_len = 0;
    s->last_event_us = 0;
    return write(s->fd, request, request_len) == (ssize_t)request_len ? 0 : -1;
}

/* Counts "data: " in buf, with the previous tail prepended. Returns the
 * count; *done is set when the chunked stream's last chunk was seen. */
static unsigned
scan(struct stream *s, const char *buf, size_t n, int *done)
{
    static const char data[] = "data: ", end[] = "\r\n0\r\n\r\n";
    char win[16 + 65536];
    size_t len = s->tail_len + n;
    unsigned count = 0;

    memcpy(win, s->tail, s->tail_len);
    memcpy(win + s->tail_len, buf, n);
    for (const char *p = win; (p = memmem(p, (size_t)(win + len - p), data, 6)); p += 6)
        if (p + 6 > win + s->tail_len) /* not counted last time */
            count++;
    *done = len >= 7 && memcmp(win + len - 7, end, 7) == 0;
    size_t keep = len < 15 ? len : 15;
    memcpy(s->tail, win + len - keep, keep);
    s->tail_len = keep;
    return count;
}

int
main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: sseload HOST PORT STREAMS SECONDS MAX_TOKENS [MODEL]\n");
        return 2;
    }
    int nstreams = atoi(argv[3]);
    double seconds = atof(argv[4]);
    int max_tokens = atoi(argv[5]);
    const char *model = argc > 6 ? argv[6] : "llama3.2:1b";
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (nstreams < 1 || nstreams > 60000 || seconds <= 0 ||
        inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "sseload: bad arguments\n");
        return 2;
    }
    char body[512];
    int bl = snprintf(body, sizeof(body),
                      "{\"model\":\"%s\",\"stream\":true,\"max_tokens\":%d,\"messages\":"
                      "[{\"role\":\"user\",\"content\":\"tell me a story\"}]}",
                      model, max_tokens);
    request_len = (size_t)snprintf(request, sizeof(request),
                                   "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                                   argv[1], bl, body);

    int ep = epoll_create1(0);
    struct stream *streams = calloc((size_t)nstreams, sizeof(*streams));
    if (!streams)
        return 1;
    for (int i = 0; i < nstreams; i++)
        if (open_stream(&streams[i], &addr, ep) < 0)
            return 1;

    uint64_t start = now_us(), deadline = start + (uint64_t)(seconds * 1e6);
    uint64_t events = 0, max_gap = 0, completed = 0, errors = 0;
    struct epoll_event evs[256];
    static char buf[65536];
    while (now_us() < deadline) {
        int n = epoll_wait(ep, evs, 256, 50);
        uint64_t t = now_us();
        for (int i = 0; i < n; i++) {
            struct stream *s = evs[i].data.ptr;
            ssize_t r = read(s->fd, buf, sizeof(buf));
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                errors++;
                close(s->fd);
                if (open_stream(s, &addr, ep) < 0)
                    return 1;
                continue;
            }
            int done;
            unsigned c = scan(s, buf, (size_t)r, &done);
            if (c) {
                if (s->last_event_us && t - s->last_event_us > max_gap)
                    max_gap = t - s->last_event_us;
                s->last_event_us = t;
                events += c;
            }
            if (done) {
                completed++;
                s->tail_len = 0;
                s->last_event_us = 0;
                if (write(s->fd, request, request_len) != (ssize_t)request_len)
                    errors++;
            }
        }
    }
    double elapsed = (double)(now_us() - start) / 1e6;
    printf("events=%llu seconds=%.3f events_per_s=%.0f max_gap_ms=%.1f streams=%llu errors=%llu\n",
           (unsigned long long)events, elapsed, (double)events / elapsed, (double)max_gap / 1000.0,
           (unsigned long long)completed, (unsigned long long)errors);
    for (int i = 0; i < nstreams; i++)
        close(streams[i].fd);
    free(streams);
    return 0;
}
