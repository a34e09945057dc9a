"""Many hosts on one overlay kept in a real 3-member etcd cluster on loopback.

Each host is a namespace with its own vswitchd joined to etcd with a short
lease; nothing is configured as a peer: peers and remote MACs come from etcd.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from tests.harness.daemon import Vswitchd
from tests.harness.etcd import EtcdCluster, etcd_missing
from tests.harness.hosts import BRIDGE_IP, Container, Host, HostVswitchd, Lab, lab, toml_table  # noqa: F401
from tests.harness.wait import wait_until
from tests.rawframes import arp, neighbour_solicitation

pytestmark = [pytest.mark.root]

TTL_S = 3
NETWORKS = {"blue": 100}


@pytest.fixture
def etcd(lab: Lab, tmp_path: Path) -> Iterator[EtcdCluster]:  # noqa: F811
    """Three members on the underlay bridge's address, in the underlay namespace."""
    why = etcd_missing()
    if why:
        pytest.skip(why)
    (tmp_path / "etcd").mkdir()
    cluster = EtcdCluster(tmp_path / "etcd", lab.underlay_ns, BRIDGE_IP)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def cluster_config(host: Host, etcd: EtcdCluster, networks: dict[str, int | None], ttl: int = TTL_S) -> str:
    parts = [toml_table("[switch]", {"vtep_ip": host.ip})]
    parts += [toml_table("[[network]]", {"name": n, "vni": vni}) for n, vni in networks.items()]
    parts += [c.port_config() for c in host.containers.values()]
    parts.append(f"[cluster]\netcd = {json.dumps(etcd.urls)}\nnode = \"{host.name}\"\nlease_ttl_s = {ttl}\n")
    return "\n".join(parts)


def start_node(host: Host, etcd: EtcdCluster, networks: dict[str, int | None] = NETWORKS) -> HostVswitchd:
    workdir = host.lab.tmp_path / f"{host.name}-vswitchd"
    workdir.mkdir(exist_ok=True)
    host.daemon = HostVswitchd(host.ns, workdir, config=cluster_config(host, etcd, networks))
    host.daemon.start()
    for c in host.containers.values():
        assert c.ns.link_is_up(c.ifname), f"{c.name}: {c.link()}"
    return host.daemon


def remote_macs(host: Host) -> dict[str, str | None]:
    """MAC -> peer of this host's static entries that point at a peer."""
    return {e["mac"]: e["peer"] for e in host.ctl("fdb", "show") if e["static"] and e["peer"]}


def expected_remote(host: Host, hosts: list[Host]) -> dict[str, str]:
    return {c.mac: other.ip for other in hosts if other is not host and other.daemon is not None
            and other.daemon.running() for c in other.containers.values()}


def wait_converged(hosts: list[Host], timeout: float = 10.0) -> None:
    for h in hosts:
        want = expected_remote(h, hosts)
        try:
            wait_until(lambda h=h, want=want: remote_macs(h) == want, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{h.name}: remote MACs {remote_macs(h)} != {want}; "
                                 f"vswitchd said:\n{h.daemon.run_stderr[-3000:]}") from None


def ping_ok(src: Container, dst: Container, count: int = 3) -> None:
    r = src.ping(dst.addr, count=count)
    assert r.returncode == 0, f"ping {src.name} -> {dst.name} failed:\n{r.stdout}{r.stderr}"


def metric(host: Host, name: str) -> float:
    # The exporter listens on the host namespace's loopback.
    url = f"http://127.0.0.1:{host.daemon.metrics_port}/metrics"
    text = host.ns.exec(sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())").stdout
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, f"{name} missing from the metrics"
    return float(m.group(1))


@pytest.fixture
def three(lab: Lab, etcd: EtcdCluster) -> list[Host]:  # noqa: F811
    hosts = lab.add_hosts(3)
    for i, h in enumerate(hosts, start=1):
        h.add_container(f"c{i}", "blue", f"10.1.0.{i}/24")
    for h in hosts:
        start_node(h, etcd)
    return hosts


def all_containers(hosts: list[Host]) -> list[Container]:
    return [c for h in hosts for c in h.containers.values()]


def test_fdb_filled_from_etcd_before_any_frame_then_all_to_all(three: list[Host]) -> None:
    wait_converged(three)
    for h in three:
        # Nothing was learned: no frame has crossed yet, every entry came from etcd.
        assert [e for e in h.ctl("fdb", "show") if not (e["static"] or e["pinned"])] == [], h.name
        peers = sorted(p["remote"] for p in h.ctl("peer", "list"))
        assert peers == sorted(o.ip for o in three if o is not h)
        doc = h.ctl("cluster")
        assert doc["etcd"]["reachable"] is True and doc["stale"] is False
        assert [(n["name"], n["vtep"], n["alive"]) for n in doc["nodes"]] == [(o.name, o.ip, True) for o in three]
        assert all(n["lease_ttl_s"] is not None and 0 < n["lease_ttl_s"] <= TTL_S for n in doc["nodes"])
        assert metric(h, "vswitch_cluster_nodes") == 3
        assert metric(h, "vswitch_cluster_remote_macs") == 2
        assert metric(h, "vswitch_cluster_etcd_up") == 1
    cs = all_containers(three)
    for a in cs:
        for b in cs:
            if a is not b:
                ping_ok(a, b, count=1)
    # The peers are derived state: the state file keeps none of them.
    saved = json.loads((three[0].daemon.state_dir / "state.json").read_text())
    assert saved.get("peers", []) == [] and [p["name"] for p in saved["ports"]] == ["c1"]


def test_dead_node_withdrawn_within_ttl_and_restart_converges(three: list[Host]) -> None:
    h1, h2, h3 = three
    wait_converged(three)
    h3.daemon.kill()  # SIGKILL: no goodbye, only the lease expiring tells
    t0 = time.monotonic()
    for h in (h1, h2):
        wait_until(lambda h=h: h3.containers["c3"].mac not in remote_macs(h) and
                   h3.ip not in [p["remote"] for p in h.ctl("peer", "list")],
                   timeout=TTL_S + 3, message=f"{h.name} still has h3's entries")
    withdrawn = time.monotonic() - t0
    assert withdrawn <= TTL_S + 1.5, f"withdrawn after {withdrawn:.1f} s, lease TTL {TTL_S} s"
    ping_ok(h1.containers["c1"], h2.containers["c2"])
    # Restarted, h3 rebuilds from etcd (not from flooding) and the others take it back.
    h3.daemon.start()
    wait_converged(three)
    assert [e for e in h3.ctl("fdb", "show") if not (e["static"] or e["pinned"])] == [], "h3 learned before its first frame"
    ping_ok(h3.containers["c3"], h1.containers["c1"])


def test_moved_container_is_repointed_within_a_second(three: list[Host], lab: Lab) -> None:  # noqa: F811
    h1, h2, h3 = three
    wait_converged(three)
    c1 = h1.containers["c1"]
    # The container moves to h2: a new namespace there with the same MAC and IP, its port on h2.
    moved = h2.add_container("c1m", "blue", c1.ip, mac=c1.mac)
    h1.ctl("port", "del", "c1")
    del h1.containers["c1"]
    t0 = time.monotonic()
    h2.ctl("port", "add", "c1m", "--network", "blue", "--netns", moved.ns.name, "--mac", moved.mac, "--ip", moved.ip)
    wait_until(lambda: remote_macs(h3).get(moved.mac) == h2.ip, timeout=5, interval=0.02,
               message=f"h3 never re-pointed {moved.mac} at h2: {remote_macs(h3)}")
    took = time.monotonic() - t0
    assert took < 1.0, f"re-pointed after {took:.2f} s"
    wait_until(lambda: remote_macs(h1).get(moved.mac) == h2.ip, timeout=2, message="h1 did not re-point")
    assert moved.mac not in remote_macs(h2), "h2 holds its own port's MAC as remote"
    ping_ok(h3.containers["c3"], moved)


def test_one_etcd_member_killed_changes_nothing(three: list[Host], etcd: EtcdCluster, lab: Lab) -> None:  # noqa: F811
    h1, h2, h3 = three
    wait_converged(three)
    leader = etcd.leader()
    etcd.kill_member(leader)
    ping_ok(h1.containers["c1"], h3.containers["c3"])
    # Convergence goes on through the other two members: a new container on h2 reaches all.
    c4 = h2.add_container("c4", "blue", "10.1.0.4/24")
    h2.ctl("port", "add", "c4", "--network", "blue", "--netns", c4.ns.name, "--mac", c4.mac, "--ip", c4.ip)
    wait_converged(three)
    ping_ok(h1.containers["c1"], c4)
    for h in three:
        assert h.ctl("cluster")["etcd"]["reachable"] is True


def test_etcd_gone_forwarding_goes_on_then_resync(three: list[Host], etcd: EtcdCluster) -> None:
    h1, h2, h3 = three
    wait_converged(three)
    before = {h.name: h.ctl("fdb", "show") for h in three}
    changes = {h.name: h.ctl("cluster")["counters"]["derived_changes"] for h in three}
    resyncs = metric(h1, "vswitch_cluster_resyncs_total")
    etcd.stop()
    for h in three:
        wait_until(lambda h=h: h.ctl("cluster")["etcd"]["reachable"] is False, timeout=TTL_S + 5,
                   message=f"{h.name} never noticed etcd is gone")
        assert metric(h, "vswitch_cluster_etcd_up") == 0
        assert remote_macs(h) == expected_remote(h, three), f"{h.name} dropped entries while etcd was away"
    assert "etcd UNREACHABLE" in h1.daemon.ctl_run("show", json_output=False).stdout
    assert "etcd unreachable" in h1.daemon.run_stderr
    ping_ok(h1.containers["c1"], h2.containers["c2"])
    ping_ok(h3.containers["c3"], h1.containers["c1"])
    logged = {h.name: len(h.daemon.run_stderr) for h in three}
    for m in etcd.members:
        etcd.start_member(m, wait=False)
    for m in etcd.members:
        etcd.wait_healthy(m)
    for h in three:
        wait_until(lambda h=h: h.ctl("cluster")["etcd"]["reachable"] is True, timeout=15,
                   message=f"{h.name} never saw etcd back")
    wait_until(lambda: metric(h1, "vswitch_cluster_resyncs_total") > resyncs, timeout=10,
               message="h1 did not resync")
    wait_converged(three)
    # Unchanged entries stayed where they were: same MACs, same peers (no flush and re-add).
    for h in three:
        assert {(e["mac"], e["peer"]) for e in h.ctl("fdb", "show") if e["static"]} == \
            {(e["mac"], e["peer"]) for e in before[h.name] if e["static"]}
        since = h.daemon.run_stderr[logged[h.name]:]
        assert "etcd reachable" in since
        assert h.ctl("cluster")["counters"]["derived_changes"] == changes[h.name], since
    ping_ok(h1.containers["c1"], h3.containers["c3"])


def test_vni_clash_is_refused_and_networks_are_cluster_wide(three: list[Host]) -> None:
    h1, h2, h3 = three
    r = h1.daemon.api("POST", "/v1/networks", {"name": "green", "vni": 300})
    assert r[0] == 201, r
    # The network exists on every node now.
    for h in (h2, h3):
        wait_until(lambda h=h: {"name": "green", "vni": 300} in
                   [{"name": n["name"], "vni": n["vni"]} for n in h.ctl("network", "list")],
                   timeout=5, message=f"{h.name} did not get network green")
    status, body = h2.daemon.api("POST", "/v1/networks", {"name": "red", "vni": 300})
    assert status == 409 and "VNI 300 is already used by network 'green'" in body["detail"], body
    status, body = h3.daemon.api("POST", "/v1/networks", {"name": "blue2", "vni": 100})
    assert status == 409 and "'blue'" in body["detail"], body
    assert "red" not in [n["name"] for n in h2.ctl("network", "list")]


def test_static_fdb_entry_to_a_peer(lab: Lab) -> None:  # noqa: F811
    """Without any cluster: an operator pins a MAC behind a peer and traffic goes there at once."""
    h1, h2 = lab.add_hosts(2)
    a = h1.add_container("a", "blue", "10.1.0.1/24")
    b = h2.add_container("b", "blue", "10.1.0.2/24")
    lab.start_mesh(NETWORKS)
    h1.ctl("fdb", "add", b.mac, "--network", "blue", "--peer", h2.ip)
    h2.ctl("fdb", "add", a.mac, "--network", "blue", "--peer", h1.ip)
    entry = next(e for e in h1.ctl("fdb", "show") if e["mac"] == b.mac)
    assert (entry["static"], entry["peer"], entry["port"]) == (True, h2.ip, None)
    ping_ok(a, b)
    r = h1.daemon.api("POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:99:99", "peer": "192.0.2.77"})
    assert r[0] == 404 and "not in network" in r[1]["detail"], r
    r = h1.daemon.api("POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:99:99", "peer": h2.ip, "port": "a"})
    assert r[0] == 400, r
    # Saved and restored across a restart, peer and all.
    h1.daemon.stop()
    h1.daemon.start()
    entry = next(e for e in h1.ctl("fdb", "show") if e["mac"] == b.mac)
    assert (entry["static"], entry["peer"]) == (True, h2.ip)
    # Removing the peer takes its static entries with it.
    h1.ctl("peer", "del", h2.ip, "--network", "blue")
    assert b.mac not in [e["mac"] for e in h1.ctl("fdb", "show")]


@pytest.mark.parametrize("bad", ["ftp://127.0.0.1:2379", "http://", "127.0.0.1:2379", "http://h:99999",
                                 "http://h:2379/v3", "http://a:1,http://a:1"])
def test_bad_etcd_urls_refused_at_start(tmp_path: Path, bad: str) -> None:
    d = Vswitchd(tmp_path, config='[switch]\nvtep_ip = "127.0.0.1"\n', extra_args=["--etcd", bad])
    d.start(wait=False)
    assert d.wait(30) == 1
    err = d.run_stderr
    assert "--etcd" in err and ("etcd client URL" in err or "listed twice" in err), err
    assert len([line for line in err.splitlines() if "ERROR" in line]) == 1, err
    assert not d.socket_path.exists()


def test_unreachable_etcd_at_start_is_a_degraded_start(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    (h1,) = lab.add_hosts(1)
    h1.add_container("c1", "blue", "10.1.0.1/24")
    dead = EtcdCluster(tmp_path / "nothing", lab.underlay_ns, BRIDGE_IP, size=1)  # a port nobody listens on
    start_node(h1, dead)
    doc = h1.ctl("cluster")
    assert doc["etcd"]["reachable"] is False and doc["stale"] is True and doc["etcd"]["last_error"]
    assert [p["name"] for p in h1.ctl("port", "list")] == ["c1"]
    assert "etcd unreachable" in h1.daemon.run_stderr
    r = h1.daemon.api("POST", "/v1/networks", {"name": "green", "vni": 300})
    assert r[0] == 409 and "etcd is unreachable" in r[1]["detail"], r


def test_lost_lease_is_replaced_and_everything_republished(three: list[Host], etcd: EtcdCluster) -> None:
    h1, h2, h3 = three
    wait_converged(three)
    lease = h1.ctl("cluster")["lease"]["id"]
    # As if etcd had let it expire: every key of h1 goes at once.
    r = etcd.ctl(etcd.endpoints, "lease", "revoke", lease)
    assert r.returncode == 0, r.stderr
    # A change at once: its put under the dead lease is refused, which also means a new lease.
    c5 = h1.add_container("c5", "blue", "10.1.0.5/24")
    h1.ctl("port", "add", "c5", "--network", "blue", "--netns", c5.ns.name, "--mac", c5.mac, "--ip", c5.ip)
    wait_until(lambda: h1.ctl("cluster")["lease"]["id"] not in (None, lease), timeout=TTL_S + 3,
               message="h1 never took a new lease")
    assert metric(h1, "vswitch_cluster_lease_grants_total") == 2
    wait_converged(three)
    ping_ok(h2.containers["c2"], h1.containers["c1"])


def test_a_switch_outside_any_cluster_says_so(vswitchd_factory: Any) -> None:
    d = vswitchd_factory("")
    status, body = d.api("GET", "/v1/cluster")
    assert status == 404 and "not a cluster node" in body["detail"], body
    assert "cluster" not in d.ctl("show")
    r = d.ctl_run("cluster", json_output=False)
    assert r.returncode == 1 and "--etcd" in r.stderr


def is_arp_request(frame: bytes, target: str | None = None) -> bool:
    """A broadcast ARP request (for target, when given)."""
    p = Ether(frame)
    return ARP in p and p[ARP].op == 1 and p.dst == "ff:ff:ff:ff:ff:ff" and target in (None, p[ARP].pdst)


def is_neighbour_solicitation(frame: bytes) -> bool:
    return len(frame) > 54 and frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[54] == 135


def port_counter(host: Host, port: str, name: str) -> int:
    return next(p for p in host.ctl("port", "list") if p["name"] == port)["counters"][name]


def test_arp_for_known_ips_answered_locally_never_crosses_the_underlay(three: list[Host]) -> None:
    wait_converged(three)
    for h in three:  # every node answers for its own port's IP and the two published by the others
        wait_until(lambda h=h: h.ctl("cluster")["derived"]["neighbours"] == 3, timeout=5,
                   message=f"{h.name}: neighbours {h.ctl('cluster')['derived']}")
        h.underlay()  # capture what ul0 receives from now on
    cs = all_containers(three)
    for a in cs:
        for b in cs:
            if a is not b:
                ping_ok(a, b, count=1)
                assert a.neighbor_mac(b.addr) == b.mac, f"{a.name} resolved {b.addr} wrongly"
    # The echo requests did cross the underlay (the capture is live); no ARP request did.
    for h in three:
        h.wait_vxlan(lambda f: Ether(f).haslayer("ICMP"), count=2)
        crossed = h.received_vxlan(lambda f: f[12:14] == b"\x08\x06")
        assert crossed == [], f"ARP crossed the underlay to {h.name}: {[p.summary() for p in crossed]}"
        assert metric(h, "vswitch_cluster_arp_answered_total") >= 2
        c = next(iter(h.containers.values()))
        assert port_counter(h, c.name, "arp_suppressed") >= 2
        assert port_counter(h, c.name, "flooded") == 0, "a frame from the port was flooded"
    # An address nobody published is still resolved by flooding: its request reaches every other host.
    h1, h2, h3 = three
    c1 = h1.containers["c1"]
    answered = port_counter(h1, "c1", "arp_suppressed")
    assert c1.ping("10.1.0.99", count=1, deadline=1).returncode != 0
    for h in (h2, h3):
        h.wait_vxlan(lambda f: is_arp_request(f, "10.1.0.99"))
    assert port_counter(h1, "c1", "arp_suppressed") == answered
    assert port_counter(h1, "c1", "flooded") >= 1
    # Trace says so, dry.
    trace = h1.ctl("trace", "--in-port", "c1", "--resolve", h3.containers["c3"].addr)
    assert trace["action"] == "answer" and trace["answer"] == {"kind": "arp", "mac": h3.containers["c3"].mac}, trace
    text = h1.daemon.ctl_run("trace", "--in-port", "c1", "--resolve", "10.1.0.99", json_output=False).stdout
    assert "verdict: flood" in text and "answered locally" not in text, text


def test_gratuitous_arp_and_unknown_senders_still_flood(three: list[Host]) -> None:
    wait_converged(three)
    h1, h2, h3 = three
    c1, c2 = h1.containers["c1"], h2.containers["c2"]
    wait_until(lambda: h1.ctl("cluster")["derived"]["neighbours"] == 3, timeout=5)
    c1.capture()
    h2.underlay()
    mac = bytes.fromhex(c1.mac.replace(":", ""))
    stranger = bytes.fromhex("02aa00000001")
    c1.send(arp(mac, c1.addr, c1.addr),                      # gratuitous
            arp(mac, "0.0.0.0", c2.addr),                    # a probe (RFC 5227)
            arp(stranger, "10.1.0.77", c2.addr),             # a sender nobody published
            arp(mac, "10.1.0.78", c2.addr))                  # a known MAC claiming another address
    h2.wait_vxlan(lambda f: Ether(f).haslayer(ARP), count=4)
    assert port_counter(h1, "c1", "arp_suppressed") == 0


def test_neighbour_solicitation_answered_locally(three: list[Host]) -> None:
    h1, h2, h3 = three
    wait_converged(three)
    v6 = {}
    for h, name, ip in ((h1, "v6a", "fd00:1::1/64"), (h2, "v6b", "fd00:1::2/64")):
        c = h.add_container(name, "blue", ip)
        c.ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0")
        h.ctl("port", "add", name, "--network", "blue", "--netns", c.ns.name, "--mac", c.mac, "--ip", ip)
        v6[name] = c
    a, b = v6["v6a"], v6["v6b"]
    wait_converged(three)
    # h1 answers for c1 and v6a (its own), c2, c3 and v6b (published by the others).
    wait_until(lambda: h1.ctl("cluster")["derived"]["neighbours"] == 5, timeout=5,
               message=f"h1: {h1.ctl('cluster')['derived']}")
    a.capture()
    for h in (h2, h3):
        h.underlay()
    ns = neighbour_solicitation(bytes.fromhex(a.mac.replace(":", "")), "fd00:1::1", "fd00:1::2")
    a.send(ns)
    got = a._agent().wait_frames(a.ifname, lambda f: ICMPv6ND_NA in Ether(f), timeout=10)
    na = Ether(got[0])
    assert (na.src, na.dst, na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].S) == (b.mac, a.mac, "fd00:1::2", 1), na.show(dump=True)
    assert port_counter(h1, "v6a", "nd_suppressed") == 1
    assert metric(h1, "vswitch_cluster_nd_answered_total") == 1
    # A solicitation for an address nobody published floods, and crosses to the other hosts.
    a.send(neighbour_solicitation(bytes.fromhex(a.mac.replace(":", "")), "fd00:1::1", "fd00:1::99"))
    for h in (h2, h3):
        h.wait_vxlan(is_neighbour_solicitation)
        found = h.received_vxlan(is_neighbour_solicitation)
        assert [bytes(p[VXLAN].payload)[62:78] for p in found] == \
            [bytes.fromhex("fd000001000000000000000000000099")], f"{h.name} got the answered solicitation too"
