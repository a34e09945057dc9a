"""Write the seed corpora under tests/fuzz/corpus/TARGET/ (committed): well-
formed inputs of each target's record format, built with scapy, for the
fuzzer to start from. Run again only when a format changes:

    .venv/bin/python tests/fuzz/make_seeds.py
"""
import hashlib
import os
import shutil
import struct
import sys

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targets import VNET_HLEN, record  # noqa: E402

from vswitch.neighframes import _sum as ones_sum  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
BCAST = "ff:ff:ff:ff:ff:ff"


def vnet(flags=0, gso=0, hdr_len=0, gso_size=0, cs=0, co=0) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, cs, co, 0)


def partial(frame: bytes, l2: int = 14) -> tuple[bytes, bytes]:
    """The frame with only its pseudo-header sum in the L4 checksum field, and
    the NEEDS_CSUM header for it (IPv4 or IPv6, TCP or UDP)."""
    ip = frame[l2:]
    if ip[0] >> 4 == 4:
        ihl, proto, addrs = (ip[0] & 15) * 4, ip[9], ip[12:20]
    else:
        ihl, proto, addrs = 40, ip[6], ip[8:40]
    l4_len = len(ip) - ihl
    co = 16 if proto == 6 else 6
    pseudo = ones_sum(addrs + struct.pack("!BBH", 0, proto, l4_len))
    at = l2 + ihl + co
    return vnet(1, 0, 0, 0, l2 + ihl, co), frame[:at] + struct.pack("!H", pseudo) + frame[at + 2:]


def tcp4(n: int, seq: int = 1000, flags: str = "A", sport: int = 40000, opts=None) -> bytes:
    ip = IP(src="10.0.0.1", dst="10.0.0.2", id=7, flags="DF")
    return bytes(Ether(src=A, dst=B) / ip / TCP(sport=sport, dport=5201, seq=seq, ack=1, flags=flags,
                                                 options=opts or []) / (b"\xab" * n))


def udp4(n: int, ip_id: int = 1, df: bool = True) -> bytes:
    return bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", id=ip_id, flags="DF" if df else 0)
                 / UDP(sport=4000, dport=5000) / (b"\xcd" * n))


def superframe(frame: bytes, gso: int, mss: int, l2: int = 14) -> tuple[bytes, bytes]:
    v, f = partial(frame, l2)
    ip = f[l2:]
    ihl = (ip[0] & 15) * 4 if ip[0] >> 4 == 4 else 40
    proto = ip[9] if ip[0] >> 4 == 4 else ip[6]
    thl = (ip[ihl + 12] >> 4) * 4 if proto == 6 else 8
    return vnet(1, gso, l2 + ihl + thl, mss, l2 + ihl, 16 if proto == 6 else 6), f


def frames() -> list[bytes]:
    return [
        bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()),
        bytes(Ether(src=A, dst=BCAST) / ARP(psrc="10.0.0.1", pdst="10.0.0.2")),
        bytes(Ether(src=B, dst=A) / Dot1Q(vlan=5) / IP() / UDP()),
        bytes(Ether(src=C, dst="01:00:5e:00:00:01") / IP(dst="224.0.0.1") / UDP()),
        bytes(Ether(src=A, dst=C) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / (b"x" * 40)),
        tcp4(100),
        bytes(Ether(src=A, dst=B) / IP() / (b"\0" * 1500)),
    ]


def seeds_frame() -> list[bytes]:
    out = []
    for f in frames():
        out.append(struct.pack("<H", 1500) + bytes(VNET_HLEN) + f)
    for f in (tcp4(200), udp4(300), bytes(Ether(src=A, dst=B) / IPv6() / TCP() / (b"y" * 33))):
        v, p = partial(f)
        out.append(struct.pack("<H", 1500) + v + p)
    v, f = superframe(tcp4(4000), 1, 1448)
    out.append(struct.pack("<H", 9000) + v + f)
    return out


def seeds_gso() -> list[bytes]:
    out = []
    cases = [
        superframe(tcp4(4000), 1, 1448),
        superframe(tcp4(3000, flags="PA", opts=[("MSS", 1460), ("NOP", None), ("WScale", 7)]), 1, 1000),
        superframe(bytes(Ether(src=A, dst=B) / IPv6(src="fd00::1", dst="fd00::2") / TCP(flags="A") / (b"z" * 5000)),
                   4, 1440),
        superframe(udp4(3000), 5, 1200),
        superframe(bytes(Ether(src=A, dst=B) / Dot1Q(vlan=7) / IP(options=b"\x01\x01\x01\x00") / TCP(flags="FA")
                         / (b"q" * 2000)), 1, 500, l2=18),
        superframe(tcp4(10), 1, 1448),
    ]
    for v, f in cases:
        out.append(v + b"\0\0\0" + f)
        out.append(v + b"\x02\x10\x00" + f)
    return out


def seeds_gro() -> list[bytes]:
    out = []
    tcp_run = [tcp4(1448, seq=1000 + i * 1448) for i in range(4)] + [tcp4(500, seq=1000 + 4 * 1448, flags="PA")]
    out.append(b"\1" + b"".join(record(bytes(VNET_HLEN), f) for f in tcp_run))
    out.append(b"\1" + b"".join(record(*partial(f)) for f in tcp_run[:3]))
    udp_run = [udp4(1000, ip_id=i) for i in range(3)] + [udp4(200, ip_id=3)]
    out.append(b"\1" + b"".join(record(bytes(VNET_HLEN), f) for f in udp_run))
    out.append(b"\1" + b"".join(record(bytes(VNET_HLEN), udp4(800, ip_id=i, df=False)) for i in range(3)))
    out.append(b"\0" + b"".join(record(bytes(VNET_HLEN), f) for f in udp_run + tcp_run))
    mixed = [tcp4(1448, seq=5000), tcp4(100, sport=1), tcp4(1448, seq=5000 + 1448), bytes(Ether() / ARP())]
    out.append(b"\1" + b"".join(record(bytes(VNET_HLEN), f) for f in mixed))
    return out


def seeds_decide() -> list[bytes]:
    out = []
    fs = frames()
    # Frames from plain ports (0, 2, 4) and from ports with offloads (1, 3: header first).
    out.append(b"".join(record(bytes([p]), f) for p, f in zip([0, 2, 0, 4, 0, 2, 0], fs)))
    out.append(b"".join(record(bytes([1]), bytes(VNET_HLEN) + f) for f in fs[:3])
               + b"".join(record(bytes([3]), v + f) for v, f in (partial(tcp4(300)), partial(udp4(99)))))
    run = [tcp4(1448, seq=1 + i * 1448) for i in range(4)]
    out.append(record(b"\0", bytes(Ether(src=B, dst=A) / IP() / UDP()))  # B learned on port 0
               + b"".join(record(b"\2", f) for f in run))                # A -> B from port 2, one batch
    # B learned on port 1 (offloads), then a TCP run to B from port 0: coalesced (GRO) on the way out.
    back = bytes(VNET_HLEN) + bytes(Ether(src=B, dst=A) / IP() / UDP())
    out.append(record(b"\1", back) + b"".join(record(b"\0", tcp4(1448, seq=1 + i * 1448)) for i in range(5)))
    out.append(record(b"\1", back) + b"".join(record(b"\0", udp4(1000, ip_id=i)) for i in range(4)))
    # B behind a peer of its network, then a TSO super-frame to B from port 1: segmented (GSO) for the tunnel.
    v, f = superframe(tcp4(6000), 1, 1400)
    out.append(record(bytes([26 << 3 | 0]), bytes.fromhex("02000000000b") + b"\x80")
               + record(b"\1", v + f) + record(b"\1", bytes(VNET_HLEN) + tcp4(1400)))
    out.append(record(bytes([26 << 3 | 0]), bytes.fromhex("02000000000b") + b"\x81")  # B behind peer 1
               + record(b"\1", v + f) + record(b"\1", bytes(VNET_HLEN) + tcp4(1400)))
    out.append(record(bytes([26 << 3 | 2]), bytes.fromhex("02000000000b"))
               + record(b"\0", tcp4(64)) + record(bytes([28 << 3 | 2]), bytes.fromhex("02000000000b"))
               + record(b"\0", tcp4(64)) + record(bytes([30 << 3 | 0]), b"") + record(b"\0", tcp4(1480)))
    return out


def seeds_vxlan() -> list[bytes]:
    def vx(vni: int, inner: bytes, flags: int = 0x08) -> bytes:
        return bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + inner
    out = []
    fs = frames()
    out.append(b"".join(record(b"\0", vx(5001, f)) for f in fs))
    out.append(record(b"\1", vx(5002, fs[0])) + record(b"\3", vx(5001, fs[0])) + record(b"\0", vx(5009, fs[0]))
               + record(b"\0", vx(5001, fs[0], flags=0)) + record(b"\0", b"") + record(b"\0", vx(5001, b"short")))
    # B statically on port 1 (offloads), then a TCP run to B from the tunnel: coalesced on the way out.
    out.append(record(b"\x81", bytes.fromhex("02000000000b"))
               + b"".join(record(b"\2", vx(5001, tcp4(1400, seq=1 + i * 1400))) for i in range(4))
               + record(b"\0", vx(5001, bytes(Ether(src=B, dst=A) / IP() / UDP()))))
    return out


SEEDS = {"frame": seeds_frame, "gso": seeds_gso, "gro": seeds_gro, "decide": seeds_decide, "vxlan": seeds_vxlan}


def main() -> None:
    for name, make in SEEDS.items():
        d = os.path.join(HERE, "corpus", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for s in make():
            with open(os.path.join(d, hashlib.sha1(s).hexdigest()), "wb") as f:
                f.write(s)
        print(name, len(os.listdir(d)))


if __name__ == "__main__":
    main()
