"""TAP ports: a TAP interface inside a container's namespace, its fd held by vswitchd.

The interface is created directly in the container's namespace and made
persistent, so it outlives the daemon: a restarted vswitchd re-attaches to it
(TUNSETIFF on an existing persistent device) and the container keeps its MAC,
addresses and routes. Only destroy() removes it.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
from typing import Sequence

import pytun
from pyroute2 import IPRoute, NetlinkError

from .errors import Conflict, InvalidArgument
from .netns import netns_label, resolve_netns, run_in_netns

IFLA_TUN_TYPE_TAP = 2  # IFLA_TUN_TYPE: 1 = TUN, 2 = TAP

# <linux/if_tun.h>: pytun wraps neither ioctl.
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
# What a port takes when it may receive TSO super-frames from its container.
TSO_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
VNET_HDR_LEN = 12  # struct virtio_net_hdr_mrg_rxbuf: the layout the datapath reads


class TapPort:
    """An open TAP fd plus what the daemon needs to know about its interface."""

    def __init__(self, dev: pytun.TunTapDevice, ifname: str, ifindex: int, netns_path: str, created: bool, mac: str) -> None:
        # The pytun object owns the fd: keeping it here keeps the fd alive.
        self._dev: pytun.TunTapDevice | None = dev
        self.fd: int = dev.fileno()
        self.ifname = ifname
        self.ifindex = ifindex
        self.netns_path = netns_path
        self.created = created
        self.mac = mac

    def close(self) -> None:
        """Close the fd; the persistent interface stays for a later re-attach."""
        dev, self._dev = self._dev, None
        if dev is not None:
            self.fd = -1  # a stale fd number could be reused by anything
            dev.close()

    def destroy(self) -> None:
        """Remove the interface: clear persistence, then close (the kernel deletes it)."""
        if self._dev is not None:
            self._dev.persist(False)
        self.close()

    def __repr__(self) -> str:
        return f"TapPort({self.ifname!r} in {netns_label(self.netns_path)!r}, ifindex={self.ifindex}, fd={self.fd})"


def _link_kind(ipr: IPRoute, ifname: str) -> str | None:
    """'tap', 'tun' or another link kind ('veth', ...) of ifname here; None when absent."""
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        return None
    info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    if kind != "tun":
        return kind or "no link kind"
    data = info.get_attr("IFLA_INFO_DATA")
    tun_type = data.get_attr("IFLA_TUN_TYPE") if data else None
    # Kernels before 4.15 do not report the mode: TUNSETIFF refuses a TUN there.
    return "tun" if tun_type not in (None, IFLA_TUN_TYPE_TAP) else "tap"


Route = tuple[str, str | None]  # (destination network, gateway or None for on-link)


def _add_addresses(ipr: IPRoute, idx: int, ips: Sequence[str]) -> None:
    for ip in ips:
        iface = ipaddress.ip_interface(ip)
        family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
        present = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(family=family, index=idx)
        }
        if (str(iface.ip), iface.network.prefixlen) not in present:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def _route_args(idx: int, route: Route) -> dict[str, object]:
    dst, gw = route
    net = ipaddress.ip_network(dst)
    args: dict[str, object] = {"dst": str(net), "oif": idx,
                               "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET}
    if gw is not None:
        args["gateway"] = gw
    return args


def _add_routes(ipr: IPRoute, idx: int, routes: Sequence[Route]) -> None:
    # "replace": a route the kernel already has for dst (the subnet's own, say) is not a failure.
    for route in routes:
        ipr.route("replace", **_route_args(idx, route))


def _configure(ipr: IPRoute, idx: int, mac: str | None, ips: Sequence[str], mtu: int | None,
               routes: Sequence[Route] = ()) -> str:
    link = ipr.get_links(idx)[0]
    if mac is not None and link.get_attr("IFLA_ADDRESS") != mac.lower():
        ipr.link("set", index=idx, address=mac)
    if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    _add_addresses(ipr, idx, ips)
    ipr.link("set", index=idx, state="up")
    # After the link is up: a route through a gateway needs the gateway's subnet reachable.
    _add_routes(ipr, idx, routes)
    return str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


def _reconfigure_in_ns(path: str, ifname: str, old_ips: Sequence[str], new_ips: Sequence[str],
                       old_routes: Sequence[Route], new_routes: Sequence[Route], mtu: int | None) -> None:
    where = f"netns {netns_label(path)}"
    ipr = IPRoute()
    try:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise Conflict(f"{where}: interface {ifname} is gone")
        idx = found[0]
        try:
            if mtu is not None:
                ipr.link("set", index=idx, mtu=mtu)
            for route in old_routes:
                if route not in new_routes:
                    try:
                        ipr.route("del", **_route_args(idx, route))
                    except NetlinkError as e:
                        if e.code != errno.ESRCH:  # already gone (with its address, say)
                            raise
            # Only what vswitch configured is taken away: addresses the container added stay.
            for ip in old_ips:
                if ip not in new_ips:
                    iface = ipaddress.ip_interface(ip)
                    try:
                        ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                    except NetlinkError as e:
                        if e.code != errno.EADDRNOTAVAIL:
                            raise
            _add_addresses(ipr, idx, new_ips)
            _add_routes(ipr, idx, new_routes)
        except NetlinkError as e:
            raise InvalidArgument(f"{where}: cannot reconfigure {ifname} (ips={list(new_ips)}, routes={list(new_routes)}, "
                                  f"mtu={mtu}): {os.strerror(e.code)}") from None
    finally:
        ipr.close()


def reconfigure_tap(netns_path: str, ifname: str, *, old_ips: Sequence[str], new_ips: Sequence[str],
                    old_routes: Sequence[Route], new_routes: Sequence[Route], mtu: int | None) -> None:
    """Change a live interface's addresses, routes and MTU in place: what vswitch configured
    before and is no longer wanted goes, the rest is added; the interface stays."""
    run_in_netns(resolve_netns(netns_path), _reconfigure_in_ns, netns_path, ifname, old_ips, new_ips,
                 old_routes, new_routes, mtu)


def _set_offloads(fd: int, vnet_hdr: bool, offloads: int) -> None:
    if vnet_hdr:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, "little"))
    fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)


def _open_in_ns(path: str, ifname: str, flags: int, mac: str | None, ips: Sequence[str], mtu: int | None,
                offloads: int, routes: Sequence[Route], alias: str | None = None) -> TapPort:
    where = f"netns {netns_label(path)}"
    ipr = IPRoute()
    try:
        existing = _link_kind(ipr, ifname)
        if existing not in (None, "tap"):
            raise Conflict(f"{where} already has a non-TAP interface {ifname} ({existing})")
        try:
            dev = pytun.TunTapDevice(name=ifname, flags=flags)
        except pytun.Error as e:
            if e.errno == errno.EBUSY:
                raise Conflict(f"{where}: TAP {ifname} is already held open by another process or port") from None
            if e.errno == errno.EINVAL and existing is not None:
                raise Conflict(f"{where}: cannot attach to existing interface {ifname} (not a compatible TAP)") from None
            raise
        try:
            os.set_inheritable(dev.fileno(), False)  # a child holding it would pin the namespace
            os.set_blocking(dev.fileno(), False)
            # Always set: a re-attached TAP keeps the offloads of its last
            # owner, and frames that need them are garbage without the header.
            _set_offloads(dev.fileno(), bool(flags & pytun.IFF_VNET_HDR), offloads)
            idx = ipr.link_lookup(ifname=ifname)[0]
            if alias is not None and ipr.get_links(idx)[0].get_attr("IFLA_IFALIAS") != alias:
                # Marked before it is made persistent: a TAP that outlives a crash always
                # carries the mark by which the next start finds it if no port owns it.
                ipr.link("set", index=idx, ifalias=alias)
            dev.persist(True)
            try:
                actual_mac = _configure(ipr, idx, mac, ips, mtu, routes)
            except NetlinkError as e:
                # e.g. an IPv6 address in a namespace with IPv6 disabled
                shown = ips[0] if len(ips) == 1 else (list(ips) or None)
                extra = f", routes={[r for r in routes]}" if routes else ""
                raise InvalidArgument(f"{where}: cannot configure {ifname} (mac={mac}, ip={shown}, mtu={mtu}{extra}): "
                                      f"{os.strerror(e.code)}") from None
        except BaseException:
            if existing is None:
                dev.persist(False)  # leave nothing behind that we created
            dev.close()
            raise
        return TapPort(dev, ifname, idx, path, existing is None, actual_mac)
    finally:
        ipr.close()


def open_tap(
    netns_path: str,
    ifname: str,
    *,
    mac: str | None = None,
    ip: str | None = None,
    mtu: int | None = None,
    vnet_hdr: bool = False,
    offloads: int = 0,
    ips: Sequence[str] = (),
    routes: Sequence[Route] = (),
    alias: str | None = None,
) -> TapPort:
    """Create (or re-attach to) the persistent TAP `ifname` inside a namespace and configure it.

    Raises InvalidArgument when the namespace does not exist or the kernel
    refuses the MAC/IP/MTU, Conflict when the name is taken by a non-TAP
    interface or the TAP is already held open. With vnet_hdr, every frame on
    the fd is led by a 12-byte virtio-net header, and `offloads` (TUN_F_*)
    says which super-frames and partial checksums the container may send.
    `ips` (or the one `ip`) are configured on it, then `routes` (dst, gw or None).
    `alias`, if given, is set as the interface's alias (the mark of its owner).
    """
    path = resolve_netns(netns_path)
    flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
    if offloads and not vnet_hdr:
        raise ValueError("offloads need the virtio-net header (vnet_hdr=True)")
    addresses = tuple(ips) or ((ip,) if ip is not None else ())
    return run_in_netns(path, _open_in_ns, path, ifname, flags, mac, addresses, mtu, offloads, tuple(routes), alias)
