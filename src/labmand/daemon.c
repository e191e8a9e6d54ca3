#include "labmand/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#define LM_LOG_MODULE "labmand"
#include "log/log.h"

#define DRAIN_POLL_MS 20
#define BULK_BATCH 16 /* bulk callbacks between two looks for urgent events */

static bool
default_missing(const char *path, bool given)
{
    struct stat st;
    return !given && stat(path, &st) < 0 && errno == ENOENT;
}

/* The config a reload or start would use, or the diagnostics why not. */
static int
read_config(const char *path, bool given, struct lm_config **out, struct lm_diags *diags)
{
    if (default_missing(path, given)) {
        *out = lm_config_defaults();
        return 0;
    }
    return lm_config_load(path, out, diags);
}

int
lm_daemon_load_config(const char *path, bool given, struct lm_config **out)
{
    struct lm_diags diags = {0};
    int rc = read_config(path, given, out, &diags);
    if (rc < 0) {
        lm_diags_print(&diags, path, stderr);
        if (diags.n == 0)
            fprintf(stderr, "%s: invalid config\n", path);
    } else if (default_missing(path, given)) {
        log_info("%s does not exist: using built-in defaults", path);
    }
    lm_diags_clear(&diags);
    return rc;
}

static void
apply_logging(const struct lm_config *cfg)
{
    lm_log_setup(cfg->node.log_level, cfg->node.log_format);
}

static json_t *
reload_record(const char *result)
{
    return json_pack("{s:s,s:I,s:[],s:[]}", "result", result, "at", (json_int_t)time(NULL),
                     "errors", "restart_needed");
}

/* Splits "a, b" into the array. */
static void
add_names(json_t *arr, const char *list)
{
    while (list && *list) {
        const char *end = strstr(list, ", ");
        size_t n = end ? (size_t)(end - list) : strlen(list);
        json_array_append_new(arr, json_stringn(list, n));
        list = end ? end + 2 : NULL;
    }
}

/* Re-reads the config. A valid file is applied at once (log level and
 * format, admin token) without touching open connections; settings that only
 * a restart can change are named in a warning. An invalid one changes
 * nothing. Returns 0 or -EINVAL; *result (new reference) tells what happened. */
static int
start_mesh(struct lm_daemon *d, const struct lm_config *cfg)
{
    char err[512];
    struct lm_mesh_deps md = {
        .base = d->base,
        .id = &d->id,
        .endpoints = d->endpoints,
        .upstream = d->upstream,
        .data_dir = d->boot_cfg->node.data_dir,
    };
    int rc = lm_mesh_new(&d->mesh, &md, cfg, err, sizeof(err));
    if (rc < 0)
        log_error("%s", err);
    lm_gateway_set_mesh(d->gateway, d->mesh);
    return rc;
}

static int
reload(struct lm_daemon *d, const char *trigger, json_t **result)
{
    struct lm_diags diags = {0};
    struct lm_config *next = NULL;
    struct lm_buf restart;
    json_t *rec = NULL;
    char err[512];
    int rc;

    lm_buf_init(&restart, 4096);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
               (unsigned long long)lm_now_us(), d->config_path);
    log_info("reloading %s (%s)", d->config_path, trigger);

    rc = read_config(d->config_path, d->config_given, &next, &diags);
    if (rc == 0 &&
        lm_admin_set_token_file(d->admin, next->admin.token_file, err, sizeof(err)) < 0) {
        lm_diags_add(&diags, 0, 0, "%s", err);
        rc = -EINVAL;
    }
    if (rc < 0) {
        rec = reload_record("error");
        json_t *errs = json_object_get(rec, "errors");
        if (diags.n == 0)
            lm_diags_add(&diags, 0, 0, "invalid config");
        for (size_t i = 0; i < diags.n; i++) {
            const struct lm_diag *g = &diags.v[i];
            char *line = g->line > 0 ? lm_xasprintf("%s:%d:%d: %s", d->config_path, g->line,
                                                    g->col, g->msg)
                                     : lm_xasprintf("%s: %s", d->config_path, g->msg);
            log_error("%s", line);
            json_array_append_new(errs, json_string(line));
            free(line);
        }
        log_error("config reload rejected: %zu problem(s); keeping the running config", diags.n);
        d->reloads_error++;
        lm_config_free(next);
        rc = -EINVAL;
        goto out;
    }

    rec = reload_record("ok");
    if (lm_config_restart_needed(d->boot_cfg, next, &restart) > 0) {
        log_warn("config reloaded, but these settings need a restart to take effect: %s",
                 restart.data);
        add_names(json_object_get(rec, "restart_needed"), restart.data);
    }
    apply_logging(next);
    lm_endpoints_reconfigure(d->endpoints, next);
    if (d->gateway)
        lm_gateway_reconfigure(d->gateway, next);
    if (d->mesh)
        lm_mesh_reconfigure(d->mesh, next);
    else if (lm_mesh_enabled(next))
        start_mesh(d, next); /* e.g. `labman join` gave a private node its first peer */
    if (d->cfg != d->boot_cfg)
        lm_config_free(d->cfg);
    d->cfg = next;
    d->reloads_ok++;
    log_info("config reloaded from %s (log_level %s)", d->config_path,
             lm_log_level_name(d->cfg->node.log_level));
out:
    sd_notifyf(0, "READY=1\nSTATUS=serving; last reload %s", rc == 0 ? "ok" : "rejected");
    json_decref(d->last_reload);
    d->last_reload = json_incref(rec);
    *result = rec;
    lm_diags_clear(&diags);
    lm_buf_release(&restart);
    return rc;
}

static void
route_reload(struct evhttp_request *req, void *arg)
{
    struct lm_daemon *d = arg;
    json_t *result;
    if (d->draining) {
        lm_admin_reply_error(req, 503, "shutting down");
        return;
    }
    int rc = reload(d, "admin API", &result);
    lm_admin_reply_json(req, rc == 0 ? 200 : 422, result);
}

static void
on_status(json_t *st, void *arg)
{
    struct lm_daemon *d = arg;
    json_t *roles = json_array();
    static const enum lm_role all[] = {LM_ROLE_GATEWAY, LM_ROLE_PROVIDER, LM_ROLE_RELAY};
    for (size_t i = 0; i < LM_ARRAY_LEN(all); i++)
        if (d->cfg->node.roles & all[i])
            json_array_append_new(roles, json_string(lm_config_role_name(all[i])));
    json_object_set_new(st, "name", json_string(d->cfg->node.name));
    json_object_set_new(st, "node_id", json_string(d->id.node_id));
    json_object_set_new(st, "short_id", json_string(d->id.short_id));
    json_object_set_new(st, "roles", roles);
    json_object_set_new(st, "data_dir", json_string(d->boot_cfg->node.data_dir));
    json_object_set_new(st, "config", json_string(d->config_path));
    json_object_set_new(st, "config_source",
                        json_string(d->cfg->path && *d->cfg->path ? "file" : "defaults"));
    json_object_set_new(st, "log_level", json_string(lm_log_level_name(lm_log_get_level())));
    /* The mesh settings in effect (they change on reload): counts, not ids,
     * so that a status poll stays small on a node with many peers. */
    const struct lm_cfg_mesh *m = &d->cfg->mesh;
    json_object_set_new(st, "mesh",
                        json_pack("{s:s,s:I,s:I,s:I,s:I}", "trust", lm_config_trust_name(m->trust),
                                  "trusted_peers", (json_int_t)m->trusted_peers.n,
                                  "denied_peers", (json_int_t)m->denied_peers.n, "bootstrap",
                                  (json_int_t)m->bootstrap.n, "advertise",
                                  (json_int_t)m->advertise.n));
    json_object_set(st, "last_reload", d->last_reload);
    lm_mesh_status(d->mesh, st);
}

static void
route_peers(struct evhttp_request *req, void *arg)
{
    struct lm_daemon *d = arg;
    lm_admin_reply_json(req, 200, lm_mesh_peers_json(d->mesh));
}

static void
on_mesh_metrics(struct lm_buf *out, void *arg)
{
    struct lm_daemon *d = arg;
    lm_mesh_metrics(d->mesh, out);
}

static void
route_endpoints(struct evhttp_request *req, void *arg)
{
    struct lm_daemon *d = arg;
    lm_admin_reply_json(req, 200, lm_endpoints_json(d->endpoints));
}

static void
route_models(struct evhttp_request *req, void *arg)
{
    struct lm_daemon *d = arg;
    lm_admin_reply_json(req, 200, lm_endpoints_models_json(d->endpoints));
}

static void
on_endpoints_metrics(struct lm_buf *out, void *arg)
{
    struct lm_daemon *d = arg;
    lm_endpoints_metrics(d->endpoints, out);
}

/* Ready once every configured endpoint has been checked, so that the
 * first requests find the catalogue filled. */
static void
on_endpoints_checked(void *arg)
{
    struct lm_daemon *d = arg;
    if (!d->draining && lm_admin_get_state(d->admin) == LM_ADMIN_STARTING) {
        log_info("first check of %zu endpoint(s) done", lm_endpoints_count(d->endpoints));
        lm_admin_set_state(d->admin, LM_ADMIN_READY);
    }
}

static void
on_metrics(struct lm_buf *out, void *arg)
{
    struct lm_daemon *d = arg;
    lm_buf_printf(out,
                  "# HELP labman_config_reloads_total Config reloads by result.\n"
                  "# TYPE labman_config_reloads_total counter\n"
                  "labman_config_reloads_total{result=\"ok\"} %lu\n"
                  "labman_config_reloads_total{result=\"error\"} %lu\n",
                  d->reloads_ok, d->reloads_error);
}

/* ---- shutdown ---- */

static unsigned
in_flight(struct lm_daemon *d)
{
    return lm_admin_in_flight(d->admin) + lm_gateway_in_flight(d->gateway);
}

static void
drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_daemon *d = arg;
    unsigned n = in_flight(d);
    if (n == 0) {
        log_info("drained; exiting");
        event_base_loopexit(d->base, NULL);
        return;
    }
    if (lm_now_ms() >= d->drain_deadline_ms) {
        log_warn("grace period of %d s over with %u request(s) in flight; exiting", d->grace_s,
                 n);
        event_base_loopexit(d->base, NULL);
        return;
    }
    struct timeval tv = {0, DRAIN_POLL_MS * 1000};
    evtimer_add(d->drain_timer, &tv);
}

static void
on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct lm_daemon *d = arg;
    if (d->draining) {
        log_warn("second %s: exiting now without waiting for %u request(s)", strsignal((int)sig),
                 in_flight(d));
        d->exit_code = 1;
        event_base_loopbreak(d->base);
        return;
    }
    d->draining = true;
    lm_admin_set_state(d->admin, LM_ADMIN_DRAINING);
    lm_admin_stop_listening(d->admin);
    lm_gateway_stop_listening(d->gateway);
    lm_mesh_stop_listening(d->mesh);
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
    d->drain_deadline_ms = lm_now_ms() + (uint64_t)d->grace_s * 1000;
    log_info("%s: stopped accepting; draining %u request(s) for up to %d s", strsignal((int)sig),
             in_flight(d), d->grace_s);
    drain_tick(-1, 0, d);
}

static void
on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    struct lm_daemon *d = arg;
    json_t *result;
    if (d->draining)
        return;
    reload(d, "SIGHUP", &result);
    json_decref(result);
}

/* ---- start / run ---- */

int
lm_daemon_start(struct lm_daemon *d, struct lm_config *cfg, const char *path, bool given,
                int grace_s)
{
    char err[512];
    int rc;

    memset(d, 0, sizeof(*d));
    d->config_path = lm_xstrdup(path);
    d->config_given = given;
    d->cfg = d->boot_cfg = cfg;
    d->grace_s = grace_s;
    d->last_reload = json_pack("{s:s}", "result", "none");
    apply_logging(cfg);

    /* A write to a closed socket is an error to handle, not a reason to die. */
    signal(SIGPIPE, SIG_IGN);

    /* Urgent events first (LM_PRIO_URGENT), and a look for new ones after
     * every BULK_BATCH bulk callbacks: otherwise a request that arrives
     * while hundreds of stream tokens are being relayed waits for all of them
     * (a few ms at 512 streams) before it is even read. */
    struct event_config *ec = event_config_new();
    if (ec)
        event_config_set_max_dispatch_interval(ec, NULL, BULK_BATCH, LM_PRIO_BULK);
    d->base = ec ? event_base_new_with_config(ec) : NULL;
    if (ec)
        event_config_free(ec);
    if (!d->base || event_base_priority_init(d->base, LM_PRIO_N) < 0) {
        log_error("cannot create the event loop");
        return -ENOMEM;
    }

    /* Before anything listens: a test or an operator that sees the admin
     * port open may signal at once, and SIGHUP's default action kills. The
     * handlers only run once the loop does, after everything below exists. */
    d->sig_term = evsignal_new(d->base, SIGTERM, on_stop_signal, d);
    d->sig_int = evsignal_new(d->base, SIGINT, on_stop_signal, d);
    d->sig_hup = evsignal_new(d->base, SIGHUP, on_hup, d);
    d->drain_timer = evtimer_new(d->base, drain_tick, d);
    if (!d->sig_term || !d->sig_int || !d->sig_hup || !d->drain_timer ||
        evsignal_add(d->sig_term, NULL) < 0 || evsignal_add(d->sig_int, NULL) < 0 ||
        evsignal_add(d->sig_hup, NULL) < 0) {
        log_error("cannot install signal handlers");
        return -EIO;
    }

    rc = lm_identity_load_or_create(cfg->node.data_dir, &d->id);
    if (rc < 0) {
        log_error("%s", d->id.err);
        return rc;
    }
    if (d->id.created)
        log_info("created a new identity key at %s", d->id.path);
    log_info("node %s (%s), id %s", cfg->node.name, d->id.short_id, d->id.node_id);

    struct lm_admin_opts ao = {
        .listen = cfg->admin.listen,
        .token_file = cfg->admin.token_file,
        .version = LM_VERSION,
    };
    rc = lm_admin_new(&d->admin, d->base, &ao, err, sizeof(err));
    if (rc < 0) {
        log_error("%s", err);
        return rc;
    }
    lm_admin_route(d->admin, "/admin/v1/config/reload", EVHTTP_REQ_POST, route_reload, d);
    lm_admin_add_status(d->admin, on_status, d);
    lm_admin_add_metrics(d->admin, on_metrics, d);

    rc = lm_upstream_new(&d->upstream, d->base);
    if (rc == 0)
        rc = lm_endpoints_new(&d->endpoints, d->base, d->upstream, cfg);
    if (rc < 0) {
        log_error("cannot start the endpoint registry: %s", strerror(-rc));
        return rc;
    }
    lm_admin_route(d->admin, "/admin/v1/endpoints", EVHTTP_REQ_GET, route_endpoints, d);
    lm_admin_route(d->admin, "/admin/v1/models", EVHTTP_REQ_GET, route_models, d);
    lm_admin_add_metrics(d->admin, on_endpoints_metrics, d);
    lm_endpoints_on_first_round(d->endpoints, on_endpoints_checked, d);

    lm_admin_route(d->admin, "/admin/v1/peers", EVHTTP_REQ_GET, route_peers, d);
    lm_admin_add_metrics(d->admin, on_mesh_metrics, d);
    if (lm_mesh_enabled(cfg) && (rc = start_mesh(d, cfg)) < 0)
        return rc;

    if (cfg->node.roles & LM_ROLE_GATEWAY) {
        struct lm_gateway_deps gd = {
            .base = d->base,
            .upstream = d->upstream,
            .endpoints = d->endpoints,
            .admin = d->admin,
            .node_name = cfg->node.name,
            .node_id = d->id.node_id,
        };
        rc = lm_gateway_new(&d->gateway, &gd, cfg, err, sizeof(err));
        if (rc < 0) {
            log_error("%s", err);
            return rc;
        }
        lm_gateway_set_mesh(d->gateway, d->mesh);
    }

    if (cfg->n_endpoints == 0)
        lm_admin_set_state(d->admin, LM_ADMIN_READY);
    log_info("labmand %s ready: admin on http://%s (config %s)", LM_VERSION,
             lm_admin_address(d->admin), cfg->path && *cfg->path ? cfg->path : "built-in defaults");
    sd_notifyf(0, "READY=1\nMAINPID=%ld\nSTATUS=serving; admin on %s", (long)getpid(),
               lm_admin_address(d->admin));
    return 0;
}

int
lm_daemon_run(struct lm_daemon *d)
{
    if (event_base_dispatch(d->base) < 0) {
        log_error("event loop failed");
        return 1;
    }
    log_info("stopped");
    return d->exit_code;
}

void
lm_daemon_free(struct lm_daemon *d)
{
    if (d->sig_term)
        event_free(d->sig_term);
    if (d->sig_int)
        event_free(d->sig_int);
    if (d->sig_hup)
        event_free(d->sig_hup);
    if (d->drain_timer)
        event_free(d->drain_timer);
    /* The gateway first: its requests hold endpoint slots and upstream requests. */
    lm_gateway_free(d->gateway);
    lm_mesh_free(d->mesh);
    lm_endpoints_free(d->endpoints);
    lm_upstream_free(d->upstream);
    lm_admin_free(d->admin);
    if (d->cfg != d->boot_cfg)
        lm_config_free(d->cfg);
    lm_config_free(d->boot_cfg);
    lm_identity_wipe(&d->id);
    json_decref(d->last_reload);
    free(d->config_path);
    if (d->base)
        event_base_free(d->base);
    memset(d, 0, sizeof(*d));
}
