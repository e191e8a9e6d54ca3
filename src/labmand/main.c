/* labmand: the labman daemon. Options, then wiring (see daemon.c). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/admin.h"
#include "config/config.h"
#include "labmand/daemon.h"

#define LM_LOG_MODULE "labmand"
#include "log/log.h"

static void
usage(FILE *out)
{
    fprintf(out,
            "Usage: labmand [-c FILE] [-n] [--grace-s N]\n"
            "       labmand --version | --help\n"
            "\n"
            "The labman daemon: serves the admin API (and, in later releases, the\n"
            "OpenAI-compatible gateway and the mesh) from one event loop.\n"
            "\n"
            "  -c, --config FILE  config file (default %s; when that file does\n"
            "                     not exist, built-in defaults are used)\n"
            "  -n, --check        validate the config and exit: 0 and \"FILE: ok\", or 1\n"
            "                     and every problem as FILE:LINE:COL: message\n"
            "      --grace-s N    on SIGTERM/SIGINT, wait up to N seconds (default %d)\n"
            "                     for requests in flight; a second signal exits at once\n"
            "  -V, --version      print the version and exit\n"
            "  -h, --help         print this help and exit\n"
            "\n"
            "Signals: SIGHUP reloads the config; SIGTERM/SIGINT shut down gracefully.\n"
            "See docs/operations.md.\n",
            LM_CONFIG_DEFAULT_PATH, LM_DAEMON_GRACE_S);
}

/* -n: what `labman config check` does, for the daemon's own config. */
static int
check_config(const char *path, bool given)
{
    struct lm_config *cfg = NULL;
    if (lm_daemon_load_config(path, given, &cfg) < 0)
        return 1;
    if (cfg->path && *cfg->path)
        printf("%s: ok\n", path);
    else
        printf("%s: not found; built-in defaults: ok\n", path);
    lm_config_free(cfg);
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'n'},
        {"grace-s", required_argument, NULL, 'g'}, {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *path = LM_CONFIG_DEFAULT_PATH;
    bool given = false, check = false;
    int grace_s = LM_DAEMON_GRACE_S, c;

    while ((c = getopt_long(argc, argv, "c:nVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            given = true;
            break;
        case 'n':
            check = true;
            break;
        case 'g': {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 0 || v > 3600) {
                fprintf(stderr, "labmand: --grace-s wants 0..3600 seconds, not \"%s\"\n",
                        optarg);
                return 2;
            }
            grace_s = (int)v;
            break;
        }
        case 'V':
            printf("labmand %s\n", LM_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "labmand: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (check)
        return check_config(path, given);

    struct lm_config *cfg = NULL;
    if (lm_daemon_load_config(path, given, &cfg) < 0) {
        log_error("%s is invalid; not starting", path);
        return 1;
    }
    struct lm_daemon d;
    int rc = lm_daemon_start(&d, cfg, path, given, grace_s);
    if (rc == 0)
        rc = lm_daemon_run(&d);
    else
        rc = 1;
    lm_daemon_free(&d);
    return rc;
}
