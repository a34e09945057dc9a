"""Receive coalescing (fastpath/gro.pyx): tunnel segments back into super-frames.

The strongest check is a round trip: consecutive segments of a flow, once
coalesced, must cut (fastpath/gso.pyx) back into exactly the same segments.
"""
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from fastpath.gro import coalesce
from fastpath.gso import segment
from rawframes import ones_sum

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


def test_single_segment_is_written_as_it_came():
    seg = tcp_segments(1, 1000, 1000)
    assert coalesce(seg) == [(NO_VNET, seg[0])]
