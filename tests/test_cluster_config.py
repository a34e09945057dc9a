"""The [cluster] table, --etcd URLs and static FDB entries that point at a peer (no root, no etcd)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vswitch.clusterconfig import ClusterSettings, Endpoint, load_cluster, parse_endpoints
from vswitch.config import check_references, load_config
from vswitch.errors import ConfigError, InvalidArgument
from vswitch.model import DesiredState, NetworkSpec, PeerSpec, StaticFdbSpec


def test_endpoints_parse() -> None:
    assert parse_endpoints("http://10.0.0.1:2379,https://etcd.example:4001, http://[::1]") == (
        Endpoint("http", "10.0.0.1", 2379), Endpoint("https", "etcd.example", 4001), Endpoint("http", "::1", 2379))
    assert parse_endpoints(["http://a:1"])[0].url == "http://a:1"
    assert Endpoint("http", "::1", 2379).url == "http://[::1]:2379"


@pytest.mark.parametrize("bad, why", [
    ("", "is not an etcd client URL"),
    ("127.0.0.1:2379", "is not an etcd client URL"),
    ("ftp://a:1", "is not an etcd client URL"),
    ("http://", "is not an etcd client URL"),
    ("http://a:99999", "is not an etcd client URL"),
    ("http://a:x", "is not an etcd client URL"),
    ("http://a:1/v3", "no user, path or query"),
    ("http://u:p@a:1", "no user, path or query"),
    ("http://a:1,http://a:1", "listed twice"),
    ("http://a:1,", "is not an etcd client URL"),
])
def test_bad_endpoints_refused(bad: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        parse_endpoints(bad, "--etcd")


def test_cluster_defaults() -> None:
    s = ClusterSettings.parse({"etcd": ["http://a:1"]})
    assert (s.prefix, s.lease_ttl_s) == ("/vswitch", 10)
    assert s.node == socket.gethostname().split(".")[0]


@pytest.mark.parametrize("table, why", [
    ({}, "missing required key 'etcd'"),
    ({"etcd": []}, "is not a list of etcd URLs"),
    ({"etcd": "http://a:1", "prefix": "vswitch"}, "is not a key prefix"),
    ({"etcd": "http://a:1", "prefix": "/vswitch/"}, "is not a key prefix"),
    ({"etcd": "http://a:1", "node": "a b"}, "is not a valid name"),
    ({"etcd": "http://a:1", "lease_ttl_s": 1}, "out of range"),
    ({"etcd": "http://a:1", "ttl": 5}, "unknown key 'ttl'"),
])
def test_bad_cluster_tables_refused(table: dict, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        ClusterSettings.parse(table)


def test_load_cluster_from_config_and_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('[cluster]\netcd = ["http://10.0.0.1:2379"]\nnode = "n1"\nlease_ttl_s = 4\nprefix = "/ov"\n')
    s = load_cluster(cfg, None)
    assert s is not None and (s.etcd[0].url, s.node, s.lease_ttl_s, s.prefix) == ("http://10.0.0.1:2379", "n1", 4, "/ov")
    # --etcd replaces the list and keeps the rest of the table.
    s = load_cluster(cfg, "http://10.0.0.9:2379")
    assert s is not None and ([e.url for e in s.etcd], s.node) == (["http://10.0.0.9:2379"], "n1")
    # load_config accepts the table (and ignores it).
    load_config(cfg)
    plain = tmp_path / "p.toml"
    plain.write_text("")
    assert load_cluster(plain, None) is None and load_cluster(None, None) is None
    with pytest.raises(ConfigError, match="--etcd"):
        load_cluster(plain, "nope")
    cfg.write_text('[cluster]\netcd = ["http://a:1"]\nfoo = 1\n')
    with pytest.raises(ConfigError, match="unknown key 'foo'"):
        load_cluster(cfg, None)


def test_static_fdb_spec_port_or_peer() -> None:
    assert StaticFdbSpec.parse({"network": "b", "mac": "02:00:00:00:00:01", "peer": "192.0.2.2"}).to_dict() == {
        "network": "b", "mac": "02:00:00:00:00:01", "peer": "192.0.2.2"}
    assert StaticFdbSpec.parse({"network": "b", "mac": "02:00:00:00:00:01", "port": "c1"}).port == "c1"
    for body in ({"network": "b", "mac": "02:00:00:00:00:01"},
                 {"network": "b", "mac": "02:00:00:00:00:01", "port": "c1", "peer": "192.0.2.2"}):
        with pytest.raises(InvalidArgument, match="exactly one of port or peer"):
            StaticFdbSpec.parse(body)
    with pytest.raises(InvalidArgument, match="fdb.peer"):
        StaticFdbSpec.parse({"network": "b", "mac": "02:00:00:00:00:01", "peer": "nope"})


def test_config_fdb_entry_must_name_a_peer_of_its_network() -> None:
    state = DesiredState(networks=[NetworkSpec("blue", 100)], peers=[PeerSpec("blue", "192.0.2.2")],
                         static_fdb=[StaticFdbSpec("blue", "02:00:00:00:00:0a", peer="192.0.2.2")])
    check_references(state, check_netns=False)
    state.static_fdb.append(StaticFdbSpec("blue", "02:00:00:00:00:0b", peer="192.0.2.3"))
    with pytest.raises(InvalidArgument, match=r"fdb\[1\].peer: '192.0.2.3' is not a peer of network 'blue'"):
        check_references(state, check_netns=False)
