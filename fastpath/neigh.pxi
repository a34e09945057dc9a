# Neighbour suppression: one step of the forwarding decision.
#
# The control plane keeps, per network, the IPv4 and IPv6 addresses it knows
# (every port the cluster publishes, and the local ports' own) with their MACs
# in a neighbour table. A broadcast ARP request (RFC 826) or a multicast
# neighbour solicitation (RFC 4861 7.2.3) from a local port, sent by a known
# neighbour for a known address, is answered by the switch: the reply is built
# in the request's buffer and written back out of the ingress port, and the
# request goes nowhere else, so it never crosses the underlay. Anything else
# (a gratuitous ARP, an ARP probe or DAD solicitation, a sender the table does
# not know, an unknown target, a request from the tunnel) is left to the rest
# of the decision: it floods as before.
#
# The table: open addressing with linear probing and backward-shift deletion,
# as the MAC table; slots sized once to 2 * capacity (a power of two), so it
# is never more than half full. It changes only under sw.lock.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset

from fastpath.frame cimport ETH_HLEN, eth_info, load_be16
from fastpath.inet cimport csum_add, csum_fold, csum_pseudo, csum_store, load_be32, store_be16

cdef enum:
    NEIGH_ETH_P_IPV4 = 0x0800      # ETH_P_ARP and IPPROTO_ICMPV6 come from policy.pxi, included first
    NEIGH_ETH_P_IPV6 = 0x86DD
    ARP_LEN = 28                   # Ethernet/IPv4 ARP: htype ptype hlen plen op sha spa tha tpa
    ARP_REQUEST = 1
    ARP_REPLY = 2
    IP6_HLEN = 40
    ND_NS = 135
    ND_NA = 136
    ND_LEN = 24                    # type code csum reserved/flags target
    ND_OPT_TLLA = 2                # target link-layer address option (8 bytes for Ethernet)
    NA_FLAGS = 0x60                # Solicited | Override (RFC 4861 4.4): the answer is authoritative
    NEIGH_ARP = 1                  # decision_t.answer: what kind of reply
    NEIGH_ND = 2

cdef struct neigh_entry:
    uint16_t network               # 0 marks an empty slot
    uint8_t family                 # 4 or 6
    uint8_t addr[16]               # an IPv4 address in the first 4 bytes
    uint8_t mac[6]

cdef struct neigh_table:
    neigh_entry *slots
    uint32_t mask
    uint32_t count
    uint32_t capacity
    uint64_t seed


cdef int neigh_init(neigh_table *t, uint32_t capacity, uint64_t seed) noexcept nogil:
    cdef uint32_t n = 16
    while n < 2 * capacity:
        n <<= 1
    t.slots = <neigh_entry *>calloc(n, sizeof(neigh_entry))
    t.mask = n - 1
    t.count = 0
    t.capacity = capacity
    t.seed = seed
    return 0 if t.slots != NULL else -1


cdef void neigh_free(neigh_table *t) noexcept nogil:
    free(t.slots)
    t.slots = NULL


cdef inline uint32_t neigh_home(const neigh_table *t, uint16_t network, uint8_t family,
                                const uint8_t *addr) noexcept nogil:
    # FNV-1a, seeded: addresses are chosen by whoever sends the requests.
    cdef uint64_t h = 14695981039346656037ULL ^ t.seed
    cdef int i
    h = (h ^ network) * 1099511628211ULL
    h = (h ^ family) * 1099511628211ULL
    for i in range(4 if family == 4 else 16):
        h = (h ^ addr[i]) * 1099511628211ULL
    return <uint32_t>(h ^ (h >> 32)) & t.mask


cdef inline bint neigh_is(const neigh_entry *e, uint16_t network, uint8_t family, const uint8_t *addr) noexcept nogil:
    return e.network == network and e.family == family and memcmp(e.addr, addr, 4 if family == 4 else 16) == 0


cdef neigh_entry *neigh_find(const neigh_table *t, uint16_t network, uint8_t family, const uint8_t *addr) noexcept nogil:
    cdef uint32_t i
    if t.count == 0:
        return NULL
    i = neigh_home(t, network, family, addr)
    while t.slots[i].network:
        if neigh_is(&t.slots[i], network, family, addr):
            return &t.slots[i]
        i = (i + 1) & t.mask
    return NULL


cdef int neigh_set(neigh_table *t, uint16_t network, uint8_t family, const uint8_t *addr,
                   const uint8_t *mac) noexcept nogil:
    """Add or re-point an address: 0, or -1 when the table is full."""
    cdef uint32_t i = neigh_home(t, network, family, addr)
    cdef neigh_entry *e
    while t.slots[i].network:
        if neigh_is(&t.slots[i], network, family, addr):
            memcpy(t.slots[i].mac, mac, 6)
            return 0
        i = (i + 1) & t.mask
    if t.count >= t.capacity:
        return -1
    e = &t.slots[i]
    memset(e, 0, sizeof(neigh_entry))
    e.network = network
    e.family = family
    memcpy(e.addr, addr, 4 if family == 4 else 16)
    memcpy(e.mac, mac, 6)
    t.count += 1
    return 0


cdef bint neigh_delete(neigh_table *t, uint16_t network, uint8_t family, const uint8_t *addr) noexcept nogil:
    cdef neigh_entry *e = neigh_find(t, network, family, addr)
    cdef uint32_t i, j, home
    if e == NULL:
        return False
    i = <uint32_t>(e - t.slots)
    j = i
    while True:  # backward shift: pull later members of the chain into the hole
        j = (j + 1) & t.mask
        if t.slots[j].network == 0:
            break
        home = neigh_home(t, t.slots[j].network, t.slots[j].family, t.slots[j].addr)
        if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
            continue  # its home lies between the hole and it: it stays
        t.slots[i] = t.slots[j]
        i = j
    t.slots[i].network = 0
    t.count -= 1
    return True


cdef inline bint neigh_known(const neigh_table *t, uint16_t network, uint8_t family, const uint8_t *addr,
                             const uint8_t *mac) noexcept nogil:
    """Whether the table has addr in network, at exactly mac."""
    cdef neigh_entry *e = neigh_find(t, network, family, addr)
    return e != NULL and memcmp(e.mac, mac, 6) == 0


cdef bint nd_checksum_ok(const uint8_t *ip6, uint32_t plen) noexcept nogil:
    cdef uint64_t s = csum_add(0, ip6 + 8, 32)
    s = csum_pseudo(s, IPPROTO_ICMPV6, plen)
    s = csum_add(s, ip6 + IP6_HLEN, plen)
    return csum_fold(s) == 0xFFFF


cdef bint neigh_suppress(const neigh_table *t, const uint8_t *data, uint32_t length, const eth_info *eth,
                         uint16_t network, uint8_t *kind, uint8_t *mac) noexcept nogil:
    """The suppression step, for a frame with a group destination from a
    local port: True when the switch answers it (kind: NEIGH_ARP or NEIGH_ND,
    mac: the target's MAC, for neigh_reply)."""
    cdef const uint8_t *p
    cdef const uint8_t *ip6
    cdef neigh_entry *target
    cdef uint32_t plen
    if eth.ethertype == ETH_P_ARP:
        if length < ETH_HLEN + ARP_LEN:
            return False
        p = data + ETH_HLEN
        if (load_be16(p) != 1 or load_be16(p + 2) != NEIGH_ETH_P_IPV4 or p[4] != 6 or p[5] != 4
                or load_be16(p + 6) != ARP_REQUEST):
            return False
        # Sender: sha at 8, spa at 14; target: tpa at 24. A probe (spa 0.0.0.0,
        # RFC 5227) and a gratuitous ARP (spa == tpa) are announcements: they flood.
        if load_be32(p + 14) == 0 or memcmp(p + 14, p + 24, 4) == 0 or memcmp(p + 8, eth.src, 6) != 0:
            return False
        if not neigh_known(t, network, 4, p + 14, p + 8):
            return False
        target = neigh_find(t, network, 4, p + 24)
        if target == NULL or memcmp(target.mac, eth.src, 6) == 0:
            return False
        kind[0] = NEIGH_ARP
        memcpy(mac, target.mac, 6)
        return True
    if eth.ethertype == NEIGH_ETH_P_IPV6:
        if length < ETH_HLEN + IP6_HLEN + ND_LEN:
            return False
        ip6 = data + ETH_HLEN
        plen = load_be16(ip6 + 4)
        # RFC 4861 7.1.1: hop limit 255, ICMP length >= 24, code 0, a valid
        # checksum, a unicast target; the source :: (DAD) is an announcement.
        if ((ip6[0] >> 4) != 6 or ip6[6] != IPPROTO_ICMPV6 or ip6[7] != 255 or plen < ND_LEN
                or ETH_HLEN + IP6_HLEN + plen > length):
            return False
        p = ip6 + IP6_HLEN
        if p[0] != ND_NS or p[1] != 0 or p[8] == 0xFF:
            return False
        if not neigh_known(t, network, 6, ip6 + 8, eth.src):
            return False  # also the unspecified source: :: is never in the table
        target = neigh_find(t, network, 6, p + 8)
        if target == NULL or memcmp(target.mac, eth.src, 6) == 0 or not nd_checksum_ok(ip6, plen):
            return False
        kind[0] = NEIGH_ND
        memcpy(mac, target.mac, 6)
        return True
    return False


cdef uint32_t neigh_reply(uint8_t *data, uint8_t kind, const uint8_t *mac) noexcept nogil:
    """Turn the request at data (which neigh_suppress accepted) into its
    reply, in place; returns the reply's length. The buffer holds at least
    ETH_HLEN + IP6_HLEN + ND_LEN + 8 bytes (every frame buffer does)."""
    cdef uint8_t asker[6]
    cdef uint8_t sender_ip[16]
    cdef uint8_t target_ip[16]
    cdef uint8_t *p = data + ETH_HLEN
    cdef uint64_t s
    memcpy(asker, data + 6, 6)
    memcpy(data, asker, 6)                   # to the asker, from the target
    memcpy(data + 6, mac, 6)
    if kind == NEIGH_ARP:
        memcpy(sender_ip, p + 14, 4)
        memcpy(target_ip, p + 24, 4)
        store_be16(p + 6, ARP_REPLY)
        memcpy(p + 8, mac, 6)       # sha, spa: the target's
        memcpy(p + 14, target_ip, 4)
        memcpy(p + 18, asker, 6)             # tha, tpa: the asker's
        memcpy(p + 24, sender_ip, 4)
        return ETH_HLEN + ARP_LEN            # padding, if any, is not sent back
    memcpy(sender_ip, p + 8, 16)
    memcpy(target_ip, p + IP6_HLEN + 8, 16)
    p[0] = 0x60                              # version 6, traffic class 0, flow label 0
    p[1] = p[2] = p[3] = 0
    store_be16(p + 4, ND_LEN + 8)
    p[6] = IPPROTO_ICMPV6
    p[7] = 255
    memcpy(p + 8, target_ip, 16)             # from the target address, to the asker's
    memcpy(p + 24, sender_ip, 16)
    p += IP6_HLEN
    p[0] = ND_NA
    p[1] = 0
    p[2] = p[3] = 0
    p[4] = NA_FLAGS
    p[5] = p[6] = p[7] = 0
    memcpy(p + 8, target_ip, 16)
    p[24] = ND_OPT_TLLA
    p[25] = 1                                # in units of 8 bytes
    memcpy(p + 26, mac, 6)
    s = csum_add(0, data + ETH_HLEN + 8, 32)
    s = csum_pseudo(s, IPPROTO_ICMPV6, ND_LEN + 8)
    s = csum_add(s, p, ND_LEN + 8)
    csum_store(p + 2, s, False)
    return ETH_HLEN + IP6_HLEN + ND_LEN + 8
