/* Unit tests for src/invite: token format and every way a token can be
 * wrong; the text-preserving [mesh] edit on each layout a config can have
 * (exact output); idempotence; and the atomic file replacement. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "config/config.h"
#include "invite/invite.h"

#define ID "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define ID_UP "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

/* ---- tokens --------------------------------------------------------------- */

/* body + "/" + its checksum, computed here independently of the module. */
static void
sealed(char *out, size_t cap, const char *body)
{
    unsigned char h[16];
    crypto_generichash(h, sizeof(h), (const unsigned char *)body, strlen(body), NULL, 0);
    snprintf(out, cap, "%s/%02x%02x%02x%02x", body, h[0], h[1], h[2], h[3]);
}

static void
parse_fails(const char *token, const char *msg)
{
    struct lm_invite inv;
    char err[256] = "";
    int rc = lm_invite_parse(token, &inv, err, sizeof(err));
    if (rc != -EINVAL || strcmp(err, msg) != 0)
        fprintf(stderr, "token %s: %d \"%s\"\n", token ? token : "(null)", rc, err);
    assert_int_equal(rc, -EINVAL);
    assert_string_equal(err, msg);
    assert_string_equal(inv.node_id, "");
    assert_int_equal(inv.n_addrs, 0);
}

static void
test_token_format(void **state)
{
    (void)state;
    struct lm_invite inv, back;
    char tok[LM_INVITE_TOKEN_MAX + 1], want[LM_INVITE_TOKEN_MAX + 1], err[256];

    assert_int_equal(lm_invite_init(&inv, ID_UP), 0);
    assert_string_equal(inv.node_id, ID);
    assert_int_equal(lm_invite_format(&inv, tok, sizeof(tok)), 0);
    sealed(want, sizeof(want), "labman1:" ID);
    assert_string_equal(tok, want);
    assert_int_equal(lm_invite_parse(tok, &back, err, sizeof(err)), 0);
    assert_string_equal(back.node_id, ID);
    assert_int_equal(back.n_addrs, 0);

    assert_int_equal(lm_invite_add_addr(&inv, "Lab-1.Example.ORG:41145"), 0);
    assert_int_equal(lm_invite_add_addr(&inv, "192.0.2.7:5000"), 0);
    assert_int_equal(lm_invite_add_addr(&inv, "[2001:DB8::1]:41145"), 0);
    assert_int_equal(lm_invite_add_addr(&inv, "lab-1.example.org:41145"), 0); /* duplicate */
    assert_int_equal(inv.n_addrs, 3);
    assert_int_equal(lm_invite_format(&inv, tok, sizeof(tok)), 0);
    /* No brackets, no capitals, nothing a shell would expand. */
    sealed(want, sizeof(want),
           "labman1:" ID "@lab-1.example.org:41145,192.0.2.7:5000,2001:db8::1:41145");
    assert_string_equal(tok, want);
    assert_int_equal(strspn(tok, "abcdefghijklmnopqrstuvwxyz0123456789.:@,/-"), strlen(tok));

    assert_int_equal(lm_invite_parse(tok, &back, err, sizeof(err)), 0);
    assert_string_equal(back.node_id, ID);
    assert_int_equal(back.n_addrs, 3);
    assert_string_equal(back.addrs[0], "lab-1.example.org:41145");
    assert_string_equal(back.addrs[1], "192.0.2.7:5000");
    assert_string_equal(back.addrs[2], "[2001:db8::1]:41145");

    /* The example of docs/trust.md, checksum from Python's hashlib.blake2b
     * (digest_size=16): pins the format across implementations. */
    assert_int_equal(lm_invite_init(&back, ID), 0);
    assert_int_equal(lm_invite_add_addr(&back, "lab-1.example.org:41145"), 0);
    assert_int_equal(lm_invite_add_addr(&back, "192.0.2.7:41145"), 0);
    assert_int_equal(lm_invite_format(&back, want, sizeof(want)), 0);
    assert_string_equal(want, "labman1:" ID "@lab-1.example.org:41145,192.0.2.7:41145/e0ab994b");

    /* Too small a buffer, too long a token. */
    assert_int_equal(lm_invite_format(&inv, tok, 20), -E2BIG);
    char host[256];
    memset(host, 'h', 250);
    host[250] = '\0';
    for (int i = 0; i < 16; i++) {
        char a[300];
        snprintf(a, sizeof(a), "%s:%d", host, 1000 + i);
        assert_int_equal(lm_invite_add_addr(&inv, a), i < 13 ? 0 : -ENOSPC);
    }
    assert_int_equal(lm_invite_format(&inv, tok, sizeof(tok)), -E2BIG);
}

static void
test_token_addresses(void **state)
{
    (void)state;
    struct lm_invite inv;
    assert_int_equal(lm_invite_init(&inv, "xyz"), -EINVAL);
    assert_int_equal(lm_invite_init(&inv, NULL), -EINVAL);
    assert_int_equal(lm_invite_init(&inv, ID "0"), -EINVAL);
    assert_int_equal(lm_invite_init(&inv, ID), 0);
    assert_int_equal(lm_invite_add_addr(&inv, "0.0.0.0:41145"), -EADDRNOTAVAIL);
    assert_int_equal(lm_invite_add_addr(&inv, "[::]:41145"), -EADDRNOTAVAIL);
    assert_int_equal(lm_invite_add_addr(&inv, "[0:0::0]:41145"), -EADDRNOTAVAIL);
    const char *bad[] = {"", "h", "h:0", "h:70000", ":1", "a b:1", "[zz::1]:1", "[::1]", NULL};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(lm_invite_add_addr(&inv, bad[i]), -EINVAL);
    assert_int_equal(inv.n_addrs, 0);
    for (int i = 0; i < LM_INVITE_MAX_ADDRS; i++) {
        char a[32];
        snprintf(a, sizeof(a), "h%d:1", i);
        assert_int_equal(lm_invite_add_addr(&inv, a), 0);
    }
    assert_int_equal(lm_invite_add_addr(&inv, "one-more:1"), -ENOSPC);
    assert_int_equal(lm_invite_add_addr(&inv, "h0:1"), 0); /* a duplicate still fits */
    assert_int_equal(inv.n_addrs, LM_INVITE_MAX_ADDRS);
}

static void
test_token_parse_tolerates(void **state)
{
    (void)state;
    struct lm_invite inv;
    char tok[600], pasted[700], err[256];

    /* Pasted with a newline and spaces around it, or shouted by a chat app. */
    sealed(tok, sizeof(tok), "labman1:" ID "@h.example:1,[::1]:2,10.0.0.1:3,h.example:1");
    snprintf(pasted, sizeof(pasted), "  %s\r\n", tok);
    assert_int_equal(lm_invite_parse(pasted, &inv, err, sizeof(err)), 0);
    assert_int_equal(inv.n_addrs, 3); /* the repeated address once */
    assert_string_equal(inv.addrs[1], "[::1]:2");
    for (char *p = pasted; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    assert_int_equal(lm_invite_parse(pasted, &inv, err, sizeof(err)), 0);
    assert_string_equal(inv.node_id, ID);
    assert_string_equal(inv.addrs[0], "h.example:1");
}

static void
test_token_parse_refuses(void **state)
{
    (void)state;
    char tok[3000], body[3000];

    parse_fails(NULL, "no token");
    parse_fails(" \n", "the token is empty");
    parse_fails("hello", "not a labman invite token (one starts with \"labman1:\")");
    parse_fails("labman2:" ID "/00000000",
                "token version labman2 is not understood by this labman (it reads labman1)");
    parse_fails("labman1:" ID, "the token has no checksum at its end: was it cut short?");
    sealed(tok, sizeof(tok), "labman1:" ID "@host.example:41145");
    const char *mismatch = "the token's checksum does not match: it was cut short or mistyped; "
                           "copy it again";
    /* Cut short by one character; a digit of the port changed. */
    tok[strlen(tok) - 1] = '\0';
    parse_fails(tok, mismatch);
    sealed(tok, sizeof(tok), "labman1:" ID "@host.example:41145");
    *strstr(tok, "41145") = '5';
    parse_fails(tok, mismatch);
    sealed(tok, sizeof(tok), "labman1:" ID "@host.example:41145");
    *strstr(tok, "host") = ' ';
    parse_fails(tok, "the token has a space, line break or other unexpected character inside; "
                     "copy it as one line");
    memset(tok, 'a', sizeof(tok) - 1);
    tok[sizeof(tok) - 1] = '\0';
    parse_fails(tok, "the token is longer than 2048 bytes");

    /* Well sealed, wrong inside. */
    sealed(tok, sizeof(tok), "labman1:" ID "0");
    parse_fails(tok, "the token's node id is not 64 hex digits");
    sealed(tok, sizeof(tok), "labman1:xyz@h:1");
    parse_fails(tok, "the token's node id is not 64 hex digits");
    sealed(tok, sizeof(tok), "labman1:" ID "@h:0");
    parse_fails(tok, "the token's address \"h:0\" is not host:port");
    sealed(tok, sizeof(tok), "labman1:" ID "@h:1,,h:2");
    parse_fails(tok, "the token's address \"\" is not host:port");
    sealed(tok, sizeof(tok), "labman1:" ID "@");
    parse_fails(tok, "the token's address \"\" is not host:port");
    sealed(tok, sizeof(tok), "labman1:" ID "@0.0.0.0:41145");
    parse_fails(tok, "the token's address \"0.0.0.0:41145\" is not host:port that a peer can "
                     "dial");
    sealed(tok, sizeof(tok), "labman1:" ID "@::1");
    parse_fails(tok, "the token's address \"::1\" is not host:port");
    sealed(tok, sizeof(tok), "labman1:" ID "@gg::1:41145");
    parse_fails(tok, "the token's address \"gg::1:41145\" is not host:port");
    snprintf(body, sizeof(body), "labman1:" ID "@");
    for (int i = 0; i <= LM_INVITE_MAX_ADDRS; i++)
        snprintf(body + strlen(body), sizeof(body) - strlen(body), "%sh%d:1", i ? "," : "", i);
    sealed(tok, sizeof(tok), body);
    parse_fails(tok, "the token has more than 16 addresses");
}

/* ---- the [mesh] edit ------------------------------------------------------ */

static void
invite(struct lm_invite *inv, const char *id, const char *a1, const char *a2)
{
    assert_int_equal(lm_invite_init(inv, id), 0);
    if (a1)
        assert_int_equal(lm_invite_add_addr(inv, a1), 0);
    if (a2)
        assert_int_equal(lm_invite_add_addr(inv, a2), 0);
}

/* Joins inv into in and expects exactly want; then joins again and
 * expects no change at all. */
static void
join_gives(const char *in, const struct lm_invite *inv, const char *want, bool trusted,
           size_t boot)
{
    struct lm_buf out, again;
    struct lm_invite_edit ed;
    char err[512] = "";
    int rc = lm_invite_join(in, strlen(in), inv, &out, &ed, err, sizeof(err));
    if (rc != 0 || strcmp(out.data, want) != 0)
        fprintf(stderr, "rc %d (%s)\n--- input:\n%s\n--- got:\n%s\n--- wanted:\n%s\n", rc, err,
                in, out.data ? out.data : "(null)", want);
    assert_int_equal(rc, 0);
    assert_string_equal(out.data, want);
    assert_int_equal(ed.trusted_added, trusted);
    assert_int_equal(ed.bootstrap_added, boot);

    rc = lm_invite_join(out.data, out.len, inv, &again, &ed, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_string_equal(again.data, out.data);
    assert_false(ed.trusted_added);
    assert_int_equal(ed.bootstrap_added, 0);
    lm_buf_release(&out);
    lm_buf_release(&again);
}

static void
join_fails(const char *in, const struct lm_invite *inv, int want_rc, const char *want_err)
{
    struct lm_buf out;
    struct lm_invite_edit ed;
    char err[512] = "";
    int rc = lm_invite_join(in, strlen(in), inv, &out, &ed, err, sizeof(err));
    if (rc != want_rc || strcmp(err, want_err) != 0)
        fprintf(stderr, "rc %d: %s\n", rc, err);
    assert_int_equal(rc, want_rc);
    assert_string_equal(err, want_err);
    assert_null(out.data);
    assert_false(ed.trusted_added);
    lm_buf_release(&out);
}

#define T "\"" ID "\""
#define B1 "\"" ID "@h.example:41145\""
#define B2 "\"" ID "@[2001:db8::1]:41145\""

static void
test_join_no_mesh(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", NULL);
    join_gives("", &inv, "[mesh]\ntrusted_peers = [" T "]\nbootstrap = [" B1 "]\n", true, 1);
    join_gives("# labman\n[node]\nname = \"n\" # the name", &inv,
               "# labman\n[node]\nname = \"n\" # the name\n\n"
               "[mesh]\ntrusted_peers = [" T "]\nbootstrap = [" B1 "]\n",
               true, 1);
    /* No addresses: no bootstrap key. */
    invite(&inv, ID, NULL, NULL);
    join_gives("[node]\nname = \"n\"\n", &inv,
               "[node]\nname = \"n\"\n\n[mesh]\ntrusted_peers = [" T "]\n", true, 0);
}

static void
test_join_mesh_without_keys(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", "[2001:db8::1]:41145");
    join_gives("[node]\nname = \"n\"\n\n"
               "[mesh]   # the overlay\n"
               "trust = \"private\"  # only friends\n"
               "max_peers = 8\n"
               "\n"
               "# local runtimes\n"
               "[discovery]\nscan_local = false\n",
               &inv,
               "[node]\nname = \"n\"\n\n"
               "[mesh]   # the overlay\n"
               "trust = \"private\"  # only friends\n"
               "max_peers = 8\n"
               "trusted_peers = [" T "]\n"
               "bootstrap = [\n    " B1 ",\n    " B2 ",\n]\n"
               "\n"
               "# local runtimes\n"
               "[discovery]\nscan_local = false\n",
               true, 2);
    /* A header alone, at the end of a file without a final newline. */
    join_gives("[mesh]", &inv,
               "[mesh]\ntrusted_peers = [" T "]\nbootstrap = [\n    " B1 ",\n    " B2 ",\n]\n",
               true, 2);
    join_gives("[mesh]\n\n[node]\n", &inv,
               "[mesh]\ntrusted_peers = [" T "]\nbootstrap = [\n    " B1 ",\n    " B2 ",\n]\n"
               "\n[node]\n",
               true, 2);
    /* The last key's value spans two lines, with literal and multi-line
     * strings and a comment holding quotes and a bracket; no final newline. */
    join_gives("[mesh]\nadvertise = [ # \"a\" ] '\n  '''h:1''', \"\"\"h:2\"\"\"]", &inv,
               "[mesh]\nadvertise = [ # \"a\" ] '\n  '''h:1''', \"\"\"h:2\"\"\"]\n"
               "trusted_peers = [" T "]\nbootstrap = [\n    " B1 ",\n    " B2 ",\n]\n",
               true, 2);
    join_gives("[mesh]\nlisten = \"\"\"\n0.0.0.0:41145\"\"\"\n", &inv,
               "[mesh]\nlisten = \"\"\"\n0.0.0.0:41145\"\"\"\n"
               "trusted_peers = [" T "]\nbootstrap = [\n    " B1 ",\n    " B2 ",\n]\n",
               true, 2);
}

static void
test_join_multiline_arrays(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", "[2001:db8::1]:41145");
    join_gives("[mesh]\n"
               "trusted_peers = [\n"
               "    \"" ID_A "\",  # alice's ] \"box\"\n"
               "    \"" ID_B "\",  # bob\n"
               "    # \"cccc\" left\n"
               "]\n"
               "bootstrap = [\n"
               "  \"" ID_B "@b.example:41145\" # bob's box\n"
               "]\n"
               "trust = \"private\"\n",
               &inv,
               "[mesh]\n"
               "trusted_peers = [\n"
               "    \"" ID_A "\",  # alice's ] \"box\"\n"
               "    \"" ID_B "\",  # bob\n"
               "    " T ",\n"
               "    # \"cccc\" left\n"
               "]\n"
               "bootstrap = [\n"
               "  \"" ID_B "@b.example:41145\", # bob's box\n"
               "  " B1 ",\n"
               "  " B2 "\n"
               "]\n"
               "trust = \"private\"\n",
               true, 2);
    /* Empty multi-line arrays take the items one per line. */
    join_gives("[mesh]\ntrusted_peers = [\n  # nobody yet\n  ]\nbootstrap = [\n]\n", &inv,
               "[mesh]\ntrusted_peers = [\n  # nobody yet\n      " T ",\n  ]\n"
               "bootstrap = [\n    " B1 ",\n    " B2 ",\n]\n",
               true, 2);
    /* The closing bracket on the last item's line: added on that line. */
    join_gives("[mesh]\ntrusted_peers = [\n    \"" ID_A "\",\n    \"" ID_B "\"]\n", &inv,
               "[mesh]\ntrusted_peers = [\n    \"" ID_A "\",\n    \"" ID_B "\", " T "]\n"
               "bootstrap = [\n    " B1 ",\n    " B2 ",\n]\n",
               true, 2);
}

static void
test_join_single_line_arrays(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", NULL);
    join_gives("[mesh]\ntrusted_peers = [\"" ID_A "\"] # friends\nbootstrap = []\n", &inv,
               "[mesh]\ntrusted_peers = [\"" ID_A "\", " T "] # friends\nbootstrap = [" B1 "]\n",
               true, 1);
    join_gives("[mesh]\ntrusted_peers = [ \"" ID_A "\" , ]\nbootstrap = [ ]\n", &inv,
               "[mesh]\ntrusted_peers = [ \"" ID_A "\", " T " , ]\nbootstrap = [" B1 " ]\n", true,
               1);
}

static void
test_join_inline_and_dotted(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", NULL);
    join_gives("mesh = { trust = \"friends\" }\n", &inv,
               "mesh = { trust = \"friends\", trusted_peers = [" T "], bootstrap = [" B1 "] }\n",
               true, 1);
    join_gives("mesh = {}\n", &inv, "mesh = { trusted_peers = [" T "], bootstrap = [" B1 "] }\n",
               true, 1);
    join_gives("mesh = { trusted_peers = [\"" ID_A "\"], max_peers = 3 } # m\n", &inv,
               "mesh = { trusted_peers = [\"" ID_A "\", " T "], max_peers = 3, bootstrap = [" B1
               "] } # m\n",
               true, 1);
    /* Dotted keys at the top: the new key joins them, dotted too. */
    join_gives("mesh.trust = \"private\"\n"
               "mesh.trusted_peers = [\"" ID_A "\"]  # x\n"
               "\n[node]\nname = \"n\"\n",
               &inv,
               "mesh.trust = \"private\"\n"
               "mesh.trusted_peers = [\"" ID_A "\", " T "]  # x\n"
               "mesh.bootstrap = [" B1 "]\n"
               "\n[node]\nname = \"n\"\n",
               true, 1);
    join_gives("\"mesh\" . trust = \"public\"\n[node]\n", &inv,
               "\"mesh\" . trust = \"public\"\nmesh.trusted_peers = [" T "]\n"
               "mesh.bootstrap = [" B1 "]\n[node]\n",
               true, 1);
}

static void
test_join_already_present(void **state)
{
    (void)state;
    struct lm_invite inv;
    struct lm_buf out;
    struct lm_invite_edit ed;
    char err[256];
    invite(&inv, ID, "H.Example:41145", NULL);
    /* Present in another case: nothing changes, byte for byte. */
    const char *in = "[mesh]\ntrusted_peers = [\"" ID_UP "\"]\n"
                     "bootstrap = [\"" ID_UP "@h.EXAMPLE:41145\"]\n";
    assert_int_equal(lm_invite_join(in, strlen(in), &inv, &out, &ed, err, sizeof(err)), 0);
    assert_string_equal(out.data, in);
    assert_false(ed.trusted_added);
    assert_int_equal(ed.bootstrap_added, 0);
    lm_buf_release(&out);
    /* Trusted already, a new address: only that. */
    invite(&inv, ID, "h.example:41145", "[2001:db8::1]:41145");
    join_gives(in, &inv,
               "[mesh]\ntrusted_peers = [\"" ID_UP "\"]\n"
               "bootstrap = [\"" ID_UP "@h.EXAMPLE:41145\", " B2 "]\n",
               false, 1);
}

static void
test_join_line_endings_and_bom(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", NULL);
    join_gives("[node]\r\nname = \"n\"\r\n[mesh]\r\ntrusted_peers = [\r\n  \"" ID_A "\"\r\n]\r\n",
               &inv,
               "[node]\r\nname = \"n\"\r\n[mesh]\r\ntrusted_peers = [\r\n  \"" ID_A "\",\r\n  " T
               "\r\n]\r\nbootstrap = [" B1 "]\r\n",
               true, 1);
    join_gives("\xEF\xBB\xBFmesh = { trusted_peers = [\"" ID_A "\"] }\n", &inv,
               "\xEF\xBB\xBFmesh = { trusted_peers = [\"" ID_A "\", " T "], bootstrap = [" B1
               "] }\n",
               true, 1);
    /* Non-ASCII text before the edited lines does not shift positions. */
    join_gives("[node]\nname = \"caf\xC3\xA9 \xE2\x98\x95\" # \xF0\x9F\x90\xA7\n"
               "[mesh] # \xC3\xBC\nadvertise = [\"h:1\"] # \xC3\xA9\n",
               &inv,
               "[node]\nname = \"caf\xC3\xA9 \xE2\x98\x95\" # \xF0\x9F\x90\xA7\n"
               "[mesh] # \xC3\xBC\nadvertise = [\"h:1\"] # \xC3\xA9\n"
               "trusted_peers = [" T "]\nbootstrap = [" B1 "]\n",
               true, 1);
}

static void
test_join_refuses(void **state)
{
    (void)state;
    struct lm_invite inv;
    invite(&inv, ID, "h.example:41145", NULL);
    join_fails("[mesh]\ndenied_peers = [\"" ID_UP "\"]\n", &inv, -EPERM,
               "node 0123456789ab is in [mesh] denied_peers; remove it from there first to "
               "trust it");
    join_fails("[mesh]\ntrusted = []\n", &inv, -EINVAL,
               "the config is invalid: 2:1: unknown key \"trusted\" in [mesh]; did you mean "
               "\"trust\"?");
    join_fails("[mesh\n", &inv, -EINVAL,
               "the config is invalid: 1:6: expected ']' after table name");
}

/* ---- writing the file ----------------------------------------------------- */

struct tmp {
    char dir[256];
    char file[300];
};

static int
setup(void **state)
{
    struct tmp *t = calloc(1, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/lm-invite-test.XXXXXX");
    if (!mkdtemp(t->dir))
        return -1;
    snprintf(t->file, sizeof(t->file), "%s/labman.toml", t->dir);
    *state = t;
    return 0;
}

static int
teardown(void **state)
{
    struct tmp *t = *state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->dir);
    int rc = system(cmd);
    free(t);
    return rc == 0 ? 0 : -1;
}

static void
put(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static void
expect_file(const char *path, const char *text)
{
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(lm_file_read(path, 1 << 20, &got, &len), 0);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(got, text, len);
    free(got);
}

static int
count_entries(const char *dir)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "exit $(ls -A '%s' | wc -l)", dir);
    int rc = system(cmd);
    return WEXITSTATUS(rc);
}

static void
test_write_file(void **state)
{
    struct tmp *t = *state;
    char err[512], link[320];
    struct stat st;

    put(t->file, "old\n", 0640);
    assert_int_equal(lm_invite_write_file(t->file, "old\n", 4, "new\n", 4, err, sizeof(err)), 0);
    expect_file(t->file, "new\n");
    assert_int_equal(stat(t->file, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(count_entries(t->dir), 1); /* no temp file left */

    /* Someone edited it meanwhile: nothing written. */
    assert_int_equal(lm_invite_write_file(t->file, "old\n", 4, "newer\n", 6, err, sizeof(err)),
                     -EAGAIN);
    expect_file(t->file, "new\n");
    assert_non_null(strstr(err, "changed while labman was editing it"));
    assert_int_equal(count_entries(t->dir), 1);

    /* Through a symlink: the file it names is replaced, the link stays. */
    snprintf(link, sizeof(link), "%s/link.toml", t->dir);
    assert_int_equal(symlink("labman.toml", link), 0);
    assert_int_equal(lm_invite_write_file(link, "new\n", 4, "", 0, err, sizeof(err)), 0);
    expect_file(t->file, "");
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(lm_invite_write_file(link, "", 0, "x = 1\n", 6, err, sizeof(err)), 0);
    expect_file(t->file, "x = 1\n");

    snprintf(link, sizeof(link), "%s/missing.toml", t->dir);
    assert_int_equal(lm_invite_write_file(link, "", 0, "x", 1, err, sizeof(err)), -ENOENT);
    assert_int_equal(lm_invite_write_file(t->dir, "", 0, "x", 1, err, sizeof(err)), -EINVAL);
    assert_int_equal(count_entries(t->dir), 2);
}

int
main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_format),
        cmocka_unit_test(test_token_addresses),
        cmocka_unit_test(test_token_parse_tolerates),
        cmocka_unit_test(test_token_parse_refuses),
        cmocka_unit_test(test_join_no_mesh),
        cmocka_unit_test(test_join_mesh_without_keys),
        cmocka_unit_test(test_join_multiline_arrays),
        cmocka_unit_test(test_join_single_line_arrays),
        cmocka_unit_test(test_join_inline_and_dotted),
        cmocka_unit_test(test_join_already_present),
        cmocka_unit_test(test_join_line_endings_and_bom),
        cmocka_unit_test(test_join_refuses),
        cmocka_unit_test_setup_teardown(test_write_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
