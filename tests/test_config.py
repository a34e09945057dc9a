"""Config loading and reference checks (no root needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vswitch.config import check_references, load_config
from vswitch.errors import ConfigError, InvalidArgument
from vswitch.model import DesiredState, NetworkSpec, PeerSpec, PortSpec, StaticFdbSpec, SwitchSettings

FULL = """\
[switch]
mac_aging_s = 120
mac_table_size = 4096
vtep_ip = "192.0.2.1"

[[network]]
name = "blue"
vni = 100

[[network]]
name = "red"

[[port]]
name = "c1"
netns = "vst-cfg-absent"
network = "blue"
ifname = "eth0"
mac = "02:00:00:00:00:01"
ip = "10.1.0.1/24"
mtu = 1400

[[port]]
name = "c2"
netns = "/proc/self/ns/net"
network = "red"

[[peer]]
network = "blue"
remote = "192.0.2.2"

[[fdb]]
network = "blue"
mac = "02:00:00:00:00:AA"
port = "c1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vswitch.toml"
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    return message


def test_full_config_round_trips(tmp_path: Path) -> None:
    settings, state = load_config(write(tmp_path, FULL))
    assert settings == SwitchSettings(mac_aging_s=120, mac_table_size=4096, vtep_ip="192.0.2.1")
    assert state == DesiredState(
        networks=[NetworkSpec("blue", 100), NetworkSpec("red")],
        ports=[
            PortSpec("c1", "blue", "vst-cfg-absent", "eth0", "02:00:00:00:00:01", "10.1.0.1/24", 1400),
            PortSpec("c2", "red", "/proc/self/ns/net"),
        ],
        peers=[PeerSpec("blue", "192.0.2.2")],
        static_fdb=[StaticFdbSpec("blue", "02:00:00:00:00:aa", "c1")],
    )


def test_empty_config_gives_defaults(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, ""))) == (SwitchSettings(), DesiredState())


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=f"^{path}: cannot read config: No such file"):
        load_config(path)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[switch]\nmac_aging_s = 300\n[[network]\nname = "blue"\n')
    assert "invalid TOML" in message
    assert "line 3" in message and "column" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[[bridge]]\nname = "x"\n')
    assert "unknown top-level key 'bridge'" in message


def test_unknown_key_in_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, FULL + '\n[[port]]\nname = "c3"\nnetns = "c3"\nnetwork = "blue"\nvlan = 5\n')
    assert "port[2]: unknown key 'vlan'" in message


def test_unknown_key_in_switch(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[switch]\nmac_aging = 5\n")
    assert "switch: unknown key 'mac_aging'" in message


def test_missing_required_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[[port]]\nname = "c1"\nnetns = "c1"\n')
    assert "port[0]: missing required key 'network'" in message


def test_bad_mac(tmp_path: Path) -> None:
    message = config_error(tmp_path, FULL.replace('"02:00:00:00:00:01"', '"02:00:00:00:01"'))
    assert "port[0].mac: '02:00:00:00:01'" in message


def test_bad_cidr(tmp_path: Path) -> None:
    message = config_error(tmp_path, FULL.replace('"10.1.0.1/24"', '"10.1.0.300/24"'))
    assert "port[0].ip: '10.1.0.300/24'" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, FULL.replace("vni = 100", 'vni = "100"'))
    assert "network[0].vni: '100' is not an integer" in message


def test_out_of_range(tmp_path: Path) -> None:
    message = config_error(tmp_path, FULL.replace("mtu = 1400", "mtu = 20"))
    assert "port[0].mtu: 20 is out of range" in message


def test_io_mode(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[switch]\n"))[0].io_mode == "auto"
    for mode in ("auto", "uring", "poll"):
        assert load_config(write(tmp_path, f'[switch]\nio_mode = "{mode}"\n'))[0].io_mode == mode
    message = config_error(tmp_path, '[switch]\nio_mode = "epoll"\n')
    assert "switch.io_mode: 'epoll' is not an I/O mode (auto, uring, poll)" in message


def test_busy_poll_bulk_hold(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[switch]\n"))[0].busy_poll_bulk_hold_us == 0
    assert load_config(write(tmp_path, "[switch]\nbusy_poll_bulk_hold_us = 2000\n"))[0].busy_poll_bulk_hold_us == 2000
    message = config_error(tmp_path, "[switch]\nbusy_poll_bulk_hold_us = 100001\n")
    assert "switch.busy_poll_bulk_hold_us: 100001 is out of range" in message


def test_batch_wait(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[switch]\n"))[0].batch_wait_us == 50
    assert load_config(write(tmp_path, "[switch]\nbatch_wait_us = 0\n"))[0].batch_wait_us == 0
    message = config_error(tmp_path, "[switch]\nbatch_wait_us = 5000\n")
    assert "switch.batch_wait_us: 5000 is out of range" in message


def test_array_written_as_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[network]\nname = "blue"\n')
    assert "network: {'name': 'blue'} is not an array of tables" in message


def test_switch_written_as_array(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[[switch]]\nmac_aging_s = 5\n")
    assert "switch: [{'mac_aging_s': 5}] is not a table" in message


def test_array_item_not_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'peer = ["192.0.2.2"]\n')
    assert "peer[0]: '192.0.2.2' is not a table" in message


def test_reference_error_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, FULL.replace('network = "red"', 'network = "green"'))
    assert "port[1].network: 'green' is not a defined network" in message


def test_missing_namespace_checked_only_on_request(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    load_config(path)  # the namespace need not exist yet
    with pytest.raises(ConfigError, match=r"port\[0\]\.netns: 'vst-cfg-absent' does not exist \(no /run/netns/vst-cfg-absent\)"):
        load_config(path, check_netns=True)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('vtep_ip = "192.0.2.1"', "", "peer[0]: peers need a local VTEP address: set [switch] vtep_ip"),
        ('vtep_ip = "192.0.2.1"', 'vtep_ip = "192.0.2.2"', "peer[0]: remote: 192.0.2.2 is this switch's own vtep_ip"),
        ("vni = 100", "", "peer[0]: network 'blue' has no VNI: peers need a VXLAN network"),
        ('remote = "192.0.2.2"', 'remote = "2001:db8::2"', "peer[0]: remote: '2001:db8::2' is not IPv4"),
        ('remote = "192.0.2.2"', 'remote = "255.255.255.255"', "peer[0]: remote: '255.255.255.255' is not a unicast"),
        ('vtep_ip = "192.0.2.1"', 'vtep_ip = "0.0.0.0"', "switch.vtep_ip: '0.0.0.0' is not a unicast address"),
        ('vtep_ip = "192.0.2.1"', 'vtep_ip = "239.1.1.1"', "switch.vtep_ip: '239.1.1.1' is not a unicast address"),
    ],
    ids=["no-vtep", "own-vtep", "no-vni", "ipv6-remote", "broadcast-remote", "unspecified-vtep", "multicast-vtep"],
)
def test_peers_the_switch_would_refuse_refuse_the_config(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """Refused before anything is applied: at start they stopped vswitchd halfway, ports already made."""
    assert old in FULL
    assert expected in config_error(tmp_path, FULL.replace(old, new))


def test_more_peers_than_the_datapath_holds(tmp_path: Path) -> None:
    peers = "".join(f'[[peer]]\nnetwork = "blue"\nremote = "10.{i >> 8}.{i & 255}.1"\n' for i in range(1025))
    message = config_error(tmp_path, FULL.replace('[[peer]]\nnetwork = "blue"\nremote = "192.0.2.2"\n', peers))
    assert "peer[1024]: more than 1024 peers" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('netns = "vst-cfg-absent"', 'netns = "c1\\u0000"', "port[0].netns: 'c1\\x00' is not a namespace name"),
        ('ifname = "eth0"', 'ifname = "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"', "is not a valid interface name (1-15 bytes"),
        ('ifname = "eth0"', 'ifname = "eth0\\n"', "port[0].ifname: 'eth0\\n' is not a valid interface name"),
        ('name = "red"', 'name = "red\\n"', "network[1].name: 'red\\n' is not a valid name"),
    ],
    ids=["netns-nul", "ifname-16-bytes", "ifname-newline", "name-newline"],
)
def test_names_the_kernel_would_refuse(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in FULL
    assert expected in config_error(tmp_path, FULL.replace(old, new, 1))


# check_references on its own: one case per rule.

def base() -> DesiredState:
    return DesiredState(
        networks=[NetworkSpec("blue", 100), NetworkSpec("red", 200)],
        ports=[PortSpec("c1", "blue", "c1"), PortSpec("c2", "red", "c2")],
        peers=[PeerSpec("blue", "192.0.2.2")],
        static_fdb=[StaticFdbSpec("blue", "02:00:00:00:00:0a", "c1")],
    )


def refuse(state: DesiredState, expected: str, *, check_netns: bool = False) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_references(state, check_netns=check_netns)
    assert str(info.value) == expected


def test_valid_state_passes() -> None:
    check_references(base(), check_netns=False)


def test_duplicate_network_name() -> None:
    state = base()
    state.networks.append(NetworkSpec("blue"))
    refuse(state, "network[2].name: 'blue' is already defined by network[0]")


def test_duplicate_vni() -> None:
    state = base()
    state.networks.append(NetworkSpec("green", 100))
    refuse(state, "network[2].vni: 100 is already used by network[0] ('blue')")


def test_duplicate_port_name() -> None:
    state = base()
    state.ports.append(PortSpec("c1", "red", "c3"))
    refuse(state, "port[2].name: 'c1' is already defined by port[0]")


def test_same_interface_in_same_namespace() -> None:
    state = base()
    state.ports.append(PortSpec("c3", "red", "/run/netns/c1", "eth0"))
    refuse(state, "port[2].ifname: 'eth0' in netns '/run/netns/c1' is already used by port[0] ('c1')")


def test_same_interface_name_in_other_namespace_is_fine() -> None:
    state = base()
    state.ports.append(PortSpec("c3", "red", "c3", "eth0"))
    check_references(state, check_netns=False)


def test_port_of_missing_network() -> None:
    state = base()
    state.ports.append(PortSpec("c3", "green", "c3"))
    refuse(state, "port[2].network: 'green' is not a defined network")


def test_port_of_missing_namespace() -> None:
    state = DesiredState(networks=[NetworkSpec("blue")], ports=[PortSpec("c1", "blue", "vst-absent-ns")])
    refuse(state, "port[0].netns: 'vst-absent-ns' does not exist (no /run/netns/vst-absent-ns)", check_netns=True)


def test_existing_namespace_path_passes() -> None:
    state = DesiredState(networks=[NetworkSpec("blue")], ports=[PortSpec("c1", "blue", "/proc/self/ns/net")])
    check_references(state, check_netns=True)


def test_same_namespace_under_two_paths() -> None:
    state = DesiredState(
        networks=[NetworkSpec("blue")],
        ports=[PortSpec("c1", "blue", "/proc/self/ns/net"), PortSpec("c2", "blue", "/proc/thread-self/ns/net")],
    )
    refuse(
        state,
        "port[1].ifname: 'eth0' in netns '/proc/thread-self/ns/net' is already used by port[0] ('c1')",
        check_netns=True,
    )


def test_namespace_that_is_not_a_net_namespace() -> None:
    state = DesiredState(networks=[NetworkSpec("blue")], ports=[PortSpec("c1", "blue", "/proc/self/ns/mnt")])
    refuse(state, "port[0].netns: '/proc/self/ns/mnt' is not a network namespace (/proc/self/ns/mnt)", check_netns=True)


def test_namespace_path_that_is_a_plain_file(tmp_path: Path) -> None:
    plain = tmp_path / "ns"
    plain.write_text("")
    state = DesiredState(networks=[NetworkSpec("blue")], ports=[PortSpec("c1", "blue", str(plain))])
    refuse(state, f"port[0].netns: '{plain}' is not a namespace ({plain} is not an nsfs file)", check_netns=True)


def test_peer_of_missing_network() -> None:
    state = base()
    state.peers.append(PeerSpec("green", "192.0.2.3"))
    refuse(state, "peer[1].network: 'green' is not a defined network")


def test_duplicate_peer() -> None:
    state = base()
    state.peers.append(PeerSpec("blue", "192.0.2.2"))
    refuse(state, "peer[1].remote: '192.0.2.2' is already a peer of network 'blue' (peer[0])")


def test_same_remote_in_two_networks_is_fine() -> None:
    state = base()
    state.peers.append(PeerSpec("red", "192.0.2.2"))
    check_references(state, check_netns=False)


def test_fdb_of_missing_network() -> None:
    state = base()
    state.static_fdb.append(StaticFdbSpec("green", "02:00:00:00:00:0b", "c1"))
    refuse(state, "fdb[1].network: 'green' is not a defined network")


def test_fdb_of_missing_port() -> None:
    state = base()
    state.static_fdb.append(StaticFdbSpec("blue", "02:00:00:00:00:0b", "c9"))
    refuse(state, "fdb[1].port: 'c9' is not a defined port")


def test_fdb_port_in_other_network() -> None:
    state = base()
    state.static_fdb.append(StaticFdbSpec("blue", "02:00:00:00:00:0b", "c2"))
    refuse(state, "fdb[1].port: 'c2' is in network 'red', not 'blue'")


def test_duplicate_fdb_entry() -> None:
    state = base()
    state.static_fdb.append(StaticFdbSpec("blue", "02:00:00:00:00:0a", "c1"))
    refuse(state, "fdb[1].mac: '02:00:00:00:00:0a' already has a static entry in network 'blue' (fdb[0])")
