/* util: the small things every module needs and no library gives us whole.
 * Owns: aborting allocators, bounded byte buffers, diagnostics lists
 * (FILE:LINE:COL: message), hex, host:port parsing, bounded file reads. */
#ifndef LM_UTIL_H
#define LM_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define LM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define LM_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Event priorities of labmand's loop (event_base_priority_init(base,
 * LM_PRIO_N)): a request still waiting for its first byte is served before
 * the next token of streams already flowing, so that hundreds of streams do
 * not add their work to every new request's time to first token. Modules set
 * them best-effort: on a loop without priorities the call fails harmlessly. */
enum { LM_PRIO_URGENT = 0, LM_PRIO_BULK = 1, LM_PRIO_N = 2 };

/* Allocation failure aborts: a daemon that cannot allocate 100 bytes cannot
 * do anything useful, and checking every call hides the real error paths. */
void *lm_xmalloc(size_t n);
void *lm_xcalloc(size_t nmemb, size_t size);
void *lm_xrealloc(void *p, size_t n);
char *lm_xstrdup(const char *s);
char *lm_xstrndup(const char *s, size_t n);
char *lm_xasprintf(const char *fmt, ...) LM_PRINTF(1, 2);

/* A growable byte buffer with a hard cap. Appends past the cap fail with
 * -E2BIG and leave the buffer unchanged. Always NUL-terminated. */
struct lm_buf {
    char *data;
    size_t len;
    size_t cap;   /* allocated */
    size_t limit; /* hard cap on len; 0 = SIZE_MAX */
};

void lm_buf_init(struct lm_buf *b, size_t limit);
void lm_buf_release(struct lm_buf *b);
void lm_buf_reset(struct lm_buf *b);
int lm_buf_append(struct lm_buf *b, const void *p, size_t n);
int lm_buf_puts(struct lm_buf *b, const char *s);
int lm_buf_printf(struct lm_buf *b, const char *fmt, ...) LM_PRINTF(2, 3);
int lm_buf_vprintf(struct lm_buf *b, const char *fmt, va_list ap);
/* Appends s as a Prometheus label value: backslash, quote and newline
 * escaped, so a name from a config or a runtime cannot break /metrics. */
void lm_buf_prom_label(struct lm_buf *b, const char *s);

/* Diagnostics: problems found in an input, each with a position, so that a
 * config with several mistakes reports all of them at once. */
struct lm_diag {
    int line; /* 1-based; 0 = no position */
    int col;  /* 1-based */
    char *msg;
};

struct lm_diags {
    struct lm_diag *v;
    size_t n, cap;
};

void lm_diags_add(struct lm_diags *d, int line, int col, const char *fmt, ...) LM_PRINTF(4, 5);
void lm_diags_clear(struct lm_diags *d);
/* Prints each as "FILE:LINE:COL: message\n" (or "FILE: message"). */
void lm_diags_print(const struct lm_diags *d, const char *file, FILE *out);
/* Sorts by position so output follows the file. */
void lm_diags_sort(struct lm_diags *d);

/* Lowercase hex. lm_hex_decode returns -EINVAL unless hex is exactly
 * 2*outlen hex digits. */
void lm_hex_encode(char *out, const uint8_t *in, size_t n); /* out: 2n+1 bytes */
int lm_hex_decode(uint8_t *out, size_t outlen, const char *hex);
bool lm_is_hex(const char *s, size_t n);
/* 0..15 for a hex digit (either case), -1 otherwise. */
int lm_hex_value(int c);

/* "host:port", "[v6]:port". host is copied into hostbuf. Port 1..65535
 * (0 allowed when allow_zero). Returns 0 or -EINVAL. */
int lm_hostport_parse(const char *s, char *hostbuf, size_t hostcap, int *port, bool allow_zero);

/* True when a "host:port" names a loopback address (127/8, ::1, v4-mapped
 * 127/8, "localhost"). Any other name may resolve anywhere: false. */
bool lm_hostport_is_loopback(const char *hostport);

struct sockaddr;
/* "1.2.3.4:80" or "[::1]:80", for logs and listen addresses. */
void lm_sockaddr_format(char *out, size_t cap, const struct sockaddr *sa);

/* Reads a whole file of at most max bytes. -EFBIG when larger. */
int lm_file_read(const char *path, size_t max, char **out, size_t *outlen);

/* Escapes bytes that came from outside (clients, peers, files) so a log line
 * stays one line of printable ASCII: \n, \", \\, \xNN. Truncates with "...". */
void lm_escape(char *out, size_t outcap, const void *in, size_t inlen);

/* Monotonic and wall clocks. */
uint64_t lm_now_ms(void);
/* Unix time in ms (CLOCK_REALTIME): what signed frames carry in ts. */
uint64_t lm_wall_ms(void);
uint64_t lm_now_us(void);

/* Levenshtein distance, capped: for "did you mean" hints. */
int lm_edit_distance(const char *a, const char *b);

#endif
