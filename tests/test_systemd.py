"""vswitchd under systemd: the notify protocol against a socket the test listens on,
journald priorities, and the unit file checked by systemd-analyze."""
from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fastpath import Datapath
from tests.harness.daemon import Vswitchd
from tests.harness.wait import wait_until
from vswitch.liveness import LoopRunner
from vswitch.systemd import (JournalFormatter, Notifier, Watchdog, notify_address, stderr_is_journal,
                             watchdog_interval)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "tools" / "vswitchd.service"


class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's notify socket; keeps every message."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:  # an abstract address, as systemd itself uses
            name = f"vst-notify-{uuid.uuid4().hex[:12]}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.sock.settimeout(0.05)
        self.messages: list[list[str]] = []

    def pump(self) -> None:
        """Take in whatever has arrived."""
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            self.messages.append(data.decode().split("\n"))

    def lines(self) -> list[str]:
        self.pump()
        return [line for m in self.messages for line in m]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def wait_for(self, line: str, n: int = 1, timeout: float = 30.0) -> None:
        wait_until(lambda: self.count(line) >= n, timeout=timeout, interval=0.0, message=f"{n} x {line!r} not received")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["abstract", "path"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(None if request.param == "abstract" else tmp_path / "notify.sock")
    yield lst
    lst.close()


# --- the protocol, without a daemon ------------------------------------------------------


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@vst-x") == b"\0vst-x"
    assert notify_address(None) is None and notify_address("") is None
    assert notify_address("vsock:2:1234") is None


def test_notifier_sends_each_message_as_one_datagram(listener: NotifyListener) -> None:
    n = Notifier({"NOTIFY_SOCKET": listener.env_value})
    try:
        assert n.enabled
        assert n.ready("forwarding: 1 networks, 0 ports")
        assert n.watchdog()
        assert n.stopping()
    finally:
        n.close()
    listener.pump()
    assert listener.messages == [
        ["READY=1", "STATUS=forwarding: 1 networks, 0 ports"], ["WATCHDOG=1"], ["STOPPING=1", "STATUS=stopping"],
    ]


def test_notifier_without_socket_does_nothing_and_a_gone_socket_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and not n.watchdog()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled and not gone.watchdog()  # logged, not raised
    gone.close()


def test_watchdog_interval_honours_usec_and_pid() -> None:
    me = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None  # inherited
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_watchdog_pings_only_while_the_loop_turns(listener: NotifyListener) -> None:
    dp = Datapath(max_ports=4, mac_table_size=256, io_mode="poll")
    runner = LoopRunner(dp)
    answers: list[bool] = []
    lock = threading.Lock()

    def alive() -> bool:
        ok = runner.healthy()
        with lock:
            answers.append(ok)
        return ok

    notifier = Notifier({"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "100000"})  # a ping every 50 ms
    dog = Watchdog(notifier, alive)
    runner.start()
    try:
        assert runner.wait_turning(5)
        assert dog.start()
        listener.wait_for("WATCHDOG=1", 3)
        dp.stop()
        runner.join(10)
        # Once the loop has ended, the next answers are "no": wait for two of them.
        wait_until(lambda: answers[-2:] == [False, False], timeout=10, message="the watchdog stopped asking")
    finally:
        dog.stop()
        dp.stop()
        runner.join(10)
        notifier.close()
    with lock:
        yes = answers.count(True)
    # Every ping answers one "yes" of the loop's health, and no "no" sent one.
    assert listener.count("WATCHDOG=1") == yes


def test_watchdog_is_off_unless_systemd_asks_for_it(listener: NotifyListener) -> None:
    assert not Watchdog(Notifier({"NOTIFY_SOCKET": listener.env_value}), lambda: True).start()
    assert not Watchdog(Notifier({"WATCHDOG_USEC": "100000"}), lambda: True).start()


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as f, open(tmp_path / "other", "w") as other:
        st = os.fstat(f.fileno())
        assert stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(other, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal(f, {})
        assert not stderr_is_journal(f, {"JOURNAL_STREAM": "garbage"})


def test_journal_formatter_prefixes_every_line_with_its_priority() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter())
    logger = logging.getLogger("vst.journal")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.error("loop failed")
        logger.warning("careful")
        logger.info("two\nlines")
        logger.debug("detail")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        "<3>vst.journal: loop failed", "<4>vst.journal: careful", "<6>vst.journal: two", "<6>lines",
        "<7>vst.journal: detail",
    ]


# --- the unit file ---------------------------------------------------------------------


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "vswitchd.service"
    path.write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    # verify checks that ExecStart's program exists: point it at one that does.
    assert "ExecStart=/opt/vswitch/bin/vswitchd " in text
    r = _verify(text.replace("/opt/vswitch/bin/vswitchd", "/bin/true"), tmp_path)
    assert (r.returncode, r.stderr.strip(), r.stdout.strip()) == (0, "", "")
    # ...and the check is real: a misspelt key is reported.
    r = _verify(text.replace("/opt/vswitch/bin/vswitchd", "/bin/true").replace("ProtectClock=", "ProtectClok="), tmp_path)
    assert "Unknown key 'ProtectClok'" in r.stderr


def test_unit_file_says_what_the_service_relies_on() -> None:
    keys = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    assert keys["Type"] == ["notify"] and keys["Restart"] == ["on-failure"]
    assert keys["RuntimeDirectory"] == ["vswitch"] and keys["StateDirectory"] == ["vswitch"]
    assert "WatchdogSec" in keys
    assert keys["DeviceAllow"] == ["/dev/net/tun rw"]
    caps = keys["CapabilityBoundingSet"][0].split()
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= set(caps)  # TAP devices; setns into containers
    assert "net" in keys["RestrictNamespaces"][0].split()
    exec_start = keys["ExecStart"][0].split()
    assert exec_start[exec_start.index("--api-socket") + 1] == "/run/vswitch/vswitch.sock"
    assert exec_start[exec_start.index("--state-dir") + 1] == "/var/lib/vswitch"


# --- the daemon, notifying ---------------------------------------------------------------


@pytest.fixture
def notify_daemon(tmp_path: Path, listener: NotifyListener) -> Iterator[Callable[..., Vswitchd]]:
    daemons: list[Vswitchd] = []

    def make(config: str = "", **env: str) -> Vswitchd:
        workdir = tmp_path / f"d{len(daemons)}"
        workdir.mkdir()
        d = Vswitchd(workdir, config, env={"NOTIFY_SOCKET": listener.env_value, **env})
        d.stderr_path.touch()
        st = d.stderr_path.stat()
        d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"  # stderr is "the journal"
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        d.kill()


@pytest.mark.root
def test_daemon_notifies_ready_watchdog_and_stopping(notify_daemon: Callable[..., Vswitchd], listener: NotifyListener) -> None:
    d = notify_daemon('[[network]]\nname = "blue"\n', WATCHDOG_USEC="400000")
    d.start(wait=False)
    listener.wait_for("READY=1")
    # READY comes after the state is in place and the loop turns.
    status, health = d.api("GET", "/v1/health")
    assert status == 200 and health["loop"]["state"] == "running"
    assert [n["name"] for n in d.ctl("network", "list")] == ["blue"]
    assert "STATUS=forwarding: 1 networks, 0 ports" in listener.lines()
    listener.wait_for("WATCHDOG=1", 3)
    assert d.stop() == 0
    lines = listener.lines()
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    # Every stderr line carries a journald priority and no timestamp of its own.
    log = d.run_stderr.splitlines()
    assert log and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in log), log
    assert "<6>vswitch.daemon: systemd watchdog: a ping every 0.2 s while the forwarding loop turns" in log


@pytest.mark.root
def test_daemon_sends_no_watchdog_for_another_pid(notify_daemon: Callable[..., Vswitchd], listener: NotifyListener) -> None:
    d = notify_daemon(WATCHDOG_USEC="400000", WATCHDOG_PID="1")
    d.start(wait=False)
    listener.wait_for("READY=1")
    assert d.stop() == 0
    assert "systemd watchdog" not in d.run_stderr
    assert listener.count("WATCHDOG=1") == 0


@pytest.mark.root
def test_loop_failure_under_systemd_logs_at_error_priority(notify_daemon: Callable[..., Vswitchd], listener: NotifyListener) -> None:
    d = notify_daemon(WATCHDOG_USEC="400000", VSWITCH_TEST_LOOP_FAILURE="EBADF")
    d.start(wait=False)
    listener.wait_for("WATCHDOG=1")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGUSR2)
    assert d.wait(30) == 70
    log = d.run_stderr.splitlines()
    assert any(line.startswith("<3>") and "datapath loop failed: injected failure: Bad file descriptor" in line
               for line in log), log
    assert "STOPPING=1" in listener.lines()
    # After the loop died, no ping follows the last one sent while it turned.
    lines = listener.lines()
    assert "WATCHDOG=1" not in lines[lines.index("STOPPING=1"):]
