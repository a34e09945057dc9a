"""Where vswitchd's memory goes: a debugging aid, off unless VSWITCH_MEMDEBUG names a directory.

When on, tracemalloc traces every Python allocation from start, and each SIGUSR1
writes memdebug-N.txt into that directory: RSS, glibc's malloc statistics
(mallinfo2) before and after malloc_trim(0), live Python objects by type against
the previous dump, and the allocation sites that grew most since the previous
dump. Growth that malloc_trim gives back is allocator fragmentation; growth that
tracemalloc or the object counts show is live Python objects; growth in malloc's
bytes in use that neither shows is C allocations (the datapath's, say).

When off, the daemon never imports this module: nothing is traced or installed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import linecache
import logging
import os
import signal
import time
import tracemalloc
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

MEMDEBUG_ENV = "VSWITCH_MEMDEBUG"
TRACE_FRAMES = 16
TOP_SITES = 25
TOP_TYPES = 25


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class MemDebug:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._libc = _libc()
        self._seq = 0
        tracemalloc.start(TRACE_FRAMES)
        self._snapshot = tracemalloc.take_snapshot()
        self._types = self._count_types()

    def _mallinfo(self) -> dict[str, int]:
        if self._libc is None or not hasattr(self._libc, "mallinfo2"):
            return {}
        self._libc.mallinfo2.restype = _Mallinfo2
        mi = self._libc.mallinfo2()
        # uordblks: bytes malloc has handed out and not got back; arena + hblkhd: what it holds from the kernel.
        return {"in_use": mi.uordblks, "free_in_heap": mi.fordblks, "heap": mi.arena, "mmapped": mi.hblkhd}

    @staticmethod
    def _count_types() -> Counter[str]:
        return Counter(type(o).__qualname__ for o in gc.get_objects())

    def dump(self) -> Path:
        """Write the next report; returns its path."""
        self._seq += 1
        lines = [f"memdebug {self._seq} at {time.strftime('%Y-%m-%dT%H:%M:%S')}"]
        rss_before, mi_before = rss_kib(), self._mallinfo()
        traced, peak = tracemalloc.get_traced_memory()
        lines.append(f"rss_kib {rss_before}")
        lines.append(f"tracemalloc_traced {traced} peak {peak}")
        lines.append("mallinfo2 " + " ".join(f"{k} {v}" for k, v in mi_before.items()))
        if self._libc is not None:
            self._libc.malloc_trim(0)
            lines.append(f"after malloc_trim(0): rss_kib {rss_kib()} mallinfo2 "
                         + " ".join(f"{k} {v}" for k, v in self._mallinfo().items()))
        gc.collect()
        types = self._count_types()
        lines.append(f"gc objects {sum(types.values())} (previous {sum(self._types.values())})")
        grown = sorted(((n - self._types.get(t, 0), t, n) for t, n in types.items()), reverse=True)[:TOP_TYPES]
        lines += [f"  {d:+8d} {t} ({n})" for d, t, n in grown if d]
        self._types = types
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        diffs = snap.compare_to(self._snapshot, "traceback")[:TOP_SITES]
        lines.append(f"top {TOP_SITES} allocation sites by growth since the previous dump:")
        for d in diffs:
            lines.append(f"  {d.size_diff:+10d} B {d.count_diff:+7d} blocks (now {d.size} B in {d.count})")
            lines += ["      " + line for line in d.traceback.format(limit=6)]
        self._snapshot = snap
        linecache.clearcache()  # the source lines just read for the report must not count as growth next time
        path = self.dir / f"memdebug-{self._seq}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)  # whoever waits for the file sees it whole
        return path


def install(directory: str) -> MemDebug:
    """Start tracing and dump on SIGUSR1 (the handler runs in the main thread)."""
    md = MemDebug(Path(directory))

    def on_signal(_signum: int, _frame: object) -> None:
        try:
            log.info("memdebug: wrote %s", md.dump())
        except OSError as e:
            log.warning("memdebug: cannot write a report: %s", e)

    signal.signal(signal.SIGUSR1, on_signal)
    log.warning("memdebug on: tracing allocations; SIGUSR1 writes a report into %s", directory)
    return md
