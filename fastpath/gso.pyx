# cython: language_level=3
"""Software segmentation of offload super-frames. See gso.pxd."""
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fastpath.frame cimport (
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, VLAN_HLEN, VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_TCPV6,
    VNET_GSO_UDP_L4, VNET_HLEN, load_be16, parse_vnet, vnet_info,
)
from fastpath.inet cimport csum_add, csum_pseudo, csum_store, load_be32, store_be16, store_be32

GSO_ERROR_NAMES = ("none", "unsupported", "malformed", "too_many_segments")  # the `error` label of gso_errors
assert len(GSO_ERROR_NAMES) == GSO_ERRORS

HEADROOM = GSO_HEADROOM
SEG_ROOM = GSO_SEG_ROOM

cdef enum:
    ETH_P_IP = 0x0800
    ETH_P_IPV6 = 0x86DD
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPV4_MIN_HLEN = 20
    IPV6_HLEN = 40
    TCP_MIN_HLEN = 20
    UDP_HLEN = 8
    TCP_CSUM_OFF = 16              # offsetof(struct tcphdr, check)
    UDP_CSUM_OFF = 6
    TCP_FIN = 0x01
    TCP_PSH = 0x08
    TCP_CWR = 0x80


cdef inline uint64_t _slot(uint32_t seg_len) noexcept nogil:
    return (<uint64_t>GSO_HEADROOM + seg_len + GSO_SLOT_ALIGN - 1) & ~(<uint64_t>GSO_SLOT_ALIGN - 1)


cdef int gso_plan(const uint8_t *frame, uint32_t length, const vnet_info *v, gso_plan_t *p) noexcept nogil:
    """Check a super-frame and work out its segmentation into p; 0 or -GSO_ERR_*."""
    cdef uint32_t l2 = ETH_HLEN, l3, l4, thl, ip_len, payload
    cdef uint16_t ethertype
    cdef uint8_t proto, want
    cdef const uint8_t *ip

    if v.gso_type == VNET_GSO_TCPV4 or v.gso_type == VNET_GSO_TCPV6:
        want = IPPROTO_TCP
    elif v.gso_type == VNET_GSO_UDP_L4:
        want = IPPROTO_UDP
    else:
        return -GSO_ERR_UNSUPPORTED  # not a super-frame, or legacy UFO (IP fragmentation)
    p.mss = v.gso_size
    if p.mss == 0 or length < ETH_HLEN:
        return -GSO_ERR_MALFORMED

    p.ip_id = 0
    p.seq = 0
    p.flags = 0
    ethertype = load_be16(frame + 12)
    if ethertype == ETH_P_8021Q or ethertype == ETH_P_8021AD:
        if length < ETH_HLEN + VLAN_HLEN:
            return -GSO_ERR_MALFORMED
        ethertype = load_be16(frame + ETH_HLEN + 2)
        l2 = ETH_HLEN + VLAN_HLEN
    ip = frame + l2
    if ethertype == ETH_P_IP:
        if length < l2 + IPV4_MIN_HLEN or ip[0] >> 4 != 4:
            return -GSO_ERR_MALFORMED
        p.v4 = True
        l3 = (ip[0] & 0x0F) * 4
        ip_len = load_be16(ip + 2)
        # MF or a fragment offset: a fragment cannot be a super-frame.
        if l3 < IPV4_MIN_HLEN or ip_len < l3 or (load_be16(ip + 6) & 0x3FFF) != 0:
            return -GSO_ERR_MALFORMED
        proto = ip[9]
        p.ip_id = load_be16(ip + 4)
        p.addr_sum = csum_add(0, ip + 12, 8)
    elif ethertype == ETH_P_IPV6:
        if length < l2 + IPV6_HLEN or ip[0] >> 4 != 6:
            return -GSO_ERR_MALFORMED
        p.v4 = False
        l3 = IPV6_HLEN
        ip_len = IPV6_HLEN + load_be16(ip + 4)  # a jumbogram's 0 fails the length checks below
        proto = ip[6]
        p.addr_sum = csum_add(0, ip + 8, 32)
    else:
        return -GSO_ERR_UNSUPPORTED
    if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
        return -GSO_ERR_UNSUPPORTED  # IPv6 extension headers land here too
    if (proto != want or (v.gso_type == VNET_GSO_TCPV4 and not p.v4)
            or (v.gso_type == VNET_GSO_TCPV6 and p.v4)):
        return -GSO_ERR_MALFORMED
    # The IP length must cover the frame exactly: a super-frame is never padded.
    if <uint64_t>l2 + ip_len != length:
        return -GSO_ERR_MALFORMED

    l4 = l2 + l3
    if proto == IPPROTO_TCP:
        if ip_len < l3 + TCP_MIN_HLEN:
            return -GSO_ERR_MALFORMED
        thl = (frame[l4 + 12] >> 4) * 4
        if thl < TCP_MIN_HLEN or l3 + thl > ip_len:
            return -GSO_ERR_MALFORMED
        p.csum_off = TCP_CSUM_OFF
        p.seq = load_be32(frame + l4 + 4)
        p.flags = frame[l4 + 13]
    else:
        thl = UDP_HLEN
        if ip_len < l3 + UDP_HLEN:
            return -GSO_ERR_MALFORMED
        p.csum_off = UDP_CSUM_OFF
    # The partial checksum the sender asked for must be the L4 one.
    if (v.flags & VNET_F_NEEDS_CSUM) and (v.csum_start != l4 or v.csum_offset != p.csum_off):
        return -GSO_ERR_MALFORMED
    p.proto = proto
    p.l2 = l2
    p.l3 = l3
    p.l4 = l4
    p.thl = thl
    p.hlen = l4 + thl
    payload = length - p.hlen
    p.nseg = 1 if payload == 0 else (payload + p.mss - 1) // p.mss
    p.last_chunk = payload - (p.nseg - 1) * p.mss
    return 0


cdef void gso_header(const gso_plan_t *p, const uint8_t *frame, uint32_t i, uint8_t *d,
                     const uint8_t *payload) noexcept nogil:
    cdef uint32_t chunk = p.mss if i + 1 < p.nseg else p.last_chunk
    cdef uint32_t l2 = p.l2, l4 = p.l4
    cdef uint64_t s
    memcpy(d, frame, p.hlen)
    if p.v4:
        store_be16(d + l2 + 2, p.l3 + p.thl + chunk)
        # Every segment gets the next ID, as the kernel does for TSO
        # (inet_gso_segment without SKB_GSO_TCP_FIXEDID).
        store_be16(d + l2 + 4, <uint16_t>(p.ip_id + i))
        d[l2 + 10] = d[l2 + 11] = 0
        csum_store(d + l2 + 10, csum_add(0, d + l2, p.l3), False)
    else:
        store_be16(d + l2 + 4, p.thl + chunk)

    if p.proto == IPPROTO_TCP:
        store_be32(d + l4 + 4, p.seq + i * p.mss)  # wraps mod 2^32 like the sequence space
        # tcp_gso_segment: FIN and PSH stay on the last segment only, CWR
        # on the first only.
        d[l4 + 13] = p.flags
        if i + 1 < p.nseg:
            d[l4 + 13] &= ~(TCP_FIN | TCP_PSH)
        if i > 0:
            d[l4 + 13] &= ~TCP_CWR
    else:
        store_be16(d + l4 + 4, UDP_HLEN + chunk)

    # The L4 header and the payload are summed apart: the header's length
    # is even, so the payload starts at an even offset of the L4 data.
    d[l4 + p.csum_off] = d[l4 + p.csum_off + 1] = 0
    s = csum_pseudo(p.addr_sum, p.proto, p.thl + chunk)
    s = csum_add(s, d + l4, p.thl)
    s = csum_add(s, payload, chunk)
    csum_store(d + l4 + p.csum_off, s, p.proto == IPPROTO_UDP)


cdef int gso_segment(const uint8_t *frame, uint32_t length, const vnet_info *v, uint8_t *scratch,
                     uint32_t scratch_len, seg_t *segs, uint32_t max_segs) noexcept nogil:
    cdef gso_plan_t p
    cdef uint32_t chunk, i
    cdef uint8_t *d
    cdef uint64_t need, pos = 0
    cdef int r = gso_plan(frame, length, v, &p)
    if r < 0:
        return r
    if p.nseg > max_segs:
        return -GSO_ERR_TOO_MANY
    need = (p.nseg - 1) * _slot(p.hlen + p.mss) + _slot(p.hlen + p.last_chunk)
    if need > scratch_len:
        return -GSO_ERR_TOO_MANY
    for i in range(p.nseg):
        chunk = p.mss if i + 1 < p.nseg else p.last_chunk
        d = scratch + pos + GSO_HEADROOM
        segs[i].data = d
        segs[i].len = p.hlen + chunk
        pos += _slot(p.hlen + chunk)
        memcpy(d + p.hlen, frame + p.hlen + <uint64_t>i * p.mss, chunk)
        gso_header(&p, frame, i, d, d + p.hlen)
    return <int>p.nseg


def segment(bytes frame, bytes vnet, max_segs: int | None = None, scratch_len: int | None = None) -> list:
    """Cut a super-frame led by the 12-byte virtio-net header `vnet` into its
    segments (Ethernet frames), for tests and benchmarks. By default max_segs
    and the scratch buffer are large enough for any gso_size."""
    cdef vnet_info v
    cdef uint32_t n, room
    cdef int r
    cdef const uint8_t *fp = frame
    cdef uint32_t flen = <uint32_t>len(frame)
    cdef uint8_t *scratch
    cdef seg_t *segs
    if len(vnet) != VNET_HLEN:
        raise ValueError(f"vnet: expected {VNET_HLEN} bytes, got {len(vnet)}")
    if not parse_vnet(vnet, flen, &v):
        raise ValueError("vnet: the virtio-net header contradicts the frame")
    n = max_segs if max_segs is not None else flen // max(v.gso_size, 1) + 1
    room = scratch_len if scratch_len is not None else flen + n * GSO_SEG_ROOM
    scratch = <uint8_t *>PyMem_Malloc(max(room, 1))
    segs = <seg_t *>PyMem_Malloc(max(n, 1) * sizeof(seg_t))
    try:
        if scratch == NULL or segs == NULL:
            raise MemoryError()
        with nogil:
            r = gso_segment(fp, flen, &v, scratch, room, segs, n)
        if r < 0:
            raise ValueError(f"segmentation failed: {GSO_ERROR_NAMES[-r]}")
        return [(<char *>segs[i].data)[:segs[i].len] for i in range(r)]
    finally:
        PyMem_Free(scratch)
        PyMem_Free(segs)


def segment_gathered(bytes frame, bytes vnet) -> list:
    """Segment a super-frame as the tunnel's trains do (gso_plan and
    gso_header: headers written apart, each segment's checksum summed over
    its payload where it lies in the super-frame), for tests. Returns
    [(headers, payload offset in frame, payload length)]."""
    cdef vnet_info v
    cdef gso_plan_t p
    cdef const uint8_t *fp = frame
    cdef uint32_t flen = <uint32_t>len(frame), i, chunk
    cdef uint8_t hdr[GSO_MAX_HDR]
    cdef int r
    if len(vnet) != VNET_HLEN:
        raise ValueError(f"vnet: expected {VNET_HLEN} bytes, got {len(vnet)}")
    if not parse_vnet(vnet, flen, &v):
        raise ValueError("vnet: the virtio-net header contradicts the frame")
    r = gso_plan(fp, flen, &v, &p)
    if r < 0:
        raise ValueError(f"segmentation failed: {GSO_ERROR_NAMES[-r]}")
    out = []
    for i in range(p.nseg):
        chunk = p.mss if i + 1 < p.nseg else p.last_chunk
        gso_header(&p, fp, i, hdr, fp + p.hlen + <uint64_t>i * p.mss)
        out.append(((<char *>hdr)[:p.hlen], p.hlen + i * p.mss, chunk))
    return out
