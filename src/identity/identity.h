/* identity: this node's Ed25519 key and the node id derived from it.
 * Owns: data_dir/identity.key (format, 0600 mode, atomic creation, refusal of
 * loose permissions), node_id / short id, and signing with the node key. */
#ifndef LM_IDENTITY_H
#define LM_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LM_IDENTITY_FILE "identity.key"
/* File format, text: the magic line, then the hex of the 32-byte seed.
 *   labman-identity-v1\n
 *   <64 lowercase hex digits>\n */
#define LM_IDENTITY_MAGIC "labman-identity-v1"

#define LM_IDENTITY_PK_BYTES 32
#define LM_IDENTITY_SK_BYTES 64
#define LM_IDENTITY_SIG_BYTES 64
#define LM_NODE_ID_LEN 64  /* hex chars of the public key */
#define LM_SHORT_ID_LEN 12 /* first hex chars of node_id */

struct lm_identity {
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    uint8_t sk[LM_IDENTITY_SK_BYTES]; /* secret: never logged, wiped on free */
    char node_id[LM_NODE_ID_LEN + 1];
    char short_id[LM_SHORT_ID_LEN + 1];
    char path[4096]; /* the key file */
    bool created;    /* lm_identity_load_or_create made a new key */
    /* On failure: one line saying what is wrong with which file and what to
     * do about it, for the caller to log or print. */
    char err[512];
};

/* Creates data_dir (0700) when missing, then loads data_dir/identity.key or,
 * on first start, creates it (0600, written to a temp file, fsynced, linked
 * into place, directory fsynced). Refuses a key file that is group- or
 * other-accessible (-EACCES) or malformed (-EINVAL). */
int lm_identity_load_or_create(const char *data_dir, struct lm_identity *out);

/* Loads only; creates nothing. -ENOENT when there is no key file. */
int lm_identity_load(const char *data_dir, struct lm_identity *out);

/* Wipes the secret key. */
void lm_identity_wipe(struct lm_identity *id);

/* Detached Ed25519 signature over msg. */
void lm_identity_sign(const struct lm_identity *id, const void *msg, size_t len,
                      uint8_t sig[LM_IDENTITY_SIG_BYTES]);

/* 0 when sig is pk's signature over msg, else -EBADMSG. */
int lm_identity_verify(const uint8_t pk[LM_IDENTITY_PK_BYTES], const void *msg, size_t len,
                       const uint8_t sig[LM_IDENTITY_SIG_BYTES]);

/* Whether s is a node id: 64 hex digits, either case. */
bool lm_identity_is_node_id(const char *s);
/* The first LM_NODE_ID_LEN characters of s (a node id) in lowercase, the
 * form node ids are stored and compared in. */
void lm_identity_node_id_lower(char out[LM_NODE_ID_LEN + 1], const char *s);

/* Parses a node id (64 hex digits, either case) into a public key. */
int lm_identity_parse_node_id(const char *node_id, uint8_t pk[LM_IDENTITY_PK_BYTES]);

#endif
