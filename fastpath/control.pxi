# The control plane's reads and policy settings that copy or build C state:
# what the Datapath methods of the same jobs call. Tables are copied under
# the lock and turned into Python objects after it, so the loop never waits
# for Python.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from fastpath.mactable cimport MT_STATIC, key_network, mac_key


cdef tuple copy_events(sw_t *sw, uint64_t since):
    """(events after sequence number `since`, next since, events lost to overwriting)."""
    cdef uint64_t head, start, i
    cdef dp_event ev
    cdef dp_event *copy = <dp_event *>malloc(EV_RING * sizeof(dp_event))
    if copy == NULL:
        raise MemoryError()
    out = []
    try:
        with nogil:
            pthread_mutex_lock(&sw.lock)
            head = sw.ev_head
            start = max(since, head - EV_RING) if head > EV_RING else since
            for i in range(start, head):
                copy[i - start] = sw.evring[i & (EV_RING - 1)]
            pthread_mutex_unlock(&sw.lock)
        for i in range(head - start):
            ev = copy[i]
            out.append((EVENT_KINDS[ev.kind], key_network(ev.key), format_mac(ev.key) if ev.key else None, ev.a, ev.b))
    finally:
        free(copy)
    return out, head, start - since


cdef list copy_fdb(sw_t *sw, uint16_t network, uint32_t want):
    """[(network, mac, out, static, age_s)] of live entries of network (0: all)
    naming output want (OUT_NONE: any), read FDB_CHUNK slots per hold of the
    lock so that a large table never holds the loop up for long."""
    cdef uint64_t i = 0, end
    cdef uint32_t n, j
    cdef fdb_row *copy = <fdb_row *>malloc(FDB_CHUNK * sizeof(fdb_row))
    cdef fdb_row *r
    if copy == NULL:
        raise MemoryError()
    result = []
    seen = set()  # an entry moved back by a deletion between chunks may be met twice
    try:
        while i <= sw.mt.mask:
            end = min(i + FDB_CHUNK, sw.mt.mask + 1)
            with nogil:
                pthread_mutex_lock(&sw.lock)
                n = sw_copy_fdb(sw, i, end, network, want, copy)
                pthread_mutex_unlock(&sw.lock)
            i = end
            for j in range(n):
                r = &copy[j]
                if r.key in seen:
                    continue
                seen.add(r.key)
                result.append((key_network(r.key), format_mac(r.key), r.out, bool(r.flags & MT_STATIC),
                               r.age_ms / 1000.0))
    finally:
        free(copy)
    return result


cdef list copy_neigh(sw_t *sw):
    """[(network, ip, mac)] of every address the switch answers for."""
    cdef neigh_table *t = &sw.neigh
    cdef uint32_t n = 0, i
    cdef neigh_entry *copy = <neigh_entry *>malloc((t.capacity + 1) * sizeof(neigh_entry))
    if copy == NULL:
        raise MemoryError()
    try:
        with nogil:
            pthread_mutex_lock(&sw.lock)
            for i in range(t.mask + 1):
                if t.slots[i].network:
                    copy[n] = t.slots[i]
                    n += 1
            pthread_mutex_unlock(&sw.lock)
        out = []
        for i in range(n):
            raw = bytes(copy[i].addr[:4 if copy[i].family == 4 else 16])
            out.append((copy[i].network, str(ipaddress.ip_address(raw)), format_mac(mac_key(0, copy[i].mac))))
        return out
    finally:
        free(copy)


cdef tuple neigh_key(sw_t *sw, uint16_t network, ip):
    """(family, the address packed into 16 bytes) of a unicast ip, checked."""
    if network < 1 or network > sw.max_networks:
        raise ValueError(f"network id {network} is out of range [1, {sw.max_networks}]")
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"{ip!r} is not an IPv4 or IPv6 address") from None
    if addr.is_multicast or addr.is_unspecified:
        raise ValueError(f"{ip} is not a unicast address")
    return addr.version, addr.packed.ljust(16, b"\0")


cdef void policy_from(port_policy *pol, bint security, bint router, bint dhcp_server, macs, ips) except *:
    """Fill pol (policy.pxi) from the control plane's terms, refusing what does not fit."""
    memset(pol, 0, sizeof(port_policy))
    pol.flags = (POL_SECURITY if security else 0) | (POL_ROUTER if router else 0) | (
        POL_DHCP_SERVER if dhcp_server else 0)
    macs = [parse_mac(m) for m in macs]
    addrs = [ipaddress.ip_address(a) for a in ips]
    v4 = list(dict.fromkeys(a.packed for a in addrs if a.version == 4))
    v6 = list(dict.fromkeys(a.packed for a in addrs if a.version == 6))
    if security and not macs:
        raise ValueError("port security needs at least one MAC")
    if len(macs) > POL_MACS or len(v4) > POL_IP4 or len(v6) > POL_IP6:
        raise ValueError(f"at most {POL_MACS} MACs, {POL_IP4} IPv4 and {POL_IP6} IPv6 addresses per port")
    for i, m in enumerate(macs):
        pol.macs[i] = int.from_bytes(m, "big")
    for i, a in enumerate(v4):
        memcpy(pol.ip4[i], <const char *>a, 4)
    for i, a in enumerate(v6):
        memcpy(pol.ip6[i], <const char *>a, 16)
    pol.nmacs, pol.nip4, pol.nip6 = len(macs), len(v4), len(v6)


cdef trunk_t *trunk_table(sw_t *sw, dict trunk, uint16_t native) except NULL:
    """A trunk port's table, checked: networks in range, VIDs 1..4094 and
    each once, the native network not also tagged."""
    cdef trunk_t *t
    vids = {}
    for net, vid in trunk.items():
        if not 1 <= net <= sw.max_networks:
            raise ValueError(f"network id {net} is out of range [1, {sw.max_networks}]")
        if not 1 <= vid <= 4094:
            raise ValueError(f"VLAN ID {vid} is out of range [1, 4094]")
        if vid in vids:
            raise ValueError(f"VLAN ID {vid} is given to networks {vids[vid]} and {net}")
        vids[vid] = net
    if native > sw.max_networks:
        raise ValueError(f"network id {native} is out of range [1, {sw.max_networks}]")
    if native and native in trunk:
        raise ValueError(f"network {native} is native and tagged ({trunk[native]}) at once")
    t = <trunk_t *>calloc(1, sizeof(trunk_t) + (sw.max_networks + 1) * sizeof(uint16_t))
    if t == NULL:
        raise MemoryError()
    t.net_vid = <uint16_t *>(t + 1)
    for vid, net in vids.items():
        t.vid_net[vid] = net
        t.net_vid[net] = vid
    if native:
        t.vid_net[0] = native
        t.net_vid[native] = VID_UNTAGGED
    return t


cdef object trunk_of(sw_t *sw, uint32_t idx):
    """({network: VID}, native) of port idx if it is a trunk port, else None."""
    cdef trunk_t *t = sw.vlan.trunks[idx]
    if t == NULL:
        return None
    return ({n: t.net_vid[n] for n in range(1, sw.max_networks + 1)
             if t.net_vid[n] and t.net_vid[n] != VID_UNTAGGED}, t.vid_net[0])


cdef void limits_from(port_limits *lim, tuple storms, int64_t rate_bytes, int64_t burst_bytes, int64_t rate_fps,
                      bint rx, bint tx, int64_t now) except *:
    """Fill lim (limits.pxi) from the control plane's terms, refusing what does not fit:
    storms are the storm_* frames/s of each kind (0: no limit); buckets start full at now."""
    cdef uint32_t k
    for name, v in (("storm_broadcast", storms[0]), ("storm_multicast", storms[1]),
                    ("storm_unknown_unicast", storms[2]), ("rate_bytes", rate_bytes),
                    ("burst_bytes", burst_bytes), ("rate_fps", rate_fps)):
        if v < 0 or v > (1 << 40):
            raise ValueError(f"{name} must be in [0, {1 << 40}], got {v}")
    if rate_bytes and not burst_bytes:
        raise ValueError("a byte rate needs a burst")
    memset(lim, 0, sizeof(port_limits))
    for k in range(STORM_KINDS):
        if storms[k]:
            bucket_set(&lim.storm[k], storms[k], max(1, storms[k] // 10), now)
            lim.flags |= LIM_STORM
    if rate_bytes or rate_fps:
        if rx:
            lim.flags |= LIM_RATE_RX
        if tx:
            lim.flags |= LIM_RATE_TX
        if rate_bytes:
            bucket_set(&lim.rx_bytes, rate_bytes, burst_bytes, now)
            bucket_set(&lim.tx_bytes, rate_bytes, burst_bytes, now)
        if rate_fps:
            bucket_set(&lim.rx_frames, rate_fps, max(1, rate_fps // 10), now)
            bucket_set(&lim.tx_frames, rate_fps, max(1, rate_fps // 10), now)


cdef dict bucket_levels(port_limits *lim, int64_t now):
    """What is left in each of lim's buckets with a rate at now, in units (below 0: a debt), by name."""
    cdef bucket_t *buckets[7]
    buckets[:] = [&lim.storm[STORM_BROADCAST], &lim.storm[STORM_MULTICAST], &lim.storm[STORM_UNKNOWN_UNICAST],
                  &lim.rx_bytes, &lim.rx_frames, &lim.tx_bytes, &lim.tx_frames]
    names = ("storm_broadcast", "storm_multicast", "storm_unknown_unicast", "rx_bytes", "rx_frames", "tx_bytes",
             "tx_frames")
    out = {}
    for i in range(7):
        if buckets[i].rate:
            out[names[i]] = bucket_level(buckets[i], now) / 1000.0
    return out
