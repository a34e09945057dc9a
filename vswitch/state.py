"""The state file: what operators configured through the API survives a restart.

``state_dir/state.json`` holds the desired state (networks, ports, peers, static
FDB entries), never learned entries or counters. Writes are atomic (temp file,
fsync, rename, fsync of the directory) so a crash leaves either the old or the
new file. A file that cannot be read back is reported, never replaced: the
daemon refuses to start rather than silently dropping an operator's config.

The directory and the files in it are opened relative to a descriptor of the
directory, never following a symlink: a link planted at the state dir or at
the state file is refused, not written through. Temp files a crash left
behind are removed when the state is loaded.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, InvalidArgument, StateNotSaved
from .model import DesiredState, NetworkSpec, PeerSpec, PortSpec, StaticFdbSpec

STATE_VERSION = 1
STATE_FILE = "state.json"
TEMP_SUFFIX = ".tmp"
# Other files kept beside the state, written the same way (their temp files are ".NAME.*.tmp").
TAP_JOURNAL_FILE = "tap-namespaces.json"  # orphans.TapJournal
SIDE_FILES = (TAP_JOURNAL_FILE,)
# Room a change is asked to find before it is made: the state grows by one
# item at most, and an item is bounded by the API's request size.
CHANGE_HEADROOM = 64 * 1024

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
        """The saved state, or None when nothing was saved yet; ConfigError if unreadable.

        Temp files of saves a crash interrupted are removed first."""
        try:
            with self._dir(create=False) as dir_fd:
                if dir_fd is None:
                    return None
                self._remove_temp_files(dir_fd)
                raw = self._read(dir_fd)
        except OSError as e:
            raise ConfigError(f"state file {self.path}: cannot read: {_why(e, self.path)}") from None
        if raw is None:
            return None
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
                                f"{_why(e, self.path)}; it is lost if vswitchd restarts before a later change "
                                f"is saved") from None

    def check_writable(self) -> None:
        """Refuse a change up front (StateNotSaved, nothing changed) when the state could not
        be saved after it: a read-only or full state dir. Space is reserved and given back."""
        try:
            with self._lock, self._dir(create=True) as dir_fd:
                assert dir_fd is not None
                try:
                    size = os.stat(STATE_FILE, dir_fd=dir_fd, follow_symlinks=False).st_size
                except FileNotFoundError:
                    size = 0
                with self._temp_file(dir_fd) as (fd, _name):
                    os.posix_fallocate(fd, 0, size + CHANGE_HEADROOM)
        except OSError as e:
            raise StateNotSaved(f"change refused: the state could not be saved to {self.path}: "
                                f"{_why(e, self.path)}; nothing was changed") from None

    def _save(self, state: DesiredState) -> None:
        self.write_file(STATE_FILE, json.dumps(state_to_dict(state), indent=2, sort_keys=True).encode() + b"\n")

    def write_file(self, name: str, data: bytes) -> None:
        """Replace state_dir/name with data, atomically and durably (OSError if not)."""
        with self._lock, self._dir(create=True) as dir_fd:
            assert dir_fd is not None
            with self._temp_file(dir_fd, name) as (fd, tmp):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                # rename() replaces whatever is at the name, a symlink included, without following it.
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            # The rename is durable only once the directory entry is on disk.
            os.fsync(dir_fd)

    def read_file(self, name: str) -> bytes | None:
        """state_dir/name, or None if it does not exist (OSError if it cannot be read)."""
        with self._dir(create=False) as dir_fd:
            return None if dir_fd is None else self._read(dir_fd, name)

    @contextmanager
    def _temp_file(self, dir_fd: int, for_name: str = STATE_FILE) -> Iterator[tuple[int, str]]:
        """A new private file in the state dir; removed on the way out unless renamed away."""
        name = f".{for_name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            yield fd, name
        finally:
            os.close(fd)
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass  # renamed into place

    @contextmanager
    def _dir(self, *, create: bool) -> Iterator[int | None]:
        """A descriptor of the state dir, opened without following a symlink at its last
        component; None if it does not exist and create is false."""
        if create:
            self._ensure_dir()
        try:
            fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    def _read(self, dir_fd: int, name: str = STATE_FILE) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    @staticmethod
    def _remove_temp_files(dir_fd: int) -> None:
        prefixes = tuple(f".{n}." for n in (STATE_FILE, *SIDE_FILES))
        for name in os.listdir(dir_fd):
            if name.startswith(prefixes) and name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass

    def _ensure_dir(self) -> None:
        try:
            os.lstat(self.state_dir)
        except FileNotFoundError:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.state_dir, 0o700)  # mkdir's mode is filtered by the umask


def _why(e: OSError, path: Path) -> str:
    """An OSError as an operator reads it; ELOOP from O_NOFOLLOW means a symlink was refused."""
    if e.errno == errno.ELOOP:
        return f"a symlink is in the way at {path} or its directory, and is not followed"
    return e.strerror or str(e)
