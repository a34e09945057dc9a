# The MAC table: (network, MAC) -> output, in one fixed block of C memory.
#
# Open addressing with linear probing and backward-shift deletion (no
# tombstones, so probe chains never degrade with churn). The slot array is
# sized once at start to the next power of two >= 2 * capacity, which keeps
# the load factor at or under 1/2; `capacity` (mac_table_size) caps the
# number of entries. When the table is full, a new source MAC takes the
# place of a learned entry of the output holding the most learned entries,
# its least recently seen one (counted as evicted): a port flooding random
# sources churns its own entries and never its neighbours'. Only when every
# entry is static is a new MAC refused (MT_REFUSED, counted). An output may
# also have a limit of learned entries (a port's max_macs): a new MAC beyond
# it is not learned (MT_LIMITED, counted). Either way the frame itself still
# forwards (its destination is looked up as usual, and replies to it flood).
#
# Each output's learned entries are kept in a doubly linked list through the
# slots, least recently seen first, with the output's count beside it; the
# links are slot indices, fixed up when backward-shift deletion moves an entry.
#
# Aging is lazy plus incremental: an expired entry found by a lookup or a
# learn is removed there, and mt_sweep visits a bounded number of slots per
# call, so no frame ever pays for a scan of the whole table.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    OUT_NONE = 0xFFFFFFFF      # "no output": matches any output in mt_flush
    OUT_PEER = 0x80000000      # output names a tunnel peer (OUT_PEER | peer index)
    MT_STATIC = 1              # entry flag: never ages, never moved by learning
    MT_PINNED = 2              # with MT_STATIC: a port's own MAC; a frame carrying it from elsewhere is dropped

cdef enum:
    MT_NIL = 0xFFFFFFFF        # no slot: the end of a list

cdef enum mt_result:
    MT_HIT = 0                 # known MAC, same output: last-seen refreshed
    MT_LEARNED = 1             # new entry (or an expired one re-learned)
    MT_MOVED = 2               # known MAC seen on another output: entry moved
    MT_REFUSED = 3             # table full: not learned
    MT_STATIC_KEPT = 4         # a static entry names another output: unchanged
    MT_PINNED_KEPT = 5         # a pinned entry names another output: unchanged (the frame is dropped)
    MT_LIMITED = 6             # the output holds its limit of learned entries: not learned (or not moved)

cdef struct mac_entry:
    uint64_t key               # network << 48 | MAC; 0 marks an empty slot
    int64_t last_seen_ms
    uint32_t out
    uint32_t flags
    uint32_t prev              # a learned entry's neighbours in its output's list (slot indices, MT_NIL: none)
    uint32_t next

cdef struct mt_out:            # per output: its learned entries
    uint32_t count
    uint32_t limit             # most learned entries it may hold, 0: no limit
    uint32_t head              # least recently seen (MT_NIL: none)
    uint32_t tail              # most recently seen

cdef struct mac_table:
    mac_entry *slots
    uint64_t mask              # number of slots - 1
    uint64_t seed              # per-table hash seed: MACs are attacker-chosen
    uint32_t count
    uint32_t capacity
    int64_t aging_ms
    uint64_t sweep_pos
    mt_out *outs               # nports ports, then npeers peers, then one for any other output
    uint32_t nports
    uint32_t npeers
    uint32_t nlearned          # learned (not static) entries
    uint64_t learned
    uint64_t moved
    uint64_t aged
    uint64_t refused
    uint64_t evicted
    uint64_t limited

cdef inline uint64_t mac_key(uint16_t network, const uint8_t *mac) noexcept nogil:
    return ((<uint64_t>network << 48) | (<uint64_t>mac[0] << 40) | (<uint64_t>mac[1] << 32)
            | (<uint64_t>mac[2] << 24) | (<uint64_t>mac[3] << 16) | (<uint64_t>mac[4] << 8)
            | <uint64_t>mac[5])

cdef inline uint16_t key_network(uint64_t key) noexcept nogil:
    return <uint16_t>(key >> 48)

cdef inline uint32_t mt_oi(const mac_table *t, uint32_t out) noexcept nogil:
    """The index of output `out` in t.outs."""
    cdef uint32_t i
    if out & OUT_PEER:
        i = out & ~OUT_PEER
        return t.nports + i if i < t.npeers else t.nports + t.npeers
    return out if out < t.nports else t.nports + t.npeers

cdef int mt_init(mac_table *t, uint32_t capacity, int64_t aging_ms, uint64_t seed, uint32_t nports,
                 uint32_t npeers) except -1
cdef void mt_free(mac_table *t) noexcept nogil
cdef mt_result mt_learn(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms, uint32_t *moved_from) noexcept nogil
cdef mac_entry *mt_lookup(mac_table *t, uint64_t key, int64_t now_ms) noexcept nogil
cdef mac_entry *mt_peek(mac_table *t, uint64_t key) noexcept nogil
cdef int mt_set_static(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms) noexcept nogil
cdef int mt_pin(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms) noexcept nogil
cdef bint mt_delete(mac_table *t, uint64_t key) noexcept nogil
cdef uint32_t mt_flush(mac_table *t, uint16_t network, uint32_t out, bint with_static) noexcept nogil
cdef uint32_t mt_sweep(mac_table *t, int64_t now_ms, uint32_t budget) noexcept nogil
cdef bint mt_expired(const mac_table *t, const mac_entry *e, int64_t now_ms) noexcept nogil
cdef mt_result mt_predict(mac_table *t, uint64_t key, uint32_t out, int64_t now_ms, uint32_t *was) noexcept nogil
cdef void mt_set_limit(mac_table *t, uint32_t out, uint32_t limit) noexcept nogil
cdef uint64_t mt_evictee(const mac_table *t) noexcept nogil


cdef class MacTable:
    """A MAC table owned by Python: for tests, benchmarks and the datapath."""
    cdef mac_table t
