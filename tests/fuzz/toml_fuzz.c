/* toml_fuzz: any bytes into lm_toml_parse. Valid input is walked in full so
 * that a tree that lies about its shape shows up under ASan; keys must be
 * unique per table, strings must survive lm_toml_quote and a re-parse, and
 * an error must come with a position and a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "toml/toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parses `k = <quoted s>` and checks it reads back as s. */
static void
check_quote(const char *s, size_t len)
{
    struct lm_buf b;
    struct lm_toml_value *root;
    char msg[128];
    int line, col;

    lm_buf_init(&b, 0);
    if (lm_buf_puts(&b, "k = ") || lm_toml_quote(&b, s, len))
        abort(); /* parsed strings are valid UTF-8, so they always quote */
    if (lm_toml_parse(b.data, b.len, &root, &line, &col, msg, sizeof(msg)))
        abort();
    const struct lm_toml_value *v = lm_toml_get(root, "k");
    if (!v || v->type != LM_TOML_STRING || v->u.str.len != len || memcmp(v->u.str.ptr, s, len))
        abort();
    lm_toml_free(root);
    lm_buf_release(&b);
}

static void
walk(const struct lm_toml_value *v)
{
    if (v->line < 1 || v->col < 1 || lm_toml_type_name(v->type)[0] == '\0')
        abort();
    switch (v->type) {
    case LM_TOML_TABLE:
        for (size_t i = 0; i < v->u.tab.len; i++) {
            const struct lm_toml_entry *e = &v->u.tab.items[i];
            if (e->line < 1 || e->col < 1)
                abort();
            /* lm_toml_get is a linear scan: only check small tables. */
            if (v->u.tab.len <= 64 && lm_toml_get_entry(v, e->key) != e)
                abort();
            walk(e->value);
        }
        break;
    case LM_TOML_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++)
            walk(v->u.arr.items[i]);
        break;
    case LM_TOML_STRING:
        if (v->u.str.ptr[v->u.str.len] != '\0')
            abort();
        if (v->u.str.len <= 256)
            check_quote(v->u.str.ptr, v->u.str.len);
        break;
    default:
        break;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lm_toml_value *root;
    char msg[256];
    int line = 0, col = 0;

    if (lm_toml_parse((const char *)data, size, &root, &line, &col, msg, sizeof(msg)) == 0) {
        walk(root);
        lm_toml_free(root);
    } else if (root || line < 1 || col < 1 || msg[0] == '\0') {
        abort();
    }
    return 0;
}
