#!/usr/bin/env python3
"""Live fuzz: malformed and random frames into a running vswitchd, every one accounted for.

Per I/O mode, a fresh vswitchd (bench/hostlab.py: a host namespace, an
underlay to a remote namespace, containers) gets:

- --frames frames into the TAP of a fuzz container `fz`, written from inside
  the container with a packet socket, as a hostile container would: scapy
  fuzz() over Ethernet, 802.1Q/802.1ad, ARP, IPv4, IPv6, TCP, UDP and ICMP
  (a seeded corpus of distinct frames, made once), replayed and mutated
  quickly: as they are, truncated, bytes flipped, oversized (the container
  raised its interface's MTU to 9000 behind the switch's back), random runts,
  tags inserted, group source MACs, and virtio-net headers (a second packet
  socket with PACKET_VNET_HDR: random and lying GSO and checksum fields on
  plain frames and TCP super-frames; the kernel refuses some itself);
- --datagrams VXLAN datagrams into its tunnel socket from the remote
  namespace: empty, 1 byte, truncated, random bytes, flags without I,
  unknown VNIs, a sender that is not a peer, frames between stations behind
  the peer, and valid headers carrying the fuzzed frames. The MAC table is
  flushed before each of the two phases.

Meanwhile two bystander containers on another network ping each other every
10 ms; their replies are timestamped, so a stall shows as a gap.

Then every frame is reconciled, from what the sender's system calls took, to
the kernel's counters of the interfaces and of the host's UDP stack, to the
switch's counters in GET /v1/stats (received, dropped by reason, flooded,
written), and each identity that fails is named. Writes results.json and
results.md to --out. Exit status 0 only if the daemon survived, every
identity holds and the bystanders never stalled.

    .venv/bin/python bench/fuzz_live.py --frames 1000000 --datagrams 1000000   # as root; make fuzz-live
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from lab import ROOT, VENV_PY, BenchError, Lab, interrupt_on_signals, wait_for  # noqa: E402

VNI = 100
FZ_MAC = "02:00:00:0f:00:01"
SINK_MAC = "02:00:00:0f:00:02"
VXS_MAC = "02:00:00:0f:00:03"
BYSTANDER_MACS = ("02:00:00:0b:00:01", "02:00:00:0b:00:02")
FZ_KERNEL_MTU = 9000  # what the hostile container sets on its own interface
PORT_MTU = 1500  # the fuzz port's MTU as the switch knows it
UNKNOWN_PEER_IP = "192.0.2.3"
BEHIND_PEER_MACS = [bytes([0x02, 0, 0, 0x0e, 0, i]) for i in range(16)]
FENCE_VNI = 0xF3F3F3  # no fuzzed datagram carries it
CORPUS_VERSION = 1
WINDOW = 256  # frames in flight between the sender and the switch at most
BYSTANDER_INTERVAL_S = 0.01
BYSTANDER_MAX_GAP_S = 1.0  # a gap between two bystander replies longer than this is a stall
DRAIN_TIMEOUT_S = 60.0

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_VNET_HDR = 15

# ---- the corpus ------------------------------------------------------------------------------


def make_corpus(size: int, seed: int) -> list[bytes]:
    """`size` distinct frames from scapy's fuzz() over the stacks a switch parses; the same for a seed."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
    from scapy.config import conf
    from scapy.packet import Raw, fuzz

    conf.verb = 0
    random.seed(seed)  # scapy's random fields draw from the random module
    rnd = random.Random(seed)

    def mac(unicast: bool) -> str:
        b = rnd.randbytes(6)
        return ":".join(f"{x:02x}" for x in (bytes([b[0] & 0xFE]) + b[1:] if unicast else b))

    def eth() -> Any:
        # The MACs are always given: scapy would otherwise look a destination
        # up by ARP for each frame. Half with any source (group ones too) and
        # a fuzzed ethertype, half with a unicast source so that more of them
        # reach learning and lookup.
        dst = rnd.choice(["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", SINK_MAC, mac(True), mac(False)])
        if rnd.random() < 0.5:
            return fuzz(Ether(src=mac(False), dst=dst))
        return Ether(src=mac(True), dst=dst)

    stacks: list[Callable[[], Any]] = [
        lambda: eth() / fuzz(ARP()),
        lambda: eth() / fuzz(Dot1Q()) / fuzz(ARP()),
        lambda: eth() / fuzz(IP()) / fuzz(TCP()),
        lambda: eth() / fuzz(IP()) / fuzz(UDP()),
        lambda: eth() / fuzz(IP()) / fuzz(ICMP()),
        lambda: eth() / fuzz(IPv6()) / fuzz(TCP()),
        lambda: eth() / fuzz(IPv6()) / fuzz(UDP()),
        lambda: eth() / fuzz(Dot1Q()) / fuzz(IP()) / fuzz(UDP()),
        lambda: eth() / fuzz(Dot1AD()) / fuzz(Dot1Q()) / fuzz(IPv6()) / fuzz(TCP()),
        lambda: eth() / IP(src="10.15.0.1", dst="10.15.0.2") / fuzz(TCP()),
        lambda: eth() / IPv6(src="fd00::1", dst="fd00::2") / fuzz(UDP()),
    ]
    seen: set[bytes] = set()
    out: list[bytes] = []
    attempts = 0
    while len(out) < size:
        attempts += 1
        if attempts > size * 20:
            raise BenchError(f"corpus: only {len(out)} distinct frames after {attempts} attempts")
        pkt = rnd.choice(stacks)()
        if rnd.random() < 0.7:
            pkt = pkt / Raw(rnd.randbytes(rnd.choice((0, 1, 7, 40, rnd.randrange(1400)))))
        try:
            frame = bytes(pkt)
        except Exception:  # some fuzzed field combinations do not build; they are not frames
            continue
        if frame not in seen:
            seen.add(frame)
            out.append(frame)
    return out


def save_corpus(frames: list[bytes], path: Path) -> None:
    with open(path, "wb") as f:
        for fr in frames:
            f.write(struct.pack("<I", len(fr)) + fr)


def load_corpus(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


# ---- senders (run inside a namespace) ------------------------------------------------------


def vnet_header(rnd: random.Random, frame_len: int) -> bytes:
    """A struct virtio_net_hdr (10 bytes, the layout PACKET_VNET_HDR takes): random, plausible, or
    plausible but for one lying field."""
    kind = rnd.randrange(5)
    if kind == 0:
        return rnd.randbytes(10)
    # NEEDS_CSUM over an IPv4 TCP (offset 16) or UDP (offset 6) header after 14 + 20 bytes.
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = 1, 0, 0, 0, 34, rnd.choice((16, 6))
    if kind >= 2:  # TSO (or USO), as a container's stack hands a super-frame over
        gso = rnd.choice((1, 1, 4, 5, 0x81))
        hdr_len, gso_size = rnd.choice((54, 66, 0)), rnd.choice((1, 8, 536, 1448, rnd.randrange(1, 9000)))
    if kind == 4:  # one field lies
        field = rnd.randrange(6)
        value = rnd.choice((0, 1, 13, 14, 0xFF, frame_len - 1, frame_len, frame_len + 1, 0xFFFF, rnd.randrange(65536)))
        if field == 0:
            flags = value & 0xFF
        elif field == 1:
            gso = value & 0xFF
        elif field == 2:
            hdr_len = value
        elif field == 3:
            gso_size = value
        elif field == 4:
            csum_start = value
        else:
            csum_offset = value
    return struct.pack("<BBHHHH", flags, gso, hdr_len & 0xFFFF, gso_size & 0xFFFF, csum_start & 0xFFFF,
                       csum_offset & 0xFFFF)


def tcp_superframe(rnd: random.Random) -> bytes:
    """An Ethernet/IPv4/TCP frame of up to 30 KB with plausible headers, as TSO makes them."""
    payload = rnd.randrange(1, 30000)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, (20 + 20 + payload) & 0xFFFF, rnd.randrange(65536), 0x4000, 64, 6, 0,
                     bytes([10, 15, 0, 1]), bytes([10, 15, 0, 2]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, rnd.randrange(1 << 32), 1, 5 << 4, 0x18, 65535, 0, 0)
    dst = bytes.fromhex(SINK_MAC.replace(":", "")) if rnd.random() < 0.5 else b"\xff" * 6
    return dst + bytes.fromhex(FZ_MAC.replace(":", "")) + b"\x08\x00" + ip + tcp + bytes(payload)


def mutate(rnd: random.Random, corpus: list[bytes], max_len: int) -> tuple[str, bytes]:
    """One frame for the TAP: (kind, bytes)."""
    base = corpus[rnd.randrange(len(corpus))]
    r = rnd.random()
    if r < 0.35:
        return "fuzzed", base
    if r < 0.50:
        return "truncated", base[:rnd.randrange(len(base))]
    if r < 0.65:
        b = bytearray(base)
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        return "flipped", bytes(b)
    if r < 0.72:
        # Mostly within the container's MTU (the switch's port MTU is 1500),
        # some past it (the kernel refuses those itself).
        size = rnd.randint(1515, max_len + 14 + 200)
        return "oversized", base + bytes(size - len(base)) if size > len(base) else base
    if r < 0.77:
        return "runt", rnd.randbytes(rnd.randint(1, 59))
    if r < 0.82:
        tpid = rnd.choice((b"\x81\x00", b"\x88\xa8", b"\x91\x00"))
        return "tagged", base[:12] + tpid + rnd.randbytes(2) + base[12:]
    if r < 0.87:
        return "group_src", base[:6] + bytes([base[6] | 1]) + base[7:]
    return "random", rnd.randbytes(rnd.randint(14, 1514))


def read_counter(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def eth_verdict(frame: bytes, mtu: int = PORT_MTU) -> str:
    """What the switch must make of a frame from an access port by the rules it documents: a drop
    reason, or "forward" (flooded, or dropped as same_port: which one depends on what was learned)."""
    if len(frame) < 14:
        return "runt"
    tagged = frame[12:14] in (b"\x81\x00", b"\x88\xa8")
    if tagged and len(frame) < 18:
        return "runt"
    if len(frame) > mtu + (18 if tagged else 14):
        return "too_big"
    if frame[6] & 1:
        return "src_multicast"
    if not tagged:
        return "forward"
    if frame[12:14] == b"\x88\xa8" or frame[16:18] in (b"\x81\x00", b"\x88\xa8"):
        return "vlan_stacked"  # QinQ: an 802.1ad outer tag, or a tag behind the tag
    return "vlan_tagged" if int.from_bytes(frame[14:16], "big") & 0x0FFF else "forward"  # VLAN 0: no tag


def tap_sender(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the fuzz container: write --count frames to eth0; report what the kernel took."""
    corpus = load_corpus(Path(args.corpus))
    rnd = random.Random(args.seed)
    ifname = "eth0"
    mtu = int(Path(f"/sys/class/net/{ifname}/mtu").read_text())
    plain = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: this socket receives nothing
    vnet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    for s in (plain, vnet):
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)  # straight to the TAP: its drops show in tx_dropped
        s.bind((ifname, 0))
    vnet.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    stat = f"/sys/class/net/{ifname}/statistics/"

    # Frames in flight: taken by the kernel and not yet read by the switch. (Not tx_dropped: it
    # also counts sends the kernel refused, which would open the window wider with each refusal.)
    def kernel_done() -> int:
        return read_counter(stat + "tx_packets")
    done0 = kernel_done()
    tally = Tally()
    t0 = time.monotonic()
    for i in range(args.count):
        if rnd.random() < 0.13:
            kind = "vnet_hdr"
            frame = tcp_superframe(rnd) if rnd.random() < 0.4 else mutate(rnd, corpus, mtu)[1]
            sock, data = vnet, vnet_header(rnd, len(frame)) + frame
        else:
            kind, data = mutate(rnd, corpus, mtu)
            sock = plain
        # The kernel hands a plain frame over as it is: its verdict is predicted.
        if tally.send(kind, lambda: sock.send(data), eth_verdict(data) if sock is plain else None):
            # Stay within the TAP's queue, so the kernel drops nothing of ours for lack of room.
            tally.pace(64, lambda: tally.ok - (kernel_done() - done0), WINDOW)
    elapsed = time.monotonic() - t0
    return {"attempted": args.count, "taken": tally.ok, "taken_by_kind": tally.taken, "refused_by_kind": tally.refused,
            "predicted_plain": tally.predicted, "send_seconds": round(elapsed, 2), "window_stalls": tally.stalls,
            "kernel_mtu": mtu}


class Tally:
    """A sender's count: what its kernel took and refused (by kind and errno), the verdicts
    predicted for what it took, and how often the window stalled."""

    def __init__(self) -> None:
        self.taken: dict[str, int] = {}
        self.predicted: dict[str, int] = {}
        self.refused: dict[str, dict[str, int]] = {}
        self.ok = 0
        self.stalls = 0

    def send(self, kind: str, send: Callable[[], object], verdict: str | None) -> bool:
        """Send one; whether the kernel took it."""
        try:
            send()
        except OSError as e:
            by_errno = self.refused.setdefault(kind, {})
            name = errno_name(e.errno)
            by_errno[name] = by_errno.get(name, 0) + 1
            return False
        self.ok += 1
        self.taken[kind] = self.taken.get(kind, 0) + 1
        if verdict is not None:
            self.predicted[verdict] = self.predicted.get(verdict, 0) + 1
        return True

    def pace(self, every: int, in_flight: Callable[[], int], window: int) -> None:
        """Every `every` sends taken, wait (2 s at most: a stall) until no more than `window` are in flight."""
        if self.ok % every:
            return
        deadline = time.monotonic() + 2.0
        while in_flight() > window:
            if time.monotonic() > deadline:
                self.stalls += 1
                return
            time.sleep(0.0002)


def errno_name(err: int | None) -> str:
    import errno as errno_mod
    return errno_mod.errorcode.get(err or 0, str(err))


def udp_snmp(pid: int) -> dict[str, int]:
    """The Udp: line of /proc/PID/net/snmp: the UDP counters of PID's network namespace."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:])}


def vxlan_payload(rnd: random.Random, corpus: list[bytes]) -> tuple[str, bytes]:
    r = rnd.random()

    def header(flags: int = 0x08, vni: int = VNI) -> bytes:
        reserved = rnd.randbytes(3) if rnd.random() < 0.1 else bytes(3)
        return bytes([flags]) + reserved + struct.pack("!I", vni << 8)[:3] + bytes([rnd.randrange(256) if rnd.random() < 0.1 else 0])
    if r < 0.03:
        return "empty", b""
    if r < 0.06:
        return "one_byte", rnd.randbytes(1)
    if r < 0.14:
        return "truncated", header()[:rnd.randrange(2, 8)] if rnd.random() < 0.5 else (header() + rnd.randbytes(rnd.randrange(14)))
    if r < 0.22:
        return "random", rnd.randbytes(rnd.randint(2, 200))
    if r < 0.30:
        return "bad_flags", header(flags=rnd.randrange(256) & ~0x08) + corpus[rnd.randrange(len(corpus))]
    if r < 0.38:
        return "unknown_vni", header(vni=rnd.choice((0, 1, 99, 101, 0xFFFFFF))) + corpus[rnd.randrange(len(corpus))]
    if r < 0.46:
        return "unknown_peer", header() + corpus[rnd.randrange(len(corpus))]
    if r < 0.52:
        # Between stations behind the peer: once a destination is learned there,
        # the frame has nowhere to go (split horizon).
        a, b = rnd.sample(BEHIND_PEER_MACS, 2)
        return "behind_peer", header() + a + b + b"\x88\xb5" + rnd.randbytes(rnd.randint(46, 200))
    kind, inner = mutate(rnd, corpus, 8900)
    return f"inner_{kind}", header() + inner


def outer_verdict(data: bytes, from_peer: bool) -> str:
    """What the switch must make of a datagram by the rules it documents, before the inner frame:
    a drop reason, or "peer" (taken from a peer)."""
    if len(data) < 8 + 14:
        return "truncated"  # shorter than the VXLAN and Ethernet headers: an empty datagram too
    if not data[0] & 0x08:
        return "bad_flags"
    if int.from_bytes(data[4:7], "big") != VNI:
        return "unknown_vni"
    return "peer" if from_peer else "unknown_peer"


def vxlan_sender(args: argparse.Namespace) -> dict[str, Any]:
    """In the remote namespace: send --count datagrams to the VTEP, from a peer and from a stranger."""
    corpus = load_corpus(Path(args.corpus))
    rnd = random.Random(args.seed)
    peer, stranger = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    peer.bind((args.peer_ip, 0))
    stranger.bind((UNKNOWN_PEER_IP, 0))
    dst = (args.vtep_ip, args.vxlan_port)
    snmp0 = udp_snmp(args.daemon_pid)

    def arrived() -> int:  # read by the daemon, or dropped by the receiving kernel (counted)
        s = udp_snmp(args.daemon_pid)
        return sum(s[k] - snmp0[k] for k in ("InDatagrams", "InErrors", "NoPorts"))
    tally = Tally()
    t0 = time.monotonic()
    for i in range(args.count):
        kind, data = vxlan_payload(rnd, corpus)
        sock = stranger if kind == "unknown_peer" else peer
        if tally.send(kind, lambda: sock.sendto(data, dst), outer_verdict(data, sock is peer)):
            tally.pace(32, lambda: tally.ok - arrived(), WINDOW // 2)
    send_seconds = round(time.monotonic() - t0, 2)
    # A fence: once the switch has counted this one (an unknown VNI), it has handled every
    # datagram before it, as it reads and handles one socket's datagrams in order.
    deadline = time.monotonic() + 30.0
    while arrived() < tally.ok and time.monotonic() < deadline:
        time.sleep(0.001)
    peer.sendto(header_only(FENCE_VNI) + bytes(14), dst)
    tally.ok += 1
    tally.taken["fence"] = 1
    tally.predicted["unknown_vni"] = tally.predicted.get("unknown_vni", 0) + 1
    return {"attempted": args.count + 1, "taken": tally.ok, "taken_by_kind": tally.taken,
            "refused_by_kind": tally.refused, "predicted": tally.predicted, "send_seconds": send_seconds,
            "window_stalls": tally.stalls}


def header_only(vni: int) -> bytes:
    return bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00"


# ---- the run ---------------------------------------------------------------------------------


def link_stats(ns: Any, ifname: str = "eth0") -> dict[str, dict[str, int]]:
    return json.loads(ns.ip("-s", "-j", "link", "show", "dev", ifname))[0]["stats64"]


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in after.items():
        if isinstance(v, dict):
            out[k] = delta(v, before.get(k, {}))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v - before.get(k, 0)
    return out


class Bystanders:
    """b1 pings b2 every 10 ms with timestamps (ping -D -O) for the whole run."""

    def __init__(self, lab: Lab, b1: Any, b2_ip: str) -> None:
        self.lab = lab
        wait_for("bystander ping", lambda: subprocess.run(b1.ns.cmd("ping", "-n", "-c", "1", "-W", "1", b2_ip),
                                                           capture_output=True).returncode == 0, timeout=20)
        self.proc = lab.spawn("bystander-ping", b1.ns.cmd("ping", "-n", "-D", "-O", "-i", str(BYSTANDER_INTERVAL_S), b2_ip))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # ping prints its summary on SIGINT
            self.proc.wait(timeout=10)

    def replies(self) -> list[float]:
        return [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", self.lab.output("bystander-ping"), re.M)]

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Replies within [start, end] (Unix time) and the longest gap between replies, edges included."""
        times = [t for t in self.replies() if start <= t <= end]
        points = [start, *times, end]
        gap = max(b - a for a, b in zip(points, points[1:]))
        return {"seconds": round(end - start, 2), "replies": len(times),
                "per_second": round(len(times) / (end - start), 1) if end > start else None,
                "max_gap_s": round(gap, 3), "ok": gap <= BYSTANDER_MAX_GAP_S}


def stats(site: Any) -> dict[str, Any]:
    """GET /v1/stats with the peer list keyed by network and remote, so that delta() can subtract it."""
    s = site.stats()
    s["vxlan"]["peers"] = {f"{p['network']}/{p['remote']}": p for p in s["vxlan"]["peers"]}
    return s


def check(checks: list[dict[str, Any]], name: str, lhs: int, rhs: int, what: str, ok: bool | None = None) -> None:
    checks.append({"check": name, "lhs": lhs, "rhs": rhs, "ok": lhs == rhs if ok is None else ok, "what": what})


def run_mode(io_mode: str, args: argparse.Namespace, corpus_path: Path) -> dict[str, Any]:
    from hostlab import HOST_IP, REMOTE_IP, VXLAN_PORT, Site

    with Lab(f"fuzz{io_mode[0]}") as lab:
        site = Site(lab, io_mode)
        # Anti-spoofing off on the fuzzed port: its random source MACs are to reach the parser
        # and the decision, not stop at the first policy check.
        fz = site.add_container("fz", "fuzz", FZ_MAC, port_security=False)
        sink = site.add_container("sink", "fuzz", SINK_MAC)
        vxs = site.add_container("vxs", "vx", VXS_MAC)
        b1 = site.add_container("b1", "by", BYSTANDER_MACS[0], "10.7.0.1/24")
        b2 = site.add_container("b2", "by", BYSTANDER_MACS[1], "10.7.0.2/24")
        site.remote.ip("addr", "add", f"{UNKNOWN_PEER_IP}/24", "dev", "ul0")
        site.start({"fuzz": None, "vx": VNI, "by": None}, [("vx", REMOTE_IP)], {})
        real_mode = site.stats()["io_mode"]
        # The hostile container raises its own interface's MTU behind the switch's back.
        fz.ns.ip("link", "set", "eth0", "mtu", str(FZ_KERNEL_MTU))
        # The underlay's ARP is resolved before any count starts.
        site.remote.exec("ping", "-n", "-c", "1", "-W", "2", HOST_IP)
        by = Bystanders(lab, b1, b2.addr)
        maps = Path(f"/proc/{site.pid}/maps").read_text()
        result: dict[str, Any] = {"io_mode": real_mode, "daemon_pid": site.pid,
                                  "sanitizers_loaded": [lib for lib in ("libasan", "libubsan") if lib in maps]}

        # -- frames into the TAP
        site.api("POST", "/v1/fdb/flush", {})
        k0 = {"fz": link_stats(fz.ns), "sink": link_stats(sink.ns)}
        s0 = stats(site)
        t_start = time.time()
        sender = json.loads(fz.ns.exec(str(VENV_PY), str(Path(__file__)), "tap-sender", "--corpus", str(corpus_path),
                                       "--count", str(args.frames), "--seed", str(args.seed), timeout=3600))

        def drained() -> bool:
            kf = delta(link_stats(fz.ns), k0["fz"])
            rx = site.stats()["ports"]["fz"]["rx_packets"] - s0["ports"]["fz"]["rx_packets"]
            now = site.stats()["ports"]
            decided = (sum(now["fz"]["drops"].values()) + forwarded(now["sink"])
                       - sum(s0["ports"]["fz"]["drops"].values()) - forwarded(s0["ports"]["sink"]))
            # Every frame the kernel took has left its queue, the switch read each and decided on
            # each (read and decision are counted microseconds apart, within one batch).
            return kf["tx"]["packets"] + kf["tx"]["dropped"] >= sender["taken"] and rx == kf["tx"]["packets"] == decided
        try:
            wait_for("the switch to read every frame the kernel took", drained, timeout=DRAIN_TIMEOUT_S, interval=0.2)
        except BenchError as e:
            result["drain_error"] = str(e)
        t_end = time.time()
        s1 = stats(site)
        k1 = {"fz": link_stats(fz.ns), "sink": link_stats(sink.ns)}
        result["tap"] = reconcile_tap(sender, delta(s1, s0), {n: delta(k1[n], k0[n]) for n in k1})
        result["tap"]["bystanders"] = by.window(t_start, t_end)
        result["tap"]["seconds"] = round(t_end - t_start, 2)

        # -- datagrams into the tunnel socket, with the MAC table as the frames into the TAP left it
        # flushed: each phase fills it (65536 entries) with the sources it fuzzes, and a full table
        # learns nothing new
        site.api("POST", "/v1/fdb/flush", {})
        k0v = {"vxs": link_stats(vxs.ns), "ul0": link_stats(site.host, "ul0")}
        u0 = udp_snmp(site.pid)
        s0 = stats(site)
        t_start = time.time()
        vsender = json.loads(site.remote.exec(
            str(VENV_PY), str(Path(__file__)), "vxlan-sender", "--corpus", str(corpus_path), "--count", str(args.datagrams),
            "--seed", str(args.seed + 1), "--daemon-pid", str(site.pid), "--peer-ip", REMOTE_IP, "--vtep-ip", HOST_IP,
            "--vxlan-port", str(VXLAN_PORT), timeout=3600))

        def vdrained() -> bool:
            u = delta(udp_snmp(site.pid), u0)
            fenced = site.stats()["vxlan"]["drops"]["unknown_vni"] - s0["vxlan"]["drops"]["unknown_vni"]
            return (u["InDatagrams"] + u["InErrors"] + u["NoPorts"] >= vsender["taken"]
                    and fenced >= vsender["predicted"]["unknown_vni"])
        try:
            wait_for("the switch to read every datagram and count the fence", vdrained, timeout=DRAIN_TIMEOUT_S,
                     interval=0.1)
        except BenchError as e:
            result["vxlan_drain_error"] = str(e)
        t_end = time.time()
        s1 = stats(site)
        k1v = {"vxs": link_stats(vxs.ns), "ul0": link_stats(site.host, "ul0")}
        result["vxlan"] = reconcile_vxlan(vsender, delta(s1, s0), delta(udp_snmp(site.pid), u0),
                                          {n: delta(k1v[n], k0v[n]) for n in k1v})
        result["vxlan"]["bystanders"] = by.window(t_start, t_end)
        result["vxlan"]["seconds"] = round(t_end - t_start, 2)

        by.stop()
        health = site.api("GET", "/v1/health")
        result["alive"] = site.alive()
        result["health"] = health.get("status")
        log = (lab.dir / "vswitchd.log").read_text(errors="replace")
        result["daemon_errors"] = [line for line in log.splitlines()
                                   if re.search(r"\b(ERROR|CRITICAL|Traceback)\b|runtime error:|Sanitizer", line)][:20]
        result["ok"] = bool(result["alive"] and result["health"] == "ok" and not result["daemon_errors"]
                            and result["tap"]["ok"] and result["vxlan"]["ok"]
                            and result["tap"]["bystanders"]["ok"] and result["vxlan"]["bystanders"]["ok"])
        return result


def forwarded(sink: dict[str, Any]) -> int:
    """Frames the switch forwarded from the fuzzed port: all go to the sink, its network's only
    other port (flooded, or unicast to the sink's own MAC, which is pinned from the start), where
    each is written, fails to be, or is dropped on the way out (a super-frame whose segments the
    sink's MTU would not take: mtu_exceeded)."""
    return sink["tx_packets"] + sink["tx_errors"] + sink["drops"]["mtu_exceeded"]


def reconcile_tap(sender: dict[str, Any], d: dict[str, Any], k: dict[str, Any]) -> dict[str, Any]:
    fz, sink = d["ports"]["fz"], d["ports"]["sink"]
    drops = {r: n for r, n in fz["drops"].items() if n}
    checks: list[dict[str, Any]] = []
    # The kernel's tx_dropped also counts sends it refused (ENOBUFS) after taking them in: what it
    # dropped of the frames it took lies between 0 and tx_dropped.
    tx, txd = k["fz"]["tx"]["packets"], k["fz"]["tx"]["dropped"]
    check(checks, "kernel", sender["taken"], tx,
          f"frames the container's packet sockets took = read from the TAP by the switch (kernel tx_packets), "
          f"give or take the kernel's own drops (tx_dropped {txd})", ok=tx <= sender["taken"] <= tx + txd)
    check(checks, "read", k["fz"]["tx"]["packets"], fz["rx_packets"],
          "frames the switch read from the TAP (kernel tx_packets) = the switch's rx_packets of the port")
    check(checks, "decided", fz["rx_packets"], sum(drops.values()) + forwarded(sink),
          "rx_packets = dropped by reason + forwarded to the sink (flooded, or unicast to its pinned MAC)")
    # Plain frames' verdicts are predicted exactly; a frame sent with a virtio-net header may land
    # under any reason, so each count lies between the plain prediction and that plus those frames.
    vnet = sender["taken_by_kind"].get("vnet_hdr", 0)
    # A frame the decision floods may still be dropped by the port's storm control (on by default):
    # flooded or storm-dropped, it was decided a flood.
    storm = sum(n for r, n in drops.items() if r.startswith("storm_"))
    counted = {**drops, "forward": forwarded(sink) + drops.get("same_port", 0) + storm}
    for reason in ("runt", "too_big", "src_multicast", "vlan_tagged", "vlan_stacked", "forward"):
        lo = sender["predicted_plain"].get(reason, 0)
        got = counted.get(reason, 0)
        check(checks, f"reason_{reason}", lo, got,
              f"plain frames that are {'flooded (or storm-dropped) or same_port' if reason == 'forward' else reason} by the documented "
              f"rules <= the switch's count <= that + {vnet} frames sent with a virtio-net header", ok=lo <= got <= lo + vnet)
    check(checks, "sink_silent", sink["rx_packets"], 0, "the sink port sent nothing, so nothing could be unicast to it")
    check(checks, "flood_written", fz["flooded"], forwarded(sink), "every flooded frame was written to the sink's "
          "TAP or counted as a write error (with the frames unicast to the sink's MAC)", ok=fz["flooded"] <= forwarded(sink))
    check(checks, "sink_kernel", sink["tx_packets"], k["sink"]["rx"]["packets"],
          "frames written to the sink's TAP = received by its interface (rx_packets)")
    return {"sender": sender, "drops": drops, "flooded": fz["flooded"], "rx_packets": fz["rx_packets"],
            "kernel_tx_dropped": k["fz"]["tx"]["dropped"], "sink_tx_errors": sink["tx_errors"],
            "sink_kernel_rx_dropped": k["sink"]["rx"]["dropped"],
            "fdb": d["fdb"], "checks": checks, "ok": all(c["ok"] for c in checks)}


def reconcile_vxlan(sender: dict[str, Any], d: dict[str, Any], udp: dict[str, int], k: dict[str, Any]) -> dict[str, Any]:
    drops = d["vxlan"]["drops"]
    peer_rx = sum(p["rx_packets"] for p in d["vxlan"]["peers"].values())
    vxs = d["ports"]["vxs"]
    read = udp["InDatagrams"]
    counted = drops["truncated"] + drops["bad_flags"] + drops["unknown_vni"] + drops["unknown_peer"] + peer_rx
    empty = sender["taken_by_kind"].get("empty", 0)
    checks: list[dict[str, Any]] = []
    check(checks, "kernel", sender["taken"], read + udp["InErrors"] + udp["NoPorts"],
          "datagrams sent = read by the switch (Udp InDatagrams) + dropped by the host's UDP (InErrors, NoPorts)")
    check(checks, "counted", read, counted,
          "datagrams read = dropped by reason (truncated, bad_flags, unknown_vni, unknown_peer) + taken from a peer")
    for reason in ("truncated", "bad_flags", "unknown_vni", "unknown_peer", "peer"):
        got = peer_rx if reason == "peer" else drops[reason]
        check(checks, f"reason_{reason}", sender["predicted"].get(reason, 0), got,
              f"datagrams whose outer headers make them {'taken from a peer' if reason == 'peer' else reason} "
              f"(by the documented rules) = the switch's count")
    forwarded = vxs["tx_packets"] + vxs["tx_errors"] + vxs["drops"]["mtu_exceeded"]
    discarded = drops["inner_malformed"] + drops["mac_pinned"] + drops["split_horizon"]
    check(checks, "decided", peer_rx, discarded + forwarded,
          "taken from a peer = inner_malformed + mac_pinned + split_horizon + written to the network's port (or a "
          "write error, or a drop on the way out: mtu_exceeded)")
    return {"sender": sender, "drops": {r: n for r, n in drops.items() if n}, "peer_rx_packets": peer_rx,
            "udp": {k2: v for k2, v in udp.items() if v}, "vxs_tx_packets": vxs["tx_packets"],
            "underlay_rx_dropped": k["ul0"]["rx"]["dropped"], "empty_sent": empty,
            "uncounted": read - counted, "not_decided": peer_rx - discarded - forwarded,
            "fdb": d["fdb"], "checks": checks, "ok": all(c["ok"] for c in checks)}


def write_md(doc: dict[str, Any], path: Path) -> None:
    lines = [f"# Live fuzz, {doc['date']}", "",
             f"Build: {doc['build']}. Seed {doc['seed']}, corpus {doc['corpus_size']} distinct scapy-fuzzed frames "
             f"({doc['corpus_made']}); per mode {doc['frames']} frames into a TAP and {doc['datagrams']} "
             f"datagrams into the VXLAN socket. Verdict: **{'PASS' if doc['ok'] else 'FAIL'}**.", ""]
    for r in doc["modes"]:
        lines += [f"## io_mode {r['io_mode']}", "",
                  f"Daemon alive: {r['alive']}, health: {r['health']}, error lines (or sanitizer reports) in its log: "
                  f"{len(r['daemon_errors'])}; sanitizer runtimes in the daemon: {', '.join(r['sanitizers_loaded']) or 'none'}.", ""]
        for side in ("tap", "vxlan"):
            s = r[side]
            snd = s["sender"]
            refused = sum(sum(v.values()) for v in snd["refused_by_kind"].values())
            lines += [f"### {'Frames into the TAP' if side == 'tap' else 'Datagrams into the tunnel socket'}", "",
                      f"{snd['attempted']} attempted, {snd['taken']} taken by the sender's kernel, {refused} refused by it "
                      f"({', '.join(f'{k}: {v}' for k, v in sorted(snd['refused_by_kind'].items())) or 'none'}); "
                      f"sent in {snd['send_seconds']} s, reconciled in {s['seconds']} s.", "",
                      "Taken by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(snd["taken_by_kind"].items())), "",
                      "Dropped by the switch, by reason: " + (", ".join(f"{k} {v}" for k, v in sorted(s["drops"].items())) or "none"), ""]
            if side == "tap":
                lines += [f"Flooded: {s['flooded']}; the container's kernel counted {s['kernel_tx_dropped']} tx_dropped; "
                          f"write errors to the sink: {s['sink_tx_errors']}; the sink's stack dropped "
                          f"{s['sink_kernel_rx_dropped']} of the frames it received (no handler for their type, ...).", ""]
            else:
                lines += [f"Taken from the peer: {s['peer_rx_packets']}; written to the network's port: {s['vxs_tx_packets']}; "
                          f"empty datagrams sent: {s['empty_sent']}; datagrams read but counted nowhere: {s['uncounted']}; "
                          f"taken from a peer but neither dropped by reason nor written: {s['not_decided']}. "
                          f"Host UDP: {s['udp']}.", ""]
            lines += ["| identity | left | right | holds |", "| --- | --- | --- | --- |"]
            lines += [f"| {c['what']} | {c['lhs']} | {c['rhs']} | {'yes' if c['ok'] else '**NO**'} |" for c in s["checks"]]
            b = s["bystanders"]
            lines += ["", f"Bystanders over these {b['seconds']} s: {b['replies']} ping replies ({b['per_second']}/s, one "
                      f"sent every {BYSTANDER_INTERVAL_S * 1000:g} ms or as soon after as the loaded machine ran ping), longest gap {b['max_gap_s']} s ({'ok' if b['ok'] else 'STALL'}).", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    ts = sub.add_parser("tap-sender")
    vs = sub.add_parser("vxlan-sender")
    for p in (ts, vs):
        p.add_argument("--corpus", required=True)
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--seed", type=int, required=True)
    vs.add_argument("--daemon-pid", type=int, required=True)
    vs.add_argument("--peer-ip", required=True)
    vs.add_argument("--vtep-ip", required=True)
    vs.add_argument("--vxlan-port", type=int, required=True)
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames into the TAP per mode")
    ap.add_argument("--datagrams", type=int, default=1_000_000, help="VXLAN datagrams per mode")
    ap.add_argument("--corpus-size", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--io-mode", choices=("both", "poll", "uring"), default="both")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/fuzz-live-<date>")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout, write no files")
    args = ap.parse_args()
    if args.cmd == "tap-sender":
        print(json.dumps(tap_sender(args)))
        return 0
    if args.cmd == "vxlan-sender":
        print(json.dumps(vxlan_sender(args)))
        return 0
    if os.geteuid() != 0:
        raise BenchError("needs root: namespaces, TAPs and packet sockets")
    interrupt_on_signals()
    from fastpath import uring_unavailable
    modes = ["poll", "uring"] if args.io_mode == "both" else [args.io_mode]
    if "uring" in modes and (why := uring_unavailable()) is not None:
        if args.io_mode == "uring":
            raise BenchError(f"io_uring unavailable: {why}")
        modes.remove("uring")
    # Made once per seed and size (it takes about 3 ms a frame) and kept for later runs; the
    # version changes whenever make_corpus would make different frames.
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"vswitch-fuzz-corpus-v{CORPUS_VERSION}-{args.seed}-{args.corpus_size}.bin"
    t0 = time.monotonic()
    cached = work.exists()
    if cached:
        corpus = load_corpus(work)
    else:
        corpus = make_corpus(args.corpus_size, args.seed)
        tmp = work.with_suffix(f".{os.getpid()}.tmp")
        save_corpus(corpus, tmp)
        tmp.replace(work)
    corpus_s = round(time.monotonic() - t0, 1)
    corpus_how = f"loaded from {work}, made by an earlier run" if cached else f"made in {corpus_s} s"
    log = sys.stderr if args.json else sys.stdout
    print(f"fuzz-live: corpus of {len(corpus)} frames ({corpus_s} s); modes {', '.join(modes)}", file=log, flush=True)
    results = []
    for mode in modes:
        t = time.monotonic()
        r = run_mode(mode, args, work)
        r["seconds"] = round(time.monotonic() - t, 1)
        print(f"fuzz-live: {mode}: {'ok' if r['ok'] else 'FAILED'} in {r['seconds']} s", file=log, flush=True)
        results.append(r)
    mode_file = ROOT / "build" / "ext-mode"
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seed": args.seed,
           "build": mode_file.read_text().strip() if mode_file.exists() else "unknown",
           "corpus_size": len(corpus), "corpus_seconds": corpus_s, "corpus_made": corpus_how, "frames": args.frames, "datagrams": args.datagrams,
           "modes": results, "ok": all(r["ok"] for r in results)}
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        out = args.out or ROOT / "bench" / "results" / f"fuzz-live-{datetime.date.today().isoformat()}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
        write_md(doc, out / "results.md")
        print((out / "results.md").read_text())
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"fuzz-live: {e}", file=sys.stderr)
        sys.exit(1)
