# cython: language_level=3
"""VXLAN header helpers and the flow hash behind the outer UDP source port."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from fastpath.frame cimport ETH_HLEN, load_be16

# The `reason` label of vxlan.drops, by vx_drop.
VX_DROP_NAMES = ("ok", "truncated", "bad_flags", "unknown_vni", "unknown_peer", "inner_malformed", "mac_pinned",
                 "split_horizon")
assert len(VX_DROP_NAMES) == VX_DROPS


cdef inline uint64_t _mix(uint64_t h, uint64_t v) noexcept nogil:
    h ^= v
    h *= 0x9E3779B97F4A7C15ULL  # 2^64 / golden ratio: one multiply per 64-bit word
    return h ^ (h >> 29)


cdef uint32_t flow_hash(const uint8_t *frame, uint32_t length) noexcept nogil:
    """Hash of the inner flow: MACs and ethertype, plus for IPv4 the addresses,
    protocol and (unfragmented TCP/UDP) ports. RFC 7348 section 5 recommends
    deriving the outer source port from such a hash so ECMP spreads flows
    while each flow keeps one path (and its order). The fields are gathered
    into four 64-bit words (unused bytes zero), hashed a word at a time."""
    cdef uint8_t key[32]
    cdef uint64_t w[4]
    cdef uint64_t h = 0xcbf29ce484222325ULL
    cdef uint32_t ihl, i
    cdef const uint8_t *ip
    memset(key, 0, sizeof(key))
    memcpy(key, frame, ETH_HLEN)
    if length >= ETH_HLEN + 20 and load_be16(frame + 12) == 0x0800:
        ip = frame + ETH_HLEN
        key[14] = ip[9]
        memcpy(key + 16, ip + 12, 8)
        ihl = (ip[0] & 0x0F) * 4
        if ((ip[9] == 6 or ip[9] == 17) and (load_be16(ip + 6) & 0x3FFF) == 0
                and ihl >= 20 and length >= ETH_HLEN + ihl + 4):
            memcpy(key + 24, ip + ihl, 4)
    memcpy(w, key, sizeof(key))
    for i in range(4):
        h = _mix(h, w[i])
    return <uint32_t>(h ^ (h >> 32))


def source_port(bytes frame, uint16_t lo, uint16_t hi) -> int:
    """The outer UDP source port the datapath picks for this inner frame."""
    # flow_hash reads a whole Ethernet header; the loop hashes only frames that parse.
    if len(frame) < ETH_HLEN:
        raise ValueError(f"a frame of {len(frame)} bytes has no Ethernet header")
    if lo > hi:
        raise ValueError(f"the source port range {lo}-{hi} is empty")
    return lo + flow_hash(frame, <uint32_t>len(frame)) % (hi - lo + 1)
