"""The topologies under test, each built inside a Lab and torn down with it.

Same host: two container namespaces c1 and c2 (eth0, 10.77.0.1 and .2/24)
joined by the switch under test. Two hosts: namespaces h1 and h2 joined by a
veth underlay (ul0, 192.0.2.1 and .2/24, MTU 1500), each with a container
behind it whose eth0 has MTU 1450 (1500 less VXLAN's 50 bytes); the switch on
each host carries the containers' frames as VXLAN, VNI 100, UDP 4789.
"""
from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from checkout import THIS, Checkout
from lab import BenchError, Lab, Netns, wait_for
from ovs import Ovs

from fastpath import uring_unavailable
from vswitch.client import ApiError, Client

NET = "10.77.0."
PREFIX = 24
MACS = {1: "02:00:00:77:00:01", 2: "02:00:00:77:00:02"}
UNDERLAY = "192.0.2."  # TEST-NET-1, only ever inside the lab's namespaces
UNDERLAY_MTU = 1500
VXLAN_MTU = UNDERLAY_MTU - 50
VNI = 100
VXLAN_PORT = 4789
START_TIMEOUT_S = 60.0
IO_MODE_NAMES = {"uring": "io_uring", "poll": "poll"}


@dataclass
class Topo:
    client: Netns
    server: Netns
    server_ip: str
    switch_pids: list[int] = field(default_factory=list)  # empty: the switch is the kernel
    api_socket: Path | None = None  # vswitchd's, for the API latency figures
    metrics_url: str | None = None  # vswitchd's /metrics, for the scrape cost figure
    notes: list[str] = field(default_factory=list)


def containers(lab: Lab) -> tuple[Netns, Netns]:
    return lab.netns("c1"), lab.netns("c2")


def address(ns: Netns, i: int, mtu: int) -> None:
    """Give a container's eth0 (already there) its MAC, MTU and address, and bring it up."""
    ns.ip("link", "set", "eth0", "address", MACS[i], "mtu", str(mtu))
    ns.ip("addr", "add", f"{NET}{i}/{PREFIX}", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")


def reachable(topo: Topo, timeout: float = 15.0) -> None:
    """Wait for the first reply across the switch (this also fills ARP caches and the FDB)."""
    def replied() -> bool:
        out = topo.client.exec("ping", "-n", "-c", "1", "-W", "1", topo.server_ip, check=False, timeout=5)
        return " 1 received" in out
    wait_for(f"ping {topo.server_ip} from {topo.client.name}", replied, timeout=timeout, interval=0.2)


# ---- vswitch -------------------------------------------------------------------------------

def toml(header: str, items: dict[str, object]) -> str:
    return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in items.items()) + "\n"


def port_toml(name: str, ns: Netns, i: int | None = None, ifname: str = "eth0",
              extra: dict[str, object] | None = None) -> str:
    items: dict[str, object] = {"name": name, "netns": ns.name, "network": "bench", "ifname": ifname}
    if i is not None:
        items |= {"mac": MACS[i], "ip": f"{NET}{i}/{PREFIX}"}
    return toml("[[port]]", items | (extra or {}))


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_io_mode() -> str:
    """The I/O mode vswitchd's default (io_mode auto) resolves to on this machine."""
    return "poll" if uring_unavailable() else "uring"


def start_vswitchd(lab: Lab, name: str, config: str, host: Netns | None = None,
                   io_mode: str | None = None, checkout: Checkout = THIS) -> tuple[subprocess.Popen, Path]:
    """vswitchd of `checkout` with this config (in `host`'s namespace if given) and, if given,
    --io-mode; returns once its API answers, which the daemon does only after every configured
    port is attached, and it has said it runs in that mode from that checkout's own build."""
    why = uring_unavailable() if io_mode == "uring" else None
    if why:
        raise BenchError(f"the io_uring datapath is unavailable here: {why}")
    d = lab.dir / name
    d.mkdir()
    (d / "vswitch.toml").write_text(config)
    sock = d / "api.sock"
    metrics = "127.0.0.1:0" if host else f"127.0.0.1:{free_tcp_port()}"
    (d / "metrics").write_text(metrics)
    argv = checkout.vswitchd("--config", str(d / "vswitch.toml"), "--api-socket", str(sock),
                             "--state-dir", str(d / "state"), "--metrics", metrics, "--log-level", "warning")
    if io_mode:
        argv += ["--io-mode", io_mode]
    proc = lab.spawn(name, host.cmd(*argv) if host else argv, env=checkout.env(), cwd=checkout.root)
    client = Client(sock, timeout=5.0)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited {proc.returncode}: {lab.log_tail(name)}")
        try:
            return (client.request("GET", "/v1/health") or {}).get("status") == "ok"
        except ApiError:
            return False
    wait_for(f"{name} API", healthy, timeout=START_TIMEOUT_S)
    running = client.request("GET", "/v1/stats")["io_mode"] if io_mode else None
    if running != io_mode:
        raise BenchError(f"{name} runs in I/O mode {running!r}, not the {io_mode!r} asked for")
    checkout.verify_process(proc.pid)
    return proc, sock


def vswitch_same_host(lab: Lab, io_mode: str | None = None, switch: dict[str, object] | None = None,
                      checkout: Checkout = THIS, ports: dict[str, object] | None = None) -> Topo:
    """`ports`: settings both ports get (port policy and limits)."""
    c1, c2 = containers(lab)
    config = (toml("[switch]", switch or {}) + toml("[[network]]", {"name": "bench"})
              + port_toml("c1", c1, 1, extra=ports) + port_toml("c2", c2, 2, extra=ports))
    proc, sock = start_vswitchd(lab, "vswitchd", config, io_mode=io_mode, checkout=checkout)
    for c in (c1, c2):
        c.ip("link", "set", "eth0", "up")
    metrics = (sock.parent / "metrics").read_text()
    return Topo(c1, c2, f"{NET}2", [proc.pid], api_socket=sock, metrics_url=f"http://{metrics}/metrics")


# ---- Open vSwitch, userspace datapath -----------------------------------------------------

def ovs_same_host(lab: Lab, tso: bool) -> Topo:
    c1, c2 = containers(lab)
    ovs = Ovs(lab, lab.netns("sw"), "ovs", tso)
    ovs.add_bridge("br0")
    for i, c in ((1, c1), (2, c2)):
        ovs.add_tap_into("br0", f"p{i}", c)
        address(c, i, 1500)
    return Topo(c1, c2, f"{NET}2", [ovs.pid])


# ---- Linux bridge + veth, as Docker does it -----------------------------------------------

def linux_bridge_same_host(lab: Lab) -> Topo:
    c1, c2 = containers(lab)
    sw = lab.netns("sw")
    sw.ip("link", "add", "br0", "type", "bridge")
    sw.ip("link", "set", "br0", "up")
    for i, c in ((1, c1), (2, c2)):
        sw.ip("link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", c.name)
        sw.ip("link", "set", f"v{i}", "master", "br0", "up")
        address(c, i, 1500)
    return Topo(c1, c2, f"{NET}2")


# ---- two hosts over VXLAN ---------------------------------------------------------------------

def underlay(lab: Lab) -> tuple[Netns, Netns]:
    h1, h2 = lab.netns("h1"), lab.netns("h2")
    h1.ip("link", "add", "ul0", "mtu", str(UNDERLAY_MTU), "type", "veth",
          "peer", "name", "ul0", "netns", h2.name, "mtu", str(UNDERLAY_MTU))
    for h in (h1, h2):
        h.ip("link", "set", "ul0", "up")
    return h1, h2


def vswitch_vxlan(lab: Lab, io_mode: str | None = None, checkout: Checkout = THIS,
                  switch: dict[str, object] | None = None) -> Topo:
    hosts = underlay(lab)
    cs = containers(lab)
    pids = []
    for i, (h, c) in enumerate(zip(hosts, cs), start=1):
        h.ip("addr", "add", f"{UNDERLAY}{i}/24", "dev", "ul0")
        config = (toml("[switch]", {"vtep_ip": f"{UNDERLAY}{i}", "underlay_mtu": UNDERLAY_MTU, **(switch or {})})
                  + toml("[[network]]", {"name": "bench", "vni": VNI}) + port_toml(f"c{i}", c, i)
                  + toml("[[peer]]", {"network": "bench", "remote": f"{UNDERLAY}{3 - i}"}))
        proc, _ = start_vswitchd(lab, f"vswitchd-h{i}", config, host=h, io_mode=io_mode, checkout=checkout)
        c.ip("link", "set", "eth0", "up")
        pids.append(proc.pid)
    return Topo(cs[0], cs[1], f"{NET}2", pids)


def kernel_vxlan(lab: Lab) -> Topo:
    hosts = underlay(lab)
    cs = containers(lab)
    for i, (h, c) in enumerate(zip(hosts, cs), start=1):
        h.ip("addr", "add", f"{UNDERLAY}{i}/24", "dev", "ul0")
        h.ip("link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local", f"{UNDERLAY}{i}",
             "remote", f"{UNDERLAY}{3 - i}", "dstport", str(VXLAN_PORT), "dev", "ul0")
        h.ip("link", "add", "br0", "type", "bridge")
        h.ip("link", "add", "v0", "mtu", str(VXLAN_MTU), "type", "veth", "peer", "name", "eth0", "netns", c.name)
        for dev in ("vx0", "v0"):
            h.ip("link", "set", dev, "master", "br0", "up")
        h.ip("link", "set", "br0", "up")
        address(c, i, VXLAN_MTU)
    return Topo(cs[0], cs[1], f"{NET}2")


def ovs_vxlan(lab: Lab, tso: bool) -> Topo:
    """Per host: br-phy holds the underlay port and, on its internal port, the VTEP address (so
    OVS's own routing and ARP resolve the remote VTEP); br-int holds the container's TAP and a
    vxlan port to the other host."""
    hosts = underlay(lab)
    cs = containers(lab)
    pids = []
    for i, (h, c) in enumerate(zip(hosts, cs), start=1):
        ovs = Ovs(lab, h, f"ovs-h{i}", tso)
        ovs.add_bridge("br-phy")
        ovs.vsctl("add-port", "br-phy", "ul0")
        h.ip("addr", "add", f"{UNDERLAY}{i}/24", "dev", "br-phy")
        h.ip("link", "set", "br-phy", "up")
        ovs.add_bridge("br-int")
        ovs.vsctl("add-port", "br-int", "vx0", "--", "set", "Interface", "vx0", "type=vxlan",
                  f"options:remote_ip={UNDERLAY}{3 - i}", f"options:key={VNI}")
        ovs.add_tap_into("br-int", "c", c)
        address(c, i, VXLAN_MTU)
        pids.append(ovs.pid)
    return Topo(cs[0], cs[1], f"{NET}2", pids)


@dataclass
class Setup:
    key: str
    label: str
    build: Callable[[Lab], Topo]
    io_mode: str | None = None  # vswitch's I/O mode; None for the other switches
    offloads: bool = True
    default: bool = False  # vswitch as it runs with no settings: io_mode auto, offloads on

    @property
    def is_vswitch(self) -> bool:
        return self.io_mode is not None


def same_host() -> list[Setup]:
    """vswitch in each I/O mode with offloads on (its default), then without offloads in poll mode
    (the mode every kernel has), then the other switches."""
    default = default_io_mode()

    def vswitch(mode: str, offloads: bool) -> Setup:
        switch = {} if offloads else {"offloads": False}
        return Setup(f"vswitch_{mode}" + ("" if offloads else "_offloads_off"),
                     f"vswitch, {IO_MODE_NAMES[mode]}, offloads {'on' if offloads else 'off'}"
                     + (" (default)" if offloads and mode == default else ""),
                     lambda lab: vswitch_same_host(lab, mode, switch), mode, offloads, offloads and mode == default)
    return [
        vswitch("uring", True), vswitch("poll", True), vswitch("poll", False),
        Setup("ovs", "OVS userspace, TSO off", lambda lab: ovs_same_host(lab, tso=False)),
        Setup("ovs_tso", "OVS userspace, TSO on", lambda lab: ovs_same_host(lab, tso=True)),
        Setup("linux_bridge", "Linux bridge + veth", linux_bridge_same_host),
    ]


# The cost of port policy: every rule off, against port security, storm control at its defaults
# and a rate limit no figure reaches (100 Gbit/s, 100 M frames/s) all on.
POLICY_OFF = {"port_security": False, "storm_broadcast": 0, "storm_multicast": 0}
POLICY_ON = {"storm_unknown_unicast": 1000, "rate_mbit": 100_000, "rate_fps": 100_000_000}


def policy() -> list[Setup]:
    """vswitch in its default I/O mode with every port rule off, then all on."""
    mode = default_io_mode()
    return [Setup(f"vswitch_policy_{name}", f"vswitch, {IO_MODE_NAMES[mode]}, policy {name}",
                  lambda lab, ports=ports: vswitch_same_host(lab, mode, ports=ports), mode)
            for name, ports in (("off", POLICY_OFF), ("on", POLICY_ON))]


def vxlan() -> list[Setup]:
    """vswitch in each I/O mode (offloads on, its default), then the other switches."""
    default = default_io_mode()

    def vswitch(mode: str) -> Setup:
        label = f"vswitch VXLAN, {IO_MODE_NAMES[mode]}" + (" (default)" if mode == default else "")
        return Setup(f"vswitch_{mode}", label, lambda lab: vswitch_vxlan(lab, mode), mode, default=mode == default)
    return [
        vswitch("uring"), vswitch("poll"),
        Setup("kernel_vxlan", "kernel vxlan + bridge", kernel_vxlan),
        Setup("ovs", "OVS userspace VXLAN, TSO off", lambda lab: ovs_vxlan(lab, tso=False)),
    ]
