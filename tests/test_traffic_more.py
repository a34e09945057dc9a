"""Single-host traffic through a real vswitchd, beyond plain switching: IP between
containers, MAC aging, bursts of bad frames, containers that vanish, restarts.

Absence checks use a fence, as in test_traffic: the daemon forwards one ingress
port's frames in order and a TAP write reaches the namespace's packet sockets
before it returns, so once a later broadcast from the same port has arrived
everywhere, every earlier frame of that port has been handled and counted.
(A tagged frame on an access port is covered by test_traffic's bad-frame test.)
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pytest
from scapy.layers.l2 import ARP, Ether

from tests.harness.agent import Agent
from tests.harness.frames import has_token, marked_frame, new_token
from tests.harness.netns import Netns
from tests.harness.tcp import tcp_transfer
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.io_modes]

IFNAME = "eth0"
BROADCAST = "ff:ff:ff:ff:ff:ff"
PORT_MTU = 1500
MAX_FRAME = PORT_MTU + 14  # the largest untagged frame the port admits, without FCS
PING_OK = ("-c", "3", "-W", "2")
WATCH_DEADLINE_S = 10.0  # the daemon checks for vanished namespaces every 0.5 s
RESTART_DEADLINE_S = 30.0


def port_mac(port: str) -> str:
    return f"02:00:00:00:01:{int(port[1:]):02x}"


@dataclass
class Container:
    """A port seen from inside its namespace; `agent` is set once it sniffs."""

    port: str
    network: str
    ns: Netns
    ip: str | None
    agent: Agent | None = None

    @property
    def mac(self) -> str:
        return port_mac(self.port)

    @property
    def addr(self) -> str:
        assert self.ip is not None, f"{self.port} has no IP"
        return self.ip.split("/")[0]

    def frame(self, dst: str, token: str, **kw: Any) -> bytes:
        return marked_frame(kw.pop("src", self.mac), dst, token, **kw)

    def send(self, *frames: bytes) -> None:
        assert self.agent is not None, f"{self.port} has no agent"
        self.agent.send(IFNAME, list(frames))

    def frames(self) -> list[bytes]:
        assert self.agent is not None, f"{self.port} has no agent"
        return self.agent.frames(IFNAME)

    def wait(self, predicate: Callable[[bytes], bool], count: int = 1, timeout: float = 10.0) -> list[bytes]:
        assert self.agent is not None, f"{self.port} has no agent"
        return self.agent.wait_frames(IFNAME, predicate, count=count, timeout=timeout)

    def ping(self, target: str, *opts: str) -> subprocess.CompletedProcess[str]:
        return self.ns.exec("ping", "-n", *opts, target, check=False)

    def link(self) -> dict[str, Any] | None:
        """`ip -j -s addr` data of the interface, or None when it does not exist."""
        proc = self.ns.exec("ip", "-j", "-s", "addr", "show", "dev", IFNAME, check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 and proc.stdout.strip() else None


@dataclass
class Site:
    """One vswitchd and the containers on its ports."""

    daemon: Any
    containers: dict[str, Container] = field(default_factory=dict)

    def __getitem__(self, port: str) -> Container:
        return self.containers[port]

    def get(self, path: str) -> Any:
        status, body = self.daemon.api("GET", path)
        assert status == 200, f"GET {path} answered {status}: {body}"
        return body

    def port_names(self) -> set[str]:
        return {p["name"] for p in self.get("/v1/ports")}

    def fdb(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["network"], e["mac"]): e for e in self.get("/v1/fdb")}

    def counters(self, port: str) -> dict[str, Any]:
        return self.get("/v1/stats")["ports"][port]

    def fence(self, sender: Container) -> None:
        """Broadcast from `sender`; wait until every sniffing port of its network has it."""
        token = new_token("fence")
        sender.send(sender.frame(BROADCAST, token))
        for c in self.containers.values():
            if c is not sender and c.network == sender.network and c.agent is not None:
                assert c.wait(has_token(token)) != [], f"fence from {sender.port} never reached {c.port}"


Topology = dict[str, tuple[str, str | None]]  # port -> (network, ip)


@pytest.fixture
def make_site(
    netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], vswitchd_factory: Any
) -> Callable[..., Site]:
    """`make_site(topology, switch="", sniff=(), mtus={})`: a started daemon with one namespace per port.

    `switch` is the body of the [switch] table; ports listed in `sniff` get an
    agent that captures from the start; `mtus` gives ports an MTU of their own.
    """

    def make(topology: Topology, switch: str = "", sniff: Iterable[str] = (), port_security: bool = True,
             mtus: dict[str, int] | None = None) -> Site:
        namespaces = {port: netns_factory() for port in topology}
        config = f"[switch]\n{switch}\n" if switch else ""
        config += "".join(f'[[network]]\nname = "{net}"\n' for net in sorted({n for n, _ in topology.values()}))
        for port, (net, ip) in topology.items():
            config += (
                f'[[port]]\nname = "{port}"\nnetns = "{namespaces[port].name}"\nnetwork = "{net}"\n'
                f'ifname = "{IFNAME}"\nmac = "{port_mac(port)}"\nport_security = {str(port_security).lower()}\n'
            )
            if ip is not None:
                config += f'ip = "{ip}"\n'
            if mtus and port in mtus:
                config += f"mtu = {mtus[port]}\n"
        site = Site(vswitchd_factory(config))
        for port, (net, ip) in topology.items():
            ns = namespaces[port]
            # A ready daemon has attached every TAP: up, with carrier.
            assert ns.link_is_up(IFNAME), f"{IFNAME} of {port} is not up: {ns.link(IFNAME)}"
            site.containers[port] = Container(port, net, ns, ip)
        for port in sniff:
            c = site[port]
            c.agent = agent_factory(c.ns)
            c.agent.sniff_start(IFNAME)
        return site

    return make


def is_arp_request_for(ip: str) -> Callable[[bytes], bool]:
    def match(frame: bytes) -> bool:
        pkt = Ether(frame)
        return ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == ip

    return match


def log_lines(daemon: Any, *words: str) -> list[str]:
    return [line for line in daemon.stderr_text.splitlines() if all(w in line for w in words)]


def test_containers_ping_each_other_but_not_across_networks(make_site: Callable[..., Site]) -> None:
    site = make_site(
        {"c1": ("blue", "10.20.0.1/24"), "c2": ("blue", "10.20.0.2/24"), "c3": ("red", "10.20.0.3/24")},
        sniff=("c1", "c2", "c3"),
    )
    c1, c2, c3 = site["c1"], site["c2"], site["c3"]

    ok = c1.ping(c2.addr, *PING_OK)

    assert ok.returncode == 0, f"ping {c2.addr} from c1 failed:\n{ok.stdout}{ok.stderr}"
    shown = {(e["network"], e["mac"]): (e["port"], e["static"]) for e in site.daemon.ctl("fdb", "show")}
    assert (shown.get(("blue", c1.mac)), shown.get(("blue", c2.mac))) == (("c1", False), ("c2", False)), shown

    # Same subnet, other network: c1's ARP request floods in blue and stops there.
    failed = c1.ping(c3.addr, "-c", "1", "-W", "1")

    assert failed.returncode == 1, f"ping {c3.addr} from c1 did not fail as unreachable:\n{failed.stdout}{failed.stderr}"
    assert c2.wait(is_arp_request_for(c3.addr)) != [], "c1 never asked for c3's address (the test proves nothing)"
    site.fence(c1)
    assert c3.frames() == [], "a frame crossed from blue into red"
    assert site.counters("c3")["tx_packets"] == 0
    assert not any(net == "red" and mac != c3.mac for net, mac in site.fdb())


def test_a_frame_over_the_output_port_mtu_is_dropped_there_and_tcp_still_flows(make_site: Callable[..., Site]) -> None:
    site = make_site(
        {"c1": ("blue", "10.21.0.1/24"), "c2": ("blue", "10.21.0.2/24"), "c3": ("blue", "10.21.0.3/24")},
        sniff=("c1", "c2", "c3"),
        mtus={"c1": 9000, "c2": 1500, "c3": 9000},
    )
    c1, c2, c3 = site["c1"], site["c2"], site["c3"]
    assert [c.link()["mtu"] for c in (c1, c2, c3)] == [9000, 1500, 9000]
    site.fence(c2)  # the switch learns c2's MAC: what follows is unicast to it
    frames = {name: c1.frame(c2.mac, new_token(name), size=14 + n) for name, n in (("jumbo", 4000), ("fits", 1400))}
    flooded = c1.frame(BROADCAST, new_token("jumbo-flood"), size=14 + 4000)

    c1.send(frames["jumbo"], frames["fits"], flooded)
    site.fence(c1)

    assert c2.frames().count(frames["fits"]) == 1
    assert [f for f in c2.frames() if f in (frames["jumbo"], flooded)] == []
    assert c3.frames().count(flooded) == 1, "the flood did not reach the port it fits"
    wait_until(lambda: site.counters("c2")["drops"]["mtu_exceeded"] == 2,
               message=f"c2 did not count the two frames over its MTU: {site.counters('c2')['drops']}")
    assert not any(site.counters("c1")["drops"].values())
    # TCP both ways: each end's MSS (MTU less 40) bounds what the other sends, TSO
    # super-frames included, so nothing exceeds c2's MTU. (No PMTU discovery is
    # involved: like a bridge, the switch sends no ICMP for a frame it drops.)
    tcp_transfer(c1.ns.name, c2.ns.name, c2.addr, 8 << 20)
    tcp_transfer(c2.ns.name, c1.ns.name, c1.addr, 8 << 20)
    assert site.counters("c2")["drops"]["mtu_exceeded"] == 2
    assert site.get("/v1/stats")["loop"]["offload"]["superframes_in"] > 0, "no TSO super-frame crossed the switch"


def test_learned_mac_ages_out_and_then_floods(make_site: Callable[..., Site]) -> None:
    site = make_site(
        {"c1": ("blue", None), "c2": ("blue", None), "c3": ("blue", None)},
        switch="mac_aging_s = 2",
        sniff=("c1", "c2", "c3"),
        port_security=False,
    )
    c1, c2, c3 = site["c1"], site["c2"], site["c3"]
    # A station behind c2 (port security off) speaks once, then stays silent; c2's own MAC is pinned.
    station, taught = "02:00:00:00:0a:0a", new_token("station")
    c2.send(c2.frame("ff:ff:ff:ff:ff:ff", taught, src=station))
    assert c1.wait(has_token(taught)) != []
    # Read through the API at once: a vswitchctl start-up could outlast the aging time.
    shown = {(e["network"], e["mac"]): e for e in site.get("/v1/fdb")}
    assert (shown[("blue", station)]["port"], shown[("blue", station)]["static"]) == ("c2", False)

    wait_until(
        lambda: ("blue", station) not in site.fdb() and site.get("/v1/stats")["fdb"]["aged"] >= 1,
        timeout=10.0,
        interval=0.1,
        message="the station's MAC never aged out of the FDB and the aged counter",
    )
    assert ("blue", station) not in {(e["network"], e["mac"]) for e in site.daemon.ctl("fdb", "show")}
    assert site.daemon.ctl("stats")["fdb"]["aged"] >= 1
    token = new_token("after-aging")
    sent = c1.frame(station, token)

    c1.send(sent)

    assert c2.wait(has_token(token)) == [sent]
    assert c3.wait(has_token(token)) == [sent], "the unicast to an aged-out MAC did not flood"
    # The loop counts a flood once its copies are out: it may trail the delivery a little.
    assert wait_until(lambda: site.counters("c1")["flooded"], message="c1's flood was never counted") == 1


def test_burst_of_bad_frames_does_not_disturb_the_other_ports(make_site: Callable[..., Site]) -> None:
    site = make_site(
        {"c1": ("blue", None), "c2": ("blue", None), "c3": ("blue", None)},
        sniff=("c1", "c2", "c3"),
    )
    c1, c2, c3 = site["c1"], site["c2"], site["c3"]
    # Only the namespace side grows: the switch's port MTU stays 1500.
    c1.ns.exec("ip", "link", "set", IFNAME, "mtu", "9000")
    site.fence(c2)
    site.fence(c3)
    rounds, bad_per_round, good_per_round = 15, 200, 25
    kinds = ("vlan_tagged", "src_multicast", "too_big")

    def bad(i: int) -> bytes:
        token = new_token("bad")
        kind = kinds[i % len(kinds)]
        if kind == "vlan_tagged":
            return c1.frame(BROADCAST, token, vlan=1 + i % 4094)
        if kind == "src_multicast":
            return c1.frame(BROADCAST, token, src=f"01:00:5e:00:{i >> 8 & 0xff:02x}:{i & 0xff:02x}")
        return c1.frame(BROADCAST, token, size=MAX_FRAME + 1 + (i * 37) % 7000)

    base = site.counters("c1")["rx_packets"]
    bad_sent: list[bytes] = []
    to_c3: list[bytes] = []
    to_c2: list[bytes] = []
    for r in range(rounds):
        chunk = [bad(r * bad_per_round + i) for i in range(bad_per_round)]
        ours = [c2.frame(c3.mac, new_token(f"c2c3-{r}-{i}")) for i in range(good_per_round)]
        theirs = [c3.frame(c2.mac, new_token(f"c3c2-{r}-{i}")) for i in range(good_per_round)]
        c1.send(*chunk)
        c2.send(*ours)
        c3.send(*theirs)
        bad_sent += chunk
        to_c3 += ours
        to_c2 += theirs
        # Pace c1 by what the switch has read, so the TAP's queue never overflows in the kernel.
        wait_until(
            lambda: site.counters("c1")["rx_packets"] >= base + len(bad_sent),
            message=f"the switch never read round {r} of c1's burst",
        )

    wanted_c3, wanted_c2 = set(to_c3), set(to_c2)
    assert c3.wait(lambda f: f in wanted_c3, count=len(to_c3)) == to_c3
    assert c2.wait(lambda f: f in wanted_c2, count=len(to_c2)) == to_c2
    site.fence(c1)
    bad_set = set(bad_sent)
    for c in (c1, c2, c3):
        assert [f for f in c.frames() if f in bad_set] == [], f"a bad frame reached {c.port}"
    sent_by_kind = {kind: len(bad_sent[i::len(kinds)]) for i, kind in enumerate(kinds)}
    link = c1.link()
    assert link is not None
    kernel_drops = link["stats64"]["tx"]["dropped"]
    # The fence's flood is counted after its copies went out.
    counters = wait_until(lambda: (c := site.counters("c1"))["flooded"] and c, message="c1's fence was never counted")
    drops = {reason: n for reason, n in counters["drops"].items() if n}
    assert drops == sent_by_kind, f"c1's TAP dropped {kernel_drops} frames in the kernel"
    assert (counters["rx_packets"] - base, counters["flooded"]) == (len(bad_sent) + 1, 1)
    for port in ("c2", "c3"):
        assert not any(site.counters(port)["drops"].values()), f"{port} counted drops"


def test_vanished_namespace_and_interface_remove_their_ports(make_site: Callable[..., Site]) -> None:
    site = make_site(
        {"c1": ("blue", None), "c2": ("blue", None), "c3": ("blue", None)},
        sniff=("c1", "c2"),
    )
    c1, c2, c3 = site["c1"], site["c2"], site["c3"]

    subprocess.run(["ip", "netns", "del", c3.ns.name], check=True, capture_output=True, timeout=30)

    wait_until(lambda: "c3" not in site.port_names(), timeout=WATCH_DEADLINE_S, message="port c3 outlived its namespace")
    assert {p["name"] for p in site.daemon.ctl("port", "list")} == {"c1", "c2"}
    assert log_lines(site.daemon, "c3", "removed", c3.ns.name), f"the daemon log does not mention c3:\n{site.daemon.stderr_text}"
    site.fence(c1)
    site.fence(c2)
    for sender, receiver in ((c1, c2), (c2, c1)):
        token = new_token(f"{sender.port}{receiver.port}")
        sent = sender.frame(receiver.mac, token)
        sender.send(sent)
        assert receiver.wait(has_token(token)) == [sent], f"{sender.port} -> {receiver.port} stopped after c3 left"

    assert c2.agent is not None
    c2.agent.sniff_stop(IFNAME)  # its capture socket is bound to the interface about to go
    c2.ns.exec("ip", "link", "del", IFNAME)

    wait_until(lambda: "c2" not in site.port_names(), timeout=WATCH_DEADLINE_S, message="port c2 outlived its interface")
    assert {p["name"] for p in site.daemon.ctl("port", "list")} == {"c1"}
    assert log_lines(site.daemon, "c2", "removed"), f"the daemon log does not mention c2:\n{site.daemon.stderr_text}"
    assert c2.ns.link(IFNAME) is None, "the daemon re-created the deleted interface"


def test_taps_survive_a_daemon_restart(make_site: Callable[..., Site], capsys: pytest.CaptureFixture[str]) -> None:
    site = make_site({"c1": ("blue", "10.20.0.1/24"), "c2": ("blue", "10.20.0.2/24")})
    c1, c2 = site["c1"], site["c2"]
    daemon = site.daemon
    ping = c1.ping(c2.addr, *PING_OK)
    assert ping.returncode == 0, f"ping before any restart failed:\n{ping.stdout}"
    before = {c.port: c.link() for c in (c1, c2)}

    for sig, status in ((signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)):
        name = signal.Signals(sig).name
        stopped_at = time.monotonic()

        assert daemon.stop(sig) == status, f"vswitchd exited {daemon.proc.returncode} on {name}:\n{daemon.run_stderr}"

        for c in (c1, c2):
            link = c.link()
            assert link is not None, f"{IFNAME} of {c.port} is gone after {name}"
            inet = {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"}
            assert (link["ifindex"], link["address"]) == (before[c.port]["ifindex"], c.mac), f"{c.port} after {name}"
            assert (c.addr, 24) in inet, f"{c.port} lost its address after {name}: {inet}"
        daemon.start()
        wait_until(
            lambda: c1.ping(c2.addr, "-c", "1", "-W", "1").returncode == 0,
            timeout=RESTART_DEADLINE_S,
            interval=0.0,
            message=f"c1 never reached c2 after the restart that followed {name}",
        )
        outage = time.monotonic() - stopped_at
        with capsys.disabled():
            print(f"\n[restart after {name}] outage from stop to first ping reply: {outage:.2f} s")
        ports = {p["name"]: p for p in daemon.ctl("port", "list")}
        assert set(ports) == {"c1", "c2"}
        assert all(p["state"] == "up" for p in ports.values()), ports
        # Re-attached, not re-created: the same interfaces carry on.
        for port in ("c1", "c2"):
            assert f"port {port} re-attached" in daemon.run_stderr, daemon.run_stderr
