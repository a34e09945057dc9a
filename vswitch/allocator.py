"""glibc malloc set up for a daemon whose control plane churns large, short-lived buffers.

Every netlink exchange (a port added or removed, its addresses set) reads through
asyncio's datagram transport, which receives into a 256 KiB buffer and shrinks it
to the message. glibc serves blocks over its mmap threshold (128 KiB) with mmap, but
the first time such a block is freed it raises the threshold above that size, and
from then on those buffers are carved out of the malloc heaps instead, where the
small messages left behind pin the freed space: RSS then climbs with every port
added and removed and is seldom given back. A fixed threshold turns that dynamic
adjustment off, so large buffers stay mapped and go back to the kernel when freed.
The forwarding loop allocates nothing per frame, so nothing hot pays the mmap.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed


def keep_large_blocks_mapped() -> bool:
    """Fix malloc's mmap threshold; False (and nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        log.warning("malloc: the mmap threshold could not be fixed; RSS may creep under port churn")
        return False
    return True
