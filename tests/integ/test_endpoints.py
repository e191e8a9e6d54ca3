"""Endpoints: labmand against real labman-devllm processes of every flavor and
small misbehaving HTTP servers: kind detection, health, catalogue, globs,
down and back, garbage, hangs, reload, CLI tables, metrics, discovery."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Proc, binpath, free_port, http, wait_port
from test_daemon import check_prometheus

CHECK_MS = 300


def devllm(procs, tmp_path, flavor, port=None, *args):
    port = port or free_port()
    p = Proc([binpath("labman-devllm"), "--flavor", flavor, "--listen", f"127.0.0.1:{port}",
              *args], str(tmp_path / f"devllm-{flavor}-{port}.log"))
    procs.append(p)
    wait_port(port, p.p)
    return p, port


def endpoint(name, port, extra=""):
    return (f'[[endpoints]]\nname = "{name}"\nurl = "http://127.0.0.1:{port}"\n{extra}')


def start(tmp_path, procs, endpoints, scan_local=False, env_extra=None, port=None):
    port = port or free_port()
    cfg = tmp_path / "labman.toml"
    cfg.write_text(
        "[node]\n"
        'name = "etest"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "[admin]\n"
        f'listen = "127.0.0.1:{port}"\n'
        "[gateway]\n"
        f'listen = "127.0.0.1:{free_port()}"\n'
        "[discovery]\n"
        f"scan_local = {'true' if scan_local else 'false'}\n"
        + "".join(endpoints))
    env = dict(os.environ, LABMAN_CHECK_MS=str(CHECK_MS), **(env_extra or {}))
    p = Proc([binpath("labmand"), "-c", str(cfg)], str(tmp_path / "labmand.log"), env=env)
    procs.append(p)
    wait_port(port, p.p)
    return p, port, str(cfg)


def get(port, path):
    code, _, body = http("GET", f"http://127.0.0.1:{port}{path}")
    assert code == 200, body
    return json.loads(body)


def eps(port):
    return {e["name"]: e for e in get(port, "/admin/v1/endpoints")["endpoints"]}


def models(port):
    return {m["id"]: m for m in get(port, "/admin/v1/models")["models"]}


def until(fn, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def labman(*args, check=0):
    r = subprocess.run([binpath("labman"), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    return r


def table(text):
    lines = text.rstrip("\n").split("\n")
    head = re.split(r"\s{2,}", lines[0])
    return [dict(zip(head, re.split(r"\s{2,}", ln))) for ln in lines[1:]]


# --- small misbehaving runtimes ----------------------------------------------

class Server:
    """An HTTP server on a free port whose every answer comes from handler."""

    def __init__(self, handler):
        self.seen = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.seen.append((self.path, self.headers.get("Authorization")))
                handler(self)

            do_POST = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made = []
    yield lambda h: made.append(Server(h)) or made[-1]
    for s in made:
        s.close()


def answer(h, code, body, ctype="application/json"):
    data = body if isinstance(body, bytes) else body.encode()
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


# --- tests -------------------------------------------------------------------

def test_kinds_health_and_catalogue(tmp_path, procs):
    _, po = devllm(procs, tmp_path, "ollama", None, "--models", "llama3.2:1b,qwen2.5:0.5b,nomic",
                   "--ctx-len", "8192")
    _, pl = devllm(procs, tmp_path, "llamacpp", None, "--load-ms", "1500", "--ctx-len", "2048",
                   "--models", "lc-model",
                   "--max-concurrent", "3")
    _, pv = devllm(procs, tmp_path, "vllm", None, "--models", "llama3.2:1b")
    _, pa = devllm(procs, tmp_path, "openai", None, "--models", "gpt-x")
    _, pk = devllm(procs, tmp_path, "openai", None, "--models", "fixed")
    d, port, _ = start(tmp_path, procs, [
        endpoint("ol", po), endpoint("lc", pl), endpoint("vl", pv), endpoint("oa", pa),
        endpoint("fixed", pk, 'kind = "openai"\nmax_concurrent = 7\n')])

    # Ready once every configured endpoint has been checked once.
    until(lambda: http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200, what="ready")
    e = eps(port)
    assert list(e) == ["ol", "lc", "vl", "oa", "fixed"]
    assert {n: x["kind"] for n, x in e.items()} == {
        "ol": "ollama", "lc": "llamacpp", "vl": "vllm", "oa": "openai", "fixed": "openai"}
    assert e["fixed"]["configured_kind"] == "openai" and e["ol"]["configured_kind"] == "auto"
    assert e["fixed"]["max_concurrent"] == 7 and e["ol"]["max_concurrent"] == 4
    # llama.cpp is up but loading during its first 1.5 s: not served yet.
    assert e["lc"]["healthy"] and e["lc"]["loading"]
    assert all(x["healthy"] and not x["discovered"] for x in e.values())
    e = until(lambda: (lambda x: x if not x["lc"]["loading"] else None)(eps(port)),
              what="llama.cpp loaded")
    assert e["lc"]["free_slots"] == 3
    assert "endpoint lc (llamacpp) is up and loading" in d.output()
    assert "endpoint lc finished loading" in d.output()
    assert e["vl"]["runtime_running"] == 0 and e["vl"]["runtime_waiting"] == 0
    assert e["ol"]["free_slots"] is None
    for x in e.values():
        assert x["last_error"] is None and x["breaker"] == "closed"
        assert 0 <= x["last_check_age_ms"] < 5000
        assert x["in_flight"] == 0 and x["requests_total"] == 0

    m = until(lambda: (lambda ms: ms if ms.get("llama3.2:1b", {}).get("context_length") == 8192
                       else None)(models(port)), what="context length from /api/show")
    one = m["llama3.2:1b"]
    assert one["endpoints"] == ["ol", "vl"]
    assert (one["family"], one["params"], one["quant"]) == ("llama", "1.0B", "Q4_K_M")
    assert re.fullmatch(r"[0-9a-f]{64}", one["digest"])
    assert one["available"] and one["loaded"]  # vLLM holds it in memory
    assert m["qwen2.5:0.5b"]["loaded"] is False and m["qwen2.5:0.5b"]["params"] == "500M"
    assert m["nomic:latest"]["aliases"] == ["nomic"]
    assert m["gpt-x"]["endpoints"] == ["oa"] and m["gpt-x"]["loaded"]
    assert m["lc-model"]["endpoints"] == ["lc"] and m["lc-model"]["context_length"] == 2048

    # An Ollama model used once is loaded: /api/ps says so at the next check.
    code, _, _ = http("POST", f"http://127.0.0.1:{po}/api/generate",
                      json.dumps({"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False}))
    assert code == 200
    until(lambda: models(port)["qwen2.5:0.5b"]["loaded"], what="loaded after use")

    code, headers, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    text = body.decode()
    fam = check_prometheus(text)
    up = {lb["endpoint"]: (lb["kind"], v) for lb, v in fam["labman_endpoint_up"]}
    assert up["ol"] == ("ollama", 1.0) and up["vl"] == ("vllm", 1.0)
    assert {lb["endpoint"] for lb, _ in fam["labman_endpoint_circuit_state"]} == set(e)
    assert fam["labman_queue_depth"] == [({}, 0.0)]
    assert any(lb == {"endpoint": "ol", "state": "loaded"} and v == 1.0
               for lb, v in fam["labman_endpoint_models"])
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def test_models_include_exclude(tmp_path, procs):
    _, po = devllm(procs, tmp_path, "ollama", None, "--models",
                   "llama3.2:1b,llama3:70b,qwen2.5:0.5b,phi3")
    _, port, _ = start(tmp_path, procs, [endpoint(
        "ol", po, 'models_include = ["llama*", "phi3"]\nmodels_exclude = ["*:70b"]\n')])
    m = until(lambda: models(port), what="models")
    assert sorted(m) == ["llama3.2:1b", "phi3:latest"]
    assert eps(port)["ol"]["models"] == 2


def test_down_and_back(tmp_path, procs):
    dv, pa = devllm(procs, tmp_path, "openai", None, "--models", "m1:1b")
    _, pb = devllm(procs, tmp_path, "vllm", None, "--models", "m2")
    d, port, _ = start(tmp_path, procs, [endpoint("a", pa), endpoint("b", pb)])
    until(lambda: all(x["healthy"] for x in eps(port).values()), what="both up")
    assert eps(port)["a"]["kind"] == "openai"

    dv.stop()
    t0 = time.monotonic()
    e = until(lambda: (lambda x: x if not x["a"]["healthy"] else None)(eps(port)),
              timeout=5, what="a down")
    assert time.monotonic() - t0 < 3 * CHECK_MS / 1000 + 3
    # The kind's own probe fails first; later checks detect the kind afresh.
    assert re.match(r"GET /(v1/models|api/version): .*connect", e["a"]["last_error"], re.I)
    assert e["b"]["healthy"] and e["b"]["last_error"] is None
    # Its models stay listed, but not available.
    assert models(port)["m1:1b"]["available"] is False
    assert "endpoint a is down" in d.output()

    # Back, as another runtime on the same port: detected again.
    devllm(procs, tmp_path, "ollama", pa, "--models", "m1:1b")
    e = until(lambda: (lambda x: x if x["a"]["healthy"] else None)(eps(port)), timeout=5,
              what="a back")
    assert e["a"]["kind"] == "ollama" and e["a"]["last_error"] is None
    m = models(port)["m1:1b"]
    assert m["available"] is True and m["quant"] == "Q4_K_M"


def test_garbage_hang_and_huge_answers(tmp_path, procs, servers):
    garbage = servers(lambda h: answer(h, 200, b"\x00\xffnot json at all{{{", "text/html"))
    huge = servers(lambda h: answer(h, 200, '{"data":[' + "0," * (3 << 20) + '0]}'))
    hang_stop = threading.Event()
    hang = servers(lambda h: hang_stop.wait(30))
    wrong = servers(lambda h: answer(h, 200, '{"data":"nope","version":[]}')
                    if h.path == "/v1/models" else answer(h, 404, "{}"))
    _, pa = devllm(procs, tmp_path, "ollama", None, "--models", "ok:1b")
    try:
        d, port, _ = start(tmp_path, procs, [
            endpoint("good", pa), endpoint("garbage", garbage.port), endpoint("huge", huge.port),
            endpoint("hang", hang.port), endpoint("wrong", wrong.port)])
        e = until(lambda: (lambda x: x if x["good"]["healthy"] and x["garbage"]["last_error"]
                           and x["huge"]["last_error"] and x["wrong"]["last_error"] else None)(
                               eps(port)), timeout=10, what="verdicts")
        # The hanging one does not hold the others back.
        assert e["hang"]["last_check_age_ms"] is None
        assert http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 503
        assert not e["garbage"]["healthy"] and "does not answer as" in e["garbage"]["last_error"]
        assert "not JSON" in e["garbage"]["last_error"]
        assert "larger than" in e["huge"]["last_error"]
        assert "no \"data\" list" in e["wrong"]["last_error"]
        for name in ("garbage", "huge", "wrong"):
            assert e[name]["kind"] == "unknown" and e[name]["models"] == 0
            assert f"endpoint {name} is down: " in d.output()

        # The hang ends in a timeout, after which labmand is ready.
        e = until(lambda: (lambda x: x if x["hang"]["last_error"] else None)(eps(port)),
                  timeout=8, what="hang times out")
        assert "GET /api/version" in e["hang"]["last_error"]
        until(lambda: http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200, what="ready")
        assert e["good"]["healthy"] and e["good"]["last_check_age_ms"] < 2000
        assert d.p.poll() is None
    finally:
        hang_stop.set()


def test_api_key_sent_never_shown(tmp_path, procs, servers):
    s = servers(lambda h: answer(h, 200, '{"object":"list","data":[{"id":"keyed"}]}')
                if h.path == "/v1/models" else answer(h, 404, "{}"))
    d, port, _ = start(tmp_path, procs, [endpoint("k", s.port, 'api_key_env = "LM_ITEST_KEY"\n')],
                       env_extra={"LM_ITEST_KEY": "s3cret-value"})
    until(lambda: eps(port)["k"]["healthy"], what="k up")
    assert s.seen and all(a == "Bearer s3cret-value" for _, a in s.seen)
    for path in ("/admin/v1/endpoints", "/admin/v1/models", "/metrics", "/admin/v1/status"):
        assert b"s3cret" not in http("GET", f"http://127.0.0.1:{port}{path}")[2]
    assert eps(port)["k"]["api_key_env"] == "LM_ITEST_KEY"
    assert "s3cret" not in d.output()


def test_reload_adds_removes_changes(tmp_path, procs):
    _, pa = devllm(procs, tmp_path, "openai", None, "--models", "ma")
    _, pb = devllm(procs, tmp_path, "openai", None, "--models", "mb")
    d, port, cfg = start(tmp_path, procs, [endpoint("a", pa), endpoint("b", pb)])
    until(lambda: set(models(port)) == {"ma", "mb"}, what="both")
    text = open(cfg).read()
    start_a = text.index("[[endpoints]]")
    text = text[:start_a] + endpoint("b", pb, "max_concurrent = 2\n") + endpoint("c", pa)
    open(cfg, "w").write(text)
    d.signal(signal.SIGHUP)
    e = until(lambda: (lambda x: x if list(x) == ["b", "c"] and x["c"]["healthy"] else None)(
        eps(port)), what="reloaded")
    assert e["b"]["max_concurrent"] == 2
    assert models(port)["ma"]["endpoints"] == ["c"]
    assert "endpoint a removed" in d.output()


def test_cli_tables_and_json(tmp_path, procs):
    _, po = devllm(procs, tmp_path, "ollama", None, "--models", "llama3.2:1b,nomic")
    d, port, cfg = start(tmp_path, procs, [endpoint("ol", po), endpoint("dead", free_port())])
    until(lambda: eps(port)["dead"]["last_error"] and eps(port)["ol"]["healthy"], what="checks")

    rows = table(labman("endpoints", "-c", cfg).stdout)
    assert [r["NAME"] for r in rows] == ["ol", "dead"]
    ol, dead = rows
    assert (ol["KIND"], ol["STATE"], ol["IN FLIGHT"], ol["CIRCUIT"]) == ("ollama", "up", "0/4",
                                                                         "closed")
    assert ol["MODELS"] == "2 (0 loaded)" and ol["ERROR"] == "-"
    assert ol["URL"] == f"http://127.0.0.1:{po}" and ol["CHECKED"].endswith("ago")
    assert dead["STATE"] == "down" and dead["KIND"] == "unknown"
    assert dead["ERROR"].startswith("GET /api/version: ")

    j = json.loads(labman("endpoints", "--json", "--admin", f"127.0.0.1:{port}").stdout)
    assert [x["name"] for x in j["endpoints"]] == ["ol", "dead"] and j["queue_depth"] == 0

    rows = table(labman("models", "-c", cfg).stdout)
    byid = {r["MODEL"]: r for r in rows}
    assert set(byid) == {"llama3.2:1b", "nomic:latest"}
    assert byid["llama3.2:1b"]["ENDPOINTS"] == "ol" and byid["llama3.2:1b"]["LOADED"] == "no"
    assert byid["llama3.2:1b"]["QUANT"] == "Q4_K_M" and byid["llama3.2:1b"]["FAMILY"] == "llama"
    assert byid["nomic:latest"]["ALIASES"] == "nomic"
    j = json.loads(labman("models", "--json", "-c", cfg).stdout)
    assert {x["id"] for x in j["models"]} == set(byid)

    d.stop()
    for cmd in ("endpoints", "models"):
        r = labman(cmd, "-c", cfg, check=1)
        assert r.stdout == ""
        assert r.stderr == (f"labman: cannot reach labmand at 127.0.0.1:{port}: "
                            "Connection refused (is it running?)\n")
    assert "endpoints" in labman("endpoints", "--help").stdout
    labman("models", "--bogus", check=2)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_autodiscovery(tmp_path, procs):
    if not port_free(11434):
        pytest.skip("127.0.0.1:11434 is in use")
    d, port, _ = start(tmp_path, procs, [], scan_local=True)
    time.sleep(2 * CHECK_MS / 1000)
    assert "discovered-11434" not in eps(port)
    dv, _ = devllm(procs, tmp_path, "ollama", 11434, "--models", "found:1b")
    e = until(lambda: eps(port).get("discovered-11434"), timeout=5, what="discovered")
    assert e["discovered"] and e["kind"] == "ollama" and e["url"] == "http://127.0.0.1:11434"
    assert models(port)["found:1b"]["endpoints"] == ["discovered-11434"]
    assert "discovered discovered-11434" in d.output()
    dv.stop()
    until(lambda: "discovered-11434" not in eps(port), timeout=5, what="gone")


def test_discovery_skips_configured_port(tmp_path, procs):
    if not port_free(11434):
        pytest.skip("127.0.0.1:11434 is in use")
    devllm(procs, tmp_path, "ollama", 11434, "--models", "x:1b")
    d, port, _ = start(tmp_path, procs, [
        '[[endpoints]]\nname = "mine"\nurl = "http://localhost:11434/"\n'], scan_local=True)
    until(lambda: eps(port)["mine"]["healthy"], what="mine up")
    time.sleep(3 * CHECK_MS / 1000)
    assert list(eps(port)) == ["mine"]
    assert eps(port)["mine"]["url"] == "http://localhost:11434"
