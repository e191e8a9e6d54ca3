#include "tls/tls.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "util/util.h"

/* ALPN wire form: one length-prefixed protocol name. */
static const unsigned char alpn_wire[] = "\x08" LM_TLS_ALPN;
#define ALPN_WIRE_LEN (sizeof(alpn_wire) - 1)

#define REASON_MAX 256
#define CERT_BACKDATE_S (24 * 60 * 60)
#define CERT_DAYS (10 * 365)
#define SERIAL_BYTES 16

struct lm_tls_ctx {
    SSL_CTX *ssl;
};

/* Our callbacks run inside OpenSSL, which reduces what they found to a generic
 * "callback failed" or "certificate verify failed". They leave the real reason on
 * the SSL (ex_data, freed with it) for lm_tls_describe. */
static CRYPTO_ONCE reason_once = CRYPTO_ONCE_STATIC_INIT;
static int reason_idx = -1;

static void
reason_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

static int
reason_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx, long argl,
           void *argp)
{
    /* A copy must not share the buffer the original frees; it starts without one. */
    (void)to, (void)from, (void)idx, (void)argl, (void)argp;
    *from_d = NULL;
    return 1;
}

static void
reason_init(void)
{
    reason_idx = SSL_get_ex_new_index(0, NULL, NULL, reason_dup, reason_free);
}

static void
set_reason(SSL *ssl, const char *fmt, ...) LM_PRINTF(2, 3);

/* Keeps the first reason only: later failures are consequences of it. */
static void
set_reason(SSL *ssl, const char *fmt, ...)
{
    if (!ssl || reason_idx < 0 || SSL_get_ex_data(ssl, reason_idx))
        return;
    char *r = lm_xmalloc(REASON_MAX);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r, REASON_MAX, fmt, ap);
    va_end(ap);
    if (!SSL_set_ex_data(ssl, reason_idx, r))
        free(r);
}

static const char *
get_reason(const SSL *ssl)
{
    if (!ssl || reason_idx < 0)
        return NULL;
    return SSL_get_ex_data(ssl, reason_idx);
}

static void
put_err(char *err, size_t errlen, const char *fmt, ...) LM_PRINTF(3, 4);

static void
put_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The first OpenSSL error on this thread's queue, then clears the queue. */
static const char *
openssl_err(void)
{
    unsigned long e = ERR_peek_error();
    const char *s = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return s ? s : "unknown OpenSSL error";
}

/* "RSA", "EC (prime256v1)", ...: what a rejected peer key is, for the log. */
static void
key_kind(EVP_PKEY *pkey, char *out, size_t outlen)
{
    const char *name = pkey ? EVP_PKEY_get0_type_name(pkey) : NULL;
    char group[64];
    size_t glen = 0;

    if (!name)
        name = "unknown";
    if (pkey && EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC
        && EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) == 1 && glen > 0)
        snprintf(out, outlen, "%s (%s)", name, group);
    else
        snprintf(out, outlen, "%s", name);
    ERR_clear_error();
}

/* Runs for each check X509_verify_cert makes on the peer's certificate. Nothing is
 * trusted (the store is empty), so the only acceptable outcome is exactly one
 * certificate, self-signed, with an Ed25519 key: its key is the peer's identity, and
 * TLS 1.3's CertificateVerify proves the peer holds it. Every other error stands
 * (bad self-signature with X509_V_FLAG_CHECK_SS_SIGNATURE, not yet valid, expired). */
static int
verify_cb(int ok, X509_STORE_CTX *xs)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    STACK_OF(X509) *sent = X509_STORE_CTX_get0_untrusted(xs);
    X509 *cert = X509_STORE_CTX_get_current_cert(xs);
    int n = sent ? sk_X509_num(sent) : 0;

    if (n != 1 || X509_STORE_CTX_get_error_depth(xs) != 0) {
        set_reason(ssl, "the peer sent %d certificates; labnet/1 wants exactly one, "
                        "self-signed with the node key", n);
        X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
        return 0;
    }
    EVP_PKEY *pkey = cert ? X509_get0_pubkey(cert) : NULL;
    if (!pkey || EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) {
        char kind[96];
        key_kind(pkey, kind, sizeof(kind));
        set_reason(ssl, "the peer's certificate key is %s; labnet/1 node keys are Ed25519",
                   kind);
        X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REJECTED);
        return 0;
    }
    if (ok)
        return 1;
    int e = X509_STORE_CTX_get_error(xs);
    if (e == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT) {
        X509_STORE_CTX_set_error(xs, X509_V_OK);
        return 1;
    }
    const char *hint = "";
    if (e == X509_V_ERR_CERT_NOT_YET_VALID || e == X509_V_ERR_CERT_HAS_EXPIRED)
        hint = " (check the clocks on both nodes)";
    else if (e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
             || e == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE)
        hint = " (it is not self-signed)";
    set_reason(ssl, "the peer's certificate failed verification: %s%s",
               X509_verify_cert_error_string(e), hint);
    return 0;
}

/* Protocol names of an ALPN list, escaped, for the log: "h2", "http/1.1". */
static void
alpn_names(const unsigned char *in, size_t inlen, char *out, size_t outlen)
{
    size_t o = 0, i = 0;

    out[0] = '\0';
    while (i < inlen && o + 8 < outlen) {
        size_t n = in[i++];
        if (n > inlen - i)
            n = inlen - i;
        char esc[80];
        lm_escape(esc, sizeof(esc), in + i, n);
        int w = snprintf(out + o, outlen - o, "%s\"%s\"", o ? ", " : "", esc);
        if (w < 0 || (size_t)w >= outlen - o) {
            out[o] = '\0';
            break;
        }
        o += (size_t)w;
        i += n;
    }
}

static int
alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
               const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)arg;
    /* OpenSSL has checked the list's framing; the bounds are checked again anyway. */
    for (unsigned int i = 0; i < inlen;) {
        unsigned int n = in[i++];
        if (n > inlen - i)
            break;
        if (n == ALPN_WIRE_LEN - 1 && memcmp(in + i, alpn_wire + 1, n) == 0) {
            *out = in + i;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += n;
    }
    char names[200];
    alpn_names(in, inlen, names, sizeof(names));
    set_reason(ssl, "the peer offered ALPN %s, not \"" LM_TLS_ALPN "\"", names);
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* Whether a ClientHello's supported_versions extension lists TLS 1.3. */
static int
offers_tls13(SSL *ssl)
{
    const unsigned char *p;
    size_t len;

    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &p, &len) || len < 1)
        return 0;
    size_t n = p[0];
    if (n > len - 1)
        n = len - 1;
    for (size_t i = 1; i + 1 <= n; i += 2)
        if (p[i] == (TLS1_3_VERSION >> 8) && p[i + 1] == (TLS1_3_VERSION & 0xff))
            return 1;
    return 0;
}

/* The ALPN select callback only runs when the client sent ALPN; a client without it
 * would otherwise complete the handshake, so a missing ALPN is refused here. */
static int
client_hello_cb(SSL *ssl, int *alert, void *arg)
{
    const unsigned char *p;
    size_t len;

    (void)arg;
    /* Not TLS 1.3: OpenSSL refuses it next with protocol_version, the real problem,
     * which an ALPN complaint here would hide. */
    if (!offers_tls13(ssl))
        return SSL_CLIENT_HELLO_SUCCESS;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation,
                                   &p, &len)) {
        set_reason(ssl, "the peer offered no ALPN; labnet/1 peers offer \"" LM_TLS_ALPN "\"");
        *alert = SSL_AD_NO_APPLICATION_PROTOCOL;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int
add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

/* Self-signed, X.509 v3. Subject = issuer = "O=labman, CN=<node_id>": the full id is
 * exactly the 64 characters RFC 5280 allows a CN ("labman <node_id>" would be 71 and
 * OpenSSL refuses it). The name is for people reading the certificate; peers only
 * look at the key. The certificate is made afresh at every start, so it only has to
 * outlive one run: valid from a day ago (a peer's clock a little behind ours must not
 * see it "not yet valid"; signed frames already need clocks within 5 minutes) for ten
 * years, which no run outlasts. X509_time_adj_ex adds the days in calendar arithmetic,
 * so a notAfter past 2038 needs no 64-bit time_t. */
static X509 *
make_cert(EVP_PKEY *pkey, const struct lm_identity *id)
{
    X509 *x = X509_new();
    ASN1_INTEGER *serial = NULL;
    BIGNUM *bn = NULL;
    unsigned char rnd[SERIAL_BYTES];

    if (!x)
        goto fail;
    /* Random and positive (RFC 5280); the top bits fixed keep it SERIAL_BYTES long. */
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto fail;
    rnd[0] = (unsigned char)((rnd[0] & 0x7f) | 0x40);
    bn = BN_bin2bn(rnd, sizeof(rnd), NULL);
    serial = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    if (!serial || !X509_set_serialNumber(x, serial))
        goto fail;
    if (!X509_set_version(x, X509_VERSION_3))
        goto fail;
    if (!X509_gmtime_adj(X509_getm_notBefore(x), -CERT_BACKDATE_S)
        || !X509_time_adj_ex(X509_getm_notAfter(x), CERT_DAYS, 0, NULL))
        goto fail;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"labman",
                                    -1, -1, 0)
        || !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                       (const unsigned char *)id->node_id, -1, -1, 0)
        || !X509_set_issuer_name(x, name))
        goto fail;
    if (!X509_set_pubkey(x, pkey))
        goto fail;
    /* No keyUsage: one without keyCertSign would make OpenSSL (and others) stop
     * treating the certificate as self-signed. */
    if (add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0
        || add_ext(x, NID_subject_key_identifier, "hash") < 0)
        goto fail;
    /* Ed25519 hashes internally: no digest. */
    if (X509_sign(x, pkey, NULL) <= 0)
        goto fail;
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return x;
fail:
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    X509_free(x);
    return NULL;
}

int
lm_tls_ctx_new(struct lm_tls_ctx **out, const struct lm_identity *id, char *err, size_t errlen)
{
    SSL_CTX *ssl = NULL;
    EVP_PKEY *pkey = NULL;
    X509 *cert = NULL;
    int rc = -EIO;

    *out = NULL;
    if (CRYPTO_THREAD_run_once(&reason_once, reason_init) != 1 || reason_idx < 0) {
        put_err(err, errlen, "tls: cannot set up OpenSSL: %s", openssl_err());
        return -EIO;
    }
    /* libsodium's secret key is seed || pk; OpenSSL wants the seed. */
    pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, id->sk,
                                        LM_IDENTITY_SK_BYTES - LM_IDENTITY_PK_BYTES);
    if (!pkey) {
        put_err(err, errlen, "tls: cannot load the node key: %s", openssl_err());
        goto out;
    }
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    size_t pklen = sizeof(pk);
    if (EVP_PKEY_get_raw_public_key(pkey, pk, &pklen) != 1 || pklen != sizeof(pk)
        || memcmp(pk, id->pk, sizeof(pk)) != 0) {
        ERR_clear_error();
        put_err(err, errlen, "tls: the identity's public key does not match its secret key");
        rc = -EINVAL;
        goto out;
    }
    cert = make_cert(pkey, id);
    if (!cert) {
        put_err(err, errlen, "tls: cannot make the node certificate: %s", openssl_err());
        goto out;
    }

    ssl = SSL_CTX_new(TLS_method());
    if (!ssl || !SSL_CTX_set_min_proto_version(ssl, TLS1_3_VERSION)
        || !SSL_CTX_set_max_proto_version(ssl, TLS1_3_VERSION)) {
        put_err(err, errlen, "tls: cannot make a TLS 1.3 context: %s", openssl_err());
        goto out;
    }
    /* No resumption: a resumed session skips the certificates, connections are
     * long-lived (yamux carries everything), and a full Ed25519/X25519 handshake is
     * cheap. So no tickets (TLS 1.3 would send two per connection), no cache, no
     * ticket keys to rotate, no 0-RTT replay to think about. */
    SSL_CTX_set_options(ssl, SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET
                                 | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    if (!SSL_CTX_set_num_tickets(ssl, 0)) {
        put_err(err, errlen, "tls: cannot turn session tickets off: %s", openssl_err());
        goto out;
    }
    SSL_CTX_set_max_cert_list(ssl, LM_TLS_MAX_CERT_LIST);
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
    /* A self-signed certificate's own signature is otherwise never checked. */
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ssl), X509_V_FLAG_CHECK_SS_SIGNATURE);
    /* Note the inverted convention: 0 is success. */
    if (SSL_CTX_set_alpn_protos(ssl, alpn_wire, ALPN_WIRE_LEN) != 0) {
        put_err(err, errlen, "tls: cannot set ALPN: %s", openssl_err());
        goto out;
    }
    SSL_CTX_set_alpn_select_cb(ssl, alpn_select_cb, NULL);
    SSL_CTX_set_client_hello_cb(ssl, client_hello_cb, NULL);
    if (SSL_CTX_use_certificate(ssl, cert) != 1 || SSL_CTX_use_PrivateKey(ssl, pkey) != 1
        || SSL_CTX_check_private_key(ssl) != 1) {
        put_err(err, errlen, "tls: cannot use the node certificate: %s", openssl_err());
        goto out;
    }

    struct lm_tls_ctx *c = lm_xcalloc(1, sizeof(*c));
    c->ssl = ssl;
    ssl = NULL;
    *out = c;
    rc = 0;
out:
    SSL_CTX_free(ssl);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    return rc;
}

void
lm_tls_ctx_free(struct lm_tls_ctx *c)
{
    if (!c)
        return;
    SSL_CTX_free(c->ssl);
    free(c);
}

SSL_CTX *
lm_tls_ctx_ssl(struct lm_tls_ctx *c)
{
    return c->ssl;
}

static SSL *
ssl_new(struct lm_tls_ctx *c)
{
    SSL *ssl = SSL_new(c->ssl);
    /* It fails only when OpenSSL cannot allocate. */
    if (!ssl) {
        fprintf(stderr, "labman: out of memory (SSL_new)\n");
        abort();
    }
    return ssl;
}

int
lm_tls_bev_socket(struct bufferevent **out, struct lm_tls_ctx *c, struct event_base *base,
                  evutil_socket_t fd, bool accept, int options)
{
    *out = NULL;
    if (fd < 0)
        return -EINVAL;
    SSL *ssl = ssl_new(c);
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, fd, ssl, accept ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
        options | BEV_OPT_CLOSE_ON_FREE);
    /* Again only allocation: the fd is not looked at until the loop runs. */
    if (!bev) {
        fprintf(stderr, "labman: out of memory (bufferevent_openssl_socket_new)\n");
        abort();
    }
    *out = bev;
    return 0;
}

int
lm_tls_bev_filter(struct bufferevent **out, struct lm_tls_ctx *c, struct bufferevent *inner,
                  bool accept, int options)
{
    *out = NULL;
    if (!inner)
        return -EINVAL;
    SSL *ssl = ssl_new(c);
    struct bufferevent *bev = bufferevent_openssl_filter_new(
        bufferevent_get_base(inner), inner, ssl,
        accept ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
        options | BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        fprintf(stderr, "labman: out of memory (bufferevent_openssl_filter_new)\n");
        abort();
    }
    /* libevent starts a connecting filter's handshake only from inner's callbacks or
     * when the filter is enabled for reading (its SSL_read starts it). An owner that
     * enables reading later, or queues its first frame before, would wait forever for
     * a ClientHello that inner has no reason to ask for. Deferred, so that no callback
     * runs before the caller has set its own. */
    if (!accept)
        bufferevent_trigger(inner, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    *out = bev;
    return 0;
}

int
lm_tls_peer_id(const SSL *ssl, char out[LM_NODE_ID_LEN + 1])
{
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    size_t len = sizeof(pk);

    out[0] = '\0';
    X509 *cert = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    EVP_PKEY *pkey = cert ? X509_get0_pubkey(cert) : NULL;
    if (!pkey || EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) {
        ERR_clear_error();
        return -EPROTO;
    }
    if (EVP_PKEY_get_raw_public_key(pkey, pk, &len) != 1 || len != sizeof(pk)) {
        ERR_clear_error();
        return -EPROTO;
    }
    lm_hex_encode(out, pk, sizeof(pk));
    return 0;
}

int
lm_tls_check(const SSL *ssl, const char *expect_node_id, char out_id[LM_NODE_ID_LEN + 1],
             char *err, size_t errlen)
{
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    uint8_t want[LM_IDENTITY_PK_BYTES], got[LM_IDENTITY_PK_BYTES];

    out_id[0] = '\0';
    if (!ssl || !SSL_is_init_finished(ssl)) {
        put_err(err, errlen, "tls: the handshake is not finished");
        return -EPROTO;
    }
    if (SSL_version(ssl) != TLS1_3_VERSION) {
        put_err(err, errlen, "tls: the peer negotiated %s; labnet/1 needs TLSv1.3",
                SSL_get_version(ssl));
        return -EPROTO;
    }
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len != ALPN_WIRE_LEN - 1 || memcmp(alpn, alpn_wire + 1, alpn_len) != 0) {
        char esc[64];
        lm_escape(esc, sizeof(esc), alpn, alpn_len);
        put_err(err, errlen, "tls: the peer agreed to ALPN \"%s\", not \"" LM_TLS_ALPN "\"",
                esc);
        return -EPROTO;
    }
    /* Our verify callback accepted the certificate; this catches an SSL made
     * elsewhere with verification off. */
    if (SSL_get_verify_result(ssl) != X509_V_OK) {
        put_err(err, errlen, "tls: the peer's certificate was not verified: %s",
                X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
        return -EPROTO;
    }
    if (lm_tls_peer_id(ssl, out_id) < 0) {
        put_err(err, errlen, "tls: the peer has no Ed25519 certificate");
        return -EPROTO;
    }
    if (!expect_node_id)
        return 0;
    if (lm_identity_parse_node_id(expect_node_id, want) < 0) {
        char esc[80];
        lm_escape(esc, sizeof(esc), expect_node_id, strlen(expect_node_id));
        put_err(err, errlen, "tls: the expected node id \"%s\" is not 64 hex digits", esc);
        return -EINVAL;
    }
    lm_hex_decode(got, sizeof(got), out_id);
    if (memcmp(want, got, sizeof(want)) != 0) {
        char want_hex[LM_NODE_ID_LEN + 1];
        lm_hex_encode(want_hex, want, sizeof(want));
        put_err(err, errlen,
                "tls: dialed %.12s... but the peer's key is %.12s...: another node answers "
                "at that address (expected %s, got %s)",
                want_hex, out_id, want_hex, out_id);
        return -EPERM;
    }
    return 0;
}

/* Both Finished messages exchanged. SSL_is_init_finished turns false again once a
 * connection has failed, so it cannot tell a failed handshake from a broken link. */
static bool
handshake_done(const SSL *ssl)
{
    unsigned char fin[EVP_MAX_MD_SIZE];
    return ssl && SSL_get_finished(ssl, fin, sizeof(fin)) > 0
           && SSL_get_peer_finished(ssl, fin, sizeof(fin)) > 0;
}

/* Alerts that are a peer's verdict on our handshake. A TLS 1.3 client has finished
 * its handshake before the server judges its certificate, so these arrive after. */
static bool
handshake_alert(unsigned long e)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return false;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
    case SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER:
    case SSL_R_TLSV1_ALERT_DECODE_ERROR:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY:
        return true;
    }
    return false;
}

/* Plain words for the OpenSSL failures an operator will meet. */
static const char *
friendly(unsigned long e, bool done)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return NULL;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_UNSUPPORTED_PROTOCOL:
        return "the peer does not offer TLS 1.3 (labnet/1 needs TLS 1.3)";
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        return "the peer refused TLS 1.3 (alert protocol_version)";
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        return "the peer presented no certificate";
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        return "the peer wants a certificate and we sent none (alert certificate_required)";
    case SSL_R_NO_APPLICATION_PROTOCOL:
        return "no application protocol: the peer did not offer \"" LM_TLS_ALPN "\"";
    case SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL:
        return "the peer refused ALPN \"" LM_TLS_ALPN "\" (alert no_application_protocol)";
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        return "the peer rejected our certificate (alert bad_certificate)";
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        return "the peer rejected our certificate (alert unsupported_certificate)";
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        return "the peer rejected our certificate (alert unknown_ca)";
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
        return "the peer could not verify a signature of ours (alert decrypt_error)";
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
        return "the peer says our certificate expired (alert certificate_expired; check the "
               "clocks on both nodes)";
    case SSL_R_HTTP_REQUEST:
        return "the peer sent a plain HTTP request, not TLS";
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_WRONG_SSL_VERSION:
        return "the peer does not speak TLS (bytes that are not a TLS record)";
    case SSL_R_EXCESSIVE_MESSAGE_SIZE:
        return "the peer sent a handshake message larger than we accept";
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return done ? "the peer closed the connection without a TLS close_notify"
                    : "the peer closed the connection during the handshake";
    }
    return NULL;
}

static void
describe_code(unsigned long e, bool done, char *out, size_t outlen)
{
    const char *f = friendly(e, done);
    if (f) {
        snprintf(out, outlen, "%s", f);
        return;
    }
    if (ERR_SYSTEM_ERROR(e)) {
        snprintf(out, outlen, "%s", strerror(ERR_GET_REASON(e)));
        return;
    }
    const char *r = ERR_reason_error_string(e);
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) >= SSL_AD_REASON_OFFSET)
        snprintf(out, outlen, "the peer sent an alert: %s", r ? r : "unknown");
    else if (r)
        snprintf(out, outlen, "%s", r);
    else
        snprintf(out, outlen, "OpenSSL error %lu", e);
}

void
lm_tls_describe(const SSL *ssl, struct bufferevent *bev, char *out, size_t outlen)
{
    unsigned long first = 0, e;
    char detail[REASON_MAX + 64];
    /* A socket error reaches us only as errno: OpenSSL records none for it. */
    int sys_errno = errno;
    bool syscall = false;

    if (!ssl && bev)
        ssl = bufferevent_openssl_get_ssl(bev);
    /* libevent keeps a few errors per bufferevent: SSL_get_error()'s code (a small
     * number, no library), then the OpenSSL queue's codes, and hands them back newest
     * first. The earliest real error is the cause; the rest follow from it. Both
     * sources are drained, so that nothing stale is blamed on the next connection. */
    unsigned long saved[8];
    size_t n = 0;
    while (bev && (e = bufferevent_get_openssl_error(bev)) != 0)
        if (n < LM_ARRAY_LEN(saved))
            saved[n++] = e;
    while (n > 0) {
        e = saved[--n];
        if (ERR_GET_LIB(e) == 0 && !ERR_SYSTEM_ERROR(e))
            syscall = syscall || e == SSL_ERROR_SYSCALL;
        else if (!first)
            first = e;
    }
    while ((e = ERR_get_error()) != 0)
        if (!first)
            first = e;

    bool done = handshake_done(ssl);
    const char *reason = get_reason(ssl);
    if (reason)
        snprintf(detail, sizeof(detail), "%s", reason);
    else if (first && ERR_GET_LIB(first) == ERR_LIB_SSL
             && ERR_GET_REASON(first) == SSL_R_CERTIFICATE_VERIFY_FAILED)
        snprintf(detail, sizeof(detail), "the peer's certificate failed verification: %s",
                 ssl ? X509_verify_cert_error_string(SSL_get_verify_result(ssl)) : "unknown");
    else if (first)
        describe_code(first, done, detail, sizeof(detail));
    else if (syscall && sys_errno != 0 && sys_errno != EAGAIN && sys_errno != EWOULDBLOCK
             && sys_errno != EINTR)
        snprintf(detail, sizeof(detail), "socket error: %s", strerror(sys_errno));
    else if (syscall)
        snprintf(detail, sizeof(detail), "socket error");
    else if (done)
        snprintf(detail, sizeof(detail), "the peer closed the connection");
    else
        snprintf(detail, sizeof(detail),
                 "the connection closed during the handshake (no TLS error recorded)");
    if (outlen)
        snprintf(out, outlen, "tls: %s: %s",
                 done && !reason && !handshake_alert(first) ? "connection failed"
                                                            : "handshake failed",
                 detail);
}
