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


cdef int gso_segment(const uint8_t *frame, uint32_t length, const vnet_info *v, uint8_t *scratch,
                     uint32_t scratch_len, seg_t *segs, uint32_t max_segs) noexcept nogil:
    cdef uint32_t l2 = ETH_HLEN, l3, l4, thl, hlen, ip_len, payload, nseg, mss, chunk, i, seq = 0
    cdef uint32_t csum_off, last_chunk
    cdef uint16_t ethertype, ip_id = 0
    cdef uint8_t proto, want, flags = 0
    cdef bint v4
    cdef const uint8_t *ip
    cdef uint8_t *d
    cdef uint64_t need, addr_sum, s, pos = 0

    if v.gso_type == VNET_GSO_TCPV4 or v.gso_type == VNET_GSO_TCPV6:
        want = IPPROTO_TCP
    elif v.gso_type == VNET_GSO_UDP_L4:
        want = IPPROTO_UDP
    else:
        return -GSO_ERR_UNSUPPORTED  # not a super-frame, or legacy UFO (IP fragmentation)
    mss = v.gso_size
    if mss == 0 or length < ETH_HLEN:
        return -GSO_ERR_MALFORMED

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
        v4 = True
        l3 = (ip[0] & 0x0F) * 4
        ip_len = load_be16(ip + 2)
        # MF or a fragment offset: a fragment cannot be a super-frame.
        if l3 < IPV4_MIN_HLEN or ip_len < l3 or (load_be16(ip + 6) & 0x3FFF) != 0:
            return -GSO_ERR_MALFORMED
        proto = ip[9]
        ip_id = load_be16(ip + 4)
        addr_sum = csum_add(0, ip + 12, 8)
    elif ethertype == ETH_P_IPV6:
        if length < l2 + IPV6_HLEN or ip[0] >> 4 != 6:
            return -GSO_ERR_MALFORMED
        v4 = False
        l3 = IPV6_HLEN
        ip_len = IPV6_HLEN + load_be16(ip + 4)  # a jumbogram's 0 fails the length checks below
        proto = ip[6]
        addr_sum = csum_add(0, ip + 8, 32)
    else:
        return -GSO_ERR_UNSUPPORTED
    if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
        return -GSO_ERR_UNSUPPORTED  # IPv6 extension headers land here too
    if (proto != want or (v.gso_type == VNET_GSO_TCPV4 and not v4)
            or (v.gso_type == VNET_GSO_TCPV6 and v4)):
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
        csum_off = TCP_CSUM_OFF
        seq = load_be32(frame + l4 + 4)
        flags = frame[l4 + 13]
    else:
        thl = UDP_HLEN
        if ip_len < l3 + UDP_HLEN:
            return -GSO_ERR_MALFORMED
        csum_off = UDP_CSUM_OFF
    # The partial checksum the sender asked for must be the L4 one.
    if (v.flags & VNET_F_NEEDS_CSUM) and (v.csum_start != l4 or v.csum_offset != csum_off):
        return -GSO_ERR_MALFORMED
    hlen = l4 + thl
    payload = length - hlen

    nseg = 1 if payload == 0 else (payload + mss - 1) // mss
    if nseg > max_segs:
        return -GSO_ERR_TOO_MANY
    last_chunk = payload - (nseg - 1) * mss
    need = (nseg - 1) * _slot(hlen + mss) + _slot(hlen + last_chunk)
    if need > scratch_len:
        return -GSO_ERR_TOO_MANY

    for i in range(nseg):
        chunk = mss if i + 1 < nseg else last_chunk
        d = scratch + pos + GSO_HEADROOM
        segs[i].data = d
        segs[i].len = hlen + chunk
        pos += _slot(hlen + chunk)
        memcpy(d, frame, hlen)
        memcpy(d + hlen, frame + hlen + <uint64_t>i * mss, chunk)

        if v4:
            store_be16(d + l2 + 2, l3 + thl + chunk)
            # Every segment gets the next ID, as the kernel does for TSO
            # (inet_gso_segment without SKB_GSO_TCP_FIXEDID).
            store_be16(d + l2 + 4, <uint16_t>(ip_id + i))
            d[l2 + 10] = d[l2 + 11] = 0
            csum_store(d + l2 + 10, csum_add(0, d + l2, l3), False)
        else:
            store_be16(d + l2 + 4, thl + chunk)

        if proto == IPPROTO_TCP:
            store_be32(d + l4 + 4, seq + i * mss)  # wraps mod 2^32 like the sequence space
            # tcp_gso_segment: FIN and PSH stay on the last segment only, CWR
            # on the first only.
            d[l4 + 13] = flags
            if i + 1 < nseg:
                d[l4 + 13] &= ~(TCP_FIN | TCP_PSH)
            if i > 0:
                d[l4 + 13] &= ~TCP_CWR
        else:
            store_be16(d + l4 + 4, UDP_HLEN + chunk)

        d[l4 + csum_off] = d[l4 + csum_off + 1] = 0
        s = csum_pseudo(addr_sum, proto, thl + chunk)
        s = csum_add(s, d + l4, thl + chunk)
        csum_store(d + l4 + csum_off, s, proto == IPPROTO_UDP)
    return <int>nseg


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
