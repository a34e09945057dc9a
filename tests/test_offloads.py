"""virtio-net headers and TSO super-frames through the loop."""
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

from tests.harness.daemon import free_port
from tests.harness.hosts import lab  # noqa: F401  (fixture)
from tests.harness.tcp import tcp_transfer

from fastpath import vtep_tx_socket
from loop_rig import LoopRig, rig  # noqa: F401  (fixture)
from rawframes import BROADCAST, eth, mac, ones_sum, partial_udp, recv_waiting

VNET_F_NEEDS_CSUM = 1
VNET_HLEN = 12
GSO_NONE, GSO_TCPV4 = 0, 1

pytestmark = pytest.mark.io_modes


def vnet(flags=0, gso=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, csum_start, csum_offset, 0)


def udp_frame_with_partial_csum(payload: bytes) -> tuple[bytes, bytes]:
    """An IPv4/UDP frame as a kernel with checksum offload hands it over: the
    UDP checksum field holds only the pseudo-header sum. Returns (frame with
    partial checksum, the same frame with the complete checksum)."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ~ones_sum(ip) & 0xFFFF) + ip[12:]
    full_csum = ~ones_sum(src + dst + struct.pack("!BBH", 0, 17, udp_len) + struct.pack("!HHHH", 1000, 2000, udp_len, 0) + payload) & 0xFFFF
    full = eth(mac(2), mac(1), ethertype=0x0800) + ip + struct.pack("!HHHH", 1000, 2000, udp_len, full_csum or 0xFFFF) + payload
    return partial_udp(full)[1], full


def test_vnet_frames_pass_between_vnet_ports_header_and_all(rig):
    va, vb = rig.add_port(1, vnet_hdr=True), rig.add_port(1, vnet_hdr=True)
    hdr = vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)
    superframe = eth(BROADCAST, mac(1), ethertype=0x0800) + bytes(40) + bytes(range(256)) * 200  # > MTU
    rig.send(va, hdr + superframe)
    assert rig.recv_all(vb) == [hdr + superframe]
    c = rig.dp.port_counters(va)
    assert c["rx_bytes"] == len(superframe) and sum(c["drops"].values()) == 0


def test_partial_checksum_is_completed_for_a_plain_port_and_header_added_for_a_vnet_one(rig):
    src, plain = rig.add_port(1, vnet_hdr=True), rig.add_port(1)
    other_vnet = rig.add_port(1, vnet_hdr=True)
    partial, full = udp_frame_with_partial_csum(b"payload!" * 10)
    hdr = vnet(VNET_F_NEEDS_CSUM, csum_start=34, csum_offset=6)
    rig.send(src, hdr + partial)
    assert rig.recv_all(plain) == [full]
    # The other vnet port gets it as sent, or, if the plain port was served
    # first, completed and without NEEDS_CSUM: header and content must agree.
    assert rig.recv_all(other_vnet) in ([hdr + partial], [vnet(0, csum_start=34, csum_offset=6) + full])
    # A plain frame reaching a vnet port gets an all-zero header in front.
    rig.send(plain, eth(BROADCAST, mac(3), b"plain"))
    assert rig.recv_all(src) == [vnet() + eth(BROADCAST, mac(3), b"plain")]


def test_superframe_to_a_plain_port_is_dropped_and_counted(rig):
    src, plain = rig.add_port(1, vnet_hdr=True), rig.add_port(1)
    hdr = vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16)
    rig.send(src, hdr + eth(BROADCAST, mac(1), ethertype=0x0800) + bytes(4000))
    assert rig.recv_all(plain) == []
    assert rig.dp.port_counters(plain)["drops"]["gso_unsupported"] == 1


@pytest.mark.parametrize(
    "hdr, why",
    [
        (vnet(VNET_F_NEEDS_CSUM, 2, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16), "unknown GSO type"),
        (vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, hdr_len=54, gso_size=0, csum_start=34, csum_offset=16), "gso_size 0"),
        (vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, hdr_len=9000, gso_size=1448, csum_start=34, csum_offset=16), "hdr_len past the end"),
        (vnet(VNET_F_NEEDS_CSUM, csum_start=3000, csum_offset=6), "checksum past the end"),
        # Completing it would write into the Ethernet header the switch has checked: here the
        # ethertype, which could become an 802.1Q tag on an access port.
        (vnet(VNET_F_NEEDS_CSUM, csum_start=0, csum_offset=12), "checksum inside the Ethernet header"),
        (vnet(VNET_F_NEEDS_CSUM, csum_start=13, csum_offset=0), "checksum starting inside the Ethernet header"),
        (vnet(0, GSO_TCPV4, hdr_len=54, gso_size=1448), "GSO without a partial checksum"),
    ],
)
def test_lying_vnet_headers_are_dropped_and_counted(rig, hdr, why):
    src, dst = rig.add_port(1, vnet_hdr=True), rig.add_port(1, vnet_hdr=True)
    frame = eth(BROADCAST, mac(1), ethertype=0x0800) + bytes(2000)
    rig.send(src, hdr + frame)
    assert rig.recv_all(dst) == [], why
    assert rig.dp.port_counters(src)["drops"]["bad_vnet_hdr"] == 1
    good = vnet() + eth(BROADCAST, mac(1), b"ok")
    rig.send(src, good)  # and the loop goes on
    assert rig.recv_all(dst) == [good]


def test_frame_shorter_than_its_header_is_a_runt(rig):
    src, dst = rig.add_port(1, vnet_hdr=True), rig.add_port(1, vnet_hdr=True)
    rig.send(src, b"\x00" * 5)
    assert rig.dp.port_counters(src)["drops"]["runt"] == 1
    assert rig.recv_all(dst) == []


def udp_burst(n: int, size: int = 64, dst_mac: str = "02:00:00:00:00:02", dst_ip: str = "10.0.0.2") -> list[bytes]:
    """n datagrams of one flow as a connected socket sends them: DF, the IP
    ID counting up, each payload numbered."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return [bytes(Ether(src="02:00:00:00:00:01", dst=dst_mac) / IP(src="10.0.0.1", dst=dst_ip, id=500 + k, flags="DF")
                  / UDP(sport=40000, dport=9000) / (k.to_bytes(4, "big") + bytes(size - 4)))
            for k in range(n)]


def offloaded(frame: bytes) -> bytes:
    """The frame led by the virtio-net header, with the partial checksum, that
    a kernel with checksum offload hands over."""
    return b"".join(partial_udp(frame))


@pytest.mark.parametrize("gro_udp", [True, False])
def test_a_udp_burst_reaches_a_vnet_port_coalesced_and_whole(io_mode, gro_udp):
    """40 datagrams waiting when their port is attached arrive in batches: to
    a port with offloads they go as UDP super-frames that cut back into exactly
    the datagrams sent, in order (or one by one, as sent, with gro_udp off)."""
    from fastpath.gso import segment
    rig = LoopRig(io_mode=io_mode, gro_udp=gro_udp)
    try:
        dst = rig.add_port(1, vnet_hdr=True)
        rig.dp.fdb_set_static(1, "02:00:00:00:00:02", dst)
        grams = udp_burst(40)
        rig.add_port(1, vnet_hdr=True, waiting=tuple(offloaded(g) for g in grams))
        rig.wait_frames(40)
        got = rig.recv_all(dst)
        offload = rig.dp.loop_stats()["offload"]
        if not gro_udp:
            assert got == [offloaded(g) for g in grams] and offload["gro_coalesced"] == 0
            return
        assert 2 <= len(got) < len(grams)
        assert [s for f in got for s in segment(f[12:], f[:12])] == grams
        assert offload["gro_coalesced"] == len(grams) - len(got)
        assert rig.dp.port_counters(dst)["tx_packets"] == len(got)
    finally:
        rig.close()


def test_a_udp_burst_reaches_a_plain_port_one_datagram_at_a_time(rig):
    plain = rig.add_port(1)
    rig.dp.fdb_set_static(1, "02:00:00:00:00:02", plain)
    grams = udp_burst(40)
    rig.add_port(1, vnet_hdr=True, waiting=tuple(offloaded(g) for g in grams))
    rig.wait_frames(40)
    assert rig.recv_all(plain) == grams  # checksums completed
    assert rig.dp.loop_stats()["offload"]["gro_coalesced"] == 0


# ---- through real TAPs -------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("offloads", [True, False])
def test_large_tcp_transfer_is_intact(netns_factory, vswitchd_factory, offloads):
    c1, c2 = netns_factory(), netns_factory()
    d = vswitchd_factory(f"""
[switch]
offloads = {str(offloads).lower()}
[[network]]
name = "blue"
[[port]]
name = "c1"
netns = "{c1.name}"
network = "blue"
ip = "10.88.0.1/24"
[[port]]
name = "c2"
netns = "{c2.name}"
network = "blue"
ip = "10.88.0.2/24"
""")
    tcp_transfer(c1.name, c2.name, "10.88.0.2", 64 << 20)
    c = {p["name"]: p["counters"] for p in d.ctl("port", "list")}["c1"]
    per_frame = c["rx_bytes"] / c["rx_packets"]
    if offloads:
        assert per_frame > 1514, "no TSO super-frame crossed the switch"
        assert d.ctl("stats")["loop"]["offload"]["superframes_out"] > 0
    else:
        assert per_frame <= 1514
    assert sum(c["drops"].values()) == 0


@pytest.mark.root
@pytest.mark.parametrize("offloads", [True, False])
def test_tcp_across_vxlan_is_intact_and_every_segment_valid(lab, offloads):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    from tests.harness.hosts import UNDERLAY_IF, decode_vxlan

    h1, h2 = lab.add_hosts(2)
    c1 = h1.add_container("c1", "blue", "10.60.0.1/24")
    c2 = h2.add_container("c2", "blue", "10.60.0.2/24")
    lab.start_mesh({"blue": 100}, switch={"offloads": offloads})
    # A NIC cuts UDP_SEGMENT trains into datagrams before the wire; a veth
    # hands the train over whole, and a capture would see it as one packet.
    # Make h1's underlay behave like a NIC so the capture sees the wire.
    h1.ns.exec("ethtool", "-K", UNDERLAY_IF, "tx-udp-segmentation", "off")
    underlay = h2.underlay()
    tcp_transfer(c1.ns.name, c2.ns.name, c2.addr, 1 << 20)  # captured: keep it small
    outer = [decode_vxlan(f, dst_ip=h2.ip) for f in underlay.frames(UNDERLAY_IF)]
    inner = [Ether(bytes(p[VXLAN].payload)) for p in outer if p is not None]
    segments = [p for p in inner if TCP in p and p[TCP].dport == 5001]
    assert len(segments) > (1 << 20) // 1500
    for seg in segments:
        assert len(bytes(seg)) <= 1450 + 14, "an inner frame exceeds the network's MTU"
        ip_sum, tcp_sum = seg[IP].chksum, seg[TCP].chksum
        del seg[IP].chksum, seg[TCP].chksum
        again = Ether(bytes(seg))
        assert (ip_sum, tcp_sum) == (again[IP].chksum, again[TCP].chksum), "bad inner checksum"
    # Back to a veth that carries UDP_SEGMENT trains whole: the receiving
    # kernel then hands them to vswitchd coalesced (UDP GRO).
    h1.ns.exec("ethtool", "-K", UNDERLAY_IF, "tx-udp-segmentation", "on")
    tcp_transfer(c1.ns.name, c2.ns.name, c2.addr, 32 << 20)
    offload = h1.ctl("stats")["loop"]["offload"]
    received = h2.ctl("stats")["loop"]["offload"]
    if offloads:
        assert offload["segmented"] > 0 and offload["segments"] > offload["segmented"]
        assert received["gro_superframes"] > 0 and received["gro_coalesced"] > received["gro_superframes"]
        assert received["udp_gro_datagrams"] > 0
    else:
        assert offload["segmented"] == 0 and received["gro_superframes"] == 0
    assert all(v == 0 for v in offload["gso_errors"].values())


@pytest.mark.root
def test_100_mb_each_way_across_vxlan_arrive_intact(lab):
    """Both directions through the whole tunnel path at full speed: TAP read,
    segmentation into UDP_SEGMENT trains, UDP GRO receive, coalescing and
    the gathered TAP write. sha256 at both ends of each transfer."""
    h1, h2 = lab.add_hosts(2)
    c1 = h1.add_container("c1", "blue", "10.61.0.1/24")
    c2 = h2.add_container("c2", "blue", "10.61.0.2/24")
    lab.start_mesh({"blue": 100})
    tcp_transfer(c1.ns.name, c2.ns.name, c2.addr, 100 << 20)
    tcp_transfer(c2.ns.name, c1.ns.name, c1.addr, 100 << 20)
    for sender, receiver in ((h1, h2), (h2, h1)):
        sent, got = sender.ctl("stats")["loop"]["offload"], receiver.ctl("stats")["loop"]["offload"]
        assert sent["segmented"] > 0 and all(v == 0 for v in sent["gso_errors"].values())
        assert got["udp_gro_datagrams"] > 0 and got["gro_superframes"] > 0
        assert not any(receiver.ctl("stats")["vxlan"]["drops"].values())


def tcp_superframe(payload_len: int, gso_size: int) -> bytes:
    """A virtio-net header and IPv4/TCP super-frame as a container's TSO hands it over."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    tcp_len = 20 + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ~ones_sum(ip) & 0xFFFF) + ip[12:]
    partial = ones_sum(src + dst + struct.pack("!BBH", 0, 6, tcp_len))
    tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 1, 1, 5 << 4, 0x10, 65535, partial, 0)
    frame = eth(BROADCAST, mac(1), ethertype=0x0800) + ip + tcp + bytes(payload_len)
    return vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, hdr_len=54, gso_size=gso_size, csum_start=34, csum_offset=16) + frame


def test_a_superframe_fits_an_output_port_when_its_segments_do(rig):
    src = rig.add_port(1, mtu=9000, vnet_hdr=True)
    small, big = rig.add_port(1, mtu=1500, vnet_hdr=True), rig.add_port(1, mtu=9000, vnet_hdr=True)
    # Segments of IPv4 20 + TCP 20 + gso_size bytes.
    at_mtu, past_mtu, jumbo = (tcp_superframe(20000, gso_size=n) for n in (1460, 1461, 8960))
    for f in (at_mtu, past_mtu, jumbo):
        rig.send(src, f)
    assert rig.drain() == {src: [], small: [at_mtu], big: [at_mtu, past_mtu, jumbo]}
    assert {r: n for r, n in rig.dp.port_counters(small)["drops"].items() if n} == {"mtu_exceeded": 2}


def test_frames_over_the_output_mtu_are_not_coalesced_but_dropped_one_by_one(io_mode):
    rig = LoopRig(io_mode=io_mode, gro_udp=True)
    try:
        small = rig.add_port(1, mtu=1400, vnet_hdr=True)
        rig.dp.fdb_set_static(1, "02:00:00:00:00:02", small)
        fits, over = udp_burst(20, size=1372), udp_burst(20, size=1373)  # IP 20 + UDP 8 + payload
        rig.add_port(1, mtu=9000, vnet_hdr=True, waiting=tuple(offloaded(g) for g in fits + over))
        rig.wait_frames(40)
        got = rig.recv_all(small)
        from fastpath.gso import segment
        assert [s for f in got for s in segment(f[12:], f[:12])] == fits
        assert rig.dp.port_counters(small)["drops"]["mtu_exceeded"] == 20
    finally:
        rig.close()


@pytest.mark.root
def test_a_segment_too_long_for_a_udp_segment_train_goes_out_alone(io_mode):
    """With an underlay MTU of 65535 a segment can outgrow what one UDP_SEGMENT
    send carries (65000 bytes); it must leave on its own, not stall the loop."""
    rx, peer, gso = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    tx = vtep_tx_socket("127.0.0.1")
    rig = None
    try:
        rx.bind(("127.0.0.1", 0))
        vxlan_port = rx.getsockname()[1]
        peer.bind(("127.0.0.2", vxlan_port))
        peer.settimeout(10)
        gso.bind(("127.0.0.1", 0))
        rig = LoopRig(io_mode=io_mode)
        rig.dp.set_vtep(rx.fileno(), tx.fileno(), vxlan_port, 49152, 65535, 65535)
        rig.dp.set_udp_gso_sockets([(gso.fileno(), gso.getsockname()[1])])
        rig.dp.set_network_vni(1, 100)
        rig.dp.add_peer(1, "127.0.0.2")
        src = rig.add_port(1, vnet_hdr=True)
        rig.send(src, tcp_superframe(65495, gso_size=65000))  # an IPv4 packet of 65535 bytes
        got = [peer.recv(70000) for _ in range(2)]
        assert [len(d) for d in got] == [8 + 54 + 65000, 8 + 54 + 495]
        rig.send(src, tcp_superframe(3000, gso_size=1000))  # and the loop goes on
        assert [len(peer.recv(70000)) for _ in range(3)] == [8 + 54 + 1000] * 3
    finally:
        if rig is not None:
            rig.close()
        for s in (rx, peer, gso, tx):
            s.close()


RECEIVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("0.0.0.0", 9000)); s.settimeout(10); print("ready", flush=True)
    for _ in range(int(sys.argv[1])):
        print(s.recv(65536).hex(), flush=True)
""")


@pytest.mark.root
def test_the_kernel_takes_udp_superframes_and_the_socket_gets_every_datagram(netns_factory, io_mode):
    """The receiving kernel cuts a UDP super-frame written to its TAP back into
    the datagrams, and its socket reads each of them, in order."""
    from fastpath import Datapath, kernel_takes_udp_superframes
    from vswitch.tap import TSO_OFFLOADS, open_tap
    if not kernel_takes_udp_superframes():
        pytest.skip("this kernel's TAP takes no UDP super-frames (Linux < 6.2): none are made")
    ns = netns_factory()
    tap = open_tap(str(ns.path), "eth0", mac="02:00:00:00:00:02", ip="10.0.0.2/24", mtu=1500, vnet_hdr=True,
                   offloads=TSO_OFFLOADS)
    rig = LoopRig(io_mode=io_mode)
    receiver = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", RECEIVER, "40"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        port = rig.dp.add_port(tap.fd, 1, 1500, True)
        rig.dp.fdb_set_static(1, "02:00:00:00:00:02", port)
        grams = udp_burst(40, size=100)
        rig.add_port(1, vnet_hdr=True, waiting=tuple(offloaded(g) for g in grams))
        rig.wait_frames(40)
        got = [bytes.fromhex(receiver.stdout.readline().strip()) for _ in grams]
        assert got == [g[42:] for g in grams]
        assert rig.dp.loop_stats()["offload"]["gro_coalesced"] > 0
        assert rig.dp.port_counters(port)["tx_packets"] < len(grams)
    finally:
        receiver.kill()
        receiver.wait()
        rig.close()
        tap.close()


class Vtep:
    """A datapath terminating VXLAN on a loopback address, as vswitchd sets
    it up (UDP socket with UDP_GRO, raw socket, a UDP_SEGMENT socket), with
    one vnet port; driven by hand (forward, poll_tunnel), no loop thread."""

    def __init__(self, addr: str, vxlan_port: int, peer: str) -> None:
        from fastpath import Datapath
        self.socks = []
        self.dp = Datapath(max_ports=4, mac_table_size=64)
        rx = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        rx.bind((addr, vxlan_port))
        rx.setsockopt(socket.SOL_UDP, 104, 1)  # UDP_GRO
        self.rx = rx
        tx = vtep_tx_socket(addr)
        self.socks.append(tx)
        gso = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
        gso.setsockopt(socket.SOL_UDP, 103, 0)  # UDP_SEGMENT
        gso.bind((addr, 0))
        self.dp.set_vtep(rx.fileno(), tx.fileno(), vxlan_port, 49152, 65535, 1500)
        self.dp.set_udp_gso_sockets([(gso.fileno(), gso.getsockname()[1])])
        self.dp.set_network_vni(1, 100)
        self.dp.add_peer(1, peer)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.socks += [ours, theirs]
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        ours.setblocking(False)
        self.end = ours
        self.port = self.dp.add_port(theirs.fileno(), 1, 1450, True)

    def _sock(self, *args) -> socket.socket:
        s = socket.socket(*args)
        self.socks.append(s)
        return s

    def poll_until_read(self, timeout: float = 5.0) -> int:
        """Run the tunnel's receive by hand once datagrams wait, until none is
        left; returns how many receives read something."""
        import time
        deadline = time.monotonic() + timeout
        while self.dp.poll_tunnel() == 0:
            assert time.monotonic() < deadline, "nothing arrived on the VXLAN socket"
        reads = 1
        while self.dp.poll_tunnel():
            reads += 1
        return reads

    def delivered(self) -> list[bytes]:
        """The frames waiting at the port's end, each with its vnet header."""
        return recv_waiting(self.end)

    def close(self) -> None:
        del self.dp
        for s in self.socks:
            s.close()


@pytest.mark.root
def test_a_superframe_crosses_the_tunnel_whole_as_one_gathered_write():
    """A 64 KB super-frame of 46 segments leaves A as UDP_SEGMENT trains
    gathered from the frame where it was read, reaches B's socket coalesced
    by the kernel (UDP GRO), and leaves B as one super-frame, gathered from
    the datagrams where they were read: the payload whole, the headers those
    of the first segment with the run's length, a partial checksum."""
    import os
    vxlan_port = free_port(socket.SOCK_DGRAM, "127.0.0.1")
    a = b = None
    try:
        a, b = Vtep("127.0.0.1", vxlan_port, "127.0.0.2"), Vtep("127.0.0.2", vxlan_port, "127.0.0.1")
        # A learns mac(2) behind B, B learns it on its port.
        b.dp.forward(b.port, [vnet() + eth(BROADCAST, mac(2), b"hello")])
        a.poll_until_read()
        payload = os.urandom(46 * 1398)
        frame = tcp_superframe(len(payload), gso_size=1398)
        frame = frame[:VNET_HLEN] + eth(mac(2), mac(1), ethertype=0x0800) + frame[VNET_HLEN + 14:-len(payload)] + payload
        a.dp.forward(a.port, [frame])
        reads = b.poll_until_read()
        out = b.delivered()
        # The two trains (44 segments and 2: an IPv4 datagram's limit) arrive
        # in one receive unless the kernel queued the second late; every
        # receive's run leaves as one write.
        assert len(out) == reads
        data = b""
        for m in out:
            hdr, got = m[:VNET_HLEN], m[VNET_HLEN:]
            flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, _ = struct.unpack("<BBHHHHH", hdr)
            assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
                VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1398, 34, 16)
            assert got[:14] == frame[VNET_HLEN:VNET_HLEN + 14]
            assert struct.unpack("!H", got[16:18])[0] == len(got) - 14
            data += got[54:]
        assert data == payload
        assert a.dp.loop_stats()["offload"]["segments"] == 46
        assert b.dp.loop_stats()["offload"]["gro_coalesced"] == 46 - len(out)
        assert b.dp.loop_stats()["offload"]["udp_gro_datagrams"] > 0
        assert not any(b.dp.vxlan_drops().values())
    finally:
        for v in (a, b):
            if v is not None:
                v.close()


@pytest.mark.root
def test_a_udp_gro_run_decided_once_still_counts_a_short_last_datagram():
    """Datagrams of one UDP GRO run with the same headers take the first
    one's decision; a last datagram too short for a VXLAN and an Ethernet
    header is still counted as truncated, never delivered, even when the
    buffer holds matching bytes past its end from an earlier run."""
    vxlan_port = free_port(socket.SOCK_DGRAM, "127.0.0.2")
    b = peer = None
    try:
        b = Vtep("127.0.0.2", vxlan_port, "127.0.0.1")
        b.dp.forward(b.port, [vnet() + eth(BROADCAST, mac(2), b"hello")])  # mac(2) is on B's port
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        datagram = struct.pack("!II", 0x08 << 24, 100 << 8) + eth(mac(2), mac(1), b"x" * 50)

        def train(last: bytes) -> None:
            peer.sendmsg([datagram * 5 + last], [(socket.SOL_UDP, 103, struct.pack("H", len(datagram)))], 0,
                         ("127.0.0.2", vxlan_port))
            b.poll_until_read()

        train(datagram)  # six whole datagrams: the buffer now holds them
        assert b.delivered() == [vnet() + datagram[8:]] * 6
        train(datagram[:10])  # the same, but the last cut to 10 bytes
        assert b.delivered() == [vnet() + datagram[8:]] * 5
        assert b.dp.vxlan_drops()["truncated"] == 1
        assert b.dp.loop_stats()["offload"]["udp_gro_datagrams"] == 12
    finally:
        if peer is not None:
            peer.close()
        if b is not None:
            b.close()
