"""Send frames from COUNT distinct source MACs out of an interface, so a switch learns them all.

    ip netns exec NS python bench/learn_flood.py --ifname eth0 --dst MAC --count N

Run inside a container's namespace (its /sys is the namespace's). The frames
carry the local experimental EtherType 0x88b5 and go to `--dst`; a switch that
knows `--dst` behind the sending port drops them after learning (same port),
so filling the FDB costs no forwarding. Frames go in chunks: a chunk during
which the interface dropped any (the switch did not read them in time) is sent
again after a pause, so every MAC reaches the switch.
"""
from __future__ import annotations

import argparse
import errno
import socket
import struct
import sys
import time
from pathlib import Path

ETHERTYPE = 0x88B5
SRC_BASE = 0x02BB00000000  # locally administered, unicast
CHUNK = 256
PAUSE_S = 0.002
DEADLINE_S = 60.0


def mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def send(s: socket.socket, frame: bytes) -> None:
    while True:
        try:
            s.send(frame)
            return
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            time.sleep(PAUSE_S)  # the qdisc is full for now


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ifname", required=True)
    ap.add_argument("--dst", required=True, help="destination MAC")
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args()
    dst = mac_bytes(args.dst)
    tail = struct.pack("!H", ETHERTYPE) + bytes(46)
    dropped = Path(f"/sys/class/net/{args.ifname}/statistics/tx_dropped")
    deadline = time.monotonic() + DEADLINE_S
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((args.ifname, 0))
        start = 0
        while start < args.count:
            if time.monotonic() > deadline:
                print(f"learn_flood: {start} of {args.count} MACs sent in {DEADLINE_S:g} s", file=sys.stderr)
                return 1
            before = int(dropped.read_text())
            for i in range(start, min(start + CHUNK, args.count)):
                send(s, dst + (SRC_BASE + i).to_bytes(6, "big") + tail)
            if int(dropped.read_text()) == before:
                start += CHUNK
            else:
                time.sleep(PAUSE_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
