"""What vswitchd says to systemd: readiness, watchdog pings and log priorities.

The notify protocol (sd_notify(3)) is one datagram of ``KEY=VALUE`` lines to
the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a path, or an abstract
address written with a leading '@'). Without that variable every call is a
no-op, so the daemon runs the same under any supervisor or none.

When stderr is connected to the journal (``$JOURNAL_STREAM`` names its
device and inode), each log line starts with a ``<N>`` syslog priority so
that journald files errors as errors (sd-daemon(3)).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from typing import Callable, TextIO

log = logging.getLogger("vswitch.systemd")

# syslog priorities by logging level (sd-daemon(3): SD_ERR, SD_WARNING, ...)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address in $NOTIFY_SOCKET: a path, or bytes for an abstract one; None if unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other kinds are not supported


class Notifier:
    """Sends sd_notify messages; every method is a no-op without $NOTIFY_SOCKET."""

    def __init__(self, environ: dict[str, str] | os._Environ[str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env.get("NOTIFY_SOCKET"))
        if env.get("NOTIFY_SOCKET") and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket path or abstract address: not notifying", env["NOTIFY_SOCKET"])
        self.watchdog_s = watchdog_interval(env)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send the lines as one message; True if it was sent. Failures are logged, never raised:
        a supervisor that went away must not take the switch with it."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self.address)
            except OSError as e:
                log.warning("cannot notify the service manager: %s", e.strerror or e)
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds within which systemd wants a WATCHDOG=1 ($WATCHDOG_USEC), None when it wants none.

    $WATCHDOG_PID, when set, must name this process (the variables may have been inherited)."""
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


class Watchdog:
    """Sends WATCHDOG=1 every half interval while ``alive()`` says so, and nothing otherwise,
    so that systemd restarts a process whose forwarding loop stopped making progress."""

    def __init__(self, notifier: Notifier, alive: Callable[[], bool]) -> None:
        self._notifier = notifier
        self._alive = alive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def start(self) -> bool:
        """Start pinging if systemd asked for it; False if it did not."""
        if self._notifier.watchdog_s is None or not self._notifier.enabled:
            return False
        self._thread = threading.Thread(target=self._run, args=(self._notifier.watchdog_s / 2,), name="watchdog",
                                        daemon=True)
        self._thread.start()
        return True

    def _run(self, period: float) -> None:
        while True:
            if self._alive():
                self._notifier.watchdog()
                self._warned = False
            elif not self._warned:
                log.error("the forwarding loop makes no progress: watchdog pings withheld")
                self._warned = True
            if self._stop.wait(period):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def stderr_is_journal(stream: TextIO | None = None, environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when $JOURNAL_STREAM names the device and inode of `stream` (stderr by default)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald strips the prefix into the entry's priority and stamps the time."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno)
        if priority is None:  # a custom level: the nearest standard one below it
            priority = next((p for lvl, p in sorted(_PRIORITY.items(), reverse=True) if record.levelno >= lvl), 7)
        text = super().format(record)
        # Each line becomes an entry of its own: every one needs the prefix.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])
