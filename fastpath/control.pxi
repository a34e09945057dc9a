# The control plane's reads and policy settings that copy or build C state:
# what the Datapath methods of the same jobs call. Tables are copied under
# the lock and turned into Python objects after it, so the loop never waits
# for Python.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
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
