/* toml_test: the lm_toml API — positions, lookups, errors with their
 * positions, the depth and size limits, and lm_toml_quote. The grammar as a
 * whole is covered by tests/conformance/toml (toml-test). */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "toml/toml.h"

static struct lm_toml_value *
parse_ok(const char *s)
{
    struct lm_toml_value *root = NULL;
    char msg[256];
    int line = 0, col = 0;
    int rc = lm_toml_parse(s, strlen(s), &root, &line, &col, msg, sizeof(msg));
    if (rc != 0)
        fail_msg("unexpected error %d:%d: %s in <%s>", line, col, msg, s);
    assert_non_null(root);
    return root;
}

/* Parses s, which must fail at line:col with a message containing want. */
static void
parse_err(const char *s, int want_line, int want_col, const char *want)
{
    struct lm_toml_value *root = (struct lm_toml_value *)1;
    char msg[256];
    int line = 0, col = 0;
    int rc = lm_toml_parse(s, strlen(s), &root, &line, &col, msg, sizeof(msg));
    if (rc != -EINVAL)
        fail_msg("expected an error for <%s>, got %d", s, rc);
    assert_null(root);
    if (line != want_line || col != want_col || !strstr(msg, want))
        fail_msg("<%s>: got %d:%d: %s, want %d:%d: ...%s...", s, line, col, msg, want_line,
                 want_col, want);
}

static void
test_positions(void **state)
{
    (void)state;
    /* Columns count characters: "é" is two bytes but one column. */
    struct lm_toml_value *root = parse_ok("# c\n"
                                          "name = \"x\"\n"
                                          "\n"
                                          "  \"é\" = 42\n"
                                          "[srv]\n"
                                          "\tport = [1, 2]\n");
    const struct lm_toml_entry *e = lm_toml_get_entry(root, "name");
    assert_non_null(e);
    assert_int_equal(e->line, 2);
    assert_int_equal(e->col, 1);
    assert_int_equal(e->value->line, 2);
    assert_int_equal(e->value->col, 8);

    e = lm_toml_get_entry(root, "é");
    assert_non_null(e);
    assert_int_equal(e->line, 4);
    assert_int_equal(e->col, 3);
    assert_int_equal(e->value->col, 9);
    assert_int_equal(e->value->u.integer, 42);

    const struct lm_toml_value *srv = lm_toml_get(root, "srv");
    assert_non_null(srv);
    assert_int_equal(srv->type, LM_TOML_TABLE);
    assert_int_equal(srv->line, 5);
    assert_int_equal(srv->col, 1);
    e = lm_toml_get_entry(srv, "port");
    assert_int_equal(e->line, 6);
    assert_int_equal(e->col, 2); /* a tab is one column */
    assert_int_equal(e->value->type, LM_TOML_ARRAY);
    assert_int_equal(e->value->u.arr.len, 2);
    assert_int_equal(e->value->u.arr.items[1]->line, 6);
    assert_int_equal(e->value->u.arr.items[1]->col, 13);
    lm_toml_free(root);
}

static void
test_get_and_types(void **state)
{
    (void)state;
    struct lm_toml_value *root = parse_ok(
        "s = 'lit'\n"
        "i = -9223372036854775808\n"
        "h = 0x7FFF_FFFF_FFFF_FFFF\n"
        "f = -1.5e3\n"
        "n = -nan\n"
        "b = true\n"
        "dt = 1979-05-27T07:32:00.123456789123-08:30\n"
        "ldt = 1979-05-27t07:32:00\n"
        "ld = 2000-02-29\n"
        "lt = 23:59:60.5\n"
        "a.b.c = \"deep\"\n"
        "\"nul\" = \"x\\u0000y\"\n");
    const struct lm_toml_value *v;

    assert_null(lm_toml_get(root, "missing"));
    assert_null(lm_toml_get(NULL, "s"));
    v = lm_toml_get(root, "s");
    assert_null(lm_toml_get(v, "s")); /* not a table */
    assert_string_equal(v->u.str.ptr, "lit");
    assert_int_equal(lm_toml_get(root, "i")->u.integer, INT64_MIN);
    assert_int_equal(lm_toml_get(root, "h")->u.integer, INT64_MAX);
    assert_true(lm_toml_get(root, "f")->u.flt == -1500.0);
    assert_true(isnan(lm_toml_get(root, "n")->u.flt));
    assert_true(lm_toml_get(root, "b")->u.boolean);

    v = lm_toml_get(root, "dt");
    assert_int_equal(v->type, LM_TOML_DATETIME);
    assert_int_equal(v->u.dt.year, 1979);
    assert_int_equal(v->u.dt.second, 0);
    assert_int_equal(v->u.dt.nanosecond, 123456789);
    assert_int_equal(v->u.dt.frac_digits, 12);
    assert_int_equal(v->u.dt.offset_minutes, -(8 * 60 + 30));
    assert_int_equal(lm_toml_get(root, "ldt")->type, LM_TOML_DATETIME_LOCAL);
    assert_int_equal(lm_toml_get(root, "ld")->type, LM_TOML_DATE_LOCAL);
    v = lm_toml_get(root, "lt");
    assert_int_equal(v->type, LM_TOML_TIME_LOCAL);
    assert_int_equal(v->u.dt.nanosecond, 500000000);
    assert_int_equal(v->u.dt.frac_digits, 1);

    v = lm_toml_get(lm_toml_get(lm_toml_get(root, "a"), "b"), "c");
    assert_non_null(v);
    assert_string_equal(v->u.str.ptr, "deep");
    v = lm_toml_get(root, "nul");
    assert_int_equal(v->u.str.len, 3);
    assert_memory_equal(v->u.str.ptr, "x\0y", 3);

    assert_string_equal(lm_toml_type_name(LM_TOML_TABLE), "table");
    assert_string_equal(lm_toml_type_name(LM_TOML_DATETIME_LOCAL), "datetime-local");
    assert_string_equal(lm_toml_type_name(LM_TOML_TIME_LOCAL), "time-local");
    lm_toml_free(root);
    lm_toml_free(NULL);
}

static void
test_file_order(void **state)
{
    (void)state;
    struct lm_toml_value *root = parse_ok("z = 1\na = 2\n[m]\n[b]\n");
    assert_int_equal(root->u.tab.len, 4);
    assert_string_equal(root->u.tab.items[0].key, "z");
    assert_string_equal(root->u.tab.items[1].key, "a");
    assert_string_equal(root->u.tab.items[2].key, "m");
    assert_string_equal(root->u.tab.items[3].key, "b");
    lm_toml_free(root);
}

static void
test_errors(void **state)
{
    (void)state;
    parse_err("name \"x\"\n", 1, 6, "expected '=' after key \"name\"");
    parse_err("a = 1\nport = 2\nport = 3\n", 3, 1, "duplicate key \"port\" (first defined at 2:1)");
    parse_err("[a]\nx = 1\n[a]\n", 3, 1, "table \"a\" already defined at 1:1");
    parse_err("a = {b = 1}\n[a.c]\n", 2, 2, "inline table");
    parse_err("a = [1]\n[[a]]\n", 2, 3, "static array");
    parse_err("a.b = 1\n[a]\n", 2, 1, "already defined");
    parse_err("[a.b.c]\n[a]\nb.c.t = 1\n", 3, 1, "cannot add keys to table \"b\"");
    parse_err("x = 9223372036854775808\n", 1, 5, "64 bits");
    parse_err("x = 2023-02-29\n", 1, 5, "day out of range");
    parse_err("x = \"\\ud800\"\n", 1, 6, "unicode scalar");
    parse_err("x = 1\ry = 2\n", 1, 6, "carriage return");
    parse_err("x = \"é\xff\"\n", 1, 7, "invalid UTF-8");
    parse_err("x = {a = 1,}\n", 1, 12, "trailing comma");
    parse_err("x = {a = 1,\n b = 2}\n", 1, 12, "newline in inline table");
    parse_err("x = 1 2\n", 1, 7, "expected a newline");
    parse_err("x = 0_1\n", 1, 5, "leading zeros");
    parse_err("x = 1__0\n", 1, 7, "'_'");
    parse_err("x = \"abc\n", 1, 5, "unterminated string");
    parse_err("x = [1, 2\n", 1, 5, "unterminated array");
    parse_err("x = \n", 1, 5, "expected a value");
    parse_err("\"\\u0000\" = 1\n", 1, 1, "NUL");
}

static char *
nested(int depth, char open, char close, const char *inner)
{
    size_t n = strlen(inner);
    char *s = malloc((size_t)depth * 2 + n + 8);
    size_t o = 0;
    memcpy(s + o, "x = ", 4);
    o += 4;
    for (int i = 0; i < depth; i++)
        s[o++] = open;
    memcpy(s + o, inner, n);
    o += n;
    for (int i = 0; i < depth; i++)
        s[o++] = close;
    s[o++] = '\n';
    s[o] = '\0';
    return s;
}

static void
test_depth_limit(void **state)
{
    (void)state;
    char *s = nested(LM_TOML_MAX_DEPTH, '[', ']', "1");
    lm_toml_free(parse_ok(s));
    free(s);
    s = nested(LM_TOML_MAX_DEPTH + 1, '[', ']', "1");
    parse_err(s, 1, 5 + LM_TOML_MAX_DEPTH, "nested deeper");
    free(s);

    /* Far past the limit must still fail cleanly, not blow the stack. */
    s = nested(100000, '[', ']', "");
    parse_err(s, 1, 5 + LM_TOML_MAX_DEPTH, "nested deeper");
    free(s);

    /* Inline tables count the same: "x = {a={a={...}}}". */
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_buf_puts(&b, "x = ");
    for (int i = 0; i <= LM_TOML_MAX_DEPTH; i++)
        lm_buf_puts(&b, "{a=");
    lm_buf_puts(&b, "1");
    for (int i = 0; i <= LM_TOML_MAX_DEPTH; i++)
        lm_buf_puts(&b, "}");
    parse_err(b.data, 1, 5 + 3 * LM_TOML_MAX_DEPTH, "nested deeper");

    /* Dotted keys have a cap on their parts too. */
    lm_buf_reset(&b);
    for (int i = 0; i <= LM_TOML_MAX_DEPTH; i++)
        lm_buf_puts(&b, i ? ".k" : "k");
    lm_buf_puts(&b, " = 1\n");
    parse_err(b.data, 1, 1 + 2 * LM_TOML_MAX_DEPTH, "more than");
    lm_buf_release(&b);
}

static void
test_size_limit(void **state)
{
    (void)state;
    size_t n = LM_TOML_MAX_INPUT;
    char *s = malloc(n + 1);
    memset(s, ' ', n + 1);
    s[0] = '#';
    s[n - 1] = '\n';
    struct lm_toml_value *root = NULL;
    char msg[128];
    int line, col;
    assert_int_equal(lm_toml_parse(s, n, &root, &line, &col, msg, sizeof(msg)), 0);
    assert_int_equal(root->u.tab.len, 0);
    lm_toml_free(root);
    assert_int_equal(lm_toml_parse(s, n + 1, &root, &line, &col, msg, sizeof(msg)), -EINVAL);
    assert_null(root);
    assert_int_equal(line, 1);
    assert_int_equal(col, 1);
    assert_non_null(strstr(msg, "larger than"));
    free(s);
}

static void
test_many_keys(void **state)
{
    (void)state;
    /* 10^5 keys in one table and 10^4 tables: must stay linear. */
    struct lm_buf b;
    lm_buf_init(&b, 0);
    for (int i = 0; i < 100000; i++)
        lm_buf_printf(&b, "k%d = %d\n", i, i);
    size_t keys_len = b.len;
    lm_buf_puts(&b, "k77777 = 0\n");
    struct lm_toml_value *root = NULL;
    char msg[128];
    int line, col;
    assert_int_equal(lm_toml_parse(b.data, b.len, &root, &line, &col, msg, sizeof(msg)),
                     -EINVAL);
    assert_int_equal(line, 100001);
    assert_non_null(strstr(msg, "duplicate key \"k77777\" (first defined at 77778:1)"));

    b.len = keys_len;
    for (int i = 0; i < 10000; i++)
        lm_buf_printf(&b, "[t.s%d]\nv = 1\n", i);
    assert_int_equal(lm_toml_parse(b.data, b.len, &root, &line, &col, msg, sizeof(msg)), 0);
    assert_int_equal(root->u.tab.len, 100001);
    assert_int_equal(lm_toml_get(root, "k99999")->u.integer, 99999);
    assert_int_equal(lm_toml_get(root, "t")->u.tab.len, 10000);
    lm_toml_free(root);
    lm_buf_release(&b);
}

static void
roundtrip(const char *s, size_t len)
{
    struct lm_buf b;
    lm_buf_init(&b, 0);
    assert_int_equal(lm_buf_puts(&b, "k = "), 0);
    assert_int_equal(lm_toml_quote(&b, s, len), 0);
    struct lm_toml_value *root = parse_ok(b.data);
    const struct lm_toml_value *v = lm_toml_get(root, "k");
    assert_int_equal(v->type, LM_TOML_STRING);
    assert_int_equal(v->u.str.len, len);
    assert_memory_equal(v->u.str.ptr, s, len);
    lm_toml_free(root);
    lm_buf_release(&b);
}

#define ROUNDTRIP(lit) roundtrip(lit, sizeof(lit) - 1)

static void
test_quote(void **state)
{
    (void)state;
    struct lm_buf b;
    lm_buf_init(&b, 0);
    assert_int_equal(lm_toml_quote(&b, "a\"b\\c\n", 6), 0);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\"");
    lm_buf_release(&b);

    ROUNDTRIP("");
    ROUNDTRIP("plain");
    ROUNDTRIP("quote \" back \\ tab \t cr \r nl \n ff \f bs \b del \x7f");
    ROUNDTRIP("nul \0 esc \x1b");
    ROUNDTRIP("ünïcødé 😀 \xe2\x80\xa8");
    ROUNDTRIP("'''\"\"\"");

    /* Invalid UTF-8 cannot be TOML: refused, buffer unchanged. */
    lm_buf_init(&b, 0);
    lm_buf_puts(&b, "x");
    assert_int_equal(lm_toml_quote(&b, "ok\xff", 3), -EINVAL);
    assert_string_equal(b.data, "x");
    lm_buf_release(&b);

    /* Over the buffer's cap: -E2BIG, buffer unchanged. */
    lm_buf_init(&b, 8);
    lm_buf_puts(&b, "x");
    assert_int_equal(lm_toml_quote(&b, "0123456789", 10), -E2BIG);
    assert_string_equal(b.data, "x");
    lm_buf_release(&b);
}

static void
test_redefinition_ok(void **state)
{
    (void)state;
    /* The legal ways of coming back to a table, which must not be errors. */
    const char *ok[] = {
        "[a.b.c]\n[a]\nx = 1\n",
        "[fruit]\napple.color = 'red'\n[fruit.apple.texture]\nsmooth = true\n",
        "[[a]]\n[a.b]\n[[a]]\n[a.b]\n",
        "[[a.b]]\n[a]\nc = 1\n[[a.b]]\n",
        "a = {b.c = 1, b.d = 2}\n",
        "a.b = 1\na.c = 2\n[x]\n",
        "[a]\nb.c = 1\nb.d = 2\n",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        lm_toml_free(parse_ok(ok[i]));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_get_and_types),
        cmocka_unit_test(test_file_order),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_redefinition_ok),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
