# The poll engine: epoll over the port fds, the tunnel's socket and the stop
# eventfd; read() up to BATCH frames from each ready port into its own
# buffers; write() to ports. It writes at once, so it has nothing to settle.
# A paused port stays in the epoll set with no events asked for (pause.pxi).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

from fastpath.frame cimport VNET_HLEN
from fastpath.posix_io cimport (EAGAIN, EINTR, ENOMEM, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL,
                                EPOLL_CTL_MOD, EPOLLERR, EPOLLHUP,
                                EPOLLIN, SYS_read, SYS_write, close, epoll_create1, epoll_ctl, epoll_event, epoll_wait,
                                errno, iovec, pthread_mutex_lock, pthread_mutex_unlock, read, sched_yield, syscall,
                                writev)

cdef enum:
    MAX_EVENTS = 64

# epoll tags of the stop eventfd and the VXLAN socket; port tags are gen << 32 | index.
cdef uint64_t TAG_STOP = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t TAG_VXLAN = 0xFFFFFFFFFFFFFFFEULL

cdef struct poll_engine:
    sw_t *sw
    int epfd
    uint8_t *bufmem
    frame_t frames[BATCH]


# A frame is read and written with the system call itself: libc's read() and
# write() are thread cancellation points and wrap each call in two more
# function calls for it (a tenth of a frame's instructions, bench/instr.py);
# the loop thread is never cancelled. Its fds are non-blocking: a signal
# cannot interrupt a read or write that does not wait (no EINTR).
cdef inline ssize_t frame_read_fd(int fd, uint8_t *buf, size_t n) noexcept nogil:
    return syscall(SYS_read, fd, buf, n)


cdef write_result poll_write(void *eng, uint32_t idx, frame_t *f, const uint8_t *start,
                             uint32_t length) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    if syscall(SYS_write, e.sw.ports[idx].fd, start, <size_t>length) == length:
        return WR_DONE
    return WR_FAILED


cdef write_result poll_writev(void *eng, uint32_t idx, const iovec *iov, int n, uint32_t length) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    return WR_DONE if writev(e.sw.ports[idx].fd, iov, n) == <ssize_t>length else WR_FAILED


cdef void poll_settle(void *eng, frame_t *f) noexcept nogil:
    pass


cdef int poll_port_up(void *eng, uint32_t idx) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    cdef port_t *p = &e.sw.ports[idx]
    cdef epoll_event ev
    ev.events = EPOLLIN
    ev.data.u64 = (<uint64_t>p.gen << 32) | idx
    return errno if epoll_ctl(e.epfd, EPOLL_CTL_ADD, p.fd, &ev) < 0 else 0


cdef void poll_watch(poll_engine *e, uint32_t idx, uint32_t events) noexcept nogil:
    cdef port_t *p = &e.sw.ports[idx]
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = (<uint64_t>p.gen << 32) | idx
    epoll_ctl(e.epfd, EPOLL_CTL_MOD, p.fd, &ev)


cdef void poll_pause(void *eng, uint32_t idx) noexcept nogil:
    # No events: epoll still reports a hang-up or an error (the loop then
    # reads the port and finds it dead), never that frames wait.
    poll_watch(<poll_engine *>eng, idx, 0)


cdef void poll_resume(void *eng, uint32_t idx, bint from_loop) noexcept nogil:
    poll_watch(<poll_engine *>eng, idx, EPOLLIN)  # level-triggered: frames queued meanwhile wake it at once


cdef uint64_t poll_port_down(void *eng, uint32_t idx, bint from_loop) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    if e.sw.ports[idx].state == PORT_UP:  # a dead port's fd left the set when it died
        epoll_ctl(e.epfd, EPOLL_CTL_DEL, e.sw.ports[idx].fd, NULL)
    return 0


cdef bint poll_released(void *eng, uint64_t ticket) noexcept nogil:
    return True


cdef int poll_tunnel_up(void *eng, int fd) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    cdef epoll_event ev
    ev.events = EPOLLIN
    ev.data.u64 = TAG_VXLAN
    return errno if epoll_ctl(e.epfd, EPOLL_CTL_ADD, fd, &ev) < 0 else 0


cdef void poll_rx_port(poll_engine *e, uint32_t idx, uint32_t events, int64_t now) noexcept nogil:
    cdef sw_t *sw = e.sw
    cdef port_t *p = &sw.ports[idx]
    cdef uint32_t nread = 0
    cdef ssize_t n
    cdef bint dead = False
    cdef frame_t *f
    cdef uint32_t lead = VNET_HLEN if p.vnet else 0
    while nread < BATCH:
        f = &e.frames[nread]
        n = frame_read_fd(p.fd, f.data - lead, FRAME_ROOM + lead)
        if n < 0:
            if errno == EAGAIN:  # EWOULDBLOCK is the same value on Linux
                break
            if errno == EINTR:
                continue
            dead = True          # e.g. EBADFD: the TAP's interface is gone
            break
        if n == 0 and events & (EPOLLHUP | EPOLLERR):
            dead = True          # end of file on a socket whose peer closed
            break
        frame_read(f, f.data - lead, n, lead, idx)
        nread += 1
    forward_batch(sw, e.frames, nread, now)
    sw.stats[LS_FRAMES] += nread
    if not nread and events & (EPOLLHUP | EPOLLERR):
        dead = True
    if dead:
        sw_port_down(sw, idx)


cdef int poll_run(void *eng) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    cdef sw_t *sw = e.sw
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i, err = 0
    cdef uint64_t tag, drain
    cdef uint32_t idx
    cdef bint stopping = False
    cdef int64_t t, now, last_sweep = now_ms()
    cdef int timeout = SWEEP_INTERVAL_MS
    while not stopping:
        if timeout and sw.npaused:
            timeout = sw_wait_ms(sw, now_ms(), SWEEP_INTERVAL_MS)  # a paused port is due back
        n = epoll_wait(e.epfd, events, MAX_EVENTS, timeout)
        if n < 0 and errno != EINTR:
            err = errno
            break
        t = now_ns()
        if not sw_turn(sw, t):
            err = sw.inject_err
            break
        now = t // 1000000
        # Busy polling: for busy_poll_ns after traffic, poll instead of
        # sleeping, so the next frame of a conversation does not wait for
        # this thread to be woken up (the larger part of a hop's latency
        # on a small VM). Idle, or when the traffic is bulk, the loop
        # sleeps as usual.
        timeout = 0 if spin_next(&sw.spin, sw.stats, t, n > 0) else SWEEP_INTERVAL_MS
        if n <= 0 and timeout == 0:
            # A poll that found nothing gives the core to whatever else
            # wants it (the containers' own processes, on a small host):
            # spinning uses only time nobody else needs.
            sched_yield()
        if n <= 0 and now - last_sweep < SWEEP_INTERVAL_MS and not sw_resume_due(sw, now):
            continue  # nothing to do: the lock is not taken
        pthread_mutex_lock(&sw.lock)
        sw.stats[LS_WAKEUPS] += 1
        sw_resume_ports(sw, now)
        for i in range(n):
            tag = events[i].data.u64
            if tag == TAG_STOP:
                read(sw.stop_efd, &drain, sizeof(drain))
                stopping = True
                continue
            if tag == TAG_VXLAN:
                tun_rx(sw, now)
                continue
            idx = <uint32_t>(tag & 0xFFFFFFFFULL)
            # The port may have been removed (or its slot reused) after
            # epoll_wait returned: the generation tells.
            if sw.ports[idx].state != PORT_UP or sw.ports[idx].gen != <uint32_t>(tag >> 32):
                continue
            poll_rx_port(e, idx, events[i].events, now)
        if now - last_sweep >= SWEEP_INTERVAL_MS:
            sw_sweep(sw, now)
            last_sweep = now
        pthread_mutex_unlock(&sw.lock)
    if err:
        sw.fail_what = "epoll_wait"
    return err


cdef void poll_free(void *eng) noexcept nogil:
    cdef poll_engine *e = <poll_engine *>eng
    if e == NULL:
        return
    if e.epfd >= 0:
        close(e.epfd)
    free(e.bufmem)
    free(e)


cdef poll_engine *poll_new(sw_t *sw, engine_ops *ops, int *err) noexcept nogil:
    """The poll engine of sw, or NULL with *err set."""
    cdef poll_engine *e = <poll_engine *>calloc(1, sizeof(poll_engine))
    cdef epoll_event ev
    cdef uint32_t i
    if e == NULL:
        err[0] = ENOMEM
        return NULL
    e.sw = sw
    e.bufmem = <uint8_t *>malloc(<size_t>BATCH * BUF_SIZE)
    e.epfd = epoll_create1(EPOLL_CLOEXEC)
    ev.events = EPOLLIN
    ev.data.u64 = TAG_STOP
    if e.bufmem == NULL or e.epfd < 0 or epoll_ctl(e.epfd, EPOLL_CTL_ADD, sw.stop_efd, &ev) < 0:
        err[0] = ENOMEM if e.bufmem == NULL else errno
        poll_free(e)
        return NULL
    for i in range(BATCH):
        e.frames[i].data = e.bufmem + <size_t>i * BUF_SIZE + HEADROOM
    ops.write = poll_write
    ops.writev = poll_writev
    ops.settle = poll_settle
    ops.port_up = poll_port_up
    ops.port_down = poll_port_down
    ops.pause = poll_pause
    ops.resume = poll_resume
    ops.released = poll_released
    ops.tunnel_up = poll_tunnel_up
    ops.run = poll_run
    ops.free = poll_free
    return e
