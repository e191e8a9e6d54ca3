"""The mesh between real labmand processes on loopback: TLS 1.3 with node
keys, yamux, HELLO, trust at the door, gossip of peer and capabilities
records, peers learned from gossip, the peer store across a restart."""
import json
import os
import re
import signal
import subprocess
import time

from conftest import binpath, http
from meshnet import Node, wait_for


def three(tmp_path):
    a, b, c = Node(tmp_path, "lab-a"), Node(tmp_path, "lab-b"), Node(tmp_path, "lab-c")
    ids = [a.id, b.id, c.id]
    # A and C only know B; they learn each other through gossip.
    a.write(trusted=[x for x in ids if x != a.id], bootstrap=[b])
    b.write(trusted=[x for x in ids if x != b.id])
    c.write(trusted=[x for x in ids if x != c.id], bootstrap=[b])
    return a, b, c


def test_three_nodes_meet_through_gossip(tmp_path, procs):
    a, b, c = three(tmp_path)
    b.start(procs)
    a.start(procs)
    c.start(procs)
    wait_for(lambda: a.connected() == {b.id, c.id}, what="A connected to B and C")
    wait_for(lambda: c.connected() == {a.id, b.id}, what="C connected to A and B")
    wait_for(lambda: b.connected() == {a.id, c.id}, what="B connected to A and C")
    peers = {p["node_id"]: p for p in a.peers()["peers"]}
    assert peers[c.id]["name"] == "lab-c"
    assert peers[c.id]["roles"] == ["provider"]
    assert peers[c.id]["path"] == "direct"
    assert peers[c.id]["trust"] == "trusted"
    assert peers[c.id]["addrs"] == [f"127.0.0.1:{c.mesh}"]
    # Exactly one connection per pair, whoever dialed first.
    for n in (a, b, c):
        assert len([p for p in n.peers()["peers"] if p["connected"]]) == 2
    st = json.loads(http("GET", f"http://127.0.0.1:{a.admin}/admin/v1/status")[2])
    assert st["mesh"]["enabled"] and st["mesh"]["peers_connected"] == 2
    code, _, metrics = http("GET", f"http://127.0.0.1:{a.admin}/metrics")
    assert b'labman_mesh_peers{state="connected"} 2' in metrics
    assert re.search(rb'labman_gossip_records\{kind="peer"\} 3', metrics), metrics
    # The operator's view.
    out = subprocess.run([binpath("labman"), "peers", "--admin", f"127.0.0.1:{a.admin}"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ID", "ROLES", "PATH"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:-1]}
    assert set(rows) == {"lab-b", "lab-c"}
    assert rows["lab-c"][1] == c.id[:12] and rows["lab-c"][2] == "provider"
    assert rows["lab-c"][3] == "direct" and rows["lab-c"][-1] == "trusted"
    assert lines[-1] == "2 connected, 2 known"
    out = subprocess.run([binpath("labman"), "peers", "--json", "--admin",
                          f"127.0.0.1:{a.admin}"], capture_output=True, text=True, timeout=10)
    assert json.loads(out.stdout)["node_id"] == a.id


def test_dialing_the_wrong_key_fails_clearly(tmp_path, procs):
    a, b = Node(tmp_path, "lab-a"), Node(tmp_path, "lab-b")
    impostor = "ab" * 32
    # A dials B's address expecting another node's key.
    a.write(trusted=[b.id, impostor])
    text = open(a.cfg).read().replace("bootstrap = []",
                                      f'bootstrap = ["{impostor}@127.0.0.1:{b.mesh}"]')
    open(a.cfg, "w").write(text)
    b.write(trusted=[a.id])
    b.start(procs)
    a.start(procs)
    wait_for(lambda: re.search(r"but the peer's key is|presented key|different key",
                               a.log()), what="a log line about the key")
    assert a.connected() == set()


def test_untrusted_peer_is_refused_in_private_mode(tmp_path, procs):
    a, b = Node(tmp_path, "lab-a"), Node(tmp_path, "lab-b")
    a.write(trusted=[b.id], bootstrap=[b])
    b.write(trusted=["cd" * 32])  # B does not trust A
    b.start(procs)
    a.start(procs)
    wait_for(lambda: "refused" in b.log() and "trusted_peers" in b.log(),
             what="B refusing A")
    assert b.connected() == set()
    assert a.connected() == set()
    code, _, metrics = http("GET", f"http://127.0.0.1:{b.admin}/metrics")
    assert re.search(rb'labman_mesh_rejected_total\{reason="untrusted"\} [1-9]', metrics)


def test_denied_on_reload_disconnects_and_drops_records(tmp_path, procs):
    a, b, c = three(tmp_path)
    for n in (b, a, c):
        n.start(procs)
    wait_for(lambda: a.connected() == {b.id, c.id}, what="A connected to B and C")
    # A now denies C: C is dropped and its records with it.
    a.write(trusted=[b.id], denied=[c.id], bootstrap=[b])
    a.proc.signal(signal.SIGHUP)
    wait_for(lambda: a.connected() == {b.id}, what="A dropping C")
    time.sleep(1.0)  # gossip rounds come and go: C stays out
    assert a.connected() == {b.id}
    assert c.id not in {p["node_id"] for p in a.peers()["peers"] if p["models"] or p["connected"]}
    code, _, metrics = http("GET", f"http://127.0.0.1:{a.admin}/metrics")
    assert re.search(rb'labman_gossip_records\{kind="peer"\} 2', metrics), metrics


def test_restart_rejoins_without_bootstrap(tmp_path, procs):
    a, b = Node(tmp_path, "lab-a"), Node(tmp_path, "lab-b")
    a.write(trusted=[b.id], bootstrap=[b])
    b.write(trusted=[a.id])
    b.start(procs)
    a.start(procs)
    wait_for(lambda: a.connected() == {b.id}, what="A connected to B")
    a.proc.signal(signal.SIGTERM)
    assert a.proc.wait() == 0
    a.write(trusted=[b.id])  # no bootstrap now: the peer store remembers B
    a.start(procs)
    wait_for(lambda: a.connected() == {b.id}, what="A back with B")


def test_no_mesh_port_without_peers(tmp_path, procs):
    a = Node(tmp_path, "lab-a")
    a.write()
    a.start(procs)
    st = json.loads(http("GET", f"http://127.0.0.1:{a.admin}/admin/v1/status")[2])
    assert st["mesh"]["enabled"] is False and st["mesh"]["trusted_peers"] == 0
    import socket
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", a.mesh)) != 0
