"""Delegating to an IPAM plugin the standard way: found by its type on CNI_PATH,
run with the same CNI_* environment and the same network config on stdin.

A plugin that does not speak the config's version (host-local 1.1 stops at
1.0.0) is asked for its versions and run with the highest one both speak;
STATUS and GC, which exist only from 1.1.0, are not passed to one that
cannot take them.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from .cni_spec import (ERR_DECODE, ERR_INCOMPATIBLE_VERSION, ERR_INVALID_CONFIG, ERR_IO, SINCE, CniError, NetConf,
                       best_common_version, version_key)

IPAM_TIMEOUT_S = 60.0


def find_plugin(plugin_type: str, cni_path: list[str]) -> Path:
    for directory in cni_path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_INVALID_CONFIG, f"ipam.type: no IPAM plugin named {plugin_type!r} on CNI_PATH",
                   f"looked in: {', '.join(cni_path) or '(CNI_PATH is empty)'}")


def _run(plugin: Path, command: str, conf: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """Runs the plugin once; its result (None if it printed nothing), or its error as a CniError."""
    full_env = {**os.environ, **env, "CNI_COMMAND": command}
    try:
        proc = subprocess.run([str(plugin)], input=json.dumps(conf).encode(), env=full_env, capture_output=True,
                              timeout=IPAM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CniError(ERR_IO, f"IPAM plugin {plugin.name} did not answer {command} within {IPAM_TIMEOUT_S:g} s") from None
    except OSError as e:
        raise CniError(ERR_IO, f"cannot run IPAM plugin {plugin}: {e.strerror}") from None
    out = proc.stdout.strip()
    try:
        doc = json.loads(out) if out else None
    except ValueError:
        doc = None
        if proc.returncode == 0:
            raise CniError(ERR_DECODE, f"IPAM plugin {plugin.name} answered {command} with something not JSON",
                           out[:500].decode(errors="replace")) from None
    if proc.returncode != 0:
        if isinstance(doc, dict) and isinstance(doc.get("code"), int):
            raise CniError(doc["code"], f"IPAM plugin {plugin.name}: {doc.get('msg', '')}", str(doc.get("details", "")))
        text = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        raise CniError(ERR_IO, f"IPAM plugin {plugin.name} failed {command} with status {proc.returncode}", text[:500])
    return doc


class Ipam:
    """The IPAM plugin of one network config."""

    def __init__(self, conf: NetConf, cni_path: list[str]) -> None:
        assert conf.ipam_type is not None
        self.conf = conf
        self.plugin = find_plugin(conf.ipam_type, cni_path)
        self._version = conf.cni_version

    def _supported(self) -> list[str]:
        doc = _run(self.plugin, "VERSION", {"cniVersion": self.conf.cni_version}, {})
        versions = doc.get("supportedVersions") if isinstance(doc, dict) else None
        if not isinstance(versions, list):
            raise CniError(ERR_DECODE, f"IPAM plugin {self.plugin.name} answered VERSION without supportedVersions")
        return [v for v in versions if isinstance(v, str)]

    def _downgrade(self) -> None:
        theirs = self._supported()
        version = best_common_version(self.conf.cni_version, theirs)
        if version is None:
            raise CniError(ERR_INCOMPATIBLE_VERSION, f"IPAM plugin {self.plugin.name} speaks no CNI version of ours",
                           f"it supports {', '.join(theirs)}")
        self._version = version

    def call(self, command: str, env: Mapping[str, str], extra: Mapping[str, Any] | None = None) -> Any:
        """Runs `command` (ADD/DEL/CHECK/GC/STATUS); the result, or None where it has none.

        STATUS and GC are skipped (None) for a plugin whose versions stop before them:
        its VERSION is asked first, as a plugin that predates a command may not know it."""
        since = SINCE.get(command)
        if since is not None and since != "0.4.0":
            self._downgrade()
            if version_key(self._version) < version_key(since):
                return None
        for attempt in range(2):
            conf = {**self.conf.raw, **(extra or {}), "cniVersion": self._version}
            try:
                return _run(self.plugin, command, conf, env)
            except CniError as e:
                if e.code != ERR_INCOMPATIBLE_VERSION or attempt:
                    raise
                self._downgrade()
        return None
