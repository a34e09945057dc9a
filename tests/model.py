"""A reference model of the forwarding rules, in plain Python.

It is a test oracle, not a fallback: the compiled loop must make exactly the
decisions this model makes (which ports and tunnel peers receive which
frame, what the FDB holds afterwards), for frames from local ports and for
VXLAN datagrams from peers. It also stands in for "the same decision loop in
Python" in the benchmarks.

Outputs are port indices, and ("peer", index) for a tunnel peer; an FDB
entry behind a peer names PEER_FLAG | index, as the compiled table does.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

ETH_HLEN = 14
VXLAN_HLEN = 8
VLAN_TPIDS = (0x8100, 0x88A8)
PEER_FLAG = 0x80000000


@dataclass
class Entry:
    out: int
    last_seen_ms: int
    static: bool = False


@dataclass
class ModelSwitch:
    capacity: int
    aging_ms: int
    ports: dict[int, tuple[int, int]] = field(default_factory=dict)  # port -> (network, mtu)
    fdb: dict[tuple[int, bytes], Entry] = field(default_factory=dict)
    drops: dict[tuple[int, str], int] = field(default_factory=dict)
    peers: dict[int, tuple[int, str]] = field(default_factory=dict)  # peer -> (network, remote IPv4)
    vnis: dict[int, int] = field(default_factory=dict)  # network -> VNI
    tunnel_max_frame: int = 1 << 32  # the longest inner frame the underlay carries (VTEP unset: no bound)
    vx_drops: dict[str, int] = field(default_factory=dict)
    # (network, packed IPv4 or IPv6 address) -> MAC: the addresses the switch answers ARP and ND for
    neigh: dict[tuple[int, bytes], bytes] = field(default_factory=dict)
    answered: dict[tuple[int, str], int] = field(default_factory=dict)  # (port, "arp_suppressed"|...) -> count
    learned: int = 0
    moved: int = 0
    refused: int = 0

    def add_port(self, port: int, network: int, mtu: int = 1500) -> None:
        self.ports[port] = (network, mtu)

    def remove_port(self, port: int) -> None:
        del self.ports[port]
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
        if reason:
            return self._drop(in_port, reason)
        return self._decide(in_port, network, frame, now_ms)

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
        if self._check(frame, self.tunnel_max_frame - ETH_HLEN):
            return self._vx_drop("inner_malformed")
        return self._decide(PEER_FLAG | peer, network, frame, now_ms)

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
        if tagged:
            return "vlan_tagged"
        return None

    def _decide(self, ingress: int, network: int, frame: bytes, now_ms: int) -> dict[Any, bytes]:
        """Learn the source on ingress (a port, or PEER_FLAG | peer), then look the destination up."""
        dst, src = frame[0:6], frame[6:12]
        from_tunnel = bool(ingress & PEER_FLAG)
        self._learn((network, src), ingress, now_ms)
        if dst[0] & 1 and not from_tunnel:
            reply = self._answer(network, frame)
            if reply is not None:
                kind = "arp_suppressed" if frame[12:14] == b"\x08\x06" else "nd_suppressed"
                self.answered[(ingress, kind)] = self.answered.get((ingress, kind), 0) + 1
                return {ingress: reply}
        e = None if dst[0] & 1 else self._live((network, dst), now_ms)
        if e is None:
            return self._flood(ingress, network, frame)
        if e.out & PEER_FLAG:
            return {} if from_tunnel else {("peer", e.out & ~PEER_FLAG): frame}
        if e.out not in self.ports:
            return self._flood(ingress, network, frame)
        if e.out == ingress:
            return self._drop(ingress, "same_port")
        return {e.out: frame}

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

    def _learn(self, key: tuple[int, bytes], port: int, now_ms: int) -> None:
        e = self._live(key, now_ms)
        if e is None:
            if len(self.fdb) >= self.capacity:
                self.refused += 1
                return
            self.fdb[key] = Entry(port, now_ms)
            self.learned += 1
        elif e.static:
            return
        else:
            e.last_seen_ms = now_ms
            if e.out != port:
                e.out = port
                self.moved += 1

    def _flood(self, ingress: int, network: int, frame: bytes) -> dict[Any, bytes]:
        """Every other port of the network and, for a frame from a local port, every peer (head-end replication)."""
        out: dict[Any, bytes] = {p: frame for p, (net, _) in self.ports.items() if net == network and p != ingress}
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
