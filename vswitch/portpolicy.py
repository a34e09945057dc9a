"""A port's policy as the datapath takes it: the sources its frames may carry.

With port security on, a port's frames must come from its own MAC (or an
allowed one) and, for each IP family the port has addresses of, from one of
those addresses (or an allowed one). When it has IPv6 addresses, the
link-local address the kernel derives from each of its MACs (EUI-64, RFC 4291
appendix A; Linux's default addr_gen_mode) is one of them: Neighbor Discovery
speaks from it.
"""
from __future__ import annotations

import ipaddress

from .model import MAC_RE, PortSpec


def eui64_link_local(mac: str) -> str:
    b = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:6]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def datapath_sources(spec: PortSpec, mac: str) -> tuple[list[str], list[str]]:
    """(MACs, IP addresses) port `spec`, whose interface has `mac`, may send from."""
    allowed = spec.policy.allowed  # type: ignore[union-attr]
    macs = list(dict.fromkeys([mac.lower(), *(a for a in allowed if MAC_RE.fullmatch(a))]))
    ips = [str(ipaddress.ip_interface(ip).ip) for ip in spec.ips]
    ips += [a for a in allowed if not MAC_RE.fullmatch(a)]
    if any(ipaddress.ip_address(a).version == 6 for a in ips):
        ips += [eui64_link_local(m) for m in macs]
    return macs, list(dict.fromkeys(ips))
