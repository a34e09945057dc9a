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
its own (the sink then holds all those ports).
"""
from __future__ import annotations

import ctypes
import errno
import json
import signal
import socket
import sys
import time

PAYLOAD = 64
BATCH = 256
SINK_RCVBUF = 64 << 10


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


class SockaddrIn(ctypes.Structure):
    _fields_ = [("sin_family", ctypes.c_ushort), ("sin_port", ctypes.c_uint16),
                ("sin_addr", ctypes.c_uint8 * 4), ("sin_zero", ctypes.c_uint8 * 8)]


def send(host: str, port: int, seconds: float, flows: int = 1) -> dict[str, float]:
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if flows == 1:
        sock.connect((host, port))
    buf = ctypes.create_string_buffer(PAYLOAD)
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), PAYLOAD)
    msgs = (Mmsghdr * BATCH)()
    addrs = [SockaddrIn(socket.AF_INET, socket.htons(port + k), (ctypes.c_uint8 * 4)(*socket.inet_aton(host)))
             for k in range(flows)]
    for i, m in enumerate(msgs):
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
        m.msg_hdr.msg_iovlen = 1
        if flows > 1:
            m.msg_hdr.msg_name = ctypes.cast(ctypes.pointer(addrs[i % flows]), ctypes.c_void_p)
            m.msg_hdr.msg_namelen = ctypes.sizeof(SockaddrIn)
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
