"""Faults around a running switch: a state dir that cannot save, a container namespace deleted
under traffic, the underlay route gone under VXLAN traffic. The switch keeps forwarding."""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness import tmpfs
from tests.harness.agent import Agent
from tests.harness.daemon import Vswitchd
from tests.harness.frames import new_token
from tests.harness.hosts import UNDERLAY_IF, UNDERLAY_PREFIX, UNDERLAY_PREFIX_LEN, Container, Host, Lab, lab  # noqa: F401
from tests.harness.lan import IFNAME, Host as LanHost, port_mac
from tests.harness.netns import Netns, NetnsFactory
from tests.harness.wait import wait_until

pytestmark = pytest.mark.root

BROADCAST = "ff:ff:ff:ff:ff:ff"


def _port_config(name: str, ns: Netns) -> str:
    return (f'[[port]]\nname = "{name}"\nnetns = "{ns.name}"\nnetwork = "blue"\nifname = "{IFNAME}"\n'
            f'mac = "{port_mac(name)}"\n')


def _lan(vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory, agent_factory: Callable[[Netns], Agent],
         ports: list[str], start: bool = True, before_start: Callable[[Vswitchd], None] | None = None,
         ) -> tuple[Vswitchd, dict[str, LanHost]]:
    nss = {p: netns_factory() for p in ports}
    d = vswitchd_factory('[[network]]\nname = "blue"\n' + "".join(_port_config(p, nss[p]) for p in ports), start=False)
    if before_start is not None:
        before_start(d)
    d.start()
    hosts = {}
    for p in ports:
        agent = agent_factory(nss[p])
        agent.sniff_start(IFNAME)
        hosts[p] = LanHost(p, "blue", nss[p], agent)
    return d, hosts


def _forwards(src: LanHost, dst: LanHost) -> None:
    token = new_token("fwd")
    src.send(src.frame(dst.mac, token))
    assert dst.wait(token) != [], f"{src.port} -> {dst.port} was not forwarded"


# --- the state dir ----------------------------------------------------------------------


@pytest.fixture
def tmpfs_mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown (lazily: the daemon may still run then)."""
    mounts: list[Path] = []
    yield mounts
    for mnt in reversed(mounts):
        tmpfs.unmount(mnt, check=False)


def test_a_full_or_read_only_state_dir_refuses_changes_and_forwarding_goes_on(
        vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory,
        agent_factory: Callable[[Netns], Agent], tmpfs_mounts: list[Path]) -> None:
    def mount_tiny_tmpfs(d: Vswitchd) -> None:
        d.state_dir.mkdir(mode=0o700)
        tmpfs.mount_tiny(d.state_dir)
        tmpfs_mounts.append(d.state_dir)

    d, hosts = _lan(vswitchd_factory, netns_factory, agent_factory, ["p1", "p2"], before_start=mount_tiny_tmpfs)
    p1, p2 = hosts["p1"], hosts["p2"]
    _forwards(p1, p2)
    saved = (d.state_dir / "state.json").read_bytes()

    def refused(why: str) -> None:
        for method, path, body in (("POST", "/v1/networks", {"name": "red"}), ("DELETE", "/v1/ports/p2", None),
                                   ("POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:0a:01", "port": "p1"})):
            status, answer = d.api(method, path, body)
            assert (status, answer["error"]) == (500, "state_not_saved"), (method, path, answer)
            assert why in answer["detail"] and "nothing was changed" in answer["detail"], answer
        assert [n["name"] for n in d.ctl("network", "list")] == ["blue"]
        assert sorted(p["name"] for p in d.ctl("port", "list")) == ["p1", "p2"]
        assert [e for e in d.ctl("fdb", "show") if e["static"]] == []
        # Reads and requests that save nothing still answer; the switch forwards both ways.
        assert d.api("POST", "/v1/fdb/flush", {})[0] == 200
        _forwards(p1, p2)
        _forwards(p2, p1)
        assert (d.state_dir / "state.json").read_bytes() == saved

    tmpfs.fill(d.state_dir / "filler")
    refused("No space left on device")
    (d.state_dir / "filler").unlink()
    assert d.api("POST", "/v1/networks", {"name": "red"})[0] == 201
    assert d.api("DELETE", "/v1/networks/red")[0] == 204
    with tmpfs.read_only(d.state_dir):
        refused("Read-only file system")
    assert d.api("POST", "/v1/networks", {"name": "red"})[0] == 201
    assert d.running()


# --- a container's namespace deleted under traffic --------------------------------------


class Flood:
    """Broadcasts from `src` MAC out of `ifname` through an agent of its own (an agent serves
    one caller at a time), until stopped. Paced at about 2,000 frames/s, so that the frame
    agents capturing them beside the checks keep up."""

    def __init__(self, agent: Agent, ifname: str, src: str) -> None:
        self.agent, self.ifname, self.src = agent, ifname, src
        self.sent, self.errors = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from tests.harness.frames import marked_frame

        frames = [marked_frame(self.src, BROADCAST, new_token("flood")) for _ in range(20)]
        while not self._stop.is_set():
            try:
                self.agent.send(self.ifname, frames)
            except Exception as e:  # reported by stop()
                self.errors.append(e)
                return
            self.sent += len(frames)
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self.errors, self.errors


def test_a_namespace_deleted_under_traffic_drops_its_port_and_the_rest_forwards(
        vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory,
        agent_factory: Callable[[Netns], Agent]) -> None:
    d, hosts = _lan(vswitchd_factory, netns_factory, agent_factory, ["p1", "p2", "p3"])
    p1, p2, p3 = hosts["p1"], hosts["p2"], hosts["p3"]
    _forwards(p2, p1)  # p1 learns where p2 is: unicast to it, not only floods
    floods = [Flood(agent_factory(h.ns), IFNAME, h.mac) for h in (p1, p3)]
    try:
        wait_until(lambda: all(f.sent >= 200 for f in floods), timeout=30, message="the floods did not get going")
        # p2's agent keeps the namespace itself alive: only its name goes, as for a container
        # runtime's `ip netns del` while something still runs inside.
        subprocess.run(["ip", "netns", "del", p2.ns.name], check=True, timeout=30, capture_output=True)
        wait_until(lambda: "p2" not in [p["name"] for p in d.ctl("port", "list")], timeout=15,
                   message="the port of the deleted namespace was not removed")
        # The floods go on reaching the other port after it.
        tx = {p: c["tx_packets"] for p, c in d.ctl("stats")["ports"].items()}
        wait_until(lambda: all(c["tx_packets"] >= tx[p] + 200 for p, c in d.ctl("stats")["ports"].items()),
                   timeout=30, message="forwarding stopped after the namespace went")
    finally:
        for f in floods:
            f.stop()
    # Unicast between the others as before (p2's MAC is forgotten with its port).
    _forwards(p1, p3)
    _forwards(p3, p1)
    assert "port p2 down and removed: netns" in d.stderr_text
    assert all(e["port"] != "p2" for e in d.ctl("fdb", "show"))
    stats = d.ctl("stats")
    assert set(stats["ports"]) == {"p1", "p3"}
    assert d.running()


# --- the underlay route gone under VXLAN traffic ----------------------------------------


def test_underlay_route_gone_under_vxlan_traffic_counts_send_errors_and_recovers(lab: Lab) -> None:  # noqa: F811
    h1, h2 = lab.add_hosts(2)
    b1 = h1.add_container("b1", "blue", "10.1.0.1/24")
    b3 = h1.add_container("b3", "blue", "10.1.0.3/24")
    b2 = h2.add_container("b2", "blue", "10.1.0.2/24")
    lab.start_mesh({"blue": 100})
    route = f"{UNDERLAY_PREFIX}0/{UNDERLAY_PREFIX_LEN}"

    def crossing(src: Container, dst: Container) -> bool:
        token = new_token("x")
        src.send(src.frame(BROADCAST, token))
        return dst.wait(token, timeout=5) != []

    assert crossing(b1, b2)
    before = h1.peer_stats("blue", h2.ip)
    flood = Flood(lab.agent_factory(b1.ns), b1.ifname, b1.mac)
    try:
        h1.ns.exec("ip", "route", "del", route, "dev", UNDERLAY_IF)
        try:
            wait_until(lambda: h1.peer_stats("blue", h2.ip)["tx_errors"] >= before["tx_errors"] + 100, timeout=30,
                       message="sends to the unreachable peer were not counted as tx_errors")
            during = h1.peer_stats("blue", h2.ip)
            # The local port still gets every flood while the tunnel cannot send.
            token = new_token("local")
            b1.send(b1.frame(BROADCAST, token))
            assert b3.wait(token) != []
        finally:
            h1.ns.exec("ip", "route", "add", route, "dev", UNDERLAY_IF, "src", h1.ip)
        wait_until(lambda: crossing(b1, b2), timeout=30, message="the tunnel did not recover with its route")
        after = h1.peer_stats("blue", h2.ip)
        assert after["tx_packets"] > during["tx_packets"]
    finally:
        flood.stop()
    print(f"route gone: {during['tx_errors'] - before['tx_errors']} tunnel sends failed and counted; "
          f"{flood.sent} frames flooded in all")
    assert h1.daemon is not None and h1.daemon.running()
    assert crossing(b2, b1)
