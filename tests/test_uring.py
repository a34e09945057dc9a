"""What only the io_uring I/O mode can get wrong, over socketpairs (no root
needed): the provided-buffer ring running dry, ring writes that fail, and a
port's file still held by the ring after the port is gone. Everything the two
modes share runs in both (test_datapath and the traffic suites)."""
import socket
import threading

import pytest

from fastpath import Datapath, uring_unavailable
from loop_rig import LoopRig
from rawframes import eth, mac
from tests.harness.wait import wait_until

WHY = uring_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"io_uring datapath unavailable: {WHY}")


def numbered(k: int, dst: bytes = mac(2)) -> bytes:
    return eth(dst, mac(1), k.to_bytes(4, "big") + bytes(60))


def test_the_mode_is_reported():
    dp = Datapath(io_mode="uring")
    assert dp.io_mode == "uring"
    stats = dp.loop_stats()
    assert stats["io_mode"] == "uring"
    assert set(stats["uring"]) == {"submits", "read_rearms", "buffer_ring_empty", "stale_completions",
                                   "write_errors", "batch_waits"}
    assert Datapath().loop_stats()["io_mode"] == "poll"


@pytest.mark.parametrize("bad", ["epoll", "", "auto"])
def test_an_unknown_mode_is_refused(bad):
    with pytest.raises(ValueError, match="io_mode"):
        Datapath(io_mode=bad)


@pytest.mark.parametrize("count", [0, 3, 1000, 65536])
def test_a_buffer_count_that_is_not_a_power_of_two_in_range_is_refused(count):
    with pytest.raises(ValueError, match="ring_buffers"):
        Datapath(io_mode="uring", ring_buffers=count)


def test_a_dry_buffer_ring_loses_no_frame_and_keeps_their_order():
    """With two buffers, a port that has 1000 frames waiting when it is
    attached empties the ring at once; its read must be re-armed each time
    the buffers come back, until every frame is through, in order."""
    rig = LoopRig(io_mode="uring", ring_buffers=2)
    try:
        b = rig.add_port(1)
        a = rig.add_port(1, waiting=tuple(numbered(k) for k in range(1000)))
        rig.wait_frames(1000)
        got = rig.recv_all(b)
        assert [int.from_bytes(f[14:18], "big") for f in got] == list(range(1000))
        uring = rig.dp.loop_stats()["uring"]
        assert uring["buffer_ring_empty"] > 0
        assert uring["read_rearms"] >= uring["buffer_ring_empty"]
        assert rig.dp.port_counters(a)["rx_packets"] == 1000
        assert rig.dp.port_counters(b)["tx_packets"] == 1000
    finally:
        rig.close()


@pytest.mark.parametrize("wait_us", [0, 1000])
def test_a_burst_makes_the_loop_wait_for_batches_and_a_lone_frame_still_goes_through(wait_us):
    """After a round of many completions the loop waits for a batch, for at
    most batch_wait_us: the burst arrives whole and in order, and a lone
    frame after it is not held back for good. With 0 it never waits."""
    rig = LoopRig(io_mode="uring", batch_wait_us=wait_us)
    try:
        b = rig.add_port(1)
        a = rig.add_port(1, waiting=tuple(numbered(k) for k in range(200)))
        rig.wait_frames(200)
        assert [int.from_bytes(f[14:18], "big") for f in rig.recv_all(b)] == list(range(200))
        waits = rig.dp.loop_stats()["uring"]["batch_waits"]
        assert waits > 0 if wait_us else waits == 0
        rig.send(a, numbered(200))
        assert [int.from_bytes(f[14:18], "big") for f in rig.recv_all(b)] == [200]
    finally:
        rig.close()


def test_a_batch_wait_beyond_a_second_is_refused():
    with pytest.raises(ValueError, match="batch_wait_us"):
        Datapath(io_mode="uring", batch_wait_us=1_000_000)


@pytest.mark.parametrize("after", [0, 50, 500])
def test_a_stop_mid_stream_writes_every_frame_it_read(after):
    """The round that sees the stop has read frames and queued their writes:
    they go out and are counted before the ring goes. What the loop never read
    stays in the sender's queue, so sent = delivered + left unread."""
    rig = LoopRig(io_mode="uring")
    try:
        a, b = rig.add_port(1), rig.add_port(1)
        rig.send(b, eth(mac(1), mac(2)))
        rig.drain()
        sent = 3000
        for k in range(sent):
            rig.ends[a].send(numbered(k))
        rig.wait_frames(1 + after)
        rig.dp.stop()
        rig._thread.join(timeout=10)
        assert not rig._thread.is_alive()
        unread = 0
        rig._switch_ends[a].setblocking(False)
        try:
            while rig._switch_ends[a].recv(70000):
                unread += 1
        except BlockingIOError:
            pass
        delivered = rig.recv_all(b)
        assert [int.from_bytes(f[14:18], "big") for f in delivered] == list(range(sent - unread))
        assert rig.dp.port_counters(b)["tx_packets"] == len(delivered)
    finally:
        rig.close()


def test_failed_ring_writes_are_counted_and_the_rest_still_forward():
    """A receiver that never reads fills its socket: writes to it fail
    (RWF_NOWAIT: the loop never waits for one port) and are counted, while
    frames to another port keep flowing."""
    rig = LoopRig(io_mode="uring")
    try:
        a = rig.add_port(1)
        ok = rig.add_port(1)
        stuck = rig.add_port(1, buffer_bytes=4096)
        rig.send(ok, eth(mac(1), mac(2)))
        rig.send(stuck, eth(mac(1), mac(3)))
        rig.drain()
        before = rig.dp.port_counters(stuck)["tx_packets"]
        for k in range(300):
            rig.ends[a].send(numbered(k, dst=mac(3)))
            if k % 50 == 49:
                rig.wait_frames(2 + k + 1)
        rig.wait_frames(302)
        c = rig.dp.port_counters(stuck)
        assert c["tx_errors"] > 0
        assert c["tx_packets"] - before + c["tx_errors"] == 300
        assert rig.dp.loop_stats()["uring"]["write_errors"] == c["tx_errors"]
        rig.send(a, numbered(7, dst=mac(2)))
        assert rig.recv_all(ok) == [numbered(7, dst=mac(2))]
    finally:
        rig.close()


def test_a_removed_port_file_is_let_go():
    """Once remove_port returns, the ring holds no reference to the port's
    file: closing the switch's end is seen at the other end at once."""
    rig = LoopRig(io_mode="uring")
    try:
        a = rig.add_port(1)
        b = rig.add_port(1)
        rig.send(a, numbered(1))
        assert len(rig.recv_all(b)) == 1
        ours = rig.ends.pop(b)
        rig.dp.remove_port(b)
        rig._switch_ends.pop(b).close()
        ours.settimeout(2.0)
        try:
            assert ours.recv(100) == b""  # end of file: nobody else has the switch's end open
        finally:
            ours.close()
        # The loop goes on with the remaining port, and the freed slot is reused.
        c = rig.add_port(1)
        assert c == b
        rig.send(a, numbered(2, dst=mac(9)))
        assert rig.recv_all(c) == [numbered(2, dst=mac(9))]
    finally:
        rig.close()


def test_ports_added_and_removed_while_a_stream_flows_keep_it_in_order():
    rig = LoopRig(io_mode="uring", max_ports=32)
    try:
        b = rig.add_port(1)
        a = rig.add_port(1)
        rig.send(b, eth(mac(1), mac(2)))
        rig.drain()
        extra: list[int] = []
        received: list[bytes] = []
        for k in range(3000):
            rig.ends[a].send(numbered(k))
            if k % 100 == 0:
                if len(extra) < 8:
                    extra.append(rig.add_port(1))
                else:
                    rig.remove_port(extra.pop(0))
                received += rig.recv_all(b)
        rig.wait_frames(3001)
        received += rig.recv_all(b)
        assert [int.from_bytes(f[14:18], "big") for f in received] == list(range(3000))
    finally:
        rig.close()


def test_a_capture_toggled_mid_stream_copies_only_frames_that_were_written():
    """Captured output is copied when a write is retired; a capture switched
    on after the write was queued must not copy its buffer, which may
    already hold the next frame. Two ring buffers make reuse immediate."""
    rig = LoopRig(io_mode="uring", ring_buffers=2)
    cap_ours, cap_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    records: list[bytes] = []
    done = threading.Event()

    def read_capture() -> None:
        cap_ours.settimeout(0.2)
        while not done.is_set():
            try:
                records.append(cap_ours.recv(70000))
            except socket.timeout:
                pass

    reader = threading.Thread(target=read_capture)
    reader.start()
    try:
        a, b = rig.add_port(1), rig.add_port(1)
        rig.send(b, eth(mac(1), mac(2)))
        rig.drain()
        sent, on = 0, False
        for _ in range(40):
            for _ in range(50):
                rig.ends[a].send(numbered(sent))
                sent += 1
            on = not on
            rig.dp.set_capture(b, cap_theirs.fileno() if on else -1, False, True)
            rig.wait_frames(1 + sent)
            rig.recv_all(b)
        # A last round wholly inside a capture: these 50 must all be copied.
        rig.dp.set_capture(b, cap_theirs.fileno(), False, True)
        last = list(range(sent, sent + 50))
        for k in last:
            rig.ends[a].send(numbered(k))
        sent += 50
        rig.wait_frames(1 + sent)

        def last_round_written() -> bool:
            rig.recv_all(b)  # keep b's socket from filling up
            return rig.dp.port_counters(b)["tx_packets"] >= sent

        wait_until(last_round_written, message="the last round was never written")
        rig.dp.set_capture(b, -1, False, False)
    finally:
        done.set()
        reader.join()
        rig.close()
        cap_theirs.close()
    cap_ours.setblocking(False)
    try:
        while True:  # what the reader left when it stopped
            records.append(cap_ours.recv(70000))
    except BlockingIOError:
        pass
    finally:
        cap_ours.close()
    frames = [r[16:] for r in records]  # a 16-byte record header, then the frame
    seqs = [int.from_bytes(f[14:18], "big") for f in frames]
    assert seqs[-50:] == last
    assert all(f == numbered(k) for f, k in zip(frames, seqs))
    assert seqs == sorted(set(seqs)), "a frame was captured twice or out of order"
