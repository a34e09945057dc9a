"""Counts the VXLAN datagrams that cross an underlay, by what their inner frame is.

Run inside the underlay namespace; every host's veth end there (named u*)
receives what that host sends, so each datagram is counted once, as it
leaves its sender. Inner frames are sorted into:

- arp:              ARP (requests and replies),
- group:            other broadcast/multicast destinations,
- unknown_unicast:  a unicast frame sent to a VTEP that does not hold its
                    destination MAC (a copy made by flooding),
- unicast:          a unicast frame sent to the VTEP that holds it.

Usage: underlay_count.py OWNERS_JSON   ({mac: vtep ip}); prints the counts
as JSON on stdout when it gets SIGTERM.
"""
from __future__ import annotations

import json
import signal
import socket
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
VXLAN_PORT = 4789


def classify(frame: bytes, owners: dict[bytes, str]) -> str | None:
    if len(frame) < 14 + 20 + 8 + 8 + 14 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    if int.from_bytes(frame[udp + 2:udp + 4], "big") != VXLAN_PORT:
        return None
    inner = frame[udp + 8 + 8:]
    if inner[12:14] == b"\x08\x06":
        return "arp"
    if inner[0] & 1:
        return "group"
    return "unicast" if owners.get(inner[:6]) == socket.inet_ntoa(frame[30:34]) else "unknown_unicast"


def main() -> int:
    owners = {bytes.fromhex(m.replace(":", "")): ip for m, ip in json.loads(sys.argv[1]).items()}
    counts = {"arp": 0, "group": 0, "unknown_unicast": 0, "unicast": 0}
    done = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal done
        done = True
    signal.signal(signal.SIGTERM, stop)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.settimeout(0.2)
    print("ready", file=sys.stderr, flush=True)
    while not done:
        try:
            frame, addr = s.recvfrom(65535)
        except (socket.timeout, InterruptedError):
            continue
        if not addr[0].startswith("u") or addr[2] == PACKET_OUTGOING:
            continue
        kind = classify(frame, owners)
        if kind is not None:
            counts[kind] += 1
    json.dump(counts, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
