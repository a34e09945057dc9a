"""What a supervisor can rely on from the forwarding loop (no root needed):
run() returns only after stop() and raises OSError when the loop ends for
any other reason; last_turn_ns shows the loop turning, idle or not; and
inject_failure() ends it as a failed wait would."""
from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

from fastpath import Datapath
from rawframes import BROADCAST, eth, mac
from tests.harness.wait import wait_until

pytestmark = pytest.mark.io_modes


class Runner:
    """Datapath.run() on a thread of its own, keeping how it ended."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.error: BaseException | None = None
        self.returned = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.dp.run()
            self.returned = True
        except BaseException as e:  # noqa: BLE001 - kept for the test to look at
            self.error = e

    def join(self) -> None:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "run() did not end"


def test_run_returns_none_only_after_stop(io_mode):
    dp = Datapath(io_mode=io_mode)
    runner = Runner(dp)
    try:
        wait_until(lambda: dp.last_turn_ns, message="the loop never turned")
        # Turning over and over while idle, it has not returned.
        first = dp.last_turn_ns
        wait_until(lambda: dp.last_turn_ns > first, message="the loop stopped turning")
        assert runner.thread.is_alive() and not runner.returned
    finally:
        dp.stop()
        runner.join()
    assert runner.returned and runner.error is None
    assert not dp.loop_stats()["running"]


def test_last_turn_ns_is_zero_before_the_loop_and_moves_while_it_idles(io_mode):
    dp = Datapath(io_mode=io_mode)
    assert dp.last_turn_ns == 0
    runner = Runner(dp)
    try:
        seen = [wait_until(lambda: dp.last_turn_ns, message="the loop never turned")]
        for _ in range(3):  # no frame arrives: only the sweep interval turns it
            seen.append(wait_until(lambda: dp.last_turn_ns > seen[-1] and dp.last_turn_ns,
                                   message="last_turn_ns stood still while the loop idled"))
        assert seen == sorted(seen) and seen[-1] <= time.monotonic_ns()
        assert dp.loop_stats()["frames"] == 0
    finally:
        dp.stop()
        runner.join()


def test_an_injected_failure_ends_the_loop_with_oserror(io_mode):
    dp = Datapath(io_mode=io_mode)
    with pytest.raises(ValueError):
        dp.inject_failure(0)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    runner = None
    try:
        for _, theirs in pairs:
            dp.add_port(theirs.fileno(), 1)
        runner = Runner(dp)
        frame = eth(BROADCAST, mac(1))
        pairs[0][0].send(frame)
        pairs[1][0].settimeout(10)
        assert pairs[1][0].recv(2048) == frame  # the loop forwards until the failure
        dp.inject_failure(errno.EIO)
        runner.join()
        assert isinstance(runner.error, OSError) and runner.error.errno == errno.EIO, runner.error
        assert str(runner.error).startswith("[Errno 5] datapath loop failed: ")
        assert str(runner.error).endswith(os.strerror(errno.EIO))
        assert not runner.returned and not dp.loop_stats()["running"]
    finally:
        if runner is not None and runner.thread.is_alive():
            dp.stop()
            runner.join()
        for pair in pairs:
            for sock in pair:
                sock.close()
