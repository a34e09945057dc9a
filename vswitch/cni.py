"""vswitch-cni: the CNI plugin of type ``vswitch`` (installed as ``vswitch`` in a CNI bin dir).

It attaches a container by asking vswitchd, through its control API only, for
a port in the container's namespace, with the addresses and routes the IPAM
plugin hands out. The port's name is derived from the attachment (container
ID, ifname), and its labels say which attachment and CNI network it serves,
so every command finds it again without any state of the plugin's own.

With ``gateway`` the network gets a host port holding each subnet's gateway
address (and the containers a default route through it); with ``ipMasq``
that port masquerades the subnets. When a network's last container port goes,
the plugin removes its gateway and then the network itself (one that still
has ports or tunnel peers is never removed).
"""
from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlencode

from .client import ApiError, Client
from .cni_ipam import Ipam
from .cni_spec import (ERR_CHECK_FAILED, ERR_INVALID_CONFIG, ERR_INVALID_ENV, ERR_IO, ERR_NOT_AVAILABLE,
                       ERR_TRY_AGAIN_LATER, ERR_VSWITCHD_REFUSED, SINCE, SPEC_VERSION, SUPPORTED_VERSIONS, CniError, Env,
                       IpConfig, NetConf, Result, check_version, decode_stdin, ipam_ips, ipam_routes, parse_env,
                       parse_netconf, version_key)
from .errors import InvalidArgument
from .model import attachment_port_name
from .netns import netns_identity, resolve_netns, run_in_netns

API_TIMEOUT_S = 30.0
# Labels on the ports the plugin makes: what they are for and whose they are.
LABEL_CONTAINER = "cni.container-id"
LABEL_IFNAME = "cni.ifname"
LABEL_NETWORK = "cni.network"
LABEL_GATEWAYS = "cni.gateways"  # per address, its gateway ('' for none): to answer a repeated ADD
LABEL_ROLE = "cni.role"
ROLE_GATEWAY = "gateway"


def gateway_port_name(network: str) -> str:
    """The gateway host port of a network: 'gw-NETWORK', shortened with a hash past 63 characters."""
    name = f"gw-{network}"
    return name if len(name) <= 63 else f"gw-{network[:50]}-{hashlib.sha256(network.encode()).hexdigest()[:9]}"


def gateway_ifname(network: str) -> str:
    """The gateway's interface in vswitchd's namespace: 15 bytes at most, one per network."""
    return "vsgw-" + hashlib.sha256(network.encode()).hexdigest()[:10]


def _seg(value: str) -> str:
    return quote(value, safe="")


class Vswitchd:
    """The few control API calls the plugin makes, with its errors as CNI errors."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self.client = Client(socket, timeout=API_TIMEOUT_S)

    def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """The answer; None for a 404 when missing_ok; any other failure as a CNI error."""
        try:
            return self.client.request(method, path, body)
        except ApiError as e:
            if e.status == 404 and missing_ok:
                return None
            raise self.error(e, method, path) from None

    def error(self, e: ApiError, method: str, path: str) -> CniError:
        if e.status == 0:
            return CniError(ERR_TRY_AGAIN_LATER, f"vswitchd is not reachable on {self.socket}", e.detail)
        return CniError(ERR_VSWITCHD_REFUSED, f"vswitchd refused {method} {path.split('?')[0]}: {e.detail}",
                        f"{e.status} {e.error}")

    def reachable(self) -> str | None:
        """None when vswitchd answers its health check, else why not."""
        try:
            self.client.request("GET", "/v1/health")
        except ApiError as e:
            return e.detail
        return None

    def port(self, name: str) -> dict[str, Any] | None:
        return self.call("GET", f"/v1/ports/{_seg(name)}", missing_ok=True)

    def ports(self, **query: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/v1/ports?{urlencode(query)}" if query else "/v1/ports")

    def delete_port(self, name: str) -> None:
        """Gone afterwards, whether it was there or not."""
        self.call("DELETE", f"/v1/ports/{_seg(name)}", missing_ok=True)

    def delete_network(self, name: str) -> None:
        """Gone, or kept because it is in use again (409): both are fine here."""
        try:
            self.client.request("DELETE", f"/v1/networks/{_seg(name)}")
        except ApiError as e:
            if e.status not in (404, 409):
                raise self.error(e, "DELETE", f"/v1/networks/{_seg(name)}") from None


@contextmanager
def network_lock(conf: NetConf) -> Iterator[None]:
    """Serialises the plugin's changes to one network (its gateway, its removal) across
    concurrent runs; the lock file sits beside vswitchd's socket."""
    path = Path(conf.socket).parent / f".cni-{conf.network}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CniError(ERR_IO, f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- ADD ----------------------------------------------------------------------------


def _same_netns(port_netns: str | None, netns: str) -> bool:
    if port_netns is None:
        return False
    a, b = netns_identity(_ns_path(port_netns)), netns_identity(netns)
    return a is not None and a == b


def _ns_path(spec: str) -> str:
    return spec if "/" in spec else f"/run/netns/{spec}"


def _result_from_port(port: dict[str, Any], env: Env) -> Result:
    gateways = port["labels"].get(LABEL_GATEWAYS, "").split(",")
    ips = [IpConfig(ip, (gateways[i] or None) if i < len(gateways) else None) for i, ip in enumerate(port["ips"])]
    return Result(env.ifname, port["mac"], port["mtu"], env.netns, ips, port["routes"], {})


def _routes_for(ips: list[IpConfig], routes: list[dict[str, Any]], default_via_gateway: bool) -> list[dict[str, Any]]:
    """IPAM's routes with a gateway filled in where it gave none (the first gateway of that IP
    version, as the reference plugins do), plus default routes through the gateway if asked."""
    first_gw: dict[int, str] = {}
    for ip in ips:
        if ip.gateway is not None:
            first_gw.setdefault(ip.version, ip.gateway)
    out = []
    for route in routes:
        version = ipaddress.ip_network(route["dst"], strict=False).version
        gw = route.get("gw") or first_gw.get(version)
        out.append({"dst": route["dst"], **({"gw": gw} if gw else {})})
    if default_via_gateway:
        for version, gw in sorted(first_gw.items()):
            default = "0.0.0.0/0" if version == 4 else "::/0"
            if not any(ipaddress.ip_network(r["dst"], strict=False) == ipaddress.ip_network(default) for r in out):
                out.append({"dst": default, "gw": gw})
    return out


def _ensure_network(vs: Vswitchd, conf: NetConf) -> None:
    net = vs.call("GET", f"/v1/networks/{_seg(conf.network)}", missing_ok=True)
    if net is None:
        body: dict[str, Any] = {"name": conf.network}
        if conf.vni is not None:
            body["vni"] = conf.vni
        try:
            vs.client.request("POST", "/v1/networks", body)
            return
        except ApiError as e:
            # A 409 may mean another ADD made it meanwhile; or the VNI is taken, which is an error.
            net = vs.call("GET", f"/v1/networks/{_seg(conf.network)}", missing_ok=True) if e.status == 409 else None
            if net is None:
                raise vs.error(e, "POST", "/v1/networks") from None
    if conf.vni is not None and net.get("vni") != conf.vni:
        raise CniError(ERR_INVALID_CONFIG, f"network config: vni: {conf.vni} differs from vswitch network "
                                           f"{conf.network!r}, which has VNI {net.get('vni')}")


def _ensure_gateway(vs: Vswitchd, conf: NetConf, ips: list[IpConfig]) -> None:
    """The network's gateway host port holds every subnet's gateway address."""
    wanted = [f"{ip.gateway}/{ipaddress.ip_interface(ip.address).network.prefixlen}" for ip in ips if ip.gateway]
    if not wanted:
        raise CniError(ERR_INVALID_CONFIG, "network config: gateway is true but IPAM gave no gateway address",
                       "set ipam gateway (host-local: ranges[].gateway), or gateway: false")
    name = gateway_port_name(conf.network)
    port = vs.port(name)
    if port is None:
        body = {"name": name, "network": conf.network, "host": True, "ifname": gateway_ifname(conf.network),
                "ips": wanted, "masquerade": conf.ip_masq,
                "labels": {LABEL_ROLE: ROLE_GATEWAY, LABEL_NETWORK: conf.name}}
        if conf.mtu is not None:
            body["mtu"] = conf.mtu
        vs.call("POST", "/v1/ports", body)
        return
    have = [str(ipaddress.ip_interface(ip)) for ip in port["ips"]]
    missing = [ip for ip in wanted if str(ipaddress.ip_interface(ip)) not in have]
    if missing:
        vs.call("PATCH", f"/v1/ports/{_seg(name)}", {"ips": have + missing})


def cmd_add(conf: NetConf, env: Env) -> dict[str, Any]:
    vs = Vswitchd(conf.socket)
    why = vs.reachable()
    if why is not None:
        raise CniError(ERR_TRY_AGAIN_LATER, f"vswitchd is not reachable on {conf.socket}", why)
    try:
        netns = resolve_netns(env.netns, "CNI_NETNS")
    except InvalidArgument as e:
        raise CniError(ERR_INVALID_ENV, str(e)) from None
    ipam = Ipam(conf, env.path) if conf.ipam is not None else None  # an unknown type fails before any change
    name = attachment_port_name(env.container_id, env.ifname)
    with network_lock(conf):
        existing = vs.port(name)
        if existing is not None:
            if _same_netns(existing["netns"], netns) and existing["ifname"] == env.ifname:
                return _result_from_port(existing, env).to_dict(conf.cni_version)
            # Left by an earlier sandbox of this container that was never deleted: replace it.
            vs.delete_port(name)
            if ipam is not None:
                ipam.call("DEL", {})
        _ensure_network(vs, conf)
        ips: list[IpConfig] = []
        routes: list[dict[str, Any]] = []
        dns: dict[str, Any] = {}
        try:
            if ipam is not None:
                result = ipam.call("ADD", {})
                if not isinstance(result, dict):
                    raise CniError(ERR_IO, f"IPAM plugin {ipam.plugin.name} returned no result")
                ips, dns = ipam_ips(result), result.get("dns") or {}
                routes = _routes_for(ips, ipam_routes(result), conf.gateway)
            if conf.gateway:
                _ensure_gateway(vs, conf, ips)
            labels = {LABEL_CONTAINER: env.container_id, LABEL_IFNAME: env.ifname, LABEL_NETWORK: conf.name}
            if any(ip.gateway for ip in ips):
                labels[LABEL_GATEWAYS] = ",".join(ip.gateway or "" for ip in ips)
            body: dict[str, Any] = {"name": name, "network": conf.network, "netns": env.netns, "ifname": env.ifname,
                                    "ips": [ip.address for ip in ips], "routes": routes, "labels": labels}
            if conf.mtu is not None:
                body["mtu"] = conf.mtu
            port = vs.call("POST", "/v1/ports", body)
        except BaseException:
            # Leave nothing behind (a refused port was never made): no lease, no gateway or
            # network of no use.
            if ipam is not None:
                try:
                    ipam.call("DEL", {})
                except CniError:
                    pass
            try:
                _remove_unused(vs, conf)
            except CniError:
                pass
            raise
    return Result(env.ifname, port["mac"], port["mtu"], env.netns, ips, routes, dns).to_dict(conf.cni_version)


# ---- DEL, GC ------------------------------------------------------------------------


def _remove_unused(vs: Vswitchd, conf: NetConf) -> None:
    """Once no container port is left in the network: its gateway, then the network itself."""
    net = vs.call("GET", f"/v1/networks/{_seg(conf.network)}", missing_ok=True)
    if net is None:
        return
    ports = vs.ports(network=conf.network)
    if any(p["labels"].get(LABEL_ROLE) != ROLE_GATEWAY for p in ports):
        return
    for p in ports:
        vs.delete_port(p["name"])
    if net.get("peers"):
        return  # an operator's tunnel peers: the network stays for them
    vs.delete_network(conf.network)


def cmd_del(conf: NetConf, env: Env) -> None:
    """Idempotent: the port, the netns or vswitchd's record of them may be gone already.
    The IPAM lease is released in every case."""
    vs = Vswitchd(conf.socket)
    name = attachment_port_name(env.container_id, env.ifname)
    problem: CniError | None = None
    why = vs.reachable()
    if why is not None:
        # The lease is still released below; the port (if any) goes when vswitchd is back and
        # the runtime retries, or with the container's namespace.
        problem = CniError(ERR_TRY_AGAIN_LATER, f"vswitchd is not reachable on {conf.socket}", why)
    else:
        try:
            with network_lock(conf):
                vs.delete_port(name)
                _remove_unused(vs, conf)
        except CniError as e:
            problem = e
    if conf.ipam is not None:
        try:
            Ipam(conf, env.path).call("DEL", {})
        except CniError as e:
            problem = problem or e
    if problem is not None:
        raise problem


def cmd_gc(conf: NetConf, env: Env) -> None:
    """Removes the ports of this CNI network whose attachment is not in cni.dev/valid-attachments
    (and their leases), then passes GC on to IPAM. Goes on past errors and reports the first."""
    valid_raw = conf.raw.get("cni.dev/valid-attachments", [])
    if not isinstance(valid_raw, list) or not all(isinstance(a, dict) for a in valid_raw):
        raise CniError(ERR_INVALID_CONFIG, "cni.dev/valid-attachments: not a list of {containerID, ifname} objects")
    valid = {(a.get("containerID"), a.get("ifname")) for a in valid_raw}
    vs = Vswitchd(conf.socket)
    ipam = Ipam(conf, env.path) if conf.ipam is not None else None
    problems: list[CniError] = []
    with network_lock(conf):
        for port in vs.ports(label=f"{LABEL_NETWORK}={conf.name}"):
            labels = port["labels"]
            if labels.get(LABEL_ROLE) == ROLE_GATEWAY:
                continue
            attachment = (labels.get(LABEL_CONTAINER), labels.get(LABEL_IFNAME))
            if attachment in valid:
                continue
            try:
                vs.delete_port(port["name"])
                if ipam is not None:
                    ipam.call("DEL", {"CNI_CONTAINERID": attachment[0] or "", "CNI_IFNAME": attachment[1] or "",
                                      "CNI_NETNS": ""})
            except CniError as e:
                problems.append(e)
        try:
            _remove_unused(vs, conf)
        except CniError as e:
            problems.append(e)
    if ipam is not None:
        try:
            ipam.call("GC", {})
        except CniError as e:
            problems.append(e)
    if problems:
        raise problems[0]


# ---- CHECK, STATUS, VERSION -----------------------------------------------------------


def _kernel_view(ifname: str) -> tuple[str, set[str]] | None:
    # Imported here: pyroute2 takes about 0.2 s to import, which every ADD and DEL would pay.
    from pyroute2 import IPRoute

    ipr = IPRoute()
    try:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        mac = str(ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS"))
        addrs = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0])}
        return mac, {str(ipaddress.ip_interface(a)) for a in addrs}
    finally:
        ipr.close()


def cmd_check(conf: NetConf, env: Env) -> None:
    prev = conf.raw.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "network config: CHECK needs prevResult (the result of ADD)")
    vs = Vswitchd(conf.socket)
    name = attachment_port_name(env.container_id, env.ifname)
    port = vs.port(name)
    if port is None:
        raise CniError(ERR_CHECK_FAILED, f"no vswitch port for container {env.container_id} {env.ifname} (port {name})")
    if port["state"] != "up":
        raise CniError(ERR_CHECK_FAILED, f"port {name} is {port['state']}, not up")
    try:
        netns = resolve_netns(env.netns, "CNI_NETNS")
    except InvalidArgument as e:
        raise CniError(ERR_INVALID_ENV, str(e)) from None
    if not _same_netns(port["netns"], netns) or port["ifname"] != env.ifname:
        raise CniError(ERR_CHECK_FAILED, f"port {name} is {port['ifname']} in netns {port['netns']}, "
                                         f"not {env.ifname} in {env.netns}")
    ifaces = prev.get("interfaces") or []
    mine = [i for i, iface in enumerate(ifaces) if isinstance(iface, dict) and iface.get("name") == env.ifname
            and iface.get("sandbox") == env.netns]
    if not mine:
        raise CniError(ERR_CHECK_FAILED, f"prevResult lists no interface {env.ifname} in {env.netns}")
    want_mac = str(ifaces[mine[0]].get("mac", "")).lower()
    want_ips = {str(ipaddress.ip_interface(ip["address"])) for ip in prev.get("ips") or []
                if isinstance(ip, dict) and ip.get("interface", mine[0]) == mine[0]}
    if port["mac"] != want_mac:
        raise CniError(ERR_CHECK_FAILED, f"port {name} has MAC {port['mac']}, prevResult says {want_mac}")
    if {str(ipaddress.ip_interface(ip)) for ip in port["ips"]} != want_ips:
        raise CniError(ERR_CHECK_FAILED, f"port {name} has addresses {sorted(port['ips'])}, prevResult says {sorted(want_ips)}")
    seen = run_in_netns(netns, _kernel_view, env.ifname)
    if seen is None:
        raise CniError(ERR_CHECK_FAILED, f"{env.ifname} is gone from {env.netns}")
    mac, addrs = seen
    if mac != want_mac or not want_ips <= addrs:
        raise CniError(ERR_CHECK_FAILED, f"{env.ifname} in {env.netns} has MAC {mac} and addresses {sorted(addrs)}, "
                                         f"prevResult says {want_mac} and {sorted(want_ips)}")
    if conf.ipam is not None:
        Ipam(conf, env.path).call("CHECK", {})


def cmd_status(conf: NetConf, env: Env) -> None:
    why = Vswitchd(conf.socket).reachable()
    if why is not None:
        raise CniError(ERR_NOT_AVAILABLE, f"vswitchd is not reachable on {conf.socket}: containers cannot be added", why)
    if conf.ipam is not None:
        Ipam(conf, env.path).call("STATUS", {})


def cmd_version(stdin: bytes) -> dict[str, Any]:
    try:
        asked = json.loads(stdin).get("cniVersion") if stdin.strip() else None
    except (ValueError, AttributeError):
        asked = None
    version = asked if asked in SUPPORTED_VERSIONS else SPEC_VERSION
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# ---- entry point --------------------------------------------------------------------


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """(exit status, what to print) for one invocation."""
    version = SPEC_VERSION
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            return 0, cmd_version(stdin)
        raw = decode_stdin(stdin)
        version = raw["cniVersion"] if raw.get("cniVersion") in SUPPORTED_VERSIONS else SPEC_VERSION
        check_version(raw)
        # DEL must work with whatever ADD was given, even an IPAM section it could not use.
        conf = parse_netconf(raw, need_ipam_type=env.command != "DEL")
        since = SINCE.get(env.command)
        if since is not None and version_key(conf.cni_version) < version_key(since):
            raise CniError(ERR_INVALID_CONFIG, f"{env.command} needs cniVersion {since} or later, config is {conf.cni_version}")
        if env.command == "ADD":
            return 0, cmd_add(conf, env)
        if env.command == "DEL":
            cmd_del(conf, env)
        elif env.command == "CHECK":
            cmd_check(conf, env)
        elif env.command == "STATUS":
            cmd_status(conf, env)
        elif env.command == "GC":
            cmd_gc(conf, env)
        return 0, None
    except CniError as e:
        return 1, e.to_dict(version)


def main() -> int:
    try:
        stdin = sys.stdin.buffer.read()
    except OSError as e:
        err = CniError(5, "cannot read the network config from stdin", e.strerror or str(e))
        print(json.dumps(err.to_dict(SPEC_VERSION)))
        return 1
    status, out = run(os.environ, stdin)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
