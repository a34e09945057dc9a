"""Port captures through the control API, and the nanosecond pcap they stream."""
from __future__ import annotations

import struct
import urllib.parse
from typing import Any, Iterator

from tests.harness.daemon import Vswitchd
from vswitch.client import Client

STREAM_IDLE_S = 10.0
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD = struct.Struct("<IIII")


def read_pcap(data: bytes) -> list[tuple[int, bytes]]:
    """(ns timestamp, frame) of each record of a nanosecond pcap; asserts the format on the way."""
    magic, major, minor, _zone, _sigfigs, _snaplen, linktype = PCAP_HEADER.unpack_from(data)
    assert (magic, major, minor, linktype) == (PCAP_MAGIC_NS, 2, 4, 1)
    records, off = [], PCAP_HEADER.size
    while off < len(data):
        sec, nsec, caplen, origlen = PCAP_RECORD.unpack_from(data, off)
        assert caplen == origlen and nsec < 10**9
        off += PCAP_RECORD.size
        records.append((sec * 10**9 + nsec, data[off:off + caplen]))
        off += caplen
    assert off == len(data), "the pcap ends inside a record"
    return records


def open_capture(daemon: Vswitchd, port: str, **query: Any) -> tuple[bytes, Iterator[bytes]]:
    """Start a capture through the API; returns (first chunk, the rest) once it runs:
    the switch mirrors before it answers, so the arrival of the pcap header proves it."""
    path = f"/v1/ports/{port}/capture" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    chunks = Client(daemon.socket_path, timeout=10).stream(path, idle_timeout=STREAM_IDLE_S)
    return next(chunks), chunks
