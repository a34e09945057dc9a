# cython: language_level=3
"""MAC table: open addressing keyed by (network, MAC). See mactable.pxd."""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

import os


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # murmur3's 64-bit finalizer: every input bit affects every output bit.
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x


cdef inline uint64_t _home(const mac_table *t, uint64_t key) noexcept nogil:
    return _mix(key ^ t.seed) & t.mask


cdef int mt_init(mac_table *t, uint32_t capacity, int64_t aging_ms, uint64_t seed, uint32_t nports,
                 uint32_t npeers) except -1:
    cdef uint64_t nslots = 16
    cdef uint32_t i
    if capacity < 1:
        raise ValueError("MAC table capacity must be at least 1")
    while nslots < 2 * <uint64_t>capacity:
        nslots <<= 1
    t.slots = <mac_entry *>calloc(nslots, sizeof(mac_entry))
    t.outs = <mt_out *>calloc(<size_t>nports + npeers + 1, sizeof(mt_out))
    if t.slots == NULL or t.outs == NULL:
        free(t.slots)
        free(t.outs)
        t.slots = NULL
        t.outs = NULL
        raise MemoryError(f"cannot allocate a MAC table of {nslots} slots")
    for i in range(nports + npeers + 1):
        t.outs[i].head = t.outs[i].tail = MT_NIL
    t.nports = nports
    t.npeers = npeers
    t.nlearned = 0
    t.mask = nslots - 1
    t.seed = seed
    t.count = 0
    t.capacity = capacity
    t.aging_ms = aging_ms
    t.sweep_pos = 0
    t.learned = t.moved = t.aged = t.refused = t.evicted = t.limited = 0
    return 0


cdef void mt_free(mac_table *t) noexcept nogil:
    free(t.slots)
    free(t.outs)
    t.slots = NULL
    t.outs = NULL
    t.count = 0


# ---- the per-output lists of learned entries (least recently seen first) ----

cdef inline void _unlink(mac_table *t, uint64_t i) noexcept nogil:
    cdef mac_entry *e = &t.slots[i]
    cdef mt_out *o = &t.outs[mt_oi(t, e.out)]
    if e.prev != MT_NIL:
        t.slots[e.prev].next = e.next
    else:
        o.head = e.next
    if e.next != MT_NIL:
        t.slots[e.next].prev = e.prev
    else:
        o.tail = e.prev
    o.count -= 1
    t.nlearned -= 1


cdef inline void _append(mac_table *t, uint64_t i) noexcept nogil:
    """Put the learned entry at slot i last (most recently seen) in its output's list."""
    cdef mac_entry *e = &t.slots[i]
    cdef mt_out *o = &t.outs[mt_oi(t, e.out)]
    e.next = MT_NIL
    e.prev = o.tail
    if o.tail != MT_NIL:
        t.slots[o.tail].next = <uint32_t>i
    else:
        o.head = <uint32_t>i
    o.tail = <uint32_t>i
    o.count += 1
    t.nlearned += 1


cdef inline void _touch(mac_table *t, uint64_t i) noexcept nogil:
    """The learned entry at slot i was just seen: last in its list. Free when it is already last."""
    if t.outs[mt_oi(t, t.slots[i].out)].tail != i:
        _unlink(t, i)
        _append(t, i)


cdef inline void _relinked(mac_table *t, uint64_t to) noexcept nogil:
    """The learned entry just moved to slot `to`: its neighbours (and its list's ends) point there."""
    cdef mac_entry *e = &t.slots[to]
    cdef mt_out *o = &t.outs[mt_oi(t, e.out)]
    if e.prev != MT_NIL:
        t.slots[e.prev].next = <uint32_t>to
    else:
        o.head = <uint32_t>to
    if e.next != MT_NIL:
        t.slots[e.next].prev = <uint32_t>to
    else:
        o.tail = <uint32_t>to


cdef void mt_set_limit(mac_table *t, uint32_t out, uint32_t limit) noexcept nogil:
    """At most `limit` learned entries for output out (0: no limit). Entries
    it holds beyond a new limit stay until they age or are flushed."""
    cdef uint32_t oi = mt_oi(t, out)
    if oi < t.nports + t.npeers:
        t.outs[oi].limit = limit


cdef inline bint _at_limit(const mac_table *t, uint32_t out) noexcept nogil:
    cdef const mt_out *o = &t.outs[mt_oi(t, out)]
    return o.limit != 0 and o.count >= o.limit


cdef uint64_t mt_evictee(const mac_table *t) noexcept nogil:
    """The key a new entry in a full table would take the place of (0: none; the table may not be full)."""
    cdef uint32_t victim = _victim(t)
    return 0 if victim == MT_NIL else t.slots[t.outs[victim].head].key


cdef uint32_t _victim(const mac_table *t) noexcept nogil:
    """The output holding the most learned entries (the first such), MT_NIL when none holds any."""
    cdef uint32_t i, best = MT_NIL, most = 0
    for i in range(t.nports + t.npeers + 1):
        if t.outs[i].count > most:
            most = t.outs[i].count
            best = i
    return best


cdef bint mt_expired(const mac_table *t, const mac_entry *e, int64_t now_ms) noexcept nogil:
    return (e.flags & MT_STATIC) == 0 and now_ms - e.last_seen_ms >= t.aging_ms


cdef inline mac_entry *_find(mac_table *t, uint64_t key) noexcept nogil:
    cdef uint64_t i = _home(t, key)
    while t.slots[i].key != 0:
        if t.slots[i].key == key:
            return &t.slots[i]
        i = (i + 1) & t.mask
    return NULL


cdef void _remove_at(mac_table *t, uint64_t i) noexcept nogil:
    # Backward-shift deletion: pull later members of the probe chain into the
    # hole so that every entry stays reachable from its home slot.
    cdef uint64_t j = i, home
    if (t.slots[i].flags & MT_STATIC) == 0:
        _unlink(t, i)
    while True:
        j = (j + 1) & t.mask
        if t.slots[j].key == 0:
            break
        home = _home(t, t.slots[j].key)
        # The entry at j may fill the hole at i only if its home is not
        # cyclically within (i, j].
        if i <= j:
            if i < home <= j:
                continue
        elif i < home or home <= j:
            continue
        t.slots[i] = t.slots[j]
        if (t.slots[i].flags & MT_STATIC) == 0:
            _relinked(t, i)
        i = j
    t.slots[i].key = 0
    t.count -= 1


cdef mt_result mt_learn(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms, uint32_t *moved_from) noexcept nogil:
    """Learn that key was seen on out; on MT_MOVED, *moved_from (if not NULL)
    gets the output the entry named before."""
    cdef uint64_t i = _home(t, key)
    cdef uint32_t victim
    cdef mac_entry *e
    while t.slots[i].key != 0:
        e = &t.slots[i]
        if e.key == key:
            if e.flags & MT_STATIC:
                if e.out == out:
                    return MT_HIT
                return MT_PINNED_KEPT if e.flags & MT_PINNED else MT_STATIC_KEPT
            if now_ms - e.last_seen_ms >= t.aging_ms:
                # Expired but not yet swept: it ages out and is learned anew.
                t.aged += 1
                if e.out != out:
                    if _at_limit(t, out):
                        _remove_at(t, i)
                        t.limited += 1
                        return MT_LIMITED
                    _unlink(t, i)
                    e.out = out
                    _append(t, i)
                else:
                    _touch(t, i)
                t.learned += 1
                e.last_seen_ms = now_ms
                return MT_LEARNED
            if e.out != out:
                if _at_limit(t, out):
                    t.limited += 1
                    return MT_LIMITED
                if moved_from != NULL:
                    moved_from[0] = e.out
                _unlink(t, i)
                e.out = out
                _append(t, i)
                e.last_seen_ms = now_ms
                t.moved += 1
                return MT_MOVED
            e.last_seen_ms = now_ms
            _touch(t, i)
            return MT_HIT
        i = (i + 1) & t.mask
    if _at_limit(t, out):
        t.limited += 1
        return MT_LIMITED
    if t.count >= t.capacity:
        victim = _victim(t)
        if victim == MT_NIL:
            t.refused += 1
            return MT_REFUSED
        _remove_at(t, t.outs[victim].head)
        t.evicted += 1
        # The shift may have moved the probe chain: find the free slot again.
        i = _home(t, key)
        while t.slots[i].key != 0:
            i = (i + 1) & t.mask
    e = &t.slots[i]
    e.key = key
    e.out = out
    e.flags = 0
    e.last_seen_ms = now_ms
    _append(t, i)
    t.count += 1
    t.learned += 1
    return MT_LEARNED


cdef mt_result mt_predict(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms, uint32_t *was) noexcept nogil:
    """What mt_learn(t, key, out, now_ms) would return, changing nothing."""
    cdef mac_entry *e = _find(t, key)
    was[0] = OUT_NONE
    if e == NULL:
        if _at_limit(t, out):
            return MT_LIMITED
        return MT_REFUSED if t.count >= t.capacity and t.nlearned == 0 else MT_LEARNED
    was[0] = e.out
    if e.flags & MT_STATIC:
        if e.out == out:
            return MT_HIT
        return MT_PINNED_KEPT if e.flags & MT_PINNED else MT_STATIC_KEPT
    if e.out != out and _at_limit(t, out):
        return MT_LIMITED
    if now_ms - e.last_seen_ms >= t.aging_ms:
        return MT_LEARNED
    return MT_HIT if e.out == out else MT_MOVED


cdef mac_entry *mt_lookup(mac_table *t, uint64_t key, int64_t now_ms) noexcept nogil:
    cdef mac_entry *e = _find(t, key)
    if e == NULL:
        return NULL
    if mt_expired(t, e, now_ms):
        t.aged += 1
        _remove_at(t, <uint64_t>(e - t.slots))
        return NULL
    return e


cdef mac_entry *mt_peek(mac_table *t, uint64_t key) noexcept nogil:
    return _find(t, key)


cdef int mt_set_static(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms) noexcept nogil:
    """Install or overwrite a static entry. When the table is full it takes a
    learned entry's place, as learning does; -1 when every entry is static."""
    cdef uint64_t i = _home(t, key)
    cdef uint32_t victim
    while t.slots[i].key != 0:
        if t.slots[i].key == key:
            break
        i = (i + 1) & t.mask
    if t.slots[i].key == 0:
        if t.count >= t.capacity:
            victim = _victim(t)
            if victim == MT_NIL:
                return -1
            _remove_at(t, t.outs[victim].head)
            t.evicted += 1
            i = _home(t, key)
            while t.slots[i].key != 0:
                i = (i + 1) & t.mask
        t.count += 1
    elif (t.slots[i].flags & MT_STATIC) == 0:
        _unlink(t, i)
    t.slots[i].key = key
    t.slots[i].out = out
    t.slots[i].flags = MT_STATIC
    t.slots[i].last_seen_ms = now_ms
    return 0


cdef int mt_pin(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms) noexcept nogil:
    """Install a port's own MAC: a static entry that learning never moves,
    and whose MAC in a frame from anywhere else drops that frame."""
    cdef mac_entry *e
    if mt_set_static(t, key, out, now_ms) < 0:
        return -1
    e = _find(t, key)
    e.flags |= MT_PINNED
    return 0


cdef bint mt_delete(mac_table *t, uint64_t key) noexcept nogil:
    cdef mac_entry *e = _find(t, key)
    if e == NULL:
        return False
    _remove_at(t, <uint64_t>(e - t.slots))
    return True


cdef uint32_t mt_flush(mac_table *t, uint16_t network, uint32_t out, bint with_static) noexcept nogil:
    """Remove entries of `network` (0: any) pointing at `out` (OUT_NONE: any)."""
    cdef uint64_t i = 0
    cdef uint32_t removed = 0
    cdef mac_entry *e
    while i <= t.mask:
        e = &t.slots[i]
        if (e.key != 0
                and (network == 0 or key_network(e.key) == network)
                and (out == OUT_NONE or e.out == out)
                and (with_static or (e.flags & MT_STATIC) == 0)):
            _remove_at(t, i)
            removed += 1
            continue  # a later entry may have shifted into slot i
        i += 1
    return removed


cdef uint32_t mt_sweep(mac_table *t, int64_t now_ms, uint32_t budget) noexcept nogil:
    """Visit up to `budget` slots from where the last sweep stopped; drop expired entries."""
    cdef uint32_t removed = 0
    cdef uint64_t i = t.sweep_pos
    cdef mac_entry *e
    while budget > 0:
        budget -= 1
        e = &t.slots[i]
        if e.key != 0 and mt_expired(t, e, now_ms):
            t.aged += 1
            _remove_at(t, i)
            removed += 1
            continue  # recheck slot i: a later entry may have moved into it
        i = (i + 1) & t.mask
    t.sweep_pos = i
    return removed


def parse_mac(mac) -> bytes:
    """'02:00:00:00:00:01' or 6 bytes -> 6 bytes."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return bytes(mac)
    parts = str(mac).split(":")
    if len(parts) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


def format_mac(uint64_t key) -> str:
    return ":".join(f"{(key >> (40 - 8 * i)) & 0xff:02x}" for i in range(6))


RESULTS = ("hit", "learned", "moved", "refused", "static_kept", "pinned_kept", "limited")


cdef class MacTable:
    """Python face of the C table, for tests and benchmarks (times are injected)."""

    def __cinit__(self, uint32_t capacity, double aging_s, seed=None, uint32_t nports=1024, uint32_t npeers=1024):
        if aging_s <= 0:
            raise ValueError("aging time must be positive")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        mt_init(&self.t, capacity, <int64_t>(aging_s * 1000), seed, nports, npeers)

    def __dealloc__(self):
        mt_free(&self.t)

    def __len__(self):
        return self.t.count

    @property
    def capacity(self) -> int:
        return self.t.capacity

    @property
    def slots(self) -> int:
        return self.t.mask + 1

    def learn(self, uint16_t network, mac, uint32_t out, int64_t now_ms) -> str:
        cdef bytes m = parse_mac(mac)
        return RESULTS[mt_learn(&self.t, mac_key(network, m), out, now_ms, NULL)]

    def lookup(self, uint16_t network, mac, int64_t now_ms):
        """Output index, or None for a miss (an expired entry is removed and counted)."""
        cdef bytes m = parse_mac(mac)
        cdef mac_entry *e = mt_lookup(&self.t, mac_key(network, m), now_ms)
        return None if e == NULL else e.out

    def add_static(self, uint16_t network, mac, uint32_t out, int64_t now_ms=0) -> None:
        cdef bytes m = parse_mac(mac)
        if mt_set_static(&self.t, mac_key(network, m), out, now_ms) < 0:
            raise OverflowError("MAC table is full")

    def set_limit(self, uint32_t out, uint32_t limit) -> None:
        """At most `limit` learned entries for output out (0: no limit)."""
        mt_set_limit(&self.t, out, limit)

    def learned_by(self, uint32_t out) -> list:
        """The learned entries of output out as MACs, least recently seen first (its list, walked)."""
        cdef uint32_t i = self.t.outs[mt_oi(&self.t, out)].head
        macs = []
        while i != MT_NIL:
            macs.append(format_mac(self.t.slots[i].key))
            i = self.t.slots[i].next
        return macs

    def held(self, uint32_t out) -> int:
        return self.t.outs[mt_oi(&self.t, out)].count

    def delete(self, uint16_t network, mac) -> bool:
        cdef bytes m = parse_mac(mac)
        return mt_delete(&self.t, mac_key(network, m))

    def flush(self, uint16_t network=0, out=None, bint with_static=False) -> int:
        return mt_flush(&self.t, network, OUT_NONE if out is None else out, with_static)

    def sweep(self, int64_t now_ms, uint32_t budget) -> int:
        return mt_sweep(&self.t, now_ms, budget)

    def entries(self):
        """[(network, mac, out, static, last_seen_ms)] in slot order."""
        cdef uint64_t i
        out = []
        for i in range(self.t.mask + 1):
            if self.t.slots[i].key != 0:
                e = &self.t.slots[i]
                out.append((key_network(e.key), format_mac(e.key), e.out,
                            bool(e.flags & MT_STATIC), e.last_seen_ms))
        return out

    def counters(self) -> dict:
        return {
            "entries": self.t.count,
            "learned": self.t.learned,
            "moved": self.t.moved,
            "aged": self.t.aged,
            "refused": self.t.refused,
            "evicted": self.t.evicted,
            "limited": self.t.limited,
        }

    def bench_lookup(self, uint16_t network, uint32_t n_keys, uint64_t rounds, int64_t now_ms) -> int:
        """Look up keys 1..n_keys (as MACs) `rounds` times in C; returns the hits."""
        cdef uint64_t r, k, hits = 0
        with nogil:
            for r in range(rounds):
                k = (r % n_keys) + 1
                if mt_lookup(&self.t, (<uint64_t>network << 48) | k, now_ms) != NULL:
                    hits += 1
        return hits

    def bench_learn(self, uint16_t network, uint32_t n_keys, uint64_t rounds, int64_t now_ms) -> int:
        """Learn keys 1..n_keys `rounds` times in C (new then refresh); returns new entries."""
        cdef uint64_t r, k, learned = 0
        with nogil:
            for r in range(rounds):
                k = (r % n_keys) + 1
                if mt_learn(&self.t, (<uint64_t>network << 48) | k, <uint32_t>(k & 7), now_ms, NULL) == MT_LEARNED:
                    learned += 1
        return learned
