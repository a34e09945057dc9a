"""A reference model of the forwarding rules, in plain Python.

It is a test oracle, not a fallback: the compiled loop must make exactly the
decisions this model makes (which ports and tunnel peers receive which
frame, what the FDB holds afterwards), for frames from local ports and for
VXLAN datagrams from peers. It also stands in for "the same decision loop in
Python" in the benchmarks.

Outputs are port indices, and ("peer", index) for a tunnel peer; an FDB
entry behind a peer names PEER_FLAG | index, as the compiled table does.

Trunk ports (network 0) carry networks under 802.1Q VLAN IDs: a frame's tag
picks its network on the way in and is removed; on the way out it gets the
tag of its network on that port (none in the port's native network).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

ETH_HLEN = 14
VXLAN_HLEN = 8
VLAN_TPIDS = (0x8100, 0x88A8)
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
PEER_FLAG = 0x80000000


@dataclass
class Entry:
    out: int
    last_seen_ms: int
    static: bool = False
    pinned: bool = False  # a port's own MAC: a frame carrying it from elsewhere is dropped
    seen: int = 0  # when it was last learned or refreshed, in table operations: least recently seen is least


@dataclass(frozen=True)
class Policy:
    """A port's policy: with `security`, its frames' sources must be its own."""

    security: bool = False
    router: bool = False
    dhcp_server: bool = False
    macs: frozenset[bytes] = frozenset()
    ip4: frozenset[bytes] = frozenset()  # empty: any IPv4 source
    ip6: frozenset[bytes] = frozenset()  # empty: any IPv6 source

    def check(self, frame: bytes) -> str | None:
        """Why an untagged frame from the port breaks the policy, or None."""
        if not self.security:
            return None
        if frame[6:12] not in self.macs:
            return "spoofed_mac"
        ethertype, l3 = int.from_bytes(frame[12:14], "big"), frame[14:]
        if ethertype == 0x0800:
            return self._ipv4(l3)
        if ethertype == 0x0806:
            return self._arp(l3)
        if ethertype == 0x86DD:
            return self._ipv6(l3)
        return None

    def _ip4_ok(self, a: bytes) -> bool:
        return not self.ip4 or a in self.ip4

    def _ip6_ok(self, a: bytes) -> bool:
        return not self.ip6 or a in self.ip6

    def _ipv4(self, l3: bytes) -> str | None:
        if len(l3) < 20:
            return "spoofed_ip"
        ihl = (l3[0] & 0x0F) * 4
        ports = None
        first_fragment = int.from_bytes(l3[6:8], "big") & 0x1FFF == 0
        if l3[9] == 17 and ihl >= 20 and len(l3) >= ihl + 4 and first_fragment:
            ports = (int.from_bytes(l3[ihl:ihl + 2], "big"), int.from_bytes(l3[ihl + 2:ihl + 4], "big"))
            if ports == (67, 68) and not self.dhcp_server:
                return "dhcp_guard"
        src = l3[12:16]
        if self._ip4_ok(src) or (src == bytes(4) and ports == (68, 67)):
            return None
        return "spoofed_ip"

    def _arp(self, l3: bytes) -> str | None:
        if len(l3) < 28 or l3[0:6] != b"\x00\x01\x08\x00\x06\x04":
            return "spoofed_arp"
        if l3[8:14] not in self.macs or not (self._ip4_ok(l3[14:18]) or l3[14:18] == bytes(4)):
            return "spoofed_arp"
        return None

    def _ipv6(self, l3: bytes) -> str | None:
        if len(l3) < 40:
            return "spoofed_ip"
        l3 = l3[:40 + int.from_bytes(l3[4:6], "big")]
        nh, icmp_type = l3[6], (l3[40] if len(l3) > 40 else None)
        if nh == 58 and icmp_type in (134, 137) and not self.router:
            return "ra_guard"
        if nh == 17 and len(l3) >= 44 and (l3[40:42], l3[42:44]) == (b"\x02\x23", b"\x02\x22") and not self.dhcp_server:
            return "dhcp_guard"
        unspec = l3[8:24] == bytes(16)
        if unspec and not (nh == 0 or (nh == 58 and icmp_type == 135)):
            return "spoofed_ip"
        if not unspec and not self._ip6_ok(l3[8:24]):
            return "spoofed_ip"
        if nh == 58 and icmp_type in (135, 136):
            return self._nd(l3[40:], unspec)
        return None

    def _nd(self, icmp: bytes, from_unspec: bool) -> str | None:
        if len(icmp) < 24:
            return "spoofed_nd"
        if (icmp[0] == 136 or from_unspec) and not self._ip6_ok(icmp[8:24]):
            return "spoofed_nd"
        off = 24
        while off + 2 <= len(icmp):
            kind, olen = icmp[off], icmp[off + 1] * 8
            if olen == 0 or off + olen > len(icmp):
                return "spoofed_nd"
            if kind in (1, 2) and (olen < 8 or icmp[off + 2:off + 8] not in self.macs):
                return "spoofed_nd"
            off += olen
        return None


@dataclass
class Bucket:
    """A token bucket as fastpath/limits.pxi keeps one: thousandths of a frame, refilled by
    the clock's milliseconds; a frame passes while the bucket is above zero, charged in full."""

    rate: int  # frames per second
    burst: int = 0  # thousandths
    tokens: int = 0
    last_ms: int = 0

    @classmethod
    def full(cls, rate: int, now_ms: int) -> Bucket:
        burst = max(1, rate // 10) * 1000
        return cls(rate, burst, burst, now_ms)

    def level(self, now_ms: int) -> int:
        if now_ms <= self.last_ms:
            return self.tokens
        return min(self.burst, self.tokens + (now_ms - self.last_ms) * self.rate)

    def take(self, now_ms: int) -> bool:
        level = self.level(now_ms)
        self.last_ms = max(self.last_ms, now_ms)
        self.tokens = level if level <= 0 else level - 1000
        return level > 0


STORM_KINDS = ("storm_broadcast", "storm_multicast", "storm_unknown_unicast")


@dataclass
class ModelSwitch:
    capacity: int
    aging_ms: int
    ports: dict[int, tuple[int, int]] = field(default_factory=dict)  # port -> (network, mtu); network 0: a trunk
    trunks: dict[int, dict[int, int]] = field(default_factory=dict)  # trunk port -> {VID: network}, VID 0: native
    policies: dict[int, Policy] = field(default_factory=dict)
    fdb: dict[tuple[int, bytes], Entry] = field(default_factory=dict)
    drops: dict[tuple[int, str], int] = field(default_factory=dict)
    peers: dict[int, tuple[int, str]] = field(default_factory=dict)  # peer -> (network, remote IPv4)
    vnis: dict[int, int] = field(default_factory=dict)  # network -> VNI
    tunnel_max_frame: int = 1 << 32  # the longest inner frame the underlay carries (VTEP unset: no bound)
    vx_drops: dict[str, int] = field(default_factory=dict)
    # (network, packed IPv4 or IPv6 address) -> MAC: the addresses the switch answers ARP and ND for
    neigh: dict[tuple[int, bytes], bytes] = field(default_factory=dict)
    answered: dict[tuple[int, str], int] = field(default_factory=dict)  # (port, "arp_suppressed"|...) -> count
    max_macs: dict[int, int] = field(default_factory=dict)  # port -> most learned entries it may hold
    storm: dict[tuple[int, str], Bucket] = field(default_factory=dict)  # (port, storm kind) -> its bucket
    mac_limited: dict[int, int] = field(default_factory=dict)  # port -> frames whose source it could not learn
    learned: int = 0
    moved: int = 0
    refused: int = 0
    evicted: int = 0
    limited: int = 0
    clock: int = 0  # counts learning operations: orders entries by when they were last seen

    def add_port(self, port: int, network: int, mtu: int = 1500) -> None:
        self.ports[port] = (network, mtu)

    def add_trunk(self, port: int, trunk: dict[int, int], native: int = 0, mtu: int = 1500) -> None:
        """A trunk port carrying each network of trunk ({network: VID}) tagged, and native untagged."""
        self.ports[port] = (0, mtu)
        self.trunks[port] = {vid: net for net, vid in trunk.items()} | ({0: native} if native else {})

    def set_policy(self, port: int, policy: Policy) -> None:
        self.policies[port] = policy

    def pin(self, port: int, mac: bytes, network: int | None = None) -> None:
        self.set_static(network or self.ports[port][0], mac, port, pinned=True)

    def set_static(self, network: int, mac: bytes, out: int, pinned: bool = False) -> None:
        """A static entry; in a full table it takes the place of a learned one, as learning does."""
        if (network, mac) not in self.fdb and len(self.fdb) >= self.capacity:
            if not self._evict():
                raise OverflowError("the MAC table is full")
        self.fdb[(network, mac)] = Entry(out, 0, static=True, pinned=pinned)

    def set_max_macs(self, port: int, limit: int) -> None:
        self.max_macs[port] = limit

    def set_storm(self, port: int, now_ms: int, **fps: int) -> None:
        """Storm control of a port: frames/s it may flood of each kind given (0: no limit), buckets full at now_ms."""
        for kind in STORM_KINDS:
            self.storm.pop((port, kind), None)
            if fps.get(kind):
                self.storm[(port, kind)] = Bucket.full(fps[kind], now_ms)

    def held(self, out: int) -> int:
        return sum(1 for e in self.fdb.values() if not e.static and e.out == out)

    def _at_limit(self, out: int) -> bool:
        limit = 0 if out & PEER_FLAG else self.max_macs.get(out, 0)
        return limit != 0 and self.held(out) >= limit

    def _evict(self) -> bool:
        """Remove the least recently seen learned entry of the output holding the most
        (the first of those, ports before peers, by index); False when none is learned."""
        counts: dict[int, int] = {}
        for e in self.fdb.values():
            if not e.static:
                counts[e.out] = counts.get(e.out, 0) + 1
        if not counts:
            return False
        victim = min(counts, key=lambda o: (-counts[o], bool(o & PEER_FLAG), o & ~PEER_FLAG))
        key = min((k for k, e in self.fdb.items() if not e.static and e.out == victim), key=lambda k: self.fdb[k].seen)
        del self.fdb[key]
        self.evicted += 1
        return True

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def remove_port(self, port: int) -> None:
        del self.ports[port]
        self.trunks.pop(port, None)
        self.policies.pop(port, None)
        self.max_macs.pop(port, None)
        for kind in STORM_KINDS:
            self.storm.pop((port, kind), None)
        for key in [k for k, e in self.fdb.items() if e.out == port]:
            del self.fdb[key]

    def add_peer(self, peer: int, network: int, remote: str) -> None:
        self.peers[peer] = (network, remote)

    def remove_peer(self, peer: int) -> None:
        del self.peers[peer]
        for key in [k for k, e in self.fdb.items() if e.out == PEER_FLAG | peer]:
            del self.fdb[key]

    def set_neighbour(self, network: int, ip: str, mac: bytes) -> None:
        self.neigh[(network, ipaddress.ip_address(ip).packed)] = mac

    def _drop(self, port: int, reason: str) -> dict[int, bytes]:
        self.drops[(port, reason)] = self.drops.get((port, reason), 0) + 1
        return {}

    def _live(self, key: tuple[int, bytes], now_ms: int) -> Entry | None:
        e = self.fdb.get(key)
        if e is not None and not e.static and now_ms - e.last_seen_ms >= self.aging_ms:
            del self.fdb[key]
            return None
        return e

    def forward(self, in_port: int, frame: bytes, now_ms: int = 0) -> dict[Any, bytes]:
        """{output: frame} for one frame received on in_port."""
        network, mtu = self.ports[in_port]
        reason = self._check(frame, mtu)
        if reason is None:
            reason, network, frame = self._vlan_in(in_port, frame)
        reason = reason or self.policies.get(in_port, Policy()).check(frame)
        if reason:
            return self._drop(in_port, reason)
        return self._output(in_port, self._decide(in_port, network, frame, now_ms))

    def _output(self, ingress: int, decided: dict[Any, bytes]) -> dict[Any, bytes]:
        """What of a decision leaves: a copy for a port whose MTU its L3 packet exceeds is
        dropped and counted on that port (mtu_exceeded); a frame too long for the underlay
        goes to no peer, counted once on its ingress port (tunnel_mtu)."""
        out: dict[Any, bytes] = {}
        refused_by_underlay = False
        for where, frame in decided.items():
            if isinstance(where, tuple):
                if len(frame) > self.tunnel_max_frame:
                    refused_by_underlay = True
                    continue
            elif not self._fits(frame, self.ports[where][1]):
                self._drop(where, "mtu_exceeded")
                continue
            out[where] = frame
        if refused_by_underlay:
            self._drop(ingress, "tunnel_mtu")
        return out

    @staticmethod
    def _fits(frame: bytes, mtu: int) -> bool:
        """Whether an output of `mtu` takes the frame: the MTU bounds the L3 packet; a tag is L2."""
        tagged = len(frame) >= ETH_HLEN + 4 and int.from_bytes(frame[12:14], "big") in VLAN_TPIDS
        return len(frame) <= mtu + ETH_HLEN + (4 if tagged else 0)

    def _vlan_in(self, port: int, frame: bytes) -> tuple[str | None, int, bytes]:
        """(drop reason, network, the frame untagged) of a frame from a local port."""
        tpid = int.from_bytes(frame[12:14], "big")
        tagged = tpid in VLAN_TPIDS
        if tagged and (tpid == TPID_8021AD or int.from_bytes(frame[16:18], "big") in VLAN_TPIDS):
            return "vlan_stacked", 0, frame
        vid = int.from_bytes(frame[14:16], "big") & 0x0FFF if tagged else 0
        untagged = frame[:12] + frame[16:] if tagged else frame
        if port in self.trunks:
            network = self.trunks[port].get(vid, 0)
            if not network:
                return ("vlan_unknown" if vid else "vlan_untagged"), 0, frame
            return None, network, untagged
        if vid:
            return "vlan_tagged", 0, frame
        return None, self.ports[port][0], untagged

    def _egress(self, port: int, network: int, frame: bytes) -> bytes:
        """The frame as it leaves port: tagged with its network's VID on a trunk port (but the native network)."""
        vid = next((v for v, n in self.trunks.get(port, {}).items() if n == network), 0)
        return frame[:12] + (TPID_8021Q << 16 | vid).to_bytes(4, "big") + frame[12:] if vid else frame

    def _carries(self, port: int, network: int) -> bool:
        if port in self.trunks:
            return network in self.trunks[port].values()
        return self.ports[port][0] == network

    def forward_tunnel(self, remote: str, vni: int, frame: bytes, now_ms: int = 0) -> dict[Any, bytes]:
        """{output: frame} for the inner frame of one VXLAN datagram for vni from remote
        (RFC 7348: decapsulated, its source learned behind the peer, and never sent
        back into the tunnel: split horizon)."""
        if VXLAN_HLEN + len(frame) < VXLAN_HLEN + ETH_HLEN:
            return self._vx_drop("truncated")
        network = next((n for n, v in self.vnis.items() if v == vni), None)
        if network is None:
            return self._vx_drop("unknown_vni")
        peer = next((p for p, (n, r) in self.peers.items() if n == network and r == remote), None)
        if peer is None:
            return self._vx_drop("unknown_peer")
        if self._check(frame, self.tunnel_max_frame - ETH_HLEN) or int.from_bytes(frame[12:14], "big") in VLAN_TPIDS:
            return self._vx_drop("inner_malformed")  # a VTEP sends untagged frames
        return self._output(PEER_FLAG | peer, self._decide(PEER_FLAG | peer, network, frame, now_ms))

    def _vx_drop(self, reason: str) -> dict[Any, bytes]:
        self.vx_drops[reason] = self.vx_drops.get(reason, 0) + 1
        return {}

    @staticmethod
    def _check(frame: bytes, mtu: int) -> str | None:
        """Why the Ethernet header fails a port's checks, or None."""
        if len(frame) < ETH_HLEN:
            return "runt"
        tagged = int.from_bytes(frame[12:14], "big") in VLAN_TPIDS
        if tagged and len(frame) < ETH_HLEN + 4:
            return "runt"
        if len(frame) > mtu + ETH_HLEN + (4 if tagged else 0):
            return "too_big"
        if frame[6] & 1:
            return "src_multicast"
        return None

    def _decide(self, ingress: int, network: int, frame: bytes, now_ms: int) -> dict[Any, bytes]:
        """Learn the source on ingress (a port, or PEER_FLAG | peer), then look the destination up."""
        dst, src = frame[0:6], frame[6:12]
        from_tunnel = bool(ingress & PEER_FLAG)
        learned = self._learn((network, src), ingress, now_ms)
        if learned == "pinned_kept":
            return self._vx_drop("mac_pinned") if from_tunnel else self._drop(ingress, "mac_pinned")
        if learned == "limited":
            self.mac_limited[ingress] = self.mac_limited.get(ingress, 0) + 1
        if dst[0] & 1 and not from_tunnel:
            reply = self._answer(network, frame)
            if reply is not None:
                kind = "arp_suppressed" if frame[12:14] == b"\x08\x06" else "nd_suppressed"
                self.answered[(ingress, kind)] = self.answered.get((ingress, kind), 0) + 1
                return {ingress: self._egress(ingress, network, reply)}
        e = None if dst[0] & 1 else self._live((network, dst), now_ms)
        if e is None:
            return self._flood(ingress, network, frame, now_ms)
        if e.out & PEER_FLAG:
            return self._vx_drop("split_horizon") if from_tunnel else {("peer", e.out & ~PEER_FLAG): frame}
        if e.out not in self.ports:
            return self._flood(ingress, network, frame, now_ms)
        if e.out == ingress:
            return self._drop(ingress, "same_port")
        if not self._carries(e.out, network):
            return {}  # an entry made before its trunk port stopped carrying the network: nothing is sent
        return {e.out: self._egress(e.out, network, frame)}

    def _answer(self, network: int, frame: bytes) -> bytes | None:
        """The reply the switch sends itself to an ARP request or a neighbour solicitation
        from a known sender for a known address, or None (the frame goes on as any other)."""
        src = frame[6:12]
        if frame[12:14] == b"\x08\x06" and len(frame) >= 42:
            htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
            sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
            if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 1) or spa == bytes(4) or spa == tpa or sha != src:
                return None
            if self.neigh.get((network, spa)) != sha:
                return None
            target = self.neigh.get((network, tpa))
            if target is None or target == src:
                return None
            return sha + target + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + target + tpa + sha + spa
        if frame[12:14] == b"\x86\xdd" and len(frame) >= 14 + 40 + 24:
            ip6 = frame[14:]
            plen = int.from_bytes(ip6[4:6], "big")
            if ip6[0] >> 4 != 6 or ip6[6] != 58 or ip6[7] != 255 or plen < 24 or 14 + 40 + plen > len(frame):
                return None
            icmp, ip_src, ip_dst = ip6[40:40 + plen], ip6[8:24], ip6[24:40]
            target_ip = icmp[8:24]
            if icmp[0] != 135 or icmp[1] != 0 or target_ip[0] == 0xFF or self.neigh.get((network, ip_src)) != src:
                return None
            target = self.neigh.get((network, target_ip))
            if target is None or target == src or _icmp6_sum(ip_src, ip_dst, icmp) != 0xFFFF:
                return None
            na = struct.pack("!BBHB3x", 136, 0, 0, 0x60) + target_ip + b"\x02\x01" + target
            csum = ~_icmp6_sum(target_ip, ip_src, na) & 0xFFFF
            na = na[:2] + struct.pack("!H", csum) + na[4:]
            hdr = struct.pack("!IHBB", 0x60000000, len(na), 58, 255) + target_ip + ip_src
            return src + target + b"\x86\xdd" + hdr + na
        return None

    def _learn(self, key: tuple[int, bytes], port: int, now_ms: int) -> str | None:
        e = self._live(key, now_ms)
        if e is None:
            if self._at_limit(port):
                self.limited += 1
                return "limited"
            if len(self.fdb) >= self.capacity and not self._evict():
                self.refused += 1
                return None
            self.fdb[key] = Entry(port, now_ms, seen=self._tick())
            self.learned += 1
        elif e.static:
            return "pinned_kept" if e.pinned and e.out != port else None
        else:
            if e.out != port and self._at_limit(port):
                self.limited += 1
                return "limited"
            e.last_seen_ms = now_ms
            e.seen = self._tick()
            if e.out != port:
                e.out = port
                self.moved += 1
        return None

    def _flood(self, ingress: int, network: int, frame: bytes, now_ms: int = 0) -> dict[Any, bytes]:
        """Every other port of the network and, for a frame from a local port, every peer (head-end replication);
        a flood from a local port with storm control passes its bucket of the frame's kind first."""
        if not ingress & PEER_FLAG:
            dst = frame[0:6]
            kind = ("storm_broadcast" if dst == b"\xff" * 6 else "storm_multicast") if dst[0] & 1 else "storm_unknown_unicast"
            bucket = self.storm.get((ingress, kind))
            if bucket is not None and not bucket.take(now_ms):
                return self._drop(ingress, kind)
        out: dict[Any, bytes] = {p: self._egress(p, network, frame) for p in self.ports
                                 if self._carries(p, network) and p != ingress}
        if not ingress & PEER_FLAG:
            out.update({("peer", p): frame for p, (net, _) in self.peers.items() if net == network})
        return out

    def fdb_snapshot(self, now_ms: int = 0) -> set[tuple[int, bytes, int, bool]]:
        return {
            (net, mac, e.out, e.static)
            for (net, mac), e in self.fdb.items()
            if e.static or now_ms - e.last_seen_ms < self.aging_ms
        }


def _icmp6_sum(src: bytes, dst: bytes, icmp: bytes) -> int:
    """The folded ones' complement sum of an ICMPv6 message and its pseudo-header (RFC 8200 8.1)."""
    data = src + dst + struct.pack("!IxxxB", len(icmp), 58) + icmp
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s
