/* Unit tests for src/endpoints: catalogue helpers, the parsers of runtime
 * answers, selection, circuit breakers, the wait queue and reconfiguration.
 * The registry runs without an upstream (no probes): check results are
 * handed to it the way probe.c does. Real runtimes: tests/integ. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cmocka.h>

#include "endpoints/endpoints_internal.h"

/* ---- catalogue helpers ---- */

static struct lm_model
model(const char *id)
{
    struct lm_model m = {0};
    m.id = (char *)id;
    m.alias = lm_model_alias_of(id);
    return m;
}

static void
test_alias(void **state)
{
    (void)state;
    char *a = lm_model_alias_of("llama3:latest");
    assert_string_equal(a, "llama3");
    free(a);
    assert_null(lm_model_alias_of("llama3.2:1b"));
    assert_null(lm_model_alias_of(":latest"));

    struct lm_model m = model("llama3:latest");
    assert_true(lm_model_matches(&m, "llama3"));
    assert_true(lm_model_matches(&m, "llama3:latest"));
    assert_false(lm_model_matches(&m, "llama3:8b"));
    assert_false(lm_model_matches(&m, "llama"));
    free(m.alias);

    /* An untagged id answers to ":latest" as well, a tagged one does not. */
    struct lm_model u = model("mistral");
    assert_true(lm_model_matches(&u, "mistral"));
    assert_true(lm_model_matches(&u, "mistral:latest"));
    assert_false(lm_model_matches(&u, "mistral:7b"));
    struct lm_model t = model("qwen2.5:0.5b");
    assert_false(lm_model_matches(&t, "qwen2.5:0.5b:latest"));
    assert_false(lm_model_matches(&t, "qwen2.5"));
}

static void
test_include_exclude(void **state)
{
    (void)state;
    char *all[] = {"*"}, *llama[] = {"llama*", "qwen2.5:0.5b"}, *big[] = {"*:70b", "*embed*"};
    struct lm_strv inc_all = {all, 1}, inc = {llama, 2}, exc = {big, 2}, none = {NULL, 0};
    assert_true(lm_model_allowed(&inc_all, &none, "anything/at:all"));
    assert_true(lm_model_allowed(&inc, &exc, "llama3.2:1b"));
    assert_false(lm_model_allowed(&inc, &exc, "llama3:70b"));
    assert_true(lm_model_allowed(&inc, &exc, "qwen2.5:0.5b"));
    assert_false(lm_model_allowed(&inc, &exc, "qwen2.5:7b"));
    assert_false(lm_model_allowed(&inc_all, &exc, "nomic-embed-text:latest"));
    assert_false(lm_model_allowed(&none, &none, "llama3"));
    /* A glob written for the alias matches ":latest" models too. */
    char *exact[] = {"phi3"};
    struct lm_strv inc_phi = {exact, 1};
    assert_true(lm_model_allowed(&inc_phi, &none, "phi3:latest"));
}

/* ---- parsers ---- */

#define S(lit) lit, sizeof(lit) - 1

static void
test_parse_ollama(void **state)
{
    (void)state;
    struct lm_probe_result res;
    char err[160];
    lm_probe_result_init(&res);
    const char tags[] =
        "{\"models\":[{\"name\":\"llama3.2:1b\",\"size\":600000000,\"digest\":\"abc\","
        "\"details\":{\"family\":\"llama\",\"parameter_size\":\"1.0B\","
        "\"quantization_level\":\"Q4_K_M\"}},"
        "{\"name\":7},{\"name\":\"nomic:latest\",\"details\":[1]},\"junk\",null,"
        "{\"name\":\"llama3.2:1b\"},{\"model\":\"phi3:latest\",\"digest\":5}]}";
    assert_int_equal(lm_parse_ollama_tags(S(tags), &res, err, sizeof(err)), 0);
    assert_int_equal(res.n_models, 3);
    assert_string_equal(res.models[0].id, "llama3.2:1b");
    assert_null(res.models[0].alias);
    assert_string_equal(res.models[0].digest, "abc");
    assert_string_equal(res.models[0].family, "llama");
    assert_string_equal(res.models[0].param_size, "1.0B");
    assert_string_equal(res.models[0].quant, "Q4_K_M");
    assert_false(res.models[0].loaded);
    assert_string_equal(res.models[1].id, "nomic:latest");
    assert_string_equal(res.models[1].alias, "nomic");
    assert_null(res.models[1].family);
    assert_string_equal(res.models[2].id, "phi3:latest");
    assert_null(res.models[2].digest);

    const char ps[] = "{\"models\":[{\"name\":\"nomic:latest\",\"context_length\":8192},"
                      "{\"name\":\"unknown:1b\"},{\"model\":\"phi3:latest\","
                      "\"context_length\":\"big\"}]}";
    assert_int_equal(lm_parse_ollama_ps(S(ps), &res, err, sizeof(err)), 0);
    assert_false(res.models[0].loaded);
    assert_true(res.models[1].loaded);
    assert_int_equal(res.models[1].context_length, 8192);
    assert_true(res.models[2].loaded);
    assert_int_equal(res.models[2].context_length, 0);

    int64_t ctx;
    const char show[] = "{\"model_info\":{\"general.architecture\":\"llama\","
                        "\"llama.context_length\":131072}}";
    assert_int_equal(lm_parse_ollama_show(S(show), &ctx, err, sizeof(err)), 0);
    assert_int_equal(ctx, 131072);
    assert_int_equal(lm_parse_ollama_show(S("{\"model_info\":{\"x.context_length\":-1}}"), &ctx,
                                          err, sizeof(err)),
                     0);
    assert_int_equal(ctx, 0);

    assert_int_equal(lm_parse_ollama_version(S("{\"version\":\"0.5.7\"}")), 0);
    assert_int_equal(lm_parse_ollama_version(S("{\"version\":5}")), -EINVAL);
    assert_int_equal(lm_parse_ollama_version(S("404 page not found")), -EINVAL);
    lm_probe_result_clear(&res);
}

static void
test_parse_garbage(void **state)
{
    (void)state;
    struct lm_probe_result res;
    char err[160];
    lm_probe_result_init(&res);
    assert_int_equal(lm_parse_ollama_tags(S("<html>\x01\xff</html>"), &res, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "not JSON"));
    for (const char *p = err; *p; p++)
        assert_true(*p >= 0x20 && *p < 0x7f);
    assert_int_equal(lm_parse_ollama_tags(S("{\"models\":{}}"), &res, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "no \"models\" list in the answer");
    assert_int_equal(lm_parse_openai_models(S("[]"), &res, err, sizeof(err)), -EINVAL);
    assert_int_equal(lm_parse_openai_models(S(""), &res, err, sizeof(err)), -EINVAL);
    assert_int_equal(lm_parse_llamacpp_slots(S("{}"), &res.free_slots, err, sizeof(err)), -EINVAL);
    assert_int_equal(lm_parse_llamacpp_slots(S("[{\"id\":0}]"), &res.free_slots, err, sizeof(err)),
                     -EINVAL);
    int64_t n_ctx;
    int slots;
    assert_int_equal(
        lm_parse_llamacpp_props(S("{\"total_slots\":4}"), &n_ctx, &slots, err, sizeof(err)),
        -EINVAL);
    int run, wait;
    assert_int_equal(lm_parse_vllm_metrics(S("# HELP x\nx 1\n"), &run, &wait), -EINVAL);
    assert_int_equal(res.n_models, 0);

    /* Ids too long or with control bytes are skipped; at most
     * LM_ENDPOINT_MAX_MODELS are kept. */
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_puts(&b, "{\"data\":[{\"id\":\"");
    for (int i = 0; i < LM_MODEL_ID_MAX + 1; i++)
        lm_buf_puts(&b, "x");
    lm_buf_puts(&b, "\"},{\"id\":\"a\\nb\"}");
    for (int i = 0; i < LM_ENDPOINT_MAX_MODELS + 10; i++)
        lm_buf_printf(&b, ",{\"id\":\"m%d\"}", i);
    lm_buf_puts(&b, "]}");
    assert_int_equal(lm_parse_openai_models(b.data, b.len, &res, err, sizeof(err)), 0);
    assert_int_equal(res.n_models, LM_ENDPOINT_MAX_MODELS);
    assert_string_equal(res.models[0].id, "m0");
    assert_true(res.truncated);
    lm_buf_release(&b);
    lm_probe_result_clear(&res);
}

static void
test_parse_llamacpp_vllm(void **state)
{
    (void)state;
    char err[160];
    int64_t n_ctx;
    int slots, free_slots;
    const char props[] = "{\"default_generation_settings\":{\"n_ctx\":8192},\"total_slots\":4}";
    assert_int_equal(lm_parse_llamacpp_props(S(props), &n_ctx, &slots, err, sizeof(err)), 0);
    assert_int_equal(n_ctx, 8192);
    assert_int_equal(slots, 4);
    const char sl[] = "[{\"id\":0,\"is_processing\":true},{\"id\":1,\"is_processing\":false},"
                      "{\"id\":2,\"is_processing\":false}]";
    assert_int_equal(lm_parse_llamacpp_slots(S(sl), &free_slots, err, sizeof(err)), 0);
    assert_int_equal(free_slots, 2);
    const char old[] = "[{\"id\":0,\"state\":1},{\"id\":1,\"state\":0}]";
    assert_int_equal(lm_parse_llamacpp_slots(S(old), &free_slots, err, sizeof(err)), 0);
    assert_int_equal(free_slots, 1);

    const char loading[] = "{\"error\":{\"code\":503,\"message\":\"Loading model\","
                           "\"type\":\"unavailable_error\"}}";
    assert_true(lm_parse_loading(503, S(loading)));
    assert_false(lm_parse_loading(200, S(loading)));
    assert_false(lm_parse_loading(503, S("{\"status\":\"no slot available\"}")));
    assert_false(lm_parse_loading(503, S("garbage")));

    struct lm_probe_result res;
    lm_probe_result_init(&res);
    const char models[] = "{\"object\":\"list\",\"data\":[{\"id\":\"a\",\"max_model_len\":4096},"
                          "{\"id\":\"b\",\"meta\":{\"n_ctx_train\":2048}},{\"id\":\"c\"}]}";
    assert_int_equal(lm_parse_openai_models(S(models), &res, err, sizeof(err)), 0);
    assert_int_equal(res.n_models, 3);
    assert_int_equal(res.models[0].context_length, 4096);
    assert_int_equal(res.models[1].context_length, 2048);
    assert_int_equal(res.models[2].context_length, 0);
    assert_true(res.models[2].loaded);
    lm_probe_result_clear(&res);

    int run, wait;
    const char metrics[] = "# HELP vllm:num_requests_running Number\n"
                           "# TYPE vllm:num_requests_running gauge\n"
                           "vllm:num_requests_running{model_name=\"a\"} 2.0\n"
                           "vllm:num_requests_running{model_name=\"b\",x=\"}\\\" 9\"} 1\n"
                           "vllm:num_requests_waiting{model_name=\"a\"} 3.0\n"
                           "vllm:num_requests_running_x{model_name=\"a\"} 50\n"
                           "vllm:num_requests_waiting{model_name=\"a\"} NaN\n";
    assert_int_equal(lm_parse_vllm_metrics(S(metrics), &run, &wait), 0);
    assert_int_equal(run, 3);
    assert_int_equal(wait, 3);
    assert_int_equal(lm_parse_vllm_metrics(S("vllm:cache 1\n"), &run, &wait), 0);
    assert_int_equal(run, -1);
    assert_int_equal(wait, -1);
}

/* ---- the registry ---- */

struct fix {
    struct event_base *base;
    struct lm_config *cfg;
    struct lm_endpoints *r;
};

static struct lm_config *
config(const char *toml)
{
    struct lm_config *cfg = NULL;
    struct lm_diags d = {0};
    int rc = lm_config_parse(toml, strlen(toml), "t.toml", &cfg, &d);
    if (rc < 0)
        lm_diags_print(&d, "t.toml", stderr);
    assert_int_equal(rc, 0);
    lm_diags_clear(&d);
    return cfg;
}

static const char three[] = "[discovery]\nscan_local = false\n"
                            "[[endpoints]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\n"
                            "max_concurrent = 2\n"
                            "[[endpoints]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\n"
                            "max_concurrent = 2\n"
                            "[[endpoints]]\nname = \"c\"\nurl = \"http://127.0.0.1:3\"\n"
                            "models_exclude = [\"*:70b\"]\n";

static int
setup(void **state)
{
    struct fix *f = calloc(1, sizeof(*f));
    f->base = event_base_new();
    f->cfg = config(three);
    assert_int_equal(lm_endpoints_new(&f->r, f->base, NULL, f->cfg), 0);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fix *f = *state;
    lm_endpoints_free(f->r);
    lm_config_free(f->cfg);
    event_base_free(f->base);
    free(f);
    return 0;
}

static struct lm_ep *
ep_at(struct fix *f, size_t i)
{
    return lm_ep_of(lm_endpoints_at(f->r, i));
}

/* A check result: ids, with a '*' suffix meaning loaded. */
static void
checked(struct lm_ep *ep, bool ok, const char *ids)
{
    struct lm_probe_result res;
    lm_probe_result_init(&res);
    res.ok = ok;
    res.kind = LM_KIND_OLLAMA;
    if (!ok)
        snprintf(res.err, sizeof(res.err), "GET /api/tags: connection refused");
    res.models_known = ok;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", ids ? ids : "");
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        res.models = realloc(res.models, (res.n_models + 1) * sizeof(*res.models));
        struct lm_model *m = &res.models[res.n_models++];
        memset(m, 0, sizeof(*m));
        size_t n = strlen(t);
        m->loaded = t[n - 1] == '*';
        m->id = lm_xstrndup(t, m->loaded ? n - 1 : n);
        m->alias = lm_model_alias_of(m->id);
    }
    lm_endpoints_checked(ep, &res);
    lm_probe_result_clear(&res);
}

static const struct lm_endpoint *
take(struct fix *f, const char *model, int want)
{
    struct lm_slot s = {0};
    assert_int_equal(lm_endpoints_acquire(f->r, model, NULL, 0, &s), want);
    return want == 0 ? s.ep : NULL;
}

static void
give(struct fix *f, const struct lm_endpoint *e, enum lm_outcome o)
{
    struct lm_slot s = {(struct lm_endpoint *)e, NULL};
    lm_endpoints_release(f->r, &s, o);
    assert_null(s.ep);
}

static void
test_selection(void **state)
{
    struct fix *f = *state;
    struct lm_ep *a = ep_at(f, 0), *b = ep_at(f, 1), *c = ep_at(f, 2);
    assert_int_equal(lm_endpoints_count(f->r), 3);
    assert_null(lm_endpoints_at(f->r, 3));
    assert_string_equal(a->pub.url, "http://127.0.0.1:1");

    /* Nothing checked yet: nobody serves anything. */
    take(f, "m", -ENOENT);
    checked(a, true, "m,llama3:latest");
    checked(b, true, "m*");
    checked(c, true, "m,big:70b");
    assert_int_equal(c->pub.n_models, 1); /* excluded by glob */
    assert_true(lm_endpoints_has_model(f->r, "llama3"));
    assert_false(lm_endpoints_has_model(f->r, "big:70b"));
    take(f, "big:70b", -ENOENT);

    /* Loaded first; then least in flight; then round robin. */
    assert_ptr_equal(take(f, "m", 0), &b->pub);
    assert_ptr_equal(take(f, "m", 0), &b->pub);
    assert_int_equal(b->pub.in_flight, 2);
    const struct lm_endpoint *x = take(f, "m", 0), *y = take(f, "m", 0);
    assert_true((x == &a->pub && y == &c->pub) || (x == &c->pub && y == &a->pub));
    const struct lm_endpoint *z = take(f, "m", 0);
    assert_ptr_equal(z, x); /* round robin: x was picked before y */
    assert_ptr_equal(take(f, "m", 0), y);
    /* a is full (2), c has room for 4. */
    assert_ptr_equal(take(f, "m", 0), &c->pub);
    assert_ptr_equal(take(f, "m", 0), &c->pub);
    take(f, "m", -EAGAIN);
    take(f, "nope", -ENOENT);

    /* The skip list: everything that serves it skipped → ENOENT. */
    give(f, &b->pub, LM_OUTCOME_OK);
    const struct lm_endpoint *skip[] = {&b->pub};
    struct lm_slot s;
    assert_int_equal(lm_endpoints_acquire(f->r, "m", skip, 1, &s), -EAGAIN);
    assert_int_equal(
        lm_endpoints_acquire(f->r, "llama3", (const struct lm_endpoint *[]){&a->pub}, 1, &s),
        -ENOENT);
    assert_int_equal(lm_endpoints_acquire(f->r, "m", NULL, 0, &s), 0);
    assert_ptr_equal(s.ep, &b->pub);
    assert_string_equal(s.model_id, "m");
    lm_endpoints_release(f->r, &s, LM_OUTCOME_CANCELED);

    /* Alias resolution gives the runtime's own name. */
    give(f, &a->pub, LM_OUTCOME_OK);
    assert_int_equal(lm_endpoints_acquire(f->r, "llama3", NULL, 0, &s), 0);
    assert_string_equal(s.model_id, "llama3:latest");
    lm_endpoints_release(f->r, &s, LM_OUTCOME_OK);

    /* Unhealthy → not serving; loading → busy; no free runtime slot → busy. */
    checked(a, false, NULL);
    assert_false(a->pub.healthy);
    assert_string_equal(a->pub.last_error, "GET /api/tags: connection refused");
    take(f, "llama3", -ENOENT);
    assert_false(lm_endpoints_has_model(f->r, "llama3"));
    checked(a, true, "llama3:latest");
    a->pub.loading = true;
    take(f, "llama3", -EAGAIN);
    a->pub.loading = false;
    a->pub.free_slots = 0;
    a->in_flight_at_check = a->pub.in_flight;
    take(f, "llama3", -EAGAIN);
    /* One of our own requests ends: the runtime has that slot back. */
    give(f, &a->pub, LM_OUTCOME_OK);
    assert_ptr_equal(take(f, "llama3", 0), &a->pub);
}

/* Milliseconds until ep's next check, -1 when none is scheduled. */
static long
next_check_ms(struct lm_ep *ep)
{
    struct timeval at, now;
    if (!evtimer_pending(ep->timer, &at))
        return -1;
    gettimeofday(&now, NULL);
    return (at.tv_sec - now.tv_sec) * 1000 + (at.tv_usec - now.tv_usec) / 1000;
}

static void
test_check_timers(void **state)
{
    struct fix *f = *state;
    struct lm_ep *a = ep_at(f, 0);
    /* A good check: the next one a period later, ±20%. */
    checked(a, true, "solo");
    long ms = next_check_ms(a);
    assert_true(ms >= LM_ENDPOINTS_CHECK_MS * 8 / 10 - 50 && ms <= LM_ENDPOINTS_CHECK_MS * 12 / 10);
    /* A failed request: a check right away. */
    give(f, take(f, "solo", 0), LM_OUTCOME_FAILED);
    assert_true(next_check_ms(a) <= LM_RECHECK_MIN_GAP_MS);
    /* Failed checks retry sooner, backing off, bounded by the period. */
    long prev = 0;
    for (int i = 0; i < 10; i++) {
        checked(a, false, NULL);
        ms = next_check_ms(a);
        assert_true(ms <= LM_ENDPOINTS_CHECK_MS * 12 / 10);
        if (i < 3)
            assert_true(ms <= (LM_CHECK_RETRY_MIN_MS << i) * 12 / 10);
        if (i == 9)
            assert_true(ms >= LM_ENDPOINTS_CHECK_MS * 8 / 10 - 50);
        assert_true(ms >= prev / 2);
        prev = ms;
    }
    checked(a, true, "solo");
    assert_true(next_check_ms(a) >= LM_ENDPOINTS_CHECK_MS * 8 / 10 - 50);
}

static void
test_breaker(void **state)
{
    struct fix *f = *state;
    struct lm_ep *a = ep_at(f, 0);
    checked(a, true, "solo");
    for (int i = 0; i < LM_BREAKER_FAILURES - 1; i++) {
        give(f, take(f, "solo", 0), LM_OUTCOME_FAILED);
        assert_int_equal(a->pub.breaker, LM_BREAKER_CLOSED);
    }
    /* A cancel says nothing; a success resets the count. */
    give(f, take(f, "solo", 0), LM_OUTCOME_CANCELED);
    assert_int_equal(a->pub.consecutive_failures, LM_BREAKER_FAILURES - 1);
    give(f, take(f, "solo", 0), LM_OUTCOME_OK);
    assert_int_equal(a->pub.consecutive_failures, 0);
    for (int i = 0; i < LM_BREAKER_FAILURES; i++)
        give(f, take(f, "solo", 0), LM_OUTCOME_FAILED);
    assert_int_equal(a->pub.breaker, LM_BREAKER_OPEN);
    assert_int_equal(a->pub.failures_total, 2 * LM_BREAKER_FAILURES - 1);
    assert_string_equal(lm_breaker_name(a->pub.breaker), "open");
    take(f, "solo", -EAGAIN);

    /* Half-open: exactly one trial. */
    lm_endpoints_half_open(a);
    assert_int_equal(a->pub.breaker, LM_BREAKER_HALF_OPEN);
    const struct lm_endpoint *t = take(f, "solo", 0);
    take(f, "solo", -EAGAIN);
    give(f, t, LM_OUTCOME_FAILED);
    assert_int_equal(a->pub.breaker, LM_BREAKER_OPEN);
    lm_endpoints_half_open(a);
    /* A canceled trial lets the next one through. */
    give(f, take(f, "solo", 0), LM_OUTCOME_CANCELED);
    assert_int_equal(a->pub.breaker, LM_BREAKER_HALF_OPEN);
    give(f, take(f, "solo", 0), LM_OUTCOME_OK);
    assert_int_equal(a->pub.breaker, LM_BREAKER_CLOSED);
    assert_int_equal(a->pub.consecutive_failures, 0);
    take(f, "solo", 0);
    take(f, "solo", 0);
    take(f, "solo", -EAGAIN);
}

struct woken {
    int order[8];
    int n;
};
static struct woken woken;

static void
on_woken(void *arg)
{
    woken.order[woken.n++] = (int)(intptr_t)arg;
}

static void
test_queue(void **state)
{
    struct fix *f = *state;
    struct lm_ep *a = ep_at(f, 0), *b = ep_at(f, 1);
    struct lm_endpoints_waiter *w[5];
    memset(&woken, 0, sizeof(woken));
    checked(a, true, "x");
    checked(b, true, "y");
    const struct lm_endpoint *a1 = take(f, "x", 0), *a2 = take(f, "x", 0);
    take(f, "x", -EAGAIN);
    assert_int_equal(lm_endpoints_wait(f->r, "x", on_woken, (void *)1, &w[0]), 0);
    assert_int_equal(lm_endpoints_wait(f->r, "y", on_woken, (void *)2, &w[1]), 0);
    assert_int_equal(lm_endpoints_wait(f->r, "x", on_woken, (void *)3, &w[2]), 0);
    assert_int_equal(lm_endpoints_wait(f->r, "x", on_woken, (void *)4, &w[3]), 0);
    assert_int_equal(lm_endpoints_queue_depth(f->r), 4);

    /* A release wakes the oldest waiter for a model that endpoint serves,
     * later, from the loop, not inside release. */
    give(f, a1, LM_OUTCOME_OK);
    assert_int_equal(woken.n, 0);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_int_equal(woken.n, 1);
    assert_int_equal(woken.order[0], 1);
    assert_int_equal(lm_endpoints_queue_depth(f->r), 3);

    /* Canceled while its wake is pending: fn never runs. */
    give(f, a2, LM_OUTCOME_OK);
    lm_endpoints_wait_cancel(w[2]);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_int_equal(woken.n, 1);
    lm_endpoints_wait_cancel(w[3]);
    lm_endpoints_wait_cancel(w[1]);
    lm_endpoints_wait_cancel(NULL);
    assert_int_equal(lm_endpoints_queue_depth(f->r), 0);

    /* Bounded overall. */
    struct lm_endpoints_waiter *many[LM_ENDPOINTS_QUEUE_MAX];
    for (int i = 0; i < LM_ENDPOINTS_QUEUE_MAX; i++)
        assert_int_equal(lm_endpoints_wait(f->r, i % 2 ? "x" : "zz", on_woken, (void *)5, &many[i]),
                         0);
    struct lm_endpoints_waiter *extra;
    assert_int_equal(lm_endpoints_wait(f->r, "x", on_woken, (void *)6, &extra), -EAGAIN);
    for (int i = 0; i < LM_ENDPOINTS_QUEUE_MAX; i += 2)
        lm_endpoints_wait_cancel(many[i]);
    assert_int_equal(lm_endpoints_queue_depth(f->r), LM_ENDPOINTS_QUEUE_MAX / 2);
    /* An endpoint that becomes healthy wakes as many as it has room for. */
    checked(a, false, NULL);
    checked(a, true, "x");
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_int_equal(woken.n, 1 + 2);
    /* The rest are dropped with the registry, without callbacks. */
}

static void
test_first_round_and_json(void **state)
{
    struct fix *f = *state;
    memset(&woken, 0, sizeof(woken));
    lm_endpoints_on_first_round(f->r, on_woken, (void *)7);
    checked(ep_at(f, 0), true, "m*,llama3:latest");
    checked(ep_at(f, 1), false, NULL);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_int_equal(woken.n, 0);
    checked(ep_at(f, 2), true, "m");
    assert_int_equal(woken.n, 0);
    event_base_loop(f->base, EVLOOP_NONBLOCK);
    assert_int_equal(woken.n, 1);
    assert_int_equal(woken.order[0], 7);

    json_t *j = lm_endpoints_json(f->r);
    json_t *eps = json_object_get(j, "endpoints");
    assert_int_equal(json_array_size(eps), 3);
    json_t *e0 = json_array_get(eps, 0), *e1 = json_array_get(eps, 1);
    assert_string_equal(json_string_value(json_object_get(e0, "kind")), "ollama");
    assert_true(json_is_true(json_object_get(e0, "healthy")));
    assert_int_equal(json_integer_value(json_object_get(e0, "models")), 2);
    assert_int_equal(json_integer_value(json_object_get(e0, "models_loaded")), 1);
    assert_true(json_is_null(json_object_get(e0, "last_error")));
    assert_string_equal(json_string_value(json_object_get(e1, "last_error")),
                        "GET /api/tags: connection refused");
    assert_string_equal(json_string_value(json_object_get(e1, "breaker")), "closed");
    json_decref(j);

    j = lm_endpoints_models_json(f->r);
    json_t *ms = json_object_get(j, "models");
    assert_int_equal(json_array_size(ms), 2);
    json_t *m = json_array_get(ms, 0);
    assert_string_equal(json_string_value(json_object_get(m, "id")), "m");
    assert_int_equal(json_array_size(json_object_get(m, "endpoints")), 2);
    assert_true(json_is_true(json_object_get(m, "loaded")));
    json_t *l = json_array_get(ms, 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(l, "aliases"), 0)),
                        "llama3");
    json_decref(j);

    struct lm_buf out;
    lm_buf_init(&out, 0);
    lm_endpoints_metrics(f->r, &out);
    assert_non_null(strstr(out.data, "# TYPE labman_endpoint_up gauge\n"));
    assert_non_null(strstr(out.data, "labman_endpoint_up{endpoint=\"b\",kind=\"auto\"} 0\n"));
    assert_non_null(
        strstr(out.data, "labman_endpoint_models{endpoint=\"a\",state=\"loaded\"} 1\n"));
    assert_non_null(strstr(out.data, "labman_queue_depth 0\n"));
    lm_buf_release(&out);
}

static void
test_reconfigure(void **state)
{
    struct fix *f = *state;
    checked(ep_at(f, 0), true, "m");
    checked(ep_at(f, 2), true, "m,old");
    struct lm_slot s;
    assert_int_equal(lm_endpoints_acquire(f->r, "old", NULL, 0, &s), 0);
    const struct lm_endpoint *held = take(f, "m", 0);
    assert_ptr_equal(held, &ep_at(f, 0)->pub);

    /* c's catalogue changes while a request holds "old": the slot's name
     * stays valid until its release (ASan checks). */
    checked(ep_at(f, 2), true, "m");
    assert_string_equal(s.model_id, "old");

    /* a goes, c moves, d comes; a's request still finishes. */
    setenv("LM_TEST_KEY", "sekrit", 1);
    struct lm_config *next = config("[discovery]\nscan_local = false\n"
                                    "[[endpoints]]\nname = \"d\"\nurl = \"http://127.0.0.1:4\"\n"
                                    "api_key_env = \"LM_TEST_KEY\"\n"
                                    "[[endpoints]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\n"
                                    "max_concurrent = 9\n"
                                    "[[endpoints]]\nname = \"c\"\nurl = \"http://127.0.0.1:33\"\n");
    lm_endpoints_reconfigure(f->r, next);
    assert_int_equal(lm_endpoints_count(f->r), 3);
    assert_string_equal(lm_endpoints_at(f->r, 0)->name, "d");
    assert_string_equal(lm_endpoints_auth_header(lm_endpoints_at(f->r, 0)),
                        "Authorization: Bearer sekrit");
    assert_null(lm_endpoints_auth_header(lm_endpoints_at(f->r, 1)));
    assert_int_equal(lm_endpoints_at(f->r, 1)->max_concurrent, 9);
    const struct lm_endpoint *c = lm_endpoints_at(f->r, 2);
    assert_string_equal(c->url, "http://127.0.0.1:33");
    assert_false(c->healthy); /* another runtime now: unknown until checked */
    assert_int_equal(c->n_models, 0);
    assert_string_equal(s.model_id, "old");
    take(f, "m", -ENOENT);
    give(f, held, LM_OUTCOME_OK);
    lm_endpoints_release(f->r, &s, LM_OUTCOME_FAILED);
    lm_config_free(f->cfg);
    f->cfg = next;
    unsetenv("LM_TEST_KEY");
}

int
main(void)
{
    lm_log_setup(LM_LOG_ERROR, LM_LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alias),
        cmocka_unit_test(test_include_exclude),
        cmocka_unit_test(test_parse_ollama),
        cmocka_unit_test(test_parse_garbage),
        cmocka_unit_test(test_parse_llamacpp_vllm),
        cmocka_unit_test_setup_teardown(test_selection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_breaker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_round_and_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconfigure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
