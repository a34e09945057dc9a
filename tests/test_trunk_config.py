"""Trunk ports in the control plane: the config keys (trunk, native) checked by
key, written back as read, and changed in place by apply where they can be."""
import pytest

from vswitch.config import config_document, parse_config
from vswitch.errors import InvalidArgument
from vswitch.model import PortSpec, PortUpdate
from vswitch.reconcile import port_change

NETS = [{"name": "blue"}, {"name": "red"}, {"name": "green"}]


def trunk_doc(**port) -> dict:
    return {"network": NETS, "port": [{"name": "t1", "netns": "vm1", **port}]}


def test_a_trunk_port_in_the_config_round_trips():
    settings, state = parse_config(trunk_doc(trunk={"red": 20, "blue": 10}, native="green"), check_netns=False)
    port = state.ports[0]
    assert (port.network, port.trunk, port.native) == (None, (("blue", 10), ("red", 20)), "green")
    assert port.networks == ("green", "blue", "red") and port.is_trunk
    assert parse_config(config_document(settings, state), check_netns=False) == (settings, state)
    assert config_document(settings, state)["port"][0]["trunk"] == {"blue": 10, "red": 20}


@pytest.mark.parametrize("port, why", [
    ({"trunk": {"blue": 10}, "network": "red"}, "port[0].network: a trunk port's networks"),
    ({"native": "green", "network": "red"}, "port[0].native: only a trunk port"),
    ({"trunk": {"blue": 10, "red": 10}}, "port[0].trunk.red: 10 is already the VLAN ID of network 'blue'"),
    ({"trunk": {"blue": 0}}, "port[0].trunk.blue: 0 is out of range [1, 4094]"),
    ({"trunk": {"blue": 4095}}, "port[0].trunk.blue: 4095 is out of range [1, 4094]"),
    ({"trunk": {"blue": "10"}}, "port[0].trunk.blue: '10' is not an integer"),
    ({"trunk": {}}, "port[0].trunk: {} is not a table"),
    ({"trunk": [10]}, "port[0].trunk: [10] is not a table"),
    ({"trunk": {"blue": 10}, "native": "blue"}, "port[0].native: 'blue' is also tagged"),
    ({"trunk": {"nosuch": 10}}, "port[0].trunk: 'nosuch' is not a defined network"),
    ({"trunk": {"blue": 10}, "native": "nosuch"}, "port[0].native: 'nosuch' is not a defined network"),
    ({"trunk": {"blue": 10}, "host": True, "masquerade": True, "ip": "10.0.0.1/24"}, "a trunk port cannot masquerade"),
    ({}, "missing required key 'network' (or 'trunk' for a trunk port)"),
])
def test_bad_trunk_settings_are_refused_by_key(port, why):
    doc = trunk_doc(**port)
    if port.get("host"):
        del doc["port"][0]["netns"]
    with pytest.raises(InvalidArgument) as e:
        parse_config(doc, check_netns=False)
    assert why in str(e.value)


def test_a_trunk_change_is_made_in_place_and_a_mode_change_re_creates():
    base = PortSpec.parse({"name": "t1", "netns": "vm1", "trunk": {"blue": 10}})
    assert port_change(base, PortSpec.parse({"name": "t1", "netns": "vm1", "trunk": {"blue": 11}, "native": "red"})) == "update"
    assert port_change(base, PortSpec.parse({"name": "t1", "netns": "vm1", "network": "blue"})) == "recreate"
    update = PortUpdate.parse({"native": ""})
    assert update.changes_trunk and update.trunk_over(base) == ((("blue", 10),), None)
    with pytest.raises(InvalidArgument, match="also tagged"):
        PortUpdate.parse({"native": "blue"}).trunk_over(base)
