#!/usr/bin/env python3
"""Soak: vswitchd under mixed traffic and constant change, its resources sampled.

For --minutes (default 30), at a moderate rate that leaves the machine's cores
mostly idle:

- traffic: ping between two local containers, ping to a remote host over
  VXLAN (the remote end is the kernel's vxlan device), a 2 Mbit/s UDP stream
  (iperf3) and every minute a short TCP transfer (iperf3, 100 Mbit/s cap)
  on a second network;
- MAC churn: two containers send frames from fresh random source MACs and
  from one shared pool (so pool MACs keep moving between the two ports);
  learned entries age after 60 s;
- API churn, in 10 s cycles: a port added in a spare namespace and removed, a
  tunnel peer added and removed, a network added and removed, a static FDB
  entry added and removed, and a capture of a busy port streamed for a second
  and dropped.

At the end of every cycle, with the churned objects gone again, the daemon's
RSS, open fds, threads and FDB entries are sampled (every 10 s). The verdict:
after the warm-up (a sixth of the run, at least a minute: the FDB fills until
the first churned MACs age out), none of them grows by more than 5 % from the
first post-warm-up minute to the last minute (medians of their samples). Writes results.json, results.md (table and verdict) and
soak.png to --out.

Run as root: `make soak` (30 minutes) or `.venv/bin/python bench/soak.py --minutes 1`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lab import ROOT, VENV_PY, BenchError, Lab, interrupt_on_signals
from machine import loadavg, machine_info
from hostlab import REMOTE_IP, UNDERLAY, Site

from vswitch.client import ApiError

CYCLE_S = 10.0
MAC_AGING_S = 60
GROWTH_LIMIT_PCT = 5.0
PING_LOSS_LIMIT_PCT = 1.0
HOLD_S = 3.0  # how long churned objects live within their cycle
METRICS = ("rss_kib", "fds", "threads", "fdb_entries")
VNI = 100
REMOTE_OVERLAY_IP = "10.9.0.100"
MAC_CHURN_PPS = 50  # per sending container
# Two churners live for MAC_AGING_S each: at least a quarter of what they make
# must be in the FDB after the warm-up.
CHURN_FDB_FLOOR = 2 * MAC_CHURN_PPS * MAC_AGING_S // 4

# Sends frames from random source MACs and from a pool shared with the other
# churner; argv: pps, seed, pool seed. Stops when killed.
MAC_CHURN = r"""
import random, socket, sys, time
pps, seed, pool_seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rnd, pool_rnd = random.Random(seed), random.Random(pool_seed)
def mac(r): return bytes([0x02 | (r.randrange(256) & 0xFC)]) + r.randbytes(5)
pool = [mac(pool_rnd) for _ in range(256)]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind(("eth0", 0))
dst = bytes.fromhex("02eeeeeeee01")
interval = 1.0 / pps
nxt = time.monotonic()
while True:
    src = mac(rnd) if rnd.random() < 0.5 else rnd.choice(pool)
    s.send(dst + src + b"\x88\xb5" + b"soak-mac-churn".ljust(46, b"."))
    nxt += interval
    time.sleep(max(0.0, nxt - time.monotonic()))
"""


def build(lab: Lab, io_mode: str) -> Site:
    site = Site(lab, io_mode)
    site.add_container("c1", "blue", "02:00:00:09:00:01", "10.9.0.1/24")
    # c2 and c3 send from many MACs (the MAC churn), as a VM or a nested bridge
    # behind a port would: their ports go without port security.
    site.add_container("c2", "blue", "02:00:00:09:00:02", "10.9.0.2/24", port_security=False)
    site.add_container("c3", "blue", "02:00:00:09:00:03", "10.9.0.3/24", port_security=False)
    site.add_container("c4", "green", "02:00:00:08:00:04", "10.8.0.4/24")
    site.add_container("c5", "green", "02:00:00:08:00:05", "10.8.0.5/24")
    # The remote VTEP: the kernel's vxlan device, flooding to vswitchd's VTEP.
    r = site.remote
    r.ip("link", "add", "vx0", "type", "vxlan", "id", str(VNI), "dstport", "4789", "local", REMOTE_IP, "dev", "ul0")
    subprocess.run(["bridge", "-n", r.name, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0",
                    "dst", UNDERLAY + "1"], check=True)
    r.ip("addr", "add", f"{REMOTE_OVERLAY_IP}/24", "dev", "vx0")
    r.ip("link", "set", "vx0", "up")
    site.start({"blue": VNI, "green": None}, [("blue", REMOTE_IP)], {"mac_aging_s": MAC_AGING_S})
    return site


def start_traffic(lab: Lab, site: Site, seconds: int) -> dict[str, subprocess.Popen]:
    c = site.containers
    procs: dict[str, subprocess.Popen] = {}
    # Wait for first replies, so ARP and the FDB are in place before counting loss.
    for src, dst in (("c1", c["c2"].addr), ("c2", REMOTE_OVERLAY_IP), ("c4", c["c5"].addr)):
        deadline = time.monotonic() + 20
        while subprocess.run(c[src].ns.cmd("ping", "-n", "-c", "1", "-W", "1", dst), capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise BenchError(f"no ping reply from {dst} to {src}")
        procs[f"ping-{src}-{dst}"] = lab.spawn(f"ping-{src}", c[src].ns.cmd(
            "ping", "-n", "-q", "-i", "0.05", "-w", str(seconds), dst))
    procs["iperf3-server-udp"] = lab.spawn("iperf3-server-udp", c["c1"].ns.cmd("iperf3", "-s", "-p", "5201"))
    procs["iperf3-server-tcp"] = lab.spawn("iperf3-server-tcp", c["c5"].ns.cmd("iperf3", "-s", "-p", "5202"))
    time.sleep(0.5)  # iperf3 -s has no readiness signal; the client retries below anyway
    procs["iperf3-udp"] = lab.spawn("iperf3-udp", c["c3"].ns.cmd(
        "iperf3", "-c", c["c1"].addr, "-p", "5201", "-u", "-b", "2M", "-l", "256", "-t", str(seconds), "--connect-timeout", "5000"))
    for i, name in enumerate(("c2", "c3")):
        procs[f"mac-churn-{name}"] = lab.spawn(f"mac-churn-{name}", c[name].ns.cmd(
            str(VENV_PY), "-c", MAC_CHURN, str(MAC_CHURN_PPS), str(1000 + i), "7"))
    return procs


class Churn:
    """One cycle of API churn; every object it makes it removes in the same cycle."""

    def __init__(self, site: Site, spare: list[Any]) -> None:
        self.site, self.spare = site, spare
        self.n = 0
        self.errors: list[str] = []
        self.counts = {"ports": 0, "peers": 0, "networks": 0, "fdb": 0, "captures": 0, "capture_bytes": 0}

    def _call(self, method: str, path: str, body: Any = None) -> None:
        try:
            self.site.api(method, path, body)
        except ApiError as e:
            self.errors.append(f"{method} {path}: {e.status} {e.detail}")

    def cycle(self) -> None:
        i, self.n = self.n, self.n + 1
        ns = self.spare[i % len(self.spare)]
        port, peer = f"k{i % len(self.spare)}", f"{UNDERLAY}{10 + i % 40}"
        fdb_mac = f"02:5a:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
        net = f"churn{i % 7}"
        self._capture()  # first: its stream's thread has ended long before the sample
        self._call("POST", "/v1/ports", {"name": port, "network": "blue", "netns": ns.name, "ip": f"10.9.1.{1 + i % 200}/24"})
        self._call("POST", "/v1/peers", {"network": "blue", "remote": peer})
        self._call("POST", "/v1/networks", {"name": net, "vni": 1000 + i % 7})
        self._call("POST", "/v1/fdb", {"network": "blue", "mac": fdb_mac, "port": "c1"})
        time.sleep(HOLD_S)  # long enough for floods to reach the new port and peer
        self._call("DELETE", f"/v1/fdb/blue/{fdb_mac}")
        self._call("DELETE", f"/v1/networks/{net}")
        self._call("DELETE", f"/v1/peers/blue/{peer}")
        self._call("DELETE", f"/v1/ports/{port}")
        for k in ("ports", "peers", "networks", "fdb"):
            self.counts[k] += 1

    def _capture(self) -> None:
        """Stream a busy port's capture for about a second, then hang up."""
        assert self.site.client is not None
        end = time.monotonic() + 1.0
        try:
            for chunk in self.site.client.stream("/v1/ports/c1/capture?count=200", idle_timeout=2.0):
                self.counts["capture_bytes"] += len(chunk)
                if time.monotonic() > end:
                    break
            self.counts["captures"] += 1
        except ApiError as e:
            self.errors.append(f"capture: {e.status} {e.detail}")


def tcp_bursts(site: Site, stop: threading.Event, results: list[dict[str, Any]]) -> None:
    c4, c5 = site.containers["c4"], site.containers["c5"]
    while not stop.wait(60.0 if results else 5.0):
        p = subprocess.run(c4.ns.cmd("iperf3", "-c", c5.addr, "-p", "5202", "-t", "2", "-b", "100M", "-J"),
                           capture_output=True, text=True, timeout=60)
        try:
            bps = json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            bps = None
        results.append({"t": time.monotonic(), "ok": p.returncode == 0, "bits_per_second": bps})


def sample(site: Site, t0: float, churn_s: float) -> dict[str, Any]:
    # /proc first: the API thread that answers the stats request is not counted.
    proc = site.process()
    s = site.stats()
    return {"t_s": round(time.monotonic() - t0, 1), **proc, "fdb_entries": s["fdb"]["entries"], "churn_s": round(churn_s, 2),
            "loop_frames": s["loop"]["frames"], "loadavg": loadavg()}


def verdict(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Growth of each metric from the first post-warm-up minute to the last minute (medians)."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    per_min = max(1, int(60 / CYCLE_S))
    if len(after) < 2 * per_min:
        return {"ok": False, "reason": f"only {len(after)} samples after the warm-up: run longer", "metrics": {}}
    first, last = after[:per_min], after[-per_min:]
    metrics = {}
    for m in METRICS:
        base = statistics.median(s[m] for s in first)
        end = statistics.median(s[m] for s in last)
        growth = 100.0 * (end - base) / base if base else (0.0 if end == base else float("inf"))
        metrics[m] = {"baseline": base, "end": end, "growth_pct": round(growth, 2),
                      "max_after_warmup": max(s[m] for s in after), "min_after_warmup": min(s[m] for s in after),
                      "ok": growth <= GROWTH_LIMIT_PCT}
    # The churn must reach the table, or the run shows nothing about it (a port
    # that refuses foreign source MACs would drop every churned frame).
    churned = statistics.median(s["fdb_entries"] for s in after)
    churn_ok = churned >= CHURN_FDB_FLOOR
    return {"ok": churn_ok and all(v["ok"] for v in metrics.values()), "metrics": metrics,
            "mac_churn": {"fdb_median": churned, "floor": CHURN_FDB_FLOOR, "ok": churn_ok},
            "window": f"median of the first minute after {warmup_s:g} s vs median of the last minute"}


def ping_summary(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if "packets transmitted" in line:
            parts = [p.strip() for p in line.split(",")]
            sent, got = int(parts[0].split()[0]), int(parts[1].split()[0])
            return {"sent": sent, "received": got, "loss_pct": round(100.0 * (sent - got) / sent, 3) if sent else None}
    return {"sent": None, "received": None, "loss_pct": None}


def plot(samples: list[dict[str, Any]], warmup_s: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(METRICS), 1, figsize=(8, 9), sharex=True)
    t = [s["t_s"] / 60 for s in samples]
    labels = {"rss_kib": "RSS (MiB)", "fds": "open fds", "threads": "threads", "fdb_entries": "FDB entries"}
    for ax, m in zip(axes, METRICS):
        ys = [s[m] / 1024 if m == "rss_kib" else s[m] for s in samples]
        ax.plot(t, ys, marker=".", linewidth=1)
        ax.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
        ax.set_ylabel(labels[m])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[-1].set_xlabel("minutes")
    fig.suptitle("vswitchd under soak: sampled every 10 s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_md(doc: dict[str, Any], path: Path) -> None:
    v = doc["verdict"]
    lines = [f"# Soak, {doc['date']}", "",
             f"{doc['minutes']:g} minutes, io_mode {doc['io_mode']}, warm-up {doc['warmup_s']:g} s; "
             f"verdict: **{'PASS' if v['ok'] else 'FAIL'}** (nothing may grow by more than {GROWTH_LIMIT_PCT:g} % "
             f"after the warm-up; {v.get('window', v.get('reason', ''))}).", "",
             "| metric | baseline | end | growth | min..max after warm-up | ok |", "| --- | --- | --- | --- | --- | --- |"]
    for m, r in v["metrics"].items():
        lines.append(f"| {m} | {r['baseline']:g} | {r['end']:g} | {r['growth_pct']:+.2f} % | "
                     f"{r['min_after_warmup']:g}..{r['max_after_warmup']:g} | {'yes' if r['ok'] else 'NO'} |")
    if "mac_churn" in v:
        mc = v["mac_churn"]
        lines += ["", f"MAC churn in the FDB after the warm-up: median {mc['fdb_median']:g} entries "
                      f"(at least {mc['floor']} wanted): {'yes' if mc['ok'] else 'NO'}"]
    lines += ["", "Churn done: " + ", ".join(f"{k} {n}" for k, n in doc["churn"].items()),
              f"API errors during churn: {len(doc['api_errors'])}", "",
              "Traffic: " + "; ".join(f"{k}: {p['received']}/{p['sent']} replies ({p['loss_pct']} % lost)"
                                      for k, p in doc["pings"].items()),
              f"TCP bursts: {sum(b['ok'] for b in doc['tcp_bursts'])} of {len(doc['tcp_bursts'])} completed; "
              f"UDP stream exit status {doc['udp_stream_rc']}; traffic kept flowing (every ping run lost at most "
              f"{PING_LOSS_LIMIT_PCT:g} %): {'yes' if doc['traffic_ok'] else 'NO'}",
              f"Daemon alive at the end: {doc['alive_at_end']}", "",
              "Samples (one a minute shown; every 10 s in results.json):", "",
              "| t (s) | RSS (KiB) | of it, frame buffers (KiB) | fds | threads | FDB entries | loadavg |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    per_min = int(60 / CYCLE_S)
    for k, s in enumerate(doc["samples"]):
        if k % per_min == 0 or k == len(doc["samples"]) - 1:
            lines.append(f"| {s['t_s']:g} | {s['rss_kib']} | {s.get('buffers_rss_kib', '-')} | {s['fds']} | {s['threads']} | "
                         f"{s['fdb_entries']} | {s['loadavg']} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--io-mode", choices=("auto", "uring", "poll"), default="auto")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/soak-<date>")
    ap.add_argument("--no-plot", action="store_true", help="write no soak.png (matplotlib is a benchmark requirement)")
    args = ap.parse_args()
    interrupt_on_signals()
    seconds = max(60, int(args.minutes * 60))
    warmup_s = max(60.0, seconds / 6)
    out = args.out or ROOT / "bench" / "results" / f"soak-{datetime.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    with Lab("soak") as lab:
        site = build(lab, args.io_mode)
        io_mode = site.stats()["io_mode"]
        spare = [lab.netns(f"k{i}") for i in range(3)]
        procs = start_traffic(lab, site, seconds)
        stop = threading.Event()
        bursts: list[dict[str, Any]] = []
        burster = threading.Thread(target=tcp_bursts, args=(site, stop, bursts), daemon=True)
        burster.start()
        churn = Churn(site, spare)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        print(f"soak: {seconds} s, io_mode {io_mode}, daemon pid {site.pid}, lab {lab.dir}", flush=True)
        try:
            while (elapsed := time.monotonic() - t0) < seconds:
                cycle_end = t0 + (len(samples) + 1) * CYCLE_S
                c0 = time.monotonic()
                churn.cycle()
                churn_s = time.monotonic() - c0
                if not site.alive():
                    raise BenchError(f"vswitchd died: {lab.log_tail('vswitchd')}")
                time.sleep(max(0.0, cycle_end - time.monotonic()))
                samples.append(sample(site, t0, churn_s))
                s = samples[-1]
                print(f"soak: t={s['t_s']:7.1f}s rss={s['rss_kib']}KiB buffers={s['buffers_rss_kib']}KiB fds={s['fds']} threads={s['threads']} "
                      f"fdb={s['fdb_entries']} churn={s['churn_s']}s load={s['loadavg']}", flush=True)
        finally:
            stop.set()
        burster.join(timeout=70)
        pings = {}
        for name, p in procs.items():
            if name.startswith("ping-"):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                pings[name] = ping_summary(lab.output(f"ping-{name.split('-')[1]}"))
        udp = procs["iperf3-udp"]
        try:
            udp.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        alive = site.alive()
        doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "minutes": seconds / 60, "io_mode": io_mode, "warmup_s": warmup_s, "machine": machine,
               "verdict": verdict(samples, warmup_s), "samples": samples, "churn": churn.counts,
               "api_errors": churn.errors[:50], "pings": pings, "tcp_bursts": bursts,
               "udp_stream_rc": udp.returncode, "alive_at_end": alive}
        # Traffic kept flowing: every ping run got at least 99 % of its replies.
        doc["traffic_ok"] = all(p["loss_pct"] is not None and p["loss_pct"] <= PING_LOSS_LIMIT_PCT for p in pings.values())
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    write_md(doc, out / "results.md")
    if not args.no_plot:
        plot(samples, warmup_s, out / "soak.png")
    print((out / "results.md").read_text())
    ok = doc["verdict"]["ok"] and doc["traffic_ok"] and alive and not churn.errors
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"soak: {e}", file=sys.stderr)
        sys.exit(1)
