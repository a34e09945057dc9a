# Output: fitting a frame to where it goes, written once for every engine.
#
#   out_port     a local port: a frame over the port's MTU is dropped
#                (out_fits); the virtio-net header back in front for a port
#                with offloads, else the frame made whole (a partial checksum
#                completed; a super-frame such a port cannot take is dropped);
#                the engine writes it; out_sent/out_failed account for it
#                and copy it to the port's capture.
#   out_tunnel   one peer or all of a network's: a super-frame is segmented
#                (gso, or UDP_SEGMENT trains), a plain frame checked against
#                the tunnel MTU and encapsulated (tunnel.pxi).
#   gro_take     a frame for a port with offloads may wait to be coalesced
#   gro_flush    with the next ones of its flow (gro): a run goes out as one
#                super-frame, gathered from its frames' buffers with one
#                writev, a frame left alone as it came.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from fastpath.frame cimport (DROP_GSO_UNSUPPORTED, DROP_MTU_EXCEEDED, DROP_RATE_LIMITED_TX, DROP_TUNNEL_MTU, ETH_ALEN,
                             ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, VLAN_HLEN, VNET_F_NEEDS_CSUM, VNET_GSO_NONE,
                             VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_HLEN, complete_csum, load_be16, parse_vnet)
from fastpath.gro cimport GRO_MAX_HDR, GRO_MAX_SEGS, gro_append, gro_candidate, gro_finish, gro_pair, gro_state
from fastpath.posix_io cimport CLOCK_REALTIME, clock_gettime, iovec, timespec, writev

cdef enum:
    OUT_TCP_MIN_HLEN = 20
    OUT_UDP_HLEN = 8

cdef struct output_t:
    gro_state gro
    frame_t gro_held               # a frame that may start a run, until the next one tells
    uint32_t gro_held_hdr
    uint32_t gro_held_out
    bint gro_holding
    bint gro_udp                   # UDP runs too: the kernel takes UDP_L4 super-frames
    uint8_t *gro_mem               # the run's headers, behind room for its virtio-net header


def kernel_takes_udp_superframes() -> bool:
    """Whether this kernel's TAP takes UDP super-frames (a virtio-net header
    with GSO_UDP_L4) from userspace: Linux 6.2 gave TAP its UDP segmentation
    offload. Before that, UDP frames go out one by one."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (6, 2)


cdef int out_init(output_t *o, bint gro_udp) noexcept nogil:
    memset(o, 0, sizeof(output_t))
    o.gro_udp = gro_udp
    o.gro_mem = <uint8_t *>malloc(VNET_HLEN + GRO_MAX_HDR)
    if o.gro_mem == NULL:
        return -1
    o.gro.buf = o.gro_mem + VNET_HLEN
    o.gro.cap = 0xFFFF + ETH_HLEN
    return 0


cdef void out_free(output_t *o) noexcept nogil:
    free(o.gro_mem)
    o.gro_mem = NULL


cdef void out_mirror_iov(sw_t *sw, uint32_t idx, uint8_t direction, const iovec *frame, int n,
                         uint32_t length) noexcept nogil:
    """Copy a frame (`length` bytes gathered from n iovecs) to the port's
    capture socket, never waiting for it: when the reader falls behind, the
    copy is dropped and counted."""
    cdef uint8_t hdr[CAP_HDR]
    cdef iovec iov[2 + GRO_MAX_SEGS]
    cdef timespec ts
    cdef uint64_t ns
    cdef int i
    clock_gettime(CLOCK_REALTIME, &ts)
    ns = <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec
    for i in range(8):
        hdr[i] = (ns >> (8 * i)) & 0xFF
    for i in range(4):
        hdr[8 + i] = (length >> (8 * i)) & 0xFF
    hdr[12] = direction
    hdr[13] = hdr[14] = hdr[15] = 0
    iov[0].iov_base = hdr
    iov[0].iov_len = CAP_HDR
    memcpy(&iov[1], frame, n * sizeof(iovec))
    if writev(sw.ports[idx].cap_fd, iov, n + 1) < 0:
        sw.pctr[<size_t>idx * PC_COUNT + PC_CAPTURE_DROPS] += 1


cdef void out_mirror(sw_t *sw, uint32_t idx, uint8_t direction, const uint8_t *data, uint32_t length) noexcept nogil:
    cdef iovec iov
    iov.iov_base = <void *>data
    iov.iov_len = length
    out_mirror_iov(sw, idx, direction, &iov, 1, length)


cdef inline void out_sent(sw_t *sw, uint32_t idx, const uint8_t *data, uint32_t length, bint superframe,
                          bint mirror) noexcept nogil:
    """A frame of `length` bytes (without its virtio-net header) went out of port idx."""
    cdef uint64_t *c = &sw.pctr[<size_t>idx * PC_COUNT]
    c[PC_TX_PACKETS] += 1
    c[PC_TX_BYTES] += length
    if superframe:
        sw.stats[LS_SUPERFRAMES_OUT] += 1
    if mirror and sw.ports[idx].cap_dir & CAP_OUT:
        out_mirror(sw, idx, CAP_OUT, data, length)


cdef inline void out_failed(sw_t *sw, uint32_t idx) noexcept nogil:
    # Never wait for a slow receiver: the frame is dropped and counted.
    sw.pctr[<size_t>idx * PC_COUNT + PC_TX_ERRORS] += 1


cdef inline bint out_fits(const port_t *q, const frame_t *f) noexcept nogil:
    """Whether port q's MTU takes the frame. As the kernel's bridge drops a
    frame longer than its output device takes (is_skb_forwardable), and as
    ingress counts (frame.parse_eth): the MTU bounds the L3 packet, an
    802.1Q tag is L2. A TSO super-frame fits when each of its segments will:
    L3 and L4 headers plus gso_size. Its L4 header starts at csum_start
    (parse_vnet holds a super-frame to a partial checksum past the Ethernet
    header); the header length the sender wrote may cover payload, so the
    TCP data offset is read instead. The tunnel's bound (out_tunnel) is the
    same rule over the whole inner frame: a port of the default overlay
    MTU (underlay less 50) and the tunnel refuse the same untagged frames."""
    cdef uint32_t l2 = ETH_HLEN, l4, thl
    cdef uint16_t tpid
    if f.vi.gso_type == VNET_GSO_NONE and f.len <= q.mtu + ETH_HLEN:
        return True  # most frames: short enough whether tagged or not
    if f.len >= ETH_HLEN + VLAN_HLEN:
        tpid = load_be16(f.data + 2 * ETH_ALEN)
        if tpid == ETH_P_8021Q or tpid == ETH_P_8021AD:
            l2 = ETH_HLEN + VLAN_HLEN
    if f.vi.gso_type == VNET_GSO_NONE:
        return f.len <= q.mtu + l2
    l4 = f.vi.csum_start
    thl = OUT_UDP_HLEN
    if f.vi.gso_type == VNET_GSO_TCPV4 or f.vi.gso_type == VNET_GSO_TCPV6:
        thl = OUT_TCP_MIN_HLEN
        if l4 + 12 < f.len:
            thl = max(thl, <uint32_t>(f.data[l4 + 12] >> 4) * 4)
    return l4 + thl + f.vi.gso_size <= q.mtu + l2


cdef bint out_plain(sw_t *sw, frame_t *f) noexcept nogil:
    """Make the frame whole for an output without offloads: complete a
    partial checksum in place. False for a TSO super-frame, which such an
    output cannot take."""
    if f.vi.gso_type != VNET_GSO_NONE:
        return False
    if f.vi.flags & VNET_F_NEEDS_CSUM:
        if f.tag:
            sw.eng.settle(sw.engine, f)
        complete_csum(f.data, f.len, &f.vi)
        sw.stats[LS_CSUM_COMPLETED] += 1
        f.vi.flags &= ~VNET_F_NEEDS_CSUM
        f.vnet[0] &= ~VNET_F_NEEDS_CSUM
    return True


cdef void out_port(sw_t *sw, uint32_t idx, frame_t *f) noexcept nogil:
    if sw.ports[idx].trunk:
        out_trunk(sw, idx, f)  # vlan.pxi: tagged for the frame's network, then out_write
        return
    out_write(sw, idx, f)


cdef void out_write(sw_t *sw, uint32_t idx, frame_t *f) noexcept nogil:
    cdef port_t *q = &sw.ports[idx]
    cdef const uint8_t *start = f.data
    cdef uint32_t length = f.len
    cdef write_result r
    if not out_fits(q, f):
        sw.pctr[<size_t>idx * PC_COUNT + PC_DROPS + DROP_MTU_EXCEEDED] += 1
        return
    if sw.limits[idx].flags & LIM_RATE_TX and not police(&sw.limits[idx].tx_bytes, &sw.limits[idx].tx_frames,
                                                         f.data, f.len, &f.vi, sw.lim_now):
        sw.pctr[<size_t>idx * PC_COUNT + PC_DROPS + DROP_RATE_LIMITED_TX] += 1
        return
    if q.vnet:
        # The header goes back in front of the frame (tunnel headers may
        # have been written over that headroom since it was read).
        memcpy(f.data - VNET_HLEN, f.vnet, VNET_HLEN)
        start = f.data - VNET_HLEN
        length = f.len + VNET_HLEN
    elif not out_plain(sw, f):
        sw.pctr[<size_t>idx * PC_COUNT + PC_DROPS + DROP_GSO_UNSUPPORTED] += 1
        return
    r = sw.eng.write(sw.engine, idx, f, start, length)
    if r == WR_DONE:
        out_sent(sw, idx, f.data, f.len, f.vi.gso_type != VNET_GSO_NONE, True)
    elif r == WR_FAILED:
        out_failed(sw, idx)


cdef void out_tunnel(sw_t *sw, frame_t *f, uint16_t network, int32_t only_peer) noexcept nogil:
    """Send a frame from a local port to one peer (only_peer >= 0) or, as
    part of a flood, to every peer of the network."""
    cdef tunnel_t *t = &sw.tun
    cdef int32_t q = only_peer
    if only_peer < 0:
        q = t.net_peer_head[network] if t.tx_fd >= 0 else -1
        if q < 0:
            return
    if f.vi.gso_type != VNET_GSO_NONE:
        tun_send_gso(sw, f, network, only_peer)
        return
    out_plain(sw, f)
    if f.len > t.max_frame:
        sw.pctr[<size_t>f.in_port * PC_COUNT + PC_DROPS + DROP_TUNNEL_MTU] += 1
        return
    while q >= 0:
        tun_encap(sw, <uint32_t>q, f, network)
        q = -1 if only_peer >= 0 else t.peers[q].next_in_net


cdef void out_flood(sw_t *sw, frame_t *f, const ingress_t *src) noexcept nogil:
    cdef int32_t q = sw.net_head[src.network]
    if f.in_port != NO_PORT:
        sw.pctr[<size_t>f.in_port * PC_COUNT + PC_FLOODED] += 1
    while q >= 0:
        if flood_port(sw, <uint32_t>q, src):
            out_port(sw, <uint32_t>q, f)
        q = sw.ports[q].next_in_net
    out_flood_trunks(sw, f, src)
    if flood_peers(src):
        out_tunnel(sw, f, src.network, -1)


cdef bint gro_take(sw_t *sw, frame_t *f, uint32_t out) noexcept nogil:
    """Coalesce a frame bound for port `out` (one with offloads) with the
    ones before it, or hold it until the next shows whether it can be.
    False: it cannot be; the caller flushes and sends it."""
    cdef output_t *o = &sw.out
    cdef uint32_t hdr = gro_candidate(f.data, f.len, f.vnet, o.gro_udp)
    cdef frame_t *h = &o.gro_held
    if hdr == 0 or not out_fits(&sw.ports[out], f):
        return False  # one that does not fit is dropped and counted alone, by out_port
    if o.gro.len and gro_append(&o.gro, f.data, f.len, hdr, out):
        sw.stats[LS_GRO_COALESCED] += 1
        return True
    if o.gro_holding and gro_pair(&o.gro, h.data, h.len, o.gro_held_hdr, h.vnet, o.gro_held_out,
                                  f.data, f.len, hdr, out):
        o.gro_holding = False
        sw.stats[LS_GRO_COALESCED] += 1
        return True
    gro_flush(sw)
    h[0] = f[0]
    h.pending = 0
    o.gro_held_hdr = hdr
    o.gro_held_out = out
    o.gro_holding = True
    return True


cdef void gro_flush(sw_t *sw) noexcept nogil:
    """Send the pending run (gathered with one writev), or the frame held for one."""
    cdef output_t *o = &sw.out
    cdef uint32_t out, length, nseg, hdr
    cdef int n
    cdef write_result r
    cdef iovec mirror[1 + GRO_MAX_SEGS]
    if o.gro_holding:
        o.gro_holding = False
        if sw.ports[o.gro_held_out].state == PORT_UP:
            out_port(sw, o.gro_held_out, &o.gro_held)
        return
    if o.gro.len == 0:
        return
    out = o.gro.out
    nseg = max(o.gro.nseg, 1)
    hdr = o.gro.hdr_len
    sw.stats[LS_GRO_RUNS] += 1
    n = gro_finish(&o.gro, &length)
    if sw.ports[out].state != PORT_UP:
        return
    # Egress policing charges a run as its frames came: each with its own headers.
    if sw.limits[out].flags & LIM_RATE_TX and not police_cost(
            &sw.limits[out].tx_bytes, &sw.limits[out].tx_frames, <int64_t>length + <int64_t>(nseg - 1) * hdr, nseg,
            sw.lim_now):
        sw.pctr[<size_t>out * PC_COUNT + PC_DROPS + DROP_RATE_LIMITED_TX] += 1
        return
    r = sw.eng.writev(sw.engine, out, o.gro.iov, n, VNET_HLEN + length)
    if r == WR_DONE:
        out_sent(sw, out, NULL, length, n > 2, False)
        if sw.ports[out].cap_dir & CAP_OUT:
            # The capture takes the frame without its virtio-net header.
            memcpy(mirror, o.gro.iov, n * sizeof(iovec))
            mirror[0].iov_base = <uint8_t *>mirror[0].iov_base + VNET_HLEN
            mirror[0].iov_len -= VNET_HLEN
            out_mirror_iov(sw, out, CAP_OUT, mirror, n, length)
    else:
        out_failed(sw, out)


cdef void out_answer(sw_t *sw, frame_t *f, const decision_t *d) noexcept nogil:
    """Write the reply to a request the switch answers back to the port it came from."""
    if f.tag:
        sw.eng.settle(sw.engine, f)
    f.len = neigh_reply(f.data, d.answer, d.answer_mac)
    memset(f.vnet, 0, VNET_HLEN)  # a plain frame: no offload state carries over from the request
    memset(&f.vi, 0, sizeof(vnet_info))
    sw.pctr[<size_t>d.out * PC_COUNT + (PC_ARP_SUPPRESSED if d.answer == NEIGH_ARP else PC_ND_SUPPRESSED)] += 1
    out_port(sw, d.out, f)


cdef inline void deliver(sw_t *sw, frame_t *f, const ingress_t *src, const decision_t *d) noexcept nogil:
    """Carry out a decision (other than a drop the caller counts)."""
    f.network = src.network
    if d.verdict == V_PORT:
        # A trunk port's frames are not coalesced: a run is one network's, and GRO keys runs by port.
        if (sw.ports[d.out].vnet and f.vi.gso_type == VNET_GSO_NONE and not sw.ports[d.out].trunk
                and gro_take(sw, f, d.out)):
            return
        gro_flush(sw)  # what went before goes out first: order is kept
        out_port(sw, d.out, f)
        return
    gro_flush(sw)
    if d.verdict == V_ANSWER:
        out_answer(sw, f, d)
    elif d.verdict == V_FLOOD:
        out_flood(sw, f, src)
    elif d.verdict == V_PEER:
        out_tunnel(sw, f, src.network, <int32_t>d.out)
