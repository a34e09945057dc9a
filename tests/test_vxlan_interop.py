"""VXLAN interoperability: vswitchd against the Linux kernel's VTEP and Open vSwitch's.

Host h1 runs vswitchd; host h2 is a different VTEP implementation with one
container behind it, on the same VNI. The kernel VTEP floods to vswitchd with
an all-zero FDB entry (head-end replication) and sends each flow from its own
UDP source port, so nothing here depends on the source port.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.frames import new_token
from tests.harness.hosts import UNDERLAY_IF, UNDERLAY_PREFIX_LEN, VXLAN_PORT, Container, Host, Lab, lab  # noqa: F401
from tests.harness.wait import wait_until

pytestmark = pytest.mark.root

NETWORK, VNI = "blue", 100
OVERLAY_MTU = 1450  # 1500 less the 50 bytes of VXLAN encapsulation
BROADCAST = "ff:ff:ff:ff:ff:ff"
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
OVS_START_DEADLINE_S = 30.0
OVS_STOP_TIMEOUT_S = 10.0


def configure_container(c: Container) -> None:
    """MAC, MTU and address on an interface that something other than vswitchd put into `c`."""
    c.ns.exec("ip", "link", "set", c.ifname, "address", c.mac, "mtu", str(OVERLAY_MTU))
    c.ns.exec("ip", "addr", "add", c.ip, "dev", c.ifname)
    c.ns.exec("ip", "link", "set", c.ifname, "up")


def kernel_vtep(host: Host, vni: int, remotes: list[str]) -> None:
    """Make `host` a Linux VTEP: vx0 + bridge kbr0, every container of `host` on a veth into kbr0."""
    ns = host.ns
    ns.exec("ip", "link", "add", "vx0", "type", "vxlan", "id", str(vni), "dstport", str(VXLAN_PORT),
            "local", host.ip, "dev", UNDERLAY_IF, "nolearning")
    for remote in remotes:
        ns.exec("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", remote)
    ns.exec("ip", "link", "add", "kbr0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
    ns.exec("ip", "link", "set", "vx0", "master", "kbr0", "up")
    for i, c in enumerate(host.containers.values()):
        side = f"kv{i}"
        ns.exec("ip", "link", "add", side, "mtu", str(OVERLAY_MTU), "type", "veth", "peer", "name", c.ifname, "netns", c.ns.name)
        ns.exec("ip", "link", "set", side, "master", "kbr0", "up")
        configure_container(c)
    ns.exec("ip", "link", "set", "kbr0", "up")
    for c in host.containers.values():
        wait_until(lambda c=c: c.ns.link_is_up(c.ifname), message=f"{c.name}: {c.ifname} never came up")
        c.capture()


class OvsVtep:
    """ovsdb-server + ovs-vswitchd (userspace datapath) run by hand inside a host namespace.

    Everything (db, sockets, pid files, logs) stays under `workdir`. Userspace
    tunnels leave through the OVS bridge that holds the underlay address, so
    ul0 becomes a port of br-phy and the host's IP moves to br-phy.
    """

    def __init__(self, host: Host, workdir: Path) -> None:
        self.host = host
        self.dir = workdir
        self.dir.mkdir()
        self.db_sock = self.dir / "db.sock"
        self.env = dict(os.environ, OVS_RUNDIR=str(self.dir), OVS_DBDIR=str(self.dir), OVS_LOGDIR=str(self.dir),
                        OVS_SYSCONFDIR=str(self.dir))
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.dir / f"{name}.stderr", "wb") as err:
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns.name, name, *args,
                 f"--pidfile={self.dir / name}.pid", f"--unixctl={self.dir / name}.ctl",
                 f"--log-file={self.dir / name}.log"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=self.env,
            ))

    def _alive(self) -> bool:
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            logs = "\n".join((self.dir / f"{n}.stderr").read_text(errors="replace") for n in ("ovsdb-server", "ovs-vswitchd")
                             if (self.dir / f"{n}.stderr").exists())
            raise RuntimeError(f"OVS process {dead[0].args[4]} exited with status {dead[0].returncode}:\n{logs}")
        return True

    def vsctl(self, *args: str) -> str:
        proc = subprocess.run(["ovs-vsctl", f"--db=unix:{self.db_sock}", f"--timeout={int(OVS_START_DEADLINE_S)}", *args],
                              capture_output=True, text=True, env=self.env, timeout=OVS_START_DEADLINE_S + 5)
        if proc.returncode != 0:
            self._alive()
            raise RuntimeError(f"ovs-vsctl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, vni: int, remote: str, container: Container) -> None:
        db = self.dir / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(db), str(OVS_SCHEMA)], check=True, capture_output=True, env=self.env)
        self._spawn("ovsdb-server", str(db), f"--remote=punix:{self.db_sock}")
        wait_until(lambda: self._alive() and self.db_sock.exists(), timeout=OVS_START_DEADLINE_S,
                   message="ovsdb-server never opened its socket")
        self.vsctl("--no-wait", "init")
        self._spawn("ovs-vswitchd", f"unix:{self.db_sock}")
        ns, mac = self.host.ns, self.host.mac
        # Without --no-wait each change returns once ovs-vswitchd has applied it.
        self.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev", f"other_config:hwaddr={mac}")
        self.vsctl("add-port", "br-phy", UNDERLAY_IF)
        ns.exec("ip", "addr", "flush", "dev", UNDERLAY_IF)
        ns.exec("ip", "addr", "add", f"{self.host.ip}/{UNDERLAY_PREFIX_LEN}", "dev", "br-phy")
        ns.exec("ip", "link", "set", "br-phy", "up")
        self.vsctl("add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev")
        self.vsctl("add-port", "br-int", "vx0", "--", "set", "interface", "vx0", "type=vxlan",
                   f"options:remote_ip={remote}", f"options:key={vni}", f"options:dst_port={VXLAN_PORT}")
        # The tap is made in the host namespace under the container's interface
        # name, then moved; OVS keeps its fd, which works from anywhere.
        self.vsctl("add-port", "br-int", container.ifname, "--", "set", "interface", container.ifname, "type=tap")
        ns.exec("ip", "link", "set", container.ifname, "netns", container.ns.name)
        configure_container(container)
        wait_until(lambda: container.ns.link_is_up(container.ifname), message=f"{container.name}: OVS tap never came up")
        container.capture()

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(OVS_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def vswitchd_host(lab: Lab, remote: str) -> tuple[Host, Container]:  # noqa: F811
    """h1: vswitchd with container c1 (10.1.0.1) in `blue`, peering with `remote`."""
    host = lab.hosts[0]
    c1 = host.add_container("c1", NETWORK, "10.1.0.1/24")
    host.start({NETWORK: VNI}, [(NETWORK, remote)])
    return host, c1


def check_ping_both_ways(a: Container, b: Container) -> None:
    for src, dst in ((a, b), (b, a)):
        result = src.ping(dst.addr)
        assert result.returncode == 0, f"{src.name} -> {dst.name} ({dst.addr}): {result.stdout}{result.stderr}"
    assert a.neighbor_mac(b.addr) == b.mac
    assert b.neighbor_mac(a.addr) == a.mac


def check_broadcast_both_ways(a: Container, b: Container) -> None:
    for src, dst in ((a, b), (b, a)):
        token = new_token("bcast")
        sent = src.frame(BROADCAST, token, size=400)
        src.send(sent)
        assert dst.wait(token) == [sent], f"broadcast from {src.name} did not reach {dst.name} intact"


@pytest.fixture
def kernel_peer(lab: Lab) -> tuple[Host, Container, Container]:  # noqa: F811
    """(vswitchd host, its container, the kernel VTEP host's container)."""
    h1, h2 = lab.add_hosts(2)
    k2 = h2.add_container("k2", NETWORK, "10.1.0.2/24")
    kernel_vtep(h2, VNI, [h1.ip])
    host, c1 = vswitchd_host(lab, h2.ip)
    return host, c1, k2


def test_kernel_vtep_and_vswitchd_ping_both_ways(kernel_peer: tuple[Host, Container, Container]) -> None:
    host, c1, k2 = kernel_peer
    check_ping_both_ways(c1, k2)
    entry = host.fdb()[(NETWORK, k2.mac)]
    assert (entry["peer"], entry["port"]) == (k2.host.ip, None)


def test_kernel_vtep_and_vswitchd_broadcast_both_ways(kernel_peer: tuple[Host, Container, Container]) -> None:
    _host, c1, k2 = kernel_peer
    check_broadcast_both_ways(c1, k2)


@pytest.fixture
def ovs_peer(lab: Lab, tmp_path: Path) -> Iterator[tuple[Host, Container, Container]]:  # noqa: F811
    """(vswitchd host, its container, the Open vSwitch host's container)."""
    missing = [tool for tool in ("ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl") if shutil.which(tool) is None]
    if missing or not OVS_SCHEMA.exists():
        pytest.skip(f"Open vSwitch is not installed ({', '.join(missing) or OVS_SCHEMA} missing; "
                    "the openvswitch-switch package provides it)")
    h1, h2 = lab.add_hosts(2)
    o2 = h2.add_container("o2", NETWORK, "10.1.0.2/24")
    ovs = OvsVtep(h2, tmp_path / "ovs")
    try:
        ovs.start(VNI, h1.ip, o2)
        host, c1 = vswitchd_host(lab, h2.ip)
        yield host, c1, o2
    finally:
        ovs.close()


def test_open_vswitch_and_vswitchd_ping_both_ways(ovs_peer: tuple[Host, Container, Container]) -> None:
    _host, c1, o2 = ovs_peer
    check_ping_both_ways(c1, o2)


def test_open_vswitch_and_vswitchd_broadcast_both_ways(ovs_peer: tuple[Host, Container, Container]) -> None:
    _host, c1, o2 = ovs_peer
    check_broadcast_both_ways(c1, o2)

