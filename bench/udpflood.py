"""The 64-byte UDP load of the frames/s figures: a sender and a sink.

    .venv/bin/python bench/udpflood.py send HOST PORT SECONDS [FLOWS]    (prints {"sent": N, "seconds": T})
    .venv/bin/python bench/udpflood.py sink PORT [FLOWS]

The sender hands datagrams to the kernel with sendmmsg(2), BATCH per system
call, on a connected socket, so one core offers more than any userspace
switch here forwards and each is measured at saturation (iperf3, one send()
per datagram, offers little more than a fast switch forwards); results.md
shows the offered rate and the loss beside every figure. The sink holds the
port open and never reads: the receiving kernel drops what overflows its
small buffer after the interface has counted it, sends no ICMP port
unreachable back through the switch, and no receiving process takes CPU from
the switch on a small machine.

With FLOWS > 1 the datagrams go round-robin to FLOWS ports from PORT up, one
flow after the other, so that no two consecutive datagrams belong to one
flow: nothing can be coalesced on the way, and every frame is forwarded on
its own (the sink then holds all those ports). A UDP socket sending to
changing destinations pays a route lookup per datagram and offers little
more than a fast switch forwards, so these go out as ready-made frames
through a packet socket (PACKET_QDISC_BYPASS), like a traffic generator:
real UDP/IPv4 datagrams with complete checksums, to the MAC address the
sending container's ARP cache holds for HOST.
"""
from __future__ import annotations

import ctypes
import errno
import json
import signal
import socket
import struct
import sys
import time
from pathlib import Path

PAYLOAD = 64
BATCH = 256
SINK_RCVBUF = 64 << 10
SPORT = 40000
SOL_PACKET = 263                   # linux/socket.h
PACKET_QDISC_BYPASS = 20           # linux/if_packet.h


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def neighbour(host: str) -> tuple[str, str]:
    """(interface, MAC address) of `host` in this namespace's ARP cache."""
    for line in Path("/proc/net/arp").read_text().splitlines()[1:]:
        ip, _, flags, mac, _, dev = line.split()
        if ip == host and int(flags, 16) & 0x2:  # ATF_COM: resolved
            return dev, mac
    raise SystemExit(f"udpflood: no ARP entry for {host}: ping it first")


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp_len = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, udp_len)
    csum = checksum(pseudo + struct.pack("!HHHH", sport, dport, udp_len, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, csum)
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + ip + udp + payload


def flow_frames(host: str, port: int, flows: int) -> tuple[socket.socket, list[bytes]]:
    """A packet socket on the interface towards `host`, and one frame per flow."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((host, port))
    src = probe.getsockname()[0]
    probe.close()
    ifname, dst_mac = neighbour(host)
    src_mac = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    return sock, [udp_frame(src_mac, dst_mac, src, host, SPORT, port + k, bytes(PAYLOAD)) for k in range(flows)]


def send(host: str, port: int, seconds: float, flows: int = 1) -> dict[str, float]:
    libc = ctypes.CDLL(None, use_errno=True)
    if flows == 1:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, port))
        datagrams = [bytes(PAYLOAD)]
    else:
        sock, datagrams = flow_frames(host, port, flows)
    bufs = [ctypes.create_string_buffer(d, len(d)) for d in datagrams]
    iovs = [Iovec(ctypes.cast(b, ctypes.c_void_p), len(d)) for b, d in zip(bufs, datagrams)]
    msgs = (Mmsghdr * BATCH)()
    for i, m in enumerate(msgs):
        m.msg_hdr.msg_iov = ctypes.pointer(iovs[i % len(iovs)])
        m.msg_hdr.msg_iovlen = 1
    fd, sent = sock.fileno(), 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        n = libc.sendmmsg(fd, msgs, BATCH, 0)
        if n >= 0:
            sent += n
            continue
        err = ctypes.get_errno()
        # A full device queue may say so instead of dropping silently: offer more.
        if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
            raise OSError(err, f"sendmmsg to {host}:{port}: {errno.errorcode.get(err, err)}")
    return {"sent": sent, "seconds": time.monotonic() - start}


def sink(port: int, flows: int = 1) -> None:
    socks = []
    for k in range(flows):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SINK_RCVBUF)
        sock.bind(("0.0.0.0", port + k))
        socks.append(sock)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def main(argv: list[str]) -> int:
    if len(argv) in (4, 5) and argv[0] == "send":
        print(json.dumps(send(argv[1], int(argv[2]), float(argv[3]), int(argv[4]) if len(argv) == 5 else 1)), flush=True)
        return 0
    if len(argv) in (2, 3) and argv[0] == "sink":
        sink(int(argv[1]), int(argv[2]) if len(argv) == 3 else 1)
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
