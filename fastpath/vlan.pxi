# 802.1Q VLANs: trunk ports, and tags on every other ingress.
#
# An access port is in one network and its frames carry no tag. A trunk
# port carries several networks, each under its VLAN ID, and optionally a
# native network for its untagged frames. Such a port is in no network's port
# list: its port_t.network is 0 (no network has it) and its trunk_t says which
# networks it carries; floods reach it through the trunk list (vlan_t), linked
# by its next_in_net, which no network list uses for it.
#
# Input, a step of decide() (vlan_ingress), for a tagged frame or any frame
# from a trunk port. IEEE 802.1Q-2018 9.6: the tag is TPID 0x8100 and a TCI of
# PCP(3) DEI(1) VID(12); VID 0 is a priority tag (no VLAN), 4095 is reserved.
#   - stacked tags (QinQ: an 802.1ad outer TPID 0x88A8, or a second tag right
#     behind the first) are refused on every ingress: vlan_stacked;
#   - a trunk port: the VID picks the network (vlan_unknown when the port
#     carries none under it); an untagged or priority-tagged frame is in the
#     native network (vlan_untagged when the port has none);
#   - an access port: a priority tag is no tag; any other VID is refused
#     (vlan_tagged), as is every tag from the tunnel (a VTEP sends untagged
#     frames; RFC 7348 5: the inner VLAN tag SHOULD be stripped).
#   The accepted tag is then removed in place (vlan_strip): inside the switch
#   a frame is untagged and its network says which VLAN it is in.
# Output (out_trunk): a frame leaving a trunk port in a network it carries
# tagged gets that network's tag pushed in front of its ethertype for that
# one write; the virtio-net header's offsets move with it.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memmove

from fastpath.frame cimport (DROP_BAD_VNET, DROP_NONE, DROP_VLAN_STACKED, DROP_VLAN_TAGGED, DROP_VLAN_UNKNOWN,
                             DROP_VLAN_UNTAGGED, ETH_ALEN, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, VLAN_HLEN,
                             VNET_F_NEEDS_CSUM, drop_reason, eth_info, load_be16, load_le16)
from fastpath.inet cimport store_be16
from fastpath.mactable cimport OUT_PEER

cdef enum:
    VLAN_IDS = 4096
    VID_UNTAGGED = 0xFFFF          # trunk_t.net_vid of the native network: it leaves untagged

cdef struct trunk_t:
    uint16_t vid_net[VLAN_IDS]     # VID -> network, 0: not carried; [0]: the native network
    uint16_t *net_vid              # network -> VID (VID_UNTAGGED: native), 0: not carried; max_networks + 1

cdef struct vlan_t:
    trunk_t **trunks               # one per port, NULL for an access port
    int32_t trunk_head             # first trunk port, then by next_in_net; -1: none


cdef drop_reason vlan_ingress(const sw_t *sw, const uint8_t *data, const eth_info *eth,
                              ingress_t *src) noexcept nogil:
    """The VLAN step of decide(), for a tagged frame or a frame from a trunk
    port (src.network 0): sets src.network for a trunk port's frame."""
    cdef uint16_t net
    if eth.tagged and (load_be16(data + 2 * ETH_ALEN) == ETH_P_8021AD or eth.ethertype == ETH_P_8021Q
                       or eth.ethertype == ETH_P_8021AD):
        return DROP_VLAN_STACKED
    if src.network == 0:
        net = sw.vlan.trunks[src.out].vid_net[eth.vlan]
        if net == 0:
            return DROP_VLAN_UNKNOWN if eth.vlan else DROP_VLAN_UNTAGGED
        src.network = net
    elif eth.vlan or (src.out & OUT_PEER and eth.tagged):
        return DROP_VLAN_TAGGED
    return DROP_NONE


cdef inline void vnet_shift(frame_t *f, int delta) noexcept nogil:
    """Move the virtio-net header's offsets into the frame by delta bytes (a tag pushed or removed)."""
    if f.vi.csum_start:
        f.vi.csum_start = <uint16_t>(f.vi.csum_start + delta)
        f.vnet[6] = f.vi.csum_start & 0xFF
        f.vnet[7] = f.vi.csum_start >> 8
    if f.vi.hdr_len:
        f.vi.hdr_len = <uint16_t>(f.vi.hdr_len + delta)
        f.vnet[2] = f.vi.hdr_len & 0xFF
        f.vnet[3] = f.vi.hdr_len >> 8


cdef inline void vlan_push(frame_t *f, uint16_t vid) noexcept nogil:
    """Insert a tag for vid after the MACs, into the headroom."""
    memmove(f.data - VLAN_HLEN, f.data, 2 * ETH_ALEN)
    f.data -= VLAN_HLEN
    f.len += VLAN_HLEN
    store_be16(f.data + 2 * ETH_ALEN, ETH_P_8021Q)
    store_be16(f.data + 2 * ETH_ALEN + 2, vid)
    vnet_shift(f, VLAN_HLEN)
    f.encap_vni = 0  # tunnel headers in the headroom are overwritten


cdef inline void vlan_pop(frame_t *f) noexcept nogil:
    """Remove the outer tag: the MACs move up over it."""
    memmove(f.data + VLAN_HLEN, f.data, 2 * ETH_ALEN)
    f.data += VLAN_HLEN
    f.len -= VLAN_HLEN
    vnet_shift(f, -VLAN_HLEN)


cdef void vlan_forward_untagged(sw_t *sw, frame_t *f, const ingress_t *src, const decision_t *d) noexcept nogil:
    """Deliver a frame from a local port whose accepted tag (d.untag) goes:
    removed in place, then the frame's pointer put back where the engine
    reads into next (its bytes are the outputs' now)."""
    if ((f.vi.flags & VNET_F_NEEDS_CSUM and f.vi.csum_start < ETH_HLEN + VLAN_HLEN)
            or (f.vi.hdr_len and f.vi.hdr_len < ETH_HLEN + VLAN_HLEN)):
        # The partial checksum (or the headers) would end or start inside the tag: without it, inside the
        # Ethernet header.
        sw.pctr[<size_t>f.in_port * PC_COUNT + PC_DROPS + DROP_BAD_VNET] += 1
        return
    if f.tag:
        sw.eng.settle(sw.engine, f)
    vlan_pop(f)
    deliver(sw, f, src, d)
    f.data -= VLAN_HLEN
    f.len += VLAN_HLEN


cdef void out_trunk(sw_t *sw, uint32_t idx, frame_t *f) noexcept nogil:
    """Write a frame of network f.network out of trunk port idx: tagged with
    the port's VID for it, untagged in its native network."""
    cdef uint16_t vid = sw.vlan.trunks[idx].net_vid[f.network]
    if vid == VID_UNTAGGED:
        out_write(sw, idx, f)
        return
    if vid == 0:
        return  # not a network the port carries (an entry made before the port changed)
    if f.tag:
        sw.eng.settle(sw.engine, f)  # writes of it queued for other ports leave before its bytes change
    vlan_push(f, vid)
    out_write(sw, idx, f)
    if f.tag:
        sw.eng.settle(sw.engine, f)
    vlan_pop(f)


cdef inline bint trunk_floods(const sw_t *sw, uint32_t q, const ingress_t *src) noexcept nogil:
    """Whether a flood of a frame from src reaches trunk port q."""
    return q != src.out and sw.ports[q].state == PORT_UP and sw.vlan.trunks[q].net_vid[src.network] != 0


cdef inline void out_flood_trunks(sw_t *sw, frame_t *f, const ingress_t *src) noexcept nogil:
    cdef int32_t q = sw.vlan.trunk_head
    while q >= 0:
        if trunk_floods(sw, <uint32_t>q, src):
            out_port(sw, <uint32_t>q, f)
        q = sw.ports[q].next_in_net


cdef void flood_set_trunks(const sw_t *sw, const ingress_t *src, uint32_t *ports, uint32_t *nports) noexcept nogil:
    cdef int32_t q = sw.vlan.trunk_head
    while q >= 0:
        if trunk_floods(sw, <uint32_t>q, src):
            ports[nports[0]] = q
            nports[0] += 1
        q = sw.ports[q].next_in_net


cdef void vlan_unlink(sw_t *sw, uint32_t idx) noexcept nogil:
    """Take trunk port idx out of the trunk list."""
    cdef int32_t *link = &sw.vlan.trunk_head
    while link[0] >= 0:
        if <uint32_t>link[0] == idx:
            link[0] = sw.ports[idx].next_in_net
            break
        link = &sw.ports[link[0]].next_in_net
    sw.ports[idx].next_in_net = -1


cdef trunk_t *vlan_set_trunk(sw_t *sw, uint32_t idx, trunk_t *t) noexcept nogil:
    """Make port idx (up, lock held) a trunk port with table t; returns its
    table before (the caller frees it, out of the lock), NULL if none."""
    cdef trunk_t *old = sw.vlan.trunks[idx]
    cdef port_t *p = &sw.ports[idx]
    sw.vlan.trunks[idx] = t
    if old == NULL:
        p.trunk = 1
        p.next_in_net = sw.vlan.trunk_head
        sw.vlan.trunk_head = idx
    return old


cdef void vlan_forget_port(sw_t *sw, uint32_t idx) noexcept nogil:
    """Port idx is going away (lock held): out of the trunk list, its table freed."""
    if sw.vlan.trunks[idx] == NULL:
        return
    vlan_unlink(sw, idx)
    free(sw.vlan.trunks[idx])
    sw.vlan.trunks[idx] = NULL
    sw.ports[idx].trunk = 0
