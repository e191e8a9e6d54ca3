/* `labman requests`: the gateway's requests in flight right now, from
 * labmand's /admin/v1/requests, as a table or raw JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "labman/cli.h"
#include "util/util.h"

static const char usage_requests[] =
    "Usage: labman requests [--json] [-c FILE | --admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "Lists the gateway's requests in flight: request id (as in the\n"
    "X-Labman-Request-Id header and the access log), API key name, route,\n"
    "model, endpoint, streamed or not, state (queued, connecting, relaying),\n"
    "age, attempts and completion tokens so far.\n"
    "The admin address and token are found as for `labman status`.\n";

static const char *
str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s && *s ? s : "-";
}

static void
cell(char *out, size_t cap, json_t *o, const char *k)
{
    char raw[256];
    snprintf(raw, sizeof(raw), "%s", str(o, k));
    lm_escape(out, cap, raw, strlen(raw)); /* model names come from clients */
}

int
cli_cmd_requests(int argc, char **argv)
{
    struct target t;
    json_t *body, *r;
    size_t i;

    if (cli_wants_help(argc, argv)) {
        fputs(usage_requests, stdout);
        return 0;
    }
    int rc = cli_get(argc, argv, usage_requests, "/admin/v1/requests",
                     "has no gateway (node roles lack \"gateway\")", &t, &body);
    if (rc != 0)
        return rc;
    if (t.json) {
        cli_print_json(body);
        goto out;
    }
    json_t *list = json_object_get(body, "requests");
    if (json_array_size(list) == 0) {
        printf("no requests in flight\n");
        goto out;
    }
    printf("%-16s  %-12s  %-16s  %-24s  %-14s  %-6s  %-10s  %8s  %3s  %6s\n", "ID", "KEY",
           "ROUTE", "MODEL", "ENDPOINT", "STREAM", "STATE", "AGE", "TRY", "TOKENS");
    json_array_foreach(list, i, r)
    {
        char key[64], model[128], ep[64], age[32];
        cell(key, sizeof(key), r, "key");
        cell(model, sizeof(model), r, "model");
        cell(ep, sizeof(ep), r, "endpoint");
        long long ms = (long long)json_integer_value(json_object_get(r, "age_ms"));
        if (ms < 10000)
            snprintf(age, sizeof(age), "%lldms", ms);
        else
            snprintf(age, sizeof(age), "%llds", ms / 1000);
        printf("%-16s  %-12s  %-16s  %-24s  %-14s  %-6s  %-10s  %8s  %3lld  %6lld\n",
               str(r, "id"), key, str(r, "route"), model, ep,
               json_is_true(json_object_get(r, "stream")) ? "yes" : "no", str(r, "state"), age,
               (long long)json_integer_value(json_object_get(r, "attempts")),
               (long long)json_integer_value(json_object_get(r, "tokens")));
    }
    printf("%lld in flight, %lld queued\n",
           (long long)json_integer_value(json_object_get(body, "in_flight")),
           (long long)json_integer_value(json_object_get(body, "queued")));
out:
    json_decref(body);
    return rc;
}
