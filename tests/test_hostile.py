"""Hostile input against a running vswitchd: bench/fuzz_live.py scaled down, and reproducers of what it found.

The live fuzz runs once per I/O mode (20,000 frames into a TAP and 20,000
datagrams into the VXLAN socket, a few seconds each); the tests below read its
reconciliation. The full run (10^6 of each) is `make fuzz-live`.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from fastpath import vtep_tx_socket
from loop_rig import LoopRig

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMES = DATAGRAMS = 20_000
CORPUS = 2_000
RUN_TIMEOUT_S = 900

pytestmark = pytest.mark.root


@pytest.fixture(scope="module", params=["poll", "uring"])
def fuzz(request: pytest.FixtureRequest) -> dict[str, Any]:
    """One scaled-down live fuzz run in this I/O mode: the mode's result from the script's JSON."""
    mode = request.param
    if mode == "uring":
        from fastpath import uring_unavailable
        if (why := uring_unavailable()) is not None:
            pytest.skip(f"io_uring datapath unavailable: {why}")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "fuzz_live.py"), "--frames", str(FRAMES), "--datagrams", str(DATAGRAMS),
         "--corpus-size", str(CORPUS), "--io-mode", mode, "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    # Exit status 1 is a failed identity, which the tests below name; anything else is a broken run.
    assert proc.returncode in (0, 1) and proc.stdout.strip(), f"fuzz_live.py exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    doc = json.loads(proc.stdout)
    assert [r["io_mode"] for r in doc["modes"]] == [mode]
    return doc["modes"][0]


def failed(checks: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [c for c in checks if c["check"] in names and not c["ok"]]


def test_the_daemon_survives_the_fuzz_healthy_and_quiet(fuzz: dict[str, Any]) -> None:
    assert fuzz["alive"] and fuzz["health"] == "ok"
    assert fuzz["daemon_errors"] == []
    assert "drain_error" not in fuzz and "vxlan_drain_error" not in fuzz


def test_every_frame_into_a_tap_is_read_and_dropped_by_reason_or_flooded(fuzz: dict[str, Any]) -> None:
    tap = fuzz["tap"]
    assert tap["sender"]["taken"] > FRAMES * 0.8, "the container's kernel refused most of the frames: nothing was fuzzed"
    assert failed(tap["checks"], "kernel", "read", "decided", "sink_silent", "flood_written", "sink_kernel") == []
    # Each reason counts the plain frames its documented rule refuses (give or take those sent with a header).
    assert failed(tap["checks"], *(f"reason_{r}" for r in ("runt", "too_big", "src_multicast", "vlan_tagged",
                                                          "vlan_stacked", "forward"))) == []
    # The fuzz reached the checks it is meant for, not only one of them.
    for reason in ("runt", "too_big", "src_multicast", "vlan_tagged", "vlan_stacked"):
        assert tap["drops"].get(reason, 0) > 0, f"no frame was dropped as {reason}: {tap['drops']}"
    assert tap["flooded"] > 0 and tap["sender"]["taken_by_kind"].get("vnet_hdr", 0) > 0


def test_every_datagram_reaches_the_switch(fuzz: dict[str, Any]) -> None:
    vx = fuzz["vxlan"]
    assert failed(vx["checks"], "kernel") == []
    assert vx["sender"]["taken"] == DATAGRAMS + 1  # and the fence
    for reason in ("truncated", "bad_flags", "unknown_vni", "unknown_peer", "inner_malformed"):
        assert vx["drops"].get(reason, 0) > 0, f"no datagram was dropped as {reason}: {vx['drops']}"
    # Each outer check counts exactly the datagrams its documented rule refuses.
    assert failed(vx["checks"], "reason_bad_flags", "reason_unknown_vni", "reason_unknown_peer", "reason_peer") == []


def test_every_datagram_read_is_counted_empty_ones_included(fuzz: dict[str, Any]) -> None:
    vx = fuzz["vxlan"]
    assert vx["sender"]["taken_by_kind"].get("empty", 0) > 0
    assert failed(vx["checks"], "counted", "reason_truncated") == [], f"{vx['uncounted']} datagrams read but counted nowhere"


def test_every_frame_from_a_peer_is_forwarded_or_dropped_by_reason(fuzz: dict[str, Any]) -> None:
    vx = fuzz["vxlan"]
    assert failed(vx["checks"], "decided") == [], f"{vx['not_decided']} frames neither forwarded nor counted as dropped"


def test_bystanders_kept_forwarding_throughout(fuzz: dict[str, Any]) -> None:
    for side in ("tap", "vxlan"):
        b = fuzz[side]["bystanders"]
        assert b["replies"] > 0 and b["ok"], f"{side}: bystander pings stalled: {b}"


# ---- minimal reproducers of what the fuzz found ---------------------------------------------

@pytest.fixture
def tunnel_rig(io_mode: str | None) -> Iterator[tuple[LoopRig, socket.socket, int, int]]:
    """A loop with a VTEP on 127.0.0.1, network 1 on VNI 100 with one port, and a peer socket
    on 127.0.0.2: (rig, peer socket, VTEP's UDP port, the port's index)."""
    rx, peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = vtep_tx_socket("127.0.0.1")
    rig = None
    try:
        rx.bind(("127.0.0.1", 0))
        vxlan_port = rx.getsockname()[1]
        peer.bind(("127.0.0.2", 0))
        rig = LoopRig(io_mode=io_mode or "poll")
        rig.dp.set_vtep(rx.fileno(), tx.fileno(), vxlan_port, 49152, 65535, 1500)
        rig.dp.set_network_vni(1, 100)
        rig.dp.add_peer(1, "127.0.0.2")
        port = rig.add_port(1)
        yield rig, peer, vxlan_port, port
    finally:
        if rig is not None:
            rig.close()
        for s in (rx, peer, tx):
            s.close()


def vxlan(inner: bytes, vni: int = 100) -> bytes:
    return bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00" + inner


def all_counted(rig: LoopRig) -> int:
    """Every datagram the switch has counted: dropped by reason, or taken from a peer."""
    return sum(rig.dp.vxlan_drops().values()) - rig.dp.vxlan_drops()["inner_malformed"] + rig.dp.peer_counters(0)["rx_packets"]


def all_drops(rig: LoopRig, port: int) -> int:
    return sum(rig.dp.vxlan_drops().values()) + sum(rig.dp.port_counters(port)["drops"].values())


@pytest.mark.io_modes
def test_an_empty_datagram_is_counted(tunnel_rig: tuple[LoopRig, socket.socket, int, int]) -> None:
    rig, peer, vxlan_port, port = tunnel_rig
    peer.sendto(b"", ("127.0.0.1", vxlan_port))
    peer.sendto(b"\x08", ("127.0.0.1", vxlan_port))
    # Both are truncated: wait for the two counts (waiting for one raced the second read).
    deadline_wait(lambda: rig.dp.vxlan_drops()["truncated"] >= 2, "the two datagrams were never counted")
    assert all_counted(rig) == 2


@pytest.mark.io_modes
def test_a_frame_from_a_peer_to_a_mac_behind_a_peer_is_counted_as_dropped(
        tunnel_rig: tuple[LoopRig, socket.socket, int, int]) -> None:
    rig, peer, vxlan_port, port = tunnel_rig
    a, b = bytes.fromhex("02000000ee01"), bytes.fromhex("02000000ee02")
    peer.sendto(vxlan(b"\xff" * 6 + a + b"\x88\xb5" + bytes(46)), ("127.0.0.1", vxlan_port))  # learns a behind the peer
    deadline_wait(lambda: len(rig.recv_all(port)) == 1, "the broadcast from the peer never reached the port")
    drops = all_drops(rig, port)
    peer.sendto(vxlan(a + b + b"\x88\xb5" + bytes(46)), ("127.0.0.1", vxlan_port))  # to a, from behind the same peer
    deadline_wait(lambda: rig.dp.peer_counters(0)["rx_packets"] == 2, "the second frame was never read")
    assert rig.recv_all(port) == []  # not forwarded: right
    assert all_drops(rig, port) == drops + 1, "not forwarded, and not counted as dropped either"


def deadline_wait(cond: Any, message: str, timeout: float = 10.0) -> None:
    from tests.harness.wait import wait_until
    wait_until(cond, timeout=timeout, message=message)
