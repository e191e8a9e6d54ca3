/* yamux: the stream multiplexer under labnet/1 (hashicorp/yamux spec.md framing), sans-IO.
 * Owns: frame parsing and encoding, stream ids, per-stream flow-control windows, keepalive
 * pings and RTT, GoAway, and the ownership rules that let callbacks re-enter it safely. */
#ifndef LM_YAMUX_H
#define LM_YAMUX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LM_YAMUX_HEADER_LEN 12
#define LM_YAMUX_WINDOW (256u * 1024)  /* initial window of every stream, fixed by the protocol */
#define LM_YAMUX_MAX_WINDOW (16u << 20) /* largest receive window lm_yamux_opts accepts */
#define LM_YAMUX_MAX_STREAMS 1024
#define LM_YAMUX_MAX_STREAMS_LIMIT 65536 /* largest max_streams lm_yamux_opts accepts */
#define LM_YAMUX_KEEPALIVE_MS 15000
#define LM_YAMUX_MISSED_PINGS 3
#define LM_YAMUX_MAX_MISSED_PINGS 8

/* GoAway codes on the wire. */
enum {
    LM_YAMUX_GOAWAY_NORMAL = 0,
    LM_YAMUX_GOAWAY_PROTO = 1,
    LM_YAMUX_GOAWAY_INTERNAL = 2,
};

struct lm_yamux;
struct lm_yamux_stream;

/* Zero fields take the defaults; lm_yamux_new with opts NULL takes them all. */
struct lm_yamux_opts {
    uint32_t window;           /* receive window per stream, 256 KiB..16 MiB; 0 = 256 KiB */
    unsigned max_streams;      /* concurrent streams, both directions, ..65536; 0 = 1024 */
    unsigned keepalive_ms;     /* Ping interval of lm_yamux_tick; 0 = 15000 */
    unsigned max_missed_pings; /* keepalive Pings in a row without answer, 1..8; 0 = 3 */
};

/* Re-entrancy. Callbacks other than send run only inside lm_yamux_feed,
 * lm_yamux_tick and lm_yamux_free; send runs inside any call that puts a
 * frame on the wire. From any callback but send the application may call
 * anything in this header, on any stream (the one the callback is about
 * included) or on the session: write, consume, close, reset, release, open,
 * goaway, ping, even lm_yamux_free. Only lm_yamux_feed and lm_yamux_tick
 * refuse, with -EBUSY. A stream released or a session freed from inside a
 * callback is marked at once and its memory goes when the callback (or the
 * outermost feed or tick) has returned; no callback fires for it after. */

/* Session callbacks. send is required; the others may be NULL (no on_accept
 * refuses every stream the peer opens). */
struct lm_yamux_cbs {
    /* Bytes for the peer, in order. A frame may come in several calls. The
     * owner queues them (the session never waits for the transport) and caps
     * its queue; send must not call back into the session. */
    void (*send)(const void *data, size_t n, void *arg);
    /* The peer opened st. Return 0 to accept it, having set its callbacks
     * with lm_yamux_stream_set_cbs; < 0 refuses it with RST, and st is then
     * gone when on_accept returns. */
    int (*on_accept)(struct lm_yamux_stream *st, void *arg);
    /* The session is dead, called once: err < 0 for a protocol error
     * (-EPROTO), a peer's error GoAway (-EPROTO, -EIO), a keepalive timeout
     * (-ETIMEDOUT); err 0 when a GoAway (either way) was followed by the end
     * of every stream. Every stream still open got on_reset(err) before. */
    void (*on_close)(int err, const char *why, void *arg);
    /* Monotonic milliseconds for RTT; NULL = lm_now_ms. lm_yamux_tick's
     * now_ms must come from the same clock. */
    uint64_t (*now_ms)(void *arg);
};

/* Stream callbacks; any may be NULL. A stream without on_data has its bytes
 * dropped and counted as consumed, so a forgotten stream never stalls. */
struct lm_yamux_stream_cbs {
    /* Bytes from the peer, as they arrive (a frame may come in pieces). The
     * receive window reopens only as the application calls
     * lm_yamux_stream_consume: this is the backpressure that reaches the
     * remote writer. */
    void (*on_data)(struct lm_yamux_stream *st, const void *data, size_t n, void *arg);
    /* The send window reopened after lm_yamux_stream_write accepted less
     * than it was offered. */
    void (*on_writable)(struct lm_yamux_stream *st, void *arg);
    /* The peer half-closed: no more on_data. */
    void (*on_fin)(struct lm_yamux_stream *st, void *arg);
    /* The peer reset the stream (-ECONNRESET), or the session died (its
     * error) or was freed (-ECONNABORTED). Called at most once; nothing
     * follows it. */
    void (*on_reset)(struct lm_yamux_stream *st, int err, void *arg);
};

struct lm_yamux_stats {
    unsigned streams;        /* in use now, lingering released ones included */
    uint64_t opened;         /* by us */
    uint64_t accepted;       /* from the peer */
    uint64_t refused;        /* peer SYNs answered with RST: max_streams, GoAway, on_accept */
    uint64_t pings_sent;
    uint64_t pings_answered; /* answers to our Pings */
};

/* A session over one transport; client is the dialer (odd stream ids).
 * -EINVAL for opts out of range or no send callback. */
int lm_yamux_new(struct lm_yamux **out, bool client, const struct lm_yamux_cbs *cbs, void *arg,
                 const struct lm_yamux_opts *opts);

/* Ends the session without a word on the wire (the owner closes the
 * transport) and frees it. Every stream still open gets on_reset(-ECONNABORTED)
 * first; on_close is not called. Streams the application has not released
 * stay valid as orphans (every call on them fails with -ENOTCONN) until
 * lm_yamux_stream_free. May be called from any callback, on_close included:
 * the memory then goes when the outermost lm_yamux_feed or lm_yamux_tick
 * returns, and no callback fires after this call. NULL is a no-op. */
void lm_yamux_free(struct lm_yamux *s);

/* Bytes read from the transport, split anywhere. Returns 0, or the session's
 * error once it is dead (on a protocol error a GoAway with the protocol-error
 * code has gone out through send first): then every later call returns it
 * too (-ESHUTDOWN after a clean GoAway end). -EBUSY when called from inside
 * one of the session's callbacks. Holds at most one header between calls. */
int lm_yamux_feed(struct lm_yamux *s, const void *data, size_t n);

/* Keepalive, about once a second: a Ping every keepalive_ms (the first at
 * the first tick); when max_missed_pings in a row went unanswered the session
 * dies with -ETIMEDOUT. Returns 0 or the error of a dead session; -EBUSY
 * from inside a callback. */
int lm_yamux_tick(struct lm_yamux *s, uint64_t now_ms);

/* Sends a Ping now, to measure the RTT. -EBUSY while 8 of ours are
 * unanswered, -ENOTCONN on a dead session. */
int lm_yamux_ping(struct lm_yamux *s);

/* The RTT of the last answered Ping in ms, or -EAGAIN before any answer. */
int lm_yamux_ping_rtt_ms(const struct lm_yamux *s);

/* Sends GoAway(code): from now on no new stream either way (the peer's SYNs
 * are refused with RST, lm_yamux_open fails); open streams finish, and the
 * session closes with on_close(0) once the last one has ended (seen by the
 * next lm_yamux_feed or lm_yamux_tick; a GoAway from the peer does the same).
 * A code other than LM_YAMUX_GOAWAY_NORMAL tells the peer to drop the
 * session: the owner should then close the transport. -ENOTCONN when dead,
 * -EALREADY when already sent. */
int lm_yamux_goaway(struct lm_yamux *s, uint32_t code);

/* 0 while alive, else the error on_close reported (-ESHUTDOWN for a clean end). */
int lm_yamux_error(const struct lm_yamux *s);

void lm_yamux_get_stats(const struct lm_yamux *s, struct lm_yamux_stats *out);

/* Opens a stream (SYN goes out at once, in a WindowUpdate, as hashicorp
 * does). -ENOTCONN when dead, -ESHUTDOWN after our GoAway, -ECONNREFUSED
 * after the peer's, -EAGAIN at max_streams, -ENOSPC when ids ran out. */
int lm_yamux_open(struct lm_yamux *s, struct lm_yamux_stream **out);

/* Callbacks and the user pointer handed to them (copied; cbs may be NULL). */
void lm_yamux_stream_set_cbs(struct lm_yamux_stream *st, const struct lm_yamux_stream_cbs *cbs,
                             void *arg);
void *lm_yamux_stream_get_arg(const struct lm_yamux_stream *st);
void lm_yamux_stream_set_arg(struct lm_yamux_stream *st, void *arg);
uint32_t lm_yamux_stream_id(const struct lm_yamux_stream *st);
/* Bytes lm_yamux_stream_write would accept now. */
uint32_t lm_yamux_stream_send_window(const struct lm_yamux_stream *st);

/* Sends up to the send window. Returns the bytes accepted (0 when the window
 * is closed: on_writable follows when it opens), or -EPIPE after our FIN,
 * -ECONNRESET after a reset, -ENOTCONN when the session is dead or gone. */
ssize_t lm_yamux_stream_write(struct lm_yamux_stream *st, const void *data, size_t n);

/* The application is done with n bytes of on_data: once half the window is
 * consumed a WindowUpdate gives it back to the peer. -EINVAL for more than
 * was delivered and not yet consumed. */
int lm_yamux_stream_consume(struct lm_yamux_stream *st, size_t n);

/* Half-close: FIN, no more writes; on_data goes on until the peer's FIN.
 * 0 when already closed; -ECONNRESET after a reset, -ENOTCONN when dead. */
int lm_yamux_stream_close(struct lm_yamux_stream *st);

/* Abort both directions with RST; no on_reset follows for it. 0 when the
 * stream has already ended; -ENOTCONN when the session is dead or gone. */
int lm_yamux_stream_reset(struct lm_yamux_stream *st);

/* Releases the stream: no callback fires for it after this call, and st must
 * not be used again. A stream still open ends as follows: if neither side
 * sent FIN it is reset (the peer stops at once, a cancel); if only the peer
 * did, our FIN goes out; if only we did, it lingers until the peer's FIN or
 * RST, and is reset should data still arrive. Memory goes once both sides
 * are done. Safe inside the stream's own callbacks. NULL is a no-op. */
void lm_yamux_stream_free(struct lm_yamux_stream *st);

#endif
