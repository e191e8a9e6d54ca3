/* http_fuzz: any bytes into lm_http_parse_head, the way the server calls it:
 * the head is what comes before the first "\r\n\r\n" (or the whole input,
 * which must then be refused). Every string of a parsed request must lie in
 * the input or the path buffer, be NUL-terminated and free of CR, LF and
 * NUL; a refusal must come with one of the documented statuses and a reason. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_str(const char *s, const char *buf, size_t len, const char *path)
{
    bool in_buf = s >= buf && s < buf + len;
    bool in_path = s >= path && s <= path + LM_HTTP_MAX_TARGET;
    if (!in_buf && !in_path && *s != '\0')
        abort();
    size_t n = strlen(s);
    if ((in_buf && s + n >= buf + len) || memchr(s, '\r', n) || memchr(s, '\n', n))
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct lm_http_request r;
    static char path[LM_HTTP_MAX_TARGET + 1];
    struct lm_http_head h;
    const uint8_t *e = size >= 4 ? memmem(data, size, "\r\n\r\n", 4) : NULL;
    size_t len = e ? (size_t)(e - data) + 4 : size;

    /* An exact copy, so ASan sees any read past the head. */
    char *buf = lm_xmalloc(len ? len : 1);
    memcpy(buf, data, len);
    int st = lm_http_parse_head(buf, len, &r, path, &h);
    if (st == 0) {
        if (!e || r.n_headers > LM_HTTP_MAX_HEADERS || r.minor < 0 || r.minor > 9 || r.body)
            abort();
        check_str(r.method, buf, len, path);
        check_str(r.target, buf, len, path);
        check_str(r.path, buf, len, path);
        check_str(r.query, buf, len, path);
        if (r.path[0] != '/' && r.path[0] != '*')
            abort();
        if (strncmp(r.target, r.path, strlen(r.path)) != 0 || strlen(r.target) > LM_HTTP_MAX_TARGET)
            abort();
        for (size_t i = 0; i < r.n_headers; i++) {
            check_str(r.headers[i].name, buf, len, path);
            check_str(r.headers[i].value, buf, len, path);
            if (r.headers[i].name[0] == '\0' || lm_http_header_get(&r, r.headers[i].name) == NULL)
                abort();
        }
        if (h.why)
            abort();
    } else if ((st != 400 && st != 414 && st != 431 && st != 501 && st != 505) || !h.why ||
               !h.why[0]) {
        abort();
    }
    free(buf);
    return 0;
}
