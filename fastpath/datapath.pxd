# The forwarding loop: ports, tunnel peers, the frame buffers, the counters
# and the lock that the control plane takes to change them.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastpath.frame cimport VNET_HLEN, vnet_info
from fastpath.gro cimport gro_state
from fastpath.gso cimport GSO_ERRORS, seg_t
from fastpath.mactable cimport mac_table
from fastpath.posix_io cimport iovec, mmsghdr, pthread_mutex_t, sockaddr_in
from fastpath.uring cimport io_uring, io_uring_buf_ring, io_uring_cqe, io_uring_sqe
from fastpath.vxlan cimport VX_DROPS

cdef enum:
    BATCH = 32                     # frames read from one port (or datagrams from the tunnel) per wakeup
    HEADROOM = 128                 # in front of each frame: room to push tunnel headers or a tag
    FRAME_ROOM = 65536 + 128       # a 64 KB TSO super-frame and its virtio-net header
    BUF_SIZE = HEADROOM + FRAME_ROOM
    MAX_EVENTS = 64
    SWEEP_INTERVAL_MS = 100        # also the longest the loop sleeps when idle
    HIST_BUCKETS = 7               # frames per batch: 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64+
    TXQ = 256                      # tunnel sends queued per batch, flushed with sendmmsg
    VNI_SLOTS = 8192               # VNI -> network map (open addressing, > 2 x max networks)
    GSO_SOCKETS = 16               # UDP sockets for kernel UDP segmentation, one per source port
    SOL_UDP = 17                   # <netinet/udp.h>
    UDP_SEGMENT = 103
    UDP_GRO = 104
    RX_CTRL_WORDS = 4              # room for one UDP_GRO control message per datagram
    UDP_GSO_MAX = 64               # segments per UDP_SEGMENT send (the kernel's limit is 64 or more)
    UDP_GSO_BYTES = 65000          # UDP payload per UDP_SEGMENT send (an IPv4 packet's limit, less headers)
    NO_PORT = 0xFFFFFFFF           # in_port of a frame that came from the tunnel
    EV_RING = 4096                 # events kept for the control plane's log (oldest overwritten)
    # io_uring mode
    UR_SQ = 1024                   # submission queue entries
    UR_CQ = 8192                   # completion queue entries (also the most handled per wakeup)
    UR_BUFS = 512                  # provided buffers (default), BUF_SIZE each, shared by every port's read
    UR_BATCH_MIN = 8               # completions in a round that make the next wait one for a batch
    UR_BATCH_MAX = 128             # the most completions such a wait asks for
    UR_BGID = 1                    # their buffer group
    UR_WQ = 4096                   # ring writes in flight between two retirements (power of 2)
    UR_CHUNK = 64                  # completions handled per hold of the lock
    UR_TUNNEL_ROUNDS = 8           # recvmmsg batches per tunnel wakeup before yielding to the ports

cdef enum loop_failure:          # what ended the loop when it was not asked to stop
    FAILED_NONE = 0
    FAILED_EPOLL_WAIT = 1
    FAILED_RING_WAIT = 2
    FAILED_INJECTED = 3

cdef enum event_kind:
    EV_MAC_MOVED = 1               # a: old output, b: new output
    EV_TABLE_FULL = 2              # a: the output it came from
    EV_UNKNOWN_PEER = 3            # a: sender's IPv4 (network order), b: VNI
    EV_UNKNOWN_VNI = 4             # a: sender's IPv4, b: VNI

cdef enum port_state:
    PORT_FREE = 0
    PORT_UP = 1
    PORT_DEAD = 2                  # its fd failed; waits for the control plane to remove it

cdef enum:  # port counters: PC_COUNT per port in one flat array
    PC_RX_PACKETS = 0
    PC_RX_BYTES = 1
    PC_TX_PACKETS = 2
    PC_TX_BYTES = 3
    PC_FLOODED = 4                 # frames from this port that were flooded
    PC_TX_ERRORS = 5               # writes to this port that failed
    PC_DROPS = 6                   # drops by frame.drop_reason follow (DROP_REASONS of them)
    PC_CAPTURE_DROPS = 15          # mirrored frames the capture reader was too slow for
    PC_COUNT = 16

cdef enum:  # peer counters: PE_COUNT per peer
    PE_TX_PACKETS = 0
    PE_TX_BYTES = 1                # inner frame bytes
    PE_RX_PACKETS = 2
    PE_RX_BYTES = 3
    PE_TX_ERRORS = 4
    PE_COUNT = 8

cdef enum:  # io_uring mode statistics
    US_SUBMITS = 0                 # io_uring_enter calls that submit and/or wait
    US_READ_REARMS = 1             # multishot reads armed again after they ended
    US_BUFFER_RING_EMPTY = 2       # multishot reads ended because no provided buffer was left
    US_STALE = 3                   # completions for a port removed while its read was in flight
    US_WRITE_ERRORS = 4            # ring writes that failed (also in the port's tx_errors)
    US_BATCH_WAITS = 5             # waits for a batch of completions (see batch_wait_us)
    US_COUNT = 6

cdef enum:  # loop statistics
    LS_WAKEUPS = 0
    LS_FRAMES = 1                  # frames fully handled (read, decided, written)
    LS_BATCHES = 2
    LS_SWEPT = 3                   # expired entries removed by the sweep
    LS_SUPERFRAMES_IN = 4          # TSO super-frames read from ports
    LS_SUPERFRAMES_OUT = 5         # ...written whole to ports
    LS_SEGMENTED = 6               # ...cut into segments for the tunnel
    LS_SEGMENTS = 7                # segments those produced
    LS_CSUM_COMPLETED = 8          # partial checksums completed in software
    LS_GRO_RUNS = 9                # super-frames rebuilt from tunnel segments
    LS_GRO_COALESCED = 10          # segments folded into them (beyond each run's first)
    LS_UDP_GRO = 11                # datagrams that arrived coalesced by the kernel's UDP GRO
    LS_GSO_ERRORS = 12             # GSO_ERRORS counters follow, by gso error
    LS_HIST = LS_GSO_ERRORS + GSO_ERRORS   # HIST_BUCKETS counters follow
    LS_COUNT = LS_HIST + HIST_BUCKETS

cdef struct port_t:
    int fd
    uint32_t gen                   # bumped on add and remove: stale epoll events are ignored
    uint32_t mtu
    uint16_t network
    uint8_t state
    int32_t next_in_net            # next port of the same network, -1 ends the list
    uint8_t vnet                   # frames on this fd are led by a virtio-net header
    int cap_fd                     # capture socket, -1 when nobody captures
    uint8_t cap_dir                # CAP_IN | CAP_OUT

cdef enum:
    CAP_IN = 1
    CAP_OUT = 2
    CAP_HDR = 16                   # record header: u64 ns (realtime), u32 frame length, u8 direction, pad

cdef struct peer_t:
    uint32_t addr                  # remote VTEP, IPv4 in network byte order
    uint16_t network
    uint8_t used
    int32_t next_in_net

cdef struct vni_slot:
    uint32_t vni                   # 0: empty (VNIs start at 1 here)
    uint16_t network

cdef struct dp_event:
    uint64_t key                   # network << 48 | MAC, 0 when not about a MAC
    uint32_t a
    uint32_t b
    uint8_t kind

cdef struct frame_t:
    uint8_t *data                  # the Ethernet header; HEADROOM bytes are free before it
    uint32_t len
    uint32_t in_port               # NO_PORT when it came from the tunnel
    uint32_t encap_vni             # VNI whose headers sit in the headroom, 0: none yet
    vnet_info vi                   # offload state; all zero for a plain frame
    uint8_t vnet[VNET_HLEN]        # the header as read, written back in front for vnet ports
    uint8_t ring                   # it sits in a provided buffer: local writes go through the ring
    uint32_t queued                # ring writes of it not yet submitted: its bytes must not change

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


cdef class Datapath:
    cdef pthread_mutex_t lock
    cdef port_t *ports
    cdef uint64_t *pctr
    cdef int32_t *net_head
    cdef uint32_t max_ports
    cdef uint32_t max_networks
    cdef mac_table mt
    cdef uint32_t sweep_budget
    cdef uint64_t stats[LS_COUNT]
    cdef int epfd
    cdef int stop_efd
    cdef int notify_efd
    cdef uint8_t *bufmem
    cdef frame_t frames[BATCH]
    cdef bint running
    cdef int64_t busy_poll_ns

    # VXLAN
    cdef peer_t *peers
    cdef uint64_t *pectr
    cdef uint32_t max_peers
    cdef int32_t *net_peer_head
    cdef uint32_t *net_vni
    cdef vni_slot vni_map[VNI_SLOTS]
    cdef int vx_rx_fd
    cdef int vx_tx_fd
    cdef uint16_t vx_port
    cdef uint16_t sport_lo
    cdef uint16_t sport_hi
    cdef uint32_t tunnel_max_frame
    cdef uint64_t vx_drops[VX_DROPS]
    cdef mmsghdr txq[TXQ]
    cdef iovec txiov[TXQ]
    cdef sockaddr_in txaddr[TXQ]
    cdef uint32_t txpeer[TXQ]
    cdef uint32_t txq_len
    cdef dp_event evring[EV_RING]
    cdef uint64_t ev_head
    cdef gro_state gro
    cdef frame_t gro_frame
    cdef frame_t gro_held          # a frame that may start a run, until the next one tells
    cdef uint32_t gro_held_hdr
    cdef uint32_t gro_held_out
    cdef bint gro_holding
    cdef int64_t batch_wait_ns
    cdef bint gro_udp              # UDP runs too: the kernel takes UDP_L4 super-frames
    cdef uint8_t *gro_mem
    cdef int gso_fds[GSO_SOCKETS]
    cdef uint16_t gso_ports[GSO_SOCKETS]
    cdef uint32_t n_gso
    cdef uint8_t *gso_train               # segments laid end to end, each behind its VXLAN header
    cdef uint8_t *gso_scratch
    cdef uint32_t gso_scratch_len
    cdef seg_t segs[TXQ]
    cdef mmsghdr rxq[BATCH]
    cdef iovec rxiov[BATCH]
    cdef sockaddr_in rxaddr[BATCH]
    cdef uint64_t rxctrl[BATCH][RX_CTRL_WORDS]

    # io_uring mode: the ring is made at construction (disabled), then driven
    # and torn down by the loop thread
    cdef bint uring
    cdef bint ring_up                     # the ring exists (made at construction, gone when run() ends)
    cdef bint ring_live                   # ...and the loop thread drives it
    cdef int ring_error                   # errno of a failed ring set-up, for run() to raise
    cdef io_uring ring
    cdef io_uring_cqe **cqes
    cdef io_uring_buf_ring *bring
    cdef uint8_t *ubufs
    cdef uint32_t n_bufs
    cdef uint16_t *recycle                # buffers to give back once the writes that use them are submitted
    cdef uint32_t n_recycle
    cdef ring_port *rports
    cdef ring_write *wq
    cdef uint64_t wq_head                 # sequence number of the next queued write
    cdef uint64_t wq_tail                 # ...of the oldest not yet retired
    cdef frame_t rframes[BATCH]
    cdef uint32_t n_rframes
    cdef uint32_t unsubmitted             # frames handled whose writes wait for the next submission
    cdef int ctl_efd                      # the control plane changed ports or the VTEP
    cdef uint64_t ctl_seq                 # bumped by the control plane on every such change
    cdef uint64_t ctl_seen                # ...as last reconciled by the loop
    cdef uint64_t ctl_done                # ...once no cancelled read still holds a removed port's file
    cdef uint32_t cancelling
    cdef bint ctl_pending
    cdef uint32_t polls                   # 1 << POLL_*: the multishot polls armed
    cdef bint tunnel_pending
    cdef bint mirror_pending              # a queued write is captured: recycle only after it is retired
    cdef uint64_t ustats[US_COUNT]

    # liveness: the supervisor watches the loop through these
    cdef int64_t turn_ns                  # CLOCK_MONOTONIC at the start of the latest turn (one store per turn)
    cdef int inject_err                   # inject_failure()'s errno, taken by the loop's next turn
    cdef int loop_err                     # errno that ended the loop without a stop
    cdef int loop_failed_in               # what failed: a FAILED_* code

    cdef void _event(self, uint8_t kind, uint64_t key, uint32_t a, uint32_t b) noexcept nogil
    cdef void _learn(self, uint16_t network, const uint8_t *src, uint32_t out, int64_t now) noexcept nogil
    cdef void _loop(self) noexcept nogil
    cdef void _rx_port(self, uint32_t idx, uint32_t events, int64_t now) noexcept nogil
    cdef int _rx_tunnel(self, int64_t now) noexcept nogil
    cdef void _loop_uring(self) noexcept nogil
    cdef void _loop_failed(self, int failed_in, int err) noexcept nogil
    cdef int _ring_open(self) noexcept nogil
    cdef void _ring_close(self) noexcept nogil
    cdef void _ring_reconcile(self) noexcept nogil
    cdef bint _ring_completions(self, uint32_t first, uint32_t n, int64_t now) noexcept nogil
    cdef void _ring_read(self, io_uring_cqe *cqe, int64_t now) noexcept nogil
    cdef void _ring_forward(self, int64_t now) noexcept nogil
    cdef void _ring_write(self, uint32_t idx, frame_t *f, const uint8_t *start, uint32_t length) noexcept nogil
    cdef void _ring_retire(self, uint32_t n) noexcept nogil
    cdef void _ring_recycle(self) noexcept nogil
    cdef void _ring_settle(self, frame_t *f) noexcept nogil
    cdef void _ring_poll(self, int fd, uint32_t which) noexcept nogil
    cdef void _ring_submit(self) noexcept nogil
    cdef void _ring_submit_and_retire(self) noexcept nogil
    cdef io_uring_sqe *_ring_sqe(self) noexcept nogil
    cdef uint64_t _kick(self) noexcept nogil
    cdef void _forward_batch(self, frame_t *frames, uint32_t n, int64_t now) noexcept nogil
    cdef void _forward(self, frame_t *f, int64_t now) noexcept nogil
    cdef int _decap(self, frame_t *f, const uint8_t *hdr, uint32_t length, uint32_t src, int64_t now) noexcept nogil
    cdef void _flood(self, frame_t *f, uint16_t network) noexcept nogil
    cdef void _tx(self, uint32_t idx, frame_t *f) noexcept nogil
    cdef bint _plain(self, frame_t *f) noexcept nogil
    cdef void _mirror(self, uint32_t idx, uint8_t direction, const uint8_t *data, uint32_t length) noexcept nogil
    cdef void _tx_peer(self, uint32_t peer, frame_t *f, uint16_t network) noexcept nogil
    cdef void _flush_tunnel(self) noexcept nogil
    cdef bint _gro_take(self, frame_t *f, uint32_t out) noexcept nogil
    cdef void _gro_flush(self) noexcept nogil
    cdef void _tx_peers_gso(self, frame_t *f, uint16_t network, int32_t only_peer) noexcept nogil
    cdef void _queue_tunnel(self, uint32_t peer, uint8_t *hdr, uint32_t length) noexcept nogil
    cdef uint16_t _sport(self, frame_t *f) noexcept nogil
    cdef void _send_train(self, int nseg, uint32_t vni, uint32_t hash_idx, int32_t peer) noexcept nogil
    cdef uint16_t _vni_network(self, uint32_t vni) noexcept nogil
    cdef void _port_down(self, uint32_t idx) noexcept nogil
    cdef void _unlink(self, uint32_t idx) noexcept nogil
