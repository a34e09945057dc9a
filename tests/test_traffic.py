"""Single-host switching through a real vswitchd: TAP ports in namespaces, scapy frames.

Absence checks rely on a fence: the daemon forwards the frames of one ingress
port in order, and a TAP write delivers a frame to the namespace's packet
sockets before it returns. So once a later broadcast from the same sender has
arrived, every copy of an earlier frame the switch wrote has arrived as well,
and the counters include it.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest

from tests.harness.agent import Agent
from tests.harness.lan import IFNAME, Host, attached_host, port_mac
from tests.harness.lan import Lan as LanBase
from tests.harness.frames import new_token
from tests.harness.netns import Netns
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.io_modes]

BROADCAST = "ff:ff:ff:ff:ff:ff"
UNKNOWN_MAC = "02:00:00:00:0f:0f"
# A station behind a port (these ports have port security off, as a nested bridge's would): its MAC
# is learned, moves and is flushed; a port's own MAC is pinned to it (test_policy.py).
STATION = "02:00:00:00:0a:0a"
# port -> network; p1..p3 share "blue", p4 is alone in "red".
TOPOLOGY = {"p1": "blue", "p2": "blue", "p3": "blue", "p4": "red"}


class Lan(LanBase):
    def counters(self) -> dict[str, dict[str, Any]]:
        return self.daemon.ctl("stats")["ports"]

    def fdb(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["network"], e["mac"]): e for e in self.daemon.ctl("fdb", "show")}


def port_config(name: str, network: str, ns: Netns) -> str:
    return (
        f'[[port]]\nname = "{name}"\nnetns = "{ns.name}"\nnetwork = "{network}"\n'
        f'ifname = "{IFNAME}"\nmac = "{port_mac(name)}"\nport_security = false\n'
    )


@pytest.fixture
def lan(netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any) -> Lan:
    namespaces = {port: netns_factory() for port in TOPOLOGY}
    config = "".join(f'[[network]]\nname = "{net}"\n' for net in sorted(set(TOPOLOGY.values())))
    config += "".join(port_config(port, net, namespaces[port]) for port, net in TOPOLOGY.items())
    daemon = vswitchd_factory(config)
    hosts = {}
    for port, net in TOPOLOGY.items():
        hosts[port] = attached_host(port, net, namespaces[port], agent_factory)
        assert hosts[port].ns.link(IFNAME)["address"] == port_mac(port)
    return Lan(daemon, hosts)


def test_unknown_unicast_and_broadcast_flood_within_their_network(lan: Lan) -> None:
    h1, h2, h3, h4 = (lan[p] for p in ("p1", "p2", "p3", "p4"))
    unknown, bcast = new_token("unknown"), new_token("bcast")
    sent_unknown, sent_bcast = h1.frame(UNKNOWN_MAC, unknown), h1.frame(BROADCAST, bcast, size=300)

    h1.send(sent_unknown, sent_bcast)

    for host in (h2, h3):
        assert host.wait(bcast) == [sent_bcast]
        assert host.seen(unknown) == [sent_unknown]
    # The broadcast left after the unknown unicast: it fences both.
    for token in (unknown, bcast):
        assert h4.seen(token) == [], "a frame crossed from blue into red"
        assert h1.seen(token) == [], "a frame was sent back out of its ingress port"
    c = lan.counters()
    assert (c["p1"]["rx_packets"], c["p1"]["flooded"]) == (2, 2)
    assert c["p1"]["rx_bytes"] == len(sent_unknown) + len(sent_bcast)
    assert [c[p]["tx_packets"] for p in ("p1", "p2", "p3", "p4")] == [0, 2, 2, 0]


def test_learned_mac_gets_unicast_to_its_port_only(lan: Lan) -> None:
    h1, h2, h3 = lan["p1"], lan["p2"], lan["p3"]
    lan.fence(h2)  # teaches the switch where h2's MAC lives
    entry = lan.fdb()[("blue", h2.mac)]
    assert (entry["port"], entry["static"]) == ("p2", False)
    token = new_token("ucast")
    sent = h1.frame(h2.mac, token)

    h1.send(sent)
    lan.fence(h1)

    assert h2.seen(token) == [sent]
    assert h3.seen(token) == []
    c = lan.counters()
    assert c["p1"]["flooded"] == 1  # the fence only
    assert c["p3"]["tx_packets"] == 2  # both fences, not the unicast


def test_frames_arrive_intact_and_in_order_with_exact_counters(lan: Lan) -> None:
    h1, h2 = lan["p1"], lan["p2"]
    lan.fence(h2)
    token = new_token("burst")
    sizes = [60 + (i * 97) % (1514 - 60 + 1) for i in range(200)]
    sizes[-1] = 1514  # the largest frame an MTU of 1500 admits
    sent = [h1.frame(h2.mac, token, size=n) for n in sizes]

    h1.send(*sent)

    assert h2.wait(token, count=len(sent)) == sent
    c = lan.counters()
    assert (c["p1"]["rx_packets"], c["p1"]["rx_bytes"], c["p1"]["flooded"]) == (200, sum(sizes), 0)
    assert (c["p2"]["tx_packets"], c["p2"]["tx_bytes"]) == (200, sum(sizes))
    assert c["p3"]["tx_packets"] == 1  # the fence only
    assert all(n == 0 for p in c.values() for n in p["drops"].values())


def test_networks_stay_isolated_even_for_a_mac_learned_elsewhere(lan: Lan) -> None:
    h1, h2, h4 = lan["p1"], lan["p2"], lan["p4"]
    token = new_token("cross")
    h4.send(h4.frame(BROADCAST, new_token("learn")))
    wait_until(lambda: ("red", h4.mac) in lan.fdb(), message="red never learned p4's MAC")
    sent = h1.frame(h4.mac, token)

    h1.send(sent)
    lan.fence(h1)

    assert h2.seen(token) == [sent], "blue does not know the MAC, so it floods in blue"
    assert h4.seen(token) == []
    assert lan.counters()["p4"]["tx_packets"] == 0


def test_bad_frames_are_dropped_and_counted(lan: Lan) -> None:
    h1, h2, h3, h4 = (lan[p] for p in ("p1", "p2", "p3", "p4"))
    # Raise the namespace side's MTU so it can emit a frame the port's MTU of 1500 refuses.
    h1.ns.exec("ip", "link", "set", IFNAME, "mtu", "9000")
    bad = {
        "vlan_tagged": h1.frame(BROADCAST, new_token("tagged"), vlan=5),
        "src_multicast": h1.frame(BROADCAST, new_token("mcsrc"), src="01:00:5e:00:00:01"),
        "too_big": h1.frame(BROADCAST, new_token("big"), size=1515),
        "same_port": h1.frame(h1.mac, new_token("self")),
    }
    lan.fence(h1)  # also teaches the switch h1's MAC, for the same_port case

    h1.send(*bad.values())
    lan.fence(h1)

    for host in (h1, h2, h3, h4):
        assert [f for f in host.agent.frames(IFNAME) if f in bad.values()] == []
    c = lan.counters()["p1"]
    assert c["drops"] == {"runt": 0, "too_big": 1, "src_multicast": 1, "vlan_tagged": 1, "same_port": 1, "tunnel_mtu": 0, "bad_vnet_hdr": 0,
                          "gso_unsupported": 0, "spoofed_mac": 0, "spoofed_ip": 0, "spoofed_arp": 0, "spoofed_nd": 0,
                          "ra_guard": 0, "dhcp_guard": 0, "mac_pinned": 0, "mtu_exceeded": 0, "vlan_unknown": 0,
                          "vlan_untagged": 0, "vlan_stacked": 0, "storm_broadcast": 0, "storm_multicast": 0,
                          "storm_unknown_unicast": 0, "rate_limited_rx": 0, "rate_limited_tx": 0}
    assert (c["rx_packets"], c["flooded"], c["tx_packets"]) == (6, 2, 0)
    assert ("blue", "01:00:5e:00:00:01") not in lan.fdb()


def test_static_entry_steers_frames_and_flush_forgets_only_learned(lan: Lan) -> None:
    h1, h2, h3 = lan["p1"], lan["p2"], lan["p3"]
    lan.daemon.ctl("fdb", "add", UNKNOWN_MAC, "--network", "blue", "--port", "p3")
    taught = new_token("station")
    h2.send(h2.frame(BROADCAST, taught, src=STATION))
    assert h1.wait(taught) != []
    assert lan.fdb()[("blue", UNKNOWN_MAC)]["static"] is True
    steered = new_token("static")

    h1.send(h1.frame(UNKNOWN_MAC, steered))
    lan.fence(h1)

    assert len(h3.seen(steered)) == 1
    assert h2.seen(steered) == []

    lan.daemon.ctl("fdb", "flush", "--network", "blue")
    assert {k for k, e in lan.fdb().items() if not e["pinned"]} == {("blue", UNKNOWN_MAC)}
    flooded = new_token("flushed")
    h1.send(h1.frame(STATION, flooded))
    assert len(h2.wait(flooded)) == 1
    assert len(h3.wait(flooded)) == 1, "with the station's entry flushed the frame floods again"


def test_a_moved_station_is_followed(lan: Lan) -> None:
    h1, h2, h3 = lan["p1"], lan["p2"], lan["p3"]
    taught = new_token("station")
    h2.send(h2.frame(BROADCAST, taught, src=STATION))
    assert h1.wait(taught) != []
    assert lan.fdb()[("blue", STATION)]["port"] == "p2"
    # The station now shows up behind p3 (a VM migrated between nested bridges).
    h3.send(h3.frame(BROADCAST, new_token("moved"), src=STATION))
    wait_until(lambda: lan.fdb()[("blue", STATION)]["port"] == "p3", message="the FDB never followed the move")
    token = new_token("after-move")

    h1.send(h1.frame(STATION, token))
    lan.fence(h1)

    assert len(h3.seen(token)) == 1
    assert h2.seen(token) == []
    assert lan.daemon.ctl("stats")["fdb"]["moved"] == 1


def test_port_added_and_deleted_at_runtime(
    lan: Lan, netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent]
) -> None:
    h1, h2 = lan["p1"], lan["p2"]
    ns5 = netns_factory()
    lan.daemon.ctl("port", "add", "p5", "--network", "blue", "--netns", ns5.name, "--ifname", IFNAME, "--mac", port_mac("p5"))
    wait_until(lambda: ns5.link_is_up(IFNAME), message="p5's interface never came up")
    h5 = Host("p5", "blue", ns5, agent_factory(ns5))
    h5.agent.sniff_start(IFNAME)
    lan.hosts["p5"] = h5
    joined = new_token("joined")

    h1.send(h1.frame(BROADCAST, joined))
    assert len(h5.wait(joined)) == 1

    lan.daemon.ctl("port", "del", "p5")
    del lan.hosts["p5"]
    wait_until(lambda: ns5.link(IFNAME) is None, message="p5's interface outlived its port")
    assert "p5" not in {p["name"] for p in lan.daemon.ctl("port", "list")}
    left = new_token("left")
    h1.send(h1.frame(BROADCAST, left))
    assert len(h2.wait(left)) == 1, "the network keeps forwarding after a port left"
