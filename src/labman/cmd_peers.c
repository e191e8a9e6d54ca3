/* `labman peers`: the mesh as this node sees it, from labmand's
 * /admin/v1/peers, as a table or raw JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "labman/cli.h"
#include "util/util.h"

static const char usage_peers[] =
    "Usage: labman peers [--json] [-c FILE | --admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "Lists the mesh nodes this node knows: name, short id, roles, path (direct,\n"
    "relay via X, or none when not connected), round-trip time, models served,\n"
    "when last seen, and whether trust lets it in (trusted, vouched, public,\n"
    "untrusted, denied). Names and models come from the peers' signed gossip.\n"
    "The admin address and token are found as for `labman status`.\n";

/* Peer-supplied text, escaped and cut to width. */
static void
cell(char *out, size_t cap, const char *s)
{
    lm_escape(out, cap, s && *s ? s : "-", strlen(s && *s ? s : "-"));
}

static void
join_array(char *out, size_t cap, json_t *arr)
{
    size_t i, used = 0;
    json_t *v;
    out[0] = '\0';
    json_array_foreach(arr, i, v)
    {
        char e[128];
        cell(e, sizeof(e), json_string_value(v));
        int k = snprintf(out + used, cap - used, "%s%s", i ? "," : "", e);
        if (k < 0 || (size_t)k >= cap - used)
            break;
        used += (size_t)k;
    }
    if (!out[0])
        snprintf(out, cap, "-");
}

static void
ago(char *out, size_t cap, long long then_ms)
{
    if (then_ms <= 0) {
        snprintf(out, cap, "never");
        return;
    }
    long long s = (long long)(lm_wall_ms() - (uint64_t)then_ms) / 1000;
    if (s < 120)
        snprintf(out, cap, "%llds ago", s < 0 ? 0 : s);
    else if (s < 7200)
        snprintf(out, cap, "%lldm ago", s / 60);
    else
        snprintf(out, cap, "%lldh ago", s / 3600);
}

int
cli_cmd_peers(int argc, char **argv)
{
    struct target t;
    json_t *body, *p;
    size_t i;

    if (cli_wants_help(argc, argv)) {
        fputs(usage_peers, stdout);
        return 0;
    }
    int rc = cli_get(argc, argv, usage_peers, "/admin/v1/peers", NULL, &t, &body);
    if (rc != 0)
        return rc;
    if (t.json) {
        cli_print_json(body);
        goto out;
    }
    json_t *list = json_object_get(body, "peers");
    if (!json_object_get(body, "node_id")) {
        printf("the mesh is off: no trusted peers, no bootstrap and trust = \"private\"\n"
               "(see `labman invite` and `labman join`)\n");
        goto out;
    }
    if (json_array_size(list) == 0) {
        printf("no peers known yet\n");
        goto out;
    }
    printf("%-16s  %-12s  %-18s  %-14s  %6s  %-28s  %-10s  %-9s\n", "NAME", "ID", "ROLES",
           "PATH", "RTT", "MODELS", "SEEN", "TRUST");
    unsigned up = 0;
    json_array_foreach(list, i, p)
    {
        char name[64], roles[64], models[128], seen[32], rtt[16];
        cell(name, sizeof(name), json_string_value(json_object_get(p, "name")));
        join_array(roles, sizeof(roles), json_object_get(p, "roles"));
        join_array(models, sizeof(models), json_object_get(p, "models"));
        bool conn = json_is_true(json_object_get(p, "connected"));
        up += conn;
        ago(seen, sizeof(seen), conn ? (long long)lm_wall_ms()
                                     : (long long)json_integer_value(
                                           json_object_get(p, "last_seen_ms")));
        json_t *r = json_object_get(p, "rtt_ms");
        if (json_is_integer(r))
            snprintf(rtt, sizeof(rtt), "%lldms", (long long)json_integer_value(r));
        else
            snprintf(rtt, sizeof(rtt), "-");
        printf("%-16s  %-12s  %-18s  %-14s  %6s  %-28s  %-10s  %-9s\n", name,
               json_string_value(json_object_get(p, "short_id")), roles,
               json_string_value(json_object_get(p, "path")), rtt, models,
               conn ? "now" : seen, json_string_value(json_object_get(p, "trust")));
    }
    printf("%u connected, %zu known\n", up, json_array_size(list));
out:
    json_decref(body);
    return rc;
}
