"""A tiny tmpfs to fill up and turn read-only: the state dir's fault cases."""
from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TINY = "size=512k,mode=0700"


def mount_tiny(path: Path) -> None:
    """Mount a 512 KiB tmpfs on `path` (an existing directory)."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", TINY, "tmpfs", str(path)], check=True, timeout=30)


def unmount(path: Path, check: bool = True) -> None:
    """Unmount lazily: a daemon may still hold files below it."""
    subprocess.run(["umount", "-l", str(path)], check=check, timeout=30)


def fill(path: Path) -> None:
    """Write `path` until its file system has no space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The mount at `path` read-only for the block, writable again after it."""
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(path)], check=True, timeout=30)
