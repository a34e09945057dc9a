"""Client for the per-namespace frame agent (tests.harness.agent_main)."""
from __future__ import annotations

import base64
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0


class AgentError(RuntimeError):
    """An operation failed inside the agent; the message carries the agent's traceback."""


class Agent:
    """One long-lived agent process in network namespace `netns` (None: this namespace)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._ids = itertools.count(1)
        self._buf = b""
        self._cache: dict[str, list[bytes]] = {}
        self._stderr = tempfile.TemporaryFile()
        prefix = ["ip", "netns", "exec", netns] if netns is not None else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.harness.agent_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO_ROOT,
            env=env,
        )
        try:
            self._call("ping", timeout=START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Agent(netns={self.netns!r}, pid={self.proc.pid})"

    @property
    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def send(self, iface: str, frames: list[bytes]) -> None:
        """Transmit `frames` on `iface` exactly as given; returns once all were written."""
        self._call("send", iface=iface, frames=[base64.b64encode(f).decode("ascii") for f in frames])

    def sniff_start(self, iface: str) -> None:
        """Capture every frame `iface` receives from now on (restarting any earlier capture).

        Frames this interface transmits, the agent's own included, are not captured.
        """
        self._call("sniff_start", iface=iface)
        self._cache[iface] = []

    def sniff_stop(self, iface: str) -> None:
        self._call("sniff_stop", iface=iface)
        self._cache.pop(iface, None)

    def frames(self, iface: str) -> list[bytes]:
        """All frames captured on `iface` so far, in arrival order.

        Includes every frame the kernel had delivered to `iface` before this call,
        so after a later "fence" frame was seen, an absent frame was never received.
        """
        self._fetch(iface, wait=0.0)
        return list(self._cache[iface])

    def wait_frames(
        self,
        iface: str,
        predicate: Callable[[bytes], bool] | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[bytes]:
        """Captured frames matching `predicate` once there are at least `count` of them.

        At the deadline it returns whatever matched so far; the caller asserts.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            self._fetch(iface, wait=max(0.0, min(remaining, 0.2)))
            matched = [f for f in self._cache[iface] if predicate is None or predicate(f)]
            if len(matched) >= count or time.monotonic() >= deadline:
                return matched

    def clear(self, iface: str) -> None:
        """Forget the frames captured on `iface` so far; capturing goes on."""
        self._call("clear", iface=iface)
        self._cache[iface] = []

    def close(self) -> None:
        """Stop the agent: ask it to quit, then kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self._call("quit", timeout=5.0)
                self.proc.wait(timeout=5.0)
            except (AgentError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()

    def _fetch(self, iface: str, wait: float) -> None:
        if iface not in self._cache:
            raise ValueError(f"iface: {iface!r} is not being captured (call sniff_start first)")
        cache = self._cache[iface]
        result = self._call("frames", iface=iface, since=len(cache), wait=wait)
        cache.extend(base64.b64decode(f) for f in result["frames"])

    def _call(self, op: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        request_id = next(self._ids)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"id": request_id, "op": op, "args": args}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AgentError(f"{self!r} is gone (exit {self.proc.poll()}); stderr:\n{self.stderr_text}") from None
        response = json.loads(self._read_line(op, timeout))
        if response.get("id") != request_id:
            raise AgentError(f"{self!r} answered request {response.get('id')!r} to {op} #{request_id}")
        if not response["ok"]:
            raise AgentError(f"{op} in {self!r} failed: {response['error']}\n{response['traceback']}")
        return response["result"]

    def _read_line(self, op: str, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentError(f"{op}: no answer from {self!r} within {timeout:g} s; stderr:\n{self.stderr_text}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise AgentError(
                    f"{op}: {self!r} closed its output (exit {self.proc.poll()}) without answering; "
                    f"stderr:\n{self.stderr_text}"
                )
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line
