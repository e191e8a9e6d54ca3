/* toml: a TOML 1.0 parser into an immutable tree of values.
 * Owns: the whole TOML 1.0 grammar, its redefinition rules, and limits on
 * input size and nesting, so that no input can crash, hang or exhaust memory. */
#ifndef LM_TOML_H
#define LM_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

/* Hard limits: a config file is small; anything larger is hostile. */
#define LM_TOML_MAX_INPUT (4u << 20) /* bytes */
#define LM_TOML_MAX_DEPTH 64         /* nested arrays/inline tables/key parts */

enum lm_toml_type {
    LM_TOML_TABLE,
    LM_TOML_ARRAY,
    LM_TOML_STRING,
    LM_TOML_INTEGER,
    LM_TOML_FLOAT,
    LM_TOML_BOOL,
    LM_TOML_DATETIME,       /* offset date-time */
    LM_TOML_DATETIME_LOCAL, /* local date-time */
    LM_TOML_DATE_LOCAL,
    LM_TOML_TIME_LOCAL,
};

struct lm_toml_datetime {
    int year, month, day;            /* unset (0) for TIME_LOCAL */
    int hour, minute, second;        /* unset (0) for DATE_LOCAL */
    int nanosecond;                  /* fractional seconds, truncated to ns */
    int frac_digits;                 /* digits written after '.', 0 = none */
    int offset_minutes;              /* DATETIME only; Z = 0 */
};

struct lm_toml_value;

struct lm_toml_entry {
    char *key;                   /* NUL-terminated; keys with NUL are rejected */
    int line, col;               /* where the key was written */
    struct lm_toml_value *value;
};

struct lm_toml_value {
    enum lm_toml_type type;
    int line, col; /* where the value starts (tables: their header or first key) */
    union {
        struct {
            char *ptr; /* NUL-terminated, but may contain NUL: use len */
            size_t len;
        } str;
        int64_t integer;
        double flt;
        bool boolean;
        struct lm_toml_datetime dt;
        struct {
            struct lm_toml_value **items;
            size_t len, cap;
        } arr;
        struct {
            struct lm_toml_entry *items; /* in file order */
            size_t len, cap;
        } tab;
    } u;
    unsigned flags; /* parser bookkeeping (implicit/defined/inline/...) */
};

/* Parses buf. On success *out is the root table and 0 is returned. On a
 * syntax or semantic error returns -EINVAL and fills *line, *col (1-based)
 * and msg with a short lowercase message, no position prefix. TOML has no
 * error recovery worth trusting, so the first error stops the parse. */
int lm_toml_parse(const char *buf, size_t len, struct lm_toml_value **out, int *line, int *col,
                  char *msg, size_t msgcap);
void lm_toml_free(struct lm_toml_value *v);

/* Lookup in a table by exact key; NULL when absent or v is not a table. */
const struct lm_toml_value *lm_toml_get(const struct lm_toml_value *table, const char *key);
/* The entry (for its key position) by key; NULL when absent. */
const struct lm_toml_entry *lm_toml_get_entry(const struct lm_toml_value *table, const char *key);

const char *lm_toml_type_name(enum lm_toml_type t); /* "string", "integer", "table", ... */

/* Writes a string as a TOML basic string (quoted, escaped) into b. */
int lm_toml_quote(struct lm_buf *b, const char *s, size_t len);

#endif
