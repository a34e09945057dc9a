"""The figures measured on a topology: TCP throughput, 64-byte UDP frames delivered, RTT, switch CPU.

UDP frames are counted at the interfaces, not only by iperf3 (whose receiver
saturates before a switch does): offered = what the sending container's eth0
handed on (tx_packets + tx_dropped), delivered = the receiving eth0's
rx_packets. Counters and the switch's CPU time are sampled over the same
window, inside the run, after a short warm-up. The counters are those of
/sys/class/net/eth0/statistics in each container, read as
/proc/PID/net/dev of the iperf3 process in that namespace: a plain file read
from here, so both sides are sampled microseconds apart rather than a
process spawn apart.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from lab import BenchError, Lab, wait_for
from topologies import Topo

CLK_TCK = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201
UDP_LEN = 64
UDP_WARMUP_S = 0.5
UDP_TAIL_S = 0.2
PING_ADAPTIVE_COUNT = 2000
PING_INTERVAL_COUNT = 200
BUSY_RETRIES = 5


def percentile(ordered: list[float], q: int) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)]


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def ns_counters(pid: int, ifname: str = "eth0") -> dict[str, int]:
    """rx_packets, tx_packets, tx_dropped of `ifname` in the network namespace of process `pid`."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == ifname:
            f = [int(x) for x in rest.split()]
            return {"rx_packets": f[1], "tx_packets": f[9], "tx_dropped": f[11]}
    raise BenchError(f"no {ifname} in the namespace of pid {pid}")


def start_server(lab: Lab, topo: Topo) -> int:
    proc = lab.spawn("iperf3-server", topo.server.cmd("iperf3", "-s", "-p", str(IPERF_PORT)))

    def listening() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"iperf3 server exited {proc.returncode}: {lab.log_tail('iperf3-server')}")
        return topo.server.exec("ss", "-Hltn", f"sport = :{IPERF_PORT}", timeout=10).strip() != ""
    wait_for("iperf3 server", listening)
    return proc.pid


class Runner:
    """Runs iperf3 and ping clients in the client container, against the server's iperf3."""

    def __init__(self, lab: Lab, topo: Topo, server_pid: int) -> None:
        self.lab, self.topo, self.server_pid = lab, topo, server_pid
        self._n = 0

    def _iperf(self, args: list[str], seconds: float,
               during: Callable[[subprocess.Popen, float], Any] | None = None) -> tuple[dict, Any]:
        """One iperf3 client run; `during(proc, t0)` runs while it does. Retries while the server
        is still busy with the previous test."""
        for _ in range(BUSY_RETRIES):
            self._n += 1
            name = f"iperf3-client-{self._n}"
            t0 = time.monotonic()
            proc = self.lab.spawn(name, self.topo.client.cmd(
                "iperf3", "-c", self.topo.server_ip, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J", *args))
            extra = during(proc, t0) if during else None
            try:
                proc.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"iperf3 {' '.join(args)} did not finish") from None
            text = self.lab.output(name)
            try:
                doc = json.loads(text)
            except ValueError:
                raise BenchError(f"iperf3 {' '.join(args)}: no JSON: {text[:200]!r} {self.lab.log_tail(name)}") from None
            err = doc.get("error")
            if err and "busy" in err:
                time.sleep(1.0)
                continue
            if err:
                raise BenchError(f"iperf3 {' '.join(args)}: {err}")
            return doc, extra
        raise BenchError("iperf3 server stayed busy")

    def tcp(self, seconds: float) -> dict[str, Any]:
        doc, _ = self._iperf([], seconds)
        end = doc["end"]
        return {"gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
                "retransmits": end["sum_sent"].get("retransmits")}

    def _sample(self, client_pid: int) -> dict[str, float]:
        t = time.monotonic()
        cpu = sum(cpu_s(pid) for pid in self.topo.switch_pids)
        tx = ns_counters(client_pid)
        rx = ns_counters(self.server_pid)
        return {"t": (t + time.monotonic()) / 2, "cpu": cpu, "rx": rx["rx_packets"],
                "offered": tx["tx_packets"] + tx["tx_dropped"]}

    def udp(self, seconds: float, busy: Callable[[float], Any] | None = None) -> dict[str, Any]:
        """One 64-byte UDP run; `busy(deadline)`, if given, runs inside the measuring window
        and its result is returned under "busy"."""
        def window(proc: subprocess.Popen, t0: float) -> tuple[dict, dict, Any] | None:
            time.sleep(max(0.0, t0 + UDP_WARMUP_S - time.monotonic()))
            if proc.poll() is not None:
                return None  # refused (server busy) or failed: _iperf tells which
            a = self._sample(proc.pid)
            end = t0 + seconds - UDP_TAIL_S
            extra = busy(end) if busy else None
            time.sleep(max(0.0, end - time.monotonic()))
            b = self._sample(proc.pid)
            return None if proc.poll() is not None else (a, b, extra)
        doc, win = self._iperf(["-u", "-l", str(UDP_LEN), "-b", "0"], seconds, during=window)
        if win is None:
            raise BenchError("iperf3 UDP client ended before the measuring window closed")
        a, b, extra = win
        dt = b["t"] - a["t"]
        delivered, offered = b["rx"] - a["rx"], b["offered"] - a["offered"]
        s = doc["end"]["sum"]
        out: dict[str, Any] = {
            "delivered_pps": delivered / dt,
            "offered_pps": offered / dt,
            "loss_pct": 100.0 * (1 - delivered / offered) if offered else None,
            "iperf3_sent_pps": s["packets"] / s["seconds"],
            "iperf3_received_pps": (s["packets"] - s["lost_packets"]) / s["seconds"],
            "iperf3_loss_pct": s["lost_percent"],
            "window_s": dt,
        }
        if self.topo.switch_pids:
            out["cpu_us_per_frame"] = (b["cpu"] - a["cpu"]) * 1e6 / delivered if delivered else None
            out["switch_cpu_util"] = (b["cpu"] - a["cpu"]) / dt
        if busy:
            out["busy"] = extra
        return out

    def ping(self, adaptive: bool) -> dict[str, Any]:
        count = PING_ADAPTIVE_COUNT if adaptive else PING_INTERVAL_COUNT
        mode = ["-A"] if adaptive else ["-i", "0.01"]
        out = self.topo.client.exec("ping", "-n", *mode, "-c", str(count), "-W", "1", "-w", "60",
                                    self.topo.server_ip, check=False, timeout=90)
        times = sorted(round(float(x) * 1000, 1) for x in re.findall(r"time=([\d.]+) ms", out))
        if not times:
            raise BenchError(f"ping {' '.join(mode)} {self.topo.server_ip}: no reply")
        return {"min_us": times[0], "avg_us": statistics.fmean(times), "p99_us": percentile(times, 99),
                "loss_pct": 100.0 * (1 - len(times) / count)}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs, taken figure by figure."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        out[k] = statistics.median(vals) if vals else None
    return out


def measure(runner: Runner, runs: int, seconds: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole set of figures for one topology: raw runs and their medians."""
    raw: dict[str, list[dict[str, Any]]] = {"tcp": [], "udp": [], "ping_adaptive": [], "ping_interval": []}
    for kind, fn in (("tcp", lambda: runner.tcp(seconds)), ("udp", lambda: runner.udp(seconds)),
                     ("ping_adaptive", lambda: runner.ping(True)), ("ping_interval", lambda: runner.ping(False))):
        for _ in range(runs):
            raw[kind].append(fn())
        log(f"    {kind:<14} {fmt_run(kind, median_of(raw[kind]))}")
    return {"runs": raw, "median": {k: median_of(v) for k, v in raw.items()}}


def fmt_run(kind: str, m: dict[str, Any]) -> str:
    if kind == "tcp":
        return f"{m['gbit_s']:.2f} Gbit/s"
    if kind == "udp":
        cpu = m.get("cpu_us_per_frame")
        return (f"{m['delivered_pps'] / 1e3:.0f}k frames/s delivered, loss {m['loss_pct']:.1f}%"
                + (f", {cpu:.2f} us CPU/frame" if cpu is not None else ""))
    return f"min/avg/p99 {m['min_us']:.0f}/{m['avg_us']:.1f}/{m['p99_us']:.0f} us"
