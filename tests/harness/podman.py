"""A private podman 4.3 for tests: its own store, config and runtime dir under one
short temp dir, run inside a given "host" namespace, containers from a local
busybox image (no registry), networks through CNI plugins in a dir of ours.

What this kind of machine needs (see the project's notes): ulimits at or under
the hard limits, cgroups off, crun run through `unshare -m` with the cgroup2
mount hidden (hybrid layout), and nsenter rather than `ip netns exec`.
Everything it made is removed by close(), whatever state the containers are in.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

IMAGE = "localhost/vswitch-busybox:1"
PODMAN_TIMEOUT_S = 120.0

CRUN_WRAPPER = """#!/bin/sh
# crun refuses the hybrid cgroup layout; hidden from it in a private mount namespace, it sees v1.
exec unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec /usr/bin/crun "$@"' crun "$@"
"""


def podman_missing() -> str | None:
    """Why podman tests cannot run here (None when they can)."""
    for tool in ("podman", "crun", "conmon", "busybox", "nsenter", "unshare"):
        if shutil.which(tool) is None and not Path(f"/usr/libexec/podman/{tool}").exists():
            return f"{tool} is not installed (make deps installs it)"
    return None


class Podman:
    def __init__(self, host_netns: str, network: str) -> None:
        # Short: conmon's attach socket path, under tmpdir, must fit in sun_path.
        self.base = Path(tempfile.mkdtemp(prefix="vstp-", dir="/tmp"))
        self.host_netns = host_netns  # a path
        self.network = network
        self.cni_dir = self.base / "cni"
        self.plugin_dir = self.base / "cniplug"
        for sub in ("cni", "cniplug", "tmp", "xdg", "bin", "root", "runroot"):
            (self.base / sub).mkdir()
        crun = self.base / "bin" / "crun"
        crun.write_text(CRUN_WRAPPER)
        crun.chmod(0o755)
        (self.base / "containers.conf").write_text(f"""[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
cgroups = "disabled"
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.base}/tmp/events.log"
lock_type = "file"
tmp_dir = "{self.base}/tmp"
runtime = "crun"
[engine.runtimes]
crun = ["{crun}"]
[network]
network_backend = "cni"
network_config_dir = "{self.cni_dir}"
cni_plugin_dirs = ["{self.plugin_dir}", "/usr/lib/cni"]
default_network = "{network}"
""")
        # vfs: layers are plain directories, so nothing is left mounted.
        (self.base / "storage.conf").write_text(f"""[storage]
driver = "vfs"
graphroot = "{self.base}/root"
runroot = "{self.base}/runroot"
""")
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf"), "XDG_RUNTIME_DIR": str(self.base / "xdg")}

    def __call__(self, *args: str, check: bool = True, stdin: bytes | None = None,
                 timeout: float = PODMAN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", f"--net={self.host_netns}", "podman", "--root", str(self.base / "root"),
               "--runroot", str(self.base / "runroot"), "--tmpdir", str(self.base / "tmp"), *args]
        proc = subprocess.run(cmd, input=stdin, env=self.env, capture_output=True, timeout=timeout)
        out = subprocess.CompletedProcess(cmd, proc.returncode, proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def install_plugin(self) -> None:
        root = Path(__file__).resolve().parents[2]
        subprocess.run(["sh", str(root / "tools" / "install-cni.sh"), str(self.plugin_dir)], check=True,
                       capture_output=True, timeout=30)

    def write_network(self, conflist: dict[str, Any]) -> None:
        import json
        (self.cni_dir / f"{conflist['name']}.conflist").write_text(json.dumps(conflist, indent=2))

    def import_busybox(self) -> None:
        """A one-binary image from the machine's busybox: no registry involved."""
        rootfs = self.base / "rootfs"
        for sub in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            (rootfs / sub).mkdir(parents=True)
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for lib in _shared_libraries(busybox):  # Debian's busybox is linked against libc
            target = rootfs / lib.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, target)
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        self("import", "-q", "-", IMAGE, stdin=tar)

    def close(self) -> None:
        """Every container gone (their netns and CNI DEL with them), then the store."""
        try:
            self("rm", "-a", "-f", "-t", "0", check=False)
        finally:
            _unmount_under(self.base)
            shutil.rmtree(self.base, ignore_errors=True)


def _shared_libraries(binary: str) -> list[str]:
    """The libraries (and loader) a dynamic binary needs, as ldd lists them; none for a static one."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in proc.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                libs.append(word)
    return libs


def _unmount_under(base: Path) -> None:
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
