"""labman invite / join between two real nodes: the token, the config edit that
keeps the operator's text, the reload of a running labmand, and refusals."""
import hashlib
import json
import os
import re
import stat

from conftest import free_port
from test_cli import labman, table
from test_daemon import start_daemon, status, write_config

TOKEN_RE = re.compile(r"labman1:([0-9a-f]{64})(?:@([0-9a-z.:,\-]+))?/([0-9a-f]{8})\Z")


def seal(body):
    """A token from its body, computed here as docs/trust.md specifies it."""
    return body + "/" + hashlib.blake2b(body.encode(), digest_size=16).hexdigest()[:8]


def node(tmp_path, procs, name, mesh_extra=""):
    """Starts a labmand in its own directory; returns (port, config path, node id)."""
    d = tmp_path / name
    d.mkdir()
    extra = ("# the overlay; edited by hand\n"
             "[mesh]\n"
             f'listen = "127.0.0.1:{free_port()}"  # not the default port\n'
             f"{mesh_extra}")
    _, port, cfg = start_daemon(d, procs, extra=extra)
    return port, cfg, status(port)["node_id"]


def test_invite_then_join_reloads_the_running_node(tmp_path, procs):
    a_mesh = free_port()
    port_a, cfg_a, id_a = node(tmp_path, procs, "a", f'advertise = ["127.0.0.1:{a_mesh}"]\n')
    port_b, cfg_b, id_b = node(tmp_path, procs, "b")
    assert status(port_b)["mesh"] == {"trust": "private", "trusted_peers": 0,
                                      "denied_peers": 0, "bootstrap": 0, "advertise": 0,
                                      "enabled": False}

    r = labman("invite", "-c", cfg_a, check=0)
    token = r.stdout.rstrip("\n")
    assert r.stdout == token + "\n"  # one line
    m = TOKEN_RE.match(token)
    assert m, token
    assert m.group(1) == id_a and m.group(2) == f"127.0.0.1:{a_mesh}"
    assert token == seal(token.rsplit("/", 1)[0])
    assert "loopback" in r.stderr

    os.chmod(cfg_b, 0o640)
    before = open(cfg_b).read()
    r = labman("join", token, "-c", cfg_b, check=0)
    assert f"trusted {id_a}: added to [mesh] trusted_peers in {cfg_b}\n" in r.stdout
    assert "added 1 address to [mesh] bootstrap\n" in r.stdout
    assert "labmand reloaded the config\n" in r.stdout
    back = re.search(r"run there:\n  labman join (\S+)\n", r.stdout).group(1)
    assert TOKEN_RE.match(back).group(1) == id_b

    # The running daemon took the new config.
    st = status(port_b)
    assert st["last_reload"]["result"] == "ok"
    assert st["mesh"]["trusted_peers"] == 1 and st["mesh"]["bootstrap"] == 1
    assert table(labman("status", "-c", cfg_b, check=0).stdout)["trust"] == [
        "private (1 trusted, 0 denied, 1 bootstrap)"]

    # The file: what was there, byte for byte, plus the two keys; same mode.
    after = open(cfg_b).read()
    assert stat.S_IMODE(os.stat(cfg_b).st_mode) == 0o640
    added = (f'trusted_peers = ["{id_a}"]\n'
             f'bootstrap = ["{id_a}@127.0.0.1:{a_mesh}"]\n')
    assert after == before + added, after
    labman("config", "check", cfg_b, check=0)
    assert not [f for f in os.listdir(tmp_path / "b") if ".join-" in f]

    # Joining again changes nothing and does not reload.
    at = st["last_reload"]["at"]
    ino = os.stat(cfg_b).st_ino
    r = labman("join", token, "-c", cfg_b, check=0)
    assert r.stdout.startswith(f"{cfg_b} already trusts {id_a[:12]} and has its addresses; "
                               "nothing to change\n")
    assert open(cfg_b).read() == after and os.stat(cfg_b).st_ino == ino
    assert status(port_b)["last_reload"]["at"] == at

    # And the way back: A trusts B with the token B's join printed. B
    # advertises nothing, so A gets no bootstrap entry.
    r = labman("join", back, "-c", cfg_a, check=0)
    assert "the token has no address" in r.stdout
    assert status(port_a)["mesh"]["trusted_peers"] == 1
    assert status(port_a)["mesh"]["bootstrap"] == 0
    assert f'trusted_peers = ["{id_b}"]\n' in open(cfg_a).read()


def test_join_while_labmand_is_down(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, port, extra="[mesh]\ntrusted_peers = [\n"
                                              '    "' + "a" * 64 + '",  # alice\n]\n')
    peer = "0123456789abcdef" * 4
    token = seal(f"labman1:{peer}@peer.example:41145,2001:db8::7:41145")
    r = labman("join", token, "-c", cfg, check=0)
    assert "labmand is not running; the config applies when it starts\n" in r.stdout
    assert "cannot reach labmand" in r.stderr
    text = open(cfg).read()
    assert text.endswith('[mesh]\ntrusted_peers = [\n'
                         '    "' + "a" * 64 + '",  # alice\n'
                         f'    "{peer}",\n]\n'
                         'bootstrap = [\n'
                         f'    "{peer}@peer.example:41145",\n'
                         f'    "{peer}@[2001:db8::7]:41145",\n'
                         ']\n'), text
    labman("config", "check", cfg, check=0)


def test_join_refuses_bad_input(tmp_path, procs):
    port, cfg, node_id = node(tmp_path, procs, "n")
    original = open(cfg).read()
    good = seal("labman1:" + "b" * 64 + "@h.example:1")

    r = labman("join", good[:-1], "-c", cfg, check=1)
    assert "labman: invalid token: the token's checksum does not match" in r.stderr
    r = labman("join", "hello", "-c", cfg, check=1)
    assert "not a labman invite token" in r.stderr
    r = labman("join", seal("labman1:" + "b" * 64 + "@h.example:0"), "-c", cfg, check=1)
    assert "is not host:port" in r.stderr

    # This node's own token.
    own = labman("invite", "-c", cfg, check=0).stdout.strip()
    assert "advertise is empty" in labman("invite", "-c", cfg, check=0).stderr
    assert "@" not in own and TOKEN_RE.match(own).group(1) == node_id
    r = labman("join", own, "-c", cfg, check=1)
    assert "this token is this node's own" in r.stderr

    # A denied peer, and a config that is already invalid: nothing written.
    denied = tmp_path / "denied.toml"
    denied.write_text('[mesh]\ndenied_peers = ["' + "B" * 64 + '"]\n')
    r = labman("join", good, "-c", str(denied), check=1)
    assert "is in [mesh] denied_peers" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[mesh]\nmax_peers = 0\n")
    r = labman("join", good, "-c", str(broken), check=1)
    assert re.search(re.escape(str(broken)) + r":2:13: ", r.stderr), r.stderr
    assert "fix it before joining" in r.stderr
    assert broken.read_text() == "[mesh]\nmax_peers = 0\n"
    r = labman("join", good, "-c", str(tmp_path / "absent.toml"), check=1)
    assert "does not exist" in r.stderr

    labman("join", check=2)
    labman("join", good, "extra", check=2)
    labman("join", good, "--bogus", check=2)
    assert open(cfg).read() == original
    assert status(port)["last_reload"]["result"] == "none"


def test_invite_needs_an_identity(tmp_path):
    cfg = write_config(tmp_path, free_port(), extra='[mesh]\nadvertise = ["0.0.0.0:41145"]\n')
    r = labman("invite", "-c", cfg, check=1)
    assert "no identity key" in r.stderr and r.stdout == ""
    labman("invite", "--admin", "127.0.0.1:1", check=2)
    assert "labman join TOKEN" in labman("invite", "--help", check=0).stdout
    assert "trusted_peers" in labman("join", "--help", check=0).stdout
    help_text = labman("--help", check=0).stdout
    assert "invite" in help_text and "join TOKEN" in help_text


def test_invite_leaves_out_unspecified_addresses(tmp_path, procs):
    _, cfg, node_id = node(tmp_path, procs, "w",
                           'advertise = ["0.0.0.0:41145", "lab.example:41145"]\n')
    r = labman("invite", "-c", cfg, check=0)
    assert "leaving out advertise address 0.0.0.0:41145" in r.stderr
    m = TOKEN_RE.match(r.stdout.strip())
    assert m.group(1) == node_id and m.group(2) == "lab.example:41145"


def test_status_json_has_mesh(tmp_path, procs):
    port, cfg, _ = node(tmp_path, procs, "s", 'trust = "friends"\n')
    st = json.loads(labman("status", "--json", "-c", cfg, check=0).stdout)
    assert st["mesh"]["trust"] == "friends"


def test_join_does_not_reload_a_daemon_of_another_file(tmp_path, procs):
    port, cfg, _ = node(tmp_path, procs, "r")
    other = tmp_path / "other.toml"
    other.write_text(f'[admin]\nlisten = "127.0.0.1:{port}"\n')
    r = labman("join", seal("labman1:" + "c" * 64), "-c", str(other), check=1)
    assert f"runs from {cfg}, not {other}: not asking it to reload" in r.stderr
    assert f'trusted_peers = ["{"c" * 64}"]' in other.read_text()
    assert status(port)["last_reload"]["result"] == "none"
