#include "log/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

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

/* JSON string escaping of our own message text. Messages already carry
 * client bytes escaped by lm_escape, so only quotes, backslashes and control
 * bytes need care here. */
static void
json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void
lm_log(enum lm_log_level level, const char *module, const char *fmt, ...)
{
    if (level > g_level)
        return;

    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* A message is one line whatever its arguments held. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[96];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv.tv_usec / 1000));

    /* One fprintf-locked line per call; stderr is unbuffered, so build it
     * first and write it once. */
    char line[2300];
    FILE *f = fmemopen(line, sizeof(line), "w");
    if (!f)
        return;
    if (g_format == LM_LOG_JSON) {
        fprintf(f, "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":", ts, level_names[level]);
        json_str(f, module);
        fputs(",\"msg\":", f);
        json_str(f, msg);
        fputs("}\n", f);
    } else {
        fprintf(f, "%s %-5s %s: %s\n", ts, level_names[level], module, msg);
    }
    long n = ftell(f);
    fclose(f);
    if (n > 0)
        fwrite(line, 1, (size_t)n, stderr);
}
