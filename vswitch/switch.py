"""The switch: the control plane's single owner of networks, ports, peers and the FDB.

Every public method is thread-safe (API handler threads call them
concurrently), validates its input before touching anything, and either
applies the whole change or raises and changes nothing:

- InvalidArgument (HTTP 400): a malformed value
- NotFound (404): an unknown network, port, peer or entry
- Conflict (409): a duplicate name, a network still in use, ...

After each successful change the switch calls ``on_change(desired_state)`` so
that the daemon can persist it. The switch never touches a frame: it changes
the datapath's tables and reads its counters.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import select
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from fastpath import PEER_FLAG, Datapath, vtep_tx_socket

from .capture import Capture
from .eventlog import EventLog
from .liveness import LoopRunner
from .errors import ConfigError, Conflict, InvalidArgument, NotFound
from .masquerade import Masquerade, subnets_of
from .model import (MAX_PEERS, DesiredState, NetworkSpec, PeerSpec, PortSpec, PortUpdate, StaticFdbSpec, SwitchSettings,
                    check_ip, check_mac, check_name, peer_problem)
from .neighframes import arp_request, neighbour_solicitation
from .netns import netns_identity, netns_path, resolve_netns
from .portpolicy import datapath_sources
from .tap import TSO_OFFLOADS, TapPort, open_tap, reconfigure_tap
from .usage import UsageMeter

log = logging.getLogger("vswitch.switch")

UDP_GSO_SOCKETS = 16
UDP_SEGMENT = 103  # <netinet/udp.h>, not in the socket module
UDP_GRO = 104
SO_SNDBUFFORCE = 32  # <asm/socket.h>, not in the socket module
# What each tunnel socket may have in flight. A packet for a peer whose
# underlay address is still being resolved (ARP) waits in the neighbour's
# queue, charged to the socket that sent it, up to unres_qlen_bytes (208 KiB
# by default) per peer for up to 3 s. With the default send buffer, of
# about that size, two unreachable peers (one, under steady floods) made the
# socket refuse its sends to every other peer meanwhile; this room holds the
# queues of 20 such peers.
TUNNEL_SNDBUF = 4 << 20
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 (RFC 7348)
DEFAULT_MTU = 1500
NETNS_CHECK_INTERVAL_S = 0.5
USAGE_INTERVAL_S = 1.0  # how often port counters are sampled for port show's rates
# Where a host port's interface lives: vswitchd's own namespace (the main thread's,
# whichever thread opens it).
HOST_NETNS = "/proc/self/ns/net"


def _networks_text(spec: PortSpec) -> str:
    """'network blue', or 'trunk blue:10 red:20, native green' for a trunk port."""
    if not spec.is_trunk:
        return f"network {spec.network!r}"
    tagged = " ".join(f"{net}:{vid}" for net, vid in spec.trunk)
    return f"trunk {tagged}" + (f", native {spec.native}" if spec.native is not None else ", no native network")


def _where(out: dict[str, Any]) -> str:
    """'port c1' or 'peer 192.0.2.2' for an output as _describe_out gives it."""
    return f"port {out['port']}" if "port" in out else f"peer {out['peer']}"


# What trace says of a frame refused for its tags (fastpath/vlan.pxi).
VLAN_DROPS = {
    "vlan_tagged": "802.1Q tag {vlan} on an access port",
    "vlan_unknown": "802.1Q tag {vlan}: trunk port {port} carries no network with that VLAN ID",
    "vlan_untagged": "untagged on trunk port {port}, which has no native network",
    "vlan_stacked": "stacked tags (QinQ) are refused",
}

# What trace says of a frame the port policy refused (fastpath/policy.pxi).
POLICY_DROPS = {
    "spoofed_mac": "the source MAC is not the port's",
    "spoofed_ip": "the IP source is not the port's",
    "spoofed_arp": "the ARP sender is not the port's",
    "spoofed_nd": "a neighbor discovery target or link-layer option is not the port's",
    "ra_guard": "router advertisements are not the port's to send",
    "dhcp_guard": "DHCP server replies are not the port's to send",
}


@dataclass
class _Network:
    spec: NetworkSpec
    id: int


@dataclass
class _Port:
    spec: PortSpec
    tap: TapPort
    index: int
    mtu: int
    netns_path: str
    netns_id: tuple[int, int] | None
    capture: Capture | None = None


class Switch:
    def __init__(self, settings: SwitchSettings, on_change: Callable[[DesiredState], None] | None = None,
                 tap_mark: str | None = None, before_tap: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._on_change = on_change
        self.tap_mark = tap_mark  # the alias every TAP this switch makes carries (orphans.py)
        self._before_tap = before_tap  # told each namespace path before a TAP is made there
        self._lock = threading.RLock()
        self._dp = self._make_datapath(settings.io_mode)
        self._networks: dict[str, _Network] = {}
        self._free_net_ids = list(range(4096, 0, -1))
        self._ports: dict[str, _Port] = {}
        self._peers: dict[PeerSpec, int] = {}  # -> datapath peer index
        self._vxlan_sockets: list[socket.socket] = []
        self._static: dict[tuple[str, str], StaticFdbSpec] = {}
        self._loop: LoopRunner | None = None
        # What a cluster agent derived from etcd: live, never persisted (a restart rebuilds it from etcd).
        self._derived_peers: set[PeerSpec] = set()
        self._derived_macs: dict[tuple[str, str], str] = {}  # (network, mac) -> remote VTEP
        # (network, ip) -> (network id, mac): the addresses the datapath answers ARP and ND for
        self._neighbours: dict[tuple[str, str], tuple[int, str]] = {}
        # Asked before a network with a VNI is added through the API, e.g. to claim it cluster-wide.
        self.network_guard: Callable[[NetworkSpec], None] | None = None
        self.cluster: Any = None  # the ClusterAgent when this switch is a cluster node (API, metrics)
        self._watch_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.usage = UsageMeter()
        self._usage_at = 0.0
        self._wake_r, self._wake_w = os.pipe()  # wakes the port watcher at stop
        self._events = EventLog(self._out_name)
        self._event_seq = 0
        self._masquerade = Masquerade()
        self._batch_depth = 0  # > 0: inside batch(), changes are saved once at its end
        self._batch_changed = False

    def _make_datapath(self, requested: str) -> Datapath:
        """The datapath in the io_mode setting's I/O mode. auto takes io_uring
        where the kernel, this process and the ring's set-up allow it (the
        kernel may lack it, a seccomp profile block it, a fixed-file table of
        max_ports exceed RLIMIT_NOFILE), else poll, saying why once; an
        explicit uring that cannot work is a ConfigError naming why."""
        def make(io_mode: str) -> Datapath:
            return Datapath(
                max_ports=self.settings.max_ports,
                max_peers=MAX_PEERS,
                mac_table_size=self.settings.mac_table_size,
                mac_aging_s=float(self.settings.mac_aging_s),
                busy_poll_us=self.settings.busy_poll_us,
                busy_poll_bulk_hold_us=self.settings.busy_poll_bulk_hold_us,
                batch_wait_us=self.settings.batch_wait_us,
                io_mode=io_mode,
            )

        if requested == "poll":
            return make("poll")
        try:
            return make("uring")
        except OSError as e:
            if requested == "uring":
                raise ConfigError(f"io_mode 'uring': the io_uring datapath is unavailable here: {e}") from None
            log.info("io_uring datapath unavailable (%s); using poll", e)
            return make("poll")

    @property
    def io_mode(self) -> str:
        """How the forwarding loop does its I/O: "uring" or "poll" (auto resolved)."""
        return self._dp.io_mode

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, on_loop_exit: Callable[[str | None], None] | None = None) -> None:
        """Open the VTEP (if configured), start the forwarding loop and the port watcher.

        ``on_loop_exit(error)`` is called when the loop ends: error is None
        after stop(), else why it failed (the switch then forwards nothing).
        """
        log.info("datapath I/O mode: %s", self.io_mode)
        if self.settings.vtep_ip is not None:
            self._open_vtep()
        self._loop = LoopRunner(self._dp, on_exit=on_loop_exit)
        self._loop.start()
        self._watch_thread = threading.Thread(target=self._watch_ports, name="port-watch", daemon=True)
        self._watch_thread.start()

    def stop(self) -> None:
        """Stop forwarding and close the TAP fds. The interfaces stay in their
        namespaces (they are persistent) for the next vswitchd to re-attach."""
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._dp.stop()
        if self._loop is not None:
            self._loop.join(timeout=5)
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        self._events.flush()  # what a window still held back
        with self._lock:
            for port in self._ports.values():
                self._dp.remove_port(port.index)
                port.tap.close()
            self._ports.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for sock in self._vxlan_sockets:
            sock.close()

    @property
    def loop(self) -> LoopRunner:
        """The forwarding loop's runner: its health, progress and CPU time (after start())."""
        if self._loop is None:
            raise RuntimeError("the switch has not been started")
        return self._loop

    def inject_loop_failure(self, err: int) -> None:
        """Test hook: make the forwarding loop fail with errno `err` at its next turn."""
        self._dp.inject_failure(err)

    def _open_vtep(self) -> None:
        s = self.settings
        where = f"{s.vtep_ip}:{s.vxlan_port}"
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._vxlan_sockets = [rx]
        try:
            # Bursts of head-end-replicated floods arrive together: give the
            # receive queue room (FORCE works as root, past rmem_max).
            rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            rx.bind((s.vtep_ip, s.vxlan_port))
            try:
                # The kernel may then hand over runs of one flow's datagrams
                # at once (the loop splits them): fewer trips per datagram.
                rx.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            except OSError as e:
                log.info("no UDP GRO on the VXLAN socket: %s", e.strerror)
            tx = vtep_tx_socket(s.vtep_ip)
            self._vxlan_sockets.append(tx)
            tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, TUNNEL_SNDBUF)
            self._dp.set_vtep(rx.fileno(), tx.fileno(), s.vxlan_port, s.vxlan_src_port_min,
                              s.vxlan_src_port_max, s.underlay_mtu)
        except OSError as e:
            raise ConfigError(f"cannot open the VXLAN endpoint on {where}: {e.strerror or e}") from None
        gso = self._open_udp_gso_sockets()
        log.info("VXLAN endpoint on %s, source ports %s, underlay MTU %d, %s",
                 where, f"{s.vxlan_src_port_min}-{s.vxlan_src_port_max}" if not gso else
                 f"{len(gso)} of {s.vxlan_src_port_min}-{s.vxlan_src_port_max}", s.underlay_mtu,
                 "super-frames sent with UDP_SEGMENT" if gso else "no UDP_SEGMENT: segments sent with sendmmsg")

    def _open_udp_gso_sockets(self) -> list[socket.socket]:
        """UDP sockets on spread-out source ports, from which super-frames leave
        as UDP_SEGMENT trains: the kernel cuts them late, in one pass through
        the stack. A flow's outer source port is then one of these ports, so
        all of its packets keep one path. Ports already taken are skipped."""
        s = self.settings
        span = s.vxlan_src_port_max - s.vxlan_src_port_min + 1
        n = min(UDP_GSO_SOCKETS, span)
        socks = []
        for i in range(n):
            port = s.vxlan_src_port_min + i * span // n
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                # Fails where the kernel lacks it. These datagrams carry a UDP
                # checksum (the kernel refuses UDP_SEGMENT without one); RFC
                # 7348 lets a receiver take either.
                sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0)
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, TUNNEL_SNDBUF)
                sock.bind((s.vtep_ip, port))
            except OSError as e:
                log.debug("no UDP GSO socket on port %d: %s", port, e)
                sock.close()
                continue
            socks.append(sock)
        if socks:
            self._dp.set_udp_gso_sockets([(sock.fileno(), sock.getsockname()[1]) for sock in socks])
            self._vxlan_sockets += socks
        return socks

    def apply(self, state: DesiredState, *, strict: bool = True) -> None:
        """Build the switch from a desired state (config or state file).

        Any error aborts, except that when not strict (restoring saved state)
        a port whose namespace has gone while vswitchd was down is skipped
        with a warning: the container it belonged to no longer exists.
        """
        with self._lock:
            for net in state.networks:
                self._add_network(net)
            for port in state.ports:
                if not strict and port.netns is not None and netns_identity(netns_path(port.netns)) is None:
                    log.warning("port %s not restored: netns %s is gone", port.name, port.netns)
                    continue
                self._add_port(port)
            for peer in state.peers:
                self._add_peer(peer)
            for entry in state.static_fdb:
                if not strict and entry.port is not None and entry.port not in self._ports:
                    log.warning("static entry %s not restored: port %s is gone", entry.mac, entry.port)
                    continue
                if not strict and entry.peer is not None and PeerSpec(entry.network, entry.peer) not in self._peers:
                    # e.g. a peer the cluster had derived: it is not saved, and comes back from etcd.
                    log.warning("static entry %s not restored: %s is not a peer of network %s",
                                entry.mac, entry.peer, entry.network)
                    continue
                self._fdb_add(entry)
        self._changed()

    def desired_state(self) -> DesiredState:
        with self._lock:
            return DesiredState(
                networks=[n.spec for n in self._networks.values()],
                ports=[p.spec for p in self._ports.values()],
                peers=[p for p in self._peers if p not in self._derived_peers],
                static_fdb=list(self._static.values()),
            )

    def _changed(self) -> None:
        if self._batch_depth:
            self._batch_changed = True
            return
        if self._on_change is not None:
            self._on_change(self.desired_state())

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the switch for a series of changes (no other client's change comes between
        them) and save the desired state once, at the end: also when one of them failed,
        so that what was done is saved."""
        with self._lock:
            self._batch_depth += 1
            try:
                yield
            except BaseException:
                self._batch_depth -= 1
                self._save_after_failed_batch()
                raise
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._batch_changed:
                self._batch_changed = False
                self._changed()

    def _save_after_failed_batch(self) -> None:
        if self._batch_depth == 0 and self._batch_changed:
            self._batch_changed = False
            try:
                self._changed()
            except Exception as e:  # the batch's own error is the one to report
                log.error("saving the state after a failed change: %s", e)

    # ---- networks --------------------------------------------------------------------

    def add_network(self, spec: NetworkSpec) -> dict[str, Any]:
        with self._lock:
            # Asked under the lock, so that the cluster's copy of the network it claims cannot
            # be added behind its back; a name taken here is refused below without asking.
            if self.network_guard is not None and spec.vni is not None and spec.name not in self._networks:
                self.network_guard(spec)
            self._add_network(spec)
            self._changed()
            return self._network_view(self._networks[spec.name])

    def _add_network(self, spec: NetworkSpec) -> None:
        if spec.name in self._networks:
            raise Conflict(f"network {spec.name!r} already exists")
        if spec.vni is not None:
            for other in self._networks.values():
                if other.spec.vni == spec.vni:
                    raise Conflict(f"VNI {spec.vni} is already used by network {other.spec.name!r}")
        if not self._free_net_ids:
            raise Conflict("no network ids left")
        net = _Network(spec, self._free_net_ids.pop())
        if spec.vni is not None:
            self._dp.set_network_vni(net.id, spec.vni)
        self._networks[spec.name] = net
        log.info("network %s added (vni %s)", spec.name, spec.vni)

    def del_network(self, name: str) -> None:
        with self._lock:
            net = self._network(name)
            users = sorted(p.spec.name for p in self._ports.values() if name in p.spec.networks)
            if users:
                raise Conflict(f"network {name!r} still has ports: {', '.join(users)}")
            peers = [p.remote for p in self._peers if p.network == name]
            if peers:
                raise Conflict(f"network {name!r} still has peers: {', '.join(peers)}")
            self._dp.fdb_flush(net.id, None, True)
            if net.spec.vni is not None:
                self._dp.set_network_vni(net.id, 0)
            del self._networks[name]
            self._free_net_ids.append(net.id)
            log.info("network %s deleted", name)
            self._changed()

    def list_networks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._network_view(n) for n in self._networks.values()]

    def get_network(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._network_view(self._network(name))

    def _network(self, name: str) -> _Network:
        net = self._networks.get(name)
        if net is None:
            raise NotFound(f"network {name!r} does not exist")
        return net

    def _network_view(self, net: _Network) -> dict[str, Any]:
        return {
            "name": net.spec.name,
            "vni": net.spec.vni,
            "ports": sorted(p.spec.name for p in self._ports.values() if net.spec.name in p.spec.networks),
            "peers": [p.remote for p in self._peers if p.network == net.spec.name],
        }

    # ---- ports -------------------------------------------------------------------------

    def add_port(self, spec: PortSpec) -> dict[str, Any]:
        with self._lock:
            self._add_port(spec)
            self._changed()
            return self._port_view(self._ports[spec.name])

    def _default_mtu(self, nets: list[_Network]) -> int:
        if any(net.spec.vni is not None for net in nets):
            return self.settings.underlay_mtu - VXLAN_OVERHEAD
        return DEFAULT_MTU

    def _attach(self, fd: int, spec: PortSpec, mtu: int) -> int:
        """Register a port's fd with the datapath: in its network, or as a trunk port."""
        if not spec.is_trunk:
            return self._dp.add_port(fd, self._networks[spec.network].id, mtu, self.settings.offloads)  # type: ignore[index]
        return self._dp.add_port(fd, 0, mtu, self.settings.offloads, **self._trunk_ids(spec.trunk, spec.native))

    def _trunk_ids(self, trunk: tuple[tuple[str, int], ...], native: str | None) -> dict[str, Any]:
        """A trunk as the datapath takes it: network ids for names."""
        return {"trunk": {self._networks[net].id: vid for net, vid in trunk},
                "native": 0 if native is None else self._networks[native].id}

    def _add_port(self, spec: PortSpec) -> None:
        if spec.name in self._ports:
            raise Conflict(f"port {spec.name!r} already exists")
        nets = [self._network(name) for name in spec.networks]
        path = HOST_NETNS if spec.host else resolve_netns(spec.netns or "", "netns")
        where = "vswitchd's namespace" if spec.host else f"netns {spec.netns}"
        for other in self._ports.values():
            if other.netns_path == path and other.spec.ifname == spec.ifname:
                raise Conflict(f"port {other.spec.name!r} already uses {spec.ifname} in {where}")
        mtu = spec.mtu or self._default_mtu(nets)
        vnet = self.settings.offloads
        # TSO super-frames cross between local ports as they are, and are
        # cut into segments in the loop when bound for a VXLAN peer.
        offloads = TSO_OFFLOADS if vnet else 0
        if self._before_tap is not None:
            self._before_tap(path)
        tap = open_tap(path, spec.ifname, mac=spec.mac, ips=spec.ips, mtu=mtu, vnet_hdr=vnet, offloads=offloads,
                       routes=[(r.dst, r.gw) for r in spec.routes], alias=self.tap_mark)
        try:
            index = self._attach(tap.fd, spec, mtu)
        except Exception as e:
            tap.destroy() if tap.created else tap.close()
            raise Conflict(f"port {spec.name!r} cannot be attached: {e}") from e
        port = _Port(spec, tap, index, mtu, path, netns_identity(path))
        self._ports[spec.name] = port
        try:
            self._apply_policy(port, pin=True)
        except Exception:
            self._drop_port(port, destroy=tap.created)
            raise
        if spec.masquerade:
            try:
                self._sync_masquerade()
            except Exception:
                self._drop_port(port, destroy=tap.created)
                raise
        log.info(
            "port %s %s: %s in %s, %s, mtu %d",
            spec.name, "created" if tap.created else "re-attached", spec.ifname, where, _networks_text(spec), mtu,
        )

    def _apply_policy(self, port: _Port, *, pin: bool) -> None:
        """Give the datapath the port's policy and, with pin, pin its own MAC to
        it: known at once (never flooded to others), never moved by a frame from
        elsewhere."""
        pol = port.spec.policy
        assert pol is not None
        macs, ips = datapath_sources(port.spec, port.tap.mac)
        try:
            self._dp.set_port_policy(port.index, pol.port_security, pol.router, pol.dhcp_server, macs, ips)
            self._dp.set_port_limits(port.index, pol.max_macs, pol.storm_broadcast, pol.storm_multicast,
                                     pol.storm_unknown_unicast, int(pol.rate_mbit * 1e6 / 8),
                                     pol.burst_bytes if pol.rate_mbit else 0, pol.rate_fps)
        except ValueError as e:
            raise InvalidArgument(f"port {port.spec.name!r}: {e}") from e
        if pin:
            self._pin(port, port.spec.networks)

    def _pin(self, port: _Port, networks: tuple[str, ...]) -> None:
        """Pin the port's own MAC to it in each of these networks (a trunk port's MAC is its in each)."""
        for name in networks:
            try:
                self._dp.fdb_pin(self._networks[name].id, port.tap.mac, port.index)
            except OverflowError as e:  # learned like any MAC, then
                log.warning("port %s: its MAC could not be pinned in network %s: %s", port.spec.name, name, e)

    def _sync_masquerade(self) -> None:
        self._masquerade.sync({p.spec.name: subnets_of(p.spec.ips) for p in self._ports.values() if p.spec.masquerade})

    def set_port(self, name: str, update: PortUpdate) -> dict[str, Any]:
        """Change a port's addresses, routes or MTU in place: its interface, MAC and
        namespace stay. A new MTU re-registers the same TAP fd with the datapath, so the
        port's learned FDB entries and counters start afresh (static entries are kept)."""
        with self._lock:
            port = self._port(name)
            old = port.spec
            ips = old.ips if update.ips is None else update.ips
            routes = old.routes if update.routes is None else update.routes
            trunk, native = old.trunk, old.native
            if update.changes_trunk:
                if not old.is_trunk:
                    raise Conflict(f"port {name!r} is an access port: delete and add it again to make it a trunk port")
                trunk, native = update.trunk_over(old)
                for net in [native, *dict(trunk)]:
                    if net is not None:
                        self._network(net)
            new = dataclasses.replace(old, ip=None, ips=ips, routes=routes,
                                      mtu=old.mtu if update.mtu is None else update.mtu,
                                      policy=update.policy_over(old), trunk=trunk, native=native)
            if new.masquerade and not subnets_of(new.ips):
                raise InvalidArgument(f"port {name!r} masquerades: it needs an IPv4 address")
            mtu_changes = update.mtu is not None and update.mtu != port.mtu
            if mtu_changes and port.capture is not None:
                raise Conflict(f"port {name!r} is being captured: stop the capture before changing its MTU")
            reconfigure_tap(port.netns_path, old.ifname, old_ips=old.ips, new_ips=new.ips,
                            old_routes=[(r.dst, r.gw) for r in old.routes],
                            new_routes=[(r.dst, r.gw) for r in new.routes],
                            mtu=update.mtu if mtu_changes else None)
            port.spec = new
            if mtu_changes:
                self._reattach(port, update.mtu)  # type: ignore[arg-type]
            else:
                if update.changes_trunk:
                    self._retrunk(port, old)
                self._apply_policy(port, pin=False)
            if new.masquerade:
                self._sync_masquerade()
            log.info("port %s changed: ips %s, %d routes, mtu %d, %s", name, list(new.ips) or "none", len(new.routes),
                     port.mtu, _networks_text(new))
            self._changed()
            return self._port_view(port)

    def _retrunk(self, port: _Port, old: PortSpec) -> None:
        """Give the datapath a trunk port's new networks (port.spec): the networks it leaves
        forget its entries, static ones included; in those it joins its MAC is pinned."""
        self._dp.set_trunk(port.index, **self._trunk_ids(port.spec.trunk, port.spec.native))
        for key in [k for k, e in self._static.items() if e.port == port.spec.name and k[0] not in port.spec.networks]:
            del self._static[key]
        self._pin(port, tuple(n for n in port.spec.networks if n not in old.networks))

    def _reattach(self, port: _Port, mtu: int) -> None:
        """The same TAP fd registered again under a new MTU (the datapath fixes a port's MTU when added)."""
        self._dp.remove_port(port.index)
        port.index = self._attach(port.tap.fd, port.spec, mtu)
        port.mtu = mtu
        self._apply_policy(port, pin=True)
        for entry in self._static.values():
            if entry.port == port.spec.name:
                self._dp.fdb_set_static(self._networks[entry.network].id, entry.mac, port.index)

    def del_port(self, name: str) -> None:
        with self._lock:
            port = self._port(name)
            self._drop_port(port, destroy=True)
            log.info("port %s deleted", name)
            self._changed()

    def _drop_port(self, port: _Port, *, destroy: bool) -> None:
        # The datapath forgets the port and its capture first: closed before, the capture
        # socket's number could go to a new connection while the loop still mirrors into it.
        self._dp.remove_port(port.index)
        if port.capture is not None:
            port.capture.detach()
            port.capture = None
        for key in [k for k, e in self._static.items() if e.port == port.spec.name]:
            del self._static[key]
        del self._ports[port.spec.name]
        try:
            port.tap.destroy() if destroy else port.tap.close()
        except OSError as e:  # the interface may already be gone with its namespace
            log.debug("closing port %s: %s", port.spec.name, e)
            port.tap.close()
        if port.spec.masquerade:
            try:
                self._sync_masquerade()
            except Conflict as e:  # the port is gone all the same; its rule stays until the next change
                log.warning("port %s removed, but its masquerade rule could not be: %s", port.spec.name, e)

    def list_ports(self, network: str | None = None, label: tuple[str, str | None] | None = None) -> list[dict[str, Any]]:
        """All ports, or those in `network` and/or carrying label (key, value; None: any value)."""
        with self._lock:
            if network is not None:
                self._network(network)
            ports = [p for p in self._ports.values() if network is None or network in p.spec.networks]
            if label is not None:
                key, value = label
                ports = [p for p in ports if key in p.spec.label_map and value in (None, p.spec.label_map[key])]
            return [self._port_view(p) for p in ports]

    def get_port(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._port_view(self._port(name))

    def _port(self, name: str) -> _Port:
        port = self._ports.get(name)
        if port is None:
            raise NotFound(f"port {name!r} does not exist")
        return port

    def _port_view(self, port: _Port) -> dict[str, Any]:
        s = port.spec
        return {
            "name": s.name,
            "network": s.network,
            "trunk": dict(s.trunk) if s.is_trunk else None,
            "native": s.native,
            "netns": s.netns,
            "ifname": s.ifname,
            "mac": port.tap.mac,
            "ip": s.ip,
            "mtu": port.mtu,
            "index": port.index,
            "state": self._dp.port_state(port.index),
            "counters": self._dp.port_counters(port.index),
            "ips": list(s.ips),
            "routes": [r.to_dict() for r in s.routes],
            "labels": s.label_map,
            "host": s.host,
            "masquerade": s.masquerade,
            "policy": s.policy.view(),  # type: ignore[union-attr]
            "macs": self._dp.port_macs(port.index)[0],
            "usage": self.usage.view(s.name),
        }

    def _watch_ports(self) -> None:
        """Drop ports whose interface or namespace went away under us.

        A TAP fd opened inside a namespace pins it, so `ip netns del` alone
        would leave the namespace (and the interface) alive for as long as we
        hold the fd: the namespace file vanishing is the signal to let go.
        An interface deleted from inside the container shows as a failed fd.
        """
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._dp.notify_fd, self._wake_r], [], [], NETNS_CHECK_INTERVAL_S)
            if self._stopping.is_set():
                break
            dead = set(self._dp.dead_ports()) if ready else set()
            with self._lock:
                # Re-checked under the lock: a dead port deleted meanwhile may have handed
                # its index to a new, healthy one.
                dead = {idx for idx in dead if self._dp.port_state(idx) == "dead"}
                gone = [
                    p for p in self._ports.values()
                    if p.index in dead or netns_identity(p.netns_path) != p.netns_id
                ]
                for port in gone:
                    why = "its interface went away" if port.index in dead else f"netns {port.spec.netns} is gone"
                    log.warning("port %s down and removed: %s", port.spec.name, why)
                    self._drop_port(port, destroy=False)
                if gone:
                    self._changed()
            self._log_events()
            self._sample_usage()

    def _sample_usage(self) -> None:
        """Every port's counters, about once a second, for the rates port show gives."""
        now = time.monotonic()
        if now - self._usage_at < USAGE_INTERVAL_S:
            return
        self._usage_at = now
        with self._lock:
            counters = {name: self._dp.port_counters(p.index) for name, p in self._ports.items()}
        self.usage.sample(counters, now)

    def _log_events(self) -> None:
        events, self._event_seq, lost = self._dp.events(self._event_seq)
        self._events.lost(lost)
        with self._lock:
            names = {n.id: n.spec.name for n in self._networks.values()}
        for kind, net_id, mac, a, b in events:
            self._events.record(kind, names.get(net_id), mac, a, b)
        self._events.tick()

    def _out_name(self, out: int) -> str:
        with self._lock:
            return _where(self._describe_out(out))

    # ---- peers -------------------------------------------------------------------------

    def add_peer(self, spec: PeerSpec) -> dict[str, Any]:
        with self._lock:
            self._add_peer(spec)
            self._changed()
            return spec.to_dict()

    def _add_peer(self, spec: PeerSpec) -> None:
        net = self._network(spec.network)
        why = peer_problem(spec, net.spec, self.settings.vtep_ip)
        if why:
            raise InvalidArgument(why)
        if spec in self._peers:
            raise Conflict(f"peer {spec.remote} is already in network {spec.network!r}")
        try:
            self._peers[spec] = self._dp.add_peer(net.id, spec.remote)
        except OverflowError as e:  # all MAX_PEERS in use
            raise Conflict(str(e)) from None
        log.info("peer %s added to network %s", spec.remote, spec.network)

    def del_peer(self, spec: PeerSpec) -> None:
        with self._lock:
            idx = self._peers.pop(spec, None)
            if idx is None:
                raise NotFound(f"peer {spec.remote} is not in network {spec.network!r}")
            flushed = self._dp.remove_peer(idx)
            self._forget_peer(spec)
            log.info("peer %s removed from network %s (%d MACs flushed)", spec.remote, spec.network, flushed)
            self._changed()

    def _forget_peer(self, spec: PeerSpec) -> None:
        """Drop the static entries that pointed at a removed peer: the datapath flushed them with it."""
        for key in [k for k, e in self._static.items() if e.network == spec.network and e.peer == spec.remote]:
            del self._static[key]
        for key in [k for k, r in self._derived_macs.items() if k[0] == spec.network and r == spec.remote]:
            del self._derived_macs[key]
        self._derived_peers.discard(spec)

    def list_peers(self, network: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if network is not None:
                self._network(network)
            return [self._peer_view(p, i) for p, i in self._peers.items() if network is None or p.network == network]

    def _peer_view(self, spec: PeerSpec, idx: int) -> dict[str, Any]:
        return {**spec.to_dict(), "counters": self._dp.peer_counters(idx)}

    # ---- FDB ---------------------------------------------------------------------------

    def fdb_list(self, network: str | None = None, port: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            net_id = self._network(network).id if network is not None else 0
            out = self._port(port).index if port is not None else None
            names = {n.id: n.spec.name for n in self._networks.values()}
            ports = {p.index: p.spec.name for p in self._ports.values()}
            peers = {PEER_FLAG | i: p.remote for p, i in self._peers.items()}
            # A port's own MAC, pinned to it when it was made: static in the table, but not the operator's.
            pins = {(self._networks[n].id, p.tap.mac.lower(), p.index) for p in self._ports.values() for n in p.spec.networks}
        entries = []
        for nid, mac, o, static, age in self._dp.fdb_entries(net_id, out):
            if nid not in names:
                continue
            pinned = static and (nid, mac, o) in pins
            entries.append({
                "network": names[nid],
                "mac": mac,
                "port": ports.get(o),
                "peer": peers.get(o),
                "static": static and not pinned,
                "pinned": pinned,
                "age_s": None if static else round(age, 3),
            })
        entries.sort(key=lambda e: (e["network"], e["mac"]))
        return entries

    def fdb_flush(self, network: str | None = None, port: str | None = None) -> int:
        """Forget learned entries (static ones stay); returns how many."""
        with self._lock:
            net_id = self._network(network).id if network is not None else 0
            out = self._port(port).index if port is not None else None
            return self._dp.fdb_flush(net_id, out, False)

    def fdb_add(self, spec: StaticFdbSpec) -> dict[str, Any]:
        with self._lock:
            self._fdb_add(spec)
            self._changed()
            return spec.to_dict()

    def _fdb_add(self, spec: StaticFdbSpec) -> None:
        net = self._network(spec.network)
        if spec.peer is not None:
            # A peer's output is its index with PEER_FLAG, as learned remote entries hold it.
            peer_idx = self._peers.get(PeerSpec(spec.network, spec.peer))
            if peer_idx is None:
                raise NotFound(f"peer {spec.peer} is not in network {spec.network!r}")
            out = PEER_FLAG | peer_idx
        else:
            port = self._port(spec.port)
            if spec.network not in port.spec.networks:
                raise InvalidArgument(f"port {spec.port!r} is in {_networks_text(port.spec)}, not {spec.network!r}")
            out = port.index
        if (spec.network, spec.mac) in self._static:
            raise Conflict(f"a static entry for {spec.mac} in network {spec.network!r} already exists")
        try:
            self._dp.fdb_set_static(net.id, spec.mac, out)
        except OverflowError as e:
            raise Conflict(str(e)) from None
        self._static[(spec.network, spec.mac)] = spec

    def fdb_del(self, network: str, mac: str) -> None:
        check_name("network", network)
        mac = check_mac("mac", mac)
        with self._lock:
            net = self._network(network)
            static = self._static.pop((network, mac), None)
            self._derived_macs.pop((network, mac), None)
            if not self._dp.fdb_delete(net.id, mac) and static is None:
                raise NotFound(f"no FDB entry for {mac} in network {network!r}")
            if static is not None:
                self._changed()

    # ---- cluster -----------------------------------------------------------------------

    def cluster_add_network(self, spec: NetworkSpec) -> bool:
        """Add a network the cluster defines unless a local one has its name or VNI; True if added."""
        with self._lock:
            if spec.name in self._networks or any(n.spec.vni == spec.vni for n in self._networks.values()):
                return False
            self._add_network(spec)
            self._changed()
            return True

    def cluster_reconcile(self, peers: set[PeerSpec], macs: dict[tuple[str, str], str]) -> dict[str, int]:
        """Make the cluster's peers and remote MAC entries ((network, mac) -> remote VTEP) exactly
        these. Entries that stay the same are not touched, so their traffic never sees a gap; a
        local port's MAC and an operator's static entry win over the cluster's. Returns counts."""
        counts = {"peers_added": 0, "peers_removed": 0, "macs_set": 0, "macs_removed": 0}
        with self._lock:
            for spec in peers:
                net = self._networks.get(spec.network)
                if spec in self._peers or net is None:
                    continue
                why = peer_problem(spec, net.spec, self.settings.vtep_ip)
                if why:
                    log.warning("cluster peer %s in network %s not added: %s", spec.remote, spec.network, why)
                    continue
                try:
                    self._peers[spec] = self._dp.add_peer(net.id, spec.remote)
                except OverflowError as e:
                    log.warning("cluster peer %s in network %s not added: %s", spec.remote, spec.network, e)
                    continue
                self._derived_peers.add(spec)
                counts["peers_added"] += 1
                log.info("cluster: peer %s added to network %s", spec.remote, spec.network)
            local = {(n, p.tap.mac) for p in self._ports.values() for n in p.spec.networks}
            wanted = {k: r for k, r in macs.items()
                      if k not in local and k not in self._static and PeerSpec(k[0], r) in self._peers}
            for (network, mac), remote in wanted.items():
                if self._derived_macs.get((network, mac)) == remote:
                    continue
                try:
                    self._dp.fdb_set_static(self._networks[network].id, mac,
                                            PEER_FLAG | self._peers[PeerSpec(network, remote)])
                except OverflowError as e:
                    log.warning("cluster: %s in network %s not installed: %s", mac, network, e)
                    continue
                self._derived_macs[(network, mac)] = remote
                counts["macs_set"] += 1
            for key in [k for k in self._derived_macs if k not in wanted]:
                del self._derived_macs[key]
                if key not in self._static and key[0] in self._networks:
                    self._dp.fdb_delete(self._networks[key[0]].id, key[1])
                counts["macs_removed"] += 1
            for spec in [p for p in self._derived_peers if p not in peers]:
                idx = self._peers.pop(spec)
                self._dp.remove_peer(idx)
                self._forget_peer(spec)
                counts["peers_removed"] += 1
                log.info("cluster: peer %s removed from network %s", spec.remote, spec.network)
        return counts

    def cluster_neighbours(self, wanted: dict[tuple[str, str], str]) -> dict[str, int]:
        """Make the addresses the datapath answers ARP requests and neighbour solicitations for
        exactly `wanted` ((network, ip) -> mac). Unchanged entries are not touched. Returns counts."""
        counts = {"neighbours_set": 0, "neighbours_removed": 0}
        with self._lock:
            want = {(net, ip): (self._networks[net].id, mac) for (net, ip), mac in wanted.items()
                    if net in self._networks}
            for key in [k for k, v in self._neighbours.items() if want.get(k) != v]:
                self._dp.neigh_delete(self._neighbours.pop(key)[0], key[1])
                if key not in want:
                    counts["neighbours_removed"] += 1
            for key, (nid, mac) in want.items():
                if key in self._neighbours:
                    continue
                try:
                    self._dp.neigh_set(nid, key[1], mac)
                except (OverflowError, ValueError) as e:
                    log.warning("cluster: neighbour %s in network %s not installed: %s", key[1], key[0], e)
                    continue
                self._neighbours[key] = (nid, mac)
                counts["neighbours_set"] += 1
        return counts

    def neighbours_answered(self) -> dict[str, int]:
        """ARP requests and neighbour solicitations the datapath answered itself, over every port."""
        with self._lock:
            counters = [self._dp.port_counters(p.index) for p in self._ports.values()]
        return {k: sum(c[k] for c in counters) for k in ("arp_suppressed", "nd_suppressed")}

    def cluster_counts(self) -> dict[str, int]:
        with self._lock:
            return {"peers": len(self._derived_peers), "remote_macs": len(self._derived_macs),
                    "neighbours": len(self._neighbours)}

    # ---- capture -----------------------------------------------------------------------

    def start_capture(self, name: str, direction: str = "both") -> Capture:
        """Mirror a port's frames; the caller reads Capture.records() and closes it."""
        if direction not in ("in", "out", "both"):
            raise InvalidArgument(f"direction: {direction!r} is not one of in, out, both")
        with self._lock:
            port = self._port(name)
            if port.capture is not None:
                raise Conflict(f"port {name!r} is already being captured")

            def stop() -> None:
                with self._lock:
                    if port.capture is not None and self._ports.get(name) is port:
                        self._dp.set_capture(port.index, -1, False, False)
                        log.info("capture stopped on port %s (%d frames read, %d dropped on this port so far)",
                                 name, port.capture.frames, self._dp.port_counters(port.index)["capture_dropped"])
                    port.capture = None

            port.capture = Capture(lambda fd, rx, tx: self._dp.set_capture(port.index, fd, rx, tx), stop, direction)
            log.info("capture started on port %s (%s)", name, direction)
            return port.capture

    def port_interfaces(self) -> set[tuple[tuple[int, int] | None, str]]:
        """(namespace identity, interface name) of every port's TAP."""
        with self._lock:
            return {(p.netns_id, p.spec.ifname) for p in self._ports.values()}

    def has_port(self, name: str) -> bool:
        with self._lock:
            return name in self._ports

    # ---- trace -------------------------------------------------------------------------

    def trace(self, in_port: str | None, dst: str | None, src: str | None = None, vlan: int | None = None,
              from_peer: str | None = None, network: str | None = None, resolve: str | None = None) -> dict[str, Any]:
        """What the switch would do right now with a frame for dst entering by in_port, or
        arriving from the VXLAN peer from_peer with its network's VNI, and why. With resolve
        (an IP), the frame is the port's ARP request (IPv4) or neighbour solicitation (IPv6)
        for it, sent from the port's own address of that family, and dst is implied.

        The datapath's own forwarding decision answers, asked without side effects:
        nothing is learned or aged by asking. The frame's size is not considered.
        """
        target = None
        if resolve is not None:
            target = ipaddress.ip_address(check_ip("resolve", resolve))
            if in_port is None or vlan is not None:
                raise InvalidArgument("resolve: asked from a port (in_port), untagged")
            if dst is not None:
                raise InvalidArgument("dst: implied by resolve (broadcast, or the solicited-node group)")
            dst = "ff:ff:ff:ff:ff:ff" if target.version == 4 else "33:33:ff:" + target.packed[13:].hex(":")
        elif dst is None:
            raise InvalidArgument("trace: missing required key 'dst' (or give resolve)")
        dst = check_mac("dst", dst, unicast=False)
        src_mac = None if src is None else check_mac("src", src, unicast=False)
        if vlan is not None and (isinstance(vlan, bool) or not isinstance(vlan, int) or not 0 <= vlan <= 4095):
            raise InvalidArgument(f"vlan: {vlan!r} is not a VLAN ID (0-4095)")
        if (in_port is None) == (from_peer is None):
            raise InvalidArgument("give either in_port or from_peer")
        if from_peer is not None and src_mac is None:
            raise InvalidArgument("src: required with from_peer (a peer has no MAC of its own)")
        with self._lock:
            net: _Network | None
            if in_port is not None:
                port = self._port(in_port)
                net = None if port.spec.is_trunk else self._networks[port.spec.network]  # type: ignore[index]
                src_mac = src_mac or port.tap.mac
                ingress, asked = f"port {in_port}", {"in_port": port.index}
            else:
                peer = self._trace_peer(check_ip("from_peer", from_peer),
                                        None if network is None else check_name("network", network))
                net, from_peer = self._networks[peer.network], peer.remote
                ingress, asked = f"peer {peer.remote}", {"from_addr": peer.remote, "vni": net.spec.vni}
            tag = b"" if vlan is None else b"\x81\x00" + vlan.to_bytes(2, "big")
            # An L2 question: the IEEE local experimental ethertype, which port policy reads no further than its
            # source MAC (an empty IPv4 packet would be refused as unverifiable).
            frame = bytes.fromhex(dst.replace(":", "") + src_mac.replace(":", "")) + tag + b"\x88\xb5"
            if target is not None:
                own = ipaddress.ip_interface(port.spec.ip).ip if port.spec.ip else None
                sender = own if own is not None and own.version == target.version else None
                mac_bytes = bytes.fromhex(src_mac.replace(":", ""))
                frame = (arp_request(mac_bytes, sender, target) if target.version == 4
                         else neighbour_solicitation(mac_bytes, sender, target))
            d = self._dp.decide(frame, **asked)
            names = {"ports": {p.index: name for name, p in self._ports.items()},
                     "peers": {i: spec.remote for spec, i in self._peers.items()}}
            learned = None if d["was"] is None else self._describe_out(d["was"])
            hit = None if not (d["lookup"] or {}).get("hit") else self._describe_out(d["lookup"]["out"])
            if net is None:  # a trunk port's frame: its tag said which network (or none)
                net = next((n for n in self._networks.values() if n.id == d["network"]), None)
            # The tag each output port puts on the frame: trunk ports carry the network tagged.
            tags = {name: vid for name, p in self._ports.items() if p.index in d["ports"] and p.spec.is_trunk
                    and net is not None and (vid := dict(p.spec.trunk).get(net.spec.name)) is not None}
        vni = "" if net is None or net.spec.vni is None else f", VNI {net.spec.vni}"
        tag_text = "" if vlan is None else f"802.1Q tag {vlan}: " if vlan else "priority tag (VLAN 0): "
        result: dict[str, Any] = {
            "in_port": in_port, "from_peer": from_peer, "network": None if net is None else net.spec.name,
            "vni": None if net is None else net.spec.vni, "src": src_mac,
            "dst": dst, "vlan": vlan, "learn": None, "lookup": None, "action": "drop", "reason": d["reason"],
            "outputs": {"ports": sorted(names["ports"][i] for i in d["ports"]),
                        "peers": [r for i, r in names["peers"].items() if i in d["peers"]]},
            "tags": tags,  # output port -> the 802.1Q tag it puts on the frame (trunk ports)
            "steps": [f"frame {src_mac} -> {dst} " + (f"enters {ingress}" if in_port is not None else f"arrives from {ingress}")
                      + (f" ({tag_text}network {net.spec.name}{vni})" if net is not None else f" ({tag_text.rstrip(': ') or 'untagged'})")],
        }
        steps = result["steps"]
        if d["learn"] is None:  # dropped before learning: the frame's own header
            if d["reason"] in VLAN_DROPS:
                steps.append(VLAN_DROPS[d["reason"]].format(vlan=vlan, port=in_port))
            elif d["reason"] == "inner_malformed":
                steps.append("the inner frame fails the port checks" + (f" (802.1Q tag {vlan})" if vlan is not None else ""))
            elif d["reason"] in POLICY_DROPS:
                steps.append(f"port policy of {ingress}: {POLICY_DROPS[d['reason']]}")
            steps.append(f"drop: {d['reason']}")
            return result
        result["learn"] = self._trace_learn(d["learn"], ingress, learned)
        steps.append(f"learn: {result['learn']['result']}")
        if d["learn"] == "pinned_kept":
            steps.append(f"drop: {d['reason']}")
            return result
        if target is not None:
            what = "ARP request" if target.version == 4 else "neighbour solicitation"
            result["resolve"] = str(target)
            steps.append(f"{what} for {target}" + ("" if sender else " with no sender address (an announcement)"))
        if d["verdict"] == "answer":
            result["action"] = "answer"
            result["answer"] = d["answer"]
            steps.append(f"{target} is {d['answer']['mac']} in the neighbour table: answered locally "
                         f"({'ARP reply' if d['answer']['kind'] == 'arp' else 'neighbour advertisement'} "
                         f"back out of port {in_port}), not flooded")
            return result
        if d["lookup"] is None:
            steps.append("destination is broadcast/multicast: flood")
        elif not d["lookup"]["hit"]:
            result["lookup"] = {"hit": False}
            steps.append("destination unknown in the FDB: flood")
        else:
            static, age = d["lookup"]["static"], d["lookup"]["age_s"]
            result["lookup"] = {"hit": True, "static": static, "age_s": None if static else round(age, 3), **hit}
            steps.append(f"FDB hit: {dst} -> {_where(hit)} ({'static' if static else f'learned {age:.1f}s ago'})")
            if d["verdict"] == "flood":
                steps.append(f"{_where(hit)} is not up: flood")
            elif d["reason"] == "split_horizon":
                steps.append("a frame from the tunnel never goes back into it (split horizon)")
            elif d["verdict"] != "drop":
                steps.append(f"output: {_where(hit)}" + (f" (802.1Q tag {tags[hit['port']]})" if hit.get("port") in tags else ""))
        if d["verdict"] == "drop":
            if d["reason"].startswith("storm_"):
                kind = d["reason"][len("storm_"):].replace("_", " ")
                steps.append(f"storm control of {ingress}: its {kind} floods are over their frames/s for now")
            steps.append(f"drop: {d['reason']}")
        elif d["verdict"] == "flood":
            result["action"] = "flood"
            out = result["outputs"]
            steps.append(f"flood to ports [{', '.join(p + (f' (802.1Q tag {tags[p]})' if p in tags else '') for p in out['ports'])}]"
                         + (f" and peers [{', '.join(out['peers'])}]" if out["peers"] else ""))
        else:
            result["action"] = "output"
        return result

    def _trace_peer(self, remote: str, network: str | None) -> PeerSpec:
        found = [spec for spec in self._peers if spec.remote == remote and network in (None, spec.network)]
        if not found:
            raise NotFound(f"peer {remote} is not in " + ("any network" if network is None else f"network {network!r}"))
        if len(found) > 1:
            nets = ", ".join(sorted(spec.network for spec in found))
            raise InvalidArgument(f"network: peer {remote} is in networks {nets}: say which")
        return found[0]

    @staticmethod
    def _trace_learn(learn: str, ingress: str, current: dict[str, Any] | None) -> dict[str, Any]:
        if learn == "learned":
            return {"result": f"new entry on {ingress}"}
        if learn == "refused":
            return {"result": "refused: MAC table full of static entries"}
        if learn == "limited":
            return {"result": f"not learned: {ingress} holds its max_macs", **(current or {})}
        assert current is not None  # the source has an entry: hit, moved or kept
        if learn == "hit":
            return {"result": "refresh", **current}
        if learn == "static_kept":
            return {"result": f"static entry kept on {_where(current)}", **current}
        if learn == "pinned_kept":
            return {"result": f"pinned to {_where(current)}: kept, the frame is dropped", **current}
        return {"result": f"move from {_where(current)} to {ingress}", **current}

    def _describe_out(self, out: int) -> dict[str, Any]:
        for p in self._ports.values():
            if p.index == out:
                return {"port": p.spec.name}
        for spec, idx in self._peers.items():
            if PEER_FLAG | idx == out:
                return {"peer": spec.remote}
        return {"port": None}

    # ---- counters ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ports = {p.spec.name: self._dp.port_counters(p.index) for p in self._ports.values()}
            peers = [{**p.to_dict(), **self._dp.peer_counters(i)} for p, i in self._peers.items()]
        vxlan = {
            "enabled": self.settings.vtep_ip is not None,
            "vtep_ip": self.settings.vtep_ip,
            "port": self.settings.vxlan_port,
            "drops": self._dp.vxlan_drops(),
            "peers": peers,
        }
        return {"io_mode": self.io_mode, "ports": ports, "fdb": self._dp.fdb_counters(), "loop": self._dp.loop_stats(),
                "vxlan": vxlan}
