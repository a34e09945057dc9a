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


def test_full_table_evicts_from_the_biggest_holder_least_recently_seen_first():
    t = MacTable(6, aging_s=300)
    t.learn(1, A, 2, 0)  # port 2's only entry
    for i in range(5):
        assert t.learn(1, f"02:00:00:00:00:{i:02x}", 1, 10 + i) == "learned"
    t.learn(1, "02:00:00:00:00:00", 1, 20)  # seen again: now port 1's most recent
    assert t.learned_by(1) == [f"02:00:00:00:00:{i:02x}" for i in (1, 2, 3, 4, 0)]
    # Full: a new MAC, from either port, takes the place of port 1's oldest.
    assert t.learn(1, B, 2, 30) == "learned"
    assert t.lookup(1, "02:00:00:00:00:01", 31) is None
    assert t.learn(1, "02:00:00:00:00:09", 1, 32) == "learned"
    assert t.lookup(1, "02:00:00:00:00:02", 33) is None
    assert t.lookup(1, A, 34) == 2 and t.lookup(1, B, 34) == 2
    assert len(t) == 6 and t.counters()["evicted"] == 2 and t.counters()["refused"] == 0
    assert (t.held(1), t.held(2)) == (4, 2)


def test_only_static_entries_make_a_full_table_refuse():
    t = MacTable(4, aging_s=300)
    for i in range(4):
        t.add_static(1, f"02:00:00:00:00:{i:02x}", 1)
    assert t.learn(1, A, 1, 0) == "refused"
    assert len(t) == 4 and t.counters()["refused"] == 1
    assert t.lookup(1, A, 0) is None


def test_a_static_entry_takes_a_learned_entrys_place_when_full():
    t = MacTable(2, aging_s=300)
    t.learn(1, A, 1, 0)
    t.learn(1, B, 1, 1)
    t.add_static(1, "02:00:00:00:00:77", 3)
    assert t.lookup(1, A, 2) is None and t.lookup(1, B, 2) == 1 and t.lookup(1, "02:00:00:00:00:77", 2) == 3


def test_limit_refuses_new_macs_and_moves_but_refreshes():
    t = MacTable(64, aging_s=300)
    t.set_limit(1, 2)
    assert t.learn(1, A, 1, 0) == "learned"
    assert t.learn(1, B, 1, 0) == "learned"
    assert t.learn(1, "02:00:00:00:00:0c", 1, 0) == "limited"
    assert t.learn(1, A, 1, 5) == "hit"
    t.learn(1, "02:00:00:00:00:0d", 2, 0)
    assert t.learn(1, "02:00:00:00:00:0d", 1, 6) == "limited"  # no move onto a port at its limit
    assert t.lookup(1, "02:00:00:00:00:0d", 7) == 2
    assert t.counters()["limited"] == 2 and t.held(1) == 2
    t.delete(1, B)
    assert t.learn(1, "02:00:00:00:00:0c", 1, 8) == "learned"
    t.set_limit(1, 0)
    assert t.learn(1, "02:00:00:00:00:0e", 1, 9) == "learned"


def test_lists_and_counts_stay_true_under_churn():
    """Learning, moves, deletes, sweeps and flushes in a small table: each
    output's list walks exactly its learned entries, oldest first."""
    import random
    rnd = random.Random(7)
    t = MacTable(40, aging_s=1, seed=1)
    now = 0
    for step in range(20000):
        now += rnd.randrange(3)
        m = f"02:00:00:00:{rnd.randrange(2):02x}:{rnd.randrange(90):02x}"
        op = rnd.randrange(20)
        if op < 14:
            t.learn(1, m, rnd.randrange(4), now)
        elif op < 16:
            t.delete(1, m)
        elif op < 17:
            t.sweep(now, 8)
        elif op < 18 and sum(1 for e in t.entries() if e[3]) < 30:
            t.add_static(1, m, 3, now)
        elif op < 19:
            t.flush(out=rnd.randrange(4))
        else:
            t.lookup(1, m, now)
        if step % 500 == 0 or step > 19900:
            learned = [(e[2], e[1], e[4]) for e in t.entries() if not e[3]]
            for out in range(4):
                mine = sorted(((seen, m) for o, m, seen in learned if o == out))
                walked = t.learned_by(out)
                assert len(walked) == t.held(out) == len(mine)
                assert sorted(walked) == sorted(m for _, m in mine)
                seen = {m: s for _, m, s in learned}
                assert [seen[m] for m in walked] == sorted(seen[m] for m in walked)


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
