"""vswitch/memdebug.py: the report names live Python growth and its allocation site, and
the daemon never loads it unless asked."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from vswitch.memdebug import MemDebug

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def memdebug(tmp_path: Path):
    md = MemDebug(tmp_path / "md")
    try:
        yield md
    finally:
        tracemalloc.stop()


def _held_growth() -> list[bytes]:
    return [bytes(1000) + str(i).encode() for i in range(2000)]


def test_report_shows_live_growth_and_its_site(memdebug: MemDebug) -> None:
    memdebug.dump()  # the baseline: what the first report itself costs is not growth
    held = _held_growth()
    text = memdebug.dump().read_text()
    assert text.startswith("memdebug 2 ")
    assert "rss_kib " in text and "tracemalloc_traced " in text
    assert "after malloc_trim(0)" in text and "in_use " in text
    sites = text.split("allocation sites by growth")[1]
    first = sites.splitlines()[1]
    assert int(first.split()[0]) >= 2000 * 1000, first
    assert "test_memdebug.py" in "\n".join(sites.splitlines()[2:9])  # the site: its traceback follows
    del held
    text = memdebug.dump().read_text()
    first = text.split("allocation sites by growth")[1].splitlines()[1]
    assert int(first.split()[0]) <= -2000 * 1000, first  # given back: a negative diff leads


def test_daemon_does_not_import_it_when_off() -> None:
    code = ("import sys, vswitch.daemon; "
            "print('vswitch.memdebug' in sys.modules, 'tracemalloc' in sys.modules and "
            "__import__('tracemalloc').is_tracing())")
    env = {k: v for k, v in os.environ.items() if k != "VSWITCH_MEMDEBUG"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         check=True).stdout.split()
    assert out == ["False", "False"]
