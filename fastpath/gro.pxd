# Receive-side coalescing (GRO) of TCP/IPv4 segments that came out of the
# tunnel, back into one super-frame for a port with offloads: the rules are
# those of the kernel's tcp_gro_receive, in short. Segments merge only when
# they continue one flow exactly: same addresses, ports, ack, window, options
# and header lengths, the next sequence number, only ACK (PSH ends a run),
# every segment but the last of the run full-sized, and a valid checksum
# (a merged super-frame is handed over with a partial checksum, which the
# receiver trusts, so a damaged segment must never be folded in).
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    GRO_MAX_SEGS = 44              # about 64 KB of 1448-byte segments
    GRO_MAX_HDR = 14 + 60 + 60

cdef struct gro_state:
    uint8_t *buf                   # the super-frame under construction (Ethernet header first)
    uint32_t cap
    uint32_t len                   # 0: nothing pending
    uint32_t out                   # the port it is for
    uint32_t hdr_len               # Ethernet + IPv4 + TCP headers
    uint32_t next_seq
    uint16_t gso_size              # payload of the first segment: every full segment's size
    uint16_t last_payload
    uint16_t nseg
    uint8_t psh

# Take the frame into the pending run (True), or refuse it (False: the caller
# must flush the pending run, then send the frame as it is, or start a run
# with gro_start).
cdef bint gro_append(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t out) noexcept nogil
cdef bint gro_start(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t out) noexcept nogil
# Finish the pending run in place: fix the IPv4 length and checksum, the TCP
# flags and its partial checksum, and write the virtio-net header for it
# (all zero for a run of one). Returns the frame length; g.len becomes 0.
cdef uint32_t gro_finish(gro_state *g, uint8_t *vnet) noexcept nogil
