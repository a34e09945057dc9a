"""What each stage of the VXLAN path costs, measured so the machine's load
does not enter the figure.

    .venv/bin/python bench/vxlan_stages.py [--superframes N] [--batches N] [--json OUT]
    valgrind --tool=callgrind --callgrind-out-file=OUT .venv/bin/python bench/vxlan_stages.py --quick
    callgrind_annotate --inclusive=yes OUT | grep -E 'forward_batch|tun_rx|...'

Two datapaths in this process, A on 127.0.0.1 and B on 127.0.0.2, each with
one port (a socketpair with virtio-net headers, as a TAP with offloads) and
the other as its peer, both terminating VXLAN on loopback exactly as
vswitchd sets it up (a UDP socket with UDP_GRO, a raw socket, and UDP
sockets with UDP_SEGMENT). Nothing runs in a thread of its own: the sending
stage is Datapath.forward() on A (TAP read already done: the virtio-net
header check, the decision, GSO, encapsulation and the send), the receiving
stage Datapath.poll_tunnel() on B (recvmmsg, the UDP GRO split, the checks,
the decision, GRO and the write to the port). Each stage's CPU time is
taken from the thread's own clock (user + system, so the kernel's copies
in sendmsg, recvmmsg and the port write are in it); under callgrind the
functions' inclusive instruction counts give the user-space share.

Loads: TCP super-frames as a container's TSO hands them over (46 segments
of 1398 bytes behind timestamps: 64 KB), and batches of 32 frames of 64
bytes from 8 interleaved UDP flows (nothing coalesces them). Every
super-frame's payload is checked to arrive whole and in order, and every
TCP segment the tunnel carried to have a correct checksum.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fastpath import Datapath, vtep_tx_socket  # noqa: E402
from rawframes import BROADCAST, eth, mac, ones_sum, recv_waiting  # noqa: E402

UDP_SEGMENT, UDP_GRO = 103, 104
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32
NETWORK, VNI = 1, 4242
VNET_HLEN = 12
MSS = 1398                    # an underlay MTU of 1500 less VXLAN's 50, IPv4, TCP and timestamps
SEGS = 46                     # what the kernel's TSO puts in a 64 KB super-frame of that MSS


def fionread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


class Vtep:
    """One datapath with its VXLAN sockets on `addr` and one vnet port."""

    def __init__(self, addr: str, vxlan_port: int, peer: str, io_mode: str) -> None:
        self.dp = Datapath(max_ports=8, mac_table_size=1024, io_mode=io_mode)
        self.socks: list[socket.socket] = []
        rx = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        rx.bind((addr, vxlan_port))
        rx.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        self.rx = rx
        tx = vtep_tx_socket(addr)
        self.socks.append(tx)
        self.dp.set_vtep(rx.fileno(), tx.fileno(), vxlan_port, 49152, 65535, 1500)
        gso = []
        for _ in range(4):
            s = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0)
            s.bind((addr, 0))
            gso.append((s.fileno(), s.getsockname()[1]))
        self.dp.set_udp_gso_sockets(gso)
        self.dp.set_network_vni(NETWORK, VNI)
        self.peer = self.dp.add_peer(NETWORK, peer)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.socks += [ours, theirs]
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 32 << 20)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        ours.setblocking(False)
        self.end = ours
        self.port = self.dp.add_port(theirs.fileno(), NETWORK, 1450, True)

    def _sock(self, *args: int) -> socket.socket:
        s = socket.socket(*args)
        self.socks.append(s)
        return s

    def drain(self) -> list[bytes]:
        return recv_waiting(self.end)

    def close(self) -> None:
        del self.dp  # the datapath lets go of the fds before they close
        for s in self.socks:
            s.close()


def vnet(flags: int = 0, gso: int = 0, hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0,
         csum_offset: int = 0) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, csum_start, csum_offset, 0)


def tcp_superframe(seq: int, payload: bytes) -> bytes:
    """A virtio-net header and IPv4/TCP super-frame (timestamps option) as a
    container's TSO hands it over: the TCP checksum partial."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    tcp_len = 32 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, seq & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ~ones_sum(ip) & 0xFFFF) + ip[12:]
    partial = ones_sum(src + dst + struct.pack("!BBH", 0, 6, tcp_len))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 8 << 4, 0x10, 502, partial, 0)
    tcp += b"\x01\x01\x08\x0a" + struct.pack("!II", 12345, 67890)
    frame = eth(mac(2), mac(1), ethertype=0x0800) + ip + tcp + payload
    return vnet(1, 1, hdr_len=66, gso_size=MSS, csum_start=34, csum_offset=16) + frame


def udp_frame(flow: int) -> bytes:
    """A 64-byte IPv4/UDP frame of flow `flow` (its source port), with a checksum."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    body = bytes(18)
    udp = struct.pack("!HHHH", 1000 + flow, 9000, 8 + len(body), 0)
    csum = ~ones_sum(src + dst + struct.pack("!BBH", 0, 17, len(udp) + len(body)) + udp + body) & 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum or 0xFFFF)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(body), 0, 0x4000, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ~ones_sum(ip) & 0xFFFF) + ip[12:]
    return vnet() + eth(mac(2), mac(1), ethertype=0x0800) + ip + udp + body


def tcp_payloads(out: list[bytes]) -> bytes:
    """The TCP payload of frames written to a vnet port (super-frames or not), in order."""
    data = b""
    for m in out:
        frame = m[VNET_HLEN:]
        ihl = (frame[14] & 0x0F) * 4
        ip_len = struct.unpack("!H", frame[16:18])[0]
        thl = (frame[14 + ihl + 12] >> 4) * 4
        data += frame[14 + ihl + thl:14 + ip_len]
    return data


def wait_queued(sock: socket.socket, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while fionread(sock) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("nothing arrived on the VXLAN socket")
        time.sleep(0.0001)


def run(io_mode: str, superframes: int, batches: int) -> dict[str, Any]:
    """Send `superframes` 64 KB super-frames, then `batches` batches of 32
    small frames, from A's port to B's; either may be 0."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    vxlan_port = probe.getsockname()[1]
    probe.close()
    a = Vtep("127.0.0.1", vxlan_port, "127.0.0.2", io_mode)
    b = Vtep("127.0.0.2", vxlan_port, "127.0.0.1", io_mode)
    try:
        # Each side learns the other's MAC: a broadcast from B's port reaches A.
        b.dp.forward(b.port, [vnet() + eth(BROADCAST, mac(2), b"hello")])
        wait_queued(a.rx)
        a.dp.poll_tunnel()
        a.drain()
        assert a.dp.fdb_lookup(NETWORK, mac(2)) is not None, "A did not learn mac(2) behind B"

        payload = os.urandom(SEGS * MSS)
        send_s = recv_s = 0
        got: list[bytes] = []
        for i in range(superframes):
            frame = tcp_superframe(1 + i * len(payload), payload)
            t0 = time.thread_time_ns()
            a.dp.forward(a.port, [frame])
            send_s += time.thread_time_ns() - t0
            wait_queued(b.rx)
            while fionread(b.rx):
                t0 = time.thread_time_ns()
                b.dp.poll_tunnel()
                recv_s += time.thread_time_ns() - t0
            got += b.drain()
        data = tcp_payloads(got)
        if data != payload * superframes:
            raise RuntimeError(f"the super-frames' payload did not arrive intact ({len(data)} of "
                               f"{len(payload) * superframes} bytes)")
        writes = len(got)
        stats_a, stats_b = a.dp.loop_stats()["offload"], b.dp.loop_stats()["offload"]

        frames = [udp_frame(i % 8) for i in range(32)]
        small_send = small_recv = 0
        delivered = 0
        for _ in range(batches):
            t0 = time.thread_time_ns()
            a.dp.forward(a.port, frames)
            small_send += time.thread_time_ns() - t0
            wait_queued(b.rx)
            n = 0
            while n < 32:
                t0 = time.thread_time_ns()
                n += b.dp.poll_tunnel()
                small_recv += time.thread_time_ns() - t0
            delivered += len(b.drain())
        if delivered != 32 * batches:
            raise RuntimeError(f"{delivered} of {32 * batches} small frames arrived")
        drops = {k: v for k, v in b.dp.vxlan_drops().items() if v}
        if drops:
            raise RuntimeError(f"datagrams dropped: {drops}")
        return {
            "io_mode": io_mode,
            "superframes": superframes,
            "superframe_bytes": len(payload) + 66,
            "writes_per_superframe": writes / max(superframes, 1),
            "send_cpu_us_per_superframe": send_s / max(superframes, 1) / 1e3,
            "recv_cpu_us_per_superframe": recv_s / max(superframes, 1) / 1e3,
            "small_frames": 32 * batches,
            "send_cpu_ns_per_small_frame": small_send / max(32 * batches, 1),
            "recv_cpu_ns_per_small_frame": small_recv / max(32 * batches, 1),
            "sender_offload": stats_a,
            "receiver_offload": stats_b,
        }
    finally:
        a.close()
        b.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--superframes", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="100 super-frames and 100 batches (for callgrind)")
    ap.add_argument("--only", choices=("superframes", "small"), help="one load alone (callgrind: one stage table each)")
    ap.add_argument("--io-mode", default="poll")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("vxlan_stages needs root: the VTEP sends from a raw socket")
    if args.quick:
        args.superframes = args.batches = 100
    if args.only == "superframes":
        args.batches = 0
    elif args.only == "small":
        args.superframes = 0
    res = run(args.io_mode, args.superframes, args.batches)
    for k, v in res.items():
        if not isinstance(v, dict):
            print(f"{k:>32}: {v:.2f}" if isinstance(v, float) else f"{k:>32}: {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
