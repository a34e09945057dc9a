"""vswitchd at 1, 8, 64 and 256 ports with 100k learned FDB entries: RSS, start time, throughput.

Ports c1 and c2 sit in their own container namespaces (10.77.0.1 and .2);
the others in one more namespace, as p3, p4, ... The FDB is filled by frames
from 100k source MACs sent out of c1 (bench/learn_flood.py); throughput is
TCP between c1 and c2 while all the other ports exist and the table is full.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from lab import VENV_PY, ROOT, BenchError, Lab, run
from topologies import MACS, NET, Topo, port_toml, reachable, start_vswitchd, toml
from traffic import Runner, median_of, start_server

from vswitch.client import Client

PORT_COUNTS = (1, 8, 64, 256)
FDB_ENTRIES = 100_000
MAC_TABLE_SIZE = 131_072
FILL_PASSES = 5


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def point(ports: int, runs: int, seconds: float) -> dict[str, Any]:
    with Lab(f"s{ports}") as lab:
        c1 = lab.netns("c1")
        c2 = lab.netns("c2") if ports >= 2 else None
        rest = lab.netns("rest") if ports > 2 else None
        parts = [toml("[switch]", {"mac_table_size": MAC_TABLE_SIZE}), toml("[[network]]", {"name": "bench"}),
                 port_toml("c1", c1, 1),
                 # Known behind c1: the learning frames c1 sends there are dropped after learning.
                 toml("[[fdb]]", {"network": "bench", "mac": MACS[1], "port": "c1"})]
        if c2 is not None:
            parts.append(port_toml("c2", c2, 2))
        if rest is not None:
            parts += [port_toml(f"p{i}", rest, ifname=f"p{i}") for i in range(3, ports + 1)]
        t0 = time.monotonic()
        proc, sock = start_vswitchd(lab, "vswitchd", "".join(parts))
        start_s = time.monotonic() - t0
        out: dict[str, Any] = {"ports": ports, "start_s": start_s, "rss_mib_empty": rss_kib(proc.pid) / 1024}
        client = Client(sock)
        t0 = time.monotonic()
        for _ in range(FILL_PASSES):
            run(c1.cmd(str(VENV_PY), str(ROOT / "bench" / "learn_flood.py"), "--ifname", "eth0",
                       "--dst", MACS[1], "--count", str(FDB_ENTRIES)), timeout=120)
            entries = client.request("GET", "/v1/stats")["fdb"]["entries"]
            if entries >= FDB_ENTRIES:
                break
        out |= {"fdb_entries": entries, "fdb_fill_s": time.monotonic() - t0, "rss_mib_fdb": rss_kib(proc.pid) / 1024}
        if c2 is not None:
            c1.ip("link", "set", "eth0", "up")
            c2.ip("link", "set", "eth0", "up")
            topo = Topo(c1, c2, f"{NET}2", [proc.pid])
            reachable(topo)
            runner = Runner(lab, topo, start_server(lab, topo))
            out["tcp_gbit_s"] = median_of([runner.tcp(seconds) for _ in range(runs)])["gbit_s"]
        return out


def measure(runs: int, seconds: float, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    res = []
    for n in PORT_COUNTS:
        try:
            r = point(n, runs, seconds)
        except BenchError as e:
            log(f"    {n:>3} ports: not measured: {e}")
            res.append({"ports": n, "error": str(e)})
            continue
        tcp = f", TCP {r['tcp_gbit_s']:.2f} Gbit/s" if "tcp_gbit_s" in r else ""
        log(f"    {n:>3} ports: start {r['start_s']:.2f} s, RSS {r['rss_mib_empty']:.1f} MiB -> "
            f"{r['rss_mib_fdb']:.1f} MiB with {r['fdb_entries']} FDB entries{tcp}")
        res.append(r)
    return res
