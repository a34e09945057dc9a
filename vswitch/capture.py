"""Port capture: the datapath mirrors a port's frames into a socket; this
module reads them and writes pcap (the classic libpcap format that tcpdump,
tshark and scapy read).

The datapath writes without waiting: when the reader here falls behind, the
socket fills and further copies are dropped and counted in the port's
`capture_dropped` counter. Forwarding never waits for a capture.
"""
from __future__ import annotations

import select
import socket
import struct
from typing import Callable, Iterator

CAP_HDR = struct.Struct("<QIB3x")  # ns since the epoch, frame length, direction (1 in, 2 out)
DIRECTIONS = {"in": (True, False), "out": (False, True), "both": (True, True)}
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond-resolution timestamps
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535 + 128


def pcap_header() -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def pcap_record(ns: int, frame: bytes) -> bytes:
    sec, nsec = divmod(ns, 1_000_000_000)
    return struct.pack("<IIII", sec, nsec, len(frame), len(frame)) + frame


class Capture:
    """One capture session on one port; close() stops the mirroring."""

    def __init__(self, set_capture: Callable[[int, bool, bool], None], stop: Callable[[], None], direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: {direction!r} is not one of in, out, both")
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Room for a burst; past it copies are dropped, not forwarding.
        self._theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._stop = stop
        self.direction = direction
        self.frames = 0
        self.ended = False  # detached: records() will yield nothing more
        set_capture(self._theirs.fileno(), *DIRECTIONS[direction])

    def fileno(self) -> int:
        return self._ours.fileno()

    def records(self, timeout: float | None = None) -> Iterator[tuple[int, int, bytes]]:
        """(ns, direction, frame) for each frame waiting now, or arriving within timeout."""
        while select.select([self._ours], [], [], timeout)[0]:
            msg = self._ours.recv(SNAPLEN + CAP_HDR.size)
            if not msg:
                self.ended = True  # detached: the port is gone (a port re-added under its name is another)
                return
            self.frames += 1
            ns, length, direction = CAP_HDR.unpack_from(msg)
            yield ns, direction, msg[CAP_HDR.size:CAP_HDR.size + length]
            timeout = 0

    def detach(self) -> None:
        """The port is going away: end the stream. The reader sees the end of
        records() and closes its own end; nothing is closed under its feet."""
        self._theirs.close()

    def close(self) -> None:
        """Called by the reader: stop the mirroring and release both ends."""
        if self._ours.fileno() >= 0:
            self._stop()
            self._theirs.close()
            self._ours.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
