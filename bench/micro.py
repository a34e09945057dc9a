"""Fastpath microbenchmarks (no root): MAC table rates and the loop's cost per frame.

    .venv/bin/python bench/micro.py [--quick] [--json OUT]

- MAC table lookup and learn rates at 1k, 64k and 1M entries, measured in C
  (MacTable.bench_lookup / bench_learn) so Python is not in the timing.
- The forwarding loop's CPU per frame over socketpairs: the loop thread's
  own CPU time (from /proc) divided by the frames it handled, for known
  unicast and for floods to 4, 16 and 64 ports. Senders and sinks run in
  other threads and are not counted.
- The same decisions made by the pure-Python model in tests/model.py, to
  show what compilation buys (decision only, no I/O: the fairest case for
  Python).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fastpath import Datapath, MacTable  # noqa: E402
from model import ModelSwitch  # noqa: E402
from rawframes import BROADCAST, eth, mac  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


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


class Pump:
    """A sender thread per input port and a sink thread draining the outputs."""

    def __init__(self, dp: Datapath, fanout: int) -> None:
        self.dp = dp
        self.pairs = []
        for i in range(fanout + 1):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            for s in (ours, theirs):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            dp.add_port(theirs.fileno(), 1)
            self.pairs.append((ours, theirs))
        self.stop = threading.Event()

    def sink(self) -> None:
        import select
        socks = [o for o, _ in self.pairs[1:]]
        for s in socks:
            s.setblocking(False)
        while not self.stop.is_set():
            for s in select.select(socks, [], [], 0.1)[0]:
                try:
                    while True:
                        s.recv(2048)
                except BlockingIOError:
                    pass

    def send(self, frame: bytes, seconds: float) -> None:
        s = self.pairs[0][0]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(256):
                s.send(frame)


def loop_cost(fanout: int, known: bool, seconds: float) -> dict:
    dp = Datapath(max_ports=128, mac_table_size=4096)
    pump = Pump(dp, fanout)
    loop = threading.Thread(target=dp.run, daemon=True)
    loop.start()
    sink = threading.Thread(target=pump.sink, daemon=True)
    sink.start()
    if known:  # teach the table where mac(2) lives
        pump.pairs[1][0].send(eth(BROADCAST, mac(2)))
    frame = eth(mac(2) if known else BROADCAST, mac(1), b"x" * 50)
    time.sleep(0.2)
    f0, c0 = dp.loop_stats()["frames"], thread_cpu_s(loop.native_id)
    pump.send(frame, seconds)
    f1, c1 = dp.loop_stats()["frames"], thread_cpu_s(loop.native_id)
    pump.stop.set()
    dp.stop()
    loop.join()
    sink.join()
    for a, b in pump.pairs:
        a.close()
        b.close()
    frames = f1 - f0
    tx = "1 port" if known else f"{fanout} ports"
    return {"case": "known unicast" if known else f"flood to {fanout}", "outputs": tx, "frames": frames,
            "loop_cpu_ns_per_frame": (c1 - c0) * 1e9 / max(frames, 1)}


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
    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "kernel": platform.release()},
        "mac_table": mac_table([1_000, 64_000, 1_000_000], rounds),
        "loop": [loop_cost(1, True, seconds)] + [loop_cost(n, False, seconds) for n in (4, 16, 64)],
        "python_model": [python_model(100_000, 1, True)] + [python_model(20_000, n, False) for n in (4, 16, 64)],
    }
    print(f"{'entries':>10} {'insert/s':>12} {'learn/s':>12} {'lookup/s':>12}")
    for r in res["mac_table"]:
        print(f"{r['entries']:>10} {r['insert_per_s']:>12.3g} {r['learn_refresh_per_s']:>12.3g} {r['lookup_per_s']:>12.3g}")
    print(f"\n{'case':<16} {'loop ns/frame':>14} {'python model ns/frame (decision only)':>38}")
    for lp, py in zip(res["loop"], res["python_model"]):
        print(f"{lp['case']:<16} {lp['loop_cpu_ns_per_frame']:>14.0f} {py['python_ns_per_frame']:>38.0f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
