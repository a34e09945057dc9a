"""The API under many clients: connections are parked, requests served by a bounded pool, in turn by client process.

The connection loop is tested on its own (no root) with short deadlines; a
running vswitchd is tested with 500 busy clients, slow and idle ones beside
them, while an operator's `show` must still answer within a second.
"""
from __future__ import annotations

import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.harness.api_load import LoadProcess
from tests.harness.daemon import Vswitchd
from tests.harness.netns import NetnsFactory
from vswitch.cli import _show
from vswitch.client import Client
from vswitch.connections import CLOSE, DETACHED, KEEP, Conn, ConnectionLoop, FairQueue, Limits, frame, peer_pid

# --- framing ----------------------------------------------------------------------------


def _limit(path: bytes) -> int:
    return 100


HEAD = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /v1/networks HTTP/1.1\r\nContent-Length: %d\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (HEAD, len(HEAD)),
        (HEAD + b"GET /next", len(HEAD)),  # a pipelined request stays behind
        (HEAD[:-2], None),  # the head goes on
        (HEAD.replace(b"\r\n", b"\n"), len(HEAD) - 3),  # bare line feeds, as http.server reads them
        (POST % 4 + b'{"a', None),  # the body goes on
        (POST % 4 + b'{"a"}', len(POST % 4) + 4),
        (POST % 101, len(POST % 101)),  # too long: refused unread
        (POST.replace(b"%d", b"x1") + b"body", len(POST.replace(b"%d", b"x1"))),  # not a length: refused unread
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n", 47),  # refused unread
        (b"HELLO\r\n", 7),  # not HTTP: refused from the line alone
        (b"G" * 70000, 70000),  # a request line too long: the handler says 414
    ],
)
def test_frame_cuts_one_request(data: bytes, size: int | None) -> None:
    assert frame(data, _limit).size == size


def test_frame_asks_for_100_continue_only_while_waiting_for_an_acceptable_body() -> None:
    head = b"POST /v1/networks HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
    assert frame(head % 10, _limit).wants_continue
    assert not frame(head % 1000, _limit).wants_continue
    assert frame(head % 1000, _limit).size is not None


def test_frame_hands_over_a_head_with_too_many_lines() -> None:
    data = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101
    assert frame(data, _limit).size == len(data)


# --- the connection loop ----------------------------------------------------------------


class Recorder:
    """A serve() that answers each request with its length, and remembers what it saw."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.seen: list[tuple[bytes, bool]] = []
        self.lock = threading.Lock()
        self.hold = hold

    def __call__(self, conn: Conn, request: bytes, timed_out: bool) -> str:
        if self.hold is not None:
            self.hold.wait(30)
        with self.lock:
            self.seen.append((request, timed_out))
        conn.sock.sendall(b"%d\n" % len(request))
        return CLOSE if b"close" in request else KEEP


@pytest.fixture
def loop_factory(tmp_path: Path) -> Iterator[Callable[..., tuple[ConnectionLoop, str]]]:
    loops: list[ConnectionLoop] = []

    def make(serve: Callable[[Conn, bytes, bool], str], **limits: float) -> tuple[ConnectionLoop, str]:
        path = str(tmp_path / f"l{len(loops)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4096)
        loop = ConnectionLoop(listener, serve, _limit, Limits(**limits))  # type: ignore[arg-type]
        loop.start()
        loops.append(loop)
        return loop, path

    yield make
    for loop in loops:
        loop.stop()
        loop.listener.close()


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    """Whether the server closes `s` within the deadline (reading whatever it sends first)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if select.select([s], [], [], left)[0] and not s.recv(4096):
            return True
    return False


def test_pipelined_requests_are_served_in_order_on_one_connection(loop_factory) -> None:
    serve = Recorder()
    _, path = loop_factory(serve)
    with _connect(path) as s:
        s.sendall(b"GET /a HTTP/1.1\r\n\r\nGET /bb HTTP/1.1\r\n\r\nGET /ccc HTTP/1.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer == b"19\n20\n40\n"
    assert [r for r, _ in serve.seen] == [b"GET /a HTTP/1.1\r\n\r\n", b"GET /bb HTTP/1.1\r\n\r\n",
                                          b"GET /ccc HTTP/1.1\r\nConnection: close\r\n\r\n"]


def test_idle_and_half_sent_requests_are_closed_at_their_deadline(loop_factory) -> None:
    serve = Recorder()
    _, path = loop_factory(serve, idle_timeout_s=1.0, request_timeout_s=1.5)
    with _connect(path) as idle, _connect(path) as half_head:
        half_head.sendall(b"GET /a HTTP/1.1\r\nHost:")
        assert _closed_by_peer(idle, 10) and _closed_by_peer(half_head, 10)
        assert serve.seen == []  # a head that never ended is not served
    with _connect(path) as alive:
        alive.sendall(b"GET /b HTTP/1.1\r\n\r\n")
        assert alive.recv(16) == b"19\n"


def test_a_body_that_stops_coming_is_served_as_timed_out(loop_factory) -> None:
    serve = Recorder()
    _, path = loop_factory(serve, request_timeout_s=1.0)
    with _connect(path) as s:
        s.sendall(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345")
        assert s.recv(16) == b"45\n"
    assert serve.seen == [(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345", True)]


def test_a_thousand_parked_connections_cost_no_thread(loop_factory) -> None:
    hold = threading.Event()
    serve = Recorder(hold)
    loop, path = loop_factory(serve, workers=4)
    before = threading.active_count()
    socks = [_connect(path) for _ in range(1000)]
    try:
        for s in socks[:600]:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: y")  # half a head
        for s in socks[600:700]:
            s.sendall(b"GET /x HTTP/1.1\r\n\r\n")  # whole, but the workers are held
        deadline = time.monotonic() + 30
        while loop.connection_count() < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.connection_count() == 1000
        assert threading.active_count() == before
        hold.set()
        for s in socks[600:700]:
            assert s.recv(16) == b"19\n"
        assert threading.active_count() == before
    finally:
        hold.set()
        for s in socks:
            s.close()


def test_a_detached_connection_is_left_to_its_new_owner(loop_factory) -> None:
    owned: list[socket.socket] = []

    def serve(conn: Conn, request: bytes, timed_out: bool) -> str:
        owned.append(conn.sock)
        return DETACHED

    loop, path = loop_factory(serve)
    with _connect(path) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\n\r\n")
        deadline = time.monotonic() + 10
        while not owned and time.monotonic() < deadline:
            time.sleep(0.01)
        assert owned and loop.connection_count() == 0
        owned[0].sendall(b"still mine\n")
        assert s.recv(16) == b"still mine\n"
        owned[0].close()


def test_fair_queue_serves_each_key_in_turn() -> None:
    q = FairQueue()
    a = [Conn(socket.socket(socket.AF_UNIX)) for _ in range(3)]
    b = Conn(socket.socket(socket.AF_UNIX))
    try:
        for conn in a:
            q.put(1, conn)
        q.put(2, b)
        assert q.waiting() == 4
        assert [q.get() for _ in range(4)] == [a[0], b, a[1], a[2]]
        assert q.waiting() == 0
    finally:
        for conn in [*a, b]:
            conn.sock.close()


OTHER_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(b"GET /other HTTP/1.1\\r\\n\\r\\n")
print("sent", flush=True)
print(s.recv(16).decode().strip(), flush=True)
"""


def test_another_process_waits_behind_one_request_of_a_busy_one_not_all(loop_factory) -> None:
    hold = threading.Event()
    serve = Recorder(hold)
    loop, path = loop_factory(serve, workers=1)
    socks = [_connect(path) for _ in range(20)]
    other = None
    try:
        assert peer_pid(socks[0]) == os.getpid()
        for i, s in enumerate(socks):
            s.sendall(b"GET /busy%02d HTTP/1.1\r\n\r\n" % i)
        deadline = time.monotonic() + 30
        while loop.requests_waiting() < 19:  # the one worker holds the first
            assert time.monotonic() < deadline, loop.requests_waiting()
            time.sleep(0.01)
        other = subprocess.Popen([sys.executable, "-c", OTHER_CLIENT, path], stdout=subprocess.PIPE, text=True)
        assert other.stdout is not None and other.stdout.readline().strip() == "sent"
        while loop.requests_waiting() < 20:
            assert time.monotonic() < deadline, loop.requests_waiting()
            time.sleep(0.01)
        hold.set()
        assert other.stdout.readline().strip() == "23"
        for s in socks:
            assert s.recv(16) == b"24\n"
        order = [r.split()[1] for r, _ in serve.seen]
        # The first was being served, the busy process's second had its turn next, then the other process.
        assert order.index(b"/other") == 2, order
        assert order[:2] == [b"/busy00", b"/busy01"]
    finally:
        hold.set()
        if other is not None:
            other.wait(timeout=30)
        for s in socks:
            s.close()


# --- a running vswitchd under load ------------------------------------------------------

BUSY_CLIENTS = 500
SLOW_CLIENTS = 100
IDLE_CLIENTS = 1000
SHOW_SAMPLES = 5
# The API's workers and loop, main, the datapath, the port watcher, the metrics server,
# and room for the short-lived threads that enter a namespace: whatever the connections.
THREAD_BOUND = Limits().workers + 8


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.root
def test_show_answers_within_a_second_under_500_clients_with_slow_and_idle_ones(
        vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory) -> None:
    nss = [netns_factory() for _ in range(2)]
    config = '[[network]]\nname = "blue"\n' + "".join(
        f'[[port]]\nname = "c{i}"\nnetwork = "blue"\nnetns = "{ns.name}"\n' for i, ns in enumerate(nss))
    d = vswitchd_factory(config)
    assert d.pid is not None
    threads_before = _threads(d.pid)
    loader = LoadProcess(d.socket_path, BUSY_CLIENTS, SLOW_CLIENTS, IDLE_CLIENTS, "/v1/ports")
    try:
        assert loader.line() == "connected"
        # Hammering for real before the operator asks: every busy client has had answers.
        deadline = time.monotonic() + 60
        while (counts := loader.counts())["answers"] < 10 * BUSY_CLIENTS:
            assert time.monotonic() < deadline, f"the load did not get going: {counts}"
            time.sleep(0.2)
        threads_during, took = [], []
        client = Client(d.socket_path, timeout=30)
        for _ in range(SHOW_SAMPLES):
            started = time.monotonic()
            doc = _show(client, None)  # type: ignore[arg-type]
            took.append(time.monotonic() - started)
            assert sorted(p["name"] for p in doc["ports"]) == ["c0", "c1"]
            threads_during.append(_threads(d.pid))
        after = loader.counts()
        print(f"show took {', '.join(f'{t:.3f}' for t in took)} s with {BUSY_CLIENTS} busy, {SLOW_CLIENTS} slow "
              f"and {IDLE_CLIENTS} idle clients; daemon threads {threads_before} before, {max(threads_during)} during; "
              f"{after['answers'] - counts['answers']} busy answers meanwhile")
        assert after["answers"] > counts["answers"], "the busy clients were not served while show ran"
        assert after["errors"] == 0 and after["slow_answered"] == 0, after
        # How long show took is measured, not asserted (`make bench-api` holds it to a second):
        # on two shared cores a timing bound here would fail on a busy machine, not on a defect.
        print(f"show under load: median {statistics.median(took):.3f} s of {took}")
        assert max(threads_during) <= THREAD_BOUND, (threads_before, threads_during)
    finally:
        loader.close()
    assert d.api("GET", "/v1/health")[0] == 200
