"""The state file: round trip, atomic saves, and refusal of anything it cannot read back."""
from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import tmpfs
from vswitch.errors import ConfigError, StateNotSaved
from vswitch.model import DesiredState, NetworkSpec, PeerSpec, PortSpec, StaticFdbSpec
from vswitch.state import STATE_VERSION, StateStore

STATE = DesiredState(
    networks=[NetworkSpec("blue", 100), NetworkSpec("red")],
    ports=[
        PortSpec("c1", "blue", "c1"),
        PortSpec("c2", "blue", "/proc/1/ns/net", ifname="veth9", mac="02:00:00:00:00:02", ip="10.1.0.2/24", mtu=1450),
    ],
    peers=[PeerSpec("blue", "192.0.2.2"), PeerSpec("blue", "2001:db8::2")],
    static_fdb=[StaticFdbSpec("blue", "02:00:00:00:00:09", "c1")],
)


def _valid_doc() -> dict:
    return {
        "version": STATE_VERSION,
        "networks": [{"name": "blue", "vni": 100}],
        "ports": [{"name": "c1", "network": "blue", "netns": "c1"}],
        "peers": [{"network": "blue", "remote": "192.0.2.2"}],
        "static_fdb": [{"network": "blue", "mac": "02:00:00:00:00:09", "port": "c1"}],
    }


def test_load_without_a_file_is_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state").load() is None


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(STATE)
    assert StateStore(tmp_path / "state").load() == STATE


def test_a_state_that_cannot_be_written_says_where_and_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    store = StateStore(tmp_path / "file" / "state")
    with pytest.raises(StateNotSaved, match=r"could not be saved to .*/file/state/state\.json: Not a directory; "
                                            r"it is lost if vswitchd restarts"):
        store.save(STATE)


def test_empty_state_round_trips(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DesiredState())
    assert store.load() == DesiredState()


def test_file_layout(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(STATE)
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["version"] == 1
    assert set(doc) == {"version", "networks", "ports", "peers", "static_fdb"}
    assert doc["ports"][0] == {"name": "c1", "network": "blue", "netns": "c1", "ifname": "eth0"}


def test_save_creates_a_private_dir_and_leaves_no_temp_files(tmp_path: Path) -> None:
    state_dir = tmp_path / "a" / "state"
    store = StateStore(state_dir)
    for n in range(5):
        store.save(DesiredState(networks=[NetworkSpec(f"n{i}") for i in range(n)]))
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert [p.name for p in state_dir.iterdir()] == ["state.json"]
    assert stat.S_IMODE((state_dir / "state.json").stat().st_mode) == 0o600
    loaded = store.load()
    assert loaded is not None and len(loaded.networks) == 4


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(STATE)
    store.save(DesiredState(networks=[NetworkSpec("green", 7)]))
    assert store.load() == DesiredState(networks=[NetworkSpec("green", 7)])


def test_failed_save_leaves_no_temp_file(tmp_path: Path) -> None:
    # A directory where the file should be makes the final rename fail.
    (tmp_path / "state.json").mkdir()
    (tmp_path / "state.json" / "keep").write_text("x")
    with pytest.raises(StateNotSaved, match="Is a directory|Directory not empty"):
        StateStore(tmp_path).save(STATE)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert (tmp_path / "state.json" / "keep").read_text() == "x"


def _doc_with(**changes: object) -> str:
    doc = _valid_doc()
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param('{"version": 1, "networks": [', "not valid JSON", id="truncated-json"),
        pytest.param("", "not valid JSON", id="empty-file"),
        pytest.param("[]", "expected a JSON object", id="not-an-object"),
        pytest.param(_doc_with(version=2), "version: 2 is not supported", id="newer-version"),
        pytest.param(json.dumps({"networks": []}), "version: None is not supported", id="no-version"),
        pytest.param(_doc_with(version="1"), "version: '1' is not supported", id="version-as-string"),
        pytest.param(_doc_with(ports={"name": "c1"}), "ports: expected a list, got dict", id="section-not-a-list"),
        pytest.param(_doc_with(extra=[]), "unknown key 'extra'", id="unknown-section"),
        pytest.param(
            _doc_with(networks=[{"name": "blue", "vni": 1 << 24}]), "networks[0].vni: 16777216 is out of range", id="vni-out-of-range"
        ),
        pytest.param(
            _doc_with(static_fdb=[{"network": "blue", "mac": "zz:00:00:00:00:01", "port": "c1"}]),
            "static_fdb[0].mac: 'zz:00:00:00:00:01' is not a MAC address",
            id="bad-mac",
        ),
        pytest.param(
            _doc_with(ports=[{"name": "c1", "network": "blue", "netns": "c1", "ip": "10.1.0.300/24"}]),
            "ports[0].ip: '10.1.0.300/24'",
            id="bad-cidr",
        ),
        pytest.param(_doc_with(peers=[{"network": "blue"}]), "peers[0]: missing required key 'remote'", id="missing-key"),
        pytest.param(_doc_with(networks=["blue"]), "networks[0]: expected a table/object, got str", id="item-not-an-object"),
    ],
)
def test_unreadable_state_is_refused_and_left_alone(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        StateStore(tmp_path).load()
    message = str(err.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message
    assert path.read_text() == content
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_valid_document_used_by_the_corruption_cases_loads(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps(_valid_doc()))
    state = StateStore(tmp_path).load()
    assert state is not None and state.networks == [NetworkSpec("blue", 100)]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match="cannot read"):
        StateStore(tmp_path).load()


# --- symlinks, leftovers and a state dir that cannot take a change --------------------


def test_a_symlink_at_the_state_file_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(json.dumps(_valid_doc()))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").symlink_to(target)
    with pytest.raises(ConfigError, match="symlink .* is not followed"):
        StateStore(state_dir).load()
    before = target.read_text()
    StateStore(state_dir).save(STATE)  # replaces the link itself
    assert target.read_text() == before
    assert not (state_dir / "state.json").is_symlink()
    assert StateStore(state_dir).load() == STATE


def test_a_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        StateStore(tmp_path / "state").load()
    with pytest.raises(StateNotSaved, match="symlink"):
        StateStore(tmp_path / "state").save(STATE)
    assert list(real.iterdir()) == []


def test_temp_files_left_by_a_crash_are_removed_at_load(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(STATE)
    for name in (".state.json.abc123.tmp", ".state.json.x.tmp"):
        (tmp_path / name).write_text("half a save")
    (tmp_path / "unrelated.tmp").write_text("kept")
    assert store.load() == STATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "unrelated.tmp"]


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.check_writable()
    store.save(STATE)
    store.check_writable()
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.json"]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs, unmounted at teardown."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    tmpfs.mount_tiny(mnt)
    try:
        yield mnt
    finally:
        tmpfs.unmount(mnt)


@pytest.mark.root
def test_a_full_or_read_only_state_dir_refuses_changes_up_front(tiny_tmpfs: Path) -> None:
    store = StateStore(tiny_tmpfs)
    store.save(STATE)
    saved = (tiny_tmpfs / "state.json").read_bytes()
    tmpfs.fill(tiny_tmpfs / "filler")
    with pytest.raises(StateNotSaved, match=r"change refused: .*No space left on device; nothing was changed"):
        store.check_writable()
    assert (tiny_tmpfs / "state.json").read_bytes() == saved
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler", "state.json"]
    (tiny_tmpfs / "filler").unlink()
    store.check_writable()
    with tmpfs.read_only(tiny_tmpfs):
        with pytest.raises(StateNotSaved, match="Read-only file system; nothing was changed"):
            store.check_writable()
        assert store.load() == STATE
    store.check_writable()
