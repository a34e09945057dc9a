"""The C MAC table through its Python face, with an injected clock."""
import pytest

from fastpath import MacTable

A = "02:00:00:00:00:0a"
B = "02:00:00:00:00:0b"


def test_learn_then_lookup():
    t = MacTable(16, aging_s=300)
    assert t.learn(1, A, 3, now_ms=0) == "learned"
    assert t.lookup(1, A, now_ms=10) == 3
    assert t.lookup(1, B, now_ms=10) is None
    assert t.learn(1, A, 3, now_ms=20) == "hit"
    assert t.counters()["learned"] == 1 and len(t) == 1


def test_networks_are_separate_keys():
    t = MacTable(16, aging_s=300)
    t.learn(1, A, 3, 0)
    assert t.lookup(2, A, 0) is None
    t.learn(2, A, 5, 0)
    assert (t.lookup(1, A, 0), t.lookup(2, A, 0)) == (3, 5)


def test_move_to_another_port_is_counted():
    t = MacTable(16, aging_s=300)
    t.learn(1, A, 3, 0)
    assert t.learn(1, A, 4, 5) == "moved"
    assert t.lookup(1, A, 6) == 4
    assert t.counters()["moved"] == 1


def test_aging_on_lookup_with_injected_clock():
    t = MacTable(16, aging_s=2)
    t.learn(1, A, 3, now_ms=1000)
    assert t.lookup(1, A, now_ms=2999) == 3
    assert t.lookup(1, A, now_ms=3000) is None
    assert t.counters()["aged"] == 1 and len(t) == 0


def test_learning_refreshes_age():
    t = MacTable(16, aging_s=2)
    t.learn(1, A, 3, now_ms=0)
    t.learn(1, A, 3, now_ms=1500)
    assert t.lookup(1, A, now_ms=3000) == 3


def test_expired_entry_is_relearned_not_moved():
    t = MacTable(16, aging_s=1)
    t.learn(1, A, 3, 0)
    assert t.learn(1, A, 4, 5000) == "learned"
    assert t.counters()["moved"] == 0 and t.counters()["aged"] == 1


def test_sweep_removes_expired_entries_within_budget():
    t = MacTable(64, aging_s=1)
    for i in range(40):
        t.learn(1, f"02:00:00:00:01:{i:02x}", 1, 0)
    t.learn(1, A, 1, 900)  # still young at 1500
    removed = [t.sweep(1500, 1) for _ in range(t.slots + 40)]
    assert max(removed) == 1  # a call never does more than its budget
    assert sum(removed) == 40
    assert [e[1] for e in t.entries()] == [A]


def test_capacity_limit_refuses_and_counts():
    t = MacTable(4, aging_s=300)
    for i in range(4):
        assert t.learn(1, f"02:00:00:00:00:{i:02x}", 1, 0) == "learned"
    assert t.learn(1, A, 1, 0) == "refused"
    assert t.learn(1, B, 1, 0) == "refused"
    assert len(t) == 4 and t.counters()["refused"] == 2
    assert t.lookup(1, A, 0) is None
    # An existing entry still refreshes and moves when full.
    assert t.learn(1, "02:00:00:00:00:00", 2, 1) == "moved"


def test_memory_is_fixed_at_start():
    t = MacTable(1000, aging_s=300)
    slots = t.slots
    for i in range(5000):
        t.learn(1 + i % 3, f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", 1, 0)
    assert t.slots == slots and len(t) == 1000


def test_static_entries_never_age_and_never_move():
    t = MacTable(16, aging_s=1)
    t.add_static(1, A, 7)
    assert t.learn(1, A, 3, 10_000) == "static_kept"
    assert t.lookup(1, A, 10_000_000) == 7
    assert t.sweep(10_000_000, t.slots) == 0
    assert t.counters()["moved"] == 0


def test_static_overrides_learned_and_flush_keeps_static():
    t = MacTable(16, aging_s=300)
    t.learn(1, A, 3, 0)
    t.learn(1, B, 3, 0)
    t.add_static(1, A, 9)
    assert t.lookup(1, A, 0) == 9
    assert t.flush() == 1  # only B, the learned one
    assert t.lookup(1, A, 0) == 9
    assert t.flush(with_static=True) == 1


def test_flush_by_network_and_output():
    t = MacTable(256, aging_s=300)
    for i in range(100):
        t.learn(1 + i % 2, f"02:00:00:00:00:{i:02x}", i % 5, 0)
    assert t.flush(network=1, out=0) == 10
    assert t.flush(network=2) == 50
    assert len(t) == 40
    assert all(net == 1 and out != 0 for net, _, out, _, _ in t.entries())


def test_delete_keeps_probe_chains_intact():
    # A tiny table forces long collision chains; every survivor must stay
    # reachable after deletions in the middle of chains (backward shift).
    t = MacTable(8, aging_s=300, seed=1)
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(8)]
    for i, m in enumerate(macs):
        t.learn(1, m, i, 0)
    for m in macs[::2]:
        assert t.delete(1, m)
    for i, m in enumerate(macs):
        assert t.lookup(1, m, 0) == (None if i % 2 == 0 else i)
    assert not t.delete(1, macs[0])


def test_rejects_malformed_mac():
    t = MacTable(16, aging_s=300)
    with pytest.raises(ValueError):
        t.learn(1, "02:00:00:00:00", 1, 0)
    with pytest.raises(ValueError):
        t.learn(1, b"\x02\x00", 1, 0)
