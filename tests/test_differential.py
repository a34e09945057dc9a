"""The compiled forwarding decision and loop against the Python model, on
generated frame sequences.

- The loop: for every generated scenario (ports in several networks and of
  several MTUs, frames either side of them, a small
  MAC table, static entries, broadcast, multicast, known and unknown unicast,
  ARP requests and neighbour solicitations the switch answers or floods,
  and malformed frames) each frame is sent through the real loop over
  socketpairs and through tests/model.py; which port receives which frame,
  the drop counters and the FDB afterwards must be identical.
- The decision, asked directly (Datapath.decide, no root): the same for
  frames from local ports and VXLAN datagrams from tunnel peers, known and
  unknown, with static entries behind peers: where each frame goes (ports
  and peers), why it is dropped, and what the FDB holds after.

Both run with port policy: ports with port security on or off, own MACs
pinned, and IPv4, ARP, IPv6, ND, DHCP and RA frames (some truncated) whose
addresses are drawn from small pools, so that both the port's own and
another's come up.

And with trunk ports: each carries some of the networks under VLAN IDs drawn
from a small pool, maybe one native; any frame may come tagged (VLAN 0, a
VID some trunk carries, one none does, 4095) or with stacked tags.
"""
import ipaddress
import socket
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from loop_rig import LoopRig
from fastpath import PEER_FLAG, Datapath
from model import STORM_KINDS, ModelSwitch, Policy
from rawframes import BROADCAST, arp, eth, mac, neighbour_solicitation

MACS = [mac(i) for i in range(1, 9)]
MCAST = b"\x01\x00\x5e\x00\x00\x09"

dst_st = st.one_of(st.sampled_from(MACS), st.just(BROADCAST), st.just(MCAST))
OWN = MACS[:2]  # the MACs ports own and policy fields carry: a small pool, so both own and foreign come up often
IP4S = [bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes(4)]
IP6S = [bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02"), bytes(16)]


@st.composite
def l3_payloads(draw):
    """(ethertype, payload) of an IPv4, ARP or IPv6 packet whose fields port policy reads."""
    kind = draw(st.sampled_from(["ipv4", "arp", "ipv6", "ipv6", "other"]))
    if kind == "ipv4":
        ports = draw(st.sampled_from([(68, 67), (67, 68), (1234, 80)]))
        frag = draw(st.sampled_from([0, 0, 0, 185]))
        proto = draw(st.sampled_from([17, 17, 6]))
        hdr = (bytes([0x45, 0]) + (28).to_bytes(2, "big") + b"\0\0" + frag.to_bytes(2, "big") + bytes([64, proto])
               + b"\0\0" + draw(st.sampled_from(IP4S)) + draw(st.sampled_from(IP4S)))
        payload, ethertype = hdr + ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big") + b"\0" * 4, 0x0800
    elif kind == "arp":
        good = draw(st.integers(0, 5)) > 0
        head = b"\x00\x01\x08\x00\x06\x04" if good else b"\x00\x06\x08\x00\x06\x04"
        payload = (head + b"\x00" + bytes([draw(st.integers(1, 2))]) + draw(st.sampled_from(OWN))
                   + draw(st.sampled_from(IP4S)) + bytes(6) + draw(st.sampled_from(IP4S)))
        ethertype = 0x0806
    elif kind == "ipv6":
        nh = draw(st.sampled_from([58, 58, 58, 58, 17, 0, 6]))
        body = b""
        if nh == 58:
            icmp_type = draw(st.sampled_from([128, 134, 135, 135, 136, 136, 137, 143]))
            body = bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0]) + draw(st.sampled_from(IP6S))
            for kind_, units in draw(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([0, 1, 1, 2])),
                                              max_size=2)):
                body += bytes([kind_, units]) + (draw(st.sampled_from(OWN)) + bytes(8 * units))[:max(0, 8 * units - 2)]
        elif nh == 17:
            sport, dport = draw(st.sampled_from([(547, 546), (546, 547), (1234, 53)]))
            body = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)
        payload = (b"\x60\0\0\0" + len(body).to_bytes(2, "big") + bytes([nh, 255]) + draw(st.sampled_from(IP6S))
                   + draw(st.sampled_from(IP6S)) + body)
        ethertype = 0x86DD
    else:
        return 0x88B5, draw(st.binary(max_size=32))
    if draw(st.integers(0, 7)) == 0:
        payload = payload[:draw(st.integers(0, len(payload)))]
    return ethertype, payload


@st.composite
def policies(draw):
    """A port's policy, and the MAC pinned to it (or None)."""
    own = draw(st.lists(st.sampled_from(OWN), min_size=1, max_size=1 if draw(st.integers(0, 4)) else 2, unique=True))
    policy = Policy(security=draw(st.integers(0, 3)) > 0, router=draw(st.integers(0, 3)) == 0,
                    dhcp_server=draw(st.integers(0, 3)) == 0, macs=frozenset(own),
                    ip4=frozenset(draw(st.lists(st.sampled_from(IP4S[:2]), max_size=2))),
                    ip6=frozenset(draw(st.lists(st.sampled_from(IP6S[:2]), max_size=2))))
    max_macs = draw(st.sampled_from([0, 0, 0, 1, 2]))
    # Storm control: frames/s per kind, low enough that buckets run dry and refill within a scenario.
    storm = {k: draw(st.sampled_from([0, 1, 1, 2, 10, 30])) for k in STORM_KINDS}
    return policy, own[0] if draw(st.booleans()) else None, (max_macs, storm)


def apply_limits(dp: Datapath, model: ModelSwitch, port: int, limits: tuple[int, dict[str, int]],
                 at_ms: int | None) -> None:
    max_macs, storm = limits
    if at_ms is None:
        storm = {}
    dp.set_port_limits(port, max_macs=max_macs, at_ms=at_ms, **storm)
    model.set_max_macs(port, max_macs)
    model.set_storm(port, at_ms or 0, **storm)


def apply_policy(dp: Datapath, model: ModelSwitch, port: int, network: int, policy: Policy, pin: bytes | None,
                 limits: tuple[int, dict[str, int]], pinned: set, at_ms: int | None = None) -> None:
    """Give port its policy and limits in both; pin its MAC (in network, 0: nowhere) unless another port of the
    network already has it. Storm control only with at_ms: the model's clock, which decide() is then given (the
    loop's clock is real)."""
    dp.set_port_policy(port, policy.security, policy.router, policy.dhcp_server, sorted(policy.macs),
                       [ipaddress.ip_address(a) for a in sorted(policy.ip4 | policy.ip6)])
    model.set_policy(port, policy)
    apply_limits(dp, model, port, limits, at_ms)
    if pin is not None and network and (network, pin) not in pinned:
        pinned.add((network, pin))
        dp.fdb_pin(network, pin, port)
        model.pin(port, pin, network)


TRUNK_VIDS = [5, 10, 20]


@st.composite
def trunks_st(draw):
    """0-2 trunk ports, each ({network: VID}, native network or 0) over networks 1-3."""
    out = []
    for _ in range(draw(st.integers(0, 2))):
        nets = draw(st.lists(st.integers(1, 3), unique=True, max_size=3))
        vids = draw(st.lists(st.sampled_from(TRUNK_VIDS), min_size=len(nets), max_size=len(nets), unique=True))
        tagged = dict(zip(nets, vids))
        native = draw(st.integers(0, 3))
        out.append((tagged, 0 if native in tagged else native))
    return out


def trunk_pin_network(trunk: tuple[dict, int]) -> int:
    """Where a trunk port's own MAC is pinned here: its native network, else its first tagged one (0: none)."""
    tagged, native = trunk
    return native or next(iter(tagged), 0)


IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2", "fd00::3"]
IPS4, IPS6 = IPS[:3], IPS[3:]



def owner(ip: str) -> bytes:
    """The MAC that usually has ip, in the table and as the sender of its requests."""
    return MACS[IPS.index(ip) % 3] if ip in IPS else MACS[7]


@st.composite
def neighbours_st(draw):
    """Addresses the switch answers ARP and ND for: (network, ip, mac), one MAC per (network, ip)."""
    out = []
    for net in (1, 2, 3):
        for ip in IPS:
            if draw(st.integers(0, 3)):
                out.append((net, ip, owner(ip) if draw(st.integers(0, 5)) else draw(st.sampled_from(MACS))))
    return out


@st.composite
def neighbour_requests(draw):
    """ARP requests and neighbour solicitations, most of them answerable in some network; some
    gratuitous, probes, replies, unicast, from a sender that is not who it says, or malformed."""
    if draw(st.booleans()):
        spa = draw(st.sampled_from(IPS4 + ["0.0.0.0"]))
        tpa = draw(st.sampled_from([ip for ip in IPS4 if ip != spa] * 3 + [spa]))
        src = owner(spa) if draw(st.integers(0, 3)) else draw(st.sampled_from(MACS))
        sha = src if draw(st.integers(0, 5)) else draw(st.sampled_from(MACS))
        frame = arp(src, spa, tpa, op=draw(st.sampled_from([1, 1, 1, 2])), sha=sha,
                    dst=draw(st.sampled_from([BROADCAST] * 4 + [MACS[0]])), pad=draw(st.sampled_from([0, 18])))
        return frame[:draw(st.sampled_from([len(frame)] * 8 + [30]))]
    ip_src = draw(st.sampled_from(IPS6 + ["::"]))
    src = owner(ip_src) if draw(st.integers(0, 3)) else draw(st.sampled_from(MACS))
    target = draw(st.sampled_from([ip for ip in IPS6 if ip != ip_src] * 3 + [ip_src, "ff02::1"]))
    return neighbour_solicitation(src, ip_src, target, dst=draw(st.sampled_from([None] * 4 + [MACS[0]])),
                                  hop_limit=draw(st.sampled_from([255] * 5 + [64])),
                                  bad_checksum=not draw(st.integers(0, 5)))


PORT_MTUS = [1500, 9000, 9000, 576]
SIZES = [500, 576, 577, 1500, 1501, 4000, 9000, 9001]  # L3 lengths either side of PORT_MTUS


@st.composite
def frames(draw, n_ports: int, sized: bool = False):
    """(port, frame): mostly untagged; now and then with a tag put in, or with stacked tags.
    With `sized`, also frames of lengths either side of the ports' MTUs."""
    port, frame = draw(untagged_frames(n_ports, sized))
    how = draw(st.sampled_from(["none"] * 6 + ["tag", "tag", "stacked"]))
    if how == "none" or len(frame) < 12:
        return port, frame
    vid = draw(st.sampled_from([0, 0, *TRUNK_VIDS, *TRUNK_VIDS, 7, 4095]))
    if how == "tag":
        return port, frame[:12] + b"\x81\x00" + vid.to_bytes(2, "big") + frame[12:]
    outer = draw(st.sampled_from([b"\x88\xa8", b"\x81\x00"]))
    return port, frame[:12] + outer + vid.to_bytes(2, "big") + b"\x81\x00" + bytes([0, 5]) + frame[12:]


@st.composite
def untagged_frames(draw, n_ports: int, sized: bool = False):
    port = draw(st.integers(0, n_ports - 1))
    kind = draw(st.sampled_from(["ok"] * 6 + ["l3"] * 8 + ["neigh"] * 6 + ["runt", "tagged", "too_big", "src_group"]
                                + ["sized"] * (10 if sized else 0)))
    dst = draw(dst_st)
    src = draw(st.sampled_from(MACS))
    payload = draw(st.binary(min_size=0, max_size=64))
    if kind == "neigh":
        return port, draw(neighbour_requests())
    if kind == "runt":
        return port, draw(st.binary(max_size=13))
    if kind == "tagged":
        return port, eth(dst, src, payload, vlan=draw(st.integers(0, 4095)))
    if kind == "too_big":
        return port, eth(dst, src, b"x" * 1501)
    if kind == "sized":
        return port, eth(dst, draw(st.sampled_from(OWN)), b"x" * draw(st.sampled_from(SIZES)))
    if kind == "src_group":
        return port, eth(dst, draw(st.sampled_from([BROADCAST, MCAST])), payload)
    if kind == "l3":
        ethertype, packet = draw(l3_payloads())
        return port, eth(dst, draw(st.sampled_from(OWN)), packet, ethertype=ethertype)
    return port, eth(dst, src, payload)


@st.composite
def scenarios(draw):
    networks = draw(st.lists(st.integers(1, 3), min_size=2, max_size=6))
    capacity = draw(st.integers(2, 10))
    statics = draw(st.lists(st.tuples(st.sampled_from(MACS), st.integers(0, len(networks) - 1)), max_size=2,
                            unique_by=lambda t: t[0]))
    trunks = draw(trunks_st())
    n = len(networks) + len(trunks)
    seq = draw(st.lists(frames(n, sized=True), min_size=1, max_size=40))
    pols = draw(st.lists(policies(), min_size=n, max_size=n))
    mtus = draw(st.lists(st.sampled_from(PORT_MTUS), min_size=n, max_size=n))
    return networks, trunks, mtus, capacity, statics, draw(neighbours_st()), seq, pols


def set_neighbours(dp: Datapath, model: ModelSwitch, neighbours: list) -> None:
    for net, ip, m in neighbours:
        dp.neigh_set(net, ip, m)
        model.set_neighbour(net, ip, m)


def answered(dp: Datapath, ports) -> dict:
    return {(p, k): n for p in ports for k in ("arp_suppressed", "nd_suppressed") if (n := dp.port_counters(p)[k])}


pytestmark = pytest.mark.io_modes


# io_mode only names the mode: one value for every example is what is wanted.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_compiled_loop_matches_model(io_mode, scenario):
    networks, trunks, mtus, capacity, statics, neighbours, seq, pols = scenario
    model = ModelSwitch(capacity=capacity, aging_ms=300_000)
    rig = LoopRig(mac_table_size=capacity, io_mode=io_mode)
    try:
        set_neighbours(rig.dp, model, neighbours)
        ports = [rig.add_port(net, mtu=mtu) for net, mtu in zip(networks, mtus)]
        ports += [rig.add_port(0, mtu=mtus[len(networks) + i], trunk=tagged, native=native)
                  for i, (tagged, native) in enumerate(trunks)]
        assert ports == list(range(len(networks) + len(trunks)))
        pinned: set = set()
        for p, net in enumerate(networks):
            model.add_port(p, net, mtus[p])
        for i, (tagged, native) in enumerate(trunks):
            model.add_trunk(len(networks) + i, tagged, native, mtus[len(networks) + i])
        pin_nets = networks + [trunk_pin_network(t) for t in trunks]
        event(f"trunk ports: {len(trunks)}")
        for p, net in enumerate(pin_nets):
            if len(pinned) < capacity - 2:
                apply_policy(rig.dp, model, p, net, *pols[p], pinned)
        for m, p in statics[:capacity]:
            if (networks[p], m) in pinned:
                continue
            rig.dp.fdb_set_static(networks[p], m, p)
            model.set_static(networks[p], m, p)
        for in_port, frame in seq:
            expected = {p: [f] for p, f in model.forward(in_port, frame).items()}
            rig.send(in_port, frame)
            got = {p: fs for p, fs in rig.drain().items() if fs}
            assert got == expected, f"frame {frame.hex()} from port {in_port}"
        fdb = {(net, bytes.fromhex(m.replace(":", "")), out, static) for net, m, out, static, _ in rig.dp.fdb_entries()}
        assert fdb == model.fdb_snapshot()
        for p in ports:
            drops = {r: n for r, n in rig.dp.port_counters(p)["drops"].items() if n}
            assert drops == {r: n for (q, r), n in model.drops.items() if q == p}
        assert answered(rig.dp, ports) == model.answered
        assert {p: n for p in ports if (n := rig.dp.port_counters(p)["mac_limited"])} == model.mac_limited
        event(f"requests answered by the switch: {'some' if model.answered else 'none'}")
        event(f"copies refused by an output's MTU: {'some' if any(r == 'mtu_exceeded' for _, r in model.drops) else 'none'}")
        c = rig.dp.fdb_counters()
        assert (c["learned"], c["moved"], c["refused"], c["evicted"], c["limited"]) == (
            model.learned, model.moved, model.refused, model.evicted, model.limited)
    finally:
        rig.close()


REMOTES = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
VNI_BASE = 5000
UNDERLAY_MTU = 1500
VXLAN_IP_OVERHEAD = 36  # outer IPv4 + UDP + VXLAN


@st.composite
def ingress_frames(draw, n_ports: int):
    """("port", index, frame) or ("tunnel", remote, vni, frame); now and then a
    datagram from a stranger, for a VNI nobody has, or too short for a frame."""
    port, frame = draw(frames(n_ports))
    if draw(st.integers(0, 2)):
        return "port", port, frame
    remote = draw(st.sampled_from(REMOTES + ["198.51.100.7"]))
    vni = VNI_BASE + draw(st.integers(1, 4))  # network 4 has no VNI
    return "tunnel", remote, vni, frame


@st.composite
def tunnel_scenarios(draw):
    networks = draw(st.lists(st.integers(1, 3), min_size=2, max_size=6))
    capacity = draw(st.integers(2, 10))
    peers = draw(st.lists(st.tuples(st.sampled_from(REMOTES), st.integers(1, 3)), max_size=4, unique=True))
    statics = draw(st.lists(st.tuples(st.sampled_from(MACS), st.integers(0, len(networks) + len(peers) - 1)),
                            max_size=3, unique_by=lambda t: t[0]))
    trunks = draw(trunks_st())
    n_ports = len(networks) + len(trunks)
    seq = draw(st.lists(st.tuples(ingress_frames(n_ports), st.sampled_from([0, 0, 0, 0, 1, 30, 100, 700])),
                        min_size=1, max_size=40))
    pols = draw(st.lists(policies(), min_size=n_ports, max_size=n_ports))
    return networks, trunks, capacity, peers, statics, draw(neighbours_st()), seq, pols


def outputs(d: dict) -> dict:
    """A decision as the model states it: {port or ("peer", index): True}."""
    if d["verdict"] == "drop":
        return {}
    return {**{p: True for p in d["ports"]}, **{("peer", q): True for q in d["peers"]}}


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario=tunnel_scenarios())
def test_compiled_decision_matches_model_for_ports_and_tunnel_peers(io_mode, scenario):
    networks, trunks, capacity, peers, statics, neighbours, seq, pols = scenario
    model = ModelSwitch(capacity=capacity, aging_ms=300_000)
    dp = Datapath(max_ports=16, mac_table_size=capacity, io_mode=io_mode)
    set_neighbours(dp, model, neighbours)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(len(networks) + len(trunks))]
    # The VTEP's sockets: the loop does not run, so plain UDP ones will do (nothing is sent).
    vtep = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        vtep[0].bind(("127.0.0.1", 0))
        dp.set_vtep(vtep[0].fileno(), vtep[1].fileno(), vtep[0].getsockname()[1], 49152, 65535, UNDERLAY_MTU)
        model.tunnel_max_frame = UNDERLAY_MTU - VXLAN_IP_OVERHEAD
        for p, net in enumerate(networks):
            assert dp.add_port(pairs[p][1].fileno(), net) == p
            model.add_port(p, net)
        for i, (tagged, native) in enumerate(trunks):
            p = len(networks) + i
            assert dp.add_port(pairs[p][1].fileno(), 0, trunk=tagged, native=native) == p
            model.add_trunk(p, tagged, native)
        pinned: set = set()
        # The model's clock starts at the loop's (CLOCK_MONOTONIC): fdb_entries() ages entries by that one.
        clock = time.monotonic_ns() // 1_000_000
        for p, net in enumerate(networks + [trunk_pin_network(t) for t in trunks]):
            if len(pinned) < capacity - 2:
                apply_policy(dp, model, p, net, *pols[p], pinned, at_ms=clock)
            else:
                apply_limits(dp, model, p, pols[p][2], clock)
        for net in (1, 2, 3):
            dp.set_network_vni(net, VNI_BASE + net)
            model.vnis[net] = VNI_BASE + net
        for remote, net in peers:
            idx = dp.add_peer(net, remote)
            model.add_peer(idx, net, remote)
        peer_indices = sorted(model.peers)
        for m, where in statics[:capacity - len(pinned)]:
            if where < len(networks):
                net, out = networks[where], where
            else:
                peer = peer_indices[where - len(networks)]
                net, out = model.peers[peer][0], PEER_FLAG | peer
            if (net, m) in pinned:
                continue
            dp.fdb_set_static(net, m, out)
            model.set_static(net, m, out)
        port_drops: dict[tuple[int, str], int] = {}
        vx_drops: dict[str, int] = {}
        for step, elapsed_ms in seq:
            clock += elapsed_ms  # time is an input: the model and the decision read the same clock
            # Trace asks the same decision dry: it must foresee the loop's and change nothing.
            asked = {"in_port": step[1]} if step[0] == "port" else {"from_addr": step[1], "vni": step[2]}
            before = (sorted(e[:4] for e in dp.fdb_entries()), dp.fdb_counters(), dp.events(0)[1],
                      [dp.port_buckets(p, at_ms=clock) for p in range(len(networks) + len(trunks))])
            dry = dp.decide(step[-1], **asked, at_ms=clock)
            assert (sorted(e[:4] for e in dp.fdb_entries()), dp.fdb_counters(), dp.events(0)[1],
                    [dp.port_buckets(p, at_ms=clock) for p in range(len(networks) + len(trunks))]) == before
            if step[0] == "port":
                _, in_port, frame = step
                expected = model.forward(in_port, frame, clock)
                d = dp.decide(frame, in_port=in_port, dry_run=False, at_ms=clock)
                if d["verdict"] == "drop":
                    port_drops[(in_port, d["reason"])] = port_drops.get((in_port, d["reason"]), 0) + 1
            else:
                _, remote, vni, frame = step
                expected = model.forward_tunnel(remote, vni, frame, clock)
                d = dp.decide(frame, from_addr=remote, vni=vni, dry_run=False, at_ms=clock)
                if d["verdict"] == "drop":
                    vx_drops[d["reason"]] = vx_drops.get(d["reason"], 0) + 1
            assert outputs(d) == {k: True for k in expected}, f"{step}: {d}"
            assert (dry["verdict"], dry["reason"], dry["learn"], outputs(dry)) == (
                d["verdict"], d["reason"], d["learn"], outputs(d)), f"{step}: trace said {dry}, the loop did {d}"
        fdb = {(net, bytes.fromhex(m.replace(":", "")), out, static) for net, m, out, static, _ in dp.fdb_entries()}
        assert fdb == model.fdb_snapshot(clock)
        assert port_drops == model.drops
        event(f"storm drops: {'some' if any(r.startswith('storm_') for _, r in model.drops) else 'none'}")
        assert vx_drops == model.vx_drops
        c = dp.fdb_counters()
        assert (c["learned"], c["moved"], c["refused"], c["evicted"], c["limited"]) == (
            model.learned, model.moved, model.refused, model.evicted, model.limited)
    finally:
        for sock in [*vtep, *(s for pair in pairs for s in pair)]:
            sock.close()
