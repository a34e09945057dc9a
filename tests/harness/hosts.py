"""Multi-host topologies for VXLAN tests: each host is a namespace with its own vswitchd.

Layout (everything lives in namespaces made by netns_factory)::

    underlay ns:   br0 (192.0.2.254/24), a plain Linux bridge, MTU 1500
                    |-- u1 ==veth== ul0 in host ns h1 (192.0.2.1/24)
                    |-- u2 ==veth== ul0 in host ns h2 (192.0.2.2/24)
                    ...
    host ns hN:    ul0 + a vswitchd started inside it (`ip netns exec`), so its
                   VXLAN socket, routes and ARP are the host's own
    container ns:  eth0, a TAP created there by its host's vswitchd

Even two hosts meet on the bridge rather than on a bare veth pair: the
underlay namespace is where tests inject forged VXLAN packets from, and its
address (192.0.2.254) is a VTEP that no host has as a peer.
"""
from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from tests.harness.agent import Agent
from tests.harness.daemon import Vswitchd
from tests.harness.frames import has_token, marked_frame
from tests.harness.netns import Netns
from tests.harness.wait import wait_until

UNDERLAY_PREFIX = "192.0.2."  # TEST-NET-1: never routed anywhere
UNDERLAY_PREFIX_LEN = 24
UNDERLAY_MTU = 1500
UNDERLAY_IF = "ul0"
BRIDGE = "br0"
BRIDGE_IP = UNDERLAY_PREFIX + "254"
CONTAINER_IF = "eth0"
VXLAN_PORT = 4789
VXLAN_FLAG_I = 0x08
DAEMON_STOP_TIMEOUT = 10.0
PING_DEADLINE_S = 10


def toml_value(value: Any) -> str:
    """A TOML literal for a str, int or bool (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"value: {value!r} has no TOML form here")


def toml_table(header: str, items: dict[str, Any]) -> str:
    return header + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in items.items() if v is not None)


class HostVswitchd(Vswitchd):
    """A vswitchd running inside `netns`; its API socket and files stay on the shared filesystem."""

    def __init__(self, netns: Netns, tmp_path: Path, config: str, io_mode: str | None = None) -> None:
        super().__init__(tmp_path, config=config, io_mode=io_mode)
        self.netns = netns

    @property
    def argv(self) -> list[str]:
        # `ip netns exec` execs the command, so the PID we hold is the daemon's own.
        return ["ip", "netns", "exec", self.netns.name, *super().argv]


@dataclass
class Container:
    """A container namespace; its interface is a port of its host's vswitchd (or of another VTEP)."""

    name: str  # the port name on the host's vswitchd
    network: str
    ns: Netns
    mac: str
    ip: str  # with prefix length, e.g. 10.1.0.1/24
    host: Host
    ifname: str = CONTAINER_IF
    mtu: int | None = None  # the port's MTU; None: vswitchd's default for the network
    agent: Agent | None = None

    @property
    def addr(self) -> str:
        return self.ip.split("/")[0]

    def capture(self) -> None:
        """Start capturing on the interface (it must exist by now); idempotent."""
        if self.agent is None:
            self.agent = self.host.lab.agent_factory(self.ns)
            self.agent.sniff_start(self.ifname)

    def _agent(self) -> Agent:
        if self.agent is None:
            raise RuntimeError(f"container {self.name}: capture() was not called")
        return self.agent

    def frame(self, dst: str, token: str, **kw: Any) -> bytes:
        """A marked frame from this container's MAC (see frames.marked_frame)."""
        return marked_frame(kw.pop("src", self.mac), dst, token, **kw)

    def send(self, *frames: bytes) -> None:
        self._agent().send(self.ifname, list(frames))

    def wait(self, token: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        return self._agent().wait_frames(self.ifname, has_token(token), count=count, timeout=timeout)

    def seen(self, token: str) -> list[bytes]:
        return [f for f in self._agent().frames(self.ifname) if has_token(token)(f)]

    def ping(self, dst: str, count: int = 3, deadline: int = PING_DEADLINE_S) -> subprocess.CompletedProcess[str]:
        """`ping` from inside the container; exit status 0 means `count` replies within `deadline` s."""
        return self.ns.exec(
            "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(deadline), dst,
            check=False, timeout=deadline + 5,
        )

    def neighbor_mac(self, ip: str) -> str | None:
        """The MAC this container's ARP table holds for `ip`, if any."""
        out = self.ns.exec("ip", "-j", "neigh", "show", "to", ip, "dev", self.ifname).stdout
        entries = json.loads(out) if out.strip() else []
        return next((e["lladdr"] for e in entries if "lladdr" in e), None)

    def link(self) -> dict[str, Any] | None:
        return self.ns.link(self.ifname)

    def port_config(self) -> str:
        return toml_table("[[port]]", {
            "name": self.name, "netns": self.ns.name, "network": self.network,
            "ifname": self.ifname, "mac": self.mac, "ip": self.ip, "mtu": self.mtu,
        })


@dataclass
class Host:
    """A host namespace on the underlay: ul0 with 192.0.2.<index>, and optionally a vswitchd."""

    lab: Lab
    index: int
    ns: Netns
    containers: dict[str, Container] = field(default_factory=dict)
    daemon: HostVswitchd | None = None
    _underlay_agent: Agent | None = None

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def ip(self) -> str:
        return f"{UNDERLAY_PREFIX}{self.index}"

    @property
    def mac(self) -> str:
        link = self.ns.link(UNDERLAY_IF)
        assert link is not None, f"{self.name} has no {UNDERLAY_IF}"
        return link["address"]

    def add_container(
        self, name: str, network: str, ip: str, mac: str | None = None, ifname: str = CONTAINER_IF, mtu: int | None = None
    ) -> Container:
        """Make the container's namespace; its port goes into the config of start()."""
        mac = mac or self.lab.next_mac()
        container = Container(name, network, self.lab.netns_factory(), mac, ip, self, ifname, mtu)
        self.containers[name] = container
        return container

    def config(self, networks: dict[str, int | None], peers: Sequence[tuple[str, str]], switch: dict[str, Any]) -> str:
        parts = [toml_table("[switch]", {"vtep_ip": self.ip, **switch})]
        parts += [toml_table("[[network]]", {"name": n, "vni": vni}) for n, vni in networks.items()]
        parts += [c.port_config() for c in self.containers.values()]
        parts += [toml_table("[[peer]]", {"network": n, "remote": r}) for n, r in peers]
        return "\n".join(parts)

    def start(
        self,
        networks: dict[str, int | None],
        peers: Sequence[tuple[str, str]],
        switch: dict[str, Any] | None = None,
    ) -> HostVswitchd:
        """Start this host's vswitchd with these networks, its containers' ports, `peers`
        ((network, remote ip) pairs) and extra [switch] settings; capture in every container."""
        if self.daemon is not None:
            raise RuntimeError(f"{self.name} already has a vswitchd")
        workdir = self.lab.tmp_path / f"{self.name}-vswitchd"
        workdir.mkdir()
        config = self.config(networks, peers, switch or {})
        self.daemon = HostVswitchd(self.ns, workdir, config=config, io_mode=self.lab.io_mode)
        self.daemon.start()
        for c in self.containers.values():
            # A ready daemon has attached every TAP: the interface is up with carrier.
            assert c.ns.link_is_up(c.ifname), f"{c.name} on {self.name}: {c.ifname} is not up: {c.link()}"
            c.capture()
        return self.daemon

    def ctl(self, *args: str, check: bool = True) -> Any:
        if self.daemon is None:
            raise RuntimeError(f"{self.name} has no vswitchd")
        return self.daemon.ctl(*args, check=check)

    def vxlan_stats(self) -> dict[str, Any]:
        return self.ctl("stats")["vxlan"]

    def drops(self) -> dict[str, int]:
        return self.vxlan_stats()["drops"]

    def peer_stats(self, network: str, remote: str) -> dict[str, Any]:
        for p in self.vxlan_stats()["peers"]:
            if (p["network"], p["remote"]) == (network, remote):
                return p
        raise AssertionError(f"{self.name}: no stats for peer {remote} in network {network}")

    def fdb(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["network"], e["mac"]): e for e in self.ctl("fdb", "show")}

    def underlay(self) -> Agent:
        """An agent in the host namespace capturing what ul0 receives (started on first use)."""
        if self._underlay_agent is None:
            self._underlay_agent = self.lab.agent_factory(self.ns)
            self._underlay_agent.sniff_start(UNDERLAY_IF)
        return self._underlay_agent

    def received_vxlan(self, predicate: Callable[[bytes], bool] | None = None) -> list[Ether]:
        """Decoded VXLAN packets addressed to this host's IP among what ul0 captured so far."""
        return [p for p in (decode_vxlan(f, self.ip) for f in self.underlay().frames(UNDERLAY_IF)) if p is not None
                and (predicate is None or predicate(bytes(p[VXLAN].payload)))]

    def wait_vxlan(self, predicate: Callable[[bytes], bool], count: int = 1, timeout: float = 10.0) -> list[Ether]:
        """Like received_vxlan, waiting until `count` inner frames match `predicate`."""
        agent = self.underlay()
        agent.wait_frames(UNDERLAY_IF, lambda f: (p := decode_vxlan(f, self.ip)) is not None
                          and predicate(bytes(p[VXLAN].payload)), count=count, timeout=timeout)
        return self.received_vxlan(predicate)


def decode_vxlan(frame: bytes, dst_ip: str | None = None) -> Ether | None:
    """`frame` decoded by scapy if it is IPv4/UDP to port 4789 (and to `dst_ip` when given), else None.

    Only the destination is checked: a VTEP picks the source port per flow.
    """
    pkt = Ether(frame)
    if IP not in pkt or UDP not in pkt or pkt[UDP].dport != VXLAN_PORT:
        return None
    if dst_ip is not None and pkt[IP].dst != dst_ip:
        return None
    return pkt if VXLAN in pkt else None


class Lab:
    """The underlay bridge and the hosts on it; `close()` stops every vswitchd started here.

    Every vswitchd runs with `--io-mode io_mode` (None: the daemon's default).
    """

    def __init__(self, netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], tmp_path: Path,
                 io_mode: str | None = None) -> None:
        self.netns_factory = netns_factory
        self.agent_factory = agent_factory
        self.tmp_path = tmp_path
        self.io_mode = io_mode
        self.hosts: list[Host] = []
        self._macs = 0
        self._underlay_agent: Agent | None = None
        self.underlay_ns = netns_factory()
        u = self.underlay_ns
        # No STP: bridge ports forward as soon as they have carrier.
        u.exec("ip", "link", "add", BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
        u.exec("ip", "addr", "add", f"{BRIDGE_IP}/{UNDERLAY_PREFIX_LEN}", "dev", BRIDGE)
        u.exec("ip", "link", "set", BRIDGE, "up")

    def next_mac(self) -> str:
        self._macs += 1
        return f"02:00:00:00:{self._macs >> 8:02x}:{self._macs & 0xFF:02x}"

    def add_host(self) -> Host:
        """A new host namespace with ul0 = 192.0.2.<n>/24 on the underlay bridge."""
        index = len(self.hosts) + 1
        host = Host(self, index, self.netns_factory())
        u, side = self.underlay_ns, f"u{index}"
        u.exec("ip", "link", "add", side, "mtu", str(UNDERLAY_MTU), "type", "veth",
               "peer", "name", UNDERLAY_IF, "mtu", str(UNDERLAY_MTU), "netns", host.ns.name)
        u.exec("ip", "link", "set", side, "master", BRIDGE, "up")
        host.ns.exec("ip", "addr", "add", f"{host.ip}/{UNDERLAY_PREFIX_LEN}", "dev", UNDERLAY_IF)
        host.ns.exec("ip", "link", "set", UNDERLAY_IF, "up")
        wait_until(lambda: host.ns.link_is_up(UNDERLAY_IF) and u.link_is_up(side),
                   message=f"underlay link of {host.name} never came up")
        self.hosts.append(host)
        return host

    def add_hosts(self, n: int) -> list[Host]:
        return [self.add_host() for _ in range(n)]

    def start_mesh(self, networks: dict[str, int | None], switch: dict[str, Any] | None = None) -> None:
        """Start a vswitchd on every host, each a peer of every other in each network with a VNI."""
        for host in self.hosts:
            peers = [(n, other.ip) for n, vni in networks.items() if vni is not None
                     for other in self.hosts if other is not host]
            host.start(networks, peers, switch)

    def inject(self, frames: Sequence[bytes]) -> None:
        """Transmit raw frames on the underlay bridge, from the underlay namespace."""
        if self._underlay_agent is None:
            self._underlay_agent = self.agent_factory(self.underlay_ns)
        self._underlay_agent.send(BRIDGE, list(frames))

    def vxlan_frame(
        self,
        to: Host,
        vni: int,
        inner: bytes,
        src_ip: str = BRIDGE_IP,
        flags: int = VXLAN_FLAG_I,
        sport: int = 49152,
    ) -> bytes:
        """A VXLAN packet to `to`'s VTEP as the underlay bridge would send it (any source IP)."""
        # Raw, not Ether, after VXLAN: scapy would otherwise set the VXLAN-GPE bits.
        return self.udp_frame(to, bytes(VXLAN(flags=flags, vni=vni) / Raw(inner)), src_ip=src_ip, sport=sport)

    def udp_frame(self, to: Host, payload: bytes, src_ip: str = BRIDGE_IP, sport: int = 49152) -> bytes:
        """A UDP datagram to `to`'s VXLAN port with an arbitrary payload (e.g. a truncated header)."""
        bridge_mac = self.underlay_ns.link(BRIDGE)["address"]
        return bytes(
            Ether(src=bridge_mac, dst=to.mac)
            / IP(src=src_ip, dst=to.ip)
            / UDP(sport=sport, dport=VXLAN_PORT, chksum=0)
            / Raw(payload)
        )

    def close(self) -> None:
        """Stop every vswitchd (SIGTERM, then SIGKILL); raises after all if one ignored SIGTERM."""
        errors = []
        daemons = [(h, h.daemon) for h in reversed(self.hosts) if h.daemon is not None and h.daemon.proc is not None]
        # Signal all first: each takes a while to wind down its threads.
        for _host, daemon in daemons:
            if daemon.running():
                daemon.proc.send_signal(signal.SIGTERM)
        for host, daemon in daemons:
            try:
                daemon.proc.wait(DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                why = f"vswitchd ignored SIGTERM for {DAEMON_STOP_TIMEOUT:g} s"
                errors.append(f"{host.name}: {why}; stderr:\n{daemon.run_stderr}")
            finally:
                daemon.kill()
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture
def lab(netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent], tmp_path: Path,
        io_mode: str | None) -> Iterator[Lab]:
    """An underlay bridge to add hosts to; daemons run in the test's io_mode and stop before agents and namespaces go."""
    the_lab = Lab(netns_factory, agent_factory, tmp_path, io_mode)
    try:
        yield the_lab
    finally:
        the_lab.close()
