#!/usr/bin/python3
"""The gossip benchmark's driver (run by bench/gossip.sh; Python stdlib only).

Starts N labmand nodes on loopback (trust "private", every id trusted), each
bootstrapping to one or two others (a ring plus chords: no star, no full
list), waits until every node has >= 2 connected peers (formed) and then
until the mesh stops changing (steady: every node holds min(N - 1,
max_peers) connections or more and no degree moved for STABLE_S), and
measures:

  idle      mesh bytes per node per second over IDLE_S with nothing new
            (labman_mesh_peer_bytes_total, summed per node, in and out),
            and the CPU all nodes used meanwhile (/proc/PID/stat)
  rounds    ROUNDS times: a random node reloads (SIGHUP) with a new
            [node] name, which republishes its `peer` record with a new
            seq. A node has it when it logs "peer ID is now named NEW (was
            OLD)" (--observe log, the default: the line's own time stamp,
            against the wall clock read just before the signal; nothing is
            asked of the nodes meanwhile), or when its GET /admin/v1/peers
            shows the new name (--observe api: every POLL_MS per node; at
            100 nodes each answer costs the node ~3 ms of CPU, so the
            polling slows what it measures). Convergence = the last node's
            arrival; a round ends after ROUND_TIMEOUT_S. Mesh bytes per
            node per second over the rounds are reported too.

Prints a table and one JSON line (the last line of stdout). Exit status: 0
all rounds converged within TARGET_MS, 10 a round missed it, 2 the mesh
could not be set up (the message says why). Every labmand pid is written to
WORKDIR/pids as it starts (bench/gossip.sh's trap stops them if this script
is killed); this script stops them itself on any exit."""
import argparse
import calendar
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time


def log(msg):
    print(f"gossip.sh: {msg}", file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


def free_ports(n):
    """n distinct free loopback ports below the kernel's ephemeral range
    (ip_local_port_range), so that the outgoing connections of the nodes
    already running cannot take a port before its node binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    floor = 10000 if low > 10000 + 4 * n else 1024
    rng = random.SystemRandom()
    socks, ports = [], set()
    try:
        while len(ports) < n:
            port = rng.randrange(floor, low)
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


def get(port, path, timeout=10.0, tries=3):
    """GET on a node's admin port; retried (a node busy with handshakes on a
    loaded machine may answer late)."""
    for k in range(tries):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.status == 200:
                return body
            err = OSError(f"GET {path} on :{port}: HTTP {r.status}")
        except (OSError, http.client.HTTPException) as e:
            err = e
        finally:
            c.close()
        time.sleep(0.2 * (k + 1))
    raise SetupError(f"GET {path} on :{port}: {err}")


def pct(sorted_v, q):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_v:
        return None
    i = max(0, min(len(sorted_v) - 1, int(round(q / 100.0 * len(sorted_v) + 0.5)) - 1))
    return sorted_v[i]


class Node:
    def __init__(self, i, work, admin, mesh):
        self.i = i
        self.name = f"g{i:03d}"
        self.dir = os.path.join(work, self.name)
        self.data = os.path.join(self.dir, "data")
        self.cfg = os.path.join(self.dir, "labman.toml")
        self.logpath = os.path.join(self.dir, "labmand.log")
        self.admin = admin
        self.mesh = mesh
        self.id = None
        self.proc = None

    def make_identity(self, labman):
        """A random Ed25519 seed in labmand's key file format; the node id
        from `labman identity` (no crypto library needed here)."""
        os.makedirs(self.data, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.data, "identity.key"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"labman-identity-v1\n{os.urandom(32).hex()}\n")
        self.write_config([], [], None)
        out = subprocess.run([labman, "identity", "-c", self.cfg], capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0 or not re.fullmatch(r"[0-9a-f]{64}\s*", out.stdout):
            raise SetupError(f"labman identity: {out.stdout}{out.stderr}".strip())
        self.id = out.stdout.strip()

    def boot(self):
        return f"{self.id}@127.0.0.1:{self.mesh}"

    def write_config(self, trusted, bootstrap, interval, name=None):
        def arr(v):
            return "[" + ", ".join(f'"{x}"' for x in v) + "]"
        with open(self.cfg, "w") as f:
            f.write(f'[node]\nname = "{name or self.name}"\ndata_dir = "{self.data}"\n'
                    f'roles = ["provider"]\n'
                    f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n'
                    f'[discovery]\nscan_local = false\n'
                    f'[mesh]\nlisten = "127.0.0.1:{self.mesh}"\n'
                    f'advertise = ["127.0.0.1:{self.mesh}"]\n'
                    f'trust = "private"\ntrusted_peers = {arr(trusted)}\n'
                    f'bootstrap = {arr(bootstrap)}\n'
                    + (f"gossip_interval_ms = {interval}\n" if interval else ""))


class Mesh:
    def __init__(self, args):
        self.a = args
        self.nodes = []
        os.makedirs(args.workdir, exist_ok=True)
        self.pidfile = open(os.path.join(args.workdir, "pids"), "a")

    # ---- setup ----
    def create(self):
        a = self.a
        ports = free_ports(2 * a.nodes)
        self.nodes = [Node(i, a.workdir, ports[2 * i], ports[2 * i + 1]) for i in range(a.nodes)]
        for n in self.nodes:
            n.make_identity(a.labman)
        ids = [n.id for n in self.nodes]
        rng = random.Random(a.seed)
        n_ = len(self.nodes)
        self.edges = 0
        for n in self.nodes:
            # A ring (i dials i+1), and every third node a chord to a node
            # about a third of the ring away: 1 or 2 bootstrap entries each.
            boot = [self.nodes[(n.i + 1) % n_]]
            if n.i % 3 == 0 and n_ > 4:
                boot.append(self.nodes[(n.i + n_ // 3 + rng.randrange(-2, 3)) % n_])
            boot = [b for k, b in enumerate(boot) if b is not n and b not in boot[:k]]
            self.edges += len(boot)
            n.write_config([x for x in ids if x != n.id], [b.boot() for b in boot],
                           a.gossip_interval_ms)

    def start(self):
        for n in self.nodes:
            logf = open(n.logpath, "ab")
            n.proc = subprocess.Popen([self.a.labmand, "-c", n.cfg], stdout=logf,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            logf.close()
            self.pidfile.write(f"{n.proc.pid}\n")
            self.pidfile.flush()
        deadline = time.monotonic() + 30
        for n in self.nodes:
            while True:
                if n.proc.poll() is not None:
                    raise SetupError(f"{n.name} exited ({n.proc.returncode}) at start; "
                                     f"see {n.logpath}")
                try:
                    socket.create_connection(("127.0.0.1", n.admin), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SetupError(f"{n.name}: nothing listens on :{n.admin}")
                    time.sleep(0.05)

    def stop(self):
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for n in self.nodes:
            if not n.proc:
                continue
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()

    def alive(self):
        dead = [n.name for n in self.nodes if n.proc.poll() is not None]
        if dead:
            raise SetupError(f"labmand exited: {', '.join(dead)} (see their labmand.log)")

    def degrees(self):
        out = []
        for n in self.nodes:
            st = json.loads(get(n.admin, "/admin/v1/status"))
            out.append(st["mesh"]["peers_connected"])
        return out

    def wait_steady(self):
        """Formed: every node with >= 2 connected peers. Steady: every node
        with >= min(N-1, max_peers) and no degree changed for STABLE_S."""
        a = self.a
        t0 = time.monotonic()
        deadline = t0 + a.form_timeout_s
        want = min(len(self.nodes) - 1, a.max_peers)
        formed = None
        last, since = None, None
        while True:
            self.alive()
            d = self.degrees()
            now = time.monotonic()
            if formed is None and min(d) >= 2:
                formed = now - t0
                log(f"mesh formed after {formed:.1f} s (every node has >= 2 peers)")
            if formed is not None and min(d) >= want:
                if d != last:
                    last, since = d, now
                elif now - since >= a.stable_s:
                    steady = since - t0
                    log(f"mesh steady after {steady:.1f} s: degree {min(d)}..{max(d)} "
                        f"(median {statistics.median(d):g})")
                    return formed, steady, d
            if now > deadline:
                raise SetupError(
                    f"the mesh did not settle within {a.form_timeout_s} s: degrees "
                    f"{min(d)}..{max(d)}, {sum(1 for x in d if x < want)} node(s) under {want}")
            time.sleep(1.0)

    # ---- measurements ----
    def sample(self):
        """Per node: (time, bytes in, bytes out, cpu seconds)."""
        out = []
        tick = os.sysconf("SC_CLK_TCK")
        for n in self.nodes:
            body = get(n.admin, "/metrics").decode()
            t = time.monotonic()
            bi = bo = 0
            for m in re.finditer(r'^labman_mesh_peer_bytes_total\{peer="([0-9a-f]+)",'
                                 r'dir="(in|out)"\} (\d+)$', body, re.M):
                if m.group(2) == "in":
                    bi += int(m.group(3))
                else:
                    bo += int(m.group(3))
            with open(f"/proc/{n.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            out.append((t, bi, bo, cpu))
        return out

    @staticmethod
    def rates(s0, s1):
        """Per node bytes/s in and out; CPU of all nodes as % of one core."""
        rin, rout = [], []
        cpu = 0.0
        span = 0.0
        for (t0, i0, o0, c0), (t1, i1, o1, c1) in zip(s0, s1):
            dt = t1 - t0
            rin.append(max(0, i1 - i0) / dt)
            rout.append(max(0, o1 - o0) / dt)
            cpu += c1 - c0
            span = max(span, dt)
        return rin, rout, 100.0 * cpu / span

    def round(self, r, origin):
        """One new record at origin: it reloads with a new name. Returns
        ({node name: ms from the signal to its arrival there}, how many
        other nodes there are)."""
        a = self.a
        new = f"{origin.name}-r{r}"
        others = [n for n in self.nodes if n is not origin]
        text = open(origin.cfg).read()
        text = re.sub(r'(?m)^name = ".*"$', f'name = "{new}"', text, count=1)
        with open(origin.cfg, "w") as f:
            f.write(text)
        if a.observe == "api":
            return self.round_api(origin, new, others), len(others)
        return self.round_log(origin, new, others), len(others)

    def round_log(self, origin, new, others):
        """Arrival = the time stamp of the node's log line "peer ID is now
        named NEW (was OLD)", written when it learns the record (labmand's
        wall clock in ms; the signal's time is taken from the same clock).
        Nothing is asked of the nodes meanwhile: the logs are read every
        50 ms from where they ended before the signal."""
        a = self.a
        pat = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z \S+ +mesh: peer "
                         + origin.id[:12] + r" is now named " + re.escape(new) + r" \(was ",
                         re.M)
        offs = {n.name: os.path.getsize(n.logpath) for n in others}
        rest = {n.name: "" for n in others}
        pending = {n.name: n for n in others}
        arrived = {}
        t0 = time.time()
        origin.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + a.round_timeout_s
        while True:
            for name, n in list(pending.items()):
                with open(n.logpath, "rb") as f:
                    f.seek(offs[name])
                    chunk = f.read()
                offs[name] += len(chunk)
                text = rest[name] + chunk.decode(errors="replace")
                cut = text.rfind("\n") + 1
                rest[name] = text[cut:]
                m = pat.search(text[:cut])
                if m:
                    ts = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
                    arrived[name] = (ts + int(m.group(2)) / 1000.0 - t0) * 1000.0
                    del pending[name]
            if not pending or time.monotonic() > deadline:
                return arrived
            time.sleep(0.05)

    def round_api(self, origin, new, others):
        """Arrival = the first GET /admin/v1/peers (every POLL_MS, one
        keep-alive connection and thread per node) that shows the new name.
        With many nodes this polling is far from free (the answer lists every
        peer): it slows what it measures."""
        a = self.a
        needle = f'"name":"{new}"'.encode()  # the admin API writes compact JSON
        arrived = {}
        go = threading.Event()
        state = {"t0": 0.0}
        timeout = a.round_timeout_s

        def poll(n):
            conn = http.client.HTTPConnection("127.0.0.1", n.admin, timeout=2)
            jitter = random.random() * a.poll_ms / 1000.0
            go.wait()
            t0 = state["t0"]
            time.sleep(jitter)
            try:
                while time.monotonic() - t0 < timeout:
                    try:
                        conn.request("GET", "/admin/v1/peers")
                        body = conn.getresponse().read()
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", n.admin, timeout=2)
                        body = b""
                    if needle in body:
                        arrived[n.name] = (time.monotonic() - t0) * 1000.0
                        return
                    time.sleep(a.poll_ms / 1000.0)
            finally:
                conn.close()

        threads = [threading.Thread(target=poll, args=(n,), daemon=True) for n in others]
        for t in threads:
            t.start()
        state["t0"] = time.monotonic()
        origin.proc.send_signal(signal.SIGHUP)
        go.set()
        for t in threads:
            t.join(timeout + 5)
        return arrived


def fmt_ms(v):
    return "-" if v is None else f"{v:.0f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labmand", required=True)
    p.add_argument("--labman", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--observe", choices=("log", "api"), default="log")
    p.add_argument("--poll-ms", type=float, default=25.0)  # --observe api
    p.add_argument("--round-timeout-s", type=float, default=10.0)
    p.add_argument("--gap-s", type=float, default=2.0)
    p.add_argument("--form-timeout-s", type=float, default=120.0)
    p.add_argument("--stable-s", type=float, default=3.0)
    p.add_argument("--max-peers", type=int, default=64)  # labmand's default
    p.add_argument("--gossip-interval-ms", type=int, default=0)  # 0: labmand's default
    p.add_argument("--target-ms", type=float, default=2000.0)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    if a.nodes < 3 or a.rounds < 1:
        p.error("--nodes >= 3 and --rounds >= 1")
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    rng = random.Random(a.seed + 1)

    m = Mesh(a)

    def on_term(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    t_begin = time.monotonic()
    try:
        m.create()
        log(f"{a.nodes} nodes, {m.edges} bootstrap entries (ring + chords), seed {a.seed}")
        m.start()
        formed_s, steady_s, deg = m.wait_steady()

        s0 = m.sample()
        time.sleep(a.idle_s)
        s1 = m.sample()
        m.alive()
        idle_in, idle_out, idle_cpu = m.rates(s0, s1)
        log(f"idle: {statistics.mean(idle_out):.0f} bytes/node/s out, "
            f"all nodes {idle_cpu:.1f}% of a core")

        rounds = []
        r0 = m.sample()
        for r in range(1, a.rounds + 1):
            time.sleep(a.gap_s + rng.random())  # a random phase of the nodes' timers
            origin = rng.choice(m.nodes)
            arrived, n_others = m.round(r, origin)
            m.alive()
            times = sorted(arrived.values())
            missing = n_others - len(times)
            conv = times[-1] if not missing else None
            rounds.append({"origin": origin.name, "converged_ms": conv, "missing": missing,
                           "first_ms": times[0] if times else None,
                           "p50_ms": pct(times, 50) if not missing else None,
                           "p90_ms": pct(times, 90) if not missing else None,
                           "arrivals": times})
            log(f"round {r}: {origin.name} -> "
                + (f"all {n_others} in {conv:.0f} ms" if conv is not None else
                   f"{missing} of {n_others} still without it after {a.round_timeout_s:g} s")
                + (f" (first {times[0]:.0f}, 50% {pct(times, 50):.0f}, "
                   f"90% {pct(times, 90):.0f} ms)" if times else ""))
        r1 = m.sample()
        rnd_in, rnd_out, rnd_cpu = m.rates(r0, r1)
        # What a round costs beyond the idle traffic (digests, pings): bytes
        # sent by all nodes over the rounds minus their idle rates times the
        # rounds' length, per round (one reload publishes 2 records, peer
        # and capabilities). Summed over the nodes: one node sends whole
        # digests (~95 bytes per record held) at its own phase, which makes
        # a single node's figure jump by a digest either way.
        push = sum((b[2] - a_[2]) - rate * (b[0] - a_[0])
                   for a_, b, rate in zip(r0, r1, idle_out)) / len(rounds)
        deg_end = m.degrees()
    except SetupError as e:
        log(str(e))
        return 2
    finally:
        m.stop()
    t_total = time.monotonic() - t_begin

    # ---- report ----
    conv = [r["converged_ms"] for r in rounds]
    ok_rounds = [c for c in conv if c is not None and c <= a.target_ms]
    met = len(ok_rounds) == len(rounds)
    done = sorted(c for c in conv if c is not None)

    def agg(v):
        v = sorted(x for x in v if x is not None)
        if not v:
            return None
        return {"median": statistics.median(v), "min": v[0], "max": v[-1]}

    def cell(v, f="{:.0f}"):
        g = agg(v)
        if g is None:
            return "-"
        return f"{f.format(g['median'])} [{f.format(g['min'])}..{f.format(g['max'])}]"

    pooled = sorted(x for r in rounds for x in r["arrivals"])
    rows = [
        ("convergence: all others have it (ms)",
         cell(conv) + ("" if len(done) == len(conv) else f", {len(conv) - len(done)} "
                       "round(s) not converged"),
         f"<= {a.target_ms:.0f} each", "pass" if met else "**miss**"),
        ("rounds within the target", f"{len(ok_rounds)} of {len(rounds)}", "", ""),
        ("90% of nodes have it (ms)", cell([r["p90_ms"] for r in rounds]), "", ""),
        ("50% of nodes have it (ms)", cell([r["p50_ms"] for r in rounds]), "", ""),
        ("first node has it (ms)", cell([r["first_ms"] for r in rounds]), "", ""),
        ("arrivals, all rounds pooled: p50 / p90 / p99 (ms)",
         f"{fmt_ms(pct(pooled, 50))} / {fmt_ms(pct(pooled, 90))} / {fmt_ms(pct(pooled, 99))}",
         "", ""),
        ("mesh bytes/node/s idle, sent (over nodes)", cell(idle_out), "", ""),
        ("mesh bytes/node/s idle, received (over nodes)", cell(idle_in), "", ""),
        ("mesh bytes/node/s over the rounds, sent", cell(rnd_out), "", ""),
        ("mesh bytes/node/s over the rounds, received", cell(rnd_in), "", ""),
        ("bytes sent per round beyond idle: all nodes / per node",
         f"{push:.0f} / {push / len(m.nodes):.0f}", "", ""),
        ("CPU of all nodes, idle (% of one core)", f"{idle_cpu:.1f}", "", ""),
        ("CPU of all nodes over the rounds (% of one core)", f"{rnd_cpu:.1f}", "", ""),
        ("connected peers per node, steady", cell(deg, "{:g}"), "", ""),
        ("mesh formed / steady after (s)", f"{formed_s:.1f} / {steady_s:.1f}", "", ""),
    ]
    interval = a.gossip_interval_ms or 1000
    print()
    print(f"gossip.sh: {a.nodes} nodes, {len(rounds)} rounds, gossip_interval_ms {interval}"
          f"{'' if a.gossip_interval_ms else ' (default)'}, max_peers {a.max_peers}, arrivals from "
          + ("the nodes' logs" if a.observe == "log" else
             f"/admin/v1/peers polled every {a.poll_ms:g} ms")
          + f", seed {a.seed}, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, "
          f"{t_total:.0f} s")
    print(f"{'figure':<56} {'median [min..max]':<30} {'target':<12} result")
    for f, v, t, res in rows:
        print(f"{f:<56} {v:<30} {t:<12} {res}")
    print("rounds: " + "; ".join(
        f"{r['origin']} {fmt_ms(r['converged_ms'])} ms" for r in rounds))

    def r1_(v):
        return None if v is None else round(v, 1)

    def jagg(v):
        g = agg(v)
        return None if g is None else {k: r1_(x) for k, x in g.items()}

    j = {
        "bench": "gossip", "nodes": a.nodes, "rounds": len(rounds),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gossip_interval_ms": interval, "max_peers": a.max_peers, "observe": a.observe,
        "poll_ms": a.poll_ms if a.observe == "api" else None,
        "seed": a.seed, "bootstrap_entries": m.edges,
        "convergence_ms": dict(jagg(conv) or {}, per_round=[r1_(c) for c in conv]),
        "p90_ms": jagg([r["p90_ms"] for r in rounds]),
        "p50_ms": jagg([r["p50_ms"] for r in rounds]),
        "first_ms": jagg([r["first_ms"] for r in rounds]),
        "arrivals_pooled_ms": {"p50": r1_(pct(pooled, 50)), "p90": r1_(pct(pooled, 90)),
                               "p99": r1_(pct(pooled, 99))},
        "bytes_per_node_s": {"idle": {"out": jagg(idle_out), "in": jagg(idle_in)},
                             "rounds": {"out": jagg(rnd_out), "in": jagg(rnd_in)}},
        "round_bytes_beyond_idle": {"all_nodes": r1_(push), "per_node": r1_(push / len(m.nodes))},
        "cpu_all_nodes_pct": {"idle": r1_(idle_cpu), "rounds": r1_(rnd_cpu)},
        "degree": jagg(deg), "degree_end": jagg(deg_end),
        "formed_s": r1_(formed_s), "steady_s": r1_(steady_s),
        "target_ms": a.target_ms, "rounds_within_target": len(ok_rounds),
        "targets_met": met,
    }
    print(json.dumps(j, separators=(",", ":")))
    return 0 if met else 10


if __name__ == "__main__":
    sys.exit(main())
