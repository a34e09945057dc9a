# Port policy: what a port's own frames must keep to, asked by decide() as a
# step of its own for frames from local ports (a frame from the tunnel comes
# from a VTEP, not a container; pinning covers it, in decide()).
#
# With port security on (POL_SECURITY), a frame is dropped, by reason, when
#   spoofed_mac  its source MAC is not one of the port's;
#   ra_guard     it is an ICMPv6 router advertisement (134) or redirect (137)
#                and the port is not marked router;
#   dhcp_guard   it is a DHCP server reply (UDP 67 -> 68, or DHCPv6 547 -> 546)
#                and the port is not marked dhcp_server;
#   spoofed_ip   its IPv4 or IPv6 source is not one of the port's addresses of
#                that family (checked when the port has some), except a DHCP
#                client's 0.0.0.0 (UDP 68 -> 67) and DAD's :: (ICMPv6, or a
#                hop-by-hop header leading an MLD report); a header too short
#                to read the source from cannot be shown to be the port's;
#   spoofed_arp  its ARP sender MAC is not the port's, or its sender IP is
#                neither one of the port's IPv4 addresses nor 0.0.0.0 (a probe);
#   spoofed_nd   a Neighbor Solicitation or Advertisement (RFC 4861 4.3, 4.4)
#                whose source/target link-layer address option is not the
#                port's MAC, an advertisement whose target is not the port's
#                address, or a DAD solicitation (from ::) for another's address.
# The checks read a few header fields at fixed offsets: a port's frames cost
# a compare of their source MAC and, for IP, of one address.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp

from fastpath.frame cimport (DROP_DHCP_GUARD, DROP_NONE, DROP_RA_GUARD, DROP_SPOOFED_ARP, DROP_SPOOFED_IP,
                             DROP_SPOOFED_MAC, DROP_SPOOFED_ND, ETH_HLEN, drop_reason, eth_info, load_be16)

cdef enum:
    POL_MACS = 8                   # the port's MAC and the MACs it may also send from
    POL_IP4 = 32
    POL_IP6 = 48                   # room for a link-local address per MAC beside the port's own
    POL_SECURITY = 1               # policy flags
    POL_ROUTER = 2                 # may send router advertisements
    POL_DHCP_SERVER = 4            # may send DHCP server replies
    ETH_P_IP = 0x0800
    ETH_P_ARP = 0x0806
    ETH_P_IPV6 = 0x86DD
    IPPROTO_HOPOPTS = 0
    IPPROTO_UDP = 17
    IPPROTO_ICMPV6 = 58
    ND_ROUTER_ADVERT = 134
    ND_NEIGHBOR_SOLICIT = 135
    ND_NEIGHBOR_ADVERT = 136
    ND_REDIRECT = 137
    ND_OPT_SOURCE_LL = 1
    ND_OPT_TARGET_LL = 2

cdef struct port_policy:
    uint8_t flags
    uint8_t nmacs
    uint8_t nip4                   # 0: any IPv4 source (the port has no IPv4 address)
    uint8_t nip6                   # 0: any IPv6 source
    uint64_t macs[POL_MACS]        # as mac_key(0, mac)
    uint8_t ip4[POL_IP4][4]
    uint8_t ip6[POL_IP6][16]


cdef inline bint pol_mac_ok(const port_policy *p, const uint8_t *mac) noexcept nogil:
    cdef uint64_t m = mac_key(0, mac)
    cdef uint32_t i
    for i in range(p.nmacs):
        if p.macs[i] == m:
            return True
    return False


cdef inline bint pol_ip4_ok(const port_policy *p, const uint8_t *a) noexcept nogil:
    cdef uint32_t i
    if p.nip4 == 0:
        return True
    for i in range(p.nip4):
        if memcmp(p.ip4[i], a, 4) == 0:
            return True
    return False


cdef inline bint pol_ip6_ok(const port_policy *p, const uint8_t *a) noexcept nogil:
    cdef uint32_t i
    if p.nip6 == 0:
        return True
    for i in range(p.nip6):
        if memcmp(p.ip6[i], a, 16) == 0:
            return True
    return False


cdef inline bint is_zero(const uint8_t *a, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if a[i]:
            return False
    return True


cdef drop_reason pol_ipv4(const port_policy *p, const uint8_t *l3, uint32_t n) noexcept nogil:
    cdef uint32_t ihl
    cdef uint16_t sport = 0, dport = 0
    if n < 20:
        return DROP_SPOOFED_IP
    ihl = (l3[0] & 0x0F) * 4
    # UDP ports are read from a first fragment only.
    if l3[9] == IPPROTO_UDP and ihl >= 20 and n >= ihl + 4 and (load_be16(l3 + 6) & 0x1FFF) == 0:
        sport = load_be16(l3 + ihl)
        dport = load_be16(l3 + ihl + 2)
        if sport == 67 and dport == 68 and not (p.flags & POL_DHCP_SERVER):
            return DROP_DHCP_GUARD
    if pol_ip4_ok(p, l3 + 12):
        return DROP_NONE
    if is_zero(l3 + 12, 4) and sport == 68 and dport == 67:
        return DROP_NONE  # a DHCP client before it has an address
    return DROP_SPOOFED_IP


cdef drop_reason pol_arp(const port_policy *p, const uint8_t *l3, uint32_t n) noexcept nogil:
    # RFC 826 for Ethernet and IPv4: htype 1, ptype 0x0800, hlen 6, plen 4;
    # sender MAC at 8, sender IP at 14. Any other ARP cannot be checked.
    if n < 28 or load_be16(l3) != 1 or load_be16(l3 + 2) != ETH_P_IP or l3[4] != 6 or l3[5] != 4:
        return DROP_SPOOFED_ARP
    if not pol_mac_ok(p, l3 + 8):
        return DROP_SPOOFED_ARP
    if not pol_ip4_ok(p, l3 + 14) and not is_zero(l3 + 14, 4):
        return DROP_SPOOFED_ARP
    return DROP_NONE


cdef drop_reason pol_nd(const port_policy *p, const uint8_t *icmp, uint32_t n, bint from_unspec) noexcept nogil:
    """A Neighbor Solicitation or Advertisement of n bytes: target at 8, options from 24."""
    cdef uint32_t off = 24, olen
    if n < 24:
        return DROP_SPOOFED_ND
    if (icmp[0] == ND_NEIGHBOR_ADVERT or from_unspec) and not pol_ip6_ok(p, icmp + 8):
        return DROP_SPOOFED_ND
    while off + 2 <= n:
        olen = icmp[off + 1] * 8
        if olen == 0 or off + olen > n:
            return DROP_SPOOFED_ND  # RFC 4861 4.6: a zero-length option is invalid
        if (icmp[off] == ND_OPT_SOURCE_LL or icmp[off] == ND_OPT_TARGET_LL) and (
                olen < 8 or not pol_mac_ok(p, icmp + off + 2)):
            return DROP_SPOOFED_ND
        off += olen
    return DROP_NONE


cdef drop_reason pol_ipv6(const port_policy *p, const uint8_t *l3, uint32_t n) noexcept nogil:
    cdef uint8_t nh
    cdef bint unspec
    if n < 40:
        return DROP_SPOOFED_IP
    if 40 + <uint32_t>load_be16(l3 + 4) < n:
        n = 40 + load_be16(l3 + 4)  # what follows the payload is the link's padding, not ND options
    nh = l3[6]
    if nh == IPPROTO_ICMPV6 and n >= 41:
        if (l3[40] == ND_ROUTER_ADVERT or l3[40] == ND_REDIRECT) and not (p.flags & POL_ROUTER):
            return DROP_RA_GUARD
    elif nh == IPPROTO_UDP and n >= 44:
        if load_be16(l3 + 40) == 547 and load_be16(l3 + 42) == 546 and not (p.flags & POL_DHCP_SERVER):
            return DROP_DHCP_GUARD
    unspec = is_zero(l3 + 8, 16)
    if unspec:
        # Only DAD speaks from :: : its solicitation, and the MLD report (behind a hop-by-hop header) before it.
        if not (nh == IPPROTO_HOPOPTS or (nh == IPPROTO_ICMPV6 and n >= 41 and l3[40] == ND_NEIGHBOR_SOLICIT)):
            return DROP_SPOOFED_IP
    elif not pol_ip6_ok(p, l3 + 8):
        return DROP_SPOOFED_IP
    if nh == IPPROTO_ICMPV6 and n >= 41 and (l3[40] == ND_NEIGHBOR_SOLICIT or l3[40] == ND_NEIGHBOR_ADVERT):
        return pol_nd(p, l3 + 40, n - 40, unspec)
    return DROP_NONE


cdef inline drop_reason policy_ingress(const port_policy *p, const uint8_t *data, uint32_t length,
                                       const eth_info *eth) noexcept nogil:
    """The port policy step of decide() for an untagged frame from a local port."""
    cdef const uint8_t *l3 = data + eth.l2_len
    cdef uint32_t n = length - eth.l2_len
    if not (p.flags & POL_SECURITY):
        return DROP_NONE
    if not pol_mac_ok(p, eth.src):
        return DROP_SPOOFED_MAC
    if eth.ethertype == ETH_P_IP:
        return pol_ipv4(p, l3, n)
    if eth.ethertype == ETH_P_ARP:
        return pol_arp(p, l3, n)
    if eth.ethertype == ETH_P_IPV6:
        return pol_ipv6(p, l3, n)
    return DROP_NONE
