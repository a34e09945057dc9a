# The io_uring engine.
#
# Each port has one multishot read in flight that draws buffers from a
# shared provided-buffer ring, so the kernel reads frames while the loop
# works and posts one completion per frame. Writes of those frames go on
# the submission queue and leave with the io_uring_enter that waits for
# the next completions. Frames from the tunnel live in buffers of their own
# and are written with write(); super-frames rebuilt by GRO are gathered
# from the batch's buffers with writev().
#
# Every write completes within the submission that carries it: it has
# RWF_NOWAIT, so a full receiver fails it instead of parking it, as the poll
# engine drops rather than waits (a file that refuses the flag is written
# with write() from then on). Writes post a completion only when they fail;
# the rest are accounted when the submission that carried them returns
# ("retired"). A round's buffers go back to the ring just before the
# io_uring_enter that submits the round's writes: the kernel issues those
# writes first, in queue order, and reads into buffers only after them (the
# re-armed reads are queued last, and the completions of armed ones run once
# the submission is done), so the reads of that very call already have every
# buffer.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

from fastpath.frame cimport DROP_RUNT, VNET_GSO_NONE, VNET_HLEN
from fastpath.posix_io cimport (EAGAIN, EBUSY, ECANCELED, EFD_CLOEXEC, EFD_NONBLOCK, EINTR, ENOBUFS, ENOMEM, EOPNOTSUPP,
                                ETIME, POLLERR, POLLHUP, POLLIN, close, errno, eventfd, iovec, poll, pollfd,
                                posix_memalign, pthread_mutex_lock, pthread_mutex_unlock, read, sched_yield, write,
                                writev)
from fastpath.uring cimport (IORING_CQE_BUFFER_SHIFT, IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, IOSQE_CQE_SKIP_SUCCESS,
                             IOSQE_FIXED_FILE, RWF_NOWAIT, __kernel_timespec, io_uring_cq_advance, io_uring_cqe,
                             io_uring_enable_rings, io_uring_peek_batch_cqe, io_uring_prep_write, io_uring_queue_exit,
                             io_uring_sq_ready, io_uring_sqe, io_uring_sqe_set_data64, io_uring_sqe_set_flags,
                             io_uring_submit_and_get_events, io_uring_submit_and_wait_timeout)

# ---- frames ----------------------------------------------------------------------

cdef void ur_forward(uring_engine *u, int64_t now) noexcept nogil:
    forward_batch(u.sw, u.rframes, u.n_rframes, now)
    u.unsubmitted += u.n_rframes  # handled once their writes are submitted
    u.n_rframes = 0


cdef inline void ur_frame(uring_engine *u, port_t *p, uint32_t idx, uint32_t bid, int res,
                          int64_t now) noexcept nogil:
    cdef frame_t *f = &u.rframes[u.n_rframes]
    frame_read(f, ring_buf(u.ubufs, bid), res, VNET_HLEN if p.vnet else 0, idx)
    f.tag = 1
    f.pending = 0
    u.n_rframes += 1
    if u.n_rframes == BATCH:
        ur_forward(u, now)


cdef void ur_read(uring_engine *u, io_uring_cqe *cqe, int64_t now) noexcept nogil:
    cdef sw_t *sw = u.sw
    cdef uint64_t ud = cqe.user_data
    cdef uint32_t idx = <uint32_t>(ud & 0xFFFFFFFFULL)
    cdef uint32_t g = <uint32_t>(ud >> 32) & GEN_MASK
    cdef bint more = (cqe.flags & IORING_CQE_F_MORE) != 0
    cdef int res = cqe.res
    cdef uint32_t bid = NO_BUFFER
    cdef ring_port *r
    cdef port_t *p
    cdef pollfd pfd
    if cqe.flags & IORING_CQE_F_BUFFER:
        bid = cqe.flags >> IORING_CQE_BUFFER_SHIFT
        # Back to the ring after the next submission, with every write of it.
        u.recycle[u.n_recycle] = <uint16_t>bid
        u.n_recycle += 1
    if idx >= sw.max_ports:
        return
    r = &u.rports[idx]
    p = &sw.ports[idx]
    if not (r.armed and r.armed_gen == g):
        if not more and r.cancelling:
            r.cancelling -= 1
            u.cancelling -= 1
            if r.cancelling == 0 and p.state == PORT_UP:
                u.ctl_pending = True  # a paused port's read is done: the reconcile may arm it again
        if res > 0 and bid != NO_BUFFER and p.state == PORT_UP and (p.gen & GEN_MASK) == g:
            # Read before a pause's cancel reached it (pause.pxi): a frame like any other.
            ur_frame(u, p, idx, bid, res, now)
        elif res > 0:
            # A read cancelled because its port went away: whatever it read is dropped.
            u.ustats[US_STALE] += 1
        return
    if not more:
        r.armed = 0
        u.ctl_pending = True  # the reconcile arms it again
    if p.state != PORT_UP or (p.gen & GEN_MASK) != g:
        # Removed since the last reconcile, which cancels the read.
        if res > 0:
            u.ustats[US_STALE] += 1
        u.ctl_pending = True
        return
    if res > 0 and bid != NO_BUFFER:
        ur_frame(u, p, idx, bid, res, now)
        if not more:
            u.ustats[US_READ_REARMS] += 1
        return
    if res == -ENOBUFS:
        # Every buffer is out: the frame waits in the TAP's queue until
        # the reconcile after the next submission arms a read again.
        u.ustats[US_BUFFER_RING_EMPTY] += 1
        u.ustats[US_READ_REARMS] += 1
        return
    if res == 0:
        # End of file on a socket whose peer closed, or an empty datagram.
        pfd.fd = p.fd
        pfd.events = POLLIN
        pfd.revents = 0
        if not (poll(&pfd, 1, 0) > 0 and pfd.revents & (POLLHUP | POLLERR)):
            sw.pctr[<size_t>idx * PC_COUNT + PC_RX_PACKETS] += 1
            sw.pctr[<size_t>idx * PC_COUNT + PC_DROPS + DROP_RUNT] += 1
            u.unsubmitted += 1
            if not more:
                u.ustats[US_READ_REARMS] += 1
            return
    elif res == -EINTR or res == -EAGAIN or res == -ECANCELED:
        u.ustats[US_READ_REARMS] += 1
        return
    # e.g. EBADFD: the TAP's interface is gone. What it read before goes first.
    ur_forward(u, now)
    sw_port_down(sw, idx)


cdef bint ur_completions(uring_engine *u, uint32_t first, uint32_t n, int64_t now) noexcept nogil:
    """Handle n completions from cqes[first]; True when the loop is asked to stop."""
    cdef uint32_t i
    cdef uint64_t ud, drain
    cdef io_uring_cqe *cqe
    cdef bint stop = False
    for i in range(first, first + n):
        cqe = u.cqes[i]
        ud = cqe.user_data
        if ud & UD_KIND == UD_READ:
            ur_read(u, cqe, now)
        elif ud & UD_KIND == UD_POLL:
            if ud & 0xFF == POLL_STOP:
                read(u.sw.stop_efd, &drain, sizeof(drain))
                stop = True
            elif ud & 0xFF == POLL_CTL:
                read(u.ctl_efd, &drain, sizeof(drain))
                u.ctl_pending = True
            else:
                u.tunnel_pending = True
            if not cqe.flags & IORING_CQE_F_MORE:  # a multishot poll can end (e.g. on overflow)
                u.polls &= ~(1 << (ud & 0xFF))
                u.ctl_pending = True  # the reconcile arms it again
        # UD_WRITE: failures were counted before retiring; 0: cancels.
    ur_forward(u, now)
    return stop


# ---- the engine interface ----------------------------------------------------------

cdef uint64_t ur_kick(uring_engine *u) noexcept nogil:
    """Tell the loop that ports or the VTEP changed (lock held); returns a
    ticket that ur_released waits for."""
    cdef uint64_t one = 1
    u.ctl_seq += 1
    write(u.ctl_efd, &one, sizeof(one))
    return u.ctl_seq


cdef write_result ur_write(void *eng, uint32_t idx, frame_t *f, const uint8_t *start,
                           uint32_t length) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    cdef port_t *q = &u.sw.ports[idx]
    cdef ring_port *r = &u.rports[idx]
    cdef io_uring_sqe *sqe
    cdef ring_write *w
    cdef ssize_t n
    if f.tag and r.slot and r.slot_gen == (q.gen & GEN_MASK) and not r.sync_writes:
        if u.wq_head - u.wq_tail == UR_WQ:
            # Too many writes since the last retirement: submit and retire
            # them now. The completions in hand stay where they are (the
            # queue's head has not moved), so peeking again only adds.
            ur_submit_and_retire(u)
        sqe = ur_sqe(u)
        if sqe == NULL:
            return WR_FAILED
        io_uring_prep_write(sqe, <int>idx, start, length, 0)
        sqe.rw_flags = RWF_NOWAIT
        io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE | IOSQE_CQE_SKIP_SUCCESS)
        io_uring_sqe_set_data64(sqe, UD_WRITE | u.wq_head)
        w = &u.wq[u.wq_head & (UR_WQ - 1)]
        w.data = f.data
        w.port = idx
        w.gen = q.gen
        w.len = f.len
        w.superframe = f.vi.gso_type != VNET_GSO_NONE
        w.failed = 0
        w.mirror = (q.cap_dir & CAP_OUT) != 0
        if w.mirror:
            u.mirror_pending = True
        u.wq_head += 1
        f.pending += 1
        return WR_QUEUED
    if not f.tag and io_uring_sq_ready(&u.ring):
        # A frame in buffers of its own (a GRO run, a frame from the tunnel)
        # goes out with write(): ring writes queued before it must leave first.
        ur_submit(u)
    n = write(q.fd, start, length)
    if n < 0 and errno == EINTR:
        n = write(q.fd, start, length)
    return WR_DONE if n == <ssize_t>length else WR_FAILED


cdef write_result ur_writev(void *eng, uint32_t idx, const iovec *iov, int n, uint32_t length) noexcept nogil:
    """A gathered write (a GRO run) goes out with writev(): ring writes queued before it must leave first."""
    cdef uring_engine *u = <uring_engine *>eng
    cdef int fd = u.sw.ports[idx].fd
    cdef ssize_t r
    if io_uring_sq_ready(&u.ring):
        ur_submit(u)
    r = writev(fd, iov, n)
    if r < 0 and errno == EINTR:
        r = writev(fd, iov, n)
    return WR_DONE if r == <ssize_t>length else WR_FAILED


cdef void ur_settle(void *eng, frame_t *f) noexcept nogil:
    """Submit the frame's queued writes before its bytes or headroom change
    (a checksum completed for one output, tunnel headers for another)."""
    if f.pending:
        ur_submit(<uring_engine *>eng)
        f.pending = 0


cdef int ur_port_up(void *eng, uint32_t idx) noexcept nogil:
    ur_kick(<uring_engine *>eng)  # the loop arms a read for it
    return 0


cdef uint64_t ur_port_down(void *eng, uint32_t idx, bint from_loop) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    if from_loop:
        u.ctl_pending = True  # the reconcile lets go of its file
        return 0
    return ur_kick(u)


cdef void ur_pause(void *eng, uint32_t idx) noexcept nogil:
    (<uring_engine *>eng).ctl_pending = True  # the reconcile cancels its read


cdef void ur_resume(void *eng, uint32_t idx, bint from_loop) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    if from_loop:
        u.ctl_pending = True  # the reconcile arms its read again
    else:
        ur_kick(u)


cdef bint ur_released(void *eng, uint64_t ticket) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    return not u.live or u.ctl_done >= ticket


cdef int ur_tunnel_up(void *eng, int fd) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    u.tunnel_fd = fd
    ur_kick(u)  # the loop polls the socket from its ring
    return 0


cdef inline bint ur_wait_failed(int ret) noexcept nogil:
    # A timeout, a signal, or completions that must be reaped first are turns like any other.
    return ret < 0 and ret != -ETIME and ret != -EINTR and ret != -EAGAIN and ret != -EBUSY


cdef int ur_run(void *eng) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    cdef sw_t *sw = u.sw
    cdef io_uring_cqe *cqe
    cdef __kernel_timespec ts
    cdef uint32_t n, first, count
    cdef bint stopping = False
    cdef int64_t t, now, last_sweep = now_ms()
    cdef bint spinning = False
    cdef uint32_t want = 1
    cdef int err = 0
    cdef int ret = io_uring_enable_rings(&u.ring)  # this thread becomes its only submitter
    if ret < 0:
        pthread_mutex_lock(&sw.lock)
        ur_close(u)
        pthread_mutex_unlock(&sw.lock)
        sw.fail_what = "io_uring_enable_rings"
        return -ret
    pthread_mutex_lock(&sw.lock)
    u.live = True
    ur_reconcile(u)
    pthread_mutex_unlock(&sw.lock)
    while not stopping:
        if not u.mirror_pending:
            ur_recycle(u)
        t = now_ns()
        # Never sleep on unsubmitted writes: a frame counts as handled
        # once its writes are out, and under load the submission that
        # carries them also brings the next completions. (A batch wait
        # submits them before it waits.)
        if want > 1 and not (u.tunnel_pending or u.ctl_pending):
            ts.tv_sec = 0
            ts.tv_nsec = u.batch_wait_ns
            ret = io_uring_submit_and_wait_timeout(&u.ring, &cqe, want, &ts, NULL)
            u.ustats[US_BATCH_WAITS] += 1
        elif (spinning or u.tunnel_pending or u.ctl_pending or u.wq_head != u.wq_tail
                or u.unsubmitted):
            ret = io_uring_submit_and_get_events(&u.ring)
        else:
            # Idle: until the next sweep, or the end of the first pause (pause.pxi).
            ts.tv_sec = 0
            ts.tv_nsec = <long long>sw_wait_ms(sw, t // 1000000, SWEEP_INTERVAL_MS) * 1000000
            ret = io_uring_submit_and_wait_timeout(&u.ring, &cqe, 1, &ts, NULL)
        u.ustats[US_SUBMITS] += 1
        if ur_wait_failed(ret):
            err = -ret
            break
        n = io_uring_peek_batch_cqe(&u.ring, u.cqes, UR_CQ)
        t = now_ns()
        if not sw_turn(sw, t):
            err = sw.inject_err
            break
        now = t // 1000000
        # Batch waits: a round that brought UR_BATCH_MIN completions or
        # more means frames come faster than the loop turns round. The
        # next wait then asks for as many as that round brought, for at
        # most batch_wait_ns: with DEFER_TASKRUN the kernel lets them
        # pile up without waking the loop, so a flood is handled in
        # fewer, fuller rounds at less CPU per frame. A lone frame never
        # waits: a round of fewer asks for one, as before.
        want = min(n, UR_BATCH_MAX) if u.batch_wait_ns and n >= UR_BATCH_MIN else 1
        spinning = spin_next(&sw.spin, sw.stats, t, n > 0)
        if n == 0 and spinning:
            sched_yield()  # as in the poll engine: spin on time nobody else needs
        if (n == 0 and u.wq_head == u.wq_tail and not u.unsubmitted and not u.tunnel_pending
                and not u.ctl_pending and now - last_sweep < SWEEP_INTERVAL_MS and not sw_resume_due(sw, now)):
            continue
        pthread_mutex_lock(&sw.lock)
        sw.stats[LS_WAKEUPS] += 1
        ur_retire(u, n)
        if u.mirror_pending:
            # Captured writes are copied when retired: their buffers could
            # not go back before the enter, whose reads may reuse them.
            ur_recycle(u)
            u.mirror_pending = False
        # A burst can bring thousands of completions: the lock is let go
        # between chunks of them, so the control plane never waits for a
        # whole burst (a port it removes meanwhile shows up as stale).
        first = 0
        while first < n:
            count = min(n - first, UR_CHUNK)
            if ur_completions(u, first, count, now):
                stopping = True
            first += count
            if first < n:
                pthread_mutex_unlock(&sw.lock)
                pthread_mutex_lock(&sw.lock)
        io_uring_cq_advance(&u.ring, n)
        if u.tunnel_pending:
            u.tunnel_pending = False
            for _ in range(UR_TUNNEL_ROUNDS):
                if tun_rx(sw, now) < BATCH:
                    break
            else:
                u.tunnel_pending = True  # more is waiting: come back without sleeping
        sw_resume_ports(sw, now)
        if u.ctl_pending:
            ur_reconcile(u)
        if u.cancelling == 0:
            u.ctl_done = u.ctl_seen
        if now - last_sweep >= SWEEP_INTERVAL_MS:
            sw_sweep(sw, now)
            last_sweep = now
        pthread_mutex_unlock(&sw.lock)
    pthread_mutex_lock(&sw.lock)
    if u.wq_head != u.wq_tail or u.unsubmitted:
        # The last round's frames were read and their writes queued: send and
        # account for them before the ring goes. A plain submit runs no read's
        # task work, so it takes no new frame from a port only to drop it.
        ur_submit_and_retire(u)
    ur_close(u)
    pthread_mutex_unlock(&sw.lock)
    if err:
        sw.fail_what = "io_uring_enter"
    return err


cdef void ur_free(void *eng) noexcept nogil:
    cdef uring_engine *u = <uring_engine *>eng
    if u == NULL:
        return
    if u.up:  # made but never run
        io_uring_queue_exit(&u.ring)
    if u.ctl_efd >= 0:
        close(u.ctl_efd)
    free(u.ubufs)
    free(u.recycle)
    free(u.rports)
    free(u.wq)
    free(u.cqes)
    free(u.bring)
    free(u)


cdef uring_engine *ur_new(sw_t *sw, engine_ops *ops, uint32_t n_bufs, int64_t batch_wait_ns,
                          int *err) noexcept nogil:
    """The io_uring engine of sw, its ring set up but disabled (failures show
    here, at construction), or NULL with *err set."""
    cdef uring_engine *u = <uring_engine *>calloc(1, sizeof(uring_engine))
    if u == NULL:
        err[0] = ENOMEM
        return NULL
    u.sw = sw
    u.ctl_efd = u.tunnel_fd = -1
    u.n_bufs = n_bufs
    u.batch_wait_ns = batch_wait_ns
    u.ubufs = <uint8_t *>malloc(<size_t>n_bufs * BUF_SIZE)
    u.recycle = <uint16_t *>malloc(n_bufs * sizeof(uint16_t))
    u.rports = <ring_port *>calloc(sw.max_ports, sizeof(ring_port))
    u.wq = <ring_write *>calloc(UR_WQ, sizeof(ring_write))
    u.cqes = <io_uring_cqe **>malloc(UR_CQ * sizeof(io_uring_cqe *))
    if posix_memalign(<void **>&u.bring, 4096, max(4096, n_bufs * 16)) != 0:
        u.bring = NULL
    if not (u.ubufs and u.recycle and u.rports and u.wq and u.cqes and u.bring):
        err[0] = ENOMEM
        ur_free(u)
        return NULL
    u.ctl_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    err[0] = errno if u.ctl_efd < 0 else ur_open(u, sw.max_ports)
    if err[0]:
        ur_free(u)
        return NULL
    ops.write = ur_write
    ops.writev = ur_writev
    ops.settle = ur_settle
    ops.port_up = ur_port_up
    ops.port_down = ur_port_down
    ops.pause = ur_pause
    ops.resume = ur_resume
    ops.released = ur_released
    ops.tunnel_up = ur_tunnel_up
    ops.run = ur_run
    ops.free = ur_free
    return u
