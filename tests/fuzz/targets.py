"""Fuzz targets over fastpath's compiled code, one function per target.

Each target takes one input (bytes), runs it through the compiled entry
points and asserts what must hold for any input: the sanitizers catch
memory errors and undefined behaviour in the C; the assertions here catch
wrong answers (a header the parser should have refused, a super-frame the
kernel would refuse, a frame sent somewhere the decision did not name).
tests/fuzz/run.py runs them under atheris; tests/test_fuzz_smoke.py runs
them over the seed corpus and random inputs in the normal suite.

Inputs are small records so that seeds are easy to write
(tests/fuzz/make_seeds.py) and the fuzzer can splice them.
"""
from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable, Iterator

from fastpath import PEER_FLAG, Datapath
from fastpath.frame import check_vnet, parse
from fastpath.gro import coalesce
from fastpath.gso import SEG_ROOM, segment
from fastpath.vxlan import source_port

VNET_HLEN = 12
VXLAN_HLEN = 8
MAX_FRAME = 9100  # longer than any port's MTU here, short enough to keep the rate up


def records(data: bytes, head: int, limit: int = 16) -> Iterator[tuple[bytes, bytes]]:
    """Split data into (head bytes, body) records, each body prefixed by a
    little-endian 16-bit length (clipped to what is left); at most `limit`
    records, which keeps the rate of the datapath targets up."""
    i = 0
    while i + head + 2 <= len(data) and limit > 0:
        limit -= 1
        h = data[i:i + head]
        n = int.from_bytes(data[i + head:i + head + 2], "little")
        body = data[i + head + 2:i + head + 2 + n]
        i += head + 2 + len(body)
        yield h, body


def record(head: bytes, body: bytes) -> bytes:
    return head + len(body).to_bytes(2, "little") + body


# ---- RFC 1071 in Python, the oracle ----------------------------------------------------------

def ones_fold(data: bytes) -> int:
    """The ones' complement sum of data's 16-bit big-endian words, folded:
    2^16 = 1 mod 0xFFFF, so the sum is the number mod 0xFFFF (with 0xFFFF
    for a nonzero multiple of it)."""
    if len(data) % 2:
        data += b"\0"
    n = int.from_bytes(data, "big")
    m = n % 0xFFFF
    return 0xFFFF if m == 0 and n else m


def ones_add(a: int, b: int) -> int:
    s = a + b
    return (s & 0xFFFF) + (s >> 16)


# ---- frame and virtio-net header ---------------------------------------------------------------

def model_parse(frame: bytes, mtu: int) -> str | tuple[int, int, bool, int]:
    """IEEE 802.3 / 802.1Q as frame.pxd states it: a drop name, or (ethertype, vlan, tagged, l2_len)."""
    if len(frame) < 14:
        return "runt"
    tpid = int.from_bytes(frame[12:14], "big")
    if tpid in (0x8100, 0x88A8):
        if len(frame) < 18:
            return "runt"
        l2 = 18
        result = (int.from_bytes(frame[16:18], "big"), int.from_bytes(frame[14:16], "big") & 0xFFF, True, 18)
    else:
        l2 = 14
        result = (tpid, 0, False, 14)
    if len(frame) > mtu + l2:
        return "too_big"
    if frame[6] & 1:
        return "src_multicast"
    return result


def model_vnet_ok(vnet: bytes, frame_len: int) -> bool:
    """parse_vnet's rules (virtio spec 5.1.6), written out again."""
    flags, gso, hdr_len, gso_size, cs, co = struct.unpack("<BBHHHH", vnet[:10])
    gso &= 0x7F
    needs_csum = flags & 1
    if needs_csum and (cs < 14 or cs + co + 2 > frame_len):
        return False
    if gso == 0:
        return True
    return gso in (1, 3, 4, 5) and gso_size > 0 and hdr_len <= frame_len and bool(needs_csum)


def fuzz_frame(data: bytes) -> None:
    """Input: MTU (le16) | virtio-net header (12) | frame."""
    if len(data) < 2 + VNET_HLEN:
        return
    mtu = int.from_bytes(data[:2], "little")
    vnet, frame = data[2:2 + VNET_HLEN], data[2 + VNET_HLEN:]
    got = parse(frame, mtu)
    want = model_parse(frame, mtu)
    if isinstance(want, str):
        assert got == {"drop": want}, (got, want)
    else:
        assert got["drop"] is None and (got["ethertype"], got["vlan"], got["tagged"], got["l2_len"]) == want, got
        assert got["dst"] == frame[:6] and got["src"] == frame[6:12]
    done = check_vnet(vnet, frame)
    assert (done is not None) == model_vnet_ok(vnet, len(frame)), (vnet.hex(), len(frame))
    if done is None or not vnet[0] & 1:
        return
    # The completed checksum: the field held the pseudo-header's sum; the sum
    # from csum_start over the frame, that field included, is stored complemented.
    cs, co = struct.unpack("<HH", vnet[6:10])
    at = cs + co
    assert len(done) == len(frame) and done[:at] == frame[:at] and done[at + 2:] == frame[at + 2:]
    c = ~ones_fold(frame[cs:]) & 0xFFFF
    if co == 6 and c == 0:
        c = 0xFFFF
    assert int.from_bytes(done[at:at + 2], "big") == c, (vnet.hex(), done[at:at + 2].hex(), hex(c))


# ---- GSO ------------------------------------------------------------------------------------

def check_segment(seg: bytes) -> None:
    """A segment leaves complete: the IPv4 header checksum and the TCP/UDP
    checksum over the pseudo-header verify, and the IP length is the frame's."""
    l2 = 18 if seg[12:14] in (b"\x81\x00", b"\x88\xa8") else 14
    ethertype = seg[l2 - 2:l2]
    ip = seg[l2:]
    if ethertype == b"\x08\x00":
        ihl = (ip[0] & 0x0F) * 4
        assert ones_fold(ip[:ihl]) == 0xFFFF, "IPv4 header checksum"
        assert int.from_bytes(ip[2:4], "big") == len(ip), "IPv4 total length"
        proto, l4 = ip[9], ip[ihl:]
        pseudo = ip[12:20]
    else:
        assert ethertype == b"\x86\xdd"
        assert int.from_bytes(ip[4:6], "big") == len(ip) - 40, "IPv6 payload length"
        proto, l4 = ip[6], ip[40:]
        pseudo = ip[8:40]
    pseudo += struct.pack("!BBH", 0, proto, len(l4))
    assert ones_add(ones_fold(pseudo), ones_fold(l4)) in (0xFFFF,), f"L4 checksum of a {proto} segment"
    if proto == 17:
        assert int.from_bytes(l4[4:6], "big") == len(l4), "UDP length"


def fuzz_gso(data: bytes) -> None:
    """Input: virtio-net header (12) | max_segs (u8, 0: enough) | scratch
    shortfall (le16) | super-frame."""
    if len(data) < VNET_HLEN + 3:
        return
    vnet = data[:VNET_HLEN]
    max_segs = data[VNET_HLEN] or None
    short = int.from_bytes(data[VNET_HLEN + 1:VNET_HLEN + 3], "little")
    frame = data[VNET_HLEN + 3:]
    scratch_len = None
    if short and max_segs is not None:
        # A scratch buffer just short of what segment() would give: the
        # segmenter must refuse rather than write past it.
        scratch_len = max(0, len(frame) + max_segs * SEG_ROOM - short)
    try:
        segs = segment(frame, vnet, max_segs, scratch_len)
    except ValueError:
        return
    assert segs and (max_segs is None or len(segs) <= max_segs)
    mss = int.from_bytes(vnet[4:6], "little")
    lens = [len(s) for s in segs]
    assert all(n == lens[0] for n in lens[:-1]) and lens[-1] <= lens[0], lens
    # Every segment carries the same header block; the payloads laid end to end are the frame's.
    hdr_len = lens[0] - mss if len(segs) > 1 else None
    if hdr_len is not None:
        assert b"".join(s[hdr_len:] for s in segs) == frame[hdr_len:], "payload"
    for s in segs:
        check_segment(s)


# ---- GRO ------------------------------------------------------------------------------------

def fuzz_gro(data: bytes) -> None:
    """Input: udp flag (1) | records of [virtio-net header (12)] + frame."""
    if not data:
        return
    udp = bool(data[0] & 1)
    items = [(vnet, frame) for vnet, frame in records(data[1:], VNET_HLEN)]
    out = coalesce(items, udp)
    # Each output is an input as it came (the same object), or a run of
    # consecutive inputs as one super-frame: segmented again, it gives back
    # their lengths and payloads.
    i = 0
    for vnet, frame in out:
        if i < len(items) and frame is items[i][1]:
            assert vnet is items[i][0]
            i += 1
            continue
        assert vnet[1] in (1, 5) and vnet[0] == 1, vnet.hex()  # TCPV4 or UDP_L4, NEEDS_CSUM
        hdr = int.from_bytes(vnet[2:4], "little")
        assert check_vnet(vnet, frame) is not None, "a super-frame whose header contradicts it"
        segs = segment(frame, vnet)  # a ValueError here is a super-frame the kernel would refuse
        run = items[i:i + len(segs)]
        assert len(segs) >= 2 and len(run) == len(segs), (len(segs), len(run))
        for s, (_, f) in zip(segs, run):
            assert len(s) == len(f) and s[hdr:] == f[hdr:] and s[:14] == f[:14], "a segment differs from its frame"
        i += len(segs)
    assert i == len(items), (i, len(items))


# ---- the datapath: the decision, local ingress and VXLAN decap ---------------------------------

class Rig:
    """A Datapath that is never run: frames are handed in (Datapath.forward
    and .receive) and come out of socketpair ports. Two networks, plain ports
    and ports with offloads, and VXLAN peers; the VTEP's send socket is a
    plain UDP socket on loopback, so encapsulation runs to the send and every
    send fails (destination port 0) without a packet leaving."""

    # (network, mtu, vnet); network 0: a trunk port, carrying TRUNKS[index]
    PORTS = [(1, 1500, False), (1, 1500, True), (1, 9000, False), (2, 1500, True), (2, 1500, False), (0, 1500, True),
             (0, 1500, False)]
    TRUNKS = {5: ({1: 10, 2: 20}, 0), 6: ({2: 30}, 1)}  # port -> ({network: VID}, native)
    PEERS = [(1, "127.0.0.2"), (2, "127.0.0.3"), (1, "127.0.0.4")]
    VNIS = {1: 5001, 2: 5002}
    ADDRS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]

    def __init__(self) -> None:
        self.dp = Datapath(max_ports=8, mac_table_size=64, max_networks=4, max_peers=4)
        self.socks: list[socket.socket] = []
        self.ends: list[socket.socket] = []
        for idx, (network, mtu, vnet) in enumerate(self.PORTS):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            for s in (ours, theirs):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            if network:
                self.dp.add_port(theirs.fileno(), network, mtu, vnet)
            else:
                tagged, native = self.TRUNKS[idx]
                self.dp.add_port(theirs.fileno(), 0, mtu, vnet, trunk=tagged, native=native)
            self.ends.append(ours)
            self.socks += [ours, theirs]
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.bind(("127.0.0.1", 0))
        self.socks += [rx, tx]
        self.dp.set_vtep(rx.fileno(), tx.fileno(), 4789, 49152, 65535, 1500)
        for network, vni in self.VNIS.items():
            self.dp.set_network_vni(network, vni)
        for network, addr in self.PEERS:
            self.dp.add_peer(network, addr)
        self.poller = select.poll()
        self.index = {end.fileno(): idx for idx, end in enumerate(self.ends)}
        for end in self.ends:
            self.poller.register(end, select.POLLIN)

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def drain(self) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for fd, _ in self.poller.poll(0):
            idx = self.index[fd]
            end = self.ends[idx]
            while True:
                try:
                    out.setdefault(idx, []).append(end.recv(70000))
                except BlockingIOError:
                    break
        return {idx: frames for idx, frames in out.items() if frames}

    def peer_sends(self) -> list[int]:
        return [c["tx_packets"] + c["tx_errors"] for c in (self.dp.peer_counters(i) for i in range(len(self.PEERS)))]

    def check_output(self, got: dict[int, list[bytes]]) -> None:
        """Whatever leaves a port is what that port can take: its own MTU
        bounds a plain frame's L3 length (a TSO super-frame's segments are
        bounded by its gso_size, which the receiving kernel keeps to)."""
        for idx, frames in got.items():
            _, mtu, vnet = self.PORTS[idx]
            vids = {vid for vid in self.TRUNKS[idx][0].values()} if idx in self.TRUNKS else set()
            for raw in frames:
                if vnet:
                    assert len(raw) >= VNET_HLEN + 14, "a runt left a port"
                    head, frame = raw[:VNET_HLEN], raw[VNET_HLEN:]
                    assert check_vnet(head, frame) is not None, f"port {idx}: bad virtio-net header {head.hex()}"
                else:
                    head, frame = bytes(VNET_HLEN), raw
                tag = 4 if frame[12:14] == b"\x81\x00" and int.from_bytes(frame[14:16], "big") & 0xFFF in vids else 0
                if head[1] == 0:
                    # The port's own MTU bounds the L3 length; its tag is L2.
                    assert 14 <= len(frame) <= mtu + 14 + tag, f"port {idx}: {len(frame)} bytes"
                # A trunk port's tag is one of its VIDs, and only one tag: nothing else leaves tagged.
                assert not frame[6] & 1 and frame[12 + tag:14 + tag] not in (b"\x81\x00", b"\x88\xa8"), "a refused frame left"


_rig: Rig | None = None


def rig() -> Rig:
    """The shared Rig, as an input starts: no MAC entries (static ones too),
    nothing waiting at its ports."""
    global _rig
    if _rig is None:
        _rig = Rig()
    _rig.dp.fdb_flush(0, None, True)
    _rig.drain()
    return _rig


def fits_mtu(frame: bytes, mtu: int) -> bool:
    """Whether an output of `mtu` takes a plain frame: the MTU bounds its L3 length (a tag is L2)."""
    tagged = len(frame) >= 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8")
    return len(frame) <= mtu + (18 if tagged else 14)


def drop_total(dp: Datapath, n_ports: int) -> int:
    return sum(sum(dp.port_counters(i)["drops"].values()) for i in range(n_ports))


def fuzz_decide(data: bytes) -> None:
    """Input: records of [op (1)] + body. op & 7 picks a port; op >> 3:
    0-25: a frame from that port (consecutive ones from one port make a batch),
    26-27: a static entry for MAC body[:6] on that port (or a peer),
    28-29: delete the entry of MAC body[:6], 30-31: flush the port's entries.
    A lone frame from a plain port is first asked of Datapath.decide (trace):
    where it then goes, and why it is dropped, must be what that said."""
    r = rig()
    dp = r.dp
    n_ports = len(r.PORTS)
    ops = [(h[0], body) for h, body in records(data, 1)]
    i = 0
    while i < len(ops):
        op, body = ops[i]
        port, kind = op & 7, op >> 3
        i += 1
        if port >= n_ports:
            continue
        network = r.PORTS[port][0]
        if kind >= 26:
            mac = (body[:6] + b"\x02" * 6)[:6]
            mac = bytes([mac[0] & 0xFE]) + mac[1:]
            if kind < 28:
                peer = body[6] % len(r.PEERS) if len(body) > 6 and body[6] & 0x80 else None
                out = port if peer is None else PEER_FLAG | peer
                try:
                    dp.fdb_set_static(network, mac, out)
                except OverflowError:
                    pass
            elif kind < 30:
                dp.fdb_delete(network, mac)
            else:
                dp.fdb_flush(network, port, True)
            continue
        batch = [body[:MAX_FRAME]]
        while len(batch) < 32 and i < len(ops) and ops[i][0] == op:
            batch.append(ops[i][1][:MAX_FRAME])
            i += 1
        if len(batch) > 1 or r.PORTS[port][2]:
            dp.forward(port, batch)
            r.check_output(r.drain())
            continue
        before = dp.port_counters(port)
        before_drops = before["drops"]
        before_peers = r.peer_sends()
        refused_before = [dp.port_counters(q)["drops"]["mtu_exceeded"] for q in range(n_ports)]
        want = dp.decide(batch[0], in_port=port)
        dp.forward(port, batch)
        got = r.drain()
        r.check_output(got)
        # The decision's ports, less those whose MTU the frame exceeds: each counts it (mtu_exceeded).
        refused = [q for q in want["ports"] if not fits_mtu(batch[0], r.PORTS[q][1])]
        want["ports"] = [q for q in want["ports"] if q not in refused]
        assert [dp.port_counters(q)["drops"]["mtu_exceeded"] - n for q, n in enumerate(refused_before)] == [
            int(q in refused) for q in range(n_ports)], (want, refused)
        after = dp.port_counters(port)
        assert after["rx_packets"] - before["rx_packets"] == 1
        moved = {reason: after["drops"][reason] - n for reason, n in before_drops.items() if after["drops"][reason] != n}
        if want["verdict"] == "drop":
            assert moved == {want["reason"]: 1} and not got, (want, moved, list(got))
            continue
        assert sorted(got) == sorted(want["ports"]), (want, sorted(got))
        assert all(len(frames) == 1 for frames in got.values())
        peers_moved = [j for j, (a, b) in enumerate(zip(before_peers, r.peer_sends())) if a != b]
        if moved == {"tunnel_mtu": 1}:
            assert not peers_moved and want["peers"], (want, moved)
        else:
            assert not moved and peers_moved == sorted(want["peers"]), (want, moved, peers_moved)


def fuzz_vxlan(data: bytes) -> None:
    """Input: records of [sender (1)] + datagram (VXLAN header first), or of
    [0x80 | port] + a MAC to put a static entry for on that port. Consecutive datagrams from one sender make a batch. A lone datagram with
    a well-formed header is first asked of Datapath.decide (trace): the ports
    it then reaches must be those. Every datagram is counted once: decided,
    or dropped by a reason."""
    r = rig()
    dp = r.dp
    recs = [(h[0], body) for h, body in records(data, 1)]
    i = 0
    while i < len(recs):
        sender, first = recs[i]
        if sender & 0x80:
            # A static entry for MAC first[:6] on a port, so tunnel frames for it go there (and through GRO).
            port = sender & 7
            if port < len(r.PORTS):
                mac = (first[:6] + b"\x02" * 6)[:6]
                dp.fdb_set_static(r.PORTS[port][0], bytes([mac[0] & 0xFE]) + mac[1:], port)
            i += 1
            continue
        addr = r.ADDRS[sender % len(r.ADDRS)]
        batch = [first[:MAX_FRAME]]
        i += 1
        while len(batch) < 32 and i < len(recs) and recs[i][0] == sender:
            batch.append(recs[i][1][:MAX_FRAME])
            i += 1
        want = None
        if len(batch) == 1 and len(first) >= VXLAN_HLEN and first[0] & 0x08:
            want = dp.decide(first[VXLAN_HLEN:], from_addr=addr, vni=int.from_bytes(first[4:7], "big"))
        drops_before = sum(dp.vxlan_drops().values())
        reasons = dp.receive(addr, batch)
        got = r.drain()
        r.check_output(got)
        assert len(reasons) == len(batch)
        assert sum(dp.vxlan_drops().values()) - drops_before == sum(x != "ok" for x in reasons)
        for d, why in zip(batch, reasons):
            if len(d) < VXLAN_HLEN + 14:
                assert why == "truncated", (len(d), why)
            elif not d[0] & 0x08:
                assert why == "bad_flags", why
        if want is None:
            continue
        name = reasons[0]
        if want["verdict"] == "drop":
            # Every decided drop is counted by its own reason, split horizon included.
            expect = want["reason"]
            assert name == expect and not got, (want, name, list(got))
        else:
            assert name == "ok" and sorted(got) == sorted(want["ports"]) and not want["peers"], (want, name, list(got))
    # The flow hash behind the outer source port stays in its range; a frame
    # without an Ethernet header, or an empty range, is refused.
    if len(data) >= 4:
        lo, hi = struct.unpack("<HH", data[:4])
        frame = data[4:4 + MAX_FRAME]
        try:
            port = source_port(frame, lo, hi)
        except ValueError:
            assert len(frame) < 14 or lo > hi
        else:
            assert len(frame) >= 14 and lo <= port <= hi


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frame": fuzz_frame,
    "vxlan": fuzz_vxlan,
    "gro": fuzz_gro,
    "gso": fuzz_gso,
    "decide": fuzz_decide,
}
