# cython: language_level=3
"""Ethernet II / 802.1Q parsing. See frame.pxd."""
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy

from fastpath.inet cimport csum_add, csum_store

DROP_NAMES = ("none", "runt", "too_big", "src_multicast", "vlan_tagged", "same_port", "tunnel_mtu", "bad_vnet_hdr",
              "gso_unsupported", "spoofed_mac", "spoofed_ip", "spoofed_arp", "spoofed_nd", "ra_guard", "dhcp_guard",
              "mac_pinned", "mtu_exceeded", "vlan_unknown", "vlan_untagged", "vlan_stacked", "storm_broadcast",
              "storm_multicast", "storm_unknown_unicast", "rate_limited_rx", "rate_limited_tx")
assert len(DROP_NAMES) == DROP_REASONS


cdef drop_reason parse_eth(const uint8_t *p, uint32_t length, uint32_t mtu, eth_info *out) noexcept nogil:
    """Parse the L2 header of a frame of `length` bytes received on a port of `mtu`.

    The MTU bounds the L3 payload (IEEE 802.3), so a frame may carry
    mtu + 14 bytes, or mtu + 18 with an 802.1Q tag.
    """
    cdef uint16_t tpid
    if length < ETH_HLEN:
        return DROP_RUNT
    out.dst = p
    out.src = p + ETH_ALEN
    tpid = load_be16(p + 2 * ETH_ALEN)
    if tpid == ETH_P_8021Q or tpid == ETH_P_8021AD:
        if length < ETH_HLEN + VLAN_HLEN:
            return DROP_RUNT
        out.tagged = 1
        out.vlan = load_be16(p + ETH_HLEN) & 0x0FFF
        out.ethertype = load_be16(p + ETH_HLEN + 2)
        out.l2_len = ETH_HLEN + VLAN_HLEN
    else:
        out.tagged = 0
        out.vlan = 0
        out.ethertype = tpid
        out.l2_len = ETH_HLEN
    if length > mtu + out.l2_len:
        return DROP_TOO_BIG
    if mac_is_group(out.src):
        return DROP_SRC_MULTICAST
    return DROP_NONE


cdef bint parse_vnet(const uint8_t *hdr, uint32_t frame_len, vnet_info *out) noexcept nogil:
    """Read and check a virtio-net header against the frame behind it.
    False when it lies: an unknown GSO type, a GSO frame with gso_size 0 or
    a header length past its end, a checksum range outside the frame or
    starting in its Ethernet header (completing it would rewrite addresses
    or ethertype after the switch has checked them)."""
    out.flags = hdr[0]
    out.gso_type = hdr[1] & ~VNET_GSO_ECN
    out.hdr_len = load_le16(hdr + 2)
    out.gso_size = load_le16(hdr + 4)
    out.csum_start = load_le16(hdr + 6)
    out.csum_offset = load_le16(hdr + 8)
    if out.flags & VNET_F_NEEDS_CSUM:
        if out.csum_start < ETH_HLEN or <uint32_t>out.csum_start + out.csum_offset + 2 > frame_len:
            return False
    if out.gso_type == VNET_GSO_NONE:
        return True
    if (out.gso_type != VNET_GSO_TCPV4 and out.gso_type != VNET_GSO_TCPV6
            and out.gso_type != VNET_GSO_UDP and out.gso_type != VNET_GSO_UDP_L4):
        return False
    return out.gso_size > 0 and out.hdr_len <= frame_len and (out.flags & VNET_F_NEEDS_CSUM) != 0


cdef void complete_csum(uint8_t *frame, uint32_t length, const vnet_info *v) noexcept nogil:
    """Finish a partial checksum in software (RFC 1071): the field already
    holds the pseudo-header sum; add the bytes from csum_start to the end."""
    csum_store(frame + v.csum_start + v.csum_offset,
               csum_add(0, frame + v.csum_start, length - v.csum_start), v.csum_offset == 6)


def parse(bytes frame, uint32_t mtu=1500) -> dict:
    """Parse a frame for tests: {'drop': reason} or its header fields."""
    cdef eth_info info
    cdef const uint8_t *p = frame
    cdef drop_reason r = parse_eth(p, <uint32_t>len(frame), mtu, &info)
    if r != DROP_NONE:
        return {"drop": DROP_NAMES[r]}
    return {
        "drop": None,
        "dst": frame[:6],
        "src": frame[6:12],
        "ethertype": info.ethertype,
        "tagged": bool(info.tagged),
        "vlan": info.vlan,
        "l2_len": info.l2_len,
    }


def check_vnet(bytes vnet, bytes frame):
    """For tests: check a virtio-net header against its frame as a port does
    (parse_vnet). None when it contradicts the frame; else the frame as a
    port without offloads gets it, its partial checksum (if any) completed."""
    cdef vnet_info v
    cdef uint32_t n = <uint32_t>len(frame)
    cdef uint8_t *copy
    if len(vnet) != VNET_HLEN:
        raise ValueError(f"vnet: expected {VNET_HLEN} bytes, got {len(vnet)}")
    if not parse_vnet(vnet, n, &v):
        return None
    if not v.flags & VNET_F_NEEDS_CSUM:
        return frame
    # A buffer exactly as long as the frame: the sanitizers see any write past it.
    copy = <uint8_t *>PyMem_Malloc(max(n, 1))
    if copy == NULL:
        raise MemoryError()
    try:
        memcpy(copy, <const uint8_t *>frame, n)
        complete_csum(copy, n, &v)
        return copy[:n]
    finally:
        PyMem_Free(copy)
