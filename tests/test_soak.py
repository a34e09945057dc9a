"""bench/soak.py for one minute: too short for its growth verdict (the warm-up alone is a minute),
but long enough to see a leak per change: every 10 s a port, a peer, a network, a static FDB
entry and a capture are added and removed again, and after each such cycle the daemon must hold
exactly as many fds and threads as after the first."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.root


def test_a_minute_of_churn_leaves_no_fd_or_thread_behind(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--minutes", "1", "--out", str(tmp_path),
                           "--no-plot"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    results = tmp_path / "results.json"
    assert results.exists(), f"soak.py exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    doc = json.loads(results.read_text())
    samples = doc["samples"]
    assert len(samples) >= 5
    assert doc["alive_at_end"] and doc["api_errors"] == []
    assert doc["churn"]["ports"] == len(samples) and doc["churn"]["captures"] == len(samples)
    assert doc["traffic_ok"], doc["pings"]
    for metric in ("fds", "threads"):
        values = [s[metric] for s in samples]
        assert len(set(values)) == 1, f"{metric} changed across churn cycles: {values}"
    # The MAC churn reaches the FDB (two senders at 50 new MACs/s each): a port
    # refusing foreign source MACs would leave the churn measuring nothing.
    assert max(s["fdb_entries"] for s in samples) >= 500, [s["fdb_entries"] for s in samples]
