/* Unit tests for src/tls: real handshakes over socketpairs, 127.0.0.1 TCP and
 * bufferevent pairs, driven by libevent's bufferevent_openssl in one event loop;
 * the misbehaving peers are raw OpenSSL contexts built here. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "identity/identity.h"
#include "tls/tls.h"
#include "util/util.h"

struct side {
    struct bufferevent *bev;
    SSL *ssl; /* owned by bev (BEV_OPT_CLOSE_ON_FREE) */
    bool connected, failed, timed_out;
    short what; /* the event that failed it */
    char why[512];
    struct evbuffer *got;
};

struct world {
    char dir[256];
    struct lm_identity a, b, c;
    struct lm_tls_ctx *ta, *tb, *tc;
    struct event_base *base;
    struct side s[4];
};

static void
make_identity(struct world *w, struct lm_identity *id, const char *name)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", w->dir, name);
    assert_int_equal(lm_identity_load_or_create(path, id), 0);
}

static int
setup(void **state)
{
    struct world *w = calloc(1, sizeof(*w));
    char err[256];

    /* A peer that goes away mid-write must not kill the test (labmand ignores it too). */
    signal(SIGPIPE, SIG_IGN);
    snprintf(w->dir, sizeof(w->dir), "/tmp/lm-tls-test.XXXXXX");
    if (!mkdtemp(w->dir))
        return -1;
    make_identity(w, &w->a, "a");
    make_identity(w, &w->b, "b");
    make_identity(w, &w->c, "c");
    if (lm_tls_ctx_new(&w->ta, &w->a, err, sizeof(err)) < 0
        || lm_tls_ctx_new(&w->tb, &w->b, err, sizeof(err)) < 0
        || lm_tls_ctx_new(&w->tc, &w->c, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    w->base = event_base_new();
    for (size_t i = 0; i < LM_ARRAY_LEN(w->s); i++)
        w->s[i].got = evbuffer_new();
    *state = w;
    return 0;
}

static int
teardown(void **state)
{
    struct world *w = *state;
    char cmd[300];

    for (size_t i = 0; i < LM_ARRAY_LEN(w->s); i++) {
        if (w->s[i].bev)
            bufferevent_free(w->s[i].bev);
        evbuffer_free(w->s[i].got);
    }
    /* Let libevent finish what bufferevent_free deferred. */
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    event_base_free(w->base);
    lm_tls_ctx_free(w->ta);
    lm_tls_ctx_free(w->tb);
    lm_tls_ctx_free(w->tc);
    lm_identity_wipe(&w->a);
    lm_identity_wipe(&w->b);
    lm_identity_wipe(&w->c);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", w->dir);
    int rc = system(cmd);
    /* Nothing a test did may leave errors behind for the next one. */
    ERR_clear_error();
    free(w);
    return rc == 0 ? 0 : -1;
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
    struct side *s = arg;
    evbuffer_add_buffer(s->got, bufferevent_get_input(bev));
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct side *s = arg;

    if (what & BEV_EVENT_CONNECTED) {
        s->connected = true;
        return;
    }
    if (what & BEV_EVENT_TIMEOUT) {
        s->timed_out = true;
        return;
    }
    if ((what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) && !s->failed) {
        s->failed = true;
        s->what = what;
        lm_tls_describe(s->ssl, bev, s->why, sizeof(s->why));
        bufferevent_disable(bev, EV_READ | EV_WRITE);
    }
}

/* The lm_tls_ctx whose SSL_CTX ctx is, or NULL for the raw ones made here. */
static struct lm_tls_ctx *
ours(struct world *w, SSL_CTX *ctx)
{
    struct lm_tls_ctx *all[] = {w->ta, w->tb, w->tc};
    for (size_t i = 0; i < LM_ARRAY_LEN(all); i++)
        if (lm_tls_ctx_ssl(all[i]) == ctx)
            return all[i];
    return NULL;
}

/* An end of a TLS connection on fd, or filtering over inner when that is given:
 * through lm_tls_bev_* for our contexts, by hand for the raw ones. */
static void
side_start(struct world *w, struct side *s, SSL_CTX *ctx, int fd, struct bufferevent *inner,
           bool server)
{
    struct lm_tls_ctx *lc = ours(w, ctx);

    if (lc && inner) {
        assert_int_equal(lm_tls_bev_filter(&s->bev, lc, inner, server, 0), 0);
    } else if (lc) {
        assert_int_equal(lm_tls_bev_socket(&s->bev, lc, w->base, fd, server, 0), 0);
    } else {
        assert_null(inner);
        SSL *ssl = SSL_new(ctx);
        assert_non_null(ssl);
        s->bev = bufferevent_openssl_socket_new(w->base, fd, ssl,
                                                server ? BUFFEREVENT_SSL_ACCEPTING
                                                       : BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
    }
    assert_non_null(s->bev);
    s->ssl = bufferevent_openssl_get_ssl(s->bev);
    assert_non_null(s->ssl);
    bufferevent_setcb(s->bev, read_cb, NULL, event_cb, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

static void
socket_pair(int fds[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    assert_int_equal(evutil_make_socket_nonblocking(fds[0]), 0);
    assert_int_equal(evutil_make_socket_nonblocking(fds[1]), 0);
}

/* A connected 127.0.0.1 TCP pair: fds[0] dialed, fds[1] accepted. */
static void
tcp_pair(int fds[2])
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t salen = sizeof(sa);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &salen), 0);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fds[0] >= 0);
    assert_int_equal(connect(fds[0], (struct sockaddr *)&sa, sizeof(sa)), 0);
    fds[1] = accept(lfd, NULL, NULL);
    assert_true(fds[1] >= 0);
    close(lfd);
    assert_int_equal(evutil_make_socket_nonblocking(fds[0]), 0);
    assert_int_equal(evutil_make_socket_nonblocking(fds[1]), 0);
}

/* Client s[0] with cctx, server s[1] with sctx, over a socketpair. */
static void
start_pair(struct world *w, SSL_CTX *cctx, SSL_CTX *sctx)
{
    int fds[2];
    socket_pair(fds);
    side_start(w, &w->s[0], cctx, fds[0], NULL, false);
    side_start(w, &w->s[1], sctx, fds[1], NULL, true);
}

typedef bool (*done_fn)(struct world *w, void *arg);

/* Runs the loop until done() or ms have passed; false on the deadline. */
static bool
run_until(struct world *w, done_fn done, void *arg, unsigned ms)
{
    uint64_t end = lm_now_ms() + ms;
    while (!done(w, arg)) {
        if (lm_now_ms() >= end)
            return false;
        struct timeval tv = {0, 5000};
        event_base_loopexit(w->base, &tv);
        event_base_dispatch(w->base);
    }
    return true;
}

/* Both ends of s[0] and s[1], or of the pair arg points to, are past the handshake. */
static bool
both_connected(struct world *w, void *arg)
{
    struct side **p = arg, *x = p ? p[0] : &w->s[0], *y = p ? p[1] : &w->s[1];
    return (x->connected || x->failed) && (y->connected || y->failed);
}

static bool
both_failed(struct world *w, void *arg)
{
    (void)arg;
    return w->s[0].failed && w->s[1].failed;
}

static bool
server_failed(struct world *w, void *arg)
{
    (void)arg;
    return w->s[1].failed;
}

struct want {
    struct side *s;
    size_t n;
};

static bool
got_bytes(struct world *w, void *arg)
{
    (void)w;
    struct want *v = arg;
    for (; v->s; v++)
        if (evbuffer_get_length(v->s->got) < v->n)
            return false;
    return true;
}

/* Asserts that s got exactly the bytes of text (and drains them). */
static void
assert_got(struct side *s, const void *text, size_t n)
{
    assert_int_equal(evbuffer_get_length(s->got), n);
    assert_memory_equal(evbuffer_pullup(s->got, -1), text, n);
    evbuffer_drain(s->got, n);
}

/* Both ends handshake, check each other, and exchange a message each way. */
static void
assert_talks(struct world *w, struct side *cl, struct side *sv, const struct lm_identity *cid,
             const struct lm_identity *sid)
{
    char id[LM_NODE_ID_LEN + 1], err[512];

    struct side *ends[2] = {cl, sv};
    assert_true(run_until(w, both_connected, ends, 5000));
    assert_false(cl->failed);
    assert_false(sv->failed);
    assert_true(cl->connected && sv->connected);
    /* The dialer expects the node it dialed; the listener takes anyone. */
    assert_int_equal(lm_tls_check(cl->ssl, sid->node_id, id, err, sizeof(err)), 0);
    assert_string_equal(id, sid->node_id);
    assert_int_equal(lm_tls_check(sv->ssl, NULL, id, err, sizeof(err)), 0);
    assert_string_equal(id, cid->node_id);
    assert_int_equal(lm_tls_peer_id(sv->ssl, id), 0);
    assert_string_equal(id, cid->node_id);

    static const char ping[] = "ping from the dialer", pong[] = "pong from the listener";
    bufferevent_write(cl->bev, ping, sizeof(ping) - 1);
    bufferevent_write(sv->bev, pong, sizeof(pong) - 1);
    struct want v[] = {{sv, sizeof(ping) - 1}, {cl, sizeof(pong) - 1}, {NULL, 0}};
    assert_true(run_until(w, got_bytes, v, 5000));
    assert_got(sv, ping, sizeof(ping) - 1);
    assert_got(cl, pong, sizeof(pong) - 1);
}

static void
restart(struct world *w)
{
    for (size_t i = 0; i < LM_ARRAY_LEN(w->s); i++) {
        if (w->s[i].bev)
            bufferevent_free(w->s[i].bev);
        evbuffer_drain(w->s[i].got, evbuffer_get_length(w->s[i].got));
        memset(&w->s[i], 0, offsetof(struct side, got));
    }
}

/* ---- raw OpenSSL peers that break one rule each ---- */

static EVP_PKEY *
ed25519_key(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(k);
    return k;
}

/* A certificate for key's public half named cn, signed by signer, valid from
 * now + from_s to now + to_s. md is NULL for Ed25519 signers. */
static X509 *
cert_for(EVP_PKEY *key, EVP_PKEY *signer, const EVP_MD *md, long from_s, long to_s)
{
    X509 *x = X509_new();
    assert_non_null(x);
    assert_true(X509_set_version(x, X509_VERSION_3));
    ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from_s));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to_s));
    X509_NAME *n = X509_get_subject_name(x);
    assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                           (const unsigned char *)"test peer", -1, -1, 0));
    assert_true(X509_set_issuer_name(x, n));
    assert_true(X509_set_pubkey(x, key));
    assert_true(X509_sign(x, signer, md) > 0);
    return x;
}

/* A client or server context that accepts anything from its peer, offers alpn (wire
 * form, NULL = none), and presents cert/key when given (the SSL_CTX takes them). */
static SSL_CTX *
raw_ctx(bool server, int max_version, const char *alpn, size_t alpn_len, X509 *cert,
        EVP_PKEY *key)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    assert_non_null(ctx);
    if (max_version)
        assert_true(SSL_CTX_set_max_proto_version(ctx, max_version));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (alpn)
        assert_int_equal(SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)alpn,
                                                 (unsigned)alpn_len), 0);
    if (cert) {
        assert_int_equal(SSL_CTX_use_certificate(ctx, cert), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    return ctx;
}

#define ALPN_LABNET "\x08labnet/1", 9

/* ---- (1) mutual handshake over 127.0.0.1 TCP ---- */

static void
test_mutual_tcp(void **state)
{
    struct world *w = *state;
    int fds[2];

    tcp_pair(fds);
    side_start(w, &w->s[0], lm_tls_ctx_ssl(w->ta), fds[0], NULL, false);
    side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tb), fds[1], NULL, true);
    assert_talks(w, &w->s[0], &w->s[1], &w->a, &w->b);

    SSL *cl = w->s[0].ssl;
    assert_int_equal(SSL_version(cl), TLS1_3_VERSION);
    const unsigned char *alpn;
    unsigned alpn_len;
    SSL_get0_alpn_selected(w->s[1].ssl, &alpn, &alpn_len);
    assert_int_equal(alpn_len, 8);
    assert_memory_equal(alpn, "labnet/1", 8);
    /* No resumption: the server sent no ticket (the data exchange above went past
     * where TLS 1.3 servers send them) and nothing was resumed. */
    assert_false(SSL_session_reused(cl));
    assert_false(SSL_SESSION_has_ticket(SSL_get_session(cl)));
    /* An uppercase expected id is the same node. */
    char up[LM_NODE_ID_LEN + 1], id[LM_NODE_ID_LEN + 1], err[512];
    for (size_t i = 0; i <= LM_NODE_ID_LEN; i++)
        up[i] = (char)(w->b.node_id[i] >= 'a' ? w->b.node_id[i] - 32 : w->b.node_id[i]);
    assert_int_equal(lm_tls_check(cl, up, id, err, sizeof(err)), 0);
}

/* ---- (2) the dialed node id is not the key that answered ---- */

static void
test_wrong_node_id(void **state)
{
    struct world *w = *state;
    char id[LM_NODE_ID_LEN + 1], err[512], want[256];

    start_pair(w, lm_tls_ctx_ssl(w->ta), lm_tls_ctx_ssl(w->tb));
    assert_true(run_until(w, both_connected, NULL, 5000));
    assert_true(w->s[0].connected);
    /* a dialed c, b answered. */
    assert_int_equal(lm_tls_check(w->s[0].ssl, w->c.node_id, id, err, sizeof(err)), -EPERM);
    assert_string_equal(id, w->b.node_id);
    snprintf(want, sizeof(want), "tls: dialed %s... but the peer's key is %s...", w->c.short_id,
             w->b.short_id);
    assert_memory_equal(err, want, strlen(want));
    assert_non_null(strstr(err, w->c.node_id));
    assert_non_null(strstr(err, w->b.node_id));
    assert_null(strchr(err, '\n'));

    /* A malformed expectation is the caller's error, not a mismatch. */
    assert_int_equal(lm_tls_check(w->s[0].ssl, "b0gus\n", id, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "b0gus\\n"));
    assert_int_equal(lm_tls_check(w->s[0].ssl, "", id, err, 0), -EINVAL);
}

/* ---- (3) a client without a certificate ---- */

static void
test_client_without_cert(void **state)
{
    struct world *w = *state;
    SSL_CTX *bad = raw_ctx(false, 0, ALPN_LABNET, NULL, NULL);

    start_pair(w, bad, lm_tls_ctx_ssl(w->tb));
    /* TLS 1.3 clients finish before the server has judged their certificate: the
     * client hears of the refusal as an alert on its first read. */
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, "tls: handshake failed: the peer presented no certificate");
    assert_string_equal(w->s[0].why, "tls: handshake failed: the peer wants a certificate and we "
                                     "sent none (alert certificate_required)");
    SSL_CTX_free(bad);
}

/* ---- (4) a TLS 1.2-only client ---- */

static void
test_tls12_client(void **state)
{
    struct world *w = *state;
    EVP_PKEY *k = ed25519_key();
    SSL_CTX *bad = raw_ctx(false, TLS1_2_VERSION, ALPN_LABNET, cert_for(k, k, NULL, -60, 3600),
                           k);

    start_pair(w, bad, lm_tls_ctx_ssl(w->tb));
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[0].connected);
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, "tls: handshake failed: the peer does not offer TLS 1.3 "
                                     "(labnet/1 needs TLS 1.3)");
    SSL_CTX_free(bad);

    /* And our dialer against a TLS 1.2-only listener. */
    k = ed25519_key();
    bad = raw_ctx(true, TLS1_2_VERSION, NULL, 0, cert_for(k, k, NULL, -60, 3600), k);
    restart(w);
    start_pair(w, lm_tls_ctx_ssl(w->ta), bad);
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[0].connected);
    assert_non_null(strstr(w->s[0].why, "tls: handshake failed: the peer refused TLS 1.3"));
    SSL_CTX_free(bad);
}

/* ---- (5) a client offering another ALPN, or none; a server choosing none ---- */

static void
test_alpn(void **state)
{
    struct world *w = *state;

    /* A labman client except for ALPN: the per-SSL setting overrides the ctx's. */
    start_pair(w, lm_tls_ctx_ssl(w->ta), lm_tls_ctx_ssl(w->tb));
    assert_int_equal(SSL_set_alpn_protos(w->s[0].ssl, (const unsigned char *)"\x02h2\x08http/1.1",
                                         12), 0);
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, "tls: handshake failed: the peer offered ALPN \"h2\", "
                                     "\"http/1.1\", not \"labnet/1\"");
    assert_string_equal(w->s[0].why, "tls: handshake failed: the peer refused ALPN "
                                     "\"labnet/1\" (alert no_application_protocol)");

    restart(w);
    start_pair(w, lm_tls_ctx_ssl(w->ta), lm_tls_ctx_ssl(w->tb));
    assert_int_equal(SSL_set_alpn_protos(w->s[0].ssl, NULL, 0), 0);
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, "tls: handshake failed: the peer offered no ALPN; "
                                     "labnet/1 peers offer \"labnet/1\"");
    assert_non_null(strstr(w->s[0].why, "(alert no_application_protocol)"));

    /* ALPN is in the list but mangled into a longer name: still not ours. */
    restart(w);
    start_pair(w, lm_tls_ctx_ssl(w->ta), lm_tls_ctx_ssl(w->tb));
    assert_int_equal(SSL_set_alpn_protos(w->s[0].ssl, (const unsigned char *)"\x09labnet/1\n",
                                         10), 0);
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_non_null(strstr(w->s[1].why, "offered ALPN \"labnet/1\\n\""));

    /* A server that ignores ALPN lets the handshake finish; lm_tls_check refuses. */
    restart(w);
    EVP_PKEY *k = ed25519_key();
    SSL_CTX *srv = raw_ctx(true, 0, NULL, 0, cert_for(k, k, NULL, -60, 3600), k);
    start_pair(w, lm_tls_ctx_ssl(w->ta), srv);
    assert_true(run_until(w, both_connected, NULL, 5000));
    assert_true(w->s[0].connected);
    char id[LM_NODE_ID_LEN + 1], err[512];
    assert_int_equal(lm_tls_check(w->s[0].ssl, NULL, id, err, sizeof(err)), -EPROTO);
    assert_string_equal(err, "tls: the peer agreed to ALPN \"\", not \"labnet/1\"");
    assert_string_equal(id, "");
    SSL_CTX_free(srv);
}

/* ---- (6) RSA and ECDSA P-256 certificates ---- */

static void
test_not_ed25519(void **state)
{
    struct world *w = *state;

    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    assert_non_null(rsa);
    SSL_CTX *bad = raw_ctx(false, 0, ALPN_LABNET, cert_for(rsa, rsa, EVP_sha256(), -60, 3600),
                           rsa);
    start_pair(w, bad, lm_tls_ctx_ssl(w->tb));
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, "tls: handshake failed: the peer's certificate key is RSA; "
                                     "labnet/1 node keys are Ed25519");
    assert_non_null(strstr(w->s[0].why, "tls: handshake failed: the peer rejected our "
                                        "certificate"));
    SSL_CTX_free(bad);

    restart(w);
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    assert_non_null(ec);
    bad = raw_ctx(false, 0, ALPN_LABNET, cert_for(ec, ec, EVP_sha256(), -60, 3600), ec);
    start_pair(w, bad, lm_tls_ctx_ssl(w->tb));
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, "tls: handshake failed: the peer's certificate key is "
                                     "EC (prime256v1); labnet/1 node keys are Ed25519");
    SSL_CTX_free(bad);

    /* Our dialer refuses an RSA listener before showing its own certificate. */
    restart(w);
    rsa = EVP_RSA_gen(2048);
    assert_non_null(rsa);
    bad = raw_ctx(true, 0, NULL, 0, cert_for(rsa, rsa, EVP_sha256(), -60, 3600), rsa);
    start_pair(w, lm_tls_ctx_ssl(w->ta), bad);
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[0].connected);
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[0].why, "tls: handshake failed: the peer's certificate key is RSA; "
                                     "labnet/1 node keys are Ed25519");
    assert_null(SSL_get0_peer_certificate(w->s[1].ssl));
    SSL_CTX_free(bad);
}

/* ---- (7) TLS end to end inside another transport, as through a relay ---- */

static void
test_filter_over_pair(void **state)
{
    struct world *w = *state;
    struct bufferevent *pair[2];

    /* The pair stands in for a yamux stream spliced by a relay. */
    assert_int_equal(bufferevent_pair_new(w->base, BEV_OPT_CLOSE_ON_FREE, pair), 0);
    side_start(w, &w->s[0], lm_tls_ctx_ssl(w->ta), -1, pair[0], false);
    side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tc), -1, pair[1], true);
    assert_talks(w, &w->s[0], &w->s[1], &w->a, &w->c);

    /* More than one TLS record and more than the inner buffers hold at once. */
    size_t n = 300 * 1024;
    char *big = lm_xmalloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)(i * 7 + 3);
    bufferevent_write(w->s[0].bev, big, n);
    bufferevent_write(w->s[1].bev, big, n);
    struct want v[] = {{&w->s[1], n}, {&w->s[0], n}, {NULL, 0}};
    assert_true(run_until(w, got_bytes, v, 10000));
    assert_got(&w->s[1], big, n);
    assert_got(&w->s[0], big, n);
    free(big);
}

/* TLS inside TLS: the outer connection a->relay(b) over a socket, the inner
 * one a->c filtered over the outer bufferevents (what a relayed circuit is, with
 * the relay's splice left out). */
static void
test_tls_in_tls(void **state)
{
    struct world *w = *state;
    int fds[2];

    socket_pair(fds);
    side_start(w, &w->s[0], lm_tls_ctx_ssl(w->ta), fds[0], NULL, false);
    side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tb), fds[1], NULL, true);
    assert_true(run_until(w, both_connected, NULL, 5000));
    assert_true(w->s[0].connected && w->s[1].connected);
    /* The inner ends take over the outer bufferevents' callbacks. The dialer's end
     * is not enabled for reading until it is connected: its handshake must start
     * anyway (lm_tls_bev_filter's kick; libevent alone would wait). */
    struct bufferevent *outer0 = w->s[0].bev, *outer1 = w->s[1].bev;
    w->s[0].bev = w->s[1].bev = NULL;
    struct side *cl = &w->s[2], *sv = &w->s[3];
    assert_int_equal(lm_tls_bev_filter(&cl->bev, w->ta, outer0, false, 0), 0);
    cl->ssl = bufferevent_openssl_get_ssl(cl->bev);
    bufferevent_setcb(cl->bev, read_cb, NULL, event_cb, cl);
    side_start(w, sv, lm_tls_ctx_ssl(w->tc), -1, outer1, true);
    struct side *ends[2] = {cl, sv};
    assert_true(run_until(w, both_connected, ends, 5000));
    assert_true(cl->connected);
    bufferevent_enable(cl->bev, EV_READ);
    assert_talks(w, cl, sv, &w->a, &w->c);
}

/* ---- (8) bytes that are not a ClientHello ---- */

static void
test_garbage(void **state)
{
    struct world *w = *state;
    static const struct {
        const char *bytes;
        size_t len;
        const char *why; /* NULL: any handshake failure */
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27,
         "tls: handshake failed: the peer sent a plain HTTP request, not TLS"},
        {"SSH-2.0-OpenSSH_9.6\r\n", 21,
         "tls: handshake failed: the peer does not speak TLS (bytes that are not a TLS record)"},
        /* A handshake record claiming 65535 bytes. */
        {"\x16\x03\x01\xff\xff\x01\x00\x00\x10", 9, NULL},
        /* A ClientHello whose inner length runs past its record. */
        {"\x16\x03\x01\x00\x08\x01\xff\xff\xff\x03\x03\x00\x00", 13, NULL},
        /* An alert before anything. */
        {"\x15\x03\x03\x00\x02\x02\x28", 7, NULL},
        /* Nothing at all: the peer connects and hangs up. */
        {"", 0, "tls: handshake failed: the peer closed the connection during the handshake"},
    };

    for (size_t i = 0; i < LM_ARRAY_LEN(cases); i++) {
        int fds[2];
        restart(w);
        socket_pair(fds);
        side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tb), fds[1], NULL, true);
        if (cases[i].len)
            assert_int_equal(write(fds[0], cases[i].bytes, cases[i].len),
                             (ssize_t)cases[i].len);
        shutdown(fds[0], SHUT_WR);
        assert_true(run_until(w, server_failed, NULL, 5000));
        assert_false(w->s[1].connected);
        if (cases[i].why)
            assert_string_equal(w->s[1].why, cases[i].why);
        else
            assert_memory_equal(w->s[1].why, "tls: handshake failed: ", 23);
        close(fds[0]);
    }

    /* Our dialer reaching something that is not TLS: an HTTP server's answer. */
    {
        int fds[2];
        char hello[2048];
        static const char http[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        restart(w);
        socket_pair(fds);
        side_start(w, &w->s[0], lm_tls_ctx_ssl(w->ta), fds[0], NULL, false);
        /* Wait for the ClientHello, then answer it the way a web server would. */
        ssize_t got = -1;
        for (int k = 0; k < 500 && got <= 0; k++) {
            struct timeval tv = {0, 2000};
            event_base_loopexit(w->base, &tv);
            event_base_dispatch(w->base);
            got = read(fds[1], hello, sizeof(hello));
        }
        assert_true(got > 0);
        assert_int_equal(hello[0], 0x16);
        assert_int_equal(write(fds[1], http, sizeof(http) - 1), (ssize_t)sizeof(http) - 1);
        struct side *ends[2] = {&w->s[0], &w->s[0]};
        assert_true(run_until(w, both_connected, ends, 5000));
        assert_false(w->s[0].connected);
        assert_string_equal(w->s[0].why, "tls: handshake failed: the peer does not speak TLS "
                                         "(bytes that are not a TLS record)");
        close(fds[1]);
    }

    /* Random bytes, in several sizes. */
    uint32_t x = 12345;
    for (int round = 0; round < 20; round++) {
        int fds[2];
        char junk[4096];
        size_t n = 1 + (size_t)round * 200;
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            junk[i] = (char)(x >> 16);
        }
        restart(w);
        socket_pair(fds);
        side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tb), fds[1], NULL, true);
        assert_int_equal(write(fds[0], junk, n), (ssize_t)n);
        shutdown(fds[0], SHUT_WR);
        assert_true(run_until(w, server_failed, NULL, 5000));
        assert_false(w->s[1].connected);
        assert_memory_equal(w->s[1].why, "tls: handshake failed: ", 23);
        close(fds[0]);
    }
}

/* Our own ClientHello, mutated byte by byte, fed to a server over memory BIOs:
 * every variant ends in an error or a wish for more bytes, never a crash. */
static void
test_mutated_client_hello(void **state)
{
    struct world *w = *state;
    SSL *cl = SSL_new(lm_tls_ctx_ssl(w->ta));
    BIO *crd = BIO_new(BIO_s_mem()), *cwr = BIO_new(BIO_s_mem());
    SSL_set_bio(cl, crd, cwr);
    assert_int_equal(SSL_connect(cl), -1);
    assert_int_equal(SSL_get_error(cl, -1), SSL_ERROR_WANT_READ);
    char *hello;
    long n = BIO_get_mem_data(cwr, &hello);
    assert_true(n > 100 && n < 4096);

    uint32_t x = 777;
    int failed = 0;
    for (int round = 0; round < 500; round++) {
        unsigned char m[4096];
        memcpy(m, hello, (size_t)n);
        for (int k = 0; k < 1 + round % 4; k++) {
            x = x * 1103515245u + 12345u;
            m[(x >> 8) % (uint32_t)n] ^= (unsigned char)(1u << ((x >> 4) % 8));
        }
        SSL *sv = SSL_new(lm_tls_ctx_ssl(w->tb));
        BIO *rd = BIO_new_mem_buf(m, (int)n), *wr = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(rd, -1);
        SSL_set_bio(sv, rd, wr);
        int rc = SSL_accept(sv);
        assert_true(rc <= 0);
        int e = SSL_get_error(sv, rc);
        assert_true(e == SSL_ERROR_SSL || e == SSL_ERROR_WANT_READ);
        if (e == SSL_ERROR_SSL) {
            char why[512];
            lm_tls_describe(sv, NULL, why, sizeof(why));
            assert_memory_equal(why, "tls: handshake failed: ", 23);
            failed++;
        }
        ERR_clear_error();
        SSL_free(sv);
    }
    /* Some mutations land in fields nobody checks (random, session id); most do not. */
    assert_true(failed > 50);
    SSL_free(cl);
}

/* ---- (9) the certificate the ctx made ---- */

static void
test_own_certificate(void **state)
{
    struct world *w = *state;
    X509 *x = SSL_CTX_get0_certificate(lm_tls_ctx_ssl(w->ta));
    assert_non_null(x);

    assert_int_equal(X509_get_version(x), X509_VERSION_3);
    EVP_PKEY *pk = X509_get0_pubkey(x);
    assert_int_equal(EVP_PKEY_get_id(pk), EVP_PKEY_ED25519);
    uint8_t raw[32];
    size_t rawlen = sizeof(raw);
    assert_int_equal(EVP_PKEY_get_raw_public_key(pk, raw, &rawlen), 1);
    assert_int_equal(rawlen, 32);
    assert_memory_equal(raw, w->a.pk, 32);
    /* Self-signed: its own key verifies it, and issuer == subject. */
    assert_int_equal(X509_verify(x, pk), 1);
    assert_int_equal(X509_self_signed(x, 1), 1);
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
    char cn[128];
    assert_int_equal(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                                               sizeof(cn)), 64);
    assert_string_equal(cn, w->a.node_id);
    /* It verifies as the one and only trusted certificate, for TLS either way. */
    X509_STORE *store = X509_STORE_new();
    assert_int_equal(X509_STORE_add_cert(store, x), 1);
    X509_STORE_CTX *xs = X509_STORE_CTX_new();
    assert_int_equal(X509_STORE_CTX_init(xs, store, x, NULL), 1);
    X509_STORE_CTX_set_purpose(xs, X509_PURPOSE_SSL_CLIENT);
    assert_int_equal(X509_verify_cert(xs), 1);
    X509_STORE_CTX_free(xs);
    xs = X509_STORE_CTX_new();
    assert_int_equal(X509_STORE_CTX_init(xs, store, x, NULL), 1);
    X509_STORE_CTX_set_purpose(xs, X509_PURPOSE_SSL_SERVER);
    assert_int_equal(X509_verify_cert(xs), 1);
    X509_STORE_CTX_free(xs);
    X509_STORE_free(store);
    /* Untrusted, it fails with exactly the error the verify callback forgives. */
    store = X509_STORE_new();
    xs = X509_STORE_CTX_new();
    assert_int_equal(X509_STORE_CTX_init(xs, store, x, NULL), 1);
    assert_int_equal(X509_verify_cert(xs), 0);
    assert_int_equal(X509_STORE_CTX_get_error(xs), X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT);
    X509_STORE_CTX_free(xs);
    X509_STORE_free(store);

    /* Valid from a day ago for ten years. */
    int days, secs;
    assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notBefore(x)), 1);
    assert_true(days == -1 || (days == 0 && secs <= -86300));
    assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x),
                                    X509_get0_notAfter(x)), 1);
    assert_int_equal(days, 3651);
    /* A random positive serial, different for another ctx of the same identity. */
    const ASN1_INTEGER *s1 = X509_get0_serialNumber(x);
    BIGNUM *b1 = ASN1_INTEGER_to_BN(s1, NULL);
    assert_false(BN_is_negative(b1));
    assert_int_equal(BN_num_bytes(b1), 16);
    struct lm_tls_ctx *again;
    char err[256];
    assert_int_equal(lm_tls_ctx_new(&again, &w->a, err, sizeof(err)), 0);
    X509 *y = SSL_CTX_get0_certificate(lm_tls_ctx_ssl(again));
    assert_int_not_equal(ASN1_INTEGER_cmp(s1, X509_get0_serialNumber(y)), 0);
    BN_free(b1);
    lm_tls_ctx_free(again);
}

/* ---- more certificates our peers must not get away with ---- */

static void
expect_client_refused(struct world *w, SSL_CTX *bad, const char *why, const char *cwhy)
{
    restart(w);
    start_pair(w, bad, lm_tls_ctx_ssl(w->tb));
    assert_true(run_until(w, both_failed, NULL, 5000));
    assert_false(w->s[1].connected);
    assert_string_equal(w->s[1].why, why);
    assert_string_equal(w->s[0].why, cwhy);
    SSL_CTX_free(bad);
}

static void
test_bad_ed25519_certs(void **state)
{
    struct world *w = *state;

    /* Signed by someone else's key (same name, so it claims to be self-signed). */
    EVP_PKEY *k = ed25519_key(), *other = ed25519_key();
    X509 *x = cert_for(k, other, NULL, -60, 3600);
    EVP_PKEY_free(other);
    expect_client_refused(w, raw_ctx(false, 0, ALPN_LABNET, x, k),
                          "tls: handshake failed: the peer's certificate failed verification: "
                          "certificate signature failure",
                          "tls: handshake failed: the peer could not verify a signature of ours "
                          "(alert decrypt_error)");

    /* Expired, and not yet valid. */
    k = ed25519_key();
    expect_client_refused(w, raw_ctx(false, 0, ALPN_LABNET, cert_for(k, k, NULL, -7200, -3600),
                                     k),
                          "tls: handshake failed: the peer's certificate failed verification: "
                          "certificate has expired (check the clocks on both nodes)",
                          "tls: handshake failed: the peer says our certificate expired (alert "
                          "certificate_expired; check the clocks on both nodes)");
    k = ed25519_key();
    expect_client_refused(w, raw_ctx(false, 0, ALPN_LABNET, cert_for(k, k, NULL, 3600, 7200),
                                     k),
                          "tls: handshake failed: the peer's certificate failed verification: "
                          "certificate is not yet valid (check the clocks on both nodes)",
                          "tls: handshake failed: the peer rejected our certificate (alert "
                          "bad_certificate)");

    /* A chain: a good self-signed leaf plus an extra certificate. */
    k = ed25519_key();
    EVP_PKEY *k2 = ed25519_key();
    SSL_CTX *bad = raw_ctx(false, 0, ALPN_LABNET, cert_for(k, k, NULL, -60, 3600), k);
    assert_int_equal(SSL_CTX_add_extra_chain_cert(bad, cert_for(k2, k2, NULL, -60, 3600)), 1);
    EVP_PKEY_free(k2);
    expect_client_refused(w, bad,
                          "tls: handshake failed: the peer sent 2 certificates; labnet/1 wants "
                          "exactly one, self-signed with the node key",
                          "tls: handshake failed: the peer rejected our certificate (alert "
                          "bad_certificate)");

    /* A certificate chain larger than we read. */
    k = ed25519_key();
    bad = raw_ctx(false, 0, ALPN_LABNET, cert_for(k, k, NULL, -60, 3600), k);
    for (int i = 0; i < 100; i++) {
        EVP_PKEY *r = ed25519_key();
        assert_int_equal(SSL_CTX_add_extra_chain_cert(bad, cert_for(r, r, NULL, -60, 3600)),
                         1);
        EVP_PKEY_free(r);
    }
    expect_client_refused(w, bad,
                          "tls: handshake failed: the peer sent a handshake message larger "
                          "than we accept",
                          "tls: handshake failed: the peer sent an alert: sslv3 alert illegal "
                          "parameter");
}

/* ---- odds and ends of the API ---- */

static bool
server_timed_out(struct world *w, void *arg)
{
    (void)arg;
    return w->s[1].timed_out;
}

static void
test_silent_peer_times_out(void **state)
{
    struct world *w = *state;
    int fds[2];

    socket_pair(fds);
    side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tb), fds[1], NULL, true);
    /* The owner's handshake deadline, as LM_TLS_HANDSHAKE_TIMEOUT_MS advises. */
    struct timeval tv = {0, 200 * 1000};
    bufferevent_set_timeouts(w->s[1].bev, &tv, &tv);
    uint64_t t0 = lm_now_ms();
    assert_true(run_until(w, server_timed_out, NULL, 5000));
    assert_true(lm_now_ms() - t0 >= 150);
    assert_false(w->s[1].connected);
    close(fds[0]);
}

static void
test_close(void **state)
{
    struct world *w = *state;

    /* A clean close: close_notify first (the output was already flushed). */
    start_pair(w, lm_tls_ctx_ssl(w->ta), lm_tls_ctx_ssl(w->tb));
    assert_talks(w, &w->s[0], &w->s[1], &w->a, &w->b);
    assert_int_equal(evbuffer_get_length(bufferevent_get_output(w->s[0].bev)), 0);
    assert_int_equal(SSL_shutdown(w->s[0].ssl), 0);
    bufferevent_free(w->s[0].bev);
    w->s[0].bev = NULL;
    assert_true(run_until(w, server_failed, NULL, 5000));
    assert_string_equal(w->s[1].why, "tls: connection failed: the peer closed the connection");
    assert_true(w->s[1].what & BEV_EVENT_EOF);

    restart(w);
    start_pair(w, lm_tls_ctx_ssl(w->ta), lm_tls_ctx_ssl(w->tb));
    assert_talks(w, &w->s[0], &w->s[1], &w->a, &w->b);
    /* bufferevent_free sends no close_notify: the other end sees a dirty close. */
    bufferevent_openssl_set_allow_dirty_shutdown(w->s[1].bev, 1);
    bufferevent_free(w->s[0].bev);
    w->s[0].bev = NULL;
    assert_true(run_until(w, server_failed, NULL, 5000));
    assert_string_equal(w->s[1].why, "tls: connection failed: the peer closed the connection "
                                     "without a TLS close_notify");
    /* libevent's allow_dirty_shutdown does not help with OpenSSL 3, which reports
     * this as an error of its own rather than as a bare EOF. */
    assert_true(w->s[1].what & BEV_EVENT_ERROR);

    /* A connection reset (TCP RST). */
    restart(w);
    int fds[2];
    tcp_pair(fds);
    side_start(w, &w->s[0], lm_tls_ctx_ssl(w->ta), fds[0], NULL, false);
    side_start(w, &w->s[1], lm_tls_ctx_ssl(w->tb), fds[1], NULL, true);
    assert_talks(w, &w->s[0], &w->s[1], &w->a, &w->b);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fds[0], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    bufferevent_free(w->s[0].bev);
    w->s[0].bev = NULL;
    assert_true(run_until(w, server_failed, NULL, 5000));
    assert_string_equal(w->s[1].why, "tls: connection failed: socket error: Connection reset by "
                                     "peer");
}

static void
test_api_edges(void **state)
{
    struct world *w = *state;
    char id[LM_NODE_ID_LEN + 1], err[256];

    /* Before any handshake there is no peer and nothing to check. */
    SSL *ssl = SSL_new(lm_tls_ctx_ssl(w->ta));
    assert_int_equal(lm_tls_peer_id(ssl, id), -EPROTO);
    assert_string_equal(id, "");
    assert_int_equal(lm_tls_check(ssl, NULL, id, err, sizeof(err)), -EPROTO);
    assert_string_equal(err, "tls: the handshake is not finished");
    lm_tls_describe(ssl, NULL, err, sizeof(err));
    assert_string_equal(err, "tls: handshake failed: the connection closed during the "
                             "handshake (no TLS error recorded)");
    SSL_free(ssl);
    assert_int_equal(lm_tls_peer_id(NULL, id), -EPROTO);

    /* An identity whose public key is not its secret key's. */
    struct lm_identity bad = w->a;
    bad.pk[0] ^= 1;
    struct lm_tls_ctx *c = (struct lm_tls_ctx *)&bad;
    assert_int_equal(lm_tls_ctx_new(&c, &bad, err, sizeof(err)), -EINVAL);
    assert_null(c);
    assert_string_equal(err, "tls: the identity's public key does not match its secret key");
    lm_identity_wipe(&bad);
    lm_tls_ctx_free(NULL);

    struct bufferevent *bev = (struct bufferevent *)&bad;
    assert_int_equal(lm_tls_bev_socket(&bev, w->ta, w->base, -1, false, 0), -EINVAL);
    assert_null(bev);
    bev = (struct bufferevent *)&bad;
    assert_int_equal(lm_tls_bev_filter(&bev, w->ta, NULL, true, 0), -EINVAL);
    assert_null(bev);

    /* The describe helper blames the earliest error and drains the queue. */
    ERR_raise(ERR_LIB_SSL, SSL_R_HTTP_REQUEST);
    ERR_raise(ERR_LIB_SSL, SSL_R_WRONG_VERSION_NUMBER);
    lm_tls_describe(NULL, NULL, err, sizeof(err));
    assert_string_equal(err, "tls: handshake failed: the peer sent a plain HTTP request, not TLS");
    assert_int_equal(ERR_peek_error(), 0);
    lm_tls_describe(NULL, NULL, err, 5);
    assert_string_equal(err, "tls:");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mutual_tcp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_node_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_without_cert, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls12_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alpn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_ed25519, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filter_over_pair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_in_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mutated_client_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_own_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_ed25519_certs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_peer_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_edges, setup, teardown),
    };
    return cmocka_run_group_tests_name("tls", tests, NULL, NULL);
}
