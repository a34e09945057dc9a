"""Port limit settings (max_macs, storm control, rate limits): parsed and checked in
one place (model.PortPolicy), 0 meaning no limit, written back with only what differs
from a port's defaults."""
from __future__ import annotations

import pytest

from vswitch.errors import InvalidArgument
from vswitch.model import PortSpec, PortUpdate

BASE = {"name": "c1", "network": "blue", "netns": "c1"}
HOST = {"name": "gw", "network": "blue", "host": True}


def test_defaults_storm_control_on_container_ports_only() -> None:
    c = PortSpec.parse(BASE).policy
    assert (c.storm_broadcast, c.storm_multicast, c.storm_unknown_unicast) == (1000, 1000, 0)
    assert (c.max_macs, c.rate_mbit, c.burst_kb, c.rate_fps) == (0, 0, 0, 0)
    h = PortSpec.parse(HOST).policy
    assert (h.storm_broadcast, h.storm_multicast, h.storm_unknown_unicast) == (0, 0, 0)
    # Defaults are not written back: older files read and write the same.
    assert PortSpec.parse(BASE).to_dict() == {**BASE, "ifname": "eth0"}
    assert "storm_broadcast" not in PortSpec.parse(HOST).to_dict()


def test_limits_round_trip() -> None:
    data = {**BASE, "max_macs": 4, "storm_broadcast": 0, "storm_multicast": 50, "storm_unknown_unicast": 200,
            "rate_mbit": 2.5, "burst_kb": 256, "rate_fps": 9000}
    spec = PortSpec.parse(data)
    assert spec.policy.limits() == {k: v for k, v in data.items() if k not in BASE}
    assert PortSpec.parse(spec.to_dict()) == spec
    assert spec.policy.burst_bytes == 256 * 1024


def test_default_burst_is_a_quarter_second_but_at_least_2_mib() -> None:
    assert PortSpec.parse({**BASE, "rate_mbit": 50}).policy.burst_bytes == 2048 * 1024
    assert PortSpec.parse({**BASE, "rate_mbit": 10000}).policy.burst_bytes == 312_500_000


@pytest.mark.parametrize("key,value,message", [
    ("max_macs", -1, "port.max_macs: -1 is out of range"),
    ("max_macs", 1.5, "port.max_macs: 1.5 is not an integer"),
    ("storm_broadcast", -5, "port.storm_broadcast"),
    ("storm_multicast", "lots", "port.storm_multicast"),
    ("storm_unknown_unicast", True, "port.storm_unknown_unicast"),
    ("rate_mbit", -10, r"port.rate_mbit: -10 is out of range \[0"),
    ("rate_mbit", "fast", "port.rate_mbit: 'fast' is not a number"),
    ("rate_mbit", float("nan"), "port.rate_mbit"),
    ("burst_kb", -1, "port.burst_kb"),
    ("rate_fps", 10**12, "port.rate_fps"),
])
def test_bad_limits_are_refused_by_name(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        PortSpec.parse({**BASE, key: value})
    with pytest.raises(InvalidArgument, match=message):
        PortUpdate.parse({key: value})


def test_an_update_changes_only_the_limits_it_names() -> None:
    spec = PortSpec.parse({**BASE, "rate_mbit": 100, "max_macs": 3})
    new = PortUpdate.parse({"storm_broadcast": 10}).policy_over(spec)
    assert (new.rate_mbit, new.max_macs, new.storm_broadcast, new.storm_multicast) == (100, 3, 10, 1000)
