"""Run fuzz targets one after another (never in parallel: each is CPU-bound)
and tabulate what libFuzzer reported. `make fuzz` calls it:

    run_all.py --runs N --seconds S [--out FILE] [--work DIR] [TARGET ...]

Each target runs tests/fuzz/run.py under the environment it is given (the
Makefile preloads atheris's ASan+libFuzzer runtime for the fuzzing build),
starting from tests/fuzz/corpus/TARGET; new inputs go to WORK/corpus/TARGET,
logs to WORK/TARGET.log, any crash to WORK/TARGET-crash-*. Exits non-zero if
any target found a crash, a sanitizer report or a failed assertion.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from targets import TARGETS  # noqa: E402

# Longest input per target: the frame parsers need little; super-frames need room.
MAX_LEN = {"frame": 4096, "gso": 16384, "gro": 16384, "decide": 8192, "vxlan": 8192}


def run(target: str, runs: int, seconds: int, work: str) -> dict[str, str | int | float]:
    corpus = os.path.join(work, "corpus", target)
    os.makedirs(corpus, exist_ok=True)
    log = os.path.join(work, f"{target}.log")
    cmd = [sys.executable, os.path.join(HERE, "run.py"), target, f"-runs={runs}", f"-max_total_time={seconds}",
           f"-max_len={MAX_LEN.get(target, 8192)}", "-print_final_stats=1", f"-artifact_prefix={work}/{target}-",
           corpus, os.path.join(HERE, "corpus", target)]
    start = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - start
    text = open(log, errors="replace").read()
    done = re.findall(r"Done (\d+) runs in (\d+) second", text)
    final = re.findall(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    reports = len(re.findall(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:", text))
    row: dict[str, str | int | float] = {"target": target, "rc": rc, "runs": int(done[-1][0]) if done else 0,
                                         "seconds": round(wall, 1), "reports": reports, "log": log}
    if final:
        row.update(cov=int(final[-1][1]), ft=int(final[-1][2]), corpus=int(final[-1][3]))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| target | inputs | wall s | inputs/s | cov (edges) | features | corpus | sanitizer/crash reports | exit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = r["runs"] / r["seconds"] if r["seconds"] else 0
        lines.append(f"| {r['target']} | {r['runs']:,} | {r['seconds']} | {rate:,.0f} | {r.get('cov', '?')} | "
                     f"{r.get('ft', '?')} | {r.get('corpus', '?')} | {r['reports']} | {r['rc']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--work", default="build/fuzz")
    ap.add_argument("--out")
    ap.add_argument("targets", nargs="*", default=list(TARGETS))
    args = ap.parse_args()
    for t in args.targets:
        if t not in TARGETS:
            sys.exit(f"unknown target {t!r}: one of {', '.join(TARGETS)}")
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for t in args.targets:
        print(f"fuzz: {t}: up to {args.runs:,} inputs or {args.seconds} s ...", flush=True)
        rows.append(run(t, args.runs, args.seconds, args.work))
        r = rows[-1]
        print(f"fuzz: {t}: {r['runs']:,} inputs in {r['seconds']} s, cov {r.get('cov', '?')}, "
              f"exit {r['rc']}, reports {r['reports']} ({r['log']})", flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "a") as f:
            f.write(table(rows))
    sys.exit(1 if any(r["rc"] or r["reports"] for r in rows) else 0)


if __name__ == "__main__":
    main()
