"""TAP ports inside real network namespaces, and the namespace helpers under them."""
from __future__ import annotations

import itertools
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from vswitch.errors import Conflict, InvalidArgument
from vswitch.netns import netns_identity, resolve_netns, run_in_netns
from vswitch.tap import TapPort, open_tap

pytestmark = pytest.mark.root

ETH_TEST = 0x88B5  # IEEE local experimental ethertype: nothing else sends it
_seq = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace; yields its path."""
    name = f"vst-tap-{os.getpid()}-{next(_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def ports() -> Iterator[list[TapPort]]:
    """Ports opened by a test; destroyed at teardown so nothing pins a namespace."""
    opened: list[TapPort] = []
    try:
        yield opened
    finally:
        for port in opened:
            port.destroy()


def link_state(path: str, ifname: str) -> dict[str, Any] | None:
    """MAC, MTU, flags, addresses and tun info of ifname in a namespace; None if absent."""

    def read() -> dict[str, Any] | None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)
            if not idx:
                return None
            link = ipr.get_links(idx[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info else None
            return {
                "index": idx[0],
                "mac": link.get_attr("IFLA_ADDRESS"),
                "mtu": link.get_attr("IFLA_MTU"),
                "up": bool(link["flags"] & 1),  # IFF_UP
                "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
                "vnet_hdr": data.get_attr("IFLA_TUN_VNET_HDR") if data else None,
                "addrs": {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx[0])},
            }

    return run_in_netns(path, read)


def wait_until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def frame(dst: str, src: str, payload: bytes) -> bytes:
    mac = bytes.fromhex
    return (mac(dst.replace(":", "")) + mac(src.replace(":", "")) + ETH_TEST.to_bytes(2, "big") + payload).ljust(60, b"\0")


def read_test_frame(fd: int, timeout: float = 5.0) -> bytes:
    """The next frame of our test ethertype read from a TAP fd (the stack's own chatter skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            data = os.read(fd, 65536)
            if data[12:14] == ETH_TEST.to_bytes(2, "big"):
                return data
    raise AssertionError("no test frame read from the TAP fd")


def test_open_creates_configured_interface(netns: str, ports: list[TapPort]) -> None:
    port = open_tap(netns, "eth0", mac="02:00:00:00:10:01", ip="10.99.0.1/24", mtu=1400)
    ports.append(port)
    assert port.created
    assert (port.ifname, port.netns_path, port.mac) == ("eth0", netns, "02:00:00:00:10:01")
    state = link_state(netns, "eth0")
    assert state is not None
    assert state["index"] == port.ifindex
    assert (state["kind"], state["mac"], state["mtu"], state["up"]) == ("tun", "02:00:00:00:10:01", 1400, True)
    assert "10.99.0.1/24" in state["addrs"]
    assert not os.get_blocking(port.fd)
    assert not os.get_inheritable(port.fd)


def test_frames_flow_both_ways(netns: str, ports: list[TapPort]) -> None:
    port = open_tap(netns, "eth0", mac="02:00:00:00:10:01")
    ports.append(port)

    def packet_socket() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TEST))
        s.bind(("eth0", ETH_TEST))
        return s

    sock = run_in_netns(netns, packet_socket)
    try:
        inbound = frame("ff:ff:ff:ff:ff:ff", "02:00:00:00:99:01", b"into the container")
        os.write(port.fd, inbound)
        sock.settimeout(5.0)
        assert sock.recv(2048) == inbound

        outbound = frame("02:00:00:00:99:01", port.mac, b"out of the container")
        sock.send(outbound)
        assert read_test_frame(port.fd) == outbound
    finally:
        sock.close()


def test_close_keeps_interface_and_reopen_reattaches(netns: str, ports: list[TapPort]) -> None:
    first = open_tap(netns, "eth0", mac="02:00:00:00:10:02", ip="10.99.0.2/24")
    first.close()
    first.close()  # harmless
    assert first.fd == -1
    kept = link_state(netns, "eth0")
    assert kept is not None and kept["mac"] == "02:00:00:00:10:02" and "10.99.0.2/24" in kept["addrs"]

    again = open_tap(netns, "eth0", ip="10.99.0.2/24")  # same address again: nothing to add
    ports.append(again)
    assert not again.created
    assert again.mac == "02:00:00:00:10:02"
    assert again.ifindex == kept["index"]
    state = link_state(netns, "eth0")
    assert state is not None and state["addrs"] == kept["addrs"] and state["up"]


def test_destroy_deletes_interface(netns: str) -> None:
    port = open_tap(netns, "eth0")
    port.destroy()
    port.destroy()  # harmless
    wait_until(lambda: link_state(netns, "eth0") is None, "eth0 to disappear")


def test_vnet_hdr_flag(netns: str, ports: list[TapPort]) -> None:
    ports.append(open_tap(netns, "eth0", vnet_hdr=True))
    state = link_state(netns, "eth0")
    assert state is not None and state["vnet_hdr"] == 1


def test_non_tap_interface_is_refused(netns: str) -> None:
    name = os.path.basename(netns)
    subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"], check=True)
    with pytest.raises(Conflict, match=f"^netns {name} already has a non-TAP interface eth0 \\(veth\\)$"):
        open_tap(netns, "eth0")
    state = link_state(netns, "eth0")
    assert state is not None and state["kind"] == "veth"


def test_tap_held_open_twice_is_refused(netns: str, ports: list[TapPort]) -> None:
    ports.append(open_tap(netns, "eth0"))
    with pytest.raises(Conflict, match="TAP eth0 is already held open"):
        open_tap(netns, "eth0")


def test_missing_namespace_is_invalid() -> None:
    name = f"vst-absent-{os.getpid()}"
    with pytest.raises(InvalidArgument, match=f"^netns: '/run/netns/{name}' does not exist$"):
        open_tap(f"/run/netns/{name}", "eth0")
    with pytest.raises(InvalidArgument, match=f"^netns: '{name}' does not exist \\(no /run/netns/{name}\\)$"):
        resolve_netns(name)


def test_run_in_netns_enters_namespace_and_returns(netns: str) -> None:
    inside = run_in_netns(netns, netns_identity, "/proc/thread-self/ns/net")
    assert inside is not None
    assert inside == netns_identity(netns) != netns_identity("/proc/self/ns/net")
    assert resolve_netns(os.path.basename(netns)) == netns


def test_run_in_netns_reraises(netns: str) -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_in_netns(netns, fail)


def test_identity_gone_after_delete() -> None:
    name = f"vst-tap-{os.getpid()}-{next(_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = resolve_netns(name)
        before = netns_identity(path)
        assert before is not None
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert netns_identity(path) is None


def test_refused_configuration_leaves_nothing_behind(netns: str) -> None:
    name = os.path.basename(netns)
    for scope in ("all", "default"):
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1"], check=True)
    with pytest.raises(InvalidArgument, match=f"^netns {name}: cannot configure eth0 .*ip=fd00::1/64"):
        open_tap(netns, "eth0", ip="fd00::1/64")
    assert link_state(netns, "eth0") is None
