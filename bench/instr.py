"""Instructions per frame of the forwarding loop, counted by callgrind: a
measure the machine's load does not move, for A/B of fastpath changes.

    bench/instr.py [--checkout DIR ...] [--frames N] [--scenario unicast|flood|decap]

For each checkout (a built tree with its own .venv; default: this one) it
runs a Datapath with two socketpair ports in one network under
`valgrind --tool=callgrind`, twice: once with N frames of 64 bytes, once
with 2N, all queued before the loop starts, so that it reads full batches
and wakes as often in every run. The frames go from one port to the
other's known MAC (unicast), to the broadcast address (flood), or to the
known MAC from a VXLAN peer on loopback (decap). The loop thread's
instruction count difference divided by N is the user-space cost of a
frame (system calls are the kernel's, which callgrind does not see); fixed
costs (start, stop, idle wakeups) cancel out. The poll engine only:
valgrind does not follow io_uring (a ring's loop hangs under it). As root:
each run has a network namespace of its own, whose socket queues may hold
every frame.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs inside the checkout's venv, under valgrind.
DRIVER = r'''
import os, socket, sys, threading, time
from fastpath.datapath import Datapath

frames, scenario = int(sys.argv[1]), sys.argv[2]
dp = Datapath(max_ports=8, mac_table_size=1024, io_mode="poll")
a_sw, a_host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b_sw, b_host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
for s in (a_sw, a_host, b_sw, b_host):
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 30)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 30)
dp.add_port(a_sw.fileno(), 1)
dp.add_port(b_sw.fileno(), 1)
mac_a, mac_b = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
ip_udp = (bytes.fromhex("4500002e00004000401100000a0000010a000002") + bytes.fromhex("1f901f90001a0000")
          + bytes(18))
dst = b"\xff" * 6 if scenario == "flood" else mac_b
frame = dst + mac_a + b"\x08\x00" + ip_udp
b_host.send(mac_a + mac_b + b"\x08\x00" + ip_udp)  # the loop learns B's MAC first
if scenario == "decap":
    # The frames come from a VXLAN peer on loopback, each datagram on its own
    # (no UDP GRO: the same datagrams per read in every run).
    os.system("ip link set lo up")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 30)
    rx.bind(("127.0.0.1", 4789))
    # Nothing is encapsulated here; a checkout from before the tunnel wrote
    # its own IPv4 header sent from a raw IPPROTO_UDP socket.
    import fastpath.datapath
    proto = socket.IPPROTO_RAW if hasattr(fastpath.datapath, "vtep_tx_socket") else socket.IPPROTO_UDP
    tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    tx.bind(("127.0.0.1", 0))
    dp.set_vtep(rx.fileno(), tx.fileno(), 4789, 49152, 65535, 1500)
    dp.set_network_vni(1, 42)
    dp.add_peer(1, "127.0.0.1")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 30)
    peer.bind(("127.0.0.1", 0))
    datagram = b"\x08\0\0\0" + (42).to_bytes(3, "big") + b"\0" + frame
    for _ in range(frames):
        peer.sendto(datagram, ("127.0.0.1", 4789))
else:
    for _ in range(frames):
        a_host.send(frame)
t = threading.Thread(target=dp.run)
t.start()
a_host.settimeout(60)
a_host.recv(2048)
b_host.settimeout(60)
for _ in range(frames):
    b_host.recv(2048)
dp.stop()
t.join()
'''


def loop_thread_ir(outs: list[str]) -> int:
    """The instruction count of the busiest thread but the main one (the loop)."""
    best = 0
    for path in outs:
        if path.endswith("-01"):
            continue
        text = Path(path).read_text(errors="replace")
        m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
        if m:
            best = max(best, int(m.group(1)))
    return best


def count(checkout: Path, frames: int, scenario: str) -> int:
    py = checkout / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="vswitch-instr-") as tmp:
        script = Path(tmp) / "driver.py"
        script.write_text(DRIVER)
        out = Path(tmp) / "cg.out"
        # In a network namespace of its own, whose AF_UNIX datagram queues may
        # hold every frame: they are all queued before the loop starts, so it
        # reads them in full batches and wakes the same number of times in each run.
        subprocess.run(["unshare", "--net", "sh", "-c",
                        "sysctl -qw net.unix.max_dgram_qlen=1000000 && exec \"$@\"", "sh",
                        "valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
                        str(py), str(script), str(frames), scenario],
                       cwd=tmp, env={**os.environ, "PYTHONPATH": str(checkout)}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
        return loop_thread_ir(glob.glob(f"{out}-*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", type=Path, action="append", help="a built checkout (repeatable)")
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--scenario", choices=("unicast", "flood", "decap"), default="unicast")
    args = ap.parse_args()
    checkouts = args.checkout or [HERE.parent]
    print(f"| checkout | commit | poll, {args.scenario}: instructions per frame |")
    print("| --- | --- | ---: |")
    for c in checkouts:
        one = count(c, args.frames, args.scenario)
        two = count(c, 2 * args.frames, args.scenario)
        rev = subprocess.run(["git", "-C", str(c), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        print(f"| {c} | {rev} | {(two - one) / args.frames:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
