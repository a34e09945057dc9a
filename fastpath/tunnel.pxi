# The VXLAN tunnel (RFC 7348): peers and the VNI map, receiving (recvmmsg,
# the kernel's UDP GRO split, header, VNI and peer checks, then the decision
# with the peer as ingress), and sending (encapsulation into the frame's
# headroom, a sendmmsg queue flushed per batch, and UDP_SEGMENT trains for
# segmented super-frames). It owns its buffers: datagrams are read into its
# own frame store whichever engine runs the loop.
#
# Sending: every header is our own (IPv4, UDP, VXLAN), sent from a raw
# IPPROTO_RAW socket, so each packet picks its own source port. That kind of
# socket only sends: a raw IPPROTO_UDP one would also be handed a clone of
# every UDP datagram the host receives, the tunnel's own included.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

from fastpath.frame cimport DROP_GSO_UNSUPPORTED, DROP_MAC_PINNED, DROP_TUNNEL_MTU, ETH_HLEN, VNET_HLEN
from fastpath.gso cimport (GSO_ERR_TOO_MANY, GSO_MAX_HDR, GSO_SEG_ROOM, gso_header, gso_plan, gso_plan_t, gso_segment,
                           seg_t)
from fastpath.mactable cimport OUT_PEER
from fastpath.posix_io cimport (AF_INET, CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_NXTHDR, CMSG_SPACE, EINTR, MSG_DONTWAIT,
                                SO_ATTACH_FILTER, SOL_SOCKET, cmsghdr, errno, htons, iovec, mmsghdr, msghdr, recvmmsg,
                                sendmmsg, sendmsg, setsockopt, sock_filter, sock_fprog, sockaddr_in)
from fastpath.vxlan cimport (IPV4_HLEN, UDP_HLEN, VX_BAD_FLAGS, VX_DROPS, VX_INNER_MALFORMED, VX_MAC_PINNED, VX_OK,
                             VX_SPLIT_HORIZON, VX_TRUNCATED,
                             VX_UNKNOWN_PEER, VX_UNKNOWN_VNI, VXLAN_FLAG_I, VXLAN_HLEN, flow_hash, udp_write, vxlan_vni,
                             vxlan_write)

cdef enum:
    TXQ = 256                      # tunnel sends queued per batch, flushed with sendmmsg
    VNI_SLOTS = 8192               # VNI -> network map (open addressing, > 2 x max networks)
    GSO_SOCKETS = 16               # UDP sockets for kernel UDP segmentation, one per source port
    SOL_UDP = 17                   # <netinet/udp.h>
    UDP_SEGMENT = 103
    UDP_GRO = 104
    RX_CTRL_WORDS = 4              # room for one UDP_GRO control message per datagram
    UDP_GSO_MAX = 64               # segments per UDP_SEGMENT send (the kernel's limit is 64 or more)
    UDP_GSO_BYTES = 65000          # UDP payload per UDP_SEGMENT send (an IPv4 packet's limit, less headers)
    ENCAP_LEN = UDP_HLEN + VXLAN_HLEN
    # A train segment's headers (VXLAN, then the inner headers gso_header
    # writes), one slot each; the payload stays in the super-frame.
    TRAIN_HDR_SLOT = (VXLAN_HLEN + GSO_MAX_HDR + 15) & ~15

cdef struct peer_t:
    uint32_t addr                  # remote VTEP, IPv4 in network byte order
    uint16_t network
    uint8_t used
    int32_t next_in_net

cdef struct vni_slot:
    uint32_t vni                   # 0: empty (VNIs start at 1 here)
    uint16_t network

cdef struct tunnel_t:
    peer_t *peers
    uint64_t *pectr                # PE_COUNT per peer
    uint32_t max_peers
    int32_t *net_peer_head         # first peer of each network, -1: none
    uint32_t *net_vni              # each network's VNI, 0: none
    vni_slot vni_map[VNI_SLOTS]
    int rx_fd                      # -1 until the VTEP is set
    int tx_fd
    uint16_t port
    uint16_t sport_lo
    uint16_t sport_hi
    uint32_t max_frame             # the longest inner frame the underlay MTU carries
    uint64_t drops[VX_DROPS]
    # sending
    mmsghdr txq[TXQ]
    iovec txiov[2 * TXQ]           # each packet: its IPv4 header in txip, then UDP, VXLAN and the frame
    uint8_t txip[TXQ][IPV4_HLEN]
    sockaddr_in txaddr[TXQ]
    uint32_t txpeer[TXQ]
    uint32_t txq_len
    int gso_fds[GSO_SOCKETS]
    uint16_t gso_ports[GSO_SOCKETS]
    uint32_t n_gso
    uint8_t *train_hdrs            # TXQ header slots of a train's segments
    iovec train_iov[2 * TXQ]       # each segment: its headers' slot, then its payload in the super-frame
    uint8_t *gso_scratch
    uint32_t gso_scratch_len
    seg_t segs[TXQ]
    # receiving
    uint8_t *rxmem
    frame_t rxframes[BATCH]
    mmsghdr rxq[BATCH]
    iovec rxiov[BATCH]
    sockaddr_in rxaddr[BATCH]
    uint64_t rxctrl[BATCH][RX_CTRL_WORDS]


cdef int tun_init(tunnel_t *t, uint32_t max_peers, uint32_t max_networks) noexcept nogil:
    cdef uint32_t i
    t.rx_fd = t.tx_fd = -1
    t.max_peers = max_peers
    t.peers = <peer_t *>calloc(max_peers, sizeof(peer_t))
    t.pectr = <uint64_t *>calloc(<size_t>max_peers * PE_COUNT, sizeof(uint64_t))
    t.net_peer_head = <int32_t *>malloc((max_networks + 1) * sizeof(int32_t))
    t.net_vni = <uint32_t *>calloc(max_networks + 1, sizeof(uint32_t))
    t.gso_scratch_len = FRAME_ROOM + TXQ * GSO_SEG_ROOM
    t.gso_scratch = <uint8_t *>malloc(t.gso_scratch_len)
    t.train_hdrs = <uint8_t *>malloc(TXQ * TRAIN_HDR_SLOT)
    t.rxmem = <uint8_t *>malloc(<size_t>BATCH * BUF_SIZE)
    if not (t.peers and t.pectr and t.net_peer_head and t.net_vni and t.gso_scratch and t.train_hdrs and t.rxmem):
        return -1
    for i in range(max_networks + 1):
        t.net_peer_head[i] = -1
    for i in range(BATCH):
        # Datagrams land so that the inner frame starts at rxframes[i].data.
        t.rxframes[i].data = t.rxmem + <size_t>i * BUF_SIZE + HEADROOM
        t.rxiov[i].iov_base = t.rxframes[i].data - VXLAN_HLEN
        t.rxiov[i].iov_len = FRAME_ROOM + VXLAN_HLEN
        t.rxq[i].msg_hdr.msg_iov = &t.rxiov[i]
        t.rxq[i].msg_hdr.msg_iovlen = 1
        t.rxq[i].msg_hdr.msg_name = &t.rxaddr[i]
    for i in range(TXQ):
        t.txq[i].msg_hdr.msg_iov = &t.txiov[2 * i]
        t.txq[i].msg_hdr.msg_iovlen = 2
        t.txq[i].msg_hdr.msg_name = &t.txaddr[i]
        t.txq[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        t.txaddr[i].sin_family = AF_INET
        t.txaddr[i].sin_port = 0  # ignored by raw sockets
        ip4_template(t.txip[i])
        t.txiov[2 * i].iov_base = t.txip[i]
        t.txiov[2 * i].iov_len = IPV4_HLEN
    return 0


cdef void ip4_template(uint8_t *ip) noexcept nogil:
    """An outer IPv4 header as the kernel completes it for a raw IPPROTO_RAW
    socket: it fills in the total length, the checksum, the ID (when 0) and
    the source address (when 0, from the socket's address and the route);
    the destination is written per packet. Don't Fragment is set, as the
    kernel sets it on the UDP sockets' packets: the tunnel never sends a
    packet past the underlay MTU, and a smaller path is an error to see."""
    memset(ip, 0, IPV4_HLEN)
    ip[0] = 0x45                   # version 4, 5 words
    ip[6] = 0x40                   # DF
    ip[8] = 64                     # TTL, the kernel's default
    ip[9] = 17                     # UDP


cdef void tun_free(tunnel_t *t) noexcept nogil:
    free(t.peers)
    free(t.pectr)
    free(t.net_peer_head)
    free(t.net_vni)
    free(t.gso_scratch)
    free(t.train_hdrs)
    free(t.rxmem)


cdef void tun_map_vnis(tunnel_t *t, uint32_t max_networks) noexcept nogil:
    """Rebuild the VNI -> network map from net_vni."""
    cdef uint32_t n, i
    memset(t.vni_map, 0, sizeof(t.vni_map))
    for n in range(1, max_networks + 1):
        if t.net_vni[n]:
            i = (t.net_vni[n] * 2654435761U) & (VNI_SLOTS - 1)
            while t.vni_map[i].vni != 0:
                i = (i + 1) & (VNI_SLOTS - 1)
            t.vni_map[i].vni = t.net_vni[n]
            t.vni_map[i].network = <uint16_t>n


cdef int32_t tun_add_peer(tunnel_t *t, uint16_t network, uint32_t addr) noexcept nogil:
    """Add a peer at IPv4 address addr to a network: its index, -1 when all are in use."""
    cdef uint32_t idx
    for idx in range(t.max_peers):
        if not t.peers[idx].used:
            break
    else:
        return -1
    t.peers[idx].addr = addr
    t.peers[idx].network = network
    memset(&t.pectr[<size_t>idx * PE_COUNT], 0, PE_COUNT * sizeof(uint64_t))
    t.peers[idx].next_in_net = t.net_peer_head[network]
    t.net_peer_head[network] = idx
    t.peers[idx].used = 1
    return idx


cdef void tun_remove_peer(tunnel_t *t, uint32_t idx) noexcept nogil:
    cdef int32_t *link = &t.net_peer_head[t.peers[idx].network]
    while link[0] >= 0:
        if <uint32_t>link[0] == idx:
            link[0] = t.peers[idx].next_in_net
            break
        link = &t.peers[link[0]].next_in_net
    t.peers[idx].used = 0
    t.peers[idx].next_in_net = -1


cdef inline uint16_t tun_vni_network(const tunnel_t *t, uint32_t vni) noexcept nogil:
    cdef uint32_t i = (vni * 2654435761U) & (VNI_SLOTS - 1)
    while t.vni_map[i].vni != 0:
        if t.vni_map[i].vni == vni:
            return t.vni_map[i].network
        i = (i + 1) & (VNI_SLOTS - 1)
    return 0


cdef inline int32_t tun_peer_of(const tunnel_t *t, uint16_t network, uint32_t addr) noexcept nogil:
    """The peer of `network` at IPv4 address addr, -1 if it is none."""
    cdef int32_t peer = t.net_peer_head[network]
    while peer >= 0 and t.peers[peer].addr != addr:
        peer = t.peers[peer].next_in_net
    return peer


def vtep_tx_socket(str addr) -> socket.socket:
    """The socket the tunnel sends from (set_vtep's tx_fd): raw, IPPROTO_RAW,
    bound to the VTEP address addr (IPv4), non-blocking. The tunnel writes
    each packet's IPv4 header itself (ip4_template)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        s.bind((addr, 0))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def drop_all_input(int fd) -> None:
    """Attach a filter that accepts nothing to a socket only used to send."""
    cdef sock_filter drop_all[1]
    cdef sock_fprog prog
    drop_all[0].code = 0x06  # BPF_RET | BPF_K: return 0 bytes, i.e. drop
    drop_all[0].jt = drop_all[0].jf = 0
    drop_all[0].k = 0
    prog.len = 1
    prog.filter = drop_all
    if setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0:
        raise OSError(errno, f"cannot attach a filter to fd {fd}: {os.strerror(errno)}")


# ---- receiving --------------------------------------------------------------------

cdef int tun_check(const tunnel_t *t, const uint8_t *hdr, uint32_t length, uint32_t addr,
                   ingress_t *src) noexcept nogil:
    """Check a datagram's VXLAN header (length bytes at hdr, from IPv4 addr)
    and find the peer and network it comes from; returns a vx_drop."""
    cdef uint16_t network
    cdef int32_t peer
    if length < VXLAN_HLEN + ETH_HLEN:
        return VX_TRUNCATED
    if not (hdr[0] & VXLAN_FLAG_I):
        return VX_BAD_FLAGS
    network = tun_vni_network(t, vxlan_vni(hdr))
    if network == 0:
        return VX_UNKNOWN_VNI
    peer = tun_peer_of(t, network, addr)
    if peer < 0:
        return VX_UNKNOWN_PEER
    src.out = OUT_PEER | <uint32_t>peer
    src.network = network
    src.mtu = t.max_frame - ETH_HLEN
    return VX_OK


cdef inline int tun_verdict(const decision_t *d) noexcept nogil:
    """How the tunnel counts a decision's drop: a frame the port checks refuse is
    malformed; one whose destination is behind a peer is no error, but is counted
    (split horizon), so every datagram read is forwarded or counted by reason."""
    if d.verdict != V_DROP:
        return VX_OK
    if d.reason == DROP_SPLIT_HORIZON:
        return VX_SPLIT_HORIZON
    if d.reason == DROP_MAC_PINNED:
        return VX_MAC_PINNED  # a peer (or a forger of its address) claims a local port's MAC
    return VX_INNER_MALFORMED


cdef int tun_decap(sw_t *sw, frame_t *f, const uint8_t *hdr, uint32_t length, uint32_t addr,
                   int64_t now, ingress_t *src, decision_t *d) noexcept nogil:
    """Check one datagram's VXLAN header, then decide and deliver its inner
    frame (at f.data, VXLAN_HLEN past hdr); returns a vx_drop, with the
    ingress and the decision in src and d when it is VX_OK or a decided drop."""
    cdef tunnel_t *t = &sw.tun
    cdef uint64_t *pc
    cdef int r = tun_check(t, hdr, length, addr, src)
    d.verdict = V_DROP
    if r == VX_UNKNOWN_VNI:
        sw_event(sw, EV_UNKNOWN_VNI, 0, addr, vxlan_vni(hdr))
    elif r == VX_UNKNOWN_PEER:
        sw_event(sw, EV_UNKNOWN_PEER, 0, addr, vxlan_vni(hdr))
    if r != VX_OK:
        return r
    f.len = length - VXLAN_HLEN
    pc = &t.pectr[<size_t>(src.out & ~OUT_PEER) * PE_COUNT]
    pc[PE_RX_PACKETS] += 1
    pc[PE_RX_BYTES] += f.len
    decide(sw, f.data, f.len, src, now, False, d)
    if d.verdict != V_DROP:
        deliver(sw, f, src, d)
    return tun_verdict(d)


cdef inline bint tun_same_decision(const uint8_t *hdr, uint32_t length, const uint8_t *prev,
                                   uint32_t prev_len) noexcept nogil:
    """Whether a datagram decides as the one before it in the same UDP GRO
    run did: the same VXLAN header and inner Ethernet header, no longer. A
    decision to a port whose source was already known (a hit) changes no
    table, so the next such datagram, at the same time, gets the same one."""
    return (VXLAN_HLEN + ETH_HLEN <= length <= prev_len
            and memcmp(hdr, prev, VXLAN_HLEN + ETH_HLEN) == 0)


cdef int tun_rx(sw_t *sw, int64_t now) noexcept nogil:
    """Read and handle one batch of datagrams; returns how many were read."""
    cdef tunnel_t *t = &sw.tun
    cdef int n, k, reason
    cdef uint32_t total, seg, off, length, datagrams = 0, prev_len = 0
    cdef frame_t *f
    cdef uint8_t *base
    cdef uint8_t prev[VXLAN_HLEN + ETH_HLEN]  # the headers of the last datagram decided
    cdef cmsghdr *cm
    cdef int gso_size
    cdef ingress_t src
    cdef decision_t d
    cdef bint reuse
    cdef uint64_t *pc
    for k in range(BATCH):
        t.rxq[k].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        t.rxq[k].msg_hdr.msg_flags = 0
        t.rxq[k].msg_hdr.msg_control = t.rxctrl[k]
        t.rxq[k].msg_hdr.msg_controllen = sizeof(t.rxctrl[k])
    n = recvmmsg(t.rx_fd, t.rxq, BATCH, MSG_DONTWAIT, NULL)
    if n <= 0:
        return 0
    for k in range(n):
        f = &t.rxframes[k]
        base = <uint8_t *>t.rxiov[k].iov_base
        total = t.rxq[k].msg_len
        # With UDP GRO the kernel hands over several datagrams of one
        # flow at once, laid end to end, each `seg` bytes but the last.
        seg = total
        cm = CMSG_FIRSTHDR(&t.rxq[k].msg_hdr)
        while cm != NULL:
            if cm.cmsg_level == SOL_UDP and cm.cmsg_type == UDP_GRO:
                memcpy(&gso_size, CMSG_DATA(cm), sizeof(int))
                if 0 < gso_size < <int>total:
                    seg = <uint32_t>gso_size
                    sw.stats[LS_UDP_GRO] += (total + seg - 1) // seg
            cm = CMSG_NXTHDR(&t.rxq[k].msg_hdr, cm)
        if total == 0:
            t.drops[<int>VX_TRUNCATED] += 1  # an empty datagram is one too
            datagrams += 1
        off = 0
        reuse = False
        while off < total:
            length = min(seg, total - off)
            f.data = base + off + VXLAN_HLEN
            f.in_port = NO_PORT
            f.encap_vni = 0
            f.tag = f.pending = 0
            memset(f.vnet, 0, VNET_HLEN)
            memset(&f.vi, 0, sizeof(f.vi))
            if reuse and tun_same_decision(base + off, length, prev, prev_len):
                # A bulk flow's datagrams in one run: decided once.
                f.len = length - VXLAN_HLEN
                pc = &t.pectr[<size_t>(src.out & ~OUT_PEER) * PE_COUNT]
                pc[PE_RX_PACKETS] += 1
                pc[PE_RX_BYTES] += f.len
                deliver(sw, f, &src, &d)
            else:
                if length >= VXLAN_HLEN + ETH_HLEN:
                    # Copied before delivery: a frame written out as it is
                    # gets its virtio-net header over the bytes before it.
                    memcpy(prev, base + off, VXLAN_HLEN + ETH_HLEN)
                reason = tun_decap(sw, f, base + off, length, t.rxaddr[k].sin_addr.s_addr, now, &src, &d)
                if reason != VX_OK:
                    t.drops[reason] += 1
                reuse = seg < total and reason == VX_OK and d.verdict == V_PORT and d.learned == MT_HIT
                prev_len = length
            off += length
            datagrams += 1
        f.data = base + VXLAN_HLEN  # the buffer's own place, for the next read into it
    gro_flush(sw)
    sw.stats[LS_BATCHES] += 1
    sw.stats[LS_HIST + hist_bucket(datagrams)] += 1
    sw.stats[LS_FRAMES] += datagrams
    return n


# ---- sending ----------------------------------------------------------------------

cdef inline uint16_t tun_sport(const tunnel_t *t, const frame_t *f) noexcept nogil:
    """The outer UDP source port of the frame's flow (RFC 7348 section 5).
    With kernel UDP segmentation in use, a flow's port must be one its
    super-frames can also leave from, so the hash picks among those."""
    cdef uint32_t h = flow_hash(f.data, f.len)
    if t.n_gso:
        return t.gso_ports[h % t.n_gso]
    return t.sport_lo + h % (t.sport_hi - t.sport_lo + 1)


cdef void tun_flush(sw_t *sw) noexcept nogil:
    """Send what is queued, with as few sendmmsg calls as the kernel takes."""
    cdef tunnel_t *t = &sw.tun
    cdef uint32_t i = 0, k, peer
    cdef int sent
    while i < t.txq_len:
        sent = sendmmsg(t.tx_fd, &t.txq[i], t.txq_len - i, MSG_DONTWAIT)
        if sent <= 0:
            if sent < 0 and errno == EINTR:
                continue
            # The first message failed (no route, full buffer...): count
            # it against its peer and go on with the rest.
            t.pectr[<size_t>t.txpeer[i] * PE_COUNT + PE_TX_ERRORS] += 1
            i += 1
            continue
        for k in range(i, i + <uint32_t>sent):
            peer = t.txpeer[k]
            t.pectr[<size_t>peer * PE_COUNT + PE_TX_PACKETS] += 1
            t.pectr[<size_t>peer * PE_COUNT + PE_TX_BYTES] += t.txiov[2 * k + 1].iov_len - ENCAP_LEN
        i += <uint32_t>sent
    t.txq_len = 0


cdef inline void tun_queue(sw_t *sw, uint32_t peer, uint8_t *hdr, uint32_t length) noexcept nogil:
    cdef tunnel_t *t = &sw.tun
    cdef uint32_t n = t.txq_len
    t.txiov[2 * n + 1].iov_base = hdr
    t.txiov[2 * n + 1].iov_len = length
    t.txaddr[n].sin_addr.s_addr = t.peers[peer].addr
    memcpy(&t.txip[n][16], &t.peers[peer].addr, 4)
    t.txpeer[n] = peer
    t.txq_len = n + 1
    if t.txq_len == TXQ:
        tun_flush(sw)


cdef void tun_encap(sw_t *sw, uint32_t peer, frame_t *f, uint16_t network) noexcept nogil:
    """Queue the frame, VXLAN-encapsulated, for a peer; tun_flush sends."""
    cdef tunnel_t *t = &sw.tun
    cdef uint8_t *hdr = f.data - ENCAP_LEN
    cdef uint32_t vni = t.net_vni[network]
    if vni == 0 or t.tx_fd < 0 or not t.peers[peer].used:
        t.pectr[<size_t>peer * PE_COUNT + PE_TX_ERRORS] += 1
        return
    if f.encap_vni != vni:
        if f.tag:
            sw.eng.settle(sw.engine, f)  # the headroom may still hold a queued write's virtio-net header
        # Written once per frame into its headroom, shared by every peer.
        udp_write(hdr, tun_sport(t, f), t.port, <uint16_t>(f.len + ENCAP_LEN))
        vxlan_write(hdr + UDP_HLEN, vni)
        f.encap_vni = vni
    tun_queue(sw, peer, hdr, f.len + ENCAP_LEN)


cdef void tun_send_train(sw_t *sw, const gso_plan_t *p, uint32_t hash_idx, int32_t peer) noexcept nogil:
    """Send a super-frame's segments (headers in train_hdrs, payload in the
    super-frame, gathered by train_iov) as UDP_SEGMENT trains from the
    flow's UDP socket: the kernel copies each train once and cuts it into
    datagrams late, for one pass through the stack. Every segment but the
    last has the same length (GSO output), as UDP_SEGMENT requires. A
    refused train counts against the peer."""
    cdef tunnel_t *t = &sw.tun
    cdef uint32_t size = VXLAN_HLEN + p.hlen + p.mss, first = 0, count
    cdef uint64_t ctrl[4]
    cdef uint16_t seg_size = <uint16_t>size
    cdef msghdr msg
    cdef sockaddr_in dst
    cdef cmsghdr *cm
    cdef ssize_t sent
    cdef uint64_t *pc = &t.pectr[<size_t>peer * PE_COUNT]
    memset(&dst, 0, sizeof(dst))
    dst.sin_family = AF_INET
    dst.sin_port = htons(t.port)
    dst.sin_addr.s_addr = t.peers[peer].addr
    while first < p.nseg:
        # At least one: past an underlay MTU of about 65040 a segment alone
        # can outgrow a train, and then goes as a datagram of its own.
        count = max(1, min(p.nseg - first, UDP_GSO_MAX, UDP_GSO_BYTES // size))
        memset(&msg, 0, sizeof(msg))
        msg.msg_name = &dst
        msg.msg_namelen = sizeof(dst)
        msg.msg_iov = &t.train_iov[2 * first]
        msg.msg_iovlen = 2 * count
        msg.msg_control = ctrl
        msg.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
        cm = CMSG_FIRSTHDR(&msg)
        cm.cmsg_level = SOL_UDP
        cm.cmsg_type = UDP_SEGMENT
        cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
        memcpy(CMSG_DATA(cm), &seg_size, sizeof(uint16_t))
        sent = sendmsg(t.gso_fds[hash_idx], &msg, MSG_DONTWAIT)
        if sent < 0 and errno == EINTR:
            continue
        if sent < 0:
            pc[PE_TX_ERRORS] += count
        else:
            pc[PE_TX_PACKETS] += count
            pc[PE_TX_BYTES] += count * p.hlen + (p.last_chunk if first + count == p.nseg else p.mss) + (count - 1) * p.mss
        first += count


cdef void tun_send_gso(sw_t *sw, frame_t *f, uint16_t network, int32_t only_peer) noexcept nogil:
    """Cut a TSO super-frame into MSS-sized frames and send each, VXLAN-
    encapsulated, to one peer (only_peer >= 0) or to every peer of the
    network. With UDP_SEGMENT, the segments' headers are written apart and
    their payload sent from where it lies (tun_send_train); else they are
    cut into one scratch area (gso_segment) and sent before the next
    super-frame can be cut."""
    cdef tunnel_t *t = &sw.tun
    cdef uint32_t vni = t.net_vni[network]
    cdef uint64_t *c = &sw.pctr[<size_t>f.in_port * PC_COUNT]
    cdef gso_plan_t plan
    cdef int nseg, i
    cdef int32_t q
    cdef uint16_t sport
    cdef uint32_t hash_idx, k, chunk
    cdef uint8_t *hdr
    cdef const uint8_t *payload
    if vni == 0 or t.tx_fd < 0:
        return
    nseg = gso_plan(f.data, f.len, &f.vi, &plan)
    if nseg == 0 and plan.nseg > TXQ:
        nseg = -GSO_ERR_TOO_MANY
    if nseg < 0:
        sw.stats[LS_GSO_ERRORS - nseg] += 1
        c[PC_DROPS + DROP_GSO_UNSUPPORTED] += 1
        return
    nseg = plan.nseg
    sw.stats[LS_SEGMENTED] += 1
    sw.stats[LS_SEGMENTS] += nseg
    # The longest segment: a full one, or the only one.
    if plan.hlen + (plan.mss if nseg > 1 else plan.last_chunk) > t.max_frame:
        c[PC_DROPS + DROP_TUNNEL_MTU] += 1
        return
    if t.n_gso and nseg > 1:
        tun_flush(sw)  # what is queued goes first
        for k in range(<uint32_t>nseg):
            hdr = t.train_hdrs + k * TRAIN_HDR_SLOT
            chunk = plan.mss if k + 1 < <uint32_t>nseg else plan.last_chunk
            payload = f.data + plan.hlen + <size_t>k * plan.mss
            vxlan_write(hdr, vni)
            gso_header(&plan, f.data, k, hdr + VXLAN_HLEN, payload)
            t.train_iov[2 * k].iov_base = hdr
            t.train_iov[2 * k].iov_len = VXLAN_HLEN + plan.hlen
            t.train_iov[2 * k + 1].iov_base = <void *>payload
            t.train_iov[2 * k + 1].iov_len = chunk
        hash_idx = flow_hash(f.data, f.len) % t.n_gso
        q = only_peer if only_peer >= 0 else t.net_peer_head[network]
        while q >= 0:
            if t.peers[q].used:
                tun_send_train(sw, &plan, hash_idx, q)
            q = -1 if only_peer >= 0 else t.peers[q].next_in_net
        return
    nseg = gso_segment(f.data, f.len, &f.vi, t.gso_scratch, t.gso_scratch_len, t.segs, TXQ)
    if nseg < 0:  # checked above: the scratch area always has room for TXQ segments
        sw.stats[LS_GSO_ERRORS - nseg] += 1
        c[PC_DROPS + DROP_GSO_UNSUPPORTED] += 1
        return
    # One source port for the whole flow: its segments keep one path.
    sport = tun_sport(t, f)
    for i in range(nseg):
        hdr = t.segs[i].data - ENCAP_LEN
        udp_write(hdr, sport, t.port, <uint16_t>(t.segs[i].len + ENCAP_LEN))
        vxlan_write(hdr + UDP_HLEN, vni)
    q = only_peer if only_peer >= 0 else t.net_peer_head[network]
    while q >= 0:
        if t.peers[q].used:
            for i in range(nseg):
                tun_queue(sw, q, t.segs[i].data - ENCAP_LEN, t.segs[i].len + ENCAP_LEN)
        q = -1 if only_peer >= 0 else t.peers[q].next_in_net
    tun_flush(sw)
