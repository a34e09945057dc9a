"""The cluster agent: this node's part of an overlay kept in etcd.

What a node publishes, under one lease it keeps alive (keys below PREFIX/):

    nodes/NODE                   {"vtep": IP, "started": UNIX_TIME}
    members/NETWORK/NODE         {"vni": N}          for each network NODE has ports on
    macs/NETWORK/MAC/NODE        {"vtep": IP, "port": NAME, "ips": [...]}

and, without a lease (a network outlives the nodes that use it):

    networks/NETWORK             {"vni": N}
    vnis/N                       NETWORK             claimed with networks/NETWORK in one transaction

What it derives, from one read of everything under the prefix and then a
watch from that revision (never by polling): for each local network, the
peers are the VTEPs of the other live nodes with ports on it, and each remote
MAC is a static FDB entry pointing at its node's VTEP. A MAC published by two
nodes (a container that moved) goes to the newest record. When a node's
lease expires etcd deletes its keys, and the watch withdraws them here.

While etcd is unreachable nothing derived is withdrawn: forwarding goes on
with the last known state. On return the agent reads everything again and
changes only what differs, and republishes under a new lease if its own
lease expired meanwhile.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .clusterconfig import ClusterSettings
from .errors import ConfigError, Conflict
from .etcd import EtcdPool, EtcdUnavailable, KeyValue, Watch, WatchCompacted
from .model import NetworkSpec, PeerSpec
from .switch import Switch

log = logging.getLogger("vswitch.cluster")

RETRY_S = 0.5  # between attempts to reach etcd while it is away
DOWN_LOG_EVERY_S = 30.0  # "still unreachable" at most this often
LEASE_GONE = "requested lease not found"  # etcd's answer to a put under an expired lease


@dataclass
class _View:
    """The cluster as the keys under the prefix describe it."""

    networks: dict[str, int]  # name -> VNI
    nodes: dict[str, dict[str, Any]]  # live node -> its record
    node_leases: dict[str, int]
    members: dict[str, set[str]]  # network -> nodes with ports on it
    macs: dict[tuple[str, str], list[tuple[int, str, dict[str, Any]]]]  # (network, mac) -> [(revision, node, record)]


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None


class ClusterAgent:
    def __init__(self, switch: Switch, settings: ClusterSettings) -> None:
        if switch.settings.vtep_ip is None:
            raise ConfigError("a cluster node needs a VTEP: set [switch] vtep_ip")
        self.switch = switch
        self.settings = settings
        self.node = settings.node
        self.vtep = switch.settings.vtep_ip
        self.prefix = settings.prefix + "/"
        self._pool = EtcdPool(settings.etcd)
        self._lock = threading.Lock()  # the mirror, the status fields and the counters
        self._derive_lock = threading.Lock()
        self._mirror: dict[str, KeyValue] = {}
        self._revision = 0
        self._synced = False
        self._lease = 0
        self._lease_ok_at: float | None = None
        self._published: dict[str, str] = {}
        self._registered: set[NetworkSpec] = set()
        self._conflicts: dict[str, str] = {}  # network -> why it is left out of the cluster
        self._up = False
        self._down_since: float | None = time.monotonic()
        self._last_error = "not connected yet"
        self._last_down_log = 0.0
        self._started = time.time()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._threads: list[threading.Thread] = []
        # derived_changes: peers and remote MACs added, re-pointed or removed (a resync that
        # finds nothing new adds none).
        self.counters = {"watch_events": 0, "resyncs": 0, "lease_grants": 0, "etcd_errors": 0, "derived_changes": 0}

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Join in the background: an unreachable etcd does not hold up the switch (degraded start)."""
        log.info("cluster: node %s (VTEP %s) joining etcd %s under %s", self.node, self.vtep,
                 ",".join(e.url for e in self.settings.etcd), self.settings.prefix)
        self.switch.network_guard = self._guard
        for target, name in ((self._run_watch, "cluster-watch"), (self._run_keeper, "cluster-keeper")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop watching and keeping the lease. The lease is not revoked: a restart within
        lease_ttl_s takes over the same keys and peers see no change at all."""
        self._stop.set()
        self._dirty.set()
        watch = self._watch
        if watch is not None:
            watch.close()
        for t in self._threads:
            t.join(timeout=5)
        self.switch.network_guard = None

    def local_changed(self) -> None:
        """The switch's networks or ports changed: republish (and re-derive) now."""
        self._dirty.set()

    # ---- reachability ----------------------------------------------------------------

    def _set_up(self) -> None:
        with self._lock:
            was_down, self._up = not self._up, True
            since, self._down_since = self._down_since, None
        if was_down:
            away = time.monotonic() - since if since is not None else 0.0
            log.info("cluster: etcd reachable (%s) after %.1f s", self._pool.current.url, away)

    def _set_down(self, why: str) -> None:
        now = time.monotonic()
        with self._lock:
            was_up, self._up = self._up, False
            self._last_error = why
            self.counters["etcd_errors"] += 1
            if self._down_since is None:
                self._down_since = now
            since = self._down_since
            due = was_up or now - self._last_down_log >= DOWN_LOG_EVERY_S
            if due:
                self._last_down_log = now
        if due:
            log.warning("cluster: etcd unreachable for %.0f s, forwarding on the last known state: %s",
                        now - since, why)
        watch = self._watch
        if watch is not None and was_up:
            watch.close()  # a keep-alive that fails means the watch's member may be gone too: resync

    # ---- watching --------------------------------------------------------------------

    def _run_watch(self) -> None:
        while not self._stop.is_set():
            established = False
            try:
                self._resync()
                self._watch = Watch(self._pool, self.prefix, self._revision + 1)
                established = True
                if self._stop.is_set():
                    break
                for revision, events in self._watch:
                    self._apply_events(revision, events)
                    self._derive()
            except WatchCompacted as e:
                log.info("cluster: %s: reading everything again", e)
                continue
            except EtcdUnavailable as e:
                if self._stop.is_set():
                    break
                if established:
                    # The member under the watch may be the only one gone: read again through
                    # whichever answers before calling etcd unreachable.
                    log.info("cluster: %s; reconnecting", e)
                    continue
                self._set_down(str(e))
            finally:
                if self._watch is not None:
                    self._watch.close()
                    self._watch = None
            self._stop.wait(RETRY_S)

    def _resync(self) -> None:
        revision, kvs = self._pool.range_prefix(self.prefix)
        with self._lock:
            self._mirror = {kv.key: kv for kv in kvs}
            self._revision = revision
            if self._synced:
                self.counters["resyncs"] += 1
            self._synced = True
        self._set_up()
        self._derive()

    def _apply_events(self, revision: int, events: list[tuple[str, KeyValue]]) -> None:
        with self._lock:
            for kind, kv in events:
                if kind == "DELETE":
                    self._mirror.pop(kv.key, None)
                else:
                    self._mirror[kv.key] = kv
            self.counters["watch_events"] += len(events)
            self._revision = max(self._revision, revision)

    def _view(self) -> _View:
        with self._lock:
            items = list(self._mirror.values())
        view = _View({}, {}, {}, {}, {})
        for kv in items:
            parts = kv.key[len(self.prefix):].split("/")
            value = _json(kv.value)
            if parts[0] == "networks" and len(parts) == 2 and isinstance(value, dict):
                view.networks[parts[1]] = value.get("vni")
            elif parts[0] == "nodes" and len(parts) == 2 and isinstance(value, dict) and "vtep" in value:
                view.nodes[parts[1]] = value
                view.node_leases[parts[1]] = kv.lease
            elif parts[0] == "members" and len(parts) == 3:
                view.members.setdefault(parts[1], set()).add(parts[2])
            elif parts[0] == "macs" and len(parts) == 4 and isinstance(value, dict):
                view.macs.setdefault((parts[1], parts[2]), []).append((kv.mod_revision, parts[3], value))
        return view

    def _derive(self) -> None:
        """Bring the switch's cluster peers and remote MACs in line with the mirror."""
        with self._derive_lock:
            view = self._view()
            local = {n["name"]: n["vni"] for n in self.switch.list_networks()}
            for name, vni in view.networks.items():
                if name not in local and isinstance(vni, int) and self.switch.cluster_add_network(NetworkSpec(name, vni)):
                    log.info("cluster: network %s (VNI %d) added: defined in the cluster", name, vni)
                    local[name] = vni
                    self._dirty.set()
            with self._lock:
                usable = {n for n, vni in local.items() if vni is not None and n not in self._conflicts}
            peers: set[PeerSpec] = set()
            macs: dict[tuple[str, str], str] = {}
            addresses: list[tuple[int, str, str, str]] = []  # (revision, network, ip, mac)

            def vtep_of(node: str) -> str | None:
                vtep = view.nodes.get(node, {}).get("vtep")
                return vtep if node != self.node and isinstance(vtep, str) and vtep != self.vtep else None

            for network, nodes in view.members.items():
                if network in usable:
                    peers |= {PeerSpec(network, v) for n in nodes if (v := vtep_of(n)) is not None}
            for (network, mac), records in view.macs.items():
                live = [(rev, node) for rev, node, _ in records if node in view.nodes]
                if network not in usable or not live:
                    continue
                rev, node = max(live)  # the newest record: where the MAC was seen last
                record = next(r for rv, n, r in records if (rv, n) == (rev, node))
                ips = record.get("ips")
                if node != self.node and isinstance(ips, list):
                    addresses += [(rev, network, ip, mac) for ip in ips if isinstance(ip, str)]
                vtep = vtep_of(node)
                if vtep is not None:
                    peers.add(PeerSpec(network, vtep))
                    macs[(network, mac)] = vtep
            changes = self.switch.cluster_reconcile(peers, macs)
            changes.update(self.switch.cluster_neighbours(self._neighbours(addresses, usable)))
            if any(changes.values()):
                log.debug("cluster: %s", changes)
                with self._lock:
                    self.counters["derived_changes"] += sum(changes.values())

    def _neighbours(self, remote: list[tuple[int, str, str, str]], networks: set[str]) -> dict[tuple[str, str], str]:
        """(network, ip) -> mac that the switch answers ARP and ND for: every address the other
        nodes publish (an address claimed twice goes to the newest record) and, above them, the
        local ports' own."""
        out = {(network, ip): mac for _, network, ip, mac in sorted(remote)}
        for port in self.switch.list_ports():
            if port["network"] in networks and port.get("ip"):
                out[(port["network"], port["ip"].split("/")[0])] = port["mac"]
        return out

    # ---- publishing ------------------------------------------------------------------

    def _run_keeper(self) -> None:
        interval = self.settings.lease_ttl_s / 3
        next_keepalive = 0.0
        while not self._stop.is_set():
            try:
                if not self._lease:
                    self._lease = self._pool.grant(self.settings.lease_ttl_s)
                    with self._lock:
                        self.counters["lease_grants"] += 1
                        self._lease_ok_at = time.monotonic()
                    self._published = {}  # the old lease took its keys along: publish everything again
                    next_keepalive = time.monotonic() + interval
                    log.info("cluster: lease %x granted (TTL %d s)", self._lease, self.settings.lease_ttl_s)
                elif time.monotonic() >= next_keepalive:
                    if self._pool.keepalive(self._lease) <= 0:
                        log.warning("cluster: lease %x expired while etcd was away: publishing again", self._lease)
                        self._lease = 0
                        continue
                    with self._lock:
                        self._lease_ok_at = time.monotonic()
                    next_keepalive = time.monotonic() + interval
                self._register_networks()
                self._publish()
                self._set_up()
            except EtcdUnavailable as e:
                if LEASE_GONE in str(e):
                    # etcd answered: the lease expired before a keep-alive could tell.
                    log.warning("cluster: lease %x expired: publishing again", self._lease)
                    self._lease = 0
                    continue
                self._set_down(str(e))
            self._derive()  # local ports win over the cluster's records of the same MAC
            wait = max(0.0, next_keepalive - time.monotonic()) if self._up else RETRY_S
            if self._dirty.wait(wait):
                self._dirty.clear()

    def _records(self) -> dict[str, str]:
        """This node's keys and values as they should be in etcd now."""
        p, node = self.prefix, self.node
        records = {f"{p}nodes/{node}": json.dumps({"vtep": self.vtep, "started": round(self._started, 3)})}
        with self._lock:
            registered = {n.name for n in self._registered}
        for port in self.switch.list_ports():
            network = port["network"]
            if network not in registered:
                continue
            records[f"{p}members/{network}/{node}"] = json.dumps({"vni": self._vni(network)})
            ips = [port["ip"].split("/")[0]] if port.get("ip") else []
            records[f"{p}macs/{network}/{port['mac']}/{node}"] = json.dumps(
                {"vtep": self.vtep, "port": port["name"], "ips": ips})
        return records

    def _vni(self, network: str) -> int | None:
        with self._lock:
            return next((n.vni for n in self._registered if n.name == network), None)

    def _publish(self) -> None:
        want = self._records()
        for key, value in want.items():
            if self._published.get(key) != value:
                self._pool.put(key, value, self._lease)
                self._published[key] = value
        for key in [k for k in self._published if k not in want]:
            self._pool.delete(key)
            del self._published[key]

    # ---- networks --------------------------------------------------------------------

    def _register_networks(self) -> None:
        """Claim every local network with a VNI cluster-wide; a clash leaves it out of the cluster."""
        local = [NetworkSpec(n["name"], n["vni"]) for n in self.switch.list_networks() if n["vni"] is not None]
        with self._lock:
            self._registered &= set(local)
            todo = [n for n in local if n not in self._registered]
        for spec in todo:
            why = self._claim(spec)
            with self._lock:
                if why is None:
                    self._registered.add(spec)
                    self._conflicts.pop(spec.name, None)
                elif self._conflicts.get(spec.name) != why:
                    self._conflicts[spec.name] = why
                    log.error("cluster: network %s left out of the cluster: %s", spec.name, why)

    def _claim(self, spec: NetworkSpec) -> str | None:
        """Register `spec` in etcd; why it clashes with the cluster's networks, or None."""
        assert spec.vni is not None
        net_key, vni_key = f"{self.prefix}networks/{spec.name}", f"{self.prefix}vnis/{spec.vni}"
        if self._pool.create_all({net_key: json.dumps({"vni": spec.vni}), vni_key: spec.name}):
            log.info("cluster: network %s registered with VNI %d", spec.name, spec.vni)
            return None
        net, owner = self._pool.get(net_key), self._pool.get(vni_key)
        vni = (_json(net.value) or {}).get("vni") if net is not None else None
        if net is not None and vni != spec.vni:
            return f"network {spec.name!r} has VNI {vni} in the cluster, not {spec.vni}"
        if owner is not None and owner.value != spec.name:
            return f"VNI {spec.vni} is already used by network {owner.value!r} in the cluster"
        if net is None or owner is None:
            # Half a claim (written by hand?): complete it, the half present agrees.
            self._pool.put(net_key, json.dumps({"vni": spec.vni}))
            self._pool.put(vni_key, spec.name)
        return None

    def _guard(self, spec: NetworkSpec) -> None:
        """Refuses (409) a network that clashes with the cluster's, before it is added locally."""
        try:
            why = self._claim(spec)
        except EtcdUnavailable as e:
            raise Conflict(f"network {spec.name!r} cannot be checked against the cluster: etcd is unreachable ({e})") from None
        if why is not None:
            raise Conflict(why)
        with self._lock:
            self._registered.add(spec)
            self._conflicts.pop(spec.name, None)

    # ---- observability ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        view = self._view()
        now = time.monotonic()
        with self._lock:
            up, down_since, error = self._up, self._down_since, self._last_error
            lease, lease_ok_at = self._lease, self._lease_ok_at
            conflicts = dict(self._conflicts)
            counters = dict(self.counters)
        ports_of: dict[str, int] = {}
        for records in view.macs.values():
            for _, node, _ in records:
                ports_of[node] = ports_of.get(node, 0) + 1
        nodes = []
        for name, record in sorted(view.nodes.items()):
            ttl_left, granted = self._lease_ttl(view.node_leases.get(name, 0)) if up else (None, None)
            nodes.append({
                "name": name,
                "vtep": record.get("vtep"),
                "self": name == self.node,
                "alive": True,  # its lease holds its keys: gone when it expires
                "lease_ttl_s": ttl_left,
                # Seconds since the node last renewed its lease (granted TTL less what is left).
                "lease_age_s": None if ttl_left is None or granted is None else max(0, granted - ttl_left),
                "networks": sorted(n for n, members in view.members.items() if name in members),
                "ports": ports_of.get(name, 0),
            })
        return {
            "node": self.node,
            "vtep": self.vtep,
            "prefix": self.settings.prefix,
            "etcd": {
                "endpoints": [e.url for e in self.settings.etcd],
                "reachable": up,
                "using": self._pool.current.url,
                "unreachable_for_s": None if down_since is None else round(now - down_since, 1),
                "last_error": None if up else error,
            },
            "lease": {
                "id": f"{lease:x}" if lease else None,
                "ttl_s": self.settings.lease_ttl_s,
                "last_renewed_s_ago": None if lease_ok_at is None else round(now - lease_ok_at, 1),
            },
            "nodes": nodes,
            "networks": [{"name": n, "vni": v, "nodes": sorted(view.members.get(n, set()))}
                         for n, v in sorted(view.networks.items())],
            "conflicts": conflicts,
            "derived": self.switch.cluster_counts(),
            "counters": counters,
            # With etcd away these are the last known nodes, not a live view.
            "stale": not up,
        }

    def _lease_ttl(self, lease: int) -> tuple[int | None, int | None]:
        if not lease:
            return None, None
        try:
            left, granted = self._pool.time_to_live(lease)
        except EtcdUnavailable:
            return None, None
        return (left, granted) if left >= 0 else (None, None)

    def metrics(self) -> Iterator[Any]:
        view = self._view()
        derived = self.switch.cluster_counts()
        with self._lock:
            up = self._up
            counters = dict(self.counters)
        yield GaugeMetricFamily("vswitch_cluster_nodes", "Live nodes in the cluster, this one included.",
                                value=len(view.nodes))
        yield GaugeMetricFamily("vswitch_cluster_remote_macs", "Remote MACs installed as static FDB entries from etcd.",
                                value=derived["remote_macs"])
        yield GaugeMetricFamily("vswitch_cluster_peers", "Tunnel peers derived from etcd.", value=derived["peers"])
        yield GaugeMetricFamily("vswitch_cluster_neighbours",
                                "IPv4/IPv6 addresses the switch answers ARP and ND for itself.",
                                value=derived["neighbours"])
        answered = self.switch.neighbours_answered()
        yield CounterMetricFamily("vswitch_cluster_arp_answered", "ARP requests answered by the local switch (suppressed).",
                                  value=answered["arp_suppressed"])
        yield CounterMetricFamily("vswitch_cluster_nd_answered",
                                  "Neighbour solicitations answered by the local switch (suppressed).",
                                  value=answered["nd_suppressed"])
        yield GaugeMetricFamily("vswitch_cluster_etcd_up", "1 while etcd answers this node.", value=1 if up else 0)
        yield CounterMetricFamily("vswitch_cluster_watch_events", "Events received from the etcd watch.",
                                  value=counters["watch_events"])
        yield CounterMetricFamily("vswitch_cluster_resyncs", "Full reads of the cluster's state after a lost watch.",
                                  value=counters["resyncs"])
        yield CounterMetricFamily("vswitch_cluster_lease_grants", "Leases this node was granted (one per (re)join).",
                                  value=counters["lease_grants"])
        yield CounterMetricFamily("vswitch_cluster_etcd_errors", "Failed requests to etcd.", value=counters["etcd_errors"])
        yield CounterMetricFamily("vswitch_cluster_derived_changes",
                                  "Peers and remote MAC entries added, re-pointed or removed from etcd's state.",
                                  value=counters["derived_changes"])
