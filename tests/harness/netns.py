"""Network namespaces for tests: unique names, IPv6 off, always deleted."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

PREFIX = "vst-"
NETNS_DIR = Path("/run/netns")


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def list_netns() -> list[str]:
    """Names of the namespaces under /run/netns."""
    out = _run(["ip", "-j", "netns", "list"]).stdout.strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


class Netns:
    """One named network namespace; `exec` runs a command inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name

    def exec(self, *cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace; output is captured as text."""
        return _run(["ip", "netns", "exec", self.name, *cmd], check=check, timeout=timeout)

    def link(self, ifname: str) -> dict | None:
        """`ip -j link show` data for `ifname` in this namespace, or None if it does not exist."""
        proc = _run(["ip", "-n", self.name, "-j", "link", "show", "dev", ifname], check=False)
        if proc.returncode != 0:
            return None
        links = json.loads(proc.stdout)
        return links[0] if links else None

    def link_is_up(self, ifname: str) -> bool:
        """True once `ifname` exists, is up and has carrier (a TAP: its fd is attached)."""
        link = self.link(ifname)
        return link is not None and {"UP", "LOWER_UP"} <= set(link.get("flags", ()))

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


class NetnsFactory:
    """Creates namespaces named vst-<pid>-<n> and deletes all of them on close()."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self.created: list[Netns] = []

    def __call__(self) -> Netns:
        ns = Netns(f"{PREFIX}{os.getpid()}-{next(self._counter)}")
        _run(["ip", "netns", "add", ns.name])
        self.created.append(ns)
        # IPv6 off before any interface exists there, so the kernel never emits
        # router solicitations, MLD reports or DAD probes into captures.
        ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        _run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
        return ns

    def close(self) -> None:
        """Delete every namespace made here; raises after trying all if any deletion failed."""
        errors = []
        while self.created:
            ns = self.created.pop()
            proc = _run(["ip", "netns", "del", ns.name], check=False)
            if proc.returncode != 0 and ns.path.exists():
                errors.append(f"{ns.name}: {proc.stderr.strip()}")
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


def remove_stale_netns() -> list[str]:
    """Delete vst-<pid>-* namespaces left by test runs whose process is gone."""
    removed = []
    for name in list_netns():
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if _run(["ip", "netns", "del", name], check=False).returncode == 0:
            removed.append(name)
    return removed
