/* mesh: this node's place in labnet/1 (PROTOCOL.md, SPEC §6, docs/mesh.md).
 * Owns: the mesh listener and dialer, one TLS + yamux connection per peer,
 * HELLO, trust at the door, the gossip exchange, and the peers view. */
#ifndef LM_MESH_H
#define LM_MESH_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <jansson.h>

#include "config/config.h"
#include "endpoints/endpoints.h"
#include "upstream/upstream.h"
#include "identity/identity.h"
#include "util/util.h"

struct lm_mesh;

struct lm_mesh_deps {
    struct event_base *base;
    const struct lm_identity *id;
    struct lm_endpoints *endpoints; /* what capabilities announce and requests run on */
    struct lm_upstream *upstream;   /* for requests from other nodes */
    const char *data_dir;           /* peers.db */
};

/* Whether cfg puts this node on a mesh at all: a node with trust = private,
 * no trusted peers and no bootstrap could neither accept nor reach anyone, so
 * it opens no port (SPEC §3: an empty config is a local-only gateway). */
bool lm_mesh_enabled(const struct lm_config *cfg);

/* Listens on cfg->mesh.listen and starts dialing. *out is NULL (and 0 is
 * returned) when the mesh is not enabled. err: one line on failure. */
int lm_mesh_new(struct lm_mesh **out, const struct lm_mesh_deps *deps,
                const struct lm_config *cfg, char *err, size_t errcap);
void lm_mesh_free(struct lm_mesh *m);
/* SIGHUP: trust lists and mode (peers no longer allowed are disconnected and
 * their records dropped), bootstrap, max_peers, gossip interval. cfg must
 * live until the next call. */
void lm_mesh_reconfigure(struct lm_mesh *m, const struct lm_config *cfg);
void lm_mesh_stop_listening(struct lm_mesh *m);

/* GET /admin/v1/peers: every node known, connected or only gossiped. */
json_t *lm_mesh_peers_json(struct lm_mesh *m);
/* Adds the mesh's state to the status object's "mesh" (made when absent). */
void lm_mesh_status(struct lm_mesh *m, json_t *st);
void lm_mesh_metrics(struct lm_mesh *m, struct lm_buf *out);

/* --- requests to other nodes (PROTOCOL.md §4) ---------------------------------------------- */

/* The connected provider to try for model, or -ENOENT when none: it
 * advertises the model (id or alias) in its capabilities, trust allows it,
 * it is not in skip; ranked by free slots, loaded before on disk, measured
 * RTT, recent failures, then price. pin (a node id or name, NULL = any)
 * limits the choice to that node. out gets the node id, name its name. */
int lm_mesh_pick(struct lm_mesh *m, const char *model, const char *pin,
                 char (*skip)[LM_NODE_ID_LEN + 1], size_t nskip, char out[LM_NODE_ID_LEN + 1],
                 char *name, size_t namecap);
/* Whether node (id or name) is this node. */
bool lm_mesh_is_self(const struct lm_mesh *m, const char *node);

struct lm_mesh_req;

struct lm_mesh_req_opts {
    const char *node_id;    /* the provider, from lm_mesh_pick */
    const char *api;        /* "chat", "completions", "embeddings" */
    const char *model;      /* as the client named it */
    const char *request_id; /* 32 lowercase hex; NULL or other: a fresh one */
    const void *body;       /* the OpenAI request JSON, already validated */
    size_t body_len;
    bool stream;
    uint64_t deadline_ms;   /* time left for the whole request */
};

struct lm_mesh_usage {
    uint64_t prompt_tokens, completion_tokens;
    bool signed_end;        /* from the provider's signed PROXY_END */
    int64_t retry_after_ms; /* from a PROXY_ERROR; -1 none */
};

/* As lm_upstream_cbs: none runs inside lm_mesh_request or after a cancel. */
struct lm_mesh_req_cbs {
    void (*on_head)(struct lm_mesh_req *r, int status, const char *content_type, void *arg);
    /* The answer's bytes as the provider's runtime sent them; the callee may
     * pause (the provider is slowed through the yamux window). */
    void (*on_data)(struct lm_mesh_req *r, const char *data, size_t len, void *arg);
    /* The end; the request is already freed. err 0 after the provider's
     * signed PROXY_END; -ENOENT model not there, -EBUSY overloaded, -EPERM
     * refused, -ETIMEDOUT, -EINVAL bad request, -ECONNRESET the stream or
     * connection broke, -EPROTO a protocol breach, -EIO the provider's
     * runtime failed. u: usage and retry hint. */
    void (*on_done)(struct lm_mesh_req *r, int err, const char *msg,
                    const struct lm_mesh_usage *u, void *arg);
};

/* Opens a stream to the provider and sends the signed PROXY_REQUEST.
 * -ENOTCONN when it is not connected now, -EMSGSIZE for a body over 4 MiB. */
int lm_mesh_request(struct lm_mesh *m, const struct lm_mesh_req_opts *o,
                    const struct lm_mesh_req_cbs *cbs, void *arg, struct lm_mesh_req **out);
void lm_mesh_req_pause(struct lm_mesh_req *r);
void lm_mesh_req_resume(struct lm_mesh_req *r);
/* Resets the stream: the provider aborts its runtime's request at once. */
void lm_mesh_req_cancel(struct lm_mesh_req *r);
const char *lm_mesh_req_node(const struct lm_mesh_req *r);
/* Through a relay (X-Labman-Route: relay) rather than a direct connection. */
bool lm_mesh_req_relayed(const struct lm_mesh_req *r);

/* One request this node's gateway finished, for the `market` record
 * (PROTOCOL.md §3: recent demand): model, tokens, whether it went unserved,
 * its time to first token in ms (0 unknown). */
void lm_mesh_note_demand(struct lm_mesh *m, const char *model, uint64_t tokens_in,
                         uint64_t tokens_out, bool unserved, uint64_t ttft_ms);

/* The models of connected providers for /v1/models: an array of
 * {id, nodes:[{node_id, name, loaded}]}. */
json_t *lm_mesh_models_json(struct lm_mesh *m);

#endif
