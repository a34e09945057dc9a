"""The compiled loop against the Python model, on generated frame sequences.

For every generated scenario (ports in several networks, a small MAC table,
static entries, broadcast, multicast, known and unknown unicast, and
malformed frames) each frame is sent through the real loop over socketpairs
and through tests/model.py; which port receives which frame, the drop
counters and the FDB afterwards must be identical.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loop_rig import LoopRig
from model import Entry, ModelSwitch
from rawframes import BROADCAST, eth, mac

MACS = [mac(i) for i in range(1, 9)]
MCAST = b"\x01\x00\x5e\x00\x00\x09"

dst_st = st.one_of(st.sampled_from(MACS), st.just(BROADCAST), st.just(MCAST))


@st.composite
def frames(draw, n_ports: int):
    port = draw(st.integers(0, n_ports - 1))
    kind = draw(st.sampled_from(["ok"] * 8 + ["runt", "tagged", "too_big", "src_group"]))
    dst = draw(dst_st)
    src = draw(st.sampled_from(MACS))
    payload = draw(st.binary(min_size=0, max_size=64))
    if kind == "runt":
        return port, draw(st.binary(max_size=13))
    if kind == "tagged":
        return port, eth(dst, src, payload, vlan=draw(st.integers(0, 4095)))
    if kind == "too_big":
        return port, eth(dst, src, b"x" * 1501)
    if kind == "src_group":
        return port, eth(dst, draw(st.sampled_from([BROADCAST, MCAST])), payload)
    return port, eth(dst, src, payload)


@st.composite
def scenarios(draw):
    networks = draw(st.lists(st.integers(1, 3), min_size=2, max_size=6))
    capacity = draw(st.integers(2, 10))
    statics = draw(st.lists(st.tuples(st.sampled_from(MACS), st.integers(0, len(networks) - 1)), max_size=2,
                            unique_by=lambda t: t[0]))
    seq = draw(st.lists(frames(len(networks)), min_size=1, max_size=40))
    return networks, capacity, statics, seq


pytestmark = pytest.mark.io_modes


# io_mode only names the mode: one value for every example is what is wanted.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_compiled_loop_matches_model(io_mode, scenario):
    networks, capacity, statics, seq = scenario
    model = ModelSwitch(capacity=capacity, aging_ms=300_000)
    rig = LoopRig(mac_table_size=capacity, io_mode=io_mode)
    try:
        ports = [rig.add_port(net) for net in networks]
        assert ports == list(range(len(networks)))
        for p, net in enumerate(networks):
            model.add_port(p, net)
        for m, p in statics[:capacity]:
            rig.dp.fdb_set_static(networks[p], m, p)
            model.fdb[(networks[p], m)] = Entry(p, 0, static=True)
        for in_port, frame in seq:
            expected = {p: [f] for p, f in model.forward(in_port, frame).items()}
            rig.send(in_port, frame)
            got = {p: fs for p, fs in rig.drain().items() if fs}
            assert got == expected, f"frame {frame.hex()} from port {in_port}"
        fdb = {(net, bytes.fromhex(m.replace(":", "")), out, static) for net, m, out, static, _ in rig.dp.fdb_entries()}
        assert fdb == model.fdb_snapshot()
        for p in ports:
            drops = {r: n for r, n in rig.dp.port_counters(p)["drops"].items() if n}
            assert drops == {r: n for (q, r), n in model.drops.items() if q == p}
        c = rig.dp.fdb_counters()
        assert (c["learned"], c["moved"], c["refused"]) == (model.learned, model.moved, model.refused)
    finally:
        rig.close()
