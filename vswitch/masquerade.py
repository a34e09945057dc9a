"""Masquerade for host ports: a network's way out through vswitchd's namespace.

The rules live in one nftables table of vswitch's own (``ip vswitch``), in the
namespace vswitchd runs in. It is rewritten whole, in one atomic ``nft -f``
transaction, whenever the set of masqueraded subnets changes, and deleted when
the last one goes: nothing else's rules are read or touched.
"""
from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from typing import Iterable

from .errors import Conflict

log = logging.getLogger("vswitch.masquerade")

TABLE = "vswitch"
NFT_TIMEOUT_S = 10.0
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def subnets_of(ips: Iterable[str]) -> list[str]:
    """The IPv4 subnets of a port's addresses (masquerade is IPv4 only)."""
    nets = {ipaddress.ip_interface(ip).network for ip in ips}
    return sorted(str(n) for n in nets if n.version == 4)


def ruleset(subnets_by_port: dict[str, list[str]]) -> str:
    """The nft script that makes the table hold exactly these rules (or removes it when empty)."""
    # Declaring the table first makes the delete succeed whether or not it existed.
    lines = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}"]
    rules = [
        # Traffic staying inside the subnet, and multicast, keeps its source address.
        f'    ip saddr {net} ip daddr != {net} ip daddr != 224.0.0.0/4 masquerade comment "port {port}"'
        for port, nets in sorted(subnets_by_port.items()) for net in nets
    ]
    if rules:
        lines += [
            f"table ip {TABLE} {{",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *rules,
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


class Masquerade:
    """The masquerade rules of vswitchd's host ports, applied through the nft CLI."""

    def __init__(self) -> None:
        self._applied: dict[str, list[str]] = {}

    def sync(self, subnets_by_port: dict[str, list[str]]) -> None:
        """Make the table match; Conflict (nothing changed) if nft is missing or refuses."""
        wanted = {port: nets for port, nets in subnets_by_port.items() if nets}
        if wanted == self._applied:
            return
        nft = shutil.which("nft")
        if nft is None:
            raise Conflict("masquerade needs nftables' nft command, which is not installed (Debian: nftables)")
        try:
            proc = subprocess.run([nft, "-f", "-"], input=ruleset(wanted), capture_output=True, text=True,
                                  timeout=NFT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Conflict(f"nft did not finish within {NFT_TIMEOUT_S:g} s; masquerade rules unchanged") from None
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.split())[:300] or f"exit status {proc.returncode}"
            raise Conflict(f"nft refused the masquerade rules: {detail}")
        if wanted and not self._applied:
            _enable_forwarding()
        self._applied = wanted
        log.info("masquerade: %s", ", ".join(f"{n} (port {p})" for p, ns in sorted(wanted.items()) for n in ns) or "none")


def _enable_forwarding() -> None:
    """Masqueraded traffic is routed through this namespace: IPv4 forwarding must be on."""
    try:
        with open(IP_FORWARD) as f:
            if f.read().strip() == "1":
                return
        with open(IP_FORWARD, "w") as f:
            f.write("1\n")
        log.info("IPv4 forwarding turned on in vswitchd's namespace (for masquerade)")
    except OSError as e:
        log.warning("cannot turn on IPv4 forwarding (%s): masqueraded traffic will not be routed", e.strerror)
