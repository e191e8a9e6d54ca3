"""The isolation proof: two homelabs in their own network namespaces that
reach only a 'public' namespace, never each other. A request made in lab A
is served by lab B through a relay in the public namespace.

    lab A (ns <p>-a)              public (ns <p>-pub)             lab B (ns <p>-b)
    gw 10.254.1.2  --veth--  10.254.1.1 | relay 10.254.0.1 |  10.254.2.1  --veth--  10.254.2.2 prov
                                        (ip_forward = 0)                            + devllm

Each lab has its own link to pub and one route, to the relay's public
address; pub has an address on each link but forwards nothing, so A and B
have no path to each other (checked below: a TCP connect fails both ways).
G advertises its lab-A address, so P learns where G is but cannot reach it
(a dial there fails: "cannot connect: Network is unreachable" in P's log); P
advertises nothing, so G cannot even try. Both keep a connection to R only,
and the only way P serves G is a circuit spliced by R, with TLS end to end.

Needs root and iproute2 (`ip netns`, veth): CI runs as root. Without them the
test fails rather than skips, so a CI that lost them is noticed. Namespaces
are named lmt<pid>-{a,b,pub}; they are deleted when the test ends, fails or
is interrupted (fixture finalizer, and atexit as a backstop), and leftovers of
earlier runs whose pid is gone are deleted first. The veths live only inside
the namespaces (created there, never in the host's), so they go with them.
"""
import atexit
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import Proc, binpath, free_port
from meshnet import Node, wait_for

MODEL = "llama3.2:1b"
PREFIX = "lmt"
PUB_IP = "10.254.0.1"                      # the relay's public address
A_IP, A_GW = "10.254.1.2", "10.254.1.1"    # lab A, and pub's end of A's link
B_IP, B_GW = "10.254.2.2", "10.254.2.1"    # lab B, and pub's end of B's link

# Runs inside a namespace (ip netns exec NS python3 -S -c HELPER op):
#   connect host port timeout  -> "ok" or "<errno name> <message>"
#   http (JSON request on stdin) -> JSON {status, headers, body (base64)}
HELPER = r"""
import base64, errno, json, socket, sys, urllib.error, urllib.request
op = sys.argv[1]
if op == "connect":
    try:
        socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=float(sys.argv[4])).close()
        print("ok")
    except socket.timeout:
        print("ETIMEDOUT timed out")
    except OSError as e:
        print(errno.errorcode.get(e.errno, "?"), e)
else:
    q = json.load(sys.stdin)
    body = q["body"].encode() if q["body"] is not None else None
    req = urllib.request.Request(q["url"], data=body, method=q["method"], headers=q["headers"])
    try:
        with urllib.request.urlopen(req, timeout=q["timeout"]) as r:
            st, hd, b = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        st, hd, b = e.code, dict(e.headers), e.read()
    except OSError as e:
        st, hd, b = 0, {}, str(e).encode()
    json.dump({"status": st, "headers": hd, "body": base64.b64encode(b).decode()}, sys.stdout)
"""


def sh(*args, check=True, timeout=10):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def netns_list():
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def netns_delete(ns):
    """Kills what still runs in ns (only ever this test's processes), then
    deletes it, which destroys the veth ends inside it."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def delete_leftovers():
    """Namespaces of earlier runs of this test whose pytest is gone."""
    for ns in netns_list():
        m = re.fullmatch(rf"{PREFIX}(\d+)-(a|b|pub)", ns)
        if not m:
            continue
        pid = int(m.group(1))
        alive = pid != os.getpid()
        if alive:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                pass
        if not alive:
            netns_delete(ns)


class Labs:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        base = f"{PREFIX}{os.getpid()}"
        self.a, self.b, self.pub = f"{base}-a", f"{base}-b", f"{base}-pub"
        self.procs = []
        self.made = []

    def create(self):
        for ns in (self.a, self.b, self.pub):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # pub forwards nothing: whatever a lab sends to the other lab's
        # addresses is dropped there (IPv4 settings are inherited from the host).
        sh("ip", "netns", "exec", self.pub, "sh", "-c",
           "echo 0 > /proc/sys/net/ipv4/ip_forward && echo 0 > /proc/sys/net/ipv4/conf/all/forwarding")
        sh("ip", "-n", self.pub, "addr", "add", f"{PUB_IP}/32", "dev", "lo")
        for lab, ip, gw, side in ((self.a, A_IP, A_GW, "lab-a"), (self.b, B_IP, B_GW, "lab-b")):
            # Created inside pub, its peer moved straight into the lab: no
            # interface ever appears in the host's namespace.
            sh("ip", "-n", self.pub, "link", "add", side, "type", "veth",
               "peer", "name", "wan", "netns", lab)
            sh("ip", "-n", self.pub, "addr", "add", f"{gw}/24", "dev", side)
            sh("ip", "-n", self.pub, "link", "set", side, "up")
            sh("ip", "-n", lab, "addr", "add", f"{ip}/24", "dev", "wan")
            sh("ip", "-n", lab, "link", "set", "wan", "up")
            sh("ip", "-n", lab, "route", "add", f"{PUB_IP}/32", "via", gw)

    def destroy(self):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:
                pass
        self.procs = []
        for ns in self.made:
            netns_delete(ns)
        self.made = []

    # --- inside a namespace -----------------------------------------------------------------

    def spawn(self, ns, args, log):
        p = Proc(["ip", "netns", "exec", ns, *args], str(self.tmp / log))
        self.procs.append(p)
        return p

    def helper(self, ns, *args, stdin=None, timeout=15):
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-S", "-c", HELPER,
                            *map(str, args)], input=stdin, capture_output=True, text=True,
                           timeout=timeout)
        assert r.returncode == 0, f"helper in {ns} failed: {r.stderr}"
        return r.stdout.strip()

    def connect(self, ns, host, port, timeout=1.0):
        return self.helper(ns, "connect", host, port, timeout)

    def http(self, ns, method, url, body=None, headers=None, timeout=10.0):
        out = self.helper(ns, "http", stdin=json.dumps(
            {"method": method, "url": url, "body": body, "headers": headers or {},
             "timeout": timeout}), timeout=timeout + 5)
        r = json.loads(out)
        return r["status"], r["headers"], base64.b64decode(r["body"])

    def post(self, ns, port, path, obj):
        return self.http(ns, "POST", f"http://127.0.0.1:{port}{path}", json.dumps(obj),
                         {"Content-Type": "application/json"})

    def wait_port(self, ns, host, port, proc, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            if proc.p.poll() is not None:
                raise AssertionError(f"{proc.args} exited with {proc.p.returncode}:\n"
                                     f"{proc.output()[-2000:]}")
            if self.connect(ns, host, port, 0.5) == "ok":
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {host}:{port} in {ns}")
            time.sleep(0.05)


@pytest.fixture
def labs(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("test_mesh_netns needs root (ip netns, veth); CI runs it as root")
    if not shutil.which("ip"):
        pytest.fail("test_mesh_netns needs iproute2's `ip` (apt-get install iproute2)")
    delete_leftovers()
    net = Labs(tmp_path)
    atexit.register(net.destroy)  # the finalizer below normally ran first
    try:
        net.create()
        yield net
    finally:
        net.destroy()
        atexit.unregister(net.destroy)
        left = [ns for ns in netns_list() if ns in (net.a, net.b, net.pub)]
        assert not left, f"namespaces left behind: {left}"


class NsNode(Node):
    """A meshnet Node whose labmand runs in a namespace; its admin and gateway
    ports are 127.0.0.1 inside it."""

    def __init__(self, labs, ns, tmp_path, name, host):
        super().__init__(tmp_path, name, host=host)
        self.labs, self.ns = labs, ns

    def start(self, procs=None):
        self.proc = self.labs.spawn(self.ns, [binpath("labmand"), "-c", self.cfg],
                                    f"labmand-{self.name}.log")
        self.labs.wait_port(self.ns, "127.0.0.1", self.admin, self.proc)
        if self.has_gw:
            self.labs.wait_port(self.ns, "127.0.0.1", self.gw, self.proc)
        return self

    def get(self, path):
        return self.labs.http(self.ns, "GET", f"http://127.0.0.1:{self.admin}{path}")

    def peers(self):
        code, _, body = self.get("/admin/v1/peers")
        assert code == 200, body
        return json.loads(body)


def chat(**kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello from lab a"}]}
    body.update(kw)
    return body


def strip_ids(o):
    if isinstance(o, dict):
        o = dict(o)
        o.pop("id", None)
        o.pop("created", None)
    return o


def sse(body):
    text = body.decode()
    assert text.endswith("\n\n"), text[-300:]
    return [e[len("data: "):] for e in text.split("\n\n") if e]


def events(body):
    return [e if e == "[DONE]" else strip_ids(json.loads(e)) for e in sse(body)]


def test_lab_a_served_by_lab_b_through_a_public_relay(labs, tmp_path):
    r = NsNode(labs, labs.pub, tmp_path, "relay", PUB_IP)
    g = NsNode(labs, labs.a, tmp_path, "gw", A_IP)
    p = NsNode(labs, labs.b, tmp_path, "prov", B_IP)

    # Lab B's runtime, on B's loopback.
    port = free_port()
    rt = labs.spawn(labs.b, [binpath("labman-devllm"), "--flavor", "openai", "--listen",
                             f"127.0.0.1:{port}", "--models", MODEL], "devllm.log")
    labs.wait_port(labs.b, "127.0.0.1", port, rt)

    r.write(trusted=[g.id, p.id], roles=("relay",))                 # advertises PUB_IP
    g.write(trusted=[r.id, p.id], bootstrap=[r], roles=("gateway",))  # advertises A_IP
    p.write(trusted=[r.id, g.id], bootstrap=[r], roles=("provider",), advertise=[],
            endpoints=[{"name": "rt", "port": port}])
    for n in (r, g, p):
        n.start()

    # The isolation: each lab reaches the relay; neither reaches the other,
    # though both mesh ports are open (each connects to its own).
    assert labs.connect(labs.a, PUB_IP, r.mesh) == "ok"
    assert labs.connect(labs.b, PUB_IP, r.mesh) == "ok"
    assert labs.connect(labs.b, B_IP, p.mesh) == "ok"
    assert labs.connect(labs.a, A_IP, g.mesh) == "ok"
    for ns, host, prt in ((labs.a, B_IP, p.mesh), (labs.b, A_IP, g.mesh)):
        got = labs.connect(ns, host, prt)
        assert got != "ok" and got.split()[0] in ("ENETUNREACH", "EHOSTUNREACH", "ETIMEDOUT"), \
            f"{ns} -> {host}:{prt}: {got}"

    # G reaches P only through R.
    wait_for(lambda: p.id in g.connected(), timeout=15, what="G reaching P through R")
    peers = {x["node_id"]: x for x in g.peers()["peers"]}
    assert peers[p.id]["path"] == f"relay via {r.name}", peers[p.id]
    assert peers[r.id]["path"] == "direct", peers[r.id]

    def models_at_g():
        st, _, b = labs.http(labs.a, "GET", f"http://127.0.0.1:{g.gw}/v1/models")
        return st == 200 and any(n.get("node_id") == p.id for m in json.loads(b)["data"]
                                 for n in m.get("nodes", []))
    wait_for(models_at_g, timeout=10, what="P's model at G")

    # The requests are made in lab A, to G's gateway on A's loopback; the
    # reference answers come from P's runtime, asked directly in lab B.
    for body in (chat(temperature=0.5, seed=3), chat(stream=True),
                 chat(stream=True, stream_options={"include_usage": True})):
        st, hdr, via = labs.post(labs.a, g.gw, "/v1/chat/completions", body)
        assert st == 200, via
        assert hdr["X-Labman-Node"] == p.name and hdr["X-Labman-Route"] == "relay", hdr
        dst, _, direct = labs.post(labs.b, port, "/v1/chat/completions", body)
        assert dst == 200, direct
        if body.get("stream"):
            assert hdr["Content-Type"].startswith("text/event-stream")
            assert events(via) == events(direct)
        else:
            assert strip_ids(json.loads(via)) == strip_ids(json.loads(direct))

    # R spliced the circuit (and only spliced: TLS runs end to end inside).
    st, _, m = r.get("/metrics")
    assert st == 200 and re.search(rb"labman_mesh_circuits_total [1-9]", m), m
    assert "relaying" in r.log()
