/* labman invite / join: trusting a peer with a one-line token (docs/trust.md).
 * invite prints this node's token; join edits the config's [mesh] so that it
 * trusts the token's node, then asks a running labmand to reload. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config/config.h"
#include "identity/identity.h"
#include "invite/invite.h"
#include "labman/cli.h"
#include "util/util.h"

static const char usage_invite[] =
    "Usage: labman invite [-c FILE]\n"
    "\n"
    "Prints one line: a token with which another node trusts this one. Its\n"
    "operator runs `labman join TOKEN` there. The token is\n"
    "  labman1:<node id>@<host:port>,<host:port>/<checksum>\n"
    "with the node id of data_dir/identity.key (labmand creates it on first\n"
    "start) and the addresses of [mesh] advertise. Without an advertise address\n"
    "the token has none: the other node cannot dial this one, this one must\n"
    "dial it. Nothing in it is secret, but joining trusts the node it names:\n"
    "hand it over a channel you trust. See docs/trust.md.\n";

static const char usage_join[] =
    "Usage: labman join TOKEN [-c FILE] [--admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "Trusts the node that made TOKEN with `labman invite`. In the config file\n"
    "(-c FILE, else " LM_CONFIG_DEFAULT_PATH ") it adds the node id to [mesh]\n"
    "trusted_peers and \"<node id>@<address>\" for each address of the token to\n"
    "[mesh] bootstrap, keeping comments and layout; what is there already is\n"
    "not added again, so joining twice changes nothing. The edited file is\n"
    "checked like `labman config check`, then replaces the old one atomically\n"
    "(same mode and owner). Then labmand is asked to reload it, as `labman\n"
    "config reload` does (--admin, --token-file as there); if labmand is not\n"
    "running, the file is updated all the same and applies when it starts.\n"
    "Trust is one-way: for the other node to accept this one, run `labman join`\n"
    "there with this node's token (printed at the end). See docs/trust.md.\n";

/* This node's token from cfg; with loud, says on stderr what is missing or
 * odd. Returns 0, or < 0 (and, when loud, has said why). */
static int
own_token(const struct lm_config *cfg, bool loud, char *out, size_t cap)
{
    struct lm_identity id;
    struct lm_invite inv;

    int rc = lm_identity_load(cfg->node.data_dir, &id);
    if (rc < 0) {
        if (loud)
            fprintf(stderr, "labman: %s\n", id.err);
        return rc;
    }
    lm_invite_init(&inv, id.node_id);
    lm_identity_wipe(&id);
    for (size_t i = 0; i < cfg->mesh.advertise.n; i++) {
        const char *a = cfg->mesh.advertise.v[i];
        rc = lm_invite_add_addr(&inv, a);
        if (!loud)
            continue;
        if (rc == -EADDRNOTAVAIL)
            fprintf(stderr, "labman: note: leaving out advertise address %s: no peer can dial "
                            "an unspecified address; advertise one that peers reach\n", a);
        else if (rc == -ENOSPC)
            fprintf(stderr, "labman: note: leaving out advertise address %s: a token holds at "
                            "most %d\n", a, LM_INVITE_MAX_ADDRS);
        else if (rc < 0)
            fprintf(stderr, "labman: note: leaving out advertise address %s: not host:port\n",
                    a);
        else if (lm_hostport_is_loopback(a))
            fprintf(stderr, "labman: note: advertise address %s is loopback: only a node on "
                            "this machine can dial it\n", a);
    }
    if (loud && inv.n_addrs == 0)
        fprintf(stderr, "labman: note: [mesh] advertise is empty, so the token has no address: "
                        "peers cannot dial this node; it must dial them\n");
    rc = lm_invite_format(&inv, out, cap);
    if (rc < 0 && loud)
        fprintf(stderr, "labman: the token would be longer than %d bytes; advertise fewer or "
                        "shorter addresses\n", LM_INVITE_TOKEN_MAX);
    return rc;
}

int
cli_cmd_invite(int argc, char **argv)
{
    struct target t;
    char token[LM_INVITE_TOKEN_MAX + 1];

    if (cli_wants_help(argc, argv)) {
        fputs(usage_invite, stdout);
        return 0;
    }
    if (cli_parse_target(argc, argv, &t, false, usage_invite) < 0)
        return 2;
    if (t.admin || t.token_file) {
        fputs(usage_invite, stderr);
        return 2;
    }
    struct lm_config *cfg = cli_load_config(t.config);
    if (!cfg)
        return 1;
    int rc = own_token(cfg, true, token, sizeof(token));
    lm_config_free(cfg);
    if (rc < 0)
        return 1;
    printf("%s\n", token);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* Which file the labmand at c runs from, compared with path: 1 another
 * one (a reload would not read the edit; its name in theirs), 0 the same or
 * cannot tell (only an absolute path it reports can be compared: a relative
 * one is relative to its own working directory), -1 unreachable (and
 * cli_call has said so). */
static int
other_file(const struct conn *c, const char *path, char *theirs, size_t cap)
{
    json_t *st = NULL;
    char a[PATH_MAX], b[PATH_MAX];
    int rc = 0;
    long status = cli_call(c, "GET", "/admin/v1/status", &st);
    const char *f = json_string_value(json_object_get(st, "config"));
    if (status < 0)
        rc = -1;
    else if (status == 200 && f && f[0] == '/' && realpath(f, a) && realpath(path, b) &&
             strcmp(a, b) != 0)
        rc = 1;
    if (rc == 1)
        snprintf(theirs, cap, "%s", f);
    json_decref(st);
    return rc;
}

/* POST /admin/v1/config/reload; the exit code. Unreachable = not running:
 * the file is in place and labmand reads it at start, so that is success. */
static int
reload(const struct target *t, const char *path)
{
    struct conn c;
    json_t *res = NULL, *v;
    char theirs[PATH_MAX];
    size_t i;
    int rc = 1;

    if (cli_resolve(t, &c) < 0) {
        fprintf(stderr, "labman: the config is updated, but labmand was not asked to reload\n");
        return 1;
    }
    int other = other_file(&c, path, theirs, sizeof(theirs));
    if (other < 0) {
        printf("labmand is not running; the config applies when it starts\n");
        rc = 0;
        goto out;
    }
    if (other > 0) {
        fprintf(stderr, "labman: labmand at %s runs from %s, not %s: not asking it to "
                        "reload\n", c.addr, theirs, path);
        goto out;
    }
    long status = cli_call(&c, "POST", "/admin/v1/config/reload", &res);
    const char *result = json_string_value(json_object_get(res, "result"));
    if (status < 0) {
        printf("labmand is not running; the config applies when it starts\n");
        rc = 0;
    } else if (status == 200 && result) {
        printf("labmand reloaded the config\n");
        json_array_foreach(json_object_get(res, "restart_needed"), i, v)
            printf("restart needed for: %s\n", json_string_value(v) ? json_string_value(v) : "?");
        rc = 0;
    } else if (status == 422 && result) {
        json_array_foreach(json_object_get(res, "errors"), i, v)
            fprintf(stderr, "%s\n", json_string_value(v) ? json_string_value(v) : "?");
        fprintf(stderr, "labman: labmand rejected the config and kept the running one\n");
    } else {
        rc = cli_api_error(&c, status, res);
        fprintf(stderr, "labman: the config is updated, but labmand did not reload it\n");
    }
out:
    json_decref(res);
    cli_conn_release(&c);
    return rc;
}

int
cli_cmd_join(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"admin", required_argument, NULL, 'a'},
        {"token-file", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    struct target t = {0};
    struct lm_invite inv;
    struct lm_invite_edit ed;
    struct lm_diags diags = {0};
    struct lm_config *cfg = NULL;
    struct lm_buf out;
    char err[512], mine[LM_INVITE_TOKEN_MAX + 1] = "";
    char *text = NULL;
    size_t len = 0;
    int c, rc = 1;

    if (cli_wants_help(argc, argv)) {
        fputs(usage_join, stdout);
        return 0;
    }
    optind = 1;
    opterr = 0; /* getopt would name the command "join" as the program */
    while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            t.config = optarg;
            break;
        case 'a':
            t.admin = optarg;
            break;
        case 't':
            t.token_file = optarg;
            break;
        default:
            fprintf(stderr, "labman: join: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            fputs(usage_join, stderr);
            return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "labman: join wants exactly one TOKEN\n");
        fputs(usage_join, stderr);
        return 2;
    }
    lm_buf_init(&out, 0);
    const char *path = t.config ? t.config : LM_CONFIG_DEFAULT_PATH;
    if (lm_invite_parse(argv[optind], &inv, err, sizeof(err)) < 0) {
        fprintf(stderr, "labman: invalid token: %s\n", err);
        goto out;
    }

    int r = lm_file_read(path, LM_CONFIG_MAX_BYTES, &text, &len);
    if (r == -ENOENT) {
        fprintf(stderr, "labman: %s does not exist; create it (an empty file is a valid "
                        "config) or name the config with -c FILE\n", path);
        goto out;
    } else if (r == -EFBIG) {
        fprintf(stderr, "labman: %s is larger than %u bytes\n", path, LM_CONFIG_MAX_BYTES);
        goto out;
    } else if (r < 0) {
        fprintf(stderr, "labman: cannot read %s: %s\n", path, strerror(-r));
        goto out;
    }
    if (lm_config_parse(text, len, path, &cfg, &diags) < 0) {
        lm_diags_print(&diags, path, stderr);
        fprintf(stderr, "labman: %s is invalid; fix it before joining\n", path);
        goto out;
    }

    struct lm_identity id;
    bool self = false;
    if (lm_identity_load(cfg->node.data_dir, &id) == 0) {
        self = strcmp(id.node_id, inv.node_id) == 0;
        lm_identity_wipe(&id);
        if (!self)
            own_token(cfg, false, mine, sizeof(mine));
    }
    if (self) {
        fprintf(stderr, "labman: this token is this node's own; run `labman join` with it on "
                        "the other node\n");
        goto out;
    }

    if (lm_invite_join(text, len, &inv, &out, &ed, err, sizeof(err)) < 0) {
        fprintf(stderr, "labman: cannot join in %s: %s\n", path, err);
        goto out;
    }
    if (!ed.trusted_added && ed.bootstrap_added == 0) {
        printf("%s already trusts %.*s%s; nothing to change\n", path, LM_SHORT_ID_LEN,
               inv.node_id, inv.n_addrs ? " and has its addresses" : "");
        rc = 0;
    } else {
        if (lm_invite_write_file(path, text, len, out.data, out.len, err, sizeof(err)) < 0) {
            fprintf(stderr, "labman: %s\n", err);
            goto out;
        }
        if (ed.trusted_added)
            printf("trusted %s: added to [mesh] trusted_peers in %s\n", inv.node_id, path);
        else
            printf("%.*s is already in [mesh] trusted_peers in %s\n", LM_SHORT_ID_LEN,
                   inv.node_id, path);
        if (ed.bootstrap_added)
            printf("added %zu address%s to [mesh] bootstrap\n", ed.bootstrap_added,
                   ed.bootstrap_added == 1 ? "" : "es");
        if (inv.n_addrs == 0)
            printf("the token has no address: that node will dial this one\n");
        fflush(stdout);
        /* The new file names the admin address now in effect. */
        struct target rt = {.admin = t.admin, .token_file = t.token_file};
        rt.config = t.admin ? NULL : path;
        rc = reload(&rt, path);
    }
    if (mine[0])
        printf("for %.*s to accept this node too, run there:\n  labman join %s\n",
               LM_SHORT_ID_LEN, inv.node_id, mine);
out:
    lm_diags_clear(&diags);
    lm_config_free(cfg);
    lm_buf_release(&out);
    free(text);
    return rc;
}
