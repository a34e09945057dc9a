"""Turns the figures of one run into ratios, goals, results.md and PNG plots."""
from __future__ import annotations

import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from topologies import IO_MODE_NAMES  # noqa: E402

# (figure, path in a setup's medians, label, higher is better)
FIGURES = [
    ("tcp", ("tcp", "gbit_s"), "TCP Gbit/s", True),
    ("pps", ("udp", "delivered_pps"), "64 B frames/s, one flow", True),
    ("cpu", ("udp", "cpu_us_per_frame"), "switch CPU µs/frame", False),  # none for the kernel's switches
    ("pps_flows", ("udp_flows", "delivered_pps"), "64 B frames/s, 8 flows", True),
    ("cpu_flows", ("udp_flows", "cpu_us_per_frame"), "switch CPU µs/frame, 8 flows", False),
    ("ping_a_avg", ("ping_adaptive", "avg_us"), "ping -A avg µs", False),
    ("ping_a_p99", ("ping_adaptive", "p99_us"), "ping -A p99 µs", False),
    ("ping_i_avg", ("ping_interval", "avg_us"), "ping -i 0.01 avg µs", False),
]


# The goals of the issues, checked on every run.
@dataclass(frozen=True)
class Goal:
    issue: str
    topology: str
    vswitch: str  # a setup key; "default": vswitch with no settings; "best": its best I/O mode, offloads on
    peer: str  # a setup key; "ovs_best": whichever Open vSwitch row has the better figure
    figure: str
    bound: float
    op: str  # "≥" or "≤"


GOALS = [
    Goal("offloads", "same_host", "best", "ovs_tso", "tcp", 1.0, "≥"),
    Goal("benchmarks", "same_host", "default", "ovs", "pps", 1.1, "≥"),
    Goal("benchmarks", "same_host", "default", "ovs_tso", "pps", 1.1, "≥"),
    Goal("benchmarks", "same_host", "default", "ovs", "cpu", 0.8, "≤"),
    Goal("benchmarks", "same_host", "default", "ovs_tso", "cpu", 0.8, "≤"),
    Goal("benchmarks", "same_host", "default", "ovs", "ping_a_avg", 0.5, "≤"),
    Goal("benchmarks", "same_host", "default", "ovs_tso", "ping_a_avg", 0.5, "≤"),
    Goal("benchmarks", "vxlan", "default", "ovs", "tcp", 3.0, "≥"),
    Goal("benchmarks", "vxlan", "default", "ovs", "ping_a_avg", 0.3, "≤"),
    # On both loads against Open vSwitch; against poll mode "under saturation",
    # which only the 8-flow load is for both modes (they coalesce one flow).
    Goal("io_uring datapath", "same_host", "vswitch_uring", "ovs_best", "pps", 1.5, "≥"),
    Goal("io_uring datapath", "same_host", "vswitch_uring", "ovs_best", "cpu", 0.5, "≤"),
    Goal("io_uring datapath", "same_host", "vswitch_uring", "ovs_best", "pps_flows", 1.5, "≥"),
    Goal("io_uring datapath", "same_host", "vswitch_uring", "ovs_best", "cpu_flows", 0.5, "≤"),
    Goal("io_uring datapath", "same_host", "vswitch_uring", "vswitch_poll", "pps_flows", 1.25, "≥"),
    Goal("io_uring datapath", "same_host", "vswitch_uring", "vswitch_poll", "ping_a_avg", 1.0, "≤"),
]

BAR_COLORS = {"uring": "tab:blue", "poll": "cornflowerblue"}  # vswitch by I/O mode; the others gray

TOPOLOGY_TITLES = {"same_host": "Same host: two containers, one switch",
                   "vxlan": "Two hosts over VXLAN (veth underlay, MTU 1500)"}


def figure(setup: dict[str, Any], key: str) -> float | None:
    if "median" not in setup:
        return None
    path = next(f[1] for f in FIGURES if f[0] == key)
    return setup["median"].get(path[0], {}).get(path[1])


def label_of(key: str) -> str:
    return next(f[2] for f in FIGURES if f[0] == key)


def higher_is_better(key: str) -> bool:
    return next(f[3] for f in FIGURES if f[0] == key)


def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    x, y = figure(a, key), figure(b, key)
    return x / y if x is not None and y else None


def paired_ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    """The median of the round-by-round ratios. Each round measures every switch in turn, so a
    pair from one round more often shares the machine's state (a slow spell lasts minutes) than
    two medians do; beside the ratio of medians it shows how much a verdict owes to spells."""
    kind, field = next(f[1] for f in FIGURES if f[0] == key)
    xs, ys = a.get("runs", {}).get(kind, []), b.get("runs", {}).get(kind, [])
    if not xs or len(xs) != len(ys):
        return None  # rounds can only be paired when both switches ran every one
    rs = [x[field] / y[field] for x, y in zip(xs, ys) if x.get(field) is not None and y.get(field)]
    return statistics.median(rs) if len(rs) == len(xs) else None


def ratios(setups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every vswitch setup against every other switch of the same topology, then each io_uring
    setup against the poll one with the same offloads; figure by figure."""
    done = [s for s in setups if "median" in s]
    pairs = [(v, p) for v in done if v.get("is_vswitch") for p in done if not p.get("is_vswitch")]
    pairs += [(u, p) for u in done if u.get("io_mode") == "uring" for p in done
              if p.get("io_mode") == "poll" and p.get("offloads") == u.get("offloads")]
    return [{"vswitch": v["key"], "peer": p["key"], "label": f"{v['label']} ÷ {p['label']}"}
            | {key: ratio(v, p, key) for key, *_ in FIGURES} for v, p in pairs]


def best(candidates: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The candidate with the better figure (None when none has it)."""
    have = [s for s in candidates if figure(s, key) is not None]
    if not have:
        return None
    pick = max if higher_is_better(key) else min
    return pick(have, key=lambda s: figure(s, key))


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for g in GOALS:
        if g.topology not in results:
            continue  # a section left out with --only
        setups = results[g.topology]["setups"]
        by_key = {s["key"]: s for s in setups}
        modes = [s for s in setups if s.get("is_vswitch") and s.get("offloads")]
        if g.vswitch == "best":
            v = best(modes, g.figure)
        elif g.vswitch == "default":
            v = next((s for s in setups if s.get("default")), None)
        else:
            v = by_key.get(g.vswitch)
        p = best([s for s in setups if s["key"].startswith("ovs")], g.figure) if g.peer == "ovs_best" \
            else by_key.get(g.peer)
        notes = []
        if g.vswitch == "best" and p:
            notes += [f"{s['label']}: " + ("not measured" if r is None else f"{r:.2f}×")
                      for s in modes for r in [ratio(s, p, g.figure)]]
        if g.peer == "ovs_best" and p:
            notes.append(f"{p['label']}: the better Open vSwitch row for this figure")
        notes += [f"{s['label'] if s else key}: not measured" for s, key in ((v, g.vswitch), (p, g.peer))
                  if s is None or "median" not in s]
        r = ratio(v, p, g.figure) if v and p else None
        out.append({"issue": g.issue, "topology": g.topology, "figure": label_of(g.figure),
                    "vswitch": v["label"] if v else g.vswitch, "peer": p["label"] if p else g.peer,
                    "target": f"{g.op} {g.bound:g}×", "ratio": r,
                    "paired": paired_ratio(v, p, g.figure) if v and p else None,
                    "met": None if r is None else (r >= g.bound if g.op == "≥" else r <= g.bound),
                    "notes": "; ".join(notes)})
    return out


# ---- markdown ----------------------------------------------------------------------------------

def _n(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _times(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _loss(pct: float | None) -> str:
    # Frames in flight between the two counters can make a lossless run read a hair below zero.
    return "—" if pct is None else f"{max(pct, 0.0):.1f}"


def _rtt(m: dict[str, Any] | None) -> str:
    if not m:
        return "—"
    return f"{m['min_us']:.0f} / {m['avg_us']:.1f} / {m['p99_us']:.0f}"


def topology_table(setups: list[dict[str, Any]]) -> list[str]:
    lines = ["| switch | TCP Gbit/s | 64 B UDP frames/s delivered, one flow | offered | UDP loss % "
             "| switch CPU s per 10⁶ frames (µs/frame) | 8 flows: frames/s delivered | offered | loss % "
             "| CPU µs/frame | `ping -A` min / avg / p99 µs | `ping -i 0.01` min / avg / p99 µs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in setups:
        if "median" not in s:
            lines.append(f"| {s['label']} | not measured: {s.get('error', '?')} |" + " |" * 10)
            continue
        m = s["median"]
        udp = []
        for kind in ("udp", "udp_flows"):
            u = m.get(kind, {})
            cpu = u.get("cpu_us_per_frame")
            pps, offered = u.get("delivered_pps"), u.get("offered_pps")
            udp += [f"{_n(pps and pps / 1e3, ',.0f')}k", f"{_n(offered and offered / 1e3, ',.0f')}k",
                    _loss(u.get("loss_pct")), _n(cpu, ".2f") if s.get("switch_pids") else "— (in the kernel)"]
        lines.append(f"| {s['label']} | {_n(m['tcp']['gbit_s'], '.2f')} | " + " | ".join(udp)
                     + f" | {_rtt(m['ping_adaptive'])} | {_rtt(m['ping_interval'])} |")
    return lines


def ratio_table(rows: list[dict[str, Any]]) -> list[str]:
    heads = [f[2] for f in FIGURES]
    lines = ["| ratio | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for r in rows:
        lines.append(f"| {r['label']} | " + " | ".join(_n(r[f[0]], ".2f") + ("×" if r[f[0]] is not None else "")
                                                     for f in FIGURES) + " |")
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = [f"# vswitch benchmarks, {res['date']}", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB, kernel {m['kernel']}; "
           f"load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the end "
           "(the machine is shared: senders, receivers and switch share its cores with whatever else runs).",
           f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.",
           f"Each figure is the median of {res['runs']} runs of {res['seconds']:g} s "
           f"(pings: {res['ping_counts']}), taken in rounds: every switch once per round, each on a fresh "
           f"topology; run time {res['duration_s'] / 60:.1f} min"
           + (" (quick mode: not the published figures)" if res["quick"] else "") + ".",
           "Frames/s are datagrams of 64 bytes of UDP payload counted as the receiving container's UDP takes "
           "them in (its eth0 counts a coalesced super-frame once). The sender (bench/udpflood.py, sendmmsg in "
           "batches) sends one flow from a UDP socket, or 8 flows interleaved datagram by datagram as ready-made "
           "frames through a packet socket, which nothing on the way can coalesce: that load is forwarded frame "
           "by frame, and the sender offers more of it than any switch here forwards, so for the userspace "
           "switches its figure is the rate at saturation. A switch "
           "that coalesces one flow's datagrams (vswitch with offloads) may forward all the single flow a core "
           "can send. Offered is what the sending container's eth0 handed on, and loss compares the two. "
           "For the kernel's switches the sending system call "
           "does the switching itself, so theirs is what one sending core gets through. "
           "Switch CPU is the switch processes' utime + stime over the same window, all their threads included "
           "(both hosts' for VXLAN), divided by the frames delivered; CPU seconds per million frames is µs per frame.",
           ""]
    for topo in ("same_host", "vxlan"):
        if topo not in res:
            continue
        out += [f"## {TOPOLOGY_TITLES[topo]}", ""] + topology_table(res[topo]["setups"]) + [""]
        if res[topo]["ratios"]:
            out += ["vswitch as a ratio to each peer, and its io_uring mode to its poll mode, same run "
                    "(> 1 is more for throughput, < 1 is less for CPU and RTT):", ""]
            out += ratio_table(res[topo]["ratios"]) + [""]
    out += ["## Goals", "", "All from this run. \"default\" is vswitch with no settings (io_mode auto, offloads on); "
            "the offloads goal takes vswitch's better I/O mode and names both. \"Measured\" is the ratio "
            "of the two medians, which decides \"met\"; \"round by round\" is the median of the ratios "
            "within each round, for how much the verdict owes to the machine's slow spells.", "",
            "| issue | topology | figure | vswitch | ÷ | target | measured | round by round | met | notes |",
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for g in res["goals"]:
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        out.append(f"| {g['issue']} | {g['topology']} | {g['figure']} | {g['vswitch']} | {g['peer']} | {g['target']} "
                   f"| {_times(g['ratio'])} | {_times(g['paired'])} | {met} | {g['notes']} |")
    out.append("")
    if "api_latency" in res:
        a = res["api_latency"]
        out += ["## Control API: GET /v1/stats over the Unix socket", ""]
        if "error" in a:
            out += [f"Not measured: {a['error']}", ""]
        else:
            out += ["| | requests | p50 ms | p99 ms | max ms |", "| --- | ---: | ---: | ---: | ---: |"]
            for key, label in (("idle", "idle"), ("under_load", "under 64 B UDP load")):
                r = a[key]
                out.append(f"| {label} | {r['requests']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |")
            ld = a["under_load"]
            default = next((s["label"] for s in res.get("same_host", {}).get("setups", []) if s.get("default")),
                           "vswitchd")
            out += ["", f"The load: {ld['load_delivered_pps'] / 1e3:,.0f}k frames/s delivered through {default} "
                    f"({ld['load_offered_pps'] / 1e3:,.0f}k/s offered) while the requests ran.", ""]
            sc = a.get("scrape_cost")
            if sc:
                out += ["### What a scrape costs the loop", "",
                        "The same 64 B UDP load, alone and while `/metrics` is scraped "
                        f"{sc['scrapes_per_s']:,.0f} times a second (150 times Prometheus's default rate):", "",
                        "| | frames/s delivered | switch CPU µs/frame |", "| --- | ---: | ---: |",
                        f"| no scrapes | {sc['delivered_pps_alone'] / 1e3:,.0f}k | {_n(sc['cpu_us_per_frame_alone'], '.2f')} |",
                        f"| scraped | {sc['delivered_pps_scraped'] / 1e3:,.0f}k "
                        f"| {_n(sc['cpu_us_per_frame_scraped'], '.2f')} |", "",
                        "The collector reads the C counters without taking the loop's lock, so a scrape never "
                        "makes the loop wait; scraped back to back (hundreds a second) the daemon's Python "
                        "threads and the scraper do take CPU from the loop on two cores.", ""]
    if res.get("scale"):
        out += ["## Scale: vswitchd with N ports and 100k learned FDB entries", "",
                "| ports | start to API ready, s | RSS MiB, empty FDB | FDB entries | RSS MiB, full FDB | TCP Gbit/s c1 → c2 |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in res["scale"]:
            if "error" in r:
                out.append(f"| {r['ports']} | not measured: {r['error']} | | | | |")
                continue
            out.append(f"| {r['ports']} | {r['start_s']:.2f} | {r['rss_mib_empty']:.1f} | {r['fdb_entries']:,} "
                       f"| {r['rss_mib_fdb']:.1f} | {_n(r.get('tcp_gbit_s'), '.2f')} |")
        out += ["", res.get("scale_note", ""), ""]
    if "micro" in res:
        out += micro_section(res["micro"])
    if res["findings"]:
        out += ["## Findings", ""] + [f"- {f}" for f in res["findings"]] + [""]
    out += ["Plots: " + ", ".join(f"[{p}]({p})" for p in res["plots"]), ""]
    return "\n".join(out)


def micro_section(micro: dict[str, Any]) -> list[str]:
    if "error" in micro:
        return ["## Fastpath microbenchmarks", "", f"Not measured: {micro['error']}", ""]
    out = ["## Fastpath microbenchmarks (bench/micro.py; VXLAN rows need root)", "",
           "| MAC table entries | insert/s | learn (refresh)/s | lookup/s |", "| ---: | ---: | ---: | ---: |"]
    for r in micro["mac_table"]:
        out.append(f"| {r['entries']:,} | {r['insert_per_s'] / 1e6:.1f}M | {r['learn_refresh_per_s'] / 1e6:.1f}M "
                   f"| {r['lookup_per_s'] / 1e6:.1f}M |")
    modes = micro["io_modes"]
    loop = {(lp["case"], lp["io_mode"]): lp["loop_cpu_ns_per_frame"] for lp in micro["loop"]}
    python = {py["case"]: py["python_ns_per_frame"] for py in micro["python_model"]}
    out += ["", micro["flatness"], "",
            "| forwarding case | " + " | ".join(f"compiled loop, {IO_MODE_NAMES[m]}, ns/frame" for m in modes)
            + " | pure-Python model, ns/frame |", "| --- |" + " ---: |" * (len(modes) + 1)]
    for case in dict.fromkeys(lp["case"] for lp in micro["loop"]):
        out.append(f"| {case} | " + " | ".join(_n(loop.get((case, m)), ",.0f") for m in modes)
                   + f" | {_n(python.get(case), ',.0f')} |")
    if micro.get("uring_unavailable"):
        out += ["", f"The io_uring loop was not measured: {micro['uring_unavailable']}"]
    out += ["", "The compiled loop's figure is its CPU time per frame over socketpairs (the process's, less the "
            "sending and sinking threads': the loop thread and any io_uring worker thread), so it includes "
            "the reads and writes of every frame (and, for floods, one write per output port); "
            "the Python model's is the forwarding decision alone, with no I/O. They are not the same work: "
            "the Python column is a floor for a Python switch, the loop's is the whole per-frame cost.", "",
            "The VXLAN rows (measured only as root) are the same loop terminating VXLAN on loopback: broadcasts from "
            "one port encapsulated to one peer, and the peer's datagrams decapsulated to that port; the Python model "
            "has no VXLAN.", ""]
    return out


# ---- plots -------------------------------------------------------------------------------------

def _runs(setup: dict[str, Any], path: tuple[str, str]) -> list[float]:
    return [r[path[1]] for r in setup.get("runs", {}).get(path[0], []) if r.get(path[1]) is not None]


def topology_plot(setups: list[dict[str, Any]], title: str, path: Path) -> None:
    done = [s for s in setups if "median" in s]
    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    shown = [f for f in FIGURES if f[0] in ("tcp", "pps", "pps_flows", "ping_a_avg", "cpu", "cpu_flows")]
    for ax, (key, fpath, label, higher) in zip(axes.flat, shown):
        names, meds, lo, hi, colors = [], [], [], [], []
        for s in done:
            med = figure(s, key)
            if med is None:
                continue
            runs = _runs(s, fpath) or [med]
            scale = 1e-3 if key.startswith("pps") else 1.0
            names.append(textwrap.fill(s["label"], 14))
            meds.append(med * scale)
            lo.append((med - min(runs)) * scale)
            hi.append((max(runs) - med) * scale)
            colors.append(BAR_COLORS.get(s.get("io_mode"), "tab:gray"))
        ax.bar(range(len(meds)), meds, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_xticks(range(len(meds)), names, fontsize=7)
        ax.set_title((label.replace("frames/s", "frames/s (thousands)") if key.startswith("pps") else label)
                     + (" — higher is better" if higher else " — lower is better"), fontsize=9)
        for i, v in enumerate(meds):
            ax.annotate(f"{v:.3g}", (i, v + hi[i]), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
        ax.margins(y=0.12)
    fig.suptitle(f"{title} (medians; whiskers: min–max of the runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_plot(points: list[dict[str, Any]], path: Path) -> None:
    ok = [p for p in points if "error" not in p]
    ports = [p["ports"] for p in ok]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.8))
    a.plot(ports, [p["rss_mib_empty"] for p in ok], "o-", label="empty FDB")
    a.plot(ports, [p["rss_mib_fdb"] for p in ok], "s-", label="100k FDB entries")
    a.set(title="vswitchd RSS (MiB)", xscale="log", xlabel="ports", ylim=(0, None))
    a.legend(fontsize=8)
    b.plot(ports, [p["start_s"] for p in ok], "o-")
    b.set(title="start to API ready (s)", xscale="log", xlabel="ports", ylim=(0, None))
    tcp = [p for p in ok if p.get("tcp_gbit_s") is not None]
    c.plot([p["ports"] for p in tcp], [p["tcp_gbit_s"] for p in tcp], "o-")
    c.set(title="TCP c1 → c2 with the FDB full (Gbit/s)", xscale="log", xlabel="ports", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def micro_plot(micro: dict[str, Any], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    n = [r["entries"] for r in micro["mac_table"]]
    for key, label in (("lookup_per_s", "lookup"), ("learn_refresh_per_s", "learn (refresh)"), ("insert_per_s", "insert")):
        a.plot(n, [r[key] / 1e6 for r in micro["mac_table"]], "o-", label=label)
    a.set(title="MAC table operations (millions/s)", xscale="log", xlabel="entries", ylim=(0, None))
    a.legend(fontsize=8)
    modes = micro["io_modes"]
    loop = {(lp["case"], lp["io_mode"]): lp["loop_cpu_ns_per_frame"] for lp in micro["loop"]}
    cases = list(dict.fromkeys(lp["case"] for lp in micro["loop"]))
    python = {py["case"]: py["python_ns_per_frame"] for py in micro["python_model"]}
    width = 0.8 / (len(modes) + 1)
    x = range(len(cases))
    for j, m in enumerate(modes):
        b.bar([i + (j - len(modes) / 2) * width for i in x], [loop.get((c, m), 0) for c in cases], width,
              label=f"compiled loop, {IO_MODE_NAMES[m]} (with its I/O)")
    px = [i for i, c in enumerate(cases) if c in python]
    b.bar([i + len(modes) / 2 * width for i in px], [python[cases[i]] for i in px], width,
          label="Python model (decision only)")
    b.set_xticks(list(x), cases, fontsize=8)
    b.set(title="ns per frame (log)", yscale="log")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(res: dict[str, Any], out: Path) -> list[str]:
    made = []
    for topo in ("same_host", "vxlan"):
        if topo in res and any("median" in s for s in res[topo]["setups"]):
            topology_plot(res[topo]["setups"], TOPOLOGY_TITLES[topo], out / f"{topo}.png")
            made.append(f"{topo}.png")
    if any("error" not in p for p in res.get("scale", [])):
        scale_plot(res["scale"], out / "scale.png")
        made.append("scale.png")
    if "micro" in res and "error" not in res["micro"]:
        micro_plot(res["micro"], out / "micro.png")
        made.append("micro.png")
    return made
