"""The gateway: labmand's OpenAI-compatible API in front of real labman-devllm
runtimes. Answers equal the runtime's own; streaming is relayed event by
event with exact usage; failover, circuit breakers, the queue, client
disconnects, slow clients, errors, auth and the observability around it."""
import hashlib
import http.client as httpclient
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import SANITIZED, Proc, binpath, free_port, http, wait_port

MODEL = "llama3.2:1b"
OTHER = "qwen2.5:0.5b"


def devllm(procs, tmp_path, flavor="openai", *extra, models=f"{MODEL},{OTHER}", port=None):
    port = port or free_port()
    args = [binpath("labman-devllm"), "--flavor", flavor, "--listen", f"127.0.0.1:{port}",
            "--models", models, "--log-level", "debug", *map(str, extra)]
    p = Proc(args, str(tmp_path / f"devllm-{flavor}-{port}-{len(procs)}.log"))
    procs.append(p)
    wait_port(port, p.p)
    return port, p


class Node:
    """A labmand with the gateway role in front of some runtimes."""

    def __init__(self, procs, tmp_path, endpoints, gateway="", name="gw-1", ready=True,
                 extra=""):
        self.gw, self.admin = free_port(), free_port()
        data = tmp_path / f"data-{self.gw}"
        eps = "".join(
            "[[endpoints]]\n"
            f'name = "{e["name"]}"\n'
            f'url = "http://127.0.0.1:{e["port"]}"\n'
            f'kind = "{e.get("kind", "auto")}"\n'
            f'max_concurrent = {e.get("max_concurrent", 8)}\n'
            for e in endpoints)
        self.cfg = tmp_path / f"labman-{self.gw}.toml"
        self.cfg.write_text(
            "[node]\n"
            f'name = "{name}"\n'
            f'data_dir = "{data}"\n'
            'log_level = "debug"\n'
            "[gateway]\n"
            f'listen = "127.0.0.1:{self.gw}"\n'
            f"{gateway}"
            "[admin]\n"
            f'listen = "127.0.0.1:{self.admin}"\n'
            "[discovery]\n"
            "scan_local = false\n"
            f"{eps}"
            f"{extra}")
        self.p = Proc([binpath("labmand"), "-c", str(self.cfg)],
                      str(tmp_path / f"labmand-{self.gw}.log"))
        procs.append(self.p)
        wait_port(self.gw, self.p.p)
        wait_port(self.admin, self.p.p)
        if ready:
            deadline = time.monotonic() + 5
            while http("GET", self.a("/readyz"))[0] != 200:
                assert time.monotonic() < deadline, self.p.output()
                time.sleep(0.02)

    def u(self, path):
        return f"http://127.0.0.1:{self.gw}{path}"

    def a(self, path):
        return f"http://127.0.0.1:{self.admin}{path}"

    def post(self, path, obj, headers=None, timeout=10.0):
        h = {"Content-Type": "application/json", **(headers or {})}
        body = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        return http("POST", self.u(path), body, h, timeout)

    def metrics(self):
        st, _, b = http("GET", self.a("/metrics"))
        assert st == 200
        return b.decode()

    def requests(self):
        return json.loads(http("GET", self.a("/admin/v1/requests"))[2])

    def endpoint(self, name):
        eps = json.loads(http("GET", self.a("/admin/v1/endpoints"))[2])["endpoints"]
        return next(e for e in eps if e["name"] == name)


def post_direct(port, path, obj):
    return http("POST", f"http://127.0.0.1:{port}{path}", json.dumps(obj),
                {"Content-Type": "application/json"})


def chat(model=MODEL, **kw):
    body = {"model": model, "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "hello there friend"}]}
    body.update(kw)
    return body


def sse(body):
    """SSE payloads of a de-chunked body, in order."""
    text = body.decode()
    assert text.endswith("\n\n"), text[-200:]
    return [e[len("data: "):] for e in text.split("\n\n") if e]


def strip_ids(payload):
    if payload == "[DONE]":
        return payload
    o = json.loads(payload)
    o.pop("id", None)
    o.pop("created", None)
    return o


def counter(text, name, **labels):
    """The value of one sample, 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[:line.rindex("}")]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_error(st, hdr, body, status, code=None, param=None):
    assert st == status, body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert re.fullmatch(r"[0-9a-f]{16}", hdr["X-Labman-Request-Id"])
    assert hdr["X-Labman-Node"]
    return err


def open_stream(port, obj, path="/v1/chat/completions", headers=""):
    """A raw streaming request; returns the socket once the status line came."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    req = json.dumps(obj).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
              b"Content-Length: %d\r\n\r\n" % (path.encode(), headers.encode(), len(req)) + req)
    return s


# ---------------------------------------------------------------------------


def test_models_union_and_lookup(procs, tmp_path):
    a, _ = devllm(procs, tmp_path, "ollama", models=f"{MODEL},llama3")
    b, _ = devllm(procs, tmp_path, "vllm", models=f"{MODEL},{OTHER}", port=None)
    n = Node(procs, tmp_path, [{"name": "a", "port": a}, {"name": "b", "port": b}])
    st, hdr, body = http("GET", n.u("/v1/models"))
    assert st == 200 and hdr["X-Labman-Node"] == "gw-1"
    lst = json.loads(body)
    assert lst["object"] == "list"
    ids = [m["id"] for m in lst["data"]]
    assert sorted(ids) == sorted([MODEL, "llama3:latest", OTHER])  # one entry per model
    for m in lst["data"]:
        assert m["object"] == "model" and m["owned_by"] == "gw-1"
        assert isinstance(m["created"], int) and m["context_length"] == 4096
        assert isinstance(m["loaded"], bool)
    st, _, body = http("GET", n.u("/v1/models/" + MODEL))
    assert st == 200 and json.loads(body)["id"] == MODEL
    # By alias, percent-encoded.
    st, _, body = http("GET", n.u("/v1/models/llama3%3Alatest"))
    assert st == 200 and json.loads(body)["id"] == "llama3:latest"
    assert_error(*http("GET", n.u("/v1/models/nope")), 404, "model_not_found")
    # An alias is rewritten to the runtime's name in the forwarded body.
    st, _, body = n.post("/v1/chat/completions", chat("llama3"))
    assert st == 200 and json.loads(body)["model"] == "llama3:latest"


FLAVOR_MODELS = {"ollama": MODEL, "llamacpp": MODEL, "vllm": MODEL, "openai": MODEL}


@pytest.mark.parametrize("flavor", ["ollama", "llamacpp", "vllm", "openai"])
def test_answers_equal_direct(procs, tmp_path, flavor):
    port, _ = devllm(procs, tmp_path, flavor)
    n = Node(procs, tmp_path, [{"name": "rt", "port": port, "kind": flavor}])
    model = FLAVOR_MODELS[flavor]

    # Non-streaming chat, completions (with suffix), embeddings: same content and usage.
    cases = [("/v1/chat/completions", chat(model, temperature=0.7, seed=3, unknown_field=[1])),
             ("/v1/completions", {"model": model, "prompt": "once upon", "suffix": "the end"}),
             ("/v1/embeddings", {"model": model, "input": ["a b", "c"], "dimensions": 8})]
    for path, body in cases:
        st, hdr, gw = n.post(path, body)
        dst, _, direct = post_direct(port, path, body)
        assert st == dst == 200, gw
        assert hdr["X-Labman-Route"] == "local" and hdr["X-Labman-Node"] == "gw-1"
        assert hdr["Content-Type"].startswith("application/json")
        g, d = json.loads(gw), json.loads(direct)
        for k in ("id", "created"):
            g.pop(k, None)
            d.pop(k, None)
        assert g == d

    # Streaming, without include_usage: the same events, no usage anywhere.
    for path, body in [("/v1/chat/completions", chat(model, stream=True)),
                       ("/v1/completions", {"model": model, "prompt": "x y", "stream": True})]:
        st, hdr, gw = n.post(path, body)
        assert st == 200 and hdr["Content-Type"].startswith("text/event-stream")
        _, _, direct = post_direct(port, path, body)
        g, d = sse(gw), sse(direct)
        assert [strip_ids(e) for e in g] == [strip_ids(e) for e in d]
        assert g[-1] == "[DONE]" and b'"usage"' not in gw

    # With include_usage asked: passed through as the runtime sent it.
    body = chat(model, stream=True, stream_options={"include_usage": True})
    _, _, gw = n.post("/v1/chat/completions", body)
    _, _, direct = post_direct(port, "/v1/chat/completions", body)
    g, d = sse(gw), sse(direct)
    assert [strip_ids(e) for e in g] == [strip_ids(e) for e in d]
    assert json.loads(g[-2])["choices"] == [] and json.loads(g[-2])["usage"]["total_tokens"] > 0

    # The tokens the runtime reported were counted.
    m = n.metrics()
    assert counter(m, "labman_tokens_total", direction="in", model=model) > 0
    assert counter(m, "labman_tokens_total", direction="out", model=model) > 0


def test_failover(procs, tmp_path):
    good, _ = devllm(procs, tmp_path, "openai")
    failing, _ = devllm(procs, tmp_path, "openai", "--fail-rate", "1")
    dropping, _ = devllm(procs, tmp_path, "openai", "--drop-connection")
    dying, dp = devllm(procs, tmp_path, "openai")
    # Two bad endpoints beside a good one: 3 attempts always reach the good one.
    n = Node(procs, tmp_path, [{"name": "good", "port": good}, {"name": "fail", "port": failing},
                               {"name": "dead", "port": dying}])
    n2 = Node(procs, tmp_path, [{"name": "good", "port": good},
                                {"name": "drop", "port": dropping}])
    dp.stop()  # seen healthy at the first check, refused from now on
    for node in (n, n2):
        for i in range(4):
            st, hdr, body = node.post("/v1/chat/completions", chat(stream=bool(i % 2)))
            assert st == 200, body
            assert hdr["X-Labman-Route"] == "local"
        m = node.metrics()
        assert counter(m, "labman_requests_total", route="chat_completions", endpoint="good",
                       status="200") == 4
        assert re.search(r"attempts=[23]", node.p.output())
    m = n.metrics()
    assert counter(m, "labman_upstream_errors_total", endpoint="fail", reason="status_5xx") >= 1
    assert counter(m, "labman_upstream_errors_total", endpoint="dead", reason="connect") >= 1
    assert counter(n2.metrics(), "labman_upstream_errors_total", endpoint="drop") >= 1

    # Only failing endpoints: at most 3 attempts, then 502 in OpenAI's shape.
    n3 = Node(procs, tmp_path, [{"name": "fail", "port": failing},
                                {"name": "drop", "port": dropping}])
    st, hdr, body = n3.post("/v1/chat/completions", chat())
    err = assert_error(st, hdr, body, 502, "upstream_error")
    assert "fail" in err["message"] or "drop" in err["message"]
    assert hdr["X-Labman-Route"] == "local"


def test_circuit_opens_and_closes(procs, tmp_path):
    good, _ = devllm(procs, tmp_path, "openai")
    bad_port = free_port()
    _, bad = devllm(procs, tmp_path, "openai", "--fail-rate", "1", port=bad_port)
    n = Node(procs, tmp_path, [{"name": "good", "port": good}, {"name": "bad", "port": bad_port}])
    for _ in range(12):
        assert n.post("/v1/chat/completions", chat())[0] == 200
        if n.endpoint("bad")["breaker"] == "open":
            break
    assert n.endpoint("bad")["breaker"] == "open"
    errors = counter(n.metrics(), "labman_upstream_errors_total", endpoint="bad")
    for _ in range(4):  # skipped while open: no more failed attempts on it
        assert n.post("/v1/chat/completions", chat())[0] == 200
    assert counter(n.metrics(), "labman_upstream_errors_total", endpoint="bad") == errors

    # The runtime recovers; after the open period one trial request closes it.
    bad.stop()
    devllm(procs, tmp_path, "openai", port=bad_port)
    deadline = time.monotonic() + 16
    while n.endpoint("bad")["breaker"] != "closed":
        assert time.monotonic() < deadline, n.endpoint("bad")
        assert n.post("/v1/chat/completions", chat())[0] == 200
        time.sleep(0.3)


def test_queue_then_429(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "llamacpp", "--tokens-per-sec", "20", "--max-tokens", "400")
    n = Node(procs, tmp_path, [{"name": "one", "port": port, "max_concurrent": 1}],
             gateway="first_token_timeout_s = 1\n")
    # A short request holds the only slot; the next one waits, then is served.
    s = open_stream(n.gw, chat(stream=True, max_tokens=6))
    time.sleep(0.1)
    t0 = time.monotonic()
    st, _, _ = n.post("/v1/chat/completions", chat(max_tokens=2))
    assert st == 200 and time.monotonic() - t0 >= 0.1
    assert n.requests()["in_flight"] <= 1
    s.close()
    # A long one holds it: the waiter gives up after the queue wait (1 s) with 429.
    s = open_stream(n.gw, chat(stream=True, max_tokens=200))
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    st, hdr, body = n.post("/v1/chat/completions", chat())
    assert_error(st, hdr, body, 429)
    assert hdr["Retry-After"] == "1"
    s.close()


def test_client_disconnect_cancels_upstream(procs, tmp_path):
    port, rt = devllm(procs, tmp_path, "vllm", "--tokens-per-sec", "20")
    n = Node(procs, tmp_path, [{"name": "v", "port": port, "kind": "vllm"}])
    s = open_stream(n.gw, chat(stream=True, max_tokens=1000))
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    reqs = n.requests()
    assert reqs["in_flight"] == 1
    r = reqs["requests"][0]
    assert r["model"] == MODEL and r["endpoint"] == "v" and r["stream"] and r["tokens"] >= 1
    assert re.fullmatch(r"[0-9a-f]{16}", r["id"]) and r["age_ms"] >= 0
    out = subprocess.run([binpath("labman"), "requests", "--admin", f"127.0.0.1:{n.admin}"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and r["id"] in out.stdout and "ID" in out.stdout
    out = subprocess.run([binpath("labman"), "requests", "--json", "--admin",
                          f"127.0.0.1:{n.admin}"], capture_output=True, text=True, timeout=10)
    assert json.loads(out.stdout)["requests"][0]["id"] == r["id"]
    running = f'vllm:num_requests_running{{model_name="{MODEL}"}}'
    assert f"{running} 1.0" in http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode()
    s.close()
    deadline = time.monotonic() + 2
    while f"{running} 0.0" not in http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode():
        assert time.monotonic() < deadline, "the runtime still generates for a gone client"
        time.sleep(0.02)
    deadline = time.monotonic() + 2
    while n.requests()["in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert counter(n.metrics(), "labman_requests_total", status="499") == 1
    assert "client went away" in rt.output()
    assert n.endpoint("v")["in_flight"] == 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_slow_client_bounded_memory(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "openai", "--max-tokens", "60000")
    n = Node(procs, tmp_path, [{"name": "fast", "port": port}])
    n.post("/v1/chat/completions", chat(max_tokens=2))  # warm up
    before = rss_kib(n.p.p.pid)
    s = open_stream(n.gw, chat(stream=True))
    time.sleep(1.5)  # read nothing while the runtime could send megabytes
    grown = rss_kib(n.p.p.pid) - before
    limit = 4096 * (8 if SANITIZED else 1)
    assert grown < limit, f"labmand grew by {grown} KiB for one stalled stream"
    total, tail = 0, b""
    s.settimeout(10)
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        total += len(chunk)
        tail = (tail + chunk)[-64:]
        if tail.endswith(b"\r\n0\r\n\r\n"):
            break
    s.close()
    assert b"data: [DONE]" in tail and total > 5_000_000


def test_stream_error_midway_and_nonstream_broken(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "openai", "--fail-after-tokens", "3")
    n = Node(procs, tmp_path, [{"name": "flaky", "port": port}])
    conn = httpclient.HTTPConnection("127.0.0.1", n.gw, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat(stream=True)),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    body = resp.read()  # a clean chunked end, or http.client raises
    events = sse(body)
    err = json.loads(events[-1])["error"]
    assert set(err) == {"message", "type", "param", "code"} and "flaky" in err["message"]
    assert sum('"content"' in e for e in events) == 4 and "[DONE]" not in events
    conn.close()
    # Non-streaming: nothing reached the client yet, so it is a 502 after the attempts.
    st, hdr, body = n.post("/v1/chat/completions", chat())
    assert_error(st, hdr, body, 502, "upstream_error")


def test_request_errors_and_headers(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "openai")
    n = Node(procs, tmp_path, [{"name": "rt", "port": port}], name="lab-x",
             gateway="max_body_bytes = 2048\n")
    c = "/v1/chat/completions"
    assert_error(*n.post(c, "{not json"), 400, "invalid_json")
    assert_error(*n.post(c, "[1,2]"), 400)
    assert_error(*n.post(c, {"messages": []}), 400, param="model")
    assert_error(*n.post(c, {"model": 5}), 400, param="model")
    assert_error(*n.post(c, chat(stream="yes")), 400, param="stream")
    err = assert_error(*n.post(c, chat("no-such-model")), 404, "model_not_found", "model")
    assert "GET /v1/models" in err["message"]
    st, hdr, _ = n.post(c, {"model": MODEL, "messages": [{"role": "user",
                                                         "content": "x" * 4000}]})
    assert st == 413
    assert_error(*http("GET", n.u("/v1/nothing")), 404, "unknown_url")
    st, hdr, body = http("GET", n.u(c))
    assert_error(st, hdr, body, 405)
    assert hdr["Allow"] == "POST"
    assert_error(*http("DELETE", n.u("/v1/models")), 405)

    # Pinning a node: this one by name or id prefix is served here, others are unknown.
    node_id = json.loads(http("GET", n.a("/admin/v1/status"))[2])["node_id"]
    for pin in ("lab-x", node_id[:8]):
        st, hdr, body = n.post(c, chat(f"{MODEL}@{pin}"))
        assert st == 200 and json.loads(body)["model"] == MODEL
        st, _, _ = n.post(c, chat(), headers={"X-Labman-Target": pin})
        assert st == 200
    err = assert_error(*n.post(c, chat(f"{MODEL}@elsewhere")), 404, "node_not_found")
    assert "elsewhere" in err["message"]
    assert_error(*n.post(c, chat(), headers={"X-Labman-Target": "elsewhere"}), 404)

    # Headers on success, request ids unique.
    ids = set()
    for _ in range(3):
        st, hdr, _ = n.post(c, chat())
        assert st == 200 and hdr["X-Labman-Node"] == "lab-x" and hdr["X-Labman-Route"] == "local"
        ids.add(hdr["X-Labman-Request-Id"])
    assert len(ids) == 3

    # One access-log line per request, with what an operator needs.
    rid = ids.pop()
    line = next(l for l in n.p.output().splitlines() if rid in l)
    for field in ("key=-", "POST", "/v1/chat/completions", f'model="{MODEL}"', "endpoint=rt",
                  "status=200", "in=5", "out=16", "attempts=1", "dur_ms="):
        assert field in line, line

    # Metrics moved, label values bounded to known models, and the text is valid.
    m = n.metrics()
    assert counter(m, "labman_requests_total", route="chat_completions", model=MODEL,
                   endpoint="rt", status="200") >= 7
    assert counter(m, "labman_requests_total", model="unknown", status="404") >= 2
    assert "no-such-model" not in m
    assert counter(m, "labman_requests_in_flight") == 0 or "labman_requests_in_flight 0" in m
    assert "labman_request_duration_seconds_bucket" in m
    if shutil.which("promtool") or os.path.exists("/usr/bin/promtool"):
        tool = shutil.which("promtool") or "/usr/bin/promtool"
        r = subprocess.run([tool, "check", "metrics"], input=m, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_auth_keys(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "openai")
    key = "lm-test-key-0123456789"
    sha = hashlib.sha256(key.encode()).hexdigest()
    n = Node(procs, tmp_path, [{"name": "rt", "port": port}], gateway=(
        'auth = "keys"\n'
        "[[gateway.keys]]\n"
        'name = "alice"\n'
        f'key_sha256 = "{sha}"\n'
        'models = ["llama*"]\n'
        "rpm = 3\n"))
    c = "/v1/chat/completions"
    assert_error(*n.post(c, chat()), 401)
    assert_error(*n.post(c, "{bad json"), 401)  # no key: nothing else is looked at
    assert_error(*n.post(c, chat(), {"Authorization": "Bearer nope"}), 401, "invalid_api_key")
    ok = {"Authorization": f"Bearer {key}"}
    assert_error(*n.post(c, chat(OTHER), ok), 403, "model_not_allowed")
    assert n.post(c, chat(), ok)[0] == 200
    assert http("GET", n.u("/v1/models"), headers=ok)[0] == 200
    assert_error(*http("GET", n.u("/v1/models")), 401)
    st, hdr, body = n.post(c, chat(), ok)
    assert st == 200
    st, hdr, body = n.post(c, chat(), ok)
    assert_error(st, hdr, body, 429)
    assert int(hdr["Retry-After"]) >= 1
    assert "key=alice" in n.p.output()


def test_auth_fep_unavailable(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "openai")
    n = Node(procs, tmp_path, [{"name": "rt", "port": port}], gateway='auth = "fep"\n',
             extra='[[feps]]\nid = "fep-test"\nurl = "http://127.0.0.1:9"\n'
                   f'public_key = "{"ab" * 32}"\nmax_unpaid = "1.00"\n')
    st, hdr, body = n.post("/v1/chat/completions", chat())
    err = assert_error(st, hdr, body, 503)
    assert "fep" in err["message"]


def test_reload_applies_limits(procs, tmp_path):
    port, _ = devllm(procs, tmp_path, "openai")
    n = Node(procs, tmp_path, [{"name": "rt", "port": port}])
    big = chat(messages=[{"role": "user", "content": "x " * 2000}])
    assert n.post("/v1/chat/completions", big)[0] == 200
    text = n.cfg.read_text().replace("[gateway]\n", "[gateway]\nmax_body_bytes = 1024\n")
    n.cfg.write_text(text)
    assert http("POST", n.a("/admin/v1/config/reload"))[0] == 200
    assert n.post("/v1/chat/completions", big)[0] == 413
    assert n.post("/v1/chat/completions", chat())[0] == 200
