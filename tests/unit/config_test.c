/* Unit tests for src/config: defaults, every section, every validation rule
 * with its exact position, hints, round trip, restart rules, money. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "toml/toml.h"

#define H64A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define H64B "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"
#define H64B_LOWER "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
/* Key hashes used nowhere else, so the masking test can look for them. */
#define H64K1 "1111111111111111111111111111111111111111111111111111111111111111"
#define H64K2 "2222222222222222222222222222222222222222222222222222222222222222"

static struct lm_config *
parse_ok(const char *toml)
{
    struct lm_diags d = {0};
    struct lm_config *cfg = NULL;
    int rc = lm_config_parse(toml, strlen(toml), "t.toml", &cfg, &d);
    if (rc != 0)
        lm_diags_print(&d, "t.toml", stderr);
    assert_int_equal(rc, 0);
    assert_non_null(cfg);
    assert_int_equal(d.n, 0);
    lm_diags_clear(&d);
    return cfg;
}

/* Exactly one problem, at line:col, with exactly this message. */
static void
check1(const char *toml, int line, int col, const char *msg)
{
    struct lm_diags d = {0};
    struct lm_config *cfg = (struct lm_config *)1;
    int rc = lm_config_parse(toml, strlen(toml), "t.toml", &cfg, &d);
    if (d.n != 1 || d.v[0].line != line || d.v[0].col != col || strcmp(d.v[0].msg, msg) != 0) {
        fprintf(stderr, "input:\n%s\nwanted %d:%d: %s\ngot:\n", toml, line, col, msg);
        lm_diags_print(&d, "t.toml", stderr);
    }
    assert_int_equal(rc, -EINVAL);
    assert_null(cfg);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.v[0].line, line);
    assert_int_equal(d.v[0].col, col);
    assert_string_equal(d.v[0].msg, msg);
    lm_diags_clear(&d);
}

static void
test_defaults(void **state)
{
    (void)state;
    struct lm_config *cfg = parse_ok("");
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    assert_string_equal(cfg->path, "t.toml");
    assert_string_equal(cfg->node.name, host[0] ? host : "labman");
    assert_string_equal(cfg->node.data_dir, "/var/lib/labman");
    assert_int_equal(cfg->node.roles, LM_ROLE_GATEWAY | LM_ROLE_PROVIDER);
    assert_int_equal(cfg->node.log_level, LM_LOG_INFO);
    assert_int_equal(cfg->node.log_format, LM_LOG_TEXT);
    assert_string_equal(cfg->gateway.listen, "127.0.0.1:31145");
    assert_int_equal(cfg->gateway.auth, LM_AUTH_NONE);
    assert_int_equal(cfg->gateway.route, LM_ROUTE_PREFER_LOCAL);
    assert_int_equal(cfg->gateway.max_body_bytes, 8388608);
    assert_int_equal(cfg->gateway.request_timeout_s, 600);
    assert_int_equal(cfg->gateway.first_token_timeout_s, 120);
    assert_int_equal(cfg->gateway.n_keys, 0);
    assert_string_equal(cfg->admin.listen, "127.0.0.1:8145");
    assert_string_equal(cfg->admin.token_file, "");
    assert_string_equal(cfg->mesh.listen, "0.0.0.0:41145");
    assert_int_equal(cfg->mesh.advertise.n, 0);
    assert_int_equal(cfg->mesh.bootstrap.n, 0);
    assert_int_equal(cfg->mesh.trust, LM_TRUST_PRIVATE);
    assert_int_equal(cfg->mesh.trusted_peers.n, 0);
    assert_int_equal(cfg->mesh.denied_peers.n, 0);
    assert_int_equal(cfg->mesh.max_peers, 64);
    assert_int_equal(cfg->mesh.gossip_interval_ms, 1000);
    assert_true(cfg->discovery.scan_local);
    assert_int_equal(cfg->n_endpoints, 0);
    assert_int_equal(cfg->n_feps, 0);
    assert_int_equal(cfg->n_payouts, 0);
    assert_int_equal(cfg->n_prices, 0);
    lm_config_free(cfg);

    /* Comments and blank lines only: still the defaults. */
    cfg = parse_ok("# nothing here\n\n");
    assert_int_equal(cfg->mesh.max_peers, 64);
    lm_config_free(cfg);

    cfg = lm_config_defaults();
    assert_string_equal(cfg->path, "");
    assert_int_equal(cfg->gateway.max_body_bytes, 8388608);
    lm_config_free(cfg);
    lm_config_free(NULL);
}

static const char full_toml[] =
    "[node]\n"
    "name = \"lab-1\"\n"
    "data_dir = \"/tmp/lab\"\n"
    "roles = [\"relay\", \"gateway\"]\n"
    "log_level = \"debug\"\n"
    "log_format = \"json\"\n"
    "\n"
    "[gateway]\n"
    "listen = \"[::1]:9000\"\n"
    "auth = \"keys\"\n"
    "route = \"balance\"\n"
    "max_body_bytes = 1024\n"
    "request_timeout_s = 30\n"
    "first_token_timeout_s = 30\n"
    "\n"
    "[[gateway.keys]]\n"
    "name = \"alice\"\n"
    "key_sha256 = \"" H64K1 "\"\n"
    "models = [\"llama3*\", \"qwen[0-9]*\"]\n"
    "rpm = 60\n"
    "tpm = 100000\n"
    "max_concurrent = 4\n"
    "\n"
    "[[gateway.keys]]\n"
    "name = \"bob\"\n"
    "key_sha256 = \"" H64K2 "\"\n"
    "\n"
    "[admin]\n"
    "listen = \"127.0.0.1:9001\"\n"
    "token_file = \"/etc/labman/token\"\n"
    "\n"
    "[mesh]\n"
    "listen = \"0.0.0.0:9002\"\n"
    "advertise = [\"lab.example:9002\", \"[2001:db8::1]:9002\"]\n"
    "bootstrap = [\"" H64B "@peer.example:41145\"]\n"
    "trust = \"friends\"\n"
    "trusted_peers = [\"" H64B "\"]\n"
    "denied_peers = [\"" H64A "\"]\n"
    "max_peers = 4096\n"
    "gossip_interval_ms = 50\n"
    "\n"
    "[discovery]\n"
    "scan_local = false\n"
    "\n"
    "[[endpoints]]\n"
    "name = \"ollama\"\n"
    "url = \"http://127.0.0.1:11434\"\n"
    "\n"
    "[[endpoints]]\n"
    "name = \"big.box_2\"\n"
    "url = \"https://gpu.lan/v1\"\n"
    "kind = \"vllm\"\n"
    "max_concurrent = 1024\n"
    "models_include = [\"llama*\"]\n"
    "models_exclude = [\"*-base\"]\n"
    "api_key_env = \"VLLM_KEY\"\n"
    "share = false\n"
    "\n"
    "[[feps]]\n"
    "id = \"fep-test\"\n"
    "url = \"http://127.0.0.1:9300\"\n"
    "public_key = \"" H64B "\"\n"
    "max_unpaid = \"12.5\"\n"
    "\n"
    "[[feps]]\n"
    "id = \"fep-2\"\n"
    "url = \"http://[::1]:9301/\"\n"
    "public_key = \"" H64A "\"\n"
    "\n"
    "[[payouts]]\n"
    "currency = \"TEST\"\n"
    "address = \"test:provider-1\"\n"
    "min_payout = \"5.00\"\n"
    "\n"
    "[[prices]]\n"
    "model = \"*\"\n"
    "per_1k_in = \"0.0002\"\n"
    "per_1k_out = \"0.0006\"\n";

static void
test_every_section(void **state)
{
    (void)state;
    struct lm_config *cfg = parse_ok(full_toml);
    assert_string_equal(cfg->node.name, "lab-1");
    assert_string_equal(cfg->node.data_dir, "/tmp/lab");
    assert_int_equal(cfg->node.roles, LM_ROLE_RELAY | LM_ROLE_GATEWAY);
    assert_int_equal(cfg->node.log_level, LM_LOG_DEBUG);
    assert_int_equal(cfg->node.log_format, LM_LOG_JSON);

    assert_string_equal(cfg->gateway.listen, "[::1]:9000");
    assert_int_equal(cfg->gateway.auth, LM_AUTH_KEYS);
    assert_int_equal(cfg->gateway.route, LM_ROUTE_BALANCE);
    assert_int_equal(cfg->gateway.max_body_bytes, 1024);
    assert_int_equal(cfg->gateway.request_timeout_s, 30);
    assert_int_equal(cfg->gateway.first_token_timeout_s, 30);
    assert_int_equal(cfg->gateway.n_keys, 2);
    const struct lm_cfg_key *k = &cfg->gateway.keys[0];
    assert_string_equal(k->name, "alice");
    assert_string_equal(k->key_sha256, H64K1);
    assert_int_equal(k->models.n, 2);
    assert_string_equal(k->models.v[1], "qwen[0-9]*");
    assert_int_equal(k->rpm, 60);
    assert_int_equal(k->tpm, 100000);
    assert_int_equal(k->max_concurrent, 4);
    k = &cfg->gateway.keys[1];
    assert_string_equal(k->name, "bob");
    assert_int_equal(k->models.n, 0);
    assert_int_equal(k->rpm, 0);
    assert_int_equal(k->max_concurrent, 0);

    assert_string_equal(cfg->admin.listen, "127.0.0.1:9001");
    assert_string_equal(cfg->admin.token_file, "/etc/labman/token");

    assert_string_equal(cfg->mesh.listen, "0.0.0.0:9002");
    assert_int_equal(cfg->mesh.advertise.n, 2);
    assert_string_equal(cfg->mesh.advertise.v[1], "[2001:db8::1]:9002");
    assert_int_equal(cfg->mesh.bootstrap.n, 1);
    assert_string_equal(cfg->mesh.bootstrap.v[0], H64B_LOWER "@peer.example:41145");
    assert_int_equal(cfg->mesh.trust, LM_TRUST_FRIENDS);
    assert_string_equal(cfg->mesh.trusted_peers.v[0], H64B_LOWER);
    assert_string_equal(cfg->mesh.denied_peers.v[0], H64A);
    assert_int_equal(cfg->mesh.max_peers, 4096);
    assert_int_equal(cfg->mesh.gossip_interval_ms, 50);
    assert_false(cfg->discovery.scan_local);

    assert_int_equal(cfg->n_endpoints, 2);
    const struct lm_cfg_endpoint *ep = &cfg->endpoints[0];
    assert_string_equal(ep->name, "ollama");
    assert_string_equal(ep->url, "http://127.0.0.1:11434");
    assert_int_equal(ep->kind, LM_KIND_AUTO);
    assert_int_equal(ep->max_concurrent, 4);
    assert_int_equal(ep->models_include.n, 1);
    assert_string_equal(ep->models_include.v[0], "*");
    assert_int_equal(ep->models_exclude.n, 0);
    assert_string_equal(ep->api_key_env, "");
    assert_true(ep->share);
    ep = &cfg->endpoints[1];
    assert_string_equal(ep->name, "big.box_2");
    assert_string_equal(ep->url, "https://gpu.lan/v1");
    assert_int_equal(ep->kind, LM_KIND_VLLM);
    assert_int_equal(ep->max_concurrent, 1024);
    assert_string_equal(ep->models_include.v[0], "llama*");
    assert_string_equal(ep->models_exclude.v[0], "*-base");
    assert_string_equal(ep->api_key_env, "VLLM_KEY");
    assert_false(ep->share);

    assert_int_equal(cfg->n_feps, 2);
    assert_string_equal(cfg->feps[0].id, "fep-test");
    assert_string_equal(cfg->feps[0].url, "http://127.0.0.1:9300");
    assert_string_equal(cfg->feps[0].public_key, H64B_LOWER);
    assert_int_equal(cfg->feps[0].max_unpaid, 12500000);
    assert_int_equal(cfg->feps[1].max_unpaid, 50000000); /* default */

    assert_int_equal(cfg->n_payouts, 1);
    assert_string_equal(cfg->payouts[0].currency, "TEST");
    assert_string_equal(cfg->payouts[0].address, "test:provider-1");
    assert_int_equal(cfg->payouts[0].min_payout, 5000000);

    assert_int_equal(cfg->n_prices, 1);
    assert_string_equal(cfg->prices[0].model, "*");
    assert_int_equal(cfg->prices[0].per_1k_in, 200);
    assert_int_equal(cfg->prices[0].per_1k_out, 600);
    lm_config_free(cfg);
}

static void
test_types(void **state)
{
    (void)state;
    check1("[gateway]\nmax_body_bytes = \"80\"\n", 2, 18,
           "expected an integer for gateway.max_body_bytes, got a string");
    check1("[node]\nroles = \"gateway\"\n", 2, 9, "expected an array for node.roles, got a string");
    check1("[node]\nroles = [\"gateway\", 1]\n", 2, 21,
           "expected a string for node.roles[1], got an integer");
    check1("[discovery]\nscan_local = \"yes\"\n", 2, 14,
           "expected a boolean for discovery.scan_local, got a string");
    check1("[mesh]\nmax_peers = 1.5\n", 2, 13,
           "expected an integer for mesh.max_peers, got a float");
    check1("node = 1\n", 1, 8, "expected a table for node (write [node]), got an integer");
    check1("[endpoints]\nname = \"x\"\n", 1, 1,
           "expected an array of tables for endpoints (write [[endpoints]]), got a table");
    check1("endpoints = [1]\n", 1, 14, "expected a table for endpoints[0], got an integer");
    check1("[[prices]]\nmodel = \"*\"\nper_1k_in = 0.5\n", 3, 13,
           "expected a decimal string like \"50.00\" for prices[0].per_1k_in, got a float");
    check1("[node]\nname = \"a\\u0000b\"\n", 2, 8, "node.name must not contain a NUL character");
}

static void
test_unknown_keys(void **state)
{
    (void)state;
    check1("[gateway]\nlistn = \"127.0.0.1:1\"\n", 2, 1,
           "unknown key \"listn\" in [gateway]; did you mean \"listen\"?");
    check1("[gateway]\nzzzzzz = 1\n", 2, 1, "unknown key \"zzzzzz\" in [gateway]");
    check1("[gatway]\n", 1, 2, "unknown section [gatway]; did you mean [gateway]?");
    check1("[[endpoint]]\nname = \"x\"\n", 1, 3,
           "unknown section [endpoint]; did you mean [endpoints]?");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\nshared = true\n", 4, 1,
           "unknown key \"shared\" in [[endpoints]]; did you mean \"share\"?");
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64A "\"\nrpn = 1\n", 4, 1,
           "unknown key \"rpn\" in [[gateway.keys]]; did you mean \"rpm\"?");
    check1("name = \"x\"\n", 1, 1,
           "unknown key \"name\" at top level; keys belong in a section such as [node]");
    check1("[node.extra]\n", 1, 7, "unknown key \"extra\" in [node]");
    check1("[gateway]\nauth = \"key\"\n", 2, 8,
           "invalid value \"key\" for gateway.auth; expected one of none, keys, fep; "
           "did you mean \"keys\"?");
    check1("[mesh]\ntrust = \"everyone\"\n", 2, 9,
           "invalid value \"everyone\" for mesh.trust; expected one of private, friends, public");
    check1("[node]\nroles = [\"gatway\"]\n", 2, 10,
           "invalid role \"gatway\" in node.roles; expected any of gateway, provider, relay; "
           "did you mean \"gateway\"?");
}

static void
test_node_rules(void **state)
{
    (void)state;
    check1("[node]\nroles = []\n", 2, 9,
           "node.roles must not be empty; use any of gateway, provider, relay");
    check1("[node]\nroles = [\"relay\", \"relay\"]\n", 2, 19,
           "role \"relay\" is listed twice in node.roles");
    check1("[node]\nname = \"\"\n", 2, 8, "node.name must not be empty");
    check1("[node]\nname = \"a\\nb\"\n", 2, 8, "node.name must not contain control characters");
    check1("[node]\ndata_dir = \"\"\n", 2, 12, "node.data_dir must not be empty");
    check1("[node]\nlog_level = \"verbose\"\n", 2, 13,
           "invalid value \"verbose\" for node.log_level; expected one of error, warn, info, "
           "debug");
    check1("[node]\nlog_format = \"xml\"\n", 2, 14,
           "invalid value \"xml\" for node.log_format; expected one of text, json");
}

static void
test_gateway_rules(void **state)
{
    (void)state;
    check1("[gateway]\nlisten = \"127.0.0.1:0\"\n", 2, 10,
           "invalid address \"127.0.0.1:0\" for gateway.listen; expected host:port or "
           "[v6]:port with port 1..65535");
    check1("[gateway]\nlisten = \"localhost\"\n", 2, 10,
           "invalid address \"localhost\" for gateway.listen; expected host:port or "
           "[v6]:port with port 1..65535");
    check1("[gateway]\nmax_body_bytes = 1023\n", 2, 18,
           "gateway.max_body_bytes must be between 1024 and 1073741824, got 1023");
    check1("[gateway]\nmax_body_bytes = 1073741825\n", 2, 18,
           "gateway.max_body_bytes must be between 1024 and 1073741824, got 1073741825");
    check1("[gateway]\nrequest_timeout_s = 0\n", 2, 21,
           "gateway.request_timeout_s must be between 1 and 86400, got 0");
    check1("[gateway]\nrequest_timeout_s = 60\nfirst_token_timeout_s = 61\n", 3, 25,
           "gateway.first_token_timeout_s (61) must not exceed gateway.request_timeout_s (60)");
    check1("[gateway]\nfirst_token_timeout_s = 601\n", 2, 25,
           "gateway.first_token_timeout_s (601) must not exceed gateway.request_timeout_s "
           "(600)");
    check1("[gateway]\nauth = \"keys\"\n", 2, 8,
           "gateway.auth = \"keys\" needs at least one [[gateway.keys]]");
    check1("[gateway]\nauth = \"fep\"\n", 2, 8,
           "gateway.auth = \"fep\" needs at least one [[feps]]");
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"abc\"\n", 3, 14,
           "gateway.keys[0].key_sha256 must be 64 hex digits");
    check1("[[gateway.keys]]\nname = \"a\"\n", 1, 1,
           "gateway.keys[0] is missing the required key \"key_sha256\"");
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64A "\"\nrpm = -1\n", 4, 7,
           "gateway.keys[0].rpm must be at least 0, got -1");
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64A "\"\nmodels = [\"ab[c\"]\n",
           4, 11, "pattern \"ab[c\" for gateway.keys[0].models[0] has an unbalanced '['");
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64A "\"\n"
           "[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64B "\"\n",
           5, 8, "duplicate key name \"a\" (first defined at line 2)");
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64B "\"\n"
           "[[gateway.keys]]\nname = \"b\"\nkey_sha256 = \"" H64B_LOWER "\"\n",
           6, 14, "duplicate key_sha256 (same as at line 3)");

    /* Unset, the first-token timeout follows a shorter request timeout. */
    struct lm_config *cfg = parse_ok("[gateway]\nrequest_timeout_s = 60\n");
    assert_int_equal(cfg->gateway.first_token_timeout_s, 60);
    lm_config_free(cfg);
    /* Glob corner cases fnmatch accepts. */
    cfg = parse_ok("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64A "\"\n"
                   "models = [\"[]]x\", \"[!]]*\", \"a\\\\[\"]\n");
    assert_int_equal(cfg->gateway.keys[0].models.n, 3);
    lm_config_free(cfg);
    check1("[[gateway.keys]]\nname = \"a\"\nkey_sha256 = \"" H64A "\"\nmodels = [\"a\\\\\"]\n",
           4, 11, "pattern \"a\\\\\" for gateway.keys[0].models[0] ends with a lone backslash");
}

static void
test_mesh_rules(void **state)
{
    (void)state;
    check1("[mesh]\nadvertise = [\"ok.host:1\", \"bad host:1\"]\n", 2, 27,
           "invalid address \"bad host:1\" for mesh.advertise[1]; expected host:port or "
           "[v6]:port with port 1..65535");
    check1("[mesh]\nbootstrap = [\"abc@h:1\"]\n", 2, 14,
           "invalid bootstrap peer \"abc@h:1\" for mesh.bootstrap[0]; expected "
           "\"<64-hex node id>@host:port\"");
    check1("[mesh]\nbootstrap = [\"" H64A "@h\"]\n", 2, 14,
           "invalid bootstrap peer \"" H64A "@h\" for mesh.bootstrap[0]; expected "
           "\"<64-hex node id>@host:port\"");
    check1("[mesh]\ntrusted_peers = [\"xyz\"]\n", 2, 18,
           "mesh.trusted_peers[0] must be 64 hex digits");
    check1("[mesh]\ntrusted_peers = [\"" H64B_LOWER "\"]\ndenied_peers = [\"" H64A "\", \"" H64B
           "\"]\n",
           3, 85, "peer abcdef0123456789... is in both mesh.trusted_peers and mesh.denied_peers");
    check1("[mesh]\nmax_peers = 0\n", 2, 13, "mesh.max_peers must be between 1 and 4096, got 0");
    check1("[mesh]\nmax_peers = 4097\n", 2, 13,
           "mesh.max_peers must be between 1 and 4096, got 4097");
    check1("[mesh]\ngossip_interval_ms = 49\n", 2, 22,
           "mesh.gossip_interval_ms must be between 50 and 60000, got 49");
    check1("[mesh]\ngossip_interval_ms = 60001\n", 2, 22,
           "mesh.gossip_interval_ms must be between 50 and 60000, got 60001");
    check1("[admin]\nlisten = \"0.0.0.0:8145\"\n", 2, 10,
           "admin.listen 0.0.0.0:8145 is not a loopback address: set admin.token_file, or "
           "listen on 127.0.0.1");
    lm_config_free(parse_ok("[admin]\nlisten = \"0.0.0.0:8145\"\n"
                            "token_file = \"/etc/labman/admin.token\"\n"));
    lm_config_free(parse_ok("[admin]\nlisten = \"[::1]:8145\"\n"));
    check1("[admin]\nlisten = \"[::1:8145\"\n", 2, 10,
           "invalid address \"[::1:8145\" for admin.listen; expected host:port or [v6]:port "
           "with port 1..65535");
}

static void
test_endpoint_rules(void **state)
{
    (void)state;
    check1("[[endpoints]]\nurl = \"http://h\"\n", 1, 1,
           "endpoints[0] is missing the required key \"name\"");
    check1("[[endpoints]]\nname = \"x\"\n", 1, 1,
           "endpoints[0] is missing the required key \"url\"");
    check1("[[endpoints]]\nname = \"a b\"\nurl = \"http://h\"\n", 2, 8,
           "invalid endpoints[0].name \"a b\"; use 1 to 64 of A-Z a-z 0-9 . _ -");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"ftp://h\"\n", 3, 7,
           "invalid URL \"ftp://h\" for endpoints[0].url: must start with http:// or https://");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://\"\n", 3, 7,
           "invalid URL \"http://\" for endpoints[0].url: has no host");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h:0/v1\"\n", 3, 7,
           "invalid URL \"http://h:0/v1\" for endpoints[0].url: has an invalid port");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h:99999\"\n", 3, 7,
           "invalid URL \"http://h:99999\" for endpoints[0].url: has an invalid port");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://u:p@h\"\n", 3, 7,
           "invalid URL \"http://u:p@h\" for endpoints[0].url: must not contain credentials "
           "(use api_key_env)");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h/a?b\"\n", 3, 7,
           "invalid URL \"http://h/a?b\" for endpoints[0].url: must not have a query or "
           "fragment");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\nkind = \"tgi\"\n", 4, 8,
           "invalid value \"tgi\" for endpoints[0].kind; expected one of auto, ollama, "
           "llamacpp, vllm, openai");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\nmax_concurrent = 0\n", 4, 18,
           "endpoints[0].max_concurrent must be between 1 and 1024, got 0");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\nmax_concurrent = 1025\n", 4, 18,
           "endpoints[0].max_concurrent must be between 1 and 1024, got 1025");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\napi_key_env = \"1KEY\"\n", 4, 15,
           "invalid environment variable name \"1KEY\" for endpoints[0].api_key_env");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\nmodels_exclude = [\"[\"]\n", 4, 19,
           "pattern \"[\" for endpoints[0].models_exclude[0] has an unbalanced '['");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\nmodels_include = [\"\"]\n", 4, 19,
           "endpoints[0].models_include[0] must be a pattern of 1 to 256 bytes");
    check1("[[endpoints]]\nname = \"x\"\nurl = \"http://a\"\n\n"
           "[[endpoints]]\nname = \"x\"\nurl = \"http://b\"\n",
           6, 8, "duplicate endpoint name \"x\" (first defined at line 2)");
}

static void
test_economics_rules(void **state)
{
    (void)state;
    check1("[[feps]]\nid = \"f\"\nurl = \"http://h\"\npublic_key = \"zz\"\n", 4, 14,
           "feps[0].public_key must be 64 hex digits");
    check1("[[feps]]\nid = \"f\"\nurl = \"http://h\"\n", 1, 1,
           "feps[0] is missing the required key \"public_key\"");
    check1("[[feps]]\nid = \"f\"\nurl = \"http://h\"\npublic_key = \"" H64A "\"\n"
           "max_unpaid = \"-1\"\n",
           5, 14, "amount \"-1\" for feps[0].max_unpaid must not be negative");
    check1("[[feps]]\nid = \"f\"\nurl = \"http://h\"\npublic_key = \"" H64A "\"\n"
           "[[feps]]\nid = \"f\"\nurl = \"http://h\"\npublic_key = \"" H64A "\"\n",
           6, 6, "duplicate fep id \"f\" (first defined at line 2)");
    check1("[[payouts]]\ncurrency = \"usd\"\naddress = \"a\"\n", 2, 12,
           "invalid currency \"usd\" for payouts[0].currency; use 2 to 12 of A-Z 0-9");
    check1("[[payouts]]\ncurrency = \"X\"\naddress = \"a\"\n", 2, 12,
           "invalid currency \"X\" for payouts[0].currency; use 2 to 12 of A-Z 0-9");
    check1("[[payouts]]\ncurrency = \"USD\"\naddress = \"\"\n", 3, 11,
           "payouts[0].address must not be empty");
    check1("[[payouts]]\ncurrency = \"USD\"\n", 1, 1,
           "payouts[0] is missing the required key \"address\"");
    check1("[[payouts]]\ncurrency = \"USD\"\naddress = \"a\"\n"
           "[[payouts]]\ncurrency = \"USD\"\naddress = \"b\"\n",
           5, 12, "duplicate payout currency \"USD\" (first defined at line 2)");
    check1("[[prices]]\nmodel = \"*\"\nper_1k_out = \"1.0000001\"\n", 3, 14,
           "amount \"1.0000001\" for prices[0].per_1k_out has more than 6 decimal places");
    check1("[[prices]]\nmodel = \"*\"\nper_1k_in = \"abc\"\n", 3, 13,
           "amount \"abc\" for prices[0].per_1k_in is not a decimal amount like \"50.00\"");
    check1("[[prices]]\nper_1k_in = \"1\"\n", 1, 1,
           "prices[0] is missing the required key \"model\"");
    check1("[[prices]]\nmodel = \"m\"\n[[prices]]\nmodel = \"m\"\n", 4, 9,
           "duplicate price for model \"m\" (first defined at line 2)");

    struct lm_config *cfg = parse_ok("[[prices]]\nmodel = \"a\"\nper_1k_in = 2\n");
    assert_int_equal(cfg->prices[0].per_1k_in, 2000000);
    assert_int_equal(cfg->prices[0].per_1k_out, 0);
    lm_config_free(cfg);
}

static void
test_money(void **state)
{
    (void)state;
    lm_micros m = -5;
    assert_int_equal(lm_config_micros_parse("0.0002", &m), 0);
    assert_int_equal(m, 200);
    assert_int_equal(lm_config_micros_parse("1", &m), 0);
    assert_int_equal(m, 1000000);
    assert_int_equal(lm_config_micros_parse("50.00", &m), 0);
    assert_int_equal(m, 50000000);
    assert_int_equal(lm_config_micros_parse("0.000001", &m), 0);
    assert_int_equal(m, 1);
    assert_int_equal(lm_config_micros_parse("0", &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(lm_config_micros_parse("9000000000000.999999", &m), 0);
    assert_int_equal(m, 9000000000000999999LL);
    m = 7;
    static const char *const bad[] = {"1.0000001", "-1", "abc", "", "1.", ".5", "1e3",
                                      "+1", " 1", "1 ", "1,5", "0x10", "9000000000001",
                                      "99999999999999999999999"};
    for (size_t i = 0; i < LM_ARRAY_LEN(bad); i++) {
        if (lm_config_micros_parse(bad[i], &m) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(m, 7);
    }

    char s[32];
    lm_config_micros_format(200, s, sizeof(s));
    assert_string_equal(s, "0.0002");
    lm_config_micros_format(50000000, s, sizeof(s));
    assert_string_equal(s, "50.00");
    lm_config_micros_format(1, s, sizeof(s));
    assert_string_equal(s, "0.000001");
    lm_config_micros_format(0, s, sizeof(s));
    assert_string_equal(s, "0.00");
    lm_config_micros_format(12500000, s, sizeof(s));
    assert_string_equal(s, "12.50");
    lm_config_micros_format(-1500000, s, sizeof(s));
    assert_string_equal(s, "-1.50");
    lm_config_micros_format(INT64_MIN, s, sizeof(s));
    assert_string_equal(s, "-9223372036854.775808");
}

static void
test_many_errors(void **state)
{
    (void)state;
    static const char toml[] =
        "[[endpoints]]\n"                    /* 1 */
        "name = \"a\"\n"                     /* 2 */
        "url = \"http://h\"\n"               /* 3 */
        "[gateway]\n"                        /* 4 */
        "listn = \"x\"\n"                    /* 5 */
        "max_body_bytes = \"80\"\n"          /* 6 */
        "auth = \"keys\"\n"                  /* 7 */
        "[node]\n"                           /* 8 */
        "roles = [\"gateway\", \"boss\"]\n"  /* 9 */
        "[[endpoints]]\n"                    /* 10 */
        "name = \"a\"\n"                     /* 11 */
        "url = \"gopher://h\"\n"             /* 12 */
        "[mesh]\n"                           /* 13 */
        "max_peers = 0\n";                   /* 14 */
    struct lm_diags d = {0};
    struct lm_config *cfg = NULL;
    assert_int_equal(lm_config_parse(toml, strlen(toml), "m.toml", &cfg, &d), -EINVAL);
    assert_null(cfg);
    static const struct {
        int line, col;
        const char *prefix;
    } want[] = {
        {5, 1, "unknown key \"listn\" in [gateway]; did you mean \"listen\"?"},
        {6, 18, "expected an integer for gateway.max_body_bytes"},
        {7, 8, "gateway.auth = \"keys\" needs"},
        {9, 21, "invalid role \"boss\""},
        {11, 8, "duplicate endpoint name \"a\" (first defined at line 2)"},
        {12, 7, "invalid URL \"gopher://h\""},
        {14, 13, "mesh.max_peers must be between 1 and 4096"},
    };
    if (d.n != LM_ARRAY_LEN(want))
        lm_diags_print(&d, "m.toml", stderr);
    assert_int_equal(d.n, LM_ARRAY_LEN(want));
    for (size_t i = 0; i < d.n; i++) {
        assert_int_equal(d.v[i].line, want[i].line);
        assert_int_equal(d.v[i].col, want[i].col);
        assert_memory_equal(d.v[i].msg, want[i].prefix, strlen(want[i].prefix));
    }
    lm_diags_clear(&d);

    /* A caller's earlier diagnostics stay first and untouched. */
    lm_diags_add(&d, 99, 1, "earlier");
    assert_int_equal(lm_config_parse("[mesh]\nmax_peers = 0\n", 21, "x", &cfg, &d), -EINVAL);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.v[0].msg, "earlier");
    assert_int_equal(d.v[1].line, 2);
    lm_diags_clear(&d);
}

static void
test_syntax_and_garbage(void **state)
{
    (void)state;
    struct lm_diags d = {0};
    struct lm_config *cfg = NULL;
    static const char bad[] = "[node]\nname = \"unterminated\n";
    assert_int_equal(lm_config_parse(bad, strlen(bad), "s.toml", &cfg, &d), -EINVAL);
    assert_null(cfg);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.v[0].line, 2);
    assert_true(d.v[0].col >= 1);
    lm_diags_clear(&d);

    /* Deterministic pseudo-random bytes, and a few that are nearly TOML:
     * nothing may crash, and every failure says something. */
    char buf[512];
    uint32_t x = 12345;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(round * 7 % (int)sizeof(buf));
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            static const char alpha[] = "[]=\"'.,{}\n #abcnode gateway 0123456789\x01\xff";
            buf[i] = (round & 1) ? (char)(x >> 16) : alpha[(x >> 16) % (sizeof(alpha) - 1)];
        }
        int rc = lm_config_parse(buf, n, "g", &cfg, &d);
        if (rc == 0) {
            assert_non_null(cfg);
            lm_config_free(cfg);
        } else {
            assert_null(cfg);
            assert_true(d.n >= 1);
        }
        lm_diags_clear(&d);
    }

    /* NULL diags is allowed: the caller only wants yes or no. */
    assert_int_equal(lm_config_parse("x = 1", 5, "n", &cfg, NULL), -EINVAL);
    assert_null(cfg);
}

static void
test_load(void **state)
{
    (void)state;
    struct lm_diags d = {0};
    struct lm_config *cfg = NULL;
    assert_int_equal(lm_config_load("/nonexistent/labman.toml", &cfg, &d), -EINVAL);
    assert_null(cfg);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.v[0].line, 0);
    assert_string_equal(d.v[0].msg, "cannot read: No such file or directory");
    lm_diags_clear(&d);

    char path[] = "/tmp/config_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("[mesh]\nmax_peers = 7\n", f);
    fclose(f);
    assert_int_equal(lm_config_load(path, &cfg, &d), 0);
    assert_string_equal(cfg->path, path);
    assert_int_equal(cfg->mesh.max_peers, 7);
    lm_config_free(cfg);

    /* Larger than the cap: refused without parsing. */
    f = fopen(path, "w");
    fputc('#', f);
    for (unsigned i = 0; i < LM_CONFIG_MAX_BYTES; i++)
        fputc('x', f);
    fclose(f);
    assert_int_equal(lm_config_load(path, &cfg, &d), -EINVAL);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.v[0].msg, "cannot read: file is larger than 1048576 bytes");
    lm_diags_clear(&d);

    assert_int_equal(lm_config_load("/tmp", &cfg, &d), -EINVAL);
    assert_int_equal(d.n, 1);
    assert_string_equal(d.v[0].msg, "cannot read: Is a directory");
    lm_diags_clear(&d);
    unlink(path);
}

static void
test_round_trip(void **state)
{
    (void)state;
    static const char *const inputs[] = {"", full_toml};
    for (size_t i = 0; i < LM_ARRAY_LEN(inputs); i++) {
        struct lm_config *a = parse_ok(inputs[i]);
        struct lm_buf b1, b2;
        lm_buf_init(&b1, 0);
        lm_buf_init(&b2, 0);
        assert_int_equal(lm_config_to_toml(a, false, &b1), 0);
        struct lm_config *b = parse_ok(b1.data);
        assert_int_equal(lm_config_to_toml(b, false, &b2), 0);
        assert_string_equal(b1.data, b2.data);
        lm_config_free(b);
        lm_buf_reset(&b1);

        /* Masked: no hash in the text, and still valid TOML. */
        assert_int_equal(lm_config_to_toml(a, true, &b1), 0);
        for (size_t k = 0; k < a->gateway.n_keys; k++)
            assert_null(strstr(b1.data, a->gateway.keys[k].key_sha256));
        struct lm_toml_value *root = NULL;
        int line, col;
        char msg[128];
        assert_int_equal(lm_toml_parse(b1.data, b1.len, &root, &line, &col, msg, sizeof(msg)),
                         0);
        lm_toml_free(root);
        lm_buf_release(&b1);
        lm_buf_release(&b2);
        lm_config_free(a);
    }

    struct lm_config *a = parse_ok(full_toml);
    struct lm_buf b;
    lm_buf_init(&b, 0);
    lm_config_to_toml(a, true, &b);
    assert_non_null(strstr(b.data, "token_file = \"/etc/labman/token\""));
    assert_non_null(strstr(b.data, "per_1k_in = \"0.0002\""));
    assert_non_null(strstr(b.data, "roles = [\"gateway\", \"relay\"]"));
    lm_buf_release(&b);

    /* A capped buffer fails cleanly instead of writing half a config. */
    lm_buf_init(&b, 64);
    assert_int_equal(lm_config_to_toml(a, false, &b), -E2BIG);
    lm_buf_release(&b);
    lm_config_free(a);

    /* Strings that need escaping survive the trip. */
    a = parse_ok("[node]\nname = \"say \\\"hi\\\" \\\\ \\u00e9\"\n");
    lm_buf_init(&b, 0);
    assert_int_equal(lm_config_to_toml(a, false, &b), 0);
    struct lm_config *c = parse_ok(b.data);
    assert_string_equal(c->node.name, a->node.name);
    lm_config_free(c);
    lm_config_free(a);
    lm_buf_release(&b);
}

static void
test_restart_needed(void **state)
{
    (void)state;
    struct lm_config *a = parse_ok("");
    struct lm_config *b = parse_ok("[node]\nlog_level = \"debug\"\n[mesh]\nmax_peers = 3\n"
                                   "[[endpoints]]\nname = \"x\"\nurl = \"http://h\"\n");
    struct lm_buf out;
    lm_buf_init(&out, 0);
    assert_int_equal(lm_config_restart_needed(a, b, &out), 0);
    assert_int_equal(out.len, 0);
    lm_config_free(b);

    b = parse_ok("[node]\ndata_dir = \"/x\"\n[gateway]\nlisten = \"127.0.0.1:1\"\n"
                 "[admin]\nlisten = \"127.0.0.1:2\"\n[mesh]\nlisten = \"127.0.0.1:3\"\n");
    assert_int_equal(lm_config_restart_needed(a, b, &out), 4);
    assert_string_equal(out.data, "node.data_dir, gateway.listen, admin.listen, mesh.listen");
    lm_buf_reset(&out);
    lm_config_free(b);

    b = parse_ok("[admin]\nlisten = \"127.0.0.1:2\"\n");
    assert_int_equal(lm_config_restart_needed(a, b, &out), 1);
    assert_string_equal(out.data, "admin.listen");
    lm_buf_release(&out);
    lm_config_free(b);
    lm_config_free(a);
}

static void
test_names(void **state)
{
    (void)state;
    assert_string_equal(lm_config_role_name(LM_ROLE_RELAY), "relay");
    assert_string_equal(lm_config_auth_name(LM_AUTH_FEP), "fep");
    assert_string_equal(lm_config_route_name(LM_ROUTE_LOCAL_ONLY), "local_only");
    assert_string_equal(lm_config_trust_name(LM_TRUST_PUBLIC), "public");
    assert_string_equal(lm_config_kind_name(LM_KIND_LLAMACPP), "llamacpp");
    assert_string_equal(lm_config_kind_name((enum lm_endpoint_kind)99), "?");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),        cmocka_unit_test(test_every_section),
        cmocka_unit_test(test_types),           cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_node_rules),      cmocka_unit_test(test_gateway_rules),
        cmocka_unit_test(test_mesh_rules),      cmocka_unit_test(test_endpoint_rules),
        cmocka_unit_test(test_economics_rules), cmocka_unit_test(test_money),
        cmocka_unit_test(test_many_errors),     cmocka_unit_test(test_syntax_and_garbage),
        cmocka_unit_test(test_load),            cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_restart_needed),  cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
