# The forwarding decision, the one place the switch's L2 rules live. Given a
# frame and where it came from (a local port, or a tunnel peer of a network),
# decide() says what becomes of it and learns its source:
#
#   1. parse the Ethernet header against the ingress's MTU (frame.parse_eth);
#      then VLANs (vlan.pxi): a trunk port's frame takes the network of its
#      tag, a priority tag on an access port is no tag, other tags are
#      refused; a tag accepted is removed before output (d.untag);
#   2. port policy, for a frame from a local port (policy.pxi: anti-spoofing,
#      RA and DHCP guard);
#   3. learn (network, source MAC) on the ingress; a move or a full table is
#      an event for the control plane's log; a source MAC pinned to another
#      port (a port's own MAC) drops the frame (mac_pinned), from a local
#      port or from the tunnel alike;
#   4. a group destination from a local port that is an ARP request or a
#      neighbour solicitation the switch can answer is answered (neigh.pxi):
#      the reply goes back out of the ingress port, nothing else gets it;
#      any other group destination floods; else look the destination up, after
#      learning, so a frame to its own source finds the entry just made;
#   5. no entry, or one naming a port that is not up: flood; an entry naming
#      the ingress port: drop (same_port); one naming a peer: that peer,
#      unless the frame came from the tunnel (split horizon, RFC 7348 4.2:
#      a frame from one VTEP is never relayed to another); else that port.
#
# The flood set is every up port of the network but the ingress and, for a
# frame from a local port only, every peer of the network (head-end
# replication): flood_port() and flood_peers() say so for output and trace.
# A flood from a local port with storm control passes its storm bucket first
# (limits.pxi), or is dropped by its kind (storm_broadcast, ...).
#
# With `dry` set (trace), nothing changes: learning is predicted with a peek,
# the lookup does not age entries out, no event is written.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastpath.frame cimport (DROP_MAC_PINNED, DROP_NONE, DROP_REASONS, DROP_SAME_PORT, ETH_HLEN, drop_reason, eth_info,
                             mac_is_group, parse_eth)
from fastpath.mactable cimport (MT_HIT, MT_LEARNED, MT_MOVED, MT_PINNED, MT_PINNED_KEPT, MT_REFUSED, MT_STATIC,
                                MT_STATIC_KEPT, OUT_NONE, OUT_PEER,
                                mac_entry, mac_key, mac_table, mt_expired, mt_learn, mt_lookup, mt_peek, mt_predict,
                                mt_evictee, mt_result)

cdef enum verdict:
    V_DROP = 0                     # reason says why
    V_PORT = 1                     # out: the port
    V_PEER = 2                     # out: the peer
    V_FLOOD = 3
    V_ANSWER = 4                   # out: the ingress port; answer, answer_mac: the reply (neigh.pxi)
VERDICTS = ("drop", "port", "peer", "flood", "answer")

cdef enum:
    # Beyond frame.drop_reason: a frame from the tunnel whose destination sits
    # behind a peer goes nowhere, and is no error; no port counts it.
    DROP_SPLIT_HORIZON = DROP_REASONS
    LEARN_NONE = 0xFF              # decision.learned of a frame dropped before learning
LEARN_RESULTS = ("hit", "learned", "moved", "refused", "static_kept", "pinned_kept", "limited")   # by mt_result

cdef struct ingress_t:
    uint32_t out                   # what its sources are learned on: a port index, or OUT_PEER | peer index
    uint16_t network               # 0: a trunk port's, until decide() reads it from the frame's tag
    uint32_t mtu                   # the L3 payload bound of its frames (parse_eth)

cdef struct decision_t:
    uint8_t verdict
    uint8_t reason                 # V_DROP: a drop_reason, or DROP_SPLIT_HORIZON
    uint32_t out                   # V_PORT: port index; V_PEER: peer index
    uint8_t learned                # mt_result of learning the source, or LEARN_NONE
    uint8_t untag                  # the frame's tag was accepted: it goes before output (vlan.pxi)
    uint32_t was                   # the output the source's entry named before (OUT_NONE: none)
    uint8_t hit                    # the destination's entry, as the lookup found it (unicast only)
    uint8_t hit_static
    uint32_t hit_out
    int64_t hit_seen_ms
    uint8_t answer                 # V_ANSWER: NEIGH_ARP or NEIGH_ND
    uint8_t answer_mac[6]          # V_ANSWER: the MAC the reply gives for the target


cdef inline bint flood_port(const sw_t *sw, uint32_t q, const ingress_t *src) noexcept nogil:
    """Whether a flood of a frame from src reaches port q (a port of its network)."""
    return q != src.out and sw.ports[q].state == PORT_UP


cdef inline bint flood_peers(const ingress_t *src) noexcept nogil:
    """Whether a flood of a frame from src reaches the network's peers."""
    return (src.out & OUT_PEER) == 0


cdef void flood_set(const sw_t *sw, const ingress_t *src, uint32_t *ports, uint32_t *nports, uint32_t *peers,
                    uint32_t *npeers) noexcept nogil:
    """List the flood set of a frame from src (trace): the ports and peers out_flood sends it to."""
    cdef int32_t q = sw.net_head[src.network]
    while q >= 0:
        if flood_port(sw, <uint32_t>q, src):
            ports[nports[0]] = q
            nports[0] += 1
        q = sw.ports[q].next_in_net
    flood_set_trunks(sw, src, ports, nports)
    q = sw.tun.net_peer_head[src.network] if flood_peers(src) else -1
    while q >= 0:
        peers[npeers[0]] = q
        npeers[0] += 1
        q = sw.tun.peers[q].next_in_net


cdef mt_result learn_peek(mac_table *t, uint64_t key, uint32_t out, int64_t now, uint32_t *was) noexcept nogil:
    """What mt_learn(t, key, out, now) would return, changing nothing."""
    return mt_predict(t, key, out, now, was)


cdef inline void storm_step(sw_t *sw, const uint8_t *data, const ingress_t *src, int64_t now, bint dry,
                            decision_t *d) noexcept nogil:
    """A flood from a local port with storm control (limits.pxi) may be dropped instead."""
    cdef drop_reason r
    if (src.out & OUT_PEER) == 0 and sw.limits[src.out].flags & LIM_STORM:
        r = storm_check(&sw.limits[src.out], data, now, dry)
        if r != DROP_NONE:
            d.verdict = V_DROP
            d.reason = r


cdef inline void decide(sw_t *sw, const uint8_t *data, uint32_t length, ingress_t *src, int64_t now, bint dry,
                 decision_t *d) noexcept nogil:
    cdef eth_info eth
    cdef drop_reason reason = parse_eth(data, length, src.mtu, &eth)
    cdef uint64_t skey, dkey, gone = 0
    cdef mac_entry *e
    cdef uint32_t out
    d.learned = LEARN_NONE
    d.hit = 0
    d.untag = 0
    if not dry:
        sw.lim_now = now
    if reason == DROP_NONE and (eth.tagged or src.network == 0):
        reason = vlan_ingress(sw, data, &eth, src)
        d.untag = eth.tagged
    if reason == DROP_NONE and not (src.out & OUT_PEER):
        reason = policy_ingress(&sw.policy[src.out], data, length, &eth)
    if reason != DROP_NONE:
        d.verdict = V_DROP
        d.reason = reason
        return
    skey = mac_key(src.network, eth.src)
    if dry:
        d.learned = learn_peek(&sw.mt, skey, src.out, now, &d.was)
        if d.learned == MT_LEARNED and d.was == OUT_NONE and sw.mt.count >= sw.mt.capacity:
            gone = mt_evictee(&sw.mt)  # learning would evict it: the lookup after would not find it
    else:
        d.was = OUT_NONE
        d.learned = mt_learn(&sw.mt, skey, src.out, now, &d.was)
        if d.learned == MT_MOVED:
            sw_event(sw, EV_MAC_MOVED, skey, d.was, src.out)
        elif d.learned == MT_REFUSED:
            sw_event(sw, EV_TABLE_FULL, skey, src.out, 0)
    if d.learned == MT_PINNED_KEPT:
        d.verdict = V_DROP
        d.reason = DROP_MAC_PINNED
        return
    if mac_is_group(eth.dst):
        # (Past a tag, the request reads as if untagged: its L3 header ETH_HLEN bytes in.)
        if (src.out & OUT_PEER) == 0 and neigh_suppress(&sw.neigh, data + eth.l2_len - ETH_HLEN,
                                                            length - eth.l2_len + ETH_HLEN, &eth, src.network,
                                                            &d.answer, d.answer_mac):
            d.verdict = V_ANSWER
            d.out = src.out
        else:
            d.verdict = V_FLOOD
            storm_step(sw, data, src, now, dry, d)
        return
    dkey = mac_key(src.network, eth.dst)
    if dry:
        e = mt_peek(&sw.mt, dkey)
        if e != NULL and (mt_expired(&sw.mt, e, now) or e.key == gone):
            e = NULL
    else:
        e = mt_lookup(&sw.mt, dkey, now)
    if e != NULL:
        d.hit = 1
        d.hit_out = e.out
        d.hit_static = (e.flags & MT_STATIC) != 0
        d.hit_seen_ms = e.last_seen_ms
    if dry and dkey == skey and (d.learned == MT_LEARNED or d.learned == MT_HIT or d.learned == MT_MOVED):
        # The loop would have learned it by now: the lookup finds that entry.
        d.hit = 1
        d.hit_out = src.out
        d.hit_static = e != NULL and d.hit_static
        d.hit_seen_ms = now
    out = d.hit_out
    if not d.hit:
        d.verdict = V_FLOOD
    elif out & OUT_PEER:
        if src.out & OUT_PEER:
            d.verdict = V_DROP
            d.reason = DROP_SPLIT_HORIZON
        else:
            d.verdict = V_PEER
            d.out = out & ~OUT_PEER
    elif out == src.out:
        d.verdict = V_DROP
        d.reason = DROP_SAME_PORT
    elif out < sw.max_ports and sw.ports[out].state == PORT_UP:
        d.verdict = V_PORT
        d.out = out
    else:
        d.verdict = V_FLOOD
    if d.verdict == V_FLOOD:
        storm_step(sw, data, src, now, dry, d)
