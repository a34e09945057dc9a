"""The vswitch CNI plugin driven exactly as a runtime drives it: CNI_* variables and
the network config on stdin, a real vswitchd (in a namespace of its own, the
"host"), Debian's host-local for addresses and portmap chained after it."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness.cni import (PLUGIN, Attachment, error_problems, leases, result_problems, run_plugin,
                               version_problems)
from tests.harness.daemon import Vswitchd
from tests.harness.hosts import HostVswitchd
from tests.harness.netns import Netns, NetnsFactory
from tests.harness.wait import wait_until
from vswitch.model import attachment_port_name

pytestmark = pytest.mark.root

SUBNET = "10.88.5.0/24"
GATEWAY = "10.88.5.1"


class Rig:
    """vswitchd in namespace `host`, a host-local data dir, and network configs for them."""

    def __init__(self, host: Netns, daemon: Vswitchd, tmp_path: Path, netns_factory: NetnsFactory) -> None:
        self.host, self.daemon, self.tmp_path, self.netns_factory = host, daemon, tmp_path, netns_factory
        self.ipam_dir = tmp_path / "ipam"

    def conf(self, version: str = "1.1.0", name: str = "blue", **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version, "name": name, "type": "vswitch", "socket": str(self.daemon.socket_path),
            "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(self.ipam_dir)},
        }
        conf.update(extra)
        return conf

    def container(self) -> Attachment:
        ns = self.netns_factory()
        return Attachment(uuid.uuid4().hex + uuid.uuid4().hex, str(ns.path))

    def run(self, command: str, conf: Any, att: Attachment | None = None, **env: str) -> Any:
        return run_plugin(PLUGIN, command, conf, {**(att.env if att else {}), **env})

    def ports(self) -> list[dict[str, Any]]:
        return self.daemon.api("GET", "/v1/ports")[1]

    def networks(self) -> list[str]:
        return [n["name"] for n in self.daemon.api("GET", "/v1/networks")[1]]

    def leases(self, name: str = "blue") -> list[str]:
        return leases(self.ipam_dir, name)

    def nft_table(self) -> bool:
        proc = self.host.exec("nft", "list", "table", "ip", "vswitch", check=False)
        return proc.returncode == 0

    def outside(self) -> Netns:
        """A namespace beyond the host, on a veth from it: the host is 192.0.2.1, it 192.0.2.2,
        with no route back to the containers' subnet."""
        outside = self.netns_factory()
        veth_host, veth_out = f"vo{uuid.uuid4().hex[:8]}", f"vi{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "-n", self.host.name, "link", "add", veth_host, "type", "veth", "peer", "name", veth_out,
                        "netns", outside.name], check=True)
        self.host.exec("ip", "addr", "add", "192.0.2.1/24", "dev", veth_host)
        self.host.exec("ip", "link", "set", veth_host, "up")
        outside.exec("ip", "addr", "add", "192.0.2.2/24", "dev", veth_out)
        outside.exec("ip", "link", "set", veth_out, "up")
        return outside

    def assert_clean(self, name: str = "blue") -> None:
        """Nothing of the plugin's is left: no port, network, lease or masquerade table."""
        assert self.ports() == []
        assert self.networks() == []
        assert self.leases(name) == []
        assert not self.nft_table()


@pytest.fixture
def rig(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Rig]:
    host = netns_factory()
    daemon = HostVswitchd(host, tmp_path, config="")
    try:
        daemon.start()
        yield Rig(host, daemon, tmp_path, netns_factory)
    finally:
        if daemon.running():
            daemon.stop()
        daemon.kill()


def add_ok(rig: Rig, conf: dict[str, Any], att: Attachment) -> dict[str, Any]:
    inv = rig.run("ADD", conf, att)
    assert inv.status == 0, (inv.out, inv.stderr)
    assert result_problems(inv.out, conf["cniVersion"]) == []
    return inv.out


def ns_exec(att: Attachment, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={att.netns}", *cmd], capture_output=True, text=True, timeout=30, check=check)


def addresses(att: Attachment) -> list[str]:
    out = json.loads(ns_exec(att, "ip", "-j", "-4", "addr", "show", "dev", att.ifname).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link["addr_info"]]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_version(rig: Rig, version: str) -> None:
    inv = rig.run("VERSION", {"cniVersion": version})
    assert inv.status == 0 and version_problems(inv.out, version) == []
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(inv.out["supportedVersions"])


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del(rig: Rig, version: str) -> None:
    conf = rig.conf(version, mtu=1400, gateway=True, ipMasq=True)
    att = rig.container()
    result = add_ok(rig, conf, att)
    iface = result["interfaces"][0]
    assert (iface["name"], iface["sandbox"]) == ("eth0", att.netns)
    assert [ip["address"] for ip in result["ips"]] == ["10.88.5.2/24"]
    assert result["ips"][0]["gateway"] == GATEWAY
    assert {"dst": "0.0.0.0/0", "gw": GATEWAY} in result["routes"]

    # vswitchd's view: the port named after the attachment, labelled, and the gateway host port.
    name = attachment_port_name(att.container_id, "eth0")
    port = rig.daemon.api("GET", f"/v1/ports/{name}")[1]
    assert port["labels"] == {"cni.container-id": att.container_id, "cni.ifname": "eth0", "cni.network": "blue",
                              "cni.gateways": GATEWAY}
    assert (port["mac"], port["mtu"], port["ips"], port["state"]) == (iface["mac"], 1400, ["10.88.5.2/24"], "up")
    gw = rig.daemon.api("GET", "/v1/ports/gw-blue")[1]
    assert gw["host"] and gw["masquerade"] and gw["ips"] == [f"{GATEWAY}/24"]
    assert rig.nft_table()
    assert rig.leases() == ["10.88.5.2"]

    # The kernel's view inside the container, and the gateway answering.
    link = json.loads(ns_exec(att, "ip", "-j", "link", "show", "dev", "eth0").stdout)[0]
    assert (link["address"], link["mtu"]) == (iface["mac"], 1400)
    assert addresses(att) == ["10.88.5.2/24"]
    assert f"default via {GATEWAY}" in ns_exec(att, "ip", "route").stdout
    assert "1 received" in ns_exec(att, "ping", "-c", "1", "-W", "5", GATEWAY).stdout

    inv = rig.run("CHECK", {**conf, "prevResult": result}, att)
    assert (inv.status, inv.out) == (0, None), inv.out

    for _ in range(2):  # DEL twice: the second finds nothing and succeeds
        inv = rig.run("DEL", {**conf, "prevResult": result}, att)
        assert (inv.status, inv.out) == (0, None), inv.out
        rig.assert_clean()


def test_check_finds_drift(rig: Rig) -> None:
    conf = rig.conf()
    att = rig.container()
    result = add_ok(rig, conf, att)
    checked = {**conf, "prevResult": result}
    assert rig.run("CHECK", checked, att).status == 0
    ns_exec(att, "ip", "addr", "del", "10.88.5.2/24", "dev", "eth0")
    inv = rig.run("CHECK", checked, att)
    assert inv.status == 1 and error_problems(inv.out) == [] and inv.out["code"] == 101
    assert "10.88.5.2/24" in inv.out["msg"]
    other = {**result, "interfaces": [{**result["interfaces"][0], "mac": "02:00:00:00:00:99"}]}
    inv = rig.run("CHECK", {**conf, "prevResult": other}, att)
    assert inv.out["code"] == 101 and "02:00:00:00:00:99" in inv.out["msg"]
    assert rig.run("DEL", conf, att).status == 0
    inv = rig.run("CHECK", checked, att)
    assert inv.out["code"] == 101 and "no vswitch port" in inv.out["msg"]
    rig.assert_clean()


def test_repeated_add_is_one_port_and_one_lease(rig: Rig) -> None:
    conf = rig.conf(gateway=True)
    att = rig.container()
    first = add_ok(rig, conf, att)
    second = add_ok(rig, conf, att)
    assert second == first
    assert len([p for p in rig.ports() if not p["host"]]) == 1
    assert rig.leases() == ["10.88.5.2"]
    assert rig.run("DEL", conf, att).status == 0
    rig.assert_clean()


def test_del_after_netns_is_gone(rig: Rig) -> None:
    conf = rig.conf(gateway=True)
    att = rig.container()
    add_ok(rig, conf, att)
    subprocess.run(["ip", "netns", "del", Path(att.netns).name], check=True)
    rig.netns_factory.created = [ns for ns in rig.netns_factory.created if str(ns.path) != att.netns]
    inv = rig.run("DEL", conf, att)
    assert (inv.status, inv.out) == (0, None), inv.out
    rig.assert_clean()
    # As a runtime may do it too: no netns at all in the environment.
    inv = rig.run("DEL", conf, att, CNI_NETNS="")
    assert inv.status == 0


def test_two_containers_ping_each_other(rig: Rig) -> None:
    conf = rig.conf(gateway=True)
    a, b = rig.container(), rig.container()
    ra, rb = add_ok(rig, conf, a), add_ok(rig, conf, b)
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert ra["ips"][0]["address"] != rb["ips"][0]["address"]
    assert "3 received" in ns_exec(a, "ping", "-c", "3", "-i", "0.2", "-W", "5", ip_b).stdout
    # The network stays (with its gateway) while a container is left on it.
    assert rig.run("DEL", conf, a).status == 0
    assert rig.networks() == ["blue"] and {p["name"] for p in rig.ports()} == {
        "gw-blue", attachment_port_name(b.container_id, "eth0")}
    assert rig.run("DEL", conf, b).status == 0
    rig.assert_clean()


def test_status(rig: Rig) -> None:
    conf = rig.conf()
    inv = rig.run("STATUS", conf)
    assert (inv.status, inv.out) == (0, None), inv.out
    rig.daemon.stop()
    inv = rig.run("STATUS", conf)
    assert inv.status == 1 and error_problems(inv.out) == [] and inv.out["code"] == 50
    assert str(rig.daemon.socket_path) in inv.out["msg"]


def test_gc_removes_attachments_not_valid(rig: Rig) -> None:
    conf = rig.conf(gateway=True)
    keep, drop = rig.container(), rig.container()
    add_ok(rig, conf, keep)
    add_ok(rig, conf, drop)
    assert len(rig.leases()) == 2
    valid = [{"containerID": keep.container_id, "ifname": "eth0"}]
    inv = rig.run("GC", {**conf, "cni.dev/valid-attachments": valid})
    assert (inv.status, inv.out) == (0, None), inv.out
    assert {p["name"] for p in rig.ports()} == {"gw-blue", attachment_port_name(keep.container_id, "eth0")}
    assert rig.leases() == ["10.88.5.2"]
    inv = rig.run("GC", {**conf, "cni.dev/valid-attachments": []})
    assert inv.status == 0
    rig.assert_clean()


def test_masquerade_reaches_beyond_the_host(rig: Rig) -> None:
    """ipMasq: a container reaches an address the host reaches, which has no route back to the
    container's subnet; it sees the host's address as the source."""
    rig.outside()
    att = rig.container()
    conf = rig.conf(gateway=True, ipMasq=True)
    add_ok(rig, conf, att)
    assert "2 received" in ns_exec(att, "ping", "-c", "2", "-i", "0.2", "-W", "5", "192.0.2.2").stdout
    assert rig.run("DEL", conf, att).status == 0
    assert not rig.nft_table()
    # Without masquerade the reply has no way back.
    conf = rig.conf(gateway=True)
    add_ok(rig, conf, att := rig.container())
    assert "0 received" in ns_exec(att, "ping", "-c", "1", "-W", "1", "192.0.2.2", check=False).stdout
    assert rig.run("DEL", conf, att).status == 0


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("iptables") is None, reason="portmap needs iptables")
def test_portmap_chained(rig: Rig) -> None:
    """A conflist of vswitch then portmap, run as a runtime runs one: each plugin gets the
    previous one's result; a published port on the host reaches the container."""
    outside = rig.outside()
    host_port = _free_tcp_port()
    conflist = {"cniVersion": "1.0.0", "name": "blue", "plugins": [
        {"type": "vswitch", "socket": str(rig.daemon.socket_path), "gateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(rig.ipam_dir)}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}
    mappings = [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]
    att = rig.container()

    def conf_of(i: int, prev: Any) -> dict[str, Any]:
        conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][i]}
        if conf["type"] == "portmap":
            conf["runtimeConfig"] = {"portMappings": mappings}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    # The runtime runs its plugins in its own namespace: here, the host's (where vswitchd is),
    # so portmap's rules land there.
    def run_in_host(plugin_type: str, command: str, conf: dict[str, Any]) -> Any:
        plugin = PLUGIN if plugin_type == "vswitch" else f"/usr/lib/cni/{plugin_type}"
        return run_plugin(plugin, command, conf, att.env, netns=str(rig.host.path))

    prev = None
    for i, plugin in enumerate(conflist["plugins"]):
        inv = run_in_host(plugin["type"], "ADD", conf_of(i, prev))
        assert inv.status == 0, (plugin["type"], inv.out, inv.stderr)
        assert result_problems(inv.out, "1.0.0") == []
        prev = inv.out
    server = subprocess.Popen(["nsenter", f"--net={att.netns}", "python3", "-c",
                               "import socket;s=socket.create_server(('0.0.0.0',8080));c,_=s.accept();"
                               "c.sendall(b'hello from the container\\n');c.close()"])
    try:
        wait_until(lambda: ":8080" in ns_exec(att, "ss", "-ltn").stdout, message="listener in the container")
        out = outside.exec("python3", "-c", f"import socket;print(socket.create_connection(('192.0.2.1',{host_port}),"
                                            f"timeout=10).recv(100).decode().strip())").stdout
        assert out.strip() == "hello from the container"
        server.wait(10)
    finally:
        server.kill()
        server.wait()
    for i, plugin in reversed(list(enumerate(conflist["plugins"]))):
        inv = run_in_host(plugin["type"], "DEL", conf_of(i, prev))
        assert inv.status == 0, (plugin["type"], inv.out, inv.stderr)
    rig.assert_clean()
    assert str(host_port) not in rig.host.exec("iptables-save", "-t", "nat").stdout


BAD_INPUT = [
    # (id, change to the config or raw stdin, change to the environment, code, words the msg must hold)
    ("malformed-stdin", b'{"cniVersion": "1.1.0", "name": ', {}, 6, ["not valid JSON"]),
    ("empty-stdin", b"", {}, 6, ["no network config"]),
    ("stdin-not-object", b'["blue"]', {}, 6, ["not a JSON object"]),
    ("missing-name", {"name": None}, {}, 7, ["'name'"]),
    ("missing-version", {"cniVersion": None}, {}, 7, ["'cniVersion'"]),
    ("unknown-version", {"cniVersion": "9.9.9"}, {}, 1, ["9.9.9"]),
    ("unknown-ipam-type", {"ipam": {"type": "no-such-ipam", "subnet": SUBNET}}, {}, 7, ["no-such-ipam", "CNI_PATH"]),
    ("ipam-without-type", {"ipam": {"subnet": SUBNET}}, {}, 7, ["ipam.type"]),
    ("bad-vni", {"vni": "100"}, {}, 7, ["vni", "'100'"]),
    ("bad-network-name", {"network": "blue green"}, {}, 7, ["network", "blue green"]),
    ("masq-without-gateway", {"ipMasq": True, "gateway": False}, {}, 7, ["ipMasq", "gateway"]),
    ("missing-ifname", {}, {"CNI_IFNAME": ""}, 4, ["CNI_IFNAME"]),
    ("bad-ifname", {}, {"CNI_IFNAME": "eth0/x"}, 4, ["CNI_IFNAME", "eth0/x"]),
    ("no-such-netns", {}, {"CNI_NETNS": "/run/netns/vst-no-such-netns"}, 4, ["CNI_NETNS", "does not exist"]),
    ("vswitchd-not-running", {"socket": "/run/vst-no-vswitchd/vswitch.sock"}, {}, 11, ["not reachable"]),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_a_clear_error_and_leaves_nothing(rig: Rig, case: tuple[Any, ...]) -> None:
    _, change, env_change, code, words = case
    att = rig.container()
    if isinstance(change, bytes):
        conf: Any = change
    else:
        conf = {k: v for k, v in {**rig.conf(gateway=True), **change}.items() if v is not None}
    inv = rig.run("ADD", conf, att, **env_change)
    assert inv.status == 1 and error_problems(inv.out) == [], inv.out
    assert inv.out["code"] == code, inv.out
    for word in words:
        assert word in inv.out["msg"] + inv.out.get("details", ""), inv.out
    rig.assert_clean()
    assert not (Path(att.netns).exists() and "eth0" in ns_exec(att, "ip", "link").stdout)


def test_refused_port_releases_the_lease(rig: Rig) -> None:
    """vswitchd refuses the port (the namespace already has a non-TAP eth0): the lease, the
    gateway and the network made for it are all taken back."""
    att = rig.container()
    ns_exec(att, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    inv = rig.run("ADD", rig.conf(gateway=True, ipMasq=True), att)
    assert inv.status == 1 and error_problems(inv.out) == [] and inv.out["code"] == 100, inv.out
    assert "eth0" in inv.out["msg"] and "veth" in inv.out["msg"]
    rig.assert_clean()


def test_del_with_vswitchd_down_releases_the_lease(rig: Rig) -> None:
    conf = rig.conf()
    att = rig.container()
    add_ok(rig, conf, att)
    rig.daemon.stop()
    inv = rig.run("DEL", conf, att)
    assert inv.status == 1 and inv.out["code"] == 11 and "not reachable" in inv.out["msg"]
    assert rig.leases() == []
    rig.daemon.start()  # the port comes back from the state file: a retried DEL removes it
    assert rig.run("DEL", conf, att).status == 0
    rig.assert_clean()


def test_vni_is_given_to_the_network_and_must_match(rig: Rig) -> None:
    conf = rig.conf(vni=4242, network="vx")
    att = rig.container()
    add_ok(rig, conf, att)
    assert rig.daemon.api("GET", "/v1/networks/vx")[1]["vni"] == 4242
    other = rig.container()
    inv = rig.run("ADD", {**conf, "vni": 4243}, other)
    assert inv.status == 1 and inv.out["code"] == 7 and "4243" in inv.out["msg"] and "4242" in inv.out["msg"]
    assert rig.leases() == ["10.88.5.2"]  # the refused ADD's lease went back
    assert rig.run("DEL", conf, att).status == 0
    rig.assert_clean()


def test_concurrent_attachments_share_one_gateway(rig: Rig) -> None:
    """Runtimes run plugins for different containers at once: the network and its gateway
    are made once, every container gets its own address, and the last DEL cleans up."""
    from concurrent.futures import ThreadPoolExecutor

    conf = rig.conf(gateway=True, ipMasq=True)
    atts = [rig.container() for _ in range(6)]
    with ThreadPoolExecutor(len(atts)) as pool:
        results = list(pool.map(lambda a: rig.run("ADD", conf, a), atts))
    assert all(r.status == 0 for r in results), [r.out for r in results]
    addresses = {r.out["ips"][0]["address"] for r in results}
    assert len(addresses) == len(atts)
    ports = rig.ports()
    assert [p["name"] for p in ports if p["host"]] == ["gw-blue"] and len(ports) == len(atts) + 1
    with ThreadPoolExecutor(len(atts)) as pool:
        dels = list(pool.map(lambda a: rig.run("DEL", conf, a), atts))
    assert all(r.status == 0 for r in dels), [r.out for r in dels]
    rig.assert_clean()
