"""One vswitchd host for the long runs (bench/soak.py, bench/fuzz_live.py), built in a Lab.

    remote ns r:  ul0 192.0.2.2/24 ==veth== ul0 192.0.2.1/24 in host ns h
    host ns h:    vswitchd started inside it (`ip netns exec`): its VXLAN socket,
                  routes and UDP counters are the namespace's own
    containers:   one namespace each; vswitchd makes their eth0 (a TAP)

Everything goes with the Lab: namespaces, the daemon (stopped by its PID) and
its files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import VENV_PY, BenchError, Lab, Netns, wait_for

from vswitch.client import ApiError, Client

UNDERLAY = "192.0.2."
HOST_IP = UNDERLAY + "1"
REMOTE_IP = UNDERLAY + "2"
UNDERLAY_IF = "ul0"
VXLAN_PORT = 4789
START_TIMEOUT_S = 60.0


def toml(header: str, items: dict[str, Any]) -> str:
    return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in items.items() if v is not None) + "\n"


@dataclass
class Container:
    name: str
    ns: Netns
    network: str
    mac: str
    ip: str | None  # with prefix length
    port_security: bool = True

    @property
    def addr(self) -> str:
        assert self.ip is not None
        return self.ip.split("/")[0]


@dataclass
class Site:
    """A host namespace with an underlay to a remote namespace, and containers for one vswitchd."""

    lab: Lab
    io_mode: str
    host: Netns = field(init=False)
    remote: Netns = field(init=False)
    containers: dict[str, Container] = field(default_factory=dict)
    pid: int = 0
    client: Client | None = None

    def __post_init__(self) -> None:
        self.host = self.lab.netns("h")
        self.remote = self.lab.netns("r")
        # The veth pair goes with the namespaces.
        self.host.ip("link", "add", UNDERLAY_IF, "type", "veth", "peer", "name", UNDERLAY_IF, "netns", self.remote.name)
        self.host.ip("addr", "add", f"{HOST_IP}/24", "dev", UNDERLAY_IF)
        self.remote.ip("addr", "add", f"{REMOTE_IP}/24", "dev", UNDERLAY_IF)
        self.host.ip("link", "set", UNDERLAY_IF, "up")
        self.remote.ip("link", "set", UNDERLAY_IF, "up")

    def add_container(self, name: str, network: str, mac: str, ip: str | None = None,
                      port_security: bool = True) -> Container:
        c = Container(name, self.lab.netns(name), network, mac, ip, port_security)
        # IPv6 off before the interface exists: the kernel then sends nothing
        # of its own (router solicitations, MLD, DAD) that the runs did not ask for.
        c.ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        self.containers[name] = c
        return c

    def start(self, networks: dict[str, int | None], peers: list[tuple[str, str]], switch: dict[str, Any]) -> None:
        """Write the config and start vswitchd in the host namespace; wait until /v1/health is ok."""
        parts = [toml("[switch]", {"vtep_ip": HOST_IP, "vxlan_port": VXLAN_PORT, **switch})]
        parts += [toml("[[network]]", {"name": n, "vni": vni}) for n, vni in networks.items()]
        parts += [toml("[[port]]", {"name": c.name, "netns": c.ns.name, "network": c.network, "ifname": "eth0",
                                    "mac": c.mac, "ip": c.ip, "port_security": None if c.port_security else False})
                  for c in self.containers.values()]
        parts += [toml("[[peer]]", {"network": n, "remote": r}) for n, r in peers]
        cfg = self.lab.dir / "vswitch.toml"
        cfg.write_text("".join(parts))
        sock = self.lab.dir / "vs.sock"
        proc = self.lab.spawn("vswitchd", self.host.cmd(
            str(VENV_PY), "-m", "vswitch", "--config", str(cfg), "--api-socket", str(sock),
            "--state-dir", str(self.lab.dir / "state"), "--metrics", "127.0.0.1:0", "--io-mode", self.io_mode))
        self.pid = proc.pid  # `ip netns exec` execs: this is the daemon itself
        self.client = Client(sock, timeout=10.0)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"vswitchd exited {proc.returncode}: {self.lab.log_tail('vswitchd')}")
            try:
                return (self.client.request("GET", "/v1/health") or {}).get("status") == "ok"
            except ApiError:
                return False
        wait_for("vswitchd healthy", healthy, timeout=START_TIMEOUT_S, interval=0.1)
        wait_for("container links up", lambda: all(self.link_up(c.ns) for c in self.containers.values()),
                 timeout=START_TIMEOUT_S)

    def link_up(self, ns: Netns, ifname: str = "eth0") -> bool:
        out = ns.ip("-j", "link", "show", "dev", ifname)
        flags = json.loads(out)[0].get("flags", []) if out.strip() else []
        return "UP" in flags and "LOWER_UP" in flags

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists() and _status(self.pid).get("State", "Z").split()[0] != "Z"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        assert self.client is not None
        return self.client.request(method, path, body)

    def stats(self) -> dict[str, Any]:
        return self.api("GET", "/v1/stats")

    def process(self) -> dict[str, int]:
        """RSS (KiB), open fds and threads of the daemon, from /proc; and how much of that RSS is
        the largest anonymous mapping: the datapath's frame buffers, allocated once at start
        and touched page by page as frames first use them."""
        st = _status(self.pid)
        return {"rss_kib": int(st["VmRSS"].split()[0]), "threads": int(st["Threads"]),
                "fds": len(os.listdir(f"/proc/{self.pid}/fd")), "buffers_rss_kib": _largest_anon_rss(self.pid)}


def _largest_anon_rss(pid: int) -> int:
    """Rss (KiB) of the largest writable anonymous mapping (no path) in /proc/PID/smaps."""
    best_size = best_rss = 0
    size = 0
    anon = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            anon = len(head) == 5 and head[1].startswith("rw")  # not the ---p reservations of malloc's arenas
        elif head[0] == "Size:":
            size = int(head[1])
        elif head[0] == "Rss:" and anon and size > best_size:
            best_size, best_rss = size, int(head[1])
    return best_rss


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out
