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


def _configure(ipr: IPRoute, idx: int, mac: str | None, ip: str | None, mtu: int | None) -> str:
    link = ipr.get_links(idx)[0]
    if mac is not None and link.get_attr("IFLA_ADDRESS") != mac.lower():
        ipr.link("set", index=idx, address=mac)
    if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    if ip is not None:
        iface = ipaddress.ip_interface(ip)
        family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
        present = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(family=family, index=idx)
        }
        if (str(iface.ip), iface.network.prefixlen) not in present:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    ipr.link("set", index=idx, state="up")
    return str(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


def _set_offloads(fd: int, vnet_hdr: bool, offloads: int) -> None:
    if vnet_hdr:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, VNET_HDR_LEN.to_bytes(4, "little"))
    fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)


def _open_in_ns(path: str, ifname: str, flags: int, mac: str | None, ip: str | None, mtu: int | None,
                offloads: int, alias: str | None = None) -> TapPort:
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
                actual_mac = _configure(ipr, idx, mac, ip, mtu)
            except NetlinkError as e:
                # e.g. an IPv6 address in a namespace with IPv6 disabled
                raise InvalidArgument(f"{where}: cannot configure {ifname} (mac={mac}, ip={ip}, mtu={mtu}): {os.strerror(e.code)}") from None
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
    alias: str | None = None,
) -> TapPort:
    """Create (or re-attach to) the persistent TAP `ifname` inside a namespace and configure it.

    Raises InvalidArgument when the namespace does not exist or the kernel
    refuses the MAC/IP/MTU, Conflict when the name is taken by a non-TAP
    interface or the TAP is already held open. With vnet_hdr, every frame on
    the fd is led by a 12-byte virtio-net header, and `offloads` (TUN_F_*)
    says which super-frames and partial checksums the container may send.
    `alias`, if given, is set as the interface's alias (the mark of its owner).
    """
    path = resolve_netns(netns_path)
    flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
    if offloads and not vnet_hdr:
        raise ValueError("offloads need the virtio-net header (vnet_hdr=True)")
    return run_in_netns(path, _open_in_ns, path, ifname, flags, mac, ip, mtu, offloads, alias)
