/* Unit tests for src/auth: bearer parsing, key lookup, allow-lists, the rpm
 * and tpm windows on a fake clock, concurrency, reloads, generated keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth/auth.h"
#include "config/config.h"

#define ALICE "lm-alice-0123456789abcdefghijklmnopqrstuvwxyzAB"
#define BOB "lm-bob-0123456789abcdefghijklmnopqrstuvwxyzABCDE"

/* A config from TOML text in which "@ALICE@" and "@BOB@" stand for the
 * hashes of the keys above. */
static struct lm_config *
config(const char *text)
{
    char alice[65], bob[65];
    struct lm_buf b;
    struct lm_diags d = {0};
    struct lm_config *cfg = NULL;

    lm_auth_sha256_hex(ALICE, strlen(ALICE), alice);
    lm_auth_sha256_hex(BOB, strlen(BOB), bob);
    lm_buf_init(&b, 0);
    for (const char *p = text; *p;) {
        if (strncmp(p, "@ALICE@", 7) == 0) {
            lm_buf_puts(&b, alice);
            p += 7;
        } else if (strncmp(p, "@BOB@", 5) == 0) {
            lm_buf_puts(&b, bob);
            p += 5;
        } else {
            lm_buf_append(&b, p++, 1);
        }
    }
    int rc = lm_config_parse(b.data, b.len, "test.toml", &cfg, &d);
    if (rc < 0)
        lm_diags_print(&d, "test.toml", stderr);
    assert_int_equal(rc, 0);
    lm_diags_clear(&d);
    lm_buf_release(&b);
    return cfg;
}

static struct lm_auth *
auth_of(const char *text)
{
    struct lm_config *cfg = config(text);
    struct lm_auth *a = lm_auth_new(cfg);
    lm_config_free(cfg);
    return a;
}

static void
reconfigure(struct lm_auth *a, const char *text)
{
    struct lm_config *cfg = config(text);
    lm_auth_reconfigure(a, cfg);
    lm_config_free(cfg);
}

static const char alice_only[] = "[gateway]\nauth = \"keys\"\n"
                                 "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n";

static void
test_none_admits_all(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("");
    struct lm_auth_result r;
    lm_auth_check(a, NULL, "llama3", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    assert_null(r.key);
    lm_auth_check(a, "Bearer whatever", "llama3", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    assert_null(r.key);
    lm_auth_finish(a, NULL, 100, 0);
    assert_string_equal(lm_auth_key_name(NULL), "-");
    lm_auth_free(a);
    lm_auth_free(NULL);
}

static void
test_missing_and_malformed(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of(alice_only);
    struct lm_auth_result r;
    static const char *const bad[] = {
        "",          "Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer   ", "Bearer" ALICE,
        "Bearer a b", "Bearer \x80\x81",      "Token " ALICE,
    };

    lm_auth_check(a, NULL, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_MISSING);
    assert_null(r.key);
    assert_non_null(strstr(r.message, "Authorization: Bearer"));
    assert_int_equal(lm_auth_http_status(r.verdict), 401);
    for (size_t i = 0; i < LM_ARRAY_LEN(bad); i++) {
        lm_auth_check(a, bad[i], "m", 0, &r);
        assert_int_equal(r.verdict, LM_AUTH_MISSING);
        assert_null(r.key);
        assert_true(strlen(r.message) > 0);
    }
    lm_auth_free(a);
}

static void
test_wrong_and_right_key(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of(alice_only);
    struct lm_auth_result r;

    lm_auth_check(a, "Bearer " BOB, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);
    assert_null(r.key);
    assert_int_equal(lm_auth_http_status(r.verdict), 401);
    assert_string_equal(lm_auth_error_code(r.verdict), "invalid_api_key");
    /* The message never echoes what the client sent. */
    assert_null(strstr(r.message, "lm-bob"));
    /* One character off. */
    char near[sizeof("Bearer " ALICE)];
    snprintf(near, sizeof(near), "Bearer %s", ALICE);
    near[strlen(near) - 1] ^= 1;
    lm_auth_check(a, near, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);

    /* Longer than LM_AUTH_TOKEN_MAX: refused without being looked at. */
    char *big = malloc(LM_AUTH_TOKEN_MAX + 16);
    strcpy(big, "Bearer ");
    memset(big + 7, 'x', LM_AUTH_TOKEN_MAX + 1);
    big[7 + LM_AUTH_TOKEN_MAX + 1] = '\0';
    lm_auth_check(a, big, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);
    free(big);

    static const char *const good[] = {"Bearer " ALICE, "bearer " ALICE, "BEARER\t" ALICE,
                                       "  Bearer   " ALICE "  "};
    for (size_t i = 0; i < LM_ARRAY_LEN(good); i++) {
        lm_auth_check(a, good[i], "m", 0, &r);
        assert_int_equal(r.verdict, LM_AUTH_OK);
        assert_non_null(r.key);
        assert_string_equal(lm_auth_key_name(r.key), "alice");
        assert_int_equal(lm_auth_key_in_flight(r.key), 1);
        lm_auth_finish(a, r.key, 0, 0);
        assert_int_equal(lm_auth_key_in_flight(r.key), 0);
    }
    lm_auth_free(a);
}

static void
test_many_keys_lookup(void **state)
{
    (void)state;
    /* Enough keys that the table probes past collisions. */
    struct lm_buf t;
    lm_buf_init(&t, 0);
    lm_buf_puts(&t, "[gateway]\nauth = \"keys\"\n");
    for (int i = 0; i < 40; i++) {
        char key[32], hex[65];
        snprintf(key, sizeof(key), "lm-key-%d", i);
        lm_auth_sha256_hex(key, strlen(key), hex);
        lm_buf_printf(&t, "[[gateway.keys]]\nname = \"k%d\"\nkey_sha256 = \"%s\"\n", i, hex);
    }
    struct lm_auth *a = auth_of(t.data);
    for (int i = 0; i < 40; i++) {
        char hdr[48], name[8];
        struct lm_auth_result r;
        snprintf(hdr, sizeof(hdr), "Bearer lm-key-%d", i);
        snprintf(name, sizeof(name), "k%d", i);
        lm_auth_check(a, hdr, "m", 0, &r);
        assert_int_equal(r.verdict, LM_AUTH_OK);
        assert_string_equal(lm_auth_key_name(r.key), name);
        lm_auth_finish(a, r.key, 0, 0);
        snprintf(hdr, sizeof(hdr), "Bearer lm-key-%d", i + 40);
        lm_auth_check(a, hdr, "m", 0, &r);
        assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);
    }
    lm_auth_free(a);
    lm_buf_release(&t);
}

static void
test_allow_list(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "models = [\"llama3*\", \"qwen2.5:?b\"]\n"
                                "[[gateway.keys]]\nname = \"bob\"\nkey_sha256 = \"@BOB@\"\n");
    struct lm_auth_result r;
    static const char *const allowed[] = {"llama3", "llama3.2:1b", "qwen2.5:7b",
                                          "qwen2.5:7b@lab-2", NULL};
    static const char *const denied[] = {"gpt-4", "qwen2.5:14b", "my-llama3", "qwen2.5:7b-x",
                                         "gpt-4@llama3"};

    for (size_t i = 0; i < LM_ARRAY_LEN(allowed); i++) {
        lm_auth_check(a, "Bearer " ALICE, allowed[i], 0, &r);
        assert_int_equal(r.verdict, LM_AUTH_OK);
        lm_auth_finish(a, r.key, 0, 0);
    }
    for (size_t i = 0; i < LM_ARRAY_LEN(denied); i++) {
        lm_auth_check(a, "Bearer " ALICE, denied[i], 0, &r);
        assert_int_equal(r.verdict, LM_AUTH_FORBIDDEN);
        assert_string_equal(lm_auth_key_name(r.key), "alice");
        assert_int_equal(lm_auth_http_status(r.verdict), 403);
        assert_non_null(strstr(r.message, "\"alice\""));
        assert_int_equal(lm_auth_key_in_flight(r.key), 0);
    }
    lm_auth_check(a, "Bearer " ALICE, "gpt-4", 0, &r);
    assert_string_equal(r.message, "key \"alice\" may not use model \"gpt-4\"");
    /* Bob has no list: every model. */
    lm_auth_check(a, "Bearer " BOB, "gpt-4", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 0, 0);
    lm_auth_free(a);
}

static void
test_rpm_window(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "rpm = 3\n");
    struct lm_auth_result r;
    const uint64_t t0 = 1000000; /* monotonic clocks do not start at 0 */

    uint64_t at[] = {t0 + 10000, t0 + 20500, t0 + 30900};
    for (size_t i = 0; i < LM_ARRAY_LEN(at); i++) {
        lm_auth_check(a, "Bearer " ALICE, "m", at[i], &r);
        assert_int_equal(r.verdict, LM_AUTH_OK);
        lm_auth_finish(a, r.key, 0, at[i] + 100);
    }
    /* The fourth waits for the first to leave: it was counted in second
     * 1010, which leaves the window when second 1070 starts. */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 40000, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);
    assert_string_equal(lm_auth_key_name(r.key), "alice");
    assert_int_equal(r.retry_after_s, 30);
    assert_int_equal(lm_auth_http_status(r.verdict), 429);
    assert_string_equal(r.message, "rate limit of 3 requests per minute reached for key "
                                   "\"alice\"; retry after 30 s");
    /* Refusals are not counted, and a fraction of a second rounds up. */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 69999, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);
    assert_int_equal(r.retry_after_s, 1);
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 69001, &r);
    assert_int_equal(r.retry_after_s, 1);
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 68999, &r);
    assert_int_equal(r.retry_after_s, 2);
    /* Recovered once the window has moved past the first request. */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 70000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 0, t0 + 70000);
    /* Full again: now the second request (second 1020) is the oldest. */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 70001, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);
    assert_int_equal(r.retry_after_s, 10);
    /* A long quiet time empties the window entirely. */
    for (int i = 0; i < 3; i++) {
        lm_auth_check(a, "Bearer " ALICE, "m", t0 + 500000, &r);
        assert_int_equal(r.verdict, LM_AUTH_OK);
        lm_auth_finish(a, r.key, 0, t0 + 500000);
    }
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 500000, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);
    assert_int_equal(r.retry_after_s, 60);
    lm_auth_free(a);
}

static void
test_rpm_from_clock_zero(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "rpm = 1\n");
    struct lm_auth_result r;
    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 0, 0);
    lm_auth_check(a, "Bearer " ALICE, "m", 500, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);
    assert_int_equal(r.retry_after_s, 60);
    lm_auth_check(a, "Bearer " ALICE, "m", 59999, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);
    assert_int_equal(r.retry_after_s, 1);
    lm_auth_check(a, "Bearer " ALICE, "m", 60000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 0, 60000);
    lm_auth_free(a);
}

static void
test_tpm(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "tpm = 100\n");
    struct lm_auth_result r;
    const uint64_t t0 = 5000000;

    lm_auth_check(a, "Bearer " ALICE, "m", t0, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 60, t0 + 2000); /* charged in second 5002 */
    /* 60 of 100 used: the next request is admitted and may overshoot. */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 10000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 50, t0 + 11000);
    /* 110 used: refused until the first 60 leave (second 5062). */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 20000, &r);
    assert_int_equal(r.verdict, LM_AUTH_TOKENS);
    assert_int_equal(r.retry_after_s, 42);
    assert_int_equal(lm_auth_http_status(r.verdict), 429);
    assert_string_equal(lm_auth_error_type(r.verdict), "tokens");
    assert_non_null(strstr(r.message, "token limit of 100 tokens per minute"));
    assert_non_null(strstr(r.message, "\"alice\""));
    assert_int_equal(lm_auth_key_in_flight(r.key), 0);
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 61999, &r);
    assert_int_equal(r.verdict, LM_AUTH_TOKENS);
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 62000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 50, t0 + 62000); /* 100 again: at the limit */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 63000, &r);
    assert_int_equal(r.verdict, LM_AUTH_TOKENS);
    assert_int_equal(r.retry_after_s, 8); /* the 50 of second 5011 leave at 5071 */
    /* One request bigger than the whole budget blocks for a full minute. */
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 300000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 1000, t0 + 300000);
    lm_auth_check(a, "Bearer " ALICE, "m", t0 + 300000, &r);
    assert_int_equal(r.verdict, LM_AUTH_TOKENS);
    assert_int_equal(r.retry_after_s, 60);
    lm_auth_free(a);
}

static void
test_max_concurrent(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "max_concurrent = 2\n"
                                "[[gateway.keys]]\nname = \"bob\"\nkey_sha256 = \"@BOB@\"\n"
                                "max_concurrent = 1\n");
    struct lm_auth_result r1, r2, r3, rb;

    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r1);
    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r2);
    assert_int_equal(r1.verdict, LM_AUTH_OK);
    assert_int_equal(r2.verdict, LM_AUTH_OK);
    assert_ptr_equal(r1.key, r2.key);
    assert_int_equal(lm_auth_key_in_flight(r1.key), 2);
    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r3);
    assert_int_equal(r3.verdict, LM_AUTH_CONCURRENCY);
    assert_int_equal(r3.retry_after_s, 1);
    assert_int_equal(lm_auth_http_status(r3.verdict), 429);
    assert_string_equal(r3.message, "concurrency limit of 2 requests at once reached for key "
                                    "\"alice\"; retry after 1 s");
    /* Another key's limit is its own. */
    lm_auth_check(a, "Bearer " BOB, "m", 0, &rb);
    assert_int_equal(rb.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r1.key, 0, 10);
    lm_auth_check(a, "Bearer " ALICE, "m", 20, &r3);
    assert_int_equal(r3.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r2.key, 0, 30);
    lm_auth_finish(a, r3.key, 0, 30);
    assert_int_equal(lm_auth_key_in_flight(r1.key), 0);
    /* A second finish is ignored, not an underflow. */
    lm_auth_finish(a, r3.key, 0, 30);
    assert_int_equal(lm_auth_key_in_flight(r1.key), 0);
    lm_auth_finish(a, rb.key, 0, 30);
    lm_auth_free(a);
}

static void
test_reconfigure_keeps_counters(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "rpm = 2\nmax_concurrent = 5\n");
    struct lm_auth_result r, held;

    lm_auth_check(a, "Bearer " ALICE, "m", 1000, &r);
    lm_auth_finish(a, r.key, 0, 1000);
    lm_auth_check(a, "Bearer " ALICE, "m", 1000, &held); /* stays in flight */
    assert_int_equal(held.verdict, LM_AUTH_OK);
    lm_auth_check(a, "Bearer " BOB, "m", 1000, &r);
    assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);

    /* Bob is added and alice's rpm raised to 3: her two requests still count. */
    reconfigure(a, "[gateway]\nauth = \"keys\"\n"
                   "[[gateway.keys]]\nname = \"bob\"\nkey_sha256 = \"@BOB@\"\n"
                   "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                   "rpm = 3\nmax_concurrent = 1\n");
    lm_auth_check(a, "Bearer " BOB, "m", 2000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 0, 2000);
    /* The held request is still hers: max_concurrent = 1 is full. */
    lm_auth_check(a, "Bearer " ALICE, "m", 2000, &r);
    assert_int_equal(r.verdict, LM_AUTH_CONCURRENCY);
    assert_ptr_equal(r.key, held.key);
    lm_auth_finish(a, held.key, 0, 2000);
    lm_auth_check(a, "Bearer " ALICE, "m", 2000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    lm_auth_finish(a, r.key, 0, 2000);
    lm_auth_check(a, "Bearer " ALICE, "m", 2000, &r);
    assert_int_equal(r.verdict, LM_AUTH_RATE);

    /* A new key under the same name is a new key: fresh counters. */
    reconfigure(a, "[gateway]\nauth = \"keys\"\n"
                   "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@BOB@\"\nrpm = 3\n");
    lm_auth_check(a, "Bearer " ALICE, "m", 3000, &r);
    assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);
    lm_auth_check(a, "Bearer " BOB, "m", 3000, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    assert_string_equal(lm_auth_key_name(r.key), "alice");
    lm_auth_finish(a, r.key, 0, 3000);
    lm_auth_free(a);
}

static void
test_removed_key_finish_is_safe(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"keys\"\n"
                                "[[gateway.keys]]\nname = \"alice\"\nkey_sha256 = \"@ALICE@\"\n"
                                "tpm = 10\n"
                                "[[gateway.keys]]\nname = \"bob\"\nkey_sha256 = \"@BOB@\"\n");
    struct lm_auth_result r1, r2, rb;

    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r1);
    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r2);
    lm_auth_check(a, "Bearer " BOB, "m", 0, &rb);
    lm_auth_finish(a, rb.key, 0, 0); /* bob idle: freed at once on removal */
    reconfigure(a, "");
    lm_auth_check(a, "Bearer " ALICE, "m", 10, &rb);
    assert_int_equal(rb.verdict, LM_AUTH_OK); /* auth = none now */
    assert_null(rb.key);
    /* Alice's requests end after the reload; her key is still readable. */
    assert_string_equal(lm_auth_key_name(r1.key), "alice");
    lm_auth_finish(a, r1.key, 50, 20);
    assert_int_equal(lm_auth_key_in_flight(r2.key), 1);
    lm_auth_finish(a, r2.key, 50, 30); /* the last one: frees the key */

    /* Removed between check and finish while another reload kept keys. */
    reconfigure(a, alice_only);
    lm_auth_check(a, "Bearer " ALICE, "m", 40, &r1);
    assert_int_equal(r1.verdict, LM_AUTH_OK);
    reconfigure(a, "[gateway]\nauth = \"keys\"\n"
                   "[[gateway.keys]]\nname = \"bob\"\nkey_sha256 = \"@BOB@\"\n");
    lm_auth_check(a, "Bearer " ALICE, "m", 50, &r2);
    assert_int_equal(r2.verdict, LM_AUTH_BAD_KEY);
    lm_auth_free(a); /* frees the retired key still in flight: no leak */
}

static void
test_fep_unavailable(void **state)
{
    (void)state;
    struct lm_auth *a = auth_of("[gateway]\nauth = \"fep\"\n"
                                "[[feps]]\nid = \"fep-test\"\nurl = \"http://127.0.0.1:9300\"\n"
                                "public_key = \"" "0000000000000000000000000000000000000000"
                                "000000000000000000000000\"\nmax_unpaid = \"5.00\"\n");
    struct lm_auth_result r;
    lm_auth_check(a, "Bearer " ALICE, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_UNAVAILABLE);
    assert_null(r.key);
    assert_int_equal(lm_auth_http_status(r.verdict), 503);
    assert_non_null(strstr(r.message, "fep"));
    lm_auth_free(a);
}

static void
test_error_table(void **state)
{
    (void)state;
    assert_int_equal(lm_auth_http_status(LM_AUTH_OK), 200);
    assert_null(lm_auth_error_type(LM_AUTH_OK));
    assert_null(lm_auth_error_code(LM_AUTH_OK));
    enum lm_auth_verdict all[] = {LM_AUTH_MISSING,     LM_AUTH_BAD_KEY, LM_AUTH_FORBIDDEN,
                                  LM_AUTH_RATE,        LM_AUTH_TOKENS,  LM_AUTH_CONCURRENCY,
                                  LM_AUTH_UNAVAILABLE};
    int status[] = {401, 401, 403, 429, 429, 429, 503};
    for (size_t i = 0; i < LM_ARRAY_LEN(all); i++) {
        assert_int_equal(lm_auth_http_status(all[i]), status[i]);
        assert_non_null(lm_auth_error_type(all[i]));
        assert_non_null(lm_auth_error_code(all[i]));
    }
}

static void
test_generate_and_hash(void **state)
{
    (void)state;
    char hex[65], key1[64], hex1[65], key2[64], hex2[65];

    lm_auth_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    lm_auth_key_generate(key1, hex1);
    lm_auth_key_generate(key2, hex2);
    assert_int_equal(strlen(key1), 3 + 43);
    assert_memory_equal(key1, "lm-", 3);
    for (const char *p = key1 + 3; *p; p++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                               "0123456789-_", *p));
    assert_string_not_equal(key1, key2);
    assert_string_not_equal(hex1, hex2);
    assert_int_equal(strlen(hex1), 64);
    lm_auth_sha256_hex(key1, strlen(key1), hex);
    assert_string_equal(hex, hex1);

    /* The pair works as configured. */
    char text[256], hdr[80];
    snprintf(text, sizeof(text),
             "[gateway]\nauth = \"keys\"\n[[gateway.keys]]\nname = \"gen\"\nkey_sha256 = \"%s\"\n",
             hex1);
    struct lm_auth *a = auth_of(text);
    struct lm_auth_result r;
    snprintf(hdr, sizeof(hdr), "Bearer %s", key1);
    lm_auth_check(a, hdr, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_OK);
    assert_string_equal(lm_auth_key_name(r.key), "gen");
    lm_auth_finish(a, r.key, 0, 0);
    snprintf(hdr, sizeof(hdr), "Bearer %s", key2);
    lm_auth_check(a, hdr, "m", 0, &r);
    assert_int_equal(r.verdict, LM_AUTH_BAD_KEY);
    lm_auth_free(a);
}

int
main(void)
{
    lm_log_setup(LM_LOG_ERROR, LM_LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_none_admits_all),
        cmocka_unit_test(test_missing_and_malformed),
        cmocka_unit_test(test_wrong_and_right_key),
        cmocka_unit_test(test_many_keys_lookup),
        cmocka_unit_test(test_allow_list),
        cmocka_unit_test(test_rpm_window),
        cmocka_unit_test(test_rpm_from_clock_zero),
        cmocka_unit_test(test_tpm),
        cmocka_unit_test(test_max_concurrent),
        cmocka_unit_test(test_reconfigure_keeps_counters),
        cmocka_unit_test(test_removed_key_finish_is_safe),
        cmocka_unit_test(test_fep_unavailable),
        cmocka_unit_test(test_error_table),
        cmocka_unit_test(test_generate_and_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
