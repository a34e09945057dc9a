"""The machine a benchmark runs on: the Debian packages it needs, and its description for the results."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lab import BenchError, run


def install_packages(packages: Sequence[str], log: Callable[[str], None] = print) -> None:
    """apt-get install whichever of `packages` are missing (refreshing the lists once if that fails)."""
    def missing() -> list[str]:
        return [p for p in packages
                if run(["dpkg-query", "-W", "-f=${Status}", p], check=False).strip() != "install ok installed"]
    need = missing()
    if not need:
        return
    log(f"bench: apt-get install {' '.join(need)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-q", "-y"]
    install = [*apt, "install", "--no-install-recommends", *need]
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*apt, "update"], env=env, stdin=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=True)
    if missing():
        raise BenchError(f"still missing after apt-get: {' '.join(missing())}")


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def run_ended(res: dict[str, Any], started: float) -> None:
    """Note the load at the end and how long the run took (started: time.monotonic())."""
    res["machine"]["loadavg_end"] = loadavg()
    res["duration_s"] = time.monotonic() - started


def write_results(out_dir: Path, res: dict[str, Any], md: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(md)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2) + "\n")


def abandoned(name: str, e: BaseException, log: Callable[[str], None]) -> int:
    """The exit status of a run that ended early (interrupted, or a BenchError), said in the log."""
    if isinstance(e, KeyboardInterrupt):
        log(f"{name}: interrupted; everything it created has been removed")
        return 130
    log(f"{name}: {e}")
    return 1


def finished(name: str, res: dict[str, Any], md: str, out_dir: Path, log: Callable[[str], None]) -> None:
    log("\n" + md)
    log(f"{name}: done in {res['duration_s'] / 60:.1f} min; results in {out_dir}")


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine())
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    caches = {}
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level, kind = (idx / "level").read_text().strip(), (idx / "type").read_text().strip()
        if kind in ("Unified", "Data"):
            caches[f"L{level}"] = (idx / "size").read_text().strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "memory_gib": mem_kib / 2**20,
            "caches": caches, "loadavg_start": loadavg()}


def tool_version(argv: Sequence[str], word: int) -> str:
    """Word `word` of the first line a tool prints about its version ("?" when it prints nothing)."""
    out = run(argv, check=False)
    words = out.splitlines()[0].split() if out.strip() else []
    return words[word] if -len(words) <= word < len(words) else "?"
