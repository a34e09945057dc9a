# cython: language_level=3
"""Ethernet II / 802.1Q parsing. See frame.pxd."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t

DROP_NAMES = ("none", "runt", "too_big", "src_multicast", "vlan_tagged", "same_port", "tunnel_mtu")
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
