/* The gateway's request metrics: counters keyed by a few labels in small
 * open-addressing tables (a lookup per request, no allocation once a series
 * exists), latency histograms per route, and their Prometheus text. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gw.h"

static const char *const route_names[GW_ROUTE_COUNT] = {
    [GW_ROUTE_NONE] = "none",
    [GW_ROUTE_MODELS] = "models",
    [GW_ROUTE_CHAT] = "chat_completions",
    [GW_ROUTE_COMPLETIONS] = "completions",
    [GW_ROUTE_EMBEDDINGS] = "embeddings",
};

const char *
gw_route_name(enum gw_route r)
{
    return r < GW_ROUTE_COUNT ? route_names[r] : "none";
}

static const char *const fail_names[GW_FAIL_COUNT] = {
    [GW_FAIL_NONE] = "none",         [GW_FAIL_CONNECT] = "connect",
    [GW_FAIL_TIMEOUT] = "timeout",   [GW_FAIL_STATUS] = "status_5xx",
    [GW_FAIL_BUSY] = "busy",         [GW_FAIL_BROKEN] = "broken",
    [GW_FAIL_PROTOCOL] = "protocol",
};

const char *
gw_fail_name(enum gw_fail f)
{
    return f < GW_FAIL_COUNT ? fail_names[f] : "none";
}

/* Upper bounds in seconds (microseconds here). */
static const uint64_t duration_bounds_us[] = {
    1000,    5000,    10000,    25000,    50000,    100000,    250000,
    500000,  1000000, 2500000,  5000000,  10000000, 30000000,  60000000,
    120000000, 300000000, 600000000,
};
static const uint64_t ttft_bounds_us[] = {
    1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
    30000000,
};
#define DUR_N LM_ARRAY_LEN(duration_bounds_us)
#define TTFT_N LM_ARRAY_LEN(ttft_bounds_us)

struct hist {
    uint64_t bucket[DUR_N]; /* non-cumulative; TTFT uses the first TTFT_N */
    uint64_t count;
    uint64_t sum_us;
};

struct req_series {
    char *model, *endpoint;
    uint8_t route;
    int status;
    uint32_t hash;
    uint64_t n;
};

struct model_series {
    char *model;
    uint32_t hash;
    uint64_t in, out;
};

struct err_series {
    char *endpoint;
    uint8_t reason;
    uint32_t hash;
    uint64_t n;
};

/* Table sizes: powers of two, twice the series cap, so probes stay short. */
#define REQ_SLOTS (GW_METRICS_SERIES_MAX * 2)
#define MODEL_SLOTS (GW_METRICS_MODELS_MAX * 2)
#define ERR_SLOTS (GW_METRICS_ERRORS_MAX * 2)

struct gw_metrics {
    struct req_series req[REQ_SLOTS];
    size_t n_req;
    struct model_series model[MODEL_SLOTS];
    size_t n_model;
    struct err_series err[ERR_SLOTS];
    size_t n_err;
    struct hist duration[GW_ROUTE_COUNT];
    struct hist ttft[GW_ROUTE_COUNT];
};

static const char OTHER[] = "other";
#define OVERFLOW_ROOM 64

static uint32_t
fnv(uint32_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return (h ^ 0xff) * 16777619u;
}

struct gw_metrics *
gw_metrics_new(void)
{
    return lm_xcalloc(1, sizeof(struct gw_metrics));
}

void
gw_metrics_free(struct gw_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < REQ_SLOTS; i++) {
        free(m->req[i].model);
        free(m->req[i].endpoint);
    }
    for (size_t i = 0; i < MODEL_SLOTS; i++)
        free(m->model[i].model);
    for (size_t i = 0; i < ERR_SLOTS; i++)
        free(m->err[i].endpoint);
    free(m);
}

static char *
label_dup(const char *s)
{
    size_t n = strnlen(s, GW_LABEL_MAX);
    return lm_xstrndup(s, n);
}

static struct req_series *
req_slot(struct gw_metrics *m, uint8_t route, const char *model, const char *endpoint, int status)
{
    for (int pass = 0; pass < 2; pass++) {
        uint32_t h = fnv(fnv(2166136261u ^ route ^ ((uint32_t)status << 8), model), endpoint);
        for (size_t i = 0; i < REQ_SLOTS; i++) {
            struct req_series *s = &m->req[(h + i) & (REQ_SLOTS - 1)];
            if (!s->model) {
                if (m->n_req >= GW_METRICS_SERIES_MAX - (model != OTHER ? OVERFLOW_ROOM : 0))
                    break;
                s->model = label_dup(model);
                s->endpoint = label_dup(endpoint);
                s->route = route;
                s->status = status;
                s->hash = h;
                m->n_req++;
                return s;
            }
            if (s->hash == h && s->route == route && s->status == status &&
                strcmp(s->model, model) == 0 && strcmp(s->endpoint, endpoint) == 0)
                return s;
        }
        /* Full: count under model="other", endpoint="other" (room is kept
         * for those series, one per route and status). */
        model = OTHER;
        endpoint = OTHER;
    }
    return NULL;
}

static struct model_series *
model_slot(struct gw_metrics *m, const char *model)
{
    for (int pass = 0; pass < 2; pass++) {
        uint32_t h = fnv(2166136261u, model);
        for (size_t i = 0; i < MODEL_SLOTS; i++) {
            struct model_series *s = &m->model[(h + i) & (MODEL_SLOTS - 1)];
            if (!s->model) {
                if (m->n_model >= GW_METRICS_MODELS_MAX - (model != OTHER))
                    break;
                s->model = label_dup(model);
                s->hash = h;
                m->n_model++;
                return s;
            }
            if (s->hash == h && strcmp(s->model, model) == 0)
                return s;
        }
        model = OTHER;
    }
    return NULL;
}

static void
hist_add(struct hist *h, const uint64_t *bounds, size_t n, uint64_t us)
{
    size_t i = 0;
    while (i < n && us > bounds[i])
        i++;
    if (i < n)
        h->bucket[i]++;
    h->count++;
    h->sum_us += us;
}

void
gw_metrics_request(struct gw_metrics *m, enum gw_route route, const char *model,
                   const char *endpoint, int status, uint64_t duration_us, uint64_t ttft_us,
                   uint64_t tokens_in, uint64_t tokens_out)
{
    if (route >= GW_ROUTE_COUNT)
        route = GW_ROUTE_NONE;
    const char *ml = model ? model : "unknown";
    struct req_series *s = req_slot(m, (uint8_t)route, ml, endpoint ? endpoint : "none", status);
    if (s)
        s->n++;
    hist_add(&m->duration[route], duration_bounds_us, DUR_N, duration_us);
    if (ttft_us)
        hist_add(&m->ttft[route], ttft_bounds_us, TTFT_N, ttft_us);
    if (model && (tokens_in || tokens_out)) {
        struct model_series *ms = model_slot(m, model);
        if (ms) {
            ms->in += tokens_in;
            ms->out += tokens_out;
        }
    }
}

void
gw_metrics_upstream_error(struct gw_metrics *m, const char *endpoint, enum gw_fail reason)
{
    if (reason >= GW_FAIL_COUNT)
        reason = GW_FAIL_NONE;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t h = fnv(2166136261u ^ (uint32_t)reason, endpoint);
        for (size_t i = 0; i < ERR_SLOTS; i++) {
            struct err_series *s = &m->err[(h + i) & (ERR_SLOTS - 1)];
            if (!s->endpoint) {
                if (m->n_err >= GW_METRICS_ERRORS_MAX - (endpoint != OTHER))
                    break;
                s->endpoint = label_dup(endpoint);
                s->reason = (uint8_t)reason;
                s->hash = h;
                s->n = 1;
                m->n_err++;
                return;
            }
            if (s->hash == h && s->reason == reason && strcmp(s->endpoint, endpoint) == 0) {
                s->n++;
                return;
            }
        }
        endpoint = OTHER;
    }
}

static void
write_hist(struct lm_buf *out, const char *name, const struct hist *hs, const uint64_t *bounds,
           size_t n)
{
    for (int r = 0; r < GW_ROUTE_COUNT; r++) {
        const struct hist *h = &hs[r];
        if (h->count == 0)
            continue;
        uint64_t cum = 0;
        for (size_t i = 0; i < n; i++) {
            cum += h->bucket[i];
            lm_buf_printf(out, "%s_bucket{route=\"%s\",le=\"%g\"} %" PRIu64 "\n", name,
                          route_names[r], (double)bounds[i] / 1e6, cum);
        }
        lm_buf_printf(out, "%s_bucket{route=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", name,
                      route_names[r], h->count);
        lm_buf_printf(out, "%s_sum{route=\"%s\"} %.6f\n", name, route_names[r],
                      (double)h->sum_us / 1e6);
        lm_buf_printf(out, "%s_count{route=\"%s\"} %" PRIu64 "\n", name, route_names[r],
                      h->count);
    }
}

void
gw_metrics_write(const struct gw_metrics *m, unsigned in_flight, struct lm_buf *out)
{
    lm_buf_puts(out, "# HELP labman_requests_total Gateway API requests by route, model, "
                     "endpoint and HTTP status (499: the client left).\n"
                     "# TYPE labman_requests_total counter\n");
    for (size_t i = 0; i < REQ_SLOTS; i++) {
        const struct req_series *s = &m->req[i];
        if (!s->model)
            continue;
        lm_buf_printf(out, "labman_requests_total{route=\"%s\",model=\"", route_names[s->route]);
        lm_buf_prom_label(out, s->model);
        lm_buf_puts(out, "\",endpoint=\"");
        lm_buf_prom_label(out, s->endpoint);
        lm_buf_printf(out, "\",status=\"%d\"} %" PRIu64 "\n", s->status, s->n);
    }

    lm_buf_puts(out, "# HELP labman_request_duration_seconds Time from a request's arrival to "
                     "the end of its answer.\n"
                     "# TYPE labman_request_duration_seconds histogram\n");
    write_hist(out, "labman_request_duration_seconds", m->duration, duration_bounds_us, DUR_N);

    lm_buf_puts(out, "# HELP labman_ttft_seconds Time from a streamed request's arrival to its "
                     "first event sent to the client.\n"
                     "# TYPE labman_ttft_seconds histogram\n");
    write_hist(out, "labman_ttft_seconds", m->ttft, ttft_bounds_us, TTFT_N);

    lm_buf_puts(out, "# HELP labman_tokens_total Tokens by direction (in: prompt, out: "
                     "completion) and model, as the runtimes reported them.\n"
                     "# TYPE labman_tokens_total counter\n");
    for (size_t i = 0; i < MODEL_SLOTS; i++) {
        const struct model_series *s = &m->model[i];
        if (!s->model)
            continue;
        lm_buf_puts(out, "labman_tokens_total{direction=\"in\",model=\"");
        lm_buf_prom_label(out, s->model);
        lm_buf_printf(out, "\"} %" PRIu64 "\n", s->in);
        lm_buf_puts(out, "labman_tokens_total{direction=\"out\",model=\"");
        lm_buf_prom_label(out, s->model);
        lm_buf_printf(out, "\"} %" PRIu64 "\n", s->out);
    }

    lm_buf_printf(out, "# HELP labman_requests_in_flight Gateway requests received and not yet "
                       "answered (queued included).\n"
                       "# TYPE labman_requests_in_flight gauge\n"
                       "labman_requests_in_flight %u\n",
                  in_flight);

    lm_buf_puts(out, "# HELP labman_upstream_errors_total Failed attempts on local endpoints "
                     "by reason.\n"
                     "# TYPE labman_upstream_errors_total counter\n");
    for (size_t i = 0; i < ERR_SLOTS; i++) {
        const struct err_series *s = &m->err[i];
        if (!s->endpoint)
            continue;
        lm_buf_puts(out, "labman_upstream_errors_total{endpoint=\"");
        lm_buf_prom_label(out, s->endpoint);
        lm_buf_printf(out, "\",reason=\"%s\"} %" PRIu64 "\n", fail_names[s->reason], s->n);
    }
}
