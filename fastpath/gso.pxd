# Software segmentation of TCP (and UDP_L4) offload super-frames, as the
# Linux kernel's tcp_gso_segment / __udp_gso_segment / skb_segment do it when
# the device cannot: each segment carries a copy of the headers, its own IP
# length, IPv4 ID, TCP sequence number and flags, and complete checksums.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath.frame cimport vnet_info

cdef struct seg_t:
    uint8_t *data                  # the segment's Ethernet header; GSO_HEADROOM bytes before it are free for tunnel headers
    uint32_t len

cdef enum:
    GSO_HEADROOM = 16              # room the caller uses to push UDP+VXLAN headers in front of each segment
    GSO_ERR_UNSUPPORTED = 1        # not IPv4/IPv6 TCP (or UDP_L4) behind Ethernet (optionally one 802.1Q tag), or legacy UFO
    GSO_ERR_MALFORMED = 2          # headers truncated / inconsistent (IP length, IHL, TCP data offset, gso_type vs protocol)
    GSO_ERR_TOO_MANY = 3           # would need more segments or scratch than given
    GSO_ERRORS = 4

cdef enum:
    # The longest header block copied into every segment: Ethernet with one
    # tag (18) + IPv4 with options (60) + TCP with options (60).
    GSO_MAX_HDR = 138
    GSO_SLOT_ALIGN = 8             # each segment's slot (headroom + frame) starts at a multiple of this in scratch
    # Scratch a segment can cost beyond its share of the payload. A scratch of
    # length + max_segs * GSO_SEG_ROOM bytes never runs out before max_segs does.
    GSO_SEG_ROOM = GSO_HEADROOM + GSO_MAX_HDR + GSO_SLOT_ALIGN - 1

cdef int gso_segment(const uint8_t *frame, uint32_t length, const vnet_info *v, uint8_t *scratch,
                     uint32_t scratch_len, seg_t *segs, uint32_t max_segs) noexcept nogil
    # >0: number of segments written into scratch, described by segs[]; <0: -GSO_ERR_*.
    # `frame` is the super-frame without its virtio-net header, `v` that header
    # as parse_vnet read it. Nothing is written on failure.

# Segmenting without copying the payload: gso_plan checks a super-frame and
# works out its segments; gso_header writes segment i's headers (hlen bytes,
# its lengths, ID, sequence number, flags and complete checksums) at d, the
# checksum summed over its payload where it lies (`payload`: the chunk of
# the super-frame that segment i carries, frame + hlen + i * mss). A sender
# then gathers headers and payload with an iovec: the payload is never
# copied in user space, and read once, for its checksum.
cdef struct gso_plan_t:
    uint32_t l2, l3, l4, thl, hlen  # offsets and lengths; hlen: the headers every segment repeats
    uint32_t mss
    uint32_t nseg
    uint32_t last_chunk            # the last segment's payload (mss for every other)
    uint32_t csum_off
    uint32_t seq
    uint64_t addr_sum              # the pseudo-header's addresses, summed
    uint16_t ip_id
    uint8_t proto
    uint8_t flags                  # TCP
    bint v4

cdef int gso_plan(const uint8_t *frame, uint32_t length, const vnet_info *v, gso_plan_t *p) noexcept nogil
    # 0, or -GSO_ERR_* (never TOO_MANY: the caller bounds p.nseg).
cdef void gso_header(const gso_plan_t *p, const uint8_t *frame, uint32_t i, uint8_t *d,
                     const uint8_t *payload) noexcept nogil
