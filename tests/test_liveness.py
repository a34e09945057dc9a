"""The forwarding loop cannot die silently: its progress, its failure, and the daemon's exit and restart."""
from __future__ import annotations

import errno
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fastpath import Datapath
from tests.harness.daemon import Vswitchd
from tests.harness.netns import Netns
from tests.harness.wait import wait_until
from vswitch.liveness import FAILED, RUNNING, STALLED, STARTING, STOPPED, LoopRunner, classify, thread_cpu_seconds

pytestmark = pytest.mark.io_modes

EXIT_LOOP_FAILED = 70
IFNAME = "eth0"


def _datapath(io_mode: str | None) -> Datapath:
    return Datapath(max_ports=8, mac_table_size=256, io_mode=io_mode or "poll")


class _Running:
    """A Datapath whose run() goes on in a thread; what run() did is kept."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome.append(self.dp.run())
        except BaseException as e:  # noqa: BLE001 - the test looks at whatever it was
            self.outcome.append(e)

    def join(self) -> Any:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "run() did not return"
        return self.outcome[0]


def test_last_turn_is_zero_before_the_loop_runs_and_advances_while_idle(io_mode: str | None) -> None:
    dp = _datapath(io_mode)
    assert dp.last_turn_ns == 0
    r = _Running(dp)
    try:
        first = wait_until(lambda: dp.last_turn_ns, timeout=5, message="the loop never turned")
        assert abs(time.monotonic_ns() - first) < 5e9  # CLOCK_MONOTONIC, as time.monotonic_ns
        # No port, no frame: the loop still turns at least every 100 ms.
        wait_until(lambda: dp.last_turn_ns > first, timeout=5, message="an idle loop stopped turning")
    finally:
        dp.stop()
    assert r.join() is None


@pytest.mark.parametrize("err", [errno.EIO, errno.EBADF])
def test_injected_failure_ends_run_with_that_errno(io_mode: str | None, err: int) -> None:
    dp = _datapath(io_mode)
    r = _Running(dp)
    wait_until(lambda: dp.last_turn_ns, timeout=5, message="the loop never turned")
    dp.inject_failure(err)
    e = r.join()
    assert isinstance(e, OSError), e
    assert e.errno == err
    assert str(e).endswith(f"datapath loop failed: injected failure: {__import__('os').strerror(err)}")
    dp.stop()  # harmless once the loop is gone


def test_inject_failure_wants_a_positive_errno(io_mode: str | None) -> None:
    dp = _datapath(io_mode)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="positive errno"):
            dp.inject_failure(bad)


def test_requested_stop_returns_none_even_with_ports(io_mode: str | None) -> None:
    dp = _datapath(io_mode)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        dp.add_port(b.fileno(), 1, 1500, False)
        r = _Running(dp)
        wait_until(lambda: dp.last_turn_ns, timeout=5, message="the loop never turned")
        dp.stop()
        assert r.join() is None
    finally:
        a.close()
        b.close()


# --- the runner: states, health, CPU time ------------------------------------------------


@pytest.mark.parametrize(
    "ended, error, last, now, expected",
    [
        (False, None, 0, 10**9, STARTING),
        (False, None, 10**9, 10**9 + 100_000_000, RUNNING),
        (False, None, 10**9, 10**9 + 5 * 10**9, RUNNING),  # at the threshold: not yet
        (False, None, 10**9, 10**9 + 5 * 10**9 + 1, STALLED),
        (True, None, 10**9, 10**9, STOPPED),
        (True, "datapath loop failed: epoll_wait: Bad file descriptor", 10**9, 10**9, FAILED),
        (True, "x", 0, 10**9, FAILED),
    ],
)
def test_classify(ended: bool, error: str | None, last: int, now: int, expected: str) -> None:
    assert classify(ended, error, last, now, 5.0) == expected


def test_runner_reports_running_then_failed_and_calls_back_once(io_mode: str | None) -> None:
    dp = _datapath(io_mode)
    exits: list[str | None] = []
    runner = LoopRunner(dp, on_exit=exits.append)
    assert runner.health()["state"] == STARTING
    runner.start()
    assert runner.wait_turning(5)
    h = runner.health()
    assert h["state"] == RUNNING and runner.healthy()
    assert h["io_mode"] == dp.io_mode
    assert 0 <= h["last_turn_age_s"] < h["stall_after_s"]
    dp.inject_failure(errno.EIO)
    runner.join(10)
    assert runner.ended and not runner.healthy()
    h = runner.health()
    assert h["state"] == FAILED
    assert h["error"] == "[Errno 5] datapath loop failed: injected failure: Input/output error"
    assert exits == [h["error"]]


def test_runner_reports_a_requested_stop_as_stopped(io_mode: str | None) -> None:
    dp = _datapath(io_mode)
    exits: list[str | None] = []
    runner = LoopRunner(dp, on_exit=exits.append)
    runner.start()
    assert runner.wait_turning(5)
    dp.stop()
    runner.join(10)
    assert runner.health()["state"] == STOPPED and "error" not in runner.health()
    assert exits == [None]


def test_a_loop_that_cannot_keep_up_counts_as_stalled(io_mode: str | None) -> None:
    # A threshold shorter than the idle turn (100 ms): between two turns the
    # idle loop looks stalled, and the state must say so at some point.
    dp = _datapath(io_mode)
    runner = LoopRunner(dp, stall_after_s=0.01)
    runner.start()
    try:
        assert runner.wait_turning(5)
        wait_until(lambda: runner.state() == STALLED, timeout=5, interval=0.005, message="never seen as stalled")
        assert not runner.healthy()
    finally:
        dp.stop()
        runner.join(10)


def test_loop_cpu_time_is_the_loop_threads_own(io_mode: str | None) -> None:
    dp = Datapath(max_ports=8, mac_table_size=256, io_mode=io_mode or "poll", busy_poll_us=1_000_000)
    runner = LoopRunner(dp)
    assert runner.cpu_seconds() is None
    runner.start()
    try:
        assert runner.wait_turning(5)
        # Busy polling spins for a second after each frame; with no frame the loop
        # sleeps, so its CPU time stays near zero while this thread burns some.
        start = time.process_time()
        while time.process_time() - start < 0.3:
            pass
        loop_cpu = runner.cpu_seconds()
        assert loop_cpu is not None and loop_cpu < 0.2, loop_cpu
        own = thread_cpu_seconds(threading.get_native_id())
        assert own is not None and own >= 0.29
        # One frame starts a second of busy polling: now the loop's own time grows.
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            dp.add_port(b.fileno(), 1, 1500, False)
            a.send(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(46))
            wait_until(lambda: (runner.cpu_seconds() or 0) >= loop_cpu + 0.2, timeout=10,
                       message="a busy-polling loop used no CPU")
        finally:
            dp.stop()
            runner.join(10)
            a.close()
            b.close()
    finally:
        dp.stop()
        runner.join(10)
    assert runner.cpu_seconds() is not None  # kept from its last moment


# --- the daemon: log, exit status, restart -----------------------------------------------


@pytest.mark.root
def test_daemon_exits_non_zero_when_the_loop_fails_and_a_restart_reattaches_the_ports(
    vswitchd_factory: Callable[..., Vswitchd], netns_factory: Callable[[], Netns]
) -> None:
    ns1, ns2 = netns_factory(), netns_factory()
    config = '[[network]]\nname = "blue"\n' + "".join(
        f'[[port]]\nname = "c{i}"\nnetns = "{ns.name}"\nnetwork = "blue"\nifname = "{IFNAME}"\nip = "10.31.0.{i}/24"\n'
        for i, ns in ((1, ns1), (2, ns2))
    )
    d = vswitchd_factory(config, env={"VSWITCH_TEST_LOOP_FAILURE": "EIO"})
    assert ns1.exec("ping", "-c", "1", "-W", "2", "10.31.0.2", check=False).returncode == 0
    before = {ns.name: ns.link(IFNAME)["ifindex"] for ns in (ns1, ns2)}

    assert d.proc is not None
    d.proc.send_signal(signal.SIGUSR2)
    assert d.wait(30) == EXIT_LOOP_FAILED, d.run_stderr
    log = d.run_stderr
    assert "datapath loop failed: injected failure: Input/output error" in log
    assert f"exiting with status {EXIT_LOOP_FAILED}" in log
    assert " ERROR " in log  # at error level, so a journal files it as such
    # The TAPs are persistent: the containers keep their interfaces while nothing forwards.
    assert {ns.name: ns.link(IFNAME)["ifindex"] for ns in (ns1, ns2)} == before

    d.start()  # what Restart=on-failure does
    assert "port c1 re-attached" in d.run_stderr and "port c2 re-attached" in d.run_stderr
    wait_until(lambda: ns1.exec("ping", "-c", "1", "-W", "1", "10.31.0.2", check=False).returncode == 0,
               timeout=30, interval=0.0, message="no ping after the restart")
    status, health = d.api("GET", "/v1/health")
    assert status == 200 and health["loop"]["state"] == RUNNING
    assert d.stop() == 0


@pytest.mark.root
def test_without_the_test_hook_sigusr2_is_not_a_failure_switch(vswitchd_factory: Callable[..., Vswitchd]) -> None:
    d = vswitchd_factory("")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGUSR2)  # its default action: the process ends on the signal, not with status 70
    assert d.wait(30) == -signal.SIGUSR2


@pytest.mark.root
def test_a_bad_test_hook_value_is_refused(tmp_path: Path) -> None:
    d = Vswitchd(tmp_path, "", env={"VSWITCH_TEST_LOOP_FAILURE": "ENOTANERRNO"})
    d.start(wait=False)
    assert d.wait(30) == 1
    assert "VSWITCH_TEST_LOOP_FAILURE='ENOTANERRNO' is not a positive errno" in d.run_stderr
