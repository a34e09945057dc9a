"""Loading the TOML config file and checking references between its items.

Items of an array are named by their 0-based position, as in ``port[2].mac``,
so every message points at one key of one table of the file.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidArgument
from .model import (MAX_PEERS, DesiredState, NetworkSpec, PeerSpec, PortSpec, StaticFdbSpec, SwitchSettings,
                    peer_problem)
from .netns import netns_identity, netns_path, resolve_netns

_ARRAYS: dict[str, Any] = {
    "network": NetworkSpec,
    "port": PortSpec,
    "peer": PeerSpec,
    "fdb": StaticFdbSpec,
}
# [cluster] is read by clusterconfig.load_cluster, so that loading a config never needs the etcd client.
TOP_LEVEL_KEYS = {"switch", "cluster", *_ARRAYS}
# Which DesiredState list each array of tables fills.
SECTIONS = {"network": "networks", "port": "ports", "peer": "peers", "fdb": "static_fdb"}


def _parse_array(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{key}: {value!r} is not an array of tables (write [[{key}]])")
    items = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where}: {item!r} is not a table")
        items.append(_ARRAYS[key].parse(item, where=where))
    return items


def _parse(data: dict[str, Any]) -> tuple[SwitchSettings, DesiredState]:
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise InvalidArgument(f"unknown top-level key {unknown[0]!r} (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    switch = data.get("switch", {})
    if not isinstance(switch, dict):
        raise InvalidArgument(f"switch: {switch!r} is not a table (write [switch])")
    settings = SwitchSettings.parse(switch, where="switch")
    state = DesiredState(
        networks=_parse_array("network", data.get("network", [])),
        ports=_parse_array("port", data.get("port", [])),
        peers=_parse_array("peer", data.get("peer", [])),
        static_fdb=_parse_array("fdb", data.get("fdb", [])),
    )
    return settings, state


def load_config(path: str | Path, *, check_netns: bool = False) -> tuple[SwitchSettings, DesiredState]:
    """Read and validate a config file; any problem raises ConfigError naming the file and key.

    Namespaces are not required to exist unless check_netns: containers may
    start after the switch.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        settings, state = _parse(data)
        check_references(state, check_netns=check_netns)
        check_peers(settings, state)
    except InvalidArgument as e:
        raise ConfigError(f"{path}: {e}") from None
    return settings, state


def parse_config(data: Any, *, check_netns: bool = True) -> tuple[SwitchSettings, DesiredState]:
    """A config document already decoded (from TOML, or JSON sent to the API), checked as
    load_config checks a file, except the peers: those are checked against the switch
    they are applied to. Raises InvalidArgument naming the key and value."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"config: expected a table/object, got {type(data).__name__}")
    settings, state = _parse(data)
    check_references(state, check_netns=check_netns)
    return settings, state


def config_document(settings: SwitchSettings, state: DesiredState) -> dict[str, Any]:
    """The config document that parse_config reads back as these settings and state.
    A value of None is the same as the key left out, which is how TOML says it."""
    doc: dict[str, Any] = {"switch": {k: v for k, v in dataclasses.asdict(settings).items() if v is not None}}
    for key, attr in SECTIONS.items():
        items = [{k: v for k, v in spec.to_dict().items() if v is not None} for spec in getattr(state, attr)]
        if items:
            doc[key] = items
    return doc


def _first_seen(seen: dict[Any, int], key: Any, i: int) -> int | None:
    """Index of an earlier item with this key, else record i and return None."""
    if key in seen:
        return seen[key]
    seen[key] = i
    return None


def check_peers(settings: SwitchSettings, state: DesiredState) -> None:
    """The rules the switch holds a peer to, checked before anything is applied, so a config
    that cannot work is refused whole instead of stopping vswitchd halfway through its start."""
    if len(state.peers) > MAX_PEERS:
        raise InvalidArgument(f"peer[{MAX_PEERS}]: more than {MAX_PEERS} peers")
    networks = {net.name: net for net in state.networks}
    for i, peer in enumerate(state.peers):
        why = peer_problem(peer, networks[peer.network], settings.vtep_ip)
        if why:
            raise InvalidArgument(f"peer[{i}]: {why}")


def check_references(state: DesiredState, *, check_netns: bool = True) -> None:
    """Check names are unique and every reference points at a defined item.

    Raises InvalidArgument naming the key and value of the first problem.
    """
    networks: dict[str, int] = {}
    vnis: dict[int, int] = {}
    for i, net in enumerate(state.networks):
        if (j := _first_seen(networks, net.name, i)) is not None:
            raise InvalidArgument(f"network[{i}].name: {net.name!r} is already defined by network[{j}]")
        if net.vni is not None and (j := _first_seen(vnis, net.vni, i)) is not None:
            raise InvalidArgument(f"network[{i}].vni: {net.vni} is already used by network[{j}] ({state.networks[j].name!r})")

    ports: dict[str, int] = {}
    interfaces: dict[Any, int] = {}
    for i, port in enumerate(state.ports):
        if (j := _first_seen(ports, port.name, i)) is not None:
            raise InvalidArgument(f"port[{i}].name: {port.name!r} is already defined by port[{j}]")
        if port.network is not None and port.network not in networks:
            raise InvalidArgument(f"port[{i}].network: {port.network!r} is not a defined network")
        for net in port.networks:
            if net not in networks:
                key = "native" if net == port.native else "trunk"
                raise InvalidArgument(f"port[{i}].{key}: {net!r} is not a defined network")
        if port.netns is None:  # a host port: its interface sits in vswitchd's own namespace
            ns_key: Any = ("host",)
        else:
            path = resolve_netns(port.netns, where=f"port[{i}].netns") if check_netns else netns_path(port.netns)
            # With the namespace at hand, /proc/PID/ns/net and /run/netns/NAME
            # for the same namespace compare equal.
            ns_key = (netns_identity(path) if check_netns else None) or path
        if (j := _first_seen(interfaces, (ns_key, port.ifname), i)) is not None:
            where = "vswitchd's namespace" if port.netns is None else f"netns {port.netns!r}"
            raise InvalidArgument(
                f"port[{i}].ifname: {port.ifname!r} in {where} is already used by port[{j}] ({state.ports[j].name!r})"
            )

    peers: dict[tuple[str, str], int] = {}
    for i, peer in enumerate(state.peers):
        if peer.network not in networks:
            raise InvalidArgument(f"peer[{i}].network: {peer.network!r} is not a defined network")
        if (j := _first_seen(peers, (peer.network, peer.remote), i)) is not None:
            raise InvalidArgument(f"peer[{i}].remote: {peer.remote!r} is already a peer of network {peer.network!r} (peer[{j}])")

    entries: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(state.static_fdb):
        if entry.network not in networks:
            raise InvalidArgument(f"fdb[{i}].network: {entry.network!r} is not a defined network")
        if entry.peer is not None:
            if (entry.network, entry.peer) not in peers:
                raise InvalidArgument(f"fdb[{i}].peer: {entry.peer!r} is not a peer of network {entry.network!r}")
        elif entry.port not in ports:
            raise InvalidArgument(f"fdb[{i}].port: {entry.port!r} is not a defined port")
        elif entry.network not in (port_networks := state.ports[ports[entry.port]].networks):
            raise InvalidArgument(
                f"fdb[{i}].port: {entry.port!r} is in network {', '.join(map(repr, port_networks))}, "
                f"not {entry.network!r}"
            )
        if (j := _first_seen(entries, (entry.network, entry.mac), i)) is not None:
            raise InvalidArgument(f"fdb[{i}].mac: {entry.mac!r} already has a static entry in network {entry.network!r} (fdb[{j}])")
