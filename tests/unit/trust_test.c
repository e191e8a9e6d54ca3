/* Unit tests for src/trust: every mode, denied first, one-hop vouches, case
 * of ids, reason codes and texts, and the vouch set's bounds. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"
#include "trust/trust.h"

#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define ID_D "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
#define ID_E "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define ID_E_UP "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
#define ID_A_UP "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
#define ID_B_UP "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
#define ID_D_UP "DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD"

/* A mesh section built by hand, so that tests can hold what the config
 * loader would never produce (mixed case, both lists). */
struct mesh {
    struct lm_cfg_mesh m;
    char *trusted[4], *denied[4];
};

static void
mesh_init(struct mesh *x, enum lm_trust mode, const char *t0, const char *t1, const char *d0)
{
    memset(x, 0, sizeof(*x));
    x->m.trust = mode;
    x->m.trusted_peers.v = x->trusted;
    x->m.denied_peers.v = x->denied;
    if (t0)
        x->trusted[x->m.trusted_peers.n++] = (char *)t0;
    if (t1)
        x->trusted[x->m.trusted_peers.n++] = (char *)t1;
    if (d0)
        x->denied[x->m.denied_peers.n++] = (char *)d0;
}

/* A vouch callback with a fixed table and a log of what it was asked. */
struct fake {
    const char *pairs[8][2];
    size_t n;
    int calls;
    char last_voucher[65], last_peer[65];
};

static bool
fake_vouches(const char *voucher, const char *node_id, void *arg)
{
    struct fake *f = arg;
    f->calls++;
    snprintf(f->last_voucher, sizeof(f->last_voucher), "%s", voucher);
    snprintf(f->last_peer, sizeof(f->last_peer), "%s", node_id);
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->pairs[i][0], voucher) == 0 && strcmp(f->pairs[i][1], node_id) == 0)
            return true;
    return false;
}

static void
expect(const struct lm_cfg_mesh *m, const char *id, lm_trust_vouch_fn *fn, void *arg, int rc,
       const char *code, const char *text)
{
    struct lm_trust_verdict v;
    int got = lm_trust_check(m, id, fn, arg, &v);
    if (got != rc || strcmp(v.code, code) != 0 || strcmp(v.text, text) != 0)
        fprintf(stderr, "id %s: got %d %s \"%s\"\n", id ? id : "(null)", got, v.code, v.text);
    assert_int_equal(got, rc);
    assert_int_equal(v.allowed, rc == 0);
    assert_string_equal(v.code, code);
    assert_string_equal(v.text, text);
}

static void
test_bad_ids(void **state)
{
    (void)state;
    struct mesh x;
    mesh_init(&x, LM_TRUST_PUBLIC, NULL, NULL, NULL);
    const char *bad[] = {
        NULL,
        "",
        "abc",
        ID_A "a",
        "gaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ",
        " aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect(&x.m, bad[i], NULL, NULL, -EINVAL, "bad_id", "not a node id (64 hex digits)");
    struct lm_trust_verdict v;
    lm_trust_check(&x.m, "zz", NULL, NULL, &v);
    assert_int_equal(v.reason, LM_TRUST_NO_BAD_ID);
    assert_false(v.allowed);
}

static void
test_private(void **state)
{
    (void)state;
    struct mesh x;
    struct fake f = {.pairs = {{ID_A, ID_C}}, .n = 1};
    mesh_init(&x, LM_TRUST_PRIVATE, ID_A, ID_E_UP, ID_D);
    expect(&x.m, ID_A, fake_vouches, &f, 0, "trusted", "in trusted_peers");
    /* Either case, on either side. */
    expect(&x.m, ID_E, fake_vouches, &f, 0, "trusted", "in trusted_peers");
    expect(&x.m, ID_E_UP, fake_vouches, &f, 0, "trusted", "in trusted_peers");
    expect(&x.m, ID_B, fake_vouches, &f, -EPERM, "untrusted",
           "not in trusted_peers (trust = private)");
    /* A vouch means nothing in private mode; the callback is not asked. */
    expect(&x.m, ID_C, fake_vouches, &f, -EPERM, "untrusted",
           "not in trusted_peers (trust = private)");
    expect(&x.m, ID_D, fake_vouches, &f, -EPERM, "denied", "denied (in denied_peers)");
    assert_int_equal(f.calls, 0);

    struct lm_trust_verdict v;
    assert_int_equal(lm_trust_check(&x.m, ID_A, NULL, NULL, &v), 0);
    assert_int_equal(v.reason, LM_TRUST_OK_TRUSTED);
    assert_string_equal(v.voucher, "");
}

static void
test_denied_always_wins(void **state)
{
    (void)state;
    struct mesh x;
    struct fake f = {.pairs = {{ID_A, ID_D}}, .n = 1};
    /* The loader refuses a peer in both lists; should one get through, the
     * refusal is what counts. */
    for (int mode = LM_TRUST_PRIVATE; mode <= LM_TRUST_PUBLIC; mode++) {
        mesh_init(&x, (enum lm_trust)mode, ID_A, ID_D, ID_D_UP);
        expect(&x.m, ID_D, fake_vouches, &f, -EPERM, "denied", "denied (in denied_peers)");
    }
    /* Vouched for, and denied: denied. */
    mesh_init(&x, LM_TRUST_FRIENDS, ID_A, NULL, ID_D);
    expect(&x.m, ID_D, fake_vouches, &f, -EPERM, "denied", "denied (in denied_peers)");
    assert_int_equal(f.calls, 0);
}

static void
test_public(void **state)
{
    (void)state;
    struct mesh x;
    struct fake f = {0};
    mesh_init(&x, LM_TRUST_PUBLIC, ID_A, NULL, ID_D);
    expect(&x.m, ID_B, fake_vouches, &f, 0, "public", "not denied (trust = public)");
    expect(&x.m, ID_E_UP, fake_vouches, &f, 0, "public", "not denied (trust = public)");
    expect(&x.m, ID_A, fake_vouches, &f, 0, "trusted", "in trusted_peers");
    expect(&x.m, ID_D, fake_vouches, &f, -EPERM, "denied", "denied (in denied_peers)");
    assert_int_equal(f.calls, 0);
}

static void
test_friends_one_hop(void **state)
{
    (void)state;
    struct mesh x;
    /* A is trusted and vouches for B; B vouches for C; D (untrusted) vouches
     * for E. Only B gets in through a vouch. */
    struct fake f = {.pairs = {{ID_A, ID_B}, {ID_B, ID_C}, {ID_D, ID_E}}, .n = 3};
    mesh_init(&x, LM_TRUST_FRIENDS, ID_A, NULL, NULL);
    struct lm_trust_verdict v;
    assert_int_equal(lm_trust_check(&x.m, ID_B_UP, fake_vouches, &f, &v), 0);
    assert_true(v.allowed);
    assert_int_equal(v.reason, LM_TRUST_OK_VOUCHED);
    assert_string_equal(v.code, "vouched");
    assert_string_equal(v.voucher, ID_A);
    assert_string_equal(v.text, "vouched for by trusted peer aaaaaaaaaaaa (trust = friends)");
    /* The callback sees lowercase ids. */
    assert_string_equal(f.last_voucher, ID_A);
    assert_string_equal(f.last_peer, ID_B);

    const char *no = "not in trusted_peers and no trusted peer vouches for it (trust = friends)";
    expect(&x.m, ID_C, fake_vouches, &f, -EPERM, "untrusted", no);
    expect(&x.m, ID_E, fake_vouches, &f, -EPERM, "untrusted", no);
    expect(&x.m, ID_A, fake_vouches, &f, 0, "trusted", "in trusted_peers");
    /* No vouch source: friends is private. */
    expect(&x.m, ID_B, NULL, NULL, -EPERM, "untrusted", no);

    /* Once B is trusted itself, its vouch for C counts. */
    mesh_init(&x, LM_TRUST_FRIENDS, ID_A, ID_B, NULL);
    expect(&x.m, ID_C, fake_vouches, &f, 0, "vouched",
           "vouched for by trusted peer bbbbbbbbbbbb (trust = friends)");

    /* A trusted peer that is also denied vouches for nobody. */
    mesh_init(&x, LM_TRUST_FRIENDS, ID_A, NULL, ID_A);
    expect(&x.m, ID_B, fake_vouches, &f, -EPERM, "untrusted", no);

    /* Malformed entries in a hand-made list are skipped, not matched. */
    mesh_init(&x, LM_TRUST_FRIENDS, "aaaa", NULL, "zz");
    f.calls = 0;
    expect(&x.m, ID_B, fake_vouches, &f, -EPERM, "untrusted", no);
    assert_int_equal(f.calls, 0);
}

/* What the daemon does: the config as loaded, vouches from gossip. */
static void
test_with_config_and_set(void **state)
{
    (void)state;
    const char *toml = "[mesh]\n"
                       "trust = \"friends\"\n"
                       "trusted_peers = [\"" ID_E_UP "\"]\n"
                       "denied_peers = [\"" ID_D "\"]\n";
    struct lm_diags d = {0};
    struct lm_config *cfg = NULL;
    assert_int_equal(lm_config_parse(toml, strlen(toml), "t.toml", &cfg, &d), 0);
    struct lm_trust_vouches *vs = lm_trust_vouches_new();
    const char *e_list[] = {ID_A, ID_D};
    const char *a_list[] = {ID_C};
    assert_int_equal(lm_trust_vouches_set(vs, ID_E_UP, e_list, 2), 0);
    assert_int_equal(lm_trust_vouches_set(vs, ID_A, a_list, 1), 0);

    struct lm_trust_verdict v;
    assert_int_equal(lm_trust_check(&cfg->mesh, ID_A, lm_trust_vouches_lookup, vs, &v), 0);
    assert_string_equal(v.voucher, ID_E);
    assert_int_equal(lm_trust_check(&cfg->mesh, ID_C, lm_trust_vouches_lookup, vs, &v), -EPERM);
    assert_string_equal(v.code, "untrusted");
    assert_int_equal(lm_trust_check(&cfg->mesh, ID_D, lm_trust_vouches_lookup, vs, &v), -EPERM);
    assert_string_equal(v.code, "denied");

    /* The voucher withdraws its record: A is out again. */
    lm_trust_vouches_remove(vs, ID_E);
    assert_int_equal(lm_trust_check(&cfg->mesh, ID_A, lm_trust_vouches_lookup, vs, &v), -EPERM);

    /* Same config in private mode ignores the set. */
    cfg->mesh.trust = LM_TRUST_PRIVATE;
    assert_int_equal(lm_trust_vouches_set(vs, ID_E, e_list, 1), 0);
    assert_int_equal(lm_trust_check(&cfg->mesh, ID_A, lm_trust_vouches_lookup, vs, &v), -EPERM);
    cfg->mesh.trust = LM_TRUST_FRIENDS;
    assert_int_equal(lm_trust_check(&cfg->mesh, ID_A, lm_trust_vouches_lookup, vs, &v), 0);

    lm_trust_vouches_free(vs);
    lm_config_free(cfg);
    lm_diags_clear(&d);
}

static void
test_vouch_set(void **state)
{
    (void)state;
    struct lm_trust_vouches *vs = lm_trust_vouches_new();
    assert_false(lm_trust_vouches_lookup(ID_A, ID_B, vs));
    assert_false(lm_trust_vouches_lookup(ID_A, ID_B, NULL));

    /* Duplicates (in any case) and a self-vouch are dropped. */
    const char *l1[] = {ID_B, ID_C, ID_B_UP, ID_A};
    assert_int_equal(lm_trust_vouches_set(vs, ID_A, l1, 4), 0);
    assert_int_equal(lm_trust_vouches_count(vs), 2);
    assert_true(lm_trust_vouches_lookup(ID_A, ID_B, vs));
    assert_true(lm_trust_vouches_lookup(ID_A_UP, ID_C, vs));
    assert_false(lm_trust_vouches_lookup(ID_A, ID_A, vs));
    assert_false(lm_trust_vouches_lookup(ID_B, ID_A, vs)); /* not symmetric */

    /* Other vouchers' lists around it survive a replacement. */
    const char *l2[] = {ID_D};
    assert_int_equal(lm_trust_vouches_set(vs, ID_C, l2, 1), 0);
    assert_int_equal(lm_trust_vouches_set(vs, ID_E, l2, 1), 0);
    assert_int_equal(lm_trust_vouches_count(vs), 4);
    const char *l3[] = {ID_D, ID_E, ID_C};
    assert_int_equal(lm_trust_vouches_set(vs, ID_A, l3, 3), 0); /* grows */
    assert_int_equal(lm_trust_vouches_count(vs), 5);
    assert_false(lm_trust_vouches_lookup(ID_A, ID_B, vs));
    assert_true(lm_trust_vouches_lookup(ID_A, ID_E, vs));
    assert_true(lm_trust_vouches_lookup(ID_C, ID_D, vs));
    assert_true(lm_trust_vouches_lookup(ID_E, ID_D, vs));
    assert_int_equal(lm_trust_vouches_set(vs, ID_A, l2, 1), 0); /* shrinks */
    assert_int_equal(lm_trust_vouches_count(vs), 3);
    assert_true(lm_trust_vouches_lookup(ID_C, ID_D, vs));
    assert_true(lm_trust_vouches_lookup(ID_E, ID_D, vs));
    assert_true(lm_trust_vouches_lookup(ID_A, ID_D, vs));

    /* Bad input leaves the set as it was. */
    const char *bad[] = {ID_B, "not-an-id"};
    assert_int_equal(lm_trust_vouches_set(vs, ID_A, bad, 2), -EINVAL);
    assert_int_equal(lm_trust_vouches_set(vs, "xyz", l2, 1), -EINVAL);
    assert_int_equal(lm_trust_vouches_set(vs, NULL, l2, 1), -EINVAL);
    assert_int_equal(lm_trust_vouches_count(vs), 3);
    assert_true(lm_trust_vouches_lookup(ID_A, ID_D, vs));
    assert_false(lm_trust_vouches_lookup(ID_A, ID_B, vs));
    assert_false(lm_trust_vouches_lookup("bad", ID_D, vs));

    lm_trust_vouches_remove(vs, ID_C);
    lm_trust_vouches_remove(vs, ID_B); /* absent: nothing */
    lm_trust_vouches_remove(vs, "junk");
    assert_int_equal(lm_trust_vouches_count(vs), 2);
    assert_false(lm_trust_vouches_lookup(ID_C, ID_D, vs));
    lm_trust_vouches_free(vs);
    lm_trust_vouches_free(NULL);
}

static void
make_id(char *out, unsigned n)
{
    snprintf(out, 65, "%064x", n);
}

static void
test_vouch_set_bounds(void **state)
{
    (void)state;
    struct lm_trust_vouches *vs = lm_trust_vouches_new();
    size_t max = LM_TRUST_MAX_VOUCH_PEERS;
    char(*ids)[65] = calloc(max + 1, 65);
    const char **list = calloc(max + 1, sizeof(*list));
    for (size_t i = 0; i <= max; i++) {
        make_id(ids[i], (unsigned)(0x100000 + i));
        list[i] = ids[i];
    }
    assert_int_equal(lm_trust_vouches_set(vs, ID_A, list, max + 1), -E2BIG);
    assert_int_equal(lm_trust_vouches_count(vs), 0);

    /* Fill the set to its cap, one full list per voucher. */
    size_t vouchers = LM_TRUST_MAX_VOUCH_PAIRS / max;
    char who[65];
    for (size_t v = 0; v < vouchers; v++) {
        make_id(who, (unsigned)v + 1);
        assert_int_equal(lm_trust_vouches_set(vs, who, list, max), 0);
    }
    assert_int_equal(lm_trust_vouches_count(vs), LM_TRUST_MAX_VOUCH_PAIRS);
    make_id(who, 0xffff);
    assert_int_equal(lm_trust_vouches_set(vs, who, list, 1), -ENOSPC);
    assert_false(lm_trust_vouches_lookup(who, ids[0], vs));
    /* Replacing an existing list with one of the same size still fits. */
    make_id(who, 1);
    assert_int_equal(lm_trust_vouches_set(vs, who, list + 1, max), 0);
    assert_false(lm_trust_vouches_lookup(who, ids[0], vs));
    assert_true(lm_trust_vouches_lookup(who, ids[max], vs));
    assert_int_equal(lm_trust_vouches_count(vs), LM_TRUST_MAX_VOUCH_PAIRS);
    lm_trust_vouches_free(vs);
    free(ids);
    free(list);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_private),
        cmocka_unit_test(test_denied_always_wins),
        cmocka_unit_test(test_public),
        cmocka_unit_test(test_friends_one_hop),
        cmocka_unit_test(test_with_config_and_set),
        cmocka_unit_test(test_vouch_set),
        cmocka_unit_test(test_vouch_set_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
