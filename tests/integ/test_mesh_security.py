"""The mesh under attack: a hostile peer (tests/integ/labnet.py, a labnet/1
node written in Python) sends a victim labmand V a tampered record, a forged
origin, replayed frames, oversized frames, a flood, or no TLS at all, or is
simply not trusted. Each attack must be rejected, logged and counted in
labman_mesh_rejected_total{reason}, and nothing else disturbed: V stays up,
its well-behaved peer W stays connected, W's gossip keeps reaching V, and
V's gateway still serves a request through W."""
import json
import re
import signal
import socket
import ssl

import pytest

from conftest import Proc, binpath, free_port, http, wait_port
import labnet
from labnet import Identity
from meshnet import Node, wait_for

MODEL = "llama3.2:1b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4}


class Net:
    """V (gateway + provider) and W (provider), both in front of one
    labman-devllm, both trusting each other and the hostile identities h
    and h2 (a stranger is trusted by no one)."""

    def __init__(self, tmp_path, procs, v_gossip_ms=200):
        self.procs = procs
        port = free_port()
        rt = Proc([binpath("labman-devllm"), "--listen", f"127.0.0.1:{port}", "--models",
                   MODEL], str(tmp_path / "devllm.log"))
        procs.append(rt)
        wait_port(port, rt.p)
        self.h, self.h2, self.stranger = Identity(), Identity(), Identity()
        self.v, self.w = Node(tmp_path, "victim"), Node(tmp_path, "well-behaved")
        self.ep = [{"name": "rt", "port": port}]
        self.v.write(trusted=[self.w.id, self.h.id, self.h2.id], roles=("gateway", "provider"),
                     endpoints=self.ep)
        if v_gossip_ms != 200:
            with open(self.v.cfg) as f:
                text = f.read().replace("gossip_interval_ms = 200",
                                        f"gossip_interval_ms = {v_gossip_ms}")
            with open(self.v.cfg, "w") as f:
                f.write(text)
        self.write_w()
        self.v.start(procs)
        self.w.start(procs)
        self.renames = 0
        wait_for(lambda: self.w.id in self.v.connected(), what="W connected to V")
        wait_for(self.served_through_w, timeout=15, what="a request through V served by W")
        self.log_mark = len(self.v.log())

    def write_w(self):
        self.w.write(trusted=[self.v.id, self.h.id, self.h2.id], bootstrap=[self.v],
                     roles=("provider",), endpoints=self.ep)

    def served_through_w(self):
        code, hdr, body = http("POST", f"http://127.0.0.1:{self.v.gw}/v1/chat/completions",
                               json.dumps(CHAT), {"Content-Type": "application/json",
                                                  "X-Labman-Target": self.w.id[:12]})
        return code == 200 and hdr.get("X-Labman-Node") == self.w.name

    def dial(self, me=None, hello=True):
        c = labnet.dial(self.v.mesh, me or self.h, expect=self.v.id)
        if hello:
            assert c.hello() is not None, "V sent no HELLO"
        return c

    def rejected(self, node=None):
        code, _, body = http("GET", f"http://127.0.0.1:{(node or self.v).admin}/metrics")
        assert code == 200
        return {m[0].decode(): int(m[1]) for m in
                re.findall(rb'labman_mesh_rejected_total\{reason="(\w+)"\} (\d+)', body)}

    def records_of_kind(self, node, kind="other"):
        code, _, body = http("GET", f"http://127.0.0.1:{node.admin}/metrics")
        m = re.search(rb'labman_gossip_records\{kind="%s"\} (\d+)' % kind.encode(), body)
        return int(m.group(1)) if m else 0

    def logged(self, pattern, timeout=5.0):
        """Waits for a line of V's log (since the attack began) to match."""
        return wait_for(lambda: re.search(pattern, self.v.log()[self.log_mark:]),
                        timeout=timeout, what=f"V to log {pattern!r}")

    def undisturbed(self):
        """V is up, W still connected both ways, a request through V is served
        by W, and W's gossip still reaches V (W renames itself on a reload:
        V learns the new name from W's fresh peer record)."""
        assert self.v.proc.p.poll() is None, "V died"
        assert self.w.proc.p.poll() is None, "W died"
        assert self.w.id in self.v.connected() and self.v.id in self.w.connected()
        assert self.served_through_w(), "a request through V to W failed"
        self.renames += 1
        self.w.name = f"well-behaved-{self.renames}"
        self.write_w()
        self.w.proc.signal(signal.SIGHUP)
        wait_for(lambda: any(p["node_id"] == self.w.id and p["name"] == self.w.name
                             for p in self.v.peers()["peers"]),
                 what="W's new peer record at V")
        assert self.w.id in self.v.connected()


@pytest.fixture
def net(tmp_path, procs):
    return Net(tmp_path, procs)


def is_error(code):
    return lambda f: f.type == labnet.ERROR and f.json()["code"] == code


# --- a. a tampered record ------------------------------------------------------------------

def test_tampered_record_is_rejected_not_stored_not_forwarded(net):
    c = net.dial()
    before = net.rejected()
    rec = net.h.record("probe", {"note": "hello"})
    frame = net.h.frame(labnet.GOSSIP_RECORD, rec)
    at = rec.index(b'"hello"') + 1
    c.send_frame(labnet.flip(frame, at))           # "hello" -> "iello", signature unchanged
    err = c.expect(is_error("bad_signature"))
    assert err is not None, "no ERROR bad_signature for a tampered record"
    net.logged(rf"peer {net.h.id[:12]} .*: rejected: record: .*signature")
    assert net.rejected()["bad_signature"] == before["bad_signature"] + 1

    # The same record untampered is stored and forwarded to W: the tampered
    # one, sent first on the same streams, would have arrived before it.
    c.send_frame(frame)
    wait_for(lambda: net.records_of_kind(net.w) == 1, what="the valid record at W")
    assert net.records_of_kind(net.v) == 1
    held = c.records()
    assert held[(net.h.id, "probe")]["body"] == {"note": "hello"}
    assert net.rejected(net.w)["bad_signature"] == 0, "V forwarded the tampered record"

    # Five rejected frames cost the connection.
    for i in range(4):
        rec = net.h.record("probe", {"note": f"hello{i}"})
        c.send_frame(labnet.flip(net.h.frame(labnet.GOSSIP_RECORD, rec), rec.index(b"hello")))
    assert c.wait_closed(), "V kept a peer after 5 rejected frames"
    # Each refusal was answered, the last one too, before the socket went.
    errors = [f for f in c.ctl.frames if is_error("bad_signature")(f)]
    assert len(errors) == 4, c.ctl.frames
    net.logged(r"5 rejected frames: dropped")
    assert net.rejected()["bad_signature"] == before["bad_signature"] + 5
    assert net.records_of_kind(net.v) == 1
    net.undisturbed()


# --- b. forged origins -----------------------------------------------------------------------

def test_record_with_a_forged_origin_is_rejected(net):
    c = net.dial()
    before = net.rejected()
    # Claims to be W's record, signed with the hostile key.
    rec = net.h.record("probe", {"note": "from W, honest"}, origin=net.w.id)
    c.send_frame(net.h.frame(labnet.GOSSIP_RECORD, rec))
    assert c.expect(is_error("bad_signature")) is not None
    net.logged(r"rejected: record: .*signature")
    assert net.rejected()["bad_signature"] == before["bad_signature"] + 1
    # Not stored, not forwarded: a clean connection sees no such record.
    c2 = net.dial(net.h2)
    held = c2.records()
    assert (net.w.id, "peer") in held and (net.w.id, "probe") not in held
    assert net.records_of_kind(net.v) == 0 and net.records_of_kind(net.w) == 0
    assert net.rejected(net.w)["bad_signature"] == 0
    assert not c.closed, "one bad record is a strike, not a disconnect"
    net.undisturbed()


def test_hello_signed_by_another_key_than_the_tls_one_is_forged(net):
    before = net.rejected()
    # h2 signs a valid HELLO of its own; h sends it over h's TLS connection.
    c = net.dial(hello=False)
    forged = net.h2.frame(labnet.HELLO, net.h2.hello_payload())
    c.hello(forged, timeout=2)    # V says HELLO first, then judges ours
    assert c.wait_closed(), "V kept a connection whose HELLO is not its TLS key's"
    net.logged(rf"HELLO signed as {net.h2.id[:12]}, but the TLS key is {net.h.id[:12]}")
    assert net.rejected()["forged"] == before["forged"] + 1
    # A HELLO naming W but signed by h: a bad signature, the connection goes.
    c = net.dial(hello=False)
    c.hello(net.h.frame(labnet.HELLO, net.h.hello_payload(**{"from": net.w.id})), timeout=2)
    assert c.wait_closed()
    net.logged(rf"rejected: HELLO: HELLO is not signed by its from {net.w.id[:12]}")
    assert net.rejected()["bad_signature"] == before["bad_signature"] + 1
    assert h_not_connected(net)
    net.undisturbed()


def test_nothing_but_hello_before_hello(net):
    before = net.rejected()
    c = net.dial(hello=False)
    c.ctl = c.open_stream()
    c.send_frame(net.h.frame(labnet.GOSSIP_RECORD, net.h.record("probe", {"early": True})))
    assert c.expect(is_error("malformed")) is not None
    assert c.wait_closed()
    net.logged(r"rejected: GOSSIP_RECORD before HELLO")
    assert net.rejected()["malformed"] == before["malformed"] + 1
    assert net.records_of_kind(net.v) == 0
    net.undisturbed()


def h_not_connected(net):
    return net.h.id not in net.v.connected() and net.h2.id not in net.v.connected()


# --- c. replays ------------------------------------------------------------------------------

def test_replayed_hello_is_refused(net):
    before = net.rejected()
    hello = net.h.frame(labnet.HELLO, net.h.hello_payload())
    c1 = net.dial(hello=False)
    assert c1.hello(hello) is not None
    wait_for(lambda: net.h.id in net.v.connected(), what="h connected")
    c1.close()
    wait_for(lambda: net.h.id not in net.v.connected(), what="h gone")
    c2 = net.dial(hello=False)
    c2.hello(hello, timeout=2)                      # the same bytes again
    assert c2.wait_closed(), "V accepted a replayed HELLO"
    net.logged(rf"rejected: HELLO: HELLO from {net.h.id[:12]} was seen already")
    assert net.rejected()["replayed"] == before["replayed"] + 1
    assert net.h.id not in net.v.connected()
    # Once its replay key is gone, an old HELLO is refused as stale.
    old = net.h2.frame(labnet.HELLO, net.h2.hello_payload(ts=labnet.now_ms() - 301000))
    c3 = net.dial(net.h2, hello=False)
    c3.hello(old, timeout=2)
    assert c3.expect(is_error("stale")) is not None
    assert c3.wait_closed()
    net.logged(r"rejected: HELLO: ts is \d+ ms behind local time")
    assert net.rejected()["stale"] == before["stale"] + 1
    net.undisturbed()


def test_replayed_proxy_request_is_refused(net):
    c = net.dial()
    before = net.rejected()
    req = net.h.frame(labnet.PROXY_REQUEST,
                      labnet.proxy_request(net.h, net.v.id, MODEL, CHAT))
    frames, _ = c.request(req)
    kinds = [f.type for f in frames]
    assert kinds[0] == labnet.PROXY_HEAD and kinds[-1] == labnet.PROXY_END, frames
    end = frames[-1]
    assert labnet.verify(end, net.v.id) and end.json()["from"] == net.v.id
    # The same signed bytes on a second stream.
    frames, st = c.request(req)
    assert [f.type for f in frames] == [labnet.PROXY_ERROR], frames
    e = frames[0].json()
    assert e["code"] == "bad_request" and "seen already" in e["message"]
    net.logged(r"mesh request \S+ from \w+: refused: bad_request: "
               r"PROXY_REQUEST refused: .*seen already")
    assert net.rejected()["replayed"] == before["replayed"] + 1
    # A request signed by h2 on h's connection: forged.
    frames, _ = c.request(net.h2.frame(labnet.PROXY_REQUEST, labnet.proxy_request(
        net.h2, net.v.id, MODEL, CHAT)))
    assert [f.json()["code"] for f in frames] == ["untrusted"], frames
    assert net.rejected()["forged"] == before["forged"] + 1
    assert not c.closed and net.h.id in net.v.connected()
    net.undisturbed()


# --- d. a stranger in private mode -----------------------------------------------------------

def test_untrusted_peer_is_dropped_after_the_handshake(net):
    before = net.rejected()
    c = labnet.dial(net.v.mesh, net.stranger, expect=net.v.id)   # TLS itself succeeds
    st = c.open_stream()
    c.write(st, net.stranger.frame(labnet.HELLO, net.stranger.hello_payload()))
    assert c.wait_closed(), "V kept an untrusted peer"
    assert not st.frames, "V spoke to an untrusted peer"
    net.logged(rf"peer {net.stranger.id[:12]} .*: refused: not in trusted_peers "
               r"\(trust = private\)")
    assert net.rejected()["untrusted"] == before["untrusted"] + 1
    assert net.stranger.id not in {p["node_id"] for p in net.v.peers()["peers"]}
    net.undisturbed()


# --- e. oversized frames ---------------------------------------------------------------------

def test_oversized_control_frame_drops_the_connection(net):
    c = net.dial()
    before = net.rejected()
    # Only the prefix: the cap is judged from it, before any body is read.
    c.send_frame(labnet.struct.pack(">IBB", labnet.FRAME_MAX + 1, labnet.GOSSIP_DIGEST, 0))
    err = c.expect(is_error("frame_too_large"))
    assert err is not None, "no ERROR frame_too_large"
    assert c.wait_closed()
    net.logged(r"a frame over the cap on the control stream: dropped, refused for 30 s")
    assert net.rejected()["too_large"] == before["too_large"] + 1
    net.undisturbed()


def test_oversized_proxy_request_is_refused_on_its_stream(net):
    c = net.dial()
    before = net.rejected()
    st = c.open_stream()
    c.write(st, labnet.struct.pack(">IBB", labnet.FRAME_MAX_REQUEST + 1,
                                   labnet.PROXY_REQUEST, labnet.SIGNED))
    f = c.take(st)
    assert f is not None and f.type == labnet.PROXY_ERROR, f
    assert f.json()["code"] == "frame_too_large"
    net.logged(r"frame_too_large: a request over the 4 MiB cap")
    assert net.rejected()["too_large"] == before["too_large"] + 1
    # Only that stream: the connection and the next request are fine.
    frames, _ = c.request(net.h.frame(labnet.PROXY_REQUEST,
                                      labnet.proxy_request(net.h, net.v.id, MODEL, CHAT)))
    assert frames and frames[-1].type == labnet.PROXY_END, frames
    assert not c.closed
    net.undisturbed()


def test_request_typed_frame_on_the_control_stream_is_capped_at_1_mib(net):
    c = net.dial()
    before = net.rejected()
    c.send_frame(labnet.struct.pack(">IBB", labnet.FRAME_MAX + 1, labnet.PROXY_REQUEST,
                                    labnet.SIGNED))
    assert c.expect(is_error("frame_too_large")) is not None
    assert c.wait_closed()
    assert net.rejected()["too_large"] == before["too_large"] + 1
    net.undisturbed()


def test_requests_that_never_complete_are_bounded_per_connection(net):
    """Three streams each start a 4 MiB request and never finish it: past
    8 MiB arriving at once the third is refused; the others, and the
    connection, stay."""
    c = net.dial()
    part = labnet.struct.pack(">IBB", labnet.FRAME_MAX_REQUEST - 16, labnet.PROXY_REQUEST,
                              labnet.SIGNED) + b"{" + b" " * (3500 << 10)
    streams = [c.open_stream() for _ in range(3)]
    for st in streams[:2]:
        assert c.write(st, part)
    c.write(streams[2], part)  # refused along the way: the window may not open fully
    f = c.take(streams[2])
    assert f is not None and f.type == labnet.PROXY_ERROR, f
    assert f.json()["code"] == "overloaded" and f.json()["retryable"] is True
    net.logged(r"over 8 MiB of requests arriving at once on this connection")
    assert not c.closed
    for st in streams[:2]:
        c.reset_stream(st)
    net.undisturbed()


# --- f. a flood ------------------------------------------------------------------------------

def test_control_frame_flood_disconnects_only_the_flooder(net):
    c = net.dial()
    before = net.rejected()
    ping = labnet.encode(labnet.PING, b'{"nonce":1}')
    burst = 8000                 # over FRAME_BURST (5000) at once; 136 KB < one window
    c.send_frame(ping * burst)
    assert c.wait_closed(), "V kept a flooding peer"
    net.logged(r"more than 500 frames/s: dropped, refused for 30 s")
    assert net.rejected()["flood"] == before["flood"] + 1
    # It cannot come straight back: refused right after the handshake.
    again = net.dial(hello=False)
    assert again.wait_closed(), "V took the flooder straight back"
    net.logged(r"refused: misbehaved, kept out for \d+ s more")
    assert net.rejected()["banned"] == before.get("banned", 0) + 1
    net.undisturbed()


def test_peer_that_sends_but_never_reads_is_dropped(tmp_path, procs):
    # V's own digests would write to the peer and notice the queue; with
    # them a minute apart, only the input side can catch a peer that sends
    # yamux Pings (each answered) and reads nothing.
    net = Net(tmp_path, procs, v_gossip_ms=60000)
    c = net.dial()
    before = net.rejected()
    ping = c._header(labnet.Y_PING, labnet.SYN, 0, 7)
    chunk = ping * (1 << 16)                        # 768 KiB of Pings
    for _ in range(64):                             # 48 MiB at most, 16 MiB answered is enough
        if not c.send_raw(chunk):
            break
    net.logged(r"not reading: over 16 MiB queued for it", timeout=20)
    assert net.rejected()["flood"] == before["flood"] + 1
    c.close()
    net.undisturbed()


# --- g. not labnet at all --------------------------------------------------------------------

def test_not_tls_and_wrong_alpn_fail_the_handshake(net):
    before = net.rejected()
    junk = ((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", r"sent a plain HTTP request, not TLS"),
            (b"\x00" * 64 + b"SSH-2.0-x\r\n", r"does not speak TLS"))
    for data, line in junk:
        with socket.create_connection(("127.0.0.1", net.v.mesh), timeout=5) as s:
            s.sendall(data)
            s.settimeout(5)
            try:
                assert s.recv(100)[:1] in (b"", b"\x15")   # closed, at most an alert
            except ConnectionResetError:
                pass
        net.logged(rf"tls: handshake failed: the peer {line}")
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        labnet.dial(net.v.mesh, net.h, alpn=("h2", "http/1.1"))
    net.logged(r'tls: handshake failed: the peer offered ALPN "h2", "http/1.1", not "labnet/1"')
    # TLS 1.3 lets the client finish first: without a certificate it learns
    # of the refusal on its first read.
    try:
        c = labnet.dial(net.v.mesh, net.h, cert=False)
        c.open_stream()
        assert c.wait_closed()
    except (ssl.SSLError, OSError):
        pass
    net.logged(r"tls: handshake failed: the peer presented no certificate")
    assert net.rejected()["handshake"] == before["handshake"] + 4
    net.undisturbed()
