"""The data model: validated specs for networks, ports, peers and static FDB entries.

Config files, the control API and the state file all build these objects, so a
value is checked the same way wherever it comes from. Every check raises
InvalidArgument with a message that names the field and the offending value.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidArgument

# Matched whole (fullmatch): "$" would also let a name end in a newline.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
IFNAME_MAX = 15  # bytes: IFNAMSIZ - 1
# What the kernel's dev_valid_name refuses inside a name, besides NUL: its
# isspace() counts 0xA0 (Latin-1 no-break space), which UTF-8 can carry.
IFNAME_BAD_BYTES = frozenset(b"/: \t\n\v\f\r\xa0")
VNI_MAX = (1 << 24) - 1
MTU_MIN, MTU_MAX = 68, 65521  # 65535 less the L2 header and a tag
IO_MODES = ("auto", "uring", "poll")
MAX_PEERS = 1024  # tunnel peers over all networks: the datapath's peer table
MAX_PORT_IPS = 16
MAX_PORT_ROUTES = 64
MAX_LABELS = 32
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")
LABEL_VALUE_MAX = 253


def _fail(where: str, value: Any, why: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {value!r} {why}")


def check_name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _fail(where, value, "is not a valid name (1-63 of A-Z a-z 0-9 _ . -, starting alphanumeric)")
    return value


def check_mac(where: str, value: Any, *, unicast: bool = True) -> str:
    if not isinstance(value, str) or not MAC_RE.fullmatch(value):
        raise _fail(where, value, "is not a MAC address (xx:xx:xx:xx:xx:xx)")
    mac = value.lower()
    if unicast and int(mac[:2], 16) & 1:
        raise _fail(where, value, "is a multicast/broadcast MAC; a unicast MAC is required")
    if unicast and mac == "00:00:00:00:00:00":
        raise _fail(where, value, "is the all-zero MAC")
    return mac


def check_int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, value, "is not an integer")
    if not lo <= value <= hi:
        raise _fail(where, value, f"is out of range [{lo}, {hi}]")
    return value


def check_cidr(where: str, value: Any) -> str:
    if not isinstance(value, str) or "/" not in value:
        raise _fail(where, value, "is not an address with a prefix length (e.g. 10.1.0.1/24)")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise _fail(where, value, "is not a valid IPv4/IPv6 address with prefix length") from None
    return str(iface)


def check_ip(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(where, value, "is not an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _fail(where, value, "is not an IP address") from None


def _utf8(value: Any) -> bytes | None:
    """The UTF-8 bytes a name reaches the kernel as; None if it has none (a lone surrogate) or holds NUL."""
    if not isinstance(value, str) or "\0" in value:
        return None
    try:
        return value.encode()
    except UnicodeEncodeError:
        return None


def check_ifname(where: str, value: Any) -> str:
    raw = _utf8(value)
    if raw is None or not 1 <= len(raw) <= IFNAME_MAX or raw in (b".", b"..") or IFNAME_BAD_BYTES & set(raw):
        raise _fail(where, value, f"is not a valid interface name (1-{IFNAME_MAX} bytes, no '/', ':' or spaces)")
    return value


def check_netns(where: str, value: Any) -> str:
    """A namespace name (under /run/netns) or a path; whether it exists is checked where it is used."""
    if not _utf8(value):
        raise _fail(where, value, "is not a namespace name or path (a non-empty string without NUL)")
    return value


def _underlay_problem(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a VXLAN datagram cannot come from or go to `addr` (None if it can)."""
    if addr.version != 4:
        return "is not IPv4 (the underlay is IPv4 only)"
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        return "is not a unicast address"
    return None


def check_unicast_ipv4(where: str, value: Any) -> str:
    addr = ipaddress.ip_address(check_ip(where, value))
    why = _underlay_problem(addr)
    if why:
        raise _fail(where, value, why)
    return str(addr)


def peer_problem(spec: PeerSpec, network: NetworkSpec, vtep_ip: str | None) -> str | None:
    """Why `spec` cannot be a peer of `network` on a switch with this vtep_ip (None if it can).
    Checked where a peer is applied, not parsed: a state file stays readable whatever it holds."""
    why = _underlay_problem(ipaddress.ip_address(spec.remote))
    if why:
        return f"remote: {spec.remote!r} {why}"
    if network.vni is None:
        return f"network {spec.network!r} has no VNI: peers need a VXLAN network"
    if vtep_ip is None:
        return "peers need a local VTEP address: set [switch] vtep_ip"
    if spec.remote == vtep_ip:
        return f"remote: {spec.remote} is this switch's own vtep_ip"
    return None


def check_io_mode(where: str, value: Any) -> str:
    if value not in IO_MODES:
        raise _fail(where, value, f"is not an I/O mode ({', '.join(IO_MODES)})")
    return value


def check_keys(where: str, data: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where}: expected a table/object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(data))
    if missing:
        raise InvalidArgument(f"{where}: missing required key {missing[0]!r}")


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    vni: int | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "network") -> NetworkSpec:
        check_keys(where, data, {"name", "vni"}, {"name"})
        vni = data.get("vni")
        return cls(
            name=check_name(f"{where}.name", data["name"]),
            vni=None if vni is None else check_int(f"{where}.vni", vni, 1, VNI_MAX),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, value, "is not true or false")
    return value


def check_list(where: str, value: Any, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, value, "is not a list")
    if len(value) > most:
        raise InvalidArgument(f"{where}: {len(value)} items, at most {most} are allowed")
    return value


def check_labels(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    """Labels as sorted (key, value) pairs: keys like names (also '/'), values short printable text."""
    if not isinstance(value, dict):
        raise _fail(where, value, "is not an object of string keys and values")
    if len(value) > MAX_LABELS:
        raise InvalidArgument(f"{where}: {len(value)} labels, at most {MAX_LABELS} are allowed")
    for key, text in value.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
            raise _fail(f"{where} key", key, "is not a label key (1-63 of A-Z a-z 0-9 _ . / -, starting alphanumeric)")
        if not isinstance(text, str) or len(text) > LABEL_VALUE_MAX or not text.isprintable():
            raise _fail(f"{where}.{key}", text, f"is not a label value (printable text of at most {LABEL_VALUE_MAX} characters)")
    return tuple(sorted(value.items()))


def check_label_filter(where: str, value: Any) -> tuple[str, str | None]:
    """'KEY=VALUE' (that value) or 'KEY' (any value) as (key, value or None)."""
    if not isinstance(value, str):
        raise _fail(where, value, "is not KEY or KEY=VALUE")
    key, sep, text = value.partition("=")
    if not LABEL_KEY_RE.fullmatch(key):
        raise _fail(where, value, "is not KEY or KEY=VALUE with a valid label key")
    return key, (text if sep else None)


@dataclass(frozen=True)
class RouteSpec:
    """A route configured beside a port's addresses: to `dst` via `gw`, or on the link when gw is None."""

    dst: str
    gw: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "route") -> RouteSpec:
        check_keys(where, data, {"dst", "gw"}, {"dst"})
        dst = data["dst"]
        try:
            net = ipaddress.ip_network(dst, strict=False) if isinstance(dst, str) and "/" in dst else None
        except ValueError:
            net = None
        if net is None:
            raise _fail(f"{where}.dst", dst, "is not a destination network (e.g. 0.0.0.0/0 or 10.2.0.0/16)")
        gw = None if data.get("gw") is None else check_ip(f"{where}.gw", data["gw"])
        if gw is not None and ipaddress.ip_address(gw).version != net.version:
            raise _fail(f"{where}.gw", gw, f"is not of the same IP version as dst {net}")
        return cls(dst=str(net), gw=gw)

    def to_dict(self) -> dict[str, Any]:
        return {"dst": self.dst} if self.gw is None else {"dst": self.dst, "gw": self.gw}


def _parse_ips(where: str, data: dict[str, Any]) -> tuple[str, ...]:
    """A port's addresses from 'ip' (one) or 'ips' (several), never both."""
    if data.get("ip") is not None and data.get("ips") is not None:
        raise InvalidArgument(f"{where}: give 'ip' or 'ips', not both")
    if data.get("ips") is None:
        return () if data.get("ip") is None else (check_cidr(f"{where}.ip", data["ip"]),)
    ips = tuple(check_cidr(f"{where}.ips[{i}]", v) for i, v in enumerate(check_list(f"{where}.ips", data["ips"], MAX_PORT_IPS)))
    seen = set()
    for i, ip in enumerate(ips):
        addr = ipaddress.ip_interface(ip).ip
        if addr in seen:
            raise _fail(f"{where}.ips[{i}]", ip, "repeats an address given before")
        seen.add(addr)
    return ips


def _parse_routes(where: str, value: Any) -> tuple[RouteSpec, ...]:
    if value is None:
        return ()
    items = check_list(where, value, MAX_PORT_ROUTES)
    return tuple(RouteSpec.parse(item, where=f"{where}[{i}]") for i, item in enumerate(items))


MAX_ALLOWED_MACS = 7  # the datapath keeps 8 MACs a port: its own and these
MAX_ALLOWED = 16  # extra source addresses a port may use beside its own (the datapath's room, less its own)
# Port limits (fastpath/limits.pxi); 0 is no limit for every one of them.
MAX_MACS_MAX = 1 << 24
STORM_FPS_MAX = 100_000_000
RATE_MBIT_MAX = 1_000_000
BURST_KB_MAX = 1 << 20
DEFAULT_BURST_KB = 2048
STORM_DEFAULT_FPS = 1000  # broadcast and multicast floods a container port may send a second
LIMIT_KEYS = ("max_macs", "storm_broadcast", "storm_multicast", "storm_unknown_unicast", "rate_mbit", "burst_kb",
              "rate_fps")
POLICY_KEYS = {"port_security", "allowed", "router", "dhcp_server", *LIMIT_KEYS}
TRUNK_KEYS = {"trunk", "native"}
PORT_KEYS = {"name", "network", "netns", "ifname", "mac", "ip", "ips", "mtu", "routes", "labels", "host", "masquerade",
             *POLICY_KEYS, *TRUNK_KEYS}
VID_MIN, VID_MAX = 1, 4094  # IEEE 802.1Q: 0 is a priority tag (no VLAN), 4095 is reserved


def check_trunk(where: str, value: Any) -> tuple[tuple[str, int], ...]:
    """A trunk port's tagged networks, {network: VLAN ID}, as (network, VID) pairs sorted by VID."""
    if not isinstance(value, dict) or not value:
        raise _fail(where, value, "is not a table of network = VLAN ID (e.g. {blue = 10, red = 20})")
    seen: dict[int, str] = {}
    for net, vid in value.items():
        check_name(f"{where} key", net)
        check_int(f"{where}.{net}", vid, VID_MIN, VID_MAX)
        if vid in seen:
            raise _fail(f"{where}.{net}", vid, f"is already the VLAN ID of network {seen[vid]!r}")
        seen[vid] = net
    return tuple(sorted(value.items(), key=lambda item: item[1]))


def check_rate(where: str, value: Any, hi: float) -> float:
    """A non-negative number (integer or decimal) of at most hi."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _fail(where, value, "is not a number")
    if not 0 <= value <= hi:
        raise _fail(where, value, f"is out of range [0, {hi}] (0: no limit)")
    return value


def _check_allowed(where: str, value: Any) -> tuple[str, ...]:
    """Extra sources a port may send from: MACs and IP addresses (no prefix), as allowed address pairs."""
    out = []
    for i, item in enumerate(check_list(where, value, MAX_ALLOWED)):
        if isinstance(item, str) and MAC_RE.fullmatch(item):
            out.append(check_mac(f"{where}[{i}]", item))
        else:
            try:
                out.append(str(ipaddress.ip_address(item)) if isinstance(item, str) else None)
            except ValueError:
                out.append(None)
            if out[-1] is None:
                raise _fail(f"{where}[{i}]", item, "is neither a MAC nor an IP address")
    if sum(1 for a in out if MAC_RE.fullmatch(a)) > MAX_ALLOWED_MACS:
        raise InvalidArgument(f"{where}: at most {MAX_ALLOWED_MACS} MACs beside the port's own")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class PortPolicy:
    """What a port's frames must keep to (fastpath/policy.pxi): with port
    security on, they come from the port's MAC and addresses or from `allowed`;
    router / dhcp_server let it send router advertisements / DHCP replies."""

    port_security: bool = True
    allowed: tuple[str, ...] = ()
    router: bool = False
    dhcp_server: bool = False
    # Limits (fastpath/limits.pxi), 0 is none: learned MACs; flooded frames/s by kind; a policer on
    # each direction of rate_mbit (burst_kb KiB, 0: the default burst) and rate_fps frames/s.
    max_macs: int = 0
    storm_broadcast: int = STORM_DEFAULT_FPS
    storm_multicast: int = STORM_DEFAULT_FPS
    storm_unknown_unicast: int = 0
    rate_mbit: float = 0
    burst_kb: int = 0
    rate_fps: int = 0

    @classmethod
    def defaults(cls, host: bool) -> PortPolicy:
        """A container port is untrusted: port security and storm control on. A host port is the
        host's own: neither."""
        if host:
            return cls(port_security=False, storm_broadcast=0, storm_multicast=0)
        return cls()

    @classmethod
    def parse(cls, data: dict[str, Any], where: str, *, host: bool, base: PortPolicy | None = None) -> PortPolicy:
        """The policy keys of `data` over `base` (default: a port's defaults)."""
        if base is None:
            base = cls.defaults(host)

        def limit(key: str, hi: int) -> int:
            return check_int(f"{where}.{key}", data.get(key, getattr(base, key)), 0, hi)

        return cls(
            port_security=check_bool(f"{where}.port_security", data.get("port_security", base.port_security)),
            allowed=base.allowed if data.get("allowed") is None else _check_allowed(f"{where}.allowed", data["allowed"]),
            router=check_bool(f"{where}.router", data.get("router", base.router)),
            dhcp_server=check_bool(f"{where}.dhcp_server", data.get("dhcp_server", base.dhcp_server)),
            max_macs=limit("max_macs", MAX_MACS_MAX),
            storm_broadcast=limit("storm_broadcast", STORM_FPS_MAX),
            storm_multicast=limit("storm_multicast", STORM_FPS_MAX),
            storm_unknown_unicast=limit("storm_unknown_unicast", STORM_FPS_MAX),
            rate_mbit=check_rate(f"{where}.rate_mbit", data.get("rate_mbit", base.rate_mbit), RATE_MBIT_MAX),
            burst_kb=limit("burst_kb", BURST_KB_MAX),
            rate_fps=limit("rate_fps", STORM_FPS_MAX),
        )

    def to_dict(self, host: bool) -> dict[str, Any]:
        """The keys not at their defaults."""
        out: dict[str, Any] = {}
        default = self.defaults(host)
        if self.port_security != default.port_security:
            out["port_security"] = self.port_security
        if self.allowed:
            out["allowed"] = list(self.allowed)
        for key in ("router", "dhcp_server"):
            if getattr(self, key):
                out[key] = True
        for key in LIMIT_KEYS:
            if getattr(self, key) != getattr(default, key):
                out[key] = getattr(self, key)
        return out

    def limits(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in LIMIT_KEYS}

    @property
    def burst_bytes(self) -> int:
        """The policer's burst: burst_kb, or by default a quarter second at the rate but at least
        2 MiB. TCP's TSO super-frames (64 KB each) make a sender bursty: through a 50 Mbit/s
        policer, iperf3 measured 6 Mbit/s with 128 KiB, 23 with 512 KiB, 50 with 2 MiB."""
        if self.burst_kb:
            return self.burst_kb * 1024
        return max(DEFAULT_BURST_KB * 1024, int(self.rate_mbit * 1e6 / 8 * 0.25))

    def view(self) -> dict[str, Any]:
        return {"port_security": self.port_security, "allowed": list(self.allowed), "router": self.router,
                "dhcp_server": self.dhcp_server, **self.limits()}


@dataclass(frozen=True)
class PortSpec:
    """A port. Most are a TAP inside a container's namespace; a host port's
    interface stays in vswitchd's own namespace (netns is None), e.g. as the
    network's gateway, optionally masquerading its IPv4 subnets.

    `ip` is the first of `ips` (either may be given when building one)."""

    name: str
    network: str | None  # None for a trunk port: trunk and native say its networks
    netns: str | None
    ifname: str = "eth0"
    mac: str | None = None
    ip: str | None = None
    mtu: int | None = None
    ips: tuple[str, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    host: bool = False
    masquerade: bool = False
    policy: PortPolicy | None = None  # None: the defaults for this kind of port
    trunk: tuple[tuple[str, int], ...] = ()  # a trunk port's tagged networks: (network, VLAN ID)
    native: str | None = None  # a trunk port's network for untagged frames

    def __post_init__(self) -> None:
        if self.policy is None:
            object.__setattr__(self, "policy", PortPolicy.defaults(self.host))
        # One source of truth for the addresses, whichever of the two was given.
        if not self.ips and self.ip is not None:
            object.__setattr__(self, "ips", (self.ip,))
        if self.ips and self.ip != self.ips[0]:
            object.__setattr__(self, "ip", self.ips[0])

    @property
    def networks(self) -> tuple[str, ...]:
        """Every network the port is in: its one network, or a trunk's native and tagged ones."""
        if self.network is not None:
            return (self.network,)
        return ((self.native,) if self.native is not None else ()) + tuple(net for net, _ in self.trunk)

    @property
    def is_trunk(self) -> bool:
        return self.network is None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "port") -> PortSpec:
        check_keys(where, data, PORT_KEYS, {"name"})
        name = check_name(f"{where}.name", data["name"])
        network, trunk, native = _parse_networks(where, data)
        host = check_bool(f"{where}.host", data.get("host", False))
        if host and data.get("netns") is not None:
            raise InvalidArgument(f"{where}.netns: a host port stays in vswitchd's namespace; give no netns")
        if not host and data.get("netns") is None:
            raise InvalidArgument(f"{where}: missing required key 'netns'")
        # A host port's interface sits among the host's own: it is named after the port, not eth0.
        ifname = data.get("ifname", name if host else "eth0")
        if host and "ifname" not in data and len(name.encode()) > IFNAME_MAX:
            raise InvalidArgument(f"{where}.ifname: a host port named {name!r} needs an ifname of at most {IFNAME_MAX} bytes")
        ips = _parse_ips(where, data)
        masquerade = check_bool(f"{where}.masquerade", data.get("masquerade", False))
        if masquerade and not host:
            raise InvalidArgument(f"{where}.masquerade: only a host port (the network's way out) can masquerade")
        if masquerade and not any(ipaddress.ip_interface(ip).version == 4 for ip in ips):
            raise InvalidArgument(f"{where}.masquerade: needs an IPv4 address on the port: its subnet is what is masqueraded")
        if masquerade and trunk:
            raise InvalidArgument(f"{where}.masquerade: a trunk port cannot masquerade (it is no one network's way out)")
        return cls(
            name=name,
            network=network,
            trunk=trunk,
            native=native,
            netns=None if host else check_netns(f"{where}.netns", data["netns"]),
            ifname=check_ifname(f"{where}.ifname", ifname),
            mac=None if data.get("mac") is None else check_mac(f"{where}.mac", data["mac"]),
            ips=ips,
            mtu=None if data.get("mtu") is None else check_int(f"{where}.mtu", data["mtu"], MTU_MIN, MTU_MAX),
            routes=_parse_routes(f"{where}.routes", data.get("routes")),
            labels=() if data.get("labels") is None else check_labels(f"{where}.labels", data["labels"]),
            host=host,
            masquerade=masquerade,
            policy=PortPolicy.parse(data, where, host=host),
        )

    def to_dict(self) -> dict[str, Any]:
        # Written as older vswitchds wrote it where it can be: one address is 'ip', and
        # keys at their defaults are left out.
        out: dict[str, Any] = {"name": self.name}
        if self.network is not None:
            out["network"] = self.network
        else:
            out["trunk"] = dict(self.trunk)
            if self.native is not None:
                out["native"] = self.native
        if self.netns is not None:
            out["netns"] = self.netns
        out["ifname"] = self.ifname
        for key in ("mac", "mtu"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if len(self.ips) == 1:
            out["ip"] = self.ips[0]
        elif self.ips:
            out["ips"] = list(self.ips)
        if self.routes:
            out["routes"] = [r.to_dict() for r in self.routes]
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.host:
            out["host"] = True
        if self.masquerade:
            out["masquerade"] = True
        out.update(self.policy.to_dict(self.host))  # type: ignore[union-attr]
        return out

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _parse_networks(where: str, data: dict[str, Any]) -> tuple[str | None, tuple[tuple[str, int], ...], str | None]:
    """(network, trunk, native) of a port: an access port has a network; a trunk port
    has trunk (its tagged networks) and maybe native (its untagged one), never network."""
    if data.get("trunk") is None:
        if data.get("native") is not None:
            raise InvalidArgument(f"{where}.native: only a trunk port has a native network (give trunk too)")
        if data.get("network") is None:
            raise InvalidArgument(f"{where}: missing required key 'network' (or 'trunk' for a trunk port)")
        return check_name(f"{where}.network", data["network"]), (), None
    if data.get("network") is not None:
        raise InvalidArgument(f"{where}.network: a trunk port's networks are its trunk (tagged) and native "
                              "(untagged) ones; give no network")
    trunk = check_trunk(f"{where}.trunk", data["trunk"])
    native = None if data.get("native") is None else check_name(f"{where}.native", data["native"])
    if native is not None and native in dict(trunk):
        raise InvalidArgument(f"{where}.native: {native!r} is also tagged in trunk; a network is one or the other")
    return None, trunk, native


@dataclass(frozen=True)
class PortUpdate:
    """What PATCH may change on a live port without re-creating its interface; None leaves a part as it is."""

    ips: tuple[str, ...] | None = None
    routes: tuple[RouteSpec, ...] | None = None
    mtu: int | None = None
    policy: dict[str, Any] | None = None  # the policy keys given, checked against the port's own by policy_over()
    trunk: tuple[tuple[str, int], ...] | None = None  # a trunk port's tagged networks, all of them
    native: str | None = None  # with native_given: a trunk port's native network ("" in the request: none)
    native_given: bool = False

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "port") -> PortUpdate:
        check_keys(where, data, {"ip", "ips", "routes", "mtu", *POLICY_KEYS, *TRUNK_KEYS}, set())
        if not data:
            raise InvalidArgument(f"{where}: nothing to change (give ip, ips, routes, mtu, trunk, native, a policy key "
                                  "or a limit)")
        trunk = check_trunk(f"{where}.trunk", data["trunk"]) if data.get("trunk") is not None else None
        native_given = "native" in data
        native = data.get("native")
        if native_given and native not in (None, ""):
            check_name(f"{where}.native", native)
        if native_given and native == "":
            native = None  # none from now on
        given_ips = "ip" in data or "ips" in data
        policy = {k: v for k, v in data.items() if k in POLICY_KEYS}
        PortPolicy.parse(policy, where, host=False)  # checked now: a bad value changes nothing
        return cls(
            ips=_parse_ips(where, data) if given_ips else None,
            routes=_parse_routes(f"{where}.routes", data["routes"]) if "routes" in data else None,
            mtu=None if data.get("mtu") is None else check_int(f"{where}.mtu", data["mtu"], MTU_MIN, MTU_MAX),
            policy=policy or None,
            trunk=trunk,
            native=native,
            native_given=native_given,
        )

    @property
    def changes_trunk(self) -> bool:
        return self.trunk is not None or self.native_given

    def trunk_over(self, spec: PortSpec, where: str = "port") -> tuple[tuple[tuple[str, int], ...], str | None]:
        """A trunk port's (trunk, native) with this update's applied."""
        trunk = spec.trunk if self.trunk is None else self.trunk
        native = self.native if self.native_given else spec.native
        if native is not None and native in dict(trunk):
            raise InvalidArgument(f"{where}.native: {native!r} is also tagged in trunk; a network is one or the other")
        return trunk, native

    def policy_over(self, spec: PortSpec, where: str = "port") -> PortPolicy:
        """The port's policy with this update's keys applied."""
        if not self.policy:
            return spec.policy  # type: ignore[return-value]
        return PortPolicy.parse(self.policy, where, host=spec.host, base=spec.policy)


def attachment_port_name(container_id: str, ifname: str) -> str:
    """The port name of a container runtime's attachment (container ID, ifname): always the
    same for the same pair, a valid name (<= 63 characters) for any pair. The first 12
    characters of the ID are kept for people; the hash tells attachments apart."""
    readable = re.sub(r"[^A-Za-z0-9]", "", container_id)[:12] or "x"
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()[:16]
    return f"cni-{readable}-{digest}"


@dataclass(frozen=True)
class PeerSpec:
    network: str
    remote: str

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "peer") -> PeerSpec:
        check_keys(where, data, {"network", "remote"}, {"network", "remote"})
        return cls(
            network=check_name(f"{where}.network", data["network"]),
            remote=check_ip(f"{where}.remote", data["remote"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StaticFdbSpec:
    """A MAC pinned to a local port, or to a tunnel peer (a remote VTEP) of its network."""

    network: str
    mac: str
    port: str | None = None
    peer: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "fdb") -> StaticFdbSpec:
        check_keys(where, data, {"network", "mac", "port", "peer"}, {"network", "mac"})
        if (data.get("port") is None) == (data.get("peer") is None):
            raise InvalidArgument(f"{where}: give exactly one of port or peer")
        return cls(
            network=check_name(f"{where}.network", data["network"]),
            mac=check_mac(f"{where}.mac", data["mac"]),
            port=None if data.get("port") is None else check_name(f"{where}.port", data["port"]),
            peer=None if data.get("peer") is None else check_ip(f"{where}.peer", data["peer"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SwitchSettings:
    mac_aging_s: int = 300
    mac_table_size: int = 65536
    vtep_ip: str | None = None
    vxlan_port: int = 4789
    underlay_mtu: int = 1500
    vxlan_src_port_min: int = 49152
    vxlan_src_port_max: int = 65535
    max_ports: int = 1024
    offloads: bool = True
    busy_poll_us: int = 100
    busy_poll_bulk_hold_us: int = 0
    batch_wait_us: int = 50
    io_mode: str = "auto"

    @classmethod
    def parse(cls, data: dict[str, Any], where: str = "switch") -> SwitchSettings:
        allowed = {"mac_aging_s", "mac_table_size", "vtep_ip", "vxlan_port", "underlay_mtu",
                   "vxlan_src_port_min", "vxlan_src_port_max", "max_ports", "offloads", "busy_poll_us", "batch_wait_us",
                   "busy_poll_bulk_hold_us", "io_mode"}
        check_keys(where, data, allowed, set())
        d = cls()
        lo = check_int(f"{where}.vxlan_src_port_min", data.get("vxlan_src_port_min", d.vxlan_src_port_min), 1, 65535)
        hi = check_int(f"{where}.vxlan_src_port_max", data.get("vxlan_src_port_max", d.vxlan_src_port_max), 1, 65535)
        if lo > hi:
            raise InvalidArgument(f"{where}.vxlan_src_port_min: {lo} is above vxlan_src_port_max {hi}")
        offloads = data.get("offloads", d.offloads)
        if not isinstance(offloads, bool):
            raise InvalidArgument(f"{where}.offloads: {offloads!r} is not true or false")
        return cls(
            mac_aging_s=check_int(f"{where}.mac_aging_s", data.get("mac_aging_s", d.mac_aging_s), 1, 86400 * 365),
            mac_table_size=check_int(f"{where}.mac_table_size", data.get("mac_table_size", d.mac_table_size), 16, 1 << 24),
            vtep_ip=None if data.get("vtep_ip") is None else check_unicast_ipv4(f"{where}.vtep_ip", data["vtep_ip"]),
            vxlan_port=check_int(f"{where}.vxlan_port", data.get("vxlan_port", d.vxlan_port), 1, 65535),
            underlay_mtu=check_int(f"{where}.underlay_mtu", data.get("underlay_mtu", d.underlay_mtu), 576, 65535),
            vxlan_src_port_min=lo,
            vxlan_src_port_max=hi,
            offloads=offloads,
            busy_poll_us=check_int(f"{where}.busy_poll_us", data.get("busy_poll_us", d.busy_poll_us), 0, 100_000),
            busy_poll_bulk_hold_us=check_int(f"{where}.busy_poll_bulk_hold_us",
                                             data.get("busy_poll_bulk_hold_us", d.busy_poll_bulk_hold_us), 0, 100_000),
            batch_wait_us=check_int(f"{where}.batch_wait_us", data.get("batch_wait_us", d.batch_wait_us), 0, 1000),
            max_ports=check_int(f"{where}.max_ports", data.get("max_ports", d.max_ports), 2, 65000),
            io_mode=check_io_mode(f"{where}.io_mode", data.get("io_mode", d.io_mode)),
        )


@dataclass
class DesiredState:
    """Everything an operator configured: what the state file persists."""

    networks: list[NetworkSpec] = field(default_factory=list)
    ports: list[PortSpec] = field(default_factory=list)
    peers: list[PeerSpec] = field(default_factory=list)
    static_fdb: list[StaticFdbSpec] = field(default_factory=list)
