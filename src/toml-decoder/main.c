/* toml-decoder: the toml-test decoder interface over src/toml.
 * Reads TOML on stdin; valid input is written to stdout as toml-test's
 * tagged JSON (exit 0), invalid input gives one "LINE:COL: message" line on
 * stderr (exit 1). Anything else that goes wrong exits 2. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "toml/toml.h"
#include "util/util.h"

static void
format_float(char *out, size_t cap, double d)
{
    if (isnan(d)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    /* The shortest form that reads back as the same double. */
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

static void
format_datetime(char *out, size_t cap, const struct lm_toml_value *v)
{
    const struct lm_toml_datetime *dt = &v->u.dt;
    struct lm_buf b;
    lm_buf_init(&b, cap - 1);
    if (v->type != LM_TOML_TIME_LOCAL)
        lm_buf_printf(&b, "%04d-%02d-%02d", dt->year, dt->month, dt->day);
    if (v->type == LM_TOML_DATETIME || v->type == LM_TOML_DATETIME_LOCAL)
        lm_buf_puts(&b, "T");
    if (v->type != LM_TOML_DATE_LOCAL) {
        lm_buf_printf(&b, "%02d:%02d:%02d", dt->hour, dt->minute, dt->second);
        if (dt->frac_digits > 0) {
            int digits = dt->frac_digits < 9 ? dt->frac_digits : 9;
            char frac[16];
            snprintf(frac, sizeof(frac), "%09d", dt->nanosecond);
            lm_buf_printf(&b, ".%.*s", digits, frac);
        }
    }
    if (v->type == LM_TOML_DATETIME) {
        int off = dt->offset_minutes;
        if (off == 0)
            lm_buf_puts(&b, "Z");
        else
            lm_buf_printf(&b, "%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 60, abs(off) % 60);
    }
    snprintf(out, cap, "%s", b.data ? b.data : "");
    lm_buf_release(&b);
}

static json_t *
tagged(const char *type, const char *value, size_t len)
{
    return json_pack("{s:s, s:s%}", "type", type, "value", value, len);
}

static json_t *
to_json(const struct lm_toml_value *v)
{
    char tmp[128];
    json_t *j;
    switch (v->type) {
    case LM_TOML_TABLE:
        j = json_object();
        for (size_t i = 0; i < v->u.tab.len; i++)
            json_object_set_new(j, v->u.tab.items[i].key, to_json(v->u.tab.items[i].value));
        return j;
    case LM_TOML_ARRAY:
        j = json_array();
        for (size_t i = 0; i < v->u.arr.len; i++)
            json_array_append_new(j, to_json(v->u.arr.items[i]));
        return j;
    case LM_TOML_STRING:
        return tagged("string", v->u.str.ptr, v->u.str.len);
    case LM_TOML_INTEGER:
        snprintf(tmp, sizeof(tmp), "%lld", (long long)v->u.integer);
        break;
    case LM_TOML_FLOAT:
        format_float(tmp, sizeof(tmp), v->u.flt);
        break;
    case LM_TOML_BOOL:
        snprintf(tmp, sizeof(tmp), "%s", v->u.boolean ? "true" : "false");
        break;
    default:
        format_datetime(tmp, sizeof(tmp), v);
        break;
    }
    return tagged(lm_toml_type_name(v->type), tmp, strlen(tmp));
}

int
main(void)
{
    struct lm_buf in;
    char chunk[65536];
    size_t n;
    char msg[256];
    int line, col;
    struct lm_toml_value *root;

    /* One byte over the limit, so that the parser reports the size itself. */
    lm_buf_init(&in, LM_TOML_MAX_INPUT + 1);
    while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0) {
        size_t room = in.limit - in.len;
        if (lm_buf_append(&in, chunk, n < room ? n : room) < 0)
            break;
        if (n >= room)
            break;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "toml-decoder: reading stdin: %s\n", strerror(errno));
        return 2;
    }
    if (lm_toml_parse(in.data ? in.data : "", in.len, &root, &line, &col, msg, sizeof(msg)) < 0) {
        fprintf(stderr, "%d:%d: %s\n", line, col, msg);
        lm_buf_release(&in);
        return 1;
    }
    lm_buf_release(&in);
    json_t *j = to_json(root);
    lm_toml_free(root);
    int rc = json_dumpf(j, stdout, JSON_PRESERVE_ORDER | JSON_INDENT(1));
    json_decref(j);
    if (rc < 0 || fputc('\n', stdout) == EOF || fflush(stdout) != 0) {
        fprintf(stderr, "toml-decoder: writing stdout failed\n");
        return 2;
    }
    return 0;
}
