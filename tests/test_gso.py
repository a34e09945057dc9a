"""Software segmentation of TSO / UDP_L4 super-frames against a pure-Python reference.

Inputs are built as a Linux sender hands them to a TAP with IFF_VNET_HDR: the
IP header complete for the whole super-frame, the L4 checksum field holding
only the pseudo-header sum, and a virtio-net header asking for that partial
checksum. scapy checks every segment's checksums independently.
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

import fastpath.gso
from fastpath.gso import HEADROOM, SEG_ROOM, segment, segment_gathered
from rawframes import ones_sum

VNET_F_NEEDS_CSUM = 1
GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 1, 3, 4, 5
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
SLOT_ALIGN = 8
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
ADDRS = {4: ("10.0.0.1", "10.0.0.2"), 6: ("fd00::1", "fd00::2")}

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def vnet(gso_type: int, gso_size: int, hdr_len: int, csum_start: int, csum_offset: int,
         flags: int = VNET_F_NEEDS_CSUM) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def pseudo_header(version: int, addrs: bytes, proto: int, l4_len: int) -> bytes:
    if version == 4:  # RFC 793 section 3.1
        return addrs + struct.pack("!BBH", 0, proto, l4_len)
    return addrs + struct.pack("!I3xB", l4_len, proto)  # RFC 8200 section 8.1


# --- building super-frames ---------------------------------------------------

def superframe(version: int, l4, payload: bytes, gso_size: int, *, vlan: int | None = None,
               ip_options: bytes = b"", ip_id: int = 1, ip_flags: int = 2, tos: int = 0) -> tuple[bytes, bytes]:
    """(virtio-net header, frame) of a TCP or UDP super-frame carrying `payload`."""
    pkt = Ether(src=SRC_MAC, dst=DST_MAC)
    if vlan is not None:
        pkt /= Dot1Q(vlan=vlan)
    src, dst = ADDRS[version]
    if version == 4:
        pkt /= IP(src=src, dst=dst, id=ip_id, flags=ip_flags, tos=tos,
                  options=[IPOption(ip_options)] if ip_options else [])
    else:
        pkt /= IPv6(src=src, dst=dst, tc=tos, fl=0x12345)
    pkt /= l4 / Raw(payload)
    frame = bytearray(bytes(pkt))
    l4_off = len(frame) - len(bytes(pkt[l4.__class__]))
    l4_len = len(frame) - l4_off
    is_tcp = isinstance(l4, TCP)
    csum_offset = 16 if is_tcp else 6
    addrs = bytes(pkt[IP])[12:20] if version == 4 else bytes(pkt[IPv6])[8:40]
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented.
    partial = ones_sum(pseudo_header(version, addrs, 6 if is_tcp else 17, l4_len))
    frame[l4_off + csum_offset:l4_off + csum_offset + 2] = struct.pack("!H", partial)
    hdr_len = len(frame) - len(payload)
    gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) if is_tcp else GSO_UDP_L4
    return vnet(gso_type, gso_size, hdr_len, l4_off, csum_offset), bytes(frame)


# --- the reference -----------------------------------------------------------

def reference_segment(frame: bytes, gso_size: int) -> list[bytes]:
    """What tcp_gso_segment / __udp_gso_segment make of a valid super-frame."""
    l2 = 18 if frame[12:14] in (b"\x81\x00", b"\x88\xa8") else 14
    version = frame[l2] >> 4
    if version == 4:
        l3, proto, ip_id, addrs = (frame[l2] & 0x0F) * 4, frame[l2 + 9], frame[l2 + 4:l2 + 6], frame[l2 + 12:l2 + 20]
    else:
        l3, proto, ip_id, addrs = 40, frame[l2 + 6], b"", frame[l2 + 8:l2 + 40]
    l4 = l2 + l3
    thl = (frame[l4 + 12] >> 4) * 4 if proto == 6 else 8
    head, data = frame[:l4 + thl], frame[l4 + thl:]
    chunks = [data[i:i + gso_size] for i in range(0, len(data), gso_size)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        h = bytearray(head)
        if version == 4:
            h[l2 + 2:l2 + 4] = struct.pack("!H", l3 + thl + len(chunk))
            h[l2 + 4:l2 + 6] = struct.pack("!H", (int.from_bytes(ip_id, "big") + i) & 0xFFFF)
            h[l2 + 10:l2 + 12] = b"\0\0"
            h[l2 + 10:l2 + 12] = struct.pack("!H", ~ones_sum(bytes(h[l2:l4])) & 0xFFFF)
        else:
            h[l2 + 4:l2 + 6] = struct.pack("!H", thl + len(chunk))
        if proto == 6:
            seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
            h[l4 + 4:l4 + 8] = struct.pack("!I", (seq + i * gso_size) & 0xFFFFFFFF)
            if i < len(chunks) - 1:
                h[l4 + 13] &= ~(TCP_FIN | TCP_PSH)
            if i > 0:
                h[l4 + 13] &= ~TCP_CWR
            csum_at = l4 + 16
        else:
            h[l4 + 4:l4 + 6] = struct.pack("!H", 8 + len(chunk))
            csum_at = l4 + 6
        h[csum_at:csum_at + 2] = b"\0\0"
        csum = ~ones_sum(pseudo_header(version, addrs, proto, thl + len(chunk)) + bytes(h[l4:]) + chunk) & 0xFFFF
        if proto == 17 and csum == 0:
            csum = 0xFFFF
        h[csum_at:csum_at + 2] = struct.pack("!H", csum)
        out.append(bytes(h) + chunk)
    return out


def scratch_needed(segments: list[bytes]) -> int:
    return sum(-(-(HEADROOM + len(s)) // SLOT_ALIGN) * SLOT_ALIGN for s in segments)


# --- checks on the segments ----------------------------------------------------

def check_segments(frame: bytes, gso_size: int, segs: list[bytes], l4_cls) -> None:
    assert segs == reference_segment(frame, gso_size)
    original = Ether(frame)
    l4_orig = original[l4_cls]
    payloads = []
    for i, seg in enumerate(segs):
        p = Ether(seg)
        # scapy recomputes every checksum we clear; the segment must come back unchanged.
        if IP in p:
            del p[IP].chksum
        del p[l4_cls].chksum
        assert bytes(Ether(bytes(p))) == seg, f"segment {i} has a bad checksum"
        l3 = p[IP] if IP in p else p[IPv6]
        l4 = p[l4_cls]
        hdr_len = len(l4) - len(l4.payload)
        data = bytes(l4.payload)
        ip_payload_len = l3.len - l3.ihl * 4 if IP in p else l3.plen
        assert ip_payload_len == hdr_len + len(data) <= hdr_len + gso_size
        assert len(data) == gso_size or i == len(segs) - 1
        if l4_cls is TCP:
            assert l4.seq == (l4_orig.seq + sum(map(len, payloads))) & 0xFFFFFFFF
            last = i == len(segs) - 1
            assert int(l4.flags) & (TCP_FIN | TCP_PSH) == (int(l4_orig.flags) & (TCP_FIN | TCP_PSH) if last else 0)
            assert int(l4.flags) & TCP_CWR == (int(l4_orig.flags) & TCP_CWR if i == 0 else 0)
        else:
            assert l4.len == 8 + len(data)
        payloads.append(data)
    assert b"".join(payloads) == bytes(l4_orig.payload)


# --- hypothesis strategies ------------------------------------------------------

def payloads(max_size: int = 64000) -> st.SearchStrategy[bytes]:
    # Random bytes from a seed: hypothesis draws lengths cheaply but not 64 KB of
    # data. It favours small integers, so half the draws start at half the range.
    sizes = st.integers(1, max_size) | st.integers(max_size // 2, max_size)
    return st.builds(lambda n, seed: random.Random(seed).randbytes(n), sizes, st.integers(0, 2**32 - 1))


TCP_OPTION_SIZES = {"MSS": 4, "NOP": 1, "WScale": 3, "SAckOK": 2, "Timestamp": 10}
# Up to the 40 bytes of options a 4-bit data offset leaves room for.
tcp_options = st.lists(st.sampled_from([("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
                                        ("Timestamp", (123456, 654321))]), max_size=8).filter(
    lambda opts: sum(TCP_OPTION_SIZES[name] for name, _ in opts) <= 40)
# Router Alert and NOPs, 4-byte aligned as IHL counts words.
ip_options = st.integers(0, 10).map(lambda words: (b"\x94\x04\x00\x00" + b"\x01" * 36)[:4 * words])
vlans = st.none() | st.integers(1, 4094)


@st.composite
def tcp_superframes(draw) -> tuple[bytes, bytes, int]:
    version = draw(st.sampled_from([4, 6]))
    gso_size = draw(st.integers(500, 9000))
    tcp = TCP(sport=draw(st.integers(1, 65535)), dport=5201, seq=draw(st.integers(0, 2**32 - 1)),
              ack=draw(st.integers(0, 2**32 - 1)), flags=draw(st.integers(0, 255)), window=65535,
              options=draw(tcp_options))
    hdr, frame = superframe(version, tcp, draw(payloads()), gso_size, vlan=draw(vlans),
                            ip_options=draw(ip_options) if version == 4 else b"",
                            ip_id=draw(st.integers(0, 65535)), ip_flags=draw(st.sampled_from([0, 2])),
                            tos=draw(st.integers(0, 255)))
    return hdr, frame, gso_size


@st.composite
def udp_superframes(draw) -> tuple[bytes, bytes, int]:
    version = draw(st.sampled_from([4, 6]))
    gso_size = draw(st.integers(500, 9000))
    # UDP_L4 senders are limited to 64 segments per super-frame (UDP_MAX_SEGMENTS).
    udp = UDP(sport=draw(st.integers(1024, 65535)), dport=5000)
    hdr, frame = superframe(version, udp, draw(payloads(max_size=min(64000, 64 * gso_size))), gso_size,
                            vlan=draw(vlans), ip_options=draw(ip_options) if version == 4 else b"",
                            ip_id=draw(st.integers(0, 65535)))
    return hdr, frame, gso_size


# --- tests ---------------------------------------------------------------------------

def test_compiled_module_is_loaded():
    assert fastpath.gso.__file__.endswith(".so")


@SETTINGS
@given(tcp_superframes())
def test_tcp_superframes_match_the_reference(case):
    hdr, frame, gso_size = case
    check_segments(frame, gso_size, segment(frame, hdr), TCP)


@SETTINGS
@given(udp_superframes())
def test_udp_l4_superframes_match_the_reference(case):
    hdr, frame, gso_size = case
    check_segments(frame, gso_size, segment(frame, hdr), UDP)


def gathered(hdr: bytes, frame: bytes) -> list[bytes]:
    """The segments as the tunnel's trains send them: headers written apart,
    the payload gathered from where it lies in the super-frame."""
    return [h + frame[off:off + n] for h, off, n in segment_gathered(frame, hdr)]


@SETTINGS
@given(tcp_superframes() | udp_superframes())
def test_segments_gathered_without_copying_are_the_copied_ones(case):
    hdr, frame, gso_size = case
    assert gathered(hdr, frame) == segment(frame, hdr)


def test_udp_checksum_that_computes_to_zero_is_sent_as_all_ones():
    # Pick the last two payload bytes so the datagram's sum is 0xFFFF, hence a checksum of 0.
    body = b"abcdef"
    pseudo = pseudo_header(4, bytes([10, 0, 0, 1, 10, 0, 0, 2]), 17, 16)
    rest = ones_sum(pseudo + struct.pack("!HHHH", 1000, 5000, 16, 0) + body)
    filler = struct.pack("!H", 0xFFFF - rest)
    hdr, frame = superframe(4, UDP(sport=1000, dport=5000), body + filler, 1000)
    [seg] = segment(frame, hdr)
    assert seg[-10:-8] == b"\xff\xff"
    assert [seg] == reference_segment(frame, 1000)


def test_payload_that_fits_one_segment_still_gets_complete_checksums():
    tcp = TCP(sport=1, dport=2, seq=7, flags="FPAC")
    hdr, frame = superframe(4, tcp, b"x" * 100, 1448)
    segs = segment(frame, hdr)
    assert len(segs) == 1
    check_segments(frame, 1448, segs, TCP)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("gso_size", [1, 536, 1448, 8948])
def test_64k_superframes(version, gso_size):
    ip_hlen = 20 if version == 4 else 0  # IPv6's payload length leaves its own 40 bytes out
    payload = random.Random(gso_size).randbytes(65535 - ip_hlen - 20)
    hdr, frame = superframe(version, TCP(sport=1, dport=2, flags="PA"), payload, gso_size)
    n = -(-len(payload) // gso_size)
    # The room the integrator reserves: the frame plus SEG_ROOM per segment.
    segs = segment(frame, hdr, max_segs=n, scratch_len=len(frame) + n * SEG_ROOM)
    assert len(segs) == n and scratch_needed(segs) <= len(frame) + n * SEG_ROOM
    assert b"".join(s[len(s) - min(gso_size, len(payload) - i * gso_size):] for i, s in enumerate(segs)) == payload
    if gso_size == 1448:
        check_segments(frame, gso_size, segs, TCP)
    if gso_size > 1:  # odd-sized chunks too: each payload's checksum starts at an even offset
        assert gathered(hdr, frame) == segs


# --- errors ---------------------------------------------------------------------------

def tcp4(payload: bytes = b"x" * 3000, gso_size: int = 1000, **kw) -> tuple[bytes, bytes]:
    return superframe(4, TCP(sport=1, dport=2, flags="A"), payload, gso_size, **kw)


def gso_error(frame: bytes, hdr: bytes, **kw) -> str:
    with pytest.raises(ValueError, match="segmentation failed") as e:
        segment(frame, hdr, **kw)
    return str(e.value).rsplit(": ", 1)[1]


def test_non_ip_is_unsupported():
    hdr, _ = tcp4()
    frame = bytes(Ether(src=SRC_MAC, dst=DST_MAC, type=0x88B5) / Raw(b"\0" * 100))
    assert gso_error(frame, hdr) == "unsupported"
    # two tags: only one is looked behind
    qinq = bytes(Ether(src=SRC_MAC, dst=DST_MAC) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / IP() / TCP() / Raw(b"\0" * 60))
    assert gso_error(qinq, hdr) == "unsupported"


def test_ipv6_extension_header_is_unsupported():
    for ext in (IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment()):
        pkt = Ether(src=SRC_MAC, dst=DST_MAC) / IPv6(src="fd00::1", dst="fd00::2") / ext / TCP() / Raw(b"y" * 3000)
        frame = bytes(pkt)
        l4_off = len(frame) - len(pkt[TCP])
        assert gso_error(frame, vnet(GSO_TCPV6, 1000, l4_off + 20, l4_off, 16)) == "unsupported"


def test_other_l4_protocols_are_unsupported():
    frame = bytes(Ether(src=SRC_MAC, dst=DST_MAC) / IP(proto=47) / Raw(b"\0" * 3000))
    assert gso_error(frame, vnet(GSO_TCPV4, 1000, 54, 34, 16)) == "unsupported"


def test_legacy_ufo_is_unsupported():
    _, frame = superframe(4, UDP(sport=1, dport=2), b"u" * 3000, 1000)
    assert gso_error(frame, vnet(GSO_UDP, 1000, 42, 34, 6)) == "unsupported"


def test_plain_frame_is_not_segmented():
    _, frame = tcp4()
    assert gso_error(frame, vnet(0, 0, 0, 34, 16)) == "unsupported"


def test_gso_type_must_match_the_protocol():
    _, v4 = tcp4()
    _, v6 = superframe(6, TCP(sport=1, dport=2), b"x" * 3000, 1000)
    _, udp = superframe(4, UDP(sport=1, dport=2), b"x" * 3000, 1000)
    assert gso_error(v4, vnet(GSO_TCPV6, 1000, 54, 34, 16)) == "malformed"
    assert gso_error(v6, vnet(GSO_TCPV4, 1000, 74, 54, 16)) == "malformed"
    assert gso_error(udp, vnet(GSO_TCPV4, 1000, 42, 34, 16)) == "malformed"
    _, tcp6 = superframe(6, TCP(sport=1, dport=2), b"x" * 3000, 1000)
    assert gso_error(tcp6, vnet(GSO_UDP_L4, 1000, 74, 54, 6)) == "malformed"


def test_partial_checksum_must_be_the_l4_one():
    hdr, frame = tcp4()
    assert len(segment(frame, hdr)) == 3
    assert gso_error(frame, vnet(GSO_TCPV4, 1000, 54, 14, 10)) == "malformed"  # the IPv4 header checksum
    assert gso_error(frame, vnet(GSO_TCPV4, 1000, 54, 34, 6)) == "malformed"


def patched(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


def test_inconsistent_headers_are_malformed():
    hdr, frame = tcp4()  # Ethernet 14, IPv4 20 at 14, TCP 20 at 34
    bad = {
        "IP version": patched(frame, 14, b"\x65"),
        "IHL below 5": patched(frame, 14, b"\x44"),
        "IHL past the TCP header": patched(frame, 14, b"\x4f"),
        "IP length past the frame": patched(frame, 16, struct.pack("!H", len(frame) - 13)),
        "IP length short of the frame": patched(frame, 16, struct.pack("!H", len(frame) - 15)),
        "IP length below its header": patched(frame, 16, struct.pack("!H", 19)),
        "a fragment (MF)": patched(frame, 20, b"\x20\x00"),
        "a fragment (offset)": patched(frame, 20, b"\x00\x10"),
        "TCP data offset below 5": patched(frame, 46, b"\x40"),
    }
    for why, f in bad.items():
        assert gso_error(f, hdr) == "malformed", why
    # A header-only IPv4/TCP packet whose data offset claims options it lacks.
    short_hdr, short = tcp4(payload=b"")
    assert gso_error(patched(short, 46, b"\x60"), short_hdr) == "malformed"
    # IPv6 payload length past / short of the frame
    hdr6, frame6 = superframe(6, TCP(sport=1, dport=2), b"x" * 3000, 1000)
    for plen in (3020 + 1, 3020 - 1, 0):
        assert gso_error(patched(frame6, 18, struct.pack("!H", plen)), hdr6) == "malformed", plen


def test_every_truncation_is_malformed():
    for version, l4 in ((4, TCP(sport=1, dport=2, options=[("MSS", 1460)])), (6, UDP(sport=1, dport=2))):
        _, frame = superframe(version, l4, b"z" * 100, 40, vlan=7, ip_options=b"\x01" * 8)
        # A checksum range right behind the Ethernet header keeps parse_vnet's own
        # bounds out of the way of all but the frames too short to hold it.
        hdr = vnet(GSO_TCPV4 if version == 4 else GSO_UDP_L4, 40, 0, 14, 0)
        for n in range(2, 16):
            with pytest.raises(ValueError, match="contradicts the frame"):
                segment(frame[:n], hdr)
        for n in range(16, len(frame)):
            assert gso_error(frame[:n], hdr) == "malformed", (version, n)


def test_too_many_segments_or_too_little_scratch():
    hdr, frame = tcp4(payload=b"x" * 3001)  # 4 segments of 1000, 1000, 1000, 1
    segs = segment(frame, hdr, max_segs=4)
    assert [len(s) - 54 for s in segs] == [1000, 1000, 1000, 1]
    assert gso_error(frame, hdr, max_segs=3) == "too_many_segments"
    assert gso_error(frame, hdr, max_segs=0) == "too_many_segments"
    need = scratch_needed(segs)
    assert segment(frame, hdr, scratch_len=need) == segs
    assert gso_error(frame, hdr, scratch_len=need - 1) == "too_many_segments"


def test_bad_vnet_header_is_rejected_before_segmenting():
    _, frame = tcp4()
    with pytest.raises(ValueError, match="expected 12 bytes"):
        segment(frame, b"\0" * 10)
    with pytest.raises(ValueError, match="contradicts the frame"):
        segment(frame, vnet(GSO_TCPV4, 0, 54, 34, 16))  # gso_size 0
