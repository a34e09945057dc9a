"""Trunk ports and offloads, through the compiled loop over socketpairs.

A tag pushed or removed moves everything behind the MACs by 4 bytes: the
virtio-net header's csum_start and hdr_len must move with it, a partial
checksum completed for a port without offloads must land in the right place,
and a super-frame from a trunk must still be cut into valid segments for the
tunnel. Also the datapath's own checks of a trunk's table.
"""
import socket
import struct

import pytest

from fastpath import Datapath, vtep_tx_socket
from loop_rig import LoopRig, rig  # noqa: F401  (fixture)
from rawframes import BROADCAST, eth, mac, ones_sum
from test_offloads import GSO_TCPV4, VNET_F_NEEDS_CSUM, tcp_superframe, udp_frame_with_partial_csum, vnet

pytestmark = pytest.mark.io_modes

VID = 10


def tag(frame: bytes, vid: int = VID) -> bytes:
    return frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]


def tagged_vnet(hdr: bytes) -> bytes:
    """A virtio-net header's offsets counted from the frame with a tag in it."""
    flags, gso, hdr_len, gso_size, start, offset, nbuf = struct.unpack("<BBHHHHH", hdr)
    return struct.pack("<BBHHHHH", flags, gso, hdr_len + 4 if hdr_len else 0, gso_size, start + 4 if start else 0,
                       offset, nbuf)


def test_a_superframe_leaves_a_trunk_tagged_with_its_offsets_moved(rig):
    src, other = rig.add_port(1, vnet_hdr=True), rig.add_port(1, vnet_hdr=True)
    trunk = rig.add_port(0, vnet_hdr=True, trunk={1: VID})
    sent = tcp_superframe(3000, gso_size=1000)
    hdr, frame = sent[:12], sent[12:]
    rig.send(src, sent)
    assert rig.recv_all(trunk) == [tagged_vnet(hdr) + tag(frame)]
    assert tagged_vnet(hdr) == vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, hdr_len=58, gso_size=1000, csum_start=38,
                                    csum_offset=16)
    assert rig.recv_all(other) == [sent], "the access port of the same flood got the tagged copy"


def test_a_tagged_superframe_from_a_trunk_arrives_untagged_with_its_offsets_moved(rig):
    dst = rig.add_port(1, vnet_hdr=True)
    trunk = rig.add_port(0, vnet_hdr=True, trunk={1: VID})
    sent = tcp_superframe(3000, gso_size=1000)
    hdr, frame = sent[:12], sent[12:]
    rig.send(trunk, tagged_vnet(hdr) + tag(frame))
    assert rig.recv_all(dst) == [sent]
    c = rig.dp.port_counters(trunk)
    assert sum(c["drops"].values()) == 0 and c["rx_bytes"] == len(frame) + 4


def test_partial_checksums_are_completed_in_place_through_a_trunk(rig):
    src = rig.add_port(1, vnet_hdr=True)
    plain_trunk = rig.add_port(0, trunk={1: VID})
    partial, full = udp_frame_with_partial_csum(b"payload!" * 10)
    rig.send(src, vnet(VNET_F_NEEDS_CSUM, csum_start=34, csum_offset=6) + partial)
    assert rig.recv_all(plain_trunk) == [tag(full)]
    # And the other way: a tagged partial frame from a trunk with offloads, to a plain access port.
    vnet_trunk = rig.add_port(0, vnet_hdr=True, trunk={2: VID})
    plain = rig.add_port(2)
    rig.send(vnet_trunk, vnet(VNET_F_NEEDS_CSUM, csum_start=38, csum_offset=6) + tag(partial))
    assert rig.recv_all(plain) == [full]


def test_a_checksum_start_inside_the_tag_is_refused(rig):
    dst = rig.add_port(1, vnet_hdr=True)
    trunk = rig.add_port(0, vnet_hdr=True, trunk={1: VID})
    partial, _ = udp_frame_with_partial_csum(b"x" * 20)
    rig.send(trunk, vnet(VNET_F_NEEDS_CSUM, csum_start=16, csum_offset=6) + tag(partial))
    assert rig.recv_all(dst) == []
    assert {r: n for r, n in rig.dp.port_counters(trunk)["drops"].items() if n} == {"bad_vnet_hdr": 1}


def test_a_frame_flooded_to_trunks_and_access_ports_is_tagged_per_port(rig):
    src = rig.add_port(1)
    access = rig.add_port(1)
    t10, t30 = rig.add_port(0, trunk={1: 10, 2: 20}), rig.add_port(0, trunk={1: 30})
    native = rig.add_port(0, trunk={2: 20}, native=1)
    elsewhere = rig.add_port(0, trunk={2: 10})
    frame = eth(BROADCAST, mac(1), b"to all of network 1")
    rig.send(src, frame)
    got = rig.drain()
    assert got == {src: [], access: [frame], t10: [tag(frame, 10)], t30: [tag(frame, 30)], native: [frame],
                   elsewhere: []}


@pytest.mark.root
def test_a_superframe_from_a_trunk_is_cut_into_valid_untagged_segments_for_the_tunnel(io_mode):
    rx, peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = vtep_tx_socket("127.0.0.1")
    rig = None
    try:
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        peer.bind(("127.0.0.2", port))
        peer.settimeout(10)
        rig = LoopRig(io_mode=io_mode)
        rig.dp.set_vtep(rx.fileno(), tx.fileno(), port, 49152, 65535, 1500)
        rig.dp.set_network_vni(1, 100)
        rig.dp.add_peer(1, "127.0.0.2")
        trunk = rig.add_port(0, vnet_hdr=True, trunk={1: VID})
        sent = tcp_superframe(3000, gso_size=1000)
        rig.send(trunk, tagged_vnet(sent[:12]) + tag(sent[12:]))
        segments = [peer.recv(70000)[8:] for _ in range(3)]  # each past its VXLAN header
        assert [len(s) for s in segments] == [54 + 1000] * 3
        for s in segments:
            assert s[12:14] == b"\x08\x00", "a segment kept its tag"
            ip, tcp = s[14:34], s[34:]
            assert ones_sum(ip) == 0xFFFF
            pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
            assert ones_sum(pseudo + tcp) == 0xFFFF, "a segment's TCP checksum is wrong"
    finally:
        if rig is not None:
            rig.close()
        for s in (rx, peer, tx):
            s.close()


def test_the_datapath_refuses_a_bad_trunk_and_keeps_the_old_one(io_mode):
    dp = Datapath(max_ports=4, max_networks=8, io_mode=io_mode)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(ValueError, match="give network 0"):
            dp.add_port(a.fileno(), 1, trunk={2: 10})
        for trunk, native, why in (({2: 0}, 0, "VLAN ID 0"), ({2: 4095}, 0, "VLAN ID 4095"), ({9: 10}, 0, "network id 9"),
                                   ({2: 10, 3: 10}, 0, "given to networks"), ({2: 10}, 2, "native and tagged")):
            with pytest.raises(ValueError, match=why):
                dp.add_port(a.fileno(), 0, trunk=trunk, native=native)
        idx = dp.add_port(a.fileno(), 0, trunk={2: 10}, native=3)
        with pytest.raises(ValueError, match="given to networks"):
            dp.set_trunk(idx, {2: 10, 4: 10})
        assert dp.port_trunk(idx) == ({2: 10}, 3)
        dp.set_trunk(idx, {4: 40})
        assert dp.port_trunk(idx) == ({4: 40}, 0)
        access = dp.add_port(b.fileno(), 1)
        with pytest.raises(LookupError, match="not a trunk port"):
            dp.set_trunk(access, {2: 10})
        dp.remove_port(idx)
        assert dp.port_trunk(idx) is None
    finally:
        a.close()
        b.close()
