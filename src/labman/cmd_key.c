/* labman key: API keys for [gateway] auth = "keys". `key new` makes a key and
 * the [[gateway.keys]] stanza holding only its SHA-256; `key hash` hashes a
 * key an operator already has. Nothing here talks to labmand. */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth/auth.h"
#include "config/config.h"
#include "labman/cli.h"
#include "util/util.h"

static const char usage_key[] =
    "Usage: labman key new NAME [--models GLOB,...] [--rpm N] [--tpm N] [--max-concurrent N]\n"
    "       labman key hash < FILE\n"
    "\n"
    "new   makes a random API key for NAME and prints it once, then the\n"
    "      [[gateway.keys]] stanza to paste into the config (it holds only the\n"
    "      key's SHA-256, never the key). Limits are omitted or 0 for none:\n"
    "        --models GLOB,...   models the key may use (globs, e.g. \"llama3*\")\n"
    "        --rpm N             requests per minute (sliding 60 s window)\n"
    "        --tpm N             tokens per minute (prompt + completion)\n"
    "        --max-concurrent N  requests in flight at once\n"
    "hash  reads a key from stdin (one line) and prints its SHA-256, for a\n"
    "      key_sha256 line\n"
    "\n"
    "Then set [gateway] auth = \"keys\" and run `labman config reload`.\n"
    "See docs/auth.md.\n";

/* A TOML basic string. Bytes >= 0x80 pass as they are: the parser that
 * checks the stanza rejects invalid UTF-8 with a clear message. */
static void
toml_string(struct lm_buf *b, const char *s)
{
    lm_buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            lm_buf_printf(b, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            lm_buf_printf(b, "\\u%04x", *p);
        else
            lm_buf_append(b, p, 1);
    }
    lm_buf_puts(b, "\"");
}

static int
parse_count(const char *opt, const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0 || s[0] == '-' || s[0] == '+') {
        fprintf(stderr, "labman: %s wants a whole number >= 0 (0 = no limit), not \"%s\"\n", opt,
                s);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* "a,b,c" into a TOML array; empty items are mistakes. */
static int
models_array(struct lm_buf *b, const char *list)
{
    char *copy = lm_xstrdup(list), *save = NULL;
    int rc = 0, n = 0;
    size_t len = strlen(list);

    if (len == 0 || list[0] == ',' || list[len - 1] == ',' || strstr(list, ",,")) {
        fprintf(stderr, "labman: --models wants globs separated by commas, with none empty\n");
        rc = -EINVAL;
        goto out;
    }
    lm_buf_puts(b, "models = [");
    for (char *g = strtok_r(copy, ",", &save); g; g = strtok_r(NULL, ",", &save)) {
        if (n++)
            lm_buf_puts(b, ", ");
        toml_string(b, g);
    }
    lm_buf_puts(b, "]\n");
out:
    free(copy);
    return rc;
}

static int
key_new(int argc, char **argv)
{
    static const struct option opts[] = {
        {"models", required_argument, NULL, 'm'},
        {"rpm", required_argument, NULL, 'r'},
        {"tpm", required_argument, NULL, 't'},
        {"max-concurrent", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0},
    };
    const char *models = NULL;
    int64_t rpm = 0, tpm = 0, conc = 0;
    char key[64], hex[65];
    struct lm_buf stanza, doc;
    struct lm_diags diags = {0};
    struct lm_config *cfg = NULL;
    int c, rc = 1;

    optind = 1;
    opterr = 0; /* getopt would name the command "new" */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            models = optarg;
            break;
        case 'r':
            if (parse_count("--rpm", optarg, &rpm) < 0)
                return 2;
            break;
        case 't':
            if (parse_count("--tpm", optarg, &tpm) < 0)
                return 2;
            break;
        case 'c':
            if (parse_count("--max-concurrent", optarg, &conc) < 0)
                return 2;
            break;
        default:
            fprintf(stderr, "labman: key new: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            fputs(usage_key, stderr);
            return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "labman: key new wants exactly one NAME\n");
        fputs(usage_key, stderr);
        return 2;
    }

    lm_auth_key_generate(key, hex);
    lm_buf_init(&stanza, 0);
    lm_buf_init(&doc, 0);
    lm_buf_puts(&stanza, "[[gateway.keys]]\nname = ");
    toml_string(&stanza, argv[optind]);
    lm_buf_printf(&stanza, "\nkey_sha256 = \"%s\"\n", hex);
    if (models && models_array(&stanza, models) < 0) {
        rc = 2;
        goto out;
    }
    if (rpm)
        lm_buf_printf(&stanza, "rpm = %lld\n", (long long)rpm);
    if (tpm)
        lm_buf_printf(&stanza, "tpm = %lld\n", (long long)tpm);
    if (conc)
        lm_buf_printf(&stanza, "max_concurrent = %lld\n", (long long)conc);

    /* The stanza is checked by the config parser itself, so a name or glob
     * that labmand would reject is refused here, before a key is shown. */
    lm_buf_printf(&doc, "[gateway]\nauth = \"keys\"\n%s", stanza.data);
    if (lm_config_parse(doc.data, doc.len, "key", &cfg, &diags) < 0) {
        for (size_t i = 0; i < diags.n; i++)
            fprintf(stderr, "labman: %s\n", diags.v[i].msg);
        goto out;
    }
    printf("%s\n"
           "# ^ the API key for \"%s\", shown only this once: labman keeps only its SHA-256.\n"
           "#   Hand it to its user now; clients send it as \"Authorization: Bearer <key>\".\n"
           "\n"
           "# Add to the config (with [gateway] auth = \"keys\"), then `labman config reload`:\n"
           "%s",
           key, cfg->gateway.keys[0].name, stanza.data);
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    sodium_memzero(key, sizeof(key));
    lm_diags_clear(&diags);
    lm_config_free(cfg);
    lm_buf_release(&stanza);
    lm_buf_release(&doc);
    return rc;
}

static int
key_hash(int argc, char **argv)
{
    char buf[LM_AUTH_TOKEN_MAX + 3], hex[65];
    (void)argv;

    if (argc != 1) {
        fputs(usage_key, stderr);
        return 2;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, stdin);
    buf[n] = '\0';
    char *s = buf;
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strcspn(s, "\r\n");
    const char *rest = s + len;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    while (*rest == '\r' || *rest == '\n')
        rest++;
    int rc = 1;
    if (*rest || (n == sizeof(buf) - 1 && !feof(stdin))) {
        fprintf(stderr, "labman: key hash wants one key of at most %d bytes on one line\n",
                LM_AUTH_TOKEN_MAX);
    } else if (len == 0) {
        fprintf(stderr, "labman: no key on stdin\n");
    } else if (len > LM_AUTH_TOKEN_MAX) {
        fprintf(stderr, "labman: the key is longer than %d bytes; labmand would refuse it\n",
                LM_AUTH_TOKEN_MAX);
    } else {
        size_t i = 0;
        while (i < len && s[i] > ' ' && s[i] < 0x7f)
            i++;
        if (i < len) {
            fprintf(stderr, "labman: a key is printable ASCII without spaces (it travels in "
                            "\"Authorization: Bearer <key>\")\n");
        } else {
            lm_auth_sha256_hex(s, len, hex);
            printf("%s\n", hex);
            rc = 0;
        }
    }
    sodium_memzero(buf, sizeof(buf));
    return rc;
}

int
cli_cmd_key(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_key, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_key, stdout);
            return 0;
        }
    }
    if (strcmp(argv[1], "new") == 0)
        return key_new(argc - 1, argv + 1);
    if (strcmp(argv[1], "hash") == 0)
        return key_hash(argc - 1, argv + 1);
    fprintf(stderr, "labman: unknown key command \"%s\"\n", argv[1]);
    fputs(usage_key, stderr);
    return 2;
}
