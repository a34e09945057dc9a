"""A cluster of N simulated hosts on one 3-member etcd: convergence times and memory per vswitchd.

Each host is a namespace with ul0 on an underlay bridge (192.0.2.I/24) and
its own vswitchd joined to etcd; each has one container on network "blue"
(VNI 100). The etcd members run in the underlay namespace on the bridge's
address. Measured:

- join: all N vswitchd started at once -> every node holds the N-1 remote
  MACs (and, separately, until every API answers);
- move: a container re-created on another host (same MAC and IP, the old
  port deleted first) -> every node points its MAC at the new VTEP;
- death: one vswitchd killed (SIGKILL) -> every other node has withdrawn its
  MAC (bounded below by the lease TTL);
- RSS of each vswitchd, and a sample of pings between containers;
- underlay BUM: the same sample of pings between containers with empty ARP
  caches, once with the cluster (ARP answered by each host's switch, remote
  MACs known ahead) and once with every vswitchd restarted on static peers
  (a full mesh) and flood-and-learn; underlay_count.py counts the VXLAN
  datagrams that cross the underlay carrying ARP, other broadcast/multicast
  and unknown unicast (flood copies).

Usage (root, after `make build`): .venv/bin/python bench/cluster_scale.py --hosts 10
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import VENV_PY, BenchError, Lab, Netns, interrupt_on_signals, run, wait_for  # noqa: E402

from vswitch.client import ApiError, Client  # noqa: E402

ETCD_IP = "192.0.2.254"
VNI = 100
POLL_S = 0.005


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class Host:
    def __init__(self, lab: Lab, underlay: Netns, i: int) -> None:
        self.i = i
        self.ip = f"192.0.2.{i}"
        self.ns = lab.netns(f"h{i}")
        underlay.ip("link", "add", f"u{i}", "type", "veth", "peer", "name", "ul0", "netns", self.ns.name)
        underlay.ip("link", "set", f"u{i}", "master", "br0", "up")
        self.ns.ip("addr", "add", f"{self.ip}/24", "dev", "ul0")
        self.ns.ip("link", "set", "ul0", "up")
        self.dir = lab.dir / f"h{i}"
        self.dir.mkdir()
        self.sock = self.dir / "api.sock"
        self.client = Client(self.sock, timeout=5.0)
        self.proc: Any = None

    def remote_macs(self) -> dict[str, str]:
        try:
            return {e["mac"]: e["peer"] for e in self.client.request("GET", "/v1/fdb") if e["static"] and e["peer"]}
        except ApiError:
            return {}


def container(lab: Lab, name: str) -> Netns:
    ns = lab.netns(name)
    ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    return ns


def start_etcd(lab: Lab, underlay: Netns) -> str:
    ports = [(23790 + 10 * m, 23791 + 10 * m) for m in range(3)]
    initial = ",".join(f"m{m}=http://{ETCD_IP}:{p}" for m, (_, p) in enumerate(ports))
    for m, (c, p) in enumerate(ports):
        lab.spawn(f"etcd-m{m}", underlay.cmd(
            "etcd", "--name", f"m{m}", "--data-dir", str(lab.dir / f"etcd-m{m}"),
            "--listen-client-urls", f"http://{ETCD_IP}:{c}", "--advertise-client-urls", f"http://{ETCD_IP}:{c}",
            "--listen-peer-urls", f"http://{ETCD_IP}:{p}", "--initial-advertise-peer-urls", f"http://{ETCD_IP}:{p}",
            "--initial-cluster", initial, "--initial-cluster-token", lab.prefix, "--initial-cluster-state", "new",
            "--heartbeat-interval", "50", "--election-timeout", "500"))
    endpoints = ",".join(f"http://{ETCD_IP}:{c}" for c, _ in ports)

    def healthy() -> bool:
        # etcdctl 3.4 reports health on stderr.
        out = run(underlay.cmd("sh", "-c", f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} --command-timeout=1s "
                               "endpoint health 2>&1"), check=False, timeout=10)
        return out.count("is healthy") == len(ports)
    wait_for("etcd healthy", healthy, timeout=30, interval=0.2)
    return endpoints


def config(h: Host, endpoints: str, mac: str, ip: str, netns: str, ttl: int) -> str:
    return (f'[switch]\nvtep_ip = "{h.ip}"\n\n[[network]]\nname = "blue"\nvni = {VNI}\n\n'
            f'[[port]]\nname = "c{h.i}"\nnetns = "{netns}"\nnetwork = "blue"\nmac = "{mac}"\nip = "{ip}"\n\n'
            f'[cluster]\netcd = {json.dumps(endpoints.split(","))}\nnode = "h{h.i}"\nlease_ttl_s = {ttl}\n')


def static_config(h: Host, hosts: list[Host], mac: str, ip: str, netns: str) -> str:
    """The host as it would be without a cluster: every other host a static peer, flood-and-learn."""
    peers = "".join(f'[[peer]]\nnetwork = "blue"\nremote = "{o.ip}"\n\n' for o in hosts if o is not h)
    return (f'[switch]\nvtep_ip = "{h.ip}"\n\n[[network]]\nname = "blue"\nvni = {VNI}\n\n'
            f'[[port]]\nname = "c{h.i}"\nnetns = "{netns}"\nnetwork = "blue"\nmac = "{mac}"\nip = "{ip}"\n\n{peers}')


def count_underlay(lab: Lab, underlay: Netns, name: str, owners: dict[str, str], traffic: Any) -> dict[str, int]:
    """What crosses the underlay while traffic() runs (underlay_count.py), with bum = all but known unicast."""
    proc = lab.spawn(name, underlay.cmd(str(VENV_PY), str(Path(__file__).resolve().parent / "underlay_count.py"),
                                        json.dumps(owners)))
    wait_for(f"{name} ready", lambda: "ready" in lab.log_tail(name), timeout=30)
    traffic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    counts = json.loads(lab.output(name))
    counts["bum"] = counts["arp"] + counts["group"] + counts["unknown_unicast"]
    return counts


def measure(n: int, ttl: int, pings: int) -> dict[str, Any]:
    result: dict[str, Any] = {"hosts": n, "lease_ttl_s": ttl}
    with Lab("cl") as lab:
        underlay = lab.netns("ul")
        underlay.ip("link", "add", "br0", "type", "bridge", "stp_state", "0")
        underlay.ip("addr", "add", f"{ETCD_IP}/24", "dev", "br0")
        underlay.ip("link", "set", "br0", "up")
        endpoints = start_etcd(lab, underlay)
        hosts = [Host(lab, underlay, i) for i in range(1, n + 1)]
        macs = {h.i: f"02:00:00:00:{h.i >> 8:02x}:{h.i & 0xFF:02x}" for h in hosts}
        ips = {h.i: f"10.40.{h.i >> 8}.{h.i & 0xFF}/16" for h in hosts}
        ctrs = {h.i: container(lab, f"c{h.i}") for h in hosts}
        for h in hosts:
            (h.dir / "vswitch.toml").write_text(config(h, endpoints, macs[h.i], ips[h.i], ctrs[h.i].name, ttl))

        # Join: every vswitchd at once.
        t0 = time.monotonic()
        for h in hosts:
            h.proc = lab.spawn(f"h{h.i}", h.ns.cmd(
                str(VENV_PY), "-m", "vswitch", "--config", str(h.dir / "vswitch.toml"), "--api-socket", str(h.sock),
                "--state-dir", str(h.dir / "state"), "--metrics", "127.0.0.1:0", "--log-level", "warning"))

        def api_up(h: Host) -> bool:
            if h.proc.poll() is not None:
                raise BenchError(f"h{h.i} exited: {lab.log_tail(f'h{h.i}')}")
            try:
                return h.client.request("GET", "/v1/health").get("status") == "ok"
            except ApiError:
                return False
        for h in hosts:
            try:
                wait_for(f"h{h.i} API", lambda h=h: api_up(h), timeout=120)
            except BenchError as e:
                raise BenchError(f"{e}: {lab.log_tail(f'h{h.i}')}") from None
        result["join_all_apis_s"] = round(time.monotonic() - t0, 3)

        def converged(h: Host) -> bool:
            return len(h.remote_macs()) == n - 1
        for h in hosts:
            wait_for(f"h{h.i} converged", lambda h=h: converged(h), timeout=120, interval=POLL_S)
        result["join_all_converged_s"] = round(time.monotonic() - t0, 3)
        rss = [rss_kib(h.proc.pid) for h in hosts]
        result["rss_kib"] = {"min": min(rss), "median": int(statistics.median(rss)), "max": max(rss)}

        pairs = [(a, b) for a in hosts for b in hosts if a is not b]
        sample = random.Random(1).sample(pairs, min(pings, len(pairs)))

        def ping(a: Host, b: Host) -> bool:
            out = run(ctrs[a.i].cmd("ping", "-c", "1", "-W", "2", "-q", ips[b.i].split("/")[0]), check=False, timeout=10)
            return " 1 received" in out
        ok = sum(1 for a, b in sample if ping(a, b))
        result["pings_ok"] = f"{ok}/{len(sample)}"

        # Move: c1's container re-created on h2.
        src, dst = hosts[0], hosts[1]
        moved = container(lab, "c1m")
        src.client.request("DELETE", "/v1/ports/c1")
        t0 = time.monotonic()
        dst.client.request("POST", "/v1/ports", {"name": "c1m", "network": "blue", "netns": moved.name,
                                                  "mac": macs[1], "ip": ips[1]})
        others = [h for h in hosts if h is not dst]
        for h in others:
            wait_for(f"h{h.i} re-pointed", lambda h=h: h.remote_macs().get(macs[1]) == dst.ip, timeout=30,
                     interval=POLL_S)
        result["move_converged_s"] = round(time.monotonic() - t0, 3)

        # Death: the last host's vswitchd killed.
        victim = hosts[-1]
        t0 = time.monotonic()
        victim.proc.kill()
        victim.proc.wait()
        for h in hosts[:-1]:
            wait_for(f"h{h.i} withdrew h{victim.i}", lambda h=h: macs[victim.i] not in h.remote_macs(),
                     timeout=ttl + 30, interval=POLL_S)
        result["death_converged_s"] = round(time.monotonic() - t0, 3)

        # Underlay BUM: one traffic, the cluster's way and flood-and-learn's way. The hosts
        # touched by the move and the death are left out, so both runs see the same containers.
        calm = hosts[2:-1]
        bum_pairs = random.Random(2).sample([(a, b) for a in calm for b in calm if a is not b],
                                            min(pings, len(calm) * (len(calm) - 1)))
        owners = {macs[h.i]: h.ip for h in calm}

        def traffic() -> None:
            for h in calm:
                ctrs[h.i].exec("ip", "neigh", "flush", "all")
            result.setdefault("bum_pings_ok", []).append(sum(1 for a, b in bum_pairs if ping(a, b)))
        def answered() -> int:
            return sum(int(h.client.request("GET", "/v1/stats")["ports"][f"c{h.i}"]["arp_suppressed"]) for h in calm)
        before = answered()
        cluster_bum = count_underlay(lab, underlay, "count-cluster", owners, traffic)
        cluster_bum["arp_answered_locally"] = answered() - before
        for h in hosts:
            if h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for h in hosts:
            h.proc.wait(60)
        for h in hosts:
            (h.dir / "static.toml").write_text(static_config(h, hosts, macs[h.i], ips[h.i], ctrs[h.i].name))
            h.proc = lab.spawn(f"h{h.i}-static", h.ns.cmd(
                str(VENV_PY), "-m", "vswitch", "--config", str(h.dir / "static.toml"), "--api-socket", str(h.sock),
                "--state-dir", str(h.dir / "state-static"), "--metrics", "127.0.0.1:0", "--log-level", "warning"))
        for h in hosts:
            wait_for(f"h{h.i} API (static peers)", lambda h=h: api_up(h), timeout=120)
        flood_bum = count_underlay(lab, underlay, "count-flood", owners, traffic)
        result["underlay_bum"] = {
            "pings": len(bum_pairs),
            "cluster": cluster_bum,
            "static_flood_and_learn": flood_bum,
            # 0 with the cluster: the ratio is at least what one frame would have made it.
            "ratio_at_least": round(flood_bum["bum"] / max(1, cluster_bum["bum"]), 1),
        }
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--ttl", type=int, default=5, help="lease_ttl_s of every node")
    p.add_argument("--pings", type=int, default=20, help="container pairs pinged after the join")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args()
    if not 2 <= args.hosts <= 250:
        p.error("--hosts must be in [2, 250]")
    interrupt_on_signals()
    result = measure(args.hosts, args.ttl, args.pings)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
