#include "identity/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

#define SEED_BYTES 32
/* magic + '\n' + 64 hex + '\n' is 84 bytes; anything much longer is not ours. */
#define KEY_FILE_MAX 256

static int
sodium_ready(void)
{
    /* sodium_init is idempotent: 0 first time, 1 after. */
    return sodium_init() < 0 ? -EIO : 0;
}

static void
set_err(struct lm_identity *id, const char *fmt, ...) LM_PRINTF(2, 3);

static void
set_err(struct lm_identity *id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(id->err, sizeof(id->err), fmt, ap);
    va_end(ap);
}

static int
key_path(const char *data_dir, struct lm_identity *id)
{
    int n = snprintf(id->path, sizeof(id->path), "%s/%s", data_dir, LM_IDENTITY_FILE);
    if (n < 0 || (size_t)n >= sizeof(id->path)) {
        set_err(id, "data_dir is too long: %.64s...", data_dir);
        return -ENAMETOOLONG;
    }
    return 0;
}

static void
from_seed(struct lm_identity *id, const uint8_t seed[SEED_BYTES])
{
    crypto_sign_seed_keypair(id->pk, id->sk, seed);
    lm_hex_encode(id->node_id, id->pk, sizeof(id->pk));
    memcpy(id->short_id, id->node_id, LM_SHORT_ID_LEN);
    id->short_id[LM_SHORT_ID_LEN] = '\0';
}

/* Parses the file text. Accepts exactly the magic line and the hex seed,
 * with or without the final newline; nothing else. */
static int
parse_key(const char *text, size_t len, uint8_t seed[SEED_BYTES])
{
    size_t mlen = strlen(LM_IDENTITY_MAGIC);
    if (len < mlen + 1 || memcmp(text, LM_IDENTITY_MAGIC, mlen) != 0 || text[mlen] != '\n')
        return -EINVAL;
    const char *hex = text + mlen + 1;
    size_t rest = len - mlen - 1;
    if (rest == 2 * SEED_BYTES + 1 && hex[2 * SEED_BYTES] == '\n')
        rest--;
    if (rest != 2 * SEED_BYTES || !lm_is_hex(hex, rest))
        return -EINVAL;
    char tmp[2 * SEED_BYTES + 1];
    memcpy(tmp, hex, 2 * SEED_BYTES);
    tmp[2 * SEED_BYTES] = '\0';
    int rc = lm_hex_decode(seed, SEED_BYTES, tmp);
    sodium_memzero(tmp, sizeof(tmp));
    return rc;
}

static int
load_path(struct lm_identity *id)
{
    char text[KEY_FILE_MAX + 1];
    uint8_t seed[SEED_BYTES];
    size_t len = 0;
    int rc = 0;

    int fd = open(id->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        rc = -errno;
        set_err(id, "cannot open identity key %s: %s", id->path, strerror(errno));
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        set_err(id, "cannot stat identity key %s: %s", id->path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        set_err(id, "identity key %s is not a regular file", id->path);
        goto out;
    }
    /* Like ssh with its private keys: a key others can read is not ours
     * alone any more, and refusing is the only way the operator hears of it. */
    if (st.st_mode & 077) {
        rc = -EACCES;
        set_err(id,
                "identity key %s is accessible by group or others (mode %04o); "
                "run `chmod 600 %s` if it has not leaked, else remove it to create a new one",
                id->path, (unsigned)(st.st_mode & 07777), id->path);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, text + len, sizeof(text) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            set_err(id, "cannot read identity key %s: %s", id->path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(text))
            break;
    }
    if (len > KEY_FILE_MAX || parse_key(text, len, seed) < 0) {
        rc = -EINVAL;
        set_err(id,
                "identity key %s is malformed (expected \"%s\" and 64 hex digits); "
                "restore it from a backup or remove it to create a new identity",
                id->path, LM_IDENTITY_MAGIC);
        goto out;
    }
    from_seed(id, seed);
out:
    sodium_memzero(text, sizeof(text));
    sodium_memzero(seed, sizeof(seed));
    close(fd);
    return rc;
}

/* mkdir -p, new components 0700. An existing directory is left as it is. */
static int
mkdir_p(const char *dir, struct lm_identity *id)
{
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(buf)) {
        set_err(id, "invalid data_dir");
        return -EINVAL;
    }
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
            int e = errno;
            set_err(id, "cannot create data_dir %s: %s", buf, strerror(e));
            return -e;
        }
        buf[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        set_err(id, "data_dir %s is not a directory", dir);
        return -ENOTDIR;
    }
    return 0;
}

static int
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Writes a new key to a temp file and links it into place, so that a crash
 * never leaves a half-written key and two daemons starting at once agree on
 * one key (link fails with EEXIST for the loser, who then loads the winner's). */
static int
create_key(const char *data_dir, struct lm_identity *id)
{
    uint8_t seed[SEED_BYTES];
    char text[KEY_FILE_MAX];
    char tmp[4096 + 32];
    int rc = 0, fd = -1;
    bool have_tmp = false;

    randombytes_buf(seed, sizeof(seed));
    char hex[2 * SEED_BYTES + 1];
    lm_hex_encode(hex, seed, sizeof(seed));
    int len = snprintf(text, sizeof(text), "%s\n%s\n", LM_IDENTITY_MAGIC, hex);
    sodium_memzero(hex, sizeof(hex));

    snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", data_dir, LM_IDENTITY_FILE);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        set_err(id, "cannot create a file in %s: %s", data_dir, strerror(errno));
        goto out;
    }
    have_tmp = true;
    if (fchmod(fd, 0600) < 0 || (rc = write_all(fd, text, (size_t)len)) < 0 || fsync(fd) < 0) {
        rc = rc ? rc : -errno;
        set_err(id, "cannot write identity key %s: %s", tmp, strerror(-rc));
        goto out;
    }
    close(fd);
    fd = -1;
    if (link(tmp, id->path) < 0) {
        rc = -errno;
        if (rc == -EEXIST) {
            rc = load_path(id);
            goto out;
        }
        if ((rc == -EPERM || rc == -ENOTSUP) && rename(tmp, id->path) == 0) {
            have_tmp = false;
            rc = 0;
        } else {
            set_err(id, "cannot create identity key %s: %s", id->path, strerror(-rc));
            goto out;
        }
    }
    int dfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (have_tmp)
            unlink(tmp);
        have_tmp = false;
        fsync(dfd);
        close(dfd);
    }
    from_seed(id, seed);
    id->created = true;
out:
    if (fd >= 0)
        close(fd);
    if (have_tmp)
        unlink(tmp);
    sodium_memzero(seed, sizeof(seed));
    sodium_memzero(text, sizeof(text));
    return rc;
}

int
lm_identity_load(const char *data_dir, struct lm_identity *out)
{
    memset(out, 0, sizeof(*out));
    int rc = sodium_ready();
    if (rc) {
        set_err(out, "libsodium failed to initialise");
        return rc;
    }
    if ((rc = key_path(data_dir, out)) < 0)
        return rc;
    rc = load_path(out);
    if (rc == -ENOENT)
        set_err(out, "no identity key at %s (labmand creates it on first start)", out->path);
    if (rc)
        lm_identity_wipe(out);
    return rc;
}

int
lm_identity_load_or_create(const char *data_dir, struct lm_identity *out)
{
    memset(out, 0, sizeof(*out));
    int rc = sodium_ready();
    if (rc) {
        set_err(out, "libsodium failed to initialise");
        return rc;
    }
    if ((rc = key_path(data_dir, out)) < 0 || (rc = mkdir_p(data_dir, out)) < 0)
        return rc;
    rc = load_path(out);
    if (rc == -ENOENT) {
        out->err[0] = '\0';
        rc = create_key(data_dir, out);
    }
    if (rc)
        lm_identity_wipe(out);
    return rc;
}

void
lm_identity_wipe(struct lm_identity *id)
{
    if (id)
        sodium_memzero(id->sk, sizeof(id->sk));
}

void
lm_identity_sign(const struct lm_identity *id, const void *msg, size_t len,
                 uint8_t sig[LM_IDENTITY_SIG_BYTES])
{
    crypto_sign_detached(sig, NULL, msg, len, id->sk);
}

int
lm_identity_verify(const uint8_t pk[LM_IDENTITY_PK_BYTES], const void *msg, size_t len,
                   const uint8_t sig[LM_IDENTITY_SIG_BYTES])
{
    if (sodium_ready() < 0)
        return -EIO;
    return crypto_sign_verify_detached(sig, msg, len, pk) == 0 ? 0 : -EBADMSG;
}

bool
lm_identity_is_node_id(const char *s)
{
    return s && strlen(s) == LM_NODE_ID_LEN && lm_is_hex(s, LM_NODE_ID_LEN);
}

void
lm_identity_node_id_lower(char out[LM_NODE_ID_LEN + 1], const char *s)
{
    for (size_t i = 0; i < LM_NODE_ID_LEN; i++)
        out[i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] - 'A' + 'a') : s[i];
    out[LM_NODE_ID_LEN] = '\0';
}

int
lm_identity_parse_node_id(const char *node_id, uint8_t pk[LM_IDENTITY_PK_BYTES])
{
    return lm_hex_decode(pk, LM_IDENTITY_PK_BYTES, node_id);
}
