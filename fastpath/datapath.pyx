# cython: language_level=3
"""The forwarding loop.

One thread runs Datapath.run(), which releases the GIL for good and loops:
epoll_wait over the port fds, then, holding `lock`, read up to BATCH frames
from each ready port into preallocated buffers and forward each: parse, learn
the source, look up the destination, write to one port or flood to the
network. The control plane takes the same lock (between batches) to add or
remove ports and change the FDB, and reads counters without it: every counter
has one writer, the loop, and 64-bit aligned loads do not tear.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fastpath.frame cimport (DROP_BAD_VNET, DROP_GSO_UNSUPPORTED, DROP_NONE, DROP_REASONS, DROP_RUNT, DROP_SAME_PORT,
                             DROP_TUNNEL_MTU, DROP_VLAN_TAGGED, ETH_HLEN, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_HLEN,
                             complete_csum, drop_reason, eth_info, mac_is_group, parse_eth, parse_vnet)
from fastpath.gro cimport gro_append, gro_candidate, gro_finish, gro_pair
from fastpath.gso cimport GSO_ERRORS, GSO_SEG_ROOM, gso_segment
from fastpath.mactable cimport (MT_MOVED, MT_REFUSED, MT_STATIC, OUT_NONE, OUT_PEER, key_network, mac_entry,
                                mac_key, mt_delete, mt_result,
                                mt_expired, mt_flush, mt_free, mt_init, mt_learn, mt_lookup, mt_peek,
                                mt_set_static, mt_sweep)
from fastpath.posix_io cimport (AF_INET, CLOCK_MONOTONIC, CLOCK_REALTIME, CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN,
                                CMSG_NXTHDR,
                                CMSG_SPACE, cmsghdr, htons, iovec, msghdr, sendmsg, writev, EAGAIN, ECANCELED,
                                EFD_CLOEXEC, EFD_NONBLOCK, EINTR, ENOBUFS, EOPNOTSUPP, EPOLL_CLOEXEC, ETIME, POLLERR, POLLHUP, POLLIN,
                                poll, pollfd, posix_memalign, sched_yield,
                                EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLERR, EPOLLHUP, EPOLLIN, MSG_DONTWAIT,
                                SO_ATTACH_FILTER, SOL_SOCKET, clock_gettime, close, epoll_create1, epoll_ctl,
                                epoll_event, epoll_wait, errno, eventfd, pthread_mutex_destroy, pthread_mutex_init,
                                pthread_mutex_lock, pthread_mutex_unlock, read, recvmmsg, sendmmsg, setsockopt,
                                sock_filter, sock_fprog, sockaddr_in, timespec, write)
from fastpath.uring cimport (IORING_CQE_BUFFER_SHIFT, IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, IORING_FEAT_EXT_ARG,
                             IORING_OP_READ_MULTISHOT, IORING_SETUP_CQSIZE, IORING_SETUP_DEFER_TASKRUN,
                             IORING_SETUP_R_DISABLED, io_uring_enable_rings,
                             IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_SUBMIT_ALL, IOSQE_BUFFER_SELECT,
                             IOSQE_CQE_SKIP_SUCCESS, IOSQE_FIXED_FILE, RWF_NOWAIT, __kernel_timespec, io_uring,
                             io_uring_buf_reg, io_uring_buf_ring, io_uring_buf_ring_add, io_uring_buf_ring_advance,
                             io_uring_buf_ring_init, io_uring_buf_ring_mask, io_uring_cq_advance, io_uring_cqe,
                             io_uring_free_probe, io_uring_get_probe_ring, io_uring_get_sqe,
                             io_uring_opcode_supported, io_uring_params, io_uring_peek_batch_cqe,
                             io_uring_prep_cancel64, io_uring_prep_poll_multishot, io_uring_prep_rw,
                             io_uring_prep_write, io_uring_probe, io_uring_queue_exit, io_uring_queue_init_params,
                             io_uring_register_buf_ring, io_uring_register_files_sparse,
                             io_uring_register_files_update, io_uring_sqe, io_uring_sqe_set_data64,
                             io_uring_sqe_set_flags, io_uring_sq_ready, io_uring_submit,
                             io_uring_submit_and_get_events,
                             io_uring_submit_and_wait_timeout)
from fastpath.vxlan cimport (UDP_HLEN, VX_BAD_FLAGS, VX_DROPS, VX_INNER_MALFORMED, VX_OK, VX_TRUNCATED,
                             VX_UNKNOWN_PEER, VX_UNKNOWN_VNI, VXLAN_FLAG_I, VXLAN_HLEN, VXLAN_IP_OVERHEAD,
                             flow_hash, udp_write, vxlan_vni, vxlan_write)

cdef extern from "<errno.h>" nogil:
    enum: EBUSY

import ipaddress
import os
import re
import socket
import time

from fastpath.frame import DROP_NAMES
from fastpath.mactable import format_mac, parse_mac

# epoll tags of the stop eventfd and the VXLAN socket; port tags are gen << 32 | index.
cdef uint64_t TAG_STOP = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t TAG_VXLAN = 0xFFFFFFFFFFFFFFFEULL

# io_uring user_data: the kind in the top two bits. A port's read carries
# its generation (30 bits) and index, a write its sequence number, a poll
# which fd it watches. 0 marks completions nobody waits for (cancels).
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
cdef enum:
    FDB_CHUNK = 4096               # slots fdb_entries reads per hold of the lock

cdef struct fdb_row:               # an entry as fdb_entries copies it out from under the lock
    uint64_t key
    uint32_t out
    uint32_t flags
    int64_t age_ms
IO_MODES = ("poll", "uring")
URING_COUNTER_NAMES = ("submits", "read_rearms", "buffer_ring_empty", "stale_completions", "write_errors",
                       "batch_waits")
cdef uint32_t ENCAP_LEN = UDP_HLEN + VXLAN_HLEN

PEER_FLAG = <uint32_t>OUT_PEER
VX_DROP_NAMES = ("ok", "truncated", "bad_flags", "unknown_vni", "unknown_peer", "inner_malformed")
assert len(VX_DROP_NAMES) == VX_DROPS
GSO_ERROR_NAMES = ("ok", "unsupported", "malformed", "too_many_segments")
EVENT_KINDS = (None, "mac_moved", "table_full", "unknown_peer", "unknown_vni")
PEER_COUNTER_NAMES = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "tx_errors")

PORT_COUNTER_NAMES = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "flooded", "tx_errors")
HIST_BOUNDS = (1, 3, 7, 15, 31, 63)   # upper bound of each frames-per-batch bucket; the last is open
PORT_STATES = ("free", "up", "dead")
# What ended the loop, by FAILED_* code, for run()'s OSError.
LOOP_FAILURES = (None, "epoll_wait", "io_uring wait", "injected failure")


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t now_ms() noexcept nogil:
    return now_ns() // 1000000


def drop_all_input(int fd) -> None:
    """Attach a filter that accepts nothing to a socket only used to send."""
    cdef sock_filter drop_all[1]
    cdef sock_fprog prog
    drop_all[0].code = 0x06  # BPF_RET | BPF_K: return 0 bytes, i.e. drop
    drop_all[0].jt = drop_all[0].jf = 0
    drop_all[0].k = 0
    prog.len = 1
    prog.filter = drop_all
    if setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0:
        raise OSError(errno, f"cannot attach a filter to fd {fd}: {os.strerror(errno)}")


cdef inline void frame_read(frame_t *f, uint8_t *start, ssize_t n, uint32_t lead, uint32_t port) noexcept nogil:
    """Make a frame of n bytes read at start from a port whose frames are led
    by `lead` bytes of virtio-net header (0 or VNET_HLEN)."""
    if lead:
        if n < <ssize_t>lead:
            n = lead  # a frame too short for its header: an empty, runt frame
        memcpy(f.vnet, start, VNET_HLEN)
    else:
        memset(f.vnet, 0, VNET_HLEN)
    f.data = start + lead
    f.len = <uint32_t>(n - lead)
    f.in_port = port
    f.encap_vni = 0


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
    """None when the io_uring datapath can run here, else why not (one line)."""
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


cdef inline uint32_t hist_bucket(uint32_t n) noexcept nogil:
    cdef uint32_t b = 0
    while n > 1 and b < HIST_BUCKETS - 1:
        n >>= 1
        b += 1
    return b


def kernel_takes_udp_superframes() -> bool:
    """Whether this kernel's TAP takes UDP super-frames (a virtio-net header
    with GSO_UDP_L4) from userspace: Linux 6.2 gave TAP its UDP segmentation
    offload. Before that, UDP frames go out one by one."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (6, 2)


cdef class Datapath:
    """The switch's data plane. All methods but run() are for the control plane."""

    def __cinit__(self, uint32_t max_ports=1024, uint32_t mac_table_size=65536, double mac_aging_s=300.0,
                  uint32_t max_networks=4096, uint32_t max_peers=1024, uint32_t busy_poll_us=0,
                  str io_mode="poll", uint32_t ring_buffers=UR_BUFS, uint32_t batch_wait_us=0, gro_udp=None):
        cdef uint32_t i
        cdef uint64_t seed = int.from_bytes(os.urandom(8), "little")
        self.epfd = self.stop_efd = self.notify_efd = self.vx_rx_fd = self.vx_tx_fd = self.ctl_efd = -1
        if io_mode not in IO_MODES:
            raise ValueError(f"io_mode {io_mode!r} is not one of {', '.join(IO_MODES)}")
        if io_mode == "uring":
            reason = uring_unavailable()
            if reason is not None:
                raise OSError(reason)  # the reason alone: the control plane words the refusal
        self.uring = io_mode == "uring"
        if ring_buffers < 1 or ring_buffers > 32768 or ring_buffers & (ring_buffers - 1):
            raise ValueError("ring_buffers must be a power of two in [1, 32768]")
        self.n_bufs = ring_buffers
        if max_ports < 1 or max_ports >= OUT_PEER:
            raise ValueError(f"max_ports must be in [1, {<uint32_t>OUT_PEER - 1}]")
        if max_networks < 1 or max_networks > VNI_SLOTS // 2:
            raise ValueError(f"max_networks must be in [1, {VNI_SLOTS // 2}]")
        if max_peers < 1 or max_peers >= OUT_PEER:
            raise ValueError("max_peers is out of range")
        if mac_aging_s <= 0:
            raise ValueError("mac_aging_s must be positive")
        mt_init(&self.mt, mac_table_size, <int64_t>(mac_aging_s * 1000), seed)
        self.busy_poll_ns = <int64_t>busy_poll_us * 1000
        self.gro_udp = kernel_takes_udp_superframes() if gro_udp is None else bool(gro_udp)
        if batch_wait_us >= 1000000:
            raise ValueError("batch_wait_us must be below 1000000")
        self.batch_wait_ns = <int64_t>batch_wait_us * 1000
        self.max_ports = max_ports
        self.max_networks = max_networks
        self.ports = <port_t *>calloc(max_ports, sizeof(port_t))
        self.pctr = <uint64_t *>calloc(<size_t>max_ports * PC_COUNT, sizeof(uint64_t))
        self.net_head = <int32_t *>malloc((max_networks + 1) * sizeof(int32_t))
        self.bufmem = <uint8_t *>malloc(<size_t>BATCH * BUF_SIZE)
        self.gso_scratch_len = FRAME_ROOM + TXQ * GSO_SEG_ROOM
        self.gso_scratch = <uint8_t *>malloc(self.gso_scratch_len)
        self.gro_mem = <uint8_t *>malloc(BUF_SIZE)
        self.gso_train = <uint8_t *>malloc(FRAME_ROOM + TXQ * (VXLAN_HLEN + GSO_SEG_ROOM))
        self.n_gso = 0
        memset(&self.gro, 0, sizeof(self.gro))
        memset(&self.gro_frame, 0, sizeof(self.gro_frame))
        if self.gro_mem != NULL:
            self.gro.buf = self.gro_mem + HEADROOM
            self.gro.cap = 0xFFFF + ETH_HLEN
            self.gro_frame.data = self.gro.buf
            self.gro_frame.in_port = NO_PORT
        self.max_peers = max_peers
        self.peers = <peer_t *>calloc(max_peers, sizeof(peer_t))
        self.pectr = <uint64_t *>calloc(<size_t>max_peers * PE_COUNT, sizeof(uint64_t))
        self.net_peer_head = <int32_t *>malloc((max_networks + 1) * sizeof(int32_t))
        self.net_vni = <uint32_t *>calloc(max_networks + 1, sizeof(uint32_t))
        if not (self.ports and self.pctr and self.net_head and self.bufmem and self.peers and self.pectr
                and self.net_peer_head and self.net_vni and self.gso_scratch and self.gro_mem and self.gso_train):
            raise MemoryError("cannot allocate the datapath tables")
        if self.uring:
            self.ubufs = <uint8_t *>malloc(<size_t>self.n_bufs * BUF_SIZE)
            self.recycle = <uint16_t *>malloc(self.n_bufs * sizeof(uint16_t))
            self.rports = <ring_port *>calloc(max_ports, sizeof(ring_port))
            self.wq = <ring_write *>calloc(UR_WQ, sizeof(ring_write))
            self.cqes = <io_uring_cqe **>malloc(UR_CQ * sizeof(io_uring_cqe *))
            if posix_memalign(<void **>&self.bring, 4096, max(4096, self.n_bufs * 16)) != 0:
                self.bring = NULL
            if not (self.ubufs and self.recycle and self.rports and self.wq and self.cqes and self.bring):
                raise MemoryError("cannot allocate the io_uring datapath's buffers")
            self.ctl_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.ctl_efd < 0:
                raise OSError(errno, "cannot create the datapath's control eventfd")
            if self._ring_open() < 0:
                err, self.ring_error = self.ring_error, 0
                raise OSError(err, f"cannot set up the io_uring datapath: {os.strerror(err)}")
        for i in range(max_networks + 1):
            self.net_head[i] = -1
            self.net_peer_head[i] = -1
        memset(self.vni_map, 0, sizeof(self.vni_map))
        memset(self.vx_drops, 0, sizeof(self.vx_drops))
        memset(self.txq, 0, sizeof(self.txq))
        memset(self.rxq, 0, sizeof(self.rxq))
        self.txq_len = 0
        for i in range(BATCH):
            # Datagrams land so that the inner frame starts at frames[i].data.
            self.rxiov[i].iov_base = self.bufmem + <size_t>i * BUF_SIZE + HEADROOM - VXLAN_HLEN
            self.rxiov[i].iov_len = FRAME_ROOM + VXLAN_HLEN
            self.rxq[i].msg_hdr.msg_iov = &self.rxiov[i]
            self.rxq[i].msg_hdr.msg_iovlen = 1
            self.rxq[i].msg_hdr.msg_name = &self.rxaddr[i]
        for i in range(TXQ):
            self.txq[i].msg_hdr.msg_iov = &self.txiov[i]
            self.txq[i].msg_hdr.msg_iovlen = 1
            self.txq[i].msg_hdr.msg_name = &self.txaddr[i]
            self.txq[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            self.txaddr[i].sin_family = AF_INET
            self.txaddr[i].sin_port = 0  # ignored by raw sockets
        for i in range(BATCH):
            self.frames[i].data = self.bufmem + <size_t>i * BUF_SIZE + HEADROOM
        memset(self.stats, 0, sizeof(self.stats))
        # Visit the whole slot array about once per aging period.
        self.sweep_budget = <uint32_t>max(64, (self.mt.mask + 1) * SWEEP_INTERVAL_MS // max(1, self.mt.aging_ms) + 1)
        pthread_mutex_init(&self.lock, NULL)
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.notify_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.epfd < 0 or self.stop_efd < 0 or self.notify_efd < 0:
            raise OSError(errno, "cannot create the datapath's epoll and eventfds")
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = TAG_STOP
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.stop_efd, &ev) < 0:
            raise OSError(errno, "epoll_ctl on the stop eventfd failed")

    def __dealloc__(self):
        if self.ring_up:  # made but never run
            io_uring_queue_exit(&self.ring)
        for fd in (self.epfd, self.stop_efd, self.notify_efd, self.ctl_efd):
            if fd >= 0:
                close(fd)
        if self.ports != NULL:
            pthread_mutex_destroy(&self.lock)
        mt_free(&self.mt)
        free(self.ports)
        free(self.pctr)
        free(self.net_head)
        free(self.bufmem)
        free(self.peers)
        free(self.pectr)
        free(self.net_peer_head)
        free(self.net_vni)
        free(self.gso_scratch)
        free(self.gro_mem)
        free(self.gso_train)
        free(self.ubufs)
        free(self.recycle)
        free(self.rports)
        free(self.wq)
        free(self.cqes)
        free(self.bring)

    # ---- the loop (GIL released) -------------------------------------------------

    def run(self) -> None:
        """Forward frames until stop() is called. Blocks; call it from a thread."""
        if self.running:
            raise RuntimeError("the datapath loop is already running")
        if self.uring and not self.ring_up:
            raise RuntimeError("an io_uring datapath runs once (its ring is bound to the thread that ran it)")
        self.running = True
        self.loop_err = 0
        self.loop_failed_in = FAILED_NONE
        try:
            with nogil:
                if self.uring:
                    self._loop_uring()
                else:
                    self._loop()
        finally:
            self.running = False
        if self.ring_error:
            err, self.ring_error = self.ring_error, 0
            raise OSError(err, f"cannot start the io_uring datapath: {os.strerror(err)}")
        if self.loop_err:
            err, what = self.loop_err, LOOP_FAILURES[self.loop_failed_in]
            self.loop_err = 0
            raise OSError(err, f"datapath loop failed: {what}: {os.strerror(err)}")

    @property
    def last_turn_ns(self) -> int:
        """CLOCK_MONOTONIC ns at the start of the loop's latest turn (0 before its first).
        The loop turns at least every SWEEP_INTERVAL_MS, idle or not."""
        return self.turn_ns

    def inject_failure(self, int err) -> None:
        """For tests of a supervisor: the loop ends at its next turn as if its
        wait had failed with errno `err`, so run() raises OSError(err, ...)."""
        if err <= 0:
            raise ValueError(f"inject_failure needs a positive errno, got {err}")
        self.inject_err = err

    @property
    def io_mode(self) -> str:
        return "uring" if self.uring else "poll"

    def stop(self) -> None:
        """Ask run() to return after the batch in hand."""
        cdef uint64_t one = 1
        write(self.stop_efd, &one, sizeof(one))

    cdef void _loop(self) noexcept nogil:
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i
        cdef uint64_t tag, drain
        cdef uint32_t idx
        cdef bint stopping = False
        cdef int64_t t, now, last_sweep = now_ms()
        cdef int64_t spin_until = 0
        cdef int timeout = SWEEP_INTERVAL_MS
        while not stopping:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, timeout)
            if n < 0 and errno != EINTR:
                self._loop_failed(FAILED_EPOLL_WAIT, errno)
                break
            t = now_ns()
            self.turn_ns = t
            if self.inject_err:
                self._loop_failed(FAILED_INJECTED, self.inject_err)
                break
            now = t // 1000000
            # Busy polling: for busy_poll_ns after traffic, poll instead of
            # sleeping, so the next frame of a conversation does not wait for
            # this thread to be woken up (the larger part of a hop's latency
            # on a small VM). Idle, the loop sleeps as usual.
            if n > 0 and self.busy_poll_ns:
                spin_until = t + self.busy_poll_ns
            timeout = 0 if t < spin_until else SWEEP_INTERVAL_MS
            if n <= 0 and timeout == 0:
                # A poll that found nothing gives the core to whatever else
                # wants it (the containers' own processes, on a small host):
                # spinning uses only time nobody else needs.
                sched_yield()
            if n <= 0 and now - last_sweep < SWEEP_INTERVAL_MS:
                continue  # nothing to do: the lock is not taken
            pthread_mutex_lock(&self.lock)
            self.stats[LS_WAKEUPS] += 1
            for i in range(n):
                tag = events[i].data.u64
                if tag == TAG_STOP:
                    read(self.stop_efd, &drain, sizeof(drain))
                    stopping = True
                    continue
                if tag == TAG_VXLAN:
                    self._rx_tunnel(now)
                    continue
                idx = <uint32_t>(tag & 0xFFFFFFFFULL)
                # The port may have been removed (or its slot reused) after
                # epoll_wait returned: the generation tells.
                if self.ports[idx].state != PORT_UP or self.ports[idx].gen != <uint32_t>(tag >> 32):
                    continue
                self._rx_port(idx, events[i].events, now)
            if now - last_sweep >= SWEEP_INTERVAL_MS:
                self.stats[LS_SWEPT] += mt_sweep(&self.mt, now, self.sweep_budget)
                last_sweep = now
            pthread_mutex_unlock(&self.lock)

    # ---- the io_uring mode -----------------------------------------------------------
    #
    # Each port has one multishot read in flight that draws buffers from a
    # shared provided-buffer ring, so the kernel reads frames while the loop
    # works and posts one completion per frame. Writes of those frames go on
    # the submission queue and leave with the io_uring_enter that waits for
    # the next completions. The frame logic (_forward and below) is the
    # poll mode's: only where frames come from and how they are written
    # differs. Frames from the tunnel, and super-frames rebuilt by GRO, live
    # in the loop's own buffers and are written with write() as in poll mode.
    #
    # Every write completes within the submission that carries it: it has
    # RWF_NOWAIT, so a full receiver fails it instead of parking it, as poll
    # mode drops rather than waits (a file that refuses the flag is written
    # with write() from then on). Writes post a completion only when they
    # fail; the rest are counted when the submission that carried them
    # returns ("retired"). A round's buffers go
    # back to the ring just before the io_uring_enter that submits the
    # round's writes: the kernel issues those writes first, in queue order,
    # and reads into buffers only after them (the re-armed reads are queued
    # last, and the completions of armed ones run once the submission is
    # done), so the reads of that very call already have every buffer.

    cdef void _loop_uring(self) noexcept nogil:
        cdef io_uring_cqe *cqe
        cdef __kernel_timespec ts
        cdef uint32_t n, first, count
        cdef bint stopping = False
        cdef int64_t t, now, last_sweep = now_ms()
        cdef int64_t spin_until = 0
        cdef uint32_t want = 1
        cdef int wait_ret
        cdef int ret = io_uring_enable_rings(&self.ring)  # this thread becomes its only submitter
        if ret < 0:
            self.ring_error = -ret
            pthread_mutex_lock(&self.lock)
            self._ring_close()
            pthread_mutex_unlock(&self.lock)
            return
        pthread_mutex_lock(&self.lock)
        self.ring_live = True
        self._ring_reconcile()
        pthread_mutex_unlock(&self.lock)
        while not stopping:
            if not self.mirror_pending:
                self._ring_recycle()
            t = now_ns()
            # Never sleep on unsubmitted writes: a frame counts as handled
            # once its writes are out, and under load the submission that
            # carries them also brings the next completions. (A batch wait
            # submits them before it waits.)
            if want > 1 and not (self.tunnel_pending or self.ctl_pending):
                ts.tv_sec = 0
                ts.tv_nsec = self.batch_wait_ns
                wait_ret = io_uring_submit_and_wait_timeout(&self.ring, &cqe, want, &ts, NULL)
                self.ustats[US_BATCH_WAITS] += 1
            elif (t < spin_until or self.tunnel_pending or self.ctl_pending or self.wq_head != self.wq_tail
                    or self.unsubmitted):
                wait_ret = io_uring_submit_and_get_events(&self.ring)
            else:
                ts.tv_sec = 0
                ts.tv_nsec = SWEEP_INTERVAL_MS * 1000000
                wait_ret = io_uring_submit_and_wait_timeout(&self.ring, &cqe, 1, &ts, NULL)
            self.ustats[US_SUBMITS] += 1
            # A timeout, a signal or a passing shortage (EAGAIN, EBUSY) is a turn like any other.
            if wait_ret < 0 and -wait_ret not in (ETIME, EINTR, EAGAIN, EBUSY):
                self._loop_failed(FAILED_RING_WAIT, -wait_ret)
                break
            n = io_uring_peek_batch_cqe(&self.ring, self.cqes, UR_CQ)
            t = now_ns()
            now = t // 1000000
            self.turn_ns = t
            if self.inject_err:
                self._loop_failed(FAILED_INJECTED, self.inject_err)
                break
            # Batch waits: a round that brought UR_BATCH_MIN completions or
            # more means frames come faster than the loop turns round. The
            # next wait then asks for as many as that round brought, for at
            # most batch_wait_ns: with DEFER_TASKRUN the kernel lets them
            # pile up without waking the loop, so a flood is handled in
            # fewer, fuller rounds at less CPU per frame. A lone frame never
            # waits: a round of fewer asks for one, as before.
            want = min(n, UR_BATCH_MAX) if self.batch_wait_ns and n >= UR_BATCH_MIN else 1
            if n and self.busy_poll_ns:
                spin_until = t + self.busy_poll_ns
            elif n == 0 and t < spin_until:
                sched_yield()  # as in poll mode: spin on time nobody else needs
            if (n == 0 and self.wq_head == self.wq_tail and not self.unsubmitted and not self.tunnel_pending
                    and not self.ctl_pending and now - last_sweep < SWEEP_INTERVAL_MS):
                continue
            pthread_mutex_lock(&self.lock)
            self.stats[LS_WAKEUPS] += 1
            self._ring_retire(n)
            if self.mirror_pending:
                # Captured writes are copied when retired: their buffers could
                # not go back before the enter, whose reads may reuse them.
                self._ring_recycle()
                self.mirror_pending = False
            # A burst can bring thousands of completions: the lock is let go
            # between chunks of them, so the control plane never waits for a
            # whole burst (a port it removes meanwhile shows up as stale).
            first = 0
            while first < n:
                count = min(n - first, UR_CHUNK)
                if self._ring_completions(first, count, now):
                    stopping = True
                first += count
                if first < n:
                    pthread_mutex_unlock(&self.lock)
                    pthread_mutex_lock(&self.lock)
            io_uring_cq_advance(&self.ring, n)
            if self.tunnel_pending:
                self.tunnel_pending = False
                for _ in range(UR_TUNNEL_ROUNDS):
                    if self._rx_tunnel(now) < BATCH:
                        break
                else:
                    self.tunnel_pending = True  # more is waiting: come back without sleeping
            if self.ctl_pending:
                self._ring_reconcile()
            if self.cancelling == 0:
                self.ctl_done = self.ctl_seen
            if now - last_sweep >= SWEEP_INTERVAL_MS:
                self.stats[LS_SWEPT] += mt_sweep(&self.mt, now, self.sweep_budget)
                last_sweep = now
            pthread_mutex_unlock(&self.lock)
        pthread_mutex_lock(&self.lock)
        if self.wq_head != self.wq_tail or self.unsubmitted:
            # The last round's frames were read and their writes queued: send and count
            # them before the ring goes. A plain submit runs no read's task work, so it
            # takes no new frame from a port only to drop it.
            self._ring_submit_and_retire()
        self._ring_close()
        pthread_mutex_unlock(&self.lock)

    cdef void _loop_failed(self, int failed_in, int err) noexcept nogil:
        self.loop_failed_in = failed_in
        self.loop_err = err
        self.inject_err = 0

    cdef int _ring_open(self) noexcept nogil:
        """Set the ring up, disabled: the loop thread enables it and so
        becomes its single issuer. Failures show here, at construction."""
        cdef io_uring_params params
        cdef io_uring_buf_reg reg
        cdef int ret
        cdef uint32_t i
        ring_params(&params)
        params.flags |= IORING_SETUP_R_DISABLED
        ret = io_uring_queue_init_params(UR_SQ, &self.ring, &params)
        if ret < 0:
            self.ring_error = -ret
            return -1
        self.ring_up = True
        # One fixed-file slot per port index: no file lookup per read or write.
        ret = io_uring_register_files_sparse(&self.ring, self.max_ports)
        if ret == 0:
            memset(&reg, 0, sizeof(reg))
            reg.ring_addr = <uint64_t>self.bring
            reg.ring_entries = self.n_bufs
            reg.bgid = UR_BGID
            ret = io_uring_register_buf_ring(&self.ring, &reg, 0)
        if ret < 0:
            self.ring_error = -ret
            self._ring_close()
            return -1
        io_uring_buf_ring_init(self.bring)
        for i in range(self.n_bufs):
            self.recycle[i] = <uint16_t>i
        self.n_recycle = self.n_bufs
        self._ring_recycle()
        return 0

    cdef void _ring_close(self) noexcept nogil:
        io_uring_queue_exit(&self.ring)  # cancels what is in flight and lets go of every file
        self.ring_up = self.ring_live = False
        self.ctl_done = self.ctl_seq  # nobody waits for the loop any more

    cdef void _ring_submit(self) noexcept nogil:
        """Send what is queued on its way now, without waiting for anything."""
        io_uring_submit(&self.ring)
        self.ustats[US_SUBMITS] += 1

    cdef void _ring_submit_and_retire(self) noexcept nogil:
        """Send the queued writes and count them now: each completes within
        its submission, and a failed one has posted its completion."""
        self._ring_submit()
        self._ring_retire(io_uring_peek_batch_cqe(&self.ring, self.cqes, UR_CQ))

    cdef io_uring_sqe *_ring_sqe(self) noexcept nogil:
        cdef io_uring_sqe *sqe = io_uring_get_sqe(&self.ring)
        if sqe == NULL:  # the submission queue is full: send it on its way
            self._ring_submit()
            sqe = io_uring_get_sqe(&self.ring)
        return sqe

    cdef void _ring_poll(self, int fd, uint32_t which) noexcept nogil:
        """Arm the multishot poll `which` (POLL_*) on fd unless it is armed."""
        cdef io_uring_sqe *sqe
        if self.polls & (1 << which):
            return
        sqe = self._ring_sqe()
        if sqe == NULL:
            self.ctl_pending = True  # the next reconcile tries again
            return
        io_uring_prep_poll_multishot(sqe, fd, POLLIN)
        io_uring_sqe_set_data64(sqe, UD_POLL | which)
        self.polls |= 1 << which

    cdef void _ring_reconcile(self) noexcept nogil:
        """Bring the ring in line with the port table: cancel the reads of
        ports that went away, swap fixed files, arm a read for every port
        that has none (new, or its read ended)."""
        cdef uint32_t idx, g
        cdef ring_port *u
        cdef port_t *p
        cdef io_uring_sqe *sqe
        cdef bint want
        cdef int fd
        cdef uint64_t seq = self.ctl_seq
        self.ctl_pending = False
        if io_uring_sq_ready(&self.ring):
            # Queued writes name ports by fixed-file slot: they must leave
            # before a slot changes hands, or a port added since they were
            # decided (in the lock's gap between chunks) would get them.
            self._ring_submit()
        for idx in range(self.max_ports):
            p = &self.ports[idx]
            u = &self.rports[idx]
            want = p.state == PORT_UP
            g = p.gen & GEN_MASK
            if u.armed and (not want or u.armed_gen != g):
                sqe = self._ring_sqe()
                if sqe == NULL:
                    self.ctl_pending = True
                    continue
                io_uring_prep_cancel64(sqe, read_tag(u.armed_gen, idx), 0)
                io_uring_sqe_set_data64(sqe, 0)
                u.armed = 0
                u.cancelling += 1
                self.cancelling += 1
            if u.slot and (not want or u.slot_gen != g):
                fd = -1
                io_uring_register_files_update(&self.ring, idx, &fd, 1)
                u.slot = 0
            if not want:
                continue
            if not u.slot:
                fd = p.fd
                if io_uring_register_files_update(&self.ring, idx, &fd, 1) != 1:
                    self._port_down(idx)
                    continue
                u.slot = 1
                u.slot_gen = g
                u.sync_writes = 0
            if not u.armed:
                sqe = self._ring_sqe()
                if sqe == NULL:
                    self.ctl_pending = True
                    continue
                # io_uring_prep_read_multishot() of later liburings.
                io_uring_prep_rw(IORING_OP_READ_MULTISHOT, sqe, <int>idx, NULL, 0, 0)
                sqe.buf_group = UR_BGID
                io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT)
                io_uring_sqe_set_data64(sqe, read_tag(g, idx))
                u.armed = 1
                u.armed_gen = g
        self._ring_poll(self.stop_efd, POLL_STOP)
        self._ring_poll(self.ctl_efd, POLL_CTL)
        if self.vx_rx_fd >= 0:
            self._ring_poll(self.vx_rx_fd, POLL_VXLAN)
        if not self.ctl_pending:
            # Everything asked for up to seq is done (a cancelled read may
            # still hold a file: ctl_done waits for those too).
            self.ctl_seen = seq

    cdef bint _ring_completions(self, uint32_t first, uint32_t n, int64_t now) noexcept nogil:
        """Handle n completions from cqes[first]; True when the loop is asked to stop."""
        cdef uint32_t i
        cdef uint64_t ud, drain
        cdef io_uring_cqe *cqe
        cdef bint stop = False
        for i in range(first, first + n):
            cqe = self.cqes[i]
            ud = cqe.user_data
            if ud & UD_KIND == UD_READ:
                self._ring_read(cqe, now)
            elif ud & UD_KIND == UD_POLL:
                if ud & 0xFF == POLL_STOP:
                    read(self.stop_efd, &drain, sizeof(drain))
                    stop = True
                elif ud & 0xFF == POLL_CTL:
                    read(self.ctl_efd, &drain, sizeof(drain))
                    self.ctl_pending = True
                else:
                    self.tunnel_pending = True
                if not cqe.flags & IORING_CQE_F_MORE:  # a multishot poll can end (e.g. on overflow)
                    self.polls &= ~(1 << (ud & 0xFF))
                    self.ctl_pending = True  # the reconcile arms it again
            # UD_WRITE: failures were counted before retiring; 0: cancels.
        self._ring_forward(now)
        return stop

    cdef void _ring_read(self, io_uring_cqe *cqe, int64_t now) noexcept nogil:
        cdef uint64_t ud = cqe.user_data
        cdef uint32_t idx = <uint32_t>(ud & 0xFFFFFFFFULL)
        cdef uint32_t g = <uint32_t>(ud >> 32) & GEN_MASK
        cdef bint more = (cqe.flags & IORING_CQE_F_MORE) != 0
        cdef int res = cqe.res
        cdef uint32_t bid = NO_BUFFER
        cdef frame_t *f
        cdef ring_port *u
        cdef port_t *p
        cdef pollfd pfd
        if cqe.flags & IORING_CQE_F_BUFFER:
            bid = cqe.flags >> IORING_CQE_BUFFER_SHIFT
            # Back to the ring after the next submission, with every write of it.
            self.recycle[self.n_recycle] = <uint16_t>bid
            self.n_recycle += 1
        if idx >= self.max_ports:
            return
        u = &self.rports[idx]
        p = &self.ports[idx]
        if not (u.armed and u.armed_gen == g):
            # A read cancelled because its port went away: whatever it read is dropped.
            if res > 0:
                self.ustats[US_STALE] += 1
            if not more and u.cancelling:
                u.cancelling -= 1
                self.cancelling -= 1
            return
        if not more:
            u.armed = 0
            self.ctl_pending = True  # the reconcile arms it again
        if p.state != PORT_UP or (p.gen & GEN_MASK) != g:
            # Removed since the last reconcile, which cancels the read.
            if res > 0:
                self.ustats[US_STALE] += 1
            self.ctl_pending = True
            return
        if res > 0 and bid != NO_BUFFER:
            f = &self.rframes[self.n_rframes]
            frame_read(f, ring_buf(self.ubufs, bid), res, VNET_HLEN if p.vnet else 0, idx)
            f.ring = 1
            f.queued = 0
            self.n_rframes += 1
            if self.n_rframes == BATCH:
                self._ring_forward(now)
            if not more:
                self.ustats[US_READ_REARMS] += 1
            return
        if res == -ENOBUFS:
            # Every buffer is out: the frame waits in the TAP's queue until
            # the reconcile after the next submission arms a read again.
            self.ustats[US_BUFFER_RING_EMPTY] += 1
            self.ustats[US_READ_REARMS] += 1
            return
        if res == 0:
            # End of file on a socket whose peer closed, or an empty datagram.
            pfd.fd = p.fd
            pfd.events = POLLIN
            pfd.revents = 0
            if not (poll(&pfd, 1, 0) > 0 and pfd.revents & (POLLHUP | POLLERR)):
                self.pctr[<size_t>idx * PC_COUNT + PC_RX_PACKETS] += 1
                self.pctr[<size_t>idx * PC_COUNT + PC_DROPS + DROP_RUNT] += 1
                self.unsubmitted += 1
                if not more:
                    self.ustats[US_READ_REARMS] += 1
                return
        elif res == -EINTR or res == -EAGAIN or res == -ECANCELED:
            self.ustats[US_READ_REARMS] += 1
            return
        # e.g. EBADFD: the TAP's interface is gone. What it read before goes first.
        self._ring_forward(now)
        self._port_down(idx)

    cdef void _ring_forward(self, int64_t now) noexcept nogil:
        self._forward_batch(self.rframes, self.n_rframes, now)
        self.unsubmitted += self.n_rframes  # handled once their writes are submitted
        self.n_rframes = 0

    cdef void _ring_write(self, uint32_t idx, frame_t *f, const uint8_t *start, uint32_t length) noexcept nogil:
        cdef io_uring_sqe *sqe
        cdef ring_write *w
        if self.wq_head - self.wq_tail == UR_WQ:
            # Too many writes since the last retirement: submit and retire
            # them now. The completions in hand stay where they are (the
            # queue's head has not moved), so peeking again only adds.
            self._ring_submit_and_retire()
        sqe = self._ring_sqe()
        if sqe == NULL:
            self.pctr[<size_t>idx * PC_COUNT + PC_TX_ERRORS] += 1
            return
        io_uring_prep_write(sqe, <int>idx, start, length, 0)
        sqe.rw_flags = RWF_NOWAIT
        io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE | IOSQE_CQE_SKIP_SUCCESS)
        io_uring_sqe_set_data64(sqe, UD_WRITE | self.wq_head)
        w = &self.wq[self.wq_head & (UR_WQ - 1)]
        w.data = f.data
        w.port = idx
        w.gen = self.ports[idx].gen
        w.len = f.len
        w.superframe = f.vi.gso_type != VNET_GSO_NONE
        w.failed = 0
        w.mirror = (self.ports[idx].cap_dir & CAP_OUT) != 0
        if w.mirror:
            self.mirror_pending = True
        self.wq_head += 1
        f.queued += 1

    cdef void _ring_retire(self, uint32_t n) noexcept nogil:
        """Count the writes submitted since the last call: each has completed,
        and so are the frames that made them. The failed ones posted their
        completions among cqes[:n], the only ones there are."""
        cdef uint32_t i
        cdef uint64_t seq
        cdef ring_write *w
        cdef uint64_t *c
        for i in range(n):
            if self.cqes[i].user_data & UD_KIND != UD_WRITE:
                continue
            seq = self.cqes[i].user_data & ~UD_KIND
            if seq < self.wq_tail or seq >= self.wq_head:
                continue  # retired already, counted then
            w = &self.wq[seq & (UR_WQ - 1)]
            if w.failed:
                continue
            w.failed = 1
            self.ustats[US_WRITE_ERRORS] += 1
            if self.ports[w.port].gen == w.gen:
                self.pctr[<size_t>w.port * PC_COUNT + PC_TX_ERRORS] += 1
                if self.cqes[i].res == -EOPNOTSUPP:
                    # Its file cannot fail a write that would wait (no
                    # RWF_NOWAIT): the ring would park such writes past the
                    # buffers' return, so its frames go out with write().
                    self.rports[w.port].sync_writes = 1
        self.stats[LS_FRAMES] += self.unsubmitted
        self.unsubmitted = 0
        while self.wq_tail != self.wq_head:
            w = &self.wq[self.wq_tail & (UR_WQ - 1)]
            self.wq_tail += 1
            if w.failed or self.ports[w.port].gen != w.gen:
                continue
            c = &self.pctr[<size_t>w.port * PC_COUNT]
            c[PC_TX_PACKETS] += 1
            c[PC_TX_BYTES] += w.len
            if w.superframe:
                self.stats[LS_SUPERFRAMES_OUT] += 1
            # Only if decided when queued: a capture started since may
            # have let the buffer go back to the ring (and be read into).
            if w.mirror and self.ports[w.port].cap_dir & CAP_OUT:
                self._mirror(w.port, CAP_OUT, w.data, w.len)

    cdef void _ring_recycle(self) noexcept nogil:
        cdef uint32_t i, bid
        cdef int mask = io_uring_buf_ring_mask(self.n_bufs)
        for i in range(self.n_recycle):
            bid = self.recycle[i]
            io_uring_buf_ring_add(self.bring, ring_buf(self.ubufs, bid), FRAME_ROOM + VNET_HLEN,
                                  <unsigned short>bid, mask, <int>i)
        io_uring_buf_ring_advance(self.bring, <int>self.n_recycle)
        self.n_recycle = 0

    cdef void _ring_settle(self, frame_t *f) noexcept nogil:
        """Submit the frame's queued writes before its bytes or headroom change
        (a checksum completed for one output, tunnel headers for another)."""
        if f.queued:
            self._ring_submit()
            f.queued = 0

    cdef void _rx_port(self, uint32_t idx, uint32_t events, int64_t now) noexcept nogil:
        cdef port_t *p = &self.ports[idx]
        cdef uint32_t nread = 0
        cdef ssize_t n
        cdef bint dead = False
        cdef frame_t *f
        cdef uint32_t lead = VNET_HLEN if p.vnet else 0
        while nread < BATCH:
            f = &self.frames[nread]
            n = read(p.fd, f.data - lead, FRAME_ROOM + lead)
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
        self._forward_batch(self.frames, nread, now)
        self.stats[LS_FRAMES] += nread
        if not nread and events & (EPOLLHUP | EPOLLERR):
            dead = True
        if dead:
            self._port_down(idx)

    cdef void _forward_batch(self, frame_t *frames, uint32_t n, int64_t now) noexcept nogil:
        """Forward a batch of frames read from ports, then send the tunnel's
        share: the queued tunnel sends point into the batch's buffers, which
        must not be read into again before."""
        cdef uint32_t i
        if n == 0:
            return
        for i in range(n):
            self._forward(&frames[i], now)
        self._gro_flush()
        self._flush_tunnel()
        self.stats[LS_BATCHES] += 1
        self.stats[LS_HIST + hist_bucket(n)] += 1

    cdef void _forward(self, frame_t *f, int64_t now) noexcept nogil:
        cdef uint32_t idx = f.in_port
        cdef port_t *p = &self.ports[idx]
        cdef uint64_t *c = &self.pctr[<size_t>idx * PC_COUNT]
        cdef eth_info eth
        cdef mac_entry *e
        cdef drop_reason reason
        c[PC_RX_PACKETS] += 1
        c[PC_RX_BYTES] += f.len
        if p.cap_dir & CAP_IN:
            self._mirror(idx, CAP_IN, f.data, f.len)
        if not parse_vnet(f.vnet, f.len, &f.vi):
            c[PC_DROPS + DROP_BAD_VNET] += 1
            return
        if f.vi.gso_type != VNET_GSO_NONE:
            self.stats[LS_SUPERFRAMES_IN] += 1
        # A TSO super-frame is as long as 64 KB: the MTU bounds its segments.
        reason = parse_eth(f.data, f.len, p.mtu if f.vi.gso_type == VNET_GSO_NONE else FRAME_ROOM, &eth)
        if reason == DROP_NONE and eth.tagged:
            reason = DROP_VLAN_TAGGED    # every port is an access port
        if reason != DROP_NONE:
            c[PC_DROPS + <int>reason] += 1
            return
        self._learn(p.network, eth.src, idx, now)
        e = NULL if mac_is_group(eth.dst) else mt_lookup(&self.mt, mac_key(p.network, eth.dst), now)
        if (e != NULL and e.out != idx and e.out < self.max_ports and self.ports[e.out].state == PORT_UP
                and self.ports[e.out].vnet and f.vi.gso_type == VNET_GSO_NONE and self._gro_take(f, e.out)):
            return
        self._gro_flush()  # what went before goes out first: order is kept
        if e == NULL:
            self._flood(f, p.network)
        elif e.out == idx:
            c[PC_DROPS + DROP_SAME_PORT] += 1
        elif e.out & OUT_PEER:
            if f.vi.gso_type != VNET_GSO_NONE:
                self._tx_peers_gso(f, p.network, e.out & ~OUT_PEER)
            elif not self._plain(f):
                c[PC_DROPS + DROP_GSO_UNSUPPORTED] += 1
            elif f.len > self.tunnel_max_frame:
                c[PC_DROPS + DROP_TUNNEL_MTU] += 1
            else:
                self._tx_peer(e.out & ~OUT_PEER, f, p.network)
        elif e.out < self.max_ports and self.ports[e.out].state == PORT_UP:
            self._tx(e.out, f)
        else:
            self._flood(f, p.network)

    cdef void _learn(self, uint16_t network, const uint8_t *src, uint32_t out, int64_t now) noexcept nogil:
        cdef uint64_t key = mac_key(network, src)
        cdef uint32_t before = OUT_NONE
        cdef mt_result r = mt_learn(&self.mt, key, out, now, &before)
        if r == MT_MOVED:
            self._event(EV_MAC_MOVED, key, before, out)
        elif r == MT_REFUSED:
            self._event(EV_TABLE_FULL, key, out, 0)

    cdef void _event(self, uint8_t kind, uint64_t key, uint32_t a, uint32_t b) noexcept nogil:
        cdef dp_event *ev = &self.evring[self.ev_head & (EV_RING - 1)]
        ev.kind = kind
        ev.key = key
        ev.a = a
        ev.b = b
        self.ev_head += 1

    cdef void _flood(self, frame_t *f, uint16_t network) noexcept nogil:
        """Send to every other port of the network and, for a frame from a
        local port, to every peer of its VNI (head-end replication). A frame
        from the tunnel never goes back into it (split horizon)."""
        cdef int32_t q = self.net_head[network]
        if f.in_port != NO_PORT:
            self.pctr[<size_t>f.in_port * PC_COUNT + PC_FLOODED] += 1
        while q >= 0:
            if <uint32_t>q != f.in_port and self.ports[q].state == PORT_UP:
                self._tx(q, f)
            q = self.ports[q].next_in_net
        if f.in_port == NO_PORT:
            return
        q = self.net_peer_head[network] if self.vx_tx_fd >= 0 else -1
        if q >= 0 and f.vi.gso_type != VNET_GSO_NONE:
            self._tx_peers_gso(f, network, -1)
            return
        if q >= 0:
            self._plain(f)
        if q >= 0 and f.len > self.tunnel_max_frame:
            self.pctr[<size_t>f.in_port * PC_COUNT + PC_DROPS + DROP_TUNNEL_MTU] += 1
            return
        while q >= 0:
            self._tx_peer(q, f, network)
            q = self.peers[q].next_in_net

    cdef void _tx_peer(self, uint32_t peer, frame_t *f, uint16_t network) noexcept nogil:
        """Queue the frame, VXLAN-encapsulated, for a peer; _flush_tunnel sends."""
        cdef uint8_t *hdr = f.data - ENCAP_LEN
        cdef uint32_t vni = self.net_vni[network]
        cdef uint32_t n = self.txq_len
        if vni == 0 or self.vx_tx_fd < 0 or not self.peers[peer].used:
            self.pectr[<size_t>peer * PE_COUNT + PE_TX_ERRORS] += 1
            return
        if f.encap_vni != vni:
            if f.ring:
                self._ring_settle(f)  # the headroom still holds a queued write's virtio-net header
            # Written once per frame into its headroom, shared by every peer.
            udp_write(hdr, self._sport(f), self.vx_port, <uint16_t>(f.len + ENCAP_LEN))
            vxlan_write(hdr + UDP_HLEN, vni)
            f.encap_vni = vni
        self._queue_tunnel(peer, hdr, f.len + ENCAP_LEN)

    cdef uint16_t _sport(self, frame_t *f) noexcept nogil:
        """The outer UDP source port of the frame's flow (RFC 7348 section 5).
        With kernel UDP segmentation in use, a flow's port must be one its
        super-frames can also leave from, so the hash picks among those."""
        cdef uint32_t h = flow_hash(f.data, f.len)
        if self.n_gso:
            return self.gso_ports[h % self.n_gso]
        return self.sport_lo + h % (self.sport_hi - self.sport_lo + 1)

    cdef void _send_train(self, int nseg, uint32_t vni, uint32_t hash_idx, int32_t peer) noexcept nogil:
        """Send segments as UDP_SEGMENT trains from the flow's UDP socket: the
        kernel cuts each train into datagrams late, for one pass through the
        stack. Every segment but the last has the same length (GSO output),
        as UDP_SEGMENT requires. A refused train counts against the peer."""
        cdef uint8_t *p = self.gso_train
        cdef uint32_t i, size = VXLAN_HLEN + self.segs[0].len, first = 0, count, length
        cdef uint64_t ctrl[4]
        cdef uint16_t seg_size = <uint16_t>size
        cdef msghdr msg
        cdef iovec iov
        cdef sockaddr_in dst
        cdef cmsghdr *cm
        cdef ssize_t sent
        cdef uint64_t *pc = &self.pectr[<size_t>peer * PE_COUNT]
        for i in range(<uint32_t>nseg):
            vxlan_write(p, vni)
            memcpy(p + VXLAN_HLEN, self.segs[i].data, self.segs[i].len)
            p += VXLAN_HLEN + self.segs[i].len
        memset(&dst, 0, sizeof(dst))
        dst.sin_family = AF_INET
        dst.sin_port = htons(self.vx_port)
        dst.sin_addr.s_addr = self.peers[peer].addr
        while first < <uint32_t>nseg:
            # At least one: past an underlay MTU of about 65040 a segment alone
            # can outgrow a train, and then goes as a datagram of its own.
            count = max(1, min(<uint32_t>nseg - first, UDP_GSO_MAX, UDP_GSO_BYTES // size))
            length = (count - 1) * size + VXLAN_HLEN + self.segs[first + count - 1].len
            iov.iov_base = self.gso_train + first * size
            iov.iov_len = length
            memset(&msg, 0, sizeof(msg))
            msg.msg_name = &dst
            msg.msg_namelen = sizeof(dst)
            msg.msg_iov = &iov
            msg.msg_iovlen = 1
            msg.msg_control = ctrl
            msg.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            cm = CMSG_FIRSTHDR(&msg)
            cm.cmsg_level = SOL_UDP
            cm.cmsg_type = UDP_SEGMENT
            cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            memcpy(CMSG_DATA(cm), &seg_size, sizeof(uint16_t))
            sent = sendmsg(self.gso_fds[hash_idx], &msg, MSG_DONTWAIT)
            if sent < 0 and errno == EINTR:
                continue
            if sent < 0:
                pc[PE_TX_ERRORS] += count
            else:
                pc[PE_TX_PACKETS] += count
                for i in range(first, first + count):
                    pc[PE_TX_BYTES] += self.segs[i].len
            first += count

    cdef void _queue_tunnel(self, uint32_t peer, uint8_t *hdr, uint32_t length) noexcept nogil:
        cdef uint32_t n = self.txq_len
        self.txiov[n].iov_base = hdr
        self.txiov[n].iov_len = length
        self.txaddr[n].sin_addr.s_addr = self.peers[peer].addr
        self.txpeer[n] = peer
        self.txq_len = n + 1
        if self.txq_len == TXQ:
            self._flush_tunnel()

    cdef void _tx_peers_gso(self, frame_t *f, uint16_t network, int32_t only_peer) noexcept nogil:
        """Cut a TSO super-frame into MSS-sized frames and send each, VXLAN-
        encapsulated, to one peer (only_peer >= 0) or to every peer of the
        network. The segments live in one scratch area, so they are sent
        before the next super-frame can be cut."""
        cdef uint32_t vni = self.net_vni[network]
        cdef uint64_t *c = &self.pctr[<size_t>f.in_port * PC_COUNT]
        cdef int nseg, i
        cdef int32_t q
        cdef uint16_t sport
        cdef uint32_t hash_idx
        cdef uint8_t *hdr
        if vni == 0 or self.vx_tx_fd < 0:
            return
        nseg = gso_segment(f.data, f.len, &f.vi, self.gso_scratch, self.gso_scratch_len, self.segs, TXQ)
        if nseg < 0:
            self.stats[LS_GSO_ERRORS - nseg] += 1
            c[PC_DROPS + DROP_GSO_UNSUPPORTED] += 1
            return
        self.stats[LS_SEGMENTED] += 1
        self.stats[LS_SEGMENTS] += nseg
        for i in range(nseg):
            if self.segs[i].len > self.tunnel_max_frame:
                c[PC_DROPS + DROP_TUNNEL_MTU] += 1
                return
        if self.n_gso and nseg > 1:
            self._flush_tunnel()  # what is queued goes first
            hash_idx = flow_hash(f.data, f.len) % self.n_gso
            q = only_peer if only_peer >= 0 else self.net_peer_head[network]
            while q >= 0:
                if self.peers[q].used:
                    self._send_train(nseg, vni, hash_idx, q)
                q = -1 if only_peer >= 0 else self.peers[q].next_in_net
            return
        # One source port for the whole flow: its segments keep one path.
        sport = self._sport(f)
        for i in range(nseg):
            hdr = self.segs[i].data - ENCAP_LEN
            udp_write(hdr, sport, self.vx_port, <uint16_t>(self.segs[i].len + ENCAP_LEN))
            vxlan_write(hdr + UDP_HLEN, vni)
        q = only_peer if only_peer >= 0 else self.net_peer_head[network]
        while q >= 0:
            if self.peers[q].used:
                for i in range(nseg):
                    self._queue_tunnel(q, self.segs[i].data - ENCAP_LEN, self.segs[i].len + ENCAP_LEN)
            q = -1 if only_peer >= 0 else self.peers[q].next_in_net
        self._flush_tunnel()

    cdef void _flush_tunnel(self) noexcept nogil:
        cdef uint32_t i = 0, k, peer
        cdef int sent
        while i < self.txq_len:
            sent = sendmmsg(self.vx_tx_fd, &self.txq[i], self.txq_len - i, MSG_DONTWAIT)
            if sent <= 0:
                if sent < 0 and errno == EINTR:
                    continue
                # The first message failed (no route, full buffer...): count
                # it against its peer and go on with the rest.
                self.pectr[<size_t>self.txpeer[i] * PE_COUNT + PE_TX_ERRORS] += 1
                i += 1
                continue
            for k in range(i, i + <uint32_t>sent):
                peer = self.txpeer[k]
                self.pectr[<size_t>peer * PE_COUNT + PE_TX_PACKETS] += 1
                self.pectr[<size_t>peer * PE_COUNT + PE_TX_BYTES] += self.txiov[k].iov_len - ENCAP_LEN
            i += <uint32_t>sent
        self.txq_len = 0

    cdef int _rx_tunnel(self, int64_t now) noexcept nogil:
        """Read and handle one batch of datagrams; returns how many were read."""
        cdef int n, k, reason
        cdef uint32_t total, seg, off, length, datagrams = 0
        cdef frame_t *f
        cdef uint8_t *base
        cdef cmsghdr *cm
        cdef int gso_size
        for k in range(BATCH):
            self.rxq[k].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            self.rxq[k].msg_hdr.msg_flags = 0
            self.rxq[k].msg_hdr.msg_control = self.rxctrl[k]
            self.rxq[k].msg_hdr.msg_controllen = sizeof(self.rxctrl[k])
        n = recvmmsg(self.vx_rx_fd, self.rxq, BATCH, MSG_DONTWAIT, NULL)
        if n <= 0:
            return 0
        for k in range(n):
            f = &self.frames[k]
            base = f.data - VXLAN_HLEN
            total = self.rxq[k].msg_len
            # With UDP GRO the kernel hands over several datagrams of one
            # flow at once, laid end to end, each `seg` bytes but the last.
            seg = total
            cm = CMSG_FIRSTHDR(&self.rxq[k].msg_hdr)
            while cm != NULL:
                if cm.cmsg_level == SOL_UDP and cm.cmsg_type == UDP_GRO:
                    memcpy(&gso_size, CMSG_DATA(cm), sizeof(int))
                    if 0 < gso_size < <int>total:
                        seg = <uint32_t>gso_size
                        self.stats[LS_UDP_GRO] += (total + seg - 1) // seg
                cm = CMSG_NXTHDR(&self.rxq[k].msg_hdr, cm)
            off = 0
            while off < total:
                length = min(seg, total - off)
                f.data = base + off + VXLAN_HLEN
                f.in_port = NO_PORT
                f.encap_vni = 0
                memset(f.vnet, 0, VNET_HLEN)
                memset(&f.vi, 0, sizeof(f.vi))
                reason = self._decap(f, base + off, length, self.rxaddr[k].sin_addr.s_addr, now)
                if reason != VX_OK:
                    self.vx_drops[reason] += 1
                off += length
                datagrams += 1
            f.data = base + VXLAN_HLEN  # the buffer's own place, for the next read into it
        self._gro_flush()
        self.stats[LS_BATCHES] += 1
        self.stats[LS_HIST + hist_bucket(datagrams)] += 1
        self.stats[LS_FRAMES] += datagrams
        return n

    cdef int _decap(self, frame_t *f, const uint8_t *hdr, uint32_t length, uint32_t src, int64_t now) noexcept nogil:
        cdef uint16_t network
        cdef int32_t peer
        cdef eth_info eth
        cdef mac_entry *e
        cdef uint64_t *pc
        if length < VXLAN_HLEN + ETH_HLEN:
            return VX_TRUNCATED
        if not (hdr[0] & VXLAN_FLAG_I):
            return VX_BAD_FLAGS
        network = self._vni_network(vxlan_vni(hdr))
        if network == 0:
            self._event(EV_UNKNOWN_VNI, 0, src, vxlan_vni(hdr))
            return VX_UNKNOWN_VNI
        peer = self.net_peer_head[network]
        while peer >= 0 and self.peers[peer].addr != src:
            peer = self.peers[peer].next_in_net
        if peer < 0:
            self._event(EV_UNKNOWN_PEER, 0, src, vxlan_vni(hdr))
            return VX_UNKNOWN_PEER
        f.len = length - VXLAN_HLEN
        pc = &self.pectr[<size_t>peer * PE_COUNT]
        pc[PE_RX_PACKETS] += 1
        pc[PE_RX_BYTES] += f.len
        if parse_eth(f.data, f.len, self.tunnel_max_frame - ETH_HLEN, &eth) != DROP_NONE or eth.tagged:
            return VX_INNER_MALFORMED
        self._learn(network, eth.src, OUT_PEER | <uint32_t>peer, now)
        e = NULL if mac_is_group(eth.dst) else mt_lookup(&self.mt, mac_key(network, eth.dst), now)
        if (e != NULL and e.out < self.max_ports and self.ports[e.out].state == PORT_UP
                and self.ports[e.out].vnet and self._gro_take(f, e.out)):
            return VX_OK
        self._gro_flush()  # what went before goes out first: order is kept
        if e == NULL:
            self._flood(f, network)
        elif e.out & OUT_PEER:
            pass  # behind another tunnel: split horizon
        elif e.out < self.max_ports and self.ports[e.out].state == PORT_UP:
            self._tx(e.out, f)
        else:
            self._flood(f, network)
        return VX_OK

    cdef bint _gro_take(self, frame_t *f, uint32_t out) noexcept nogil:
        """Coalesce a frame bound for port `out` (one with offloads) with the
        ones before it, or hold it until the next shows whether it can be
        (a frame that stays alone goes out as it came, through the ring in
        io_uring mode). False: it cannot be; the caller flushes and sends it."""
        cdef uint32_t hdr = gro_candidate(f.data, f.len, f.vnet, self.gro_udp)
        cdef frame_t *h = &self.gro_held
        if hdr == 0:
            return False
        if self.gro.len and gro_append(&self.gro, f.data, f.len, hdr, out):
            self.stats[LS_GRO_COALESCED] += 1
            return True
        if self.gro_holding and gro_pair(&self.gro, h.data, h.len, self.gro_held_hdr, h.vnet, self.gro_held_out,
                                         f.data, f.len, hdr, out):
            self.gro_holding = False
            self.stats[LS_GRO_COALESCED] += 1
            return True
        self._gro_flush()
        h[0] = f[0]
        h.queued = 0
        self.gro_held_hdr = hdr
        self.gro_held_out = out
        self.gro_holding = True
        return True

    cdef void _gro_flush(self) noexcept nogil:
        """Send the pending run, or the frame held for one."""
        cdef frame_t *g = &self.gro_frame
        cdef uint32_t out
        if self.gro_holding:
            self.gro_holding = False
            if self.ports[self.gro_held_out].state == PORT_UP:
                self._tx(self.gro_held_out, &self.gro_held)
            return
        if self.gro.len == 0:
            return
        out = self.gro.out
        self.stats[LS_GRO_RUNS] += 1
        g.len = gro_finish(&self.gro, g.vnet)
        g.encap_vni = 0
        parse_vnet(g.vnet, g.len, &g.vi)
        if self.ports[out].state != PORT_UP:
            return
        if self.uring and io_uring_sq_ready(&self.ring):
            # The run goes out with write(): ring writes queued before it
            # (of the same flow, maybe) must leave first.
            self._ring_submit()
        self._tx(out, g)

    cdef uint16_t _vni_network(self, uint32_t vni) noexcept nogil:
        cdef uint32_t i = (vni * 2654435761U) & (VNI_SLOTS - 1)
        while self.vni_map[i].vni != 0:
            if self.vni_map[i].vni == vni:
                return self.vni_map[i].network
            i = (i + 1) & (VNI_SLOTS - 1)
        return 0

    cdef bint _plain(self, frame_t *f) noexcept nogil:
        """Make the frame whole for an output without offloads: complete a
        partial checksum in place. False for a TSO super-frame, which such an
        output cannot take (segmenting it is the offload issue's work)."""
        if f.vi.gso_type != VNET_GSO_NONE:
            return False
        if f.vi.flags & VNET_F_NEEDS_CSUM:
            if f.ring:
                self._ring_settle(f)
            complete_csum(f.data, f.len, &f.vi)
            self.stats[LS_CSUM_COMPLETED] += 1
            f.vi.flags &= ~VNET_F_NEEDS_CSUM
            f.vnet[0] &= ~VNET_F_NEEDS_CSUM
        return True

    cdef void _tx(self, uint32_t idx, frame_t *f) noexcept nogil:
        cdef port_t *q = &self.ports[idx]
        cdef uint64_t *c = &self.pctr[<size_t>idx * PC_COUNT]
        cdef const uint8_t *start = f.data
        cdef uint32_t length = f.len
        cdef ssize_t n
        if q.vnet:
            # The header goes back in front of the frame (tunnel headers may
            # have been written over that headroom since it was read).
            memcpy(f.data - VNET_HLEN, f.vnet, VNET_HLEN)
            start = f.data - VNET_HLEN
            length = f.len + VNET_HLEN
        elif not self._plain(f):
            c[PC_DROPS + DROP_GSO_UNSUPPORTED] += 1
            return
        if (f.ring and self.rports[idx].slot and self.rports[idx].slot_gen == (q.gen & GEN_MASK)
                and not self.rports[idx].sync_writes):
            self._ring_write(idx, f, start, length)  # counted when retired
            return
        n = write(q.fd, start, length)
        if n < 0 and errno == EINTR:
            n = write(q.fd, start, length)
        if n == <ssize_t>length:
            c[PC_TX_PACKETS] += 1
            c[PC_TX_BYTES] += f.len
            if f.vi.gso_type != VNET_GSO_NONE:
                self.stats[LS_SUPERFRAMES_OUT] += 1
            if q.cap_dir & CAP_OUT:
                self._mirror(idx, CAP_OUT, f.data, f.len)
        else:
            # Never wait for a slow receiver: the frame is dropped and counted.
            c[PC_TX_ERRORS] += 1

    cdef void _mirror(self, uint32_t idx, uint8_t direction, const uint8_t *data, uint32_t length) noexcept nogil:
        """Copy a frame to the port's capture socket, never waiting for it:
        when the reader falls behind, the copy is dropped and counted."""
        cdef uint8_t hdr[CAP_HDR]
        cdef iovec iov[2]
        cdef timespec ts
        cdef uint64_t ns
        cdef int i
        clock_gettime(CLOCK_REALTIME, &ts)
        ns = <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec
        for i in range(8):
            hdr[i] = (ns >> (8 * i)) & 0xFF
        for i in range(4):
            hdr[8 + i] = (length >> (8 * i)) & 0xFF
        hdr[12] = direction
        hdr[13] = hdr[14] = hdr[15] = 0
        iov[0].iov_base = hdr
        iov[0].iov_len = CAP_HDR
        iov[1].iov_base = <void *>data
        iov[1].iov_len = length
        if writev(self.ports[idx].cap_fd, iov, 2) < 0:
            self.pctr[<size_t>idx * PC_COUNT + PC_CAPTURE_DROPS] += 1

    cdef void _port_down(self, uint32_t idx) noexcept nogil:
        cdef uint64_t one = 1
        if self.uring:
            self.ctl_pending = True  # the reconcile lets go of its file
        else:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.ports[idx].fd, NULL)
        self.ports[idx].state = PORT_DEAD
        mt_flush(&self.mt, 0, idx, True)
        write(self.notify_efd, &one, sizeof(one))

    cdef void _unlink(self, uint32_t idx) noexcept nogil:
        cdef int32_t *link = &self.net_head[self.ports[idx].network]
        while link[0] >= 0:
            if <uint32_t>link[0] == idx:
                link[0] = self.ports[idx].next_in_net
                break
            link = &self.ports[link[0]].next_in_net
        self.ports[idx].next_in_net = -1

    # ---- ports ---------------------------------------------------------------------

    def add_port(self, int fd, uint16_t network, uint32_t mtu=1500, bint vnet_hdr=False) -> int:
        """Attach an fd that keeps frame boundaries (a TAP, a socketpair end) to
        `network` (1..max_networks); returns the port index. The fd is made
        non-blocking and stays owned by the caller."""
        cdef uint32_t idx
        cdef epoll_event ev
        cdef int rc
        if network < 1 or network > self.max_networks:
            raise ValueError(f"network id {network} is out of range [1, {self.max_networks}]")
        if mtu < 68 or mtu > FRAME_ROOM - 18:
            raise ValueError(f"MTU {mtu} is out of range [68, {FRAME_ROOM - 18}]")
        os.set_blocking(fd, False)
        # All under the lock happens without the GIL: a thread holding the lock while it
        # waits for the GIL (up to the 5 ms switch interval) would stall the loop as long.
        with nogil:
            pthread_mutex_lock(&self.lock)
            rc = 0
            for idx in range(self.max_ports):
                if self.ports[idx].state == PORT_FREE:
                    break
            else:
                rc = -1
            if rc == 0:
                p = &self.ports[idx]
                p.gen += 1
                p.fd = fd
                p.mtu = mtu
                p.network = network
                p.vnet = vnet_hdr
                p.cap_fd = -1
                p.cap_dir = 0
                memset(&self.pctr[<size_t>idx * PC_COUNT], 0, PC_COUNT * sizeof(uint64_t))
                if self.uring:
                    self._kick()  # the loop arms a read for it
                else:
                    ev.events = EPOLLIN
                    ev.data.u64 = (<uint64_t>p.gen << 32) | idx
                    if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
                        rc = errno
                if rc == 0:
                    p.state = PORT_UP
                    p.next_in_net = self.net_head[network]
                    self.net_head[network] = idx
            pthread_mutex_unlock(&self.lock)
        if rc < 0:
            raise OverflowError(f"all {self.max_ports} ports are in use")
        if rc > 0:
            raise OSError(rc, f"epoll_ctl(ADD) of fd {fd} failed: {os.strerror(rc)}")
        return idx

    def remove_port(self, uint32_t idx) -> None:
        """Detach a port and forget every FDB entry (learned or static) that names it.
        The caller closes the fd afterwards. In io_uring mode it returns once
        the loop no longer holds the file (or after 2 s)."""
        cdef uint64_t ticket = 0
        self._check_index(idx)
        with nogil:
            pthread_mutex_lock(&self.lock)
            if self.ports[idx].state != PORT_FREE:
                if self.uring:
                    ticket = self._kick()
                elif self.ports[idx].state == PORT_UP:
                    epoll_ctl(self.epfd, EPOLL_CTL_DEL, self.ports[idx].fd, NULL)
                self._unlink(idx)
                mt_flush(&self.mt, 0, idx, True)
                self.ports[idx].cap_fd = -1
                self.ports[idx].cap_dir = 0
                self.ports[idx].state = PORT_FREE
                self.ports[idx].gen += 1
                self.ports[idx].fd = -1
            pthread_mutex_unlock(&self.lock)
        if ticket:
            self._wait_reconciled(ticket)

    cdef uint64_t _kick(self) noexcept nogil:
        """Tell the io_uring loop that ports or the VTEP changed (lock held);
        returns a ticket that _wait_reconciled waits for."""
        cdef uint64_t one = 1
        self.ctl_seq += 1
        write(self.ctl_efd, &one, sizeof(one))
        return self.ctl_seq

    def _wait_reconciled(self, uint64_t ticket) -> None:
        deadline = time.monotonic() + 2.0
        while self.ring_live and self.ctl_done < ticket and time.monotonic() < deadline:
            time.sleep(0.0002)

    def _check_index(self, uint32_t idx) -> None:
        if idx >= self.max_ports:
            raise IndexError(f"port index {idx} is out of range")

    def port_state(self, uint32_t idx) -> str:
        self._check_index(idx)
        return PORT_STATES[self.ports[idx].state]

    @property
    def notify_fd(self) -> int:
        """Readable when a port went down by itself (its fd failed)."""
        return self.notify_efd

    def dead_ports(self) -> list:
        """Indices of ports whose fd failed; clears the notify_fd signal."""
        cdef uint64_t drain
        read(self.notify_efd, &drain, sizeof(drain))
        return [i for i in range(self.max_ports) if self.ports[i].state == PORT_DEAD]

    def port_counters(self, uint32_t idx) -> dict:
        self._check_index(idx)
        cdef uint64_t *c = &self.pctr[<size_t>idx * PC_COUNT]
        out = {name: c[i] for i, name in enumerate(PORT_COUNTER_NAMES)}
        out["drops"] = {DROP_NAMES[r]: c[PC_DROPS + r] for r in range(1, DROP_REASONS)}
        out["capture_dropped"] = c[PC_CAPTURE_DROPS]
        return out

    def set_capture(self, uint32_t idx, int fd, bint rx, bint tx) -> None:
        """Mirror the port's received and/or sent frames to fd (a datagram
        socket: one CAP_HDR-led record per message); fd -1 stops it."""
        self._check_index(idx)
        if fd >= 0:
            os.set_blocking(fd, False)
        with nogil:
            pthread_mutex_lock(&self.lock)
            if self.ports[idx].state == PORT_FREE:
                fd = -2
            else:
                self.ports[idx].cap_fd = fd
                self.ports[idx].cap_dir = 0 if fd < 0 else ((CAP_IN if rx else 0) | (CAP_OUT if tx else 0))
            pthread_mutex_unlock(&self.lock)
        if fd == -2:
            raise LookupError(f"port index {idx} is not in use")

    def loop_stats(self) -> dict:
        hist = [self.stats[LS_HIST + b] for b in range(HIST_BUCKETS)]
        return {
            "wakeups": self.stats[LS_WAKEUPS],
            "frames": self.stats[LS_FRAMES],
            "batches": self.stats[LS_BATCHES],
            "batch_histogram": list(zip(HIST_BOUNDS + (None,), hist)),
            "offload": {
                "superframes_in": self.stats[LS_SUPERFRAMES_IN],
                "superframes_out": self.stats[LS_SUPERFRAMES_OUT],
                "segmented": self.stats[LS_SEGMENTED],
                "segments": self.stats[LS_SEGMENTS],
                "csum_completed": self.stats[LS_CSUM_COMPLETED],
                "gro_superframes": self.stats[LS_GRO_RUNS],
                "gro_coalesced": self.stats[LS_GRO_COALESCED],
                "udp_gro_datagrams": self.stats[LS_UDP_GRO],
                "gso_errors": {GSO_ERROR_NAMES[e]: self.stats[LS_GSO_ERRORS + e] for e in range(1, GSO_ERRORS)},
            },
            "running": bool(self.running),
            "io_mode": self.io_mode,
            "uring": {name: self.ustats[i] for i, name in enumerate(URING_COUNTER_NAMES)},
        }

    # ---- VXLAN -----------------------------------------------------------------------

    def set_vtep(self, int rx_fd, int tx_fd, uint16_t port, uint16_t sport_lo, uint16_t sport_hi,
                 uint32_t underlay_mtu) -> None:
        """Start terminating VXLAN: rx_fd is a UDP socket bound to the VTEP
        address and port; tx_fd a raw IPPROTO_UDP socket bound to the same
        address, so each packet can carry its own UDP source port. Both stay
        owned by the caller."""
        cdef epoll_event ev
        if not 0 < sport_lo <= sport_hi:
            raise ValueError("the UDP source port range is empty")
        if underlay_mtu < 576 or underlay_mtu > 65535:
            raise ValueError("underlay MTU out of range")
        if self.vx_rx_fd >= 0:
            raise RuntimeError("the VTEP is already set")
        # A raw UDP socket also receives a copy of every UDP datagram.
        drop_all_input(tx_fd)
        os.set_blocking(rx_fd, False)
        os.set_blocking(tx_fd, False)
        cdef int rc = 0
        with nogil:
            pthread_mutex_lock(&self.lock)
            self.vx_port = port
            self.sport_lo = sport_lo
            self.sport_hi = sport_hi
            self.tunnel_max_frame = underlay_mtu - VXLAN_IP_OVERHEAD
            if not self.uring:
                ev.events = EPOLLIN
                ev.data.u64 = TAG_VXLAN
                if epoll_ctl(self.epfd, EPOLL_CTL_ADD, rx_fd, &ev) < 0:
                    rc = errno
            if rc == 0:
                self.vx_rx_fd = rx_fd
                self.vx_tx_fd = tx_fd
                if self.uring:
                    self._kick()  # the loop polls the socket from its ring
            pthread_mutex_unlock(&self.lock)
        if rc:
            raise OSError(rc, f"epoll_ctl(ADD) of the VXLAN socket failed: {os.strerror(rc)}")

    def set_udp_gso_sockets(self, list socks) -> None:
        """[(fd, source port)] of UDP sockets bound to the VTEP address, for
        sending super-frames with UDP_SEGMENT (the caller checked the kernel
        has it). Flows then take their outer source port from these ports."""
        cdef uint32_t i, n = len(socks)
        cdef int fds[GSO_SOCKETS]
        cdef uint16_t ports[GSO_SOCKETS]
        if n > GSO_SOCKETS:
            raise ValueError(f"at most {GSO_SOCKETS} UDP GSO sockets")
        for i, (fd, port) in enumerate(socks):
            drop_all_input(fd)  # send-only: nothing may pile up in their queues
            os.set_blocking(fd, False)
            fds[i], ports[i] = fd, port
        with nogil:
            pthread_mutex_lock(&self.lock)
            for i in range(n):
                self.gso_fds[i] = fds[i]
                self.gso_ports[i] = ports[i]
            self.n_gso = n
            pthread_mutex_unlock(&self.lock)

    def set_network_vni(self, uint16_t network, uint32_t vni) -> None:
        """Bind a network to a VNI (0 unbinds it)."""
        cdef uint32_t n, i
        if network < 1 or network > self.max_networks:
            raise ValueError(f"network id {network} is out of range")
        if vni > 0xFFFFFF:
            raise ValueError(f"VNI {vni} is out of range")
        with nogil:
            pthread_mutex_lock(&self.lock)
            self.net_vni[network] = vni
            memset(self.vni_map, 0, sizeof(self.vni_map))
            for n in range(1, self.max_networks + 1):
                if self.net_vni[n]:
                    i = (self.net_vni[n] * 2654435761U) & (VNI_SLOTS - 1)
                    while self.vni_map[i].vni != 0:
                        i = (i + 1) & (VNI_SLOTS - 1)
                    self.vni_map[i].vni = self.net_vni[n]
                    self.vni_map[i].network = <uint16_t>n
            pthread_mutex_unlock(&self.lock)

    def add_peer(self, uint16_t network, str remote) -> int:
        """Add a remote VTEP (IPv4) to a network; returns the peer index."""
        cdef uint32_t idx
        cdef uint32_t addr = int.from_bytes(ipaddress.IPv4Address(remote).packed, "little")
        if network < 1 or network > self.max_networks:
            raise ValueError(f"network id {network} is out of range")
        cdef bint full = False
        with nogil:
            pthread_mutex_lock(&self.lock)
            for idx in range(self.max_peers):
                if not self.peers[idx].used:
                    break
            else:
                full = True
            if not full:
                self.peers[idx].addr = addr
                self.peers[idx].network = network
                memset(&self.pectr[<size_t>idx * PE_COUNT], 0, PE_COUNT * sizeof(uint64_t))
                self.peers[idx].next_in_net = self.net_peer_head[network]
                self.net_peer_head[network] = idx
                self.peers[idx].used = 1
            pthread_mutex_unlock(&self.lock)
        if full:
            raise OverflowError(f"all {self.max_peers} peers are in use")
        return idx

    def remove_peer(self, uint32_t idx) -> int:
        """Remove a peer and the MACs learned behind it; returns how many."""
        cdef int32_t *link
        cdef uint32_t flushed = 0
        if idx >= self.max_peers:
            raise IndexError(f"peer index {idx} is out of range")
        with nogil:
            pthread_mutex_lock(&self.lock)
            if self.peers[idx].used:
                link = &self.net_peer_head[self.peers[idx].network]
                while link[0] >= 0:
                    if <uint32_t>link[0] == idx:
                        link[0] = self.peers[idx].next_in_net
                        break
                    link = &self.peers[link[0]].next_in_net
                self.peers[idx].used = 0
                self.peers[idx].next_in_net = -1
                flushed = mt_flush(&self.mt, 0, OUT_PEER | idx, True)
            pthread_mutex_unlock(&self.lock)
        return flushed

    def peer_counters(self, uint32_t idx) -> dict:
        if idx >= self.max_peers:
            raise IndexError(f"peer index {idx} is out of range")
        cdef uint64_t *c = &self.pectr[<size_t>idx * PE_COUNT]
        return {name: c[i] for i, name in enumerate(PEER_COUNTER_NAMES)}

    def vxlan_drops(self) -> dict:
        return {VX_DROP_NAMES[r]: self.vx_drops[r] for r in range(1, VX_DROPS)}

    # ---- events ----------------------------------------------------------------------

    def events(self, uint64_t since) -> tuple:
        """(events after sequence number `since`, next since, events lost to
        overwriting). Each event is (kind, network, mac or None, a, b) with
        kind one of EVENT_KINDS."""
        cdef uint64_t head, start, i
        cdef dp_event ev
        cdef dp_event *copy = <dp_event *>malloc(EV_RING * sizeof(dp_event))
        if copy == NULL:
            raise MemoryError()
        out = []
        try:
            with nogil:  # copied under the lock, turned into Python objects after it
                pthread_mutex_lock(&self.lock)
                head = self.ev_head
                start = max(since, head - EV_RING) if head > EV_RING else since
                for i in range(start, head):
                    copy[i - start] = self.evring[i & (EV_RING - 1)]
                pthread_mutex_unlock(&self.lock)
            for i in range(head - start):
                ev = copy[i]
                out.append((EVENT_KINDS[ev.kind], key_network(ev.key),
                            format_mac(ev.key) if ev.key else None, ev.a, ev.b))
        finally:
            free(copy)
        return out, head, start - since

    # ---- FDB -------------------------------------------------------------------------

    @property
    def mac_table_size(self) -> int:
        return self.mt.capacity

    def fdb_counters(self) -> dict:
        return {
            "entries": self.mt.count,
            "capacity": self.mt.capacity,
            "learned": self.mt.learned,
            "moved": self.mt.moved,
            "aged": self.mt.aged,
            "refused": self.mt.refused,
        }

    def fdb_entries(self, uint16_t network=0, out=None) -> list:
        """[(network, mac, out, static, age_s)] of live entries, filtered by
        network (0: all) and output. Read in chunks so that a large table
        never holds the loop up for long."""
        cdef uint32_t want = OUT_NONE if out is None else out
        cdef uint64_t i = 0, end
        cdef uint32_t n, j
        cdef int64_t now
        cdef mac_entry *e
        # Copied chunk by chunk under the lock, turned into Python objects after it.
        cdef fdb_row *copy = <fdb_row *>malloc(FDB_CHUNK * sizeof(fdb_row))
        cdef fdb_row *r
        if copy == NULL:
            raise MemoryError()
        result = []
        seen = set()  # an entry moved back by a deletion between chunks may be met twice
        try:
            while i <= self.mt.mask:
                end = min(i + FDB_CHUNK, self.mt.mask + 1)
                n = 0
                with nogil:
                    pthread_mutex_lock(&self.lock)
                    now = now_ms()
                    while i < end:
                        e = &self.mt.slots[i]
                        i += 1
                        if (e.key == 0 or (network and key_network(e.key) != network)
                                or (want != OUT_NONE and e.out != want) or mt_expired(&self.mt, e, now)):
                            continue
                        copy[n].key = e.key
                        copy[n].out = e.out
                        copy[n].flags = e.flags
                        copy[n].age_ms = now - e.last_seen_ms
                        n += 1
                    pthread_mutex_unlock(&self.lock)
                for j in range(n):
                    r = &copy[j]
                    if r.key in seen:
                        continue
                    seen.add(r.key)
                    result.append((key_network(r.key), format_mac(r.key), r.out, bool(r.flags & MT_STATIC),
                                   r.age_ms / 1000.0))
        finally:
            free(copy)
        return result

    def fdb_lookup(self, uint16_t network, mac):
        """(out, static, age_s) of a live entry, or None. Does not refresh or age it."""
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef mac_entry *e
        cdef mac_entry found
        cdef int64_t now
        cdef bint live
        with nogil:
            pthread_mutex_lock(&self.lock)
            now = now_ms()
            e = mt_peek(&self.mt, mac_key(network, mp))
            live = e != NULL and not mt_expired(&self.mt, e, now)
            if live:
                found = e[0]
            pthread_mutex_unlock(&self.lock)
        if not live:
            return None
        return (found.out, bool(found.flags & MT_STATIC), (now - found.last_seen_ms) / 1000.0)

    def fdb_flush(self, uint16_t network=0, out=None, bint with_static=False) -> int:
        cdef uint32_t o = OUT_NONE if out is None else out
        cdef uint32_t n
        with nogil:
            pthread_mutex_lock(&self.lock)
            n = mt_flush(&self.mt, network, o, with_static)
            pthread_mutex_unlock(&self.lock)
        return n

    def fdb_set_static(self, uint16_t network, mac, uint32_t out) -> None:
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef int rc
        if m[0] & 1:
            raise ValueError("a static entry needs a unicast MAC")
        with nogil:
            pthread_mutex_lock(&self.lock)
            rc = mt_set_static(&self.mt, mac_key(network, mp), out, now_ms())
            pthread_mutex_unlock(&self.lock)
        if rc < 0:
            raise OverflowError(f"the MAC table is full ({self.mt.capacity} entries)")

    def fdb_delete(self, uint16_t network, mac) -> bool:
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef bint found
        with nogil:
            pthread_mutex_lock(&self.lock)
            found = mt_delete(&self.mt, mac_key(network, mp))
            pthread_mutex_unlock(&self.lock)
        return found
