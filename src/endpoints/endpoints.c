/* The registry of local runtimes: configured and discovered endpoints, their
 * check timers, the model catalogue, selection, circuit breakers and the
 * wait queue. Checks themselves live in probe.c. */
#include <errno.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endpoints/endpoints_internal.h"

#define LM_LOG_MODULE "endpoints"
#include "log/log.h"

#define CHECK_MS_MIN 50
#define CHECK_MS_MAX 3600000

static const int scan_ports[] = {11434, 1234, 8080, 8000};

struct lm_endpoints_waiter {
    struct lm_endpoints *r;
    char *model;
    lm_endpoints_wait_fn *fn;
    void *arg;
    bool ready; /* woken: on the ready list, fn not yet run */
    struct lm_endpoints_waiter *prev, *next;
};

struct wlist {
    struct lm_endpoints_waiter *head, *tail;
};

struct lm_endpoints {
    struct event_base *base;
    struct lm_upstream *up; /* NULL: no checks run (unit tests) */
    struct lm_ep **all;     /* every endpoint we hold, listed or not */
    size_t n_all;
    const struct lm_endpoint *list[LM_ENDPOINTS_MAX]; /* what lm_endpoints_at shows */
    size_t n_list;
    unsigned check_ms;
    unsigned rand_state;
    uint64_t pick_seq;

    struct wlist queue; /* waiting, oldest first */
    struct wlist ready; /* woken; their fn runs from wake_ev */
    size_t depth;
    struct event *wake_ev;

    void (*first_fn)(void *arg);
    void *first_arg;
    bool first_done;
    struct event *first_ev;
};

static void ep_destroy(struct lm_ep *ep);

/* ---- catalogue helpers ---- */

char *
lm_model_alias_of(const char *id)
{
    size_t n = strlen(id);
    if (n > 7 && strcmp(id + n - 7, ":latest") == 0)
        return lm_xstrndup(id, n - 7);
    return NULL;
}

bool
lm_model_matches(const struct lm_model *m, const char *name)
{
    if (strcmp(m->id, name) == 0 || (m->alias && strcmp(m->alias, name) == 0))
        return true;
    /* An untagged id ("mistral", "org/model") is also "mistral:latest". */
    size_t n = strlen(name), k = strlen(m->id);
    return n == k + 7 && strcmp(name + k, ":latest") == 0 && strncmp(name, m->id, k) == 0 &&
           !strchr(m->id, ':');
}

int
lm_models_find(const struct lm_model *models, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (models[i].id && lm_model_matches(&models[i], name))
            return (int)i;
    return -1;
}

static bool
glob_any(const struct lm_strv *globs, const char *id, const char *alias)
{
    for (size_t i = 0; i < globs->n; i++)
        if (fnmatch(globs->v[i], id, 0) == 0 || (alias && fnmatch(globs->v[i], alias, 0) == 0))
            return true;
    return false;
}

bool
lm_model_allowed(const struct lm_strv *include, const struct lm_strv *exclude, const char *id)
{
    char *alias = lm_model_alias_of(id);
    bool ok = glob_any(include, id, alias) && !glob_any(exclude, id, alias);
    free(alias);
    return ok;
}

void
lm_model_clear(struct lm_model *m)
{
    free(m->id);
    free(m->alias);
    free(m->digest);
    free(m->family);
    free(m->param_size);
    free(m->quant);
    memset(m, 0, sizeof(*m));
}

void
lm_models_free(struct lm_model *models, size_t n)
{
    for (size_t i = 0; i < n; i++)
        lm_model_clear(&models[i]);
    free(models);
}

const char *
lm_breaker_name(enum lm_breaker b)
{
    switch (b) {
    case LM_BREAKER_CLOSED: return "closed";
    case LM_BREAKER_OPEN: return "open";
    case LM_BREAKER_HALF_OPEN: return "half-open";
    }
    return "?";
}

/* ---- small helpers ---- */

static void
strv_copy(struct lm_strv *dst, const struct lm_strv *src)
{
    dst->n = src->n;
    dst->v = lm_xcalloc(src->n ? src->n : 1, sizeof(char *));
    for (size_t i = 0; i < src->n; i++)
        dst->v[i] = lm_xstrdup(src->v[i]);
}

static void
strv_clear(struct lm_strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->v[i]);
    free(v->v);
    v->v = NULL;
    v->n = 0;
}

static bool
strv_equal(const struct lm_strv *a, const struct lm_strv *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    return true;
}

static void
wipe_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

/* The Authorization header from the environment; NULL when unset. */
static char *
auth_from_env(const char *name, const char *ep_name)
{
    if (!name || !*name)
        return NULL;
    const char *v = getenv(name);
    if (!v || !*v) {
        log_warn("endpoint %s: api_key_env %s is not set; no Authorization header", ep_name, name);
        return NULL;
    }
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            log_warn("endpoint %s: the value of %s holds control characters; not used", ep_name,
                     name);
            return NULL;
        }
    return lm_xasprintf("Authorization: Bearer %s", v);
}

/* Port of a loopback URL ("http://127.0.0.1:11434/..."), else -1. */
static int
loopback_port(const char *url)
{
    const char *p = url;
    int def = 80;
    if (strncmp(p, "http://", 7) == 0) {
        p += 7;
    } else if (strncmp(p, "https://", 8) == 0) {
        p += 8;
        def = 443;
    } else {
        return -1;
    }
    char auth[256], host[256];
    size_t n = strcspn(p, "/?#");
    if (n == 0 || n >= sizeof(auth))
        return -1;
    memcpy(auth, p, n);
    auth[n] = '\0';
    int port;
    if (lm_hostport_parse(auth, host, sizeof(host), &port, false) < 0) {
        if (strchr(auth, ':') && auth[0] != '[')
            return -1;
        memcpy(host, auth[0] == '[' ? auth + 1 : auth, n + 1 - (auth[0] == '['));
        host[strcspn(host, "]")] = '\0';
        port = def;
    }
    if (strcmp(host, "127.0.0.1") == 0 || strcasecmp(host, "localhost") == 0 ||
        strcmp(host, "::1") == 0)
        return port;
    return -1;
}

static int
listen_port(const char *listen)
{
    char host[256];
    int port;
    if (!listen || lm_hostport_parse(listen, host, sizeof(host), &port, true) < 0)
        return -1;
    return port;
}

static unsigned
jitter(struct lm_endpoints *r, unsigned ms)
{
    /* ±20%, so endpoints checked together drift apart. */
    unsigned span = ms / 5;
    if (span == 0)
        return ms;
    return ms - span + (unsigned)rand_r(&r->rand_state) % (2 * span + 1);
}

unsigned
lm_endpoints_check_ms(const struct lm_endpoints *r)
{
    return r->check_ms;
}

/* ---- the listed set ---- */

static void
relist(struct lm_endpoints *r)
{
    r->n_list = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < r->n_all && r->n_list < LM_ENDPOINTS_MAX; i++) {
            struct lm_ep *ep = r->all[i];
            if (ep->listed && !ep->removed && ep->pub.discovered == (pass == 1))
                r->list[r->n_list++] = &ep->pub;
        }
}

size_t
lm_endpoints_count(const struct lm_endpoints *r)
{
    return r->n_list;
}

const struct lm_endpoint *
lm_endpoints_at(const struct lm_endpoints *r, size_t i)
{
    return i < r->n_list ? r->list[i] : NULL;
}

static size_t
count_listed(const struct lm_endpoints *r)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_all; i++)
        n += r->all[i]->listed && !r->all[i]->removed;
    return n;
}

/* ---- waiters ---- */

static void
wl_append(struct wlist *l, struct lm_endpoints_waiter *w)
{
    w->next = NULL;
    w->prev = l->tail;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
}

static void
wl_remove(struct wlist *l, struct lm_endpoints_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    w->prev = w->next = NULL;
}

static bool
serving(const struct lm_ep *ep)
{
    return ep->listed && !ep->removed && ep->pub.healthy && !ep->pub.loading &&
           ep->pub.breaker != LM_BREAKER_OPEN;
}

/* Moves up to n of the oldest waiters for models ep serves to the ready
 * list. Their fn runs from wake_ev, never inside the caller's own
 * acquire/release/check. */
static void
wake(struct lm_endpoints *r, struct lm_ep *ep, unsigned n)
{
    bool any = false;
    if (!serving(ep))
        return;
    for (struct lm_endpoints_waiter *w = r->queue.head, *next; w && n > 0; w = next) {
        next = w->next;
        if (lm_models_find(ep->pub.models, ep->pub.n_models, w->model) < 0)
            continue;
        wl_remove(&r->queue, w);
        w->ready = true;
        wl_append(&r->ready, w);
        n--;
        any = true;
    }
    if (any)
        event_active(r->wake_ev, 0, 0);
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_endpoints *r = arg;
    struct lm_endpoints_waiter *w;
    while ((w = r->ready.head)) {
        wl_remove(&r->ready, w);
        r->depth--;
        lm_endpoints_wait_fn *fn = w->fn;
        void *a = w->arg;
        free(w->model);
        free(w);
        fn(a);
    }
}

static unsigned
room(const struct lm_ep *ep)
{
    int n = ep->pub.max_concurrent - (int)ep->pub.in_flight;
    return n > 0 ? (unsigned)n : 0;
}

int
lm_endpoints_wait(struct lm_endpoints *r, const char *model, lm_endpoints_wait_fn *fn, void *arg,
                  struct lm_endpoints_waiter **out)
{
    if (!model || !fn)
        return -EINVAL;
    if (r->depth >= LM_ENDPOINTS_QUEUE_MAX)
        return -EAGAIN;
    struct lm_endpoints_waiter *w = lm_xcalloc(1, sizeof(*w));
    w->r = r;
    w->model = lm_xstrdup(model);
    w->fn = fn;
    w->arg = arg;
    wl_append(&r->queue, w);
    r->depth++;
    *out = w;
    return 0;
}

void
lm_endpoints_wait_cancel(struct lm_endpoints_waiter *w)
{
    if (!w)
        return;
    struct lm_endpoints *r = w->r;
    wl_remove(w->ready ? &r->ready : &r->queue, w);
    r->depth--;
    free(w->model);
    free(w);
}

size_t
lm_endpoints_queue_depth(const struct lm_endpoints *r)
{
    return r->depth;
}

/* ---- selection and breakers ---- */

static bool
skipped(const struct lm_endpoint *e, const struct lm_endpoint *const *skip, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (skip[i] == e)
            return true;
    return false;
}

/* Slots the runtime itself has free now: what /slots said, corrected by
 * our own requests started or finished since. INT32_MAX when unknown. */
static long
runtime_room(const struct lm_ep *ep)
{
    if (ep->pub.free_slots < 0)
        return INT32_MAX;
    return (long)ep->pub.free_slots + (long)ep->in_flight_at_check - (long)ep->pub.in_flight;
}

static bool
has_room(const struct lm_ep *ep)
{
    const struct lm_endpoint *e = &ep->pub;
    if (e->breaker == LM_BREAKER_OPEN || (e->breaker == LM_BREAKER_HALF_OPEN && ep->trial_out))
        return false;
    return (int)e->in_flight < e->max_concurrent && runtime_room(ep) > 0;
}

bool
lm_endpoints_has_model(const struct lm_endpoints *r, const char *model)
{
    for (size_t i = 0; i < r->n_list; i++) {
        const struct lm_endpoint *e = r->list[i];
        if (e->healthy && lm_models_find(e->models, e->n_models, model) >= 0)
            return true;
    }
    return false;
}

int
lm_endpoints_acquire(struct lm_endpoints *r, const char *model,
                     const struct lm_endpoint *const *skip, size_t n_skip, struct lm_slot *out)
{
    struct lm_ep *best = NULL;
    int best_k = -1;
    bool some = false;

    for (size_t i = 0; i < r->n_list; i++) {
        struct lm_ep *ep = lm_ep_of(r->list[i]);
        const struct lm_endpoint *e = &ep->pub;
        if (!e->healthy || skipped(e, skip, n_skip))
            continue;
        int k = lm_models_find(e->models, e->n_models, model);
        if (k < 0)
            continue;
        some = true;
        if (e->loading || !has_room(ep))
            continue;
        if (best) {
            const struct lm_endpoint *b = &best->pub;
            bool l = e->models[k].loaded, bl = b->models[best_k].loaded;
            if (l != bl) {
                if (!l)
                    continue;
            } else if (e->in_flight != b->in_flight) {
                if (e->in_flight > b->in_flight)
                    continue;
            } else if (ep->last_pick >= best->last_pick) {
                continue;
            }
        }
        best = ep;
        best_k = k;
    }
    if (!best)
        return some ? -EAGAIN : -ENOENT;
    best->last_pick = ++r->pick_seq;
    best->pub.in_flight++;
    best->pub.requests_total++;
    if (best->pub.breaker == LM_BREAKER_HALF_OPEN)
        best->trial_out = true;
    out->ep = &best->pub;
    out->model_id = best->pub.models[best_k].id;
    return 0;
}

static void
open_circuit(struct lm_ep *ep)
{
    struct timeval tv = {LM_BREAKER_OPEN_MS / 1000, (LM_BREAKER_OPEN_MS % 1000) * 1000};
    ep->pub.breaker = LM_BREAKER_OPEN;
    ep->trial_out = false;
    evtimer_add(ep->breaker_timer, &tv);
    log_warn("endpoint %s: circuit open after %u consecutive failures; trying again in %d ms",
             ep->pub.name, ep->pub.consecutive_failures, LM_BREAKER_OPEN_MS);
}

void
lm_endpoints_half_open(struct lm_ep *ep)
{
    if (ep->pub.breaker != LM_BREAKER_OPEN)
        return;
    ep->pub.breaker = LM_BREAKER_HALF_OPEN;
    ep->trial_out = false;
    log_info("endpoint %s: circuit half-open; the next request is a trial", ep->pub.name);
    wake(ep->r, ep, 1);
}

static void
on_breaker_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lm_endpoints_half_open(arg);
}

static void
schedule(struct lm_ep *ep, unsigned ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ep->timer, &tv);
}

/* A failure seen by a request: check now, but not more often than every
 * LM_RECHECK_MIN_GAP_MS however many requests fail. */
static void
recheck_soon(struct lm_ep *ep)
{
    if (ep->probe || ep->removed)
        return;
    uint64_t now = lm_now_ms(), at = ep->check_started_ms + LM_RECHECK_MIN_GAP_MS;
    schedule(ep, at > now ? (unsigned)(at - now) : 0);
}

static void
free_retired(struct lm_ep *ep)
{
    for (size_t i = 0; i < ep->n_retired; i++)
        free(ep->retired[i]);
    free(ep->retired);
    ep->retired = NULL;
    ep->n_retired = 0;
}

void
lm_endpoints_release(struct lm_endpoints *r, struct lm_slot *slot, enum lm_outcome outcome)
{
    if (!slot || !slot->ep)
        return;
    struct lm_ep *ep = lm_ep_of(slot->ep);
    struct lm_endpoint *e = &ep->pub;
    slot->ep = NULL;
    slot->model_id = NULL;
    if (e->in_flight > 0)
        e->in_flight--;

    switch (outcome) {
    case LM_OUTCOME_OK:
        /* While open, a late success of an older request proves little. */
        if (e->breaker != LM_BREAKER_OPEN) {
            if (e->breaker == LM_BREAKER_HALF_OPEN)
                log_info("endpoint %s: trial request succeeded; circuit closed", e->name);
            e->breaker = LM_BREAKER_CLOSED;
            e->consecutive_failures = 0;
            ep->trial_out = false;
        }
        break;
    case LM_OUTCOME_FAILED:
        e->failures_total++;
        e->consecutive_failures++;
        if (e->breaker == LM_BREAKER_HALF_OPEN ||
            (e->breaker == LM_BREAKER_CLOSED && e->consecutive_failures >= LM_BREAKER_FAILURES))
            open_circuit(ep);
        recheck_soon(ep);
        break;
    case LM_OUTCOME_CANCELED:
        if (e->breaker == LM_BREAKER_HALF_OPEN)
            ep->trial_out = false;
        break;
    }
    if (e->in_flight == 0)
        free_retired(ep);
    if (ep->removed) {
        if (e->in_flight == 0)
            ep_destroy(ep);
        return;
    }
    wake(r, ep, 1);
}

const char *
lm_endpoints_auth_header(const struct lm_endpoint *ep)
{
    return ep ? lm_ep_of(ep)->auth : NULL;
}

/* ---- checks ---- */

static void
first_round_maybe(struct lm_endpoints *r)
{
    if (r->first_done || !r->first_fn)
        return;
    for (size_t i = 0; i < r->n_all; i++) {
        const struct lm_ep *ep = r->all[i];
        if (!ep->pub.discovered && !ep->removed && !ep->checked)
            return;
    }
    r->first_done = true;
    event_active(r->first_ev, 0, 0);
}

static void
on_first(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_endpoints *r = arg;
    if (r->first_fn)
        r->first_fn(r->first_arg);
}

void
lm_endpoints_on_first_round(struct lm_endpoints *r, void (*fn)(void *arg), void *arg)
{
    r->first_fn = fn;
    r->first_arg = arg;
    r->first_done = false;
    first_round_maybe(r);
}

static void
on_check_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct lm_ep *ep = arg;
    if (ep->probe || ep->removed || !ep->r->up)
        return;
    lm_probe_start(ep, ep->r->up);
}

void
lm_endpoints_check_now(struct lm_endpoints *r)
{
    for (size_t i = 0; i < r->n_all; i++)
        if (!r->all[i]->probe && !r->all[i]->removed)
            schedule(r->all[i], 0);
}

/* Replaces the catalogue with the allowed models of res. Ids that stay keep
 * their string, and ids that go are kept until no request is in flight, so
 * a slot's model_id stays valid until it is released. */
static bool
set_catalogue(struct lm_ep *ep, struct lm_probe_result *res)
{
    struct lm_endpoint *e = &ep->pub;
    struct lm_model *next = lm_xcalloc(res->n_models ? res->n_models : 1, sizeof(*next));
    size_t n = 0;
    bool changed = false;

    for (size_t i = 0; i < res->n_models; i++) {
        struct lm_model *m = &res->models[i];
        if (!lm_model_allowed(&ep->include, &ep->exclude, m->id))
            continue;
        for (size_t k = 0; k < e->n_models; k++)
            if (e->models[k].id && strcmp(e->models[k].id, m->id) == 0) {
                free(m->id);
                m->id = e->models[k].id;
                e->models[k].id = NULL;
                changed |= e->models[k].loaded != m->loaded;
                break;
            }
        next[n++] = *m;
        memset(m, 0, sizeof(*m));
    }
    for (size_t k = 0; k < e->n_models; k++) {
        if (e->models[k].id) {
            changed = true;
            if (e->in_flight > 0) {
                ep->retired = lm_xrealloc(ep->retired, (ep->n_retired + 1) * sizeof(char *));
                ep->retired[ep->n_retired++] = e->models[k].id;
                e->models[k].id = NULL;
            }
        }
    }
    changed |= n != e->n_models;
    lm_models_free(e->models, e->n_models);
    e->models = next;
    e->n_models = n;
    return changed;
}

void
lm_endpoints_checked(struct lm_ep *ep, struct lm_probe_result *res)
{
    struct lm_endpoints *r = ep->r;
    struct lm_endpoint *e = &ep->pub;
    bool was_listed = ep->listed, was_healthy = e->healthy, was_serving = serving(ep);
    bool first = !ep->checked, was_loading = e->loading;
    bool changed = false;
    uint64_t now = lm_now_ms();
    unsigned next;

    e->last_check_ms = now ? now : 1;
    ep->checked = true;
    if (res->ok) {
        if (ep->cfg_kind == LM_KIND_AUTO)
            e->kind = res->kind;
        ep->detected = true;
        e->healthy = true;
        e->loading = res->loading;
        free(e->last_error);
        e->last_error = NULL;
        e->free_slots = res->free_slots;
        ep->in_flight_at_check = e->in_flight;
        e->runtime_running = res->running;
        e->runtime_waiting = res->waiting;
        if (res->models_known)
            changed = set_catalogue(ep, res);
        if (res->truncated && changed)
            log_warn("endpoint %s lists more than %d models; the rest are ignored", e->name,
                     LM_ENDPOINT_MAX_MODELS);
        ep->last_ok_ms = now;
        ep->check_failures = 0;
        if (e->discovered && !ep->listed && count_listed(r) < LM_ENDPOINTS_MAX) {
            ep->listed = true;
            log_info("discovered %s at %s (%s, %zu model(s))", e->name, e->url,
                     lm_config_kind_name(e->kind), e->n_models);
        }
        next = jitter(r, r->check_ms);
    } else {
        e->healthy = false;
        e->loading = false;
        free(e->last_error);
        e->last_error = lm_xstrdup(res->err);
        e->free_slots = e->runtime_running = e->runtime_waiting = -1;
        if (ep->cfg_kind == LM_KIND_AUTO)
            ep->detected = false; /* it may come back as something else */
        if (ep->check_failures < 30)
            ep->check_failures++;
        if (e->discovered && ep->listed &&
            now - ep->last_ok_ms > (uint64_t)LM_DISCOVERY_GONE_CHECKS * r->check_ms) {
            ep->listed = false;
            log_info("%s at %s is gone: %s", e->name, e->url, e->last_error);
        }
        if (ep->listed) {
            /* Retry sooner, backing off to the normal period. */
            uint64_t ms = (uint64_t)LM_CHECK_RETRY_MIN_MS << (ep->check_failures - 1);
            next = jitter(r, ms < r->check_ms ? (unsigned)ms : r->check_ms);
        } else {
            next = jitter(r, r->check_ms);
        }
    }
    if (ep->listed != was_listed)
        relist(r);
    if (ep->listed && (e->healthy != was_healthy || (first && !e->healthy))) {
        if (e->healthy)
            log_info("endpoint %s (%s) is up%s: %zu model(s)", e->name,
                     lm_config_kind_name(e->kind), e->loading ? " and loading" : "", e->n_models);
        else
            log_warn("endpoint %s is down: %s", e->name, e->last_error);
    } else if (ep->listed && e->healthy && was_loading && !e->loading) {
        log_info("endpoint %s finished loading: %zu model(s)", e->name, e->n_models);
    }
    if (ep->listed && serving(ep) && (!was_serving || changed))
        wake(r, ep, room(ep));
    schedule(ep, next);
    first_round_maybe(r);
}

/* ---- lifecycle ---- */

static struct lm_ep *
ep_new(struct lm_endpoints *r, const char *name, const char *url, enum lm_endpoint_kind kind)
{
    struct lm_ep *ep = lm_xcalloc(1, sizeof(*ep));
    ep->r = r;
    ep->pub.name = lm_xstrdup(name);
    ep->pub.url = lm_xstrdup(url);
    size_t n = strlen(ep->pub.url);
    while (n > 0 && ep->pub.url[n - 1] == '/')
        ep->pub.url[--n] = '\0';
    ep->cfg_kind = ep->pub.kind = kind;
    ep->detected = kind != LM_KIND_AUTO;
    ep->pub.free_slots = ep->pub.runtime_running = ep->pub.runtime_waiting = -1;
    ep->pub.api_key_env = lm_xstrdup("");
    ep->port = -1;
    ep->timer = evtimer_new(r->base, on_check_timer, ep);
    ep->breaker_timer = evtimer_new(r->base, on_breaker_timer, ep);
    if (!ep->timer || !ep->breaker_timer)
        abort();
    r->all = lm_xrealloc(r->all, (r->n_all + 1) * sizeof(*r->all));
    r->all[r->n_all++] = ep;
    return ep;
}

static void
ep_set_config(struct lm_ep *ep, const struct lm_cfg_endpoint *c)
{
    ep->pub.max_concurrent = c->max_concurrent > 0 ? c->max_concurrent : 1;
    ep->pub.share = c->share;
    free(ep->pub.api_key_env);
    ep->pub.api_key_env = lm_xstrdup(c->api_key_env ? c->api_key_env : "");
    strv_clear(&ep->include);
    strv_clear(&ep->exclude);
    strv_copy(&ep->include, &c->models_include);
    strv_copy(&ep->exclude, &c->models_exclude);
    wipe_free(ep->auth);
    ep->auth = auth_from_env(ep->pub.api_key_env, ep->pub.name);
}

static void
ep_destroy(struct lm_ep *ep)
{
    struct lm_endpoints *r = ep->r;
    for (size_t i = 0; i < r->n_all; i++)
        if (r->all[i] == ep) {
            memmove(&r->all[i], &r->all[i + 1], (r->n_all - i - 1) * sizeof(*r->all));
            r->n_all--;
            break;
        }
    lm_probe_cancel(ep);
    event_free(ep->timer);
    event_free(ep->breaker_timer);
    free(ep->pub.name);
    free(ep->pub.url);
    free(ep->pub.api_key_env);
    free(ep->pub.last_error);
    lm_models_free(ep->pub.models, ep->pub.n_models);
    free_retired(ep);
    strv_clear(&ep->include);
    strv_clear(&ep->exclude);
    wipe_free(ep->auth);
    free(ep);
}

/* Out of the registry now; freed at once or after its last release. */
static void
ep_retire(struct lm_ep *ep)
{
    ep->removed = true;
    ep->listed = false;
    lm_probe_cancel(ep);
    evtimer_del(ep->timer);
    evtimer_del(ep->breaker_timer);
    if (ep->pub.in_flight == 0)
        ep_destroy(ep);
}

static struct lm_ep *
find_configured(struct lm_endpoints *r, const char *name)
{
    for (size_t i = 0; i < r->n_all; i++)
        if (!r->all[i]->removed && !r->all[i]->pub.discovered &&
            strcmp(r->all[i]->pub.name, name) == 0)
            return r->all[i];
    return NULL;
}

static struct lm_ep *
find_scanner(struct lm_endpoints *r, int port)
{
    for (size_t i = 0; i < r->n_all; i++)
        if (!r->all[i]->removed && r->all[i]->pub.discovered && r->all[i]->port == port)
            return r->all[i];
    return NULL;
}

/* Forget what was learnt about a runtime that is now somewhere else. */
static void
ep_reset(struct lm_ep *ep)
{
    struct lm_endpoint *e = &ep->pub;
    lm_probe_cancel(ep);
    e->healthy = e->loading = false;
    free(e->last_error);
    e->last_error = NULL;
    e->last_check_ms = 0;
    e->free_slots = e->runtime_running = e->runtime_waiting = -1;
    e->kind = ep->cfg_kind;
    ep->detected = ep->cfg_kind != LM_KIND_AUTO;
    ep->check_failures = 0;
    e->breaker = LM_BREAKER_CLOSED;
    e->consecutive_failures = 0;
    ep->trial_out = false;
    evtimer_del(ep->breaker_timer);
    struct lm_probe_result none;
    lm_probe_result_init(&none);
    set_catalogue(ep, &none);
}

static void
apply_config(struct lm_endpoints *r, const struct lm_config *cfg)
{
    struct lm_ep **keep =
        lm_xcalloc(r->n_all + cfg->n_endpoints + LM_ARRAY_LEN(scan_ports) + 1, sizeof(*keep));
    size_t nk = 0;
    int skip_ports[LM_ENDPOINTS_MAX + 3];
    size_t ns = 0;

    for (size_t i = 0; i < cfg->n_endpoints; i++) {
        const struct lm_cfg_endpoint *c = &cfg->endpoints[i];
        if (i >= LM_ENDPOINTS_MAX) {
            log_warn("more than %d endpoints configured; %s and later ones are ignored",
                     LM_ENDPOINTS_MAX, c->name);
            break;
        }
        struct lm_ep *ep = find_configured(r, c->name);
        if (ep && (strcmp(ep->pub.url, c->url) != 0 || ep->cfg_kind != c->kind)) {
            /* Same name, another runtime: start over. */
            free(ep->pub.url);
            ep->pub.url = lm_xstrdup(c->url);
            size_t n = strlen(ep->pub.url);
            while (n > 0 && ep->pub.url[n - 1] == '/')
                ep->pub.url[--n] = '\0';
            ep->cfg_kind = c->kind;
            ep_reset(ep);
            schedule(ep, 0);
        } else if (ep && (!strv_equal(&ep->include, &c->models_include) ||
                          !strv_equal(&ep->exclude, &c->models_exclude))) {
            lm_probe_cancel(ep);
            schedule(ep, 0);
        } else if (!ep) {
            ep = ep_new(r, c->name, c->url, c->kind);
            ep->listed = true;
            schedule(ep, 0);
        }
        ep_set_config(ep, c);
        keep[nk++] = ep;
        int port = loopback_port(c->url);
        if (port > 0)
            skip_ports[ns++] = port;
    }
    skip_ports[ns++] = listen_port(cfg->gateway.listen);
    skip_ports[ns++] = listen_port(cfg->admin.listen);
    skip_ports[ns++] = listen_port(cfg->mesh.listen);

    for (size_t p = 0; cfg->discovery.scan_local && p < LM_ARRAY_LEN(scan_ports); p++) {
        int port = scan_ports[p];
        bool skip = false;
        for (size_t k = 0; k < ns; k++)
            skip |= skip_ports[k] == port;
        char name[32], url[64];
        snprintf(name, sizeof(name), "discovered-%d", port);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
        if (skip || find_configured(r, name))
            continue;
        struct lm_ep *ep = find_scanner(r, port);
        if (!ep) {
            ep = ep_new(r, name, url, LM_KIND_AUTO);
            ep->pub.discovered = true;
            ep->port = port;
            schedule(ep, 0);
        }
        struct lm_cfg_endpoint dc = {
            .max_concurrent = 4,
            .models_include = {(char *[]){"*"}, 1},
            .api_key_env = "",
            .share = true,
        };
        ep_set_config(ep, &dc);
        keep[nk++] = ep;
    }

    /* Everything not kept goes; the kept ones take the config's order,
     * removed ones still busy stay behind them until their last release. */
    for (size_t i = 0; i < r->n_all;) {
        struct lm_ep *ep = r->all[i];
        bool kept = ep->removed;
        for (size_t k = 0; k < nk && !kept; k++)
            kept = keep[k] == ep;
        if (!kept) {
            log_info("endpoint %s removed%s", ep->pub.name,
                     ep->pub.in_flight ? "; freed after its requests finish" : "");
            size_t before = r->n_all;
            ep_retire(ep);
            if (r->n_all < before)
                continue;
        }
        i++;
    }
    struct lm_ep **next = lm_xcalloc(r->n_all + 1, sizeof(*next));
    size_t o = 0;
    for (size_t k = 0; k < nk; k++)
        next[o++] = keep[k];
    for (size_t i = 0; i < r->n_all; i++)
        if (r->all[i]->removed)
            next[o++] = r->all[i];
    free(r->all);
    r->all = next;
    r->n_all = o;
    free(keep);
    relist(r);
}

int
lm_endpoints_new(struct lm_endpoints **out, struct event_base *base, struct lm_upstream *up,
                 const struct lm_config *cfg)
{
    struct lm_endpoints *r = lm_xcalloc(1, sizeof(*r));
    r->base = base;
    r->up = up;
    r->check_ms = LM_ENDPOINTS_CHECK_MS;
    /* A hidden knob for tests, so that they need not wait 10 s for a check. */
    const char *env = getenv("LABMAN_CHECK_MS");
    if (env && *env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (!*end && v >= CHECK_MS_MIN && v <= CHECK_MS_MAX)
            r->check_ms = (unsigned)v;
        else
            log_warn("LABMAN_CHECK_MS is not a number of ms in %d..%d; using %u", CHECK_MS_MIN,
                     CHECK_MS_MAX, r->check_ms);
    }
    r->rand_state = (unsigned)(lm_now_us() ^ (uint64_t)getpid());
    r->wake_ev = event_new(base, -1, 0, on_wake, r);
    r->first_ev = event_new(base, -1, 0, on_first, r);
    if (!r->wake_ev || !r->first_ev) {
        if (r->wake_ev)
            event_free(r->wake_ev);
        if (r->first_ev)
            event_free(r->first_ev);
        free(r);
        return -ENOMEM;
    }
    apply_config(r, cfg);
    *out = r;
    return 0;
}

void
lm_endpoints_reconfigure(struct lm_endpoints *r, const struct lm_config *cfg)
{
    apply_config(r, cfg);
    first_round_maybe(r);
}

void
lm_endpoints_free(struct lm_endpoints *r)
{
    if (!r)
        return;
    struct lm_endpoints_waiter *w;
    while ((w = r->queue.head))
        lm_endpoints_wait_cancel(w);
    while ((w = r->ready.head))
        lm_endpoints_wait_cancel(w);
    while (r->n_all > 0)
        ep_destroy(r->all[r->n_all - 1]);
    free(r->all);
    event_free(r->wake_ev);
    event_free(r->first_ev);
    free(r);
}

/* ---- JSON and metrics ---- */

static json_t *
str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *
int_or_null(long long v)
{
    return v >= 0 ? json_integer(v) : json_null();
}

json_t *
lm_endpoints_json(const struct lm_endpoints *r)
{
    json_t *arr = json_array();
    uint64_t now = lm_now_ms();
    for (size_t i = 0; i < r->n_list; i++) {
        const struct lm_endpoint *e = r->list[i];
        const struct lm_ep *ep = lm_ep_of(e);
        size_t loaded = 0;
        for (size_t k = 0; k < e->n_models; k++)
            loaded += e->models[k].loaded;
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(e->name));
        json_object_set_new(o, "url", json_string(e->url));
        json_object_set_new(
            o, "kind",
            json_string(e->kind != LM_KIND_AUTO ? lm_config_kind_name(e->kind) : "unknown"));
        json_object_set_new(o, "configured_kind", json_string(lm_config_kind_name(ep->cfg_kind)));
        json_object_set_new(o, "discovered", json_boolean(e->discovered));
        json_object_set_new(o, "share", json_boolean(e->share));
        json_object_set_new(o, "healthy", json_boolean(e->healthy));
        json_object_set_new(o, "loading", json_boolean(e->loading));
        json_object_set_new(o, "last_error", str_or_null(e->last_error));
        json_object_set_new(o, "last_check_age_ms",
                            e->last_check_ms ? json_integer((json_int_t)(now - e->last_check_ms))
                                             : json_null());
        json_object_set_new(o, "in_flight", json_integer(e->in_flight));
        json_object_set_new(o, "max_concurrent", json_integer(e->max_concurrent));
        json_object_set_new(o, "free_slots", int_or_null(e->free_slots));
        json_object_set_new(o, "runtime_running", int_or_null(e->runtime_running));
        json_object_set_new(o, "runtime_waiting", int_or_null(e->runtime_waiting));
        json_object_set_new(o, "breaker", json_string(lm_breaker_name(e->breaker)));
        json_object_set_new(o, "failures", json_integer(e->consecutive_failures));
        json_object_set_new(o, "requests_total", json_integer((json_int_t)e->requests_total));
        json_object_set_new(o, "failures_total", json_integer((json_int_t)e->failures_total));
        json_object_set_new(o, "models", json_integer((json_int_t)e->n_models));
        json_object_set_new(o, "models_loaded", json_integer((json_int_t)loaded));
        json_object_set_new(o, "api_key_env", str_or_null(*e->api_key_env ? e->api_key_env : NULL));
        json_array_append_new(arr, o);
    }
    return json_pack("{s:o,s:I}", "endpoints", arr, "queue_depth", (json_int_t)r->depth);
}

json_t *
lm_endpoints_models_json(const struct lm_endpoints *r)
{
    json_t *arr = json_array(), *index = json_object();
    for (size_t i = 0; i < r->n_list; i++) {
        const struct lm_endpoint *e = r->list[i];
        for (size_t k = 0; k < e->n_models; k++) {
            const struct lm_model *m = &e->models[k];
            json_t *o = json_object_get(index, m->id);
            if (!o) {
                o = json_object();
                json_object_set_new(o, "id", json_string(m->id));
                json_object_set_new(o, "aliases", json_array());
                json_object_set_new(o, "endpoints", json_array());
                json_object_set_new(o, "available", json_false());
                json_object_set_new(o, "loaded", json_false());
                json_object_set_new(o, "context_length", json_null());
                json_object_set_new(o, "family", json_null());
                json_object_set_new(o, "params", json_null());
                json_object_set_new(o, "quant", json_null());
                json_object_set_new(o, "digest", json_null());
                json_object_set(index, m->id, o);
                json_array_append_new(arr, o);
            }
            json_t *al = json_object_get(o, "aliases");
            if (m->alias && json_array_size(al) == 0)
                json_array_append_new(al, json_string(m->alias));
            json_array_append_new(json_object_get(o, "endpoints"), json_string(e->name));
            if (e->healthy)
                json_object_set_new(o, "available", json_true());
            if (m->loaded)
                json_object_set_new(o, "loaded", json_true());
            if (m->context_length > json_integer_value(json_object_get(o, "context_length")))
                json_object_set_new(o, "context_length", json_integer(m->context_length));
            static const char *const keys[] = {"family", "params", "quant", "digest"};
            const char *vals[] = {m->family, m->param_size, m->quant, m->digest};
            for (size_t f = 0; f < LM_ARRAY_LEN(keys); f++)
                if (vals[f] && json_is_null(json_object_get(o, keys[f])))
                    json_object_set_new(o, keys[f], json_string(vals[f]));
        }
    }
    json_decref(index);
    return json_pack("{s:o}", "models", arr);
}

static void
family(struct lm_buf *out, const char *name, const char *type, const char *help)
{
    lm_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
sample(struct lm_buf *out, const char *name, const struct lm_endpoint *e, const char *extra,
       unsigned long long v)
{
    lm_buf_printf(out, "%s{endpoint=\"", name);
    lm_buf_prom_label(out, e->name);
    lm_buf_printf(out, "\"%s} %llu\n", extra ? extra : "", v);
}

void
lm_endpoints_metrics(const struct lm_endpoints *r, struct lm_buf *out)
{
    if (r->n_list > 0) {
        family(out, "labman_endpoint_up", "gauge",
               "Whether the endpoint answered its last health check.");
        for (size_t i = 0; i < r->n_list; i++) {
            lm_buf_printf(out, "labman_endpoint_up{endpoint=\"");
            lm_buf_prom_label(out, r->list[i]->name);
            lm_buf_printf(out, "\",kind=\"%s\"} %d\n", lm_config_kind_name(r->list[i]->kind),
                          r->list[i]->healthy);
        }
        family(out, "labman_endpoint_loading", "gauge",
               "Whether the endpoint is up but still loading its model.");
        for (size_t i = 0; i < r->n_list; i++)
            sample(out, "labman_endpoint_loading", r->list[i], NULL, r->list[i]->loading);
        family(out, "labman_endpoint_in_flight", "gauge",
               "Requests labman has running on the endpoint.");
        for (size_t i = 0; i < r->n_list; i++)
            sample(out, "labman_endpoint_in_flight", r->list[i], NULL, r->list[i]->in_flight);
        family(out, "labman_endpoint_models", "gauge",
               "Models the endpoint serves, loaded in memory or only on disk.");
        for (size_t i = 0; i < r->n_list; i++) {
            const struct lm_endpoint *e = r->list[i];
            size_t loaded = 0;
            for (size_t k = 0; k < e->n_models; k++)
                loaded += e->models[k].loaded;
            sample(out, "labman_endpoint_models", e, ",state=\"loaded\"", loaded);
            sample(out, "labman_endpoint_models", e, ",state=\"on_disk\"", e->n_models - loaded);
        }
        family(out, "labman_endpoint_circuit_state", "gauge",
               "Circuit breaker of the endpoint: 0 closed, 1 open, 2 half-open.");
        for (size_t i = 0; i < r->n_list; i++)
            sample(out, "labman_endpoint_circuit_state", r->list[i], NULL, r->list[i]->breaker);
        family(out, "labman_endpoint_requests_total", "counter", "Requests sent to the endpoint.");
        for (size_t i = 0; i < r->n_list; i++)
            sample(out, "labman_endpoint_requests_total", r->list[i], NULL,
                   r->list[i]->requests_total);
        family(out, "labman_endpoint_failures_total", "counter",
               "Requests to the endpoint that failed (connect error, 5xx, 429, timeout).");
        for (size_t i = 0; i < r->n_list; i++)
            sample(out, "labman_endpoint_failures_total", r->list[i], NULL,
                   r->list[i]->failures_total);
    }
    family(out, "labman_queue_depth", "gauge", "Requests waiting for a free endpoint.");
    lm_buf_printf(out, "labman_queue_depth %zu\n", r->depth);
}
