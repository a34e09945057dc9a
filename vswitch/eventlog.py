"""Logs the datapath's events (MAC moves, table full, traffic from unknown peers)
without letting a storm flood the log.

Each kind of event may log `burst` lines per `window_s`; past that, events
are only counted, and one summary line per window says how many were held
back, written when the window ends (`tick()`, called by the watcher) even if
the storm has stopped. A storm of any size therefore costs at most burst + 1
lines per kind per window.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from typing import Callable

log = logging.getLogger("vswitch.events")


def _ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value.to_bytes(4, "little")))


class EventLog:
    def __init__(self, describe_out: Callable[[int], str], burst: int = 5, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._describe_out = describe_out
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._window_start: dict[str, float] = {}
        self._logged: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self.lines = 0  # lines written, for tests and for the curious

    def _emit(self, level: int, msg: str, *args: object) -> None:
        self.lines += 1
        log.log(level, msg, *args)

    def _allow(self, kind: str, count: int = 1) -> bool:
        """Whether a line about `count` events of `kind` may be written now; if not, they are held."""
        now = self._clock()
        if now - self._window_start.get(kind, -1e18) >= self._window_s:
            self.flush(kind)
            self._window_start[kind] = now
            self._logged[kind] = 0
        if self._logged[kind] < self._burst:
            self._logged[kind] += 1
            return True
        self._held[kind] = self._held.get(kind, 0) + count
        return False

    def tick(self) -> None:
        """Write the summary of every window that has ended with events held back."""
        now = self._clock()
        for kind in [k for k, held in self._held.items() if held]:
            if now - self._window_start[kind] >= self._window_s:
                self.flush(kind)

    def flush(self, kind: str | None = None) -> None:
        """Write the summary of what a window held back."""
        for k in [kind] if kind else list(self._held):
            held = self._held.pop(k, 0)
            if not held:
                continue
            if k == "lost":
                self._emit(logging.WARNING, "%d more datapath events were overwritten in the last %.0fs", held,
                           self._window_s)
            else:
                self._emit(logging.WARNING, "%d more %s events in the last %.0fs were not logged", held, k,
                           self._window_s)

    def record(self, kind: str, network: str | None, mac: str | None, a: int, b: int) -> None:
        if not self._allow(kind):
            return
        if kind == "mac_moved":
            self._emit(logging.INFO, "MAC %s in network %s moved from %s to %s",
                       mac, network, self._describe_out(a), self._describe_out(b))
        elif kind == "table_full":
            self._emit(logging.WARNING, "MAC table full: %s in network %s (from %s) not learned",
                       mac, network, self._describe_out(a))
        elif kind == "unknown_peer":
            self._emit(logging.WARNING, "VXLAN packet for VNI %d from %s, which is not a peer of it: dropped", b, _ip(a))
        elif kind == "unknown_vni":
            self._emit(logging.WARNING, "VXLAN packet from %s for unknown VNI %d: dropped", _ip(a), b)

    def lost(self, n: int) -> None:
        if n and self._allow("lost", n):
            self._emit(logging.WARNING, "%d datapath events were overwritten before they could be logged", n)
