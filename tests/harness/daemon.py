"""Runs a real vswitchd (``python -m vswitch``) for tests, with private paths under a tmp dir."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from vswitch.client import ApiError, Client, UnixHTTPConnection

REPO_ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0
CTL_TIMEOUT_S = 30.0


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM, addr: str = "127.0.0.1") -> int:
    """A loopback port free right now (another process could still take it before use)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def loopback_vtep_config() -> str:
    """A [switch] table putting the VXLAN endpoint on 127.0.0.1 and a free UDP port,
    so tests can add peers (use 127.0.0.x remotes: tunnel traffic stays on loopback)."""
    return f'[switch]\nvtep_ip = "127.0.0.1"\nvxlan_port = {free_port(socket.SOCK_DGRAM)}\n'


class Vswitchd:
    """One vswitchd process: config, API socket, state dir and stderr log under ``tmp_path``.

    ``start()`` may be called again after ``stop()``/``kill()`` to restart it on
    the same paths (the state dir carries the state across).
    """

    def __init__(
        self,
        tmp_path: Path,
        config: str | None = None,
        extra_args: Sequence[str] = (),
        socket_path: Path | None = None,
        io_mode: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.config_path = self.tmp_path / "vswitch.toml"
        self.socket_path = Path(socket_path) if socket_path is not None else self.tmp_path / "vs.sock"
        self.state_dir = self.tmp_path / "state"
        self.stderr_path = self.tmp_path / "vswitchd.stderr"
        self.metrics_port = free_port()
        self.extra_args = list(extra_args)
        self.io_mode = io_mode  # --io-mode; None leaves it to the config (auto by default)
        self.env = dict(env or {})  # added to this process's environment
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr_offset = 0
        if config is not None:
            self.config_path.write_text(config)
        elif not self.config_path.exists():
            # An explicit empty config keeps the daemon away from any system-wide default.
            self.config_path.write_text("")

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "vswitch",
            "--config", str(self.config_path),
            "--api-socket", str(self.socket_path),
            "--state-dir", str(self.state_dir),
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            *(["--io-mode", self.io_mode] if self.io_mode is not None else []),
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True) -> None:
        """Launch; with ``wait`` return once GET /v1/health answers, else raise with its stderr."""
        if self.running():
            raise RuntimeError(f"vswitchd (pid {self.pid}) is already running")
        self._stderr_offset = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env={**os.environ, **self.env})
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_DEADLINE_S) -> None:
        assert self.proc is not None
        client = Client(self.socket_path, timeout=2.0)
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(f"vswitchd exited with status {rc} before it was ready; stderr:\n{self.run_stderr}")
            try:
                if (client.request("GET", "/v1/health") or {}).get("status") == "ok":
                    return
            except ApiError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"vswitchd did not answer on {self.socket_path} within {timeout:g} s; stderr:\n{self.run_stderr}")
            time.sleep(0.05)

    def wait(self, timeout: float = 30.0) -> int:
        """Exit status of a process that exits by itself (e.g. one refusing to start)."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and return the exit status; kills and raises if it does not exit in time."""
        if self.proc is None:
            raise RuntimeError("vswitchd was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"vswitchd ignored signal {sig} for {timeout:g} s and was killed; stderr:\n{self.run_stderr}") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON or None); bytes/str bodies are sent as they are, anything else as JSON."""
        if body is None or isinstance(body, bytes):
            payload = body
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = json.dumps(body).encode()
        conn = UnixHTTPConnection(self.socket_path, timeout=30.0)
        try:
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload is not None else {})
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
        finally:
            conn.close()
        return status, json.loads(data) if data else None

    def ctl_run(self, *args: str, json_output: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs vswitchctl against this daemon; output captured as text, exit status not checked."""
        cmd = [sys.executable, "-m", "vswitch.cli", "--socket", str(self.socket_path)]
        if json_output:
            cmd.append("--json")
        return subprocess.run([*cmd, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=CTL_TIMEOUT_S)

    def ctl(self, *args: str, check: bool = True) -> Any:
        """``vswitchctl --json ARGS`` parsed (None when it prints nothing, or failed with check=False)."""
        proc = self.ctl_run(*args)
        if proc.returncode != 0:
            if check:
                raise RuntimeError(f"vswitchctl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
            return None
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    @property
    def stderr_text(self) -> str:
        """Everything the daemon wrote to stderr, across restarts."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def run_stderr(self) -> str:
        """What the current (or last) run wrote to stderr."""
        if not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_bytes()[self._stderr_offset:].decode(errors="replace")

    def __enter__(self) -> Vswitchd:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            self.kill()
