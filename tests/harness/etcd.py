"""A real etcd cluster (Debian's etcd-server), one process per member, all on one address.

The members run inside a namespace of the test (`ip netns exec`), listening
on an address there: for multi-host tests the underlay bridge's, so that the
vswitchd of every host namespace reaches them over the underlay as a real
fleet would. Each member gets its own client and peer ports (the namespace
is new, so nothing else holds them) and a data dir under the test's tmp dir;
members are stopped by PID (SIGKILL) and can be killed and restarted one by
one to inject faults. Health and leadership are asked with etcdctl in the
same namespace.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.netns import Netns

ETCD = "etcd"
ETCDCTL = "etcdctl"
BASE_PORT = 23790  # member i: client BASE_PORT + 10 i, peer one above
HEALTH_DEADLINE_S = 20.0


def etcd_missing() -> str | None:
    """Why no etcd can be started here, or None."""
    if shutil.which(ETCD) is None or shutil.which(ETCDCTL) is None:
        return "etcd is not installed (Debian package etcd-server; `make deps` installs it)"
    return None


@dataclass
class Member:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    tmp_path: Path
    ns: Netns
    host: str
    size: int = 3
    token: str = "vswitch-test"
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.size):
            name = f"m{i}"
            port = BASE_PORT + 10 * i
            self.members.append(Member(name, self.host, port, port + 1, self.tmp_path / f"etcd-{name}",
                                       self.tmp_path / f"etcd-{name}.log"))

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def endpoints(self) -> str:
        """The comma-separated list `vswitchd --etcd` takes."""
        return ",".join(self.urls)

    def _argv(self, m: Member, state: str) -> list[str]:
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return [
            ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", state, "--logger", "zap", "--log-outputs", str(m.log_path),
            # Loopback: short heartbeats make a leader's death noticed fast.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]

    def start(self) -> None:
        for m in self.members:
            self.start_member(m, wait=False)
        for m in self.members:
            self.wait_healthy(m)

    def start_member(self, m: Member, wait: bool = True) -> None:
        if m.running():
            raise RuntimeError(f"etcd member {m.name} is already running")
        state = "existing" if m.data_dir.exists() else "new"
        # `ip netns exec` execs etcd: the PID held is the member's own.
        m.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, *self._argv(m, state)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        if wait:
            self.wait_healthy(m)

    def wait_healthy(self, m: Member, timeout: float = HEALTH_DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not m.running():
                raise RuntimeError(f"etcd member {m.name} exited; log:\n{self.log(m)}")
            r = self.ctl(m.url, "endpoint", "health")
            if r.returncode == 0 and "is healthy" in r.stdout + r.stderr:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd member {m.name} not healthy after {timeout:g} s; log:\n{self.log(m)}")
            time.sleep(0.1)

    def ctl(self, endpoints: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.exec("env", "ETCDCTL_API=3", ETCDCTL, f"--endpoints={endpoints}", "--command-timeout=1s",
                            *args, check=False, timeout=10)

    def leader(self) -> Member:
        for m in self.members:
            if not m.running():
                continue
            r = self.ctl(m.url, "endpoint", "status", "-w", "json")
            if r.returncode != 0:
                continue
            status = json.loads(r.stdout)[0]["Status"]
            if status["leader"] == status["header"]["member_id"]:
                return m
        raise RuntimeError("no etcd member is leader")

    def kill_member(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()

    def stop(self) -> None:
        for m in self.members:
            self.kill_member(m)

    def log(self, m: Member) -> str:
        return m.log_path.read_text(errors="replace")[-4000:] if m.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)
            m.log_path.unlink(missing_ok=True)
