"""Where `ping -A`'s round trip goes over VXLAN, hop by hop.

    .venv/bin/python bench/ping_split.py [--seconds S] [--rounds N] [--busy-poll-us 100,0]
                                         [--only uring,poll,kernel] [--out DIR]     (root)

On the two-host topology of the VXLAN bench (bench/topologies.py), for
vswitch in each I/O mode (at each busy_poll_us asked for) and for the
kernel's vxlan + bridge, ping -A runs for a bounded time (and at most 60,000 echoes) while tcpdump
(host timestamps, nanosecond precision) captures at every hop: container
A's eth0, host A's underlay veth, host B's underlay veth, container B's
eth0. All four run on one machine, so on one clock. Each echo request and
its reply are found at each hop by ICMP id and sequence number (inside
VXLAN on the underlay), which splits the round trip into:

    a_out    A's eth0 → A's underlay: the switch (or kernel) on host A, out
    wire_ab  A's underlay → B's underlay: the veth between the hosts
    b_in     B's underlay → B's eth0: the switch on host B, in
    b_stack  request in → reply out at B's eth0: container B's own stack
    b_out    B's eth0 → B's underlay: the switch on host B, out
    wire_ba  B's underlay → A's underlay
    a_in     A's underlay → A's eth0: the switch on host A, in
    rtt      request out → reply in at A's eth0 (ping itself adds A's stack
             and its own wakeup: compare with the RTT ping reports)

Every capture point copies each frame once more (a packet socket's tap),
for vswitch and the kernel alike; ping's own RTT is given with and without
the captures. For vswitchd, the loop's counters over the ping (wakeups,
frames, io_uring submissions) say how often it slept. Results go to
bench/results/ping-split-<date>/ (json + md); everything is removed after.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import topologies  # noqa: E402
from lab import BenchError, Lab, Netns, interrupt_on_signals, wait_for  # noqa: E402
from machine import abandoned, finished, install_packages, machine_info, run_ended, write_results  # noqa: E402

from vswitch.client import Client  # noqa: E402

PACKAGES = ("tcpdump", "iputils-ping")
LEGS = ("a_out", "wire_ab", "b_in", "b_stack", "b_out", "wire_ba", "a_in", "rtt")
SWITCH_LEGS = ("a_out", "b_in", "b_out", "a_in")
SNAPLEN = 160          # outer Ethernet/IPv4/UDP/VXLAN + inner Ethernet/IPv4/ICMP header fit
CAPTURE_BUFFER_KIB = 16384
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
VXLAN_PORT = topologies.VXLAN_PORT
PCAP_NSEC_MAGIC = 0xA1B23C4D
MAX_ECHOES = 60000


# ---- pcap ----------------------------------------------------------------------------------

def read_pcap(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp ns, frame) of every record of a nanosecond-precision pcap file."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic == PCAP_NSEC_MAGIC else ">"
    if struct.unpack_from(endian + "I", data)[0] != PCAP_NSEC_MAGIC:
        raise BenchError(f"{path}: not a nanosecond pcap file (magic {magic:#x})")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, nsec, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        out.append((sec * 1_000_000_000 + nsec, data[off:off + incl]))
        off += incl
    return out


def icmp_echo(frame: bytes, vxlan: bool) -> tuple[int, int, int] | None:
    """(type, id, seq) of an ICMP echo request or reply in an Ethernet frame, or in the
    Ethernet frame a VXLAN datagram (UDP port VXLAN_PORT) carries; None for anything else."""
    if vxlan:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            return None
        udp = 14 + (frame[14] & 0x0F) * 4
        if len(frame) < udp + 16 or struct.unpack_from("!H", frame, udp + 2)[0] != VXLAN_PORT:
            return None
        frame = frame[udp + 16:]
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    icmp = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < icmp + 8 or frame[icmp] not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
        return None
    ident, seq = struct.unpack_from("!HH", frame, icmp + 4)
    return frame[icmp], ident, seq


def first_seen(records: list[tuple[int, bytes]], vxlan: bool) -> dict[tuple[int, int, int], int]:
    """The first time each echo (type, id, seq) was seen in a capture (ping sends at most
    MAX_ECHOES, so no sequence number comes round twice)."""
    seen: dict[tuple[int, int, int], int] = {}
    for ts, frame in records:
        key = icmp_echo(frame, vxlan)
        if key is not None and key not in seen:
            seen[key] = ts
    return seen


def split(hops: dict[str, dict[tuple[int, int, int], int]]) -> dict[str, list[float]]:
    """Each leg's times (µs) over the echoes seen at all four hops both ways."""
    legs: dict[str, list[float]] = {k: [] for k in LEGS}
    for (kind, ident, seq), c1_req in hops["c1"].items():
        if kind != ICMP_ECHO_REQUEST:
            continue
        rep = (ICMP_ECHO_REPLY, ident, seq)
        req = (ICMP_ECHO_REQUEST, ident, seq)
        try:
            t = [c1_req, hops["h1"][req], hops["h2"][req], hops["c2"][req],
                 hops["c2"][rep], hops["h2"][rep], hops["h1"][rep], hops["c1"][rep]]
        except KeyError:
            continue  # lost, or its capture missed it
        for leg, (a, b) in zip(LEGS, zip(t, t[1:])):
            legs[leg].append((b - a) / 1000)
        legs["rtt"].append((t[-1] - t[0]) / 1000)
    return legs


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_us": None, "mean_us": None, "p90_us": None}
    ordered = sorted(values)
    return {"median_us": statistics.median(ordered), "mean_us": statistics.fmean(ordered),
            "p90_us": ordered[min(len(ordered) - 1, len(ordered) * 9 // 10)]}


# ---- captures -------------------------------------------------------------------------------

def start_capture(lab: Lab, name: str, ns: Netns, ifname: str, bpf: str) -> tuple[subprocess.Popen, Path]:
    path = lab.dir / f"{name}.pcap"
    proc = lab.spawn(name, ns.cmd("tcpdump", "-i", ifname, "-j", "host", "--time-stamp-precision=nano", "-n",
                                  "-s", str(SNAPLEN), "-B", str(CAPTURE_BUFFER_KIB), "-Z", "root", "-w", str(path),
                                  bpf))

    def listening() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"tcpdump on {ns.name}/{ifname} exited {proc.returncode}: {lab.log_tail(name)}")
        return "listening on" in lab.log_tail(name)
    wait_for(f"tcpdump on {ns.name}/{ifname}", listening, timeout=10)
    return proc, path


def stop_capture(lab: Lab, name: str, proc: subprocess.Popen) -> str:
    """Stop a tcpdump (it writes out what it holds) and return what it says it dropped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{name} did not stop") from None
    m = re.search(r"(\d+) packets? dropped by kernel", lab.log_tail(name, 5))
    return m.group(1) if m else "?"


def ping(ns: Netns, ip: str, seconds: float) -> dict[str, Any]:
    # At most MAX_ECHOES: ICMP sequence numbers are 16 bits, and an echo is
    # matched across the captures by its number.
    out = ns.exec("ping", "-n", "-A", "-q", "-c", str(MAX_ECHOES), "-w", f"{seconds:g}", ip, check=False,
                  timeout=seconds + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    if not (m and rtt):
        raise BenchError(f"ping -A {ip}: no summary: {out[-300:]!r}")
    return {"sent": int(m.group(1)), "received": int(m.group(2)),
            "min_us": float(rtt.group(1)) * 1000, "avg_us": float(rtt.group(2)) * 1000}


# ---- vswitchd's loop counters ----------------------------------------------------------------

COUNTER_WORDS = ("wakeups", "frames", "batches", "submits", "batch_waits")


def loop_counters(socks: list[Path]) -> dict[str, int]:
    """The loop counters of every vswitchd named by COUNTER_WORDS, summed over both hosts."""
    total: dict[str, int] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}{k}.", x)
        elif isinstance(v, int) and not isinstance(v, bool) and prefix.rstrip(".").rsplit(".", 1)[-1] in COUNTER_WORDS:
            total[prefix.rstrip(".")] = total.get(prefix.rstrip("."), 0) + v
    for sock in socks:
        walk("", Client(sock, timeout=5.0).request("GET", "/v1/stats"))
    return total


# ---- one setup -----------------------------------------------------------------------------------

def measure(label: str, build: Callable[[Lab], topologies.Topo], seconds: float, log: Callable[[str], None]
            ) -> dict[str, Any]:
    with Lab("psplit") as lab:
        topo = build(lab)
        topologies.reachable(topo)
        c1, c2 = topo.client, topo.server
        h1, h2 = Netns(f"{lab.prefix}-h1"), Netns(f"{lab.prefix}-h2")
        plain = ping(c1, topo.server_ip, seconds)  # without captures, for what they cost
        socks = sorted(lab.dir.glob("vswitchd-h*/api.sock"))
        before = loop_counters(socks) if socks else {}
        caps = {name: start_capture(lab, f"tcpdump-{name}", ns, ifname, bpf)
                for name, ns, ifname, bpf in (("c1", c1, "eth0", "icmp"), ("h1", h1, "ul0", f"udp port {VXLAN_PORT}"),
                                              ("h2", h2, "ul0", f"udp port {VXLAN_PORT}"), ("c2", c2, "eth0", "icmp"))}
        captured = ping(c1, topo.server_ip, seconds)
        after = loop_counters(socks) if socks else {}
        dropped = {name: stop_capture(lab, f"tcpdump-{name}", proc) for name, (proc, _) in caps.items()}
        hops = {name: first_seen(read_pcap(path), vxlan=name.startswith("h")) for name, (_, path) in caps.items()}
        legs = split(hops)
        counters = {k: after[k] - before.get(k, 0) for k in after}
        res = {"label": label, "ping": plain, "ping_captured": captured, "matched": len(legs["rtt"]),
               "capture_drops": dropped, "legs": {k: summary(v) for k, v in legs.items()}, "loop_counters": counters}
        log(f"  {label}: ping -A avg {plain['avg_us']:.1f} us ({captured['avg_us']:.1f} captured), "
            f"{res['matched']} echoes matched; "
            + ", ".join(f"{k} {res['legs'][k]['median_us']:.1f}" for k in LEGS
                        if res['legs'][k]['median_us'] is not None)
            + " us (medians)")
        return res


# ---- report ---------------------------------------------------------------------------------------

def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# ping -A split by hop over VXLAN, {res['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}; load average {m['loadavg_start']} at "
             f"the start, {m['loadavg_end']} at the end. ping -A for {res['seconds']:g} s per setup and round, "
             f"{res['rounds']} round(s), setups alternating within each round; captures by tcpdump -j host at "
             "nanosecond precision at c1 eth0, h1 ul0, h2 ul0, c2 eth0. Legs are median / mean µs over every echo "
             "seen at all four hops both ways, pooled over the rounds. The switch's four traversals are a_out, "
             "b_in, b_out, a_in; wire_* is the veth underlay, b_stack container B's ICMP reply, rtt the round trip "
             "at A's eth0 (ping's own RTT adds A's stack and ping's wakeup).", ""]
    head = ["setup", "ping -A avg µs (no capture)", "ping avg µs (captured)", "echoes", *LEGS,
            "switch traversals, sum of means"]
    lines += ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for key, s in res["setups"].items():
        legs = s["legs"]
        trav = sum(legs[k]["mean_us"] or 0 for k in SWITCH_LEGS)
        lines.append("| " + " | ".join([
            key, fmt(s["ping_avg_us"]), fmt(s["ping_captured_avg_us"]), str(s["matched"]),
            *(f"{fmt(legs[k]['median_us'])} / {fmt(legs[k]['mean_us'])}" for k in LEGS), fmt(trav)]) + " |")
    lines += ["", "vswitchd's loop over the captured ping (both hosts, summed; per echo):", "",
              "| setup | counters per echo |", "| --- | --- |"]
    for key, s in res["setups"].items():
        if s["loop_counters_per_echo"]:
            per_echo = sorted(s["loop_counters_per_echo"].items())
            lines.append(f"| {key} | " + ", ".join(f"{k} {v:.2f}" for k, v in per_echo) + " |")
    return "\n".join(lines) + "\n"


def setups(only: list[str], busy: list[int | None]) -> list[tuple[str, Callable[[Lab], topologies.Topo]]]:
    out: list[tuple[str, Callable[[Lab], topologies.Topo]]] = []
    for mode in ("uring", "poll"):
        if mode not in only:
            continue
        for us in busy:
            settings = {} if us is None else {"busy_poll_us": us}
            out.append((f"vswitch {topologies.IO_MODE_NAMES[mode]}, busy_poll_us {'default' if us is None else us}",
                        lambda lab, mode=mode, settings=settings: topologies.vswitch_vxlan(lab, mode, switch=settings)))
    if "kernel" in only:
        out.append(("kernel vxlan + bridge", topologies.kernel_vxlan))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="ping -A time per setup and round")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, every setup once per round")
    ap.add_argument("--busy-poll-us", default="default,0",
                    help="vswitchd's busy_poll_us values, comma-separated ('default': no setting)")
    ap.add_argument("--only", default="uring,poll,kernel", help="which of uring, poll, kernel")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results/ping-split-<date>)")
    args = ap.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not only or set(only) - {"uring", "poll", "kernel"}:
        ap.error("--only takes uring, poll and kernel, comma-separated")
    try:
        busy = [None if x.strip() == "default" else int(x) for x in args.busy_poll_us.split(",")]
    except ValueError:
        ap.error("--busy-poll-us takes integers or 'default', comma-separated")
    if any(b is not None and not 0 <= b <= 100_000 for b in busy):
        ap.error("--busy-poll-us values are in [0, 100000]")
    if args.seconds <= 0 or args.rounds < 1:
        ap.error("--seconds must be positive and --rounds at least 1")
    if os.geteuid() != 0:
        sys.exit("ping_split needs root (namespaces, captures)")
    interrupt_on_signals()
    date = datetime.date.today().isoformat()
    out_dir = args.out or ROOT / "bench" / "results" / f"ping-split-{date}"
    started = time.monotonic()
    res: dict[str, Any] = {"date": date, "seconds": args.seconds, "rounds": args.rounds, "machine": machine_info(),
                           "setups": {}, "runs": []}
    try:
        install_packages(PACKAGES)
        todo = setups(only, busy)
        pooled: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in todo}
        for r in range(args.rounds):
            print(f"round {r + 1} of {args.rounds}", flush=True)
            for label, build in todo:
                run = measure(label, build, args.seconds, lambda s: print(s, flush=True))
                pooled[label].append(run)
                res["runs"].append({"round": r + 1, **run})
        for label, runs in pooled.items():
            # Pooled: each round's leg summaries weighted by its echoes (means), and the median of medians.
            n = sum(x["matched"] for x in runs)
            legs = {k: {"median_us": statistics.median([x["legs"][k]["median_us"] for x in runs
                                                        if x["legs"][k]["median_us"] is not None] or [0.0]),
                        "mean_us": (sum(x["legs"][k]["mean_us"] * x["matched"] for x in runs
                                        if x["legs"][k]["mean_us"] is not None) / n) if n else None}
                    for k in LEGS}
            counters: dict[str, float] = {}
            for x in runs:
                for k, v in x["loop_counters"].items():
                    counters[k] = counters.get(k, 0) + v
            echoes = sum(x["ping_captured"]["received"] for x in runs)
            res["setups"][label] = {
                "ping_avg_us": statistics.fmean(x["ping"]["avg_us"] for x in runs),
                "ping_captured_avg_us": statistics.fmean(x["ping_captured"]["avg_us"] for x in runs),
                "matched": n, "legs": legs,
                "loop_counters_per_echo": {k: v / echoes for k, v in counters.items()} if echoes else {}}
        run_ended(res, started)
        md = markdown(res)
        write_results(out_dir, res, md)
        finished("ping_split", res, md, out_dir, print)
        return 0
    except (BenchError, KeyboardInterrupt) as e:
        return abandoned("ping_split", e, print)


if __name__ == "__main__":
    sys.exit(main())
