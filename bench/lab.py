"""What a benchmark creates, and how it is taken down again.

A Lab owns namespaces (named with this process's pid, so parallel runs never
collide), the processes it started and a scratch directory. Everything is
undone in reverse order by close(), which also runs when the run is
interrupted: processes are stopped by the PIDs we hold, never by name, and a
namespace takes its interfaces with it when it is deleted.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
STOP_TIMEOUT_S = 5.0


class BenchError(Exception):
    """A setup or measurement that could not be done; the message says why."""


def run(argv: Sequence[str], timeout: float = 60.0, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its stdout; BenchError with its stderr when it fails."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)}: no answer within {timeout:g} s") from None
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def interrupt_on_signals() -> None:
    """Make SIGINT (even where the shell started us with it ignored), SIGTERM and SIGHUP unwind
    like Ctrl-C, so every `finally` (and Lab.close) runs."""
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


class Cleanup:
    """Undo actions run last-in first-out; one that fails is reported and the rest still run."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._undo.append((what, fn))

    def run(self) -> None:
        # A Ctrl-C (or SIGTERM) now must not leave half the lab behind: it is held until
        # everything is removed, then raised.
        caught: list[int] = []
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, lambda signum, _f: caught.append(signum)) for s in signals}
        try:
            while self._undo:
                what, fn = self._undo.pop()
                try:
                    fn()
                except Exception as e:  # keep going: the rest must still be removed
                    print(f"bench: cleanup of {what} failed: {e}", flush=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if caught:
            raise KeyboardInterrupt(f"signal {caught[0]}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args])

    def cmd(self, *argv: str) -> list[str]:
        """argv that runs inside this namespace (`ip netns exec` execs it: the PID is the command's own)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, *argv: str, timeout: float = 60.0, check: bool = True) -> str:
        return run(self.cmd(*argv), timeout=timeout, check=check)

    def delete(self) -> None:
        run(["ip", "netns", "del", self.name], timeout=30)

    def has_link(self, ifname: str) -> bool:
        return run(["ip", "-n", self.name, "link", "show", ifname], check=False, timeout=10).strip() != ""


class Lab:
    """A scope of namespaces, processes and files; close() removes them all."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"vsb{os.getpid()}{tag}"
        self.cleanup = Cleanup()
        self.dir = Path(tempfile.mkdtemp(prefix=f"vswitch-bench-{tag}-"))
        self.cleanup.push(f"directory {self.dir}", lambda: shutil.rmtree(self.dir, ignore_errors=True))

    def netns(self, tag: str) -> Netns:
        ns = Netns(f"{self.prefix}-{tag}")
        run(["ip", "netns", "add", ns.name])
        self.cleanup.push(f"namespace {ns.name}", ns.delete)
        ns.ip("link", "set", "lo", "up")
        return ns

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> subprocess.Popen:
        """Start a process in its own session (a terminal's Ctrl-C reaches only us, and we stop
        it in order); its stdout goes to NAME.out and its stderr to NAME.log in the lab's directory."""
        with open(self.dir / f"{name}.out", "wb") as out, open(self.dir / f"{name}.log", "ab") as err:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, cwd=cwd, start_new_session=True)
        self.cleanup.push(f"{name} (pid {proc.pid})", lambda: stop_process(proc))
        return proc

    def output(self, name: str) -> str:
        return (self.dir / f"{name}.out").read_text(errors="replace")

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.cleanup.run()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
