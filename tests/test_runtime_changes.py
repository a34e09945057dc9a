"""Changing a running switch costs the traffic that is not being changed nothing.

Two containers exchange a steady stream of numbered frames while twenty other
ports are added and removed through the control API; every frame of the
stream must arrive, once, in order.
"""
import threading
import time

import pytest

from rawframes import eth
from tests.harness.wait import wait_until

pytestmark = pytest.mark.io_modes

N_FRAMES = 20_000
CHUNK = 100          # frames per send: 100 every ~5 ms, about 20k frames/s
CHURN_PORTS = 20

C1_MAC = "02:00:00:00:10:01"
C2_MAC = "02:00:00:00:10:02"


def _mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


@pytest.mark.root
def test_stream_survives_ports_added_and_removed(netns_factory, agent_factory, vswitchd_factory):
    c1, c2 = netns_factory(), netns_factory()
    others = [netns_factory() for _ in range(CHURN_PORTS)]
    d = vswitchd_factory(f"""
[[network]]
name = "blue"
[[network]]
name = "red"
[[port]]
name = "c1"
netns = "{c1.name}"
network = "blue"
mac = "{C1_MAC}"
[[port]]
name = "c2"
netns = "{c2.name}"
network = "blue"
mac = "{C2_MAC}"
""")
    a1, a2 = agent_factory(c1), agent_factory(c2)
    a2.sniff_start("eth0")
    token = b"stream-%d" % time.monotonic_ns()
    frames = [eth(_mac(C2_MAC), _mac(C1_MAC), token + i.to_bytes(4, "big") + bytes(40)) for i in range(N_FRAMES)]
    # c2 speaks first so c1's frames are known unicast from the start.
    a2.send("eth0", [eth(_mac(C1_MAC), _mac(C2_MAC), b"hello")])

    stop = threading.Event()
    churn_errors: list[str] = []
    cycles = [0]

    def churn() -> None:
        while not stop.is_set():
            for i, ns in enumerate(others):
                net = "blue" if i % 2 else "red"
                code, body = d.api("POST", "/v1/ports", {"name": f"x{i}", "network": net, "netns": ns.name})
                if code != 201:
                    churn_errors.append(f"add x{i}: {code} {body}")
            for i in range(len(others)):
                code, body = d.api("DELETE", f"/v1/ports/x{i}")
                if code != 204:
                    churn_errors.append(f"del x{i}: {code} {body}")
            cycles[0] += 1

    t = threading.Thread(target=churn)
    t.start()
    def c1_read() -> int:
        return d.api("GET", "/v1/ports/c1")[1]["counters"]["rx_packets"]

    base = c1_read()
    try:
        for i in range(0, N_FRAMES, CHUNK):
            a1.send("eth0", frames[i:i + CHUNK])
            # Pace by what the switch has read: a full TAP queue would drop in the kernel, not here.
            wait_until(lambda: c1_read() >= base + min(i + CHUNK, N_FRAMES),
                       message=f"the switch never read frames {i}..{i + CHUNK} from c1")
        # Keep churning until at least one full add/remove cycle overlapped the stream.
        deadline = time.monotonic() + 60
        while cycles[0] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert churn_errors == []
    assert cycles[0] >= 1

    got = a2.wait_frames("eth0", lambda f: token in f, count=N_FRAMES, timeout=60)
    seqs = [int.from_bytes(f[14 + len(token):18 + len(token)], "big") for f in got if token in f]
    assert len(seqs) == N_FRAMES, f"{N_FRAMES - len(seqs)} frames lost"
    assert seqs == list(range(N_FRAMES)), "frames reordered or duplicated"
    c = d.ctl("port", "list")
    c1_counters = next(p["counters"] for p in c if p["name"] == "c1")
    assert c1_counters["flooded"] == 0  # every one was known unicast
