"""Port policy in the compiled decision, asked directly (no root): one frame per rule."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest

from fastpath import Datapath
from rawframes import BROADCAST, eth, mac

OWN, OTHER = mac(1), mac(2)
IPV4 = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0])


def udp4(src: bytes, sport: int = 1000, dport: int = 2000) -> bytes:
    return IPV4 + src + bytes([10, 0, 0, 255]) + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)


@pytest.fixture
def dp() -> Iterator[Datapath]:
    dp = Datapath(max_ports=4, mac_table_size=64)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    vtep = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        vtep[0].bind(("127.0.0.1", 0))
        dp.set_vtep(vtep[0].fileno(), vtep[1].fileno(), vtep[0].getsockname()[1], 49152, 65535, 1500)
        for a, b in pairs:
            dp.add_port(b.fileno(), 1)
        dp.set_network_vni(1, 100)
        dp.add_peer(1, "192.0.2.2")
        dp.set_port_policy(0, True, False, False, [OWN], ["10.0.0.1"])
        dp.fdb_pin(1, OWN, 0)
        yield dp
    finally:
        for s in [*vtep, *(s for p in pairs for s in p)]:
            s.close()


def reason(dp: Datapath, frame: bytes, **ingress: object) -> str | None:
    return dp.decide(frame, **(ingress or {"in_port": 0}))["reason"]


def test_each_rule(dp: Datapath) -> None:
    assert reason(dp, eth(BROADCAST, OTHER, udp4(bytes([10, 0, 0, 1])), 0x0800)) == "spoofed_mac"
    assert reason(dp, eth(BROADCAST, OWN, udp4(bytes([10, 0, 0, 2])), 0x0800)) == "spoofed_ip"
    assert reason(dp, eth(BROADCAST, OWN, udp4(bytes([10, 0, 0, 1])), 0x0800)) is None
    assert reason(dp, eth(BROADCAST, OWN, udp4(bytes(4), 68, 67), 0x0800)) is None  # DHCP discover
    assert reason(dp, eth(BROADCAST, OWN, udp4(bytes([10, 0, 0, 1]), 67, 68), 0x0800)) == "dhcp_guard"
    arp = bytes.fromhex("0001080006040002") + OWN + bytes([10, 0, 0, 9]) + OTHER + bytes([10, 0, 0, 2])
    assert reason(dp, eth(BROADCAST, OWN, arp, 0x0806)) == "spoofed_arp"
    # Port security off: anything goes, but another port's pinned MAC still does not.
    dp.set_port_policy(0, False)
    assert reason(dp, eth(BROADCAST, OTHER, udp4(bytes([10, 0, 0, 2])), 0x0800)) is None
    assert reason(dp, eth(BROADCAST, OWN, b""), in_port=1) == "mac_pinned"


def test_a_pinned_mac_from_a_tunnel_peer_moves_nothing(dp: Datapath) -> None:
    d = dp.decide(eth(BROADCAST, OWN, b"x" * 46), from_addr="192.0.2.2", vni=100, dry_run=False)
    assert (d["verdict"], d["reason"], d["learn"]) == ("drop", "mac_pinned", "pinned_kept")
    assert dp.fdb_lookup(1, OWN)[:2] == (0, True)
