/* tls: the mesh's TLS layer (labnet/1, PROTOCOL.md §1.1-1.2): TLS 1.3 only, mutual auth,
 * ALPN "labnet/1". Owns: the SSL_CTX with our self-signed Ed25519 certificate, the peer
 * checks (one self-signed Ed25519 cert), node ids read from certificates, failure text. */
#ifndef LM_TLS_H
#define LM_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/util.h>
#include <openssl/ssl.h>

#include "identity/identity.h"

#define LM_TLS_ALPN "labnet/1"
/* The largest certificate list a peer may send. Ours is about 430 bytes; OpenSSL's
 * default (100 KiB) would let any stranger make us buffer and parse far more. */
#define LM_TLS_MAX_CERT_LIST (16 * 1024)
/* What owners should give a handshake (bufferevent_set_timeouts on the TLS bufferevent):
 * TLS itself never gives up on a peer that connects and says nothing. */
#define LM_TLS_HANDSHAKE_TIMEOUT_MS 10000

struct bufferevent;
struct event_base;
struct lm_tls_ctx;

/* One SSL_CTX for both accepting and connecting, presenting a fresh self-signed
 * certificate for id's key. On failure err holds one line (errlen may be 0). */
int lm_tls_ctx_new(struct lm_tls_ctx **out, const struct lm_identity *id, char *err,
                   size_t errlen);
void lm_tls_ctx_free(struct lm_tls_ctx *c);

/* The SSL_CTX, for SSL_new() by owners that build their own bufferevents (and for
 * tests). It must outlive every SSL made from it. */
SSL_CTX *lm_tls_ctx_ssl(struct lm_tls_ctx *c);

/* A TLS bufferevent over a connected non-blocking socket, client (accept false) or
 * server. The bufferevent owns fd and its SSL (bufferevent_openssl_get_ssl):
 * BEV_OPT_CLOSE_ON_FREE is always added to options, so bufferevent_free closes fd and
 * frees the SSL; never SSL_free it yourself. The handshake runs when the loop does;
 * BEV_EVENT_CONNECTED means it finished and lm_tls_check is next. -EINVAL for fd < 0. */
int lm_tls_bev_socket(struct bufferevent **out, struct lm_tls_ctx *c, struct event_base *base,
                      evutil_socket_t fd, bool accept, int options);

/* The same over another bufferevent (a relayed yamux stream: TLS end to end inside
 * it), which the new one owns and frees. Use this rather than a bare
 * bufferevent_openssl_filter_new: a connecting filter needs a kick to start. */
int lm_tls_bev_filter(struct bufferevent **out, struct lm_tls_ctx *c, struct bufferevent *inner,
                      bool accept, int options);

/* The peer's node id: lowercase hex of its certificate's Ed25519 public key.
 * -EPROTO (out "") when there is no peer certificate or its key is not Ed25519. */
int lm_tls_peer_id(const SSL *ssl, char out[LM_NODE_ID_LEN + 1]);

/* Call once the handshake is done (BEV_EVENT_CONNECTED), before trusting a byte:
 * TLS 1.3, ALPN labnet/1, the peer's node id into out_id. With expect_node_id (the id
 * dialed; NULL = anyone, e.g. when accepting), a different key is -EPERM. Other
 * failures: -EPROTO (-EINVAL for a malformed expect_node_id). err gets one line. */
int lm_tls_check(const SSL *ssl, const char *expect_node_id, char out_id[LM_NODE_ID_LEN + 1],
                 char *err, size_t errlen);

/* One log line on why a TLS connection failed (on BEV_EVENT_ERROR or _EOF), e.g.
 *   "tls: handshake failed: the peer offered ALPN \"h2\", not \"labnet/1\"".
 * Reads (and so clears) what bev saved from OpenSSL (bev may be NULL), this thread's
 * OpenSSL error queue, and what our callbacks recorded on ssl (NULL: bev's SSL). */
void lm_tls_describe(const SSL *ssl, struct bufferevent *bev, char *out, size_t outlen);

#endif
