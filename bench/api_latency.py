"""GET /v1/stats latency over vswitchd's control socket, idle and while the loop forwards at full rate;
what Prometheus scrapes cost the loop; and `vswitchctl show` under hundreds of API clients.

    .venv/bin/python bench/api_latency.py [--quick] [--json OUT]     (as root; needs iperf3)
    .venv/bin/python bench/api_latency.py --clients [--out DIR]      (as root; `make bench-api`)

Two containers on one vswitchd (in its default I/O mode); the load is the
64-byte UDP flood of bench/udpflood.py from one to the other. The scrape
cost is that load run twice, once alone and once while
/metrics is scraped 10 times a second (150 times Prometheus's default rate),
comparing the frames delivered and the switch's CPU per frame. Requests are sequential, one connection each (as vswitchctl does),
timed from connect to the decoded answer. bench/run.py calls measure() on its
own vswitch topology and stores the result with the other figures.

--clients: 500 keep-alive clients that each ask GET /v1/ports again as soon
as their answer is whole, 100 slow ones that send half a request head and
wait, and 1000 idle connections (tests/harness/api_load.py, one process);
once every busy client has had answers, their rate is measured alone, then
`vswitchctl show` (the CLI's own code, a fresh Client) is timed SHOW_SAMPLES
times, one every SHOW_EVERY_S, with the daemon's thread count. The bound it is held to is SHOW_BOUND_S at the median; the result
(JSON and a Markdown table) goes to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lab import ROOT, BenchError, Lab, interrupt_on_signals, wait_for
from topologies import Topo, reachable, vswitch_same_host
from traffic import Runner, percentile, start_server

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for the load generator the tests use too
from tests.harness.api_load import LoadProcess  # noqa: E402
from vswitch.cli import _show
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


BUSY_CLIENTS = 500
SLOW_CLIENTS = 100
IDLE_CLIENTS = 1000
BUSY_ROUTE = "/v1/ports"
SHOW_SAMPLES = 30
SHOW_EVERY_S = 0.5  # an operator's pace, not a second load
THROUGHPUT_WINDOW_S = 5.0
SHOW_BOUND_S = 1.0


def show_under_clients(lab: Lab, topo: Topo, samples: int = SHOW_SAMPLES) -> dict[str, Any]:
    sock = topo.api_socket
    assert sock is not None and topo.switch_pids, "the topology has no vswitchd"
    pid = topo.switch_pids[0]
    threads = lambda: len(os.listdir(f"/proc/{pid}/task"))  # noqa: E731
    threads_before = threads()
    loader = LoadProcess(sock, BUSY_CLIENTS, SLOW_CLIENTS, IDLE_CLIENTS, BUSY_ROUTE)
    lab.cleanup.push(f"api_load (pid {loader.proc.pid})", loader.close)
    if loader.line() != "connected":
        raise BenchError("the load generator did not connect")
    wait_for("every busy client answered ten times", lambda: loader.counts()["answers"] >= 10 * BUSY_CLIENTS,
             timeout=120, interval=0.2)
    # The busy clients' rate on their own, then while an operator runs show every SHOW_EVERY_S.
    first = loader.counts()
    time.sleep(THROUGHPUT_WINDOW_S)
    alone = loader.counts()
    rate_alone = (alone["answers"] - first["answers"]) / THROUGHPUT_WINDOW_S
    client = Client(sock, timeout=60)
    took, threads_during = [], []
    started = time.monotonic()
    for i in range(samples):
        time.sleep(max(0.0, started + i * SHOW_EVERY_S - time.monotonic()))
        t0 = time.perf_counter()
        _show(client, None)  # type: ignore[arg-type]
        took.append(time.perf_counter() - t0)
        threads_during.append(threads())
    elapsed = time.monotonic() - started
    last = loader.counts()
    if last["errors"] or last["slow_answered"]:
        raise BenchError(f"the load generator saw errors: {last}")
    s = sorted(took)
    return {"busy_clients": BUSY_CLIENTS, "slow_clients": SLOW_CLIENTS, "idle_clients": IDLE_CLIENTS,
            "busy_route": BUSY_ROUTE, "samples": samples,
            "show_s": {"median": statistics.median(s), "p90": percentile(s, 90), "min": s[0], "max": s[-1],
                       "all": [round(t, 4) for t in took]},
            "bound_s": SHOW_BOUND_S, "within_bound": statistics.median(s) <= SHOW_BOUND_S,
            "busy_answers_per_s": {"alone": rate_alone, "during_show": (last["answers"] - alone["answers"]) / elapsed},
            "daemon_threads": {"before": threads_before, "max_during": max(threads_during)},
            "load_generator": {k: v for k, v in last.items() if v}}


def clients_report(res: dict[str, Any], note: str) -> str:
    sh = res["show_s"]
    return "\n".join([
        f"# `vswitchctl show` under {res['busy_clients']} busy API clients, {res['date']}", "",
        f"{res['busy_clients']} keep-alive clients each asking GET {res['busy_route']} again as soon as answered, "
        f"{res['slow_clients']} slow clients holding half a request head, {res['idle_clients']} idle connections "
        "(tests/harness/api_load.py, one process); `show` is the CLI's own code on fresh connections.", "",
        f"Machine: {res['machine']}. {note}", "",
        "| show, s | median | p90 | min | max | bound (median) |", "| --- | --- | --- | --- | --- | --- |",
        f"| {res['samples']} samples | {sh['median']:.3f} | {sh['p90']:.3f} | {sh['min']:.3f} | {sh['max']:.3f} | "
        f"{res['bound_s']:.1f} ({'met' if res['within_bound'] else 'MISSED'}) |", "",
        f"Busy clients answered: {res['busy_answers_per_s']['alone']:.0f} requests/s on their own "
        f"({THROUGHPUT_WINDOW_S:g} s), {res['busy_answers_per_s']['during_show']:.0f}/s while show ran every "
        f"{SHOW_EVERY_S:g} s. Daemon threads: "
        f"{res['daemon_threads']['before']} before the clients, at most {res['daemon_threads']['max_during']} during.",
        "", "Every sample, s: " + ", ".join(f"{t:.3f}" for t in sh["all"]), ""])


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 2 s load instead of 5 s")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--clients", action="store_true", help="show under 500 busy, slow and idle API clients instead")
    ap.add_argument("--samples", type=int, default=SHOW_SAMPLES, help="show timings to take (--clients)")
    ap.add_argument("--out", type=Path, help="directory for api_clients.json and .md (--clients)")
    ap.add_argument("--note", default="", help="a line about the conditions of the run, for the report (--clients)")
    args = ap.parse_args()
    interrupt_on_signals()
    if args.clients:
        machine = machine_note()
        with Lab("apic") as lab:
            topo = vswitch_same_host(lab)
            res = show_under_clients(lab, topo, args.samples)
        res["date"] = datetime.date.today().isoformat()
        res["machine"] = machine
        res["note"] = args.note
        text = clients_report(res, args.note)
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "api_clients.json").write_text(json.dumps(res, indent=2) + "\n")
            (args.out / "api_clients.md").write_text(text)
        return 0 if res["within_bound"] else 1
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
