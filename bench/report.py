"""Turns the figures of one run into ratios, goals, results.md and PNG plots."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# (figure, path in a setup's medians, label, higher is better)
FIGURES = [
    ("tcp", ("tcp", "gbit_s"), "TCP Gbit/s", True),
    ("pps", ("udp", "delivered_pps"), "64 B frames/s delivered", True),
    ("cpu", ("udp", "cpu_us_per_frame"), "switch CPU µs/frame", False),  # none for the kernel's switches
    ("ping_a_avg", ("ping_adaptive", "avg_us"), "ping -A avg µs", False),
    ("ping_a_p99", ("ping_adaptive", "p99_us"), "ping -A p99 µs", False),
    ("ping_i_avg", ("ping_interval", "avg_us"), "ping -i 0.01 avg µs", False),
]

# vswitch's goals from the benchmark issue: (topology, peer key, figure, bound, "≥" or "≤"), vswitch in its default mode
GOALS = [
    ("same_host", "ovs_tso", "tcp", 1.0, "≥"),
    ("same_host", "ovs", "pps", 1.1, "≥"),
    ("same_host", "ovs_tso", "pps", 1.1, "≥"),
    ("same_host", "ovs", "cpu", 0.8, "≤"),
    ("same_host", "ovs_tso", "cpu", 0.8, "≤"),
    ("same_host", "ovs", "ping_a_avg", 0.5, "≤"),
    ("same_host", "ovs_tso", "ping_a_avg", 0.5, "≤"),
    ("vxlan", "ovs", "tcp", 3.0, "≥"),
    ("vxlan", "ovs", "ping_a_avg", 0.3, "≤"),
]

TOPOLOGY_TITLES = {"same_host": "Same host: two containers, one switch",
                   "vxlan": "Two hosts over VXLAN (veth underlay, MTU 1500)"}


def figure(setup: dict[str, Any], key: str) -> float | None:
    if "median" not in setup:
        return None
    path = next(f[1] for f in FIGURES if f[0] == key)
    return setup["median"].get(path[0], {}).get(path[1])


def ratios(setups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every vswitch mode against every other switch of the same topology, figure by figure."""
    out = []
    for v in (s for s in setups if s.get("is_vswitch") and "median" in s):
        for p in (s for s in setups if not s.get("is_vswitch") and "median" in s):
            row: dict[str, Any] = {"vswitch": v["key"], "peer": p["key"], "label": f"{v['label']} ÷ {p['label']}"}
            for key, *_ in FIGURES:
                a, b = figure(v, key), figure(p, key)
                row[key] = a / b if a is not None and b else None
            out.append(row)
    return out


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for topo, peer, key, bound, op in GOALS:
        setups = {s["key"]: s for s in results.get(topo, {}).get("setups", [])}
        v, p = setups.get("vswitch"), setups.get(peer)
        label = next(f[2] for f in FIGURES if f[0] == key)
        row: dict[str, Any] = {"topology": topo, "figure": label, "peer": p["label"] if p else peer,
                               "target": f"{op} {bound:.1f}×", "ratio": None, "met": None}
        if v and p:
            a, b = figure(v, key), figure(p, key)
            if a is not None and b:
                row["ratio"] = a / b
                row["met"] = row["ratio"] >= bound if op == "≥" else row["ratio"] <= bound
        out.append(row)
    return out


# ---- markdown ----------------------------------------------------------------------------------

def _n(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _loss(pct: float | None) -> str:
    # Frames in flight between the two counters can make a lossless run read a hair below zero.
    return "—" if pct is None else f"{max(pct, 0.0):.1f}"


def _rtt(m: dict[str, Any] | None) -> str:
    if not m:
        return "—"
    return f"{m['min_us']:.0f} / {m['avg_us']:.1f} / {m['p99_us']:.0f}"


def topology_table(setups: list[dict[str, Any]]) -> list[str]:
    lines = ["| switch | TCP Gbit/s | 64 B UDP frames/s delivered | UDP loss % | switch CPU s per 10⁶ frames (µs/frame) "
             "| `ping -A` min / avg / p99 µs | `ping -i 0.01` min / avg / p99 µs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in setups:
        if "median" not in s:
            lines.append(f"| {s['label']} | not measured: {s.get('error', '?')} | | | | | |")
            continue
        m = s["median"]
        cpu = m["udp"].get("cpu_us_per_frame")
        cpu_text = _n(cpu, ".2f") if s.get("switch_pids") else "— (in the kernel)"
        lines.append(f"| {s['label']} | {_n(m['tcp']['gbit_s'], '.2f')} | {_n(m['udp']['delivered_pps'] / 1e3, ',.0f')}k "
                     f"| {_loss(m['udp']['loss_pct'])} | {cpu_text} | {_rtt(m['ping_adaptive'])} "
                     f"| {_rtt(m['ping_interval'])} |")
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
           "(the machine is shared: iperf3 client, server and switch share its cores with whatever else runs).",
           f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}.",
           f"Each figure is the median of {res['runs']} runs of {res['seconds']:g} s "
           f"(pings: {res['ping_counts']}); run time {res['duration_s'] / 60:.1f} min"
           + (" (quick mode: not the published figures)" if res["quick"] else "") + ".",
           "Frames/s are 64-byte UDP payloads (iperf3 -u -l 64 -b 0) counted at the receiving container's eth0; "
           "loss compares them with what the sending container's eth0 handed on. "
           "Switch CPU is the switch processes' utime + stime over the same window (both hosts' for VXLAN); "
           "CPU seconds per million frames is µs per frame.", ""]
    for topo in ("same_host", "vxlan"):
        if topo not in res:
            continue
        out += [f"## {TOPOLOGY_TITLES[topo]}", ""] + topology_table(res[topo]["setups"]) + [""]
        if res[topo]["ratios"]:
            out += ["vswitch as a ratio to each peer, same run (> 1 is more for throughput, "
                    "< 1 is less for CPU and RTT):", ""] + ratio_table(res[topo]["ratios"]) + [""]
    out += ["## Goals", "", "| topology | figure | vswitch ÷ | target | measured | met |", "| --- | --- | --- | ---: | ---: | --- |"]
    for g in res["goals"]:
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        out.append(f"| {g['topology']} | {g['figure']} | {g['peer']} | {g['target']} | {_n(g['ratio'], '.2f')}× | {met} |")
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
            out += ["", f"The load: {ld['load_delivered_pps'] / 1e3:,.0f}k frames/s delivered through vswitchd "
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
    out += ["", micro["flatness"], "",
            "| forwarding case | compiled loop, ns/frame | pure-Python model, ns/frame |",
           "| --- | ---: | ---: |"]
    python = {py["case"]: py["python_ns_per_frame"] for py in micro["python_model"]}
    for lp in micro["loop"]:
        out.append(f"| {lp['case']} | {lp['loop_cpu_ns_per_frame']:,.0f} | {_n(python.get(lp['case']), ',.0f')} |")
    out += ["", "The compiled loop's figure is its thread's CPU time per frame over socketpairs, so it includes "
            "the read and write system calls of every frame (and, for floods, one write per output port); "
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
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    shown = [f for f in FIGURES if f[0] in ("tcp", "pps", "cpu", "ping_a_avg")]
    for ax, (key, fpath, label, higher) in zip(axes.flat, shown):
        names, meds, lo, hi, colors = [], [], [], [], []
        for s in done:
            med = figure(s, key)
            if med is None:
                continue
            runs = _runs(s, fpath) or [med]
            scale = 1e-3 if key == "pps" else 1.0
            names.append(textwrap.fill(s["label"], 16))
            meds.append(med * scale)
            lo.append((med - min(runs)) * scale)
            hi.append((max(runs) - med) * scale)
            colors.append("tab:blue" if s.get("is_vswitch") else "tab:gray")
        ax.bar(range(len(meds)), meds, yerr=[lo, hi], color=colors, capsize=3)
        ax.set_xticks(range(len(meds)), names, fontsize=7)
        ax.set_title(("64 B frames/s delivered (thousands)" if key == "pps" else label)
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
    cases = [r["case"] for r in micro["loop"]]
    x = range(len(cases))
    python = {py["case"]: py["python_ns_per_frame"] for py in micro["python_model"]}
    b.bar([i - 0.2 for i in x], [r["loop_cpu_ns_per_frame"] for r in micro["loop"]], 0.4, label="compiled loop (with its I/O)")
    px = [i for i, c in enumerate(cases) if c in python]
    b.bar([i + 0.2 for i in px], [python[cases[i]] for i in px], 0.4, label="Python model (decision only)")
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
