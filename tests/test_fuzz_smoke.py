"""The fuzz targets (tests/fuzz/targets.py) in the normal suite, on whatever
build is loaded (release under `make test`): every committed seed passes its
target's oracle and reaches what it was written for, and a short
coverage-guided run of each target under atheris finds nothing. `make fuzz`
runs the same targets for a million inputs each on the sanitizer build."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fuzz"))

import targets  # noqa: E402
from fastpath.gro import coalesce  # noqa: E402
from fastpath.vxlan import source_port  # noqa: E402

CORPUS = os.path.join(HERE, "fuzz", "corpus")
SMOKE_RUNS = 3000


def seeds(target: str) -> list[bytes]:
    d = os.path.join(CORPUS, target)
    return [open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))]


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_seeds_pass_their_target(target):
    inputs = seeds(target)
    assert len(inputs) >= 3
    for data in inputs:
        targets.TARGETS[target](data)


def test_gro_seeds_coalesce():
    """The GRO seeds hold runs the coalescer merges, so the fuzzer starts
    from inputs that reach gro_append and gro_finish, not only refusals."""
    merged = 0
    for data in seeds("gro"):
        items = list(targets.records(data[1:], targets.VNET_HLEN))
        merged += len(items) - len(coalesce(items, bool(data[0] & 1)))
    assert merged >= 5


def test_gso_seeds_segment():
    from fastpath.gso import segment
    cut = 0
    for data in seeds("gso"):
        vnet, frame = data[:12], data[15:]
        cut += len(segment(frame, vnet)) > 1
    assert cut >= 5


def test_datapath_seeds_reach_ports_and_peers():
    """The decide and vxlan seeds get frames out of ports (plain and with
    offloads) and to peers: the targets' oracles then have work to check."""
    rig = targets.rig()
    before = sum(rig.peer_sends())
    sent = {i: rig.dp.port_counters(i)["tx_packets"] for i in range(len(rig.PORTS))}
    for target in ("decide", "vxlan"):
        for data in seeds(target):
            targets.TARGETS[target](data)
    moved = [i for i in sent if rig.dp.port_counters(i)["tx_packets"] > sent[i]]
    assert set(moved) == set(range(len(rig.PORTS)))
    assert sum(rig.peer_sends()) > before
    assert rig.dp.loop_stats()["offload"]["gro_coalesced"] > 0


def test_source_port_refuses_an_empty_range_and_a_runt():
    # The test wrapper over the flow hash, before it checked: lo > hi gave a
    # port outside the range (the vxlan target's oracle) or, for lo = hi + 1,
    # divided by zero (UBSan); a frame under 14 bytes was hashed past its
    # end (ASan: heap-buffer-overflow in flow_hash).
    frame = bytes(14)
    with pytest.raises(ValueError):
        source_port(frame, 2, 1)
    with pytest.raises(ValueError):
        source_port(bytes(13), 1, 2)
    assert source_port(frame, 1, 65535) >= 1
    assert source_port(frame, 7, 7) == 7


def test_coalesce_refuses_a_short_virtio_net_header():
    # The test wrapper handed gro_candidate a header it reads 10 bytes of.
    with pytest.raises(ValueError):
        coalesce([(b"\x01", bytes(60))])


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_short_fuzz_run_finds_nothing(target, tmp_path):
    """A few thousand coverage-guided inputs per target (atheris), starting
    from the seeds: exit 0 means no assertion failed and nothing crashed."""
    cmd = [sys.executable, os.path.join(HERE, "fuzz", "run.py"), target, f"-runs={SMOKE_RUNS}", "-max_len=4096",
           "-seed=1", f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus"), os.path.join(CORPUS, target)]
    (tmp_path / "corpus").mkdir()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Done {SMOKE_RUNS} runs" in r.stderr, r.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))
