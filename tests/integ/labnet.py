"""A small labnet/1 peer in Python, for tests that must misbehave on purpose.

It speaks just enough of ../shared/PROTOCOL.md to pass for a node — TLS 1.3
with an Ed25519 self-signed certificate and ALPN "labnet/1", a yamux client
(§1.3), labnet frames with Ed25519 signatures (§2), HELLO, gossip records,
PROXY_REQUEST — and lets a test bend any of it: flip a byte after signing,
sign as someone else, replay a frame, announce a length it never sends.

Only the standard library and python3-cryptography. Every read has a timeout
and every loop a bound, so a test that goes wrong fails instead of hanging.

    me = Identity()                          # a fresh key; me.id is the node id
    c = dial(port, me, expect=victim_id)     # TLS, checks the victim's key
    c.hello()                                # stream 1, HELLO both ways
    c.send_frame(GOSSIP_RECORD, rec, SIGNED) # rec = me.record("probe", {...})
    err = c.expect(lambda f: f.type == ERROR)
"""
import datetime
import json
import os
import socket
import ssl
import struct
import tempfile
import time

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)
from cryptography.x509.oid import NameOID

# --- frames (PROTOCOL.md §2) -----------------------------------------------------------

HELLO, PING, PONG, ERROR = 0x01, 0x02, 0x03, 0x04
GOSSIP_RECORD, GOSSIP_DIGEST, GOSSIP_WANT = 0x10, 0x11, 0x12
PROXY_REQUEST, PROXY_HEAD, PROXY_CHUNK, PROXY_END = 0x20, 0x21, 0x22, 0x23
PROXY_ERROR, PROXY_CANCEL = 0x24, 0x25

SIGNED, BINARY = 0x01, 0x02
SIG_CONTEXT = b"labnet/1\0"
FRAME_MAX = 1 << 20           # the length field's cap, every type but PROXY_REQUEST
FRAME_MAX_REQUEST = 4 << 20   # PROXY_REQUEST

# --- yamux (PROTOCOL.md §1.3, hashicorp spec.md) -------------------------------------------

Y_DATA, Y_WINDOW, Y_PING, Y_GOAWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
WINDOW = 256 * 1024

IO_TIMEOUT = 5.0      # default bound on one wait
MAX_ROUNDS = 100000   # bound on any receive loop


def now_ms():
    return int(time.time() * 1000)


def jbytes(obj):
    """Compact JSON, as labman writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def signed_message(ftype, payload):
    return SIG_CONTEXT + bytes([ftype]) + payload


class Identity:
    """An Ed25519 node key. seed: 32 bytes (random when None)."""

    def __init__(self, seed=None):
        self.seed = seed if seed is not None else os.urandom(32)
        self.key = Ed25519PrivateKey.from_private_bytes(self.seed)
        self.pk = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        self.id = self.pk.hex()

    def sign(self, ftype, payload):
        return self.key.sign(signed_message(ftype, payload))

    def frame(self, ftype, obj, flags=SIGNED):
        """A signed frame of a JSON payload (obj: dict or bytes)."""
        payload = obj if isinstance(obj, bytes) else jbytes(obj)
        return encode(ftype, payload, flags, self)

    def hello_payload(self, name="hostile", ts=None, **over):
        p = {"from": self.id, "ts": now_ms() if ts is None else ts, "version": 1,
             "name": name, "roles": [], "addrs": [], "software": "labnet.py/1",
             "features": []}
        p.update(over)
        return p

    def record(self, kind, body, seq=None, ttl_ms=600000, origin=None, ts=None):
        """A gossip record payload (bytes) of this origin (or another, to forge)."""
        t = now_ms() if ts is None else ts
        return jbytes({"origin": origin or self.id, "kind": kind,
                       "seq": t if seq is None else seq, "ts": t, "ttl_ms": ttl_ms,
                       "body": body})

    def write_cert(self, dirpath):
        """A self-signed X.509 certificate of this key, as labman's peers expect:
        Ed25519, one certificate, valid from yesterday. Returns (cert, key) paths."""
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labnet.py"),
                          x509.NameAttribute(NameOID.COMMON_NAME, self.id)])
        t = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(t - datetime.timedelta(days=1))
                .not_valid_after(t + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .sign(self.key, None))
        cp, kp = os.path.join(dirpath, "cert.pem"), os.path.join(dirpath, "key.pem")
        with open(cp, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(kp, "wb") as f:
            f.write(self.key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return cp, kp


def encode(ftype, payload, flags=0, signer=None, sig=None):
    """One frame: be32 length, type, flags, payload, [signature]. A signer
    signs; sig gives the 64 signature bytes as they are (to forge)."""
    if signer is not None and sig is None:
        sig = signer.sign(ftype, payload)
    tail = sig if sig is not None else b""
    if sig is not None:
        flags |= SIGNED
    return struct.pack(">IBB", 2 + len(payload) + len(tail), ftype, flags) + payload + tail


def flip(frame, offset_in_payload, mask=0x01):
    """frame with one payload byte XORed after signing (the signature unchanged)."""
    b = bytearray(frame)
    b[6 + offset_in_payload] ^= mask
    return bytes(b)


def verify(frame, pk_hex):
    """Whether a decoded Frame's signature is pk_hex's."""
    if frame.sig is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk_hex)).verify(
            frame.sig, signed_message(frame.type, frame.payload))
        return True
    except (InvalidSignature, ValueError):
        return False


class Frame:
    def __init__(self, ftype, flags, payload, sig, stream):
        self.type, self.flags, self.payload, self.sig, self.stream = (ftype, flags, payload,
                                                                        sig, stream)

    def json(self):
        return json.loads(self.payload)

    def __repr__(self):
        return f"Frame(0x{self.type:02x}, stream {self.stream}, {self.payload[:120]!r})"


class FrameReader:
    """Splits a stream's bytes into frames. Bounded by the caps: a length
    over them is an error here too."""

    def __init__(self):
        self.buf = bytearray()
        self.error = None

    def feed(self, data, stream):
        self.buf += data
        out = []
        while self.error is None and len(self.buf) >= 6:
            length, ftype, flags = struct.unpack(">IBB", self.buf[:6])
            if length < 2 or length > FRAME_MAX_REQUEST:
                self.error = f"bad frame length {length}"
                break
            if len(self.buf) < 4 + length:
                break
            body = bytes(self.buf[6:4 + length])
            del self.buf[:4 + length]
            sig = None
            if flags & SIGNED and len(body) >= 64:
                body, sig = body[:-64], body[-64:]
            out.append(Frame(ftype, flags, body, sig, stream))
        return out


# --- TLS ---------------------------------------------------------------------------------

class KeyMismatch(Exception):
    pass


def tls_context(me, alpn=("labnet/1",), cert=True):
    """A client context: TLS 1.3 only, our certificate, no CA (the peer's key
    is checked by hand against the node id we dialed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if cert:
        with tempfile.TemporaryDirectory() as d:
            ctx.load_cert_chain(*me.write_cert(d))
    return ctx


def peer_id(sslsock):
    """The node id in the peer's certificate (the hex of its Ed25519 key)."""
    der = sslsock.getpeercert(binary_form=True)
    pub = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise KeyMismatch(f"the peer's key is {type(pub).__name__}, not Ed25519")
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def tls_connect(port, me, expect=None, alpn=("labnet/1",), cert=True, host="127.0.0.1",
                timeout=IO_TIMEOUT):
    """TCP + TLS 1.3 to host:port. Raises ssl.SSLError (or OSError) when the
    handshake fails, KeyMismatch when the peer is not expect."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        s = tls_context(me, alpn, cert).wrap_socket(raw, server_hostname=None)
    except BaseException:
        raw.close()
        raise
    if alpn and s.selected_alpn_protocol() != alpn[0]:
        s.close()
        raise ssl.SSLError(f"the peer agreed to ALPN {s.selected_alpn_protocol()!r}")
    got = peer_id(s)
    if expect is not None and got != expect:
        s.close()
        raise KeyMismatch(f"dialed {expect[:12]} but the peer's key is {got[:12]}")
    return s


# --- a connection: yamux client + frames -----------------------------------------------

class Stream:
    def __init__(self, sid):
        self.id = sid
        self.reader = FrameReader()
        self.frames = []          # decoded, not yet taken by the test
        self.send_window = WINDOW
        self.unacked = 0          # consumed bytes not yet given back to the peer
        self.fin = self.rst = False


class Conn:
    """A labnet connection we dialed: yamux client (odd stream ids) over TLS.
    Answers yamux pings and gives window back as it reads."""

    def __init__(self, sock, me, peer):
        self.sock, self.me, self.peer = sock, me, peer
        self.inbuf = bytearray()
        self.streams = {}
        self.next_id = 1
        self.closed = False       # EOF, reset, or the peer's GoAway
        self.goaway = None
        self.ctl = None
        self.peer_hello = None

    # raw I/O
    def send_raw(self, data):
        """Sends bytes; False when the peer is gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def _header(self, ytype, flags, sid, length):
        return struct.pack(">BBHII", 0, ytype, flags, sid, length)

    def pump(self, timeout=0.05):
        """Reads what arrives within timeout and handles it. False once closed."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, TimeoutError):
            return True
        except ssl.SSLWantReadError:
            return True
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        self.inbuf += data
        self._parse()
        return not self.closed

    def _parse(self):
        while len(self.inbuf) >= 12:
            ver, ytype, flags, sid, length = struct.unpack(">BBHII", self.inbuf[:12])
            if ver != 0 or ytype > 3:
                raise AssertionError(f"bad yamux header {bytes(self.inbuf[:12]).hex()}")
            if ytype == Y_DATA:
                if len(self.inbuf) < 12 + length:
                    return
                payload = bytes(self.inbuf[12:12 + length])
                del self.inbuf[:12 + length]
            else:
                payload = b""
                del self.inbuf[:12]
            if ytype == Y_PING:
                if flags & SYN:
                    self.send_raw(self._header(Y_PING, ACK, 0, length))
                continue
            if ytype == Y_GOAWAY:
                self.goaway = length
                self.closed = True
                continue
            st = self.streams.get(sid)
            if st is None:
                if not flags & SYN:
                    continue
                # The listener opens a stream (a request to us): we refuse it.
                self.send_raw(self._header(Y_WINDOW, RST, sid, 0))
                continue
            if ytype == Y_WINDOW:
                st.send_window += length
            elif payload:
                st.frames += st.reader.feed(payload, sid)
                st.unacked += len(payload)
                if st.unacked >= WINDOW // 2:
                    self.send_raw(self._header(Y_WINDOW, 0, sid, st.unacked))
                    st.unacked = 0
            if flags & FIN:
                st.fin = True
            if flags & RST:
                st.rst = True

    def wait(self, pred, timeout=IO_TIMEOUT):
        """Pumps until pred() is true; returns its value, or None at timeout
        or when the connection closed first."""
        deadline = time.monotonic() + timeout
        for _ in range(MAX_ROUNDS):
            v = pred()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0 or not self.pump(min(0.05, left)):
                return pred() or None
        return None

    def wait_closed(self, timeout=IO_TIMEOUT):
        """True when the peer closes the connection within timeout."""
        return bool(self.wait(lambda: self.closed, timeout)) or self.closed

    # streams
    def open_stream(self):
        sid = self.next_id
        self.next_id += 2
        st = Stream(sid)
        self.streams[sid] = st
        self.send_raw(self._header(Y_WINDOW, SYN, sid, 0))
        return st

    def write(self, st, data, timeout=IO_TIMEOUT):
        """Data onto a stream within its send window (waiting for window
        updates). False when the window did not open in time or we closed."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        for _ in range(MAX_ROUNDS):
            if not view:
                return True
            if st.send_window == 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self.wait(lambda: st.send_window > 0 or st.rst, left):
                    return False
                if st.rst:
                    return False
            k = min(len(view), st.send_window, WINDOW)
            if not self.send_raw(self._header(Y_DATA, 0, st.id, k) + bytes(view[:k])):
                return False
            st.send_window -= k
            view = view[k:]
        return False

    def close_stream(self, st):
        self.send_raw(self._header(Y_WINDOW, FIN, st.id, 0))

    def reset_stream(self, st):
        self.send_raw(self._header(Y_WINDOW, RST, st.id, 0))

    def take(self, st, pred=lambda f: True, timeout=IO_TIMEOUT):
        """The first frame on stream st matching pred (removed from its
        queue), or None at timeout / close."""
        def find():
            for i, f in enumerate(st.frames):
                if pred(f):
                    return st.frames.pop(i)
            return None
        return self.wait(find, timeout)

    # the control stream
    def hello(self, frame=None, timeout=IO_TIMEOUT):
        """Opens the control stream and sends our HELLO (or the given frame
        bytes); returns the peer's HELLO, its signature checked."""
        self.ctl = self.open_stream()
        self.write(self.ctl, frame if frame is not None else
                   self.me.frame(HELLO, self.me.hello_payload()))
        f = self.take(self.ctl, lambda f: f.type == HELLO, timeout)
        if f is None:
            return None
        assert verify(f, self.peer), "the peer's HELLO is not signed by its TLS key"
        self.peer_hello = f.json()
        assert self.peer_hello["from"] == self.peer
        return self.peer_hello

    def send_frame(self, frame_bytes):
        """Raw frame bytes onto the control stream."""
        return self.write(self.ctl, frame_bytes)

    def expect(self, pred, timeout=IO_TIMEOUT):
        """The first control frame matching pred (e.g. an ERROR), or None."""
        return self.take(self.ctl, pred, timeout)

    def records(self, timeout=1.0):
        """Every gossip record the peer holds: an empty digest makes it send
        them all. Returns {(origin, kind): payload dict}."""
        self.ctl.frames = [f for f in self.ctl.frames if f.type != GOSSIP_RECORD]
        self.send_frame(encode(GOSSIP_DIGEST, jbytes({"entries": []})))
        got = {}
        deadline = time.monotonic() + timeout
        for _ in range(MAX_ROUNDS):
            f = self.take(self.ctl, lambda f: f.type == GOSSIP_RECORD,
                          max(0.0, deadline - time.monotonic()))
            if f is None:
                break
            r = f.json()
            assert verify(f, r["origin"]), f"record of {r['origin'][:12]} badly signed"
            got[(r["origin"], r["kind"])] = r
        return got

    def request(self, frame_bytes, timeout=IO_TIMEOUT):
        """Sends one PROXY_REQUEST frame on a new stream and collects the
        answer up to PROXY_END / PROXY_ERROR or the stream's end. Returns
        (frames, stream)."""
        st = self.open_stream()
        self.write(st, frame_bytes)
        done = lambda: (any(f.type in (PROXY_END, PROXY_ERROR) for f in st.frames)
                        or st.fin or st.rst)
        self.wait(done, timeout)
        return list(st.frames), st

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def dial(port, me, expect=None, **kw):
    """A labnet connection to 127.0.0.1:port (before HELLO)."""
    s = tls_connect(port, me, expect, **kw)
    return Conn(s, me, peer_id(s))


def proxy_request(me, to, model, body, request_id=None, ts=None, frm=None, stream=False):
    """A PROXY_REQUEST payload (bytes)."""
    return jbytes({"from": frm or me.id, "ts": now_ms() if ts is None else ts,
                   "request_id": request_id or os.urandom(16).hex(), "to": to,
                   "api": "chat", "model": model, "stream": stream, "deadline_ms": 10000,
                   "body": body})
