# cython: language_level=3
"""TCP and UDP over IPv4 receive coalescing. See gro.pxd."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from fastpath.frame cimport (ETH_HLEN, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, VNET_GSO_TCPV4, VNET_GSO_UDP_L4,
                             VNET_HLEN, load_be16, load_le16)
from fastpath.inet cimport csum_add, csum_fold, csum_pseudo, csum_store, load_be32, store_be16

cdef enum:
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IP_DF = 0x40                   # in the flags byte (offset 6)
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10


cdef inline uint64_t pseudo_sum(const uint8_t *ip, uint8_t proto, uint32_t l4_len) noexcept nogil:
    # RFC 793 / RFC 768 pseudo-header: source and destination address, protocol, L4 length.
    return csum_pseudo(csum_add(0, ip + 12, 8), proto, l4_len)


cdef uint32_t gro_candidate(const uint8_t *f, uint32_t length, const uint8_t *vnet, bint udp) noexcept nogil:
    cdef const uint8_t *ip = f + ETH_HLEN
    cdef uint32_t ihl, doff, hdr, l4_len, csum_offset
    cdef bint partial
    if length < ETH_HLEN + 28 or load_be16(f + 12) != 0x0800 or (ip[0] >> 4) != 4 or vnet[1] != VNET_GSO_NONE:
        return 0
    ihl = (ip[0] & 0x0F) * 4
    if ihl < 20 or length < ETH_HLEN + ihl + 8:
        return 0
    if csum_fold(csum_add(0, ip, ihl)) != 0xFFFF:
        return 0  # a header that fails its checksum: merged, it would leave with a fresh one
    if load_be16(ip + 2) != length - ETH_HLEN or (load_be16(ip + 6) & 0x3FFF) != 0:
        return 0  # padded, truncated, or a fragment
    l4_len = length - ETH_HLEN - ihl
    if ip[9] == IPPROTO_TCP:
        if l4_len < 20:
            return 0
        doff = (ip[ihl + 12] >> 4) * 4
        hdr = ETH_HLEN + ihl + doff
        if doff < 20 or hdr >= length or hdr > GRO_MAX_HDR:
            return 0
        if (ip[ihl + 13] & ~(TCP_ACK | TCP_PSH)) or not (ip[ihl + 13] & TCP_ACK):
            return 0  # SYN, FIN, RST, URG, ECE, CWR: the kernel must see these alone
        csum_offset = 16
    elif ip[9] == IPPROTO_UDP and udp:
        hdr = ETH_HLEN + ihl + 8
        if hdr >= length or hdr > GRO_MAX_HDR or load_be16(ip + ihl + 4) != l4_len:
            return 0
        csum_offset = 6
    else:
        return 0
    partial = ((vnet[0] & VNET_F_NEEDS_CSUM) and load_le16(vnet + 6) == ETH_HLEN + ihl
               and load_le16(vnet + 8) == csum_offset)
    if partial:
        return hdr
    if ip[9] == IPPROTO_UDP and load_be16(ip + ihl + 6) == 0:
        return 0  # sent without a checksum: segmenting would add one
    return hdr | GRO_UNVERIFIED


cdef inline bint gro_verified(const uint8_t *frame, uint32_t length, uint32_t hdr) noexcept nogil:
    """Whether a candidate's L4 checksum verifies (or was partial): checked
    only once it is about to join a run, so a frame that stays alone (as
    most do when many flows interleave) is never summed."""
    cdef const uint8_t *ip = frame + ETH_HLEN
    cdef uint32_t ihl = (ip[0] & 0x0F) * 4
    cdef uint32_t l4_len = length - ETH_HLEN - ihl
    if not hdr & GRO_UNVERIFIED:
        return True
    return csum_fold(csum_add(pseudo_sum(ip, ip[9], l4_len), ip + ihl, l4_len)) == 0xFFFF


cdef bint gro_start(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t hdr, const uint8_t *vnet,
                    uint32_t out) noexcept nogil:
    cdef const uint8_t *ip = frame + ETH_HLEN
    cdef const uint8_t *l4 = ip + (ip[0] & 0x0F) * 4
    if length > g.cap or (ip[9] == IPPROTO_TCP and l4[13] & TCP_PSH):
        return False  # a run that could take nothing more: it goes as it is
    if not gro_verified(frame, length, hdr):
        return False  # damaged: it goes as it came, and the receiver drops it
    hdr &= ~GRO_UNVERIFIED
    memcpy(g.buf, frame, hdr)
    memcpy(g.vnet0, vnet, VNET_HLEN)
    g.iov[1].iov_base = <void *>(frame + hdr)
    g.iov[1].iov_len = length - hdr
    g.len = length
    g.out = out
    g.hdr_len = hdr
    g.proto = ip[9]
    g.gso_size = <uint16_t>(length - hdr)
    g.last_payload = g.gso_size
    if g.proto == IPPROTO_TCP:
        g.next_seq = load_be32(l4 + 4) + (length - hdr)
    else:
        g.next_id = <uint16_t>(load_be16(ip + 4) + 1)
    g.nseg = 1
    g.psh = 0
    return True


cdef bint gro_append(gro_state *g, const uint8_t *frame, uint32_t length, uint32_t hdr_flags,
                     uint32_t out) noexcept nogil:
    cdef uint32_t payload, ihl, hdr = hdr_flags & ~GRO_UNVERIFIED
    cdef const uint8_t *ip = frame + ETH_HLEN
    cdef const uint8_t *gip = g.buf + ETH_HLEN
    if (g.len == 0 or out != g.out or hdr != g.hdr_len or ip[9] != g.proto or g.last_payload != g.gso_size
            or g.psh or g.nseg >= (GRO_MAX_TCP_SEGS if g.proto == IPPROTO_TCP else GRO_MAX_UDP_SEGS)):
        return False
    payload = length - hdr
    ihl = (ip[0] & 0x0F) * 4
    if payload > g.gso_size or g.len + payload > g.cap or g.len - ETH_HLEN + payload > 0xFFFF:
        return False
    # The same flow, continued: the Ethernet header, IP version and length,
    # TOS, flags, TTL, addresses and options, and the ports must match the
    # run's first frame.
    if (memcmp(frame, g.buf, ETH_HLEN) != 0 or ip[0] != gip[0] or ip[1] != gip[1] or ip[6] != gip[6] or ip[8] != gip[8]
            or memcmp(ip + 12, gip + 12, ihl - 12) != 0 or memcmp(ip + ihl, gip + ihl, 4) != 0):
        return False
    if g.proto == IPPROTO_TCP:
        # Besides: ack, header length and flags but PSH, window, urgent
        # pointer and options; and the next sequence number.
        if (memcmp(ip + ihl + 8, gip + ihl + 8, 5) != 0
                or memcmp(ip + ihl + 14, gip + ihl + 14, 2) != 0
                or memcmp(ip + ihl + 18, gip + ihl + 18, hdr - ETH_HLEN - ihl - 18) != 0
                or load_be32(ip + ihl + 4) != g.next_seq):
            return False
    else:
        if not (ip[6] & IP_DF):
            if load_be16(ip + 4) != g.next_id:
                return False
    # The flow continues: last, the frame must be whole.
    if not gro_verified(frame, length, hdr_flags):
        return False
    if g.proto == IPPROTO_TCP:
        g.next_seq += payload
        g.psh = (ip[ihl + 13] & TCP_PSH) != 0
    elif not (ip[6] & IP_DF):
        g.next_id += 1
    g.nseg += 1
    g.iov[g.nseg].iov_base = <void *>(frame + hdr)
    g.iov[g.nseg].iov_len = payload
    g.len += payload
    g.last_payload = <uint16_t>payload
    return True


cdef bint gro_pair(gro_state *g, const uint8_t *held, uint32_t held_len, uint32_t held_hdr, const uint8_t *held_vnet,
                   uint32_t held_out, const uint8_t *frame, uint32_t length, uint32_t hdr, uint32_t out) noexcept nogil:
    cdef const uint8_t *hip = held + ETH_HLEN
    cdef const uint8_t *ip = frame + ETH_HLEN
    cdef uint32_t ihl = (hip[0] & 0x0F) * 4
    # Frames of other flows (interleaved, as many flows' small frames come)
    # are told apart before any header is copied: addresses and ports.
    if (held_out != out or (held_hdr ^ hdr) & ~GRO_UNVERIFIED or hip[9] != ip[9] or memcmp(hip + 12, ip + 12, 8) != 0
            or memcmp(hip + ihl, ip + ihl, 4) != 0):
        return False
    if not gro_start(g, held, held_len, held_hdr, held_vnet, held_out):
        return False
    if gro_append(g, frame, length, hdr, out):
        return True
    g.len = 0  # a run of one is no run: the held frame goes as it came
    return False


cdef int gro_finish(gro_state *g, uint32_t *frame_len) noexcept nogil:
    cdef uint8_t *ip = g.buf + ETH_HLEN
    cdef uint8_t *vnet = g.buf - VNET_HLEN
    cdef uint32_t ihl = (ip[0] & 0x0F) * 4
    cdef uint32_t length = g.len
    cdef uint32_t l4_len = length - ETH_HLEN - ihl
    cdef uint16_t partial
    g.len = 0
    frame_len[0] = length
    g.iov[0].iov_base = vnet
    g.iov[0].iov_len = VNET_HLEN + g.hdr_len
    if g.nseg < 2:
        memcpy(vnet, g.vnet0, VNET_HLEN)
        return 1 + g.nseg
    memset(vnet, 0, VNET_HLEN)
    store_be16(ip + 2, <uint16_t>(length - ETH_HLEN))
    store_be16(ip + 10, 0)
    csum_store(ip + 10, csum_add(0, ip, ihl), False)
    if g.proto == IPPROTO_TCP:
        if g.psh:
            ip[ihl + 13] |= TCP_PSH
        vnet[1] = VNET_GSO_TCPV4
        vnet[8] = 16  # csum_offset: the TCP checksum field
    else:
        store_be16(ip + ihl + 4, l4_len)
        vnet[1] = VNET_GSO_UDP_L4
        vnet[8] = 6   # csum_offset: the UDP checksum field
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum over the whole
    # super-frame; the receiver (or whoever segments it) finishes the sum
    # over each segment.
    partial = csum_fold(pseudo_sum(ip, g.proto, l4_len))
    memcpy(ip + ihl + vnet[8], &partial, 2)  # host order, like every sum here
    vnet[0] = VNET_F_NEEDS_CSUM
    vnet[2] = g.hdr_len & 0xFF
    vnet[3] = g.hdr_len >> 8
    vnet[4] = g.gso_size & 0xFF
    vnet[5] = g.gso_size >> 8
    vnet[6] = (ETH_HLEN + ihl) & 0xFF
    vnet[7] = (ETH_HLEN + ihl) >> 8
    return 1 + g.nseg


cdef list _flush(gro_state *g, tuple held, list out):
    cdef uint32_t n
    cdef int k, count
    if g.len:
        count = gro_finish(g, &n)
        whole = b"".join([(<char *>g.iov[k].iov_base)[:g.iov[k].iov_len] for k in range(count)])
        assert len(whole) == VNET_HLEN + n
        out.append((whole[:VNET_HLEN], whole[VNET_HLEN:]))
    elif held is not None:
        out.append(held[:2])
    return out


def coalesce(list frames, bint udp=True, uint32_t cap=65536 + 256) -> list:
    """Run frames (all for one port) through the coalescer as the datapath
    does, for tests: each frame is bytes, or (vnet header, frame) for one that
    came with a header. Returns [(vnet header, frame)] as they would be written."""
    cdef gro_state g
    cdef bytes fb, vb
    cdef tuple held = None         # (vnet header, frame, headers' length): waits for a second
    cdef uint32_t hdr
    buf = bytearray(VNET_HLEN + GRO_MAX_HDR)
    cdef uint8_t[::1] view = buf
    memset(&g, 0, sizeof(g))
    g.buf = &view[VNET_HLEN]
    g.cap = cap
    out = []                       # (frames keeps every frame a pending run's payloads point into)
    for item in frames:
        vb, fb = item if isinstance(item, tuple) else (bytes(VNET_HLEN), item)
        if len(vb) != VNET_HLEN:
            raise ValueError(f"vnet: expected {VNET_HLEN} bytes, got {len(vb)}")  # gro_candidate reads all of it
        hdr = gro_candidate(fb, len(fb), vb, udp)
        if hdr == 0:
            _flush(&g, held, out)
            held = None
            out.append((vb, fb))
            continue
        if g.len and gro_append(&g, fb, len(fb), hdr, 0):
            continue
        if held is not None and gro_pair(&g, held[1], len(held[1]), held[2], held[0], 0, fb, len(fb), hdr, 0):
            held = None
            continue
        _flush(&g, held, out)
        held = (vb, fb, hdr)
    return _flush(&g, held, out)
