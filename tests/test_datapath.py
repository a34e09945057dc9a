"""The compiled forwarding loop over socketpairs (no root needed)."""
import threading

import pytest

from loop_rig import LoopRig
from rawframes import BROADCAST, eth, mac
from tests.harness.wait import wait_until

MCAST = b"\x01\x00\x5e\x00\x00\x01"

pytestmark = pytest.mark.io_modes


@pytest.fixture(params=[(0, 0), (100, 0), (100, 2000)], ids=["sleeping", "busy-polling", "busy-polling-bulk-hold"])
def rig(request, io_mode):
    """Every loop test runs with the loop sleeping between frames, with it
    busy-polling after traffic, and busy-polling but for bulk traffic, in
    each I/O mode: all must forward the same."""
    busy, hold = request.param
    r = LoopRig(busy_poll_us=busy, io_mode=io_mode, busy_poll_bulk_hold_us=hold)
    yield r
    r.close()


def test_fastpath_is_compiled():
    import fastpath.datapath
    import fastpath.mactable

    assert fastpath.datapath.__file__.endswith(".so")
    assert fastpath.mactable.__file__.endswith(".so")


def test_unknown_unicast_floods_within_network_only(rig):
    a, b, c = (rig.add_port(1) for _ in range(3))
    other = rig.add_port(2)
    f = eth(mac(99), mac(1), b"hello")
    rig.send(a, f)
    got = rig.drain()
    assert got == {a: [], b: [f], c: [f], other: []}
    assert rig.dp.port_counters(a)["flooded"] == 1


def test_learned_unicast_goes_to_one_port(rig):
    a, b, c = (rig.add_port(1) for _ in range(3))
    rig.send(b, eth(BROADCAST, mac(2)))
    rig.drain()
    f = eth(mac(2), mac(1), b"to b")
    rig.send(a, f)
    assert rig.drain() == {a: [], b: [f], c: []}
    ca, cb = rig.dp.port_counters(a), rig.dp.port_counters(b)
    assert (ca["rx_packets"], ca["rx_bytes"], ca["flooded"]) == (1, len(f), 0)
    assert (cb["tx_packets"], cb["tx_bytes"]) == (2 - 1, len(f))


def test_broadcast_and_multicast_flood(rig):
    ports = [rig.add_port(1) for _ in range(4)]
    for dst in (BROADCAST, MCAST):
        f = eth(dst, mac(1))
        rig.send(ports[0], f)
        got = rig.drain()
        assert got[ports[0]] == [] and all(got[p] == [f] for p in ports[1:])


def test_frame_to_a_mac_on_the_ingress_port_is_dropped(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.send(a, eth(BROADCAST, mac(1)))
    rig.send(a, eth(BROADCAST, mac(2)))
    rig.drain()
    rig.send(a, eth(mac(2), mac(1)))
    assert rig.drain() == {a: [], b: []}
    assert rig.dp.port_counters(a)["drops"]["same_port"] == 1


def test_mac_move(rig):
    a, b, c = (rig.add_port(1) for _ in range(3))
    rig.send(a, eth(BROADCAST, mac(7)))
    rig.send(b, eth(BROADCAST, mac(7)))  # mac 7 moved from a to b
    rig.drain()
    assert rig.dp.fdb_counters()["moved"] == 1
    f = eth(mac(7), mac(1))
    rig.send(c, f)
    assert rig.drain()[b] == [f]


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\x02\x00\x00", "runt"),
        (b"", "runt"),
        (eth(mac(2), mac(1), b"x" * 1501), "too_big"),
        (eth(mac(2), BROADCAST), "src_multicast"),
        (eth(mac(2), mac(1), vlan=10), "vlan_tagged"),
    ],
)
def test_bad_frames_are_dropped_counted_and_not_learned(rig, frame, reason):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.send(a, frame)
    assert rig.drain() == {a: [], b: []}
    c = rig.dp.port_counters(a)
    assert c["drops"][reason] == 1 and c["rx_packets"] == 1
    assert sum(c["drops"].values()) == 1
    assert rig.dp.fdb_entries() == []
    good = eth(BROADCAST, mac(1))
    rig.send(a, good)  # and the port keeps forwarding
    assert rig.drain()[b] == [good]


def test_per_port_mtu(rig):
    small, big = rig.add_port(1, mtu=576), rig.add_port(1, mtu=9000)
    f = eth(BROADCAST, mac(1), b"x" * 1000)
    rig.send(small, f)
    assert rig.recv_all(big) == []
    assert rig.dp.port_counters(small)["drops"]["too_big"] == 1
    fits = eth(BROADCAST, mac(2), b"x" * 576)
    rig.send(big, fits)
    assert rig.recv_all(small) == [fits]


def test_a_frame_over_the_output_port_mtu_is_dropped_and_counted_there(rig):
    big, small, other_big = rig.add_port(1, mtu=9000), rig.add_port(1, mtu=1500), rig.add_port(1, mtu=9000)
    jumbo = eth(BROADCAST, mac(1), b"j" * 4000)
    rig.send(big, jumbo)
    # A flood still reaches the ports the frame fits.
    assert rig.drain() == {big: [], small: [], other_big: [jumbo]}
    # Unicast to a MAC learned on the small port, at the MTU and one byte past it.
    rig.send(small, eth(BROADCAST, mac(2), b"learn"))
    rig.drain()
    at_mtu, past_mtu = eth(mac(2), mac(1), b"a" * 1500), eth(mac(2), mac(1), b"b" * 1501)
    rig.send(big, at_mtu)
    rig.send(big, past_mtu)
    assert rig.drain() == {big: [], small: [at_mtu], other_big: []}
    # Counted on the port the frame was bound for, not on the one it came from.
    assert {r: n for r, n in rig.dp.port_counters(small)["drops"].items() if n} == {"mtu_exceeded": 2}
    assert not any(rig.dp.port_counters(big)["drops"].values())
    assert (rig.dp.port_counters(small)["tx_packets"], rig.dp.port_counters(other_big)["tx_packets"]) == (1, 2)


def test_jumbo_and_64k_frames_pass_intact(rig):
    a, b = rig.add_port(1, mtu=65000), rig.add_port(1, mtu=65000)
    f = eth(BROADCAST, mac(1), bytes(range(256)) * 250)
    rig.send(a, f)
    assert rig.recv_all(b) == [f]


def test_static_entry_pins_the_output(rig):
    a, b, c = (rig.add_port(1) for _ in range(3))
    rig.dp.fdb_set_static(1, mac(5), c)
    rig.send(b, eth(BROADCAST, mac(5)))  # learning must not move it to b
    rig.drain()
    f = eth(mac(5), mac(1))
    rig.send(a, f)
    assert rig.drain() == {a: [], b: [], c: [f]}
    assert [(e[1], e[2], e[3]) for e in rig.dp.fdb_entries(1) if e[3]] == [("02:00:00:00:00:05", c, True)]


def test_table_full_evicts_and_still_forwards(rig):
    small = LoopRig(mac_table_size=2, io_mode=rig.dp.io_mode)
    try:
        a, b = small.add_port(1), small.add_port(1)
        for i in range(1, 5):
            small.send(a, eth(BROADCAST, mac(i)))
        assert small.dp.fdb_counters()["entries"] == 2
        assert small.dp.fdb_counters()["evicted"] == 2
        assert sorted(e[1] for e in small.dp.fdb_entries()) == [mac(3).hex(":"), mac(4).hex(":")]
        assert len(small.recv_all(b)) == 4
    finally:
        small.close()


def test_remove_port_flushes_its_entries_and_stops_output(rig):
    a, b, c = (rig.add_port(1) for _ in range(3))
    rig.send(c, eth(BROADCAST, mac(3)))
    rig.drain()
    rig.remove_port(c)
    assert all(e[2] != c for e in rig.dp.fdb_entries())
    rig.send(a, eth(mac(3), mac(1)))  # now unknown: floods to the remaining ports
    assert rig.drain() == {a: [], b: [eth(mac(3), mac(1))]}


def test_slot_reuse_does_not_inherit_counters_or_entries(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    rig.send(b, eth(BROADCAST, mac(2)))
    rig.remove_port(b)
    b2 = rig.add_port(1)
    assert b2 == b
    assert rig.dp.port_counters(b2)["rx_packets"] == 0
    assert all(e[2] != b2 for e in rig.dp.fdb_entries())


def test_peer_close_marks_port_dead_and_notifies(rig):
    import select

    a, b = rig.add_port(1), rig.add_port(1)
    rig.ends[b].close()
    assert select.select([rig.dp.notify_fd], [], [], 5)[0]
    assert rig.dp.dead_ports() == [b]
    assert rig.dp.port_state(b) == "dead"
    f = eth(BROADCAST, mac(1))
    rig.send(a, f)  # the rest keep forwarding
    assert rig.dp.port_counters(a)["flooded"] == 1


def test_fdb_flush_and_delete(rig):
    a, b = rig.add_port(1), rig.add_port(2)
    rig.send(a, eth(BROADCAST, mac(1)))
    rig.send(b, eth(BROADCAST, mac(2)))
    assert rig.dp.fdb_flush(network=2) == 1
    assert [e[1] for e in rig.dp.fdb_entries()] == ["02:00:00:00:00:01"]
    assert rig.dp.fdb_delete(1, mac(1)) and not rig.dp.fdb_delete(1, mac(1))


def test_add_and_remove_ports_while_forwarding_loses_nothing(rig):
    """Two ports exchange numbered frames while other ports come and go."""
    a, b = rig.add_port(1), rig.add_port(1)
    rig.send(b, eth(BROADCAST, mac(2)))
    rig.send(a, eth(BROADCAST, mac(1)))
    rig.drain()
    stop = threading.Event()
    cycles, errors = [], []

    def churn():
        try:
            while not stop.is_set():
                idx = rig.add_port(1 + (len(rig.ends) % 2))
                rig.remove_port(idx)
                cycles.append(idx)
        except Exception as e:  # a dead churn thread would leave nothing churned
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    received = []
    try:
        wait_until(lambda: cycles or errors, message="the churn thread never added and removed a port")
        for i in range(2000):
            rig.ends[a].send(eth(mac(2), mac(1), i.to_bytes(4, "big")))
            if i % 50 == 49:
                rig.wait_frames(2 + i + 1)  # keep the socket buffers shallow
                received += rig.recv_all(b)
    finally:
        stop.set()
        t.join()
    rig.wait_frames(2 + 2000)
    received += rig.recv_all(b)
    assert errors == [] and len(cycles) > 0
    assert [int.from_bytes(f[14:18], "big") for f in received] == list(range(2000))


def test_batch_histogram_and_wakeups_count(rig):
    a, b = rig.add_port(1), rig.add_port(1)
    for i in range(20):
        rig.ends[a].send(eth(BROADCAST, mac(1)))
    rig.wait_frames(20)
    s = rig.dp.loop_stats()
    assert s["frames"] == 20 and s["wakeups"] >= 1
    assert sum(n for _, n in s["batch_histogram"]) == s["batches"] >= 1


def test_invalid_arguments_are_refused(rig):
    import socket

    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(ValueError):
            rig.dp.add_port(s1.fileno(), 0)
        with pytest.raises(ValueError):
            rig.dp.add_port(s1.fileno(), 1, mtu=10)
        with pytest.raises(IndexError):
            rig.dp.remove_port(10**6)
        with pytest.raises(ValueError):
            rig.dp.fdb_set_static(1, BROADCAST, 0)
    finally:
        s1.close()
        s2.close()
