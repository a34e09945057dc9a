"""The Ethernet / 802.1Q parser on valid and malformed frames."""
from fastpath.frame import parse

from rawframes import BROADCAST, eth, mac


def test_ethernet_ii():
    r = parse(eth(mac(2), mac(1), b"x" * 46))
    assert r["drop"] is None
    assert (r["dst"], r["src"], r["ethertype"], r["tagged"], r["l2_len"]) == (mac(2), mac(1), 0x88B5, False, 14)


def test_8021q_tag():
    r = parse(eth(mac(2), mac(1), b"x" * 46, ethertype=0x0800, vlan=0x2064))
    assert r["drop"] is None
    assert (r["tagged"], r["vlan"], r["ethertype"], r["l2_len"]) == (True, 0x064, 0x0800, 18)


def test_runts():
    for n in range(14):
        assert parse(bytes(n))["drop"] == "runt"
    # a tag announced but cut short
    assert parse(mac(2) + mac(1) + b"\x81\x00\x00")["drop"] == "runt"
    assert parse(eth(mac(2), mac(1)))["drop"] is None  # 14 bytes: header only is legal here


def test_too_big_against_mtu():
    assert parse(eth(mac(2), mac(1), b"x" * 1500), mtu=1500)["drop"] is None
    assert parse(eth(mac(2), mac(1), b"x" * 1501), mtu=1500)["drop"] == "too_big"
    # a tag adds 4 bytes of allowance
    assert parse(eth(mac(2), mac(1), b"x" * 1500, vlan=5), mtu=1500)["drop"] is None
    assert parse(eth(mac(2), mac(1), b"x" * 1501, vlan=5), mtu=1500)["drop"] == "too_big"


def test_group_source_mac():
    assert parse(eth(mac(2), BROADCAST))["drop"] == "src_multicast"
    assert parse(eth(mac(2), b"\x01\x00\x5e\x00\x00\x01"))["drop"] == "src_multicast"
    assert parse(eth(BROADCAST, mac(1)))["drop"] is None  # group destination is fine
