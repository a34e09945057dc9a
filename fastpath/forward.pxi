# Local ingress: what happens to a batch of frames an engine read from a
# port. Each frame is counted and mirrored as it came, its virtio-net header
# checked, then decided (decide.pxi) and carried out (output.pxi). After the
# batch, the pending GRO run and the queued tunnel sends leave: they point
# into the batch's buffers, which the engine reads into again next. A port
# whose frames its storm buckets keep dropping is paused (pause.pxi).
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastpath.frame cimport DROP_BAD_VNET, DROP_RATE_LIMITED_RX, VNET_GSO_NONE, parse_vnet
from fastpath.mactable cimport MT_LIMITED

cdef inline void forward_frame(sw_t *sw, frame_t *f, int64_t now) noexcept nogil:
    cdef uint32_t idx = f.in_port
    cdef port_t *p = &sw.ports[idx]
    cdef uint64_t *c = &sw.pctr[<size_t>idx * PC_COUNT]
    cdef ingress_t src
    cdef decision_t d
    c[PC_RX_PACKETS] += 1
    c[PC_RX_BYTES] += f.len
    if p.cap_dir & CAP_IN:
        out_mirror(sw, idx, CAP_IN, f.data, f.len)
    if not parse_vnet(f.vnet, f.len, &f.vi):
        c[PC_DROPS + DROP_BAD_VNET] += 1
        return
    src.out = idx
    src.network = p.network
    src.mtu = p.mtu
    if sw.limits[idx].flags & LIM_RATE_RX and not police(&sw.limits[idx].rx_bytes, &sw.limits[idx].rx_frames,
                                                         f.data, f.len, &f.vi, now):
        c[PC_DROPS + DROP_RATE_LIMITED_RX] += 1
        return
    if f.vi.gso_type != VNET_GSO_NONE:
        sw.stats[LS_SUPERFRAMES_IN] += 1
        src.mtu = FRAME_ROOM  # a TSO super-frame is as long as 64 KB: the MTU bounds its segments
    decide(sw, f.data, f.len, &src, now, False, &d)
    if sw.limits[idx].flags & LIM_STORM:
        storm_pressure(sw, idx, &d, now)
    if d.learned == MT_LIMITED:
        c[PC_MAC_LIMITED] += 1
    if d.verdict == V_DROP:
        c[PC_DROPS + d.reason] += 1
        return
    if d.untag:
        vlan_forward_untagged(sw, f, &src, &d)
        return
    deliver(sw, f, &src, &d)


cdef void forward_batch(sw_t *sw, frame_t *frames, uint32_t n, int64_t now) noexcept nogil:
    cdef uint32_t i
    if n == 0:
        return
    for i in range(n):
        forward_frame(sw, &frames[i], now)
    gro_flush(sw)
    tun_flush(sw)
    sw.stats[LS_BATCHES] += 1
    sw.stats[LS_HIST + hist_bucket(n)] += 1
