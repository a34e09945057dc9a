"""Test frames that carry a marker, so a test finds its own frames among the kernel's."""
from __future__ import annotations

import itertools
import os
from typing import Callable

from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

MARKER = b"VSTEST:"
MIN_FRAME = 60  # Ethernet minimum without FCS; shorter frames are runts
ETH_P_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental ethertype
_PATTERN = bytes(range(256))
_tokens = itertools.count()


def new_token(prefix: str = "t") -> str:
    """A token unique within this test run, e.g. 't-4242-7'."""
    return f"{prefix}-{os.getpid()}-{next(_tokens)}"


def _mark(token: str) -> bytes:
    if ";" in token:
        raise ValueError(f"token: {token!r} must not contain ';'")
    return MARKER + token.encode() + b";"


def marked_frame(
    src_mac: str,
    dst_mac: str,
    token: str,
    ethertype: int = ETH_P_EXPERIMENTAL,
    size: int | None = None,
    vlan: int | None = None,
    random_padding: bool = False,
) -> bytes:
    """An Ethernet frame (802.1Q-tagged if `vlan` is given) whose payload carries `token`.

    `size` is the whole frame's length without FCS (default: the 60-byte
    minimum); the payload is padded with a fixed byte pattern to reach it,
    or with random bytes (`random_padding`), so that no two frames are alike.
    """
    if vlan is None:
        head = Ether(src=src_mac, dst=dst_mac, type=ethertype)
    else:
        head = Ether(src=src_mac, dst=dst_mac) / Dot1Q(vlan=vlan, type=ethertype)
    header = bytes(head)
    mark = _mark(token)
    target = MIN_FRAME if size is None else size
    room = target - len(header) - len(mark)
    if room < 0:
        raise ValueError(f"size: {size!r} is too small for the headers and token {token!r} ({len(header) + len(mark)} bytes)")
    padding = os.urandom(room) if random_padding else (_PATTERN * (room // len(_PATTERN) + 1))[:room]
    return bytes(head / Raw(mark + padding))


def has_token(token: str) -> Callable[[bytes], bool]:
    """Predicate: the frame carries exactly `token` (not merely a token starting with it)."""
    mark = _mark(token)
    return lambda frame: mark in frame
