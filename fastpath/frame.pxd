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
    DROP_VLAN_TAGGED = 4           # an 802.1Q tag (VID other than 0) on an access port or from the tunnel
    DROP_SAME_PORT = 5             # destination was learned on the ingress port
    DROP_TUNNEL_MTU = 6            # bound for a VXLAN peer but too big for the underlay
    DROP_BAD_VNET = 7              # a virtio-net header that contradicts its frame
    DROP_GSO_UNSUPPORTED = 8       # a TSO super-frame bound where it cannot be segmented
    # Port policy (policy.pxi): a frame from a port with port security on
    DROP_SPOOFED_MAC = 9           # source MAC is not the port's
    DROP_SPOOFED_IP = 10           # IPv4/IPv6 source is not the port's
    DROP_SPOOFED_ARP = 11          # ARP sender MAC or IP is not the port's
    DROP_SPOOFED_ND = 12           # ND target or link-layer option is not the port's
    DROP_RA_GUARD = 13             # an IPv6 router advertisement or redirect from a port not marked router
    DROP_DHCP_GUARD = 14           # a DHCP(v6) server reply from a port not marked dhcp_server
    DROP_MAC_PINNED = 15           # source MAC is another port's own (pinned) MAC
    # Output (output.pxi), counted on the port the frame was bound for
    DROP_MTU_EXCEEDED = 16         # its L3 length (a super-frame's: each segment's) is over that port's MTU
    # VLANs (vlan.pxi)
    DROP_VLAN_UNKNOWN = 17         # a tag whose VID the trunk port does not carry
    DROP_VLAN_UNTAGGED = 18        # an untagged (or VID 0) frame on a trunk port without a native network
    DROP_VLAN_STACKED = 19         # stacked tags (QinQ): an 802.1ad outer tag, or a tag behind the tag
    # Port limits (limits.pxi)
    DROP_STORM_BROADCAST = 20      # a broadcast the port floods over its storm limit
    DROP_STORM_MULTICAST = 21      # a multicast likewise
    DROP_STORM_UNKNOWN_UNICAST = 22   # a unicast to an unknown destination likewise
    DROP_RATE_LIMITED_RX = 23      # a frame from the port over its rate limit
    DROP_RATE_LIMITED_TX = 24      # a frame to the port over its rate limit
    DROP_REASONS = 25

# The virtio-net header that leads each frame on a TAP opened with
# IFF_VNET_HDR (virtio spec 5.1.6, struct virtio_net_hdr; 12 bytes with
# num_buffers, as set by TUNSETVNETHDRSZ). Little-endian on this kernel.
cdef enum:
    VNET_HLEN = 12
    VNET_F_NEEDS_CSUM = 1          # checksum from csum_start, stored at +csum_offset, is partial
    VNET_F_DATA_VALID = 2
    VNET_GSO_NONE = 0
    VNET_GSO_TCPV4 = 1
    VNET_GSO_UDP = 3
    VNET_GSO_TCPV6 = 4
    VNET_GSO_UDP_L4 = 5
    VNET_GSO_ECN = 0x80

cdef struct vnet_info:
    uint8_t flags
    uint8_t gso_type               # without the ECN bit
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset

cdef inline uint16_t load_le16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (p[1] << 8))

cdef bint parse_vnet(const uint8_t *hdr, uint32_t frame_len, vnet_info *out) noexcept nogil
cdef void complete_csum(uint8_t *frame, uint32_t length, const vnet_info *v) noexcept nogil

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
