# The io_uring engine's ring (engine_uring.pxi drives it): its set-up,
# submissions, the retirement of writes, the provided buffers, and the
# reconcile that keeps reads and fixed files in line with the port table.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free
from libc.string cimport memset

from fastpath.frame cimport VNET_HLEN
from fastpath.posix_io cimport POLLIN, posix_memalign
from fastpath.uring cimport (IORING_FEAT_EXT_ARG, IORING_OP_READ_MULTISHOT, IORING_SETUP_CQSIZE,
                             IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_R_DISABLED, IORING_SETUP_SINGLE_ISSUER,
                             IORING_SETUP_SUBMIT_ALL, IOSQE_BUFFER_SELECT, IOSQE_FIXED_FILE, io_uring,
                             io_uring_buf_reg, io_uring_buf_ring, io_uring_buf_ring_add, io_uring_buf_ring_advance,
                             io_uring_buf_ring_init, io_uring_buf_ring_mask, io_uring_cqe, io_uring_free_probe,
                             io_uring_get_probe_ring, io_uring_get_sqe, io_uring_opcode_supported, io_uring_params,
                             io_uring_peek_batch_cqe, io_uring_prep_cancel64, io_uring_prep_poll_multishot,
                             io_uring_prep_rw, io_uring_probe, io_uring_queue_exit, io_uring_queue_init_params,
                             io_uring_register_buf_ring, io_uring_register_files_sparse, io_uring_register_files_update,
                             io_uring_sq_ready, io_uring_sqe, io_uring_sqe_set_data64, io_uring_sqe_set_flags,
                             io_uring_submit)

cdef enum:
    UR_SQ = 1024                   # submission queue entries
    UR_CQ = 8192                   # completion queue entries (also the most handled per wakeup)
    UR_BUFS = 512                  # provided buffers (default), BUF_SIZE each, shared by every port's read
    UR_BATCH_MIN = 8               # completions in a round that make the next wait one for a batch
    UR_BATCH_MAX = 128             # the most completions such a wait asks for
    UR_BGID = 1                    # their buffer group
    UR_WQ = 4096                   # ring writes in flight between two retirements (power of 2)
    UR_CHUNK = 64                  # completions handled per hold of the lock
    UR_TUNNEL_ROUNDS = 8           # recvmmsg batches per tunnel wakeup before yielding to the ports

cdef enum:  # io_uring engine statistics
    US_SUBMITS = 0                 # io_uring_enter calls that submit and/or wait
    US_READ_REARMS                 # multishot reads armed again after they ended
    US_BUFFER_RING_EMPTY           # multishot reads ended because no provided buffer was left
    US_STALE                       # completions for a port removed while its read was in flight
    US_WRITE_ERRORS                # ring writes that failed (also in the port's tx_errors)
    US_BATCH_WAITS                 # waits for a batch of completions (see batch_wait_us)
    US_COUNT
URING_COUNTER_NAMES = ("submits", "read_rearms", "buffer_ring_empty", "stale_completions", "write_errors",
                       "batch_waits")
assert len(URING_COUNTER_NAMES) == US_COUNT

# user_data: the kind in the top two bits. A port's read carries its
# generation (30 bits) and index, a write its sequence number, a poll which
# fd it watches. 0 marks completions nobody waits for (cancels).
cdef uint64_t UD_KIND = 3ULL << 62
cdef uint64_t UD_READ = 1ULL << 62
cdef uint64_t UD_WRITE = 2ULL << 62
cdef uint64_t UD_POLL = 3ULL << 62
cdef uint32_t GEN_MASK = 0x3FFFFFFF
cdef enum:
    POLL_STOP = 0
    POLL_CTL = 1
    POLL_VXLAN = 2
cdef uint32_t NO_BUFFER = 0xFFFFFFFF

cdef struct ring_port:             # a port as the ring sees it (loop thread only)
    uint32_t armed_gen             # generation of the port whose read is armed
    uint32_t slot_gen              # ...whose fd is in the fixed-file slot
    uint8_t armed                  # a multishot read is in flight
    uint8_t slot                   # the fixed-file slot holds the port's file
    uint8_t cancelling             # cancelled reads whose last completion has not come yet
    uint8_t sync_writes            # its file refused RWF_NOWAIT: written with write() instead

cdef struct ring_write:            # a queued write, accounted when retired
    const uint8_t *data
    uint32_t port
    uint32_t gen
    uint32_t len
    uint8_t superframe
    uint8_t failed
    uint8_t mirror                 # the port's output was captured when the write was queued

cdef struct uring_engine:
    sw_t *sw
    io_uring ring
    bint up                        # the ring exists (made at construction, gone when run() ends)
    bint live                      # ...and the loop thread drives it
    int64_t batch_wait_ns
    io_uring_cqe **cqes
    io_uring_buf_ring *bring
    uint8_t *ubufs
    uint32_t n_bufs
    uint16_t *recycle              # buffers to give back once the writes that use them are submitted
    uint32_t n_recycle
    ring_port *rports
    ring_write *wq
    uint64_t wq_head               # sequence number of the next queued write
    uint64_t wq_tail               # ...of the oldest not yet retired
    frame_t rframes[BATCH]
    uint32_t n_rframes
    uint32_t unsubmitted           # frames handled whose writes wait for the next submission
    int ctl_efd                    # the control plane changed ports or the VTEP
    int tunnel_fd
    uint64_t ctl_seq               # bumped by the control plane on every such change
    uint64_t ctl_seen              # ...as last reconciled by the loop
    uint64_t ctl_done              # ...once no cancelled read still holds a removed port's file
    uint32_t cancelling
    bint ctl_pending
    uint32_t polls                 # 1 << POLL_*: the multishot polls armed
    bint tunnel_pending
    bint mirror_pending            # a queued write is captured: recycle only after it is retired
    uint64_t ustats[US_COUNT]


cdef inline uint8_t *ring_buf(uint8_t *ubufs, uint32_t bid) noexcept nogil:
    # Where the kernel reads into ring buffer bid: a virtio-net header's room
    # short of the headroom, so a vnet port's frame starts just past it.
    return ubufs + <size_t>bid * BUF_SIZE + HEADROOM - VNET_HLEN


cdef inline uint64_t read_tag(uint32_t gen, uint32_t idx) noexcept nogil:
    return UD_READ | (<uint64_t>(gen & GEN_MASK) << 32) | idx


cdef inline void ring_params(io_uring_params *params) noexcept nogil:
    # One thread submits and reaps (SINGLE_ISSUER), and completions are
    # run only when it enters the kernel (DEFER_TASKRUN): no interrupting
    # task work while it forwards.
    memset(params, 0, sizeof(io_uring_params))
    params.flags = (IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER
                    | IORING_SETUP_DEFER_TASKRUN)
    params.cq_entries = UR_CQ


def uring_unavailable():
    """None when the io_uring engine can run here, else why not (one line)."""
    cdef io_uring ring
    cdef io_uring_params params
    cdef io_uring_probe *probe
    cdef io_uring_buf_reg reg
    cdef void *mem = NULL
    cdef int ret
    ring_params(&params)
    ret = io_uring_queue_init_params(8, &ring, &params)
    if ret < 0:
        hint = {1: "kernel.io_uring_disabled is set, or a seccomp profile blocks io_uring",
                38: "the kernel is built without io_uring",
                22: "the kernel lacks SINGLE_ISSUER/DEFER_TASKRUN (Linux >= 6.1)"}.get(-ret, "")
        return f"io_uring_setup: {os.strerror(-ret)}" + (f" ({hint})" if hint else "")
    try:
        if not params.features & IORING_FEAT_EXT_ARG:
            return "the kernel lacks io_uring_enter's timeout argument (IORING_FEAT_EXT_ARG, Linux >= 5.11)"
        probe = io_uring_get_probe_ring(&ring)
        if probe == NULL:
            return "cannot probe io_uring's opcodes"
        ret = io_uring_opcode_supported(probe, IORING_OP_READ_MULTISHOT)
        io_uring_free_probe(probe)
        if not ret:
            return "the kernel lacks multishot read (IORING_OP_READ_MULTISHOT, Linux >= 6.7)"
        if posix_memalign(&mem, 4096, 4096) != 0:
            raise MemoryError()
        memset(&reg, 0, sizeof(reg))
        reg.ring_addr = <uint64_t>mem
        reg.ring_entries = 1
        reg.bgid = UR_BGID
        ret = io_uring_register_buf_ring(&ring, &reg, 0)
        if ret < 0:
            return f"cannot register a provided-buffer ring: {os.strerror(-ret)}"
        ret = io_uring_register_files_sparse(&ring, 1)
        if ret < 0:
            return f"cannot register fixed files: {os.strerror(-ret)}"
        return None
    finally:
        io_uring_queue_exit(&ring)
        free(mem)


# ---- the ring --------------------------------------------------------------------

cdef void ur_submit(uring_engine *u) noexcept nogil:
    """Send what is queued on its way now, without waiting for anything."""
    io_uring_submit(&u.ring)
    u.ustats[US_SUBMITS] += 1


cdef void ur_retire(uring_engine *u, uint32_t n) noexcept nogil:
    """Account for the writes submitted since the last call: each has
    completed, and so have the frames that made them. The failed ones posted
    their completions among cqes[:n], the only ones there are."""
    cdef sw_t *sw = u.sw
    cdef uint32_t i
    cdef uint64_t seq
    cdef ring_write *w
    for i in range(n):
        if u.cqes[i].user_data & UD_KIND != UD_WRITE:
            continue
        seq = u.cqes[i].user_data & ~UD_KIND
        if seq < u.wq_tail or seq >= u.wq_head:
            continue  # retired already, counted then
        w = &u.wq[seq & (UR_WQ - 1)]
        if w.failed:
            continue
        w.failed = 1
        u.ustats[US_WRITE_ERRORS] += 1
        if sw.ports[w.port].gen == w.gen:
            out_failed(sw, w.port)
            if u.cqes[i].res == -EOPNOTSUPP:
                # Its file cannot fail a write that would wait (no
                # RWF_NOWAIT): the ring would park such writes past the
                # buffers' return, so its frames go out with write().
                u.rports[w.port].sync_writes = 1
    sw.stats[LS_FRAMES] += u.unsubmitted
    u.unsubmitted = 0
    while u.wq_tail != u.wq_head:
        w = &u.wq[u.wq_tail & (UR_WQ - 1)]
        u.wq_tail += 1
        if not w.failed and sw.ports[w.port].gen == w.gen:
            # Copied only if decided when queued: a capture started since may
            # have let the buffer go back to the ring (and be read into).
            out_sent(sw, w.port, w.data, w.len, w.superframe, w.mirror)


cdef void ur_submit_and_retire(uring_engine *u) noexcept nogil:
    """Send the queued writes and account for them now: each completes within
    its submission, and a failed one has posted its completion."""
    ur_submit(u)
    ur_retire(u, io_uring_peek_batch_cqe(&u.ring, u.cqes, UR_CQ))


cdef io_uring_sqe *ur_sqe(uring_engine *u) noexcept nogil:
    cdef io_uring_sqe *sqe = io_uring_get_sqe(&u.ring)
    if sqe == NULL:  # the submission queue is full: send it on its way
        ur_submit(u)
        sqe = io_uring_get_sqe(&u.ring)
    return sqe


cdef void ur_recycle(uring_engine *u) noexcept nogil:
    cdef uint32_t i, bid
    cdef int mask = io_uring_buf_ring_mask(u.n_bufs)
    for i in range(u.n_recycle):
        bid = u.recycle[i]
        io_uring_buf_ring_add(u.bring, ring_buf(u.ubufs, bid), FRAME_ROOM + VNET_HLEN, <unsigned short>bid, mask,
                              <int>i)
    io_uring_buf_ring_advance(u.bring, <int>u.n_recycle)
    u.n_recycle = 0


cdef void ur_close(uring_engine *u) noexcept nogil:
    io_uring_queue_exit(&u.ring)  # cancels what is in flight and lets go of every file
    u.up = u.live = False
    u.ctl_done = u.ctl_seq  # nobody waits for the loop any more


cdef int ur_open(uring_engine *u, uint32_t max_ports) noexcept nogil:
    """Set the ring up, disabled: the loop thread enables it and so becomes
    its single issuer. Returns 0 or an errno."""
    cdef io_uring_params params
    cdef io_uring_buf_reg reg
    cdef int ret
    cdef uint32_t i
    ring_params(&params)
    params.flags |= IORING_SETUP_R_DISABLED
    ret = io_uring_queue_init_params(UR_SQ, &u.ring, &params)
    if ret < 0:
        return -ret
    u.up = True
    # One fixed-file slot per port index: no file lookup per read or write.
    ret = io_uring_register_files_sparse(&u.ring, max_ports)
    if ret == 0:
        memset(&reg, 0, sizeof(reg))
        reg.ring_addr = <uint64_t>u.bring
        reg.ring_entries = u.n_bufs
        reg.bgid = UR_BGID
        ret = io_uring_register_buf_ring(&u.ring, &reg, 0)
    if ret < 0:
        ur_close(u)
        return -ret
    io_uring_buf_ring_init(u.bring)
    for i in range(u.n_bufs):
        u.recycle[i] = <uint16_t>i
    u.n_recycle = u.n_bufs
    ur_recycle(u)
    return 0


cdef void ur_poll(uring_engine *u, int fd, uint32_t which) noexcept nogil:
    """Arm the multishot poll `which` (POLL_*) on fd unless it is armed."""
    cdef io_uring_sqe *sqe
    if u.polls & (1 << which):
        return
    sqe = ur_sqe(u)
    if sqe == NULL:
        u.ctl_pending = True  # the next reconcile tries again
        return
    io_uring_prep_poll_multishot(sqe, fd, POLLIN)
    io_uring_sqe_set_data64(sqe, UD_POLL | which)
    u.polls |= 1 << which


cdef void ur_reconcile(uring_engine *u) noexcept nogil:
    """Bring the ring in line with the port table: cancel the reads of ports
    that went away or are paused, swap fixed files, arm a read for every port
    that has none (new, resumed, or its read ended)."""
    cdef sw_t *sw = u.sw
    cdef uint32_t idx, g
    cdef ring_port *r
    cdef port_t *p
    cdef io_uring_sqe *sqe
    cdef bint want, want_read
    cdef int fd
    cdef uint64_t seq = u.ctl_seq
    u.ctl_pending = False
    if io_uring_sq_ready(&u.ring):
        # Queued writes name ports by fixed-file slot: they must leave
        # before a slot changes hands, or a port added since they were
        # decided (in the lock's gap between chunks) would get them.
        ur_submit(u)
    for idx in range(sw.max_ports):
        p = &sw.ports[idx]
        r = &u.rports[idx]
        want = p.state == PORT_UP
        want_read = want and sw.limits[idx].resume_ms == 0  # a paused port keeps its file, not its read (pause.pxi)
        g = p.gen & GEN_MASK
        if r.armed and (not want_read or r.armed_gen != g):
            sqe = ur_sqe(u)
            if sqe == NULL:
                u.ctl_pending = True
                continue
            io_uring_prep_cancel64(sqe, read_tag(r.armed_gen, idx), 0)
            io_uring_sqe_set_data64(sqe, 0)
            r.armed = 0
            r.cancelling += 1
            u.cancelling += 1
        if r.slot and (not want or r.slot_gen != g):
            fd = -1
            io_uring_register_files_update(&u.ring, idx, &fd, 1)
            r.slot = 0
        if not want:
            continue
        if not r.slot:
            fd = p.fd
            if io_uring_register_files_update(&u.ring, idx, &fd, 1) != 1:
                sw_port_down(sw, idx)
                continue
            r.slot = 1
            r.slot_gen = g
            r.sync_writes = 0
        if not r.armed and want_read and not r.cancelling:
            # (A cancelled read still in flight may carry this generation's tag
            # (a pause): the new read waits for its last completion, which brings a
            # reconcile, so one port never has two reads.)
            sqe = ur_sqe(u)
            if sqe == NULL:
                u.ctl_pending = True
                continue
            # io_uring_prep_read_multishot() of later liburings.
            io_uring_prep_rw(IORING_OP_READ_MULTISHOT, sqe, <int>idx, NULL, 0, 0)
            sqe.buf_group = UR_BGID
            io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT)
            io_uring_sqe_set_data64(sqe, read_tag(g, idx))
            r.armed = 1
            r.armed_gen = g
    ur_poll(u, sw.stop_efd, POLL_STOP)
    ur_poll(u, u.ctl_efd, POLL_CTL)
    if u.tunnel_fd >= 0:
        ur_poll(u, u.tunnel_fd, POLL_VXLAN)
    if not u.ctl_pending:
        # Everything asked for up to seq is done (a cancelled read may
        # still hold a file: ctl_done waits for those too).
        u.ctl_seen = seq
