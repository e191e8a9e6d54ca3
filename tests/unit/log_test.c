/* Unit tests for the log: the exact text and JSON lines, one line per call
 * whatever the message holds, and lines held by lm_log_hold coming out whole
 * and in order. */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define LM_LOG_MODULE "test"
#include "log/log.h"

static char got[65536];

/* Runs fn with stderr sent to a temp file; got holds what was written. */
static size_t
capture(void (*fn)(void))
{
    char path[] = "/tmp/log_test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    ssize_t n = pread(fd, got, sizeof(got) - 1, 0);
    close(fd);
    assert_true(n >= 0);
    got[n] = '\0';
    return (size_t)n;
}

static void
match(const char *s, const char *re)
{
    regex_t r;
    assert_int_equal(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&r, s, 0, NULL, 0);
    regfree(&r);
    if (rc != 0)
        fail_msg("\"%s\" does not match %s", s, re);
}

static void
text_lines(void)
{
    lm_log_setup(LM_LOG_INFO, LM_LOG_TEXT);
    log_info("a=%d b=%s %.1f", 7, "x\ny\rz", 1.25);
    log_warn("w");
    log_debug("not shown");
}

static void
test_text(void **state)
{
    (void)state;
    capture(text_lines);
    match(got, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z info  test: "
               "a=7 b=x y z 1\\.2\n"
               "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z warn  test: w\n$");
}

static void
json_lines(void)
{
    lm_log_setup(LM_LOG_DEBUG, LM_LOG_JSON);
    log_error("q\"b\\s\tt\x01 nl\n");
    static const char raw[] = "r\"aw\x02";
    lm_log_msg(LM_LOG_DEBUG, "m\"x", raw, sizeof(raw) - 1);
}

static void
test_json(void **state)
{
    (void)state;
    capture(json_lines);
    match(got, "^\\{\"ts\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z\",\"level\":\"error\","
               "\"module\":\"test\",\"msg\":\"q\\\\\"b\\\\\\\\s\\\\u0009t\\\\u0001 nl \"\\}\n"
               "\\{\"ts\":\"[^\"]+\",\"level\":\"debug\",\"module\":\"m\\\\\"x\","
               "\"msg\":\"r\\\\\"aw\\\\u0002\"\\}\n$");
}

/* A message longer than the cap is cut, and stays one line. */
static void
long_line(void)
{
    static char big[5000];
    memset(big, 'a', sizeof(big) - 1);
    big[3000] = '\n';
    lm_log_setup(LM_LOG_INFO, LM_LOG_TEXT);
    log_info("%s", big);
}

static void
test_long(void **state)
{
    (void)state;
    size_t n = capture(long_line);
    assert_int_equal(n, strlen("2026-01-01T00:00:00.000Z info  test: ") + 2047 + 1);
    assert_ptr_equal(strchr(got, '\n'), got + n - 1);
}

static void
held_lines(void)
{
    lm_log_setup(LM_LOG_INFO, LM_LOG_TEXT);
    lm_log_hold();
    for (int i = 0; i < 100; i++)
        log_info("held %d", i); /* past 4 KiB: some go out before the flush */
    lm_log_write_held(); /* what a server does before it sends */
    log_info("held more");
    log_warn("warning"); /* not held: written after what is */
    log_info("after");
    lm_log_flush();
    log_info("plain");
}

static void
test_hold(void **state)
{
    (void)state;
    capture(held_lines);
    const char *p = got;
    char want[32];
    for (int i = 0; i < 100; i++) {
        snprintf(want, sizeof(want), "info  test: held %d\n", i);
        p = strstr(p, want);
        assert_non_null(p);
    }
    p = strstr(p, "info  test: held more\n");
    assert_non_null(p);
    p = strstr(p, "warn  test: warning\n");
    assert_non_null(p);
    p = strstr(p, "info  test: after\n");
    assert_non_null(p);
    assert_non_null(strstr(p, "info  test: plain\n"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_long),
        cmocka_unit_test(test_hold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
