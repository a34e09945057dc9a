"""Drive the compiled forwarding loop over socketpairs, without root.

Each port is one end of an AF_UNIX SOCK_SEQPACKET pair (it keeps frame
boundaries, like a TAP); the test holds the other end.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fastpath import Datapath
from rawframes import recv_waiting


class LoopRig:
    def __init__(self, max_ports: int = 64, mac_table_size: int = 1024, mac_aging_s: float = 300.0,
                 busy_poll_us: int = 0, io_mode: str = "poll", **datapath_options: int) -> None:
        self.dp = Datapath(max_ports=max_ports, mac_table_size=mac_table_size, mac_aging_s=mac_aging_s,
                           busy_poll_us=busy_poll_us, io_mode=io_mode, **datapath_options)
        self.ends: dict[int, socket.socket] = {}  # port index -> the test's end
        self._switch_ends: dict[int, socket.socket] = {}
        self._thread = threading.Thread(target=self.dp.run, daemon=True)
        self._thread.start()

    def add_port(self, network: int, mtu: int = 1500, vnet_hdr: bool = False, buffer_bytes: int = 4 << 20,
                 waiting: tuple[bytes, ...] = (), trunk: dict[int, int] | None = None, native: int = 0) -> int:
        """A port whose socket buffers hold buffer_bytes (the default has room
        for a burst of large frames, so writes do not fail on a full buffer),
        with the frames `waiting` already queued when the switch attaches it.
        With trunk ({network: VID}), a trunk port (network 0) with that native network."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        for frame in waiting:
            ours.send(frame)
        if trunk is None:
            idx = self.dp.add_port(theirs.fileno(), network, mtu, vnet_hdr)
        else:
            idx = self.dp.add_port(theirs.fileno(), network, mtu, vnet_hdr, trunk=trunk, native=native)
        self.ends[idx] = ours
        self._switch_ends[idx] = theirs
        return idx

    def remove_port(self, idx: int) -> None:
        self.dp.remove_port(idx)
        self._switch_ends.pop(idx).close()
        self.ends.pop(idx).close()

    def frames_done(self) -> int:
        return self.dp.loop_stats()["frames"]

    def wait_frames(self, target: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.frames_done() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"loop handled {self.frames_done()} frames, expected {target}")
            time.sleep(0.0005)

    def send(self, idx: int, frame: bytes) -> None:
        """Send one frame into port idx and wait until the loop has handled it."""
        before = self.frames_done()
        self.ends[idx].send(frame)
        self.wait_frames(before + 1)

    def recv_all(self, idx: int) -> list[bytes]:
        return recv_waiting(self.ends[idx])

    def drain(self) -> dict[int, list[bytes]]:
        return {idx: self.recv_all(idx) for idx in self.ends}

    def close(self) -> None:
        self.dp.stop()
        self._thread.join(timeout=5)
        for s in list(self.ends.values()) + list(self._switch_ends.values()):
            s.close()


@pytest.fixture
def rig(io_mode: str) -> Iterator[LoopRig]:
    """A LoopRig in the io_mode under test, closed after the test."""
    r = LoopRig(io_mode=io_mode)
    yield r
    r.close()
