"""A vswitch checkout that a benchmark runs vswitchd from.

Each checkout brings its own .venv with fastpath compiled in place (`make
build`). A daemon runs as `DIR/.venv/bin/python -m vswitch` with DIR as its
working directory and no PYTHON* variables inherited, so it imports DIR's
control plane and DIR's extensions and nothing else; `verify_process` checks
that on the running process, from the shared objects it has mapped.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab import ROOT, BenchError, run

# What `make build` recompiles after an edit: a build stamp older than one of
# these means the extensions in place are not the sources in the tree.
EXT_SOURCE_GLOBS = ("fastpath/*.pyx", "fastpath/*.pxd", "fastpath/*.h", "setup.py", "pyproject.toml")
MODE_FILE = Path("build/ext-mode")
EXT_STAMP = Path("build/ext-release.stamp")


@dataclass(frozen=True)
class Checkout:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> Checkout:
        return cls(Path(path).resolve())

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"

    def env(self) -> dict[str, str]:
        """This process's environment less what could make Python import from elsewhere."""
        return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}

    def vswitchd(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "vswitch", *args]

    def version(self) -> str:
        """The short commit, and whether tracked files differ from it."""
        commit = run(["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"], check=False).strip() or "?"
        dirty = run(["git", "-C", str(self.root), "status", "--porcelain", "--untracked-files=no"],
                    check=False).strip()
        return commit + (" + uncommitted changes" if dirty else "")

    def check_built(self) -> dict[str, str]:
        """BenchError unless this is a checkout with a current release build of fastpath in its
        own .venv; returns where its modules import from."""
        if not (self.root / "vswitch" / "__main__.py").is_file() or not (self.root / "fastpath").is_dir():
            raise BenchError(f"{self.root}: not a vswitch checkout (no vswitch/__main__.py or fastpath/)")
        if not os.access(self.python, os.X_OK):
            raise BenchError(f"{self.root}: no .venv/bin/python: run `make build` there")
        mode_file = self.root / MODE_FILE
        mode = mode_file.read_text().strip() if mode_file.exists() else None
        if mode is not None and mode != "release":
            raise BenchError(f"{self.root}: fastpath is a {mode} build, not release: run `make build` there")
        stamp = self.root / EXT_STAMP
        if stamp.exists():
            built = stamp.stat().st_mtime
            newer = sorted(str(p.relative_to(self.root)) for g in EXT_SOURCE_GLOBS for p in self.root.glob(g)
                           if p.stat().st_mtime > built)
            if newer:
                raise BenchError(f"{self.root}: {', '.join(newer)} changed after the last build: "
                                 "run `make build` there")
        for pyx in (self.root / "fastpath").glob("*.pyx"):
            built_so = list(pyx.parent.glob(pyx.stem + ".*.so")) + list(pyx.parent.glob(pyx.stem + ".so"))
            if not built_so or max(p.stat().st_mtime for p in built_so) < pyx.stat().st_mtime:
                raise BenchError(f"{self.root}: {pyx.relative_to(self.root)} has no current build in place: "
                                 "run `make build` there")
        probe = ("import json, fastpath.datapath, vswitch; "
                 "print(json.dumps({'fastpath': fastpath.datapath.__file__, 'vswitch': vswitch.__file__}))")
        p = subprocess.run([str(self.python), "-c", probe], cwd=self.root, env=self.env(), capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise BenchError(f"{self.root}: importing fastpath and vswitch failed: {p.stderr.strip()[-400:]}")
        where = json.loads(p.stdout)
        for module, path in where.items():
            if not Path(path).resolve().is_relative_to(self.root):
                raise BenchError(f"{self.root}: its .venv imports {module} from {path}, outside the checkout")
        return where

    def verify_process(self, pid: int) -> None:
        """BenchError unless process `pid` runs in this checkout with this checkout's fastpath loaded."""
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        if cwd != self.root:
            raise BenchError(f"vswitchd (pid {pid}) runs in {cwd}, not in {self.root}")
        mapped = {line.split(None, 5)[5].strip() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                  if len(line.split(None, 5)) == 6}
        ours = {m for m in mapped if "/fastpath/" in m and ".so" in m}
        if not ours:
            raise BenchError(f"vswitchd (pid {pid}) has no fastpath extension loaded")
        foreign = sorted(m for m in ours if not Path(m).is_relative_to(self.root / "fastpath"))
        if foreign:
            raise BenchError(f"vswitchd (pid {pid}) of {self.root} has loaded {', '.join(foreign)}")


# The checkout these benchmark scripts belong to: what `make bench` measures.
THIS = Checkout(ROOT)
