"""The state file: what operators configured through the API survives a restart.

``state_dir/state.json`` holds the desired state (networks, ports, peers, static
FDB entries), never learned entries or counters. Writes are atomic (temp file,
fsync, rename, fsync of the directory) so a crash leaves either the old or the
new file. A file that cannot be read back is reported, never replaced: the
daemon refuses to start rather than silently dropping an operator's config.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import ConfigError, InvalidArgument, StateNotSaved
from .model import DesiredState, NetworkSpec, PeerSpec, PortSpec, StaticFdbSpec

STATE_VERSION = 1
STATE_FILE = "state.json"

_SECTIONS: dict[str, Any] = {
    "networks": NetworkSpec,
    "ports": PortSpec,
    "peers": PeerSpec,
    "static_fdb": StaticFdbSpec,
}


def state_to_dict(state: DesiredState) -> dict[str, Any]:
    return {"version": STATE_VERSION, **{key: [spec.to_dict() for spec in getattr(state, key)] for key in _SECTIONS}}


def state_from_dict(data: Any) -> DesiredState:
    """Validates a decoded state document; raises InvalidArgument naming the bad field."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"expected a JSON object at the top level, got {type(data).__name__}")
    # The version is checked first: a newer layout is reported as such, not as unknown keys.
    version = data.get("version")
    if version != STATE_VERSION:
        raise InvalidArgument(f"version: {version!r} is not supported (this vswitchd reads version {STATE_VERSION})")
    unknown = sorted(set(data) - set(_SECTIONS) - {"version"})
    if unknown:
        raise InvalidArgument(f"unknown key {unknown[0]!r}")
    sections: dict[str, list[Any]] = {}
    for key, spec_cls in _SECTIONS.items():
        items = data.get(key, [])
        if not isinstance(items, list):
            raise InvalidArgument(f"{key}: expected a list, got {type(items).__name__}")
        sections[key] = [spec_cls.parse(item, where=f"{key}[{i}]") for i, item in enumerate(items)]
    return DesiredState(**sections)


class StateStore:
    """Loads and atomically saves the desired state in ``state_dir/state.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        # Saves come from API handler threads; serialise them so temp files and
        # renames of two writers never interleave.
        self._lock = threading.Lock()

    def load(self) -> DesiredState | None:
        """The saved state, or None when nothing was saved yet; ConfigError if unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"state file {self.path}: cannot read: {e.strerror}") from None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"state file {self.path}: not valid JSON: {e}; fix or move it away") from None
        try:
            return state_from_dict(data)
        except InvalidArgument as e:
            raise ConfigError(f"state file {self.path}: {e}; fix or move it away") from None

    def save(self, state: DesiredState) -> None:
        """Write the state atomically and durably; StateNotSaved says why not."""
        try:
            self._save(state)
        except OSError as e:
            # The change is already in effect, and undoing it could fail too: say so plainly.
            raise StateNotSaved(f"the change is in effect but could not be saved to {self.path}: "
                                f"{e.strerror or e}; it is lost if vswitchd restarts before a later change "
                                f"is saved") from None

    def _save(self, state: DesiredState) -> None:
        data = json.dumps(state_to_dict(state), indent=2, sort_keys=True).encode() + b"\n"
        with self._lock:
            self._ensure_dir()
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=f".{STATE_FILE}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
            # The rename is durable only once the directory entry is on disk.
            dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _ensure_dir(self) -> None:
        if not self.state_dir.is_dir():
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.state_dir, 0o700)  # mkdir's mode is filtered by the umask
