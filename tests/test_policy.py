"""Port policy through a real vswitchd: TAP ports in namespaces, scapy frames.

p1 and p2 are well-behaved containers with addresses; p3 is the attacker
(port security on, the default); p4 is a nested bridge with port security
off. Each offending frame is sent beside a legitimate one: the victim
captures the legitimate frame and never the offending one, and the
attacker's port counts the drop under its reason. Absence is checked behind
a fence (see test_traffic.py): a later broadcast from the same sender has
arrived, so every earlier frame the switch wrote has arrived as well.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from tests.harness.agent import Agent
from tests.harness.frames import _mark, new_token
from tests.harness.lan import IFNAME, port_mac
from tests.harness.lan import Lan as LanBase
from tests.harness.lan import attached_host
from tests.harness.netns import Netns
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.root]

BROADCAST = "ff:ff:ff:ff:ff:ff"
FOREIGN_MAC = "02:00:00:00:0e:0e"
ADDRS = {"p1": ("10.9.0.1", "fd09::1"), "p2": ("10.9.0.2", "fd09::2"), "p3": ("10.9.0.3", "fd09::3"),
         "p4": ("10.9.0.4", "fd09::4")}


class Lan(LanBase):
    def drops(self, port: str) -> dict[str, int]:
        return {r: n for r, n in self.daemon.ctl("port", "show", port)["counters"]["drops"].items() if n}


def marked(pkt: Packet, token: str) -> bytes:
    """The packet with the token behind it, as link padding (outside the IP payload length)."""
    return bytes(pkt) + _mark(token)


@pytest.fixture
def lan(netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any) -> Lan:
    namespaces = {port: netns_factory() for port in ADDRS}
    for ns in namespaces.values():
        # The ports have IPv6 addresses: IPv6 on (without DAD, so they are usable at once).
        ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.default.accept_dad=0")
    config = '[[network]]\nname = "blue"\n'
    for port, (v4, v6) in ADDRS.items():
        config += (f'[[port]]\nname = "{port}"\nnetns = "{namespaces[port].name}"\nnetwork = "blue"\n'
                   f'mac = "{port_mac(port)}"\nips = ["{v4}/24", "{v6}/64"]\n')
        if port == "p4":
            config += "port_security = false\n"
    daemon = vswitchd_factory(config)
    hosts = {}
    for port, ns in namespaces.items():
        hosts[port] = attached_host(port, "blue", ns, agent_factory)
    return Lan(daemon, hosts)


def check(lan: Lan, sender: str, bad: bytes, good: bytes, bad_token: str, good_token: str, reason: str) -> None:
    """`bad` is dropped and counted under `reason`; `good`, sent after it, reaches p2."""
    before = lan.drops(sender).get(reason, 0)
    lan[sender].send(bad, good)
    assert lan["p2"].wait(good_token) != [], f"the legitimate frame from {sender} never arrived"
    lan.fence(lan[sender])
    for host in lan.hosts.values():
        assert host.seen(bad_token) == [], f"{reason}: the offending frame reached {host.port}"
    assert lan.drops(sender).get(reason, 0) == before + 1


def test_a_forged_source_mac_moves_nothing_and_is_counted(lan: Lan) -> None:
    bad, good = new_token("bad"), new_token("good")
    check(lan, "p3", lan["p3"].frame(BROADCAST, bad, src=port_mac("p1")), lan["p3"].frame(BROADCAST, good),
          bad, good, "spoofed_mac")
    fdb = {e["mac"]: e for e in lan.daemon.ctl("fdb", "show")}
    assert fdb[port_mac("p1")]["port"] == "p1" and fdb[port_mac("p1")]["pinned"]
    # trace asks the same decision: it names the rule.
    t = lan.daemon.ctl("trace", "--in-port", "p3", "--dst", BROADCAST, "--src", port_mac("p1"))
    assert (t["action"], t["reason"]) == ("drop", "spoofed_mac")
    assert "port policy of port p3: the source MAC is not the port's" in t["steps"]
    t = lan.daemon.ctl("trace", "--in-port", "p4", "--dst", BROADCAST, "--src", port_mac("p1"))
    assert (t["reason"], t["learn"]["result"]) == ("mac_pinned", "pinned to port p1: kept, the frame is dropped")
    # With port security off, a frame carrying p1's own MAC is still refused: the MAC is pinned.
    check(lan, "p4", lan["p4"].frame(BROADCAST, bad, src=port_mac("p1")),
          lan["p4"].frame(BROADCAST, good, src=FOREIGN_MAC), bad, good, "mac_pinned")
    assert {e["mac"]: e["port"] for e in lan.daemon.ctl("fdb", "show")}[port_mac("p1")] == "p1"


def test_arp_poisoning_leaves_the_victims_neighbour_table_alone(lan: Lan) -> None:
    victim = lan["p2"].ns
    victim.exec("ip", "neigh", "replace", "10.9.0.1", "lladdr", port_mac("p1"), "dev", IFNAME, "nud", "reachable")
    bad, good = new_token("bad"), new_token("good")
    p3 = port_mac("p3")
    forged = Ether(src=p3, dst=port_mac("p2")) / ARP(op=2, hwsrc=p3, psrc="10.9.0.1", hwdst=port_mac("p2"),
                                                      pdst="10.9.0.2")
    honest = Ether(src=p3, dst=BROADCAST) / ARP(op=1, hwsrc=p3, psrc="10.9.0.3", pdst="10.9.0.2")
    check(lan, "p3", marked(forged, bad), marked(honest, good), bad, good, "spoofed_arp")
    assert port_mac("p1") in victim.exec("ip", "neigh", "show", "10.9.0.1", "dev", IFNAME).stdout
    # The sender MAC inside the ARP is checked too, not only the Ethernet source.
    bad, good = new_token("bad"), new_token("good")
    forged = Ether(src=p3, dst=BROADCAST) / ARP(op=1, hwsrc=port_mac("p1"), psrc="10.9.0.3", pdst="10.9.0.2")
    check(lan, "p3", marked(forged, bad), marked(honest, good), bad, good, "spoofed_arp")


def test_ip_sources_and_dhcp(lan: Lan) -> None:
    p3 = port_mac("p3")
    bad, good = new_token("bad"), new_token("good")
    spoofed = Ether(src=p3, dst=BROADCAST) / IP(src="10.9.0.1", dst="10.9.0.255") / UDP(sport=1000, dport=2000)
    honest = Ether(src=p3, dst=BROADCAST) / IP(src="10.9.0.3", dst="10.9.0.255") / UDP(sport=1000, dport=2000)
    check(lan, "p3", marked(spoofed, bad), marked(honest, good), bad, good, "spoofed_ip")
    # A DHCP client speaks from 0.0.0.0 before it has an address; a container may not answer as a server.
    bad, good = new_token("bad"), new_token("good")
    offer = Ether(src=p3, dst=BROADCAST) / IP(src="10.9.0.3", dst="255.255.255.255") / UDP(sport=67, dport=68)
    discover = Ether(src=p3, dst=BROADCAST) / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
    check(lan, "p3", marked(offer, bad), marked(discover, good), bad, good, "dhcp_guard")
    bad, good = new_token("bad"), new_token("good")
    spoofed6 = Ether(src=p3, dst="33:33:00:00:00:01") / IPv6(src="fd09::1", dst="ff02::1") / UDP(sport=1, dport=2)
    honest6 = Ether(src=p3, dst="33:33:00:00:00:01") / IPv6(src="fd09::3", dst="ff02::1") / UDP(sport=1, dport=2)
    check(lan, "p3", marked(spoofed6, bad), marked(honest6, good), bad, good, "spoofed_ip")


def test_neighbor_discovery_and_router_advertisements(lan: Lan) -> None:
    p3 = port_mac("p3")
    head = Ether(src=p3, dst="33:33:00:00:00:01") / IPv6(src="fd09::3", dst="ff02::1")
    honest = head / ICMPv6ND_NA(tgt="fd09::3", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=p3)
    cases = [
        (head / ICMPv6ND_NA(tgt="fd09::1", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=p3), "spoofed_nd"),
        (head / ICMPv6ND_NA(tgt="fd09::3", R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=port_mac("p1")), "spoofed_nd"),
        (head / ICMPv6ND_NS(tgt="fd09::2") / ICMPv6NDOptSrcLLAddr(lladdr=port_mac("p1")), "spoofed_nd"),
        (Ether(src=p3, dst="33:33:00:00:00:01") / IPv6(src="::", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fd09::1"),
         "spoofed_nd"),
        (head / ICMPv6ND_RA(), "ra_guard"),
    ]
    for pkt, reason in cases:
        bad, good = new_token("bad"), new_token("good")
        check(lan, "p3", marked(pkt, bad), marked(honest, good), bad, good, reason)
    # DAD for its own address, from ::, passes.
    dad = Ether(src=p3, dst="33:33:ff:00:00:03") / IPv6(src="::", dst="ff02::1:ff00:3") / ICMPv6ND_NS(tgt="fd09::3")
    token = new_token("dad")
    lan["p3"].send(marked(dad, token))
    assert lan["p2"].wait(token) != []


def test_policy_changes_at_run_time(lan: Lan) -> None:
    bad, good = new_token("bad"), new_token("good")
    check(lan, "p3", lan["p3"].frame(BROADCAST, bad, src=FOREIGN_MAC), lan["p3"].frame(BROADCAST, good),
          bad, good, "spoofed_mac")
    view = lan.daemon.ctl("port", "set", "p3", "--allow", FOREIGN_MAC)
    assert view["policy"]["allowed"] == [FOREIGN_MAC] and view["policy"]["port_security"] is True
    token = new_token("allowed")
    lan["p3"].send(lan["p3"].frame(BROADCAST, token, src=FOREIGN_MAC))
    assert lan["p2"].wait(token) != []
    lan.daemon.ctl("port", "set", "p3", "--port-security", "off")
    token = new_token("off")
    lan["p3"].send(lan["p3"].frame(BROADCAST, token, src="02:00:00:00:0d:0d"))
    assert lan["p2"].wait(token) != []
    # Bad input changes nothing.
    proc = lan.daemon.ctl_run("port", "set", "p3", "--allow", "not-an-address")
    assert proc.returncode != 0 and "allowed[0]" in proc.stderr
    assert lan.daemon.ctl("port", "show", "p3")["policy"]["port_security"] is False
