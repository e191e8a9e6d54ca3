/* mesh internals shared by mesh.c (connections, gossip) and proxy.c
 * (requests across the mesh). Not for other modules. */
#ifndef LM_MESH_INTERNAL_H
#define LM_MESH_INTERNAL_H

#include <event2/bufferevent.h>

#include "mesh/mesh.h"
#include "upstream/upstream.h"
#include "frame/frame.h"
#include "gossip/gossip.h"
#include "peerstore/peerstore.h"
#include "tls/tls.h"
#include "trust/trust.h"
#include "yamux/yamux.h"

#define TICK_MS 1000
#define OUT_CAP (16u << 20)       /* TLS bytes queued to a peer before it counts as stalled */
#define CTL_QUEUE_CAP (8u << 20)  /* control frames waiting for the stream's window */
#define HELLO_TIMEOUT_MS 10000
#define LINGER_MS 2000            /* a closed connection's last bytes (an ERROR) may take this */
#define LINGER_MAX (64u << 10)    /* and be this many; more is not worth waiting for */
#define FANOUT 3
#define BAN_BASE_MS 30000         /* a misbehaving peer is refused this long, doubling */
#define BAN_MAX_MS (30u * 60u * 1000u)
#define STRIKES_MAX 5             /* bad frames from one connection before it is dropped */
#define BACKOFF_BASE_MS 1000
#define BACKOFF_MAX_MS 60000
#define FRAME_RATE 500            /* control frames per second a peer may send, sustained */
#define FRAME_BURST 5000          /* and in one burst (a full anti-entropy answer) */
#define RECORD_TTL_MS (10u * 60u * 1000u) /* own records; refreshed at half */
#define ADDRS_MAX 8
#define PEERS_MAX 4096            /* nodes remembered, connected or not */
#define SOFTWARE "labman/" LM_VERSION

struct conn;
struct serve;
struct carrier;
struct splice;

/* A node this one knows of: from bootstrap, the peer store, a HELLO or a
 * `peer` record. */
struct peer {
    char id[LM_NODE_ID_LEN + 1];
    char name[LM_PEERSTORE_NAME_MAX + 1];
    json_t *roles;            /* array of strings, as the peer said */
    char addrs[ADDRS_MAX][128];
    unsigned naddrs;
    struct conn *conn;        /* the connection in use, NULL when none */
    struct conn *dialing;     /* a connection we are opening to it */
    unsigned fails;           /* dials in a row that failed */
    unsigned req_fails;       /* requests to it that failed lately (halved on success) */
    unsigned offences;        /* times it was dropped for misbehaving */
    uint64_t banned_until_ms; /* monotonic: refused until then */
    uint64_t next_dial_ms;    /* monotonic */
    uint64_t last_seen_ms;    /* wall clock; 0 never */
    char relays[4][LM_NODE_ID_LEN + 1]; /* relays it is reachable through, from its record */
    unsigned nrelays;
    struct peer *next;
};

struct conn {
    struct lm_mesh *m;
    struct bufferevent *bev;
    struct lm_yamux *mux;
    struct lm_yamux_stream *ctl;
    struct lm_frame_reader rd;
    struct lm_buf ctlq; /* control frames the window did not take yet */
    size_t ctlq_off;
    struct peer *peer;  /* once the TLS peer is known and allowed */
    char id[LM_NODE_ID_LEN + 1];     /* from its certificate */
    char expect[LM_NODE_ID_LEN + 1]; /* dialing: the id dialed */
    char addr[160];
    char via[LM_NODE_ID_LEN + 1]; /* through this relay; "" for a direct connection */
    struct carrier *carrier;      /* the relayed stream under bev, when via */
    size_t req_pending;           /* bytes of PROXY_REQUESTs not complete yet (proxy.c) */
    bool dialed, tls_ok, hello_sent, hello_got, dead;
    uint64_t started_ms, up_ms; /* monotonic */
    uint64_t bytes_in, bytes_out, frames_in;
    double tokens;
    uint64_t tokens_ms;
    unsigned strikes;
    struct event *reap;
    struct conn *next;
};

/* Reasons a frame or a connection was refused, for labman_mesh_rejected_total.
 * handshake: an accepted connection whose TLS handshake failed (not TLS, no
 * or another ALPN, no or a bad certificate, silence); banned: a peer kept out
 * for a while after it misbehaved. */
enum rej { REJ_SIGNATURE, REJ_MALFORMED, REJ_STALE, REJ_REPLAY, REJ_TOO_LARGE, REJ_UNTRUSTED,
           REJ_FLOOD, REJ_FORGED, REJ_HANDSHAKE, REJ_BANNED, REJ_N };
static const char *const rej_names[REJ_N] = {"bad_signature", "malformed", "stale", "replayed",
                                             "too_large", "untrusted", "flood", "forged",
                                             "handshake", "banned"};

/* Demand for one model in the current market window (the gateway's view). */
struct demand {
    char model[128];
    uint64_t requests, tokens_in, tokens_out, unserved;
    uint32_t ttft[64]; /* a sample of first-token times (ms) for the p50 */
    unsigned nttft;
};

#define MARKET_WINDOW_S 60
#define MARKET_MODELS 64 /* models tracked per window; more are folded into none */

struct lm_mesh {
    struct event_base *base;
    struct lm_upstream *upstream;
    const struct lm_identity *id;
    struct lm_endpoints *endpoints;
    const struct lm_config *cfg;
    struct lm_tls_ctx *tls;
    struct evconnlistener *lis;
    struct evdns_base *dns;
    struct lm_gossip *gossip;
    struct lm_frame_replay *replay;
    struct lm_trust_vouches *vouches;
    struct lm_peerstore *store;
    struct peer *peers;
    unsigned npeers;
    struct conn *conns;
    struct event *tick;
    struct event *digest_ev;  /* every gossip_interval_ms: a digest to a random peer */
    int digest_interval_ms;   /* the interval it is armed with */
    uint8_t digest_cursor[LM_IDENTITY_PK_BYTES];
    char *caps_text; /* the capabilities body published last */
    char listen_addr[160];
    uint64_t rejected[REJ_N];
    struct lm_mesh_req *reqs; /* ours, in flight */
    struct serve *serving;    /* other nodes', in flight */
    struct splice *splices;   /* circuits this relay carries */
    uint64_t circuits_total;
    char relays_seen[LM_NODE_ID_LEN * 8 + 8]; /* relays in our last peer record */
    struct demand demand[MARKET_MODELS];
    unsigned ndemand;
    uint64_t market_at_ms; /* when the current window ends (monotonic) */
    int market_window_s;
    uint64_t proxy_sent, proxy_ok, proxy_failed, served, served_ok;
};



/* mesh.c */
void lm_mesh_conn_close_(struct conn *c, const char *fmt, ...) LM_PRINTF(2, 3);
bool lm_mesh_conn_up_(const struct conn *c);
const char *lm_mesh_who_(const struct conn *c);
int lm_mesh_trust_(struct lm_mesh *m, const char *id, struct lm_trust_verdict *v);

struct conn *lm_mesh_conn_new_(struct lm_mesh *m, bool dialed, const char *addr);
/* Runs TLS and then the session over bev (a socket or a TLS filter). */
void lm_mesh_conn_start_(struct conn *c, struct bufferevent *bev);
struct peer *lm_mesh_peer_find_(struct lm_mesh *m, const char *id);
void lm_mesh_send_stream_frame_(struct lm_yamux_stream *st, uint8_t type, json_t *payload);

/* relay.c */
/* A stream whose first frame is CIRCUIT_OPEN: this node is its target (an
 * inner TLS connection follows) or, as a relay, splices it to the target.
 * rest: bytes after the frame. Takes the stream over. */
void lm_mesh_circuit_accept_(struct conn *c, struct lm_yamux_stream *st, json_t *open,
                             const uint8_t *rest, size_t nrest);
/* Dials p through one of its relays that this node is connected to. */
int lm_mesh_circuit_dial_(struct lm_mesh *m, struct peer *p);
void lm_mesh_carrier_free_(struct carrier *k);
/* The inner connection's bytes onto the relayed stream, in order. */
void lm_mesh_carrier_send_(struct carrier *k, const void *data, size_t n);
void lm_mesh_relay_free_all_(struct lm_mesh *m);
unsigned lm_mesh_splices_(const struct lm_mesh *m);

/* proxy.c */
/* The peer opened a stream other than the control stream: a PROXY_REQUEST
 * comes first. 0 accepts it (callbacks set), < 0 refuses it. */
int lm_mesh_proxy_accept_(struct conn *c, struct lm_yamux_stream *st);
void lm_mesh_proxy_metrics_(struct lm_mesh *m, struct lm_buf *out);
void lm_mesh_proxy_free_all_(struct lm_mesh *m);

#endif
