/* gateway: the OpenAI-compatible HTTP API of a node. Owns: /v1/models,
 * /v1/chat/completions, /v1/completions, /v1/embeddings; auth keys and their
 * limits; relaying answers (SSE event by event) from the chosen endpoint;
 * exact usage; failover before the first byte; errors in OpenAI's shape;
 * the access log and the request metrics. */
#ifndef LM_GATEWAY_H
#define LM_GATEWAY_H

#include <stddef.h>

#include <event2/event.h>

#include "admin/admin.h"
#include "config/config.h"
#include "endpoints/endpoints.h"
#include "upstream/upstream.h"

struct lm_gateway;

struct lm_gateway_deps {
    struct event_base *base;
    struct lm_upstream *upstream;
    struct lm_endpoints *endpoints;
    struct lm_admin *admin; /* routes /admin/v1/requests, metrics */
    const char *node_name;
    const char *node_id;
};

/* Listens on cfg->gateway.listen. On failure err says why in one line. */
int lm_gateway_new(struct lm_gateway **out, const struct lm_gateway_deps *deps,
                   const struct lm_config *cfg, char *err, size_t errcap);
void lm_gateway_free(struct lm_gateway *g);
/* SIGHUP: keys, limits, timeouts, route mode. The listen address needs a
 * restart (config reports it). */
void lm_gateway_reconfigure(struct lm_gateway *g, const struct lm_config *cfg);
void lm_gateway_stop_listening(struct lm_gateway *g);
/* Requests may go to other nodes' providers through mesh (NULL: none). */
struct lm_mesh;
void lm_gateway_set_mesh(struct lm_gateway *g, struct lm_mesh *mesh);
unsigned lm_gateway_in_flight(const struct lm_gateway *g);

#endif
