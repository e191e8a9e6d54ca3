/* log: one line per event, text or JSON, to stderr.
 * Owns: the level filter, the output format, and the rule that bytes from
 * outside are escaped before they reach a log line (use lm_escape). */
#ifndef LM_LOG_H
#define LM_LOG_H

#include "util/util.h"

enum lm_log_level { LM_LOG_ERROR, LM_LOG_WARN, LM_LOG_INFO, LM_LOG_DEBUG };
enum lm_log_format { LM_LOG_TEXT, LM_LOG_JSON };

void lm_log_setup(enum lm_log_level level, enum lm_log_format format);
enum lm_log_level lm_log_get_level(void);
/* Parses "error|warn|info|debug" / "text|json"; -EINVAL otherwise. */
int lm_log_level_parse(const char *s, enum lm_log_level *out);
int lm_log_format_parse(const char *s, enum lm_log_format *out);
const char *lm_log_level_name(enum lm_log_level level);

void lm_log(enum lm_log_level level, const char *module, const char *fmt, ...) LM_PRINTF(3, 4);
/* The same for a message already formatted (len bytes, no NUL needed). */
void lm_log_msg(enum lm_log_level level, const char *module, const char *msg, size_t len);

/* Holds info and debug lines in memory from now until lm_log_flush() (or
 * until 4 KiB are held, or exit): an event loop that logs a line per
 * request writes them once per turn. Warnings and errors are written at
 * once, after what is held. */
void lm_log_hold(void);
void lm_log_flush(void);
/* Writes what is held now, and goes on holding: a server calls it before
 * it sends, so that the log line about an answer is never behind it. */
void lm_log_write_held(void);

/* Each .c file that logs defines LM_LOG_MODULE "name" before including. */
#define log_error(...) lm_log(LM_LOG_ERROR, LM_LOG_MODULE, __VA_ARGS__)
#define log_warn(...) lm_log(LM_LOG_WARN, LM_LOG_MODULE, __VA_ARGS__)
#define log_info(...) lm_log(LM_LOG_INFO, LM_LOG_MODULE, __VA_ARGS__)
#define log_debug(...)                                                                         \
    do {                                                                                       \
        if (lm_log_get_level() >= LM_LOG_DEBUG)                                                \
            lm_log(LM_LOG_DEBUG, LM_LOG_MODULE, __VA_ARGS__);                                  \
    } while (0)

#endif
