# The switch: the state every unit reads, owned by Datapath. The control
# plane changes it under `lock`; the loop runs every unit under it.
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from fastpath.mactable cimport (OUT_NONE, key_network, mac_entry, mac_table, mt_expired, mt_flush, mt_set_limit,
                                mt_sweep)
from fastpath.posix_io cimport CLOCK_MONOTONIC, clock_gettime, pthread_mutex_t, timespec, write

cdef struct spin_t:                # busy polling's state, the same for every engine
    int64_t busy_ns                # poll this long after a turn with work (0: always sleep)
    int64_t hold_ns                # no polling this long after a bulk turn (0: bulk polls as any traffic)
    int64_t until                  # poll instead of sleeping until then...
    int64_t bulk_until             # ...unless the traffic was bulk until later
    uint64_t frames                # LS_FRAMES at the latest turn with work
    uint64_t large                 # super-frames in, coalesced datagrams and GRO runs then


cdef struct sw_t:
    pthread_mutex_t lock
    port_t *ports
    port_policy *policy            # one per port (policy.pxi)
    vlan_t vlan                    # trunk ports (vlan.pxi)
    port_limits *limits            # one per port (limits.pxi)
    int64_t lim_now                # the loop's clock (ms) as the latest decision read it: egress policing's
    uint32_t npaused               # ports paused (pause.pxi)
    int64_t next_resume_ms         # ...the earliest resume_ms among them (the loop's clock, ms)
    uint64_t *pctr                 # PC_COUNT per port
    int32_t *net_head              # first port of each network, -1: none
    uint32_t max_ports
    uint32_t max_networks
    mac_table mt
    neigh_table neigh              # addresses the switch answers ARP and ND for (neigh.pxi)
    uint32_t sweep_budget
    uint64_t stats[LS_COUNT]
    dp_event evring[EV_RING]
    uint64_t ev_head
    int stop_efd                   # written by stop(): every engine watches it
    int notify_efd                 # written when a port's fd fails
    spin_t spin                    # whether the loop polls or sleeps next (spin_next)
    int64_t last_turn_ns           # CLOCK_MONOTONIC at the start of the loop's latest turn
    int inject_err                 # a failure the loop ends with at its next turn (tests)
    const char *fail_what          # what failed when the loop ended with an errno
    tunnel_t tun
    output_t out
    engine_ops eng
    void *engine


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t now_ms() noexcept nogil:
    return now_ns() // 1000000


cdef inline uint32_t hist_bucket(uint32_t n) noexcept nogil:
    cdef uint32_t b = 0
    while n > 1 and b < HIST_BUCKETS - 1:
        n >>= 1
        b += 1
    return b


cdef inline void sw_event(sw_t *sw, uint8_t kind, uint64_t key, uint32_t a, uint32_t b) noexcept nogil:
    cdef dp_event *ev = &sw.evring[sw.ev_head & (EV_RING - 1)]
    ev.kind = kind
    ev.key = key
    ev.a = a
    ev.b = b
    sw.ev_head += 1


cdef inline bint spin_next(spin_t *s, const uint64_t *stats, int64_t t, bint work) noexcept nogil:
    """After a turn at t (work: its wait brought something), whether the
    engine's next wait polls (True) or may sleep.

    Busy polling saves a wakeup per hop for latency traffic: a lone frame
    now and then. With a hold set, bulk traffic (TSO super-frames, frames
    the kernel coalesced, GRO runs, full batches) stops it for that long:
    its next frame is always close, and on a small host a spinning loop
    competes with the processes at either end of the transfer. The turn's
    work is read from the loop's counters since the last turn with work, so
    a frame costs nothing more."""
    cdef uint64_t frames, large
    if s.busy_ns <= 0:
        return False
    if work:
        if s.hold_ns > 0:
            frames = stats[LS_FRAMES]
            large = stats[LS_SUPERFRAMES_IN] + stats[LS_UDP_GRO] + stats[LS_GRO_RUNS]
            if large != s.large or frames - s.frames >= BATCH:
                s.bulk_until = t + s.hold_ns
            s.frames = frames
            s.large = large
        s.until = t + s.busy_ns
    return t < s.until and t >= s.bulk_until


cdef inline bint sw_turn(sw_t *sw, int64_t t) noexcept nogil:
    """An engine's loop starts a turn at t, its wait just returned: False
    when it must end (an injected failure, which run() names as one)."""
    sw.last_turn_ns = t
    return sw.inject_err == 0


cdef inline void sw_sweep(sw_t *sw, int64_t now) noexcept nogil:
    sw.stats[LS_SWEPT] += mt_sweep(&sw.mt, now, sw.sweep_budget)


cdef void sw_port_down(sw_t *sw, uint32_t idx) noexcept nogil:
    """The loop found port idx's fd failed: stop reading it, forget its MACs,
    tell the control plane (which removes it)."""
    cdef uint64_t one = 1
    sw.eng.port_down(sw.engine, idx, True)
    sw_forget_pause(sw, idx)
    sw.ports[idx].state = PORT_DEAD
    mt_flush(&sw.mt, 0, idx, True)
    write(sw.notify_efd, &one, sizeof(one))


cdef int sw_add_port(sw_t *sw, int fd, uint16_t network, uint32_t mtu, bint vnet_hdr, trunk_t *t,
                     uint32_t *out) noexcept nogil:
    """Take a free port slot for fd (under the lock): 0 with its index in *out,
    -1 when every slot is in use, or the engine's errno. A trunk port (t, which
    it then owns) is in no network's list: its tags say its frames' networks."""
    cdef uint32_t idx
    cdef port_t *p
    cdef int rc
    for idx in range(sw.max_ports):
        if sw.ports[idx].state == PORT_FREE:
            break
    else:
        return -1
    p = &sw.ports[idx]
    p.gen += 1
    p.fd = fd
    p.mtu = mtu
    p.network = network
    p.vnet = vnet_hdr
    p.trunk = 0
    p.cap_fd = -1
    p.cap_dir = 0
    memset(&sw.policy[idx], 0, sizeof(port_policy))  # no policy until the control plane sets one
    memset(&sw.limits[idx], 0, sizeof(port_limits))
    mt_set_limit(&sw.mt, idx, 0)
    memset(&sw.pctr[<size_t>idx * PC_COUNT], 0, PC_COUNT * sizeof(uint64_t))
    rc = sw.eng.port_up(sw.engine, idx)
    if rc != 0:
        return rc
    p.state = PORT_UP
    if t != NULL:
        vlan_set_trunk(sw, idx, t)
    else:
        p.next_in_net = sw.net_head[network]
        sw.net_head[network] = idx
    out[0] = idx
    return 0


cdef void sw_remove_port(sw_t *sw, uint32_t idx) noexcept nogil:
    """Take port idx out of its network and forget every FDB entry naming it."""
    cdef int32_t *link = &sw.net_head[sw.ports[idx].network]
    vlan_forget_port(sw, idx)
    while link[0] >= 0:
        if <uint32_t>link[0] == idx:
            link[0] = sw.ports[idx].next_in_net
            break
        link = &sw.ports[link[0]].next_in_net
    sw.ports[idx].next_in_net = -1
    sw_forget_pause(sw, idx)
    memset(&sw.policy[idx], 0, sizeof(port_policy))
    memset(&sw.limits[idx], 0, sizeof(port_limits))
    mt_set_limit(&sw.mt, idx, 0)
    mt_flush(&sw.mt, 0, idx, True)
    sw.ports[idx].cap_fd = -1
    sw.ports[idx].cap_dir = 0
    sw.ports[idx].state = PORT_FREE
    sw.ports[idx].gen += 1
    sw.ports[idx].fd = -1


cdef enum:
    FDB_CHUNK = 4096               # slots fdb_entries reads per hold of the lock

cdef struct fdb_row:               # an entry as fdb_entries copies it out from under the lock
    uint64_t key
    uint32_t out
    uint32_t flags
    int64_t age_ms


cdef uint32_t sw_copy_fdb(sw_t *sw, uint64_t start, uint64_t end, uint16_t network, uint32_t want,
                          fdb_row *rows) noexcept nogil:
    """Copy the live entries of MAC table slots [start, end) of `network`
    (0: all) naming output `want` (OUT_NONE: any) to rows; returns how many."""
    cdef int64_t now = now_ms()
    cdef uint32_t n = 0
    cdef mac_entry *e
    cdef uint64_t i
    for i in range(start, end):
        e = &sw.mt.slots[i]
        if (e.key == 0 or (network and key_network(e.key) != network) or (want != OUT_NONE and e.out != want)
                or mt_expired(&sw.mt, e, now)):
            continue
        rows[n].key = e.key
        rows[n].out = e.out
        rows[n].flags = e.flags
        rows[n].age_ms = now - e.last_seen_ms
        n += 1
    return n


def spin_trace(int64_t busy_poll_ns, int64_t hold_ns, turns) -> list:
    """Busy polling's decision (spin_next) over turns given as (t_ns, work,
    frames, large): the turn's time, whether its wait brought anything, and
    how many frames and large frames (super-frames in, coalesced datagrams,
    GRO runs) its work added to the loop's counters. Returns, per turn,
    whether the next wait would poll. For tests: it runs the loops' code."""
    cdef spin_t s
    cdef uint64_t stats[LS_COUNT]
    memset(&s, 0, sizeof(s))
    memset(stats, 0, sizeof(stats))
    s.busy_ns = busy_poll_ns
    s.hold_ns = hold_ns
    out = []
    for t, work, frames, large in turns:
        if frames < 0 or large < 0:
            raise ValueError("frames and large are counts, not below 0")
        stats[LS_FRAMES] += <uint64_t>frames
        stats[LS_SUPERFRAMES_IN] += <uint64_t>large
        out.append(bool(spin_next(&s, stats, t, bool(work))))
    return out
