#!/usr/bin/env python3
"""Which API change costs the daemon memory: each change done and undone ROUNDS times in a row,
RSS (without the datapath's frame buffers) before and after each block.

A leak grows by about the same amount in every block; a cost that plateaus (allocator
high-water marks) grows in the first blocks only. As root:

    .venv/bin/python bench/churn_rss.py --rounds 500 --blocks 3 port peer network fdb capture stats
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from hostlab import REMOTE_IP, Site
from lab import Lab, interrupt_on_signals, wait_for

WARM_ROUNDS = 50
SETTLE_S = 0.5
BASE_THREADS_TIMEOUT_S = 5.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--io-mode", choices=("auto", "uring", "poll"), default="auto")
    ap.add_argument("ops", nargs="+", choices=("port", "peer", "network", "fdb", "capture", "stats"))
    args = ap.parse_args()
    interrupt_on_signals()
    with Lab("churnrss") as lab:
        site = Site(lab, args.io_mode)
        site.add_container("c1", "blue", "02:00:00:09:00:01", "10.9.0.1/24")
        site.start({"blue": 100}, [("blue", REMOTE_IP)], {})
        spare = lab.netns("k0")
        base_threads = site.process()["threads"]

        def rss() -> int:
            p = site.process()
            return p["rss_kib"] - p["buffers_rss_kib"]

        def capture() -> None:
            stream = site.client.stream("/v1/ports/c1/capture", idle_timeout=5)  # type: ignore[union-attr]
            next(stream)  # the pcap header: the capture is running
            stream.close()
            wait_for("the capture's thread to end", lambda: site.process()["threads"] <= base_threads,
                     timeout=BASE_THREADS_TIMEOUT_S, interval=0.01)

        ops: dict[str, Callable[[], object]] = {
            "stats": lambda: site.api("GET", "/v1/stats"),
            "peer": lambda: (site.api("POST", "/v1/peers", {"network": "blue", "remote": "192.0.2.50"}),
                             site.api("DELETE", "/v1/peers/blue/192.0.2.50")),
            "network": lambda: (site.api("POST", "/v1/networks", {"name": "x", "vni": 555}),
                                site.api("DELETE", "/v1/networks/x")),
            "fdb": lambda: (site.api("POST", "/v1/fdb", {"network": "blue", "mac": "02:5a:00:00:00:01", "port": "c1"}),
                            site.api("DELETE", "/v1/fdb/blue/02:5a:00:00:00:01")),
            "port": lambda: (site.api("POST", "/v1/ports", {"name": "k", "network": "blue", "netns": spare.name}),
                             site.api("DELETE", "/v1/ports/k")),
            "capture": capture,
        }
        print(f"io_mode {site.stats()['io_mode']}, {args.rounds} rounds a block", flush=True)
        for name in args.ops:
            op = ops[name]
            for _ in range(WARM_ROUNDS):
                op()
            for block in range(args.blocks):
                time.sleep(SETTLE_S)
                r0, t = rss(), time.monotonic()
                for _ in range(args.rounds):
                    op()
                time.sleep(SETTLE_S)
                r1 = rss()
                print(f"{name:8} block {block + 1}: {time.monotonic() - t:5.1f} s, RSS without frame buffers "
                      f"{r0} -> {r1} KiB ({(r1 - r0) * 1024 / args.rounds:+.0f} B a round)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
