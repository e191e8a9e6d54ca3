"""labman-devllm: each flavor's probes and answers, streaming shapes, exact
usage, keep_alive, concurrency limits, fault injection and bad input."""
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

from conftest import Proc, binpath, free_port, http, wait_port

MODEL = "llama3.2:1b"


def start(procs, tmp_path, flavor="openai", *extra, wait=True):
    port = free_port()
    args = [binpath("labman-devllm"), "--flavor", flavor, "--listen", f"127.0.0.1:{port}",
            "--models", f"{MODEL},qwen2.5:0.5b", "--log-level", "debug", *map(str, extra)]
    p = Proc(args, str(tmp_path / f"devllm-{flavor}-{port}.log"))
    procs.append(p)
    if wait:
        wait_port(port, p.p)
    return f"http://127.0.0.1:{port}", port, p


def post(url, obj, timeout=10.0):
    return http("POST", url, json.dumps(obj), {"Content-Type": "application/json"}, timeout)


def chat_body(**kw):
    body = {"model": MODEL, "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "hello  there\nfriend"}]}
    body.update(kw)
    return body


def raw(port, data, timeout=5.0, read_all=True):
    """Sends raw bytes; returns everything read until EOF or timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not read_all:
                break
        return out
    finally:
        s.close()


def sse_events(body):
    """Parses an SSE body (already de-chunked) into data payloads."""
    text = body.decode()
    assert text.endswith("\n\n")
    events = [e for e in text.split("\n\n") if e]
    for e in events:
        assert e.startswith("data: "), e
    return [e[len("data: "):] for e in events]


def assert_openai_error(status, body, code):
    assert status == code
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]


def test_openai_chat_nonstream_shape_and_usage(procs, tmp_path):
    url, _, _ = start(procs, tmp_path, "openai")
    st, hdr, body = post(url + "/v1/chat/completions", chat_body())
    assert st == 200 and hdr["Content-Type"].startswith("application/json")
    r = json.loads(body)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    assert r["model"] == MODEL and isinstance(r["created"], int)
    ch = r["choices"][0]
    assert ch["index"] == 0 and ch["message"]["role"] == "assistant"
    assert ch["finish_reason"] == "stop"
    words = ch["message"]["content"].split()
    assert len(words) == 16
    # "be brief" + "hello there friend" = 5 words
    assert r["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
    # Deterministic: same request, same text; different prompt, different text.
    _, _, again = post(url + "/v1/chat/completions", chat_body())
    assert json.loads(again)["choices"][0]["message"]["content"] == ch["message"]["content"]
    _, _, other = post(url + "/v1/chat/completions",
                       chat_body(messages=[{"role": "user", "content": "something else"}]))
    assert json.loads(other)["choices"][0]["message"]["content"] != ch["message"]["content"]
    # max_tokens and max_completion_tokens cut the answer with "length".
    for key in ("max_tokens", "max_completion_tokens"):
        _, _, b = post(url + "/v1/chat/completions", chat_body(**{key: 3}))
        r = json.loads(b)
        assert r["choices"][0]["finish_reason"] == "length"
        assert len(r["choices"][0]["message"]["content"].split()) == 3
        assert r["usage"]["completion_tokens"] == 3


def test_openai_chat_stream_shapes(procs, tmp_path):
    url, _, _ = start(procs, tmp_path, "openai")
    for include_usage in (False, True):
        body = chat_body(stream=True, max_tokens=5)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        st, hdr, raw_body = post(url + "/v1/chat/completions", body)
        assert st == 200 and hdr["Content-Type"] == "text/event-stream"
        events = sse_events(raw_body)
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        ids = {c["id"] for c in chunks}
        assert len(ids) == 1
        for c in chunks:
            assert c["object"] == "chat.completion.chunk" and c["model"] == MODEL
            assert ("usage" in c) == include_usage
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        usage_chunks = [c for c in chunks if c["choices"] == []]
        if include_usage:
            assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
            assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 5,
                                           "total_tokens": 10}
            chunks = chunks[:-1]
        else:
            assert not usage_chunks
        final = chunks[-1]["choices"][0]
        assert final["delta"] == {} and final["finish_reason"] == "length"
        content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert len(content.split()) == 5
        for c in chunks[:-1]:
            assert c["choices"][0]["finish_reason"] is None
        # Streamed text equals the non-streamed text.
        _, _, nb = post(url + "/v1/chat/completions", chat_body(max_tokens=5))
        assert json.loads(nb)["choices"][0]["message"]["content"] == content


def test_openai_completions_suffix_models_errors(procs, tmp_path):
    url, _, _ = start(procs, tmp_path, "openai")
    st, _, b = post(url + "/v1/completions", {"model": MODEL, "prompt": "one two three",
                                               "suffix": "four five", "max_tokens": 4})
    r = json.loads(b)
    assert st == 200 and r["object"] == "text_completion"
    assert r["choices"][0]["finish_reason"] == "length"
    assert len(r["choices"][0]["text"].split()) == 4
    assert r["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    _, _, b2 = post(url + "/v1/completions", {"model": MODEL, "prompt": "one two three",
                                               "max_tokens": 4})
    assert json.loads(b2)["choices"][0]["text"] != r["choices"][0]["text"]
    st, _, b = post(url + "/v1/completions", {"model": MODEL, "prompt": "x", "stream": True})
    events = sse_events(b)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    st, _, b = http("GET", url + "/v1/models")
    ids = [m["id"] for m in json.loads(b)["data"]]
    assert st == 200 and ids == [MODEL, "qwen2.5:0.5b"]
    st, _, b = post(url + "/v1/chat/completions", chat_body(model="nope"))
    assert_openai_error(st, b, 404)
    assert json.loads(b)["error"]["code"] == "model_not_found"
    st, _, b = http("POST", url + "/v1/chat/completions", "{not json")
    assert_openai_error(st, b, 400)
    st, _, b = post(url + "/v1/chat/completions", {"model": MODEL})
    assert_openai_error(st, b, 400)
    st, _, b = post(url + "/v1/chat/completions", chat_body(max_tokens=-1))
    assert_openai_error(st, b, 400)
    st, _, b = http("GET", url + "/api/tags")
    assert_openai_error(st, b, 404)
    st, _, _ = http("GET", url + "/health")
    assert st == 404


def test_embeddings(procs, tmp_path):
    url, _, _ = start(procs, tmp_path, "openai")
    st, _, b = post(url + "/v1/embeddings", {"model": MODEL, "input": "hello world"})
    r = json.loads(b)
    assert st == 200 and r["object"] == "list" and len(r["data"]) == 1
    v = r["data"][0]["embedding"]
    assert len(v) == 768 and abs(sum(x * x for x in v) - 1.0) < 1e-4
    assert r["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    st, _, b = post(url + "/v1/embeddings", {"model": MODEL, "input": ["hello world", "x", "hello world"],
                                              "dimensions": 8})
    d = json.loads(b)["data"]
    assert [e["index"] for e in d] == [0, 1, 2] and all(len(e["embedding"]) == 8 for e in d)
    assert d[0]["embedding"] == d[2]["embedding"] != d[1]["embedding"]
    st, _, b = post(url + "/v1/embeddings", {"model": MODEL, "input": "a", "dimensions": 4,
                                              "encoding_format": "base64"})
    import base64
    import struct
    vec = struct.unpack("<4f", base64.b64decode(json.loads(b)["data"][0]["embedding"]))
    _, _, fb = post(url + "/v1/embeddings", {"model": MODEL, "input": "a", "dimensions": 4})
    assert all(abs(a - b) < 1e-6 for a, b in zip(vec, json.loads(fb)["data"][0]["embedding"]))
    st, _, b = post(url + "/v1/embeddings", {"model": MODEL, "input": 5})
    assert_openai_error(st, b, 400)
    st, _, b = post(url + "/v1/embeddings", {"model": MODEL, "input": "a", "dimensions": 0})
    assert_openai_error(st, b, 400)


def ndjson(body):
    return [json.loads(line) for line in body.decode().splitlines() if line]


def test_ollama_native(procs, tmp_path):
    url, _, _ = start(procs, tmp_path, "ollama")
    st, _, b = http("GET", url + "/api/version")
    assert st == 200 and "version" in json.loads(b)
    st, _, b = http("GET", url + "/api/tags")
    models = json.loads(b)["models"]
    assert [m["name"] for m in models] == [MODEL, "qwen2.5:0.5b"]
    for m in models:
        assert m["model"] == m["name"] and m["size"] > 0
        assert re.fullmatch(r"[0-9a-f]{64}", m["digest"]) and m["modified_at"]
        assert set(m["details"]) >= {"format", "family", "families", "parameter_size",
                                     "quantization_level"}
    assert models[0]["details"]["family"] == "llama"
    assert json.loads(http("GET", url + "/api/ps")[2])["models"] == []

    st, hdr, b = post(url + "/api/chat", {"model": MODEL, "messages": [
        {"role": "user", "content": "why is the sky blue"}], "options": {"num_predict": 4}})
    assert st == 200 and hdr["Content-Type"] == "application/x-ndjson"
    lines = ndjson(b)
    assert len(lines) == 5 and all(not x["done"] for x in lines[:-1])
    assert all(x["message"]["role"] == "assistant" for x in lines)
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "length"
    assert last["prompt_eval_count"] == 5 and last["eval_count"] == 4
    for k in ("total_duration", "load_duration", "eval_duration", "prompt_eval_duration"):
        assert isinstance(last[k], int)
    text = "".join(x["message"]["content"] for x in lines)
    st, hdr, b = post(url + "/api/chat", {"model": MODEL, "stream": False, "messages": [
        {"role": "user", "content": "why is the sky blue"}], "options": {"num_predict": 4}})
    one = json.loads(b)
    assert one["done"] and one["message"]["content"] == text and one["eval_count"] == 4

    st, _, b = post(url + "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "a b c"})
    lines = ndjson(b)
    assert "".join(x["response"] for x in lines[:-1]).count(" ") == 15
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 16
    assert lines[-1]["prompt_eval_count"] == 3

    ps = json.loads(http("GET", url + "/api/ps")[2])["models"]
    assert sorted(m["name"] for m in ps) == [MODEL, "qwen2.5:0.5b"]
    assert all(m["expires_at"] and m["size_vram"] > 0 for m in ps)
    # keep_alive 0 with an empty prompt unloads.
    st, _, b = post(url + "/api/generate", {"model": "qwen2.5:0.5b", "keep_alive": 0})
    r = json.loads(b)
    assert st == 200 and r["done"] and r["done_reason"] == "unload"
    ps = json.loads(http("GET", url + "/api/ps")[2])["models"]
    assert [m["name"] for m in ps] == [MODEL]
    st, _, b = post(url + "/api/chat", {"model": MODEL, "messages": [], "keep_alive": "0s"})
    assert json.loads(b)["done_reason"] == "unload"
    assert json.loads(http("GET", url + "/api/ps")[2])["models"] == []
    # An empty prompt otherwise loads; a short keep_alive expires.
    st, _, b = post(url + "/api/generate", {"model": MODEL, "keep_alive": "300ms"})
    assert json.loads(b)["done_reason"] == "load"
    assert len(json.loads(http("GET", url + "/api/ps")[2])["models"]) == 1
    time.sleep(0.4)
    assert json.loads(http("GET", url + "/api/ps")[2])["models"] == []

    st, _, b = post(url + "/api/show", {"model": MODEL})
    assert st == 200 and json.loads(b)["details"]["family"] == "llama"
    st, _, b = post(url + "/api/chat", {"model": "missing", "messages": []})
    assert st == 404 and "not found" in json.loads(b)["error"]
    st, _, b = http("POST", url + "/api/generate", "][")
    assert st == 400 and isinstance(json.loads(b)["error"], str)
    st, _, b = post(url + "/api/embed", {"model": MODEL, "input": ["a", "b c"]})
    r = json.loads(b)
    assert len(r["embeddings"]) == 2 and r["prompt_eval_count"] == 3
    # Ollama also serves the OpenAI routes.
    st, _, b = post(url + "/v1/chat/completions", chat_body(model="llama3.2:1b"))
    assert st == 200 and json.loads(b)["usage"]["prompt_tokens"] == 5
    assert json.loads(http("GET", url + "/v1/models")[2])["data"][0]["owned_by"] == "library"
    assert http("GET", url + "/nothing")[0] == 404
    assert http("GET", url + "/")[2] == b"Ollama is running"


def test_llamacpp_probes_and_loading(procs, tmp_path):
    url, port, _ = start(procs, tmp_path, "llamacpp", "--load-ms", "700", "--max-concurrent", "2")
    st, _, b = http("GET", url + "/health")
    assert st == 503
    assert json.loads(b) == {"error": {"code": 503, "message": "Loading model",
                                       "type": "unavailable_error"}}
    st, _, b = post(url + "/v1/chat/completions", chat_body())
    assert st == 503
    time.sleep(0.8)
    st, _, b = http("GET", url + "/health")
    assert st == 200 and json.loads(b) == {"status": "ok"}
    props = json.loads(http("GET", url + "/props")[2])
    assert props["total_slots"] == 2 and props["model_path"].endswith(".gguf")
    assert props["default_generation_settings"]["n_ctx"] == 4096
    slots = json.loads(http("GET", url + "/slots")[2])
    assert len(slots) == 2 and not slots[0]["is_processing"]
    data = json.loads(http("GET", url + "/v1/models")[2])["data"]
    assert len(data) == 1 and data[0]["owned_by"] == "llamacpp"
    # llama-server answers whatever model is named.
    st, _, b = post(url + "/v1/chat/completions", chat_body(model="whatever"))
    assert st == 200 and json.loads(b)["model"] == MODEL
    st, _, b = http("GET", url + "/api/tags")
    assert st == 404 and json.loads(b)["error"]["code"] == 404


def test_vllm_probes_and_metrics_on_disconnect(procs, tmp_path):
    url, port, p = start(procs, tmp_path, "vllm", "--tokens-per-sec", "20")
    assert http("GET", url + "/health")[0] == 200
    assert "version" in json.loads(http("GET", url + "/version")[2])
    data = json.loads(http("GET", url + "/v1/models")[2])["data"]
    assert data[0]["max_model_len"] == 4096 and data[0]["owned_by"] == "vllm"
    st, _, b = http("GET", url + "/metrics")
    text = b.decode()
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in text
    assert "vllm:num_requests_waiting" in text
    assert http("GET", url + "/api/tags")[0] == 404
    # A streaming request is running; closing the client frees it at once.
    s = socket.create_connection(("127.0.0.1", port))
    req = json.dumps(chat_body(stream=True, max_tokens=1000)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(req) + req)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    text = http("GET", url + "/metrics")[2].decode()
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 1.0' in text
    s.close()
    time.sleep(0.2)
    text = http("GET", url + "/metrics")[2].decode()
    assert f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0' in text
    assert "client went away mid-request" in p.output()


def hold_streams(port, n):
    socks = []
    req = json.dumps(chat_body(stream=True, max_tokens=1000)).encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                  % len(req) + req)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(s)
    return socks


@pytest.mark.parametrize("flavor,code", [("openai", 429), ("vllm", 429), ("llamacpp", 503),
                                         ("ollama", 503)])
def test_max_concurrent(procs, tmp_path, flavor, code):
    url, port, _ = start(procs, tmp_path, flavor, "--max-concurrent", "2", "--tokens-per-sec", "10")
    socks = hold_streams(port, 2)
    st, hdr, b = post(url + "/v1/chat/completions", chat_body())
    assert st == code and hdr.get("Retry-After") == "1"
    assert "error" in json.loads(b)
    if flavor == "ollama":
        st, _, b = post(url + "/api/generate", {"model": MODEL, "prompt": "x"})
        assert st == 503 and "busy" in json.loads(b)["error"]
    for s in socks:
        s.close()
    time.sleep(0.1)
    assert post(url + "/v1/chat/completions", chat_body())[0] == 200


def test_fault_fail_rate(procs, tmp_path):
    url, _, _ = start(procs, tmp_path, "openai", "--fail-rate", "1")
    st, _, b = post(url + "/v1/chat/completions", chat_body())
    assert_openai_error(st, b, 500)
    assert http("GET", url + "/v1/models")[0] == 200
    url, _, _ = start(procs, tmp_path, "openai", "--fail-rate", "0.5", "--seed", "7")
    codes = [post(url + "/v1/chat/completions", chat_body())[0] for _ in range(40)]
    assert set(codes) == {200, 500} and 8 <= codes.count(500) <= 32


def read_http_stream(port, body, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    req = json.dumps(body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(req)
              + req)
    out, times = b"", []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        times.append((time.monotonic(), chunk))
        out += chunk
        if out.endswith(b"\r\n0\r\n\r\n"):
            break
    s.close()
    return out, times


def test_fault_fail_after_tokens(procs, tmp_path):
    url, port, _ = start(procs, tmp_path, "openai", "--fail-after-tokens", "3")
    out, _ = read_http_stream(port, chat_body(stream=True))
    assert out.count(b'"content":"') == 4  # the role chunk's "" and 3 tokens
    assert b"[DONE]" not in out and not out.endswith(b"0\r\n\r\n")
    # Non-streaming: the connection closes with no answer.
    out = raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
        len(json.dumps(chat_body())), json.dumps(chat_body()).encode()))
    assert out == b""


def test_fault_stall_and_ttft(procs, tmp_path):
    url, port, _ = start(procs, tmp_path, "openai", "--stall-ms", "400", "--ttft-ms", "100",
                         "--tokens-per-sec", "200", "--max-tokens", "6")
    t0 = time.monotonic()
    out, times = read_http_stream(port, chat_body(stream=True))
    assert out.endswith(b"0\r\n\r\n") and b"[DONE]" in out
    gaps = [b[0] - a[0] for a, b in zip(times, times[1:])]
    assert max(gaps) >= 0.35
    first_token = next(t for t, c in times if b'"content":"' in c and b'role' not in c
                       or c.count(b'"content":"') > 1)
    assert first_token - t0 >= 0.09
    assert time.monotonic() - t0 < 3


def test_fault_drop_connection(procs, tmp_path):
    url, port, _ = start(procs, tmp_path, "openai", "--drop-connection")
    body = json.dumps(chat_body()).encode()
    out = raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    assert out == b""
    assert http("GET", url + "/v1/models")[0] == 200


def test_bad_http_and_limits(procs, tmp_path):
    url, port, p = start(procs, tmp_path, "openai", "--max-body-bytes", "10000")
    for junk in (b"GARBAGE\r\n\r\n", b"GET /v1/models HTTP/9.9\r\n\r\n",
                 b"GET /v1/models HTTP/1.1\r\nno colon here\r\n\r\n",
                 b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                 b"\x00\xff\x01\r\n\r\n"):
        out = raw(port, junk)
        assert re.match(rb"HTTP/1.1 (400|505) ", out), (junk, out)
    out = raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 20000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")
    out = raw(port, b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    out = raw(port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 414 ")
    # Malformed JSON is a 400 on a connection that stays usable (keep-alive).
    body = b"{\"model\": [1,"
    two = (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
           + b"GET /v1/models HTTP/1.1\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(two)
    out = b""
    while out.count(b"HTTP/1.1 ") < 2 or not out.endswith(b"]}"):
        chunk = s.recv(65536)
        assert chunk
        out += chunk
    s.close()
    assert out.startswith(b"HTTP/1.1 400 ") and b"HTTP/1.1 200 OK" in out
    # Pipelined requests are answered in order; a half-sent request waits.
    req = json.dumps(chat_body(max_tokens=2)).encode()
    one = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(req), req)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(one * 3 + one[:30])
    out = b""
    while out.count(b'"total_tokens"') < 3:
        out += s.recv(65536)
    s.sendall(one[30:] + b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n")
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    assert out.count(b"HTTP/1.1 200 OK") == 5 and out.endswith(b"]}")
    # Expect: 100-continue gets its interim answer.
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\n"
              b"Content-Length: %d\r\n\r\n" % len(req))
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(req)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
    s.close()
    assert http("GET", url + "/v1/models")[0] == 200
    assert p.p.poll() is None


def test_sigterm_exits_zero_while_streaming(procs, tmp_path):
    url, port, p = start(procs, tmp_path, "openai", "--tokens-per-sec", "5")
    socks = hold_streams(port, 3)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    assert p.wait(5) == 0 and time.monotonic() - t0 < 2
    for s in socks:
        s.close()


def test_help_and_bad_options():
    import subprocess
    r = subprocess.run([binpath("labman-devllm"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--flavor", "--listen", "--models", "--tokens-per-sec", "--ttft-ms",
                "--max-tokens", "--max-concurrent", "--fail-rate", "--fail-after-tokens",
                "--stall-ms", "--drop-connection", "--load-ms", "--seed"):
        assert opt in r.stdout
    for bad in (["--flavor", "x"], ["--fail-rate", "2"], ["--max-tokens", "-1"],
                ["--listen", "nope"], ["--models", "bad name"]):
        r = subprocess.run([binpath("labman-devllm"), *bad], capture_output=True, text=True)
        assert r.returncode == 2, bad
