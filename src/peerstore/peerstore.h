/* peerstore: the peers this node has known, kept across restarts.
 * Owns: data_dir/peers.db (SQLite, WAL), its schema and migrations, setting a
 * corrupt or unreadable file aside (a cache never stops the daemon), backoff.
 *
 * Every call is short and synchronous (one indexed statement on a table of
 * at most a few thousand rows, no fsync in WAL mode with synchronous=NORMAL).
 * labmand calls it on its loop, and rarely: when a peer connects or
 * disconnects, when a dial fails, and for gossip in batches (one transaction
 * between lm_peerstore_batch_begin and _end). Not for the request path. */
#ifndef LM_PEERSTORE_H
#define LM_PEERSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "identity/identity.h"

#define LM_PEERSTORE_FILE "peers.db"
#define LM_PEERSTORE_SCHEMA 1         /* PRAGMA user_version this code writes */
#define LM_PEERSTORE_DEFAULT_CAP 4096 /* rows kept by lm_peerstore_prune */
#define LM_PEERSTORE_MAX_ADDRS 16     /* addresses per peer */
#define LM_PEERSTORE_ADDR_MAX 300     /* bytes of one "host:port" / "[v6]:port" */
#define LM_PEERSTORE_NAME_MAX 64      /* bytes of a peer's name */
#define LM_PEERSTORE_BUSY_MS 200      /* SQLite busy_timeout */

/* How this node learned of a peer. An upsert never lowers it: a peer named
 * in [mesh] bootstrap stays "bootstrap" when gossip repeats it. */
enum lm_peer_source {
    LM_PEER_GOSSIP = 1,    /* a `peer` gossip record */
    LM_PEER_INBOUND = 2,   /* it connected to us */
    LM_PEER_BOOTSTRAP = 3, /* [mesh] bootstrap */
};

struct lm_peer_rec {
    char node_id[LM_NODE_ID_LEN + 1]; /* lowercase */
    char name[LM_PEERSTORE_NAME_MAX + 1];
    char *addrs[LM_PEERSTORE_MAX_ADDRS]; /* each "host:port" or "[v6]:port" */
    size_t n_addrs;
    enum lm_peer_source source;
    int64_t last_seen_ms; /* Unix ms; 0 = never */
    int64_t last_ok_ms;   /* last successful connection; 0 = never */
    int64_t last_fail_ms; /* last failed dial; 0 = never */
    uint32_t fails;       /* failed dials since the last success */
};

struct lm_peerstore;

/* Opens (creating) data_dir/peers.db and its schema. A file that SQLite
 * cannot read, that is corrupt, or that another program or a newer labman
 * wrote, is renamed to peers.db.corrupt-<unix ms> (with its -wal) and a new
 * one started, with a warning. When no file can be used at all (data_dir
 * missing or read-only), the store lives in memory for this run, with a
 * warning: peers are then rediscovered at the next start. Returns 0, or
 * -ENAMETOOLONG for an impossible path, -ENOMEM if SQLite cannot start. */
int lm_peerstore_open(const char *data_dir, struct lm_peerstore **out);
/* Commits a batch left open. NULL-safe. */
void lm_peerstore_close(struct lm_peerstore *ps);
/* False when the store fell back to memory. */
bool lm_peerstore_persistent(const struct lm_peerstore *ps);

/* Records that node_id exists, with what was learned now: name (NULL keeps
 * the stored one), addrs (NULL keeps the stored ones; n = 0 with non-NULL
 * addrs clears them), source (only ever raised), last_seen = now_ms.
 * -EINVAL for a malformed id, name (control characters, too long) or address
 * (lm_hostport_parse, port 1..65535), or more than LM_PEERSTORE_MAX_ADDRS;
 * -EIO when SQLite fails (logged). */
int lm_peerstore_upsert(struct lm_peerstore *ps, const char *node_id, const char *name,
                        const char *const *addrs, size_t n_addrs, enum lm_peer_source source,
                        int64_t now_ms);
/* A connection to node_id worked: fails = 0, last_ok = last_seen = now_ms.
 * -ENOENT when node_id is not stored. */
int lm_peerstore_mark_ok(struct lm_peerstore *ps, const char *node_id, int64_t now_ms);
/* A dial to node_id failed: fails + 1, last_fail = now_ms. -ENOENT when not
 * stored. */
int lm_peerstore_mark_fail(struct lm_peerstore *ps, const char *node_id, int64_t now_ms);
/* One peer; -ENOENT when not stored. Release *out with lm_peer_rec_release. */
int lm_peerstore_get(struct lm_peerstore *ps, const char *node_id, struct lm_peer_rec *out);
/* Up to max peers that have at least one address, the most recently
 * successful first (last_ok desc, then last_seen desc, then node_id). Trust
 * and backoff are the caller's to apply. Rows that do not read back as valid
 * are skipped. Free with lm_peer_recs_free(*out, *n). */
int lm_peerstore_candidates(struct lm_peerstore *ps, size_t max, struct lm_peer_rec **out,
                            size_t *n);
/* Deletes node_id; -ENOENT when not stored. */
int lm_peerstore_forget(struct lm_peerstore *ps, const char *node_id);
/* Keeps the max_rows most recently seen peers and deletes the rest (oldest
 * last_seen first); *removed (may be NULL) says how many went. */
int lm_peerstore_prune(struct lm_peerstore *ps, size_t max_rows, size_t *removed);
int lm_peerstore_count(struct lm_peerstore *ps, size_t *n);

/* One transaction around many calls (gossip updates): one commit instead of
 * one per call. Not nested: -EBUSY if a batch is open. _end commits (or, if
 * the commit fails, rolls back and returns -EIO). */
int lm_peerstore_batch_begin(struct lm_peerstore *ps);
int lm_peerstore_batch_end(struct lm_peerstore *ps);

void lm_peer_rec_release(struct lm_peer_rec *r);
void lm_peer_recs_free(struct lm_peer_rec *recs, size_t n);

/* How long to wait before dialing a peer again after fails consecutive
 * failures, "full jitter" exponential backoff:
 *     ceiling = min(max_ms, base_ms * 2^(fails - 1))
 *     delay   = floor(rand * (ceiling + 1) / 2^32)     (0 <= delay <= ceiling)
 * and 0 when fails = 0. Spreading the wait uniformly over [0, ceiling] keeps
 * many nodes that lost the same peer from redialing it in lock step. rand is
 * a uniform 32-bit random number (randombytes_random()); the result is a
 * pure function of the arguments so tests can pin it. */
uint32_t lm_peerstore_backoff_ms(uint32_t fails, uint32_t base_ms, uint32_t max_ms, uint32_t rand);

#endif
