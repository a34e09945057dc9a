"""Small frame builders for the no-root tests (bytes, no scapy needed)."""
from __future__ import annotations

import socket
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


def arp(src: bytes, spa: str, tpa: str, op: int = 1, sha: bytes | None = None, dst: bytes = BROADCAST,
        tha: bytes = bytes(6), pad: int = 0) -> bytes:
    """An Ethernet/IPv4 ARP frame (RFC 826); a request by default."""
    import ipaddress
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + (sha or src) + ipaddress.IPv4Address(spa).packed
    body += tha + ipaddress.IPv4Address(tpa).packed
    return eth(dst, src, body + bytes(pad), ethertype=0x0806)


def icmp6_checksum(src: bytes, dst: bytes, icmp: bytes) -> int:
    """The ICMPv6 checksum (RFC 4443 2.3) of icmp, its own field zero, between src and dst."""
    return ~ones_sum(src + dst + struct.pack("!IxxxB", len(icmp), 58) + icmp) & 0xFFFF


def solicited_node(target: bytes) -> tuple[bytes, bytes]:
    """(solicited-node multicast address, its Ethernet group MAC) of an IPv6 address (RFC 4291 2.7.1)."""
    group = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
    return group, b"\x33\x33" + group[12:]


def neighbour_solicitation(src: bytes, ip_src: str, target: str, dst: bytes | None = None, hop_limit: int = 255,
                           bad_checksum: bool = False) -> bytes:
    """An Ethernet/IPv6 neighbour solicitation (RFC 4861 4.3) with a source link-layer address option,
    to the target's solicited-node group unless dst is given."""
    import ipaddress
    s, t = ipaddress.IPv6Address(ip_src).packed, ipaddress.IPv6Address(target).packed
    group, group_mac = solicited_node(t)
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + t + (b"" if s == bytes(16) else b"\x01\x01" + src)
    csum = icmp6_checksum(s, group, icmp) ^ (0x1111 if bad_checksum else 0)
    icmp = icmp[:2] + struct.pack("!H", csum) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, hop_limit) + s + group
    return eth(dst or group_mac, src, ip6 + icmp, ethertype=0x86DD)


def recv_waiting(sock: socket.socket, size: int = 1 << 17) -> list[bytes]:
    """Every message waiting on a non-blocking socket, in order."""
    out = []
    while True:
        try:
            out.append(sock.recv(size))
        except BlockingIOError:
            return out
