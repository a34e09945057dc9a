"""A TCP transfer between two namespaces, checked end to end."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from tests.harness.netns import Netns
from tests.harness.wait import wait_until

SERVER = textwrap.dedent("""
    import hashlib, socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 5001)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while chunk := c.recv(1 << 20):
        h.update(chunk); n += len(chunk)
    print(n, h.hexdigest(), flush=True)
""")

CLIENT = textwrap.dedent("""
    import hashlib, os, socket, sys
    data = os.urandom(int(sys.argv[2])); print(hashlib.sha256(data).hexdigest(), flush=True)
    c = socket.create_connection((sys.argv[1], 5001), timeout=30); c.sendall(data); c.close()
""")


def tcp_transfer(client_ns: str, server_ns: str, server_ip: str, nbytes: int) -> None:
    """Send nbytes of random data over TCP from client_ns to server_ip (in
    server_ns) and check both ends saw the same sha256."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", SERVER, server_ip],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT, server_ip, str(nbytes)],
                                capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr
        n, digest = server.stdout.readline().split()
        server.wait(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert (int(n), digest) == (nbytes, client.stdout.strip())


def iperf3_64mib(client: Netns, server: Netns, server_ip: str, reverse: bool = False) -> dict[str, Any]:
    """Move 64 MiB over TCP with iperf3 from client to server_ip (in server),
    or the other way when reverse, and check that all of it was sent and the
    receiver's count (read as the sender ends) is close behind: a tag or
    offload bug leaves TCP stalled on bad segments, or iperf3 failed.
    Returns iperf3's "end" section."""
    proc = subprocess.Popen(["ip", "netns", "exec", server.name, "iperf3", "-s", "-1", "-B", server_ip],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: ":5201" in server.exec("ss", "-ltnH").stdout, timeout=10, message="iperf3 never listened")
        run = client.exec("iperf3", "-c", server_ip, "-n", "64M", "-J", *(("-R",) if reverse else ()), check=False,
                          timeout=120)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr
        end = json.loads(run.stdout)["end"]
        sent, received = end["sum_sent"]["bytes"], end["sum_received"]["bytes"]
        assert sent >= 64 << 20 and received >= 0.9 * sent, end
        return end
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)
