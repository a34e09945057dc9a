# Byte order and the Internet checksum, shared by the parser, the segmenter
# (gso) and the coalescer (gro). Inline only: there is no module behind it.
#
# The checksum (RFC 1071) is summed in host order, 8 bytes at a time (runs
# of 64 bytes and more with vectors), in csum.h.
# Section 2(B): the one's complement sum is byte-order independent, so a sum
# of host-order words folded to 16 bits and stored back in host order is the
# big-endian checksum. Section 2(C): wider words with end-around carry fold to
# the same 16-bit sum. Every piece summed must start at an even offset of the
# checksummed data, which holds for headers, pseudo-headers and payloads.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef inline uint32_t load_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline void store_be16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF

cdef inline void store_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF

cdef extern from "csum.h" nogil:
    # Short runs (headers) inline and scalar, long ones (payloads) with the
    # widest vectors the CPU runs.
    uint64_t vs_csum_add(uint64_t s, const uint8_t *p, size_t n)

cdef inline uint64_t csum_add(uint64_t s, const uint8_t *p, uint32_t n) noexcept nogil:
    """Add n bytes at p to the running sum s (an odd last byte pairs with a
    zero, as the RFC pads it)."""
    return vs_csum_add(s, p, n)

cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    """The sum folded to 16 bits, still in host order (not complemented)."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s

cdef inline void csum_store(uint8_t *field, uint64_t s, bint udp) noexcept nogil:
    """Store the checksum of sum s (folded, complemented) into a 2-byte field."""
    cdef uint16_t c = ~csum_fold(s) & 0xFFFF
    if udp and c == 0:
        c = 0xFFFF  # RFC 768: a UDP checksum that computes to zero is sent as all ones
    memcpy(field, &c, 2)

cdef inline uint64_t csum_pseudo(uint64_t addr_sum, uint8_t proto, uint32_t l4_len) noexcept nogil:
    """Add the pseudo-header's protocol and upper-layer length (RFC 793,
    RFC 8200 8.1) to the sum of its addresses."""
    cdef uint8_t ph[4]
    ph[0] = 0
    ph[1] = proto
    store_be16(ph + 2, l4_len)
    return csum_add(addr_sum, ph, 4)
