"""Config validation through the real binaries: `labman config check FILE`,
`labmand -n -c FILE` and `labman config show -c FILE`.

Contract: valid -> exit 0 and "FILE: ok" on stdout; invalid -> exit 1 and
every problem as "FILE:LINE:COL: message" (or "FILE: message" when there is no
position) on stderr, in file order.
"""
import os
import random
import re
import subprocess
import tomllib

import pytest

from conftest import ROOT, binpath

FULL = os.path.join(ROOT, "examples", "full.toml")
BAD = os.path.join(ROOT, "examples", "bad.toml")
DEMO = os.path.join(ROOT, "examples", "demo.toml")

# (line, col, message) for examples/bad.toml, in file order.
BAD_EXPECTED = [
    (5, 21, 'invalid role "boss" in node.roles; expected any of gateway, provider, relay'),
    (8, 1, 'unknown key "listn" in [gateway]; did you mean "listen"?'),
    (9, 8, 'gateway.auth = "keys" needs at least one [[gateway.keys]]'),
    (10, 18, "expected an integer for gateway.max_body_bytes, got a string"),
    (12, 25, "gateway.first_token_timeout_s (90) must not exceed gateway.request_timeout_s (60)"),
    (15, 13, "mesh.max_peers must be between 1 and 4096, got 0"),
    (16, 9, 'invalid value "everyone" for mesh.trust; expected one of private, friends, public'),
    (18, 2, "unknown section [dicovery]; did you mean [discovery]?"),
    (26, 8, 'duplicate endpoint name "ollama" (first defined at line 22)'),
    (27, 7, 'invalid URL "ftp://127.0.0.1:8080" for endpoints[1].url: '
            "must start with http:// or https://"),
    (28, 19, "pattern \"llama[3\" for endpoints[1].models_include[0] has an unbalanced '['"),
    (32, 13, 'amount "0.0000001" for prices[0].per_1k_in has more than 6 decimal places'),
]

CHECKERS = ["labman", "labmand"]


def check_argv(tool, path):
    if tool == "labman":
        return [binpath("labman"), "config", "check", path]
    return [binpath("labmand"), "-n", "-c", path]


def run(argv, timeout=20):
    p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def problems(stderr, path):
    """The FILE:... lines of stderr, other chatter ignored."""
    return [l for l in stderr.splitlines() if l.startswith(path + ":")]


def show(path):
    rc, out, err = run([binpath("labman"), "config", "show", "-c", path])
    assert rc == 0, err
    return out


@pytest.mark.parametrize("tool", CHECKERS)
def test_full_example_is_valid(tool):
    rc, out, err = run(check_argv(tool, FULL))
    assert rc == 0, err
    assert f"{FULL}: ok" in out.splitlines()


@pytest.mark.parametrize("tool", CHECKERS)
def test_demo_example_is_valid(tool):
    rc, out, err = run(check_argv(tool, DEMO))
    assert rc == 0, err
    assert f"{DEMO}: ok" in out.splitlines()


@pytest.mark.parametrize("tool", CHECKERS)
def test_empty_file_is_valid(tool, tmp_path):
    path = str(tmp_path / "empty.toml")
    open(path, "w").close()
    rc, out, err = run(check_argv(tool, path))
    assert rc == 0, err
    assert f"{path}: ok" in out.splitlines()


@pytest.mark.parametrize("tool", CHECKERS)
def test_bad_example_reports_everything_in_order(tool):
    rc, out, err = run(check_argv(tool, BAD))
    assert rc == 1, (out, err)
    want = [f"{BAD}:{line}:{col}: {msg}" for line, col, msg in BAD_EXPECTED]
    assert problems(err, BAD) == want, err
    assert f"{BAD}: ok" not in out


@pytest.mark.parametrize("tool", CHECKERS)
def test_missing_file(tool, tmp_path):
    path = str(tmp_path / "nope.toml")
    rc, out, err = run(check_argv(tool, path))
    assert rc == 1
    assert problems(err, path) == [f"{path}: cannot read: No such file or directory"], err


@pytest.mark.parametrize("tool", CHECKERS)
def test_syntax_error_is_one_line_with_position(tool, tmp_path):
    path = str(tmp_path / "syntax.toml")
    with open(path, "w") as f:
        f.write('[node]\nname = "lab-1"\nroles = ["gateway",\n[gateway]\n')
    rc, out, err = run(check_argv(tool, path))
    assert rc == 1
    lines = problems(err, path)
    assert len(lines) == 1, err
    assert re.match(re.escape(path) + r":[34]:\d+: \S", lines[0]), lines


@pytest.mark.parametrize("tool", CHECKERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_garbage(tool, seed, tmp_path):
    path = str(tmp_path / "garbage.toml")
    data = random.Random(seed).randbytes(4096)
    with open(path, "wb") as f:
        f.write(data)
    rc, out, err = run(check_argv(tool, path))
    assert rc == 1, (rc, err)  # a signal would be negative
    lines = problems(err, path)
    assert len(lines) == 1, err
    # The message is printable: file bytes never reach the terminal raw.
    assert all(0x20 <= ord(c) < 0x7f for c in lines[0]), lines


@pytest.mark.parametrize("tool", CHECKERS)
def test_oversized_file(tool, tmp_path):
    path = str(tmp_path / "big.toml")
    with open(path, "w") as f:
        f.write("#" + "x" * (1 << 20) + "\n")
    rc, out, err = run(check_argv(tool, path))
    assert rc == 1
    assert problems(err, path) == [f"{path}: cannot read: file is larger than 1048576 bytes"]


def test_show_matches_file_and_masks_key_hashes():
    out = show(FULL)
    shown = tomllib.loads(out)
    want = tomllib.loads(open(FULL).read())
    secret = want["gateway"]["keys"][0]["key_sha256"]
    assert secret not in out
    assert shown["gateway"]["keys"][0]["key_sha256"] != secret
    shown["gateway"]["keys"][0]["key_sha256"] = secret
    assert shown == want


def test_show_round_trips_through_check(tmp_path):
    # Without [[gateway.keys]], nothing is masked, so show's output must be
    # a config that check accepts and that shows the same again.
    text = open(FULL).read()
    start = text.index("[[gateway.keys]]")
    end = text.index("[admin]")
    src = tmp_path / "nokeys.toml"
    src.write_text(text[:start] + text[end:])
    for path in (str(src), DEMO):
        first = show(path)
        again = tmp_path / "shown.toml"
        again.write_text(first)
        rc, out, err = run(check_argv("labman", str(again)))
        assert rc == 0, (first, err)
        assert show(str(again)) == first


def test_show_of_empty_file_gives_every_default(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    shown = tomllib.loads(show(str(path)))
    assert shown["node"]["data_dir"] == "/var/lib/labman"
    assert shown["node"]["roles"] == ["gateway", "provider"]
    assert shown["gateway"]["listen"] == "127.0.0.1:31145"
    assert shown["gateway"]["max_body_bytes"] == 8388608
    assert shown["gateway"]["first_token_timeout_s"] == 120
    assert shown["admin"]["listen"] == "127.0.0.1:8145"
    assert shown["mesh"]["listen"] == "0.0.0.0:41145"
    assert shown["mesh"]["max_peers"] == 64
    assert shown["mesh"]["gossip_interval_ms"] == 1000
    assert shown["discovery"]["scan_local"] is True
