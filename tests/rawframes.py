"""Small frame builders for the no-root tests (bytes, no scapy needed)."""
from __future__ import annotations

BROADCAST = b"\xff" * 6


def mac(n: int, first: int = 0x02) -> bytes:
    """A locally administered unicast MAC numbered n."""
    return bytes([first]) + n.to_bytes(5, "big")


def eth(dst: bytes, src: bytes, payload: bytes = b"", ethertype: int = 0x88B5, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
    return dst + src + tag + ethertype.to_bytes(2, "big") + payload
