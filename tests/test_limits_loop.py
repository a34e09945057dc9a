"""Port limits in the compiled loop, over socketpairs (no root): storm control
bounds what a port floods, the policer charges a TSO super-frame for what its
segments carry on the wire, and a limit changed at run time loses nothing of
another port's traffic.

Bounds are checked against the time the test measured around the sending:
the loop's clock cannot have run longer than that, so a bucket of `rate`
frames/s with a burst of `burst` frames lets at most rate * T + burst + 1
through (the last: one frame may overdraw the bucket, limits.pxi).
"""
import struct
import time

import pytest

from loop_rig import LoopRig, rig  # noqa: F401  (fixture)
from rawframes import BROADCAST, eth, mac

pytestmark = pytest.mark.io_modes

MCAST = b"\x01\x00\x5e\x00\x00\x07"
GSO_TCPV4 = 1


def storm(rig: LoopRig, src: int, frames: list[bytes]) -> float:
    """Send frames into port src as fast as the socket takes them; the seconds it took, until the loop had them all."""
    start = rig.frames_done()
    t0 = time.monotonic()
    for f in frames:
        rig.ends[src].send(f)
    rig.wait_frames(start + len(frames), timeout=30)
    return time.monotonic() - t0


@pytest.mark.parametrize("kind,dst", [("storm_broadcast", BROADCAST), ("storm_multicast", MCAST),
                                      ("storm_unknown_unicast", mac(99))])
def test_storm_control_bounds_the_flood_and_counts_the_rest(rig, kind, dst):
    a, b, c = rig.add_port(1), rig.add_port(1), rig.add_port(1, buffer_bytes=64 << 20)
    rate = 200
    rig.dp.set_port_limits(a, **{kind: rate})
    t0 = time.monotonic()
    sent = 3000
    took = storm(rig, a, [eth(dst, mac(1), i.to_bytes(4, "big")) for i in range(sent)])
    window = time.monotonic() - t0
    got = len(rig.recv_all(c))
    drops = rig.dp.port_counters(a)["drops"][kind]
    assert got + drops == sent  # every frame flooded or counted
    assert drops > 0
    assert got <= rate * window + rate // 10 + 1, f"{got} frames in {window:.3f} s ({took:.3f} s sending)"
    # The other port's frames pass meanwhile; storm control is per port.
    rig.send(b, eth(BROADCAST, mac(2), b"neighbour"))
    assert rig.recv_all(c) == [eth(BROADCAST, mac(2), b"neighbour")]
    assert rig.dp.port_counters(b)["drops"][kind] == 0


def test_known_unicast_is_never_storm_limited(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.send(b, eth(BROADCAST, mac(2)))  # b's MAC is known from here on
    rig.dp.set_port_limits(a, storm_broadcast=1, storm_multicast=1, storm_unknown_unicast=1)
    storm(rig, a, [eth(mac(2), mac(1), i.to_bytes(4, "big")) for i in range(500)])
    assert len(rig.recv_all(b)) == 500
    assert sum(rig.dp.port_counters(a)["drops"].values()) == 0


def superframe(segments: int, mss: int = 1448) -> tuple[bytes, bytes]:
    """A TCP/IPv4 TSO super-frame of `segments` full segments: (virtio-net header, frame)."""
    payload = bytes(segments * mss)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0, 64, 6, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 1, 0, 5 << 4, 0x10, 65535, 0, 0)
    hdr = struct.pack("<BBHHHHH", 1, GSO_TCPV4, 54, mss, 34, 16, 0)
    return hdr, eth(mac(2), mac(1), ethertype=0x0800) + ip + tcp + payload


def test_a_superframe_is_charged_for_its_segments_on_the_wire(rig):
    a, b = rig.add_port(1, vnet_hdr=True), rig.add_port(1, vnet_hdr=True)
    burst = 1 << 20
    # A rate of 1 byte/s and 1 frame/s: nothing refills measurably while the test runs.
    rig.dp.set_port_limits(a, rate_bytes=1, burst_bytes=burst, rate_fps=1)
    hdr, frame = superframe(40)
    t0 = time.monotonic()
    rig.send(a, hdr + frame)
    left = rig.dp.port_buckets(a)
    refill = time.monotonic() - t0 + 0.002  # units the buckets can have regained meanwhile (1 a second), and a tick
    on_wire = len(frame) + 39 * 54  # each of the 40 segments carries the 54 bytes of headers
    assert burst - on_wire <= left["rx_bytes"] <= burst - on_wire + refill
    assert -39 <= left["rx_frames"] <= -39 + refill  # a burst of 1 frame (a tenth of 1/s, at least 1), less 40 segments
    # Over the limit now: the next one is dropped and counted, in the direction it was going.
    rig.send(a, hdr + frame)
    assert rig.dp.port_counters(a)["drops"]["rate_limited_rx"] == 1
    assert len(rig.recv_all(b)) == 1


def test_egress_policer_drops_frames_to_the_port(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.dp.set_port_limits(b, rate_fps=10, rx=False)  # b may get 10 frames/s, burst 1
    t0 = time.monotonic()
    storm(rig, a, [eth(BROADCAST, mac(1), i.to_bytes(4, "big")) for i in range(300)])
    window = time.monotonic() - t0
    got = len(rig.recv_all(b))
    assert got + rig.dp.port_counters(b)["drops"]["rate_limited_tx"] == 300
    assert 1 <= got <= 10 * window + 1 + 1
    assert rig.dp.port_counters(a)["drops"]["rate_limited_rx"] == 0


def test_limits_changed_at_run_time_lose_nothing_of_another_ports_traffic(rig):
    a, b, c = rig.add_port(1), rig.add_port(1), rig.add_port(1)
    rig.send(c, eth(BROADCAST, mac(3)))
    frames = [eth(mac(3), mac(2), i.to_bytes(4, "big")) for i in range(2000)]
    start = rig.frames_done()
    for i, f in enumerate(frames):
        rig.ends[b].send(f)
        if i % 100 == 0:
            rig.dp.set_port_limits(a, max_macs=i % 7, storm_broadcast=i, rate_bytes=1000 + i, burst_bytes=2000,
                                   rate_fps=5 + i)
    rig.wait_frames(start + len(frames), timeout=30)
    assert rig.recv_all(c) == frames


def test_max_macs_refuses_learning_but_forwards(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.dp.set_port_limits(a, max_macs=4)
    storm(rig, a, [eth(BROADCAST, mac(100 + i)) for i in range(50)])
    assert len(rig.recv_all(b)) == 50
    assert rig.dp.port_macs(a) == (4, 4)
    assert rig.dp.port_counters(a)["mac_limited"] == 46
    assert rig.dp.fdb_counters()["limited"] == 46 and rig.dp.fdb_counters()["evicted"] == 0


def test_bad_limits_are_refused_and_change_nothing(rig):
    a = rig.add_port(1)
    rig.dp.set_port_limits(a, storm_broadcast=5)
    for kw in ({"storm_broadcast": -1}, {"rate_bytes": 100}, {"rate_fps": 1 << 41}):
        with pytest.raises((ValueError, OverflowError)):
            rig.dp.set_port_limits(a, **kw)
    assert set(rig.dp.port_buckets(a)) == {"storm_broadcast"}
    with pytest.raises(LookupError):
        rig.dp.set_port_limits(63, storm_broadcast=5)


def test_a_gro_run_to_a_policed_port_is_charged_as_the_frames_it_was_made_of(rig):
    from test_gro import tcp_segments
    segs = tcp_segments(10, 1000, 1000)
    b = rig.add_port(1, vnet_hdr=True)
    burst = 1 << 20
    rig.dp.set_port_limits(b, rate_bytes=1, burst_bytes=burst, rx=False)
    rig.dp.fdb_set_static(1, segs[0][:6], b)
    # Queued before the port attaches: the loop reads them as one batch, and GRO makes one run of them.
    a = rig.add_port(1, waiting=tuple(segs))
    rig.wait_frames(len(segs), timeout=30)
    got = rig.recv_all(b)
    assert len(got) == 1 and rig.dp.loop_stats()["offload"]["gro_superframes"] == 1
    left = rig.dp.port_buckets(b)["tx_bytes"]
    # Charged for every frame's bytes as it came, headers included (a few bytes may have refilled meanwhile).
    assert burst - sum(len(s) for s in segs) <= left <= burst - sum(len(s) for s in segs) + 5
    assert rig.dp.port_counters(a)["drops"]["rate_limited_rx"] == 0
