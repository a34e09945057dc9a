"""Two builds of vswitch side by side, B against A: `make bench-ab A=DIR B=DIR` (as root).

    .venv/bin/python bench/ab.py --a DIR --b DIR [--rounds N] [--seconds S] [--only same_host,vxlan]
                                 [--modes uring,poll] [--kinds tcp,udp,udp_flows,ping_adaptive]
                                 [--threshold T] [--out DIR]

Each DIR is a vswitch checkout with its own .venv and fastpath built in place
(`make build` there); its vswitchd runs as `DIR/.venv/bin/python -m vswitch`
from DIR, and is checked to have loaded DIR's extensions and no others.
Everything else (the topologies, iperf3, the 64-byte load of
bench/udpflood.py, ping and the counting) comes from this checkout and is the
same for both.

In each round, for each I/O mode (io_uring, poll; offloads on), A and B are
measured in turn, each on a fresh topology: A first in odd rounds, B first in
even ones, so a slow spell of the shared machine falls on both. Figures: TCP
Gbit/s, 64 B frames/s delivered with one flow and with 8 interleaved flows,
the switch's CPU µs per frame on each, and `ping -A` average µs. The report
gives each side's medians, B/A of the medians (which decides the verdict:
throughput at ≥ T× A's, CPU and latency at ≤ 1/T×) and the median of the
round-by-round ratios, in results.md and results.json under --out (default
bench/results/ab-<date>-<time>/). Sections: same_host (two containers through
one vswitchd; the default) and vxlan (two hosts over VXLAN).
--modes and --kinds narrow a run to the I/O modes and figures in question,
so one figure can be given many more rounds (the others are not compared).
Everything it creates is removed on exit, Ctrl-C included.
Exit status: 0 when B meets the threshold on every figure, 3 when it misses
one, 1 when a figure could not be measured.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import ab_report
import topologies
from checkout import THIS, Checkout
from lab import ROOT, BenchError, Lab, interrupt_on_signals
from machine import abandoned, finished, install_packages, machine_info, run_ended, tool_version, write_results
from traffic import PING_ADAPTIVE_COUNT, measure_fresh

from fastpath import uring_unavailable

DEB_PACKAGES = ["iproute2", "iperf3", "iputils-ping"]
SIDES = ("A", "B")
MODES = ("uring", "poll")
KINDS = ("tcp", "udp", "udp_flows", "ping_adaptive")
SECTIONS: dict[str, Callable[[str, Checkout], Callable[[Lab], topologies.Topo]]] = {
    "same_host": lambda mode, c: lambda lab: topologies.vswitch_same_host(lab, mode, checkout=c),
    "vxlan": lambda mode, c: lambda lab: topologies.vswitch_vxlan(lab, mode, checkout=c),
}
DEFAULT_THRESHOLD = 0.97


def log(msg: str) -> None:
    print(msg, flush=True)


def schedule(rounds: int, modes: tuple[str, ...]) -> Iterator[tuple[int, str, int, str]]:
    """(round, I/O mode, position in the pair, side) in the order they are measured: within a
    round each mode's pair in turn, A first in rounds 0, 2, ... and B first in the others."""
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for mode in modes:
            for position, side in enumerate(order):
                yield r, mode, position, side


def section(name: str, checkouts: dict[str, Checkout], modes: tuple[str, ...], rounds: int,
            seconds: float, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Every round of one topology: per mode and side, one record per round, in round order."""
    records: dict[str, dict[str, list[dict[str, Any]]]] = {m: {s: [] for s in SIDES} for m in modes}
    started = time.monotonic()
    for r, mode, position, side in schedule(rounds, modes):
        if mode == modes[0] and position == 0 and r > 0:
            per_round = (time.monotonic() - started) / r
            log(f"  ({per_round:.0f} s a round; about {per_round * (rounds - r) / 60:.1f} min to go)")
        log(f"  round {r + 1} of {rounds}, {topologies.IO_MODE_NAMES[mode]}: {side} ({checkouts[side].root})")
        rec: dict[str, Any] = {"round": r + 1, "position": position + 1}
        t0 = time.monotonic()
        try:
            rec["runs"], _ = measure_fresh(f"{name[:2]}{side}{mode[0]}", SECTIONS[name](mode, checkouts[side]),
                                           seconds, log, kinds)
        except BenchError as e:
            rec["error"] = str(e)
            log(f"    not measured: {e}")
        rec["duration_s"] = time.monotonic() - t0
        records[mode][side].append(rec)
    return {"modes": records, "duration_s": time.monotonic() - started}


def main() -> int:
    ap = argparse.ArgumentParser(description="two builds of vswitch side by side, B against A, in alternating runs")
    ap.add_argument("--a", required=True, type=Path, metavar="DIR", help="the reference checkout (built)")
    ap.add_argument("--b", required=True, type=Path, metavar="DIR", help="the checkout under test (built)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each measures both sides once per I/O mode (5)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each TCP and UDP run (3)")
    ap.add_argument("--only", default="same_host", help=f"comma-separated subset of {','.join(SECTIONS)} "
                    "(same_host)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)} (both)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}, "
                    "taken in that order on each topology (all)")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help=f"the least B/A a throughput may come to; CPU and latency at most its inverse "
                    f"({DEFAULT_THRESHOLD})")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results/ab-<date>-<time>/)")
    args = ap.parse_args()
    only = [s for s in SECTIONS if s in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown or not only:
        ap.error(f"--only: unknown section(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                 f"choose from {','.join(SECTIONS)}")
    asked_modes, kinds = args.modes.split(","), tuple(k for k in KINDS if k in args.kinds.split(","))
    if set(asked_modes) - set(MODES) or not asked_modes:
        ap.error(f"--modes: choose from {','.join(MODES)}")
    if set(args.kinds.split(",")) - set(KINDS) or not kinds:
        ap.error(f"--kinds: choose from {','.join(KINDS)}")
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    if args.seconds < 1.0:
        ap.error("--seconds: at least 1 (each UDP run warms up for 0.5 s before its window opens)")
    if not 0.0 < args.threshold <= 1.0:
        ap.error("--threshold: a ratio in (0, 1], e.g. 0.97")
    checkouts = {"A": Checkout.at(args.a), "B": Checkout.at(args.b)}
    try:
        builds = {side: c.check_built() for side, c in checkouts.items()}
    except BenchError as e:
        log(f"bench-ab: {e}")
        return 1
    if os.geteuid() != 0:
        log("bench-ab: must run as root (namespaces, TAP devices)")
        return 1
    interrupt_on_signals()
    started = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    out_dir = args.out or ROOT / "bench" / "results" / f"ab-{now:%Y-%m-%d-%H%M}"
    try:
        install_packages(DEB_PACKAGES, log)
        why = uring_unavailable()
        modes = tuple(m for m in MODES if m in asked_modes and not (m == "uring" and why))
        if not modes:
            raise BenchError(f"no I/O mode left to measure: io_uring is unavailable here ({why})")
        res: dict[str, Any] = {
            "started_utc": now.isoformat(timespec="seconds"), "rounds": args.rounds, "seconds": args.seconds,
            "threshold": args.threshold, "ping": f"ping -A -c {PING_ADAPTIVE_COUNT}",
            "io_modes": list(modes), "io_uring_unavailable": why or None,
            "kinds": list(kinds) if kinds != KINDS else None,
            "sides": {side: {"dir": str(c.root), "version": c.version(), "imports": builds[side]}
                      for side, c in checkouts.items()},
            "tool": {"dir": str(THIS.root), "version": THIS.version()},
            "machine": machine_info(),
            "versions": {"iperf3": tool_version(["iperf3", "--version"], 1),
                         "iputils": tool_version(["ping", "-V"], -1),
                         "kernel": platform.release(), "Python": platform.python_version()},
        }
        if checkouts["A"] == checkouts["B"]:
            log("bench-ab: A and B are the same checkout: an A/A run, which shows the noise floor")
        if why:
            log(f"bench-ab: io_uring mode left out: {why}")
        for side in SIDES:
            log(f"bench-ab: {side} = {checkouts[side].root} at {res['sides'][side]['version']}")
        log(f"bench-ab: {res['machine']['cpu']}, {res['machine']['cores']} cores; {args.rounds} round(s), "
            f"runs of {args.seconds:g} s, modes {', '.join(topologies.IO_MODE_NAMES[m] for m in modes)}")
        for name in only:
            log(f"{ab_report.TITLES[name]}")
            res[name] = section(name, checkouts, modes, args.rounds, args.seconds, kinds)
            res[name]["figures"] = ab_report.compare(res[name]["modes"], args.threshold, kinds)
        res["verdict"] = ab_report.verdict([f for name in only for f in res[name]["figures"]], args.threshold)
        run_ended(res, started)
        md = ab_report.markdown(res, only)
        write_results(out_dir, res, md)
    except (KeyboardInterrupt, BenchError) as e:
        return abandoned("bench-ab", e, log)
    finished("bench-ab", res, md, out_dir, log)
    return {"pass": 0, "fail": 3}.get(res["verdict"]["status"], 1)


if __name__ == "__main__":
    sys.exit(main())
