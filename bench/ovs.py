"""A private Open vSwitch (ovsdb-server + ovs-vswitchd) with the userspace datapath.

Each instance has its own database, sockets, pid and log files in its own
directory (OVS_RUNDIR/OVS_DBDIR/OVS_LOGDIR point there too, so bridge
management sockets never land in the system's /run/openvswitch), and runs
inside a namespace of the lab: the TAP devices it creates appear there.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab import BenchError, Lab, Netns, run, wait_for

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class Ovs:
    def __init__(self, lab: Lab, ns: Netns, name: str, tso: bool) -> None:
        self.lab, self.ns, self.name = lab, ns, name
        self.dir = lab.dir / name
        self.dir.mkdir()
        self.env = {**os.environ, "OVS_RUNDIR": str(self.dir), "OVS_DBDIR": str(self.dir),
                    "OVS_LOGDIR": str(self.dir), "OVS_SYSCONFDIR": str(self.dir)}
        self.db_sock = self.dir / "db.sock"
        self.ctl = self.dir / "ovs-vswitchd.ctl"
        self.proc: subprocess.Popen | None = None
        self._start(tso)

    def _start(self, tso: bool) -> None:
        d = self.dir
        run(["ovsdb-tool", "create", str(d / "conf.db"), str(SCHEMA)], env=self.env)
        db = self.lab.spawn(f"{self.name}-ovsdb", self.ns.cmd(
            "ovsdb-server", str(d / "conf.db"), f"--remote=punix:{self.db_sock}",
            f"--pidfile={d / 'ovsdb-server.pid'}", f"--unixctl={d / 'ovsdb-server.ctl'}",
            f"--log-file={d / 'ovsdb-server.log'}"), env=self.env)
        wait_for(f"{self.name}: ovsdb-server socket", lambda: db.poll() is None and self.db_sock.exists())
        self.vsctl("--no-wait", "init")
        # Read once at start-up by ovs-vswitchd: it must be in the database before.
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   f"other_config:userspace-tso-enable={'true' if tso else 'false'}")
        self.proc = self.lab.spawn(f"{self.name}-vswitchd", self.ns.cmd(
            "ovs-vswitchd", f"unix:{self.db_sock}", f"--pidfile={d / 'ovs-vswitchd.pid'}",
            f"--unixctl={self.ctl}", f"--log-file={d / 'ovs-vswitchd.log'}"), env=self.env)
        proc = self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"{self.name}: ovs-vswitchd exited {proc.returncode}: {self.log_tail()}")
            return self.ctl.exists() and run(["ovs-appctl", "-t", str(self.ctl), "version"],
                                             check=False, env=self.env, timeout=10) != ""
        wait_for(f"{self.name}: ovs-vswitchd control socket", answers, timeout=20)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def vsctl(self, *args: str) -> str:
        return run(["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=20", *args], env=self.env, timeout=30)

    def appctl(self, *args: str) -> str:
        return run(["ovs-appctl", "-t", str(self.ctl), *args], env=self.env, timeout=30)

    def add_bridge(self, bridge: str) -> None:
        self.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev")

    def add_tap_into(self, bridge: str, port: str, target: Netns, ifname: str = "eth0") -> None:
        """A `type=tap` port made by OVS in its namespace, then moved into `target` as `ifname`."""
        self.vsctl("add-port", bridge, port, "--", "set", "Interface", port, "type=tap")
        wait_for(f"{self.name}: tap {port}", lambda: self.ns.has_link(port))
        self.ns.ip("link", "set", port, "netns", target.name)
        target.ip("link", "set", port, "name", ifname)

    def version(self) -> str:
        return run(["ovs-vswitchd", "--version"]).splitlines()[0]

    def log_tail(self, lines: int = 10) -> str:
        path = self.dir / "ovs-vswitchd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
