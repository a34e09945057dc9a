"""Prometheus exposition: a collector that reads the datapath's C counters at scrape time.

Nothing is counted per frame in Python: every sample is built from the
counters the loop already keeps. Labels are port, network, peer, reason, path,
status, mode and event only; never a MAC address or anything else unbounded.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from . import __version__

if TYPE_CHECKING:
    from .switch import Switch

PORT_COUNTERS = (
    ("rx_packets", "vswitch_port_rx_packets_total", "Frames received from the port."),
    ("rx_bytes", "vswitch_port_rx_bytes_total", "Bytes received from the port."),
    ("tx_packets", "vswitch_port_tx_packets_total", "Frames written to the port."),
    ("tx_bytes", "vswitch_port_tx_bytes_total", "Bytes written to the port."),
    ("flooded", "vswitch_port_flooded_total", "Frames from the port flooded to its network."),
    ("tx_errors", "vswitch_port_tx_errors_total", "Writes to the port that failed; the frame was dropped."),
    ("arp_suppressed", "vswitch_port_arp_suppressed_total",
     "ARP requests from the port the switch answered itself (not flooded)."),
    ("nd_suppressed", "vswitch_port_nd_suppressed_total",
     "Neighbour solicitations from the port the switch answered itself (not flooded)."),
    ("mac_limited", "vswitch_port_mac_limited_total",
     "Frames from the port whose source MAC was not learned: the port holds its max_macs (forwarding went on)."),
    ("paused", "vswitch_port_paused_total",
     "Times the switch stopped reading the port for a moment because storm control dropped everything it sent "
     "(its frames wait in, or are dropped by, the container's own kernel meanwhile)."),
    ("capture_dropped", "vswitch_port_capture_dropped_total",
     "Frame copies a capture of the port dropped because its reader fell behind (forwarding went on)."),
)

PEER_COUNTERS = (
    ("tx_packets", "vswitch_peer_tx_packets_total", "Frames sent to the peer in VXLAN."),
    ("tx_bytes", "vswitch_peer_tx_bytes_total", "Bytes of inner frames sent to the peer."),
    ("rx_packets", "vswitch_peer_rx_packets_total", "Frames received from the peer in VXLAN."),
    ("rx_bytes", "vswitch_peer_rx_bytes_total", "Bytes of inner frames received from the peer."),
    ("tx_errors", "vswitch_peer_tx_errors_total", "Sends to the peer that failed; the frame was dropped."),
)

FDB_COUNTERS = (
    ("learned", "vswitch_fdb_learned_total", "MAC addresses learned."),
    ("moved", "vswitch_fdb_moved_total", "Learned MAC addresses that moved to another port."),
    ("aged", "vswitch_fdb_aged_total", "Learned entries that expired."),
    ("refused", "vswitch_fdb_refused_total", "Source MACs not learned because the table was full of static entries."),
    ("evicted", "vswitch_fdb_evicted_total",
     "Learned entries removed to make room in a full table: the least recently seen of the output holding the most."),
    ("limited", "vswitch_fdb_limited_total", "Source MACs not learned because their port holds its max_macs."),
)

# A port's limits as gauges (kind label), in the units the metric conventions use: so a dashboard
# can set use against limit. Only limits that are set are exported; 0 (no limit) is left out.
PORT_LIMITS = (
    ("max_macs", "max_macs", 1),
    ("storm_broadcast", "storm_broadcast_fps", 1),
    ("storm_multicast", "storm_multicast_fps", 1),
    ("storm_unknown_unicast", "storm_unknown_unicast_fps", 1),
    ("rate_mbit", "rate_bytes_per_second", 1e6 / 8),
    ("rate_fps", "rate_fps", 1),
)

# The datapath's I/O modes once auto is resolved: one series each in vswitch_datapath_io_mode.
DATAPATH_IO_MODES = ("poll", "uring")

URING_EVENTS_DOC = (
    "Events of the io_uring datapath, by kind: submits (io_uring_enter calls), read_rearms (multishot reads "
    "re-armed), buffer_ring_empty (reads stopped on a dry buffer ring), stale_completions (for removed ports), "
    "write_errors (failed writes), batch_waits (waits for a batch of completions under load). All 0 in poll mode."
)


class ApiRequestCounter:
    """Counts control API requests by route template and status (fed by the API server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def __call__(self, path: str, status: int) -> None:
        with self._lock:
            self._counts[(path, str(status))] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


class SwitchCollector(Collector):
    def __init__(self, switch: Switch, api_requests: ApiRequestCounter) -> None:
        self._switch = switch
        self._api = api_requests

    def collect(self) -> Iterator:
        ports = self._switch.list_ports()
        stats = self._switch.stats()
        yield from self._port_metrics(ports)
        yield from self._fdb_metrics(stats["fdb"])
        yield from self._vxlan_metrics(stats["vxlan"])
        yield from self._loop_metrics(stats["loop"])
        yield from self._liveness_metrics()
        if self._switch.cluster is not None:
            yield from self._switch.cluster.metrics()
        api = CounterMetricFamily("vswitch_api_requests", "Control API requests.", labels=["path", "status"])
        for (path, status), n in sorted(self._api.snapshot().items()):
            api.add_metric([path, status], n)
        yield api
        info = InfoMetricFamily("vswitch_build", "vswitch build information.")
        info.add_metric([], {"version": __version__})
        yield info

    def _port_metrics(self, ports: list[dict]) -> Iterator:
        families = {
            key: CounterMetricFamily(name[: -len("_total")], doc, labels=["port", "network"])
            for key, name, doc in PORT_COUNTERS
        }
        drops = CounterMetricFamily(
            "vswitch_port_rx_dropped",
            "Frames from the port dropped, by reason (mtu_exceeded, gso_unsupported: frames bound for it).",
            labels=["port", "network", "reason"],
        )
        up = GaugeMetricFamily("vswitch_port_up", "1 while the port's fd is healthy.", labels=["port", "network"])
        mtu = GaugeMetricFamily("vswitch_port_mtu_bytes", "The port's MTU.", labels=["port", "network"])
        limit = GaugeMetricFamily(
            "vswitch_port_limit", "A port's limit, by kind: max_macs (MACs), storm_*_fps and rate_fps (frames/s, "
            "each direction for rate_fps), rate_bytes_per_second (each direction); unset limits are absent.",
            labels=["port", "network", "kind"])
        macs = GaugeMetricFamily("vswitch_port_macs", "MACs the port has learned (its own pinned MAC not counted).",
                                 labels=["port", "network"])
        for p in ports:
            labels = [p["name"], p["network"] or ""]  # a trunk port is in no one network
            c = p["counters"]
            for key, fam in families.items():
                fam.add_metric(labels, c[key])
            for reason, n in c["drops"].items():
                drops.add_metric(labels + [reason], n)
            up.add_metric(labels, 1 if p["state"] == "up" else 0)
            mtu.add_metric(labels, p["mtu"])
            pol = p.get("policy") or {}
            for key, kind, scale in PORT_LIMITS:
                if pol.get(key):
                    limit.add_metric(labels + [kind], pol[key] * scale)
            if "macs" in p:
                macs.add_metric(labels, p["macs"])
        yield from families.values()
        yield from (drops, up, mtu, limit, macs)

    def _fdb_metrics(self, fdb: dict) -> Iterator:
        yield GaugeMetricFamily("vswitch_fdb_entries", "Entries in the MAC table.", value=fdb["entries"])
        yield GaugeMetricFamily("vswitch_fdb_capacity", "Size limit of the MAC table.", value=fdb["capacity"])
        for key, name, doc in FDB_COUNTERS:
            yield CounterMetricFamily(name[: -len("_total")], doc, value=fdb[key])

    def _vxlan_metrics(self, vxlan: dict) -> Iterator:
        families = {
            key: CounterMetricFamily(name[: -len("_total")], doc, labels=["network", "peer"])
            for key, name, doc in PEER_COUNTERS
        }
        for peer in vxlan["peers"]:
            for key, fam in families.items():
                fam.add_metric([peer["network"], peer["remote"]], peer[key])
        yield from families.values()
        drops = CounterMetricFamily(
            "vswitch_vxlan_rx_dropped", "VXLAN packets received and dropped, by reason.", labels=["reason"]
        )
        for reason, n in vxlan["drops"].items():
            drops.add_metric([reason], n)
        yield drops

    def _loop_metrics(self, loop: dict) -> Iterator:
        yield CounterMetricFamily("vswitch_loop_wakeups", "Returns from the forwarding loop's wait that found work.", value=loop["wakeups"])
        yield CounterMetricFamily("vswitch_loop_frames", "Frames handled by the forwarding loop.", value=loop["frames"])
        buckets = []
        cumulative = 0
        for bound, n in loop["batch_histogram"]:
            cumulative += n
            buckets.append(("+Inf" if bound is None else str(bound), cumulative))
        hist = HistogramMetricFamily("vswitch_loop_batch_frames", "Frames handled per batch: one port's reads or one VXLAN receive (poll), one round of completions (uring).")
        hist.add_metric([], buckets, sum_value=loop["frames"])
        yield hist
        mode = GaugeMetricFamily("vswitch_datapath_io_mode", "The forwarding loop's I/O mode: 1 for the active one.",
                                 labels=["mode"])
        for m in DATAPATH_IO_MODES:
            mode.add_metric([m], 1 if loop["io_mode"] == m else 0)
        yield mode
        uring = CounterMetricFamily("vswitch_uring_events", URING_EVENTS_DOC, labels=["event"])
        for event, n in loop["uring"].items():
            uring.add_metric([event], n)
        yield uring


    def _liveness_metrics(self) -> Iterator:
        loop = self._switch.loop
        health = loop.health()
        yield GaugeMetricFamily("vswitch_datapath_loop_running",
                                "1 while the forwarding loop runs and turned within its stall threshold.",
                                value=1 if health["state"] == "running" else 0)
        age = health["last_turn_age_s"]
        if age is not None:
            yield GaugeMetricFamily("vswitch_datapath_loop_last_turn_age_seconds",
                                    "Seconds since the forwarding loop's latest turn (it turns at least every 0.1 s).",
                                    value=age)
        cpu = loop.cpu_seconds()
        if cpu is not None:
            yield CounterMetricFamily("vswitch_datapath_loop_cpu_seconds",
                                      "CPU time (user + system) of the forwarding loop's thread; busy polling shows here.",
                                      value=cpu)


def serve_metrics(switch: Switch, api_requests: ApiRequestCounter, host: str, port: int) -> tuple[object, int]:
    """Serve /metrics on host:port in a background thread; returns (server, bound port)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwitchCollector(switch, api_requests))
    # CPU seconds, RSS, open fds and their limit of the whole process, beside the loop thread's own CPU.
    ProcessCollector(namespace="vswitch", registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
