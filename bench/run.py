"""vswitch side by side with the Linux bridge and Open vSwitch: `make bench` (as root).

    .venv/bin/python bench/run.py [--quick] [--out DIR] [--only SECTION,...]

Installs what it needs with apt-get (iperf3, iputils-ping, openvswitch-switch),
then measures, on this machine and in this one run:
- same host: two containers through vswitch (io_uring and poll I/O with
  offloads on, poll without offloads), Open vSwitch's userspace datapath (TSO
  off and on) and the Linux bridge with veth pairs;
- two hosts over VXLAN: vswitch (io_uring and poll), the kernel vxlan device +
  bridge, and Open vSwitch's userspace VXLAN;
- GET /v1/stats latency of vswitchd's control API, idle and under UDP load;
- vswitchd at 1, 8, 64 and 256 ports with 100k learned FDB entries;
- the fastpath microbenchmarks (bench/micro.py).
It writes results.json, results.md and PNG plots to bench/results/<date>/
(a --quick run, one 2 s run per figure, to a scratch directory instead).
Everything it creates is removed on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import report
import topologies
from api_latency import measure as api_measure, report as api_report
from checkout import THIS
from lab import ROOT, VENV_PY, BenchError, interrupt_on_signals
from machine import abandoned, finished, install_packages, machine_info, run_ended, tool_version, write_results
from scale import measure as scale_measure
from traffic import (PING_ADAPTIVE_COUNT, PING_INTERVAL_COUNT, SATURATED_LOSS_PCT, Runner, measure_fresh,
                     median_of)

DEB_PACKAGES = ["iproute2", "iperf3", "iputils-ping", "openvswitch-switch"]
SECTIONS = ("same_host", "policy", "vxlan", "api", "scale", "micro")
POLICY_GOAL = 0.95  # policy all on against all off: the rules must be nearly free
FLAT_RATIO = 0.7  # lookups at 1M entries at least this fraction of the rate at 1k: "flat"
MAC_SLOT_BYTES = 32  # fastpath/mactable.pxd: mac_entry (with its LRU links); slots = 2 x capacity, rounded up to a power of two


def log(msg: str) -> None:
    print(msg, flush=True)


def versions() -> dict[str, str]:
    return {"vswitch": THIS.version(),
            "Open vSwitch": tool_version(["ovs-vswitchd", "--version"], -1),
            "iperf3": tool_version(["iperf3", "--version"], 1),
            "iputils": tool_version(["ping", "-V"], -1),
            "kernel": platform.release(), "Python": platform.python_version()}


def topology(name: str, setups: list[Any], runs: int, seconds: float,
             extra: Callable[[Runner], None] | None = None) -> dict[str, Any]:
    """Measure every switch's topology `runs` times, round-robin: each round
    builds the setups in turn, measures each once and takes it down. The
    shared machine has slow spells minutes long (every figure, the senders'
    included, drops by up to a fifth at once); taking turns spreads them over
    all the switches instead of letting one spell fall on one switch's runs.
    `extra(runner)` runs on vswitch's default setup in the last round."""
    entries: list[dict[str, Any]] = []
    raws: list[dict[str, list[dict[str, Any]]]] = []
    for s in setups:
        entry: dict[str, Any] = {"key": s.key, "label": s.label, "is_vswitch": s.is_vswitch, "duration_s": 0.0}
        if s.is_vswitch:
            entry |= {"io_mode": s.io_mode, "offloads": s.offloads, "default": s.default}
        entries.append(entry)
        raws.append({})
    for r in range(runs):
        for i, s in enumerate(setups):
            entry = entries[i]
            if "error" in entry:
                continue
            log(f"  {s.label}" + (f" (round {r + 1} of {runs})" if runs > 1 else ""))
            t0 = time.monotonic()
            try:
                got, entry["switch_pids"] = measure_fresh(f"{name[:2]}{i}", s.build, seconds, log,
                                                          extra=extra if s.default and r == runs - 1 else None)
                for kind, kind_runs in got.items():
                    raws[i].setdefault(kind, []).extend(kind_runs)
            except BenchError as e:
                entry["error"] = str(e)
                log(f"    not measured: {e}")
            entry["duration_s"] += time.monotonic() - t0
    for entry, raw in zip(entries, raws):
        if "error" not in entry:
            entry["runs"] = raw
            entry["median"] = {kind: median_of(got) for kind, got in raw.items()}
    return {"setups": entries, "ratios": report.ratios(entries)}


def policy_ratios(setups: list[dict[str, Any]]) -> dict[str, Any]:
    """Policy on ÷ off, figure by figure: the ratio of medians and the median of the round-by-round ratios."""
    off, on = (next((s for s in setups if s["key"] == f"vswitch_policy_{k}"), {}) for k in ("off", "on"))
    return {key: {"ratio": report.ratio(on, off, key), "paired": report.paired_ratio(on, off, key)}
            for key in ("tcp", "pps", "pps_flows", "cpu", "cpu_flows")}


def policy_report(section: dict[str, Any]) -> str:
    lines = ["| figure | off | on | on ÷ off | paired |", "|---|---|---|---|---|"]
    off, on = (next((s for s in section["setups"] if s["key"] == f"vswitch_policy_{k}"), {}) for k in ("off", "on"))
    for key, r in section["on_over_off"].items():
        a, b = report.figure(off, key), report.figure(on, key)
        fmt = (lambda v: "-" if v is None else f"{v:.3g}")
        lines.append(f"| {report.label_of(key)} | {fmt(a)} | {fmt(b)} | {fmt(r['ratio'])} | {fmt(r['paired'])} |")
    return "\n".join(lines) + f"\n\nGoal: on ÷ off >= {POLICY_GOAL} for TCP and 64 B frames/s (higher is better)."


def mac_table_flatness(micro: dict[str, Any], caches: dict[str, str]) -> str:
    rows = micro["mac_table"]
    small, big = rows[0], rows[-1]
    r = big["lookup_per_s"] / small["lookup_per_s"]
    what = (f"Lookups at {big['entries']:,} entries run at {r:.2f}× the rate at {small['entries']:,} "
            f"({big['lookup_per_s'] / 1e6:.1f}M/s against {small['lookup_per_s'] / 1e6:.1f}M/s)")
    if r >= FLAT_RATIO:
        return what + ": the curve is flat."
    slots = 1 << (2 * big["entries"] - 1).bit_length()
    table_mib = slots * MAC_SLOT_BYTES / 2**20
    cache = ", ".join(f"{k} {v}" for k, v in sorted(caches.items())) or "unknown"
    return (what + f": the curve is not flat. The probes per lookup do not change with size (at least 2 slots per "
            f"entry at every size, so about the same load factor); what changes is memory: {big['entries']:,} entries "
            f"take {slots:,} slots of {MAC_SLOT_BYTES} B = {table_mib:.0f} MiB, more than the caches ({cache}), "
            "and the hash spreads consecutive keys over the whole table, so nearly every lookup misses the cache "
            "at this size while the smallest table stays in cache.")


def micro(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vswitch-bench-micro-") as d:
        out = Path(d) / "micro.json"
        argv = [str(VENV_PY), str(ROOT / "bench" / "micro.py"), "--json", str(out)] + (["--quick"] if quick else [])
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        if p.returncode != 0 or not out.exists():
            raise BenchError(f"bench/micro.py exited {p.returncode}: {p.stderr.strip()[-300:]}")
        log("    " + p.stdout.strip().replace("\n", "\n    "))
        return json.loads(out.read_text())


def findings(res: dict[str, Any]) -> list[str]:
    out = []
    for topo in ("same_host", "vxlan"):
        for s in res.get(topo, {}).get("setups", []):
            if "error" in s:
                out.append(f"{s['label']}: not measured: {s['error']}")
                continue
            for kind, load in (("udp", "one flow"), ("udp_flows", "8 flows")):
                loss = s["median"].get(kind, {}).get("loss_pct")
                if s.get("switch_pids") and (loss is None or loss < SATURATED_LOSS_PCT):
                    out.append(f"{s['label']}: its 64 B frames/s ({load}) may not be a saturation rate: the switch "
                               f"dropped only {loss or 0:.1f}% of the frames offered.")
    for g in res.get("goals", []):
        what = f"({g['issue']}, {g['topology']}): {g['vswitch']}, {g['figure']}"
        if g["met"] is False:
            paired = "" if g.get("paired") is None else f" (round by round {g['paired']:.2f}×)"
            out.append(f"Goal missed {what} is {g['ratio']:.2f}× {g['peer']}{paired}, target {g['target']}.")
        elif g["met"] is None:
            out.append(f"Goal not evaluated {what} against {g['peer']}: {g['notes']}.")
    if "micro" in res and "flatness" in res["micro"]:
        out.append(res["micro"]["flatness"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="vswitch benchmarks side by side with the Linux bridge and Open vSwitch")
    ap.add_argument("--quick", action="store_true", help="1 run of 2 s per figure, results to a scratch directory")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results/<date>/)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        ap.error(f"--only: unknown section(s) {', '.join(sorted(only - set(SECTIONS)))}")
    if os.geteuid() != 0:
        log("bench: must run as root (namespaces, TAP devices, Open vSwitch)")
        return 1
    interrupt_on_signals()
    started = time.monotonic()
    date = datetime.date.today().isoformat()
    out_dir = args.out or (Path(tempfile.gettempdir()) / f"vswitch-bench-quick-{date}" if args.quick
                           else ROOT / "bench" / "results" / date)
    # Five short rounds rather than three long ones: the median then rides out
    # a slow spell of the shared machine that hits two rounds of one switch.
    runs, seconds = (1, 2.0) if args.quick else (5, 3.0)
    try:
        install_packages(DEB_PACKAGES, log)
        res: dict[str, Any] = {
            "date": date, "quick": args.quick, "runs": runs, "seconds": seconds,
            "ping_counts": f"ping -A -c {PING_ADAPTIVE_COUNT}, ping -i 0.01 -c {PING_INTERVAL_COUNT}",
            "machine": machine_info(), "versions": versions(),
        }
        log(f"bench: {res['machine']['cpu']}, {res['machine']['cores']} cores, kernel {res['machine']['kernel']}; "
            f"{runs} run(s) of {seconds:g} s per figure")

        def api(runner: Runner) -> None:
            log("  control API latency (GET /v1/stats), idle and under UDP load")
            try:
                res["api_latency"] = api_measure(runner, seconds)
                log("    " + api_report(res["api_latency"]).replace("\n", "\n    "))
            except BenchError as e:
                res["api_latency"] = {"error": str(e)}
                log(f"    not measured: {e}")

        if "same_host" in only:
            log("same host: two containers through one switch")
            res["same_host"] = topology("same_host", topologies.same_host(), runs, seconds,
                                        api if "api" in only else None)
        if "policy" in only:
            log("the cost of port policy: same host, every rule off, then all on")
            res["policy"] = topology("policy", topologies.policy(), runs, seconds)
            res["policy"]["on_over_off"] = policy_ratios(res["policy"]["setups"])
            log("    " + policy_report(res["policy"]).replace("\n", "\n    "))
        if "vxlan" in only:
            log("two hosts over VXLAN")
            res["vxlan"] = topology("vxlan", topologies.vxlan(), runs, seconds)
        if "scale" in only:
            log("scale: vswitchd with 1, 8, 64, 256 ports and 100k learned FDB entries")
            res["scale"] = scale_measure(1, seconds, log)
            mode = topologies.IO_MODE_NAMES[topologies.default_io_mode()]
            res["scale_note"] = (f"vswitchd runs in its default I/O mode ({mode} here). "
                                 f"Throughput is one TCP run of {seconds:g} s per point, not a median, "
                                 "to keep the whole benchmark within 15 minutes.")
        if "micro" in only:
            log("fastpath microbenchmarks (bench/micro.py)")
            try:
                res["micro"] = micro(args.quick)
                res["micro"]["flatness"] = mac_table_flatness(res["micro"], res["machine"]["caches"])
            except (BenchError, subprocess.TimeoutExpired) as e:
                res["micro"] = {"error": str(e)}
        res["goals"] = report.goals(res)
        res["findings"] = findings(res)
        run_ended(res, started)
        out_dir.mkdir(parents=True, exist_ok=True)
        res["plots"] = report.plots(res, out_dir)
        md = report.markdown(res)
        if "policy" in res:
            md += "\n## The cost of port policy (same host)\n\n" + policy_report(res["policy"]) + "\n"
        write_results(out_dir, res, md)
    except (KeyboardInterrupt, BenchError) as e:
        return abandoned("bench", e, log)
    finished("bench", res, md, out_dir, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
