"""TAPs an earlier vswitchd made that no port owns, found by their mark and removed at start.

A TAP is made persistent so that it outlives vswitchd; one made by a change
that a crash (SIGKILL) cut short, before the state file held its port, would
stay in the container's namespace for good. Every TAP is therefore marked
with an interface alias naming its owner (a digest of the state dir, so
several vswitchd instances on one host never take each other's), and the
next start removes the marked TAPs that no restored port holds.

Namespaces are looked in where a TAP can have been left: under /run/netns,
vswitchd's own, those the saved state names, and those a journal beside the
state file lists: every namespace a TAP was made in since the last start,
recorded before the TAP is made (so also a /proc/PID path of a port that was
never saved).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterable

from pyroute2 import IPRoute, NetlinkError

from .errors import StateNotSaved, VswitchError
from .netns import NETNS_RUN_DIR, netns_identity, netns_label, netns_path, run_in_netns
from .state import TAP_JOURNAL_FILE as JOURNAL_FILE, StateStore

log = logging.getLogger("vswitch.orphans")

MARK_PREFIX = "vswitchd "
OWN_NETNS = "/proc/self/ns/net"


class TapJournal:
    """The namespaces TAPs were made in since vswitchd started, kept in the state dir."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._paths: list[str] = []

    def load(self) -> list[str]:
        """What an earlier run recorded; an unreadable journal is reported and ignored."""
        try:
            raw = self._store.read_file(JOURNAL_FILE)
            paths = json.loads(raw) if raw is not None else []
        except (OSError, ValueError) as e:
            log.warning("ignoring %s in the state dir: %s", JOURNAL_FILE, e)
            return []
        return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []

    def record(self, netns_path: str) -> None:
        """Note a namespace before a TAP is made in it (StateNotSaved if it cannot be noted)."""
        with self._lock:
            if netns_path in self._paths:
                return
            # Namespaces that are gone cannot hold an orphan: the list stays as long as the live ones.
            paths = [p for p in self._paths if netns_identity(p) is not None] + [netns_path]
            self._write(paths)

    def reset(self) -> None:
        """Start afresh, once the orphans of the earlier run are removed."""
        with self._lock:
            self._write([])

    def _write(self, paths: list[str]) -> None:
        try:
            self._store.write_file(JOURNAL_FILE, json.dumps(paths).encode() + b"\n")
        except OSError as e:
            raise StateNotSaved(f"cannot record a namespace in {self._store.state_dir / JOURNAL_FILE}: "
                                f"{e.strerror or e}; nothing was changed") from None
        self._paths = paths


def tap_mark(state_dir: Path) -> str:
    """The alias that marks the TAPs of the vswitchd keeping its state in state_dir."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(state_dir))).hexdigest()[:16]
    return f"{MARK_PREFIX}{digest}"


def candidate_netns(named: Iterable[str]) -> list[str]:
    """Namespace paths to look in: /run/netns, our own, and the names or paths given."""
    try:
        entries = sorted(os.listdir(NETNS_RUN_DIR))
    except OSError:
        entries = []
    paths = [OWN_NETNS, *(os.path.join(NETNS_RUN_DIR, e) for e in entries), *(netns_path(n) for n in named)]
    return list(dict.fromkeys(paths))


def _marked(mark: str) -> list[tuple[int, str]]:
    ipr = IPRoute()
    try:
        found = []
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if kind == "tun" and link.get_attr("IFLA_IFALIAS") == mark:
                found.append((link["index"], link.get_attr("IFLA_IFNAME")))
        return found
    finally:
        ipr.close()


def _delete(index: int) -> None:
    ipr = IPRoute()
    try:
        ipr.link("del", index=index)
    finally:
        ipr.close()


def remove_orphans(mark: str, owned: set[tuple[tuple[int, int] | None, str]], namespaces: Iterable[str]) -> list[str]:
    """Delete TAPs carrying `mark` that are not in `owned` ((namespace identity, ifname));
    returns them as "ifname in netns". A namespace that cannot be entered is skipped."""
    removed: list[str] = []
    seen: set[tuple[int, int]] = set()
    own = netns_identity(OWN_NETNS)
    for path in namespaces:
        ident = netns_identity(path) if path != OWN_NETNS else own
        if ident is None or ident in seen:
            continue
        seen.add(ident)
        try:
            for index, ifname in run_in_netns(path, _marked, mark):
                if (ident, ifname) in owned:
                    continue
                where = f"{ifname} in netns {netns_label(path) if path != OWN_NETNS else '(vswitchd own)'}"
                try:
                    run_in_netns(path, _delete, index)
                except NetlinkError as e:
                    log.warning("orphan TAP %s not removed: %s", where, os.strerror(e.code))
                    continue
                log.warning("removed orphan TAP %s: made by an earlier run, no port owns it", where)
                removed.append(where)
        except (OSError, NetlinkError, VswitchError) as e:  # e.g. a namespace that went away meanwhile
            log.debug("not looking for orphan TAPs in %s: %s", path, e)
    return removed
