/* `labman endpoints` and `labman models`: the local runtimes and their
 * catalogue from labmand's admin API, as aligned tables or raw JSON. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "labman/cli.h"
#include "util/util.h"

#define MAX_COLS 12
#define CELL_MAX 256

static const char usage_endpoints[] =
    "Usage: labman endpoints [--json] [-c FILE | --admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "Lists the local runtimes labmand serves from (configured and discovered):\n"
    "kind, state (up, loading, down), requests in flight of the allowed\n"
    "maximum, free runtime slots, circuit breaker, models (loaded ones in\n"
    "brackets), time since the last check, and the last error.\n"
    "The admin address and token are found as for `labman status`.\n";

static const char usage_models[] =
    "Usage: labman models [--json] [-c FILE | --admin HOST:PORT] [--token-file FILE]\n"
    "\n"
    "Lists the models the local runtimes serve, after models_include/exclude:\n"
    "id, the endpoints serving it, whether it is loaded in memory, context\n"
    "length, family, parameter size, quantization and aliases. Models whose\n"
    "endpoints are all down are marked \"(down)\".\n";

/* ---- a table with columns as wide as their widest cell ---- */

struct table {
    size_t ncols, nrows;
    char *(*rows)[MAX_COLS];
};

static void
table_add(struct table *t, const char *const *cells)
{
    t->rows = lm_xrealloc(t->rows, (t->nrows + 1) * sizeof(*t->rows));
    for (size_t c = 0; c < t->ncols; c++) {
        const char *s = cells[c] && *cells[c] ? cells[c] : "-";
        char clean[CELL_MAX];
        /* Names come from runtimes: keep a row on one line. */
        lm_escape(clean, sizeof(clean), s, strlen(s));
        t->rows[t->nrows][c] = lm_xstrdup(clean);
    }
    t->nrows++;
}

static void
table_print(struct table *t)
{
    size_t w[MAX_COLS] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++)
            if (strlen(t->rows[r][c]) > w[c])
                w[c] = strlen(t->rows[r][c]);
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            if (c + 1 == t->ncols)
                printf("%s\n", t->rows[r][c]);
            else
                printf("%-*s  ", (int)w[c], t->rows[r][c]);
        }
    }
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++)
            free(t->rows[r][c]);
    free(t->rows);
}

/* ---- cells ---- */

static const char *
str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static void
num(char *out, size_t cap, json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v))
        snprintf(out, cap, "%lld", (long long)json_integer_value(v));
    else
        snprintf(out, cap, "-");
}

static void
age(char *out, size_t cap, json_t *o)
{
    json_t *v = json_object_get(o, "last_check_age_ms");
    if (!json_is_integer(v)) {
        snprintf(out, cap, "never");
        return;
    }
    long long ms = (long long)json_integer_value(v);
    if (ms < 1000)
        snprintf(out, cap, "%lldms ago", ms);
    else if (ms < 120000)
        snprintf(out, cap, "%llds ago", ms / 1000);
    else
        snprintf(out, cap, "%lldm ago", ms / 60000);
}

int
cli_cmd_endpoints(int argc, char **argv)
{
    struct target t;
    json_t *body, *e;
    size_t i;

    if (cli_wants_help(argc, argv)) {
        fputs(usage_endpoints, stdout);
        return 0;
    }
    int rc = cli_get(argc, argv, usage_endpoints, "/admin/v1/endpoints", NULL, &t, &body);
    if (rc != 0)
        return rc;
    if (t.json) {
        cli_print_json(body);
        json_decref(body);
        return 0;
    }
    json_t *eps = json_object_get(body, "endpoints");
    if (json_array_size(eps) == 0) {
        printf("no endpoints: add [[endpoints]] to the config, or start a runtime on a "
               "default port with [discovery] scan_local = true\n");
        json_decref(body);
        return 0;
    }
    struct table tab = {.ncols = 10};
    table_add(&tab, (const char *[]){"NAME", "KIND", "URL", "STATE", "IN FLIGHT", "SLOTS",
                                     "CIRCUIT", "MODELS", "CHECKED", "ERROR"});
    json_array_foreach(eps, i, e)
    {
        char flight[64], slots[24], models[64], checked[32], n1[24], n2[24];
        const char *state = !json_is_true(json_object_get(e, "healthy"))  ? "down"
                            : json_is_true(json_object_get(e, "loading")) ? "loading"
                                                                          : "up";
        num(n1, sizeof(n1), e, "in_flight");
        num(n2, sizeof(n2), e, "max_concurrent");
        snprintf(flight, sizeof(flight), "%s/%s", n1, n2);
        num(slots, sizeof(slots), e, "free_slots");
        num(n1, sizeof(n1), e, "models");
        num(n2, sizeof(n2), e, "models_loaded");
        snprintf(models, sizeof(models), "%s (%s loaded)", n1, n2);
        age(checked, sizeof(checked), e);
        table_add(&tab, (const char *[]){str(e, "name"), str(e, "kind"), str(e, "url"), state,
                                         flight, slots, str(e, "breaker"), models, checked,
                                         str(e, "last_error")});
    }
    table_print(&tab);
    json_decref(body);
    return 0;
}

static void
join(char *out, size_t cap, json_t *arr)
{
    size_t i;
    json_t *v;
    out[0] = '\0';
    json_array_foreach(arr, i, v)
    {
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s%s", i ? "," : "",
                 json_string_value(v) ? json_string_value(v) : "?");
    }
}

int
cli_cmd_models(int argc, char **argv)
{
    struct target t;
    json_t *body, *m;
    size_t i;

    if (cli_wants_help(argc, argv)) {
        fputs(usage_models, stdout);
        return 0;
    }
    int rc = cli_get(argc, argv, usage_models, "/admin/v1/models", NULL, &t, &body);
    if (rc != 0)
        return rc;
    if (t.json) {
        cli_print_json(body);
        json_decref(body);
        return 0;
    }
    json_t *ms = json_object_get(body, "models");
    if (json_array_size(ms) == 0) {
        printf("no models: see `labman endpoints`\n");
        json_decref(body);
        return 0;
    }
    struct table tab = {.ncols = 8};
    table_add(&tab, (const char *[]){"MODEL", "ENDPOINTS", "LOADED", "CONTEXT", "FAMILY", "PARAMS",
                                     "QUANT", "ALIASES"});
    json_array_foreach(ms, i, m)
    {
        char eps[CELL_MAX], aliases[CELL_MAX], ctx[24];
        join(eps, sizeof(eps) - 8, json_object_get(m, "endpoints"));
        if (!json_is_true(json_object_get(m, "available")))
            strcat(eps, " (down)");
        join(aliases, sizeof(aliases), json_object_get(m, "aliases"));
        num(ctx, sizeof(ctx), m, "context_length");
        table_add(&tab,
                  (const char *[]){str(m, "id"), eps,
                                   json_is_true(json_object_get(m, "loaded")) ? "yes" : "no", ctx,
                                   str(m, "family"), str(m, "params"), str(m, "quant"), aliases});
    }
    table_print(&tab);
    json_decref(body);
    return 0;
}
