"""Installed like software: `pip wheel .` from a clean copy of the source, `make install`
of that wheel into a venv of its own, and vswitchd run from there, outside the checkout."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.harness.wait import wait_until
from vswitch import __version__
from vswitch.client import ApiError, Client
from vswitch.completion import bash_script

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a built tree holds beside the source: none of it may reach the wheel's build.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                    ".pytest_cache", "*.so", "*.c", "*.html")
RUNTIME = {"vswitch", "python-pytun", "pyroute2", "prometheus-client", "tomli-w",
           # the cluster agent's etcd client and what it pulls in
           "etcd3gw", "requests", "futurist", "pbr", "debtcollector", "wrapt", "urllib3", "idna",
           "charset-normalizer", "certifi"}
VENV_TOOLS = {"pip", "setuptools"}  # what `python3 -m venv` puts in every venv

pytestmark = pytest.mark.root


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = version.strip()
    return pins


def clean_env() -> dict[str, str]:
    """This environment without what would lead a child to the checkout or into this make."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = root / "prefix"
        self.bindir = root / "bin"
        self.unitdir = root / "systemd"
        self.completions = root / "completions"
        self.dist = root / "dist"

    def make_install(self) -> subprocess.CompletedProcess[str]:
        # The wheel is built by the test (below), not by make's own wheel target, which
        # would build in the checkout; `-o` tells make to take it and the packages as done.
        return run(["make", "-C", str(REPO_ROOT), "-o", "wheel", "-o", "deps", "install", f"DIST={self.dist}",
                    f"PREFIX={self.prefix}", f"BINDIR={self.bindir}", f"UNITDIR={self.unitdir}",
                    f"BASH_COMPLETION_DIR={self.completions}"], cwd=self.root)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    inst = Installed(tmp_path_factory.mktemp("install"))
    src = inst.root / "src"
    shutil.copytree(REPO_ROOT, src, ignore=NOT_SOURCE)
    started = time.monotonic()
    # Exactly what a user runs; the build requirements come from the package registry (or pip's cache).
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(inst.dist), "."], cwd=src)
    built = time.monotonic()
    inst.make_install()
    print(f"\n[install] wheel built in {built - started:.1f} s, make install took {time.monotonic() - built:.1f} s")
    yield inst


class Daemon:
    """The installed vswitchd, run from a directory that is not the checkout."""

    def __init__(self, inst: Installed, workdir: Path) -> None:
        self.inst = inst
        self.workdir = workdir
        self.socket = workdir / "run" / "vswitch.sock"
        self.stderr = workdir / "vswitchd.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.socket.parent.mkdir(exist_ok=True)
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [str(self.inst.bindir / "vswitchd"), "--api-socket", str(self.socket), "--state-dir",
                 str(self.workdir / "state"), "--metrics", "127.0.0.1:0"],
                cwd=self.workdir, env=clean_env(), stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        client = Client(self.socket, timeout=2)

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.stderr.read_text()
            try:
                return client.request("GET", "/v1/health")["status"] == "ok"
            except ApiError:
                return False

        wait_until(healthy, timeout=30, message=f"installed vswitchd never answered:\n{self.stderr.read_text()}")

    def ctl(self, *args: str) -> object:
        out = run([str(self.inst.bindir / "vswitchctl"), "--socket", str(self.socket), "--json", *args],
                  cwd=self.workdir, timeout=30).stdout
        return json.loads(out) if out.strip() else None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_wheel_holds_the_two_packages_compiled_and_no_tools_package(installed: Installed) -> None:
    import zipfile

    (wheel,) = installed.dist.glob("vswitch-*.whl")
    assert wheel.name.startswith(f"vswitch-{__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith(f"vswitch-{__version__}.dist-info")} == {"vswitch", "fastpath"}
    assert any(n.startswith("fastpath/datapath.") and n.endswith(".so") for n in names)
    assert not any(n.endswith(".c") for n in names)


def test_venv_holds_only_the_runtime_packages_at_the_locked_versions(installed: Installed) -> None:
    out = run([str(installed.prefix / "bin" / "python"), "-m", "pip", "list", "--format=json"], cwd=installed.root).stdout
    packages = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}
    assert set(packages) - VENV_TOOLS == RUNTIME
    pins = lock()
    for name in RUNTIME - {"vswitch"}:
        assert packages[name] == pins[name], name
    assert packages["vswitch"] == __version__
    # The installed code is the venv's own, not the checkout's.
    where = run([str(installed.prefix / "bin" / "python"), "-c", "import vswitch, fastpath.datapath as d; "
                 "print(vswitch.__file__); print(d.__file__)"], cwd=Path("/")).stdout.split()
    assert all(Path(p).is_relative_to(installed.prefix) for p in where), where


def test_commands_report_their_version(installed: Installed) -> None:
    for prog in ("vswitchd", "vswitchctl"):
        path = installed.bindir / prog
        assert path.is_symlink() and path.resolve() == (installed.prefix / "bin" / prog).resolve()
        assert run([str(path), "--version"], cwd=installed.root).stdout == f"{prog} {__version__}\n"


def test_unit_and_completion_are_installed(installed: Installed) -> None:
    unit = (installed.unitdir / "vswitchd.service").read_text()
    assert f"ExecStart={installed.prefix}/bin/vswitchd --api-socket" in unit
    assert "/opt/vswitch" not in unit
    if shutil.which("systemd-analyze"):  # this time with the real program in ExecStart
        proc = subprocess.run(["systemd-analyze", "verify", str(installed.unitdir / "vswitchd.service")],
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert (installed.completions / "vswitchctl").read_text() == bash_script()


def test_installed_vswitchd_runs_outside_the_checkout_and_survives_an_upgrade(installed: Installed, tmp_path: Path) -> None:
    d = Daemon(installed, tmp_path)
    try:
        d.start()
        assert d.ctl("network", "add", "blue", "--vni", "42") == {"name": "blue", "vni": 42, "ports": [], "peers": []}
        assert d.stop() == 0
        # An upgrade: the wheel installed again over the running version's files, then a restart.
        installed.make_install()
        d.start()
        assert [n["name"] for n in d.ctl("network", "list")] == ["blue"]
        assert d.ctl("show")["io_mode"] in ("poll", "uring")
        assert d.stop() == 0
    finally:
        d.kill()
    assert "vswitchd ready" in d.stderr.read_text()
