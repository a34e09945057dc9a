"""VXLAN TCP and `ping -A` against vswitchd's busy_poll_us, with the kernel's vxlan beside them.

    .venv/bin/python bench/busy_poll.py [--busy-poll-us 0,50,100,200] [--bulk-hold-us 0,2000]
                                        [--modes uring,poll] [--a DIR] [--rounds N] [--seconds S]
                                        [--out DIR]   (root)

On the two-host topology of the VXLAN bench (bench/topologies.py), each round
measures, each on a fresh topology: the kernel's vxlan + bridge, then vswitch
in each I/O mode at each busy_poll_us (and busy_poll_bulk_hold_us, when
more than one is asked for), one iperf3 TCP run of S seconds and one
ping -A -c 2000 each (bench/traffic.py), plus the switch processes' CPU over
the TCP run. With --a DIR, the same vswitch setups also run from that checkout
(its own .venv and build, as bench/ab.py runs one), this checkout's and A's in
turn, A first in odd rounds and second in even ones. The order of the setups
in a round is reversed every other round, so a slow spell of a shared machine
falls on all of them. Reports medians over the rounds and their ratios to the
kernel's, in results.json and results.md under --out (default
bench/results/busy-poll-<date>/). Everything it creates is removed on exit.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import topologies  # noqa: E402
from checkout import THIS, Checkout  # noqa: E402
from lab import BenchError, Lab, interrupt_on_signals  # noqa: E402
from machine import abandoned, finished, install_packages, machine_info, run_ended, write_results  # noqa: E402
from traffic import Runner, cpu_s, start_server  # noqa: E402

PACKAGES = ("iperf3", "iputils-ping")
KERNEL = "kernel vxlan + bridge"


def measure(build: Callable[[Lab], topologies.Topo], seconds: float) -> dict[str, Any]:
    with Lab("bpoll") as lab:
        topo = build(lab)
        topologies.reachable(topo)
        runner = Runner(lab, topo, start_server(lab, topo))
        cpu0 = sum(cpu_s(pid) for pid in topo.switch_pids)
        tcp = runner.tcp(seconds)
        cpu1 = sum(cpu_s(pid) for pid in topo.switch_pids)
        ping = runner.ping(True)
        return {"tcp_gbit_s": tcp["gbit_s"], "tcp_switch_cpu_s": (cpu1 - cpu0) if topo.switch_pids else None,
                "ping_a_avg_us": ping["avg_us"], "ping_a_avg_fastest_99_us": ping["avg_fastest_99_us"],
                "ping_a_min_us": ping["min_us"]}


FIGURES = ("tcp_gbit_s", "tcp_switch_cpu_s", "ping_a_avg_us", "ping_a_avg_fastest_99_us")


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# VXLAN TCP and ping -A against busy_poll_us, {res['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}; load average {m['loadavg_start']} at "
             f"the start, {m['loadavg_end']} at the end. {res['rounds']} round(s), every setup once per round on a "
             f"fresh topology; TCP: one iperf3 run of {res['seconds']:g} s; ping -A -c 2000. Medians over the rounds; "
             "÷ kernel is the ratio of the medians. Switch CPU is both vswitchd's CPU seconds over the TCP run.", "",
             "| setup | TCP Gbit/s | ÷ kernel | switch CPU s (TCP) | ping -A avg µs | ÷ kernel | "
             "ping -A avg µs, slowest 1% out | rounds (TCP / ping avg) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    k = res["median"].get(KERNEL, {})
    for label, med in res["median"].items():
        raw = res["runs"][label]
        tcp_r = (f"{med['tcp_gbit_s'] / k['tcp_gbit_s']:.2f}×" if k and label != KERNEL else "")
        ping_r = (f"{med['ping_a_avg_us'] / k['ping_a_avg_us']:.2f}×" if k and label != KERNEL else "")
        cpu = med["tcp_switch_cpu_s"]
        lines.append(f"| {label} | {med['tcp_gbit_s']:.2f} | {tcp_r} | {'—' if cpu is None else f'{cpu:.2f}'} | "
                     f"{med['ping_a_avg_us']:.1f} | {ping_r} | {med['ping_a_avg_fastest_99_us']:.1f} | "
                     + " ".join(f"{r['tcp_gbit_s']:.2f}/{r['ping_a_avg_us']:.0f}" for r in raw) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy-poll-us", default="0,50,100,200", help="busy_poll_us values, comma-separated")
    ap.add_argument("--bulk-hold-us", default="0",
                    help="busy_poll_bulk_hold_us values, comma-separated (not given to --a's vswitchd when 0)")
    ap.add_argument("--modes", default="uring,poll", help="vswitch I/O modes, comma-separated")
    ap.add_argument("--a", type=Path, help="another vswitch checkout to run the same vswitch setups from")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    try:
        busy = [int(x) for x in args.busy_poll_us.split(",") if x.strip()]
        holds = [int(x) for x in args.bulk_hold_us.split(",") if x.strip()]
    except ValueError:
        ap.error("--busy-poll-us and --bulk-hold-us take integers, comma-separated")
    if not holds or any(not 0 <= h <= 100_000 for h in holds):
        ap.error("--bulk-hold-us values are in [0, 100000]")
    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    if not busy or any(not 0 <= b <= 100_000 for b in busy):
        ap.error("--busy-poll-us values are in [0, 100000]")
    if not modes or set(modes) - {"uring", "poll"}:
        ap.error("--modes takes uring and poll, comma-separated")
    if args.rounds < 1 or args.seconds <= 0:
        ap.error("--rounds must be at least 1 and --seconds positive")
    if os.geteuid() != 0:
        sys.exit("busy_poll needs root (namespaces)")
    interrupt_on_signals()
    date = datetime.date.today().isoformat()
    out_dir = args.out or ROOT / "bench" / "results" / f"busy-poll-{date}"
    started = time.monotonic()
    res: dict[str, Any] = {"date": date, "seconds": args.seconds, "rounds": args.rounds, "machine": machine_info(),
                           "this": THIS.version(), "runs": {}, "median": {}}
    try:
        install_packages(PACKAGES)
        sides = [("", THIS)]
        if args.a:
            a = Checkout.at(args.a)
            a.check_built()
            res["a"] = {"root": str(a.root), "version": a.version()}
            sides.append(("A: ", a))
        setups: list[tuple[str, Callable[[Lab], topologies.Topo]]] = [(KERNEL, topologies.kernel_vxlan)]
        for mode in modes:
            for us in busy:
                for hold in holds:
                    for prefix, c in sides:
                        # An older build may not know the hold: it is only set when asked for.
                        switch = {"busy_poll_us": us} | ({"busy_poll_bulk_hold_us": hold} if hold else {})
                        label = (f"{prefix}vswitch {topologies.IO_MODE_NAMES[mode]}, busy_poll_us {us}"
                                 + (f", bulk hold {hold} us" if len(holds) > 1 else ""))
                        setups.append((label, lambda lab, mode=mode, c=c, switch=switch: topologies.vswitch_vxlan(
                            lab, mode, checkout=c, switch=switch)))
        for label, _ in setups:
            res["runs"][label] = []
        for r in range(args.rounds):
            order = setups if r % 2 == 0 else setups[::-1]
            print(f"round {r + 1} of {args.rounds}", flush=True)
            for label, build in order:
                m = measure(build, args.seconds)
                res["runs"][label].append(m)
                print(f"  {label}: TCP {m['tcp_gbit_s']:.2f} Gbit/s, ping -A avg {m['ping_a_avg_us']:.1f} us",
                      flush=True)
        for label, runs in res["runs"].items():
            res["median"][label] = {f: (statistics.median([x[f] for x in runs]) if runs[0][f] is not None else None)
                                    for f in FIGURES}
        run_ended(res, started)
        md = markdown(res)
        write_results(out_dir, res, md)
        finished("busy_poll", res, md, out_dir, print)
        return 0
    except (BenchError, KeyboardInterrupt) as e:
        return abandoned("busy_poll", e, print)


if __name__ == "__main__":
    sys.exit(main())
