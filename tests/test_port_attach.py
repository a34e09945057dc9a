"""What ports gained for container runtimes: labels, several addresses and routes,
changes in place (PATCH), host ports and their masquerade, and the state file
that keeps them (older files still load)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness.hosts import HostVswitchd
from tests.harness.netns import Netns, NetnsFactory
from tests.test_api import Api
from vswitch.errors import InvalidArgument
from vswitch.masquerade import ruleset
from vswitch.model import NAME_RE, PortSpec, PortUpdate, attachment_port_name, check_label_filter
from vswitch.state import state_from_dict, state_to_dict

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "vswitch" / "openapi.json"


# ---- the model (no root) ----------------------------------------------------------------


def test_port_spec_new_fields_round_trip() -> None:
    data = {"name": "c1", "network": "blue", "netns": "c1", "ips": ["10.1.0.2/24", "fd00::2/64"],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.9.0.0/16"}],
            "labels": {"cni.container-id": "abc", "k": "v"}}
    spec = PortSpec.parse(data)
    assert spec.ip == "10.1.0.2/24" and spec.ips == ("10.1.0.2/24", "fd00::2/64")
    assert PortSpec.parse(spec.to_dict()) == spec
    assert spec.to_dict()["labels"] == {"cni.container-id": "abc", "k": "v"}
    host = PortSpec.parse({"name": "gw", "network": "blue", "host": True, "ip": "10.1.0.1/24", "masquerade": True})
    assert (host.netns, host.ifname, host.host, host.masquerade) == (None, "gw", True, True)
    assert PortSpec.parse(host.to_dict()) == host


def test_an_older_state_file_loads_and_is_written_back_the_same() -> None:
    old = {"version": 1, "networks": [{"name": "blue", "vni": None}], "peers": [], "static_fdb": [],
           "ports": [{"name": "c1", "network": "blue", "netns": "c1", "ifname": "eth0", "mac": "02:00:00:00:00:01",
                      "ip": "10.1.0.1/24", "mtu": 1400}]}
    state = state_from_dict(old)
    port = state.ports[0]
    assert (port.ip, port.ips, port.routes, port.labels, port.host) == ("10.1.0.1/24", ("10.1.0.1/24",), (), (), False)
    assert state_to_dict(state) == old


@pytest.mark.parametrize("data, words", [
    ({"ip": "10.1.0.1/24", "ips": ["10.1.0.2/24"]}, "not both"),
    ({"ips": ["10.1.0.1/24", "10.1.0.1/16"]}, "repeats"),
    ({"ips": "10.1.0.1/24"}, "not a list"),
    ({"routes": [{"dst": "10.0.0.1"}]}, "destination network"),
    ({"routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]}, "same IP version"),
    ({"routes": [{"dst": "0.0.0.0/0", "via": "10.1.0.1"}]}, "unknown key 'via'"),
    ({"labels": {"": "x"}}, "label key"),
    ({"labels": {"k": "a\nb"}}, "label value"),
    ({"labels": {"k": 1}}, "label value"),
    ({"labels": {f"k{i}": "v" for i in range(33)}}, "at most 32"),
    ({"host": True}, "no netns"),
    ({"host": "yes"}, "true or false"),
    ({"masquerade": True, "ip": "10.1.0.1/24"}, "only a host port"),
])
def test_port_spec_refuses(data: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        PortSpec.parse({"name": "c1", "network": "blue", "netns": "c1", **data})


def test_host_port_needs_a_short_ifname_and_an_ipv4_address_to_masquerade() -> None:
    with pytest.raises(InvalidArgument, match="needs an ifname"):
        PortSpec.parse({"name": "a-very-long-gateway-name", "network": "blue", "host": True})
    with pytest.raises(InvalidArgument, match="IPv4"):
        PortSpec.parse({"name": "gw", "network": "blue", "host": True, "ip": "fd00::1/64", "masquerade": True})


def test_port_update() -> None:
    assert PortUpdate.parse({"mtu": 1400}) == PortUpdate(mtu=1400)
    assert PortUpdate.parse({"ips": []}).ips == ()
    for bad, words in (({}, "nothing to change"), ({"name": "x"}, "unknown key"), ({"mtu": 20}, "out of range")):
        with pytest.raises(InvalidArgument, match=words):
            PortUpdate.parse(bad)


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=15))
def test_attachment_port_name_is_stable_valid_and_tells_attachments_apart(container_id: str, ifname: str) -> None:
    name = attachment_port_name(container_id, ifname)
    assert NAME_RE.fullmatch(name) and len(name) <= 63
    assert attachment_port_name(container_id, ifname) == name
    assert attachment_port_name(container_id, ifname + "x") != name
    assert attachment_port_name(container_id + "x", ifname) != name


def test_label_filter() -> None:
    assert check_label_filter("label", "k=v=w") == ("k", "v=w")
    assert check_label_filter("label", "k") == ("k", None)
    assert check_label_filter("label", "k=") == ("k", "")
    with pytest.raises(InvalidArgument):
        check_label_filter("label", "=v")


def test_masquerade_ruleset() -> None:
    text = ruleset({"gw-blue": ["10.88.5.0/24"]})
    assert "delete table ip vswitch" in text
    assert 'ip saddr 10.88.5.0/24 ip daddr != 10.88.5.0/24 ip daddr != 224.0.0.0/4 masquerade comment "port gw-blue"' in text
    assert ruleset({}).strip().splitlines() == ["table ip vswitch {}", "delete table ip vswitch"]


# ---- through the API of a real vswitchd (root) -------------------------------------------


@pytest.fixture
def host(netns_factory: NetnsFactory) -> Netns:
    return netns_factory()


@pytest.fixture
def api(host: Netns, tmp_path: Path) -> Iterator[Api]:
    """vswitchd in namespace `host`, so host ports and nft tables never touch the machine's own."""
    daemon = HostVswitchd(host, tmp_path, config="")
    try:
        daemon.start()
        yield Api(daemon, json.loads(OPENAPI_FILE.read_text()))
    finally:
        if daemon.running():
            daemon.stop()
        daemon.kill()


def _addrs(ns: Netns, ifname: str) -> list[str]:
    out = json.loads(ns.exec("ip", "-j", "addr", "show", "dev", ifname).stdout)
    return sorted(f"{a['local']}/{a['prefixlen']}" for link in out for a in link["addr_info"] if a["family"] == "inet")


def _routes(ns: Netns) -> set[tuple[str, str | None]]:
    return {(r["dst"], r.get("gateway")) for r in json.loads(ns.exec("ip", "-j", "-4", "route").stdout)}


@pytest.mark.root
def test_labels_addresses_routes_and_filters(api: Api, netns_factory: NetnsFactory) -> None:
    c1, c2 = netns_factory(), netns_factory()
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    api.ok("POST", "/v1/networks", {"name": "red"}, expect=201)
    port = api.ok("POST", "/v1/ports", {
        "name": "c1", "network": "blue", "netns": c1.name, "ips": ["10.1.0.2/24", "10.2.0.2/24"],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.9.0.0/16", "gw": "10.2.0.1"}],
        "labels": {"app": "web", "cni.network": "blue"}}, expect=201)
    assert port["ips"] == ["10.1.0.2/24", "10.2.0.2/24"] and port["ip"] == "10.1.0.2/24"
    assert port["labels"] == {"app": "web", "cni.network": "blue"} and not port["host"]
    assert _addrs(c1, "eth0") == ["10.1.0.2/24", "10.2.0.2/24"]
    assert {("default", "10.1.0.1"), ("10.9.0.0/16", "10.2.0.1")} <= _routes(c1)
    api.ok("POST", "/v1/ports", {"name": "c2", "network": "red", "netns": c2.name, "labels": {"app": "db"}}, expect=201)

    def names(query: str) -> list[str]:
        return [p["name"] for p in api.ok("GET", f"/v1/ports{query}")]

    assert names("") == ["c1", "c2"]
    assert names("?label=app") == ["c1", "c2"]
    assert names("?label=app=db") == ["c2"]
    assert names("?label=cni.network=blue") == ["c1"]
    assert names("?network=red") == ["c2"]
    assert names("?network=red&label=app=web") == []
    assert api("GET", "/v1/ports?network=green")[0] == 404
    assert api("GET", "/v1/ports?label==x")[0] == 400


@pytest.mark.root
def test_patch_changes_addresses_routes_and_mtu_in_place(api: Api, netns_factory: NetnsFactory) -> None:
    c1, c2 = netns_factory(), netns_factory()
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    before = api.ok("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": c1.name, "ip": "10.1.0.1/24",
                                          "routes": [{"dst": "10.9.0.0/16", "gw": "10.1.0.254"}]}, expect=201)
    api.ok("POST", "/v1/ports", {"name": "c2", "network": "blue", "netns": c2.name, "ip": "10.1.0.2/24"}, expect=201)
    api.ok("POST", "/v1/fdb", {"network": "blue", "mac": "02:00:00:00:00:99", "port": "c1"}, expect=201)
    c1.exec("ip", "addr", "add", "10.7.0.1/24", "dev", "eth0")  # the container's own: PATCH leaves it
    ifindex = c1.link("eth0")["ifindex"]

    after = api.ok("PATCH", "/v1/ports/c1", {"ips": ["10.1.0.11/24", "10.3.0.1/24"], "mtu": 1300,
                                             "routes": [{"dst": "10.8.0.0/16", "gw": "10.3.0.254"}]})
    assert (after["ips"], after["mtu"], after["mac"]) == (["10.1.0.11/24", "10.3.0.1/24"], 1300, before["mac"])
    link = c1.link("eth0")
    assert (link["ifindex"], link["mtu"], link["address"]) == (ifindex, 1300, before["mac"])
    assert _addrs(c1, "eth0") == ["10.1.0.11/24", "10.3.0.1/24", "10.7.0.1/24"]
    routes = _routes(c1)
    assert ("10.8.0.0/16", "10.3.0.254") in routes and ("10.9.0.0/16", "10.1.0.254") not in routes
    # The datapath took the new MTU and kept the static entry; traffic still flows.
    assert any(e["mac"] == "02:00:00:00:00:99" and e["port"] == "c1" for e in api.ok("GET", "/v1/fdb"))
    assert "2 received" in c2.exec("ping", "-c", "2", "-i", "0.2", "-W", "5", "10.1.0.11").stdout
    assert "1 received" in c2.exec("ping", "-c", "1", "-W", "5", "-s", "1272", "-M", "do", "10.1.0.11").stdout

    snapshot = api.snapshot()
    for body, status in (({}, 400), ({"netns": "x"}, 400), ({"mtu": 10}, 400), ({"ips": ["10.1.0.1"]}, 400),
                         ({"routes": [{"dst": "10.5.0.0/16", "gw": "10.66.0.1"}]}, 400)):
        assert api("PATCH", "/v1/ports/c1", body)[0] == status, body
    assert api("PATCH", "/v1/ports/nope", {"mtu": 1400})[0] == 404
    assert api.snapshot() == snapshot


@pytest.mark.root
def test_host_port_masquerades_until_it_goes(api: Api, host: Netns) -> None:
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    port = api.ok("POST", "/v1/ports", {"name": "gw", "network": "blue", "host": True, "ip": "10.88.0.1/24",
                                        "masquerade": True}, expect=201)
    assert (port["netns"], port["host"], port["ifname"], port["state"]) == (None, True, "gw", "up")
    assert _addrs(host, "gw") == ["10.88.0.1/24"]
    rules = host.exec("nft", "list", "table", "ip", "vswitch").stdout
    assert "ip saddr 10.88.0.0/24" in rules and "masquerade" in rules
    assert host.exec("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    # A second subnet by PATCH joins the rule set.
    api.ok("PATCH", "/v1/ports/gw", {"ips": ["10.88.0.1/24", "10.89.0.1/24"]})
    assert "ip saddr 10.89.0.0/24" in host.exec("nft", "list", "table", "ip", "vswitch").stdout
    assert api("PATCH", "/v1/ports/gw", {"ips": []})[0] == 400  # masquerade needs an IPv4 subnet
    assert api("POST", "/v1/ports", {"name": "gw2", "network": "blue", "host": True, "ifname": "gw"})[0] == 409
    api.ok("DELETE", "/v1/ports/gw", expect=204)
    assert host.link("gw") is None
    assert host.exec("nft", "list", "table", "ip", "vswitch", check=False).returncode != 0


@pytest.mark.root
def test_new_port_fields_survive_a_restart(api: Api, host: Netns, netns_factory: NetnsFactory) -> None:
    c1 = netns_factory()
    api.ok("POST", "/v1/networks", {"name": "blue"}, expect=201)
    api.ok("POST", "/v1/ports", {"name": "gw", "network": "blue", "host": True, "ip": "10.88.0.1/24",
                                 "masquerade": True, "labels": {"role": "gateway"}}, expect=201)
    api.ok("POST", "/v1/ports", {"name": "c1", "network": "blue", "netns": c1.name, "ips": ["10.88.0.2/24"],
                                 "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}], "labels": {"app": "web"}},
           expect=201)
    snapshot = api.snapshot()
    api.daemon.stop()
    assert host.link("gw") is not None  # persistent, as a container's interface is
    api.daemon.start()
    assert api.snapshot() == snapshot
    assert "masquerade" in host.exec("nft", "list", "table", "ip", "vswitch").stdout
    assert "1 received" in c1.exec("ping", "-c", "1", "-W", "5", "10.88.0.1").stdout
    api.ok("DELETE", "/v1/ports/gw", expect=204)


@pytest.mark.root
def test_vswitchctl_port_verbs_for_runtimes(api: Api, host: Netns, netns_factory: NetnsFactory) -> None:
    d = api.daemon
    c1 = netns_factory()
    d.ctl("network", "add", "blue")
    gw = d.ctl("port", "add", "gw", "--network", "blue", "--host", "--ip", "10.88.0.1/24", "--masquerade",
               "--label", "role=gateway")
    assert gw["host"] and gw["masquerade"] and gw["labels"] == {"role": "gateway"}
    port = d.ctl("port", "add", "c1", "--network", "blue", "--netns", c1.name, "--ip", "10.88.0.2/24",
                 "--ip", "10.89.0.2/24", "--route", "0.0.0.0/0,10.88.0.1", "--label", "app=web")
    assert port["ips"] == ["10.88.0.2/24", "10.89.0.2/24"] and port["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}]
    assert [p["name"] for p in d.ctl("port", "list", "--label", "app=web")] == ["c1"]
    table = d.ctl_run("port", "list", json_output=False).stdout.splitlines()
    assert table[0].split() == ["NAME", "NETWORK", "NETNS", "IFNAME", "MAC", "IP", "MTU", "STATE", "SECURITY", "LABELS"]
    assert "(host)" in table[1] and "role=gateway" in table[1] and "app=web" in table[2]
    changed = d.ctl("port", "set", "c1", "--ip", "10.88.0.3/24", "--mtu", "1400")
    assert (changed["ips"], changed["mtu"]) == (["10.88.0.3/24"], 1400)
    shown = d.ctl_run("port", "show", "c1", json_output=False).stdout
    assert "10.88.0.3/24" in shown and "0.0.0.0/0 via 10.88.0.1" in shown and "label app" in shown
    bad = d.ctl_run("port", "add", "c2", "--network", "blue", "--netns", c1.name, "--route", "0.0.0.0/0,")
    assert bad.returncode == 2 and "DST,GW" in bad.stderr
    bad = d.ctl_run("port", "set", "c1", "--mtu", "5")
    assert bad.returncode == 1 and "mtu" in bad.stderr
    d.ctl("port", "del", "gw")


def test_config_file_takes_the_new_port_keys(tmp_path: Path) -> None:
    from vswitch.config import load_config
    from vswitch.errors import ConfigError

    cfg = tmp_path / "vswitch.toml"
    cfg.write_text('[[network]]\nname = "blue"\n'
                   '[[port]]\nname = "gw"\nnetwork = "blue"\nhost = true\nips = ["10.1.0.1/24", "10.2.0.1/24"]\n'
                   'masquerade = true\nlabels = { role = "gateway" }\n'
                   '[[port]]\nname = "c1"\nnetwork = "blue"\nnetns = "/proc/self/ns/net"\nifname = "vst0"\n'
                   'routes = [{ dst = "0.0.0.0/0", gw = "10.1.0.1" }]\n')
    _, state = load_config(cfg, check_netns=True)
    gw, c1 = state.ports
    assert (gw.host, gw.netns, gw.ips, gw.label_map) == (True, None, ("10.1.0.1/24", "10.2.0.1/24"), {"role": "gateway"})
    assert c1.routes[0].gw == "10.1.0.1"
    cfg.write_text(cfg.read_text() + '[[port]]\nname = "gw2"\nnetwork = "blue"\nhost = true\nifname = "gw"\n')
    with pytest.raises(ConfigError, match=r"port\[2\].ifname: 'gw' in vswitchd's namespace is already used by port\[0\]"):
        load_config(cfg, check_netns=True)
