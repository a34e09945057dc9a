"""Driving the vswitch CNI plugin as a container runtime does, and checking its answers
against the CNI spec's result, error and version shapes."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

CNI_BIN = "/usr/lib/cni"
PLUGIN = str(Path(sys.executable).parent / "vswitch-cni")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
PLUGIN_TIMEOUT_S = 60.0


@dataclass
class Invocation:
    status: int
    out: Any  # decoded stdout (None when empty)
    stderr: str


def run_plugin(plugin: str, command: str, conf: Mapping[str, Any] | bytes, env: Mapping[str, str],
               cni_path: str = CNI_BIN, netns: str | None = None) -> Invocation:
    """One plugin run: CNI_* from env (CNI_PATH defaults to Debian's plugins), conf on stdin;
    in namespace `netns` (a path) when given, as a runtime living there would run it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full_env.update({"CNI_COMMAND": command, "CNI_PATH": cni_path, **env})
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    argv = [plugin] if netns is None else ["nsenter", f"--net={netns}", plugin]
    proc = subprocess.run(argv, input=data, env=full_env, capture_output=True, timeout=PLUGIN_TIMEOUT_S)
    text = proc.stdout.decode().strip()
    return Invocation(proc.returncode, json.loads(text) if text else None, proc.stderr.decode())


@dataclass
class Attachment:
    """One (container ID, netns, ifname) as a runtime gives it to the plugin."""

    container_id: str
    netns: str  # a path
    ifname: str = "eth0"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"CNI_CONTAINERID": self.container_id, "CNI_NETNS": self.netns, "CNI_IFNAME": self.ifname, **self.extra}


# ---- the spec's shapes ------------------------------------------------------------------------


def _is_cidr(value: Any) -> bool:
    try:
        return isinstance(value, str) and "/" in value and bool(ipaddress.ip_interface(value))
    except ValueError:
        return False


def _is_ip(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool(ipaddress.ip_address(value))
    except ValueError:
        return False


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def result_problems(doc: Any, version: str) -> list[str]:
    """What makes `doc` not an ADD success result of CNI `version` (empty: it is one)."""
    if not isinstance(doc, dict):
        return [f"result is {type(doc).__name__}, not an object"]
    problems = []
    extra = set(doc) - {"cniVersion", "interfaces", "ips", "routes", "dns"}
    if extra:
        problems.append(f"unknown keys {sorted(extra)}")
    if doc.get("cniVersion") != version:
        problems.append(f"cniVersion {doc.get('cniVersion')!r} is not the input's {version!r}")
    modern = tuple(int(p) for p in version.split(".")) >= (1, 0, 0)
    ifaces = doc.get("interfaces", [])
    if not isinstance(ifaces, list):
        return problems + ["interfaces is not a list"]
    for i, iface in enumerate(ifaces):
        if not isinstance(iface, dict) or not isinstance(iface.get("name"), str) or not iface["name"]:
            problems.append(f"interfaces[{i}] has no name")
            continue
        if "mac" in iface and not (isinstance(iface["mac"], str) and MAC_RE.fullmatch(iface["mac"])):
            problems.append(f"interfaces[{i}].mac {iface['mac']!r} is not a MAC")
        if "sandbox" in iface and not isinstance(iface["sandbox"], str):
            problems.append(f"interfaces[{i}].sandbox is not a string")
        if "mtu" in iface and not (version == "1.1.0" and _is_uint(iface["mtu"])):
            problems.append(f"interfaces[{i}].mtu {iface['mtu']!r} is not allowed in {version} or not a uint")
        unknown = set(iface) - {"name", "mac", "mtu", "sandbox", "socketPath", "pciID"}
        if unknown:
            problems.append(f"interfaces[{i}] has unknown keys {sorted(unknown)}")
    for i, ip in enumerate(doc.get("ips", [])):
        if not isinstance(ip, dict) or not _is_cidr(ip.get("address")):
            problems.append(f"ips[{i}].address is not a CIDR address")
            continue
        if "gateway" in ip and not _is_ip(ip["gateway"]):
            problems.append(f"ips[{i}].gateway {ip['gateway']!r} is not an IP")
        if "interface" in ip and not (_is_uint(ip["interface"]) and ip["interface"] < len(ifaces)):
            problems.append(f"ips[{i}].interface {ip.get('interface')!r} is not an index into interfaces")
        family = str(ipaddress.ip_interface(ip["address"]).version)
        if modern and "version" in ip:
            problems.append(f"ips[{i}].version is gone in {version}")
        if not modern and ip.get("version") != family:
            problems.append(f"ips[{i}].version {ip.get('version')!r} should be {family!r} in {version}")
    for i, route in enumerate(doc.get("routes", [])):
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            problems.append(f"routes[{i}] has no dst")
            continue
        try:
            ipaddress.ip_network(route["dst"])
        except ValueError:
            problems.append(f"routes[{i}].dst {route['dst']!r} is not a network")
        if "gw" in route and not _is_ip(route["gw"]):
            problems.append(f"routes[{i}].gw {route['gw']!r} is not an IP")
    dns = doc.get("dns", {})
    if not isinstance(dns, dict) or set(dns) - {"nameservers", "domain", "search", "options"}:
        problems.append(f"dns {dns!r} is not a DNS object")
    return problems


def error_problems(doc: Any) -> list[str]:
    """What makes `doc` not a CNI error object."""
    if not isinstance(doc, dict):
        return [f"error is {type(doc).__name__}, not an object"]
    problems = []
    if set(doc) - {"cniVersion", "code", "msg", "details"}:
        problems.append(f"unknown keys {sorted(set(doc) - {'cniVersion', 'code', 'msg', 'details'})}")
    if not _is_uint(doc.get("code")) or doc["code"] == 0:
        problems.append(f"code {doc.get('code')!r} is not a positive integer")
    if not isinstance(doc.get("msg"), str) or not doc["msg"].strip():
        problems.append("msg is missing or empty")
    if "details" in doc and not isinstance(doc["details"], str):
        problems.append("details is not a string")
    if not isinstance(doc.get("cniVersion"), str):
        problems.append("cniVersion is missing")
    return problems


def version_problems(doc: Any, asked: str) -> list[str]:
    if not isinstance(doc, dict) or set(doc) != {"cniVersion", "supportedVersions"}:
        return [f"{doc!r} is not a VERSION answer"]
    problems = []
    if doc["cniVersion"] != asked:
        problems.append(f"cniVersion {doc['cniVersion']!r} is not the asked {asked!r}")
    if not isinstance(doc["supportedVersions"], list) or asked not in doc["supportedVersions"]:
        problems.append(f"supportedVersions {doc['supportedVersions']!r} lacks {asked}")
    return problems


def leases(data_dir: Path, network: str) -> list[str]:
    """The addresses host-local holds in data_dir for a CNI network."""
    d = data_dir / network
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if _is_ip(p.name))
