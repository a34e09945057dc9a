"""802.1Q trunk ports through a real vswitchd: real namespaces, TAPs, Linux VLAN
subinterfaces and a Linux bridge with vlan_filtering, scapy frames.

Topology of most tests: access ports b1, b2 (network blue), r1 (red), g1
(green), and a trunk port t1 carrying blue as VLAN 10 and red as VLAN 20, with
green native (untagged). In t1's namespace eth0 is the TAP: tagged frames are
sent and captured there with packet sockets. Where the kernel has 802.1Q
(CONFIG_VLAN_8021Q, CONFIG_BRIDGE_VLAN_FILTERING), eth0.10 and eth0.20 are
VLAN subinterfaces of it, as a VM or a router behind a trunk has them, and a
Linux bridge with vlan_filtering takes the trunk on the other side; on a kernel
without them those tests skip, saying so.

Absence checks use a fence: the daemon handles one port's frames in order, so
once a later frame of the same port has reached its receivers, every earlier
frame was handled (and counted).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from tests.harness.agent import Agent
from tests.harness.frames import has_token, marked_frame, new_token
from tests.harness.netns import Netns
from tests.harness.tcp import iperf3_64mib

pytestmark = [pytest.mark.root, pytest.mark.io_modes]

IFNAME = "eth0"
BROADCAST = "ff:ff:ff:ff:ff:ff"
VID = {"blue": 10, "red": 20}
SUBNET = {"blue": "10.61.10", "red": "10.61.20", "green": "10.61.30"}
TRUNK_HOST = 100  # the trunk namespace's address in each subnet
PING = ("-c", "3", "-i", "0.2", "-W", "2", "-w", "10")


def mac_of(port: str) -> str:
    return f"02:00:00:61:00:{sum(map(ord, port)) % 256:02x}"


def tag_of(frame: bytes) -> int | None:
    """The VLAN ID of a frame's 802.1Q tag, None when it has none."""
    pkt = Ether(frame)
    return pkt[Dot1Q].vlan if Dot1Q in pkt else None


@dataclass
class Box:
    """A port's namespace, with an agent sniffing its eth0 (and, for the trunk, its VLAN subinterfaces)."""

    port: str
    network: str | None
    ns: Netns
    agent: Agent

    @property
    def mac(self) -> str:
        return mac_of(self.port)

    def send(self, *frames: bytes, iface: str = IFNAME) -> None:
        self.agent.send(iface, list(frames))

    def wait(self, token: str, iface: str = IFNAME, timeout: float = 10.0) -> list[bytes]:
        return self.agent.wait_frames(iface, has_token(token), timeout=timeout)

    def seen(self, token: str, iface: str = IFNAME) -> list[bytes]:
        return [f for f in self.agent.frames(iface) if has_token(token)(f)]

    def ping(self, addr: str) -> subprocess.CompletedProcess[str]:
        return self.ns.exec("ping", "-n", *PING, addr, check=False, timeout=20)


@dataclass
class Site:
    daemon: Any
    boxes: dict[str, Box]

    def __getitem__(self, port: str) -> Box:
        return self.boxes[port]

    def drops(self, port: str) -> dict[str, int]:
        return site_drops(self.daemon, port)


def site_drops(daemon: Any, port: str) -> dict[str, int]:
    status, stats = daemon.api("GET", "/v1/stats")
    assert status == 200, stats
    return {r: n for r, n in stats["ports"][port]["drops"].items() if n}


def access_port(port: str, ns: Netns, network: str, host: int) -> str:
    return (f'[[port]]\nname = "{port}"\nnetns = "{ns.name}"\nnetwork = "{network}"\nmac = "{mac_of(port)}"\n'
            f'ip = "{SUBNET[network]}.{host}/24"\n')


def kernel_vlan_problem(ns: Netns) -> str | None:
    """Why this kernel cannot run the VLAN subinterface and vlan_filtering tests (None: it can), tried in ns."""
    ns.exec("ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
    if ns.exec("ip", "link", "add", "link", "probe0", "name", "probe0.5", "type", "vlan", "id", "5", check=False).returncode:
        return "the kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q)"
    if ns.exec("ip", "link", "add", "probebr", "type", "bridge", "vlan_filtering", "1", check=False).returncode:
        return "the kernel's bridge has no vlan_filtering (CONFIG_BRIDGE_VLAN_FILTERING)"
    return None


@pytest.fixture
def vlan_kernel(netns_factory: Callable[[], Netns]) -> None:
    why = kernel_vlan_problem(netns_factory())
    if why:
        pytest.skip(why)


def add_vlan_subinterfaces(t: Netns) -> None:
    for net, vid in VID.items():
        t.exec("ip", "link", "add", "link", IFNAME, "name", f"{IFNAME}.{vid}", "type", "vlan", "id", str(vid))
        t.exec("ip", "addr", "add", f"{SUBNET[net]}.{TRUNK_HOST}/24", "dev", f"{IFNAME}.{vid}")
        t.exec("ip", "link", "set", f"{IFNAME}.{vid}", "up")


@pytest.fixture
def site(netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any) -> Site:
    access = {"b1": ("blue", 1), "b2": ("blue", 2), "r1": ("red", 1), "g1": ("green", 1)}
    namespaces = {port: netns_factory() for port in [*access, "t1"]}
    config = "".join(f'[[network]]\nname = "{net}"\n' for net in ("blue", "red", "green"))
    config += "".join(access_port(p, namespaces[p], net, host) for p, (net, host) in access.items())
    config += (f'[[port]]\nname = "t1"\nnetns = "{namespaces["t1"].name}"\nmac = "{mac_of("t1")}"\n'
               'trunk = { blue = 10, red = 20 }\nnative = "green"\n'
               f'ip = "{SUBNET["green"]}.{TRUNK_HOST}/24"\n')
    daemon = vswitchd_factory(config)
    t = namespaces["t1"]
    assert t.link_is_up(IFNAME), t.link(IFNAME)
    boxes = {}
    for port, ns in namespaces.items():
        agent = agent_factory(ns)
        agent.sniff_start(IFNAME)
        boxes[port] = Box(port, access[port][0] if port in access else None, ns, agent)
    return Site(daemon, boxes)


def test_trunk_carries_two_networks_tagged_and_the_native_one_untagged(site: Site) -> None:
    b1, r1, g1, t1 = site["b1"], site["r1"], site["g1"], site["t1"]
    # The native network is the trunk namespace's own untagged eth0.
    ok = g1.ping(f"{SUBNET['green']}.{TRUNK_HOST}")
    assert ok.returncode == 0, f"g1 cannot reach the trunk's native address:\n{ok.stdout}{ok.stderr}"

    # Into the trunk: blue leaves tagged 10, red tagged 20, green untagged; nothing crosses networks.
    tokens = {}
    for box in (b1, r1, g1):
        tokens[box.port] = new_token(box.port)
        box.send(marked_frame(box.mac, BROADCAST, tokens[box.port]))
    for box, vid in ((b1, 10), (r1, 20), (g1, None)):
        got = t1.wait(tokens[box.port])
        assert [tag_of(f) for f in got] == [vid], f"{box.port}'s broadcast reached the trunk as {got}"
        assert Ether(got[0]).src == box.mac
    site["b2"].wait(tokens["b1"])
    for token, others in ((tokens["b1"], (r1, g1)), (tokens["r1"], (b1, g1)), (tokens["g1"], (b1, r1))):
        assert all(o.seen(token) == [] for o in others), "a frame crossed into another network"

    # Out of the trunk: the tag picks the network, and the frame arrives untagged.
    sent = {vid: new_token(f"vid{vid}") for vid in (10, 20)}
    for vid, token in sent.items():
        t1.send(marked_frame(t1.mac, BROADCAST, token, vlan=vid))
    assert [tag_of(f) for f in b1.wait(sent[10])] == [None]
    assert [tag_of(f) for f in r1.wait(sent[20])] == [None]
    assert b1.seen(sent[20]) == [] and r1.seen(sent[10]) == [] and g1.seen(sent[10]) == g1.seen(sent[20]) == []

    # A priority tag (VLAN 0) is no tag: native green. A VID the trunk does not carry is dropped and counted.
    prio, stray, fence = new_token("prio"), new_token("vid30"), new_token("fence")
    t1.send(marked_frame(t1.mac, BROADCAST, prio, vlan=0), marked_frame(t1.mac, BROADCAST, stray, vlan=30),
            marked_frame(t1.mac, BROADCAST, fence))
    assert [tag_of(f) for f in g1.wait(prio)] == [None]
    g1.wait(fence)
    assert all(box.seen(stray) == [] for box in (b1, r1, g1))
    assert site.drops("t1") == {"vlan_unknown": 1}

    # Unicast to a MAC learned behind the trunk in blue goes out tagged 10, only there.
    uni = new_token("uni")
    b1.send(marked_frame(b1.mac, t1.mac, uni))
    assert [tag_of(f) for f in t1.wait(uni)] == [10]
    assert site["b2"].seen(uni) == []


def test_trace_follows_the_tag(site: Site) -> None:
    listing = site.daemon.ctl_run("port", "list", json_output=False).stdout
    assert "trunk blue:10,red:20+green" in listing, listing
    shown = site.daemon.ctl_run("port", "show", "t1", json_output=False).stdout
    assert "blue (VLAN 10), red (VLAN 20)" in shown and "green" in shown, shown
    trace = site.daemon.ctl("trace", "--in-port", "t1", "--vlan", "20", "--dst", BROADCAST)
    assert (trace["network"], trace["action"], trace["outputs"]["ports"]) == ("red", "flood", ["r1"]), trace
    trace = site.daemon.ctl("trace", "--in-port", "t1", "--dst", BROADCAST)
    assert (trace["network"], trace["outputs"]["ports"]) == ("green", ["g1"]), trace
    trace = site.daemon.ctl("trace", "--in-port", "t1", "--vlan", "30", "--dst", BROADCAST)
    assert (trace["action"], trace["reason"], trace["network"]) == ("drop", "vlan_unknown", None), trace
    trace = site.daemon.ctl("trace", "--in-port", "b1", "--dst", BROADCAST)
    assert (trace["outputs"]["ports"], trace["tags"]) == (["b2", "t1"], {"t1": 10}), trace
    text = site.daemon.ctl_run("trace", "--in-port", "b1", "--dst", BROADCAST, json_output=False).stdout
    assert "t1 (802.1Q tag 10)" in text, text
    # What trace said is what the loop does: b1's broadcast reaches t1 tagged 10.
    token = new_token("traced")
    site["b1"].send(marked_frame(site["b1"].mac, BROADCAST, token))
    assert [tag_of(f) for f in site["t1"].wait(token)] == [10]


def test_priority_tags_and_stacked_tags(site: Site) -> None:
    b1, b2, t1, r1 = site["b1"], site["b2"], site["t1"], site["r1"]
    # An access port takes a priority-tagged frame as untagged; its receivers get it untagged (or tagged
    # with the network's VID on the trunk).
    prio = new_token("prio")
    b1.send(marked_frame(b1.mac, BROADCAST, prio, vlan=0))
    assert [tag_of(f) for f in b2.wait(prio)] == [None]
    assert [tag_of(f) for f in t1.wait(prio)] == [10]

    # Stacked tags: an 802.1ad outer tag, or two 802.1Q tags, refused on access and trunk ports alike.
    def stacked(src: str, token: str, outer: type) -> bytes:
        return bytes(Ether(src=src, dst=BROADCAST) / outer(vlan=10) / Dot1Q(vlan=20, type=0x88B5)
                     / Raw(marked_frame(src, BROADCAST, token)[14:]))

    tokens = [new_token("qinq") for _ in range(4)]
    fence_b, fence_t = new_token("fence"), new_token("fence")
    b1.send(stacked(b1.mac, tokens[0], Dot1AD), stacked(b1.mac, tokens[1], Dot1Q), marked_frame(b1.mac, BROADCAST, fence_b))
    t1.send(stacked(t1.mac, tokens[2], Dot1AD), stacked(t1.mac, tokens[3], Dot1Q),
            marked_frame(t1.mac, BROADCAST, fence_t, vlan=20))
    b2.wait(fence_b)
    r1.wait(fence_t)
    assert all(box.seen(token) == [] for box in site.boxes.values() for token in tokens)
    assert site.drops("b1") == {"vlan_stacked": 2}
    assert site.drops("t1") == {"vlan_stacked": 2}

    # A real tag on an access port is still refused.
    tagged = new_token("tagged")
    b1.send(marked_frame(b1.mac, BROADCAST, tagged, vlan=20), marked_frame(b1.mac, BROADCAST, fence_b))
    b2.wait(fence_b, timeout=10)
    assert all(box.seen(tagged) == [] for box in site.boxes.values())
    assert site.drops("b1") == {"vlan_stacked": 2, "vlan_tagged": 1}


def test_trunk_changes_at_run_time(site: Site) -> None:
    b1, r1, g1, t1 = site["b1"], site["r1"], site["g1"], site["t1"]
    # No native network any more: untagged frames from the trunk are dropped and counted.
    port = site.daemon.ctl("port", "set", "t1", "--native", "none")
    assert (port["trunk"], port["native"]) == ({"blue": 10, "red": 20}, None), port
    untagged, fence = new_token("untagged"), new_token("fence")
    t1.send(marked_frame(t1.mac, BROADCAST, untagged), marked_frame(t1.mac, BROADCAST, fence, vlan=10))
    b1.wait(fence)
    assert all(box.seen(untagged) == [] for box in site.boxes.values())
    assert site.drops("t1") == {"vlan_untagged": 1}

    # Red moves to VLAN 21, green joins tagged as 30: the old VID is unknown now.
    port = site.daemon.ctl("port", "set", "t1", "--trunk", "blue:10,red:21,green:30")
    assert port["trunk"] == {"blue": 10, "red": 21, "green": 30}, port
    assert {p["name"] for p in site.daemon.ctl("port", "list", "--network", "green")} == {"g1", "t1"}
    new_red, new_green, old_red = new_token("red21"), new_token("green30"), new_token("red20")
    t1.send(marked_frame(t1.mac, BROADCAST, new_red, vlan=21), marked_frame(t1.mac, BROADCAST, new_green, vlan=30),
            marked_frame(t1.mac, BROADCAST, old_red, vlan=20), marked_frame(t1.mac, BROADCAST, fence, vlan=10))
    assert [tag_of(f) for f in r1.wait(new_red)] == [None]
    assert [tag_of(f) for f in g1.wait(new_green)] == [None]
    b1.wait(fence)
    assert r1.seen(old_red) == []
    assert site.drops("t1") == {"vlan_untagged": 1, "vlan_unknown": 1}
    back = new_token("back")
    g1.send(marked_frame(g1.mac, BROADCAST, back))
    assert [tag_of(f) for f in t1.wait(back)] == [30]

    # Bad changes are refused whole.
    for args, why in ((("--trunk", "blue:10,red:10"), "already the VLAN ID"), (("--trunk", "blue:4095"), "out of range"),
                      (("--trunk", "nosuch:5"), "does not exist"), (("--native", "blue"), "also tagged")):
        proc = site.daemon.ctl_run("port", "set", "t1", *args, json_output=False)
        assert proc.returncode != 0 and why in proc.stderr, (args, proc.stderr)
    assert site.daemon.ctl("port", "show", "t1")["trunk"] == {"blue": 10, "red": 21, "green": 30}
    proc = site.daemon.ctl_run("port", "set", "b1", "--trunk", "blue:10", json_output=False)
    assert proc.returncode != 0 and "access port" in proc.stderr, proc.stderr

    # The change is saved: a restarted vswitchd has the trunk as it was left, and forwards by it.
    site.daemon.stop()
    site.daemon.start()
    port = site.daemon.ctl("port", "show", "t1")
    assert (port["trunk"], port["native"]) == ({"blue": 10, "red": 21, "green": 30}, None), port
    again = new_token("again")
    t1.send(marked_frame(t1.mac, BROADCAST, again, vlan=21))
    assert [tag_of(f) for f in r1.wait(again)] == [None]


def test_vlan_subinterfaces_behind_the_trunk(vlan_kernel: None, site: Site) -> None:
    b1, r1, t1 = site["b1"], site["r1"], site["t1"]
    add_vlan_subinterfaces(t1.ns)
    for vid in VID.values():
        t1.agent.sniff_start(f"{IFNAME}.{vid}")
    for box, net in ((b1, "blue"), (r1, "red")):
        ok = box.ping(f"{SUBNET[net]}.{TRUNK_HOST}")
        assert ok.returncode == 0, f"{box.port} cannot reach the trunk's {net} address:\n{ok.stdout}{ok.stderr}"
    tokens = {box.port: new_token(box.port) for box in (b1, r1)}
    for box in (b1, r1):
        box.send(marked_frame(box.mac, BROADCAST, tokens[box.port]))
    assert [Ether(f).src for f in t1.wait(tokens["b1"], iface="eth0.10")] == [b1.mac]
    assert [Ether(f).src for f in t1.wait(tokens["r1"], iface="eth0.20")] == [r1.mac]
    assert t1.seen(tokens["b1"], iface="eth0.20") == [] and t1.seen(tokens["r1"], iface="eth0.10") == []
    assert r1.seen(tokens["b1"]) == [] and b1.seen(tokens["r1"]) == []


def test_tcp_through_the_trunk_with_offloads(vlan_kernel: None, site: Site) -> None:
    """TSO super-frames cross the trunk both ways: tagged on the way out (the
    virtio-net header's offsets moved by the tag), untagged on the way in."""
    b1, t1 = site["b1"], site["t1"]
    add_vlan_subinterfaces(t1.ns)
    before = site.daemon.api("GET", "/v1/stats")[1]["loop"]["offload"]
    for reverse in (False, True):
        end = iperf3_64mib(b1.ns, t1.ns, f"{SUBNET['blue']}.{TRUNK_HOST}", reverse)
        print(f"iperf3 through the trunk{' (reverse)' if reverse else ''}: "
              f"{end['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s")
    after = site.daemon.api("GET", "/v1/stats")[1]["loop"]["offload"]
    assert after["superframes_in"] > before["superframes_in"], (before, after)
    assert after["superframes_out"] > before["superframes_out"], (before, after)
    assert site.drops("b1") == {} and site.drops("t1") == {}


def test_interop_with_a_linux_bridge_with_vlan_filtering(
    vlan_kernel: None, netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any
) -> None:
    """vswitch's trunk port t1 is a TAP in namespace L, where a Linux bridge with
    vlan_filtering takes it as a tagged member of VLANs 10 and 20 and has an
    access veth in each (PVID, untagged) to namespaces LB and LR. Frames between
    vswitch's access ports and LB/LR cross the TAP tagged, in both switches."""
    b1_ns, r1_ns, l_ns, lb, lr = (netns_factory() for _ in range(5))
    config = "".join(f'[[network]]\nname = "{net}"\n' for net in ("blue", "red"))
    config += access_port("b1", b1_ns, "blue", 1) + access_port("r1", r1_ns, "red", 1)
    # The bridge forwards its members' frames: they come from MACs that are not the port's.
    config += (f'[[port]]\nname = "t1"\nnetns = "{l_ns.name}"\nmac = "{mac_of("t1")}"\n'
               'trunk = { blue = 10, red = 20 }\nport_security = false\n')
    daemon = vswitchd_factory(config)
    assert l_ns.link_is_up(IFNAME), l_ns.link(IFNAME)
    l_ns.exec("ip", "link", "add", "br0", "type", "bridge", "vlan_filtering", "1")
    l_ns.exec("ip", "link", "set", IFNAME, "master", "br0")
    l_ns.exec("bridge", "vlan", "del", "dev", IFNAME, "vid", "1")
    for vid in (10, 20):
        l_ns.exec("bridge", "vlan", "add", "dev", IFNAME, "vid", str(vid))
    for veth, far, vid, net in (("vb", lb, 10, "blue"), ("vr", lr, 20, "red")):
        l_ns.exec("ip", "link", "add", veth, "type", "veth", "peer", "name", IFNAME, "netns", far.name)
        l_ns.exec("ip", "link", "set", veth, "master", "br0")
        l_ns.exec("bridge", "vlan", "del", "dev", veth, "vid", "1")
        l_ns.exec("bridge", "vlan", "add", "dev", veth, "vid", str(vid), "pvid", "untagged")
        l_ns.exec("ip", "link", "set", veth, "up")
        far.exec("ip", "link", "set", IFNAME, "address", mac_of(f"l{net}"))
        far.exec("ip", "addr", "add", f"{SUBNET[net]}.50/24", "dev", IFNAME)
        far.exec("ip", "link", "set", IFNAME, "up")
    l_ns.exec("ip", "link", "set", "br0", "up")
    boxes = {}
    for name, ns in (("b1", b1_ns), ("r1", r1_ns), ("t1", l_ns), ("lb", lb), ("lr", lr)):
        agent = agent_factory(ns)
        agent.sniff_start(IFNAME)
        boxes[name] = Box(name, None, ns, agent)
    b1, r1, tap, lblue, lred = (boxes[n] for n in ("b1", "r1", "t1", "lb", "lr"))

    for box, net in ((b1, "blue"), (r1, "red")):
        ok = box.ping(f"{SUBNET[net]}.50")
        assert ok.returncode == 0, f"{box.port} cannot reach the bridge's {net} host:\n{ok.stdout}{ok.stderr}"

    # Each way, a broadcast crosses the TAP tagged with its network's VLAN and reaches only its own network.
    tokens = {}
    for box in (b1, r1, lblue, lred):
        tokens[box.port] = new_token(box.port)
        box.send(marked_frame(mac_of(box.port) if box in (b1, r1) else mac_of(f"l{'blue' if box is lblue else 'red'}"),
                              BROADCAST, tokens[box.port]))
    for sender, receiver, vid in ((b1, lblue, 10), (r1, lred, 20), (lblue, b1, None), (lred, r1, None)):
        assert [tag_of(f) for f in receiver.wait(tokens[sender.port])] == [None]
        if vid is not None:  # (the bridge's own sends on the TAP are outgoing there: the agent leaves them out)
            assert [tag_of(f) for f in tap.wait(tokens[sender.port])] == [vid], f"{sender.port} crossed the TAP untagged"
    for token, others in ((tokens["b1"], (r1, lred)), (tokens["lb"], (r1, lred)), (tokens["r1"], (b1, lblue)),
                          (tokens["lr"], (b1, lblue))):
        assert all(o.seen(token) == [] for o in others), "a frame crossed between VLANs"
    status, fdb = daemon.api("GET", "/v1/fdb")
    assert status == 200
    # t1 has no native network: LB's and LR's frames were learned in blue and red because the bridge
    # sent them tagged 10 and 20.
    learned = {(e["network"], e["mac"]) for e in fdb if e["port"] == "t1" and not e["pinned"]}
    assert {("blue", mac_of("lblue")), ("red", mac_of("lred"))} <= learned, fdb
    # Nothing from the bridge's side was refused but untagged chatter of L's own interfaces (its IPv6).
    assert set(site_drops(daemon, "t1")) <= {"vlan_untagged"}, site_drops(daemon, "t1")


def test_tcp_across_two_trunks_and_a_linux_bridge(
    netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any
) -> None:
    """TCP with the ports' offloads on, through a trunk both ways, on any kernel.

    Trunk ports t1 (blue as VLAN 10) and t2 (blue2 as VLAN 10) are TAPs eth0
    and eth1 of namespace X, joined by a Linux bridge that knows nothing of
    VLANs and forwards the tagged frames as they are. b1 (blue) and c2 (blue2)
    share a subnet: every frame between them leaves vswitch tagged through one
    trunk port and comes back in tagged through the other, TSO super-frames
    included (the kernel carries them tagged, with the checksum offsets of
    their virtio-net headers counted from the tagged frame)."""
    b1_ns, c2_ns, x = netns_factory(), netns_factory(), netns_factory()
    config = "".join(f'[[network]]\nname = "{net}"\n' for net in ("blue", "blue2"))
    config += access_port("b1", b1_ns, "blue", 1)
    config += (f'[[port]]\nname = "c2"\nnetns = "{c2_ns.name}"\nnetwork = "blue2"\nmac = "{mac_of("c2")}"\n'
               f'ip = "{SUBNET["blue"]}.2/24"\n')
    for port, ifname, net in (("t1", "eth0", "blue"), ("t2", "eth1", "blue2")):
        # Each trunk forwards the other side's frames: their MACs are not the port's.
        config += (f'[[port]]\nname = "{port}"\nnetns = "{x.name}"\nifname = "{ifname}"\nmac = "{mac_of(port)}"\n'
                   f'trunk = {{ {net} = 10 }}\nport_security = false\n')
    daemon = vswitchd_factory(config)
    for scope in ("all", "default"):  # X's interfaces, the bridge too, stay silent
        x.exec("sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.disable_ipv6=1")
    x.exec("ip", "link", "add", "br0", "type", "bridge")
    for ifname in ("eth0", "eth1"):
        x.exec("ip", "link", "set", ifname, "master", "br0")
    x.exec("ip", "link", "set", "br0", "up")
    agent = agent_factory(x)
    agent.sniff_start("eth0")
    b1, c2 = (Box(p, None, ns, agent_factory(ns)) for p, ns in (("b1", b1_ns), ("c2", c2_ns)))
    for box in (b1, c2):
        box.agent.sniff_start(IFNAME)

    ok = b1.ping(f"{SUBNET['blue']}.2")
    assert ok.returncode == 0, f"b1 cannot reach c2 across the trunks:\n{ok.stdout}{ok.stderr}"
    token = new_token("across")
    b1.send(marked_frame(b1.mac, BROADCAST, token))
    assert [tag_of(f) for f in c2.wait(token)] == [None]
    assert [tag_of(f) for f in agent.wait_frames("eth0", has_token(token))] == [10], "the frame crossed the bridge untagged"

    before = daemon.api("GET", "/v1/stats")[1]
    for reverse in (False, True):
        end = iperf3_64mib(b1_ns, c2_ns, f"{SUBNET['blue']}.2", reverse)
        print(f"iperf3 b1 {'<-' if reverse else '->'} c2 across two trunks: "
              f"{end['sum_received']['bits_per_second'] / 1e9:.2f} Gbit/s")
    after = daemon.api("GET", "/v1/stats")[1]
    offload = {k: after["loop"]["offload"][k] - before["loop"]["offload"][k] for k in ("superframes_in", "superframes_out")}
    assert offload["superframes_in"] > 0 and offload["superframes_out"] > 0, offload
    for port in ("b1", "c2", "t1", "t2"):
        # X's bridge speaks for itself now and then, untagged (an IGMP report, seen with tcpdump): the trunks,
        # which have no native network, refuse that as vlan_untagged. Nothing else may be dropped.
        drops = {r: n - before["ports"][port]["drops"][r] for r, n in after["ports"][port]["drops"].items()}
        assert {r: n for r, n in drops.items() if n and r != "vlan_untagged"} == {}, f"{port} dropped {drops}"
