# Receive-side coalescing (GRO): consecutive frames of one TCP or UDP flow
# over IPv4, bound for a port with offloads, become one super-frame and one
# write. The rules are the kernel's, in short.
#
# TCP (tcp_gro_receive): same addresses, ports, ack, window, options and
# header lengths, the next sequence number, only ACK (PSH ends a run).
# UDP (udp_gro_receive, as for a socket with UDP_GRO): same addresses and
# ports, the same TOS, TTL and DF, and consecutive IP IDs unless DF is set
# (RFC 6864: the ID of an atomic datagram carries nothing, and segmentation
# numbers them afresh). For both: every frame but the last of the run
# full-sized, no IP options that differ, no fragments, no padding, and a
# checksum that verifies, or one still partial (a virtio-net header with
# NEEDS_CSUM over exactly this L4 header): the merged super-frame is handed
# over with a partial checksum, which the receiver trusts, so a damaged
# frame must never be folded in.
#
# Nothing is copied but the run's headers: its frames' payloads stay where
# they were read, and the run leaves as one gathered write (iov), so the
# frames' buffers must stay untouched until the run is finished and written.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from fastpath.frame cimport VNET_HLEN
from fastpath.posix_io cimport iovec

cdef enum:
    GRO_MAX_SEGS = 64              # the kernel's UDP_GRO_CNT_MAX; TCP runs end at 64 KB first
    GRO_MAX_TCP_SEGS = GRO_MAX_SEGS
    GRO_MAX_UDP_SEGS = GRO_MAX_SEGS
    GRO_MAX_HDR = 14 + 60 + 60
    GRO_UNVERIFIED = 0x10000       # in gro_candidate's result: the L4 checksum is checked on joining a run

cdef struct gro_state:
    uint8_t *buf                   # the run's headers (Ethernet first); VNET_HLEN free bytes before them
    uint32_t cap                   # the longest super-frame
    uint32_t len                   # its length so far; 0: nothing pending
    uint32_t out                   # the port it is for
    uint32_t hdr_len               # Ethernet + IPv4 + TCP/UDP headers
    uint32_t next_seq              # TCP: the sequence number that continues the run
    uint16_t next_id               # UDP without DF: the IP ID that continues the run
    uint16_t gso_size              # payload of the first frame: every full frame's size
    uint16_t last_payload
    uint16_t nseg
    uint8_t proto                  # 6 or 17
    uint8_t psh
    uint8_t vnet0[VNET_HLEN]       # the first frame's virtio-net header: a run of one keeps it
    iovec iov[1 + GRO_MAX_SEGS]    # [0]: virtio-net header and headers (gro_finish); then each frame's payload

# The headers' length of a frame that may start or join a run, 0 when it may
# not; with GRO_UNVERIFIED set when its L4 checksum is not partial (per
# `vnet`) and is still to be verified: gro_start and gro_append verify it
# when the frame is about to join a run, and refuse it when it fails. Pass
# the value on as it is.
# `vnet` is the header the frame came with (all zero: none); `udp` allows
# UDP runs (the receiving kernel must take UDP_L4 super-frames).
cdef uint32_t gro_candidate(const uint8_t *frame, uint32_t length, const uint8_t *vnet, bint udp) noexcept nogil
# Take a candidate into the pending run (True), or refuse it (False: the
# caller must flush the pending run first).
cdef bint gro_append(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t hdr, uint32_t out) noexcept nogil
# Start a run with a held candidate (hdr from gro_candidate) and take the
# next into it (True), or leave no run pending (False: the two do not
# continue one another, or the held one could take nothing more, as TCP with
# PSH; it goes as it came).
cdef bint gro_pair(gro_state *g, const uint8_t *held, uint32_t held_len, uint32_t held_hdr, const uint8_t *held_vnet,
                   uint32_t held_out, const uint8_t *frame, uint32_t length, uint32_t hdr, uint32_t out) noexcept nogil
# Finish the pending run: fix the IPv4 length and checksum, the TCP flags or
# UDP length, the L4 partial checksum in its headers, and write the
# virtio-net header for it (a run of one keeps its own) just before them.
# Returns how many of g.iov make the write (the virtio-net header, the
# headers, each payload), with the frame's length (without the virtio-net
# header) in *frame_len; g.len becomes 0.
cdef int gro_finish(gro_state *g, uint32_t *frame_len) noexcept nogil
