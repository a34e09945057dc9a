"""SIGKILL in the middle of changes: the state loads, no temp file stays, no TAP is orphaned.

vswitchd marks every TAP it makes (an interface alias naming its state dir) and
removes, when it starts, the marked TAPs that no restored port holds.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness.daemon import Vswitchd
from tests.harness.netns import Netns, NetnsFactory
from vswitch.client import ApiError, Client
from vswitch.orphans import tap_mark
from vswitch.state import state_from_dict

KILLS = 50
CHURNERS = 3
SLOTS_PER_CHURNER = 3


def _taps(ns: Netns) -> dict[str, str | None]:
    """TAP (tun-kind) interfaces in a namespace -> their alias."""
    out = ns.exec("ip", "-d", "-j", "link", "show", "type", "tun").stdout
    return {link["ifname"]: link.get("ifalias") for link in json.loads(out or "[]")}


def _temp_files(state_dir: Path) -> list[str]:
    """Temp files of the state file's saves and of the TAP journal's."""
    return sorted(p.name for p in state_dir.glob(".*.tmp")) if state_dir.is_dir() else []


def _churn(client: Client, slots: list[tuple[str, Netns, str]], stop: threading.Event, done: list[int]) -> None:
    """Add and delete ports until told to stop; errors are expected once the daemon is gone."""
    while not stop.is_set():
        for name, ns, ifname in slots:
            for method, path, body in (("POST", "/v1/ports", {"name": name, "network": "blue", "netns": ns.name,
                                                                "ifname": ifname}),
                                       ("DELETE", f"/v1/ports/{name}", None)):
                if stop.is_set():
                    return
                try:
                    client.request(method, path, body)
                except ApiError:
                    continue
                done[0] += 1


@pytest.mark.root
@pytest.mark.timeout(300)
def test_sigkill_during_changes_leaves_a_loadable_state_no_temp_files_and_no_orphan_taps(
        vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory) -> None:
    nss = [netns_factory() for _ in range(3)]
    d = vswitchd_factory('[[network]]\nname = "blue"\n')
    mark = tap_mark(d.state_dir)
    slots = [(f"p{i}", nss[i % len(nss)], f"e{i}") for i in range(CHURNERS * SLOTS_PER_CHURNER)]
    rng = random.Random(7)
    orphans_removed = temp_files_left = 0
    started = time.monotonic()
    for kill in range(KILLS):
        stop, done = threading.Event(), [0]
        client = Client(d.socket_path, timeout=5)
        threads = [threading.Thread(target=_churn, args=(client, slots[i::CHURNERS], stop, done), daemon=True)
                   for i in range(CHURNERS)]
        for t in threads:
            t.start()
        try:
            # Killed after a varying number of changes, so the moment falls anywhere in the next ones.
            target = rng.randint(1, 6)
            deadline = time.monotonic() + 30
            while done[0] < target:
                assert time.monotonic() < deadline, f"kill {kill}: only {done[0]} changes in 30 s"
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
            assert d.proc is not None
            d.proc.kill()
            d.proc.wait(timeout=30)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        # What the crash left: a state file that reads back whole (or none yet).
        state_file = d.state_dir / "state.json"
        if state_file.exists():
            state_from_dict(json.loads(state_file.read_text()))
        temp_files_left += len(_temp_files(d.state_dir))
        d.start()
        assert _temp_files(d.state_dir) == [], f"kill {kill}"
        status, ports = d.api("GET", "/v1/ports")
        assert status == 200
        owned = {(p["netns"], p["ifname"]) for p in ports}
        for ns in nss:
            for ifname, alias in _taps(ns).items():
                assert (ns.name, ifname) in owned, f"kill {kill}: TAP {ifname} in {ns.name} ({alias}) has no port"
                assert alias == mark
        orphans_removed = d.stderr_text.count("removed orphan TAP")
    print(f"{KILLS} kills in {time.monotonic() - started:.1f} s: {orphans_removed} orphan TAPs removed at start, "
          f"{temp_files_left} temp files found after a kill and removed")


def _make_tap(ns: Netns, ifname: str, alias: str | None) -> None:
    ns.exec("ip", "tuntap", "add", "dev", ifname, "mode", "tap")
    if alias is not None:
        ns.exec("ip", "link", "set", "dev", ifname, "alias", alias)


@pytest.mark.root
def test_only_this_switchs_unowned_taps_are_removed_at_start(
        vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory) -> None:
    ns = netns_factory()
    d = vswitchd_factory(f'[[network]]\nname = "blue"\n[[port]]\nname = "c1"\nnetwork = "blue"\nnetns = "{ns.name}"\n',
                         start=False)
    mark = tap_mark(d.state_dir)
    _make_tap(ns, "orphan0", mark)  # what a crash leaves
    _make_tap(ns, "other0", tap_mark(d.tmp_path / "another-state-dir"))  # another vswitchd's
    _make_tap(ns, "plain0", None)  # somebody else's
    d.start()
    taps = _taps(ns)
    assert set(taps) == {"eth0", "other0", "plain0"}, taps
    assert taps["eth0"] == mark  # the port's own TAP carries the mark
    assert f"removed orphan TAP orphan0 in netns {ns.name}" in d.run_stderr
    # A restart re-attaches the port's TAP and removes nothing.
    assert d.stop() == 0
    d.start()
    assert set(_taps(ns)) == {"eth0", "other0", "plain0"}
    assert "removed orphan TAP" not in d.run_stderr


@pytest.fixture
def unnamed_netns() -> Iterator[str]:
    """A namespace known only as /proc/PID/ns/net (as a container runtime may pass it)."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    try:
        path = f"/proc/{proc.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline, "unshare did not enter a new namespace"
            time.sleep(0.01)
        yield path
    finally:
        proc.kill()
        proc.wait()


def _nsenter(path: str, *cmd: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", *cmd], check=True, capture_output=True, text=True,
                          timeout=30).stdout


@pytest.mark.root
def test_a_namespace_known_only_by_path_is_journalled_and_its_orphan_found(
        vswitchd_factory: Callable[..., Vswitchd], unnamed_netns: str) -> None:
    d = vswitchd_factory('[[network]]\nname = "blue"\n')
    journal = d.state_dir / "tap-namespaces.json"
    assert json.loads(journal.read_text()) == []
    # Recorded before the TAP is made, and kept while vswitchd runs.
    assert d.api("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": unnamed_netns})[0] == 201
    assert json.loads(journal.read_text()) == [unnamed_netns]
    assert d.api("DELETE", "/v1/ports/c1")[0] == 204
    d.kill()
    # As if a crash had cut an add short: a marked TAP in a namespace the state does not name.
    _nsenter(unnamed_netns, "ip", "tuntap", "add", "dev", "orphan0", "mode", "tap")
    _nsenter(unnamed_netns, "ip", "link", "set", "dev", "orphan0", "alias", tap_mark(d.state_dir))
    d.start()
    assert json.loads(_nsenter(unnamed_netns, "ip", "-j", "link", "show", "type", "tun")) == []
    assert f"removed orphan TAP orphan0 in netns {unnamed_netns}" in d.run_stderr
    assert json.loads(journal.read_text()) == []  # reset once the orphans are gone
