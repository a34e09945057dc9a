"""The CNI protocol as the vswitch plugin speaks it: versions, errors, the
network config and the environment, and results in each version's shape.

CNI spec 1.1.0 (also 0.3.0 - 1.0.0 configs). A runtime runs the plugin with
``CNI_*`` environment variables and the network config on stdin; the plugin
answers a result or an error object on stdout.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .client import DEFAULT_SOCKET
from .errors import InvalidArgument
from .model import MTU_MAX, MTU_MIN, VNI_MAX, check_ifname, check_name

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC")
# The commands that exist only from a version on.
SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}

# The spec's well-known error codes, and two of the plugin's own (100+).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_VSWITCHD_REFUSED = 100  # vswitchd answered the request with an error
ERR_CHECK_FAILED = 101  # CHECK found the attachment not as ADD left it


class CniError(Exception):
    """An error result: code, a short msg and the longer details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_dict(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def best_common_version(ours: str, theirs: list[str]) -> str | None:
    """The highest version both speak, not above ours (None if there is none)."""
    common = [v for v in theirs if v in SUPPORTED_VERSIONS and version_key(v) <= version_key(ours)]
    return max(common, key=version_key) if common else None


@dataclass(frozen=True)
class NetConf:
    """The plugin's network config (stdin); `raw` is the whole object as given, for delegation."""

    cni_version: str
    name: str
    network: str
    vni: int | None
    socket: str
    mtu: int | None
    gateway: bool
    ip_masq: bool
    ipam: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def ipam_type(self) -> str | None:
        return None if self.ipam is None else self.ipam["type"]


def decode_stdin(data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise CniError(ERR_DECODE, "no network config on stdin", "the runtime must write the network config as JSON to stdin")
    try:
        conf = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CniError(ERR_DECODE, "network config on stdin is not valid JSON", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "network config on stdin is not a JSON object", f"got {type(conf).__name__}")
    return conf


def _bad(key: str, value: Any, why: str) -> CniError:
    return CniError(ERR_INVALID_CONFIG, f"network config: {key}: {value!r} {why}")


def _bool(conf: Mapping[str, Any], key: str) -> bool:
    value = conf.get(key, False)
    if not isinstance(value, bool):
        raise _bad(key, value, "is not true or false")
    return value


def _int(conf: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = conf.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(key, value, f"is not an integer in [{lo}, {hi}]")
    return value


def check_version(conf: Mapping[str, Any]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "network config: missing required key 'cniVersion'")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"incompatible CNI versions: config is {version!r}",
                       f"the vswitch plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    return version


def parse_netconf(conf: dict[str, Any], *, need_ipam_type: bool = True) -> NetConf:
    """Checks every key the plugin reads; other keys (runtimeConfig, args, ...) pass through."""
    version = check_version(conf)
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(ERR_INVALID_CONFIG, "network config: missing required key 'name'")
    network = conf.get("network", name)
    try:
        check_name("network", network)
    except InvalidArgument as e:
        where = "network" if "network" in conf else "name (the vswitch network defaults to it)"
        raise CniError(ERR_INVALID_CONFIG, f"network config: {where}: {e}") from None
    sock = conf.get("socket", str(DEFAULT_SOCKET))
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _bad("socket", sock, "is not an absolute path to vswitchd's API socket")
    ipam = conf.get("ipam")
    if ipam is not None:
        if not isinstance(ipam, dict):
            raise _bad("ipam", ipam, "is not an object")
        ipam_type = ipam.get("type")
        if need_ipam_type and (not isinstance(ipam_type, str) or not ipam_type or "/" in ipam_type):
            raise _bad("ipam.type", ipam_type, "is not the name of an IPAM plugin (e.g. host-local)")
    gateway = _bool(conf, "gateway")
    ip_masq = _bool(conf, "ipMasq")
    if ip_masq and not gateway:
        raise CniError(ERR_INVALID_CONFIG, "network config: ipMasq needs gateway: true (the gateway is the way out)")
    if gateway and ipam is None:
        raise CniError(ERR_INVALID_CONFIG, "network config: gateway needs ipam: the gateway address comes from it")
    return NetConf(
        cni_version=version,
        name=name,
        network=network,
        vni=_int(conf, "vni", 1, VNI_MAX),
        socket=sock,
        mtu=_int(conf, "mtu", MTU_MIN, MTU_MAX),
        gateway=gateway,
        ip_masq=ip_masq,
        ipam=ipam,
        raw=conf,
    )


@dataclass(frozen=True)
class Env:
    command: str
    container_id: str
    netns: str
    ifname: str
    path: list[str]
    args: str


REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}


def parse_env(environ: Mapping[str, str]) -> Env:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: {command!r} is not one of {', '.join(COMMANDS)}")
    missing = [key for key in REQUIRED_ENV[command] if not environ.get(key)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"missing environment variable{'s' if len(missing) > 1 else ''} "
                                        f"{', '.join(missing)} (required for {command})")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname:
        try:
            check_ifname("CNI_IFNAME", ifname)
        except InvalidArgument as e:
            raise CniError(ERR_INVALID_ENV, str(e)) from None
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not container_id.isprintable():
        raise CniError(ERR_INVALID_ENV, f"CNI_CONTAINERID: {container_id!r} is not printable text")
    return Env(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        path=[d for d in environ.get("CNI_PATH", "").split(":") if d],
        args=environ.get("CNI_ARGS", ""),
    )


# ---- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class IpConfig:
    address: str  # CIDR
    gateway: str | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_interface(self.address).version


@dataclass
class Result:
    """An ADD result in the plugin's terms; to_dict() shapes it for a CNI version."""

    ifname: str
    mac: str
    mtu: int
    sandbox: str
    ips: list[IpConfig]
    routes: list[dict[str, Any]]
    dns: dict[str, Any]

    def to_dict(self, version: str) -> dict[str, Any]:
        iface: dict[str, Any] = {"name": self.ifname, "mac": self.mac, "sandbox": self.sandbox}
        if version_key(version) >= (1, 1, 0):
            iface["mtu"] = self.mtu
        ips = []
        for ip in self.ips:
            entry: dict[str, Any] = {"address": ip.address, "interface": 0}
            if ip.gateway is not None:
                entry["gateway"] = ip.gateway
            if version_key(version) < (1, 0, 0):
                entry["version"] = str(ip.version)  # dropped in 1.0.0
            ips.append(entry)
        return {"cniVersion": version, "interfaces": [iface], "ips": ips, "routes": self.routes, "dns": self.dns}


def ipam_ips(result: Mapping[str, Any]) -> list[IpConfig]:
    """The addresses an IPAM plugin handed out, in any result version."""
    ips = result.get("ips")
    if not isinstance(ips, list):
        raise CniError(ERR_DECODE, "IPAM result has no 'ips' list", json.dumps(result)[:500])
    out = []
    for item in ips:
        try:
            addr = str(ipaddress.ip_interface(item["address"]))
            gw = item.get("gateway")
            out.append(IpConfig(addr, None if gw in (None, "") else str(ipaddress.ip_address(gw))))
        except (KeyError, TypeError, ValueError):
            raise CniError(ERR_DECODE, f"IPAM result holds an unusable address entry: {item!r}") from None
    return out


def ipam_routes(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    routes = result.get("routes") or []
    if not isinstance(routes, list) or not all(isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes):
        raise CniError(ERR_DECODE, f"IPAM result holds unusable routes: {routes!r}")
    return [{"dst": r["dst"], **({"gw": r["gw"]} if r.get("gw") else {})} for r in routes]
