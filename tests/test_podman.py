"""podman end to end: a real runtime runs the vswitch CNI plugin (installed as
`make install-cni` installs it) for busybox containers on a vswitch network."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness.cni import leases
from tests.harness.hosts import HostVswitchd
from tests.harness.netns import NetnsFactory, list_netns, remove_stale_netns
from tests.harness.podman import IMAGE, Podman, podman_missing
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.skipif(podman_missing() is not None, reason=str(podman_missing()))]

NETWORK = "vsblue"
SUBNET = "10.89.7.0/24"
GATEWAY = "10.89.7.1"
CYCLES = 20


class Rig:
    def __init__(self, daemon: HostVswitchd, podman: Podman) -> None:
        self.daemon, self.podman = daemon, podman
        self.ipam_dir = podman.base / "ipam"

    def container_ports(self) -> list[dict[str, Any]]:
        return [p for p in self.daemon.api("GET", "/v1/ports")[1] if not p["host"]]

    def port_of(self, container_id: str) -> dict[str, Any] | None:
        found = [p for p in self.container_ports() if p["labels"].get("cni.container-id") == container_id]
        return found[0] if found else None

    def run(self, name: str) -> str:
        """A container left running; its full ID."""
        return self.podman("run", "-d", "--name", name, "--network", NETWORK, IMAGE, "sleep", "600").stdout.strip()

    def ip_of(self, name: str) -> str:
        out = self.podman("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        match = re.search(r"inet (10\.89\.7\.\d+)/24", out)
        assert match, out
        return match.group(1)

    def ping(self, name: str, ip: str, count: int = 2) -> bool:
        out = self.podman("exec", name, "ping", "-c", str(count), "-W", "5", ip, check=False).stdout
        return f"{count} packets received" in out


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, _stale_netns_swept: None) -> Iterator[Rig]:
    factory = NetnsFactory()
    host = factory()
    daemon = HostVswitchd(host, tmp_path_factory.mktemp("podman-vswitchd"), config="")
    podman = None
    try:
        daemon.start()
        podman = Podman(str(host.path), NETWORK)
        podman.install_plugin()
        podman.write_network({"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
            {"type": "vswitch", "socket": str(daemon.socket_path), "gateway": True, "mtu": 1400,
             "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(podman.base / "ipam")}}]})
        podman.import_busybox()
        yield Rig(daemon, podman)
    finally:
        if podman is not None:
            podman.close()
        if daemon.running():
            daemon.stop()
        daemon.kill()
        factory.close()


@pytest.fixture
def containers(rig: Rig) -> Iterator[list[str]]:
    """Names a test gives its containers: removed after it, whatever happened."""
    names: list[str] = []
    yield names
    if names:
        rig.podman("rm", "-f", "-t", "0", *names, check=False)


def test_containers_attach_and_ping_each_other_and_the_gateway(rig: Rig, containers: list[str]) -> None:
    containers += ["vstp-a", "vstp-b"]
    ids = [rig.run(name) for name in containers]
    ports = [rig.port_of(cid) for cid in ids]
    assert all(p is not None and p["state"] == "up" and p["mtu"] == 1400 for p in ports), ports
    assert all(p["netns"].startswith("/run/netns/") for p in ports)  # podman's own namespaces
    ip_a, ip_b = rig.ip_of("vstp-a"), rig.ip_of("vstp-b")
    assert ip_a != ip_b and sorted([ip_a, ip_b]) == sorted(p["ips"][0].split("/")[0] for p in ports)
    assert rig.ping("vstp-a", ip_b) and rig.ping("vstp-b", ip_a)
    assert rig.ping("vstp-a", GATEWAY)
    routes = rig.podman("exec", "vstp-a", "ip", "route").stdout
    assert f"default via {GATEWAY}" in routes


def test_restart_reattaches(rig: Rig, containers: list[str]) -> None:
    containers += ["vstp-r", "vstp-peer"]
    cid = rig.run("vstp-r")
    rig.run("vstp-peer")
    before = rig.port_of(cid)
    assert before is not None
    rig.podman("restart", "-t", "0", "vstp-r")
    after = rig.port_of(cid)
    assert after is not None and after["state"] == "up"
    assert after["netns"] != before["netns"]  # a new sandbox, attached again
    assert len([p for p in rig.container_ports() if p["labels"]["cni.container-id"] == cid]) == 1
    assert rig.ping("vstp-r", rig.ip_of("vstp-peer")) and rig.ping("vstp-r", GATEWAY)


def test_rm_detaches(rig: Rig, containers: list[str]) -> None:
    containers.append("vstp-d")
    cid = rig.run("vstp-d")
    port = rig.port_of(cid)
    assert port is not None
    ip = port["ips"][0].split("/")[0]
    assert ip in leases(rig.ipam_dir, NETWORK)
    rig.podman("rm", "-f", "-t", "0", "vstp-d")
    assert rig.port_of(cid) is None
    assert ip not in leases(rig.ipam_dir, NETWORK)
    assert not Path(port["netns"]).exists()


def test_no_port_leaks_after_create_remove_cycles(rig: Rig) -> None:
    rig.podman("rm", "-a", "-f", "-t", "0")
    wait_until(lambda: rig.container_ports() == [], message="container ports gone")
    netns_before = set(list_netns())
    for i in range(CYCLES):
        # Each container says what address it had: it was attached while it lived.
        out = rig.podman("run", "--rm", "--network", NETWORK, IMAGE, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert re.search(r"inet 10\.89\.7\.\d+/24", out), (i, out)
    assert rig.container_ports() == []
    assert leases(rig.ipam_dir, NETWORK) == []
    assert {n for n in set(list_netns()) - netns_before if n.startswith(("netns-", "cni-"))} == set()
    # The network's last container went, so its gateway and the network went with it.
    assert rig.daemon.api("GET", "/v1/ports")[1] == []
    assert rig.daemon.api("GET", "/v1/networks")[1] == []
    remove_stale_netns()
