"""Turns the rounds of an A/B run (bench/ab.py) into ratios, verdicts and results.md."""
from __future__ import annotations

import statistics
from typing import Any

from report import FIGURES, TOPOLOGY_TITLES
from topologies import IO_MODE_NAMES
from traffic import SATURATED_LOSS_PCT, UDP_FLOWS

TITLES = TOPOLOGY_TITLES
# The figures compared, in report.FIGURES's terms, and how each is printed.
COMPARED = {"tcp": ".2f", "pps": "k", "cpu": ".2f", "pps_flows": "k", "cpu_flows": ".2f", "ping_a_avg": ".1f",
            "ping_a_trimmed": ".1f"}
# Shown beside the verdicts but not one of them: a few stalled replies out of 2000 move
# ping's average a lot on a shared machine; this one leaves them out.
INFORMATIONAL = [("ping_a_trimmed", ("ping_adaptive", "avg_fastest_99_us"), "ping -A avg µs, slowest 1% left out",
                  False)]
LOAD_OF = {"pps": "udp", "pps_flows": "udp_flows"}  # frames/s figures and the load they were taken on


def values(records: list[dict[str, Any]], kind: str, field: str) -> list[float | None]:
    """One side's figure, round by round (None for a round it was not measured in)."""
    out: list[float | None] = []
    for rec in records:
        got = rec.get("runs", {}).get(kind) or [{}]
        v = got[0].get(field)
        out.append(v if isinstance(v, (int, float)) else None)
    return out


def median(xs: list[float | None]) -> float | None:
    have = [x for x in xs if x is not None]
    return statistics.median(have) if have else None


def meets(ratio: float | None, higher: bool, threshold: float) -> bool | None:
    if ratio is None:
        return None
    return ratio >= threshold if higher else ratio <= 1 / threshold


def compare(modes: dict[str, dict[str, list[dict[str, Any]]]], threshold: float,
            kinds: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Per I/O mode and figure (of the kinds measured, all if None): both sides' medians, B/A of the
    medians, the median of the round-by-round ratios (rounds where both sides were measured) and
    the verdict."""
    rows = []
    for mode, sides in modes.items():
        for key, (kind, field), label, higher in [f for f in FIGURES if f[0] in COMPARED] + INFORMATIONAL:
            if kinds is not None and kind not in kinds:
                continue
            a, b = values(sides["A"], kind, field), values(sides["B"], kind, field)
            med_a, med_b = median(a), median(b)
            ratio = med_b / med_a if med_a and med_b is not None else None
            per_round = [y / x if x and y is not None else None for x, y in zip(a, b)]
            paired = median(per_round)
            notes = []
            ok, ok_paired = meets(ratio, higher, threshold), meets(paired, higher, threshold)
            if ok is not None and ok_paired is not None and ok != ok_paired:
                notes.append(f"round by round it {'meets' if ok_paired else 'misses'} the bound: "
                             "within the noise of this run")
            elif ok is False and any(meets(x, higher, threshold) for x in per_round):
                have = [x for x in per_round if x is not None]
                notes.append(f"its rounds fall on both sides of the bound ({min(have):.2f} to {max(have):.2f}): "
                             "more rounds tell a loss from noise")
            if key in LOAD_OF:
                loss = {s: median(values(sides[s], LOAD_OF[key], "loss_pct")) for s in ("A", "B")}
                if all(x is not None and x < SATURATED_LOSS_PCT for x in loss.values()):
                    notes.append(f"not saturated (loss A {loss['A']:.1f}%, B {loss['B']:.1f}%, under "
                                 f"{SATURATED_LOSS_PCT:g}%): compares what the sender offered; CPU µs/frame "
                                 "compares the switches")
            rows.append({"io_mode": mode, "figure": key, "label": label, "higher_is_better": higher,
                         "a": med_a, "b": med_b, "ratio": ratio, "paired": paired, "round_ratios": per_round,
                         "bound": threshold if higher else 1 / threshold, "met": ok, "notes": notes,
                         "decides": key not in {f[0] for f in INFORMATIONAL}})
    return rows


def verdict(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    rows = [r for r in rows if r["decides"]]
    missed = [f"{IO_MODE_NAMES[r['io_mode']]} {r['label']} {r['ratio']:.3f}×" for r in rows if r["met"] is False]
    unmeasured = [f"{IO_MODE_NAMES[r['io_mode']]} {r['label']}" for r in rows if r["met"] is None]
    status = "unmeasured" if unmeasured else ("fail" if missed else "pass")
    return {"status": status, "missed": missed, "unmeasured": unmeasured, "figures": len(rows),
            "threshold": threshold}


def fmt(x: float | None, how: str) -> str:
    if x is None:
        return "—"
    return f"{x / 1e3:,.0f}k" if how == "k" else format(x, how)


def ratio_str(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}×"


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| I/O mode | figure | A median | B median | B/A of medians | B/A round by round | each round's B/A "
             "| bound | verdict | notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |"]
    for r in rows:
        how = COMPARED[r["figure"]]
        met = "—" if r["met"] is None else ("pass" if r["met"] else "**FAIL**")
        if not r["decides"]:
            met = f"({met.strip('*').lower()}; shown only)"
        rounds = " ".join("—" if x is None else f"{x:.2f}" for x in r["round_ratios"])
        bound = f"{'≥' if r['higher_is_better'] else '≤'} {r['bound']:.3f}"
        lines.append(f"| {IO_MODE_NAMES[r['io_mode']]} | {r['label']} | {fmt(r['a'], how)} | {fmt(r['b'], how)} "
                     f"| {ratio_str(r['ratio'])} | {ratio_str(r['paired'])} | {rounds} | {bound} | {met} "
                     f"| {'; '.join(r['notes'])} |")
    return lines


def markdown(res: dict[str, Any], sections: list[str]) -> str:
    m, a, b = res["machine"], res["sides"]["A"], res["sides"]["B"]
    t = res["threshold"]
    out = ["# vswitch A/B: B against A", "",
           f"- A: `{a['dir']}` at {a['version']}",
           f"- B: `{b['dir']}` at {b['version']}",
           f"- Load, counting and topologies: `{res['tool']['dir']}` at {res['tool']['version']}, the same for both.",
           f"- Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}; load average {m['loadavg_start']} "
           f"at the start, {m['loadavg_end']} at the end. Started {res['started_utc']}, run time "
           f"{res['duration_s'] / 60:.1f} min.", "",
           f"{res['rounds']} round(s). Each round measures A and B in turn for each I/O mode (offloads on), each on "
           "a fresh topology with its own vswitchd, A first in odd rounds and B first in even ones; every TCP and UDP "
           f"run lasts {res['seconds']:g} s, the ping is `{res['ping']}`. Frames/s are 64 B UDP datagrams taken in by "
           f"the receiving container, from one flow and from {UDP_FLOWS} flows interleaved frame by frame (which "
           "nothing can coalesce: the switch's saturation rate); CPU is vswitchd's utime + stime per frame delivered.",
           "",
           f"B/A of the medians decides: a throughput passes at ≥ {t:g}× A's, CPU per frame and latency at "
           f"≤ {1 / t:.3f}× (1/{t:g}). \"Round by round\" is the median of the ratios within each round, whose two "
           "runs were taken close together; where it disagrees with the verdict, the figure is within this run's "
           "noise.", ""]
    if res.get("kinds"):  # set only when narrowed
        out += [f"Narrowed to the figures of {', '.join(res['kinds'])}, taken in that order on each topology; "
                "nothing else was measured or compared.", ""]
    if res.get("io_uring_unavailable"):
        out += [f"The io_uring mode was not measured: {res['io_uring_unavailable']}", ""]
    for name in sections:
        out += [f"## {TITLES[name]}", ""] + table(res[name]["figures"]) + [""]
        failed = [f"{IO_MODE_NAMES[mode]}, {side}, round {rec['round']}: {rec['error']}"
                  for mode, sides in res[name]["modes"].items() for side, recs in sides.items()
                  for rec in recs if "error" in rec]
        if failed:
            out += ["Not measured (left out of the medians and of those rounds' ratios):", ""]
            out += [f"- {f}" for f in failed] + [""]
    v = res["verdict"]
    out += ["## Verdict", ""]
    if v["status"] == "pass":
        out.append(f"B meets the bound on all {v['figures']} figures: no throughput below {t:g}× A's, "
                   f"no CPU per frame or latency above {1 / t:.3f}×.")
    if v["missed"]:
        out.append(f"B misses the {t:g}× bound on: {', '.join(v['missed'])}.")
    if v["unmeasured"]:
        out.append(f"Not measured on both sides: {', '.join(v['unmeasured'])}.")
    out.append("")
    return "\n".join(out)
