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


cdef int mt_init(mac_table *t, uint32_t capacity, int64_t aging_ms, uint64_t seed) except -1:
    cdef uint64_t nslots = 16
    if capacity < 1:
        raise ValueError("MAC table capacity must be at least 1")
    while nslots < 2 * <uint64_t>capacity:
        nslots <<= 1
    t.slots = <mac_entry *>calloc(nslots, sizeof(mac_entry))
    if t.slots == NULL:
        raise MemoryError(f"cannot allocate a MAC table of {nslots} slots")
    t.mask = nslots - 1
    t.seed = seed
    t.count = 0
    t.capacity = capacity
    t.aging_ms = aging_ms
    t.sweep_pos = 0
    t.learned = t.moved = t.aged = t.refused = 0
    return 0


cdef void mt_free(mac_table *t) noexcept nogil:
    free(t.slots)
    t.slots = NULL
    t.count = 0


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
        i = j
    t.slots[i].key = 0
    t.count -= 1


cdef mt_result mt_learn(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms, uint32_t *moved_from) noexcept nogil:
    """Learn that key was seen on out; on MT_MOVED, *moved_from (if not NULL)
    gets the output the entry named before."""
    cdef uint64_t i = _home(t, key)
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
                t.learned += 1
                e.out = out
                e.last_seen_ms = now_ms
                return MT_LEARNED
            e.last_seen_ms = now_ms
            if e.out != out:
                if moved_from != NULL:
                    moved_from[0] = e.out
                e.out = out
                t.moved += 1
                return MT_MOVED
            return MT_HIT
        i = (i + 1) & t.mask
    if t.count >= t.capacity:
        t.refused += 1
        return MT_REFUSED
    e = &t.slots[i]
    e.key = key
    e.out = out
    e.flags = 0
    e.last_seen_ms = now_ms
    t.count += 1
    t.learned += 1
    return MT_LEARNED


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
    """Install or overwrite a static entry. Returns -1 when the table is full."""
    cdef uint64_t i = _home(t, key)
    while t.slots[i].key != 0:
        if t.slots[i].key == key:
            break
        i = (i + 1) & t.mask
    if t.slots[i].key == 0:
        if t.count >= t.capacity:
            return -1
        t.count += 1
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


RESULTS = ("hit", "learned", "moved", "refused", "static_kept", "pinned_kept")


cdef class MacTable:
    """Python face of the C table, for tests and benchmarks (times are injected)."""

    def __cinit__(self, uint32_t capacity, double aging_s, seed=None):
        if aging_s <= 0:
            raise ValueError("aging time must be positive")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        mt_init(&self.t, capacity, <int64_t>(aging_s * 1000), seed)

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
