"""vswitch/allocator.py: after a large block is freed, the next one is still mapped on its own
(and so goes back to the kernel when freed) instead of being carved out of the malloc heap."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In a fresh interpreter: free one 256 KiB receive buffer (as asyncio's datagram transport
# makes for every netlink read), then count how many blocks malloc maps for the next one.
PROBE = """
import ctypes, ctypes.util, socket, sys
from vswitch.allocator import keep_large_blocks_mapped
if sys.argv[1] == "fixed":
    assert keep_large_blocks_mapped()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.send(b"x" * 100)
first = bytearray(256 * 1024)
b.recv_into(first)
del first
before = libc.mallinfo2().hblks
second = bytearray(256 * 1024)
print(libc.mallinfo2().hblks - before)
"""


def _mapped_for_second_buffer(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_a_large_buffer_stays_mapped_after_one_was_freed() -> None:
    # glibc's default: the freed block raised the threshold, the next one comes from the heap.
    assert _mapped_for_second_buffer("default") == 0
    assert _mapped_for_second_buffer("fixed") == 1
