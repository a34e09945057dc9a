"""Connections of the control API: one event loop parks them, a fixed pool serves them.

A thread per connection let idle or slow clients cost a thread each (2,000
idle connections made 2,005 threads) and let hundreds of busy ones starve an
operator's `vswitchctl show` of the GIL. Here one thread waits on every
connection at once (epoll) and reads each request into memory until it is
whole: head, and a body of a length the route accepts. Only then does a worker
of a fixed pool serve it, from that buffer, and hand the connection back to the
loop if it stays open. A client that goes quiet mid-request or between
requests holds a file descriptor and a buffer, never a thread, and is closed
when its deadline passes.

Whole requests wait for a worker in one queue per client process (the peer's
pid, from SO_PEERCRED), and workers take from those queues in turn: a process
that keeps hundreds of connections busy gets one turn in each round like any
other, so an operator's `vswitchctl show` waits behind one request of each
other client, not behind hundreds.

How the bytes are cut into requests follows what http.server itself accepts,
so the handler still decides every status: a request line or header block it
would refuse (too long, too many lines, not HTTP) is handed over as soon as
that is clear, and so is a head whose body the handler refuses unread
(chunked, a bad or too large Content-Length).
"""
from __future__ import annotations

import io
import logging
import os
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("vswitch.api")

MAX_LINE = 65536  # http.server's limit for the request line and each header line
MAX_HEADERS = 100  # http.client's limit on header lines
RECV_SIZE = 65536
ACCEPT_BATCH = 64


@dataclass
class Limits:
    # Workers only overlap blocking writes to clients slow to read; under the GIL more of
    # them add no throughput, and each one more runnable thread delays every request.
    workers: int = 4
    idle_timeout_s: float = 60.0  # a keep-alive connection with no request in progress
    request_timeout_s: float = 30.0  # from a request's first byte to its last
    write_timeout_s: float = 30.0  # a worker blocked on a client that does not read its answer
    max_connections: int = 8192


class RequestBuffer(io.BytesIO):
    """One request's bytes as the handler's rfile. Past its end it reads as the
    socket would have: EOF if the client closed, TimeoutError if it went quiet."""

    def __init__(self, data: bytes, timed_out: bool) -> None:
        super().__init__(data)
        self.timed_out = timed_out

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if self.timed_out and size is not None and size >= 0 and len(data) < size:
            raise TimeoutError("request timed out")
        return data


@dataclass(eq=False)
class Conn:
    sock: socket.socket
    peer: int = 0  # the client's process (pid), whose requests share one turn; 0: unknown
    buf: bytearray = field(default_factory=bytearray)
    deadline: float = 0.0
    eof: bool = False
    continue_sent: bool = False  # a 100 Continue went out for the request in the buffer
    pending: tuple[bytes, bool] | None = None  # (request, timed out) handed to a worker


@dataclass
class Framed:
    """How much of a buffer is one request, as far as can be told yet."""

    size: int | None  # bytes of the request; None while more are needed
    wants_continue: bool = False  # head complete, body awaited, client asked for 100 Continue


def _header_value(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


def frame(buf: bytes | bytearray, body_limit: Callable[[bytes], int]) -> Framed:
    """Where the first request in `buf` ends. body_limit(path) is the largest body the
    route takes; a longer declared one is left for the handler to refuse unread."""
    nl = buf.find(b"\n")
    if nl < 0:
        return Framed(len(buf) if len(buf) > MAX_LINE else None)
    request_line = bytes(buf[:nl + 1])
    words = request_line.split()
    if len(words) != 3 or not words[2].startswith(b"HTTP/"):
        return Framed(nl + 1)  # refused (or HTTP/0.9) from the line alone
    pos, lines = nl + 1, []
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > MAX_LINE:
                return Framed(len(buf))  # a header line too long: the handler says 431
            return Framed(None)
        line = bytes(buf[pos:nl + 1])
        pos = nl + 1
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line)
        if len(lines) > MAX_HEADERS or len(line) > MAX_LINE:
            return Framed(pos)  # the handler says 431
    if _header_value(lines, b"transfer-encoding") is not None:
        return Framed(pos)
    length_value = _header_value(lines, b"content-length")
    if length_value is None:
        return Framed(pos)
    text = length_value.decode("latin-1")
    if not (text.isascii() and text.isdigit()):
        return Framed(pos)
    length = int(text)
    if length > body_limit(words[1].split(b"?", 1)[0]):
        return Framed(pos)
    if len(buf) >= pos + length:
        return Framed(pos + length)
    expect = _header_value(lines, b"expect")
    wants = expect is not None and expect.lower() == b"100-continue" and words[2] == b"HTTP/1.1"
    return Framed(None, wants_continue=wants)


class FairQueue:
    """Items waiting for a worker, one FIFO per key, handed out round-robin over
    the keys that have any: a key with a thousand items waiting delays another's
    next item by one of its own, not by a thousand."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[int, deque[Conn | None]] = {}
        self._turns: deque[int] = deque()  # keys with items waiting, in the order they are served

    def put(self, key: int, item: Conn | None) -> None:
        with self._cond:
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = deque()
                self._turns.append(key)
            q.append(item)
            self._cond.notify()

    def waiting(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def get(self) -> Conn | None:
        with self._cond:
            while not self._turns:
                self._cond.wait()
            key = self._turns.popleft()
            q = self._queues[key]
            item = q.popleft()
            if q:
                self._turns.append(key)  # its next item waits for every other key's turn
            else:
                del self._queues[key]
            return item


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process that connected `sock` (Unix sockets), 0 if the kernel does not say."""
    try:
        pid, _, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, struct.error):
        return 0
    return pid


# serve(conn, request_bytes, timed_out) -> what becomes of the connection afterwards
KEEP, CLOSE, DETACHED = "keep", "close", "detached"
Serve = Callable[[Conn, bytes, bool], str]


class ConnectionLoop:
    """Accepts on `listener` and serves whole requests with `serve` on a pool of workers."""

    def __init__(self, listener: socket.socket, serve: Serve, body_limit: Callable[[bytes], int],
                 limits: Limits | None = None) -> None:
        self.listener = listener
        self.serve = serve
        self.body_limit = body_limit
        self.limits = limits or Limits()
        self._sel = selectors.DefaultSelector()
        self._conns: set[Conn] = set()  # every open connection, parked or being served
        self._conns_lock = threading.Lock()
        self._ready = FairQueue()  # -> workers, by client process
        self._returned: queue.SimpleQueue[Conn] = queue.SimpleQueue()  # <- workers
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.listener.setblocking(False)
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._threads.append(threading.Thread(target=self._loop, name="api-loop", daemon=True))
        self._threads += [threading.Thread(target=self._work, name=f"api-worker-{i}", daemon=True)
                          for i in range(self.limits.workers)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop accepting and serving; open connections are shut down. Requests being
        served finish (their answers may not reach their clients)."""
        self._stopping.set()
        self._wake()
        for _ in range(self.limits.workers):
            self._ready.put(-1, None)
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def requests_waiting(self) -> int:
        """Whole requests read and waiting for a worker."""
        return self._ready.waiting()

    def connection_count(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    # ---- the loop ------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _loop(self) -> None:
        next_sweep = time.monotonic() + 1.0
        while not self._stopping.is_set():
            for key, _ in self._sel.select(timeout=1.0):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    self._readable(key.data)
            self._take_back()
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + 1.0
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, Conn):
                self._close(key.data)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: the connection waits in the backlog
                log.warning("API: cannot accept a connection: %s", e.strerror or e)
                return
            if self.connection_count() >= self.limits.max_connections:
                log.warning("API: %d connections open; refusing another", self.limits.max_connections)
                sock.close()
                continue
            sock.setblocking(False)
            conn = Conn(sock, peer_pid(sock), deadline=time.monotonic() + self.limits.idle_timeout_s)
            with self._conns_lock:
                self._conns.add(conn)
            self._park(conn)

    def _park(self, conn: Conn) -> None:
        self._sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            conn.eof = True
            if not conn.buf:
                self._close(conn)
                return
        else:
            if not conn.buf:  # a new request: it has request_timeout_s from its first byte
                conn.deadline = time.monotonic() + self.limits.request_timeout_s
            conn.buf += data
        self._try_dispatch(conn)

    def _try_dispatch(self, conn: Conn) -> None:
        framed = frame(conn.buf, self.body_limit)
        if framed.size is None and not conn.eof:
            if framed.wants_continue and not conn.continue_sent:
                conn.continue_sent = True
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    self._close(conn)
            return
        size = len(conn.buf) if framed.size is None else framed.size
        self._dispatch(conn, size, timed_out=False)

    def _dispatch(self, conn: Conn, size: int, *, timed_out: bool) -> None:
        self._sel.unregister(conn.sock)
        conn.pending = (bytes(conn.buf[:size]), timed_out)
        del conn.buf[:size]
        self._ready.put(conn.peer, conn)

    def _take_back(self) -> None:
        while True:
            try:
                conn = self._returned.get_nowait()
            except queue.Empty:
                return
            if self._stopping.is_set():
                self._close(conn)
                continue
            conn.continue_sent = False
            conn.deadline = time.monotonic() + (self.limits.request_timeout_s if conn.buf else self.limits.idle_timeout_s)
            self._park(conn)
            if conn.buf or conn.eof:  # a pipelined request, or what came before the client closed
                self._try_dispatch(conn)

    def _sweep(self, now: float) -> None:
        for key in list(self._sel.get_map().values()):
            conn = key.data
            if not isinstance(conn, Conn) or now < conn.deadline:
                continue
            framed = frame(conn.buf, self.body_limit) if conn.buf else Framed(None)
            if conn.buf and framed.size is None and self._head_complete(conn.buf):
                # A body that stopped coming: the handler answers 408.
                self._dispatch(conn, len(conn.buf), timed_out=True)
            else:
                # Idle, or a head that never ended: closed without an answer, as http.server does.
                self._close(conn)

    @staticmethod
    def _head_complete(buf: bytearray) -> bool:
        return b"\r\n\r\n" in buf or b"\n\n" in buf

    def _close(self, conn: Conn) -> None:
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        with self._conns_lock:
            self._conns.discard(conn)
        conn.sock.close()

    # ---- the workers ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            conn = self._ready.get()
            if conn is None:
                return
            assert conn.pending is not None
            (request, timed_out), conn.pending = conn.pending, None
            outcome = CLOSE
            try:
                conn.sock.settimeout(self.limits.write_timeout_s)
                outcome = self.serve(conn, request, timed_out)
            except OSError as e:  # the client left before its answer was written: its loss
                log.debug("API: connection error: %s", e)
            except Exception:
                log.exception("API: serving a request failed")
            if outcome == DETACHED:  # its new owner closes it
                with self._conns_lock:
                    self._conns.discard(conn)
                continue
            if outcome == KEEP and not conn.eof and not self._stopping.is_set():
                try:
                    conn.sock.setblocking(False)
                except OSError:
                    outcome = CLOSE
                else:
                    self._returned.put(conn)
                    self._wake()
                    continue
            with self._conns_lock:
                self._conns.discard(conn)
            conn.sock.close()
