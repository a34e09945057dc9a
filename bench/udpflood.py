"""The 64-byte UDP load of the frames/s figures: a sender and a sink.

    .venv/bin/python bench/udpflood.py send HOST PORT SECONDS    (prints {"sent": N, "seconds": T})
    .venv/bin/python bench/udpflood.py sink PORT

The sender hands datagrams to the kernel with sendmmsg(2), BATCH per system
call, on a connected socket, so one core offers more than any userspace
switch here forwards and each is measured at saturation (iperf3, one send()
per datagram, offers little more than a fast switch forwards); results.md
shows the offered rate and the loss beside every figure. The sink holds the
port open and never reads: the receiving kernel drops what overflows its
small buffer after the interface has counted it, sends no ICMP port
unreachable back through the switch, and no receiving process takes CPU from
the switch on a small machine.
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


def send(host: str, port: int, seconds: float) -> dict[str, float]:
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    buf = ctypes.create_string_buffer(PAYLOAD)
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), PAYLOAD)
    msgs = (Mmsghdr * BATCH)()
    for m in msgs:
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
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


def sink(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SINK_RCVBUF)
    sock.bind(("0.0.0.0", port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "send":
        print(json.dumps(send(argv[1], int(argv[2]), float(argv[3]))), flush=True)
        return 0
    if len(argv) == 2 and argv[0] == "sink":
        sink(int(argv[1]))
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
