"""Many API clients from one process, so that they cost the machine little of its CPU.

    python -m tests.harness.api_load SOCKET BUSY SLOW IDLE PATH

BUSY keep-alive connections each send ``GET PATH`` again as soon as the answer
to the last one is whole; SLOW connections send half a request head and then
nothing; IDLE connections send nothing at all. It prints ``connected`` once every
connection is open, then answers each line on stdin with one JSON line of
counts; EOF on stdin ends it. LoadProcess runs it and asks for the counts.
"""
from __future__ import annotations

import json
import select
import selectors
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class LoadProcess:
    """This module in a process of its own, so the clients cost the caller nothing."""

    def __init__(self, socket_path: str | Path, busy: int, slow: int, idle: int, route: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.api_load", str(socket_path), str(busy), str(slow), str(idle), route],
            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def line(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"the load generator said nothing for {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator ended: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return line.strip()

    def counts(self) -> dict[str, int]:
        """{"answers", "errors", "reconnects", "slow_answered", "slow_closed", "idle_closed"} so far."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.line())

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Busy:
    def __init__(self, path: str, request: bytes) -> None:
        self.path, self.request = path, request
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.buf = b""

    def send(self) -> None:
        self.sock.sendall(self.request)  # small: fits the socket buffer at once

    def whole_answer(self) -> tuple[int, bool] | None:
        """(status, the server will close) of a whole answer at the start of buf, which is consumed."""
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buf[:head_end].decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        end = head_end + 4 + int(fields.get("content-length", "0"))
        if len(self.buf) < end:
            return None
        self.buf = self.buf[end:]
        return int(head[0].split()[1]), fields.get("connection", "").lower() == "close"


def main() -> None:
    path, busy_n, slow_n, idle_n, route = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    request = f"GET {route} HTTP/1.1\r\nHost: vswitch\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    counts = {"answers": 0, "errors": 0, "reconnects": 0, "slow_answered": 0, "slow_closed": 0, "idle_closed": 0}
    held: list[socket.socket] = []
    for i in range(slow_n + idle_n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        if i < slow_n:
            s.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: vsw")  # and never the rest
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("slow" if i < slow_n else "idle", s))
        held.append(s)
    for _ in range(busy_n):
        client = Busy(path, request)
        sel.register(client.sock, selectors.EVENT_READ, ("busy", client))
        client.send()
    sel.register(sys.stdin, selectors.EVENT_READ, ("ctl", None))
    print("connected", flush=True)
    while True:
        for key, _ in sel.select():
            kind, obj = key.data
            if kind == "ctl":
                if not sys.stdin.readline():
                    return
                print(json.dumps(counts), flush=True)
            elif kind in ("slow", "idle"):
                try:
                    data = obj.recv(4096)
                except OSError:
                    data = b""
                if data and kind == "slow":
                    counts["slow_answered"] += 1
                sel.unregister(obj)
                obj.close()
                if not data:
                    counts[f"{kind}_closed"] += 1
            else:
                try:
                    data = obj.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    counts["reconnects"] += 1
                    sel.unregister(obj.sock)
                    obj.sock.close()
                    obj = Busy(path, request)
                    sel.register(obj.sock, selectors.EVENT_READ, ("busy", obj))
                    obj.send()
                    continue
                obj.buf += data
                while (answer := obj.whole_answer()) is not None:
                    status, closing = answer
                    counts["answers" if status == 200 else "errors"] += 1
                    if closing:
                        break
                    obj.send()


if __name__ == "__main__":
    main()
