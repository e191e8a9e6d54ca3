/* labman: the operator CLI. wg-style subcommands; talks to labmand over its
 * admin API (libcurl, blocking: fine here, never on the daemon's loop). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "admin/admin.h"
#include "config/config.h"
#include "identity/identity.h"
#include "labman/cli.h"
#include "util/util.h"

#define DEFAULT_ADMIN "127.0.0.1:8145"
#define REPLY_MAX (4u << 20)

static const char usage_main[] =
    "Usage: labman <command> [options]\n"
    "\n"
    "Commands:\n"
    "  status          show what labmand is doing (--json for the raw object)\n"
    "  identity        print this node's id (from data_dir/identity.key)\n"
    "  config check F  validate a config file\n"
    "  config show     print the effective config, defaults included, secrets masked\n"
    "  config reload   ask labmand to re-read its config\n"
    "  endpoints       the local runtimes: kind, health, load, circuit (--json)\n"
    "  models          the models they serve (--json)\n"
    "  requests        the gateway's requests in flight (--json)\n"
    "  peers           the mesh nodes this node knows, connected or not (--json)\n"
    "  key new NAME    make an API key for [gateway] auth = \"keys\" (shown once)\n"
    "  invite          print a one-line token with which another node trusts this one\n"
    "  join TOKEN      trust the node that made TOKEN: edit [mesh], reload labmand\n"
    "  version         print the version\n"
    "\n"
    "Run `labman <command> --help` for a command's options.\n";

static const char usage_status[] =
    "Usage: labman status [--json] [-c FILE | --admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "Shows labmand's node, identity, state, uptime and listeners.\n"
    "The admin address is --admin, else [admin] listen of the config (-c, or\n"
    "/etc/labman/labman.toml when it exists), else " DEFAULT_ADMIN ".\n"
    "The bearer token is read from --token-file, else the config's [admin] token_file.\n";

static const char usage_identity[] = "Usage: labman identity [-c FILE]\n"
                                     "\n"
                                     "Prints the node id (hex Ed25519 public key) stored in\n"
                                     "data_dir/identity.key. Creates nothing.\n";

static const char usage_config[] =
    "Usage: labman config check FILE\n"
    "       labman config show [-c FILE]\n"
    "       labman config reload [-c FILE | --admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "check   exit 0 and print \"FILE: ok\", or exit 1 and print every problem as\n"
    "        FILE:LINE:COL: message on stderr\n"
    "show    the effective config as TOML, defaults included, secrets masked\n"
    "reload  POST /admin/v1/config/reload: labmand re-reads its file (like SIGHUP);\n"
    "        exit 1 if it rejected the file, with the reasons\n";

/* ---- config and target ---- */

static bool
exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

struct lm_config *
cli_load_config(const char *given)
{
    const char *path = given ? given : LM_CONFIG_DEFAULT_PATH;
    struct lm_config *cfg = NULL;
    struct lm_diags diags = {0};

    if (!given && !exists(path))
        return lm_config_defaults();
    if (lm_config_load(path, &cfg, &diags) < 0) {
        lm_diags_print(&diags, path, stderr);
        fprintf(stderr, "labman: %s is invalid\n", path);
        lm_diags_clear(&diags);
        return NULL;
    }
    lm_diags_clear(&diags);
    return cfg;
}

/* A listen address as a place to connect to: wildcard binds are reached
 * over loopback. */
static void
connect_addr(const char *listen, char *out, size_t cap)
{
    char host[256];
    int port;
    if (lm_hostport_parse(listen, host, sizeof(host), &port, false) < 0) {
        snprintf(out, cap, "%s", listen);
        return;
    }
    if (strcmp(host, "0.0.0.0") == 0)
        snprintf(out, cap, "127.0.0.1:%d", port);
    else if (strcmp(host, "::") == 0)
        snprintf(out, cap, "[::1]:%d", port);
    else if (strchr(host, ':'))
        snprintf(out, cap, "[%s]:%d", host, port);
    else
        snprintf(out, cap, "%s:%d", host, port);
}

int
cli_resolve(const struct target *t, struct conn *c)
{
    const char *token_file = t->token_file;
    struct lm_config *cfg = NULL;

    memset(c, 0, sizeof(*c));
    if (t->admin) {
        char host[256];
        int port;
        if (lm_hostport_parse(t->admin, host, sizeof(host), &port, false) < 0) {
            fprintf(stderr, "labman: --admin wants HOST:PORT or [V6]:PORT, not \"%s\"\n",
                    t->admin);
            return -EINVAL;
        }
        connect_addr(t->admin, c->addr, sizeof(c->addr));
    } else {
        cfg = cli_load_config(t->config);
        if (!cfg)
            return -EINVAL;
        connect_addr(cfg->admin.listen, c->addr, sizeof(c->addr));
        if (!token_file && cfg->admin.token_file && *cfg->admin.token_file)
            token_file = cfg->admin.token_file;
    }
    int rc = 0;
    if (token_file) {
        char err[512];
        rc = lm_admin_token_read(token_file, &c->token, err, sizeof(err));
        if (rc < 0)
            fprintf(stderr, "labman: %s\n", err);
    }
    lm_config_free(cfg);
    return rc;
}

void
cli_conn_release(struct conn *c)
{
    if (c->token) {
        memset(c->token, 0, strlen(c->token));
        free(c->token);
    }
}

/* ---- admin API over HTTP ---- */

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
    struct lm_buf *b = arg;
    return lm_buf_append(b, p, size * n) == 0 ? size * n : 0;
}

/* Calls the admin API. Returns the HTTP status and the parsed JSON body (or
 * NULL), or -1 after printing why labmand could not be reached. */
long
cli_call(const struct conn *c, const char *method, const char *path, json_t **out)
{
    char url[512], auth[LM_ADMIN_TOKEN_MAX + 32], errbuf[CURL_ERROR_SIZE] = "";
    struct lm_buf body;
    struct curl_slist *hdrs = NULL;
    long status = -1;

    *out = NULL;
    lm_buf_init(&body, REPLY_MAX);
    snprintf(url, sizeof(url), "http://%s%s", c->addr, path);
    CURL *h = curl_easy_init();
    if (!h) {
        fprintf(stderr, "labman: cannot initialise libcurl\n");
        return -1;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
    if (c->token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->token);
        hdrs = curl_slist_append(hdrs, auth);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    }
    CURLcode cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        long oserr = 0;
        curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oserr);
        const char *why = cc == CURLE_COULDNT_CONNECT && oserr ? strerror((int)oserr)
                          : errbuf[0]                          ? errbuf
                                                               : curl_easy_strerror(cc);
        fprintf(stderr, "labman: cannot reach labmand at %s: %s (is it running?)\n", c->addr,
                why);
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (body.len)
        *out = json_loadb(body.data, body.len, 0, NULL);
out:
    memset(auth, 0, sizeof(auth));
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    lm_buf_release(&body);
    return status;
}

/* Prints an error answer as one line; returns the exit code. */
int
cli_get(int argc, char **argv, const char *usage, const char *path, const char *not_found,
        struct target *t, json_t **out)
{
    struct conn c;
    int rc = 1;

    *out = NULL;
    if (cli_parse_target(argc, argv, t, true, usage) < 0)
        return 2;
    if (cli_resolve(t, &c) < 0)
        return 1;
    long status = cli_call(&c, "GET", path, out);
    if (status < 0)
        goto out;
    if (status == 404 && not_found) {
        fprintf(stderr, "labman: labmand at %s %s\n", c.addr, not_found);
    } else if (status != 200 || !json_is_object(*out)) {
        rc = cli_api_error(&c, status, *out);
    } else {
        rc = 0;
        goto out;
    }
    json_decref(*out);
    *out = NULL;
out:
    cli_conn_release(&c);
    return rc;
}

void
cli_print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    puts(s ? s : "{}");
    free(s);
}

int
cli_api_error(const struct conn *c, long status, json_t *body)
{
    const char *msg = json_string_value(json_object_get(json_object_get(body, "error"), "message"));
    if (status == 401)
        fprintf(stderr,
                "labman: labmand at %s wants a valid admin token (the file named by [admin] "
                "token_file, or --token-file)\n",
                c->addr);
    else
        fprintf(stderr, "labman: labmand at %s answered %ld: %s\n", c->addr, status,
                msg ? msg : "unexpected reply");
    return 1;
}

/* ---- commands ---- */

static void
print_row(const char *k, const char *v)
{
    printf("%-13s %s\n", k, v);
}

static const char *
str_of(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static void
print_status(json_t *st)
{
    char buf[512];

    print_row("node", str_of(st, "name"));
    print_row("node id", str_of(st, "node_id"));
    print_row("short id", str_of(st, "short_id"));
    print_row("state", str_of(st, "state"));
    print_row("version", str_of(st, "version"));

    buf[0] = '\0';
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(st, "roles"), i, v)
    {
        if (i)
            strncat(buf, ", ", sizeof(buf) - strlen(buf) - 1);
        strncat(buf, json_string_value(v) ? json_string_value(v) : "?",
                sizeof(buf) - strlen(buf) - 1);
    }
    print_row("roles", buf[0] ? buf : "-");

    long long up = (long long)json_integer_value(json_object_get(st, "uptime_s"));
    if (up >= 86400)
        snprintf(buf, sizeof(buf), "%lldd %lldh %lldm", up / 86400, up % 86400 / 3600,
                 up % 3600 / 60);
    else if (up >= 3600)
        snprintf(buf, sizeof(buf), "%lldh %lldm %llds", up / 3600, up % 3600 / 60, up % 60);
    else if (up >= 60)
        snprintf(buf, sizeof(buf), "%lldm %llds", up / 60, up % 60);
    else
        snprintf(buf, sizeof(buf), "%llds", up);
    print_row("uptime", buf);
    snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(json_object_get(st, "pid")));
    print_row("pid", buf);
    snprintf(buf, sizeof(buf), "%s (%s)", str_of(st, "config"), str_of(st, "config_source"));
    print_row("config", buf);
    print_row("data dir", str_of(st, "data_dir"));

    json_t *mesh = json_object_get(st, "mesh");
    if (json_is_object(mesh)) {
        snprintf(buf, sizeof(buf), "%s (%lld trusted, %lld denied, %lld bootstrap)",
                 str_of(mesh, "trust"),
                 (long long)json_integer_value(json_object_get(mesh, "trusted_peers")),
                 (long long)json_integer_value(json_object_get(mesh, "denied_peers")),
                 (long long)json_integer_value(json_object_get(mesh, "bootstrap")));
        print_row("trust", buf);
    }

    const char *k;
    json_object_foreach(json_object_get(st, "listen"), k, v)
    {
        snprintf(buf, sizeof(buf), "%-8s %s", k, json_string_value(v) ? json_string_value(v) : "-");
        print_row("listen", buf);
    }

    json_t *lr = json_object_get(st, "last_reload");
    const char *res = str_of(lr, "result");
    if (json_object_get(lr, "at")) {
        time_t at = (time_t)json_integer_value(json_object_get(lr, "at"));
        struct tm tm;
        char when[64];
        localtime_r(&at, &tm);
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        snprintf(buf, sizeof(buf), "%s at %s", res, when);
    } else {
        snprintf(buf, sizeof(buf), "%s", strcmp(res, "none") == 0 ? "never" : res);
    }
    print_row("last reload", buf);
}

bool
cli_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

/* Options shared by the commands that talk to labmand. */
int
cli_parse_target(int argc, char **argv, struct target *t, bool allow_json, const char *usage)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},     {"admin", required_argument, NULL, 'a'},
        {"token-file", required_argument, NULL, 't'}, {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    int c;
    memset(t, 0, sizeof(*t));
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            t->config = optarg;
            break;
        case 'a':
            t->admin = optarg;
            break;
        case 't':
            t->token_file = optarg;
            break;
        case 'j':
            if (allow_json) {
                t->json = true;
                break;
            }
            /* fallthrough */
        default:
            fputs(usage, stderr);
            return -EINVAL;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "labman: unexpected argument \"%s\"\n", argv[optind]);
        fputs(usage, stderr);
        return -EINVAL;
    }
    if (t->config && t->admin) {
        fprintf(stderr, "labman: -c and --admin exclude each other\n");
        return -EINVAL;
    }
    return 0;
}

static int
cmd_status(int argc, char **argv)
{
    struct target t;
    struct conn c;
    json_t *st = NULL;
    int rc = 1;

    if (cli_wants_help(argc, argv)) {
        fputs(usage_status, stdout);
        return 0;
    }
    if (cli_parse_target(argc, argv, &t, true, usage_status) < 0)
        return 2;
    if (cli_resolve(&t, &c) < 0)
        return 1;
    long status = cli_call(&c, "GET", "/admin/v1/status", &st);
    if (status < 0)
        goto out;
    if (status != 200 || !json_is_object(st)) {
        rc = cli_api_error(&c, status, st);
        goto out;
    }
    if (t.json) {
        cli_print_json(st);
    } else {
        print_status(st);
    }
    rc = 0;
out:
    json_decref(st);
    cli_conn_release(&c);
    return rc;
}

static int
cmd_identity(int argc, char **argv)
{
    struct target t;
    if (cli_wants_help(argc, argv)) {
        fputs(usage_identity, stdout);
        return 0;
    }
    if (cli_parse_target(argc, argv, &t, false, usage_identity) < 0 || t.admin || t.token_file) {
        if (t.admin || t.token_file)
            fputs(usage_identity, stderr);
        return 2;
    }
    struct lm_config *cfg = cli_load_config(t.config);
    if (!cfg)
        return 1;
    struct lm_identity id;
    int rc = lm_identity_load(cfg->node.data_dir, &id);
    lm_config_free(cfg);
    if (rc < 0) {
        fprintf(stderr, "labman: %s\n", id.err);
        return 1;
    }
    printf("%s\n", id.node_id);
    lm_identity_wipe(&id);
    return 0;
}

static int
config_check(const char *path)
{
    struct lm_config *cfg = NULL;
    struct lm_diags diags = {0};
    int rc = 0;

    if (lm_config_load(path, &cfg, &diags) < 0) {
        lm_diags_print(&diags, path, stderr);
        if (diags.n == 0)
            fprintf(stderr, "%s: invalid config\n", path);
        rc = 1;
    } else {
        printf("%s: ok\n", path);
    }
    lm_diags_clear(&diags);
    lm_config_free(cfg);
    return rc;
}

static int
config_show(int argc, char **argv)
{
    struct target t;
    if (cli_parse_target(argc, argv, &t, false, usage_config) < 0 || t.admin || t.token_file)
        return 2;
    struct lm_config *cfg = cli_load_config(t.config);
    if (!cfg)
        return 1;
    struct lm_buf out;
    lm_buf_init(&out, 0);
    int rc = lm_config_to_toml(cfg, true, &out);
    if (rc == 0)
        fwrite(out.data ? out.data : "", 1, out.len, stdout);
    else
        fprintf(stderr, "labman: cannot print the config: %s\n", strerror(-rc));
    lm_buf_release(&out);
    lm_config_free(cfg);
    return rc == 0 ? 0 : 1;
}

static int
config_reload(int argc, char **argv)
{
    struct target t;
    struct conn c;
    json_t *res = NULL;
    int rc = 1;

    if (cli_parse_target(argc, argv, &t, true, usage_config) < 0)
        return 2;
    if (cli_resolve(&t, &c) < 0)
        return 1;
    long status = cli_call(&c, "POST", "/admin/v1/config/reload", &res);
    if (status < 0)
        goto out;
    const char *result = json_string_value(json_object_get(res, "result"));
    if ((status != 200 && status != 422) || !result) {
        rc = cli_api_error(&c, status, res);
        goto out;
    }
    if (t.json) {
        cli_print_json(res);
        rc = status == 200 ? 0 : 1;
        goto out;
    }
    size_t i;
    json_t *v;
    if (status == 200) {
        printf("config reloaded\n");
        json_array_foreach(json_object_get(res, "restart_needed"), i, v)
            printf("restart needed for: %s\n", json_string_value(v) ? json_string_value(v) : "?");
        rc = 0;
    } else {
        json_array_foreach(json_object_get(res, "errors"), i, v)
            fprintf(stderr, "%s\n", json_string_value(v) ? json_string_value(v) : "?");
        fprintf(stderr, "labman: labmand rejected the config and kept the running one\n");
    }
out:
    json_decref(res);
    cli_conn_release(&c);
    return rc;
}

static int
cmd_config(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_config, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (cli_wants_help(argc - 1, argv + 1)) {
        fputs(usage_config, stdout);
        return 0;
    }
    if (strcmp(sub, "check") == 0) {
        if (argc != 3) {
            fputs(usage_config, stderr);
            return 2;
        }
        return config_check(argv[2]);
    }
    if (strcmp(sub, "show") == 0)
        return config_show(argc - 1, argv + 1);
    if (strcmp(sub, "reload") == 0)
        return config_reload(argc - 1, argv + 1);
    fprintf(stderr, "labman: unknown config command \"%s\"\n", sub);
    fputs(usage_config, stderr);
    return 2;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_main, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(usage_main, stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("labman %s\n", LM_VERSION);
        return 0;
    }
    /* Errors are printed by the commands; keep libcurl's global state for
     * the lifetime of the process. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (strcmp(cmd, "status") == 0)
        rc = cmd_status(argc - 1, argv + 1);
    else if (strcmp(cmd, "identity") == 0)
        rc = cmd_identity(argc - 1, argv + 1);
    else if (strcmp(cmd, "config") == 0)
        rc = cmd_config(argc - 1, argv + 1);
    else if (strcmp(cmd, "key") == 0)
        rc = cli_cmd_key(argc - 1, argv + 1);
    else if (strcmp(cmd, "peers") == 0)
        rc = cli_cmd_peers(argc - 1, argv + 1);
    else if (strcmp(cmd, "endpoints") == 0)
        rc = cli_cmd_endpoints(argc - 1, argv + 1);
    else if (strcmp(cmd, "models") == 0)
        rc = cli_cmd_models(argc - 1, argv + 1);
    else if (strcmp(cmd, "requests") == 0)
        rc = cli_cmd_requests(argc - 1, argv + 1);
    else if (strcmp(cmd, "invite") == 0)
        rc = cli_cmd_invite(argc - 1, argv + 1);
    else if (strcmp(cmd, "join") == 0)
        rc = cli_cmd_join(argc - 1, argv + 1);
    else {
        fprintf(stderr, "labman: unknown command \"%s\"\n\n", cmd);
        fputs(usage_main, stderr);
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
