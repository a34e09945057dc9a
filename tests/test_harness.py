"""The traffic-test harness itself: namespaces, agents, frame markers, waits."""
from __future__ import annotations

import os

import pytest

from tests.harness.agent import AgentError
from tests.harness.frames import has_token, marked_frame, new_token
from tests.harness.netns import Netns, NetnsFactory, list_netns
from tests.harness.wait import wait_until

# Namespaces made by the traffic test below, checked for removal afterwards.
_made_by_earlier_test: list[str] = []


def _veth_pair(a: Netns, b: Netns) -> tuple[str, str]:
    """A veth pair a0 (in a) <-> b0 (in b), both up; goes away with its namespaces."""
    a.exec("ip", "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b.name)
    a.exec("ip", "link", "set", "a0", "up")
    b.exec("ip", "link", "set", "b0", "up")
    wait_until(lambda: a.link_is_up("a0") and b.link_is_up("b0"), message="veth a0/b0 never came up")
    return a.link("a0")["address"], b.link("b0")["address"]


def _own_ns_names() -> list[str]:
    return [n for n in list_netns() if n.startswith(f"vst-{os.getpid()}-")]


@pytest.mark.root
def test_frames_cross_a_veth_exactly_and_in_order(netns_factory, agent_factory):
    ns_a, ns_b = netns_factory(), netns_factory()
    _made_by_earlier_test.extend([ns_a.name, ns_b.name])
    assert ns_a.exec("sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").stdout.strip() == "1"
    mac_a, mac_b = _veth_pair(ns_a, ns_b)
    agent_a, agent_b = agent_factory(ns_a), agent_factory(ns_b)
    agent_a.sniff_start("a0")
    agent_b.sniff_start("b0")
    token = new_token()
    # Sizes differ frame to frame, so equality also proves the order.
    sent = [marked_frame(mac_a, mac_b, token, size=60 + 10 * i) for i in range(50)]

    agent_a.send("a0", sent)

    assert agent_b.wait_frames("b0", has_token(token), count=50) == sent
    # The sender's own capture reports nothing it transmitted.
    assert [f for f in agent_a.frames("a0") if has_token(token)(f)] == []


@pytest.mark.root
def test_capture_keeps_vlan_tags_and_clear_forgets(netns_factory, agent_factory):
    ns_a, ns_b = netns_factory(), netns_factory()
    mac_a, mac_b = _veth_pair(ns_a, ns_b)
    agent_a, agent_b = agent_factory(ns_a), agent_factory(ns_b)
    agent_b.sniff_start("b0")
    first, second = new_token(), new_token()
    tagged = marked_frame(mac_a, mac_b, first, vlan=42, size=200)

    agent_a.send("a0", [tagged])
    # The kernel strips the tag before a packet socket sees the frame; the agent puts it back.
    assert agent_b.wait_frames("b0", has_token(first)) == [tagged]

    agent_b.clear("b0")
    untagged = marked_frame(mac_a, mac_b, second)
    agent_a.send("a0", [untagged])
    assert agent_b.wait_frames("b0", has_token(second)) == [untagged]
    assert [f for f in agent_b.frames("b0") if has_token(first)(f)] == []


@pytest.mark.root
def test_agent_errors_carry_the_agent_traceback(netns_factory, agent_factory):
    agent = agent_factory(netns_factory())
    with pytest.raises(AgentError, match=r"send in Agent.*OSError.*No such device(?s:.*)Traceback"):
        agent.send("nosuch0", [b"\x00" * 60])
    with pytest.raises(AgentError, match=r"op: 'bogus' is not a known operation"):
        agent._call("bogus")
    # The agent survives its errors.
    agent.sniff_start("lo")
    assert agent.frames("lo") == []


@pytest.mark.root
def test_namespaces_are_gone_after_teardown():
    # The fixtures of the tests above have been torn down by now.
    assert not set(_made_by_earlier_test) & set(list_netns())
    assert _own_ns_names() == []

    factory = NetnsFactory()
    try:
        ns_a, ns_b = factory(), factory()
        _veth_pair(ns_a, ns_b)
        assert {ns_a.name, ns_b.name} <= set(list_netns())
    finally:
        factory.close()
    assert _own_ns_names() == []
    assert not ns_a.path.exists()


def test_wait_until_returns_the_value_or_fails_with_the_message():
    calls = iter([0, None, "done"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0) == "done"
    with pytest.raises(AssertionError, match=r"never true \(after 0.05 s\)"):
        wait_until(lambda: False, timeout=0.05, message="never true")


def test_marked_frame_sizes_tags_and_tokens():
    frame = marked_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "tok-1")
    assert len(frame) == 60
    assert frame[:12] == bytes.fromhex("020000000002" "020000000001")
    assert frame[12:14] == b"\x88\xb5"
    tagged = marked_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "tok-1", ethertype=0x0800, size=1514, vlan=7)
    assert len(tagged) == 1514
    assert tagged[12:18] == b"\x81\x00\x00\x07\x08\x00"
    assert has_token("tok-1")(frame) and has_token("tok-1")(tagged)
    assert not has_token("tok")(frame)
    with pytest.raises(ValueError, match="size: 20 is too small"):
        marked_frame("02:00:00:00:00:01", "02:00:00:00:00:02", "tok-1", size=20)
