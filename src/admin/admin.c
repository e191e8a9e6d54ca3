#include "admin/admin.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#define LM_LOG_MODULE "admin"
#include "log/log.h"

struct route {
    char *path;
    unsigned methods;
    lm_admin_route_fn *fn;
    void *arg;
};

struct hook {
    void *fn;
    void *arg;
};

struct lm_admin {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    char address[80];
    char *version;
    enum lm_admin_state state;
    bool have_token;
    uint8_t token_hash[crypto_generichash_BYTES]; /* the token itself is not kept */
    unsigned in_flight;
    double start_wall; /* unix seconds */
    uint64_t start_mono_ms;

    struct route routes[LM_ADMIN_MAX_ROUTES];
    size_t n_routes;
    struct hook *metrics, *status;
    size_t n_metrics, n_status;
};

/* One per request handed to a route: counts it as in flight until it has
 * been written out or its connection is gone, whichever comes first. */
struct pending {
    struct lm_admin *a;
    struct evhttp_connection *evcon;
};

static void
set_err(char *err, size_t errcap, const char *fmt, ...) LM_PRINTF(3, 4);

static void
set_err(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

const char *
lm_admin_state_name(enum lm_admin_state state)
{
    switch (state) {
    case LM_ADMIN_STARTING:
        return "starting";
    case LM_ADMIN_READY:
        return "ready";
    case LM_ADMIN_DRAINING:
        return "draining";
    }
    return "?";
}

int
lm_admin_token_read(const char *path, char **out, char *err, size_t errcap)
{
    char *text = NULL;
    size_t len = 0;
    int rc = lm_file_read(path, LM_ADMIN_TOKEN_MAX + 2, &text, &len);
    if (rc == -EFBIG) {
        set_err(err, errcap, "token_file %s is larger than %u bytes", path, LM_ADMIN_TOKEN_MAX);
        return -EINVAL;
    }
    if (rc < 0) {
        set_err(err, errcap, "cannot read token_file %s: %s", path, strerror(-rc));
        return rc;
    }
    size_t b = 0, e = len;
    while (b < e && (text[b] == ' ' || text[b] == '\t' || text[b] == '\r' || text[b] == '\n'))
        b++;
    while (e > b && (text[e - 1] == ' ' || text[e - 1] == '\t' || text[e - 1] == '\r' ||
                     text[e - 1] == '\n'))
        e--;
    for (size_t i = b; i < e; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c <= 0x20 || c >= 0x7f)
            e = b; /* reject below */
    }
    if (e == b || e - b > LM_ADMIN_TOKEN_MAX) {
        sodium_memzero(text, len);
        free(text);
        set_err(err, errcap,
                "token_file %s must hold one token of 1..%u printable characters without spaces",
                path, LM_ADMIN_TOKEN_MAX);
        return -EINVAL;
    }
    *out = lm_xstrndup(text + b, e - b);
    sodium_memzero(text, len);
    free(text);
    return 0;
}

static int
load_token(const char *listen, const char *token_file, bool *have, uint8_t *hash, char *err,
           size_t errcap)
{
    if (!token_file || !*token_file) {
        if (!lm_hostport_is_loopback(listen)) {
            set_err(err, errcap,
                    "admin listen %s is not a loopback address and [admin] token_file is not "
                    "set: refusing to open the admin API to the network without a token",
                    listen);
            return -EPERM;
        }
        *have = false;
        return 0;
    }
    char *tok = NULL;
    int rc = lm_admin_token_read(token_file, &tok, err, errcap);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(token_file, &st) == 0 && (st.st_mode & 077))
        log_warn("token_file %s is accessible by group or others (mode %04o); chmod 600 it",
                 token_file, (unsigned)(st.st_mode & 07777));
    crypto_generichash(hash, crypto_generichash_BYTES, (const uint8_t *)tok, strlen(tok), NULL, 0);
    sodium_memzero(tok, strlen(tok));
    free(tok);
    *have = true;
    return 0;
}

int
lm_admin_set_token_file(struct lm_admin *a, const char *token_file, char *err, size_t errcap)
{
    bool have;
    uint8_t hash[crypto_generichash_BYTES];
    int rc = load_token(a->address, token_file, &have, hash, err, errcap);
    if (rc < 0)
        return rc;
    a->have_token = have;
    memcpy(a->token_hash, hash, sizeof(hash));
    return 0;
}

/* Compares hashes, not tokens, so that neither the length nor the content of
 * the token leaks through timing. */
static bool
authorized(struct lm_admin *a, struct evhttp_request *req)
{
    if (!a->have_token)
        return true;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    uint8_t hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof(hash), (const uint8_t *)tok, strlen(tok), NULL, 0);
    return sodium_memcmp(hash, a->token_hash, sizeof(hash)) == 0;
}

void
lm_admin_reply_text(struct evhttp_request *req, int code, const char *content_type,
                    const char *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *buf = evbuffer_new();
    if (!buf) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add(buf, body, len);
    evhttp_send_reply(req, code, NULL, buf);
    evbuffer_free(buf);
}

void
lm_admin_reply_json(struct evhttp_request *req, int code, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(body);
    if (!s) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    size_t n = strlen(s);
    s = lm_xrealloc(s, n + 2);
    s[n++] = '\n';
    lm_admin_reply_text(req, code, "application/json", s, n);
    free(s);
}

void
lm_admin_reply_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    lm_admin_reply_json(req, code,
                        json_pack("{s:{s:i,s:s}}", "error", "code", code, "message", msg));
}

/* ---- built-in routes ---- */

static void
route_healthz(struct evhttp_request *req, void *arg)
{
    (void)arg;
    lm_admin_reply_text(req, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void
route_readyz(struct evhttp_request *req, void *arg)
{
    struct lm_admin *a = arg;
    if (a->state == LM_ADMIN_READY)
        lm_admin_reply_text(req, 200, "text/plain; charset=utf-8", "ready\n", 6);
    else
        lm_admin_reply_text(req, 503, "text/plain; charset=utf-8", "not ready\n", 10);
}

static long
rss_bytes(void)
{
    char *text = NULL;
    size_t len;
    long pages = 0, rss = 0;
    if (lm_file_read("/proc/self/statm", 4096, &text, &len) == 0) {
        if (sscanf(text, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        free(text);
    }
    return rss * sysconf(_SC_PAGESIZE);
}

static int
open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0; /* not counting the directory we read */
}

/* Label values are escaped as the text format asks: \\, \" and \n. */
static void
label_value(struct lm_buf *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            lm_buf_printf(out, "\\%c", *s);
        else if (*s == '\n')
            lm_buf_puts(out, "\\n");
        else
            lm_buf_append(out, s, 1);
    }
}

static void
own_metrics(struct lm_admin *a, struct lm_buf *out)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;

    lm_buf_puts(out, "# HELP labman_build_info labmand build; the value is always 1.\n"
                     "# TYPE labman_build_info gauge\n"
                     "labman_build_info{version=\"");
    label_value(out, a->version);
    lm_buf_puts(out, "\"} 1\n");
    lm_buf_printf(out,
                  "# HELP labman_up 1 while labmand serves.\n"
                  "# TYPE labman_up gauge\n"
                  "labman_up 1\n"
                  "# HELP process_start_time_seconds Start time of the process since unix "
                  "epoch in seconds.\n"
                  "# TYPE process_start_time_seconds gauge\n"
                  "process_start_time_seconds %.3f\n"
                  "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                  "# TYPE process_resident_memory_bytes gauge\n"
                  "process_resident_memory_bytes %ld\n"
                  "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
                  "seconds.\n"
                  "# TYPE process_cpu_seconds_total counter\n"
                  "process_cpu_seconds_total %.6f\n"
                  "# HELP process_open_fds Number of open file descriptors.\n"
                  "# TYPE process_open_fds gauge\n"
                  "process_open_fds %d\n",
                  a->start_wall, rss_bytes(), cpu, open_fds());
}

static void
route_metrics(struct evhttp_request *req, void *arg)
{
    struct lm_admin *a = arg;
    struct lm_buf out;
    lm_buf_init(&out, LM_ADMIN_METRICS_MAX);
    own_metrics(a, &out);
    for (size_t i = 0; i < a->n_metrics; i++)
        ((lm_admin_metrics_fn *)a->metrics[i].fn)(&out, a->metrics[i].arg);
    lm_admin_reply_text(req, 200, "text/plain; version=0.0.4; charset=utf-8",
                        out.data ? out.data : "", out.len);
    lm_buf_release(&out);
}

static void
route_status(struct evhttp_request *req, void *arg)
{
    struct lm_admin *a = arg;
    json_t *st = json_pack("{s:s,s:I,s:I,s:s,s:{s:s}}", "version", a->version, "pid",
                           (json_int_t)getpid(), "uptime_s",
                           (json_int_t)((lm_now_ms() - a->start_mono_ms) / 1000), "state",
                           lm_admin_state_name(a->state), "listen", "admin", a->address);
    for (size_t i = 0; i < a->n_status; i++)
        ((lm_admin_status_fn *)a->status[i].fn)(st, a->status[i].arg);
    lm_admin_reply_json(req, 200, st);
}

/* ---- dispatch ---- */

static void
pending_done(struct evhttp_request *req, void *arg)
{
    (void)req;
    struct pending *p = arg;
    evhttp_connection_set_closecb(p->evcon, NULL, NULL);
    p->a->in_flight--;
    free(p);
}

static void
pending_conn_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct pending *p = arg;
    p->a->in_flight--;
    free(p);
}

static void
track(struct lm_admin *a, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon)
        return;
    struct pending *p = lm_xmalloc(sizeof(*p));
    p->a = a;
    p->evcon = evcon;
    a->in_flight++;
    evhttp_request_set_on_complete_cb(req, pending_done, p);
    evhttp_connection_set_closecb(evcon, pending_conn_closed, p);
}

static const struct {
    unsigned m;
    const char *name;
} method_names[] = {{EVHTTP_REQ_GET, "GET"},       {EVHTTP_REQ_HEAD, "HEAD"},
                    {EVHTTP_REQ_POST, "POST"},     {EVHTTP_REQ_PUT, "PUT"},
                    {EVHTTP_REQ_DELETE, "DELETE"}, {EVHTTP_REQ_PATCH, "PATCH"},
                    {EVHTTP_REQ_OPTIONS, "OPTIONS"}};

static const char *
method_name(unsigned m)
{
    for (size_t i = 0; i < LM_ARRAY_LEN(method_names); i++)
        if (method_names[i].m == m)
            return method_names[i].name;
    return "?";
}

static void
allow_header(struct evhttp_request *req, unsigned methods)
{
    char buf[80] = ""; /* all seven names fit */
    for (size_t i = 0; i < LM_ARRAY_LEN(method_names); i++) {
        if (!(methods & method_names[i].m))
            continue;
        if (buf[0])
            strcat(buf, ", ");
        strcat(buf, method_names[i].name);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", buf);
}

static void
dispatch(struct evhttp_request *req, void *arg)
{
    struct lm_admin *a = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    unsigned method = (unsigned)evhttp_request_get_command(req);

    track(a, req);
    if (!path || !*path) {
        lm_admin_reply_error(req, 400, "bad request target");
        return;
    }
    char esc[160];
    lm_escape(esc, sizeof(esc), path, strlen(path));
    log_debug("%s %s", method_name(method), esc);

    if (strcmp(path, "/healthz") != 0 && !authorized(a, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer realm=\"labman-admin\"");
        lm_admin_reply_error(req, 401, "missing or wrong bearer token");
        return;
    }
    for (size_t i = 0; i < a->n_routes; i++) {
        struct route *r = &a->routes[i];
        if (strcmp(r->path, path) != 0)
            continue;
        unsigned m = method == EVHTTP_REQ_HEAD ? EVHTTP_REQ_GET : method;
        if (!(r->methods & m)) {
            allow_header(req, r->methods | (r->methods & EVHTTP_REQ_GET ? EVHTTP_REQ_HEAD : 0));
            lm_admin_reply_error(req, 405, "method not allowed on %s", esc);
            return;
        }
        r->fn(req, r->arg);
        return;
    }
    lm_admin_reply_error(req, 404, "no such admin route: %s", esc);
}

int
lm_admin_route(struct lm_admin *a, const char *path, unsigned methods, lm_admin_route_fn *fn,
               void *arg)
{
    for (size_t i = 0; i < a->n_routes; i++)
        if (strcmp(a->routes[i].path, path) == 0)
            return -EEXIST;
    if (a->n_routes == LM_ADMIN_MAX_ROUTES)
        return -ENOSPC;
    a->routes[a->n_routes++] = (struct route){lm_xstrdup(path), methods, fn, arg};
    return 0;
}

static void
add_hook(struct hook **v, size_t *n, void *fn, void *arg)
{
    *v = lm_xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[*n].fn = fn;
    (*v)[*n].arg = arg;
    (*n)++;
}

void
lm_admin_add_metrics(struct lm_admin *a, lm_admin_metrics_fn *fn, void *arg)
{
    add_hook(&a->metrics, &a->n_metrics, (void *)fn, arg);
}

void
lm_admin_add_status(struct lm_admin *a, lm_admin_status_fn *fn, void *arg)
{
    add_hook(&a->status, &a->n_status, (void *)fn, arg);
}

void
lm_admin_set_state(struct lm_admin *a, enum lm_admin_state state)
{
    a->state = state;
}

enum lm_admin_state
lm_admin_get_state(const struct lm_admin *a)
{
    return a->state;
}

const char *
lm_admin_address(const struct lm_admin *a)
{
    return a->address;
}

unsigned
lm_admin_in_flight(const struct lm_admin *a)
{
    return a->in_flight;
}

void
lm_admin_stop_listening(struct lm_admin *a)
{
    if (a->sock) {
        evhttp_del_accept_socket(a->http, a->sock);
        a->sock = NULL;
    }
}

static void
format_bound(struct lm_admin *a)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN];
    evutil_socket_t fd = evhttp_bound_socket_get_fd(a->sock);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        snprintf(a->address, sizeof(a->address), "%s:%u", host, ntohs(s4->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        snprintf(a->address, sizeof(a->address), "[%s]:%u", host, ntohs(s6->sin6_port));
    }
}

int
lm_admin_new(struct lm_admin **out, struct event_base *base, const struct lm_admin_opts *opts,
             char *err, size_t errcap)
{
    char host[256];
    int port, rc;

    *out = NULL;
    if (sodium_init() < 0) {
        set_err(err, errcap, "libsodium failed to initialise");
        return -EIO;
    }
    if (lm_hostport_parse(opts->listen, host, sizeof(host), &port, true) < 0) {
        set_err(err, errcap, "invalid admin listen address \"%s\"", opts->listen);
        return -EINVAL;
    }
    struct lm_admin *a = lm_xcalloc(1, sizeof(*a));
    a->base = base;
    a->version = lm_xstrdup(opts->version ? opts->version : "unknown");
    a->state = LM_ADMIN_STARTING;
    snprintf(a->address, sizeof(a->address), "%s", opts->listen);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    a->start_wall = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
    a->start_mono_ms = lm_now_ms();

    rc = load_token(opts->listen, opts->token_file, &a->have_token, a->token_hash, err, errcap);
    if (rc < 0)
        goto fail;

    a->http = evhttp_new(base);
    if (!a->http) {
        set_err(err, errcap, "cannot create the admin HTTP server");
        rc = -ENOMEM;
        goto fail;
    }
    evhttp_set_max_headers_size(a->http, LM_ADMIN_MAX_HEADERS);
    evhttp_set_max_body_size(a->http, LM_ADMIN_MAX_BODY);
    evhttp_set_timeout(a->http, LM_ADMIN_TIMEOUT_S);
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(a->http, dispatch, a);

    errno = 0;
    a->sock = evhttp_bind_socket_with_handle(a->http, host, (ev_uint16_t)port);
    if (!a->sock) {
        rc = errno ? -errno : -EADDRNOTAVAIL;
        set_err(err, errcap, "cannot listen on admin address %s: %s", opts->listen,
                errno ? strerror(errno) : "bind failed");
        goto fail;
    }
    format_bound(a);

    lm_admin_route(a, "/healthz", EVHTTP_REQ_GET, route_healthz, a);
    lm_admin_route(a, "/readyz", EVHTTP_REQ_GET, route_readyz, a);
    lm_admin_route(a, "/metrics", EVHTTP_REQ_GET, route_metrics, a);
    lm_admin_route(a, "/admin/v1/status", EVHTTP_REQ_GET, route_status, a);
    *out = a;
    return 0;
fail:
    lm_admin_free(a);
    return rc;
}

void
lm_admin_free(struct lm_admin *a)
{
    if (!a)
        return;
    /* Frees open connections too; their pending entries go via the closecb,
     * which only touches a->in_flight, so a must outlive this call. */
    if (a->http)
        evhttp_free(a->http);
    for (size_t i = 0; i < a->n_routes; i++)
        free(a->routes[i].path);
    free(a->metrics);
    free(a->status);
    free(a->version);
    sodium_memzero(a->token_hash, sizeof(a->token_hash));
    free(a);
}
