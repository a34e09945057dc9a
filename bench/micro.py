"""Fastpath microbenchmarks: MAC table rates and the loop's cost per frame.

    .venv/bin/python bench/micro.py [--quick] [--json OUT]

- MAC table lookup and learn rates at 1k, 64k and 1M entries, measured in C
  (MacTable.bench_lookup / bench_learn) so Python is not in the timing.
- The forwarding loop's CPU per frame over socketpairs, in each I/O mode
  this machine has (poll, and io_uring unless fastpath.uring_unavailable()
  says why not): the process's CPU time (from /proc) less that of the
  sending and sinking threads, i.e. the loop thread's plus that of any
  io_uring worker thread, divided by the frames the loop handled; for known
  unicast and for floods to 4, 16 and 64 ports.
- The cost of port policy: known unicast IPv4 frames with the sender's port
  security off, then on (source MAC and IPv4 source checked, the MAC pinned).
- As root (the VTEP sends from a raw socket), the same for VXLAN on
  loopback: frames from a port encapsulated to one peer, and datagrams from
  that peer decapsulated to the port.
- The same decisions made by the pure-Python model in tests/model.py, to
  show what compilation buys (decision only, no I/O: the fairest case for
  Python). Only local ingress is timed, so the VXLAN cases have no Python figure.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import select
import socket
import struct
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fastpath import Datapath, MacTable, uring_unavailable, vtep_tx_socket  # noqa: E402
from model import ModelSwitch  # noqa: E402
from rawframes import BROADCAST, eth, mac  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NETWORK = 1
VTEP, PEER = "127.0.0.1", "127.0.0.2"  # both on lo: all of 127/8 is local
VNI = 5001
SO_RCVBUFFORCE = 33  # not in the socket module; lets root pass rmem_max


def cpu_s(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def thread_cpu_s(t: threading.Thread) -> float:
    if t.native_id is None:
        raise RuntimeError(f"thread {t.name} has not started")
    return cpu_s(Path(f"/proc/self/task/{t.native_id}/stat"))


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def queued(sock: socket.socket, request: int) -> int:
    """FIONREAD: bytes waiting to be read from sock (for UDP, the next
    datagram's); TIOCOUTQ: bytes sent on it that the other end has not read."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]


def mac_table(sizes: list[int], rounds: int) -> list[dict]:
    out = []
    for n in sizes:
        t = MacTable(n, aging_s=300)
        t0 = time.perf_counter()
        t.bench_learn(1, n, n, 0)  # fill: every key new
        fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        t.bench_learn(1, n, rounds, 0)  # refresh existing entries
        learn = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = t.bench_lookup(1, n, rounds, 0)
        lookup = time.perf_counter() - t0
        assert hits == rounds, (hits, rounds)
        out.append({
            "entries": n,
            "insert_per_s": n / fill,
            "learn_refresh_per_s": rounds / learn,
            "lookup_per_s": rounds / lookup,
        })
    return out


class Sink(threading.Thread):
    """Drains sockets until close(), counting the messages read."""

    def __init__(self, socks: list[socket.socket]) -> None:
        super().__init__(daemon=True)
        self.socks = socks
        self.count = 0
        self.done = threading.Event()
        for s in socks:
            s.setblocking(False)

    def run(self) -> None:
        while not self.done.is_set():
            for s in select.select(self.socks, [], [], 0.1)[0]:
                try:
                    while True:
                        s.recv(2048)
                        self.count += 1
                except BlockingIOError:
                    pass

    def close(self) -> None:
        self.done.set()
        self.join()


class Rig:
    """A datapath whose loop runs in a thread, with the sockets and sink threads
    around it. Leaving the `with` block stops the loop and the sinks and closes
    every socket, in that order (the datapath uses the fds until it stops)."""

    def __init__(self, io_mode: str) -> None:
        self.dp = Datapath(max_ports=128, mac_table_size=4096, io_mode=io_mode)
        self.loop = threading.Thread(target=self.dp.run, daemon=True)
        self.socks: list[socket.socket] = []
        self.sinks: list[Sink] = []

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop.is_alive():
            self.dp.stop()
            self.loop.join()
        for sink in self.sinks:
            sink.close()
        for s in self.socks:
            s.close()

    def sock(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        s = socket.socket(family, kind, proto)
        self.socks.append(s)
        return s

    def port(self) -> tuple[socket.socket, int]:
        """A socketpair port in NETWORK: our end of it and the port index."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.socks += [ours, theirs]
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return ours, self.dp.add_port(theirs.fileno(), NETWORK)

    def sink(self, socks: list[socket.socket]) -> Sink:
        sink = Sink(socks)
        self.sinks.append(sink)
        sink.start()
        return sink

    def loop_cpu_s(self) -> float:
        """The process's CPU time less the sender's (this thread) and the sinks': the loop
        thread's, and that of any worker thread io_uring started for it."""
        others = thread_cpu_s(threading.current_thread()) + sum(thread_cpu_s(s) for s in self.sinks)
        return cpu_s(Path("/proc/self/stat")) - others

    def cost(self, sock: socket.socket, msg: bytes, seconds: float) -> tuple[int, float]:
        """Send msg on sock for `seconds`: the frames the loop handled
        meanwhile and the CPU seconds it spent."""
        f0, c0 = self.dp.loop_stats()["frames"], self.loop_cpu_s()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(256):
                sock.send(msg)
        f1, c1 = self.dp.loop_stats()["frames"], self.loop_cpu_s()
        return f1 - f0, c1 - c0

    def settle(self, sock: socket.socket, request: int, what: str) -> None:
        """Wait until the loop has read everything queued on sock (see
        queued()) and finished the batch in hand, so that no frame of one
        case is counted in the next."""
        if not wait_until(lambda: queued(sock, request) == 0):
            raise RuntimeError(f"the loop left {what} unread for 5 s")
        self.dp.fdb_lookup(NETWORK, BROADCAST)  # takes the lock the loop holds for a whole batch


def entry(rig: Rig, case: str, outputs: str, frames: int, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"case": case, "io_mode": rig.dp.io_mode, "outputs": outputs, "frames": frames,
            "loop_cpu_ns_per_frame": cpu * 1e9 / max(frames, 1), **extra}


def loop_cost(io_mode: str, fanout: int, known: bool, seconds: float) -> dict[str, Any]:
    with Rig(io_mode) as rig:
        ports = [rig.port() for _ in range(fanout + 1)]
        rig.loop.start()
        rig.sink([ours for ours, _ in ports[1:]])
        if known:  # teach the table where mac(2) lives
            ports[1][0].send(eth(BROADCAST, mac(2)))
            if not wait_until(lambda: rig.dp.fdb_lookup(NETWORK, mac(2)) is not None):
                raise RuntimeError("mac(2) was not learned within 5 s")
        frame = eth(mac(2) if known else BROADCAST, mac(1), b"x" * 50)
        frames, cpu = rig.cost(ports[0][0], frame, seconds)
        return entry(rig, "known unicast" if known else f"flood to {fanout}", "1 port" if known else f"{fanout} ports",
                     frames, cpu)


# An IPv4/UDP packet from 10.0.0.1 (mac(1)), for the cost of port policy, which reads its source.
IPV4_UDP = (bytes([0x45, 0, 0, 78, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2])
            + bytes([0x04, 0xD2, 0x00, 0x50, 0, 58, 0, 0]) + b"x" * 50)


def policy_cost(io_mode: str, policy: bool, seconds: float) -> dict[str, Any]:
    """Known unicast of IPv4 frames, with the sender's port security on (its MAC
    and address checked, the source pinned) or off."""
    with Rig(io_mode) as rig:
        ports = [rig.port() for _ in range(2)]
        if policy:
            rig.dp.set_port_policy(ports[0][1], True, False, False, [mac(1)], ["10.0.0.1"])
            rig.dp.fdb_pin(NETWORK, mac(1), ports[0][1])
        rig.loop.start()
        rig.sink([ports[1][0]])
        rig.dp.fdb_set_static(NETWORK, mac(2), ports[1][1])
        frames, cpu = rig.cost(ports[0][0], eth(mac(2), mac(1), IPV4_UDP, ethertype=0x0800), seconds)
        dropped = {k: v for k, v in rig.dp.port_counters(ports[0][1])["drops"].items() if v}
        if dropped:
            raise RuntimeError(f"the policy dropped the benchmark's frames: {dropped}")
        return entry(rig, "ipv4 unicast, port security" if policy else "ipv4 unicast", "1 port", frames, cpu)


def open_vtep(rig: Rig) -> tuple[int, socket.socket, socket.socket]:
    """Terminate VXLAN at VTEP on a UDP port that is also free at PEER (not
    4789, which a real switch on this host may hold); returns the port, the
    VTEP's receiving socket and a socket bound to the port at PEER, where
    encapsulated frames arrive."""
    for _ in range(10):
        rx, peer = rig.sock(socket.AF_INET, socket.SOCK_DGRAM), rig.sock(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((VTEP, 0))
        port = rx.getsockname()[1]
        try:
            peer.bind((PEER, port))
        except OSError:
            rx.close()
            peer.close()
            continue
        break
    else:
        raise RuntimeError(f"no UDP port free on both {VTEP} and {PEER} after 10 tries")
    # Both ends take bursts faster than their reader: room for them.
    for s in (rx, peer):
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    tx = vtep_tx_socket(VTEP)
    rig.socks.append(tx)
    rig.dp.set_vtep(rx.fileno(), tx.fileno(), port, 49152, 65535, 1500)
    return port, rx, peer


def vxlan_cost(io_mode: str, seconds: float) -> list[dict[str, Any]]:
    """One port and one peer in a VNI, on loopback: broadcasts from the port
    go out encapsulated to the peer; then datagrams from the peer to a MAC on
    the port come in and are decapsulated to it."""
    with Rig(io_mode) as rig:
        port, rx, peer = open_vtep(rig)
        rig.dp.set_network_vni(NETWORK, VNI)
        peer_idx = rig.dp.add_peer(NETWORK, PEER)
        ours, port_idx = rig.port()
        rig.loop.start()

        arrived = rig.sink([peer])
        frames, cpu = rig.cost(ours, eth(BROADCAST, mac(1), b"x" * 50), seconds)
        rig.settle(ours, termios.TIOCOUTQ, f"frames sent to port {port_idx}")
        sent = rig.dp.peer_counters(peer_idx)
        # Fewer than sent arrive when the peer's socket overflowed, so only
        # none at all is an error.
        wait_until(lambda: arrived.count >= sent["tx_packets"], timeout=1.0)
        if arrived.count == 0:
            raise RuntimeError(f"no encapsulated frame arrived at {PEER}:{port} ({sent['tx_packets']} sent)")
        encap = entry(rig, "vxlan encap", "1 peer", frames, cpu, tunnel_tx=sent["tx_packets"],
                      tunnel_tx_errors=sent["tx_errors"], delivered=arrived.count)

        # mac(1) sent the broadcasts above: it is known on the port, so the
        # decapsulated frames go there alone.
        if rig.dp.fdb_lookup(NETWORK, mac(1)) is None:
            raise RuntimeError("mac(1) was not learned on the port")
        sender = rig.sock(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((PEER, 0))  # the source address must be the peer's, or it is an unknown_peer drop
        sender.connect((VTEP, port))
        datagram = struct.pack("!II", 0x08 << 24, VNI << 8) + eth(mac(1), mac(3), b"x" * 50)
        received = rig.sink([ours])
        before = rig.dp.port_counters(port_idx)
        frames, cpu = rig.cost(sender, datagram, seconds)
        rig.settle(rx, termios.FIONREAD, "VXLAN datagrams")
        after = rig.dp.port_counters(port_idx)
        wait_until(lambda: received.count >= after["tx_packets"] - before["tx_packets"], timeout=1.0)
        tx, tx_errors = (after[k] - before[k] for k in ("tx_packets", "tx_errors"))
        drops = {k: v for k, v in rig.dp.vxlan_drops().items() if v}
        if drops:
            raise RuntimeError(f"VXLAN datagrams dropped while decapsulating: {drops}")
        if tx == 0 or received.count == 0:
            raise RuntimeError(f"no decapsulated frame reached port {port_idx} ({frames} datagrams handled)")
        # Frames the sink was too slow for are port_tx_errors (never waited for).
        decap = entry(rig, "vxlan decap", "1 port", frames, cpu, port_tx=tx, port_tx_errors=tx_errors,
                      delivered=received.count)
    return [encap, decap]


def python_model(n: int, fanout: int, known: bool) -> dict:
    m = ModelSwitch(capacity=4096, aging_ms=300_000)
    for p in range(fanout + 1):
        m.add_port(p, 1)
    m.forward(1, eth(BROADCAST, mac(2)))
    frame = eth(mac(2) if known else BROADCAST, mac(1), b"x" * 50)
    t0 = time.perf_counter()
    for _ in range(n):
        m.forward(0, frame)
    dt = time.perf_counter() - t0
    return {"case": "known unicast" if known else f"flood to {fanout}", "python_ns_per_frame": dt * 1e9 / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 3.0
    rounds = 2_000_000 if args.quick else 10_000_000
    why = uring_unavailable()
    modes = ["poll"] if why else ["poll", "uring"]
    res: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "kernel": platform.release()},
        "io_modes": modes,
        "uring_unavailable": why,
        "mac_table": mac_table([1_000, 64_000, 1_000_000], rounds),
        "loop": [row for mode in modes for row in
                 [loop_cost(mode, 1, True, seconds)] + [loop_cost(mode, n, False, seconds) for n in (4, 16, 64)]
                 + [policy_cost(mode, on, seconds) for on in (False, True)]],
        "python_model": [python_model(100_000, 1, True)] + [python_model(20_000, n, False) for n in (4, 16, 64)],
    }
    if os.geteuid() == 0:
        res["loop"] += [row for mode in modes for row in vxlan_cost(mode, seconds)]
    print(f"{'entries':>10} {'insert/s':>12} {'learn/s':>12} {'lookup/s':>12}")
    for r in res["mac_table"]:
        print(f"{r['entries']:>10} {r['insert_per_s']:>12.3g} {r['learn_refresh_per_s']:>12.3g} {r['lookup_per_s']:>12.3g}")
    python = {py["case"]: py["python_ns_per_frame"] for py in res["python_model"]}
    loop = {(lp["case"], lp["io_mode"]): lp["loop_cpu_ns_per_frame"] for lp in res["loop"]}
    print(f"\n{'case':<16}" + "".join(f"{f'loop ns/frame, {m}':>22}" for m in modes)
          + f"{'python model ns/frame (decision only)':>40}")
    for case in dict.fromkeys(lp["case"] for lp in res["loop"]):
        py = python.get(case)
        print(f"{case:<16}" + "".join(f"{loop[case, m]:>22.0f}" for m in modes)
              + f"{'—' if py is None else f'{py:.0f}':>40}")
    if why:
        print(f"io_uring loop: not measured: {why}")
    if os.geteuid() != 0:
        print("vxlan encap/decap: not measured, needs root (the VTEP sends from a raw socket)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
