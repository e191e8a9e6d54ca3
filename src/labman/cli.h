/* labman CLI internals: what the command files share. Owns: finding labmand's
 * admin address and token (-c, --admin, --token-file), one admin API call
 * over libcurl, and the one-line errors when labmand is down or says no. */
#ifndef LM_LABMAN_CLI_H
#define LM_LABMAN_CLI_H

#include <stdbool.h>

#include <jansson.h>

struct target {
    const char *config;     /* -c */
    const char *admin;      /* --admin */
    const char *token_file; /* --token-file */
    bool json;
};

struct conn {
    char addr[300];
    char *token; /* NULL = none */
};

struct lm_config;
/* The config named by -c (given), else the default file when it exists,
 * else the built-in defaults. Prints problems and returns NULL when invalid. */
struct lm_config *cli_load_config(const char *given);

/* Options shared by the commands that talk to labmand; prints usage and
 * returns -EINVAL on bad ones. */
int cli_parse_target(int argc, char **argv, struct target *t, bool allow_json, const char *usage);
bool cli_wants_help(int argc, char **argv);
/* The admin address and token for t; prints why not and returns < 0. */
int cli_resolve(const struct target *t, struct conn *c);
void cli_conn_release(struct conn *c);
/* Calls the admin API. Returns the HTTP status and the parsed JSON body (or
 * NULL), or -1 after printing why labmand could not be reached. */
long cli_call(const struct conn *c, const char *method, const char *path, json_t **out);
/* Prints an error answer as one line; returns the exit code. */
int cli_api_error(const struct conn *c, long status, json_t *body);
/* GET path for a listing command: parses the target options, calls, and
 * checks for a JSON object. Returns 0 with *out, or the exit code after
 * printing why not; not_found (or NULL) replaces the message for a 404. */
int cli_get(int argc, char **argv, const char *usage, const char *path, const char *not_found,
            struct target *t, json_t **out);
/* --json output: indented, keys sorted. */
void cli_print_json(json_t *j);

/* cmd_endpoints.c */
int cli_cmd_endpoints(int argc, char **argv);
int cli_cmd_models(int argc, char **argv);

/* cmd_key.c */
int cli_cmd_key(int argc, char **argv);

/* cmd_peers.c */
int cli_cmd_peers(int argc, char **argv);

/* cmd_requests.c */
int cli_cmd_requests(int argc, char **argv);

/* cmd_mesh.c */
int cli_cmd_invite(int argc, char **argv);
int cli_cmd_join(int argc, char **argv);

#endif
