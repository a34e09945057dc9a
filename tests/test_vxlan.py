"""VXLAN between hosts: each host a namespace with its own vswitchd, joined by an underlay bridge.

Absence checks rely on fences. A vswitchd handles the frames of one ingress
port, and the packets of its one UDP socket, in order, and the underlay keeps
the order of one sender's packets. So once a later broadcast from the same
container has reached a host, every copy the switches made of an earlier
frame from that container towards that host has arrived as well. A fence
from every host (fence_all) covers every path, relayed copies included.
"""
from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import checksum

from tests.harness.capture import open_capture, read_pcap
from tests.harness.frames import MIN_FRAME, has_token, marked_frame, new_token
from tests.harness.hosts import BRIDGE_IP, UNDERLAY_IF, UNDERLAY_PREFIX, VXLAN_FLAG_I, VXLAN_PORT, Container, Host, Lab, lab  # noqa: F401
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.io_modes]

NETWORKS = {"blue": 100, "red": 200}
BROADCAST = "ff:ff:ff:ff:ff:ff"
FOREIGN_MAC = "02:00:00:00:ee:01"  # a station behind no VTEP of the test
DEFAULT_OVERLAY_MTU = 1450  # underlay 1500 less 50 bytes of encapsulation
DROP_REASONS = ("truncated", "bad_flags", "unknown_vni", "unknown_peer", "inner_malformed", "mac_pinned", "split_horizon")


def fence_all(senders: list[Container], receivers: list[Container]) -> None:
    """Broadcast from each sender in turn; wait until every other receiver has it."""
    for sender in senders:
        token = new_token("fence")
        sender.send(sender.frame(BROADCAST, token))
        for r in receivers:
            if r is not sender:
                assert r.wait(token) != [], f"fence from {sender.name} never reached {r.name}"


def ping_ok(src: Container, dst: Container) -> None:
    result = src.ping(dst.addr)
    assert result.returncode == 0, f"ping {src.name} -> {dst.name} ({dst.addr}) failed:\n{result.stdout}{result.stderr}"


def inner_frames(host: Host, token: str) -> list[Ether]:
    """VXLAN packets that reached `host`'s underlay address carrying a frame with `token`."""
    return host.received_vxlan(has_token(token))


@pytest.fixture
def two(lab: Lab) -> tuple[Host, Host]:  # noqa: F811
    """h1: b1, b3 (blue), r1 (red); h2: b2 (blue), r2 (red). blue and red reuse the same IPs."""
    h1, h2 = lab.add_hosts(2)
    h1.add_container("b1", "blue", "10.1.0.1/24")
    h1.add_container("b3", "blue", "10.1.0.3/24")
    h1.add_container("r1", "red", "10.1.0.1/24")
    h2.add_container("b2", "blue", "10.1.0.2/24")
    h2.add_container("r2", "red", "10.1.0.2/24")
    lab.start_mesh(NETWORKS)
    return h1, h2


@pytest.fixture
def three(lab: Lab) -> tuple[Host, Host, Host]:  # noqa: F811
    """h1: b1, b4 (blue), r1 (red); h2: b2, r2; h3: b3, r3; every host peers with every other."""
    h1, h2, h3 = lab.add_hosts(3)
    h1.add_container("b1", "blue", "10.1.0.1/24")
    h1.add_container("b4", "blue", "10.1.0.4/24")
    h2.add_container("b2", "blue", "10.1.0.2/24")
    h3.add_container("b3", "blue", "10.1.0.3/24")
    for i, host in enumerate((h1, h2, h3), start=1):
        host.add_container(f"r{i}", "red", f"10.2.0.{i}/24")
    lab.start_mesh(NETWORKS)
    for host in (h1, h2, h3):
        host.underlay()
    return h1, h2, h3


def blue(*hosts: Host) -> list[Container]:
    return [c for h in hosts for c in h.containers.values() if c.network == "blue"]


def red(*hosts: Host) -> list[Container]:
    return [c for h in hosts for c in h.containers.values() if c.network == "red"]


# ---- two hosts ----------------------------------------------------------------------


def test_arp_and_ping_across_hosts_learn_remote_macs(two: tuple[Host, Host]) -> None:
    h1, h2 = two
    b1, b2 = h1.containers["b1"], h2.containers["b2"]

    ping_ok(b1, b2)
    ping_ok(b2, b1)

    assert b1.neighbor_mac(b2.addr) == b2.mac
    assert b2.neighbor_mac(b1.addr) == b1.mac
    for host, remote, peer in ((h1, b2, h2), (h2, b1, h1)):
        entry = host.fdb().get(("blue", remote.mac))
        assert entry is not None, f"{host.name} did not learn {remote.name}'s MAC: {host.fdb()}"
        assert (entry["peer"], entry["port"], entry["static"]) == (peer.ip, None, False)
    local = h1.fdb()[("blue", b1.mac)]
    assert (local["port"], local["peer"]) == ("b1", None)


def test_broadcast_reaches_its_network_on_both_hosts_only(two: tuple[Host, Host]) -> None:
    h1, h2 = two
    b1 = h1.containers["b1"]
    token = new_token("bcast")
    sent = b1.frame(BROADCAST, token, size=600)

    b1.send(sent)
    fence_all([b1], blue(h1, h2))

    for c in blue(h1, h2):
        assert c.seen(token) == ([] if c is b1 else [sent]), f"{c.name} on {c.host.name}"
    for c in red(h1, h2):
        assert c.seen(token) == [], f"blue's broadcast leaked into red at {c.name} on {c.host.name}"


def test_vnis_stay_isolated_with_the_same_addresses(two: tuple[Host, Host]) -> None:
    h1, h2 = two
    b1, b2, r1, r2 = h1.containers["b1"], h2.containers["b2"], h1.containers["r1"], h2.containers["r2"]
    h2.underlay()

    ping_ok(b1, b2)
    ping_ok(r1, r2)

    # The same IP answered from the right network's container.
    assert (b1.neighbor_mac(b2.addr), r1.neighbor_mac(r2.addr)) == (b2.mac, r2.mac)
    fdb = h1.fdb()
    assert fdb[("blue", b2.mac)]["peer"] == h2.ip and fdb[("red", r2.mac)]["peer"] == h2.ip
    assert ("blue", r2.mac) not in fdb and ("red", b2.mac) not in fdb
    token = new_token("red-bcast")
    r1.send(r1.frame(BROADCAST, token))
    fence_all([r1], red(h1, h2))
    assert r2.seen(token) != []
    assert [c.name for c in blue(h1, h2) if c.seen(token)] == []
    assert {p[VXLAN].vni for p in inner_frames(h2, token)} == {NETWORKS["red"]}


def test_peer_removal_stops_traffic_and_forgets_its_macs(two: tuple[Host, Host]) -> None:
    h1, h2 = two
    b1, b3, b2 = h1.containers["b1"], h1.containers["b3"], h2.containers["b2"]
    r1, r2 = h1.containers["r1"], h2.containers["r2"]
    ping_ok(b1, b2)
    assert h1.fdb()[("blue", b2.mac)]["peer"] == h2.ip

    h1.ctl("peer", "del", h2.ip, "--network", "blue")

    assert {(p["network"], p["remote"]) for p in h1.ctl("peer", "list")} == {("red", h2.ip)}
    left = [e for e in h1.ctl("fdb", "show") if e["peer"] == h2.ip and e["network"] == "blue"]
    assert left == [], f"entries learned behind the removed peer survived: {left}"
    # Out: nothing goes to h2 in blue any more; red to h2 is the fence.
    out_bcast, out_ucast = new_token("gone-bcast"), new_token("gone-ucast")
    b1.send(b1.frame(BROADCAST, out_bcast), b1.frame(b2.mac, out_ucast))
    fence_all([r1], [r2])
    assert b3.wait(out_bcast) != [], "local flooding stopped with the peer"
    # b2's MAC was forgotten with the peer: the unicast floods locally too, which shows it was handled.
    assert b3.wait(out_ucast) != [], "the unicast to a MAC behind the removed peer was not flooded locally"
    assert (b2.seen(out_bcast), b2.seen(out_ucast)) == ([], [])
    # In: h2 still sends to h1, which no longer accepts blue from it.
    before = h1.drops()["unknown_peer"]
    back = new_token("gone-in")
    b2.send(b2.frame(BROADCAST, back))
    wait_until(lambda: h1.drops()["unknown_peer"] > before, message="h1 did not count blue from a removed peer")
    fence_all([r2], [r1])
    assert (b1.seen(back), b3.seen(back)) == ([], [])

    h1.ctl("peer", "add", h2.ip, "--network", "blue")
    ping_ok(b1, b2)


def test_peers_whose_address_never_resolves_do_not_hold_up_the_others(two: tuple[Host, Host]) -> None:
    """Floods to peers nobody answers ARP for wait in the kernel's neighbour
    queues for seconds, charged to the socket that sent them: they must not
    use up what that socket may send to the peers that do answer."""
    h1, h2 = two
    b1, b2 = h1.containers["b1"], h2.containers["b2"]
    ping_ok(b1, b2)  # b2's MAC is known behind h2, and h2's underlay address resolved
    ghosts = [UNDERLAY_PREFIX + "200", UNDERLAY_PREFIX + "201"]  # on the underlay, but no host has them
    for ghost in ghosts:
        h1.ctl("peer", "add", ghost, "--network", "blue")
    before = h1.peer_stats("blue", h2.ip)
    burst, after = new_token("burst"), new_token("after")
    # More floods (to an unknown MAC: no storm limit by default) than the kernel's default
    # neighbour queue holds (208 KiB a peer), then unicast to b2, all within the 3 s the
    # ghosts' addresses are being resolved.
    floods = [b1.frame(FOREIGN_MAC, burst, size=1400) for _ in range(150)]
    unicast = [b1.frame(b2.mac, after, size=200) for _ in range(20)]
    b1.send(*floods, *unicast)
    assert len(b2.wait(after, count=len(unicast))) == len(unicast), \
        f"unicast to a resolved peer was lost while other peers' addresses resolved: {h1.peer_stats('blue', h2.ip)}"
    # Every copy for h2 left: the sends, not only the sniffer in b2, are what counts.
    wait_until(lambda: h1.peer_stats("blue", h2.ip)["tx_packets"] >= before["tx_packets"] + len(floods) + len(unicast),
               message=f"h1 sent h2 fewer packets than it was given: {h1.peer_stats('blue', h2.ip)}")
    assert h1.peer_stats("blue", h2.ip)["tx_errors"] == before["tx_errors"]
    for ghost in ghosts:
        h1.ctl("peer", "del", ghost, "--network", "blue")


def test_a_burst_from_the_tunnel_reaches_every_port_and_capture_byte_for_byte(lab: Lab, two: tuple[Host, Host]) -> None:  # noqa: F811
    """More datagrams than one read of the tunnel takes, each frame with bytes
    of its own, flooded to two ports, one of them captured: every port and
    the capture get every frame, unchanged and in order (each frame's copies
    leave before the tunnel's next read reuses its buffer)."""
    h1, h2 = two
    b1, b3 = h1.containers["b1"], h1.containers["b3"]
    token = new_token("burst")
    frames = [marked_frame(FOREIGN_MAC, BROADCAST, token, size=MIN_FRAME + (i * 97) % 1300, random_padding=True)
              for i in range(200)]
    assert h1.daemon is not None
    first, rest = open_capture(h1.daemon, "b3", direction="out", count=len(frames))
    lab.inject([lab.vxlan_frame(h1, NETWORKS["blue"], f, src_ip=h2.ip) for f in frames])
    for c in (b1, b3):
        got = c.wait(token, count=len(frames))
        assert len(got) == len(frames), f"{c.name} got {len(got)} of {len(frames)} frames"
        assert got == frames, f"{c.name}: frames changed or reordered on the way"
    captured = [f for _, f in read_pcap(first + b"".join(rest))]  # ends by itself after count frames
    assert captured == frames, "the capture of b3's output differs from what b3 got"
    assert sum(h1.drops().values()) == 0


def test_injected_bad_vxlan_is_dropped_counted_and_forwarding_goes_on(lab: Lab, two: tuple[Host, Host]) -> None:  # noqa: F811
    h1, h2 = two
    b1, b3, b2 = h1.containers["b1"], h1.containers["b3"], h2.containers["b2"]
    assert h1.drops() == dict.fromkeys(DROP_REASONS, 0)
    vni = NETWORKS["blue"]

    def inner(token: str) -> bytes:
        return marked_frame(FOREIGN_MAC, BROADCAST, token, size=120)

    bad = {reason: new_token(reason) for reason in ("unknown_peer", "unknown_vni", "bad_flags")}
    cases = {
        "unknown_peer": lab.vxlan_frame(h1, vni, inner(bad["unknown_peer"]), src_ip=BRIDGE_IP),
        "unknown_vni": lab.vxlan_frame(h1, 4242, inner(bad["unknown_vni"]), src_ip=h2.ip),
        "bad_flags": lab.vxlan_frame(h1, vni, inner(bad["bad_flags"]), src_ip=h2.ip, flags=0),
        "truncated": lab.udp_frame(h1, b"\x08\x00\x00", src_ip=h2.ip),
    }
    expected = dict.fromkeys(DROP_REASONS, 0)
    for reason, packet in cases.items():
        lab.inject([packet])
        expected[reason] += 1
        wait_until(lambda r=reason: h1.drops()[r] == expected[r], timeout=5.0,
                   message=f"{reason}: counter never rose; drops = {h1.drops()}")
        assert h1.drops() == expected, f"after the {reason} packet"
    # An empty datagram is one too: counted as truncated, not lost uncounted.
    lab.inject([lab.udp_frame(h1, b"", src_ip=h2.ip)])
    expected["truncated"] += 1
    wait_until(lambda: h1.drops()["truncated"] == expected["truncated"], timeout=5.0,
               message=f"an empty VXLAN datagram was not counted; drops = {h1.drops()}")
    assert h1.drops() == expected, "after the empty datagram"
    # A header with no room for an inner Ethernet header: truncated or malformed, never delivered.
    lab.inject([lab.vxlan_frame(h1, vni, bytes.fromhex("0200000000ee01"), src_ip=h2.ip)])
    wait_until(lambda: sum(h1.drops().values()) == len(cases) + 2, timeout=5.0,
               message=f"a VXLAN packet with a 7-byte inner frame was not counted; drops = {h1.drops()}")
    # A valid packet over the same forged path, from the real peer's address,
    # is delivered: forwarding goes on, and it fences the bad ones.
    good = new_token("good")
    lab.inject([lab.vxlan_frame(h1, vni, inner(good), src_ip=h2.ip)])
    for c in (b1, b3):
        assert c.wait(good) != [], f"a valid packet after the bad ones never reached {c.name}"
        assert {r: len(c.seen(t)) for r, t in bad.items()} == dict.fromkeys(bad, 0), f"{c.name} got dropped inner frames"
    assert h1.fdb()[("blue", FOREIGN_MAC)]["peer"] == h2.ip
    ping_ok(b1, b2)


def test_wire_format_is_rfc7348_with_configured_source_ports(lab: Lab) -> None:  # noqa: F811
    lo, hi = 50000, 50063
    h1, h2 = lab.add_hosts(2)
    b1 = h1.add_container("b1", "blue", "10.1.0.1/24")
    b2 = h2.add_container("b2", "blue", "10.1.0.2/24")
    lab.start_mesh({"blue": 100}, switch={"vxlan_src_port_min": lo, "vxlan_src_port_max": hi})
    h2.underlay()
    token = new_token("wire")
    # Distinct inner flows (unknown destinations, so each is flooded to h2),
    # and the first flow again: the same inner headers must keep their port.
    flows = [f"02:00:00:00:0f:{i:02x}" for i in range(8)]
    sent = [b1.frame(dst, token, size=MIN_FRAME + 37 * i) for i, dst in enumerate(flows)]
    sent.append(b1.frame(flows[0], token, size=MIN_FRAME + 500))
    tx_before = h1.peer_stats("blue", h2.ip)["tx_packets"]

    b1.send(*sent)

    assert b2.wait(token, count=len(sent)) == sent, "inner frames did not arrive intact and in order"
    packets = h2.wait_vxlan(has_token(token), count=len(sent))
    assert [bytes(p[VXLAN].payload) for p in packets] == sent
    for p in packets:
        assert (p[Ether].src, p[Ether].dst) == (h1.mac, h2.mac)
        assert (p[IP].src, p[IP].dst, p[IP].proto) == (h1.ip, h2.ip, 17)
        assert p[IP].len == 20 + 8 + 8 + len(bytes(p[VXLAN].payload))
        # The switch writes the outer IPv4 header; the kernel completes it.
        assert (p[IP].version, p[IP].ihl, p[IP].ttl, str(p[IP].flags)) == (4, 5, 64, "DF")
        assert checksum(bytes(p[IP])[:20]) == 0, "bad outer IPv4 header checksum"
        assert p[UDP].dport == VXLAN_PORT
        assert lo <= p[UDP].sport <= hi, f"source port {p[UDP].sport} outside [{lo}, {hi}]"
        assert p[UDP].chksum == 0
        header = bytes(p[UDP].payload)[:8]
        assert header == bytes([VXLAN_FLAG_I, 0, 0, 0]) + (100).to_bytes(3, "big") + b"\x00", header.hex()
        assert (int(p[VXLAN].flags), p[VXLAN].vni) == (VXLAN_FLAG_I, 100)
    assert packets[0][UDP].sport == packets[-1][UDP].sport, "one inner flow changed source port"
    # A hash of 8 distinct flows onto 64 ports all landing on one port would be a constant.
    assert len({p[UDP].sport for p in packets}) > 1, "every inner flow got the same source port"
    assert h1.peer_stats("blue", h2.ip)["tx_packets"] - tx_before == len(sent)
    assert h2.peer_stats("blue", h1.ip)["rx_packets"] >= len(sent)


def ip_frame(src: Container, dst: Container, token: str, ip_len: int) -> bytes:
    """An IPv4/UDP frame from `src` to `dst` whose IP packet is `ip_len` bytes and carries `token`."""
    payload = marked_frame(src.mac, dst.mac, token, size=14 + ip_len - 28)[14:]
    return bytes(Ether(src=src.mac, dst=dst.mac) / IP(src=src.addr, dst=dst.addr) / UDP(sport=4000, dport=9) / Raw(payload))


def too_big_count(host: Host, port: str, peer: Host) -> int:
    """Every counter a frame too big for the tunnel may land in: the ingress port's or the peer's."""
    drops = host.ctl("stats")["ports"][port]["drops"]
    return drops["too_big"] + drops["tunnel_mtu"] + host.peer_stats("blue", peer.ip)["tx_errors"]


def test_overlay_mtu_and_too_big_inner_frames(two: tuple[Host, Host]) -> None:
    h1, h2 = two
    b1, b3, b2 = h1.containers["b1"], h1.containers["b3"], h2.containers["b2"]
    for host, c in ((h1, b1), (h2, b2)):
        assert c.link()["mtu"] == DEFAULT_OVERLAY_MTU, f"{c.name}: {c.link()}"
        assert {p["name"]: p["mtu"] for p in host.ctl("port", "list")}[c.name] == DEFAULT_OVERLAY_MTU
    fits, too_big = new_token("fits"), new_token("toobig")
    fitting = ip_frame(b1, b2, fits, DEFAULT_OVERLAY_MTU)
    b1.send(fitting)
    assert b2.wait(fits) == [fitting], "an inner packet of exactly the overlay MTU was not delivered intact"
    before = too_big_count(h1, "b1", h2)

    b1.ns.exec("ip", "link", "set", b1.ifname, "mtu", "1500")
    b1.send(ip_frame(b1, b2, too_big, 1500))
    fence_all([b1], [b2, b3])

    assert (b2.seen(too_big), b3.seen(too_big)) == ([], [])
    assert too_big_count(h1, "b1", h2) - before == 1, (
        f"the 1500-byte packet was not counted once: port b1 = {h1.ctl('stats')['ports']['b1']}, "
        f"peer = {h1.peer_stats('blue', h2.ip)}"
    )


def test_port_mtu_above_the_overlay_never_fragments_the_underlay(lab: Lab) -> None:  # noqa: F811
    h1, h2 = lab.add_hosts(2)
    j1 = h1.add_container("j1", "blue", "10.1.0.1/24", mtu=1500)
    b2 = h2.add_container("b2", "blue", "10.1.0.2/24")
    lab.start_mesh({"blue": 100})
    h2.underlay()
    assert j1.link()["mtu"] == 1500
    fence_all([b2], [j1])  # j1 learns nothing, but h1 learns b2: the big frame goes to h2 only
    fits, too_big = new_token("fits"), new_token("toobig")
    fitting = ip_frame(j1, b2, fits, DEFAULT_OVERLAY_MTU)
    j1.send(fitting)
    assert b2.wait(fits) == [fitting]
    before = too_big_count(h1, "j1", h2)

    j1.send(ip_frame(j1, b2, too_big, 1500))
    fence_all([j1], [b2])

    assert b2.seen(too_big) == []
    # No underlay fragments either: a VTEP must not fragment VXLAN packets (RFC 7348, 4.3).
    fragments = [f for f in h2.underlay().frames(UNDERLAY_IF) if IP in Ether(f) and (Ether(f)[IP].flags.MF or Ether(f)[IP].frag)]
    assert fragments == []
    assert too_big_count(h1, "j1", h2) - before == 1, (
        f"the 1500-byte packet was not counted once: port j1 = {h1.ctl('stats')['ports']['j1']}, "
        f"peer = {h1.peer_stats('blue', h2.ip)}"
    )


def test_local_ports_and_the_tunnel_refuse_the_same_frames(lab: Lab) -> None:  # noqa: F811
    """A port of the default overlay MTU and the tunnel bound the same frames: one
    that fits neither goes only to the local port whose MTU takes it."""
    h1, h2 = lab.add_hosts(2)
    j1 = h1.add_container("j1", "blue", "10.1.0.1/24", mtu=1500)
    k1 = h1.add_container("k1", "blue", "10.1.0.11/24", mtu=1500)
    b1 = h1.add_container("b1", "blue", "10.1.0.3/24")
    b2 = h2.add_container("b2", "blue", "10.1.0.2/24")
    lab.start_mesh({"blue": 100})
    fits, over = new_token("fits"), new_token("over")
    at_mtu = j1.frame(BROADCAST, fits, size=14 + DEFAULT_OVERLAY_MTU)
    past_mtu = j1.frame(BROADCAST, over, size=14 + DEFAULT_OVERLAY_MTU + 1)

    j1.send(at_mtu, past_mtu)
    fence_all([j1], [k1, b1, b2])

    assert (k1.seen(fits), b1.seen(fits), b2.seen(fits)) == ([at_mtu], [at_mtu], [at_mtu])
    assert (k1.seen(over), b1.seen(over), b2.seen(over)) == ([past_mtu], [], [])
    ports = h1.ctl("stats")["ports"]
    assert (ports["j1"]["drops"]["tunnel_mtu"], ports["b1"]["drops"]["mtu_exceeded"]) == (1, 1)
    assert ports["k1"]["drops"]["mtu_exceeded"] == 0


# ---- three hosts --------------------------------------------------------------------


def test_broadcast_from_each_host_reaches_all_three_once(three: tuple[Host, Host, Host]) -> None:
    hosts = three
    members = blue(*hosts)
    tokens: dict[str, tuple[Container, bytes]] = {}
    for sender in (hosts[0].containers["b1"], hosts[1].containers["b2"], hosts[2].containers["b3"]):
        token = new_token(f"bcast-{sender.name}")
        tokens[token] = (sender, sender.frame(BROADCAST, token, size=200))
        sender.send(tokens[token][1])

    fence_all([hosts[0].containers["b1"], hosts[1].containers["b2"], hosts[2].containers["b3"]], members)

    for token, (sender, frame) in tokens.items():
        for c in members:
            assert c.seen(token) == ([] if c is sender else [frame]), f"{sender.name}'s broadcast at {c.name}"
        for c in red(*hosts):
            assert c.seen(token) == [], f"{sender.name}'s broadcast leaked into red at {c.name}"
        # Split horizon: each host got exactly one copy, straight from the sender's host.
        for host in hosts:
            copies = inner_frames(host, token)
            expected = [] if host is sender.host else [sender.host.ip]
            assert [p[IP].src for p in copies] == expected, f"copies of {sender.name}'s broadcast at {host.name}"


def test_learned_remote_mac_stops_replication_to_other_peers(three: tuple[Host, Host, Host]) -> None:
    h1, h2, h3 = three
    b1, b2, b3 = h1.containers["b1"], h2.containers["b2"], h3.containers["b3"]
    first = new_token("first")
    b1.send(b1.frame(BROADCAST, first))
    assert b2.wait(first) != [] and b3.wait(first) != []
    assert len(h3.wait_vxlan(has_token(first))) == 1, "h3 did not see the first broadcast on its underlay"

    reply, follow = new_token("reply"), new_token("follow")
    b2.send(b2.frame(b1.mac, reply))  # h2 learned b1 behind h1 from the broadcast
    assert b1.wait(reply) != []
    b1.send(b1.frame(b2.mac, follow))  # h1 learned b2 behind h2 from the reply
    assert b2.wait(follow) != []
    fence_all([b1, b2, b3], blue(h1, h2, h3))

    for token in (reply, follow):
        assert inner_frames(h3, token) == [], f"{token}: unicast to a learned MAC was replicated to h3"
        assert b3.seen(token) == []
    assert inner_frames(h1, follow) == [] and len(inner_frames(h2, follow)) == 1
    for host, mac, peer in ((h1, b2.mac, h2), (h2, b1.mac, h1), (h3, b1.mac, h1)):
        entry = host.fdb().get(("blue", mac))
        assert entry is not None and (entry["peer"], entry["port"]) == (peer.ip, None), f"{host.name}: {entry}"
    stats: dict[str, Any] = {p["remote"]: p for p in h1.vxlan_stats()["peers"] if p["network"] == "blue"}
    assert stats[h2.ip]["rx_packets"] >= 1 and stats[h3.ip]["tx_packets"] >= 1
