#include "log/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum lm_log_level g_level = LM_LOG_INFO;
static enum lm_log_format g_format = LM_LOG_TEXT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void
lm_log_setup(enum lm_log_level level, enum lm_log_format format)
{
    g_level = level;
    g_format = format;
}

enum lm_log_level
lm_log_get_level(void)
{
    return g_level;
}

const char *
lm_log_level_name(enum lm_log_level level)
{
    return level <= LM_LOG_DEBUG ? level_names[level] : "?";
}

int
lm_log_level_parse(const char *s, enum lm_log_level *out)
{
    for (size_t i = 0; i < LM_ARRAY_LEN(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum lm_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

int
lm_log_format_parse(const char *s, enum lm_log_format *out)
{
    if (strcmp(s, "text") == 0)
        *out = LM_LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = LM_LOG_JSON;
    else
        return -EINVAL;
    return 0;
}

/* The line being built. labmand logs from one thread; thread-local keeps
 * a stray caller on another thread from mixing lines all the same. A JSON
 * message may grow six-fold when escaped, hence the size. */
#define LOG_MSG_MAX 2048
#define LOG_MODULE_MAX 32 /* module names are short literals */
#define LOG_LINE_MAX ((LOG_MSG_MAX + LOG_MODULE_MAX) * 6 + 128)

static _Thread_local char t_line[LOG_LINE_MAX];
static _Thread_local char t_msg[LOG_MSG_MAX];

/* "YYYY-MM-DDTHH:MM:SS." for the second last formatted: gmtime_r and the
 * date's formatting run once a second, not once a line. */
static _Thread_local time_t t_sec = -1;
static _Thread_local char t_stamp[32];
static _Thread_local size_t t_stamp_len;

static char *
put_uint(char *p, unsigned v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + width;
}

/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" at p; returns its end. */
static char *
put_ts(char *p)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != t_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        int n = snprintf(t_stamp, sizeof(t_stamp), "%04d-%02d-%02dT%02d:%02d:%02d.",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec);
        t_stamp_len = n > 0 && (size_t)n < sizeof(t_stamp) ? (size_t)n : 0;
        t_sec = tv.tv_sec;
    }
    memcpy(p, t_stamp, t_stamp_len);
    p = put_uint(p + t_stamp_len, (unsigned)(tv.tv_usec / 1000), 3);
    *p++ = 'Z';
    return p;
}

static char *
put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

/* JSON string escaping of our own message text. Messages already carry
 * client bytes escaped by lm_escape, so only quotes, backslashes and control
 * bytes need care here. At most 6 bytes out per byte in, plus the quotes. */
static char *
put_json_str(char *p, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    *p++ = '"';
    for (const char *end = s + n; s < end; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            memcpy(p, "\\u00", 4);
            p[4] = hex[c >> 4];
            p[5] = hex[c & 15];
            p += 6;
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    return p;
}

/* A message is one line whatever its arguments held. */
static void
one_line(char *s, size_t n)
{
    for (char *p = s, *end = s + n; (p = memchr(p, '\n', (size_t)(end - p))); p++)
        *p = ' ';
    for (char *p = s, *end = s + n; (p = memchr(p, '\r', (size_t)(end - p))); p++)
        *p = ' ';
}

static void
write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Lines held by lm_log_hold, written together: one write(2) for all the
 * access-log lines of an event-loop turn instead of one each. */
#define LOG_HOLD_FLUSH 4096
static _Thread_local char t_held[LOG_HOLD_FLUSH + LOG_LINE_MAX];
static _Thread_local size_t t_held_len;
static _Thread_local bool t_holding;
static bool g_atexit;

void
lm_log_flush(void)
{
    int saved_errno = errno;
    t_holding = false;
    if (t_held_len > 0)
        write_all(t_held, t_held_len);
    t_held_len = 0;
    errno = saved_errno;
}

void
lm_log_write_held(void)
{
    if (t_held_len == 0)
        return;
    int saved_errno = errno;
    write_all(t_held, t_held_len);
    t_held_len = 0;
    errno = saved_errno;
}

static void
flush_at_exit(void)
{
    lm_log_flush();
}

void
lm_log_hold(void)
{
    if (!g_atexit) {
        g_atexit = true;
        atexit(flush_at_exit);
    }
    t_holding = true;
}

/* Whole lines only, in order; warnings and errors are not held. */
static void
emit(enum lm_log_level level, const char *line, size_t n)
{
    if (t_holding && level >= LM_LOG_INFO) {
        memcpy(t_held + t_held_len, line, n);
        t_held_len += n;
        if (t_held_len >= LOG_HOLD_FLUSH) {
            write_all(t_held, t_held_len);
            t_held_len = 0;
        }
        return;
    }
    if (t_held_len > 0) {
        write_all(t_held, t_held_len);
        t_held_len = 0;
    }
    write_all(line, n);
}

/* The line's start in text format: "<ts> <level padded to 5> <module>: ". */
static char *
text_head(char *p, enum lm_log_level level, const char *module)
{
    p = put_ts(p);
    *p++ = ' ';
    const char *lv = level_names[level];
    size_t lvn = strlen(lv);
    memcpy(p, lv, lvn);
    memset(p + lvn, ' ', 5 - lvn);
    p += 5;
    *p++ = ' ';
    size_t modn = strnlen(module, LOG_MODULE_MAX);
    memcpy(p, module, modn);
    p += modn;
    *p++ = ':';
    *p++ = ' ';
    return p;
}

/* The whole JSON line around msg (mlen bytes, one line already). */
static char *
json_line(char *p, enum lm_log_level level, const char *module, const char *msg, size_t mlen)
{
    p = put_str(p, "{\"ts\":\"");
    p = put_ts(p);
    p = put_str(p, "\",\"level\":\"");
    p = put_str(p, level_names[level]);
    p = put_str(p, "\",\"module\":");
    p = put_json_str(p, module, strnlen(module, LOG_MODULE_MAX));
    p = put_str(p, ",\"msg\":");
    p = put_json_str(p, msg, mlen);
    return put_str(p, "}\n");
}

static size_t
clamp_len(int n)
{
    return n < 0 ? 0 : (size_t)n < LOG_MSG_MAX ? (size_t)n : LOG_MSG_MAX - 1;
}

/* A line is built in one buffer and written whole with one write(2) (or
 * held, then written with others): stderr is unbuffered, and a line must
 * not interleave with another process's. */
void
lm_log(enum lm_log_level level, const char *module, const char *fmt, ...)
{
    if (level > g_level)
        return;

    int saved_errno = errno;
    char *p = t_line;
    va_list ap;
    if (g_format == LM_LOG_JSON) {
        va_start(ap, fmt);
        size_t mlen = clamp_len(vsnprintf(t_msg, sizeof(t_msg), fmt, ap));
        va_end(ap);
        one_line(t_msg, mlen);
        p = json_line(p, level, module, t_msg, mlen);
    } else {
        p = text_head(p, level, module);
        /* Straight into the line, cut where a message of LOG_MSG_MAX
         * bytes is cut. */
        va_start(ap, fmt);
        size_t mlen = clamp_len(vsnprintf(p, LOG_MSG_MAX, fmt, ap));
        va_end(ap);
        one_line(p, mlen);
        p += mlen;
        *p++ = '\n';
    }
    emit(level, t_line, (size_t)(p - t_line));
    errno = saved_errno;
}

void
lm_log_msg(enum lm_log_level level, const char *module, const char *msg, size_t len)
{
    if (level > g_level)
        return;

    int saved_errno = errno;
    size_t mlen = len < LOG_MSG_MAX ? len : LOG_MSG_MAX - 1;
    char *p = t_line;
    if (g_format == LM_LOG_JSON) {
        memcpy(t_msg, msg, mlen);
        one_line(t_msg, mlen);
        p = json_line(p, level, module, t_msg, mlen);
    } else {
        p = text_head(p, level, module);
        memcpy(p, msg, mlen);
        one_line(p, mlen);
        p += mlen;
        *p++ = '\n';
    }
    emit(level, t_line, (size_t)(p - t_line));
    errno = saved_errno;
}
