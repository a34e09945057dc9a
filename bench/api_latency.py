"""GET /v1/stats latency over vswitchd's control socket, idle and while the loop forwards at full rate;
and what Prometheus scrapes cost the loop.

    .venv/bin/python bench/api_latency.py [--quick] [--json OUT]     (as root; needs iperf3)

Two containers on one vswitchd (in its default I/O mode); the load is the
64-byte UDP flood of bench/udpflood.py from one to the other. The scrape
cost is that load run twice, once alone and once while
/metrics is scraped 10 times a second (150 times Prometheus's default rate),
comparing the frames delivered and the switch's CPU per frame. Requests are sequential, one connection each (as vswitchctl does),
timed from connect to the decoded answer. bench/run.py calls measure() on its
own vswitch topology and stores the result with the other figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lab import Lab, interrupt_on_signals
from topologies import Topo, reachable, vswitch_same_host
from traffic import Runner, percentile, start_server

from vswitch.client import Client

IDLE_REQUESTS = 1000
LOADED_REQUESTS_MAX = 1000


def timed_gets(sock: Path, count: int, deadline: float | None = None) -> list[float]:
    """Latencies in ms of up to `count` sequential GET /v1/stats, stopping at `deadline` (monotonic)."""
    client = Client(sock, timeout=10.0)
    out = []
    for _ in range(count):
        if deadline is not None and time.monotonic() >= deadline:
            break
        t0 = time.perf_counter()
        client.request("GET", "/v1/stats")
        out.append((time.perf_counter() - t0) * 1e3)
    return out


SCRAPES_PER_S = 10  # 150 times Prometheus's default rate (one per 15 s)


def scrapes(url: str, deadline: float) -> int:
    """Scrape `url` SCRAPES_PER_S times a second until `deadline` (monotonic); returns how many."""
    n = 0
    start = time.monotonic()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
        n += 1
        time.sleep(max(0.0, start + n / SCRAPES_PER_S - time.monotonic()))
    return n


def scrape_cost(runner: Runner, seconds: float) -> dict[str, Any]:
    url = runner.topo.metrics_url
    assert url is not None, "the topology has no vswitchd metrics address"
    alone = runner.udp(seconds)
    scraped = runner.udp(seconds, busy=lambda end: scrapes(url, end))
    n = scraped.pop("busy")
    return {
        "scrapes": n,
        "scrapes_per_s": n / seconds,
        "delivered_pps_alone": alone["delivered_pps"],
        "delivered_pps_scraped": scraped["delivered_pps"],
        "cpu_us_per_frame_alone": alone.get("cpu_us_per_frame"),
        "cpu_us_per_frame_scraped": scraped.get("cpu_us_per_frame"),
    }


def summary(ms: list[float]) -> dict[str, Any]:
    s = sorted(ms)
    return {"requests": len(s), "p50_ms": percentile(s, 50), "p99_ms": percentile(s, 99), "max_ms": s[-1],
            "mean_ms": statistics.fmean(s)}


def measure(runner: Runner, seconds: float) -> dict[str, Any]:
    """Idle figures, then the same requests during one UDP run through the switch."""
    sock = runner.topo.api_socket
    assert sock is not None, "the topology has no vswitchd API socket"
    timed_gets(sock, 20)  # warm up: first imports, first connections
    idle = summary(timed_gets(sock, IDLE_REQUESTS))
    run = runner.udp(seconds, busy=lambda end: timed_gets(sock, LOADED_REQUESTS_MAX, end))
    loaded = summary(run.pop("busy"))
    return {"idle": idle, "under_load": {**loaded, "load_delivered_pps": run["delivered_pps"],
                                         "load_offered_pps": run["offered_pps"],
                                         "switch_cpu_util": run.get("switch_cpu_util")},
            "scrape_cost": scrape_cost(runner, seconds)}


def report(res: dict[str, Any]) -> str:
    lines = [f"{'GET /v1/stats':<16} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for key, label in (("idle", "idle"), ("under_load", "under UDP load")):
        r = res[key]
        lines.append(f"{label:<16} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    ld = res["under_load"]
    lines.append(f"load: {ld['load_delivered_pps'] / 1e3:.0f}k 64-byte frames/s delivered "
                 f"({ld['load_offered_pps'] / 1e3:.0f}k/s offered)")
    sc = res.get("scrape_cost")
    if sc:
        lines.append(f"scrapes: {sc['scrapes_per_s']:.0f}/s; frames/s delivered "
                     f"{sc['delivered_pps_alone'] / 1e3:.0f}k alone, {sc['delivered_pps_scraped'] / 1e3:.0f}k scraped")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 2 s load instead of 5 s")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    interrupt_on_signals()
    with Lab("api") as lab:
        topo: Topo = vswitch_same_host(lab)
        reachable(topo)
        res = measure(Runner(lab, topo, start_server(lab, topo)), 2.0 if args.quick else 5.0)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
