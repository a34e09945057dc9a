"""A broadcast storm against two neighbours' TCP, with storm control on (the
defaults) and off, in the same run: `.venv/bin/python bench/storm.py` (root).

Three containers on one vswitchd: c1 sends TCP to c2 (iperf3) while c3
sends broadcast frames as fast as it can (ready-made frames through a
packet socket, PACKET_QDISC_BYPASS, a send per frame from Python). Each
setting is measured without the storm, then with it; the figure is the
neighbours' TCP with the storm against without, how many storm frames a
second the sender offered (those its TAP's full queue refused included),
the switch read (c3's rx_packets over the storm) and flooded to them (c3's
flooded counter), and how often the switch paused c3 (fastpath/pause.pxi).
The issue's goal: with the defaults, neighbours keep at least half their
no-storm TCP. Results go to bench/results/storm-<date>/ (json and md).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

from lab import ROOT, VENV_PY, BenchError, Lab, interrupt_on_signals
from machine import loadavg, machine_info, write_results
from topologies import (NET, PREFIX, Topo, containers, default_io_mode, port_toml, reachable, start_vswitchd,
                        toml)
from traffic import Runner, start_server

from vswitch.client import Client

ATTACKER_MAC = "02:00:00:77:00:03"
STORM_CODE = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS: straight to the TAP
s.bind(("eth0", 0))
frame = b"\\xff" * 6 + bytes.fromhex(sys.argv[1].replace(":", "")) + b"\\x88\\xb5" + bytes(46)
end, n, refused = time.monotonic() + float(sys.argv[2]), 0, 0
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.send(frame)
            n += 1
        except OSError:  # ENOBUFS: the TAP's queue is full and dropped it; go on offering
            refused += 1
print(n, refused, flush=True)
"""


def build(lab: Lab, storm_control: bool, io_mode: str | None) -> tuple[Topo, Any, Client]:
    c1, c2 = containers(lab)
    c3 = lab.netns("c3")
    off = {} if storm_control else {"storm_broadcast": 0, "storm_multicast": 0}
    config = toml("[[network]]", {"name": "bench"})
    for name, ns, i in (("c1", c1, 1), ("c2", c2, 2)):
        config += port_toml(name, ns, i)[:-1] + "".join(f"{k} = {v}\n" for k, v in off.items()) + "\n"
    config += toml("[[port]]", {"name": "c3", "netns": c3.name, "network": "bench", "ifname": "eth0",
                                "mac": ATTACKER_MAC, "ip": f"{NET}3/{PREFIX}", **off})
    proc, sock = start_vswitchd(lab, "vswitchd", config, io_mode=io_mode)
    for c in (c1, c2, c3):
        c.ip("link", "set", "eth0", "up")
    topo = Topo(c1, c2, f"{NET}2", [proc.pid], api_socket=sock)
    reachable(topo)
    return topo, c3, Client(sock, timeout=5.0)


def measure(storm_control: bool, seconds: float, io_mode: str | None) -> dict[str, Any]:
    with Lab("st") as lab:
        topo, c3, client = build(lab, storm_control, io_mode)
        runner = Runner(lab, topo, start_server(lab, topo))
        quiet = runner.tcp(seconds)["gbit_s"]
        before, t0 = client.request("GET", "/v1/ports/c3")["counters"], time.monotonic()
        storm = lab.spawn("storm", c3.cmd(str(VENV_PY), "-c", STORM_CODE, ATTACKER_MAC, str(seconds + 2)))
        time.sleep(1.0)  # the storm at full speed before TCP starts
        stormy = runner.tcp(seconds)["gbit_s"]
        after, window = client.request("GET", "/v1/ports/c3")["counters"], time.monotonic() - t0
        storm.wait(seconds + 30)
        if not lab.output("storm").strip():
            raise BenchError(f"the storm sender printed nothing: {lab.log_tail('storm')}")
        sent, refused = (int(v) for v in lab.output("storm").split()[:2])
        return {"storm_control": storm_control, "tcp_gbit_s_quiet": quiet, "tcp_gbit_s_storm": stormy,
                "ratio": stormy / quiet if quiet else None, "storm_frames_sent": sent,
                "storm_frames_refused": refused,
                "storm_fps_offered": (sent + refused) / (seconds + 2),
                "storm_fps_read": (after["rx_packets"] - before["rx_packets"]) / window,
                "storm_fps_flooded": (after["flooded"] - before["flooded"]) / window,
                "storm_pauses": after.get("paused", 0) - before.get("paused", 0),
                "storm_dropped": after["drops"]["storm_broadcast"] - before["drops"]["storm_broadcast"]}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Broadcast storm against neighbours' TCP, {res['date']}", "",
             f"{res['machine']['cpu']}, {res['machine']['cores']} cores; I/O mode {res.get('io_mode', 'auto')}; "
             f"one TCP run of {res['seconds']:g} s each; "
             f"load average at the end {res['machine']['loadavg_end']}.", "",
             "| storm control | TCP quiet Gbit/s | TCP in storm Gbit/s | in storm ÷ quiet | storm frames/s offered "
             "| read by the switch /s | flooded to neighbours /s | pauses |", "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {'on (defaults)' if r['storm_control'] else 'off'} | {r['tcp_gbit_s_quiet']:.2f} | "
                     f"{r['tcp_gbit_s_storm']:.2f} | {r['ratio']:.2f} | {r['storm_fps_offered']:.0f} | "
                     f"{r['storm_fps_read']:.0f} | {r['storm_fps_flooded']:.0f} | {r['storm_pauses']} |")
    on = next(r for r in res["runs"] if r["storm_control"])
    lines += ["", f"Goal (defaults: neighbours keep at least half their no-storm TCP): "
              f"{'met' if on['ratio'] >= 0.5 else 'missed'} ({on['ratio']:.2f})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--io-mode", choices=("poll", "uring"), help="the datapath's I/O mode (default: vswitchd's auto)")
    ap.add_argument("--out", type=Path, help="results directory (default bench/results/storm-<date>/)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("storm: must run as root", file=sys.stderr)
        return 1
    interrupt_on_signals()
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "bench" / "results" / f"storm-{date}"
    res: dict[str, Any] = {"date": date, "seconds": args.seconds, "io_mode": args.io_mode or default_io_mode(),
                           "machine": machine_info()}
    try:
        res["runs"] = [measure(True, args.seconds, args.io_mode), measure(False, args.seconds, args.io_mode)]
    except BenchError as e:
        print(f"storm: {e}", file=sys.stderr)
        return 1
    res["machine"]["loadavg_end"] = loadavg()
    md = markdown(res)
    write_results(out, res, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
