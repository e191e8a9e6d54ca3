/* peerstore: a small SQLite table of known peers.
 *
 * The file is a cache of what gossip and dials taught this node, so losing
 * it costs a slower start, never correctness. That decides three things:
 * - synchronous=NORMAL with WAL: a commit is not fsynced; a power cut may
 *   lose the last few updates but cannot corrupt the file, and no call
 *   waits for a disk flush on the daemon's loop;
 * - anything wrong with the file at open (not SQLite, corrupt, written by
 *   another program or a newer schema) sets it aside and starts empty;
 * - if no file can be used at all, the store runs in memory.
 * busy_timeout is short (LM_PEERSTORE_BUSY_MS): only labmand writes here,
 * so a lock can only come from someone inspecting the file by hand, and the
 * loop must not wait on them for long. */
#include "peerstore/peerstore.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#define LM_LOG_MODULE "peerstore"
#include "log/log.h"
#include "util/util.h"

#define APP_ID 0x4c4d5053        /* "LMPS": PRAGMA application_id of a peers.db */
#define MAX_FAILS 1000000        /* fails stops counting here */
#define ADDRS_JSON_MAX 8192      /* bytes of the addrs column we read back */

/* Schema steps: migrations[v] takes user_version v to v + 1. */
static const char *const migrations[LM_PEERSTORE_SCHEMA] = {
    "CREATE TABLE peers ("
    " node_id TEXT PRIMARY KEY NOT NULL,"
    " name TEXT NOT NULL DEFAULT '',"
    " addrs TEXT NOT NULL DEFAULT '[]'," /* JSON array of "host:port" */
    " source TEXT NOT NULL CHECK (source IN ('bootstrap', 'gossip', 'inbound')),"
    " last_seen_ms INTEGER NOT NULL DEFAULT 0,"
    " last_ok_ms INTEGER NOT NULL DEFAULT 0,"
    " last_fail_ms INTEGER NOT NULL DEFAULT 0,"
    " fails INTEGER NOT NULL DEFAULT 0"
    ") WITHOUT ROWID;"
    "CREATE INDEX peers_by_last_seen ON peers(last_seen_ms);",
};

enum { ST_UPSERT, ST_OK, ST_FAIL, ST_GET, ST_CAND, ST_FORGET, ST_PRUNE, ST_COUNT, ST_N };

#define COLUMNS "node_id, name, addrs, source, last_seen_ms, last_ok_ms, last_fail_ms, fails"
#define RANK(x) "(CASE " x " WHEN 'bootstrap' THEN 3 WHEN 'inbound' THEN 2 ELSE 1 END)"

static const char *const sql[ST_N] = {
    [ST_UPSERT] = "INSERT INTO peers (node_id, name, addrs, source, last_seen_ms)"
                  " VALUES (?1, coalesce(?2, ''), coalesce(?3, '[]'), ?4, ?5)"
                  " ON CONFLICT (node_id) DO UPDATE SET"
                  " name = coalesce(?2, name), addrs = coalesce(?3, addrs),"
                  " source = CASE WHEN " RANK("?4") " > " RANK("source")
                  " THEN ?4 ELSE source END,"
                  " last_seen_ms = max(last_seen_ms, ?5)",
    [ST_OK] = "UPDATE peers SET fails = 0, last_ok_ms = ?2,"
              " last_seen_ms = max(last_seen_ms, ?2) WHERE node_id = ?1",
    [ST_FAIL] = "UPDATE peers SET fails = min(fails + 1, ?3), last_fail_ms = ?2"
                " WHERE node_id = ?1",
    [ST_GET] = "SELECT " COLUMNS " FROM peers WHERE node_id = ?1",
    [ST_CAND] = "SELECT " COLUMNS " FROM peers WHERE addrs <> '[]'"
                " ORDER BY last_ok_ms DESC, last_seen_ms DESC, node_id LIMIT ?1",
    [ST_FORGET] = "DELETE FROM peers WHERE node_id = ?1",
    [ST_PRUNE] = "DELETE FROM peers WHERE node_id IN (SELECT node_id FROM peers"
                 " ORDER BY last_seen_ms DESC, node_id LIMIT -1 OFFSET ?1)",
    [ST_COUNT] = "SELECT count(*) FROM peers",
};

struct lm_peerstore {
    sqlite3 *db;
    sqlite3_stmt *st[ST_N];
    char path[PATH_MAX];
    bool persistent;
    bool in_batch;
};

/* What opening a file came to. */
enum open_result {
    OPEN_OK,
    OPEN_BAD,     /* the file is there and unusable: set it aside */
    OPEN_BUSY,    /* locked by another process: leave it alone */
    OPEN_MISSING, /* cannot be created (no data_dir, read-only): memory */
};

static const char *const source_names[] = {
    [LM_PEER_GOSSIP] = "gossip",
    [LM_PEER_INBOUND] = "inbound",
    [LM_PEER_BOOTSTRAP] = "bootstrap",
};

/* ---- validation ---------------------------------------------------------- */

/* Names come from peers: bounded, printable, valid UTF-8 (jansson refuses
 * invalid UTF-8, which is how it is checked here). */
static bool
valid_name(const char *s)
{
    size_t len = strlen(s);
    if (len > LM_PEERSTORE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    json_t *j = json_stringn(s, len);
    json_decref(j);
    return j != NULL;
}

static bool
valid_addr(const char *s)
{
    char host[LM_PEERSTORE_ADDR_MAX];
    int port;
    return s && strlen(s) <= LM_PEERSTORE_ADDR_MAX &&
           lm_hostport_parse(s, host, sizeof(host), &port, false) == 0;
}

/* ---- opening, and setting a bad file aside ------------------------------ */

static void
close_db(struct lm_peerstore *ps)
{
    for (size_t i = 0; i < ST_N; i++) {
        sqlite3_finalize(ps->st[i]);
        ps->st[i] = NULL;
    }
    sqlite3_close_v2(ps->db);
    ps->db = NULL;
    ps->in_batch = false;
}

static enum open_result
classify(int rc, const char *path)
{
    struct stat st;
    int prim = rc & 0xff;
    if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        return OPEN_BUSY;
    if (strcmp(path, ":memory:") == 0 || prim == SQLITE_NOMEM)
        return OPEN_MISSING;
    return stat(path, &st) == 0 ? OPEN_BAD : OPEN_MISSING;
}

/* Runs a one-row pragma and returns its integer, or -1 after filling why. */
static int64_t
pragma_int(sqlite3 *db, const char *q, int *rc, char *why, size_t whycap)
{
    sqlite3_stmt *s = NULL;
    int64_t v = -1;
    *rc = sqlite3_prepare_v2(db, q, -1, &s, NULL);
    if (*rc == SQLITE_OK && (*rc = sqlite3_step(s)) == SQLITE_ROW) {
        v = sqlite3_column_int64(s, 0);
        *rc = SQLITE_OK;
    }
    if (*rc != SQLITE_OK)
        snprintf(why, whycap, "%s: %s", q, sqlite3_errmsg(db));
    sqlite3_finalize(s);
    return v;
}

static int
table_count(sqlite3 *db, int *rc, char *why, size_t whycap)
{
    return (int)pragma_int(db, "SELECT count(*) FROM sqlite_master", rc, why, whycap);
}

/* Brings a database at user_version `from` up to LM_PEERSTORE_SCHEMA in one
 * transaction, so a crash leaves either the old or the new schema. */
static int
migrate(sqlite3 *db, int64_t from, char *why, size_t whycap)
{
    struct lm_buf b;
    char *msg = NULL;
    lm_buf_init(&b, 0);
    lm_buf_puts(&b, "BEGIN IMMEDIATE;");
    for (int64_t v = from; v < LM_PEERSTORE_SCHEMA; v++)
        lm_buf_puts(&b, migrations[v]);
    lm_buf_printf(&b, "PRAGMA application_id = %d; PRAGMA user_version = %d; COMMIT;", APP_ID,
                  LM_PEERSTORE_SCHEMA);
    int rc = sqlite3_exec(db, b.data, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(why, whycap, "creating the schema: %s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    sqlite3_free(msg);
    lm_buf_release(&b);
    return rc;
}

static enum open_result
open_file(struct lm_peerstore *ps, const char *path, char *why, size_t whycap)
{
    int rc;
    sqlite3_stmt *s = NULL;

    why[0] = '\0';
    rc = sqlite3_open_v2(path, &ps->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, whycap, "%s", ps->db ? sqlite3_errmsg(ps->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(ps->db, 1);
    sqlite3_busy_timeout(ps->db, LM_PEERSTORE_BUSY_MS);

    /* The first statements read the header: a file that is not SQLite
     * fails here with SQLITE_NOTADB. */
    if ((rc = sqlite3_exec(ps->db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL)) != SQLITE_OK ||
        (rc = sqlite3_exec(ps->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL)) !=
            SQLITE_OK) {
        snprintf(why, whycap, "%s", sqlite3_errmsg(ps->db));
        goto fail;
    }
    /* quick_check reads every page once: milliseconds for a few thousand
     * rows, and the only way to find corruption before it bites later. */
    rc = sqlite3_prepare_v2(ps->db, "PRAGMA quick_check", -1, &s, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *res = (const char *)sqlite3_column_text(s, 0);
        if (!res || strcmp(res, "ok") != 0) {
            snprintf(why, whycap, "integrity check: %.200s", res ? res : "?");
            rc = SQLITE_CORRUPT;
        } else {
            rc = SQLITE_OK;
        }
    } else if (rc == SQLITE_OK) {
        rc = SQLITE_CORRUPT;
    }
    if (rc != SQLITE_OK && !why[0])
        snprintf(why, whycap, "integrity check: %s", sqlite3_errmsg(ps->db));
    sqlite3_finalize(s);
    if (rc != SQLITE_OK)
        goto fail;

    int64_t app = pragma_int(ps->db, "PRAGMA application_id", &rc, why, whycap);
    int64_t ver = rc == SQLITE_OK ? pragma_int(ps->db, "PRAGMA user_version", &rc, why, whycap)
                                  : -1;
    if (rc != SQLITE_OK)
        goto fail;
    if (app == 0 && ver == 0) {
        /* New file, or someone else's SQLite file. */
        int tables = table_count(ps->db, &rc, why, whycap);
        if (rc != SQLITE_OK)
            goto fail;
        if (tables > 0) {
            snprintf(why, whycap, "it holds tables that labman did not create");
            rc = SQLITE_CORRUPT;
            goto fail;
        }
    } else if (app != APP_ID) {
        snprintf(why, whycap, "it belongs to another program (application_id %lld)",
                 (long long)app);
        rc = SQLITE_CORRUPT;
        goto fail;
    } else if (ver > LM_PEERSTORE_SCHEMA || ver < 0) {
        snprintf(why, whycap, "schema version %lld is newer than this labman's (%d)",
                 (long long)ver, LM_PEERSTORE_SCHEMA);
        rc = SQLITE_CORRUPT;
        goto fail;
    }
    if (ver < LM_PEERSTORE_SCHEMA && (rc = migrate(ps->db, ver, why, whycap)) != SQLITE_OK)
        goto fail;

    for (size_t i = 0; i < ST_N; i++) {
        rc = sqlite3_prepare_v3(ps->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &ps->st[i], NULL);
        if (rc != SQLITE_OK) {
            snprintf(why, whycap, "unexpected schema: %s", sqlite3_errmsg(ps->db));
            goto fail;
        }
    }
    return OPEN_OK;
fail:
    close_db(ps);
    return classify(rc, path);
}

/* peers.db -> peers.db.corrupt-<ms>, with its WAL (which must never be
 * replayed into the new file) and rollback journal; the shared-memory
 * index is only a cache of the WAL and goes. */
static int
set_aside(const char *path, char *dst, size_t cap)
{
    struct stat st;
    char from[PATH_MAX + 16], to[PATH_MAX + 64];
    int64_t ms = (int64_t)time(NULL) * 1000;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
        ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

    int n = snprintf(dst, cap, "%s.corrupt-%lld", path, (long long)ms);
    for (int k = 1; n > 0 && (size_t)n < cap && lstat(dst, &st) == 0 && k < 100; k++)
        n = snprintf(dst, cap, "%s.corrupt-%lld-%d", path, (long long)ms, k);
    if (n < 0 || (size_t)n >= cap || lstat(dst, &st) == 0)
        return -ENAMETOOLONG;
    if (rename(path, dst) < 0)
        return -errno;
    static const char *const sides[] = {"-wal", "-journal"};
    for (size_t i = 0; i < LM_ARRAY_LEN(sides); i++) {
        snprintf(from, sizeof(from), "%s%s", path, sides[i]);
        snprintf(to, sizeof(to), "%s%s", dst, sides[i]);
        if (rename(from, to) < 0 && errno != ENOENT)
            unlink(from);
    }
    snprintf(from, sizeof(from), "%s-shm", path);
    unlink(from);
    return 0;
}

/* Opens ps->path, setting a bad file aside once; falls back to memory. */
static int
open_any(struct lm_peerstore *ps)
{
    char why[512], aside[PATH_MAX + 64];
    enum open_result r = open_file(ps, ps->path, why, sizeof(why));

    if (r == OPEN_BAD) {
        int rc = set_aside(ps->path, aside, sizeof(aside));
        if (rc == 0) {
            log_warn("%s is unusable (%s); moved it to %s and starting an empty peer cache",
                     ps->path, why, aside);
            r = open_file(ps, ps->path, why, sizeof(why));
        } else {
            log_warn("%s is unusable (%s) and cannot be moved aside: %s", ps->path, why,
                     strerror(-rc));
        }
    }
    if (r == OPEN_OK) {
        ps->persistent = true;
        return 0;
    }
    if (r == OPEN_BUSY)
        log_warn("%s is locked by another process (%s); keeping the peer cache in memory "
                 "for this run", ps->path, why);
    else
        log_warn("cannot use %s (%s); keeping the peer cache in memory for this run",
                 ps->path, why[0] ? why : "unknown error");
    ps->persistent = false;
    if (open_file(ps, ":memory:", why, sizeof(why)) != OPEN_OK) {
        log_error("cannot start an in-memory peer cache: %s", why);
        return -ENOMEM;
    }
    return 0;
}

int
lm_peerstore_open(const char *data_dir, struct lm_peerstore **out)
{
    *out = NULL;
    struct lm_peerstore *ps = lm_xcalloc(1, sizeof(*ps));
    int n = snprintf(ps->path, sizeof(ps->path), "%s/%s", data_dir, LM_PEERSTORE_FILE);
    /* Room for the ".corrupt-<ms>-k-wal" of a file set aside. */
    if (n < 0 || (size_t)n + 48 >= sizeof(ps->path)) {
        free(ps);
        return -ENAMETOOLONG;
    }
    int rc = open_any(ps);
    if (rc < 0) {
        free(ps);
        return rc;
    }
    *out = ps;
    return 0;
}

void
lm_peerstore_close(struct lm_peerstore *ps)
{
    if (!ps)
        return;
    if (ps->in_batch)
        sqlite3_exec(ps->db, "COMMIT", NULL, NULL, NULL);
    close_db(ps);
    free(ps);
}

bool
lm_peerstore_persistent(const struct lm_peerstore *ps)
{
    return ps && ps->persistent;
}

/* ---- statements ---------------------------------------------------------- */

/* Logs a failed statement; a database found corrupt while running is set
 * aside and replaced at once, so the next call works on a fresh cache. */
static int
db_error(struct lm_peerstore *ps, int rc, const char *what)
{
    int prim = rc & 0xff;
    log_warn("%s: %s: %s", ps->persistent ? ps->path : "peer cache", what,
             ps->db ? sqlite3_errmsg(ps->db) : sqlite3_errstr(rc));
    if ((prim == SQLITE_CORRUPT || prim == SQLITE_NOTADB) && ps->persistent) {
        close_db(ps);
        if (open_any(ps) < 0)
            log_error("the peer cache is gone until restart");
    }
    return -EIO;
}

static sqlite3_stmt *
stmt(struct lm_peerstore *ps, int which)
{
    sqlite3_stmt *s = ps->db ? ps->st[which] : NULL;
    if (s) {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
    return s;
}

/* Steps a statement that returns no rows; *changes gets the rows touched. */
static int
run(struct lm_peerstore *ps, sqlite3_stmt *s, const char *what, int *changes)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return db_error(ps, rc, what);
    if (changes)
        *changes = sqlite3_changes(ps->db);
    return 0;
}

static char *
addrs_json(const char *const *addrs, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(addrs[i]));
    char *s = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    if (!s)
        abort(); /* only allocation fails here: the strings were checked */
    return s;
}

int
lm_peerstore_upsert(struct lm_peerstore *ps, const char *node_id, const char *name,
                    const char *const *addrs, size_t n_addrs, enum lm_peer_source source,
                    int64_t now_ms)
{
    char id[LM_NODE_ID_LEN + 1];

    if (!lm_identity_is_node_id(node_id) || (name && !valid_name(name)) || now_ms < 0 ||
        (source != LM_PEER_GOSSIP && source != LM_PEER_INBOUND && source != LM_PEER_BOOTSTRAP) ||
        (addrs && n_addrs > LM_PEERSTORE_MAX_ADDRS))
        return -EINVAL;
    for (size_t i = 0; addrs && i < n_addrs; i++)
        if (!valid_addr(addrs[i]))
            return -EINVAL;
    lm_identity_node_id_lower(id, node_id);
    sqlite3_stmt *s = stmt(ps, ST_UPSERT);
    if (!s)
        return -EIO;
    char *json = addrs ? addrs_json(addrs, n_addrs) : NULL;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (name)
        sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
    if (json)
        sqlite3_bind_text(s, 3, json, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, source_names[source], -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, now_ms);
    int rc = run(ps, s, "upsert", NULL);
    free(json);
    return rc;
}

static int
update_one(struct lm_peerstore *ps, int which, const char *node_id, int64_t now_ms,
           const char *what)
{
    char id[LM_NODE_ID_LEN + 1];
    int changes = 0;
    if (!lm_identity_is_node_id(node_id) || now_ms < 0)
        return -EINVAL;
    lm_identity_node_id_lower(id, node_id);
    sqlite3_stmt *s = stmt(ps, which);
    if (!s)
        return -EIO;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (which != ST_FORGET)
        sqlite3_bind_int64(s, 2, now_ms);
    if (which == ST_FAIL)
        sqlite3_bind_int64(s, 3, MAX_FAILS);
    int rc = run(ps, s, what, &changes);
    if (rc == 0 && changes == 0)
        rc = -ENOENT;
    return rc;
}

int
lm_peerstore_mark_ok(struct lm_peerstore *ps, const char *node_id, int64_t now_ms)
{
    return update_one(ps, ST_OK, node_id, now_ms, "mark ok");
}

int
lm_peerstore_mark_fail(struct lm_peerstore *ps, const char *node_id, int64_t now_ms)
{
    return update_one(ps, ST_FAIL, node_id, now_ms, "mark failure");
}

int
lm_peerstore_forget(struct lm_peerstore *ps, const char *node_id)
{
    return update_one(ps, ST_FORGET, node_id, 0, "forget");
}

void
lm_peer_rec_release(struct lm_peer_rec *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_addrs; i++)
        free(r->addrs[i]);
    memset(r, 0, sizeof(*r));
}

void
lm_peer_recs_free(struct lm_peer_rec *recs, size_t n)
{
    for (size_t i = 0; recs && i < n; i++)
        lm_peer_rec_release(&recs[i]);
    free(recs);
}

/* A row as a record; false when any column is not what this code writes
 * (the file is only a cache, and may have been edited by hand). */
static bool
read_row(sqlite3_stmt *s, struct lm_peer_rec *r)
{
    const char *id = (const char *)sqlite3_column_text(s, 0);
    const char *name = (const char *)sqlite3_column_text(s, 1);
    const char *addrs = (const char *)sqlite3_column_text(s, 2);
    const char *src = (const char *)sqlite3_column_text(s, 3);
    int addrs_len = sqlite3_column_bytes(s, 2);

    memset(r, 0, sizeof(*r));
    if (!lm_identity_is_node_id(id) || !name || !valid_name(name) || !addrs || !src || addrs_len <= 0 ||
        addrs_len > ADDRS_JSON_MAX)
        return false;
    lm_identity_node_id_lower(r->node_id, id);
    if (strcmp(r->node_id, id) != 0)
        return false;
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->source = 0;
    for (int k = LM_PEER_GOSSIP; k <= LM_PEER_BOOTSTRAP; k++)
        if (strcmp(src, source_names[k]) == 0)
            r->source = (enum lm_peer_source)k;
    r->last_seen_ms = sqlite3_column_int64(s, 4);
    r->last_ok_ms = sqlite3_column_int64(s, 5);
    r->last_fail_ms = sqlite3_column_int64(s, 6);
    int64_t fails = sqlite3_column_int64(s, 7);
    if (!r->source || r->last_seen_ms < 0 || r->last_ok_ms < 0 || r->last_fail_ms < 0 ||
        fails < 0 || fails > MAX_FAILS)
        return false;
    r->fails = (uint32_t)fails;

    json_t *a = json_loadb(addrs, (size_t)addrs_len, JSON_REJECT_DUPLICATES, NULL);
    bool ok = json_is_array(a) && json_array_size(a) <= LM_PEERSTORE_MAX_ADDRS;
    for (size_t i = 0; ok && i < json_array_size(a); i++) {
        const char *s1 = json_string_value(json_array_get(a, i));
        ok = s1 && valid_addr(s1);
        if (ok)
            r->addrs[r->n_addrs++] = lm_xstrdup(s1);
    }
    json_decref(a);
    if (!ok)
        lm_peer_rec_release(r);
    return ok;
}

int
lm_peerstore_get(struct lm_peerstore *ps, const char *node_id, struct lm_peer_rec *out)
{
    char id[LM_NODE_ID_LEN + 1];
    memset(out, 0, sizeof(*out));
    if (!lm_identity_is_node_id(node_id))
        return -EINVAL;
    lm_identity_node_id_lower(id, node_id);
    sqlite3_stmt *s = stmt(ps, ST_GET);
    if (!s)
        return -EIO;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    int ret = -ENOENT;
    if (rc == SQLITE_ROW && read_row(s, out))
        ret = 0;
    /* Reset before db_error, which may replace the database and so
     * finalize s. */
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        ret = db_error(ps, rc, "get");
    return ret;
}

int
lm_peerstore_candidates(struct lm_peerstore *ps, size_t max, struct lm_peer_rec **out,
                        size_t *n)
{
    *out = NULL;
    *n = 0;
    if (max == 0)
        return 0;
    if (max > LM_PEERSTORE_DEFAULT_CAP * 16)
        max = LM_PEERSTORE_DEFAULT_CAP * 16;
    sqlite3_stmt *s = stmt(ps, ST_CAND);
    if (!s)
        return -EIO;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)max);
    struct lm_peer_rec *recs = NULL;
    size_t len = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (len == cap) {
            cap = cap ? 2 * cap : 16;
            recs = lm_xrealloc(recs, cap * sizeof(*recs));
        }
        if (read_row(s, &recs[len]) && recs[len].n_addrs > 0)
            len++;
        else
            lm_peer_rec_release(&recs[len]);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
        lm_peer_recs_free(recs, len);
        return db_error(ps, rc, "list candidates");
    }
    *out = recs;
    *n = len;
    return 0;
}

int
lm_peerstore_prune(struct lm_peerstore *ps, size_t max_rows, size_t *removed)
{
    int changes = 0;
    if (removed)
        *removed = 0;
    sqlite3_stmt *s = stmt(ps, ST_PRUNE);
    if (!s)
        return -EIO;
    sqlite3_bind_int64(s, 1, max_rows > INT64_MAX ? INT64_MAX : (sqlite3_int64)max_rows);
    int rc = run(ps, s, "prune", &changes);
    if (rc == 0 && removed)
        *removed = (size_t)changes;
    return rc;
}

int
lm_peerstore_count(struct lm_peerstore *ps, size_t *n)
{
    *n = 0;
    sqlite3_stmt *s = stmt(ps, ST_COUNT);
    if (!s)
        return -EIO;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *n = (size_t)sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : db_error(ps, rc, "count");
}

int
lm_peerstore_batch_begin(struct lm_peerstore *ps)
{
    if (!ps->db)
        return -EIO;
    if (ps->in_batch)
        return -EBUSY;
    int rc = sqlite3_exec(ps->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_error(ps, rc, "begin");
    ps->in_batch = true;
    return 0;
}

int
lm_peerstore_batch_end(struct lm_peerstore *ps)
{
    /* A reset in between (corruption found mid-batch) already ended it. */
    if (!ps->in_batch)
        return ps->db ? 0 : -EIO;
    ps->in_batch = false;
    int rc = sqlite3_exec(ps->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        int ret = db_error(ps, rc, "commit");
        if (ps->db)
            sqlite3_exec(ps->db, "ROLLBACK", NULL, NULL, NULL);
        return ret;
    }
    return 0;
}

uint32_t
lm_peerstore_backoff_ms(uint32_t fails, uint32_t base_ms, uint32_t max_ms, uint32_t rand)
{
    if (fails == 0 || base_ms == 0 || max_ms == 0)
        return 0;
    uint64_t ceiling = base_ms;
    for (uint32_t i = 1; i < fails && ceiling < max_ms; i++)
        ceiling <<= 1;
    if (ceiling > max_ms)
        ceiling = max_ms;
    /* Multiply-shift maps rand onto [0, ceiling] without a modulo's bias. */
    return (uint32_t)(((uint64_t)rand * (ceiling + 1)) >> 32);
}
