"""ARP requests and neighbour solicitations as a host sends them, for `trace`
to ask the datapath what it would do with one (answer it, or flood it)."""
from __future__ import annotations

import ipaddress
import struct

BROADCAST = b"\xff" * 6


def _sum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words, folded."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def arp_request(src_mac: bytes, sender: ipaddress.IPv4Address | None, target: ipaddress.IPv4Address) -> bytes:
    """A broadcast ARP request (RFC 826) for target; a sender of None asks as a probe (0.0.0.0)."""
    spa = sender.packed if sender is not None else bytes(4)
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + spa + bytes(6) + target.packed
    return BROADCAST + src_mac + b"\x08\x06" + body


def neighbour_solicitation(src_mac: bytes, sender: ipaddress.IPv6Address | None,
                           target: ipaddress.IPv6Address) -> bytes:
    """A neighbour solicitation (RFC 4861 4.3) for target to its solicited-node group, with a
    source link-layer address option; a sender of None asks as duplicate address detection (::)."""
    src = sender.packed if sender is not None else bytes(16)
    group = bytes.fromhex("ff0200000000000000000001ff") + target.packed[13:]
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed + (b"\x01\x01" + src_mac if sender else b"")
    csum = ~_sum(src + group + struct.pack("!IxxxB", len(icmp), 58) + icmp) & 0xFFFF
    icmp = icmp[:2] + struct.pack("!H", csum) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + src + group
    return b"\x33\x33" + group[12:] + src_mac + b"\x86\xdd" + ip6 + icmp
