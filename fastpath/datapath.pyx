# cython: language_level=3
"""The switch's data plane: the Datapath the control plane drives.

One thread runs Datapath.run(), which releases the GIL for good and runs an
I/O engine's loop (engine_poll.pxi or engine_uring.pxi): it reads batches of
frames and, holding `sw.lock`, hands each batch to the forwarding code
(forward.pxi: decide.pxi, then output.pxi and tunnel.pxi). The control plane
takes the same lock, between batches, to change ports, peers and the FDB,
and reads counters without it: every counter has one writer, the loop, and
64-bit aligned loads do not tear. Nothing Python runs under the lock.

The units are included into this one module (one compilation unit, as
uvloop does), so the loop's calls between them are plain C calls; the
engine is reached through the function pointers of engine_ops.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from fastpath.frame cimport DROP_REASONS
from fastpath.mactable cimport (MT_STATIC, OUT_NONE, OUT_PEER, mac_entry, mac_key, mt_delete, mt_expired, mt_flush,
                                mt_free, mt_init, mt_oi, mt_peek, mt_pin, mt_set_limit, mt_set_static)
from fastpath.posix_io cimport (EFD_CLOEXEC, EFD_NONBLOCK, close, errno, eventfd, pthread_mutex_destroy,
                                pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock, read, write)
from fastpath.vxlan cimport VX_DROPS, VXLAN_IP_OVERHEAD

import ipaddress
import os
import re
import socket
import time

from fastpath.frame import DROP_NAMES
from fastpath.gso import GSO_ERROR_NAMES
from fastpath.mactable import format_mac, parse_mac
from fastpath.vxlan import VX_DROP_NAMES

include "counters.pxi"
include "core.pxi"
include "policy.pxi"
include "limits.pxi"
include "neigh.pxi"
include "vlan.pxi"
include "decide.pxi"
include "output.pxi"
include "tunnel.pxi"
include "switch.pxi"
include "pause.pxi"
include "forward.pxi"
include "engine_poll.pxi"
include "engine_uring_ring.pxi"
include "engine_uring.pxi"
include "control.pxi"
include "handin.pxi"


IO_MODES = ("poll", "uring")
PEER_FLAG = <uint32_t>OUT_PEER


cdef class Datapath:
    """The switch's data plane. All methods but run() are for the control plane."""
    cdef sw_t *sw
    cdef bint uring
    cdef bint running
    cdef bint ran
    cdef bint locked               # sw.lock was initialised

    def __cinit__(self, uint32_t max_ports=1024, uint32_t mac_table_size=65536, double mac_aging_s=300.0,
                  uint32_t max_networks=4096, uint32_t max_peers=1024, uint32_t busy_poll_us=0,
                  str io_mode="poll", uint32_t ring_buffers=UR_BUFS, uint32_t batch_wait_us=0, gro_udp=None,
                  uint32_t neigh_table_size=4096, uint32_t busy_poll_bulk_hold_us=0):
        cdef uint32_t i
        cdef int err = 0
        cdef sw_t *sw
        if io_mode not in IO_MODES:
            raise ValueError(f"io_mode {io_mode!r} is not one of {', '.join(IO_MODES)}")
        if io_mode == "uring":
            reason = uring_unavailable()
            if reason is not None:
                raise OSError(reason)  # the reason alone: the control plane words the refusal
        if ring_buffers < 1 or ring_buffers > 32768 or ring_buffers & (ring_buffers - 1):
            raise ValueError("ring_buffers must be a power of two in [1, 32768]")
        if max_ports < 1 or max_ports >= OUT_PEER:
            raise ValueError(f"max_ports must be in [1, {<uint32_t>OUT_PEER - 1}]")
        if max_networks < 1 or max_networks > VNI_SLOTS // 2:
            raise ValueError(f"max_networks must be in [1, {VNI_SLOTS // 2}]")
        if max_peers < 1 or max_peers >= OUT_PEER:
            raise ValueError("max_peers is out of range")
        if neigh_table_size < 1 or neigh_table_size > (1 << 24):
            raise ValueError("neigh_table_size must be in [1, 16777216]")
        if mac_aging_s <= 0:
            raise ValueError("mac_aging_s must be positive")
        if batch_wait_us >= 1000000:
            raise ValueError("batch_wait_us must be below 1000000")
        self.uring = io_mode == "uring"
        self.sw = sw = <sw_t *>calloc(1, sizeof(sw_t))
        if sw == NULL:
            raise MemoryError("cannot allocate the datapath")
        sw.stop_efd = sw.notify_efd = -1
        sw.tun.rx_fd = sw.tun.tx_fd = -1
        mt_init(&sw.mt, mac_table_size, <int64_t>(mac_aging_s * 1000), int.from_bytes(os.urandom(8), "little"),
                max_ports, max_peers)
        # Visit the whole slot array about once per aging period.
        sw.sweep_budget = <uint32_t>max(64, (sw.mt.mask + 1) * SWEEP_INTERVAL_MS // max(1, sw.mt.aging_ms) + 1)
        sw.spin.busy_ns = <int64_t>busy_poll_us * 1000
        sw.spin.hold_ns = <int64_t>busy_poll_bulk_hold_us * 1000
        sw.max_ports = max_ports
        sw.max_networks = max_networks
        sw.ports = <port_t *>calloc(max_ports, sizeof(port_t))
        sw.policy = <port_policy *>calloc(max_ports, sizeof(port_policy))
        sw.limits = <port_limits *>calloc(max_ports, sizeof(port_limits))
        sw.pctr = <uint64_t *>calloc(<size_t>max_ports * PC_COUNT, sizeof(uint64_t))
        sw.net_head = <int32_t *>malloc((max_networks + 1) * sizeof(int32_t))
        sw.vlan.trunks = <trunk_t **>calloc(max_ports, sizeof(trunk_t *))
        sw.vlan.trunk_head = -1
        if (not (sw.ports and sw.policy and sw.limits and sw.pctr and sw.net_head and sw.vlan.trunks)
                or neigh_init(&sw.neigh, neigh_table_size, int.from_bytes(os.urandom(8), "little")) < 0
                or tun_init(&sw.tun, max_peers, max_networks) < 0
                or out_init(&sw.out, kernel_takes_udp_superframes() if gro_udp is None else bool(gro_udp)) < 0):
            raise MemoryError("cannot allocate the datapath tables")
        for i in range(max_networks + 1):
            sw.net_head[i] = -1
        pthread_mutex_init(&sw.lock, NULL)
        self.locked = True
        sw.stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        sw.notify_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if sw.stop_efd < 0 or sw.notify_efd < 0:
            raise OSError(errno, "cannot create the datapath's eventfds")
        if self.uring:
            sw.engine = ur_new(sw, &sw.eng, ring_buffers, <int64_t>batch_wait_us * 1000, &err)
            if sw.engine == NULL:
                raise OSError(err, f"cannot set up the io_uring datapath: {os.strerror(err)}")
        else:
            sw.engine = poll_new(sw, &sw.eng, &err)
            if sw.engine == NULL:
                raise OSError(err, f"cannot set up the datapath's epoll: {os.strerror(err)}")

    def __dealloc__(self):
        cdef sw_t *sw = self.sw
        cdef uint32_t i
        if sw == NULL:
            return
        if sw.engine != NULL:
            sw.eng.free(sw.engine)
        for fd in (sw.stop_efd, sw.notify_efd):
            if fd >= 0:
                close(fd)
        if self.locked:
            pthread_mutex_destroy(&sw.lock)
        mt_free(&sw.mt)
        neigh_free(&sw.neigh)
        if sw.vlan.trunks != NULL:
            for i in range(sw.max_ports):
                free(sw.vlan.trunks[i])
            free(sw.vlan.trunks)
        free(sw.ports)
        free(sw.policy)
        free(sw.limits)
        free(sw.pctr)
        free(sw.net_head)
        tun_free(&sw.tun)
        out_free(&sw.out)
        free(sw)

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> None:
        """Forward frames until stop() is called. Blocks; call it from a thread.
        Returns only after stop(); a loop that ends otherwise raises OSError."""
        cdef int err
        if self.running:
            raise RuntimeError("the datapath loop is already running")
        if self.uring and self.ran:
            raise RuntimeError("an io_uring datapath runs once (its ring is bound to the thread that ran it)")
        self.running = self.ran = True
        try:
            with nogil:
                err = self.sw.eng.run(self.sw.engine)
        finally:
            self.running = False
        if err:
            # An injected failure is named as one, so a log never blames the wait for a test's doing.
            if self.sw.inject_err:
                what = "injected failure"
            else:
                what = (<bytes>self.sw.fail_what).decode() if self.sw.fail_what != NULL else "the loop"
            self.sw.inject_err = 0
            raise OSError(err, f"datapath loop failed: {what}: {os.strerror(err)}")

    @property
    def io_mode(self) -> str:
        return "uring" if self.uring else "poll"

    def stop(self) -> None:
        """Ask run() to return after the batch in hand."""
        cdef uint64_t one = 1
        write(self.sw.stop_efd, &one, sizeof(one))

    @property
    def last_turn_ns(self) -> int:
        """CLOCK_MONOTONIC ns at the start of the loop's latest turn (0: never
        ran). It turns at least every SWEEP_INTERVAL_MS, idle or not."""
        return self.sw.last_turn_ns

    def inject_failure(self, int err) -> None:
        """Make the loop end at its next turn as if its wait had failed with
        errno err: run() then raises OSError(err, ...). For tests."""
        if err <= 0:
            raise ValueError("err must be a positive errno")
        self.sw.inject_err = err

    @property
    def notify_fd(self) -> int:
        """Readable when a port went down by itself (its fd failed)."""
        return self.sw.notify_efd

    # ---- ports -----------------------------------------------------------------------

    def add_port(self, int fd, uint16_t network, uint32_t mtu=1500, bint vnet_hdr=False, trunk=None,
                 uint16_t native=0) -> int:
        """Attach an fd that keeps frame boundaries (a TAP, a socketpair end) to
        `network` (1..max_networks); returns the port index. The fd is made
        non-blocking and stays owned by the caller. A trunk port (trunk:
        {network: VID}, native: the network of its untagged frames, 0: none)
        is given network 0: its frames' tags say theirs (vlan.pxi)."""
        cdef sw_t *sw = self.sw
        cdef uint32_t idx
        cdef int rc = 0
        cdef trunk_t *t = NULL
        if trunk is not None and network != 0:
            raise ValueError("a trunk port is in no one network: give network 0")
        if trunk is None and (network < 1 or network > sw.max_networks):
            raise ValueError(f"network id {network} is out of range [1, {sw.max_networks}]")
        if mtu < 68 or mtu > FRAME_ROOM - 18:
            raise ValueError(f"MTU {mtu} is out of range [68, {FRAME_ROOM - 18}]")
        os.set_blocking(fd, False)
        if trunk is not None:
            t = trunk_table(sw, trunk, native)
        # All under the lock happens without the GIL: a thread holding the lock while it
        # waits for the GIL (up to the 5 ms switch interval) would stall the loop as long.
        with nogil:
            pthread_mutex_lock(&sw.lock)
            rc = sw_add_port(sw, fd, network, mtu, vnet_hdr, t, &idx)
            pthread_mutex_unlock(&sw.lock)
        if rc != 0:
            free(t)
        if rc < 0:
            raise OverflowError(f"all {sw.max_ports} ports are in use")
        if rc > 0:
            raise OSError(rc, f"epoll_ctl(ADD) of fd {fd} failed: {os.strerror(rc)}")
        return idx

    def set_trunk(self, uint32_t idx, dict trunk, uint16_t native=0) -> None:
        """Change what trunk port idx carries (as add_port takes it). Its FDB
        entries in networks it no longer carries are forgotten."""
        cdef sw_t *sw = self.sw
        cdef trunk_t *t
        cdef trunk_t *old = NULL
        cdef bint ok
        cdef uint32_t net
        self._check_index(idx)
        t = trunk_table(self.sw, trunk, native)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            ok = sw.ports[idx].state != PORT_FREE and sw.ports[idx].trunk
            if ok:
                old = vlan_set_trunk(sw, idx, t)
                for net in range(1, sw.max_networks + 1):
                    if old.net_vid[net] and not t.net_vid[net]:
                        mt_flush(&sw.mt, <uint16_t>net, idx, True)
            pthread_mutex_unlock(&sw.lock)
        free(old if ok else t)
        if not ok:
            raise LookupError(f"port index {idx} is not a trunk port")

    def port_trunk(self, uint32_t idx):
        """({network: VID}, native) of a trunk port, None for an access port."""
        self._check_index(idx)
        return trunk_of(self.sw, idx)

    def remove_port(self, uint32_t idx) -> None:
        """Detach a port and forget every FDB entry (learned or static) that names it.
        The caller closes the fd afterwards. In io_uring mode it returns once
        the loop no longer holds the file (or after 2 s)."""
        cdef sw_t *sw = self.sw
        cdef uint64_t ticket = 0
        self._check_index(idx)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            if sw.ports[idx].state != PORT_FREE:
                ticket = sw.eng.port_down(sw.engine, idx, False)
                sw_remove_port(sw, idx)
            pthread_mutex_unlock(&sw.lock)
        deadline = time.monotonic() + 2.0
        while ticket and not sw.eng.released(sw.engine, ticket) and time.monotonic() < deadline:
            time.sleep(0.0002)

    def _check_index(self, uint32_t idx) -> None:
        if idx >= self.sw.max_ports:
            raise IndexError(f"port index {idx} is out of range")

    def port_state(self, uint32_t idx) -> str:
        self._check_index(idx)
        return PORT_STATES[self.sw.ports[idx].state]

    def dead_ports(self) -> list:
        """Indices of ports whose fd failed; clears the notify_fd signal."""
        cdef uint64_t drain
        read(self.sw.notify_efd, &drain, sizeof(drain))
        return [i for i in range(self.sw.max_ports) if self.sw.ports[i].state == PORT_DEAD]

    def port_counters(self, uint32_t idx) -> dict:
        self._check_index(idx)
        cdef uint64_t *c = &self.sw.pctr[<size_t>idx * PC_COUNT]
        out = {name: c[i] for i, name in enumerate(PORT_COUNTER_NAMES)}
        out["drops"] = {DROP_NAMES[r]: c[PC_DROPS + r] for r in range(1, DROP_REASONS)}
        out["capture_dropped"] = c[PC_CAPTURE_DROPS]
        return out

    def set_port_policy(self, uint32_t idx, bint security=False, bint router=False, bint dhcp_server=False,
                        macs=(), ips=()) -> None:
        """Set port idx's policy (policy.pxi): with `security`, its frames must
        come from one of `macs` and, for each IP family it has addresses of in
        `ips`, from one of those; router / dhcp_server lift the RA / DHCP guard."""
        cdef sw_t *sw = self.sw
        cdef port_policy pol
        cdef bint free_slot
        self._check_index(idx)
        policy_from(&pol, security, router, dhcp_server, macs, ips)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            free_slot = sw.ports[idx].state == PORT_FREE
            if not free_slot:
                sw.policy[idx] = pol
            pthread_mutex_unlock(&sw.lock)
        if free_slot:
            raise LookupError(f"port index {idx} is not in use")

    def set_port_limits(self, uint32_t idx, uint32_t max_macs=0, storm_broadcast=0, storm_multicast=0,
                        storm_unknown_unicast=0, rate_bytes=0, burst_bytes=0, rate_fps=0, rx=True,
                        tx=True, at_ms=None) -> None:
        """Set port idx's limits (limits.pxi; 0 is no limit): at most max_macs
        learned MACs; storm_* floods a second of each kind (a burst of a tenth
        of a second, at least one frame); a policer of rate_bytes bytes/s with
        a burst of burst_bytes and of rate_fps frames/s (a burst of a tenth of
        a second) on its frames in (rx: from the port) and out (tx). Buckets
        start full, at the loop's clock now (at_ms: then, for tests that give
        decide() its time); a change takes effect between two batches, and a
        port paused by its storm buckets (pause.pxi) is read again at once."""
        cdef sw_t *sw = self.sw
        cdef port_limits lim
        cdef bint free_slot
        self._check_index(idx)
        limits_from(&lim, (int(storm_broadcast), int(storm_multicast), int(storm_unknown_unicast)), int(rate_bytes),
                    int(burst_bytes), int(rate_fps), rx, tx, now_ms() if at_ms is None else at_ms)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            free_slot = sw.ports[idx].state == PORT_FREE
            if not free_slot:
                sw_resume(sw, idx, False)  # new buckets start full: a paused port is read again at once
                sw.limits[idx] = lim
                mt_set_limit(&sw.mt, idx, max_macs)
            pthread_mutex_unlock(&sw.lock)
        if free_slot:
            raise LookupError(f"port index {idx} is not in use")

    def port_paused(self, uint32_t idx) -> bool:
        """Whether the loop has stopped reading port idx for now: its storm buckets are dry (pause.pxi)."""
        self._check_index(idx)
        return self.sw.limits[idx].resume_ms != 0

    def port_buckets(self, uint32_t idx, at_ms=None) -> dict:
        """What is left in port idx's buckets now (or at the loop's clock at_ms), in units
        (bytes or frames; below 0: a debt), by name; buckets without a rate are absent."""
        cdef port_limits lim
        cdef int64_t now
        cdef int64_t given = -1 if at_ms is None else at_ms
        self._check_index(idx)
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            lim = self.sw.limits[idx]
            now = max(now_ms(), self.sw.lim_now) if given < 0 else given
            pthread_mutex_unlock(&self.sw.lock)
        return bucket_levels(&lim, now)

    def port_macs(self, uint32_t idx) -> tuple:
        """(learned MACs port idx holds, its max_macs; 0: no limit)."""
        self._check_index(idx)
        cdef uint32_t oi = mt_oi(&self.sw.mt, idx)
        return self.sw.mt.outs[oi].count, self.sw.mt.outs[oi].limit

    def fdb_pin(self, uint16_t network, mac, uint32_t idx) -> None:
        """Pin a port's own MAC to it: a static entry that no frame from
        elsewhere (another port, a tunnel peer) moves; such a frame is dropped."""
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef int rc
        if m[0] & 1:
            raise ValueError("a pinned entry needs a unicast MAC")
        self._check_index(idx)
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            rc = mt_pin(&self.sw.mt, mac_key(network, mp), idx, now_ms())
            pthread_mutex_unlock(&self.sw.lock)
        if rc < 0:
            raise OverflowError(f"the MAC table is full ({self.sw.mt.capacity} entries)")

    def set_capture(self, uint32_t idx, int fd, bint rx, bint tx) -> None:
        """Mirror the port's received and/or sent frames to fd (a datagram
        socket: one CAP_HDR-led record per message); fd -1 stops it."""
        cdef sw_t *sw = self.sw
        self._check_index(idx)
        if fd >= 0:
            os.set_blocking(fd, False)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            if sw.ports[idx].state == PORT_FREE:
                fd = -2
            else:
                sw.ports[idx].cap_fd = fd
                sw.ports[idx].cap_dir = 0 if fd < 0 else ((CAP_IN if rx else 0) | (CAP_OUT if tx else 0))
            pthread_mutex_unlock(&sw.lock)
        if fd == -2:
            raise LookupError(f"port index {idx} is not in use")

    def loop_stats(self) -> dict:
        cdef uint64_t *s = self.sw.stats
        out = {name: s[i] for i, name in enumerate(LOOP_COUNTER_NAMES) if i != LS_SWEPT}
        out["batch_histogram"] = list(zip(HIST_BOUNDS + (None,), [s[LS_HIST + b] for b in range(HIST_BUCKETS)]))
        out["offload"] = {name: s[LS_OFFLOAD + i] for i, name in enumerate(OFFLOAD_COUNTER_NAMES)}
        out["offload"]["gso_errors"] = {GSO_ERROR_NAMES[e]: s[LS_GSO_ERRORS + e] for e in range(1, GSO_ERRORS)}
        out["running"] = bool(self.running)
        out["io_mode"] = self.io_mode
        cdef uring_engine *u = <uring_engine *>self.sw.engine if self.uring else NULL
        out["uring"] = {name: (u.ustats[i] if u != NULL else 0) for i, name in enumerate(URING_COUNTER_NAMES)}
        return out

    # ---- VXLAN -----------------------------------------------------------------------

    def set_vtep(self, int rx_fd, int tx_fd, uint16_t port, uint16_t sport_lo, uint16_t sport_hi,
                 uint32_t underlay_mtu) -> None:
        """Start terminating VXLAN: rx_fd is a UDP socket bound to the VTEP
        address and port; tx_fd a raw IPPROTO_RAW socket bound to the same
        address (vtep_tx_socket makes one), so each packet can carry its own
        UDP source port. Both stay owned by the caller."""
        cdef sw_t *sw = self.sw
        cdef int rc = 0
        if not 0 < sport_lo <= sport_hi:
            raise ValueError("the UDP source port range is empty")
        if underlay_mtu < 576 or underlay_mtu > 65535:
            raise ValueError("underlay MTU out of range")
        if sw.tun.rx_fd >= 0:
            raise RuntimeError("the VTEP is already set")
        os.set_blocking(rx_fd, False)
        os.set_blocking(tx_fd, False)
        with nogil:
            pthread_mutex_lock(&sw.lock)
            sw.tun.port = port
            sw.tun.sport_lo = sport_lo
            sw.tun.sport_hi = sport_hi
            sw.tun.max_frame = underlay_mtu - VXLAN_IP_OVERHEAD
            rc = sw.eng.tunnel_up(sw.engine, rx_fd)
            if rc == 0:
                sw.tun.rx_fd = rx_fd
                sw.tun.tx_fd = tx_fd
            pthread_mutex_unlock(&sw.lock)
        if rc:
            raise OSError(rc, f"epoll_ctl(ADD) of the VXLAN socket failed: {os.strerror(rc)}")

    def set_udp_gso_sockets(self, list socks) -> None:
        """[(fd, source port)] of UDP sockets bound to the VTEP address, for
        sending super-frames with UDP_SEGMENT (the caller checked the kernel
        has it). Flows then take their outer source port from these ports."""
        cdef sw_t *sw = self.sw
        cdef uint32_t i, n = len(socks)
        cdef int fds[GSO_SOCKETS]
        cdef uint16_t ports[GSO_SOCKETS]
        if n > GSO_SOCKETS:
            raise ValueError(f"at most {GSO_SOCKETS} UDP GSO sockets")
        for i, (fd, port) in enumerate(socks):
            drop_all_input(fd)  # send-only: nothing may pile up in their queues
            os.set_blocking(fd, False)
            fds[i], ports[i] = fd, port
        with nogil:
            pthread_mutex_lock(&sw.lock)
            for i in range(n):
                sw.tun.gso_fds[i] = fds[i]
                sw.tun.gso_ports[i] = ports[i]
            sw.tun.n_gso = n
            pthread_mutex_unlock(&sw.lock)

    def set_network_vni(self, uint16_t network, uint32_t vni) -> None:
        """Bind a network to a VNI (0 unbinds it)."""
        cdef sw_t *sw = self.sw
        if network < 1 or network > sw.max_networks:
            raise ValueError(f"network id {network} is out of range")
        if vni > 0xFFFFFF:
            raise ValueError(f"VNI {vni} is out of range")
        with nogil:
            pthread_mutex_lock(&sw.lock)
            sw.tun.net_vni[network] = vni
            tun_map_vnis(&sw.tun, sw.max_networks)
            pthread_mutex_unlock(&sw.lock)

    def add_peer(self, uint16_t network, str remote) -> int:
        """Add a remote VTEP (IPv4) to a network; returns the peer index."""
        cdef tunnel_t *t = &self.sw.tun
        cdef int32_t peer
        cdef uint32_t addr = int.from_bytes(ipaddress.IPv4Address(remote).packed, "little")
        if network < 1 or network > self.sw.max_networks:
            raise ValueError(f"network id {network} is out of range")
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            peer = tun_add_peer(t, network, addr)
            pthread_mutex_unlock(&self.sw.lock)
        if peer < 0:
            raise OverflowError(f"all {t.max_peers} peers are in use")
        return peer

    def remove_peer(self, uint32_t idx) -> int:
        """Remove a peer and the MACs learned behind it; returns how many."""
        cdef tunnel_t *t = &self.sw.tun
        cdef uint32_t flushed = 0
        if idx >= t.max_peers:
            raise IndexError(f"peer index {idx} is out of range")
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            if t.peers[idx].used:
                tun_remove_peer(t, idx)
                flushed = mt_flush(&self.sw.mt, 0, OUT_PEER | idx, True)
            pthread_mutex_unlock(&self.sw.lock)
        return flushed

    def peer_counters(self, uint32_t idx) -> dict:
        if idx >= self.sw.tun.max_peers:
            raise IndexError(f"peer index {idx} is out of range")
        cdef uint64_t *c = &self.sw.tun.pectr[<size_t>idx * PE_COUNT]
        return {name: c[i] for i, name in enumerate(PEER_COUNTER_NAMES)}

    def vxlan_drops(self) -> dict:
        return {VX_DROP_NAMES[r]: self.sw.tun.drops[r] for r in range(1, VX_DROPS)}

    # ---- events ----------------------------------------------------------------------

    def events(self, uint64_t since) -> tuple:
        """(events after sequence number `since`, next since, events lost to
        overwriting). Each event is (kind, network, mac or None, a, b) with
        kind one of EVENT_KINDS."""
        return copy_events(self.sw, since)

    # ---- FDB -------------------------------------------------------------------------

    @property
    def mac_table_size(self) -> int:
        return self.sw.mt.capacity

    def fdb_counters(self) -> dict:
        return {
            "entries": self.sw.mt.count,
            "capacity": self.sw.mt.capacity,
            "learned": self.sw.mt.learned,
            "moved": self.sw.mt.moved,
            "aged": self.sw.mt.aged,
            "refused": self.sw.mt.refused,
            "evicted": self.sw.mt.evicted,
            "limited": self.sw.mt.limited,
        }

    def fdb_entries(self, uint16_t network=0, out=None) -> list:
        """[(network, mac, out, static, age_s)] of live entries, filtered by
        network (0: all) and output."""
        return copy_fdb(self.sw, network, OUT_NONE if out is None else out)

    def fdb_lookup(self, uint16_t network, mac):
        """(out, static, age_s) of a live entry, or None. Does not refresh or age it."""
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef mac_entry *e
        cdef mac_entry found
        cdef int64_t now
        cdef bint live
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            now = now_ms()
            e = mt_peek(&self.sw.mt, mac_key(network, mp))
            live = e != NULL and not mt_expired(&self.sw.mt, e, now)
            if live:
                found = e[0]
            pthread_mutex_unlock(&self.sw.lock)
        if not live:
            return None
        return (found.out, bool(found.flags & MT_STATIC), (now - found.last_seen_ms) / 1000.0)

    def fdb_flush(self, uint16_t network=0, out=None, bint with_static=False) -> int:
        cdef uint32_t o = OUT_NONE if out is None else out
        cdef uint32_t n
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            n = mt_flush(&self.sw.mt, network, o, with_static)
            pthread_mutex_unlock(&self.sw.lock)
        return n

    def fdb_set_static(self, uint16_t network, mac, uint32_t out) -> None:
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef int rc
        if m[0] & 1:
            raise ValueError("a static entry needs a unicast MAC")
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            rc = mt_set_static(&self.sw.mt, mac_key(network, mp), out, now_ms())
            pthread_mutex_unlock(&self.sw.lock)
        if rc < 0:
            raise OverflowError(f"the MAC table is full ({self.sw.mt.capacity} entries)")

    def fdb_delete(self, uint16_t network, mac) -> bool:
        cdef bytes m = parse_mac(mac)
        cdef const uint8_t *mp = m
        cdef bint found
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            found = mt_delete(&self.sw.mt, mac_key(network, mp))
            pthread_mutex_unlock(&self.sw.lock)
        return found

    # ---- neighbours (ARP and ND suppression) -----------------------------------------

    @property
    def neigh_table_size(self) -> int:
        return self.sw.neigh.capacity

    def neigh_set(self, uint16_t network, ip, mac) -> None:
        """Answer ARP requests (IPv4) or neighbour solicitations (IPv6) for ip
        in network with mac, from now on. OverflowError when the table is full."""
        family, packed = neigh_key(self.sw, network, ip)
        cdef bytes m = parse_mac(mac)
        cdef bytes a = packed
        cdef const uint8_t *mp = m
        cdef const uint8_t *ap = a
        cdef uint8_t fam = family
        cdef int rc
        if m[0] & 1 or m == bytes(6):
            raise ValueError(f"{mac} is not a unicast MAC")
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            rc = neigh_set(&self.sw.neigh, network, fam, ap, mp)
            pthread_mutex_unlock(&self.sw.lock)
        if rc < 0:
            raise OverflowError(f"the neighbour table is full ({self.sw.neigh.capacity} entries)")

    def neigh_delete(self, uint16_t network, ip) -> bool:
        family, packed = neigh_key(self.sw, network, ip)
        cdef bytes a = packed
        cdef const uint8_t *ap = a
        cdef uint8_t fam = family
        cdef bint found
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            found = neigh_delete(&self.sw.neigh, network, fam, ap)
            pthread_mutex_unlock(&self.sw.lock)
        return found

    def neigh_entries(self) -> list:
        """[(network, ip, mac)] of every address the switch answers for."""
        return copy_neigh(self.sw)

    # ---- frames handed in (tests and fuzzing; never the loop's path) ------------------

    def forward(self, uint32_t in_port, list frames) -> None:
        """Run `frames` through the loop's local ingress (forward_batch: the
        virtio-net header check, the decision, output, GRO and GSO) as one batch
        read from port in_port, in the calling thread. Each is bytes as read
        from the port: led by its virtio-net header on a vnet port. Only while
        run() is not running."""
        self._check_index(in_port)
        if self.running:
            raise RuntimeError("frames are handed in only while the loop is not running")
        if self.sw.ports[in_port].state != PORT_UP:
            raise LookupError(f"port index {in_port} is not up")
        handin_frames(self.sw, in_port, frames)

    def receive(self, from_addr, list datagrams) -> list:
        """Run VXLAN datagrams (the VXLAN header first, as the tunnel socket
        reads them) from IPv4 address from_addr through the tunnel's receive
        path (tun_decap: header, VNI and peer checks, the decision, output
        and GRO), in the calling thread; returns each one's vx_drop name
        ("ok": decided). Only while run() is not running."""
        if self.running:
            raise RuntimeError("datagrams are handed in only while the loop is not running")
        addr = int.from_bytes(ipaddress.IPv4Address(from_addr).packed, "little")
        return [VX_DROP_NAMES[r] for r in handin_datagrams(self.sw, addr, datagrams)]

    def poll_tunnel(self) -> int:
        """Run the loop's tunnel receive (tun_rx: one recvmmsg of up to a
        batch of datagrams, UDP GRO split, decapsulation, decision, output
        and GRO) once in the calling thread; returns how many messages were
        read. For tests and profiling, only while run() is not running."""
        cdef sw_t *sw = self.sw
        cdef int n
        if self.running:
            raise RuntimeError("the tunnel is polled by hand only while the loop is not running")
        if sw.tun.rx_fd < 0:
            raise RuntimeError("the VTEP is not set")
        with nogil:
            pthread_mutex_lock(&sw.lock)
            n = tun_rx(sw, now_ms())
            pthread_mutex_unlock(&sw.lock)
        return n

    # ---- the decision, asked ---------------------------------------------------------

    def decide(self, bytes frame, in_port=None, from_addr=None, uint32_t vni=0, bint dry_run=True,
               at_ms=None) -> dict:
        """The loop's decision, now, for `frame` entering by port index in_port,
        or arriving in a VXLAN datagram for `vni` from IPv4 address from_addr.

        dry_run (trace) changes nothing: learning is predicted, no entry ages
        out. Otherwise the source is learned as the loop learns it (tests).
        at_ms is the loop's clock to decide by (tests that model time), else now.
        Returns {"verdict": drop|port|peer|flood, "reason", "network",
        "learn": an mt_result name or None, "was": the source entry's output
        before, "lookup": None (not looked up) | {"hit": False} | {"hit":
        True, "out", "static", "age_s"}, "ports": [...], "peers": [...]},
        ports and peers being the indices that get a copy. An "answer"
        (an ARP request or neighbour solicitation the switch replies to
        itself, out of in_port) also has "answer": {"kind": "arp"|"nd", "mac"}."""
        if (in_port is None) == (from_addr is None):
            raise ValueError("give in_port or from_addr, not both")
        cdef int64_t at = -1 if at_ms is None else at_ms
        if in_port is not None:
            self._check_index(in_port)
            return decision_asked(self.sw, frame, False, in_port, 0, dry_run, at)
        addr = int.from_bytes(ipaddress.IPv4Address(from_addr).packed, "little")
        return decision_asked(self.sw, b"\x08\0\0\0" + vni.to_bytes(3, "big") + b"\0" + frame, True, 0, addr,
                              dry_run, at)
