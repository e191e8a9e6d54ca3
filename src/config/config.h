/* config: the labman TOML configuration, typed, defaulted and validated.
 * Owns: every section and key of SPEC §3, their defaults and ranges, the
 * error list (FILE:LINE:COL: message, all of them), and `config show`. */
#ifndef LM_CONFIG_H
#define LM_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "log/log.h"
#include "util/util.h"

#define LM_CONFIG_DEFAULT_PATH "/etc/labman/labman.toml"
#define LM_CONFIG_MAX_BYTES (1u << 20)

/* Money is held as integer micro-units ("0.0002" = 200); at most six
 * decimal places are accepted so that nothing is rounded silently. */
typedef int64_t lm_micros;

struct lm_strv {
    char **v;
    size_t n;
};

enum lm_role { LM_ROLE_GATEWAY = 1, LM_ROLE_PROVIDER = 2, LM_ROLE_RELAY = 4 };
enum lm_auth_mode { LM_AUTH_NONE, LM_AUTH_KEYS, LM_AUTH_FEP };
enum lm_route { LM_ROUTE_LOCAL_ONLY, LM_ROUTE_PREFER_LOCAL, LM_ROUTE_BALANCE };
enum lm_trust { LM_TRUST_PRIVATE, LM_TRUST_FRIENDS, LM_TRUST_PUBLIC };
enum lm_endpoint_kind {
    LM_KIND_AUTO,
    LM_KIND_OLLAMA,
    LM_KIND_LLAMACPP,
    LM_KIND_VLLM,
    LM_KIND_OPENAI,
};

struct lm_cfg_key {
    char *name;
    char key_sha256[65]; /* lowercase hex */
    struct lm_strv models; /* globs; empty = all */
    int64_t rpm, tpm, max_concurrent; /* 0 = unlimited */
};

struct lm_cfg_endpoint {
    char *name;
    char *url; /* http:// or https:// */
    enum lm_endpoint_kind kind;
    int max_concurrent;
    struct lm_strv models_include; /* default ["*"] */
    struct lm_strv models_exclude;
    char *api_key_env; /* "" = none */
    bool share;
};

struct lm_cfg_fep {
    char *id;
    char *url;
    char public_key[65]; /* hex Ed25519 */
    lm_micros max_unpaid;
};

struct lm_cfg_payout {
    char *currency;
    char *address;
    lm_micros min_payout;
};

struct lm_cfg_price {
    char *model; /* glob */
    lm_micros per_1k_in, per_1k_out;
};

struct lm_config {
    char *path; /* the file it came from; "" for built-in defaults */

    struct {
        char *name; /* default: hostname */
        char *data_dir;
        unsigned roles; /* enum lm_role bits; default gateway|provider */
        enum lm_log_level log_level;
        enum lm_log_format log_format;
    } node;

    struct {
        char *listen;
        enum lm_auth_mode auth;
        enum lm_route route;
        int64_t max_body_bytes;
        int request_timeout_s;
        int first_token_timeout_s;
        struct lm_cfg_key *keys;
        size_t n_keys;
    } gateway;

    struct {
        char *listen;
        char *token_file;
    } admin;

    /* Named so that modules deciding on peers (trust) take only this part. */
    struct lm_cfg_mesh {
        char *listen;
        struct lm_strv advertise;
        struct lm_strv bootstrap; /* "<node_id>@host:port" */
        enum lm_trust trust;
        struct lm_strv trusted_peers;
        struct lm_strv denied_peers;
        int max_peers;
        int gossip_interval_ms;
    } mesh;

    struct {
        bool scan_local;
    } discovery;

    struct lm_cfg_endpoint *endpoints;
    size_t n_endpoints;
    struct lm_cfg_fep *feps;
    size_t n_feps;
    struct lm_cfg_payout *payouts;
    size_t n_payouts;
    struct lm_cfg_price *prices;
    size_t n_prices;
};

/* The built-in defaults (what an empty file gives). */
struct lm_config *lm_config_defaults(void);

/* Parses and validates TOML text. On success returns 0 and *out. On failure
 * returns -EINVAL and every problem is in diags (positions in buf); *out is
 * NULL. name is stored as cfg->path. */
int lm_config_parse(const char *buf, size_t len, const char *name, struct lm_config **out,
                    struct lm_diags *diags);

/* Reads path (bounded by LM_CONFIG_MAX_BYTES) and parses it. An unreadable
 * file is one diagnostic without position. */
int lm_config_load(const char *path, struct lm_config **out, struct lm_diags *diags);

void lm_config_free(struct lm_config *cfg);

/* The effective config as TOML, defaults included; secrets masked when
 * mask is true (there are no secrets in the file itself by design, but
 * key hashes are shown as "********"; token_file is a path and is kept).
 * Returns 0, or -E2BIG when out's limit is reached. */
int lm_config_to_toml(const struct lm_config *cfg, bool mask, struct lm_buf *out);

/* Names of settings that differ between old and new and cannot be applied
 * without a restart (listen addresses, data_dir), comma-separated into out;
 * returns how many. */
int lm_config_restart_needed(const struct lm_config *old, const struct lm_config *new_cfg,
                             struct lm_buf *out);

/* Money as written in the file: "50", "50.00", "0.0002" (at most six
 * decimals, no sign, no exponent) into micro-units. Returns 0 or -EINVAL. */
int lm_config_micros_parse(const char *s, lm_micros *out);
/* The inverse: at least two decimals, trailing zeros trimmed ("50.00",
 * "0.0002"). out must hold 32 bytes. */
void lm_config_micros_format(lm_micros m, char *out, size_t cap);

const char *lm_config_role_name(enum lm_role r);
const char *lm_config_auth_name(enum lm_auth_mode a);
const char *lm_config_route_name(enum lm_route r);
const char *lm_config_trust_name(enum lm_trust t);
const char *lm_config_kind_name(enum lm_endpoint_kind k);

#endif
