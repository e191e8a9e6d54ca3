/* Unit tests for src/peerstore: schema, upsert rules, dial bookkeeping,
 * ordering, pruning, batches, and what happens to bad files (garbage,
 * truncated, foreign, newer, unusable directory). Each test has its own
 * temp data_dir. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
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
#include <sqlite3.h>

#include "peerstore/peerstore.h"

#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
#define ID_D "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
#define ID_A_UP "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

struct tmp {
    char dir[256];
    char db[320];
};

static int
setup(void **state)
{
    struct tmp *t = calloc(1, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/lm-peerstore-test.XXXXXX");
    if (!mkdtemp(t->dir))
        return -1;
    snprintf(t->db, sizeof(t->db), "%s/peers.db", t->dir);
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
write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static size_t
read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, cap);
    close(fd);
    assert_true(n >= 0);
    return (size_t)n;
}

/* Paths matching dir/pattern; the count is returned, the first in first. */
static size_t
matches(const char *dir, const char *pattern, char *first, size_t cap)
{
    char pat[400];
    glob_t g;
    snprintf(pat, sizeof(pat), "%s/%s", dir, pattern);
    if (glob(pat, 0, NULL, &g) != 0)
        return 0;
    size_t n = g.gl_pathc;
    if (first && n)
        snprintf(first, cap, "%s", g.gl_pathv[0]);
    globfree(&g);
    return n;
}

/* Runs SQL against a file directly, as another program would. */
static void
sql_exec(const char *path, const char *q)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, q, NULL, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", q, err);
    assert_int_equal(rc, SQLITE_OK);
    sqlite3_free(err);
    sqlite3_close(db);
}

static int64_t
sql_int(const char *path, const char *q)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return v;
}

static struct lm_peerstore *
open_ok(const char *dir)
{
    struct lm_peerstore *ps = NULL;
    assert_int_equal(lm_peerstore_open(dir, &ps), 0);
    assert_non_null(ps);
    return ps;
}

static size_t
count(struct lm_peerstore *ps)
{
    size_t n = 99;
    assert_int_equal(lm_peerstore_count(ps, &n), 0);
    return n;
}

static void
add(struct lm_peerstore *ps, const char *id, const char *addr, int64_t now)
{
    const char *a[] = {addr};
    assert_int_equal(lm_peerstore_upsert(ps, id, "n", a, addr ? 1 : 0, LM_PEER_GOSSIP, now), 0);
}

static void
test_open_creates_schema(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    assert_true(lm_peerstore_persistent(ps));
    assert_int_equal(count(ps), 0);
    lm_peerstore_close(ps);
    assert_int_equal(sql_int(t->db, "PRAGMA user_version"), LM_PEERSTORE_SCHEMA);
    assert_int_equal(sql_int(t->db, "PRAGMA application_id"), 0x4c4d5053);
    assert_int_equal(sql_int(t->db, "SELECT count(*) FROM pragma_journal_mode "
                                    "WHERE journal_mode = 'wal'"),
                     1);
    /* Opening again finds it as it was, nothing set aside. */
    ps = open_ok(t->dir);
    assert_true(lm_peerstore_persistent(ps));
    lm_peerstore_close(ps);
    assert_int_equal(matches(t->dir, "peers.db.corrupt-*", NULL, 0), 0);
    lm_peerstore_close(NULL);
}

static void
test_upsert_and_get(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    struct lm_peer_rec r;
    const char *a2[] = {"10.0.0.1:41145", "[2001:db8::1]:41145"};

    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), -ENOENT);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A_UP, "lab-1", a2, 2, LM_PEER_GOSSIP, 1000), 0);
    assert_int_equal(lm_peerstore_get(ps, ID_A_UP, &r), 0);
    assert_string_equal(r.node_id, ID_A);
    assert_string_equal(r.name, "lab-1");
    assert_int_equal(r.n_addrs, 2);
    assert_string_equal(r.addrs[0], "10.0.0.1:41145");
    assert_string_equal(r.addrs[1], "[2001:db8::1]:41145");
    assert_int_equal(r.source, LM_PEER_GOSSIP);
    assert_int_equal(r.last_seen_ms, 1000);
    assert_int_equal(r.last_ok_ms, 0);
    assert_int_equal(r.fails, 0);
    lm_peer_rec_release(&r);

    /* Source only goes up; NULL name and addrs keep what is stored;
     * last_seen never goes back. */
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, NULL, NULL, 0, LM_PEER_BOOTSTRAP, 900), 0);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, NULL, NULL, 0, LM_PEER_INBOUND, 800), 0);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), 0);
    assert_int_equal(r.source, LM_PEER_BOOTSTRAP);
    assert_string_equal(r.name, "lab-1");
    assert_int_equal(r.n_addrs, 2);
    assert_int_equal(r.last_seen_ms, 1000);
    lm_peer_rec_release(&r);

    const char *a1[] = {"lab-2.example:5000"};
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "renamed", a1, 1, LM_PEER_GOSSIP, 2000), 0);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), 0);
    assert_string_equal(r.name, "renamed");
    assert_int_equal(r.n_addrs, 1);
    assert_string_equal(r.addrs[0], "lab-2.example:5000");
    assert_int_equal(r.source, LM_PEER_BOOTSTRAP);
    assert_int_equal(r.last_seen_ms, 2000);
    lm_peer_rec_release(&r);

    /* An empty list clears the addresses; an inbound peer starts with none. */
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, NULL, a1, 0, LM_PEER_GOSSIP, 2000), 0);
    assert_int_equal(lm_peerstore_upsert(ps, ID_B, NULL, NULL, 0, LM_PEER_INBOUND, 5), 0);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), 0);
    assert_int_equal(r.n_addrs, 0);
    lm_peer_rec_release(&r);
    assert_int_equal(lm_peerstore_get(ps, ID_B, &r), 0);
    assert_int_equal(r.n_addrs, 0);
    assert_string_equal(r.name, "");
    assert_int_equal(r.source, LM_PEER_INBOUND);
    lm_peer_rec_release(&r);
    assert_int_equal(count(ps), 2);
    lm_peerstore_close(ps);
}

static void
test_bad_input_is_refused(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    const char *ok[] = {"h:1"};
    const char *bad_addrs[][1] = {{"h:0"}, {"h"}, {"h h:1"}, {"[zz]:1"}, {"h:65536"}, {""}};
    const char *many[LM_PEERSTORE_MAX_ADDRS + 1];
    for (size_t i = 0; i <= LM_PEERSTORE_MAX_ADDRS; i++)
        many[i] = "h:1";
    char long_name[LM_PEERSTORE_NAME_MAX + 2];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    char long_addr[LM_PEERSTORE_ADDR_MAX + 8];
    memset(long_addr, 'a', sizeof(long_addr));
    memcpy(long_addr + sizeof(long_addr) - 3, ":1", 3);

    assert_int_equal(lm_peerstore_upsert(ps, "abc", "n", ok, 1, LM_PEER_GOSSIP, 1), -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, NULL, "n", ok, 1, LM_PEER_GOSSIP, 1), -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "a\nb", ok, 1, LM_PEER_GOSSIP, 1), -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "\xff\xfe", ok, 1, LM_PEER_GOSSIP, 1), -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, long_name, ok, 1, LM_PEER_GOSSIP, 1), -EINVAL);
    long_name[LM_PEERSTORE_NAME_MAX] = '\0';
    assert_int_equal(lm_peerstore_upsert(ps, ID_C, long_name, ok, 1, LM_PEER_GOSSIP, 1), 0);
    for (size_t i = 0; i < sizeof(bad_addrs) / sizeof(bad_addrs[0]); i++)
        assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", bad_addrs[i], 1, LM_PEER_GOSSIP, 1),
                         -EINVAL);
    const char *la[] = {long_addr};
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", la, 1, LM_PEER_GOSSIP, 1), -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", many, LM_PEERSTORE_MAX_ADDRS + 1,
                                         LM_PEER_GOSSIP, 1),
                     -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", ok, 1, (enum lm_peer_source)0, 1),
                     -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", ok, 1, (enum lm_peer_source)7, 1),
                     -EINVAL);
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", ok, 1, LM_PEER_GOSSIP, -1), -EINVAL);
    assert_int_equal(lm_peerstore_mark_ok(ps, "x", 1), -EINVAL);
    assert_int_equal(lm_peerstore_mark_fail(ps, ID_A, -5), -EINVAL);
    assert_int_equal(lm_peerstore_forget(ps, ID_A "0"), -EINVAL);
    struct lm_peer_rec r;
    assert_int_equal(lm_peerstore_get(ps, "", &r), -EINVAL);
    assert_int_equal(count(ps), 1); /* only the 64-byte name went in */
    assert_int_equal(lm_peerstore_upsert(ps, ID_A, "n", many, LM_PEERSTORE_MAX_ADDRS,
                                         LM_PEER_GOSSIP, 1),
                     0);
    lm_peerstore_close(ps);
}

static void
test_dial_bookkeeping(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    struct lm_peer_rec r;

    assert_int_equal(lm_peerstore_mark_ok(ps, ID_A, 10), -ENOENT);
    assert_int_equal(lm_peerstore_mark_fail(ps, ID_A, 10), -ENOENT);
    add(ps, ID_A, "h:1", 100);
    assert_int_equal(lm_peerstore_mark_fail(ps, ID_A_UP, 200), 0);
    assert_int_equal(lm_peerstore_mark_fail(ps, ID_A, 300), 0);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), 0);
    assert_int_equal(r.fails, 2);
    assert_int_equal(r.last_fail_ms, 300);
    assert_int_equal(r.last_ok_ms, 0);
    assert_int_equal(r.last_seen_ms, 100); /* a failed dial is not a sighting */
    lm_peer_rec_release(&r);
    assert_int_equal(lm_peerstore_mark_ok(ps, ID_A, 400), 0);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), 0);
    assert_int_equal(r.fails, 0);
    assert_int_equal(r.last_ok_ms, 400);
    assert_int_equal(r.last_seen_ms, 400);
    assert_int_equal(r.last_fail_ms, 300);
    lm_peer_rec_release(&r);

    assert_int_equal(lm_peerstore_forget(ps, ID_A_UP), 0);
    assert_int_equal(lm_peerstore_forget(ps, ID_A), -ENOENT);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), -ENOENT);
    lm_peerstore_close(ps);
}

static void
test_candidates_order(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    struct lm_peer_rec *recs;
    size_t n;

    assert_int_equal(lm_peerstore_candidates(ps, 10, &recs, &n), 0);
    assert_int_equal(n, 0);
    lm_peer_recs_free(recs, n);

    add(ps, ID_A, "a:1", 100); /* never ok, seen early */
    add(ps, ID_B, "b:1", 500); /* never ok, seen late */
    add(ps, ID_C, "c:1", 50);  /* ok long ago */
    add(ps, ID_D, NULL, 900);  /* no address: not a candidate */
    assert_int_equal(lm_peerstore_mark_ok(ps, ID_C, 60), 0);
    assert_int_equal(lm_peerstore_mark_ok(ps, ID_D, 950), 0);

    assert_int_equal(lm_peerstore_candidates(ps, 10, &recs, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(recs[0].node_id, ID_C);
    assert_string_equal(recs[0].addrs[0], "c:1");
    assert_string_equal(recs[1].node_id, ID_B);
    assert_string_equal(recs[2].node_id, ID_A);
    lm_peer_recs_free(recs, n);

    assert_int_equal(lm_peerstore_mark_ok(ps, ID_A, 1000), 0);
    assert_int_equal(lm_peerstore_candidates(ps, 2, &recs, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(recs[0].node_id, ID_A);
    assert_string_equal(recs[1].node_id, ID_C);
    lm_peer_recs_free(recs, n);

    assert_int_equal(lm_peerstore_candidates(ps, 0, &recs, &n), 0);
    assert_int_equal(n, 0);
    assert_null(recs);
    lm_peer_recs_free(NULL, 0);
    lm_peerstore_close(ps);
}

static void
test_prune_and_persist(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    char id[65];
    size_t removed = 99;

    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "%064x", i);
        add(ps, id, "h:1", 1000 + i);
    }
    assert_int_equal(lm_peerstore_prune(ps, 20, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(lm_peerstore_prune(ps, 4, &removed), 0);
    assert_int_equal(removed, 6);
    assert_int_equal(count(ps), 4);
    lm_peerstore_close(ps);

    /* The newest four survive a reopen. */
    ps = open_ok(t->dir);
    assert_int_equal(count(ps), 4);
    struct lm_peer_rec r;
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "%064x", i);
        assert_int_equal(lm_peerstore_get(ps, id, &r), i >= 6 ? 0 : -ENOENT);
        lm_peer_rec_release(&r);
    }
    assert_int_equal(lm_peerstore_prune(ps, 0, NULL), 0);
    assert_int_equal(count(ps), 0);
    lm_peerstore_close(ps);
}

static void
test_batch(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    char id[65];

    assert_int_equal(lm_peerstore_batch_end(ps), 0); /* none open: nothing to do */
    assert_int_equal(lm_peerstore_batch_begin(ps), 0);
    assert_int_equal(lm_peerstore_batch_begin(ps), -EBUSY);
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof(id), "%064x", i);
        add(ps, id, "h:1", i);
    }
    assert_int_equal(lm_peerstore_batch_end(ps), 0);
    lm_peerstore_close(ps);
    ps = open_ok(t->dir);
    assert_int_equal(count(ps), 200);
    /* Closing with a batch open keeps what it did. */
    assert_int_equal(lm_peerstore_batch_begin(ps), 0);
    add(ps, ID_A, "h:1", 1);
    lm_peerstore_close(ps);
    ps = open_ok(t->dir);
    assert_int_equal(count(ps), 201);
    lm_peerstore_close(ps);
}

/* The file set aside holds exactly what was there; the new store is empty
 * and on disk. */
static void
check_set_aside(struct tmp *t, const char *expect, size_t len)
{
    char aside[400], buf[8192];
    struct lm_peerstore *ps = open_ok(t->dir);
    assert_true(lm_peerstore_persistent(ps));
    assert_int_equal(count(ps), 0);
    add(ps, ID_B, "h:1", 1);
    lm_peerstore_close(ps);
    assert_int_equal(matches(t->dir, "peers.db.corrupt-*[0-9]", aside, sizeof(aside)), 1);
    if (expect) {
        assert_int_equal(read_file(aside, buf, sizeof(buf)), len);
        assert_memory_equal(buf, expect, len);
    }
    /* And the new one is healthy: a second open sets nothing aside. */
    ps = open_ok(t->dir);
    assert_int_equal(count(ps), 1);
    lm_peerstore_close(ps);
    assert_int_equal(matches(t->dir, "peers.db.corrupt-*[0-9]", NULL, 0), 1);
}

static void
test_garbage_file_is_set_aside(void **state)
{
    struct tmp *t = *state;
    char garbage[4096], wal[400];
    for (size_t i = 0; i < sizeof(garbage); i++)
        garbage[i] = (char)(i * 7 + 3);
    write_file(t->db, garbage, sizeof(garbage));
    /* A stale WAL must not be replayed into the new file: it is moved
     * aside with the file, or SQLite drops it when closing the bad one. */
    snprintf(wal, sizeof(wal), "%s-wal", t->db);
    write_file(wal, "junk wal", 8);
    check_set_aside(t, garbage, sizeof(garbage));
    struct stat st;
    assert_true(stat(wal, &st) < 0 || st.st_size != 8);
}

static void
test_text_file_is_set_aside(void **state)
{
    struct tmp *t = *state;
    const char *text = "this is not a database\n";
    write_file(t->db, text, strlen(text));
    check_set_aside(t, text, strlen(text));
}

static void
test_truncated_file_is_set_aside(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    char id[65];
    assert_int_equal(lm_peerstore_batch_begin(ps), 0);
    for (int i = 0; i < 500; i++) {
        snprintf(id, sizeof(id), "%064x", i);
        add(ps, id, "some-host.example:41145", i);
    }
    assert_int_equal(lm_peerstore_batch_end(ps), 0);
    lm_peerstore_close(ps);
    struct stat st;
    assert_int_equal(stat(t->db, &st), 0);
    assert_true(st.st_size > 16384);
    assert_int_equal(truncate(t->db, 3 * 4096 + 100), 0);
    check_set_aside(t, NULL, 0);
}

static void
test_foreign_and_newer_files_are_set_aside(void **state)
{
    struct tmp *t = *state;
    sql_exec(t->db, "CREATE TABLE peers (id INTEGER PRIMARY KEY, x TEXT)");
    check_set_aside(t, NULL, 0);

    char aside[400];
    assert_int_equal(matches(t->dir, "peers.db.corrupt-*", aside, sizeof(aside)), 1);
    unlink(aside);
    sql_exec(t->db, "PRAGMA user_version = 99");
    check_set_aside(t, NULL, 0);
    assert_int_equal(matches(t->dir, "peers.db.corrupt-*", aside, sizeof(aside)), 1);
    unlink(aside);
    sql_exec(t->db, "PRAGMA application_id = 1234");
    check_set_aside(t, NULL, 0);
}

static void
test_directory_in_the_way(void **state)
{
    struct tmp *t = *state;
    assert_int_equal(mkdir(t->db, 0700), 0);
    check_set_aside(t, NULL, 0);
}

/* Nowhere to write: the store works in memory for this run. */
static void
test_unusable_data_dir_falls_back_to_memory(void **state)
{
    struct tmp *t = *state;
    char file[300], sub[340];
    snprintf(file, sizeof(file), "%s/not-a-dir", t->dir);
    write_file(file, "x", 1);
    snprintf(sub, sizeof(sub), "%s/missing/deeper", t->dir);
    const char *dirs[] = {file, sub};
    for (size_t i = 0; i < 2; i++) {
        struct lm_peerstore *ps = open_ok(dirs[i]);
        assert_false(lm_peerstore_persistent(ps));
        add(ps, ID_A, "h:1", 1);
        assert_int_equal(lm_peerstore_mark_ok(ps, ID_A, 2), 0);
        assert_int_equal(count(ps), 1);
        lm_peerstore_close(ps);
    }
    struct lm_peerstore *ps = (struct lm_peerstore *)1;
    char huge[PATH_MAX + 10];
    memset(huge, 'd', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    assert_int_equal(lm_peerstore_open(huge, &ps), -ENAMETOOLONG);
    assert_null(ps);
}

/* Rows edited by hand into shapes this code never writes are skipped. */
static void
test_bad_rows_are_skipped(void **state)
{
    struct tmp *t = *state;
    struct lm_peerstore *ps = open_ok(t->dir);
    add(ps, ID_A, "a:1", 1);
    lm_peerstore_close(ps);
    sql_exec(t->db,
             "INSERT INTO peers (node_id, addrs, source) VALUES "
             "('" ID_B "', '[\"b:1\", 5]', 'gossip'),"
             "('" ID_C "', '{\"x\":1}', 'gossip'),"
             "('" ID_D "', '[\"d:0\"]', 'gossip'),"
             "('DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD', '[\"d:1\"]', "
             "'gossip'),"
             "('short', '[\"s:1\"]', 'gossip');"
             "UPDATE peers SET fails = -3 WHERE node_id = '" ID_A "';");
    ps = open_ok(t->dir);
    struct lm_peer_rec *recs, r;
    size_t n;
    assert_int_equal(lm_peerstore_candidates(ps, 100, &recs, &n), 0);
    assert_int_equal(n, 0);
    lm_peer_recs_free(recs, n);
    assert_int_equal(lm_peerstore_get(ps, ID_B, &r), -ENOENT);
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), -ENOENT);
    /* A fresh upsert makes a row readable again. */
    sql_exec(t->db, "UPDATE peers SET fails = 0 WHERE node_id = '" ID_A "'");
    assert_int_equal(lm_peerstore_get(ps, ID_A, &r), 0);
    lm_peer_rec_release(&r);
    lm_peerstore_close(ps);
}

static void
test_backoff(void **state)
{
    (void)state;
    const uint32_t top = UINT32_MAX;
    /* No failure, no wait; a zero base or cap, no wait. */
    assert_int_equal(lm_peerstore_backoff_ms(0, 1000, 60000, top), 0);
    assert_int_equal(lm_peerstore_backoff_ms(3, 0, 60000, top), 0);
    assert_int_equal(lm_peerstore_backoff_ms(3, 1000, 0, top), 0);
    /* The highest rand reaches the ceiling: base * 2^(fails-1), capped. */
    assert_int_equal(lm_peerstore_backoff_ms(1, 1000, 60000, top), 1000);
    assert_int_equal(lm_peerstore_backoff_ms(2, 1000, 60000, top), 2000);
    assert_int_equal(lm_peerstore_backoff_ms(3, 1000, 60000, top), 4000);
    assert_int_equal(lm_peerstore_backoff_ms(6, 1000, 60000, top), 32000);
    assert_int_equal(lm_peerstore_backoff_ms(7, 1000, 60000, top), 60000);
    assert_int_equal(lm_peerstore_backoff_ms(UINT32_MAX, 1000, 60000, top), 60000);
    assert_int_equal(lm_peerstore_backoff_ms(40, UINT32_MAX, UINT32_MAX, top), UINT32_MAX);
    assert_int_equal(lm_peerstore_backoff_ms(1, 5000, 3000, top), 3000); /* base over cap */
    /* The lowest is 0 (full jitter), the middle is half the ceiling. */
    assert_int_equal(lm_peerstore_backoff_ms(3, 1000, 60000, 0), 0);
    assert_int_equal(lm_peerstore_backoff_ms(3, 1000, 60000, 1u << 31), 2000);
    assert_int_equal(lm_peerstore_backoff_ms(1, 1000, 60000, 1u << 30), 250);
    /* Uniform over [0, ceiling]: monotone in rand, mean near the middle. */
    uint64_t sum = 0;
    uint32_t prev = 0;
    const int steps = 1 << 16;
    for (int i = 0; i < steps; i++) {
        uint32_t r = (uint32_t)i << 16 | 0x8000;
        uint32_t d = lm_peerstore_backoff_ms(4, 500, 60000, r);
        assert_true(d <= 4000);
        assert_true(d >= prev);
        prev = d;
        sum += d;
    }
    uint64_t mean = sum / (uint64_t)steps;
    assert_true(mean >= 1990 && mean <= 2010);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_creates_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upsert_and_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dial_bookkeeping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_candidates_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_and_persist, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_file_is_set_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_file_is_set_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_file_is_set_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_and_newer_files_are_set_aside, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_directory_in_the_way, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unusable_data_dir_falls_back_to_memory, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bad_rows_are_skipped, setup, teardown),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
