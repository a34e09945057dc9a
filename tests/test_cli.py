"""vswitchctl: every verb in table and --json form against a real vswitchd, and its exit statuses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.harness.daemon import REPO_ROOT, Vswitchd, loopback_vtep_config
from tests.harness.agent import Agent
from tests.harness.netns import Netns, NetnsFactory
from tests.harness.wait import wait_until
from vswitch.cli import COMMANDS, main


def human(d: Vswitchd, *args: str) -> str:
    proc = d.ctl_run(*args, json_output=False)
    assert (proc.returncode, proc.stderr) == (0, ""), f"vswitchctl {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def rows(text: str) -> list[dict[str, str]]:
    """Parses an aligned table: each column starts where its header starts, on every line."""
    header, *lines = [line for line in text.splitlines() if line.strip()]
    names = header.split()
    starts = [header.index(f"{n}") if i == 0 else header.index(f"  {n}") + 2 for i, n in enumerate(names)]
    out = []
    for line in lines:
        cells = [line[s:e].strip() for s, e in zip(starts, [*starts[1:], None])]
        for s in starts[1:]:
            assert line[s - 1] == " " and line[s - 2] == " ", f"misaligned row {line!r} under {header!r}"
        out.append(dict(zip(names, cells)))
    return out


def section(text: str, title: str) -> str:
    """The indented block under a `title...:` line of `show`/`stats` output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line[2:])
    return "\n".join(block)


@pytest.fixture
def d(vswitchd_factory: Callable[..., Vswitchd]) -> Vswitchd:
    return vswitchd_factory(loopback_vtep_config())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vswitchd]:
    """One daemon with network blue (VNI 100) for the error cases, which change nothing."""
    with Vswitchd(tmp_path_factory.mktemp("cli"), config=loopback_vtep_config() + '[[network]]\nname = "blue"\nvni = 100\n') as daemon:
        daemon.start()
        yield daemon


@pytest.fixture
def ns(netns_factory: NetnsFactory) -> Netns:
    return netns_factory()


# --- verbs against a daemon -------------------------------------------------------------


@pytest.mark.root
def test_network_verbs(d: Vswitchd) -> None:
    assert human(d, "network", "add", "blue", "--vni", "100") == ""
    assert d.ctl("network", "add", "red") == {"name": "red", "vni": None, "ports": [], "peers": []}
    table = rows(human(d, "network", "list"))
    assert table == [
        {"NAME": "blue", "VNI": "100", "PORTS": "-", "PEERS": "-"},
        {"NAME": "red", "VNI": "-", "PORTS": "-", "PEERS": "-"},
    ]
    assert [n["name"] for n in d.ctl("network", "list")] == ["blue", "red"]
    assert human(d, "network", "del", "red") == ""
    assert d.ctl("network", "del", "blue") is None
    assert d.ctl("network", "list") == []


@pytest.mark.root
def test_port_verbs(d: Vswitchd, ns: Netns) -> None:
    d.ctl("network", "add", "blue")
    out = human(d, "port", "add", "c1", "--network", "blue", "--netns", ns.name, "--ifname", "eth3",
                "--mac", "02:00:00:00:00:01", "--ip", "10.1.0.1/24", "--mtu", "1400")
    assert out == ""
    port = d.ctl("port", "add", "c2", "--network", "blue", "--netns", ns.name)
    assert (port["name"], port["ifname"], port["ip"]) == ("c2", "eth0", None)
    link = ns.link("eth3")
    assert link is not None and link["address"] == "02:00:00:00:00:01"

    c1 = rows(human(d, "port", "list"))[0]
    assert c1 == {"NAME": "c1", "NETWORK": "blue", "NETNS": ns.name, "IFNAME": "eth3", "MAC": "02:00:00:00:00:01",
                  "IP": "10.1.0.1/24", "MTU": "1400", "STATE": "up", "SECURITY": "on"}
    assert [p["name"] for p in d.ctl("port", "list")] == ["c1", "c2"]

    assert human(d, "port", "del", "c1") == ""
    assert d.ctl("port", "del", "c2") is None
    assert d.ctl("port", "list") == []


@pytest.mark.root
def test_peer_verbs(d: Vswitchd) -> None:
    d.ctl("network", "add", "blue", "--vni", "100")
    d.ctl("network", "add", "green", "--vni", "200")
    assert human(d, "peer", "add", "127.0.0.2", "--network", "blue") == ""
    assert d.ctl("peer", "add", "127.0.0.4", "--network", "blue") == {"network": "blue", "remote": "127.0.0.4"}
    d.ctl("peer", "add", "127.0.0.3", "--network", "green")
    listed = rows(human(d, "peer", "list", "--network", "blue"))
    assert [(r["NETWORK"], r["REMOTE"], r["TX_PACKETS"]) for r in listed] == [("blue", "127.0.0.2", "0"), ("blue", "127.0.0.4", "0")]
    assert len(rows(human(d, "peer", "list"))) == 3
    assert [(p["network"], p["remote"]) for p in d.ctl("peer", "list", "--network", "green")] == [("green", "127.0.0.3")]
    assert human(d, "peer", "del", "127.0.0.4", "--network", "blue") == ""
    assert d.ctl("peer", "del", "127.0.0.2", "--network", "blue") is None
    assert d.ctl("peer", "list", "--network", "blue") == []


@pytest.mark.root
def test_fdb_verbs(d: Vswitchd, ns: Netns, agent_factory: Callable[[Netns], Agent]) -> None:
    d.ctl("network", "add", "blue")
    # Port security off: c1 sends from a MAC that is not its own, to be learned.
    d.ctl("port", "add", "c1", "--network", "blue", "--netns", ns.name, "--port-security", "off")
    # One learned entry, for flush to forget while the static ones stay.
    agent_factory(ns).send("eth0", [bytes.fromhex("ffffffffffff" "02000000aa01" "88b5") + bytes(46)])
    wait_until(lambda: any(e["mac"] == "02:00:00:00:aa:01" for e in d.ctl("fdb", "show")),
               message="the switch never learned c1's frame")
    assert human(d, "fdb", "add", "02:00:00:00:00:09", "--network", "blue", "--port", "c1") == ""
    assert d.ctl("fdb", "add", "02:00:00:00:00:0a", "--network", "blue", "--port", "c1")["mac"] == "02:00:00:00:00:0a"

    static = [r for r in rows(human(d, "fdb", "show", "--network", "blue", "--port", "c1")) if r["TYPE"] == "static"]
    assert static == [
        {"NETWORK": "blue", "MAC": "02:00:00:00:00:09", "TO": "port c1", "TYPE": "static", "AGE": "-"},
        {"NETWORK": "blue", "MAC": "02:00:00:00:00:0a", "TO": "port c1", "TYPE": "static", "AGE": "-"},
    ]
    entries = d.ctl("fdb", "show")
    assert {e["mac"] for e in entries if e["static"]} == {"02:00:00:00:00:09", "02:00:00:00:00:0a"}

    assert human(d, "fdb", "flush") == "flushed 1 learned entries\n"
    # c1's own MAC was pinned when the port was made: a flush leaves it, as it leaves static entries.
    own = d.ctl("port", "show", "c1")["mac"]
    assert {e["mac"] for e in d.ctl("fdb", "show")} == {"02:00:00:00:00:09", "02:00:00:00:00:0a", own}
    assert [e["mac"] for e in d.ctl("fdb", "show") if e["pinned"]] == [own]
    assert d.ctl("fdb", "flush", "--network", "blue", "--port", "c1") == {"flushed": 0}

    assert human(d, "fdb", "del", "02:00:00:00:00:09", "--network", "blue") == ""
    assert d.ctl("fdb", "del", "02:00:00:00:00:0a", "--network", "blue") is None
    assert [e for e in d.ctl("fdb", "show") if e["static"]] == []


@pytest.mark.root
def test_show_and_stats(d: Vswitchd, ns: Netns) -> None:
    d.ctl("network", "add", "blue", "--vni", "100")
    d.ctl("port", "add", "c1", "--network", "blue", "--netns", ns.name)
    d.ctl("peer", "add", "127.0.0.2", "--network", "blue")
    d.ctl("fdb", "add", "02:00:00:00:00:09", "--network", "blue", "--port", "c1")

    doc = d.ctl("show")
    assert set(doc) == {"io_mode", "networks", "ports", "peers", "fdb", "stats"}
    assert doc["fdb"]["static"] == 1 and doc["ports"][0]["name"] == "c1"
    assert doc["io_mode"] == doc["stats"]["io_mode"] in ("poll", "uring")

    out = human(d, "show")
    assert out.splitlines()[0] == f"io_mode: {doc['io_mode']}"
    assert rows(section(out, "networks (1)")) == [{"NAME": "blue", "VNI": "100", "PORTS": "c1", "PEERS": "127.0.0.2"}]
    port = rows(section(out, "ports (1)"))[0]
    assert (port["NAME"], port["NETWORK"], port["NETNS"], port["STATE"]) == ("c1", "blue", ns.name, "up")
    assert [(r["NETWORK"], r["REMOTE"]) for r in rows(section(out, "peers (1)"))] == [("blue", "127.0.0.2")]
    assert any(line.startswith("fdb: ") and "1 static" in line for line in out.splitlines())
    assert "top counters:" in out
    assert len(out.splitlines()) < 50  # one screen

    stats_out = human(d, "stats")
    assert [r["PORT"] for r in rows(section(stats_out, "ports:"))] == ["c1"]
    assert f"io_mode: {doc['io_mode']}" in stats_out.splitlines()
    stats = d.ctl("stats")
    assert set(stats) >= {"ports", "fdb", "loop"} and list(stats["ports"]) == ["c1"]


@pytest.mark.root
def test_json_flag_is_accepted_after_the_command(d: Vswitchd) -> None:
    d.ctl("network", "add", "blue")
    proc = d.ctl_run("network", "list", "--json", json_output=False)
    assert proc.returncode == 0 and '"name": "blue"' in proc.stdout


@pytest.mark.root
def test_socket_from_the_environment(d: Vswitchd) -> None:
    env = {**os.environ, "VSWITCH_SOCKET": str(d.socket_path)}
    proc = subprocess.run([sys.executable, "-m", "vswitch.cli", "--json", "network", "list"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "[]", "")


@pytest.mark.root
@pytest.mark.parametrize("json_output", [False, True], ids=["table", "json"])
@pytest.mark.parametrize(
    ("args", "detail"),
    [
        (("network", "del", "nope"), "network 'nope' does not exist"),
        (("network", "add", "blue"), "network 'blue' already exists"),
        (("network", "add", "bad name"), "'bad name' is not a valid name"),
        (("network", "add", "x", "--vni", "0"), "vni: 0 is out of range"),
        (("port", "add", "c1", "--network", "blue", "--netns", "vst-no-such-ns"), "vst-no-such-ns"),
        (("port", "add", "c1", "--network", "blue", "--netns", "x", "--ip", "10.0.0.1"), "10.0.0.1"),
        (("port", "del", "nope"), "port 'nope' does not exist"),
        (("peer", "del", "127.0.0.9", "--network", "blue"), "127.0.0.9"),
        (("fdb", "add", "ff:ff:ff:ff:ff:ff", "--network", "blue", "--port", "c1"), "ff:ff:ff:ff:ff:ff"),
        (("fdb", "del", "nonsense", "--network", "blue"), "nonsense"),
        (("fdb", "show", "--port", "nope"), "port 'nope' does not exist"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_errors_exit_1_with_one_line(shared: Vswitchd, args: tuple[str, ...], detail: str, json_output: bool) -> None:
    proc = shared.ctl_run(*args, json_output=json_output)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    if json_output:  # the API's error body, kind and all, for scripts
        doc = json.loads(proc.stderr)
        assert set(doc) == {"error", "detail", "status"}
        assert (doc["error"], doc["status"]) in {("not_found", 404), ("conflict", 409), ("invalid_argument", 400)}, doc
        assert detail in doc["detail"]
    else:
        assert proc.stderr.startswith("vswitchctl: ")
        assert detail in proc.stderr


@pytest.mark.root
def test_output_that_cannot_be_written_is_one_line(shared: Vswitchd) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "vswitch.cli", "--socket", str(shared.socket_path), "network",
                               "list"],
                              cwd=REPO_ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (1, "vswitchctl: cannot write the output: No space left on device\n")


# --- without a daemon -------------------------------------------------------------------


def test_an_argument_that_is_not_utf8_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As Python hands over an argument whose bytes are not UTF-8.
    assert main(["--socket", str(tmp_path / "none.sock"), "network", "del", os.fsdecode(b"bl\xffe")]) == 2
    assert capsys.readouterr() == ("", "vswitchctl: name: b'bl\\xffe' is not UTF-8 text\n")


def test_unreachable_daemon_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none.sock"
    assert main(["--socket", str(sock), "show"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"vswitchctl: cannot reach vswitchd at {sock}: No such file or directory\n"


def test_unreachable_daemon_with_json_is_a_json_error_with_its_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "none.sock"
    assert main(["--socket", str(sock), "--json", "show"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err) == {"error": "unreachable", "detail": f"cannot reach vswitchd at {sock}: No such file or directory"}
    assert err.count("\n") == 1


@pytest.mark.parametrize("prog", ["vswitchctl", "vswitchd"])
def test_version(prog: str) -> None:
    from vswitch import __version__

    module = {"vswitchctl": "vswitch.cli", "vswitchd": "vswitch"}[prog]
    proc = subprocess.run([sys.executable, "-m", module, "--version"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"{prog} {__version__}\n", "")


def test_environment_names_the_socket_and_the_flag_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VSWITCH_SOCKET", str(tmp_path / "env.sock"))
    assert main(["network", "list"]) == 1
    assert f"at {tmp_path / 'env.sock'}:" in capsys.readouterr().err
    assert main(["--socket", str(tmp_path / "flag.sock"), "network", "list"]) == 1
    assert f"at {tmp_path / 'flag.sock'}:" in capsys.readouterr().err


def test_default_socket(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("VSWITCH_SOCKET", raising=False)
    if os.path.exists("/run/vswitch/vswitch.sock"):
        pytest.skip("a vswitchd serves the default socket on this machine")
    assert main(["stats"]) == 1
    assert "at /run/vswitch/vswitch.sock:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["network"],
        ["network", "rename", "a", "b"],
        ["network", "add"],
        ["network", "add", "x", "--vni", "abc"],
        ["port", "add", "c1", "--network", "blue"],
        ["port", "add", "c1", "--network", "blue", "--netns", "n", "--mtu", "1.5"],
        ["peer", "add", "127.0.0.2"],
        ["fdb", "add", "02:00:00:00:00:01", "--network", "blue"],
        ["show", "extra"],
        ["--json"],
    ],
    ids=lambda argv: " ".join(argv) or "nothing",
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: vswitchctl" in capsys.readouterr().err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd.usage() in out
        assert cmd.help in out
    for usage in ["show", "network add NAME [--vni N]", "port del NAME", "peer list [--network NET]",
                  "fdb flush [--network NET] [--port P]", "fdb add MAC --network NET --port P", "stats"]:
        assert usage in out


def test_group_help_lists_its_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fdb", "--help"])
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("  fdb ")] == ["show", "flush", "add", "del"]
