"""Runs the forwarding loop in its own thread and tells whether it is alive.

The loop is the switch: if it ends without being asked to, every container
is cut off while the process looks fine. So its end is reported (to the
daemon, which exits non-zero for its supervisor to restart it) and its
progress is watched through the loop's own clock (``Datapath.last_turn_ns``,
written once per turn, at least every 100 ms even when idle): a loop that
has not turned for ``stall_after_s`` is stalled, whatever the rest of the
process does.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Protocol

log = logging.getLogger("vswitch.liveness")

# A healthy loop turns every 100 ms; the control plane may hold the loop's lock
# for a while (a port being attached), so only a much longer silence counts.
STALL_AFTER_S = 5.0

STARTING, RUNNING, STALLED, STOPPED, FAILED = "starting", "running", "stalled", "stopped", "failed"

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Loop(Protocol):
    """What is needed of fastpath.Datapath."""

    @property
    def last_turn_ns(self) -> int: ...

    @property
    def io_mode(self) -> str: ...

    def run(self) -> None: ...


def classify(ended: bool, error: str | None, last_turn_ns: int, now_ns: int, stall_after_s: float) -> str:
    """The loop's state from what is known of it (see the module docstring)."""
    if ended:
        return FAILED if error is not None else STOPPED
    if last_turn_ns == 0:
        return STARTING
    return STALLED if now_ns - last_turn_ns > stall_after_s * 1e9 else RUNNING


def thread_cpu_seconds(native_id: int) -> float | None:
    """User + system CPU time of one of this process's threads, or None once it is gone."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLK_TCK


class LoopRunner:
    """Runs ``loop.run()`` in a thread named "datapath" and reports how it is doing.

    ``on_exit(error)`` is called from that thread when run() returns (error
    None: a requested stop) or raises (error: why it failed).
    """

    def __init__(self, loop: Loop, on_exit: Callable[[str | None], None] | None = None,
                 stall_after_s: float = STALL_AFTER_S) -> None:
        self._loop = loop
        self._on_exit = on_exit
        self.stall_after_s = stall_after_s
        self._ended = threading.Event()
        self._error: str | None = None
        self._cpu_at_exit: float | None = None
        self._thread = threading.Thread(target=self._run, name="datapath", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop.run()
        except Exception as e:  # whatever it was, the switch no longer forwards
            self._error = str(e) or type(e).__name__
            log.error("the forwarding loop ended: %s", self._error)
        finally:
            native_id = threading.get_native_id()
            self._cpu_at_exit = thread_cpu_seconds(native_id)
            self._ended.set()
            if self._on_exit is not None:
                self._on_exit(self._error)

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def state(self) -> str:
        return classify(self.ended, self._error, self._loop.last_turn_ns, time.monotonic_ns(), self.stall_after_s)

    def healthy(self) -> bool:
        return self.state() == RUNNING

    def wait_turning(self, timeout: float) -> bool:
        """Wait until the loop has turned once (or ended); True if it turns."""
        deadline = time.monotonic() + timeout
        while self._loop.last_turn_ns == 0 and not self.ended:
            if time.monotonic() >= deadline:
                return False
            # The first turn comes within one wait of the loop, at most 100 ms.
            self._ended.wait(0.005)
        return not self.ended

    def health(self) -> dict[str, Any]:
        """State, I/O mode, seconds since the latest turn (None before the first) and, once failed, why."""
        last = self._loop.last_turn_ns
        now = time.monotonic_ns()
        doc: dict[str, Any] = {
            "state": classify(self.ended, self._error, last, now, self.stall_after_s),
            "io_mode": self._loop.io_mode,
            "last_turn_age_s": None if last == 0 else round(max(0, now - last) / 1e9, 6),
            "stall_after_s": self.stall_after_s,
        }
        if self._error is not None:
            doc["error"] = self._error
        return doc

    def cpu_seconds(self) -> float | None:
        """CPU time the loop's thread has used (busy polling shows here); None before it started."""
        if self.ended:
            return self._cpu_at_exit
        native_id = self._thread.native_id
        return None if native_id is None else thread_cpu_seconds(native_id)
