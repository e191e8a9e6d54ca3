"""Gateway auth = "keys": keys made by `labman key new`, 401/403/429 in
OpenAI's error shape with Retry-After, rpm/tpm/max_concurrent, reload
without restart, and keys never reaching labmand's log."""
import hashlib
from http.client import HTTPConnection
import json
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import Proc, binpath, free_port, http, wait_port

MODELS = "llama3.2:1b,qwen2.5:7b"
KEY_RE = re.compile(r"^lm-[A-Za-z0-9_-]{43}$")


def key_new(name, *args):
    """Runs `labman key new`; returns (key, stanza) parsed from its output."""
    r = subprocess.run([binpath("labman"), "key", "new", name, *args], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert KEY_RE.match(lines[0]), r.stdout
    assert "only this once" in r.stdout.split("[[gateway.keys]]")[0]
    stanza = r.stdout[r.stdout.index("[[gateway.keys]]"):]
    assert lines[0] not in stanza
    return lines[0], stanza


class Gateway:
    """labman-devllm plus labmand with auth = "keys" in front of it."""

    def __init__(self, tmp_path, procs, stanzas, devllm_args=(), auth="keys", extra=""):
        self.tmp_path = tmp_path
        self.procs = procs
        dport = free_port()
        self.devllm = Proc([binpath("labman-devllm"), "--flavor", "openai", "--listen",
                            f"127.0.0.1:{dport}", "--models", MODELS, *devllm_args],
                           str(tmp_path / "devllm.log"))
        procs.append(self.devllm)
        wait_port(dport, self.devllm.p)
        self.port = free_port()
        self.admin = free_port()
        self.dport = dport
        self.auth = auth
        self.extra = extra
        self.cfg = tmp_path / "labman.toml"
        self.write(stanzas)
        self.labmand = Proc([binpath("labmand"), "-c", str(self.cfg)],
                            str(tmp_path / "labmand.log"))
        procs.append(self.labmand)
        wait_port(self.port, self.labmand.p)

    def write(self, stanzas):
        self.cfg.write_text(
            "[node]\n"
            'name = "auth-itest"\n'
            f'data_dir = "{self.tmp_path / "data"}"\n'
            'log_level = "debug"\n'
            "[gateway]\n"
            f'listen = "127.0.0.1:{self.port}"\n'
            f'auth = "{self.auth}"\n'
            "[admin]\n"
            f'listen = "127.0.0.1:{self.admin}"\n'
            "[discovery]\n"
            "scan_local = false\n"
            "[[endpoints]]\n"
            'name = "dev"\n'
            f'url = "http://127.0.0.1:{self.dport}"\n'
            'kind = "openai"\n'
            + self.extra + "".join(stanzas))

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def chat(self, key=None, model="llama3.2:1b", auth=None, max_tokens=None):
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        elif key is not None:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": model, "messages": [{"role": "user", "content": "say hi"}]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        return http("POST", self.url("/v1/chat/completions"), json.dumps(body), headers)

    def wait_ready(self, key, model="llama3.2:1b", timeout=15.0):
        """Waits until the endpoint's models are known (probes run on a timer)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = http("GET", self.url("/v1/models"),
                        headers={"Authorization": f"Bearer {key}"})
            if last[0] == 200 and model in [m.get("id") for m in
                                            json.loads(last[2]).get("data", [])]:
                return
            time.sleep(0.1)
        raise AssertionError(f"gateway never listed {model}: {last}")


def header(headers, name):
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def error_of(code, body, status):
    """Asserts an OpenAI-shaped error with this status; returns its object."""
    assert code == status, body
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


@pytest.fixture
def no_key_in_logs():
    """Collects (gateway, keys); at the end no key may be in labmand's log."""
    seen = []
    yield seen
    for gw, keys in seen:
        log = gw.labmand.output()
        for k in keys:
            assert k not in log, "an API key reached labmand's log"
            assert k[3:] not in log


def test_key_new_output_and_validation():
    key, stanza = key_new("alice", "--models", "llama3*,qwen2.5:?b", "--rpm", "60",
                          "--tpm", "100000", "--max-concurrent", "4")
    assert f'key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"' in stanza
    assert 'name = "alice"' in stanza
    assert 'models = ["llama3*", "qwen2.5:?b"]' in stanza
    assert "rpm = 60\n" in stanza and "tpm = 100000\n" in stanza
    assert "max_concurrent = 4\n" in stanza
    key2, stanza2 = key_new('quote"and\\slash')
    assert key2 != key
    assert 'name = "quote\\"and\\\\slash"' in stanza2
    assert "rpm" not in stanza2 and "models" not in stanza2

    labman = binpath("labman")
    for args, why in [(["x" * 65], "too long"), ([""], "empty"), (["a\tb"], "control"),
                      (["x", "--models", "a[b"], "'['"), (["x", "--models", "a,,b"], "comma")]:
        r = subprocess.run([labman, "key", "new", *args], capture_output=True, text=True)
        assert r.returncode != 0, args
        assert why in r.stderr, r.stderr
        assert "lm-" not in r.stdout and "key_sha256" not in r.stdout
    r = subprocess.run([labman, "key", "new", "x", "--rpm", "-1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--rpm" in r.stderr

    r = subprocess.run([labman, "key", "hash"], input=key + "\n", capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout == hashlib.sha256(key.encode()).hexdigest() + "\n"
    r = subprocess.run([labman, "key", "hash"], input="", capture_output=True, text=True)
    assert r.returncode == 1


def test_missing_wrong_and_right_key(tmp_path, procs, no_key_in_logs):
    key, stanza = key_new("alice")
    other, _ = key_new("mallory")  # never configured
    gw = Gateway(tmp_path, procs, [stanza])
    no_key_in_logs.append((gw, [key, other]))
    gw.wait_ready(key)

    err = error_of(*gw.chat()[::2], 401)
    assert "Authorization" in err["message"]
    error_of(*gw.chat(auth="Basic YWxpY2U6eA==")[::2], 401)
    err = error_of(*gw.chat(other)[::2], 401)
    assert other not in err["message"]
    code, _, _ = http("GET", gw.url("/v1/models"))
    assert code == 401

    code, _, body = gw.chat(key)
    assert code == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"]
    code, _, _ = gw.chat(auth=f"bearer {key}")
    assert code == 200


def test_model_not_allowed(tmp_path, procs, no_key_in_logs):
    key, stanza = key_new("alice", "--models", "qwen*")
    gw = Gateway(tmp_path, procs, [stanza])
    no_key_in_logs.append((gw, [key]))
    gw.wait_ready(key, model="qwen2.5:7b")

    err = error_of(*gw.chat(key, model="llama3.2:1b")[::2], 403)
    assert "alice" in err["message"] and "llama3.2:1b" in err["message"]
    code, _, body = gw.chat(key, model="qwen2.5:7b")
    assert code == 200, body


def test_rpm_limit_with_retry_after(tmp_path, procs, no_key_in_logs):
    ops, ops_stanza = key_new("ops")
    key, stanza = key_new("alice", "--rpm", "2")
    gw = Gateway(tmp_path, procs, [ops_stanza, stanza])
    no_key_in_logs.append((gw, [ops, key]))
    gw.wait_ready(ops)

    for _ in range(2):
        code, _, body = gw.chat(key)
        assert code == 200, body
    code, headers, body = gw.chat(key)
    err = error_of(code, body, 429)
    assert "rate limit of 2 requests per minute" in err["message"]
    assert '"alice"' in err["message"]
    retry = int(header(headers, "Retry-After"))
    assert 1 <= retry <= 60
    # Another key is not affected.
    code, _, _ = gw.chat(ops)
    assert code == 200


def test_max_concurrent_with_slow_stream(tmp_path, procs, no_key_in_logs):
    ops, ops_stanza = key_new("ops")
    key, stanza = key_new("alice", "--max-concurrent", "1")
    gw = Gateway(tmp_path, procs, [ops_stanza, stanza], devllm_args=("--tokens-per-sec", "5"))
    no_key_in_logs.append((gw, [ops, key]))
    gw.wait_ready(ops)

    conn = HTTPConnection("127.0.0.1", gw.port, timeout=20)
    body = {"model": "llama3.2:1b", "stream": True, "max_tokens": 10,
            "messages": [{"role": "user", "content": "count slowly"}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()  # the stream has begun: the slot is taken
    assert first

    rest = {}

    def drain():
        rest["data"] = resp.read()

    t = threading.Thread(target=drain)
    t.start()
    code, headers, body = gw.chat(key, max_tokens=1)
    err = error_of(code, body, 429)
    assert "concurrency limit of 1 request" in err["message"]
    assert int(header(headers, "Retry-After")) >= 1
    t.join(timeout=20)
    conn.close()
    assert b"[DONE]" in rest["data"]

    # The slot is free again once the stream has ended.
    deadline = time.monotonic() + 5
    while True:
        code, _, body = gw.chat(key, max_tokens=1)
        if code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 200, body


def test_tpm_after_usage(tmp_path, procs, no_key_in_logs):
    ops, ops_stanza = key_new("ops")
    key, stanza = key_new("alice", "--tpm", "10")
    gw = Gateway(tmp_path, procs, [ops_stanza, stanza])
    no_key_in_logs.append((gw, [ops, key]))
    gw.wait_ready(ops)

    code, _, body = gw.chat(key)  # 16 completion tokens and the prompt's
    assert code == 200, body
    assert json.loads(body)["usage"]["total_tokens"] > 10
    # Tokens are charged when the request ends, right after the answer.
    deadline = time.monotonic() + 5
    while True:
        code, headers, body = gw.chat(key)
        if code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    err = error_of(code, body, 429)
    assert "token limit of 10 tokens per minute" in err["message"]
    assert 1 <= int(header(headers, "Retry-After")) <= 60


def test_reload_adds_key_and_keeps_counters(tmp_path, procs, no_key_in_logs):
    ops, ops_stanza = key_new("ops")
    alice, a_stanza = key_new("alice", "--rpm", "2")
    bob, b_stanza = key_new("bob")
    gw = Gateway(tmp_path, procs, [ops_stanza, a_stanza])
    no_key_in_logs.append((gw, [ops, alice, bob]))
    gw.wait_ready(ops)

    code, _, body = gw.chat(alice)  # the first of alice's two this minute
    assert code == 200, body
    error_of(*gw.chat(bob)[::2], 401)
    pid = gw.labmand.p.pid
    gw.write([ops_stanza, a_stanza, b_stanza])
    gw.labmand.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        code, _, body = gw.chat(bob)
        if code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert code == 200, body
    assert gw.labmand.p.poll() is None and gw.labmand.p.pid == pid
    # Alice kept her count across the reload: one more, then 429.
    code, _, body = gw.chat(alice)
    assert code == 200, body
    err = error_of(*gw.chat(alice)[::2], 429)
    assert "rate limit of 2 requests per minute" in err["message"]

    # Removing bob takes effect on the next reload too.
    gw.write([ops_stanza, a_stanza])
    gw.labmand.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        code, _, body = gw.chat(bob)
        if code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    error_of(code, body, 401)


def test_fep_is_refused_clearly(tmp_path, procs):
    extra = ("[[feps]]\n"
             'id = "fep-test"\n'
             'url = "http://127.0.0.1:9300"\n'
             f'public_key = "{"00" * 32}"\n'
             'max_unpaid = "5.00"\n')
    gw = Gateway(tmp_path, procs, [], auth="fep", extra=extra)
    err = error_of(*gw.chat("anything")[::2], 503)
    assert "fep" in err["message"]
