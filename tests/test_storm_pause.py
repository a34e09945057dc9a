"""Back-pressure on a storming port through a real vswitchd, in both I/O
modes: TAP ports in namespaces, a broadcast storm sent as fast as Python
can through a packet socket in the attacker's namespace (bounded: stopped by
the test, or after a minute), scapy-built frames for everything else.

- A storming port is paused (its `paused` counter rises), its queue fills and
  the attacker's kernel drops what does not fit; a neighbour pair's unicast
  passes during the storm; the storm frames reaching a neighbour stay within
  the configured rate; every frame the TAP took was read in the end and is
  either flooded or counted; after the storm the port's own frames arrive.
- Storm limits set to 0 during a storm: the port is read at once and floods
  far past what the old limit allowed, with no further pause.

Absence and completeness are checked behind a fence (see test_policy.py):
a frame from the attacker sent after the storm has arrived, so every storm
frame before it has been read. It may take a few tries: until the storm's
frames have left the TAP's queue, the kernel drops the port's other frames
as well (that is the back-pressure).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.harness.frames import new_token
from tests.harness.netns import Netns
from tests.harness.wait import wait_until
from tests.test_limits import BROADCAST, Lan, make_lan

pytestmark = [pytest.mark.root, pytest.mark.io_modes]

STORM_FPS = 300  # a burst of 30: each pause is the longest (50 ms)

STORM_CODE = """
import signal, socket, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS: straight to the TAP's queue
s.bind(("eth0", 0))
frame = bytes.fromhex(sys.argv[1])
sent = refused = 0
end = time.monotonic() + 60
print("ready", flush=True)
while not stop and time.monotonic() < end:
    for _ in range(64):
        try:
            s.send(frame)
            sent += 1
        except OSError:  # ENOBUFS: the TAP's queue is full and dropped it
            refused += 1
print(sent, refused, flush=True)
"""


class Storm:
    """Broadcasts sent from a namespace's eth0 until stop()."""

    def __init__(self, ns: Netns, frame: bytes) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", STORM_CODE, frame.hex()],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"the storm did not start: {line!r} {self.proc.communicate()[1]}")
        self.started = time.monotonic()

    def stop(self) -> tuple[int, int]:
        """Stop it: (frames the TAP took, frames it refused)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        fields = out.split()
        assert self.proc.returncode == 0 and len(fields) == 2, f"storm failed: {out!r} {err}"
        return int(fields[0]), int(fields[1])


def counters(lan: Lan, port: str) -> dict:
    return lan.show(port)["counters"]


def neighbour_unicast_passes(lan: Lan) -> None:
    token = new_token("neighbour")
    lan["p2"].send(lan["p2"].frame(lan["p3"].mac, token))
    assert lan["p3"].wait(token, timeout=20) != [], "a neighbour's frame was lost during the storm"


def test_a_storming_port_is_paused_its_neighbours_pass_and_it_resumes(netns_factory, agent_factory,
                                                                       vswitchd_factory) -> None:
    lan = make_lan(netns_factory, agent_factory, vswitchd_factory, {
        "p1": f"storm_broadcast = {STORM_FPS}\n", "p2": "", "p3": ""})
    neighbour_unicast_passes(lan)  # p2 and p3 know each other: known unicast, which storm control never touches
    token = new_token("storm")
    storm = Storm(lan["p1"].ns, lan["p1"].frame(BROADCAST, token))
    try:
        wait_until(lambda: counters(lan, "p1")["paused"] >= 3, timeout=30, message="the storming port was never paused")
        for _ in range(3):
            neighbour_unicast_passes(lan)
    finally:
        sent, refused = storm.stop()
    # After the storm: a frame from the attacker (known unicast, behind every storm frame the TAP took)
    # arrives. Sent again until it does: while the storm's frames still fill the TAP's queue, the
    # kernel drops the port's other frames too.
    fence = new_token("after")
    deadline = time.monotonic() + 30
    lan["p1"].send(lan["p1"].frame(lan["p2"].mac, fence))
    while not lan["p2"].wait(fence, timeout=0.5):
        assert time.monotonic() < deadline, "the paused port was never read again"
        lan["p1"].send(lan["p1"].frame(lan["p2"].mac, fence))
    window = time.monotonic() - storm.started
    got = len(lan["p2"].seen(token))
    c = counters(lan, "p1")
    drops = c["drops"]["storm_broadcast"]
    assert got + drops == sent, f"{got} arrived + {drops} counted != {sent} the TAP took"
    bound = STORM_FPS * window + STORM_FPS // 10 + 1
    assert 0 < got <= bound, f"{got} storm frames reached p2 in {window:.2f} s (bound {bound:.0f})"
    # The frames the switch did not read were dropped by the attacker's own kernel, and counted there.
    tx_dropped = int(lan["p1"].ns.exec("cat", "/sys/class/net/eth0/statistics/tx_dropped").stdout)
    assert refused > 0 and tx_dropped > 0, (refused, tx_dropped)
    print(f"storm: {sent} taken and {refused} refused in {window:.2f} s, {got} reached p2 (bound {bound:.0f}), "
          f"{c['paused']} pauses")


def test_storm_limits_set_to_zero_during_a_storm_resume_reading_at_once(netns_factory, agent_factory,
                                                                        vswitchd_factory) -> None:
    lan = make_lan(netns_factory, agent_factory, vswitchd_factory, {
        "p1": f"storm_broadcast = {STORM_FPS}\n", "p2": "", "p3": ""})
    storm = Storm(lan["p1"].ns, lan["p1"].frame(BROADCAST, new_token("storm")))
    try:
        wait_until(lambda: counters(lan, "p1")["paused"] >= 3, timeout=30, message="the storming port was never paused")
        lan.daemon.ctl("port", "set", "p1", "--storm-broadcast", "0")
        changed = time.monotonic()
        pauses = counters(lan, "p1")["paused"]
        # Read on at the storm's pace: three times what the old limit allowed over the whole storm.
        # (Its neighbours are not checked here: with no storm control they are flooded, as they would be.)
        wait_until(lambda: counters(lan, "p1")["flooded"]
                   > 3 * (STORM_FPS * (time.monotonic() - storm.started) + STORM_FPS // 10 + 1),
                   timeout=30, message="the storm was not flooded once its limit was lifted")
    finally:
        storm.stop()
    assert counters(lan, "p1")["paused"] == pauses, "paused again with no storm limit"
    print(f"flooded {counters(lan, 'p1')['flooded']} frames in {time.monotonic() - changed:.2f} s after the limit went")
