"""The figures measured on a topology: TCP throughput, 64-byte UDP frames delivered, RTT, switch CPU.

TCP is iperf3. The 64-byte UDP load is bench/udpflood.py: a sendmmsg(2)
sender that offers more than a userspace switch forwarding frame by frame
does, and a sink that holds the ports open without reading. It runs twice:
one flow from a UDP socket, and 8 flows interleaved datagram by datagram,
sent as ready-made frames through a packet socket (no switch can coalesce
them: every frame is forwarded on its own, and the sender offers far more
than any switch here forwards, so that figure is each switch's per-frame
saturation rate). Datagrams are counted where they enter
and leave: offered = what the sending container's eth0 handed on
(tx_packets + tx_dropped), delivered = the datagrams the receiving
container's UDP took in (InDatagrams + InErrors: the sink never reads, so
most overflow its buffer), not its eth0's rx_packets, which counts a
coalesced super-frame once. Counters and the switch's CPU time are sampled
over the same window, inside the run, after a short warm-up. The counters
are read as /proc/PID/net/dev and /proc/PID/net/snmp of a process in each
namespace (the sender, the iperf3 server): plain file reads from here, so
both sides are sampled microseconds apart rather than a process spawn apart.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lab import ROOT, VENV_PY, BenchError, Lab, wait_for
from topologies import Topo, reachable

CLK_TCK = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201
UDP_PORT = 5301
UDP_FLOWS = 8                      # the interleaved load's flows: ports UDP_PORT and up
UDPFLOOD = ROOT / "bench" / "udpflood.py"
UDP_WARMUP_S = 0.5
UDP_TAIL_S = 0.2
PING_ADAPTIVE_COUNT = 2000
PING_INTERVAL_COUNT = 200
BUSY_RETRIES = 5
SATURATED_LOSS_PCT = 5.0  # a userspace switch dropping less of the offered load may not be at its limit
KINDS = ("tcp", "udp", "udp_flows", "ping_adaptive", "ping_interval")  # every figure measure() takes


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


def udp_received(pid: int) -> int:
    """Datagrams the UDP of process `pid`'s network namespace took in, read or dropped."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    udp = dict(zip(lines[0][1:], (int(x) for x in lines[1][1:])))
    return udp["InDatagrams"] + udp["InErrors"]


def listen(lab: Lab, topo: Topo, name: str, argv: list[str], ss_flags: str, port: int) -> subprocess.Popen:
    """Start `argv` in the server container; returns once something listens on `port` there."""
    proc = lab.spawn(name, topo.server.cmd(*argv))

    def listening() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited {proc.returncode}: {lab.log_tail(name)}")
        return topo.server.exec("ss", ss_flags, f"sport = :{port}", timeout=10).strip() != ""
    wait_for(name, listening)
    return proc


def start_server(lab: Lab, topo: Topo) -> int:
    """The receiving side: iperf3's server (TCP) and the UDP sink; returns the iperf3 server's pid."""
    server = listen(lab, topo, "iperf3-server", ["iperf3", "-s", "-p", str(IPERF_PORT)], "-Hltn", IPERF_PORT)
    listen(lab, topo, "udp-sink", [str(VENV_PY), str(UDPFLOOD), "sink", str(UDP_PORT), str(UDP_FLOWS)], "-Hlun",
           UDP_PORT + UDP_FLOWS - 1)
    return server.pid


class Runner:
    """Runs the clients (iperf3, the UDP sender, ping) in the client container against the server's side."""

    def __init__(self, lab: Lab, topo: Topo, server_pid: int) -> None:
        self.lab, self.topo, self.server_pid = lab, topo, server_pid
        self._n = 0

    def tcp(self, seconds: float) -> dict[str, Any]:
        """One iperf3 TCP run. Retries while the server is still busy with the previous test."""
        for _ in range(BUSY_RETRIES):
            self._n += 1
            name = f"iperf3-client-{self._n}"
            proc = self.lab.spawn(name, self.topo.client.cmd(
                "iperf3", "-c", self.topo.server_ip, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J"))
            try:
                proc.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                raise BenchError("iperf3 did not finish") from None
            text = self.lab.output(name)
            try:
                doc = json.loads(text)
            except ValueError:
                raise BenchError(f"iperf3: no JSON: {text[:200]!r} {self.lab.log_tail(name)}") from None
            err = doc.get("error")
            if err and "busy" in err:
                time.sleep(1.0)
                continue
            if err:
                raise BenchError(f"iperf3: {err}")
            end = doc["end"]
            return {"gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
                    "retransmits": end["sum_sent"].get("retransmits")}
        raise BenchError("iperf3 server stayed busy")

    def _sample(self, sender_pid: int) -> dict[str, float]:
        t = time.monotonic()
        cpu = sum(cpu_s(pid) for pid in self.topo.switch_pids)
        tx = ns_counters(sender_pid)
        rx = udp_received(self.server_pid)
        return {"t": (t + time.monotonic()) / 2, "cpu": cpu, "rx": rx,
                "offered": tx["tx_packets"] + tx["tx_dropped"]}

    def udp(self, seconds: float, busy: Callable[[float], Any] | None = None, flows: int = 1) -> dict[str, Any]:
        """One 64-byte UDP run of `flows` interleaved flows; `busy(deadline)`, if given, runs
        inside the measuring window and its result is returned under "busy"."""
        self._n += 1
        name = f"udpflood-{self._n}"
        t0 = time.monotonic()
        proc = self.lab.spawn(name, self.topo.client.cmd(
            str(VENV_PY), str(UDPFLOOD), "send", self.topo.server_ip, str(UDP_PORT), f"{seconds:g}", str(flows)))
        a = b = extra = None
        try:
            time.sleep(max(0.0, t0 + UDP_WARMUP_S - time.monotonic()))
            if proc.poll() is None:
                a = self._sample(proc.pid)
                end = t0 + seconds - UDP_TAIL_S
                extra = busy(end) if busy else None
                time.sleep(max(0.0, end - time.monotonic()))
                b = self._sample(proc.pid) if proc.poll() is None else None
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            raise BenchError("the UDP sender did not finish") from None
        if proc.returncode != 0 or a is None or b is None:
            raise BenchError(f"the UDP sender ended before the measuring window closed (exit {proc.returncode}): "
                             f"{self.lab.log_tail(name)}")
        sent = json.loads(self.lab.output(name))
        dt = b["t"] - a["t"]
        delivered, offered = b["rx"] - a["rx"], b["offered"] - a["offered"]
        out: dict[str, Any] = {
            "delivered_pps": delivered / dt,
            "offered_pps": offered / dt,
            "loss_pct": 100.0 * (1 - delivered / offered) if offered else None,
            "sender_pps": sent["sent"] / sent["seconds"],
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
        # ping prints whole microseconds, so a median moves in steps of ~8% here; a mean with the
        # slowest 1% left out keeps the resolution and drops the replies a busy machine stalled.
        fastest = times[:max(1, len(times) * 99 // 100)]
        return {"min_us": times[0], "avg_us": statistics.fmean(times), "avg_fastest_99_us": statistics.fmean(fastest),
                "p99_us": percentile(times, 99),
                "loss_pct": 100.0 * (1 - len(times) / count)}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs, taken figure by figure."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        out[k] = statistics.median(vals) if vals else None
    return out


def measure(runner: Runner, runs: int, seconds: float, log: Callable[[str], None] = print,
            kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """The figures `kinds` (all by default) for one topology, in KINDS order: raw runs and their medians."""
    fns: dict[str, Callable[[], dict[str, Any]]] = {
        "tcp": lambda: runner.tcp(seconds), "udp": lambda: runner.udp(seconds),
        "udp_flows": lambda: runner.udp(seconds, flows=UDP_FLOWS),
        "ping_adaptive": lambda: runner.ping(True), "ping_interval": lambda: runner.ping(False)}
    raw: dict[str, list[dict[str, Any]]] = {}
    for kind in (k for k in KINDS if k in kinds):
        raw[kind] = [fns[kind]() for _ in range(runs)]
        log(f"    {kind:<14} {fmt_run(kind, median_of(raw[kind]))}")
    return {"runs": raw, "median": {k: median_of(v) for k, v in raw.items()}}


def measure_fresh(tag: str, build: Callable[[Lab], Topo], seconds: float, log: Callable[[str], None] = print,
                  kinds: Sequence[str] = KINDS,
                  extra: Callable[[Runner], None] | None = None) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Build a topology in a lab of its own, measure each figure of `kinds` once on it, run
    `extra(runner)` if given, and take it all down; returns the runs by figure and the number of
    switch processes."""
    with Lab(tag) as lab:
        topo = build(lab)
        reachable(topo)
        runner = Runner(lab, topo, start_server(lab, topo))
        runs = measure(runner, 1, seconds, log, kinds)["runs"]
        if extra:
            extra(runner)
        return runs, len(topo.switch_pids)


def fmt_run(kind: str, m: dict[str, Any]) -> str:
    if kind == "tcp":
        return f"{m['gbit_s']:.2f} Gbit/s"
    if kind in ("udp", "udp_flows"):
        cpu = m.get("cpu_us_per_frame")
        return (f"{m['delivered_pps'] / 1e3:.0f}k frames/s delivered of {m['offered_pps'] / 1e3:.0f}k offered, "
                f"loss {m['loss_pct']:.1f}%"
                + (f", {cpu:.2f} us CPU/frame" if cpu is not None else ""))
    return f"min/avg/p99 {m['min_us']:.0f}/{m['avg_us']:.1f}/{m['p99_us']:.0f} us"
