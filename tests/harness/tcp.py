"""A TCP transfer between two namespaces, checked end to end."""
from __future__ import annotations

import subprocess
import sys
import textwrap

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
