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
