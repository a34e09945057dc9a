"""Receive coalescing (fastpath/gro.pyx): TCP segments and UDP datagrams of
one flow into super-frames.

The strongest check is a round trip: consecutive segments of a flow, once
coalesced, must cut (fastpath/gso.pyx) back into exactly the same segments.
"""
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from fastpath.gro import coalesce
from fastpath.gso import segment
from rawframes import ones_sum, partial_udp

NO_VNET = bytes(12)


def tcp_segments(n: int, mss: int, last: int, seq0: int = 1000, ip_id: int = 7, flags: str = "A",
                 last_flags: str = "A", sport: int = 40000) -> list[bytes]:
    out = []
    seq = seq0
    for i in range(n):
        size = last if i == n - 1 else mss
        pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src="10.0.0.1", dst="10.0.0.2", id=(ip_id + i) & 0xFFFF, flags="DF")
               / TCP(sport=sport, dport=5001, seq=seq, ack=99, flags=last_flags if i == n - 1 else flags,
                     window=501, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
               / bytes((seq + j) & 0xFF for j in range(size)))
        out.append(bytes(pkt))
        seq += size
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), mss=st.integers(100, 1448), last_part=st.floats(0.01, 1.0))
def test_a_run_coalesces_into_one_superframe_that_segments_back_exactly(n, mss, last_part):
    last = max(1, int(mss * last_part))
    segs = tcp_segments(n, mss, last)
    out = coalesce(segs)
    assert len(out) == 1
    vnet, frame = out[0]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", vnet)
    assert (flags, gso_type, gso_size, csum_start, csum_offset) == (1, 1, mss, 34, 16)
    assert hdr_len == 14 + 20 + 32
    assert frame[hdr_len:] == b"".join(s[hdr_len:] for s in segs)
    assert segment(frame, vnet) == segs
    # The partial checksum, completed as a receiver would, is the TCP checksum.
    ip, tcp = frame[14:34], frame[csum_start:]
    completed = ~ones_sum(tcp) & 0xFFFF
    expected = Ether(frame)
    del expected[TCP].chksum
    assert completed == Ether(bytes(expected))[TCP].chksum
    assert struct.unpack("!H", frame[csum_start + 16:csum_start + 18])[0] == ones_sum(
        ip[12:20] + struct.pack("!HH", 6, len(tcp)))


def test_psh_ends_a_run_and_is_kept():
    segs = tcp_segments(5, 1000, 1000, last_flags="PA")
    (vnet, frame), = coalesce(segs)
    assert Ether(frame)[TCP].flags == "PA"
    assert segment(frame, vnet) == segs
    # after a PSH, the next segment starts a new run
    more = tcp_segments(3, 1000, 1000, seq0=1000 + 5000, ip_id=12)
    out = coalesce(segs + more)
    assert len(out) == 2 and segment(*out[1][::-1]) == more


def test_what_must_not_merge_passes_unchanged_and_in_order():
    a = tcp_segments(3, 1000, 1000)
    other_flow = tcp_segments(1, 1000, 1000, sport=40001)
    gap = tcp_segments(1, 1000, 1000, seq0=1000 + 3000 + 1, ip_id=10)  # a sequence hole
    syn = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"))
    broken = bytearray(tcp_segments(1, 1000, 1000, seq0=1000 + 3000, ip_id=10)[0])
    broken[-1] ^= 0xFF  # bad TCP checksum: never folded in
    short_then_full = tcp_segments(1, 1000, 500, seq0=50_000) + tcp_segments(1, 1000, 1000, seq0=50_500, ip_id=8)
    frames = a + other_flow + [bytes(broken)] + gap + [syn]
    out = coalesce(frames)
    assert [f for _, f in out[1:]] == other_flow + [bytes(broken)] + gap + [syn]
    assert all(v == NO_VNET for v, _ in out[1:])
    assert segment(out[0][1], out[0][0]) == a
    # a short segment ends a run: the next full one cannot follow it
    assert len(coalesce(short_then_full)) == 2


def test_frames_whose_ip_header_checksum_fails_pass_unchanged():
    """Merged, they would leave with a fresh header checksum, carrying a
    corrupted TOS or ID past the receiver that ought to drop them."""
    def corrupt(frame: bytes) -> bytes:
        b = bytearray(frame)
        b[15] ^= 0x04  # the TOS byte, with the header checksum left as it was
        return bytes(b)

    for run in (tcp_segments(3, 1000, 1000), datagrams(3, 200)):
        bad = [corrupt(f) for f in run]
        assert coalesce(bad) == [(NO_VNET, f) for f in bad]
        out = coalesce(run + [corrupt(run[-1])])  # one bad frame after a good run ends it
        assert segment(out[0][1], out[0][0]) == run and out[1:] == [(NO_VNET, corrupt(run[-1]))]


def test_single_segment_is_written_as_it_came():
    seg = tcp_segments(1, 1000, 1000)
    assert coalesce(seg) == [(NO_VNET, seg[0])]


# ---- UDP ---------------------------------------------------------------------------

UDP_L4 = 5


def datagrams(n: int, size: int, last: int | None = None, ip_id: int = 100, df: bool = False, tos: int = 0,
              ttl: int = 64, sport: int = 40000, step: int = 1) -> list[bytes]:
    """n datagrams of one flow as a connected socket sends them (the IP ID
    counts up), the last `last` bytes long."""
    out = []
    for i in range(n):
        payload = bytes((i * 7 + j) & 0xFF for j in range(last if last is not None and i == n - 1 else size))
        pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src="10.0.0.1", dst="10.0.0.2", id=(ip_id + i * step) & 0xFFFF, flags="DF" if df else 0,
                    tos=tos, ttl=ttl)
               / UDP(sport=sport, dport=9000) / payload)
        out.append(bytes(pkt))
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 64), size=st.integers(1, 1400), last_part=st.floats(0.01, 1.0),
       offloaded=st.booleans())
def test_a_udp_run_coalesces_into_one_superframe_that_segments_back_exactly(n, size, last_part, offloaded):
    last = max(1, int(size * last_part))
    grams = datagrams(n, size, last)
    sent = [partial_udp(g) for g in grams] if offloaded else [(NO_VNET, g) for g in grams]
    out = coalesce(sent)
    # An IPv4 datagram holds 64 KB: a longer run goes out as two, or as a
    # run and a datagram left alone, which goes out as it came.
    assert len(out) == (1 if 28 + (n - 1) * size + last <= 0xFFFF else 2)
    i = 0
    for vnet, frame in out:
        if vnet[1] == UDP_L4:
            segs = segment(frame, vnet)
            assert segs == grams[i:i + len(segs)]
            i += len(segs)
        else:
            assert (vnet, frame) == sent[i]
            i += 1
    assert i == n
    vnet, frame = out[0]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", vnet)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, UDP_L4, 42, size, 34, 6)
    assert len(frame) - 14 <= 0xFFFF
    assert struct.unpack("!H", frame[38:40])[0] == len(frame) - 34  # the UDP length covers the whole run


def test_datagrams_with_df_coalesce_whatever_their_ids():
    """An atomic datagram's ID carries nothing (RFC 6864); an unconnected
    socket sends them all with ID 0. Segmentation numbers them afresh."""
    grams = datagrams(5, 100, ip_id=0, df=True, step=0)
    (vnet, frame), = coalesce(grams)
    back = segment(frame, vnet)
    assert [b[42:] for b in back] == [g[42:] for g in grams]
    assert [Ether(b)[IP].id for b in back] == [0, 1, 2, 3, 4]
    assert all(Ether(b)[IP].flags == "DF" and Ether(b)[UDP].chksum == Ether(g)[UDP].chksum
               for b, g in zip(back, grams))


def test_udp_frames_that_must_not_merge_pass_unchanged_and_in_order():
    run = datagrams(3, 200)
    gap = datagrams(1, 200, ip_id=104)               # no DF and the ID skips one
    other_tos = datagrams(1, 200, ip_id=104, tos=0x10)
    no_csum = bytearray(datagrams(1, 200, ip_id=105)[0])
    no_csum[40:42] = b"\0\0"                          # sent without a checksum
    broken = bytearray(datagrams(1, 200, ip_id=106)[0])
    broken[-1] ^= 0xFF                               # a checksum that does not verify
    bigger = datagrams(1, 300, ip_id=107)
    short = bytearray(datagrams(1, 8, ip_id=108)[0])
    short[14] = 0x4F                                 # an IHL of 60 bytes, more than the frame holds
    frames = run + gap + other_tos + [bytes(no_csum), bytes(broken)] + bigger + [bytes(short)]
    out = coalesce(frames)
    assert segment(out[0][1], out[0][0]) == run
    assert [f for _, f in out[1:]] == gap + other_tos + [bytes(no_csum), bytes(broken)] + bigger + [bytes(short)]
    assert all(v == NO_VNET for v, _ in out[1:])


def test_a_short_datagram_ends_a_run_and_udp_can_be_left_alone():
    grams = datagrams(3, 200, last=50) + datagrams(2, 200, ip_id=103, sport=40000)
    out = coalesce(grams)
    assert len(out) == 2
    assert segment(*out[0][::-1]) == grams[:3] and segment(*out[1][::-1]) == grams[3:]
    assert coalesce(grams, udp=False) == [(NO_VNET, g) for g in grams]


def test_a_lone_datagram_keeps_the_header_it_came_with():
    alone = partial_udp(datagrams(1, 64)[0])
    other_flow = datagrams(1, 64, sport=40001)[0]
    assert coalesce([alone, other_flow]) == [alone, (NO_VNET, other_flow)]
