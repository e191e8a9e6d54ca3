"""labmand: startup, identity, admin listener, signals, reloads, systemd notify."""
import json
import os
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import Proc, binpath, free_port, http, wait_port


# The gateway role is on by default: give each test's daemon its own free
# gateway port (the same one across rewrites of its config) instead of 31145.
_gateway_ports = {}


def write_config(tmp_path, port, extra="", node_extra="", name="labman.toml",
                 listen=None):
    data_dir = tmp_path / "data"
    path = tmp_path / name
    gw = ""
    if "[gateway]" not in extra:
        gw_port = _gateway_ports.setdefault(str(tmp_path), free_port())
        gw = f'[gateway]\nlisten = "127.0.0.1:{gw_port}"\n'
    path.write_text(
        "[node]\n"
        'name = "itest"\n'
        f'data_dir = "{data_dir}"\n'
        f"{node_extra}"
        f"{gw}"
        "[admin]\n"
        f'listen = "{listen or f"127.0.0.1:{port}"}"\n'
        f"{extra}"
    )
    return str(path)


def start_daemon(tmp_path, procs, extra="", node_extra="", args=(), env=None, listen=None,
                 port=None):
    """Starts labmand on a free port; returns (proc, port, config path)."""
    port = port or free_port()
    cfg = write_config(tmp_path, port, extra, node_extra, listen=listen)
    p = Proc([binpath("labmand"), "-c", cfg, *args], str(tmp_path / f"labmand-{port}.log"),
             env=env)
    procs.append(p)
    wait_port(port, p.p)
    return p, port, cfg


def url(port, path):
    return f"http://127.0.0.1:{port}{path}"


def wait_log(p, pattern, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, p.output()):
            return
        time.sleep(0.02)
    raise AssertionError(f"no log line matching {pattern!r} in:\n{p.output()}")


def status(port, headers=None):
    code, _, body = http("GET", url(port, "/admin/v1/status"), headers=headers)
    assert code == 200, body
    return json.loads(body)


# --- a small checker of the Prometheus text exposition format (0.0.4) -------

METRIC_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_labels(s):
    """Parses 'a="x",b="y\\"z"' into a dict; raises on any malformation."""
    labels, i = {}, 0
    while i < len(s):
        m = re.match(r"([^=]+)=\"", s[i:])
        assert m, f"bad label syntax at {s[i:]!r}"
        name = m.group(1)
        assert LABEL_RE.match(name) and not name.startswith("__"), f"bad label name {name!r}"
        i += m.end()
        val = []
        while True:
            assert i < len(s), f"unterminated label value in {s!r}"
            c = s[i]
            if c == "\\":
                assert i + 1 < len(s) and s[i + 1] in '\\"n', f"bad escape in {s!r}"
                val.append(s[i:i + 2])
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                assert c != "\n"
                val.append(c)
                i += 1
        assert name not in labels, f"duplicate label {name}"
        labels[name] = "".join(val)
        if i < len(s):
            assert s[i] == ",", f"expected ',' in {s!r}"
            i += 1
    return labels


def check_prometheus(text):
    """Returns {family: [(labels, value)]}; asserts the text is valid."""
    assert text.endswith("\n")
    types, helps, samples, seen_order = {}, set(), {}, []
    for line in text.split("\n")[:-1]:
        assert line.strip() == line and line, f"blank or padded line {line!r}"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert METRIC_RE.match(name), f"bad metric name {name!r}"
                if parts[1] == "TYPE":
                    assert name not in types, f"second TYPE for {name}"
                    assert name not in samples, f"TYPE for {name} after its samples"
                    assert parts[3] in TYPES, f"bad type {parts[3]!r}"
                    types[name] = parts[3]
                else:
                    assert name not in helps, f"second HELP for {name}"
                    helps.add(name)
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?\Z", line)
        assert m, f"bad sample line {line!r}"
        name, labels, value = m.group(1), parse_labels(m.group(3) or ""), m.group(4)
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
                family = base
        assert family in types, f"sample {name} has no # TYPE"
        if types[family] == "counter":
            assert family.endswith("_total"), f"counter {family} should end in _total"
        if value not in ("NaN", "+Inf", "-Inf"):
            float(value)
        if seen_order and seen_order[-1] != family:
            assert family not in seen_order, f"samples of {family} are not together"
        if not seen_order or seen_order[-1] != family:
            seen_order.append(family)
        samples.setdefault(family, []).append((labels, float(value)))
    return samples


def test_prometheus_checker_rejects_bad_text():
    """The checker itself must be able to fail."""
    check_prometheus("# TYPE a gauge\na 1\n")
    for bad in ("a 1\n", "# TYPE a gauge\na{b=\"1} 1\n", "# TYPE a gauge\na x\n",
                "# TYPE a gauge\n# TYPE a gauge\na 1\n", "# TYPE a gauge\na{1b=\"x\"} 1\n",
                "# TYPE a_total counter\n# TYPE b gauge\na_total 1\nb 1\na_total 2\n",
                "# TYPE a counter\na 1\n"):
        with pytest.raises((AssertionError, ValueError)):
            check_prometheus(bad)


# --- tests -------------------------------------------------------------------

def test_health_ready_metrics_status(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs)

    code, _, body = http("GET", url(port, "/healthz"))
    assert (code, body) == (200, b"ok\n")
    code, _, body = http("GET", url(port, "/readyz"))
    assert code == 200

    code, headers, body = http("GET", url(port, "/metrics"))
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = check_prometheus(body.decode())
    assert m["labman_build_info"] == [({"version": "0.1.0"}, 1.0)]
    assert m["labman_up"] == [({}, 1.0)]
    assert m["process_resident_memory_bytes"][0][1] > 1 << 20
    assert abs(m["process_start_time_seconds"][0][1] - time.time()) < 60
    assert m["process_cpu_seconds_total"][0][1] >= 0
    assert m["process_open_fds"][0][1] >= 3
    assert sorted((lb["result"], v) for lb, v in m["labman_config_reloads_total"]) == [
        ("error", 0.0), ("ok", 0.0)]

    st = status(port)
    assert st["name"] == "itest"
    assert re.fullmatch(r"[0-9a-f]{64}", st["node_id"])
    assert st["short_id"] == st["node_id"][:12]
    assert st["version"] == "0.1.0"
    assert st["roles"] == ["gateway", "provider"]
    assert st["state"] == "ready"
    assert st["pid"] == p.p.pid
    assert st["config"] == cfg
    assert st["listen"]["admin"] == f"127.0.0.1:{port}"
    assert isinstance(st["uptime_s"], int) and st["uptime_s"] >= 0
    assert st["last_reload"]["result"] == "none"


def test_unknown_path_and_wrong_method(tmp_path, procs):
    _, port, _ = start_daemon(tmp_path, procs)
    code, headers, body = http("GET", url(port, "/nope"))
    assert code == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["code"] == 404
    code, headers, body = http("POST", url(port, "/metrics"), body="")
    assert code == 405
    assert "GET" in headers["Allow"]
    code, headers, _ = http("GET", url(port, "/admin/v1/config/reload"))
    assert code == 405 and headers["Allow"] == "POST"
    code, _, body = http("HEAD", url(port, "/healthz"))
    assert code == 200 and body == b""


def test_identity_created_0600_and_stable(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs)
    key = tmp_path / "data" / "identity.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    lines = key.read_text().split("\n")
    assert lines[0] == "labman-identity-v1" and re.fullmatch(r"[0-9a-f]{64}", lines[1])
    first = status(port)["node_id"]
    # The secret never reaches the log.
    assert lines[1] not in p.output()
    p.stop()
    assert p.p.returncode == 0

    p2 = Proc([binpath("labmand"), "-c", cfg], str(tmp_path / "second.log"))
    procs.append(p2)
    wait_port(port, p2.p)
    assert status(port)["node_id"] == first
    assert "created a new identity" not in p2.output()


def test_refuses_loose_key(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs)
    p.stop()
    key = tmp_path / "data" / "identity.key"
    os.chmod(key, 0o644)
    r = subprocess.run([binpath("labmand"), "-c", cfg], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1
    assert str(key) in r.stderr and "chmod 600" in r.stderr


def test_refuses_malformed_key(tmp_path, procs):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = data / "identity.key"
    key.write_text("not a key\n")
    os.chmod(key, 0o600)
    cfg = write_config(tmp_path, free_port())
    r = subprocess.run([binpath("labmand"), "-c", cfg], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1
    assert "malformed" in r.stderr and str(key) in r.stderr


def test_refuses_non_loopback_admin_without_token(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, port, listen=f"0.0.0.0:{port}")
    r = subprocess.run([binpath("labmand"), "-c", cfg], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1
    assert "token_file" in r.stderr and "0.0.0.0" in r.stderr
    r = subprocess.run([binpath("labmand"), "-n", "-c", cfg], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1 and "token_file" in r.stderr


def test_token_required_when_configured(tmp_path, procs):
    tok = tmp_path / "admin.token"
    tok.write_text("s3cret-token-123\n")
    os.chmod(tok, 0o600)
    p, port, _ = start_daemon(tmp_path, procs, extra=f'token_file = "{tok}"\n')

    assert http("GET", url(port, "/healthz"))[0] == 200
    for path in ("/readyz", "/metrics", "/admin/v1/status", "/nope"):
        code, headers, _ = http("GET", url(port, path))
        assert code == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
    for bad in ("Bearer wrong", "Bearer s3cret-token-12", "Bearer s3cret-token-1234",
                "Basic s3cret-token-123", "s3cret-token-123"):
        assert http("GET", url(port, "/readyz"), headers={"Authorization": bad})[0] == 401
    good = {"Authorization": "Bearer s3cret-token-123"}
    assert http("GET", url(port, "/readyz"), headers=good)[0] == 200
    assert status(port, headers=good)["state"] == "ready"
    code, _, _ = http("POST", url(port, "/admin/v1/config/reload"), body="", headers=good)
    assert code == 200
    assert "s3cret" not in p.output()


def test_token_allows_non_loopback(tmp_path, procs):
    tok = tmp_path / "admin.token"
    tok.write_text("tok\n")
    os.chmod(tok, 0o600)
    port = free_port()
    p, port, _ = start_daemon(tmp_path, procs, extra=f'token_file = "{tok}"\n',
                              listen=f"0.0.0.0:{port}", port=port)
    assert http("GET", url(port, "/readyz"), headers={"Authorization": "Bearer tok"})[0] == 200


def test_ipv6_listen(tmp_path, procs):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = free_port()
    cfg = write_config(tmp_path, port, listen=f"[::1]:{port}")
    p = Proc([binpath("labmand"), "-c", cfg], str(tmp_path / "v6.log"))
    procs.append(p)
    deadline = time.monotonic() + 10
    while True:
        try:
            code, _, body = http("GET", f"http://[::1]:{port}/admin/v1/status")
            break
        except OSError:
            assert p.p.poll() is None and time.monotonic() < deadline, p.output()
            time.sleep(0.05)
    assert code == 200 and json.loads(body)["listen"]["admin"] == f"[::1]:{port}"


def test_sighup_valid_change_applied(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs)
    assert status(port)["log_level"] == "info"
    # A valid change (log_level) and one that needs a restart (gateway.listen).
    write_config(tmp_path, port, node_extra='log_level = "debug"\n',
                 extra="[gateway]\nlisten = \"127.0.0.1:1\"\n")
    p.signal(signal.SIGHUP)
    wait_log(p, r"config reloaded from")
    st = status(port)
    assert st["log_level"] == "debug"
    assert st["last_reload"]["result"] == "ok"
    assert st["last_reload"]["restart_needed"] == ["gateway.listen"]
    assert re.search(r"warn .*need a restart.*gateway\.listen", p.output())
    # Debug logging is really on now: requests are logged.
    http("GET", url(port, "/readyz"))
    wait_log(p, r"debug admin: GET /readyz")
    m = check_prometheus(http("GET", url(port, "/metrics"))[2].decode())
    assert ({"result": "ok"}, 1.0) in m["labman_config_reloads_total"]


def test_sighup_invalid_keeps_old_config(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs, node_extra='log_level = "warn"\n')
    with open(cfg, "w") as f:
        f.write('[node]\nlog_level = "loud"\nlog_levle = "debug"\n[admin]\nlisten = 5\n')
    p.signal(signal.SIGHUP)
    wait_log(p, r"config reload rejected")
    out = p.output()
    # Every problem, each on its own line with FILE:LINE:COL.
    problems = re.findall(re.escape(cfg) + r":(\d+):(\d+): ", out)
    assert len(problems) >= 3, out
    st = status(port)
    assert st["log_level"] == "warn"
    assert st["last_reload"]["result"] == "error"
    assert len(st["last_reload"]["errors"]) >= 3
    assert st["listen"]["admin"] == f"127.0.0.1:{port}"
    m = check_prometheus(http("GET", url(port, "/metrics"))[2].decode())
    assert ({"result": "error"}, 1.0) in m["labman_config_reloads_total"]

    # The admin API gives the same answer, as JSON with the lines.
    code, _, body = http("POST", url(port, "/admin/v1/config/reload"), body="")
    assert code == 422
    res = json.loads(body)
    assert res["result"] == "error" and all(e.startswith(cfg + ":") for e in res["errors"])


def test_sigterm_exits_zero_promptly(tmp_path, procs):
    p, port, _ = start_daemon(tmp_path, procs)
    # An idle keep-alive connection must not hold up the shutdown.
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in idle.recv(4096)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 2
    idle.close()
    assert "drained" in p.output()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_sigint_exits_zero(tmp_path, procs):
    p, _, _ = start_daemon(tmp_path, procs)
    p.signal(signal.SIGINT)
    assert p.wait(timeout=5) == 0


def test_malformed_http_keeps_serving(tmp_path, procs):
    p, port, _ = start_daemon(tmp_path, procs)

    def send(data, read=True):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(data)
            if read:
                try:
                    return s.recv(4096)
                except (ConnectionResetError, socket.timeout):
                    return b""
        except (BrokenPipeError, ConnectionResetError):
            return b""
        finally:
            s.close()

    send(b"\x00\xff\x16\x03\x01garbage\r\n\r\n")
    send(b"GET / HTTP/9.9\r\n\r\n")
    send(b"NOTAMETHOD /healthz HTTP/1.1\r\n\r\n")
    send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
    send(b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n")
    reply = send(b"POST /admin/v1/config/reload HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
                 + b"x" * 1000)
    assert reply == b"" or b" 413 " in reply.split(b"\r\n")[0] or b" 400 " in reply
    send(b"GET /admin/v1/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    send(b"GET /%00%ff\x01 HTTP/1.1\r\n\r\n")
    send(b"GET /healthz HTTP/1.1\r\nHost: x", read=False)  # half a request, then gone
    assert p.p.poll() is None
    assert http("GET", url(port, "/healthz")) [0] == 200
    assert status(port)["state"] == "ready"


def test_check_flag(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, port)
    r = subprocess.run([binpath("labmand"), "-n", "-c", cfg], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"{cfg}: ok\n"

    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nlog_level = "loud"\n\n[admin]\nlistne = "x"\n')
    r = subprocess.run([binpath("labmand"), "-n", "-c", str(bad)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"{bad}:2:") and lines[1].startswith(f"{bad}:5:")

    r = subprocess.run([binpath("labmand"), "-n", "-c", str(tmp_path / "missing.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "missing.toml" in r.stderr


def test_missing_explicit_config_is_an_error(tmp_path):
    r = subprocess.run([binpath("labmand"), "-c", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "nope.toml" in r.stderr


def test_version_and_help():
    r = subprocess.run([binpath("labmand"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "labmand 0.1.0\n"
    r = subprocess.run([binpath("labmand"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "-c, --config" in r.stdout and "SIGHUP" in r.stdout
    r = subprocess.run([binpath("labmand"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2


def test_sd_notify(tmp_path, procs):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(5)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    p, port, cfg = start_daemon(tmp_path, procs, env=env)

    def until(word):
        got = []
        while True:
            msg = sock.recv(4096).decode()
            got.append(msg)
            if word in msg.split("\n"):
                return "\n".join(got)

    assert "STATUS=serving" in until("READY=1")
    p.signal(signal.SIGHUP)
    assert "MONOTONIC_USEC=" in until("RELOADING=1")
    until("READY=1")
    p.signal(signal.SIGTERM)
    until("STOPPING=1")
    assert p.wait(timeout=5) == 0
    sock.close()


def test_json_log_format(tmp_path, procs):
    p, port, _ = start_daemon(tmp_path, procs, node_extra='log_format = "json"\n')
    http("GET", url(port, "/healthz"))
    p.stop()
    lines = p.output().strip().split("\n")
    assert len(lines) >= 3
    for line in lines:
        rec = json.loads(line)
        assert set(rec) == {"ts", "level", "module", "msg"}, rec
    assert any("ready" in json.loads(ln)["msg"] for ln in lines)
