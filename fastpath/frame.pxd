# Ethernet II and IEEE 802.1Q header parsing over a (pointer, length) cursor.
#
# Every field is read byte by byte: the frame sits in a buffer at an
# arbitrary offset, and nothing here casts it to a wider type.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    ETH_ALEN = 6
    ETH_HLEN = 14                  # dst(6) src(6) ethertype(2)
    VLAN_HLEN = 4                  # TPID(2) TCI(2)
    ETH_P_8021Q = 0x8100
    ETH_P_8021AD = 0x88A8

# Why a frame was dropped. The names (DROP_NAMES in frame.pyx) are the
# `reason` label of the drop counters; keep the two in the same order.
cdef enum drop_reason:
    DROP_NONE = 0
    DROP_RUNT = 1                  # shorter than an Ethernet header (14 bytes)
    DROP_TOO_BIG = 2               # longer than the port's MTU plus L2 header
    DROP_SRC_MULTICAST = 3         # group bit set in the source MAC
    DROP_VLAN_TAGGED = 4           # 802.1Q/802.1ad tag on an access port
    DROP_SAME_PORT = 5             # destination was learned on the ingress port
    DROP_TUNNEL_MTU = 6            # bound for a VXLAN peer but too big for the underlay
    DROP_REASONS = 7

cdef struct eth_info:
    const uint8_t *dst
    const uint8_t *src
    uint16_t ethertype             # the inner ethertype when tagged
    uint16_t vlan                  # VLAN ID of the outer tag, 0 when untagged
    uint8_t tagged
    uint8_t l2_len                 # 14, or 18 with a tag

cdef inline uint16_t load_be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])

cdef inline bint mac_is_group(const uint8_t *mac) noexcept nogil:
    # IEEE 802: the I/G bit, least significant bit of the first octet,
    # marks multicast and broadcast addresses.
    return mac[0] & 1

cdef drop_reason parse_eth(const uint8_t *p, uint32_t length, uint32_t mtu, eth_info *out) noexcept nogil
