"""Port limits through a real vswitchd: TAP ports in namespaces, scapy-built
frames, iperf3.

- MAC flood: a port with port security off floods thousands of random
  sources into a small table. Its neighbours' learned entries stay (eviction
  takes from the port holding the most), and a container added during the
  flood is known at once: frames to it are never flooded to the flooder.
- Storm control: a broadcast storm from one port reaches a neighbour within
  the configured rate over the measured window; each storm frame reaches
  the neighbour or is counted, by the switch or (while the switch pauses
  the port) by the sender's kernel; other ports' frames pass.
- Rate limit: iperf3 between namespaces, either way, stays under 1.1 x the
  configured rate, and the policer counts drops.

Absence is checked behind a fence (see test_policy.py): a later broadcast
from the same sender has arrived, so every earlier frame has as well.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from typing import Any, Callable

import pytest

from tests.harness.agent import Agent
from tests.harness.frames import marked_frame, new_token
from tests.harness.lan import IFNAME, Host, port_mac
from tests.harness.lan import Lan as LanBase
from tests.harness.lan import attached_host
from tests.harness.netns import Netns
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.root]

BROADCAST = "ff:ff:ff:ff:ff:ff"
BEHIND_P4 = ["02:00:00:00:0b:01", "02:00:00:00:0b:02"]  # hosts behind a nested bridge on p4
TABLE = 64


class Lan(LanBase):
    def __init__(self, daemon: Any, hosts: dict[str, Host], factories: tuple) -> None:
        super().__init__(daemon, hosts)
        self.factories = factories

    def add(self, port: str, *options: str) -> Host:
        netns_factory, agent_factory = self.factories
        ns = netns_factory()
        self.daemon.ctl("port", "add", port, "--network", "blue", "--netns", ns.name, "--mac", port_mac(port),
                        *options)
        agent = agent_factory(ns)
        agent.sniff_start(IFNAME)
        self.hosts[port] = Host(port, "blue", ns, agent)
        return self.hosts[port]

    def show(self, port: str) -> dict[str, Any]:
        return self.daemon.ctl("port", "show", port)


def make_lan(netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any,
             ports: dict[str, str]) -> Lan:
    """Ports pN in network blue, each with the extra config lines given; IPv4 10.9.0.N/24."""
    namespaces = {port: netns_factory() for port in ports}
    config = f'[switch]\nmac_table_size = {TABLE}\n[[network]]\nname = "blue"\n'
    for port, extra in ports.items():
        config += (f'[[port]]\nname = "{port}"\nnetns = "{namespaces[port].name}"\nnetwork = "blue"\n'
                   f'mac = "{port_mac(port)}"\nip = "10.9.0.{int(port[1:])}/24"\n{extra}')
    daemon = vswitchd_factory(config)
    hosts = {}
    for port, ns in namespaces.items():
        hosts[port] = attached_host(port, "blue", ns, agent_factory)
    return Lan(daemon, hosts, (netns_factory, agent_factory))


def random_macs(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [":".join(["02"] + [f"{rnd.randrange(256):02x}" for _ in range(5)]) for _ in range(n)]


def test_mac_flood_leaves_neighbours_and_a_port_added_meanwhile_is_known_at_once(
        netns_factory, agent_factory, vswitchd_factory) -> None:
    lan = make_lan(netns_factory, agent_factory, vswitchd_factory, {
        "p1": "", "p2": "",
        "p3": "port_security = false\nstorm_broadcast = 0\n",  # the flooder: a nested bridge gone bad
        "p4": "port_security = false\n",  # a well-behaved nested bridge with two hosts behind it
    })
    for m in BEHIND_P4:
        token = new_token("behind")
        lan["p4"].send(lan["p4"].frame(BROADCAST, token, src=m))
        assert lan["p1"].wait(token) != []
    flood_token = new_token("flood")
    sources, dests = random_macs(20000, 1), random_macs(20000, 2)
    flood = [marked_frame(s, d, flood_token) for s, d in zip(sources, dests)]
    stop, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    sent = [0]

    def flooding() -> None:
        # Random sources, round and round the list (far longer than the table) until told to stop or
        # for two minutes: the checks below run inside the flood.
        deadline = time.monotonic() + 120
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                i = sent[0] % len(flood)
                lan["p3"].send(*flood[i:i + 250])
                sent[0] += 250
        except BaseException as e:  # reported by the test thread
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=flooding, daemon=True)
    thread.start()
    try:
        # The table is full and the flooder churns its own entries: add a container now.
        wait_until(lambda: lan.daemon.ctl("stats")["fdb"]["evicted"] > 0, timeout=30, message="the table never filled")
        p5 = lan.add("p5")
        to_p5, from_p5 = new_token("to-p5"), new_token("from-p5")
        lan["p1"].send(lan["p1"].frame(p5.mac, to_p5))
        assert p5.wait(to_p5) != [], "a frame to the new port never arrived"
        p5.send(p5.frame(lan["p1"].mac, from_p5))
        assert lan["p1"].wait(from_p5) != []
        mid_flood = not done.is_set()
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors
    lan.fence(lan["p1"])
    lan.fence(p5)
    assert lan["p3"].seen(to_p5) == [] and lan["p3"].seen(from_p5) == [], "the new port's frames reached the flooder"
    fdb = {e["mac"]: e for e in lan.daemon.ctl("fdb", "show")}
    for m in BEHIND_P4:
        assert fdb.get(m, {}).get("port") == "p4", f"{m} behind p4 was evicted by the flood"
    assert fdb[port_mac("p5")]["port"] == "p5" and fdb[port_mac("p5")]["pinned"]
    fdb_stats = lan.daemon.ctl("stats")["fdb"]
    assert fdb_stats["entries"] == TABLE and fdb_stats["refused"] == 0
    # Every source the switch read beyond the table's room took one of the flooder's own places.
    assert fdb_stats["evicted"] >= lan.show("p3")["counters"]["rx_packets"] - TABLE
    assert lan.show("p3")["macs"] == TABLE - 5 - len(BEHIND_P4)  # all but the pinned and p4's
    assert mid_flood, f"the flood ({sent[0]} frames) ended before the new port was checked"
    print(f"p5 added and reached during the flood: {sent[0]} random sources, {fdb_stats['evicted']} evictions")


def test_max_macs_caps_a_port_at_run_time(netns_factory, agent_factory, vswitchd_factory) -> None:
    lan = make_lan(netns_factory, agent_factory, vswitchd_factory, {
        "p1": "", "p3": "port_security = false\nmax_macs = 5\n"})
    token = new_token("many")
    lan["p3"].send(*[marked_frame(s, BROADCAST, token) for s in random_macs(40, 3)])
    assert len(lan["p1"].wait(token, count=40)) == 40  # refused learning, still forwarded
    view = lan.show("p3")
    assert view["macs"] == 5 and view["counters"]["mac_limited"] == 35 and view["policy"]["max_macs"] == 5
    t = lan.daemon.ctl("trace", "--in-port", "p3", "--dst", BROADCAST, "--src", "02:00:00:00:0c:0c")
    assert (t["action"], t["learn"]["result"]) == ("flood", "not learned: port p3 holds its max_macs")
    # Raised at run time: learning goes on.
    lan.daemon.ctl("port", "set", "p3", "--max-macs", "0")
    lan["p3"].send(*[marked_frame(s, BROADCAST, token) for s in random_macs(10, 4)])
    wait_until(lambda: lan.show("p3")["macs"] == 15, message="learning did not resume")
    proc = lan.daemon.ctl_run("port", "set", "p3", "--max-macs", "-1")
    assert proc.returncode != 0 and "max_macs: -1 is out of range" in proc.stderr
    assert lan.show("p3")["policy"]["max_macs"] == 0


STORM_FPS = 300


def test_broadcast_storm_reaches_neighbours_within_the_limit(netns_factory, agent_factory, vswitchd_factory) -> None:
    lan = make_lan(netns_factory, agent_factory, vswitchd_factory, {
        "p1": f"storm_broadcast = {STORM_FPS}\n", "p2": "", "p3": ""})
    # The neighbours know each other: p2 -> p3 is known unicast, which storm control never touches.
    token = new_token("storm")
    storm = [lan["p1"].frame(BROADCAST, token) for _ in range(1000)]
    sent = 0
    kernel_dropped_before = tx_dropped(lan["p1"])
    t0 = time.monotonic()
    while sent == 0 or time.monotonic() - t0 < 1.5:  # long enough that the rate, not the burst, is what counts
        lan["p1"].send(*storm)
        sent += len(storm)
        other = new_token("neighbour")
        lan["p2"].send(lan["p2"].frame(lan["p3"].mac, other))
        assert lan["p3"].wait(other) != [], "a neighbour's frame was lost during the storm"
    # Known unicast, not storm-limited, after the storm. The switch pauses a storming port (fastpath/pause.pxi):
    # until the storm's frames have left the TAP's queue, the kernel drops the port's frames, the fence's too.
    fence = new_token("fence")
    deadline = time.monotonic() + 30
    lan["p1"].send(lan["p1"].frame(lan["p2"].mac, fence))
    while not lan["p2"].wait(fence, timeout=0.5):
        assert time.monotonic() < deadline, "the fence never arrived"
        lan["p1"].send(lan["p1"].frame(lan["p2"].mac, fence))
    window = time.monotonic() - t0
    got = len(lan["p2"].seen(token))
    drops = lan.show("p1")["counters"]["drops"]["storm_broadcast"]
    kernel_dropped = tx_dropped(lan["p1"]) - kernel_dropped_before
    # Every storm frame reached p2, or was counted by the switch, or by p1's kernel (whose count may also hold
    # a fence or another frame of p1's that met a full queue).
    assert got + drops <= sent <= got + drops + kernel_dropped, (
        f"{got} arrived + {drops} counted + {kernel_dropped} dropped by p1's kernel vs {sent} sent")
    # A bucket of STORM_FPS with a burst of a tenth of a second: never more than this in the window.
    bound = STORM_FPS * window + STORM_FPS // 10 + 1
    assert 0 < got <= bound, f"{got} storm frames reached p2 in {window:.2f} s (bound {bound:.0f})"
    assert drops > 0
    print(f"storm: {sent} sent in {window:.2f} s, {got} reached p2 (bound {bound:.0f}), {drops} dropped")


def tx_dropped(host: Host) -> int:
    """Frames the host's kernel dropped on the way out of its interface (a TAP's full queue)."""
    return int(host.ns.exec("cat", f"/sys/class/net/{IFNAME}/statistics/tx_dropped").stdout)


RATE_MBIT = 50


def iperf(lan: Lan, server: str, client: str, *args: str) -> float:
    """Run iperf3 between the two ports' namespaces; the receiver's bit/s."""
    port = str(5201 + random.randrange(1000))
    srv = subprocess.Popen(["ip", "netns", "exec", lan[server].ns.name, "iperf3", "-s", "-1", "-p", port],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: f":{port}" in lan[server].ns.exec("ss", "-Hltn").stdout, message="iperf3 never listened")
        ip = f"10.9.0.{int(server[1:])}"
        out = lan[client].ns.exec("iperf3", "-c", ip, "-p", port, "-t", "6", "-J", *args, timeout=60).stdout
        end = json.loads(out)["end"]
        return float((end.get("sum_received") or end["sum"])["bits_per_second"])
    finally:
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGTERM)
        srv.wait(timeout=10)


def test_rate_limit_holds_iperf3_under_the_rate_both_ways(netns_factory, agent_factory, vswitchd_factory) -> None:
    lan = make_lan(netns_factory, agent_factory, vswitchd_factory, {"p1": f"rate_mbit = {RATE_MBIT}\n", "p2": ""})
    limit = RATE_MBIT * 1e6
    sent = iperf(lan, "p2", "p1")  # p1 sends: its frames policed as the switch reads them
    received = iperf(lan, "p2", "p1", "-R")  # p1 receives: policed as the switch writes them
    udp = iperf(lan, "p2", "p1", "-u", "-b", f"{4 * RATE_MBIT}M")
    drops = lan.show("p1")["counters"]["drops"]
    print(f"rate limit {RATE_MBIT} Mbit/s: TCP from p1 {sent / 1e6:.1f}, to p1 {received / 1e6:.1f}, "
          f"UDP from p1 {udp / 1e6:.1f} Mbit/s; drops {drops['rate_limited_rx']} rx, {drops['rate_limited_tx']} tx")
    for what, bps in (("TCP from p1", sent), ("TCP to p1", received), ("UDP from p1", udp)):
        assert 0 < bps <= 1.1 * limit, f"{what}: {bps / 1e6:.1f} Mbit/s with a limit of {RATE_MBIT}"
    assert drops["rate_limited_rx"] > 0 and drops["rate_limited_tx"] > 0
    # port show: the limits, and the rates the control plane sampled while iperf3 ran (once a second).
    view = lan.show("p1")
    assert view["policy"]["rate_mbit"] == RATE_MBIT
    assert view["usage"]["peak_rx_bps"] > 0.5 * min(sent, udp) and view["usage"]["peak_tx_bps"] > 0.5 * received
    text = lan.daemon.ctl_run("port", "show", "p1", json_output=False).stdout
    assert re.search(rf"limit rate_mbit +{RATE_MBIT}\n", text) and "rx now / peak" in text and "drops rate_limited_rx" in text
    # The limits as gauges, beside the counters, for use against limit.
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{lan.daemon.metrics_port}/metrics", timeout=10).read().decode()
    assert 'vswitch_port_limit{kind="rate_bytes_per_second",network="blue",port="p1"} 6.25e+06' in metrics
    assert 'vswitch_port_limit{kind="storm_broadcast_fps",network="blue",port="p1"} 1000.0' in metrics
    assert 'kind="max_macs"' not in metrics  # no limit set, no gauge
