/* gateway internals shared by gateway.c, sse.c, scan.c, metrics.c and the
 * unit tests: the SSE event splitter, byte-level scans of JSON bodies (no
 * allocation, bounded, safe on malformed input) and the request metrics. */
#ifndef LM_GATEWAY_GW_H
#define LM_GATEWAY_GW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

/* ---- SSE ---- */

/* An event larger than this is passed through in pieces, uninspected: the
 * usage chunk we look for is always small, and memory per stream stays
 * bounded whatever the runtime sends. */
#define GW_SSE_EVENT_MAX 8192

/* ev is a complete event with its blank line (whole = true), or a piece of
 * an oversized one (whole = false), to be forwarded as it is. */
typedef void gw_sse_fn(void *arg, const char *ev, size_t len, bool whole);

struct gw_sse {
    struct lm_buf part; /* the incomplete event at the end of the last feed */
    unsigned char nl;   /* 0 mid-line, 1 at a line start, 2 after "\r" at a line start */
    bool oversize;      /* the current event is being passed through */
};

void gw_sse_init(struct gw_sse *s);
void gw_sse_reset(struct gw_sse *s); /* keeps the buffer's memory */
void gw_sse_release(struct gw_sse *s);
/* Splits data into events on blank lines ("\n\n", "\r\n\r\n") and calls fn
 * for each, as soon as its end is seen. */
void gw_sse_feed(struct gw_sse *s, const char *data, size_t len, gw_sse_fn *fn, void *arg);
/* Bytes held back (an event without its end yet). */
size_t gw_sse_pending(const struct gw_sse *s);

/* ---- JSON byte scans ---- */

struct gw_span {
    bool found;
    size_t member; /* offset of the key's opening quote */
    size_t val, val_len;
};

/* Top-level members of an object we may rewrite. Keys are matched as written
 * (an escaped key is not found; callers fall back to re-serializing). */
struct gw_members {
    size_t open; /* offset of '{' */
    struct gw_span model, stream_options;
};

/* Scans a JSON object (already validated) for its top-level members. Returns
 * 0, or -EINVAL when s is not an object. */
int gw_scan_members(const char *s, size_t len, struct gw_members *out);

/* A request body as the gateway routes it, read in one pass without a tree
 * (jansson's parse of each body was a tenth of the gateway's CPU). */
enum gw_jtype {
    GW_J_ABSENT,
    GW_J_NULL,
    GW_J_FALSE,
    GW_J_TRUE,
    GW_J_NUMBER,
    GW_J_STRING,
    GW_J_ARRAY,
    GW_J_OBJECT,
};

#define GW_SCAN_DEPTH 64 /* deeper nesting is left to jansson (its limit: 2048) */

struct gw_body {
    struct gw_members members; /* where "model" and "stream_options" sit */
    enum gw_jtype model, stream, stream_options;
    enum gw_jtype include_usage; /* in stream_options, when that is an object */
};

/* Checks that s is one JSON object, exactly as json_loadb(s, len, 0) would
 * accept it, and reads its top-level "model", "stream" and "stream_options"
 * (the last of each, as jansson keeps). Returns 0: valid, and "model", if a
 * string, has no escapes (its bytes between the quotes are its value), and
 * no top-level key is escaped (members is exact); -EINVAL: jansson would
 * refuse it, or it is not an object; -EAGAIN: cannot tell cheaply (escapes
 * where they matter, numbers jansson may find out of range, nesting past
 * GW_SCAN_DEPTH): parse it with jansson. */
int gw_scan_body(const char *s, size_t len, struct gw_body *out);

/* Finds the last `"usage": {...}` in s and reads prompt_tokens and
 * completion_tokens (0 when absent). False when there is none (or null). */
bool gw_find_usage(const char *s, size_t len, uint64_t *prompt, uint64_t *completion);

/* An SSE chunk whose "choices" is an empty array: the usage-only chunk of a
 * stream with include_usage. */
bool gw_is_usage_only(const char *ev, size_t len);

/* Removes `,"usage":null` (or `"usage":null,`) from an event in place;
 * returns the new length. */
size_t gw_strip_usage_null(char *ev, size_t len);

/* Appends s as a JSON string literal (quotes included). */
void gw_json_str(struct lm_buf *b, const char *s, size_t len);

/* us as milliseconds, one decimal: what printf("%.1f", us / 1000.0) writes. */
char *gw_fmt_ms(char *out, size_t cap, uint64_t us);

/* ---- metrics ---- */

enum gw_route {
    GW_ROUTE_NONE, /* not an API route (404/405) */
    GW_ROUTE_MODELS,
    GW_ROUTE_CHAT,
    GW_ROUTE_COMPLETIONS,
    GW_ROUTE_EMBEDDINGS,
    GW_ROUTE_COUNT,
};

const char *gw_route_name(enum gw_route r);

enum gw_fail {
    GW_FAIL_NONE,
    GW_FAIL_CONNECT,  /* could not connect */
    GW_FAIL_TIMEOUT,  /* a deadline passed */
    GW_FAIL_STATUS,   /* 5xx */
    GW_FAIL_BUSY,     /* 429, or 503 (busy / loading) */
    GW_FAIL_BROKEN,   /* closed or reset before the answer was complete */
    GW_FAIL_PROTOCOL, /* not HTTP, or an empty answer */
    GW_FAIL_COUNT,
};

const char *gw_fail_name(enum gw_fail f);

/* Bounds: label values come only from known models and endpoints, and the
 * number of series is capped on top of that (overflow goes to "other"). */
#define GW_METRICS_SERIES_MAX 2048
#define GW_METRICS_MODELS_MAX 512
#define GW_METRICS_ERRORS_MAX 512
#define GW_LABEL_MAX 256

struct gw_metrics;

struct gw_metrics *gw_metrics_new(void);
void gw_metrics_free(struct gw_metrics *m);
/* model / endpoint: NULL for "unknown" / "none". ttft_us 0 = not measured. */
void gw_metrics_request(struct gw_metrics *m, enum gw_route route, const char *model,
                        const char *endpoint, int status, uint64_t duration_us, uint64_t ttft_us,
                        uint64_t tokens_in, uint64_t tokens_out);
void gw_metrics_upstream_error(struct gw_metrics *m, const char *endpoint, enum gw_fail reason);
/* Whole families in Prometheus text format. */
void gw_metrics_write(const struct gw_metrics *m, unsigned in_flight, struct lm_buf *out);

#endif
