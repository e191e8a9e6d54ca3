/* Unit tests for src/identity: create/load, permission and format checks,
 * signatures. Each test works in its own temp directory. */
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

#include "identity/identity.h"

struct tmp {
    char dir[256];      /* the temp root */
    char data_dir[300]; /* a not yet existing data_dir inside it */
    char key[350];
};

static int
setup(void **state)
{
    struct tmp *t = calloc(1, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/lm-identity-test.XXXXXX");
    if (!mkdtemp(t->dir))
        return -1;
    snprintf(t->data_dir, sizeof(t->data_dir), "%s/state/labman", t->dir);
    snprintf(t->key, sizeof(t->key), "%s/identity.key", t->data_dir);
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
write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static void
test_create_then_load(void **state)
{
    struct tmp *t = *state;
    struct lm_identity a, b;

    assert_int_equal(lm_identity_load(t->data_dir, &a), -ENOENT);
    assert_non_null(strstr(a.err, "no identity key"));

    assert_int_equal(lm_identity_load_or_create(t->data_dir, &a), 0);
    struct stat st;
    assert_int_equal(stat(t->data_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(t->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(strlen(a.node_id), 64);
    assert_int_equal(strlen(a.short_id), 12);
    assert_memory_equal(a.node_id, a.short_id, 12);
    for (size_t i = 0; i < 64; i++)
        assert_non_null(strchr("0123456789abcdef", a.node_id[i]));

    /* Second start loads the same key; the load-only variant agrees. */
    assert_int_equal(lm_identity_load_or_create(t->data_dir, &b), 0);
    assert_string_equal(a.node_id, b.node_id);
    assert_memory_equal(a.sk, b.sk, sizeof(a.sk));
    assert_int_equal(lm_identity_load(t->data_dir, &b), 0);
    assert_string_equal(a.node_id, b.node_id);

    /* No temp files left behind. */
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "test $(ls -A '%s' | wc -l) -eq 1", t->data_dir);
    assert_int_equal(system(cmd), 0);

    lm_identity_wipe(&a);
    uint8_t zero[LM_IDENTITY_SK_BYTES] = {0};
    assert_memory_equal(a.sk, zero, sizeof(zero));
    lm_identity_wipe(&b);
}

static void
test_loose_mode_refused(void **state)
{
    struct tmp *t = *state;
    struct lm_identity id;

    assert_int_equal(lm_identity_load_or_create(t->data_dir, &id), 0);
    assert_int_equal(chmod(t->key, 0644), 0);
    assert_int_equal(lm_identity_load_or_create(t->data_dir, &id), -EACCES);
    assert_non_null(strstr(id.err, t->key));
    assert_non_null(strstr(id.err, "chmod 600"));
    assert_int_equal(lm_identity_load(t->data_dir, &id), -EACCES);

    assert_int_equal(chmod(t->key, 0640), 0);
    assert_int_equal(lm_identity_load(t->data_dir, &id), -EACCES);
    assert_int_equal(chmod(t->key, 0600), 0);
    assert_int_equal(lm_identity_load(t->data_dir, &id), 0);
}

static void
test_malformed_refused(void **state)
{
    struct tmp *t = *state;
    struct lm_identity id;
    static const char *const bad[] = {
        "",
        "labman-identity-v1\n",
        "labman-identity-v2\n0000000000000000000000000000000000000000000000000000000000000000\n",
        "labman-identity-v1\n000000000000000000000000000000000000000000000000000000000000000\n",
        "labman-identity-v1\n00000000000000000000000000000000000000000000000000000000000000zz\n",
        "labman-identity-v1\n0000000000000000000000000000000000000000000000000000000000000000\n\n",
        "labman-identity-v1\n0000000000000000000000000000000000000000000000000000000000000000x",
        "labman-identity-v1 0000000000000000000000000000000000000000000000000000000000000000\n",
    };

    char state_dir[300];
    snprintf(state_dir, sizeof(state_dir), "%s/state", t->dir);
    assert_int_equal(mkdir(state_dir, 0700), 0);
    assert_int_equal(mkdir(t->data_dir, 0700), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(t->key, bad[i], 0600);
        assert_int_equal(lm_identity_load_or_create(t->data_dir, &id), -EINVAL);
        assert_non_null(strstr(id.err, "malformed"));
    }

    /* A file far too long is malformed too, not read without bound. */
    char big[4096];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    write_file(t->key, big, 0600);
    assert_int_equal(lm_identity_load(t->data_dir, &id), -EINVAL);

    /* A well-formed file, with or without the last newline, loads, and the
     * seed determines the key. */
    write_file(t->key,
               "labman-identity-v1\n"
               "0101010101010101010101010101010101010101010101010101010101010101",
               0600);
    assert_int_equal(lm_identity_load(t->data_dir, &id), 0);
    char first[LM_NODE_ID_LEN + 1];
    memcpy(first, id.node_id, sizeof(first));
    write_file(t->key,
               "labman-identity-v1\n"
               "0101010101010101010101010101010101010101010101010101010101010101\n",
               0600);
    assert_int_equal(lm_identity_load(t->data_dir, &id), 0);
    assert_string_equal(first, id.node_id);
}

static void
test_sign_verify(void **state)
{
    struct tmp *t = *state;
    struct lm_identity a, b;
    uint8_t sig[LM_IDENTITY_SIG_BYTES];
    static const char msg[] = "peer record v1";

    assert_int_equal(lm_identity_load_or_create(t->data_dir, &a), 0);
    lm_identity_sign(&a, msg, sizeof(msg) - 1, sig);
    assert_int_equal(lm_identity_verify(a.pk, msg, sizeof(msg) - 1, sig), 0);

    /* Another message, a flipped signature bit, another key: all rejected. */
    assert_int_equal(lm_identity_verify(a.pk, msg, sizeof(msg) - 2, sig), -EBADMSG);
    sig[5] ^= 1;
    assert_int_equal(lm_identity_verify(a.pk, msg, sizeof(msg) - 1, sig), -EBADMSG);
    sig[5] ^= 1;

    char other[400];
    snprintf(other, sizeof(other), "%s/other", t->dir);
    assert_int_equal(lm_identity_load_or_create(other, &b), 0);
    assert_string_not_equal(a.node_id, b.node_id);
    assert_int_equal(lm_identity_verify(b.pk, msg, sizeof(msg) - 1, sig), -EBADMSG);

    /* A node id round-trips to the public key that verifies. */
    uint8_t pk[LM_IDENTITY_PK_BYTES];
    assert_int_equal(lm_identity_parse_node_id(a.node_id, pk), 0);
    assert_memory_equal(pk, a.pk, sizeof(pk));
    assert_int_equal(lm_identity_verify(pk, msg, sizeof(msg) - 1, sig), 0);
    assert_int_equal(lm_identity_parse_node_id("abc", pk), -EINVAL);
    lm_identity_wipe(&a);
    lm_identity_wipe(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_then_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loose_mode_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sign_verify, setup, teardown),
    };
    return cmocka_run_group_tests_name("identity", tests, NULL, NULL);
}
