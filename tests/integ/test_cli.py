"""labman CLI against a real labmand: status, identity, config check/show/reload."""
import json
import os
import re
import subprocess

from conftest import binpath, free_port, http
from test_daemon import start_daemon, wait_log, write_config


def labman(*args, check=None):
    r = subprocess.run([binpath("labman"), *args], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    return r


def table(text):
    rows = {}
    for line in text.strip().split("\n"):
        k, v = re.split(r"\s{2,}", line, maxsplit=1)
        rows.setdefault(k, []).append(v)
    return rows


def test_status_table_and_json(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs)
    r = labman("status", "-c", cfg, check=0)
    rows = table(r.stdout)
    assert rows["node"] == ["itest"]
    assert rows["state"] == ["ready"]
    assert rows["roles"] == ["gateway, provider"]
    assert rows["pid"] == [str(p.p.pid)]
    assert rows["listen"][0] == f"admin    127.0.0.1:{port}"
    assert re.fullmatch(r"gateway  127\.0\.0\.1:\d+", rows["listen"][1])
    assert rows["last reload"] == ["never"]
    assert re.fullmatch(r"[0-9a-f]{64}", rows["node id"][0])

    r = labman("status", "--json", "--admin", f"127.0.0.1:{port}", check=0)
    st = json.loads(r.stdout)
    assert st["node_id"] == rows["node id"][0] and st["state"] == "ready"
    assert r.stderr == ""


def test_status_when_not_running(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, port)
    for args in (["-c", cfg], ["--admin", f"127.0.0.1:{port}"], ["--json", "-c", cfg]):
        r = labman("status", *args, check=1)
        assert r.stdout == ""
        assert r.stderr == (f"labman: cannot reach labmand at 127.0.0.1:{port}: "
                            "Connection refused (is it running?)\n")


def test_status_with_token(tmp_path, procs):
    tok = tmp_path / "admin.token"
    tok.write_text("cli-token\n")
    os.chmod(tok, 0o600)
    _, port, cfg = start_daemon(tmp_path, procs, extra=f'token_file = "{tok}"\n')
    # The token comes from the config's token_file ...
    assert table(labman("status", "-c", cfg, check=0).stdout)["state"] == ["ready"]
    # ... or --token-file; without one the daemon says no, in one line.
    labman("status", "--admin", f"127.0.0.1:{port}", "--token-file", str(tok), check=0)
    r = labman("status", "--admin", f"127.0.0.1:{port}", check=1)
    assert "admin token" in r.stderr and len(r.stderr.strip().split("\n")) == 1


def test_identity(tmp_path, procs):
    port = free_port()
    cfg = write_config(tmp_path, port)
    # Before labmand ever ran: nothing to show, and nothing created.
    r = labman("identity", "-c", cfg, check=1)
    assert "no identity key" in r.stderr
    assert not (tmp_path / "data").exists()

    _, port, cfg = start_daemon(tmp_path, procs)
    r = labman("identity", "-c", cfg, check=0)
    st = json.loads(http("GET", f"http://127.0.0.1:{port}/admin/v1/status")[2])
    assert r.stdout == st["node_id"] + "\n"

    os.chmod(tmp_path / "data" / "identity.key", 0o640)
    r = labman("identity", "-c", cfg, check=1)
    assert "chmod 600" in r.stderr


def test_config_check(tmp_path):
    good = write_config(tmp_path, free_port())
    r = labman("config", "check", good, check=0)
    assert r.stdout == f"{good}: ok\n"

    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nroles = ["gateway", "chef"]\n[mesh]\nmax_peers = "many"\n')
    r = labman("config", "check", str(bad), check=1)
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 2
    assert all(re.match(re.escape(str(bad)) + r":\d+:\d+: \S", ln) for ln in lines), lines

    r = labman("config", "check", str(tmp_path / "absent.toml"), check=1)
    assert "absent.toml" in r.stderr
    labman("config", "check", check=2)


def test_config_show(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[node]\nname = "shown"\n\n[[gateway.keys]]\nname = "alice"\n'
                   'key_sha256 = "' + "ab" * 32 + '"\n')
    r = labman("config", "show", "-c", str(cfg), check=0)
    assert 'name = "shown"' in r.stdout
    assert 'listen = "127.0.0.1:8145"' in r.stdout  # a default, shown
    assert "ab" * 32 not in r.stdout  # a secret, masked
    labman("config", "show", "-c", str(tmp_path / "absent.toml"), check=1)


def test_config_reload(tmp_path, procs):
    p, port, cfg = start_daemon(tmp_path, procs)
    r = labman("config", "reload", "-c", cfg, check=0)
    assert r.stdout == "config reloaded\n"

    write_config(tmp_path, port, node_extra='log_level = "debug"\n',
                 extra='[mesh]\nlisten = "127.0.0.1:1"\n')
    r = labman("config", "reload", "-c", cfg, check=0)
    assert "restart needed for: mesh.listen" in r.stdout
    assert json.loads(labman("status", "--json", "-c", cfg, check=0).stdout)["log_level"] == "debug"

    # Rejected: exit 1 with every problem; the daemon keeps its config and answers.
    with open(cfg, "w") as f:
        f.write(f'[admin]\nlisten = "127.0.0.1:{port}"\n[node]\nlog_level = 7\nbogus = 1\n')
    r = labman("config", "reload", "--admin", f"127.0.0.1:{port}", check=1)
    errs = [ln for ln in r.stderr.split("\n") if ln.startswith(cfg + ":")]
    assert len(errs) == 2, r.stderr
    assert "kept the running one" in r.stderr
    wait_log(p, "config reload rejected")
    st = json.loads(labman("status", "--json", "--admin", f"127.0.0.1:{port}", check=0).stdout)
    assert st["log_level"] == "debug" and st["last_reload"]["result"] == "error"


def test_version_and_help():
    assert labman("version", check=0).stdout == "labman 0.1.0\n"
    r = labman("--help", check=0)
    for cmd in ("status", "identity", "config check", "config show", "config reload"):
        assert cmd in r.stdout
    assert "--json" in labman("status", "--help", check=0).stdout
    assert "Creates nothing" in labman("identity", "--help", check=0).stdout
    assert "reload" in labman("config", "--help", check=0).stdout
    assert "unknown command" in labman("frobnicate", check=2).stderr
    labman(check=2)
    labman("status", "--bogus", check=2)


def test_requests_on_a_node_without_gateway(tmp_path, procs):
    _, port, cfg = start_daemon(tmp_path, procs, node_extra='roles = ["provider"]\n')
    r = labman("requests", "--admin", f"127.0.0.1:{port}", check=1)
    assert r.stdout == ""
    assert r.stderr.strip() == (f"labman: labmand at 127.0.0.1:{port} has no gateway "
                                '(node roles lack "gateway")')
