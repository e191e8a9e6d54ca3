/* labmand wiring: the one event loop and what hangs off it.
 * Owns: startup order, signals (drain on TERM/INT, reload on HUP), config
 * reloads, sd_notify, and the daemon's own status fields and metrics. */
#ifndef LM_LABMAND_DAEMON_H
#define LM_LABMAND_DAEMON_H

#include <stdbool.h>

#include <event2/event.h>
#include <jansson.h>

#include "admin/admin.h"
#include "config/config.h"
#include "endpoints/endpoints.h"
#include "gateway/gateway.h"
#include "identity/identity.h"
#include "mesh/mesh.h"
#include "upstream/upstream.h"

#define LM_DAEMON_GRACE_S 10

struct lm_daemon {
    struct event_base *base;
    char *config_path;  /* the file read (or that would be read) */
    bool config_given;  /* -c: a missing file is an error, not "use defaults" */
    struct lm_config *cfg;      /* in effect */
    struct lm_config *boot_cfg; /* as started; listeners follow it until restart */
    struct lm_identity id;
    struct lm_admin *admin;
    struct lm_upstream *upstream;   /* one libcurl multi for probes and requests */
    struct lm_endpoints *endpoints; /* the local runtimes */
    struct lm_gateway *gateway;     /* the OpenAI API; NULL without the gateway role */
    struct lm_mesh *mesh;           /* labnet; NULL while lm_mesh_enabled is false */

    struct event *sig_term, *sig_int, *sig_hup, *drain_timer;
    int grace_s;
    bool draining;
    uint64_t drain_deadline_ms;
    int exit_code;

    unsigned long reloads_ok, reloads_error;
    json_t *last_reload; /* {"result":"none|ok|error", ...} */
};

/* Loads the config at startup: the file, or the built-in defaults when the
 * default path does not exist. Prints problems to stderr. */
int lm_daemon_load_config(const char *path, bool given, struct lm_config **out);

/* Everything from the loaded config to "listening"; errors are logged. */
int lm_daemon_start(struct lm_daemon *d, struct lm_config *cfg, const char *path, bool given,
                    int grace_s);
/* Runs the loop until shutdown; returns the exit code. */
int lm_daemon_run(struct lm_daemon *d);
void lm_daemon_free(struct lm_daemon *d);

#endif
