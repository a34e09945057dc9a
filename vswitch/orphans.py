"""TAPs an earlier vswitchd made that no port owns, found by their mark and removed at start.

A TAP is made persistent so that it outlives vswitchd; one made by a change
that a crash (SIGKILL) cut short, before the state file held its port, would
stay in the container's namespace for good. Every TAP is therefore marked
with an interface alias naming its owner (a digest of the state dir, so
several vswitchd instances on one host never take each other's), and the
next start removes the marked TAPs that no restored port holds.

Namespaces are found where they can be: under /run/netns, vswitchd's own, and
those the saved state names. A TAP left in a namespace known by none of these
(e.g. a /proc/PID path of a port that was never saved) is not found.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

from pyroute2 import IPRoute, NetlinkError

from .errors import VswitchError
from .netns import NETNS_RUN_DIR, netns_identity, netns_label, netns_path, run_in_netns

log = logging.getLogger("vswitch.orphans")

MARK_PREFIX = "vswitchd "
OWN_NETNS = "/proc/self/ns/net"


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
