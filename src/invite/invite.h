/* invite: the one-line token with which a node asks another to trust it.
 * Owns: the token format (labman1:...), the text-preserving edit of a config
 * file's [mesh] that joins the token's node, and replacing that file safely.
 *
 * Token, one line, only [a-z0-9.:@,/-] so that it survives a shell, a chat
 * window and an email unquoted:
 *     labman1:<node id>[@<addr>[,<addr>...]]/<check>
 *   node id  64 hex digits (the Ed25519 public key, SPEC §6)
 *   addr     host:port as in [mesh] advertise; an IPv6 host is written
 *            without brackets (brackets are shell globs) and its port is
 *            after the last ':' (2001:db8::1:41145)
 *   check    8 hex digits: the first 4 bytes of BLAKE2b-128 of everything
 *            before the '/'. It catches a token cut short or mistyped; it is
 *            no signature: the token must come over a channel the operator
 *            trusts, since joining trusts whatever id it names.
 * Parsing ignores case (everything is written lowercase) and whitespace
 * around the token. */
#ifndef LM_INVITE_H
#define LM_INVITE_H

#include <stdbool.h>
#include <stddef.h>

#include "identity/identity.h"
#include "util/util.h"

#define LM_INVITE_PREFIX "labman1:"
#define LM_INVITE_MAX_ADDRS 16
#define LM_INVITE_ADDR_MAX 300  /* bytes of one address in config form */
#define LM_INVITE_TOKEN_MAX 2048 /* bytes of a token */
#define LM_INVITE_CHECK_LEN 8

struct lm_invite {
    char node_id[LM_NODE_ID_LEN + 1]; /* lowercase */
    /* As [mesh] advertise/bootstrap write them ("host:port", "[v6]:port"),
     * lowercase, no duplicates. */
    char addrs[LM_INVITE_MAX_ADDRS][LM_INVITE_ADDR_MAX + 1];
    size_t n_addrs;
};

/* Starts an invite for node_id (64 hex digits, either case); -EINVAL if not. */
int lm_invite_init(struct lm_invite *inv, const char *node_id);
/* Adds an address in config form. -EINVAL if malformed, -EADDRNOTAVAIL for
 * an unspecified address (0.0.0.0, ::) that no peer can dial, -ENOSPC past
 * LM_INVITE_MAX_ADDRS; a duplicate is ignored (0). */
int lm_invite_add_addr(struct lm_invite *inv, const char *addr);

/* The token, NUL-terminated, into out (cap >= LM_INVITE_TOKEN_MAX + 1 is
 * always enough). -E2BIG when the token would pass LM_INVITE_TOKEN_MAX or
 * cap. */
int lm_invite_format(const struct lm_invite *inv, char *out, size_t cap);
/* Parses and checks a token. -EINVAL with one line in err saying what is
 * wrong (no position: a token is short). */
int lm_invite_parse(const char *token, struct lm_invite *out, char *err, size_t errcap);

/* What a join changed. */
struct lm_invite_edit {
    bool trusted_added;     /* node id appended to [mesh] trusted_peers */
    size_t bootstrap_added; /* "<id>@<addr>" entries appended to [mesh] bootstrap */
};

/* The config text (len bytes) with inv's node trusted: its id in [mesh]
 * trusted_peers and "<id>@<addr>" for each address in [mesh] bootstrap,
 * added only where missing (ids and addresses compared without case), so a
 * second join changes nothing. Comments, order and layout are kept: an
 * existing array gets the new items at its end in its own style (one per
 * line for a multi-line array); a missing key goes after the last key of
 * [mesh], whether it is a [mesh] table, dotted `mesh.key = ...` lines or an
 * inline `mesh = {...}`; with no [mesh] at all a table is appended. Line
 * endings follow the file's.
 * The result is parsed again and must equal the old config plus exactly
 * these additions, else nothing is returned (-EPROTO).
 * Returns 0 with the new text in out (a copy when nothing changed) and *ed
 * filled; -EINVAL when text is not a valid config; -EPERM when the node is
 * in denied_peers; -ENOTSUP for a layout it cannot edit; -EFBIG past
 * LM_CONFIG_MAX_BYTES. err gets one line on failure. */
int lm_invite_join(const char *text, size_t len, const struct lm_invite *inv, struct lm_buf *out,
                   struct lm_invite_edit *ed, char *err, size_t errcap);

/* Replaces the file at path (following a symlink to the file it names) by
 * text: a temp file in the same directory with the old one's mode and owner,
 * fsynced, then renamed over it, then the directory fsynced, so a crash
 * leaves the old file or the new one, never half of one. If the file no
 * longer holds `before` (someone edited it meanwhile) nothing is written and
 * -EAGAIN returned. Other failures: -errno; err gets one line. */
int lm_invite_write_file(const char *path, const char *before, size_t before_len, const char *text,
                         size_t len, char *err, size_t errcap);

#endif
