"""A reference model of the forwarding rules, in plain Python.

It is a test oracle, not a fallback: the compiled loop must make exactly the
decisions this model makes (which ports receive which frame, what the FDB
holds afterwards). It also stands in for "the same decision loop in Python"
in the benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ETH_HLEN = 14
VLAN_TPIDS = (0x8100, 0x88A8)


@dataclass
class Entry:
    out: int
    last_seen_ms: int
    static: bool = False


@dataclass
class ModelSwitch:
    capacity: int
    aging_ms: int
    ports: dict[int, tuple[int, int]] = field(default_factory=dict)  # port -> (network, mtu)
    fdb: dict[tuple[int, bytes], Entry] = field(default_factory=dict)
    drops: dict[tuple[int, str], int] = field(default_factory=dict)
    learned: int = 0
    moved: int = 0
    refused: int = 0

    def add_port(self, port: int, network: int, mtu: int = 1500) -> None:
        self.ports[port] = (network, mtu)

    def remove_port(self, port: int) -> None:
        del self.ports[port]
        for key in [k for k, e in self.fdb.items() if e.out == port]:
            del self.fdb[key]

    def _drop(self, port: int, reason: str) -> dict[int, bytes]:
        self.drops[(port, reason)] = self.drops.get((port, reason), 0) + 1
        return {}

    def _live(self, key: tuple[int, bytes], now_ms: int) -> Entry | None:
        e = self.fdb.get(key)
        if e is not None and not e.static and now_ms - e.last_seen_ms >= self.aging_ms:
            del self.fdb[key]
            return None
        return e

    def forward(self, in_port: int, frame: bytes, now_ms: int = 0) -> dict[int, bytes]:
        """{out_port: frame} for one frame received on in_port."""
        network, mtu = self.ports[in_port]
        if len(frame) < ETH_HLEN:
            return self._drop(in_port, "runt")
        tpid = int.from_bytes(frame[12:14], "big")
        tagged = tpid in VLAN_TPIDS
        if tagged and len(frame) < ETH_HLEN + 4:
            return self._drop(in_port, "runt")
        if len(frame) > mtu + ETH_HLEN + (4 if tagged else 0):
            return self._drop(in_port, "too_big")
        dst, src = frame[0:6], frame[6:12]
        if src[0] & 1:
            return self._drop(in_port, "src_multicast")
        if tagged:
            return self._drop(in_port, "vlan_tagged")
        self._learn((network, src), in_port, now_ms)
        if dst[0] & 1:
            return self._flood(in_port, network, frame)
        e = self._live((network, dst), now_ms)
        if e is None or e.out not in self.ports:
            return self._flood(in_port, network, frame)
        if e.out == in_port:
            return self._drop(in_port, "same_port")
        return {e.out: frame}

    def _learn(self, key: tuple[int, bytes], port: int, now_ms: int) -> None:
        e = self._live(key, now_ms)
        if e is None:
            if len(self.fdb) >= self.capacity:
                self.refused += 1
                return
            self.fdb[key] = Entry(port, now_ms)
            self.learned += 1
        elif e.static:
            return
        else:
            e.last_seen_ms = now_ms
            if e.out != port:
                e.out = port
                self.moved += 1

    def _flood(self, in_port: int, network: int, frame: bytes) -> dict[int, bytes]:
        return {p: frame for p, (net, _) in self.ports.items() if net == network and p != in_port}

    def fdb_snapshot(self, now_ms: int = 0) -> set[tuple[int, bytes, int, bool]]:
        return {
            (net, mac, e.out, e.static)
            for (net, mac), e in self.fdb.items()
            if e.static or now_ms - e.last_seen_ms < self.aging_ms
        }
