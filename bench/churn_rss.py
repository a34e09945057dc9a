#!/usr/bin/env python3
"""Which API change costs the daemon memory: each kind of change done and undone ROUNDS times in a
row, against a real vswitchd (real namespaces and TAPs), with the daemon's RSS (without the
datapath's frame buffers) before and after each block and every SAMPLE_EVERY rounds.

A leak grows by about the same amount in every block; a cost that plateaus (allocator
high-water marks) grows in the first blocks only. With --memdebug DIR the daemon runs with
VSWITCH_MEMDEBUG=DIR (tracemalloc on, see vswitch/memdebug.py) and writes a report after each
kind: RSS and malloc's bytes in use before and after malloc_trim(0), Python objects by type and the
allocation sites grown. As root:

    .venv/bin/python bench/churn_rss.py --rounds 500 --blocks 3 port peer network fdb capture stats metrics show
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

from hostlab import REMOTE_IP, Site
from lab import Lab, interrupt_on_signals, wait_for

from vswitch import cli
from vswitch.netns import run_in_netns

WARM_ROUNDS = 50
SETTLE_S = 0.5
SAMPLE_EVERY = 25
BASE_THREADS_TIMEOUT_S = 5.0
MEMDEBUG_TIMEOUT_S = 120.0
OPS = ("port", "peer", "network", "fdb", "capture", "stats", "metrics", "show")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--io-mode", choices=("auto", "uring", "poll"), default="auto")
    ap.add_argument("--samples", type=Path, help="write every sample (op, round, RSS) to this CSV")
    ap.add_argument("--memdebug", type=Path, help="directory for the daemon's memdebug reports")
    ap.add_argument("ops", nargs="+", choices=OPS)
    args = ap.parse_args()
    interrupt_on_signals()
    if args.memdebug:
        args.memdebug = args.memdebug.resolve()
        os.environ["VSWITCH_MEMDEBUG"] = str(args.memdebug)  # the daemon inherits it
    samples: list[tuple[str, int, int, int]] = []
    with Lab("churnrss") as lab:
        site = Site(lab, args.io_mode)
        site.add_container("c1", "blue", "02:00:00:09:00:01", "10.9.0.1/24")
        site.start({"blue": 100}, [("blue", REMOTE_IP)], {})
        # As the soak does: a port in one of three namespaces, with an address; peers and static
        # MACs that differ from one round to the next.
        spare = [lab.netns(f"k{i}") for i in range(3)]
        n = 0

        def nth() -> int:
            nonlocal n
            n += 1
            return n
        base_threads = site.process()["threads"]
        found = re.search(r"metrics on (http://\S+/metrics)", (lab.dir / "vswitchd.log").read_text())
        assert found, "the daemon did not log its metrics address"
        metrics_url = found.group(1)
        sock = str(lab.dir / "vs.sock")

        def rss() -> int:
            p = site.process()
            return p["rss_kib"] - p["buffers_rss_kib"]

        def total_rss() -> int:
            # Without the largest mapping is blind to a malloc heap that outgrows the frame buffers' touched pages.
            return site.process()["rss_kib"]

        def capture() -> None:
            stream = site.client.stream("/v1/ports/c1/capture", idle_timeout=5)  # type: ignore[union-attr]
            next(stream)  # the pcap header: the capture is running
            stream.close()
            wait_for("the capture's thread to end", lambda: site.process()["threads"] <= base_threads,
                     timeout=BASE_THREADS_TIMEOUT_S, interval=0.01)

        def scrape_here() -> None:
            with urllib.request.urlopen(metrics_url, timeout=10) as r:
                r.read()

        def scrape() -> None:
            # The daemon serves /metrics on the loopback of its own namespace.
            run_in_netns(f"/run/netns/{site.host.name}", scrape_here)

        def show() -> None:
            # vswitchctl's own code path (its requests and rendering), without a process start a round.
            with contextlib.redirect_stdout(io.StringIO()):
                if cli.main(["--socket", sock, "show"]) != 0:
                    raise RuntimeError("vswitchctl show failed")

        def port() -> None:
            i = nth()
            site.api("POST", "/v1/ports", {"name": f"k{i % 3}", "network": "blue", "netns": spare[i % 3].name,
                                           "ip": f"10.9.1.{1 + i % 200}/24"})
            site.api("DELETE", f"/v1/ports/k{i % 3}")

        def peer() -> None:
            remote = f"192.0.2.{10 + nth() % 40}"
            site.api("POST", "/v1/peers", {"network": "blue", "remote": remote})
            site.api("DELETE", f"/v1/peers/blue/{remote}")

        def network() -> None:
            i = nth()
            site.api("POST", "/v1/networks", {"name": f"churn{i % 7}", "vni": 1000 + i % 7})
            site.api("DELETE", f"/v1/networks/churn{i % 7}")

        def fdb() -> None:
            i = nth()
            mac = f"02:5a:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
            site.api("POST", "/v1/fdb", {"network": "blue", "mac": mac, "port": "c1"})
            site.api("DELETE", f"/v1/fdb/blue/{mac}")

        ops: dict[str, Callable[[], object]] = {
            "stats": lambda: site.api("GET", "/v1/stats"),
            "peer": peer,
            "network": network,
            "fdb": fdb,
            "port": port,
            "capture": capture,
            "metrics": scrape,
            "show": show,
        }
        reports = 0

        def memdebug_report(name: str) -> None:
            nonlocal reports
            reports += 1
            path = args.memdebug / f"memdebug-{reports}.txt"
            os.kill(site.pid, signal.SIGUSR1)
            wait_for(f"memdebug report {path}", path.exists, timeout=MEMDEBUG_TIMEOUT_S, interval=0.1)
            named = path.with_name(f"memdebug-{reports}-{name}.txt")
            path.rename(named)
            head = named.read_text().splitlines()[1:5]
            print(f"{name:8} memdebug {named.name}: " + "; ".join(head), flush=True)

        print(f"io_mode {site.stats()['io_mode']}, {args.rounds} rounds a block", flush=True)
        if args.memdebug:
            memdebug_report("start")
        for name in args.ops:
            op = ops[name]
            for _ in range(WARM_ROUNDS):
                op()
            for block in range(args.blocks):
                time.sleep(SETTLE_S)
                r0, t0, t = rss(), total_rss(), time.monotonic()
                for i in range(args.rounds):
                    op()
                    if args.samples and i % SAMPLE_EVERY == 0:
                        samples.append((name, block * args.rounds + i, total_rss(), rss()))
                time.sleep(SETTLE_S)
                r1, t1 = rss(), total_rss()
                print(f"{name:8} block {block + 1}: {time.monotonic() - t:5.1f} s, RSS {t0} -> {t1} KiB "
                      f"({(t1 - t0) * 1024 / args.rounds:+.0f} B a round); without frame buffers "
                      f"{r0} -> {r1} KiB ({(r1 - r0) * 1024 / args.rounds:+.0f} B a round)", flush=True)
            if args.memdebug:
                memdebug_report(name)
    if args.samples:
        with args.samples.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("op", "round", "rss_kib", "rss_kib_without_buffers"))
            w.writerows(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
