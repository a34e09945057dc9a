"""Frame agent: runs inside one network namespace and sends/captures raw Ethernet frames.

Started once per namespace (`ip netns exec NS python -m tests.harness.agent_main`)
and driven by tests.harness.agent.Agent over JSON lines on stdin/stdout: one
request, one response. Frames travel base64-encoded. It uses AF_PACKET sockets
directly, so the frames it reports are exactly what the interface received.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SO_RCVBUFFORCE = 33  # not exported by the socket module
# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
AUXDATA = struct.Struct("=IIIHHHH")
RECV_BUF = 1 << 17  # larger than any frame, a 64 KB GSO frame included
SOCK_RCVBUF = 8 << 20  # room for bursts while the reader thread is descheduled
MAX_POLL_WAIT = 1.0
SEND_RETRY_S = 5.0


def _b64(frame: bytes) -> str:
    return base64.b64encode(frame).decode("ascii")


class Capture:
    """Every frame an interface receives, in arrival order.

    A background thread keeps the socket drained during bursts; each poll also
    drains it first, so an answer includes every frame the kernel had queued
    for the interface before the request (the basis of absence checks).
    """

    def __init__(self, iface: str) -> None:
        self.iface = iface
        self.frames: list[bytes] = []
        self.error: str | None = None
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCK_RCVBUF)
            # The kernel strips 802.1Q tags before packet sockets see a frame;
            # the aux data carries the tag so it can be put back.
            self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            self.sock.bind((iface, ETH_P_ALL))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        # The socket is bound before the thread starts: from here on the kernel
        # queues every frame for it, so capturing is guaranteed once we return.
        self.thread = threading.Thread(target=self._run, name=f"capture-{iface}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(200):
                    with self.cond:
                        self._drain()
        except Exception as e:  # reported on the next poll instead of dying silently
            with self.cond:
                self.error = f"capture on {self.iface} failed: {type(e).__name__}: {e}"
                self.cond.notify_all()

    def _drain(self) -> None:
        """Move every queued frame into self.frames; the caller holds self.cond."""
        while True:
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(RECV_BUF, socket.CMSG_SPACE(AUXDATA.size))
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENETDOWN:  # link went down; the socket stays bound
                    continue
                raise
            # addr: (ifname, proto, pkttype, hatype, hwaddr). Frames queued
            # between socket() and bind() may come from other interfaces.
            if addr[0] != self.iface or addr[2] == socket.PACKET_OUTGOING:
                continue
            self.frames.append(_restore_vlan(data, ancdata))
            self.cond.notify_all()

    def poll(self, since: int, wait: float) -> dict[str, Any]:
        """Frames from index `since` on, waiting up to `wait` s for at least one."""
        with self.cond:
            if self.error is None:
                self._drain()
            self.cond.wait_for(lambda: len(self.frames) > since or self.error is not None, timeout=wait)
            if self.error is not None:
                raise RuntimeError(self.error)
            return {"frames": [_b64(f) for f in self.frames[since:]], "total": len(self.frames)}

    def clear(self) -> None:
        with self.cond:
            self._drain()
            self.frames.clear()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _restore_vlan(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> bytes:
    for level, kind, raw in ancdata:
        if level != SOL_PACKET or kind != PACKET_AUXDATA or len(raw) < AUXDATA.size:
            continue
        status, _len, _snap, _mac, _net, tci, tpid = AUXDATA.unpack_from(raw)
        if status & TP_STATUS_VLAN_VALID or tci:
            if not status & TP_STATUS_VLAN_TPID_VALID:
                tpid = 0x8100
            return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


class FrameAgent:
    def __init__(self) -> None:
        self.captures: dict[str, Capture] = {}
        self.senders: dict[str, socket.socket] = {}

    def _capture(self, iface: str) -> Capture:
        try:
            return self.captures[iface]
        except KeyError:
            raise ValueError(f"iface: {iface!r} is not being captured (call sniff_start first)") from None

    def op_ping(self) -> dict[str, int]:
        return {"pid": os.getpid()}

    def op_send(self, iface: str, frames: list[str]) -> int:
        sock = self.senders.get(iface)
        if sock is None:
            # Protocol 0: this socket only transmits, it never queues received frames.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                sock.bind((iface, 0))
            except OSError:
                sock.close()
                raise
            self.senders[iface] = sock
        for encoded in frames:
            _send_one(sock, base64.b64decode(encoded))
        return len(frames)

    def op_sniff_start(self, iface: str) -> None:
        self.op_sniff_stop(iface)
        self.captures[iface] = Capture(iface)

    def op_sniff_stop(self, iface: str) -> None:
        old = self.captures.pop(iface, None)
        if old is not None:
            old.stop()

    def op_frames(self, iface: str, since: int = 0, wait: float = 0.0) -> dict[str, Any]:
        return self._capture(iface).poll(since, min(wait, MAX_POLL_WAIT))

    def op_clear(self, iface: str) -> None:
        self._capture(iface).clear()

    def op_quit(self) -> None:
        for iface in list(self.captures):
            self.op_sniff_stop(iface)
        for sock in self.senders.values():
            sock.close()
        self.senders.clear()

    def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        method = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if method is None:
            raise ValueError(f"op: {op!r} is not a known operation")
        return method(**request.get("args", {}))


def _send_one(sock: socket.socket, frame: bytes) -> None:
    # A full device queue answers ENOBUFS; the frame was not sent, so retry
    # for a while rather than lose it.
    deadline = time.monotonic() + SEND_RETRY_S
    while True:
        try:
            sock.send(frame)
            return
        except OSError as e:
            if e.errno != errno.ENOBUFS or time.monotonic() >= deadline:
                raise
            time.sleep(0.001)


def main() -> None:
    # Keep the protocol stream private: anything else printing to stdout
    # lands on stderr instead of corrupting a response.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    agent = FrameAgent()
    for line in sys.stdin:
        request: dict[str, Any] = {}
        try:
            parsed = json.loads(line)
            if not isinstance(parsed, dict):
                raise ValueError(f"request: {line.strip()!r} is not a JSON object")
            request = parsed
            response = {"id": request.get("id"), "ok": True, "result": agent.handle(request)}
        except Exception as e:
            response = {
                "id": request.get("id"),
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        out.write(json.dumps(response) + "\n")
        if request.get("op") == "quit":
            break
    agent.op_quit()


if __name__ == "__main__":
    main()
