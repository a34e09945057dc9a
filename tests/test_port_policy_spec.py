"""Port policy settings: parsed and checked in one place (model.PortSpec), written back
with only what differs from the defaults, so older config and state files load as before."""
from __future__ import annotations

import pytest

from vswitch.errors import InvalidArgument
from vswitch.model import PortPolicy, PortSpec, PortUpdate
from vswitch.portpolicy import datapath_sources, eui64_link_local

BASE = {"name": "c1", "network": "blue", "netns": "c1"}


def test_defaults_are_on_for_containers_and_off_for_host_ports() -> None:
    assert PortSpec.parse(BASE).policy == PortPolicy(port_security=True)
    assert PortSpec.parse({"name": "gw", "network": "blue", "host": True}).policy == PortPolicy(
        port_security=False, storm_broadcast=0, storm_multicast=0)
    # An older file has none of the keys, and is written back without them.
    assert PortSpec.parse(BASE).to_dict() == {**BASE, "ifname": "eth0"}


def test_settings_round_trip() -> None:
    data = {**BASE, "port_security": False, "allowed": ["02:00:00:00:00:0A", "10.1.0.9", "fd00::9"], "router": True,
            "dhcp_server": True}
    spec = PortSpec.parse(data)
    assert spec.policy == PortPolicy(False, ("02:00:00:00:00:0a", "10.1.0.9", "fd00::9"), True, True)
    assert PortSpec.parse(spec.to_dict()) == spec


@pytest.mark.parametrize("key,value,message", [
    ("port_security", "yes", "port.port_security"),
    ("allowed", ["10.1.0.0/24"], "port.allowed[0]"),
    ("allowed", ["ff:ff:ff:ff:ff:ff"], "port.allowed[0]"),
    ("allowed", "10.1.0.9", "port.allowed"),
    ("allowed", [f"02:00:00:00:01:{i:02x}" for i in range(8)], "at most 7 MACs"),
    ("router", 1, "port.router"),
])
def test_bad_values_are_refused_by_name(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        PortSpec.parse({**BASE, key: value})
    with pytest.raises(InvalidArgument):
        PortUpdate.parse({key: value})


def test_an_update_changes_only_what_it_names() -> None:
    spec = PortSpec.parse({**BASE, "allowed": ["10.1.0.9"], "router": True})
    new = PortUpdate.parse({"port_security": False}).policy_over(spec)
    assert new == PortPolicy(False, ("10.1.0.9",), True, False)


def test_the_datapath_gets_the_ports_sources() -> None:
    spec = PortSpec.parse({**BASE, "ips": ["10.1.0.1/24", "fd00::1/64"], "allowed": ["02:00:00:00:00:0b", "10.1.0.9"]})
    macs, ips = datapath_sources(spec, "02:00:00:00:00:0A")
    assert macs == ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]
    assert ips == ["10.1.0.1", "fd00::1", "10.1.0.9", "fe80::ff:fe00:a", "fe80::ff:fe00:b"]
    # RFC 4291 appendix A: the universal/local bit flipped, ff:fe in the middle.
    assert eui64_link_local("52:54:00:12:34:56") == "fe80::5054:ff:fe12:3456"
    # Without IPv6 addresses any IPv6 source passes: no link-local address is added.
    assert datapath_sources(PortSpec.parse({**BASE, "ip": "10.1.0.1/24"}), "02:00:00:00:00:0a")[1] == ["10.1.0.1"]
