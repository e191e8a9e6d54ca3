"""Mesh test nodes: labmand processes with their own identity, data dir,
admin, gateway and mesh ports on loopback, written as SPEC §3 TOML."""
import json
import os
import random
import socket
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import Proc, binpath, free_port, http, wait_port


def make_identity(data_dir):
    """Writes data_dir/identity.key as labmand would; returns the node id."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    seed = os.urandom(32)
    path = os.path.join(data_dir, "identity.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"labman-identity-v1\n{seed.hex()}\n")
    pk = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pk.hex()


def quiet_ports(n):
    """n free loopback ports below the kernel's ephemeral range: with many
    nodes dialing each other, an outgoing connection of a node already up
    could otherwise take a port that free_port() chose for a node not
    started yet."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    rng = random.SystemRandom()
    socks, ports = [], set()
    try:
        while len(ports) < n:
            port = rng.randrange(10000, low)
            if port in ports:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.add(port)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Node:
    def __init__(self, tmp_path, name, host="127.0.0.1"):
        self.name = name
        self.host = host  # the mesh listens, advertises and is dialed here
        self.dir = tmp_path / name
        self.data = str(self.dir / "data")
        self.id = make_identity(self.data)
        self.admin = free_port()
        self.mesh = free_port()
        self.gw = free_port()
        self.cfg = str(self.dir / "labman.toml")
        self.proc = None
        self.has_gw = False

    def write(self, trusted=(), bootstrap=(), trust="private", denied=(), extra="",
              roles=("provider",), endpoints=(), route="prefer_local", advertise=None,
              listen_host=None, gossip_interval_ms=200):
        def arr(v):
            return "[" + ", ".join(f'"{x}"' for x in v) + "]"
        eps = "".join(f'[[endpoints]]\nname = "{e["name"]}"\nurl = "http://127.0.0.1:{e["port"]}"\n'
                      f'kind = "{e.get("kind", "openai")}"\n'
                      f'max_concurrent = {e.get("max_concurrent", 8)}\n' for e in endpoints)
        gw = (f'[gateway]\nlisten = "127.0.0.1:{self.gw}"\nroute = "{route}"\n'
              if "gateway" in roles else "")
        self.has_gw = "gateway" in roles
        listen_host = listen_host or self.host
        adv = [f"{self.host}:{self.mesh}"] if advertise is None else advertise
        with open(self.cfg, "w") as f:
            f.write(
                f'[node]\nname = "{self.name}"\ndata_dir = "{self.data}"\n'
                f'roles = {arr(roles)}\n{gw}'
                f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n'
                f'[discovery]\nscan_local = false\n{eps}'
                f'[mesh]\nlisten = "{listen_host}:{self.mesh}"\n'
                f'advertise = {arr(adv)}\n'
                f'trust = "{trust}"\ntrusted_peers = {arr(trusted)}\n'
                f'denied_peers = {arr(denied)}\n'
                f'bootstrap = {arr(b.boot() for b in bootstrap)}\n'
                + (f'gossip_interval_ms = {gossip_interval_ms}\n'
                   if gossip_interval_ms is not None else '')  # None: the default
                + extra)

    def boot(self):
        return f"{self.id}@{self.host}:{self.mesh}"

    def start(self, procs, env=None):
        self.proc = Proc([binpath("labmand"), "-c", self.cfg],
                         str(self.dir / f"labmand-{time.monotonic_ns()}.log"),
                         env={**os.environ, **env} if env else None)
        procs.append(self.proc)
        wait_port(self.admin, self.proc.p)
        if self.has_gw:
            wait_port(self.gw, self.proc.p)
        return self

    def peers(self):
        code, _, body = http("GET", f"http://127.0.0.1:{self.admin}/admin/v1/peers")
        assert code == 200, body
        return json.loads(body)

    def connected(self):
        return {p["node_id"] for p in self.peers()["peers"] if p["connected"]}

    def log(self):
        return self.proc.output()


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
