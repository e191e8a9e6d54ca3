"""Requests across the mesh: a gateway node with no runtime of its own,
provider nodes in front of labman-devllm. Answers equal the provider's
local ones event for event; cancellation, provider death, failover, pins,
usage and the operator's view."""
import json
import re
import socket
import time

from conftest import Proc, binpath, free_port, http, wait_port
from meshnet import Node, wait_for

MODEL = "llama3.2:1b"


def devllm(procs, tmp_path, *extra, flavor="openai"):
    port = free_port()
    p = Proc([binpath("labman-devllm"), "--flavor", flavor, "--listen", f"127.0.0.1:{port}",
              "--models", MODEL, "--log-level", "debug", *map(str, extra)],
             str(tmp_path / f"devllm-{port}.log"))
    procs.append(p)
    wait_port(port, p.p)
    return port, p


def chat(**kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there friend"}]}
    body.update(kw)
    return body


def post(port, path, obj, headers=None, timeout=10.0):
    return http("POST", f"http://127.0.0.1:{port}{path}", json.dumps(obj),
                {"Content-Type": "application/json", **(headers or {})}, timeout)


def sse(body):
    text = body.decode()
    assert text.endswith("\n\n"), text[-300:]
    return [e[len("data: "):] for e in text.split("\n\n") if e]


def strip_ids(payload):
    if payload == "[DONE]":
        return payload
    o = json.loads(payload)
    o.pop("id", None)
    o.pop("created", None)
    return o


def mesh(tmp_path, procs, providers=1, provider_extra=(), flavor="openai", extras=None):
    """Gateway G (no runtime) and providers P1..Pn, each with a devllm;
    every node trusts every other; all bootstrap to G."""
    g = Node(tmp_path, "gw")
    ps = [Node(tmp_path, f"prov-{i + 1}") for i in range(providers)]
    rts = [devllm(procs, tmp_path, *provider_extra, flavor=flavor) for _ in ps]
    ids = [g.id] + [p.id for p in ps]
    g.write(trusted=[x for x in ids if x != g.id], roles=("gateway",))
    for i, (p, (port, _)) in enumerate(zip(ps, rts)):
        p.write(trusted=[x for x in ids if x != p.id], bootstrap=[g],
                roles=("gateway", "provider"),
                endpoints=[{"name": "rt", "port": port, "kind": flavor}], route="local_only",
                extra=extras[i] if extras else "")
    g.start(procs)
    for p in ps:
        p.start(procs)
    # Ready when G sees every provider's model in its catalogue.
    def models_seen():
        st, _, b = http("GET", f"http://127.0.0.1:{g.gw}/v1/models")
        if st != 200:
            return False
        nodes = [n["node_id"] for m in json.loads(b)["data"] for n in m.get("nodes", [])]
        return sorted(nodes) == sorted(p.id for p in ps)
    wait_for(models_seen, timeout=15, what="the providers' models at the gateway")
    return g, ps, rts


def test_answers_across_the_mesh_equal_local(tmp_path, procs):
    g, (p,), _ = mesh(tmp_path, procs)
    # /v1/models lists the mesh model with the node serving it.
    st, _, b = http("GET", f"http://127.0.0.1:{g.gw}/v1/models")
    m = json.loads(b)["data"]
    assert [x["id"] for x in m] == [MODEL]
    assert m[0]["nodes"][0]["node_id"] == p.id and m[0]["nodes"][0]["name"] == "prov-1"

    cases = [("/v1/chat/completions", chat(temperature=0.5, seed=2, unknown_field=[1])),
             ("/v1/completions", {"model": MODEL, "prompt": "once upon", "suffix": "the end"}),
             ("/v1/embeddings", {"model": MODEL, "input": ["a b", "c"], "dimensions": 8})]
    for path, body in cases:
        st, hdr, via = post(g.gw, path, body)
        lst, _, local = post(p.gw, path, body)
        assert st == lst == 200, via
        assert hdr["X-Labman-Route"] == "direct" and hdr["X-Labman-Node"] == "prov-1"
        a, b_ = json.loads(via), json.loads(local)
        for k in ("id", "created"):
            a.pop(k, None)
            b_.pop(k, None)
        assert a == b_

    # Streaming: event for event, with and without include_usage.
    for body in (chat(stream=True), chat(stream=True, stream_options={"include_usage": True}),
                 {"model": MODEL, "prompt": "x y", "stream": True}):
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        st, hdr, via = post(g.gw, path, body)
        _, _, local = post(p.gw, path, body)
        assert st == 200 and hdr["Content-Type"].startswith("text/event-stream")
        assert [strip_ids(e) for e in sse(via)] == [strip_ids(e) for e in sse(local)]

    # Usage was counted at the gateway, exactly (injected and stripped).
    st, _, metrics = http("GET", f"http://127.0.0.1:{g.admin}/metrics")
    assert re.search(rb'labman_tokens_total\{[^}]*direction="out"[^}]*\} [1-9]', metrics), \
        metrics
    assert re.search(rb'labman_mesh_requests_total\{side="gateway",result="ok"\} [1-9]', metrics)
    st, _, pm = http("GET", f"http://127.0.0.1:{p.admin}/metrics")
    assert re.search(rb'labman_mesh_requests_total\{side="provider",result="ok"\} [1-9]', pm)
    assert f"endpoint=@prov-1" in g.log() or "@prov-1" in g.log()


def test_cancel_reaches_the_providers_runtime(tmp_path, procs):
    g, (p,), [(port, rt)] = mesh(tmp_path, procs, provider_extra=("--tokens-per-sec", 20),
                                 flavor="vllm")
    s = socket.create_connection(("127.0.0.1", g.gw), timeout=10)
    req = json.dumps(chat(stream=True, max_tokens=1000)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(req) + req)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    running = f'vllm:num_requests_running{{model_name="{MODEL}"}}'
    assert f"{running} 1.0" in http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode()
    s.close()
    wait_for(lambda: f"{running} 0.0" in
             http("GET", f"http://127.0.0.1:{port}/metrics")[2].decode(),
             timeout=3, what="the provider's runtime to stop generating")
    assert "client went away" in rt.output()


def test_provider_killed_midway_ends_the_stream_cleanly(tmp_path, procs):
    g, (p,), _ = mesh(tmp_path, procs, provider_extra=("--tokens-per-sec", 20))
    s = socket.create_connection(("127.0.0.1", g.gw), timeout=10)
    req = json.dumps(chat(stream=True, max_tokens=1000)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(req) + req)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(4096)
    p.proc.p.kill()
    p.proc.p.wait()
    s.settimeout(10)
    while not got.endswith(b"0\r\n\r\n"):
        chunk = s.recv(4096)
        assert chunk, "the gateway closed without ending the stream"
        got += chunk
    body = got.decode()
    assert '"error"' in body and "failed mid-stream" in body
    s.close()


def test_failover_to_the_next_provider(tmp_path, procs):
    g = Node(tmp_path, "gw")
    bad, good = Node(tmp_path, "prov-bad"), Node(tmp_path, "prov-good")
    bport, _ = devllm(procs, tmp_path, "--fail-rate", 1)
    gport, _ = devllm(procs, tmp_path)
    ids = [g.id, bad.id, good.id]
    g.write(trusted=[bad.id, good.id], roles=("gateway",))
    for n, port in ((bad, bport), (good, gport)):
        n.write(trusted=[x for x in ids if x != n.id], bootstrap=[g], roles=("provider",),
                endpoints=[{"name": "rt", "port": port}])
    for n in (g, bad, good):
        n.start(procs)
    wait_for(lambda: len(g.connected()) == 2, what="both providers connected")
    wait_for(lambda: len(json.loads(http("GET", f"http://127.0.0.1:{g.gw}/v1/models")[2])
                         ["data"][0].get("nodes", [])) == 2 if json.loads(
        http("GET", f"http://127.0.0.1:{g.gw}/v1/models")[2])["data"] else False,
        what="both providers' models")
    for _ in range(4):
        st, hdr, b = post(g.gw, "/v1/chat/completions", chat())
        assert st == 200, b
        assert hdr["X-Labman-Node"] == "prov-good"


def test_pinned_node_and_unknown_node(tmp_path, procs):
    g, ps, _ = mesh(tmp_path, procs, providers=2)
    for p in ps:
        for body, hdrs in ((chat(model=f"{MODEL}@{p.name}"), None),
                           (chat(), {"X-Labman-Target": p.id[:12]})):
            st, hdr, b = post(g.gw, "/v1/chat/completions", body, hdrs)
            assert st == 200, b
            assert hdr["X-Labman-Node"] == p.name
    st, _, b = post(g.gw, "/v1/chat/completions", chat(model=f"{MODEL}@nowhere"))
    assert st == 404 and json.loads(b)["error"]["code"] == "node_not_found"


def test_local_only_never_leaves_the_node(tmp_path, procs):
    g, (p,), _ = mesh(tmp_path, procs)
    # The provider's own gateway is local_only: with its runtime it serves
    # locally; the gateway node in local_only has nothing to serve with.
    g.write(trusted=[p.id], roles=("gateway",), route="local_only")
    g.proc.signal(__import__("signal").SIGHUP)
    wait_for(lambda: "config reloaded" in g.log(), what="reload")
    st, _, b = post(g.gw, "/v1/chat/completions", chat())
    assert st == 404, b
    st, _, b = http("GET", f"http://127.0.0.1:{g.gw}/v1/models")
    assert json.loads(b)["data"] == []


def test_through_a_relay(tmp_path, procs):
    """Neither the gateway nor the provider can be dialed (no advertised
    address): both keep a connection to the relay, which splices a circuit;
    TLS runs end to end inside it."""
    g, r, p = Node(tmp_path, "gw"), Node(tmp_path, "relay"), Node(tmp_path, "prov")
    port, _ = devllm(procs, tmp_path)
    ids = [g.id, r.id, p.id]
    r.write(trusted=[g.id, p.id], roles=("relay",))
    g.write(trusted=[r.id, p.id], bootstrap=[r], roles=("gateway",), advertise=[])
    p.write(trusted=[r.id, g.id], bootstrap=[r], roles=("provider",), advertise=[],
            endpoints=[{"name": "rt", "port": port}])
    for n in (r, g, p):
        n.start(procs)
    wait_for(lambda: p.id in g.connected(), timeout=15, what="G reaching P through R")
    peers = {x["node_id"]: x for x in g.peers()["peers"]}
    assert peers[p.id]["path"] == "relay via relay"
    assert peers[r.id]["path"] == "direct"
    wait_for(lambda: json.loads(http("GET", f"http://127.0.0.1:{g.gw}/v1/models")[2])["data"],
             what="P's model at G")
    st, hdr, via = post(g.gw, "/v1/chat/completions", chat(stream=True))
    assert st == 200, via
    assert hdr["X-Labman-Route"] == "relay" and hdr["X-Labman-Node"] == "prov"
    direct = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                  json.dumps(chat(stream=True)), {"Content-Type": "application/json"})[2]
    assert [strip_ids(e) for e in sse(via)] == [strip_ids(e) for e in sse(direct)]
    # The relay carried it and saw only ciphertext: the answer's text never
    # appears in what it logged, and its metrics count one circuit.
    st, _, m = http("GET", f"http://127.0.0.1:{r.admin}/metrics")
    assert re.search(rb"labman_mesh_circuits_total [1-9]", m), m
    assert "relaying" in r.log()


def test_the_cheaper_provider_wins_and_a_restarted_one_rejoins(tmp_path, procs):
    prices = ['[[prices]]\nmodel = "*"\nper_1k_in = "0.001"\nper_1k_out = "0.009"\n',
              '[[prices]]\nmodel = "llama*"\nper_1k_in = "0.001"\nper_1k_out = "0.002"\n']
    g, (dear, cheap), _ = mesh(tmp_path, procs, providers=2, extras=prices)
    for _ in range(4):
        st, hdr, b = post(g.gw, "/v1/chat/completions", chat())
        assert st == 200, b
        assert hdr["X-Labman-Node"] == cheap.name
    # The cheap one goes away: the other serves; it comes back: it serves again.
    cheap.proc.stop()
    wait_for(lambda: cheap.id not in g.connected(), what="G noticing the provider left")
    st, hdr, b = post(g.gw, "/v1/chat/completions", chat())
    assert st == 200 and hdr["X-Labman-Node"] == dear.name, b
    cheap.start(procs)
    wait_for(lambda: cheap.id in g.connected(), timeout=15, what="the provider rejoining")
    def served_by_cheap():
        st, hdr, _ = post(g.gw, "/v1/chat/completions", chat())
        return st == 200 and hdr["X-Labman-Node"] == cheap.name
    wait_for(served_by_cheap, timeout=10, what="requests going to the rejoined provider")


def test_market_records_carry_the_gateways_demand(tmp_path, procs):
    g, p = Node(tmp_path, "gw"), Node(tmp_path, "prov")
    port, _ = devllm(procs, tmp_path)
    g.write(trusted=[p.id], roles=("gateway",))
    p.write(trusted=[g.id], bootstrap=[g], roles=("provider",),
            endpoints=[{"name": "rt", "port": port}])
    g.start(procs, env={"LABMAN_MARKET_WINDOW_S": "1"})
    p.start(procs)
    wait_for(lambda: json.loads(http("GET", f"http://127.0.0.1:{g.gw}/v1/models")[2])["data"],
             what="P's model at G")
    for _ in range(3):
        st, _, b = post(g.gw, "/v1/chat/completions", chat(stream=True))
        assert st == 200, b
    st, _, b = post(g.gw, "/v1/chat/completions", chat(model="nobody-has-this"))
    assert st == 404
    def demand_at_p():
        peers = {x["node_id"]: x for x in p.peers()["peers"]}
        return peers.get(g.id, {}).get("demand")
    d = wait_for(demand_at_p, timeout=10, what="G's market record at P")
    assert [x["model"] for x in d] == [MODEL]
    assert d[0]["requests"] == 3 and d[0]["unserved"] == 0
    assert d[0]["tokens_in"] > 0 and d[0]["tokens_out"] > 0 and "p50_ttft_ms" in d[0]
