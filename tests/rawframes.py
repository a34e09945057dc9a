"""Small frame builders for the no-root tests (bytes, no scapy needed)."""
from __future__ import annotations

import struct

BROADCAST = b"\xff" * 6


def mac(n: int, first: int = 0x02) -> bytes:
    """A locally administered unicast MAC numbered n."""
    return bytes([first]) + n.to_bytes(5, "big")


def eth(dst: bytes, src: bytes, payload: bytes = b"", ethertype: int = 0x88B5, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
    return dst + src + tag + ethertype.to_bytes(2, "big") + payload


def ones_sum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit big-endian words, folded."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def partial_udp(frame: bytes) -> tuple[bytes, bytes]:
    """An Ethernet/IPv4 (no options)/UDP frame as a kernel with checksum
    offload hands it over: (a virtio-net header with NEEDS_CSUM over the UDP
    header, the frame with only the pseudo-header sum in its checksum field)."""
    udp_len = len(frame) - 34
    pseudo = ones_sum(frame[26:34] + struct.pack("!BBH", 0, 17, udp_len))
    vnet = struct.pack("<BBHHHHH", 1, 0, 0, 0, 34, 6, 0)
    return vnet, frame[:40] + struct.pack("!H", pseudo) + frame[42:]
