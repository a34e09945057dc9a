"""Observability of a real vswitchd: Prometheus scraping it, the Grafana
dashboard's queries, pcap captures through the API and vswitchctl, trace
checked against what the switch really does, and the bound on event logging.

Topology: network blue (VNI 100) with ports c1-c3 and a tunnel peer 127.0.0.2,
played by a UDP socket of the test on the VXLAN port; network red with c4 and
c5 (MTU 9000). No port has an IP and the namespaces have IPv6 off, so the
kernel sends nothing and every counter is exactly what the test sent.

Absence checks use a fence, as in test_traffic: the daemon handles one ingress
port's frames in order and a TAP write reaches the namespace's packet sockets
before it returns, so once a later broadcast from the same port has arrived
everywhere (the peer included), every copy of an earlier frame has arrived too.
"""
from __future__ import annotations

import inspect
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.utils import rdpcap

from tests.harness.agent import Agent
from tests.harness.capture import PCAP_HEADER, PCAP_RECORD, open_capture, read_pcap
from tests.harness.daemon import REPO_ROOT, Vswitchd, free_port
from tests.harness.lan import IFNAME, Host, port_mac
from tests.harness.frames import has_token, marked_frame, new_token
from tests.harness.netns import Netns
from tests.harness.wait import wait_until
from tests.test_api import check_against_openapi
from vswitch.client import ApiError, Client, UnixHTTPConnection
from vswitch.eventlog import EventLog

pytestmark = pytest.mark.root

BROADCAST = "ff:ff:ff:ff:ff:ff"
VNI = 100
PEER_IP = "127.0.0.2"  # the fake remote VTEP of network blue
STRANGER_IP = "127.0.0.3"  # a VTEP that is no peer of anything
REMOTE_MAC = "02:00:00:00:0e:01"  # a container behind the peer
TOPOLOGY = {"c1": "blue", "c2": "blue", "c3": "blue", "c4": "red", "c5": "red"}
RED_MTU = 9000
JUMBO = RED_MTU + 14
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
PROMETHEUS_UP_DEADLINE_S = 20.0  # its first scrape comes ~5 s after start
DASHBOARD = REPO_ROOT / "tools" / "grafana-dashboard.json"
VXLAN_HEADER = struct.Struct("!B3xI")  # flags, then VNI << 8
MAC_RE = re.compile(r"(?i)\b[0-9a-f]{2}(:[0-9a-f]{2}){5}\b")

# The exposition's contract: every one of these is present with samples.
EXPECTED_METRICS = {
    "vswitch_port_rx_packets_total": {"port", "network"},
    "vswitch_port_rx_bytes_total": {"port", "network"},
    "vswitch_port_tx_packets_total": {"port", "network"},
    "vswitch_port_tx_bytes_total": {"port", "network"},
    "vswitch_port_rx_dropped_total": {"port", "network", "reason"},
    "vswitch_port_flooded_total": {"port", "network"},
    "vswitch_port_tx_errors_total": {"port", "network"},
    "vswitch_port_capture_dropped_total": {"port", "network"},
    "vswitch_port_paused_total": {"port", "network"},
    "vswitch_port_up": {"port", "network"},
    "vswitch_port_mtu_bytes": {"port", "network"},
    "vswitch_fdb_entries": set(),
    "vswitch_fdb_capacity": set(),
    "vswitch_fdb_learned_total": set(),
    "vswitch_fdb_moved_total": set(),
    "vswitch_fdb_aged_total": set(),
    "vswitch_fdb_refused_total": set(),
    "vswitch_peer_tx_packets_total": {"network", "peer"},
    "vswitch_peer_tx_bytes_total": {"network", "peer"},
    "vswitch_peer_rx_packets_total": {"network", "peer"},
    "vswitch_peer_rx_bytes_total": {"network", "peer"},
    "vswitch_peer_tx_errors_total": {"network", "peer"},
    "vswitch_vxlan_rx_dropped_total": {"reason"},
    "vswitch_loop_wakeups_total": set(),
    "vswitch_loop_frames_total": set(),
    "vswitch_loop_batch_frames_bucket": {"le"},
    "vswitch_loop_batch_frames_count": set(),
    "vswitch_loop_batch_frames_sum": set(),
    "vswitch_datapath_io_mode": {"mode"},
    "vswitch_uring_events_total": {"event"},
    "vswitch_api_requests_total": {"path", "status"},
    "vswitch_build_info": {"version"},
    "vswitch_datapath_loop_running": set(),
    "vswitch_datapath_loop_last_turn_age_seconds": set(),
    "vswitch_datapath_loop_cpu_seconds_total": set(),
    "vswitch_process_cpu_seconds_total": set(),
    "vswitch_process_resident_memory_bytes": set(),
    "vswitch_process_virtual_memory_bytes": set(),
    "vswitch_process_open_fds": set(),
    "vswitch_process_max_fds": set(),
    "vswitch_process_start_time_seconds": set(),
}


# --- the fake peer -------------------------------------------------------------------


class PeerSocket:
    """A remote VTEP played by a UDP socket on its address: collects the inner
    frames the switch tunnels to it, and sends VXLAN to the switch."""

    def __init__(self, ip: str, vxlan_port: int) -> None:
        self.ip, self.vxlan_port = ip, vxlan_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((ip, vxlan_port))
        self.sock.setblocking(False)
        self.frames: list[tuple[int, bytes]] = []  # (VNI, inner frame), in arrival order

    def _drain(self, wait: float) -> None:
        if not select.select([self.sock], [], [], wait)[0]:
            return
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            flags, vni = VXLAN_HEADER.unpack_from(data)
            assert flags == 0x08, f"VXLAN packet with flags {flags:#x}"
            self.frames.append((vni >> 8, data[VXLAN_HEADER.size:]))

    def seen(self, token: str) -> list[bytes]:
        self._drain(0)
        return [f for vni, f in self.frames if vni == VNI and has_token(token)(f)]

    def wait(self, token: str, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while not self.seen(token) and time.monotonic() < deadline:
            self._drain(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.seen(token)

    def send(self, vni: int, inner: bytes) -> None:
        self.sock.sendto(VXLAN_HEADER.pack(0x08, vni << 8) + inner, ("127.0.0.1", self.vxlan_port))

    def close(self) -> None:
        self.sock.close()


# --- the LAN -------------------------------------------------------------------------


@dataclass
class Lan:
    daemon: Vswitchd
    hosts: dict[str, Host]
    peer: PeerSocket

    def __getitem__(self, port: str) -> Host:
        return self.hosts[port]

    def neighbours(self, sender: Host) -> list[Host]:
        return [h for h in self.hosts.values() if h is not sender and h.network == sender.network]

    def fence(self, sender: Host) -> None:
        """Broadcast from `sender`; return once its whole network (and the peer, for blue) has it."""
        token = new_token("fence")
        sender.send(sender.frame(BROADCAST, token))
        for host in self.neighbours(sender):
            assert host.wait(token) != [], f"fence from {sender.port} never reached {host.port}"
        if sender.network == "blue":
            assert self.peer.wait(token) != [], f"fence from {sender.port} never reached the peer"

    def counters(self, port: str) -> dict[str, Any]:
        return self.daemon.ctl("stats")["ports"][port]

    def fdb(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["network"], e["mac"]): e for e in self.daemon.ctl("fdb", "show")}

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.daemon.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(self.scrape()) for s in fam.samples]

    def metric(self, name: str, **labels: str) -> float:
        values = [v for n, lab, v in self.samples() if n == name and all(lab.get(k) == w for k, w in labels.items())]
        assert len(values) == 1, f"{name}{labels}: {len(values)} samples"
        return values[0]

    def trace(self, in_port: str, dst: str, src: str | None = None, vlan: int | None = None) -> dict[str, Any]:
        body = {"in_port": in_port, "dst": dst, **({"src": src} if src else {}), **({"vlan": vlan} if vlan is not None else {})}
        status, answer = self.daemon.api("POST", "/v1/trace", body)
        assert status == 200, f"trace {body}: {status} {answer}"
        return answer


def lan_config(namespaces: dict[str, Netns], vxlan_port: int) -> str:
    text = f'[switch]\nvtep_ip = "127.0.0.1"\nvxlan_port = {vxlan_port}\n'
    text += f'[[network]]\nname = "blue"\nvni = {VNI}\n[[network]]\nname = "red"\n'
    for port, net in TOPOLOGY.items():
        text += (f'[[port]]\nname = "{port}"\nnetns = "{namespaces[port].name}"\nnetwork = "{net}"\n'
                 f'ifname = "{IFNAME}"\nmac = "{port_mac(port)}"\n'
                 # Nested-bridge ports: frames from many MACs (move storms, traced cases) are what is observed.
                 'port_security = false\n')
        if net == "red":
            text += f"mtu = {RED_MTU}\n"
    return text + f'[[peer]]\nnetwork = "blue"\nremote = "{PEER_IP}"\n'


@pytest.fixture
def lan(netns_factory: Callable[[], Netns], agent_factory: Callable[[Netns], Agent],
        vswitchd_factory: Callable[..., Vswitchd]) -> Iterator[Lan]:
    namespaces = {port: netns_factory() for port in TOPOLOGY}
    vxlan_port = free_port(socket.SOCK_DGRAM)
    peer = PeerSocket(PEER_IP, vxlan_port)
    try:
        daemon = vswitchd_factory(lan_config(namespaces, vxlan_port))
        hosts = {}
        for port, net in TOPOLOGY.items():
            agent = agent_factory(namespaces[port])
            agent.sniff_start(IFNAME)
            hosts[port] = Host(port, net, namespaces[port], agent)
        yield Lan(daemon, hosts, peer)
    finally:
        peer.close()


# --- pcap ----------------------------------------------------------------------------


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ctl_capture(daemon: Vswitchd, *args: str) -> subprocess.Popen[bytes]:
    """`vswitchctl capture ARGS` running in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "vswitch.cli", "--socket", str(daemon.socket_path), "capture", *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def capture_status(daemon: Vswitchd, port: str) -> int:
    """Status of a capture request on a fresh connection (a 200 stream is dropped at once)."""
    conn = UnixHTTPConnection(daemon.socket_path, timeout=10)
    try:
        conn.request("GET", f"/v1/ports/{port}/capture")
        return conn.getresponse().status
    finally:
        conn.close()


def ping_pong(lan: Lan, a: Host, b: Host, n: int, tag: str) -> list[tuple[bytes, bytes]]:
    """n exchanges a -> b then b -> a, each waited for, so their order is fixed; returns (a's, b's) frames."""
    pairs = []
    for i in range(n):
        there, back = new_token(f"{tag}-there"), new_token(f"{tag}-back")
        f1 = a.frame(b.mac, there, size=60 + 37 * i)
        a.send(f1)
        assert b.wait(there) == [f1]
        f2 = b.frame(a.mac, back, size=200 + 53 * i)
        b.send(f2)
        assert a.wait(back) == [f2]
        pairs.append((f1, f2))
    return pairs


# --- metrics and Prometheus ----------------------------------------------------------


def test_exposition_has_every_metric_passes_promtool_and_never_labels_a_mac(lan: Lan) -> None:
    if not PROMTOOL.exists():
        pytest.skip(f"{PROMTOOL} is missing: install the Debian package prometheus (make deps does)")
    h1, h2 = lan["c1"], lan["c2"]
    ping_pong(lan, h1, h2, 1, "expo")  # MACs in the FDB: none may leak into a label
    text = lan.scrape()

    proc = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), f"promtool: {proc.stdout}{proc.stderr}"
    samples = [(s.name, s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples]
    for name, labels in EXPECTED_METRICS.items():
        found = [lab for n, lab in samples if n == name]
        assert found, f"{name} has no samples"
        assert all(set(lab) == labels for lab in found), f"{name}: labels {found[0]}, expected {labels}"
    for name, labels in samples:
        assert name.startswith("vswitch_"), name
        assert not any(MAC_RE.search(v) for v in labels.values()), f"{name}{labels} carries a MAC"
    ports = {lab["port"] for n, lab in samples if n == "vswitch_port_rx_packets_total"}
    assert ports == set(TOPOLOGY)
    assert {(lab["network"], lab["peer"]) for n, lab in samples if n == "vswitch_peer_tx_packets_total"} == {("blue", PEER_IP)}


class Prometheus:
    """A private Prometheus server on loopback scraping one target every second."""

    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: vswitch\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    def target_up(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited {self.proc.returncode}: {self.log_path.read_text()}"
        try:
            targets = self.get("/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return False  # not listening yet
        return bool(targets) and targets[0]["health"] == "up"

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    panels = [p for top in doc["panels"] for p in [top, *top.get("panels", [])]]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def as_plain_promql(expr: str) -> str:
    """Grafana's variables replaced by what "All" and a short range mean."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$port", ".*")


def test_prometheus_stores_exactly_what_was_sent_and_evaluates_the_dashboard(lan: Lan, tmp_path: Path) -> None:
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} is missing: install the Debian package prometheus (make deps does)")
    prom = Prometheus(tmp_path, lan.daemon.metrics_port)
    try:
        wait_until(prom.target_up, timeout=PROMETHEUS_UP_DEADLINE_S, interval=0.2, message="prometheus never scraped vswitchd")
        h1, h2 = lan["c1"], lan["c2"]
        token = new_token("prom")
        # To a MAC nobody has (c2's own is pinned, so known at once): it floods, to c2 and the peer.
        sent = [h1.frame("02:00:00:00:0f:0f", token, size=60 + 11 * i) for i in range(41)]

        h1.send(*sent)

        assert h2.wait(token, count=len(sent)) == sent
        for expr, expected in [
            ('vswitch_port_rx_packets_total{port="c1"}', len(sent)),
            ('vswitch_port_rx_bytes_total{port="c1"}', sum(map(len, sent))),
            ('vswitch_port_tx_packets_total{port="c2"}', len(sent)),
            (f'vswitch_peer_tx_packets_total{{network="blue",peer="{PEER_IP}"}}', len(sent)),  # unknown unicast floods
        ]:
            wait_until(lambda: prom.value(expr) == expected, timeout=15, interval=0.2,
                       message=f"prometheus never stored {expr} = {expected}")
        for expr in dashboard_exprs(dashboard()):
            result = prom.query(as_plain_promql(expr))
            # A query filtered with "> 0" may rightly be empty; any other has a series by now.
            assert result or "> 0" in expr, f"dashboard query returns nothing: {expr}"
    finally:
        prom.stop()


PROMQL_FUNCTIONS = {"sum", "rate", "irate", "increase", "avg", "min", "max", "count", "histogram_quantile", "topk"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects; asserts every other word is a known function or keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group()
        if text[m.end():].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"unexpected function {word!r} in {expr}"
        elif word not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def test_dashboard_queries_only_metrics_the_daemon_exposes(lan: Lan) -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 36
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for p in panels)
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    lan.daemon.api("GET", "/v1/health")  # an API request, so that its counter has a sample
    exposed = {name for name, _, _ in lan.samples()}

    used: set[str] = set()
    for expr in dashboard_exprs(doc):
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        assert names <= exposed, f"{expr} uses {sorted(names - exposed)}, which the daemon does not expose"
        used |= names
    for var in doc["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, *(\w+)\)", var["query"]["query"])
        assert m and m.group(1) in exposed, var["query"]
    # Each topic of the dashboard is there.
    assert {"vswitch_port_rx_bytes_total", "vswitch_port_tx_bytes_total", "vswitch_port_rx_packets_total",
            "vswitch_port_tx_packets_total", "vswitch_port_rx_dropped_total", "vswitch_fdb_entries", "vswitch_fdb_capacity",
            "vswitch_fdb_learned_total", "vswitch_fdb_moved_total", "vswitch_fdb_aged_total", "vswitch_peer_tx_bytes_total",
            "vswitch_peer_rx_bytes_total", "vswitch_vxlan_rx_dropped_total", "vswitch_loop_frames_total",
            "vswitch_loop_batch_frames_bucket", "vswitch_api_requests_total", "vswitch_process_cpu_seconds_total",
            "vswitch_datapath_loop_cpu_seconds_total", "vswitch_process_resident_memory_bytes",
            "vswitch_process_open_fds", "vswitch_datapath_loop_last_turn_age_seconds"} <= used


# --- capture -------------------------------------------------------------------------


def test_capture_holds_exactly_the_ports_frames_in_order_with_their_times(lan: Lan, tmp_path: Path) -> None:
    h1, h2 = lan["c1"], lan["c2"]
    lan.fence(h1)
    lan.fence(h2)  # both MACs learned: the frames below are unicast between c1 and c2 only
    exchanges = 3
    before = time.time_ns()

    first, rest = open_capture(lan.daemon, "c1", direction="both", count=2 * exchanges)
    pairs = ping_pong(lan, h1, h2, exchanges, "cap")
    data = first + b"".join(rest)  # the stream ends by itself after count frames

    after = time.time_ns()
    expected = [f for pair in pairs for f in pair]  # c1 received (in), then c1 sent (out), in turn
    records = read_pcap(data)
    assert [f for _, f in records] == expected
    stamps = [ns for ns, _ in records]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after
    path = tmp_path / "c1.pcap"
    path.write_bytes(data)
    assert [bytes(p) for p in rdpcap(str(path))] == expected
    if shutil.which("tshark"):
        proc = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "eth.src", "-e", "eth.dst"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [f"{len(f)}\t{mac_text(f[6:12])}\t{mac_text(f[:6])}" for f in expected]
    assert lan.counters("c1")["capture_dropped"] == 0


def test_capture_direction_in_through_the_api_and_out_through_vswitchctl(lan: Lan, tmp_path: Path) -> None:
    h1, h2 = lan["c1"], lan["c2"]
    lan.fence(h1)
    lan.fence(h2)

    first, rest = open_capture(lan.daemon, "c1", direction="in", count=2)
    pairs = ping_pong(lan, h1, h2, 2, "in")
    assert [f for _, f in read_pcap(first + b"".join(rest))] == [there for there, _ in pairs]

    path = tmp_path / "out.pcap"
    cli = ctl_capture(lan.daemon, "c1", "--direction", "out", "-c", "2", "-w", str(path))
    try:
        wait_until(lambda: path.exists() and path.stat().st_size >= PCAP_HEADER.size or cli.poll() is not None,
                   message="vswitchctl capture never started")
        pairs = ping_pong(lan, h1, h2, 2, "out")
        out, err = cli.communicate(timeout=30)
    finally:
        cli.kill()
        cli.wait()
    assert (cli.returncode, out, err) == (0, b"", b"")
    assert [f for _, f in read_pcap(path.read_bytes())] == [back for _, back in pairs]


def test_vswitchctl_capture_ends_cleanly_on_ctrl_c_and_sigterm(lan: Lan, tmp_path: Path) -> None:
    h1, h2 = lan["c1"], lan["c2"]
    lan.fence(h2)
    for released, sig in enumerate((signal.SIGINT, signal.SIGTERM), start=1):
        path = tmp_path / f"open-{sig.name}.pcap"
        cli = ctl_capture(lan.daemon, "c1", "-w", str(path))
        try:
            # The file appears with the pcap header, once the capture runs.
            wait_until(lambda: path.exists() and path.stat().st_size >= PCAP_HEADER.size or cli.poll() is not None,
                       message="vswitchctl capture never started")
            token = new_token(sig.name)
            sent = [h1.frame(h2.mac, token, size=100 + i) for i in range(3)]
            h1.send(*sent)
            size = PCAP_HEADER.size + sum(PCAP_RECORD.size + len(f) for f in sent)
            wait_until(lambda: path.stat().st_size >= size, message="the frames never reached the file")

            cli.send_signal(sig)
            out, err = cli.communicate(timeout=30)
        finally:
            cli.kill()
            cli.wait()
        assert (cli.returncode, out, err) == (0, b"", b""), sig.name
        assert [f for _, f in read_pcap(path.read_bytes())] == sent
        # The daemon saw the client go and released the port. Its log says so; a probe
        # capture would leave one more to release, which the next pass could run into.
        wait_until(lambda: lan.daemon.run_stderr.count("capture stopped on port c1 (") == released,
                   message="the capture of c1 was never released")


def test_capture_refusals_and_the_ways_a_stream_ends(lan: Lan, tmp_path: Path) -> None:
    d = lan.daemon
    for path, status, detail in [
        ("/v1/ports/nope/capture", 404, "port 'nope' does not exist"),
        ("/v1/ports/c1/capture?direction=sideways", 400, "direction: 'sideways'"),
        ("/v1/ports/c1/capture?count=0", 400, "count: '0' is not a positive integer"),
        ("/v1/ports/c1/capture?count=x", 400, "count: 'x' is not a positive integer"),
        ("/v1/ports/c1/capture?snaplen=9", 400, "unknown query parameter 'snaplen'"),
    ]:
        answer = d.api("GET", path)
        assert answer[0] == status and detail in answer[1]["detail"], (path, answer)
    cli = ctl_capture(d, "nope", "-w", str(tmp_path / "never.pcap"))
    out, err = cli.communicate(timeout=30)
    assert (cli.returncode, out, err) == (1, b"", b"vswitchctl: port 'nope' does not exist\n")
    assert not (tmp_path / "never.pcap").exists()

    # One capture per port: a second one is refused until the first client leaves.
    first, rest = open_capture(d, "c1")
    answer = d.api("GET", "/v1/ports/c1/capture")
    assert answer[0] == 409 and "already being captured" in answer[1]["detail"], answer
    doc = d.api("GET", "/v1/openapi.json")[1]
    check_against_openapi(doc, "GET", "/v1/ports/c1/capture", *answer)
    with pytest.raises(ApiError) as exc:
        next(Client(d.socket_path).stream("/v1/ports/c1/capture"))
    assert exc.value.status == 409
    rest.close()  # the client disconnects without a word
    wait_until(lambda: capture_status(d, "c1") == 200, message="the capture of c1 outlived its client")

    # The port going away ends its stream.
    first, rest = open_capture(d, "c3")
    assert d.api("DELETE", "/v1/ports/c3")[0] == 204
    assert b"".join(rest) == b""  # ends promptly, before the idle timeout
    assert read_pcap(first) == []

    # A file vswitchctl cannot write ends its capture with one line. Last: a
    # capture_status probe leaves a capture of its own for the daemon to end.
    unwritable = tmp_path / "no-such-dir" / "c1.pcap"
    cli = ctl_capture(d, "c1", "-w", str(unwritable))
    out, err = cli.communicate(timeout=30)
    assert (cli.returncode, out, err) == (1, b"", f"vswitchctl: cannot write {unwritable}: No such file or directory\n".encode())
    wait_until(lambda: capture_status(d, "c1") == 200, message="the capture of c1 outlived the client that could not write it")
    assert d.run_stderr.count("Traceback") == 0


def test_a_paused_capture_reader_never_holds_forwarding_up(lan: Lan) -> None:
    h4, h5 = lan["c4"], lan["c5"]
    lan.fence(h5)
    conn = UnixHTTPConnection(lan.daemon.socket_path, timeout=10)
    resp = None
    try:
        conn.request("GET", "/v1/ports/c4/capture")
        resp = conn.getresponse()  # headers only: from here on nothing is read
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/vnd.tcpdump.pcap"
        assert resp.getheader("Content-Length") is None and resp.getheader("Connection") == "close"
        sent = 0
        for _ in range(40):  # bounded: the capture's buffers are finite
            token = new_token("busy")
            burst = [h4.frame(h5.mac, token, size=JUMBO) for _ in range(200)]
            h4.send(*burst)
            assert len(h5.wait(token, count=len(burst))) == len(burst), "forwarding lost frames behind a stalled capture"
            sent += len(burst)
            if lan.counters("c4")["capture_dropped"]:
                break
        c4, c5 = lan.counters("c4"), lan.counters("c5")
        assert c4["capture_dropped"] > 0, f"{sent} jumbo frames never filled the capture's buffers"
        assert (c4["rx_packets"], c5["tx_packets"], c5["tx_errors"]) == (sent, sent, 0)
    finally:
        if resp is not None:
            resp.close()  # the response owns the socket: closing it is the client leaving
        conn.close()
    wait_until(lambda: capture_status(lan.daemon, "c4") == 200, message="the stalled capture outlived its client")


# --- trace ---------------------------------------------------------------------------


def random_mac(rng: random.Random, multicast: bool = False) -> str:
    first = (rng.randrange(256) & 0xFC) | (0x01 if multicast else 0x02)
    return ":".join(f"{b:02x}" for b in [first, *(rng.randrange(256) for _ in range(5))])


KINDS = ("unknown_unicast", "learned_unicast", "other_network_mac", "behind_the_peer", "broadcast", "multicast",
         "ingress_port_mac", "tagged", "multicast_source", "to_itself")


def make_case(kind: str, rng: random.Random, lan: Lan, last_port: dict[str, str]) -> tuple[str, str, str, int | None]:
    """(in_port, src, dst, vlan) of a frame of the given kind."""
    sender = lan[rng.choice(["c1", "c2", "c3"] if kind == "behind_the_peer" else list(TOPOLOGY))]
    others = lan.neighbours(sender)
    src = random_mac(rng) if rng.random() < 0.3 else sender.mac  # now and then a source never seen before
    vlan = None
    if kind == "unknown_unicast":
        dst = random_mac(rng)
    elif kind == "learned_unicast":
        dst = rng.choice(others).mac
    elif kind == "other_network_mac":
        dst = rng.choice([h for h in lan.hosts.values() if h.network != sender.network]).mac
    elif kind == "behind_the_peer":
        dst = REMOTE_MAC
    elif kind == "broadcast":
        dst = BROADCAST
    elif kind == "multicast":
        dst = rng.choice(["01:00:5e:", "33:33:00:"]) + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
    elif kind == "ingress_port_mac":
        dst = rng.choice([mac for mac, port in last_port.items() if port == sender.port])
    elif kind == "to_itself":
        # The loop learns the source before it looks up the destination: a frame to its own
        # source MAC, new or learned on another port, finds the entry just made on its port.
        same_network = [m for m, p in last_port.items() if p != sender.port and lan[p].network == sender.network]
        src = rng.choice([random_mac(rng), *same_network])
        dst = src
    elif kind == "tagged":
        dst, vlan = rng.choice([BROADCAST, rng.choice(others).mac]), rng.randint(1, 4094)
    else:
        src, dst = random_mac(rng, multicast=True), rng.choice([BROADCAST, rng.choice(others).mac])
    return sender.port, src, dst, vlan


def test_trace_predicts_exactly_where_each_frame_goes(lan: Lan) -> None:
    seed = int(os.environ.get("VSWITCH_TRACE_SEED", "7"))
    rng = random.Random(seed)
    for host in lan.hosts.values():
        lan.fence(host)
    lan.peer.send(VNI, marked_frame(REMOTE_MAC, BROADCAST, new_token("remote")))
    wait_until(lambda: lan.fdb().get(("blue", REMOTE_MAC), {}).get("peer") == PEER_IP, message="the peer's MAC was never learned")
    last_port = {port_mac(p): p for p in TOPOLOGY}  # where each unicast source was last learned
    kinds = [*KINDS, *(rng.choice(KINDS) for _ in range(16))]
    rng.shuffle(kinds)
    seen_actions = set()

    for i, kind in enumerate(kinds):
        in_port, src, dst, vlan = make_case(kind, rng, lan, last_port)
        case = f"case {i} (seed {seed}) {kind}: {src} -> {dst} from {in_port}, vlan {vlan}"
        trace = lan.trace(in_port, dst, src=src, vlan=vlan)
        token = new_token("trace")
        sender = lan[in_port]
        frame = marked_frame(src, dst, token, vlan=vlan)

        sender.send(frame)
        lan.fence(sender)

        for host in lan.hosts.values():
            expected = [frame] if host.port in trace["outputs"]["ports"] else []
            assert host.seen(token) == expected, f"{case}: {host.port} got it {len(host.seen(token))} times; trace: {trace}"
        expected = [frame] if PEER_IP in trace["outputs"]["peers"] else []
        assert lan.peer.seen(token) == expected, f"{case}: the peer disagrees with {trace}"
        if trace["learn"] is not None:
            last_port[src] = in_port
        seen_actions.add(trace["action"] if trace["action"] != "drop" else trace["reason"])
    assert {"output", "flood", "same_port", "vlan_tagged", "src_multicast"} <= seen_actions


def test_trace_from_a_peer_predicts_exactly_where_its_frames_go(lan: Lan) -> None:
    blue = [h for h in lan.hosts.values() if h.network == "blue"]
    for host in blue:
        lan.fence(host)  # every blue MAC is learned on its port

    def peer_fence() -> None:
        # Datagrams from the peer are handled in order: once this broadcast is
        # everywhere, so is whatever the peer sent before it.
        token = new_token("peer-fence")
        lan.peer.send(VNI, marked_frame("02:00:00:00:0e:ff", BROADCAST, token))
        for host in blue:
            assert host.wait(token) != [], f"the peer's fence never reached {host.port}"

    lan.peer.send(VNI, marked_frame(REMOTE_MAC, BROADCAST, new_token("remote")))
    peer_fence()
    cases = [  # (src, dst, vlan, expected action or reason)
        ("02:00:00:00:0e:02", port_mac("c2"), None, "output"),
        ("02:00:00:00:0e:02", "02:00:00:00:0d:99", None, "flood"),
        (REMOTE_MAC, BROADCAST, None, "flood"),
        ("02:00:00:00:0e:03", REMOTE_MAC, None, "split_horizon"),
        ("02:00:00:00:0e:04", port_mac("c4"), None, "flood"),  # c4 is in red: unknown in blue
        ("02:00:00:00:0e:05", port_mac("c1"), 7, "inner_malformed"),
    ]
    doc = lan.daemon.api("GET", "/v1/openapi.json")[1]
    for src, dst, vlan, what in cases:
        body = {"from_peer": PEER_IP, "dst": dst, "src": src, **({"vlan": vlan} if vlan is not None else {})}
        status, trace = lan.daemon.api("POST", "/v1/trace", body)
        check_against_openapi(doc, "POST", "/v1/trace", status, trace)
        assert status == 200, (body, trace)
        assert (trace["from_peer"], trace["in_port"], trace["vni"]) == (PEER_IP, None, VNI)
        assert (trace["reason"] if trace["action"] == "drop" else trace["action"]) == what, trace
        assert trace["outputs"]["peers"] == [], f"a frame from the tunnel went back into it: {trace}"
        token = new_token("peer-trace")
        frame = marked_frame(src, dst, token, vlan=vlan)
        lan.peer.send(VNI, frame)
        peer_fence()
        for host in lan.hosts.values():
            expected = [frame] if host.port in trace["outputs"]["ports"] else []
            assert host.seen(token) == expected, f"{what}: {host.port} disagrees with {trace}"

    proc = lan.daemon.ctl_run("trace", "--from-peer", PEER_IP, "--src", "02:00:00:00:0e:02", "--dst", port_mac("c2"),
                              json_output=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"frame 02:00:00:00:0e:02 -> {port_mac('c2')} arrives from peer {PEER_IP} (network blue, VNI {VNI})"
    assert lines[1:2] == ["learn: refresh"] and lines[-1] == "verdict: output to ports c2", lines
    for bad, status, detail in [
        ({"from_peer": STRANGER_IP, "src": REMOTE_MAC, "dst": BROADCAST}, 404, f"peer {STRANGER_IP} is not in any network"),
        ({"from_peer": PEER_IP, "network": "red", "src": REMOTE_MAC, "dst": BROADCAST}, 404, "not in network 'red'"),
        ({"from_peer": PEER_IP, "dst": BROADCAST}, 400, "src: required with from_peer"),
        ({"from_peer": PEER_IP, "in_port": "c1", "src": REMOTE_MAC, "dst": BROADCAST}, 400, "either in_port or from_peer"),
        ({"from_peer": "nonsense", "src": REMOTE_MAC, "dst": BROADCAST}, 400, "from_peer: 'nonsense'"),
    ]:
        answer = lan.daemon.api("POST", "/v1/trace", bad)
        check_against_openapi(doc, "POST", "/v1/trace", *answer)
        assert answer[0] == status and detail in answer[1]["detail"], (bad, answer)


def test_trace_through_the_api_and_vswitchctl(lan: Lan) -> None:
    d = lan.daemon
    lan.fence(lan["c2"])
    doc = d.api("GET", "/v1/openapi.json")[1]
    body = {"in_port": "c1", "dst": port_mac("c2")}
    status, trace = d.api("POST", "/v1/trace", body)
    check_against_openapi(doc, "POST", "/v1/trace", status, trace)
    assert (trace["action"], trace["outputs"]) == ("output", {"ports": ["c2"], "peers": []})

    proc = d.ctl_run("trace", "--in-port", "c1", "--dst", port_mac("c2"), json_output=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    *steps, verdict = proc.stdout.splitlines()
    ages = re.compile(r"\d+\.\d+s ago")  # the entry ages between the two asks
    assert [ages.sub("", s) for s in steps] == [ages.sub("", s) for s in trace["steps"]]
    assert verdict == "verdict: output to ports c2"
    flood = d.ctl("trace", "--in-port", "c1", "--dst", BROADCAST)
    assert flood["outputs"] == {"ports": ["c2", "c3"], "peers": [PEER_IP]}
    proc = d.ctl_run("trace", "--in-port", "c1", "--dst", BROADCAST, "--vlan", "7", json_output=False)
    assert proc.stdout.splitlines()[-1] == "verdict: drop (vlan_tagged)"

    for bad, status, detail in [
        ({"in_port": "c9", "dst": BROADCAST}, 404, "port 'c9' does not exist"),
        ({"in_port": "c1"}, 400, "missing required key 'dst'"),
        ({"in_port": "c1", "dst": "nonsense"}, 400, "dst: 'nonsense'"),
        ({"in_port": "c1", "dst": BROADCAST, "vlan": 4096}, 400, "vlan: 4096"),
        ({"in_port": "c1", "dst": BROADCAST, "ttl": 3}, 400, "unknown key 'ttl'"),
    ]:
        answer = d.api("POST", "/v1/trace", bad)
        check_against_openapi(doc, "POST", "/v1/trace", *answer)
        assert answer[0] == status and detail in answer[1]["detail"], (bad, answer)
    proc = d.ctl_run("trace", "--in-port", "c1", "--dst", "nonsense", json_output=False)
    assert proc.returncode == 1 and proc.stderr.startswith("vswitchctl: dst: 'nonsense'") and proc.stderr.count("\n") == 1


# --- event logging -------------------------------------------------------------------


def test_a_mac_move_storm_is_counted_in_full_but_logged_within_bounds(lan: Lan) -> None:
    burst = inspect.signature(EventLog).parameters["burst"].default
    window_s = inspect.signature(EventLog).parameters["window_s"].default
    h1, h2, h3 = lan["c1"], lan["c2"], lan["c3"]
    lan.fence(h3)  # the storm goes to c3 alone
    macs = [f"02:aa:00:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(400)]
    rounds = 6  # c1, c2, c1, ...: every MAC moves at each round after the first
    started = time.monotonic()

    for r in range(rounds):
        sender = (h1, h2)[r % 2]
        token = new_token("storm")
        sender.send(*(marked_frame(mac, h3.mac, token) for mac in macs))
        expected = len(macs) * (r // 2 + 1)  # all of them read, so all moved, before the other port's turn
        wait_until(lambda: lan.counters(sender.port)["rx_packets"] == expected, message=f"round {r} never arrived")
    moves = len(macs) * (rounds - 1)
    # An event of another kind, which the daemon logs after every move before it.
    stranger = PeerSocket(STRANGER_IP, lan.peer.vxlan_port)
    try:
        stranger.send(VNI, marked_frame(random_mac(random.Random(1)), BROADCAST, new_token("stranger")))
    finally:
        stranger.close()
    wait_until(lambda: f"from {STRANGER_IP}, which is not a peer" in lan.daemon.stderr_text, message="no log of the stranger")

    windows = int((time.monotonic() - started) // window_s) + 2
    moved_lines = [line for line in lan.daemon.stderr_text.splitlines() if "moved" in line]
    assert burst <= len(moved_lines) <= (burst + 1) * windows, "\n".join(moved_lines)
    # Which moves get logged depends on when the daemon reads its event ring, not which kind of line.
    assert any(re.search(r"MAC 02:aa:\S+ in network blue moved from port c[12] to port c[12]$", line) for line in moved_lines)
    wait_until(lambda: lan.metric("vswitch_fdb_moved_total") == moves, message="moves not all counted")
    assert lan.metric("vswitch_fdb_learned_total") >= len(macs)
    assert lan.metric("vswitch_vxlan_rx_dropped_total", reason="unknown_peer") == 1
