/* Unit tests for the gateway's internals: the SSE splitter, the byte-level
 * JSON scans (on good and hostile input) and the bounded metrics. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/gw.h"

/* ---- SSE ---- */

struct got {
    char ev[16][256];
    bool whole[16];
    size_t n;
    size_t bytes;   /* all bytes handed out */
    char last[256]; /* the last event or piece */
    bool last_whole;
};

static void
collect(void *arg, const char *ev, size_t len, bool whole)
{
    struct got *g = arg;
    g->bytes += len;
    if (len < 256) {
        memcpy(g->last, ev, len);
        g->last[len] = '\0';
        g->last_whole = whole;
    }
    if (g->n < 16 && len < 256) {
        memcpy(g->ev[g->n], ev, len);
        g->ev[g->n][len] = '\0';
        g->whole[g->n] = whole;
    }
    g->n++;
}

static void
test_sse_whole_events(void **state)
{
    (void)state;
    struct gw_sse s;
    struct got g = {0};
    const char *in = "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
    gw_sse_init(&s);
    gw_sse_feed(&s, in, strlen(in), collect, &g);
    assert_int_equal(g.n, 3);
    assert_string_equal(g.ev[0], "data: {\"a\":1}\n\n");
    assert_string_equal(g.ev[2], "data: [DONE]\n\n");
    assert_true(g.whole[1]);
    assert_int_equal(gw_sse_pending(&s), 0);
    gw_sse_release(&s);
}

/* Every way of cutting a stream into reads gives the same events. */
static void
test_sse_any_split(void **state)
{
    (void)state;
    const char *in = "data: one\r\n\r\nevent: x\ndata: two\n\n: comment\n\ndata: three\n\n";
    size_t len = strlen(in);
    for (size_t cut1 = 0; cut1 <= len; cut1++) {
        for (size_t cut2 = cut1; cut2 <= len; cut2++) {
            struct gw_sse s;
            struct got g = {0};
            gw_sse_init(&s);
            gw_sse_feed(&s, in, cut1, collect, &g);
            gw_sse_feed(&s, in + cut1, cut2 - cut1, collect, &g);
            gw_sse_feed(&s, in + cut2, len - cut2, collect, &g);
            assert_int_equal(g.n, 4);
            assert_string_equal(g.ev[0], "data: one\r\n\r\n");
            assert_string_equal(g.ev[1], "event: x\ndata: two\n\n");
            assert_string_equal(g.ev[2], ": comment\n\n");
            assert_string_equal(g.ev[3], "data: three\n\n");
            assert_int_equal(gw_sse_pending(&s), 0);
            gw_sse_release(&s);
        }
    }
}

static void
test_sse_partial_held(void **state)
{
    (void)state;
    struct gw_sse s;
    struct got g = {0};
    gw_sse_init(&s);
    gw_sse_feed(&s, "data: abc\n", 10, collect, &g);
    assert_int_equal(g.n, 0);
    assert_int_equal(gw_sse_pending(&s), 10);
    gw_sse_feed(&s, "\n", 1, collect, &g);
    assert_int_equal(g.n, 1);
    assert_string_equal(g.ev[0], "data: abc\n\n");
    gw_sse_release(&s);
}

/* An event over the cap is passed through in pieces; memory stays bounded
 * and the next event is whole again. */
static void
test_sse_oversize(void **state)
{
    (void)state;
    struct gw_sse s;
    struct got g = {0};
    size_t big = GW_SSE_EVENT_MAX * 3;
    char *p = malloc(big);
    memset(p, 'x', big);
    memcpy(p, "data: ", 6);
    gw_sse_init(&s);
    for (size_t off = 0; off < big; off += 1000)
        gw_sse_feed(&s, p + off, big - off < 1000 ? big - off : 1000, collect, &g);
    assert_true(s.part.cap <= GW_SSE_EVENT_MAX + 1);
    gw_sse_feed(&s, "\n\ndata: next\n\n", 14, collect, &g);
    assert_int_equal(g.bytes, big + 14);
    assert_true(g.n >= 3);
    assert_string_equal(g.last, "data: next\n\n");
    assert_true(g.last_whole);
    assert_false(g.whole[0]);
    gw_sse_release(&s);
    free(p);
}

/* ---- scans ---- */

static void
test_scan_members(void **state)
{
    (void)state;
    const char *b = " {\"messages\":[{\"role\":\"user\",\"content\":\"\\\"model\\\":1 {[\"}],"
                    "\"model\" : \"llama3\",\"stream_options\":{\"x\":[1,{}]},\"n\":1}";
    struct gw_members m;
    assert_int_equal(gw_scan_members(b, strlen(b), &m), 0);
    assert_int_equal(m.open, 1);
    assert_true(m.model.found);
    assert_memory_equal(b + m.model.val, "\"llama3\"", m.model.val_len);
    assert_true(m.stream_options.found);
    assert_memory_equal(b + m.stream_options.val, "{\"x\":[1,{}]}", m.stream_options.val_len);

    assert_int_equal(gw_scan_members("[1]", 3, &m), -EINVAL);
    assert_int_equal(gw_scan_members("{}", 2, &m), 0);
    assert_false(m.model.found);
}

static int
scan(const char *s, struct gw_body *b)
{
    return gw_scan_body(s, strlen(s), b);
}

/* The one-pass check of a request body: jansson's verdict, the last of
 * repeated keys, and a fall back to jansson where it cannot tell. */
static void
test_scan_body(void **state)
{
    (void)state;
    struct gw_body b;
    const char *ok = " {\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9 \\ud83d\\ude00 "
                     "\xc3\xa9\\n\"}],\"temperature\":0.7,\"max_tokens\":8,\"stop\":null,"
                     "\"model\":\"x\",\"stream\":true,\"model\" : \"llama3\","
                     "\"stream_options\":{\"include_usage\":false,\"include_usage\":true}} \n";
    assert_int_equal(scan(ok, &b), 0);
    assert_int_equal(b.members.open, 1);
    assert_int_equal(b.model, GW_J_STRING);
    assert_memory_equal(ok + b.members.model.val, "\"llama3\"", b.members.model.val_len);
    assert_int_equal(b.stream, GW_J_TRUE);
    assert_int_equal(b.stream_options, GW_J_OBJECT);
    assert_int_equal(b.include_usage, GW_J_TRUE);

    assert_int_equal(scan("{\"stream_options\":{\"include_usage\":true},\"stream_options\":1}",
                          &b),
                     0);
    assert_int_equal(b.stream_options, GW_J_NUMBER);
    assert_int_equal(b.include_usage, GW_J_ABSENT);
    assert_int_equal(scan("{}", &b), 0);
    assert_int_equal(b.model, GW_J_ABSENT);
    assert_int_equal(scan("{\"model\":[-0.5e-3,1E+2,0,-12]}", &b), 0);
    assert_int_equal(b.model, GW_J_ARRAY);

    /* What json_loadb refuses. */
    static const char *const bad[] = {
        "", " ", "[]", "\"x\"", "1", "{", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{,}",
        "{\"a\":1}x", "{\"a\":1}{}", "{\"a\":01}", "{\"a\":-}", "{\"a\":1.}", "{\"a\":.5}",
        "{\"a\":1e}", "{\"a\":+1}", "{\"a\":tru}", "{\"a\":truex}", "{\"a\":nul}",
        "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\\u0000\"}", "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\ud800\"}", "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":\"\t\"}",
        "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{\"a\":\"\xe2\x82\"}", "{\"a\":\"\x80\"}", "{'a':1}", "{\"a\":[1,]}", "{\"a\":[1 2]}",
        "\xef\xbb\xbf{}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(scan(bad[i], &b), -EINVAL);
    assert_int_equal(gw_scan_body("{\"a\":\"\0\"}", 8, &b), -EINVAL);

    /* Left to jansson. */
    static const char *const unsure[] = {
        "{\"mod\\u0065l\":\"x\"}", "{\"model\":\"a\\/b\"}", "{\"a\":12345678901234567890}",
        "{\"a\":1e400}", "{\"stream_options\":{\"include\\u005fusage\":true}}",
    };
    for (size_t i = 0; i < sizeof(unsure) / sizeof(unsure[0]); i++)
        assert_int_equal(scan(unsure[i], &b), -EAGAIN);
    char deep[2 * GW_SCAN_DEPTH + 16];
    size_t n = 0;
    deep[n++] = '{';
    memcpy(deep + n, "\"a\":", 4);
    n += 4;
    for (int i = 0; i < GW_SCAN_DEPTH + 1; i++)
        deep[n++] = '[';
    for (int i = 0; i < GW_SCAN_DEPTH + 1; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    assert_int_equal(gw_scan_body(deep, n, &b), -EAGAIN);
    /* But a bad body stays bad, whatever else it holds. */
    assert_int_equal(scan("{\"mod\\u0065l\":\"x\",}", &b), -EINVAL);
}

/* The access log's durations read as printf's "%.1f" of milliseconds. */
static void
test_fmt_ms(void **state)
{
    (void)state;
    char got[32], want[32];
    for (uint64_t us = 0; us < 300000; us++) {
        snprintf(want, sizeof(want), "%.1f", (double)us / 1000);
        assert_string_equal(gw_fmt_ms(got, sizeof(got), us), want);
    }
    static const uint64_t big[] = {1150, 2250, 999950, 123456789050ull, 9007199254740950ull};
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        snprintf(want, sizeof(want), "%.1f", (double)big[i] / 1000);
        assert_string_equal(gw_fmt_ms(got, sizeof(got), big[i]), want);
    }
}

/* Truncations and junk never read past the end (ASan checks that). */
static void
test_scan_hostile(void **state)
{
    (void)state;
    const char *b = "{\"model\":\"a\\\"b\",\"usage\":{\"prompt_tokens\":12,\"x\":{\"y\":[\"}\"]},"
                    "\"completion_tokens\":7}}";
    size_t len = strlen(b);
    for (size_t n = 0; n <= len; n++) {
        char *c = malloc(n ? n : 1);
        memcpy(c, b, n);
        struct gw_members m;
        uint64_t in = 0, out = 0;
        gw_scan_members(c, n, &m);
        gw_find_usage(c, n, &in, &out);
        gw_is_usage_only(c, n);
        free(c);
    }
    uint64_t in = 0, out = 0;
    assert_true(gw_find_usage(b, len, &in, &out));
    assert_int_equal(in, 12);
    assert_int_equal(out, 7);
}

static void
test_find_usage(void **state)
{
    (void)state;
    uint64_t in = 99, out = 99;
    /* "usage" inside content, and usage null, are not it. */
    const char *a = "{\"choices\":[{\"text\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": 5}\"}],"
                    "\"usage\":null}";
    assert_false(gw_find_usage(a, strlen(a), &in, &out));
    const char *b = "{\"c\":\"usage\",\"usage\": {\"prompt_tokens\": 3, \"total_tokens\": 3}}";
    assert_true(gw_find_usage(b, strlen(b), &in, &out));
    assert_int_equal(in, 3);
    assert_int_equal(out, 0);
    const char *c = "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,"
                    "\"prompt_tokens_details\":{\"cached_tokens\":0}},\"timings\":{}}";
    assert_true(gw_find_usage(c, strlen(c), &in, &out));
    assert_int_equal(in, 1);
    assert_int_equal(out, 2);
    /* Counts are plain integers; anything else is not a count (found by
     * the fuzzer: "1.5e3" used to read as 1). */
    const char *d = "{\"usage\":{\"prompt_tokens\":1.5e3,\"completion_tokens\":-2}}";
    assert_true(gw_find_usage(d, strlen(d), &in, &out));
    assert_int_equal(in, 0);
    assert_int_equal(out, 0);
}

static void
test_usage_chunk(void **state)
{
    (void)state;
    const char *u = "data: {\"id\":\"x\",\"choices\": [ ],\"usage\":{\"prompt_tokens\":4}}\n\n";
    const char *c = "data: {\"id\":\"x\",\"choices\":[{\"index\":0}],\"usage\":null}\n\n";
    assert_true(gw_is_usage_only(u, strlen(u)));
    assert_false(gw_is_usage_only(c, strlen(c)));

    char buf[128];
    strcpy(buf, c);
    size_t n = gw_strip_usage_null(buf, strlen(buf));
    buf[n] = '\0';
    assert_string_equal(buf, "data: {\"id\":\"x\",\"choices\":[{\"index\":0}]}\n\n");
    assert_int_equal(gw_strip_usage_null(buf, n), n);
}

static void
test_json_str(void **state)
{
    (void)state;
    struct lm_buf b;
    lm_buf_init(&b, 0);
    gw_json_str(&b, "a\"b\\c\n\x01", 7);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\u0001\"");
    lm_buf_release(&b);
}

/* ---- metrics ---- */

static void
test_metrics_text(void **state)
{
    (void)state;
    struct gw_metrics *m = gw_metrics_new();
    struct lm_buf out;
    lm_buf_init(&out, 0);
    gw_metrics_request(m, GW_ROUTE_CHAT, "llama3:latest", "ollama", 200, 1500, 800, 5, 7);
    gw_metrics_request(m, GW_ROUTE_CHAT, "llama3:latest", "ollama", 200, 2500, 0, 1, 1);
    gw_metrics_request(m, GW_ROUTE_CHAT, NULL, NULL, 404, 10, 0, 0, 0);
    gw_metrics_request(m, GW_ROUTE_EMBEDDINGS, "we\"ird\\", "e", 200, 10, 0, 3, 0);
    gw_metrics_upstream_error(m, "ollama", GW_FAIL_CONNECT);
    gw_metrics_upstream_error(m, "ollama", GW_FAIL_CONNECT);
    gw_metrics_write(m, 3, &out);
    const char *t = out.data;
    assert_non_null(strstr(t, "labman_requests_total{route=\"chat_completions\",model=\"llama3:"
                              "latest\",endpoint=\"ollama\",status=\"200\"} 2\n"));
    assert_non_null(strstr(t, "model=\"unknown\",endpoint=\"none\",status=\"404\"} 1\n"));
    assert_non_null(strstr(t, "model=\"we\\\"ird\\\\\""));
    assert_non_null(
        strstr(t, "labman_tokens_total{direction=\"in\",model=\"llama3:latest\"} 6\n"));
    assert_non_null(
        strstr(t, "labman_tokens_total{direction=\"out\",model=\"llama3:latest\"} 8\n"));
    assert_non_null(strstr(t, "labman_requests_in_flight 3\n"));
    assert_non_null(strstr(t, "labman_upstream_errors_total{endpoint=\"ollama\","
                              "reason=\"connect\"} 2\n"));
    assert_non_null(strstr(t, "labman_request_duration_seconds_bucket{route=\"chat_completions\","
                              "le=\"0.001\"} 1\n"));
    assert_non_null(strstr(t, "labman_request_duration_seconds_bucket{route=\"chat_completions\","
                              "le=\"0.005\"} 3\n"));
    assert_non_null(strstr(t, "labman_request_duration_seconds_count{route=\"chat_completions\"} "
                              "3\n"));
    assert_non_null(strstr(t, "labman_ttft_seconds_count{route=\"chat_completions\"} 1\n"));
    lm_buf_release(&out);
    gw_metrics_free(m);
}

/* However many distinct labels arrive, the series stay capped and every
 * request is still counted (under "other"). */
static void
test_metrics_bounded(void **state)
{
    (void)state;
    struct gw_metrics *m = gw_metrics_new();
    char name[32];
    for (int i = 0; i < GW_METRICS_SERIES_MAX * 2; i++) {
        snprintf(name, sizeof(name), "model-%d", i);
        gw_metrics_request(m, GW_ROUTE_CHAT, name, "ep", 200, 1, 0, 1, 1);
        gw_metrics_upstream_error(m, name, GW_FAIL_STATUS);
    }
    struct lm_buf out;
    lm_buf_init(&out, 0);
    gw_metrics_write(m, 0, &out);
    size_t series = 0;
    uint64_t total = 0;
    for (const char *p = out.data; (p = strstr(p, "\nlabman_requests_total{")); p++) {
        series++;
        total += strtoull(strchr(p, '}') + 2, NULL, 10);
    }
    assert_true(series <= GW_METRICS_SERIES_MAX);
    assert_int_equal(total, GW_METRICS_SERIES_MAX * 2);
    assert_non_null(strstr(out.data, "model=\"other\",endpoint=\"other\",status=\"200\"}"));
    assert_non_null(strstr(out.data, "labman_tokens_total{direction=\"in\",model=\"other\"}"));
    assert_non_null(strstr(out.data, "labman_upstream_errors_total{endpoint=\"other\""));
    lm_buf_release(&out);
    gw_metrics_free(m);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_whole_events), cmocka_unit_test(test_sse_any_split),
        cmocka_unit_test(test_sse_partial_held), cmocka_unit_test(test_sse_oversize),
        cmocka_unit_test(test_scan_members),     cmocka_unit_test(test_scan_hostile),
        cmocka_unit_test(test_find_usage),       cmocka_unit_test(test_usage_chunk),
        cmocka_unit_test(test_json_str),         cmocka_unit_test(test_metrics_text),
        cmocka_unit_test(test_metrics_bounded),  cmocka_unit_test(test_scan_body),
        cmocka_unit_test(test_fmt_ms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
