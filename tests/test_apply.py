"""Declarative config: the plan over spec objects, `vswitchctl apply` and `export`, SIGHUP."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.harness.daemon import Vswitchd, loopback_vtep_config
from tests.harness.netns import Netns, NetnsFactory
from vswitch.config import config_document, parse_config
from vswitch.errors import InvalidArgument
from vswitch.model import DesiredState, NetworkSpec, PeerSpec, PortSpec, StaticFdbSpec, SwitchSettings
from vswitch.reconcile import make_plan, port_change

# --- the plan ---------------------------------------------------------------------------

BASE = DesiredState(
    networks=[NetworkSpec("blue", 100), NetworkSpec("red")],
    ports=[PortSpec("c1", "blue", "ns1", mac="02:00:00:00:00:01"), PortSpec("c2", "red", "ns2")],
    peers=[PeerSpec("blue", "192.0.2.2")],
    static_fdb=[StaticFdbSpec("blue", "02:00:00:00:00:09", "c1")],
)
SETTINGS = SwitchSettings(vtep_ip="192.0.2.1")


def _described(current: DesiredState, desired: DesiredState, wanted: SwitchSettings = SETTINGS) -> list[str]:
    return make_plan(current, desired, SETTINGS, wanted).describe()


def test_the_same_state_plans_nothing_whatever_the_order() -> None:
    shuffled = DesiredState(*(list(reversed(getattr(BASE, f.name))) for f in dataclasses.fields(DesiredState)))
    assert _described(BASE, shuffled) == []


def test_additions_and_removals_go_in_dependency_order() -> None:
    assert _described(DesiredState(), BASE) == [
        "add network blue", "add network red", "add port c1", "add port c2", "add peer blue/192.0.2.2",
        "add fdb blue/02:00:00:00:00:09",
    ]
    plan = make_plan(BASE, DesiredState(), SETTINGS, SETTINGS)
    assert [(removing, s.label) for removing, s in plan.actions] == [
        (True, "fdb blue/02:00:00:00:00:09"), (True, "peer blue/192.0.2.2"), (True, "port c1"), (True, "port c2"),
        (True, "network blue"), (True, "network red"),
    ]


def test_a_changed_network_is_re_created_with_all_that_depends_on_it() -> None:
    desired = dataclasses.replace(BASE, networks=[NetworkSpec("blue", 200), NetworkSpec("red")])
    plan = make_plan(BASE, desired, SETTINGS, SETTINGS)
    assert plan.describe() == [
        "re-create fdb blue/02:00:00:00:00:09 (network blue is re-created)",
        "re-create peer blue/192.0.2.2 (network blue is re-created)",
        "re-create port c1 (network blue is re-created)",
        "re-create network blue (vni changed)",
    ]
    # All of it goes before the network, and comes back after it.
    order = [(removing, s.kind) for removing, s in plan.actions]
    assert order == [(True, "fdb"), (True, "peer"), (True, "port"), (True, "network"),
                     (False, "network"), (False, "port"), (False, "peer"), (False, "fdb")]


def test_a_changed_port_is_re_created_with_its_static_entries() -> None:
    desired = dataclasses.replace(BASE, ports=[PortSpec("c1", "blue", "ns1", mac="02:00:00:00:00:05", ip="10.0.0.1/24"),
                                               PortSpec("c2", "red", "ns2")])
    assert _described(BASE, desired) == [
        "re-create fdb blue/02:00:00:00:00:09 (port c1 is re-created)",
        "re-create port c1 (ip, mac changed)",
    ]
    assert port_change(BASE.ports[0], desired.ports[0]) == "recreate"


def test_addresses_routes_and_mtu_change_in_place_and_a_dropped_mtu_re_creates() -> None:
    old = PortSpec("c1", "blue", "ns1", mac="02:00:00:00:00:01", ip="10.0.0.1/24", mtu=1400)
    readdressed = dataclasses.replace(old, ip=None, ips=("10.0.0.2/24", "10.0.1.2/24"), mtu=1300)
    assert port_change(old, readdressed) == "update"
    desired = dataclasses.replace(BASE, ports=[readdressed, BASE.ports[1]])
    current = dataclasses.replace(BASE, ports=[old, BASE.ports[1]])
    # The static entry on c1 stays: the port is not re-created.
    assert _described(current, desired) == ["change port c1 (ip, ips, mtu changed)"]
    # No MTU in the file means the network's default, which only a new port gets.
    assert port_change(old, dataclasses.replace(old, mtu=None)) == "recreate"
    assert port_change(old, dataclasses.replace(old, mac="02:00:00:00:00:02")) == "recreate"


def test_switch_settings_that_differ_are_named_as_needing_a_restart() -> None:
    wanted = dataclasses.replace(SETTINGS, mac_aging_s=60, io_mode="poll")
    plan = make_plan(BASE, BASE, SETTINGS, wanted)
    assert plan.changes == []
    assert plan.restart_needed == [{"key": "mac_aging_s", "running": 300, "file": 60},
                                   {"key": "io_mode", "running": "auto", "file": "poll"}]


@dataclass(frozen=True)
class LabelledPort:
    """A port spec with a field PortSpec lacks, as a later model may add."""

    name: str
    network: str
    labels: dict[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "network": self.network, "labels": self.labels, "addresses": list(self.addresses)}


def test_the_plan_sees_fields_it_was_not_written_for() -> None:
    nets = [NetworkSpec("blue")]
    old = DesiredState(networks=nets, ports=[LabelledPort("c1", "blue", {"app": "web"}, ("10.0.0.1/24",))])  # type: ignore[list-item]
    same = DesiredState(networks=nets, ports=[LabelledPort("c1", "blue", {"app": "web"}, ("10.0.0.1/24",))])  # type: ignore[list-item]
    new = DesiredState(networks=nets, ports=[LabelledPort("c1", "blue", {"app": "db"}, ("10.0.0.1/24", "fd00::1/64"))])  # type: ignore[list-item]
    assert _described(old, same) == []
    assert _described(old, new) == ["re-create port c1 (addresses, labels changed)"]


def test_config_document_round_trips_through_toml() -> None:
    import tomli_w

    settings = dataclasses.replace(SETTINGS, mac_aging_s=60)
    doc = config_document(settings, BASE)
    assert "vni" not in doc["network"][1]  # None is a key left out, as TOML has no null
    back = parse_config(tomllib.loads(tomli_w.dumps(doc)), check_netns=False)
    assert back == (settings, BASE)


def test_an_empty_state_exports_only_the_settings() -> None:
    assert config_document(SwitchSettings(), DesiredState()).keys() == {"switch"}


@pytest.mark.parametrize(("doc", "message"), [
    ({"port": [{"name": "c1", "network": "nope", "netns": "x"}]}, "port[0].network: 'nope' is not a defined network"),
    ({"network": [{"name": "a"}, {"name": "a"}]}, "network[1].name: 'a' is already defined by network[0]"),
    ({"switch": {"mac_aging_s": "x"}}, "switch.mac_aging_s: 'x' is not an integer"),
    ({"bridge": []}, "unknown top-level key 'bridge'"),
    ([], "config: expected a table/object, got list"),
])
def test_parse_config_names_the_key_of_a_bad_document(doc: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(doc, check_netns=False)


# --- a running vswitchd -----------------------------------------------------------------


def _toml(networks: list[dict[str, Any]], ports: list[dict[str, Any]], peers: list[dict[str, Any]] = (),  # type: ignore[assignment]
          fdb: list[dict[str, Any]] = (), switch: str = "") -> str:  # type: ignore[assignment]
    import tomli_w

    doc: dict[str, Any] = tomllib.loads(switch)
    for key, items in (("network", networks), ("port", ports), ("peer", peers), ("fdb", fdb)):
        if items:
            doc[key] = list(items)
    return tomli_w.dumps(doc)


def _ports(d: Vswitchd) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in d.ctl("port", "list")}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def setup(vswitchd_factory: Callable[..., Vswitchd], netns_factory: NetnsFactory) -> tuple[Vswitchd, list[Netns], str]:
    nss = [netns_factory() for _ in range(3)]
    vtep = loopback_vtep_config()
    config = _toml(
        [{"name": "blue", "vni": 100}, {"name": "red"}],
        [{"name": "c1", "network": "blue", "netns": nss[0].name, "mac": "02:00:00:00:00:01"},
         {"name": "c2", "network": "red", "netns": nss[1].name}],
        [{"network": "blue", "remote": "127.0.0.2"}],
        [{"network": "blue", "mac": "02:00:00:00:00:09", "port": "c1"}],
        switch=vtep,
    )
    return vswitchd_factory(config), nss, vtep


@pytest.mark.root
def test_apply_creates_changes_and_removes_to_match_the_file(setup: tuple[Vswitchd, list[Netns], str], tmp_path: Path) -> None:
    d, nss, vtep = setup
    before_c2 = nss[1].link("eth0")
    assert before_c2 is not None
    wanted = _toml(
        [{"name": "blue", "vni": 100}, {"name": "green", "vni": 300}],
        [{"name": "c1", "network": "blue", "netns": nss[0].name, "mac": "02:00:00:00:00:05"},
         {"name": "c3", "network": "green", "netns": nss[2].name, "ip": "10.3.0.1/24"}],
        [{"network": "blue", "remote": "127.0.0.2"}, {"network": "green", "remote": "127.0.0.3"}],
        [{"network": "blue", "mac": "02:00:00:00:00:0a", "port": "c1"}],
        switch=vtep,
    )
    path = _write(tmp_path, "wanted.toml", wanted)
    result = d.ctl("apply", str(path))
    assert result["dry_run"] is False and result["restart_needed"] == []
    assert sorted(c["description"] for c in result["changes"]) == sorted([
        "remove fdb blue/02:00:00:00:00:09", "add fdb blue/02:00:00:00:00:0a", "re-create port c1 (mac changed)",
        "remove port c2", "add port c3", "remove network red", "add network green", "add peer green/127.0.0.3",
    ])
    ports = _ports(d)
    assert sorted(ports) == ["c1", "c3"] and ports["c1"]["mac"] == "02:00:00:00:00:05"
    assert nss[1].link("eth0") is None  # c2's interface went with it
    link = nss[0].link("eth0")
    assert link is not None and link["address"] == "02:00:00:00:00:05"
    assert "10.3.0.1" in nss[2].exec("ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert sorted((n["name"], n["vni"]) for n in d.ctl("network", "list")) == [("blue", 100), ("green", 300)]
    assert sorted((p["network"], p["remote"]) for p in d.ctl("peer", "list")) == [("blue", "127.0.0.2"), ("green", "127.0.0.3")]
    assert [(e["mac"], e["port"]) for e in d.ctl("fdb", "show") if e["static"]] == [("02:00:00:00:00:0a", "c1")]
    # Applying it again finds nothing to do; the state file holds the result across a restart.
    assert d.ctl("apply", str(path))["changes"] == []
    exported = d.ctl_run("export", json_output=False).stdout
    assert d.stop() == 0
    d.start()
    assert d.ctl_run("export", json_output=False).stdout == exported


@pytest.mark.root
def test_apply_changes_an_address_in_place(setup: tuple[Vswitchd, list[Netns], str], tmp_path: Path) -> None:
    d, nss, _ = setup
    before = nss[1].link("eth0")
    assert before is not None
    document = tomllib.loads(d.ctl_run("export", json_output=False).stdout)
    for port in document["port"]:
        if port["name"] == "c2":
            port["ip"] = "10.2.0.7/24"
    import tomli_w

    result = d.ctl("apply", str(_write(tmp_path, "readdressed.toml", tomli_w.dumps(document))))
    assert [c["description"] for c in result["changes"]] == ["change port c2 (ip changed)"]
    after = nss[1].link("eth0")
    assert after is not None and after["ifindex"] == before["ifindex"]  # the same interface, not a new one
    assert "10.2.0.7/24" in nss[1].exec("ip", "-4", "addr", "show", "dev", "eth0").stdout
    assert _ports(d)["c2"]["ips"] == ["10.2.0.7/24"]


@pytest.mark.root
def test_export_is_taken_back_by_apply_unchanged(setup: tuple[Vswitchd, list[Netns], str], tmp_path: Path) -> None:
    d, _, _ = setup
    proc = d.ctl_run("export", json_output=False)
    assert proc.returncode == 0, proc.stderr
    exported = proc.stdout
    doc = tomllib.loads(exported)
    assert doc["switch"]["vtep_ip"] == "127.0.0.1"
    assert [p["name"] for p in doc["port"]] == ["c1", "c2"]
    path = _write(tmp_path, "exported.toml", exported)
    dry = d.ctl_run("apply", "--dry-run", str(path), json_output=False)
    assert (dry.returncode, dry.stdout.strip()) == (0, "dry run: 0 changes planned, nothing was changed")
    applied = d.ctl_run("apply", str(path), json_output=False)
    assert (applied.returncode, applied.stdout.strip()) == (0, "no changes: the switch matches the file")
    assert d.ctl_run("export", json_output=False).stdout == exported
    assert d.ctl("export") == doc  # --json gives the same document


@pytest.mark.root
def test_dry_run_and_invalid_files_change_nothing(setup: tuple[Vswitchd, list[Netns], str], tmp_path: Path) -> None:
    d, nss, vtep = setup
    before = d.ctl("export")
    smaller = _toml([{"name": "blue", "vni": 100}], [{"name": "c1", "network": "blue", "netns": nss[0].name}], switch=vtep)
    dry = d.ctl("apply", "--dry-run", str(_write(tmp_path, "dry.toml", smaller)))
    assert dry["dry_run"] is True and len(dry["changes"]) == 5  # fdb, peer, c1 (mac), c2, red
    assert d.ctl("export") == before
    bad = {
        "syntax.toml": ("[[network]\nname = 1\n", "invalid TOML"),
        "reference.toml": ('[[port]]\nname = "c9"\nnetwork = "nope"\nnetns = "x"\n', "port[0].network: 'nope' is not a defined network"),
        "netns.toml": (_toml([{"name": "blue"}], [{"name": "c9", "network": "blue", "netns": "vst-no-such-ns"}]),
                       "port[0].netns: 'vst-no-such-ns' does not exist"),
        "peer.toml": (_toml([{"name": "blue"}], [], [{"network": "blue", "remote": "127.0.0.2"}]),
                      "peer[0]: network 'blue' has no VNI"),
        "value.toml": (smaller.replace('vni = 100', 'vni = "100"'), "network[0].vni: '100' is not an integer"),
        "date.toml": ("[[network]]\nname = 2020-01-01\n", "dates and times are not config values"),
    }
    for name, (text, message) in bad.items():
        proc = d.ctl_run("apply", str(_write(tmp_path, name, text)), json_output=False)
        assert proc.returncode == 1 and message in proc.stderr and name in proc.stderr, (name, proc.stderr)
        assert d.ctl("export") == before, name
    missing = d.ctl_run("apply", str(tmp_path / "missing.toml"), json_output=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr


@pytest.mark.root
def test_switch_keys_are_named_as_needing_a_restart_and_left_alone(
        setup: tuple[Vswitchd, list[Netns], str], tmp_path: Path) -> None:
    d, _, _ = setup
    exported = d.ctl_run("export", json_output=False).stdout
    changed = exported.replace("mac_aging_s = 300", "mac_aging_s = 60")
    assert changed != exported
    proc = d.ctl_run("apply", str(_write(tmp_path, "aging.toml", changed)), json_output=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "no changes: the switch matches the file",
        "needs a restart ([switch] settings stay as they are while vswitchd runs):",
        "  switch.mac_aging_s: running 300, file 60",
    ]
    assert d.ctl("export")["switch"]["mac_aging_s"] == 300


@pytest.mark.root
def test_sighup_re_applies_the_config_file(setup: tuple[Vswitchd, list[Netns], str]) -> None:
    d, nss, vtep = setup
    assert d.proc is not None
    d.config_path.write_text(_toml([{"name": "blue", "vni": 100}],
                                   [{"name": "c3", "network": "blue", "netns": nss[2].name}], switch=vtep)
                             .replace("[switch]\n", "[switch]\nmac_aging_s = 60\n", 1))
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while sorted(_ports(d)) != ["c3"]:
        assert time.monotonic() < deadline, d.run_stderr
        time.sleep(0.1)
    assert d.ctl("peer", "list") == [] and d.ctl("network", "list")[0]["name"] == "blue"
    while "applied: " not in d.run_stderr:
        assert time.monotonic() < deadline, d.run_stderr
        time.sleep(0.1)
    log = d.run_stderr
    assert "switch.mac_aging_s = 60 in" in log and "needs a restart (running with 300)" in log
    # A broken file changes nothing, is logged, and leaves vswitchd running.
    before = d.ctl("export")
    d.config_path.write_text("[[port]]\nname = \n")
    d.proc.send_signal(signal.SIGHUP)
    while "invalid TOML" not in d.run_stderr:
        assert time.monotonic() < deadline, d.run_stderr
        time.sleep(0.1)
    assert d.running() and d.ctl("export") == before


@pytest.mark.root
def test_apply_through_the_api_checks_its_body(setup: tuple[Vswitchd, list[Netns], str]) -> None:
    d, _, _ = setup
    before = d.ctl("export")
    for body, message in [({"config": {}, "dry_run": "yes"}, "dry_run: 'yes' is not true or false"),
                          ({"configs": {}}, "unknown key 'configs'"), ({"config": []}, "expected a table/object")]:
        status, answer = d.api("POST", "/v1/config", body)
        assert status == 400 and message in answer["detail"], answer
    status, answer = d.api("POST", "/v1/config", {"config": before, "dry_run": True})
    assert (status, answer) == (200, {"dry_run": True, "changes": [], "restart_needed": []})
    # A document bigger than other requests may be is accepted (up to 4 MiB).
    padded = json.dumps({"config": before, "dry_run": True}).replace("{", "{" + " " * 100_000, 1)
    status, answer = d.api("POST", "/v1/config", padded)
    assert status == 200, answer


def test_vswitchctl_apply_reads_the_file_before_it_calls(tmp_path: Path) -> None:
    import sys

    from tests.harness.daemon import REPO_ROOT

    path = _write(tmp_path, "bad.toml", "[[network]\n")
    proc = subprocess.run([sys.executable, "-m", "vswitch.cli", "--socket", str(tmp_path / "none.sock"), "apply", str(path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "bad.toml: invalid TOML" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.root
def test_a_change_the_kernel_refuses_midway_stops_there_and_keeps_what_was_done(
        setup: tuple[Vswitchd, list[Netns], str], tmp_path: Path) -> None:
    d, nss, vtep = setup
    # An interface of another kind already holds the name the file asks for.
    nss[2].exec("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth2")
    wanted = _toml(
        [{"name": "blue", "vni": 100}, {"name": "red"}],
        [{"name": "c1", "network": "blue", "netns": nss[0].name, "mac": "02:00:00:00:00:01"},
         {"name": "c3", "network": "red", "netns": nss[2].name, "ifname": "eth1"}],
        [], [], switch=vtep)
    proc = d.ctl_run("apply", str(_write(tmp_path, "clash.toml", wanted)), json_output=False)
    assert proc.returncode == 1
    assert "adding port c3 failed: " in proc.stderr and "non-TAP interface eth1" in proc.stderr, proc.stderr
    assert "actions were carried out before it and are kept, the rest were not" in proc.stderr
    # The removals before it were made and saved; c3 was not made.
    assert sorted(_ports(d)) == ["c1"]
    assert d.ctl("peer", "list") == [] and [e for e in d.ctl("fdb", "show") if e["static"]] == []
    exported = d.ctl("export")
    assert d.stop() == 0
    d.start()
    assert d.ctl("export") == exported


@pytest.mark.root
def test_config_routes_answer_as_openapi_json_says(setup: tuple[Vswitchd, list[Netns], str]) -> None:
    from tests.test_api import check_against_openapi

    d, _, _ = setup
    doc = d.api("GET", "/v1/openapi.json")[1]
    status, exported = d.api("GET", "/v1/config")
    check_against_openapi(doc, "GET", "/v1/config", status, exported)
    smaller = {**exported, "port": exported["port"][:1], "fdb": []}
    for body in ({"config": smaller, "dry_run": True}, {"config": {"network": [{"name": 5}]}}):
        status, answer = d.api("POST", "/v1/config", body)
        check_against_openapi(doc, "POST", "/v1/config", status, answer)
    assert status == 400
