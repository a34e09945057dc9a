# What every unit shares: ports, frames, events, and the interface to the
# I/O engines (the switch that holds them all, sw_t, is in switch.pxi).
#
#   port_t      a port as the loop sees it.
#   frame_t     a frame in a buffer with HEADROOM free bytes before it.
#   engine_ops  what the forwarding code asks of an I/O engine. The engine
#               reads frames and hands batches to forward_batch(); the
#               forwarding code never sees a ring, an SQE or an epoll fd.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from fastpath.frame cimport VNET_HLEN, vnet_info
from fastpath.posix_io cimport iovec

cdef struct sw_t                   # the switch (switch.pxi)

cdef enum:
    BATCH = 32                     # frames read from one port (or datagrams from the tunnel) per wakeup
    HEADROOM = 128                 # in front of each frame: room to push tunnel headers or a tag
    FRAME_ROOM = 65536 + 128       # a 64 KB TSO super-frame and its virtio-net header
    BUF_SIZE = HEADROOM + FRAME_ROOM
    SWEEP_INTERVAL_MS = 100        # also the longest an engine sleeps when idle
    EV_RING = 4096                 # events kept for the control plane's log (oldest overwritten)
    NO_PORT = 0xFFFFFFFF           # in_port of a frame that came from the tunnel

cdef enum port_state:
    PORT_FREE = 0
    PORT_UP = 1
    PORT_DEAD = 2                  # its fd failed; waits for the control plane to remove it
PORT_STATES = ("free", "up", "dead")

cdef enum:
    CAP_IN = 1
    CAP_OUT = 2
    CAP_HDR = 16                   # capture record header: u64 ns (realtime), u32 frame length, u8 direction, pad

cdef struct port_t:
    int fd
    uint32_t gen                   # bumped on add and remove: engines tell a reused slot by it
    uint32_t mtu
    uint16_t network
    uint8_t state
    int32_t next_in_net            # next port of the same network, -1 ends the list
    uint8_t vnet                   # frames on this fd are led by a virtio-net header
    uint8_t trunk                  # a trunk port (vlan.pxi): network is 0, its frames' tags say theirs
    int cap_fd                     # capture socket, -1 when nobody captures
    uint8_t cap_dir                # CAP_IN | CAP_OUT

cdef struct frame_t:
    uint8_t *data                  # the Ethernet header; HEADROOM bytes are free before it
    uint32_t len
    uint32_t in_port               # NO_PORT when it came from the tunnel
    uint32_t encap_vni             # VNI whose headers sit in the headroom, 0: none yet
    uint16_t network               # the network it is forwarded in, once decided (deliver)
    vnet_info vi                   # offload state; all zero for a plain frame
    uint8_t vnet[VNET_HLEN]        # the header as read, written back in front for vnet ports
    uint32_t tag                   # the engine's: nonzero for a frame in the engine's own buffers
    uint32_t pending               # the engine's: writes of it still in its hands

cdef struct dp_event:
    uint64_t key                   # network << 48 | MAC, 0 when not about a MAC
    uint32_t a
    uint32_t b
    uint8_t kind

cdef enum write_result:
    WR_DONE = 0                    # written: the caller accounts it (out_sent)
    WR_FAILED = 1                  # not written: the caller counts a tx error
    WR_QUEUED = 2                  # the engine writes it later and accounts it then (out_sent, out_failed)

cdef struct engine_ops:
    # Write `length` bytes at `start` (the frame, behind its virtio-net header
    # for a vnet port) to port idx, never waiting for a slow receiver.
    write_result (*write)(void *eng, uint32_t idx, frame_t *f, const uint8_t *start, uint32_t length) noexcept nogil
    # Write `length` bytes gathered from n iovecs to port idx at once (a GRO
    # run, its payloads in the buffers of the batch in hand), after every
    # write queued before it, never waiting for a slow receiver.
    write_result (*writev)(void *eng, uint32_t idx, const iovec *iov, int n, uint32_t length) noexcept nogil
    # f (tag set) is about to change in place: the engine lets go of its queued writes of it first.
    void (*settle)(void *eng, frame_t *f) noexcept nogil
    # Port idx was added (0, or an errno the control plane reports).
    int (*port_up)(void *eng, uint32_t idx) noexcept nogil
    # Port idx is going away, removed by the control plane or, from_loop, its
    # fd failed. Returns a ticket for released(), 0 when there is nothing to wait for.
    uint64_t (*port_down)(void *eng, uint32_t idx, bint from_loop) noexcept nogil
    # Stop reading port idx (from the loop, lock held): its frames wait in its
    # fd's queue, and it must not wake the loop, until resume() (pause.pxi).
    void (*pause)(void *eng, uint32_t idx) noexcept nogil
    # Read port idx again (lock held), from the loop or, from_loop false, the control plane.
    void (*resume)(void *eng, uint32_t idx, bint from_loop) noexcept nogil
    # Whether the loop no longer holds what port_down(ticket) named (lock not held).
    bint (*released)(void *eng, uint64_t ticket) noexcept nogil
    # Start reading the tunnel's socket (0, or an errno).
    int (*tunnel_up)(void *eng, int fd) noexcept nogil
    # The loop: returns 0 once stop was asked, or the errno that ended it
    # (with what failed in sw.fail_what). Called without the lock.
    int (*run)(void *eng) noexcept nogil
    void (*free)(void *eng) noexcept nogil


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
