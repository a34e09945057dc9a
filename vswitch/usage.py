"""Per-port use over the last minute, from the counters the loop keeps.

The control plane samples every port's byte and frame counters about once a
second; a port's current rate is the latest interval's, its peak the highest
interval's in the window. Rates are bit/s and frames/s, rx being what the
port sent the switch and tx what the switch sent it. A counter that went
down (the port was re-attached and its counters started afresh) starts its
history again rather than showing a negative rate.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Mapping

WINDOW_S = 60.0
FIELDS = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
RATES = (("rx_bps", "rx_bytes", 8), ("rx_fps", "rx_packets", 1), ("tx_bps", "tx_bytes", 8), ("tx_fps", "tx_packets", 1))


class UsageMeter:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._samples: dict[str, deque[tuple[float, tuple[int, ...]]]] = {}

    def sample(self, counters: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Record each port's counters at monotonic time `now`; ports not given are forgotten."""
        with self._lock:
            for name in set(self._samples) - set(counters):
                del self._samples[name]
            for name, c in counters.items():
                values = tuple(int(c[f]) for f in FIELDS)
                hist = self._samples.setdefault(name, deque())
                if hist and any(v < old for v, old in zip(values, hist[-1][1])):
                    hist.clear()
                hist.append((now, values))
                while hist and now - hist[0][0] > self.window_s:
                    hist.popleft()

    def view(self, name: str) -> dict[str, float]:
        """Current and peak rates of a port (all 0 until two samples are in)."""
        with self._lock:
            hist = list(self._samples.get(name, ()))
        out = {key: 0.0 for key, _, _ in RATES}
        out.update({f"peak_{key}": 0.0 for key, _, _ in RATES})
        for (t0, a), (t1, b) in zip(hist, hist[1:]):
            dt = t1 - t0
            if dt <= 0:
                continue
            for key, field, scale in RATES:
                i = FIELDS.index(field)
                rate = (b[i] - a[i]) * scale / dt
                out[key] = rate  # the last interval's is the current rate
                out[f"peak_{key}"] = max(out[f"peak_{key}"], rate)
        out["window_s"] = hist[-1][0] - hist[0][0] if len(hist) > 1 else 0.0
        return out
