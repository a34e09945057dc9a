"""Where the machine's CPU goes during one VXLAN TCP run: both vswitchd, both
iperf3 ends, softirq threads, idle and everything else, from perf's
cpu-clock samples taken system-wide; and, for vswitchd, its hottest
symbols (user and kernel). The kernel's vxlan device is profiled the same
way, on the same two-host topology (bench/topologies.py).

    .venv/bin/python bench/vxlan_profile.py [--switch vswitch|kernel] [--io-mode uring|poll]
                                            [--seconds S] [--busy-poll-us N] [--top N]   (root)

cpu-clock is a timer, not a hardware counter (this machine's VM has none):
the split is of time, and other work on a shared machine lands in "other".
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import topologies  # noqa: E402
from lab import Lab  # noqa: E402
from traffic import Runner, start_server  # noqa: E402


def threads_of(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except FileNotFoundError:
        return set()


def classify(samples: list[tuple[int, int, str, str, str]], switch: dict[int, str], server: int
             ) -> tuple[collections.Counter, collections.Counter]:
    """Samples (pid, tid, comm, symbol, dso) by who ran, and vswitchd's by symbol."""
    who: collections.Counter = collections.Counter()
    syms: collections.Counter = collections.Counter()
    for pid, tid, comm, sym, dso in samples:
        if pid in switch:
            who[f"{switch[pid]} ({'loop' if comm.startswith('vswitch-loop') or 'loop' in comm else comm})"] += 1
            syms[f"{sym} [{'k' if 'kernel' in dso else Path(dso).name}]"] += 1
        elif comm == "iperf3":
            who["iperf3 server (receiver)" if pid == server else "iperf3 client (sender)"] += 1
        elif comm.startswith("ksoftirqd"):
            who["ksoftirqd"] += 1
        elif pid == 0:
            who["idle"] += 1
        else:
            who["other"] += 1
    return who, syms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switch", choices=("vswitch", "kernel"), default="vswitch")
    ap.add_argument("--io-mode", choices=("uring", "poll"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--busy-poll-us", type=int, help="vswitchd's busy_poll_us (default: its own default)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("vxlan_profile needs root (namespaces, perf -a)")
    with Lab("vxprof") as lab, tempfile.TemporaryDirectory() as tmp:
        settings = {} if args.busy_poll_us is None else {"busy_poll_us": args.busy_poll_us}
        topo = (topologies.vswitch_vxlan(lab, args.io_mode, switch=settings) if args.switch == "vswitch"
                else topologies.kernel_vxlan(lab))
        topologies.reachable(topo)
        server = start_server(lab, topo)
        runner = Runner(lab, topo, server)
        data = Path(tmp) / "perf.data"
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "997", "-a", "-o", str(data),
                                 "--", "sleep", str(args.seconds + 1)], stdout=subprocess.DEVNULL)
        tcp = runner.tcp(args.seconds)
        perf.wait()
        script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym,dso"],
                                capture_output=True, text=True, check=True).stdout
        switch = {pid: f"vswitchd h{i}" for i, pid in enumerate(topo.switch_pids, start=1)}
        samples = []
        for line in script.splitlines():
            # "comm pid/tid ip sym (dso)"; comm may hold spaces, the rest does not.
            head, _, dso = line.rpartition("(")
            parts = head.split()
            for k, p in enumerate(parts):
                if "/" in p and p.replace("/", "").isdigit():
                    pid, tid = (int(x) for x in p.split("/"))
                    comm = " ".join(parts[:k])
                    sym = " ".join(parts[k + 2:]) or "?"
                    samples.append((pid, tid, comm, sym, dso.rstrip(")")))
                    break
        who, syms = classify(samples, switch, server)
        total = sum(who.values())
        print(f"{args.switch} {args.io_mode or 'default'} busy_poll_us={args.busy_poll_us}: TCP {tcp['gbit_s']:.2f} Gbit/s; "
              f"{total} samples over 2 cores")
        for k, n in who.most_common():
            print(f"  {k:<40} {100 * n / total:5.1f} %")
        if syms:
            n_sw = sum(syms.values())
            print(f"vswitchd's hottest symbols (self, of its {n_sw} samples):")
            for k, n in syms.most_common(args.top):
                print(f"  {100 * n / n_sw:5.1f} %  {k}")


if __name__ == "__main__":
    main()
