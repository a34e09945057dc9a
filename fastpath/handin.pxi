# Frames handed in from Python, run through the loop's own code in the
# calling thread: local ingress (forward_batch) and tunnel ingress
# (tun_decap) for tests and fuzzing, and the decision asked (decide(), dry
# for trace). Never the loop's path. The Datapath methods of the same names
# check their arguments and call these.
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

from fastpath.frame cimport DROP_MAC_PINNED
from fastpath.mactable cimport OUT_NONE, mac_key
from fastpath.vxlan cimport VX_OK, VX_TRUNCATED, VXLAN_HLEN


cdef void handin_frames(sw_t *sw, uint32_t in_port, list frames) except *:
    """frames as one batch read from port in_port (up, checked by the caller).
    Each sits in a buffer of its own, exactly as long as it needs, so the
    sanitizers see any read past a frame."""
    cdef uint32_t n = len(frames), i
    cdef uint32_t lead = VNET_HLEN if sw.ports[in_port].vnet else 0
    cdef frame_t *batch
    cdef uint8_t **mem
    cdef bytes b
    cdef Py_ssize_t blen
    cdef int64_t now
    if n > BATCH:
        raise ValueError(f"at most {BATCH} frames make a batch")
    for b in frames:
        if len(b) > FRAME_ROOM + lead:
            raise ValueError(f"a frame longer than {FRAME_ROOM + lead} bytes cannot be read from a port")
    batch = <frame_t *>calloc(max(n, 1), sizeof(frame_t))
    mem = <uint8_t **>calloc(max(n, 1), sizeof(uint8_t *))
    try:
        if batch == NULL or mem == NULL:
            raise MemoryError()
        for i in range(n):
            b = frames[i]
            blen = len(b)
            # A read shorter than its header still leaves one in the engine's buffer.
            mem[i] = <uint8_t *>calloc(HEADROOM + max(<uint32_t>blen, lead), 1)
            if mem[i] == NULL:
                raise MemoryError()
            memcpy(mem[i] + HEADROOM, <const uint8_t *>b, blen)
            frame_read(&batch[i], mem[i] + HEADROOM, blen, lead, in_port)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            now = now_ms()
            forward_batch(sw, batch, n, now)
            sw.stats[LS_FRAMES] += n
            pthread_mutex_unlock(&sw.lock)
    finally:
        if mem != NULL:
            for i in range(n):
                free(mem[i])
        free(mem)
        free(batch)


cdef list handin_datagrams(sw_t *sw, uint32_t addr, list datagrams):
    """VXLAN datagrams from IPv4 address addr (as tun_rx reads them, the VXLAN
    header first) through tun_decap; each one's vx_drop. Buffers as above."""
    cdef uint32_t n = len(datagrams), i
    cdef frame_t *batch
    cdef uint8_t **mem
    cdef uint32_t *lens
    cdef int *reasons
    cdef bytes b
    cdef int64_t now
    cdef ingress_t src
    cdef decision_t d
    if n > BATCH:
        raise ValueError(f"at most {BATCH} datagrams make a batch")
    for b in datagrams:
        if len(b) > FRAME_ROOM + VXLAN_HLEN:
            raise ValueError(f"a datagram longer than {FRAME_ROOM + VXLAN_HLEN} bytes cannot be read")
    batch = <frame_t *>calloc(max(n, 1), sizeof(frame_t))
    mem = <uint8_t **>calloc(max(n, 1), sizeof(uint8_t *))
    lens = <uint32_t *>calloc(max(n, 1), sizeof(uint32_t))
    reasons = <int *>calloc(max(n, 1), sizeof(int))
    try:
        if batch == NULL or mem == NULL or lens == NULL or reasons == NULL:
            raise MemoryError()
        for i in range(n):
            b = datagrams[i]
            lens[i] = len(b)
            mem[i] = <uint8_t *>calloc(HEADROOM + lens[i], 1)
            if mem[i] == NULL:
                raise MemoryError()
            memcpy(mem[i] + HEADROOM, <const uint8_t *>b, lens[i])
            batch[i].data = mem[i] + HEADROOM + VXLAN_HLEN
            batch[i].in_port = NO_PORT
        with nogil:
            pthread_mutex_lock(&sw.lock)
            now = now_ms()
            for i in range(n):
                # As tun_rx: an empty datagram is a truncated one.
                reasons[i] = VX_TRUNCATED if lens[i] == 0 else tun_decap(
                    sw, &batch[i], mem[i] + HEADROOM, lens[i], addr, now, &src, &d)
                if reasons[i] != VX_OK:
                    sw.tun.drops[reasons[i]] += 1
            gro_flush(sw)
            sw.stats[LS_FRAMES] += n
            pthread_mutex_unlock(&sw.lock)
        return [reasons[i] for i in range(n)]
    finally:
        if mem != NULL:
            for i in range(n):
                free(mem[i])
        free(mem)
        free(batch)
        free(lens)
        free(reasons)


cdef dict decision_asked(sw_t *sw, bytes datagram, bint from_tunnel, uint32_t idx, uint32_t addr, bint dry_run,
                         int64_t at_ms):
    """decide() for a frame entering by port idx, or for a VXLAN datagram
    (header first) from addr, at the loop's clock at_ms (-1: now); as
    Datapath.decide describes."""
    cdef const uint8_t *data = datagram
    cdef uint32_t length = len(datagram), i, nports = 0, npeers = 0
    cdef int state = 0        # a vx_drop for a datagram, PORT_* + 0x100 for a port not up
    cdef ingress_t src
    cdef decision_t d
    cdef int64_t now
    cdef uint32_t *ports = <uint32_t *>malloc(sw.max_ports * sizeof(uint32_t))
    cdef uint32_t *peers = <uint32_t *>malloc(sw.tun.max_peers * sizeof(uint32_t))
    try:
        if ports == NULL or peers == NULL:
            raise MemoryError()
        with nogil:
            pthread_mutex_lock(&sw.lock)
            now = now_ms() if at_ms < 0 else at_ms
            if from_tunnel:
                state = tun_check(&sw.tun, data, length, addr, &src)
                data += VXLAN_HLEN
                length -= VXLAN_HLEN
            elif sw.ports[idx].state != PORT_UP:
                state = 0x100 + sw.ports[idx].state
            else:
                src.out = idx
                src.network = sw.ports[idx].network
                src.mtu = sw.ports[idx].mtu
            if state == 0:
                decide(sw, data, length, &src, now, dry_run, &d)
            if state == 0 and d.verdict == V_FLOOD:
                flood_set(sw, &src, ports, &nports, peers, &npeers)
            pthread_mutex_unlock(&sw.lock)
        if state == 0x100 + PORT_FREE:
            raise LookupError(f"port index {idx} is not in use")
        out = {"verdict": "drop", "reason": None, "network": None, "learn": None, "was": None, "lookup": None,
               "ports": [ports[i] for i in range(nports)], "peers": [peers[i] for i in range(npeers)]}
        if state:
            out["reason"] = "port_down" if state > 0xFF else VX_DROP_NAMES[state]
            return out
        out["network"] = src.network
        out["verdict"] = VERDICTS[d.verdict]
        if d.verdict == V_DROP:
            out["reason"] = ("split_horizon" if d.reason == DROP_SPLIT_HORIZON
                             else "mac_pinned" if d.reason == DROP_MAC_PINNED
                             else "inner_malformed" if from_tunnel else DROP_NAMES[d.reason])
        elif d.verdict == V_PORT:
            out["ports"] = [d.out]
        elif d.verdict == V_ANSWER:
            out["ports"] = [d.out]
            out["answer"] = {"kind": "arp" if d.answer == NEIGH_ARP else "nd",
                             "mac": format_mac(mac_key(0, d.answer_mac))}
        elif d.verdict == V_PEER:
            out["peers"] = [d.out]
        if d.learned != LEARN_NONE:
            out["learn"] = LEARN_RESULTS[d.learned]
            out["was"] = None if d.was == OUT_NONE else d.was
            if not data[0] & 1:
                out["lookup"] = {"hit": False} if not d.hit else {
                    "hit": True, "out": d.hit_out, "static": bool(d.hit_static),
                    "age_s": (now - d.hit_seen_ms) / 1000.0}
        return out
    finally:
        free(ports)
        free(peers)
