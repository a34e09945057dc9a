"""Back-pressure on a storming port in the compiled loop, over socketpairs
(no root), in both I/O engines: a port whose floods its storm buckets keep
dropping is not read until its bucket has refilled (fastpath/pause.pxi).

What the pause must not change is checked as exactly as storm control
itself (test_limits_loop.py): every storm frame is flooded or counted, and
what reaches a neighbour stays within rate * T + burst + 1. The storm is
offered by a thread as fast as the socket takes it: a paused port's socket
buffer fills and further frames are refused (EAGAIN) and not counted as
sent, as a TAP's full queue drops the container's frames.
"""
import socket
import threading
import time

import pytest

from loop_rig import LoopRig, rig  # noqa: F401  (fixture)
from rawframes import BROADCAST, eth, mac

pytestmark = pytest.mark.io_modes

RATE = 200  # storm_broadcast: a burst of 20, a pause of 100 ms capped at 50


def wait_for(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def storm_frames(n: int, src: int = 1) -> list[bytes]:
    return [eth(BROADCAST, mac(src), i.to_bytes(4, "big")) for i in range(n)]


class Storm:
    """Broadcasts offered to port `port` from a thread until stop() (or 60 s);
    `sent` counts those the socket took, `refused` those it had no room for."""

    def __init__(self, rig: LoopRig, port: int, src: int = 1) -> None:
        self.sock: socket.socket = rig.ends[port]
        self.src = src
        self.sent = self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.sock.send(eth(BROADCAST, mac(self.src), self.sent.to_bytes(4, "big")))
                self.sent += 1
            except BlockingIOError:
                self.refused += 1
                time.sleep(0)  # let the test's thread run

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.sent


def start_storm(rig: LoopRig, port: int, frames: list[bytes]) -> None:
    """Send frames that fit in the socket's buffer (a burst, not a storm)."""
    for f in frames:
        rig.ends[port].send(f)


def test_a_storming_port_is_paused_and_its_neighbours_pass(rig):
    a, b, c = rig.add_port(1), rig.add_port(1), rig.add_port(1)
    rig.send(c, eth(BROADCAST, mac(3)))  # c's MAC is known: b -> c is known unicast
    rig.dp.set_port_limits(a, storm_broadcast=RATE)
    at_c: list[bytes] = []

    def drain() -> None:
        at_c.extend(rig.recv_all(c))  # as it goes: c's socket buffer holds a few hundred frames

    def arrived(frame: bytes) -> bool:
        drain()
        return frame in at_c

    start = rig.frames_done()
    t0 = time.monotonic()
    storm = Storm(rig, a)
    try:
        wait_for(lambda: rig.dp.port_counters(a)["paused"] >= 3, "the storming port to be paused")
        # While it is paused (or between pauses), a neighbour's unicast passes.
        for i in range(5):
            frame = eth(mac(3), mac(2), b"neighbour" + bytes([i]))
            rig.ends[b].send(frame)
            wait_for(lambda: arrived(frame), "a neighbour's frame during the storm")
    finally:
        sent = storm.stop()
    assert storm.refused > 0  # the port's queue was full: back-pressure reached the sender
    # The storm's frames were all read in the end (the port resumes as its bucket refills).
    wait_for(lambda: drain() or rig.frames_done() >= start + sent + 5, "the storm's frames to be read",
             timeout=60)
    window = time.monotonic() - t0
    # After the storm: read again, its frames arrive (a known unicast, behind every storm frame).
    legit = eth(mac(3), mac(1), b"after the storm")
    rig.ends[a].send(legit)
    wait_for(lambda: arrived(legit), "a frame from the port after the storm")
    got = [f for f in at_c if f[6:12] == mac(1) and f[:6] == BROADCAST]
    drops = rig.dp.port_counters(a)["drops"]["storm_broadcast"]
    assert len(got) + drops == sent, f"{len(got)} flooded + {drops} dropped != {sent} sent"
    assert 0 < len(got) <= RATE * window + RATE // 10 + 1, f"{len(got)} storm frames in {window:.2f} s"
    assert rig.dp.port_counters(c)["tx_errors"] == 0


def test_a_port_never_paused_without_storm_control_or_with_passing_traffic(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.send(b, eth(BROADCAST, mac(2)))
    # Storm drops mixed with forwarded frames (known unicast between them) never make a run: no pause.
    rig.dp.set_port_limits(a, storm_broadcast=1)
    mixed = []
    for i in range(600):
        mixed.append(eth(BROADCAST, mac(1), i.to_bytes(4, "big")) if i % 4 == 0 else eth(mac(2), mac(1), i.to_bytes(4, "big")))
    for i in range(0, len(mixed), 100):
        start = rig.frames_done()
        start_storm(rig, a, mixed[i:i + 100])
        rig.wait_frames(start + 100, timeout=30)
        rig.recv_all(b)
    assert rig.dp.port_counters(a)["drops"]["storm_broadcast"] > 0
    assert rig.dp.port_counters(a)["paused"] == 0
    # No storm control: a broadcast storm floods and pauses nothing.
    rig.dp.set_port_limits(a)
    for _ in range(5):
        start = rig.frames_done()
        start_storm(rig, a, storm_frames(100))
        rig.wait_frames(start + 100, timeout=30)
        rig.recv_all(b)
    assert rig.dp.port_counters(a)["paused"] == 0


def test_storm_limits_set_to_zero_resume_a_paused_port_at_once(rig):
    a, c = rig.add_port(1), rig.add_port(1)
    rig.dp.set_port_limits(a, storm_broadcast=1)  # burst 1: every pause is the longest
    start = rig.frames_done()
    storm = Storm(rig, a)
    try:
        wait_for(lambda: rig.dp.port_paused(a), "the storming port to be paused")
        rig.dp.set_port_limits(a, storm_broadcast=0)
        assert not rig.dp.port_paused(a)  # under the lock, before set_port_limits returned
        pauses = rig.dp.port_counters(a)["paused"]
        # Read on: well past what the limit let through, with no pause since.
        wait_for(lambda: rig.dp.port_counters(a)["flooded"] > 2000, "the storm to flood once its limit was lifted")
    finally:
        sent = storm.stop()
    rig.wait_frames(start + sent, timeout=60)
    assert rig.dp.port_counters(a)["paused"] == pauses


def test_a_paused_port_removed_and_its_slot_reused_reads_again(rig):
    a, c = rig.add_port(1), rig.add_port(1)
    rig.dp.set_port_limits(a, storm_broadcast=1)
    storm = Storm(rig, a)
    try:
        wait_for(lambda: rig.dp.port_paused(a), "the storming port to be paused")
    finally:
        storm.stop()
    rig.remove_port(a)
    assert not rig.dp.port_paused(a)
    rig.recv_all(c)
    again = rig.add_port(1)
    assert again == a  # the same slot, a new port: read from the start
    frame = eth(BROADCAST, mac(9), b"new port")
    rig.send(again, frame)
    assert rig.recv_all(c) == [frame]
    assert rig.dp.port_counters(again)["paused"] == 0


def test_the_loop_stops_cleanly_with_a_port_paused(io_mode):
    r = LoopRig(io_mode=io_mode)
    try:
        a = r.add_port(1)
        r.add_port(1)
        r.dp.set_port_limits(a, storm_broadcast=1)
        storm = Storm(r, a)
        try:
            wait_for(lambda: r.dp.port_paused(a), "the storming port to be paused")
        finally:
            storm.stop()
    finally:
        r.close()
    assert not r._thread.is_alive(), "the loop did not stop"
