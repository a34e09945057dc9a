# cython: language_level=3
"""TCP/IPv4 receive coalescing for frames from the tunnel. See gro.pxd."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from fastpath.frame cimport (ETH_HLEN, VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_HLEN, load_be16)
from fastpath.inet cimport csum_add, csum_fold, csum_pseudo, csum_store, load_be32, store_be16

cdef enum:
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10


cdef inline uint64_t pseudo_sum(const uint8_t *ip, uint32_t tcp_len) noexcept nogil:
    # RFC 793 pseudo-header: source and destination address, protocol, TCP length.
    return csum_pseudo(csum_add(0, ip + 12, 8), 6, tcp_len)


cdef uint32_t _headers(const uint8_t *f, uint32_t length) noexcept nogil:
    """Ethernet + IPv4 + TCP header length of a plain, unfragmented TCP/IPv4
    data segment that may merge; 0 when it may not."""
    cdef const uint8_t *ip = f + ETH_HLEN
    cdef uint32_t ihl, doff, hdr
    if length < ETH_HLEN + 40 or load_be16(f + 12) != 0x0800 or (ip[0] >> 4) != 4 or ip[9] != 6:
        return 0
    ihl = (ip[0] & 0x0F) * 4
    if ihl < 20 or load_be16(ip + 2) != length - ETH_HLEN or (load_be16(ip + 6) & 0x3FFF) != 0:
        return 0  # padded, truncated, or a fragment
    if length < ETH_HLEN + ihl + 20:
        return 0
    doff = (ip[ihl + 12] >> 4) * 4
    hdr = ETH_HLEN + ihl + doff
    if doff < 20 or hdr >= length or hdr > GRO_MAX_HDR:
        return 0
    if (ip[ihl + 13] & ~(TCP_ACK | TCP_PSH)) or not (ip[ihl + 13] & TCP_ACK):
        return 0  # SYN, FIN, RST, URG, ECE, CWR: the kernel must see these alone
    # The checksum must verify: the merged frame's partial checksum is trusted.
    if csum_fold(csum_add(pseudo_sum(ip, length - ETH_HLEN - ihl), ip + ihl, length - ETH_HLEN - ihl)) != 0xFFFF:
        return 0
    return hdr


cdef bint gro_start(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t out) noexcept nogil:
    cdef uint32_t hdr = _headers(frame, length)
    cdef const uint8_t *tcp
    if hdr == 0 or length > g.cap:
        return False
    tcp = frame + ETH_HLEN + (frame[ETH_HLEN] & 0x0F) * 4
    if tcp[13] & TCP_PSH:
        return False  # a run that could take nothing more: send it as it is
    memcpy(g.buf, frame, length)
    g.len = length
    g.out = out
    g.hdr_len = hdr
    g.gso_size = <uint16_t>(length - hdr)
    g.last_payload = g.gso_size
    g.next_seq = load_be32(tcp + 4) + (length - hdr)
    g.nseg = 1
    g.psh = 0
    return True


cdef bint gro_append(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t out) noexcept nogil:
    cdef uint32_t hdr, payload, ihl
    cdef const uint8_t *ip = frame + ETH_HLEN
    cdef const uint8_t *gip = g.buf + ETH_HLEN
    if g.len == 0 or out != g.out or g.nseg >= GRO_MAX_SEGS or g.last_payload != g.gso_size or g.psh:
        return False
    hdr = _headers(frame, length)
    if hdr != g.hdr_len:
        return False
    payload = length - hdr
    ihl = (ip[0] & 0x0F) * 4
    if payload > g.gso_size or g.len + payload > g.cap or g.len - ETH_HLEN + payload > 0xFFFF:
        return False
    # The same flow, continued: everything but length, ID, IP checksum,
    # sequence number, PSH and TCP checksum must match the run's first header.
    if (memcmp(frame, g.buf, ETH_HLEN) != 0 or ip[0] != gip[0] or ip[1] != gip[1] or ip[6] != gip[6] or ip[8] != gip[8]
            or memcmp(ip + 12, gip + 12, ihl - 12) != 0
            or memcmp(ip + ihl, gip + ihl, 4) != 0 or memcmp(ip + ihl + 8, gip + ihl + 8, 5) != 0
            or memcmp(ip + ihl + 14, gip + ihl + 14, 2) != 0
            or memcmp(ip + ihl + 18, gip + ihl + 18, hdr - ETH_HLEN - ihl - 18) != 0
            or load_be32(ip + ihl + 4) != g.next_seq):
        return False
    memcpy(g.buf + g.len, frame + hdr, payload)
    g.len += payload
    g.next_seq += payload
    g.last_payload = <uint16_t>payload
    g.nseg += 1
    g.psh = (ip[ihl + 13] & TCP_PSH) != 0
    return True


cdef uint32_t gro_finish(gro_state *g, uint8_t *vnet) noexcept nogil:
    cdef uint8_t *ip = g.buf + ETH_HLEN
    cdef uint32_t ihl = (ip[0] & 0x0F) * 4
    cdef uint32_t length = g.len
    cdef uint16_t partial
    memset(vnet, 0, VNET_HLEN)
    g.len = 0
    if g.nseg < 2:
        return length
    store_be16(ip + 2, <uint16_t>(length - ETH_HLEN))
    store_be16(ip + 10, 0)
    csum_store(ip + 10, csum_add(0, ip, ihl), False)
    if g.psh:
        ip[ihl + 13] |= TCP_PSH
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the receiver
    # (or anyone segmenting it again) finishes the sum over the segment.
    partial = csum_fold(pseudo_sum(ip, length - ETH_HLEN - ihl))
    memcpy(ip + ihl + 16, &partial, 2)  # host order, like every sum here
    vnet[0] = VNET_F_NEEDS_CSUM
    vnet[1] = VNET_GSO_TCPV4
    vnet[2] = g.hdr_len & 0xFF
    vnet[3] = g.hdr_len >> 8
    vnet[4] = g.gso_size & 0xFF
    vnet[5] = g.gso_size >> 8
    vnet[6] = (ETH_HLEN + ihl) & 0xFF
    vnet[7] = (ETH_HLEN + ihl) >> 8
    vnet[8] = 16  # csum_offset: the TCP checksum field
    return length


def coalesce(list frames, uint32_t cap=65536 + 256) -> list:
    """Run frames (all for one port) through the coalescer, for tests:
    [(vnet header, frame)] as the datapath would write them."""
    cdef gro_state g
    cdef bytes fb
    cdef uint8_t vnet[VNET_HLEN]
    cdef uint32_t n
    buf = bytearray(cap)
    cdef uint8_t[::1] view = buf
    memset(&g, 0, sizeof(g))
    g.buf = &view[0]
    g.cap = cap
    out = []
    for fb in frames:
        if gro_append(&g, fb, len(fb), 0):
            continue
        if g.len:
            n = gro_finish(&g, vnet)
            out.append((bytes(vnet[:VNET_HLEN]), bytes(buf[:n])))
        if not gro_start(&g, fb, len(fb), 0):
            out.append((bytes(VNET_HLEN), fb))
    if g.len:
        n = gro_finish(&g, vnet)
        out.append((bytes(vnet[:VNET_HLEN]), bytes(buf[:n])))
    return out
