/* Unit tests for src/util: buffers, diagnostics, hex, host:port, escaping. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/util.h"

static void
test_buf_limit(void **state)
{
    (void)state;
    struct lm_buf b;
    lm_buf_init(&b, 8);
    assert_int_equal(lm_buf_puts(&b, "abcd"), 0);
    assert_int_equal(lm_buf_printf(&b, "%d", 1234), 0);
    assert_string_equal(b.data, "abcd1234");
    /* Past the cap: refused, and the buffer is unchanged. */
    assert_int_equal(lm_buf_puts(&b, "x"), -E2BIG);
    assert_int_equal(lm_buf_printf(&b, "%s", "yz"), -E2BIG);
    assert_string_equal(b.data, "abcd1234");
    lm_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    lm_buf_release(&b);
}

static void
test_prom_label(void **state)
{
    (void)state;
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_prom_label(&b, "a\"b\\c\nd");
    assert_string_equal(b.data, "a\\\"b\\\\c\\nd");
    lm_buf_release(&b);
}

static void
test_diags_sorted_and_printed(void **state)
{
    (void)state;
    struct lm_diags d = {0};
    lm_diags_add(&d, 9, 2, "second %s", "problem");
    lm_diags_add(&d, 3, 7, "first");
    lm_diags_add(&d, 0, 0, "no position");
    lm_diags_sort(&d);
    char out[256] = {0};
    FILE *f = fmemopen(out, sizeof(out), "w");
    lm_diags_print(&d, "x.toml", f);
    fclose(f);
    assert_string_equal(out, "x.toml: no position\nx.toml:3:7: first\nx.toml:9:2: second problem\n");
    lm_diags_clear(&d);
    assert_int_equal(d.n, 0);
}

static void
test_hex(void **state)
{
    (void)state;
    uint8_t in[3] = {0x00, 0xab, 0xff}, out[3];
    char hex[7];
    lm_hex_encode(hex, in, 3);
    assert_string_equal(hex, "00abff");
    assert_int_equal(lm_hex_decode(out, 3, "00ABff"), 0);
    assert_memory_equal(in, out, 3);
    assert_int_equal(lm_hex_decode(out, 3, "00abf"), -EINVAL);
    assert_int_equal(lm_hex_decode(out, 3, "00abfg"), -EINVAL);
    assert_int_equal(lm_hex_decode(out, 3, "00abff00"), -EINVAL);
}

static void
test_hostport(void **state)
{
    (void)state;
    char host[64];
    int port;
    assert_int_equal(lm_hostport_parse("127.0.0.1:8145", host, sizeof(host), &port, false), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8145);
    assert_int_equal(lm_hostport_parse("[::1]:80", host, sizeof(host), &port, false), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(lm_hostport_parse("lab-1.local:65535", host, sizeof(host), &port, false), 0);
    const char *bad[] = {"", ":80", "host", "host:", "host:0", "host:65536", "host:8a",
                         "::1:80", "[::1]80", "[]:80", "ho st:80", "host:123456"};
    for (size_t i = 0; i < LM_ARRAY_LEN(bad); i++)
        assert_int_equal(lm_hostport_parse(bad[i], host, sizeof(host), &port, false), -EINVAL);
    assert_int_equal(lm_hostport_parse("h:0", host, sizeof(host), &port, true), 0);
    assert_int_equal(lm_hostport_parse("a-very-long-host-name:1", host, 8, &port, false),
                     -EINVAL);
}

static void
test_escape(void **state)
{
    (void)state;
    char out[64];
    lm_escape(out, sizeof(out), "a\nb\"c\\\x01\xff", 8);
    assert_string_equal(out, "a\\nb\\\"c\\\\\\x01\\xff");
    /* Truncation keeps the result terminated and marked. */
    char small[8];
    lm_escape(small, sizeof(small), "abcdefghijkl", 12);
    assert_string_equal(small, "abcd...");
    char tiny[4];
    lm_escape(tiny, sizeof(tiny), "\n\n\n", 3);
    assert_string_equal(tiny, "...");
}

static void
test_edit_distance(void **state)
{
    (void)state;
    assert_int_equal(lm_edit_distance("listen", "listn"), 1);
    assert_int_equal(lm_edit_distance("", "abc"), 3);
    assert_int_equal(lm_edit_distance("roles", "roles"), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_limit),      cmocka_unit_test(test_diags_sorted_and_printed),
        cmocka_unit_test(test_hex),            cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_escape),         cmocka_unit_test(test_edit_distance),
        cmocka_unit_test(test_prom_label),
    };
    return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
