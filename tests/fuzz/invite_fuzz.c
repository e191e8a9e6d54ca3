/* invite_fuzz: any bytes as an invite token, or as a config that a fixed
 * invite joins. A parsed token must format and parse back to itself; a join
 * that succeeds must give a config that loads, trusts the node, holds its
 * bootstrap entries, keeps everything else (lm_invite_join checks that
 * itself), and that a second join leaves byte for byte as it is.
 * The first byte picks the mode: 't' token, anything else config. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config/config.h"
#include "invite/invite.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PEER "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static bool
has(const struct lm_strv *v, const char *s)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcasecmp(v->v[i], s) == 0)
            return true;
    return false;
}

static void
fuzz_token(const char *s)
{
    struct lm_invite inv, back;
    char err[256], tok[LM_INVITE_TOKEN_MAX + 1];
    if (lm_invite_parse(s, &inv, err, sizeof(err)) < 0) {
        if (err[0] == '\0')
            abort();
        return;
    }
    if (lm_invite_format(&inv, tok, sizeof(tok)) < 0 ||
        lm_invite_parse(tok, &back, err, sizeof(err)) < 0 || memcmp(&inv, &back, sizeof(inv)))
        abort();
}

static void
fuzz_join(const char *text, size_t len)
{
    struct lm_invite inv;
    struct lm_invite_edit ed;
    struct lm_buf out, again;
    struct lm_config *cfg = NULL;
    struct lm_diags d = {0};
    char err[512];

    if (lm_invite_init(&inv, PEER) < 0 || lm_invite_add_addr(&inv, "peer.example:41145") < 0 ||
        lm_invite_add_addr(&inv, "[2001:db8::1]:1") < 0)
        abort();
    if (lm_invite_join(text, len, &inv, &out, &ed, err, sizeof(err)) < 0) {
        if (err[0] == '\0' || out.data)
            abort();
        return;
    }
    if (lm_config_parse(out.data, out.len, "fuzz", &cfg, &d) < 0 ||
        !has(&cfg->mesh.trusted_peers, PEER) ||
        !has(&cfg->mesh.bootstrap, PEER "@peer.example:41145") ||
        !has(&cfg->mesh.bootstrap, PEER "@[2001:db8::1]:1"))
        abort();
    if (lm_invite_join(out.data, out.len, &inv, &again, &ed, err, sizeof(err)) < 0 ||
        ed.trusted_added || ed.bootstrap_added || again.len != out.len ||
        memcmp(again.data, out.data, out.len) != 0)
        abort();
    lm_config_free(cfg);
    lm_diags_clear(&d);
    lm_buf_release(&out);
    lm_buf_release(&again);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > (64u << 10))
        return 0;
    char *s = malloc(size);
    if (!s)
        return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    if (data[0] == 't')
        fuzz_token(s);
    else
        fuzz_join(s, size - 1);
    free(s);
    return 0;
}
