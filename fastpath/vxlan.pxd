# VXLAN (RFC 7348) headers.
#
#  RFC 7348 section 5, the VXLAN header:
#    0                   1                   2                   3
#    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
#   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#   |R|R|R|R|I|R|R|R|            Reserved                           |
#   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#   |                VXLAN Network Identifier (VNI) |   Reserved    |
#   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
#  "The I flag MUST be set to 1 for a valid VXLAN Network ID (VNI)."
#
# We send it behind our own 8-byte UDP header (the raw send socket lets each
# packet carry its own source port; the kernel adds the IPv4 header).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    VXLAN_HLEN = 8
    UDP_HLEN = 8
    IPV4_HLEN = 20
    VXLAN_FLAG_I = 0x08
    # What an inner frame costs on the underlay beyond its own length:
    # outer IPv4 + UDP + VXLAN (the outer Ethernet header is not in the MTU).
    VXLAN_IP_OVERHEAD = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN

# Why a packet received on the VXLAN socket was dropped (VX_DROP_NAMES in
# vxlan.pyx names them, in this order).
cdef enum vx_drop:
    VX_OK = 0
    VX_TRUNCATED = 1               # shorter than the VXLAN header plus an Ethernet header
    VX_BAD_FLAGS = 2               # I flag clear
    VX_UNKNOWN_VNI = 3             # no network has this VNI
    VX_UNKNOWN_PEER = 4            # the sender is not a peer of that VNI
    VX_INNER_MALFORMED = 5         # the inner frame failed the port checks
    VX_MAC_PINNED = 6              # the inner source MAC is a local port's own (pinned) MAC
    VX_SPLIT_HORIZON = 7           # the inner destination is behind a peer: never relayed (RFC 7348 4.2)
    VX_DROPS = 8

cdef inline uint32_t vxlan_vni(const uint8_t *h) noexcept nogil:
    return (<uint32_t>h[4] << 16) | (<uint32_t>h[5] << 8) | h[6]

cdef inline void vxlan_write(uint8_t *h, uint32_t vni) noexcept nogil:
    h[0] = VXLAN_FLAG_I
    h[1] = h[2] = h[3] = 0
    h[4] = (vni >> 16) & 0xFF
    h[5] = (vni >> 8) & 0xFF
    h[6] = vni & 0xFF
    h[7] = 0

cdef inline void udp_write(uint8_t *h, uint16_t sport, uint16_t dport, uint16_t length) noexcept nogil:
    # RFC 7348 section 5: the UDP checksum SHOULD be transmitted as zero
    # over IPv4, and a zero checksum MUST be accepted on receipt.
    h[0] = sport >> 8
    h[1] = sport & 0xFF
    h[2] = dport >> 8
    h[3] = dport & 0xFF
    h[4] = length >> 8
    h[5] = length & 0xFF
    h[6] = h[7] = 0

cdef uint32_t flow_hash(const uint8_t *frame, uint32_t length) noexcept nogil
